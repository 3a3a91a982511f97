//! Matching the two sides: the legacy users wait in a [`LegacyTable`] while Auth0's profiles
//! stream past; each user is classified as soon as both sides are known (its legacy record is
//! freed then), the push for it is planned, and the baselines that changed are collected — so
//! the state update is proportional to what changed.
//!
//! The export is cut into chunks of whole lines on the reading thread and parsed and classified
//! by [`WORKERS`] threads; decompression runs on a thread of its own before that
//! ([`crate::sources::export::read_ahead`]). All of it runs while the legacy rows are still arriving: a
//! profile whose legacy row is not in yet is parked and joined once they all are (parked lines
//! are held up to [`PARK_LIMIT_BYTES`]; beyond that the workers wait for the legacy side).
//! A malformed line stops every thread; the error reported is the one with the lowest line
//! number.

use std::collections::VecDeque;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use crate::model::baseline::PackedBaselines;
use crate::model::classify;
use crate::model::plan;
use crate::model::profile::{Auth0User, Field, Profile, USER_ID_PREFIX, Value};
use crate::model::progress;
use crate::sources::export::{self, ExportError, Interpreted, MAX_LINE_BYTES};

use super::joined::{Joined, WithoutRow};
use super::progress::Counters;
use super::table::{LegacyTable, MissingRef, Moment, Taken, TakenUser};
use super::{Context, EngineError};

/// Threads that parse and classify export lines: with decompression on a thread of its own,
/// two keep both cores of a small machine busy.
const WORKERS: usize = 2;

/// Bytes of whole lines handed to a worker at a time.
const CHUNK_BYTES: usize = 256 * 1024;

/// Parked lines kept at most, in bytes; beyond, the workers wait for the legacy side.
const PARK_LIMIT_BYTES: usize = 64 << 20;

/// What both sides of a full pass share: the legacy table, how far the legacy side is, and
/// the progress counters. The parking state is all here: a profile parks in the table
/// ([`LegacyTable::take`]), its line waits in the worker's [`Joined`], and [`LegacyProgress`]
/// says when the parked lines may be joined again and holds their bytes' count.
pub(super) struct Shared {
    pub table: LegacyTable,
    legacy: LegacyProgress,
    pub counters: Arc<Counters>,
    /// When set (now, in microseconds), the not-migrated users are counted by inactivity.
    pub inactivity_at: Option<i64>,
}

impl Shared {
    pub fn new(table: LegacyTable) -> Shared {
        Shared {
            table,
            legacy: LegacyProgress::default(),
            counters: Arc::default(),
            inactivity_at: None,
        }
    }

    /// Called once the legacy read has ended, successfully or not.
    pub fn legacy_finished(&self, succeeded: bool) {
        self.legacy.finish(succeeded);
    }
}

/// Whether the legacy side has finished streaming into the table, and how. Workers check
/// `is_done` on their hot path (one atomic load) and block in `wait` on a condition variable
/// when they must have every legacy row.
#[derive(Debug, Default)]
struct LegacyProgress {
    done: AtomicBool,
    /// `None` while the legacy rows stream; `Some(succeeded)` once the read has ended.
    ended: Mutex<Option<bool>>,
    ended_signal: Condvar,
    parked_bytes: AtomicUsize,
}

