//! Floods of many distinct tuples on every CPU (`tests/tests/limits.rs`, `floods.rs`): threads
//! pinned to one CPU at a time, per-CPU counters to show where packets were judged, and an
//! AF_PACKET sender for prebuilt frames over veth.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Map, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use dataplane::lab::netns::{in_netns, Lab, SERVER_IF};
use dataplane_common::Counter;

/// Keeps an XDP program in the kernel's XDP dispatcher while a test runs it many times.
/// BPF_PROG_TEST_RUN enters the program into the dispatcher and takes it out again, each time
/// waiting for an RCU grace period (milliseconds on a busy VM: 230,000 runs took over 15 minutes),
/// unless it is attached in native mode somewhere, when both are no-ops. So it is attached to a
/// veth of a lab of its own that carries no traffic; the veth, and the attachment, go with the
/// returned lab.
pub fn hold_in_dispatcher(prog: &mut Xdp, tag: &str) -> Result<Lab> {
    let lab = Lab::new(tag, &[], &[])?;
    in_netns(&lab.server, || prog.attach(SERVER_IF, XdpMode::Driver))?.context("attaching XDP in native mode to an idle veth")?;
    Ok(lab)
}

/// The CPUs this process may run on (the per-CPU LRU lists of the connection-tracking tables
/// that matter are theirs).
pub fn cpus() -> Vec<usize> {
    // Safety: a zeroed cpu_set_t filled by sched_getaffinity for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set), 0);
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Keeps the calling thread on `cpu` (BPF_PROG_TEST_RUN runs the program on the caller's CPU;
/// a packet sent over veth is received on the sender's CPU).
pub fn pin_to_cpu(cpu: usize) {
    // Safety: a zeroed cpu_set_t with one CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0, "pinning to CPU {cpu}");
    }
}

/// Runs `f` on a thread of its own pinned to `cpu`.
pub fn on_cpu<T: Send + 'static>(cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        pin_to_cpu(cpu);
        f()
    })
    .join()
    .expect("the pinned thread panicked")
}

/// Packets counted in slot `index` of a per-CPU counter map, CPU by CPU (possible CPUs).
pub fn per_cpu_packets(map: &Map, index: u32) -> Result<Vec<u64>> {
    let counters = PerCpuArray::<_, Counter>::try_from(map)?;
    Ok(counters.get(&index, 0).context("reading a per-CPU counter")?.iter().map(|c| c.packets).collect())
}

/// An AF_PACKET socket bound to an interface of the calling thread's network namespace.
pub struct RawSender {
    fd: OwnedFd,
}

/// Frames handed to the kernel per sendmmsg.
const BATCH: usize = 64;

impl RawSender {
    pub fn open(ifname: &str) -> Result<Self> {
        let name = std::ffi::CString::new(ifname)?;
        // Safety: plain socket calls on a descriptor we own.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname} here");
        }
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_ALL as u16).to_be())) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        if unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), len) } != 0 {
            bail!("bind AF_PACKET to {ifname}: {}", std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Sends every frame once, in order, in batches; stops early at `deadline`. Returns the
    /// frames the kernel took.
    pub fn send(&self, frames: &[Vec<u8>], deadline: Instant) -> Result<u64> {
        let mut sent = 0usize;
        while sent < frames.len() && Instant::now() < deadline {
            let batch = &frames[sent..frames.len().min(sent + BATCH)];
            let mut iov: Vec<libc::iovec> =
                batch.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() }).collect();
            let mut msgs: Vec<libc::mmsghdr> = iov
                .iter_mut()
                .map(|v| {
                    // Safety: plain data; zero is a valid value.
                    let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                    m
                })
                .collect();
            // Safety: `msgs` points into `iov`, which points into `frames`; all outlive the call.
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    std::thread::yield_now();
                    continue;
                }
                bail!("sendmmsg: {e}");
            }
            sent += n as usize;
        }
        Ok(sent as u64)
    }
}

/// The IPv4 header checksum (the stack drops a datagram whose checksum is wrong).
pub fn ipv4_checksum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let c = !(((folded & 0xffff) + (folded >> 16)) as u16);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// An interface's MAC address in namespace `ns` (from `ip`: /sys shows the namespace it was
/// mounted in).
pub fn mac(ns: &str, ifname: &str) -> Result<[u8; 6]> {
    let out = std::process::Command::new("ip").args(["-n", ns, "link", "show", ifname]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ether = text.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).context("no link/ether")?;
    let mut m = [0u8; 6];
    for (i, part) in ether.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(m)
}

/// CPUs the kernel sizes per-CPU structures for (`/sys/devices/system/cpu/possible`): a table
/// with per-CPU LRU lists gives each of them an equal share of its entries.
pub fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    text.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) - a.parse::<usize>().unwrap_or(0) + 1,
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}
