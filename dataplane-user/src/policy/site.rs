//! Site files (`policies/sites/NAME.yaml`): role bindings, catalogs, protected roles, options.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::catalog::{catalog_files, load_catalogs, Catalog};
use super::cidr::Cidr;
use super::error::{ErrorKind, PolicyError, Position};
use super::options::{list_or_none, OptValue, SiteOptions, SourcePorts};
use super::scaffold::PLACEHOLDER;
use super::yaml::{from_str, key_of, parse_value, seq_with, site_ctx, with_site_ctx, Fault, SiteCtx, StrWith};

/// A site as written, references checked.
#[derive(Clone, Debug)]
pub struct Site {
    pub name: String,
    pub path: PathBuf,
    pub catalogs: Vec<String>,
    /// Role id -> CIDRs, in file order (the `cidrs` of a binding with exceptions).
    pub roles: Vec<(String, Vec<Cidr>)>,
    /// Roles bound with exceptions (`{ cidrs, except, except-roles }`), in file order.
    pub exceptions: Vec<(String, Exceptions)>,
    pub protect: Vec<String>,
    pub options: SiteOptions,
}

/// What a role bound as `{ cidrs, except, except-roles }` leaves out of its `cidrs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exceptions {
    /// Prefixes inside the `cidrs`.
    pub except: Vec<Cidr>,
    /// Roles whose addresses (their own effective binding) are left out.
    pub except_roles: Vec<String>,
}

impl Exceptions {
    pub fn is_empty(&self) -> bool {
        self.except.is_empty() && self.except_roles.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    name: String,
    #[serde(deserialize_with = "catalog_refs")]
    catalogs: Vec<String>,
    #[serde(default, deserialize_with = "bindings")]
    roles: Vec<(String, Binding)>,
    #[serde(deserialize_with = "protect_refs")]
    protect: Vec<String>,
    #[serde(default)]
    options: SiteOptions,
    /// `source-ports:` written at the top level: the same setting as under `options:`.
    #[serde(default, rename = "source-ports")]
    source_ports: Option<SourcePorts>,
}

fn catalog_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    seq_with(d, "catalog", || {
        StrWith("a catalog name", |s: &str| {
            site_ctx(|c| {
                if !c.available.iter().any(|a| a == s) {
                    let known: Vec<&str> = c.available.iter().map(String::as_str).collect();
                    let known = list_or_none(&known);
                    return Err(ErrorKind::UnknownCatalog.fault(format!("unknown catalog `{s}` (catalogs: {known})")));
                }
                if !c.seen_catalogs.insert(s.to_owned()) {
                    return Err(ErrorKind::Duplicate.fault(format!("catalog `{s}` is listed twice")));
                }
                Ok(())
            })
            .transpose()?;
            Ok(s.to_owned())
        })
    })
}

fn unknown_role(c: &SiteCtx, s: &str) -> Fault {
    let mut known: Vec<&str> = c.roles.keys().map(String::as_str).collect();
    known.sort();
    ErrorKind::UnknownRole.fault(format!("unknown role `{s}` (roles of the selected catalogs: {})", list_or_none(&known)))
}

fn protect_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let seen = RefCell::new(HashSet::new());
    seq_with(d, "role", || {
        let seen = &seen;
        StrWith("a role id", move |s: &str| {
            site_ctx(|c| {
                let Some(&any) = c.roles.get(s) else {
                    return Err(unknown_role(c, s));
                };
                let Some(bound) = &c.bound else { return Ok(()) };
                let has = bound.get(s).copied().unwrap_or(any);
                if !has {
                    let msg = match c.written.contains_key(s) {
                        true => format!("protected role `{s}` has no addresses: its exceptions leave none of its `cidrs`"),
                        false => format!("protected role `{s}` has no addresses: bind it to CIDRs under `roles:`"),
                    };
                    return Err(ErrorKind::ProtectedRoleUnbound.fault(msg));
                }
                Ok(())
            })
            .transpose()?;
            if !seen.borrow_mut().insert(s.to_owned()) {
                return Err(ErrorKind::DuplicateRole.fault(format!("role `{s}` is listed twice")));
            }
            Ok(s.to_owned())
        })
    })
}

