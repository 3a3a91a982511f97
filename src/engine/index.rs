//! The legacy table's index: open addressing with linear probing over one `u64` per slot,
//! which holds an entry's reference and a tag from its hash.
//!
//! Why not a general hash table: a lookup in a large table is a chain of cache misses, and
//! here it is one slot and the entry (a table with separate control bytes adds one), and a
//! slot's address follows from the hash alone, so the join asks for it ([`SlotsView`]) a line
//! before it needs it, without taking the shard's lock. At ten million users the lookups were a quarter of the CPU time.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Bits of a slot that hold the entry reference (plus one, so that zero means empty).
const REF_BITS: u32 = 40;
const REF_MASK: u64 = (1 << REF_BITS) - 1;
/// The largest reference a slot holds.
pub const MAX_REF: u64 = REF_MASK - 1;

#[derive(Default)]
pub struct Index {
    /// A power of two long (or empty); 0 is an empty slot.
    slots: Vec<u64>,
    len: usize,
}

fn tag(hash: u64) -> u64 {
    hash >> REF_BITS
}

impl Index {
    /// Room for `entries` without growing.
    pub fn reserve(&mut self, entries: usize, rehash: impl Fn(u64) -> u64) {
        let needed = (entries + self.len).saturating_mul(4) / 3 + 1;
        if needed > self.slots.len() {
            self.grow_to(needed.next_power_of_two().max(16), rehash);
        }
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// Where the slots are now, for a [`SlotsView`].
    pub fn publish(&self, view: &SlotsView) {
        view.slots
            .store(self.slots.as_ptr().cast_mut(), Ordering::Relaxed);
        view.mask.store(self.mask(), Ordering::Relaxed);
    }

    /// The position of the entry `is_it` accepts among those with `hash`.
    pub fn find(&self, hash: u64, is_it: impl Fn(u64) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut position = hash as usize & mask;
        loop {
            let slot = self.slots[position];
            if slot == 0 {
                return None;
            }
            if slot >> REF_BITS == tag(hash) && is_it((slot & REF_MASK) - 1) {
                return Some(position);
            }
            position = (position + 1) & mask;
        }
    }

    /// The reference at a position [`Index::find`] gave.
    pub fn get(&self, position: usize) -> u64 {
        (self.slots[position] & REF_MASK) - 1
    }

    /// Points the slot at a position [`Index::find`] gave elsewhere (the same id).
    pub fn set(&mut self, position: usize, at: u64) {
        debug_assert!(at <= MAX_REF);
        let slot = &mut self.slots[position];
        *slot = (*slot & !REF_MASK) | (at + 1);
    }

    /// Adds an entry that is not in the index yet. `rehash` gives the hash of an entry already
    /// in, for when the index grows. Returns whether it grew (its slots moved).
    pub fn insert_new(&mut self, hash: u64, at: u64, rehash: impl Fn(u64) -> u64) -> bool {
        debug_assert!(at <= MAX_REF);
        let grows = (self.len + 1) * 4 > self.slots.len() * 3;
        if grows {
            self.grow_to((self.slots.len() * 2).max(16), rehash);
        }
        self.place(hash, at);
        self.len += 1;
        grows
    }

    fn place(&mut self, hash: u64, at: u64) {
        let mask = self.mask();
        let mut position = hash as usize & mask;
        while self.slots[position] != 0 {
            position = (position + 1) & mask;
        }
        self.slots[position] = (tag(hash) << REF_BITS) | (at + 1);
    }

    fn grow_to(&mut self, slots: usize, rehash: impl Fn(u64) -> u64) {
        let old = std::mem::replace(&mut self.slots, vec![0; slots]);
        for slot in old.into_iter().filter(|&slot| slot != 0) {
            let at = (slot & REF_MASK) - 1;
            self.place(rehash(at), at);
        }
    }
}

/// Where an index's slots were last seen, readable without its shard's lock: enough to ask
/// for a slot's cache line, never to read it (the slots may have moved since).
#[derive(Default)]
pub struct SlotsView {
    slots: AtomicPtr<u64>,
    mask: AtomicUsize,
}

impl SlotsView {
    /// Asks the CPU to fetch the slot where a lookup of `hash` starts, without waiting for it.
    pub fn prefetch(&self, hash: u64) {
        let slots = self.slots.load(Ordering::Relaxed);
        if !slots.is_null() {
            let mask = self.mask.load(Ordering::Relaxed);
            prefetch(slots.wrapping_add(hash as usize & mask).cast_const());
        }
    }
}

/// A hint to the CPU: fetch the cache line at this address.
fn prefetch(address: *const u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only moves a cache line nearer the core: it reads nothing into the
    // program and cannot fault, whatever the address (a stale one included). SSE, which it
    // belongs to, is part of every x86_64 CPU.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries are numbers; their "hash" collides on purpose (only eight distinct values), so
    /// that probing, tags and growth are all exercised.
    fn hash(at: u64) -> u64 {
        (at % 8).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn entries_are_found_grown_and_repointed() {
        let mut index = Index::default();
        for at in 0..1000 {
            assert_eq!(index.find(hash(at), |other| other == at), None);
            index.insert_new(hash(at), at, hash);
        }
        assert!(index.slots.len().is_power_of_two());
        for at in 0..1000 {
            let position = index.find(hash(at), |other| other == at).unwrap();
            assert_eq!(index.get(position), at);
        }
        // Repointing keeps the tag: the entry is found under its hash at its new place.
        let position = index.find(hash(5), |other| other == 5).unwrap();
        index.set(position, 5045);
        assert_eq!(index.find(hash(5), |other| other == 5), None);
        let moved = index.find(hash(5), |other| other == 5045).unwrap();
        assert_eq!(index.get(moved), 5045);
        let view = SlotsView::default();
        view.prefetch(hash(3));
        index.publish(&view);
        view.prefetch(hash(3));
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = Index::default();
        assert_eq!(index.find(1, |_| true), None);
    }
}
