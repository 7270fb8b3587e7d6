//! `dataplane diff`: what a site would change in the enforced behaviour, before it is reloaded.
//!
//! Per direction, the flows (by id and protocol) that are added, removed or changed (ports,
//! source ports, the addresses their roles cover, the action), each with its catalog, table and
//! what caused it (an option, a catalog selected, a role protected or bound), and the example
//! tuples whose verdict flips. The tuples come from the flows (first and last port of each range
//! and the ports just outside, the first address of each CIDR and the addresses just outside) and
//! each flip is confirmed by classifying it through both compiled policies, as `explain` does.
//!
//! The sides come from [`super::baseline`]; what differs is concluded here (the tuples tried in
//! [`tuples`]) and printed by [`render`].

mod render;
pub mod tuples;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::classify::judge::Judge;
use crate::classify::request::Request;
use crate::classify::verdict::{Action, Answer, Direction};
use crate::classify::Probe;
use crate::policy::ports::{format_ranges, PortSpec};
use crate::policy::sources::{Loaded, Sources};
use crate::policy::{Catalog, Cidr, Flow, FlowDecl, FlowKey, OptionValues, Policy, Proto, SourcePorts};
use crate::rollout::RolloutError;

type Result<T> = std::result::Result<T, RolloutError>;
use tuples::{echo_tuples, source_port_tuples, tuples, unprotected_tuples};

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
    pub protocol: Proto,
    pub catalog: String,
    pub table: String,
    pub document: String,
    pub description: String,
    pub from: String,
    pub to: String,
    pub action: Action,
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
    pub field: Field,
    pub old: String,
    pub new: String,
    /// Addresses only: the CIDRs the role gained and lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<String>>,
}

/// What differs in a flow both sides have.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Dport,
    Sport,
    Action,
    From,
    To,
    /// The addresses the flow's `from` role is bound to.
    FromAddresses,
    ToAddresses,
}

impl Field {
    pub const fn name(self) -> &'static str {
        match self {
            Field::Dport => "dport",
            Field::Sport => "sport",
            Field::Action => "action",
            Field::From => "from",
            Field::To => "to",
            Field::FromAddresses => "from_addresses",
            Field::ToAddresses => "to_addresses",
        }
    }

    fn is_ports(self) -> bool {
        matches!(self, Field::Dport | Field::Sport)
    }
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
    /// A setting of the dataplane changed the flow (`source-ports`: its source ports).
    Setting { setting: &'static str, old: Value, new: Value },
    /// None of the above: the catalog file itself differs.
    CatalogEdit { catalog: String },
}

/// A tuple whose verdict differs, as `explain` answers it on each side.
#[derive(Serialize)]
pub struct Flip {
    /// An `explain` input line.
    pub packet: Request,
    pub old: Answer,
    pub new: Answer,
    #[serde(skip)]
    probe: Probe,
}

#[derive(Serialize, Default)]
pub struct FlipCount {
    pub allow_to_deny: usize,
    pub deny_to_allow: usize,
}