/// `roles:` role id -> a CIDR, a list of CIDRs, or `{ cidrs, except, except-roles }`.
fn bindings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, Binding)>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<(String, Binding)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping of role id to CIDRs")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, Binding)> = Vec::new();
            loop {
                let out_ref = &out;
                let key = StrWith("a role id", |s: &str| {
                    site_ctx(|c| if c.roles.contains_key(s) { Ok(()) } else { Err(unknown_role(c, s)) }).transpose()?;
                    if out_ref.iter().any(|(r, _)| r == s) {
                        return Err(ErrorKind::DuplicateRole.fault(format!("role `{s}` is bound twice")));
                    }
                    Ok(s.to_owned())
                });
                let Some(role) = map.next_key_seed(key)? else {
                    break;
                };
                let binding = map.next_value_seed(BindingSeed(&role))?;
                out.push((role, binding));
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// One role's binding as written.
struct Binding {
    cidrs: Vec<Cidr>,
    exceptions: Exceptions,
}

/// A binding of the role named: the plain forms (one CIDR, a list) or the mapping with
/// exceptions, each `except` and `except-roles` entry checked where it is written.
struct BindingSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for BindingSeed<'_> {
    type Value = Binding;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Binding, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BindingSeed<'_> {
    type Value = Binding;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a CIDR, a list of CIDRs, or { cidrs, except, except-roles }")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Binding, E> {
        CidrList(self.0).visit_str(s).map(|cidrs| Binding { cidrs, exceptions: Exceptions::default() })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Binding, A::Error> {
        CidrList(self.0).visit_seq(seq).map(|cidrs| Binding { cidrs, exceptions: Exceptions::default() })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Binding, A::Error> {
        let role = self.0;
        let (mut cidrs, mut exceptions) = (None, Exceptions::default());
        while let Some(key) = map.next_key_seed(key_of(&["cidrs", "except", "except-roles"]))? {
            match key {
                "cidrs" => cidrs = Some(map.next_value_seed(CidrList(role))?),
                "except" => exceptions.except = map.next_value_seed(ExceptSeed(role))?,
                _ => exceptions.except_roles = map.next_value_seed(ExceptRolesSeed(role))?,
            }
        }
        let cidrs = cidrs.ok_or_else(|| ErrorKind::MissingField.fault("missing field `cidrs`").raise())?;
        Ok(Binding { cidrs, exceptions })
    }
}

/// `except:` of `role`: CIDRs, each inside one of the role's `cidrs`.
struct ExceptSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for ExceptSeed<'_> {
    type Value = Vec<Cidr>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Cidr>, D::Error> {
        let role = self.0;
        let seen = RefCell::new(Vec::new());
        seq_with(d, "CIDR", || {
            let seen = &seen;
            StrWith("a CIDR like 10.0.0.0/8 or fd00::/16", move |s: &str| {
                let c = Cidr::parse(s).map_err(|e| ErrorKind::BadCidr.fault(e))?;
                site_ctx(|x| match x.written.get(role) {
                    Some(cidrs) if !cidrs.iter().any(|b| b.contains(&c)) => {
                        let list: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
                        let msg = format!("except `{c}` is outside the `cidrs` of `{role}` ({})", list_or_none(&as_strs(&list)));
                        Err(ErrorKind::ExceptOutside.fault(msg))
                    }
                    _ => Ok(()),
                })
                .transpose()?;
                if seen.borrow().contains(&c) {
                    return Err(ErrorKind::Duplicate.fault(format!("except `{c}` is listed twice")));
                }
                seen.borrow_mut().push(c);
                Ok(c)
            })
        })
    }
}

