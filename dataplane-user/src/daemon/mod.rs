//! `dataplane run`: compile a site, load the program, attach it to interfaces, pin its maps, and
//! enforce until SIGINT or SIGTERM; then detach cleanly. Meanwhile: reload on SIGHUP and on
//! changed files, follow interfaces, serve metrics, log drops and nearly full tables.
//!
//! [`enforcer`] holds the program and its links, [`reload`] puts a new policy in force,
//! [`watch`] follows interfaces and files, [`fault`] kills the process at named stages for the
//! fault tests.

pub mod enforcer;
pub mod error;
mod fault;
pub mod reload;
pub mod watch;

use std::net::SocketAddr;

use log::{info, warn};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

pub use crate::kernel::attach::{Attached, Mode};
use crate::{
    kernel::attach::if_index,
    observe::{counters::Counters, fill, metrics},
    policy::sources::SiteFiles,
};
use enforcer::compile_guarded;
pub use enforcer::{compile_site, Enforcer, Guard, StartOptions};
pub use error::DaemonError;
use reload::reload_logged;
use watch::Fingerprint;

type Result<T> = std::result::Result<T, DaemonError>;

/// How `run` enforces a site (`cli::run::RunArgs` says what each means).
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub mode: Mode,
    pub metrics: Option<SocketAddr>,
    pub monitor: bool,
    pub force: bool,
    pub persist: bool,
    pub forward: bool,
}

/// `dataplane run`: enforces the site of `files` until SIGINT or SIGTERM.
pub fn run(files: SiteFiles, a: RunOptions) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    // Links are pinned from the moment they attach and only a clean stop unpins them: hold the
    // stop signals until `serve` handles them, so that a SIGTERM during start-up stops cleanly
    // instead of killing the process and leaving the policy enforcing.
    stop_signals(SigmaskHow::SIG_BLOCK);
    // Before anything is loaded: a mistyped interface name must not leave half a run behind.
    for iface in &a.ifaces {
        if if_index(iface) == 0 {
            return Err(DaemonError::NoInterface { iface: iface.clone() });
        }
    }
    if a.forward && a.ifaces.len() < 2 {
        warn!("--forward: frames are forwarded in XDP only out of another --iface interface; with one, every allowed packet takes the kernel's path (name the inside interface too)");
    }
    // Before compiling: an edit made while starting is then seen as a change, and reloaded.
    let seen = watch::fingerprint(&files);
    let guard = Guard::for_run(a.monitor, a.force);
    let (tables, sources) = compile_guarded(&files, guard)?;
    // Bound before loading, so that a port in use fails before anything is attached.
    let server = a.metrics.map(metrics::Server::bind).transpose()?;
    let opts = StartOptions { monitor: a.monitor, persist: a.persist, forward: a.forward, guard, sources: Some(sources) };
    let site = files.site.clone();
    let (enforcer, modes) = Enforcer::start(files, tables, &a.ifaces, a.mode, None, opts)?;
    let info = metrics::MetricsInfo::new(&a.ifaces, &modes, metrics::PolicyInfo::new(&site, &enforcer.tables));
    let monitor = if a.monitor { ", monitor mode: would-be drops are counted, nothing is dropped" } else { "" };
    let persist = if a.persist { ", persisted: keeps enforcing after exit (dataplane detach removes it)" } else { "" };
    let forward = if a.forward { ", forwarding allowed packets in XDP" } else { "" };
    for (iface, mode) in a.ifaces.iter().zip(&modes) {
        println!(
            "{iface}: enforcing {} in {mode} mode: {} flows, {} protected prefixes{monitor}{persist}{forward}; counters: dataplane stats",
            site.display(),
            enforcer.tables.flows.len(),
            enforcer.tables.dir.dst_v4.len() + enforcer.tables.dir.dst_v6.len()
        );
    }
    if let Some(addr) = a.metrics {
        println!("metrics: http://{addr}/metrics");
    }
    let enforcer = serve(enforcer, seen, server, info)?;
    if a.persist {
        info!("stopping; the policy keeps enforcing on {} (persisted)", a.ifaces.join(", "));
    } else {
        info!("stopping: detaching from {}", a.ifaces.join(", "));
    }
    drop(enforcer);
    Ok(())
}

