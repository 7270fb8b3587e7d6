//! `cargo xtask bench` part 3: gateway forwarding rate on one CPU, with live XDP frames
//! (the injector of tests/src/bench/live.rs).
//!
//! The gateway topology of tests/tests/gateway.rs (dataplane::lab::gateway): the injector redirects
//! allowed SIP datagrams (10.203.1.2:40000 -> 10.203.2.10:5060, vcs-sip-public-in-udp of
//! tests/sites/gateway.yaml) into the outside client's veth end; they arrive on the gateway's
//! outside interface, cross the gateway, and leave by its inside interface to the server's veth
//! end, where count-and-drop (`bench_drop`) counts them: frames are counted where they arrive
//! behind the gateway, not where they are injected. Three ways across, samples interleaved:
//!
//! - `xdp forward`: this program on the outside interface with forwarding on (`run --forward`):
//!   FIB lookup, MAC rewrite, TTL, redirect into the inside interface.
//! - `xdp pass + kernel`: this program, forwarding off: XDP_PASS, the gateway's kernel forwards.
//! - `nft + kernel`: count-and-pass (`bench_pass`) on the outside interface and the ruleset
//!   `dataplane export --format nft` writes, in the forward hook; the kernel forwards.
//!
//! The injector is this bench's own (`bench_forward_inject`): it writes the template's headers
//! into every frame, since forwarding rewrites them in the recycled pages; the measurement is
//! that of tests/src/bench/live.rs (whose template and CPU helpers it uses). The injector,
//! count-and-drop and count-and-pass are of the bench's object, this program of the product's.
//!
//! Everything runs on one CPU (`--cpu N`, default the last one): the injector, both veth
//! crossings, the program or the ruleset, and the kernel's forwarding. Goal: XDP forwarding >=
//! 3x kernel forwarding with nftables. Arguments: `--quick` (0.3 s per sample, 3 samples; else
//! 1 s, 5), `--cpu N`.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::PerCpuArray,
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use dataplane::{
    daemon::compile_site,
    kernel::{images::ImageMaps, load, netns::in_netns},
    lab::gateway::{Gateway, Plan, CLIENT_IF, INSIDE_IF, OUTSIDE_IF, SERVER_IF},
};
use dataplane_common::{forward::FWD_STAT_REDIRECTED, CONFIG_FORWARD};

use dataplane_tests::{
    bench_object::{self, Program},
    flood::mac,
};

#[path = "../bench/live.rs"]
mod live;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 203, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 203, 2, 10);

#[derive(Clone, Copy, PartialEq)]
enum Way {
    XdpForward,
    XdpPass,
    Nft,
}

