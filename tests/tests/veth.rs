//! Real traffic over a veth pair between two network namespaces, with the XDP program attached
//! natively to the server's end: allowed TCP and UDP get through, the rest does not, and the
//! counters move by exactly the number of packets sent.

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use aya::programs::XdpMode;
use dataplane::{
    kernel::load,
    lab::netns::{in_netns, tcp_exchange, udp_send, Lab, Servers, SERVER_IF},
};
use dataplane_common::Reason;
use dataplane_tests::{simple_tables, Harness};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn real_tcp_and_udp_cross_the_attached_program() {
    let lab = Lab::new("dpt-veth", &["10.0.0.1/24", "fd00::1/64"], &["10.0.0.2/24", "fd00::2/64"]).unwrap();
    let mut h = Harness::new(&simple_tables()).unwrap();
    let prog = load::program(&mut h.ebpf).unwrap();
    let _link = in_netns(&lab.server, || prog.attach(SERVER_IF, XdpMode::Driver)).unwrap().expect("native XDP on veth");

    let servers = Servers::start(
        &lab.server,
        &[sa("10.0.0.1:80"), sa("[fd00::1]:80"), sa("10.0.0.1:22")],
        &[sa("10.0.0.1:5000"), sa("[fd00::1]:5001"), sa("10.0.0.1:6000")],
    )
    .unwrap();
    let client4 = "10.0.0.2".parse().unwrap();
    let client6 = "fd00::2".parse().unwrap();
    let wait = Duration::from_secs(2);

    // Allowed: TCP 80 over both IP versions completes; UDP 5000-5001 arrives.
    assert!(tcp_exchange(&lab.client, client4, sa("10.0.0.1:80"), wait).unwrap(), "TCP 80 over IPv4");
    assert!(tcp_exchange(&lab.client, client6, sa("[fd00::1]:80"), wait).unwrap(), "TCP 80 over IPv6");
    let before = h.counters().unwrap();
    udp_send(&lab.client, client4, sa("10.0.0.1:5000"), 50).unwrap();
    udp_send(&lab.client, client6, sa("[fd00::1]:5001"), 30).unwrap();
    // Not allowed: TCP 22 times out, UDP 6000 never arrives.
    udp_send(&lab.client, client4, sa("10.0.0.1:6000"), 20).unwrap();
    assert!(
        !tcp_exchange(&lab.client, client4, sa("10.0.0.1:22"), Duration::from_millis(700)).unwrap(),
        "TCP 22 must not connect"
    );
    std::thread::sleep(Duration::from_millis(300));

    let after = h.counters().unwrap();
    assert_eq!(servers.udp_received[0].load(Ordering::Relaxed), 50);
    assert_eq!(servers.udp_received[1].load(Ordering::Relaxed), 30);
    assert_eq!(servers.udp_received[2].load(Ordering::Relaxed), 0);
    assert_eq!(after.flows[1].packets - before.flows[1].packets, 80, "UDP flow counter");
    let dropped = after.reason(Reason::DropNoFlow).packets - before.reason(Reason::DropNoFlow).packets;
    // 20 UDP datagrams plus at least one SYN to port 22 (and its retransmissions).
    assert!(dropped >= 21, "no_flow drops: {dropped}");
    assert!(after.flows[0].packets >= 6, "TCP flow counter: {}", after.flows[0].packets);
    assert!(after.reason(Reason::PassNonIp).packets >= 1, "ARP passes");
}
