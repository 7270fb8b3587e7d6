//! ICMP errors through the real XDP program (BPF_PROG_TEST_RUN): an error to a protected address
//! passes only when the packet it quotes is one the server could have sent, the reverse of a
//! flow the inbound policy admits or of a connection the server opened and is tracked; every
//! other error, and every quote the parser cannot relate, is `icmp_unrelated`.
//!
//! Site (`simple_tables`): server 10.0.0.1 / fd00::1; inbound tcp 80 (slot 0) and udp 5000-5001
//! (slot 1) from anywhere; outbound DNS udp 53 (slot 0) and LDAP tcp 389 (slot 1) to
//! 192.0.2.0/24 and 2001:db8::/32.

use std::net::IpAddr;

use dataplane_common::Reason;
use dataplane_tests::{
    packet::{FragSpec, Pkt},
    simple_tables, Harness, Observed, XDP_DROP, XDP_PASS,
};

const TC_ACT_OK: u32 = 0;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Server, client, router, and the error types "unreachable" and "time exceeded" of a family.
struct Family {
    server: IpAddr,
    client: IpAddr,
    router: IpAddr,
    errors: [u8; 2],
}

const FAMILIES: [(&str, &str, &str, [u8; 2]); 2] =
    [("10.0.0.1", "198.51.100.7", "203.0.113.254", [3, 11]), ("fd00::1", "2001:db8:5::7", "2001:db8:ffff::1", [1, 3])];

fn families() -> impl Iterator<Item = Family> {
    FAMILIES.iter().map(|&(s, c, r, errors)| Family { server: ip(s), client: ip(c), router: ip(r), errors })
}

impl Family {
    /// An error of type `ty` from the router quoting `quoted` whole (IP header + 8 bytes).
    fn error(&self, ty: u8, quoted: &Pkt) -> Vec<u8> {
        Pkt::icmp_quoting(self.router, self.server, ty, quoted, Pkt::quoted_len(quoted)).build()
    }
}

fn observe(h: &mut Harness, frame: &[u8]) -> Observed {
    h.observe(frame).unwrap()
}

fn passes_on(h: &mut Harness, frame: &[u8], flow: usize, what: &str) {
    let want = Observed { action: XDP_PASS, reasons: vec![Reason::PassIcmp], flows: vec![flow], reply_flows: vec![] };
    assert_eq!(observe(h, frame), want, "{what}");
}

fn unrelated(h: &mut Harness, frame: &[u8], what: &str) {
    let want = Observed { action: XDP_DROP, reasons: vec![Reason::DropIcmpUnrelated], flows: vec![], reply_flows: vec![] };
    assert_eq!(observe(h, frame), want, "{what}");
}

#[test]
fn errors_about_answers_to_admitted_flows_pass_on_the_flow() {
    let mut h = Harness::new(&simple_tables()).unwrap();
    for f in families() {
        for ty in f.errors {
            // The server's answers to the web (tcp 80) and media (udp 5000) flows.
            passes_on(&mut h, &f.error(ty, &Pkt::tcp(f.server, f.client, 80, 40000)), 0, "web answer");
            passes_on(&mut h, &f.error(ty, &Pkt::udp(f.server, f.client, 5001, 40000)), 1, "media answer");
            // Ports no flow admits, or the wrong protocol on the flow's port.
            unrelated(&mut h, &f.error(ty, &Pkt::tcp(f.server, f.client, 81, 40000)), "tcp 81");
            unrelated(&mut h, &f.error(ty, &Pkt::udp(f.server, f.client, 80, 40000)), "udp 80");
            unrelated(&mut h, &f.error(ty, &Pkt::udp(f.server, f.client, 5002, 40000)), "udp 5002");
            // The quoted packet goes the other way (client -> server): not one the server sent.
            unrelated(&mut h, &f.error(ty, &Pkt::tcp(f.client, f.server, 40000, 80)), "quoted inbound");
        }
    }
    let c = h.counters().unwrap();
    assert_eq!(c.flows[0].packets, 4, "related errors are counted on the flow they relate to");
    assert_eq!(c.flows[1].packets, 4);
    assert_eq!(c.reason(Reason::PassIcmp).packets, 8);
    assert_eq!(c.reason(Reason::DropIcmpUnrelated).packets, 16);
}

