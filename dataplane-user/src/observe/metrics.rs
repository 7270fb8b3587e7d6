//! `dataplane run --metrics ADDR:PORT`: Prometheus metrics at `http://ADDR:PORT/metrics`.
//!
//! Every scrape reads the counters from the maps the running program pinned (the same read as
//! `dataplane stats`, see [`Stats::read_pinned`]), so the two agree for the same moment. What the
//! maps cannot tell (interfaces, policy generation and hash, reloads, monitor mode) comes from
//! [`MetricsInfo`], which `run` shares with the server and updates on a reload.
//!
//! The HTTP side is a minimal HTTP/1.1 responder: one request per connection (`Connection:
//! close`), `GET` or `HEAD /metrics`, 404 for any other path.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use dataplane_common::CONFIG_MONITOR;
use log::{debug, warn};

use crate::{
    compile::tables::{FlowInfo, Tables},
    kernel::attach::Attached,
    observe::stats::Stats,
};

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at the same time; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;

/// The policy being enforced; replaced as a whole on a reload.
#[derive(Clone, Debug, Default)]
pub struct PolicyInfo {
    /// The site file, as given to `run`.
    pub site: String,
    /// Generation number of the loaded policy (1 for the first, +1 per successful reload).
    pub generation: u64,
    /// Hash of the compiled policy (see [`policy_hash`]).
    pub hash: String,
    /// Counts what would be dropped, drops nothing.
    pub monitor: bool,
    /// Flow of each slot of the inbound counters.
    pub flows: Vec<FlowInfo>,
    /// Outbound flow of each slot of the outbound and reply counters.
    pub outbound: Vec<FlowInfo>,
}

impl PolicyInfo {
    /// From the tables in force (`Enforcer::tables`: stable counter slots, generation and
    /// monitor flag set).
    pub fn new(site: &Path, tables: &Tables) -> Self {
        Self {
            site: site.display().to_string(),
            generation: u64::from(tables.config.generation),
            hash: policy_hash(tables),
            monitor: tables.config.flags & CONFIG_MONITOR != 0,
            flows: tables.flows.clone(),
            outbound: tables.outbound.as_ref().map(|o| o.flows.clone()).unwrap_or_default(),
        }
    }
}

/// What the metrics report besides the pinned maps. Cheap to clone: `run` keeps a clone and
/// updates it, the server reads it at every scrape.
#[derive(Clone)]
pub struct MetricsInfo {
    /// (interface, XDP mode used: "native" or "skb").
    pub interfaces: Vec<(String, String)>,
    /// Replace it after every successful reload ([`MetricsInfo::set_policy`]). A scrape holds
    /// the read lock while it reads the maps. Counter slots are stable across reloads, so a
    /// scrape between the switch and the update is still labelled right (it only misses the
    /// slots of flows the reload added, for that moment).
    pub policy: Arc<RwLock<PolicyInfo>>,
    /// Successful reloads.
    pub reloads: Arc<AtomicU64>,
    /// Reloads that failed (the previous policy stayed in force).
    pub reload_failures: Arc<AtomicU64>,
    /// Highest evictions count reported, to keep that counter monotonic (see `scrape`).
    evictions: Arc<Mutex<EvictionFloor>>,
}

#[derive(Default)]
struct EvictionFloor {
    inserts: u64,
    evictions: u64,
}

impl MetricsInfo {
    /// `modes`: the XDP mode used on each interface, as `Enforcer::start` returns them.
    pub fn new(interfaces: &[String], modes: &[Attached], policy: PolicyInfo) -> Self {
        Self {
            interfaces: interfaces
                .iter()
                .enumerate()
                .map(|(i, name)| (name.clone(), modes.get(i).map_or("unknown", |m| m.as_str()).to_string()))
                .collect(),
            policy: Arc::new(RwLock::new(policy)),
            reloads: Arc::default(),
            reload_failures: Arc::default(),
            evictions: Arc::default(),
        }
    }

