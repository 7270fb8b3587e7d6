//! The packet parser over byte slices ([`Bytes`]), the same code the XDP and tc programs run:
//! every outcome `parse.rs` defines, from frames built here byte by byte.

use dataplane_common::parse::{
    parse, Addr, Bytes, Frag, Outcome, Parsed, Transport, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L4,
};

const ETH_IP: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86DD;
const ETH_ARP: u16 = 0x0806;
const QTAG: u16 = 0x8100;
const ADTAG: u16 = 0x88A8;
const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AH: u8 = 51;
const DSTOPTS: u8 = 60;
const NO_NEXT: u8 = 59;
const GRE: u8 = 47;
const SYN: u8 = 0x02;

const SRC4: [u8; 4] = [192, 0, 2, 1];
const DST4: [u8; 4] = [198, 51, 100, 2];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn run(frame: &[u8]) -> Parsed {
    parse(&Bytes(frame))
}

/// The packet of an IP outcome, failing with the frame otherwise.
fn ip(frame: &[u8]) -> dataplane_common::parse::Packet {
    let p = run(frame);
    assert_eq!(p.outcome, Outcome::Ip, "frame {frame:02x?}");
    p.packet
}

fn l4(frame: &[u8]) -> L4 {
    ip(frame).l4
}

/// Ethernet header with VLAN tags (TPIDs) in front of `ethertype`.
fn eth(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header with `options` (a multiple of 4 bytes), the flags and fragment offset word
/// `frag`, and correct IHL and total length.
fn ipv4_with(proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 20 + options.len();
    let total = (ihl + payload.len()) as u16;
    let mut h = vec![0x40 | (ihl / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&0x1234u16.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&SRC4);
    h.extend_from_slice(&DST4);
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_with(proto, &[], 0, payload)
}

/// An IPv6 header (`next` the first next header) with the right payload length.
fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&SRC6);
    h.extend_from_slice(&DST6);
    h.extend_from_slice(payload);
    h
}

/// A TCP header with `words` 32-bit words of header (5 without options).
fn tcp_with(sport: u16, dport: u16, flags: u8, words: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0; 8]);
    t.extend_from_slice(&[words << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.resize(usize::from(words.max(5)) * 4, 0x01);
    t
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp_with(sport, dport, flags, 5)
}

fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

fn icmp(ty: u8) -> Vec<u8> {
    vec![ty, 0, 0, 0, 0, 1, 0, 1]
}

/// An IPv6 extension header of the 8-octet kind (hop-by-hop, routing, destination options)
/// `units` 8-octet units long.
fn ext(next: u8, units: usize) -> Vec<u8> {
    let mut e = vec![next, (units - 1) as u8];
    e.resize(units * 8, 0);
    e
}

/// An authentication header `words` 4-octet words long (at least 3).
fn ah(next: u8, words: usize) -> Vec<u8> {
    let mut e = vec![next, (words - 2) as u8];
    e.resize(words * 4, 0);
    e
}

/// An IPv6 fragment header: offset in 8-octet units, more fragments flag, identification.
fn frag6(next: u8, offset8: u16, more: bool, id: u32) -> Vec<u8> {
    let mut e = vec![next, 0];
    e.extend_from_slice(&((offset8 << 3) | u16::from(more)).to_be_bytes());
    e.extend_from_slice(&id.to_be_bytes());
    e
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn addr4(b: [u8; 4]) -> Addr {
    Addr { hi: u64::from(u32::from_be_bytes(b)) << 32, lo: 0 }
}

fn addr6(b: [u8; 16]) -> Addr {
    let v = u128::from_be_bytes(b);
    Addr { hi: (v >> 64) as u64, lo: v as u64 }
}

// ---- Ethernet and VLAN ------------------------------------------------------------------------

#[test]
fn ipv4_tcp_reads_addresses_ports_and_flags() {
    let f = eth(&[], ETH_IP, &ipv4(IPPROTO_TCP, &tcp(40000, 443, SYN)));
    let p = ip(&f);
    assert!(!p.v6);
    assert_eq!((p.src, p.dst), (addr4(SRC4), addr4(DST4)));
    assert_eq!(p.src.v4(), u32::from_be_bytes(SRC4));
    assert_eq!(p.src.bytes()[..4], SRC4);
    assert_eq!((p.proto, p.frag, p.frag_id), (IPPROTO_TCP, Frag::Whole, 0x1234));
    assert_eq!(p.l4, L4::ports(40000, 443, SYN));
    assert_eq!(run(&f).ip_packet(), Some(&p));
}

#[test]
fn ipv4_udp_and_icmp() {
    let f = eth(&[], ETH_IP, &ipv4(IPPROTO_UDP, &udp(5060, 5061, b"INVITE")));
    assert_eq!(l4(&f), L4::ports(5060, 5061, 0));
    let f = eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp(8)));
    assert_eq!(l4(&f), L4::icmp(8));
    assert_eq!(l4(&f).kind, Transport::Icmp);
    // ICMPv6 is not the ICMP of IPv4: another protocol, nothing to read.
    let f = eth(&[], ETH_IP, &ipv4(IPPROTO_ICMPV6, &icmp(128)));
    assert_eq!(l4(&f), L4::NONE);
}

