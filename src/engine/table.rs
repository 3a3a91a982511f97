//! The legacy side of a full run while Auth0's profiles stream past: each user's id and
//! packed legacy record in an arena, found through an index of references (see [`super::index`]),
//! split into shards so that the join workers take users out of it concurrently.
//!
//! The join runs while the legacy rows are still arriving: an Auth0 profile whose legacy row
//! has not arrived yet is *parked* (its line is kept aside and its id marked) and joined again
//! once every legacy row is in. Stored baselines are loaded before the legacy read into one
//! buffer that stays until the end of the join; each user's entry points at its set there
//! instead of holding a copy (a tenth of the memory of a large second run).
//!
//! Entries live in large arena blocks, never one allocation per user: a million users cost a
//! few hundred allocations, and freeing them at the end is as cheap. A user taken out is copied
//! to the worker and its entry becomes a tombstone in place: it keeps the id, so that a second
//! Auth0 profile with the same id is caught, and later the user's new baseline set, which is
//! written from here in id order at the end of the run. An Auth0 id without a legacy row
//! leaves a tombstone too. Per user the table keeps about 30 bytes besides the id and the
//! record.

use std::hash::BuildHasher;
use std::sync::{Mutex, RwLock};

use hashbrown::HashTable;

use super::index::{self, Index, SlotsView};
use crate::codec;
use crate::model::baseline::PackedBaselines;
use crate::model::profile::LegacyView;

/// Enough shards that two or three workers rarely wait on the same lock.
const SHARDS: usize = 64;

/// Arena blocks are allocated at this size (larger for an entry that needs it); the part of a
/// block not written yet is never touched, so it costs address space, not memory.
const BLOCK_BYTES: usize = 1 << 20;

/// Entry layout: `[kind][id length: u32][record length: u32][stored set: u64][id][record]`,
/// where the stored set is an offset into [`StoredSets`] (or [`NO_STORED_SET`]). A tombstone
/// with a new baseline set keeps the set where the record was, and its length in place of the
/// stored set's offset (no longer needed once the user is taken): the record length stays, so
/// that an arena block can be walked entry by entry.
const HEADER: usize = 17;
const NO_STORED_SET: u64 = u64::MAX;
const KIND_LEGACY: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;
/// A tombstone whose "record" is the user's new baseline set (possibly empty: forget it).
const KIND_NEW_BASELINES: u8 = 2;
/// An Auth0 profile arrived before its legacy row (if any): its line waits aside.
const KIND_PARKED: u8 = 3;

/// Where an entry is: the block index above the low 20 bits, the offset in the block in them
/// (blocks are 1 MiB; a larger one holds a single entry, at offset 0). 40 bits in all, what an
/// index slot holds: a shard's arena is limited to a terabyte.
type EntryRef = u64;
const OFFSET_BITS: u32 = 20;

fn split_ref(at: EntryRef) -> (usize, usize) {
    (
        (at >> OFFSET_BITS) as usize,
        (at & ((1 << OFFSET_BITS) - 1)) as usize,
    )
}

/// Append-only storage of one shard's entries.
#[derive(Default)]
struct Arena {
    blocks: Vec<Vec<u8>>,
}

impl Arena {
    fn push(&mut self, kind: u8, id: &[u8], record: &[u8], stored: u64) -> EntryRef {
        let len = HEADER + id.len() + record.len();
        let fits = self
            .blocks
            .last()
            .is_some_and(|block| block.capacity() - block.len() >= len);
        if !fits {
            self.blocks.push(Vec::with_capacity(len.max(BLOCK_BYTES)));
        }
        let index = self.blocks.len() - 1;
        let block = &mut self.blocks[index];
        let offset = block.len();
        block.push(kind);
        // `LegacyTable::insert` refuses ids and records of 4 GiB or more.
        block.extend_from_slice(&(id.len() as u32).to_le_bytes());
        block.extend_from_slice(&(record.len() as u32).to_le_bytes());
        block.extend_from_slice(&stored.to_le_bytes());
        block.extend_from_slice(id);
        block.extend_from_slice(record);
        let at = ((index as u64) << OFFSET_BITS) | offset as u64;
        debug_assert!(at <= index::MAX_REF && offset < BLOCK_BYTES);
        at
    }

