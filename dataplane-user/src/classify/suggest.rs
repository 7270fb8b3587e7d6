//! `dataplane suggest`: what the catalogs say about the traffic a site dropped (or, in monitor
//! mode, would have dropped), read from drop events.
//!
//! Each distinct dropped tuple is judged again by the site, then:
//! - **switched off**: a single option change (each other value of each option of the selected
//!   catalogs) whose policy admits it through a flow; or, failing that, the options of a flow's
//!   `when` that are off, all of them;
//! - **unbound**: a flow that would admit it but for its source role, which has no address
//!   covering the sender (with the options it also needs, if any);
//! - **forbidden** (a deny flow drops it) or **undocumented** (neither): the top destination
//!   ports and sources.
//!
//! Every suggestion is confirmed by compiling the site with the change and classifying the tuple
//! through it, as `explain` would. Suggestions never change the site: they print the lines to add.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::classify::judge::{packet_json, render_packet, Dir, Judge, Key};
use crate::classify::{Packet, IPPROTO_TCP, IPPROTO_UDP};
use crate::compile::tables::FlowInfo;
use crate::kernel::state::Enforced;
use crate::policy::cidr::mask;
use crate::policy::options::OptionKind;
use crate::policy::ports::PortSpec;
use crate::policy::sources::Loaded;
use crate::policy::{catalog_dir, load_all_catalogs, Action, Cidr, OptValue, OptionValues, Policy};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["events", "follow"])))]
pub struct SuggestArgs {
    /// Drop events, one JSON object per line as `dataplane events --json` prints them (`-`:
    /// standard input).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Follow the running dataplane's drop events for this many seconds instead.
    #[arg(long, value_name = "SECONDS")]
    pub follow: Option<u64>,
    /// The site to suggest changes to (default: the policy the running dataplane enforces).
    #[arg(long, value_name = "FILE")]
    pub site: Option<PathBuf>,
    /// Print the suggestions as JSON.
    #[arg(long)]
    pub json: bool,
    /// Catalog directory (default: $DATAPLANE_CATALOG_DIR, <site dir>/../catalog, ...).
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
    /// The state file of the running dataplane (default /run/dataplane/state.json).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Distinct tuples kept in memory; the drops of further tuples are counted, not analysed.
    #[arg(long, value_name = "N", default_value_t = 65536)]
    pub max_tuples: usize,
    /// Destination ports and sources listed per group.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub top: usize,
}

pub fn suggest(a: SuggestArgs) -> Result<()> {
    let (base, what) = match &a.site {
        Some(site) => (Loaded::read(site, a.catalog_dir.as_deref())?, site.display().to_string()),
        None => {
            let e = Enforced::read(a.state.as_deref())?;
            let what = e.describe();
            (e.loaded, what)
        }
    };
    let mut drops = Drops::new(a.max_tuples);
    match (&a.events, a.follow) {
        (Some(file), _) => drops.read_file(file)?,
        (None, Some(secs)) => crate::observe::events::follow(Some(std::time::Duration::from_secs(secs)), |e| {
            drops.add_line(&serde_json::to_string(e)?).map_err(|(_, m)| anyhow::anyhow!(m))?;
            Ok(true)
        })?,
        (None, None) => bail!("give --events FILE or --follow SECONDS"),
    }
    let dir = catalog_dir(a.catalog_dir.as_deref(), Some(&base.site.path));
    let report = analyse(&base, &drops, a.top, &dir)?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["site"] = json!({"path": base.site.path, "describe": what});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report.render(&what));
    }
    if drops.bad > 0 {
        bail!("{} bad event line(s)", drops.bad);
    }
    Ok(())
}

/// A dropped packet's 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    fn packet(&self) -> Packet {
        Packet {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
            icmp_type: None,
            quote: None,
        }
    }
}

/// The drop events read, with a bound on the distinct tuples kept.
pub struct Drops {
    max: usize,
    /// Packets per distinct TCP or UDP tuple.
    pub tuples: HashMap<Tuple, u64>,
    /// Packets of drops no flow judges (ICMP, fragments, malformed ...), per reason.
    pub other: BTreeMap<String, u64>,
    pub events: u64,
    /// Drops the kernel's rate limit did not report.
    pub suppressed: u64,
    /// Packets of tuples past the cap, not analysed.
    pub over_cap: u64,
    pub bad: usize,
}

impl Drops {
    pub fn new(max: usize) -> Self {
        Drops { max, tuples: HashMap::new(), other: BTreeMap::new(), events: 0, suppressed: 0, over_cap: 0, bad: 0 }
    }

