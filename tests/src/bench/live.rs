//! Packet rate on one CPU with live XDP frames: what the filter costs, not the sender.
//!
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (kernel 5.18+, batches of 64) runs the
//! injector (`bench_inject`, dataplane-ebpf/src/bench.rs) on copies of one template frame in the
//! client namespace; it rewrites each copy (a random source address in a configured range and a
//! random source port, the IPv4 checksum fixed) and redirects it into `veth-c`. The frames cross
//! to `veth-s` in the server namespace, where the system under test runs natively: this program
//! (the real `dataplane` XDP program with the compiled site), count-and-drop (the floor), or
//! count-and-pass with nftables (the `dataplane export` ruleset), iptables-legacy (the rules of
//! tests/src/bench/iptables.rs) or no filter in the stack behind it. The measuring thread is
//! pinned to one CPU: the injector, the veth transfer (its NAPI poll runs in the softirq the
//! test run's batch ends with) and the system under test all run on that CPU, so the rate is
//! what one CPU does.
//!
//! Frames are 60 bytes (64 on the wire with the FCS: the minimum Ethernet frame, 14.88 Mpps at
//! 10 Gb/s), IPv4 UDP to the protected address, port 5060 (open to the role `any-ip`):
//! - denied, random sources: from 198.18.0.0/15 (no role; a new 5-tuple for nearly every frame);
//! - denied, one frame: the template alone, 198.18.0.1:40000, repeated;
//! - allowed: from 10.201.0.4/30 (in `any-ip`), random source ports;
//! - mixed: 90% denied, 10% allowed, drawn per frame.
//!
//! Frames are counted where they arrive (the program's per-reason counters, or the bench
//! programs' counter), and the stack's UDP counters say what reached UDP (a socket-less port:
//! the stack drops it there, with an ICMP error within the kernel's rate limit).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, PerCpuArray},
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, XdpMode},
    Ebpf,
};
use dataplane::{
    classify, load,
    netns::{in_netns, Lab, CLIENT_IF, SERVER_IF},
    run::compile_site,
};
use dataplane_tests::{packet::Pkt, rng::Rng};

/// Frames per batch of the live test run (the kernel's default; at most 256).
const BATCH: u32 = 64;
/// 10 GbE at the minimum frame size (64 bytes + 20 of preamble and gap).
const LINE_RATE_MPPS: f64 = 14.88;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const DPORT: u16 = 5060;
/// Denied sources: 198.18.0.0/15 (the benchmarking range; no role of the site holds it).
const DENY_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const DENY_MASK: u32 = 0x1_ffff;
/// Allowed sources: 10.201.0.4/30, in `any-ip` (10.201.0.0/29).
const ALLOW_BASE: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 4);
const ALLOW_MASK: u32 = 3;

const INJECT: &str = "bench_inject";
const DROP: &str = "bench_drop";
const PASS: &str = "bench_pass";

