//! End to end: `dataplane run` enforces a real site on the server end of a veth pair, real
//! clients in allowed and other roles connect, `dataplane stats` (another process, reading the
//! pinned maps) shows the matching counts, a real SIP client (sipp) gets through from an allowed
//! role and not from another, and SIGTERM detaches everything.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{atomic::Ordering, mpsc},
    time::Duration,
};

use dataplane::netns::{tcp_exchange, udp_send, Lab, Servers, SERVER_IF};
use serde_json::Value;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `dataplane` binary `cargo xtask test` built (DATAPLANE_BIN).
fn dataplane_bin() -> PathBuf {
    let bin = std::env::var_os("DATAPLANE_BIN").map(PathBuf::from).unwrap_or_else(|| root().join("target/debug/dataplane"));
    assert!(bin.exists(), "{} is missing: run the tests with `cargo xtask test`", bin.display());
    bin
}

/// `dataplane run` inside a network namespace; SIGTERM on drop.
struct Daemon(Child);

impl Daemon {
    fn start(ns: &str, site: &Path) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(dataplane_bin())
            .args(["run", "--site"])
            .arg(site)
            .args(["--iface", SERVER_IF])
            .env("DATAPLANE_CATALOG_DIR", root().join("policies/catalog"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting dataplane run");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("dataplane run: {line}");
                let _ = tx.send(line);
            }
        });
        let status = rx.recv_timeout(Duration::from_secs(20)).expect("no status line from dataplane run");
        assert!(status.starts_with(&format!("{SERVER_IF}: enforcing")) && status.contains("native mode"), "status line: {status}");
        Self(child)
    }

    fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let status = self.0.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn stats() -> Value {
    let out = Command::new(dataplane_bin()).args(["stats", "--json"]).output().unwrap();
    assert!(out.status.success(), "dataplane stats: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn flow_packets(s: &Value, id: &str, proto: &str) -> u64 {
    s["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id && f["protocol"] == proto)
        .map(|f| f["packets"].as_u64().unwrap())
        .sum()
}

fn reason_packets(s: &Value, verdict: &str, reason: &str) -> u64 {
    s["reasons"].as_array().unwrap().iter().find(|r| r["verdict"] == verdict && r["reason"] == reason).unwrap()["packets"]
        .as_u64()
        .unwrap()
}

/// One SIP OPTIONS from `src` to the server's port 5060 over `transport` (u1 or t1), answered
/// by a sipp responder in the server namespace. True when the 200 OK came back.
fn sip_options(lab: &Lab, src: &str, transport: &str) -> bool {
    let sip = root().join("tests/sip");
    let mut uas = Command::new("ip")
        .args(["netns", "exec", &lab.server, "sipp", "-sf"])
        .arg(sip.join("options-uas.xml"))
        .args(["-i", "10.201.0.1", "-p", "5060", "-t", transport, "-m", "1", "-nostdin", "-timeout", "6"])
        .stdout(Stdio::null())
        .spawn()
        .expect("sipp (Debian package sip-tester)");
    std::thread::sleep(Duration::from_millis(400));
    let uac = Command::new("ip")
        .args(["netns", "exec", &lab.client, "sipp", "10.201.0.1:5060", "-sf"])
        .arg(sip.join("options-uac.xml"))
        .args(["-i", src, "-t", transport, "-m", "1", "-nostdin", "-timeout", "4"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let _ = uas.kill();
    let _ = uas.wait();
    uac.success()
}

#[test]
fn run_enforces_and_stats_counts_real_traffic() {
    let lab = Lab::new(
        "dpt-e2e",
        &["10.201.0.1/24", "fd00:201::1/64"],
        &["10.201.0.2/24", "10.201.0.3/24", "10.201.0.9/24", "fd00:201::2/64"],
    )
    .unwrap();
    let daemon = Daemon::start(&lab.server, &root().join("tests/sites/e2e.yaml"));

    let servers = Servers::start(
        &lab.server,
        &[sa("10.201.0.1:22"), sa("[fd00:201::1]:443")],
        &[sa("10.201.0.1:5060"), sa("10.201.0.1:161")],
    )
    .unwrap();
    let wait = Duration::from_secs(2);
    let (mgmt, other_any, nobody) = ("10.201.0.2".parse().unwrap(), "10.201.0.3".parse().unwrap(), "10.201.0.9".parse().unwrap());

    // TCP: ssh and https from the management PC complete; ssh from elsewhere times out.
    assert!(tcp_exchange(&lab.client, mgmt, sa("10.201.0.1:22"), wait).unwrap(), "ssh from the management PC");
    assert!(tcp_exchange(&lab.client, "fd00:201::2".parse().unwrap(), sa("[fd00:201::1]:443"), wait).unwrap(), "https over IPv6");
    assert!(!tcp_exchange(&lab.client, other_any, sa("10.201.0.1:22"), Duration::from_millis(700)).unwrap(), "ssh from any-ip");

    // UDP: SIP 5060 from any-ip arrives, from an address in no role it does not; SNMP is off.
    let before = stats();
    udp_send(&lab.client, mgmt, sa("10.201.0.1:5060"), 10).unwrap();
    udp_send(&lab.client, nobody, sa("10.201.0.1:5060"), 7).unwrap();
    udp_send(&lab.client, mgmt, sa("10.201.0.1:161"), 5).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = stats();
    assert_eq!(servers.udp_received[0].load(Ordering::Relaxed), 10);
    assert_eq!(servers.udp_received[1].load(Ordering::Relaxed), 0);
    assert_eq!(flow_packets(&after, "vcs-sip-public-in-udp", "udp") - flow_packets(&before, "vcs-sip-public-in-udp", "udp"), 10);
    assert_eq!(reason_packets(&after, "drop", "no_flow") - reason_packets(&before, "drop", "no_flow"), 12);
    assert!(flow_packets(&after, "vcs-admin-ssh", "tcp") >= 4, "ssh packets counted");
    assert!(flow_packets(&after, "vcs-admin-https", "tcp") >= 4, "https packets counted");
    drop(servers);

    // A real SIP client: OPTIONS over UDP and TCP 5060.
    for transport in ["u1", "t1"] {
        assert!(sip_options(&lab, "10.201.0.2", transport), "sipp OPTIONS over {transport} from any-ip");
        assert!(!sip_options(&lab, "10.201.0.9", transport), "sipp OPTIONS over {transport} from no role");
    }
    let end = stats();
    assert!(flow_packets(&end, "vcs-sip-public-in-tcp", "tcp") >= 3, "SIP over TCP counted");
    assert!(flow_packets(&end, "vcs-sip-public-in-udp", "udp") > flow_packets(&after, "vcs-sip-public-in-udp", "udp"));

    // SIGTERM: a clean exit, nothing left attached or pinned.
    assert!(daemon.stop().success(), "dataplane run exits cleanly on SIGTERM");
    assert!(!Path::new("/sys/fs/bpf/dataplane").exists(), "pins removed");
    let link = Command::new("ip").args(["-n", &lab.server, "link", "show", SERVER_IF]).output().unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP detached");
}
