//! The policy compiler: a resolved [`Policy`] -> [`Tables`], the entries of the XDP maps.
//!
//! 1. Label every prefix of the protected roles' CIDRs (destination) and of the roles used as
//!    `from` (source) with the set of roles containing it (`classes`).
//! 2. For every (source set, destination set) with at least one flow, the policy is the list of
//!    those flows; policies are deduplicated by that list.
//! 3. Sets that behave the same are merged into one class: source sets with the same
//!    (destination set -> policy) map, then destination sets with the same (source class ->
//!    policy) map. This keeps PAIRS small when many roles share the same flows.
//! 4. PORTS and SPORTS per policy (`ports`).
//!
//! The outbound tables (`Tables::outbound`, the `OUT_*` maps: packets a protected server sends)
//! are the same compiler run on [`Policy::outbound_policy`]: the outbound flows, with their `to`
//! roles (the peers) in the destination part.

pub mod classes;
pub mod cover;
pub mod ports;
pub mod size;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dataplane_common::{PairKey, CLASS_NONE, VALUE_INDEX_MASK};

use crate::policy::{Cidr, Policy};
use crate::tables::{LpmEntry, Tables};
use classes::{label, Labeled, Sets};
pub use size::{map_sizes, MapSize};

/// Sizes past which a policy is refused: the maps would not load or would waste memory. A
/// synthetic site of 1,000,000 flows (1.15M counter slots, 23M class pairs, 20M port entries)
/// fits, and takes about 5 GiB of kernel memory (docs/BENCHMARKS.md); `dataplane compile` shows a
/// site's map sizes before anything is loaded.
pub mod limits {
    pub const MAX_FLOWS: usize = 1 << 21;
    /// Per address trie.
    pub const MAX_ADDR_ENTRIES: usize = 1 << 20;
    pub const MAX_PAIRS: usize = 1 << 25;
    pub const MAX_PORTS: usize = 1 << 25;
    pub const MAX_SPORTS: usize = 1 << 25;
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
    /// The outbound tables (`OUT_*` maps); None when no flow starts at a protected role.
    pub outbound: Option<OutboundSummary>,
    /// Entries of the connection-tracking table per IP version (`conntrack-size`).
    pub conntrack_size: u32,
    /// Every map, the `OUT_*` ones included (0 entries when there are no outbound flows).
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

/// Class and policy counts of one compiled direction.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Counts {
    pub src_classes: usize,
    pub dst_classes: usize,
    pub policies: usize,
    pub sport_tables: usize,
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Compiles a policy into map tables.
pub fn compile(p: &Policy) -> anyhow::Result<Tables> {
    compile_with_summary(p).map(|(t, _)| t)
}

pub fn compile_with_summary(p: &Policy) -> anyhow::Result<(Tables, Summary)> {
    let start = Instant::now();
    let (mut t, counts) = compile_direction(p, "")?;
    t.conntrack_size = p.conntrack.size;
    let mut outbound = None;
    if !p.out_flows.is_empty() {
        let out = p.outbound_policy();
        let (mut o, c) = compile_direction(&out, "OUT_")?;
        o.config = t.config;
        o.conntrack_size = t.conntrack_size;
        t.outbound = Some(Box::new(o));
        outbound = Some(OutboundSummary {
            peer_roles: out.protected().count(),
            catalog_flows: out.catalog_flows,
            slots: out.flows.len(),
            counts: c,
        });
    }
    let summary = Summary {
        roles: p.roles.len(),
        protected_roles: p.protected().count(),
        catalog_flows: p.catalog_flows,
        slots: p.flows.len(),
        counts,
        outbound,
        conntrack_size: t.conntrack_size,
        maps: map_sizes(&t),
        elapsed: start.elapsed(),
    };
    Ok((t, summary))
}

/// The tables of one direction: `p.flows` against `p`'s protected roles. `prefix` names the maps
/// in errors ("" inbound, "OUT_" outbound).
fn compile_direction(p: &Policy, prefix: &'static str) -> anyhow::Result<(Tables, Counts)> {
    let kind = if prefix.is_empty() { "" } else { "outbound " };
    if p.flows.len() > limits::MAX_FLOWS.min(VALUE_INDEX_MASK as usize) {
        anyhow::bail!(
            "{} {kind}flow slots exceed the limit of {}",
            p.flows.len(),
            limits::MAX_FLOWS
        );
    }
    let mut from_role = vec![false; p.roles.len()];
    p.flows.iter().for_each(|f| from_role[f.from] = true);
    let role_cidrs = |keep: &dyn Fn(usize) -> bool| -> Vec<(Cidr, u32)> {
        let roles = p.roles.iter().enumerate().filter(|(i, _)| keep(*i));
        roles
            .flat_map(|(i, r)| r.cidrs.iter().map(move |c| (*c, i as u32)))
            .collect()
    };
    let (mut dsets, mut ssets) = (Sets::default(), Sets::default());
    let dst = label(role_cidrs(&|i| p.roles[i].protected), &mut dsets);
    let src = label(role_cidrs(&|i| from_role[i]), &mut ssets);

    let mut policies = Sets::default();
    let raw = set_pairs(p, &ssets, &dsets, &mut policies, prefix)?;
    let (src_class, pairs) = merge_src(&raw, ssets.sets.len());
    let (dst_class, pairs) = merge_dst(&pairs, dsets.sets.len());

    let mut t = Tables {
        flows: p.flows.iter().map(|f| f.info.clone()).collect(),
        config: p.config(),
        ..Default::default()
    };
    (t.src_v4, t.src_v6) = lpm_entries(&src, &src_class, Some(CLASS_NONE));
    (t.dst_v4, t.dst_v6) = lpm_entries(&dst, &dst_class, None);
    for (name, v) in [
        ("SRC_V4", t.src_v4.len()),
        ("SRC_V6", t.src_v6.len()),
        ("DST_V4", t.dst_v4.len()),
        ("DST_V6", t.dst_v6.len()),
    ] {
        if v > limits::MAX_ADDR_ENTRIES {
            anyhow::bail!(
                "the address map {prefix}{name} would hold {v} entries, above the limit of {}",
                limits::MAX_ADDR_ENTRIES
            );
        }
    }
    t.pairs = pairs
        .iter()
        .map(|&(s, d, pid)| {
            (
                PairKey {
                    src_class: s,
                    dst_class: d,
                },
                pid,
            )
        })
        .collect();

    let mut pt = ports::PortTables::default();
    pt.prefix = prefix;
    for (pid, slots) in policies.sets.iter().enumerate().skip(1) {
        pt.add_policy(pid as u32, slots, &p.flows)?;
        if pt.sports.len() > limits::MAX_SPORTS {
            anyhow::bail!(
                "the {prefix}SPORTS map would exceed {} entries",
                limits::MAX_SPORTS
            );
        }
    }
    let sport_tables = pt.sport_tables();
    (t.ports, t.sports) = (pt.ports, pt.sports);

    let counts = Counts {
        src_classes: distinct_nonzero(&src_class),
        dst_classes: distinct_nonzero(&dst_class),
        policies: policies.sets.len() - 1,
        sport_tables,
    };
    Ok((t, counts))
}

fn distinct_nonzero(v: &[u32]) -> usize {
    v.iter().filter(|&&c| c != 0).max().copied().unwrap_or(0) as usize
}

/// (source set, destination set, policy id) for every pair of sets with at least one flow.
fn set_pairs(
    p: &Policy,
    ssets: &Sets,
    dsets: &Sets,
    policies: &mut Sets,
    prefix: &str,
) -> anyhow::Result<Vec<(u32, u32, u32)>> {
    let mut flows_to: HashMap<usize, Vec<u32>> = HashMap::new();
    for (slot, f) in p.flows.iter().enumerate() {
        flows_to.entry(f.to).or_default().push(slot as u32);
    }
    // Role -> source sets containing it.
    let mut sets_with: Vec<Vec<u32>> = vec![Vec::new(); p.roles.len()];
    for (s, roles) in ssets.sets.iter().enumerate() {
        roles
            .iter()
            .for_each(|&r| sets_with[r as usize].push(s as u32));
    }
    let mut out = Vec::new();
    for (d, droles) in dsets.sets.iter().enumerate().skip(1) {
        // From-role -> slots of its flows to this destination set.
        let mut by_from: HashMap<u32, Vec<u32>> = HashMap::new();
        for t in droles {
            for &slot in flows_to.get(&(*t as usize)).into_iter().flatten() {
                by_from
                    .entry(p.flows[slot as usize].from as u32)
                    .or_default()
                    .push(slot);
            }
        }
        let mut cands: Vec<u32> = by_from
            .keys()
            .flat_map(|&r| sets_with[r as usize].iter().copied())
            .collect();
        cands.sort_unstable();
        cands.dedup();
        for s in cands {
            let mut list: Vec<u32> = Vec::new();
            for r in &ssets.sets[s as usize] {
                list.extend(by_from.get(r).into_iter().flatten());
            }
            list.sort_unstable();
            out.push((s, d as u32, policies.intern(list)));
        }
        if out.len() > limits::MAX_PAIRS {
            anyhow::bail!(
                "the {prefix}PAIRS map would exceed {} entries: too many distinct source and destination role combinations",
                limits::MAX_PAIRS
            );
        }
    }
    Ok(out)
}

/// Merges source sets with the same (destination set -> policy) map into one class (1..);
/// sets with no flow get `CLASS_NONE`. Returns class of each set and the pairs by class.
fn merge_src(pairs: &[(u32, u32, u32)], nsets: usize) -> (Vec<u32>, Vec<(u32, u32, u32)>) {
    let mut by_set: Vec<Vec<(u32, u32)>> = vec![Vec::new(); nsets];
    pairs
        .iter()
        .for_each(|&(s, d, pid)| by_set[s as usize].push((d, pid)));
    let mut ids: HashMap<Vec<(u32, u32)>, u32> = HashMap::new();
    let mut class = vec![CLASS_NONE; nsets];
    for (s, mut v) in by_set.into_iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        let next = ids.len() as u32 + 1;
        class[s] = *ids.entry(v).or_insert(next);
    }
    let mut out: Vec<(u32, u32, u32)> = pairs
        .iter()
        .map(|&(s, d, pid)| (class[s as usize], d, pid))
        .collect();
    out.sort_unstable();
    out.dedup();
    (class, out)
}

