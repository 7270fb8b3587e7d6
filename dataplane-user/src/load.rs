//! Loading: the embedded XDP object, its maps sized and filled from compiled `Tables`, and the
//! counters read back.

use anyhow::{bail, Context, Result};
use std::os::fd::{AsFd, AsRawFd};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use dataplane_common::{image::PAGE_WORDS, Counter, Reason, RunConfig, CONFIG_MONITOR, REASON_COUNT};

use crate::tables::Tables;

/// The XDP object built by `cargo xtask build` (empty when the controller was built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane.bpf.o"));

/// The program's name in the object.
pub const PROGRAM: &str = "dataplane";

/// Map names in the object (see dataplane-ebpf).
/// The policy images: every classification table of both directions (dataplane_common::image),
/// in force and written by the next reload, in turn.
pub const MAP_POLICY: [&str; 2] = ["POLICY_A", "POLICY_B"];
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_REASONS: &str = "REASONS";
pub const MAP_OUT_FLOWS: &str = "OUT_FLOWS";
pub const MAP_REPLY_FLOWS: &str = "REPLY_FLOWS";
/// The connection-tracking tables (see dataplane_common::FlowEntry).
pub const MAP_FLOW_V4: &str = "FLOW_V4";
pub const MAP_FLOW_V6: &str = "FLOW_V6";
pub const MAP_CT_STATS: &str = "CT_STATS";
/// The tc egress program that records the connections protected servers open.
pub const EGRESS: &str = "egress";
/// Connection-tracking entries when the tables do not say (hand-built tables in tests).
const DEFAULT_CONNTRACK: u32 = 65536;

/// Per (protocol, port) of the protected servers: when a tracked connection last used it.
pub const MAP_LIVE_PORTS: &str = "LIVE_PORTS";

/// Loads the program into the kernel with its maps sized for and filled with `tables`.
/// Nothing is attached: the caller decides where (an interface, or BPF_PROG_TEST_RUN).
pub fn load(tables: &Tables) -> Result<Ebpf> {
    load_with(tables, &Shared::default())
}

/// Maps that outlive a policy: counters, the flow table and the fragment table. A running
/// dataplane pins them, and every reload reuses them, so counters keep counting and tracked
/// connections stay tracked.
pub const SHARED_MAPS: [&str; 10] = [
    MAP_FLOWS,
    MAP_OUT_FLOWS,
    MAP_REPLY_FLOWS,
    MAP_REASONS,
    MAP_FLOW_V4,
    MAP_FLOW_V6,
    "FRAGS",
    MAP_CT_STATS,
    MAP_DROP_EVENTS,
    MAP_LIVE_PORTS,
];
/// The ring buffer of drop events (`dataplane events`).
pub const MAP_DROP_EVENTS: &str = "DROP_EVENTS";

/// How the shared maps are made: fresh (tests, benchmarks), or pinned under a directory and
/// reused when already there, with room for `flow_slots` / `out_slots` counter slots.
#[derive(Default)]
pub struct Shared {
    pub pin_dir: Option<std::path::PathBuf>,
    pub flow_slots: u32,
    pub out_slots: u32,
}

pub fn load_with(tables: &Tables, shared: &Shared) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this dataplane binary was built without the XDP object: build it with `cargo xtask build`");
    }
    let image = tables.image();
    let out_flows = tables.outbound.as_deref().map_or(0, |o| o.flows.len());
    let ct = if tables.conntrack_size == 0 { DEFAULT_CONNTRACK } else { tables.conntrack_size };
    let flow_slots = tables.flows.len().max(shared.flow_slots as usize);
    let out_slots = out_flows.max(shared.out_slots as usize);
    let pages = image_capacity(image.len());
    let sizes = [
        (MAP_FLOWS, flow_slots),
        (MAP_OUT_FLOWS, out_slots),
        (MAP_REPLY_FLOWS, out_slots),
        (MAP_POLICY[0], pages),
        (MAP_POLICY[1], pages),
        (MAP_FLOW_V4, ct as usize),
        (MAP_FLOW_V6, ct as usize),
    ];
    let mut loader = EbpfLoader::new();
    // The program's log statements at levels the controller does not log are pruned by the
    // verifier, so they cost nothing per packet.
    let level = log_level();
    loader.override_global(aya_log::LEVEL, &level, true);
    let image_pages = pages as u32;
    loader.override_global("IMAGE_PAGES", &image_pages, true);
    for (name, len) in sizes {
        // A map cannot have zero entries; an empty table is a map nobody finds anything in.
        loader.map_max_entries(name, u32::try_from(len.max(1)).context("table too large")?);
    }
    let pins: Vec<(&str, std::path::PathBuf)> = match &shared.pin_dir {
        Some(dir) => SHARED_MAPS.iter().map(|n| (*n, dir.join(n))).collect(),
        None => vec![],
    };
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).context("loading the XDP object")?;
    write_image(&mut ebpf, MAP_POLICY[0], &image)?;
    write_config(&mut ebpf, tables.config)?;
    program(&mut ebpf)?.load().context("the kernel verifier rejected the XDP program")?;
    egress(&mut ebpf)?.load().context("the kernel verifier rejected the tc egress program")?;
    Ok(ebpf)
}

