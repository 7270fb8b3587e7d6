//! The injector of the gateway forwarding bench (tests/src/bin/forward.rs), in the bench's
//! object: not in the object `dataplane` loads.
//!
//! A forwarding path rewrites the frame in place (MACs, TTL, checksum), the XDP forwarder and
//! the kernel's alike, and the live-frames test run recycles its pages without copying the
//! template again: a frame injected a second time would carry the server's MAC and a spent TTL.
//! So this injector writes the template's Ethernet and IPv4 headers (`BENCH_FWD`, 16-bit words)
//! into every frame before it redirects it, as `bench_inject` does for the fields it rewrites.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// Ethernet and IPv4 headers without options: 34 bytes, 17 words.
const HEAD_WORDS: usize = 17;

/// Word 0: the interface index to redirect to; words 1..=17: the template's first 34 bytes, one
/// 16-bit word (in memory order, as the frame holds it) in the low half of each entry.
#[map]
static BENCH_FWD: Array<[u32; 1 + HEAD_WORDS]> = Array::with_max_entries(1, 0);

#[xdp]
pub fn bench_forward_inject(ctx: XdpContext) -> u32 {
    let Some(c) = BENCH_FWD.get(0) else { return xdp_action::XDP_ABORTED };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 2 * HEAD_WORDS > end {
        return xdp_action::XDP_ABORTED;
    }
    // Safety: within the bounds checked above; even offsets from the frame's start (aligned by
    // the kernel), so 16-bit stores.
    unsafe {
        let p = data as *mut u16;
        for i in 0..HEAD_WORDS {
            *p.add(i) = c[1 + i] as u16;
        }
        // A helper on scalars; XDP_REDIRECT, or XDP_ABORTED for a bad index.
        bpf_redirect(c[0], 0) as u32
    }
}
