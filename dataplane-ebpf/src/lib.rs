//! What the product's programs (`dataplane`, src/main.rs) and the bench's (`dataplane-bench`,
//! src/bench/main.rs) share: the kernel's buffers as frames for the parser, and the per-CPU
//! counter. Two objects, so that the one `dataplane run` loads holds only what enforces.
#![no_std]

pub mod frame;

use aya_ebpf::maps::PerCpuArray;
use dataplane_common::Counter;

/// Adds one packet of `bytes` to slot `index` of `map`, on this CPU.
#[inline(always)]
pub fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        // Safety: a per-CPU slot is only touched by this CPU, and XDP does not preempt itself.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
