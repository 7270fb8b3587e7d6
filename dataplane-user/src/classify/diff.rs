//! `dataplane diff`: what a site would change in the enforced behaviour, before it is reloaded.
//!
//! Per direction, the flows (by id and protocol) that are added, removed or changed (ports,
//! source ports, the addresses their roles cover, the action), each with its catalog, table and
//! what caused it (an option, a catalog selected, a role protected or bound), and the example
//! tuples whose verdict flips. The tuples come from the flows (first and last port of each range
//! and the ports just outside, the first address of each CIDR and the addresses just outside) and
//! each flip is confirmed by classifying it through both compiled policies, as `explain` does.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::classify::judge::{packet_json, render_packet, Dir, Judge, Key, Verdict};
use crate::classify::DEFAULT_SPORT;
use crate::classify::{Packet, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP};
use crate::kernel::state::Enforced;
use crate::policy::cidr::mask;
use crate::policy::ports::{format_ranges, PortSpec};
use crate::policy::sources::{Loaded, SiteFiles, Sources};
use crate::policy::{Catalog, Cidr, Flow, FlowDecl, OptionValues, Policy};

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The site you mean to enforce.
    #[arg(long, value_name = "FILE")]
    pub site: PathBuf,
    /// The site to compare with (default: the policy the running dataplane enforces, as its
    /// state file recorded it).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Print the differences as JSON.
    #[arg(long)]
    pub json: bool,
    /// Catalog directory (default: $DATAPLANE_CATALOG_DIR, <site dir>/../catalog, ...).
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
    /// The state file of the running dataplane (default /run/dataplane/state.json).
    #[arg(long, value_name = "FILE", conflicts_with = "from")]
    pub state: Option<PathBuf>,
    /// Example tuples whose verdict flips, at most, per flow.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub examples: usize,
}

