//! deploy/grafana/dataplane.json against what the exporter really serves: `dataplane run
//! --metrics` enforces the end-to-end site in a network namespace, one scrape of its `/metrics`
//! gives the metric families and their labels, and every PromQL expression of the dashboard
//! (panels, variables, annotations) may name only those metrics, and only labels they carry.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use dataplane::lab::netns::{in_netns, Lab};
use dataplane_tests::daemon::{root, Daemon};
use serde_json::Value;

/// Labels Prometheus adds to every series of a target: not the exporter's.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Labels whose every value the exporter always serves (whatever the traffic): an equality
/// matcher on one of them must name a value seen in the scrape.
const CLOSED_LABELS: [&str; 3] = ["verdict", "reason", "direction"];

/// Metric family -> label name -> values seen.
type Served = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// One GET /metrics from inside namespace `ns`, retried while the server starts.
fn scrape_in(ns: &str, addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = in_netns(ns, || -> std::io::Result<String> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)?;
            Ok(raw)
        })
        .unwrap();
        match got {
            Ok(raw) => {
                let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body.to_string();
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("metrics not served yet ({e}), retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no metrics at {addr} in {ns}: {e}"),
        }
    }
}

/// The families (`# TYPE` lines) and the labels of their samples, values unescaped.
fn served(text: &str) -> Served {
    let mut out = Served::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            out.entry(rest.split(' ').next().unwrap().to_string()).or_default();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("sample line {line}"));
        let labels = out.get_mut(&line[..name_end]).unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        let mut c = line[name_end..].chars().peekable();
        if c.next() != Some('{') {
            continue;
        }
        loop {
            let key: String = c.by_ref().take_while(|&ch| ch != '=').collect();
            assert_eq!(c.next(), Some('"'), "{line}");
            let mut value = String::new();
            while let Some(ch) = c.next() {
                match ch {
                    '\\' => value.push(match c.next() {
                        Some('n') => '\n',
                        Some(other) => other,
                        None => panic!("{line}"),
                    }),
                    '"' => break,
                    _ => value.push(ch),
                }
            }
            labels.entry(key).or_default().insert(value);
            match c.next() {
                Some(',') => continue,
                Some('}') => break,
                other => panic!("{other:?} in {line}"),
            }
        }
    }
    out
}

/// What a PromQL expression refers to.
#[derive(Debug, Default)]
struct Refs {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    /// (label, value) of equality matchers.
    equal: BTreeSet<(String, String)>,
}

/// PromQL functions and aggregations, by name.
const FUNCTIONS: &str = "abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min count \
    count_over_time count_values delta deriv floor group histogram_quantile idelta increase irate \
    label_join label_replace last_over_time max max_over_time min min_over_time quantile \
    quantile_over_time rate resets round scalar sgn sort sort_desc stddev stdvar sum sum_over_time time \
    timestamp topk vector";
/// Keywords followed by a list of label names.
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A string literal starting at `c[*i]` (a quote), unescaped; `*i` moves past it.
fn string_at(c: &[char], i: &mut usize, expr: &str) -> String {
    let quote = c[*i];
    let mut s = String::new();
    *i += 1;
    while *i < c.len() && c[*i] != quote {
        if c[*i] == '\\' && quote != '`' {
            *i += 1;
        }
        s.push(c[*i]);
        *i += 1;
    }
    assert!(*i < c.len(), "unterminated string in {expr}");
    *i += 1;
    s
}

fn skip_spaces(c: &[char], i: &mut usize) {
    while *i < c.len() && c[*i].is_whitespace() {
        *i += 1;
    }
}

fn ident_at(c: &[char], i: &mut usize) -> String {
    let start = *i;
    while *i < c.len() && is_ident(c[*i]) {
        *i += 1;
    }
    c[start..*i].iter().collect()
}

