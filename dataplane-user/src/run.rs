//! `dataplane run`: compile a site, load the program, attach it to interfaces, pin its maps, and
//! enforce until SIGINT or SIGTERM; then detach cleanly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId, SchedClassifier, TcAttachType, XdpMode};
use log::{info, warn};

use dataplane_common::{CONFIG_FORWARD, CONFIG_MONITOR};

use crate::{
    load, metrics, persist,
    slots::StableSlots,
    sources::{Loaded, Sources},
    state,
    tables::Tables,
};

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
    /// Keep enforcing after this process exits (links and maps stay pinned); a later run adopts
    /// them without a gap, and `dataplane detach` removes them. Without it a clean stop
    /// (SIGINT, SIGTERM) detaches; a crash or SIGKILL never does: the last policy stays.
    #[arg(long)]
    pub persist: bool,
    /// Gateway: forward the allowed packets to protected servers in XDP when the kernel's FIB
    /// and neighbour table route them out of another --iface interface; the rest takes the
    /// kernel's path as without it (docs/operations.md, "Gateway").
    #[arg(long)]
    pub forward: bool,
}

/// How `Enforcer::start` runs the policy.
#[derive(Clone, Default)]
pub struct StartOptions {
    pub monitor: bool,
    pub persist: bool,
    /// XDP forwarding of allowed packets (`run --forward`).
    pub forward: bool,
    /// What the tables were compiled from, for the state (`diff`); None: read the site again.
    pub sources: Option<Sources>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Native,
    Skb,
}

/// Validates and compiles a site into the tables the maps will hold.
pub fn compile_site(site: &Path) -> Result<Tables> {
    compile_guarded(site, None).map(|(tables, _)| tables)
}

/// As `compile_site`; with `Some(force)`, also refuses (or with force, warns about) a site that
/// would lock the operator out (see `lockout`).
/// Also returns the texts compiled, read once, so that the state records exactly them.
fn compile_guarded(site: &Path, guard: Option<bool>) -> Result<(Tables, Sources)> {
    let Loaded { policy, sources, .. } = Loaded::read(site, None)?;
    let tables = crate::compile::compile(&policy)?;
    if let Some(force) = guard {
        crate::lockout::guard(&policy, &tables, crate::lockout::ssh_session_from_env().as_ref(), force)?;
    }
    Ok((tables, sources))
}

