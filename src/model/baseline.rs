//! Baselines: the value both sides last agreed on (or that driftsync pushed), kept per user and
//! per *key* — a root field such as `email`, or one first-level key of a metadata object such as
//! `user_metadata.lang` — as a stable 64-bit hash of its canonical form.
//!
//! Each hash is of the key's canonical form (`equality::canonical`, the one equality rule), so
//! two values that compare equal always hash the same and the classification's field diff,
//! read off these hashes, agrees with them by construction. With a baseline B, a differing key
//! changed on the legacy side when Auth0 still equals B, on the Auth0 side when legacy still
//! equals B, and on both when neither does.
//!
//! A user's set also says what the run that wrote it saw of the user ([`Seen`]): the set is the
//! evidence that the user was once matched with a legacy row.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};

use crate::codec;
use crate::model::equality::{canonical, canonical_member};
use crate::model::profile::{Field, Kind, Profile, Value};

/// Which side changed a differing key since its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Legacy,
    Auth0,
    Both,
}

/// One key on both sides, as hashes of the canonical forms (equal values hash the same; the
/// canonical text itself is never needed, so it is never kept).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValues {
    /// A field name, or `field.key` for a metadata key.
    pub key: Cow<'static, str>,
    pub legacy: i64,
    pub auth0: i64,
}

impl KeyValues {
    pub fn differs(&self) -> bool {
        self.legacy != self.auth0
    }

    /// A metadata key the legacy object does not have: it needs no baseline (absent on both
    /// sides, nothing to remember; a stored one is forgotten).
    fn is_absent_metadata_key(&self) -> bool {
        self.legacy == no_value() && self.key.contains('.')
    }
}

/// The canonical values of every key of `fields`: root fields, and for metadata the first-level
/// keys the legacy object has plus `extra_metadata_keys` (keys a baseline remembers, so that a
/// key removed from the legacy object is seen).
pub fn key_values(
    fields: &[Field],
    legacy: &Profile<'_>,
    auth0: &Profile<'_>,
    extra_metadata_keys: &[(Field, &str)],
) -> Vec<KeyValues> {
    let mut keys = Vec::with_capacity(fields.len() + 4);
    for &field in fields {
        match field.kind() {
            Kind::Object => {
                let legacy_object = raw_object(legacy.get(field));
                let auth0_object = raw_object(auth0.get(field));
                let mut extra: Vec<&str> = extra_metadata_keys
                    .iter()
                    .filter(|&&(extra_field, _)| extra_field == field)
                    .map(|&(_, name)| name)
                    .collect();
                extra.sort_unstable();
                let names = sorted_union(legacy_object.keys(), &extra);
                let key_names = metadata_key_names(field, &names);
                // Every list is sorted: one cursor per object, each moving forward only.
                let (mut at_legacy, mut at_auth0) = (0, 0);
                for (name, key) in names.into_iter().zip(key_names) {
                    let (legacy, auth0) = hashes(
                        legacy_object
                            .seek(&mut at_legacy, name)
                            .and_then(canonical_member)
                            .as_deref(),
                        auth0_object
                            .seek(&mut at_auth0, name)
                            .and_then(canonical_member)
                            .as_deref(),
                    );
                    keys.push(KeyValues { key, legacy, auth0 });
                }
            }
            _ => {
                let (legacy_hash, auth0_hash) = hashes(
                    canonical(field, legacy, auth0).as_deref(),
                    canonical(field, auth0, legacy).as_deref(),
                );
                keys.push(KeyValues {
                    key: Cow::Borrowed(field.name()),
                    legacy: legacy_hash,
                    auth0: auth0_hash,
                });
            }
        }
    }
    keys
}

/// The metadata keys a stored set remembers, for [`key_values`]' `extra_metadata_keys`.
pub fn remembered_metadata_keys<'s>(stored: &PackedBaselines<'s>) -> Vec<(Field, &'s str)> {
    stored
        .iter()
        .filter_map(|(key, _)| match key {
            StoredKey::Metadata(field, name) => Some((field, name)),
            _ => None,
        })
        .collect()
}

/// Whether a legacy record still holds, key for key, what its stored set says both sides last
/// agreed on, for a user the set says Auth0 holds in its own store (`Seen::Migrated`). Then the
/// legacy side has changed nothing since, and whatever Auth0 holds now, there is nothing to
/// push: a changes run need not spend a Management API request on the user (a full run still
/// compares it). A key without a baseline, a cached or unknown profile, or a name that might be
/// a default generated from Auth0's email (judged here against the legacy email only, so it
/// can only differ) all answer no.
pub fn legacy_unchanged(
    fields: &[Field],
    legacy: &Profile<'_>,
    stored: PackedBaselines<'_>,
) -> bool {
    if stored.seen() != Some(Seen::Migrated) {
        return false;
    }
    let remembered = remembered_metadata_keys(&stored);
    key_values(fields, legacy, legacy, &remembered)
        .iter()
        .all(|key| match stored.find(&key.key) {
            Some(agreed) => agreed == key.legacy,
            // A metadata key absent from legacy and from the set: absent on both sides before.
            None => key.is_absent_metadata_key(),
        })
}