#[test]
fn other_protocols_have_no_transport() {
    let f = eth(&[], ETH_IP, &ipv4(GRE, &[0; 8]));
    let p = ip(&f);
    assert_eq!((p.proto, p.l4), (GRE, L4::NONE));
    // Even with no payload at all.
    assert_eq!(l4(&eth(&[], ETH_IP, &ipv4(GRE, &[]))), L4::NONE);
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(NO_NEXT, &[])));
    assert_eq!((p.proto, p.l4), (NO_NEXT, L4::NONE));
}

#[test]
fn ipv6_tcp_udp_and_icmpv6() {
    let f = eth(&[], ETH_IPV6, &ipv6(IPPROTO_TCP, &tcp(50000, 5061, SYN | 0x10)));
    let p = ip(&f);
    assert!(p.v6);
    assert_eq!((p.src, p.dst), (addr6(SRC6), addr6(DST6)));
    assert_eq!(p.dst.bytes(), DST6);
    assert_eq!((p.proto, p.frag, p.frag_id), (IPPROTO_TCP, Frag::Whole, 0));
    assert_eq!(p.l4, L4::ports(50000, 5061, 0x12));
    assert_eq!(l4(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_UDP, &udp(53, 33000, &[0; 12])))), L4::ports(53, 33000, 0));
    assert_eq!(l4(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_ICMPV6, &icmp(135)))), L4::icmp(135));
    // IPv4's ICMP inside IPv6 is another protocol.
    assert_eq!(l4(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_ICMP, &icmp(8)))), L4::NONE);
}

#[test]
fn non_ip_frames() {
    assert_eq!(run(&eth(&[], ETH_ARP, &[0; 28])), Parsed::NON_IP);
    assert_eq!(run(&eth(&[], 0x88CC, &[])), Parsed::NON_IP);
    assert_eq!(run(&eth(&[QTAG], ETH_ARP, &[0; 28])), Parsed::NON_IP);
    // The outcome's packet is zero for anything but IP.
    assert_eq!(run(&eth(&[], ETH_ARP, &[0; 28])).ip_packet(), None);
}

#[test]
fn one_and_two_vlan_tags_are_skipped() {
    let inner = ipv4(IPPROTO_UDP, &udp(1, 2, &[]));
    let plain = ip(&eth(&[], ETH_IP, &inner));
    for tags in [&[QTAG][..], &[ADTAG], &[ADTAG, QTAG], &[QTAG, QTAG]] {
        assert_eq!(ip(&eth(tags, ETH_IP, &inner)), plain, "tags {tags:04x?}");
    }
    let inner = ipv6(IPPROTO_TCP, &tcp(1, 2, 0));
    assert_eq!(l4(&eth(&[ADTAG, QTAG], ETH_IPV6, &inner)), L4::ports(1, 2, 0));
}

#[test]
fn a_third_vlan_tag_is_too_many() {
    let inner = ipv4(IPPROTO_UDP, &udp(1, 2, &[]));
    assert_eq!(run(&eth(&[ADTAG, QTAG, QTAG], ETH_IP, &inner)), Parsed::TOO_MANY_TAGS);
    assert_eq!(run(&eth(&[QTAG, QTAG, ADTAG], ETH_IP, &inner)), Parsed::TOO_MANY_TAGS);
}

#[test]
fn truncated_ethernet_and_vlan_headers_are_malformed() {
    let f = eth(&[ADTAG, QTAG], ETH_IP, &ipv4(IPPROTO_UDP, &udp(1, 2, &[])));
    // Up to the end of each header, and the IPv4 header's first bytes: Ethernet (14), first tag
    // (18), second tag (22), IPv4 (42).
    for n in 0..42 {
        assert_eq!(run(&f[..n]), Parsed::MALFORMED, "{n} bytes");
    }
    assert_eq!(run(&[]), Parsed::MALFORMED);
}