    fn bytes(&self, at: EntryRef) -> &[u8] {
        let (block, offset) = split_ref(at);
        self.blocks
            .get(block)
            .and_then(|block| block.get(offset..))
            .unwrap_or_default()
    }

    fn entry(&self, at: EntryRef) -> EntryView<'_> {
        EntryView(self.bytes(at))
    }

    fn entry_mut(&mut self, at: EntryRef) -> &mut [u8] {
        let (block, offset) = split_ref(at);
        self.blocks
            .get_mut(block)
            .and_then(|block| block.get_mut(offset..))
            .unwrap_or_default()
    }
}

/// Where the index holds `id`.
fn find(index: &Index, arena: &Arena, hash: u64, id: &[u8]) -> Option<usize> {
    index.find(hash, |at| arena.entry(at).id_bytes() == id)
}

fn word<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes
        .get(at..at + N)
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
}

/// An entry read in place (the arena's bytes from its start on).
#[derive(Clone, Copy)]
struct EntryView<'a>(&'a [u8]);

impl<'a> EntryView<'a> {
    fn kind(self) -> u8 {
        self.0.first().copied().unwrap_or(KIND_TOMBSTONE)
    }

    fn lengths(self) -> (usize, usize) {
        let length =
            |at| word::<4>(self.0, at).map_or(0, |bytes| u32::from_le_bytes(bytes) as usize);
        (length(1), length(5))
    }

    fn stored(self) -> u64 {
        word::<8>(self.0, 9).map_or(NO_STORED_SET, u64::from_le_bytes)
    }

    fn is_tombstone(self) -> bool {
        self.kind() != KIND_LEGACY
    }

    /// The id's bytes: what lookups hash and compare (no UTF-8 check on the hot path).
    fn id_bytes(self) -> &'a [u8] {
        let (id, _) = self.lengths();
        self.0.get(HEADER..HEADER + id).unwrap_or_default()
    }

    fn id(self) -> &'a str {
        // Only `Arena::push` writes, from a `&str`.
        std::str::from_utf8(self.id_bytes()).unwrap_or_default()
    }

    fn record_bytes(self) -> &'a [u8] {
        let (id, record) = self.lengths();
        self.0
            .get(HEADER + id..HEADER + id + record)
            .unwrap_or_default()
    }

    /// The new baseline set of a taken user: where the record was, as long as the stored
    /// field says.
    fn new_baselines(self) -> Option<&'a [u8]> {
        if self.kind() != KIND_NEW_BASELINES {
            return None;
        }
        let (id, _) = self.lengths();
        let len = usize::try_from(self.stored()).unwrap_or(0);
        Some(
            self.0
                .get(HEADER + id..HEADER + id + len)
                .unwrap_or_default(),
        )
    }

    /// Bytes the entry takes in its block.
    fn footprint(self) -> usize {
        let (id, record) = self.lengths();
        HEADER + id + record
    }

    /// The id's first eight bytes as a big-endian number: ordering by it orders by id up to
    /// ties, without following the reference (sorting a million entries stays in cache).
    fn sort_prefix(self) -> u64 {
        let mut prefix = [0u8; 8];
        let id = self.id_bytes();
        let len = id.len().min(8);
        prefix[..len].copy_from_slice(&id[..len]);
        u64::from_be_bytes(prefix)
    }
}

/// Turns an entry into a tombstone in place.
fn bury(entry: &mut [u8]) {
    if let Some(kind) = entry.first_mut() {
        *kind = KIND_TOMBSTONE;
    }
}

/// When a profile asks for its legacy user, which decides what an id the table does not hold
/// becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Legacy rows still arrive: an unknown id is parked, and its line joined again later.
    RowsArriving,
    /// Every row is in: an unknown id has none.
    RowsIn,
    /// A parked line joined again once every row is in: still parked means it has no row.
    Rejoin,
}