    /// Reads JSON lines from `file` (`-`: stdin); a bad line is reported as FILE:LINE:COLUMN and
    /// skipped.
    pub fn read_file(&mut self, file: &Path) -> Result<()> {
        let reader: Box<dyn BufRead> = match file.to_str() {
            Some("-") => Box::new(std::io::stdin().lock()),
            _ => Box::new(std::io::BufReader::new(
                std::fs::File::open(file).with_context(|| format!("reading events {}", file.display()))?,
            )),
        };
        let name = if file.to_str() == Some("-") { "stdin".into() } else { file.display().to_string() };
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading {name}"))?;
            if line.trim().is_empty() {
                continue;
            }
            if let Err((col, msg)) = self.add_line(&line) {
                self.bad += 1;
                eprintln!("{name}:{}:{col}: {msg}", i + 1);
            }
        }
        Ok(())
    }

    /// One `dataplane events --json` line; on error, the column and what is wrong.
    pub fn add_line(&mut self, line: &str) -> std::result::Result<(), (usize, String)> {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            (e.column(), format!("not valid JSON: {msg}"))
        })?;
        let at = |k: &str| line.find(&format!("\"{k}\"")).map_or(1, |i| i + 1);
        let field =
            |k: &str| v.get(k).filter(|x| !x.is_null()).ok_or_else(|| (at(k).max(1), format!("field \"{k}\" is missing")));
        let ip = |k: &str| -> std::result::Result<IpAddr, (usize, String)> {
            let x = field(k)?;
            x.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| (at(k), format!("field \"{k}\": {x} is not an IP address")))
        };
        let num = |k: &str, max: u64| -> std::result::Result<u64, (usize, String)> {
            let x = field(k)?;
            x.as_u64().filter(|n| *n <= max).ok_or_else(|| (at(k), format!("field \"{k}\": {x} is not an integer 0-{max}")))
        };
        let (src, dst) = (ip("src")?, ip("dst")?);
        let proto = num("proto", 255)? as u8;
        let (sport, dport) = (num("sport", 65535)? as u16, num("dport", 65535)? as u16);
        let reason =
            field("reason")?.as_str().ok_or_else(|| (at("reason"), "field \"reason\" must be a string".to_string()))?.to_owned();
        let suppressed = v.get("suppressed").and_then(Value::as_u64).unwrap_or(0);
        self.add(Tuple { src, dst, proto, sport, dport }, &reason, suppressed);
        Ok(())
    }

    pub fn add(&mut self, t: Tuple, reason: &str, suppressed: u64) {
        self.events += 1;
        self.suppressed += suppressed;
        let judged = (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP) && (reason == "no_flow" || reason == "deny_flow");
        if !judged {
            *self.other.entry(reason.to_owned()).or_default() += 1;
        } else if let Some(n) = self.tuples.get_mut(&t) {
            *n += 1;
        } else if self.tuples.len() < self.max {
            self.tuples.insert(t, 1);
        } else {
            self.over_cap += 1;
        }
    }

    fn packets(&self) -> u64 {
        self.tuples.values().sum::<u64>() + self.other.values().sum::<u64>() + self.over_cap
    }
}

/// What `suggest` reports.
#[derive(Serialize)]
pub struct Report {
    pub events: u64,
    pub packets: u64,
    pub suppressed: u64,
    pub tuples: usize,
    pub max_tuples: usize,
    /// The cap on distinct tuples was reached: `not_analysed` packets were only counted.
    pub cap_reached: bool,
    pub not_analysed: u64,
    /// Dropped then, admitted by the site now.
    pub admitted: Group,
    pub switched_off: Vec<Suggestion>,
    pub unbound: Vec<Suggestion>,
    pub forbidden: Vec<Forbidden>,
    pub undocumented: Undocumented,
    /// Drops no flow judges, per reason (ICMP, fragments, malformed, unprotected ...).
    pub other: BTreeMap<String, u64>,
}

#[derive(Serialize, Default)]
pub struct Group {
    pub packets: u64,
    pub tuples: usize,
    pub sources: usize,
}

/// One change to the site, and the dropped traffic it admits.
#[derive(Serialize)]
pub struct Suggestion {
    /// Options to set: name -> value.
    pub set: BTreeMap<String, Value>,
    /// Role -> CIDRs to add to its binding (unbound suggestions).
    pub bind: BTreeMap<String, Vec<String>>,
    /// The flows that admit the traffic under the change, with their catalog and table.
    pub flows: Vec<FlowRef>,
    pub packets: u64,
    pub tuples: usize,
    pub sources: usize,
    /// An admitted tuple, as an `explain` line.
    pub example: Value,
    /// Other flows the change adds, removes, or changes (ports, addresses): `dataplane diff`
    /// lists them.
    pub also_adds: usize,
    pub also_removes: usize,
    pub also_changes: usize,
    /// The lines to put in the site.
    pub lines: String,
}