/// Merges destination sets with the same (source class -> policy) map; every set gets a class
/// (1..), sets without flows share one. Returns class of each set and the final pairs.
fn merge_dst(pairs: &[(u32, u32, u32)], nsets: usize) -> (Vec<u32>, Vec<(u32, u32, u32)>) {
    let mut by_set: Vec<Vec<(u32, u32)>> = vec![Vec::new(); nsets];
    pairs
        .iter()
        .for_each(|&(s, d, pid)| by_set[d as usize].push((s, pid)));
    let mut ids: HashMap<Vec<(u32, u32)>, u32> = HashMap::new();
    let mut class = vec![0; nsets];
    for (d, mut v) in by_set.into_iter().enumerate().skip(1) {
        v.sort_unstable();
        let next = ids.len() as u32 + 1;
        class[d] = *ids.entry(v).or_insert(next);
    }
    let mut out: Vec<(u32, u32, u32)> = pairs
        .iter()
        .map(|&(s, d, pid)| (s, class[d as usize], pid))
        .collect();
    out.sort_unstable();
    out.dedup();
    (class, out)
}

type V4 = Vec<LpmEntry<[u8; 4]>>;
type V6 = Vec<LpmEntry<[u8; 16]>>;

/// Address trie entries, split by family.
fn lpm_entries(labeled: &[Labeled], class_of_set: &[u32], none: Option<u32>) -> (V4, V6) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (c, class) in classes::entries(labeled, class_of_set, none) {
        if c.v6 {
            v6.push(LpmEntry {
                prefix_len: c.len as u32,
                key: c.addr.to_be_bytes(),
                value: class,
            });
        } else {
            v4.push(LpmEntry {
                prefix_len: c.len as u32,
                key: (c.addr as u32).to_be_bytes(),
                value: class,
            });
        }
    }
    (v4, v6)
}
