//! The policy compiler: a resolved [`Policy`] -> [`Tables`], whose image is what the `POLICY`
//! map holds (layout in `dataplane_common::image`).
//!
//! 1. **Destination classes.** Every prefix of the protected roles' CIDRs is labeled with the set
//!    of roles containing it (`classes`); sets whose flows (flows to any role of the set) are the
//!    same list are one class. The destination trie maps an address to its class.
//! 2. **Source tries, per class.** Only the roles with flows to the class matter for its sources:
//!    their prefixes are labeled with the set of those roles containing them, and each set's
//!    policy is the list of the class's flows from a role of the set (interned across classes).
//!    The class's source trie maps an address straight to that policy, so no table is keyed by
//!    (source class, destination class): what is stored grows with the flows, not with roles x
//!    protected roles.
//! 3. **Port tables, per policy and protocol** (`ports`): destination-port intervals -> the
//!    winning flow, or a source-port table; identical tables are stored once.
//! 4. **Port filter**: every (protocol, destination port) some flow names.
//!
//! The outbound tables (`Tables::outbound`: packets a protected server sends) are the same
//! compiler run on [`Policy::outbound_policy`]: the outbound flows, with their `to` roles (the
//! peers) as destinations.

pub mod classes;
pub mod hash;
pub mod image;
pub mod ports;
pub mod size;
pub mod slots;
pub mod tables;

use std::collections::HashMap;

/// The compiler's maps: keys are its own integers and vectors, not input an attacker picks, so a
/// fast unkeyed hash will do (SipHash took a tenth of a 1,000,000-flow compile).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
use std::time::{Duration, Instant};

use crate::compile::tables::{ClassRecord, Direction, Prefixes, Tables};
use crate::policy::{Cidr, Policy};
use classes::{label, Labeled, Sets};
pub use size::{map_sizes, MapSize};

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
pub fn compile(p: &Policy) -> anyhow::Result<Tables> {
    compile_with_summary(p).map(|(t, _)| t)
}

pub fn compile_with_summary(p: &Policy) -> anyhow::Result<(Tables, Summary)> {
    let start = Instant::now();
    let (dir, counts) = compile_direction(p, "")?;
    let mut t = Tables { flows: p.flows.iter().map(|f| f.info.clone()).collect(), dir, config: p.config(), ..Default::default() };
    t.conntrack_size = p.conntrack.size;
    let mut outbound = None;
    if !p.out_flows.is_empty() {
        let out = p.outbound_policy();
        let (dir, c) = compile_direction(&out, "outbound ")?;
        let flows = out.flows.iter().map(|f| f.info.clone()).collect();
        t.outbound = Some(Box::new(Tables { flows, dir, config: t.config, outbound: None, conntrack_size: t.conntrack_size }));
        outbound = Some(OutboundSummary {
            peer_roles: out.protected().count(),
            catalog_flows: out.catalog_flows,
            slots: out.flows.len(),
            counts: c,
        });
    }
    let maps = map_sizes(&t);
    let words: usize = maps.iter().filter(|m| m.kind == "array").map(|m| m.entries).sum();
    if words > limits::MAX_IMAGE_WORDS {
        anyhow::bail!(
            "the policy image would take {words} words ({} MiB), above the limit of {} words",
            words >> 17,
            limits::MAX_IMAGE_WORDS
        );
    }
    let summary = Summary {
        roles: p.roles.len(),
        protected_roles: p.protected().count(),
        catalog_flows: p.catalog_flows,
        slots: p.flows.len(),
        counts,
        outbound,
        conntrack_size: t.conntrack_size,
        maps,
        elapsed: start.elapsed(),
    };
    Ok((t, summary))
}

