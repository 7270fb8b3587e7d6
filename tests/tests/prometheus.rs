//! A real Prometheus server scrapes `dataplane run --metrics`: both run in the server's network
//! namespace, Prometheus scrapes every second, and after real datagrams of an allowed flow its
//! query API reports exactly the packets sent, for a sample it took after the traffic. What
//! `promtool check metrics` accepts (tests/tests/metrics.rs) is not all of it: this is the
//! format, the content type and the HTTP side as the Prometheus server itself reads them.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use dataplane::lab::netns::{in_netns, udp_send, Lab, Servers};
use dataplane_tests::daemon::{root, Daemon};
use serde_json::Value;

/// How long Prometheus may take to start, or to show a scrape.
const PATIENCE: Duration = Duration::from_secs(30);
const FLOW: &str = "vcs-sip-public-in-udp";
const SENT: u64 = 10;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A loopback port nobody listens on in namespace `ns`.
fn free_port(ns: &str) -> u16 {
    in_netns(ns, || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())).unwrap().unwrap().port()
}

/// `prometheus` in namespace `ns`, scraping `target` every second, its data in a directory of
/// its own; killed (and the directory removed) on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    ns: String,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(ns: &str, target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("i16p-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: dataplane\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = SocketAddr::new(sa("127.0.0.1:0").ip(), free_port(ns));
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "prometheus"])
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus; cargo xtask test installs it)");
        let p = Self { child, dir, ns: ns.to_string(), addr };
        let deadline = Instant::now() + PATIENCE;
        while p.get("/-/ready").map(|(status, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus not ready after {PATIENCE:?}: {}", p.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// One HTTP/1.0 GET (the answer ends with the connection): status and body; None when
    /// nothing listens yet.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        in_netns(&self.ns, || -> std::io::Result<(u16, String)> {
            let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)?;
            let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
            let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            Ok((status, body.to_string()))
        })
        .unwrap()
        .ok()
    }

    /// The `data` of a successful API answer.
    fn api(&self, path: &str) -> Value {
        let (status, body) = self.get(path).unwrap_or_else(|| panic!("no answer to {path}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(status == 200 && v["status"] == "success", "{path}: {status} {body}");
        v["data"].clone()
    }

    /// The raw samples (time, value) of the flow's inbound series over the last minute, and
    /// its labels; None while Prometheus has none.
    fn flow_samples(&self) -> Option<(Value, Vec<(f64, f64)>)> {
        let query = format!(r#"dataplane_flow_packets_total{{flow="{FLOW}",direction="in",protocol="udp"}}[1m]"#);
        let data = self.api(&format!("/api/v1/query?query={}", encode(&query)));
        assert_eq!(data["resultType"], "matrix", "{data}");
        let result = data["result"].as_array().unwrap();
        assert!(result.len() <= 1, "one series for the flow: {data}");
        let series = result.first()?;
        let samples = series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s[0].as_f64().unwrap(), s[1].as_str().unwrap().parse().unwrap()))
            .collect();
        Some((series["metric"].clone(), samples))
    }

    /// Polls (bounded) until the flow has a sample taken after `after` (Unix time, seconds).
    fn sample_after(&self, after: f64) -> (Value, f64, f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some((labels, samples)) = self.flow_samples() {
                if let Some(&(t, v)) = samples.iter().rev().find(|(t, _)| *t > after) {
                    return (labels, t, v);
                }
            }
            assert!(Instant::now() < deadline, "no sample after {after} within {PATIENCE:?}: {}", self.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // `ip netns exec` execs prometheus: the child is prometheus itself.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encoding of a query parameter (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn prometheus_scrapes_exact_counts() {
    let lab = Lab::new("i16p-prom", &["10.201.0.1/24"], &["10.201.0.2/24"]).unwrap();
    let port = free_port(&lab.server);
    let target = SocketAddr::new(sa("127.0.0.1:0").ip(), port);
    let site = root().join("tests/sites/e2e.yaml");
    let daemon = Daemon::start_with(&lab.server, &site, &["--metrics", &target.to_string()]);
    let prometheus = Prometheus::start(&lab.server, target);
    let servers = Servers::start(&lab.server, &[], &[sa("10.201.0.1:5060")]).unwrap();

    // Before any traffic, Prometheus has the flow at 0.
    let (labels, _, before) = prometheus.sample_after(now());
    assert_eq!(before, 0.0, "{labels}");
    let (catalog, action) = (labels["catalog"].as_str().unwrap(), labels["action"].as_str().unwrap());
    assert!(!catalog.is_empty() && action == "allow", "{labels}");
    assert_eq!(labels["job"], "dataplane");
    assert_eq!(labels["instance"], target.to_string());

    udp_send(&lab.client, "10.201.0.2".parse().unwrap(), sa("10.201.0.1:5060"), SENT as usize).unwrap();
    let sent = now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers.udp_received[0].load(Ordering::Relaxed) < SENT && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(servers.udp_received[0].load(Ordering::Relaxed), SENT, "every datagram reached the server");

    let (labels, at, after) = prometheus.sample_after(sent);
    println!("prometheus: {FLOW} = {after} at {at:.3} (traffic ended at {sent:.3}); labels {labels}");
    assert_eq!(after, SENT as f64, "packets sent, as Prometheus stored them");

    // The target as Prometheus sees it: up, scraped without error.
    let targets = prometheus.api("/api/v1/targets?state=active");
    let active = targets["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{targets}");
    let t = &active[0];
    println!("target: {t}");
    assert_eq!(t["health"], "up", "{t}");
    assert_eq!(t["lastError"], "", "{t}");
    assert_eq!(t["scrapeUrl"], format!("http://{target}/metrics"), "{t}");

    drop(servers);
    drop(prometheus);
    assert!(daemon.stop().success());
    drop(lab);
}
