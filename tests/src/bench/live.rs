//! The live-frames injector: packets at the rate one CPU can take them, without a sender's socket
//! path. Reusable by any bench; include it with `#[path = "../bench/live.rs"] mod live;`
//! (it depends only on the `dataplane` and `dataplane_tests` crates, aya and libc). The program
//! under test on the peer end may be of another object (the product's): the two meet only at the
//! veth.
//!
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (kernel 5.18+, batches of [`BATCH`])
//! runs `bench_inject` (dataplane-ebpf/src/bench/live.rs) on copies of a template frame; it rewrites
//! each copy as [`Rewrite`] says and redirects it (`bpf_redirect`) into a veth end. The frames
//! cross to the peer end, whose XDP program (attached natively, `XdpMode::Driver`) sees them as
//! it would a NIC's: an `xdp_buff` in a NAPI poll, before any skb. The test run's batch ends
//! with a flush that schedules the peer's NAPI on this CPU and runs it in the softirq of the
//! same call, so with the thread pinned to one CPU the injector, the veth transfer, the program
//! under test and (for XDP_PASS) the stack behind it all run on that CPU.
//!
//! API:
//! - [`load_injector`]`(&mut bench)`: loads `bench_inject` of the bench's object
//!   (`dataplane_tests::bench_object::load`); [`inject`] calls it, it is there for callers that
//!   want the error early.
//! - [`udp_template`]`(src, dst, sport, dport, dst_mac, src_mac)`: a 60-byte Ethernet/IPv4/UDP
//!   frame (64 on the wire: the minimum frame) with a correct IPv4 checksum and no UDP checksum.
//!   A template of your own must be Ethernet, IPv4 without options, then UDP (or anything with a
//!   16-bit source port at offset 34 and no checksum over the source: the injector fixes the IPv4
//!   header checksum only). Its destination MAC should be the peer end's, or the peer's stack
//!   drops what XDP passes as not for this host.
//! - [`inject`]`(&mut bench, &Injection { netns, ifindex, template, rewrite, cpu, run }, &mut count)`:
//!   warms up, then injects for `run` (about ten test-run calls) on `cpu`, in `netns` (the
//!   namespace `ifindex` belongs to; `bpf_redirect` resolves it there). `count(&bench)` returns a
//!   counter of frames that arrived where the caller measures (e.g. the program's per-reason
//!   counters, which the caller reads from its own object, or count-and-pass's of the bench's
//!   object, or the counters of the interface a gateway forwards to); it is read after the
//!   warm-up and after the run, and frames are counted, not injected, so a full veth ring or
//!   frames lost on the way do not count. Returns a [`Rate`]: [`Rate::mpps`] is the headline.
//!
//! Why the test run's clock: it measures this CPU while it runs the calls' batches, softirq
//! included, and stops when the thread yields (the kernel reschedules between batches), so
//! other tasks on a shared machine are left out; what the kernel defers to ksoftirqd of that
//! CPU is added (its run time over the run). The thread's own run time and the wall time are
//! returned as well, for a second view.

// Each bench that includes this uses part of it.
#![allow(dead_code)]

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions},
    Ebpf,
};
use dataplane::kernel::netns::in_netns;
use dataplane_tests::{
    bench_object::{self, Program},
    packet::{udp_header, Pkt},
};

/// Frames per batch of the live test run (the kernel's default; at most 256).
pub const BATCH: u32 = 64;
/// 10 GbE at the minimum frame size (64 bytes + 20 of preamble and gap), in Mpps.
pub const LINE_RATE_MPPS: f64 = 14.88;

/// What the injector does to each copy of the template.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rewrite {
    /// Nothing: every frame is the template (one 5-tuple).
    None,
    /// A random source port (1024-65535) and a random IPv4 source `base + (random & mask)`,
    /// taken from `b` for `b_share` frames out of 65,536 (drawn per frame), else from `a`.
    /// One range: `b_share: 0` (or `b == a`). The IPv4 checksum is fixed; a UDP checksum, if the
    /// template has one, is not (use 0, none).
    Sources { a: (Ipv4Addr, u32), b: (Ipv4Addr, u32), b_share: u32 },
}

