//! The policy compiler: a resolved [`Policy`] -> [`Tables`], whose image is what the `POLICY`
//! map holds (layout in `dataplane_common::image`).
//!
//! 1. **Destination classes.** Every prefix of the protected roles' CIDRs is labeled with the set
//!    of roles containing it (`classes`); sets whose flows (flows to any role of the set) are the
//!    same list are one class. The destination trie maps an address to its class.
//! 2. **Source tries, per class** (`sources`). Only the roles with flows to the class matter for its sources:
//!    their prefixes are labeled with the set of those roles containing them, and each set's
//!    policy is the list of the class's flows from a role of the set (interned across classes).
//!    The class's source trie maps an address straight to that policy, so no table is keyed by
//!    (source class, destination class): what is stored grows with the flows, not with roles x
//!    protected roles.
//! 3. **Port tables, per policy and protocol** (`ports`): destination-port intervals -> the
//!    winning flow, or a source-port table; identical tables are stored once.
//! 4. **Port filter**: every (protocol, destination port) some flow names.
//!
//! Steps 2 and 3 run on every core (`parts`), the two directions side by side; ids come out as
//! one pass in order would give them, so the tables and the policy hash do not depend on the
//! number of threads.
//!
//! The outbound tables (`Tables::outbound`: packets a protected server sends) are the same
//! compiler run on [`Policy::outbound_policy`]: the outbound flows, with their `to` roles (the
//! peers) as destinations.

pub mod classes;
pub mod hash;
pub mod image;
mod intern;
mod parts;
pub mod ports;
pub mod size;
pub mod slots;
mod source_tries;
pub mod tables;

use std::collections::HashMap;

/// The compiler's maps (see `intern::FastHash`).
pub(crate) type FastMap<K, V> = HashMap<K, V, intern::FastHash>;
use std::time::{Duration, Instant};

use crate::compile::tables::{DirectionTables, Outbound, Prefixes, Tables};
use crate::policy::{Cidr, Direction, Policy};
use classes::{label, Labeled, Sets};
use intern::Interner;
use ports::PortTables;
pub use size::{map_sizes, MapSize};
use source_tries::SourceTries;

/// Sizes past which a policy is refused: the image would not load or would waste memory.
/// `dataplane compile` shows a site's image size before anything is loaded.
pub mod limits {
    pub const MAX_FLOWS: usize = 1 << 21;
    /// Destination classes, source tries' values (policies): IPv4 buckets hold 26 bits.
    pub const MAX_CLASSES: usize = 1 << 26;
    pub const MAX_POLICIES: usize = 1 << 26;
    /// Words of the policy image (8 bytes each): 4 GiB, and source-port table offsets fit in
    /// the 29 bits of a verdict value.
    pub const MAX_IMAGE_WORDS: usize = 1 << 29;
}

/// A policy the compiler refuses: past one of the [`limits`].
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{count} {}flow slots exceed the limit of {limit}", dir.qualifier())]
    TooManyFlows { dir: Direction, count: usize, limit: usize },
    #[error("{count} {}destination classes exceed the limit of {limit}", dir.qualifier())]
    TooManyClasses { dir: Direction, count: usize, limit: usize },
    #[error("{count} {}policies exceed the limit of {limit}", dir.qualifier())]
    TooManyPolicies { dir: Direction, count: usize, limit: usize },
    #[error("the policy image would take {words} words ({} MiB), above the limit of {limit} words", words >> 17)]
    ImageTooLarge { words: usize, limit: usize },
}

/// What `compile` prints besides the map sizes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub roles: usize,
    pub protected_roles: usize,
    pub catalog_flows: usize,
    /// Counter slots (a tcp+udp flow takes two).
    pub slots: usize,
    #[serde(flatten)]
    pub counts: Counts,
    /// The outbound tables; None when no flow starts at a protected role.
    pub outbound: Option<OutboundSummary>,
    /// Entries of the connection-tracking table per IP version (`conntrack-size`).
    pub conntrack_size: u32,
    /// The policy image by kind of structure, and the counter maps.
    pub maps: Vec<MapSize>,
    #[serde(serialize_with = "ms")]
    pub elapsed: Duration,
}

/// The outbound part of [`Summary`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct OutboundSummary {
    /// Roles that are the `to` of an outbound flow (the peers the protected servers reach).
    pub peer_roles: usize,
    pub catalog_flows: usize,
    /// Outbound slots (a tcp+udp flow takes two).
    pub slots: usize,
    #[serde(flatten)]
    pub counts: Counts,
}

