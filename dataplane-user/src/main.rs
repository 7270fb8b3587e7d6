//! `dataplane`: compile vendor-documented firewall policy for collaboration servers into XDP maps,
//! enforce it in the NIC driver, and report per-flow counters. The subcommands are in
//! `dataplane::cli`.

use std::process::ExitCode;

use clap::Parser;
use dataplane::cli::{self, Cli};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_timestamp_secs().init();
    cli::run(Cli::parse().command)
}
