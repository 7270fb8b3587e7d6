//! The maps of the XDP object (see dataplane-ebpf), by name: what the controller looks up after
//! a load, pins, and reads back.

/// Map names in the object (see dataplane-ebpf).
/// The policy images: every classification table of both directions (dataplane_common::image),
/// in force and written by the next reload, in turn.
pub const MAP_POLICY: [&str; 2] = ["POLICY_A", "POLICY_B"];
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_REASONS: &str = "REASONS";
pub const MAP_OUT_FLOWS: &str = "OUT_FLOWS";
pub const MAP_REPLY_FLOWS: &str = "REPLY_FLOWS";
/// The connection-tracking tables (see dataplane_common::FlowEntry).
pub const MAP_FLOW_V4: &str = "FLOW_V4";
pub const MAP_FLOW_V6: &str = "FLOW_V6";
pub const MAP_CT_STATS: &str = "CT_STATS";
/// Per (protocol, port) of the protected servers: when a tracked connection last used it.
pub const MAP_LIVE_PORTS: &str = "LIVE_PORTS";

/// Maps that outlive a policy: counters, the flow table and the fragment table. A running
/// dataplane pins them, and every reload reuses them, so counters keep counting and tracked
/// connections stay tracked.
pub const SHARED_MAPS: [&str; 10] = [
    MAP_FLOWS,
    MAP_OUT_FLOWS,
    MAP_REPLY_FLOWS,
    MAP_REASONS,
    MAP_FLOW_V4,
    MAP_FLOW_V6,
    MAP_FRAGS,
    MAP_CT_STATS,
    MAP_DROP_EVENTS,
    MAP_LIVE_PORTS,
];
/// The ring buffer of drop events (`dataplane events`).
pub const MAP_DROP_EVENTS: &str = "DROP_EVENTS";

/// The fragment table: datagrams whose first fragment was admitted (see dataplane_common::FragKey).
pub const MAP_FRAGS: &str = "FRAGS";
/// `run --forward`: the interfaces a forwarded frame may leave through, and the forwarding outcomes.
pub const MAP_FORWARD_PORTS: &str = "FORWARD_PORTS";
pub const MAP_FORWARD_STATS: &str = "FORWARD_STATS";
