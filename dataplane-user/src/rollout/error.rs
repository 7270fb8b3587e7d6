//! Why `diff` or `suggest` could not answer: the sites, their compilation, the state file, the
//! events read. Printed as before, causes included with `{:#}`.

use std::path::PathBuf;

use crate::{compile::CompileError, kernel::state::StateError, policy::error::PolicyError};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A site, a catalog, or a site changed by a suggested fix, does not resolve.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// No enforced policy to compare with (no state file, or an unreadable one).
    #[error(transparent)]
    State(#[from] StateError),
    /// The events file given to `suggest` cannot be opened.
    #[error("reading events {}", path.display())]
    OpenEvents {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading the events stopped partway (`name`: the file, or `stdin`).
    #[error("reading {name}")]
    ReadEvents {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_errors_name_the_file_then_the_cause() {
        let e = RolloutError::OpenEvents { path: "drops.jsonl".into(), source: std::io::ErrorKind::NotFound.into() };
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "reading events drops.jsonl: entity not found");
        let e = RolloutError::ReadEvents { name: "stdin".into(), source: std::io::ErrorKind::InvalidData.into() };
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "reading stdin: invalid data");
    }
}