impl LegacyProgress {
    /// Called once the legacy read has ended, successfully or not.
    fn finish(&self, succeeded: bool) {
        *self.ended_lock() = Some(succeeded);
        self.done.store(true, Ordering::SeqCst);
        self.ended_signal.notify_all();
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits for the end of the legacy read; false when it failed (its error is reported by
    /// the caller, so the join only stops).
    fn wait(&self) -> bool {
        let mut ended = self.ended_lock();
        loop {
            match *ended {
                Some(succeeded) => return succeeded,
                None => {
                    ended = self
                        .ended_signal
                        .wait(ended)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
    }

    fn ended_lock(&self) -> std::sync::MutexGuard<'_, Option<bool>> {
        self.ended
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What every line is joined with.
#[derive(Clone, Copy)]
struct Sides<'a> {
    source_name: &'a str,
    table: &'a LegacyTable,
    context: &'a Context<'a>,
}

/// Where a line is joined: while the legacy rows still arrive, or again once they are all in.
#[derive(Clone, Copy)]
enum Phase<'a> {
    Streaming(&'a LegacyProgress),
    Rejoin,
}

/// A chunk of whole lines and the number of its first line.
struct Chunk {
    first_line: u64,
    bytes: Vec<u8>,
}

/// An error and the line it belongs to, so that the lowest one is reported.
type LineError = (u64, EngineError);

/// Streams the export past the legacy table; every Auth0 profile takes its legacy user out.
pub(super) fn join(
    source_name: &str,
    input: impl BufRead,
    shared: &Shared,
    context: &Context<'_>,
) -> Result<Joined, EngineError> {
    let Shared {
        table,
        legacy,
        counters,
        inactivity_at,
    } = shared;
    let stop = AtomicBool::new(false);
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Chunk>(WORKERS * 2);
    let receiver = Mutex::new(receiver);
    // Emptied chunk buffers go back to the producer instead of the allocator.
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    let (produced, results) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let recycle = recycle.clone();
                let (receiver, stop) = (&receiver, &stop);
                scope.spawn(move || {
                    crate::priority::yield_to_legacy_side();
                    let sides = Sides {
                        source_name,
                        table,
                        context,
                    };
                    work(&sides, receiver, &recycle, legacy, counters, stop)
                })
            })
            .collect();
        let produced = produce(source_name, input, &sender, &recycled, &stop);
        drop(sender);
        let results: Vec<_> = workers.into_iter().map(|worker| worker.join()).collect();
        (produced, results)
    });
    let mut joined = Joined::new();
    gather(&mut joined, results, produced.err())?;
    if !legacy.wait() {
        return Err(EngineError::LegacyReadFailed);
    }
    // Every legacy row is in: the parked lines find theirs now, or have none.
    let mut parked = std::mem::take(&mut joined.parked);
    tracing::info!(
        parked = parked.len(),
        parked_bytes = legacy.parked_bytes.load(Ordering::Relaxed),
        "profiles that came before their legacy rows"
    );
    parked.sort_unstable_by_key(|(number, _)| *number);
    let share = parked.len().div_ceil(WORKERS).max(1);
    let results: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = parked
            .chunks(share)
            .map(|lines| {
                scope.spawn(move || {
                    let mut part = Joined::new();
                    let mut taken = TakenUser::default();
                    for (number, line) in lines {
                        let phase = Phase::Rejoin;
                        let sides = Sides {
                            source_name,
                            table,
                            context,
                        };
                        part.join_line(&sides, *number, line, &mut taken, phase)?;
                    }
                    Ok::<_, LineError>(part)
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join()).collect()
    });
    gather(&mut joined, results, None)?;
    // Legacy users without an Auth0 profile: not migrated (counted only), unless an earlier
    // run matched them (a stored set): then it may have seen them migrated.
    // They also give the migration's progress a few example ids and, when the query returns
    // `last_active_at`, how long the not-migrated ones have been inactive.
    let inactivity_at = *inactivity_at;
    let mut buckets = [0u64; 6];
    let mut with_set = 0;
    let untaken = table.untaken(|legacy_id, legacy, stored| {
        with_set += 1;
        let verdict = classify::classify(&context.rules, Some(&legacy), None, Some(stored));
        let auth0_id = format!("{USER_ID_PREFIX}{legacy_id}");
        if verdict.status == classify::Status::NotMigrated {
            joined.examples.offer(verdict.status, &auth0_id);
            if let Some(now) = inactivity_at {
                buckets[progress::inactivity_bucket(legacy.last_active_at, now)] += 1;
            }
        }
        joined.record(&auth0_id, verdict, None, None);
    });
    joined.summary.not_migrated += untaken - with_set;
    let mut auth0_id = String::new();
    table.untaken_without_set(|legacy_id, legacy| {
        if joined.examples.not_migrated.len() < progress::EXAMPLES {
            auth0_id.clear();
            auth0_id.push_str(USER_ID_PREFIX);
            auth0_id.push_str(legacy_id);
            joined
                .examples
                .offer(classify::Status::NotMigrated, &auth0_id);
        }
        match inactivity_at {
            Some(now) => {
                buckets[progress::inactivity_bucket(legacy.last_active_at, now)] += 1;
                true
            }
            None => joined.examples.not_migrated.len() < progress::EXAMPLES,
        }
    });
    joined.inactivity = inactivity_at.map(|_| buckets);
    joined.classify_without_row(context, table);
    tracing::info!(
        legacy_without_profile = untaken,
        of_them_matched_before = with_set,
        "legacy users without an Auth0 profile"
    );
    Ok(joined)
}

/// Merges the workers' parts into `joined`; the error with the lowest line number wins.
fn gather(
    joined: &mut Joined,
    results: Vec<std::thread::Result<Result<Joined, LineError>>>,
    mut first_error: Option<LineError>,
) -> Result<(), EngineError> {
    for result in results {
        match result {
            Ok(Ok(mut part)) => joined.merge(&mut part),
            Ok(Err(error)) => {
                if first_error.as_ref().is_none_or(|(line, _)| error.0 < *line) {
                    first_error = Some(error);
                }
            }
            Err(_) => {
                first_error = Some((0, EngineError::ThreadPanicked("join worker")));
            }
        }
    }
    if let Some((_, error)) = first_error {
        return Err(error);
    }
    Ok(())
}

/// Cuts the input into chunks of whole lines for the workers.
fn produce(
    source_name: &str,
    mut input: impl BufRead,
    sender: &SyncSender<Chunk>,
    recycled: &Receiver<Vec<u8>>,
    stop: &AtomicBool,
) -> Result<(), LineError> {
    let mut next_line = 1;
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK_BYTES * 2);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let block = input.fill_buf().map_err(|source| {
            (
                next_line,
                ExportError::Read {
                    source_name: source_name.to_owned(),
                    line: next_line - 1,
                    source,
                }
                .into(),
            )
        })?;
        if block.is_empty() {
            if !pending.is_empty() {
                // A last line without a newline; a closed channel means a worker failed.
                let _ = sender.send(Chunk {
                    first_line: next_line,
                    bytes: pending,
                });
            }
            return Ok(());
        }
        pending.extend_from_slice(block);
        let read = block.len();
        input.consume(read);
        if pending.len() < CHUNK_BYTES {
            continue;
        }
        match memchr::memrchr(b'\n', &pending) {
            Some(end) => {
                let mut rest = recycled
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES * 2));
                rest.clear();
                rest.extend_from_slice(&pending[end + 1..]);
                pending.truncate(end + 1);
                let lines = memchr::memchr_iter(b'\n', &pending).count() as u64;
                let chunk = Chunk {
                    first_line: next_line,
                    bytes: std::mem::replace(&mut pending, rest),
                };
                next_line += lines;
                if sender.send(chunk).is_err() {
                    return Ok(());
                }
            }
            None if pending.len() > MAX_LINE_BYTES => {
                return Err((
                    next_line,
                    export::line_too_long(source_name, next_line).into(),
                ));
            }
            None => {}
        }
    }
}

