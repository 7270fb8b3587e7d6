//! The compiler's interner: values stored once, each with the id of its first insertion.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

/// The compiler's hash: its keys are its own integers and vectors, not input an attacker picks,
/// so a fast unkeyed hash will do (SipHash took a tenth of a 1,000,000-flow compile).
pub type FastHash = foldhash::fast::FixedState;

/// Values by id (0, 1, ... in insertion order), each stored once. The table holds only ids: a
/// value is not cloned to be its own key.
pub struct Interner<T> {
    items: Vec<T>,
    ids: HashTable<u32>,
    hash: FastHash,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self { items: Vec::new(), ids: HashTable::new(), hash: FastHash::default() }
    }
}

impl<T: Hash + Eq> Interner<T> {
    /// The id of `item`, a new one (the next) when it was not there.
    pub fn intern(&mut self, item: T) -> u32 {
        let hash = self.hash.hash_one(&item);
        if let Some(&id) = self.ids.find(hash, |&id| self.items[id as usize] == item) {
            return id;
        }
        let id = u32::try_from(self.items.len()).expect("fewer than 2^32 values (compile limits)");
        self.items.push(item);
        let (items, h) = (&self.items, &self.hash);
        self.ids.insert_unique(hash, id, |&i| h.hash_one(&items[i as usize]));
        id
    }

    pub fn items(&self) -> &[T] {
        &self.items
    }

    pub fn into_items(self) -> Vec<T> {
        self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}
