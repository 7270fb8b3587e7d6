//! `cargo xtask bench`: cost per packet of the real XDP program through BPF_PROG_TEST_RUN, on
//! the lab site, the full catalog of every document and synthetic sites of 1,000 to 1,000,000
//! flows, next to the empty XDP program, the floor program (parse, one 5-tuple hash lookup, one
//! per-CPU counter) and xdp-filter (xdp-tools), all measured in the same run, with the CPU model;
//! what each step of the classifier costs; compile time, load time and image memory as the
//! number of flows grows.
//!
//! Arguments: `--quick` (synthetic sites up to 100,000 flows, 3 samples per figure, no plots
//! unless `--plots` is given); `--plots DIR` writes `bench-cost.svg` and `bench-scale.svg` into
//! DIR (without `--quick` they go to `docs/` by default); `--no-xdp-filter` skips xdp-filter;
//! `--flood` measures only the cost of a flood of new allowed tuples (see [`flood_cost`]).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use dataplane::{classify, classify::Outcome, compile, compile::tables::Tables, kernel::load, policy::Policy};
use dataplane_common::{ConnKeyV4, ConnKeyV6, Reason};
use dataplane_tests::{bench_object, packet::Pkt};

const REPEAT: u32 = 1_000_000;

struct Args {
    samples: usize,
    plots: Option<PathBuf>,
    xdp_filter: bool,
}

/// One figure: the program on one frame, with the empty and the floor program on the same frame.
struct Figure {
    label: String,
    kind: String,
    prog: f64,
    base: f64,
    floor: f64,
}

/// The programs a figure times: this program, and the empty and the floor program of the bench's
/// object, on the same frame.
#[derive(Clone, Copy, PartialEq)]
enum Timed {
    Program,
    Empty,
    Floor,
}

/// This program loaded with a site (the product's object), and the bench's object beside it.
struct Rig {
    ebpf: Ebpf,
    bench: Ebpf,
}

impl Rig {
    fn new(tables: &Tables) -> Result<Self> {
        let mut rig = Self { ebpf: load::load(tables)?.ebpf, bench: bench_object::load()? };
        for t in [Timed::Empty, Timed::Floor] {
            rig.xdp(t)?;
        }
        Ok(rig)
    }

    /// The program, loaded.
    fn xdp(&mut self, t: Timed) -> Result<&mut Xdp> {
        match t {
            Timed::Program => Ok(load::program(&mut self.ebpf)?),
            Timed::Empty => bench_object::program(&mut self.bench, bench_object::Program::Baseline),
            Timed::Floor => bench_object::program(&mut self.bench, bench_object::Program::Floor),
        }
    }
}

/// Compile and load of one synthetic site.
struct Scale {
    flows: usize,
    cidrs: usize,
    compile: Duration,
    load: Duration,
    entries: usize,
    bytes: usize,
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plots = match argv.iter().position(|a| a == "--plots") {
        Some(i) => Some(PathBuf::from(argv.get(i + 1).context("--plots needs a directory")?)),
        None if !quick => Some(root.join("docs")),
        None => None,
    };
    let args = Args { samples: if quick { 3 } else { 5 }, plots, xdp_filter: !argv.iter().any(|a| a == "--no-xdp-filter") };
    let started = Instant::now();

