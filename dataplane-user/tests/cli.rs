//! The policy subcommands through the real binary: output formats other tools parse, and bad
//! input on `explain`'s stdin.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

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

/// `explain` over JSON lines some of which are bad: the run fails; its output, log and answers.
fn explain_failing(site: &str, cat: &str, input: &str) -> (String, String, Vec<Value>) {
    let out = run(&["explain", "--site", site, "--catalog-dir", cat], input);
    assert!(!out.status.success(), "bad lines must fail the run");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let answers = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    (stdout, String::from_utf8_lossy(&out.stderr).to_string(), answers)
}

fn dirs() -> (String, String) {
    let d = common::data();
    (d.join("catalog").display().to_string(), d.join("sites/test.yaml").display().to_string())
}

#[test]
fn explain_lines_and_bad_lines() {
    let (cat, site) = dirs();
    let input = [
        r#"{"src": "10.0.0.5", "dst": "192.0.2.10", "proto": "tcp", "sport": 40000, "dport": 443}"#,
        r#"{"src": "10.0.0.5", "dst": "192.0.2.10", "proto": "tcp", "sport": 40000"#,
        r#"{"src": "10.0.0.300", "dst": "192.0.2.10", "proto": "tcp", "sport": 1, "dport": 443}"#,
        "",
        r#"{"src": "8.8.8.8", "dst": "192.0.2.10", "proto": 6, "sport": 1, "dport": 23}"#,
        r#"{"src": "8.8.8.8", "dst": "192.0.2.10", "proto": "tcp", "sport": 1}"#,
        r#"{"src": "8.8.8.8", "dst": "192.0.2.10", "proto": "icmp"}"#,
        r#"{"src": "8.8.8.8", "dst": "192.0.2.10", "proto": "gre", "dport": 1}"#,
        r#"{"src": "8.8.8.8", "dst": "192.0.2.10", "proto": 47}"#,
        r#"{"src": "8.8.8.8", "dst": "192.0.2.99", "proto": "udp", "sport": 1, "dport": 70000}"#,
        r#"{"src": "fd00::1", "dst": "2001:db8::10", "proto": "udp", "sport": 1, "dport": 53}"#,
    ]
    .join("\n");
    let (stdout, stderr, answers) = explain_failing(&site, &cat, &input);
    assert_eq!(answers.len(), 5, "{stdout}");
    assert_eq!(answers[0]["verdict"], "allow");
    assert_eq!(answers[0]["flow"], "alpha-admin-https");
    assert_eq!(answers[0]["reason"], "flow");
    assert_eq!(answers[1]["verdict"], "deny");
    assert_eq!(answers[1]["flow"], "alpha-no-telnet");
    assert_eq!(answers[1]["reason"], "deny_flow");
    assert_eq!(answers[2]["reason"], "icmp_control");
    assert_eq!(answers[2]["flow"], Value::Null);
    assert_eq!(answers[3]["reason"], "no_flow");
    assert_eq!(answers[4]["flow"], "alpha-lan-dns");
    for (line, what) in
        [(2, "not valid JSON"), (3, "\"src\""), (6, "\"dport\" is required"), (8, "\"proto\""), (10, "\"dport\": 70000")]
    {
        assert!(stderr.contains(&format!("stdin:{line}: ")), "line {line} in: {stderr}");
        assert!(stderr.contains(what), "{what} in: {stderr}");
    }
}

#[test]
fn explain_one_packet() {
    let (cat, site) = dirs();
    let args = [
        "explain",
        "--site",
        &site,
        "--catalog-dir",
        &cat,
        "--src",
        "198.51.100.7",
        "--dst",
        "192.0.2.10",
        "--proto",
        "tcp",
        "--dport",
        "7002",
    ];
    let out = run(&args, "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (v["verdict"].as_str(), v["flow"].as_str(), v["reason"].as_str()),
        (Some("allow"), Some("alpha-zones"), Some("flow"))
    );
}

