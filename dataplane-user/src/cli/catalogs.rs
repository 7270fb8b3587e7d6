//! The catalog subcommands: `catalogs`, `roles`, `flows`, and `compile`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use super::args::{read_site, CatalogDirArg};
use crate::compile::{compile_with_summary, Summary};
use crate::policy::options::{OptionDecl, OptionKind};
use crate::policy::ports::format_ranges;
use crate::policy::{catalog_dir, load_all_catalogs, Catalog, Direction, Policy};

#[derive(clap::Args, Debug, Default)]
pub struct CatalogsArgs {
    /// Print JSON: [{"name", "path", "document", ...}].
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalogs: CatalogDirArg,
}

/// `--catalog NAME` and the directory the catalogs are read from.
#[derive(clap::Args, Debug, Default)]
pub struct OneCatalog {
    /// Only what this catalog declares.
    #[arg(long, value_name = "NAME")]
    pub catalog: Option<String>,
    #[command(flatten)]
    pub dir: CatalogDirArg,
}

impl OneCatalog {
    fn read(&self) -> anyhow::Result<Vec<Catalog>> {
        catalogs_in(self.dir.catalog_dir.as_deref(), self.catalog.as_deref())
    }
}

#[derive(clap::Args, Debug, Default)]
pub struct RolesArgs {
    /// Print JSON: [{"id", "aliases", "any", ...}].
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalogs: OneCatalog,
    /// The roles of this site's catalogs, each with its binding: the CIDRs, exceptions and the
    /// effective prefixes the compiler is given.
    #[arg(long, value_name = "FILE")]
    pub site: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Default)]
pub struct FlowsArgs {
    /// Print JSON: every flow with its ports resolved at the options' defaults.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalogs: OneCatalog,
}

#[derive(clap::Args, Debug, Default)]
pub struct CompileArgs {
    /// The site file.
    #[arg(long, value_name = "FILE", required_unless_present = "synthetic")]
    pub site: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalogs: CatalogDirArg,
    /// Compile a synthetic site instead: FLOWS:CIDRS[:SEED] (benchmarks).
    #[arg(long, value_name = "FLOWS:CIDRS[:SEED]", hide = true)]
    pub synthetic: Option<String>,
}

fn catalogs_in(dir: Option<&Path>, only: Option<&str>) -> anyhow::Result<Vec<Catalog>> {
    let dir = catalog_dir(dir, None);
    let all = load_all_catalogs(&dir)?;
    match only {
        None => Ok(all),
        Some(name) => {
            let c: Vec<Catalog> = all.into_iter().filter(|c| c.name == name).collect();
            if c.is_empty() {
                anyhow::bail!("no catalog `{name}` in {}", dir.display());
            }
            Ok(c)
        }
    }
}

/// One declared option for `catalogs --json`: its name, kind (`values`, `bool` or `integer`), default and description.
fn option_json(name: &str, d: &OptionDecl) -> Value {
    let mut o = serde_json::json!({ "name": name, "default": d.default.to_json(), "description": d.description });
    match &d.kind {
        OptionKind::Enum(values) => o["values"] = serde_json::json!(values),
        OptionKind::Bool => o["bool"] = true.into(),
        OptionKind::Int { min, max } => o["integer"] = serde_json::json!({ "min": min, "max": max }),
    }
    o
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn catalogs(a: CatalogsArgs) -> anyhow::Result<()> {
    let cats = catalogs_in(a.catalogs.catalog_dir.as_deref(), None)?;
    let rows: Vec<Value> = cats
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "path": c.path, "document": c.document, "title": c.title,
                "roles": c.roles.len(), "flows": c.flows.len(),
                "options": c.options.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                "option_details": c.options.iter().map(|(n, d)| option_json(n, d)).collect::<Vec<_>>(),
            })
        })
        .collect();
    if a.json {
        return print_json(&rows);
    }
    let w = cats.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    println!("{:w$}  {:>5}  {:>5}  {:30}  TITLE", "NAME", "ROLES", "FLOWS", "DOCUMENT");
    for c in &cats {
        println!("{:w$}  {:>5}  {:>5}  {:30}  {}", c.name, c.roles.len(), c.flows.len(), c.document, c.title);
    }
    Ok(())
}

#[derive(Serialize)]
struct RoleRow {
    id: String,
    aliases: Vec<String>,
    any: bool,
    description: String,
    catalogs: Vec<String>,
    /// With `--site`: the role's binding in that site.
    #[serde(skip_serializing_if = "Option::is_none")]
    binding: Option<BindingRow>,
}

