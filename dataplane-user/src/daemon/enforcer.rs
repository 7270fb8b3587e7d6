//! The enforcer: the program loaded with a policy, attached to each interface, its maps pinned
//! and its state recorded; what `run`, the lab and the tests hold while they enforce.

use std::path::{Path, PathBuf};

use anyhow::Result;
use aya::programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId};
use log::{info, warn};

use dataplane_common::{CONFIG_FORWARD, CONFIG_MONITOR};

use super::fault;
use crate::{
    compile::{self, slots::StableSlots, tables::Tables},
    kernel::{
        attach::{self, if_index, Attached, Mode},
        forward,
        images::PolicyMaps,
        load::{self, CounterSlots, Object},
        netns, pins, state,
    },
    policy::sources::{Loaded, Sources},
    rollout::lockout,
};

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

/// Validates and compiles a site into the tables the maps will hold.
pub fn compile_site(site: &Path) -> Result<Tables> {
    compile_guarded(site, None).map(|(tables, _)| tables)
}

/// As `compile_site`; with `Some(force)`, also refuses (or with force, warns about) a site that
/// would lock the operator out (see `lockout`).
/// Also returns the texts compiled, read once, so that the state records exactly them.
pub(super) fn compile_guarded(site: &Path, guard: Option<bool>) -> Result<(Tables, Sources)> {
    let Loaded { policy, sources, .. } = Loaded::read(site, None)?;
    let tables = compile::compile(&policy)?;
    if let Some(force) = guard {
        lockout::guard(&policy, &tables, lockout::ssh_session_from_env().as_ref(), force)?;
    }
    Ok((tables, sources))
}

/// The program, loaded with a policy, attached to interfaces and pinned for `stats`; reloadable.
pub struct Enforcer {
    pub ebpf: aya::Ebpf,
    /// The policy images and the run config of `ebpf`.
    pub(super) policy: PolicyMaps,
    /// The tables enforced now, on stable counter slots.
    pub tables: Tables,
    /// Policy generation: 1 at start, one more per reload.
    pub generation: u32,
    /// Per interface (in `ifaces` order): its links, None while the interface is gone.
    pub(super) links: Vec<Option<XdpLinkId>>,
    pub(super) egress_links: Vec<Option<SchedClassifierLinkId>>,
    /// Per interface: the index it had when attached (0: gone). A new index means the interface
    /// was removed and created again.
    pub(super) ifindex: Vec<u32>,
    pub(super) mode: Mode,
    /// The network namespace the interfaces are in, when not this process's (the lab).
    pub(super) netns: Option<String>,
    pub(super) pins: state::Pins,
    pub(super) slots: StableSlots,
    pub(super) site: PathBuf,
    pub(super) ifaces: Vec<String>,
    /// `CONFIG_*` flags every policy gets (monitor mode).
    pub(super) flags: u32,
    /// Counter slots the shared counter maps hold (fixed at start).
    pub(super) capacity: CounterSlots,
    /// The lockout guard for reloads: None (off), or Some(force).
    pub guard: Option<bool>,
    /// What the enforced policy was compiled from (the state records it for `diff`).
    pub sources: Option<Sources>,
    /// When the last reload swapped the policy image (None: none since the program was loaded).
    pub(super) swapped: Option<std::time::Instant>,
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
    ) -> Result<(Self, Vec<Attached>)> {
        let (pins, adopted) = state::Pins::prepare(opts.persist)?;
        fault::point("start:prepared");
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
        let mut capacity = CounterSlots::with_room(&tables);
        if let Some(old) = &adopted {
            tables.config.generation = old.generation + 1;
            if old.capacity.flows > 0 {
                capacity = old.capacity;
            }
        }
        let Object { mut ebpf, policy } = load::load_with(&tables, &shared(capacity))?;
        fault::point("start:loaded");
        let sources = opts.sources.or_else(|| Loaded::read(site, None).ok().map(|l| l.sources));
        pins.record(&ebpf, &policy, site, &tables, ifaces, capacity, sources.as_ref())?;
        fault::point("start:recorded");
        let (mut links, mut egress_links, mut modes, mut ifindex) = (vec![], vec![], vec![], vec![]);
        let in_ns = |f: &mut dyn FnMut() -> Result<()>| match netns {
            Some(ns) => netns::in_netns(ns, f)?,
            None => f(),
        };
        for iface in ifaces {
            in_ns(&mut || {
                let (link, used) = attach::xdp(load::program(&mut ebpf)?, iface, mode)?;
                links.push(Some(link));
                modes.push(used);
                fault::point("start:attached-xdp");
                egress_links.push(Some(attach::tc(load::egress(&mut ebpf)?, iface)?));
                ifindex.push(if_index(iface));
                Ok(())
            })?;
        }
        if opts.forward {
            in_ns(&mut || forward::fill(&mut ebpf, &ifindex))?;
        }
        for gone in pins::remove_other_links(ifaces) {
            info!("detached {gone}, which a previous run left enforcing on an interface this run does not name");
        }
        fault::point("start:attached");
        let generation = tables.config.generation;
        let enforcer = Self {
            ebpf,
            policy,
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
}

/// Whether a policy, on the counter slots a dead run left, fits that run's counter maps.
fn fits(old: &state::State, tables: &Tables) -> bool {
    let mut t = tables.clone();
    StableSlots::from_flows(&old.flows, &old.outbound).apply(&mut t);
    old.capacity.flows == 0 || old.capacity.fits(&t)
}

/// The shared maps of a run: pinned, with room for `slots`.
pub(super) fn shared(slots: CounterSlots) -> load::Shared {
    load::Shared { pin_dir: Some(pins::PIN_DIR.into()), slots }
}

impl Enforcer {
    /// With `--forward`: the interfaces present now, as forwarding targets (in their namespace).
    pub(super) fn fill_forward_ports(&mut self) -> Result<()> {
        if self.flags & CONFIG_FORWARD == 0 {
            return Ok(());
        }
        let now: Vec<u32> = self.ifaces.iter().map(|i| if_index(i)).collect();
        forward::fill(&mut self.ebpf, &now)
    }

    /// Runs `f` in the interfaces' network namespace.
    pub(super) fn in_netns<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<T> {
        match self.netns.clone() {
            Some(ns) => netns::in_netns(&ns, || f(self)),
            None => Ok(f(self)),
        }
    }
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