// ---- Truncation at every length ---------------------------------------------------------------

/// Every prefix of `f` shorter than the IP header (after `l3` bytes of Ethernet and tags) is
/// Malformed; every longer one is IP with a Malformed transport (the datagram runs past the
/// frame); the whole frame parses as `whole`.
fn check_every_prefix(f: &[u8], l3: usize, ip_header: usize, whole: L4) {
    for n in 0..f.len() {
        let got = run(&f[..n]);
        if n < l3 + ip_header {
            assert_eq!(got, Parsed::MALFORMED, "{n} of {} bytes", f.len());
        } else {
            assert_eq!(got.outcome, Outcome::Ip, "{n} of {} bytes", f.len());
            assert_eq!(got.packet.l4, L4::MALFORMED, "{n} of {} bytes", f.len());
        }
    }
    assert_eq!(l4(f), whole);
}

#[test]
fn every_truncation_of_ipv4_frames() {
    check_every_prefix(&eth(&[], ETH_IP, &ipv4(IPPROTO_TCP, &tcp(1, 80, SYN))), 14, 20, L4::ports(1, 80, SYN));
    check_every_prefix(&eth(&[QTAG], ETH_IP, &ipv4(IPPROTO_UDP, &udp(1, 53, b"q"))), 18, 20, L4::ports(1, 53, 0));
    check_every_prefix(&eth(&[ADTAG, QTAG], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp(0))), 22, 20, L4::icmp(0));
    let opts = [0x94, 4, 0, 0, 1, 1, 1, 0]; // router alert, then NOPs and end of options
    check_every_prefix(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &opts, 0, &tcp(7, 8, 0))), 14, 20, L4::ports(7, 8, 0));
}

#[test]
fn every_truncation_of_ipv6_frames() {
    check_every_prefix(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_TCP, &tcp(1, 80, SYN))), 14, 40, L4::ports(1, 80, SYN));
    check_every_prefix(&eth(&[QTAG], ETH_IPV6, &ipv6(IPPROTO_UDP, &udp(1, 53, b"q"))), 18, 40, L4::ports(1, 53, 0));
    check_every_prefix(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_ICMPV6, &icmp(128))), 14, 40, L4::icmp(128));
    let chain = cat(&[&ext(ROUTING, 1), &ext(DSTOPTS, 2), &ext(IPPROTO_UDP, 1), &udp(9, 10, &[])]);
    check_every_prefix(&eth(&[], ETH_IPV6, &ipv6(HOPOPTS, &chain)), 14, 40, L4::ports(9, 10, 0));
}

/// A datagram whose IP length is cut to `keep` bytes of transport header, the frame holding
/// exactly that: the transport header is short of what the datagram says.
#[test]
fn transport_headers_short_of_their_datagram() {
    let full = tcp(1, 2, 0);
    for keep in 0..full.len() {
        let f = eth(&[], ETH_IP, &ipv4(IPPROTO_TCP, &full[..keep]));
        assert_eq!(l4(&f), L4::MALFORMED, "TCP cut to {keep}");
        let f = eth(&[], ETH_IPV6, &ipv6(IPPROTO_TCP, &full[..keep]));
        assert_eq!(l4(&f), L4::MALFORMED, "TCP/IPv6 cut to {keep}");
    }
    let full = udp(1, 2, &[]);
    for keep in 0..full.len() {
        assert_eq!(l4(&eth(&[], ETH_IP, &ipv4(IPPROTO_UDP, &full[..keep]))), L4::MALFORMED, "UDP cut to {keep}");
    }
    for keep in 0..4 {
        assert_eq!(l4(&eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp(8)[..keep]))), L4::MALFORMED, "ICMP cut to {keep}");
        let f = eth(&[], ETH_IPV6, &ipv6(IPPROTO_ICMPV6, &icmp(128)[..keep]));
        assert_eq!(l4(&f), L4::MALFORMED, "ICMPv6 cut to {keep}");
    }
    // Four bytes are the whole of what ICMP needs.
    assert_eq!(l4(&eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp(3)[..4]))), L4::icmp(3));
}

