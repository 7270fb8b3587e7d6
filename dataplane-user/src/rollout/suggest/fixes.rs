//! The changes `suggest` tries: each other value of each option, a flow's `when`, a role's
//! binding; each confirmed by compiling the changed site and judging the dropped tuples again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use dataplane_common::Reason;

use super::{FlowRef, Suggestion};
use crate::classify::judge::Judge;
use crate::classify::request::Request;
use crate::classify::verdict::{Direction, Outcome};
use crate::classify::Probe;
use crate::compile::tables::FlowInfo;
use crate::policy::cidr::mask;
use crate::policy::options::OptionKind;
use crate::policy::ports::PortSpec;
use crate::policy::sources::Loaded;
use crate::policy::{Action, Cidr, Exceptions, FlowKey, OptValue, OptionValues, Policy};
use crate::rollout::RolloutError;

type Result<T> = std::result::Result<T, RolloutError>;

/// A change to try: options to set and source addresses to add to a role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Fix {
    set: Vec<(String, OptValue)>,
    bind: Option<String>,
}

impl Fix {
    fn cost(&self) -> usize {
        self.set.len() + usize::from(self.bind.is_some())
    }
}

/// A tuple a change admits, with the flow that admits it.
pub(super) struct Admitted {
    pub(super) tuple: Probe,
    packets: u64,
    flow: FlowInfo,
}

/// The site with `fix` applied (the role bound to `hosts` in addition), resolved.
fn apply(base: &Loaded, fix: &Fix, hosts: &[IpAddr]) -> Result<Policy> {
    let mut site = base.site.clone();
    for (name, v) in &fix.set {
        match site.options.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = v.clone(),
            None => site.options.0.push((name.clone(), v.clone())),
        }
    }
    if let Some(role) = &fix.bind {
        let host = |ip: &IpAddr| Cidr::parse(&ip.to_string()).expect("an address is a CIDR");
        let add: Vec<Cidr> = hosts.iter().map(host).collect();
        match site.roles.iter_mut().find(|(r, _)| r == role) {
            Some(slot) => slot.1.extend(add),
            None => site.roles.push((role.clone(), add)),
        }
    }
    Ok(Policy::resolve(&site, base.policy.catalogs.clone())?)
}

/// Every (option, other value) of the selected catalogs: each value of an enum or boolean; for an
/// integer, the values `when` clauses name and those a `{base, count}` port spec needs to reach a
/// dropped port.
fn alternatives(base: &Loaded, dports: &BTreeSet<u16>) -> Vec<(String, OptValue)> {
    let cats = &base.policy.catalogs;
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in cats.iter().flat_map(|c| &c.options) {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let decls: Vec<_> = cats.iter().filter_map(|c| c.options.iter().find(|(n, _)| n == name).map(|(_, d)| (c, d))).collect();
        let (c0, d0) = decls[0];
        let current = OptionValues::resolve(&c0.options, &base.site.options.0).get(name).cloned();
        let values = match &d0.kind {
            OptionKind::Int { min, max } => int_candidates(base, name, *min, *max, dports),
            k => k.values().unwrap_or_default(),
        };
        for v in values {
            let fits = decls.iter().all(|(_, d)| d.kind.check(&v).is_ok());
            if fits && Some(&v) != current.as_ref() && !out.contains(&(name.to_owned(), v.clone())) {
                out.push((name.to_owned(), v));
            }
        }
    }
    out
}

fn int_candidates(base: &Loaded, name: &str, min: i64, max: i64, dports: &BTreeSet<u16>) -> Vec<OptValue> {
    let mut v: BTreeSet<i64> = BTreeSet::new();
    for f in base.policy.catalogs.iter().flat_map(|c| &c.flows) {
        for (n, accepted) in &f.when.0 {
            if n == name {
                v.extend(accepted.iter().filter_map(|x| if let OptValue::Int(i) = x { Some(*i) } else { None }));
            }
        }
        for spec in [f.dport(), f.sport()] {
            for b in count_bases(spec, name) {
                v.extend(dports.iter().filter(|&&p| p >= b).map(|&p| i64::from(p - b) + 1));
            }
            if names_port(spec, name) {
                v.extend(dports.iter().map(|&p| i64::from(p)));
            }
        }
    }
    v.into_iter().filter(|n| (min..=max).contains(n)).take(16).map(OptValue::Int).collect()
}