/// Pages of the `POLICY_*` maps an image of `words` words takes.
pub fn pages(words: usize) -> usize {
    words.div_ceil(PAGE_WORDS).max(1)
}

/// Pages each `POLICY_*` map gets for an image of `words`: room for a policy that grows by a
/// quarter before a reload needs new maps (and the verifier again). One page stays one page: it
/// holds sites a hundred times the catalog's size, and the verifier then never explores a
/// lookup of another page.
pub fn image_capacity(words: usize) -> usize {
    match pages(words) {
        1 => 1,
        n => n + n.div_ceil(4),
    }
}

/// Copies a policy image into a `POLICY_*` map through a shared mapping of it (the maps are
/// mmapable): one copy, however many words, where updates would take a system call per word.
pub fn write_image(ebpf: &mut Ebpf, map: &str, image: &[u64]) -> Result<()> {
    let room = policy_pages(ebpf, map)? * PAGE_WORDS;
    if image.len() > room {
        bail!("a policy image of {} words does not fit the {map} map of {room}", image.len());
    }
    let bytes = std::mem::size_of_val(image);
    let mapping = Mapping::new(map_mut(ebpf, map)?, bytes)?;
    // Safety: within the mapping, which is as long as the image.
    unsafe { std::ptr::copy_nonoverlapping(image.as_ptr() as *const u8, mapping.at as *mut u8, bytes) };
    Ok(())
}

/// Pages a loaded `POLICY_*` map holds.
fn policy_pages(ebpf: &mut Ebpf, map: &str) -> Result<usize> {
    let aya::maps::Map::Array(data) = map_mut(ebpf, map)? else { bail!("{map} is not an array map") };
    data.info().map(|i| i.max_entries() as usize).with_context(|| format!("reading {map}'s size"))
}

/// A shared mapping of the first `len` bytes of an mmapable array map, unmapped on drop.
struct Mapping {
    at: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(map: &aya::maps::Map, len: usize) -> Result<Self> {
        let aya::maps::Map::Array(data) = map else { bail!("not an array map") };
        let len = len.max(1);
        let fd = data.fd().as_fd().as_raw_fd();
        // Safety: a fresh shared mapping of the map's own memory.
        let at = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping an array map ({len} bytes)"));
        }
        Ok(Mapping { at, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Safety: the mapping made in `new`.
        unsafe { libc::munmap(self.at, self.len) };
    }
}

/// A new policy written into the `POLICY_*` map not in force, ready to be put in force.
#[must_use = "the written image is not in force until `commit`"]
pub struct Swap {
    active: u32,
    generation: u32,
}

/// Writes a new policy's image into the `POLICY_*` map not in force, without loading or verifying
/// a program. None, changing nothing, when the image does not fit the maps (the caller then loads
/// a program with larger ones). The caller spaces swaps by more than a packet's time, so that no
/// packet still walks the image being overwritten.
pub fn write_inactive(ebpf: &mut Ebpf, tables: &Tables) -> Result<Option<Swap>> {
    let image = tables.image();
    let run = read_run_config(ebpf)?;
    let next = (run.active == 0) as u32;
    if image.len() > policy_pages(ebpf, MAP_POLICY[next as usize])? * PAGE_WORDS {
        return Ok(None);
    }
    write_image(ebpf, MAP_POLICY[next as usize], &image)?;
    Ok(Some(Swap { active: next, generation: tables.config.generation }))
}

impl Swap {
    /// Puts the written image in force with one 32-bit store of `RunConfig::active`: every packet
    /// (XDP and tc alike) reads it once, so it is judged wholly by the old image or the new one.
    pub fn commit(self, ebpf: &mut Ebpf) -> Result<()> {
        let mapping = Mapping::new(map_mut(ebpf, MAP_CONFIG)?, std::mem::size_of::<RunConfig>())?;
        // Safety: `active` is the first field of the RunConfig in the mapping, 4-byte aligned.
        let active = unsafe { &*(mapping.at as *const std::sync::atomic::AtomicU32) };
        active.store(self.active, std::sync::atomic::Ordering::SeqCst);
        drop(mapping);
        write_generation(ebpf, self.generation)
    }
}

/// `write_inactive` then `commit`: true when the new policy is in force.
pub fn swap_image(ebpf: &mut Ebpf, tables: &Tables) -> Result<bool> {
    match write_inactive(ebpf, tables)? {
        Some(swap) => swap.commit(ebpf).map(|()| true),
        None => Ok(false),
    }
}

fn read_run_config(ebpf: &mut Ebpf) -> Result<RunConfig> {
    let config: Array<_, RunConfig> = Array::try_from(map_mut(ebpf, MAP_CONFIG)?)?;
    config.get(&0, 0).with_context(|| format!("reading {MAP_CONFIG}"))
}

/// The generation the run reports (not read per packet: a torn read of it harms nothing).
fn write_generation(ebpf: &mut Ebpf, generation: u32) -> Result<()> {
    let run = RunConfig { generation, ..read_run_config(ebpf)? };
    let mut config: Array<_, RunConfig> = Array::try_from(map_mut(ebpf, MAP_CONFIG)?)?;
    config.set(0, run, 0).with_context(|| format!("writing {MAP_CONFIG}"))
}

pub fn egress(ebpf: &mut Ebpf) -> Result<&mut aya::programs::SchedClassifier> {
    Ok(ebpf.program_mut(EGRESS).context("tc program missing from the object")?.try_into()?)
}

/// The program that passes everything, for benchmarks.
pub const BASELINE: &str = "baseline";
/// The floor program for benchmarks: parse, one 5-tuple hash lookup, one per-CPU counter.
pub const FLOOR: &str = "floor";

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

/// Sets what belongs to the run (monitor mode, the generation, the kernel's clock rate) in a
/// freshly loaded program, with `POLICY_A` in force. The site's own settings are in the image.
pub fn write_config(ebpf: &mut Ebpf, c: dataplane_common::Config) -> Result<()> {
    let run = RunConfig {
        active: 0,
        flags: c.flags & (CONFIG_MONITOR | dataplane_common::CONFIG_FORWARD),
        hz: clock_hz(ebpf)?,
        generation: c.generation,
    };
    let mut config: Array<_, RunConfig> = Array::try_from(map_mut(ebpf, MAP_CONFIG)?)?;
    config.set(0, run, 0).with_context(|| format!("writing {MAP_CONFIG}"))
}

/// The kernel's clock ticks per second (its HZ), measured once per process with the `clock`
/// program: the ticks that pass in 40 ms, rounded to the nearest rate a kernel is built with.
fn clock_hz(ebpf: &mut Ebpf) -> Result<u32> {
    static HZ: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(&hz) = HZ.get() {
        return Ok(hz);
    }
    let prog = program_named(ebpf, CLOCK)?;
    prog.load().context("loading the clock program")?;
    let tick = || -> Result<(u32, std::time::Instant)> {
        use aya::programs::{TestRun, TestRunOptions};
        let opts = TestRunOptions { data_in: Some(&[0u8; 64]), ..Default::default() };
        Ok((prog.test_run(opts).context("running the clock program")?.return_value, std::time::Instant::now()))
    };
    let (t0, at0) = tick()?;
    std::thread::sleep(std::time::Duration::from_millis(40));
    let (t1, at1) = tick()?;
    let rate = t1.wrapping_sub(t0) as f64 / (at1 - at0).as_secs_f64();
    let hz = [100u32, 250, 300, 1000].into_iter().min_by_key(|&h| (h as f64 - rate).abs() as u64).unwrap_or(250);
    Ok(*HZ.get_or_init(|| hz))
}

/// The program that reads the kernel's clock (see `clock_hz`).
pub const CLOCK: &str = "clock";

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).with_context(|| format!("map {name} missing from the XDP object"))
}

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
    pub ipv4: crate::fill::TableFill,
    pub ipv6: crate::fill::TableFill,
    /// The fuller table's fill ratio (0 to 1).
    pub fill: f64,
}

