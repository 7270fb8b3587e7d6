//! Gateway mode: `dataplane run` on a forwarding host between an outside client namespace and an
//! inside server subnet protects addresses that are not its own (tests/sites/gateway.yaml).
//! Real TCP and UDP from allowed roles reach the inside servers, the rest does not; the servers'
//! own connections (DNS, a SIP trunk over TCP) leave through the outside interface, where the tc
//! egress program records them, and their replies are admitted on the way back; `stats`,
//! `events` and `explain` agree with what crossed.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use dataplane::lab::{
    gateway::{disable_tx_checksum, forwarded, set_gro, Gateway, Plan, CLIENT_IF, INSIDE_IF, OUTSIDE_IF, SERVER_IF},
    netns::{in_netns, tcp_exchange, tcp_exchange_from, udp_query, udp_send, udp_send_from, Servers},
};
use dataplane_tests::daemon::{dataplane_bin, flow_packets, reason_packets, root, stats, Daemon};
use serde_json::Value;

const SERVER: &str = "10.203.2.10";
const SERVER6: &str = "fd00:203:2::10";
const MGMT: &str = "10.203.1.2";
const MGMT6: &str = "fd00:203:1::2";
/// In any-ip, not management-pc.
const OTHER: &str = "10.203.1.3";
/// In no role.
const NOBODY: &str = "10.203.1.9";
const SIP_PEER: &str = "10.203.1.4";
const DNS: &str = "10.203.1.5";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn site() -> PathBuf {
    root().join("tests/sites/gateway.yaml")
}

fn topology(tag: &str) -> Gateway {
    Gateway::new(
        tag,
        &Plan {
            client: &["10.203.1.2/24", "10.203.1.3/24", "10.203.1.4/24", "10.203.1.5/24", "10.203.1.9/24", "fd00:203:1::2/64"],
            outside: &["10.203.1.1/24", "fd00:203:1::1/64"],
            inside: &["10.203.2.1/24", "fd00:203:2::1/64"],
            server: &["10.203.2.10/24", "fd00:203:2::10/64"],
        },
    )
    .unwrap()
}

