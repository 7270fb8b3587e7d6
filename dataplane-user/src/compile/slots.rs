//! Counter slots that stay put across reloads: a flow (id and protocol) keeps the slot it was
//! first given for as long as the dataplane runs, so its counters keep counting through any
//! number of policy reloads, and tracked connections keep pointing at the right outbound flow.
//! A flow that a reload removes keeps its slot and its last counts.

use std::collections::HashMap;

use crate::compile::tables::{DirectionTables, FlowInfo, PortValue, Tables};
use crate::policy::FlowKey;

/// Stable slots of one direction: `flows[slot]` is the flow counted in `slot`.
#[derive(Default)]
pub struct Slots {
    index: HashMap<FlowKey, u32>,
    pub flows: Vec<FlowInfo>,
}

impl Slots {
    /// The stable slot of each of `flows` (compiled order), giving new flows new slots.
    fn assign(&mut self, flows: &[FlowInfo]) -> Vec<u32> {
        flows
            .iter()
            .map(|f| {
                let key = f.key();
                let next = self.flows.len() as u32;
                let slot = *self.index.entry(key).or_insert(next);
                if slot == next {
                    self.flows.push(f.clone());
                } else {
                    self.flows[slot as usize] = f.clone();
                }
                slot
            })
            .collect()
    }

    /// Rewrites one direction's `flows` and the port tables of its classifier `dir` onto stable slots.
    fn apply(&mut self, flows: &mut Vec<FlowInfo>, dir: &mut DirectionTables) {
        let map = self.assign(flows);
        for v in dir.ports.iter_mut().flat_map(|p| p.values.iter_mut()) {
            // The other kinds name no flow (a source-port table's id is not a slot).
            if let PortValue::Flow { slot, .. } = v {
                *slot = map[*slot as usize];
            }
        }
        *flows = self.flows.clone();
    }
}

/// Stable slots of inbound and outbound flows.
#[derive(Default)]
pub struct StableSlots {
    pub inbound: Slots,
    pub outbound: Slots,
}

impl StableSlots {
    /// The slots a previous run recorded (its state file lists the flow of every slot).
    pub fn from_flows(inbound: &[FlowInfo], outbound: &[FlowInfo]) -> Self {
        let mut s = Self::default();
        s.inbound.assign(inbound);
        s.outbound.assign(outbound);
        s
    }

    /// Rewrites freshly compiled tables so that every flow counts in its stable slot.
    pub fn apply(&mut self, t: &mut Tables) {
        self.inbound.apply(&mut t.flows, &mut t.dir);
        if let Some(out) = t.outbound.as_mut() {
            self.outbound.apply(&mut out.flows, &mut out.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tables::PortTable;

    fn flow(id: &str) -> FlowInfo {
        FlowInfo {
            id: id.into(),
            catalog: "c".into(),
            from: "a".into(),
            to: "b".into(),
            protocol: crate::policy::Proto::Tcp,
            action: crate::policy::Action::Allow,
            description: String::new(),
            document: String::new(),
            table: String::new(),
        }
    }

    /// One port table: port i -> flow i (flow 1 a deny flow), port 99 -> source-port table 1.
    fn tables(ids: &[&str]) -> Tables {
        let mut values: Vec<PortValue> = (0..ids.len() as u32).map(|i| PortValue::Flow { slot: i, deny: i == 1 }).collect();
        values.push(PortValue::Sport(1));
        let starts = (0..values.len() as u16).collect();
        let mut t = Tables { flows: ids.iter().map(|i| flow(i)).collect(), ..Default::default() };
        t.dir.ports = vec![PortTable { starts, values }];
        t
    }

    fn values(t: &Tables) -> &[PortValue] {
        &t.dir.ports[0].values
    }

    #[test]
    fn surviving_flows_keep_their_slots() {
        let mut s = StableSlots::default();
        let mut first = tables(&["a", "b", "c"]);
        s.apply(&mut first);
        assert_eq!(values(&first)[2], PortValue::Flow { slot: 2, deny: false });
        // b is gone, d is new, and the order changed: a and c keep 0 and 2, d gets 3.
        let mut second = tables(&["c", "d", "a"]);
        s.apply(&mut second);
        assert_eq!(values(&second)[0], PortValue::Flow { slot: 2, deny: false }, "c");
        assert_eq!(values(&second)[1], PortValue::Flow { slot: 3, deny: true }, "d, flags kept");
        assert_eq!(values(&second)[2], PortValue::Flow { slot: 0, deny: false }, "a");
        assert_eq!(values(&second)[3], PortValue::Sport(1), "a source-port table id is not a slot");
        let ids: Vec<_> = second.flows.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
    }
}
