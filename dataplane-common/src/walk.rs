//! The classifier: the one walk from a parsed packet to a verdict. The XDP program runs it over
//! the `POLICY` map, the tc program runs its outbound half, and `dataplane explain` and the
//! tests' twin run it over the compiled image in userspace, so the kernel and `explain` cannot
//! disagree. Generic over the image ([`Image`]) and over what outlives a packet
//! ([`Memory`]: fragments and tracked connections), as the parser is generic over the frame.
//!
//! Per packet (see docs/policy.md, "Lookups per packet"):
//! 1. destination trie -> destination class (miss: unprotected);
//! 2. ICMP and other protocols are decided by type and protocol; an ICMP error that quotes a
//!    TCP or UDP packet goes on with the quoted packet's flow, reversed (see [`related`]);
//! 3. the port filter: a protocol and destination port no flow names is `no_flow`;
//! 4. the class's source trie -> policy (none: `no_flow`);
//! 5. the policy's port table -> verdict, or a source-port table -> verdict.
//!
//! Every step is a bounded number of array reads; only a packet that would be dropped looks
//! for a tracked connection (the protected server's own), and only while its port has one.

use crate::image::*;
pub use crate::parse::icmp_error;
pub use crate::parse::Addr;
use crate::parse::{Frag, Outcome, Packet, Parsed, Transport, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use crate::{Config, Reason, CONFIG_ALLOW_ECHO, CONFIG_DROP_UNPROTECTED};

/// Read access to a policy image.
pub trait Image {
    /// Word `index`, or None past the end (a walk that meets None answers `no_flow`).
    fn word(&self, index: u32) -> Option<u64>;
}

impl Image for [u64] {
    #[inline(always)]
    fn word(&self, index: u32) -> Option<u64> {
        self.get(index as usize).copied()
    }
}

/// What outlives a packet: the datagrams whose first fragment passed, and the connections the
/// protected servers opened.
pub trait Memory {
    /// A later fragment: the slot its datagram's first fragment passed with.
    fn fragment(&mut self, p: &Packet) -> Option<u32>;
    /// A first fragment passed with `slot`: its later fragments follow it.
    fn first_fragment_passed(&mut self, p: &Packet, slot: u32);
    /// An arriving TCP or UDP packet that the policy would drop: the outbound slot of the
    /// tracked connection it answers, if it is a reply.
    fn reply(&mut self, p: &Packet, sport: u16, dport: u16, tcp_flags: u8) -> Option<u32>;
    /// An ICMP error to `server` about the packet [`quoted_key`] `k` answers: the outbound slot
    /// of the tracked connection it belongs to, if any. Looks only: an error neither refreshes
    /// nor closes a connection.
    fn related(&mut self, k: &Key, server: &Addr) -> Option<u32>;
}

/// No memory: the verdict a packet gets from the policy alone (`explain`).
pub struct NoMemory;

impl Memory for NoMemory {
    fn fragment(&mut self, _: &Packet) -> Option<u32> {
        None
    }
    fn first_fragment_passed(&mut self, _: &Packet, _: u32) {}
    fn reply(&mut self, _: &Packet, _: u16, _: u16, _: u8) -> Option<u32> {
        None
    }
    fn related(&mut self, _: &Key, _: &Addr) -> Option<u32> {
        None
    }
}

/// No flow slot to count against.
pub const NO_SLOT: u32 = u32::MAX;
/// Slot bit: an outbound flow's slot, counted on its replies (`REPLY_FLOWS`).
pub const REPLY_SLOT: u32 = 1 << 31;

/// What the walk answers for a packet: why it passes or drops, and which flow counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Pass or drop, and why.
    pub reason: Reason,
    /// The credited flow's slot, [`NO_SLOT`], or an outbound slot with [`REPLY_SLOT`].
    pub slot: u32,
}

impl Verdict {
    /// A verdict no flow counts.
    #[inline(always)]
    pub const fn new(reason: Reason) -> Self {
        Verdict { reason, slot: NO_SLOT }
    }
}