/// `except-roles:` of `role`: known roles, no cycle back to `role`.
struct ExceptRolesSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for ExceptRolesSeed<'_> {
    type Value = Vec<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
        let role = self.0;
        let seen = RefCell::new(Vec::new());
        seq_with(d, "role", || {
            let seen = &seen;
            StrWith("a role id", move |s: &str| {
                site_ctx(|c| {
                    if !c.roles.contains_key(s) {
                        return Err(unknown_role(c, s));
                    }
                    match except_cycle(&c.except_roles, role, s) {
                        Some(path) => {
                            let msg = format!("a cycle of except-roles: {}", path.join(" -> "));
                            Err(ErrorKind::ExceptCycle.fault(msg))
                        }
                        None => Ok(()),
                    }
                })
                .transpose()?;
                if seen.borrow().iter().any(|r| r == s) {
                    return Err(ErrorKind::DuplicateRole.fault(format!("role `{s}` is listed twice")));
                }
                seen.borrow_mut().push(s.to_owned());
                Ok(s.to_owned())
            })
        })
    }
}

/// The path `role -> next -> ... -> role` when `next` (one of `role`'s except-roles) leads back
/// to `role` through the except-roles of `graph`; None when it does not.
pub(crate) fn except_cycle(graph: &HashMap<String, Vec<String>>, role: &str, next: &str) -> Option<Vec<String>> {
    fn walk(graph: &HashMap<String, Vec<String>>, goal: &str, path: &mut Vec<String>, seen: &mut HashSet<String>) -> bool {
        let at = path.last().expect("a path starts somewhere").clone();
        if at == goal {
            return true;
        }
        if !seen.insert(at.clone()) {
            return false;
        }
        for n in graph.get(&at).into_iter().flatten() {
            path.push(n.clone());
            if walk(graph, goal, path, seen) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![role.to_owned(), next.to_owned()];
    walk(graph, role, &mut path, &mut HashSet::new()).then_some(path)
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// One CIDR or a list of them (possibly empty: the role then has no addresses), bound to the
/// role it names; the placeholder of `dataplane init` is an error of its own.
struct CidrList<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for CidrList<'_> {
    type Value = Vec<Cidr>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Cidr>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CidrList<'_> {
    type Value = Vec<Cidr>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a CIDR or a list of CIDRs")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<Cidr>, E> {
        parse_cidr(self.0, s).map(|c| vec![c]).map_err(Fault::raise)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Cidr>, A::Error> {
        let mut out = Vec::new();
        while let Some(c) =
            seq.next_element_seed(StrWith("a CIDR like 10.0.0.0/8 or fd00::/16", |s: &str| parse_cidr(self.0, s)))?
        {
            out.push(c);
        }
        Ok(out)
    }
}

/// One CIDR of `role`'s binding.
fn parse_cidr(role: &str, s: &str) -> Result<Cidr, Fault> {
    if s == PLACEHOLDER {
        return Err(ErrorKind::Placeholder.fault(placeholder_message(role)));
    }
    Cidr::parse(s).map_err(|e| ErrorKind::BadCidr.fault(e))
}

/// What is said of a role still bound to the placeholder.
fn placeholder_message(role: &str) -> String {
    format!("role `{role}` is still to bind: replace [{PLACEHOLDER}] with its addresses (CIDRs), or [] for none")
}

/// `e` (the first placeholder met) followed by a line for every other role still bound to the
/// placeholder, each with its own `file:line:column`: one compile lists all that is left to do.
fn with_other_placeholders(mut e: PolicyError, path: &Path, text: &str, v: &serde_yaml::Value) -> PolicyError {
    if e.kind != ErrorKind::Placeholder {
        return e;
    }
    for (role, field, at) in placeholders(text, v) {
        if at.is_some_and(|at| Some(at.line) == e.at.map(|p| p.line)) {
            continue;
        }
        let at = at.map(|p| format!(":{}:{}", p.line, p.column)).unwrap_or_default();
        e.message.push_str(&format!("\n{}{at}: {field}: {}", path.display(), placeholder_message(&role)));
    }
    e
}

/// The roles bound to the placeholder (alone or in a list), in file order, each with its field
/// and where the placeholder is when its line can be found (`ROLE: [REPLACE-ME]`, as `init`
/// writes it).
fn placeholders(text: &str, v: &serde_yaml::Value) -> Vec<(String, String, Option<Position>)> {
    let Some(roles) = v.get("roles").and_then(serde_yaml::Value::as_mapping) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (role, binding) in roles {
        let Some(role) = role.as_str() else { continue };
        let field = match binding {
            serde_yaml::Value::String(s) if s == PLACEHOLDER => format!("roles.{role}"),
            serde_yaml::Value::Sequence(l) => match l.iter().position(|x| x.as_str() == Some(PLACEHOLDER)) {
                Some(i) => format!("roles.{role}[{i}]"),
                None => continue,
            },
            _ => continue,
        };
        let at = text.lines().enumerate().find_map(|(i, line)| {
            let rest = line.trim_start().strip_prefix(role)?.strip_prefix(':')?;
            let column = line.len() - rest.len() + rest.find(PLACEHOLDER)? + 1;
            Some(Position { line: i + 1, column })
        });
        out.push((role.to_owned(), field, at));
    }
    out
}

/// Loads a site and the catalogs it selects from `catalog_dir`.
pub fn load_site_file(path: &Path, catalog_dir: &Path) -> Result<(Site, Vec<Catalog>), PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io("site", path, e))?;
    let available = catalog_files(catalog_dir)?;
    parse_site(path, &text, &available, load_catalogs)
}

