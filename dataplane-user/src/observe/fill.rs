//! How full the kernel's LRU tables are: the connection-tracking tables (`FLOW_V4`, `FLOW_V6`:
//! the connections the protected servers opened, `conntrack-size` entries each) and the fragment
//! table (`FRAGS`: datagrams whose first fragment passed, 8192). A table's capacity is its
//! map's size as the kernel reports it (max_entries, which it rounds to a multiple of the CPUs
//! for per-CPU LRU lists); its entries are counted bucket by bucket ([`crate::kernel::bpf::count_entries`]).
//!
//! `run` calls [`watch`] every second: it logs once when a table passes [`WARN_AT`] of its
//! capacity, and once more when it falls back under [`CLEAR_AT`].

use aya::maps::{Map, MapData};
use serde::Serialize;

use crate::kernel::{
    maps::{self, MAP_FRAGS},
    pins,
};

use super::ObserveError;

type Result<T, E = ObserveError> = std::result::Result<T, E>;

/// Fill ratio past which `run` logs that a table is nearly full.
pub const WARN_AT: f64 = 0.9;
/// Fill ratio under which a table that was reported nearly full is reported as such again.
pub const CLEAR_AT: f64 = 0.8;

/// Entries in one table, and how many it can hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TableFill {
    pub entries: u64,
    pub capacity: u64,
    /// `entries / capacity`, 0 to 1.
    pub fill: f64,
}

impl TableFill {
    pub fn new(entries: u64, capacity: u64) -> Self {
        Self { entries, capacity, fill: if capacity == 0 { 0.0 } else { entries as f64 / capacity as f64 } }
    }

    /// Of a loaded or pinned hash map.
    pub fn read(map: &MapData) -> Result<Self> {
        let info = map.info().map_err(ObserveError::MapSize)?;
        Ok(Self::new(count_entries(map)?, u64::from(info.max_entries())))
    }

    /// Of a map the running program pinned (see `state`).
    pub fn read_pinned(name: &str) -> Result<Self> {
        let path = pins::pin_path(name);
        let map = MapData::from_pin(&path).map_err(|source| ObserveError::OpenPinned { path, source })?;
        Self::read(&map).map_err(|e| ObserveError::CountEntries { name: name.to_owned(), source: Box::new(e) })
    }

    /// Of a map of a loaded program (`run`'s own object, a test's).
    pub fn read_loaded(ebpf: &aya::Ebpf, name: &str) -> Result<Self> {
        let map = ebpf.map(name).ok_or_else(|| ObserveError::MissingMap(name.to_owned()))?;
        Self::read(hash_map_data(map).ok_or_else(|| ObserveError::NotHashMap(name.to_owned()))?)
    }
}

fn hash_map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::LruHashMap(d) | Map::HashMap(d) => Some(d),
        _ => None,
    }
}

/// Entries in a hash map (not per-CPU) now.
pub fn count_entries(map: &MapData) -> Result<u64> {
    let info = map.info().map_err(ObserveError::KeyValueSizes)?;
    crate::kernel::bpf::count_entries(map.fd(), info.key_size() as usize, info.value_size() as usize)
        .map_err(ObserveError::LookupBatch)
}

/// The tables `run` watches, as the log names them, with their map names.
pub const WATCHED: [(&str, &str); 3] = [
    ("connection-tracking table (IPv4)", maps::MAP_FLOW_V4),
    ("connection-tracking table (IPv6)", maps::MAP_FLOW_V6),
    ("fragment table", MAP_FRAGS),
];

/// Which watched tables were reported nearly full (and not back under [`CLEAR_AT`] since).
#[derive(Default)]
pub struct FillWatch {
    full: [bool; WATCHED.len()],
}

impl FillWatch {
    /// The log lines for the fills read now (in `WATCHED` order; None: not read): a warning for
    /// each table that passed [`WARN_AT`] since the last one, a note for each that fell back.
    pub fn check(&mut self, fills: &[Option<TableFill>]) -> Vec<(log::Level, String)> {
        let mut out = vec![];
        for (i, (fill, (name, _))) in fills.iter().zip(WATCHED).enumerate() {
            let Some(f) = fill else { continue };
            if !self.full[i] && f.fill >= WARN_AT {
                self.full[i] = true;
                let what = if i == 2 {
                    "when it is full the oldest datagrams are forgotten and their later fragments dropped (fragment)"
                } else {
                    "when it is full the servers' least recently used connections are evicted and their replies judged by the inbound policy (raise conntrack-size)"
                };
                out.push((
                    log::Level::Warn,
                    format!("{name} is {:.0}% full: {} of {} entries; {what}", f.fill * 100.0, f.entries, f.capacity),
                ));
            } else if self.full[i] && f.fill < CLEAR_AT {
                self.full[i] = false;
                out.push((
                    log::Level::Info,
                    format!("{name} is back under {:.0}%: {} of {} entries", CLEAR_AT * 100.0, f.entries, f.capacity),
                ));
            }
        }
        out
    }
}

/// `run`'s periodic check of the tables of its loaded program: logs once when one passes
/// [`WARN_AT`], again when it is back under [`CLEAR_AT`] (see [`FillWatch`]). A table that
/// cannot be read is skipped (logged at debug level).
pub fn watch(ebpf: &aya::Ebpf) {
    static STATE: std::sync::Mutex<Option<FillWatch>> = std::sync::Mutex::new(None);
    let fills: Vec<Option<TableFill>> = WATCHED
        .iter()
        .map(|(_, map)| TableFill::read_loaded(ebpf, map).map_err(|e| log::debug!("table fill: {e:#}")).ok())
        .collect();
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    for (level, line) in state.get_or_insert_with(FillWatch::default).check(&fills) {
        log::log!(level, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_a_ratio_and_an_empty_capacity_is_empty() {
        assert_eq!(TableFill::new(512, 1024).fill, 0.5);
        assert_eq!(TableFill::new(0, 0).fill, 0.0);
    }

    #[test]
    fn warns_once_per_table_until_it_falls_back_under_80_percent() {
        let mut w = FillWatch::default();
        let at = |v4: u64, frags: u64| [Some(TableFill::new(v4, 1000)), None, Some(TableFill::new(frags, 8192))];
        assert!(w.check(&at(899, 0)).is_empty());
        let lines = w.check(&at(900, 0));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, log::Level::Warn);
        assert!(lines[0].1.starts_with("connection-tracking table (IPv4) is 90% full: 900 of 1000 entries;"), "{}", lines[0].1);
        // Still full, or between 80% and 90%: nothing more.
        assert!(w.check(&at(1000, 0)).is_empty());
        assert!(w.check(&at(850, 0)).is_empty());
        assert!(w.check(&at(950, 0)).is_empty());
        let lines = w.check(&at(799, 8000));
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            (log::Level::Info, "connection-tracking table (IPv4) is back under 80%: 799 of 1000 entries".into())
        );
        assert_eq!(lines[1].0, log::Level::Warn);
        assert!(lines[1].1.starts_with("fragment table is 98% full: 8000 of 8192 entries;"), "{}", lines[1].1);
        // A table that cannot be read keeps its state.
        assert!(w.check(&[None, None, None]).is_empty());
        assert_eq!(w.check(&at(950, 8000)).len(), 1, "the IPv4 table again, not the fragment table");
    }
}
