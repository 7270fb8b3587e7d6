//! Policy subcommands: `catalogs`, `roles`, `flows`, `compile`, `explain`.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::classify::{Classifier, Decision, Packet, Quote, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};
use crate::compile::tables::Tables;
use crate::compile::{compile_with_summary, Summary};
use crate::policy::ports::format_ranges;
use crate::policy::{self, catalog_dir, load_all_catalogs, Catalog, Policy};
use dataplane_common::Reason;

#[derive(clap::Args, Debug, Default)]
pub struct CatalogsArgs {
    /// Print JSON: [{"name", "path", "document", ...}].
    #[arg(long)]
    pub json: bool,
    /// Catalog directory (default: $DATAPLANE_CATALOG_DIR, ./policies/catalog, the source tree's).
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Default)]
pub struct RolesArgs {
    /// Print JSON: [{"id", "aliases", "any", ...}].
    #[arg(long)]
    pub json: bool,
    /// Only the roles of this catalog.
    #[arg(long, value_name = "NAME")]
    pub catalog: Option<String>,
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Default)]
pub struct FlowsArgs {
    /// Print JSON: every flow with its ports resolved at the options' defaults.
    #[arg(long)]
    pub json: bool,
    /// Only the flows of this catalog.
    #[arg(long, value_name = "NAME")]
    pub catalog: Option<String>,
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Default)]
pub struct CompileArgs {
    /// The site file.
    #[arg(long, value_name = "FILE", required_unless_present = "synthetic")]
    pub site: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Catalog directory (default: $DATAPLANE_CATALOG_DIR, <site dir>/../catalog, ...).
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
    /// Compile a synthetic site instead: FLOWS:CIDRS[:SEED] (benchmarks).
    #[arg(long, value_name = "FLOWS:CIDRS[:SEED]", hide = true)]
    pub synthetic: Option<String>,
}

#[derive(clap::Args, Debug, Default)]
pub struct ExplainArgs {
    /// The site file.
    #[arg(long, value_name = "FILE")]
    pub site: PathBuf,
    #[arg(long, value_name = "DIR")]
    pub catalog_dir: Option<PathBuf>,
    /// One packet from flags instead of JSON lines on stdin: source address.
    #[arg(long, value_name = "IP", requires_all = ["dst", "proto"])]
    pub src: Option<IpAddr>,
    #[arg(long, value_name = "IP", requires = "src")]
    pub dst: Option<IpAddr>,
    /// tcp, udp, icmp, icmpv6 or a protocol number.
    #[arg(long, value_name = "PROTO", requires = "src")]
    pub proto: Option<String>,
    /// Source port (default 49152).
    #[arg(long, value_name = "N", requires = "src")]
    pub sport: Option<u16>,
    #[arg(long, value_name = "N", requires = "src")]
    pub dport: Option<u16>,
    /// ICMP type (default: echo request).
    #[arg(long, value_name = "N", requires = "src")]
    pub icmp_type: Option<u8>,
    /// The packet an ICMP error quotes, as the protected server sent it:
    /// `udp 192.0.2.10:5060 -> 198.51.100.7:5060` (IPv6 as `[2001:db8::1]:5060`).
    #[arg(long, value_name = "TUPLE", requires = "icmp_type")]
    pub quoted: Option<String>,
    /// `out`: the protected server sends the packet (is the connection tracked and its replies
    /// admitted?). Default `in`: a packet to a protected address.
    #[arg(long, value_enum, value_name = "DIR", requires = "src")]
    pub direction: Option<Direction>,
}

/// Which way a packet goes for `explain`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// To a protected address: the inbound policy.
    #[default]
    In,
    /// Sent by a protected server: the outbound flows (connection tracking).
    Out,
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

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn catalogs(a: CatalogsArgs) -> anyhow::Result<()> {
    let cats = catalogs_in(a.catalog_dir.as_deref(), None)?;
    let rows: Vec<Value> = cats
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "path": c.path, "document": c.document, "title": c.title,
                "roles": c.roles.len(), "flows": c.flows.len(),
                "options": c.options.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
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
}

