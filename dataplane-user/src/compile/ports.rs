//! PORTS and SPORTS: per (policy, protocol), destination-port intervals -> the winning flow, or a
//! source-port table when the winner depends on the source port.
//!
//! Precedence: deny flows first, then allow flows, each in slot order. For a destination-port
//! interval the candidates are the flows covering it in that order; the winner for a source port
//! is the first candidate whose source ports contain it. If the first candidate takes any source
//! port it always wins; otherwise the candidates up to (and including) the first one taking any
//! source port form a source-port table.

use std::collections::{BTreeSet, HashMap};

use dataplane_common::{
    PortKey, SportKey, PORT_KEY_FIXED_BITS, SPORT_KEY_FIXED_BITS, VALUE_DENY, VALUE_SPORT_TABLE,
};

use super::cover::{cover, merge_adjacent};
use super::limits;
use crate::policy::Flow;
use crate::tables::LpmEntry;

#[derive(Default)]
pub struct PortTables {
    pub ports: Vec<LpmEntry<PortKey>>,
    pub sports: Vec<LpmEntry<SportKey>>,
    /// Source-port tables, deduplicated by their candidate list; id = index + 1.
    tables: HashMap<Vec<u32>, u32>,
    /// Map name prefix in errors ("OUT_" for the outbound tables).
    pub prefix: &'static str,
}

impl PortTables {
    pub fn sport_tables(&self) -> usize {
        self.tables.len()
    }
}

fn full(r: &[(u16, u16)]) -> bool {
    r == [(0, u16::MAX)]
}

/// The verdict value of a flow slot.
pub fn flow_value(flows: &[Flow], slot: u32) -> u32 {
    slot | if flows[slot as usize].deny {
        VALUE_DENY
    } else {
        0
    }
}

/// Sweeps `ranges[k]` (per candidate k): for every maximal interval with a constant non-empty
/// candidate set, calls `f(first, last, active)` with the active candidates in ascending order.
fn sweep(ranges: &[&[(u16, u16)]], mut f: impl FnMut(u16, u16, &BTreeSet<usize>)) {
    // (position, is_start, candidate); ends are at last + 1.
    let mut events: Vec<(u32, bool, usize)> = Vec::new();
    for (k, rs) in ranges.iter().enumerate() {
        for &(a, b) in rs.iter() {
            events.push((a as u32, true, k));
            events.push((b as u32 + 1, false, k));
        }
    }
    events.sort_unstable();
    let mut active = BTreeSet::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, k) = events[i];
            if start {
                active.insert(k);
            } else {
                active.remove(&k);
            }
            i += 1;
        }
        if let (Some(&(next, _, _)), false) = (events.get(i), active.is_empty()) {
            f(pos as u16, (next - 1) as u16, &active);
        }
    }
}

impl PortTables {
    /// Adds the entries of policy `pid` (its flows' slots, ascending) for both protocols.
    pub fn add_policy(&mut self, pid: u32, slots: &[u32], flows: &[Flow]) -> anyhow::Result<()> {
        for proto in [6u8, 17] {
            // Precedence order: denies, then allows, each by slot.
            let mut cands: Vec<u32> = slots
                .iter()
                .copied()
                .filter(|&s| flows[s as usize].proto == proto)
                .collect();
            if cands.is_empty() {
                continue;
            }
            cands.sort_by_key(|&s| (!flows[s as usize].deny, s));
            let dports: Vec<&[(u16, u16)]> = cands
                .iter()
                .map(|&s| flows[s as usize].dport.as_slice())
                .collect();
            let mut segs = Vec::new();
            sweep(&dports, |a, b, active| {
                let first = cands[*active.iter().next().unwrap_or(&0)];
                let value = if full(&flows[first as usize].sport) {
                    flow_value(flows, first)
                } else {
                    let mut list = Vec::new();
                    for &k in active {
                        list.push(cands[k]);
                        if full(&flows[cands[k] as usize].sport) {
                            break;
                        }
                    }
                    VALUE_SPORT_TABLE | self.sport_table(list, flows)
                };
                segs.push((a, b, value));
            });
            for (a, b, value) in merge_adjacent(segs) {
                for (start, len) in cover(a, b) {
                    self.ports.push(LpmEntry {
                        prefix_len: PORT_KEY_FIXED_BITS + len as u32,
                        key: PortKey::new(pid, proto, start),
                        value,
                    });
                }
            }
            if self.ports.len() > limits::MAX_PORTS {
                anyhow::bail!(
                    "the {}PORTS map would exceed {} entries: too many distinct (source roles, destination roles) policies or port ranges",
                    self.prefix,
                    limits::MAX_PORTS
                );
            }
        }
        Ok(())
    }

