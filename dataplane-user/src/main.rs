//! `dataplane`: compile vendor-documented firewall policy for collaboration servers into XDP maps,
//! enforce it in the NIC driver, and report per-flow counters.

use clap::{Parser, Subcommand};
use dataplane::{cli_policy, events, lab, persist, run, stats};

#[derive(Parser)]
#[command(name = "dataplane", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List the policy catalogs (one per source document).
    Catalogs(cli_policy::CatalogsArgs),
    /// List the roles of the catalogs.
    Roles(cli_policy::RolesArgs),
    /// List every documented flow.
    Flows(cli_policy::FlowsArgs),
    /// Validate a site and compile it into the map tables; print a summary.
    Compile(cli_policy::CompileArgs),
    /// Predict the verdict for packets, through the compiled tables.
    Explain(cli_policy::ExplainArgs),
    /// What a site changes against the enforced policy: flows, causes, flipping tuples.
    ///
    /// Compares with the policy the running dataplane enforces (its state), or --from FILE.
    /// Exit status 0: the same enforced behaviour, 1: it differs, 2: error.
    Diff(dataplane::diff::DiffArgs),
    /// Write the site's inbound policy in another firewall's language (nftables).
    Export(dataplane::export::ExportArgs),
    /// Compile, load and attach the XDP program; enforce until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// Per-flow packets and bytes and drop reasons, read from the pinned maps.
    Stats(stats::StatsArgs),
    /// Follow the drop events of the running dataplane (rate-limited), with the nearest flow.
    Events(events::EventsArgs),
    /// What the catalogs say of dropped traffic: the site lines that would admit it.
    ///
    /// Reads drop events (monitor mode or not) and groups them: documented but switched off (an
    /// option), documented but unbound (a role's addresses), forbidden, undocumented.
    Suggest(dataplane::suggest::SuggestArgs),
    /// Remove what `run --persist`, or a run that was killed, left enforcing.
    Detach(persist::DetachArgs),
    /// The built-in lab: namespaces, a veth pair, a real site, real traffic, live counters.
    Lab(lab::LabArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_timestamp_secs().init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Lab(lab::LabArgs::default())) {
        Command::Catalogs(a) => cli_policy::catalogs(a),
        Command::Roles(a) => cli_policy::roles(a),
        Command::Flows(a) => cli_policy::flows(a),
        Command::Compile(a) => cli_policy::compile(a),
        Command::Explain(a) => cli_policy::explain(a),
        Command::Diff(a) => dataplane::diff::exit(a),
        Command::Export(a) => dataplane::export::export(a),
        Command::Run(a) => run::run(a),
        Command::Stats(a) => stats::stats(a),
        Command::Events(a) => events::events(a),
        Command::Suggest(a) => dataplane::suggest::suggest(a),
        Command::Detach(a) => persist::detach(a),
        Command::Lab(a) => lab::lab(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
