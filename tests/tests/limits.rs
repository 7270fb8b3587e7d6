//! Tables at their limits, in the real program (BPF_PROG_TEST_RUN): when the connection-tracking
//! table or the fragment table is full, the kernel forgets the oldest entries, and what was
//! forgotten is judged as a new packet: nothing passes that the policy does not allow. Arriving
//! traffic never fills the connection-tracking table: only the servers' own connections do.

use std::net::IpAddr;

use dataplane_common::Reason;
use dataplane_tests::{
    packet::{FragSpec, Pkt},
    simple_tables, Harness, Observed, XDP_DROP, XDP_PASS,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// LRU lists are per CPU: keep every run of the program on one CPU so that filling the table
/// evicts from the list that holds the entries under test.
fn pin_to_one_cpu() {
    // Safety: a zeroed cpu_set_t with one CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0);
    }
}

fn observed(reason: Reason, flow: Option<usize>, reply: Option<usize>) -> Observed {
    Observed {
        action: if reason.is_drop() { XDP_DROP } else { XDP_PASS },
        reasons: vec![reason],
        flows: flow.into_iter().collect(),
        reply_flows: reply.into_iter().collect(),
    }
}

#[test]
fn a_full_connection_table_forgets_the_servers_oldest_connections_and_judges_them_anew() {
    pin_to_one_cpu();
    const SIZE: u32 = 1024;
    let mut t = simple_tables();
    t.conntrack_size = SIZE;
    let mut h = Harness::new(&t).unwrap();
    let (server, dns) = (ip("10.0.0.1"), ip("192.0.2.53"));
    // The server's DNS query is tracked; its answer is admitted as a reply.
    h.run_egress(&Pkt::udp(server, dns, 40053, 53).build()).unwrap();
    let answer = Pkt::udp(dns, server, 53, 40053).build();
    assert_eq!(h.observe(&answer).unwrap(), observed(Reason::PassReply, None, Some(0)));
    // Allowed flows arriving, four times the table's size, each seen twice: they are judged by
    // the policy and insert nothing, so the connection stays.
    for i in 0..4 * SIZE {
        let client = IpAddr::from([198, 51, 1, (i % 250) as u8]);
        let f = Pkt::tcp(client, server, 1024 + (i / 250) as u16, 80).build();
        for _ in 0..2 {
            assert_eq!(h.observe(&f).unwrap(), observed(Reason::PassFlow, Some(0), None), "flow {i}");
        }
    }
    assert_eq!(h.observe(&answer).unwrap(), observed(Reason::PassReply, None, Some(0)), "survives arriving traffic");
    // The server's own new connections, four times the table's size and each in use: the full
    // table forgets the oldest, and its answer is a new packet, which no flow allows.
    for i in 0..4 * SIZE {
        let query = Pkt::udp(server, dns, 20000 + i as u16, 53).build();
        for _ in 0..2 {
            h.run_egress(&query).unwrap();
        }
    }
    assert_eq!(h.observe(&answer).unwrap(), observed(Reason::DropNoFlow, None, None), "forgotten connection");
    // A full table changes no verdict of the policy.
    let denied = Pkt::tcp(ip("198.51.100.1"), server, 1024, 81).build();
    assert_eq!(h.observe(&denied).unwrap(), observed(Reason::DropNoFlow, None, None));
    let allowed = Pkt::tcp(ip("198.51.100.1"), server, 1024, 80).build();
    assert_eq!(h.observe(&allowed).unwrap(), observed(Reason::PassFlow, Some(0), None));
}

#[test]
fn a_full_fragment_table_drops_the_fragments_it_forgot() {
    pin_to_one_cpu();
    // FRAGS holds 8192 datagrams.
    const DATAGRAMS: u32 = 12_000;
    let mut h = Harness::new(&simple_tables()).unwrap();
    let (c, s) = (ip("192.0.2.7"), ip("10.0.0.1"));
    let frag = |offset8, more, id| FragSpec { offset8, more, id };
    for id in 0..DATAGRAMS {
        let first = Pkt::udp(c, s, 1, 5000).frag(frag(0, true, id)).build();
        assert_eq!(h.observe(&first).unwrap(), observed(Reason::PassFlow, Some(1), None), "first fragment {id}");
    }
    let (mut passed, mut dropped) = (vec![], vec![]);
    for id in 0..DATAGRAMS {
        let later = Pkt::udp(c, s, 1, 5000).frag(frag(185, false, id)).build();
        let got = h.observe(&later).unwrap();
        if got == observed(Reason::PassFragment, Some(1), None) {
            passed.push(id);
        } else {
            assert_eq!(got, observed(Reason::DropFragment, None, None), "later fragment {id}: follows its first or drops");
            dropped.push(id);
        }
    }
    println!("{} later fragments followed their first, {} were forgotten and dropped", passed.len(), dropped.len());
    assert!(passed.len() <= 8192, "the table holds no more than its size");
    assert!(dropped.contains(&0), "the oldest datagram was forgotten");
    assert!(passed.contains(&(DATAGRAMS - 1)), "the newest is remembered");
    // A datagram that was never seen is dropped however full the table is.
    let orphan = Pkt::udp(c, s, 1, 5000).frag(frag(185, false, DATAGRAMS + 1)).build();
    assert_eq!(h.observe(&orphan).unwrap(), observed(Reason::DropFragment, None, None));
}
