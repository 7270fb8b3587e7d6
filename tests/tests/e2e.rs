//! End to end: `dataplane run` enforces a real site on the server end of a veth pair, real
//! clients in allowed and other roles connect, `dataplane stats` (another process, reading the
//! pinned maps) shows the matching counts, a real SIP client (sipp) gets through from an allowed
//! role and not from another, and SIGTERM detaches everything.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use dataplane::lab::netns::{tcp_exchange, tcp_exchange_from, udp_query, udp_send, udp_send_from, Lab, Servers, SERVER_IF};
use dataplane_tests::{
    daemon::{flow_packets, reason_packets, root, send_raw_ipv4, stats, Daemon},
    packet::{FragSpec, Pkt},
};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
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

    // Drop events: a datagram from an address in no role, with the flow that came nearest.
    let follow = Command::new(dataplane_tests::daemon::dataplane_bin())
        .args(["events", "--json", "--count", "2", "--timeout", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    udp_send(&lab.client, nobody, sa("10.201.0.1:5060"), 2).unwrap();
    let out = follow.wait_with_output().unwrap();
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 2, "two drop events: {events:?}");
    for e in &events {
        assert_eq!(
            (e["src"].as_str(), e["dst"].as_str(), e["dport"].as_u64()),
            (Some("10.201.0.9"), Some("10.201.0.1"), Some(5060))
        );
        assert_eq!((e["reason"].as_str(), e["nearest"].as_str()), (Some("no_flow"), Some("vcs-sip-public-in-udp")));
    }

    // The program's own log reaches the daemon's log: a later fragment with no first fragment.
    let stray = Pkt::udp("10.201.0.2".parse().unwrap(), "10.201.0.1".parse().unwrap(), 40000, 5060)
        .frag(FragSpec { offset8: 100, more: false, id: 4242 })
        .build();
    send_raw_ipv4(&lab.client, &stray[14..], "10.201.0.1".parse().unwrap());
    assert!(daemon.wait_log("cannot be judged safely: fragment"), "the XDP program's log line");

    // SIGTERM: a clean exit, nothing left attached or pinned.
    assert!(daemon.stop().success(), "dataplane run exits cleanly on SIGTERM");
    assert!(!Path::new("/sys/fs/bpf/dataplane").exists(), "pins removed");
    let link = Command::new("ip").args(["-n", &lab.server, "link", "show", SERVER_IF]).output().unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP detached");
}

#[test]
fn connections_the_server_opens_get_their_replies() {
    let lab = Lab::new("dpt-ct", &["10.201.0.1/24"], &["10.201.0.4/24", "10.201.0.5/24"]).unwrap();
    let daemon = Daemon::start(&lab.server, &root().join("tests/sites/e2e.yaml"));
    // Forged: a datagram from the DNS server's port 53 that answers no query never reaches the
    // server's socket.
    let victim = Servers::start(&lab.server, &[], &[sa("10.201.0.1:40054")]).unwrap();
    udp_send_from(&lab.client, sa("10.201.0.5:53"), sa("10.201.0.1:40054"), 3).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(victim.udp_received[0].load(Ordering::Relaxed), 0, "unsolicited datagram from port 53");
    // The peers listen in the client namespace: a DNS server and a SIP peer on TCP 5061.
    let peers = Servers::start(&lab.client, &[sa("10.201.0.4:5061")], &[sa("10.201.0.5:53")]).unwrap();
    let wait = Duration::from_secs(2);

    // Documented: DNS (vcs-dns, UDP 53 from 1024-65535) and SIP over TCP from the outbound range
    // 25000-29999 (vcs-sip-public-out-tcp). Both complete through the enforcing XDP program.
    assert!(udp_query(&lab.server, sa("10.201.0.1:40053"), sa("10.201.0.5:53"), wait).unwrap(), "DNS query answered");
    assert!(tcp_exchange_from(&lab.server, sa("10.201.0.1:25500"), sa("10.201.0.4:5061"), wait).unwrap(), "SIP TCP from 25500");
    // Undocumented: the same peer from a source port outside 25000-29999: its SYN-ACK is dropped.
    assert!(!tcp_exchange_from(&lab.server, sa("10.201.0.1:40500"), sa("10.201.0.4:5061"), Duration::from_millis(700)).unwrap());

    let s = stats();
    let replies: u64 = s["outbound"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "vcs-dns" || f["id"] == "vcs-sip-public-out-tcp")
        .map(|f| f["reply_packets"].as_u64().unwrap())
        .sum();
    assert!(replies >= 3, "replies counted on the outbound flows: {replies}");
    assert!(s["conntrack"]["entries"].as_u64().unwrap() >= 2, "tracked connections: {}", s["conntrack"]);
    drop(peers);
    assert!(daemon.stop().success());
}

#[test]
fn run_refuses_a_site_that_would_lock_the_operator_out() {
    // MeetingPlace 7.0 documents no administration access to some protected roles.
    let out = Command::new(dataplane_tests::daemon::dataplane_bin())
        .args(["run", "--site"])
        .arg(root().join("policies/sites/meetingplace-7.0.yaml"))
        .args(["--iface", "lo"])
        .env_remove("SSH_CONNECTION")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(err.contains("--force") && err.contains("meetingplace-web-server"), "says why and how: {err}");
    assert!(!Path::new("/sys/fs/bpf/dataplane").exists(), "nothing loaded or pinned");
}
