//! The baseline sets a pass writes: the changed sets its threads collected, the sets of pushed
//! users (after the push phase added the applied keys) and the new sets kept in the legacy
//! table — merged in id order and written in one transaction, their memory handed back on a
//! thread of its own.

use crate::codec;
use crate::model::plan::Push;
use crate::state::{StateError, StateStore};

use super::table::NewBaselines;

/// The new packed baseline sets of a pass: those its threads collected, each with its legacy
/// user id in one allocation (a [`codec::put_framed`] id, then the set; an empty set forgets
/// the user), and those kept in the legacy table.
#[derive(Default)]
pub struct BaselineWrites {
    collected: Vec<Box<[u8]>>,
    table: NewBaselines,
}

impl BaselineWrites {
    pub(super) fn push(&mut self, legacy_id: &str, packed: &[u8]) {
        let mut bytes = Vec::with_capacity(codec::FRAME_BYTES + legacy_id.len() + packed.len());
        codec::put_framed(&mut bytes, legacy_id.as_bytes());
        bytes.extend_from_slice(packed);
        self.collected.push(bytes.into_boxed_slice());
    }

    pub(super) fn append(&mut self, other: &mut BaselineWrites) {
        self.collected.append(&mut other.collected);
    }

    pub(super) fn add_table_sets(&mut self, sets: NewBaselines) {
        self.table = sets;
    }

    /// Puts the table's sets in id order (the larger part of a full run's writes), so that
    /// [`BaselineWrites::write`] does not have to.
    pub(super) fn sort_table_sets(&mut self) {
        self.table.sort();
    }

    /// Writes every new set, with those of `pushes` (after the push phase recorded what it
    /// applied), merged in id order: SQLite then appends to its B-tree instead of splitting
    /// pages all over it. Their memory (gigabytes at ten million users, and millions of small
    /// allocations) is handed back on a thread of its own: neither the end of the run nor a
    /// one-shot command's exit waits for it.
    pub fn write(mut self, store: &mut StateStore, pushes: Vec<Push>) -> Result<usize, StateError> {
        for push in &pushes {
            if let Some(set) = &push.baselines {
                self.push(&push.legacy_id, set);
            }
        }
        self.collected
            .sort_unstable_by(|a, b| split(a).0.cmp(split(b).0));
        let collected = self.collected.iter().map(|bytes| split(bytes));
        let written = store.write_baselines(merge_sorted(collected, self.table.sorted()));
        let leftovers = (self, pushes);
        if let Err(error) = std::thread::Builder::new()
            .name("free-table".into())
            .spawn(move || drop(leftovers))
        {
            tracing::debug!(%error, "freeing the table on this thread");
        }
        written
    }
}

/// A collected set's legacy id and packed set.
fn split(bytes: &[u8]) -> (&str, &[u8]) {
    // Only `push` writes, from a `&str`.
    let (id, set) = codec::take_framed(bytes).unwrap_or_default();
    (std::str::from_utf8(id).unwrap_or_default(), set)
}

/// Merges two iterators sorted by id (the two never hold the same user).
fn merge_sorted<'a>(
    a: impl Iterator<Item = (&'a str, &'a [u8])>,
    b: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> impl Iterator<Item = (&'a str, &'a [u8])> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y.0 < x.0 => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}
