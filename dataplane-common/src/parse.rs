//! Packet parsing: Ethernet with up to two VLAN tags, IPv4 (any header length), IPv6 with a bounded
//! chain of extension headers, then TCP/UDP ports or the ICMP type.
//!
//! Every read is bounds-checked against `data_end` at a bounded offset so that the verifier can
//! follow it. Parsing never guesses: what cannot be read completely is reported as such, and the
//! classifier drops it when it is headed to a protected address.
//!
//! The same code runs in the kernel (over XDP and tc contexts, see `dataplane-ebpf`) and in
//! userspace over a byte slice ([`Bytes`]), so the fuzzer and the tests exercise the parser the
//! kernel runs, not a copy of it.

/// Length of an Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// Ethertype of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
/// 802.1Q and 802.1ad (QinQ): two tags at most.
const MAX_VLAN_TAGS: usize = 2;

const IPV6_HLEN: usize = 40;
/// IPv6 extension headers the parser follows before giving up.
const MAX_IPV6_EXT: usize = 6;
/// Furthest offset an upper-layer header may start at; keeps offsets bounded for the verifier.
const MAX_L4_OFFSET: usize = 512;

/// IP protocol number of ICMP (IPv4).
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 4;

/// Where a packet stands in fragmentation.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Frag {
    /// Not a fragment.
    Whole,
    /// The first fragment: it carries the transport header.
    First,
    /// A later fragment: no transport header; judged by its datagram's first fragment.
    Later,
}

/// What the parser could read of the transport layer.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    /// TCP or UDP: `L4::sport`, `dport` and (TCP) `flags` are read.
    Ports,
    /// The family's ICMP: `L4::ty` is read. An error type here quotes nothing it can be related
    /// to (see [`Transport::IcmpError`]).
    Icmp,
    /// An ICMP error that quotes a whole TCP or UDP header sent from this packet's destination:
    /// `L4::ty`, the quoted packet's `sport`, `dport` and `quoted_proto`, and its destination in
    /// `Packet::quoted`.
    IcmpError,
    /// Another protocol, or a later fragment (no header to read).
    None,
    /// Headers cut short, or lengths that contradict each other.
    Malformed,
    /// Longer chains of extension headers than the parser reads.
    Unparsed,
    /// A fragment too small to be judged safely: a first fragment that does not hold the whole
    /// transport header, or a TCP fragment that would overlap it (RFC 1858).
    BadFragment,
}

/// The transport layer as read. A plain struct, every field always written (no enum payload):
/// in BPF a value that is undefined on some path can end up computed from a pointer, which the
/// verifier refuses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct L4 {
    /// What was read; says which of the other fields mean something.
    pub kind: Transport,
    /// Source port (of the quoted packet, for an ICMP error).
    pub sport: u16,
    /// Destination port (of the quoted packet, for an ICMP error).
    pub dport: u16,
    /// The TCP flags byte (0 for UDP).
    pub flags: u8,
    /// The ICMP type.
    pub ty: u8,
    /// The protocol of the packet an ICMP error quotes.
    pub quoted_proto: u8,
}

impl L4 {
    /// Nothing to read: another protocol or a later fragment.
    pub const NONE: L4 = L4::of(Transport::None);
    /// The transport header is cut short or lies about its length.
    pub const MALFORMED: L4 = L4::of(Transport::Malformed);
    /// Behind more IPv6 extension headers than the parser follows.
    pub const UNPARSED: L4 = L4::of(Transport::Unparsed);
    /// A fragment too small to be judged safely.
    pub const BAD_FRAGMENT: L4 = L4::of(Transport::BadFragment);

    /// `kind` with every other field 0.
    #[inline(always)]
    pub const fn of(kind: Transport) -> Self {
        L4 { kind, sport: 0, dport: 0, flags: 0, ty: 0, quoted_proto: 0 }
    }

    /// TCP or UDP from `sport` to `dport`, with the TCP `flags`.
    #[inline(always)]
    pub const fn ports(sport: u16, dport: u16, flags: u8) -> Self {
        L4 { kind: Transport::Ports, sport, dport, flags, ty: 0, quoted_proto: 0 }
    }

