//! `cargo xtask bench`: cost per packet of the real XDP program through BPF_PROG_TEST_RUN, on
//! the lab site, the full catalog of every document and synthetic sites of 1,000 to 1,000,000
//! flows, next to an empty XDP program and xdp-filter (xdp-tools) measured in the same run;
//! compile time, load time and map memory as the number of flows grows.
//!
//! Arguments: `--quick` (synthetic sites up to 100,000 flows, 3 samples per figure, no plots
//! unless `--plots` is given); `--plots DIR` writes `bench-cost.svg` and `bench-scale.svg` into
//! DIR (without `--quick` they go to `docs/` by default); `--no-xdp-filter` skips xdp-filter.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use dataplane::{classify, compile, load, run::compile_site, tables::Tables};
use dataplane_tests::packet::Pkt;

const REPEAT: u32 = 1_000_000;

struct Args {
    samples: usize,
    plots: Option<PathBuf>,
    xdp_filter: bool,
}

/// One figure: (policy label, packet kind, program ns, empty program ns).
struct Figure {
    label: String,
    kind: String,
    prog: f64,
    base: f64,
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

    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} repetitions per sample (the kernel reports the mean per run), median of {} samples, ns per packet;",
        args.samples
    );
    println!("\"empty\" is an XDP program that returns XDP_PASS, timed on the same frame right after.");
    println!("{:<28} {:<18} {:>9} {:>9} {:>9}", "policy", "packet", "program", "empty", "ratio");
    let mut figures: Vec<Figure> = vec![];
    let mut memory = vec![];
    for (label, site) in [("lab site", "policies/sites/lab.yaml"), ("full catalog", "policies/sites/all-documents.yaml")] {
        let tables = compile_site(&root.join(site)).with_context(|| format!("compiling {site}"))?;
        memory.push((label.to_string(), map_memory(&tables)));
        measure_case(label, &tables, &args, &mut figures, true)?;
    }

    let sizes: &[usize] = if quick { &[1_000, 10_000, 100_000] } else { &[1_000, 10_000, 100_000, 1_000_000] };
    let mut scale = vec![];
    for &flows in sizes {
        let cidrs = flows / 10;
        let t0 = Instant::now();
        let policy = dataplane::synth::synthetic_site(flows, cidrs, 7);
        let resolve = t0.elapsed();
        let t1 = Instant::now();
        let (tables, summary) = match compile::compile_with_summary(&policy) {
            Ok(r) => r,
            Err(e) => {
                let protected = policy.roles.iter().filter(|r| r.protected).count();
                println!("synthetic {flows} flows: does not compile: {e:#}");
                println!(
                    "  (the resolved site: {} flow slots, {} roles of which {protected} protected; compiler limits: {} flow slots, {} class pairs, {} port entries; see docs/BENCHMARKS.md)",
                    policy.flows.len(),
                    policy.roles.len(),
                    compile::limits::MAX_FLOWS,
                    compile::limits::MAX_PAIRS,
                    compile::limits::MAX_PORTS
                );
                continue;
            }
        };
        let compile_time = t1.elapsed();
        drop(policy);
        let (entries, bytes) = summary.maps.iter().fold((0, 0), |(e, b), m| (e + m.entries, b + m.bytes));
        let t2 = Instant::now();
        let ebpf = match load::load(&tables) {
            Ok(e) => e,
            Err(e) => {
                println!("synthetic {flows} flows: does not load: {e:#}");
                continue;
            }
        };
        let load_time = t2.elapsed();
        drop(ebpf);
        eprintln!("(synthetic {flows} flows: resolved in {resolve:.1?}, compiled in {compile_time:.1?}, loaded in {load_time:.1?})");
        scale.push(Scale { flows, cidrs, compile: compile_time, load: load_time, entries, bytes });
        memory.push((format!("synthetic {flows} flows"), (entries, bytes)));
        measure_case(&format!("synthetic {flows} flows"), &tables, &args, &mut figures, false)?;
    }

    println!("\nCompile and load as the number of flows grows (synthetic site: flows / 10 CIDRs, seed 7).");
    println!("compile: compile::compile_with_summary wall time (the policy already resolved);");
    println!("load: load::load wall time (object load, map creation and filling, verification of every program);");
    println!("memory: estimated kernel memory of the policy maps (compile::map_sizes: LPM nodes, hash elements and buckets).");
    println!("{:>10} {:>8} {:>12} {:>12} {:>12} {:>12}", "flows", "CIDRs", "compile", "load", "entries", "memory");
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
    println!("\nPolicy map memory (estimated as above):");
    for (label, (entries, bytes)) in &memory {
        println!("  {label:<28} {entries:>10} entries {:>10.1} KiB", *bytes as f64 / 1024.0);
    }

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

    // Ratios against the baseline and between cases, all from this run.
    let find = |label: &str, kind: &str| figures.iter().find(|r| r.label == label && r.kind == kind).map(|r| r.prog);
    println!("\nRatios (this run):");
    for v in ["v4", "v6"] {
        for label in ["lab site", "full catalog"] {
            if let (Some(reply), Some(allow)) = (find(label, &format!("reply {v}")), find(label, &format!("allow {v}"))) {
                println!("  {label}: reply {v} / allow {v} (cached) = {:.2}x (aim: within 1.2x)", reply / allow);
            }
        }
    }
    for s in &scale {
        let syn = format!("synthetic {} flows", s.flows);
        for kind in ["allow v4", "allow v4 uncached", "deny v4", "allow v6", "allow v6 uncached", "deny v6"] {
            if let (Some(full), Some(y)) = (find("full catalog", kind), find(&syn, kind)) {
                println!("  {kind}: {syn} / full catalog = {:.2}x (aim: within 1.2x)", y / full);
            }
        }
    }
    for label in ["lab site", "full catalog"] {
        let f: Vec<&Figure> = figures.iter().filter(|f| f.label == label).collect();
        if !f.is_empty() {
            let r: Vec<String> = f.iter().map(|f| format!("{} {:.2}x", f.kind, f.prog / f.base)).collect();
            println!("  {label} / empty program: {}", r.join(", "));
        }
    }
    if let Some(x) = &xdpf {
        for f in &x.rows {
            println!(
                "  {}: xdp-filter {:.2}x the empty program; this program (lab) {:.2}x xdp-filter{}",
                f.kind,
                f.xdpf / f.base,
                f.ours / f.xdpf,
                f.ours_uncached.map_or(String::new(), |u| format!(", uncached {:.2}x xdp-filter", u / f.xdpf))
            );
        }
    }
    if let Some(dir) = &args.plots {
        plot(dir, &scale, &figures, xdpf.as_ref())?;
        println!("\nplots: {} and {}", dir.join("bench-cost.svg").display(), dir.join("bench-scale.svg").display());
    }
    println!("\nbench finished in {:.0?}", started.elapsed());
    Ok(())
}

