//! Catalog files (`policies/catalog/NAME.yaml`): one per source document, every documented flow.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, PolicyError};
use super::options::{OptionDecl, OptionDecls, OptionValues, When};
use super::ports::{DportSpec, PortSpec, SportSpec};
use super::yaml::{catalog_ctx, check_kebab, check_not_empty, from_str, with_catalog_ctx, CatalogCtx, Fault, StrWith};

#[derive(Clone, Debug)]
pub struct Catalog {
    pub name: String,
    pub path: PathBuf,
    pub document: String,
    pub title: String,
    pub options: Vec<(String, OptionDecl)>,
    pub roles: Vec<RoleDecl>,
    pub flows: Vec<FlowDecl>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDecl {
    #[serde(deserialize_with = "role_id")]
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// Stands for every address unless the site binds it.
    #[serde(default)]
    pub any: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    pub fn parse(s: &str) -> Result<Proto, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("protocol `{s}` is not tcp or udp")),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

impl Action {
    pub const fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowDecl {
    #[serde(deserialize_with = "flow_id")]
    pub id: String,
    pub description: String,
    #[serde(deserialize_with = "role_ref")]
    pub from: String,
    #[serde(deserialize_with = "role_ref")]
    pub to: String,
    #[serde(rename = "protocol", deserialize_with = "protocols")]
    pub protocols: Vec<Proto>,
    #[serde(default)]
    pub sport: SportSpec,
    pub dport: DportSpec,
    pub table: String,
    #[serde(default)]
    pub when: When,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub note: Option<String>,
}

impl FlowDecl {
    pub fn sport(&self) -> &PortSpec {
        &self.sport.0
    }
    pub fn dport(&self) -> &PortSpec {
        &self.dport.0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(deserialize_with = "catalog_name")]
    name: String,
    document: String,
    title: String,
    #[serde(default)]
    options: OptionDecls,
    #[serde(default)]
    roles: Vec<RoleDecl>,
    #[serde(default)]
    flows: Vec<FlowDecl>,
}

fn catalog_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    StrWith("a catalog name", |s: &str| match catalog_ctx(|c| c.stem.clone()) {
        Some(stem) if stem != s => Err(ErrorKind::NameMismatch.fault(format!("name `{s}` must equal the file name `{stem}`"))),
        _ => Ok(s.to_owned()),
    })
    .deserialize(d)
}

fn role_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    StrWith("a role id", |s: &str| {
        check_kebab("role id", s)?;
        if catalog_ctx(|c| !c.seen_roles.insert(s.to_owned())) == Some(true) {
            return Err(ErrorKind::DuplicateRole.fault(format!("role `{s}` is declared twice")));
        }
        Ok(s.to_owned())
    })
    .deserialize(d)
}

fn flow_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    StrWith("a flow id", |s: &str| {
        check_kebab("flow id", s)?;
        catalog_ctx(|c| {
            if let Some(other) = c.prior_flows.get(s) {
                return Err(ErrorKind::DuplicateFlow
                    .fault(format!("flow id `{s}` is already used by catalog `{other}` (flow ids are unique across catalogs)")));
            }
            if !c.seen_flows.insert(s.to_owned()) {
                return Err(ErrorKind::DuplicateFlow.fault(format!("flow id `{s}` is used twice in this catalog")));
            }
            Ok(())
        })
        .transpose()?;
        Ok(s.to_owned())
    })
    .deserialize(d)
}

fn role_ref<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    StrWith("a role id", |s: &str| {
        catalog_ctx(|c| {
            if c.roles.contains(s) {
                return Ok(());
            }
            let mut known: Vec<&str> = c.roles.iter().map(String::as_str).collect();
            known.sort();
            let known = super::options::list_or_none(&known);
            Err(ErrorKind::UnknownRole.fault(format!("unknown role `{s}` (roles of this catalog: {known})")))
        })
        .transpose()?;
        Ok(s.to_owned())
    })
    .deserialize(d)
}

