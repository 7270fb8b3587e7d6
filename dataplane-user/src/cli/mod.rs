//! The command line: every subcommand of `dataplane`, its arguments (every clap `Args` struct
//! lives in this folder, with the groups several share in [`args`]), and which library call
//! carries it out. Only here do errors become exit codes.

pub mod args;
pub mod catalogs;
pub mod detach;
pub mod explain;
pub mod export;
pub mod generate;
pub mod init;
pub mod lab;
pub mod observe;
pub mod rollout;
pub mod run;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dataplane", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// List the policy catalogs (one per source document).
    Catalogs(catalogs::CatalogsArgs),
    /// List the roles of the catalogs.
    Roles(catalogs::RolesArgs),
    /// List every documented flow.
    Flows(catalogs::FlowsArgs),
    /// Validate a site and compile it into the map tables; print a summary.
    Compile(catalogs::CompileArgs),
    /// Predict the verdict for packets, through the compiled tables.
    Explain(explain::ExplainArgs),
    /// What a site changes against the enforced policy: flows, causes, flipping tuples.
    ///
    /// Compares with the policy the running dataplane enforces (its state), or --from FILE.
    /// Exit status 0: the same enforced behaviour, 1: it differs, 2: error.
    Diff(rollout::DiffArgs),
    /// Write the site's inbound policy in another firewall's language (nftables).
    Export(export::ExportArgs),
    /// Compile, load and attach the XDP program; enforce until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// Per-flow packets and bytes and drop reasons, read from the pinned maps.
    Stats(observe::StatsArgs),
    /// Follow the drop events of the running dataplane (rate-limited), with the nearest flow.
    Events(observe::EventsArgs),
    /// What the catalogs say of dropped traffic: the site lines that would admit it.
    ///
    /// Reads drop events (monitor mode or not) and groups them: documented but switched off (an
    /// option), documented but unbound (a role's addresses), forbidden, undocumented.
    Suggest(rollout::SuggestArgs),
    /// Remove what `run --persist`, or a run that was killed, left enforcing.
    Detach(detach::DetachArgs),
    /// The built-in lab: namespaces, a veth pair, a real site, real traffic, live counters.
    Lab(lab::LabArgs),
    /// Write a commented site to start from: the roles of the catalogs, their options, the dataplane's.
    ///
    /// The protected roles and every role their flows name come first, then the rest, each with its
    /// aliases, description and the placeholder [REPLACE-ME] for its addresses: `compile` names each
    /// role still to bind (file:line:column) until addresses replace it.
    Init(init::InitArgs),
    /// Write the man pages and shell completions (the package build).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// Runs one subcommand (none runs the lab) and says how the process exits: 0 done, 1 error;
/// `diff` as diff(1): 0 the same, 1 different, 2 error.
pub fn run(command: Option<Command>) -> ExitCode {
    let error_code = if matches!(command, Some(Command::Diff(_))) { 2 } else { 1 };
    let command = command.unwrap_or(Command::Lab(lab::LabArgs::default()));
    quiet_on_closed_pipe(&command);
    match dispatch(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(error_code)
        }
    }
}

/// A command that only prints ends quietly when its reader goes away (`dataplane flows | head`),
/// as Unix tools do, instead of panicking on the failed write. `run` and the lab keep Rust's
/// default (SIGPIPE ignored): a metrics client or a child that hangs up must not stop them.
fn quiet_on_closed_pipe(command: &Command) {
    use nix::sys::signal::{signal, SigHandler, Signal};
    if !matches!(command, Command::Run(_) | Command::Lab(_)) {
        // Safety: the default action is installed before any thread or handler exists.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    match command {
        Command::Catalogs(a) => done(catalogs::catalogs(a)),
        Command::Roles(a) => done(catalogs::roles(a)),
        Command::Flows(a) => done(catalogs::flows(a)),
        Command::Compile(a) => done(catalogs::compile(a)),
        Command::Explain(a) => done(explain::explain(a)),
        Command::Diff(a) => rollout::diff(a),
        Command::Export(a) => done(export::export(a)),
        Command::Run(a) => done(run::run(a)),
        Command::Stats(a) => done(observe::stats(a)),
        Command::Events(a) => done(observe::events(a)),
        Command::Suggest(a) => done(rollout::suggest(a)),
        Command::Detach(a) => done(detach::detach(a)),
        Command::Lab(a) => done(lab::lab(a)),
        Command::Init(a) => done(init::init(&a)),
        Command::Generate(a) => done(generate::generate(&a)),
    }
}
