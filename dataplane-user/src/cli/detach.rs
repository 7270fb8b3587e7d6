//! `dataplane detach`: removes what `run --persist`, or a run that was killed, left enforcing
//! (see `kernel::attach` for why links outlive the daemon).

use anyhow::{bail, Result};

use crate::kernel::{pins, state};

#[derive(clap::Args)]
pub struct DetachArgs {
    /// Only this interface (repeat for several); default: every interface.
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
}

/// `dataplane detach`: removes what a persisted (or killed) `run` left enforcing.
pub fn detach(a: DetachArgs) -> Result<()> {
    let st = state::StateFile::read()?;
    if std::path::Path::new(&format!("/proc/{}", st.pid)).exists() {
        bail!("dataplane (pid {}) is still running: stop it (SIGTERM) first, then detach", st.pid);
    }
    let ifaces = if a.ifaces.is_empty() { st.interfaces.clone() } else { a.ifaces };
    for iface in &ifaces {
        pins::unpin_links(iface);
        println!("{iface}: detached");
    }
    let left = pins::pinned_links().len();
    if left == 0 {
        state::remove_all();
        println!("no interface left: pinned maps and state removed");
    }
    Ok(())
}