pub struct Opts {
    /// Time per sample.
    pub run: Duration,
    /// Samples per figure (the median is the figure), systems interleaved.
    pub reps: usize,
    /// The CPU everything runs on (default: the last one this process may use).
    pub cpu: Option<usize>,
    /// Systems in order: floor, xdp, nftables, iptables, none.
    pub systems: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
pub struct Flood {
    pub name: &'static str,
    rewrite: bool,
    /// Frames from the allowed sources, of 65,536.
    allow_share: u32,
}

pub const DENIED: Flood = Flood { name: "denied, random sources", rewrite: true, allow_share: 0 };
pub const ONE_FRAME: Flood = Flood { name: "denied, one frame", rewrite: false, allow_share: 0 };
pub const ALLOWED: Flood = Flood { name: "allowed, random ports", rewrite: true, allow_share: 65536 };
pub const MIXED: Flood = Flood { name: "mixed 90/10", rewrite: true, allow_share: 6554 };

/// One sample: frames injected and counted, and the times.
#[derive(Clone, Copy, Default)]
struct Sample {
    injected: u64,
    /// Frames the system under test saw (its counters).
    counted: u64,
    /// Of those, the ones the stack's UDP layer received (no socket: NoPorts).
    to_udp: u64,
    /// Of those, the ones the program's counters say it passed (this program only).
    passed: Option<u64>,
    wall: Duration,
    /// Wall time less the time the thread waited for its CPU (others running there), plus
    /// what ksoftirqd of that CPU ran meanwhile (deferred softirq work of the bench).
    cpu: Duration,
    /// The test run's own time (ns per frame it reports, times the frames).
    kernel: Duration,
}

impl Sample {
    fn mpps(&self) -> f64 {
        self.counted as f64 / self.cpu.as_secs_f64() / 1e6
    }
    fn wall_mpps(&self) -> f64 {
        self.counted as f64 / self.wall.as_secs_f64() / 1e6
    }
    fn kernel_mpps(&self) -> f64 {
        self.counted as f64 / self.kernel.as_secs_f64().max(1e-9) / 1e6
    }
    fn waited(&self) -> f64 {
        1.0 - (self.cpu.as_secs_f64() / self.wall.as_secs_f64()).min(1.0)
    }
}

/// The medians of one figure.
pub struct Figure {
    pub system: &'static str,
    pub flood: Flood,
    pub mpps: f64,
    pub min: f64,
    pub max: f64,
    pub wall: f64,
    pub kernel: f64,
    pub waited: f64,
    pub reached: f64,
    pub to_udp: f64,
    pub passed: Option<f64>,
}

struct System {
    key: &'static str,
    label: &'static str,
    floods: &'static [Flood],
}

const SYSTEMS: [System; 5] = [
    System { key: "floor", label: "count-and-drop", floods: &[DENIED, ONE_FRAME] },
    System { key: "xdp", label: "this program", floods: &[DENIED, ONE_FRAME, ALLOWED, MIXED] },
    System { key: "nftables", label: "nftables", floods: &[DENIED, ONE_FRAME, ALLOWED, MIXED] },
    System { key: "iptables", label: "iptables-legacy", floods: &[DENIED, ONE_FRAME, ALLOWED, MIXED] },
    System { key: "none", label: "no filter", floods: &[DENIED, ONE_FRAME, ALLOWED, MIXED] },
];

pub fn run(root: &Path, opts: &Opts) -> Result<Vec<Figure>> {
    let site = root.join("tests/sites/e2e.yaml");
    let tables = compile_site(&site)?;
    check_floods(&classify::Classifier::new(&tables))?;
    let cpu = match opts.cpu {
        Some(c) => c,
        None => *allowed_cpus()?.last().context("no CPU in this process's affinity mask")?,
    };
    let lab = Lab::new("dpb-live", &["10.201.0.1/24"], &["10.201.0.2/24"])?;
    in_netns(&lab.server, || -> Result<()> {
        for f in ["all", "default", SERVER_IF] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{f}/rp_filter"), "0")?;
        }
        Ok(())
    })??;
    let mut ebpf = load::load(&tables)?;
    for p in [INJECT, DROP, PASS] {
        load::program_named(&mut ebpf, p)?.load().with_context(|| format!("loading {p}"))?;
    }
    let template = template(&lab)?;
    let ifindex = in_netns(&lab.client, || unsafe { libc::if_nametoindex(c"veth-c".as_ptr()) })?;
    if ifindex == 0 {
        bail!("no {CLIENT_IF} in {}", lab.client);
    }
    let ipt = super::iptables_backend();
    let softirqd = ksoftirqd(cpu);
    let systems: Vec<&System> = opts
        .systems
        .iter()
        .map(|k| SYSTEMS.iter().find(|s| s.key == k).with_context(|| format!("unknown system {k} (floor, xdp, nftables, iptables, none)")))
        .collect::<Result<_>>()?;

