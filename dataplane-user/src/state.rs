//! What a running `dataplane run` leaves for other processes: its maps pinned under
//! `/sys/fs/bpf/dataplane/`, and `/run/dataplane/state.json` naming the flow of every counter slot.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::Ebpf;
use serde::{Deserialize, Serialize};

use crate::tables::{FlowInfo, Tables};

pub const PIN_DIR: &str = "/sys/fs/bpf/dataplane";
pub const STATE_FILE: &str = "/run/dataplane/state.json";

#[derive(Serialize, Deserialize)]
pub struct State {
    pub pid: u32,
    pub site: PathBuf,
    pub interfaces: Vec<String>,
    /// Flow of each counter slot.
    pub flows: Vec<FlowInfo>,
    /// Outbound flow of each slot of the outbound and reply counters.
    #[serde(default)]
    pub outbound: Vec<FlowInfo>,
    /// The links are pinned: the programs keep enforcing after this process exits.
    #[serde(default)]
    pub persist: bool,
    /// Policy generation, and the counter slots the shared maps hold (for adoption).
    #[serde(default)]
    pub generation: u32,
    #[serde(default)]
    pub capacity: (u32, u32),
    /// Monitor mode: drops are counted, not enforced.
    #[serde(default)]
    pub monitor: bool,
}

impl State {
    pub fn read() -> Result<Self> {
        let text = std::fs::read_to_string(STATE_FILE)
            .with_context(|| format!("no running dataplane: {STATE_FILE} is missing (start one with `dataplane run`)"))?;
        serde_json::from_str(&text).with_context(|| format!("{STATE_FILE} is unreadable"))
    }
}

pub fn pin_path(map: &str) -> PathBuf {
    Path::new(PIN_DIR).join(map)
}

/// Where a persisted link is pinned: `kind` is `xdp` or `tc`. bpffs refuses names with a dot,
/// which interface names may have (eth0.100).
pub fn link_pin(iface: &str, kind: &str) -> PathBuf {
    Path::new(PIN_DIR).join("links").join(format!("{}-{kind}", iface.replace('.', "_")))
}

/// The pins and state file of this process; removed on drop unless persisted.
pub struct Pins {
    pub persist: bool,
}

impl Pins {
    /// Before loading: refuses when another live dataplane enforces. What a persisted run left
    /// (pinned links and maps) is returned to be adopted; what any other dead run left is removed,
    /// so that the shared maps (`load::SHARED_MAPS`, pinned at load) start empty.
    pub fn prepare(persist: bool) -> Result<(Self, Option<State>)> {
        ensure_bpffs()?;
        let mut adopt = None;
        if let Ok(old) = State::read() {
            if Path::new(&format!("/proc/{}", old.pid)).exists() && old.pid != std::process::id() {
                bail!("another dataplane (pid {}) is enforcing {}; stop it first", old.pid, old.site.display());
            }
            if old.persist {
                adopt = Some(old);
            }
        }
        if adopt.is_none() {
            remove_all();
        }
        std::fs::create_dir_all(Path::new(PIN_DIR).join("links")).with_context(|| format!("creating {PIN_DIR}"))?;
        Ok((Self { persist }, adopt))
    }

    /// After a load or a reload: pins the maps of this policy (the shared ones are pinned at load
    /// already) and records the state for `stats` and for a later adoption.
    pub fn record(&self, ebpf: &Ebpf, site: &Path, tables: &Tables, interfaces: &[String], capacity: (u32, u32)) -> Result<()> {
        // The program's own maps; not the sections aya makes of globals (.rodata, .bss).
        let own = ebpf.maps().filter(|(name, _)| !name.starts_with('.') && !crate::load::SHARED_MAPS.contains(name));
        for (name, map) in own {
            let path = pin_path(name);
            let _ = std::fs::remove_file(&path);
            map.pin(&path).with_context(|| format!("pinning {name} under {PIN_DIR}"))?;
        }
        let state = State {
            pid: std::process::id(),
            site: site.to_path_buf(),
            interfaces: interfaces.to_vec(),
            flows: tables.flows.clone(),
            outbound: tables.outbound.as_ref().map(|o| o.flows.clone()).unwrap_or_default(),
            persist: self.persist,
            generation: tables.config.generation,
            capacity,
            monitor: tables.config.flags & dataplane_common::CONFIG_MONITOR != 0,
        };
        std::fs::create_dir_all(Path::new(STATE_FILE).parent().unwrap_or(Path::new("/run")))?;
        // Written whole then renamed: a reader never sees half a file.
        let tmp = format!("{STATE_FILE}.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?).with_context(|| format!("writing {tmp}"))?;
        std::fs::rename(&tmp, STATE_FILE).with_context(|| format!("writing {STATE_FILE}"))?;
        Ok(())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        // Persisted: the pinned links keep the programs enforcing, and `stats` keeps working.
        if !self.persist {
            remove_all();
        }
    }
}

/// Removes every pin (links included: a link nobody else holds detaches) and the state file.
pub fn remove_all() {
    let _ = std::fs::remove_dir_all(PIN_DIR);
    let _ = std::fs::remove_file(STATE_FILE);
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted yet.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")) {
        return Ok(());
    }
    log::info!("mounting bpffs at /sys/fs/bpf");
    let status = std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status()?;
    if !status.success() {
        bail!("could not mount bpffs at /sys/fs/bpf: maps cannot be pinned");
    }
    Ok(())
}
