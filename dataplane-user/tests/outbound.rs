//! Outbound tables (the `OUT_*` maps): packets a protected server sends, classified against the
//! flows that start at a protected role. Every case is checked through the compiled outbound
//! tables and through `reference_outbound`.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use dataplane::classify::{classify_outbound, reference, reference_outbound, verdict, Classifier, Outcome, Probe};
use dataplane::compile::{compile, compile_with_summary};
use dataplane::policy::{load_site_from, ConntrackOptions, Policy};
use dataplane_common::Reason::{self, *};

const SERVER: &str = "192.0.2.10";
const SERVER6: &str = "2001:db8::10";
const DNS: &str = "198.51.100.53";
const DNS6: &str = "2001:db8:53::53";
const LDAP: &str = "198.51.100.89";
const RELAY: &str = "198.51.100.25";

fn pkt(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Probe {
    Probe {
        src: src.parse().expect("address"),
        dst: dst.parse().expect("address"),
        proto,
        sport,
        dport,
        icmp_type: None,
        quote: None,
    }
}

#[test]
fn outbound_flows_and_slots() {
    let p = common::outbound_policy();
    let ids = |f: &[dataplane::policy::Flow]| -> Vec<String> {
        f.iter().map(|f| format!("{}/{}", f.info.id, f.info.protocol)).collect()
    };
    assert_eq!(ids(&p.flows), ["dir-clients-https/tcp"]);
    assert_eq!(ids(&p.out_flows), ["dir-dns/udp", "dir-ldap/tcp", "dir-smtp-relay/tcp", "dir-no-smtp/tcp"]);
    assert_eq!((p.catalog_flows, p.out_catalog_flows), (1, 4));
    let t = compile(&p).expect("compiles");
    let out = t.outbound.as_ref().expect("outbound tables");
    let want: Vec<_> = p.out_flows.iter().map(|f| f.info.clone()).collect();
    assert_eq!(out.flows, want);
    // The options: udp and size set by the site, the TCP timeouts at their defaults.
    assert_eq!((t.config.ct_tcp_established, t.config.ct_tcp_transitory, t.config.ct_udp), (3600, 60, 30));
    assert_eq!(t.conntrack_size, 2048);
    // The derived policy: the peers are its protected roles, nothing else changes.
    let d = p.outbound_policy();
    let peers: Vec<&str> = d.protected().map(|r| r.id.as_str()).collect();
    assert_eq!(peers, ["dns-server", "ldap-server", "mail-relay", "internet"]);
    assert!(d.out_flows.is_empty());
}

#[test]
fn classify_outbound_packets() {
    let p = common::outbound_policy();
    let t = compile(&p).expect("compiles");
    let cls = Classifier::new_outbound(&t).expect("outbound tables");
    let cases: &[(Probe, Option<usize>, Reason)] = &[
        // Documented: the slot of the outbound flow.
        (pkt(SERVER, DNS, 17, 40000, 53), Some(0), PassFlow),
        (pkt(SERVER6, DNS6, 17, 1024, 53), Some(0), PassFlow),
        (pkt(SERVER, LDAP, 6, 50000, 389), Some(1), PassFlow),
        (pkt(SERVER, LDAP, 6, 1, 389), Some(1), PassFlow),
        // The prohibition wins over the relay flow (the relay is in the `any` role too).
        (pkt(SERVER, RELAY, 6, 40000, 25), Some(3), DropDenyFlow),
        (pkt(SERVER, "8.8.8.8", 6, 40000, 25), Some(3), DropDenyFlow),
        (pkt(SERVER6, "2001:db8::99", 6, 40000, 25), Some(3), DropDenyFlow),
        // Wrong port (the peer's), wrong source port (the server's), wrong protocol.
        (pkt(SERVER, DNS, 17, 40000, 54), None, DropNoFlow),
        (pkt(SERVER, DNS, 17, 1023, 53), None, DropNoFlow),
        (pkt(SERVER, DNS, 6, 40000, 53), None, DropNoFlow),
        (pkt(SERVER, LDAP, 17, 40000, 389), None, DropNoFlow),
        (pkt(SERVER, LDAP, 6, 40000, 636), None, DropNoFlow),
        // Wrong peer: LDAP to the DNS server, DNS to the LDAP server, a peer in no role.
        (pkt(SERVER, DNS, 6, 40000, 389), None, DropNoFlow),
        (pkt(SERVER, LDAP, 17, 40000, 53), None, DropNoFlow),
        (pkt(SERVER, "203.0.113.1", 17, 40000, 53), None, DropNoFlow),
        (pkt(SERVER6, "2001:db8:53::54", 17, 40000, 53), None, DropNoFlow),
        // Not from the protected server: a client, or the peer itself.
        (pkt("10.0.0.5", DNS, 17, 40000, 53), None, DropNoFlow),
        (pkt(DNS, SERVER, 17, 53, 40000), None, DropNoFlow),
        // The inbound flow is not an outbound one.
        (pkt(SERVER, "10.0.0.5", 6, 443, 40000), None, DropNoFlow),
        // Only TCP and UDP are tracked.
        (pkt(SERVER, DNS, 1, 0, 0), None, DropNoFlow),
        (pkt(SERVER, DNS, 47, 0, 0), None, DropNoFlow),
    ];
    for (packet, slot, reason) in cases {
        let want = verdict(*reason, *slot);
        assert_eq!(cls.classify_outbound(packet), want, "tables: {packet:?}");
        assert_eq!(classify_outbound(&t, packet), want, "tables: {packet:?}");
        assert_eq!(reference_outbound(&p, packet), want, "reference: {packet:?}");
    }
    let out = t.outbound.as_ref().expect("outbound");
    assert_eq!(out.flows[0].id, "dir-dns");
    assert_eq!(out.flows[1].id, "dir-ldap");
    assert_eq!(out.flows[3].id, "dir-no-smtp");
}

#[test]
fn inbound_unchanged_by_outbound_flows() {
    let p = common::outbound_policy();
    let t = compile(&p).expect("compiles");
    let cls = Classifier::new(&t);
    let https = pkt("10.0.0.5", SERVER, 6, 40000, 443);
    assert_eq!(cls.classify(&https).flow(), Some(0));
    assert_eq!(cls.classify(&https).reason, PassFlow);
    // A DNS reply is not an inbound flow: the kernel admits it through connection tracking only.
    let reply = pkt(DNS, SERVER, 17, 53, 40000);
    assert_eq!(cls.classify(&reply).reason, DropNoFlow);
    assert_eq!(reference(&p, &reply).reason, DropNoFlow);
    // Peers are not protected addresses inbound.
    assert_eq!(cls.classify(&pkt(SERVER, DNS, 17, 40000, 53)).reason, PassUnprotected);
}

#[test]
fn no_outbound_flows_no_outbound_tables() {
    let dir = common::scratch();
    let site = dir.join("sites/s.yaml");
    std::fs::write(&site, "name: s\ncatalogs: [alpha]\nroles:\n  server: 10.0.0.1\nprotect: [server]\n").expect("write");
    let p = load_site_from(&site, &dir.join("catalog")).expect("loads");
    assert!(p.out_flows.is_empty());
    let (t, s) = compile_with_summary(&p).expect("compiles");
    assert!(t.outbound.is_none());
    assert!(s.outbound.is_none());
    assert!(Classifier::new_outbound(&t).is_none());
    let d = classify_outbound(&t, &pkt("10.0.0.1", "8.8.8.8", 17, 40000, 53));
    assert_eq!((d.allows(), d.flow(), d.reason), (false, None, DropNoFlow));
    for m in s.maps.iter().filter(|m| m.name.starts_with("OUT_")) {
        assert_eq!((m.entries, m.bytes), (0, 0), "{}", m.name);
    }
    // Defaults of every conntrack option.
    assert_eq!(p.conntrack, ConntrackOptions::default());
    assert_eq!(t.conntrack_size, 65536);
    assert_eq!((t.config.ct_tcp_established, t.config.ct_tcp_transitory, t.config.ct_udp), (3600, 60, 60));
}

/// The test site's `beta-db` flow goes from `server` to `db`, both protected: it is inbound
/// (for db) and outbound (for server), with its own slot in each.
#[test]
fn flow_between_protected_roles_is_both() {
    let p = common::test_policy();
    let out: Vec<&str> = p.out_flows.iter().map(|f| f.info.id.as_str()).collect();
    assert_eq!(out, ["beta-db"]);
    let t = compile(&p).expect("compiles");
    let inbound_slot = t.flows.iter().position(|f| f.id == "beta-db");
    let db = pkt(SERVER, "192.0.2.20", 6, 40000, 5432);
    assert_eq!(Classifier::new(&t).classify(&db).flow(), inbound_slot);
    assert_eq!(classify_outbound(&t, &db).flow(), Some(0));
    assert!(classify_outbound(&t, &db).allows());
    // The server's IPv6 address is in `server`, but db has no IPv6 address.
    let db6 = pkt(SERVER6, "2001:db8::20", 6, 40000, 5432);
    assert_eq!(classify_outbound(&t, &db6).reason, DropNoFlow);
}

#[test]
fn summary_counts_outbound_tables() {
    let (t, s) = compile_with_summary(&common::outbound_policy()).expect("compiles");
    let entries = |n: &str| s.maps.iter().find(|m| m.name == n).map(|m| m.entries);
    let out = t.outbound.as_ref().expect("outbound");
    assert_eq!(entries("OUT_FLOWS"), Some(out.flows.len()));
    assert_eq!(entries("REPLY_FLOWS"), Some(out.flows.len()));
    // The image holds both directions: its words are what the summary adds up.
    let words: usize = s.maps.iter().filter(|m| m.name.starts_with("POLICY")).map(|m| m.entries).sum();
    assert_eq!(words, t.image().len());
    let o = s.outbound.expect("outbound summary");
    // The DNS flow's source ports need a source-port table.
    assert!(o.counts.sport_tables > 0);
    assert_eq!(o.counts.port_tables, out.dir.ports.len());
    assert_eq!((o.catalog_flows, o.slots, o.peer_roles), (4, 4, 4));
    assert_eq!(s.conntrack_size, 2048);
}

/// Every real site compiles with its outbound tables, and the outbound walk agrees with the
/// reference on packets aimed at each outbound flow. Prints the outbound table counts.
#[test]
fn real_sites_outbound() {
    let sites = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/sites");
    let mut files: Vec<_> = std::fs::read_dir(&sites)
        .expect("policies/sites")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in &files {
        let p = dataplane::policy::load_site(f).expect("site loads");
        let (t, s) = compile_with_summary(&p).expect("site compiles");
        assert_eq!(t.outbound.is_some(), !p.out_flows.is_empty());
        eprintln!(
            "{}: {} outbound slots ({} catalog flows); {:?}",
            f.file_name().unwrap_or_default().to_string_lossy(),
            p.out_flows.len(),
            p.out_catalog_flows,
            s.outbound.as_ref().map(|o| &o.counts)
        );
        let Some(cls) = Classifier::new_outbound(&t) else {
            continue;
        };
        // A packet from the first address of `from` to the first address of `to` at the first
        // port of each range, per family.
        for f in &p.out_flows {
            for v6 in [false, true] {
                let Some((src, dst)) = first_addrs(&p, f.from, f.to, v6) else {
                    continue;
                };
                let packet =
                    Probe { src, dst, proto: f.proto, sport: f.sport[0].0, dport: f.dport[0].0, icmp_type: None, quote: None };
                let d = cls.classify_outbound(&packet);
                assert_eq!(d, reference_outbound(&p, &packet), "{packet:?}");
                assert_ne!(d.reason, DropNoFlow, "{packet:?} matches {}", f.info.id);
            }
        }
    }
}

/// The first address of roles `from` and `to` in one family, if both have one.
fn first_addrs(p: &Policy, from: usize, to: usize, v6: bool) -> Option<(IpAddr, IpAddr)> {
    let first = |role: usize| {
        let a = p.roles[role].cidrs.iter().find(|c| c.v6 == v6)?.addr;
        Some(if v6 { IpAddr::from(Ipv6Addr::from(a)) } else { IpAddr::from(Ipv4Addr::from(a as u32)) })
    };
    Some((first(from)?, first(to)?))
}

/// A synthetic benchmark site (some services start at protected roles): the outbound walk agrees
/// with the reference at both ends of every outbound flow's ranges.
#[test]
fn synthetic_site_outbound_matches_reference() {
    let p = dataplane::policy::synth::synthetic_site(2000, 400, 7);
    assert!(!p.out_flows.is_empty());
    let t = compile(&p).expect("compiles");
    let cls = Classifier::new_outbound(&t).expect("outbound tables");
    let mut checked = 0;
    for f in &p.out_flows {
        for v6 in [false, true] {
            let Some((src, dst)) = first_addrs(&p, f.from, f.to, v6) else {
                continue;
            };
            for (sport, dport) in [
                (f.sport[0].0, f.dport[0].0),
                (f.sport[0].1, f.dport[0].1),
                (f.sport[0].0.wrapping_sub(1), f.dport[0].1.wrapping_add(1)),
            ] {
                let packet = Probe { src, dst, proto: f.proto, sport, dport, icmp_type: None, quote: None };
                assert_eq!(cls.classify_outbound(&packet), reference_outbound(&p, &packet), "{packet:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked} packets");
}