/// Compares two policies; `examples`: flips per flow (None: no tuples, nothing compiled).
pub fn compute(old: &Loaded, new: &Loaded, examples: Option<usize>) -> Result<Diff> {
    let judges = match examples {
        Some(_) => Some((Judge::new(&old.policy)?, Judge::new(&new.policy)?)),
        None => None,
    };
    let ctx = Ctx { old, new, judges: judges.as_ref(), examples: examples.unwrap_or(0) };
    let (inbound, outbound) = (ctx.dir_diff(Direction::In), ctx.dir_diff(Direction::Out));
    let settings = ctx.settings();
    let order_changed = Direction::BOTH.iter().any(|&d| order_changed(d.flows(&old.policy), d.flows(&new.policy)));
    let mut flips = FlipCount::default();
    let all = inbound.all().chain(outbound.all()).flat_map(|f| &f.flips);
    // A tuple a setting flips may be a flow's example too (`source-ports`): counted once.
    let mut seen = HashSet::new();
    for f in all.chain(settings.iter().flat_map(|s| &s.flips)).filter(|f| seen.insert((f.packet.direction, f.probe))) {
        match f.new.verdict {
            Action::Allow => flips.deny_to_allow += 1,
            Action::Deny => flips.allow_to_deny += 1,
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
    let (os, ns): (HashSet<&FlowKey>, HashSet<&FlowKey>) = (o.iter().collect(), n.iter().collect());
    let common_o: Vec<&FlowKey> = o.iter().filter(|k| ns.contains(k)).collect();
    let common_n: Vec<&FlowKey> = n.iter().filter(|k| os.contains(k)).collect();
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
    fn dir_diff(&self, dir: Direction) -> DirDiff {
        let (of, nf) = (dir.flows(&self.old.policy), dir.flows(&self.new.policy));
        let index = |v: &[Flow]| -> HashMap<FlowKey, usize> { v.iter().enumerate().map(|(i, f)| (f.info.key(), i)).collect() };
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
    fn change(&self, dir: Direction, old: Option<&Flow>, new: Option<&Flow>) -> FlowChange {
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
            protocol: i.protocol,
            catalog: i.catalog.clone(),
            table: i.table.clone(),
            document: i.document.clone(),
            description: i.description.clone(),
            from: policy.roles[f.from].id.clone(),
            to: policy.roles[f.to].id.clone(),
            action: i.action,
            sport: format_ranges(&f.sport),
            dport: format_ranges(&f.dport),
            causes: self.causes(dir, old, new, &changes),
            flips: self.flips(dir, old, new),
            changes,
        }
    }

    fn causes(&self, dir: Direction, old: Option<&Flow>, new: Option<&Flow>, changes: &[FieldChange]) -> Vec<Cause> {
        let f = new.or(old).expect("a flow on one side at least");
        let catalog = f.info.catalog.clone();
        let selected = |l: &Loaded| l.policy.catalogs.iter().any(|c| c.name == catalog);
        if selected(self.old) != selected(self.new) {
            let now = selected(self.new);
            return vec![Cause::Catalog { catalog, selected: now }];
        }
        let decl = self.decl(&f.info.catalog, &f.info.id);
        let mut out = Vec::new();
        let ports_changed = changes.iter().any(|c| c.field.is_ports());
        for name in decl.iter().flat_map(|d| relevant_options(d, old.is_none() || new.is_none(), ports_changed)) {
            let (o, n) = (self.value(self.old, &catalog, &name), self.value(self.new, &catalog, &name));
            if o != n {
                out.push(Cause::Option { option: name, old: o, new: n });
            }
        }
        // The role whose protection puts the flow in force in this direction.
        let role_id = if dir == Direction::In { f.info.to.clone() } else { f.info.from.clone() };
        let protected = |l: &Loaded| l.policy.roles.iter().any(|r| r.id == role_id && r.protected);
        if protected(self.old) != protected(self.new) {
            let now = protected(self.new);
            out.push(Cause::Protect { role: role_id, protected: now });
        }
        let (os, ns) = (self.old.policy.source_ports, self.new.policy.source_ports);
        for c in changes {
            match c.field {
                Field::FromAddresses => out.push(Cause::Binding { role: f.info.from.clone() }),
                Field::ToAddresses => out.push(Cause::Binding { role: f.info.to.clone() }),
                Field::Sport if os != ns => {
                    out.push(Cause::Setting { setting: SourcePorts::OPTION, old: os.name().into(), new: ns.name().into() });
                }
                _ => {}
            }
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
    fn flips(&self, dir: Direction, old: Option<&Flow>, new: Option<&Flow>) -> Vec<Flip> {
        let Some((oj, nj)) = self.judges else { return Vec::new() };
        let k = new.or(old).expect("a flow").info.key();
        let mut versions = Vec::new();
        versions.extend(old.map(|f| (&self.old.policy, f)));
        versions.extend(new.map(|f| (&self.new.policy, f)));
        let mut out = Vec::new();
        for p in tuples(&versions) {
            let (o, n) = (oj.answer(dir, &p), nj.answer(dir, &p));
            let credited = o.key.as_ref() == Some(&k) || n.key.as_ref() == Some(&k);
            if o.verdict != n.verdict && credited {
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
        // A switch that differs, with the tuples its flips are looked for in (only then built).
        let mut switch = |name, old: Value, new: Value, tuples: fn(&Policy, &Policy) -> Vec<Probe>| {
            if old != new {
                out.push(Setting { name, old, new, flips: self.setting_flips(tuples(o, n)) });
            }
        };
        switch(
            "unprotected",
            word(o.drop_unprotected, "drop", "pass"),
            word(n.drop_unprotected, "drop", "pass"),
            unprotected_tuples,
        );
        switch("icmp-echo", word(o.allow_echo, "allow", "deny"), word(n.allow_echo, "allow", "deny"), echo_tuples);
        switch(SourcePorts::OPTION, o.source_ports.name().into(), n.source_ports.name().into(), source_port_tuples);
        let ct = |c: &crate::policy::ConntrackOptions| [c.size, c.tcp_established, c.tcp_transitory, c.udp];
        for (i, (a, b)) in ct(&o.conntrack).into_iter().zip(ct(&n.conntrack)).enumerate() {
            if a != b {
                let name = crate::policy::ConntrackOptions::LIMITS[i].0;
                out.push(Setting { name, old: a.into(), new: b.into(), flips: Vec::new() });
            }
        }
        out
    }

    fn setting_flips(&self, tuples: Vec<Probe>) -> Vec<Flip> {
        let Some((oj, nj)) = self.judges else { return Vec::new() };
        tuples
            .iter()
            .filter_map(|p| {
                let (o, n) = (oj.answer(Direction::In, p), nj.answer(Direction::In, p));
                (o.verdict != n.verdict).then(|| flip(Direction::In, p, o, n))
            })
            .take(self.examples)
            .collect()
    }
}

fn flip(dir: Direction, p: &Probe, old: Answer, new: Answer) -> Flip {
    Flip { packet: Request::of(dir, p), old, new, probe: *p }
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
        PortSpec::Port { option, to } => out.extend(std::iter::once(option).chain(to).cloned()),
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
    text(Field::Dport, format_ranges(&o.dport), format_ranges(&n.dport));
    text(Field::Sport, format_ranges(&o.sport), format_ranges(&n.sport));
    text(Field::Action, o.info.action.name().into(), n.info.action.name().into());
    text(Field::From, op.roles[o.from].id.clone(), np.roles[n.from].id.clone());
    text(Field::To, op.roles[o.to].id.clone(), np.roles[n.to].id.clone());
    for (field, a, b) in [
        (Field::FromAddresses, &op.roles[o.from].cidrs, &np.roles[n.from].cidrs),
        (Field::ToAddresses, &op.roles[o.to].cidrs, &np.roles[n.to].cidrs),
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
