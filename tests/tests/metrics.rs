//! The Prometheus endpoint against the real kernel: the program enforces the end-to-end site on
//! the server end of a veth pair, real datagrams go through it, and `/metrics`, scraped over
//! real TCP, shows exactly those counts, agrees with `Stats::read_pinned` (what `dataplane stats`
//! prints), and passes `promtool check metrics`.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use dataplane::{
    daemon::{compile_site, Enforcer, Mode},
    lab::netns::{udp_query, udp_send, Lab, Servers, SERVER_IF},
    observe::{
        metrics::{MetricsInfo, PolicyInfo, Server},
        stats::Stats,
    },
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One HTTP/1.1 request over a fresh connection: (status code, headers, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: dataplane-tests\r\nAccept: */*\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("reading the response (Connection: close)");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status line of {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn scrape(addr: SocketAddr) -> String {
    let (status, head, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert_eq!(header(&head, "content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_eq!(header(&head, "content-length").and_then(|l| l.parse().ok()), Some(body.len()));
    body
}

/// A sample line: metric name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses the text exposition format (label values unescaped); panics on what it cannot read.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = vec![];
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let c: Vec<char> = line.chars().collect();
        let mut i = c.iter().position(|&ch| ch == '{' || ch == ' ').unwrap_or_else(|| panic!("{line}"));
        let name: String = c[..i].iter().collect();
        let mut labels = HashMap::new();
        if c[i] == '{' {
            i += 1;
            while c[i] != '}' {
                let eq = i + c[i..].iter().position(|&ch| ch == '=').unwrap_or_else(|| panic!("{line}"));
                let key: String = c[i..eq].iter().collect();
                assert_eq!(c[eq + 1], '"', "{line}");
                i = eq + 2;
                let mut value = String::new();
                while c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                        value.push(if c[i] == 'n' { '\n' } else { c[i] });
                    } else {
                        value.push(c[i]);
                    }
                    i += 1;
                }
                i += 1;
                if c[i] == ',' {
                    i += 1;
                }
                assert!(labels.insert(key, value).is_none(), "label twice in {line}");
            }
            i += 1;
        }
        let value: String = c[i..].iter().collect();
        out.push((name, labels, value.trim().parse().unwrap_or_else(|_| panic!("value of {line}"))));
    }
    out
}

/// Sum of the samples of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> u64 {
    let matching: Vec<_> = samples
        .iter()
        .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert!(!matching.is_empty(), "no sample {name} {want:?}");
    matching.iter().map(|(_, _, v)| *v as u64).sum()
}

#[test]
fn metrics_endpoint_counts_real_traffic() {
    let site = root().join("tests/sites/e2e.yaml");
    std::env::set_var("DATAPLANE_CATALOG_DIR", root().join("policies/catalog"));
    let lab = Lab::new("dpt-metrics", &["10.201.0.1/24"], &["10.201.0.2/24", "10.201.0.5/24", "10.201.0.9/24"]).unwrap();
    let files = dataplane::policy::sources::SiteFiles::new(&site, None);
    let compiled = compile_site(&files).unwrap();
    let (enforcer, modes) =
        Enforcer::start(files, compiled, &[SERVER_IF.to_string()], Mode::Auto, Some(&lab.server), Default::default()).unwrap();
    // On their stable counter slots, as `dataplane stats` reads them.
    let tables = enforcer.tables.clone();
    let outbound = tables.outbound.as_ref().map(|o| o.flows.clone()).unwrap_or_default();

    // The endpoint in this (the root) namespace, on a port of its choosing.
    let server = Server::bind(sa("127.0.0.1:0")).unwrap();
    let addr = server.local_addr().unwrap();
    let info = MetricsInfo::new(&[SERVER_IF.to_string()], &modes, PolicyInfo::new(&site, &tables));
    info.reloads.store(2, Ordering::Relaxed);
    info.reload_failures.store(1, Ordering::Relaxed);
    let _serving = server.spawn(info.clone());

    // Other paths and methods.
    assert_eq!(http(addr, "GET", "/").0, 404);
    assert_eq!(http(addr, "GET", "/metricsx").0, 404);
    let (status, head, _) = http(addr, "POST", "/metrics");
    assert_eq!((status, header(&head, "allow")), (405, Some("GET, HEAD")));
    let (status, head, body) = http(addr, "HEAD", "/metrics");
    assert_eq!(status, 200);
    assert!(body.is_empty() && header(&head, "content-length").unwrap().parse::<usize>().unwrap() > 0, "{head}");

    let servers = Servers::start(&lab.server, &[], &[sa("10.201.0.1:5060")]).unwrap();
    let dns = Servers::start(&lab.client, &[], &[sa("10.201.0.5:53")]).unwrap();
    let before = parse(&scrape(addr));
    let sip = [("direction", "in"), ("flow", "vcs-sip-public-in-udp"), ("protocol", "udp")];
    assert_eq!(value(&before, "dataplane_flow_packets_total", &sip), 0);

    // 10 datagrams to the allowed SIP port, 7 from an address in no role; one DNS query the
    // server itself sends (an outbound flow, and its reply). Each datagram "datagram N" is
    // 14 + 20 + 8 + 10 = 52 bytes on the wire.
    udp_send(&lab.client, "10.201.0.2".parse().unwrap(), sa("10.201.0.1:5060"), 10).unwrap();
    udp_send(&lab.client, "10.201.0.9".parse().unwrap(), sa("10.201.0.1:5060"), 7).unwrap();
    assert!(udp_query(&lab.server, sa("10.201.0.1:40053"), sa("10.201.0.5:53"), Duration::from_secs(2)).unwrap(), "DNS answered");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(servers.udp_received[0].load(Ordering::Relaxed), 10);

    let text = scrape(addr);
    let pinned = Stats::read_pinned(&tables.flows, &outbound).unwrap();
    println!("{text}");
    let after = parse(&text);
    let delta = |name: &str, want: &[(&str, &str)]| value(&after, name, want) - value(&before, name, want);

    // Flows: exact counts and bytes.
    assert_eq!(value(&after, "dataplane_flow_packets_total", &sip), 10);
    assert_eq!(value(&after, "dataplane_flow_bytes_total", &sip), 520);
    let flow =
        tables.flows.iter().find(|f| f.id == "vcs-sip-public-in-udp" && f.protocol == dataplane::policy::Proto::Udp).unwrap();
    let full = [
        ("direction", "in"),
        ("flow", flow.id.as_str()),
        ("catalog", flow.catalog.as_str()),
        ("from", flow.from.as_str()),
        ("to", flow.to.as_str()),
        ("protocol", "udp"),
        ("action", "allow"),
    ];
    assert_eq!(value(&after, "dataplane_flow_packets_total", &full), 10, "every label of the flow");
    let dns_out = [("flow", "vcs-dns"), ("protocol", "udp")];
    assert_eq!(value(&after, "dataplane_flow_packets_total", &[&dns_out[..], &[("direction", "out")]].concat()), 1);
    assert_eq!(value(&after, "dataplane_flow_packets_total", &[&dns_out[..], &[("direction", "reply")]].concat()), 1);

    // Reasons: exactly the datagrams sent meanwhile.
    assert_eq!(delta("dataplane_packets_total", &[("verdict", "drop"), ("reason", "no_flow")]), 7);
    assert_eq!(delta("dataplane_bytes_total", &[("verdict", "drop"), ("reason", "no_flow")]), 7 * 52);
    assert_eq!(delta("dataplane_packets_total", &[("verdict", "pass"), ("reason", "flow")]), 10);
    assert_eq!(delta("dataplane_packets_total", &[("verdict", "pass"), ("reason", "reply")]), 1);
    assert_eq!(after.iter().filter(|(n, _, _)| n == "dataplane_packets_total").count(), pinned.reasons.len(), "every reason");
    assert!(value(&after, "dataplane_conntrack_inserts_total", &[]) >= 1);

    // The same maps as `dataplane stats`: both read after the traffic, nothing sent in between.
    let stats_flow: u64 = pinned.flows.iter().filter(|f| f.flow.id == "vcs-sip-public-in-udp").map(|f| f.packets).sum();
    assert_eq!(
        value(&after, "dataplane_flow_packets_total", &[("direction", "in"), ("flow", "vcs-sip-public-in-udp")]),
        stats_flow
    );
    let no_flow = pinned.reasons.iter().find(|r| r.reason == dataplane_common::Reason::DropNoFlow).unwrap();
    assert_eq!(value(&after, "dataplane_packets_total", &[("reason", "no_flow")]), no_flow.packets);
    assert_eq!(value(&after, "dataplane_bytes_total", &[("reason", "no_flow")]), no_flow.bytes);
    let replies: u64 = pinned.outbound.iter().map(|f| f.reply_packets).sum();
    assert_eq!(value(&after, "dataplane_flow_packets_total", &[("direction", "reply")]), replies);
    assert_eq!(value(&after, "dataplane_conntrack_inserts_total", &[]), pinned.conntrack.inserts);
    assert_eq!(value(&after, "dataplane_conntrack_refused_total", &[]), pinned.conntrack.refused);
    let series = after.iter().filter(|(n, _, _)| n == "dataplane_flow_packets_total").count();
    assert!(series <= pinned.flows.len() + 2 * pinned.outbound.len() && series > 0);

    // What run passes in.
    assert_eq!(value(&after, "dataplane_reloads_total", &[]), 2);
    assert_eq!(value(&after, "dataplane_reload_failures_total", &[]), 1);
    assert_eq!(value(&after, "dataplane_policy_generation", &[]), 1);
    assert_eq!(value(&after, "dataplane_monitor_mode", &[]), 0);
    let hash = dataplane::observe::metrics::policy_hash(&tables);
    assert_eq!(value(&after, "dataplane_policy_info", &[("site", &site.display().to_string()), ("hash", &hash)]), 1);
    assert_eq!(value(&after, "dataplane_interface_info", &[("interface", SERVER_IF), ("xdp_mode", modes[0].as_str())]), 1);
    // A reload as run does it: the new policy shows at the next scrape.
    let mut next = PolicyInfo::new(&site, &tables);
    (next.generation, next.monitor) = (2, true);
    next.site = "a \"quoted\" \\ site\nname".into();
    info.set_policy(next);
    let again = parse(&scrape(addr));
    assert_eq!(value(&again, "dataplane_policy_generation", &[]), 2);
    assert_eq!(value(&again, "dataplane_monitor_mode", &[]), 1);
    assert_eq!(value(&again, "dataplane_policy_info", &[("site", "a \"quoted\" \\ site\nname")]), 1, "escaped and read back");

    // No series twice, and promtool finds nothing to say.
    let mut keys = std::collections::HashSet::new();
    for (n, l, _) in &after {
        let mut l: Vec<_> = l.iter().collect();
        l.sort();
        assert!(keys.insert(format!("{n}{l:?}")), "duplicate series {n} {l:?}");
    }
    for text in [text, scrape(addr)] {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus)");
        promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = promtool.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("promtool check metrics: exit {}, output {said:?}", out.status);
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
    }

    // Without the pinned maps (the program is gone): a 500 that says why, and the server lives on.
    drop((servers, dns));
    drop(enforcer);
    let (status, _, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("pinned map"), "{body}");
    assert_eq!(http(addr, "GET", "/").0, 404);
    drop(lab);
}

/// `dataplane run --metrics`: the daemon serves the same numbers `dataplane stats` prints, and a
/// reload (SIGHUP) shows in the generation and the reload counter.
#[test]
fn run_serves_metrics() {
    use dataplane::lab::netns::in_netns;
    use dataplane_tests::daemon::{flow_packets, reason_packets, root, stats, Daemon};

    let lab = Lab::new("dpt-metrics", &["10.201.0.1/24"], &["10.201.0.2/24", "10.201.0.9/24"]).unwrap();
    let site = root().join("tests/sites/e2e.yaml");
    let daemon = Daemon::start_with(&lab.server, &site, &["--metrics", "127.0.0.1:9750"]);
    // The endpoint listens in the daemon's namespace.
    let addr = sa("127.0.0.1:9750");
    let get = || in_netns(&lab.server, || scrape(addr)).unwrap();
    assert_eq!(in_netns(&lab.server, || http(addr, "GET", "/")).unwrap().0, 404);

    let servers = Servers::start(&lab.server, &[], &[sa("10.201.0.1:5060")]).unwrap();
    udp_send(&lab.client, "10.201.0.2".parse().unwrap(), sa("10.201.0.1:5060"), 10).unwrap();
    udp_send(&lab.client, "10.201.0.9".parse().unwrap(), sa("10.201.0.1:5060"), 7).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(servers.udp_received[0].load(Ordering::Relaxed), 10);
    let text = get();
    let s = stats();
    let m = parse(&text);
    let sip = [("direction", "in"), ("flow", "vcs-sip-public-in-udp"), ("protocol", "udp")];
    assert_eq!(value(&m, "dataplane_flow_packets_total", &sip), 10);
    assert_eq!(flow_packets(&s, "vcs-sip-public-in-udp", "udp"), 10);
    assert_eq!(
        value(&m, "dataplane_packets_total", &[("verdict", "drop"), ("reason", "no_flow")]),
        reason_packets(&s, "drop", "no_flow")
    );
    assert_eq!(value(&m, "dataplane_conntrack_inserts_total", &[]), s["conntrack"]["inserts"].as_u64().unwrap());
    assert_eq!(value(&m, "dataplane_policy_generation", &[]), 1);
    assert_eq!(value(&m, "dataplane_reloads_total", &[]), 0);
    assert_eq!(value(&m, "dataplane_monitor_mode", &[]), 0);
    assert_eq!(value(&m, "dataplane_interface_info", &[("interface", SERVER_IF)]), 1);

    // SIGHUP reloads: the next generation, counted, and the counters carry over.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = parse(&get());
        if value(&m, "dataplane_policy_generation", &[]) == 2 || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(value(&m, "dataplane_policy_generation", &[]), 2);
    assert_eq!(value(&m, "dataplane_reloads_total", &[]), 1);
    assert_eq!(value(&m, "dataplane_reload_failures_total", &[]), 0);
    assert_eq!(value(&m, "dataplane_flow_packets_total", &sip), 10);
    drop(servers);
    assert!(daemon.stop().success());
}