/// The names of both sorted lists, sorted, each once.
fn sorted_union<'n>(first: impl Iterator<Item = &'n str>, second: &[&'n str]) -> Vec<&'n str> {
    let mut names: Vec<&str> = Vec::with_capacity(second.len() + 8);
    let mut second = second.iter().copied().peekable();
    for name in first {
        while let Some(other) = second.next_if(|&other| other <= name) {
            if other != name {
                names.push(other);
            }
        }
        names.push(name);
    }
    names.extend(second);
    names.dedup();
    names
}

/// Both sides' hashes, the second taken from the first when the canonical forms are the same
/// text (most keys of most users): comparing is several times cheaper than hashing.
fn hashes(legacy: Option<&str>, auth0: Option<&str>) -> (i64, i64) {
    let legacy_hash = hash(legacy);
    let auth0_hash = if auth0 == legacy {
        legacy_hash
    } else {
        hash(auth0)
    };
    (legacy_hash, auth0_hash)
}

/// At most this many metadata key names are made once for the whole process.
const INTERNED_NAMES: usize = 4096;

type NameSet = hashbrown::HashSet<&'static str, foldhash::fast::FixedState>;

/// Metadata key names made once: `field.key` repeats from user to user (a deployment has a few
/// dozen metadata keys), and a million users would otherwise build each name a million times.
/// Past [`INTERNED_NAMES`] names (keys that are themselves data, such as ids), names are built
/// per user again, so the memory kept stays bounded.
static INTERNED: std::sync::LazyLock<std::sync::Mutex<NameSet>> =
    std::sync::LazyLock::new(Default::default);

/// One thread's view of [`INTERNED`], so that a known name costs no lock.
#[derive(Default)]
struct KnownNames {
    scratch: String,
    known: NameSet,
    /// [`INTERNED`] was full when last asked: a name not known here is built.
    full: bool,
    /// Per metadata field, the names the last object had, in order: the next user's object
    /// usually has the same keys, found by comparing instead of hashing.
    recent: Vec<(Field, Vec<&'static str>)>,
}

thread_local! {
    static KNOWN_NAMES: std::cell::RefCell<KnownNames> = Default::default();
}

/// The key names `field.name` of an object's sorted `names`.
fn metadata_key_names(field: Field, names: &[&str]) -> Vec<Cow<'static, str>> {
    KNOWN_NAMES.with_borrow_mut(|known| {
        let slot = match known.recent.iter().position(|(of, _)| *of == field) {
            Some(slot) => slot,
            None => {
                known.recent.push((field, Vec::new()));
                known.recent.len() - 1
            }
        };
        let prefix = field.name();
        let mut keys = Vec::with_capacity(names.len());
        for (position, name) in names.iter().enumerate() {
            let guess = known.recent[slot].1.get(position).copied();
            let same = guess.filter(|guess| {
                guess.len() == prefix.len() + 1 + name.len()
                    && guess.ends_with(name)
                    && guess.as_bytes()[prefix.len()] == b'.'
                    && guess.starts_with(prefix)
            });
            let key = match same {
                Some(interned) => Cow::Borrowed(interned),
                None => metadata_key_name(known, field, name),
            };
            if let Cow::Borrowed(interned) = key {
                let recent = &mut known.recent[slot].1;
                if position < recent.len() {
                    recent[position] = interned;
                } else {
                    recent.push(interned);
                }
            }
            keys.push(key);
        }
        keys
    })
}

/// The key name `field.name`.
fn metadata_key_name(names: &mut KnownNames, field: Field, name: &str) -> Cow<'static, str> {
    {
        names.scratch.clear();
        names.scratch.push_str(field.name());
        names.scratch.push('.');
        names.scratch.push_str(name);
        if let Some(&interned) = names.known.get(names.scratch.as_str()) {
            return Cow::Borrowed(interned);
        }
        if names.full {
            return Cow::Owned(names.scratch.clone());
        }
        let mut interned = INTERNED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let found = match interned.get(names.scratch.as_str()) {
            Some(&kept) => kept,
            None if interned.len() < INTERNED_NAMES => {
                let kept: &'static str = Box::leak(names.scratch.as_str().into());
                interned.insert(kept);
                kept
            }
            None => {
                names.full = true;
                return Cow::Owned(names.scratch.clone());
            }
        };
        names.known.insert(found);
        Cow::Borrowed(found)
    }
}

