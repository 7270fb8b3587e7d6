//! The subcommands that read a running dataplane: `stats` and `events` (`observe`).

use std::time::Duration;

use anyhow::Result;

use crate::kernel::state;
use crate::observe::{events, stats::Stats};

#[derive(clap::Args, Default)]
pub struct StatsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn stats(a: StatsArgs) -> Result<()> {
    let st = state::StateFile::read()?;
    let mut report = Stats::read_pinned(&st.flows, &st.outbound)?;
    report.monitor = st.monitor;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events (events from before the command started are not shown).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

pub fn events(a: EventsArgs) -> Result<()> {
    let mut seen = 0;
    events::follow(a.timeout.map(Duration::from_secs), |event| {
        if a.json {
            println!("{}", serde_json::to_string(event)?);
        } else {
            println!("{}", event.render());
        }
        seen += 1;
        Ok(a.count.is_none_or(|n| seen < n))
    })
}