/// What [`LegacyTable::take`] found for an id.
pub enum Taken {
    /// The legacy user; its record and stored baselines are in the caller's buffer.
    Legacy,
    /// Taken before, or an Auth0 id seen before without a legacy row.
    AlreadySeen,
    /// No legacy row: the id stays in the table as a tombstone, found again with
    /// [`LegacyTable::ids_of`].
    Missing(MissingRef),
    /// Not here yet: the caller keeps the line and joins it again at [`Moment::Rejoin`].
    Parked,
}

/// A copy of a taken user's record and stored baselines, and where its entry is (for its new
/// baseline set).
#[derive(Debug, Default)]
pub struct TakenUser {
    bytes: Vec<u8>,
    record: usize,
    shard: usize,
    at: EntryRef,
}

impl TakenUser {
    pub fn legacy(&self) -> LegacyView<'_> {
        LegacyView::of(self.bytes.get(..self.record).unwrap_or_default())
    }

    pub fn baselines(&self) -> PackedBaselines<'_> {
        PackedBaselines(self.bytes.get(self.record..).unwrap_or_default())
    }
}

/// An id or record the table cannot hold: 4 GiB or longer.
#[derive(Debug)]
pub struct TooLong;

/// One shard: references into its own arena.
#[derive(Default)]
struct Shard {
    index: Index,
    arena: Arena,
    /// Legacy users not taken yet: counted as they go, since finding them afterwards would
    /// visit every entry in random order (ten million cache misses at ten million users).
    untaken: u64,
    /// Those of them with a stored set (an earlier run matched them): only these need a look
    /// at the end, and only shards that have any are walked.
    untaken_with_set: u64,
}

pub struct LegacyTable {
    shards: Box<[Mutex<Shard>]>,
    /// Where each shard's index slots are, for [`LegacyTable::prefetch`].
    views: Box<[SlotsView]>,
    hasher: foldhash::fast::RandomState,
    stored: StoredSets,
}

impl Default for LegacyTable {
    fn default() -> LegacyTable {
        LegacyTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            views: (0..SHARDS).map(|_| SlotsView::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            stored: StoredSets::default(),
        }
    }
}

/// The stored baseline sets: one contiguous buffer (`[id length: u32][id][set length:
/// u32][set]` per user) that entries point into, and, while the legacy rows arrive, an index
/// by id of offsets into it.
#[derive(Default)]
struct StoredSets {
    bytes: Vec<u8>,
    index: RwLock<Option<HashTable<usize>>>,
}

impl StoredSets {
    /// The (id, set) stored at `offset`.
    fn at(bytes: &[u8], offset: usize) -> (&[u8], &[u8]) {
        // Only `load_stored` writes them, whole.
        let framed = bytes.get(offset..).unwrap_or_default();
        let (id, rest) = codec::take_framed(framed).unwrap_or_default();
        let (set, _) = codec::take_framed(rest).unwrap_or_default();
        (id, set)
    }

    /// The offset of `id`'s set, if it has one.
    fn find(&self, hash: u64, id: &[u8]) -> u64 {
        let index = self
            .index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        index
            .as_ref()
            .and_then(|index| index.find(hash, |&offset| Self::at(&self.bytes, offset).0 == id))
            .map_or(NO_STORED_SET, |&offset| offset as u64)
    }

    /// Calls `each` with the position in `ids` and the stored set of every id that has one.
    /// `ids` and the stored sets are both in id order (bytes, as SQLite orders text), so one
    /// pass over the sets finds them all without an index.
    fn each_of_sorted(&self, ids: &[&str], mut each: impl FnMut(usize, &[u8])) {
        let (mut next, mut offset) = (0, 0);
        while offset < self.bytes.len() && next < ids.len() {
            let (id, set) = Self::at(&self.bytes, offset);
            offset += 8 + id.len() + set.len();
            while next < ids.len() && ids[next].as_bytes() < id {
                next += 1;
            }
            while next < ids.len() && ids[next].as_bytes() == id {
                each(next, set);
                next += 1;
            }
        }
    }