impl Rewrite {
    /// Random sources from one range, random source ports.
    pub const fn sources(base: Ipv4Addr, mask: u32) -> Self {
        Rewrite::Sources { a: (base, mask), b: (base, mask), b_share: 0 }
    }
}

/// One injection.
pub struct Injection<'a> {
    /// The network namespace the test run executes in: the one `ifindex` belongs to.
    pub netns: &'a str,
    /// The veth end the frames are redirected into; the program under test is on its peer.
    pub ifindex: u32,
    pub template: &'a [u8],
    pub rewrite: Rewrite,
    /// The CPU everything runs on (the calling thread is pinned there during the call).
    pub cpu: usize,
    /// How long to inject (after a warm-up of 65,536 frames).
    pub run: Duration,
}

/// What one injection measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    /// Frames the injector ran on (after the warm-up).
    pub injected: u64,
    /// Frames the caller's counter saw over the same time.
    pub counted: u64,
    /// The test runs' own clock (ns per frame they report, times the frames), summed.
    pub test_run: Duration,
    /// Run time of ksoftirqd of the CPU over the injection (softirq work the kernel deferred).
    pub ksoftirqd: Duration,
    /// The injecting thread's run time (schedstat), and the wall time.
    pub thread: Duration,
    pub wall: Duration,
}

impl Rate {
    /// Frames counted per second of the CPU the frames' path took: test-run clock plus ksoftirqd.
    pub fn mpps(&self) -> f64 {
        per_us(self.counted, self.test_run + self.ksoftirqd)
    }
    /// Frames counted per second of the thread's run time plus ksoftirqd (a second view; it
    /// also holds the syscalls' entry and exit and whatever interrupts the thread served).
    pub fn thread_mpps(&self) -> f64 {
        per_us(self.counted, (self.thread + self.ksoftirqd).min(self.wall))
    }
    /// Frames counted per second of wall time (the CPU shared with whatever else runs).
    pub fn wall_mpps(&self) -> f64 {
        per_us(self.counted, self.wall)
    }
    /// The share of the injected frames the counter saw.
    pub fn reached(&self) -> f64 {
        self.counted as f64 / self.injected.max(1) as f64
    }
}

fn per_us(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

/// Loads the injector program of the bench's object, once.
pub fn load_injector(bench: &mut Ebpf) -> Result<()> {
    bench_object::program(bench, Program::Inject).map(|_| ())
}

/// A 60-byte IPv4 UDP frame `src:sport -> dst:dport` with these MAC addresses, a correct IPv4
/// header checksum and no UDP checksum.
pub fn udp_template(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = Pkt::raw(IpAddr::V4(src), IpAddr::V4(dst), 17, udp_header(sport, dport, 18)).build();
    debug_assert_eq!(f.len(), 60);
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    let h = &mut f[14..34];
    h[10..12].copy_from_slice(&[0, 0]);
    let sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    h[10..12].copy_from_slice(&(!(((folded & 0xffff) + (folded >> 16)) as u16)).to_be_bytes());
    f
}

/// Whether `e` is the kernel refusing live frames outright (EPERM): a sandboxed kernel may not
/// allow `BPF_F_TEST_XDP_LIVE_FRAMES` at all, for any program. Callers say so and go on without.
pub fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::EPERM)))
}

/// What the benches print instead of live-frames figures on a kernel that refuses them.
pub const REFUSED: &str = "this kernel refuses BPF_PROG_TEST_RUN with live frames (EPERM)";

/// Injects for `inj.run` and measures; see the module's documentation.
pub fn inject(bench: &mut Ebpf, inj: &Injection, count: &mut dyn FnMut(&Ebpf) -> Result<u64>) -> Result<Rate> {
    if inj.template.len() < 14 + 20 + 8 || inj.template[12..14] != [0x08, 0x00] || inj.template[14] != 0x45 {
        bail!("the template must be Ethernet, IPv4 without options, then a transport header ({} bytes)", inj.template.len());
    }
    load_injector(bench)?;
    configure(bench, inj)?;
    let softirqd = ksoftirqd(inj.cpu);
    let old = pin(inj.cpu)?;
    let rate = measure(bench, inj, softirqd, count);
    unpin(&old);
    rate
}

