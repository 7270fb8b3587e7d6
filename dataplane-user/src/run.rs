//! `dataplane run`: compile a site, load the program, attach it to interfaces, pin its maps, and
//! enforce until SIGINT or SIGTERM; then detach cleanly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId, SchedClassifier, TcAttachType, XdpMode};
use log::{info, warn};

use dataplane_common::CONFIG_MONITOR;

use crate::{load, metrics, persist, slots::StableSlots, state, tables::Tables};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Site file (policies/sites/*.yaml).
    #[arg(long)]
    pub site: PathBuf,
    /// Interface to enforce on (repeat for several).
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// native: in the driver; skb: generic mode; auto: native, else skb with a warning.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (without a value: loopback only,
    /// 127.0.0.1:9750).
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:9750")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Count what would be dropped, drop nothing (for a safe rollout).
    #[arg(long)]
    pub monitor: bool,
    /// Enforce even if the site would cut the management connection this runs over.
    #[arg(long)]
    pub force: bool,
    /// Keep enforcing after this process exits or crashes (links and maps stay pinned); a later
    /// run adopts them without a gap. `dataplane detach` removes them.
    #[arg(long)]
    pub persist: bool,
}

/// How `Enforcer::start` runs the policy.
#[derive(Clone, Copy, Default)]
pub struct StartOptions {
    pub monitor: bool,
    pub persist: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Native,
    Skb,
}

/// Validates and compiles a site into the tables the maps will hold.
pub fn compile_site(site: &Path) -> Result<Tables> {
    compile_guarded(site, None)
}

/// As `compile_site`; with `Some(force)`, also refuses (or with force, warns about) a site that
/// would lock the operator out (see `lockout`).
fn compile_guarded(site: &Path, guard: Option<bool>) -> Result<Tables> {
    let policy = crate::policy::load_site(site)?;
    let tables = crate::compile::compile(&policy)?;
    if let Some(force) = guard {
        crate::lockout::guard(&policy, &tables, crate::lockout::ssh_session_from_env().as_ref(), force)?;
    }
    Ok(tables)
}

/// The program, loaded with a policy, attached to interfaces and pinned for `stats`; reloadable.
pub struct Enforcer {
    pub ebpf: aya::Ebpf,
    /// The tables enforced now, on stable counter slots.
    pub tables: Tables,
    /// Policy generation: 1 at start, one more per reload.
    pub generation: u32,
    links: Vec<XdpLinkId>,
    egress_links: Vec<SchedClassifierLinkId>,
    pins: state::Pins,
    slots: StableSlots,
    site: PathBuf,
    ifaces: Vec<String>,
    /// `CONFIG_*` flags every policy gets (monitor mode).
    flags: u32,
    /// Counter slots the shared counter maps hold (fixed at start).
    capacity: (u32, u32),
    /// The lockout guard for reloads: None (off), or Some(force).
    pub guard: Option<bool>,
}

/// Counter slots to make room for: policies may grow by reloads.
fn capacity(slots: usize) -> u32 {
    (slots * 2).max(slots + 256) as u32
}

impl Enforcer {
    /// Loads `tables`, pins the maps and records the state, then attaches to each interface
    /// (`netns`: inside that network namespace). Returns the mode used per interface.
    pub fn start(
        site: &Path,
        mut tables: Tables,
        ifaces: &[String],
        mode: Mode,
        netns: Option<&str>,
        opts: StartOptions,
    ) -> Result<(Self, Vec<&'static str>)> {
        let (pins, adopted) = state::Pins::prepare(opts.persist)?;
        // Adopting a persisted run: its counter slots, a newer generation, its counter maps.
        let mut slots = match &adopted {
            Some(old) => StableSlots::from_flows(&old.flows, &old.outbound),
            None => StableSlots::default(),
        };
        slots.apply(&mut tables);
        let flags = if opts.monitor { CONFIG_MONITOR } else { 0 };
        tables.config.flags |= flags;
        let out_slots = tables.outbound.as_ref().map_or(0, |o| o.flows.len());
        let mut capacity = (capacity(tables.flows.len()), capacity(out_slots));
        if let Some(old) = &adopted {
            tables.config.generation = old.generation + 1;
            if old.capacity.0 > 0 {
                capacity = old.capacity;
            }
            if tables.flows.len() > capacity.0 as usize || out_slots > capacity.1 as usize {
                bail!("the policy has more flows than the persisted counter maps hold: `dataplane detach`, then run again");
            }
        }
        let mut ebpf = load::load_with(&tables, &shared(capacity))?;
        pins.record(&ebpf, site, &tables, ifaces, capacity)?;
        let (mut links, mut egress_links, mut modes) = (vec![], vec![], vec![]);
        let in_ns = |f: &mut dyn FnMut() -> Result<()>| match netns {
            Some(ns) => crate::netns::in_netns(ns, f)?,
            None => f(),
        };
        for iface in ifaces {
            in_ns(&mut || {
                let (link, used) = persist::xdp(load::program(&mut ebpf)?, iface, mode, opts.persist)?;
                links.push(link);
                modes.push(used);
                egress_links.push(persist::tc(load::egress(&mut ebpf)?, iface, opts.persist)?);
                Ok(())
            })?;
        }
        let generation = tables.config.generation;
        let enforcer = Self {
            ebpf,
            tables,
            generation,
            links,
            egress_links,
            pins,
            slots,
            site: site.to_path_buf(),
            ifaces: ifaces.to_vec(),
            flags,
            capacity,
            guard: None,
        };
        Ok((enforcer, modes))
    }

    /// Compiles the site again and switches every interface to it at once: a new program with
    /// the new policy maps replaces the old one behind each link (BPF_LINK_UPDATE), so every
    /// packet is judged wholly by the old policy or wholly by the new one. Counters, tracked
    /// connections and fragments live in the shared maps and carry over. On any error nothing
    /// changes: the running policy keeps enforcing.
    pub fn reload(&mut self) -> Result<()> {
        let mut tables = compile_guarded(&self.site, self.guard)?;
        self.slots.apply(&mut tables);
        let out_slots = tables.outbound.as_ref().map_or(0, |o| o.flows.len());
        if tables.flows.len() > self.capacity.0 as usize || out_slots > self.capacity.1 as usize {
            bail!(
                "the new policy needs {} flow and {out_slots} outbound counter slots, more than the {} and {} this run made room for: restart dataplane run",
                tables.flows.len(),
                self.capacity.0,
                self.capacity.1
            );
        }
        tables.config.flags |= self.flags;
        tables.config.generation = self.generation + 1;
        let mut new = load::load_with(&tables, &shared(self.capacity))?;
        for link in std::mem::take(&mut self.links) {
            let link = load::program(&mut self.ebpf)?.take_link(link)?;
            self.links.push(load::program(&mut new)?.attach_to_link(link).context("switching an XDP link")?);
        }
        for link in std::mem::take(&mut self.egress_links) {
            let link = load::egress(&mut self.ebpf)?.take_link(link)?;
            self.egress_links.push(load::egress(&mut new)?.attach_to_link(link).context("switching a tc link")?);
        }
        // The old program has no link left: dropping it detaches nothing.
        self.ebpf = new;
        self.generation = tables.config.generation;
        self.pins.record(&self.ebpf, &self.site, &tables, &self.ifaces, self.capacity)?;
        self.tables = tables;
        Ok(())
    }
}

fn shared(capacity: (u32, u32)) -> load::Shared {
    load::Shared { pin_dir: Some(state::PIN_DIR.into()), flow_slots: capacity.0, out_slots: capacity.1 }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        if let Ok(prog) = load::program(&mut self.ebpf) {
            for link in self.links.drain(..) {
                let _ = prog.detach(link);
            }
        }
        if let Ok(prog) = load::egress(&mut self.ebpf) {
            for link in self.egress_links.drain(..) {
                let _ = prog.detach(link);
            }
        }
    }
}

/// The egress program records the connections protected servers open (TCX on Linux 6.6 and
/// later; a clsact qdisc before).
pub(crate) fn attach_egress(prog: &mut SchedClassifier, iface: &str) -> Result<SchedClassifierLinkId> {
    match prog.attach(iface, TcAttachType::Egress) {
        Ok(link) => Ok(link),
        Err(_) => {
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
            prog.attach(iface, TcAttachType::Egress)
                .with_context(|| format!("attaching the egress program to {iface}"))
        }
    }
}

pub(crate) fn attach(prog: &mut aya::programs::Xdp, iface: &str, mode: Mode) -> Result<(XdpLinkId, &'static str)> {
    if mode != Mode::Skb {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(link) => return Ok((link, "native")),
            Err(e) if mode == Mode::Auto => {
                warn!("{iface}: native XDP is not available ({e}); falling back to generic (skb) mode, which runs later and costs more per packet");
            }
            Err(e) => return Err(e).with_context(|| format!("attaching natively to {iface} (try --mode skb)")),
        }
    }
    let link = prog.attach(iface, XdpMode::Skb).with_context(|| format!("attaching to {iface} in skb mode"))?;
    Ok((link, "skb"))
}

pub fn run(a: RunArgs) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("`dataplane run` loads an XDP program: run it as root (CAP_BPF and CAP_NET_ADMIN)");
    }
    // Before compiling: an edit made while starting is then seen as a change, and reloaded.
    let seen = fingerprint(&a.site);
    // Monitor mode drops nothing, so it cannot lock anyone out.
    let guard = (!a.monitor).then_some(a.force);
    let tables = compile_guarded(&a.site, guard)?;
    // Bound before loading, so that a port in use fails before anything is attached.
    let server = a.metrics.map(metrics::Server::bind).transpose()?;
    let opts = StartOptions { monitor: a.monitor, persist: a.persist };
    let (mut enforcer, modes) = Enforcer::start(&a.site, tables, &a.ifaces, a.mode, None, opts)?;
    enforcer.guard = guard;
    let info = metrics::MetricsInfo::new(&a.ifaces, &modes, metrics::PolicyInfo::new(&a.site, &enforcer.tables));
    let monitor = if a.monitor { ", monitor mode: would-be drops are counted, nothing is dropped" } else { "" };
    let persist = if a.persist { ", persisted: keeps enforcing after exit (dataplane detach removes it)" } else { "" };
    for (iface, mode) in a.ifaces.iter().zip(&modes) {
        println!(
            "{iface}: enforcing {} in {mode} mode: {} flows, {} protected prefixes{monitor}{persist}; counters: dataplane stats",
            a.site.display(),
            enforcer.tables.flows.len(),
            enforcer.tables.dst_v4.len() + enforcer.tables.dst_v6.len()
        );
    }
    if let Some(addr) = a.metrics {
        println!("metrics: http://{addr}/metrics");
    }
    let enforcer = serve(enforcer, &a.site, seen, server, info)?;
    if a.persist {
        info!("stopping; the policy keeps enforcing on {} (persisted)", a.ifaces.join(", "));
    } else {
        info!("stopping: detaching from {}", a.ifaces.join(", "));
    }
    drop(enforcer);
    Ok(())
}

/// The files a site depends on, with their modification times: a change means reload.
fn fingerprint(site: &Path) -> Vec<(PathBuf, Option<std::time::SystemTime>)> {
    let mut files = vec![site.to_path_buf()];
    if let Ok(dir) = std::fs::read_dir(crate::policy::catalog_dir(None, Some(site))) {
        files.extend(dir.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "yaml")));
    }
    files.sort();
    files.into_iter().map(|p| { let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok(); (p, m) }).collect()
}

/// Reloads and logs the outcome; the running policy stays on any error.
fn reload(enforcer: &mut Enforcer, site: &Path, info: &metrics::MetricsInfo, why: &str) {
    let started = std::time::Instant::now();
    match enforcer.reload() {
        Ok(()) => {
            info.set_policy(metrics::PolicyInfo::new(site, &enforcer.tables));
            info.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(
                "reloaded ({why}) in {:.1?}: generation {}, {} flows",
                started.elapsed(),
                enforcer.generation,
                enforcer.tables.flows.len()
            )
        }
        Err(e) => {
            info.reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::error!("reload ({why}) failed, the previous policy keeps enforcing: {e:#}")
        }
    }
}

/// Enforces until SIGINT or SIGTERM: reloads on SIGHUP and when the site or a catalog changes,
/// and passes what the program logs to the log meanwhile.
fn serve(
    mut enforcer: Enforcer,
    site: &Path,
    mut seen: Vec<(PathBuf, Option<std::time::SystemTime>)>,
    server: Option<metrics::Server>,
    info: metrics::MetricsInfo,
) -> Result<Enforcer> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let (mut term, mut hup) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
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
                r = tokio::signal::ctrl_c() => { r?; return Ok(enforcer) }
                _ = term.recv() => return Ok(enforcer),
                r = &mut serving => return Err(r.context("the metrics server stopped").unwrap_err()),
                _ = hup.recv() => {
                    reload(&mut enforcer, site, &info, "SIGHUP");
                    logs = program_log(&mut enforcer)?;
                }
                _ = minute.tick() => {
                    let now = drops(&enforcer);
                    summarize_drops(&last_drops, &now);
                    last_drops = now;
                }
                _ = tick.tick() => {
                    let now = fingerprint(site);
                    if now != seen {
                        seen = now;
                        reload(&mut enforcer, site, &info, "the site or a catalog changed");
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

/// Packets dropped so far, per reason (the shared counters carry over reloads).
fn drops(enforcer: &Enforcer) -> Vec<u64> {
    load::Counters::read(&enforcer.ebpf).map(|c| c.reasons.iter().map(|r| r.packets).collect()).unwrap_or_default()
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
    let Ok(logger) = aya_log::EbpfLogger::init(&mut enforcer.ebpf).map_err(|e| warn!("the program's log is not available: {e}")) else {
        return Ok(None);
    };
    // Safety: the logger owns its ring buffer's descriptor for as long as the AsyncFd lives.
    Ok(Some(unsafe { tokio::io::unix::AsyncFd::register(logger) }.map_err(|e| anyhow::anyhow!("{e}"))?))
}
