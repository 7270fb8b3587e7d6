//! `dataplane init --catalog NAME... --protect ROLE... [--out FILE] [--force]`: a commented site
//! to start from (`policy::scaffold`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

use super::args::CatalogDirArg;
use crate::policy::scaffold::{self, ScaffoldError};
use crate::policy::{catalog_dir, load_all_catalogs};

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// A catalog the site selects (repeat for several; the first takes precedence).
    #[arg(long, value_name = "NAME", required = true)]
    pub catalog: Vec<String>,
    /// A role this host protects (repeat for several).
    #[arg(long, value_name = "ROLE", required = true)]
    pub protect: Vec<String>,
    /// Write the site to FILE (default: standard output); its stem names the site.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
    #[command(flatten)]
    pub catalogs: CatalogDirArg,
}

pub fn init(a: &InitArgs) -> Result<()> {
    let dir = catalog_dir(a.catalogs.catalog_dir.as_deref(), None);
    let all = load_all_catalogs(&dir)?;
    let name = a.out.as_deref().and_then(|p| p.file_stem()).and_then(|s| s.to_str()).unwrap_or("site");
    let text = scaffold::scaffold(name, &all, &a.catalog, &a.protect).map_err(|e| match e {
        ScaffoldError::UnknownCatalog { .. } => anyhow!("{e} in {}", dir.display()),
        e => e.into(),
    })?;
    let Some(out) = &a.out else {
        std::io::stdout().write_all(text.as_bytes())?;
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new();
    file.write(true);
    if a.force {
        file.create(true).truncate(true);
    } else {
        file.create_new(true);
    }
    let mut file = match file.open(out) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} exists: give --force to overwrite it", out.display())
        }
        r => r.with_context(|| format!("creating {}", out.display()))?,
    };
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {}: bind the roles marked [{}], then `dataplane compile --site {}`",
        out.display(),
        scaffold::PLACEHOLDER,
        out.display()
    );
    Ok(())
}