#[test]
fn trailing_bytes_after_the_datagram_are_ignored() {
    // Ethernet pads short frames to 60 bytes; the datagram's own length is what counts.
    let mut f = eth(&[], ETH_IP, &ipv4(IPPROTO_UDP, &udp(1, 2, &[])));
    let want = ip(&f);
    f.resize(60, 0xee);
    assert_eq!(ip(&f), want);
    let mut f = eth(&[], ETH_IPV6, &ipv6(IPPROTO_UDP, &udp(1, 2, &[])));
    let want = ip(&f);
    f.extend_from_slice(&[0xee; 32]);
    assert_eq!(ip(&f), want);
}

// ---- IPv4 header fields -----------------------------------------------------------------------

#[test]
fn ipv4_options_move_the_transport_header() {
    for words in 1..=10 {
        let mut opts = vec![1u8; words * 4]; // NOPs
        opts[words * 4 - 1] = 0;
        let f = eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &opts, 0, &tcp(1000 + words as u16, 22, SYN)));
        assert_eq!(f[14] & 0x0f, 5 + words as u8);
        assert_eq!(l4(&f), L4::ports(1000 + words as u16, 22, SYN), "{words} words of options");
    }
}

#[test]
fn bad_ipv4_version_and_header_length() {
    let good = eth(&[], ETH_IP, &ipv4(IPPROTO_UDP, &udp(1, 2, &[])));
    for version in [0u8, 5, 6, 15] {
        let mut f = good.clone();
        f[14] = (version << 4) | 5;
        assert_eq!(run(&f), Parsed::MALFORMED, "version {version}");
    }
    // IHL below 5 words: addresses readable, the rest not.
    for ihl in 0..5u8 {
        let mut f = good.clone();
        f[14] = 0x40 | ihl;
        let p = ip(&f);
        assert_eq!((p.src, p.l4), (addr4(SRC4), L4::MALFORMED), "IHL {ihl}");
    }
    // IHL past the total length, total length past the frame, total length below the header.
    let mut f = good.clone();
    f[14] = 0x4f;
    assert_eq!(l4(&f), L4::MALFORMED);
    for total in [0u16, 19, 29, 60, 0xffff] {
        let mut f = good.clone();
        f[16..18].copy_from_slice(&total.to_be_bytes());
        assert_eq!(l4(&f), L4::MALFORMED, "total length {total}");
    }
    // Total length 20: a header and an empty datagram, too short for UDP.
    let mut f = good.clone();
    f[16..18].copy_from_slice(&20u16.to_be_bytes());
    assert_eq!(l4(&f), L4::MALFORMED);
}

#[test]
fn bad_tcp_data_offset() {
    for words in [0u8, 1, 4] {
        let f = eth(&[], ETH_IP, &ipv4(IPPROTO_TCP, &tcp_with(1, 2, 0, words)));
        assert_eq!(l4(&f), L4::MALFORMED, "data offset {words}");
    }
    // Options inside the datagram are fine; a data offset past the datagram is not.
    let f = eth(&[], ETH_IP, &ipv4(IPPROTO_TCP, &tcp_with(1, 2, SYN, 15)));
    assert_eq!(l4(&f), L4::ports(1, 2, SYN));
    let mut t = tcp(1, 2, 0);
    t[12] = 6 << 4;
    assert_eq!(l4(&eth(&[], ETH_IP, &ipv4(IPPROTO_TCP, &t))), L4::MALFORMED);
    assert_eq!(l4(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_TCP, &t))), L4::MALFORMED);
}

// ---- IPv4 fragments ---------------------------------------------------------------------------

const MF: u16 = 0x2000;
const DF: u16 = 0x4000;

#[test]
fn ipv4_fragments() {
    let seg = tcp(1, 80, SYN);
    // Don't-fragment is not a fragment.
    let p = ip(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &[], DF, &seg)));
    assert_eq!((p.frag, p.l4), (Frag::Whole, L4::ports(1, 80, SYN)));
    // The first fragment carries the ports.
    let p = ip(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &[], MF, &seg)));
    assert_eq!((p.frag, p.frag_id, p.l4), (Frag::First, 0x1234, L4::ports(1, 80, SYN)));
    // A later fragment has no transport header to read, whatever its bytes.
    for (offset8, more) in [(3u16, true), (3, false), (185, true), (0x1fff, false)] {
        let flags = offset8 | if more { MF } else { 0 };
        let p = ip(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &[], flags, &[0xab; 16])));
        assert_eq!((p.frag, p.frag_id, p.l4), (Frag::Later, 0x1234, L4::NONE), "offset {offset8}");
        let p = ip(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_UDP, &[], flags, &[])));
        assert_eq!((p.frag, p.l4), (Frag::Later, L4::NONE));
    }
}