/// Enforces until SIGINT or SIGTERM: reloads on SIGHUP and when the site or a catalog changes,
/// and passes what the program logs to the log meanwhile.
fn serve(
    mut enforcer: Enforcer,
    mut seen: Fingerprint,
    server: Option<metrics::Server>,
    info: metrics::MetricsInfo,
) -> Result<Enforcer> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let (mut term, mut hup) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
        let mut int = signal(SignalKind::interrupt())?;
        // Handled from here on: what arrived while starting is delivered now.
        stop_signals(SigmaskHow::SIG_UNBLOCK);
        let mut logs = program_log(&mut enforcer)?;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut minute = tokio::time::interval(std::time::Duration::from_secs(60));
        let mut last_drops = drops(&enforcer);
        let serving = async {
            match server {
                Some(s) => s.run(info.clone()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(serving);
        loop {
            tokio::select! {
                _ = int.recv() => return Ok(enforcer),
                _ = term.recv() => return Ok(enforcer),
                r = &mut serving => return Err(DaemonError::MetricsStopped(r.err())),
                _ = hup.recv() => {
                    reload_logged(&mut enforcer, &info, "SIGHUP");
                    logs = program_log(&mut enforcer)?;
                }
                _ = minute.tick() => {
                    let now = drops(&enforcer);
                    summarize_drops(&last_drops, &now);
                    last_drops = now;
                }
                _ = tick.tick() => {
                    enforcer.watch_interfaces();
                    fill::watch(&enforcer.ebpf);
                    let now = watch::fingerprint(enforcer.files());
                    if now != seen {
                        seen = now;
                        reload_logged(&mut enforcer, &info, "the site or a catalog changed");
                        logs = program_log(&mut enforcer)?;
                    }
                }
                Ok(mut ready) = async { logs.as_mut().unwrap().readable_mut().await }, if logs.is_some() => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
            }
        }
    })
}

/// Blocks (`SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) SIGINT, SIGTERM and SIGHUP for this thread
/// (and the threads it starts later).
fn stop_signals(how: SigmaskHow) {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    let _ = pthread_sigmask(how, Some(&set), None);
}

/// Packets dropped so far, per reason (the shared counters carry over reloads).
fn drops(enforcer: &Enforcer) -> Vec<u64> {
    Counters::read(&enforcer.ebpf).map(|c| c.reasons.iter().map(|r| r.packets).collect()).unwrap_or_default()
}

/// Logs what was dropped since the last summary (`dataplane events` shows each packet).
fn summarize_drops(before: &[u64], now: &[u64]) {
    let parts: Vec<String> = dataplane_common::Reason::ALL
        .iter()
        .zip(now.iter().zip(before.iter().chain(std::iter::repeat(&0))))
        .filter(|(r, (n, b))| r.is_drop() && *n > *b)
        .map(|(r, (n, b))| format!("{} {}", r.name(), n - b))
        .collect();
    if !parts.is_empty() {
        info!("dropped in the last minute: {} (dataplane events shows them)", parts.join(", "));
    }
}

type ProgramLog = tokio::io::unix::AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>;

/// What the program logs (RUST_LOG=debug), to this process's log; each loaded program has its own.
fn program_log(enforcer: &mut Enforcer) -> Result<Option<ProgramLog>> {
    let Ok(logger) = aya_log::EbpfLogger::init(&mut enforcer.ebpf).map_err(|e| warn!("the program's log is not available: {e}"))
    else {
        return Ok(None);
    };
    // Safety: the logger owns its ring buffer's descriptor for as long as the AsyncFd lives.
    Ok(Some(unsafe { tokio::io::unix::AsyncFd::register(logger) }.map_err(std::io::Error::from)?))
}