/// The lines of a chunk, each with its newline (the last one may have none).
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |at| at + 1);
        let (line, after) = rest.split_at(end);
        rest = after;
        Some(line)
    })
}

/// The Auth0 user a line holds, if it is one of the configured connection's.
fn parse_user<'l>(
    sides: &Sides<'_>,
    number: u64,
    line: &'l [u8],
) -> Result<Option<Auth0User<'l>>, LineError> {
    let source_name = sides.source_name;
    if line.len() > MAX_LINE_BYTES {
        return Err((number, export::line_too_long(source_name, number).into()));
    }
    let interpreted = export::parse_line(line, sides.context.filter).map_err(|message| {
        (
            number,
            EngineError::from(ExportError::Line {
                source_name: source_name.to_owned(),
                line: number,
                message,
            }),
        )
    })?;
    Ok(match interpreted {
        Interpreted::User(user) => Some(user),
        Interpreted::OtherConnection | Interpreted::NotDatabaseUser | Interpreted::Blank => None,
    })
}

/// How many parsed users a worker holds before joining them: each one's index slot is asked for
/// when it is parsed, and has arrived by the time it is joined.
const LOOKAHEAD: usize = 2;

/// One worker: parses and classifies the lines of the chunks it receives.
fn work(
    sides: &Sides<'_>,
    receiver: &Mutex<Receiver<Chunk>>,
    recycle: &std::sync::mpsc::Sender<Vec<u8>>,
    legacy: &LegacyProgress,
    counters: &Counters,
    stop: &AtomicBool,
) -> Result<Joined, LineError> {
    let table = sides.table;
    let mut joined = Joined::new();
    let mut taken = TakenUser::default();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(joined);
        }
        let chunk = receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .recv();
        let Ok(chunk) = chunk else {
            return Ok(joined);
        };
        let before = joined.summary.auth0_users;
        let phase = Phase::Streaming(legacy);
        let mut ahead: VecDeque<(u64, Auth0User<'_>)> = VecDeque::with_capacity(LOOKAHEAD + 1);
        let result = lines(&chunk.bytes)
            .zip(chunk.first_line..)
            .try_for_each(|(line, number)| {
                // Users ahead are joined before a bad line's error, so that the first error
                // in line order is the one reported.
                let user = match parse_user(sides, number, line) {
                    Ok(Some(user)) => user,
                    Ok(None) => return Ok(()),
                    Err(error) => {
                        for (number, user) in ahead.drain(..) {
                            joined.join_user(sides, number, &user, &mut taken, phase)?;
                        }
                        return Err(error);
                    }
                };
                table.prefetch(user.legacy_id);
                ahead.push_back((number, user));
                if ahead.len() > LOOKAHEAD
                    && let Some((number, user)) = ahead.pop_front()
                {
                    joined.join_user(sides, number, &user, &mut taken, phase)?;
                }
                Ok(())
            })
            .and_then(|()| {
                ahead.drain(..).try_for_each(|(number, user)| {
                    joined.join_user(sides, number, &user, &mut taken, phase)
                })
            });
        counters
            .auth0_users
            .fetch_add(joined.summary.auth0_users - before, Ordering::Relaxed);
        if let Err(error) = result {
            stop.store(true, Ordering::Relaxed);
            return Err(error);
        }
        // The producer may have finished already: then the buffer is simply freed.
        let _ = recycle.send(chunk.bytes);
    }
}