impl Way {
    const ALL: [Way; 3] = [Way::XdpForward, Way::XdpPass, Way::Nft];
    fn label(self) -> &'static str {
        match self {
            Way::XdpForward => "xdp forward",
            Way::XdpPass => "xdp pass + kernel",
            Way::Nft => "nft + kernel",
        }
    }

    /// The program on the gateway's outside interface: this program (`product`), or
    /// count-and-pass of the bench's object.
    fn program<'a>(self, product: &'a mut Ebpf, bench: &'a mut Ebpf) -> Result<&'a mut Xdp> {
        match self {
            Way::XdpForward | Way::XdpPass => Ok(load::program(product)?),
            Way::Nft => bench_object::program(bench, Program::CountPass),
        }
    }
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let verbose = argv.iter().any(|a| a == "--verbose");
    let (run, samples) = if quick { (Duration::from_millis(300), 3) } else { (Duration::from_secs(1), 5) };
    let cpu = match argv.iter().position(|a| a == "--cpu") {
        Some(i) => argv.get(i + 1).context("--cpu N")?.parse()?,
        None => *live::allowed_cpus()?.last().context("no CPU")?,
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let site = root.join("tests/sites/gateway.yaml");
    std::env::set_var("DATAPLANE_CATALOG_DIR", root.join("policies/catalog"));

    let gw = Gateway::new(
        "i18-fwb",
        &Plan {
            client: &["10.203.1.2/24"],
            outside: &["10.203.1.1/24"],
            inside: &["10.203.2.1/24"],
            server: &["10.203.2.10/24"],
        },
    )?;
    // The gateway knows the server's MAC from the start: no neighbour resolution in the run.
    let server_mac = mac(&gw.server, SERVER_IF)?;
    let lladdr = server_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    dataplane::lab::netns::ip(&[
        "-n",
        &gw.gateway,
        "neigh",
        "replace",
        "10.203.2.10",
        "lladdr",
        &lladdr,
        "dev",
        INSIDE_IF,
        "nud",
        "permanent",
    ])?;
    let template = live::udp_template(CLIENT, SERVER, 40000, 5060, mac(&gw.gateway, OUTSIDE_IF)?, mac(&gw.client, CLIENT_IF)?);

    let tables = compile_site(&dataplane::policy::sources::SiteFiles::new(&site, None))?;
    let nft = nft_forward_ruleset(&site)?;
    let load::Object { mut ebpf, images: mut policy } = load::load(&tables)?;
    let mut bench = bench_object::load()?;
    // Count-and-drop on the server's end: counts what crossed, and lets that veth take frames
    // redirected to its peer.
    let counter_link = attach(bench_object::program(&mut bench, Program::CountDrop)?, &gw.server, SERVER_IF)?;
    bench_object::program(&mut bench, Program::CountPass)?;
    bench_object::program(&mut bench, Program::ForwardInject).context("loading the injector")?;
    let client_if = in_netns(&gw.client, || if_index(CLIENT_IF))?;
    let inside = in_netns(&gw.gateway, || if_index(INSIDE_IF))?;
    let outside = in_netns(&gw.gateway, || if_index(OUTSIDE_IF))?;
    in_netns(&gw.gateway, || dataplane::kernel::forward::fill(&mut ebpf, &[inside, outside]))??;

    println!("gateway forwarding, live XDP frames on CPU {cpu} ({}):", live::cpu_model());
    println!("  allowed UDP {CLIENT}:40000 -> {SERVER}:5060, 64-byte frames, injected into {CLIENT_IF}, counted on {SERVER_IF} behind the gateway");
    println!("  {} per sample, median of {samples}, ways interleaved; Mpps: frames counted per second of the test runs' clock plus ksoftirqd", fmt(run));
    let mut rates: Vec<Vec<Rate>> = vec![vec![]; Way::ALL.len()];
    let mut checks = vec![(0u64, 0u64); Way::ALL.len()];
    for _ in 0..samples {
        for (i, way) in Way::ALL.into_iter().enumerate() {
            let link = setup(&mut ebpf, &mut bench, &mut policy, &gw, way, &nft)?;
            let (f0, k0) = (forwarded_in_xdp(&ebpf)?, dataplane::lab::gateway::forwarded(&gw.gateway));
            let rate = inject(&mut bench, &gw.client, client_if, &template, cpu, run);
            let (f1, k1) = (forwarded_in_xdp(&ebpf)?, dataplane::lab::gateway::forwarded(&gw.gateway));
            teardown(&mut ebpf, &mut bench, &gw, way, link);
            let rate = match rate {
                Err(e) if live::refused(&e) => {
                    println!("  {}: no forwarding figures on this host", live::REFUSED);
                    return Ok(());
                }
                r => r?,
            };
            if verbose {
                println!("    {}: {rate:?}, forwarded in XDP {}, by the kernel {}", way.label(), f1 - f0, k1 - k0);
            }
            rates[i].push(rate);
            checks[i].0 += f1 - f0;
            checks[i].1 += k1 - k0;
        }
    }
    let _ =
        in_netns(&gw.server, || bench_object::program(&mut bench, Program::CountDrop).and_then(|p| Ok(p.detach(counter_link)?)));

    println!(
        "  {:<20} {:>8} {:>9} {:>10} {:>10} {:>16} {:>16}",
        "WAY", "Mpps", "wall", "ns/frame", "crossed", "forwarded in XDP", "kernel forwarded"
    );
    let mut mpps = vec![];
    for (i, way) in Way::ALL.into_iter().enumerate() {
        let m = median(rates[i].iter().map(Rate::mpps).collect());
        let reached = median(rates[i].iter().map(Rate::reached).collect());
        let wall = median(rates[i].iter().map(Rate::wall_mpps).collect());
        // The forwarding counters also saw each sample's warm-up.
        let through: u64 = rates[i].iter().map(|r| r.injected + WARMUP as u64).sum::<u64>().max(1);
        println!(
            "  {:<20} {:>8.2} {:>9.2} {:>10.1} {:>9.0}% {:>15.0}% {:>15.0}%",
            way.label(),
            m,
            wall,
            1e3 / m.max(1e-9),
            reached * 100.0,
            checks[i].0 as f64 * 100.0 / through as f64,
            checks[i].1 as f64 * 100.0 / through as f64
        );
        mpps.push(m);
    }
    println!(
        "  crossed: share of the injected frames counted behind the gateway; forwarded in XDP / kernel forwarded: share of the"
    );
    println!("  frames injected (warm-ups included) that the program's FORWARD_STATS / the gateway's IpForwDatagrams counted");
    let ratio = mpps[0] / mpps[2].max(1e-9);
    println!("  xdp forward / nft + kernel = {ratio:.2}x (goal >= 3x: {})", if ratio >= 3.0 { "met" } else { "NOT met" });
    println!(
        "  xdp forward / xdp pass + kernel = {:.2}x; xdp pass + kernel / nft + kernel = {:.2}x",
        mpps[0] / mpps[1].max(1e-9),
        mpps[1] / mpps[2].max(1e-9)
    );
    drop(gw);
    Ok(())
}

