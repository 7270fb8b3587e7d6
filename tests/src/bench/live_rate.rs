//! The packet-rate bench on one CPU with live XDP frames (the injector: tests/src/bench/live.rs):
//! what the filter costs, not the sender.
//!
//! The injector runs in the client namespace and redirects into `veth-c`; on `veth-s`, in the
//! server namespace, runs the system under test: this program (the real `dataplane` XDP program
//! with the compiled site, natively), count-and-drop (the floor), or count-and-pass with
//! nftables (the `dataplane export` ruleset), iptables-legacy (the rules of
//! tests/src/bench/iptables.rs) or no filter in the stack behind it.
//!
//! Frames are 60 bytes (64 on the wire), IPv4 UDP to the protected address, port 5060 (open to
//! the role `any-ip`):
//! - denied, random sources: from 198.18.0.0/15 (no role; a new 5-tuple for nearly every frame);
//! - denied, one frame: the template alone, 198.18.0.1:40000, repeated;
//! - allowed: from 10.201.0.4/30 (in `any-ip`), random source ports;
//! - mixed: 90% denied, 10% allowed, drawn per frame.
//!
//! Frames are counted where they arrive (the program's per-reason counters, or the bench
//! programs' counter), and the stack's UDP counters say what reached UDP (a socket-less port:
//! the stack drops it there, with an ICMP error within the kernel's rate limit). The injector,
//! count-and-drop and count-and-pass are of the bench's object, this program of the product's.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{xdp::XdpLinkId, TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use dataplane::{
    classify::{self, Outcome},
    daemon::compile_site,
    kernel::load,
    lab::netns::{in_netns, Lab, CLIENT_IF, SERVER_IF},
    observe::counters::Counters,
};
use dataplane_tests::{
    bench_object::{self, Program},
    rng::Rng,
};

use super::live::{self, Injection, Rewrite, LINE_RATE_MPPS};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const DPORT: u16 = 5060;
/// Denied sources: 198.18.0.0/15 (the benchmarking range; no role of the site holds it).
const DENY: (Ipv4Addr, u32) = (Ipv4Addr::new(198, 18, 0, 0), 0x1_ffff);
/// Allowed sources: 10.201.0.4/30, in `any-ip` (10.201.0.0/29).
const ALLOW: (Ipv4Addr, u32) = (Ipv4Addr::new(10, 201, 0, 4), 3);

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
    rewrite: Rewrite,
}

pub const DENIED: Flood = Flood { name: "denied, random sources", rewrite: Rewrite::sources(DENY.0, DENY.1) };
pub const ONE_FRAME: Flood = Flood { name: "denied, one frame", rewrite: Rewrite::None };
pub const ALLOWED: Flood = Flood { name: "allowed, random ports", rewrite: Rewrite::sources(ALLOW.0, ALLOW.1) };
pub const MIXED: Flood = Flood { name: "mixed 90/10", rewrite: Rewrite::Sources { a: DENY, b: ALLOW, b_share: 6554 } };

/// One sample: the injector's figures, and what reached UDP and what this program passed.
#[derive(Clone, Copy)]
struct Sample {
    rate: live::Rate,
    to_udp: u64,
    passed: Option<u64>,
}

/// The medians of one figure.
pub struct Figure {
    pub system: &'static str,
    pub flood: Flood,
    pub mpps: f64,
    pub min: f64,
    pub max: f64,
    pub thread: f64,
    pub wall: f64,
    pub reached: f64,
    pub to_udp: f64,
    pub passed: Option<f64>,
}

struct System {
    key: &'static str,
    label: &'static str,
    floods: &'static [Flood],
}

/// This program loaded with the site (the product's object), and the bench's object: the
/// injector, count-and-drop, count-and-pass.
struct Objects {
    product: Ebpf,
    bench: Ebpf,
}

