//! The bench's object (`dataplane-bench`): the programs `cargo xtask bench` and the live-frames
//! test measure the product's against or drive it with. `dataplane` never embeds it.
//!
//! - `baseline`: passes everything (the empty program);
//! - `floor`: parse, one 5-tuple hash lookup, one per-CPU counter;
//! - the live-frames injectors, count-and-drop and count-and-pass (`live.rs`, `forward.rs`).
#![no_std]
#![no_main]

mod forward;
mod live;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use dataplane_common::{parse, walk::ports, ConnKeyV4, ConnKeyV6, Counter};
use dataplane_ebpf::{count, frame};

/// Passes everything: the baseline `cargo xtask bench` measures the classifier against.
#[xdp]
pub fn baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

// The floor program's table: what one 5-tuple lookup costs (the bench fills it).
#[map]
static FLOOR_V4: HashMap<ConnKeyV4, u32> = HashMap::with_max_entries(1024, 0);
#[map]
static FLOOR_V6: HashMap<ConnKeyV6, u32> = HashMap::with_max_entries(1024, 0);
/// The floor's counter, indexed by the table's value (at most 7), as the product counts per reason.
#[map]
static FLOOR_COUNT: PerCpuArray<Counter> = PerCpuArray::with_max_entries(8, 0);

/// The floor `cargo xtask bench` measures against: the least a per-flow filter does. Parse
/// Ethernet, IPv4 or IPv6 and the ports, one hash lookup keyed by the 5-tuple, one per-CPU packet
/// and byte counter.
#[xdp]
pub fn floor(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let parsed = parse::parse(&frame::Xdp(&ctx));
    let Some(p) = parsed.ip_packet() else { return xdp_action::XDP_PASS };
    let Some((sport, dport, _)) = ports(p) else { return xdp_action::XDP_PASS };
    // Safety: plain values copied out at once.
    let hit = unsafe {
        if p.v6 {
            let k = ConnKeyV6 { src: [p.src.hi, p.src.lo], dst: [p.dst.hi, p.dst.lo], sport, dport, proto: p.proto as u32 };
            FLOOR_V6.get(k).copied()
        } else {
            let k = ConnKeyV4 { src: p.src.v4(), dst: p.dst.v4(), sport, dport, proto: p.proto as u32 };
            FLOOR_V4.get(k).copied()
        }
    };
    count(&FLOOR_COUNT, hit.unwrap_or(0) & 7, bytes);
    if hit.is_some() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