pub fn roles(a: RolesArgs) -> anyhow::Result<()> {
    let cats = catalogs_in(a.catalog_dir.as_deref(), a.catalog.as_deref())?;
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
    }
    Ok(())
}

pub fn flows(a: FlowsArgs) -> anyhow::Result<()> {
    let cats = catalogs_in(a.catalog_dir.as_deref(), a.catalog.as_deref())?;
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
        (None, Some(site)) => load(site, a.catalog_dir.as_deref())?,
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
    println!("{}", counts_line("", &s.counts));
    match &s.outbound {
        Some(o) => {
            println!(
                "outbound: {} catalog flows from protected roles, {} slots, {} peer roles",
                o.catalog_flows, o.slots, o.peer_roles
            );
            println!("{}", counts_line("outbound ", &o.counts));
        }
        None => println!("outbound: no flow starts at a protected role (no connection is tracked)"),
    }
    println!("connection tracking: {} entries per IP version", s.conntrack_size);
    println!("{:20} {:>10} {:>12}", "MAP", "ENTRIES", "BYTES");
    for m in &s.maps {
        let note = if m.kind == "percpu_array" { " per CPU" } else { "" };
        println!("{:20} {:>10} {:>12}{note}", m.name, m.entries, m.bytes);
    }
    println!("compiled in {:.1} ms", s.elapsed.as_secs_f64() * 1000.0);
}

/// The classes, tries, policies and port tables of one direction.
fn counts_line(kind: &str, c: &crate::compile::Counts) -> String {
    format!(
        "{kind}destination classes: {}, source tries: {}, policies: {}, port tables: {} ({} of source ports)",
        c.dst_classes, c.src_tries, c.policies, c.port_tables, c.sport_tables
    )
}

fn load(site: &Path, dir: Option<&Path>) -> anyhow::Result<Policy> {
    Ok(policy::load_site_from(site, &catalog_dir(dir, Some(site)))?)
}

/// One line of `explain` output.
#[derive(Serialize)]
struct Answer<'a> {
    verdict: &'static str,
    flow: Option<&'a str>,
    reason: &'static str,
    slot: Option<usize>,
    catalog: Option<&'a str>,
    description: Option<&'a str>,
    /// "out" for an outbound packet; absent for inbound ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
}

fn answer<'a>(t: &'a Tables, d: &Decision) -> Answer<'a> {
    let info = d.flow.and_then(|s| t.flows.get(s));
    Answer {
        verdict: if d.allow { "allow" } else { "deny" },
        flow: info.map(|f| f.id.as_str()),
        reason: d.reason.name(),
        slot: d.flow,
        catalog: info.map(|f| f.catalog.as_str()),
        description: info.map(|f| f.description.as_str()),
        direction: None,
    }
}

/// The inbound and outbound classifiers of one site, and the answer for a packet either way.
struct Explainer<'a> {
    tables: &'a Tables,
    inbound: Classifier,
    outbound: Option<Classifier>,
}

impl<'a> Explainer<'a> {
    fn new(tables: &'a Tables) -> Self {
        Explainer { tables, inbound: Classifier::new(tables), outbound: Classifier::new_outbound(tables) }
    }

    fn answer(&self, p: &Packet, dir: Direction) -> Answer<'a> {
        match dir {
            Direction::In => answer(self.tables, &self.inbound.classify(p)),
            Direction::Out => {
                let d = match &self.outbound {
                    Some(c) => c.classify_outbound(p),
                    None => Decision { allow: false, flow: None, reason: Reason::DropNoFlow },
                };
                let out = self.tables.outbound.as_deref().unwrap_or(self.tables);
                let mut a = answer(out, &d);
                if d.allow {
                    a.reason = "outbound";
                }
                a.direction = Some("out");
                a
            }
        }
    }
}