/// Runs `dataplane diff` and exits like diff(1): 0 when the enforced behaviour is the same, 1
/// when it differs, 2 on error.
pub fn exit(a: DiffArgs) -> ! {
    let code = match diff(&a) {
        Ok(same) => i32::from(!same),
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Prints the diff; true when the enforced behaviour is the same.
pub fn diff(a: &DiffArgs) -> Result<bool> {
    let dir = a.catalog_dir.as_deref();
    let (old, what) = match &a.from {
        Some(from) => (SiteFiles::new(from, dir).read()?, from.display().to_string()),
        None => {
            let e = Enforced::read(a.state.as_deref())?;
            let what = e.describe();
            (e.loaded, what)
        }
    };
    let new = SiteFiles::new(&a.site, dir).read()?;
    let d = compute(&old, &new, Some(a.examples))?;
    if a.json {
        let mut v = serde_json::to_value(&d)?;
        v["old"]["describe"] = what.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", d.render(&what));
    }
    Ok(d.same)
}

/// The one line `run` logs on a reload: what the new policy changed.
pub fn reload_summary(before: Option<&Sources>, after: Option<&Sources>) -> String {
    let (Some(before), Some(after)) = (before, after) else {
        return "policy diff: unknown (the previous policy's sources were not recorded)".into();
    };
    match (before.load(), after.load()) {
        (Ok(old), Ok(new)) => match compute(&old, &new, None) {
            Ok(d) => format!("policy diff: {}", d.summary()),
            Err(e) => format!("policy diff: not computed: {e:#}"),
        },
        (Err(e), _) | (_, Err(e)) => format!("policy diff: not computed: {e:#}"),
    }
}

/// Everything that differs between two policies.
#[derive(Serialize)]
pub struct Diff {
    /// The enforced behaviour is the same: no flow, setting or precedence differs.
    pub same: bool,
    pub old: SiteRef,
    pub new: SiteRef,
    pub catalogs: CatalogChange,
    /// Catalog options whose value differs (selected on both sides).
    pub options: Vec<OptionChange>,
    /// Roles whose addresses or protection differ.
    pub roles: Vec<RoleChange>,
    /// The dataplane's own options (`unprotected`, `icmp-echo`, `conntrack-*`).
    pub settings: Vec<Setting>,
    pub inbound: DirDiff,
    pub outbound: DirDiff,
    /// The same flows in another precedence order (which allow flow a packet is counted on).
    pub order_changed: bool,
    pub flips: FlipCount,
}

#[derive(Serialize)]
pub struct SiteRef {
    pub site: PathBuf,
    pub name: String,
    pub catalogs: Vec<String>,
}

#[derive(Serialize, Default)]
pub struct CatalogChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub reordered: bool,
}

#[derive(Serialize)]
pub struct OptionChange {
    pub option: String,
    pub catalogs: Vec<String>,
    pub old: Value,
    pub new: Value,
}

#[derive(Serialize)]
pub struct RoleChange {
    pub role: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub old_protected: bool,
    pub new_protected: bool,
}

#[derive(Serialize)]
pub struct Setting {
    pub name: &'static str,
    pub old: Value,
    pub new: Value,
    pub flips: Vec<Flip>,
}

#[derive(Serialize, Default)]
pub struct DirDiff {
    pub added: Vec<FlowChange>,
    pub removed: Vec<FlowChange>,
    pub changed: Vec<FlowChange>,
}

impl DirDiff {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = &FlowChange> {
        self.added.iter().chain(&self.removed).chain(&self.changed)
    }
}

/// A flow added, removed or changed. Its fields are the new flow's (the old one's if removed).
#[derive(Serialize)]
pub struct FlowChange {
    pub id: String,
    pub protocol: String,
    pub catalog: String,
    pub table: String,
    pub document: String,
    pub description: String,
    pub from: String,
    pub to: String,
    pub action: String,
    pub sport: String,
    pub dport: String,
    /// What differs (changed flows only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    pub causes: Vec<Cause>,
    /// Example tuples whose verdict flips, credited to this flow on one side.
    pub flips: Vec<Flip>,
}

#[derive(Serialize)]
pub struct FieldChange {
    pub field: &'static str,
    pub old: String,
    pub new: String,
    /// Addresses only: the CIDRs the role gained and lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<String>>,
}

/// Why a flow differs.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// A catalog option of the flow's `when` or port spec changed value.
    Option { option: String, old: Value, new: Value },
    /// The site selects the flow's catalog now (or no longer).
    Catalog { catalog: String, selected: bool },
    /// The role that puts the flow in force is protected now (or no longer).
    Protect { role: String, protected: bool },
    /// The site binds one of the flow's roles to other addresses.
    Binding { role: String },
    /// None of the above: the catalog file itself differs.
    CatalogEdit { catalog: String },
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Cause::Option { option, old, new } => write!(f, "{option}: {} -> {}", show(old), show(new)),
            Cause::Catalog { catalog, selected: true } => write!(f, "catalog {catalog} selected"),
            Cause::Catalog { catalog, selected: false } => write!(f, "catalog {catalog} no longer selected"),
            Cause::Protect { role, protected: true } => write!(f, "role {role} now protected"),
            Cause::Protect { role, protected: false } => write!(f, "role {role} no longer protected"),
            Cause::Binding { role } => write!(f, "role {role} bound to other addresses"),
            Cause::CatalogEdit { catalog } => write!(f, "catalog {catalog} edited"),
        }
    }
}

/// A tuple whose verdict differs, as `explain` answers it on each side.
#[derive(Serialize)]
pub struct Flip {
    /// An `explain` input line.
    pub packet: Value,
    pub old: Verdict,
    pub new: Verdict,
    #[serde(skip)]
    text: String,
}

#[derive(Serialize, Default)]
pub struct FlipCount {
    pub allow_to_deny: usize,
    pub deny_to_allow: usize,
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "unset".into(),
        v => v.to_string(),
    }
}

/// Compares two policies; `examples`: flips per flow (None: no tuples, nothing compiled).
pub fn compute(old: &Loaded, new: &Loaded, examples: Option<usize>) -> Result<Diff> {
    let judges = match examples {
        Some(_) => Some((Judge::new(&old.policy)?, Judge::new(&new.policy)?)),
        None => None,
    };
    let ctx = Ctx { old, new, judges: judges.as_ref(), examples: examples.unwrap_or(0) };
    let (inbound, outbound) = (ctx.dir_diff(Dir::In), ctx.dir_diff(Dir::Out));
    let settings = ctx.settings();
    let order_changed = Dir::BOTH.iter().any(|&d| order_changed(d.flows(&old.policy), d.flows(&new.policy)));
    let mut flips = FlipCount::default();
    let all = inbound.all().chain(outbound.all()).flat_map(|f| &f.flips);
    for f in all.chain(settings.iter().flat_map(|s| &s.flips)) {
        match f.new.allow() {
            true => flips.deny_to_allow += 1,
            false => flips.allow_to_deny += 1,
        }
    }
    Ok(Diff {
        same: inbound.is_empty() && outbound.is_empty() && settings.is_empty() && !order_changed,
        old: site_ref(old),
        new: site_ref(new),
        catalogs: catalog_change(&old.policy, &new.policy),
        options: option_changes(old, new),
        roles: role_changes(&old.policy, &new.policy),
        settings,
        inbound,
        outbound,
        order_changed,
        flips,
    })
}