/// The program, loaded with a policy, attached to interfaces and pinned for `stats`; reloadable.
pub struct Enforcer {
    pub ebpf: aya::Ebpf,
    /// The tables enforced now, on stable counter slots.
    pub tables: Tables,
    /// Policy generation: 1 at start, one more per reload.
    pub generation: u32,
    /// Per interface (in `ifaces` order): its links, None while the interface is gone.
    links: Vec<Option<XdpLinkId>>,
    egress_links: Vec<Option<SchedClassifierLinkId>>,
    /// Per interface: the index it had when attached (0: gone). A new index means the interface
    /// was removed and created again.
    ifindex: Vec<u32>,
    mode: Mode,
    /// The network namespace the interfaces are in, when not this process's (the lab).
    netns: Option<String>,
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
    /// What the enforced policy was compiled from (the state records it for `diff`).
    pub sources: Option<Sources>,
    /// When the last reload swapped the policy image (None: none since the program was loaded).
    swapped: Option<std::time::Instant>,
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
        fault_point("start:prepared");
        let adopted = match adopted {
            Some(old) if !fits(&old, &tables) => {
                warn!(
                    "the policy has more flows than the counter maps the previous run left: new maps, counters start from zero"
                );
                state::remove_maps();
                None
            }
            adopted => adopted,
        };
        // Adopting what a dead run left: its counter slots, a newer generation, its counter maps.
        let mut slots = match &adopted {
            Some(old) => StableSlots::from_flows(&old.flows, &old.outbound),
            None => StableSlots::default(),
        };
        slots.apply(&mut tables);
        let flags = if opts.monitor { CONFIG_MONITOR } else { 0 } | if opts.forward { CONFIG_FORWARD } else { 0 };
        tables.config.flags |= flags;
        let out_slots = tables.outbound.as_ref().map_or(0, |o| o.flows.len());
        let mut capacity = (capacity(tables.flows.len()), capacity(out_slots));
        if let Some(old) = &adopted {
            tables.config.generation = old.generation + 1;
            if old.capacity.0 > 0 {
                capacity = old.capacity;
            }
        }
        let mut ebpf = load::load_with(&tables, &shared(capacity))?;
        fault_point("start:loaded");
        let sources = opts.sources.or_else(|| Loaded::read(site, None).ok().map(|l| l.sources));
        pins.record(&ebpf, site, &tables, ifaces, capacity, sources.as_ref())?;
        fault_point("start:recorded");
        let (mut links, mut egress_links, mut modes, mut ifindex) = (vec![], vec![], vec![], vec![]);
        let in_ns = |f: &mut dyn FnMut() -> Result<()>| match netns {
            Some(ns) => crate::netns::in_netns(ns, f)?,
            None => f(),
        };
        for iface in ifaces {
            in_ns(&mut || {
                let (link, used) = persist::xdp(load::program(&mut ebpf)?, iface, mode)?;
                links.push(Some(link));
                modes.push(used);
                fault_point("start:attached-xdp");
                egress_links.push(Some(persist::tc(load::egress(&mut ebpf)?, iface)?));
                ifindex.push(if_index(iface));
                Ok(())
            })?;
        }
        if opts.forward {
            in_ns(&mut || crate::forward::fill(&mut ebpf, &ifindex))?;
        }
        for gone in state::remove_other_links(ifaces) {
            info!("detached {gone}, which a previous run left enforcing on an interface this run does not name");
        }
        fault_point("start:attached");
        let generation = tables.config.generation;
        let enforcer = Self {
            ebpf,
            tables,
            generation,
            links,
            egress_links,
            ifindex,
            mode,
            netns: netns.map(str::to_owned),
            pins,
            slots,
            site: site.to_path_buf(),
            ifaces: ifaces.to_vec(),
            flags,
            capacity,
            guard: None,
            sources,
            swapped: None,
        };
        Ok((enforcer, modes))
    }

    /// Compiles the site again and switches every interface to it at once. The running programs
    /// stay: the new policy image is written into the image map not in force, then one store
    /// switches the XDP and tc programs to it, so every packet is judged wholly by the old policy
    /// or wholly by the new one, and nothing is verified again. Only a policy that outgrows the
    /// image maps takes a new program with larger ones (`reload_program`). Counters, tracked
    /// connections and fragments live in the shared maps and carry over. On any error nothing
    /// changes: the running policy keeps enforcing.
    pub fn reload(&mut self) -> Result<()> {
        let (mut tables, sources) = compile_guarded(&self.site, self.guard)?;
        fault_point("reload:compiled");
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
        // The image about to be overwritten was in force until the last swap: leave packets
        // that were walking it (they take microseconds) time to finish.
        if let Some(at) = self.swapped {
            std::thread::sleep(SWAP_SPACING.saturating_sub(at.elapsed()));
        }
        if let Some(swap) = load::write_inactive(&mut self.ebpf, &tables)? {
            fault_point("reload:written");
            swap.commit(&mut self.ebpf)?;
            self.swapped = Some(std::time::Instant::now());
            fault_point("reload:switched");
        } else {
            info!("the new policy image outgrows the image maps: loading the program with larger ones");
            self.reload_program(&tables)?;
        }
        self.generation = tables.config.generation;
        self.pins.record(&self.ebpf, &self.site, &tables, &self.ifaces, self.capacity, Some(&sources))?;
        self.tables = tables;
        self.sources = Some(sources);
        Ok(())
    }

    /// A new program with larger policy maps replaces the old one behind each link
    /// (BPF_LINK_UPDATE), XDP then tc.
    fn reload_program(&mut self, tables: &Tables) -> Result<()> {
        let mut new = load::load_with(tables, &shared(self.capacity))?;
        fault_point("reload:loaded");
        // An interface removed since the last look has a link the kernel detached: updating it
        // would fail; it is attached anew when the interface comes back (`watch_interfaces`).
        self.watch_interfaces();
        for link in std::mem::take(&mut self.links) {
            let switched = match link {
                Some(l) => {
                    let l = load::program(&mut self.ebpf)?.take_link(l)?;
                    Some(load::program(&mut new)?.attach_to_link(l).context("switching an XDP link")?)
                }
                None => None,
            };
            self.links.push(switched);
        }
        fault_point("reload:switched-xdp");
        for link in std::mem::take(&mut self.egress_links) {
            let switched = match link {
                Some(l) => {
                    let l = load::egress(&mut self.ebpf)?.take_link(l)?;
                    Some(load::egress(&mut new)?.attach_to_link(l).context("switching a tc link")?)
                }
                None => None,
            };
            self.egress_links.push(switched);
        }
        // The old program has no link left: dropping it detaches nothing.
        self.ebpf = new;
        self.in_netns(|e| e.fill_forward_ports())??;
        self.swapped = None;
        fault_point("reload:switched");
        Ok(())
    }
}

