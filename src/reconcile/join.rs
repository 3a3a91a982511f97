//! Matching the two sides: the legacy users wait in a [`LegacyTable`] while Auth0's profiles
//! stream past; each user is classified as soon as both sides are known (its legacy record is
//! freed then), the push for it is planned, and the baselines that changed are collected — so
//! the state update is proportional to what changed.
//!
//! The export is cut into chunks of whole lines on the reading thread and parsed and classified
//! by [`WORKERS`] threads; decompression runs on a thread of its own before that
//! ([`crate::export::read_ahead`]). All of it runs while the legacy rows are still arriving: a
//! profile whose legacy row is not in yet is parked and joined once they all are (parked lines
//! are held up to [`PARK_LIMIT_BYTES`]; beyond that the workers wait for the legacy side).
//! A malformed line stops every thread; the error reported is the one with the lowest line
//! number.

use std::collections::VecDeque;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use crate::baseline::{self, KeyValues, PackedBaselines};
use crate::classify::{self, Rules, Status, Verdict};
use crate::config::OrphanAction;
use crate::export::{self, ExportError, ExportFilter, Interpreted, MAX_LINE_BYTES};
use crate::profile::Auth0User;
use crate::profile::{Field, LegacyView, Profile};
use crate::push::plan::{self, Push, PushPolicy};
use crate::report::{PushOutcome, PushState, Summary, UserEntry};

use super::ReconcileError;
use super::progress::Counters;
pub use super::table::LegacyTable;
use super::table::{MissingRef, NewSetRef, Taken, TakenUser};

/// Threads that parse and classify export lines: with decompression on a thread of its own,
/// two keep both cores of a small machine busy.
pub const WORKERS: usize = 2;

/// Bytes of whole lines handed to a worker at a time.
const CHUNK_BYTES: usize = 256 * 1024;

/// Parked lines kept at most, in bytes; beyond, the workers wait for the legacy side.
pub const PARK_LIMIT_BYTES: usize = 64 << 20;

/// Whether the legacy side has finished streaming into the table, and how. Workers check
/// `is_done` on their hot path (one atomic load) and block in `wait` on a condition variable
/// when they must have every legacy row.
#[derive(Debug, Default)]
pub struct LegacyProgress {
    done: AtomicBool,
    /// `None` while the legacy rows stream; `Some(succeeded)` once the read has ended.
    ended: Mutex<Option<bool>>,
    ended_signal: Condvar,
    parked_bytes: AtomicUsize,
}

impl LegacyProgress {
    /// Called once the legacy read has ended, successfully or not.
    pub fn finish(&self, succeeded: bool) {
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

/// What the join needs besides the two sides.
pub struct JoinContext<'a> {
    pub rules: Rules<'a>,
    /// The attributes a parked profile keeps: what the run reads from Auth0
    /// ([`crate::equality::attributes_read`]).
    pub kept: &'a [Field],
    pub filter: &'a ExportFilter,
    pub policy: &'a PushPolicy,
    pub orphans: OrphanAction,
    pub counters: &'a Counters,
}

/// New packed baseline sets, each with its legacy user id in one allocation
/// (`[id length: u32][id][packed set]`; an empty set forgets the user).
#[derive(Debug, Default)]
pub struct BaselineWrites(Vec<Box<[u8]>>);

impl BaselineWrites {
    pub fn push(&mut self, legacy_id: &str, packed: &[u8]) {
        let mut bytes = Vec::with_capacity(4 + legacy_id.len() + packed.len());
        bytes.extend_from_slice(&(legacy_id.len() as u32).to_le_bytes());
        bytes.extend_from_slice(legacy_id.as_bytes());
        bytes.extend_from_slice(packed);
        self.0.push(bytes.into_boxed_slice());
    }

    fn append(&mut self, other: &mut BaselineWrites) {
        self.0.append(&mut other.0);
    }