pub fn explain(a: ExplainArgs) -> anyhow::Result<()> {
    let policy = load(&a.site, a.catalog_dir.as_deref())?;
    let (tables, _) = compile_with_summary(&policy)?;
    let ex = Explainer::new(&tables);
    if let (Some(src), Some(dst), Some(proto)) = (a.src, a.dst, &a.proto) {
        let proto = proto_number(&Value::from(proto.as_str()), dst)?;
        let mut p = packet(src, dst, proto, a.sport.map(u32::from), a.dport.map(u32::from), a.icmp_type.map(u32::from))?;
        p.quote = a.quoted.as_deref().map(|t| parse_quote_tuple(t, dst)).transpose().context("--quoted")?;
        let dir = a.direction.unwrap_or_default();
        println!("{}", serde_json::to_string(&ex.answer(&p, dir))?);
        return Ok(());
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut bad = 0;
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_request(&line) {
            Ok((p, dir)) => {
                writeln!(out, "{}", serde_json::to_string(&ex.answer(&p, dir))?)?;
                out.flush()?;
            }
            Err(e) => {
                bad += 1;
                eprintln!("stdin:{}: {e:#}", i + 1);
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} bad input line(s)");
    }
    Ok(())
}

/// `tcp`, `udp`, `icmp` (ICMPv6 for an IPv6 destination), `icmpv6`, or a number 0-255.
fn proto_number(v: &Value, dst: IpAddr) -> anyhow::Result<u8> {
    match v {
        Value::String(s) => match s.as_str() {
            "tcp" => Ok(IPPROTO_TCP),
            "udp" => Ok(IPPROTO_UDP),
            "icmp" if dst.is_ipv6() => Ok(IPPROTO_ICMPV6),
            "icmp" => Ok(IPPROTO_ICMP),
            "icmpv6" => Ok(IPPROTO_ICMPV6),
            _ => anyhow::bail!("field \"proto\": `{s}` is not tcp, udp, icmp, icmpv6 or a number"),
        },
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| anyhow::anyhow!("field \"proto\": {n} is not a protocol number 0-255")),
        _ => anyhow::bail!("field \"proto\" must be a string or a number"),
    }
}

fn packet(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: Option<u32>,
    dport: Option<u32>,
    icmp: Option<u32>,
) -> anyhow::Result<Packet> {
    if src.is_ipv4() != dst.is_ipv4() {
        anyhow::bail!("fields \"src\" and \"dst\" must be the same IP version");
    }
    let port = |name: &str, v: u32| u16::try_from(v).map_err(|_| anyhow::anyhow!("field \"{name}\": {v} is above 65535"));
    let ported = proto == IPPROTO_TCP || proto == IPPROTO_UDP;
    let dport = match dport {
        Some(d) => port("dport", d)?,
        None if ported => anyhow::bail!("field \"dport\" is required for tcp and udp"),
        None => 0,
    };
    let sport = port("sport", sport.unwrap_or(crate::classify::DEFAULT_SPORT as u32))?;
    let icmp_type =
        icmp.map(|t| u8::try_from(t).map_err(|_| anyhow::anyhow!("field \"icmp_type\": {t} is above 255"))).transpose()?;
    Ok(Packet { src, dst, proto, sport, dport, icmp_type, quote: None })
}

/// `--quoted`: `PROTO SRC:PORT -> DST:PORT` (IPv6 in brackets); the quoted packet's protocol
/// must be tcp or udp, of the family of `dst` (the error's destination).
fn parse_quote_tuple(s: &str, dst: IpAddr) -> anyhow::Result<Quote> {
    let bad = || anyhow::anyhow!("`{s}` is not `PROTO SRC:PORT -> DST:PORT`");
    let (proto, rest) = s.trim().split_once(' ').ok_or_else(bad)?;
    let (from, to) = rest.split_once("->").ok_or_else(bad)?;
    let at = |x: &str| -> anyhow::Result<(IpAddr, u16)> {
        let sa: std::net::SocketAddr = x.trim().parse().map_err(|_| anyhow::anyhow!("`{}` is not ADDRESS:PORT", x.trim()))?;
        Ok((sa.ip(), sa.port()))
    };
    let ((src, sport), (qdst, dport)) = (at(from)?, at(to)?);
    let proto = match proto_number(&Value::from(proto), dst)? {
        p @ (IPPROTO_TCP | IPPROTO_UDP) => p,
        _ => anyhow::bail!("the quoted packet must be tcp or udp, not `{proto}`"),
    };
    Ok(Quote { src, dst: qdst, proto, sport, dport })
}