/// A metadata value as an object; text that does not parse counts as no keys rather than
/// inventing a difference (both readers only store text that starts as an object).
pub(crate) fn object(value: Option<&Value<'_>>) -> Map<String, Json> {
    match value {
        Some(Value::Object(text)) => serde_json::from_str(text).unwrap_or_default(),
        _ => Map::new(),
    }
}

/// A metadata object's first-level values, borrowed from its text (no tree is built).
fn raw_object<'a>(value: Option<&'a Value<'_>>) -> RawObject<'a> {
    match value {
        Some(Value::Object(text)) => match crate::model::equality::object_members(text) {
            Some(members) => RawObject::of(
                members
                    .into_iter()
                    .map(|(key, value)| (Cow::Borrowed(key), value))
                    .collect(),
            ),
            None => serde_json::from_str(text).unwrap_or_default(),
        },
        _ => RawObject::default(),
    }
}

/// An object's first-level members, borrowed from its text and sorted by key: no tree and no
/// allocation per key (unless a key has escapes). A repeated key keeps its last value, as a
/// JSON parser building a map would.
#[derive(Default)]
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a str)>);

impl<'a> RawObject<'a> {
    /// From the members in the order written.
    fn of(mut pairs: Vec<(Cow<'a, str>, &'a str)>) -> RawObject<'a> {
        // Last value first, so that the stable sort and dedup keep it.
        pairs.reverse();
        pairs.sort_by(|(a, _), (b, _)| a.cmp(b));
        pairs.dedup_by(|(later, _), (kept, _)| later == kept);
        RawObject(pairs)
    }

    /// The value of `name`, looking from `*from` on for names asked in sorted order; `*from`
    /// is left at the first member not before `name`.
    fn seek(&self, from: &mut usize, name: &str) -> Option<&'a str> {
        while let Some((key, value)) = self.0.get(*from) {
            match (**key).cmp(name) {
                std::cmp::Ordering::Less => *from += 1,
                std::cmp::Ordering::Equal => return Some(value),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    #[cfg(test)]
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .binary_search_by(|(key, _)| (**key).cmp(name))
            .ok()
            .map(|index| self.0[index].1)
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(key, _)| &**key)
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut members: A,
            ) -> Result<RawObject<'a>, A::Error> {
                let mut pairs = Vec::new();
                while let Some(crate::model::profile::Text(key)) = members.next_key()? {
                    let value: &'a RawValue = members.next_value()?;
                    pairs.push((key, value.get()));
                }
                Ok(RawObject::of(pairs))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// FNV-1a over the canonical form: stable across builds and platforms, unlike std's hashers.
pub const fn hash(canonical: Option<&str>) -> i64 {
    // A leading tag byte tells "no value" from any text, the empty text included.
    let (tag, bytes): (u8, &[u8]) = match canonical {
        Some(text) => (1, text.as_bytes()),
        None => (0, &[]),
    };
    codec::fnv1a(codec::fnv1a(codec::FNV_OFFSET, &[tag]), bytes) as i64
}

/// Hashes common enough to be stored as a one-byte code (see [`PackedBaselines`]): no value
/// and the two booleans.
const CODED_HASHES: [i64; 3] = [hash(None), hash(Some("true")), hash(Some("false"))];
/// A tag with this bit is followed by an index into [`CODED_HASHES`] instead of a hash.
const CODED_TAG: u8 = 0x80;

/// The hash of "no value" (NULL, absent, `""`).
pub fn no_value() -> i64 {
    hash(None)
}

/// Which side changed a differing key, given its baseline hash.
pub fn change(values: &KeyValues, baseline: i64) -> Change {
    let legacy_same = values.legacy == baseline;
    let auth0_same = values.auth0 == baseline;
    match (legacy_same, auth0_same) {
        (true, _) => Change::Auth0,
        (false, true) => Change::Legacy,
        (false, false) => Change::Both,
    }
}

/// Tag of a metadata key: the field index with this bit set, then the key's length and bytes.
const METADATA_TAG: u8 = 0x40;
/// Tag of the entry that says what the run that wrote the set saw of the user (see [`Seen`]):
/// no key, one byte. It is always a set's first entry.
const SEEN_TAG: u8 = 0x3F;
/// Tag of a key that names no known field (kept verbatim so nothing is lost).
const RAW_TAG: u8 = 0x7F;

