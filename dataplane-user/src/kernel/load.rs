//! Loading: the embedded XDP object, its maps sized for compiled `Tables`, the first policy image
//! written (through the typed handles of `images`), and the programs verified.

use aya::{
    programs::{ProgramError, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use dataplane_common::{image::PAGE_WORDS, RunConfig, CONFIG_FORWARD, CONFIG_MONITOR};
use serde::{Deserialize, Serialize};

use crate::{
    compile::tables::Tables,
    kernel::{images::ImageMaps, maps::*},
};

/// The XDP object built by `cargo xtask build` (empty when the controller was built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane.bpf.o"));

/// Why the programs could not be loaded; printed (with `{:#}`, causes included) as before.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The binary was built without `cargo xtask build`: its embedded object is empty.
    #[error("this dataplane binary was built without the XDP object: build it with `cargo xtask build`")]
    NoObject,
    /// A map sized past what the kernel takes (entries are a u32).
    #[error("table too large")]
    TableTooLarge {
        map: &'static str,
        #[source]
        source: std::num::TryFromIntError,
    },
    /// The object could not be loaded: maps not created (memory, an incompatible pin), BTF,
    /// relocations.
    #[error("loading the XDP object")]
    Object(#[source] EbpfError),
    /// The kernel verifier refused a program (`program`: `XDP`, `tc egress`); the cause holds
    /// its log ([`LoadError::verifier_log`]).
    #[error("the kernel verifier rejected the {program} program")]
    Verifier {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("XDP program {0} missing from the object")]
    MissingProgram(String),
    #[error("tc program missing from the object")]
    MissingEgress,
    /// The clock program (which measures the kernel's HZ) failed at `step` (`loading`, `running`).
    #[error("{step} the clock program")]
    Clock {
        step: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A program of the wrong type, or a failed operation on one.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The policy maps: missing, of the wrong type, or not written.
    #[error(transparent)]
    Maps(#[from] crate::kernel::KernelError),
}

impl LoadError {
    /// The verifier's log, when the verifier refused a program.
    pub fn verifier_log(&self) -> Option<String> {
        match self {
            LoadError::Verifier { source: ProgramError::LoadError { verifier_log, .. }, .. } => Some(verifier_log.to_string()),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, LoadError>;

/// The program's name in the object.
pub const PROGRAM: &str = "dataplane";

/// The tc egress program that records the connections protected servers open.
pub const EGRESS: &str = "egress";
/// Connection-tracking entries when the tables do not say (hand-built tables in tests).
const DEFAULT_CONNTRACK: u32 = 65536;

/// A loaded object: its programs and maps, and the maps the controller writes while it runs, taken out of
/// it once after the load as typed handles.
pub struct Object {
    pub ebpf: Ebpf,
    pub images: ImageMaps,
}

/// Loads the program into the kernel with its maps sized for and filled with `tables`.
/// Nothing is attached: the caller decides where (an interface, or BPF_PROG_TEST_RUN).
pub fn load(tables: &Tables) -> Result<Object> {
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
    tables.outbound_flows().len()
}

pub fn load_with(tables: &Tables, shared: &Shared) -> Result<Object> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
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
        let max = u32::try_from(len.max(1)).map_err(|source| LoadError::TableTooLarge { map: name, source })?;
        loader.map_max_entries(name, max);
    }
    let pins: Vec<(&str, std::path::PathBuf)> = match &shared.pin_dir {
        Some(dir) => SHARED_MAPS.iter().map(|n| (*n, dir.join(n))).collect(),
        None => vec![],
    };
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
    let mut images = ImageMaps::take(&mut ebpf)?;
    images.write_image(0, &image)?;
    // What belongs to the run, with `POLICY_A` in force; the site's own settings are in the image.
    let c = tables.config;
    let run = RunConfig {
        active: 0,
        flags: c.flags & (CONFIG_MONITOR | CONFIG_FORWARD),
        hz: clock_hz(&mut ebpf)?,
        generation: c.generation,
    };
    images.write_run_config(run)?;
    let verifier = |program| move |source| LoadError::Verifier { program, source };
    program(&mut ebpf)?.load().map_err(verifier("XDP"))?;
    egress(&mut ebpf)?.load().map_err(verifier("tc egress"))?;
    Ok(Object { ebpf, images })
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

pub fn egress(ebpf: &mut Ebpf) -> Result<&mut aya::programs::SchedClassifier> {
    Ok(ebpf.program_mut(EGRESS).ok_or(LoadError::MissingEgress)?.try_into()?)
}

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
    Ok(ebpf.program_mut(name).ok_or_else(|| LoadError::MissingProgram(name.to_owned()))?.try_into()?)
}

/// The kernel's clock ticks per second (its HZ), measured once per process with the `clock`
/// program: the ticks that pass in 40 ms, rounded to the nearest rate a kernel is built with.
fn clock_hz(ebpf: &mut Ebpf) -> Result<u32> {
    static HZ: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(&hz) = HZ.get() {
        return Ok(hz);
    }
    let prog = program_named(ebpf, CLOCK)?;
    let clock = |step| move |source| LoadError::Clock { step, source };
    prog.load().map_err(clock("loading"))?;
    let tick = || -> Result<(u32, std::time::Instant)> {
        use aya::programs::{TestRun, TestRunOptions};
        let opts = TestRunOptions { data_in: Some(&[0u8; 64]), ..Default::default() };
        Ok((prog.test_run(opts).map_err(clock("running"))?.return_value, std::time::Instant::now()))
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

#[cfg(test)]
mod tests {
    use super::{CounterSlots, LoadError};

    /// The messages `run` prints, causes included, as before the errors were typed.
    #[test]
    fn load_error_messages() {
        let e = LoadError::TableTooLarge { map: "FLOWS", source: u32::try_from(u64::MAX).unwrap_err() };
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "table too large: out of range integral type conversion attempted");
        assert_eq!(LoadError::MissingProgram("clock".into()).to_string(), "XDP program clock missing from the object");
        let e = LoadError::Maps(crate::kernel::KernelError::MissingMap("CONFIG".into()));
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "map CONFIG missing from the XDP object");
        assert!(LoadError::NoObject.to_string().ends_with("build it with `cargo xtask build`"));
        assert_eq!(LoadError::NoObject.verifier_log(), None);
    }

    #[test]
    fn counter_slots_keep_the_state_files_pair() {
        // States written before the type recorded `"capacity": [flows, outbound]`.
        let c: CounterSlots = serde_json::from_str("[300, 40]").unwrap();
        assert_eq!(c, CounterSlots { flows: 300, outbound: 40 });
        assert_eq!(serde_json::to_string(&c).unwrap(), "[300,40]");
    }
}
