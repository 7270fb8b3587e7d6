//! Classification against the compiled maps: address classes, class pair to policy, then port
//! prefixes. A fixed number of lookups per packet, whatever the number of flows.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap},
};
use dataplane_common::{
    Config, FragKey, PairKey, PortKey, Reason, SportKey,
    CLASS_NONE, CONFIG_ALLOW_ECHO, CONFIG_DROP_UNPROTECTED, CONFIG_NO_CACHE, PORT_KEY_FIXED_BITS, SPORT_KEY_FIXED_BITS, VALUE_DENY,
    VALUE_INDEX_MASK, VALUE_SPORT_TABLE,
};

use crate::flowtable;
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
// The same chain for packets a protected server sends (tc egress): peers' addresses in
// OUT_DST_*, the protected ones in OUT_SRC_*.
#[map]
static OUT_SRC_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static OUT_SRC_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static OUT_DST_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static OUT_DST_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static OUT_PAIRS: HashMap<PairKey, u32> = HashMap::with_max_entries(1, 0);
#[map]
static OUT_PORTS: LpmTrie<PortKey, u32> = LpmTrie::with_max_entries(1, 0);
#[map]
static OUT_SPORTS: LpmTrie<SportKey, u32> = LpmTrie::with_max_entries(1, 0);

/// One set of classification maps. Implemented by zero-sized markers so that every map
/// reference stays a direct relocation after monomorphisation, as the verifier requires.
pub trait Chain {
    fn src_v4() -> &'static LpmTrie<[u8; 4], u32>;
    fn src_v6() -> &'static LpmTrie<[u8; 16], u32>;
    fn dst_v4() -> &'static LpmTrie<[u8; 4], u32>;
    fn dst_v6() -> &'static LpmTrie<[u8; 16], u32>;
    fn pairs() -> &'static HashMap<PairKey, u32>;
    fn ports() -> &'static LpmTrie<PortKey, u32>;
    fn sports() -> &'static LpmTrie<SportKey, u32>;
}

macro_rules! chain {
    ($name:ident, $src4:ident, $src6:ident, $dst4:ident, $dst6:ident, $pairs:ident, $ports:ident, $sports:ident) => {
        pub struct $name;
        impl Chain for $name {
            #[inline(always)]
            fn src_v4() -> &'static LpmTrie<[u8; 4], u32> { &$src4 }
            #[inline(always)]
            fn src_v6() -> &'static LpmTrie<[u8; 16], u32> { &$src6 }
            #[inline(always)]
            fn dst_v4() -> &'static LpmTrie<[u8; 4], u32> { &$dst4 }
            #[inline(always)]
            fn dst_v6() -> &'static LpmTrie<[u8; 16], u32> { &$dst6 }
            #[inline(always)]
            fn pairs() -> &'static HashMap<PairKey, u32> { &$pairs }
            #[inline(always)]
            fn ports() -> &'static LpmTrie<PortKey, u32> { &$ports }
            #[inline(always)]
            fn sports() -> &'static LpmTrie<SportKey, u32> { &$sports }
        }
    };
}

chain!(Inbound, SRC_V4, SRC_V6, DST_V4, DST_V6, PAIRS, PORTS, SPORTS);
chain!(Outbound, OUT_SRC_V4, OUT_SRC_V6, OUT_DST_V4, OUT_DST_V6, OUT_PAIRS, OUT_PORTS, OUT_SPORTS);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Datagrams whose first fragment was allowed -> flow slot, so later fragments follow it.
#[map]
static FRAGS: LruHashMap<FragKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// No flow slot to count against.
pub const NO_SLOT: u32 = u32::MAX;
/// Slot bit: the slot is an outbound flow's, counted in `REPLY_FLOWS` (replies and their
/// fragments).
pub const REPLY_SLOT: u32 = 1 << 31;

/// The site-wide switches and timeouts.
#[inline(always)]
pub fn flags_config() -> Config {
    CONFIG.get(0).copied().unwrap_or_default()
}