    /// ICMP of type `ty`.
    #[inline(always)]
    pub const fn icmp(ty: u8) -> Self {
        L4 { kind: Transport::Icmp, sport: 0, dport: 0, flags: 0, ty, quoted_proto: 0 }
    }

    /// An ICMP error of type `ty` quoting a `proto` packet from port `sport` to `dport`.
    #[inline(always)]
    pub const fn icmp_error(ty: u8, proto: u8, sport: u16, dport: u16) -> Self {
        L4 { kind: Transport::IcmpError, sport, dport, flags: 0, ty, quoted_proto: proto }
    }
}

/// An IP address as two big-endian halves (IPv4 in the top 32 bits of `hi`, `lo` 0): the
/// classifier compares and indexes them as integers, where bytes would cost a load and a spill
/// each in BPF.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash, PartialOrd, Ord)]
pub struct Addr {
    /// Bytes 0-7 (IPv4: the whole address, in the top 32 bits).
    pub hi: u64,
    /// Bytes 8-15 (IPv4: 0).
    pub lo: u64,
}

impl Addr {
    /// From the 16 bytes of an IPv6 address, or an IPv4 address in the first 4.
    #[inline(always)]
    pub fn from_bytes(v6: bool, b: &[u8; 16]) -> Self {
        let hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let lo = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        if v6 {
            Addr { hi, lo }
        } else {
            Addr { hi: hi & 0xffff_ffff_0000_0000, lo: 0 }
        }
    }

    /// The 16 bytes (IPv4: the first 4, then zeros).
    #[inline(always)]
    pub fn bytes(&self) -> [u8; 16] {
        let (h, l) = (self.hi.to_be_bytes(), self.lo.to_be_bytes());
        [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]
    }

    /// An IPv4 address as a number.
    #[inline(always)]
    pub const fn v4(&self) -> u32 {
        (self.hi >> 32) as u32
    }
}

/// An IP packet with readable addresses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Packet {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// The upper-layer protocol (IPv6: after the extension headers read).
    pub proto: u8,
    /// Where the packet stands in fragmentation.
    pub frag: Frag,
    /// The datagram's identification, which keys its fragments (0 for an unfragmented IPv6
    /// packet).
    pub frag_id: u32,
    /// The transport layer as read.
    pub l4: L4,
    /// The destination of the packet an ICMP error quotes ([`Transport::IcmpError`]), else 0.
    pub quoted: Addr,
}

/// What the parser made of a frame.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// An IP packet with readable addresses: `Parsed::packet`.
    Ip,
    /// Not IP (ARP, LLDP, ...).
    NonIp,
    /// Not even the addresses can be read.
    Malformed,
    /// More VLAN tags than the parser reads.
    TooManyTags,
}

/// A parsed frame: `packet` is meaningful for `Outcome::Ip` (zero otherwise). A struct rather
/// than an enum with a payload, for the same reason as [`L4`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Parsed {
    /// What the frame is.
    pub outcome: Outcome,
    /// The IP packet, for `Outcome::Ip`.
    pub packet: Packet,
}

impl Parsed {
    /// Not IP.
    pub const NON_IP: Parsed = Parsed::not_ip(Outcome::NonIp);
    /// Not even the addresses can be read.
    pub const MALFORMED: Parsed = Parsed::not_ip(Outcome::Malformed);
    /// More VLAN tags than the parser reads.
    pub const TOO_MANY_TAGS: Parsed = Parsed::not_ip(Outcome::TooManyTags);

    #[inline(always)]
    const fn not_ip(outcome: Outcome) -> Self {
        let zero = Addr { hi: 0, lo: 0 };
        let packet =
            Packet { v6: false, src: zero, dst: zero, proto: 0, frag: Frag::Whole, frag_id: 0, l4: L4::NONE, quoted: zero };
        Parsed { outcome, packet }
    }

