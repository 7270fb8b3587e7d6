//! The compiled policy as plain data, before it becomes the words of the policy image
//! (`compile::image`): `compile` produces it, `slots` moves its flows onto stable counter slots,
//! `load` writes its image into the kernel, and `classify` answers `explain` from the same image.

use dataplane_common::Config;

use crate::policy::Cidr;
pub use crate::policy::FlowInfo;

/// What a port interval of a port table decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortValue {
    /// No flow of the policy matches.
    NoFlow,
    /// The flow in `slot` matches; `deny`: a documented prohibition.
    Flow { slot: u32, deny: bool },
    /// The source port decides: source-port table `id` (an index into `DirectionTables::ports`).
    Sport(u32),
}

/// Intervals of a port range and what each decides: interval `i` is `starts[i]..starts[i + 1]`
/// (the last one ends at 65535); `starts[0]` is 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortTable {
    pub starts: Vec<u16>,
    pub values: Vec<PortValue>,
}

impl PortTable {
    /// The value of `port` (a linear scan: for tests and tools, not the packet path).
    pub fn get(&self, port: u16) -> PortValue {
        let i = self.starts.partition_point(|&s| s <= port);
        self.values[i.saturating_sub(1)]
    }
}

/// An address-to-value map with longest-prefix semantics: the value of an address is the one of
/// the longest prefix holding it, or 0.
pub type Prefixes = Vec<(Cidr, u32)>;

/// A destination class: the source tries (IPv4, IPv6) of the roles with flows to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassRecord {
    pub src_v4: u32,
    pub src_v6: u32,
}

/// The classifier of one direction (inbound: packets to the protected servers; outbound: the
/// packets they send), as the image holds it (see `dataplane_common::image`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionTables {
    /// Destination address -> destination class (1 ..); other addresses are not destinations of
    /// this direction (inbound: unprotected).
    pub dst_v4: Prefixes,
    pub dst_v6: Prefixes,
    /// Destination class `c` is `classes[c - 1]`.
    pub classes: Vec<ClassRecord>,
    /// Source tries: source address -> policy (1 ..; 0 none), shared by classes that have the
    /// same sources.
    pub src: Vec<Prefixes>,
    /// Policy `p` is `policies[p - 1]`: its port table of TCP and of UDP destination ports.
    pub policies: Vec<[Option<u32>; 2]>,
    /// Port tables: destination ports of a policy and protocol, or source ports of a
    /// `PortValue::Sport` table.
    pub ports: Vec<PortTable>,
    /// (protocol, first port, last port) of every flow of the direction: the port filter.
    pub filter: Vec<(u8, u16, u16)>,
}

/// The compiled policy: the inbound direction (packets to the protected servers), the outbound
/// one, and what the program is configured with.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// Inbound flows: `flows[slot]` is the flow counted in `slot`.
    pub flows: Vec<FlowInfo>,
    pub dir: DirectionTables,
    pub config: Config,
    /// Packets a protected server sends (egress). None when no selected flow starts at a
    /// protected role.
    pub outbound: Option<Outbound>,
    /// Entries of the connection-tracking table (per IP version).
    pub conntrack_size: u32,
}

/// The outbound half of a policy: destinations are the peers, sources the protected roles;
/// `flows[slot]` is the outbound flow counted in `slot` (and its replies in the reply counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outbound {
    pub flows: Vec<FlowInfo>,
    pub dir: DirectionTables,
}

impl Tables {
    /// The policy image of both directions, as the `POLICY` map holds it.
    pub fn image(&self) -> Vec<u64> {
        crate::compile::image::build(&self.config, &self.dir, self.outbound.as_ref().map(|o| &o.dir))
    }

    /// Counter slots of the outbound (and reply) counters: one per outbound flow.
    pub fn outbound_flows(&self) -> &[FlowInfo] {
        self.outbound.as_ref().map_or(&[], |o| &o.flows)
    }
}
