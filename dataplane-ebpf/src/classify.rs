//! The maps the shared classifier walk (`dataplane_common::walk`) reads in the kernel: the two
//! policy images (the one in force, and the one a reload writes), the run's switches, and what
//! outlives a packet (`walk::Memory`: fragments here, tracked connections in `flowtable`).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    Global,
};
use dataplane_common::{
    image::{PAGE_SHIFT, PAGE_WORDS},
    parse::{Addr, Packet, Parsed},
    walk::{self, Image, Key, Memory, Verdict},
    Config, FragKey, Reason, RunConfig,
};

use crate::flowtable;

/// The policy images in pages (sized by the loader, written through a shared mapping): a reload
/// writes the one not in force, then switches `RunConfig::active`, so no program is loaded or
/// verified again and every packet is judged wholly by one of them.
#[map]
static POLICY_A: Array<[u64; PAGE_WORDS]> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static POLICY_B: Array<[u64; PAGE_WORDS]> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Written through a shared mapping too: `active` is switched by one 32-bit store.
#[map]
static CONFIG: Array<RunConfig> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Datagrams whose first fragment passed -> flow slot, so later fragments follow it.
#[map]
static FRAGS: LruHashMap<FragKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// Pages of each `POLICY_*` map, set by the loader before the verifier runs: it reads the
/// constant, so for one-page images it never explores the lookup of another page (each read
/// would otherwise double the paths it verifies).
#[unsafe(no_mangle)]
static IMAGE_PAGES: Global<u32> = Global::new(1);

/// The image in force as the walk's image: the first page through a pointer taken once per
/// packet, the others through an (inlined) lookup of their page.
pub struct Policy {
    first: &'static [u64; PAGE_WORDS],
    b: bool,
}

/// The image in force, read once per packet, and the settings it holds with the run's.
#[inline(always)]
pub fn current() -> Option<(Policy, Config)> {
    let run = CONFIG.get(0).copied()?;
    let b = run.active != 0;
    let first = if b { POLICY_B.get(0)? } else { POLICY_A.get(0)? };
    let img = Policy { first, b };
    let config = walk::config(&img, &run)?;
    Some((img, config))
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
        let p = if self.b { POLICY_B.get(page) } else { POLICY_A.get(page) };
        p.map(|p| p[offset])
    }
}

/// Fragments and tracked connections, from the kernel's maps.
pub struct Kernel<'a> {
    pub config: &'a Config,
}

impl Memory for Kernel<'_> {
    #[inline(always)]
    fn fragment(&mut self, p: &Packet) -> Option<u32> {
        // Safety: the value is a plain u32 copied out at once.
        unsafe { FRAGS.get(frag_key(p)) }.copied()
    }

    #[inline(always)]
    fn first_fragment_passed(&mut self, p: &Packet, slot: u32) {
        let _ = FRAGS.insert(frag_key(p), slot, 0);
    }

    #[inline(always)]
    fn reply(&mut self, p: &Packet, sport: u16, dport: u16, flags: u8) -> Option<u32> {
        flowtable::reply(p, sport, dport, flags, self.config)
    }

    #[inline(always)]
    fn related(&mut self, k: &Key, server: &Addr) -> Option<u32> {
        flowtable::related(k, server, self.config)
    }
}

#[inline(always)]
fn frag_key(p: &Packet) -> FragKey {
    FragKey { src: [p.src.hi, p.src.lo], dst: [p.dst.hi, p.dst.lo], id: p.frag_id, proto: p.proto as u32 }
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

/// The verdict on an arriving frame, by the image in force with its settings.
#[inline(always)]
pub fn judge(img: &Policy, config: &Config, parsed: &Parsed) -> Verdict {
    match opaque_parse(parsed) {
        Some(parsed) => walk::judge(img, &mut Kernel { config }, config, parsed),
        None => Verdict::new(Reason::DropNoFlow),
    }
}
