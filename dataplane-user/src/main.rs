//! `dataplane`: compile vendor-documented firewall policy for collaboration servers into XDP maps,
//! enforce it in the NIC driver, and report per-flow counters. The subcommands are in
//! `dataplane::cli`.

use clap::Parser;
use dataplane::cli::{dispatch, Cli};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_timestamp_secs().init();
    if let Err(e) = dispatch(Cli::parse().command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
