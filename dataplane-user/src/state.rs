//! What a running `dataplane run` leaves for other processes: its maps pinned under
//! `/sys/fs/bpf/dataplane/`, and `/run/dataplane/state.json` naming the flow of every counter slot.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::Ebpf;
use serde::{Deserialize, Serialize};

use crate::tables::{FlowInfo, Tables};

pub const PIN_DIR: &str = "/sys/fs/bpf/dataplane";
pub const STATE_FILE: &str = "/run/dataplane/state.json";
/// Version of the state file and of the pinned maps' layout. A run adopts counters and tracked
/// connections only from its own format; from any other it takes the links over with new maps.
pub const STATE_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
pub struct State {
    /// [`STATE_FORMAT`] of the run that wrote it (0: before formats were numbered).
    #[serde(default)]
    pub format: u32,
    pub pid: u32,
    pub site: PathBuf,
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
    pub capacity: (u32, u32),
    /// Monitor mode: drops are counted, not enforced.
    #[serde(default)]
    pub monitor: bool,
    /// The texts the enforced policy was compiled from (`dataplane diff`, `suggest`); absent
    /// from the states of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<crate::sources::Sources>,
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
    /// Before loading: refuses when another live dataplane enforces. What a dead run left enforcing
    /// (pinned links) is taken over; its counters and tracked connections are returned to be
    /// adopted when its state is of this format. Everything else it left is removed, so that the
    /// shared maps (`load::SHARED_MAPS`, pinned at load) start empty.
    pub fn prepare(persist: bool) -> Result<(Self, Option<State>)> {
        ensure_bpffs()?;
        let text = std::fs::read_to_string(STATE_FILE).ok();
        let value = text.as_deref().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
        if let Some(pid) = value.as_ref().and_then(|v| v.get("pid")).and_then(|p| p.as_u64()) {
            if Path::new(&format!("/proc/{pid}")).exists() && pid != u64::from(std::process::id()) {
                let site = value.as_ref().and_then(|v| v.get("site")).and_then(|s| s.as_str()).unwrap_or("a site");
                bail!("another dataplane (pid {pid}) is enforcing {site}; stop it first");
            }
        }
        let links = pinned_links();
        let state = text.as_deref().and_then(|t| serde_json::from_str::<State>(t).ok());
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
        std::fs::create_dir_all(Path::new(PIN_DIR).join("links")).with_context(|| format!("creating {PIN_DIR}"))?;
        Ok((Self { persist }, adopt))
    }

    /// After a load or a reload: pins the maps of this policy (the shared ones are pinned at load
    /// already) and records the state for `stats` and for a later adoption.
    pub fn record(
        &self,
        ebpf: &Ebpf,
        site: &Path,
        tables: &Tables,
        interfaces: &[String],
        capacity: (u32, u32),
        sources: Option<&crate::sources::Sources>,
    ) -> Result<()> {
        // The program's own maps; not the sections aya makes of globals (.rodata, .bss).
        let own = ebpf.maps().filter(|(name, _)| !name.starts_with('.') && !crate::load::SHARED_MAPS.contains(name));
        for (name, map) in own {
            let path = pin_path(name);
            let _ = std::fs::remove_file(&path);
            map.pin(&path).with_context(|| format!("pinning {name} under {PIN_DIR}"))?;
        }
        let state = State {
            format: STATE_FORMAT,
            pid: std::process::id(),
            site: site.to_path_buf(),
            interfaces: interfaces.to_vec(),
            flows: tables.flows.clone(),
            outbound: tables.outbound.as_ref().map(|o| o.flows.clone()).unwrap_or_default(),
            persist: self.persist,
            generation: tables.config.generation,
            capacity,
            monitor: tables.config.flags & dataplane_common::CONFIG_MONITOR != 0,
            sources: sources.cloned(),
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

/// Detaches every pinned link and removes every pin and the state file.
pub fn remove_all() {
    for name in pinned_links() {
        unpin_link(&Path::new(PIN_DIR).join("links").join(name));
    }
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

/// Detaches the link pinned at `path` at once and removes the pin. Unpinning alone lets the
/// kernel release the link later (deferred work), and packets meanwhile still meet the program:
/// a clean stop must be over when the process has exited.
pub fn unpin_link(path: &Path) {
    if let Some(fd) = bpf_obj_get(path) {
        // BPF_LINK_DETACH (Linux 5.9): `link_detach.link_fd` is the first field of `bpf_attr`.
        let mut attr = [0u64; 16];
        attr[0] = fd.as_raw_fd() as u64;
        // Safety: a zeroed, 128-byte bpf_attr that outlives the call.
        unsafe { libc::syscall(libc::SYS_bpf, 34, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    }
    let _ = std::fs::remove_file(path);
}

/// BPF_OBJ_GET: a descriptor for the object pinned at `path`.
fn bpf_obj_get(path: &Path) -> Option<std::os::fd::OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // `obj_get.pathname` is the first field of `bpf_attr`.
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // Safety: as above; the path outlives the call, and a descriptor returned is ours to own.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 7, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    (fd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// Names of the pinned links (`{iface}-{kind}`).
pub fn pinned_links() -> Vec<String> {
    let dir = Path::new(PIN_DIR).join("links");
    let mut v: Vec<String> =
        std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    v.sort();
    v
}

/// Unpins (so detaches) the links of interfaces other than `ifaces`: what an earlier run left on
/// interfaces this one does not enforce on. Returns their names.
pub fn remove_other_links(ifaces: &[String]) -> Vec<String> {
    let ours: Vec<PathBuf> = ifaces.iter().flat_map(|i| [link_pin(i, "xdp"), link_pin(i, "tc")]).collect();
    let mut removed = vec![];
    for name in pinned_links() {
        let path = Path::new(PIN_DIR).join("links").join(&name);
        if !ours.contains(&path) {
            unpin_link(&path);
            removed.push(name);
        }
    }
    removed
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
