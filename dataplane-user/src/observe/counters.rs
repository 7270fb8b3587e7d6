//! The counters a program keeps, summed over CPUs: per flow, per outbound flow and per reason,
//! and the connection-tracking events; read from a loaded program or from its pinned maps.

use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};
use dataplane_common::{Counter, Reason, REASON_COUNT};

use crate::{
    kernel::{maps::*, pins},
    observe::fill::TableFill,
};

use super::ObserveError;

type Result<T, E = ObserveError> = std::result::Result<T, E>;

/// A per-CPU counter array, summed over CPUs.
pub fn read_array(map: &aya::maps::Map) -> Result<Vec<Counter>> {
    read_counters(&PerCpuArray::<&MapData, Counter>::try_from(map)?)
}

/// Connection tracking: entries now, and events since the program was loaded.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ConntrackStats {
    pub entries: u64,
    pub inserts: u64,
    pub removals: u64,
    /// Inbound packets that looked like replies but were not (a bare SYN, an expired entry).
    pub refused: u64,
    /// Entries the full table dropped to make room (inserts - removals - entries).
    pub evictions: u64,
    /// The table of each IP version (`FLOW_V4`, `FLOW_V6`): entries now and its capacity (the
    /// map's size: `conntrack-size`, rounded by the kernel to a multiple of the CPUs).
    pub ipv4: TableFill,
    pub ipv6: TableFill,
    /// The fuller table's fill ratio (0 to 1).
    pub fill: f64,
}

impl ConntrackStats {
    /// From the maps a running program pinned (see `kernel::pins`).
    pub fn read_pinned() -> Result<Self> {
        use aya::maps::Map;
        use dataplane_common::{CT_STAT_INSERTS, CT_STAT_REFUSED, CT_STAT_REMOVALS};
        let (ipv4, ipv6) = (TableFill::read_pinned(MAP_FLOW_V4)?, TableFill::read_pinned(MAP_FLOW_V6)?);
        let path = pins::pin_path(MAP_CT_STATS);
        let pinned = MapData::from_pin(&path).map_err(|source| ObserveError::OpenPinned { path, source })?;
        let events: PerCpuArray<_, u64> = PerCpuArray::try_from(Map::PerCpuArray(pinned))?;
        let sum = |i: u32| -> Result<u64> { Ok(events.get(&i, 0)?.iter().sum()) };
        let (inserts, removals, refused) = (sum(CT_STAT_INSERTS)?, sum(CT_STAT_REMOVALS)?, sum(CT_STAT_REFUSED)?);
        Ok(Self::new(ipv4, ipv6, inserts, removals, refused))
    }

    /// From the tables' fills and the event counts; entries and evictions are derived.
    pub fn new(ipv4: TableFill, ipv6: TableFill, inserts: u64, removals: u64, refused: u64) -> Self {
        let entries = ipv4.entries + ipv6.entries;
        let evictions = inserts.saturating_sub(removals).saturating_sub(entries);
        Self { entries, inserts, removals, refused, evictions, ipv4, ipv6, fill: ipv4.fill.max(ipv6.fill) }
    }
}

/// Sums a per-CPU counter array over CPUs, slot by slot.
pub fn read_counters(map: &PerCpuArray<impl std::borrow::Borrow<MapData>, Counter>) -> Result<Vec<Counter>> {
    let mut out = Vec::with_capacity(map.len() as usize);
    for values in map.iter() {
        let values = values.map_err(ObserveError::ReadCounter)?;
        out.push(
            values
                .iter()
                .fold(Counter::default(), |acc, c| Counter { packets: acc.packets + c.packets, bytes: acc.bytes + c.bytes }),
        );
    }
    Ok(out)
}

/// Per-reason and per-flow counters of a loaded program.
pub struct Counters {
    pub reasons: Vec<Counter>,
    pub flows: Vec<Counter>,
    /// Per outbound flow: packets protected servers sent, and replies admitted.
    pub out_flows: Vec<Counter>,
    pub reply_flows: Vec<Counter>,
}

impl Counters {
    /// From a program loaded by this process.
    pub fn read(ebpf: &Ebpf) -> Result<Self> {
        Self::read_with(|name| ebpf.map(name).ok_or_else(|| ObserveError::MissingCounters(name.to_owned())).map(read_array)?)
    }

    /// From maps found by name (`read_array` on a loaded or a pinned map).
    pub fn read_with(get: impl Fn(&str) -> Result<Vec<Counter>>) -> Result<Self> {
        Ok(Self {
            reasons: get(MAP_REASONS)?,
            flows: get(MAP_FLOWS)?,
            out_flows: get(MAP_OUT_FLOWS)?,
            reply_flows: get(MAP_REPLY_FLOWS)?,
        })
    }

    pub fn reason(&self, r: Reason) -> Counter {
        self.reasons.get(r as usize).copied().unwrap_or_default()
    }
}

const _: () = assert!(REASON_COUNT as usize == Reason::ALL.len());
