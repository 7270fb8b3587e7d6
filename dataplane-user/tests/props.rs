//! Property: for random sites (overlapping CIDRs in both IP versions, `any` roles, port ranges,
//! source-port constraints, deny flows) and random packets biased to boundaries, walking the
//! compiled tables gives exactly the reference evaluator's decision (verdict, flow, reason); and
//! the same for the outbound tables (packets a protected server sends) against
//! `reference_outbound` over `Policy::out_flows`. Roles may be bound with exceptions (`except`
//! prefixes and `except-roles`): the compiler is given their exact difference as prefixes, the
//! reference evaluates them by set membership; `bindings_with_exceptions_match_sets` holds both
//! against a set evaluation written here.

use std::net::IpAddr;

use dataplane::classify::{classify_outbound, reference, reference_outbound, Classifier, Outcome, Probe};
use dataplane::compile::compile;
use dataplane::policy::options::When;
use dataplane::policy::ports::{DportSpec, PortSpec, SportSpec};
use dataplane::policy::{Action, Catalog, Cidr, Exceptions, FlowDecl, OptValue, Policy, Proto, RoleDecl, Site, SiteOptions};
use proptest::prelude::*;

/// Ports around which flows and packets cluster.
const PORTS: [u16; 14] = [1, 2, 3, 22, 23, 80, 443, 1023, 1024, 1025, 5060, 5061, 65534, 65535];

#[derive(Clone, Debug)]
struct RoleSpec {
    any: bool,
    /// (IPv6, host 0..16, prefix length choice); None: not bound by the site.
    cidrs: Option<Vec<(bool, u8, u8)>>,
    protect: bool,
    /// Exceptions of a bound role: prefixes, and roles of lower index (so no cycle).
    except: Vec<(bool, u8, u8)>,
    except_roles: Vec<u8>,
}

#[derive(Clone, Debug)]
struct FlowSpec {
    from: usize,
    to: usize,
    protos: u8,
    dport: Vec<(u16, u16)>,
    sport: Option<Vec<(u16, u16)>>,
    deny: bool,
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![4 => prop::sample::select(PORTS.to_vec()), 1 => 1u16..=65535]
}

fn range() -> impl Strategy<Value = (u16, u16)> {
    (port(), port()).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn role() -> impl Strategy<Value = RoleSpec> {
    let cidr = || (any::<bool>(), 0u8..16, 0u8..7);
    let except = prop_oneof![2 => Just(Vec::new()), 1 => prop::collection::vec(cidr(), 1..3)];
    let except_roles = prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(0u8..6, 1..3)];
    (
        prop::bool::weighted(0.2),
        prop::option::weighted(0.8, prop::collection::vec(cidr(), 0..4)),
        prop::bool::weighted(0.6),
        except,
        except_roles,
    )
        .prop_map(|(any, cidrs, protect, except, except_roles)| RoleSpec { any, cidrs, protect, except, except_roles })
}

/// The site's exceptions for `roles`: a bound role's `except` prefixes and its except-roles,
/// taken among the roles before it.
fn exceptions(roles: &[RoleSpec]) -> Vec<(String, Exceptions)> {
    let mut out = Vec::new();
    for (i, r) in roles.iter().enumerate() {
        let except_roles: Vec<String> = match i {
            0 => Vec::new(),
            _ => r.except_roles.iter().map(|&j| format!("r{}", j as usize % i)).collect(),
        };
        let mut except_roles_unique = Vec::new();
        for e in except_roles {
            if !except_roles_unique.contains(&e) {
                except_roles_unique.push(e);
            }
        }
        let x = Exceptions { except: r.except.iter().copied().map(cidr).collect(), except_roles: except_roles_unique };
        if r.cidrs.is_some() && !x.is_empty() {
            out.push((format!("r{i}"), x));
        }
    }
    out
}

fn flow() -> impl Strategy<Value = FlowSpec> {
    (
        0usize..6,
        0usize..6,
        1u8..=3,
        prop::collection::vec(range(), 1..3),
        prop::option::weighted(0.4, prop::collection::vec(range(), 1..3)),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(from, to, protos, dport, sport, deny)| FlowSpec { from, to, protos, dport, sport, deny })
}

fn cidr((v6, host, len): (bool, u8, u8)) -> Cidr {
    // Lengths: /0, /8, or one of the five longest; hosts 0..16 so prefixes nest and overlap.
    let w = if v6 { 128 } else { 32 };
    let len = match len {
        0 => 0,
        1 => 8,
        n => w - (n - 2),
    };
    let base: u128 = if v6 { 0xfd00u128 << 112 } else { 10u128 << 24 };
    Cidr { v6, addr: (base | host as u128) & dataplane::policy::cidr::mask(len, w), len }
}

