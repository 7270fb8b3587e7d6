//! Building an interning table (ids handed out in first-seen order) over a list of items on
//! every core, with the ids one pass in item order would give.
//!
//! The items are cut into contiguous parts, each built on its own from empty, then merged in
//! order. A part's entries are in its own first-seen order; merging interns them in that order
//! into what the parts before it built, so an entry gets its id where it is first seen over all
//! the items: the result does not depend on the number of threads, and the policy hash of a
//! site does not change with the machine compiling it.

use rayon::prelude::*;

/// Items per part at least: below it a part costs more to merge than it saves.
const MIN_PART: usize = 256;

/// Parts per thread, so that a thread that drew cheap items takes another part.
const PARTS_PER_THREAD: usize = 2;

/// `add`s every item, in order, to a `T`; `merge(a, b)` appends `b` (built from the items after
/// `a`'s) to `a`.
pub fn build<I: Sync, T: Default + Send>(items: &[I], add: impl Fn(&mut T, &I) + Sync, merge: impl Fn(&mut T, T)) -> T {
    let parts = (rayon::current_num_threads() * PARTS_PER_THREAD).min(items.len() / MIN_PART).max(1);
    build_in(parts, items, add, merge)
}

/// [`build`] in `parts` parts.
pub fn build_in<I: Sync, T: Default + Send>(
    parts: usize,
    items: &[I],
    add: impl Fn(&mut T, &I) + Sync,
    merge: impl Fn(&mut T, T),
) -> T {
    let part = |chunk: &[I]| {
        let mut t = T::default();
        chunk.iter().for_each(|i| add(&mut t, i));
        t
    };
    if parts <= 1 || items.is_empty() {
        return part(items);
    }
    let built: Vec<T> = items.par_chunks(items.len().div_ceil(parts)).map(part).collect();
    let mut built = built.into_iter();
    let mut all = built.next().unwrap_or_default();
    built.for_each(|t| merge(&mut all, t));
    all
}