    fn set(&self, offset: u64) -> &[u8] {
        if offset == NO_STORED_SET {
            return &[];
        }
        Self::at(&self.bytes, offset as usize).1
    }
}

/// A legacy row the table refused, for the error message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub row: u64,
    pub user_id: String,
    /// A second row with this id (otherwise: an id or record of 4 GiB or more).
    pub duplicate: bool,
}

/// Inserts legacy rows one behind their arrival: a row's index slot is asked for when it
/// arrives, and the row goes in with the next one, by which time the slot is in the cache.
pub struct InsertBehind<'t> {
    table: &'t LegacyTable,
    /// The held row's number, if one is held.
    held: Option<u64>,
    id: String,
    record: Vec<u8>,
}

impl<'t> InsertBehind<'t> {
    pub fn new(table: &'t LegacyTable) -> InsertBehind<'t> {
        InsertBehind {
            table,
            held: None,
            id: String::new(),
            record: Vec::new(),
        }
    }

    /// Holds this row and inserts the one held before it; true when that one was inserted.
    pub fn push(&mut self, row: u64, id: &str, record: &[u8]) -> Result<bool, Refused> {
        self.table.prefetch(id);
        let inserted = self.finish()?;
        self.held = Some(row);
        self.id.clear();
        self.id.push_str(id);
        self.record.clear();
        self.record.extend_from_slice(record);
        Ok(inserted)
    }

    /// Inserts the row held, if any; true when one was inserted.
    pub fn finish(&mut self) -> Result<bool, Refused> {
        let Some(row) = self.held.take() else {
            return Ok(false);
        };
        match self.table.insert(&self.id, &self.record) {
            Ok(Inserted::New) => Ok(true),
            Ok(Inserted::Duplicate) => Err(Refused {
                row,
                user_id: self.id.clone(),
                duplicate: true,
            }),
            Err(TooLong) => Err(Refused {
                row,
                user_id: self.id.chars().take(64).collect(),
                duplicate: false,
            }),
        }
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
        for (shard, view) in table.shards.iter().zip(&table.views) {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let Shard { index, arena, .. } = &mut *shard;
            index.reserve(per_shard, |at| table.hash(arena.entry(at).id_bytes()));
            index.publish(view);
        }
        table
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.lock(Self::shard_of(hash))
    }

    /// Tells [`LegacyTable::prefetch`] where the index of `hash`'s shard moved.
    fn publish(&self, index: &Index, hash: u64) {
        if let Some(view) = self.views.get(Self::shard_of(hash)) {
            index.publish(view);
        }
    }

    fn shard_of(hash: u64) -> usize {
        // hashbrown places entries by the low bits and tags them with the top seven: the
        // shard takes bits from the middle so that neither loses its spread.
        (hash >> 40) as usize % SHARDS
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a legacy row, pointing at its stored baselines if [`LegacyTable::load_stored`]
    /// gave any; a second row with the same id is refused.
    pub fn insert(&self, id: &str, record: &[u8]) -> Result<Inserted, TooLong> {
        if id.len() >= u32::MAX as usize || record.len() >= u32::MAX as usize {
            return Err(TooLong);
        }
        let id = id.as_bytes();
        let hash = self.hash(id);
        let stored = self.stored.find(hash, id);
        let mut shard = self.shard(hash);
        let Shard {
            index,
            arena,
            untaken,
            untaken_with_set,
        } = &mut *shard;
        match find(index, arena, hash, id) {
            Some(position) => {
                if arena.entry(index.get(position)).kind() != KIND_PARKED {
                    return Ok(Inserted::Duplicate);
                }
                // The parked line finds the row when it is joined again.
                index.set(position, arena.push(KIND_LEGACY, id, record, stored));
            }
            None => {
                let at = arena.push(KIND_LEGACY, id, record, stored);
                if index.insert_new(hash, at, |at| self.hash(arena.entry(at).id_bytes())) {
                    self.publish(index, hash);
                }
            }
        }
        *untaken += 1;
        *untaken_with_set += u64::from(stored != NO_STORED_SET);
        Ok(Inserted::New)
    }

    /// Keeps the stored baseline sets at hand for [`LegacyTable::insert`]; called before the
    /// table is shared.
    pub fn load_stored(&mut self, each: impl FnOnce(&mut dyn FnMut(&str, &[u8]))) {
        let hasher = self.hasher.clone();
        let mut bytes = Vec::new();
        let mut index = HashTable::new();
        each(&mut |id, packed| {
            if id.len() >= u32::MAX as usize || packed.len() >= u32::MAX as usize {
                return;
            }
            let offset = bytes.len();
            codec::put_framed(&mut bytes, id.as_bytes());
            codec::put_framed(&mut bytes, packed);
            index.insert_unique(hasher.hash_one(id.as_bytes()), offset, |&offset| {
                hasher.hash_one(StoredSets::at(&bytes, offset).0)
            });
        });
        bytes.shrink_to_fit();
        self.stored = StoredSets {
            bytes,
            index: RwLock::new(Some(index)),
        };
    }

    /// Frees the index of the stored sets once every legacy row is in (the sets themselves
    /// stay until the end of the join: the users without a legacy row are looked up in them
    /// then, in one pass, see [`LegacyTable::stored_sets_of`]).
    pub fn forget_stored(&self) {
        *self
            .stored
            .index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// Asks the CPU for the index slot where a lookup of `id` starts, without a lock and
    /// without waiting for it.
    pub fn prefetch(&self, id: &str) {
        let hash = self.hash(id.as_bytes());
        if let Some(view) = self.views.get(Self::shard_of(hash)) {
            view.prefetch(hash);
        }
    }

    /// Takes the legacy user `id` out (into `buffer`, reused from user to user), leaving a
    /// tombstone. What an unknown id becomes depends on the `moment` (see [`Moment`]).
    pub fn take(&self, id: &str, buffer: &mut TakenUser, moment: Moment) -> Taken {
        let rejoin = moment == Moment::Rejoin;
        let legacy_done = moment != Moment::RowsArriving;
        let id = id.as_bytes();
        let hash = self.hash(id);
        let mut shard = self.shard(hash);
        let Shard {
            index,
            arena,
            untaken,
            untaken_with_set,
        } = &mut *shard;
        match find(index, arena, hash, id) {
            Some(position) => {
                let at = index.get(position);
                let entry = arena.entry(at);
                if rejoin && entry.kind() == KIND_PARKED {
                    bury(arena.entry_mut(at));
                    return Taken::Missing(MissingRef::new(Self::shard_of(hash), at));
                }
                if entry.is_tombstone() {
                    return Taken::AlreadySeen;
                }
                buffer.bytes.clear();
                buffer.bytes.extend_from_slice(entry.record_bytes());
                buffer.record = buffer.bytes.len();
                buffer
                    .bytes
                    .extend_from_slice(self.stored.set(entry.stored()));
                buffer.shard = Self::shard_of(hash);
                buffer.at = at;
                *untaken -= 1;
                *untaken_with_set -= u64::from(entry.stored() != NO_STORED_SET);
                bury(arena.entry_mut(at));
                Taken::Legacy
            }
            None => {
                let kind = if legacy_done {
                    KIND_TOMBSTONE
                } else {
                    KIND_PARKED
                };
                let at = arena.push(kind, id, &[], NO_STORED_SET);
                if index.insert_new(hash, at, |at| self.hash(arena.entry(at).id_bytes())) {
                    self.publish(index, hash);
                }
                if legacy_done {
                    Taken::Missing(MissingRef::new(Self::shard_of(hash), at))
                } else {
                    Taken::Parked
                }
            }
        }
    }

    /// Appends the ids of the Auth0 users `missing` points at to `text`; returns where each is.
    pub fn ids_of(&self, missing: &[MissingRef], text: &mut String) -> Vec<std::ops::Range<usize>> {
        missing
            .iter()
            .map(|&MissingRef(at)| {
                let shard = (at >> SHARD_SHIFT) as usize;
                let start = text.len();
                text.push_str(
                    self.lock(shard)
                        .arena
                        .entry(at & ((1 << SHARD_SHIFT) - 1))
                        .id(),
                );
                start..text.len()
            })
            .collect()
    }

    /// Calls `each` with the position in `ids` (legacy ids without a legacy row, sorted) and
    /// the set an earlier run stored for it, for every one that has a set.
    pub fn stored_sets_of(&self, ids: &[&str], mut each: impl FnMut(usize, PackedBaselines<'_>)) {
        self.stored
            .each_of_sorted(ids, |position, set| each(position, PackedBaselines(set)));
    }

    /// Records the new baseline set of the user just taken out into `taken`: in place of its
    /// record when it fits. Returns where the set is, for [`LegacyTable::into_new_baselines`].
    pub fn set_new_baselines(&self, taken: &TakenUser, packed: &[u8]) -> NewSetRef {
        let mut shard = self.lock(taken.shard);
        let Shard { index, arena, .. } = &mut *shard;
        let entry = arena.entry(taken.at);
        let (id_len, record_len) = entry.lengths();
        let prefix = entry.sort_prefix();
        let set_len = packed.len() as u64;
        let at = if packed.len() <= record_len {
            let entry = arena.entry_mut(taken.at);
            entry[0] = KIND_NEW_BASELINES;
            entry[9..HEADER].copy_from_slice(&set_len.to_le_bytes());
            entry[HEADER + id_len..HEADER + id_len + packed.len()].copy_from_slice(packed);
            taken.at
        } else {
            // Rare (a set larger than the record): a new entry, and the index points at it.
            let id = entry.id_bytes().to_vec();
            let moved = arena.push(KIND_NEW_BASELINES, &id, packed, set_len);
            let hash = self.hash(&id);
            if let Some(position) = index.find(hash, |at| at == taken.at) {
                index.set(position, moved);
            }
            bury(arena.entry_mut(taken.at));
            moved
        };
        NewSetRef((prefix, ((taken.shard as u64) << SHARD_SHIFT) | at))
    }

    /// Empties the table into the new baseline sets recorded with
    /// [`LegacyTable::set_new_baselines`].
    pub fn into_new_baselines(self, sets: Vec<NewSetRef>) -> NewBaselines {
        let arenas = self
            .shards
            .into_iter()
            .map(|shard| {
                shard
                    .into_inner()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .arena
            })
            .collect();
        NewBaselines {
            arenas,
            order: sets.into_iter().map(|NewSetRef(set)| set).collect(),
            sorted: false,
        }
    }

    /// Calls `each` with the id, record and stored set of every legacy user never taken that
    /// has a stored set (an earlier run matched it: it may have been deleted in Auth0), and
    /// returns how many legacy users were never taken in all. Only shards holding such users
    /// are walked, block by block in memory order.
    pub fn untaken(&self, mut each: impl FnMut(&str, LegacyView<'_>, PackedBaselines<'_>)) -> u64 {
        let mut untaken = 0;
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            untaken += shard.untaken;
            if shard.untaken_with_set == 0 {
                continue;
            }
            for block in &shard.arena.blocks {
                let mut offset = 0;
                while let Some(bytes) = block.get(offset..).filter(|bytes| bytes.len() >= HEADER) {
                    let entry = EntryView(bytes);
                    if entry.kind() == KIND_LEGACY && entry.stored() != NO_STORED_SET {
                        each(
                            entry.id(),
                            LegacyView::of(entry.record_bytes()),
                            PackedBaselines(self.stored.set(entry.stored())),
                        );
                    }
                    offset += entry.footprint();
                }
            }
        }
        untaken
    }

    /// Calls `each` with the id and record of legacy users never taken that have no stored
    /// set (never matched: not migrated), block by block in memory order, while it returns
    /// true.
    pub fn untaken_without_set(&self, mut each: impl FnMut(&str, LegacyView<'_>) -> bool) {
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if shard.untaken == shard.untaken_with_set {
                continue;
            }
            for block in &shard.arena.blocks {
                let mut offset = 0;
                while let Some(bytes) = block.get(offset..).filter(|bytes| bytes.len() >= HEADER) {
                    let entry = EntryView(bytes);
                    if entry.kind() == KIND_LEGACY
                        && entry.stored() == NO_STORED_SET
                        && !each(entry.id(), LegacyView::of(entry.record_bytes()))
                    {
                        return;
                    }
                    offset += entry.footprint();
                }
            }
        }
    }

    /// The legacy users never taken.
    #[cfg(test)]
    pub fn remaining(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .untaken
            })
            .sum()
    }
}

/// Where a shard's number goes in a reference of [`NewBaselines`]: above any block index a
/// shard reaches (2^26 blocks of a megabyte).
const SHARD_SHIFT: u32 = 58;

/// Where the tombstone of an Auth0 id without a legacy row is: its shard and its entry.
#[derive(Debug, Clone, Copy)]
pub struct MissingRef(u64);

impl MissingRef {
    fn new(shard: usize, at: EntryRef) -> MissingRef {
        MissingRef(((shard as u64) << SHARD_SHIFT) | at)
    }
}

/// Where a new baseline set is: the sort prefix of its id, its shard and its entry.
#[derive(Debug, Clone, Copy)]
pub struct NewSetRef((u64, u64));

/// The new baseline sets a run leaves in its table, kept where they are.
#[derive(Default)]
pub struct NewBaselines {
    arenas: Vec<Arena>,
    /// (sort prefix of the id, shard and reference) per set.
    order: Vec<(u64, u64)>,
    sorted: bool,
}

impl NewBaselines {
    fn entry(&self, at: u64) -> EntryView<'_> {
        let shard = (at >> SHARD_SHIFT) as usize;
        let at = at & ((1 << SHARD_SHIFT) - 1);
        self.arenas
            .get(shard)
            .map_or(EntryView(&[]), |arena| arena.entry(at))
    }

