//! Classification against the compiled maps: address classes, class pair to policy, then port
//! prefixes. A fixed number of lookups per packet, whatever the number of flows.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap},
};
use dataplane_common::{
    CacheKeyV4, CacheKeyV6, CacheValue, Config, FragKey, PairKey, PortKey, Reason, SportKey,
    CLASS_NONE, CONFIG_ALLOW_ECHO, CONFIG_DROP_UNPROTECTED, CONFIG_NO_CACHE, PORT_KEY_FIXED_BITS, SPORT_KEY_FIXED_BITS, VALUE_DENY,
    VALUE_INDEX_MASK, VALUE_SPORT_TABLE,
};

use crate::parse::{Frag, Packet, Parsed, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L4};

// Sizes are placeholders: the loader sets every table's size from the compiled policy.
#[map]
static SRC_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static SRC_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static DST_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static DST_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static PAIRS: HashMap<PairKey, u32> = HashMap::with_max_entries(1, 0);
#[map]
static PORTS: LpmTrie<PortKey, u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static SPORTS: LpmTrie<SportKey, u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Datagrams whose first fragment was allowed -> flow slot, so later fragments follow it.
#[map]
static FRAGS: LruHashMap<FragKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// No flow slot to count against.
pub const NO_SLOT: u32 = u32::MAX;

pub struct Verdict {
    pub reason: Reason,
    pub slot: u32,
}

#[inline(always)]
const fn verdict(reason: Reason) -> Verdict {
    Verdict { reason, slot: NO_SLOT }
}

pub fn judge(parsed: Parsed) -> Verdict {
    let p = match parsed {
        Parsed::NonIp => return verdict(Reason::PassNonIp),
        // The destination cannot be read: it might be protected, so never pass it.
        Parsed::Malformed => return verdict(Reason::DropMalformed),
        Parsed::TooManyTags => return verdict(Reason::DropUnparsed),
        Parsed::Ip(p) => p,
    };
    let (flags, generation) = CONFIG.get(0).map(|c| (c.flags, c.generation)).unwrap_or((0, 0));
    // Only whole TCP/UDP packets have a verdict that their 5-tuple alone decides.
    let cacheable = flags & CONFIG_NO_CACHE == 0
        && p.frag == Frag::Whole
        && (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP)
        && matches!(p.l4, L4::Ports { .. });
    if cacheable {
        if let Some(v) = cache::get(&p, generation) {
            return v;
        }
    }
    let v = decide(&p, flags);
    // Passes only: a flood of denied packets must not cost an insert each.
    if cacheable && (v.reason == Reason::PassFlow || v.reason == Reason::PassUnprotected) {
        cache::put(&p, &v, generation);
    }
    v
}

/// The full classification of an IP packet.
#[inline(always)]
fn decide(p: &Packet, flags: u32) -> Verdict {
    let Some(dst_class) = dst_class(p) else {
        return verdict(if flags & CONFIG_DROP_UNPROTECTED != 0 {
            Reason::DropUnprotected
        } else {
            Reason::PassUnprotected
        });
    };
    match p.l4 {
        L4::Malformed => return verdict(Reason::DropMalformed),
        L4::Unparsed => return verdict(Reason::DropUnparsed),
        L4::BadFragment => return verdict(Reason::DropFragment),
        _ => {}
    }
    if p.frag == Frag::Later {
        return later_fragment(p);
    }
    let v = match p.l4 {
        L4::Icmp { ty } => icmp(p.v6, ty, flags),
        L4::Ports { sport, dport } if p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP => {
            flow(p, dst_class, sport, dport)
        }
        _ => verdict(Reason::DropNoFlow),
    };
    if p.frag == Frag::First && !v.reason.is_drop() {
        // Remember the datagram so that its later fragments follow this verdict (and its flow
        // counter; NO_SLOT for ICMP).
        let _ = FRAGS.insert(&frag_key(p), &v.slot, 0);
    }
    v
}

#[inline(always)]
fn dst_class(p: &Packet) -> Option<u32> {
    if p.v6 {
        DST_V6.get(Key::new(128, p.dst)).copied()
    } else {
        DST_V4.get(Key::new(32, [p.dst[0], p.dst[1], p.dst[2], p.dst[3]])).copied()
    }
}

#[inline(always)]
fn src_class(p: &Packet) -> u32 {
    let c = if p.v6 {
        SRC_V6.get(Key::new(128, p.src))
    } else {
        SRC_V4.get(Key::new(32, [p.src[0], p.src[1], p.src[2], p.src[3]]))
    };
    c.copied().unwrap_or(CLASS_NONE)
}

