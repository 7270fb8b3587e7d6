//! The rollout procedure end to end, with the real daemon over veth: the end-to-end site (TURN
//! off) enforced in monitor mode, real datagrams to the TURN port, `dataplane events --json`,
//! then `dataplane suggest` names the option and value that admit them (from the file and
//! live); `dataplane diff` against the running daemon lists exactly the flows that option adds;
//! the change reloaded, `run` logs the diff's summary and `diff` finds nothing left.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use dataplane::lab::netns::{udp_send, Lab, Servers};
use dataplane::policy::{load_site_from, OptValue};
use dataplane_tests::daemon::{dataplane_bin, root, Daemon};
use serde_json::Value;

const TURN: &str = "10.201.0.1:3478";
const DATAGRAMS: usize = 6;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `dataplane ARGS` with the repository's catalogs, as the daemon has them.
fn dataplane(args: &[&str]) -> Output {
    Command::new(dataplane_bin())
        .args(args)
        .env("DATAPLANE_CATALOG_DIR", root().join("policies/catalog"))
        .output()
        .expect("runs dataplane")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The flows (id/protocol) that `when: {turn: true}` alone puts in force on the end-to-end
/// site, inbound (to the protected Expressway) and outbound (from it), read from the catalog.
fn turn_flows(site: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let p = load_site_from(site, &root().join("policies/catalog")).unwrap();
    let protected: Vec<&str> = p.protected().map(|r| r.id.as_str()).collect();
    let (mut inbound, mut outbound) = (BTreeSet::new(), BTreeSet::new());
    for f in p.catalogs.iter().flat_map(|c| &c.flows) {
        if f.when.0 != [("turn".to_string(), vec![OptValue::Bool(true)])] {
            continue;
        }
        for proto in &f.protocols {
            let id = format!("{}/{}", f.id, proto.name());
            if protected.contains(&f.to.as_str()) {
                inbound.insert(id.clone());
            }
            if protected.contains(&f.from.as_str()) {
                outbound.insert(id);
            }
        }
    }
    (inbound, outbound)
}

fn ids(d: &Value, dir: &str, kind: &str) -> BTreeSet<String> {
    d[dir][kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}/{}", f["id"].as_str().unwrap(), f["protocol"].as_str().unwrap()))
        .collect()
}

/// The `set turn: true` suggestion of a `suggest --json` report.
fn turn_suggestion(r: &Value) -> &Value {
    r["switched_off"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["set"] == serde_json::json!({"turn": true}))
        .unwrap_or_else(|| panic!("suggest names turn: true: {r:#}"))
}

#[test]
fn monitor_suggest_diff_enforce() {
    let dir = std::env::temp_dir().join(format!("dataplane-rollout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (site, new): (PathBuf, PathBuf) = (dir.join("site.yaml"), dir.join("site-turn.yaml"));
    let e2e = std::fs::read_to_string(root().join("tests/sites/e2e.yaml")).unwrap();
    assert!(!e2e.contains("options:"), "the end-to-end site leaves TURN at its default, off");
    std::fs::write(&site, &e2e).unwrap();
    std::fs::write(&new, format!("{e2e}options:\n  turn: true\n")).unwrap();

    let lab = Lab::new("dpt-ro", &["10.201.0.1/24"], &["10.201.0.2/24"]).unwrap();
    let daemon = Daemon::start_with(&lab.server, &site, &["--monitor"]);
    let servers = Servers::start(&lab.server, &[], &[sa(TURN)]).unwrap();
    let client = "10.201.0.2".parse().unwrap();

    // 1. Monitor: the TURN datagrams pass (monitor mode) and are reported as drops.
    let follow = Command::new(dataplane_bin())
        .args(["events", "--json", "--count", &DATAGRAMS.to_string(), "--timeout", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    udp_send(&lab.client, client, sa(TURN), DATAGRAMS).unwrap();
    let events = follow.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&events.stdout).into_owned();
    assert_eq!(lines.lines().filter(|l| l.contains("\"dport\":3478")).count(), DATAGRAMS, "{lines}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(servers.udp_received[0].load(Ordering::Relaxed), DATAGRAMS as u64, "monitor mode drops nothing");
    let file = dir.join("events.jsonl");
    std::fs::write(&file, &lines).unwrap();

    // 2. Suggest, from the file and against the enforced policy: set turn: true.
    let r = json(&dataplane(&["suggest", "--events", file.to_str().unwrap(), "--json"]));
    let turn = turn_suggestion(&r);
    assert_eq!((turn["packets"].as_u64(), turn["sources"].as_u64()), (Some(DATAGRAMS as u64), Some(1)));
    assert_eq!(turn["flows"][0]["id"], "vcs-ice-turn-control");
    assert_eq!(turn["flows"][0]["catalog"], "vcs-x8.2");
    assert_eq!(turn["flows"][0]["table"], "SIP – additional ports for ICE");
    assert_eq!(turn["lines"], "options:\n  turn: true\n");
    let text = dataplane(&["suggest", "--events", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("set turn: true: 6 packets from 1 source"), "{text}");
    assert!(text.contains("monitor mode"), "the header says what is enforced: {text}");

    // ... and live, following the daemon for a few seconds.
    let live = Command::new(dataplane_bin())
        .args(["suggest", "--follow", "3", "--json"])
        .env("DATAPLANE_CATALOG_DIR", root().join("policies/catalog"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    udp_send(&lab.client, client, sa(TURN), 3).unwrap();
    let r = json(&live.wait_with_output().unwrap());
    assert_eq!(turn_suggestion(&r)["packets"], 3);

    // 3. Diff against the running daemon: exactly the flows `turn: true` adds, nothing else.
    let out = dataplane(&["diff", "--site", new.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let d = json(&out);
    let (inbound, outbound) = turn_flows(&new);
    assert!(!inbound.is_empty() && !outbound.is_empty());
    assert_eq!(ids(&d, "inbound", "added"), inbound);
    assert_eq!(ids(&d, "outbound", "added"), outbound);
    for (dir, kind) in [("inbound", "removed"), ("inbound", "changed"), ("outbound", "removed"), ("outbound", "changed")] {
        assert!(ids(&d, dir, kind).is_empty(), "{dir} {kind}: {:?}", ids(&d, dir, kind));
    }
    let turn_in = d["inbound"]["added"].as_array().unwrap().iter().find(|f| f["id"] == "vcs-ice-turn-control").unwrap();
    assert_eq!(turn_in["causes"], serde_json::json!([{"kind": "option", "option": "turn", "old": false, "new": true}]));
    // The tuple the engineer saw dropped flips from deny to allow.
    assert!(turn_in["flips"].as_array().unwrap().iter().any(|x| x["packet"]["dport"] == 3478 && x["new"]["verdict"] == "allow"));

    // 4. Enforce the change: the reload logs the diff in one line; nothing differs any more.
    std::fs::copy(&new, &site).unwrap();
    let line = daemon.wait_log_line("policy diff:").expect("the reload logs its diff");
    assert!(
        line.contains(&format!("inbound +{} -0 ~0 flows, outbound +{} -0 ~0; turn false -> true", inbound.len(), outbound.len())),
        "{line}"
    );
    let out = dataplane(&["diff", "--site", new.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let r = json(&dataplane(&["suggest", "--events", file.to_str().unwrap(), "--json"]));
    assert_eq!(r["admitted"]["packets"], DATAGRAMS as u64, "the enforced site admits them now");
    assert!(daemon.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}
