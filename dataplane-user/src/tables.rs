//! The compiled policy as plain data: exactly the entries the XDP maps will hold.
//! `compile` produces it, `load` writes it into the kernel, `classify` answers `explain` from it.

use dataplane_common::{Config, PairKey, PortKey, SportKey};

/// One flow as compiled; its position in `Tables::flows` is its counter slot in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowInfo {
    pub id: String,
    pub catalog: String,
    pub from: String,
    pub to: String,
    /// "tcp" or "udp": a catalog flow with both protocols compiles to two slots with the same id.
    pub protocol: String,
    /// "allow" or "deny".
    pub action: String,
    pub description: String,
    pub document: String,
    pub table: String,
}

/// An LPM entry: prefix length in bits, key data, value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmEntry<K> {
    pub prefix_len: u32,
    pub key: K,
    pub value: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub flows: Vec<FlowInfo>,
    /// Source address -> source class.
    pub src_v4: Vec<LpmEntry<[u8; 4]>>,
    pub src_v6: Vec<LpmEntry<[u8; 16]>>,
    /// Protected destination address -> destination class.
    pub dst_v4: Vec<LpmEntry<[u8; 4]>>,
    pub dst_v6: Vec<LpmEntry<[u8; 16]>>,
    /// (source class, destination class) -> policy id.
    pub pairs: Vec<(PairKey, u32)>,
    /// (policy, protocol, destination port prefix) -> verdict value (see dataplane_common).
    pub ports: Vec<LpmEntry<PortKey>>,
    /// (source-port table, source port prefix) -> verdict value.
    pub sports: Vec<LpmEntry<SportKey>>,
    pub config: Config,
    /// The same tables for packets a protected server sends (egress): `dst_*` hold the peers'
    /// addresses, `src_*` the protected ones, `flows` the outbound flows (the `OUT_*` maps).
    /// None when no selected flow starts at a protected role.
    pub outbound: Option<Box<Tables>>,
    /// Entries of the connection-tracking table (per IP version).
    pub conntrack_size: u32,
}
