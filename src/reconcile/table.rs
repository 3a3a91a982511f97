//! The legacy side of a full run while Auth0's profiles stream past: one allocation per user
//! holding its id, its packed legacy record and its stored baselines, in a hash table split
//! into shards so that the join workers take users out of it concurrently.
//!
//! The join runs while the legacy rows are still arriving: an Auth0 profile whose legacy row
//! has not arrived yet is *parked* (its line is kept aside and its id marked) and joined again
//! once every legacy row is in. Stored baselines are loaded before the legacy read and each
//! user's set joins its record in the same allocation as the row arrives.
//!
//! A user taken out is copied to the worker and its slot becomes a tombstone in place (no
//! allocation, so freed records never fragment the heap): it keeps the id, so that a second
//! Auth0 profile with the same id is caught, and later the user's new baseline set, which is
//! written from here in id order at the end of the run. An Auth0 id without a legacy row leaves
//! a tombstone too. Per user the table keeps about 40 bytes besides the record and the stored
//! baselines themselves.

use std::hash::BuildHasher;
use std::sync::{Mutex, RwLock};

use hashbrown::HashTable;

use crate::baseline::PackedBaselines;
use crate::profile::LegacyView;

/// Enough shards that two or three workers rarely wait on the same lock.
const SHARDS: usize = 64;

/// `[kind][id length: u32][record length: u32][id][record][baselines]`; a tombstone with a new
/// baseline set keeps the set where the record was, and the rest of the allocation is unused.
#[derive(Debug)]
pub struct Entry(Box<[u8]>);

const HEADER: usize = 9;
const KIND_LEGACY: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;
/// A tombstone whose "record" is the user's new baseline set (possibly empty: forget it).
const KIND_NEW_BASELINES: u8 = 2;
/// An Auth0 profile arrived before its legacy row (if any): its line waits aside.
const KIND_PARKED: u8 = 3;

impl Entry {
    fn new(kind: u8, id: &str, record: &[u8], baselines: &[u8]) -> Entry {
        let mut bytes = Vec::with_capacity(HEADER + id.len() + record.len() + baselines.len());
        bytes.push(kind);
        // Ids and records are far below 4 GiB: `insert` refuses anything larger.
        bytes.extend_from_slice(&(id.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(record.len() as u32).to_le_bytes());
        bytes.extend_from_slice(id.as_bytes());
        bytes.extend_from_slice(record);
        bytes.extend_from_slice(baselines);
        Entry(bytes.into_boxed_slice())
    }

    fn lengths(&self) -> (usize, usize) {
        let word = |at: usize| {
            self.0
                .get(at..at + 4)
                .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                .map_or(0, |bytes| u32::from_le_bytes(bytes) as usize)
        };
        (word(1), word(5))
    }

    fn is_tombstone(&self) -> bool {
        self.0.first() != Some(&KIND_LEGACY)
    }

    /// Turns the entry into a tombstone in place.
    fn bury(&mut self) {
        if let Some(kind) = self.0.first_mut() {
            *kind = KIND_TOMBSTONE;
        }
    }

    /// Stores a new baseline set in a tombstone: in place when it fits.
    fn set_new_baselines(&mut self, packed: &[u8]) {
        let (id, _) = self.lengths();
        if HEADER + id + packed.len() <= self.0.len() {
            self.0[0] = KIND_NEW_BASELINES;
            self.0[5..9].copy_from_slice(&(packed.len() as u32).to_le_bytes());
            self.0[HEADER + id..HEADER + id + packed.len()].copy_from_slice(packed);
        } else {
            let mut replaced = Entry::new(KIND_NEW_BASELINES, self.id(), packed, &[]);
            std::mem::swap(self, &mut replaced);
        }
    }

    /// The new baseline set of a tombstone that has one.
    pub fn new_baselines(&self) -> Option<&[u8]> {
        (self.0.first() == Some(&KIND_NEW_BASELINES)).then(|| self.record_bytes())
    }

    pub fn id(&self) -> &str {
        // Only `Entry::new` writes, from a `&str`.
        std::str::from_utf8(self.id_bytes()).unwrap_or_default()
    }

    /// The id's bytes: what lookups hash and compare (no UTF-8 check on the hot path).
    fn id_bytes(&self) -> &[u8] {
        let (id, _) = self.lengths();
        self.0.get(HEADER..HEADER + id).unwrap_or_default()
    }

    /// The id's first eight bytes as a big-endian number: ordering by it orders by id up to
    /// ties, without following the pointer (sorting a million entries stays in cache).
    pub fn sort_prefix(&self) -> u64 {
        let mut prefix = [0u8; 8];
        let id = self.id_bytes();
        let len = id.len().min(8);
        prefix[..len].copy_from_slice(&id[..len]);
        u64::from_be_bytes(prefix)
    }

    fn record_bytes(&self) -> &[u8] {
        let (id, record) = self.lengths();
        self.0
            .get(HEADER + id..HEADER + id + record)
            .unwrap_or_default()
    }

    fn baselines(&self) -> PackedBaselines<'_> {
        let (id, record) = self.lengths();
        PackedBaselines(self.0.get(HEADER + id + record..).unwrap_or_default())
    }
}

