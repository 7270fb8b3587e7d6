//! What the XDP and tc programs (`dataplane-ebpf`) and the controller (`dataplane-user`) share:
//! the packet parser ([`parse`]), the layout of the compiled policy ([`image`]), the classifier
//! walk over it ([`walk`]), and the key and value types of the other maps (counters, the
//! connection-tracking table, fragments, drop events).
#![no_std]
#![warn(missing_docs)]

pub mod forward;
pub mod image;
mod layout;
pub mod parse;
pub mod walk;

/// Packets and bytes; the value of every per-CPU counter array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Their bytes: whole frames, from the Ethernet header on.
    pub bytes: u64,
}

/// A site's switches and timeouts (the image holds them, so that a reload changes them with the
/// tables), with the run's own (`flags` `CONFIG_MONITOR`, `hz`, from [`RunConfig`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bit set of `CONFIG_*`.
    pub flags: u32,
    /// Policy generation: 1 at start, one more per reload (reported, not used per packet).
    pub generation: u32,
    /// Idle timeout of an established TCP connection, in seconds.
    pub ct_tcp_established: u32,
    /// Idle timeout of a TCP connection opening or closing (half-open, FIN or RST seen), in
    /// seconds.
    pub ct_tcp_transitory: u32,
    /// Idle timeout of a UDP exchange, in seconds.
    pub ct_udp: u32,
    /// Drop events each CPU may emit per second (0: none).
    pub events_per_sec: u32,
    /// Kernel clock ticks per second (`bpf_jiffies64`), measured by the loader: the programs keep
    /// time in ticks, which cost a few ns to read where nanosecond clocks cost 20-50.
    pub hz: u32,
}

/// `CONFIG` array slot 0: what belongs to the run, not the policy: which of the two policy images
/// is in force, monitor mode, the clock rate. A reload writes the image not in force, then
/// `active`: each packet reads it once, so it is judged wholly by one policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// 0: `POLICY_A` is in force; 1: `POLICY_B`.
    pub active: u32,
    /// `CONFIG_MONITOR`, `CONFIG_FORWARD`, or nothing.
    pub flags: u32,
    /// See `Config::hz`.
    pub hz: u32,
    /// The generation of the policy in force, written with `active` (see `Config::generation`).
    pub generation: u32,
}

/// Drop events per CPU per second when the site does not say.
pub const DEFAULT_EVENTS_PER_SEC: u32 = 100;

/// A dropped packet (or, in monitor mode, one that would be), sent to user space through the
/// `DROP_EVENTS` ring buffer, rate-limited per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns`.
    pub time_ns: u64,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    /// The deny flow's slot for `deny_flow`, else `u32::MAX`.
    pub slot: u32,
    /// Source address, network order; IPv4 addresses use the first 4 bytes.
    pub src: [u8; 16],
    /// Destination address, as `src`.
    pub dst: [u8; 16],
    /// Source port (0 when the packet has none).
    pub sport: u16,
    /// Destination port (0 when the packet has none).
    pub dport: u16,
    /// A `Reason`.
    pub reason: u8,
    /// IP protocol (IPv6: after the extension headers).
    pub proto: u8,
    /// 1 for IPv6, 0 for IPv4.
    pub v6: u8,
    /// Always 0 (see `tail`).
    pub pad: u8,
    /// Events this CPU suppressed (rate limit) since the previous one it sent.
    pub suppressed: u32,
    /// Always 0: the record has no padding, so no byte of the program's stack leaves with it.
    pub tail: u32,
}

/// Per-CPU state of the drop-event rate limiter (the `EVENT_BUDGET` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// When (`bpf_jiffies64`) the current second's budget began.
    pub started: u64,
    /// Events sent in the current second.
    pub sent: u32,
    /// Events suppressed since the last one sent, reported with the next one.
    pub suppressed: u32,
}

/// Drop traffic to addresses that are not protected (default: pass it).
pub const CONFIG_DROP_UNPROTECTED: u32 = 1 << 0;
/// Pass ICMP/ICMPv6 echo requests and replies to protected addresses.
pub const CONFIG_ALLOW_ECHO: u32 = 1 << 1;
/// Monitor mode: count every verdict as usual, but pass what would be dropped.
pub const CONFIG_MONITOR: u32 = 1 << 3;
/// Forward allowed packets to protected servers in XDP when the FIB allows (`run --forward`,
/// see `dataplane-ebpf/src/forward.rs`).
pub const CONFIG_FORWARD: u32 = 1 << 4;

/// Key of `FLOW_V4`, the connection-tracking table: the 5-tuple a reply carries as it arrives.
/// Addresses as numbers (see `parse::Addr`), protocol widened to 32 bits so that the key has no
/// padding to clear.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKeyV4 {
    /// The peer (the reply's source).
    pub src: u32,
    /// The protected server (the reply's destination).
    pub dst: u32,
    /// The peer's port.
    pub sport: u16,
    /// The server's port.
    pub dport: u16,
    /// IP protocol: TCP or UDP.
    pub proto: u32,
}

/// Key of `FLOW_V6`, the connection-tracking table: addresses as (high, low) halves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKeyV6 {
    /// The peer (the reply's source).
    pub src: [u64; 2],
    /// The protected server (the reply's destination).
    pub dst: [u64; 2],
    /// The peer's port.
    pub sport: u16,
    /// The server's port.
    pub dport: u16,
    /// IP protocol: TCP or UDP.
    pub proto: u32,
}