#[derive(Serialize, Clone, PartialEq, Eq)]
pub struct FlowRef {
    pub id: String,
    pub protocol: crate::policy::Proto,
    pub catalog: String,
    pub table: String,
    pub description: String,
}

impl FlowRef {
    fn new(f: &FlowInfo) -> Self {
        FlowRef {
            id: f.id.clone(),
            protocol: f.protocol,
            catalog: f.catalog.clone(),
            table: f.table.clone(),
            description: f.description.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct Forbidden {
    pub flow: FlowRef,
    pub packets: u64,
    pub sources: usize,
    pub top_ports: Vec<PortCount>,
    pub top_sources: Vec<SourceCount>,
}

#[derive(Serialize, Default)]
pub struct Undocumented {
    pub packets: u64,
    pub tuples: usize,
    pub sources: usize,
    pub top_ports: Vec<PortCount>,
    pub top_sources: Vec<SourceCount>,
}

#[derive(Serialize)]
pub struct PortCount {
    pub proto: Value,
    pub dport: u16,
    pub packets: u64,
    pub sources: usize,
    /// Flows of catalogs the site does not select that document this port ("catalog/flow").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub documented_by: Vec<String>,
    /// Flows in force on this port that took other senders: "flow (from ROLE, source ports P)".
    /// The drops came from another source port, or from a role-less sender to an address the
    /// flow does not serve.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_force: Vec<String>,
}

#[derive(Serialize)]
pub struct SourceCount {
    pub src: IpAddr,
    pub packets: u64,
}

/// A change to try: options to set and source addresses to add to a role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Fix {
    set: Vec<(String, OptValue)>,
    bind: Option<String>,
}

impl Fix {
    fn cost(&self) -> usize {
        self.set.len() + usize::from(self.bind.is_some())
    }
}

/// A tuple a change admits, with the flow that admits it.
struct Admitted {
    tuple: Tuple,
    packets: u64,
    flow: FlowInfo,
}

fn analyse(base: &Loaded, drops: &Drops, top: usize, dir: &Path) -> Result<Report> {
    let judge = Judge::new(&base.policy)?;
    let mut tuples: Vec<(Tuple, u64)> = drops.tuples.iter().map(|(t, n)| (*t, *n)).collect();
    tuples.sort();
    let (mut admitted, mut open) = (Vec::new(), Vec::new());
    let mut forbidden: BTreeMap<usize, Vec<(Tuple, u64)>> = BTreeMap::new();
    let mut other = drops.other.clone();
    for (t, n) in tuples {
        let d = judge.decide(Dir::In, &t.packet());
        match (d.allow, d.reason.name(), d.flow) {
            (true, ..) => admitted.push((t, n)),
            (false, "deny_flow", Some(slot)) => forbidden.entry(slot).or_default().push((t, n)),
            (false, "no_flow", _) => open.push((t, n)),
            (false, reason, _) => *other.entry(reason.to_owned()).or_default() += n,
        }
    }
    let mut switched_off = single_options(base, &open)?;
    let done: HashSet<Tuple> = switched_off.iter().flat_map(|(_, v)| v.iter().map(|a| a.tuple)).collect();
    open.retain(|(t, _)| !done.contains(t));
    let (multi, unbound) = flow_fixes(base, &open)?;
    let done: HashSet<Tuple> = multi.iter().chain(&unbound).flat_map(|(_, v)| v.iter().map(|a| a.tuple)).collect();
    open.retain(|(t, _)| !done.contains(t));
    switched_off.extend(multi);
    let others = load_all_catalogs(dir).ok();
    let selected: Vec<&str> = base.policy.catalogs.iter().map(|c| c.name.as_str()).collect();
    let protected: Vec<&str> = base.policy.protected().map(|r| r.id.as_str()).collect();
    let hint = |proto: u8, port: u16| {
        (documented_by(others.as_deref().unwrap_or(&[]), &selected, &protected, proto, port), in_force(&base.policy, proto, port))
    };
    Ok(Report {
        events: drops.events,
        packets: drops.packets(),
        suppressed: drops.suppressed,
        tuples: drops.tuples.len(),
        max_tuples: drops.max,
        cap_reached: drops.over_cap > 0,
        not_analysed: drops.over_cap,
        admitted: group(&admitted),
        switched_off: suggestions(base, &switched_off)?,
        unbound: suggestions(base, &unbound)?,
        forbidden: forbidden
            .into_iter()
            .map(|(slot, v)| Forbidden {
                flow: FlowRef::new(&judge.tables.flows[slot]),
                packets: v.iter().map(|x| x.1).sum(),
                sources: sources(&v),
                top_ports: top_ports(&v, top, &|_, _| Default::default()),
                top_sources: top_sources(&v, top),
            })
            .collect(),
        undocumented: Undocumented {
            packets: open.iter().map(|x| x.1).sum(),
            tuples: open.len(),
            sources: sources(&open),
            top_ports: top_ports(&open, top, &hint),
            top_sources: top_sources(&open, top),
        },
        other,
    })
}

fn group(v: &[(Tuple, u64)]) -> Group {
    Group { packets: v.iter().map(|x| x.1).sum(), tuples: v.len(), sources: sources(v) }
}

fn sources(v: &[(Tuple, u64)]) -> usize {
    v.iter().map(|x| x.0.src).collect::<HashSet<_>>().len()
}

/// Hints for a port: (flows of other catalogs, flows in force) documenting it.
type Hint<'a> = &'a dyn Fn(u8, u16) -> (Vec<String>, Vec<String>);

fn top_ports(v: &[(Tuple, u64)], top: usize, hint: Hint) -> Vec<PortCount> {
    let mut m: BTreeMap<(u8, u16), (u64, HashSet<IpAddr>)> = BTreeMap::new();
    for (t, n) in v {
        let e = m.entry((t.proto, t.dport)).or_default();
        e.0 += n;
        e.1.insert(t.src);
    }
    let mut rows: Vec<_> = m.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .take(top)
        .map(|((proto, dport), (packets, srcs))| {
            let (documented_by, in_force) = hint(proto, dport);
            PortCount {
                proto: crate::classify::judge::proto_name(proto),
                dport,
                packets,
                sources: srcs.len(),
                documented_by,
                in_force,
            }
        })
        .collect()
}

fn top_sources(v: &[(Tuple, u64)], top: usize) -> Vec<SourceCount> {
    let mut m: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for (t, n) in v {
        *m.entry(t.src).or_default() += n;
    }
    let mut rows: Vec<_> = m.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.into_iter().take(top).map(|(src, packets)| SourceCount { src, packets }).collect()
}

/// Inbound flows in force on this protocol and port, with the senders they take.
fn in_force(p: &Policy, proto: u8, port: u16) -> Vec<String> {
    let mut out: Vec<String> = p
        .flows
        .iter()
        .filter(|f| !f.deny && f.proto == proto && f.dport.iter().any(|&(a, b)| (a..=b).contains(&port)))
        .map(|f| {
            format!("{} (from {}, source ports {})", f.info.id, p.roles[f.from].id, crate::policy::ports::format_ranges(&f.sport))
        })
        .collect();
    out.dedup();
    out.truncate(3);
    out
}

/// Flows of catalogs the site does not select, to a role it protects, whose destination ports
/// (at the defaults) hold `port`: a hint that another document covers the traffic.
fn documented_by(all: &[crate::policy::Catalog], selected: &[&str], protected: &[&str], proto: u8, port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for c in all.iter().filter(|c| !selected.contains(&c.name.as_str())) {
        let values = c.default_values();
        for f in c.flows.iter().filter(|f| protected.contains(&f.to.as_str())) {
            let ports = f.dport().resolve(&values);
            if f.protocols.iter().any(|p| p.number() == proto) && ports.iter().any(|&(a, b)| (a..=b).contains(&port)) {
                out.push(format!("{}/{}", c.name, f.id));
            }
        }
    }
    out.truncate(3);
    out
}

/// The site with `fix` applied (the role bound to `hosts` in addition), resolved.
fn apply(base: &Loaded, fix: &Fix, hosts: &[IpAddr]) -> Result<Policy> {
    let mut site = base.site.clone();
    for (name, v) in &fix.set {
        match site.options.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = v.clone(),
            None => site.options.0.push((name.clone(), v.clone())),
        }
    }
    if let Some(role) = &fix.bind {
        let host = |ip: &IpAddr| Cidr::parse(&ip.to_string()).expect("an address is a CIDR");
        let add: Vec<Cidr> = hosts.iter().map(host).collect();
        match site.roles.iter_mut().find(|(r, _)| r == role) {
            Some(slot) => slot.1.extend(add),
            None => site.roles.push((role.clone(), add)),
        }
    }
    Ok(Policy::resolve(&site, base.policy.catalogs.clone())?)
}

/// Every (option, other value) of the selected catalogs: each value of an enum or boolean; for an
/// integer, the values `when` clauses name and those a `{base, count}` port spec needs to reach a
/// dropped port.
fn alternatives(base: &Loaded, dports: &BTreeSet<u16>) -> Vec<(String, OptValue)> {
    let cats = &base.policy.catalogs;
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in cats.iter().flat_map(|c| &c.options) {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let decls: Vec<_> = cats.iter().filter_map(|c| c.options.iter().find(|(n, _)| n == name).map(|(_, d)| (c, d))).collect();
        let (c0, d0) = decls[0];
        let current = OptionValues::resolve(&c0.options, &base.site.options.0).get(name).cloned();
        let values = match &d0.kind {
            OptionKind::Int { min, max } => int_candidates(base, name, *min, *max, dports),
            k => k.values().unwrap_or_default(),
        };
        for v in values {
            let fits = decls.iter().all(|(_, d)| d.kind.check(&v).is_ok());
            if fits && Some(&v) != current.as_ref() && !out.contains(&(name.to_owned(), v.clone())) {
                out.push((name.to_owned(), v));
            }
        }
    }
    out
}

fn int_candidates(base: &Loaded, name: &str, min: i64, max: i64, dports: &BTreeSet<u16>) -> Vec<OptValue> {
    let mut v: BTreeSet<i64> = BTreeSet::new();
    for f in base.policy.catalogs.iter().flat_map(|c| &c.flows) {
        for (n, accepted) in &f.when.0 {
            if n == name {
                v.extend(accepted.iter().filter_map(|x| if let OptValue::Int(i) = x { Some(*i) } else { None }));
            }
        }
        for spec in [f.dport(), f.sport()] {
            for b in count_bases(spec, name) {
                v.extend(dports.iter().filter(|&&p| p >= b).map(|&p| i64::from(p - b) + 1));
            }
        }
    }
    v.into_iter().filter(|n| (min..=max).contains(n)).take(16).map(OptValue::Int).collect()
}

/// The bases of the `{base, count: name}` parts of a port spec.
fn count_bases(s: &PortSpec, name: &str) -> Vec<u16> {
    match s {
        PortSpec::Count { base, option } if option == name => vec![*base],
        PortSpec::List(v) => v.iter().flat_map(|x| count_bases(x, name)).collect(),
        PortSpec::By { cases, .. } => cases.iter().flat_map(|(_, x)| count_bases(x, name)).collect(),
        _ => Vec::new(),
    }
}

/// Inbound flows of `p` that `base` lacks or has with other ports or addresses.
fn new_flows<'p>(base: &Policy, p: &'p Policy) -> Vec<&'p crate::policy::Flow> {
    let old: HashMap<Key, &crate::policy::Flow> = base.flows.iter().map(|f| (f.info.key(), f)).collect();
    p.flows.iter().filter(|f| old.get(&f.info.key()).is_none_or(|o| differs(base, o, p, f))).collect()
}

