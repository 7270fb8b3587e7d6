//! What `run` watches while it enforces: interfaces removed and created again (the policy is
//! attached anew), and the site and catalog files (a change means reload).

use std::path::{Path, PathBuf};

use anyhow::Result;
use log::warn;

use super::enforcer::Enforcer;
use crate::{
    kernel::{
        attach::{self, if_index, Attached},
        load, pins,
    },
    policy,
};

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
        pins::unpin_links(&self.ifaces[i]);
    }

    fn attach_again(&mut self, i: usize) -> Result<Attached> {
        self.drop_links(i);
        self.in_netns(|e| {
            let (link, mode) = attach::xdp(load::program(&mut e.ebpf)?, &e.ifaces[i], e.mode)?;
            e.links[i] = Some(link);
            e.egress_links[i] = Some(attach::tc(load::egress(&mut e.ebpf)?, &e.ifaces[i])?);
            e.fill_forward_ports()?;
            Ok(mode)
        })?
    }
}

/// The files a site depends on, with their modification times.
pub(super) type Fingerprint = Vec<(PathBuf, Option<std::time::SystemTime>)>;

/// The files a site depends on, with their modification times: a change means reload.
pub(super) fn fingerprint(site: &Path) -> Fingerprint {
    let mut files = vec![site.to_path_buf()];
    if let Ok(dir) = std::fs::read_dir(policy::catalog_dir(None, Some(site))) {
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