    /// The id of the source-port table for `list` (candidates in precedence order), built once.
    fn sport_table(&mut self, list: Vec<u32>, flows: &[Flow]) -> u32 {
        if let Some(&id) = self.tables.get(&list) {
            return id;
        }
        let id = self.tables.len() as u32 + 1;
        let sports: Vec<&[(u16, u16)]> = list
            .iter()
            .map(|&s| flows[s as usize].sport.as_slice())
            .collect();
        let mut segs = Vec::new();
        sweep(&sports, |a, b, active| {
            let first = list[*active.iter().next().unwrap_or(&0)];
            segs.push((a, b, flow_value(flows, first)));
        });
        for (a, b, value) in merge_adjacent(segs) {
            for (start, len) in cover(a, b) {
                self.sports.push(LpmEntry {
                    prefix_len: SPORT_KEY_FIXED_BITS + len as u32,
                    key: SportKey::new(id, start),
                    value,
                });
            }
        }
        self.tables.insert(list, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::FlowInfo;

    fn flow(deny: bool, sport: &[(u16, u16)], dport: &[(u16, u16)]) -> Flow {
        let info = FlowInfo {
            id: String::new(),
            catalog: String::new(),
            from: String::new(),
            to: String::new(),
            protocol: "tcp".into(),
            action: String::new(),
            description: String::new(),
            document: String::new(),
            table: String::new(),
        };
        Flow {
            info,
            from: 0,
            to: 0,
            proto: 6,
            sport: sport.to_vec(),
            dport: dport.to_vec(),
            deny,
        }
    }

    /// Value for (dport, sport) by walking the entries (longest prefix first).
    fn lookup(t: &PortTables, dport: u16, sport: u16) -> Option<u32> {
        let lpm = |entries: &[(u32, u32, u16, u32)], id: u32, port: u16, fixed: u32| {
            entries
                .iter()
                .filter(|(eid, len, start, _)| {
                    let bits = len - fixed;
                    *eid == id && (bits == 0 || (port >> (16 - bits)) == (start >> (16 - bits)))
                })
                .max_by_key(|e| e.1)
                .map(|e| e.3)
        };
        let ports: Vec<_> = t
            .ports
            .iter()
            .map(|e| (1, e.prefix_len, u16::from_be_bytes(e.key.dport), e.value))
            .collect();
        let sports: Vec<_> = t
            .sports
            .iter()
            .map(|e| {
                (
                    u32::from_be_bytes(e.key.table),
                    e.prefix_len,
                    u16::from_be_bytes(e.key.sport),
                    e.value,
                )
            })
            .collect();
        let v = lpm(&ports, 1, dport, PORT_KEY_FIXED_BITS)?;
        if v & VALUE_SPORT_TABLE == 0 {
            return Some(v);
        }
        lpm(&sports, v & !VALUE_SPORT_TABLE, sport, SPORT_KEY_FIXED_BITS)
    }

    #[test]
    fn deny_precedence_and_source_ports() {
        let any = [(0, 65535)];
        let flows = vec![
            flow(false, &any, &[(1, 100)]),              // 0: allow 1-100
            flow(false, &[(1024, 65535)], &[(90, 200)]), // 1: allow 90-200 from 1024+
            flow(true, &[(5060, 5060)], &[(50, 95)]),    // 2: deny 50-95 from 5060 only
            flow(true, &any, &[(300, 300)]),             // 3: deny 300
            flow(false, &any, &[(300, 310)]),            // 4: allowed around the prohibition
        ];
        let mut t = PortTables::default();
        t.add_policy(1, &[0, 1, 2, 3, 4], &flows).expect("builds");
        assert_eq!(lookup(&t, 10, 5060), Some(0));
        assert_eq!(lookup(&t, 50, 5060), Some(2 | VALUE_DENY));
        assert_eq!(lookup(&t, 50, 5061), Some(0));
        assert_eq!(lookup(&t, 95, 5060), Some(2 | VALUE_DENY));
        assert_eq!(lookup(&t, 96, 1), Some(0));
        assert_eq!(lookup(&t, 101, 1024), Some(1));
        assert_eq!(lookup(&t, 101, 1023), None);
        assert_eq!(lookup(&t, 201, 1024), None);
        assert_eq!(lookup(&t, 300, 1), Some(3 | VALUE_DENY));
        assert_eq!(lookup(&t, 301, 1), Some(4));
        // 50-89 and 90-95 have the same candidates up to the first any-source-port flow: one table.
        assert_eq!(t.sport_tables(), 2);
    }
}