#[test]
fn ipv4_fragments_that_cannot_be_judged() {
    // RFC 1858: a TCP fragment at offset 8 or 16 bytes overlaps the first one's header.
    for offset8 in [1u16, 2] {
        let p = ip(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &[], offset8 | MF, &[0; 8])));
        assert_eq!((p.frag, p.l4), (Frag::Later, L4::BAD_FRAGMENT), "offset {offset8}");
        // UDP has no such overlap to fear.
        let p = ip(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_UDP, &[], offset8, &[0; 8])));
        assert_eq!((p.frag, p.l4), (Frag::Later, L4::NONE));
    }
    // A first fragment too short for its transport header.
    let seg = tcp(1, 80, SYN);
    for keep in [0usize, 4, 8, 19] {
        let p = ip(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &[], MF, &seg[..keep])));
        assert_eq!((p.frag, p.l4), (Frag::First, L4::BAD_FRAGMENT), "first fragment of {keep} bytes");
    }
    let p = ip(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_UDP, &[], MF, &udp(1, 2, &[])[..7])));
    assert_eq!(p.l4, L4::BAD_FRAGMENT);
    let mut t = tcp(1, 2, 0);
    t[12] = 0x30;
    assert_eq!(l4(&eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &[], MF, &t))), L4::BAD_FRAGMENT);
}

// ---- IPv6 extension headers and fragments -----------------------------------------------------

#[test]
fn ipv6_extension_headers_are_followed() {
    let seg = tcp(1, 5061, SYN);
    let cases: Vec<(u8, Vec<u8>)> = vec![
        (HOPOPTS, cat(&[&ext(IPPROTO_TCP, 1), &seg])),
        (ROUTING, cat(&[&ext(IPPROTO_TCP, 3), &seg])),
        (DSTOPTS, cat(&[&ext(IPPROTO_TCP, 2), &seg])),
        (AH, cat(&[&ah(IPPROTO_TCP, 6), &seg])),
        (HOPOPTS, cat(&[&ext(ROUTING, 1), &ext(AH, 1), &ah(DSTOPTS, 4), &ext(IPPROTO_TCP, 1), &seg])),
    ];
    for (first, payload) in cases {
        let p = ip(&eth(&[], ETH_IPV6, &ipv6(first, &payload)));
        assert_eq!((p.proto, p.frag, p.l4), (IPPROTO_TCP, Frag::Whole, L4::ports(1, 5061, SYN)), "first header {first}");
    }
    // An extension header followed by a protocol without a transport header to read.
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(DSTOPTS, &ext(NO_NEXT, 1))));
    assert_eq!((p.proto, p.l4), (NO_NEXT, L4::NONE));
}

#[test]
fn ipv6_extension_chains_longer_than_the_parser_reads() {
    // Six extension headers then the transport: read. A seventh: unparsed.
    let chain = |n: usize, last: u8| {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend(ext(if i + 1 == n { last } else { DSTOPTS }, 1));
        }
        v
    };
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(DSTOPTS, &cat(&[&chain(6, IPPROTO_UDP), &udp(1, 2, &[])]))));
    assert_eq!((p.proto, p.l4), (IPPROTO_UDP, L4::ports(1, 2, 0)));
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(DSTOPTS, &cat(&[&chain(7, IPPROTO_UDP), &udp(1, 2, &[])]))));
    assert_eq!(p.l4, L4::UNPARSED);
    // Headers that end beyond the furthest offset a transport header is read at (512).
    let long = cat(&[&ext(ROUTING, 32), &ext(IPPROTO_UDP, 32), &udp(1, 2, &[])]);
    assert_eq!(l4(&eth(&[], ETH_IPV6, &ipv6(HOPOPTS, &long))), L4::UNPARSED);
    // Just within it: 14 + 40 + 456 = 510.
    let near = cat(&[&ext(ROUTING, 32), &ext(IPPROTO_UDP, 25), &udp(1, 2, &[])]);
    assert_eq!(l4(&eth(&[], ETH_IPV6, &ipv6(HOPOPTS, &near))), L4::ports(1, 2, 0));
}