impl Objects {
    /// The XDP program the system with `key` runs on veth-s, loaded.
    fn program(&mut self, key: &str) -> Result<&mut Xdp> {
        match key {
            "floor" => bench_object::program(&mut self.bench, Program::CountDrop),
            "xdp" => Ok(load::program(&mut self.product)?),
            _ => bench_object::program(&mut self.bench, Program::CountPass),
        }
    }
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
    let tables = compile_site(&dataplane::policy::sources::SiteFiles::new(&site, None))?;
    check_floods(&classify::Classifier::new(&tables))?;
    let cpu = match opts.cpu {
        Some(c) => c,
        None => *live::allowed_cpus()?.last().context("no CPU in this process's affinity mask")?,
    };
    let lab = Lab::new("dpb-live", &["10.201.0.1/24"], &["10.201.0.2/24"])?;
    in_netns(&lab.server, || -> Result<()> {
        for f in ["all", "default", SERVER_IF] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{f}/rp_filter"), "0")?;
        }
        Ok(())
    })??;
    let mut objects = Objects { product: load::load(&tables)?.ebpf, bench: bench_object::load()? };
    live::load_injector(&mut objects.bench)?;
    for p in [Program::CountDrop, Program::CountPass] {
        bench_object::program(&mut objects.bench, p)?;
    }
    let template = live::udp_template(
        Ipv4Addr::from(u32::from(DENY.0) + 1),
        SERVER,
        40000,
        DPORT,
        super::mac(&lab.server, SERVER_IF)?,
        super::mac(&lab.client, CLIENT_IF)?,
    );
    let ifindex = in_netns(&lab.client, || unsafe { libc::if_nametoindex(c"veth-c".as_ptr()) })?;
    if ifindex == 0 {
        bail!("no {CLIENT_IF} in {}", lab.client);
    }
    let ipt = super::iptables_backend();
    let systems: Vec<&System> = opts
        .systems
        .iter()
        .map(|k| {
            SYSTEMS
                .iter()
                .find(|s| s.key == k)
                .with_context(|| format!("unknown system {k} (floor, xdp, nftables, iptables, none)"))
        })
        .collect::<Result<_>>()?;

    println!(
        "\nPacket rate on one CPU (CPU {cpu}: {}), live XDP frames: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES,",
        live::cpu_model()
    );
    println!(
        "batches of {}: the injector (bench_inject) rewrites each copy of a 60-byte IPv4 UDP frame (random source in a range,",
        live::BATCH
    );
    println!(
        "random source port, checksum) and redirects it into veth-c; the system under test runs natively on veth-s, in another"
    );
    println!("namespace, on the same CPU. {:?} per sample, median of {} samples, systems interleaved; frames counted where they arrive.", opts.run, opts.reps);
    println!("Floods to {SERVER}:{DPORT}/udp (open to any-ip): denied = from 198.18.0.0/15 (no role), a new 5-tuple nearly every frame;");
    println!(
        "one frame = 198.18.0.1:40000 repeated; allowed = from 10.201.0.4/30 (any-ip), random source ports; mixed = 90% / 10%."
    );
    println!("nftables, iptables-legacy and no filter: count-and-pass (XDP_PASS) on veth-s and the ruleset in the server namespace's stack;");
    println!("what passes reaches UDP at a port without a socket (dropped there, ICMP errors rate-limited).");

    let mut samples: Vec<(usize, usize, Vec<Sample>)> = vec![];
    for rep in 0..opts.reps {
        // A different system first on every round, so that none always follows the same one.
        for k in 0..systems.len() {
            let si = (k + rep) % systems.len();
            let sys = systems[si];
            let Some(attached) = setup(&mut objects, &lab, &site, sys, ipt.as_ref(), rep == 0)? else { continue };
            let result = (|| -> Result<()> {
                for (fi, flood) in sys.floods.iter().enumerate() {
                    let inj = Injection {
                        netns: &lab.client,
                        ifindex,
                        template: &template,
                        rewrite: flood.rewrite,
                        cpu,
                        run: opts.run,
                    };
                    // The counter, and what reached UDP and what the program passed, read at the
                    // same two moments.
                    let mut reads: Vec<(u64, Option<u64>)> = vec![];
                    let product = &objects.product;
                    let rate = live::inject(&mut objects.bench, &inj, &mut |bench| {
                        let (n, passed) = counted(product, bench, sys.key)?;
                        reads.push((udp_in(&lab)?, passed));
                        Ok(n)
                    })?;
                    let [(u0, p0), (u1, p1)] = reads[..] else { bail!("counter read {} times", reads.len()) };
                    let s = Sample { rate, to_udp: u1 - u0, passed: p1.zip(p0).map(|(a, b)| a - b) };
                    if std::env::var_os("DPB_LIVE_DEBUG").is_some() {
                        eprintln!("{} {}: {rate:?}", sys.key, flood.name);
                    }
                    match samples.iter_mut().find(|(a, b, _)| *a == si && *b == fi) {
                        Some((_, _, v)) => v.push(s),
                        None => samples.push((si, fi, vec![s])),
                    }
                }
                Ok(())
            })();
            teardown(&mut objects, &lab, sys, attached, ipt.as_ref());
            result?;
        }
    }

    println!(
        "{:<16} {:<24} {:>7} {:>13} {:>7} {:>7} {:>8} {:>7} {:>7}",
        "system", "flood", "Mpps", "(min-max)", "thread", "wall", "reached", "to UDP", "passed"
    );
    let mut figures = vec![];
    for (idx, sys) in systems.iter().enumerate() {
        for (fi, flood) in sys.floods.iter().enumerate() {
            let Some((_, _, v)) = samples.iter().find(|(a, b, _)| *a == idx && *b == fi) else { continue };
            let med = |f: &dyn Fn(&Sample) -> f64| median(v.iter().map(f).collect());
            let mpps: Vec<f64> = v.iter().map(|s| s.rate.mpps()).collect();
            let fig = Figure {
                system: sys.label,
                flood: *flood,
                mpps: med(&|s| s.rate.mpps()),
                min: mpps.iter().copied().fold(f64::MAX, f64::min),
                max: mpps.iter().copied().fold(0.0, f64::max),
                thread: med(&|s| s.rate.thread_mpps()),
                wall: med(&|s| s.rate.wall_mpps()),
                reached: v.iter().map(|s| s.rate.reached()).fold(f64::MAX, f64::min),
                to_udp: med(&|s| s.to_udp as f64 / s.rate.counted.max(1) as f64),
                passed: v[0].passed.map(|_| med(&|s| s.passed.unwrap_or(0) as f64 / s.rate.counted.max(1) as f64)),
            };
            println!(
                "{:<16} {:<24} {:>7.2} {:>13} {:>7.2} {:>7.2} {:>7.1}% {:>6.1}% {:>7}",
                fig.system,
                flood.name,
                fig.mpps,
                format!("({:.2}-{:.2})", fig.min, fig.max),
                fig.thread,
                fig.wall,
                fig.reached * 100.0,
                fig.to_udp * 100.0,
                fig.passed.map_or("-".to_string(), |p| format!("{:.1}%", p * 100.0)),
            );
            figures.push(fig);
        }
    }
    println!("Mpps: frames counted by the system under test per second of the test runs' own clock (the CPU while it runs the");
    println!("batches, their softirq included; it stops while the thread yields to other tasks) plus that CPU's ksoftirqd time;");
    println!("thread: per second of the injecting thread's run time plus ksoftirqd; wall: per second of wall time (shared CPU);");
    println!("reached: the least share of the injected frames that reached the system (over the samples); to UDP: of those, the");
    println!("share the stack's UDP layer received; passed: the share this program's counters passed.");

    let alone = program_alone(&mut objects, &template)?;
    report(&figures, alone);
    Ok(figures)
}