    /// An IP packet.
    #[inline(always)]
    pub const fn ip(packet: Packet) -> Self {
        Parsed { outcome: Outcome::Ip, packet }
    }

    /// The IP packet, if the frame is one.
    #[inline(always)]
    pub fn ip_packet(&self) -> Option<&Packet> {
        (self.outcome == Outcome::Ip).then_some(&self.packet)
    }
}

/// A packet buffer: XDP frames on ingress, socket buffers on tc egress.
pub trait Frame {
    /// `data` and `data_end`, read with volatile loads so that LLVM cannot prove a bounds check
    /// redundant from the length arithmetic elsewhere and drop it: the verifier only trusts a
    /// comparison of the packet pointer against `data_end`.
    fn bounds(&self) -> (usize, usize);
}

/// A frame held in userspace memory: the parser's twin for fuzzing and tests.
pub struct Bytes<'a>(pub &'a [u8]);

impl Frame for Bytes<'_> {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        let start = self.0.as_ptr() as usize;
        (start, start + self.0.len())
    }
}

/// Reads N bytes at `off`, or None past the end of the frame.
#[inline(always)]
fn load<const N: usize, F: Frame>(ctx: &F, off: usize) -> Option<[u8; N]> {
    let (start, end) = ctx.bounds();
    if start + off + N > end {
        return None;
    }
    // Safety: the N bytes at `off` lie inside the packet (checked just above).
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses a frame: Ethernet, VLAN tags, the IP header and its extensions, then the transport
/// header (or, for an ICMP error, the packet it quotes).
#[inline(always)]
pub fn parse<F: Frame>(ctx: &F) -> Parsed {
    let Some(eth) = load::<ETH_HLEN, F>(ctx, 0) else { return Parsed::MALFORMED };
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = load::<VLAN_HLEN, F>(ctx, off) else { return Parsed::MALFORMED };
        ethertype = be16([tag[2], tag[3]]);
        off += VLAN_HLEN;
    }
    let (start, end) = ctx.bounds();
    let frame_len = end - start;
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, off, frame_len),
        ETH_P_IPV6 => parse_ipv6(ctx, off, frame_len),
        ETH_P_8021Q | ETH_P_8021AD => Parsed::TOO_MANY_TAGS,
        _ => Parsed::NON_IP,
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame>(ctx: &F, l3: usize, frame_len: usize) -> Parsed {
    let Some(h) = load::<20, F>(ctx, l3) else { return Parsed::MALFORMED };
    if h[0] >> 4 != 4 {
        return Parsed::MALFORMED;
    }
    let mut p = Packet {
        v6: false,
        src: Addr { hi: (be32(&h, 12) as u64) << 32, lo: 0 },
        dst: Addr { hi: (be32(&h, 16) as u64) << 32, lo: 0 },
        proto: h[9],
        frag: Frag::Whole,
        frag_id: be16([h[4], h[5]]) as u32,
        l4: L4::NONE,
        quoted: Addr { hi: 0, lo: 0 },
    };

    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total = be16([h[2], h[3]]) as usize;
    // Header length below 20, past the datagram, or a datagram longer than the frame.
    if ihl < 20 || total < ihl || l3 + total > frame_len {
        p.l4 = L4::MALFORMED;
        return Parsed::ip(p);
    }
    let frag = be16([h[6], h[7]]);
    let offset8 = (frag & 0x1fff) as usize;
    let more = frag & 0x2000 != 0;
    p.frag = if offset8 != 0 {
        Frag::Later
    } else if more {
        Frag::First
    } else {
        Frag::Whole
    };
    if p.frag == Frag::Later {
        // RFC 1858: a TCP fragment at offset 8 or 16 would rewrite the header of the first.
        if p.proto == IPPROTO_TCP && offset8 * 8 < TCP_HLEN {
            p.l4 = L4::BAD_FRAGMENT;
        }
        return Parsed::ip(p);
    }
    p.l4 = parse_l4(ctx, l3 + ihl, l3 + total, p.proto, IPPROTO_ICMP, p.frag);
    quote(ctx, &mut p, l3 + ihl, l3 + total);
    Parsed::ip(p)
}

