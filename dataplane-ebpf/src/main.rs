//! The XDP program: parse each packet, classify it against the compiled maps, pass documented
//! flows, drop the rest, and count every verdict per reason and per flow, per CPU.
#![no_std]
#![no_main]

mod bench;
mod bench_forward;
mod classify;
mod events;
mod flowtable;
mod forward;
mod frame;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use dataplane_common::{
    parse::{self, Frame},
    walk::{ports, NO_SLOT, REPLY_SLOT},
    ConnKeyV4, ConnKeyV6, Counter, Reason, CONFIG_FORWARD, CONFIG_MONITOR, REASON_COUNT,
};

/// Packets and bytes per `Reason`.
#[map]
static REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
/// Packets and bytes per flow slot (sized by the loader).
#[map]
static FLOWS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);
/// Per outbound flow slot: packets the protected servers sent, and the replies admitted.
#[map]
static OUT_FLOWS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);
#[map]
static REPLY_FLOWS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn dataplane(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let parsed = parse::parse(&frame::Xdp(&ctx));
    let Some((img, config)) = classify::current() else {
        // No image of this layout in force: judge nothing as passing.
        count(&REASONS, Reason::DropNoFlow as u32, bytes);
        return xdp_action::XDP_DROP;
    };
    let v = classify::judge(&img, &config, &parsed);
    if v.reason.is_drop() {
        events::report(&ctx, &parsed, v.reason, v.slot, &config);
    }
    if matches!(v.reason, Reason::DropMalformed | Reason::DropUnparsed | Reason::DropFragment) {
        // Pruned by the verifier unless the controller runs with RUST_LOG=debug.
        debug!(&ctx, "dropped a packet that cannot be judged safely: {}", v.reason.name());
    }
    count(&REASONS, v.reason as u32, bytes);
    if v.slot != NO_SLOT {
        if v.slot & REPLY_SLOT != 0 {
            count(&REPLY_FLOWS, v.slot & !REPLY_SLOT, bytes);
        } else {
            count(&FLOWS, v.slot, bytes);
        }
    }
    if v.reason.is_drop() && config.flags & CONFIG_MONITOR == 0 {
        xdp_action::XDP_DROP
    } else if config.flags & CONFIG_FORWARD != 0 && matches!(v.reason, Reason::PassFlow | Reason::PassReply) {
        // Counted above, once, whichever way it leaves.
        forward::forward(&ctx)
    } else {
        xdp_action::XDP_PASS
    }
}

/// Headers an outbound packet needs readable: Ethernet, two tags, IPv6, TCP.
const EGRESS_HEADERS: u32 = 14 + 8 + 40 + 20;

/// tc egress: records the connections protected servers open, so that `dataplane` admits their
/// replies. Never drops: outbound traffic is not filtered.
#[classifier]
pub fn egress(ctx: TcContext) -> i32 {
    let (start, end) = frame::Tc(&ctx).bounds();
    if ((end - start) as u32) < EGRESS_HEADERS {
        // Headers in paged data: pull what there is of them into the linear part.
        let _ = ctx.pull_data(EGRESS_HEADERS.min(ctx.len()));
    }
    let parsed = parse::parse(&frame::Tc(&ctx));
    if let Some(p) = parsed.ip_packet() {
        if let Some(slot) = flowtable::outbound(p) {
            count(&OUT_FLOWS, slot, ctx.len() as u64);
        }
    }
    TC_ACT_OK
}

/// Returns the kernel's clock in ticks (low 32 bits): the loader runs it twice, a known time
/// apart, to learn how many ticks make a second (`Config::hz`).
#[xdp]
pub fn clock(_ctx: XdpContext) -> u32 {
    flowtable::now() as u32
}

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
    count(&REASONS, hit.unwrap_or(0) & 7, bytes);
    if hit.is_some() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        // Safety: a per-CPU slot is only touched by this CPU, and XDP does not preempt itself.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
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
