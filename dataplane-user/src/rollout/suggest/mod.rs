//! `dataplane suggest`: what the catalogs say about the traffic a site dropped (or, in monitor
//! mode, would have dropped), read from drop events.
//!
//! Each distinct dropped tuple is judged again by the site, then:
//! - **switched off**: a single option change (each other value of each option of the selected
//!   catalogs) whose policy admits it through a flow; or, failing that, the options of a flow's
//!   `when` that are off, all of them;
//! - **unbound**: a flow that would admit it but for its source role, which has no address
//!   covering the sender (with the options it also needs, if any);
//! - **forbidden** (a deny flow drops it) or **undocumented** (neither): the top destination
//!   ports and sources.
//!
//! Every suggestion is confirmed by compiling the site with the change and classifying the tuple
//! through it, as `explain` would. Suggestions never change the site: they print the lines to add.

//!
//! It reads drop events ([`drops`]), concludes here and in [`fixes`] (the changes tried), and
//! prints with [`render`].

pub mod drops;
mod fixes;
mod render;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use dataplane_common::Reason;
use serde::Serialize;
use serde_json::Value;

use crate::classify::judge::Judge;
use crate::classify::request::{ProtoName, Request};
use crate::classify::verdict::{Action, Direction, Outcome};
use crate::classify::Probe;
use crate::compile::tables::FlowInfo;
use crate::policy::sources::Loaded;
use crate::policy::{load_all_catalogs, Policy};
use crate::rollout::RolloutError;

type Result<T> = std::result::Result<T, RolloutError>;
use drops::Drops;
use fixes::{flow_fixes, single_options, suggestions};

/// What `suggest` reports.
#[derive(Serialize)]
pub struct Report {
    pub events: u64,
    pub packets: u64,
    pub suppressed: u64,
    pub tuples: usize,
    pub max_tuples: usize,
    /// The cap on distinct tuples was reached: `not_analysed` packets were only counted.
    pub cap_reached: bool,
    pub not_analysed: u64,
    /// Dropped then, admitted by the site now.
    pub admitted: Group,
    pub switched_off: Vec<Suggestion>,
    pub unbound: Vec<Suggestion>,
    pub forbidden: Vec<Forbidden>,
    pub undocumented: Undocumented,
    /// Drops no flow judges, per reason (ICMP, fragments, malformed, unprotected ...).
    pub other: BTreeMap<String, u64>,
}

#[derive(Serialize, Default)]
pub struct Group {
    pub packets: u64,
    pub tuples: usize,
    pub sources: usize,
}

/// One change to the site, and the dropped traffic it admits.
#[derive(Serialize)]
pub struct Suggestion {
    /// Options to set: name -> value.
    pub set: BTreeMap<String, Value>,
    /// Role -> CIDRs to add to its binding (unbound suggestions).
    pub bind: BTreeMap<String, Vec<String>>,
    /// The flows that admit the traffic under the change, with their catalog and table.
    pub flows: Vec<FlowRef>,
    pub packets: u64,
    pub tuples: usize,
    pub sources: usize,
    /// An admitted tuple, as an `explain` line.
    pub example: Request,
    /// Other flows the change adds, removes, or changes (ports, addresses): `dataplane diff`
    /// lists them.
    pub also_adds: usize,
    pub also_removes: usize,
    pub also_changes: usize,
    /// The lines to put in the site.
    pub lines: String,
}

#[derive(Serialize, Clone, PartialEq, Eq)]
pub struct FlowRef {
    pub id: String,
    pub protocol: crate::policy::Proto,
    pub catalog: String,
    pub table: String,
    pub description: String,
}

