//! `dataplane stats`: per-flow packets and bytes and the reasons for every verdict, read from the
//! maps a running `dataplane run` pinned (summed over CPUs).

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use dataplane_common::{Counter, Reason};
use serde::Serialize;

use crate::{load, state, tables::FlowInfo};

#[derive(clap::Args, Default)]
pub struct StatsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
pub struct Stats {
    pub flows: Vec<FlowStats>,
    pub reasons: Vec<ReasonStats>,
}

#[derive(Serialize)]
pub struct FlowStats {
    #[serde(flatten)]
    pub flow: FlowInfo,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Serialize)]
pub struct ReasonStats {
    pub verdict: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

fn read_pinned(name: &str) -> Result<Vec<Counter>> {
    let path = state::pin_path(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map: PerCpuArray<_, Counter> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    load::read_counters(&map)
}

impl Stats {
    /// Builds the report from a flow list and the two counter arrays.
    pub fn new(flows: &[FlowInfo], flow_counters: &[Counter], reasons: &[Counter]) -> Self {
        Self {
            flows: flows
                .iter()
                .zip(flow_counters)
                .map(|(f, c)| FlowStats { flow: f.clone(), packets: c.packets, bytes: c.bytes })
                .collect(),
            reasons: Reason::ALL
                .iter()
                .zip(reasons)
                .map(|(r, c)| ReasonStats {
                    verdict: if r.is_drop() { "drop" } else { "pass" },
                    reason: r.name(),
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect(),
        }
    }

    /// Human-readable: flows that saw traffic, then every reason that did.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("{:<40} {:<5} {:<6} {:<24} {:>10} {:>12}\n", "FLOW", "PROTO", "ACTION", "FROM -> TO", "PACKETS", "BYTES"));
        for f in self.flows.iter().filter(|f| f.packets > 0) {
            let roles = format!("{} -> {}", f.flow.from, f.flow.to);
            out.push_str(&format!(
                "{:<40} {:<5} {:<6} {:<24} {:>10} {:>12}\n",
                f.flow.id, f.flow.protocol, f.flow.action, roles, f.packets, f.bytes
            ));
        }
        let idle = self.flows.iter().filter(|f| f.packets == 0).count();
        out.push_str(&format!("({idle} flows without traffic not shown)\n\n"));
        out.push_str(&format!("{:<8} {:<22} {:>10} {:>12}\n", "VERDICT", "REASON", "PACKETS", "BYTES"));
        for r in self.reasons.iter().filter(|r| r.packets > 0) {
            out.push_str(&format!("{:<8} {:<22} {:>10} {:>12}\n", r.verdict, r.reason, r.packets, r.bytes));
        }
        out
    }
}

pub fn stats(a: StatsArgs) -> Result<()> {
    let st = state::State::read()?;
    let report = Stats::new(&st.flows, &read_pinned(load::MAP_FLOWS)?, &read_pinned(load::MAP_REASONS)?);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
