//! Catalog files (`policies/catalog/NAME.yaml`): one per source document, every documented flow.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::options::{OptionDecl, OptionDecls, OptionValues, When};
use super::ports::{DportSpec, PortSpec, SportSpec};
use super::yaml::{catalog_ctx, check_kebab, with_catalog_ctx, yaml_error, CatalogCtx, StrWith};

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
        Some(stem) if stem != s => Err(format!("name `{s}` must equal the file name `{stem}`")),
        _ => Ok(s.to_owned()),
    })
    .deserialize(d)
}

fn role_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    StrWith("a role id", |s: &str| {
        check_kebab("role id", s)?;
        if catalog_ctx(|c| !c.seen_roles.insert(s.to_owned())) == Some(true) {
            return Err(format!("role `{s}` is declared twice"));
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
                return Err(format!("flow id `{s}` is already used by catalog `{other}` (flow ids are unique across catalogs)"));
            }
            if !c.seen_flows.insert(s.to_owned()) {
                return Err(format!("flow id `{s}` is used twice in this catalog"));
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
            Err(format!("unknown role `{s}` (roles of this catalog: {})", super::options::list_or_none(&known)))
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
            Proto::parse(s).map(|p| vec![p]).map_err(E::custom)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Proto>, A::Error> {
            let mut out: Vec<Proto> = Vec::new();
            while let Some(p) = seq.next_element_seed(StrWith("tcp or udp", Proto::parse))? {
                if out.contains(&p) {
                    return Err(de::Error::custom(format!("protocol {} is listed twice", p.name())));
                }
                out.push(p);
            }
            if out.is_empty() {
                return Err(de::Error::custom("the protocol list is empty"));
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

impl Catalog {
    /// Every option at its default.
    pub fn default_values(&self) -> OptionValues {
        OptionValues::resolve(&self.options, &[])
    }
}

/// Catalog files in `dir`: name (file stem) -> path, sorted by name.
pub fn catalog_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading catalog directory {}", dir.display()))?;
    let mut out = Vec::new();
    for e in rd {
        let p = e?.path();
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
pub fn load_catalog(path: &Path, prior_flows: &HashMap<String, String>) -> anyhow::Result<Catalog> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading catalog {}", path.display()))?;
    parse_catalog(path, &text, prior_flows)
}

/// Parses and checks a catalog's text; `path` names it in errors.
pub fn parse_catalog(path: &Path, text: &str, prior_flows: &HashMap<String, String>) -> anyhow::Result<Catalog> {
    let ctx = first_pass(path, text, prior_flows)?;
    let (r, _) = with_catalog_ctx(ctx, || serde_yaml::from_str::<CatalogFile>(text));
    let f = r.map_err(|e| yaml_error(path, e))?;
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
pub fn load_catalogs(paths: &[PathBuf]) -> anyhow::Result<Vec<Catalog>> {
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
fn first_pass(path: &Path, text: &str, prior: &HashMap<String, String>) -> anyhow::Result<CatalogCtx> {
    if text.trim().is_empty() {
        anyhow::bail!("{}:1:1: the file is empty", path.display());
    }
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