impl Joined {
    fn join_line(
        &mut self,
        sides: &Sides<'_>,
        number: u64,
        line: &[u8],
        taken: &mut TakenUser,
        phase: Phase<'_>,
    ) -> Result<(), LineError> {
        match parse_user(sides, number, line)? {
            Some(user) => self.join_user(sides, number, &user, taken, phase),
            None => Ok(()),
        }
    }

    /// Joins one Auth0 user with its legacy row (or parks it, or records it as unmatched).
    fn join_user(
        &mut self,
        sides: &Sides<'_>,
        number: u64,
        user: &Auth0User<'_>,
        taken: &mut TakenUser,
        phase: Phase<'_>,
    ) -> Result<(), LineError> {
        let Sides { table, context, .. } = *sides;
        let moment = match phase {
            Phase::Streaming(legacy) => {
                // Enough held aside: from here on every profile waits for its row.
                if legacy.parked_bytes.load(Ordering::Relaxed) > PARK_LIMIT_BYTES && !legacy.wait()
                {
                    return Err((number, EngineError::LegacyReadFailed));
                }
                if legacy.is_done() {
                    Moment::RowsIn
                } else {
                    Moment::RowsArriving
                }
            }
            Phase::Rejoin => Moment::Rejoin,
        };
        let taken_as = table.take(user.legacy_id, taken, moment);
        if let Taken::Parked = taken_as {
            // Kept in a minimal form: many parked profiles are orphans that wait to the end.
            let minimal = export::minimal_line(user, context.kept, context.filter);
            if let Phase::Streaming(legacy) = phase {
                legacy
                    .parked_bytes
                    .fetch_add(minimal.len(), Ordering::Relaxed);
            }
            self.parked.push((number, minimal.into_boxed_slice()));
            return Ok(());
        }
        self.summary.auth0_users += 1;
        if user.migrated || !context.rules.root_attributes_refreshed {
            self.pushable_users += 1;
        }
        match taken_as {
            Taken::Parked => {}
            Taken::Legacy => {
                let new_set =
                    self.match_user(context, &taken.legacy(), Some(taken.baselines()), user);
                if let Some(packed) = new_set {
                    self.new_sets.push(table.set_new_baselines(taken, &packed));
                }
            }
            Taken::Missing(at) => self.without_row.push(WithoutRow {
                at,
                migrated: user.migrated,
                blocked: matches!(user.profile.get(Field::Blocked), Some(Value::Bool(true))),
            }),
            Taken::AlreadySeen => {
                return Err((
                    number,
                    EngineError::DuplicateAuth0User {
                        line: number,
                        user_id: user.auth0_id.to_owned(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Classifies the Auth0 users without a legacy row, with the sets earlier runs stored
    /// for their ids (the evidence that they were matched once).
    fn classify_without_row(&mut self, context: &Context<'_>, table: &LegacyTable) {
        let users = std::mem::take(&mut self.without_row);
        let refs: Vec<MissingRef> = users.iter().map(|user| user.at).collect();
        let mut text = String::new();
        let spans = table.ids_of(&refs, &mut text);
        let mut order: Vec<usize> = (0..users.len()).collect();
        order.sort_unstable_by(|&a, &b| text[spans[a].clone()].cmp(&text[spans[b].clone()]));
        let ids: Vec<&str> = order.iter().map(|&i| &text[spans[i].clone()]).collect();
        let mut sets: Vec<Option<Box<[u8]>>> = vec![None; ids.len()];
        table.stored_sets_of(&ids, |position, set| sets[position] = Some(set.0.into()));
        let mut auth0_id = String::new();
        for ((&index, legacy_id), set) in order.iter().zip(&ids).zip(sets) {
            let user = users[index];
            let mut profile = Profile::default();
            profile.set(Field::Blocked, Some(Value::Bool(user.blocked)));
            auth0_id.clear();
            auth0_id.push_str(crate::model::profile::USER_ID_PREFIX);
            auth0_id.push_str(legacy_id);
            let auth0 = Auth0User {
                auth0_id: &auth0_id,
                legacy_id,
                profile,
                created_at: None,
                migrated: user.migrated,
            };
            let stored = PackedBaselines(set.as_deref().unwrap_or_default());
            let verdict = classify::classify(&context.rules, None, Some(&auth0), Some(stored));
            let push = plan::for_verdict(&verdict, &auth0, None, context.policy, context.orphans);
            self.record(auth0.auth0_id, verdict, push, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::classify::{Rules, Status};
    use crate::model::plan::{OrphanAction, PushPolicy};
    use crate::model::profile::LegacyRecordBuilder;
    use crate::model::profile::MigratedRule;
    use crate::sources::export::ExportFilter;

    fn line(id: u32, name: &str) -> String {
        format!(
            r#"{{"user_id":"auth0|{id}","name":"{name}","identities":[{{"connection":"db"}}]}}"#
        )
    }

    /// What a join context borrows: names compared, every profile migrated, names pushable.
    struct Parts {
        filter: ExportFilter,
        policy: PushPolicy,
    }

    impl Parts {
        fn new() -> Parts {
            Parts {
                filter: ExportFilter {
                    connection: "db".into(),
                    migrated: MigratedRule::Always,
                },
                policy: PushPolicy {
                    import_mode: true,
                    root_attributes_refreshed: true,
                    migrated_fields: crate::model::plan::DEFAULT_MIGRATED_FIELDS.to_vec(),
                    legacy_has_email_verified: false,
                    pushed_email_verified: crate::model::plan::PushedEmailVerified::False,
                    verify_email: false,
                },
            }
        }

        fn context(&self) -> Context<'_> {
            Context {
                rules: Rules {
                    fields: &[Field::Name],
                    connection_migrated: Some(true),
                    root_attributes_refreshed: true,
                },
                kept: &[Field::Name],
                filter: &self.filter,
                policy: &self.policy,
                orphans: OrphanAction::Report,
                review: false,
            }
        }
    }

    fn insert(table: &LegacyTable, id: u32, name: &str) {
        let mut record = LegacyRecordBuilder::default();
        record.text(Field::Name, name);
        let inserted = table.insert(&id.to_string(), record.finish().as_bytes());
        assert!(matches!(inserted, Ok(super::super::table::Inserted::New)));
    }

    /// Profiles that arrive before their legacy rows are parked and still joined with them;
    /// one without a row and without a stored set is a signup; the counts equal a join after
    /// the read.
    #[test]
    fn profiles_ahead_of_their_rows_are_joined_once_the_rows_are_in() {
        let shared = Shared::new(LegacyTable::default());
        let table = &shared.table;
        let progress = &shared.legacy;
        let parts = Parts::new();
        let context = parts.context();
        // Rows 1-3 are in before the export; 4-6 arrive while it is joined; 7 has no row.
        for id in 1..=3 {
            insert(table, id, "Same");
        }
        let export: String = (1..=7)
            .map(|id| line(id, if id % 2 == 0 { "Old" } else { "Same" }) + "\n")
            .collect();
        let joined = std::thread::scope(|scope| {
            let joining = scope.spawn(|| join("test", export.as_bytes(), &shared, &context));
            // The join cannot finish before the legacy side does.
            while progress.parked_bytes.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            assert!(!joining.is_finished());
            for id in 4..=6 {
                insert(table, id, "Same");
            }
            progress.finish(true);
            joining.join().unwrap()
        })
        .unwrap();
        let summary = &joined.summary;
        assert_eq!(summary.auth0_users, 7);
        assert_eq!((summary.in_sync, summary.stranded), (3, 3), "{summary:?}");
        assert_eq!((summary.orphaned, summary.auth0_only), (0, 1));
        assert_eq!(summary.not_migrated, 0);
        let mut stranded: Vec<&str> = joined
            .planned
            .iter()
            .map(|p| p.legacy_id.as_str())
            .collect();
        stranded.sort_unstable();
        assert_eq!(stranded, ["2", "4", "6"]);
    }

    /// The stored sets are the evidence for users on one side only, whether their profile
    /// comes while the legacy rows still arrive (parked, joined again) or after.
    #[test]
    fn stored_sets_decide_the_users_present_on_one_side_only() {
        for legacy_first in [false, true] {
            let mut table = LegacyTable::default();
            let migrated =
                crate::model::baseline::pack(crate::model::baseline::Seen::Migrated, &[]);
            let cached = crate::model::baseline::pack(crate::model::baseline::Seen::Cached, &[]);
            table.load_stored(|each| {
                each("7", &migrated);
                each("9", &migrated);
                each("10", &cached);
            });
            let shared = Shared::new(table);
            let (table, progress) = (&shared.table, &shared.legacy);
            let parts = Parts::new();
            let context = parts.context();
            insert(table, 1, "Same");
            let rest = |table: &LegacyTable| {
                for id in [9, 10, 12] {
                    insert(table, id, "Same");
                }
                progress.finish(true);
                table.forget_stored();
            };
            if legacy_first {
                rest(table);
            }
            // 1 matches; 7 lost its row since a run matched it; 8 never had one.
            let export: String = [1, 7, 8].map(|id| line(id, "Same") + "\n").concat();
            let joined = std::thread::scope(|scope| {
                let joining = scope.spawn(|| join("test", export.as_bytes(), &shared, &context));
                if !legacy_first {
                    while progress.parked_bytes.load(Ordering::Relaxed) == 0 {
                        std::thread::yield_now();
                    }
                    rest(table);
                }
                joining.join().unwrap()
            })
            .unwrap();
            let summary = &joined.summary;
            assert_eq!(
                (
                    summary.in_sync,
                    summary.orphaned,
                    summary.auth0_only,
                    summary.deleted_in_auth0,
                    summary.not_migrated
                ),
                (1, 1, 1, 1, 2),
                "legacy first: {legacy_first}: {summary:?}"
            );
            let mut listed: Vec<(&str, Status)> = joined
                .users
                .iter()
                .map(|user| (user.user_id.as_str(), user.status))
                .collect();
            listed.sort_unstable_by_key(|(id, _)| *id);
            assert_eq!(
                listed,
                [
                    ("auth0|7", Status::Orphaned),
                    ("auth0|9", Status::DeletedInAuth0)
                ]
            );
        }
    }

    #[test]
    fn chunks_split_into_the_same_lines_as_split_inclusive() {
        for text in ["", "\n", "a", "a\n", "a\nbc", "a\n\nbc\n", "\n\nx"] {
            let expected: Vec<&[u8]> = text.as_bytes().split_inclusive(|&b| b == b'\n').collect();
            assert_eq!(
                lines(text.as_bytes()).collect::<Vec<_>>(),
                expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_failed_legacy_read_stops_the_join() {
        let parts = Parts::new();
        let context = parts.context();
        let export = line(1, "x") + "\n";
        let shared = Shared::new(LegacyTable::default());
        shared.legacy_finished(false);
        let Err(error) = join("test", export.as_bytes(), &shared, &context) else {
            panic!("the join went on after the legacy read failed");
        };
        assert!(error.to_string().contains("legacy read failed"), "{error}");
    }
}
