//! Reloading: the site compiled again and put in force on every interface at once, with
//! nothing verified again; on any error the running policy keeps enforcing.

use log::info;

use super::{
    enforcer::{self, compile_guarded, Enforcer},
    fault, DaemonError,
};
use crate::{
    compile::tables::Tables,
    kernel::{
        load::{self, Object},
        pins::LinkKind,
        KernelError,
    },
    observe::metrics,
    rollout::diff,
};

type Result<T> = std::result::Result<T, DaemonError>;

impl Enforcer {
    /// Compiles the site again and switches every interface to it at once. The running programs
    /// stay: the new policy image is written into the image map not in force, then one store
    /// switches the XDP and tc programs to it, so every packet is judged wholly by the old policy
    /// or wholly by the new one, and nothing is verified again. Only a policy that outgrows the
    /// image maps takes a new program with larger ones (`reload_program`). Counters, tracked
    /// connections and fragments live in the shared maps and carry over. On any error nothing
    /// changes: the running policy keeps enforcing; except [`DaemonError::Unrecorded`]: the new
    /// policy is in force, but the state does not say so.
    pub fn reload(&mut self) -> Result<()> {
        let (mut tables, sources) = compile_guarded(&self.files, self.guard)?;
        fault::point("reload:compiled");
        self.slots.apply(&mut tables);
        if !self.capacity.fits(&tables) {
            return Err(DaemonError::CapacityExceeded {
                flows: tables.flows.len(),
                outbound: load::outbound_slots(&tables),
                room_flows: self.capacity.flows,
                room_outbound: self.capacity.outbound,
            });
        }
        tables.config.flags |= self.run_flags();
        tables.config.generation = self.generation() + 1;
        // The image about to be overwritten was in force until the last swap: leave packets
        // that were walking it (they take microseconds) time to finish.
        if let Some(at) = self.swapped {
            std::thread::sleep(SWAP_SPACING.saturating_sub(at.elapsed()));
        }
        if let Some(swap) = self.images.write_inactive(&tables)? {
            fault::point("reload:written");
            swap.commit(&mut self.images)?;
            self.swapped = Some(std::time::Instant::now());
            fault::point("reload:switched");
        } else {
            info!("the new policy image outgrows the image maps: loading the program with larger ones");
            self.reload_program(&tables)?;
        }
        // In force from here on, whether or not the state can be written.
        self.tables = tables;
        self.sources = Some(sources);
        self.pins
            .record(&self.ebpf, &self.images, &self.files, &self.tables, &self.ifaces(), self.capacity, self.sources.as_ref())
            .map_err(DaemonError::Unrecorded)
    }

    /// Puts another site in force, as `reload` does (the lab switches an option on this way);
    /// on any error the running policy and the files it was read from stay.
    pub fn reload_from(&mut self, files: crate::policy::sources::SiteFiles) -> Result<()> {
        let old = std::mem::replace(&mut self.files, files);
        let reloaded = self.reload();
        if reloaded.is_err() {
            self.files = old;
        }
        reloaded
    }

    /// A new program with larger policy maps replaces the old one behind each link
    /// (BPF_LINK_UPDATE), XDP then tc.
    fn reload_program(&mut self, tables: &Tables) -> Result<()> {
        let Object { ebpf: mut new, images } = load::load_with(tables, &enforcer::shared(self.capacity))?;
        fault::point("reload:loaded");
        // An interface removed since the last look has a link the kernel detached: updating it
        // would fail; it is attached anew when the interface comes back (`watch_interfaces`).
        self.watch_interfaces();
        for a in &mut self.attachments {
            if let Some(l) = a.xdp.take() {
                let l = load::program(&mut self.ebpf)?.take_link(l).map_err(KernelError::from)?;
                a.xdp = Some(switch(load::program(&mut new)?.attach_to_link(l), LinkKind::Xdp)?);
            }
        }
        fault::point("reload:switched-xdp");
        for a in &mut self.attachments {
            if let Some(l) = a.egress.take() {
                let l = load::egress(&mut self.ebpf)?.take_link(l).map_err(KernelError::from)?;
                a.egress = Some(switch(load::egress(&mut new)?.attach_to_link(l), LinkKind::Tc)?);
            }
        }
        // The old program has no link left: dropping it detaches nothing.
        self.ebpf = new;
        self.images = images;
        self.in_netns(|e| e.fill_forward_ports())??;
        self.swapped = None;
        fault::point("reload:switched");
        Ok(())
    }
}

/// A link moved to the new program, or why not.
fn switch<T>(moved: std::result::Result<T, aya::programs::ProgramError>, kind: LinkKind) -> Result<T> {
    moved.map_err(|source| DaemonError::SwitchLink { kind, source })
}

/// The least time between two image swaps: a packet walks an image for microseconds, and the
/// image a swap leaves is the one the next swap overwrites.
const SWAP_SPACING: std::time::Duration = std::time::Duration::from_millis(5);

/// Reloads and logs the outcome; the running policy stays on any error.
pub(super) fn reload_logged(enforcer: &mut Enforcer, info: &metrics::MetricsInfo, why: &str) {
    let started = std::time::Instant::now();
    let before = enforcer.sources.clone();
    let reloaded = |enforcer: &Enforcer| {
        info.set_policy(metrics::PolicyInfo::new(&enforcer.files.site, &enforcer.tables));
        info.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(
            "reloaded ({why}) in {:.1?}: generation {}, {} flows",
            started.elapsed(),
            enforcer.generation(),
            enforcer.tables.flows.len()
        );
        info!("{}", diff::reload_summary(before.as_ref(), enforcer.sources.as_ref()));
    };
    match enforcer.reload() {
        Ok(()) => reloaded(enforcer),
        // In force all the same: only `stats`, `diff` and a later adoption see the previous one.
        Err(DaemonError::Unrecorded(e)) => {
            reloaded(enforcer);
            log::error!("reload ({why}): the new policy is in force, but recording it in the state failed: {e:#}");
        }
        Err(e) => {
            info.reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::error!("reload ({why}) failed, the previous policy keeps enforcing: {e:#}");
        }
    }
}