fn map_memory(t: &Tables) -> (usize, usize) {
    compile::map_sizes(t).iter().fold((0, 0), |(e, b), m| (e + m.entries, b + m.bytes))
}

fn measure_case(label: &str, tables: &Tables, args: &Args, figures: &mut Vec<Figure>, extras: bool) -> Result<()> {
    let mut ebpf = load::load(tables)?;
    load::program_named(&mut ebpf, load::BASELINE)?.load()?;
    let mut samples = sample_packets(tables, extras)?;
    if extras {
        samples.extend(reply_packets(&mut ebpf, tables)?);
    }
    for (kind, frame) in samples {
        // Every packet after the first of a flow that passed hits the verdict cache; the first
        // packet of a flow (and every denied packet) takes the whole chain.
        for cached in [true, false] {
            if !cached && !kind.starts_with("allow") {
                continue;
            }
            let mut config = tables.config;
            if !cached {
                config.flags |= dataplane_common::CONFIG_NO_CACHE;
            }
            load::write_config(&mut ebpf, config)?;
            let kind = if cached { kind.to_string() } else { format!("{kind} uncached") };
            let prog = median_ns(&mut ebpf, load::PROGRAM, &frame, args.samples)?;
            let base = median_ns(&mut ebpf, load::BASELINE, &frame, args.samples)?;
            println!("{:<28} {:<18} {:>9.1} {:>9.1} {:>8.2}x", label, kind, prog, base, prog / base);
            figures.push(Figure { label: label.to_string(), kind, prog, base });
        }
    }
    Ok(())
}