/// The bases of the `{base, count: name}` parts of a port spec.
fn count_bases(s: &PortSpec, name: &str) -> Vec<u16> {
    match s {
        PortSpec::Count { base, option } if option == name => vec![*base],
        PortSpec::List(v) => v.iter().flat_map(|x| count_bases(x, name)).collect(),
        PortSpec::By { cases, .. } => cases.iter().flat_map(|(_, x)| count_bases(x, name)).collect(),
        _ => Vec::new(),
    }
}

/// Whether a port spec has a `{port: name}` part (the option's value is the port).
fn names_port(s: &PortSpec, name: &str) -> bool {
    match s {
        PortSpec::Port { option, to: None } => option == name,
        PortSpec::List(v) => v.iter().any(|x| names_port(x, name)),
        PortSpec::By { cases, .. } => cases.iter().any(|(_, x)| names_port(x, name)),
        _ => false,
    }
}

/// Inbound flows of `p` that `base` lacks or has with other ports or addresses.
fn new_flows<'p>(base: &Policy, p: &'p Policy) -> Vec<&'p crate::policy::Flow> {
    let old: HashMap<FlowKey, &crate::policy::Flow> = base.flows.iter().map(|f| (f.info.key(), f)).collect();
    p.flows.iter().filter(|f| old.get(&f.info.key()).is_none_or(|o| differs(base, o, p, f))).collect()
}

fn differs(a: &Policy, fa: &crate::policy::Flow, b: &Policy, fb: &crate::policy::Flow) -> bool {
    let cidrs = |p: &Policy, r: usize| p.roles[r].cidrs.clone();
    fa.dport != fb.dport
        || fa.sport != fb.sport
        || fa.deny != fb.deny
        || cidrs(a, fa.from) != cidrs(b, fb.from)
        || cidrs(a, fa.to) != cidrs(b, fb.to)
}

/// Keys of the flows of direction `d` both policies have, with other ports or addresses.
fn changed_flows(d: Direction, a: &Policy, b: &Policy) -> Vec<FlowKey> {
    let old: HashMap<FlowKey, &crate::policy::Flow> = d.flows(a).iter().map(|f| (f.info.key(), f)).collect();
    d.flows(b).iter().filter(|f| old.get(&f.info.key()).is_some_and(|o| differs(a, o, b, f))).map(|f| f.info.key()).collect()
}

/// The tuples each single option change admits.
pub(super) fn single_options(base: &Loaded, open: &[(Probe, u64)]) -> Result<Found> {
    let dports: BTreeSet<u16> = open.iter().map(|(t, _)| t.dport).collect();
    let mut out = Vec::new();
    for (name, value) in alternatives(base, &dports) {
        let fix = Fix { set: vec![(name, value)], bind: None };
        let policy = apply(base, &fix, &[])?;
        let added = new_flows(&base.policy, &policy);
        // Only tuples an added flow could match are worth a compile.
        let maybe: Vec<&(Probe, u64)> =
            open.iter().filter(|(t, _)| added.iter().any(|f| f.proto == t.proto && f.dport.contains(t.dport))).collect();
        if maybe.is_empty() {
            continue;
        }
        let admitted = admitted_by(&Judge::new(&policy)?, maybe.into_iter().copied());
        if !admitted.is_empty() {
            out.push((fix, admitted));
        }
    }
    Ok(out)
}

/// The tuples `j` admits through a flow.
fn admitted_by(j: &Judge, tuples: impl Iterator<Item = (Probe, u64)>) -> Vec<Admitted> {
    tuples
        .filter_map(|(tuple, packets)| {
            let v = j.decide(Direction::In, &tuple);
            let flow = j.info(Direction::In, v.flow())?.clone();
            (v.reason == Reason::PassFlow).then_some(Admitted { tuple, packets, flow })
        })
        .collect()
}

