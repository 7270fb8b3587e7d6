//! `cargo xtask bench` part 2: packet rate on one CPU with live XDP frames (tests/src/bench/live_rate.rs,
//! the injector in tests/src/bench/live.rs:
//! an injector in BPF_PROG_TEST_RUN redirects rewritten frames into a veth whose peer runs the
//! system under test: this program, count-and-drop, nftables, iptables-legacy, no filter), then
//! through the socket path: a veth pair between two namespaces, driven by
//! an AF_PACKET generator that sends prebuilt frames in batches (sendmmsg), for: no filter, this
//! XDP program, nftables with the ruleset `dataplane export --format nft` writes, and iptables
//! (the legacy backend when installed) with the equivalent rules (tests/src/bench/iptables.rs).
//! Two mixes: drop-heavy (90% of the packets are not allowed) and pass-heavy (90% allowed).
//! Every received datagram is drained by a socket on the server side, so passed packets cost
//! what they cost.
//!
//! Figures: packets per second the generator pushed through, and CPU time per packet (all CPUs,
//! from /proc/stat, over the run). On veth the sender's CPU also runs the receive path, so this
//! is the whole cost of a packet, not a NIC's line rate.
//!
//! Arguments: `--quick` (1 s per figure, 5 reloads; live frames: 0.3 s per sample, 3 samples),
//! `--rate-only` (both packet-rate parts, no reloads), `--reload-only`, `--live-only`,
//! `--socket-only` (one packet-rate part, no reloads), `--cpu N` (the live part's CPU; default
//! the last one), `--live-systems LIST` (live part, in order; default
//! `floor,xdp,nftables,iptables,none`), `--samples N` (live part: samples per figure),
//! `--systems LIST` (AF_PACKET part: filters to measure, in order; default `none,xdp,nftables,iptables`),
//! `--print-iptables [SITE]` (print the iptables-restore input of the iptables comparison, or of
//! SITE, and exit).
//!
//! Then the reload part (tests/src/bench/reload.rs): the real daemon on a veth, SIGHUP after a
//! site edit that flips a probe port, and the time until the probe gets the new verdict.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dataplane::{
    daemon::{compile_site, Enforcer, Mode},
    lab::netns::{in_netns, Lab, Servers, CLIENT_IF, SERVER_IF},
};
use dataplane_tests::packet::Pkt;

#[path = "../bench/iptables.rs"]
mod iptables;
use dataplane_tests::flood::{ipv4_checksum, mac};

#[path = "../bench/live.rs"]
mod live;
#[path = "../bench/live_rate.rs"]
mod live_rate;
#[path = "../bench/reload.rs"]
mod reload;

const RUN: Duration = Duration::from_secs(2);
const BATCH: usize = 64;

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let run = if quick { Duration::from_secs(1) } else { RUN };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let argv: Vec<String> = std::env::args().collect();
    if let Some(i) = argv.iter().position(|a| a == "--print-iptables") {
        // The rules the iptables comparison loads (or those of another site), for reading.
        let site = argv.get(i + 1).map_or_else(|| root.join("tests/sites/e2e.yaml"), std::path::PathBuf::from);
        let rules = iptables::render(&dataplane::policy::load_site(&site)?);
        print!("{}{}", rules.v4, rules.v6);
        eprintln!(
            "{} IPv4 rules ({} in the flow chain), {} IPv6 rules ({})",
            rules.rules_v4, rules.flow_rules_v4, rules.rules_v6, rules.flow_rules_v6
        );
        return Ok(());
    }
    // `--reload-only` / `--rate-only` / `--live-only` / `--socket-only`: one part alone (for
    // iterating on it).
    let has = |flag: &str| argv.iter().any(|a| a == flag);
    let value = |flag: &str| {
        argv.iter().position(|a| a == flag).map(|i| argv.get(i + 1).with_context(|| format!("{flag} needs a value"))).transpose()
    };
    let only = ["--reload-only", "--rate-only", "--live-only", "--socket-only"].into_iter().find(|f| has(f));
    let (live_part, socket_part, reload_part) = match only {
        Some("--reload-only") => (false, false, true),
        Some("--rate-only") => (true, true, false),
        Some("--live-only") => (true, false, false),
        Some("--socket-only") => (false, true, false),
        _ => (true, true, true),
    };
    println!(
        "CPU: {} ({} online); kernel {}",
        live::cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel()
    );
    if live_part {
        let opts = live_rate::Opts {
            run: if quick { Duration::from_millis(300) } else { Duration::from_secs(1) },
            reps: match value("--samples")? {
                Some(n) => n.parse().context("--samples")?,
                None if quick => 3,
                None => 5,
            },
            cpu: value("--cpu")?.map(|c| c.parse()).transpose().context("--cpu")?,
            systems: value("--live-systems")?.map_or_else(
                || ["floor", "xdp", "nftables", "iptables", "none"].map(String::from).to_vec(),
                |l| l.split(',').map(str::to_string).collect(),
            ),
        };
        match live_rate::run(&root, &opts) {
            Err(e) if live::refused(&e) => {
                println!("\nlive frames: {}: no packet-rate figures from them on this host", live::REFUSED);
            }
            r => {
                r?;
            }
        }
    }
    if socket_part {
        packet_rate(&root, run)?;
    }
    if reload_part {
        reloads(&root, if quick { 5 } else { 20 })?;
    }
    Ok(())
}