/// `dataplane explain` on one packet: (verdict, flow).
fn explain(args: &[&str]) -> (String, String) {
    let out = Command::new(dataplane_bin())
        .args(["explain", "--site"])
        .arg(site())
        .args(args)
        .env("DATAPLANE_CATALOG_DIR", root().join("policies/catalog"))
        .output()
        .unwrap();
    assert!(out.status.success(), "explain {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["verdict"].as_str().unwrap().to_owned(), v["flow"].as_str().unwrap_or("-").to_owned())
}

fn explain_in(src: &str, dst: &str, proto: &str, dport: u16) -> bool {
    explain(&["--src", src, "--dst", dst, "--proto", proto, "--dport", &dport.to_string()]).0 == "allow"
}

fn outbound(s: &Value, id: &str) -> (u64, u64) {
    let f = s["outbound"].as_array().unwrap().iter().filter(|f| f["id"] == id);
    f.fold((0, 0), |(o, r), f| (o + f["packets"].as_u64().unwrap(), r + f["reply_packets"].as_u64().unwrap()))
}

/// The whole gateway scenario with `dataplane run` on the gateway's `ifaces`, with `args`.
fn gateway_enforces(tag: &str, ifaces: &[&str], args: &[&str]) {
    let gw = topology(tag);
    let daemon = Daemon::start_on(&gw.gateway, &site(), ifaces, args);
    let servers = Servers::start(&gw.server, &[sa("10.203.2.10:22"), sa("[fd00:203:2::10]:443")], &[]).unwrap();
    let wait = Duration::from_secs(2);

    // TCP through the gateway, as explain predicts: ssh and https from the management PC
    // complete, ssh from another any-ip address does not.
    assert!(
        explain_in(MGMT, SERVER, "tcp", 22) && explain_in(MGMT6, SERVER6, "tcp", 443) && !explain_in(OTHER, SERVER, "tcp", 22)
    );
    assert!(tcp_exchange(&gw.client, ip(MGMT), sa("10.203.2.10:22"), wait).unwrap(), "ssh from the management PC");
    assert!(tcp_exchange(&gw.client, ip(MGMT6), sa("[fd00:203:2::10]:443"), wait).unwrap(), "https over IPv6");
    assert!(!tcp_exchange(&gw.client, ip(OTHER), sa("10.203.2.10:22"), Duration::from_millis(700)).unwrap(), "ssh from any-ip");

    // UDP: SIP from any-ip arrives, from an address in no role it does not; the counters move
    // by exactly what was sent. The socket does not answer: an answer to the closed client
    // socket would bring ICMP errors back, counted on the flow they relate to.
    let sip_socket = sink(&gw.server, "10.203.2.10:5060");
    assert!(explain_in(MGMT, SERVER, "udp", 5060) && !explain_in(NOBODY, SERVER, "udp", 5060));
    let (before, kernel_before) = (stats(), forwarded(&gw.gateway));
    udp_send(&gw.client, ip(MGMT), sa("10.203.2.10:5060"), 20).unwrap();
    udp_send(&gw.client, ip(NOBODY), sa("10.203.2.10:5060"), 7).unwrap();
    let received = drain(&sip_socket);
    let (after, kernel_after) = (stats(), forwarded(&gw.gateway));
    // Without --forward the gateway's stack forwards them.
    assert!(kernel_after - kernel_before >= 20, "the stack forwarded {}", kernel_after - kernel_before);
    assert_eq!(received, 20, "SIP datagrams that reached the inside server");
    let sip = "vcs-sip-public-in-udp";
    assert_eq!(explain(&["--src", MGMT, "--dst", SERVER, "--proto", "udp", "--dport", "5060"]).1, sip);
    assert_eq!(flow_packets(&after, sip, "udp") - flow_packets(&before, sip, "udp"), 20, "counted once each");
    assert_eq!(reason_packets(&after, "drop", "no_flow") - reason_packets(&before, "drop", "no_flow"), 7);
    assert!(flow_packets(&after, "vcs-admin-ssh", "tcp") >= 4, "ssh packets counted");
    drop(servers);

    // The server's own connections leave through the outside interface (tc egress there records
    // them) and their replies are admitted: DNS, and SIP over TCP from the trunk's source range.
    let victim = Servers::start(&gw.server, &[], &[sa("10.203.2.10:40054")]).unwrap();
    udp_send_from(&gw.client, sa("10.203.1.5:53"), sa("10.203.2.10:40054"), 3).unwrap();
    let peers = Servers::start(&gw.client, &[sa("10.203.1.4:5061")], &[sa("10.203.1.5:53")]).unwrap();
    let out = |sport: u16, dst: &str, proto: &str, dport: u16| {
        let a = ["--src", SERVER, "--dst", dst, "--proto", proto, "--sport", &sport.to_string(), "--dport", &dport.to_string()];
        explain(&[&a[..], &["--direction", "out"]].concat())
    };
    assert_eq!(out(40053, DNS, "udp", 53), ("allow".into(), "vcs-dns".into()));
    assert_eq!(out(25500, SIP_PEER, "tcp", 5061).0, "allow");
    assert_eq!(out(40500, SIP_PEER, "tcp", 5061).0, "deny");
    let before = stats();
    assert!(udp_query(&gw.server, sa("10.203.2.10:40053"), sa("10.203.1.5:53"), wait).unwrap(), "DNS query answered");
    assert!(tcp_exchange_from(&gw.server, sa("10.203.2.10:25500"), sa("10.203.1.4:5061"), wait).unwrap(), "SIP trunk from 25500");
    assert!(!tcp_exchange_from(&gw.server, sa("10.203.2.10:40500"), sa("10.203.1.4:5061"), Duration::from_millis(700)).unwrap());
    let after = stats();
    assert_eq!(victim.udp_received[0].load(Ordering::Relaxed), 0, "an unsolicited datagram from port 53");
    let (dns_out, dns_replies) = (
        outbound(&after, "vcs-dns").0 - outbound(&before, "vcs-dns").0,
        outbound(&after, "vcs-dns").1 - outbound(&before, "vcs-dns").1,
    );
    assert_eq!((dns_out, dns_replies), (1, 1), "the query seen once on the way out, its answer once on the way back");
    let trunk = out(25500, SIP_PEER, "tcp", 5061).1;
    let (sip_out, sip_replies) =
        (outbound(&after, &trunk).0 - outbound(&before, &trunk).0, outbound(&after, &trunk).1 - outbound(&before, &trunk).1);
    assert!(sip_out >= 3 && sip_replies >= 2, "{trunk}: {sip_out} out, {sip_replies} replies");
    assert!(after["conntrack"]["entries"].as_u64().unwrap() >= 2, "tracked connections: {}", after["conntrack"]);
    drop((victim, peers));

    // Drop events name what was dropped on its way to the inside server.
    let follow = Command::new(dataplane_bin())
        .args(["events", "--json", "--count", "2", "--timeout", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    udp_send(&gw.client, ip(NOBODY), sa("10.203.2.10:5060"), 2).unwrap();
    let out = follow.wait_with_output().unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 2, "two drop events: {events:?}");
    for e in &events {
        assert_eq!((e["src"].as_str(), e["dst"].as_str(), e["dport"].as_u64()), (Some(NOBODY), Some(SERVER), Some(5060)));
        assert_eq!((e["reason"].as_str(), e["nearest"].as_str()), (Some("no_flow"), Some(sip)));
    }
    assert!(daemon.stop().success(), "dataplane run exits cleanly on SIGTERM");
}

#[test]
fn gateway_enforces_on_the_outside_interface() {
    gateway_enforces("i18-gwo", &[OUTSIDE_IF], &[]);
}

#[test]
fn gateway_enforces_on_both_interfaces() {
    // On the inside interface too, the servers' packets are unprotected destinations there, and
    // the packets toward them are not theirs to record: nothing is counted twice.
    gateway_enforces("i18-gwb", &[OUTSIDE_IF, INSIDE_IF], &[]);
}

/// Datagrams a socket bound in `ns` to `addr` receives within `wait` of the last one (no echo,
/// so that nothing flows back through the gateway).
fn sink(ns: &str, addr: &str) -> std::net::UdpSocket {
    let sock = in_netns(ns, || std::net::UdpSocket::bind(addr)).unwrap().unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    sock
}

fn drain(sock: &std::net::UdpSocket) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while sock.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

fn forward_stat(s: &Value, outcome: &str) -> u64 {
    s["forward"][outcome].as_u64().unwrap_or(0)
}

#[test]
fn gateway_forwards_allowed_packets_in_xdp() {
    let gw = topology("i18-gwf");
    // A veth takes frames redirected to its peer only with GRO on (or an XDP program).
    set_gro(&gw.server, SERVER_IF).unwrap();
    set_gro(&gw.client, CLIENT_IF).unwrap();
    // Complete checksums from the client's sockets, as from a real network (see the function).
    disable_tx_checksum(&gw.client, CLIENT_IF).unwrap();
    let daemon = Daemon::start_on(&gw.gateway, &site(), &[OUTSIDE_IF, INSIDE_IF], &["--forward"]);
    let servers = Servers::start(&gw.server, &[sa("10.203.2.10:22"), sa("[fd00:203:2::10]:443")], &[]).unwrap();
    let wait = Duration::from_secs(2);

    // TCP: the allowed connections complete (client to server in XDP, back through the stack).
    assert!(tcp_exchange(&gw.client, ip(MGMT), sa("10.203.2.10:22"), wait).unwrap(), "ssh from the management PC");
    assert!(tcp_exchange(&gw.client, ip(MGMT6), sa("[fd00:203:2::10]:443"), wait).unwrap(), "https over IPv6");
    assert!(!tcp_exchange(&gw.client, ip(OTHER), sa("10.203.2.10:22"), Duration::from_millis(700)).unwrap(), "ssh from any-ip");
    let s = stats();
    assert!(forward_stat(&s, "forwarded") >= 4, "TCP forwarded in XDP: {}", s["forward"]);
    drop(servers);

    // UDP to a socket that does not answer: allowed datagrams cross in XDP, counted once on
    // their flow; the stack forwards none of them; forbidden ones do not cross.
    let sip = sink(&gw.server, "10.203.2.10:5060");
    let (before, kernel_before) = (stats(), forwarded(&gw.gateway));
    udp_send(&gw.client, ip(MGMT), sa("10.203.2.10:5060"), 20).unwrap();
    udp_send(&gw.client, ip(NOBODY), sa("10.203.2.10:5060"), 7).unwrap();
    let received = drain(&sip);
    let (after, kernel_after) = (stats(), forwarded(&gw.gateway));
    assert_eq!(received, 20, "allowed datagrams that reached the inside server");
    let flow = "vcs-sip-public-in-udp";
    assert_eq!(flow_packets(&after, flow, "udp") - flow_packets(&before, flow, "udp"), 20, "counted once each");
    assert_eq!(forward_stat(&after, "forwarded") - forward_stat(&before, "forwarded"), 20, "forwarded in XDP");
    assert_eq!(reason_packets(&after, "drop", "no_flow") - reason_packets(&before, "drop", "no_flow"), 7);
    assert!(kernel_after - kernel_before < 20, "the stack forwarded {} of them", kernel_after - kernel_before);

    // TTL 1: not forwarded in XDP; the stack answers it (time exceeded), and it goes no further.
    let before = stats();
    in_netns(&gw.client, || {
        let s = std::net::UdpSocket::bind("10.203.1.2:0").unwrap();
        s.set_ttl(1).unwrap();
        s.send_to(b"ttl 1", "10.203.2.10:5060").unwrap();
    })
    .unwrap();
    assert_eq!(drain(&sip), 0, "a datagram with TTL 1 is not forwarded");
    let after = stats();
    assert_eq!(forward_stat(&after, "stack_ineligible") - forward_stat(&before, "stack_ineligible"), 1);

    // Larger than the inside link's MTU: the FIB says so, and the stack does what a router does
    // (fragments it, or with DF answers "fragmentation needed"); nothing is forwarded in XDP.
    dataplane::lab::netns::ip(&["-n", &gw.gateway, "link", "set", INSIDE_IF, "mtu", "1280"]).unwrap();
    let before = stats();
    in_netns(&gw.client, || {
        std::net::UdpSocket::bind("10.203.1.2:0").unwrap().send_to(&[0u8; 1400], "10.203.2.10:5060").unwrap()
    })
    .unwrap();
    drain(&sip);
    let after = stats();
    assert_eq!(forward_stat(&after, "stack_fib") - forward_stat(&before, "stack_fib"), 1, "MTU exceeded: to the stack");
    assert_eq!(forward_stat(&after, "forwarded"), forward_stat(&before, "forwarded"));
    dataplane::lab::netns::ip(&["-n", &gw.gateway, "link", "set", INSIDE_IF, "mtu", "1500"]).unwrap();
    drop(sip);

    // The server's own connections: its packets take the stack's path (not protected
    // destinations), so the outside interface's tc egress records them; their replies are
    // admitted and forwarded in XDP.
    let peers = Servers::start(&gw.client, &[sa("10.203.1.4:5061")], &[sa("10.203.1.5:53")]).unwrap();
    let before = stats();
    assert!(udp_query(&gw.server, sa("10.203.2.10:40053"), sa("10.203.1.5:53"), wait).unwrap(), "DNS query answered");
    assert!(tcp_exchange_from(&gw.server, sa("10.203.2.10:25500"), sa("10.203.1.4:5061"), wait).unwrap(), "SIP trunk from 25500");
    let after = stats();
    let d = |s: &Value| outbound(s, "vcs-dns");
    assert_eq!((d(&after).0 - d(&before).0, d(&after).1 - d(&before).1), (1, 1), "the DNS query and its answer, once each");
    assert!(forward_stat(&after, "forwarded") - forward_stat(&before, "forwarded") >= 3, "replies forwarded in XDP");
    drop(peers);
    assert!(daemon.stop().success(), "dataplane run exits cleanly on SIGTERM");
}