/// The `"quoted"` object of an `explain` line: {"src"?, "dst", "proto", "sport", "dport"}, the
/// packet an ICMP error quotes (`src` defaults to the error's destination, the server).
fn quote_json(v: &Value, dst: IpAddr) -> anyhow::Result<Quote> {
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    let ip = |k: &str| -> anyhow::Result<Option<IpAddr>> {
        field(k)
            .map(|x| {
                let s = x.as_str().ok_or_else(|| anyhow::anyhow!("field \"quoted.{k}\" must be a string"))?;
                s.parse().map_err(|_| anyhow::anyhow!("field \"quoted.{k}\": `{s}` is not an IP address"))
            })
            .transpose()
    };
    let port = |k: &str| -> anyhow::Result<u16> {
        let x = field(k).ok_or_else(|| anyhow::anyhow!("field \"quoted.{k}\" is missing"))?;
        x.as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| anyhow::anyhow!("field \"quoted.{k}\" must be a port 0-65535"))
    };
    let qdst = ip("dst")?.ok_or_else(|| anyhow::anyhow!("field \"quoted.dst\" is missing"))?;
    let proto = field("proto").ok_or_else(|| anyhow::anyhow!("field \"quoted.proto\" is missing"))?;
    let proto = proto_number(proto, dst).context("in \"quoted\"")?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        anyhow::bail!("field \"quoted.proto\": the quoted packet must be tcp or udp");
    }
    Ok(Quote { src: ip("src")?.unwrap_or(dst), dst: qdst, proto, sport: port("sport")?, dport: port("dport")? })
}

/// One `explain` JSON line with its optional `"direction": "in"|"out"` (default in).
pub fn parse_request(line: &str) -> anyhow::Result<(Packet, Direction)> {
    let p = parse_line(line)?;
    let v: Value = serde_json::from_str(line).context("not valid JSON")?;
    let dir = match v.get("direction") {
        None | Some(Value::Null) => Direction::In,
        Some(Value::String(s)) if s == "in" => Direction::In,
        Some(Value::String(s)) if s == "out" => Direction::Out,
        Some(Value::String(s)) => anyhow::bail!("field \"direction\": `{s}` is not in or out"),
        Some(_) => anyhow::bail!("field \"direction\" must be a string (in or out)"),
    };
    Ok((p, dir))
}

/// One JSON line: {"src", "dst", "proto", "sport", "dport", "icmp_type"?, "quoted"?} (see
/// [`quote_json`] for "quoted", the packet an ICMP error quotes); other keys (such as
/// "direction", see [`parse_request`]) ignored.
pub fn parse_line(line: &str) -> anyhow::Result<Packet> {
    let v: Value = serde_json::from_str(line).context("not valid JSON")?;
    if !v.is_object() {
        anyhow::bail!("expected a JSON object");
    }
    let ip = |k: &str| -> anyhow::Result<IpAddr> {
        let s = v.get(k).ok_or_else(|| anyhow::anyhow!("field \"{k}\" is missing"))?;
        let s = s.as_str().ok_or_else(|| anyhow::anyhow!("field \"{k}\" must be a string"))?;
        s.parse().map_err(|_| anyhow::anyhow!("field \"{k}\": `{s}` is not an IP address"))
    };
    let num = |k: &str| -> anyhow::Result<Option<u32>> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| anyhow::anyhow!("field \"{k}\" must be a non-negative integer")),
        }
    };
    let (src, dst) = (ip("src")?, ip("dst")?);
    let proto = proto_number(v.get("proto").ok_or_else(|| anyhow::anyhow!("field \"proto\" is missing"))?, dst)?;
    let mut p = packet(src, dst, proto, num("sport")?, num("dport")?, num("icmp_type")?)?;
    if let Some(q) = v.get("quoted").filter(|q| !q.is_null()) {
        if !q.is_object() {
            anyhow::bail!("field \"quoted\" must be an object");
        }
        p.quote = Some(quote_json(q, dst)?);
    }
    Ok(p)
}