fn site_ref(l: &Loaded) -> SiteRef {
    SiteRef { site: l.site.path.clone(), name: l.site.name.clone(), catalogs: l.site.catalogs.clone() }
}

/// Whether the flows both lists hold come in another order.
fn order_changed(old: &[Flow], new: &[Flow]) -> bool {
    let keys = |v: &[Flow]| v.iter().map(|f| f.info.key()).collect::<Vec<_>>();
    let (o, n) = (keys(old), keys(new));
    let (os, ns): (HashSet<&Key>, HashSet<&Key>) = (o.iter().collect(), n.iter().collect());
    let common_o: Vec<&Key> = o.iter().filter(|k| ns.contains(k)).collect();
    let common_n: Vec<&Key> = n.iter().filter(|k| os.contains(k)).collect();
    common_o != common_n
}

fn catalog_change(old: &Policy, new: &Policy) -> CatalogChange {
    let names = |p: &Policy| p.catalogs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let (o, n) = (names(old), names(new));
    let common_o: Vec<&String> = o.iter().filter(|c| n.contains(c)).collect();
    let common_n: Vec<&String> = n.iter().filter(|c| o.contains(c)).collect();
    CatalogChange {
        added: n.iter().filter(|c| !o.contains(c)).cloned().collect(),
        removed: o.iter().filter(|c| !n.contains(c)).cloned().collect(),
        reordered: common_o != common_n,
    }
}

/// The value of option `name` on one side: that of the first selected catalog declaring it.
fn option_value(l: &Loaded, name: &str) -> Option<Value> {
    l.policy
        .catalogs
        .iter()
        .find(|c| c.options.iter().any(|(n, _)| n == name))
        .and_then(|c| OptionValues::resolve(&c.options, &l.site.options.0).get(name).map(|v| v.to_json()))
}

fn option_changes(old: &Loaded, new: &Loaded) -> Vec<OptionChange> {
    let mut names: Vec<(&str, &str)> = Vec::new();
    for c in &new.policy.catalogs {
        for (n, _) in &c.options {
            if !names.iter().any(|(m, _)| m == n) {
                names.push((n, &c.name));
            }
        }
    }
    let mut out = Vec::new();
    for (name, _) in names {
        if let (Some(o), Some(n)) = (option_value(old, name), option_value(new, name)) {
            if o != n {
                let catalogs = new
                    .policy
                    .catalogs
                    .iter()
                    .filter(|c| c.options.iter().any(|(m, _)| m == name))
                    .map(|c| c.name.clone())
                    .collect();
                out.push(OptionChange { option: name.into(), catalogs, old: o, new: n });
            }
        }
    }
    out
}

fn role_changes(old: &Policy, new: &Policy) -> Vec<RoleChange> {
    let mut out = Vec::new();
    let find = |p: &'_ Policy, id: &str| p.roles.iter().find(|r| r.id == id).cloned();
    let mut ids: Vec<String> = new.roles.iter().map(|r| r.id.clone()).collect();
    ids.extend(old.roles.iter().map(|r| r.id.clone()).filter(|id| !new.roles.iter().any(|r| &r.id == id)));
    for id in ids {
        let (o, n) = (find(old, &id), find(new, &id));
        let cidrs = |r: &Option<crate::policy::Role>| r.as_ref().map(|r| r.cidrs.clone()).unwrap_or_default();
        let (oc, nc) = (cidrs(&o), cidrs(&n));
        let prot = |r: &Option<crate::policy::Role>| r.as_ref().is_some_and(|r| r.protected);
        // A role only one side knows is a catalog change, reported with its flows.
        if o.is_none() || n.is_none() || (oc == nc && prot(&o) == prot(&n)) {
            continue;
        }
        out.push(RoleChange {
            role: id,
            added: nc.iter().filter(|c| !oc.contains(c)).map(Cidr::to_string).collect(),
            removed: oc.iter().filter(|c| !nc.contains(c)).map(Cidr::to_string).collect(),
            old_protected: prot(&o),
            new_protected: prot(&n),
        });
    }
    out
}

