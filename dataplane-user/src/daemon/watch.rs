//! What `run` watches while it enforces: interfaces removed and created again (the policy is
//! attached anew), and the site and catalog files (a change means reload).

use std::path::PathBuf;

use log::warn;

use super::{
    enforcer::{Attachment, Enforcer},
    DaemonError,
};
use crate::{
    kernel::attach::{if_index, Attached},
    policy::sources::SiteFiles,
};

impl Enforcer {
    /// Notices interfaces removed, and created again, since the last look: a removed interface
    /// took its links with it (the kernel detaches them); one that is back gets the running
    /// policy attached anew. Each change is logged.
    pub fn watch_interfaces(&mut self) {
        for i in 0..self.attachments.len() {
            let now = self.in_netns(|e| if_index(&e.attachments[i].iface)).unwrap_or(0);
            let Attachment { iface, ifindex, .. } = &self.attachments[i];
            if now == *ifindex {
                continue;
            }
            let (iface, was) = (iface.clone(), *ifindex);
            if was != 0 {
                // Whatever it is now, the links went with the old interface.
                self.attachments[i].drop_links(&mut self.ebpf);
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
            self.attachments[i].ifindex = now;
        }
    }

    fn attach_again(&mut self, i: usize) -> Result<Attached, DaemonError> {
        self.attachments[i].drop_links(&mut self.ebpf);
        self.in_netns(|e| {
            let mode = e.attachments[i].attach_xdp(&mut e.ebpf, e.mode)?;
            e.attachments[i].attach_tc(&mut e.ebpf)?;
            e.fill_forward_ports()?;
            Ok(mode)
        })?
    }
}

/// The files a site depends on, with their modification times.
pub(super) type Fingerprint = Vec<(PathBuf, Option<std::time::SystemTime>)>;

/// The files the policy of `files` is read from, with their modification times: a change means
/// reload.
pub(super) fn fingerprint(files: &SiteFiles) -> Fingerprint {
    files
        .watched()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect()
}