/// What [`LegacyTable::take`] found for an id.
pub enum Taken {
    /// The legacy user; its record and stored baselines are in the caller's buffer.
    Legacy,
    /// Taken before, or an Auth0 id seen before without a legacy row.
    AlreadySeen,
    Missing,
    /// Not here yet: the caller keeps the line and joins it again with `rejoin`.
    Parked,
}

/// A copy of a taken user's record and stored baselines.
#[derive(Debug, Default)]
pub struct TakenUser {
    bytes: Vec<u8>,
    record: usize,
}

impl TakenUser {
    pub fn legacy(&self) -> LegacyView<'_> {
        LegacyView::of(self.bytes.get(..self.record).unwrap_or_default())
    }

    pub fn baselines(&self) -> PackedBaselines<'_> {
        PackedBaselines(self.bytes.get(self.record..).unwrap_or_default())
    }
}

/// An id the table cannot hold: longer than 4 GiB.
#[derive(Debug)]
pub struct TooLong;

pub struct LegacyTable {
    shards: Box<[Mutex<HashTable<Entry>>]>,
    hasher: foldhash::fast::RandomState,
    stored: RwLock<Option<StoredSets>>,
}

impl Default for LegacyTable {
    fn default() -> LegacyTable {
        LegacyTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            stored: RwLock::new(None),
        }
    }
}

/// The stored baseline sets while the legacy rows arrive: one contiguous buffer
/// (`[id length: u32][id][set length: u32][set]` per user) and an index of offsets into it, so
/// that a million sets cost one allocation, freed at once.
#[derive(Default)]
struct StoredSets {
    bytes: Vec<u8>,
    index: HashTable<usize>,
}

