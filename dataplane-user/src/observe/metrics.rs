//! `dataplane run --metrics ADDR:PORT`: Prometheus metrics at `http://ADDR:PORT/metrics`.
//!
//! Every scrape reads the counters from the maps the running program pinned (the same read as
//! `dataplane stats`, see [`Stats::read_pinned`]), so the two agree for the same moment. What the
//! maps cannot tell (interfaces, policy generation and hash, reloads, monitor mode) comes from
//! [`MetricsInfo`], which `run` shares with the server and updates on a reload.
//!
//! The families are encoded by the Prometheus client library (`prometheus-client`, a
//! [`Collector`] that reads the maps at every scrape) in the Prometheus text format, and served
//! by hyper: HTTP/1.1, one request per connection (`Connection: close`), `GET` or `HEAD
//! /metrics`, 404 for any other path, 500 with the reason when the maps cannot be read.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use dataplane_common::CONFIG_MONITOR;
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, TypedMetric},
    registry::Registry,
};

use crate::{
    compile::tables::{FlowInfo, Tables},
    kernel::attach::Attached,
    observe::stats::Stats,
};

/// Content type of the Prometheus text exposition format (version 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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
            outbound: tables.outbound_flows().to_vec(),
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

use super::ObserveError;

type Result<T, E = ObserveError> = std::result::Result<T, E>;

/// Reads the pinned maps and encodes every metric (what `GET /metrics` returns), in the
/// Prometheus text format ([`CONTENT_TYPE`]).
pub fn scrape(info: &MetricsInfo) -> Result<String> {
    let collector = Arc::new(PinnedMaps { info: info.clone(), failure: Mutex::default() });
    let text = encode(Box::new(collector.clone()));
    text.map_err(|_| {
        let failure = collector.failure.lock().unwrap_or_else(|e| e.into_inner()).take();
        failure.unwrap_or(ObserveError::Encode)
    })
}

/// The text exposition of what `collector` encodes.
fn encode(collector: Box<dyn Collector>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(collector);
    let mut out = String::with_capacity(16 * 1024);
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The collector of every family: reads the pinned maps when it is encoded, that is at every
/// scrape. An error reading them is kept in `failure` (the encoder's error carries no message).
struct PinnedMaps {
    info: MetricsInfo,
    failure: Mutex<Option<ObserveError>>,
}

impl std::fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedMaps")
    }
}

impl Collector for PinnedMaps {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let policy = self.info.policy.read().unwrap_or_else(|e| e.into_inner());
        match read(&self.info, &policy) {
            Ok(stats) => families(&stats, &self.info, &policy, encoder),
            Err(e) => {
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                Err(std::fmt::Error)
            }
        }
    }
}

/// The counters in the pinned maps (`policy`: the policy in force, which labels their slots).
fn read(info: &MetricsInfo, policy: &PolicyInfo) -> Result<Stats> {
    let mut stats = Stats::read_pinned(&policy.flows, &policy.outbound)?;
    // Evictions are derived (inserts - removals - entries) from values read one after the other,
    // so under traffic they can come out a little high and go down at the next scrape, which
    // Prometheus would take for a counter reset. Report the highest seen until inserts go down
    // (the program and its counters were replaced).
    let mut floor = info.evictions.lock().unwrap_or_else(|e| e.into_inner());
    if stats.conntrack.inserts < floor.inserts {
        *floor = EvictionFloor::default();
    }
    floor.inserts = stats.conntrack.inserts;
    floor.evictions = floor.evictions.max(stats.conntrack.evictions);
    stats.conntrack.evictions = floor.evictions;
    Ok(stats)
}

/// Labels of a flow's series.
type FlowLabels<'a> = [(&'static str, &'a str); 7];

fn flow_labels<'a>(f: &'a FlowInfo, direction: &'static str) -> FlowLabels<'a> {
    [
        ("direction", direction),
        ("flow", &f.id),
        ("catalog", &f.catalog),
        ("from", &f.from),
        ("to", &f.to),
        ("protocol", f.protocol.name()),
        ("action", f.action.name()),
    ]
}