fn reloads(root: &Path, n: usize) -> Result<()> {
    for site in [reload::Site::Lab, reload::Site::FullCatalog] {
        reloads_of(root, n, site)?;
    }
    Ok(())
}

fn reloads_of(root: &Path, n: usize, site: reload::Site) -> Result<()> {
    println!("\nReload of the {} site: the real daemon (target/release/dataplane run, RUST_LOG=info) on a veth in its own namespaces (dpb-rl-*),", site.name());
    println!("{n} SIGHUPs, each after rewriting the site so that the probe flips (see tests/src/bench/reload.rs: UDP 3478 from any-ip);");
    println!("probe: UDP 10.201.0.3:40000 -> 10.201.0.1:3478 over the veth, a {:?} sleep between probes (interval measured below), echoed by the server side.", Duration::from_micros(200));
    println!("\"verdict\": SIGHUP -> the first probe with the new verdict (sent time); \"log\": SIGHUP -> the daemon's \"reloaded\" line read from its stderr;");
    println!("\"daemon\": the reload time the daemon logs itself (compile, write the image not in force, switch to it, record the state).");
    let t = match reload::run(root, n, site) {
        Ok(t) => t,
        Err(e) => {
            println!("reload: not measured: {e:#}");
            return Ok(());
        }
    };
    println!("{:<4} {:<16} {:>12} {:>10} {:>10}", "#", "flip", "verdict ms", "log ms", "daemon ms");
    for (i, (to_allowed, verdict, log, internal)) in t.rows.iter().enumerate() {
        println!(
            "{:<4} {:<16} {:>12.1} {:>10.1} {:>10}",
            i + 1,
            if *to_allowed { "denied->allowed" } else { "allowed->denied" },
            verdict.as_secs_f64() * 1e3,
            log.as_secs_f64() * 1e3,
            internal.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        );
    }
    let col = |f: &dyn Fn(&reload::Row) -> Option<Duration>| -> Vec<Duration> { t.rows.iter().filter_map(f).collect() };
    for (name, v) in [
        ("SIGHUP -> new verdict on the wire", col(&|r| Some(r.1))),
        ("SIGHUP -> \"reloaded\" logged", col(&|r| Some(r.2))),
        ("reload time the daemon logs", col(&|r| r.3)),
    ] {
        let (mean, median, max) = reload::summary(&v);
        println!("{name:<36} mean {mean:>7.1} ms  median {median:>7.1} ms  max {max:>7.1} ms  ({} reloads)", v.len());
    }
    println!("(probe interval measured: {:.0?}; a verdict time is exact to within one interval)", t.probe_interval);
    Ok(())
}

