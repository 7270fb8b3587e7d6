//! `dataplane export --format nft`: the ruleset's layout, every shipped site accepted by
//! `nft -c` (when nft is installed), and the command line. The real-packet comparison with the
//! XDP program is `tests/tests/nft_differential.rs` (kernel).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use dataplane::export::nft::{render, NftOptions};
use dataplane::policy::{load_site, load_site_from};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sites() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("policies/sites"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v.push(root().join("tests/sites/e2e.yaml"));
    v
}

fn chain(text: &str) -> Vec<&str> {
    let start = text.find("chain inbound {").expect("chain");
    text[start..].lines().skip(2).map(str::trim).take_while(|l| *l != "}").collect()
}

/// `nft -c -f FILE`; None when nft is not installed.
fn nft_check(text: &str, name: &str) -> Option<Result<(), String>> {
    Command::new("nft").arg("--version").output().ok()?;
    let file = std::env::temp_dir().join(format!("dataplane-export-{}-{name}.nft", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let out = Command::new("nft").args(["-c", "-f"]).arg(&file).output().unwrap();
    let _ = std::fs::remove_file(&file);
    Some(if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) })
}

#[test]
fn nft_export_layout_of_the_test_site() {
    let p = common::test_policy();
    let e = render(&p, &NftOptions::default()).unwrap();
    let t = &e.text;
    // Atomic replacement: create (so that delete cannot fail), delete, define.
    let head: Vec<&str> = t.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).take(3).collect();
    assert_eq!(head, ["table inet dataplane", "delete table inet dataplane", "table inet dataplane {"]);
    assert!(t.contains("type filter hook prerouting priority raw; policy accept;"));
    assert!(t.contains("stateless") && t.contains("NOT exported: replies"), "header explains");
    let rules = chain(t);
    assert_eq!(rules.len(), e.rules);
    assert_eq!(rules[0], "iif \"lo\" accept comment \"local traffic never crosses XDP\"");
    assert!(rules[1].starts_with("ip daddr != @protected_v4 counter accept"));
    assert!(rules[2].starts_with("ip6 daddr != @protected_v6 counter accept"));
    // icmp-echo: allow: echo request and reply (types 8 and 0; 128 and 129) pass with the errors.
    assert!(rules.iter().any(|r| r.starts_with("meta nfproto ipv4 icmp type { 0, 3, 8, 11, 12 }")), "{rules:?}");
    assert!(rules.iter().any(|r| r.starts_with("meta nfproto ipv6 icmpv6 type { 1, 2, 3, 4, 128, 129, 133,")), "{rules:?}");
    assert_eq!(*rules.last().unwrap(), "counter drop comment \"no_flow\"");
    // Deny flows come before every allow flow.
    let flow_rules: Vec<&&str> = rules.iter().filter(|r| r.contains("@") && !r.contains("protected_v")).collect();
    assert_eq!(flow_rules.len(), e.flow_rules);
    let first_accept = flow_rules.iter().position(|r| r.contains(" accept ")).unwrap();
    let last_drop = flow_rules.iter().rposition(|r| r.contains(" drop ")).unwrap();
    assert!(p.flows.iter().any(|f| f.deny));
    assert!(last_drop < first_accept, "deny flows first:\n{}", rules.join("\n"));
    // Every flow in force whose roles have addresses of a common family is covered.
    for f in &p.flows {
        let fams = |r: usize| p.roles[r].cidrs.iter().map(|c| c.v6).collect::<Vec<_>>();
        let common_family = fams(f.from).iter().any(|v| fams(f.to).contains(v));
        if common_family && !f.dport.is_empty() && !f.sport.is_empty() {
            assert!(t.contains(&f.info.id), "flow {} missing", f.info.id);
        }
    }
    // lan's 10.0.0.5 host is inside 10.0.0.0/8: no overlapping interval elements.
    assert!(!t.contains("10.0.0.0/8, 10.0.0.5"));
    if let Some(r) = nft_check(t, "test") {
        r.unwrap();
    }
}

#[test]
fn nft_export_switches_and_interfaces() {
    let dir = common::scratch();
    let site = dir.join("sites/s.yaml");
    std::fs::write(&site, format!("{}options:\n  unprotected: drop\n", common::GOOD_SITE)).unwrap();
    let p = load_site_from(&site, &dir.join("catalog")).unwrap();
    let e = render(&p, &NftOptions { table: "fw".into(), interfaces: vec!["eth0".into(), "eth1".into()] }).unwrap();
    let rules = chain(&e.text);
    assert!(e.text.contains("table inet fw {") && e.text.contains("delete table inet fw"));
    assert_eq!(rules[0], "iifname != { \"eth0\", \"eth1\" } accept comment \"not an enforced interface\"");
    assert!(rules[1].starts_with("ip daddr != @protected_v4 counter drop"));
    assert!(!rules.iter().any(|r| r.contains("echo-request")), "echo denied by default");
    // No IPv6 address protected: the set is empty, every IPv6 packet is unprotected.
    assert!(e.text.contains("set protected_v6 {"));
    if let Some(r) = nft_check(&e.text, "switches") {
        r.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nft_export_of_every_site_is_valid_nft() {
    let mut report = vec![];
    for s in sites() {
        let p = load_site(&s).unwrap();
        let e = render(&p, &NftOptions::default()).unwrap();
        report.push(format!(
            "{}: {} flows in force, {} rules ({} for flows), {} sets",
            p.name,
            p.flows.len(),
            e.rules,
            e.flow_rules,
            e.sets
        ));
        assert!(e.flow_rules <= 2 * p.flows.len());
        if let Some(r) = nft_check(&e.text, &p.name) {
            r.unwrap_or_else(|err| panic!("{}: nft -c refused the export:\n{err}", s.display()));
        }
    }
    println!("{}", report.join("\n"));
}

#[test]
fn nft_export_command_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(["export", "--format", "nft", "--site"])
        .arg(root().join("policies/sites/vcs-expressway.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("#!/usr/sbin/nft -f\n"));
    assert!(text.contains("set vcs_expressway_v4 {") && text.contains("elements = { 192.0.2.10 }"));
    assert!(text.contains("tcp dport 5269 counter accept comment \"vcs-xmpp-fed-in\""));
    let bad = Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(["export", "--format", "iptables", "--site", "x.yaml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