fn spec(ranges: &[(u16, u16)]) -> PortSpec {
    PortSpec::List(ranges.iter().map(|&(a, b)| PortSpec::Range(a, b)).collect())
}

fn build(roles: &[RoleSpec], flows: &[FlowSpec], drop: bool, echo: bool) -> Policy {
    let n = roles.len();
    let decls = roles
        .iter()
        .enumerate()
        .map(|(i, r)| RoleDecl { id: format!("r{i}"), aliases: vec![], description: String::new(), any: r.any })
        .collect();
    let flows = flows
        .iter()
        .enumerate()
        .map(|(i, f)| FlowDecl {
            id: format!("f{i}"),
            description: String::new(),
            from: format!("r{}", f.from % n),
            to: format!("r{}", f.to % n),
            protocols: match f.protos {
                1 => vec![Proto::Tcp],
                2 => vec![Proto::Udp],
                _ => vec![Proto::Tcp, Proto::Udp],
            },
            sport: SportSpec(f.sport.as_deref().map_or(PortSpec::Any, spec)),
            dport: DportSpec(spec(&f.dport)),
            table: String::new(),
            when: When::default(),
            action: if f.deny { Action::Deny } else { Action::Allow },
            note: None,
        })
        .collect();
    let catalog = prop_catalog(decls, flows);
    let bindings: Vec<(String, Vec<Cidr>)> = roles
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.cidrs.as_ref().map(|c| (format!("r{i}"), c.iter().copied().map(cidr).collect())))
        .collect();
    let s = |v: &str| OptValue::Str(v.into());
    let options = SiteOptions(vec![
        ("unprotected".into(), s(if drop { "drop" } else { "pass" })),
        ("icmp-echo".into(), s(if echo { "allow" } else { "deny" })),
    ]);
    let mut site = Site {
        name: "prop".into(),
        path: "prop.yaml".into(),
        catalogs: vec!["prop".into()],
        roles: bindings,
        exceptions: exceptions(roles),
        protect: Vec::new(),
        options,
    };
    // Protect only roles left with addresses once their exceptions are taken away.
    let unprotected = Policy::resolve(&site, vec![catalog.clone()]).expect("generated sites are consistent");
    let has_addresses = |i: usize| !unprotected.roles[i].cidrs.is_empty();
    site.protect = (0..n).filter(|&i| roles[i].protect && has_addresses(i)).map(|i| format!("r{i}")).collect();
    Policy::resolve(&site, vec![catalog]).expect("generated sites are consistent")
}

#[derive(Clone, Debug)]
struct PacketSpec {
    v6: bool,
    src: u8,
    dst: u8,
    proto: u8,
    sport: u16,
    dport: u16,
    icmp: Option<u8>,
    /// Take the addresses from a flow's roles (most random addresses are in no role).
    aim: bool,
}

fn packet() -> impl Strategy<Value = PacketSpec> {
    // A pool port or one off it.
    let port = || (port(), 0u8..3).prop_map(|(p, d)| p.wrapping_add(d as u16).wrapping_sub(1));
    (
        any::<bool>(),
        0u8..20,
        0u8..20,
        prop_oneof![8 => Just(6u8), 8 => Just(17u8), 1 => Just(1u8), 1 => Just(58u8), 1 => Just(47u8)],
        prop_oneof![3 => port(), 1 => Just(0u16)],
        port(),
        prop::option::of(prop::sample::select(vec![0u8, 1, 3, 8, 11, 128, 129, 133, 135, 200])),
        prop::bool::weighted(0.7),
    )
        .prop_map(|(v6, src, dst, proto, sport, dport, icmp, aim)| PacketSpec {
            v6,
            src,
            dst,
            proto,
            sport,
            dport,
            icmp,
            aim,
        })
}

/// Hosts 0..16 of the pool, 16..20 elsewhere (inside /8 or outside everything).
fn addr(v6: bool, h: u8) -> IpAddr {
    let h = h as u128;
    let (a, b) = match h {
        0..=15 => (h, h),
        16 | 17 => (h << 16, h << 80),
        _ => (h << 24, h << 120),
    };
    if v6 {
        IpAddr::V6(((0xfd00u128 << 112) | b).into())
    } else {
        IpAddr::V4((((10u128 << 24) | a) as u32).into())
    }
}

/// The packet with its source in a CIDR of a flow's `from` role and its destination in a CIDR of
/// its `to` role (host bits from the spec), when the flow and the family allow it.
fn aimed(policy: &Policy, ps: &PacketSpec) -> Option<Probe> {
    aimed_at(policy, &policy.flows, ps)
}

