//! Attaching: the XDP program to an interface's driver (or generic mode), and the tc egress
//! program that records the connections the protected servers open.
//!
//! Every link is pinned under `/sys/fs/bpf/dataplane/links/` the moment it is made, so a crashed
//! or killed daemon leaves its last policy enforcing: a firewall must not open because its
//! controller died. A clean stop removes the pins (the links detach) unless `run --persist` asked
//! to keep enforcing. The next `run` takes each pinned link over with BPF_LINK_UPDATE: no packet
//! goes unjudged in between. `dataplane detach` removes what is left.

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId},
    xdp::{XdpLink, XdpLinkId},
    SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use log::warn;

use crate::kernel::{
    pins::{self, LinkKind},
    KernelError,
};

type Result<T> = std::result::Result<T, KernelError>;

/// The XDP mode `run --mode` asks for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Native, else generic with a warning.
    Auto,
    Native,
    Skb,
}

/// How the XDP program ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// In the driver.
    Native,
    /// Generic mode, after the stack has built an skb.
    Skb,
    /// A link a previous run pinned, taken over as it was (its mode is the one that run used).
    Adopted,
}

impl Attached {
    /// As logs and the `dataplane_interface_info{mode}` label name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Skb => "skb",
            Attached::Adopted => "adopted",
        }
    }
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The XDP link of `iface`: the pinned one taken over if there is one, else a new attachment,
/// pinned.
pub fn xdp(prog: &mut Xdp, iface: &str, mode: Mode) -> Result<(XdpLinkId, Attached)> {
    let path = pins::link_pin(iface, LinkKind::Xdp);
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        let link = XdpLink::try_from(FdLink::from(pinned))?;
        match prog.attach_to_link(link) {
            Ok(id) => return Ok((id, Attached::Adopted)),
            Err(e) => stale(&path, iface, e),
        }
    }
    let (id, used) = attach_xdp(prog, iface, mode)?;
    let fd = FdLink::try_from(prog.take_link(id)?).map_err(KernelError::NotBpfLink)?;
    let pinned = fd.pin(&path).map_err(|source| KernelError::PinLink { kind: LinkKind::Xdp, iface: iface.to_owned(), source })?;
    Ok((prog.attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)?, used))
}

/// The tc egress link of `iface`, as `xdp`.
pub fn tc(prog: &mut SchedClassifier, iface: &str) -> Result<SchedClassifierLinkId> {
    let path = pins::link_pin(iface, LinkKind::Tc);
    if let Ok(pinned) = PinnedLink::from_pin(&path) {
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
        match prog.attach_to_link(link) {
            Ok(id) => return Ok(id),
            Err(e) => stale(&path, iface, e),
        }
    }
    let id = attach_egress(prog, iface)?;
    let fd = FdLink::try_from(prog.take_link(id)?).map_err(KernelError::NotBpfLink)?;
    let pinned = fd.pin(&path).map_err(|source| KernelError::PinLink { kind: LinkKind::Tc, iface: iface.to_owned(), source })?;
    Ok(prog.attach_to_link(SchedClassifierLink::try_from(FdLink::from(pinned))?)?)
}

/// A pinned link that cannot be taken over: its interface was removed (the kernel detached it)
/// or it belongs to something else. Unpinned, so that a new attachment replaces it.
fn stale(path: &std::path::Path, iface: &str, e: impl std::fmt::Display) {
    warn!("{iface}: the pinned link {} cannot be taken over ({e}); attaching anew", path.display());
    let _ = std::fs::remove_file(path);
}

fn attach_xdp(prog: &mut Xdp, iface: &str, mode: Mode) -> Result<(XdpLinkId, Attached)> {
    if mode != Mode::Skb {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(link) => return Ok((link, Attached::Native)),
            Err(e) if mode == Mode::Auto => {
                warn!("{iface}: native XDP is not available ({e}); falling back to generic (skb) mode, which runs later and costs more per packet");
            }
            Err(source) => return Err(KernelError::AttachNative { iface: iface.to_owned(), source }),
        }
    }
    let link = prog.attach(iface, XdpMode::Skb).map_err(|source| KernelError::AttachSkb { iface: iface.to_owned(), source })?;
    Ok((link, Attached::Skb))
}

/// TCX on Linux 6.6 and later; a clsact qdisc (made through aya's netlink) before.
fn attach_egress(prog: &mut SchedClassifier, iface: &str) -> Result<SchedClassifierLinkId> {
    match prog.attach(iface, TcAttachType::Egress) {
        Ok(link) => Ok(link),
        Err(_) => {
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
            prog.attach(iface, TcAttachType::Egress)
                .map_err(|source| KernelError::AttachEgress { iface: iface.to_owned(), source })
        }
    }
}

/// The interface's index in this thread's network namespace, 0 when there is no such interface.
pub fn if_index(iface: &str) -> u32 {
    nix::net::if_::if_nametoindex(iface).unwrap_or(0)
}