/// What one compiled direction holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counts {
    pub dst_classes: usize,
    /// Distinct source tries (a class's sources; classes with the same sources share one).
    pub src_tries: usize,
    pub policies: usize,
    /// Distinct port tables, the source-port tables among them.
    pub port_tables: usize,
    pub sport_tables: usize,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Compiles a policy into its tables.
pub fn compile(p: &Policy) -> Result<Tables, CompileError> {
    compile_with_summary(p).map(|(t, _)| t)
}

pub fn compile_with_summary(p: &Policy) -> Result<(Tables, Summary), CompileError> {
    let start = Instant::now();
    // The two directions, and the flows' labels, side by side.
    let ((inbound, flows), outbound) = rayon::join(
        || rayon::join(|| compile_direction(p, Direction::In), || flow_infos(&p.flows)),
        || {
            (!p.out_flows.is_empty()).then(|| {
                let out = p.outbound_policy();
                (compile_direction(&out, Direction::Out), flow_infos(&out.flows), out)
            })
        },
    );
    let (dir, counts) = inbound?;
    let mut t = Tables { flows, dir, config: p.config(), conntrack_size: p.conntrack.size, outbound: None };
    let mut outbound_summary = None;
    if let Some((compiled, flows, out)) = outbound {
        let (dir, c) = compiled?;
        t.outbound = Some(Outbound { flows, dir });
        outbound_summary = Some(OutboundSummary {
            peer_roles: out.protected().count(),
            catalog_flows: out.catalog_flows,
            slots: out.flows.len(),
            counts: c,
        });
    }
    let maps = map_sizes(&t);
    let words: usize = maps.iter().filter(|m| m.kind == size::MapKind::Array).map(|m| m.entries).sum();
    if words > limits::MAX_IMAGE_WORDS {
        return Err(CompileError::ImageTooLarge { words, limit: limits::MAX_IMAGE_WORDS });
    }
    let summary = Summary {
        roles: p.roles.len(),
        protected_roles: p.protected().count(),
        catalog_flows: p.catalog_flows,
        slots: p.flows.len(),
        counts,
        outbound: outbound_summary,
        conntrack_size: t.conntrack_size,
        maps,
        elapsed: start.elapsed(),
    };
    Ok((t, summary))
}

fn flow_infos(flows: &[crate::policy::Flow]) -> Vec<crate::policy::FlowInfo> {
    flows.iter().map(|f| f.info.clone()).collect()
}

/// The tables of one direction: `p.flows` against `p`'s protected roles. `dir` names the
/// direction in errors.
fn compile_direction(p: &Policy, dir: Direction) -> Result<(DirectionTables, Counts), CompileError> {
    if p.flows.len() > limits::MAX_FLOWS {
        return Err(CompileError::TooManyFlows { dir, count: p.flows.len(), limit: limits::MAX_FLOWS });
    }
    let mut dsets = Sets::default();
    let protected: Vec<(Cidr, u32)> = role_cidrs(p, |i| p.roles[i].protected);
    let dst = label(protected, &mut dsets);

    let mut flows_to: Vec<Vec<u32>> = vec![Vec::new(); p.roles.len()];
    for (slot, f) in p.flows.iter().enumerate() {
        flows_to[f.to].push(slot as u32);
    }
    // Destination sets with the same flows are one class (ids from 1: 0 is no class).
    let mut classes: Interner<Vec<u32>> = Interner::default();
    let class_of_set: Vec<u32> = dsets
        .sets()
        .iter()
        .map(|roles| {
            let mut flows: Vec<u32> = roles.iter().flat_map(|&r| flows_to[r as usize].iter().copied()).collect();
            flows.sort_unstable();
            classes.intern(flows) + 1
        })
        .collect();
    if classes.len() > limits::MAX_CLASSES {
        return Err(CompileError::TooManyClasses { dir, count: classes.len(), limit: limits::MAX_CLASSES });
    }

    let mut d = DirectionTables::default();
    (d.dst_v4, d.dst_v6) = split_family(prefix_values(&dst, |set| class_of_set[set as usize]));
    let sources = parts::build(classes.items(), |s: &mut SourceTries, flows| s.add_class(p, flows), SourceTries::merge);
    let policies = sources.policies.sets();
    if policies.len() > limits::MAX_POLICIES {
        return Err(CompileError::TooManyPolicies { dir, count: policies.len(), limit: limits::MAX_POLICIES });
    }
    let mut pt = parts::build(&policies[1..], |t: &mut PortTables, slots| t.push_policy(slots, &p.flows), PortTables::merge);
    d.policies = std::mem::take(&mut pt.policies);
    d.classes = sources.classes;
    d.src = sources.tries.into_items();
    let counts = Counts {
        dst_classes: d.classes.len(),
        src_tries: d.src.len(),
        policies: d.policies.len(),
        port_tables: pt.tables().len(),
        sport_tables: pt.sport_tables(),
    };
    d.ports = pt.into_tables();
    d.filter = p.flows.iter().flat_map(|f| f.dport.iter().map(move |&(a, b)| (f.proto, a, b))).collect();
    Ok((d, counts))
}