/// The changes that let a catalog flow admit a tuple: the options of its `when` that do not
/// hold, and its source role when that has no address covering the sender. Cheapest first.
fn candidate_fixes(base: &Loaded, t: &Probe) -> Vec<Fix> {
    let p = &base.policy;
    let role = |id: &str| p.roles.iter().find(|r| r.id == id);
    let mut out: Vec<Fix> = Vec::new();
    for c in &p.catalogs {
        let values = OptionValues::resolve(&c.options, &base.site.options.0);
        for f in c.flows.iter().filter(|f| f.action == Action::Allow && f.protocols.iter().any(|x| x.number() == t.proto)) {
            if !role(&f.to).is_some_and(|r| r.protected && r.cidrs.iter().any(|x| x.contains_ip(t.dst))) {
                continue;
            }
            let mut v = values.clone();
            let mut set = Vec::new();
            for (name, accepted) in &f.when.0 {
                if !v.get(name).is_some_and(|x| accepted.contains(x)) {
                    set.push((name.clone(), accepted[0].clone()));
                    v.0.insert(name.clone(), accepted[0].clone());
                }
            }
            if !f.dport().resolve(&v).contains(t.dport) || !f.sport().resolve(&v).contains(t.sport) {
                continue;
            }
            let covered = role(&f.from).is_some_and(|r| r.cidrs.iter().any(|x| x.contains_ip(t.src)));
            let fix = Fix { set, bind: (!covered).then(|| f.from.clone()) };
            if fix.cost() > 0 && !out.contains(&fix) {
                out.push(fix);
            }
        }
    }
    out.sort_by_key(Fix::cost);
    out.truncate(3);
    out
}

pub(super) type Found = Vec<(Fix, Vec<Admitted>)>;

/// Multi-option and binding fixes for the tuples no single option admits, each confirmed by
/// compiling it: (switched off, unbound).
pub(super) fn flow_fixes(base: &Loaded, open: &[(Probe, u64)]) -> Result<(Found, Found)> {
    let candidates: Vec<(Probe, u64, Vec<Fix>)> =
        open.iter().map(|&(t, n)| (t, n, candidate_fixes(base, &t))).filter(|x| !x.2.is_empty()).collect();
    let mut confirmed: BTreeMap<Fix, Vec<Admitted>> = BTreeMap::new();
    let mut done: HashSet<Probe> = HashSet::new();
    for round in 0..3 {
        let mut groups: BTreeMap<Fix, Vec<(Probe, u64)>> = BTreeMap::new();
        for (t, n, fixes) in &candidates {
            if let Some(f) = fixes.get(round).filter(|_| !done.contains(t)) {
                groups.entry(f.clone()).or_default().push((*t, *n));
            }
        }
        for (fix, tuples) in groups {
            let hosts: Vec<IpAddr> = tuples.iter().map(|x| x.0.src).collect::<BTreeSet<_>>().into_iter().collect();
            let admitted = admitted_by(&Judge::new(&apply(base, &fix, &hosts)?)?, tuples.into_iter());
            done.extend(admitted.iter().map(|a| a.tuple));
            if !admitted.is_empty() {
                confirmed.entry(fix).or_default().extend(admitted);
            }
        }
    }
    let (unbound, off): (Found, Found) = confirmed.into_iter().partition(|(f, _)| f.bind.is_some());
    Ok((off, unbound))
}

/// The prefixes to bind for these senders: a /24 (IPv6: /64) holding two or more of them, else
/// each address.
fn prefixes(srcs: &BTreeSet<IpAddr>) -> Vec<Cidr> {
    let net = |ip: &IpAddr| {
        let c = Cidr::parse(&ip.to_string()).expect("an address is a CIDR");
        let len = if c.v6 { 64 } else { 24 };
        Cidr { addr: c.addr & mask(len, c.width()), len, ..c }
    };
    let mut by_net: BTreeMap<Cidr, Vec<&IpAddr>> = BTreeMap::new();
    for ip in srcs {
        by_net.entry(net(ip)).or_default().push(ip);
    }
    by_net
        .into_iter()
        .flat_map(|(n, ips)| match ips.len() {
            1 => vec![Cidr::parse(&ips[0].to_string()).expect("an address is a CIDR")],
            _ => vec![n],
        })
        .collect()
}

