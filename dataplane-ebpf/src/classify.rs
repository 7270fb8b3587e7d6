//! The maps the shared classifier walk (`dataplane_common::walk`) reads in the kernel: the policy
//! image, the site-wide switches, and the state it consults (fragments here, tracked
//! connections in `flowtable`).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    Global,
};
use dataplane_common::{
    image::{PAGE_SHIFT, PAGE_WORDS},
    parse::{Packet, Parsed},
    walk::{self, Image, State, Verdict},
    Config, FragKey, Reason,
};

use crate::flowtable;

/// The policy image in pages (sized and written by the loader through a shared mapping).
#[map]
static POLICY: Array<[u64; PAGE_WORDS]> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Datagrams whose first fragment passed -> flow slot, so later fragments follow it.
#[map]
static FRAGS: LruHashMap<FragKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// Pages of `POLICY`, set by the loader before the verifier runs: it reads the constant, so for a
/// one-page image it never explores the lookup of another page (each read would otherwise double
/// the paths it verifies).
#[unsafe(no_mangle)]
static IMAGE_PAGES: Global<u32> = Global::new(1);

/// The `POLICY` map as the walk's image: the first page through a pointer taken once, the
/// others through an (inlined) lookup of their page.
pub struct Policy {
    first: &'static [u64; PAGE_WORDS],
}

impl Policy {
    #[inline(always)]
    pub fn get() -> Option<Self> {
        POLICY.get(0).map(|first| Policy { first })
    }
}

impl Image for Policy {
    #[inline(always)]
    fn word(&self, index: u32) -> Option<u64> {
        // The mask, not a comparison, bounds the offset: the verifier then knows it whatever
        // register LLVM keeps the comparison in.
        let offset = index as usize & (PAGE_WORDS - 1);
        let page = index >> PAGE_SHIFT;
        if page == 0 {
            return Some(self.first[offset]);
        }
        if IMAGE_PAGES.load() <= 1 {
            return None;
        }
        POLICY.get(page).map(|p| p[offset])
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
    FragKey { src: [p.src.hi, p.src.lo], dst: [p.dst.hi, p.dst.lo], id: p.frag_id, proto: p.proto as u32 }
}

/// The site-wide switches and timeouts.
#[inline(always)]
pub fn config() -> Config {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// One parsed packet per CPU, to pass it through memory the verifier does not follow.
#[map]
static PARSED: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(1, 0);

/// The parse, as the verifier sees a value read from a map: the parser has many ways out (tags,
/// families, extension headers, fragments, transport kinds), and without this the walk after it
/// would be verified once for each of them.
#[inline(always)]
fn opaque_parse(parsed: &Parsed) -> Option<&'static Parsed> {
    let slot = PARSED.get_ptr_mut(0)?;
    // Safety: this CPU's slot; nothing else runs on this CPU until the packet is judged.
    unsafe {
        core::ptr::write_volatile(slot, *parsed);
        Some(&*slot)
    }
}

/// The verdict on an arriving frame.
#[inline(always)]
pub fn judge(parsed: &Parsed, config: &Config) -> Verdict {
    match (Policy::get(), opaque_parse(parsed)) {
        (Some(img), Some(parsed)) => walk::judge(&img, &mut Kernel { config }, config, parsed),
        _ => Verdict::new(Reason::DropNoFlow),
    }
}