/// Parses and checks a site's text; `path` names it in errors. `load` loads the catalogs it
/// names, given their paths from `available` (catalog name, path).
pub fn parse_site(
    path: &Path,
    text: &str,
    available: &[(String, PathBuf)],
    load: impl FnOnce(&[PathBuf]) -> Result<Vec<Catalog>, PolicyError>,
) -> Result<(Site, Vec<Catalog>), PolicyError> {
    let v = parse_value(path, text)?;
    // First pass: the catalogs it names (unknown ones are reported by the second pass).
    let mut wanted: Vec<PathBuf> = Vec::new();
    for name in v.get("catalogs").and_then(|c| c.as_sequence()).into_iter().flatten().filter_map(|n| n.as_str()) {
        if let Some((_, p)) = available.iter().find(|(n, _)| n == name) {
            if !wanted.contains(p) {
                wanted.push(p.clone());
            }
        }
    }
    let catalogs = load(&wanted)?;
    let ctx = site_context(&v, available, &catalogs);
    let f = with_site_ctx(ctx, || from_str::<SiteFile>(path, text)).map_err(|e| with_other_placeholders(e, path, text, &v))?;
    // Keep the catalogs in the site's order.
    let catalogs = f.catalogs.iter().filter_map(|n| catalogs.iter().find(|c| &c.name == n).cloned()).collect();
    let exceptions = f.roles.iter().filter(|(_, b)| !b.exceptions.is_empty()).map(|(r, b)| (r.clone(), b.exceptions.clone()));
    let exceptions = exceptions.collect();
    let mut options = f.options;
    if let Some(top) = f.source_ports {
        if options.get(SourcePorts::OPTION).is_some() {
            let msg = "`source-ports` is set twice: at the top level and under `options:`; keep one";
            let line = text.lines().position(|l| l.starts_with("source-ports:"));
            let mut e = PolicyError::at(ErrorKind::Duplicate, path, line.map(|i| Position { line: i + 1, column: 1 }), msg);
            e.field = Some(SourcePorts::OPTION.into());
            return Err(e);
        }
        options.0.push((SourcePorts::OPTION.into(), OptValue::Str(top.name().into())));
    }
    let site = Site {
        name: f.name,
        path: path.to_owned(),
        catalogs: f.catalogs,
        roles: f.roles.into_iter().map(|(r, b)| (r, b.cidrs)).collect(),
        exceptions,
        protect: f.protect,
        options,
    };
    Ok((site, catalogs))
}