/// Encodes every family of `stats` and `info` (`policy`: the policy `stats` was read with).
/// Counter names are given without `_total`: the encoder appends it.
fn families(stats: &Stats, info: &MetricsInfo, policy: &PolicyInfo, mut e: DescriptorEncoder) -> std::fmt::Result {
    let flow_help = "on each flow of the policy. direction: in = inbound flows (to protected servers), \
                     out = sent by protected servers on outbound flows, reply = replies admitted on outbound flows.";
    let mut packets = Summed::default();
    let mut bytes = Summed::default();
    for f in &stats.flows {
        packets.add(flow_labels(&f.flow, "in"), f.packets);
        bytes.add(flow_labels(&f.flow, "in"), f.bytes);
    }
    for f in &stats.outbound {
        packets.add(flow_labels(&f.flow, "out"), f.packets);
        bytes.add(flow_labels(&f.flow, "out"), f.bytes);
        packets.add(flow_labels(&f.flow, "reply"), f.reply_packets);
        bytes.add(flow_labels(&f.flow, "reply"), f.reply_bytes);
    }
    family(&mut e, "dataplane_flow_packets", &format!("Packets {flow_help}"), packets.counters())?;
    family(&mut e, "dataplane_flow_bytes", &format!("Bytes {flow_help}"), bytes.counters())?;

    let mut packets = Summed::default();
    let mut bytes = Summed::default();
    for r in &stats.reasons {
        let labels = [("verdict", r.verdict.name()), ("reason", r.reason.name())];
        packets.add(labels, r.packets);
        bytes.add(labels, r.bytes);
    }
    family(&mut e, "dataplane_packets", "Packets the program judged, by verdict and reason.", packets.counters())?;
    family(&mut e, "dataplane_bytes", "Bytes the program judged, by verdict and reason.", bytes.counters())?;

    let ct = &stats.conntrack;
    single(&mut e, "dataplane_conntrack_entries", "Connections tracked now (opened by protected servers).", gauge(ct.entries))?;
    single(&mut e, "dataplane_conntrack_inserts", "Connections entered into the tracking table.", counter(ct.inserts))?;
    single(&mut e, "dataplane_conntrack_removals", "Tracked connections removed (closed or expired).", counter(ct.removals))?;
    single(
        &mut e,
        "dataplane_conntrack_evictions",
        "Tracked connections the full table dropped to make room.",
        counter(ct.evictions),
    )?;
    single(
        &mut e,
        "dataplane_conntrack_refused",
        "Inbound packets that looked like replies to a tracked connection but were not.",
        counter(ct.refused),
    )?;
    let tables = [("ipv4", &ct.ipv4), ("ipv6", &ct.ipv6)];
    family(
        &mut e,
        "dataplane_conntrack_capacity",
        "Entries the connection-tracking table of each IP version can hold (site option conntrack-size).",
        tables.map(|(family, t)| ([("family", family)], gauge(t.capacity))),
    )?;
    family(
        &mut e,
        "dataplane_conntrack_fill_ratio",
        "Tracked connections over capacity, per IP version (0 to 1); when full, the least recently used are evicted.",
        tables.map(|(family, t)| ([("family", family)], ConstGauge::new(t.fill))),
    )?;
    let frags = &stats.fragments;
    single(
        &mut e,
        "dataplane_fragments_entries",
        "Datagrams in the fragment table (their first fragment passed).",
        gauge(frags.entries),
    )?;
    single(&mut e, "dataplane_fragments_capacity", "Datagrams the fragment table can hold.", gauge(frags.capacity))?;
    single(
        &mut e,
        "dataplane_fragments_fill_ratio",
        "Fragment table entries over capacity (0 to 1); when full, the oldest datagrams are forgotten.",
        ConstGauge::new(frags.fill),
    )?;

    single(&mut e, "dataplane_reloads", "Successful policy reloads.", counter(info.reloads.load(Ordering::Relaxed)))?;
    single(
        &mut e,
        "dataplane_reload_failures",
        "Policy reloads that failed (the previous policy stayed in force).",
        counter(info.reload_failures.load(Ordering::Relaxed)),
    )?;
    single(&mut e, "dataplane_policy_generation", "Generation number of the policy in force.", gauge(policy.generation))?;
    family(
        &mut e,
        "dataplane_policy_info",
        "The policy in force: site file and hash of the compiled policy.",
        [([("site", policy.site.as_str()), ("hash", policy.hash.as_str())], gauge(1))],
    )?;
    single(
        &mut e,
        "dataplane_monitor_mode",
        "1 when drops are only counted (monitor mode), 0 when enforced.",
        gauge(u64::from(policy.monitor)),
    )?;
    family(
        &mut e,
        "dataplane_interface_info",
        "Interfaces the program is attached to, with the XDP mode used.",
        info.interfaces.iter().map(|(name, mode)| ([("interface", name.as_str()), ("xdp_mode", mode.as_str())], gauge(1))),
    )?;
    family(
        &mut e,
        "dataplane_build_info",
        "Version of the dataplane serving these metrics.",
        [([("version", env!("CARGO_PKG_VERSION"))], gauge(1))],
    )
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<u64> {
    ConstGauge::new(v)
}

/// One family of labelled series (its type from the metric's).
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one series without labels.
fn single<M: EncodeMetric + TypedMetric>(e: &mut DescriptorEncoder, name: &str, help: &str, metric: M) -> std::fmt::Result {
    metric.encode(e.encode_descriptor(name, help, None, M::TYPE)?)
}

/// Counter values by label set, in the order first seen; the values of the same labels are
/// summed (two slots can carry the same labels, and Prometheus rejects duplicate series).
struct Summed<L> {
    series: Vec<(L, u64)>,
    index: std::collections::HashMap<L, usize>,
}

impl<L> Default for Summed<L> {
    fn default() -> Self {
        Self { series: vec![], index: Default::default() }
    }
}

impl<L: Eq + std::hash::Hash + Clone> Summed<L> {
    fn add(&mut self, labels: L, value: u64) {
        match self.index.get(&labels) {
            Some(&i) => self.series[i].1 = self.series[i].1.saturating_add(value),
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push((labels, value));
            }
        }
    }

    fn counters(self) -> impl Iterator<Item = (L, ConstCounter<u64>)> {
        self.series.into_iter().map(|(l, v)| (l, counter(v)))
    }
}

