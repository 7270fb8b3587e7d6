//! Real calls through `dataplane run`: a SIP call over UDP and over TCP from a caller in any-ip
//! to the protected Expressway (sipp as caller and callee, RTP both ways on a documented media
//! port) completes with its media counted on the media flows; the same call with the media on an
//! undocumented port completes its signalling while every media packet is dropped; a TURN
//! allocation relays data through a documented relay port (coturn), counted on the relay flows.

use std::{net::IpAddr, time::Duration};

use dataplane::lab::{
    calls::{
        sip_call, tail, turn_relay, udp_datagrams_received, CallNet, Relayed, Transport, Workdir, DOCUMENTED_MEDIA_PORT,
        RTP_PACKETS, TURN_MESSAGES, UNDOCUMENTED_MEDIA_PORT,
    },
    netns::Lab,
};
use dataplane_tests::daemon::{flow_packets, reason_packets, root, stats, Daemon};
use serde_json::Value;

fn outbound_packets(s: &Value, id: &str) -> u64 {
    s["outbound"].as_array().unwrap().iter().filter(|f| f["id"] == id).map(|f| f["packets"].as_u64().unwrap()).sum()
}

/// Counters moved between two `dataplane stats`.
struct Moved {
    before: Value,
    after: Value,
}

impl Moved {
    fn flow(&self, id: &str, proto: &str) -> u64 {
        flow_packets(&self.after, id, proto) - flow_packets(&self.before, id, proto)
    }

    fn outbound(&self, id: &str) -> u64 {
        outbound_packets(&self.after, id) - outbound_packets(&self.before, id)
    }

    fn no_flow(&self) -> u64 {
        reason_packets(&self.after, "drop", "no_flow") - reason_packets(&self.before, "drop", "no_flow")
    }
}

/// What a call moved: the counters and the UDP datagrams the Expressway's sockets received.
fn call(dir: &Workdir, net: &CallNet, transport: Transport, media: u16) -> (bool, Moved, u64) {
    let (before, udp) = (stats(), udp_datagrams_received(net.server_ns).unwrap());
    let completed = sip_call(dir, net, transport, media).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = stats();
    (completed, Moved { before, after }, udp_datagrams_received(net.server_ns).unwrap() - udp)
}

/// RTP counts may miss the first packet or two of a stream, never exceed what was sent.
fn about_all_rtp(n: u64) -> bool {
    n + 2 >= RTP_PACKETS && n <= RTP_PACKETS
}

#[test]
fn calls_and_a_turn_relay_cross_the_firewall() {
    let lab = Lab::new("dpt-calls", &["10.202.0.1/24"], &["10.202.0.9/24"]).unwrap();
    let daemon = Daemon::start(&lab.server, &root().join("tests/sites/calls.yaml"));
    let (caller, server): (IpAddr, IpAddr) = ("10.202.0.9".parse().unwrap(), "10.202.0.1".parse().unwrap());
    let net = CallNet { client_ns: &lab.client, server_ns: &lab.server, caller, server };
    let dir = Workdir::new().unwrap();

    // Documented: INVITE, 200, ACK, RTP both ways on 36002, BYE, over UDP and TCP signalling.
    for transport in [Transport::Udp, Transport::Tcp] {
        let (completed, moved, received) = call(&dir, &net, transport, DOCUMENTED_MEDIA_PORT);
        let t = transport.name();
        assert!(completed, "the call over {t} completes: {}\n{}", tail(&dir, "caller.log", 30), tail(&dir, "callee.log", 30));
        let signalling = moved.flow(&format!("vcs-sip-public-in-{t}"), t);
        assert!(signalling >= 3, "INVITE, ACK and BYE counted on vcs-sip-public-in-{t}: {signalling}");
        let rtp_in = moved.flow("vcs-sip-public-rtp-in", "udp");
        assert!(about_all_rtp(rtp_in), "the caller's {RTP_PACKETS} RTP packets on vcs-sip-public-rtp-in: {rtp_in}");
        let rtp_out = moved.outbound("vcs-sip-public-rtp-out");
        assert!(about_all_rtp(rtp_out), "the callee's RTP (its echo) on vcs-sip-public-rtp-out: {rtp_out}");
        let media = if transport == Transport::Udp { received - signalling } else { received };
        assert_eq!(media, rtp_in, "the Expressway received what the media flow counted");
        assert_eq!(moved.no_flow(), 0, "nothing of the call dropped");
    }

    // Undocumented media port: the signalling completes, every media packet is dropped.
    let (completed, moved, received) = call(&dir, &net, Transport::Udp, UNDOCUMENTED_MEDIA_PORT);
    assert!(completed, "signalling completes with undocumented media: {}", tail(&dir, "caller.log", 30));
    let signalling = moved.flow("vcs-sip-public-in-udp", "udp");
    assert_eq!(received, signalling, "the Expressway received the SIP datagrams and no RTP");
    assert_eq!(moved.flow("vcs-sip-public-rtp-in", "udp"), 0, "no media counted as allowed");
    assert_eq!(moved.outbound("vcs-sip-public-rtp-out"), 0, "the callee had nothing to echo");
    assert!(moved.no_flow() + 2 >= RTP_PACKETS && moved.no_flow() <= RTP_PACKETS, "media dropped (no flow): {}", moved.no_flow());

    // TURN: an allocation on 3478, data relayed to the peer and back through a relay port.
    let before = stats();
    let relayed = turn_relay(&dir, &net).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let moved = Moved { before, after: stats() };
    assert_eq!(
        relayed,
        Some(Relayed { sent: TURN_MESSAGES, received: TURN_MESSAGES }),
        "turnutils_uclient: {}\nturnserver: {}",
        tail(&dir, "uclient.log", 20),
        tail(&dir, "turnserver.log", 20)
    );
    assert!(moved.flow("vcs-ice-turn-control", "udp") >= TURN_MESSAGES, "allocation and data on vcs-ice-turn-control");
    let (relay_out, relay_in) = (moved.outbound("vcs-ice-turn-media-out"), moved.flow("vcs-ice-turn-media-in", "udp"));
    assert!(relay_out >= TURN_MESSAGES, "relay to the peer on vcs-ice-turn-media-out: {relay_out}");
    assert!(relay_in >= TURN_MESSAGES, "the peer's echo on vcs-ice-turn-media-in: {relay_in}");
    assert_eq!(moved.no_flow(), 0, "nothing of the relay dropped");

    assert!(daemon.stop().success());
}
