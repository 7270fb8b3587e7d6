//! `dataplane export`: the site's inbound policy in another firewall's language, for a host
//! without XDP or to compare with (tests/tests/nft_differential.rs). One format: [`nft`].

pub mod nft;

use std::path::PathBuf;

use crate::{compile, policy, policy::sources::SiteFiles};

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
    /// The site file.
    #[arg(long, value_name = "FILE")]
    pub site: PathBuf,
    /// Catalog directory (default: $DATAPLANE_CATALOG_DIR, <site dir>/../catalog, ...).
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
    /// Filter only what arrives on these interfaces (as `run` attaches to them); repeatable.
    /// Default: every interface but `lo`.
    #[arg(long = "interface", short = 'i', value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Name of the nftables table (family inet).
    #[arg(long, default_value = "dataplane", value_name = "NAME")]
    pub table: String,
}

pub fn export(a: ExportArgs) -> anyhow::Result<()> {
    let files = SiteFiles::new(&a.site, a.catalog_dir.as_deref());
    let p = policy::load_site_from(&files.site, &files.catalog_dir)?;
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
