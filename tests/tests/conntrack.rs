//! Replies to connections the protected servers open themselves, through BPF_PROG_TEST_RUN: the
//! tc egress program records documented outbound connections, the XDP program admits exactly
//! their replies (counted on the outbound flow) and drops forgeries.

use std::{net::IpAddr, time::Duration};

use dataplane_common::Reason;
use dataplane_tests::{packet::Pkt, simple_tables, Harness, Observed, XDP_DROP, XDP_PASS};

const TC_ACT_OK: u32 = 0;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const RST: u8 = 0x04;
const FIN: u8 = 0x01;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn reply(h: &mut Harness, frame: &[u8], out_slot: usize) {
    let want = Observed { action: XDP_PASS, reasons: vec![Reason::PassReply], flows: vec![], reply_flows: vec![out_slot] };
    assert_eq!(h.observe(frame).unwrap(), want, "a reply: {frame:02x?}");
}

fn dropped(h: &mut Harness, frame: &[u8]) {
    let want = Observed { action: XDP_DROP, reasons: vec![Reason::DropNoFlow], flows: vec![], reply_flows: vec![] };
    assert_eq!(h.observe(frame).unwrap(), want, "not a reply: {frame:02x?}");
}

fn send(h: &mut Harness, frame: &[u8]) {
    assert_eq!(h.run_egress(frame).unwrap(), TC_ACT_OK, "egress never drops");
}

#[test]
fn udp_replies_follow_a_query() {
    let mut h = Harness::new(&simple_tables()).unwrap();
    for (server, dns) in [(ip("10.0.0.1"), ip("192.0.2.53")), (ip("fd00::1"), ip("2001:db8::53"))] {
        let answer = Pkt::udp(dns, server, 53, 40000).build();
        // No query yet: a datagram from port 53 is just inbound traffic nobody documented.
        dropped(&mut h, &answer);
        send(&mut h, &Pkt::udp(server, dns, 40000, 53).build());
        reply(&mut h, &answer, 0);
        reply(&mut h, &answer, 0);
        // Same peer, other ports: not the tracked exchange.
        dropped(&mut h, &Pkt::udp(dns, server, 54, 40000).build());
        dropped(&mut h, &Pkt::udp(dns, server, 53, 40001).build());
        // Another peer answering for it.
        let other = if server.is_ipv4() { ip("192.0.2.54") } else { ip("2001:db8::54") };
        dropped(&mut h, &Pkt::udp(other, server, 53, 40000).build());
    }
    // An undocumented query (UDP 54) is not recorded.
    send(&mut h, &Pkt::udp(ip("10.0.0.1"), ip("192.0.2.53"), 40002, 54).build());
    dropped(&mut h, &Pkt::udp(ip("192.0.2.53"), ip("10.0.0.1"), 54, 40002).build());
    let c = h.counters().unwrap();
    assert_eq!(c.out_flows[0].packets, 2, "the two queries, counted on the outbound flow");
    assert_eq!(c.reply_flows[0].packets, 4, "the four answers");
}

#[test]
fn tcp_replies_need_the_servers_syn_and_never_a_bare_syn() {
    let mut h = Harness::new(&simple_tables()).unwrap();
    let (server, ldap) = (ip("10.0.0.1"), ip("192.0.2.80"));
    let from_ldap = |flags| Pkt::tcp(ldap, server, 389, 41000).tcp_flags(flags).build();
    // Forged: a SYN from a well-known port to an ephemeral one, with and without a connection.
    dropped(&mut h, &Pkt::tcp(ip("192.0.2.53"), server, 53, 41000).build());
    dropped(&mut h, &Pkt::tcp(ip("192.0.2.53"), server, 443, 41000).build());
    dropped(&mut h, &from_ldap(SYN | ACK));
    // Only the server's SYN opens the connection.
    send(&mut h, &Pkt::tcp(server, ldap, 41000, 389).tcp_flags(ACK).build());
    dropped(&mut h, &from_ldap(SYN | ACK));
    send(&mut h, &Pkt::tcp(server, ldap, 41000, 389).build());
    // Before the SYN-ACK, neither a bare ACK nor a SYN is a reply.
    dropped(&mut h, &from_ldap(ACK));
    dropped(&mut h, &from_ldap(SYN));
    reply(&mut h, &from_ldap(SYN | ACK), 1);
    reply(&mut h, &from_ldap(ACK), 1);
    dropped(&mut h, &from_ldap(SYN));
    // RST ends it: passed (the server must learn), then nothing more.
    reply(&mut h, &from_ldap(RST | ACK), 1);
    dropped(&mut h, &from_ldap(ACK));
    // FIN closes; the closing connection still carries its last packets.
    send(&mut h, &Pkt::tcp(server, ldap, 41001, 389).build());
    let from_ldap2 = |flags| Pkt::tcp(ldap, server, 389, 41001).tcp_flags(flags).build();
    reply(&mut h, &from_ldap2(SYN | ACK), 1);
    send(&mut h, &Pkt::tcp(server, ldap, 41001, 389).tcp_flags(FIN | ACK).build());
    reply(&mut h, &from_ldap2(FIN | ACK), 1);
}

#[test]
fn replies_after_the_timeout_are_dropped() {
    let mut tables = simple_tables();
    tables.config.ct_udp = 1;
    tables.config.ct_tcp_transitory = 1;
    let mut h = Harness::new(&tables).unwrap();
    let (server, dns) = (ip("10.0.0.1"), ip("192.0.2.53"));
    send(&mut h, &Pkt::udp(server, dns, 40000, 53).build());
    reply(&mut h, &Pkt::udp(dns, server, 53, 40000).build(), 0);
    send(&mut h, &Pkt::tcp(server, ip("192.0.2.80"), 41000, 389).build());
    // Idle past the 1 s timeouts (the clock is coarse: a few ms).
    std::thread::sleep(Duration::from_millis(1300));
    dropped(&mut h, &Pkt::udp(dns, server, 53, 40000).build());
    dropped(&mut h, &Pkt::tcp(ip("192.0.2.80"), server, 389, 41000).tcp_flags(SYN | ACK).build());
}

#[test]
fn packets_the_inbound_policy_allows_stay_on_their_inbound_flow() {
    let mut h = Harness::new(&simple_tables()).unwrap();
    let (server, peer) = (ip("10.0.0.1"), ip("192.0.2.53"));
    // 192.0.2.53:53 -> server:5000 is allowed inbound (UDP 5000-5001 from anyone, slot 1), and
    // server:5000 -> 192.0.2.53:53 is a documented outbound DNS query (outbound slot 0).
    let inbound = Pkt::udp(peer, server, 53, 5000).build();
    let outbound = Pkt::udp(server, peer, 5000, 53).build();
    let allowed = Observed { action: XDP_PASS, reasons: vec![Reason::PassFlow], flows: vec![1], reply_flows: vec![] };
    assert_eq!(h.observe(&inbound).unwrap(), allowed);
    send(&mut h, &outbound);
    // Still what explain says: the inbound flow, not a reply.
    assert_eq!(h.observe(&inbound).unwrap(), allowed);
    // The other way round, the server speaking first: the same, the inbound policy admits them.
    let inbound2 = Pkt::udp(peer, server, 53, 5001).build();
    send(&mut h, &Pkt::udp(server, peer, 5001, 53).build());
    assert_eq!(h.observe(&inbound2).unwrap(), allowed);
    // A query from a port the inbound policy does not open is tracked: its answer is a reply.
    send(&mut h, &Pkt::udp(server, peer, 40000, 53).build());
    reply(&mut h, &Pkt::udp(peer, server, 53, 40000).build(), 0);
}
