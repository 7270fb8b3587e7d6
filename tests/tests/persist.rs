//! `run --persist`: the host keeps enforcing when the daemon is killed, a new daemon takes the
//! pinned links over without a gap and keeps the counters, and `dataplane detach` removes it all.

use std::{net::SocketAddr, path::Path, process::Command, sync::atomic::Ordering, time::Duration};

use dataplane::lab::netns::{udp_send, Lab, Servers, SERVER_IF};
use dataplane_tests::daemon::{dataplane_bin, flow_packets, root, stats, Daemon};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const ALLOWED: &str = "10.201.0.1:5060"; // SIP from any-ip
const FORBIDDEN: &str = "10.201.0.1:161"; // SNMP is off

fn xdp_attached(lab: &Lab) -> bool {
    let out = Command::new("ip").args(["-n", &lab.server, "link", "show", SERVER_IF]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn persisted_policy_survives_the_daemon_and_detach_removes_it() {
    let lab = Lab::new("dpt-ps", &["10.201.0.1/24"], &["10.201.0.2/24"]).unwrap();
    let site = root().join("tests/sites/e2e.yaml");
    let servers = Servers::start(&lab.server, &[], &[sa(ALLOWED), sa(FORBIDDEN)]).unwrap();
    let client = "10.201.0.2".parse().unwrap();
    let received = |i: usize| servers.udp_received[i].load(Ordering::Relaxed);
    let burst = |n: usize| {
        udp_send(&lab.client, client, sa(ALLOWED), n).unwrap();
        udp_send(&lab.client, client, sa(FORBIDDEN), n).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    };

    let mut daemon = Daemon::start_with(&lab.server, &site, &["--persist"]);
    burst(5);
    assert_eq!((received(0), received(1)), (5, 0));

    // Killed outright: the pinned links keep enforcing, and stats still reads the counters.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    burst(5);
    assert_eq!((received(0), received(1)), (10, 0), "still enforced with no daemon");
    assert_eq!(flow_packets(&stats(), "vcs-sip-public-in-udp", "udp"), 10, "counted with no daemon");
    drop(daemon);

    // A new daemon adopts the pinned links and counters; SIGTERM leaves it enforcing.
    let daemon = Daemon::start_with(&lab.server, &site, &["--persist"]);
    burst(5);
    assert_eq!((received(0), received(1)), (15, 0));
    assert_eq!(flow_packets(&stats(), "vcs-sip-public-in-udp", "udp"), 15, "counters carried over the adoption");
    assert!(daemon.stop().success());
    burst(5);
    assert_eq!((received(0), received(1)), (20, 0), "still enforced after a clean exit");
    assert!(xdp_attached(&lab));

    // Detach removes it all: nothing attached, nothing pinned, nothing filtered.
    let out = Command::new(dataplane_bin()).arg("detach").output().unwrap();
    assert!(out.status.success(), "detach: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!xdp_attached(&lab), "XDP detached");
    assert!(!Path::new("/sys/fs/bpf/dataplane").exists(), "pins removed");
    burst(5);
    assert_eq!((received(0), received(1)), (25, 5), "no filter any more");
}
