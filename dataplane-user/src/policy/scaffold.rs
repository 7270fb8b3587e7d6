//! `dataplane init`: a commented site to start from, written from the catalogs it selects. Every
//! role gets the placeholder [`PLACEHOLDER`] for its addresses, which the site reader refuses
//! with the role's `file:line:column` (`site.rs`), so an untouched scaffold never compiles; every
//! option is written at its default, so a filled-in scaffold compiles to what the same site
//! written by hand gives.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::catalog::Catalog;
use super::options::{dataplane_kind, ConntrackOptions, OptValue, OptionDecl, OptionKind, SourcePorts, DATAPLANE_OPTIONS};

/// What `init` writes where a role's addresses go, inside a list: `ROLE: [REPLACE-ME]`.
pub const PLACEHOLDER: &str = "REPLACE-ME";

/// Columns a comment line is wrapped at.
const WIDTH: usize = 100;

/// Why a scaffold cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScaffoldError {
    #[error("no catalog `{name}` (catalogs: {known})")]
    UnknownCatalog { name: String, known: String },
    #[error("catalog `{0}` is given twice")]
    DuplicateCatalog(String),
    #[error("role `{role}` is not a role of the selected catalogs (roles: {known})")]
    UnknownRole { role: String, known: String },
    #[error("role `{0}` is given twice")]
    DuplicateRole(String),
}

/// A role of the selected catalogs, merged across them.
struct RoleEntry<'a> {
    id: &'a str,
    aliases: Vec<&'a str>,
    description: &'a str,
    any: bool,
}

/// Where a role is written: the scaffold lists them in this order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Protected,
    /// Named by a flow to or from a protected role.
    Peer,
    Other,
}

impl Section {
    const ALL: [Section; 3] = [Section::Protected, Section::Peer, Section::Other];

    const fn heading(self) -> &'static str {
        match self {
            Section::Protected => "The roles this host protects: their addresses are enforced for.",
            Section::Peer => "The roles their flows name (the peers): a flow admits only the addresses bound here.",
            Section::Other => {
                "The other roles of the catalogs: no flow to or from a protected role names them, so their \
                 addresses change nothing enforced here ([] is fine)."
            }
        }
    }
}

/// The site `dataplane init` writes: named `name`, selecting `selected` (catalog names, in
/// precedence order) from `all`, protecting `protect`.
pub fn scaffold(name: &str, all: &[Catalog], selected: &[String], protect: &[String]) -> Result<String, ScaffoldError> {
    let catalogs = select(all, selected)?;
    let roles = merged_roles(&catalogs);
    check_protect(&roles, protect)?;
    let sections = sections(&catalogs, &roles, protect);
    let mut out = header(selected, protect);
    let _ = writeln!(out, "name: {}", quoted(name));
    let _ = writeln!(out, "catalogs: [{}]", selected.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", "));
    let _ = writeln!(out, "protect: [{}]", protect.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", "));
    out.push_str("\nroles:\n");
    for section in Section::ALL {
        let mut in_section: Vec<&RoleEntry> = roles.iter().filter(|r| sections[r.id] == section).collect();
        if section == Section::Protected {
            in_section.sort_by_key(|r| protect.iter().position(|p| p == r.id));
        }
        if in_section.is_empty() {
            continue;
        }
        comment(&mut out, "  ", &format!("--- {}", section.heading()));
        out.push('\n');
        for r in in_section {
            write_role(&mut out, r, section == Section::Protected);
        }
    }
    out.push_str("options:\n");
    write_catalog_options(&mut out, &catalogs);
    write_dataplane_options(&mut out);
    Ok(out)
}

fn select<'a>(all: &'a [Catalog], selected: &[String]) -> Result<Vec<&'a Catalog>, ScaffoldError> {
    let mut out: Vec<&Catalog> = Vec::new();
    for name in selected {
        let Some(c) = all.iter().find(|c| &c.name == name) else {
            let known = all.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(ScaffoldError::UnknownCatalog { name: name.clone(), known });
        };
        if out.iter().any(|o| o.name == c.name) {
            return Err(ScaffoldError::DuplicateCatalog(name.clone()));
        }
        out.push(c);
    }
    Ok(out)
}