/// The nftables export of `site` with its chain in the forward hook (the export's own chain is
/// at prerouting, priority raw: what a server needs; a gateway filters what it forwards).
fn nft_forward_ruleset(site: &Path) -> Result<String> {
    let policy = dataplane::policy::load_site(site)?;
    let text = dataplane::export::nft::render(&policy, &dataplane::export::nft::NftOptions::default())?.text;
    let hook = "type filter hook prerouting priority raw;";
    if !text.contains(hook) {
        bail!("the nftables export has no `{hook}` line to move to the forward hook");
    }
    Ok(text.replace(hook, "type filter hook forward priority filter;"))
}

fn setup(ebpf: &mut Ebpf, bench: &mut Ebpf, policy: &mut ImageMaps, gw: &Gateway, way: Way, nft: &str) -> Result<XdpLinkId> {
    match way {
        Way::XdpForward | Way::XdpPass => {
            let mut run = policy.run_config()?;
            run.flags = if way == Way::XdpForward { run.flags | CONFIG_FORWARD } else { run.flags & !CONFIG_FORWARD };
            policy.write_run_config(run)?;
        }
        Way::Nft => {
            let path = std::env::temp_dir().join("i18-forward.nft");
            std::fs::write(&path, nft)?;
            let status = Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{}", gw.gateway))
                .args(["nft", "-f"])
                .arg(&path)
                .status()?;
            if !status.success() {
                bail!("nft -f {} failed", path.display());
            }
        }
    }
    attach(way.program(ebpf, bench)?, &gw.gateway, OUTSIDE_IF)
}

fn teardown(ebpf: &mut Ebpf, bench: &mut Ebpf, gw: &Gateway, way: Way, link: XdpLinkId) {
    let _ = in_netns(&gw.gateway, || way.program(ebpf, bench).and_then(|p| Ok(p.detach(link)?)));
    if way == Way::Nft {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", gw.gateway))
            .args(["nft", "delete", "table", "inet", "dataplane"])
            .status();
    }
}

fn attach(prog: &mut Xdp, ns: &str, ifname: &str) -> Result<XdpLinkId> {
    in_netns(ns, || prog.attach(ifname, XdpMode::Driver))?.with_context(|| format!("attaching XDP natively to {ifname} in {ns}"))
}

/// What one injection measured (as `live::Rate`, with this bench's injector).
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    injected: u64,
    counted: u64,
    test_run: Duration,
    ksoftirqd: Duration,
    wall: Duration,
}

impl Rate {
    fn mpps(&self) -> f64 {
        self.counted as f64 / (self.test_run + self.ksoftirqd).as_secs_f64().max(1e-9) / 1e6
    }
    /// Per second of wall time (the CPU shared with whatever else runs).
    fn wall_mpps(&self) -> f64 {
        self.counted as f64 / self.wall.as_secs_f64().max(1e-9) / 1e6
    }
    fn reached(&self) -> f64 {
        self.counted as f64 / self.injected.max(1) as f64
    }
}

