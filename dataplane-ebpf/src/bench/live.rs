//! The live-frames packet-rate bench's XDP programs (tests/src/bench/live.rs), in the bench's
//! object: none of them is in the object `dataplane` loads.
//!
//! - `bench_inject`: the injector. `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` runs it
//!   on each copy of a template frame (Ethernet, IPv4 without options, UDP); it rewrites the
//!   source address and port (random, from `bpf_get_prandom_u32`), fixes the IPv4 header checksum,
//!   and redirects the frame into a veth whose peer runs the program under test natively.
//! - `bench_drop`: count-and-drop, the floor: one per-CPU counter, XDP_DROP.
//! - `bench_pass`: count-and-pass, for the stack's filters (nftables, iptables, no filter): one
//!   per-CPU counter, XDP_PASS, so that the bench can check that every frame reached the veth.
//!
//! Kept tiny on purpose: no parsing beyond one bounds check, no enums, no zeroed buffers.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// The injector's configuration, one entry of `INJECT_WORDS` words (tests/src/bench/live.rs
/// writes it; the indices below are the layout both sides use).
#[map]
static BENCH_INJECT: Array<[u32; INJECT_WORDS]> = Array::with_max_entries(1, 0);
/// Per CPU: frames count-and-drop saw (0) and frames count-and-pass saw (1).
#[map]
static BENCH_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

const INJECT_WORDS: usize = 8;
/// Interface index to redirect every frame to (in the caller's network namespace).
const I_IFINDEX: usize = 0;
/// Bit 0: rewrite the source of each copy (0: send the template unchanged).
const I_FLAGS: usize = 1;
/// Denied share: source = base + (random & mask), host order.
const I_DENY_BASE: usize = 2;
const I_DENY_MASK: usize = 3;
/// Allowed share: the same.
const I_ALLOW_BASE: usize = 4;
const I_ALLOW_MASK: usize = 5;
/// Frames of the allowed share, out of 65,536 (0: none, 65,536: all).
const I_ALLOW_SHARE: usize = 6;
/// Sum of the template's IPv4 header as 16-bit big-endian words, without the checksum and the
/// source address (not folded): the checksum is this plus the new source, folded.
const I_CSUM_BASE: usize = 7;

/// Offsets in the frame: Ethernet (14), IPv4 without options (20), UDP.
const IP_CSUM: usize = 14 + 10;
const IP_SRC: usize = 14 + 12;
const UDP_SPORT: usize = 14 + 20;

#[xdp]
pub fn bench_inject(ctx: XdpContext) -> u32 {
    let Some(c) = BENCH_INJECT.get(0) else { return xdp_action::XDP_ABORTED };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + UDP_SPORT + 2 > end {
        return xdp_action::XDP_ABORTED;
    }
    if c[I_FLAGS] & 1 != 0 {
        // Safety: helpers without pointer arguments.
        let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        let (base, mask) =
            if r2 & 0xffff < c[I_ALLOW_SHARE] { (c[I_ALLOW_BASE], c[I_ALLOW_MASK]) } else { (c[I_DENY_BASE], c[I_DENY_MASK]) };
        let src = base.wrapping_add(r1 & mask);
        // Source ports 1024-65535.
        let sport = (r2 >> 16) as u16 | 1024;
        let mut sum = c[I_CSUM_BASE] + (src >> 16) + (src & 0xffff);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let csum = !(sum as u16);
        // Safety: within the bounds checked above; even offsets from the frame's start, which
        // the kernel aligns, so 16-bit stores (no byte loops, no unaligned words).
        unsafe {
            let p = data as *mut u8;
            *(p.add(IP_CSUM) as *mut u16) = csum.to_be();
            *(p.add(IP_SRC) as *mut u16) = ((src >> 16) as u16).to_be();
            *(p.add(IP_SRC + 2) as *mut u16) = (src as u16).to_be();
            *(p.add(UDP_SPORT) as *mut u16) = sport.to_be();
        }
    }
    // Safety: a helper on scalars; it returns XDP_REDIRECT, or XDP_ABORTED for a bad index.
    unsafe { bpf_redirect(c[I_IFINDEX], 0) as u32 }
}

#[inline(always)]
fn bump(i: u32) {
    if let Some(n) = BENCH_COUNT.get_ptr_mut(i) {
        // Safety: this CPU's slot; XDP does not preempt itself.
        unsafe { *n += 1 };
    }
}

/// Count-and-drop: the least a program that drops can do.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    bump(0);
    xdp_action::XDP_DROP
}

/// Count-and-pass: frames go up the stack, to nftables, iptables or nothing.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    bump(1);
    xdp_action::XDP_PASS
}