impl Addr {
    /// Byte `i` (0-15) of the address.
    #[inline(always)]
    fn byte(&self, i: u32) -> u32 {
        let (half, at) = if i < 8 { (self.hi, i) } else { (self.lo, i & 7) };
        ((half >> ((56 - 8 * at) & 63)) & 0xff) as u32
    }

    /// Whether the first `len` bits equal those of (`hi`, `lo`).
    #[inline(always)]
    fn prefix_of(&self, hi: u64, lo: u64, len: u32) -> bool {
        if len == 0 {
            true
        } else if len <= 64 {
            (self.hi ^ hi) >> ((64 - len) & 63) == 0
        } else {
            self.hi == hi && (self.lo ^ lo) >> ((128 - len) & 63) == 0
        }
    }
}

/// Longest-prefix match in the trie whose root entry is `root`.
#[inline(always)]
pub fn trie<I: Image + ?Sized>(img: &I, root: u64, v6: bool, a: &Addr) -> Option<u32> {
    let mut e = root;
    if entry_tag(e) == TAG_SKIP {
        // The bytes every prefix of the trie shares (a site's IPv6 prefixes share a /32 or a
        // /64): compared at once, before any node.
        let at = entry_low(e);
        let meta = img.word(at + 2)?;
        if !a.prefix_of(img.word(at)?, img.word(at + 1)?, 8 * ((meta >> 32) as u32 & 31)) {
            return Some(meta as u32);
        }
        e = img.word(at + 3)?;
    }
    for _ in 0..=TRIE_MAX_DEPTH {
        match entry_tag(e) {
            TAG_NODE => e = img.word(entry_low(e) + a.byte(entry_depth(e)))?,
            TAG_BUCKET => return bucket(img, e, v6, a),
            _ => return Some(entry_low(e)),
        }
    }
    // Only a corrupt image walks further than an address is long.
    None
}

/// The longest prefix of a bucket (sorted longest first) that holds the address, else the
/// bucket's own value.
#[inline(always)]
fn bucket<I: Image + ?Sized>(img: &I, e: u64, v6: bool, a: &Addr) -> Option<u32> {
    let at = entry_low(e);
    let n = bucket_count(e);
    for i in 0..BUCKET_MAX {
        if i >= n {
            break;
        }
        if v6 {
            let w = at + 1 + i * BUCKET_V6_WORDS;
            let tail = img.word(w + 2)?;
            if a.prefix_of(img.word(w)?, img.word(w + 1)?, (tail >> 32) as u32 & 0xff) {
                return Some(tail as u32);
            }
        } else {
            let w = img.word(at + 1 + i)?;
            let len = (w >> BUCKET_V4_VALUE_BITS) as u32 & 63;
            if a.prefix_of(w & 0xffff_ffff_0000_0000, 0, len) {
                return Some(w as u32 & ((1 << BUCKET_V4_VALUE_BITS) - 1));
            }
        }
    }
    img.word(at).map(|w| w as u32)
}

/// The value of port `x` in the port table at `t`.
#[inline(always)]
pub fn range<I: Image + ?Sized>(img: &I, t: u32, x: u16) -> Option<u32> {
    let h = img.word(t)?;
    let depth = (h & 15) as u32;
    let mut rank = 0;
    if depth == 1 {
        rank = keys_below(img.word(t + 1)?, x);
    } else if depth > 1 {
        let starts = [img.word(t + 1)?, img.word(t + 2)?];
        let mut node = 0;
        for level in 0..RANGE_MAX_DEPTH {
            if level >= depth {
                break;
            }
            let start = if level == 0 {
                RANGE_HEADER_WORDS
            } else {
                (starts[((level - 1) >> 2) as usize & 1] >> (16 * ((level - 1) & 3))) as u32 & 0xffff
            };
            let below = keys_below(img.word(t + start + node)?, x);
            if level + 1 == depth {
                rank = node * RANGE_KEYS + below;
            } else {
                node = node * RANGE_FANOUT + below;
            }
        }
    }
    let w = img.word(t + (h >> 32) as u32 + rank / 2)?;
    Some((w >> (32 * (rank & 1))) as u32)
}

