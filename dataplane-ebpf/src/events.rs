//! Drop events: what was dropped (or, in monitor mode, would have been), sent to user space
//! through a ring buffer for `dataplane events`. A per-CPU budget per second keeps a flood from
//! costing more than a counter: past it, packets are only counted as suppressed.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::XdpContext,
};
use dataplane_common::{
    parse::{Parsed, Transport},
    Config, DropEvent, EventBudget, Reason,
};

#[map]
static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Reports a dropped IP packet, within this CPU's budget for the current second.
#[inline(always)]
pub fn report(ctx: &XdpContext, parsed: &Parsed, reason: Reason, slot: u32, config: &Config) {
    let Some(p) = parsed.ip_packet() else { return };
    let rate = config.events_per_sec;
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else { return };
    // Safety: this CPU's slot.
    let budget = unsafe { &mut *budget };
    // A new budget a second (hz ticks) after the last began: no division per packet.
    let now = crate::flowtable::now();
    if now.wrapping_sub(budget.started) >= config.hz as u64 {
        budget.started = now;
        budget.sent = 0;
    }
    if budget.sent >= rate {
        budget.suppressed = budget.suppressed.saturating_add(1);
        return;
    }
    let (sport, dport) = if p.l4.kind == Transport::Ports { (p.l4.sport, p.l4.dport) } else { (0, 0) };
    let event = DropEvent {
        // Safety: a helper without arguments; a nanosecond clock only for the events that go out.
        time_ns: unsafe { bpf_ktime_get_coarse_ns() },
        ifindex: ctx.ingress_ifindex() as u32,
        slot: if reason == Reason::DropDenyFlow { slot } else { u32::MAX },
        src: p.src.bytes(),
        dst: p.dst.bytes(),
        sport,
        dport,
        reason: reason as u8,
        proto: p.proto,
        v6: p.v6 as u8,
        pad: 0,
        suppressed: budget.suppressed,
        tail: 0,
    };
    if DROP_EVENTS.output::<DropEvent>(&event, 0).is_ok() {
        budget.sent += 1;
        budget.suppressed = 0;
    }
}