/// `tcp`, `udp` or `[tcp, udp]`.
fn protocols<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Proto>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Proto>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("tcp, udp or [tcp, udp]")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<Proto>, E> {
            parse_proto(s).map(|p| vec![p]).map_err(Fault::raise)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Proto>, A::Error> {
            let mut out: Vec<Proto> = Vec::new();
            while let Some(p) = seq.next_element_seed(StrWith("tcp or udp", parse_proto))? {
                if out.contains(&p) {
                    return Err(ErrorKind::Duplicate.fault(format!("protocol {} is listed twice", p.name())).raise());
                }
                out.push(p);
            }
            if out.is_empty() {
                return Err(ErrorKind::EmptyList.fault("the protocol list is empty").raise());
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

fn parse_proto(s: &str) -> Result<Proto, Fault> {
    Proto::parse(s).map_err(|e| ErrorKind::BadProtocol.fault(e))
}

impl Catalog {
    /// Every option at its default.
    pub fn default_values(&self) -> OptionValues {
        OptionValues::resolve(&self.options, &[])
    }
}

/// Catalog files in `dir`: name (file stem) -> path, sorted by name.
pub fn catalog_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, PolicyError> {
    let io = |e| PolicyError::io("catalog directory", dir, e);
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let p = e.map_err(io)?.path();
        if p.extension().is_some_and(|x| x == "yaml") {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                out.push((stem.to_owned(), p.clone()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads one catalog; `prior_flows` (flow id -> catalog) are ids taken by catalogs loaded before.
pub fn load_catalog(path: &Path, prior_flows: &HashMap<String, String>) -> Result<Catalog, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io("catalog", path, e))?;
    parse_catalog(path, &text, prior_flows)
}

/// Parses and checks a catalog's text; `path` names it in errors.
pub fn parse_catalog(path: &Path, text: &str, prior_flows: &HashMap<String, String>) -> Result<Catalog, PolicyError> {
    let ctx = first_pass(path, text, prior_flows)?;
    let (r, _) = with_catalog_ctx(ctx, || from_str::<CatalogFile>(path, text));
    let f = r?;
    Ok(Catalog {
        name: f.name,
        path: path.to_owned(),
        document: f.document,
        title: f.title,
        options: f.options.0,
        roles: f.roles,
        flows: f.flows,
    })
}

/// Loads catalogs in order; flow ids must be unique across all of them.
pub fn load_catalogs(paths: &[PathBuf]) -> Result<Vec<Catalog>, PolicyError> {
    let mut prior = HashMap::new();
    let mut out = Vec::new();
    for p in paths {
        let c = load_catalog(p, &prior)?;
        for f in &c.flows {
            prior.insert(f.id.clone(), c.name.clone());
        }
        out.push(c);
    }
    Ok(out)
}

/// What the first pass reads: flows and the rest are skipped without being built.
#[derive(Default, Deserialize)]
struct FirstPass {
    #[serde(default)]
    roles: Option<serde_yaml::Value>,
    #[serde(default)]
    options: Option<serde_yaml::Value>,
}

/// Role ids and option kinds, read leniently so that the second pass can check references. Any
/// error here (syntax, types) is left for the second pass, which reports it with its position.
fn first_pass(path: &Path, text: &str, prior: &HashMap<String, String>) -> Result<CatalogCtx, PolicyError> {
    check_not_empty(path, text)?;
    let v: FirstPass = serde_yaml::from_str(text).unwrap_or_default();
    let mut ctx = CatalogCtx {
        stem: path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned(),
        prior_flows: prior.clone(),
        ..Default::default()
    };
    if let Some(roles) = v.roles.as_ref().and_then(|r| r.as_sequence()) {
        ctx.roles = roles.iter().filter_map(|r| r.get("id")?.as_str().map(str::to_owned)).collect();
    }
    if let Some(opts) = v.options.as_ref().and_then(|o| o.as_mapping()) {
        for (k, d) in opts {
            if let (Some(k), Ok(d)) = (k.as_str(), serde_yaml::from_value::<OptionDecl>(d.clone())) {
                ctx.options.insert(k.to_owned(), d.kind);
            }
        }
    }
    Ok(ctx)
}
