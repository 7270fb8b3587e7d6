//! `dataplane run`: compile a site, load the program, attach it to interfaces, pin its maps, and
//! enforce until SIGINT or SIGTERM; then detach cleanly.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aya::programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId, SchedClassifier, TcAttachType, XdpMode};
use log::{info, warn};

use crate::{load, state, tables::Tables};

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
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Count what would be dropped, drop nothing (for a safe rollout).
    #[arg(long)]
    pub monitor: bool,
    /// Enforce even if the site would cut the management connection this runs over.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Native,
    Skb,
}

/// Validates and compiles a site into the tables the maps will hold.
pub fn compile_site(site: &Path) -> Result<Tables> {
    let policy = crate::policy::load_site(site)?;
    crate::compile::compile(&policy)
}

/// The program, loaded with a policy, attached to interfaces and pinned for `stats`.
pub struct Enforcer {
    pub ebpf: aya::Ebpf,
    links: Vec<XdpLinkId>,
    egress_links: Vec<SchedClassifierLinkId>,
    _pins: state::Pins,
}

impl Enforcer {
    /// Loads `tables`, pins the maps and records the state, then attaches to each interface
    /// (`netns`: inside that network namespace). Returns the mode used per interface.
    pub fn start(site: &Path, tables: &Tables, ifaces: &[String], mode: Mode, netns: Option<&str>) -> Result<(Self, Vec<&'static str>)> {
        let mut ebpf = load::load(tables)?;
        let pins = state::Pins::create(&ebpf, site, tables, ifaces)?;
        let (mut links, mut egress_links, mut modes) = (vec![], vec![], vec![]);
        let in_ns = |f: &mut dyn FnMut() -> Result<()>| match netns {
            Some(ns) => crate::netns::in_netns(ns, f)?,
            None => f(),
        };
        for iface in ifaces {
            in_ns(&mut || {
                let (link, used) = attach(load::program(&mut ebpf)?, iface, mode)?;
                links.push(link);
                modes.push(used);
                egress_links.push(attach_egress(load::egress(&mut ebpf)?, iface)?);
                Ok(())
            })?;
        }
        Ok((Self { ebpf, links, egress_links, _pins: pins }, modes))
    }
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
fn attach_egress(prog: &mut SchedClassifier, iface: &str) -> Result<SchedClassifierLinkId> {
    match prog.attach(iface, TcAttachType::Egress) {
        Ok(link) => Ok(link),
        Err(_) => {
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
            prog.attach(iface, TcAttachType::Egress)
                .with_context(|| format!("attaching the egress program to {iface}"))
        }
    }
}

fn attach(prog: &mut aya::programs::Xdp, iface: &str, mode: Mode) -> Result<(XdpLinkId, &'static str)> {
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
    let tables = compile_site(&a.site)?;
    let (mut enforcer, modes) = Enforcer::start(&a.site, &tables, &a.ifaces, a.mode, None)?;
    // What the program logs (RUST_LOG=debug) goes to this process's log.
    let logger = aya_log::EbpfLogger::init(&mut enforcer.ebpf)
        .map_err(|e| warn!("the program's log is not available: {e}"))
        .ok();
    for (iface, mode) in a.ifaces.iter().zip(&modes) {
        println!(
            "{iface}: enforcing {} in {mode} mode: {} flows, {} protected prefixes; counters: dataplane stats",
            a.site.display(),
            tables.flows.len(),
            tables.dst_v4.len() + tables.dst_v6.len()
        );
    }
    wait_for_signal(logger)?;
    info!("stopping: detaching from {}", a.ifaces.join(", "));
    drop(enforcer);
    Ok(())
}

/// Blocks until SIGINT or SIGTERM, passing what the program logs to the log meanwhile.
pub fn wait_for_signal(logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Safety: the logger owns its ring buffer's descriptor for as long as the AsyncFd lives.
        let mut logs = match logger {
            Some(l) => Some(unsafe { tokio::io::unix::AsyncFd::register(l) }.map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r.map_err(anyhow::Error::from),
                _ = term.recv() => return Ok(()),
                Ok(mut ready) = async { logs.as_mut().unwrap().readable_mut().await }, if logs.is_some() => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
            }
        }
    })
}
