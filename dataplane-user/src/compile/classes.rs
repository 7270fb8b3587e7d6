//! Address classes: for every prefix of a set of roles' CIDRs, the set of roles that contain it.
//!
//! The class of a prefix P is the set of roles having a CIDR that contains P (not only the roles
//! listing P itself), so a longest-prefix match on an address yields every role containing it:
//! a broader role is never hidden by a more specific one.

use crate::compile::intern::Interner;

use crate::policy::Cidr;

/// Interned sets (sorted lists of role indices or flow slots); id 0 is the empty set.
pub struct Sets(Interner<Vec<u32>>);

impl Default for Sets {
    fn default() -> Self {
        let mut sets = Interner::default();
        sets.intern(Vec::new());
        Sets(sets)
    }
}

impl Sets {
    pub fn intern(&mut self, set: Vec<u32>) -> u32 {
        self.0.intern(set)
    }

    /// The sets by id.
    pub fn sets(&self) -> &[Vec<u32>] {
        self.0.items()
    }

    pub fn into_sets(self) -> Vec<Vec<u32>> {
        self.0.into_items()
    }
}

/// A prefix with its role set and the nearest enclosing prefix of the list.
#[derive(Clone, Copy, Debug)]
pub struct Labeled {
    pub cidr: Cidr,
    pub set: u32,
    pub parent: Option<usize>,
}

/// Labels every distinct prefix of `entries` (prefix, role) with the set of roles containing it.
/// The result is in (family, address, length) order: enclosing prefixes come first.
pub fn label(mut entries: Vec<(Cidr, u32)>, sets: &mut Sets) -> Vec<Labeled> {
    entries.sort_unstable();
    entries.dedup();
    let mut out: Vec<Labeled> = Vec::new();
    // Indices into `out` of the prefixes enclosing the current one, innermost last.
    let mut stack: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let cidr = entries[i].0;
        let mut own = Vec::new();
        while i < entries.len() && entries[i].0 == cidr {
            own.push(entries[i].1);
            i += 1;
        }
        while let Some(&top) = stack.last() {
            if out[top].cidr.contains(&cidr) {
                break;
            }
            stack.pop();
        }
        let parent = stack.last().copied();
        let set = match parent {
            Some(p) => union(&sets.sets()[out[p].set as usize], &own),
            None => own,
        };
        let set = sets.intern(set);
        stack.push(out.len());
        out.push(Labeled { cidr, set, parent });
    }
    out
}

/// Sorted union of a sorted set and a sorted list.
fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn overlapping_roles() {
        let mut sets = Sets::default();
        let l = label(
            vec![(c("10.0.0.0/8"), 1), (c("10.1.2.3/32"), 2), (c("10.1.0.0/16"), 3), (c("11.0.0.0/8"), 2), (c("10.0.0.0/8"), 4)],
            &mut sets,
        );
        let got: Vec<(String, Vec<u32>)> = l.iter().map(|x| (x.cidr.to_string(), sets.sets()[x.set as usize].clone())).collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.0/8".into(), vec![1, 4]),
                ("10.1.0.0/16".into(), vec![1, 3, 4]),
                ("10.1.2.3/32".into(), vec![1, 2, 3, 4]),
                ("11.0.0.0/8".into(), vec![2]),
            ]
        );
    }
}