/// [`aimed`] at one of `flows` (inbound or outbound flows of `policy`).
fn aimed_at(policy: &Policy, flows: &[dataplane::policy::Flow], ps: &PacketSpec) -> Option<Probe> {
    let f = flows.get(ps.src as usize % flows.len().max(1))?;
    // The spec's family if both roles have it, else the other one.
    let has = |role: usize, v6: bool| policy.roles[role].cidrs.iter().any(|c| c.v6 == v6);
    let v6 = if has(f.from, ps.v6) && has(f.to, ps.v6) { ps.v6 } else { !ps.v6 };
    let pick = |role: usize, k: u8| {
        let c: Vec<&Cidr> = policy.roles[role].cidrs.iter().filter(|c| c.v6 == v6).collect();
        let c = c.get(k as usize % c.len().max(1))?;
        let w = c.width();
        let bits = (k as u128 * 0x0101_0101_0101_0101_0101_0101_0101_0101) & !dataplane::policy::cidr::mask(c.len, w);
        let a = c.addr | (bits & if w == 32 { 0xffff_ffff } else { u128::MAX });
        Some(if c.v6 { IpAddr::V6(a.into()) } else { IpAddr::V4((a as u32).into()) })
    };
    Some(Probe {
        src: pick(f.from, ps.dst)?,
        dst: pick(f.to, ps.dst / 2)?,
        proto: if ps.proto == 6 || ps.proto == 17 { f.proto } else { ps.proto },
        sport: ps.sport,
        dport: ps.dport,
        icmp_type: ps.icmp,
        quote: None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn tables_match_reference(
        roles in prop::collection::vec(role(), 1..6),
        flows in prop::collection::vec(flow(), 0..16),
        drop in any::<bool>(),
        echo in any::<bool>(),
        packets in prop::collection::vec(packet(), 64),
    ) {
        let policy = build(&roles, &flows, drop, echo);
        let tables = compile(&policy).expect("compiles");
        let cls = Classifier::new(&tables);
        for ps in &packets {
            let p = Probe {
                src: addr(ps.v6, ps.src),
                dst: addr(ps.v6, ps.dst),
                proto: ps.proto,
                sport: ps.sport,
                dport: ps.dport,
                icmp_type: ps.icmp,
                quote: None,
            };
            let p = if ps.aim { aimed(&policy, ps).unwrap_or(p) } else { p };
            let d = cls.classify(&p);
            prop_assert_eq!(d, reference(&policy, &p), "packet {:?}", p);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Outbound: the `OUT_*` tables walked as the kernel's egress program walks them give the
    /// direct evaluation over `out_flows` (from contains the source, to contains the destination,
    /// protocol, destination and source ports; deny precedence), and their flows are the
    /// outbound flows in slot order.
    #[test]
    fn outbound_tables_match_reference(
        roles in prop::collection::vec(role(), 1..6),
        flows in prop::collection::vec(flow(), 0..16),
        drop in any::<bool>(),
        echo in any::<bool>(),
        packets in prop::collection::vec(packet(), 64),
    ) {
        let policy = build(&roles, &flows, drop, echo);
        let tables = compile(&policy).expect("compiles");
        match tables.outbound.as_ref() {
            None => prop_assert!(policy.out_flows.is_empty()),
            Some(out) => {
                let infos: Vec<_> = policy.out_flows.iter().map(|f| f.info.clone()).collect();
                prop_assert_eq!(&out.flows, &infos);
            }
        }
        let cls = Classifier::new_outbound(&tables);
        for ps in &packets {
            let p = Probe {
                src: addr(ps.v6, ps.src),
                dst: addr(ps.v6, ps.dst),
                proto: ps.proto,
                sport: ps.sport,
                dport: ps.dport,
                icmp_type: ps.icmp,
                quote: None,
            };
            let p = if ps.aim { aimed_at(&policy, &policy.out_flows, ps).unwrap_or(p) } else { p };
            let d = classify_outbound(&tables, &p);
            if let Some(c) = &cls {
                prop_assert_eq!(c.classify_outbound(&p), d);
            }
            prop_assert_eq!(d, reference_outbound(&policy, &p), "packet {:?}", p);
        }
    }
}

/// Whether role `i` of `roles` holds `ip`, by sets: in its `cidrs`, in none of its `except`,
/// held by none of its except-roles (unbound roles hold everything if `any`, else nothing).
fn holds(roles: &[RoleSpec], i: usize, ip: IpAddr) -> bool {
    let r = &roles[i];
    let inside = |v: &[(bool, u8, u8)]| v.iter().any(|&c| cidr(c).contains_ip(ip));
    match &r.cidrs {
        None => r.any,
        Some(c) => {
            let except_roles = if i == 0 { Vec::new() } else { r.except_roles.iter().map(|&j| j as usize % i).collect() };
            inside(c) && !inside(&r.except) && !except_roles.into_iter().any(|j| holds(roles, j, ip))
        }
    }
}

/// An address of the pools [`cidr`] draws from, with random low bits.
fn pool_addr(v6: bool, low: u8, high: bool) -> IpAddr {
    let base: u128 = if v6 { 0xfd00u128 << 112 } else { 10u128 << 24 };
    let a = base | low as u128 | if high { 1u128 << 20 } else { 0 };
    if v6 {
        IpAddr::V6(a.into())
    } else {
        IpAddr::V4((a as u32).into())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Bindings with exceptions: every role gets a flow to a protected host on its own port, so
    /// the compiled walk admits a packet from an address iff the role holds it; that, the
    /// reference's answer and the effective prefixes all agree with the set evaluation above.
    #[test]
    fn bindings_with_exceptions_match_sets(
        roles in prop::collection::vec(role(), 1..6),
        addrs in prop::collection::vec((any::<bool>(), 0u8..40, any::<bool>()), 48),
    ) {
        let mut roles = roles;
        roles.iter_mut().for_each(|r| r.protect = false);
        // The protected host: its own role, last, one address of each family.
        let host = vec![(false, 3, 2), (true, 3, 2)];
        roles.push(RoleSpec { any: false, cidrs: Some(host.clone()), protect: true, except: Vec::new(), except_roles: Vec::new() });
        let n = roles.len();
        let flows: Vec<FlowSpec> = (0..n - 1)
            .map(|i| {
                let port = 1000 + i as u16;
                FlowSpec { from: i, to: n - 1, protos: 1, dport: vec![(port, port)], sport: None, deny: false }
            })
            .collect();
        let policy = build(&roles, &flows, true, false);
        let dst = |v6: bool| if v6 { cidr(host[1]) } else { cidr(host[0]) };
        let tables = compile(&policy).expect("compiles");
        let cls = Classifier::new(&tables);
        for &(v6, low, high) in &addrs {
            let ip = pool_addr(v6, low, high);
            for i in 0..n - 1 {
                let want = holds(&roles, i, ip);
                prop_assert_eq!(policy.role_holds(i, ip), want, "reference, role r{} address {}", i, ip);
                prop_assert_eq!(policy.roles[i].cidrs.iter().any(|c| c.contains_ip(ip)), want, "prefixes of r{}: {:?}", i, policy.roles[i].cidrs);
                let to = dst(v6);
                let to = if v6 { IpAddr::V6(to.addr.into()) } else { IpAddr::V4((to.addr as u32).into()) };
                let p = Probe::ported(ip, to, 6, 40000, 1000 + i as u16);
                prop_assert_eq!(cls.classify(&p).allows(), want, "walk, role r{} address {}", i, ip);
            }
        }
    }
}

/// A site built in memory is not checked as a file is: resolving still refuses a cycle of
/// except-roles instead of recursing.
#[test]
fn a_cycle_of_except_roles_is_refused_in_memory() {
    let bound = |except_roles: Vec<u8>| RoleSpec {
        any: false,
        cidrs: Some(vec![(false, 0, 1)]),
        protect: false,
        except: Vec::new(),
        except_roles,
    };
    let roles = [bound(vec![]), bound(vec![0])];
    let mut x = exceptions(&roles);
    assert_eq!(x.len(), 1, "r1 excepts r0");
    x.push(("r0".into(), Exceptions { except: Vec::new(), except_roles: vec!["r1".into()] }));
    let roles = (0..2).map(|i| RoleDecl { id: format!("r{i}"), aliases: vec![], description: String::new(), any: false });
    let catalog = prop_catalog(roles.collect(), vec![]);
    let site = Site {
        name: "prop".into(),
        path: "prop.yaml".into(),
        catalogs: vec!["prop".into()],
        roles: vec![("r0".into(), vec![cidr((false, 0, 1))]), ("r1".into(), vec![cidr((false, 0, 1))])],
        exceptions: x,
        protect: Vec::new(),
        options: SiteOptions::default(),
    };
    let e = Policy::resolve(&site, vec![catalog]).expect_err("a cycle");
    assert_eq!(e.kind, dataplane::policy::ErrorKind::ExceptCycle, "{e}");
}

/// The catalog the properties resolve their sites against: these roles and flows, no options.
fn prop_catalog(roles: Vec<RoleDecl>, flows: Vec<FlowDecl>) -> Catalog {
    Catalog {
        name: "prop".into(),
        path: "prop.yaml".into(),
        document: String::new(),
        title: String::new(),
        options: vec![],
        roles,
        flows,
    }
}