/// The tables of one direction: `p.flows` against `p`'s protected roles. `kind` names the
/// direction in errors ("" inbound, "outbound ").
fn compile_direction(p: &Policy, kind: &'static str) -> anyhow::Result<(Direction, Counts)> {
    if p.flows.len() > limits::MAX_FLOWS {
        anyhow::bail!("{} {kind}flow slots exceed the limit of {}", p.flows.len(), limits::MAX_FLOWS);
    }
    let mut dsets = Sets::default();
    let protected: Vec<(Cidr, u32)> = role_cidrs(p, |i| p.roles[i].protected);
    let dst = label(protected, &mut dsets);

    let mut flows_to: Vec<Vec<u32>> = vec![Vec::new(); p.roles.len()];
    for (slot, f) in p.flows.iter().enumerate() {
        flows_to[f.to].push(slot as u32);
    }
    // Destination sets with the same flows are one class.
    let mut class_of_flows: FastMap<Vec<u32>, u32> = FastMap::default();
    let mut class_flows: Vec<Vec<u32>> = Vec::new();
    let class_of_set: Vec<u32> = dsets
        .sets
        .iter()
        .map(|roles| {
            let mut flows: Vec<u32> = roles.iter().flat_map(|&r| flows_to[r as usize].iter().copied()).collect();
            flows.sort_unstable();
            *class_of_flows.entry(flows.clone()).or_insert_with(|| {
                class_flows.push(flows);
                class_flows.len() as u32
            })
        })
        .collect();
    if class_flows.len() > limits::MAX_CLASSES {
        anyhow::bail!("{} {kind}destination classes exceed the limit of {}", class_flows.len(), limits::MAX_CLASSES);
    }

    let mut d = Direction::default();
    (d.dst_v4, d.dst_v6) = split_family(prefix_values(&dst, |set| class_of_set[set as usize]));
    let mut policies = Sets::default();
    let mut tries: FastMap<Prefixes, u32> = FastMap::default();
    for flows in &class_flows {
        let (v4, v6) = split_family(source_policies(p, flows, &mut policies));
        let [src_v4, src_v6] = [v4, v6].map(|t| {
            *tries.entry(t.clone()).or_insert_with(|| {
                d.src.push(t);
                d.src.len() as u32 - 1
            })
        });
        d.classes.push(ClassRecord { src_v4, src_v6 });
    }
    if policies.sets.len() > limits::MAX_POLICIES {
        anyhow::bail!("{} {kind}policies exceed the limit of {}", policies.sets.len(), limits::MAX_POLICIES);
    }
    let mut pt = ports::PortTables::default();
    d.policies = policies.sets.iter().skip(1).map(|slots| pt.add_policy(slots, &p.flows)).collect();
    let counts = Counts {
        dst_classes: d.classes.len(),
        src_tries: d.src.len(),
        policies: d.policies.len(),
        port_tables: pt.tables.len(),
        sport_tables: pt.sport_tables(),
    };
    d.ports = pt.tables;
    d.filter = p.flows.iter().flat_map(|f| f.dport.iter().map(move |&(a, b)| (f.proto, a, b))).collect();
    Ok((d, counts))
}

/// Every CIDR of the roles `keep` selects, with its role.
fn role_cidrs(p: &Policy, keep: impl Fn(usize) -> bool) -> Vec<(Cidr, u32)> {
    let roles = p.roles.iter().enumerate().filter(|(i, _)| keep(*i));
    roles.flat_map(|(i, r)| r.cidrs.iter().map(move |c| (*c, i as u32))).collect()
}

/// Source prefix -> policy for the class whose flows are `flows` (slots): the prefixes of the
/// roles those flows come from, each labeled with the policy of the roles containing it.
fn source_policies(p: &Policy, flows: &[u32], policies: &mut Sets) -> Prefixes {
    let mut from_role = vec![false; p.roles.len()];
    flows.iter().for_each(|&s| from_role[p.flows[s as usize].from] = true);
    let mut ssets = Sets::default();
    let labeled = label(role_cidrs(p, |i| from_role[i]), &mut ssets);
    let policy_of_set: Vec<u32> = ssets
        .sets
        .iter()
        .map(|roles| {
            let list: Vec<u32> =
                flows.iter().copied().filter(|&s| roles.binary_search(&(p.flows[s as usize].from as u32)).is_ok()).collect();
            if list.is_empty() {
                0
            } else {
                policies.intern(list)
            }
        })
        .collect();
    prefix_values(&labeled, |set| policy_of_set[set as usize])
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