impl StoredSets {
    fn add(&mut self, hasher: &foldhash::fast::RandomState, id: &str, packed: &[u8]) {
        if id.len() > u32::MAX as usize || packed.len() > u32::MAX as usize {
            return;
        }
        let offset = self.bytes.len();
        self.bytes
            .extend_from_slice(&(id.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(id.as_bytes());
        self.bytes
            .extend_from_slice(&(packed.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(packed);
        let bytes = &self.bytes;
        self.index
            .insert_unique(hasher.hash_one(id.as_bytes()), offset, |&offset| {
                hasher.hash_one(Self::at(bytes, offset).0)
            });
    }

    /// The (id, set) stored at `offset`.
    fn at(bytes: &[u8], offset: usize) -> (&[u8], &[u8]) {
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|word| <[u8; 4]>::try_from(word).ok())
                .map_or(0, |word| u32::from_le_bytes(word) as usize)
        };
        let id_len = word(offset);
        let id = bytes
            .get(offset + 4..offset + 4 + id_len)
            .unwrap_or_default();
        let set_at = offset + 4 + id_len;
        let set_len = word(set_at);
        let set = bytes
            .get(set_at + 4..set_at + 4 + set_len)
            .unwrap_or_default();
        (id, set)
    }

    fn get(&self, hash: u64, id: &[u8]) -> Option<&[u8]> {
        self.index
            .find(hash, |&offset| Self::at(&self.bytes, offset).0 == id)
            .map(|&offset| Self::at(&self.bytes, offset).1)
    }
}

/// What [`LegacyTable::insert`] did with a row.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    New,
    Duplicate,
}

impl LegacyTable {
    /// A table sized for about `rows` legacy rows (an estimate: it grows past it).
    pub fn with_capacity(rows: u64) -> LegacyTable {
        let table = LegacyTable::default();
        // Capped, so that a wild estimate cannot reserve gigabytes up front.
        let per_shard = (rows.min(100_000_000) as usize / SHARDS) * 21 / 20 + 16;
        for shard in &table.shards {
            shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .reserve(per_shard, |entry| table.hash(entry.id_bytes()));
        }
        table
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, HashTable<Entry>> {
        // hashbrown places entries by the low bits and tags them with the top seven: the
        // shard takes bits from the middle so that neither loses its spread.
        let index = (hash >> 40) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a legacy row, with its stored baselines if [`LegacyTable::load_stored`] gave
    /// any; a second row with the same id is refused.
    pub fn insert(&self, id: &str, record: &[u8]) -> Result<Inserted, TooLong> {
        if id.len() > u32::MAX as usize || record.len() > u32::MAX as usize {
            return Err(TooLong);
        }
        let hash = self.hash(id.as_bytes());
        let stored = self
            .stored
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let baselines = stored
            .as_ref()
            .and_then(|stored| stored.get(hash, id.as_bytes()))
            .unwrap_or_default();
        let mut shard = self.shard(hash);
        let hasher = |entry: &Entry| self.hash(entry.id_bytes());
        match shard.entry(hash, |entry| entry.id_bytes() == id.as_bytes(), hasher) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                if slot.get().0.first() != Some(&KIND_PARKED) {
                    return Ok(Inserted::Duplicate);
                }
                // The parked line finds the row when it is joined again.
                *slot.get_mut() = Entry::new(KIND_LEGACY, id, record, baselines);
                Ok(Inserted::New)
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(Entry::new(KIND_LEGACY, id, record, baselines));
                Ok(Inserted::New)
            }
        }
    }

    /// Keeps the stored baseline sets at hand for [`LegacyTable::insert`].
    pub fn load_stored(&self, each: impl FnOnce(&mut dyn FnMut(&str, &[u8]))) {
        let mut stored = StoredSets::default();
        each(&mut |id, packed| stored.add(&self.hasher, id, packed));
        *self
            .stored
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stored);
    }

