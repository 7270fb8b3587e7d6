//! `dataplane diff` and `dataplane suggest` through the real binary, on crafted sites over the
//! test catalogs and on every example site: exit statuses, JSON shape, causes, and every flipped
//! tuple answered by `explain` exactly as `diff` says.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use dataplane::policy::options::OptionKind;
use dataplane::policy::sources::SiteFiles;
use dataplane::policy::OptValue;
use serde_json::{json, Value};

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(args)
        .env_remove("DATAPLANE_CATALOG_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs dataplane");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writes stdin");
    child.wait_with_output().expect("waits")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scratch directory with the test catalogs and `sites/NAME.yaml` for each site given.
fn sites(list: &[(&str, &str)]) -> (PathBuf, Vec<String>) {
    let dir = common::scratch();
    let paths = list
        .iter()
        .map(|(name, body)| {
            let p = dir.join(format!("sites/{name}.yaml"));
            std::fs::write(&p, body).expect("write site");
            p.display().to_string()
        })
        .collect();
    (dir, paths)
}

const BASE: &str = "name: s
catalogs: [alpha, beta]
roles:
  server: [192.0.2.10/32, \"2001:db8::10/128\"]
  admin-pc: 10.0.0.5
  lan: [10.0.0.0/8]
  partner: [198.51.100.0/24]
  db: [192.0.2.20]
protect: [server, db]
options:
  release: upgraded
  zones: 3
";

/// `diff --json` of two sites: exit status and the parsed report.
fn diff_json(dir: &Path, from: &str, site: &str) -> (i32, Value) {
    let cat = dir.join("catalog").display().to_string();
    let out = run(&["diff", "--from", from, "--site", site, "--catalog-dir", &cat, "--json"], "");
    let code = out.status.code().expect("exit status");
    assert!(code < 2, "diff failed: {}", text(&out.stderr));
    (code, serde_json::from_slice(&out.stdout).expect("diff --json prints JSON"))
}

fn entries<'a>(d: &'a Value, dir: &str, kind: &str) -> Vec<&'a Value> {
    d[dir][kind].as_array().expect("a list").iter().collect()
}

fn ids(v: &[&Value]) -> Vec<String> {
    v.iter().map(|f| format!("{}/{}", f["id"].as_str().unwrap(), f["protocol"].as_str().unwrap())).collect()
}

/// Every flip of a diff report: (packet, old answer, new answer).
fn flips(d: &Value) -> Vec<(Value, Value, Value)> {
    let mut out = Vec::new();
    let mut add = |f: &Value| {
        for x in f["flips"].as_array().expect("flips") {
            out.push((x["packet"].clone(), x["old"].clone(), x["new"].clone()));
        }
    };
    for dir in ["inbound", "outbound"] {
        for kind in ["added", "removed", "changed"] {
            d[dir][kind].as_array().expect("a list").iter().for_each(&mut add);
        }
    }
    d["settings"].as_array().expect("settings").iter().for_each(&mut add);
    out
}

/// `explain` on every flipped tuple, against the old and the new site, answers what `diff` said.
fn flips_agree_with_explain(d: &Value, from: &str, site: &str, cat: &str) -> usize {
    let f = flips(d);
    let input: String = f.iter().map(|(p, _, _)| format!("{p}\n")).collect();
    for (side, path) in [(1, from), (2, site)] {
        let out = run(&["explain", "--site", path, "--catalog-dir", cat], &input);
        assert!(out.status.success(), "explain: {}", text(&out.stderr));
        let answers: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(answers.len(), f.len());
        for (a, x) in answers.iter().zip(&f) {
            let said = if side == 1 { &x.1 } else { &x.2 };
            for k in ["verdict", "flow", "reason"] {
                assert_eq!(a[k], said[k], "{k} of {} on {path}: explain {a}, diff {said}", x.0);
            }
        }
    }
    f.len()
}

