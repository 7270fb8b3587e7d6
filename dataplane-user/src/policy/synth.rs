//! Synthetic sites for benchmarks: many roles with overlapping CIDRs (IPv4 and IPv6), a few
//! protected roles, random flows (single ports, ranges, lists, source-port constraints, denies).
//! Deterministic for a given seed.

use std::fmt::Write as _;
use std::path::Path;

use crate::policy::options::When;
use crate::policy::ports::{DportSpec, PortSpec, SportSpec};
use crate::policy::{Action, Catalog, Cidr, FlowDecl, Policy, Proto, RoleDecl, Site, SiteOptions};

/// splitmix64: small and good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn port(&mut self) -> u16 {
        1 + self.below(65535) as u16
    }
}

/// The pieces of a synthetic site: its catalog and its site (also written out as YAML).
pub struct Synthetic {
    pub catalog: Catalog,
    pub site: Site,
}

/// A synthetic catalog and site with `flows` catalog flows over `cidrs` CIDRs (at least 8).
///
/// Shape: one role per 4 CIDRs (plus an unbound `any` role); CIDRs are /32, /24 or /16 in
/// 10.0.0.0/8 (85%) or /128, /64, /48 in fd00::/16, so broader roles contain narrower ones.
/// One role in ten is protected. Flows come in services of about 20 flows between a random role
/// and a random protected role, as in vendor port tables; 1% of the services are from the `any`
/// role to one of the first five protected roles (public services).
pub fn synthetic(flows: usize, cidrs: usize, seed: u64) -> Synthetic {
    let mut rng = Rng(seed);
    // At least one CIDR per role, so that every protected role has addresses.
    let cidrs = cidrs.max(8);
    let nroles = (cidrs / 4).max(2);
    let nprotect = (nroles / 10).max(1);
    let mut roles = vec![RoleDecl { id: "any-ip".into(), aliases: vec![], description: String::new(), any: true }];
    let mut bindings = Vec::new();
    for i in 0..nroles {
        let id = format!("role-{i}");
        roles.push(RoleDecl { id: id.clone(), aliases: vec![], description: String::new(), any: false });
        bindings.push((id, Vec::new()));
    }
    for k in 0..cidrs {
        let c = random_cidr(&mut rng);
        bindings[k % nroles].1.push(c);
    }
    let protect: Vec<String> = bindings.iter().take(nprotect).map(|(id, _)| id.clone()).collect();
    // Flows come in services, as in vendor tables: about 20 flows per (from, to) role pair.
    let services: Vec<(String, String)> = (0..(flows / 20).max(1))
        .map(|_| {
            let any = rng.chance(1);
            let to = if any { rng.below(nprotect.min(5) as u64) } else { rng.below(nprotect as u64) };
            let from = if any { "any-ip".to_string() } else { format!("role-{}", rng.below(nroles as u64)) };
            (from, format!("role-{to}"))
        })
        .collect();
    let mut decls = Vec::with_capacity(flows);
    for i in 0..flows {
        let (from, to) = services[rng.below(services.len() as u64) as usize].clone();
        decls.push(random_flow(&mut rng, i, from, to));
    }
    let catalog = Catalog {
        name: "synthetic".into(),
        path: "synthetic.yaml".into(),
        document: "synthetic".into(),
        title: "synthetic".into(),
        options: Vec::new(),
        roles,
        flows: decls,
    };
    let site = Site {
        name: "synthetic".into(),
        path: "synthetic-site.yaml".into(),
        catalogs: vec!["synthetic".into()],
        roles: bindings.into_iter().filter(|(_, c)| !c.is_empty()).collect(),
        exceptions: Vec::new(),
        protect,
        options: SiteOptions::default(),
    };
    Synthetic { catalog, site }
}

/// The resolved policy of [`synthetic`]: what the benchmark compiles.
pub fn synthetic_site(flows: usize, cidrs: usize, seed: u64) -> Policy {
    let s = synthetic(flows, cidrs, seed);
    // The synthetic pieces are consistent by construction.
    Policy::resolve(&s.site, vec![s.catalog]).expect("synthetic site resolves")
}