/// The two policies being compared, compiled when tuples are wanted.
struct Ctx<'a> {
    old: &'a Loaded,
    new: &'a Loaded,
    judges: Option<&'a (Judge, Judge)>,
    examples: usize,
}

impl Ctx<'_> {
    fn dir_diff(&self, dir: Dir) -> DirDiff {
        let (of, nf) = (dir.flows(&self.old.policy), dir.flows(&self.new.policy));
        let index = |v: &[Flow]| -> HashMap<Key, usize> { v.iter().enumerate().map(|(i, f)| (f.info.key(), i)).collect() };
        let (oi, ni) = (index(of), index(nf));
        let mut d = DirDiff::default();
        for f in nf {
            match oi.get(&f.info.key()) {
                None => d.added.push(self.change(dir, None, Some(f))),
                Some(&i) => {
                    let c = self.change(dir, Some(&of[i]), Some(f));
                    if !c.changes.is_empty() {
                        d.changed.push(c);
                    }
                }
            }
        }
        for f in of.iter().filter(|f| !ni.contains_key(&f.info.key())) {
            d.removed.push(self.change(dir, Some(f), None));
        }
        d
    }

    /// The entry for one flow key (old and/or new version).
    fn change(&self, dir: Dir, old: Option<&Flow>, new: Option<&Flow>) -> FlowChange {
        let (policy, f) = match (old, new) {
            (_, Some(n)) => (&self.new.policy, n),
            (Some(o), None) => (&self.old.policy, o),
            (None, None) => unreachable!("a flow on one side at least"),
        };
        let changes = match (old, new) {
            (Some(o), Some(n)) => field_changes(&self.old.policy, o, &self.new.policy, n),
            _ => Vec::new(),
        };
        let i = &f.info;
        FlowChange {
            id: i.id.clone(),
            protocol: i.protocol.name().into(),
            catalog: i.catalog.clone(),
            table: i.table.clone(),
            document: i.document.clone(),
            description: i.description.clone(),
            from: policy.roles[f.from].id.clone(),
            to: policy.roles[f.to].id.clone(),
            action: i.action.name().into(),
            sport: format_ranges(&f.sport),
            dport: format_ranges(&f.dport),
            causes: self.causes(dir, old, new, &changes),
            flips: self.flips(dir, old, new),
            changes,
        }
    }

    fn causes(&self, dir: Dir, old: Option<&Flow>, new: Option<&Flow>, changes: &[FieldChange]) -> Vec<Cause> {
        let f = new.or(old).expect("a flow on one side at least");
        let catalog = f.info.catalog.clone();
        let selected = |l: &Loaded| l.policy.catalogs.iter().any(|c| c.name == catalog);
        if selected(self.old) != selected(self.new) {
            let now = selected(self.new);
            return vec![Cause::Catalog { catalog, selected: now }];
        }
        let decl = self.decl(&f.info.catalog, &f.info.id);
        let mut out = Vec::new();
        let ports_changed = changes.iter().any(|c| c.field == "dport" || c.field == "sport");
        for name in decl.iter().flat_map(|d| relevant_options(d, old.is_none() || new.is_none(), ports_changed)) {
            let (o, n) = (self.value(self.old, &catalog, &name), self.value(self.new, &catalog, &name));
            if o != n {
                out.push(Cause::Option { option: name, old: o, new: n });
            }
        }
        // The role whose protection puts the flow in force in this direction.
        let role_id = if dir == Dir::In { f.info.to.clone() } else { f.info.from.clone() };
        let protected = |l: &Loaded| l.policy.roles.iter().any(|r| r.id == role_id && r.protected);
        if protected(self.old) != protected(self.new) {
            let now = protected(self.new);
            out.push(Cause::Protect { role: role_id, protected: now });
        }
        for c in changes.iter().filter(|c| c.field.ends_with("_addresses")) {
            let r = if c.field == "from_addresses" { &f.info.from } else { &f.info.to };
            out.push(Cause::Binding { role: r.clone() });
        }
        if out.is_empty() {
            out.push(Cause::CatalogEdit { catalog });
        }
        out
    }

    fn decl(&self, catalog: &str, id: &str) -> Option<FlowDecl> {
        [self.new, self.old]
            .iter()
            .flat_map(|l| &l.policy.catalogs)
            .filter(|c| c.name == catalog)
            .flat_map(|c: &Catalog| &c.flows)
            .find(|f| f.id == id)
            .cloned()
    }

    fn value(&self, l: &Loaded, catalog: &str, name: &str) -> Value {
        l.policy
            .catalogs
            .iter()
            .find(|c| c.name == catalog)
            .and_then(|c| OptionValues::resolve(&c.options, &l.site.options.0).get(name).map(|v| v.to_json()))
            .unwrap_or(Value::Null)
    }

    /// Example tuples credited to this flow on one side whose verdict differs.
    fn flips(&self, dir: Dir, old: Option<&Flow>, new: Option<&Flow>) -> Vec<Flip> {
        let Some((oj, nj)) = self.judges else { return Vec::new() };
        let k = new.or(old).expect("a flow").info.key();
        let mut versions = Vec::new();
        versions.extend(old.map(|f| (&self.old.policy, f)));
        versions.extend(new.map(|f| (&self.new.policy, f)));
        let mut out = Vec::new();
        for p in tuples(&versions) {
            let (o, n) = (oj.verdict(dir, &p), nj.verdict(dir, &p));
            let credited = o.key.as_ref() == Some(&k) || n.key.as_ref() == Some(&k);
            if o.allow() != n.allow() && credited {
                out.push(flip(dir, &p, o, n));
                if out.len() >= self.examples {
                    break;
                }
            }
        }
        out
    }

    fn settings(&self) -> Vec<Setting> {
        let (o, n) = (&self.old.policy, &self.new.policy);
        let word = |b: bool, yes: &str, no: &str| Value::from(if b { yes } else { no });
        let mut out = Vec::new();
        if o.drop_unprotected != n.drop_unprotected {
            out.push(Setting {
                name: "unprotected",
                old: word(o.drop_unprotected, "drop", "pass"),
                new: word(n.drop_unprotected, "drop", "pass"),
                flips: self.setting_flips(unprotected_tuples(o, n)),
            });
        }
        if o.allow_echo != n.allow_echo {
            out.push(Setting {
                name: "icmp-echo",
                old: word(o.allow_echo, "allow", "deny"),
                new: word(n.allow_echo, "allow", "deny"),
                flips: self.setting_flips(echo_tuples(o, n)),
            });
        }
        let ct = |c: &crate::policy::ConntrackOptions| [c.size, c.tcp_established, c.tcp_transitory, c.udp];
        for (i, (a, b)) in ct(&o.conntrack).into_iter().zip(ct(&n.conntrack)).enumerate() {
            if a != b {
                let name = crate::policy::ConntrackOptions::LIMITS[i].0;
                out.push(Setting { name, old: a.into(), new: b.into(), flips: Vec::new() });
            }
        }
        out
    }

    fn setting_flips(&self, tuples: Vec<Packet>) -> Vec<Flip> {
        let Some((oj, nj)) = self.judges else { return Vec::new() };
        tuples
            .iter()
            .filter_map(|p| {
                let (o, n) = (oj.verdict(Dir::In, p), nj.verdict(Dir::In, p));
                (o.allow() != n.allow()).then(|| flip(Dir::In, p, o, n))
            })
            .take(self.examples)
            .collect()
    }
}

