//! Catalog options: declarations, values, `when` conditions, and the values a site chooses.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error::ErrorKind;
use super::yaml::{catalog_ctx, checked_map, site_ctx, Fault, StrWith};

/// Option names the dataplane itself reads from a site; catalogs may not declare them.
pub const DATAPLANE_OPTIONS: [&str; 7] = [
    "unprotected",
    "icmp-echo",
    "source-ports",
    "conntrack-size",
    "conntrack-tcp-established",
    "conntrack-tcp-transitory",
    "conntrack-udp",
];

/// `source-ports`: whether flows keep the source ports their document gives. The documents
/// write "S = Source port, typically >= 1024": a NAT that rewrites source ports, or a client
/// below 1024, is outside that reading, and `any` is the site's way to say so without editing
/// a catalog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourcePorts {
    /// Every flow's `sport` as its catalog gives it.
    #[default]
    AsDocumented,
    /// Every flow's `sport` is 0-65535, in every catalog of the site.
    Any,
}

impl SourcePorts {
    pub const OPTION: &'static str = "source-ports";

    pub const fn name(self) -> &'static str {
        match self {
            SourcePorts::AsDocumented => "as-documented",
            SourcePorts::Any => "any",
        }
    }

    /// The site's value (checked when the site was read); the default when it sets none.
    pub fn from_site(options: &SiteOptions) -> Self {
        match options.get(Self::OPTION) {
            Some(OptValue::Str(s)) if s == "any" => SourcePorts::Any,
            _ => SourcePorts::AsDocumented,
        }
    }

    pub fn is_documented(&self) -> bool {
        *self == SourcePorts::AsDocumented
    }
}

impl fmt::Display for SourcePorts {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Connection tracking (replies to connections a protected server opens): the table size and
/// the idle timeouts, from the site's `conntrack-*` options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackOptions {
    /// `conntrack-size`: entries of the connection-tracking table, per IP version.
    pub size: u32,
    /// `conntrack-tcp-established`: idle timeout of an established TCP connection, seconds.
    pub tcp_established: u32,
    /// `conntrack-tcp-transitory`: idle timeout of a TCP connection opening or closing, seconds.
    pub tcp_transitory: u32,
    /// `conntrack-udp`: idle timeout of a UDP exchange, seconds.
    pub udp: u32,
}

impl ConntrackOptions {
    /// (option name, minimum, maximum, default) of each field, in field order.
    pub const LIMITS: [(&'static str, i64, i64, u32); 4] = [
        ("conntrack-size", 1024, 4_194_304, 65536),
        ("conntrack-tcp-established", 10, 604_800, 3600),
        ("conntrack-tcp-transitory", 1, 3600, 60),
        ("conntrack-udp", 1, 3600, 60),
    ];

    /// The site's values (checked when the site was read), defaults for the options it omits.
    pub fn from_site(options: &SiteOptions) -> Self {
        let [size, tcp_established, tcp_transitory, udp] =
            Self::LIMITS.map(|(name, min, max, default)| match options.get(name) {
                Some(OptValue::Int(n)) if (min..=max).contains(n) => *n as u32,
                _ => default,
            });
        ConntrackOptions { size, tcp_established, tcp_transitory, udp }
    }
}

impl Default for ConntrackOptions {
    fn default() -> Self {
        Self::from_site(&SiteOptions::default())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionKind {
    Enum(Vec<String>),
    Int { min: i64, max: i64 },
    Bool,
}

/// An option value as written: a string, an integer or a boolean.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OptValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl fmt::Display for OptValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            OptValue::Str(s) => f.write_str(s),
            OptValue::Int(n) => write!(f, "{n}"),
            OptValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl OptValue {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            OptValue::Str(s) => s.as_str().into(),
            OptValue::Int(n) => (*n).into(),
            OptValue::Bool(b) => (*b).into(),
        }
    }
}

impl OptionKind {
    /// The canonical value for `v`, or why it is not a value of this option.
    pub fn check(&self, v: &OptValue) -> Result<OptValue, String> {
        match (self, v) {
            (OptionKind::Enum(vals), OptValue::Str(_) | OptValue::Int(_)) => {
                let s = v.to_string();
                if vals.contains(&s) {
                    Ok(OptValue::Str(s))
                } else {
                    Err(format!("`{s}` is not a value of this option ({})", self.describe()))
                }
            }
            (OptionKind::Int { min, max }, OptValue::Int(n)) if (*min..=*max).contains(n) => Ok(v.clone()),
            (OptionKind::Bool, OptValue::Bool(_)) => Ok(v.clone()),
            _ => Err(format!("`{v}` is not a value of this option ({})", self.describe())),
        }
    }

