//! What `diff` compares a site with, and what `suggest` suggests changes to: a site file, or the
//! policy the running dataplane enforces, as its state file recorded it.

use std::path::Path;

use anyhow::Result;

use crate::kernel::state::Enforced;
use crate::policy::sources::Loaded;

/// The side a site is compared with, and how to name it in a report.
pub struct Baseline {
    pub loaded: Loaded,
    /// "policies/sites/a.yaml", or the enforced policy with its daemon and mode.
    pub describe: String,
}

impl Baseline {
    /// `from` when given (read with `read`), else the enforced policy of `state`.
    pub fn read(from: Option<&Path>, state: Option<&Path>, read: impl Fn(&Path) -> Result<Loaded>) -> Result<Baseline> {
        match from {
            Some(from) => Ok(Baseline { loaded: read(from)?, describe: from.display().to_string() }),
            None => {
                let e = Enforced::read(state)?;
                Ok(Baseline { describe: e.describe(), loaded: e.loaded })
            }
        }
    }
}