    /// Frees the stored sets once every legacy row is in.
    pub fn forget_stored(&self) {
        *self
            .stored
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// Takes the legacy user `id` out (into `buffer`, reused from user to user), leaving a
    /// tombstone. An unknown id is parked while `legacy_done` is false (its line is joined
    /// again later, with `rejoin`), and leaves a tombstone otherwise.
    pub fn take(&self, id: &str, buffer: &mut TakenUser, legacy_done: bool, rejoin: bool) -> Taken {
        let hash = self.hash(id.as_bytes());
        let mut shard = self.shard(hash);
        let hasher = |entry: &Entry| self.hash(entry.id_bytes());
        match shard.entry(hash, |entry| entry.id_bytes() == id.as_bytes(), hasher) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if rejoin && entry.0.first() == Some(&KIND_PARKED) {
                    entry.bury();
                    return Taken::Missing;
                }
                if entry.is_tombstone() {
                    return Taken::AlreadySeen;
                }
                buffer.bytes.clear();
                buffer.bytes.extend_from_slice(entry.record_bytes());
                buffer.record = buffer.bytes.len();
                buffer.bytes.extend_from_slice(entry.baselines().0);
                entry.bury();
                Taken::Legacy
            }
            hashbrown::hash_table::Entry::Vacant(slot) if !legacy_done => {
                slot.insert(Entry::new(KIND_PARKED, id, &[], &[]));
                Taken::Parked
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(Entry::new(KIND_TOMBSTONE, id, &[], &[]));
                Taken::Missing
            }
        }
    }

    /// Records the new baseline set of a user taken out before.
    pub fn set_new_baselines(&self, id: &str, packed: &[u8]) {
        let hash = self.hash(id.as_bytes());
        let mut shard = self.shard(hash);
        if let Some(entry) = shard.find_mut(hash, |entry| entry.id_bytes() == id.as_bytes()) {
            entry.set_new_baselines(packed);
        }
    }

    /// Empties the table: the entries with a new baseline set, and the others (for the caller
    /// to free when it suits it).
    pub fn into_new_baselines(self) -> (Vec<Entry>, Vec<Entry>) {
        let (mut kept, mut rest) = (Vec::new(), Vec::new());
        for shard in self.shards {
            let shard = shard
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for entry in shard {
                if entry.new_baselines().is_some() {
                    kept.push(entry);
                } else {
                    rest.push(entry);
                }
            }
        }
        (kept, rest)
    }

    /// The legacy users never taken.
    pub fn remaining(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                shard.iter().filter(|entry| !entry.is_tombstone()).count() as u64
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::pack;
    use crate::profile::{Field, LegacyRecordBuilder};

    fn record(email: &str) -> Vec<u8> {
        let mut builder = LegacyRecordBuilder::default();
        builder.text(Field::Email, email);
        builder.finish().as_bytes().to_vec()
    }

    #[test]
    fn users_are_taken_once_with_their_record_and_baselines() {
        let table = LegacyTable::default();
        let packed = pack(&[("email".to_owned(), 5)]);
        table.load_stored(|each| {
            each("1", &packed);
            each("9", &packed);
        });
        assert_eq!(table.insert("1", &record("a@x.io")).unwrap(), Inserted::New);
        assert_eq!(table.insert("2", &record("b@x.io")).unwrap(), Inserted::New);
        assert_eq!(
            table.insert("1", &record("c@x.io")).unwrap(),
            Inserted::Duplicate
        );
        table.forget_stored();
        let mut user = TakenUser::default();
        let mut take = |id| table.take(id, &mut user, true, false);
        assert!(matches!(take("1"), Taken::Legacy));
        assert!(matches!(take("1"), Taken::AlreadySeen));
        assert!(matches!(take("9"), Taken::Missing));
        assert!(matches!(take("9"), Taken::AlreadySeen));
        assert_eq!(user.legacy().profile.text(Field::Email), Some("a@x.io"));
        assert_eq!(user.baselines().find("email"), Some(5));
        assert_eq!(table.remaining(), 1);
        assert!(matches!(
            table.take("2", &mut user, true, false),
            Taken::Legacy
        ));
        assert!(user.baselines().is_empty());
        assert_eq!(table.remaining(), 0);
        // A profile that comes before its row is parked; joined again it finds the row, or
        // is missing for good.
        assert!(matches!(
            table.take("5", &mut user, false, false),
            Taken::Parked
        ));
        assert!(matches!(
            table.take("5", &mut user, false, false),
            Taken::AlreadySeen
        ));
        assert!(matches!(
            table.take("6", &mut user, false, false),
            Taken::Parked
        ));
        assert_eq!(table.insert("5", &record("e@x.io")).unwrap(), Inserted::New);
        assert!(matches!(
            table.take("5", &mut user, true, true),
            Taken::Legacy
        ));
        assert_eq!(user.legacy().profile.text(Field::Email), Some("e@x.io"));
        assert!(matches!(
            table.take("6", &mut user, true, true),
            Taken::Missing
        ));
        // New sets: one that fits in place, one that needs a larger allocation.
        table.set_new_baselines("1", &pack(&[("name".to_owned(), 1)]));
        let long = pack(&[("user_metadata.".to_owned() + &"k".repeat(200), 2)]);
        table.set_new_baselines("2", &long);
        let mut sets: Vec<(String, Vec<u8>)> = table
            .into_new_baselines()
            .0
            .iter()
            .map(|entry| {
                (
                    entry.id().to_owned(),
                    entry.new_baselines().unwrap().to_vec(),
                )
            })
            .collect();
        sets.sort();
        assert_eq!(
            sets,
            vec![
                ("1".to_owned(), pack(&[("name".to_owned(), 1)]).to_vec()),
                ("2".to_owned(), long.to_vec()),
            ]
        );
    }
}
