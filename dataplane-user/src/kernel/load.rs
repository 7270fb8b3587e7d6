//! Loading: the embedded XDP object, its maps sized and filled from compiled `Tables`, and a
//! new policy image written and put in force without loading anything again.

use anyhow::{bail, Context, Result};
use std::os::fd::{AsFd, AsRawFd};

use aya::{maps::Array, programs::Xdp, Ebpf, EbpfLoader};
use dataplane_common::{image::PAGE_WORDS, RunConfig, CONFIG_MONITOR};
use serde::{Deserialize, Serialize};

use crate::{compile::tables::Tables, kernel::maps::*};

/// The XDP object built by `cargo xtask build` (empty when the controller was built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane.bpf.o"));

/// The program's name in the object.
pub const PROGRAM: &str = "dataplane";

/// The tc egress program that records the connections protected servers open.
pub const EGRESS: &str = "egress";
/// Connection-tracking entries when the tables do not say (hand-built tables in tests).
const DEFAULT_CONNTRACK: u32 = 65536;

/// Loads the program into the kernel with its maps sized for and filled with `tables`.
/// Nothing is attached: the caller decides where (an interface, or BPF_PROG_TEST_RUN).
pub fn load(tables: &Tables) -> Result<Ebpf> {
    load_with(tables, &Shared::default())
}

/// How the shared maps are made: fresh (tests, benchmarks), or pinned under a directory and
/// reused when already there, with room for `slots` counter slots.
#[derive(Default)]
pub struct Shared {
    pub pin_dir: Option<std::path::PathBuf>,
    pub slots: CounterSlots,
}

/// Counter slots the shared counter maps hold: per inbound flow (`FLOWS`) and per outbound flow
/// (`OUT_FLOWS`, `REPLY_FLOWS`). Fixed when they are made, so that counters carry over reloads;
/// recorded in the state as `[flows, outbound]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u32, u32)", into = "(u32, u32)")]
pub struct CounterSlots {
    pub flows: u32,
    pub outbound: u32,
}

impl CounterSlots {
    /// Room for the slots of `tables` and as many again (at least 256 more): policies may grow
    /// by reloads.
    pub fn with_room(tables: &Tables) -> Self {
        let room = |slots: usize| (slots * 2).max(slots + 256) as u32;
        Self { flows: room(tables.flows.len()), outbound: room(outbound_slots(tables)) }
    }

    /// Whether `tables` (on their final slots) fit.
    pub fn fits(self, tables: &Tables) -> bool {
        tables.flows.len() <= self.flows as usize && outbound_slots(tables) <= self.outbound as usize
    }
}

impl From<(u32, u32)> for CounterSlots {
    fn from((flows, outbound): (u32, u32)) -> Self {
        Self { flows, outbound }
    }
}

impl From<CounterSlots> for (u32, u32) {
    fn from(c: CounterSlots) -> Self {
        (c.flows, c.outbound)
    }
}

/// Counter slots of the outbound flows of `tables`.
pub fn outbound_slots(tables: &Tables) -> usize {
    tables.outbound.as_deref().map_or(0, |o| o.flows.len())
}

pub fn load_with(tables: &Tables, shared: &Shared) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("this dataplane binary was built without the XDP object: build it with `cargo xtask build`");
    }
    let image = tables.image();
    let ct = if tables.conntrack_size == 0 { DEFAULT_CONNTRACK } else { tables.conntrack_size };
    let flow_slots = tables.flows.len().max(shared.slots.flows as usize);
    let out_slots = outbound_slots(tables).max(shared.slots.outbound as usize);
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

#[cfg(test)]
mod tests {
    use super::CounterSlots;

    #[test]
    fn counter_slots_keep_the_state_files_pair() {
        // States written before the type recorded `"capacity": [flows, outbound]`.
        let c: CounterSlots = serde_json::from_str("[300, 40]").unwrap();
        assert_eq!(c, CounterSlots { flows: 300, outbound: 40 });
        assert_eq!(serde_json::to_string(&c).unwrap(), "[300,40]");
    }
}
