//! The enforcer: the program loaded with a policy, attached to each interface, its maps pinned
//! and its state recorded; what `run`, the lab and the tests hold while they enforce.

use aya::programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId};
use log::{info, warn};

use dataplane_common::{CONFIG_FORWARD, CONFIG_MONITOR};

use super::{fault, DaemonError};
use crate::{
    compile::{self, slots::StableSlots, tables::Tables},
    kernel::{
        attach::{self, if_index, Attached, Mode},
        forward,
        images::ImageMaps,
        load::{self, CounterSlots, Object},
        netns, pins, state,
    },
    policy::sources::{Loaded, SiteFiles, Sources},
    rollout::lockout,
};

type Result<T> = std::result::Result<T, DaemonError>;

/// How `Enforcer::start` runs the policy.
#[derive(Clone, Default)]
pub struct StartOptions {
    pub monitor: bool,
    pub persist: bool,
    /// XDP forwarding of allowed packets (`run --forward`).
    pub forward: bool,
    /// The lockout guard of reloads.
    pub guard: Guard,
    /// What the tables were compiled from, for the state (`diff`); None: read the site again.
    pub sources: Option<Sources>,
}

/// The lockout guard (`classify::lockout`): what becomes of a policy that would cut the
/// management connection this process runs over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Guard {
    /// Not checked: monitor mode drops nothing, so it locks no one out (also the lab and tests).
    #[default]
    Off,
    /// Refused: the policy is not put in force.
    Refuse,
    /// Put in force with a warning (`run --force`).
    Warn,
}

impl Guard {
    /// `run`'s guard: off in monitor mode, else refusing unless `--force`.
    pub fn for_run(monitor: bool, force: bool) -> Guard {
        match (monitor, force) {
            (true, _) => Guard::Off,
            (false, false) => Guard::Refuse,
            (false, true) => Guard::Warn,
        }
    }
}

/// Validates and compiles a site into the tables the maps will hold.
pub fn compile_site(files: &SiteFiles) -> Result<Tables> {
    compile_guarded(files, Guard::Off).map(|(tables, _)| tables)
}

/// Validates and compiles a site, read once, and applies the lockout `guard`. Also returns the
/// texts compiled, so that the state records exactly them.
pub(super) fn compile_guarded(files: &SiteFiles, guard: Guard) -> Result<(Tables, Sources)> {
    let Loaded { policy, sources, .. } = files.read()?;
    let tables = compile::compile(&policy)?;
    let force = match guard {
        Guard::Off => return Ok((tables, sources)),
        Guard::Refuse => false,
        Guard::Warn => true,
    };
    lockout::guard(&policy, &tables, lockout::ssh_session_from_env().as_ref(), force)?;
    Ok((tables, sources))
}

/// One interface the policy is enforced on.
pub(super) struct Attachment {
    pub(super) iface: String,
    /// Its links; None while the interface is gone (the kernel detached them with it).
    pub(super) xdp: Option<XdpLinkId>,
    pub(super) egress: Option<SchedClassifierLinkId>,
    /// The index the interface had when attached (0: gone). A new index means the interface was
    /// removed and created again.
    pub(super) ifindex: u32,
}

impl Attachment {
    fn new(iface: &str) -> Self {
        Attachment { iface: iface.to_owned(), xdp: None, egress: None, ifindex: 0 }
    }

    /// Attaches the XDP program (in the interface's network namespace).
    pub(super) fn attach_xdp(&mut self, ebpf: &mut aya::Ebpf, mode: Mode) -> Result<Attached> {
        let (link, used) = attach::xdp(load::program(ebpf)?, &self.iface, mode)?;
        self.xdp = Some(link);
        Ok(used)
    }

    /// Attaches the tc egress program (in the interface's network namespace).
    pub(super) fn attach_tc(&mut self, ebpf: &mut aya::Ebpf) -> Result<()> {
        self.egress = Some(attach::tc(load::egress(ebpf)?, &self.iface)?);
        Ok(())
    }

    /// Forgets the links (the kernel detached them with the interface) and their pins.
    pub(super) fn drop_links(&mut self, ebpf: &mut aya::Ebpf) {
        if let (Some(l), Ok(prog)) = (self.xdp.take(), load::program(ebpf)) {
            let _ = prog.take_link(l);
        }
        if let (Some(l), Ok(prog)) = (self.egress.take(), load::egress(ebpf)) {
            let _ = prog.take_link(l);
        }
        pins::unpin_links(&self.iface);
    }

    /// Detaches both programs.
    fn detach(&mut self, ebpf: &mut aya::Ebpf) {
        if let (Some(l), Ok(prog)) = (self.xdp.take(), load::program(ebpf)) {
            let _ = prog.detach(l);
        }
        if let (Some(l), Ok(prog)) = (self.egress.take(), load::egress(ebpf)) {
            let _ = prog.detach(l);
        }
    }
}

