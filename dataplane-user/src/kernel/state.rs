//! What a running `dataplane run` leaves for other processes: its maps pinned under
//! `/sys/fs/bpf/dataplane/`, and `/run/dataplane/state.json` naming the flow of every counter slot.

use std::path::{Path, PathBuf};

use aya::Ebpf;
use serde::{Deserialize, Serialize};

use crate::{
    compile::tables::{FlowInfo, Tables},
    kernel::{
        images::ImageMaps,
        load::CounterSlots,
        maps::SHARED_MAPS,
        pins::{self, PIN_DIR},
        KernelError,
    },
    policy::{
        error::PolicyError,
        sources::{Loaded, SiteFiles, Sources},
    },
};

/// Why the state file could not be read or written, or a run cannot start beside another.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No state file at [`STATE_FILE`] (or it cannot be opened): no dataplane runs.
    #[error("no running dataplane: {STATE_FILE} is missing (start one with `dataplane run`)")]
    NotRunning(#[source] std::io::Error),
    /// No state file where the enforced policy was looked for.
    #[error("no enforced policy: {} is missing (start one with `dataplane run`, or give --from FILE)", path.display())]
    NoEnforced {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A state file that is not one (or not of a version this one reads).
    #[error("{} is unreadable", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A live process (not this one) wrote the state: two runs would fight over the links.
    #[error("another dataplane (pid {pid}) is enforcing {site}; stop it first")]
    AnotherRun { pid: u64, site: String },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The state's directory could not be made.
    #[error(transparent)]
    Directory(std::io::Error),
    #[error(transparent)]
    Encode(serde_json::Error),
    /// The sources the state recorded do not make a policy (any more).
    #[error("the policy recorded in the state")]
    Recorded(#[source] PolicyError),
    /// The site, read as it is now (a state that recorded no sources).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Pinning the maps, making the pin directory.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

type Result<T> = std::result::Result<T, StateError>;

pub const STATE_FILE: &str = "/run/dataplane/state.json";
/// Version of the state file and of the pinned maps' layout. A run adopts counters and tracked
/// connections only from its own format; from any other it takes the links over with new maps.
pub const STATE_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
pub struct StateFile {
    /// [`STATE_FORMAT`] of the run that wrote it (0: before formats were numbered).
    #[serde(default)]
    pub format: u32,
    pub pid: u32,
    pub site: PathBuf,
    /// The catalog directory the site was resolved with (absent from the states of earlier
    /// versions: then found as `run` finds it).
    #[serde(default)]
    pub catalog_dir: Option<PathBuf>,
    pub interfaces: Vec<String>,
    /// Flow of each counter slot.
    pub flows: Vec<FlowInfo>,
    /// Outbound flow of each slot of the outbound and reply counters.
    #[serde(default)]
    pub outbound: Vec<FlowInfo>,
    /// `run --persist`: the programs keep enforcing after a clean exit too (they always do after
    /// a crash).
    #[serde(default)]
    pub persist: bool,
    /// Policy generation, and the counter slots the shared maps hold (for adoption).
    #[serde(default)]
    pub generation: u32,
    #[serde(default)]
    pub capacity: CounterSlots,
    /// Monitor mode: drops are counted, not enforced.
    #[serde(default)]
    pub monitor: bool,
    /// The texts the enforced policy was compiled from (`dataplane diff`, `suggest`); absent
    /// from the states of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Sources>,
}

impl StateFile {
    pub fn read() -> Result<Self> {
        let text = std::fs::read_to_string(STATE_FILE).map_err(StateError::NotRunning)?;
        serde_json::from_str(&text).map_err(|source| StateError::Unreadable { path: STATE_FILE.into(), source })
    }

    /// The site and catalog directory the run reads its policy from.
    pub fn files(&self) -> SiteFiles {
        SiteFiles::new(&self.site, self.catalog_dir.as_deref())
    }
}

/// The pins and state file of this process; removed on drop unless persisted.
pub struct Pins {
    pub persist: bool,
}

impl Pins {
    /// Before loading: refuses when another live dataplane enforces. What a dead run left enforcing
    /// (pinned links) is taken over; its counters and tracked connections are returned to be
    /// adopted when its state is of this format. Everything else it left is removed, so that the
    /// shared maps (`maps::SHARED_MAPS`, pinned at load) start empty.
    pub fn prepare(persist: bool) -> Result<(Self, Option<StateFile>)> {
        pins::ensure_bpffs()?;
        let text = std::fs::read_to_string(STATE_FILE).ok();
        let value = text.as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
        if let Some(pid) = value.as_ref().and_then(|v| v.get("pid")).and_then(|p| p.as_u64()) {
            if Path::new(&format!("/proc/{pid}")).exists() && pid != u64::from(std::process::id()) {
                let site = value.as_ref().and_then(|v| v.get("site")).and_then(|s| s.as_str()).unwrap_or("a site");
                return Err(StateError::AnotherRun { pid, site: site.to_owned() });
            }
        }
        let links = pins::pinned_links();
        let state = text.as_deref().and_then(|t| serde_json::from_str::<StateFile>(t).ok());
        let adopt = match state {
            _ if links.is_empty() => None,
            Some(old) if old.format == STATE_FORMAT => Some(old),
            _ => {
                log::warn!(
                    "{STATE_FILE} is missing, unreadable or from another version: taking over the links a previous run left ({}) with new maps; counters start from zero",
                    links.join(", ")
                );
                None
            }
        };
        if adopt.is_none() {
            remove_maps();
        }
        pins::create_links_dir()?;
        Ok((Self { persist }, adopt))
    }

    /// After a load or a reload: pins the maps of this policy (the shared ones are pinned at load
    /// already) and records the state for `stats` and for a later adoption.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        ebpf: &Ebpf,
        images: &ImageMaps,
        files: &SiteFiles,
        tables: &Tables,
        interfaces: &[String],
        capacity: CounterSlots,
        sources: Option<&Sources>,
    ) -> Result<()> {
        // The program's own maps; not the sections aya makes of globals (.rodata, .bss).
        let own = ebpf.maps().filter(|(name, _)| !name.starts_with('.') && !SHARED_MAPS.contains(name));
        for (name, map) in own {
            pins::replace_pin(name, |p| map.pin(p))?;
        }
        images.pin()?;
        let state = StateFile {
            format: STATE_FORMAT,
            pid: std::process::id(),
            site: files.site.clone(),
            catalog_dir: Some(files.catalog_dir.clone()),
            interfaces: interfaces.to_vec(),
            flows: tables.flows.clone(),
            outbound: tables.outbound_flows().to_vec(),
            persist: self.persist,
            generation: tables.config.generation,
            capacity,
            monitor: tables.config.flags & dataplane_common::CONFIG_MONITOR != 0,
            sources: sources.cloned(),
        };
        std::fs::create_dir_all(Path::new(STATE_FILE).parent().unwrap_or(Path::new("/run"))).map_err(StateError::Directory)?;
        // Written whole then renamed: a reader never sees half a file.
        let tmp = format!("{STATE_FILE}.tmp");
        let json = serde_json::to_vec_pretty(&state).map_err(StateError::Encode)?;
        std::fs::write(&tmp, json).map_err(|source| StateError::Write { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, STATE_FILE).map_err(|source| StateError::Write { path: STATE_FILE.into(), source })?;
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

/// Detaches every pinned link and removes every pin and the state file.
pub fn remove_all() {
    pins::unpin_all_links();
    let _ = std::fs::remove_dir_all(PIN_DIR);
    let _ = std::fs::remove_file(STATE_FILE);
}

/// Removes the pinned maps and the state file, and keeps the pinned links enforcing.
pub fn remove_maps() {
    for e in std::fs::read_dir(PIN_DIR).into_iter().flatten().flatten() {
        if e.file_name() != "links" {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_file(STATE_FILE);
}

/// The policy a dataplane enforces, from its state file.
pub struct Enforced {
    pub loaded: Loaded,
    /// The site and catalog directory the daemon reads its policy from.
    pub files: SiteFiles,
    pub pid: u32,
    /// The daemon that wrote the state still runs (else the policy was persisted, or the daemon
    /// was killed: it enforces all the same).
    pub running: bool,
    /// The state recorded the sources; false: a daemon from before they were recorded, and the
    /// site file as it is now stands in for them.
    pub recorded: bool,
    pub monitor: bool,
}

impl Enforced {
    /// Reads `state` (default [`STATE_FILE`]).
    pub fn read(state: Option<&Path>) -> Result<Enforced> {
        let path = state.unwrap_or(Path::new(STATE_FILE));
        let text = std::fs::read_to_string(path).map_err(|source| StateError::NoEnforced { path: path.into(), source })?;
        let st: StateFile = serde_json::from_str(&text).map_err(|source| StateError::Unreadable { path: path.into(), source })?;
        let running = Path::new(&format!("/proc/{}", st.pid)).exists();
        let files = st.files();
        let (loaded, recorded) = match &st.sources {
            Some(s) => (s.load().map_err(StateError::Recorded)?, true),
            None => (files.read()?, false),
        };
        Ok(Enforced { loaded, files, pid: st.pid, running, recorded, monitor: st.monitor })
    }

    /// "the policy pid 123 enforces" and the like, for headers.
    pub fn describe(&self) -> String {
        let who = match self.running {
            true => format!("enforced by pid {}", self.pid),
            false => format!("left enforcing by pid {}, which has exited", self.pid),
        };
        let mode = if self.monitor { ", monitor mode" } else { "" };
        let disk = if self.recorded { "" } else { "; the state records no sources, so the file as it is now" };
        format!("{} ({who}{mode}{disk})", self.loaded.site.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"{"format": 2, "pid": 1, "site": "/etc/dataplane/sites/edge.yaml", "interfaces": ["eth0"], "flows": []}"#;

    #[test]
    fn states_without_a_catalog_dir_still_parse() {
        let st: StateFile = serde_json::from_str(OLD).expect("a state of an earlier version parses");
        assert_eq!(st.catalog_dir, None);
        assert_eq!(st.files().site, Path::new("/etc/dataplane/sites/edge.yaml"));
    }

    #[test]
    fn the_recorded_catalog_dir_is_the_one_used() {
        let mut v: serde_json::Value = serde_json::from_str(OLD).unwrap();
        v["catalog_dir"] = "/srv/catalog".into();
        let st: StateFile = serde_json::from_value(v).unwrap();
        assert_eq!(st.files(), SiteFiles { site: st.site.clone(), catalog_dir: "/srv/catalog".into() });
    }

    /// A state file that is absent and one that is not JSON are different errors, printed as
    /// before (with the cause after `{:#}`).
    #[test]
    fn absent_and_unreadable_states_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("dataplane-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("none.json");
        let e = Enforced::read(Some(&missing)).err().expect("no state file");
        assert!(matches!(&e, StateError::NoEnforced { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{e:?}");
        let shown = format!("{:#}", anyhow::Error::from(e));
        let want = format!(
            "no enforced policy: {} is missing (start one with `dataplane run`, or give --from FILE): ",
            missing.display()
        );
        assert!(shown.starts_with(&want), "{shown}");
        let garbage = dir.join("garbage.json");
        std::fs::write(&garbage, "{ not json").unwrap();
        let e = Enforced::read(Some(&garbage)).err().expect("not a state");
        assert!(matches!(&e, StateError::Unreadable { path, .. } if path == &garbage), "{e:?}");
        assert!(format!("{:#}", anyhow::Error::from(e))
            .starts_with(&format!("{} is unreadable: key must be a string", garbage.display())));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