    /// Replaces the policy in force (after a successful reload).
    pub fn set_policy(&self, policy: PolicyInfo) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }
}

pub use crate::compile::hash::policy_hash;

/// Reads the pinned maps and renders every metric (what `GET /metrics` returns).
pub fn scrape(info: &MetricsInfo) -> Result<String> {
    let policy = info.policy.read().unwrap_or_else(|e| e.into_inner());
    let mut stats = Stats::read_pinned(&policy.flows, &policy.outbound)?;
    // Evictions are derived (inserts - removals - entries) from values read one after the other,
    // so under traffic they can come out a little high and go down at the next scrape, which
    // Prometheus would take for a counter reset. Report the highest seen until inserts go down
    // (the program and its counters were replaced).
    {
        let mut floor = info.evictions.lock().unwrap_or_else(|e| e.into_inner());
        if stats.conntrack.inserts < floor.inserts {
            *floor = EvictionFloor::default();
        }
        floor.inserts = stats.conntrack.inserts;
        floor.evictions = floor.evictions.max(stats.conntrack.evictions);
        stats.conntrack.evictions = floor.evictions;
    }
    Ok(render(&stats, info, &policy))
}

/// The text exposition of `stats` and `info` (`policy`: the policy `stats` was read with).
pub fn render(stats: &Stats, info: &MetricsInfo, policy: &PolicyInfo) -> String {
    let mut out = String::with_capacity(16 * 1024);

    let flow_help = "on each flow of the policy. direction: in = inbound flows (to protected servers), \
                     out = sent by protected servers on outbound flows, reply = replies admitted on outbound flows.";
    let mut packets = Family::new("dataplane_flow_packets_total", "counter", &format!("Packets {flow_help}"));
    let mut bytes = Family::new("dataplane_flow_bytes_total", "counter", &format!("Bytes {flow_help}"));
    let flow_labels = |f: &FlowInfo, direction: &str| {
        labels(&[
            ("direction", direction),
            ("flow", &f.id),
            ("catalog", &f.catalog),
            ("from", &f.from),
            ("to", &f.to),
            ("protocol", f.protocol.name()),
            ("action", f.action.name()),
        ])
    };
    for f in &stats.flows {
        let l = flow_labels(&f.flow, "in");
        packets.add(&l, f.packets);
        bytes.add(&l, f.bytes);
    }
    for f in &stats.outbound {
        let l = flow_labels(&f.flow, "out");
        packets.add(&l, f.packets);
        bytes.add(&l, f.bytes);
        let l = flow_labels(&f.flow, "reply");
        packets.add(&l, f.reply_packets);
        bytes.add(&l, f.reply_bytes);
    }
    packets.write(&mut out);
    bytes.write(&mut out);

    let mut packets = Family::new("dataplane_packets_total", "counter", "Packets the program judged, by verdict and reason.");
    let mut bytes = Family::new("dataplane_bytes_total", "counter", "Bytes the program judged, by verdict and reason.");
    for r in &stats.reasons {
        let l = labels(&[("verdict", r.verdict), ("reason", r.reason)]);
        packets.add(&l, r.packets);
        bytes.add(&l, r.bytes);
    }
    packets.write(&mut out);
    bytes.write(&mut out);

    let ct = &stats.conntrack;
    single(
        &mut out,
        "dataplane_conntrack_entries",
        "gauge",
        "Connections tracked now (opened by protected servers).",
        ct.entries,
    );
    single(&mut out, "dataplane_conntrack_inserts_total", "counter", "Connections entered into the tracking table.", ct.inserts);
    single(
        &mut out,
        "dataplane_conntrack_removals_total",
        "counter",
        "Tracked connections removed (closed or expired).",
        ct.removals,
    );
    single(
        &mut out,
        "dataplane_conntrack_evictions_total",
        "counter",
        "Tracked connections the full table dropped to make room.",
        ct.evictions,
    );
    single(
        &mut out,
        "dataplane_conntrack_refused_total",
        "counter",
        "Inbound packets that looked like replies to a tracked connection but were not.",
        ct.refused,
    );

    let mut capacity = Family::new(
        "dataplane_conntrack_capacity",
        "gauge",
        "Entries the connection-tracking table of each IP version can hold (site option conntrack-size).",
    );
    let mut fill = Ratios::new(
        "dataplane_conntrack_fill_ratio",
        "Tracked connections over capacity, per IP version (0 to 1); when full, the least recently used are evicted.",
    );
    for (family, t) in [("ipv4", &ct.ipv4), ("ipv6", &ct.ipv6)] {
        let l = labels(&[("family", family)]);
        capacity.add(&l, t.capacity);
        fill.add(&l, t.fill);
    }
    capacity.write(&mut out);
    fill.write(&mut out);
    let frags = &stats.fragments;
    single(
        &mut out,
        "dataplane_fragments_entries",
        "gauge",
        "Datagrams in the fragment table (their first fragment passed).",
        frags.entries,
    );
    single(&mut out, "dataplane_fragments_capacity", "gauge", "Datagrams the fragment table can hold.", frags.capacity);
    let mut fill = Ratios::new(
        "dataplane_fragments_fill_ratio",
        "Fragment table entries over capacity (0 to 1); when full, the oldest datagrams are forgotten.",
    );
    fill.add("", frags.fill);
    fill.write(&mut out);

    single(&mut out, "dataplane_reloads_total", "counter", "Successful policy reloads.", info.reloads.load(Ordering::Relaxed));
    single(
        &mut out,
        "dataplane_reload_failures_total",
        "counter",
        "Policy reloads that failed (the previous policy stayed in force).",
        info.reload_failures.load(Ordering::Relaxed),
    );
    single(&mut out, "dataplane_policy_generation", "gauge", "Generation number of the policy in force.", policy.generation);
    let mut f = Family::new("dataplane_policy_info", "gauge", "The policy in force: site file and hash of the compiled policy.");
    f.add(&labels(&[("site", &policy.site), ("hash", &policy.hash)]), 1);
    f.write(&mut out);
    single(
        &mut out,
        "dataplane_monitor_mode",
        "gauge",
        "1 when drops are only counted (monitor mode), 0 when enforced.",
        u64::from(policy.monitor),
    );
    let mut f =
        Family::new("dataplane_interface_info", "gauge", "Interfaces the program is attached to, with the XDP mode used.");
    for (name, mode) in &info.interfaces {
        f.add(&labels(&[("interface", name), ("xdp_mode", mode)]), 1);
    }
    f.write(&mut out);
    let mut f = Family::new("dataplane_build_info", "gauge", "Version of the dataplane serving these metrics.");
    f.add(&labels(&[("version", env!("CARGO_PKG_VERSION"))]), 1);
    f.write(&mut out);
    out
}