/// A role's binding in a site: as written, and the exact prefixes it comes to.
#[derive(Serialize)]
struct BindingRow {
    /// The `cidrs` (or the plain list); for an unbound `any` role 0.0.0.0/0 and ::/0.
    cidrs: Vec<String>,
    except: Vec<String>,
    except_roles: Vec<String>,
    /// The addresses the role holds, as the fewest prefixes: `cidrs` minus the exceptions.
    effective: Vec<String>,
    protected: bool,
}

fn binding_row(p: &Policy, r: &crate::policy::Role) -> BindingRow {
    let strs = |v: &[crate::policy::Cidr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let (cidrs, except, except_roles) = match &r.exceptions {
        Some(x) => (strs(&x.cidrs), strs(&x.except), x.except_roles.iter().map(|&j| p.roles[j].id.clone()).collect()),
        None => (strs(&r.cidrs), Vec::new(), Vec::new()),
    };
    BindingRow { cidrs, except, except_roles, effective: strs(&r.cidrs), protected: r.protected }
}

pub fn roles(a: RolesArgs) -> anyhow::Result<()> {
    let policy = match &a.site {
        Some(site) => Some(read_site(site, &a.catalogs.dir)?.policy),
        None => None,
    };
    let cats = match &policy {
        Some(p) => {
            let only = a.catalogs.catalog.as_deref();
            let cats: Vec<Catalog> = p.catalogs.iter().filter(|c| only.is_none_or(|n| c.name == n)).cloned().collect();
            if let (Some(name), true) = (only, cats.is_empty()) {
                anyhow::bail!("the site selects no catalog `{name}`");
            }
            cats
        }
        None => a.catalogs.read()?,
    };
    let mut rows: Vec<RoleRow> = Vec::new();
    for c in &cats {
        for r in &c.roles {
            let row = match rows.iter_mut().position(|x| x.id == r.id) {
                Some(i) => &mut rows[i],
                None => {
                    let row = RoleRow {
                        id: r.id.clone(),
                        aliases: vec![],
                        any: false,
                        description: r.description.clone(),
                        catalogs: vec![],
                        binding: policy.as_ref().and_then(|p| p.roles.iter().find(|x| x.id == r.id).map(|x| binding_row(p, x))),
                    };
                    rows.push(row);
                    rows.last_mut().expect("just pushed")
                }
            };
            row.any |= r.any;
            row.catalogs.push(c.name.clone());
            for al in &r.aliases {
                if !row.aliases.contains(al) {
                    row.aliases.push(al.clone());
                }
            }
        }
    }
    if a.json {
        return print_json(&rows);
    }
    let w = rows.iter().map(|r| r.id.len()).max().unwrap_or(2).max(2);
    println!("{:w$}  ANY  CATALOGS / ALIASES", "ID");
    for r in &rows {
        println!("{:w$}  {:3}  {} / {}", r.id, if r.any { "yes" } else { "" }, r.catalogs.join(","), r.aliases.join("; "));
        if let Some(b) = &r.binding {
            println!("{:w$}       {}", "", binding_text(b));
        }
    }
    Ok(())
}

/// `bound to 0.0.0.0/0 ::/0 except 10.0.0.0/8, role vcs-control = 0.0.0.0/5 ...`.
fn binding_text(b: &BindingRow) -> String {
    let prot = if b.protected { " (protected)" } else { "" };
    if b.cidrs.is_empty() {
        return format!("no addresses{prot}");
    }
    let mut s = format!("bound to {}", b.cidrs.join(" "));
    if b.except.is_empty() && b.except_roles.is_empty() {
        return s + prot;
    }
    let mut except = b.except.clone();
    except.extend(b.except_roles.iter().map(|r| format!("role {r}")));
    let effective = match b.effective.len() {
        0..=8 => b.effective.join(" "),
        n => format!("{n} prefixes (--json lists them)"),
    };
    s.push_str(&format!(" except {} = {effective}{prot}", except.join(", ")));
    s
}

pub fn flows(a: FlowsArgs) -> anyhow::Result<()> {
    let cats = a.catalogs.read()?;
    let rows: Vec<Value> = cats.iter().flat_map(flow_rows).collect();
    if a.json {
        return print_json(&rows);
    }
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    println!("{:40}  {:24}  {:24}  {:7}  {:12}  {:18}  ACTION", "ID", "FROM", "TO", "PROTO", "SPORT", "DPORT");
    for r in &rows {
        let proto = r["protocols"].as_array().map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("+"));
        let mut action = s(r, "action");
        if !r["included"].as_bool().unwrap_or(true) {
            action.push_str(" (when)");
        }
        println!(
            "{:40}  {:24}  {:24}  {:7}  {:12}  {:18}  {}",
            s(r, "id"),
            s(r, "from"),
            s(r, "to"),
            proto.unwrap_or_default(),
            s(r, "sport"),
            s(r, "dport"),
            action
        );
    }
    Ok(())
}