/// The metric names and label names of a PromQL expression (Grafana's `$variables` allowed in
/// strings and ranges). Panics on what it does not understand, so that a new construct in the
/// dashboard is looked at rather than waved through.
fn refs(expr: &str) -> Refs {
    let c: Vec<char> = expr.chars().collect();
    let mut r = Refs::default();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() || "()+-*/%^,<>=!".contains(ch) {
            i += 1;
        } else if ch == '"' || ch == '\'' || ch == '`' {
            string_at(&c, &mut i, expr);
        } else if ch == '[' {
            // A range or subquery: durations and Grafana's $__rate_interval.
            i += c[i..].iter().position(|&x| x == ']').unwrap_or_else(|| panic!("unclosed [ in {expr}")) + 1;
        } else if ch == '{' {
            i += 1;
            loop {
                skip_spaces(&c, &mut i);
                if c[i] == '}' {
                    i += 1;
                    break;
                }
                assert!(is_ident_start(c[i]), "label name expected at {i} in {expr}");
                let label = ident_at(&c, &mut i);
                skip_spaces(&c, &mut i);
                let op: String = c[i..].iter().take_while(|x| "=!~".contains(**x)).collect();
                assert!(["=", "!=", "=~", "!~"].contains(&op.as_str()), "matcher {op:?} in {expr}");
                i += op.len();
                skip_spaces(&c, &mut i);
                let value = string_at(&c, &mut i, expr);
                if op == "=" && !value.contains('$') {
                    r.equal.insert((label.clone(), value));
                }
                r.labels.insert(label);
                skip_spaces(&c, &mut i);
                if c[i] == ',' {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() || ch == '.' {
            // A number, or a duration after `offset`.
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(ch) {
            let word = ident_at(&c, &mut i);
            let mut j = i;
            skip_spaces(&c, &mut j);
            let call = j < c.len() && c[j] == '(';
            if GROUPING.contains(&word.as_str()) {
                if call {
                    let close = j + c[j..].iter().position(|&x| x == ')').unwrap_or_else(|| panic!("unclosed ( in {expr}"));
                    let list: String = c[j + 1..close].iter().collect();
                    r.labels.extend(list.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from));
                    i = close + 1;
                }
            } else if FUNCTIONS.split_whitespace().any(|f| f == word) {
                // A function, or an aggregation with its grouping first (`sum by (x) (...)`).
            } else if call {
                panic!("unknown PromQL function {word} in {expr}");
            } else if !KEYWORDS.contains(&word.as_str()) {
                r.metrics.insert(word);
            }
        } else if ch == '$' {
            panic!("a Grafana variable outside a string or range in {expr}");
        } else {
            panic!("unexpected {ch:?} at {i} in {expr}");
        }
    }
    r
}

/// Every PromQL expression of the dashboard, with where it is; and checks the dashboard's shape
/// on the way (ids, data sources, positions).
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = panels.pop() {
        let title = p["title"].as_str().expect("every panel has a title").to_string();
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "two panels with id {}", p["id"]);
        assert!(p["gridPos"]["w"].as_u64().is_some() && p["gridPos"]["h"].as_u64().is_some(), "{title}: gridPos");
        if p["type"] == "row" {
            panels.extend(p["panels"].as_array().into_iter().flatten());
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: data source");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: query data source");
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            out.push((format!("panel {title:?} {}", t["refId"]), expr.to_string()));
        }
    }
    for a in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), expr.to_string()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("variable query");
        // label_values(EXPR, LABEL): the label must be on EXPR's metrics.
        let inner =
            q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).unwrap_or_else(|| panic!("variable query {q}"));
        let (expr, label) = inner.rsplit_once(',').unwrap_or_else(|| panic!("variable query {q}"));
        out.push((format!("variable {}", v["name"]), format!("max by ({}) ({})", label.trim(), expr.trim())));
    }
    out
}

#[test]
fn dashboard_queries_name_only_served_metrics() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(root().join("deploy/grafana/dataplane.json")).unwrap())
        .expect("deploy/grafana/dataplane.json is JSON");
    for key in ["uid", "title", "schemaVersion"] {
        assert!(!dashboard[key].is_null(), "dashboard {key}");
    }

    let lab = Lab::new("i16-grafana", &["10.201.0.1/24"], &["10.201.0.2/24"]).unwrap();
    let daemon = Daemon::start_with(&lab.server, &root().join("tests/sites/e2e.yaml"), &["--metrics", "127.0.0.1:9750"]);
    let text = scrape_in(&lab.server, "127.0.0.1:9750");
    drop(daemon);
    let served = served(&text);
    assert!(served.contains_key("dataplane_packets_total") && served.len() >= 10, "families served: {:?}", served.keys());

    let exprs = expressions(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for (place, expr) in &exprs {
        let r = refs(expr);
        assert!(!r.metrics.is_empty(), "{place}: no metric in {expr}");
        for m in &r.metrics {
            assert!(served.contains_key(m), "{place}: {m} is not served (served: {:?})\n{expr}", served.keys());
            used.insert(m.clone());
        }
        let on_metrics: BTreeSet<&String> = r.metrics.iter().flat_map(|m| served[m].keys()).collect();
        for l in &r.labels {
            assert!(
                on_metrics.contains(l) || TARGET_LABELS.contains(&l.as_str()),
                "{place}: label {l} is on none of {:?}\n{expr}",
                r.metrics
            );
        }
        for (l, v) in r.equal.iter().filter(|(l, _)| CLOSED_LABELS.contains(&l.as_str())) {
            let seen = r.metrics.iter().any(|m| served[m].get(l).is_some_and(|vs| vs.contains(v)));
            assert!(seen, "{place}: {l}=\"{v}\" matches no served series\n{expr}");
        }
    }
    // The dashboard shows what the exporter is for: flows, verdicts, tracking, reloads.
    for m in [
        "dataplane_flow_packets_total",
        "dataplane_flow_bytes_total",
        "dataplane_packets_total",
        "dataplane_conntrack_entries",
        "dataplane_reloads_total",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
}

#[test]
fn the_query_reader_finds_metrics_and_labels() {
    let r = refs(
        r#"topk(5, sum by (flow, direction) (rate(dataplane_flow_packets_total{action="deny",instance=~"$instance"}[$__rate_interval]))) / on(flow) group_left x_total offset 5m"#,
    );
    assert_eq!(r.metrics.iter().map(String::as_str).collect::<Vec<_>>(), ["dataplane_flow_packets_total", "x_total"]);
    assert_eq!(r.labels.iter().map(String::as_str).collect::<Vec<_>>(), ["action", "direction", "flow", "instance"]);
    assert!(r.equal.contains(&("action".to_string(), "deny".to_string())));
    assert!(std::panic::catch_unwind(|| refs("frobnicate(dataplane_packets_total)")).is_err());
}