/// One metric family; samples with the same labels are summed (two slots can carry the same
/// labels, and Prometheus rejects duplicate series).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: String,
    samples: Vec<(String, u64)>,
    index: std::collections::HashMap<String, usize>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &str) -> Self {
        Self { name, kind, help: help.to_string(), samples: vec![], index: Default::default() }
    }

    fn add(&mut self, labels: &str, value: u64) {
        match self.index.get(labels) {
            Some(&i) => self.samples[i].1 = self.samples[i].1.saturating_add(value),
            None => {
                self.index.insert(labels.to_string(), self.samples.len());
                self.samples.push((labels.to_string(), value));
            }
        }
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{labels} {value}", self.name);
        }
    }
}

/// A gauge family of ratios (floating point values).
struct Ratios {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Ratios {
    fn new(name: &'static str, help: &'static str) -> Self {
        Self { name, help, samples: vec![] }
    }

    fn add(&mut self, labels: &str, value: f64) {
        self.samples.push((labels.to_string(), value));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        for (labels, value) in &self.samples {
            // Rust's shortest round-trip form (`0.5`, `0`, `1`) is valid in the text format.
            let _ = writeln!(out, "{}{labels} {value}", self.name);
        }
    }
}

fn single(out: &mut String, name: &'static str, kind: &'static str, help: &str, value: u64) {
    let mut f = Family::new(name, kind, help);
    f.add("", value);
    f.write(out);
}

/// `{a="x",b="y"}` with the values escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from("{");
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{name}=\"{}\"", escape_label(value));
    }
    s.push('}');
    s
}

