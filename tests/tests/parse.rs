//! The real XDP program through BPF_PROG_TEST_RUN: crafted frames give the expected parse result,
//! verdict and counter increments.

use std::net::IpAddr;

use dataplane_common::Reason;
use dataplane_tests::{
    packet::{FragSpec, Pkt, TPID_8021AD, TPID_8021Q},
    simple_tables, Harness, Observed, XDP_DROP, XDP_PASS,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn harness() -> Harness {
    Harness::new(&simple_tables()).expect("loading the XDP program into the kernel")
}

fn expect(h: &mut Harness, frame: &[u8], action: u32, reason: Reason, flow: Option<usize>) {
    let got = h.observe(frame).unwrap();
    let want = Observed { action, reasons: vec![reason], flows: flow.into_iter().collect(), reply_flows: vec![] };
    assert_eq!(got, want, "frame of {} bytes: {:02x?}", frame.len(), frame);
}

#[test]
fn ipv4_tcp_and_udp_are_classified_by_port() {
    let mut h = harness();
    let (c, s) = (ip("192.0.2.7"), ip("10.0.0.1"));
    expect(&mut h, &Pkt::tcp(c, s, 40000, 80).build(), XDP_PASS, Reason::PassFlow, Some(0));
    expect(&mut h, &Pkt::tcp(c, s, 40000, 81).build(), XDP_DROP, Reason::DropNoFlow, None);
    expect(&mut h, &Pkt::udp(c, s, 40000, 4999).build(), XDP_DROP, Reason::DropNoFlow, None);
    expect(&mut h, &Pkt::udp(c, s, 40000, 5000).build(), XDP_PASS, Reason::PassFlow, Some(1));
    expect(&mut h, &Pkt::udp(c, s, 40000, 5001).build(), XDP_PASS, Reason::PassFlow, Some(1));
    expect(&mut h, &Pkt::udp(c, s, 40000, 5002).build(), XDP_DROP, Reason::DropNoFlow, None);
    // The wrong protocol on a documented port.
    expect(&mut h, &Pkt::udp(c, s, 40000, 80).build(), XDP_DROP, Reason::DropNoFlow, None);
    expect(&mut h, &Pkt::raw(c, s, 47, vec![0; 8]).build(), XDP_DROP, Reason::DropNoFlow, None);
}

#[test]
fn counters_count_packets_and_bytes_per_flow() {
    let mut h = harness();
    let frame = Pkt::tcp(ip("192.0.2.7"), ip("10.0.0.1"), 40000, 80).build();
    for _ in 0..5 {
        assert_eq!(h.run(&frame).unwrap(), XDP_PASS);
    }
    let c = h.counters().unwrap();
    assert_eq!(c.flows[0].packets, 5);
    assert_eq!(c.flows[0].bytes, 5 * frame.len() as u64);
    assert_eq!(c.reason(Reason::PassFlow).packets, 5);
    assert_eq!(c.flows[1].packets, 0);
}

#[test]
fn unprotected_and_non_ip_traffic_passes() {
    let mut h = harness();
    let other = Pkt::tcp(ip("192.0.2.7"), ip("10.0.0.2"), 40000, 22).build();
    expect(&mut h, &other, XDP_PASS, Reason::PassUnprotected, None);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    expect(&mut h, &arp, XDP_PASS, Reason::PassNonIp, None);
}

#[test]
fn vlan_and_qinq_tags_are_parsed() {
    let mut h = harness();
    let (c, s) = (ip("192.0.2.7"), ip("10.0.0.1"));
    for tags in [&[TPID_8021Q][..], &[TPID_8021AD, TPID_8021Q], &[TPID_8021Q, TPID_8021Q]] {
        expect(&mut h, &Pkt::tcp(c, s, 1, 80).vlans(tags).build(), XDP_PASS, Reason::PassFlow, Some(0));
        expect(&mut h, &Pkt::tcp(c, s, 1, 22).vlans(tags).build(), XDP_DROP, Reason::DropNoFlow, None);
        let v6 = Pkt::udp(ip("2001:db8::7"), ip("fd00::1"), 1, 5001).vlans(tags).build();
        expect(&mut h, &v6, XDP_PASS, Reason::PassFlow, Some(1));
    }
    // A third tag is more than the parser reads: never passed on a guess.
    let three = Pkt::tcp(c, s, 1, 80).vlans(&[TPID_8021AD, TPID_8021Q, TPID_8021Q]).build();
    expect(&mut h, &three, XDP_DROP, Reason::DropUnparsed, None);
}

#[test]
fn ipv4_header_lengths_and_options() {
    let mut h = harness();
    let (c, s) = (ip("192.0.2.7"), ip("10.0.0.1"));
    for words in [1, 4, 10] {
        let f = Pkt::tcp(c, s, 1, 80).v4_options(words).build();
        expect(&mut h, &f, XDP_PASS, Reason::PassFlow, Some(0));
    }
    // Header length 4 words (below the minimum of 5).
    let mut f = Pkt::tcp(c, s, 1, 80).build();
    f[14] = 0x44;
    expect(&mut h, &f, XDP_DROP, Reason::DropMalformed, None);
    // Header length 15 words, past the end of this datagram.
    let mut f = Pkt::tcp(c, s, 1, 80).build();
    f[14] = 0x4f;
    expect(&mut h, &f, XDP_DROP, Reason::DropMalformed, None);
}

#[test]
fn ipv6_extension_headers_are_followed() {
    let mut h = harness();
    let (c, s) = (ip("2001:db8::7"), ip("fd00::1"));
    for ext in [&[][..], &[0], &[0, 60], &[0, 43, 60], &[0, 43, 60, 60, 60]] {
        let f = Pkt::tcp(c, s, 1, 80).v6_ext(ext).build();
        expect(&mut h, &f, XDP_PASS, Reason::PassFlow, Some(0));
        let f = Pkt::tcp(c, s, 1, 443).v6_ext(ext).build();
        expect(&mut h, &f, XDP_DROP, Reason::DropNoFlow, None);
    }
    // A longer chain than the parser reads is dropped, never guessed.
    let f = Pkt::tcp(c, s, 1, 80).v6_ext(&[0, 60, 60, 60, 60, 60, 60, 60]).build();
    expect(&mut h, &f, XDP_DROP, Reason::DropUnparsed, None);
}

#[test]
fn truncated_frames_to_a_protected_address_are_dropped() {
    let mut h = harness();
    let frames = [
        Pkt::tcp(ip("192.0.2.7"), ip("10.0.0.1"), 1, 80).build(),
        Pkt::udp(ip("192.0.2.7"), ip("10.0.0.1"), 1, 5000).vlans(&[TPID_8021Q]).build(),
        Pkt::tcp(ip("2001:db8::7"), ip("fd00::1"), 1, 80).v6_ext(&[0, 60]).build(),
    ];
    for full in frames {
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        for len in 14..full.len() {
            let got = h.observe(&full[..len]).unwrap();
            assert_eq!(got.action, XDP_DROP, "truncated to {len} of {} bytes", full.len());
            assert_eq!(got.reasons, vec![Reason::DropMalformed], "truncated to {len} bytes");
        }
        expect(
            &mut h,
            &full,
            XDP_PASS,
            Reason::PassFlow,
            Some(if full.len() > 70 && full[12] == 0x86 { 0 } else { full_flow(&full) }),
        );
    }
}

/// Flow slot of a full frame in `truncated_frames_to_a_protected_address_are_dropped`.
fn full_flow(frame: &[u8]) -> usize {
    // UDP frames (tagged) go to slot 1, TCP to slot 0.
    usize::from(frame[12] == 0x81)
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut h = harness();
    for (c, s) in [(ip("192.0.2.7"), ip("10.0.0.1")), (ip("2001:db8::7"), ip("fd00::1"))] {
        let first = Pkt::tcp(c, s, 1, 80).frag(FragSpec { offset8: 0, more: true, id: 77 }).build();
        let later = Pkt::tcp(c, s, 1, 80).frag(FragSpec { offset8: 8, more: false, id: 77 }).build();
        let stranger = Pkt::tcp(c, s, 1, 80).frag(FragSpec { offset8: 8, more: false, id: 78 }).build();
        expect(&mut h, &stranger, XDP_DROP, Reason::DropFragment, None);
        expect(&mut h, &first, XDP_PASS, Reason::PassFlow, Some(0));
        expect(&mut h, &later, XDP_PASS, Reason::PassFragment, Some(0));
        expect(&mut h, &stranger, XDP_DROP, Reason::DropFragment, None);
        // RFC 1858: a TCP fragment at offset 8 would rewrite the first fragment's header.
        let overlap = Pkt::tcp(c, s, 1, 80).frag(FragSpec { offset8: 1, more: false, id: 77 }).build();
        expect(&mut h, &overlap, XDP_DROP, Reason::DropFragment, None);
        // A denied first fragment leaves its later fragments with nothing to follow.
        let denied = Pkt::tcp(c, s, 1, 22).frag(FragSpec { offset8: 0, more: true, id: 90 }).build();
        let denied_later = Pkt::tcp(c, s, 1, 22).frag(FragSpec { offset8: 8, more: false, id: 90 }).build();
        expect(&mut h, &denied, XDP_DROP, Reason::DropNoFlow, None);
        expect(&mut h, &denied_later, XDP_DROP, Reason::DropFragment, None);
    }
}

/// No verdict outlives the image: the packet right after an image change is judged by the new
/// one, and neither allowed nor denied packets leave anything in the connection-tracking table.
#[test]
fn every_packet_is_judged_by_the_image_in_force() {
    let tables = simple_tables();
    let mut h = Harness::new(&tables).unwrap();
    let frame = Pkt::tcp(ip("192.0.2.7"), ip("10.0.0.1"), 40000, 80).build();
    expect(&mut h, &frame, XDP_PASS, Reason::PassFlow, Some(0));
    for i in 0..200u16 {
        h.run(&Pkt::tcp(ip("192.0.2.8"), ip("10.0.0.1"), 1000 + i, 80 + i % 2).build()).unwrap();
    }
    use dataplane_common::{ConnKeyV4, ConnKeyV6, FlowEntry};
    let v4: aya::maps::HashMap<_, ConnKeyV4, FlowEntry> = aya::maps::HashMap::try_from(h.ebpf.map("FLOW_V4").unwrap()).unwrap();
    let v6: aya::maps::HashMap<_, ConnKeyV6, FlowEntry> = aya::maps::HashMap::try_from(h.ebpf.map("FLOW_V6").unwrap()).unwrap();
    assert_eq!(v4.keys().count() + v6.keys().count(), 0, "arriving packets left entries");
    // Take TCP 80 out of the policy: the same flow's next packet is dropped.
    let mut without = tables.clone();
    without.dir.policies[0][0] = None;
    assert!(h.images.swap_image(&without).unwrap(), "the image fits the map not in force");
    expect(&mut h, &frame, XDP_DROP, Reason::DropNoFlow, None);
}