#[test]
fn ipv6_extension_headers_past_the_datagram() {
    // The header says 16 bytes, the datagram holds 8 (and the frame more).
    let mut d = ipv6(DSTOPTS, &ext(IPPROTO_UDP, 1));
    d[41] = 1;
    d.extend_from_slice(&[0; 16]);
    assert_eq!(l4(&eth(&[], ETH_IPV6, &d)), L4::MALFORMED);
    // A payload length past the frame.
    let mut d = ipv6(IPPROTO_UDP, &udp(1, 2, &[]));
    d[4..6].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(l4(&eth(&[], ETH_IPV6, &d)), L4::MALFORMED);
}

#[test]
fn ipv6_fragments() {
    let seg = udp(4000, 5060, b"x");
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(FRAGMENT, &cat(&[&frag6(IPPROTO_UDP, 0, true, 77), &seg]))));
    assert_eq!((p.proto, p.frag, p.frag_id, p.l4), (IPPROTO_UDP, Frag::First, 77, L4::ports(4000, 5060, 0)));
    // An atomic fragment (offset 0, no more): a whole datagram.
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(FRAGMENT, &cat(&[&frag6(IPPROTO_UDP, 0, false, 78), &seg]))));
    assert_eq!((p.frag, p.frag_id, p.l4), (Frag::Whole, 78, L4::ports(4000, 5060, 0)));
    // A later fragment: its protocol, no transport header.
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(FRAGMENT, &cat(&[&frag6(IPPROTO_UDP, 100, false, 79), &[0; 8]]))));
    assert_eq!((p.proto, p.frag, p.frag_id, p.l4), (IPPROTO_UDP, Frag::Later, 79, L4::NONE));
    // Behind other extension headers.
    let payload = cat(&[&ext(FRAGMENT, 1), &frag6(IPPROTO_TCP, 0, true, 80), &tcp(1, 2, 0)]);
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(HOPOPTS, &payload)));
    assert_eq!((p.proto, p.frag, p.frag_id, p.l4), (IPPROTO_TCP, Frag::First, 80, L4::ports(1, 2, 0)));
}

#[test]
fn ipv6_fragments_that_cannot_be_judged() {
    for offset8 in [1u16, 2] {
        let p = ip(&eth(&[], ETH_IPV6, &ipv6(FRAGMENT, &cat(&[&frag6(IPPROTO_TCP, offset8, true, 5), &[0; 8]]))));
        assert_eq!((p.frag, p.l4), (Frag::Later, L4::BAD_FRAGMENT), "offset {offset8}");
    }
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(FRAGMENT, &cat(&[&frag6(IPPROTO_TCP, 3, true, 5), &[0; 8]]))));
    assert_eq!((p.frag, p.l4), (Frag::Later, L4::NONE));
    // A first fragment that stops inside the TCP header.
    let p = ip(&eth(&[], ETH_IPV6, &ipv6(FRAGMENT, &cat(&[&frag6(IPPROTO_TCP, 0, true, 5), &tcp(1, 2, 0)[..12]]))));
    assert_eq!((p.frag, p.l4), (Frag::First, L4::BAD_FRAGMENT));
    // A fragment header cut short by the end of the frame.
    let d = ipv6(FRAGMENT, &frag6(IPPROTO_UDP, 0, true, 5));
    for cut in 1..8 {
        let mut f = eth(&[], ETH_IPV6, &d);
        f.truncate(f.len() - cut);
        f[18..20].copy_from_slice(&(8 - cut as u16).to_be_bytes());
        assert_eq!(l4(&f), L4::MALFORMED, "fragment header cut by {cut}");
    }
}

#[test]
fn bad_ipv6_version() {
    let good = eth(&[], ETH_IPV6, &ipv6(IPPROTO_UDP, &udp(1, 2, &[])));
    for version in [0u8, 4, 7, 15] {
        let mut f = good.clone();
        f[14] = version << 4;
        assert_eq!(run(&f), Parsed::MALFORMED, "version {version}");
    }
    // An IPv4 header behind the IPv6 ethertype, and the reverse.
    assert_eq!(run(&eth(&[], ETH_IPV6, &ipv4(IPPROTO_UDP, &udp(1, 2, &[0; 32])))), Parsed::MALFORMED);
    assert_eq!(run(&eth(&[], ETH_IP, &ipv6(IPPROTO_UDP, &udp(1, 2, &[])))), Parsed::MALFORMED);
}

// ---- ICMP errors ------------------------------------------------------------------------------