/// The metrics listener, bound before the program is attached so that a taken port is reported
/// at once.
pub struct Server {
    listener: std::net::TcpListener,
}

impl Server {
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr).map_err(|source| ObserveError::Listen { addr, source })?;
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
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut http = hyper::server::conn::http1::Builder::new();
        // One request per connection, and a bounded time and size for its head.
        http.keep_alive(false).timer(TokioTimer::new()).header_read_timeout(REQUEST_TIMEOUT).max_header_size(MAX_REQUEST);
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!("metrics: {peer}: too many connections, closed");
                continue;
            };
            let info = info.clone();
            let connection = http.serve_connection(TokioIo::new(stream), service_fn(move |req| respond(req, info.clone())));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!("metrics: {peer}: {e}");
                }
                drop(slot);
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

/// `GET` or `HEAD /metrics` (hyper leaves the body out of the answer to a `HEAD`).
async fn respond(req: Request<Incoming>, info: MetricsInfo) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n".into()));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    // Reading the maps is a series of system calls (and a walk over the connection table):
    // off the runtime's thread, so that signals and the program's log are not held up.
    let scraped = tokio::task::spawn_blocking(move || scrape(&info)).await.map_err(ObserveError::ScrapeTask).and_then(|r| r);
    Ok(match scraped {
        Ok(metrics) => {
            let mut r = Response::new(Full::new(Bytes::from(metrics)));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Err(e) => {
            warn!("metrics: reading the pinned maps: {e:#}");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the pinned maps: {e:#}\n"))
        }
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::verdict::XdpAction;
    use crate::observe::{
        counters::ConntrackStats,
        fill::TableFill,
        stats::{FlowStats, OutboundStats, ReasonStats},
    };
    use dataplane_common::Reason;

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

    /// The families of fixed counters, encoded as a scrape encodes them.
    struct Fixed(Stats, MetricsInfo, PolicyInfo);

    impl std::fmt::Debug for Fixed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Fixed")
        }
    }

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
            families(&self.0, &self.1, &self.2, encoder)
        }
    }

    /// Two slots of the same flow (summed into one series), a flow id that needs escaping, an
    /// outbound flow, a reason, two interfaces, a site name that needs escaping.
    fn render() -> String {
        let stats = Stats {
            monitor: false,
            flows: vec![
                FlowStats { flow: flow("f1", "udp"), packets: 3, bytes: 300 },
                FlowStats { flow: flow("f1", "udp"), packets: 2, bytes: 200 },
                FlowStats { flow: flow("weird\"id\\\n", "udp"), packets: 0, bytes: 0 },
            ],
            outbound: vec![OutboundStats { flow: flow("dns", "udp"), packets: 4, bytes: 40, reply_packets: 5, reply_bytes: 50 }],
            reasons: vec![ReasonStats { verdict: XdpAction::Drop, reason: Reason::DropNoFlow, packets: 7, bytes: 70 }],
            conntrack: ConntrackStats::new(TableFill::new(1, 1024), TableFill::new(0, 1024), 2, 1, 0),
            fragments: TableFill::new(2048, 8192),
            forward: None,
        };
        let site = "a \"quoted\" \\ site\nname";
        let policy = PolicyInfo { site: site.into(), generation: 3, hash: "abc".into(), monitor: true, ..Default::default() };
        let info = MetricsInfo::new(&["eth0".into(), "eth1".into()], &[Attached::Native, Attached::Skb], policy.clone());
        info.reloads.store(2, Ordering::Relaxed);
        encode(Box::new(Fixed(stats, info, policy))).unwrap()
    }

    /// What the hand-made encoder this module had before prometheus-client rendered for
    /// `render()`'s counters (its version label aside): the names, types, help texts, labels,
    /// label order and escaping that the dashboard and other tools read.
    const BEFORE: &str = r##"# HELP dataplane_flow_packets_total Packets on each flow of the policy. direction: in = inbound flows (to protected servers), out = sent by protected servers on outbound flows, reply = replies admitted on outbound flows.