fn random_cidr(rng: &mut Rng) -> Cidr {
    let v6 = rng.chance(15);
    let lens: [u8; 3] = if v6 { [128, 64, 48] } else { [32, 24, 16] };
    // 70% hosts, 25% /24 (/64), 5% /16 (/48).
    let len = lens[match rng.below(20) {
        0..=13 => 0,
        14..=18 => 1,
        _ => 2,
    }];
    let w = if v6 { 128 } else { 32 };
    // 256 /16s (or /32s of fd00::/16) in all, so that prefixes nest.
    let addr = if v6 {
        (0xfd00u128 << 112) | ((rng.below(256) as u128) << 96) | ((rng.next() as u128) << 32) | rng.next() as u128 & 0xffff_ffff
    } else {
        (10u128 << 24) | ((rng.below(256) as u128) << 16) | (rng.next() as u128 & 0xffff)
    };
    Cidr { v6, addr: addr & crate::policy::cidr::mask(len, w), len }
}

fn random_flow(rng: &mut Rng, i: usize, from: String, to: String) -> FlowDecl {
    let protocols = match rng.below(20) {
        0..=9 => vec![Proto::Tcp],
        10..=16 => vec![Proto::Udp],
        _ => vec![Proto::Tcp, Proto::Udp],
    };
    let range = |rng: &mut Rng| {
        let a = rng.port();
        PortSpec::Range(a, a.saturating_add(rng.below(2000) as u16))
    };
    let dport = match rng.below(20) {
        0..=11 => {
            let p = rng.port();
            PortSpec::Range(p, p)
        }
        12..=16 => range(rng),
        _ => PortSpec::List((0..2 + rng.below(2)).map(|_| range(rng)).collect()),
    };
    let sport = match rng.below(20) {
        0..=16 => PortSpec::Any,
        17..=18 => PortSpec::Range(1024, 65535),
        _ => {
            let p = rng.port();
            PortSpec::Range(p, p)
        }
    };
    FlowDecl {
        id: format!("synthetic-{i}"),
        description: String::new(),
        from,
        to,
        protocols,
        sport: SportSpec(sport),
        dport: DportSpec(dport),
        table: "synthetic".into(),
        when: When::default(),
        action: if rng.chance(2) { Action::Deny } else { Action::Allow },
        note: None,
    }
}

fn spec_yaml(s: &PortSpec) -> String {
    match s {
        PortSpec::Any => "any".into(),
        PortSpec::Range(a, b) if a == b => a.to_string(),
        PortSpec::Range(a, b) => format!("{a}-{b}"),
        PortSpec::List(v) => format!("[{}]", v.iter().map(spec_yaml).collect::<Vec<_>>().join(", ")),
        PortSpec::By { .. } | PortSpec::Count { .. } | PortSpec::Port { .. } => unreachable!("synthetic specs are plain"),
    }
}

/// Writes the synthetic site as `DIR/catalog/synthetic.yaml` and `DIR/sites/synthetic.yaml`
/// (for timing `dataplane compile --site` on it); returns the site path.
pub fn write_synthetic(dir: &Path, flows: usize, cidrs: usize, seed: u64) -> std::io::Result<std::path::PathBuf> {
    let s = synthetic(flows, cidrs, seed);
    let mut c = String::from("name: synthetic\ndocument: synthetic\ntitle: synthetic\nroles:\n");
    for r in &s.catalog.roles {
        let _ = writeln!(c, "  - id: {}{}", r.id, if r.any { "\n    any: true" } else { "" });
    }
    c.push_str("flows:\n");
    for f in &s.catalog.flows {
        let proto: Vec<&str> = f.protocols.iter().map(|p| p.name()).collect();
        let _ = write!(
            c,
            "  - id: {}\n    description: x\n    from: {}\n    to: {}\n    protocol: [{}]\n    sport: {}\n    dport: {}\n    table: x\n",
            f.id,
            f.from,
            f.to,
            proto.join(", "),
            spec_yaml(f.sport()),
            spec_yaml(f.dport())
        );
        if f.action == Action::Deny {
            c.push_str("    action: deny\n");
        }
    }
    let mut y = String::from("name: synthetic\ncatalogs: [synthetic]\nroles:\n");
    for (id, cidrs) in &s.site.roles {
        let list: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
        let _ = writeln!(y, "  {id}: [{}]", list.join(", "));
    }
    let _ = writeln!(y, "protect: [{}]", s.site.protect.join(", "));
    std::fs::create_dir_all(dir.join("catalog"))?;
    std::fs::create_dir_all(dir.join("sites"))?;
    std::fs::write(dir.join("catalog/synthetic.yaml"), c)?;
    let site = dir.join("sites/synthetic.yaml");
    std::fs::write(&site, y)?;
    Ok(site)
}