impl ConntrackStats {
    /// From the maps a running program pinned (see `state`).
    pub fn read_pinned() -> Result<Self> {
        use crate::fill::TableFill;
        use aya::maps::Map;
        use dataplane_common::{CT_STAT_INSERTS, CT_STAT_REFUSED, CT_STAT_REMOVALS};
        let (ipv4, ipv6) = (TableFill::read_pinned(MAP_FLOW_V4)?, TableFill::read_pinned(MAP_FLOW_V6)?);
        let path = crate::state::pin_path(MAP_CT_STATS);
        let pinned = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let events: PerCpuArray<_, u64> = PerCpuArray::try_from(Map::PerCpuArray(pinned))?;
        let sum = |i: u32| -> Result<u64> { Ok(events.get(&i, 0)?.iter().sum()) };
        let (inserts, removals, refused) = (sum(CT_STAT_INSERTS)?, sum(CT_STAT_REMOVALS)?, sum(CT_STAT_REFUSED)?);
        Ok(Self::new(ipv4, ipv6, inserts, removals, refused))
    }

    /// From the tables' fills and the event counts; entries and evictions are derived.
    pub fn new(ipv4: crate::fill::TableFill, ipv6: crate::fill::TableFill, inserts: u64, removals: u64, refused: u64) -> Self {
        let entries = ipv4.entries + ipv6.entries;
        let evictions = inserts.saturating_sub(removals).saturating_sub(entries);
        Self { entries, inserts, removals, refused, evictions, ipv4, ipv6, fill: ipv4.fill.max(ipv6.fill) }
    }
}

/// Sums a per-CPU counter array over CPUs, slot by slot.
pub fn read_counters(map: &PerCpuArray<impl std::borrow::Borrow<MapData>, Counter>) -> Result<Vec<Counter>> {
    let mut out = Vec::with_capacity(map.len() as usize);
    for values in map.iter() {
        let values = values.context("reading a per-CPU counter")?;
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
        Self::read_with(|name| ebpf.map(name).with_context(|| format!("map {name} missing")).map(read_array)?)
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
