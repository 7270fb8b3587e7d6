//! Port tables: per (policy, protocol), destination-port intervals -> the winning flow, or a
//! source-port table when the winner depends on the source port.
//!
//! Precedence: deny flows first, then allow flows, each in slot order. For a destination-port
//! interval the candidates are the flows covering it in that order; the winner for a source port
//! is the first candidate whose source ports contain it. If the first candidate takes any source
//! port it always wins; otherwise the candidates up to (and including) the first one taking any
//! source port form a source-port table.

use crate::compile::{intern::Interner, FastMap};

use crate::compile::tables::{PortTable, PortValue};
use crate::policy::Flow;

/// Port tables of one direction, deduplicated by content (policies often share them).
#[derive(Default)]
pub struct PortTables {
    tables: Interner<PortTable>,
    /// Source-port tables by their candidate list.
    sport_tables: FastMap<Vec<u32>, u32>,
    /// The tables (TCP, UDP) of each policy added with `push_policy`, in order.
    pub policies: Vec<[Option<u32>; 2]>,
}

impl PortTables {
    pub fn sport_tables(&self) -> usize {
        self.sport_tables.len()
    }

    /// Adds a policy (its flows' slots, ascending) to `policies`.
    pub fn push_policy(&mut self, slots: &[u32], flows: &[Flow]) {
        let ids = self.add_policy(slots, flows);
        self.policies.push(ids);
    }

    /// Appends the tables and policies of `other` (built from the policies that follow this
    /// one's): its tables interned in its order, each source-port table before the tables naming
    /// it, so that ids come out as one pass over all the policies would give them.
    pub fn merge(&mut self, other: PortTables) {
        let mut id = Vec::with_capacity(other.tables.len());
        for mut t in other.tables.into_items() {
            for v in &mut t.values {
                if let PortValue::Sport(s) = v {
                    *s = id[*s as usize];
                }
            }
            id.push(self.intern(t));
        }
        for (list, t) in other.sport_tables {
            self.sport_tables.entry(list).or_insert(id[t as usize]);
        }
        self.policies.extend(other.policies.into_iter().map(|p| p.map(|t| t.map(|t| id[t as usize]))));
    }

    fn intern(&mut self, t: PortTable) -> u32 {
        self.tables.intern(t)
    }

    /// The tables by id.
    pub fn tables(&self) -> &[PortTable] {
        self.tables.items()
    }

    pub fn into_tables(self) -> Vec<PortTable> {
        self.tables.into_items()
    }
}

fn full(r: &[(u16, u16)]) -> bool {
    r == [(0, u16::MAX)]
}

/// The value of a flow slot.
fn flow_value(flows: &[Flow], slot: u32) -> PortValue {
    PortValue::Flow { slot, deny: flows[slot as usize].deny }
}

/// Sweeps `ranges[k]` (per candidate k): for every maximal interval with a constant non-empty
/// candidate set, calls `f(first, last, active)` with the active candidates in ascending order.
fn sweep(ranges: &[&[(u16, u16)]], mut f: impl FnMut(u16, u16, &[usize])) {
    // (position, is_start, candidate); ends are at last + 1.
    let mut events: Vec<(u32, bool, usize)> = Vec::new();
    for (k, rs) in ranges.iter().enumerate() {
        for &(a, b) in *rs {
            events.push((a as u32, true, k));
            events.push((b as u32 + 1, false, k));
        }
    }
    events.sort_unstable();
    // Sorted; a few candidates at a time, so a vector beats a tree.
    let mut active: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, k) = events[i];
            match (active.binary_search(&k), start) {
                (Err(at), true) => active.insert(at, k),
                (Ok(at), false) => {
                    active.remove(at);
                }
                // A candidate's own ranges are disjoint: never started twice or ended unstarted.
                _ => {}
            }
            i += 1;
        }
        if let (Some(&(next, _, _)), false) = (events.get(i), active.is_empty()) {
            f(pos as u16, (next - 1) as u16, &active);
        }
    }
}

/// The table of intervals `(first, last, value)` (sorted, disjoint): gaps are `NoFlow`, and
/// adjacent intervals with equal values are one.
fn table_of(segments: Vec<(u16, u16, PortValue)>) -> PortTable {
    let mut t = PortTable { starts: vec![0], values: vec![PortValue::NoFlow] };
    let mut push = |start: u16, v: PortValue| {
        if *t.values.last().expect("one interval at least") != v {
            if *t.starts.last().expect("one interval at least") == start {
                *t.values.last_mut().expect("one interval at least") = v;
                // The interval it replaced may now equal the one before it.
                if t.values.len() >= 2 && t.values[t.values.len() - 2] == v {
                    t.values.pop();
                    t.starts.pop();
                }
            } else {
                t.starts.push(start);
                t.values.push(v);
            }
        }
    };
    for (a, b, v) in segments {
        push(a, v);
        if b < u16::MAX {
            push(b + 1, PortValue::NoFlow);
        }
    }
    t
}

