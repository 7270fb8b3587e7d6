//! Step 2 of the compiler: the source trie of each destination class, and the policies (lists
//! of flows) its prefixes lead to, interned across classes.

use crate::compile::tables::{ClassRecord, Prefixes};
use crate::compile::{intern::Interner, prefix_values, split_family};
use crate::policy::Policy;

use super::classes::{label, Sets};

/// The source tries and policies of a run of classes, in class order.
#[derive(Default)]
pub struct SourceTries {
    /// Policies: lists of flow slots, ascending (id 0: the empty list, no flow).
    pub policies: Sets,
    /// Source tries (prefix -> policy id), each stored once.
    pub tries: Interner<Prefixes>,
    /// Per class, its IPv4 and IPv6 tries.
    pub classes: Vec<ClassRecord>,
}

impl SourceTries {
    /// Adds the class whose flows are `flows` (slots, ascending): only the roles those flows come
    /// from matter. Their prefixes are labeled with the set of those roles containing them, and
    /// a set's policy is the class's flows from a role of the set.
    pub fn add_class(&mut self, p: &Policy, flows: &[u32]) {
        let mut from: Vec<usize> = flows.iter().map(|&s| p.flows[s as usize].from).collect();
        from.sort_unstable();
        from.dedup();
        let entries = from.iter().flat_map(|&r| p.roles[r].cidrs.iter().map(move |c| (*c, r as u32))).collect();
        let mut sets = Sets::default();
        let labeled = label(entries, &mut sets);
        // The class's flows by the role they come from (in `from` order), each list ascending.
        let mut by_role: Vec<Vec<u32>> = vec![Vec::new(); from.len()];
        let at = |r: usize| from.binary_search(&r).expect("a role of the class");
        flows.iter().for_each(|&s| by_role[at(p.flows[s as usize].from)].push(s));
        let policy_of_set: Vec<u32> = sets
            .sets()
            .iter()
            .map(|roles| {
                let mut list: Vec<u32> = roles.iter().flat_map(|&r| by_role[at(r as usize)].iter().copied()).collect();
                list.sort_unstable();
                if list.is_empty() {
                    0
                } else {
                    self.policies.intern(list)
                }
            })
            .collect();
        let (v4, v6) = split_family(prefix_values(&labeled, |set| policy_of_set[set as usize]));
        let [src_v4, src_v6] = [v4, v6].map(|t| self.tries.intern(t));
        self.classes.push(ClassRecord { src_v4, src_v6 });
    }

    /// Appends `other` (built from the classes that follow this one's): its policies, then its
    /// tries on those policies' ids, interned in its order.
    pub fn merge(&mut self, other: SourceTries) {
        let policy: Vec<u32> = other.policies.into_sets().into_iter().map(|list| self.policies.intern(list)).collect();
        let trie: Vec<u32> = other
            .tries
            .into_items()
            .into_iter()
            .map(|t| self.tries.intern(t.into_iter().map(|(c, v)| (c, policy[v as usize])).collect()))
            .collect();
        let classes =
            other.classes.iter().map(|c| ClassRecord { src_v4: trie[c.src_v4 as usize], src_v6: trie[c.src_v6 as usize] });
        self.classes.extend(classes);
    }
}