/// The program, loaded with a policy, attached to interfaces and pinned for `stats`; reloadable.
pub struct Enforcer {
    pub ebpf: aya::Ebpf,
    /// The policy images and the run config of `ebpf`.
    pub(super) images: ImageMaps,
    /// The tables enforced now, on stable counter slots; their config carries the generation
    /// and the run's flags.
    pub tables: Tables,
    /// The interfaces, in the order given.
    pub(super) attachments: Vec<Attachment>,
    pub(super) mode: Mode,
    /// The network namespace the interfaces are in, when not this process's (the lab).
    pub(super) netns: Option<String>,
    pub(super) pins: state::Pins,
    pub(super) slots: StableSlots,
    /// Where the policy is read from, at start and at every reload.
    pub(super) files: SiteFiles,
    /// Counter slots the shared counter maps hold (fixed at start).
    pub(super) capacity: CounterSlots,
    /// The lockout guard of reloads.
    pub guard: Guard,
    /// What the enforced policy was compiled from (the state records it for `diff`).
    pub sources: Option<Sources>,
    /// When the last reload swapped the policy image (None: none since the program was loaded).
    pub(super) swapped: Option<std::time::Instant>,
}

impl Enforcer {
    /// Loads `tables`, pins the maps and records the state, then attaches to each interface
    /// (`netns`: inside that network namespace). Returns the mode used per interface.
    pub fn start(
        files: SiteFiles,
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
        tables.config.flags |= if opts.monitor { CONFIG_MONITOR } else { 0 } | if opts.forward { CONFIG_FORWARD } else { 0 };
        let mut capacity = CounterSlots::with_room(&tables);
        if let Some(old) = &adopted {
            tables.config.generation = old.generation + 1;
            if old.capacity.flows > 0 {
                capacity = old.capacity;
            }
        }
        let Object { mut ebpf, images } = load::load_with(&tables, &shared(capacity))?;
        fault::point("start:loaded");
        let sources = opts.sources.or_else(|| files.read().ok().map(|l| l.sources));
        pins.record(&ebpf, &images, &files, &tables, ifaces, capacity, sources.as_ref())?;
        fault::point("start:recorded");
        let in_ns = |f: &mut dyn FnMut() -> Result<()>| match netns {
            Some(ns) => netns::in_netns(ns, f)?,
            None => f(),
        };
        let (mut attachments, mut modes) = (Vec::new(), Vec::new());
        for iface in ifaces {
            let mut a = Attachment::new(iface);
            in_ns(&mut || {
                modes.push(a.attach_xdp(&mut ebpf, mode)?);
                fault::point("start:attached-xdp");
                a.attach_tc(&mut ebpf)?;
                a.ifindex = if_index(iface);
                Ok(())
            })?;
            attachments.push(a);
        }
        if opts.forward {
            let ifindex: Vec<u32> = attachments.iter().map(|a| a.ifindex).collect();
            in_ns(&mut || Ok(forward::fill(&mut ebpf, &ifindex)?))?;
        }
        for gone in pins::remove_other_links(ifaces) {
            info!("detached {gone}, which a previous run left enforcing on an interface this run does not name");
        }
        fault::point("start:attached");
        let enforcer = Self {
            ebpf,
            images,
            tables,
            attachments,
            mode,
            netns: netns.map(str::to_owned),
            pins,
            slots,
            files,
            capacity,
            guard: opts.guard,
            sources,
            swapped: None,
        };
        Ok((enforcer, modes))
    }

    /// Policy generation: 1 at start (or one more than a run whose maps were adopted), one more
    /// per reload.
    pub fn generation(&self) -> u32 {
        self.tables.config.generation
    }

    /// Where the policy is read from.
    pub fn files(&self) -> &SiteFiles {
        &self.files
    }

    /// The interfaces enforced on, in the order given.
    pub fn ifaces(&self) -> Vec<String> {
        self.attachments.iter().map(|a| a.iface.clone()).collect()
    }

    /// The `CONFIG_*` flags of the run rather than of the policy (monitor mode, forwarding),
    /// which every policy it loads gets.
    pub(super) fn run_flags(&self) -> u32 {
        self.tables.config.flags & (CONFIG_MONITOR | CONFIG_FORWARD)
    }
}

/// Whether a policy, on the counter slots a dead run left, fits that run's counter maps.
fn fits(old: &state::StateFile, tables: &Tables) -> bool {
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
        if self.run_flags() & CONFIG_FORWARD == 0 {
            return Ok(());
        }
        let now: Vec<u32> = self.attachments.iter().map(|a| if_index(&a.iface)).collect();
        Ok(forward::fill(&mut self.ebpf, &now)?)
    }

    /// Runs `f` in the interfaces' network namespace.
    pub(super) fn in_netns<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<T> {
        match self.netns.clone() {
            Some(ns) => Ok(netns::in_netns(&ns, || f(self))?),
            None => Ok(f(self)),
        }
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        for a in &mut self.attachments {
            a.detach(&mut self.ebpf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Guard;

    #[test]
    fn monitor_mode_has_no_guard_and_force_only_warns() {
        assert_eq!(Guard::for_run(true, false), Guard::Off);
        assert_eq!(Guard::for_run(true, true), Guard::Off);
        assert_eq!(Guard::for_run(false, false), Guard::Refuse);
        assert_eq!(Guard::for_run(false, true), Guard::Warn);
    }
}
