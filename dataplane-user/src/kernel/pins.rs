//! Where a running dataplane pins its maps and links in bpffs (`/sys/fs/bpf/dataplane/`), and
//! removing them: a pinned link keeps its program attached after the process is gone.

use std::path::{Path, PathBuf};

use super::KernelError;

type Result<T> = std::result::Result<T, KernelError>;

pub const PIN_DIR: &str = "/sys/fs/bpf/dataplane";

pub fn pin_path(map: &str) -> PathBuf {
    Path::new(PIN_DIR).join(map)
}

/// Pins a map as `name` under [`PIN_DIR`] (`pin`: the map's own `pin`), in place of what a
/// previous program pinned there.
pub fn replace_pin(name: &str, pin: impl FnOnce(&Path) -> std::result::Result<(), aya::pin::PinError>) -> Result<()> {
    let path = pin_path(name);
    let _ = std::fs::remove_file(&path);
    pin(&path).map_err(|source| KernelError::PinMap { name: name.to_owned(), source })
}

/// The two links a run makes on each interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Xdp,
    /// The tc egress program.
    Tc,
}

impl LinkKind {
    pub const ALL: [LinkKind; 2] = [LinkKind::Xdp, LinkKind::Tc];

    fn suffix(self) -> &'static str {
        match self {
            LinkKind::Xdp => "xdp",
            LinkKind::Tc => "tc",
        }
    }
}

fn links_dir() -> PathBuf {
    Path::new(PIN_DIR).join("links")
}

/// Where a link is pinned: `links/{iface}-xdp` or `links/{iface}-tc`. bpffs refuses names with
/// a dot, which interface names may have (eth0.100).
pub fn link_pin(iface: &str, kind: LinkKind) -> PathBuf {
    links_dir().join(format!("{}-{}", iface.replace('.', "_"), kind.suffix()))
}

/// Makes the directory links are pinned in.
pub fn create_links_dir() -> Result<()> {
    std::fs::create_dir_all(links_dir()).map_err(KernelError::CreatePinDir)
}

/// Detaches the link pinned at `path` at once and removes the pin. Unpinning alone lets the
/// kernel release the link later (deferred work), and packets meanwhile still meet the program:
/// a clean stop must be over when the process has exited.
pub fn unpin_link(path: &Path) {
    if let Ok(fd) = super::bpf::obj_get(path) {
        use std::os::fd::AsFd;
        let _ = super::bpf::link_detach(fd.as_fd());
    }
    let _ = std::fs::remove_file(path);
}

/// Both links of `iface`, detached and unpinned.
pub fn unpin_links(iface: &str) {
    for kind in LinkKind::ALL {
        unpin_link(&link_pin(iface, kind));
    }
}

/// Names of the pinned links (`{iface}-{kind}`).
pub fn pinned_links() -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(links_dir()).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    v.sort();
    v
}

/// Detaches and unpins every pinned link.
pub fn unpin_all_links() {
    for name in pinned_links() {
        unpin_link(&links_dir().join(name));
    }
}

/// Unpins (so detaches) the links of interfaces other than `ifaces`: what an earlier run left on
/// interfaces this one does not enforce on. Returns their names.
pub fn remove_other_links(ifaces: &[String]) -> Vec<String> {
    let ours: Vec<PathBuf> = ifaces.iter().flat_map(|i| LinkKind::ALL.map(|k| link_pin(i, k))).collect();
    let mut removed = vec![];
    for name in pinned_links() {
        let path = links_dir().join(&name);
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
    nix::mount::mount(Some("bpf"), "/sys/fs/bpf", Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(KernelError::MountBpffs)
}
