//! The semantics on the test site (`tests/data`): overlapping roles, deny precedence, options,
//! `when`, `by`, `count`, source ports, ICMP, unprotected addresses. Every case is checked through
//! the compiled tables and through the reference evaluator.

mod common;

use dataplane::classify::{reference, Classifier, Outcome, Probe};
use dataplane::compile::compile;
use dataplane_common::Reason;

struct Case {
    src: &'static str,
    dst: &'static str,
    proto: u8,
    sport: u16,
    dport: u16,
    icmp: Option<u8>,
    want: Option<&'static str>,
    reason: Reason,
}

const fn c(
    src: &'static str,
    dst: &'static str,
    proto: u8,
    sport: u16,
    dport: u16,
    want: Option<&'static str>,
    reason: Reason,
) -> Case {
    Case { src, dst, proto, sport, dport, icmp: None, want, reason }
}

const fn icmp(src: &'static str, dst: &'static str, proto: u8, t: Option<u8>, reason: Reason) -> Case {
    Case { src, dst, proto, sport: 0, dport: 0, icmp: t, want: None, reason }
}

const SERVER: &str = "192.0.2.10";
const DB: &str = "192.0.2.20";
use Reason::*;

const CASES: &[Case] = &[
    // admin-pc 10.0.0.5 is in admin-pc (/32), lan (/8) and internet (any): all their flows apply.
    c("10.0.0.5", SERVER, 6, 40000, 443, Some("alpha-admin-https"), PassFlow),
    c("10.0.0.5", SERVER, 6, 1000, 443, Some("beta-lan-https"), PassFlow),
    c("10.0.0.6", SERVER, 6, 40000, 443, Some("beta-lan-https"), PassFlow),
    c("8.8.8.8", SERVER, 6, 40000, 443, None, DropNoFlow),
    // The prohibition wins over the lan's 20-25 allow (lan hosts are in the any role too).
    c("10.0.0.6", SERVER, 6, 40000, 23, Some("alpha-no-telnet"), DropDenyFlow),
    c("10.0.0.5", SERVER, 6, 40000, 23, Some("alpha-no-telnet"), DropDenyFlow),
    c("10.0.0.6", SERVER, 6, 40000, 22, Some("alpha-lan-telnet"), PassFlow),
    c("10.0.0.6", SERVER, 6, 40000, 24, Some("alpha-lan-telnet"), PassFlow),
    c("10.0.0.6", SERVER, 6, 40000, 26, None, DropNoFlow),
    // by: release upgraded -> 40000-49999.
    c("8.8.8.8", SERVER, 17, 1, 40000, Some("alpha-media"), PassFlow),
    c("8.8.8.8", SERVER, 17, 1, 49999, Some("alpha-media"), PassFlow),
    c("8.8.8.8", SERVER, 17, 1, 50000, None, DropNoFlow),
    c("8.8.8.8", SERVER, 17, 1, 30000, None, DropNoFlow),
    // count: zones 3 -> 7001-7003.
    c("198.51.100.7", SERVER, 6, 40000, 7001, Some("alpha-zones"), PassFlow),
    c("198.51.100.7", SERVER, 6, 40000, 7003, Some("alpha-zones"), PassFlow),
    c("198.51.100.7", SERVER, 6, 40000, 7004, None, DropNoFlow),
    // when: turn is off; turn-off flow needs turn false and release upgraded.
    c("8.8.8.8", SERVER, 17, 40000, 3478, None, DropNoFlow),
    c("198.51.100.7", SERVER, 17, 40000, 3479, Some("alpha-turn-off"), PassFlow),
    // Source ports: the earlier any-sport flow is credited; the partner's 5060-only flow after.
    c("198.51.100.7", SERVER, 17, 5060, 5060, Some("alpha-internet-sip"), PassFlow),
    c("198.51.100.7", SERVER, 17, 5060, 5000, Some("alpha-partner-sip-5060"), PassFlow),
    c("198.51.100.7", SERVER, 17, 5061, 5000, None, DropNoFlow),
    // sport 1024-65535 boundary.
    c("10.0.0.5", SERVER, 6, 1024, 443, Some("alpha-admin-https"), PassFlow),
    c("10.0.0.5", SERVER, 6, 1023, 443, Some("beta-lan-https"), PassFlow),
    // beta's own option value (release is set to upgraded for every catalog declaring it).
    c("10.0.0.6", SERVER, 17, 40000, 2500, Some("beta-lan-media"), PassFlow),
    c("10.0.0.6", SERVER, 17, 40000, 3500, None, DropNoFlow),
    // Both protocols of a [tcp, udp] flow.
    c("10.0.0.6", SERVER, 6, 40000, 53, Some("alpha-lan-dns"), PassFlow),
    c("10.0.0.6", SERVER, 17, 40000, 53, Some("alpha-lan-dns"), PassFlow),
    // Second protected role.
    c(SERVER, DB, 6, 40000, 5432, Some("beta-db"), PassFlow),
    c("10.0.0.6", DB, 6, 40000, 5432, None, DropNoFlow),
    // IPv6.
    c("fd00::1", "2001:db8::10", 6, 40000, 443, Some("beta-lan-https"), PassFlow),
    c("2001:db8:ffff::1", "2001:db8::10", 17, 40000, 5061, Some("alpha-internet-sip"), PassFlow),
    c("2001:db8:ffff::1", "2001:db8::10", 6, 40000, 443, None, DropNoFlow),
    // Not protected.
    c("8.8.8.8", "192.0.2.99", 6, 40000, 80, None, PassUnprotected),
    c("8.8.8.8", "2001:db8::11", 6, 40000, 80, None, PassUnprotected),
    // Other protocols to a protected address.
    c("10.0.0.6", SERVER, 47, 0, 0, None, DropNoFlow),
    c("10.0.0.6", SERVER, 58, 0, 0, None, DropNoFlow),
    // ICMP (icmp-echo: allow in this site).
    icmp("8.8.8.8", SERVER, 1, None, PassIcmp),
    icmp("8.8.8.8", SERVER, 1, Some(0), PassIcmp),
    // An error that quotes nothing (see `icmp_errors_follow_the_quoted_flow`).
    icmp("8.8.8.8", SERVER, 1, Some(3), DropIcmpUnrelated),
    icmp("8.8.8.8", SERVER, 1, Some(5), DropIcmp),
    icmp("fd00::1", "2001:db8::10", 58, Some(135), PassIcmp),
    icmp("fd00::1", "2001:db8::10", 58, Some(200), DropIcmp),
];