/// The injector (`bench_forward_inject`, dataplane-ebpf/src/bench/forward.rs) in live-frames
/// test runs on `cpu`, in namespace `ns`, redirecting into `ifindex`, for about `run` after a
/// warm-up; frames counted behind the gateway. The method of tests/src/bench/live.rs: the test
/// runs' clock holds this CPU's work on the frames, softirqs included; ksoftirqd's time on the
/// CPU over the run is added.
fn inject(bench: &mut Ebpf, ns: &str, ifindex: u32, template: &[u8], cpu: usize, run: Duration) -> Result<Rate> {
    let mut config = [0u32; 18];
    config[0] = ifindex;
    for i in 0..17 {
        config[1 + i] = u32::from(u16::from_ne_bytes([template[2 * i], template[2 * i + 1]]));
    }
    let mut map: aya::maps::Array<_, [u32; 18]> =
        aya::maps::Array::try_from(bench.map_mut("BENCH_FWD").context("BENCH_FWD map")?)?;
    map.set(0, config, 0)?;
    let softirqd = ksoftirqd(cpu);
    let old = pin(cpu)?;
    let live = |bench: &mut Ebpf, n: u32| -> Result<Duration> {
        let prog = bench_object::program(bench, Program::ForwardInject)?;
        let opts = TestRunOptions {
            data_in: Some(template),
            repeat: n,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        };
        Ok(prog.test_run(opts).context("BPF_PROG_TEST_RUN with live frames (kernel 5.18+)")?.duration * n)
    };
    let rate = (|| -> Result<Rate> {
        in_netns(ns, || live(bench, WARMUP))??;
        std::thread::sleep(Duration::from_millis(10));
        let c0 = counted(bench)?;
        let k0 = softirqd.map(sched_run).transpose()?;
        let started = Instant::now();
        let (mut n, mut injected, mut test_run, mut calls) = (1u32 << 16, 0u64, Duration::ZERO, 0);
        in_netns(ns, || -> Result<()> {
            while started.elapsed() < run && calls < 1000 {
                let t = Instant::now();
                test_run += live(bench, n)?;
                injected += u64::from(n);
                calls += 1;
                let took = t.elapsed().as_secs_f64().max(1e-6);
                n = ((f64::from(n) * run.as_secs_f64() / 10.0 / took) as u32).clamp(1 << 14, 1 << 24);
            }
            Ok(())
        })??;
        let wall = started.elapsed();
        let k1 = softirqd.map(sched_run).transpose()?;
        std::thread::sleep(Duration::from_millis(10));
        let counted = counted(bench)?.saturating_sub(c0);
        let ksoftirqd = match (k0, k1) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        };
        Ok(Rate { injected, counted, test_run, ksoftirqd, wall })
    })();
    // Safety: restoring this thread's mask.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old) };
    rate
}

/// Frames of each sample's untimed, uncounted warm-up.
const WARMUP: u32 = 1 << 16;

fn pin(cpu: usize) -> Result<libc::cpu_set_t> {
    // Safety: affinity calls on this thread with cpu_set_t values of our own.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
        Ok(old)
    }
}

/// A task's run time (/proc/PID/schedstat, first field).
fn sched_run(pid: u32) -> Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    Ok(Duration::from_nanos(s.split_whitespace().next().and_then(|v| v.parse().ok()).context("schedstat")?))
}

/// The pid of ksoftirqd/CPU.
fn ksoftirqd(cpu: usize) -> Option<u32> {
    let want = format!("ksoftirqd/{cpu}");
    (1..10_000u32).find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == want))
}

/// Frames count-and-drop counted on the server's end.
fn counted(bench: &Ebpf) -> Result<u64> {
    bench_object::counted(bench, Program::CountDrop)
}

fn forwarded_in_xdp(ebpf: &Ebpf) -> Result<u64> {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(dataplane::kernel::maps::MAP_FORWARD_STATS).context("FORWARD_STATS map")?)?;
    Ok(map.get(&FWD_STAT_REDIRECTED, 0)?.iter().sum())
}

fn if_index(ifname: &str) -> u32 {
    let name = std::ffi::CString::new(ifname).unwrap();
    // Safety: a NUL-terminated name.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fmt(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
