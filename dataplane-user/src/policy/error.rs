//! Policy errors: what is wrong, as a kind callers can match, and where, as `file:line:column`
//! and the field, printed as `FILE:LINE:COLUMN: FIELD: MESSAGE`.

use std::fmt;
use std::path::{Path, PathBuf};

/// What is wrong with a policy source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A file, or the catalog directory, could not be read.
    Io,
    /// The file is empty.
    Empty,
    /// Not YAML (or YAML the reader refuses: recursion or repetition limits).
    Syntax,
    /// A key the format does not have.
    UnknownField,
    /// A required key is missing.
    MissingField,
    /// A value of the wrong shape: a list for a string, a mapping for a list...
    WrongType,
    /// A value outside the values allowed: an option value, an action.
    BadValue,
    /// An id that is not kebab-case.
    NotKebab,
    /// A catalog's `name` that is not its file name.
    NameMismatch,
    UnknownRole,
    UnknownCatalog,
    UnknownOption,
    /// A catalog declaring one of the dataplane's own options.
    ReservedOption,
    /// An option declaration that is not one of the forms (`values`, `integer`, `bool`).
    BadOptionDecl,
    /// A protocol other than tcp or udp.
    BadProtocol,
    BadCidr,
    /// A port, a range or a port spec (`by`/`cases`, `base`/`count`) that is not valid.
    BadPorts,
    /// A list that must name something is empty.
    EmptyList,
    /// A role declared, bound or listed twice.
    DuplicateRole,
    /// A flow id used twice, in one catalog or across catalogs.
    DuplicateFlow,
    /// Anything else given twice: a catalog, an option, a value, a protocol, a key.
    Duplicate,
    /// A protected role with no addresses.
    ProtectedRoleUnbound,
    /// A role still bound to the placeholder `dataplane init` writes (`[REPLACE-ME]`).
    Placeholder,
    /// A binding's `except` prefix that lies outside its `cidrs`.
    ExceptOutside,
    /// Roles whose `except-roles` lead back to themselves.
    ExceptCycle,
}

/// A line and column, both from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// An error in a site or a catalog.
#[derive(Debug, thiserror::Error)]
pub struct PolicyError {
    pub kind: ErrorKind,
    /// The file the error is in; None where the message names the file itself (reading it) or
    /// where no file is at fault (a policy built in memory).
    pub file: Option<PathBuf>,
    /// Where in `file`; None when the YAML reader gave no position.
    pub at: Option<Position>,
    /// The field, as the YAML reader names it (`flows[1].dport`); None at the top of the file.
    pub field: Option<String>,
    /// What is wrong, without the position and field.
    pub message: String,
    #[source]
    source: Option<std::io::Error>,
}

impl PolicyError {
    /// An error of no file and position.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PolicyError { kind, file: None, at: None, field: None, message: message.into(), source: None }
    }

    /// `what` (`site`, `catalog`, `catalog directory`) at `path` could not be read.
    pub fn io(what: &str, path: &Path, e: std::io::Error) -> Self {
        PolicyError { source: Some(e), ..Self::new(ErrorKind::Io, format!("reading {what} {}", path.display())) }
    }

    /// An error at a position of `file`.
    pub(crate) fn at(kind: ErrorKind, file: &Path, at: Option<Position>, message: impl Into<String>) -> Self {
        PolicyError { file: Some(file.to_owned()), at, ..Self::new(kind, message) }
    }

    /// The message with its field, as printed after the position.
    pub fn detail(&self) -> String {
        match &self.field {
            Some(field) => format!("{field}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (&self.file, self.at) {
            (Some(file), Some(at)) => write!(f, "{}:{}:{}: ", file.display(), at.line, at.column)?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, _) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)?;
        // `{:#}` prints the cause too, as anyhow does.
        match &self.source {
            Some(e) if f.alternate() => write!(f, ": {e}"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_as_file_line_column_field_message() {
        let mut e = PolicyError::at(
            ErrorKind::UnknownRole,
            Path::new("sites/s.yaml"),
            Some(Position { line: 3, column: 11 }),
            "unknown role `x`",
        );
        e.field = Some("protect[0]".into());
        assert_eq!(e.to_string(), "sites/s.yaml:3:11: protect[0]: unknown role `x`");
        assert_eq!(e.detail(), "protect[0]: unknown role `x`");
        e.at = None;
        assert_eq!(e.to_string(), "sites/s.yaml: protect[0]: unknown role `x`");
        let e = PolicyError::io("site", Path::new("s.yaml"), std::io::ErrorKind::NotFound.into());
        assert_eq!(e.to_string(), "reading site s.yaml");
        assert_eq!(format!("{e:#}"), "reading site s.yaml: entity not found");
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "reading site s.yaml: entity not found");
    }
}