#[test]
fn quotes_that_cannot_be_related_are_dropped() {
    let mut h = Harness::new(&simple_tables()).unwrap();
    for f in families() {
        let ty = f.errors[0];
        let answer = Pkt::tcp(f.server, f.client, 80, 40000);
        let whole = Pkt::quoted_len(&answer);
        // Cut short: the quoted IP header, or the 8 transport bytes, incomplete.
        for keep in [0, 10, whole - 9, whole - 1] {
            let frame = Pkt::icmp_quoting(f.router, f.server, ty, &answer, keep).build();
            unrelated(&mut h, &frame, &format!("quote cut to {keep} bytes"));
        }
        passes_on(&mut h, &Pkt::icmp_quoting(f.router, f.server, ty, &answer, whole).build(), 0, "whole quote");
        // Of another protocol than TCP and UDP (SCTP, an ICMP echo the server sent).
        unrelated(&mut h, &f.error(ty, &Pkt::raw(f.server, f.client, 132, vec![0, 80, 0x9c, 0x40, 0, 0, 0, 0])), "sctp");
        unrelated(&mut h, &f.error(ty, &Pkt::icmp(f.server, f.client, if f.server.is_ipv6() { 128 } else { 8 })), "echo");
        // From another address than the error's destination (a blind attacker's guess).
        unrelated(&mut h, &f.error(ty, &Pkt::tcp(ip_like(f.server, "10.0.0.2", "fd00::2"), f.client, 80, 40000)), "other source");
        // A later fragment quoted carries no ports; an IPv4 first fragment does (in IPv6 the
        // fragment header is an extension header, not followed).
        let later = answer.clone().frag(FragSpec { offset8: 10, more: false, id: 7 });
        unrelated(&mut h, &f.error(ty, &later), "quoted later fragment");
        let first = f.error(ty, &answer.clone().frag(FragSpec { offset8: 0, more: true, id: 7 }));
        if f.server.is_ipv6() {
            unrelated(&mut h, &first, "quoted IPv6 first fragment");
        } else {
            passes_on(&mut h, &first, 0, "quoted first fragment");
        }
        // An IPv6 quote with an extension header before TCP: not followed.
        if f.server.is_ipv6() {
            unrelated(&mut h, &f.error(ty, &answer.clone().v6_ext(&[60])), "quoted extension header");
        }
        // The other family's packet quoted.
        let other = if f.server.is_ipv6() {
            Pkt::tcp(ip("10.0.0.1"), ip("198.51.100.7"), 80, 40000)
        } else {
            Pkt::tcp(ip("fd00::1"), ip("2001:db8:5::7"), 80, 40000)
        };
        unrelated(&mut h, &Pkt::icmp_quoting(f.router, f.server, ty, &other, Pkt::quoted_len(&other)).build(), "other family");
    }
    // Errors to an unprotected address are the unprotected policy's; neighbour discovery and
    // non-error types are unchanged.
    let to_other =
        Pkt::icmp_quoting(ip("203.0.113.254"), ip("10.0.0.2"), 3, &Pkt::tcp(ip("10.0.0.2"), ip("198.51.100.7"), 1, 2), 28);
    assert_eq!(observe(&mut h, &to_other.build()).reasons, vec![Reason::PassUnprotected]);
    assert_eq!(observe(&mut h, &Pkt::icmp(ip("fe80::1"), ip("fd00::1"), 135).build()).reasons, vec![Reason::PassIcmp]);
    assert_eq!(observe(&mut h, &Pkt::icmp(ip("198.51.100.7"), ip("10.0.0.1"), 8).build()).reasons, vec![Reason::DropIcmp]);
}

fn ip_like(family: IpAddr, v4: &str, v6: &str) -> IpAddr {
    if family.is_ipv6() {
        ip(v6)
    } else {
        ip(v4)
    }
}

#[test]
fn errors_about_tracked_connections_pass_on_the_connection() {
    let mut h = Harness::new(&simple_tables()).unwrap();
    for (server, dns, ldap, router, ty) in [
        (ip("10.0.0.1"), ip("192.0.2.53"), ip("192.0.2.80"), ip("203.0.113.254"), 3),
        (ip("fd00::1"), ip("2001:db8::53"), ip("2001:db8::80"), ip("2001:db8:ffff::1"), 1),
    ] {
        let query = Pkt::udp(server, dns, 40000, 53);
        let syn = Pkt::tcp(server, ldap, 41000, 389);
        let error = |quoted: &Pkt| Pkt::icmp_quoting(router, server, ty, quoted, Pkt::quoted_len(quoted)).build();
        // Before the server sent them, nothing relates the errors.
        unrelated(&mut h, &error(&query), "DNS query not sent yet");
        assert_eq!(h.run_egress(&query.build()).unwrap(), TC_ACT_OK);
        assert_eq!(h.run_egress(&syn.build()).unwrap(), TC_ACT_OK);
        for (quoted, slot) in [(&query, 0), (&syn, 1)] {
            let want = Observed { action: XDP_PASS, reasons: vec![Reason::PassIcmp], flows: vec![], reply_flows: vec![slot] };
            // Twice: an error neither closes the connection nor is it consumed.
            for _ in 0..2 {
                assert_eq!(observe(&mut h, &error(quoted)), want, "error about a tracked connection");
            }
        }
        // Another port of the same peer, or another peer: not the tracked connection.
        unrelated(&mut h, &error(&Pkt::udp(server, dns, 40001, 53)), "other source port");
        unrelated(&mut h, &error(&Pkt::udp(server, ip_like(server, "192.0.2.54", "2001:db8::54"), 40000, 53)), "other peer");
        // The SYN's connection is still waiting for its SYN-ACK: the error did not close it.
        let syn_ack = Pkt::tcp(ldap, server, 389, 41000).tcp_flags(0x12).build();
        assert_eq!(observe(&mut h, &syn_ack).reasons, vec![Reason::PassReply]);
    }
}
