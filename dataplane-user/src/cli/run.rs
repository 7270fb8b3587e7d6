//! `dataplane run`: the arguments, the site resolved once, then the daemon (`daemon::run`).

use anyhow::Result;

use super::args::SiteArgs;
use crate::daemon::{self, Mode, RunOptions};

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub site: SiteArgs,
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

pub fn run(a: RunArgs) -> Result<()> {
    // The catalog directory is found once, here: reloads read the same one.
    let files = a.site.files();
    let RunArgs { ifaces, mode, metrics, monitor, force, persist, forward, .. } = a;
    Ok(daemon::run(files, RunOptions { ifaces, mode, metrics, monitor, force, persist, forward })?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        args: super::RunArgs,
    }

    #[test]
    fn run_takes_a_catalog_dir() {
        let parse = |extra: &[&str]| {
            let argv = ["run", "--site", "s.yaml", "--iface", "eth0"].iter().chain(extra);
            Run::try_parse_from(argv).expect("run's arguments parse").args
        };
        let dir = parse(&["--catalog-dir", "/srv/catalog"]).site.catalogs.catalog_dir;
        assert_eq!(dir.as_deref(), Some(Path::new("/srv/catalog")));
        assert_eq!(parse(&[]).site.catalogs.catalog_dir, None);
    }
}
