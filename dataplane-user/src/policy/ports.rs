//! Port specs (`sport`, `dport`): parsing with positions, and resolution to port ranges once the
//! option values are known.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error::ErrorKind;
use super::options::{check_catalog_option, OptValue, OptionKind, OptionValues, ValueSeed};
use super::yaml::{key_of, Fault};

/// Sorted, disjoint, non-adjacent inclusive port ranges: the ports a flow matches. Serialized
/// as the list of `[first, last]` pairs; reads as a slice of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    /// Every port, 0-65535.
    pub fn any() -> Self {
        PortRanges(vec![(0, u16::MAX)])
    }

    /// The ranges `v` covers: sorted, overlapping or adjacent ones merged.
    pub fn new(mut v: Vec<(u16, u16)>) -> Self {
        v.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        PortRanges(out)
    }

    /// Whether `port` is in one of the ranges.
    pub fn contains(&self, port: u16) -> bool {
        let i = self.0.partition_point(|&(_, last)| last < port);
        self.0.get(i).is_some_and(|&(first, _)| first <= port)
    }

    /// Whether this is every port.
    pub fn is_any(&self) -> bool {
        self.0 == [(0, u16::MAX)]
    }

    pub fn as_slice(&self) -> &[(u16, u16)] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<(u16, u16)> {
        self.0
    }
}

impl std::ops::Deref for PortRanges {
    type Target = [(u16, u16)];
    fn deref(&self) -> &[(u16, u16)] {
        &self.0
    }
}

impl AsRef<[(u16, u16)]> for PortRanges {
    fn as_ref(&self) -> &[(u16, u16)] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a PortRanges {
    type Item = &'a (u16, u16);
    type IntoIter = std::slice::Iter<'a, (u16, u16)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<(u16, u16)> for PortRanges {
    fn from_iter<I: IntoIterator<Item = (u16, u16)>>(iter: I) -> Self {
        PortRanges::new(iter.into_iter().collect())
    }
}

impl From<Vec<(u16, u16)>> for PortRanges {
    fn from(v: Vec<(u16, u16)>) -> Self {
        PortRanges::new(v)
    }
}

impl PartialEq<[(u16, u16)]> for PortRanges {
    fn eq(&self, other: &[(u16, u16)]) -> bool {
        self.0 == other
    }
}

impl<const N: usize> PartialEq<[(u16, u16); N]> for PortRanges {
    fn eq(&self, other: &[(u16, u16); N]) -> bool {
        self.0 == other
    }
}

impl PartialEq<Vec<(u16, u16)>> for PortRanges {
    fn eq(&self, other: &Vec<(u16, u16)>) -> bool {
        &self.0 == other
    }
}

/// `any`, `443`, `80,443,1024-65535`; `none` for no port (as [`format_ranges`]).
impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&format_ranges(&self.0))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// 0-65535 (source ports only).
    Any,
    Range(u16, u16),
    List(Vec<PortSpec>),
    /// Depends on an enum or bool option; every value has a case.
    By {
        option: String,
        cases: Vec<(OptValue, PortSpec)>,
    },
    /// `base` .. `base + N - 1` for the integer option's value N.
    Count {
        base: u16,
        option: String,
    },
    /// The one port an integer option names (a port the document lets the site configure), or with
    /// `to`, the range from that port to the port a second integer option names (none if reversed).
    Port {
        option: String,
        to: Option<String>,
    },
}

impl PortSpec {
    /// The ports this spec names under `values`.
    pub fn resolve(&self, values: &OptionValues) -> PortRanges {
        let mut out = Vec::new();
        self.collect(values, &mut out);
        PortRanges::new(out)
    }

    fn collect(&self, values: &OptionValues, out: &mut Vec<(u16, u16)>) {
        match self {
            PortSpec::Any => out.push((0, u16::MAX)),
            PortSpec::Range(a, b) => out.push((*a, *b)),
            PortSpec::List(v) => v.iter().for_each(|s| s.collect(values, out)),
            PortSpec::By { option, cases } => {
                let chosen = values.get(option);
                if let Some((_, s)) = cases.iter().find(|(v, _)| Some(v) == chosen) {
                    s.collect(values, out);
                }
            }
            PortSpec::Port { option, to } => {
                let port = |o: &str| match values.get(o) {
                    Some(&OptValue::Int(n)) => u16::try_from(n).ok(),
                    _ => None,
                };
                let last = to.as_deref().map_or(port(option), port);
                if let (Some(a), Some(b)) = (port(option), last) {
                    if a <= b {
                        out.push((a, b));
                    }
                }
            }
            PortSpec::Count { base, option } => {
                if let Some(OptValue::Int(n)) = values.get(option) {
                    if *n >= 1 {
                        let last = (*base as i64 + n - 1).min(u16::MAX as i64) as u16;
                        out.push((*base, last));
                    }
                }
            }
        }
    }
}