fn differs(a: &Policy, fa: &crate::policy::Flow, b: &Policy, fb: &crate::policy::Flow) -> bool {
    let cidrs = |p: &Policy, r: usize| p.roles[r].cidrs.clone();
    fa.dport != fb.dport
        || fa.sport != fb.sport
        || fa.deny != fb.deny
        || cidrs(a, fa.from) != cidrs(b, fb.from)
        || cidrs(a, fa.to) != cidrs(b, fb.to)
}

/// Keys of the flows of direction `d` both policies have, with other ports or addresses.
fn changed_flows(d: Dir, a: &Policy, b: &Policy) -> Vec<Key> {
    let old: HashMap<Key, &crate::policy::Flow> = d.flows(a).iter().map(|f| (f.info.key(), f)).collect();
    d.flows(b).iter().filter(|f| old.get(&f.info.key()).is_some_and(|o| differs(a, o, b, f))).map(|f| f.info.key()).collect()
}

/// The tuples each single option change admits.
fn single_options(base: &Loaded, open: &[(Tuple, u64)]) -> Result<Found> {
    let dports: BTreeSet<u16> = open.iter().map(|(t, _)| t.dport).collect();
    let mut out = Vec::new();
    for (name, value) in alternatives(base, &dports) {
        let fix = Fix { set: vec![(name, value)], bind: None };
        let policy = apply(base, &fix, &[])?;
        let added = new_flows(&base.policy, &policy);
        // Only tuples an added flow could match are worth a compile.
        let maybe: Vec<&(Tuple, u64)> = open
            .iter()
            .filter(|(t, _)| added.iter().any(|f| f.proto == t.proto && f.dport.iter().any(|&(a, b)| (a..=b).contains(&t.dport))))
            .collect();
        if maybe.is_empty() {
            continue;
        }
        let admitted = admitted_by(&Judge::new(&policy)?, maybe.into_iter().copied());
        if !admitted.is_empty() {
            out.push((fix, admitted));
        }
    }
    Ok(out)
}