/// Every CIDR of the roles `keep` selects, with its role.
fn role_cidrs(p: &Policy, keep: impl Fn(usize) -> bool) -> Vec<(Cidr, u32)> {
    let roles = p.roles.iter().enumerate().filter(|(i, _)| keep(*i));
    roles.flat_map(|(i, r)| r.cidrs.iter().map(move |c| (*c, i as u32))).collect()
}

/// The prefixes that change the longest-prefix answer: a prefix whose value equals its
/// enclosing prefix's (or 0, at the top) adds nothing.
fn prefix_values(labeled: &[Labeled], value: impl Fn(u32) -> u32) -> Prefixes {
    labeled
        .iter()
        .filter_map(|l| {
            let v = value(l.set);
            let inherited = l.parent.map_or(0, |p| value(labeled[p].set));
            (v != inherited).then_some((l.cidr, v))
        })
        .collect()
}

fn split_family(v: Prefixes) -> (Prefixes, Prefixes) {
    v.into_iter().partition(|(c, _)| !c.v6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::synth::synthetic_site;

    /// Steps 2 and 3 built in parts give what one pass gives, ids included.
    #[test]
    fn parts_give_the_ids_of_one_pass() {
        let p = synthetic_site(3_000, 300, 11);
        // Any lists of flows will do as classes: overlapping windows of slots, so that classes
        // share policies and policies share port tables.
        let classes: Vec<Vec<u32>> = (0..60u32).map(|k| (k * 40..k * 40 + 200).collect()).collect();
        let sources =
            |n, c: &[Vec<u32>]| parts::build_in(n, c, |s: &mut SourceTries, flows| s.add_class(&p, flows), SourceTries::merge);
        let one = sources(1, &classes);
        let policies = &one.policies.sets()[1..];
        let ports =
            |n, c: &[Vec<u32>]| parts::build_in(n, c, |t: &mut PortTables, s| t.push_policy(s, &p.flows), PortTables::merge);
        let one_ports = ports(1, policies);
        // A merge meets what the part before it holds already: ids to map, not only to shift.
        let (a, b) = (sources(1, &classes[..30]), sources(1, &classes[30..]));
        assert!(b.policies.sets()[1..].iter().any(|s| a.policies.sets().contains(s)));
        let half = policies.len() / 2;
        let (a, b) = (ports(1, &policies[..half]), ports(1, &policies[half..]));
        assert!(b.tables().iter().any(|t| a.tables().contains(t)));
        assert!(one_ports.sport_tables() > 0);
        for n in [2, 3, 8] {
            let s = sources(n, &classes);
            assert_eq!((s.policies.sets(), s.tries.items(), &s.classes), (one.policies.sets(), one.tries.items(), &one.classes));
            let t = ports(n, policies);
            assert_eq!(
                (t.tables(), &t.policies, t.sport_tables()),
                (one_ports.tables(), &one_ports.policies, one_ports.sport_tables())
            );
        }
    }

    /// The limits' messages, as `dataplane compile` prints them.
    #[test]
    fn limit_messages() {
        let e = CompileError::TooManyFlows { dir: Direction::Out, count: 3, limit: 2 };
        assert_eq!(e.to_string(), "3 outbound flow slots exceed the limit of 2");
        let e = CompileError::TooManyClasses { dir: Direction::In, count: 3, limit: 2 };
        assert_eq!(e.to_string(), "3 destination classes exceed the limit of 2");
        let e = CompileError::ImageTooLarge { words: 3 << 17, limit: 2 };
        assert_eq!(e.to_string(), "the policy image would take 393216 words (3 MiB), above the limit of 2 words");
    }

    /// The compiled tables do not depend on the number of threads.
    #[test]
    fn the_same_tables_on_one_thread() {
        let p = synthetic_site(20_000, 2_000, 5);
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
            pool.install(|| compile(&p).map(|t| (t.image(), hash::policy_hash(&t))).expect("compiles"))
        };
        assert_eq!(on(1), on(3));
    }
}