    println!("\nPacket rate on one CPU (CPU {cpu}: {}), live XDP frames: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES,", super::cpu_model());
    println!("batches of {BATCH}: the injector (bench_inject) rewrites each copy of a 60-byte IPv4 UDP frame (random source in a range,");
    println!("random source port, checksum) and redirects it into veth-c; the system under test runs natively on veth-s, in another");
    println!("namespace, on the same CPU. {:?} per sample, median of {} samples, systems interleaved; frames counted where they arrive.", opts.run, opts.reps);
    println!("Floods to {SERVER}:{DPORT}/udp (open to any-ip): denied = from 198.18.0.0/15 (no role), a new 5-tuple nearly every frame;");
    println!("one frame = 198.18.0.1:40000 repeated; allowed = from 10.201.0.4/30 (any-ip), random source ports; mixed = 90% / 10%.");
    println!("nftables, iptables-legacy and no filter: count-and-pass (XDP_PASS) on veth-s and the ruleset in the server namespace's stack;");
    println!("what passes reaches UDP at a port without a socket (dropped there, ICMP errors rate-limited).");

    let mut samples: Vec<(usize, usize, Vec<Sample>)> = vec![];
    for rep in 0..opts.reps {
        // A different system first on every round, so that none always follows the same one.
        for k in 0..systems.len() {
            let si = (k + rep) % systems.len();
            let sys = systems[si];
            let Some(attached) = setup(&mut ebpf, &lab, &site, sys, ipt.as_ref(), rep == 0)? else { continue };
            let result = (|| -> Result<()> {
                for (fi, flood) in sys.floods.iter().enumerate() {
                    configure(&mut ebpf, ifindex, &template, flood)?;
                    let s = measure(&mut ebpf, &lab, (cpu, softirqd), &template, opts.run, sys.key)?;
                    match samples.iter_mut().find(|(a, b, _)| *a == si && *b == fi) {
                        Some((_, _, v)) => v.push(s),
                        None => samples.push((si, fi, vec![s])),
                    }
                }
                Ok(())
            })();
            teardown(&mut ebpf, &lab, sys, attached, ipt.as_ref());
            result?;
        }
    }

    println!(
        "{:<16} {:<24} {:>7} {:>13} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7}",
        "system", "flood", "Mpps", "(min-max)", "wall", "kernel", "waited", "reached", "to UDP", "passed"
    );
    let mut figures = vec![];
    for (idx, sys) in systems.iter().enumerate() {
        for (fi, flood) in sys.floods.iter().enumerate() {
            let Some((_, _, v)) = samples.iter().find(|(a, b, _)| *a == idx && *b == fi) else { continue };
            let med = |f: &dyn Fn(&Sample) -> f64| median(v.iter().map(f).collect());
            let mpps: Vec<f64> = v.iter().map(Sample::mpps).collect();
            let fig = Figure {
                system: sys.label,
                flood: *flood,
                mpps: med(&|s| s.mpps()),
                min: mpps.iter().copied().fold(f64::MAX, f64::min),
                max: mpps.iter().copied().fold(0.0, f64::max),
                wall: med(&|s| s.wall_mpps()),
                kernel: med(&|s| s.kernel_mpps()),
                waited: med(&|s| s.waited()),
                reached: v.iter().map(|s| s.counted as f64 / s.injected as f64).fold(f64::MAX, f64::min),
                to_udp: med(&|s| s.to_udp as f64 / s.counted.max(1) as f64),
                passed: v[0].passed.map(|_| med(&|s| s.passed.unwrap_or(0) as f64 / s.counted.max(1) as f64)),
            };
            println!(
                "{:<16} {:<24} {:>7.2} {:>13} {:>7.2} {:>7.2} {:>6.0}% {:>7.1}% {:>6.1}% {:>7}",
                fig.system,
                flood.name,
                fig.mpps,
                format!("({:.2}-{:.2})", fig.min, fig.max),
                fig.wall,
                fig.kernel,
                fig.waited * 100.0,
                fig.reached * 100.0,
                fig.to_udp * 100.0,
                fig.passed.map_or("-".to_string(), |p| format!("{:.1}%", p * 100.0)),
            );
            figures.push(fig);
        }
    }
    println!("Mpps: frames counted by the system under test per second of the CPU (wall time, less the time the thread waited");
    println!("for its CPU, plus what that CPU's ksoftirqd ran); wall: per second of wall time; kernel: per second of the test run's");
    println!("own clock; waited: share of the wall time the CPU ran something else; reached: the least share of the injected frames");
    println!("that reached the system (over the samples); to UDP: of those, the share the stack's UDP layer received; passed: the");
    println!("share this program's counters passed.");

