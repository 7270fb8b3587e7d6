//! What `diff` compares a site with, and what `suggest` suggests changes to: a site file, or the
//! policy the running dataplane enforces, as its state file recorded it.

use std::path::Path;

use crate::kernel::state::Enforced;
use crate::policy::sources::{Loaded, SiteFiles};
use crate::rollout::RolloutError;

type Result<T> = std::result::Result<T, RolloutError>;

/// The side a site is compared with, and how to name it in a report.
pub struct Baseline {
    pub loaded: Loaded,
    /// Where it was read from: the file given, or the files the daemon reads.
    pub files: SiteFiles,
    /// "policies/sites/a.yaml", or the enforced policy with its daemon and mode.
    pub describe: String,
}

impl Baseline {
    /// `from` when given, else the enforced policy of `state`.
    pub fn read(from: Option<SiteFiles>, state: Option<&Path>) -> Result<Baseline> {
        match from {
            Some(files) => Ok(Baseline { loaded: files.read()?, describe: files.site.display().to_string(), files }),
            None => {
                let e = Enforced::read(state)?;
                Ok(Baseline { describe: e.describe(), loaded: e.loaded, files: e.files })
            }
        }
    }
}