#[test]
fn listings() {
    let (cat, site) = dirs();
    let out = run(&["catalogs", "--json", "--catalog-dir", &cat], "");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["name"], "alpha");
    assert_eq!(v[0]["document"], "alpha.txt");
    assert!(v[0]["path"].as_str().is_some_and(|p| p.ends_with("alpha.yaml")));
    let release = v[0]["option_details"].as_array().expect("option_details").iter().find(|o| o["name"] == "release");
    let release = release.expect("release option");
    assert_eq!((release["values"].clone(), release["default"].as_str()), (serde_json::json!(["new", "upgraded"]), Some("new")));
    assert_eq!(release["description"], "ephemeral media range");
    let zones = v[0]["option_details"].as_array().and_then(|o| o.iter().find(|o| o["name"] == "zones")).expect("zones");
    assert_eq!((zones["integer"].clone(), zones["default"].as_i64()), (serde_json::json!({"min": 1, "max": 10}), Some(1)));
    let turn = v[0]["option_details"].as_array().and_then(|o| o.iter().find(|o| o["name"] == "turn")).expect("turn");
    assert_eq!((turn["bool"].as_bool(), turn["default"].as_bool()), (Some(true), Some(false)));

    let out = run(&["roles", "--json", "--catalog-dir", &cat, "--catalog", "beta"], "");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: Vec<&str> = v.as_array().expect("array").iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["server", "lan", "db"]);
    assert_eq!(v[0]["any"], false);
    assert!(v[0]["aliases"].is_array());

    let out = run(&["flows", "--json", "--catalog-dir", &cat], "");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let media = v.as_array().expect("array").iter().find(|f| f["id"] == "alpha-media").expect("alpha-media");
    // Options at their defaults: release new.
    assert_eq!(media["dport"], "30000-35999");
    assert_eq!(media["sport"], "any");
    assert_eq!((media["from"].as_str(), media["to"].as_str()), (Some("internet"), Some("server")));
    assert_eq!(media["protocol"], "udp");
    assert_eq!(media["document"], "alpha.txt");
    assert_eq!(media["table"], "Media");
    let dns = v.as_array().expect("array").iter().find(|f| f["id"] == "alpha-lan-dns").expect("dns");
    assert_eq!(dns["protocol"], serde_json::json!(["tcp", "udp"]));
    let zones = v.as_array().expect("array").iter().find(|f| f["id"] == "alpha-zones").expect("zones");
    assert_eq!(zones["dport"], "7001");

    let out = run(&["compile", "--site", &site, "--catalog-dir", &cat, "--json"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["summary"]["slots"], 14);
    assert!(v["summary"]["maps"].as_array().is_some_and(|m| m.iter().any(|m| m["name"] == "POLICY:port_tables")));
}

