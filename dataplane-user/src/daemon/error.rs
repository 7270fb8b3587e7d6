//! Why `run` could not start, or a reload was refused: what the caller branches on (a reload
//! that fails keeps the running policy; one that outgrows the counter maps needs a restart).
//! Each variant prints what was printed when these were strings, causes included with `{:#}`.

use aya::programs::ProgramError;

use crate::{
    compile::CompileError,
    kernel::{load::LoadError, pins::LinkKind, state::StateError, KernelError},
    observe::ObserveError,
    policy::error::PolicyError,
    rollout::lockout::LockoutError,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("`dataplane run` loads an XDP program: run it as root (CAP_BPF and CAP_NET_ADMIN)")]
    NotRoot,
    /// Checked before anything is loaded, so that a mistyped name leaves nothing behind.
    #[error("no interface named {iface} in this network namespace (see `ip link`)")]
    NoInterface { iface: String },
    /// The site or a catalog does not read.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The policy is beyond the compiler's limits.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The policy would cut the management connection (refused without `--force`).
    #[error(transparent)]
    Lockout(#[from] LockoutError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The state file, another run enforcing, pinning.
    #[error(transparent)]
    State(#[from] StateError),
    /// The metrics address cannot be bound.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// A reloaded policy with more counter slots than the shared counter maps were made with at
    /// start: only a new run makes larger ones.
    #[error(
        "the new policy needs {flows} flow and {outbound} outbound counter slots, more than the {room_flows} and {room_outbound} this run made room for: restart dataplane run"
    )]
    CapacityExceeded { flows: usize, outbound: usize, room_flows: u32, room_outbound: u32 },
    /// A link could not be moved to the program with larger maps.
    #[error("switching {} link", switched(*.kind))]
    SwitchLink {
        kind: LinkKind,
        #[source]
        source: ProgramError,
    },
    /// A reload put the new policy in force, then could not record it (pins, state file): the
    /// caller must not report the previous policy as the one enforcing.
    #[error(transparent)]
    Unrecorded(StateError),
    #[error("the metrics server stopped")]
    MetricsStopped(#[source] Option<ObserveError>),
    /// The runtime, the signal handlers, the program's log.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn switched(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Xdp => "an XDP",
        LinkKind::Tc => "a tc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_ones_run_printed() {
        let e = DaemonError::CapacityExceeded { flows: 600, outbound: 3, room_flows: 512, room_outbound: 256 };
        assert_eq!(
            e.to_string(),
            "the new policy needs 600 flow and 3 outbound counter slots, more than the 512 and 256 this run made room for: restart dataplane run"
        );
        let e = DaemonError::SwitchLink { kind: LinkKind::Xdp, source: ProgramError::NotLoaded };
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "switching an XDP link: the program is not loaded");
        assert_eq!(
            DaemonError::SwitchLink { kind: LinkKind::Tc, source: ProgramError::NotLoaded }.to_string(),
            "switching a tc link"
        );
        let e = DaemonError::MetricsStopped(Some(ObserveError::Io(std::io::ErrorKind::BrokenPipe.into())));
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "the metrics server stopped: broken pipe");
        assert_eq!(format!("{:#}", anyhow::Error::from(DaemonError::MetricsStopped(None))), "the metrics server stopped");
    }

    /// What the daemon's callers branch on is the variant under the transparent layers.
    #[test]
    fn lower_errors_keep_their_variant() {
        let e: DaemonError = StateError::AnotherRun { pid: 7, site: "edge.yaml".into() }.into();
        assert!(matches!(e, DaemonError::State(StateError::AnotherRun { pid: 7, .. })));
        assert_eq!(e.to_string(), "another dataplane (pid 7) is enforcing edge.yaml; stop it first");
    }
}
