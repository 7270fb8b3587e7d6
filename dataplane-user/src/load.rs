//! Loading: the embedded XDP object, its maps sized and filled from compiled `Tables`, and the
//! counters read back.

use anyhow::{bail, Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader, Pod,
};
use dataplane_common::{Counter, PairKey, Reason, REASON_COUNT};

use crate::tables::{LpmEntry, Tables};

/// The XDP object built by `cargo xtask build` (empty when the controller was built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane.bpf.o"));

/// The program's name in the object.
pub const PROGRAM: &str = "dataplane";

/// Map names in the object (see dataplane-ebpf).
pub const MAP_SRC_V4: &str = "SRC_V4";
pub const MAP_SRC_V6: &str = "SRC_V6";
pub const MAP_DST_V4: &str = "DST_V4";
pub const MAP_DST_V6: &str = "DST_V6";
pub const MAP_PAIRS: &str = "PAIRS";
pub const MAP_PORTS: &str = "PORTS";
pub const MAP_SPORTS: &str = "SPORTS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_REASONS: &str = "REASONS";

/// Loads the program into the kernel with its maps sized for and filled with `tables`.
/// Nothing is attached: the caller decides where (an interface, or BPF_PROG_TEST_RUN).
pub fn load(tables: &Tables) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this dataplane binary was built without the XDP object: build it with `cargo xtask build`");
    }
    let sizes = [
        (MAP_SRC_V4, tables.src_v4.len()),
        (MAP_SRC_V6, tables.src_v6.len()),
        (MAP_DST_V4, tables.dst_v4.len()),
        (MAP_DST_V6, tables.dst_v6.len()),
        (MAP_PAIRS, tables.pairs.len()),
        (MAP_PORTS, tables.ports.len()),
        (MAP_SPORTS, tables.sports.len()),
        (MAP_FLOWS, tables.flows.len()),
    ];
    let mut loader = EbpfLoader::new();
    // The program's log statements at levels the controller does not log are pruned by the
    // verifier, so they cost nothing per packet.
    let level = log_level();
    loader.override_global(aya_log::LEVEL, &level, true);
    for (name, len) in sizes {
        // A map cannot have zero entries; an empty table is a map nobody finds anything in.
        loader.map_max_entries(name, u32::try_from(len.max(1)).context("table too large")?);
    }
    let mut ebpf = loader.load(OBJECT).context("loading the XDP object")?;
    fill(&mut ebpf, tables)?;
    let prog: &mut Xdp = program(&mut ebpf)?;
    prog.load().context("the kernel verifier rejected the XDP program")?;
    Ok(ebpf)
}

/// The program that passes everything, for benchmarks.
pub const BASELINE: &str = "baseline";

/// The controller's log level as aya-log numbers it (0: off, 1: error ... 5: trace).
fn log_level() -> u8 {
    match log::max_level() {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => 1,
        log::LevelFilter::Warn => 2,
        log::LevelFilter::Info => 3,
        log::LevelFilter::Debug => 4,
        log::LevelFilter::Trace => 5,
    }
}

pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    program_named(ebpf, PROGRAM)
}

pub fn program_named<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf.program_mut(name).with_context(|| format!("XDP program {name} missing from the object"))?.try_into()?)
}

fn fill(ebpf: &mut Ebpf, t: &Tables) -> Result<()> {
    fill_lpm(ebpf, MAP_SRC_V4, &t.src_v4)?;
    fill_lpm(ebpf, MAP_SRC_V6, &t.src_v6)?;
    fill_lpm(ebpf, MAP_DST_V4, &t.dst_v4)?;
    fill_lpm(ebpf, MAP_DST_V6, &t.dst_v6)?;
    fill_lpm(ebpf, MAP_PORTS, &t.ports)?;
    fill_lpm(ebpf, MAP_SPORTS, &t.sports)?;
    let mut pairs: HashMap<_, PairKey, u32> = HashMap::try_from(map_mut(ebpf, MAP_PAIRS)?)?;
    for (k, v) in &t.pairs {
        pairs.insert(k, v, 0).with_context(|| format!("writing {MAP_PAIRS}"))?;
    }
    write_config(ebpf, t.config)
}

/// Replaces the site-wide switches of a loaded program.
pub fn write_config(ebpf: &mut Ebpf, c: dataplane_common::Config) -> Result<()> {
    let mut config: Array<_, dataplane_common::Config> = Array::try_from(map_mut(ebpf, MAP_CONFIG)?)?;
    config.set(0, c, 0).with_context(|| format!("writing {MAP_CONFIG}"))
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).with_context(|| format!("map {name} missing from the XDP object"))
}

fn fill_lpm<K: Pod>(ebpf: &mut Ebpf, name: &str, entries: &[LpmEntry<K>]) -> Result<()> {
    let mut trie: LpmTrie<_, K, u32> = LpmTrie::try_from(map_mut(ebpf, name)?)?;
    for e in entries {
        trie.insert(&Key::new(e.prefix_len, e.key), e.value, 0)
            .with_context(|| format!("writing {name} ({} entries)", entries.len()))?;
    }
    Ok(())
}

/// Sums a per-CPU counter array over CPUs, slot by slot.
pub fn read_counters(map: &PerCpuArray<impl std::borrow::Borrow<MapData>, Counter>) -> Result<Vec<Counter>> {
    let mut out = Vec::with_capacity(map.len() as usize);
    for values in map.iter() {
        let values = values.context("reading a per-CPU counter")?;
        out.push(values.iter().fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }));
    }
    Ok(out)
}

/// Per-reason and per-flow counters of a loaded program.
pub struct Counters {
    pub reasons: Vec<Counter>,
    pub flows: Vec<Counter>,
}

impl Counters {
    pub fn read(ebpf: &Ebpf) -> Result<Self> {
        let get = |name| -> Result<PerCpuArray<&MapData, Counter>> {
            Ok(PerCpuArray::try_from(ebpf.map(name).with_context(|| format!("map {name} missing"))?)?)
        };
        Ok(Self { reasons: read_counters(&get(MAP_REASONS)?)?, flows: read_counters(&get(MAP_FLOWS)?)? })
    }

    pub fn reason(&self, r: Reason) -> Counter {
        self.reasons.get(r as usize).copied().unwrap_or_default()
    }
}

const _: () = assert!(REASON_COUNT as usize == Reason::ALL.len());
