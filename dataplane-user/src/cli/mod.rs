//! The command line: every subcommand of `dataplane` and where it is carried out. The policy
//! subcommands ([`policy`]) and `detach` ([`detach`]) live here; the others in the folder of
//! what they do (daemon, observe, classify, export, lab).

pub mod detach;
pub mod policy;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    classify::{diff, suggest},
    daemon, export, lab,
    observe::{events, stats},
};

#[derive(Parser)]
#[command(name = "dataplane", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// List the policy catalogs (one per source document).
    Catalogs(policy::CatalogsArgs),
    /// List the roles of the catalogs.
    Roles(policy::RolesArgs),
    /// List every documented flow.
    Flows(policy::FlowsArgs),
    /// Validate a site and compile it into the map tables; print a summary.
    Compile(policy::CompileArgs),
    /// Predict the verdict for packets, through the compiled tables.
    Explain(policy::ExplainArgs),
    /// What a site changes against the enforced policy: flows, causes, flipping tuples.
    ///
    /// Compares with the policy the running dataplane enforces (its state), or --from FILE.
    /// Exit status 0: the same enforced behaviour, 1: it differs, 2: error.
    Diff(diff::DiffArgs),
    /// Write the site's inbound policy in another firewall's language (nftables).
    Export(export::ExportArgs),
    /// Compile, load and attach the XDP program; enforce until SIGINT or SIGTERM.
    Run(daemon::RunArgs),
    /// Per-flow packets and bytes and drop reasons, read from the pinned maps.
    Stats(stats::StatsArgs),
    /// Follow the drop events of the running dataplane (rate-limited), with the nearest flow.
    Events(events::EventsArgs),
    /// What the catalogs say of dropped traffic: the site lines that would admit it.
    ///
    /// Reads drop events (monitor mode or not) and groups them: documented but switched off (an
    /// option), documented but unbound (a role's addresses), forbidden, undocumented.
    Suggest(suggest::SuggestArgs),
    /// Remove what `run --persist`, or a run that was killed, left enforcing.
    Detach(detach::DetachArgs),
    /// The built-in lab: namespaces, a veth pair, a real site, real traffic, live counters.
    Lab(lab::LabArgs),
}

/// Runs one subcommand; none runs the lab.
pub fn dispatch(command: Option<Command>) -> Result<()> {
    match command.unwrap_or(Command::Lab(lab::LabArgs::default())) {
        Command::Catalogs(a) => policy::catalogs(a),
        Command::Roles(a) => policy::roles(a),
        Command::Flows(a) => policy::flows(a),
        Command::Compile(a) => policy::compile(a),
        Command::Explain(a) => policy::explain(a),
        Command::Diff(a) => diff::exit(a),
        Command::Export(a) => export::export(a),
        Command::Run(a) => daemon::run(a),
        Command::Stats(a) => stats::stats(a),
        Command::Events(a) => events::events(a),
        Command::Suggest(a) => suggest::suggest(a),
        Command::Detach(a) => detach::detach(a),
        Command::Lab(a) => lab::lab(a),
    }
}