#[inline(always)]
fn be32<const N: usize>(h: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

#[inline(always)]
fn be64<const N: usize>(h: &[u8; N], at: usize) -> u64 {
    ((be32(h, at) as u64) << 32) | be32(h, at + 4) as u64
}

#[inline(always)]
fn parse_ipv6<F: Frame>(ctx: &F, l3: usize, frame_len: usize) -> Parsed {
    let Some(h) = load::<IPV6_HLEN, F>(ctx, l3) else { return Parsed::MALFORMED };
    if h[0] >> 4 != 6 {
        return Parsed::MALFORMED;
    }
    let mut p = Packet {
        v6: true,
        src: Addr { hi: be64(&h, 8), lo: be64(&h, 16) },
        dst: Addr { hi: be64(&h, 24), lo: be64(&h, 32) },
        proto: h[6],
        frag: Frag::Whole,
        frag_id: 0,
        l4: L4::NONE,
        quoted: Addr { hi: 0, lo: 0 },
    };

    let end = l3 + IPV6_HLEN + be16([h[4], h[5]]) as usize;
    if end > frame_len {
        p.l4 = L4::MALFORMED;
        return Parsed::ip(p);
    }
    let mut off = l3 + IPV6_HLEN;
    let mut next = h[6];
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT {
        let cur = next;
        let len = match cur {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let Some(e) = load::<2, F>(ctx, off) else {
                    p.l4 = L4::MALFORMED;
                    return Parsed::ip(p);
                };
                next = e[0];
                if cur == IPPROTO_AH {
                    (e[1] as usize + 2) * 4
                } else {
                    (e[1] as usize + 1) * 8
                }
            }
            IPPROTO_FRAGMENT => {
                let Some(e) = load::<8, F>(ctx, off) else {
                    p.l4 = L4::MALFORMED;
                    return Parsed::ip(p);
                };
                next = e[0];
                let fo = be16([e[2], e[3]]);
                p.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                if fo >> 3 != 0 {
                    p.frag = Frag::Later;
                    p.proto = next;
                    if next == IPPROTO_TCP && ((fo >> 3) as usize) * 8 < TCP_HLEN {
                        p.l4 = L4::BAD_FRAGMENT;
                    }
                    return Parsed::ip(p);
                }
                if fo & 1 != 0 {
                    p.frag = Frag::First;
                }
                8
            }
            _ => {
                done = true;
                0
            }
        };
        if done {
            break;
        }
        p.proto = next;
        off += len;
        if off > MAX_L4_OFFSET || off > end {
            p.l4 = if off > end { L4::MALFORMED } else { L4::UNPARSED };
            return Parsed::ip(p);
        }
    }
    if !done && is_ipv6_ext(next) {
        p.l4 = L4::UNPARSED;
        return Parsed::ip(p);
    }
    p.proto = next;
    p.l4 = parse_l4(ctx, off, end, next, IPPROTO_ICMPV6, p.frag);
    quote(ctx, &mut p, off, end);
    Parsed::ip(p)
}

#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_AH | IPPROTO_DSTOPTS)
}

/// ICMP errors (IPv4 destination unreachable, time exceeded, parameter problem; ICMPv6 1-4):
/// they quote the packet that caused them.
#[inline(always)]
pub const fn icmp_error(v6: bool, ty: u8) -> bool {
    if v6 {
        matches!(ty, 1..=4)
    } else {
        matches!(ty, 3 | 11 | 12)
    }
}

/// Bytes before the quoted packet in an ICMP error (type, code, checksum, and 4 more).
const ICMP_ERROR_HLEN: usize = 8;
/// Transport bytes an ICMP error quotes at least (RFC 792): the ports of TCP and UDP.
const QUOTED_L4: usize = 8;