fn packet_rate(root: &Path, run: Duration) -> Result<()> {
    let site = root.join("tests/sites/e2e.yaml");
    let lab = Lab::new("dpb-rate", &["10.201.0.1/24"], &["10.201.0.2/24", "10.201.0.9/24"])?;
    let _sinks = Servers::start(&lab.server, &[], &[sa("10.201.0.1:5060"), sa("10.201.0.1:9")])?;
    let mixes = [("drop-heavy", 10u32), ("pass-heavy", 90u32)];

    println!("\nPacket rate through the socket path: over veth, AF_PACKET generator (sendmmsg, batches of {BATCH}), {run:?} per figure,");
    println!(
        "60-byte UDP frames; every frame is an skb the sender built, which veth turns back into an XDP buffer: the sender's"
    );
    println!("cost dominates (the live-frames figures above measure the filter).");
    println!("{:<22} {:<11} {:>12} {:>14} {:>10}", "filter", "mix", "packets/s", "CPU ns/packet", "delivered");
    let mut results = vec![];
    let ipt = iptables_backend();
    // `--systems a,b,...`: these filters in this order (default: none,xdp,nftables,iptables).
    let argv: Vec<String> = std::env::args().collect();
    let order: Vec<String> = match argv.iter().position(|a| a == "--systems") {
        Some(i) => argv.get(i + 1).context("--systems needs a list")?.split(',').map(str::to_string).collect(),
        None => ["none", "xdp", "nftables", "iptables"].map(String::from).to_vec(),
    };
    for system in order.iter().map(String::as_str) {
        let guard = match system {
            "xdp" => Some(
                Enforcer::start(
                    dataplane::policy::sources::SiteFiles::new(&site, None),
                    compile_site(&dataplane::policy::sources::SiteFiles::new(&site, None))?,
                    &[SERVER_IF.to_string()],
                    Mode::Native,
                    Some(&lab.server),
                    Default::default(),
                )?
                .0,
            ),
            _ => None,
        };
        if system == "nftables" && !load_nft(&lab.server, &site)? {
            println!("{system:<22} (skipped: no `dataplane export --format nft` in this build)");
            continue;
        }
        if system == "iptables" {
            let Some((v4, v6, backend)) = &ipt else {
                println!("{system:<22} (skipped: no iptables-restore; apt-get install iptables)");
                continue;
            };
            let rules = iptables::render(&dataplane::policy::load_site(&site)?);
            load_iptables(&lab.server, v4, &rules.v4)?;
            load_iptables(&lab.server, v6, &rules.v6)?;
            println!(
                "{:<22} ({backend}; raw PREROUTING, plain rules, no ipset: {} IPv4 rules of which {} in the flow chain, {} IPv6 of which {}; a packet matching no flow is compared with every flow rule)",
                system, rules.rules_v4, rules.flow_rules_v4, rules.rules_v6, rules.flow_rules_v6
            );
        }
        for (mix, allowed_pct) in mixes {
            let frames = frames(&lab, allowed_pct)?;
            let (pps, cpu_ns, delivered) = measure(&lab, &frames, run)?;
            println!("{:<22} {:<11} {:>12.0} {:>14.0} {:>9.0}%", system, mix, pps, cpu_ns, delivered * 100.0);
            results.push((system, mix, pps, cpu_ns));
        }
        drop(guard);
        if system == "nftables" {
            let _ =
                Command::new("ip").args(["netns", "exec", &lab.server, "nft", "delete", "table", "inet", "dataplane"]).status();
        }
        if let (true, Some((v4, v6, _))) = (system == "iptables", &ipt) {
            for restore in [v4, v6] {
                let _ = load_iptables(&lab.server, restore, "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
            }
        }
    }
    println!();
    for mix in ["drop-heavy", "pass-heavy"] {
        let get = |s: &str| results.iter().find(|r| r.0 == s && r.1 == mix).map(|r| r.2);
        if let (Some(x), Some(n)) = (get("xdp"), get("nftables")) {
            println!("{mix}: xdp / nftables packet rate = {:.2}x (aim on drop-heavy: at least 3x)", x / n);
        }
        if let (Some(x), Some(n)) = (get("xdp"), get("iptables")) {
            println!("{mix}: xdp / iptables packet rate = {:.2}x", x / n);
        }
        let cpu = |s: &str| results.iter().find(|r| r.0 == s && r.1 == mix).map(|r| r.3);
        if let (Some(x), Some(n), Some(i)) = (cpu("xdp"), cpu("nftables"), cpu("iptables")) {
            println!("{mix}: CPU per packet, xdp / nftables = {:.2}x, xdp / iptables = {:.2}x", x / n, x / i);
        }
        if let (Some(x), Some(n)) = (get("xdp"), get("none")) {
            println!("{mix}: xdp / no filter packet rate = {:.2}x", x / n);
        }
    }
    Ok(())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

/// `iptables-restore` and `ip6tables-restore` of the legacy backend (x_tables, the classic
/// iptables) when installed, else of the default one (iptables-nft on Debian); and its name.
fn iptables_backend() -> Option<(String, String, String)> {
    let works = |bin: &str| Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success());
    for (v4, v6, name) in [
        ("iptables-legacy-restore", "ip6tables-legacy-restore", "iptables-legacy (x_tables)"),
        ("iptables-restore", "ip6tables-restore", ""),
    ] {
        if works(v4) && works(v6) {
            let name = if name.is_empty() {
                let v = Command::new("iptables")
                    .arg("--version")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                format!("iptables-restore, {v}")
            } else {
                name.to_string()
            };
            return Some((v4.into(), v6.into(), name));
        }
    }
    None
}

/// Loads rules with `restore` (iptables-legacy-restore, ...) in namespace `ns`.
fn load_iptables(ns: &str, restore: &str, rules: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, restore])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {restore}"))?;
    child.stdin.take().unwrap().write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{restore} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Loads the exported ruleset into the server namespace; false when this build cannot export.
