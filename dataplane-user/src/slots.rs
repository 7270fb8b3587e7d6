//! Counter slots that stay put across reloads: a flow (id and protocol) keeps the slot it was
//! first given for as long as the dataplane runs, so its counters keep counting through any
//! number of policy reloads, and tracked connections keep pointing at the right outbound flow.
//! A flow that a reload removes keeps its slot and its last counts.

use std::collections::HashMap;

use dataplane_common::{VALUE_INDEX_MASK, VALUE_SPORT_TABLE};

use crate::tables::{FlowInfo, LpmEntry, Tables};

/// Stable slots of one direction: `flows[slot]` is the flow counted in `slot`.
#[derive(Default)]
pub struct Slots {
    index: HashMap<(String, String), u32>,
    pub flows: Vec<FlowInfo>,
}

impl Slots {
    /// The stable slot of each of `flows` (compiled order), giving new flows new slots.
    fn assign(&mut self, flows: &[FlowInfo]) -> Vec<u32> {
        flows
            .iter()
            .map(|f| {
                let key = (f.id.clone(), f.protocol.clone());
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

    /// Rewrites `t` (one direction) onto stable slots.
    fn apply(&mut self, t: &mut Tables) {
        let map = self.assign(&t.flows);
        let remap = |v: u32| (v & !VALUE_INDEX_MASK) | map[(v & VALUE_INDEX_MASK) as usize];
        for e in &mut t.ports {
            // The other kind of value names a source-port table, not a flow.
            if e.value & VALUE_SPORT_TABLE == 0 {
                e.value = remap(e.value);
            }
        }
        t.sports.iter_mut().for_each(|e: &mut LpmEntry<_>| e.value = remap(e.value));
        t.flows = self.flows.clone();
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
        self.inbound.apply(t);
        if let Some(out) = t.outbound.as_deref_mut() {
            self.outbound.apply(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::{PortKey, VALUE_DENY};

    fn flow(id: &str) -> FlowInfo {
        FlowInfo {
            id: id.into(),
            catalog: "c".into(),
            from: "a".into(),
            to: "b".into(),
            protocol: "tcp".into(),
            action: "allow".into(),
            description: String::new(),
            document: String::new(),
            table: String::new(),
        }
    }

    fn tables(ids: &[&str]) -> Tables {
        Tables {
            flows: ids.iter().map(|i| flow(i)).collect(),
            ports: (0..ids.len() as u32)
                .map(|i| LpmEntry { prefix_len: 56, key: PortKey::new(1, 6, i as u16), value: i | if i == 1 { VALUE_DENY } else { 0 } })
                .chain([LpmEntry { prefix_len: 56, key: PortKey::new(1, 6, 99), value: VALUE_SPORT_TABLE | 1 }])
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn surviving_flows_keep_their_slots() {
        let mut s = StableSlots::default();
        let mut first = tables(&["a", "b", "c"]);
        s.apply(&mut first);
        assert_eq!(first.ports[2].value, 2);
        // b is gone, d is new, and the order changed: a and c keep 0 and 2, d gets 3.
        let mut second = tables(&["c", "d", "a"]);
        s.apply(&mut second);
        assert_eq!(second.ports[0].value, 2, "c");
        assert_eq!(second.ports[1].value, 3 | VALUE_DENY, "d, flags kept");
        assert_eq!(second.ports[2].value, 0, "a");
        assert_eq!(second.ports[3].value, VALUE_SPORT_TABLE | 1, "a source-port table id is not a slot");
        let ids: Vec<_> = second.flows.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
    }
}