/// Every role of `catalogs` in first-declared order; a role several declare has all their
/// aliases, the first description and `any` if one says so (as `Policy::resolve` merges them).
fn merged_roles<'a>(catalogs: &[&'a Catalog]) -> Vec<RoleEntry<'a>> {
    let mut out: Vec<RoleEntry> = Vec::new();
    for r in catalogs.iter().flat_map(|c| &c.roles) {
        let i = out.iter().position(|e| e.id == r.id).unwrap_or_else(|| {
            out.push(RoleEntry { id: &r.id, aliases: Vec::new(), description: "", any: false });
            out.len() - 1
        });
        let e = &mut out[i];
        for a in &r.aliases {
            if !e.aliases.contains(&a.as_str()) {
                e.aliases.push(a);
            }
        }
        if e.description.is_empty() {
            e.description = &r.description;
        }
        e.any |= r.any;
    }
    out
}

fn check_protect(roles: &[RoleEntry], protect: &[String]) -> Result<(), ScaffoldError> {
    for (i, p) in protect.iter().enumerate() {
        if !roles.iter().any(|r| r.id == p) {
            let mut known: Vec<&str> = roles.iter().map(|r| r.id).collect();
            known.sort_unstable();
            return Err(ScaffoldError::UnknownRole { role: p.clone(), known: known.join(", ") });
        }
        if protect[..i].contains(p) {
            return Err(ScaffoldError::DuplicateRole(p.clone()));
        }
    }
    Ok(())
}

/// The section of every role: protected, named by a flow with a protected end, or other.
fn sections<'a>(catalogs: &[&Catalog], roles: &[RoleEntry<'a>], protect: &[String]) -> HashMap<&'a str, Section> {
    let mut out: HashMap<&str, Section> = roles.iter().map(|r| (r.id, Section::Other)).collect();
    let protected = |id: &str| protect.iter().any(|p| p == id);
    for f in catalogs.iter().flat_map(|c| &c.flows) {
        for (end, other) in [(&f.from, &f.to), (&f.to, &f.from)] {
            if protected(end) {
                if let Some(s) = out.get_mut(other.as_str()) {
                    *s = (*s).min(Section::Peer);
                }
            }
        }
    }
    for p in protect {
        if let Some(s) = out.get_mut(p.as_str()) {
            *s = Section::Protected;
        }
    }
    out
}

fn header(selected: &[String], protect: &[String]) -> String {
    let mut out = String::new();
    let flags: Vec<String> =
        selected.iter().map(|c| format!("--catalog {c}")).chain(protect.iter().map(|p| format!("--protect {p}"))).collect();
    let text = [
        format!("A site written by `dataplane init {}`.", flags.join(" ")),
        String::new(),
        format!(
            "Replace every [{PLACEHOLDER}] under `roles:` with the role's addresses (IPv4 and IPv6 CIDRs; a bare \
             address is /32 or /128), or [] for none: until then `dataplane compile --site FILE` names each role \
             still to bind, with its file:line:column."
        ),
        "The options below are at their defaults. The format is in policies/README.md, the semantics in \
         docs/policy.md; `dataplane flows --catalog NAME` lists the documented flows."
            .to_owned(),
    ];
    for line in text {
        comment(&mut out, "", &line);
    }
    out.push('\n');
    out
}

fn write_role(out: &mut String, r: &RoleEntry, protected: bool) {
    if !r.aliases.is_empty() {
        comment(out, "  ", &format!("{}: {}", r.id, r.aliases.join(", ")));
    }
    if !r.description.is_empty() {
        comment(out, "  ", r.description);
    }
    if r.any && !protected {
        comment(out, "  ", "an \"any\" role: every address unless bound narrower here");
        let _ = writeln!(out, "  # {}: [0.0.0.0/0, \"::/0\"]\n", r.id);
    } else {
        let _ = writeln!(out, "  {}: [{PLACEHOLDER}]\n", r.id);
    }
}