/// What the run that last matched a user with its legacy row saw of the user. Every set a run
/// writes starts with it, so a stored set is itself the evidence that an earlier run matched
/// the user: an Auth0 user without a legacy row but with a set was deleted from legacy
/// (`orphaned`), and a legacy row whose Auth0 user is gone although the set says `Migrated` was
/// deleted in Auth0 (`deleted_in_auth0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Matched, but the set was written before driftsync recorded how (state schema 4 and
    /// older).
    Unknown,
    /// Matched while Auth0 held the user in its own store.
    Migrated,
    /// Matched while Auth0 held only a cached copy of the legacy profile.
    Cached,
}

impl Seen {
    pub fn of(migrated: bool) -> Seen {
        if migrated {
            Seen::Migrated
        } else {
            Seen::Cached
        }
    }

    fn code(self) -> u8 {
        match self {
            Seen::Unknown => 0,
            Seen::Migrated => 1,
            Seen::Cached => 2,
        }
    }

    fn from_code(code: u8) -> Seen {
        match code {
            1 => Seen::Migrated,
            2 => Seen::Cached,
            _ => Seen::Unknown,
        }
    }
}

/// A stored key, as packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKey<'a> {
    Field(Field),
    /// A first-level key of a metadata field.
    Metadata(Field, &'a str),
    Raw(&'a str),
}

impl StoredKey<'_> {
    /// Whether this is the key named `key` (`field` or `field.key`), compared without
    /// building the name.
    #[inline]
    pub fn is(&self, key: &str) -> bool {
        match *self {
            StoredKey::Field(field) => field.name() == key,
            StoredKey::Metadata(field, name) => {
                key.strip_prefix(field.name())
                    .and_then(|rest| rest.strip_prefix('.'))
                    == Some(name)
            }
            StoredKey::Raw(raw) => raw == key,
        }
    }

    pub fn name(&self) -> String {
        match *self {
            StoredKey::Field(field) => field.name().to_owned(),
            StoredKey::Metadata(field, name) => format!("{field}.{name}"),
            StoredKey::Raw(raw) => raw.to_owned(),
        }
    }
}

/// A user's baselines as the state file keeps them: per key a tag byte (the field index for a
/// root field; [`METADATA_TAG`] | index, a LEB128 length and the key for a metadata key;
/// [`RAW_TAG`], a length and the whole name otherwise), then the 8-byte little-endian hash —
/// or, with [`CODED_TAG`] set on the tag, one byte naming a [`CODED_HASHES`] entry (no value,
/// `true`, `false`). A root field costs 9 bytes, a boolean 2; a million users' sets of the
/// benchmark's seven fields fit in about 70 MB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedBaselines<'a>(pub &'a [u8]);

impl<'a> PackedBaselines<'a> {
    /// The (key, hash) pairs, without the [`Seen`] entry.
    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = (StoredKey<'a>, i64)> + 'a {
        let mut rest = self.keys_part();
        std::iter::from_fn(move || {
            let (entry, after) = next_entry(rest)?;
            rest = after;
            Some(entry)
        })
    }

    /// The hash stored for `key`, if any.
    #[inline]
    pub fn find(&self, key: &str) -> Option<i64> {
        self.iter()
            .find(|(stored, _)| stored.is(key))
            .map(|(_, hash)| hash)
    }

    /// No set at all: no run has matched this user (or the set was forgotten).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What the run that wrote the set saw; `None` when there is no set.
    #[inline]
    pub fn seen(&self) -> Option<Seen> {
        match self.0 {
            [] => None,
            [SEEN_TAG, code, ..] => Some(Seen::from_code(*code)),
            _ => Some(Seen::Unknown),
        }
    }

    /// The bytes after the [`Seen`] entry.
    #[inline]
    fn keys_part(&self) -> &'a [u8] {
        match self.0 {
            [SEEN_TAG, _, rest @ ..] => rest,
            all => all,
        }
    }

    /// The (key, hash) pairs with their names, for editing a set.
    pub fn entries(&self) -> Vec<(String, i64)> {
        self.iter().map(|(key, hash)| (key.name(), hash)).collect()
    }
}