fn flip(dir: Dir, p: &Packet, old: Verdict, new: Verdict) -> Flip {
    let out = if dir == Dir::Out { " (sent by the server)" } else { "" };
    let text = format!("{} -> {}  {}{out}", old.verdict, new.verdict, render_packet(p));
    Flip { packet: packet_json(dir, p), old, new, text }
}

/// The options that can explain a flow's change: `when` for a flow added or removed, the port
/// specs' options for changed ports.
fn relevant_options(d: &FlowDecl, presence: bool, ports: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if presence {
        out.extend(d.when.0.iter().map(|(n, _)| n.clone()));
    }
    if ports {
        spec_options(d.dport(), &mut out);
        spec_options(d.sport(), &mut out);
    }
    out.dedup();
    out
}

fn spec_options(s: &PortSpec, out: &mut Vec<String>) {
    match s {
        PortSpec::By { option, cases } => {
            out.push(option.clone());
            cases.iter().for_each(|(_, c)| spec_options(c, out));
        }
        PortSpec::Count { option, .. } => out.push(option.clone()),
        PortSpec::List(v) => v.iter().for_each(|c| spec_options(c, out)),
        PortSpec::Any | PortSpec::Range(..) => {}
    }
}

fn field_changes(op: &Policy, o: &Flow, np: &Policy, n: &Flow) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut text = |field, a: String, b: String| {
        if a != b {
            out.push(FieldChange { field, old: a, new: b, added: None, removed: None });
        }
    };
    text("dport", format_ranges(&o.dport), format_ranges(&n.dport));
    text("sport", format_ranges(&o.sport), format_ranges(&n.sport));
    text("action", o.info.action.name().into(), n.info.action.name().into());
    text("from", op.roles[o.from].id.clone(), np.roles[n.from].id.clone());
    text("to", op.roles[o.to].id.clone(), np.roles[n.to].id.clone());
    for (field, a, b) in [
        ("from_addresses", &op.roles[o.from].cidrs, &np.roles[n.from].cidrs),
        ("to_addresses", &op.roles[o.to].cidrs, &np.roles[n.to].cidrs),
    ] {
        if a != b {
            let list = |v: &[Cidr]| v.iter().map(Cidr::to_string).collect::<Vec<_>>();
            out.push(FieldChange {
                field,
                old: list(a).join(","),
                new: list(b).join(","),
                added: Some(list(&b.iter().filter(|c| !a.contains(c)).copied().collect::<Vec<_>>())),
                removed: Some(list(&a.iter().filter(|c| !b.contains(c)).copied().collect::<Vec<_>>())),
            });
        }
    }
    out
}