#[test]
fn cases() {
    let policy = common::test_policy();
    let tables = compile(&policy).expect("compiles");
    let cls = Classifier::new(&tables);
    let mut bad = Vec::new();
    for k in CASES {
        let p = Probe {
            src: k.src.parse().expect("case address"),
            dst: k.dst.parse().expect("case address"),
            proto: k.proto,
            sport: k.sport,
            dport: k.dport,
            icmp_type: k.icmp,
            quote: None,
        };
        for (how, d) in [("tables", cls.classify(&p)), ("reference", reference(&policy, &p))] {
            let got = d.flow().map(|s| tables.flows[s].id.as_str());
            if got != k.want || d.reason != k.reason || d.allows() == k.reason.is_drop() {
                bad.push(format!("{how}: {p:?}: want {:?} {:?}, got {got:?} {:?}", k.want, k.reason, d.reason));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// An ICMP error passes, on the flow, when it quotes the server's answer to a packet some flow
/// admits; it is `icmp_unrelated` when the quoted packet comes from another address, is of
/// another protocol, or answers a packet no flow admits.
#[test]
fn icmp_errors_follow_the_quoted_flow() {
    use dataplane::classify::Quote;
    let policy = common::test_policy();
    let tables = compile(&policy).expect("compiles");
    let cls = Classifier::new(&tables);
    let mut checked = 0;
    for k in CASES.iter().filter(|k| k.proto == 6 || k.proto == 17) {
        let (src, dst): (std::net::IpAddr, std::net::IpAddr) = (k.src.parse().unwrap(), k.dst.parse().unwrap());
        let router = if dst.is_ipv6() { "2001:db8:ffff::1" } else { "203.0.113.254" }.parse().unwrap();
        let answer = Quote { src: dst, dst: src, proto: k.proto, sport: k.dport, dport: k.sport };
        let error = |quote: Quote, ty: u8| Probe {
            src: router,
            dst,
            proto: if dst.is_ipv6() { 58 } else { 1 },
            sport: 0,
            dport: 0,
            icmp_type: Some(ty),
            quote: Some(quote),
        };
        let ty = if dst.is_ipv6() { 2 } else { 3 };
        let related = k.reason == PassFlow;
        let want = match k.reason {
            PassFlow => (PassIcmp, k.want),
            PassUnprotected => (PassUnprotected, None),
            _ => (DropIcmpUnrelated, None),
        };
        let spoofed = Quote { src: router, ..answer };
        let other_proto = Quote { proto: 132, ..answer };
        let unrelated = if k.reason == PassUnprotected { want } else { (DropIcmpUnrelated, None) };
        for (what, p, want) in [
            ("answer", error(answer, ty), want),
            ("quoted from another address", error(spoofed, ty), unrelated),
            ("quoted sctp", error(other_proto, ty), unrelated),
        ] {
            for (how, d) in [("tables", cls.classify(&p)), ("reference", reference(&policy, &p))] {
                let got = (d.reason, d.flow().map(|s| tables.flows[s].id.as_str()));
                assert_eq!(got, want, "{how}, {what}: {p:?}");
            }
        }
        checked += related as usize;
    }
    assert!(checked >= 3, "the cases hold few admitted flows: {checked}");
}

#[test]
fn slots_follow_catalog_order_and_split_protocols() {
    let policy = common::test_policy();
    let ids: Vec<(&str, &str)> = policy.flows.iter().map(|f| (f.info.id.as_str(), f.info.protocol.name())).collect();
    assert_eq!(ids[0], ("alpha-admin-https", "tcp"));
    assert_eq!(ids[1], ("alpha-lan-dns", "tcp"));
    assert_eq!(ids[2], ("alpha-lan-dns", "udp"));
    // `when` excluded alpha-turn; beta's flows come after alpha's.
    assert!(!ids.iter().any(|(id, _)| *id == "alpha-turn"));
    let first_beta = ids.iter().position(|(id, _)| id.starts_with("beta-")).expect("beta flows");
    assert!(ids[first_beta..].iter().all(|(id, _)| id.starts_with("beta-")));
}

#[test]
fn config_flags_from_options() {
    let dir = common::scratch();
    let site = dir.join("sites/s.yaml");
    std::fs::write(&site, format!("{}options:\n  unprotected: drop\n", common::GOOD_SITE)).expect("write");
    let policy = dataplane::policy::load_site_from(&site, &dir.join("catalog")).expect("loads");
    let tables = compile(&policy).expect("compiles");
    let p = Probe {
        src: "8.8.8.8".parse().unwrap(),
        dst: "9.9.9.9".parse().unwrap(),
        proto: 6,
        sport: 1,
        dport: 1,
        icmp_type: None,
        quote: None,
    };
    let d = Classifier::new(&tables).classify(&p);
    assert_eq!((d.allows(), d.reason), (false, DropUnprotected));
    // Echo is denied by default.
    let p = Probe { dst: "10.0.0.1".parse().unwrap(), proto: 1, ..p };
    assert_eq!(Classifier::new(&tables).classify(&p).reason, DropIcmp);
}

#[test]
fn synthetic_site_matches_reference() {
    use dataplane::policy::cidr::mask;
    use dataplane::policy::Cidr;
    let policy = dataplane::policy::synth::synthetic_site(3000, 600, 7);
    let tables = compile(&policy).expect("compiles");
    let cls = Classifier::new(&tables);
    let mut x: u64 = 99;
    let mut next = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 17
    };
    // A random host of `c`.
    let host = |c: &Cidr, m: u64| {
        let w = c.width();
        let bits = (m as u128 | ((m as u128) << 64)) & !mask(c.len, w) & if w == 32 { 0xffff_ffff } else { u128::MAX };
        let a = c.addr | bits;
        if c.v6 {
            std::net::IpAddr::V6(a.into())
        } else {
            std::net::IpAddr::V4((a as u32).into())
        }
    };
    let all: Vec<Cidr> = policy.roles.iter().flat_map(|r| r.cidrs.iter().copied()).filter(|c| c.len > 0).collect();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..10000 {
        let f = &policy.flows[(next() % policy.flows.len() as u64) as usize];
        // Mostly addresses of the flow's own roles, sometimes any role's.
        let pick = |role: usize, n: u64| {
            let own = &policy.roles[role].cidrs;
            if !n.is_multiple_of(5) && !own.is_empty() {
                own[(n / 5 % own.len() as u64) as usize]
            } else {
                all[(n / 5 % all.len() as u64) as usize]
            }
        };
        let (sc, dc) = (pick(f.from, next()), pick(f.to, next()));
        if sc.v6 != dc.v6 {
            continue;
        }
        let (src, dst) = (host(&sc, next()), host(&dc, next()));
        let dport = f.dport[(next() % f.dport.len() as u64) as usize].0.wrapping_add((next() % 3) as u16).wrapping_sub(1);
        let sport = if next() % 2 == 0 { 1023 + (next() % 3) as u16 } else { next() as u16 };
        let p = Probe { src, dst, proto: f.proto, sport, dport, icmp_type: None, quote: None };
        let d = cls.classify(&p);
        assert_eq!(d, reference(&policy, &p), "{p:?}");
        *seen.entry(d.reason.name()).or_insert(0) += 1;
    }
    // The packets must exercise flows, not only misses.
    assert!(seen.get("flow").copied().unwrap_or(0) > 500, "{seen:?}");
    assert!(seen.get("deny_flow").copied().unwrap_or(0) > 10, "{seen:?}");
}

#[test]
fn synthetic_yaml_round_trip() {
    let dir = common::scratch();
    let site = dataplane::policy::synth::write_synthetic(&dir, 500, 200, 3).expect("writes");
    let from_yaml = dataplane::policy::load_site_from(&site, &dir.join("catalog")).expect("loads");
    let direct = dataplane::policy::synth::synthetic_site(500, 200, 3);
    assert_eq!(from_yaml.flows.len(), direct.flows.len());
    let (a, b) = (compile(&from_yaml).expect("compiles"), compile(&direct).expect("compiles"));
    assert_eq!(a.image(), b.image());
}

/// Timing of the whole path (YAML load + compile) at benchmark size; run with
/// `cargo test --release -p dataplane-user --test semantics -- --ignored --nocapture`.
#[test]
#[ignore]
fn synthetic_benchmark_timing() {
    let dir = common::scratch();
    let site = dataplane::policy::synth::write_synthetic(&dir, 100_000, 10_000, 1).expect("writes");
    let t = std::time::Instant::now();
    let policy = dataplane::policy::load_site_from(&site, &dir.join("catalog")).expect("loads");
    let loaded = t.elapsed();
    let (_, s) = dataplane::compile::compile_with_summary(&policy).expect("compiles");
    eprintln!("load {loaded:?}, compile {:?}", s.elapsed);
}
