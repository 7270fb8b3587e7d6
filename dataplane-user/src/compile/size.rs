//! What a compiled policy takes in the kernel, before anything is loaded: the words of the
//! policy image by kind of structure (an array map of 8-byte words: exactly its size), and the
//! per-CPU flow counters.

use std::mem::size_of;

use dataplane_common::Counter;

use crate::compile::tables::Tables;

/// The kind of BPF map a size is of, as `compile --json` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    /// One value per index (the policy image's words).
    Array,
    /// One value per index and per CPU (the counters).
    PercpuArray,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapSize {
    pub name: &'static str,
    pub kind: MapKind,
    pub entries: usize,
    pub key_bytes: usize,
    pub value_bytes: usize,
    /// Kernel memory (per CPU for per-CPU maps).
    pub bytes: usize,
}

/// Bytes of a policy image word.
pub const WORD: usize = 8;

fn words(name: &'static str, entries: usize) -> MapSize {
    MapSize { name, kind: MapKind::Array, entries, key_bytes: 4, value_bytes: WORD, bytes: entries * WORD }
}

fn counters(name: &'static str, entries: usize) -> MapSize {
    let value = size_of::<Counter>();
    MapSize { name, kind: MapKind::PercpuArray, entries, key_bytes: 4, value_bytes: value, bytes: entries * value }
}

/// The `POLICY` image by structure (both directions; their sum is the map's size), then the
/// flow counter arrays.
pub fn map_sizes(t: &Tables) -> Vec<MapSize> {
    let (_, b) = super::image::build_with_breakdown(&t.config, &t.dir, t.outbound.as_ref().map(|o| &o.dir));
    let out_slots = t.outbound_flows().len();
    vec![
        words("POLICY:header", b.header),
        words("POLICY:dst_tries", b.dst_tries),
        words("POLICY:records", b.records),
        words("POLICY:src_tries", b.src_tries),
        words("POLICY:port_tables", b.port_tables),
        words("POLICY:port_filters", b.port_filters),
        counters("FLOWS", t.flows.len()),
        counters("OUT_FLOWS", out_slots),
        counters("REPLY_FLOWS", out_slots),
    ]
}