/// Addresses to try in a CIDR list: the first of each CIDR (the first host of a longer one;
/// a documentation address for `/0`), then those just outside each.
pub fn sample_addresses(cidrs: &[Cidr]) -> Vec<IpAddr> {
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for c in cidrs.iter().take(8) {
        let w = c.width();
        let full = mask(w, w);
        let last = c.addr | (!mask(c.len, w) & full);
        inside.push(match c.len {
            0 if c.v6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            0 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
            l if l + 1 < w => ip(c.v6, c.addr + 1),
            _ => ip(c.v6, c.addr),
        });
        if c.addr > 0 {
            outside.push(ip(c.v6, c.addr - 1));
        }
        if last < full {
            outside.push(ip(c.v6, last + 1));
        }
    }
    dedup(inside.into_iter().chain(outside).collect())
}

fn ip(v6: bool, a: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

fn dedup<T: PartialEq + Clone>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Ports to try in port ranges: the first and last of each range, then those just outside.
fn sample_ports(ranges: &[(u16, u16)]) -> Vec<u16> {
    let inside = ranges.iter().flat_map(|&(a, b)| [a, b]);
    let outside = ranges.iter().flat_map(|&(a, b)| [a.checked_sub(1), b.checked_add(1)]).flatten();
    dedup(inside.chain(outside).collect())
}

/// A source port in the ranges (the first IANA ephemeral port when it is in), then the others.
fn sample_sports(ranges: &[(u16, u16)]) -> Vec<u16> {
    let inside = |p: u16| ranges.iter().any(|&(a, b)| (a..=b).contains(&p));
    let first = if inside(DEFAULT_SPORT) { DEFAULT_SPORT } else { ranges.first().map_or(DEFAULT_SPORT, |r| r.0) };
    let mut v = vec![first];
    if ranges != [(0, u16::MAX)] {
        v.extend(sample_ports(ranges));
    }
    dedup(v)
}

/// Tuples to try for a flow (in one or both versions): every pair of sample addresses with the
/// first ports, then every sample port with the first addresses, per IP version.
pub fn tuples(versions: &[(&Policy, &Flow)]) -> Vec<Packet> {
    let Some(&(_, f0)) = versions.first() else { return Vec::new() };
    let collect = |pick: &dyn Fn(&Policy, &Flow) -> Vec<IpAddr>| -> Vec<IpAddr> {
        dedup(versions.iter().flat_map(|(p, f)| pick(p, f)).collect())
    };
    let dsts = collect(&|p, f| sample_addresses(&p.roles[f.to].cidrs));
    let srcs = collect(&|p, f| sample_addresses(&p.roles[f.from].cidrs));
    let dports = dedup(versions.iter().flat_map(|(_, f)| sample_ports(&f.dport)).collect());
    let sports = dedup(versions.iter().flat_map(|(_, f)| sample_sports(&f.sport)).collect());
    let (Some(&dp0), Some(&sp0)) = (dports.first(), sports.first()) else { return Vec::new() };
    let packet = |src, dst, sport, dport| Packet { src, dst, proto: f0.proto, sport, dport, icmp_type: None, quote: None };
    // The first tuple of each IP version first, so that the first examples show both.
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for v6 in [false, true] {
        let ds: Vec<IpAddr> = dsts.iter().copied().filter(|a| a.is_ipv6() == v6).take(8).collect();
        let ss: Vec<IpAddr> = srcs.iter().copied().filter(|a| a.is_ipv6() == v6).take(8).collect();
        let (Some(&d0), Some(&s0)) = (ds.first(), ss.first()) else { continue };
        first.push(packet(s0, d0, sp0, dp0));
        rest.extend(dports.iter().map(|&dp| packet(s0, d0, sp0, dp)));
        rest.extend(sports.iter().map(|&sp| packet(s0, d0, sp, dp0)));
        for &d in &ds {
            rest.extend(ss.iter().map(|&s| packet(s, d, sp0, dp0)));
        }
    }
    dedup([first, rest].concat())
}

fn protected_cidrs(p: &Policy) -> Vec<Cidr> {
    p.protected().flat_map(|r| r.cidrs.iter().copied()).collect()
}

fn any_source(dst: IpAddr) -> IpAddr {
    sample_addresses(&[if dst.is_ipv6() { Cidr::ANY_V6 } else { Cidr::ANY_V4 }])[0]
}

/// Tuples to addresses just outside the protected CIDRs (`unprotected` decides them).
fn unprotected_tuples(o: &Policy, n: &Policy) -> Vec<Packet> {
    let cidrs = dedup([protected_cidrs(o), protected_cidrs(n)].concat());
    let inside: Vec<IpAddr> = sample_addresses(&cidrs);
    inside
        .into_iter()
        .filter(|a| !cidrs.iter().any(|c| c.contains_ip(*a)))
        .map(|dst| Packet {
            src: any_source(dst),
            dst,
            proto: IPPROTO_UDP,
            sport: DEFAULT_SPORT,
            dport: 9,
            icmp_type: None,
            quote: None,
        })
        .collect()
}

/// Echo requests to the first protected addresses (`icmp-echo` decides them).
fn echo_tuples(o: &Policy, n: &Policy) -> Vec<Packet> {
    let cidrs = dedup([protected_cidrs(o), protected_cidrs(n)].concat());
    sample_addresses(&cidrs)
        .into_iter()
        .filter(|a| cidrs.iter().any(|c| c.contains_ip(*a)))
        .map(|dst| {
            let proto = if dst.is_ipv6() { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
            Packet { src: any_source(dst), dst, proto, sport: 0, dport: 0, icmp_type: None, quote: None }
        })
        .collect()
}

impl Diff {
    /// `inbound +2 -0 ~1, outbound +1 -0 ~0; turn false -> true`, or `no change ...`.
    pub fn summary(&self) -> String {
        if self.same {
            return "no change in the enforced behaviour".into();
        }
        let counts = |d: &DirDiff| format!("+{} -{} ~{}", d.added.len(), d.removed.len(), d.changed.len());
        let mut s = format!("inbound {} flows, outbound {}", counts(&self.inbound), counts(&self.outbound));
        let mut why: Vec<String> =
            self.options.iter().map(|o| format!("{} {} -> {}", o.option, show(&o.old), show(&o.new))).collect();
        why.extend(self.catalogs.added.iter().map(|c| format!("catalog {c} selected")));
        why.extend(self.catalogs.removed.iter().map(|c| format!("catalog {c} no longer selected")));
        why.extend(self.roles.iter().map(|r| format!("role {}", r.role)));
        why.extend(self.settings.iter().map(|x| format!("{} {} -> {}", x.name, show(&x.old), show(&x.new))));
        if self.order_changed {
            why.push("precedence order".into());
        }
        if !why.is_empty() {
            let more = why.len().saturating_sub(6);
            why.truncate(6);
            if more > 0 {
                why.push(format!("{more} more"));
            }
            s.push_str(&format!("; {}", why.join(", ")));
        }
        s
    }

    /// The text report; `old` describes the side compared with.
    pub fn render(&self, old: &str) -> String {
        let mut s = format!("diff: {} -> {}\n", old, self.new.site.display());
        let c = &self.catalogs;
        if !c.added.is_empty() || !c.removed.is_empty() || c.reordered {
            let mut parts: Vec<String> = c.added.iter().map(|x| format!("+{x}")).collect();
            parts.extend(c.removed.iter().map(|x| format!("-{x}")));
            if c.reordered {
                parts.push("order changed".into());
            }
            s.push_str(&format!("catalogs: {}\n", parts.join(", ")));
        }
        for o in &self.options {
            s.push_str(&format!("option {}: {} -> {} ({})\n", o.option, show(&o.old), show(&o.new), o.catalogs.join(", ")));
        }
        for r in &self.roles {
            let mut parts: Vec<String> = r.added.iter().map(|x| format!("+{x}")).collect();
            parts.extend(r.removed.iter().map(|x| format!("-{x}")));
            if r.old_protected != r.new_protected {
                parts.push(if r.new_protected { "now protected" } else { "no longer protected" }.into());
            }
            s.push_str(&format!("role {}: {}\n", r.role, parts.join(", ")));
        }
        for x in &self.settings {
            s.push_str(&format!("setting {}: {} -> {}\n", x.name, show(&x.old), show(&x.new)));
            for f in &x.flips {
                s.push_str(&format!("    {}\n", f.text));
            }
        }
        for (dir, d) in [(Dir::In, &self.inbound), (Dir::Out, &self.outbound)] {
            s.push_str(&render_dir(dir, d));
        }
        if self.order_changed {
            s.push_str(
                "precedence: the same flows in another order (an overlapping allow flow may count what another counted)\n",
            );
        }
        match self.same {
            true => s.push_str("same enforced behaviour\n"),
            false => s.push_str(&format!(
                "behaviour differs: {}; example tuples flip {} deny -> allow, {} allow -> deny (dataplane explain agrees)\n",
                self.summary(),
                self.flips.deny_to_allow,
                self.flips.allow_to_deny
            )),
        }
        s
    }
}

fn render_dir(dir: Dir, d: &DirDiff) -> String {
    if d.is_empty() {
        return format!("{}: no flow differs\n", dir.name());
    }
    let mut s = format!("{}: {} added, {} removed, {} changed\n", dir.name(), d.added.len(), d.removed.len(), d.changed.len());
    for (mark, list) in [('+', &d.added), ('-', &d.removed), ('~', &d.changed)] {
        for f in list {
            let deny = if f.action == "deny" { " deny" } else { "" };
            s.push_str(&format!(
                "  {mark} {} {}{deny} {} -> {} dport {} sport {}  [{}, \"{}\"]\n",
                f.id, f.protocol, f.from, f.to, f.dport, f.sport, f.catalog, f.table
            ));
            for c in &f.changes {
                let what = match (&c.added, &c.removed) {
                    (Some(a), Some(r)) => {
                        let mut v: Vec<String> = a.iter().map(|x| format!("+{x}")).collect();
                        v.extend(r.iter().map(|x| format!("-{x}")));
                        v.join(" ")
                    }
                    _ => format!("{} -> {}", c.old, c.new),
                };
                s.push_str(&format!("      {}: {what}\n", c.field));
            }
            let causes: Vec<String> = f.causes.iter().map(Cause::to_string).collect();
            s.push_str(&format!("      because {}\n", causes.join("; ")));
            for x in &f.flips {
                let (o, n) = (&x.old, &x.new);
                let side = |v: &Verdict| v.flow.clone().unwrap_or_else(|| v.reason.to_string());
                s.push_str(&format!("      {}  (old: {}, new: {})\n", x.text, side(o), side(n)));
            }
        }
    }
    s
}
