//! `dataplane stats`: per-flow packets and bytes and the reasons for every verdict, read from the
//! maps a running `dataplane run` pinned (summed over CPUs).

use aya::maps::{Map, MapData};
use dataplane_common::{Counter, Reason};
use serde::Serialize;

use crate::{
    classify::verdict::{serialize_reason, XdpAction},
    compile::tables::FlowInfo,
    kernel::{maps::MAP_FRAGS, pins},
    observe::{
        counters::{self, ConntrackStats, Counters},
        fill::TableFill,
    },
};

use super::ObserveError;

type Result<T, E = ObserveError> = std::result::Result<T, E>;

#[derive(Serialize)]
pub struct Stats {
    /// Monitor mode: the drops below were counted, not enforced.
    pub monitor: bool,
    pub flows: Vec<FlowStats>,
    /// Connections protected servers opened: packets out, replies in, per outbound flow.
    pub outbound: Vec<OutboundStats>,
    pub reasons: Vec<ReasonStats>,
    pub conntrack: ConntrackStats,
    /// The fragment table (`FRAGS`): datagrams whose first fragment passed.
    pub fragments: TableFill,
    /// `run --forward`: allowed packets forwarded in XDP, and those passed to the stack, by
    /// why (absent when there were none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<std::collections::BTreeMap<&'static str, u64>>,
}

#[derive(Serialize)]
pub struct FlowStats {
    #[serde(flatten)]
    pub flow: FlowInfo,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct OutboundStats {
    #[serde(flatten)]
    pub flow: FlowInfo,
    /// Sent by the protected servers.
    pub packets: u64,
    pub bytes: u64,
    /// Replies admitted.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

#[derive(Serialize)]
pub struct ReasonStats {
    pub verdict: XdpAction,
    #[serde(serialize_with = "serialize_reason")]
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

fn read_pinned(name: &str) -> Result<Vec<Counter>> {
    let path = pins::pin_path(name);
    let data = MapData::from_pin(&path).map_err(|source| ObserveError::OpenPinned { path, source })?;
    counters::read_array(&Map::PerCpuArray(data))
}

impl Stats {
    /// The report of the program whose maps are pinned, with its flows and outbound flows.
    pub fn read_pinned(flows: &[FlowInfo], outbound: &[FlowInfo]) -> Result<Self> {
        let c = Counters::read_with(read_pinned)?;
        Ok(Self {
            monitor: false,
            flows: flows
                .iter()
                .zip(&c.flows)
                .map(|(f, c)| FlowStats { flow: f.clone(), packets: c.packets, bytes: c.bytes })
                .collect(),
            outbound: outbound
                .iter()
                .zip(c.out_flows.iter().zip(&c.reply_flows))
                .map(|(f, (o, r))| OutboundStats {
                    flow: f.clone(),
                    packets: o.packets,
                    bytes: o.bytes,
                    reply_packets: r.packets,
                    reply_bytes: r.bytes,
                })
                .collect(),
            reasons: Reason::ALL
                .iter()
                .zip(&c.reasons)
                .map(|(r, c)| ReasonStats { verdict: XdpAction::of(*r), reason: *r, packets: c.packets, bytes: c.bytes })
                .collect(),
            conntrack: ConntrackStats::read_pinned()?,
            fragments: TableFill::read_pinned(MAP_FRAGS)?,
            forward: crate::kernel::forward::read_pinned()
                .filter(|f| f.iter().any(|(_, n)| *n > 0))
                .map(|f| f.into_iter().collect()),
        })
    }

    /// Human-readable: flows that saw traffic, outbound flows, then every reason that did.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.monitor {
            out.push_str("MONITOR MODE: the drops below are counted, not enforced\n\n");
        }
        out.push_str(&format!(
            "{:<40} {:<5} {:<6} {:<24} {:>10} {:>12}\n",
            "FLOW", "PROTO", "ACTION", "FROM -> TO", "PACKETS", "BYTES"
        ));
        for f in self.flows.iter().filter(|f| f.packets > 0) {
            let roles = format!("{} -> {}", f.flow.from, f.flow.to);
            out.push_str(&format!(
                "{:<40} {:<5} {:<6} {:<24} {:>10} {:>12}\n",
                f.flow.id, f.flow.protocol, f.flow.action, roles, f.packets, f.bytes
            ));
        }
        let idle = self.flows.iter().filter(|f| f.packets == 0).count();
        out.push_str(&format!("({idle} flows without traffic not shown)\n"));
        let active: Vec<_> = self.outbound.iter().filter(|f| f.packets + f.reply_packets > 0).collect();
        if !active.is_empty() {
            out.push_str(&format!(
                "\n{:<40} {:<5} {:<24} {:>10} {:>10}\n",
                "OUTBOUND FLOW", "PROTO", "FROM -> TO", "OUT", "REPLIES"
            ));
            for f in active {
                let roles = format!("{} -> {}", f.flow.from, f.flow.to);
                out.push_str(&format!(
                    "{:<40} {:<5} {:<24} {:>10} {:>10}\n",
                    f.flow.id, f.flow.protocol, roles, f.packets, f.reply_packets
                ));
            }
        }
        let ct = &self.conntrack;
        out.push_str(&format!(
            "\ntracked connections: {} (inserted {}, removed {}, evicted {}, refused replies {})\n",
            ct.entries, ct.inserts, ct.removals, ct.evictions, ct.refused
        ));
        let pct = |f: &TableFill| format!("{} of {} ({:.1}%)", f.entries, f.capacity, f.fill * 100.0);
        out.push_str(&format!(
            "table fill: connections IPv4 {}, IPv6 {}; fragments {}\n\n",
            pct(&ct.ipv4),
            pct(&ct.ipv6),
            pct(&self.fragments)
        ));
        if let Some(f) = &self.forward {
            let n = |k: &str| f.get(k).copied().unwrap_or(0);
            out.push_str(&format!(
                "forwarded in XDP: {} (to the stack: no FIB answer {}, not eligible {}, other interface {})\n\n",
                n("forwarded"),
                n("stack_fib"),
                n("stack_ineligible"),
                n("stack_other_interface")
            ));
        }
        out.push_str(&format!("{:<8} {:<22} {:>10} {:>12}\n", "VERDICT", "REASON", "PACKETS", "BYTES"));
        for r in self.reasons.iter().filter(|r| r.packets > 0) {
            out.push_str(&format!("{:<8} {:<22} {:>10} {:>12}\n", r.verdict, r.reason.name(), r.packets, r.bytes));
        }
        out
    }
}