/// One test run of `n` live frames in the current namespace; its clock.
fn live(bench: &mut Ebpf, template: &[u8], n: u32) -> Result<Duration> {
    let prog = bench_object::program(bench, Program::Inject)?;
    let opts = TestRunOptions {
        data_in: Some(template),
        repeat: n,
        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
        ..TestRunOptions::default()
    };
    Ok(prog.test_run(opts).context("BPF_PROG_TEST_RUN with live frames (kernel 5.18+)")?.duration * n)
}

fn measure(
    bench: &mut Ebpf,
    inj: &Injection,
    softirqd: Option<u32>,
    count: &mut dyn FnMut(&Ebpf) -> Result<u64>,
) -> Result<Rate> {
    // Warm up (caches, the page pool's first pages, the peer's ring), untimed and uncounted.
    in_netns(inj.netns, || live(bench, inj.template, 1 << 16))??;
    std::thread::sleep(Duration::from_millis(10));
    let c0 = count(bench)?;
    let (r0, k0) = (thread_run()?, softirqd.map(sched_run).transpose()?);
    let started = Instant::now();
    let (mut n, mut injected, mut test_run, mut calls) = (1u32 << 16, 0u64, Duration::ZERO, 0);
    in_netns(inj.netns, || -> Result<()> {
        while started.elapsed() < inj.run && calls < 1000 {
            let t = Instant::now();
            test_run += live(bench, inj.template, n)?;
            injected += u64::from(n);
            calls += 1;
            // About ten calls per run.
            let took = t.elapsed().as_secs_f64().max(1e-6);
            n = ((f64::from(n) * inj.run.as_secs_f64() / 10.0 / took) as u32).clamp(1 << 14, 1 << 24);
        }
        Ok(())
    })??;
    let wall = started.elapsed();
    let (r1, k1) = (thread_run()?, softirqd.map(sched_run).transpose()?);
    // Let the last batch's deferred work, if any, finish before reading the counter.
    std::thread::sleep(Duration::from_millis(10));
    let c1 = count(bench)?;
    let ksoftirqd = match (k0, k1) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    Ok(Rate { injected, counted: c1.saturating_sub(c0), test_run, ksoftirqd, thread: r1.saturating_sub(r0), wall })
}

/// The injector's configuration (layout: `BENCH_INJECT` in dataplane-ebpf/src/bench/live.rs).
fn configure(bench: &mut Ebpf, inj: &Injection) -> Result<()> {
    let h = &inj.template[14..34];
    let word = |i: usize| u32::from(u16::from_be_bytes([h[2 * i], h[2 * i + 1]]));
    // Every header word but the checksum (5) and the source address (6, 7).
    let csum_base: u32 = (0..10).filter(|i| ![5, 6, 7].contains(i)).map(word).sum();
    let (flags, (a, am), (b, bm), share) = match inj.rewrite {
        Rewrite::None => (0, (Ipv4Addr::UNSPECIFIED, 0), (Ipv4Addr::UNSPECIFIED, 0), 0),
        Rewrite::Sources { a, b, b_share } => (1, a, b, b_share.min(65536)),
    };
    let config: [u32; 8] = [inj.ifindex, flags, u32::from(a), am, u32::from(b), bm, share, csum_base];
    let mut map: Array<_, [u32; 8]> = Array::try_from(bench.map_mut("BENCH_INJECT").context("BENCH_INJECT map")?)?;
    map.set(0, config, 0)?;
    Ok(())
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
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // Safety: as above.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// This thread's run time (/proc/thread-self/schedstat, first field).
fn thread_run() -> Result<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").context("/proc/thread-self/schedstat")?;
    let ns: u64 = s.split_whitespace().next().and_then(|v| v.parse().ok()).context("schedstat")?;
    Ok(Duration::from_nanos(ns))
}

/// A task's run time (/proc/PID/schedstat, first field).
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

/// The CPU model (/proc/cpuinfo), to print next to figures.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()));
    model.unwrap_or_else(|| "unknown CPU".into())
}