/// A catalog's flows as JSON, ports resolved at the options' defaults.
fn flow_rows(c: &Catalog) -> Vec<Value> {
    let values = c.default_values();
    c.flows
        .iter()
        .map(|f| {
            let (sport, dport) = (f.sport().resolve(&values), f.dport().resolve(&values));
            let protocols: Vec<&str> = f.protocols.iter().map(|p| p.name()).collect();
            serde_json::json!({
                "id": f.id, "catalog": c.name, "description": f.description,
                "from": f.from, "to": f.to,
                "protocol": if protocols.len() == 1 { Value::from(protocols[0]) } else { Value::from(protocols.clone()) },
                "protocols": protocols,
                "sport": format_ranges(&sport), "dport": format_ranges(&dport),
                "sport_ranges": sport, "dport_ranges": dport,
                "action": f.action.name(),
                "when": if f.when.0.is_empty() { Value::Null } else { f.when.to_json() },
                "included": f.when.holds(&values),
                "document": c.document, "table": f.table, "note": f.note,
            })
        })
        .collect()
}

pub fn compile(a: CompileArgs) -> anyhow::Result<()> {
    let policy = match (&a.synthetic, &a.site) {
        (Some(spec), _) => synthetic_policy(spec)?,
        (None, Some(site)) => read_site(site, &a.catalogs)?.policy,
        (None, None) => anyhow::bail!("--site FILE is required"),
    };
    let (_, s) = compile_with_summary(&policy)?;
    if a.json {
        let v = serde_json::json!({
            "site": policy.name, "path": policy.path,
            "catalogs": policy.catalogs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            "summary": s,
        });
        return print_json(&v);
    }
    print_summary(&policy, &s);
    Ok(())
}

fn synthetic_policy(spec: &str) -> anyhow::Result<Policy> {
    let n: Vec<u64> = spec.split(':').map(str::parse).collect::<Result<_, _>>().context("--synthetic FLOWS:CIDRS[:SEED]")?;
    match n[..] {
        [f, c] => Ok(crate::policy::synth::synthetic_site(f as usize, c as usize, 1)),
        [f, c, seed] => Ok(crate::policy::synth::synthetic_site(f as usize, c as usize, seed)),
        _ => anyhow::bail!("--synthetic FLOWS:CIDRS[:SEED]"),
    }
}

fn print_summary(p: &Policy, s: &Summary) {
    let cats: Vec<&str> = p.catalogs.iter().map(|c| c.name.as_str()).collect();
    println!("site {} ({}): catalogs {}", p.name, p.path.display(), cats.join(", "));
    println!("roles: {} ({} protected)", s.roles, s.protected_roles);
    println!("flows: {} catalog flows enforced, {} counter slots", s.catalog_flows, s.slots);
    println!("{}", counts_line(Direction::In, &s.counts));
    match &s.outbound {
        Some(o) => {
            println!(
                "outbound: {} catalog flows from protected roles, {} slots, {} peer roles",
                o.catalog_flows, o.slots, o.peer_roles
            );
            println!("{}", counts_line(Direction::Out, &o.counts));
        }
        None => println!("outbound: no flow starts at a protected role (no connection is tracked)"),
    }
    println!("connection tracking: {} entries per IP version", s.conntrack_size);
    println!("{:20} {:>10} {:>12}", "MAP", "ENTRIES", "BYTES");
    for m in &s.maps {
        let note = if m.kind == crate::compile::size::MapKind::PercpuArray { " per CPU" } else { "" };
        println!("{:20} {:>10} {:>12}{note}", m.name, m.entries, m.bytes);
    }
    println!("compiled in {:.1} ms", s.elapsed.as_secs_f64() * 1000.0);
}

/// The classes, tries, policies and port tables of one direction.
fn counts_line(dir: Direction, c: &crate::compile::Counts) -> String {
    format!(
        "{}destination classes: {}, source tries: {}, policies: {}, port tables: {} ({} of source ports)",
        dir.qualifier(),
        c.dst_classes,
        c.src_tries,
        c.policies,
        c.port_tables,
        c.sport_tables
    )
}
