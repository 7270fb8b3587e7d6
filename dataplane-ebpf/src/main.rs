//! The XDP program: parse each packet, classify it against the compiled maps, pass documented
//! flows, drop the rest, and count every verdict per reason and per flow, per CPU.
#![no_std]
#![no_main]

mod classify;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext};
use aya_log_ebpf::debug;
use dataplane_common::{Counter, Reason, REASON_COUNT};

use classify::NO_SLOT;

/// Packets and bytes per `Reason`.
#[map]
static REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
/// Packets and bytes per flow slot (sized by the loader).
#[map]
static FLOWS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn dataplane(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let v = classify::judge(parse::parse(&ctx));
    if matches!(v.reason, Reason::DropMalformed | Reason::DropUnparsed | Reason::DropFragment) {
        // Pruned by the verifier unless the controller runs with RUST_LOG=debug.
        debug!(&ctx, "dropped a packet that cannot be judged safely: {}", v.reason.name());
    }
    count(&REASONS, v.reason as u32, bytes);
    if v.slot != NO_SLOT {
        count(&FLOWS, v.slot, bytes);
    }
    if v.reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Passes everything: the baseline `cargo xtask bench` measures the classifier against.
#[xdp]
pub fn baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
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