/// The least time between two image swaps: a packet walks an image for microseconds, and the
/// image a swap leaves is the one the next swap overwrites.
const SWAP_SPACING: std::time::Duration = std::time::Duration::from_millis(5);

/// Whether a policy, on the counter slots a dead run left, fits that run's counter maps.
fn fits(old: &state::State, tables: &Tables) -> bool {
    let mut t = tables.clone();
    StableSlots::from_flows(&old.flows, &old.outbound).apply(&mut t);
    let out = t.outbound.as_ref().map_or(0, |o| o.flows.len());
    old.capacity.0 == 0 || (t.flows.len() <= old.capacity.0 as usize && out <= old.capacity.1 as usize)
}

/// Fault injection for the tests (tests/tests/faults.rs): `DATAPLANE_FAULT=<stage>` kills this
/// process with SIGKILL when it reaches that stage of start-up or reload.
fn fault_point(stage: &str) {
    if std::env::var_os("DATAPLANE_FAULT").is_some_and(|s| s == stage) {
        log::warn!("DATAPLANE_FAULT: killed at {stage}");
        // Safety: raising a signal has no memory effects.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

impl Enforcer {
    /// Notices interfaces removed, and created again, since the last look: a removed interface
    /// took its links with it (the kernel detaches them); one that is back gets the running
    /// policy attached anew. Each change is logged.
    pub fn watch_interfaces(&mut self) {
        for i in 0..self.ifaces.len() {
            let now = self.in_netns(|e| if_index(&e.ifaces[i])).unwrap_or(0);
            if now == self.ifindex[i] {
                continue;
            }
            let iface = self.ifaces[i].clone();
            if self.ifindex[i] != 0 {
                // Whatever it is now, the links went with the old interface.
                self.drop_links(i);
            }
            if now == 0 {
                log::error!("{iface}: the interface is gone, and nothing is enforced on it; the policy is attached again when it comes back");
            } else {
                match self.attach_again(i) {
                    Ok(mode) => warn!("{iface}: the interface is back (index {now}): enforcing again in {mode} mode"),
                    Err(e) => {
                        log::error!("{iface}: the interface is back but attaching failed: {e:#}; trying again in a second");
                        continue;
                    }
                }
            }
            self.ifindex[i] = now;
        }
    }

    fn drop_links(&mut self, i: usize) {
        if let (Some(l), Ok(prog)) = (self.links[i].take(), load::program(&mut self.ebpf)) {
            let _ = prog.take_link(l);
        }
        if let (Some(l), Ok(prog)) = (self.egress_links[i].take(), load::egress(&mut self.ebpf)) {
            let _ = prog.take_link(l);
        }
        for kind in ["xdp", "tc"] {
            state::unpin_link(&state::link_pin(&self.ifaces[i], kind));
        }
    }

    fn attach_again(&mut self, i: usize) -> Result<&'static str> {
        self.drop_links(i);
        self.in_netns(|e| {
            let (link, mode) = persist::xdp(load::program(&mut e.ebpf)?, &e.ifaces[i], e.mode)?;
            e.links[i] = Some(link);
            e.egress_links[i] = Some(persist::tc(load::egress(&mut e.ebpf)?, &e.ifaces[i])?);
            e.fill_forward_ports()?;
            Ok(mode)
        })?
    }

    /// With `--forward`: the interfaces present now, as forwarding targets (in their namespace).
    fn fill_forward_ports(&mut self) -> Result<()> {
        if self.flags & CONFIG_FORWARD == 0 {
            return Ok(());
        }
        let now: Vec<u32> = self.ifaces.iter().map(|i| if_index(i)).collect();
        crate::forward::fill(&mut self.ebpf, &now)
    }

    /// Runs `f` in the interfaces' network namespace.
    fn in_netns<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<T> {
        match self.netns.clone() {
            Some(ns) => crate::netns::in_netns(&ns, || f(self)),
            None => Ok(f(self)),
        }
    }
}

/// The interface's index, 0 when there is no such interface.
fn if_index(iface: &str) -> u32 {
    std::ffi::CString::new(iface).map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) })
}