/// Every option of the catalogs, once per name, at its default. An option whose declarations
/// disagree on the default is left commented out: each catalog keeps its own default.
fn write_catalog_options(out: &mut String, catalogs: &[&Catalog]) {
    let mut names: Vec<&str> = Vec::new();
    let mut decls: HashMap<&str, Vec<(&str, &OptionDecl)>> = HashMap::new();
    for c in catalogs {
        for (name, d) in &c.options {
            if !decls.contains_key(name.as_str()) {
                names.push(name);
            }
            decls.entry(name).or_default().push((&c.name, d));
        }
    }
    if !names.is_empty() {
        comment(out, "  ", "--- The catalogs' options (a flow's `when:` names the options it depends on).");
        out.push('\n');
    }
    for name in names {
        let decls = &decls[name];
        let (_, first) = decls[0];
        let catalogs: Vec<&str> = decls.iter().map(|(c, _)| *c).collect();
        comment(out, "  ", &format!("{name} ({}): {}", catalogs.join(", "), first.description));
        comment(out, "  ", &format!("{}; default {}", first.kind.describe(), first.default));
        if decls.iter().all(|(_, d)| d.default == first.default) {
            let _ = writeln!(out, "  {name}: {}\n", value(&first.default));
        } else {
            let defaults: Vec<String> = decls.iter().map(|(c, d)| format!("{} in {c}", d.default)).collect();
            comment(out, "  ", &format!("the catalogs' defaults differ ({}): unset, each keeps its own", defaults.join(", ")));
            let _ = writeln!(out, "  # {name}: {}\n", value(&first.default));
        }
    }
}

fn write_dataplane_options(out: &mut String) {
    comment(out, "  ", "--- The dataplane's own options.");
    out.push('\n');
    for name in DATAPLANE_OPTIONS {
        let (kind, default, what) = dataplane_option(name);
        comment(out, "  ", &format!("{name}: {what}"));
        comment(out, "  ", &format!("{}; default {default}", kind.describe()));
        let _ = writeln!(out, "  {name}: {}\n", value(&default));
    }
}

/// A dataplane option's kind (as the site reader checks it), default and description
/// (policies/README.md, docs/policy.md).
fn dataplane_option(name: &str) -> (OptionKind, OptValue, &'static str) {
    let kind = dataplane_kind(name).expect("one of DATAPLANE_OPTIONS");
    let word = |s: &str| OptValue::Str(s.into());
    let (default, what) = match name {
        "unprotected" => (word("pass"), "traffic to addresses no protected role holds: passed, or dropped"),
        "icmp-echo" => (word("deny"), "ICMP echo requests and replies to protected addresses"),
        SourcePorts::OPTION => (
            word("as-documented"),
            "the source ports flows admit: as each document gives them (\"S = Source port, typically >= 1024\"), or any (a NAT that rewrites them)",
        ),
        _ => {
            let (_, _, _, default) = ConntrackOptions::LIMITS.iter().find(|l| l.0 == name).copied().expect("a conntrack option");
            let what = match name {
                "conntrack-size" => "connections tracked per IP version (replies to connections the protected servers open)",
                "conntrack-tcp-established" => "idle timeout (s) of an established TCP connection",
                "conntrack-tcp-transitory" => "idle timeout (s) of a TCP connection opening or closing",
                _ => "idle timeout (s) of a UDP exchange",
            };
            (OptValue::Int(i64::from(default)), what)
        }
    };
    (kind, default, what)
}

/// An option value as YAML: strings quoted (an enum value such as `8.5` must stay a string).
fn value(v: &OptValue) -> String {
    match v {
        OptValue::Str(s) => quoted(s),
        OptValue::Int(_) | OptValue::Bool(_) => v.to_string(),
    }
}

/// `s` as a YAML scalar: plain when it is a kebab-case word, else double-quoted (JSON's quoting
/// is YAML's).
fn quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !matches!(s, "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n");
    if plain {
        s.to_owned()
    } else {
        serde_json::Value::from(s).to_string()
    }
}