    let alone = program_alone(&mut ebpf, &template)?;
    report(&figures, alone);
    Ok(figures)
}

/// The ns per frame of this program and of count-and-drop on the template (denied) frame through
/// plain BPF_PROG_TEST_RUN (repeat, no injector, no veth): the program's own cost.
fn program_alone(ebpf: &mut Ebpf, frame: &[u8]) -> Result<(f64, f64)> {
    let mut one = |name: &str| -> Result<f64> {
        let prog = load::program_named(ebpf, name)?;
        let mut xs = vec![];
        for _ in 0..5 {
            let opts = TestRunOptions { data_in: Some(frame), repeat: 1_000_000, ..TestRunOptions::default() };
            xs.push(prog.test_run(opts).context("BPF_PROG_TEST_RUN")?.duration.as_nanos() as f64);
        }
        Ok(median(xs))
    };
    Ok((one(load::PROGRAM)?, one(DROP)?))
}

fn report(figures: &[Figure], (alone, floor_alone): (f64, f64)) {
    let get = |system: &str, flood: Flood| figures.iter().find(|f| f.system == system && f.flood == flood).map(|f| f.mpps);
    println!("\nRatios (this run, medians):");
    let goal = |r: f64, g: f64| if r >= g { "met" } else { "not met" };
    if let (Some(x), Some(f)) = (get("this program", DENIED), get("count-and-drop", DENIED)) {
        println!("  denied flood, this program / count-and-drop = {:.2}x (goal >= 0.7x: {})", x / f, goal(x / f, 0.7));
        let (nx, nf) = (1e3 / x, 1e3 / f);
        println!("    per frame: {nx:.1} ns against {nf:.1} ns: the program adds {:.1} ns to what the injector, the veth and a counter cost;", nx - nf);
        println!("    alone (plain BPF_PROG_TEST_RUN of the same frame): this program {alone:.1} ns, count-and-drop {floor_alone:.1} ns");
    }
    for (name, flood) in [("nftables", DENIED), ("nftables", ONE_FRAME), ("iptables-legacy", DENIED), ("no filter", DENIED)] {
        if let (Some(x), Some(n)) = (get("this program", flood), get(name, flood)) {
            let g = if name == "nftables" && flood == DENIED { format!(" (goal >= 10x: {})", goal(x / n, 10.0)) } else { String::new() };
            println!("  {}, this program / {name} = {:.2}x{g}", flood.name, x / n);
        }
    }
    for flood in [ALLOWED, MIXED] {
        for name in ["nftables", "iptables-legacy", "no filter"] {
            if let (Some(x), Some(n)) = (get("this program", flood), get(name, flood)) {
                println!("  {}, this program / {name} = {:.2}x", flood.name, x / n);
            }
        }
    }
    if let (Some(a), Some(b)) = (get("nftables", ONE_FRAME), get("nftables", DENIED)) {
        println!("  nftables, one repeated frame / random sources = {:.2}x", a / b);
    }
    println!("\nCores for 10 GbE at the minimum frame size ({LINE_RATE_MPPS} Mpps), this program, at the rates above (injector and veth included):");
    for flood in [DENIED, ONE_FRAME, ALLOWED, MIXED] {
        if let Some(x) = get("this program", flood) {
            println!("  {:<24} {:>6.2} Mpps -> {:.1} cores", flood.name, x, LINE_RATE_MPPS / x);
        }
    }
    if let Some(f) = get("count-and-drop", DENIED) {
        println!(
            "  (count-and-drop itself would need {:.1}: the injector and the veth are most of a frame's cost here; the program alone,",
            LINE_RATE_MPPS / f
        );
        println!("  {alone:.0} ns a denied frame, is {:.2} cores of work at {LINE_RATE_MPPS} Mpps, on top of what the NIC driver costs)", alone * LINE_RATE_MPPS / 1e3);
    }
}