#[test]
fn diff_exit_status_json_and_causes() {
    let turn = format!("{BASE}  turn: true\n");
    let (dir, p) = sites(&[("base", BASE), ("same", BASE), ("turn", &turn)]);
    let cat = dir.join("catalog").display().to_string();

    let (code, d) = diff_json(&dir, &p[0], &p[1]);
    assert_eq!((code, &d["same"]), (0, &json!(true)), "{d:#}");
    assert!(flips(&d).is_empty());

    let (code, d) = diff_json(&dir, &p[0], &p[2]);
    assert_eq!((code, &d["same"]), (1, &json!(false)));
    let added = entries(&d, "inbound", "added");
    // alpha-turn is added; alpha-turn-off (when turn: false) is removed.
    assert_eq!(ids(&added), ["alpha-turn/udp"]);
    assert_eq!(ids(&entries(&d, "inbound", "removed")), ["alpha-turn-off/udp"]);
    assert!(entries(&d, "inbound", "changed").is_empty());
    let f = added[0];
    assert_eq!((f["catalog"].as_str(), f["table"].as_str(), f["dport"].as_str()), (Some("alpha"), Some("Media"), Some("3478")));
    assert_eq!(f["causes"], json!([{"kind": "option", "option": "turn", "old": false, "new": true}]));
    let x = &f["flips"][0];
    assert_eq!((x["old"]["verdict"].as_str(), x["new"]["verdict"].as_str()), (Some("deny"), Some("allow")));
    assert_eq!(x["new"]["flow"], "alpha-turn");
    assert_eq!(x["packet"]["dport"], 3478);
    assert_eq!(d["options"], json!([{"option": "turn", "catalogs": ["alpha"], "old": false, "new": true}]));
    assert_eq!(
        d["flips"]["deny_to_allow"].as_u64().unwrap() + d["flips"]["allow_to_deny"].as_u64().unwrap(),
        flips(&d).len() as u64
    );
    assert!(flips_agree_with_explain(&d, &p[0], &p[2], &cat) >= 2);

    // The text form: the same facts, one flow per line.
    let out = run(&["diff", "--from", &p[0], "--site", &p[2], "--catalog-dir", &cat], "");
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out.stdout);
    assert!(t.contains("+ alpha-turn udp internet -> server dport 3478"), "{t}");
    assert!(t.contains("because turn: false -> true"), "{t}");
    assert!(t.contains("deny -> allow  udp"), "{t}");
}

#[test]
fn diff_changes_addresses_ports_protection_and_settings() {
    let changed = BASE
        .replace("partner: [198.51.100.0/24]", "partner: [198.51.100.0/25, 203.0.113.0/24]")
        .replace("zones: 3", "zones: 5")
        .replace("protect: [server, db]", "protect: [server]")
        + "  unprotected: drop\n  icmp-echo: allow\n  conntrack-udp: 120\n";
    let (dir, p) = sites(&[("base", BASE), ("changed", &changed)]);
    let cat = dir.join("catalog").display().to_string();
    let (code, d) = diff_json(&dir, &p[0], &p[1]);
    assert_eq!(code, 1);
    let changed = entries(&d, "inbound", "changed");
    let zones = changed.iter().find(|f| f["id"] == "alpha-zones").expect("alpha-zones changed");
    assert_eq!(zones["changes"][0], json!({"field": "dport", "old": "7001-7003", "new": "7001-7005"}));
    assert_eq!(zones["causes"][0], json!({"kind": "option", "option": "zones", "old": 3, "new": 5}));
    let sip = changed.iter().find(|f| f["id"] == "alpha-partner-sip-5060").expect("partner flow changed");
    assert_eq!(sip["changes"][0]["field"], "from_addresses");
    assert_eq!(sip["changes"][0]["added"], json!(["198.51.100.0/25", "203.0.113.0/24"]));
    assert_eq!(sip["changes"][0]["removed"], json!(["198.51.100.0/24"]));
    assert_eq!(sip["causes"], json!([{"kind": "binding", "role": "partner"}]));
    // db is no longer protected: its inbound flow goes (beta-db, from the server to db, stays an
    // outbound flow of the server).
    let removed = entries(&d, "inbound", "removed");
    assert_eq!(ids(&removed), ["beta-db/tcp"]);
    assert_eq!(removed[0]["causes"], json!([{"kind": "protect", "role": "db", "protected": false}]));
    assert!(d["roles"].as_array().unwrap().iter().any(|r| r["role"] == "db" && r["new_protected"] == false));
    let names: Vec<&str> = d["settings"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["unprotected", "icmp-echo", "conntrack-udp"]);
    for s in &d["settings"].as_array().unwrap()[..2] {
        assert!(!s["flips"].as_array().unwrap().is_empty(), "{s}");
    }
    // Both ways: allow -> deny (198.51.100.200 left the partner role, db unprotected then
    // dropped) and deny -> allow.
    assert!(
        d["flips"]["allow_to_deny"].as_u64().unwrap() > 0 && d["flips"]["deny_to_allow"].as_u64().unwrap() > 0,
        "{}",
        d["flips"]
    );
    flips_agree_with_explain(&d, &p[0], &p[1], &cat);
}

