//! YAML plumbing: `file:line:column` errors with their kind, and the validation context.
//!
//! serde_yaml attaches the line and column of the value being read to every error raised inside a
//! `Deserialize` impl. So cross-references (a flow's role, a `when` option, a site's catalog) are
//! checked *while* deserializing, by types that consult a thread-local context filled from a
//! lenient first pass over the same file. Every error then points at the offending value.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error::{ErrorKind, PolicyError, Position};
use super::options::OptionKind;

/// An error raised inside a `Deserialize` impl. serde carries only its message out, so its kind
/// is set aside in [`RAISED`] and joined again to the message in [`from_str`].
pub(crate) struct Fault {
    pub kind: ErrorKind,
    pub msg: String,
}

impl ErrorKind {
    pub(crate) fn fault(self, msg: impl Into<String>) -> Fault {
        Fault { kind: self, msg: msg.into() }
    }
}

impl Fault {
    /// The serde error to return, its kind set aside for [`from_str`].
    pub(crate) fn raise<E: de::Error>(self) -> E {
        let e = E::custom(&self.msg);
        RAISED.with(|r| *r.borrow_mut() = Some(self));
        e
    }
}

thread_local! {
    /// The last [`Fault`] raised on this thread (a lenient pass may have raised and dropped one:
    /// [`yaml_error`] only takes it when the message is the one serde returned).
    static RAISED: RefCell<Option<Fault>> = const { RefCell::new(None) };
}

/// Deserializes `text` as `T`; errors name `file`, line and column, field and kind.
pub(crate) fn from_str<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, PolicyError> {
    RAISED.with(|r| r.borrow_mut().take());
    serde_yaml::from_str(text).map_err(|e| yaml_error(file, e))
}

/// Turns a serde_yaml error into `file:line:column: path: message`, with its kind.
fn yaml_error(file: &Path, e: serde_yaml::Error) -> PolicyError {
    let raised = RAISED.with(|r| r.borrow_mut().take());
    let mut msg = e.to_string();
    let at = e.location().map(|loc| {
        let mark = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(i) = msg.find(&mark) {
            msg.replace_range(i..i + mark.len(), "");
        }
        Position { line: loc.line(), column: loc.column() }
    });
    let (field, message) = match raised {
        Some(f) if msg == f.msg => (None, f),
        Some(f) if msg.ends_with(&format!(": {}", f.msg)) => (Some(msg[..msg.len() - f.msg.len() - 2].to_owned()), f),
        _ => {
            // serde's own errors (types, unknown and missing fields) and the YAML reader's.
            let (field, rest) = match msg.split_once(": ") {
                Some((path, rest)) if !path.contains([' ', '`']) => (Some(path.to_owned()), rest.to_owned()),
                _ => (None, msg.clone()),
            };
            (field, Fault { kind: serde_kind(&rest), msg: rest })
        }
    };
    let mut e = PolicyError::at(message.kind, file, at, message.msg);
    e.field = field;
    e
}

/// The kind of an error serde or serde_yaml raised, from its message (their errors carry no kind).
fn serde_kind(msg: &str) -> ErrorKind {
    let starts = |p: &[&str]| p.iter().any(|p| msg.starts_with(p));
    if starts(&["unknown field"]) {
        ErrorKind::UnknownField
    } else if starts(&["missing field"]) {
        ErrorKind::MissingField
    } else if starts(&["invalid type", "invalid length"]) {
        ErrorKind::WrongType
    } else if starts(&["invalid value", "unknown variant"]) {
        ErrorKind::BadValue
    } else if starts(&["duplicate field", "duplicate entry"]) {
        ErrorKind::Duplicate
    } else {
        ErrorKind::Syntax
    }
}

/// `file:1:1: the file is empty` when `text` is blank.
pub(crate) fn check_not_empty(file: &Path, text: &str) -> Result<(), PolicyError> {
    if text.trim().is_empty() {
        return Err(PolicyError::at(ErrorKind::Empty, file, Some(Position { line: 1, column: 1 }), "the file is empty"));
    }
    Ok(())
}

/// Parses `text` leniently (any YAML) for the first pass; syntax errors are reported here.
pub(crate) fn parse_value(file: &Path, text: &str) -> Result<serde_yaml::Value, PolicyError> {
    check_not_empty(file, text)?;
    from_str(file, text)
}

/// What a catalog's flows may refer to; filled from the first pass.
#[derive(Default)]
pub(crate) struct CatalogCtx {
    /// The file stem: the catalog's `name` must equal it.
    pub stem: String,
    pub roles: HashSet<String>,
    pub options: HashMap<String, OptionKind>,
    /// Ids already read in this file (duplicates are errors).
    pub seen_roles: HashSet<String>,
    pub seen_flows: HashSet<String>,
    /// Flow ids of catalogs loaded before this one: id -> catalog name.
    pub prior_flows: HashMap<String, String>,
}

/// What a site may refer to; filled from its catalogs and its own first pass.
#[derive(Default)]
pub(crate) struct SiteCtx {
    /// Catalog names available in the catalog directory.
    pub available: Vec<String>,
    pub seen_catalogs: HashSet<String>,
    /// Roles of the selected catalogs: id -> `any`.
    pub roles: HashMap<String, bool>,
    /// Roles the site binds: id -> the binding has at least one CIDR. `None` when `roles:` is
    /// not a mapping (its own error is the one to report).
    pub bound: Option<HashMap<String, bool>>,
    /// Per role bound in the `{ cidrs, except, except-roles }` form, from the first pass: the
    /// CIDRs of its `cidrs` that parse (an `except` must lie inside one of them) and the roles
    /// its `except-roles` name (a cycle through them is an error).
    pub written: HashMap<String, Vec<super::cidr::Cidr>>,
    pub except_roles: HashMap<String, Vec<String>>,
    /// Catalog options by name: every (catalog, kind) declaring it.
    pub options: HashMap<String, Vec<(String, OptionKind)>>,
}