/// The tuples `j` admits through a flow.
fn admitted_by(j: &Judge, tuples: impl Iterator<Item = (Tuple, u64)>) -> Vec<Admitted> {
    tuples
        .filter_map(|(tuple, packets)| {
            let d = j.decide(Dir::In, &tuple.packet());
            let flow = j.info(Dir::In, d.flow)?.clone();
            (d.allow && d.reason.name() == "flow").then_some(Admitted { tuple, packets, flow })
        })
        .collect()
}

/// The changes that let a catalog flow admit a tuple: the options of its `when` that do not
/// hold, and its source role when that has no address covering the sender. Cheapest first.
fn candidate_fixes(base: &Loaded, t: &Tuple) -> Vec<Fix> {
    let p = &base.policy;
    let role = |id: &str| p.roles.iter().find(|r| r.id == id);
    let mut out: Vec<Fix> = Vec::new();
    for c in &p.catalogs {
        let values = OptionValues::resolve(&c.options, &base.site.options.0);
        for f in c.flows.iter().filter(|f| f.action == Action::Allow && f.protocols.iter().any(|x| x.number() == t.proto)) {
            if !role(&f.to).is_some_and(|r| r.protected && r.cidrs.iter().any(|x| x.contains_ip(t.dst))) {
                continue;
            }
            let mut v = values.clone();
            let mut set = Vec::new();
            for (name, accepted) in &f.when.0 {
                if !v.get(name).is_some_and(|x| accepted.contains(x)) {
                    set.push((name.clone(), accepted[0].clone()));
                    v.0.insert(name.clone(), accepted[0].clone());
                }
            }
            let within = |r: &[(u16, u16)], x: u16| r.iter().any(|&(a, b)| (a..=b).contains(&x));
            if !within(&f.dport().resolve(&v), t.dport) || !within(&f.sport().resolve(&v), t.sport) {
                continue;
            }
            let covered = role(&f.from).is_some_and(|r| r.cidrs.iter().any(|x| x.contains_ip(t.src)));
            let fix = Fix { set, bind: (!covered).then(|| f.from.clone()) };
            if fix.cost() > 0 && !out.contains(&fix) {
                out.push(fix);
            }
        }
    }
    out.sort_by_key(Fix::cost);
    out.truncate(3);
    out
}

