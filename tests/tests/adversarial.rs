//! Adversarial frames through the real XDP program (BPF_PROG_TEST_RUN): every class of hostile
//! or broken packet gets a defined verdict, never a bypass. Each frame's action and the counters
//! that moved must equal both the verdict written here and the userspace twin (the same parser
//! compiled for the host, then the classifier `explain` uses).
//!
//! The policy is `simple_tables`: 10.0.0.1 and fd00::1 are protected; TCP 80 (flow 0) and UDP
//! 5000-5001 (flow 1) are allowed from anywhere.
//!
//! The last test sends the same classes of frames over a veth pair into the program attached
//! natively, and checks the counters against the twin.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use aya::programs::XdpMode;
use dataplane::{
    kernel::load,
    lab::netns::{in_netns, Lab, CLIENT_IF, SERVER_IF},
};

use dataplane_common::Reason;
use dataplane_tests::{
    packet::{FragSpec, Pkt, TPID_8021AD, TPID_8021Q},
    rng::Rng,
    simple_tables,
    twin::{Twin, MAX_TRACKED_DATAGRAMS},
    Harness, Observed, XDP_DROP, XDP_PASS,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const CLIENT4: &str = "192.0.2.7";
const SERVER4: &str = "10.0.0.1";
const CLIENT6: &str = "2001:db8::7";
const SERVER6: &str = "fd00::1";

struct Bench {
    h: Harness,
    twin: Twin,
}

impl Bench {
    fn new() -> Self {
        let t = simple_tables();
        Bench { h: Harness::new(&t).expect("loading the XDP program"), twin: Twin::new(&t) }
    }

    /// The kernel and the twin agree on `frame`; returns what they did.
    fn agree(&mut self, what: &str, frame: &[u8]) -> Observed {
        let got = self.h.observe(frame).unwrap();
        let twin = self.twin.judge(frame);
        assert_eq!(got, twin, "{what}: kernel and twin disagree on {} bytes: {frame:02x?}", frame.len());
        got
    }

    /// The kernel and the twin both give `reason` (and `flow`) for `frame`.
    fn expect(&mut self, what: &str, frame: &[u8], reason: Reason, flow: Option<usize>) {
        let got = self.agree(what, frame);
        let action = if reason.is_drop() { XDP_DROP } else { XDP_PASS };
        let want = Observed { action, reasons: vec![reason], flows: flow.into_iter().collect(), reply_flows: vec![] };
        assert_eq!(got, want, "{what}: {} bytes: {frame:02x?}", frame.len());
    }
}

/// Valid frames to a protected address, one per header layout the parser knows.
fn allowed_frames() -> Vec<(&'static str, Vec<u8>, usize)> {
    let (c4, s4, c6, s6) = (ip(CLIENT4), ip(SERVER4), ip(CLIENT6), ip(SERVER6));
    vec![
        ("ipv4 tcp", Pkt::tcp(c4, s4, 40000, 80).build(), 0),
        ("ipv4 udp", Pkt::udp(c4, s4, 40000, 5001).build(), 1),
        ("ipv4 options", Pkt::tcp(c4, s4, 40000, 80).v4_options(10).build(), 0),
        ("802.1q", Pkt::udp(c4, s4, 1, 5000).vlans(&[TPID_8021Q]).build(), 1),
        ("qinq", Pkt::tcp(c6, s6, 1, 80).vlans(&[TPID_8021AD, TPID_8021Q]).build(), 0),
        ("ipv6 tcp", Pkt::tcp(c6, s6, 40000, 80).build(), 0),
        ("ipv6 ext", Pkt::udp(c6, s6, 40000, 5000).v6_ext(&[0, 43, 60]).build(), 1),
    ]
}

#[test]
fn frames_truncated_anywhere_before_the_transport_ports_are_dropped() {
    let mut b = Bench::new();
    for (what, full, flow) in allowed_frames() {
        // BPF_PROG_TEST_RUN (and any NIC) refuses frames shorter than an Ethernet header; the
        // twin shows what the parser does with them.
        for len in 0..14 {
            assert_eq!(b.twin.judge(&full[..len]).reasons, vec![Reason::DropMalformed], "{what} cut to {len}");
        }
        for len in 14..full.len() {
            let got = b.agree(what, &full[..len]);
            assert_eq!(got.action, XDP_DROP, "{what} cut to {len} of {} bytes passed", full.len());
            assert_eq!(got.reasons, vec![Reason::DropMalformed], "{what} cut to {len}");
        }
        b.expect(what, &full, Reason::PassFlow, Some(flow));
    }
}

/// The IPv4 header of an untagged frame starts here.
const L3: usize = 14;

#[test]
fn ipv4_header_and_total_lengths_that_lie_are_dropped() {
    let mut b = Bench::new();
    let good = Pkt::tcp(ip(CLIENT4), ip(SERVER4), 40000, 80).build();
    for ihl in 0..5u8 {
        let mut f = good.clone();
        f[L3] = 0x40 | ihl;
        b.expect(&format!("ihl {ihl}"), &f, Reason::DropMalformed, None);
    }
    // Header length past the end of the datagram and of the frame.
    let mut f = good.clone();
    f[L3] = 0x4f;
    b.expect("ihl 15 in a 40-byte datagram", &f, Reason::DropMalformed, None);
    // Options that eat the transport header: ihl 10 leaves no room for TCP in 40 bytes.
    let mut f = good.clone();
    f[L3] = 0x4a;
    b.expect("options over the tcp header", &f, Reason::DropMalformed, None);
    // Total length longer than the frame.
    let mut f = good.clone();
    f[L3 + 2..L3 + 4].copy_from_slice(&1500u16.to_be_bytes());
    b.expect("total length past the frame", &f, Reason::DropMalformed, None);
    // Total length shorter than its own header, and shorter than header + TCP header.
    for total in [0u16, 19, 20, 39] {
        let mut f = good.clone();
        f[L3 + 2..L3 + 4].copy_from_slice(&total.to_be_bytes());
        b.expect(&format!("total length {total}"), &f, Reason::DropMalformed, None);
    }
    // Shorter than the frame is Ethernet padding: judged on the datagram it describes.
    let mut f = good.clone();
    f.extend_from_slice(&[0; 26]);
    b.expect("ethernet padding", &f, Reason::PassFlow, Some(0));
    // Not version 4 behind an IPv4 ethertype.
    let mut f = good.clone();
    f[L3] = 0x65;
    b.expect("version 6 in an ipv4 ethertype", &f, Reason::DropMalformed, None);
}

#[test]
fn ipv4_options_do_not_hide_the_ports() {
    let mut b = Bench::new();
    for words in 0..=10 {
        let (c, s) = (ip(CLIENT4), ip(SERVER4));
        b.expect("allowed port", &Pkt::tcp(c, s, 40000, 80).v4_options(words).build(), Reason::PassFlow, Some(0));
        b.expect("other port", &Pkt::tcp(c, s, 40000, 81).v4_options(words).build(), Reason::DropNoFlow, None);
    }
}

#[test]
fn ipv6_extension_chains_longer_than_the_parser_reads_are_dropped() {
    let mut b = Bench::new();
    let (c, s) = (ip(CLIENT6), ip(SERVER6));
    for n in 0..=6 {
        let chain = vec![60; n];
        b.expect(&format!("{n} headers"), &Pkt::tcp(c, s, 1, 80).v6_ext(&chain).build(), Reason::PassFlow, Some(0));
    }
    for n in 7..=12 {
        let chain = vec![60; n];
        b.expect(&format!("{n} headers"), &Pkt::tcp(c, s, 1, 80).v6_ext(&chain).build(), Reason::DropUnparsed, None);
    }
    // A payload length that ends inside the chain.
    let mut f = Pkt::tcp(c, s, 1, 80).v6_ext(&[0, 60]).build();
    f[L3 + 4..L3 + 6].copy_from_slice(&12u16.to_be_bytes());
    b.expect("payload ends in the chain", &f, Reason::DropMalformed, None);
}

#[test]
fn fragments_never_carry_a_packet_past_the_policy() {
    let mut b = Bench::new();
    for (c, s) in [(ip(CLIENT4), ip(SERVER4)), (ip(CLIENT6), ip(SERVER6))] {
        let frag = |offset8, more, id| FragSpec { offset8, more, id };
        // A tiny first fragment that holds the source port but not the destination port.
        let tiny = Pkt::raw(c, s, 17, vec![0x9c, 0x40]).frag(frag(0, true, 1)).build();
        b.expect("tiny first fragment", &tiny, Reason::DropFragment, None);
        // A first TCP fragment that ends before the TCP header does.
        let short = Pkt::raw(c, s, 6, Pkt::tcp(c, s, 1, 80).l4[..16].to_vec()).frag(frag(0, true, 2)).build();
        b.expect("first fragment cuts the tcp header", &short, Reason::DropFragment, None);
        // Later fragments that overlap the TCP header (RFC 1858), with or without a first.
        for off in [1, 2] {
            let f = Pkt::tcp(c, s, 1, 80).frag(frag(off, true, 3)).build();
            b.expect("overlapping tcp fragment", &f, Reason::DropFragment, None);
        }
        // A later fragment whose first fragment never came.
        let orphan = Pkt::udp(c, s, 1, 5000).frag(frag(185, false, 4)).build();
        b.expect("orphan fragment", &orphan, Reason::DropFragment, None);
        // An allowed first fragment, then fragments of another datagram, then its own.
        let first = Pkt::udp(c, s, 1, 5000).frag(frag(0, true, 5)).build();
        b.expect("allowed first fragment", &first, Reason::PassFlow, Some(1));
        let other = Pkt::udp(c, s, 1, 5000).frag(frag(185, false, 6)).build();
        b.expect("fragment of another datagram", &other, Reason::DropFragment, None);
        let other_proto = Pkt::tcp(c, s, 1, 80).frag(frag(185, false, 5)).build();
        b.expect("same id, other protocol", &other_proto, Reason::DropFragment, None);
        let own = Pkt::udp(c, s, 1, 5000).frag(frag(185, false, 5)).build();
        b.expect("its own later fragment", &own, Reason::PassFragment, Some(1));
        // A denied first fragment admits none of its datagram.
        let denied = Pkt::udp(c, s, 1, 6000).frag(frag(0, true, 7)).build();
        b.expect("denied first fragment", &denied, Reason::DropNoFlow, None);
        let after = Pkt::udp(c, s, 1, 6000).frag(frag(185, false, 7)).build();
        b.expect("fragment of a denied datagram", &after, Reason::DropFragment, None);
    }
}

#[test]
fn more_vlan_tags_than_the_parser_reads_are_dropped() {
    let mut b = Bench::new();
    let (c, s) = (ip(CLIENT4), ip(SERVER4));
    for tags in [3, 4, 8] {
        let f = Pkt::tcp(c, s, 1, 80).vlans(&vec![TPID_8021Q; tags]).build();
        b.expect(&format!("{tags} tags"), &f, Reason::DropUnparsed, None);
        // Even to an unprotected address: with the tags unread, the destination is unknown.
        let f = Pkt::tcp(c, ip("198.51.100.1"), 1, 80).vlans(&vec![TPID_8021AD; tags]).build();
        b.expect(&format!("{tags} tags, unprotected"), &f, Reason::DropUnparsed, None);
    }
}

#[test]
fn tcp_data_offsets_that_lie_are_dropped() {
    let mut b = Bench::new();
    for (c, s) in [(ip(CLIENT4), ip(SERVER4)), (ip(CLIENT6), ip(SERVER6))] {
        let good = Pkt::tcp(c, s, 1, 80);
        for doff in (0..5).chain(6..16) {
            let mut p = good.clone();
            p.l4[12] = doff << 4;
            b.expect(&format!("data offset {doff}"), &p.build(), Reason::DropMalformed, None);
        }
        // Options really there: a data offset of 15 words over a 60-byte header.
        let mut p = good.clone();
        p.l4.resize(60, 1);
        p.l4[12] = 15 << 4;
        b.expect("data offset 15 with options", &p.build(), Reason::PassFlow, Some(0));
    }
}

#[test]
fn port_zero_is_judged_like_any_other_port() {
    let mut b = Bench::new();
    for (c, s) in [(ip(CLIENT4), ip(SERVER4)), (ip(CLIENT6), ip(SERVER6))] {
        b.expect("source port 0", &Pkt::tcp(c, s, 0, 80).build(), Reason::PassFlow, Some(0));
        b.expect("destination port 0", &Pkt::tcp(c, s, 40000, 0).build(), Reason::DropNoFlow, None);
        b.expect("udp destination port 0", &Pkt::udp(c, s, 0, 0).build(), Reason::DropNoFlow, None);
    }
}

#[test]
fn mapped_and_link_local_ipv6_addresses_match_only_what_the_site_binds() {
    let mut b = Bench::new();
    // An IPv4-mapped source is not the IPv4 client: it is in no role (here "any" still allows).
    let f = Pkt::tcp(ip("::ffff:192.0.2.7"), ip(SERVER6), 1, 80).build();
    b.expect("mapped source", &f, Reason::PassFlow, Some(0));
    let f = Pkt::tcp(ip("::ffff:192.0.2.7"), ip(SERVER6), 1, 81).build();
    b.expect("mapped source, other port", &f, Reason::DropNoFlow, None);
    // An IPv4-mapped destination is not the protected IPv4 address; Linux does not deliver it
    // locally either (no interface holds it).
    let f = Pkt::tcp(ip(CLIENT6), ip("::ffff:10.0.0.1"), 1, 22).build();
    b.expect("mapped destination", &f, Reason::PassUnprotected, None);
    // Link-local sources are judged by the roles that hold them (none here).
    let f = Pkt::udp(ip("fe80::1"), ip(SERVER6), 1, 5000).build();
    b.expect("link-local source", &f, Reason::PassFlow, Some(1));
    let f = Pkt::udp(ip("fe80::1"), ip(SERVER6), 1, 6000).build();
    b.expect("link-local source, other port", &f, Reason::DropNoFlow, None);
    // Neighbour discovery to a protected address passes whatever the ports policy says.
    let f = Pkt::icmp(ip("fe80::1"), ip(SERVER6), 135).build();
    b.expect("neighbour solicitation", &f, Reason::PassIcmp, None);
}

/// Mutations of valid frames: truncation, extension, bytes overwritten anywhere in the headers,
/// length fields set at random. Whatever the kernel makes of them, the twin must predict it.
#[test]
fn mutated_frames_get_the_verdict_the_twin_predicts() {
    let seed = 0xad7e_25a1_u64;
    println!("seed {seed:#x}");
    let mut rng = Rng::new(seed);
    let bases: Vec<Vec<u8>> = allowed_frames().into_iter().map(|(_, f, _)| f).chain(fragments()).collect();
    let mut b = Bench::new();
    let (mut sent, mut passed) = (0, 0);
    for round in 0..20_000 {
        if b.twin.tracked() > MAX_TRACKED_DATAGRAMS {
            b = Bench::new();
        }
        let mut f = bases[rng.below(bases.len() as u64) as usize].clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut f);
        }
        if f.len() < 14 {
            continue;
        }
        let got = b.agree(&format!("mutation {round}"), &f);
        sent += 1;
        passed += usize::from(got.action == XDP_PASS);
    }
    println!("{sent} mutated frames, {passed} passed, kernel and twin agreed on all");
    assert!(sent > 15_000 && passed > 0 && passed < sent, "the mutations should reach both verdicts");
}

