//! Persistence: the XDP and tc links are always pinned under `/sys/fs/bpf/dataplane/links/`, so
//! a crashed or killed daemon leaves its last policy enforcing: a firewall must not open because
//! its controller died. A clean stop removes the pins (the links detach) unless `run --persist`
//! asked to keep enforcing. The next `run` takes each pinned link over with BPF_LINK_UPDATE: no
//! packet goes unjudged in between. `dataplane detach` removes what is left.

use anyhow::{bail, Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId},
    xdp::{XdpLink, XdpLinkId},
    SchedClassifier, Xdp,
};

use crate::{
    run::{attach, attach_egress, Mode},
    state,
};

/// The XDP link of `iface`: the pinned one taken over if there is one, else a new attachment,
/// pinned.
pub fn xdp(prog: &mut Xdp, iface: &str, mode: Mode) -> Result<(XdpLinkId, &'static str)> {
    let path = state::link_pin(iface, "xdp");
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        let link = XdpLink::try_from(FdLink::from(pinned))?;
        match prog.attach_to_link(link) {
            Ok(id) => return Ok((id, "adopted")),
            Err(e) => stale(&path, iface, e),
        }
    }
    let (id, used) = attach(prog, iface, mode)?;
    let fd = FdLink::try_from(prog.take_link(id)?).context("only bpf_link attachments can be persisted")?;
    let pinned = fd.pin(&path).with_context(|| format!("pinning the XDP link of {iface}"))?;
    Ok((prog.attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)?, used))
}

/// The tc egress link of `iface`, as `xdp`.
pub fn tc(prog: &mut SchedClassifier, iface: &str) -> Result<SchedClassifierLinkId> {
    let path = state::link_pin(iface, "tc");
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
        match prog.attach_to_link(link) {
            Ok(id) => return Ok(id),
            Err(e) => stale(&path, iface, e),
        }
    }
    let id = attach_egress(prog, iface)?;
    let fd = FdLink::try_from(prog.take_link(id)?).context("only bpf_link attachments can be persisted")?;
    let pinned = fd.pin(&path).with_context(|| format!("pinning the tc link of {iface}"))?;
    Ok(prog.attach_to_link(SchedClassifierLink::try_from(FdLink::from(pinned))?)?)
}

/// A pinned link that cannot be taken over: its interface was removed (the kernel detached it)
/// or it belongs to something else. Unpinned, so that a new attachment replaces it.
fn stale(path: &std::path::Path, iface: &str, e: impl std::fmt::Display) {
    log::warn!("{iface}: the pinned link {} cannot be taken over ({e}); attaching anew", path.display());
    let _ = std::fs::remove_file(path);
}

#[derive(clap::Args)]
pub struct DetachArgs {
    /// Only this interface (repeat for several); default: every interface.
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
}

/// `dataplane detach`: removes what a persisted (or killed) `run` left enforcing.
pub fn detach(a: DetachArgs) -> Result<()> {
    let st = state::State::read()?;
    if std::path::Path::new(&format!("/proc/{}", st.pid)).exists() {
        bail!("dataplane (pid {}) is still running: stop it (SIGTERM) first, then detach", st.pid);
    }
    let ifaces = if a.ifaces.is_empty() { st.interfaces.clone() } else { a.ifaces };
    for iface in &ifaces {
        for kind in ["xdp", "tc"] {
            state::unpin_link(&state::link_pin(iface, kind));
        }
        println!("{iface}: detached");
    }
    let left = std::fs::read_dir(std::path::Path::new(state::PIN_DIR).join("links")).map(|d| d.count()).unwrap_or(0);
    if left == 0 {
        state::remove_all();
        println!("no interface left: pinned maps and state removed");
    }
    Ok(())
}