#[test]
fn compile_error_exit() {
    let dir = common::scratch();
    let site = dir.join("sites/s.yaml");
    std::fs::write(&site, "name: s\ncatalogs: [alpha]\nprotect: [nobody]\n").expect("write");
    let out = run(&["compile", "--site", &site.display().to_string()], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The catalog directory is found next to the site (`sites/../catalog`).
    assert!(err.contains("s.yaml:3:11: protect[0]: unknown role `nobody`"), "{err}");
}

fn outbound_dirs() -> (String, String) {
    let d = common::data().join("outbound");
    (d.join("catalog").display().to_string(), d.join("sites/outbound.yaml").display().to_string())
}

#[test]
fn explain_outbound() {
    let (cat, site) = outbound_dirs();
    let input = [
        r#"{"direction": "out", "src": "192.0.2.10", "dst": "198.51.100.53", "proto": "udp", "sport": 40000, "dport": 53}"#,
        r#"{"direction": "out", "src": "192.0.2.10", "dst": "198.51.100.89", "proto": "tcp", "dport": 389}"#,
        r#"{"direction": "out", "src": "192.0.2.10", "dst": "198.51.100.89", "proto": "udp", "dport": 389}"#,
        r#"{"direction": "out", "src": "192.0.2.10", "dst": "198.51.100.25", "proto": "tcp", "dport": 25}"#,
        r#"{"direction": "in", "src": "10.0.0.5", "dst": "192.0.2.10", "proto": "tcp", "dport": 443}"#,
        r#"{"src": "198.51.100.53", "dst": "192.0.2.10", "proto": "udp", "sport": 53, "dport": 40000}"#,
        r#"{"direction": "sideways", "src": "192.0.2.10", "dst": "198.51.100.53", "proto": "udp", "dport": 53}"#,
        r#"{"direction": 1, "src": "192.0.2.10", "dst": "198.51.100.53", "proto": "udp", "dport": 53}"#,
    ]
    .join("\n");
    let (stdout, stderr, a) = explain_failing(&site, &cat, &input);
    assert_eq!(a.len(), 6, "{stdout}");
    let brief = |v: &Value| {
        (
            v["verdict"].as_str().map(str::to_owned),
            v["flow"].as_str().map(str::to_owned),
            v["reason"].as_str().map(str::to_owned),
            v["slot"].as_u64(),
        )
    };
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(brief(&a[0]), (s("allow"), s("dir-dns"), s("outbound"), Some(0)));
    assert_eq!(brief(&a[1]), (s("allow"), s("dir-ldap"), s("outbound"), Some(1)));
    assert_eq!(brief(&a[2]), (s("deny"), None, s("no_flow"), None));
    assert_eq!(brief(&a[3]), (s("deny"), s("dir-no-smtp"), s("deny_flow"), Some(3)));
    assert_eq!(a[0]["direction"], "out");
    assert_eq!(a[0]["catalog"], "directory");
    // Inbound answers are unchanged (no "direction" key).
    assert_eq!(brief(&a[4]), (s("allow"), s("dir-clients-https"), s("flow"), Some(0)));
    assert!(a[4].get("direction").is_none());
    assert_eq!(brief(&a[5]), (s("deny"), None, s("no_flow"), None));
    for (line, what) in [(7, "\"direction\": `sideways` is not in or out"), (8, "\"direction\" must be a string")] {
        assert!(stderr.contains(&format!("stdin:{line}: ")) && stderr.contains(what), "line {line}: {what} in: {stderr}");
    }
}

#[test]
fn explain_outbound_one_packet() {
    let (cat, site) = outbound_dirs();
    let base = [
        "explain",
        "--site",
        &site,
        "--catalog-dir",
        &cat,
        "--src",
        "2001:db8::10",
        "--dst",
        "2001:db8:53::53",
        "--proto",
        "udp",
        "--dport",
        "53",
    ];
    let json = |args: &[&str]| -> Value {
        let out = run(args, "");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let v = json(&[&base[..], &["--direction", "out"]].concat());
    assert_eq!(
        (v["verdict"].as_str(), v["flow"].as_str(), v["reason"].as_str()),
        (Some("allow"), Some("dir-dns"), Some("outbound"))
    );
    // The same packet inbound: the peer is not a protected address.
    let v = json(&base);
    assert_eq!(v["reason"], "unprotected");
    let v = json(&[&base[..], &["--direction", "out", "--sport", "53"]].concat());
    assert_eq!((v["verdict"].as_str(), v["reason"].as_str()), (Some("deny"), Some("no_flow")));
    let out = run(&[&base[..], &["--direction", "up"]].concat(), "");
    assert!(!out.status.success());
}

/// The site settings through the binary: `roles --site` shows the effective binding, `explain`
/// says `source-ports: any` is in force and which exception leaves a source out.
#[test]
fn site_settings_in_roles_and_explain() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let site = root.join("policies/sites/vcs-expressway-nat.yaml").display().to_string();
    let out = run(&["roles", "--site", &site, "--json"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let role = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("role {id}")).clone();
    let any = role("any-ip");
    assert_eq!(any["binding"]["except"], serde_json::json!(["10.0.0.0/8", "fd00::/8"]));
    assert_eq!(any["binding"]["except_roles"], serde_json::json!(["vcs-control"]));
    let effective: Vec<&str> = any["binding"]["effective"].as_array().expect("list").iter().filter_map(Value::as_str).collect();
    assert!(effective.contains(&"11.0.0.0/8") && effective.contains(&"8.0.0.0/7"), "{effective:?}");
    assert!(!effective.iter().any(|c| c.starts_with("10.") || *c == "0.0.0.0/0"), "{effective:?}");
    assert_eq!(role("vcs-expressway")["binding"]["protected"], true);
    // Without --site, the listing has no bindings (its keys are unchanged).
    let out = run(&["roles", "--json"], "");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(rows.iter().all(|r| r.get("binding").is_none()));

    let input = [
        r#"{"src": "10.1.2.3", "dst": "192.0.2.10", "proto": "udp", "sport": 5060, "dport": 5060}"#,
        r#"{"src": "11.0.0.0", "dst": "192.0.2.10", "proto": "udp", "sport": 1023, "dport": 5060}"#,
        r#"{"src": "2001:db8:10:1::10", "dst": "2001:db8:1::10", "proto": "udp", "sport": 5060, "dport": 5060}"#,
    ]
    .join("\n");
    let out = run(&["explain", "--site", &site], &input);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> =
        out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).expect("JSON")).collect();
    assert_eq!(answers.len(), 3);
    assert_eq!((&answers[0]["verdict"], &answers[0]["reason"]), (&"deny".into(), &"no_flow".into()));
    assert_eq!(answers[0]["src_excepted"], serde_json::json!([{"role": "any-ip", "by": "10.0.0.0/8"}]));
    assert_eq!(answers[1]["flow"], "vcs-sip-public-in-udp");
    assert_eq!(answers[1]["source_ports"], "any");
    assert!(answers[1].get("src_excepted").is_none());
    assert_eq!(answers[2]["src_excepted"], serde_json::json!([{"role": "any-ip", "by": "role vcs-control"}]));
    // At the defaults the answer has none of these keys.
    let site = root.join("policies/sites/vcs-expressway.yaml").display().to_string();
    let out = run(&["explain", "--site", &site], &input);
    let first: Value = serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().expect("a line")).expect("JSON");
    assert_eq!(first["verdict"], "allow");
    assert!(first.get("source_ports").is_none() && first.get("src_excepted").is_none(), "{first}");
}

/// `dataplane flows --json | head`: the reader goes away after a few bytes; the command ends
/// quietly (SIGPIPE, as Unix tools do), without a panic on the failed write.
#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    // The repository's catalogs: a listing far larger than a pipe holds.
    let cat = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(["flows", "--json", "--catalog-dir"])
        .arg(&cat)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs dataplane");
    let mut head = [0u8; 16];
    child.stdout.take().expect("stdout").read_exact(&mut head).expect("the listing starts");
    let out = child.wait_with_output().expect("waits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success() || out.status.signal() == Some(13), "{:?}: {stderr}", out.status);
}