/// The destination class of `dst` in direction `dir` (None: not a destination of the direction).
#[inline(always)]
pub fn dst_class<I: Image + ?Sized>(img: &I, dir: u32, v6: bool, dst: &Addr) -> Option<u32> {
    let h = header(dir);
    let root = img.word(h + if v6 { H_DST_V6 } else { H_DST_V4 })?;
    trie(img, root, v6, dst).filter(|&c| c != 0)
}

/// Pass or drop for a flow's verdict value.
#[inline(always)]
fn flow_verdict(v: u32) -> Verdict {
    if v & V_FLOW == 0 {
        return Verdict::new(Reason::DropNoFlow);
    }
    let reason = if v & V_DENY != 0 { Reason::DropDenyFlow } else { Reason::PassFlow };
    Verdict { reason, slot: v & V_INDEX }
}

/// What a flow is looked up by: the family, protocol, source address and ports of a TCP or UDP
/// packet (or of the one an ICMP error quotes, reversed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// TCP or UDP.
    pub proto: u8,
    /// The source address, which the class's source trie maps to a policy.
    pub src: Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Key {
    /// The key of a TCP or UDP packet with these ports.
    #[inline(always)]
    pub fn of(p: &Packet, sport: u16, dport: u16) -> Self {
        Key { v6: p.v6, proto: p.proto, src: p.src, sport, dport }
    }
}

/// The flow that decides a TCP or UDP packet to destination class `class` of direction `dir`:
/// port filter, source trie, policy, port tables.
#[inline(always)]
pub fn flow<I: Image + ?Sized>(img: &I, dir: u32, class: u32, k: &Key) -> Verdict {
    flow_value(img, dir, class, k).map_or(Verdict::new(Reason::DropNoFlow), flow_verdict)
}

#[inline(always)]
fn flow_value<I: Image + ?Sized>(img: &I, dir: u32, class: u32, k: &Key) -> Option<u32> {
    let h = header(dir);
    let proto = proto_index(k.proto);
    if img.word(port_filter_word(dir, proto, k.dport))? & port_filter_bit(k.dport) == 0 {
        return Some(0);
    }
    let records = img.word(h + H_RECORDS)?;
    let record = records as u32 + (class - 1) * DST_RECORD_WORDS + k.v6 as u32;
    let policy = trie(img, img.word(record)?, k.v6, &k.src)?;
    if policy == 0 {
        return Some(0);
    }
    let tables = img.word((records >> 32) as u32 + policy - 1)?;
    let table = (tables >> (32 * proto)) as u32;
    if table == 0 {
        return Some(0);
    }
    let v = range(img, table, k.dport)?;
    if v & V_SPORT == 0 {
        return Some(v);
    }
    range(img, v & V_INDEX, k.sport)
}

/// ICMP control traffic that keeps IPv4 and IPv6 working: errors (which pass only when related,
/// see [`related`]) and neighbour discovery. The nftables export and the iptables comparison
/// take their type lists from here.
#[inline(always)]
pub const fn icmp_control(v6: bool, ty: u8) -> bool {
    icmp_error(v6, ty) || icmp_neighbour(v6, ty)
}

/// ICMPv6 neighbour and router discovery (133-137), which passes whatever the policy says:
/// without it IPv6 stops working.
#[inline(always)]
pub const fn icmp_neighbour(v6: bool, ty: u8) -> bool {
    v6 && matches!(ty, 133..=137)
}

/// ICMP echo request and reply, which the site's `icmp-echo` decides.
#[inline(always)]
pub const fn icmp_echo(v6: bool, ty: u8) -> bool {
    if v6 {
        matches!(ty, 128 | 129)
    } else {
        matches!(ty, 0 | 8)
    }
}

/// The ICMP types that pass to a protected address (`echo`: the site allows echo), in order: for
/// exporters that write the rule out.
pub fn icmp_types(v6: bool, echo: bool) -> impl Iterator<Item = u8> {
    (0..=u8::MAX).filter(move |&t| icmp_control(v6, t) || (echo && icmp_echo(v6, t)))
}