fn load_nft(ns: &str, site: &Path) -> Result<bool> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/dataplane");
    let out = Command::new(&bin).args(["export", "--format", "nft", "--site"]).arg(site).output();
    let Ok(out) = out else { return Ok(false) };
    if !out.status.success() {
        return Ok(false);
    }
    let path = std::env::temp_dir().join("dataplane-rate.nft");
    std::fs::write(&path, &out.stdout)?;
    let status = Command::new("ip").args(["netns", "exec", ns, "nft", "-f"]).arg(&path).status()?;
    if !status.success() {
        bail!("nft -f {} failed", path.display());
    }
    Ok(true)
}

/// A cycle of 100 frames: `allowed_pct` SIP datagrams from an any-ip address (allowed), the rest
/// from an address in no role to a port no flow opens (dropped by the filters, delivered without).
fn frames(lab: &Lab, allowed_pct: u32) -> Result<Vec<Vec<u8>>> {
    let (dst_mac, src_mac) = (mac(&lab.server, SERVER_IF)?, mac(&lab.client, CLIENT_IF)?);
    let server: IpAddr = "10.201.0.1".parse()?;
    (0..100u32)
        .map(|i| {
            let p = if i < allowed_pct {
                Pkt::udp("10.201.0.2".parse()?, server, 40000 + (i as u16), 5060)
            } else {
                Pkt::udp("10.201.0.9".parse()?, server, 40000 + (i as u16), 9)
            };
            let mut f = p.build();
            f[0..6].copy_from_slice(&dst_mac);
            f[6..12].copy_from_slice(&src_mac);
            ipv4_checksum(&mut f[14..34]);
            Ok(f)
        })
        .collect()
}

/// Busy and total CPU time of all CPUs, in clock ticks (/proc/stat).
fn cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> =
        stat.lines().next().context("/proc/stat")?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    Ok((total - idle, total))
}

/// Sends `frames` round and round for `run`; returns packets/s, CPU ns per packet, and the share
/// of the sent packets the sinks received.
fn measure(lab: &Lab, frames: &[Vec<u8>], run: Duration) -> Result<(f64, f64, f64)> {
    let received_before = received(lab)?;
    let (busy0, _) = cpu_ticks()?;
    let started = Instant::now();
    let sent = in_netns(&lab.client, || generate(frames, run))??;
    let elapsed = started.elapsed();
    let (busy1, _) = cpu_ticks()?;
    std::thread::sleep(Duration::from_millis(200));
    let delivered = (received(lab)? - received_before) as f64 / sent as f64;
    // clock ticks are 1/100 s on Linux (USER_HZ).
    let cpu_ns = (busy1 - busy0) as f64 * 10_000_000.0 / sent as f64;
    Ok((sent as f64 / elapsed.as_secs_f64(), cpu_ns, delivered))
}

/// UDP datagrams the server side received so far (from its /proc/net/snmp).
fn received(lab: &Lab) -> Result<u64> {
    let snmp = in_netns(&lab.server, || std::fs::read_to_string("/proc/net/snmp"))??;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().context("Udp header")?, udp.next().context("Udp values")?);
    let i = names.split_whitespace().position(|n| n == "InDatagrams").context("InDatagrams")?;
    Ok(values.split_whitespace().nth(i).context("value")?.parse()?)
}

/// The generator: an AF_PACKET socket on the client's veth end, frames sent with sendmmsg.
fn generate(frames: &[Vec<u8>], run: Duration) -> Result<u64> {
    let ifindex = unsafe { libc::if_nametoindex(c"veth-c".as_ptr()) };
    if ifindex == 0 {
        bail!("no {CLIENT_IF} here");
    }
    // Safety: plain socket syscalls on a descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    if unsafe {
        libc::bind(sock.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
    } != 0
    {
        bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
    }
    let mut iov: Vec<libc::iovec> =
        frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() }).collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|i| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov[i % frames.len()];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let (started, mut sent, mut next) = (Instant::now(), 0u64, 0usize);
    while started.elapsed() < run {
        for (i, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_iov = &mut iov[(next + i) % frames.len()];
        }
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            bail!("sendmmsg: {e}");
        }
        sent += n as u64;
        next = (next + n as usize) % frames.len();
    }
    Ok(sent)
}