/// The ns per frame of this program and of count-and-drop on the template (denied) frame through
/// plain BPF_PROG_TEST_RUN (repeat, no injector, no veth): the program's own cost.
fn program_alone(objects: &mut Objects, frame: &[u8]) -> Result<(f64, f64)> {
    let mut one = |key: &str| -> Result<f64> {
        let prog = objects.program(key)?;
        let mut xs = vec![];
        for _ in 0..5 {
            let opts = TestRunOptions { data_in: Some(frame), repeat: 1_000_000, ..TestRunOptions::default() };
            xs.push(prog.test_run(opts).context("BPF_PROG_TEST_RUN")?.duration.as_nanos() as f64);
        }
        Ok(median(xs))
    };
    Ok((one("xdp")?, one("floor")?))
}

fn report(figures: &[Figure], (alone, floor_alone): (f64, f64)) {
    let get = |system: &str, flood: Flood| figures.iter().find(|f| f.system == system && f.flood == flood).map(|f| f.mpps);
    println!("\nRatios (this run, medians of the Mpps column):");
    let goal = |r: f64, g: f64| if r >= g { "met" } else { "not met" };
    if let (Some(x), Some(f)) = (get("this program", DENIED), get("count-and-drop", DENIED)) {
        println!("  denied flood, this program / count-and-drop = {:.3}x (goal >= 0.7x: {})", x / f, goal(x / f, 0.7));
        let (nx, nf) = (1e3 / x, 1e3 / f);
        println!("    per frame: {nx:.1} ns against {nf:.1} ns: the program adds {:.1} ns to what the injector, the veth and a counter cost;", nx - nf);
        println!("    alone (plain BPF_PROG_TEST_RUN of the same frame): this program {alone:.1} ns, count-and-drop {floor_alone:.1} ns");
    }
    for (name, flood) in [("nftables", DENIED), ("nftables", ONE_FRAME), ("iptables-legacy", DENIED), ("no filter", DENIED)] {
        if let (Some(x), Some(n)) = (get("this program", flood), get(name, flood)) {
            let g = if name == "nftables" && flood == DENIED {
                format!(" (goal >= 10x: {})", goal(x / n, 10.0))
            } else {
                String::new()
            };
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
            println!("  {:<24} {:>6.2} Mpps per core -> {} cores", flood.name, x, (LINE_RATE_MPPS / x).ceil());
        }
    }
    if let Some(f) = get("count-and-drop", DENIED) {
        println!(
            "  (count-and-drop itself would need {}: the injector and the veth are part of each frame's cost here; the program alone,",
            (LINE_RATE_MPPS / f).ceil()
        );
        println!("  {alone:.0} ns a denied frame, is {:.2} cores of work at {LINE_RATE_MPPS} Mpps, on top of what the NIC driver costs)", alone * LINE_RATE_MPPS / 1e3);
    }
}