# TYPE dataplane_flow_packets_total counter
dataplane_flow_packets_total{direction="in",flow="f1",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 5
dataplane_flow_packets_total{direction="in",flow="weird\"id\\\n",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 0
dataplane_flow_packets_total{direction="out",flow="dns",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 4
dataplane_flow_packets_total{direction="reply",flow="dns",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 5
# HELP dataplane_flow_bytes_total Bytes on each flow of the policy. direction: in = inbound flows (to protected servers), out = sent by protected servers on outbound flows, reply = replies admitted on outbound flows.
# TYPE dataplane_flow_bytes_total counter
dataplane_flow_bytes_total{direction="in",flow="f1",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 500
dataplane_flow_bytes_total{direction="in",flow="weird\"id\\\n",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 0
dataplane_flow_bytes_total{direction="out",flow="dns",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 40
dataplane_flow_bytes_total{direction="reply",flow="dns",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"} 50
# HELP dataplane_packets_total Packets the program judged, by verdict and reason.
# TYPE dataplane_packets_total counter
dataplane_packets_total{verdict="drop",reason="no_flow"} 7
# HELP dataplane_bytes_total Bytes the program judged, by verdict and reason.
# TYPE dataplane_bytes_total counter
dataplane_bytes_total{verdict="drop",reason="no_flow"} 70
# HELP dataplane_conntrack_entries Connections tracked now (opened by protected servers).
# TYPE dataplane_conntrack_entries gauge
dataplane_conntrack_entries 1
# HELP dataplane_conntrack_inserts_total Connections entered into the tracking table.
# TYPE dataplane_conntrack_inserts_total counter
dataplane_conntrack_inserts_total 2
# HELP dataplane_conntrack_removals_total Tracked connections removed (closed or expired).
# TYPE dataplane_conntrack_removals_total counter
dataplane_conntrack_removals_total 1
# HELP dataplane_conntrack_evictions_total Tracked connections the full table dropped to make room.
# TYPE dataplane_conntrack_evictions_total counter
dataplane_conntrack_evictions_total 0
# HELP dataplane_conntrack_refused_total Inbound packets that looked like replies to a tracked connection but were not.
# TYPE dataplane_conntrack_refused_total counter
dataplane_conntrack_refused_total 0
# HELP dataplane_conntrack_capacity Entries the connection-tracking table of each IP version can hold (site option conntrack-size).
# TYPE dataplane_conntrack_capacity gauge
dataplane_conntrack_capacity{family="ipv4"} 1024
dataplane_conntrack_capacity{family="ipv6"} 1024
# HELP dataplane_conntrack_fill_ratio Tracked connections over capacity, per IP version (0 to 1); when full, the least recently used are evicted.
# TYPE dataplane_conntrack_fill_ratio gauge
dataplane_conntrack_fill_ratio{family="ipv4"} 0.0009765625
dataplane_conntrack_fill_ratio{family="ipv6"} 0
# HELP dataplane_fragments_entries Datagrams in the fragment table (their first fragment passed).
# TYPE dataplane_fragments_entries gauge
dataplane_fragments_entries 2048
# HELP dataplane_fragments_capacity Datagrams the fragment table can hold.
# TYPE dataplane_fragments_capacity gauge
dataplane_fragments_capacity 8192
# HELP dataplane_fragments_fill_ratio Fragment table entries over capacity (0 to 1); when full, the oldest datagrams are forgotten.
# TYPE dataplane_fragments_fill_ratio gauge
dataplane_fragments_fill_ratio 0.25
# HELP dataplane_reloads_total Successful policy reloads.
# TYPE dataplane_reloads_total counter
dataplane_reloads_total 2
# HELP dataplane_reload_failures_total Policy reloads that failed (the previous policy stayed in force).
# TYPE dataplane_reload_failures_total counter
dataplane_reload_failures_total 0
# HELP dataplane_policy_generation Generation number of the policy in force.
# TYPE dataplane_policy_generation gauge
dataplane_policy_generation 3
# HELP dataplane_policy_info The policy in force: site file and hash of the compiled policy.
# TYPE dataplane_policy_info gauge
dataplane_policy_info{site="a \"quoted\" \\ site\nname",hash="abc"} 1
# HELP dataplane_monitor_mode 1 when drops are only counted (monitor mode), 0 when enforced.
# TYPE dataplane_monitor_mode gauge
dataplane_monitor_mode 1
# HELP dataplane_interface_info Interfaces the program is attached to, with the XDP mode used.
# TYPE dataplane_interface_info gauge
dataplane_interface_info{interface="eth0",xdp_mode="native"} 1
dataplane_interface_info{interface="eth1",xdp_mode="skb"} 1
# HELP dataplane_build_info Version of the dataplane serving these metrics.
# TYPE dataplane_build_info gauge
dataplane_build_info{version="0.1.0"} 1
"##;

    /// Comment lines in order, and each series (name and labels as written) with its value.
    fn parts(text: &str) -> (Vec<&str>, std::collections::BTreeMap<&str, f64>) {
        let mut comments = vec![];
        let mut series = std::collections::BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                comments.push(line);
            } else {
                let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
                let value = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
                assert!(series.insert(key, value).is_none(), "series twice: {key}");
            }
        }
        (comments, series)
    }

    #[test]
    fn encodes_what_the_hand_made_encoder_did() {
        let before = BEFORE.replace("version=\"0.1.0\"", &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")));
        let text = render();
        let (want_comments, want) = parts(&before);
        let (comments, got) = parts(&text);
        assert_eq!(comments, want_comments, "{text}");
        assert_eq!(got, want, "{text}");
        // The one difference: the encoder writes a float 0 as `0.0`.
        assert!(text.contains("dataplane_conntrack_fill_ratio{family=\"ipv6\"} 0.0\n"), "{text}");
    }

    #[test]
    fn renders_every_family_and_sums_duplicate_series() {
        let text = render();
        let l = r#"{direction="in",flow="f1",catalog="cat",from="any-ip",to="server",protocol="udp",action="allow"}"#;
        assert!(text.contains(&format!("dataplane_flow_packets_total{l} 5\n")), "{text}");
        assert!(text.contains(&format!("dataplane_flow_bytes_total{l} 500\n")));
        assert!(text.contains(r#"flow="weird\"id\\\n""#));
        assert!(text.contains(r#"dataplane_policy_info{site="a \"quoted\" \\ site\nname",hash="abc"} 1"#));
        // The Prometheus text format, not OpenMetrics: no UNIT or EOF line.
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        // One HELP and one TYPE per family, every sample after its TYPE and named for it.
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(current.clone()), "two TYPE lines for {current}");
            } else if !line.starts_with('#') {
                assert!(
                    line.starts_with(&format!("{current} ")) || line.starts_with(&format!("{current}{{")),
                    "{line} outside {current}"
                );
            }
        }
        assert_eq!(seen.len(), 21, "{seen:?}");
    }

    /// One request over a fresh connection: the status code and the whole answer.
    fn http(addr: SocketAddr, request: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status of {raw:?}"));
        (status, raw)
    }

    /// The HTTP side, on loopback, for what does not need the pinned maps.
    #[test]
    fn answers_other_paths_methods_and_garbage() {
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let _serving = server.spawn(MetricsInfo::new(&[], &[], PolicyInfo::default()));
        let (status, raw) = http(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 404, "{raw}");
        assert!(
            raw.to_ascii_lowercase().contains("connection: close") && raw.ends_with("the metrics are at /metrics\n"),
            "{raw}"
        );
        let (status, raw) = http(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status, 405, "{raw}");
        assert!(raw.to_ascii_lowercase().contains("allow: get, head"), "{raw}");
        assert_eq!(http(addr, "HEAD /nothing HTTP/1.0\r\n\r\n").0, 404);
        assert_eq!(http(addr, "NOT HTTP AT ALL\r\n\r\n").0, 400);
        // A head larger than accepted.
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST));
        assert_eq!(http(addr, &big).0, 431);
        assert!(Server::bind(addr).is_err(), "a taken port is an error at bind");
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