thread_local! {
    static CATALOG: RefCell<Option<CatalogCtx>> = const { RefCell::new(None) };
    static SITE: RefCell<Option<SiteCtx>> = const { RefCell::new(None) };
}

/// Runs `f` with `ctx` installed as the catalog context; returns the context afterwards.
pub(crate) fn with_catalog_ctx<R>(ctx: CatalogCtx, f: impl FnOnce() -> R) -> (R, CatalogCtx) {
    CATALOG.with(|c| *c.borrow_mut() = Some(ctx));
    let r = f();
    let ctx = CATALOG.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, ctx)
}

pub(crate) fn with_site_ctx<R>(ctx: SiteCtx, f: impl FnOnce() -> R) -> R {
    SITE.with(|c| *c.borrow_mut() = Some(ctx));
    let r = f();
    SITE.with(|c| c.borrow_mut().take());
    r
}

/// Applies `f` to the catalog context if one is installed (outside a loader nothing is checked).
pub(crate) fn catalog_ctx<R>(f: impl FnOnce(&mut CatalogCtx) -> R) -> Option<R> {
    CATALOG.with(|c| c.borrow_mut().as_mut().map(f))
}

pub(crate) fn site_ctx<R>(f: impl FnOnce(&mut SiteCtx) -> R) -> Option<R> {
    SITE.with(|c| c.borrow_mut().as_mut().map(f))
}

/// A scalar read as a string and checked by a function *inside* the visitor, so that serde_yaml
/// marks an error with the scalar's own line and column (an error raised after `deserialize`
/// returns would get the enclosing mapping's position instead).
pub(crate) struct StrWith<F>(pub &'static str, pub F);

impl<'de, T, F: FnOnce(&str) -> Result<T, Fault>> DeserializeSeed<'de> for StrWith<F> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, T, F: FnOnce(&str) -> Result<T, Fault>> Visitor<'de> for StrWith<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        (self.1)(s).map_err(Fault::raise)
    }
}

/// A map key that must be one of `names`: an unknown key is reported at the key itself.
pub(crate) fn key_of(names: &'static [&'static str]) -> StrWith<impl FnOnce(&str) -> Result<&'static str, Fault>> {
    StrWith("a key", move |s: &str| {
        names
            .iter()
            .find(|n| **n == s)
            .copied()
            .ok_or_else(|| ErrorKind::UnknownField.fault(format!("unknown key `{s}`, expected one of: {}", names.join(", "))))
    })
}

/// Reads a mapping into `R` (usually a derived struct), then checks it inside the visitor so that
/// the error is marked with the mapping's position.
pub(crate) fn checked_map<'de, D, R, T>(d: D, check: impl FnOnce(R) -> Result<T, Fault>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
{
    struct V<F, R>(F, PhantomData<R>);
    impl<'de, F, R, T> Visitor<'de> for V<F, R>
    where
        F: FnOnce(R) -> Result<T, Fault>,
        R: Deserialize<'de>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
            (self.0)(raw).map_err(Fault::raise)
        }
    }
    d.deserialize_map(V(check, PhantomData))
}

/// Reads a non-empty sequence of `T` (with a seed per element), checked inside the visitor.
pub(crate) fn seq_with<'de, D, T, S>(d: D, what: &'static str, mut seed: impl FnMut() -> S) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    S: DeserializeSeed<'de, Value = T>,
{
    struct V<'a, F>(&'static str, &'a mut F);
    impl<'de, 'a, T, S: DeserializeSeed<'de, Value = T>, F: FnMut() -> S> Visitor<'de> for V<'a, F> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a list (of {})", self.0)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(x) = seq.next_element_seed((self.1)())? {
                out.push(x);
            }
            if out.is_empty() {
                return Err(ErrorKind::EmptyList.fault(format!("must list at least one {}", self.0)).raise());
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V(what, &mut seed))
}

/// `kebab-case` ids: lowercase letters and digits in words joined by `-` (dots allowed in words).
pub(crate) fn check_kebab(what: &str, s: &str) -> Result<(), Fault> {
    let ok = !s.is_empty()
        && s.split('-').all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.'));
    if ok {
        Ok(())
    } else {
        Err(ErrorKind::NotKebab.fault(format!("{what} `{s}` is not kebab-case (lowercase words joined by `-`)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fault raised and dropped by a lenient pass does not give its kind to a later error.
    #[test]
    fn a_dropped_fault_is_not_the_kind_of_the_next_error() {
        let _: serde_yaml::Error = ErrorKind::UnknownRole.fault("unknown role `x`").raise();
        let e = from_str::<Vec<u16>>(Path::new("f.yaml"), "[1, x]").unwrap_err();
        assert_eq!((e.kind, e.field.as_deref()), (ErrorKind::WrongType, Some(".[1]")), "{e}");
        assert_eq!(e.at, Some(Position { line: 1, column: 5 }));
        let _: serde_yaml::Error = ErrorKind::UnknownRole.fault("unknown role `x`").raise();
        let e = from_str::<Vec<u16>>(Path::new("f.yaml"), "[1, ").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Syntax, "{e}");
        assert!(e.to_string().starts_with("f.yaml:"), "{e}");
    }
}