fn fragments() -> Vec<Vec<u8>> {
    let (c4, s4, c6, s6) = (ip(CLIENT4), ip(SERVER4), ip(CLIENT6), ip(SERVER6));
    let f = |offset8, more| FragSpec { offset8, more, id: 9 };
    vec![
        Pkt::udp(c4, s4, 1, 5000).frag(f(0, true)).build(),
        Pkt::udp(c4, s4, 1, 5000).frag(f(3, false)).build(),
        Pkt::udp(c6, s6, 1, 5000).frag(f(0, true)).build(),
        Pkt::udp(c6, s6, 1, 5000).frag(f(3, false)).build(),
    ]
}

fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    match rng.below(5) {
        0 => {
            let len = rng.below(f.len() as u64 + 1) as usize;
            f.truncate(len);
        }
        1 => {
            let n = rng.below(64) as usize;
            f.extend((0..n).map(|_| rng.below(256) as u8));
        }
        2 | 3 => {
            // Headers live in the first 120 bytes; hit them more than the payload.
            if !f.is_empty() {
                let i = rng.below(f.len().min(120) as u64) as usize;
                f[i] = rng.below(256) as u8;
            }
        }
        _ => {
            // A 16-bit length or type field: IPv4 total length, IPv6 payload length, ethertype.
            let at = [12usize, 16, 18, 20][rng.below(4) as usize];
            if at + 2 <= f.len() {
                let v = rng.below(65536) as u16;
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
    }
}

/// Every class of frame above, and mutations, sent over veth (AF_PACKET on the client's end)
/// into the program attached natively to the server's end: the drop counters move by exactly
/// what the twin predicts, frame by frame, and so do the flow counters.
#[test]
fn adversarial_frames_over_veth_are_counted_as_the_twin_predicts() {
    let lab = Lab::new("dpt-adv", &["10.0.0.1/24", "fd00::1/64"], &["10.0.0.2/24", "fd00::2/64"]).unwrap();
    let t = simple_tables();
    let mut h = Harness::new(&t).unwrap();
    let mut twin = Twin::new(&t);
    let prog = load::program(&mut h.ebpf).unwrap();
    let _link = in_netns(&lab.server, || prog.attach(SERVER_IF, XdpMode::Driver)).unwrap().expect("native XDP on veth");

    let mut frames: Vec<Vec<u8>> = vec![];
    for (_, full, _) in allowed_frames() {
        frames.extend((14..=full.len()).map(|n| full[..n].to_vec()));
    }
    let (c, s) = (ip(CLIENT4), ip(SERVER4));
    let frag = |offset8, more, id| FragSpec { offset8, more, id };
    frames.extend([
        Pkt::tcp(c, s, 1, 80).vlans(&[TPID_8021Q; 3]).build(),
        Pkt::raw(c, s, 17, vec![0x9c, 0x40]).frag(frag(0, true, 1)).build(),
        Pkt::tcp(c, s, 1, 80).frag(frag(1, true, 2)).build(),
        Pkt::udp(c, s, 1, 5000).frag(frag(185, false, 3)).build(),
        Pkt::udp(c, s, 1, 5000).frag(frag(0, true, 4)).build(),
        Pkt::udp(c, s, 1, 5000).frag(frag(185, false, 4)).build(),
        Pkt::tcp(ip(CLIENT6), ip(SERVER6), 1, 80).v6_ext(&[60; 8]).build(),
    ]);
    let mut rng = Rng::new(0x7e7);
    let bases: Vec<Vec<u8>> = allowed_frames().into_iter().map(|(_, f, _)| f).collect();
    for _ in 0..2000 {
        let mut f = bases[rng.below(bases.len() as u64) as usize].clone();
        mutate(&mut rng, &mut f);
        if f.len() >= 14 {
            frames.push(f);
        }
    }

    let watched = [
        Reason::DropMalformed,
        Reason::DropUnparsed,
        Reason::DropFragment,
        Reason::DropNoFlow,
        Reason::PassFlow,
        Reason::PassFragment,
    ];
    let mut want = [0u64; Reason::ALL.len()];
    let mut want_flows = [0u64; 2];
    for f in &frames {
        let o = twin.judge(f);
        want[o.reasons[0] as usize] += 1;
        for slot in o.flows {
            want_flows[slot] += 1;
        }
    }
    let before = h.counters().unwrap();
    in_netns(&lab.client, || send_frames(CLIENT_IF, &frames)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = h.counters().unwrap();
    for r in watched {
        let got = after.reason(r).packets - before.reason(r).packets;
        assert_eq!(got, want[r as usize], "{} over veth: the twin predicts {}", r.name(), want[r as usize]);
    }
    for (slot, want) in want_flows.iter().enumerate() {
        assert_eq!(after.flows[slot].packets - before.flows[slot].packets, *want, "flow {slot}");
    }
    println!("{} frames over veth: {:?}", frames.len(), watched.map(|r| (r.name(), want[r as usize])));
}

/// Sends each frame once from an AF_PACKET socket bound to `ifname` (in the current namespace).
fn send_frames(ifname: &str, frames: &[Vec<u8>]) {
    let name = std::ffi::CString::new(ifname).unwrap();
    // Safety: plain socket calls on a descriptor owned here; buffers outlive each call.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert_ne!(ifindex, 0, "no {ifname}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let sock = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        assert_eq!(libc::bind(sock.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), len), 0);
        for f in frames {
            // A full socket buffer is waited out, never skipped: each frame must arrive.
            while libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) < 0 {
                assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOBUFS), "send");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
