//! The kernel's verdict predicted in userspace: the parser the XDP program runs
//! (`dataplane_common::parse`, here over a byte slice), then the classifier walk it runs
//! (`dataplane_common::walk`) over the same policy image, with a model of the fragment table.
//! Tests and the packet fuzzer run raw frames through both this and the real program and
//! require the same action and the same counters.

use std::collections::HashMap;

use dataplane::compile::tables::Tables;
use dataplane_common::parse::{parse, Addr, Bytes, Packet};
use dataplane_common::walk::{self, Key, Memory, NO_SLOT};
use dataplane_common::Config;

use crate::{Observed, XDP_DROP, XDP_PASS};

/// Later fragments the kernel keeps in its LRU (`FRAGS`, 8192 entries); stay well below it.
pub const MAX_TRACKED_DATAGRAMS: usize = 4096;

/// A stateful model of one loaded program with no egress traffic.
pub struct Twin {
    image: Vec<u64>,
    config: Config,
    frags: Frags,
}

/// Datagrams whose first fragment passed -> flow slot, keyed as the kernel's `FRAGS` keys them.
#[derive(Default)]
struct Frags(HashMap<(Addr, Addr, u32, u8), u32>);

impl Memory for Frags {
    fn fragment(&mut self, p: &Packet) -> Option<u32> {
        self.0.get(&(p.src, p.dst, p.frag_id, p.proto)).copied()
    }
    fn first_fragment_passed(&mut self, p: &Packet, slot: u32) {
        self.0.insert((p.src, p.dst, p.frag_id, p.proto), slot);
    }
    fn reply(&mut self, _: &Packet, _: u16, _: u16, _: u8) -> Option<u32> {
        None
    }
    fn related(&mut self, _: &Key, _: &Addr) -> Option<u32> {
        None
    }
}

impl Twin {
    pub fn new(tables: &Tables) -> Self {
        Twin { image: tables.image(), config: tables.config, frags: Frags::default() }
    }

    /// Datagrams remembered so far (the model is exact while this stays below the LRU's size).
    pub fn tracked(&self) -> usize {
        self.frags.0.len()
    }

    /// What the program must do with `frame`.
    pub fn judge(&mut self, frame: &[u8]) -> Observed {
        let v = walk::judge(self.image.as_slice(), &mut self.frags, &self.config, &parse(&Bytes(frame)));
        Observed {
            action: if v.reason.is_drop() { XDP_DROP } else { XDP_PASS },
            reasons: vec![v.reason],
            flows: (v.slot != NO_SLOT).then_some(v.slot as usize).into_iter().collect(),
            reply_flows: vec![],
        }
    }
}