/// Decodes one entry; `None` at the end or on damage (a damaged tail only loses baselines,
/// which the timestamps then stand in for).
#[inline]
fn next_entry(bytes: &[u8]) -> Option<((StoredKey<'_>, i64), &[u8])> {
    let (&coded_tag, rest) = bytes.split_first()?;
    let tag = coded_tag & !CODED_TAG;
    let (key, rest) = if tag < METADATA_TAG {
        (StoredKey::Field(Field::from_index(tag)?), rest)
    } else {
        let (len, rest) = crate::codec::read_varint(rest)?;
        let (name, rest) = rest.split_at_checked(len)?;
        let name = std::str::from_utf8(name).ok()?;
        if tag == RAW_TAG {
            (StoredKey::Raw(name), rest)
        } else {
            let field = Field::from_index(tag & !METADATA_TAG)?;
            (StoredKey::Metadata(field, name), rest)
        }
    };
    if coded_tag & CODED_TAG != 0 {
        let (&code, rest) = rest.split_first()?;
        return Some(((key, *CODED_HASHES.get(usize::from(code))?), rest));
    }
    let (hash, rest) = rest.split_first_chunk::<8>()?;
    Some(((key, i64::from_le_bytes(*hash)), rest))
}

/// Packs (key, hash) pairs (keys `field` or `field.key`) into the stored form, after the
/// entry saying what the run saw of the user.
pub fn pack(seen: Seen, entries: &[(String, i64)]) -> Box<[u8]> {
    pack_pairs(
        seen,
        entries.iter().map(|(key, hash)| (key.as_str(), *hash)),
    )
}

/// [`pack`] for borrowed keys.
pub fn pack_pairs<'a>(seen: Seen, entries: impl IntoIterator<Item = (&'a str, i64)>) -> Box<[u8]> {
    let mut packed = Vec::with_capacity(96);
    packed.extend_from_slice(&[SEEN_TAG, seen.code()]);
    append_pairs(&mut packed, entries);
    packed.into_boxed_slice()
}

/// Packs pairs without a [`Seen`] entry: the form of state schema 4 and older.
pub fn pack_without_seen(entries: &[(String, i64)]) -> Box<[u8]> {
    let mut packed = Vec::with_capacity(96);
    append_pairs(
        &mut packed,
        entries.iter().map(|(key, hash)| (key.as_str(), *hash)),
    );
    packed.into_boxed_slice()
}

fn append_pairs<'a>(packed: &mut Vec<u8>, entries: impl IntoIterator<Item = (&'a str, i64)>) {
    for (key, hash) in entries {
        let tag_at = packed.len();
        let field_and_name = match key.split_once('.') {
            Some((field, name)) => Field::from_name(field)
                .filter(|field| field.kind() == Kind::Object)
                .map(|field| (field, Some(name))),
            None => Field::from_name(key).map(|field| (field, None)),
        };
        match field_and_name {
            Some((field, None)) => packed.push(field.index() as u8),
            Some((field, Some(name))) => {
                packed.push(METADATA_TAG | field.index() as u8);
                crate::codec::write_varint(packed, name.len());
                packed.extend_from_slice(name.as_bytes());
            }
            None => {
                packed.push(RAW_TAG);
                crate::codec::write_varint(packed, key.len());
                packed.extend_from_slice(key.as_bytes());
            }
        }
        match CODED_HASHES.iter().position(|coded| *coded == hash) {
            Some(code) => {
                packed[tag_at] |= CODED_TAG;
                packed.push(code as u8);
            }
            None => packed.extend_from_slice(&hash.to_le_bytes()),
        }
    }
}

/// A matched user's new set, packed, or `None` when the stored one stands: agreeing keys take
/// the agreed value, differing keys keep what is stored, metadata keys that neither side has any
/// more are forgotten.
pub fn next_set(
    keys: &[KeyValues],
    stored: PackedBaselines<'_>,
    fields: &[Field],
    seen: Seen,
) -> Option<Box<[u8]>> {
    if stored.is_empty() {
        // A user's first set (every user in a first run): the agreeing keys, packed straight
        // from the keys; a metadata key absent on both sides needs no baseline. Written even
        // with no agreeing key: the set is the evidence that the user was matched.
        let agreed = keys
            .iter()
            .filter(|key| key.legacy == key.auth0 && !key.is_absent_metadata_key());
        return Some(pack_pairs(seen, agreed.map(|key| (&*key.key, key.legacy))));
    }
    if stored.seen() == Some(seen) && unchanged(keys, stored, fields) {
        return None;
    }
    let before = {
        let mut entries = stored.entries();
        entries.sort_unstable();
        entries
    };
    let mut entries = before.clone();
    for key in keys.iter().filter(|key| !key.differs()) {
        let position = entries.iter().position(|(name, _)| *name == key.key);
        if key.is_absent_metadata_key() {
            // A metadata key absent on both sides needs no baseline.
            if let Some(position) = position {
                entries.swap_remove(position);
            }
            continue;
        }
        match position {
            Some(position) => entries[position].1 = key.legacy,
            None => entries.push((key.key.to_string(), key.legacy)),
        }
    }
    // Stored metadata keys of compared fields that are no longer among the keys at all.
    entries.retain(|(name, _)| match name.split_once('.') {
        Some((field, _)) if fields.iter().any(|f| f.name() == field) => {
            keys.iter().any(|key| key.key == *name)
        }
        _ => true,
    });
    entries.sort_unstable();
    (entries != before || stored.seen() != Some(seen)).then(|| pack(seen, &entries))
}

