//! The rollout subcommands: `diff` and `suggest` (`rollout::diff`, `rollout::suggest`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::json;

use super::args::{read_site, CatalogDirArg, StateArg};
use crate::rollout::baseline::Baseline;
use crate::rollout::diff;
use crate::rollout::suggest::{self, drops::Drops};

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The site you mean to enforce.
    #[arg(long, value_name = "FILE")]
    pub site: PathBuf,
    /// The site to compare with (default: the policy the running dataplane enforces, as its
    /// state file recorded it).
    #[arg(long, value_name = "FILE", conflicts_with = "state")]
    pub from: Option<PathBuf>,
    /// Print the differences as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalogs: CatalogDirArg,
    #[command(flatten)]
    pub state: StateArg,
    /// Example tuples whose verdict flips, at most, per flow.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub examples: usize,
}

/// Prints the diff; exits like diff(1): 0 when the enforced behaviour is the same, 1 when it
/// differs (an error exits 2, see `cli::run`).
pub fn diff(a: DiffArgs) -> Result<ExitCode> {
    let old = Baseline::read(a.from.as_deref().map(|f| a.catalogs.files(f)), a.state.state.as_deref())?;
    let new = read_site(&a.site, &a.catalogs)?;
    let d = diff::compute(&old.loaded, &new, Some(a.examples))?;
    if a.json {
        let mut v = serde_json::to_value(&d)?;
        v["old"]["describe"] = old.describe.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", d.render(&old.describe));
    }
    Ok(ExitCode::from(u8::from(!d.same)))
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["events", "follow"])))]
pub struct SuggestArgs {
    /// Drop events, one JSON object per line as `dataplane events --json` prints them (`-`:
    /// standard input).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Follow the running dataplane's drop events for this many seconds instead.
    #[arg(long, value_name = "SECONDS")]
    pub follow: Option<u64>,
    /// The site to suggest changes to (default: the policy the running dataplane enforces).
    #[arg(long, value_name = "FILE")]
    pub site: Option<PathBuf>,
    /// Print the suggestions as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalogs: CatalogDirArg,
    #[command(flatten)]
    pub state: StateArg,
    /// Distinct tuples kept in memory; the drops of further tuples are counted, not analysed.
    #[arg(long, value_name = "N", default_value_t = 65536)]
    pub max_tuples: usize,
    /// Destination ports and sources listed per group.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub top: usize,
}

pub fn suggest(a: SuggestArgs) -> Result<()> {
    let base = Baseline::read(a.site.as_deref().map(|s| a.catalogs.files(s)), a.state.state.as_deref())?;
    let mut drops = Drops::new(a.max_tuples);
    match (&a.events, a.follow) {
        (Some(file), _) => drops.read_file(file)?,
        (None, Some(secs)) => crate::observe::events::follow(Some(std::time::Duration::from_secs(secs)), |e| {
            drops.add_line(&serde_json::to_string(e)?).map_err(|(_, m)| anyhow::anyhow!(m))?;
            Ok::<_, anyhow::Error>(true)
        })?,
        (None, None) => bail!("give --events FILE or --follow SECONDS"),
    }
    // The other catalogs of the directory the policy was read from: what they document is a hint.
    let dir = a.catalogs.catalog_dir.clone().unwrap_or_else(|| base.files.catalog_dir.clone());
    let report = suggest::analyse(&base.loaded, &drops, a.top, &dir)?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["site"] = json!({"path": base.loaded.site.path, "describe": base.describe});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report.render(&base.describe));
    }
    if drops.bad > 0 {
        bail!("{} bad event line(s)", drops.bad);
    }
    Ok(())
}