impl PortTables {
    /// The port tables (TCP, UDP) of a policy: its flows' slots, ascending.
    pub fn add_policy(&mut self, slots: &[u32], flows: &[Flow]) -> [Option<u32>; 2] {
        [6u8, 17].map(|proto| {
            // Precedence order: denies, then allows, each by slot.
            let mut cands: Vec<u32> = slots.iter().copied().filter(|&s| flows[s as usize].proto == proto).collect();
            if cands.is_empty() {
                return None;
            }
            cands.sort_by_key(|&s| (!flows[s as usize].deny, s));
            let dports: Vec<&[(u16, u16)]> = cands.iter().map(|&s| flows[s as usize].dport.as_slice()).collect();
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
                    PortValue::Sport(self.sport_table(list, flows))
                };
                segs.push((a, b, value));
            });
            Some(self.intern(table_of(segs)))
        })
    }

    /// The source-port table for `list` (candidates in precedence order), built once.
    fn sport_table(&mut self, list: Vec<u32>, flows: &[Flow]) -> u32 {
        if let Some(&id) = self.sport_tables.get(&list) {
            return id;
        }
        let sports: Vec<&[(u16, u16)]> = list.iter().map(|&s| flows[s as usize].sport.as_slice()).collect();
        let mut segs = Vec::new();
        sweep(&sports, |a, b, active| {
            let first = list[*active.iter().next().unwrap_or(&0)];
            segs.push((a, b, flow_value(flows, first)));
        });
        let id = self.intern(table_of(segs));
        self.sport_tables.insert(list, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tables::FlowInfo;

    fn flow(deny: bool, sport: &[(u16, u16)], dport: &[(u16, u16)]) -> Flow {
        let info = FlowInfo {
            id: String::new(),
            catalog: String::new(),
            from: String::new(),
            to: String::new(),
            protocol: crate::policy::Proto::Tcp,
            action: crate::policy::Action::Allow,
            description: String::new(),
            document: String::new(),
            table: String::new(),
        };
        Flow {
            info,
            from: 0,
            to: 0,
            proto: 6,
            sport: sport.iter().copied().collect(),
            dport: dport.iter().copied().collect(),
            deny,
        }
    }

    /// The slot (with the deny bit as in the image) for (dport, sport).
    fn lookup(t: &PortTables, table: u32, dport: u16, sport: u16) -> Option<(u32, bool)> {
        match t.tables()[table as usize].get(dport) {
            PortValue::NoFlow => None,
            PortValue::Flow { slot, deny } => Some((slot, deny)),
            PortValue::Sport(s) => match t.tables()[s as usize].get(sport) {
                PortValue::Flow { slot, deny } => Some((slot, deny)),
                _ => None,
            },
        }
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
        let [tcp, udp] = t.add_policy(&[0, 1, 2, 3, 4], &flows);
        assert_eq!(udp, None);
        let tcp = tcp.expect("a TCP table");
        assert_eq!(lookup(&t, tcp, 0, 1), None);
        assert_eq!(lookup(&t, tcp, 10, 5060), Some((0, false)));
        assert_eq!(lookup(&t, tcp, 50, 5060), Some((2, true)));
        assert_eq!(lookup(&t, tcp, 50, 5061), Some((0, false)));
        assert_eq!(lookup(&t, tcp, 95, 5060), Some((2, true)));
        assert_eq!(lookup(&t, tcp, 96, 1), Some((0, false)));
        assert_eq!(lookup(&t, tcp, 101, 1024), Some((1, false)));
        assert_eq!(lookup(&t, tcp, 101, 1023), None);
        assert_eq!(lookup(&t, tcp, 201, 1024), None);
        assert_eq!(lookup(&t, tcp, 300, 1), Some((3, true)));
        assert_eq!(lookup(&t, tcp, 301, 1), Some((4, false)));
        assert_eq!(lookup(&t, tcp, 310, 1), Some((4, false)));
        assert_eq!(lookup(&t, tcp, 311, 1), None);
        assert_eq!(lookup(&t, tcp, 65535, 1), None);
        // 50-89 and 90-95 have the same candidates up to the first any-source-port flow: one table.
        assert_eq!(t.sport_tables(), 2);
    }

    #[test]
    fn tables_merge_equal_neighbours() {
        let a = PortValue::Flow { slot: 1, deny: false };
        let t = table_of(vec![(0, 9, a), (10, 19, a), (21, 65535, a)]);
        assert_eq!(t.starts, vec![0, 20, 21]);
        assert_eq!(t.values, vec![a, PortValue::NoFlow, a]);
        let t = table_of(vec![(5, 65535, a)]);
        assert_eq!((t.starts, t.values), (vec![0, 5], vec![PortValue::NoFlow, a]));
    }
}
