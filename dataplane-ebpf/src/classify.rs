//! The maps the shared classifier walk (`dataplane_common::walk`) reads in the kernel: the policy
//! image, the site-wide switches, and the state it consults (fragments here, tracked
//! connections in `flowtable`).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap},
};
use dataplane_common::{
    parse::{Packet, Parsed},
    walk::{self, Image, State, Verdict},
    Config, FragKey,
};

use crate::flowtable;

/// The policy image (sized and written by the loader through a shared mapping).
#[map]
static POLICY: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Datagrams whose first fragment passed -> flow slot, so later fragments follow it.
#[map]
static FRAGS: LruHashMap<FragKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// The `POLICY` map as the walk's image: every read is an inlined array lookup.
pub struct Policy;

impl Image for Policy {
    #[inline(always)]
    fn word(&self, index: u32) -> Option<u64> {
        POLICY.get(index).copied()
    }
}

/// Fragments and tracked connections, from the kernel's maps.
pub struct Kernel<'a> {
    pub config: &'a Config,
}

impl State for Kernel<'_> {
    #[inline(always)]
    fn fragment(&mut self, p: &Packet) -> Option<u32> {
        // Safety: the value is a plain u32 copied out at once.
        unsafe { FRAGS.get(&frag_key(p)) }.copied()
    }

    #[inline(always)]
    fn first_fragment_passed(&mut self, p: &Packet, slot: u32) {
        let _ = FRAGS.insert(&frag_key(p), &slot, 0);
    }

    #[inline(always)]
    fn reply(&mut self, p: &Packet, sport: u16, dport: u16, flags: u8) -> Option<u32> {
        flowtable::reply(p, sport, dport, flags, self.config)
    }
}

#[inline(always)]
fn frag_key(p: &Packet) -> FragKey {
    FragKey { src: p.src, dst: p.dst, id: p.frag_id, proto: p.proto, pad: [0; 3] }
}

/// The site-wide switches and timeouts.
#[inline(always)]
pub fn config() -> Config {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// The verdict on an arriving frame.
#[inline(always)]
pub fn judge(parsed: &Parsed, config: &Config) -> Verdict {
    walk::judge(&Policy, &mut Kernel { config }, config, parsed)
}