    println!("CPU: {} ({} online); kernel {}", cpu_model(), num_cpus(), kernel());
    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} repetitions per sample (the kernel reports the mean per run), median of {} samples, ns per packet;",
        args.samples
    );
    println!("\"empty\" returns XDP_PASS; \"floor\" parses the frame, looks its 5-tuple up in a hash map (a hit) and counts");
    println!("packets and bytes in a per-CPU array: both timed on the same frame right after the program, in the same run.");
    println!("Every packet takes the whole classification: there is no verdict cache (the first packet of a flow and the");
    println!("millionth cost the same), and denied packets insert nothing.");
    if argv.iter().any(|a| a == "--flood") {
        return flood_cost(&root, &args);
    }
    println!("{:<28} {:<24} {:>8} {:>7} {:>7} {:>8} {:>8}", "policy", "packet", "program", "empty", "floor", "/empty", "/floor");
    let mut figures: Vec<Figure> = vec![];
    let mut memory = vec![];
    for (label, site) in [("lab site", "policies/sites/lab.yaml"), ("full catalog", "policies/sites/all-documents.yaml")] {
        let policy = dataplane::policy::load_site(&root.join(site)).with_context(|| format!("loading {site}"))?;
        let tables = compile::compile(&policy).with_context(|| format!("compiling {site}"))?;
        memory.push((label.to_string(), map_memory(&tables)));
        measure_case(label, &policy, &tables, &args, &mut figures, true)?;
    }

    let sizes: &[usize] = if quick { &[1_000, 10_000, 100_000] } else { &[1_000, 10_000, 100_000, 1_000_000] };
    let mut scale = vec![];
    for &flows in sizes {
        let cidrs = flows / 10;
        let t0 = Instant::now();
        let policy = dataplane::policy::synth::synthetic_site(flows, cidrs, 7);
        let resolve = t0.elapsed();
        let t1 = Instant::now();
        let (tables, summary) = match compile::compile_with_summary(&policy) {
            Ok(r) => r,
            Err(e) => {
                let protected = policy.roles.iter().filter(|r| r.protected).count();
                println!("synthetic {flows} flows: does not compile: {e:#}");
                println!(
                    "  (the resolved site: {} flow slots, {} roles of which {protected} protected; compiler limits: {} flow slots, {} image words; see docs/BENCHMARKS.md)",
                    policy.flows.len(),
                    policy.roles.len(),
                    compile::limits::MAX_FLOWS,
                    compile::limits::MAX_IMAGE_WORDS,
                );
                continue;
            }
        };
        let compile_time = t1.elapsed();
        let (entries, bytes) = map_memory(&tables);
        let _ = summary;
        let t2 = Instant::now();
        let ebpf = match load::load(&tables).map(|o| o.ebpf) {
            Ok(e) => e,
            Err(e) => {
                println!("synthetic {flows} flows: does not load: {e:#}");
                continue;
            }
        };
        let load_time = t2.elapsed();
        drop(ebpf);
        eprintln!(
            "(synthetic {flows} flows: resolved in {resolve:.1?}, compiled in {compile_time:.1?}, loaded in {load_time:.1?})"
        );
        scale.push(Scale { flows, cidrs, compile: compile_time, load: load_time, entries, bytes });
        memory.push((format!("synthetic {flows} flows"), (entries, bytes)));
        measure_case(&format!("synthetic {flows} flows"), &policy, &tables, &args, &mut figures, false)?;
    }

    println!("\nCompile and load as the number of flows grows (synthetic site: flows / 10 CIDRs, seed 7).");
    println!("compile: compile::compile_with_summary wall time (the policy already resolved);");
    println!("load: load::load wall time (object load, map creation and filling, verification of every program);");
    println!("memory: the policy image (8-byte words of the POLICY array, both directions) and the flow counters (per CPU).");
    println!("{:>10} {:>8} {:>12} {:>12} {:>12} {:>12}", "flows", "CIDRs", "compile", "load", "words", "memory");
    for s in &scale {
        println!(
            "{:>10} {:>8} {:>10.0}ms {:>10.0}ms {:>12} {:>10.1}MiB",
            s.flows,
            s.cidrs,
            s.compile.as_secs_f64() * 1e3,
            s.load.as_secs_f64() * 1e3,
            s.entries,
            s.bytes as f64 / (1 << 20) as f64
        );
    }
    println!("\nPolicy memory (as above):");
    for (label, (entries, bytes)) in &memory {
        println!("  {label:<28} {entries:>10} words {:>10.1} KiB", *bytes as f64 / 1024.0);
    }

    flood_cost(&root, &args)?;

    let xdpf = if args.xdp_filter {
        match xdp_filter(&root, &args) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("\nxdp-filter: not measured: {e:#}");
                None
            }
        }
    } else {
        None
    };

    report(&figures, &scale, xdpf.as_ref());
    if let Some(dir) = &args.plots {
        plot(dir, &scale, &figures, xdpf.as_ref())?;
        println!("\nplots: {} and {}", dir.join("bench-cost.svg").display(), dir.join("bench-scale.svg").display());
    }
    println!("\nbench finished in {:.0?}", started.elapsed());
    Ok(())
}

/// Distinct tuples of the flood figure: 16 sources x 4096 source ports.
const FLOOD_TUPLES: u32 = 65_536;

