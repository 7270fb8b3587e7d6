//! Entering a network namespace for a while: the lab's and the gateway's interfaces live in
//! namespaces of their own, and an interface is found, attached to and named by index in the
//! namespace of the thread that asks.

use std::fs::File;

use anyhow::{Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `f` on this thread inside namespace `ns` (`ip netns` names it, /var/run/netns/NS), then
/// returns to the original namespace.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T> {
    let original = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    setns(&target, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns({ns})"))?;
    let out = f();
    setns(&original, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns back from {ns}"))?;
    Ok(out)
}