/// ICMP to a protected address, by type, for all but the errors that quote a TCP or UDP packet
/// (those are judged by [`related`]): an error here quotes nothing it could be related to.
#[inline(always)]
pub const fn icmp(v6: bool, ty: u8, flags: u32) -> Reason {
    if icmp_error(v6, ty) {
        Reason::DropIcmpUnrelated
    } else if icmp_neighbour(v6, ty) || (icmp_echo(v6, ty) && flags & CONFIG_ALLOW_ECHO != 0) {
        Reason::PassIcmp
    } else {
        Reason::DropIcmp
    }
}

/// The flow an ICMP error would relate to: the packet the peer sends that the quoted one
/// answers or opens (peer -> protected server, ports swapped).
#[inline(always)]
pub fn quoted_key(p: &Packet) -> Key {
    Key { v6: p.v6, proto: p.l4.quoted_proto, src: p.quoted, sport: p.l4.dport, dport: p.l4.sport }
}

/// An ICMP error that quotes a TCP or UDP packet of the protected server, given the verdict of
/// the inbound policy on [`quoted_key`]: it passes (counted on that flow) when the policy admits
/// the peer's side of the exchange, or (counted on the connection's outbound flow) when the
/// quoted packet belongs to a connection the server opened and is tracked; otherwise it is
/// `icmp_unrelated`, as nftables' conntrack drops errors that are not `related`.
#[inline(always)]
pub fn related<M: Memory>(memory: &mut M, p: &Packet, k: &Key, v: Verdict) -> Verdict {
    if v.reason == Reason::PassFlow {
        return Verdict { reason: Reason::PassIcmp, slot: v.slot };
    }
    match memory.related(k, &p.dst) {
        Some(slot) => Verdict { reason: Reason::PassIcmp, slot: slot | REPLY_SLOT },
        None => Verdict::new(Reason::DropIcmpUnrelated),
    }
}

/// Ports and TCP flags of a TCP or UDP packet that carries its transport header.
#[inline(always)]
pub fn ports(p: &Packet) -> Option<(u16, u16, u8)> {
    if p.frag == Frag::Later || (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) {
        return None;
    }
    (p.l4.kind == Transport::Ports).then_some((p.l4.sport, p.l4.dport, p.l4.flags))
}

/// The site's settings an image holds, with the run's (None: not an image of this layout, which
/// nothing must be judged by).
#[inline(always)]
pub fn config<I: Image + ?Sized>(img: &I, run: &crate::RunConfig) -> Option<Config> {
    config_of([img.word(0)?, img.word(1)?, img.word(2)?], run)
}

/// The verdict on an arriving frame (the XDP program): the policy's, unless a packet it would
/// drop is the reply of a connection a protected server opened. Remembers first fragments that
/// pass, so that their later fragments follow.
#[inline(always)]
pub fn judge<I: Image + ?Sized, M: Memory>(img: &I, memory: &mut M, config: &Config, parsed: &Parsed) -> Verdict {
    let p = match parsed.outcome {
        Outcome::NonIp => return Verdict::new(Reason::PassNonIp),
        // The destination cannot be read: it might be protected, so never pass it.
        Outcome::Malformed => return Verdict::new(Reason::DropMalformed),
        Outcome::TooManyTags => return Verdict::new(Reason::DropUnparsed),
        Outcome::Ip => &parsed.packet,
    };
    let mut v = decide(img, memory, config, p);
    if v.reason.is_drop() {
        if let Some((sport, dport, flags)) = ports(p) {
            if let Some(slot) = memory.reply(p, sport, dport, flags) {
                v = Verdict { reason: Reason::PassReply, slot: slot | REPLY_SLOT };
            }
        }
    }
    if p.frag == Frag::First && !v.reason.is_drop() {
        memory.first_fragment_passed(p, v.slot);
    }
    v
}

