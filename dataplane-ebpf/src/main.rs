//! The XDP program: parse each packet, classify it against the compiled maps, pass documented
//! flows, drop the rest, and count every verdict per reason and per flow, per CPU. This object is
//! what `dataplane run` loads: only what enforces (the bench's programs are in src/bench/).
#![no_std]
#![no_main]

mod classify;
mod events;
mod flowtable;
mod forward;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, map, xdp},
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use dataplane_common::{
    parse::{self, Frame},
    walk::{NO_SLOT, REPLY_SLOT},
    Counter, Reason, CONFIG_FORWARD, CONFIG_MONITOR, REASON_COUNT,
};
use dataplane_ebpf::{count, frame};

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