#[test]
fn diff_catalog_selection_and_order() {
    let alpha_only = BASE
        .replace("catalogs: [alpha, beta]", "catalogs: [alpha]")
        .replace("  db: [192.0.2.20]\n", "")
        .replace("[server, db]", "[server]");
    let swapped = BASE.replace("catalogs: [alpha, beta]", "catalogs: [beta, alpha]");
    let (dir, p) = sites(&[("base", BASE), ("alpha", &alpha_only), ("swapped", &swapped)]);
    let cat = dir.join("catalog").display().to_string();
    let (code, d) = diff_json(&dir, &p[0], &p[1]);
    assert_eq!(code, 1);
    assert_eq!(d["catalogs"]["removed"], json!(["beta"]));
    for f in entries(&d, "inbound", "removed").iter().filter(|f| f["catalog"] == "beta") {
        assert_eq!(f["causes"], json!([{"kind": "catalog", "catalog": "beta", "selected": false}]));
    }
    flips_agree_with_explain(&d, &p[0], &p[1], &cat);
    // beta before alpha: the same flows, another precedence (which overlapping flow counts).
    let (code, d) = diff_json(&dir, &p[0], &p[2]);
    assert_eq!((code, &d["order_changed"], &d["catalogs"]["reordered"]), (1, &json!(true), &json!(true)));
    assert!(entries(&d, "inbound", "added").is_empty() && entries(&d, "inbound", "changed").is_empty());
}