/// The policy's verdict on an arriving IP packet.
#[inline(always)]
pub fn decide<I: Image + ?Sized, M: Memory>(img: &I, memory: &mut M, config: &Config, p: &Packet) -> Verdict {
    let Some(class) = dst_class(img, INBOUND, p.v6, &p.dst) else {
        return Verdict::new(if config.flags & CONFIG_DROP_UNPROTECTED != 0 {
            Reason::DropUnprotected
        } else {
            Reason::PassUnprotected
        });
    };
    match p.l4.kind {
        Transport::Malformed => return Verdict::new(Reason::DropMalformed),
        Transport::Unparsed => return Verdict::new(Reason::DropUnparsed),
        Transport::BadFragment => return Verdict::new(Reason::DropFragment),
        _ => {}
    }
    if p.frag == Frag::Later {
        return match memory.fragment(p) {
            Some(slot) => Verdict { reason: Reason::PassFragment, slot },
            None => Verdict::new(Reason::DropFragment),
        };
    }
    let icmp_proto = if p.v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    // One flow lookup serves both a TCP or UDP packet and the packet an ICMP error quotes.
    let (k, error) = match p.l4.kind {
        Transport::Icmp if p.proto == icmp_proto => return Verdict::new(icmp(p.v6, p.l4.ty, config.flags)),
        Transport::IcmpError if p.proto == icmp_proto => (quoted_key(p), true),
        Transport::Ports if p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP => (Key::of(p, p.l4.sport, p.l4.dport), false),
        _ => return Verdict::new(Reason::DropNoFlow),
    };
    let v = flow(img, INBOUND, class, &k);
    if error {
        related(memory, p, &k, v)
    } else {
        v
    }
}

/// A TCP or UDP packet a protected server sends (the tc program): `PassFlow` with the outbound
/// slot when an outbound allow flow documents it (its replies are then admitted),
/// `DropDenyFlow` when an outbound deny flow wins, `DropNoFlow` otherwise.
#[inline(always)]
pub fn outbound<I: Image + ?Sized>(img: &I, p: &Packet, sport: u16, dport: u16) -> Verdict {
    match dst_class(img, OUTBOUND, p.v6, &p.dst) {
        Some(class) => flow(img, OUTBOUND, class, &Key::of(p, sport, dport)),
        None => Verdict::new(Reason::DropNoFlow),
    }
}

/// Whether the inbound policy admits the replies of a packet a protected server sends (the
/// reversed 5-tuple): such replies are not tracked, they stay on their inbound flow.
#[inline(always)]
pub fn inbound_admits_reply<I: Image + ?Sized>(img: &I, p: &Packet, sport: u16, dport: u16) -> bool {
    let reply = Key { v6: p.v6, proto: p.proto, src: p.dst, sport: dport, dport: sport };
    match dst_class(img, INBOUND, p.v6, &p.src) {
        Some(class) => flow(img, INBOUND, class, &reply).reason == Reason::PassFlow,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_below_counts_each_lane() {
        let w = |k: [u16; 4]| k.iter().enumerate().fold(0u64, |acc, (i, &k)| acc | (k as u64) << (16 * i));
        let keys = [range_key(10), range_key(20), range_key(30), RANGE_PAD];
        for x in [0u16, 9, 10, 11, 19, 20, 29, 30, 31, 65534, 65535] {
            let want = keys.iter().filter(|&&k| k < x).count() as u32;
            assert_eq!(keys_below(w(keys), x), want, "x = {x}");
        }
        assert_eq!(keys_below(w([0, 0, 0, 0]), 65535), 4);
        assert_eq!(keys_below(w([RANGE_PAD; 4]), 65535), 0);
        assert_eq!(keys_below(w([65534, 0, 65534, 0]), 65535), 4);
    }

    #[test]
    fn address_bytes_and_prefixes() {
        let a = Addr::from_bytes(false, &[192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!((a.byte(0), a.byte(3), a.byte(4)), (192, 7, 0));
        assert!(a.prefix_of(0xc000_0200_0000_0000, 0, 24));
        assert!(!a.prefix_of(0xc000_0300_0000_0000, 0, 24));
        assert!(a.prefix_of(0, 0, 0));
        let mut b = [0u8; 16];
        b[0] = 0x20;
        b[15] = 1;
        let a = Addr::from_bytes(true, &b);
        assert_eq!((a.byte(0), a.byte(15)), (0x20, 1));
        assert!(a.prefix_of(0x2000_0000_0000_0000, 1, 128));
        assert!(!a.prefix_of(0x2000_0000_0000_0000, 2, 128));
        assert!(a.prefix_of(0x2000_0000_0000_0000, 0, 127));
    }
}
