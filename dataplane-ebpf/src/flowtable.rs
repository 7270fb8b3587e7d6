//! Connections the protected servers open themselves: the tc egress program records each new
//! one that an outbound flow documents, keyed by the 5-tuple its replies will carry, and the XDP
//! program admits exactly those replies. TCP needs the server's SYN to open an entry and a
//! SYN-ACK to establish it; a bare SYN is never a reply; RST and idle timeouts end entries.
//!
//! Only the egress program inserts, so arriving traffic, whatever its volume, never evicts a
//! connection; a full table evicts its least recently used entries for the servers' own new
//! connections. A packet whose entry is gone is judged by the inbound policy: nothing fails open.
//!
//! Arriving packets look here only when the policy would drop them, and only when their port has
//! had a tracked connection recently (`LIVE_PORTS`, one array read), so a flood of denied packets
//! costs no hash lookup.

use aya_ebpf::{
    helpers::bpf_jiffies64,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use dataplane_common::{
    image::proto_index,
    parse::{Addr, Packet, IPPROTO_TCP, IPPROTO_UDP},
    walk::{self, ports, Key},
    Config, ConnKeyV4, ConnKeyV6, FlowEntry, Reason, CT_CLOSING, CT_ESTABLISHED, CT_STAT_COUNT, CT_STAT_INSERTS, CT_STAT_REFUSED,
    CT_STAT_REMOVALS, CT_SYN_SENT, CT_UDP,
};

use crate::classify;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const NO_COMMON_LRU: u32 = 2;

// Sized by the loader (site option `conntrack-size`). Per-CPU LRU lists avoid contention.
#[map]
static FLOW_V4: LruHashMap<ConnKeyV4, FlowEntry> = LruHashMap::with_max_entries(1, NO_COMMON_LRU);
#[map]
static FLOW_V6: LruHashMap<ConnKeyV6, FlowEntry> = LruHashMap::with_max_entries(1, NO_COMMON_LRU);
/// Per (protocol, server port): `bpf_jiffies64` of the last packet of any tracked connection on
/// that port, either way.
#[map]
static LIVE_PORTS: Array<u64> = Array::with_max_entries(2 * 65536, 0);
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

/// Clock ticks: a few ns to read (see `Config::hz`).
#[inline(always)]
pub fn now() -> u64 {
    // Safety: a helper without arguments.
    unsafe { bpf_jiffies64() }
}

/// A 5-tuple as replies arrive: `peer` is the source, `server` the destination.
#[derive(Clone, Copy)]
struct Tuple {
    v6: bool,
    peer: Addr,
    server: Addr,
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

    #[inline(always)]
    fn get(&self) -> Option<*mut FlowEntry> {
        if self.v6 {
            FLOW_V6.get_ptr_mut(self.key6())
        } else {
            FLOW_V4.get_ptr_mut(self.key4())
        }
    }

    #[inline(always)]
    fn insert(&self, v: &FlowEntry) {
        let _ = if self.v6 { FLOW_V6.insert(self.key6(), v, 0) } else { FLOW_V4.insert(self.key4(), v, 0) };
    }

    #[inline(always)]
    fn remove(&self) {
        let _ = if self.v6 { FLOW_V6.remove(self.key6()) } else { FLOW_V4.remove(self.key4()) };
        stat(CT_STAT_REMOVALS);
    }

    /// Marks the server's port as used by a live connection now.
    #[inline(always)]
    fn touch(&self, now: u64) {
        if let Some(t) = LIVE_PORTS.get_ptr_mut(live_index(self.proto, self.server_port)) {
            // Safety: a plain u64 in an array; racing writers only move a timestamp.
            unsafe { *t = now };
        }
    }

    #[inline(always)]
    fn key4(&self) -> ConnKeyV4 {
        ConnKeyV4 {
            src: self.peer.v4(),
            dst: self.server.v4(),
            sport: self.peer_port,
            dport: self.server_port,
            proto: self.proto as u32,
        }
    }

    #[inline(always)]
    fn key6(&self) -> ConnKeyV6 {
        ConnKeyV6 {
            src: [self.peer.hi, self.peer.lo],
            dst: [self.server.hi, self.server.lo],
            sport: self.peer_port,
            dport: self.server_port,
            proto: self.proto as u32,
        }
    }
}

#[inline(always)]
fn live_index(proto: u8, port: u16) -> u32 {
    (proto_index(proto) << 16) | port as u32
}

/// A timeout in clock ticks.
#[inline(always)]
fn ticks(seconds: u32, c: &Config) -> u64 {
    seconds as u64 * c.hz as u64
}

#[inline(always)]
fn timeout(state: u32, c: &Config) -> u64 {
    let s = match state {
        CT_ESTABLISHED => c.ct_tcp_established,
        CT_UDP => c.ct_udp,
        _ => c.ct_tcp_transitory,
    };
    ticks(s, c)
}

/// Whether a connection on (protocol, server port) can still be alive. A second's margin: CPUs
/// write `LIVE_PORTS` without ordering, so it may lag an entry's own time by a moment.
#[inline(always)]
fn live(proto: u8, port: u16, now: u64, c: &Config) -> bool {
    let longest = if proto == IPPROTO_UDP {
        c.ct_udp
    } else if c.ct_tcp_established > c.ct_tcp_transitory {
        c.ct_tcp_established
    } else {
        c.ct_tcp_transitory
    };
    match LIVE_PORTS.get(live_index(proto, port)) {
        Some(&t) => now.saturating_sub(t) <= ticks(longest + 1, c),
        None => true,
    }
}

/// Egress: a packet the server sends. Refreshes its connection, or records a new one that an
/// outbound flow documents. Returns the outbound slot to count the packet on.
#[inline(always)]
pub fn outbound(p: &Packet) -> Option<u32> {
    let (sport, dport, flags) = ports(p)?;
    let t = Tuple::replies_to(p, sport, dport);
    let now = now();
    // Safety: a value pointer of this map; racing updates only move timestamps and states.
    if let Some(e) = t.get().map(|e| unsafe { &mut *e }) {
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
        t.touch(now);
        return Some(e.slot);
    }
    let (img, _) = classify::current()?;
    let v = walk::outbound(&img, p, sport, dport);
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
    if !walk::inbound_admits_reply(&img, p, sport, dport) {
        t.insert(&FlowEntry { slot: v.slot, state, last_seen: now });
        t.touch(now);
        stat(CT_STAT_INSERTS);
    }
    Some(v.slot)
}

/// Ingress, an ICMP error quoting a packet the server sent: the outbound slot of the live tracked
/// connection that packet belongs to. Only looks: an error must not keep a connection alive.
#[inline(always)]
pub fn related(k: &Key, server: &Addr, c: &Config) -> Option<u32> {
    let now = now();
    if !live(k.proto, k.dport, now, c) {
        return None;
    }
    let t = Tuple { v6: k.v6, peer: k.src, server: *server, peer_port: k.sport, server_port: k.dport, proto: k.proto };
    // Safety: as in `outbound`; only read.
    let e = unsafe { &*t.get()? };
    (now.saturating_sub(e.last_seen) <= timeout(e.state, c)).then_some(e.slot)
}

/// Ingress, for a TCP or UDP packet the policy would drop: the outbound slot of the tracked
/// connection it is a reply of.
#[inline(always)]
pub fn reply(p: &Packet, sport: u16, dport: u16, flags: u8, c: &Config) -> Option<u32> {
    let now = now();
    if !live(p.proto, dport, now, c) {
        return None;
    }
    let t = Tuple::inbound(p, sport, dport);
    // Safety: as in `outbound`.
    let e = unsafe { &mut *t.get()? };
    if now.saturating_sub(e.last_seen) > timeout(e.state, c) {
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
    t.touch(now);
    Some(e.slot)
}