    /// The (legacy id, packed set) pairs in id order: SQLite then appends to its B-tree
    /// instead of splitting pages all over it.
    pub fn sorted(&mut self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.sort_unstable_by(|a, b| split(a).0.cmp(split(b).0));
        self.0.iter().map(|bytes| split(bytes))
    }
}

fn split(bytes: &[u8]) -> (&str, &[u8]) {
    let len = bytes
        .first_chunk::<4>()
        .map_or(0, |len| u32::from_le_bytes(*len) as usize);
    let id = bytes.get(4..4 + len).unwrap_or_default();
    // Only `push` writes, from a `&str`.
    (
        std::str::from_utf8(id).unwrap_or_default(),
        bytes.get(4 + len..).unwrap_or_default(),
    )
}

/// Moves every element of `from` into `into` a slice at a time, handing `from`'s memory back as
/// it goes: a plain `append` holds both copies of a worker's part at once (a hundred megabytes
/// more at the peak of a ten-million-user run). The order is not kept; both lists are sorted
/// later.
fn move_over<T>(into: &mut Vec<T>, from: &mut Vec<T>) {
    const SLICE: usize = 1 << 16;
    into.reserve(from.len());
    while !from.is_empty() {
        let rest = from.len().saturating_sub(SLICE);
        into.extend(from.drain(rest..));
        from.shrink_to_fit();
    }
}

#[derive(Default)]
pub struct Joined {
    pub summary: Summary,
    pub users: Vec<UserEntry>,
    pub planned: Vec<Push>,
    /// New baseline sets of the users whose set changed, when the caller collects them here
    /// (a full run keeps them in its [`LegacyTable`]); users with a planned push are not among
    /// them: their sets travel with the plan.
    pub baseline_changes: BaselineWrites,
    /// Auth0 users a push may change: migrated ones, and cached ones when the connection lets
    /// the API change their root attributes (the fraction guard's denominator).
    pub pushable_users: u64,
    /// Where the new baseline sets kept in the [`LegacyTable`] are.
    pub new_sets: Vec<NewSetRef>,
    /// Lines whose legacy row was not in yet, with their numbers.
    parked: Vec<(u64, Box<[u8]>)>,
    /// Auth0 users without a legacy row, classified once the join is over: their evidence
    /// (a set an earlier run stored) is found for all of them in one pass over the sets.
    without_row: Vec<WithoutRow>,
}

/// What the verdict on an Auth0 user without a legacy row needs; its id stays in the table
/// (no allocation per user on the workers: a thousand small ones each outlive the join in
/// their thread's heap).
#[derive(Debug, Clone, Copy)]
struct WithoutRow {
    at: MissingRef,
    migrated: bool,
    blocked: bool,
}

/// What every line is joined with.
#[derive(Clone, Copy)]
struct Sides<'a> {
    source_name: &'a str,
    table: &'a LegacyTable,
    context: &'a JoinContext<'a>,
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
type LineError = (u64, ReconcileError);

/// Streams the export past the legacy table; every Auth0 profile takes its legacy user out.
pub fn join(
    source_name: &str,
    input: impl BufRead,
    table: &LegacyTable,
    context: &JoinContext<'_>,
    legacy: &LegacyProgress,
) -> Result<Joined, ReconcileError> {
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
                    work(
                        source_name,
                        receiver,
                        &recycle,
                        table,
                        context,
                        legacy,
                        stop,
                    )
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
        return Err(ReconcileError::LegacyReadFailed);
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
    let mut with_set = 0;
    let untaken = table.untaken(|legacy_id, legacy, stored| {
        with_set += 1;
        let verdict = classify::classify(&context.rules, Some(&legacy), None, Some(stored));
        let auth0_id = format!("{}{legacy_id}", crate::profile::USER_ID_PREFIX);
        joined.record(&auth0_id, verdict, None, None);
    });
    joined.summary.not_migrated += untaken - with_set;
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
) -> Result<(), ReconcileError> {
    for result in results {
        match result {
            Ok(Ok(mut part)) => joined.merge(&mut part),
            Ok(Err(error)) => {
                if first_error.as_ref().is_none_or(|(line, _)| error.0 < *line) {
                    first_error = Some(error);
                }
            }
            Err(_) => {
                first_error = Some((0, ReconcileError::ThreadPanicked("join worker")));
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
            ReconcileError::from(ExportError::Line {
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
    source_name: &str,
    receiver: &Mutex<Receiver<Chunk>>,
    recycle: &std::sync::mpsc::Sender<Vec<u8>>,
    table: &LegacyTable,
    context: &JoinContext<'_>,
    legacy: &LegacyProgress,
    stop: &AtomicBool,
) -> Result<Joined, LineError> {
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
        let sides = Sides {
            source_name,
            table,
            context,
        };
        let phase = Phase::Streaming(legacy);
        let mut ahead: VecDeque<(u64, Auth0User<'_>)> = VecDeque::with_capacity(LOOKAHEAD + 1);
        let result = lines(&chunk.bytes)
            .zip(chunk.first_line..)
            .try_for_each(|(line, number)| {
                // Users ahead are joined before a bad line's error, so that the first error
                // in line order is the one reported.
                let user = match parse_user(&sides, number, line) {
                    Ok(Some(user)) => user,
                    Ok(None) => return Ok(()),
                    Err(error) => {
                        for (number, user) in ahead.drain(..) {
                            joined.join_user(&sides, number, &user, &mut taken, phase)?;
                        }
                        return Err(error);
                    }
                };
                table.prefetch(user.legacy_id);
                ahead.push_back((number, user));
                if ahead.len() > LOOKAHEAD
                    && let Some((number, user)) = ahead.pop_front()
                {
                    joined.join_user(&sides, number, &user, &mut taken, phase)?;
                }
                Ok(())
            })
            .and_then(|()| {
                ahead.drain(..).try_for_each(|(number, user)| {
                    joined.join_user(&sides, number, &user, &mut taken, phase)
                })
            });
        context
            .counters
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
    pub fn new() -> Joined {
        Joined::default()
    }

    fn merge(&mut self, other: &mut Joined) {
        self.summary.merge(&other.summary);
        move_over(&mut self.users, &mut other.users);
        self.planned.append(&mut other.planned);
        self.baseline_changes.append(&mut other.baseline_changes);
        self.pushable_users += other.pushable_users;
        move_over(&mut self.new_sets, &mut other.new_sets);
        self.parked.append(&mut other.parked);
        self.without_row.append(&mut other.without_row);
    }

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
        let (legacy_done, rejoin) = match phase {
            Phase::Streaming(legacy) => {
                // Enough held aside: from here on every profile waits for its row.
                if legacy.parked_bytes.load(Ordering::Relaxed) > PARK_LIMIT_BYTES && !legacy.wait()
                {
                    return Err((number, ReconcileError::LegacyReadFailed));
                }
                (legacy.is_done(), false)
            }
            Phase::Rejoin => (true, true),
        };
        let taken_as = table.take(user.legacy_id, taken, legacy_done, rejoin);
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
                blocked: matches!(
                    user.profile.get(Field::Blocked),
                    Some(crate::profile::Value::Bool(true))
                ),
            }),
            Taken::AlreadySeen => {
                return Err((
                    number,
                    ReconcileError::DuplicateAuth0User {
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
    fn classify_without_row(&mut self, context: &JoinContext<'_>, table: &LegacyTable) {
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
            profile.set(
                Field::Blocked,
                Some(crate::profile::Value::Bool(user.blocked)),
            );
            auth0_id.clear();
            auth0_id.push_str(crate::profile::USER_ID_PREFIX);
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
            let plan = (verdict.status == Status::Orphaned
                && context.orphans == OrphanAction::Block)
                .then(|| plan::block_orphan(auth0.auth0_id, auth0.legacy_id, &auth0.profile));
            self.record(auth0.auth0_id, verdict, plan, None);
        }
    }

    /// Classifies a user present on both sides and plans its push; returns the user's new
    /// baseline set, packed, when it changed and no push is planned (a planned user's set travels with
    /// its plan, to be written after the push).
    #[must_use]
    pub fn match_user(
        &mut self,
        context: &JoinContext<'_>,
        legacy: &LegacyView<'_>,
        stored: Option<PackedBaselines<'_>>,
        user: &Auth0User<'_>,
    ) -> Option<Box<[u8]>> {
        let stored = stored.unwrap_or_default();
        let verdict = classify::classify(&context.rules, Some(legacy), Some(user), Some(stored));
        let plan = (verdict.status == Status::Stranded).then(|| {
            let changed: Vec<&KeyValues> = verdict
                .legacy_changed
                .iter()
                .map(|&index| &verdict.keys[index])
                .collect();
            let ids = (user.auth0_id, user.legacy_id);
            plan::plan_user(
                ids,
                &changed,
                &legacy.profile,
                &user.profile,
                context.policy,
            )
        });
        let planned = plan.as_ref().is_some_and(Push::sends);
        let seen = baseline::Seen::of(user.migrated);
        let new_set = new_baselines(&verdict.keys, stored, context.rules.fields, seen);
        if planned {
            let set = new_set.unwrap_or_else(|| stored.0.into());
            self.record(user.auth0_id, verdict, plan, Some(set));
            None
        } else {
            self.record(user.auth0_id, verdict, plan, None);
            new_set
        }
    }

    /// Counts a verdict, lists the user when its status is listed, and keeps its plan.
    /// `baselines` is the set a planned push's keys are added to (`None`: nothing to write).
    pub fn record(
        &mut self,
        auth0_id: &str,
        verdict: Verdict,
        plan: Option<Push>,
        baselines: Option<Box<[u8]>>,
    ) {
        self.summary.count(verdict.status);
        if !verdict.status.is_listed() {
            return;
        }
        let mut needs_action = verdict.status.needs_action();
        let (state, error) = match &plan {
            Some(plan) if plan.sends() => (PushState::Planned, None),
            Some(plan) if !plan.refused.is_empty() => (
                PushState::Skipped,
                Some(format!(
                    "Auth0 does not accept {} for this user: change it in Auth0 by hand",
                    plan.refused
                        .iter()
                        .map(|field| field.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ),
            Some(_) => {
                // A plan with nothing to send: the change is already in effect (an orphan
                // that is blocked already).
                needs_action = false;
                (PushState::Skipped, None)
            }
            None => (PushState::Skipped, None),
        };
        self.users.push(UserEntry {
            user_id: auth0_id.to_owned(),
            status: verdict.status,
            origin: verdict.origin,
            fields: verdict.diffs,
            push: PushOutcome { state, error },
            needs_action,
        });
        if let Some(mut push) = plan.filter(Push::sends) {
            push.baselines = baselines;
            self.planned.push(push);
        }
    }
}

/// The user's new baseline set, packed, or `None` when the stored one stands: agreeing keys take the
/// agreed value, differing keys keep what is stored, metadata keys that neither side has any
/// more are forgotten.
fn new_baselines(
    keys: &[KeyValues],
    stored: PackedBaselines<'_>,
    fields: &[Field],
    seen: baseline::Seen,
) -> Option<Box<[u8]>> {
    if stored.is_empty() {
        // A user's first set (every user in a first run): the agreeing keys, packed straight
        // from the keys; a metadata key absent on both sides needs no baseline. Written even
        // with no agreeing key: the set is the evidence that the user was matched.
        let agreed = keys.iter().filter(|key| {
            let absent_metadata_key = key.legacy == baseline::no_value() && key.key.contains('.');
            key.legacy == key.auth0 && !absent_metadata_key
        });
        return Some(baseline::pack_pairs(
            seen,
            agreed.map(|key| (&*key.key, key.legacy)),
        ));
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
        if key.legacy == baseline::no_value() && key.key.contains('.') {
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
    (entries != before || stored.seen() != Some(seen)).then(|| baseline::pack(seen, &entries))
}

/// Whether the stored set already holds every agreeing key with its value and nothing to
/// forget: the common case of every run after the first, checked without allocating.
fn unchanged(keys: &[KeyValues], stored: PackedBaselines<'_>, fields: &[Field]) -> bool {
    let agreed_match = keys.iter().filter(|key| !key.differs()).all(|key| {
        let found = stored.find(&key.key);
        if key.legacy == baseline::no_value() && key.key.contains('.') {
            found.is_none()
        } else {
            found == Some(key.legacy)
        }
    });
    let nothing_stale = stored.iter().all(|(stored_key, _)| match stored_key {
        baseline::StoredKey::Metadata(field, _) if fields.contains(&field) => {
            keys.iter().any(|key| stored_key.is(&key.key))
        }
        _ => true,
    });
    agreed_match && nothing_stale
}

/// Moves the sets of planned users into the writes.
pub fn planned_baselines(planned: &[Push], writes: &mut BaselineWrites) {
    for user in planned {
        let Some(baselines) = &user.baselines else {
            continue;
        };
        writes.push(&user.legacy_id, baselines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MigratedRule;
    use crate::profile::LegacyRecordBuilder;

    fn line(id: u32, name: &str) -> String {
        format!(
            r#"{{"user_id":"auth0|{id}","name":"{name}","identities":[{{"connection":"db"}}]}}"#
        )
    }

    /// What a join context borrows: names compared, every profile migrated, names pushable.
    struct Parts {
        counters: Counters,
        filter: ExportFilter,
        policy: PushPolicy,
    }

    impl Parts {
        fn new() -> Parts {
            Parts {
                counters: Counters::default(),
                filter: ExportFilter {
                    connection: "db".into(),
                    migrated: MigratedRule::Always,
                },
                policy: PushPolicy {
                    import_mode: true,
                    root_attributes_refreshed: true,
                    migrated_fields: crate::push::plan::DEFAULT_MIGRATED_FIELDS.to_vec(),
                    legacy_has_email_verified: false,
                    pushed_email_verified: crate::config::PushedEmailVerified::False,
                    verify_email: false,
                },
            }
        }

        fn context(&self) -> JoinContext<'_> {
            JoinContext {
                rules: Rules {
                    fields: &[Field::Name],
                    connection_migrated: Some(true),
                    root_attributes_refreshed: true,
                },
                kept: &[Field::Name],
                filter: &self.filter,
                policy: &self.policy,
                orphans: OrphanAction::Report,
                counters: &self.counters,
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
        let table = LegacyTable::default();
        let progress = LegacyProgress::default();
        let parts = Parts::new();
        let context = parts.context();
        // Rows 1-3 are in before the export; 4-6 arrive while it is joined; 7 has no row.
        for id in 1..=3 {
            insert(&table, id, "Same");
        }
        let export: String = (1..=7)
            .map(|id| line(id, if id % 2 == 0 { "Old" } else { "Same" }) + "\n")
            .collect();
        let joined = std::thread::scope(|scope| {
            let joining =
                scope.spawn(|| join("test", export.as_bytes(), &table, &context, &progress));
            // The join cannot finish before the legacy side does.
            while progress.parked_bytes.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            assert!(!joining.is_finished());
            for id in 4..=6 {
                insert(&table, id, "Same");
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
            let migrated = crate::baseline::pack(crate::baseline::Seen::Migrated, &[]);
            let cached = crate::baseline::pack(crate::baseline::Seen::Cached, &[]);
            table.load_stored(|each| {
                each("7", &migrated);
                each("9", &migrated);
                each("10", &cached);
            });
            let progress = LegacyProgress::default();
            let parts = Parts::new();
            let context = parts.context();
            insert(&table, 1, "Same");
            let rest = |table: &LegacyTable| {
                for id in [9, 10, 12] {
                    insert(table, id, "Same");
                }
                progress.finish(true);
                table.forget_stored();
            };
            if legacy_first {
                rest(&table);
            }
            // 1 matches; 7 lost its row since a run matched it; 8 never had one.
            let export: String = [1, 7, 8].map(|id| line(id, "Same") + "\n").concat();
            let joined = std::thread::scope(|scope| {
                let joining =
                    scope.spawn(|| join("test", export.as_bytes(), &table, &context, &progress));
                if !legacy_first {
                    while progress.parked_bytes.load(Ordering::Relaxed) == 0 {
                        std::thread::yield_now();
                    }
                    rest(&table);
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
    fn move_over_moves_every_element_and_frees_the_source() {
        let mut into: Vec<u32> = (0..10).collect();
        let mut from: Vec<u32> = (10..200_000).collect();
        move_over(&mut into, &mut from);
        assert!(from.is_empty());
        assert_eq!(from.capacity(), 0);
        into.sort_unstable();
        assert_eq!(into, (0..200_000).collect::<Vec<_>>());
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
        let table = LegacyTable::default();
        let progress = LegacyProgress::default();
        progress.finish(false);
        let parts = Parts::new();
        let context = parts.context();
        let export = line(1, "x") + "\n";
        let Err(error) = join("test", export.as_bytes(), &table, &context, &progress) else {
            panic!("the join went on after the legacy read failed");
        };
        assert!(error.to_string().contains("legacy read failed"), "{error}");
    }
}