type Found = Vec<(Fix, Vec<Admitted>)>;

/// Multi-option and binding fixes for the tuples no single option admits, each confirmed by
/// compiling it: (switched off, unbound).
fn flow_fixes(base: &Loaded, open: &[(Tuple, u64)]) -> Result<(Found, Found)> {
    let candidates: Vec<(Tuple, u64, Vec<Fix>)> =
        open.iter().map(|&(t, n)| (t, n, candidate_fixes(base, &t))).filter(|x| !x.2.is_empty()).collect();
    let mut confirmed: BTreeMap<Fix, Vec<Admitted>> = BTreeMap::new();
    let mut done: HashSet<Tuple> = HashSet::new();
    for round in 0..3 {
        let mut groups: BTreeMap<Fix, Vec<(Tuple, u64)>> = BTreeMap::new();
        for (t, n, fixes) in &candidates {
            if let Some(f) = fixes.get(round).filter(|_| !done.contains(t)) {
                groups.entry(f.clone()).or_default().push((*t, *n));
            }
        }
        for (fix, tuples) in groups {
            let hosts: Vec<IpAddr> = tuples.iter().map(|x| x.0.src).collect::<BTreeSet<_>>().into_iter().collect();
            let admitted = admitted_by(&Judge::new(&apply(base, &fix, &hosts)?)?, tuples.into_iter());
            done.extend(admitted.iter().map(|a| a.tuple));
            if !admitted.is_empty() {
                confirmed.entry(fix).or_default().extend(admitted);
            }
        }
    }
    let (unbound, off): (Found, Found) = confirmed.into_iter().partition(|(f, _)| f.bind.is_some());
    Ok((off, unbound))
}

/// The prefixes to bind for these senders: a /24 (IPv6: /64) holding two or more of them, else
/// each address.
fn prefixes(srcs: &BTreeSet<IpAddr>) -> Vec<Cidr> {
    let net = |ip: &IpAddr| {
        let c = Cidr::parse(&ip.to_string()).expect("an address is a CIDR");
        let len = if c.v6 { 64 } else { 24 };
        Cidr { addr: c.addr & mask(len, c.width()), len, ..c }
    };
    let mut by_net: BTreeMap<Cidr, Vec<&IpAddr>> = BTreeMap::new();
    for ip in srcs {
        by_net.entry(net(ip)).or_default().push(ip);
    }
    by_net
        .into_iter()
        .flat_map(|(n, ips)| match ips.len() {
            1 => vec![Cidr::parse(&ips[0].to_string()).expect("an address is a CIDR")],
            _ => vec![n],
        })
        .collect()
}

