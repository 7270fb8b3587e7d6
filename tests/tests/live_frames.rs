//! The live-frames injector (tests/src/bench/live.rs) against the real kernel: every frame it
//! injects reaches the peer veth end's XDP program, the rewritten frames are valid IPv4 (the
//! stack's UDP layer receives every one: a wrong header checksum would be dropped before it),
//! and the dataplane program gives the bench's floods the verdicts they are named for.

#[path = "../src/bench/live.rs"]
mod live;

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::Result;
use aya::{programs::XdpMode, Ebpf};
use dataplane::{
    daemon::compile_site,
    kernel::load,
    lab::netns::{in_netns, Lab, CLIENT_IF, SERVER_IF},
    observe::counters::Counters,
};
use dataplane_common::Reason;
use dataplane_tests::bench_object::{self, Program};
use live::{Injection, Rewrite};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);

fn mac(ns: &str, ifname: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip").args(["-n", ns, "link", "show", ifname]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ether = text.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("link/ether");
    let mut m = [0u8; 6];
    for (i, part) in ether.split(':').enumerate() {
        m[i] = u8::from_str_radix(part, 16).unwrap();
    }
    m
}

/// Datagrams the namespace's UDP layer received (to a socket or to none).
fn udp_in(ns: &str) -> u64 {
    let snmp = in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/snmp")).unwrap().unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let values: Vec<u64> = values.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    names.split_whitespace().skip(1).zip(values).filter(|(n, _)| ["InDatagrams", "NoPorts"].contains(n)).map(|(_, v)| v).sum()
}

fn bench_pass_count(bench: &Ebpf) -> Result<u64> {
    bench_object::counted(bench, Program::CountPass)
}

#[test]
fn injected_frames_reach_the_peer_valid_and_get_their_verdicts() {
    let site = Path::new(env!("CARGO_MANIFEST_DIR")).join("sites/e2e.yaml");
    let tables = compile_site(&dataplane::policy::sources::SiteFiles::new(&site, None)).unwrap();
    let lab = Lab::new("i13-live", &["10.201.0.1/24"], &["10.201.0.2/24"]).unwrap();
    in_netns(&lab.server, || {
        for f in ["all", "default", SERVER_IF] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{f}/rp_filter"), "0").unwrap();
        }
    })
    .unwrap();
    // The product's object with the site; the injector and count-and-pass of the bench's.
    let mut ebpf = load::load(&tables).unwrap().ebpf;
    let mut bench = bench_object::load().unwrap();
    live::load_injector(&mut bench).unwrap();
    let template = live::udp_template(
        Ipv4Addr::new(198, 18, 0, 1),
        SERVER,
        40000,
        5060,
        mac(&lab.server, SERVER_IF),
        mac(&lab.client, CLIENT_IF),
    );
    let ifindex = in_netns(&lab.client, || unsafe { libc::if_nametoindex(c"veth-c".as_ptr()) }).unwrap();
    assert_ne!(ifindex, 0);
    let cpu = *live::allowed_cpus().unwrap().last().unwrap();
    let inj =
        |rewrite| Injection { netns: &lab.client, ifindex, template: &template, rewrite, cpu, run: Duration::from_millis(100) };
    let denied = Rewrite::sources(Ipv4Addr::new(198, 18, 0, 0), 0x1_ffff);
    let allowed = Rewrite::sources(Ipv4Addr::new(10, 201, 0, 4), 3);

    // Count-and-pass: every frame arrives, and the stack takes every one as a valid UDP datagram.
    let pass = bench_object::program(&mut bench, Program::CountPass).unwrap();
    let link = in_netns(&lab.server, || pass.attach(SERVER_IF, XdpMode::Driver)).unwrap().unwrap();
    for rewrite in [Rewrite::None, denied] {
        let mut udp = vec![];
        let r = live::inject(&mut bench, &inj(rewrite), &mut |bench| {
            udp.push(udp_in(&lab.server));
            bench_pass_count(bench)
        });
        let r = match r {
            // Nothing here can be checked; the cost bench and the veth tests still run.
            Err(e) if live::refused(&e) => return eprintln!("SKIPPED: {}: {e:#}", live::REFUSED),
            r => r.unwrap(),
        };
        assert!(r.injected >= 1 << 14, "{rewrite:?}: {r:?}");
        // A few of the lab's own frames (IPv6 neighbour discovery, MLD) may cross meanwhile.
        assert!((r.injected..r.injected + 32).contains(&r.counted), "{rewrite:?}: every injected frame reaches veth-s: {r:?}");
        assert_eq!(udp[1] - udp[0], r.injected, "{rewrite:?}: every frame is a valid UDP datagram to the stack: {r:?}");
        assert!(r.mpps() > 0.0 && r.mpps().is_finite());
    }
    in_netns(&lab.server, || bench_object::program(&mut bench, Program::CountPass).unwrap().detach(link).unwrap()).unwrap();

    // The dataplane program: the denied flood is all dropped, the allowed one all passed.
    let prog = load::program(&mut ebpf).unwrap();
    let _link = in_netns(&lab.server, || prog.attach(SERVER_IF, XdpMode::Driver)).unwrap().unwrap();
    for (rewrite, allow) in [(denied, false), (allowed, true)] {
        let mut passed = vec![];
        let r = live::inject(&mut bench, &inj(rewrite), &mut |_| {
            let c = Counters::read(&ebpf)?;
            passed.push(Reason::ALL.iter().filter(|r| !r.is_drop()).map(|&r| c.reason(r).packets).sum::<u64>());
            Ok(c.reasons.iter().map(|r| r.packets).sum())
        })
        .unwrap();
        assert!((r.injected..r.injected + 32).contains(&r.counted), "{rewrite:?}: every frame reaches the program: {r:?}");
        let passed = passed[1] - passed[0];
        if allow {
            assert!(passed >= r.injected, "{rewrite:?}: passed {passed} of {r:?}");
        } else {
            assert!(passed <= r.counted - r.injected, "{rewrite:?}: passed {passed} of {r:?}");
        }
    }
}