impl FlowRef {
    pub(super) fn new(f: &FlowInfo) -> Self {
        FlowRef {
            id: f.id.clone(),
            protocol: f.protocol,
            catalog: f.catalog.clone(),
            table: f.table.clone(),
            description: f.description.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct Forbidden {
    pub flow: FlowRef,
    pub packets: u64,
    pub sources: usize,
    pub top_ports: Vec<PortCount>,
    pub top_sources: Vec<SourceCount>,
}

#[derive(Serialize, Default)]
pub struct Undocumented {
    pub packets: u64,
    pub tuples: usize,
    pub sources: usize,
    pub top_ports: Vec<PortCount>,
    pub top_sources: Vec<SourceCount>,
}

#[derive(Serialize)]
pub struct PortCount {
    pub proto: ProtoName,
    pub dport: u16,
    pub packets: u64,
    pub sources: usize,
    /// Flows of catalogs the site does not select that document this port ("catalog/flow").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub documented_by: Vec<String>,
    /// Flows in force on this port that took other senders: "flow (from ROLE, source ports P)".
    /// The drops came from another source port, or from a role-less sender to an address the
    /// flow does not serve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_force: Vec<String>,
}

#[derive(Serialize)]
pub struct SourceCount {
    pub src: IpAddr,
    pub packets: u64,
}

pub fn analyse(base: &Loaded, drops: &Drops, top: usize, dir: &Path) -> Result<Report> {
    let judge = Judge::new(&base.policy)?;
    let mut tuples: Vec<(Probe, u64)> = drops.tuples.iter().map(|(t, n)| (*t, *n)).collect();
    tuples.sort();
    let (mut admitted, mut open) = (Vec::new(), Vec::new());
    let mut forbidden: BTreeMap<usize, Vec<(Probe, u64)>> = BTreeMap::new();
    let mut other = drops.other.clone();
    for (t, n) in tuples {
        let v = judge.decide(Direction::In, &t);
        match (v.action(), v.reason, v.flow()) {
            (Action::Allow, ..) => admitted.push((t, n)),
            (_, Reason::DropDenyFlow, Some(slot)) => forbidden.entry(slot).or_default().push((t, n)),
            (_, Reason::DropNoFlow, _) => open.push((t, n)),
            (_, reason, _) => *other.entry(reason.name().to_owned()).or_default() += n,
        }
    }
    let mut switched_off = single_options(base, &open)?;
    let done: HashSet<Probe> = switched_off.iter().flat_map(|(_, v)| v.iter().map(|a| a.tuple)).collect();
    open.retain(|(t, _)| !done.contains(t));
    let (multi, unbound) = flow_fixes(base, &open)?;
    let done: HashSet<Probe> = multi.iter().chain(&unbound).flat_map(|(_, v)| v.iter().map(|a| a.tuple)).collect();
    open.retain(|(t, _)| !done.contains(t));
    switched_off.extend(multi);
    let others = load_all_catalogs(dir).ok();
    let selected: Vec<&str> = base.policy.catalogs.iter().map(|c| c.name.as_str()).collect();
    let protected: Vec<&str> = base.policy.protected().map(|r| r.id.as_str()).collect();
    let hint = |proto: u8, port: u16| {
        (documented_by(others.as_deref().unwrap_or(&[]), &selected, &protected, proto, port), in_force(&base.policy, proto, port))
    };
    Ok(Report {
        events: drops.events,
        packets: drops.packets(),
        suppressed: drops.suppressed,
        tuples: drops.tuples.len(),
        max_tuples: drops.max,
        cap_reached: drops.over_cap > 0,
        not_analysed: drops.over_cap,
        admitted: group(&admitted),
        switched_off: suggestions(base, &switched_off)?,
        unbound: suggestions(base, &unbound)?,
        forbidden: forbidden
            .into_iter()
            .map(|(slot, v)| Forbidden {
                flow: FlowRef::new(&judge.tables.flows[slot]),
                packets: v.iter().map(|x| x.1).sum(),
                sources: sources(&v),
                top_ports: top_ports(&v, top, &|_, _| Default::default()),
                top_sources: top_sources(&v, top),
            })
            .collect(),
        undocumented: Undocumented {
            packets: open.iter().map(|x| x.1).sum(),
            tuples: open.len(),
            sources: sources(&open),
            top_ports: top_ports(&open, top, &hint),
            top_sources: top_sources(&open, top),
        },
        other,
    })
}

fn group(v: &[(Probe, u64)]) -> Group {
    Group { packets: v.iter().map(|x| x.1).sum(), tuples: v.len(), sources: sources(v) }
}

fn sources(v: &[(Probe, u64)]) -> usize {
    v.iter().map(|x| x.0.src).collect::<HashSet<_>>().len()
}

/// Hints for a port: (flows of other catalogs, flows in force) documenting it.
type Hint<'a> = &'a dyn Fn(u8, u16) -> (Vec<String>, Vec<String>);

fn top_ports(v: &[(Probe, u64)], top: usize, hint: Hint) -> Vec<PortCount> {
    let mut m: BTreeMap<(u8, u16), (u64, HashSet<IpAddr>)> = BTreeMap::new();
    for (t, n) in v {
        let e = m.entry((t.proto, t.dport)).or_default();
        e.0 += n;
        e.1.insert(t.src);
    }
    let mut rows: Vec<_> = m.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .take(top)
        .map(|((proto, dport), (packets, srcs))| {
            let (documented_by, in_force) = hint(proto, dport);
            PortCount { proto: ProtoName::of(proto), dport, packets, sources: srcs.len(), documented_by, in_force }
        })
        .collect()
}

fn top_sources(v: &[(Probe, u64)], top: usize) -> Vec<SourceCount> {
    let mut m: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for (t, n) in v {
        *m.entry(t.src).or_default() += n;
    }
    let mut rows: Vec<_> = m.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.into_iter().take(top).map(|(src, packets)| SourceCount { src, packets }).collect()
}

/// Inbound flows in force on this protocol and port, with the senders they take.
fn in_force(p: &Policy, proto: u8, port: u16) -> Vec<String> {
    let mut out: Vec<String> = p
        .flows
        .iter()
        .filter(|f| !f.deny && f.proto == proto && f.dport.contains(port))
        .map(|f| {
            format!("{} (from {}, source ports {})", f.info.id, p.roles[f.from].id, crate::policy::ports::format_ranges(&f.sport))
        })
        .collect();
    out.dedup();
    out.truncate(3);
    out
}

/// Flows of catalogs the site does not select, to a role it protects, whose destination ports
/// (at the defaults) hold `port`: a hint that another document covers the traffic.
fn documented_by(all: &[crate::policy::Catalog], selected: &[&str], protected: &[&str], proto: u8, port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for c in all.iter().filter(|c| !selected.contains(&c.name.as_str())) {
        let values = c.default_values();
        for f in c.flows.iter().filter(|f| protected.contains(&f.to.as_str())) {
            let ports = f.dport().resolve(&values);
            if f.protocols.iter().any(|p| p.number() == proto) && ports.contains(port) {
                out.push(format!("{}/{}", c.name, f.id));
            }
        }
    }
    out.truncate(3);
    out
}