/// `any`, `443`, `80,443,1024-65535`; `none` for no port.
pub fn format_ranges(r: &[(u16, u16)]) -> String {
    if r == [(0, u16::MAX)] {
        return "any".into();
    }
    if r.is_empty() {
        return "none".into();
    }
    r.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect::<Vec<_>>().join(",")
}

/// A port 1-65535.
fn port(n: i64) -> Result<u16, String> {
    match n {
        0 => Err("port 0 is not allowed (ports are 1-65535; a source port spec may say `any`)".into()),
        1..=65535 => Ok(n as u16),
        _ if n < 0 => Err(format!("port {n} is negative (ports are 1-65535)")),
        _ => Err(format!("port {n} is above 65535")),
    }
}

fn parse_port_text(s: &str) -> Result<u16, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` is not a port number"));
    }
    port(t.parse::<i64>().unwrap_or(i64::MAX))
}

/// `5060`, `36000-59999` or (source ports) `any`.
fn parse_port_str(s: &str, sport: bool) -> Result<PortSpec, String> {
    let t = s.trim();
    if t == "any" {
        return if sport { Ok(PortSpec::Any) } else { Err("`any` is only allowed for sport; dport must name ports".into()) };
    }
    match t.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port_text(a)?, parse_port_text(b)?);
            if a > b {
                return Err(format!("range {a}-{b} is reversed"));
            }
            Ok(PortSpec::Range(a, b))
        }
        None => {
            let p = parse_port_text(t).map_err(|e| {
                if t.bytes().all(|b| b.is_ascii_digit()) {
                    e
                } else {
                    format!("{e}: expected a port, a range like 36000-59999, a list, `by` or `base`/`count`")
                }
            })?;
            Ok(PortSpec::Range(p, p))
        }
    }
}

/// A port spec error, raised with its kind.
fn bad_ports<E: de::Error>(msg: impl Into<String>) -> E {
    ErrorKind::BadPorts.fault(msg).raise()
}

/// Reads any port spec; `sport` allows `any`.
#[derive(Clone, Copy)]
pub(crate) struct SpecSeed {
    pub sport: bool,
}

impl<'de> DeserializeSeed<'de> for SpecSeed {
    type Value = PortSpec;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PortSpec, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SpecSeed {
    type Value = PortSpec;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a port spec: a port, a range like \"36000-59999\", a list, {by, cases} or {base, count}")
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<PortSpec, E> {
        let p = port(n).map_err(bad_ports)?;
        Ok(PortSpec::Range(p, p))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<PortSpec, E> {
        self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<PortSpec, E> {
        parse_port_str(s, self.sport).map_err(bad_ports)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PortSpec, A::Error> {
        let mut out = Vec::new();
        while let Some(s) = seq.next_element_seed(self)? {
            out.push(s);
        }
        if out.is_empty() {
            return Err(ErrorKind::EmptyList.fault("the port list is empty").raise());
        }
        Ok(PortSpec::List(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PortSpec, A::Error> {
        let mut by: Option<(String, Option<OptionKind>)> = None;
        let mut cases: Option<Vec<(OptValue, PortSpec)>> = None;
        let mut base: Option<u16> = None;
        let mut count: Option<(String, Option<OptionKind>)> = None;
        let mut port: Option<(String, Option<OptionKind>)> = None;
        let mut to: Option<(String, Option<OptionKind>)> = None;
        while let Some(k) = map.next_key_seed(key_of(&["by", "cases", "base", "count", "port", "to"]))? {
            match k {
                "by" => by = Some(map.next_value_seed(option_of(|k| k.values().is_some(), "an enum or bool"))?),
                "cases" => {
                    let kind = by.as_ref().and_then(|b| b.1.clone());
                    cases = Some(map.next_value_seed(CasesSeed { sport: self.sport, kind })?);
                }
                "base" => base = Some(map.next_value_seed(PortSeed)?),
                "port" => port = Some(map.next_value_seed(option_of(|k| matches!(k, OptionKind::Int { .. }), "an integer"))?),
                "to" => to = Some(map.next_value_seed(option_of(|k| matches!(k, OptionKind::Int { .. }), "an integer"))?),
                _ => count = Some(map.next_value_seed(option_of(|k| matches!(k, OptionKind::Int { .. }), "an integer"))?),
            }
        }
        if let Some((option, kind)) = port {
            if by.is_some() || cases.is_some() || base.is_some() || count.is_some() {
                return Err(bad_ports("`port: OPTION` (with `to: OPTION`) stands alone"));
            }
            for (name, kind) in std::iter::once((&option, &kind)).chain(to.as_ref().map(|(n, k)| (n, k))) {
                if let Some(OptionKind::Int { min, max }) = kind {
                    if *min < 1 || *max > 65535 {
                        return Err(bad_ports(format!("`{name}` ({min}..{max}) must lie within ports 1..65535")));
                    }
                }
            }
            return Ok(PortSpec::Port { option, to: to.map(|t| t.0) });
        }
        if to.is_some() {
            return Err(bad_ports("`to: OPTION` goes with `port: OPTION`"));
        }
        match (by, cases, base, count) {
            (Some((option, kind)), Some(cases), None, None) => {
                check_cases(&option, kind.as_ref(), &cases).map_err(Fault::raise)?;
                Ok(PortSpec::By { option, cases })
            }
            (None, None, Some(base), Some((option, kind))) => {
                if let Some(OptionKind::Int { max, .. }) = kind {
                    if base as i64 + max - 1 > 65535 {
                        return Err(bad_ports(format!("base {base} + {option} (up to {max}) - 1 goes above port 65535")));
                    }
                }
                Ok(PortSpec::Count { base, option })
            }
            _ => {
                Err(bad_ports(
                    "a port spec mapping is either `{ by: OPTION, cases: {...} }`, `{ base: PORT, count: OPTION }` or `{ port: OPTION }`",
                ))
            }
        }
    }
}

/// Every value of the `by` option has exactly one case and every case is a value.
fn check_cases(option: &str, kind: Option<&OptionKind>, cases: &[(OptValue, PortSpec)]) -> Result<(), Fault> {
    let Some(kind) = kind else { return Ok(()) };
    let mut canon = Vec::new();
    for (v, _) in cases {
        canon.push(kind.check(v).map_err(|e| ErrorKind::BadValue.fault(format!("cases: {e}")))?);
    }
    for (i, v) in canon.iter().enumerate() {
        if canon[..i].contains(v) {
            return Err(ErrorKind::Duplicate.fault(format!("cases: `{v}` is listed twice")));
        }
    }
    let missing: Vec<String> =
        kind.values().unwrap_or_default().into_iter().filter(|v| !canon.contains(v)).map(|v| v.to_string()).collect();
    if !missing.is_empty() {
        let missing = missing.join(", ");
        return Err(ErrorKind::BadPorts.fault(format!("cases: every value of `{option}` needs a case; missing: {missing}")));
    }
    Ok(())
}

/// An option name for `by`/`count` whose kind passes `ok`.
fn option_of(ok: fn(&OptionKind) -> bool, want: &'static str) -> OptionOf {
    OptionOf { ok, want }
}

struct OptionOf {
    ok: fn(&OptionKind) -> bool,
    want: &'static str,
}

impl<'de> DeserializeSeed<'de> for OptionOf {
    type Value = (String, Option<OptionKind>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let (ok, want) = (self.ok, self.want);
        let seed = super::yaml::StrWith("an option name", move |s: &str| {
            let (name, kind) = check_catalog_option(s)?;
            match &kind {
                Some(k) if !ok(k) => Err(ErrorKind::BadPorts.fault(format!("option `{s}` is not {want} option"))),
                _ => Ok((name, kind)),
            }
        });
        seed.deserialize(d)
    }
}

/// A single port number (for `base`).
struct PortSeed;

impl<'de> DeserializeSeed<'de> for PortSeed {
    type Value = u16;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u16, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PortSeed {
    type Value = u16;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a port number 1-65535")
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u16, E> {
        port(n).map_err(bad_ports)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u16, E> {
        self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// `cases:` of a `by` spec: option value -> port spec.
struct CasesSeed {
    sport: bool,
    kind: Option<OptionKind>,
}

impl<'de> DeserializeSeed<'de> for CasesSeed {
    type Value = Vec<(OptValue, PortSpec)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CasesSeed {
    type Value = Vec<(OptValue, PortSpec)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping of option value to port spec")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = map.next_key_seed(ValueSeed(self.kind.as_ref()))? {
            let spec = map.next_value_seed(SpecSeed { sport: self.sport })?;
            out.push((v, spec));
        }
        Ok(out)
    }
}

/// `sport:` of a flow (may be `any`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SportSpec(pub PortSpec);

/// `dport:` of a flow (must name ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DportSpec(pub PortSpec);

impl Default for SportSpec {
    fn default() -> Self {
        SportSpec(PortSpec::Any)
    }
}

impl<'de> Deserialize<'de> for SportSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SpecSeed { sport: true }.deserialize(d).map(SportSpec)
    }
}

impl<'de> Deserialize<'de> for DportSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SpecSeed { sport: false }.deserialize(d).map(DportSpec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::error::PolicyError;
    use crate::policy::yaml::from_str;

    fn parse(sport: bool, y: &str) -> Result<PortSpec, PolicyError> {
        let file = std::path::Path::new("spec.yaml");
        if sport {
            from_str::<SportSpec>(file, y).map(|s| s.0)
        } else {
            from_str::<DportSpec>(file, y).map(|s| s.0)
        }
    }

    #[test]
    fn forms() {
        let v = OptionValues::default();
        assert_eq!(parse(false, "5060").unwrap().resolve(&v), vec![(5060, 5060)]);
        assert_eq!(parse(false, "\"36000-59999\"").unwrap().resolve(&v), vec![(36000, 59999)]);
        assert_eq!(parse(false, "36000-59999").unwrap().resolve(&v), vec![(36000, 59999)]);
        assert_eq!(parse(false, "[80, 443, 1024-65535, 81]").unwrap().resolve(&v), vec![(80, 81), (443, 443), (1024, 65535)]);
        assert_eq!(parse(true, "any").unwrap().resolve(&v), vec![(0, 65535)]);
        assert_eq!(parse(true, "[any, 5]").unwrap().resolve(&v), vec![(0, 65535)]);
    }

    #[test]
    fn port_option() {
        let spec = parse(false, "[{ port: socks }, 443]").unwrap();
        let mut v = OptionValues::default();
        v.0.insert("socks".into(), OptValue::Int(1080));
        assert_eq!(spec.resolve(&v), vec![(443, 443), (1080, 1080)]);
        v.0.insert("socks".into(), OptValue::Int(65535));
        assert_eq!(spec.resolve(&v), vec![(443, 443), (65535, 65535)]);
        let range = parse(false, "{ port: first, to: last }").unwrap();
        v.0.insert("first".into(), OptValue::Int(5000));
        v.0.insert("last".into(), OptValue::Int(5020));
        assert_eq!(range.resolve(&v), vec![(5000, 5020)]);
        v.0.insert("last".into(), OptValue::Int(4999));
        assert_eq!(range.resolve(&v), Vec::<(u16, u16)>::new(), "a reversed range names no port");
    }

    #[test]
    fn errors() {
        use ErrorKind::*;
        // The kind, and what the message says of the port.
        for (sport, y, kind, want) in [
            (false, "0", BadPorts, "port 0"),
            (false, "65536", BadPorts, "above 65535"),
            (false, "-1", BadPorts, "negative"),
            (false, "200-100", BadPorts, "reversed"),
            (false, "any", BadPorts, "only allowed for sport"),
            (true, "1-70000", BadPorts, "above 65535"),
            (false, "http", BadPorts, "not a port"),
            (false, "[]", EmptyList, "empty"),
            (false, "1.5", WrongType, "port spec"),
            (false, "{ by: x }", BadPorts, "either"),
            (false, "{ foo: 1 }", UnknownField, "unknown key `foo`"),
            (false, "{ port: p, base: 1 }", BadPorts, "stands alone"),
            (false, "{ to: p }", BadPorts, "goes with"),
        ] {
            let e = parse(sport, y).unwrap_err();
            assert_eq!(e.kind, kind, "{y}: {e}");
            assert!(e.message.contains(want), "{y}: {e}");
        }
    }

    #[test]
    fn by_and_count_resolve() {
        let by = PortSpec::By {
            option: "release".into(),
            cases: vec![
                (OptValue::Str("new".into()), PortSpec::Range(30000, 35999)),
                (OptValue::Str("upgraded".into()), PortSpec::Range(40000, 49999)),
            ],
        };
        let count = PortSpec::Count { base: 7001, option: "zones".into() };
        let mut v = OptionValues::default();
        v.0.insert("release".into(), OptValue::Str("upgraded".into()));
        v.0.insert("zones".into(), OptValue::Int(3));
        assert_eq!(by.resolve(&v), vec![(40000, 49999)]);
        assert_eq!(count.resolve(&v), vec![(7001, 7003)]);
        v.0.insert("zones".into(), OptValue::Int(0));
        assert_eq!(count.resolve(&v), vec![]);
    }

    #[test]
    fn port_ranges() {
        let r = PortRanges::new(vec![(443, 443), (80, 81), (82, 90), (1024, 65535), (85, 86)]);
        assert_eq!(r, [(80, 90), (443, 443), (1024, 65535)]);
        for (port, inside) in
            [(0, false), (79, false), (80, true), (90, true), (91, false), (443, true), (1023, false), (65535, true)]
        {
            assert_eq!(r.contains(port), inside, "{port}");
        }
        assert!(!PortRanges::default().contains(0));
        assert!(PortRanges::any().contains(0) && PortRanges::any().is_any());
        assert_eq!(serde_json::to_string(&r).unwrap(), "[[80,90],[443,443],[1024,65535]]");
        assert_eq!(r.to_string(), "80-90,443,1024-65535");
    }

    #[test]
    fn format() {
        assert_eq!(format_ranges(&[(0, 65535)]), "any");
        assert_eq!(format_ranges(&[(80, 80), (1024, 65535)]), "80,1024-65535");
    }
}
