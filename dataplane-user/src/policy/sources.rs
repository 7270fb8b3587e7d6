//! What a policy was compiled from: the site's text and the text of every catalog it selects,
//! read once. `run` records them in its state file, so that `diff` and `suggest` judge against
//! exactly the policy the daemon enforces, whatever happened to the files on disk since (an edit
//! not reloaded yet, a reload that failed) and whichever catalog directory the shell would find.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::catalog::{catalog_files, parse_catalog, Catalog};
#[cfg(doc)]
use crate::policy::catalog_dir;
use crate::policy::error::PolicyError;
use crate::policy::site::{parse_site, Site};
use crate::policy::Policy;

type Result<T> = std::result::Result<T, PolicyError>;

/// One file as it was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// The site and its catalogs (in the site's order), as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    pub site: SourceFile,
    pub catalogs: Vec<SourceFile>,
}

/// Where a site's policy comes from: the site file and the catalog directory its catalogs are
/// selected from. Resolved once, where the command line is read ([`catalog_dir`]'s rules), and
/// kept: a reload, the file watch and the state file then use the same directory whatever the
/// environment or the working directory says later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteFiles {
    pub site: PathBuf,
    pub catalog_dir: PathBuf,
}

impl SiteFiles {
    /// `site` with the catalogs of `catalog_dir` (default: as [`catalog_dir`] finds them).
    pub fn new(site: &Path, catalog_dir: Option<&Path>) -> SiteFiles {
        SiteFiles { site: site.to_owned(), catalog_dir: crate::policy::catalog_dir(catalog_dir, Some(site)) }
    }

    /// Reads and resolves the site with the catalogs it selects. Errors name file:line:column
    /// and field.
    pub fn read(&self) -> Result<Loaded> {
        let site = self.site.as_path();
        let text = std::fs::read_to_string(site).map_err(|e| PolicyError::io("site", site, e))?;
        let available = catalog_files(&self.catalog_dir)?;
        let mut read = Vec::new();
        let (parsed, catalogs) = parse_site(site, &text, &available, |paths| {
            read = paths.iter().map(|p| read_file(p, "catalog")).collect::<Result<_>>()?;
            parse_catalogs(&read)
        })?;
        // The site's order, like the catalogs themselves.
        let mut files = Vec::new();
        for c in &catalogs {
            files.extend(read.iter().find(|f| f.path == c.path).cloned());
        }
        let sources = Sources { site: SourceFile { path: site.to_owned(), text }, catalogs: files };
        let policy = Policy::resolve(&parsed, catalogs)?;
        Ok(Loaded { sources, site: parsed, policy })
    }

    /// The files a change of which changes the policy: the site and every catalog of the
    /// directory (a new catalog may be one the site selects), sorted.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut files = vec![self.site.clone()];
        if let Ok(dir) = std::fs::read_dir(&self.catalog_dir) {
            files.extend(dir.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "yaml")));
        }
        files.sort();
        files
    }
}

/// A site read from its sources: the texts, the checked site, and its resolved policy.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub sources: Sources,
    pub site: Site,
    pub policy: Policy,
}

impl Sources {
    /// The site and policy these texts make, as when they were read.
    pub fn load(&self) -> Result<Loaded> {
        let available: Vec<(String, PathBuf)> = self.catalogs.iter().map(|f| (stem(&f.path), f.path.clone())).collect();
        let (site, catalogs) = parse_site(&self.site.path, &self.site.text, &available, |paths| {
            let files: Vec<SourceFile> =
                paths.iter().filter_map(|p| self.catalogs.iter().find(|f| &f.path == p).cloned()).collect();
            parse_catalogs(&files)
        })?;
        let policy = Policy::resolve(&site, catalogs)?;
        Ok(Loaded { sources: self.clone(), site, policy })
    }
}

fn stem(p: &Path) -> String {
    p.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned()
}

fn read_file(p: &Path, what: &str) -> Result<SourceFile> {
    let text = std::fs::read_to_string(p).map_err(|e| PolicyError::io(what, p, e))?;
    Ok(SourceFile { path: p.to_owned(), text })
}

/// Parses catalogs in order; flow ids must be unique across them (as `load_catalogs`). The
/// catalogs of the last call are kept: a reload after a site edit finds the same texts, and
/// parsing the five documents' catalogs takes longer than the rest of a reload.
fn parse_catalogs(files: &[SourceFile]) -> Result<Vec<Catalog>> {
    static LAST: std::sync::Mutex<Option<(Vec<SourceFile>, Vec<Catalog>)>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((texts, catalogs)) = last.as_ref() {
        if texts.as_slice() == files {
            return Ok(catalogs.clone());
        }
    }
    let catalogs = parse_all(files)?;
    *last = Some((files.to_vec(), catalogs.clone()));
    Ok(catalogs)
}

fn parse_all(files: &[SourceFile]) -> Result<Vec<Catalog>> {
    let mut prior = HashMap::new();
    let mut out = Vec::new();
    for f in files {
        let c = parse_catalog(&f.path, &f.text, &prior)?;
        for flow in &c.flows {
            prior.insert(flow.id.clone(), c.name.clone());
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/outbound")
    }

    #[test]
    fn the_catalog_dir_given_is_the_one_read_and_watched() {
        let files = SiteFiles::new(&data().join("sites/outbound.yaml"), Some(&data().join("catalog")));
        assert_eq!(files.catalog_dir, data().join("catalog"));
        let loaded = files.read().expect("the outbound test site loads");
        assert!(!loaded.sources.catalogs.is_empty());
        assert!(loaded.sources.catalogs.iter().all(|c| c.path.starts_with(&files.catalog_dir)));
        let watched = files.watched();
        assert!(watched.contains(&files.site));
        for c in &loaded.sources.catalogs {
            assert!(watched.contains(&c.path), "{}", c.path.display());
        }
    }

    #[test]
    fn a_missing_catalog_dir_fails_the_read() {
        let files = SiteFiles::new(&data().join("sites/outbound.yaml"), Some(&data().join("no-such-dir")));
        assert!(files.read().is_err());
        assert_eq!(files.watched(), vec![files.site.clone()]);
    }
}
