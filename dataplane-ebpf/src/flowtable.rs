//! The flow table: one LRU hash per IP version, keyed by the 5-tuple of a packet as it
//! arrives, holding two kinds of entry so that one lookup serves both (see `FlowEntry`):
//! - cached verdicts of flows that passed, valid for the policy generation that decided them;
//! - connections a protected server opened itself. The tc egress program records each new one
//!   that an outbound flow documents, keyed by the 5-tuple its replies will carry; the XDP
//!   program admits exactly those replies. TCP needs the server's SYN to open an entry and a
//!   SYN-ACK to establish it; a bare SYN is never a reply; RST and idle timeouts end entries.
//! A full table evicts its least recently used entries; a packet whose entry is gone is judged
//! by the inbound policy like any other: nothing fails open.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use dataplane_common::{
    CacheKeyV4, CacheKeyV6, Config, FlowEntry, Reason, CONFIG_NO_CACHE, CT_CLOSING, CT_ESTABLISHED,
    CT_STAT_COUNT, CT_STAT_INSERTS, CT_STAT_REFUSED, CT_STAT_REMOVALS, CT_SYN_SENT, CT_UDP,
};

use crate::{
    classify::{dst_class, flow, Inbound, Outbound, Verdict, REPLY_SLOT},
    parse::{Frag, Packet, IPPROTO_TCP, IPPROTO_UDP, L4},
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const NO_COMMON_LRU: u32 = 2;
const NS: u64 = 1_000_000_000;

// Sized by the loader (site option `conntrack-size`). Per-CPU LRU lists avoid contention.
#[map]
static FLOW_V4: LruHashMap<CacheKeyV4, FlowEntry> = LruHashMap::with_max_entries(1, NO_COMMON_LRU);
#[map]
static FLOW_V6: LruHashMap<CacheKeyV6, FlowEntry> = LruHashMap::with_max_entries(1, NO_COMMON_LRU);
/// `CT_STAT_*` events.
#[map]
static CT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CT_STAT_COUNT, 0);

#[inline(always)]
fn stat(i: u32) {
    if let Some(c) = CT_STATS.get_ptr_mut(i) {
        // Safety: this CPU's slot.
        unsafe { *c += 1 };
    }
}

/// A 5-tuple as packets arrive: `peer` is the source, `server` the destination.
#[derive(Clone, Copy)]
struct Tuple {
    v6: bool,
    peer: [u8; 16],
    server: [u8; 16],
    peer_port: u16,
    server_port: u16,
    proto: u8,
}

impl Tuple {
    /// The tuple of an arriving packet.
    #[inline(always)]
    fn inbound(p: &Packet, sport: u16, dport: u16) -> Self {
        Self { v6: p.v6, peer: p.src, server: p.dst, peer_port: sport, server_port: dport, proto: p.proto }
    }

    /// The tuple the replies of a sent packet will carry.
    #[inline(always)]
    fn replies_to(p: &Packet, sport: u16, dport: u16) -> Self {
        Self { v6: p.v6, peer: p.dst, server: p.src, peer_port: dport, server_port: sport, proto: p.proto }
    }
}

impl Tuple {
    #[inline(always)]
    fn get(&self) -> Option<*mut FlowEntry> {
        if self.v6 {
            FLOW_V6.get_ptr_mut(&self.key6())
        } else {
            FLOW_V4.get_ptr_mut(&self.key4())
        }
    }

    #[inline(always)]
    fn insert(&self, v: &FlowEntry) {
        let _ = if self.v6 { FLOW_V6.insert(&self.key6(), v, 0) } else { FLOW_V4.insert(&self.key4(), v, 0) };
    }

    #[inline(always)]
    fn remove(&self) {
        let _ = if self.v6 { FLOW_V6.remove(&self.key6()) } else { FLOW_V4.remove(&self.key4()) };
        stat(CT_STAT_REMOVALS);
    }

    #[inline(always)]
    fn key4(&self) -> CacheKeyV4 {
        CacheKeyV4 {
            src: [self.peer[0], self.peer[1], self.peer[2], self.peer[3]],
            dst: [self.server[0], self.server[1], self.server[2], self.server[3]],
            sport: self.peer_port,
            dport: self.server_port,
            proto: self.proto,
            pad: [0; 3],
        }
    }

    #[inline(always)]
    fn key6(&self) -> CacheKeyV6 {
        CacheKeyV6 {
            src: self.peer,
            dst: self.server,
            sport: self.peer_port,
            dport: self.server_port,
            proto: self.proto,
            pad: [0; 3],
        }
    }
}

/// Ports and TCP flags of a TCP or UDP packet that carries its transport header.
#[inline(always)]
pub fn ports(p: &Packet) -> Option<(u16, u16, u8)> {
    if p.frag == Frag::Later || (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP) {
        return None;
    }
    match p.l4 {
        L4::Ports { sport, dport, flags } => Some((sport, dport, flags)),
        _ => None,
    }
}

#[inline(always)]
fn timeout_ns(state: u32, c: &Config) -> u64 {
    let s = match state {
        CT_ESTABLISHED => c.ct_tcp_established,
        CT_UDP => c.ct_udp,
        _ => c.ct_tcp_transitory,
    };
    s as u64 * NS
}