/// `d` (an IPv4 or IPv6 datagram) with source and destination swapped: what the protected
/// server sent, as an ICMP error sent back to it quotes it.
fn swapped(mut d: Vec<u8>) -> Vec<u8> {
    let (a, n) = if d[0] >> 4 == 4 { (12, 4) } else { (8, 16) };
    let src: Vec<u8> = d[a..a + n].to_vec();
    d.copy_within(a + n..a + 2 * n, a);
    d[a + n..a + 2 * n].copy_from_slice(&src);
    d
}

/// An ICMP (or ICMPv6) error of type `ty` quoting the first `keep` bytes of `quoted`.
fn icmp_error(ty: u8, quoted: &[u8], keep: usize) -> Vec<u8> {
    cat(&[&[ty, 0, 0, 0, 0, 0, 0, 0], &quoted[..keep.min(quoted.len())]])
}

#[test]
fn ipv4_icmp_errors_quote_the_packet_they_answer() {
    let sent = swapped(ipv4(IPPROTO_UDP, &udp(5060, 40000, b"payload")));
    for ty in [3u8, 11, 12] {
        let p = ip(&eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp_error(ty, &sent, 28))));
        assert_eq!((p.l4, p.quoted), (L4::icmp_error(ty, IPPROTO_UDP, 5060, 40000), addr4(SRC4)), "type {ty}");
        assert_eq!(p.l4.kind, Transport::IcmpError);
    }
    // 8 bytes of TCP are enough: the ports.
    let sent_tcp = swapped(ipv4(IPPROTO_TCP, &tcp(443, 50000, SYN)));
    let p = ip(&eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp_error(3, &sent_tcp, 28))));
    assert_eq!(p.l4, L4::icmp_error(3, IPPROTO_TCP, 443, 50000));
    // Quoted options move the quoted transport header.
    let sent_opts = swapped(ipv4_with(IPPROTO_UDP, &[1, 1, 1, 0], 0, &udp(7, 8, &[])));
    assert_eq!(l4(&eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp_error(3, &sent_opts, 32)))), L4::icmp_error(3, IPPROTO_UDP, 7, 8));
    check_every_prefix(
        &eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp_error(3, &sent, 28))),
        14,
        20,
        L4::icmp_error(3, IPPROTO_UDP, 5060, 40000),
    );
}

#[test]
fn ipv4_icmp_errors_that_relate_to_nothing_stay_icmp() {
    let sent = swapped(ipv4(IPPROTO_UDP, &udp(5060, 40000, &[])));
    let unrelated = |quoted: &[u8], keep: usize| {
        let p = ip(&eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp_error(3, quoted, keep))));
        assert_eq!((p.l4, p.quoted), (L4::icmp(3), Addr::default()), "quoting {:02x?}", &quoted[..keep.min(quoted.len())]);
    };
    // Fewer than 8 quoted transport bytes, down to nothing quoted at all.
    for keep in [0, 19, 20, 27] {
        unrelated(&sent, keep);
    }
    // Not sent by this packet's destination.
    unrelated(&ipv4(IPPROTO_UDP, &udp(5060, 40000, &[])), 28);
    // Neither TCP nor UDP, a later fragment, another family, a bad header length.
    unrelated(&swapped(ipv4(IPPROTO_ICMP, &icmp(8))), 28);
    unrelated(&swapped(ipv4_with(IPPROTO_UDP, &[], 5, &[0; 8])), 28);
    let mut v = swapped(ipv4(IPPROTO_UDP, &udp(1, 2, &[])));
    v[0] = 0x65;
    unrelated(&v, 28);
    let mut ihl = swapped(ipv4(IPPROTO_UDP, &udp(1, 2, &[])));
    ihl[0] = 0x44;
    unrelated(&ihl, 28);
    // Echo and other types quote nothing.
    let p = ip(&eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp_error(8, &sent, 28))));
    assert_eq!(p.l4, L4::icmp(8));
    // The quote must lie inside the outer datagram, not just the frame.
    let mut f = eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp_error(3, &sent, 28)));
    f[16..18].copy_from_slice(&(20 + 8 + 27u16).to_be_bytes());
    assert_eq!(l4(&f), L4::icmp(3));
}