fn suggestions(base: &Loaded, found: &Found) -> Result<Vec<Suggestion>> {
    let mut out = Vec::new();
    for (fix, admitted) in found {
        let srcs: BTreeSet<IpAddr> = admitted.iter().map(|a| a.tuple.src).collect();
        let bind: Vec<Cidr> = if fix.bind.is_some() { prefixes(&srcs) } else { Vec::new() };
        let mut flows: Vec<FlowRef> = Vec::new();
        for a in admitted {
            let f = FlowRef::new(&a.flow);
            if !flows.contains(&f) {
                flows.push(f);
            }
        }
        let hosts: Vec<IpAddr> = srcs.iter().copied().collect();
        let changed = apply(base, fix, &hosts)?;
        let keys = |p: &Policy| p.flows.iter().chain(&p.out_flows).map(|f| f.info.key()).collect::<HashSet<_>>();
        let (before, after) = (keys(&base.policy), keys(&changed));
        let admitting: HashSet<Key> = flows.iter().map(|f| (f.id.clone(), f.protocol)).collect();
        let also_changes = [Dir::In, Dir::Out]
            .iter()
            .flat_map(|&d| changed_flows(d, &base.policy, &changed))
            .filter(|k| !admitting.contains(k))
            .count();
        let example = admitted.iter().max_by_key(|a| (a.packets, std::cmp::Reverse(a.tuple))).expect("admits one at least");
        out.push(Suggestion {
            set: fix.set.iter().map(|(n, v)| (n.clone(), v.to_json())).collect(),
            bind: fix.bind.iter().map(|r| (r.clone(), bind.iter().map(Cidr::to_string).collect())).collect(),
            flows,
            packets: admitted.iter().map(|a| a.packets).sum(),
            tuples: admitted.len(),
            sources: srcs.len(),
            example: packet_json(Dir::In, &example.tuple.packet()),
            also_adds: after.difference(&before).filter(|k| !admitting.contains(*k)).count(),
            also_removes: before.difference(&after).count(),
            also_changes,
            lines: lines(base, fix, &bind),
        });
    }
    // Most traffic first; among alternatives, the change with the fewest side effects.
    let side = |x: &Suggestion| x.also_adds + x.also_removes + x.also_changes;
    out.sort_by(|a, b| b.packets.cmp(&a.packets).then(side(a).cmp(&side(b))).then(a.lines.cmp(&b.lines)));
    Ok(out)
}

/// The YAML to put in the site: options to set, and a role's binding with the new CIDRs.
fn lines(base: &Loaded, fix: &Fix, bind: &[Cidr]) -> String {
    let mut s = String::new();
    if !fix.set.is_empty() {
        s.push_str("options:\n");
        for (n, v) in &fix.set {
            s.push_str(&format!("  {n}: {}\n", yaml_value(v)));
        }
    }
    if let Some(role) = &fix.bind {
        let mut all: Vec<Cidr> = base.site.roles.iter().find(|(r, _)| r == role).map(|(_, c)| c.clone()).unwrap_or_default();
        // What a new prefix covers needs no entry of its own.
        all.retain(|c| !bind.iter().any(|b| b != c && b.contains(c)));
        all.extend(bind.iter().filter(|c| !all.contains(c)).copied().collect::<Vec<_>>());
        let quoted: Vec<String> = all.iter().map(|c| if c.v6 { format!("\"{c}\"") } else { c.to_string() }).collect();
        s.push_str(&format!("roles:\n  {role}: [{}]\n", quoted.join(", ")));
    }
    s
}

fn yaml_value(v: &OptValue) -> String {
    match v {
        // Enum values that YAML would read as numbers or booleans stay strings.
        OptValue::Str(s) if s.parse::<f64>().is_ok() || ["true", "false", "yes", "no"].contains(&s.as_str()) => {
            format!("\"{s}\"")
        }
        v => v.to_string(),
    }
}

impl Report {
    pub fn render(&self, site: &str) -> String {
        let mut s = format!(
            "suggest: {} ({}, {} distinct tuples) against {site}\n",
            plural(self.events, "drop event"),
            plural(self.packets, "packet"),
            self.tuples
        );
        if self.suppressed > 0 {
            s.push_str(&format!("  {} more drops were not reported by the kernel (rate limit)\n", self.suppressed));
        }
        if self.cap_reached {
            s.push_str(&format!(
                "  the cap of {} distinct tuples was reached: {} packets of further tuples were counted, not analysed (--max-tuples)\n",
                self.max_tuples, self.not_analysed
            ));
        }
        if self.admitted.packets > 0 {
            s.push_str(&format!(
                "admitted by the site now: {} ({} distinct tuples, {})\n",
                plural(self.admitted.packets, "packet"),
                self.admitted.tuples,
                plural(self.admitted.sources as u64, "source")
            ));
        }
        render_suggestions(&mut s, "documented but switched off", &self.switched_off);
        render_suggestions(&mut s, "documented but unbound", &self.unbound);
        if !self.forbidden.is_empty() {
            s.push_str("documented as forbidden:\n");
            for f in &self.forbidden {
                s.push_str(&format!(
                    "  {} {} in {}, table \"{}\": {} from {}\n      ports {}\n      sources {}\n",
                    f.flow.id,
                    f.flow.protocol,
                    f.flow.catalog,
                    f.flow.table,
                    plural(f.packets, "packet"),
                    plural(f.sources as u64, "source"),
                    ports_text(&f.top_ports),
                    sources_text(&f.top_sources)
                ));
            }
        }
        let u = &self.undocumented;
        if u.packets > 0 {
            s.push_str(&format!(
                "documented in none of the selected catalogs: {} from {}\n",
                plural(u.packets, "packet"),
                plural(u.sources as u64, "source")
            ));
            s.push_str(&format!("  top destination ports: {}\n", ports_text(&u.top_ports)));
            s.push_str(&format!("  top sources: {}\n", sources_text(&u.top_sources)));
        }
        if !self.other.is_empty() {
            let parts: Vec<String> = self.other.iter().map(|(r, n)| format!("{r} {n}")).collect();
            s.push_str(&format!("not judged by a flow: {}\n", parts.join(", ")));
        }
        if self.switched_off.is_empty() && self.unbound.is_empty() {
            s.push_str("no change to the site would admit these drops through a documented flow\n");
        }
        s
    }
}