/// Fails unless the sources of each flood get the verdict the flood is named for (a sample of
/// the random ones, every allowed address), by the classifier the kernel runs.
fn check_floods(c: &classify::Classifier) -> Result<()> {
    let mut rng = Rng::new(13);
    let packet = |src: u32, sport: u16| classify::Packet {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(SERVER),
        proto: 17,
        sport,
        dport: DPORT,
        icmp_type: None,
    };
    let sport = |r: u64| (r as u16) | 1024;
    for _ in 0..2000 {
        let p = packet(u32::from(DENY_BASE) + (rng.next() as u32 & DENY_MASK), sport(rng.next()));
        if c.classify(&p).allow {
            bail!("the denied flood would pass {p:?}");
        }
    }
    if c.classify(&packet(u32::from(DENY_BASE) + 1, 40000)).allow {
        bail!("the one-frame flood would pass");
    }
    for a in 0..=ALLOW_MASK {
        for _ in 0..200 {
            let p = packet(u32::from(ALLOW_BASE) + a, sport(rng.next()));
            if !c.classify(&p).allow {
                bail!("the allowed flood would drop {p:?}: {:?}", c.classify(&p).reason);
            }
        }
    }
    Ok(())
}

/// The template: 198.18.0.1:40000 -> 10.201.0.1:5060 UDP, 60 bytes, the veth ends' MAC
/// addresses, a correct IPv4 checksum, no UDP checksum (0: none, valid for IPv4).
fn template(lab: &Lab) -> Result<Vec<u8>> {
    let src = IpAddr::V4(Ipv4Addr::from(u32::from(DENY_BASE) + 1));
    let mut f = Pkt::raw(src, IpAddr::V4(SERVER), 17, dataplane_tests::packet::udp_header(40000, DPORT, 18)).build();
    assert_eq!(f.len(), 60);
    f[0..6].copy_from_slice(&super::mac(&lab.server, SERVER_IF)?);
    f[6..12].copy_from_slice(&super::mac(&lab.client, CLIENT_IF)?);
    super::ipv4_checksum(&mut f[14..34]);
    Ok(f)
}

/// The injector's configuration for a flood (layout: dataplane-ebpf/src/bench.rs).
fn configure(ebpf: &mut Ebpf, ifindex: u32, template: &[u8], flood: &Flood) -> Result<()> {
    let h = &template[14..34];
    let word = |i: usize| u32::from(u16::from_be_bytes([h[2 * i], h[2 * i + 1]]));
    // Every header word but the checksum (5) and the source address (6, 7).
    let csum_base: u32 = (0..10).filter(|i| ![5, 6, 7].contains(i)).map(word).sum();
    let config: [u32; 8] =
        [ifindex, flood.rewrite as u32, u32::from(DENY_BASE), DENY_MASK, u32::from(ALLOW_BASE), ALLOW_MASK, flood.allow_share, csum_base];
    let mut map: Array<_, [u32; 8]> = Array::try_from(ebpf.map_mut("BENCH_INJECT").context("BENCH_INJECT map")?)?;
    map.set(0, config, 0)?;
    Ok(())
}