/// Issue 14: what a flood of new allowed 5-tuples costs per packet. The site is the flood
/// tests' (tests/sites/floods.yaml): SIP over UDP from `any-ip` (10.203.0.0/24), any source port
/// from 1024, to the Expressway's 5060. Without a verdict cache a tuple never seen and the same
/// tuple repeated take the same walk and should cost the same. Each tuple is one
/// BPF_PROG_TEST_RUN of one run, so the kernel's timer (a clock read per run) is in each figure
/// alike; the runs of the new tuples, of the repeated tuple and of the floor program on it are
/// interleaved, so that a slow phase of the machine weighs on all alike. The same frame is also
/// timed as the other figures are (REPEAT runs per call), with the empty and the floor program.
fn flood_cost(root: &Path, args: &Args) -> Result<()> {
    let site = root.join("tests/sites/floods.yaml");
    let policy = dataplane::policy::load_site(&site).context("loading tests/sites/floods.yaml")?;
    let tables = compile::compile(&policy)?;
    let mut rig = Rig::new(&tables)?;
    // Single runs: the program must stay in the XDP dispatcher (see hold_in_dispatcher).
    let _idle = dataplane_tests::flood::hold_in_dispatcher(rig.xdp(Timed::Program)?, &format!("dpflood{}", std::process::id()))?;
    let server: IpAddr = "10.203.0.1".parse()?;
    let frame =
        |i: u32| Pkt::udp(IpAddr::from([10, 203, 0, 16 + (i / 4096) as u8]), server, 1024 + (i % 4096) as u16, 5060).build();
    // The repeated tuple is one the flood never sends, from one of its sources.
    let repeated = Pkt::udp(IpAddr::from([10, 203, 0, 16]), server, 40000, 5060).build();
    fill_floor(&mut rig.bench, &repeated)?;
    let (mut fresh, mut same, mut floor) = (vec![], vec![], vec![]);
    for i in 0..FLOOD_TUPLES {
        let new = frame(i);
        let mut runs =
            [(&new, &mut fresh, Timed::Program), (&repeated, &mut same, Timed::Program), (&repeated, &mut floor, Timed::Floor)];
        // Each kind first in turn: the first run after the system call's own work is no cheaper.
        runs.rotate_left(i as usize % 3);
        for (frame, out, program) in runs {
            let (verdict, ns) = single_run(&mut rig, program, frame)?;
            if program == Timed::Program && verdict != dataplane_tests::XDP_PASS {
                bail!("the flood's packet {i} was not passed (XDP action {verdict}): tests/sites/floods.yaml changed?");
            }
            out.push(ns);
        }
    }
    let [prog, base, floor_many] = medians(&mut rig, ALL_TIMED, &repeated, args.samples)?;
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() * 9 / 10])
    };
    let ((fresh_med, fresh_p90), (same_med, same_p90), (floor_med, floor_p90)) =
        (stat(&mut fresh), stat(&mut same), stat(&mut floor));
    println!("\nA flood of new allowed tuples (tests/sites/floods.yaml, SIP 5060/udp from any-ip; CPU: {}):", cpu_model());
    println!(
        "  one run per BPF_PROG_TEST_RUN, {FLOOD_TUPLES} of each, interleaved (ns per packet, the kernel's clock read included):"
    );
    println!("  {:<44} {:>8} {:>8}", "", "median", "90th pc");
    println!("  {:<44} {:>8.0} {:>8.0}", format!("allowed, {FLOOD_TUPLES} tuples never seen"), fresh_med, fresh_p90);
    println!("  {:<44} {:>8.0} {:>8.0}", format!("allowed, the same tuple {FLOOD_TUPLES} times"), same_med, same_p90);
    println!("  {:<44} {:>8.0} {:>8.0}", "floor program, the same tuple", floor_med, floor_p90);
    println!(
        "  new / repeated: {:.2}x (median), {:.2}x (90th percentile); no verdict cache: both take the whole walk",
        fresh_med / same_med,
        fresh_p90 / same_p90
    );
    println!(
        "  the same tuple, {REPEAT} runs per call (median of {}): program {prog:.1}, empty {base:.1}, floor {floor_many:.1} ns ({:.2}x the floor)",
        args.samples,
        prog / floor_many
    );
    Ok(())
}

/// One run of `program` on `frame`: its XDP action and the ns the kernel timed.
fn single_run(rig: &mut Rig, program: Timed, frame: &[u8]) -> Result<(u32, f64)> {
    let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
    let r = rig.xdp(program)?.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}

/// Words of the policy image, and bytes of the image and the flow counters (one CPU).
fn map_memory(t: &Tables) -> (usize, usize) {
    let maps = compile::map_sizes(t);
    let words = maps.iter().filter(|m| m.kind == compile::size::MapKind::Array).map(|m| m.entries).sum();
    (words, maps.iter().map(|m| m.bytes).sum())
}

fn measure_case(
    label: &str,
    policy: &Policy,
    tables: &Tables,
    args: &Args,
    figures: &mut Vec<Figure>,
    extras: bool,
) -> Result<()> {
    let mut rig = Rig::new(tables)?;
    let mut samples = sample_packets(policy, tables, extras)?;
    if extras {
        samples.extend(reply_packets(&mut rig.ebpf, policy, tables)?);
    }
    for (kind, frame) in samples {
        fill_floor(&mut rig.bench, &frame)?;
        let [prog, base, floor] = medians(&mut rig, ALL_TIMED, &frame, args.samples)?;
        println!(
            "{:<28} {:<24} {:>8.1} {:>7.1} {:>7.1} {:>7.2}x {:>7.2}x",
            label,
            kind,
            prog,
            base,
            floor,
            prog / base,
            prog / floor
        );
        figures.push(Figure { label: label.to_string(), kind: kind.clone(), prog, base, floor });
    }
    Ok(())
}

/// Puts the frame's 5-tuple in the floor program's table (in the bench's object), so that its
/// lookup is a hit.
fn fill_floor(bench: &mut Ebpf, frame: &[u8]) -> Result<()> {
    use dataplane_common::parse::{parse, Bytes};
    let parsed = parse(&Bytes(frame));
    let Some(p) = parsed.ip_packet() else { return Ok(()) };
    let Some((sport, dport, _)) = dataplane_common::walk::ports(p) else { return Ok(()) };
    if p.v6 {
        let mut m: aya::maps::HashMap<_, ConnKeyV6, u32> =
            aya::maps::HashMap::try_from(bench.map_mut("FLOOR_V6").context("FLOOR_V6")?)?;
        m.insert(ConnKeyV6 { src: [p.src.hi, p.src.lo], dst: [p.dst.hi, p.dst.lo], sport, dport, proto: p.proto as u32 }, 1, 0)?;
    } else {
        let key = ConnKeyV4 { src: p.src.v4(), dst: p.dst.v4(), sport, dport, proto: p.proto as u32 };
        let mut m: aya::maps::HashMap<_, ConnKeyV4, u32> =
            aya::maps::HashMap::try_from(bench.map_mut("FLOOR_V4").context("FLOOR_V4")?)?;
        m.insert(key, 1, 0)?;
    }
    Ok(())
}

/// This program, the empty one and the floor, in the order of a figure's columns.
const ALL_TIMED: [Timed; 3] = [Timed::Program, Timed::Empty, Timed::Floor];