/// The flow lookup proper: class pair -> policy -> destination port -> maybe source port.
#[inline(always)]
fn flow(p: &Packet, dst_class: u32, sport: u16, dport: u16) -> Verdict {
    let pair = PairKey { src_class: src_class(p), dst_class };
    // Safety: the value is a plain u32 copied out at once; PAIRS is only replaced whole.
    let Some(policy) = (unsafe { PAIRS.get(&pair) }).copied() else {
        return verdict(Reason::DropNoFlow);
    };
    let key = Key::new(PORT_KEY_FIXED_BITS + 16, PortKey::new(policy, p.proto, dport));
    let Some(mut value) = PORTS.get(key).copied() else {
        return verdict(Reason::DropNoFlow);
    };
    if value & VALUE_SPORT_TABLE != 0 {
        let key = Key::new(SPORT_KEY_FIXED_BITS + 16, SportKey::new(value & VALUE_INDEX_MASK, sport));
        match SPORTS.get(key) {
            Some(v) => value = *v,
            None => return verdict(Reason::DropNoFlow),
        }
    }
    let reason = if value & VALUE_DENY != 0 { Reason::DropDenyFlow } else { Reason::PassFlow };
    Verdict { reason, slot: value & VALUE_INDEX_MASK }
}

#[inline(always)]
fn frag_key(p: &Packet) -> FragKey {
    FragKey { src: p.src, dst: p.dst, id: p.frag_id, proto: p.proto, pad: [0; 3] }
}

#[inline(always)]
fn later_fragment(p: &Packet) -> Verdict {
    // Safety: the value is a plain u32 copied out at once.
    match unsafe { FRAGS.get(&frag_key(p)) } {
        Some(slot) => Verdict { reason: Reason::PassFragment, slot: *slot },
        None => verdict(Reason::DropFragment),
    }
}

/// ICMP to a protected address: errors and neighbour discovery keep IPv4/IPv6 and path-MTU
/// discovery working; echo follows the site; the rest is dropped.
#[inline(always)]
fn icmp(v6: bool, ty: u8, flags: u32) -> Verdict {
    let (control, echo) = if v6 {
        (matches!(ty, 1..=4 | 133..=137), matches!(ty, 128 | 129))
    } else {
        (matches!(ty, 3 | 11 | 12), matches!(ty, 0 | 8))
    };
    if control || (echo && flags & CONFIG_ALLOW_ECHO != 0) {
        verdict(Reason::PassIcmp)
    } else {
        verdict(Reason::DropIcmp)
    }
}

// Silence "unused" for the ICMP protocol numbers the parser uses.
const _: (u8, u8) = (IPPROTO_ICMP, IPPROTO_ICMPV6);

/// Verdicts of flows that passed, by 5-tuple: one hash lookup instead of the whole chain for every
/// packet of a flow after its first. LRU lists per CPU (BPF_F_NO_COMMON_LRU) avoid contention.
mod cache {
    use super::*;

    const NO_COMMON_LRU: u32 = 2;

    #[map]
    static CACHE_V4: LruHashMap<CacheKeyV4, CacheValue> = LruHashMap::with_max_entries(65536, NO_COMMON_LRU);
    #[map]
    static CACHE_V6: LruHashMap<CacheKeyV6, CacheValue> = LruHashMap::with_max_entries(32768, NO_COMMON_LRU);

    #[inline(always)]
    fn ports(p: &Packet) -> (u16, u16) {
        match p.l4 {
            L4::Ports { sport, dport } => (sport, dport),
            _ => (0, 0),
        }
    }

    #[inline(always)]
    fn key4(p: &Packet) -> CacheKeyV4 {
        let (sport, dport) = ports(p);
        CacheKeyV4 {
            src: [p.src[0], p.src[1], p.src[2], p.src[3]],
            dst: [p.dst[0], p.dst[1], p.dst[2], p.dst[3]],
            sport,
            dport,
            proto: p.proto,
            pad: [0; 3],
        }
    }

    #[inline(always)]
    fn key6(p: &Packet) -> CacheKeyV6 {
        let (sport, dport) = ports(p);
        CacheKeyV6 { src: p.src, dst: p.dst, sport, dport, proto: p.proto, pad: [0; 3] }
    }

    #[inline(always)]
    pub fn get(p: &Packet, generation: u32) -> Option<Verdict> {
        // Safety: the value is copied out at once.
        let v = if p.v6 {
            unsafe { CACHE_V6.get(&key6(p)) }.copied()
        } else {
            unsafe { CACHE_V4.get(&key4(p)) }.copied()
        }?;
        if v.generation != generation {
            return None;
        }
        let reason = if v.reason == Reason::PassFlow as u32 { Reason::PassFlow } else { Reason::PassUnprotected };
        Some(Verdict { reason, slot: v.slot })
    }

    #[inline(always)]
    pub fn put(p: &Packet, v: &Verdict, generation: u32) {
        let value = CacheValue { reason: v.reason as u32, slot: v.slot, generation };
        let _ = if p.v6 {
            CACHE_V6.insert(&key6(p), &value, 0)
        } else {
            CACHE_V4.insert(&key4(p), &value, 0)
        };
    }
}