pub(super) fn suggestions(base: &Loaded, found: &Found) -> Result<Vec<Suggestion>> {
    let mut out = Vec::new();
    for (fix, admitted) in found {
        let srcs: BTreeSet<IpAddr> = admitted.iter().map(|a| a.tuple.src).collect();
        let bind: Vec<Cidr> = if fix.bind.is_some() { prefixes(&srcs) } else { Vec::new() };
        let mut flows: Vec<FlowRef> = Vec::new();
        for a in admitted {
            let f = FlowRef::new(&a.flow);
            if !flows.contains(&f) {
                flows.push(f);
            }
        }
        let hosts: Vec<IpAddr> = srcs.iter().copied().collect();
        let changed = apply(base, fix, &hosts)?;
        let keys = |p: &Policy| p.flows.iter().chain(&p.out_flows).map(|f| f.info.key()).collect::<HashSet<_>>();
        let (before, after) = (keys(&base.policy), keys(&changed));
        let admitting: HashSet<FlowKey> = flows.iter().map(|f| (f.id.clone(), f.protocol)).collect();
        let also_changes = Direction::BOTH
            .iter()
            .flat_map(|&d| changed_flows(d, &base.policy, &changed))
            .filter(|k| !admitting.contains(k))
            .count();
        let example = admitted.iter().max_by_key(|a| (a.packets, std::cmp::Reverse(a.tuple))).expect("admits one at least");
        out.push(Suggestion {
            set: fix.set.iter().map(|(n, v)| (n.clone(), v.to_json())).collect(),
            bind: fix.bind.iter().map(|r| (r.clone(), bind.iter().map(Cidr::to_string).collect())).collect(),
            flows,
            packets: admitted.iter().map(|a| a.packets).sum(),
            tuples: admitted.len(),
            sources: srcs.len(),
            example: Request::of(Direction::In, &example.tuple),
            also_adds: after.difference(&before).filter(|k| !admitting.contains(*k)).count(),
            also_removes: before.difference(&after).count(),
            also_changes,
            lines: lines(base, fix, &bind),
        });
    }
    // Most traffic first; among alternatives, the change with the fewest side effects.
    let side = |x: &Suggestion| x.also_adds + x.also_removes + x.also_changes;
    out.sort_by(|a, b| b.packets.cmp(&a.packets).then(side(a).cmp(&side(b))).then(a.lines.cmp(&b.lines)));
    Ok(out)
}

/// The YAML to put in the site: options to set, and a role's binding with the new CIDRs.
fn lines(base: &Loaded, fix: &Fix, bind: &[Cidr]) -> String {
    let mut s = String::new();
    if !fix.set.is_empty() {
        s.push_str("options:\n");
        for (n, v) in &fix.set {
            s.push_str(&format!("  {n}: {}\n", yaml_value(v)));
        }
    }
    if let Some(role) = &fix.bind {
        let mut all: Vec<Cidr> = base.site.roles.iter().find(|(r, _)| r == role).map(|(_, c)| c.clone()).unwrap_or_default();
        // What a new prefix covers needs no entry of its own.
        all.retain(|c| !bind.iter().any(|b| b != c && b.contains(c)));
        all.extend(bind.iter().filter(|c| !all.contains(c)).copied().collect::<Vec<_>>());
        let except = base.site.exceptions.iter().find(|(r, _)| r == role).map(|(_, x)| x);
        s.push_str(&format!("roles:\n  {role}: {}\n", binding_yaml(&all, except)));
    }
    s
}

/// A binding as the site writes it: `[CIDRs]`, or `{ cidrs, except, except-roles }` when the
/// role has exceptions (a suggestion keeps them).
fn binding_yaml(cidrs: &[Cidr], except: Option<&Exceptions>) -> String {
    let list = |v: &[Cidr]| {
        let quoted: Vec<String> = v.iter().map(|c| if c.v6 { format!("\"{c}\"") } else { c.to_string() }).collect();
        format!("[{}]", quoted.join(", "))
    };
    let Some(x) = except.filter(|x| !x.is_empty()) else { return list(cidrs) };
    let mut parts = vec![format!("cidrs: {}", list(cidrs))];
    if !x.except.is_empty() {
        parts.push(format!("except: {}", list(&x.except)));
    }
    if !x.except_roles.is_empty() {
        parts.push(format!("except-roles: [{}]", x.except_roles.join(", ")));
    }
    format!("{{ {} }}", parts.join(", "))
}

fn yaml_value(v: &OptValue) -> String {
    match v {
        // Enum values that YAML would read as numbers or booleans stay strings.
        OptValue::Str(s) if s.parse::<f64>().is_ok() || ["true", "false", "yes", "no"].contains(&s.as_str()) => {
            format!("\"{s}\"")
        }
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_keeps_its_exceptions() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        assert_eq!(binding_yaml(&[c("10.0.0.0/8"), c("fd00::/8")], None), "[10.0.0.0/8, \"fd00::/8\"]");
        let x = Exceptions { except: vec![c("10.1.0.0/16")], except_roles: vec!["vcs-control".into()] };
        assert_eq!(
            binding_yaml(&[c("10.0.0.0/8"), c("192.0.2.7/32")], Some(&x)),
            "{ cidrs: [10.0.0.0/8, 192.0.2.7/32], except: [10.1.0.0/16], except-roles: [vcs-control] }"
        );
    }
}
