//! Fault injection for the tests (tests/tests/faults.rs), compiled in only with the `fault`
//! feature: `DATAPLANE_FAULT=<stage>` kills the process with SIGKILL when it reaches that stage
//! of start-up or reload. Without the feature a fault point is nothing.

/// Kills this process here when `DATAPLANE_FAULT` names `stage`.
#[cfg(feature = "fault")]
pub fn point(stage: &str) {
    if std::env::var_os("DATAPLANE_FAULT").is_some_and(|s| s == stage) {
        log::warn!("DATAPLANE_FAULT: killed at {stage}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault"))]
#[inline(always)]
pub fn point(_stage: &str) {}
