//! Argument groups several subcommands share, flattened into each (`#[command(flatten)]`), so
//! that a flag has one spelling and one help text everywhere.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::policy::sources::{Loaded, SiteFiles};

/// `--catalog-dir DIR`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CatalogDirArg {
    /// Catalog directory (default: $DATAPLANE_CATALOG_DIR, <site dir>/../catalog,
    /// ./policies/catalog, the installed /usr/share/dataplane/catalog, the source tree's).
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
}

/// `--site FILE` and the catalog directory it is read with.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SiteArgs {
    /// The site file.
    #[arg(long, value_name = "FILE")]
    pub site: PathBuf,
    #[command(flatten)]
    pub catalogs: CatalogDirArg,
}

impl SiteArgs {
    /// The site's files: the catalog directory resolved once, here at the command line's edge.
    pub fn files(&self) -> SiteFiles {
        self.catalogs.files(&self.site)
    }

    /// Reads and resolves the site (errors name file:line:column and field).
    pub fn read(&self) -> Result<Loaded> {
        Ok(self.files().read()?)
    }
}

impl CatalogDirArg {
    /// `site` with the catalog directory these flags name, else the default rules.
    pub fn files(&self, site: &Path) -> SiteFiles {
        SiteFiles::new(site, self.catalog_dir.as_deref())
    }
}

/// Reads and resolves `site` with the catalogs of `dir`.
pub fn read_site(site: &Path, dir: &CatalogDirArg) -> Result<Loaded> {
    Ok(dir.files(site).read()?)
}

/// `--state FILE`: the running dataplane's state file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StateArg {
    /// The state file of the running dataplane (default /run/dataplane/state.json).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}
