//! `dataplane export`: the site's inbound policy in another firewall's language (`export`).

use anyhow::Result;

use super::args::SiteArgs;
use crate::{compile, export::nft};

/// Output formats of `export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// An nftables ruleset for `nft -f`.
    #[default]
    Nft,
}

#[derive(clap::Args, Debug, Default)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "nft")]
    pub format: Format,
    #[command(flatten)]
    pub site: SiteArgs,
    /// Filter only what arrives on these interfaces (as `run` attaches to them); repeatable.
    /// Default: every interface but `lo`.
    #[arg(long = "interface", short = 'i', value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Name of the nftables table (family inet).
    #[arg(long, default_value = "dataplane", value_name = "NAME")]
    pub table: String,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let p = a.site.read()?.policy;
    // Refuse what `run` would refuse (the same validation and limits).
    compile::compile(&p)?;
    match a.format {
        Format::Nft => {
            let out = nft::render(&p, &nft::NftOptions { table: a.table, interfaces: a.interfaces })?;
            print!("{}", out.text);
        }
    }
    Ok(())
}