/// Egress: a packet the server sends. Refreshes its connection, or records a new one that an
/// outbound flow documents. Returns the outbound slot to count the packet on.
#[inline(always)]
pub fn outbound(p: &Packet) -> Option<u32> {
    let (sport, dport, flags) = ports(p)?;
    let t = Tuple::replies_to(p, sport, dport);
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Safety: a value pointer of this map; racing updates only move timestamps and states.
    if let Some(e) = t.get().map(|e| unsafe { &mut *e }) {
        if e.reason == Reason::PassReply as u32 {
            if p.proto == IPPROTO_TCP && flags & TCP_RST != 0 {
                let slot = e.slot;
                t.remove();
                return Some(slot);
            }
            if p.proto == IPPROTO_TCP && flags & TCP_FIN != 0 {
                e.state = CT_CLOSING;
            }
            // A new SYN on an old tuple opens the connection afresh.
            if p.proto == IPPROTO_TCP && flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                e.state = CT_SYN_SENT;
            }
            e.last_seen = now;
            return Some(e.slot);
        }
    }
    let class = dst_class::<Outbound>(p)?;
    let v = flow::<Outbound>(p, class, sport, dport);
    if v.reason != Reason::PassFlow {
        return None;
    }
    // Only a SYN opens a TCP connection; a UDP datagram opens an exchange.
    let state = if p.proto == IPPROTO_UDP {
        CT_UDP
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        CT_SYN_SENT
    } else {
        return Some(v.slot);
    };
    // Replies that the inbound policy admits by itself are not tracked: they stay counted on
    // their inbound flow, as explain says, whichever side spoke first.
    if !inbound_allows(p, sport, dport) {
        let entry = FlowEntry { reason: Reason::PassReply as u32, slot: v.slot, generation: 0, state, last_seen: now };
        t.insert(&entry);
        stat(CT_STAT_INSERTS);
    }
    Some(v.slot)
}

/// Whether the inbound policy allows the replies of `p` (the reversed 5-tuple).
#[inline(always)]
fn inbound_allows(p: &Packet, sport: u16, dport: u16) -> bool {
    let reply = Packet {
        v6: p.v6,
        src: p.dst,
        dst: p.src,
        proto: p.proto,
        frag: Frag::Whole,
        frag_id: 0,
        l4: L4::Ports { sport: dport, dport: sport, flags: 0 },
    };
    match dst_class::<Inbound>(&reply) {
        Some(class) => flow::<Inbound>(&reply, class, dport, sport).reason == Reason::PassFlow,
        None => false,
    }
}

/// Ingress: the verdict the flow table holds for an arriving TCP or UDP packet, if any: a
/// cached pass of the current policy generation, or the reply of a tracked connection.
#[inline(always)]
pub fn lookup(p: &Packet, c: &Config) -> Option<Verdict> {
    let (sport, dport, flags) = ports(p)?;
    let t = Tuple::inbound(p, sport, dport);
    let e = t.get()?;
    // Safety: as in `outbound`.
    let e = unsafe { &mut *e };
    if e.reason != Reason::PassReply as u32 {
        if c.flags & CONFIG_NO_CACHE != 0 || e.generation != c.generation || p.frag != Frag::Whole {
            return None;
        }
        let reason = if e.reason == Reason::PassFlow as u32 { Reason::PassFlow } else { Reason::PassUnprotected };
        return Some(Verdict { reason, slot: e.slot });
    }
    reply(&t, e, flags, c).map(|slot| Verdict { reason: Reason::PassReply, slot: slot | REPLY_SLOT })
}

/// Caches the verdict of a whole packet that passed.
#[inline(always)]
pub fn remember(p: &Packet, v: &Verdict, generation: u32) {
    if let Some((sport, dport, _)) = ports(p) {
        let entry = FlowEntry { reason: v.reason as u32, slot: v.slot, generation, state: 0, last_seen: 0 };
        Tuple::inbound(p, sport, dport).insert(&entry);
    }
}

/// A packet that arrives on a tracked connection: the outbound slot if it is a reply.
#[inline(always)]
fn reply(t: &Tuple, e: &mut FlowEntry, flags: u8, c: &Config) -> Option<u32> {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.saturating_sub(e.last_seen) > timeout_ns(e.state, c) {
        t.remove();
        stat(CT_STAT_REFUSED);
        return None;
    }
    if t.proto == IPPROTO_TCP {
        let syn = flags & TCP_SYN != 0;
        let ack = flags & TCP_ACK != 0;
        // A bare SYN opens a connection; it is never a reply. Before the SYN-ACK only a SYN-ACK
        // or a RST belongs to the connection.
        if (syn && !ack) || (e.state == CT_SYN_SENT && !syn && flags & TCP_RST == 0) {
            stat(CT_STAT_REFUSED);
            return None;
        }
        if flags & TCP_RST != 0 {
            let slot = e.slot;
            t.remove();
            return Some(slot);
        }
        if syn && e.state == CT_SYN_SENT {
            e.state = CT_ESTABLISHED;
        }
        if flags & TCP_FIN != 0 {
            e.state = CT_CLOSING;
        }
    }
    e.last_seen = now;
    Some(e.slot)
}