/// Label values: backslash, double quote and line feed are escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text: backslash and line feed are escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The metrics listener, bound before the program is attached so that a taken port is reported
/// at once.
pub struct Server {
    listener: std::net::TcpListener,
}

impl Server {
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("metrics: listening on {addr}"))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until the future is dropped (inside a tokio runtime with IO enabled). Errors only
    /// when the listener fails; a failed scrape is a 500 for that request.
    pub async fn run(self, info: MetricsInfo) -> Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let active = Arc::new(AtomicUsize::new(0));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                // Out of descriptors and the like: the listener itself is fine, try again.
                Err(e) => {
                    warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                debug!("metrics: {peer}: too many connections, closed");
                continue;
            }
            let (info, active) = (info.clone(), active.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(stream, info).await {
                    debug!("metrics: {peer}: {e:#}");
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    /// Serves on a thread of its own, with a runtime of its own, for as long as the process
    /// lives (for callers without a tokio runtime: the lab, the tests).
    pub fn spawn(self, info: MetricsInfo) -> std::thread::JoinHandle<Result<()>> {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(self.run(info))
        })
    }
}

/// Binds `addr` and serves `GET /metrics` there until the future is dropped.
pub async fn serve(addr: SocketAddr, info: MetricsInfo) -> Result<()> {
    Server::bind(addr)?.run(info).await
}

async fn handle(mut stream: tokio::net::TcpStream, info: MetricsInfo) -> Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => anyhow::bail!("no request within {REQUEST_TIMEOUT:?}"),
    };
    let Some(head) = head else {
        return respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n", false, &[]).await;
    };
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target, version) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n", false, &[]).await;
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let head_only = method == "HEAD";
    if path != "/metrics" {
        return respond(&mut stream, "404 Not Found", "text/plain", b"not found: the metrics are at /metrics\n", head_only, &[])
            .await;
    }
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"method not allowed\n",
            false,
            &["Allow: GET, HEAD"],
        )
        .await;
    }
    // Reading the maps is a series of system calls (and a walk over the connection table):
    // off the runtime's thread, so that signals and the program's log are not held up.
    let scraped = tokio::task::spawn_blocking(move || scrape(&info)).await.context("scrape task")?;
    match scraped {
        Ok(text) => respond(&mut stream, "200 OK", CONTENT_TYPE, text.as_bytes(), head_only, &[]).await,
        Err(e) => {
            warn!("metrics: reading the pinned maps: {e:#}");
            let body = format!("reading the pinned maps: {e:#}\n");
            respond(&mut stream, "500 Internal Server Error", "text/plain", body.as_bytes(), head_only, &[]).await
        }
    }
}

/// The request line and headers; None when they are not HTTP or too long. The body (a GET has
/// none) is not read.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        stream.readable().await?;
        let n = match stream.try_read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            anyhow::bail!("connection closed before a full request");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n").or_else(|| find(&buf, b"\n\n")) {
            return Ok(String::from_utf8(buf[..end].to_vec()).ok());
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    extra: &[&str],
) -> Result<()> {
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    write_all(stream, head.as_bytes()).await?;
    if !head_only {
        write_all(stream, body).await?;
    }
    Ok(())
}