/// A connection a protected server opened (`FLOW_V4`/`FLOW_V6`, keyed by the 5-tuple of its
/// replies): they pass while `state` and `last_seen` say it is alive. Only the tc egress program
/// inserts, so arriving traffic never evicts one (the classifier needs no cache of its own).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The outbound flow's slot.
    pub slot: u32,
    /// A `CT_*` state.
    pub state: u32,
    /// `bpf_jiffies64` of the last packet either way.
    pub last_seen: u64,
}

/// TCP: the server sent a SYN; a SYN-ACK is awaited.
pub const CT_SYN_SENT: u32 = 1;
/// TCP: the peer answered.
pub const CT_ESTABLISHED: u32 = 2;
/// TCP: a FIN went either way; the connection is closing.
pub const CT_CLOSING: u32 = 3;
/// A UDP exchange.
pub const CT_UDP: u32 = 4;

/// Slot of the `CT_STATS` per-CPU array of connection-tracking events: entries inserted (the tc
/// program saw a server open a documented connection).
pub const CT_STAT_INSERTS: u32 = 0;
/// Entries removed because they expired or the connection closed (RST).
pub const CT_STAT_REMOVALS: u32 = 1;
/// Inbound packets that looked like replies but were not (a bare SYN, a stale entry).
pub const CT_STAT_REFUSED: u32 = 2;
/// Slots of `CT_STATS`.
pub const CT_STAT_COUNT: u32 = 3;

/// Why a packet got its verdict: the index of the `REASONS` per-CPU counter array.
/// Every packet the program sees moves exactly one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Allowed by a flow (the flow's own counter moves too).
    PassFlow = 0,
    /// Destination is not a protected address.
    PassUnprotected = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNonIp = 2,
    /// ICMP/ICMPv6 control traffic: errors related to a flow or tracked connection (counted on
    /// it), neighbour discovery, echo when allowed.
    PassIcmp = 3,
    /// Non-first fragment of a datagram whose first fragment was allowed.
    PassFragment = 4,
    /// No flow matches (address classes, protocol, ports).
    DropNoFlow = 5,
    /// A documented prohibition matches (the flow's own counter moves too).
    DropDenyFlow = 6,
    /// The frame or its headers are truncated or inconsistent.
    DropMalformed = 7,
    /// Non-first fragment with no allowed first fragment, or a first fragment too short for ports.
    DropFragment = 8,
    /// Unprotected destination, dropped because the site says so.
    DropUnprotected = 9,
    /// ICMP echo to a protected address when the site does not allow it, or other ICMP.
    DropIcmp = 10,
    /// More VLAN tags or IPv6 extension headers than the parser reads.
    DropUnparsed = 11,
    /// The reply of a connection a protected server opened (counted on the outbound flow).
    PassReply = 12,
    /// An ICMP error whose quoted packet is no flow's or tracked connection's, or unreadable.
    DropIcmpUnrelated = 13,
}

/// Reasons there are: the length of `REASONS`.
pub const REASON_COUNT: u32 = 14;

impl Reason {
    /// Every reason, in the order of their slots.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassFlow,
        Reason::PassUnprotected,
        Reason::PassNonIp,
        Reason::PassIcmp,
        Reason::PassFragment,
        Reason::DropNoFlow,
        Reason::DropDenyFlow,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropUnprotected,
        Reason::DropIcmp,
        Reason::DropUnparsed,
        Reason::PassReply,
        Reason::DropIcmpUnrelated,
    ];

    /// Stable snake_case name used by `stats`, `explain` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassFlow => "flow",
            Reason::PassUnprotected => "unprotected",
            Reason::PassNonIp => "non_ip",
            Reason::PassIcmp => "icmp_control",
            Reason::PassFragment => "fragment_of_allowed",
            Reason::DropNoFlow => "no_flow",
            Reason::DropDenyFlow => "deny_flow",
            Reason::DropMalformed => "malformed",
            Reason::DropFragment => "fragment",
            Reason::DropUnprotected => "unprotected",
            Reason::DropIcmp => "icmp",
            Reason::DropUnparsed => "unparsed",
            Reason::PassReply => "reply",
            Reason::DropIcmpUnrelated => "icmp_unrelated",
        }
    }

    /// Whether the verdict is to drop (in monitor mode: would be).
    pub const fn is_drop(self) -> bool {
        match self {
            Reason::PassFlow
            | Reason::PassUnprotected
            | Reason::PassNonIp
            | Reason::PassIcmp
            | Reason::PassFragment
            | Reason::PassReply => false,
            Reason::DropNoFlow
            | Reason::DropDenyFlow
            | Reason::DropMalformed
            | Reason::DropFragment
            | Reason::DropUnprotected
            | Reason::DropIcmp
            | Reason::DropUnparsed
            | Reason::DropIcmpUnrelated => true,
        }
    }
}

/// Key of the `FRAGS` LRU map: a datagram whose first fragment was allowed (addresses as
/// (high, low) halves, see `parse::Addr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address.
    pub src: [u64; 2],
    /// Destination address.
    pub dst: [u64; 2],
    /// The datagram's identification (IPv4 header, IPv6 fragment header).
    pub id: u32,
    /// IP protocol, widened to 32 bits so that the key has no padding.
    pub proto: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for RunConfig {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for ConnKeyV4 {}
    unsafe impl aya::Pod for ConnKeyV6 {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for EventBudget {}
}