fn median_ns(ebpf: &mut aya::Ebpf, program: &str, frame: &[u8], n: usize) -> Result<f64> {
    let prog = load::program_named(ebpf, program)?;
    let mut samples = vec![];
    for _ in 0..n {
        let mut opts = TestRunOptions::default();
        opts.data_in = Some(frame);
        opts.repeat = REPEAT;
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        samples.push(r.duration.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[n / 2])
}

fn run_verdict(ebpf: &mut aya::Ebpf, program: &str, frame: &[u8]) -> Result<u32> {
    let mut opts = TestRunOptions::default();
    opts.data_in = Some(frame);
    Ok(load::program_named(ebpf, program)?.test_run(opts)?.return_value)
}

/// An allowed and a denied packet for each IP version the policy protects, found from the tables;
/// with `extras`, also an unprotected and a non-IP frame.
fn sample_packets(t: &Tables, extras: bool) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let c = classify::Classifier::new(t);
    let mut out = vec![];
    for v6 in [false, true] {
        let Some(p) = find_allowed(t, &c, v6) else { continue };
        let mut deny = p.clone();
        deny.dport = (1..=65535).find(|&d| !c.classify(&classify::Packet { dport: d, ..p.clone() }).allow).unwrap_or(0);
        let build = |p: &classify::Packet| match p.proto {
            6 => Pkt::tcp(p.src, p.dst, p.sport, p.dport).build(),
            _ => Pkt::udp(p.src, p.dst, p.sport, p.dport).build(),
        };
        out.push((if v6 { "allow v6" } else { "allow v4" }, build(&p)));
        out.push((if v6 { "deny v6" } else { "deny v4" }, build(&deny)));
        if !v6 && extras {
            // Where the time goes: a destination lookup alone, and the parser alone.
            let mut other = p.clone();
            other.dst = IpAddr::from([198, 18, 0, 1]);
            if c.classify(&other).reason == dataplane_common::Reason::PassUnprotected {
                out.push(("unprot v4", build(&other)));
            }
            let mut arp = vec![0xff; 6];
            arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
            arp.extend_from_slice(&[0; 46]);
            out.push(("non-ip", arp));
        }
    }
    Ok(out)
}
/// A reply of a connection a protected server opened, found from the outbound tables: the
/// connection is recorded through the egress program first (for TCP, the server's SYN and the
/// peer's SYN-ACK), then the reply is what the bench times.
fn reply_packets(ebpf: &mut aya::Ebpf, t: &Tables) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let Some(out) = t.outbound.as_deref() else { return Ok(vec![]) };
    let c = classify::Classifier::new(out);
    let mut frames = vec![];
    for v6 in [false, true] {
        let Some(p) = find_allowed(out, &c, v6) else { continue };
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
        frames.push((if v6 { "reply v6" } else { "reply v4" }, reply.build()));
    }
    Ok(frames)
}

fn run_once(ebpf: &mut aya::Ebpf, program: &str, frame: &[u8]) -> Result<()> {
    let mut opts = TestRunOptions::default();
    opts.data_in = Some(frame);
    if program == load::EGRESS {
        load::egress(ebpf)?.test_run(opts)?;
    } else {
        load::program_named(ebpf, program)?.test_run(opts)?;
    }
    Ok(())
}

