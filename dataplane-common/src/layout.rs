//! Compile-time checks of the map key and value layouts the programs and the controller share.
//!
//! Both sides compile these types from this crate, but for different targets (bpfel and the
//! host) and the kernel copies them as raw bytes (map keys are hashed byte for byte, values are
//! read through `aya::Pod`). A field added, reordered or resized here changes the bytes without
//! any error on either side; these assertions make such a change fail to build until the layout
//! below is updated on purpose. Keys must have no padding: padding bytes are hashed too, and
//! whatever a stack slot held there would make equal keys differ.

use core::mem::{align_of, offset_of, size_of};

use crate::{
    image, Config, ConnKeyV4, ConnKeyV6, Counter, DropEvent, EventBudget, FlowEntry, FragKey, Reason, RunConfig, REASON_COUNT,
};

// Counter: the per-CPU counter arrays (REASONS, FLOWS, OUT_FLOWS, REPLY_FLOWS).
const _: () = assert!(size_of::<Counter>() == 16 && align_of::<Counter>() == 8);
const _: () = assert!(offset_of!(Counter, packets) == 0 && offset_of!(Counter, bytes) == 8);

// RunConfig: slot 0 of the mmapped CONFIG array, written by the controller on every reload.
const _: () = assert!(size_of::<RunConfig>() == 16 && align_of::<RunConfig>() == 4);
const _: () = assert!(offset_of!(RunConfig, active) == 0 && offset_of!(RunConfig, flags) == 4);
const _: () = assert!(offset_of!(RunConfig, hz) == 8 && offset_of!(RunConfig, generation) == 12);

// Config: the settings, decoded from the image words on both sides.
const _: () = assert!(size_of::<Config>() == 28 && align_of::<Config>() == 4);
const _: () = assert!(offset_of!(Config, flags) == 0 && offset_of!(Config, generation) == 4);
const _: () = assert!(offset_of!(Config, ct_tcp_established) == 8 && offset_of!(Config, ct_tcp_transitory) == 12);
const _: () = assert!(offset_of!(Config, ct_udp) == 16 && offset_of!(Config, events_per_sec) == 20);
const _: () = assert!(offset_of!(Config, hz) == 24);

// ConnKeyV4: key of FLOW_V4 (and FLOOR_V4); 16 bytes, no padding.
const _: () = assert!(size_of::<ConnKeyV4>() == 16 && align_of::<ConnKeyV4>() == 4);
const _: () = assert!(offset_of!(ConnKeyV4, src) == 0 && offset_of!(ConnKeyV4, dst) == 4);
const _: () = assert!(offset_of!(ConnKeyV4, sport) == 8 && offset_of!(ConnKeyV4, dport) == 10);
const _: () = assert!(offset_of!(ConnKeyV4, proto) == 12);
const _: () = assert!(size_of::<ConnKeyV4>() == 4 + 4 + 2 + 2 + 4);

// ConnKeyV6: key of FLOW_V6 (and FLOOR_V6); 40 bytes, no padding.
const _: () = assert!(size_of::<ConnKeyV6>() == 40 && align_of::<ConnKeyV6>() == 8);
const _: () = assert!(offset_of!(ConnKeyV6, src) == 0 && offset_of!(ConnKeyV6, dst) == 16);
const _: () = assert!(offset_of!(ConnKeyV6, sport) == 32 && offset_of!(ConnKeyV6, dport) == 34);
const _: () = assert!(offset_of!(ConnKeyV6, proto) == 36);
const _: () = assert!(size_of::<ConnKeyV6>() == 16 + 16 + 2 + 2 + 4);

// FlowEntry: value of FLOW_V4 / FLOW_V6.
const _: () = assert!(size_of::<FlowEntry>() == 16 && align_of::<FlowEntry>() == 8);
const _: () = assert!(offset_of!(FlowEntry, slot) == 0 && offset_of!(FlowEntry, state) == 4);
const _: () = assert!(offset_of!(FlowEntry, last_seen) == 8);

// FragKey: key of FRAGS; 40 bytes, no padding.
const _: () = assert!(size_of::<FragKey>() == 40 && align_of::<FragKey>() == 8);
const _: () = assert!(offset_of!(FragKey, src) == 0 && offset_of!(FragKey, dst) == 16);
const _: () = assert!(offset_of!(FragKey, id) == 32 && offset_of!(FragKey, proto) == 36);
const _: () = assert!(size_of::<FragKey>() == 16 + 16 + 4 + 4);

// EventBudget: the per-CPU EVENT_BUDGET array.
const _: () = assert!(size_of::<EventBudget>() == 16 && align_of::<EventBudget>() == 8);
const _: () = assert!(offset_of!(EventBudget, started) == 0 && offset_of!(EventBudget, sent) == 8);
const _: () = assert!(offset_of!(EventBudget, suppressed) == 12);

// DropEvent: records of the DROP_EVENTS ring buffer, 64 bytes of fields and no padding (an
// explicit zero `tail`), so nothing uninitialised leaves the program's stack; user space checks
// each record is at least this long before reading one.
const _: () = assert!(size_of::<DropEvent>() == 64 && align_of::<DropEvent>() == 8);
const _: () = assert!(offset_of!(DropEvent, time_ns) == 0 && offset_of!(DropEvent, ifindex) == 8);
const _: () = assert!(offset_of!(DropEvent, slot) == 12 && offset_of!(DropEvent, src) == 16);
const _: () = assert!(offset_of!(DropEvent, dst) == 32 && offset_of!(DropEvent, sport) == 48);
const _: () = assert!(offset_of!(DropEvent, dport) == 50 && offset_of!(DropEvent, reason) == 52);
const _: () = assert!(offset_of!(DropEvent, proto) == 53 && offset_of!(DropEvent, v6) == 54);
const _: () = assert!(offset_of!(DropEvent, pad) == 55 && offset_of!(DropEvent, suppressed) == 56);
const _: () = assert!(offset_of!(DropEvent, tail) == 60);

// Reason: the index of the REASONS array; every reason has a slot, in the order of ALL.
const _: () = assert!(Reason::ALL.len() == REASON_COUNT as usize);
const _: () = {
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!(Reason::ALL[i] as u32 == i as u32);
        i += 1;
    }
};

// The policy image: one page is one array value, and must stay within what the kernel allows
// one (KMALLOC_MAX_SIZE, 4 MiB on x86); the fixed part fits in the first page.
const _: () = assert!(image::PAGE_WORDS == 1 << image::PAGE_SHIFT);
const _: () = assert!(image::PAGE_WORDS * size_of::<u64>() <= 4 << 20);
const _: () = assert!((image::IMAGE_MIN_WORDS as usize) < image::PAGE_WORDS);