/// Whether the stored set already holds every agreeing key with its value and nothing to
/// forget: the common case of every run after the first, checked without allocating.
fn unchanged(keys: &[KeyValues], stored: PackedBaselines<'_>, fields: &[Field]) -> bool {
    let agreed_match = keys.iter().filter(|key| !key.differs()).all(|key| {
        let found = stored.find(&key.key);
        if key.is_absent_metadata_key() {
            found.is_none()
        } else {
            found == Some(key.legacy)
        }
    });
    let nothing_stale = stored.iter().all(|(stored_key, _)| match stored_key {
        StoredKey::Metadata(field, _) if fields.contains(&field) => {
            keys.iter().any(|key| stored_key.is(&key.key))
        }
        _ => true,
    });
    agreed_match && nothing_stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata_key_name(field: Field, name: &str) -> Cow<'static, str> {
        let mut names = metadata_key_names(field, &[name]);
        names.remove(0)
    }

    #[test]
    fn names_of_both_lists_come_sorted_once_and_values_are_found_in_one_walk() {
        let first = ["a", "c", "e"];
        assert_eq!(
            sorted_union(first.into_iter(), &["b", "c", "c", "f"]),
            ["a", "b", "c", "e", "f"]
        );
        assert_eq!(sorted_union(first.into_iter(), &[]), first);
        assert_eq!(sorted_union([].into_iter(), &["x", "x"]), ["x"]);
        let text = Value::Object(Cow::Borrowed(r#"{"e":5,"a":1,"c":3}"#));
        let object = raw_object(Some(&text));
        let mut at = 0;
        let found: Vec<_> = ["a", "b", "c", "d", "e", "f"]
            .into_iter()
            .map(|name| object.seek(&mut at, name))
            .collect();
        assert_eq!(found, [Some("1"), None, Some("3"), None, Some("5"), None]);
    }

    #[test]
    fn key_names_remembered_by_position_are_checked_not_trusted() {
        let names = |field, names: &[&str]| -> Vec<String> {
            metadata_key_names(field, names)
                .into_iter()
                .map(Cow::into_owned)
                .collect()
        };
        assert_eq!(
            names(Field::UserMetadata, &["a", "lang"]),
            ["user_metadata.a", "user_metadata.lang"]
        );
        // Same positions, other keys: a suffix of the last one, another field, a longer one.
        assert_eq!(
            names(Field::UserMetadata, &["a", "ang", "x"]),
            ["user_metadata.a", "user_metadata.ang", "user_metadata.x"]
        );
        assert_eq!(
            names(Field::AppMetadata, &["a", "ang"]),
            ["app_metadata.a", "app_metadata.ang"]
        );
        assert_eq!(
            names(Field::UserMetadata, &["lang"]),
            ["user_metadata.lang"]
        );
        assert_eq!(
            names(Field::UserMetadata, &["a", "ang", "x"]),
            ["user_metadata.a", "user_metadata.ang", "user_metadata.x"]
        );
    }

    #[test]
    fn metadata_key_names_are_made_once_and_stay_right_past_the_limit() {
        let first = metadata_key_name(Field::UserMetadata, "lang");
        let again = metadata_key_name(Field::UserMetadata, "lang");
        assert_eq!(first, "user_metadata.lang");
        assert!(
            matches!((&first, &again), (Cow::Borrowed(a), Cow::Borrowed(b)) if std::ptr::eq(*a, *b))
        );
        // Keys that are data: past the limit the names are built, and still right.
        let mut built = 0;
        for n in 0..INTERNED_NAMES + 10 {
            let name = metadata_key_name(Field::AppMetadata, &format!("id-{n}"));
            assert_eq!(name, format!("app_metadata.id-{n}"));
            built += usize::from(matches!(name, Cow::Owned(_)));
        }
        assert!(built >= 10);
        assert!(matches!(
            metadata_key_name(Field::UserMetadata, "lang"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn raw_objects_are_sorted_keep_the_last_repeated_key_and_unescape_keys() {
        let text = Value::Object(Cow::Borrowed(r#"{"b":1,"a":[2],"b":3,"c\u0041":{"x":4}}"#));
        let object = raw_object(Some(&text));
        assert_eq!(object.keys().collect::<Vec<_>>(), ["a", "b", "cA"]);
        assert_eq!(object.get("b"), Some("3"));
        assert_eq!(object.get("cA"), Some(r#"{"x":4}"#));
        assert!(object.get("z").is_none());
        assert!(
            raw_object(Some(&Value::Object(Cow::Borrowed("[1]"))))
                .keys()
                .next()
                .is_none()
        );
    }

    #[test]
    fn packed_sets_round_trip_every_kind_of_key() {
        let entries = vec![
            ("email".to_owned(), 7),
            ("user_metadata.lang".to_owned(), -8),
            ("app_metadata.a.b".to_owned(), i64::MAX),
            ("no_such_field".to_owned(), 1),
            ("name.x".to_owned(), 2),
        ];
        let packed = pack(Seen::Migrated, &entries);
        let view = PackedBaselines(&packed);
        assert_eq!(view.entries(), entries);
        assert_eq!(view.seen(), Some(Seen::Migrated));
        assert_eq!(view.find("user_metadata.lang"), Some(-8));
        assert_eq!(view.find("user_metadata"), None);
        assert_eq!(view.find("app_metadata.a.b"), Some(i64::MAX));
        assert_eq!(view.find("name.x"), Some(2));
        assert_eq!(view.find("name"), None);
        // A root field takes its tag and its hash only; a boolean or no value, two bytes; the
        // Seen entry, two.
        assert_eq!(pack_without_seen(&[("email".to_owned(), 1)]).len(), 9);
        assert_eq!(pack(Seen::Cached, &[("email".to_owned(), 1)]).len(), 11);
        let coded = vec![
            ("blocked".to_owned(), hash(Some("false"))),
            ("email_verified".to_owned(), hash(Some("true"))),
            ("user_metadata.x".to_owned(), no_value()),
        ];
        let packed_coded = pack_without_seen(&coded);
        assert_eq!(packed_coded.len(), 2 + 2 + 4);
        assert_eq!(PackedBaselines(&packed_coded).entries(), coded);
        // A damaged tail ends the walk instead of inventing entries.
        assert_eq!(
            PackedBaselines(&packed[..packed.len() - 1]).iter().count(),
            4
        );
    }

    #[test]
    fn a_set_says_whether_and_how_the_user_was_matched() {
        assert_eq!(PackedBaselines(&[]).seen(), None, "no set: never matched");
        for seen in [Seen::Migrated, Seen::Cached, Seen::Unknown] {
            let packed = pack(seen, &[]);
            assert_eq!(PackedBaselines(&packed).seen(), Some(seen));
            assert!(!PackedBaselines(&packed).is_empty());
            assert_eq!(PackedBaselines(&packed).iter().count(), 0);
        }
        // A set written before the Seen entry existed: matched, how unknown.
        let old = pack_without_seen(&[("email".to_owned(), 1)]);
        assert_eq!(PackedBaselines(&old).seen(), Some(Seen::Unknown));
        assert_eq!(PackedBaselines(&old).find("email"), Some(1));
    }
    use crate::model::profile::fixtures::{profile, text};

    #[test]
    fn a_legacy_record_is_unchanged_only_when_every_key_equals_its_agreed_baseline() {
        let fields = [Field::Email, Field::Name, Field::UserMetadata];
        let metadata = |json: &'static str| Value::Object(Cow::Borrowed(json));
        let agreed = profile(&[
            (Field::Email, text("pat@example.org")),
            (Field::Name, text("Pat")),
            (Field::UserMetadata, metadata(r#"{"lang":"de","n":1}"#)),
        ]);
        let keys = key_values(&fields, &agreed, &agreed, &[]);
        let set = next_set(&keys, PackedBaselines(&[]), &fields, Seen::Migrated).unwrap();
        let unchanged = |legacy: &Profile<'_>, set: &[u8]| {
            legacy_unchanged(&fields, legacy, PackedBaselines(set))
        };
        // The same values, written otherwise (case of the email, spaces and key order).
        let respelled = profile(&[
            (Field::Email, text("Pat@Example.org")),
            (Field::Name, text("Pat")),
            (Field::UserMetadata, metadata(r#"{"n": 1.0, "lang": "de"}"#)),
        ]);
        assert!(unchanged(&respelled, &set));
        let renamed = profile(&[
            (Field::Email, text("pat@example.org")),
            (Field::Name, text("Patricia")),
            (Field::UserMetadata, metadata(r#"{"lang":"de","n":1}"#)),
        ]);
        assert!(!unchanged(&renamed, &set));
        let key_removed = profile(&[
            (Field::Email, text("pat@example.org")),
            (Field::Name, text("Pat")),
            (Field::UserMetadata, metadata(r#"{"lang":"de"}"#)),
        ]);
        assert!(!unchanged(&key_removed, &set));
        let key_added = profile(&[
            (Field::Email, text("pat@example.org")),
            (Field::Name, text("Pat")),
            (
                Field::UserMetadata,
                metadata(r#"{"lang":"de","n":1,"new":true}"#),
            ),
        ]);
        assert!(!unchanged(&key_added, &set));
        // Only for a user Auth0 holds in its own store, and only with a baseline for each key.
        let cached = next_set(&keys, PackedBaselines(&[]), &fields, Seen::Cached).unwrap();
        assert!(!unchanged(&agreed, &cached));
        let email_only = pack(Seen::Migrated, &[("email".to_owned(), keys[0].legacy)]);
        assert!(!unchanged(&agreed, &email_only));
        assert!(!unchanged(&agreed, &[]));
    }

    #[test]
    fn equal_values_have_equal_canonical_forms() {
        let legacy = profile(&[
            (Field::Email, text("Pat@Example.org")),
            (Field::GivenName, text("")),
            (
                Field::UserMetadata,
                Value::Object(Cow::Borrowed(r#"{"n":1,"o":{"b":1,"a":2}}"#)),
            ),
        ]);
        let auth0 = profile(&[
            (Field::Email, text("pat@example.org")),
            (Field::Name, text("pat@example.org")),
            (
                Field::UserMetadata,
                Value::Object(Cow::Borrowed(r#"{"n":1.0,"o":{"a":2,"b":1},"x":3}"#)),
            ),
        ]);
        let fields = [
            Field::Email,
            Field::GivenName,
            Field::Name,
            Field::Blocked,
            Field::UserMetadata,
        ];
        let keys = key_values(&fields, &legacy, &auth0, &[]);
        let names: Vec<&str> = keys.iter().map(|k| k.key.as_ref()).collect();
        assert_eq!(
            names,
            [
                "email",
                "given_name",
                "name",
                "blocked",
                "user_metadata.n",
                "user_metadata.o"
            ]
        );
        for key in &keys {
            assert!(!key.differs(), "{key:?}");
        }
    }

    #[test]
    fn baselines_tell_which_side_changed() {
        let keys = |legacy: &'static str, auth0: &'static str| {
            key_values(
                &[Field::Name],
                &profile(&[(Field::Name, text(legacy))]),
                &profile(&[(Field::Name, text(auth0))]),
                &[],
            )
            .remove(0)
        };
        let agreed = hash(Some("Old"));
        assert_eq!(change(&keys("New", "Old"), agreed), Change::Legacy);
        assert_eq!(change(&keys("Old", "New"), agreed), Change::Auth0);
        assert_eq!(change(&keys("New", "Newer"), agreed), Change::Both);
    }

    #[test]
    fn a_removed_metadata_key_is_seen_through_the_baseline() {
        let legacy = profile(&[(
            Field::AppMetadata,
            Value::Object(Cow::Borrowed(r#"{"a":1}"#)),
        )]);
        let auth0 = profile(&[(
            Field::AppMetadata,
            Value::Object(Cow::Borrowed(r#"{"a":1,"plan":"pro"}"#)),
        )]);
        let keys = key_values(
            &[Field::AppMetadata],
            &legacy,
            &auth0,
            &[(Field::AppMetadata, "plan")],
        );
        let plan = keys.iter().find(|k| k.key == "app_metadata.plan").unwrap();
        assert_eq!(
            (plan.legacy, plan.auth0),
            (no_value(), hash(Some("\"pro\"")))
        );
        assert_eq!(change(plan, hash(Some("\"pro\""))), Change::Legacy);
    }

    const PINNED_A: i64 = 589_763_776_587_810_007;

    #[test]
    fn a_value_serde_json_cannot_build_is_still_a_value() {
        // Found by the classify fuzz target: such values canonicalized to "no value", so
        // they equalled a missing Auth0 key.
        for text in ["1e400", r#"{"$serde_json::private::RawValue":1}"#] {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            assert_eq!(
                crate::model::equality::canonical_member(raw.get()).as_deref(),
                Some(text)
            );
        }
        let legacy = profile(&[(
            Field::UserMetadata,
            Value::Object(Cow::Borrowed(r#"{"big":1e400}"#)),
        )]);
        let keys = key_values(&[Field::UserMetadata], &legacy, &profile(&[]), &[]);
        assert!(keys[0].differs(), "{keys:?}");
    }

    #[test]
    fn hashes_are_stable_and_distinguish_no_value() {
        assert_eq!(hash(Some("")), hash(Some("")));
        assert_ne!(hash(None), hash(Some("")));
        assert_ne!(hash(Some("a")), hash(Some("b")));
        // Pinned: a change of algorithm would silently invalidate every stored baseline.
        assert_eq!(hash(Some("a")), PINNED_A);
    }
}