fn shared(capacity: (u32, u32)) -> load::Shared {
    load::Shared { pin_dir: Some(state::PIN_DIR.into()), flow_slots: capacity.0, out_slots: capacity.1 }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        if let Ok(prog) = load::program(&mut self.ebpf) {
            for link in self.links.drain(..).flatten() {
                let _ = prog.detach(link);
            }
        }
        if let Ok(prog) = load::egress(&mut self.ebpf) {
            for link in self.egress_links.drain(..).flatten() {
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
            prog.attach(iface, TcAttachType::Egress).with_context(|| format!("attaching the egress program to {iface}"))
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
    // Links are pinned from the moment they attach and only a clean stop unpins them: hold the
    // stop signals until `serve` handles them, so that a SIGTERM during start-up stops cleanly
    // instead of killing the process and leaving the policy enforcing.
    stop_signals(libc::SIG_BLOCK);
    // Before anything is loaded: a mistyped interface name must not leave half a run behind.
    for iface in &a.ifaces {
        if if_index(iface) == 0 {
            bail!("no interface named {iface} in this network namespace (see `ip link`)");
        }
    }
    if a.forward && a.ifaces.len() < 2 {
        warn!("--forward: frames are forwarded in XDP only out of another --iface interface; with one, every allowed packet takes the kernel's path (name the inside interface too)");
    }
    // Before compiling: an edit made while starting is then seen as a change, and reloaded.
    let seen = fingerprint(&a.site);
    // Monitor mode drops nothing, so it cannot lock anyone out.
    let guard = (!a.monitor).then_some(a.force);
    let (tables, sources) = compile_guarded(&a.site, guard)?;
    // Bound before loading, so that a port in use fails before anything is attached.
    let server = a.metrics.map(metrics::Server::bind).transpose()?;
    let opts = StartOptions { monitor: a.monitor, persist: a.persist, forward: a.forward, sources: Some(sources) };
    let (mut enforcer, modes) = Enforcer::start(&a.site, tables, &a.ifaces, a.mode, None, opts)?;
    enforcer.guard = guard;
    let info = metrics::MetricsInfo::new(&a.ifaces, &modes, metrics::PolicyInfo::new(&a.site, &enforcer.tables));
    let monitor = if a.monitor { ", monitor mode: would-be drops are counted, nothing is dropped" } else { "" };
    let persist = if a.persist { ", persisted: keeps enforcing after exit (dataplane detach removes it)" } else { "" };
    let forward = if a.forward { ", forwarding allowed packets in XDP" } else { "" };
    for (iface, mode) in a.ifaces.iter().zip(&modes) {
        println!(
            "{iface}: enforcing {} in {mode} mode: {} flows, {} protected prefixes{monitor}{persist}{forward}; counters: dataplane stats",
            a.site.display(),
            enforcer.tables.flows.len(),
            enforcer.tables.dir.dst_v4.len() + enforcer.tables.dir.dst_v6.len()
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
    files
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect()
}

/// Reloads and logs the outcome; the running policy stays on any error.
fn reload(enforcer: &mut Enforcer, site: &Path, info: &metrics::MetricsInfo, why: &str) {
    let started = std::time::Instant::now();
    let before = enforcer.sources.clone();
    match enforcer.reload() {
        Ok(()) => {
            info.set_policy(metrics::PolicyInfo::new(site, &enforcer.tables));
            info.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(
                "reloaded ({why}) in {:.1?}: generation {}, {} flows",
                started.elapsed(),
                enforcer.generation,
                enforcer.tables.flows.len()
            );
            info!("{}", crate::diff::reload_summary(before.as_ref(), enforcer.sources.as_ref()));
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
        let mut int = signal(SignalKind::interrupt())?;
        // Handled from here on: what arrived while starting is delivered now.
        stop_signals(libc::SIG_UNBLOCK);
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
                    enforcer.watch_interfaces();
                    crate::fill::watch(&enforcer.ebpf);
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

/// Blocks (`SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) SIGINT, SIGTERM and SIGHUP for this thread
/// (and the threads it starts later).
fn stop_signals(how: libc::c_int) {
    // Safety: a sigset on the stack, filled and passed to pthread_sigmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
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
    let Ok(logger) = aya_log::EbpfLogger::init(&mut enforcer.ebpf).map_err(|e| warn!("the program's log is not available: {e}"))
    else {
        return Ok(None);
    };
    // Safety: the logger owns its ring buffer's descriptor for as long as the AsyncFd lives.
    Ok(Some(unsafe { tokio::io::unix::AsyncFd::register(logger) }.map_err(|e| anyhow::anyhow!("{e}"))?))
}