/// `text` as `# ` comment lines indented by `indent`, wrapped at [`WIDTH`] columns; an empty text is
/// a lone `#`.
fn comment(out: &mut String, indent: &str, text: &str) {
    let mut line = String::new();
    let flush = |out: &mut String, line: &mut String| {
        let _ = writeln!(out, "{indent}#{}{line}", if line.is_empty() { "" } else { " " });
        line.clear();
    };
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + 2 + line.len() + 1 + word.len() > WIDTH {
            flush(out, &mut line);
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    flush(out, &mut line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_wrap_at_the_width_and_keep_every_word() {
        let text = "word ".repeat(60);
        let mut out = String::new();
        comment(&mut out, "  ", &text);
        assert!(out.lines().count() > 1);
        assert!(out.lines().all(|l| l.len() <= WIDTH && l.starts_with("  # ")), "{out}");
        assert_eq!(out.split_whitespace().filter(|w| *w == "word").count(), 60);
        let mut out = String::new();
        comment(&mut out, "", "");
        assert_eq!(out, "#\n");
    }

    /// A catalog named `name` with one option `zones` (default `default`), a server, a peer
    /// reached by a flow, an `any` role and a role no flow of the server names.
    fn catalog(name: &str, default: u32) -> Catalog {
        let text = format!(
            "name: {name}\ndocument: d.txt\ntitle: t\noptions:\n  zones:\n    description: zone count\n    \
             integer: {{ min: 1, max: 9 }}\n    default: {default}\nroles:\n  - id: server\n    aliases: [Server, Srv]\n    \
             description: the server\n  - id: peer\n  - id: internet\n    any: true\n  - id: far\nflows:\n  - id: {name}-in\n    \
             description: d\n    from: peer\n    to: server\n    protocol: tcp\n    dport: 443\n    table: t\n  - id: {name}-far\n    \
             description: d\n    from: internet\n    to: far\n    protocol: tcp\n    dport: 80\n    table: t\n"
        );
        super::super::catalog::parse_catalog(std::path::Path::new(&format!("{name}.yaml")), &text, &HashMap::new()).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn roles_in_sections_and_options_once() {
        let all = [catalog("a", 1), catalog("b", 1), catalog("c", 2)];
        let text = scaffold("s", &all, &names(&["a", "b"]), &names(&["server"])).unwrap();
        let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle} in:\n{text}"));
        assert!(at("  server: [REPLACE-ME]") < at("  peer: [REPLACE-ME]"));
        assert!(at("  peer: [REPLACE-ME]") < at("  far: [REPLACE-ME]"));
        assert!(at("  # server: Server, Srv\n  # the server\n  server:") > 0);
        // An `any` role is left to stand for every address, but it is shown.
        assert!(text.contains("  # internet: [0.0.0.0/0, \"::/0\"]\n"), "{text}");
        assert!(text.contains("  # zones (a, b): zone count\n  # an integer 1..9; default 1\n  zones: 1\n"), "{text}");
        assert_eq!(text.matches("zones:").count(), 1);
        // Defaults that differ are left to each catalog.
        let text = scaffold("s", &all, &names(&["a", "c"]), &names(&["internet"])).unwrap();
        assert!(text.contains("  # zones: 1\n") && text.contains("(1 in a, 2 in c)"), "{text}");
        // A protected `any` role must be bound.
        assert!(text.contains("  internet: [REPLACE-ME]\n"), "{text}");
    }

    #[test]
    fn scalars_that_yaml_would_read_otherwise_are_quoted() {
        assert_eq!(quoted("vcs-x8.2"), "vcs-x8.2");
        assert_eq!(quoted("8.5"), "\"8.5\"");
        assert_eq!(quoted("yes"), "\"yes\"");
        assert_eq!(quoted("a \"b\""), "\"a \\\"b\\\"\"");
        assert_eq!(value(&OptValue::Int(3)), "3");
        assert_eq!(value(&OptValue::Bool(false)), "false");
    }
}