#[test]
fn diff_errors_exit_2_with_position() {
    let bad = BASE.replace("protect: [server, db]", "protect: [nobody]");
    let (dir, p) = sites(&[("base", BASE), ("bad", &bad)]);
    let cat = dir.join("catalog").display().to_string();
    let out = run(&["diff", "--from", &p[0], "--site", &p[1], "--catalog-dir", &cat], "");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml:9:11: protect[0]: unknown role `nobody`"), "{err}");
    let out = run(&["diff", "--from", &p[1], "--site", &p[0], "--catalog-dir", &cat], "");
    assert_eq!(out.status.code(), Some(2));
    // No --from and no state file: an error, not "no difference".
    let missing = dir.join("no-state.json").display().to_string();
    let out = run(&["diff", "--state", &missing, "--site", &p[0], "--catalog-dir", &cat], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no enforced policy"), "{}", text(&out.stderr));
}

/// A state file as `run` writes it; `sources`: with the texts (this version) or without (an
/// earlier one).
fn state_file(dir: &Path, site: &str, sources: bool) -> String {
    let loaded = SiteFiles::new(Path::new(site), Some(&dir.join("catalog"))).read().expect("site loads");
    let mut st = json!({"format": 2, "pid": 0, "site": site, "interfaces": ["eth0"], "flows": [], "monitor": true});
    if sources {
        st["sources"] = serde_json::to_value(&loaded.sources).unwrap();
    }
    let path = dir.join(format!("state-{sources}.json"));
    std::fs::write(&path, st.to_string()).unwrap();
    path.display().to_string()
}

#[test]
fn diff_against_the_recorded_state() {
    let turn = format!("{BASE}  turn: true\n");
    let (dir, p) = sites(&[("enforced", BASE), ("turn", &turn)]);
    let cat = dir.join("catalog").display().to_string();
    let state = state_file(&dir, &p[0], true);
    // The enforced site is edited on disk after the state was recorded: diff compares with
    // what is enforced, not with the file.
    std::fs::write(&p[0], &turn).unwrap();
    let out = run(&["diff", "--state", &state, "--site", &p[1], "--catalog-dir", &cat, "--json"], "");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&entries(&d, "inbound", "added")), ["alpha-turn/udp"]);
    assert!(d["old"]["describe"].as_str().unwrap().contains("monitor mode"), "{}", d["old"]);
    // A state from before the sources were recorded: the site file as it is now stands in.
    let old_state = state_file(&dir, &p[0], false);
    let out = run(&["diff", "--state", &old_state, "--site", &p[1], "--catalog-dir", &cat], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("the state records no sources"), "{}", text(&out.stdout));
}

/// Changes of one option's value (every other value of each option, at most `n`) for a site.
fn option_variants(site: &Path, n: usize) -> Vec<(String, OptValue)> {
    let l = SiteFiles::new(site, None).read().expect("example site loads");
    let mut out = Vec::new();
    for c in &l.policy.catalogs {
        let values = dataplane::policy::OptionValues::resolve(&c.options, &l.site.options.0);
        for (name, d) in &c.options {
            let alts = match &d.kind {
                OptionKind::Int { min, max } => vec![OptValue::Int(*min), OptValue::Int((*max).min(*min + 3))],
                k => k.values().unwrap_or_default(),
            };
            for v in alts.into_iter().filter(|v| Some(v) != values.get(name)) {
                if !out.iter().any(|(m, _)| m == name) {
                    out.push((name.clone(), v));
                }
            }
        }
    }
    // Spread over the catalogs' options rather than the first ones only.
    let step = (out.len() / n.max(1)).max(1);
    out.into_iter().step_by(step).take(n).collect()
}

fn yaml(v: &OptValue) -> serde_yaml::Value {
    match v {
        OptValue::Str(s) => s.as_str().into(),
        OptValue::Int(i) => (*i).into(),
        OptValue::Bool(b) => (*b).into(),
    }
}

/// The example site with `options.NAME` set to `value`, written to `dir`.
fn with_option(dir: &Path, site: &Path, name: &str, value: &OptValue) -> PathBuf {
    let mut v: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(site).unwrap()).unwrap();
    let opts = v.as_mapping_mut().unwrap().entry("options".into()).or_insert(serde_yaml::Mapping::new().into());
    opts.as_mapping_mut().unwrap().insert(name.into(), yaml(value));
    let stem = site.file_stem().unwrap().to_str().unwrap();
    let out = dir.join(format!("{stem}-{name}.yaml"));
    std::fs::write(&out, serde_yaml::to_string(&v).unwrap()).unwrap();
    out
}

fn example_sites() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("sites")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// An event line as `dataplane events --json` prints it.
fn event(src: &str, dst: &str, proto: u8, sport: u16, dport: u16, reason: &str) -> String {
    json!({"time": 1.5, "interface": "veth-s", "src": src, "dst": dst, "proto": proto, "sport": sport,
        "dport": dport, "reason": reason, "flow": null, "nearest": null, "suppressed": 0})
    .to_string()
}