pub struct Verdict {
    pub reason: Reason,
    pub slot: u32,
}

#[inline(always)]
const fn verdict(reason: Reason) -> Verdict {
    Verdict { reason, slot: NO_SLOT }
}

pub fn judge(parsed: &Parsed) -> Verdict {
    let p = match parsed {
        Parsed::NonIp => return verdict(Reason::PassNonIp),
        // The destination cannot be read: it might be protected, so never pass it.
        Parsed::Malformed => return verdict(Reason::DropMalformed),
        Parsed::TooManyTags => return verdict(Reason::DropUnparsed),
        Parsed::Ip(p) => p,
    };
    let config = flags_config();
    // One lookup for most packets: a cached pass of this flow, or a reply of a connection a
    // protected server opened. Otherwise the policy decides.
    let v = match flowtable::lookup(&p, &config) {
        Some(v) => v,
        None => {
            let v = decide(&p, &config);
            // Only whole TCP/UDP packets have a verdict that their 5-tuple alone decides; and
            // passes only: a flood of denied packets must not cost an insert each.
            let cacheable = config.flags & CONFIG_NO_CACHE == 0 && p.frag == Frag::Whole;
            if cacheable && (v.reason == Reason::PassFlow || v.reason == Reason::PassUnprotected) {
                flowtable::remember(&p, &v, config.generation);
            }
            v
        }
    };
    if p.frag == Frag::First && !v.reason.is_drop() {
        // Remember the datagram so that its later fragments follow this verdict (and its flow
        // counter; NO_SLOT for ICMP).
        let _ = FRAGS.insert(&frag_key(&p), &v.slot, 0);
    }
    v
}

/// The full classification of an IP packet.
#[inline(always)]
fn decide(p: &Packet, config: &Config) -> Verdict {
    let flags = config.flags;
    let Some(dst_class) = dst_class::<Inbound>(p) else {
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
    match p.l4 {
        L4::Icmp { ty } => icmp(p.v6, ty, flags),
        L4::Ports { sport, dport, .. } if p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP => {
            flow::<Inbound>(p, dst_class, sport, dport)
        }
        _ => verdict(Reason::DropNoFlow),
    }
}

#[inline(always)]
pub fn dst_class<C: Chain>(p: &Packet) -> Option<u32> {
    if p.v6 {
        C::dst_v6().get(Key::new(128, p.dst)).copied()
    } else {
        C::dst_v4().get(Key::new(32, [p.dst[0], p.dst[1], p.dst[2], p.dst[3]])).copied()
    }
}

#[inline(always)]
fn src_class<C: Chain>(p: &Packet) -> u32 {
    let c = if p.v6 {
        C::src_v6().get(Key::new(128, p.src))
    } else {
        C::src_v4().get(Key::new(32, [p.src[0], p.src[1], p.src[2], p.src[3]]))
    };
    c.copied().unwrap_or(CLASS_NONE)
}

/// The flow lookup proper: class pair -> policy -> destination port -> maybe source port.
#[inline(always)]
pub fn flow<C: Chain>(p: &Packet, dst_class: u32, sport: u16, dport: u16) -> Verdict {
    let pair = PairKey { src_class: src_class::<C>(p), dst_class };
    // Safety: the value is a plain u32 copied out at once; the pairs map is only replaced whole.
    let Some(policy) = (unsafe { C::pairs().get(&pair) }).copied() else {
        return verdict(Reason::DropNoFlow);
    };
    let key = Key::new(PORT_KEY_FIXED_BITS + 16, PortKey::new(policy, p.proto, dport));
    let Some(mut value) = C::ports().get(key).copied() else {
        return verdict(Reason::DropNoFlow);
    };
    if value & VALUE_SPORT_TABLE != 0 {
        let key = Key::new(SPORT_KEY_FIXED_BITS + 16, SportKey::new(value & VALUE_INDEX_MASK, sport));
        match C::sports().get(key) {
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
