//! `cargo xtask bench` part 1: cost per packet of the real XDP program through BPF_PROG_TEST_RUN, on
//! the lab site, the full catalog of every document and a synthetic site of 100,000 flows, next
//! to an empty XDP program measured in the same run.

use std::{net::IpAddr, path::Path, time::Instant};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use dataplane::{classify, load, run::compile_site, tables::Tables};
use dataplane_tests::packet::Pkt;

const REPEAT: u32 = 1_000_000;
/// Measurements per figure; the median is reported.
const SAMPLES: usize = 5;

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cases: Vec<(String, Tables)> = vec![];
    for (label, site) in [("lab site", "policies/sites/lab.yaml"), ("full catalog", "policies/sites/all-documents.yaml")] {
        cases.push((label.to_string(), compile_site(&root.join(site)).with_context(|| format!("compiling {site}"))?));
    }
    let flows = if quick { 10_000 } else { 100_000 };
    let started = Instant::now();
    let synth = dataplane::compile::compile(&dataplane::synth::synthetic_site(flows, flows / 10, 7))?;
    println!("synthetic site: {flows} flows over {} CIDRs compiled in {:.0?}", flows / 10, started.elapsed());
    cases.push((format!("synthetic {flows} flows"), synth));

    println!("\nBPF_PROG_TEST_RUN, {REPEAT} repetitions per sample, median of {SAMPLES} samples, ns per packet");
    println!("{:<26} {:<18} {:>9} {:>9} {:>9}", "policy", "packet", "program", "empty", "ratio");
    let mut results = vec![];
    for (label, tables) in &cases {
        let mut ebpf = load::load(tables)?;
        load::program_named(&mut ebpf, load::BASELINE)?.load()?;
        let mut samples = sample_packets(tables)?;
        samples.extend(reply_packets(&mut ebpf, tables)?);
        for (kind, frame) in samples {
            // Every packet after the first of a flow that passed hits the verdict cache; the
            // first packet of a flow (and every denied packet) takes the whole chain.
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
                let prog_ns = median_ns(&mut ebpf, load::PROGRAM, &frame)?;
                let base_ns = median_ns(&mut ebpf, load::BASELINE, &frame)?;
                println!("{:<26} {:<18} {:>9.1} {:>9.1} {:>8.2}x", label, kind, prog_ns, base_ns, prog_ns / base_ns);
                results.push((label.clone(), kind, prog_ns, base_ns));
            }
        }
    }
    let find = |label: &str, kind: &str| results.iter().find(|r| r.0.starts_with(label) && r.1 == kind).map(|r| r.2);
    println!();
    for v in ["v4", "v6"] {
        for label in ["lab site", "full catalog"] {
            if let (Some(reply), Some(allow)) = (find(label, &format!("reply {v}")), find(label, &format!("allow {v}"))) {
                println!("{label}: reply {v} / allow {v} (cached) = {:.2}x (aim: within 1.2x)", reply / allow);
            }
        }
    }
    for kind in ["allow v4", "allow v4 uncached", "deny v4", "allow v6", "allow v6 uncached", "deny v6"] {
        if let (Some(full), Some(syn)) = (find("full catalog", kind), find("synthetic", kind)) {
            println!("{kind}: synthetic / full catalog = {:.2}x (aim: within 1.2x)", syn / full);
        }
    }
    Ok(())
}

fn median_ns(ebpf: &mut aya::Ebpf, program: &str, frame: &[u8]) -> Result<f64> {
    let prog = load::program_named(ebpf, program)?;
    let mut samples = vec![];
    for _ in 0..SAMPLES {
        let mut opts = TestRunOptions::default();
        opts.data_in = Some(frame);
        opts.repeat = REPEAT;
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        samples.push(r.duration.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[SAMPLES / 2])
}

/// An allowed and a denied packet for each IP version the policy protects, found from the tables.
fn sample_packets(t: &Tables) -> Result<Vec<(&'static str, Vec<u8>)>> {
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
        if !v6 {
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