/// Fails unless the sources of each flood get the verdict the flood is named for (a sample of
/// the random ones, every allowed address), by the classifier the kernel runs.
fn check_floods(c: &classify::Classifier) -> Result<()> {
    let mut rng = Rng::new(13);
    let packet = |src: u32, sport: u16| classify::Probe {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(SERVER),
        proto: 17,
        sport,
        dport: DPORT,
        icmp_type: None,
        quote: None,
    };
    let sport = |r: u64| (r as u16) | 1024;
    for _ in 0..2000 {
        let p = packet(u32::from(DENY.0) + (rng.next() as u32 & DENY.1), sport(rng.next()));
        if c.classify(&p).allows() {
            bail!("the denied flood would pass {p:?}");
        }
    }
    if c.classify(&packet(u32::from(DENY.0) + 1, 40000)).allows() {
        bail!("the one-frame flood would pass");
    }
    for a in 0..=ALLOW.1 {
        for _ in 0..200 {
            let p = packet(u32::from(ALLOW.0) + a, sport(rng.next()));
            if !c.classify(&p).allows() {
                bail!("the allowed flood would drop {p:?}: {:?}", c.classify(&p).reason);
            }
        }
    }
    Ok(())
}

/// Attaches what the system needs on veth-s and loads its rules; None when it cannot run here.
fn setup(
    objects: &mut Objects,
    lab: &Lab,
    site: &Path,
    sys: &System,
    ipt: Option<&(String, String, String)>,
    first: bool,
) -> Result<Option<XdpLinkId>> {
    if sys.key == "iptables" && ipt.is_none() {
        if first {
            println!("{:<16} (skipped: no iptables-restore; apt-get install iptables)", sys.label);
        }
        return Ok(None);
    }
    let prog = objects.program(sys.key)?;
    let link = in_netns(&lab.server, || prog.attach(SERVER_IF, XdpMode::Driver))?
        .with_context(|| format!("attaching the program of {} natively to {SERVER_IF}", sys.label))?;
    let loaded = match sys.key {
        "nftables" => super::load_nft(&lab.server, site).inspect(|&ok| {
            if !ok && first {
                println!("{:<16} (skipped: no `dataplane export --format nft` in this build)", sys.label);
            }
        }),
        "iptables" => {
            let (v4, v6, backend) = ipt.context("iptables")?;
            let rules = super::iptables::render(&dataplane::policy::load_site(site)?);
            super::load_iptables(&lab.server, v4, &rules.v4).and_then(|()| super::load_iptables(&lab.server, v6, &rules.v6)).map(
                |()| {
                    if first {
                        println!(
                            "{:<16} ({backend}: {} IPv4 rules, {} in the flow chain)",
                            sys.label, rules.rules_v4, rules.flow_rules_v4
                        );
                    }
                    true
                },
            )
        }
        _ => Ok(true),
    };
    match loaded {
        Ok(true) => Ok(Some(link)),
        other => {
            let _ = in_netns(&lab.server, || objects.program(sys.key).and_then(|p| Ok(p.detach(link)?)));
            other.map(|_| None)
        }
    }
}

fn teardown(objects: &mut Objects, lab: &Lab, sys: &System, link: XdpLinkId, ipt: Option<&(String, String, String)>) {
    let _ = in_netns(&lab.server, || objects.program(sys.key).and_then(|p| Ok(p.detach(link)?)));
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
fn counted(product: &Ebpf, bench: &Ebpf, key: &str) -> Result<(u64, Option<u64>)> {
    if key == "xdp" {
        let c = Counters::read(product)?;
        let all = c.reasons.iter().map(|r| r.packets).sum();
        let passed = dataplane_common::Reason::ALL.iter().filter(|r| !r.is_drop()).map(|&r| c.reason(r).packets).sum();
        return Ok((all, Some(passed)));
    }
    let program = if key == "floor" { Program::CountDrop } else { Program::CountPass };
    Ok((bench_object::counted(bench, program)?, None))
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

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