/// On every example site: the site against itself is the same (0); a changed option differs
/// exactly when the report has a change (1), every flip agrees with `explain`, and `suggest`
/// over drop events of the tuples the change admits names that option and value.
#[test]
fn diff_and_suggest_on_every_example_site() {
    let cat = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog").display().to_string();
    let scratch = common::scratch();
    let (mut variants, mut named) = (0, 0);
    for site in example_sites() {
        let s = site.display().to_string();
        let out = run(&["diff", "--from", &s, "--site", &s, "--catalog-dir", &cat], "");
        assert_eq!(out.status.code(), Some(0), "{s} against itself: {}", text(&out.stdout));
        let mut events = String::new();
        let mut expected = Vec::new();
        for (name, value) in option_variants(&site, 8) {
            let variant = with_option(&scratch, &site, &name, &value).display().to_string();
            variants += 1;
            let out = run(&["diff", "--from", &s, "--site", &variant, "--catalog-dir", &cat, "--json"], "");
            let d: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{variant}: {}", text(&out.stderr)));
            assert_eq!(out.status.code(), Some(if d["same"] == true { 0 } else { 1 }), "{variant}");
            flips_agree_with_explain(&d, &s, &variant, &cat);
            // A tuple this option admits through a flow: a drop event for `suggest`.
            let admitted = entries(&d, "inbound", "added")
                .into_iter()
                .chain(entries(&d, "inbound", "changed"))
                .flat_map(|f| {
                    f["flips"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|x| x["old"]["reason"] == "no_flow" && x["new"]["reason"] == "flow")
                        .take(1)
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .next();
            if let Some(x) = admitted {
                let p = &x["packet"];
                let proto = if p["proto"] == "tcp" { 6 } else { 17 };
                let port = |k: &str| p[k].as_u64().unwrap() as u16;
                events.push_str(&event(
                    p["src"].as_str().unwrap(),
                    p["dst"].as_str().unwrap(),
                    proto,
                    port("sport"),
                    port("dport"),
                    "no_flow",
                ));
                events.push('\n');
                expected.push((name.clone(), value.to_json()));
            }
        }
        if events.is_empty() {
            continue;
        }
        let out = run(&["suggest", "--events", "-", "--site", &s, "--catalog-dir", &cat, "--json"], &events);
        assert!(out.status.success(), "suggest on {s}: {}", text(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let sets: Vec<&Value> = r["switched_off"].as_array().unwrap().iter().map(|x| &x["set"]).collect();
        named += expected.len();
        for (name, value) in expected {
            // An integer: the smallest value that reaches the port may be below the one tried.
            let named = |x: &&Value| {
                x[&name] == value || (value.is_i64() && x[&name].as_i64() <= value.as_i64() && x.as_object().unwrap().len() == 1)
            };
            assert!(sets.iter().any(named), "{s}: suggest names {name}: {value}: {sets:?}");
        }
    }
    println!("{variants} option changes diffed, {named} named back by suggest");
    assert!(variants >= 30 && named >= 10, "{variants} variants, {named} named");
}

const EVENTS_SITE: &str = BASE;

#[test]
fn suggest_groups_dropped_traffic() {
    let (dir, p) = sites(&[("s", EVENTS_SITE)]);
    let cat = dir.join("catalog").display().to_string();
    let mut lines = Vec::new();
    // Switched off: TURN (udp 3478 from the internet) and a fifth zone (tcp 7005 from the partner).
    for i in 0..4 {
        lines.push(event(&format!("203.0.113.{}", 1 + i % 2), "192.0.2.10", 17, 40000 + i, 3478, "no_flow"));
    }
    lines.push(event("198.51.100.7", "192.0.2.10", 6, 40000, 7005, "no_flow"));
    // Unbound: sip from port 5060 of two senders the partner role does not cover.
    lines.push(event("203.0.113.7", "192.0.2.10", 17, 5060, 5000, "no_flow"));
    lines.push(event("203.0.113.8", "192.0.2.10", 17, 5060, 5000, "no_flow"));
    // Forbidden: telnet from the internet.
    lines.push(event("8.8.8.8", "192.0.2.10", 6, 40000, 23, "deny_flow"));
    // From a source port the only sip flow of the partner does not take.
    lines.push(event("198.51.100.7", "192.0.2.10", 17, 5070, 5000, "no_flow"));
    // Undocumented, twice; ICMP; admitted now (dns from the lan).
    lines.push(event("8.8.4.4", "192.0.2.10", 17, 40000, 9999, "no_flow"));
    lines.push(event("8.8.4.4", "192.0.2.10", 17, 40000, 9999, "no_flow"));
    lines.push(event("8.8.4.4", "192.0.2.10", 1, 0, 0, "icmp"));
    lines.push(event("10.1.1.1", "192.0.2.10", 17, 40000, 53, "no_flow"));
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let f = file.display().to_string();
    let out = run(&["suggest", "--events", &f, "--site", &p[0], "--catalog-dir", &cat, "--json"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r["events"].as_u64(), r["packets"].as_u64(), r["tuples"].as_u64()), (Some(13), Some(13), Some(11)));
    assert_eq!(r["admitted"], json!({"packets": 1, "tuples": 1, "sources": 1}));
    assert_eq!(r["other"], json!({"icmp": 1}));

    let off = r["switched_off"].as_array().unwrap();
    let turn = off.iter().find(|x| x["set"] == json!({"turn": true})).expect("set turn: true");
    assert_eq!((turn["packets"].as_u64(), turn["sources"].as_u64()), (Some(4), Some(2)));
    assert_eq!(
        turn["flows"],
        json!([{"id": "alpha-turn", "protocol": "udp", "catalog": "alpha", "table": "Media", "description": "turn"}])
    );
    assert_eq!(turn["lines"], "options:\n  turn: true\n");
    // turn: true also drops alpha-turn-off (when turn: false): the engineer is told.
    assert_eq!(turn["also_removes"], 1);
    let zones = off.iter().find(|x| x["set"] == json!({"zones": 5})).expect("set zones: 5");
    assert_eq!(zones["flows"][0]["id"], "alpha-zones");

    let unbound = r["unbound"].as_array().unwrap();
    assert_eq!(unbound.len(), 1, "{unbound:?}");
    assert_eq!(unbound[0]["bind"], json!({"partner": ["203.0.113.0/24"]}));
    assert_eq!(unbound[0]["flows"][0]["id"], "alpha-partner-sip-5060");
    assert_eq!(unbound[0]["lines"], "roles:\n  partner: [198.51.100.0/24, 203.0.113.0/24]\n");

    let forbidden = r["forbidden"].as_array().unwrap();
    assert_eq!(forbidden[0]["flow"]["id"], "alpha-no-telnet");
    assert_eq!(forbidden[0]["top_ports"][0]["dport"], 23);

    let u = &r["undocumented"];
    assert_eq!((u["packets"].as_u64(), u["tuples"].as_u64()), (Some(3), Some(2)));
    assert_eq!(u["top_ports"][0], json!({"proto": "udp", "dport": 9999, "packets": 2, "sources": 1}));
    assert_eq!(u["top_ports"][1]["in_force"], json!(["alpha-partner-sip-5060 (from partner, source ports 5060)"]));
    assert_eq!(u["top_sources"][0], json!({"src": "8.8.4.4", "packets": 2}));

    // Each suggestion's example tuple is admitted by the site with its lines added.
    for x in off.iter().chain(unbound) {
        let mut site = EVENTS_SITE.to_string();
        for (k, v) in x["set"].as_object().unwrap() {
            let line = format!("  {k}: {v}\n");
            match site.lines().find(|l| l.starts_with(&format!("  {k}: "))).map(str::to_owned) {
                Some(old) => site = site.replace(&format!("{old}\n"), &line),
                None => site.push_str(&line),
            }
        }
        if let Some((role, cidrs)) = x["bind"].as_object().unwrap().iter().next() {
            let old = format!("  {role}: [198.51.100.0/24]");
            let list: Vec<String> = std::iter::once("198.51.100.0/24".to_string())
                .chain(cidrs.as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()))
                .collect();
            site = site.replace(&old, &format!("  {role}: [{}]", list.join(", ")));
        }
        let changed = dir.join("sites/changed.yaml");
        std::fs::write(&changed, site).unwrap();
        let out = run(&["explain", "--site", changed.to_str().unwrap(), "--catalog-dir", &cat], &format!("{}\n", x["example"]));
        let a: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(a["verdict"], "allow", "{}: {a}", x["lines"]);
    }

    // The text form.
    let out = run(&["suggest", "--events", &f, "--site", &p[0], "--catalog-dir", &cat], "");
    let t = text(&out.stdout);
    for needle in [
        "documented but switched off:",
        "set turn: true: 4 packets from 2 sources",
        "admitted by alpha-turn udp in alpha, table \"Media\"",
        "documented but unbound:",
        "bind 203.0.113.0/24 to role partner",
        "documented as forbidden:",
        "alpha-no-telnet tcp in alpha, table \"Prohibited\"",
        "documented in none of the selected catalogs: 3 packets from 2 sources",
        "udp 9999 (2 packets, 1 source)",
    ] {
        assert!(t.contains(needle), "{needle:?} in:\n{t}");
    }
}

#[test]
fn suggest_names_every_option_a_flow_needs() {
    // alpha-turn-off needs turn: false and release: upgraded; this site has neither.
    let site = BASE.replace("release: upgraded", "release: new") + "  turn: true\n";
    let (dir, p) = sites(&[("s", &site)]);
    let cat = dir.join("catalog").display().to_string();
    let e = event("198.51.100.9", "192.0.2.10", 17, 40000, 3479, "no_flow");
    let out = run(&["suggest", "--events", "-", "--site", &p[0], "--catalog-dir", &cat, "--json"], &e);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let off = r["switched_off"].as_array().unwrap();
    assert_eq!(off.len(), 1, "{off:?}");
    assert_eq!(off[0]["set"], json!({"turn": false, "release": "upgraded"}));
    assert_eq!(off[0]["flows"][0]["id"], "alpha-turn-off");
    let out = run(&["suggest", "--events", "-", "--site", &p[0], "--catalog-dir", &cat], &e);
    assert!(text(&out.stdout).contains("set release: upgraded and set turn: false (together)"), "{}", text(&out.stdout));
}

#[test]
fn suggest_bounds_memory_and_reports_bad_lines() {
    let (dir, p) = sites(&[("s", BASE)]);
    let cat = dir.join("catalog").display().to_string();
    let mut lines: Vec<String> = (0..5).map(|i| event("8.8.8.8", "192.0.2.10", 17, 40000 + i, 9999, "no_flow")).collect();
    lines.push(r#"{"src": "8.8.8.8", "dst": "192.0.2.10", "proto": 17, "sport": 1, "dport": 70000, "reason": "no_flow"}"#.into());
    lines.push("not json".into());
    lines.push(r#"{"src": "8.8.8.300", "dst": "192.0.2.10", "proto": 17, "sport": 1, "dport": 7, "reason": "no_flow"}"#.into());
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let f = file.display().to_string();
    let out = run(&["suggest", "--events", &f, "--site", &p[0], "--catalog-dir", &cat, "--json", "--max-tuples", "2"], "");
    assert!(!out.status.success(), "bad lines fail the run");
    let err = text(&out.stderr);
    for needle in [
        "events.jsonl:6:66: field \"dport\": 70000 is not an integer 0-65535",
        "events.jsonl:7:2: not valid JSON: expected ident\n",
        "events.jsonl:8:2: field \"src\"",
        "3 bad event line(s)",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }
    let r: Value = serde_json::from_slice(&out.stdout).expect("the report is still printed");
    assert_eq!((r["tuples"].as_u64(), r["cap_reached"].as_bool(), r["not_analysed"].as_u64()), (Some(2), Some(true), Some(3)));
    let out = run(&["suggest", "--events", &f, "--site", &p[0], "--catalog-dir", &cat, "--max-tuples", "2"], "");
    assert!(text(&out.stdout).contains("the cap of 2 distinct tuples was reached: 3 packets"), "{}", text(&out.stdout));
    // Neither input given: a usage error.
    let out = run(&["suggest", "--site", &p[0]], "");
    assert_eq!(out.status.code(), Some(2));
}

/// The site settings of vcs-expressway-nat.yaml against the example site at its defaults:
/// `source-ports` is a setting with flips at the edge port and the cause of every flow whose
/// source ports it widens; the binding with exceptions is a role change by its effective
/// prefixes, with allow -> deny flips from the excepted addresses; `explain` agrees with all.
#[test]
fn diff_of_site_settings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let (from, site) = (root.join("sites/vcs-expressway.yaml"), root.join("sites/vcs-expressway-nat.yaml"));
    let (from, site, cat) = (from.display().to_string(), site.display().to_string(), root.join("catalog").display().to_string());
    let (code, d) = diff_json(&root, &from, &site);
    assert_eq!(code, 1);
    let setting = d["settings"].as_array().unwrap().iter().find(|s| s["name"] == "source-ports").expect("source-ports").clone();
    assert_eq!((&setting["old"], &setting["new"]), (&json!("as-documented"), &json!("any")));
    let first = &setting["flips"][0];
    assert_eq!(
        (&first["packet"]["sport"], &first["old"]["verdict"], &first["new"]["verdict"]),
        (&json!(1023), &json!("deny"), &json!("allow"))
    );
    let changed = entries(&d, "inbound", "changed");
    let https = changed.iter().find(|f| f["id"] == "vcs-admin-https").expect("vcs-admin-https changed");
    assert_eq!(https["changes"][0], json!({"field": "sport", "old": "1024-65535", "new": "any"}));
    assert_eq!(https["causes"], json!([{"kind": "setting", "setting": "source-ports", "old": "as-documented", "new": "any"}]));
    let role = d["roles"].as_array().unwrap().iter().find(|r| r["role"] == "any-ip").expect("any-ip changed");
    assert_eq!(role["removed"], json!(["0.0.0.0/0", "::/0"]));
    assert!(role["added"].as_array().unwrap().contains(&json!("11.0.0.0/8")));
    assert!(d["flips"]["allow_to_deny"].as_u64().unwrap() > 0, "{}", d["flips"]);
    let excepted =
        flips(&d).into_iter().any(|(p, o, n)| p["src"] == "10.0.0.1" && o["verdict"] == "allow" && n["verdict"] == "deny");
    assert!(excepted, "a flip from an address of the except 10.0.0.0/8");
    assert!(flips_agree_with_explain(&d, &from, &site, &cat) > 0);
}

/// A port the site configures (`{ port: OPTION }`): `suggest` names the option set to the dropped
/// port itself (MeetingPlace 7.0's SOCKS proxy on 1081 instead of 1080).
#[test]
fn suggest_names_a_configured_port() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let cat = root.join("catalog").display().to_string();
    let site = root.join("vectors/sites/readings-meetingplace-7.0.yaml").display().to_string();
    let events = event("10.10.1.10", "192.0.2.80", 6, 40000, 1081, "no_flow");
    let out = run(&["suggest", "--events", "-", "--site", &site, "--catalog-dir", &cat, "--json"], &events);
    assert!(out.status.success(), "suggest: {}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sets: Vec<&Value> = r["switched_off"].as_array().unwrap().iter().map(|x| &x["set"]).collect();
    assert!(sets.iter().any(|x| x["mp7-socks-port"] == 1081), "{sets:?}");
}