/// An ICMP error whose ICMP header at `off` is read: reads the packet it quotes, in the
/// datagram ending at `end`. It becomes [`Transport::IcmpError`] only when the quoted packet is
/// of the same family, comes from this packet's destination, is not a later fragment, carries
/// no IPv6 extension header, is TCP or UDP, and holds its first 8 transport bytes; otherwise it
/// stays [`Transport::Icmp`], an error that cannot be related to anything.
#[inline(always)]
fn quote<F: Frame>(ctx: &F, p: &mut Packet, off: usize, end: usize) {
    if p.l4.kind != Transport::Icmp || !icmp_error(p.v6, p.l4.ty) || off > MAX_L4_OFFSET {
        return;
    }
    let q = off + ICMP_ERROR_HLEN;
    let found = if p.v6 { quoted_ipv6(ctx, q, end, &p.dst) } else { quoted_ipv4(ctx, q, end, &p.dst) };
    if let Some((dst, proto, l4)) = found {
        if q + l4 + QUOTED_L4 <= end {
            if let Some(b) = load::<4, F>(ctx, q + l4) {
                p.quoted = dst;
                p.l4 = L4::icmp_error(p.l4.ty, proto, be16([b[0], b[1]]), be16([b[2], b[3]]));
            }
        }
    }
}

/// A quoted IPv4 header at `q` sent by `from`: its destination, protocol and header length.
#[inline(always)]
fn quoted_ipv4<F: Frame>(ctx: &F, q: usize, end: usize, from: &Addr) -> Option<(Addr, u8, usize)> {
    if q + 20 > end {
        return None;
    }
    let h = load::<20, F>(ctx, q)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let later = be16([h[6], h[7]]) & 0x1fff != 0;
    if h[0] >> 4 != 4 || ihl < 20 || later || (be32(&h, 12) as u64) << 32 != from.hi {
        return None;
    }
    let proto = h[9];
    let dst = Addr { hi: (be32(&h, 16) as u64) << 32, lo: 0 };
    (proto == IPPROTO_TCP || proto == IPPROTO_UDP).then_some((dst, proto, ihl))
}

/// A quoted IPv6 header at `q` sent by `from`: its destination, protocol and header length.
#[inline(always)]
fn quoted_ipv6<F: Frame>(ctx: &F, q: usize, end: usize, from: &Addr) -> Option<(Addr, u8, usize)> {
    if q + IPV6_HLEN > end {
        return None;
    }
    let h = load::<IPV6_HLEN, F>(ctx, q)?;
    let src = Addr { hi: be64(&h, 8), lo: be64(&h, 16) };
    if h[0] >> 4 != 6 || src != *from {
        return None;
    }
    let proto = h[6];
    let dst = Addr { hi: be64(&h, 24), lo: be64(&h, 32) };
    (proto == IPPROTO_TCP || proto == IPPROTO_UDP).then_some((dst, proto, IPV6_HLEN))
}

/// Reads the transport header at `off`, which must end by `end` (the end of the IP datagram).
#[inline(always)]
fn parse_l4<F: Frame>(ctx: &F, off: usize, end: usize, proto: u8, icmp: u8, frag: Frag) -> L4 {
    if off > MAX_L4_OFFSET {
        return L4::UNPARSED;
    }
    let need = match proto {
        IPPROTO_TCP => TCP_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        p if p == icmp => ICMP_HLEN,
        _ => return L4::NONE,
    };
    if off + need > end {
        return if frag == Frag::First { L4::BAD_FRAGMENT } else { L4::MALFORMED };
    }
    let Some(b) = load::<4, F>(ctx, off) else { return L4::MALFORMED };
    if proto == icmp {
        return L4::icmp(b[0]);
    }
    let mut flags = 0;
    if proto == IPPROTO_TCP {
        // Data offset below 5 words or past the datagram: the header lies about itself.
        let Some(d) = load::<2, F>(ctx, off + 12) else { return L4::MALFORMED };
        let doff = ((d[0] >> 4) as usize) * 4;
        if doff < TCP_HLEN || off + doff > end {
            return if frag == Frag::First { L4::BAD_FRAGMENT } else { L4::MALFORMED };
        }
        flags = d[1];
    }
    L4::ports(be16([b[0], b[1]]), be16([b[2], b[3]]), flags)
}
