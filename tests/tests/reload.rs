//! Atomic reload and monitor mode, with the real daemon over veth: reloads under traffic
//! misjudge no packet and keep the counters, a broken site leaves the running policy enforcing,
//! and monitor mode passes what it counts as drops.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use dataplane::lab::netns::{in_netns, udp_send, Lab, Servers};
use dataplane_tests::daemon::{flow_packets, reason_packets, root, stats, Daemon};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const ALLOWED: &str = "10.201.0.1:5060"; // SIP from any-ip (vcs-sip-public-in-udp)
const FORBIDDEN: &str = "10.201.0.1:161"; // SNMP: management-snmp is off by default

fn lab(tag: &str) -> Lab {
    Lab::new(tag, &["10.201.0.1/24"], &["10.201.0.2/24"]).unwrap()
}

/// Sends bursts of allowed and forbidden datagrams from 10.201.0.2 until `stop` (60 s at most).
fn sender(ns: String, stop: Arc<AtomicBool>, sent: Arc<[AtomicU64; 2]>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        in_netns(&ns, || {
            let sock = UdpSocket::bind(sa("10.201.0.2:0")).unwrap();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                for _ in 0..5 {
                    for (i, dst) in [ALLOWED, FORBIDDEN].iter().enumerate() {
                        if sock.send_to(b"probe", sa(dst)).is_ok() {
                            sent[i].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .unwrap();
    })
}

#[test]
fn reloads_under_traffic_misjudge_nothing_and_keep_counters() {
    const RELOADS: u32 = 100;
    let lab = lab("dpt-rl");
    let daemon = Daemon::start(&lab.server, &root().join("tests/sites/e2e.yaml"));
    let servers = Servers::start(&lab.server, &[], &[sa(ALLOWED), sa(FORBIDDEN)]).unwrap();
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new([AtomicU64::new(0), AtomicU64::new(0)]));
    let sending = sender(lab.client.clone(), stop.clone(), sent.clone());
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    for i in 0..RELOADS {
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
        assert!(daemon.wait_log(&format!("generation {}", i + 2)), "reload {} logged", i + 1);
    }
    let per_reload = started.elapsed() / RELOADS;
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    sending.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let (allowed, forbidden) = (sent[0].load(Ordering::Relaxed), sent[1].load(Ordering::Relaxed));
    println!("{RELOADS} reloads, {per_reload:?} each (SIGHUP to logged), {allowed} allowed and {forbidden} forbidden datagrams sent meanwhile");
    assert!(allowed > 1000, "traffic kept flowing during the reloads");
    assert_eq!(servers.udp_received[0].load(Ordering::Relaxed), allowed, "no allowed packet dropped");
    assert_eq!(servers.udp_received[1].load(Ordering::Relaxed), 0, "no forbidden packet passed");
    let s = stats();
    assert_eq!(flow_packets(&s, "vcs-sip-public-in-udp", "udp"), allowed, "the flow counter carried over every reload");
    assert!(reason_packets(&s, "drop", "no_flow") >= forbidden, "every forbidden datagram counted as a drop");
    assert!(daemon.stop().success());
}

#[test]
fn a_broken_site_leaves_the_running_policy_enforcing() {
    let dir = std::env::temp_dir().join(format!("dataplane-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let site = dir.join("site.yaml");
    let good = std::fs::read_to_string(root().join("tests/sites/e2e.yaml")).unwrap();
    std::fs::write(&site, &good).unwrap();
    let lab = lab("dpt-rb");
    let daemon = Daemon::start(&lab.server, &site);
    let servers = Servers::start(&lab.server, &[], &[sa(ALLOWED), sa(FORBIDDEN)]).unwrap();
    let burst = |n| {
        udp_send(&lab.client, "10.201.0.2".parse().unwrap(), sa(ALLOWED), n)
            .and_then(|_| udp_send(&lab.client, "10.201.0.2".parse().unwrap(), sa(FORBIDDEN), n))
    };
    let received = |i: usize| servers.udp_received[i].load(Ordering::Relaxed);

    // A protected role that does not exist: the reload fails, named by file, line and column.
    std::fs::write(&site, good.replace("protect: [vcs-expressway]", "protect: [no-such-role]")).unwrap();
    let failure = daemon.wait_log_line("failed, the previous policy keeps enforcing").expect("the failure is logged");
    assert!(failure.contains("site.yaml:13:11: protect[0]: unknown role"), "with file, line, column and field: {failure}");
    burst(10).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!((received(0), received(1)), (10, 0), "the previous policy still enforces");

    // Fixed, and SNMP switched on: the new policy takes over.
    std::fs::write(&site, format!("{good}options:\n  management-snmp: true\n")).unwrap();
    assert!(daemon.wait_log("reloaded"), "the fixed site is loaded");
    burst(10).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!((received(0), received(1)), (20, 10), "SNMP allowed by the new policy");
    assert!(daemon.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn monitor_mode_passes_what_it_counts_as_drops() {
    let lab = lab("dpt-mon");
    let daemon = Daemon::start_with(&lab.server, &root().join("tests/sites/e2e.yaml"), &["--monitor"]);
    let servers = Servers::start(&lab.server, &[], &[sa(ALLOWED), sa(FORBIDDEN)]).unwrap();
    let before = stats();
    udp_send(&lab.client, "10.201.0.2".parse().unwrap(), sa(FORBIDDEN), 8).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(servers.udp_received[1].load(Ordering::Relaxed), 8, "nothing is dropped in monitor mode");
    let after = stats();
    assert_eq!(
        reason_packets(&after, "drop", "no_flow") - reason_packets(&before, "drop", "no_flow"),
        8,
        "but the would-be drops are counted"
    );
    assert_eq!(after["monitor"], true, "stats says so");
    assert!(daemon.stop().success());
}