/// Attaches what the system needs on veth-s and loads its rules; None when it cannot run here.
fn setup(ebpf: &mut Ebpf, lab: &Lab, site: &Path, sys: &System, ipt: Option<&(String, String, String)>, first: bool) -> Result<Option<XdpLinkId>> {
    let program = match sys.key {
        "floor" => DROP,
        "xdp" => load::PROGRAM,
        _ => PASS,
    };
    if sys.key == "iptables" && ipt.is_none() {
        if first {
            println!("{:<16} (skipped: no iptables-restore; apt-get install iptables)", sys.label);
        }
        return Ok(None);
    }
    let prog = load::program_named(ebpf, program)?;
    let link = in_netns(&lab.server, || prog.attach(SERVER_IF, XdpMode::Driver))?.with_context(|| format!("attaching {program} natively to {SERVER_IF}"))?;
    let loaded = match sys.key {
        "nftables" => super::load_nft(&lab.server, site).map(|ok| {
            if !ok && first {
                println!("{:<16} (skipped: no `dataplane export --format nft` in this build)", sys.label);
            }
            ok
        }),
        "iptables" => {
            let (v4, v6, backend) = ipt.context("iptables")?;
            let rules = super::iptables::render(&dataplane::policy::load_site(site)?);
            super::load_iptables(&lab.server, v4, &rules.v4).and_then(|()| super::load_iptables(&lab.server, v6, &rules.v6)).map(|()| {
                if first {
                    println!("{:<16} ({backend}: {} IPv4 rules, {} in the flow chain)", sys.label, rules.rules_v4, rules.flow_rules_v4);
                }
                true
            })
        }
        _ => Ok(true),
    };
    match loaded {
        Ok(true) => Ok(Some(link)),
        other => {
            let _ = in_netns(&lab.server, || load::program_named(ebpf, program).and_then(|p| Ok(p.detach(link)?)));
            other.map(|_| None)
        }
    }
}