/// The bindings as the first pass reads them, to tell a role its exceptions empty.
struct FirstPass<'a> {
    /// Roles of the catalogs: id -> `any`.
    roles: &'a HashMap<String, bool>,
    plain: &'a HashMap<String, Vec<Cidr>>,
    except: &'a HashMap<String, Vec<Cidr>>,
    except_roles: &'a HashMap<String, Vec<String>>,
    /// Roles resolved already (except-roles may share roles: no work twice).
    done: RefCell<HashMap<String, Vec<Cidr>>>,
}

impl FirstPass<'_> {
    /// A role's addresses; `busy`: the roles being resolved (a cycle, reported elsewhere,
    /// takes nothing away).
    fn effective(&self, role: &str, busy: &mut Vec<String>) -> Vec<Cidr> {
        let Some(cidrs) = self.plain.get(role) else {
            return if self.roles.get(role) == Some(&true) { vec![Cidr::ANY_V4, Cidr::ANY_V6] } else { Vec::new() };
        };
        let Some(except) = self.except.get(role) else { return cidrs.clone() };
        if busy.iter().any(|r| r == role) {
            return cidrs.clone();
        }
        if let Some(v) = self.done.borrow().get(role) {
            return v.clone();
        }
        busy.push(role.to_owned());
        let mut minus = except.clone();
        for r in self.except_roles.get(role).into_iter().flatten() {
            minus.extend(self.effective(r, busy));
        }
        busy.pop();
        let v = super::cidr::difference(cidrs, &minus);
        self.done.borrow_mut().insert(role.to_owned(), v.clone());
        v
    }
}

fn site_context(v: &serde_yaml::Value, available: &[(String, PathBuf)], catalogs: &[Catalog]) -> SiteCtx {
    let mut ctx = SiteCtx { available: available.iter().map(|(n, _)| n.clone()).collect(), ..Default::default() };
    for c in catalogs {
        for r in &c.roles {
            *ctx.roles.entry(r.id.clone()).or_insert(false) |= r.any;
        }
        for (name, d) in &c.options {
            ctx.options.entry(name.clone()).or_default().push((c.name.clone(), d.kind.clone()));
        }
    }
    let roles = v.get("roles");
    if let Some(m) = roles.map_or(Some(&serde_yaml::Mapping::new()), |r| r.as_mapping()) {
        let (mut bound, mut plain, mut except) = (HashMap::new(), HashMap::new(), HashMap::new());
        for (k, b) in m {
            let Some(k) = k.as_str() else { continue };
            let strs = |v: Option<&serde_yaml::Value>| -> Vec<String> {
                match v {
                    Some(serde_yaml::Value::Sequence(s)) => s.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
                    Some(serde_yaml::Value::String(x)) => vec![x.clone()],
                    _ => Vec::new(),
                }
            };
            let cidrs = match b {
                serde_yaml::Value::Mapping(m) => m.get("cidrs"),
                other => Some(other),
            };
            let has = match cidrs {
                Some(serde_yaml::Value::Sequence(s)) => !s.is_empty(),
                Some(serde_yaml::Value::String(_)) => true,
                _ => false,
            };
            bound.insert(k.to_owned(), has);
            let parsed =
                |v: Option<&serde_yaml::Value>| -> Vec<Cidr> { strs(v).iter().filter_map(|c| Cidr::parse(c).ok()).collect() };
            plain.insert(k.to_owned(), parsed(cidrs));
            if let serde_yaml::Value::Mapping(m) = b {
                if cidrs.is_some() {
                    ctx.written.insert(k.to_owned(), parsed(cidrs));
                }
                except.insert(k.to_owned(), parsed(m.get("except")));
                ctx.except_roles.insert(k.to_owned(), strs(m.get("except-roles")));
            }
        }
        // A binding whose exceptions leave nothing has no addresses (for `protect:`'s check).
        let first = FirstPass {
            roles: &ctx.roles,
            plain: &plain,
            except: &except,
            except_roles: &ctx.except_roles,
            done: RefCell::default(),
        };
        for k in except.keys() {
            if bound.get(k) == Some(&true) && first.effective(k, &mut Vec::new()).is_empty() {
                bound.insert(k.clone(), false);
            }
        }
        ctx.bound = Some(bound);
    }
    ctx
}