    /// Every value, for enum and bool options (what `by` must cover).
    pub fn values(&self) -> Option<Vec<OptValue>> {
        match self {
            OptionKind::Enum(v) => Some(v.iter().map(|s| OptValue::Str(s.clone())).collect()),
            OptionKind::Bool => Some(vec![OptValue::Bool(false), OptValue::Bool(true)]),
            OptionKind::Int { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            OptionKind::Enum(v) => format!("one of: {}", v.join(", ")),
            OptionKind::Int { min, max } => format!("an integer {min}..{max}"),
            OptionKind::Bool => "true or false".into(),
        }
    }
}

/// Reads a scalar option value and checks it against `kind` (if known) inside the visitor.
pub(crate) struct ValueSeed<'a>(pub Option<&'a OptionKind>);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = OptValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<OptValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn done<E: de::Error>(self, v: OptValue) -> Result<OptValue, E> {
        match self.0 {
            Some(k) => k.check(&v).map_err(|e| ErrorKind::BadValue.fault(e).raise()),
            None => Ok(v),
        }
    }
}

/// A visitor for one option value (string, integer or boolean), handed to the seed's `done`.
macro_rules! option_value_visitor {
    ($seed:ty) => {
        impl<'de> Visitor<'de> for $seed {
            type Value = OptValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an option value (a string, an integer or a boolean)")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<OptValue, E> {
                self.done(OptValue::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<OptValue, E> {
                self.done(OptValue::Int(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<OptValue, E> {
                let n = i64::try_from(n).map_err(|_| ErrorKind::BadValue.fault("integer too large").raise())?;
                self.done(OptValue::Int(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OptValue, E> {
                self.done(OptValue::Str(s.to_owned()))
            }
        }
    };
}

option_value_visitor!(ValueSeed<'_>);

impl<'de> Deserialize<'de> for OptValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ValueSeed(None).deserialize(d)
    }
}

/// A declared option.
#[derive(Clone, Debug)]
pub struct OptionDecl {
    pub description: String,
    pub kind: OptionKind,
    pub default: OptValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecl {
    #[serde(default)]
    description: String,
    values: Option<Vec<String>>,
    integer: Option<IntRange>,
    bool: Option<bool>,
    default: Option<OptValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntRange {
    min: i64,
    max: i64,
}

impl<'de> Deserialize<'de> for OptionDecl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map(d, |r: RawDecl| {
            let bad = |msg: &str| Err(ErrorKind::BadOptionDecl.fault(msg));
            let kind = match (r.values, r.integer, r.bool) {
                (Some(v), None, None) => {
                    if v.is_empty() {
                        return Err(ErrorKind::EmptyList.fault("`values` must list at least one value"));
                    }
                    if let Some(dup) = v.iter().enumerate().find(|(i, x)| v[..*i].contains(x)) {
                        return Err(ErrorKind::Duplicate.fault(format!("value `{}` is listed twice", dup.1)));
                    }
                    OptionKind::Enum(v)
                }
                (None, Some(IntRange { min, max }), None) if min <= max => OptionKind::Int { min, max },
                (None, Some(_), None) => return bad("`integer`: min is above max"),
                (None, None, Some(true)) => OptionKind::Bool,
                (None, None, Some(false)) => return bad("`bool:` must be `true` (it marks a boolean option)"),
                _ => return bad("an option needs exactly one of `values`, `integer` or `bool`"),
            };
            let default = r.default.ok_or_else(|| ErrorKind::MissingField.fault("missing field `default`"))?;
            let default = kind.check(&default).map_err(|e| ErrorKind::BadValue.fault(format!("default: {e}")))?;
            Ok(OptionDecl { description: r.description, kind, default })
        })
    }
}

/// A flow's condition: every listed option must have one of the listed values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct When(pub Vec<(String, Vec<OptValue>)>);

impl When {
    pub fn holds(&self, values: &OptionValues) -> bool {
        self.0.iter().all(|(name, accepted)| values.get(name).is_some_and(|v| accepted.contains(v)))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| {
                let v = match v.as_slice() {
                    [one] => one.to_json(),
                    many => many.iter().map(OptValue::to_json).collect(),
                };
                (k.clone(), v)
            })
            .collect();
        m.into()
    }
}

/// A catalog option name (checked against the catalog being read): returns its kind.
/// `seen`: names already listed in the same mapping (a repeat is an error).
pub(crate) fn catalog_option(seen: Vec<String>) -> StrWith<impl FnOnce(&str) -> Result<NamedKind, Fault>> {
    StrWith("an option name", move |s: &str| {
        if seen.iter().any(|n| n == s) {
            return Err(ErrorKind::Duplicate.fault(format!("option `{s}` is listed twice")));
        }
        check_catalog_option(s)
    })
}

/// An option name with its kind (`None` outside a loader, where nothing is checked).
pub(crate) type NamedKind = (String, Option<OptionKind>);

/// The kind of catalog option `s`, or why it is not an option.
pub(crate) fn check_catalog_option(s: &str) -> Result<NamedKind, Fault> {
    let kind = catalog_ctx(|c| {
        c.options.get(s).cloned().ok_or_else(|| {
            let mut known: Vec<&str> = c.options.keys().map(String::as_str).collect();
            known.sort();
            ErrorKind::UnknownOption.fault(format!("`{s}` is not an option of this catalog (options: {})", list_or_none(&known)))
        })
    })
    .transpose()?;
    Ok((s.to_owned(), kind))
}

pub(crate) fn list_or_none(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// One accepted value or a list of them, each checked against `kind`.
struct AcceptedSeed<'a>(Option<&'a OptionKind>);

impl<'de> DeserializeSeed<'de> for AcceptedSeed<'_> {
    type Value = Vec<OptValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AcceptedSeed<'_> {
    type Value = Vec<OptValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an option value or a list of values")
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        ValueSeed(self.0).visit_bool(b).map(|v| vec![v])
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        ValueSeed(self.0).visit_i64(n).map(|v| vec![v])
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        ValueSeed(self.0).visit_u64(n).map(|v| vec![v])
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        ValueSeed(self.0).visit_str(s).map(|v| vec![v])
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed(self.0))? {
            out.push(v);
        }
        if out.is_empty() {
            return Err(ErrorKind::EmptyList.fault("the list of accepted values is empty").raise());
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = When;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of option name to value(s)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<When, A::Error> {
                let mut out: Vec<(String, Vec<OptValue>)> = Vec::new();
                loop {
                    let seen: Vec<String> = out.iter().map(|(n, _)| n.clone()).collect();
                    let Some((name, kind)) = map.next_key_seed(catalog_option(seen))? else {
                        break;
                    };
                    let vals = map.next_value_seed(AcceptedSeed(kind.as_ref()))?;
                    out.push((name, vals));
                }
                Ok(When(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The value of every option of one catalog (site choice or default).
#[derive(Clone, Debug, Default)]
pub struct OptionValues(pub HashMap<String, OptValue>);

impl OptionValues {
    pub fn get(&self, name: &str) -> Option<&OptValue> {
        self.0.get(name)
    }

    /// Defaults of `decls`, overridden by `chosen` where it names them.
    pub fn resolve(decls: &[(String, OptionDecl)], chosen: &[(String, OptValue)]) -> Self {
        let mut m = HashMap::new();
        for (name, d) in decls {
            let v = chosen
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| d.kind.check(v).ok())
                .unwrap_or_else(|| d.default.clone());
            m.insert(name.clone(), v);
        }
        OptionValues(m)
    }
}

/// The site's `options:` mapping: catalog options and the dataplane's own, each checked against
/// every declaration of that name.
#[derive(Clone, Debug, Default)]
pub struct SiteOptions(pub Vec<(String, OptValue)>);

/// The kind of a dataplane option (one of [`DATAPLANE_OPTIONS`]); None for any other name.
pub(crate) fn dataplane_kind(name: &str) -> Option<OptionKind> {
    match name {
        "unprotected" => Some(OptionKind::Enum(vec!["pass".into(), "drop".into()])),
        "icmp-echo" => Some(OptionKind::Enum(vec!["allow".into(), "deny".into()])),
        SourcePorts::OPTION => Some(OptionKind::Enum(vec!["as-documented".into(), "any".into()])),
        _ => ConntrackOptions::LIMITS.iter().find(|l| l.0 == name).map(|&(_, min, max, _)| OptionKind::Int { min, max }),
    }
}

impl SiteOptions {
    pub fn get(&self, name: &str) -> Option<&OptValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Every kind a site option name must satisfy, with the catalog declaring it ("" for the
/// dataplane's own options).
fn site_option_kinds(s: &str) -> Result<Vec<(String, OptionKind)>, Fault> {
    if let Some(k) = dataplane_kind(s) {
        return Ok(vec![(String::new(), k)]);
    }
    site_ctx(|c| match c.options.get(s) {
        Some(v) => Ok(v.clone()),
        None => {
            let mut known: Vec<&str> = c.options.keys().map(String::as_str).collect();
            known.extend(DATAPLANE_OPTIONS);
            known.sort();
            let known = known.join(", ");
            Err(ErrorKind::UnknownOption
                .fault(format!("unknown option `{s}` (options of the selected catalogs and the dataplane: {known})")))
        }
    })
    .unwrap_or(Ok(Vec::new()))
}

/// Checks a value against several kinds (an option declared by several catalogs).
struct MultiValueSeed(Vec<(String, OptionKind)>);

impl<'de> DeserializeSeed<'de> for MultiValueSeed {
    type Value = OptValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<OptValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl MultiValueSeed {
    fn done<E: de::Error>(self, v: OptValue) -> Result<OptValue, E> {
        let mut out = v.clone();
        for (catalog, k) in &self.0 {
            out = k
                .check(&v)
                .map_err(|e| match catalog.as_str() {
                    "" => ErrorKind::BadValue.fault(e),
                    c => ErrorKind::BadValue.fault(format!("{e} in catalog `{c}`")),
                })
                .map_err(Fault::raise)?;
        }
        Ok(out)
    }
}

option_value_visitor!(MultiValueSeed);

impl<'de> Deserialize<'de> for SiteOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SiteOptions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of option name to value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SiteOptions, A::Error> {
                let mut out: Vec<(String, OptValue)> = Vec::new();
                loop {
                    let out_ref = &out;
                    let key = StrWith("an option name", |s: &str| {
                        if out_ref.iter().any(|(n, _)| n == s) {
                            return Err(ErrorKind::Duplicate.fault(format!("option `{s}` is set twice")));
                        }
                        site_option_kinds(s).map(|k| (s.to_owned(), k))
                    });
                    let Some((name, kinds)) = map.next_key_seed(key)? else {
                        break;
                    };
                    let v = map.next_value_seed(MultiValueSeed(kinds))?;
                    out.push((name, v));
                }
                Ok(SiteOptions(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A map of option declarations in file order; names are unique and not the dataplane's.
#[derive(Clone, Debug, Default)]
pub struct OptionDecls(pub Vec<(String, OptionDecl)>);

impl<'de> Deserialize<'de> for OptionDecls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OptionDecls;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of option name to declaration")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OptionDecls, A::Error> {
                let mut out: Vec<(String, OptionDecl)> = Vec::new();
                loop {
                    let out_ref = &out;
                    let key = StrWith("an option name", |s: &str| {
                        super::yaml::check_kebab("option name", s)?;
                        if DATAPLANE_OPTIONS.contains(&s) {
                            let msg = format!("option name `{s}` is reserved for the dataplane");
                            return Err(ErrorKind::ReservedOption.fault(msg));
                        }
                        if out_ref.iter().any(|(n, _)| n == s) {
                            return Err(ErrorKind::Duplicate.fault(format!("option `{s}` is declared twice")));
                        }
                        Ok(s.to_owned())
                    });
                    let Some(name) = map.next_key_seed(key)? else {
                        break;
                    };
                    let decl: OptionDecl = map.next_value()?;
                    out.push((name, decl));
                }
                Ok(OptionDecls(out))
            }
        }
        d.deserialize_map(V)
    }
}