fn teardown(ebpf: &mut Ebpf, lab: &Lab, sys: &System, link: XdpLinkId, ipt: Option<&(String, String, String)>) {
    let program = match sys.key {
        "floor" => DROP,
        "xdp" => load::PROGRAM,
        _ => PASS,
    };
    let _ = in_netns(&lab.server, || load::program_named(ebpf, program).and_then(|p| Ok(p.detach(link)?)));
    if sys.key == "nftables" {
        let _ = Command::new("ip").args(["netns", "exec", &lab.server, "nft", "delete", "table", "inet", "dataplane"]).status();
    }
    if let (true, Some((v4, v6, _))) = (sys.key == "iptables", ipt) {
        for restore in [v4, v6] {
            let _ = super::load_iptables(&lab.server, restore, "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        }
    }
}

/// Frames the system under test counted so far, and of those passed (this program only).
fn counted(ebpf: &Ebpf, key: &str) -> Result<(u64, Option<u64>)> {
    if key == "xdp" {
        let c = load::Counters::read(ebpf)?;
        let all = c.reasons.iter().map(|r| r.packets).sum();
        let passed = dataplane_common::Reason::ALL.iter().filter(|r| !r.is_drop()).map(|&r| c.reason(r).packets).sum();
        return Ok((all, Some(passed)));
    }
    let map: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map("BENCH_COUNT").context("BENCH_COUNT map")?)?;
    let i = if key == "floor" { 0 } else { 1 };
    Ok((map.get(&i, 0)?.iter().sum(), None))
}

/// Datagrams the server namespace's UDP layer received (to a socket, to no socket, in error).
fn udp_in(lab: &Lab) -> Result<u64> {
    let snmp = in_netns(&lab.server, || std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().context("Udp header")?, udp.next().context("Udp values")?);
    let values: Vec<&str> = values.split_whitespace().collect();
    let mut sum = 0;
    for (i, n) in names.split_whitespace().enumerate() {
        if ["InDatagrams", "NoPorts", "InErrors"].contains(&n) {
            sum += values.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(sum)
}

/// One sample: the injector on `cpu` (whose ksoftirqd is given), in the client namespace, for `run`.
fn measure(ebpf: &mut Ebpf, lab: &Lab, (cpu, ksoftirqd): (usize, Option<u32>), template: &[u8], run: Duration, key: &str) -> Result<Sample> {
    let (c0, p0) = counted(ebpf, key)?;
    let u0 = udp_in(lab)?;
    let prog = load::program_named(ebpf, INJECT)?;
    let old = pin(cpu)?;
    let timed = in_netns(&lab.client, || -> Result<(u64, Duration, Duration, Duration, Duration)> {
        let live = |prog: &mut aya::programs::Xdp, n: u32| -> Result<Duration> {
            let opts = TestRunOptions { data_in: Some(template), repeat: n, attrs: TestRunAttrs::new().xdp_live_frames(BATCH), ..TestRunOptions::default() };
            Ok(prog.test_run(opts).context("BPF_PROG_TEST_RUN with live frames")?.duration)
        };
        // Warm up (caches, the page pool's first pages), untimed.
        live(prog, 1 << 16)?;
        let (w0, k0) = (sched_wait()?, ksoftirqd.map(sched_run).transpose()?);
        let started = Instant::now();
        let (mut n, mut injected, mut kernel, mut calls) = (1u32 << 16, 0u64, Duration::ZERO, 0);
        while started.elapsed() < run && calls < 10_000 {
            let t = Instant::now();
            let per_frame = live(prog, n)?;
            kernel += per_frame * n;
            injected += u64::from(n);
            calls += 1;
            // About ten calls per sample.
            let took = t.elapsed().as_secs_f64().max(1e-6);
            n = ((f64::from(n) * run.as_secs_f64() / 10.0 / took) as u32).clamp(1 << 14, 1 << 24);
        }
        let wall = started.elapsed();
        let (w1, k1) = (sched_wait()?, ksoftirqd.map(sched_run).transpose()?);
        let soft = match (k0, k1) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        Ok((injected, wall, w1.saturating_sub(w0), soft, kernel))
    });
    unpin(&old);
    let (injected, wall, waited, soft, kernel) = timed??;
    // Let the last batch's softirq work finish before reading the counters.
    std::thread::sleep(Duration::from_millis(20));
    let (c1, p1) = counted(ebpf, key)?;
    let u1 = udp_in(lab)?;
    let cpu_time = wall.saturating_sub(waited) + soft;
    if std::env::var_os("DPB_LIVE_DEBUG").is_some() {
        eprintln!("{key}: injected {injected} counted {} wall {wall:?} waited {waited:?} ksoftirqd {soft:?} kernel {kernel:?}", c1_minus(c0, ebpf, key));
    }
    Ok(Sample {
        injected,
        counted: c1 - c0,
        to_udp: u1 - u0,
        passed: p1.zip(p0).map(|(a, b)| a - b),
        wall,
        cpu: cpu_time.min(wall),
        kernel,
    })
}

fn c1_minus(c0: u64, ebpf: &Ebpf, key: &str) -> u64 {
    counted(ebpf, key).map_or(0, |c| c.0 - c0)
}

/// Pins this thread to `cpu`; returns the mask it had.
fn pin(cpu: usize) -> Result<libc::cpu_set_t> {
    // Safety: plain affinity calls on this thread (pid 0) with a cpu_set_t of our own.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
        Ok(old)
    }
}

fn unpin(old: &libc::cpu_set_t) {
    // Safety: as above.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), old) };
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Result<Vec<usize>> {
    // Safety: as above.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// This thread's time waiting for a CPU (/proc/thread-self/schedstat, second field).
fn sched_wait() -> Result<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").context("/proc/thread-self/schedstat")?;
    let ns: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("schedstat")?;
    Ok(Duration::from_nanos(ns))
}

/// A task's time on a CPU (/proc/PID/schedstat, first field).
fn sched_run(pid: u32) -> Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    let ns: u64 = s.split_whitespace().next().and_then(|v| v.parse().ok()).context("schedstat")?;
    Ok(Duration::from_nanos(ns))
}

/// The pid of ksoftirqd/CPU (kernel threads have low pids: the first 10,000 are looked at).
fn ksoftirqd(cpu: usize) -> Option<u32> {
    let want = format!("ksoftirqd/{cpu}");
    (1..10_000u32).find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == want))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