fn render_suggestions(s: &mut String, title: &str, v: &[Suggestion]) {
    if v.is_empty() {
        return;
    }
    s.push_str(&format!("{title}:\n"));
    for x in v {
        let mut what: Vec<String> = x.bind.iter().map(|(r, c)| format!("bind {} to role {r}", shorten(c))).collect();
        what.extend(x.set.iter().map(|(n, v)| format!("set {n}: {}", v.as_str().map_or(v.to_string(), str::to_owned))));
        let together = if x.set.len() + x.bind.len() > 1 { " (together)" } else { "" };
        s.push_str(&format!(
            "  {}{together}: {} from {}, e.g. {}\n",
            what.join(" and "),
            plural(x.packets, "packet"),
            plural(x.sources as u64, "source"),
            example_text(&x.example)
        ));
        for f in &x.flows {
            s.push_str(&format!("      admitted by {} {} in {}, table \"{}\"\n", f.id, f.protocol, f.catalog, f.table));
        }
        if x.also_adds + x.also_removes + x.also_changes > 0 {
            s.push_str(&format!(
                "      the change also adds {}, removes {} and changes {} (dataplane diff lists them)\n",
                plural(x.also_adds as u64, "other flow"),
                x.also_removes,
                x.also_changes
            ));
        }
        s.push_str("      add to the site:\n");
        for l in x.lines.lines() {
            match x.bind.values().next() {
                Some(c) if c.len() > SHOWN && l.contains(&c[SHOWN]) => s.push_str(&format!(
                    "        {}, ...] ({} new CIDRs: --json has them)\n",
                    l.split(&c[SHOWN]).next().unwrap_or(l).trim_end_matches([',', ' ']),
                    c.len()
                )),
                _ => s.push_str(&format!("        {l}\n")),
            }
        }
    }
}

/// CIDRs shown in the text form of a binding; `--json` has them all.
const SHOWN: usize = 8;

fn shorten(c: &[String]) -> String {
    match c.len() {
        n if n > SHOWN => format!("{} and {} more", c[..SHOWN].join(", "), n - SHOWN),
        _ => c.join(", "),
    }
}

fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn example_text(v: &Value) -> String {
    let ip = |k: &str| v[k].as_str().and_then(|s| s.parse().ok());
    let port = |k: &str| v[k].as_u64().unwrap_or(0) as u16;
    let proto = match v["proto"].as_str() {
        Some("tcp") => IPPROTO_TCP,
        _ => IPPROTO_UDP,
    };
    match (ip("src"), ip("dst")) {
        (Some(src), Some(dst)) => {
            render_packet(&Packet { src, dst, proto, sport: port("sport"), dport: port("dport"), icmp_type: None, quote: None })
        }
        _ => v.to_string(),
    }
}

fn ports_text(v: &[PortCount]) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|p| {
            let proto = p.proto.as_str().map_or(p.proto.to_string(), str::to_owned);
            let mut doc = String::new();
            if !p.in_force.is_empty() {
                doc.push_str(&format!(", in force for other senders: {}", p.in_force.join(", ")));
            }
            if !p.documented_by.is_empty() {
                doc.push_str(&format!(", documented by {}", p.documented_by.join(", ")));
            }
            format!("{proto} {} ({}, {}{doc})", p.dport, plural(p.packets, "packet"), plural(p.sources as u64, "source"))
        })
        .collect();
    parts.join("; ")
}

fn sources_text(v: &[SourceCount]) -> String {
    v.iter().map(|s| format!("{} ({})", s.src, s.packets)).collect::<Vec<_>>().join(", ")
}