/// Walks the tables back from a port entry to addresses that reach it.
fn find_allowed(t: &Tables, c: &classify::Classifier, v6: bool) -> Option<classify::Packet> {
    let addr = |key: &[u8]| -> IpAddr {
        if v6 {
            IpAddr::from(<[u8; 16]>::try_from(key).unwrap())
        } else {
            IpAddr::from(<[u8; 4]>::try_from(key).unwrap())
        }
    };
    let dsts: Vec<(IpAddr, u32)> = if v6 {
        t.dst_v6.iter().map(|e| (addr(&e.key), e.value)).collect()
    } else {
        t.dst_v4.iter().map(|e| (addr(&e.key), e.value)).collect()
    };
    let srcs: Vec<(IpAddr, u32)> = if v6 {
        t.src_v6.iter().map(|e| (addr(&e.key), e.value)).collect()
    } else {
        t.src_v4.iter().map(|e| (addr(&e.key), e.value)).collect()
    };
    for (pair, policy) in &t.pairs {
        let Some(&(dst, _)) = dsts.iter().find(|d| d.1 == pair.dst_class) else { continue };
        let Some(&(src, _)) = srcs.iter().find(|s| s.1 == pair.src_class) else { continue };
        for e in t.ports.iter().filter(|e| u32::from_be_bytes(e.key.policy) == *policy) {
            let dport = u16::from_be_bytes(e.key.dport);
            for sport in [40000u16, 5060, 1024, 36000, 0] {
                let p = classify::Packet { src, dst, proto: e.key.proto, sport, dport, icmp_type: None };
                if c.classify(&p).allow {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// One row of the xdp-filter comparison: the same frame through the empty program, this program
/// (lab site) and xdp-filter (its closest allowlist of the lab site).
struct XdpfRow {
    kind: String,
    base: f64,
    ours: f64,
    ours_uncached: Option<f64>,
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

    let lab = compile_site(&root.join("policies/sites/lab.yaml"))?;
    let mut ebpf = load::load(&lab)?;
    load::program_named(&mut ebpf, load::BASELINE)?.load()?;
    let (ext, prot, ext6, prot6): (IpAddr, IpAddr, IpAddr, IpAddr) = (
        "10.200.0.9".parse()?,
        "10.200.0.1".parse()?,
        "fd00:200::9".parse()?,
        "fd00:200::1".parse()?,
    );
    let frames = [
        ("allow v4 (udp 5060)", Pkt::udp(ext, prot, 5060, 5060).build(), 2),
        ("deny v4 (tcp 443)", Pkt::tcp(ext, prot, 40000, 443).build(), 1),
        ("allow v6 (udp 5060)", Pkt::udp(ext6, prot6, 5060, 5060).build(), 2),
        ("deny v6 (tcp 443)", Pkt::tcp(ext6, prot6, 40000, 443).build(), 1),
    ];
    let dir = std::env::temp_dir().join(&ns);
    std::fs::create_dir_all(&dir)?;
    println!("\nxdp-filter (xdp-tools {}) program {id}, loaded with the closest allowlist of the lab site:", xdpf_version());
    println!("  deny policy; dst ports {}; src addresses {}.", XDPF_PORTS.map(|(p, n)| format!("{p} {n}")).join(", "), XDPF_SOURCES.join(", "));
    println!("  Not expressible: address+port combinations, source ports, the protected destination, ICMP types.");
    println!("  How: `bpftool prog run id {id} data_in FRAME repeat {REPEAT}` (mean per run), median of {} runs;", args.samples);
    println!("  the same frames through this program (lab site; cached: the flow's verdict already in the flow table) and the empty program.");
    println!("  {:<22} {:>9} {:>9} {:>9} {:>11} {:>11}", "packet", "empty", "program", "uncached", "xdp-filter", "xdpf/empty");
    let mut rows = vec![];
    for (kind, frame, want) in frames {
        let file = dir.join(format!("{}.bin", kind.split(' ').take(2).collect::<Vec<_>>().join("-")));
        std::fs::write(&file, &frame)?;
        let mut xs = vec![];
        for _ in 0..args.samples {
            let out = sh(&["bpftool", "-j", "prog", "run", "id", &id.to_string(), "data_in", file.to_str().unwrap(), "repeat", &REPEAT.to_string()])?;
            let v: serde_json::Value = serde_json::from_str(&out).context("bpftool prog run")?;
            if v["retval"].as_u64() != Some(want) {
                bail!("xdp-filter returned {} for {kind}, expected {want}", v["retval"]);
            }
            xs.push(v["duration"].as_f64().context("no duration")?);
        }
        xs.sort_by(f64::total_cmp);
        let xdpf = xs[xs.len() / 2];
        let got = run_verdict(&mut ebpf, load::PROGRAM, &frame)?;
        if u64::from(got) != want {
            bail!("this program returned {got} for {kind}, expected {want}");
        }
        let mut ours_uncached = None;
        if want == 2 {
            let mut c = lab.config;
            c.flags |= dataplane_common::CONFIG_NO_CACHE;
            load::write_config(&mut ebpf, c)?;
            ours_uncached = Some(median_ns(&mut ebpf, load::PROGRAM, &frame, args.samples)?);
            load::write_config(&mut ebpf, lab.config)?;
        }
        let ours = median_ns(&mut ebpf, load::PROGRAM, &frame, args.samples)?;
        let base = median_ns(&mut ebpf, load::BASELINE, &frame, args.samples)?;
        println!(
            "  {:<22} {:>9.1} {:>9.1} {:>9} {:>11.1} {:>10.2}x",
            kind,
            base,
            ours,
            ours_uncached.map_or("-".to_string(), |u| format!("{u:.1}")),
            xdpf,
            xdpf / base
        );
        rows.push(XdpfRow { kind: kind.to_string(), base, ours, ours_uncached, xdpf });
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

fn plot(dir: &Path, scale: &[Scale], figures: &[Figure], xdpf: Option<&Xdpf>) -> Result<()> {
    use plotters::prelude::*;
    std::fs::create_dir_all(dir)?;
    let lo = 500f64;
    let hi = scale.iter().map(|s| s.flows as f64).fold(1e5, f64::max) * 2.0;
    let series_of = |kind: &str, base: bool| -> Vec<(f64, f64)> {
        scale
            .iter()
            .filter_map(|s| {
                let f = figures.iter().find(|f| f.label == format!("synthetic {} flows", s.flows) && f.kind == kind)?;
                Some((s.flows as f64, if base { f.base } else { f.prog }))
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
            .x_label_formatter(&|x| format!("{:.0}", x))
            .draw()?;
        let lines: [(&str, &str, bool, RGBColor); 7] = [
            ("allow v4 uncached", "allowed v4, first packet (uncached)", false, RGBColor(200, 40, 40)),
            ("deny v4", "denied v4", false, RGBColor(120, 0, 120)),
            ("allow v6 uncached", "allowed v6, first packet (uncached)", false, RGBColor(240, 130, 40)),
            ("deny v6", "denied v6", false, RGBColor(180, 90, 200)),
            ("allow v4", "allowed v4, cached", false, RGBColor(30, 90, 200)),
            ("allow v6", "allowed v6, cached", false, RGBColor(40, 170, 200)),
            ("allow v4", "empty XDP program", true, RGBColor(90, 90, 90)),
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
        c.configure_mesh().x_desc("flows").y_desc("ms").x_label_formatter(&|x| format!("{:.0}", x)).draw()?;
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
        c.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).background_style(WHITE.mix(0.85)).draw()?;
        let mmax = scale.iter().map(|s| s.bytes as f64 / (1 << 20) as f64).fold(1.0, f64::max) * 2.0;
        let mut c = ChartBuilder::on(&right)
            .caption("Policy map memory (estimate)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), (0.01f64..mmax).log_scale())?;
        c.configure_mesh().x_desc("flows").y_desc("MiB").x_label_formatter(&|x| format!("{:.0}", x)).draw()?;
        let pts: Vec<(f64, f64)> = scale.iter().map(|s| (s.flows as f64, s.bytes as f64 / (1 << 20) as f64)).collect();
        c.draw_series(LineSeries::new(pts.clone(), RGBColor(0, 150, 60).stroke_width(2)))?;
        c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, RGBColor(0, 150, 60).filled())))?;
        root.present()?;
    }
    Ok(())
}