/// The median ns per run of each program on `frame`, their samples taken in turn so that a slow
/// phase of the machine weighs on all of them alike.
fn medians<const N: usize>(rig: &mut Rig, programs: [Timed; N], frame: &[u8], n: usize) -> Result<[f64; N]> {
    let mut samples = [(); N].map(|_| Vec::with_capacity(n));
    for _ in 0..n {
        for (i, &p) in programs.iter().enumerate() {
            samples[i].push(median_ns(rig, p, frame, 1)?);
        }
    }
    Ok(samples.map(|mut s| {
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    }))
}

fn median_ns(rig: &mut Rig, program: Timed, frame: &[u8], n: usize) -> Result<f64> {
    let prog = rig.xdp(program)?;
    let mut samples = vec![];
    for _ in 0..n {
        let opts = TestRunOptions { data_in: Some(frame), repeat: REPEAT, ..Default::default() };
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        samples.push(r.duration.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[n / 2])
}

fn run_verdict(rig: &mut Rig, program: Timed, frame: &[u8]) -> Result<u32> {
    let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
    Ok(rig.xdp(program)?.test_run(opts)?.return_value)
}

fn build(p: &classify::Probe) -> Vec<u8> {
    match p.proto {
        6 => Pkt::tcp(p.src, p.dst, p.sport, p.dport).build(),
        _ => Pkt::udp(p.src, p.dst, p.sport, p.dport).build(),
    }
}

/// Per IP version the policy protects: an allowed packet, one to a source-port-constrained flow,
/// and three denied ones: a closed port (no flow names it), an open port from the wrong role,
/// and an open port from a source in no role (what a flood of random sources sends). With
/// `extras`, also an unprotected and a non-IP frame.
fn sample_packets(policy: &Policy, t: &Tables, extras: bool) -> Result<Vec<(String, Vec<u8>)>> {
    let c = classify::Classifier::new(t);
    let mut out = vec![];
    for v6 in [false, true] {
        let fam = if v6 { "v6" } else { "v4" };
        let Some(allow) = find_allowed(policy, &policy.flows, &c, v6, false, |c, p| c.classify(p)) else { continue };
        out.push((format!("allow {fam}"), build(&allow)));
        if let Some(sp) = find_allowed(policy, &policy.flows, &c, v6, true, |c, p| c.classify(p)) {
            out.push((format!("allow {fam} (source port)"), build(&sp)));
        }
        let denied = |p: &classify::Probe| !c.classify(p).allows();
        if let Some(closed) = closed_port(&c, &allow) {
            out.push((format!("deny {fam} closed port"), build(&closed)));
        }
        let open_ports: Vec<(u8, u16)> = policy.flows.iter().filter(|f| !f.deny).map(|f| (f.proto, f.dport[0].0)).collect();
        // The wrong role: an address of another role of the site, to an open port of the server.
        let wrong = role_addrs(policy, v6).into_iter().find_map(|src| {
            open_ports
                .iter()
                .map(|&(proto, dport)| classify::Probe { src, proto, dport, sport: 40000, ..allow })
                .find(|p| denied(p) && c.classify(p).reason == Reason::DropNoFlow)
        });
        if let Some(w) = wrong {
            out.push((format!("deny {fam} wrong role"), build(&w)));
        }
        let stranger: IpAddr = if v6 { "2001:db8:ffff::77".parse()? } else { "198.18.77.77".parse()? };
        let random = open_ports
            .iter()
            .map(|&(proto, dport)| classify::Probe { src: stranger, proto, dport, sport: 40000, ..allow })
            .find(|p| denied(p));
        if let Some(r) = random {
            out.push((format!("deny {fam} random source"), build(&r)));
        }
        if !v6 && extras {
            let mut other = allow;
            other.dst = IpAddr::from([198, 18, 0, 1]);
            if c.classify(&other).reason == Reason::PassUnprotected {
                out.push(("unprotected v4".into(), build(&other)));
            }
            let mut arp = vec![0xff; 6];
            arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
            arp.extend_from_slice(&[0; 46]);
            out.push(("non-ip".into(), arp));
        }
    }
    Ok(out)
}

/// A port of the packet's protocol that no flow names (the port filter alone drops it).
fn closed_port(c: &classify::Classifier, p: &classify::Probe) -> Option<classify::Probe> {
    (1..=65535u16).rev().find(|&d| !c.port_named(p.proto, d)).map(|dport| classify::Probe { dport, ..*p })
}

/// The first address of every bound role of the family, and one past it.
fn role_addrs(policy: &Policy, v6: bool) -> Vec<IpAddr> {
    let to_ip =
        |a: u128| if v6 { IpAddr::from(std::net::Ipv6Addr::from(a)) } else { IpAddr::from(std::net::Ipv4Addr::from(a as u32)) };
    policy.roles.iter().flat_map(|r| r.cidrs.iter()).filter(|c| c.v6 == v6 && c.len > 0).map(|c| to_ip(c.addr)).collect()
}

/// A reply of a connection a protected server opened, found from the outbound flows: the
/// connection is recorded through the egress program first (for TCP, the server's SYN and the
/// peer's SYN-ACK), then the reply is what the bench times.
fn reply_packets(ebpf: &mut Ebpf, policy: &Policy, t: &Tables) -> Result<Vec<(String, Vec<u8>)>> {
    let Some(c) = classify::Classifier::new_outbound(t) else { return Ok(vec![]) };
    let mut frames = vec![];
    for v6 in [false, true] {
        let Some(p) = find_allowed(policy, &policy.out_flows, &c, v6, false, |c, p| c.classify_outbound(p)) else { continue };
        let (outgoing, reply, opening_reply) = match p.proto {
            17 => (Pkt::udp(p.src, p.dst, p.sport, p.dport), Pkt::udp(p.dst, p.src, p.dport, p.sport), None),
            _ => (
                Pkt::tcp(p.src, p.dst, p.sport, p.dport),
                Pkt::tcp(p.dst, p.src, p.dport, p.sport).tcp_flags(0x10),
                Some(Pkt::tcp(p.dst, p.src, p.dport, p.sport).tcp_flags(0x12)),
            ),
        };
        run_once(ebpf, load::EGRESS, &outgoing.build())?;
        if let Some(syn_ack) = opening_reply {
            run_once(ebpf, load::PROGRAM, &syn_ack.build())?;
        }
        frames.push((format!("reply {}", if v6 { "v6" } else { "v4" }), reply.build()));
    }
    Ok(frames)
}

fn run_once(ebpf: &mut Ebpf, program: &str, frame: &[u8]) -> Result<()> {
    let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
    if program == load::EGRESS {
        load::egress(ebpf)?.test_run(opts)?;
    } else {
        load::program_named(ebpf, program)?.test_run(opts)?;
    }
    Ok(())
}

/// A packet an allow flow of `flows` admits (`sport_only`: one whose flow names source ports),
/// from the first addresses of its roles, as `judge` says.
fn find_allowed(
    policy: &Policy,
    flows: &[dataplane::policy::Flow],
    c: &classify::Classifier,
    v6: bool,
    sport_only: bool,
    judge: impl Fn(&classify::Classifier, &classify::Probe) -> dataplane_common::walk::Verdict,
) -> Option<classify::Probe> {
    let first = |role: usize| policy.roles[role].cidrs.iter().find(|c| c.v6 == v6).map(|c| c.addr);
    let to_ip =
        |a: u128| if v6 { IpAddr::from(std::net::Ipv6Addr::from(a)) } else { IpAddr::from(std::net::Ipv4Addr::from(a as u32)) };
    flows.iter().filter(|f| !f.deny && (!sport_only || f.sport != [(0, u16::MAX)])).find_map(|f| {
        let (src, dst) = (to_ip(first(f.from)?), to_ip(first(f.to)?));
        let p =
            classify::Probe { src, dst, proto: f.proto, sport: f.sport[0].0, dport: f.dport[0].0, icmp_type: None, quote: None };
        judge(c, &p).allows().then_some(p)
    })
}

/// One row of the xdp-filter comparison: the same frame through the empty program, this program
/// (lab site) and xdp-filter (its closest allowlist of the lab site).
struct XdpfRow {
    kind: String,
    base: f64,
    floor: f64,
    ours: f64,
    xdpf: f64,
}

struct Xdpf {
    rows: Vec<XdpfRow>,
}

/// The closest allowlist xdp-filter expresses for the lab site (policies/sites/lab.yaml): a deny
/// policy, the destination ports open to everyone (any-ip), and the addresses of the roles that
/// reach more (management PC, VCS Control) as allowed sources. xdp-filter passes a packet when
/// any one rule matches; it cannot combine an address with a port, match source ports, restrict
/// the destination address (everything else is "unprotected: pass" in the lab) or match ICMP
/// types, so this list is both looser (.2 and .3 reach every port) and stricter (unprotected
/// addresses and ICMP echo are dropped) than the site.
const XDPF_PORTS: [(&str, u16); 5] = [("udp", 5060), ("tcp", 5061), ("tcp", 1720), ("udp", 36002), ("udp", 1719)];
const XDPF_SOURCES: [&str; 4] = ["10.200.0.2", "10.200.0.3", "fd00:200::2", "fd00:200::3"];

fn xdp_filter(root: &Path, args: &Args) -> Result<Xdpf> {
    if Command::new("xdp-filter").arg("help").output().is_err() {
        bail!("xdp-filter not found (apt-get install xdp-tools)");
    }
    let ns = format!("dpbench{}", std::process::id());
    let mut netns = Netns::new(&ns)?;
    // `ip netns exec` remounts /sys and hides bpffs, where xdp-filter pins its maps; nsenter
    // switches only the network namespace. No dummy driver in this kernel: a veth pair.
    netns.sh(&["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
    netns.sh(&["ip", "link", "set", "v0", "up"])?;
    netns.sh(&["ip", "link", "set", "v1", "up"])?;
    // Loaded as a plain XDP program (no libxdp dispatcher in front): generic (skb) mode, as veth
    // native mode would need a program on the peer too; BPF_PROG_TEST_RUN runs it the same way.
    netns.sh(&["env", "LIBXDP_SKIP_DISPATCHER=1", "xdp-filter", "load", "v0", "--mode", "skb", "--policy", "deny"])?;
    netns.loaded = true;
    for (proto, port) in XDPF_PORTS {
        netns.sh(&["xdp-filter", "port", &port.to_string(), "--mode", "dst", "--proto", proto])?;
    }
    for ip in XDPF_SOURCES {
        netns.sh(&["xdp-filter", "ip", ip, "--mode", "src"])?;
    }
    let out = netns.sh(&["bpftool", "-j", "net", "show", "dev", "v0"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("bpftool net show")?;
    let id = v[0]["xdp"][0]["id"].as_u64().context("no XDP program on v0")?;

    let lab = dataplane::daemon::compile_site(&dataplane::policy::sources::SiteFiles::new(
        &root.join("policies/sites/lab.yaml"),
        None,
    ))?;
    let mut rig = Rig::new(&lab)?;
    let (ext, prot, ext6, prot6): (IpAddr, IpAddr, IpAddr, IpAddr) =
        ("10.200.0.9".parse()?, "10.200.0.1".parse()?, "fd00:200::9".parse()?, "fd00:200::1".parse()?);
    let (stranger, stranger6): (IpAddr, IpAddr) = ("198.18.77.77".parse()?, "2001:db8:ffff::77".parse()?);
    let frames = [
        ("allow v4 (udp 5060)", Pkt::udp(ext, prot, 5060, 5060).build(), 2),
        ("deny v4 wrong role (tcp 443)", Pkt::tcp(ext, prot, 40000, 443).build(), 1),
        ("deny v4 closed (tcp 9999)", Pkt::tcp(ext, prot, 40000, 9999).build(), 1),
        ("deny v4 random src (tcp 443)", Pkt::tcp(stranger, prot, 40000, 443).build(), 1),
        ("allow v6 (udp 5060)", Pkt::udp(ext6, prot6, 5060, 5060).build(), 2),
        ("deny v6 wrong role (tcp 443)", Pkt::tcp(ext6, prot6, 40000, 443).build(), 1),
        ("deny v6 closed (tcp 9999)", Pkt::tcp(ext6, prot6, 40000, 9999).build(), 1),
        ("deny v6 random src (tcp 443)", Pkt::tcp(stranger6, prot6, 40000, 443).build(), 1),
    ];
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir)?;
    println!("\nxdp-filter (xdp-tools {}) program {id}, loaded with the closest allowlist of the lab site:", xdpf_version());
    println!(
        "  deny policy; dst ports {}; src addresses {}.",
        XDPF_PORTS.map(|(p, n)| format!("{p} {n}")).join(", "),
        XDPF_SOURCES.join(", ")
    );
    println!("  Not expressible: address+port combinations, source ports, the protected destination, ICMP types.");
    println!("  How: `bpftool prog run id {id} data_in FRAME repeat {REPEAT}` (mean per run), median of {} runs;", args.samples);
    println!("  the same frames through this program (lab site), the empty program and the floor program.");
    println!(
        "  {:<30} {:>7} {:>7} {:>8} {:>10} {:>11} {:>13}",
        "packet", "empty", "floor", "program", "xdp-filter", "xdpf/empty", "program/xdpf"
    );
    let mut rows = vec![];
    for (kind, frame, want) in frames {
        let file = dir.join(format!("{}.bin", kind.replace([' ', '(', ')'], "-")));
        std::fs::write(&file, &frame)?;
        let mut xs = vec![];
        for _ in 0..args.samples {
            let out = sh(&[
                "bpftool",
                "-j",
                "prog",
                "run",
                "id",
                &id.to_string(),
                "data_in",
                file.to_str().unwrap(),
                "repeat",
                &REPEAT.to_string(),
            ])?;
            let v: serde_json::Value = serde_json::from_str(&out).context("bpftool prog run")?;
            if v["retval"].as_u64() != Some(want) {
                bail!("xdp-filter returned {} for {kind}, expected {want}", v["retval"]);
            }
            xs.push(v["duration"].as_f64().context("no duration")?);
        }
        xs.sort_by(f64::total_cmp);
        let xdpf = xs[xs.len() / 2];
        let got = run_verdict(&mut rig, Timed::Program, &frame)?;
        if u64::from(got) != want {
            bail!("this program returned {got} for {kind}, expected {want}");
        }
        fill_floor(&mut rig.bench, &frame)?;
        let [ours, base, floor] = medians(&mut rig, ALL_TIMED, &frame, args.samples)?;
        println!(
            "  {:<30} {:>7.1} {:>7.1} {:>8.1} {:>10.1} {:>10.2}x {:>12.2}x",
            kind,
            base,
            floor,
            ours,
            xdpf,
            xdpf / base,
            ours / xdpf
        );
        rows.push(XdpfRow { kind: kind.to_string(), base, floor, ours, xdpf });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Xdpf { rows })
}

fn xdpf_version() -> String {
    Command::new("xdp-filter")
        .args(["load", "--version"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn sh(cmd: &[&str]) -> Result<String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().with_context(|| cmd.join(" "))?;
    if !out.status.success() {
        bail!("{}: {}{}", cmd.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace of our own, removed (with xdp-filter unloaded) on drop.
struct Netns {
    name: String,
    loaded: bool,
}

impl Netns {
    fn new(name: &str) -> Result<Self> {
        sh(&["ip", "netns", "add", name])?;
        Ok(Self { name: name.to_string(), loaded: false })
    }

    fn sh(&self, cmd: &[&str]) -> Result<String> {
        let ns = format!("--net=/var/run/netns/{}", self.name);
        let mut full = vec!["nsenter", ns.as_str()];
        full.extend_from_slice(cmd);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.loaded {
            let _ = self.sh(&["xdp-filter", "unload", "v0"]);
        }
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()));
    model.unwrap_or_else(|| "unknown CPU".into())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

/// The ratios to the floor and the empty program, what each step of the walk costs, how the
/// figures move with the number of flows, and where xdp-filter stands: all from this run.
fn report(figures: &[Figure], scale: &[Scale], xdpf: Option<&Xdpf>) {
    let find = |label: &str, kind: &str| figures.iter().find(|f| f.label == label && f.kind == kind);
    println!("\nRatios to the floor program (this run; goals: every denied and allowed packet <= 1.5x the floor, the first");
    println!("packet of a flow <= 2.5x: with no cache, it is the allowed figure):");
    let mut worst: Option<(&Figure, f64)> = None;
    for f in figures {
        let r = f.prog / f.floor;
        if (f.kind.starts_with("allow") || f.kind.starts_with("deny")) && worst.is_none_or(|(_, w)| r > w) {
            worst = Some((f, r));
        }
    }
    for label in figures.iter().map(|f| f.label.as_str()).collect::<std::collections::BTreeSet<_>>() {
        let row: Vec<String> =
            figures.iter().filter(|f| f.label == label).map(|f| format!("{} {:.2}x", f.kind, f.prog / f.floor)).collect();
        println!("  {label}: {}", row.join(", "));
    }
    if let Some((f, r)) = worst {
        println!(
            "  highest: {} / {} at {r:.2}x the floor ({})",
            f.label,
            f.kind,
            if r <= 1.5 { "within 1.5x" } else { "above 1.5x" }
        );
    }
    println!("\nWhat each step costs (ns, differences between packets that stop after it; v4, same run):");
    let steps = [
        ("parse, count, verdict (non-IP: stops after the Ethernet header)", "non-ip", None),
        ("destination trie (unprotected: stops there)", "unprotected v4", Some("non-ip")),
        ("ICMP/protocol checks and the port filter (closed port)", "deny v4 closed port", Some("unprotected v4")),
        ("class record and source trie (no policy for the source)", "deny v4 wrong role", Some("deny v4 closed port")),
        ("policy record and port table (allowed)", "allow v4", Some("deny v4 wrong role")),
        ("source-port table", "allow v4 (source port)", Some("allow v4")),
        ("tracked-connection check (a reply: live port, flow table)", "reply v4", Some("deny v4 closed port")),
    ];
    for label in ["lab site", "full catalog"] {
        let Some(empty) = find(label, "non-ip").map(|f| f.base) else { continue };
        let parts: Vec<String> = steps
            .iter()
            .filter_map(|(what, kind, before)| {
                let now = find(label, kind)?.prog;
                let prev = match before {
                    Some(b) => find(label, b)?.prog,
                    None => empty,
                };
                Some(format!("    {what}: {:+.1}", now - prev))
            })
            .collect();
        println!("  {label} (empty program {empty:.1} ns):\n{}", parts.join("\n"));
    }
    if let (Some(first), Some(last)) = (scale.first(), scale.last()) {
        println!("\nFrom {} to {} synthetic flows (goal: no path grows by more than 1.2x):", first.flows, last.flows);
        let label = |s: &Scale| format!("synthetic {} flows", s.flows);
        for kind in [
            "allow v4",
            "allow v6",
            "allow v4 (source port)",
            "deny v4 closed port",
            "deny v4 wrong role",
            "deny v4 random source",
            "deny v6 closed port",
            "deny v6 wrong role",
            "deny v6 random source",
        ] {
            let xs: Vec<f64> = scale.iter().filter_map(|s| find(&label(s), kind).map(|f| f.prog / f.floor)).collect();
            let Some(base) = find(&label(first), kind).map(|f| f.prog / f.floor) else { continue };
            let max = xs.iter().copied().fold(base, f64::max);
            println!(
                "  {kind}: {} (x floor); largest / smallest size's: {:.2}x",
                xs.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" "),
                max / base
            );
        }
    }
    if let Some(x) = xdpf {
        println!("\nNext to xdp-filter (goal: every path at or below its cost on the same frame):");
        for r in &x.rows {
            println!(
                "  {}: xdp-filter {:.1} ns ({:.2}x the empty program, {:.2}x the floor); this program {:.2}x xdp-filter",
                r.kind,
                r.xdpf,
                r.xdpf / r.base,
                r.xdpf / r.floor,
                r.ours / r.xdpf
            );
        }
    }
}

fn plot(dir: &Path, scale: &[Scale], figures: &[Figure], xdpf: Option<&Xdpf>) -> Result<()> {
    use plotters::prelude::*;
    std::fs::create_dir_all(dir)?;
    let lo = 500f64;
    let hi = scale.iter().map(|s| s.flows as f64).fold(1e5, f64::max) * 2.0;
    // Which figure of a case: 0 the program, 1 the empty program, 2 the floor program.
    let series_of = |kind: &str, which: u8| -> Vec<(f64, f64)> {
        scale
            .iter()
            .filter_map(|s| {
                let f = figures.iter().find(|f| f.label == format!("synthetic {} flows", s.flows) && f.kind == kind)?;
                Some((s.flows as f64, [f.prog, f.base, f.floor][which as usize]))
            })
            .collect()
    };
    let mut ymax = figures.iter().map(|f| f.prog).fold(0.0, f64::max);
    if let Some(x) = xdpf {
        ymax = x.rows.iter().map(|r| r.xdpf).fold(ymax, f64::max);
    }
    let path = dir.join("bench-cost.svg");
    {
        // The legend gets a panel of its own right of the chart, so that it covers no line.
        let root = SVGBackend::new(&path, (1150, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_horizontally(800);
        let mut legend: Vec<(String, RGBColor, bool)> = vec![];
        let mut chart = ChartBuilder::on(&plot_area)
            .caption("Cost per packet, BPF_PROG_TEST_RUN (median of 1M-run means)", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..(ymax * 1.15).ceil())?;
        chart
            .configure_mesh()
            .x_desc("synthetic site: flows (CIDRs = flows / 10)")
            .y_desc("ns per packet")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        let lines: [(&str, &str, u8, RGBColor); 9] = [
            ("allow v4", "allowed v4 (every packet, the first too)", 0, RGBColor(30, 90, 200)),
            ("allow v6", "allowed v6", 0, RGBColor(40, 170, 200)),
            ("deny v4 wrong role", "denied v4: open port, wrong role", 0, RGBColor(120, 0, 120)),
            ("deny v6 wrong role", "denied v6: open port, wrong role", 0, RGBColor(180, 90, 200)),
            ("deny v4 random source", "denied v4: source in no role", 0, RGBColor(200, 40, 40)),
            ("deny v4 closed port", "denied v4: closed port", 0, RGBColor(240, 130, 40)),
            ("allow v4", "floor program (v4)", 2, RGBColor(0, 0, 0)),
            ("allow v6", "floor program (v6)", 2, RGBColor(130, 130, 130)),
            ("allow v4", "empty XDP program", 1, RGBColor(90, 90, 90)),
        ];
        for (kind, name, base, color) in lines {
            let pts = series_of(kind, base);
            chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
            legend.push((name.to_string(), color, false));
        }
        if let Some(x) = xdpf {
            for (row, color) in [(0usize, RGBColor(0, 150, 60)), (1, RGBColor(100, 120, 0))] {
                let Some(r) = x.rows.get(row) else { continue };
                let style = ShapeStyle { color: color.to_rgba(), filled: false, stroke_width: 2 };
                chart.draw_series(DashedLineSeries::new(vec![(lo, r.xdpf), (hi, r.xdpf)], 8, 5, style))?;
                legend.push((format!("xdp-filter, lab allowlist: {}", r.kind), color, true));
            }
        }
        // The legend panel: a line sample and the series name per row, top aligned with the chart.
        let font = ("sans-serif", 14).into_font();
        for (i, (name, color, dashed)) in legend.iter().enumerate() {
            let y = 60 + 24 * i as i32;
            let (x0, x1) = (10, 40);
            if *dashed {
                for k in 0..3 {
                    legend_area.draw(&PathElement::new(vec![(x0 + 11 * k, y), (x0 + 11 * k + 7, y)], color.stroke_width(2)))?;
                }
            } else {
                legend_area.draw(&PathElement::new(vec![(x0, y), (x1, y)], color.stroke_width(2)))?;
                legend_area.draw(&Circle::new(((x0 + x1) / 2, y), 3, color.filled()))?;
            }
            legend_area.draw(&Text::new(name.clone(), (x1 + 8, y - 8), font.clone()))?;
        }
        root.present()?;
    }
    let path = dir.join("bench-scale.svg");
    {
        let root = SVGBackend::new(&path, (900, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(450);
        let tmax = scale.iter().map(|s| s.compile.max(s.load).as_secs_f64() * 1e3).fold(1.0, f64::max) * 2.0;
        let mut c = ChartBuilder::on(&left)
            .caption("Compile and load time", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), (0.1f64..tmax).log_scale())?;
        c.configure_mesh().x_desc("flows").y_desc("ms").x_label_formatter(&|x| format!("{x:.0}")).draw()?;
        for (name, color, f) in [
            ("compile", RGBColor(30, 90, 200), (|s: &Scale| s.compile) as fn(&Scale) -> Duration),
            ("load (maps + verifier)", RGBColor(200, 40, 40), |s: &Scale| s.load),
        ] {
            let pts: Vec<(f64, f64)> = scale.iter().map(|s| (s.flows as f64, f(s).as_secs_f64() * 1e3)).collect();
            c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        let mmax = scale.iter().map(|s| s.bytes as f64 / (1 << 20) as f64).fold(1.0, f64::max) * 2.0;
        let mut c = ChartBuilder::on(&right)
            .caption("Policy map memory (estimate)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), (0.01f64..mmax).log_scale())?;
        c.configure_mesh().x_desc("flows").y_desc("MiB").x_label_formatter(&|x| format!("{x:.0}")).draw()?;
        let pts: Vec<(f64, f64)> = scale.iter().map(|s| (s.flows as f64, s.bytes as f64 / (1 << 20) as f64)).collect();
        c.draw_series(LineSeries::new(pts.clone(), RGBColor(0, 150, 60).stroke_width(2)))?;
        c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, RGBColor(0, 150, 60).filled())))?;
        root.present()?;
    }
    Ok(())
}