    /// Puts the sets in id order. Sorted by the ids' first eight bytes first: the keys stay in
    /// cache, and only ids whose first eight bytes tie are compared as strings.
    pub fn sort(&mut self) {
        let mut order = std::mem::take(&mut self.order);
        order.sort_unstable_by(|(a, i), (b, j)| {
            a.cmp(b)
                .then_with(|| self.entry(*i).id_bytes().cmp(self.entry(*j).id_bytes()))
        });
        self.order = order;
        self.sorted = true;
    }

    /// The (legacy id, packed set) pairs in id order.
    pub fn sorted(&mut self) -> impl Iterator<Item = (&str, &[u8])> {
        if !self.sorted {
            self.sort();
        }
        // In id order the entries are all over the arena: each window's entries are touched
        // first, loads the CPU overlaps, instead of one cache (and TLB) miss at a time between
        // the writes. At ten million users that is most of the write's time.
        self.order.chunks(16).flat_map(|window| {
            let touched = window
                .iter()
                .fold(0u8, |acc, &(_, at)| acc ^ self.entry(at).kind());
            std::hint::black_box(touched);
            window.iter().map(|&(_, at)| {
                let entry = self.entry(at);
                (entry.id(), entry.new_baselines().unwrap_or_default())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::baseline::{Seen, pack};
    use crate::model::profile::{Field, LegacyRecordBuilder};

    fn record(email: &str) -> Vec<u8> {
        let mut builder = LegacyRecordBuilder::default();
        builder.text(Field::Email, email);
        builder.finish().as_bytes().to_vec()
    }

    #[test]
    fn rows_inserted_one_behind_are_all_in_and_a_last_duplicate_is_named() {
        let table = LegacyTable::default();
        let mut rows = InsertBehind::new(&table);
        let mut inserted = 0;
        for (number, id) in [(1, "a"), (2, "b"), (3, "c")] {
            inserted += u64::from(rows.push(number, id, &record(id)).unwrap());
        }
        // The third row is held until the next one (or the end) arrives.
        assert_eq!(inserted, 2);
        assert_eq!(rows.push(4, "a", &record("again")), Ok(true));
        assert_eq!(
            rows.finish(),
            Err(Refused {
                row: 4,
                user_id: "a".into(),
                duplicate: true
            })
        );
        assert_eq!(rows.finish(), Ok(false));
        assert_eq!(table.remaining(), 3);
        let mut taken = TakenUser::default();
        assert!(matches!(
            table.take("c", &mut taken, Moment::RowsIn),
            Taken::Legacy
        ));
        assert_eq!(table.remaining(), 2);
    }

    #[test]
    fn users_are_taken_once_with_their_record_and_baselines() {
        let mut table = LegacyTable::default();
        let packed = pack(Seen::Migrated, &[("email".to_owned(), 5)]);
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
        let mut new_sets = Vec::new();
        assert!(matches!(
            table.take("1", &mut user, Moment::RowsIn),
            Taken::Legacy
        ));
        // A new set that fits in place of the record.
        new_sets
            .push(table.set_new_baselines(&user, &pack(Seen::Migrated, &[("name".to_owned(), 1)])));
        let take = |id| table.take(id, &mut TakenUser::default(), Moment::RowsIn);
        assert!(matches!(take("1"), Taken::AlreadySeen));
        assert!(matches!(take("9"), Taken::Missing(_)));
        assert!(matches!(take("9"), Taken::AlreadySeen));
        assert_eq!(user.legacy().profile.text(Field::Email), Some("a@x.io"));
        assert_eq!(user.baselines().find("email"), Some(5));
        assert_eq!(table.remaining(), 1);
        assert!(matches!(
            table.take("2", &mut user, Moment::RowsIn),
            Taken::Legacy
        ));
        assert!(user.baselines().is_empty());
        assert_eq!(table.remaining(), 0);
        // One that needs a larger entry: the user stays taken.
        let long = pack(
            Seen::Migrated,
            &[("user_metadata.".to_owned() + &"k".repeat(200), 2)],
        );
        new_sets.push(table.set_new_baselines(&user, &long));
        assert!(matches!(
            table.take("2", &mut user, Moment::RowsIn),
            Taken::AlreadySeen
        ));
        // A profile that comes before its row is parked; joined again it finds the row, or
        // is missing for good.
        assert!(matches!(
            table.take("5", &mut user, Moment::RowsArriving),
            Taken::Parked
        ));
        assert!(matches!(
            table.take("5", &mut user, Moment::RowsArriving),
            Taken::AlreadySeen
        ));
        assert!(matches!(
            table.take("6", &mut user, Moment::RowsArriving),
            Taken::Parked
        ));
        assert_eq!(table.insert("5", &record("e@x.io")).unwrap(), Inserted::New);
        assert!(matches!(
            table.take("5", &mut user, Moment::Rejoin),
            Taken::Legacy
        ));
        assert_eq!(user.legacy().profile.text(Field::Email), Some("e@x.io"));
        assert!(matches!(
            table.take("6", &mut user, Moment::Rejoin),
            Taken::Missing(_)
        ));
        new_sets.reverse();
        let mut new_sets = table.into_new_baselines(new_sets);
        let sets: Vec<(String, Vec<u8>)> = new_sets
            .sorted()
            .map(|(id, set)| (id.to_owned(), set.to_vec()))
            .collect();
        assert_eq!(
            sets,
            vec![
                (
                    "1".to_owned(),
                    pack(Seen::Migrated, &[("name".to_owned(), 1)]).to_vec()
                ),
                ("2".to_owned(), long.to_vec()),
            ]
        );
    }
}
