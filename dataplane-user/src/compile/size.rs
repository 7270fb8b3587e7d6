//! Map entry counts and estimated kernel memory.
//!
//! LPM trie (`kernel/bpf/lpm_trie.c`): every entry is a node of 40 bytes (rcu head, two child
//! pointers, prefix length, flags) + key data + value, allocated with kmalloc (rounded up to the
//! slab size: 8, 16, 32, 64, 96, 128, 192, 256, then powers of two). The trie adds at most one
//! intermediate node (40 + key data, no value) per entry; we count that worst case.
//!
//! Hash (`kernel/bpf/hashtab.c`, preallocated): every element is a 48-byte `htab_elem` header +
//! key and value each rounded up to 8, plus a 16-byte bucket per slot of the bucket array
//! (entries rounded up to a power of two).
//!
//! Per-CPU array (flow counters): value rounded up to 8, per entry and per CPU.

use std::mem::size_of;

use dataplane_common::{Counter, PairKey, PortKey, SportKey};

use crate::tables::Tables;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapSize {
    pub name: &'static str,
    pub kind: &'static str,
    pub entries: usize,
    /// Key as the kernel stores it (LPM keys include the 4-byte prefix length).
    pub key_bytes: usize,
    pub value_bytes: usize,
    /// Estimated kernel memory (per CPU for per-CPU maps).
    pub bytes: usize,
}

const LPM_NODE: usize = 40;
const HTAB_ELEM: usize = 48;
const HTAB_BUCKET: usize = 16;

fn kmalloc(n: usize) -> usize {
    const CLASSES: [usize; 8] = [8, 16, 32, 64, 96, 128, 192, 256];
    CLASSES
        .iter()
        .copied()
        .find(|&c| c >= n)
        .unwrap_or_else(|| n.next_power_of_two())
}

fn round8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

fn lpm(name: &'static str, entries: usize, data: usize, value: usize) -> MapSize {
    let leaf = kmalloc(LPM_NODE + data + value);
    let inner = kmalloc(LPM_NODE + data);
    MapSize {
        name,
        kind: "lpm_trie",
        entries,
        key_bytes: 4 + data,
        value_bytes: value,
        bytes: entries * leaf + entries.saturating_sub(1) * inner,
    }
}

fn hash(name: &'static str, entries: usize, key: usize, value: usize) -> MapSize {
    let elem = HTAB_ELEM + round8(key) + round8(value);
    let buckets = if entries == 0 {
        0
    } else {
        entries.next_power_of_two()
    };
    MapSize {
        name,
        kind: "hash",
        entries,
        key_bytes: key,
        value_bytes: value,
        bytes: entries * elem + buckets * HTAB_BUCKET,
    }
}

/// The names of the seven policy maps of one direction.
type ChainNames = [&'static str; 7];

const INBOUND: ChainNames = crate::load::INBOUND_MAPS;
const OUTBOUND: ChainNames = crate::load::OUT_MAPS;

fn chain_sizes(n: ChainNames, t: Option<&Tables>) -> [MapSize; 7] {
    let v = size_of::<u32>();
    let len = |f: fn(&Tables) -> usize| t.map_or(0, f);
    [
        lpm(n[0], len(|t| t.src_v4.len()), 4, v),
        lpm(n[1], len(|t| t.src_v6.len()), 16, v),
        lpm(n[2], len(|t| t.dst_v4.len()), 4, v),
        lpm(n[3], len(|t| t.dst_v6.len()), 16, v),
        hash(n[4], len(|t| t.pairs.len()), size_of::<PairKey>(), v),
        lpm(n[5], len(|t| t.ports.len()), size_of::<PortKey>(), v),
        lpm(n[6], len(|t| t.sports.len()), size_of::<SportKey>(), v),
    ]
}

/// Entry counts and estimated bytes of every policy map of `t`: the inbound maps, the flow
/// counters, then the outbound `OUT_*` maps (0 entries when `t.outbound` is None).
pub fn map_sizes(t: &Tables) -> Vec<MapSize> {
    let mut v: Vec<MapSize> = chain_sizes(INBOUND, Some(t)).into();
    v.extend([MapSize {
        name: "FLOW_COUNTERS",
        kind: "percpu_array",
        entries: t.flows.len(),
        key_bytes: 4,
        value_bytes: size_of::<Counter>(),
        bytes: t.flows.len() * round8(size_of::<Counter>()),
    }]);
    v.extend(chain_sizes(OUTBOUND, t.outbound.as_deref()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas() {
        assert_eq!(kmalloc(48), 64);
        assert_eq!(kmalloc(52), 64);
        assert_eq!(kmalloc(300), 512);
        assert_eq!(lpm("x", 2, 8, 4).bytes, 2 * 64 + 64);
        assert_eq!(hash("x", 3, 8, 4).bytes, 3 * 64 + 4 * 16);
    }
}
