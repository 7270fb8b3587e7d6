//! Entering a network namespace for a while: the lab's and the gateway's interfaces live in
//! namespaces of their own, and an interface is found, attached to and named by index in the
//! namespace of the thread that asks.

use std::fs::File;

use nix::sched::{setns, CloneFlags};

use super::KernelError;

/// Runs `f` on this thread inside namespace `ns` (`ip netns` names it, /var/run/netns/NS), then
/// returns to the original namespace.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T, KernelError> {
    let original = File::open("/proc/thread-self/ns/net").map_err(KernelError::OwnNetns)?;
    let target =
        File::open(format!("/var/run/netns/{ns}")).map_err(|source| KernelError::NoNetns { ns: ns.to_owned(), source })?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|source| KernelError::EnterNetns { ns: ns.to_owned(), source })?;
    let out = f();
    setns(&original, CloneFlags::CLONE_NEWNET).map_err(|source| KernelError::LeaveNetns { ns: ns.to_owned(), source })?;
    Ok(out)
}
