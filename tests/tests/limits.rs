//! Tables at their limits, in the real program (BPF_PROG_TEST_RUN): when the connection-tracking
//! table or the fragment table is full, the kernel forgets the oldest entries, and what was
//! forgotten is judged as a new packet: nothing passes that the policy does not allow. Arriving
//! traffic never fills the connection-tracking table: only the servers' own connections do.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::maps::{HashMap, PerCpuArray};
use dataplane::{
    kernel::{load, maps},
    observe::fill::TableFill,
};
use dataplane_common::{ConnKeyV4, ConnKeyV6, FlowEntry, Reason, CT_STAT_INSERTS, CT_STAT_REFUSED, CT_STAT_REMOVALS};
use dataplane_tests::{
    flood::{cpus, hold_in_dispatcher, per_cpu_packets, pin_to_cpu},
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
    // Each CPU has its own LRU list and its share of the entries (the kernel splits them
    // evenly): the connections a server opens on one CPU evict each other once that share is
    // full, while the table as a whole is not.
    let fill = TableFill::read_loaded(&h.ebpf, maps::MAP_FLOW_V4).unwrap();
    let (inserts, removals, _) = ct_events(&h);
    println!(
        "after {} connections opened on CPU 0: {} of {} entries, {} evicted",
        inserts,
        fill.entries,
        fill.capacity,
        inserts - removals - fill.entries
    );
    assert_eq!(fill.capacity, u64::from(SIZE));
    assert!(fill.entries <= fill.capacity.div_ceil(cpus().len().max(1) as u64) + 1, "one CPU's share: {fill:?}");
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

/// Connection-tracking events of a loaded program: (inserts, removals, refused replies).
fn ct_events(h: &Harness) -> (u64, u64, u64) {
    let events = PerCpuArray::<_, u64>::try_from(h.ebpf.map(maps::MAP_CT_STATS).unwrap()).unwrap();
    let sum = |i: u32| events.get(&i, 0).unwrap().iter().sum::<u64>();
    (sum(CT_STAT_INSERTS), sum(CT_STAT_REMOVALS), sum(CT_STAT_REFUSED))
}

fn v6_key(a: Ipv6Addr) -> [u64; 2] {
    let n = u128::from(a);
    [(n >> 64) as u64, n as u64]
}

/// Issue 14, through the real program: the attack that made a server's DNS query forgotten
/// (`tracked connections: 0 (inserted 1, removed 0, evicted 1)`), on every CPU.
///
/// The table holds 1024 connections per IP version. The server opens a DNS query (IPv4 and
/// IPv6) and an LDAP connection (TCP, SYN and SYN-ACK: established) on different CPUs; then,
/// from a thread pinned to each CPU in turn (each CPU has its own LRU list), 131,072 distinct
/// allowed IPv4 tuples (128 times the table: 512 sources x 256 source ports, UDP 5000-5001 and
/// TCP 80 alternately) and 32,768 IPv6 ones (32 times), each run 3 times in a row (so that each
/// looks in use to the LRU's second chance), and 65,536 forged answers to the live DNS port
/// (from every address of the DNS server's /24 and 256 ports: dropped, each a table lookup). The
/// tracked connections' replies must still pass, counted as replies, on every CPU, and the
/// tables must hold exactly the three tracked connections, none evicted.
///
/// On the code before the policy image (6005f49, the verdict cache) the same flood fails, as
/// run: every allowed inbound 5-tuple was inserted into this same LRU table (FLOW_V4/FLOW_V6),
/// so the flood's entries, each seen three times, pushed the server's connections out of every
/// CPU's list, and all three replies were judged as new packets on both CPUs: dropped
/// (`no_flow`).
#[test]
fn a_flood_of_allowed_tuples_on_every_cpu_evicts_no_connection_a_server_opened() {
    const SIZE: u32 = 1024;
    const REPEAT: u32 = 3;
    let cpus = cpus();
    let (first, last) = (cpus[0], *cpus.last().unwrap());
    let mut t = simple_tables();
    t.conntrack_size = SIZE;
    let mut h = Harness::new(&t).unwrap();
    let _idle = hold_in_dispatcher(load::program(&mut h.ebpf).unwrap(), "i14-lim").unwrap();
    let server4: Ipv4Addr = "10.0.0.1".parse().unwrap();
    let server6: Ipv6Addr = "fd00::1".parse().unwrap();
    let (dns4, dns6, ldap): (Ipv4Addr, Ipv6Addr, Ipv4Addr) =
        ("192.0.2.53".parse().unwrap(), "2001:db8::53".parse().unwrap(), "192.0.2.80".parse().unwrap());
    let (s4, s6) = (IpAddr::V4(server4), IpAddr::V6(server6));

    // The server's own connections, opened on the first and the last CPU.
    pin_to_cpu(first);
    h.run_egress(&Pkt::udp(s4, dns4.into(), 40053, 53).build()).unwrap();
    pin_to_cpu(last);
    h.run_egress(&Pkt::udp(s6, dns6.into(), 40054, 53).build()).unwrap();
    h.run_egress(&Pkt::tcp(s4, ldap.into(), 41000, 389).build()).unwrap();
    let synack = Pkt::tcp(ldap.into(), s4, 389, 41000).tcp_flags(0x12).build();
    assert_eq!(h.observe(&synack).unwrap(), observed(Reason::PassReply, None, Some(1)), "SYN-ACK");
    h.run_egress(&Pkt::tcp(s4, ldap.into(), 41000, 389).tcp_flags(0x10).build()).unwrap();
    let replies = [
        (Pkt::udp(dns4.into(), s4, 53, 40053).build(), 0),
        (Pkt::udp(dns6.into(), s6, 53, 40054).build(), 0),
        (Pkt::tcp(ldap.into(), s4, 389, 41000).tcp_flags(0x18).build(), 1),
    ];
    for (frame, slot) in &replies {
        assert_eq!(h.observe(frame).unwrap(), observed(Reason::PassReply, None, Some(*slot)));
    }

    // The flood: allowed tuples, then forged answers to the live port.
    let mut allowed: Vec<Vec<u8>> = Vec::new();
    for i in 0..512u32 * 256 {
        let src = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i / 256));
        let sport = 1024 + (i % 256) as u16;
        allowed.push(
            if i % 2 == 0 { Pkt::udp(src, s4, sport, 5000 + (i / 2 % 2) as u16) } else { Pkt::tcp(src, s4, sport, 80) }.build(),
        );
    }
    for i in 0..128u32 * 256 {
        let src = IpAddr::V6(Ipv6Addr::from(u128::from("2001:db8:f100::".parse::<Ipv6Addr>().unwrap()) + u128::from(i / 256)));
        allowed.push(Pkt::udp(src, s6, 1024 + (i % 256) as u16, 5000).build());
    }
    let mut forged: Vec<Vec<u8>> = Vec::new();
    for a in 0..=255u8 {
        for port in 1..=256u16 {
            if (a, port) != (53, 53) {
                forged.push(Pkt::udp(IpAddr::from([192, 0, 2, a]), s4, port, 40053).build());
            }
        }
    }
    let distinct: HashSet<&Vec<u8>> = allowed.iter().collect();
    assert_eq!(distinct.len(), allowed.len());
    assert!(allowed.len() >= 10 * 2 * SIZE as usize, "at least 10 times the tables' size in distinct tuples");
    let pass_before = per_cpu_packets(h.ebpf.map(maps::MAP_REASONS).unwrap(), Reason::PassFlow as u32).unwrap();
    let started = Instant::now();
    for &cpu in &cpus {
        pin_to_cpu(cpu);
        let at = Instant::now();
        for f in &allowed {
            assert_eq!(h.run_repeat(f, REPEAT).unwrap(), XDP_PASS);
        }
        for f in &forged {
            assert_eq!(h.run(f).unwrap(), XDP_DROP);
        }
        println!(
            "CPU {cpu}: {} allowed tuples x {REPEAT} and {} forged answers in {:.2?}",
            allowed.len(),
            forged.len(),
            at.elapsed()
        );
    }
    let elapsed = started.elapsed();
    let pass_after = per_cpu_packets(h.ebpf.map(maps::MAP_REASONS).unwrap(), Reason::PassFlow as u32).unwrap();
    let packets = cpus.len() as u64 * (allowed.len() as u64 * u64::from(REPEAT) + forged.len() as u64);
    println!(
        "flood: {} distinct allowed tuples ({}x the table) x {REPEAT} + {} forged answers, on {} CPUs: {packets} packets in {elapsed:.2?} ({:.0} ns per packet, BPF_PROG_TEST_RUN)",
        allowed.len(),
        allowed.len() / (2 * SIZE as usize),
        forged.len(),
        cpus.len(),
        elapsed.as_nanos() as f64 / packets as f64
    );
    for &cpu in &cpus {
        let judged = pass_after[cpu] - pass_before[cpu];
        assert_eq!(judged, allowed.len() as u64 * u64::from(REPEAT), "allowed packets judged on CPU {cpu}");
    }

    // The replies still pass on every CPU, counted on their outbound flows.
    for &cpu in &cpus {
        pin_to_cpu(cpu);
        for (frame, slot) in &replies {
            assert_eq!(
                h.observe(frame).unwrap(),
                observed(Reason::PassReply, None, Some(*slot)),
                "a reply after the flood, CPU {cpu}"
            );
        }
    }
    // The tables hold exactly the tracked connections: nothing inserted, nothing evicted.
    let v4 = HashMap::<_, ConnKeyV4, FlowEntry>::try_from(h.ebpf.map(maps::MAP_FLOW_V4).unwrap()).unwrap();
    let keys4: HashSet<ConnKeyV4> = v4.keys().map(Result::unwrap).collect();
    let key4 = |src: Ipv4Addr, sport, dport, proto| ConnKeyV4 { src: src.into(), dst: server4.into(), sport, dport, proto };
    assert_eq!(keys4, HashSet::from([key4(dns4, 53, 40053, 17), key4(ldap, 389, 41000, 6)]));
    let v6 = HashMap::<_, ConnKeyV6, FlowEntry>::try_from(h.ebpf.map(maps::MAP_FLOW_V6).unwrap()).unwrap();
    let keys6: HashSet<ConnKeyV6> = v6.keys().map(Result::unwrap).collect();
    assert_eq!(keys6, HashSet::from([ConnKeyV6 { src: v6_key(dns6), dst: v6_key(server6), sport: 53, dport: 40054, proto: 17 }]));
    let (inserts, removals, refused) = ct_events(&h);
    let fill = [maps::MAP_FLOW_V4, maps::MAP_FLOW_V6].map(|m| TableFill::read_loaded(&h.ebpf, m).unwrap());
    println!("after the flood: inserted {inserts}, removed {removals}, refused {refused}; tables {fill:?}");
    assert_eq!((inserts, removals), (3, 0), "only the server's three connections were ever inserted");
    assert_eq!((fill[0].entries, fill[0].capacity, fill[1].entries, fill[1].capacity), (2, u64::from(SIZE), 1, u64::from(SIZE)));
}
