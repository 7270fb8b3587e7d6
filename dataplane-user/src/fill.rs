//! How full the kernel's LRU tables are: the connection-tracking tables (`FLOW_V4`, `FLOW_V6`:
//! the connections the protected servers opened, `conntrack-size` entries each) and the fragment
//! table (`FRAGS`: datagrams whose first fragment passed, 8192). A table's capacity is its
//! map's size as the kernel reports it (max_entries, which it rounds to a multiple of the CPUs
//! for per-CPU LRU lists); its entries are counted with BPF_MAP_LOOKUP_BATCH, bucket by bucket,
//! a few system calls per 4096 entries (a key-by-key walk costs one per entry, and starts over
//! when the key it stands on is deleted meanwhile). Reading never touches an entry's LRU state.
//!
//! `run` calls [`watch`] every second: it logs once when a table passes [`WARN_AT`] of its
//! capacity, and once more when it falls back under [`CLEAR_AT`].

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};
use serde::Serialize;

/// Fill ratio past which `run` logs that a table is nearly full.
pub const WARN_AT: f64 = 0.9;
/// Fill ratio under which a table that was reported nearly full is reported as such again.
pub const CLEAR_AT: f64 = 0.8;

/// Map names (see dataplane-ebpf: `flowtable.rs`, `classify.rs`).
pub const MAP_FRAGS: &str = "FRAGS";

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
        let info = map.info().context("reading a map's size")?;
        Ok(Self::new(count_entries(map)?, u64::from(info.max_entries())))
    }

    /// Of a map the running program pinned (see `state`).
    pub fn read_pinned(name: &str) -> Result<Self> {
        let path = crate::state::pin_path(name);
        let map = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        Self::read(&map).with_context(|| format!("counting the entries of {name}"))
    }

    /// Of a map of a loaded program (`run`'s own object, a test's).
    pub fn read_loaded(ebpf: &aya::Ebpf, name: &str) -> Result<Self> {
        let map = ebpf.map(name).with_context(|| format!("map {name} missing from the XDP object"))?;
        Self::read(hash_map_data(map).with_context(|| format!("{name} is not a hash map"))?)
    }
}

fn hash_map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::LruHashMap(d) | Map::HashMap(d) => Some(d),
        _ => None,
    }
}

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr` as BPF_MAP_GET_NEXT_KEY reads it.
#[repr(C)]
#[derive(Default)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's ENOTSUPP (not in libc).
const ENOTSUPP: i32 = 524;
/// Entries asked for per batch (more when one hash bucket holds more).
const BATCH: usize = 4096;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::result::Result<(), i32> {
    // Safety: `attr` is a `repr(C)` prefix of `union bpf_attr` for `cmd`; its pointers point to
    // buffers that outlive the call and are as large as the attributes say.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

/// Entries in a hash map (not per-CPU) now.
pub fn count_entries(map: &MapData) -> Result<u64> {
    let info = map.info().context("reading a map's key and value sizes")?;
    let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut chunk = BATCH;
    let (mut keys, mut values) = (vec![0u8; key_size * chunk], vec![0u8; value_size * chunk]);
    // The batch position (a bucket number for hash maps); none: from the start.
    let (mut at, mut next) = (None::<[u8; 8]>, [0u8; 8]);
    let mut total = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: at.as_ref().map_or(0, |b| b.as_ptr() as u64),
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => {
                total += u64::from(attr.count);
                at = Some(next);
            }
            // The last batch (possibly with entries).
            Err(libc::ENOENT) => return Ok(total + u64::from(attr.count)),
            // One bucket holds more entries than asked for: ask for more.
            Err(libc::ENOSPC) if chunk < 1 << 20 => {
                chunk *= 4;
                keys.resize(key_size * chunk, 0);
                values.resize(value_size * chunk, 0);
            }
            // A kernel without batch operations for this map.
            Err(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if at.is_none() => return count_keys(fd, key_size),
            Err(e) => bail!("BPF_MAP_LOOKUP_BATCH: {}", std::io::Error::from_raw_os_error(e)),
        }
    }
}

/// Entries in a hash map, key by key (kernels without batch operations).
fn count_keys(fd: u32, key_size: usize) -> Result<u64> {
    let (mut key, mut next) = (vec![0u8; key_size], vec![0u8; key_size]);
    let mut total = 0u64;
    let mut first = true;
    loop {
        let mut attr = NextKeyAttr {
            map_fd: fd,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {
                total += 1;
                std::mem::swap(&mut key, &mut next);
                first = false;
            }
            Err(libc::ENOENT) => return Ok(total),
            Err(e) => bail!("BPF_MAP_GET_NEXT_KEY: {}", std::io::Error::from_raw_os_error(e)),
        }
    }
}

/// The tables `run` watches, as the log names them, with their map names.
pub const WATCHED: [(&str, &str); 3] = [
    ("connection-tracking table (IPv4)", crate::load::MAP_FLOW_V4),
    ("connection-tracking table (IPv6)", crate::load::MAP_FLOW_V6),
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