/// (tokio's io-util is not among the features the workspace enables.)
async fn write_all(stream: &tokio::net::TcpStream, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{
        counters::ConntrackStats,
        fill::TableFill,
        stats::{FlowStats, OutboundStats, ReasonStats},
    };

    fn flow(id: &str, proto: &str) -> FlowInfo {
        FlowInfo {
            id: id.into(),
            catalog: "cat".into(),
            from: "any-ip".into(),
            to: "server".into(),
            protocol: crate::policy::Proto::parse(proto).unwrap(),
            action: crate::policy::Action::Allow,
            description: "d".into(),
            document: "doc".into(),
            table: "t".into(),
        }
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(labels(&[("a", "1"), ("b", "q\"")]), r#"{a="1",b="q\""}"#);
    }

    #[test]
    fn renders_every_family_and_sums_duplicate_series() {
        let odd = flow("weird\"id\\\n", "udp");
        let stats = Stats {
            monitor: false,
            flows: vec![
                FlowStats { flow: flow("f1", "udp"), packets: 3, bytes: 300 },
                FlowStats { flow: flow("f1", "udp"), packets: 2, bytes: 200 },
                FlowStats { flow: odd, packets: 0, bytes: 0 },
            ],
            outbound: vec![OutboundStats { flow: flow("dns", "udp"), packets: 4, bytes: 40, reply_packets: 5, reply_bytes: 50 }],
            reasons: vec![ReasonStats { verdict: "drop", reason: "no_flow", packets: 7, bytes: 70 }],
            conntrack: ConntrackStats::new(TableFill::new(1, 1024), TableFill::new(0, 1024), 2, 1, 0),
            fragments: TableFill::new(2048, 8192),
            forward: None,
        };
        let policy = PolicyInfo { site: "s.yaml".into(), generation: 3, hash: "abc".into(), monitor: true, ..Default::default() };
        let info = MetricsInfo::new(&["eth0".into()], &[Attached::Native], policy.clone());
        info.reloads.store(2, Ordering::Relaxed);
        let text = render(&stats, &info, &policy);
        let l = r#"{direction="in",flow="f1",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"}"#;
        assert!(text.contains(&format!("dataplane_flow_packets_total{l} 5\n")), "{text}");
        assert!(text.contains(&format!("dataplane_flow_bytes_total{l} 500\n")));
        assert!(text.contains(r#"flow="weird\"id\\\n""#));
        assert!(text.contains(r#"dataplane_flow_packets_total{direction="reply",flow="dns",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 5"#));
        assert!(text.contains("dataplane_packets_total{verdict=\"drop\",reason=\"no_flow\"} 7\n"));
        assert!(text.contains("dataplane_reloads_total 2\n"));
        assert!(text.contains("dataplane_policy_generation 3\n"));
        assert!(text.contains("dataplane_policy_info{site=\"s.yaml\",hash=\"abc\"} 1\n"));
        assert!(text.contains("dataplane_monitor_mode 1\n"));
        assert!(text.contains("dataplane_conntrack_entries 1\n"));
        assert!(text.contains("dataplane_conntrack_capacity{family=\"ipv4\"} 1024\n"));
        assert!(text.contains("dataplane_conntrack_capacity{family=\"ipv6\"} 1024\n"));
        assert!(text.contains("dataplane_conntrack_fill_ratio{family=\"ipv4\"} 0.0009765625\n"), "{text}");
        assert!(text.contains("dataplane_conntrack_fill_ratio{family=\"ipv6\"} 0\n"));
        assert!(text.contains("dataplane_fragments_entries 2048\n"));
        assert!(text.contains("dataplane_fragments_capacity 8192\n"));
        assert!(text.contains("dataplane_fragments_fill_ratio 0.25\n"));
        assert!(text.contains("dataplane_interface_info{interface=\"eth0\",xdp_mode=\"native\"} 1\n"));
        // One HELP and one TYPE per family, every sample after its TYPE.
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "two TYPE lines for {current}");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line} outside its family {current}");
            }
        }
    }

    #[test]
    fn policy_hash_ignores_the_generation() {
        let mut t = Tables::default();
        let h = policy_hash(&t);
        t.config.generation = 9;
        t.config.flags |= CONFIG_MONITOR;
        assert_eq!(policy_hash(&t), h);
        t.flows.push(flow("x", "tcp"));
        assert_ne!(policy_hash(&t), h);
        assert_eq!(h.len(), 16);
    }
}