#[test]
fn ipv6_icmp_errors() {
    let sent = swapped(ipv6(IPPROTO_UDP, &udp(5061, 41000, b"x")));
    for ty in 1..=4u8 {
        let p = ip(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_ICMPV6, &icmp_error(ty, &sent, 48))));
        assert_eq!((p.l4, p.quoted), (L4::icmp_error(ty, IPPROTO_UDP, 5061, 41000), addr6(SRC6)), "type {ty}");
    }
    // Informational types (echo 128, neighbour solicitation 135) quote nothing.
    for ty in [128u8, 135] {
        assert_eq!(l4(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_ICMPV6, &icmp_error(ty, &sent, 48)))), L4::icmp(ty));
    }
    let unrelated = |quoted: &[u8], keep: usize| {
        let p = ip(&eth(&[], ETH_IPV6, &ipv6(IPPROTO_ICMPV6, &icmp_error(1, quoted, keep))));
        assert_eq!((p.l4, p.quoted), (L4::icmp(1), Addr::default()));
    };
    unrelated(&sent, 47);
    unrelated(&sent, 40);
    unrelated(&ipv6(IPPROTO_UDP, &udp(5061, 41000, &[])), 48);
    // An extension header in the quoted packet is not followed.
    unrelated(&swapped(ipv6(DSTOPTS, &cat(&[&ext(IPPROTO_UDP, 1), &udp(1, 2, &[])]))), 56);
    // An IPv4 packet quoted by ICMPv6.
    unrelated(&swapped(ipv4(IPPROTO_UDP, &udp(1, 2, &[0; 20]))), 48);
    check_every_prefix(
        &eth(&[QTAG], ETH_IPV6, &ipv6(IPPROTO_ICMPV6, &icmp_error(1, &sent, 48))),
        18,
        40,
        L4::icmp_error(1, IPPROTO_UDP, 5061, 41000),
    );
}

// ---- Whatever the bytes -----------------------------------------------------------------------

/// xorshift64: a fixed sequence, so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Mutated valid frames: a result that is not Malformed was read from bytes inside the frame
/// only, so bytes appended after the frame never change it; an outcome other than IP carries no
/// packet.
#[test]
fn results_do_not_depend_on_bytes_past_the_frame() {
    let seeds = [
        eth(&[], ETH_IP, &ipv4_with(IPPROTO_TCP, &[1, 1, 1, 0], MF, &tcp(1, 2, SYN))),
        eth(&[QTAG], ETH_IP, &ipv4(IPPROTO_UDP, &udp(1, 2, b"abc"))),
        eth(&[], ETH_IPV6, &ipv6(HOPOPTS, &cat(&[&ext(FRAGMENT, 1), &frag6(IPPROTO_TCP, 0, true, 9), &tcp(1, 2, 0)]))),
        eth(&[ADTAG, QTAG], ETH_IPV6, &ipv6(AH, &cat(&[&ah(IPPROTO_ICMPV6, 4), &icmp(128)]))),
        eth(&[], ETH_IP, &ipv4(IPPROTO_ICMP, &icmp_error(3, &swapped(ipv4(IPPROTO_UDP, &udp(1, 2, &[]))), 28))),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut kinds = std::collections::HashSet::new();
    for i in 0..20_000 {
        let mut f = seeds[i % seeds.len()].clone();
        for _ in 0..=(rng.next() % 4) {
            let at = (rng.next() as usize) % f.len();
            f[at] = rng.next() as u8;
        }
        let cut = (rng.next() as usize) % (f.len() + 1);
        f.truncate(cut);
        let got = run(&f);
        kinds.insert((got.outcome as u8, got.packet.l4.kind as u8));
        if got.outcome != Outcome::Ip {
            assert!([Parsed::MALFORMED, Parsed::NON_IP, Parsed::TOO_MANY_TAGS].contains(&got), "frame {f:02x?}");
        }
        if got.outcome == Outcome::Malformed || got.packet.l4.kind == Transport::Malformed {
            continue;
        }
        let mut longer = f.clone();
        longer.extend_from_slice(&[(rng.next() as u8) | 1; 64]);
        assert_eq!(run(&longer), got, "frame {f:02x?}");
    }
    // The mutations reach the outcomes, not only one or two.
    let ip = |t: Transport| (Outcome::Ip as u8, t as u8);
    let want = [
        ip(Transport::Ports),
        ip(Transport::Icmp),
        ip(Transport::IcmpError),
        ip(Transport::None),
        ip(Transport::Malformed),
        ip(Transport::BadFragment),
        (Outcome::NonIp as u8, Transport::None as u8),
        (Outcome::Malformed as u8, Transport::None as u8),
    ];
    assert!(want.iter().all(|k| kinds.contains(k)), "outcomes seen: {kinds:?}");
}
