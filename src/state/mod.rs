//! The state file (SQLite at `state.path`): the runs, the per-user per-field baselines (a hash
//! of the last value both sides agreed on, or that driftsync pushed), and the push journal.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open. Every
//! commit is durable (`synchronous = FULL`), so a journal entry is on disk before its request
//! leaves: after a crash every push that may have been sent is still known.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::baseline::{PackedBaselines, Seen, pack, pack_without_seen};
use crate::model::progress::Snapshot;
use chunks::ChunkTable;

mod chunks;

#[derive(Debug, thiserror::Error)]
#[error("state file {path}: cannot {action}")]
pub struct StateError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: rusqlite::Error,
}

/// One step of the schema, from its index to the next version.
enum Migration {
    Sql(&'static str),
    Code(fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>),
}

/// Each entry migrates the schema from its index to the next version.
const MIGRATIONS: &[Migration] = &[
    // 0 → 1
    Migration::Sql(
        "CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        mode TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT,
        summary TEXT
    );
    CREATE TABLE baselines (
        user_id TEXT NOT NULL,
        key TEXT NOT NULL,
        hash INTEGER NOT NULL,
        PRIMARY KEY (user_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('planned', 'applied', 'failed', 'superseded')),
        error TEXT,
        planned_at TEXT NOT NULL,
        resolved_at TEXT
    );
    CREATE INDEX journal_unresolved ON journal (state) WHERE state = 'planned';",
    ),
    // 1 → 2: one row per user with its baselines packed, instead of one row per key; a first
    // run writes ~8 times fewer rows.
    Migration::Code(pack_baselines_per_user),
    // 2 → 3: keys as field tags instead of names (see `PackedBaselines`): sets half the size.
    Migration::Code(repack_baselines_with_tags),
    // 3 → 4: the sets of neighbouring users packed together (see `chunks`): a first run
    // writes a row per few dozen users instead of one per user.
    Migration::Code(chunk_baselines),
    // 4 → 5: sets written from now on start with what the run saw of the user (see
    // `baseline::Seen`), and usernames compare case-insensitively: username baselines hashed
    // with capitals would match neither side any more, so they are dropped (the timestamp
    // rule stands in until the next run agrees again).
    Migration::Code(forget_username_baselines),
    // 5 → 6: indexes for pruning (`StateStore::prune`): finished journal entries by when they
    // ended, runs by when they started.
    Migration::Sql(
        "CREATE INDEX journal_resolved ON journal (resolved_at) WHERE state <> 'planned';
         CREATE INDEX runs_started ON runs (started_at);",
    ),
    // 6 → 7: the migration's progress as each successful full run saw it
    // (`model::progress::Snapshot`, JSON), for `driftsync progress` and `cutover`; pruned with
    // its run.
    Migration::Sql(
        "CREATE TABLE run_progress (
            run_id TEXT PRIMARY KEY,
            finished_at TEXT NOT NULL,
            snapshot TEXT NOT NULL
        );
        CREATE INDEX run_progress_finished ON run_progress (finished_at);",
    ),
];

fn forget_username_baselines(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let mut rewritten: Vec<(String, Box<[u8]>)> = Vec::new();
    {
        let mut select =
            transaction.prepare("SELECT body FROM baseline_chunks ORDER BY first_id")?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let body: Vec<u8> = row.get(0)?;
            for user in chunks::users(&body) {
                let (id, set) = user?;
                let set = PackedBaselines(set);
                if set.find("username").is_none() {
                    continue;
                }
                let kept: Vec<(String, i64)> = set
                    .entries()
                    .into_iter()
                    .filter(|(key, _)| key != "username")
                    .collect();
                // The set stays, even empty: it is the evidence that a run matched the user.
                rewritten.push((id.to_owned(), pack(Seen::Unknown, &kept)));
            }
        }
    }
    if rewritten.is_empty() {
        return Ok(());
    }
    ChunkTable::new(transaction)?
        .write(rewritten.iter().map(|(id, set)| (id.as_str(), &set[..])))
        .map(|_| ())
}

fn chunk_baselines(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    transaction.execute_batch(
        "CREATE TABLE baseline_chunks (
            first_id TEXT PRIMARY KEY,
            users INTEGER NOT NULL,
            body BLOB NOT NULL
        ) WITHOUT ROWID",
    )?;
    {
        let mut select =
            transaction.prepare("SELECT user_id, packed FROM user_baselines ORDER BY user_id")?;
        let mut rows = select.query([])?;
        let mut users = Vec::new();
        while let Some(row) = rows.next()? {
            users.push((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?));
        }
        ChunkTable::new(transaction)?
            .write(users.iter().map(|(id, set)| (id.as_str(), set.as_slice())))?;
    }
    transaction.execute_batch("DROP TABLE user_baselines")
}

fn repack_baselines_with_tags(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let mut rows = Vec::new();
    {
        let mut select = transaction.prepare("SELECT user_id, packed FROM user_baselines")?;
        let mut query = select.query([])?;
        while let Some(row) = query.next()? {
            rows.push((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?));
        }
    }
    let mut update =
        transaction.prepare("UPDATE user_baselines SET packed = ?2 WHERE user_id = ?1")?;
    for (user_id, old) in rows {
        update.execute(params![user_id, pack_without_seen(&unpack_v2(&old))])?;
    }
    Ok(())
}

fn pack_baselines_per_user(transaction: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    transaction.execute_batch(
        "CREATE TABLE user_baselines (user_id TEXT PRIMARY KEY, packed BLOB NOT NULL) WITHOUT ROWID",
    )?;
    let mut grouped: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    {
        let mut rows = transaction.prepare("SELECT user_id, key, hash FROM baselines")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            grouped
                .entry(row.get(0)?)
                .or_default()
                .push((row.get(1)?, row.get(2)?));
        }
    }
    {
        // Written in the version-2 form; the next step re-packs it.
        let mut insert =
            transaction.prepare("INSERT INTO user_baselines (user_id, packed) VALUES (?1, ?2)")?;
        for (user_id, entries) in grouped {
            insert.execute(params![user_id, pack_v2(&entries)])?;
        }
    }
    transaction.execute_batch("DROP TABLE baselines")
}

/// What [`StateStore::prune`] deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub journal: u64,
    pub runs: u64,
    /// False when the time budget ran out first.
    pub complete: bool,
}

/// How a journal entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalState {
    Planned,
    Applied,
    Failed,
    /// Not sent (or not in effect) when found after a crash; re-planned from fresh data.
    Superseded,
}

impl JournalState {
    fn as_str(self) -> &'static str {
        match self {
            JournalState::Planned => "planned",
            JournalState::Applied => "applied",
            JournalState::Failed => "failed",
            JournalState::Superseded => "superseded",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub id: i64,
    pub run_id: String,
    pub user_id: String,
    pub body: String,
}

/// One row of the runs table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub kind: String,
    pub outcome: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// Every user's baselines as stored: one packed blob per legacy user id (see [`pack`]), so
/// that a million users cost a few tens of megabytes, decoded only when a user is compared.
#[derive(Debug, Default)]
pub struct Baselines {
    users: HashMap<Box<str>, Box<[u8]>, foldhash::fast::RandomState>,
}

impl Baselines {
    /// A user's baselines: (key, hash) pairs, keys as in [`crate::model::baseline`].
    pub fn get(&self, user_id: &str) -> Option<PackedBaselines<'_>> {
        self.users
            .get(user_id)
            .map(|packed| PackedBaselines(packed))
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Encodes a version-2 set (see [`unpack_v2`]); only the 1 → 2 migration writes one.
fn pack_v2(entries: &[(String, i64)]) -> Vec<u8> {
    let mut packed = Vec::new();
    for (key, hash) in entries {
        let bytes = &key.as_bytes()[..key.len().min(usize::from(u16::MAX))];
        packed.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        packed.extend_from_slice(bytes);
        packed.extend_from_slice(&hash.to_le_bytes());
    }
    packed
}

/// Decodes a version-2 set: per pair a little-endian u16 key length, the key, 8 bytes of hash.
fn unpack_v2(mut packed: &[u8]) -> Vec<(String, i64)> {
    let mut entries = Vec::new();
    while let Some((length, rest)) = packed.split_first_chunk::<2>() {
        let length = usize::from(u16::from_le_bytes(*length));
        let Some((key, rest)) = rest.split_at_checked(length) else {
            break;
        };
        let Some((hash, rest)) = rest.split_first_chunk::<8>() else {
            break;
        };
        entries.push((
            String::from_utf8_lossy(key).into_owned(),
            i64::from_le_bytes(*hash),
        ));
        packed = rest;
    }
    entries
}

pub struct StateStore {
    connection: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        // SQLite would create the file 0644, and its journal with the file's mode: created here
        // first, both are private (see `private_file`).
        if let Err(error) = crate::private_file::create_if_missing(path) {
            tracing::debug!(%error, path = %path.display(), "cannot pre-create the state file");
        }
        let connection = Connection::open(path).map_err(|source| StateError {
            path: path.to_owned(),
            action: "open it",
            source,
        })?;
        let store = StateStore {
            connection,
            path: path.to_owned(),
        };
        store.setup()?;
        Ok(store)
    }

    fn error(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| StateError {
            path: self.path.clone(),
            action,
            source,
        }
    }

    fn setup(&self) -> Result<(), StateError> {
        self.connection
            .busy_timeout(Duration::from_secs(10))
            .map_err(self.error("set a busy timeout"))?;
        // Larger pages for a new file (an existing one keeps its own): a first run appends a
        // row per user, and 16 KiB pages make a quarter of the pages and B-tree splits.
        self.connection
            .pragma_update(None, "page_size", 16384)
            .map_err(self.error("set the page size"))?;
        // A rollback journal, not WAL: a run's baseline write is one large transaction (73 MB
        // at a million users, 740 MB at ten million), which WAL writes twice — into the log,
        // then into the file at the checkpoint — and SQLite's own advice is a rollback journal
        // beyond about 100 MB. Pages a first run appends are not journaled at all. The small
        // commits of the push journal cost a few more fsyncs each, far below any API rate.
        self.connection
            .pragma_update(None, "journal_mode", "TRUNCATE")
            .map_err(self.error("set the journal mode"))?;
        self.connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(self.error("set synchronous = FULL"))?;
        let version: i64 = self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(self.error("read the schema version"))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StateError {
                path: self.path.clone(),
                action: "use it",
                source: rusqlite::Error::InvalidParameterName(format!(
                    "schema version {version} is newer than this driftsync knows ({known}); use a newer driftsync"
                )),
            });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let next = index as i64 + 1;
            let transaction = self
                .connection
                .unchecked_transaction()
                .map_err(self.error("migrate the schema"))?;
            match migration {
                Migration::Sql(sql) => transaction.execute_batch(sql),
                Migration::Code(step) => step(&transaction),
            }
            .and_then(|()| transaction.pragma_update(None, "user_version", next))
            .and_then(|()| transaction.commit())
            .map_err(self.error("migrate the schema"))?;
        }
        Ok(())
    }

    /// Deletes journal entries that ended before `journal_before` (a `planned` entry, which
    /// recovery needs, never goes) and runs that started before `runs_before` (except the last
    /// successful run of each kind, which later runs build on), in batches, until done or
    /// `budget` is spent; what is left goes at the next prune. Times are RFC 3339 UTC, as the
    /// file stores them.
    pub fn prune(
        &self,
        journal_before: &str,
        runs_before: &str,
        budget: Duration,
    ) -> Result<Pruned, StateError> {
        const BATCH: usize = 10_000;
        let started = std::time::Instant::now();
        let steps = [
            "DELETE FROM journal WHERE id IN (SELECT id FROM journal
               WHERE state <> 'planned' AND resolved_at < ?1 LIMIT ?2)",
            "DELETE FROM runs WHERE id IN (SELECT id FROM runs AS r
               WHERE started_at < ?1
                 AND NOT (coalesce(outcome, '') = 'success' AND NOT EXISTS (
                   SELECT 1 FROM runs AS newer WHERE newer.kind = r.kind
                     AND newer.outcome = 'success' AND newer.finished_at > r.finished_at))
               LIMIT ?2)",
        ];
        let mut deleted = [0u64; 2];
        let mut complete = true;
        'steps: for (step, (sql, before)) in
            steps.iter().zip([journal_before, runs_before]).enumerate()
        {
            loop {
                let batch = self
                    .connection
                    .execute(sql, params![before, BATCH as i64])
                    .map_err(self.error("prune old entries"))?;
                deleted[step] += batch as u64;
                if batch < BATCH {
                    break;
                }
                if started.elapsed() >= budget {
                    complete = false;
                    break 'steps;
                }
            }
        }
        // A run's progress goes with its run (a row a day at most: no batches needed).
        self.connection
            .execute(
                "DELETE FROM run_progress WHERE run_id NOT IN (SELECT id FROM runs)",
                [],
            )
            .map_err(self.error("prune old entries"))?;
        Ok(Pruned {
            journal: deleted[0],
            runs: deleted[1],
            complete,
        })
    }

    /// Keeps what a successful full run found of the migration's progress.
    pub fn record_progress(&self, run_id: &str, snapshot: &Snapshot) -> Result<(), StateError> {
        let text = serde_json::to_string(snapshot).unwrap_or_default();
        self.connection
            .execute(
                "INSERT OR REPLACE INTO run_progress (run_id, finished_at, snapshot)
                 VALUES (?1, ?2, ?3)",
                params![run_id, snapshot.at, text],
            )
            .map(|_| ())
            .map_err(self.error("record the migration's progress"))
    }

    /// Every recorded progress snapshot, oldest first (one that does not read back, from a
    /// damaged or newer file, is skipped).
    pub fn progress_history(&self) -> Result<Vec<Snapshot>, StateError> {
        let mut statement = self
            .connection
            .prepare("SELECT snapshot FROM run_progress ORDER BY finished_at, rowid")
            .map_err(self.error("read the migration's progress"))?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(self.error("read the migration's progress"))?;
        let mut history = Vec::new();
        for row in rows {
            let text = row.map_err(self.error("read the migration's progress"))?;
            match serde_json::from_str(&text) {
                Ok(snapshot) => history.push(snapshot),
                Err(error) => {
                    tracing::warn!(%error, "skipping a progress record that does not read back")
                }
            }
        }
        Ok(history)
    }

    pub fn start_run(
        &self,
        id: &str,
        kind: &str,
        mode: &str,
        started_at: &str,
    ) -> Result<(), StateError> {
        self.connection
            .execute(
                "INSERT INTO runs (id, kind, mode, started_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, kind, mode, started_at],
            )
            .map(|_| ())
            .map_err(self.error("record the run"))
    }

    pub fn finish_run(
        &self,
        id: &str,
        outcome: &str,
        finished_at: &str,
        summary: &str,
    ) -> Result<(), StateError> {
        self.connection
            .execute(
                "UPDATE runs SET outcome = ?2, finished_at = ?3, summary = ?4 WHERE id = ?1",
                params![id, outcome, finished_at, summary],
            )
            .map(|_| ())
            .map_err(self.error("record the end of the run"))
    }

    /// The `finished_at` of the last successful run of `kind`.
    pub fn last_success(&self, kind: &str) -> Result<Option<String>, StateError> {
        self.connection
            .query_row(
                "SELECT finished_at FROM runs WHERE kind = ?1 AND outcome = 'success'
                 ORDER BY finished_at DESC, rowid DESC LIMIT 1",
                params![kind],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.error("read the last run"))
    }

    /// The start of the last successful full or changes run: rows changed after it may be new
    /// to driftsync (a one-user `explain --push` read one row only, and moves nothing).
    pub fn watermark(&self) -> Result<Option<String>, StateError> {
        self.connection
            .query_row(
                "SELECT max(started_at) FROM runs
                 WHERE outcome = 'success' AND kind IN ('full', 'changes')",
                [],
                |row| row.get(0),
            )
            .map_err(self.error("read the watermark"))
    }

    /// The summary (JSON) of the last successful full run.
    pub fn last_full_summary(&self) -> Result<Option<String>, StateError> {
        self.connection
            .query_row(
                "SELECT summary FROM runs WHERE kind = 'full' AND outcome = 'success'
                 ORDER BY finished_at DESC, rowid DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.error("read the last full run"))
    }

    /// Every run, oldest first: (id, kind, outcome, started_at, finished_at).
    pub fn runs(&self) -> Result<Vec<RunRow>, StateError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, kind, outcome, started_at, finished_at FROM runs ORDER BY started_at",
            )
            .map_err(self.error("read the runs"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(RunRow {
                    id: row.get(0)?,
                    kind: row.get(1)?,
                    outcome: row.get(2)?,
                    started_at: row.get(3)?,
                    finished_at: row.get(4)?,
                })
            })
            .map_err(self.error("read the runs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.error("read the runs"))
    }

    pub fn baselines(&self) -> Result<Baselines, StateError> {
        let mut users = HashMap::default();
        self.for_each_baseline(|user_id, packed| {
            users.insert(user_id.into(), packed.into());
        })?;
        Ok(Baselines { users })
    }

    /// The stored sets of the given users only (a changes run's few users).
    pub fn baselines_of<'a>(
        &self,
        user_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Baselines, StateError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT body FROM baseline_chunks WHERE first_id <= ?1 ORDER BY first_id DESC LIMIT 1",
            )
            .map_err(self.error("read the baselines"))?;
        let mut users = HashMap::default();
        for user_id in user_ids {
            let body: Option<Vec<u8>> = statement
                .query_row(params![user_id], |row| row.get(0))
                .optional()
                .map_err(self.error("read the baselines"))?;
            for user in chunks::users(body.as_deref().unwrap_or_default()) {
                let (id, packed) = user
                    .map_err(rusqlite::Error::from)
                    .map_err(self.error("read the baselines"))?;
                if id == user_id {
                    users.insert(user_id.into(), packed.into());
                    break;
                }
            }
        }
        Ok(Baselines { users })
    }

    /// Calls `each` with every stored set, in user id order, without collecting them.
    pub fn for_each_baseline(&self, mut each: impl FnMut(&str, &[u8])) -> Result<(), StateError> {
        let mut statement = self
            .connection
            .prepare("SELECT body FROM baseline_chunks ORDER BY first_id")
            .map_err(self.error("read the baselines"))?;
        let mut rows = statement
            .query([])
            .map_err(self.error("read the baselines"))?;
        while let Some(row) = rows.next().map_err(self.error("read the baselines"))? {
            let body = row
                .get_ref(0)
                .and_then(|value| Ok(value.as_blob()?))
                .map_err(self.error("read the baselines"))?;
            for user in chunks::users(body) {
                let (user_id, packed) = user
                    .map_err(rusqlite::Error::from)
                    .map_err(self.error("read the baselines"))?;
                each(user_id, packed);
            }
        }
        Ok(())
    }

    /// Replaces users' baseline sets in one transaction (an empty set forgets the user);
    /// `writes` must be in user id order. Returns how many users changed.
    pub fn write_baselines<'a>(
        &mut self,
        writes: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<usize, StateError> {
        let path = self.path.clone();
        let error = |source| StateError {
            path: path.clone(),
            action: "update the baselines",
            source,
        };
        let transaction = self.connection.transaction().map_err(error)?;
        let changed = ChunkTable::new(&transaction)
            .and_then(|mut chunks| chunks.write(writes))
            .map_err(error)?;
        transaction.commit().map_err(error)?;
        Ok(changed)
    }

    /// Records a push before it is sent; the entry is on disk when this returns.
    pub fn journal_plan(
        &self,
        run_id: &str,
        user_id: &str,
        body: &str,
        at: &str,
    ) -> Result<i64, StateError> {
        self.connection
            .execute(
                "INSERT INTO journal (run_id, user_id, body, state, planned_at) VALUES (?1, ?2, ?3, 'planned', ?4)",
                params![run_id, user_id, body, at],
            )
            .map_err(self.error("journal a planned push"))?;
        Ok(self.connection.last_insert_rowid())
    }

    pub fn journal_resolve(
        &self,
        id: i64,
        state: JournalState,
        error: Option<&str>,
        at: &str,
    ) -> Result<(), StateError> {
        self.connection
            .execute(
                "UPDATE journal SET state = ?2, error = ?3, resolved_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), error, at],
            )
            .map(|_| ())
            .map_err(self.error("journal a push outcome"))
    }

    /// Entries planned but never resolved: the process stopped while they were in flight.
    pub fn unresolved(&self) -> Result<Vec<JournalEntry>, StateError> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, run_id, user_id, body FROM journal WHERE state = 'planned' ORDER BY id",
            )
            .map_err(self.error("read the journal"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(JournalEntry {
                    id: row.get(0)?,
                    run_id: row.get(1)?,
                    user_id: row.get(2)?,
                    body: row.get(3)?,
                })
            })
            .map_err(self.error("read the journal"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.error("read the journal"))
    }

    /// Journal entries by state, for tests and `check`.
    pub fn journal_counts(&self) -> Result<HashMap<String, u64>, StateError> {
        let mut statement = self
            .connection
            .prepare("SELECT state, count(*) FROM journal GROUP BY state")
            .map_err(self.error("read the journal"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })
            .map_err(self.error("read the journal"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.error("read the journal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_created_once_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = StateStore::open(&path).unwrap();
            store
                .start_run("r1", "full", "report", "2026-01-01T00:00:00Z")
                .unwrap();
            store
                .finish_run("r1", "success", "2026-01-01T00:01:00Z", "{}")
                .unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        assert_eq!(
            store.last_success("full").unwrap().as_deref(),
            Some("2026-01-01T00:01:00Z")
        );
        assert_eq!(store.last_success("changes").unwrap(), None);
    }

    #[test]
    fn baselines_are_written_per_user_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("s.db")).unwrap();
        let one = pack(
            Seen::Migrated,
            &[("email".into(), 7), ("user_metadata.lang".into(), -8)],
        );
        let two = pack(Seen::Migrated, &[("email".into(), 9)]);
        store.write_baselines([("1", &*one), ("2", &*two)]).unwrap();
        store.write_baselines([("2", &[][..])]).unwrap();
        let baselines = store.baselines().unwrap();
        assert_eq!(
            baselines.get("1").unwrap().entries(),
            vec![
                ("email".to_owned(), 7),
                ("user_metadata.lang".to_owned(), -8)
            ]
        );
        assert_eq!(baselines.get("2"), None);
        assert_eq!(baselines.len(), 1);
    }

    #[test]
    fn a_version_1_file_is_migrated_with_its_baselines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let connection = Connection::open(&path).unwrap();
            let Migration::Sql(v1) = &MIGRATIONS[0] else {
                panic!("version 1 is SQL")
            };
            connection.execute_batch(v1).unwrap();
            connection
                .execute_batch(
                    "INSERT INTO baselines VALUES ('1', 'email', 5), ('1', 'name', 6), ('2', 'email', 7),
                         ('2', 'username', 8), ('3', 'username', 9);
                     PRAGMA user_version = 1;",
                )
                .unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        let baselines = store.baselines().unwrap();
        let mut one = baselines.get("1").unwrap().entries();
        one.sort();
        assert_eq!(one, vec![("email".to_owned(), 5), ("name".to_owned(), 6)]);
        // Username baselines are dropped (usernames now ignore case); the sets stay, as the
        // evidence that a run matched the users, without knowing how.
        let two = baselines.get("2").unwrap();
        assert_eq!(two.entries(), vec![("email".to_owned(), 7)]);
        let three = baselines
            .get("3")
            .expect("a set emptied by the migration stays");
        assert_eq!(three.entries(), vec![]);
        for set in [baselines.get("1").unwrap(), two, three] {
            assert_eq!(set.seen(), Some(Seen::Unknown));
        }
    }

    #[test]
    fn prune_keeps_planned_entries_recent_ones_and_the_last_success_of_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("s.db")).unwrap();
        let old = "2020-01-01T00:00:00.000000Z";
        let new = "2026-11-01T00:00:00.000000Z";
        let cutoff = "2026-01-01T00:00:00.000000Z";
        let old_applied = store.journal_plan("r1", "auth0|1", "{}", old).unwrap();
        store
            .journal_resolve(old_applied, JournalState::Applied, None, old)
            .unwrap();
        let old_failed = store.journal_plan("r1", "auth0|2", "{}", old).unwrap();
        store
            .journal_resolve(old_failed, JournalState::Failed, Some("x"), old)
            .unwrap();
        store.journal_plan("r1", "auth0|3", "{}", old).unwrap(); // planned, any age
        let recent = store.journal_plan("r2", "auth0|4", "{}", new).unwrap();
        store
            .journal_resolve(recent, JournalState::Applied, None, new)
            .unwrap();
        for (id, kind, outcome, at) in [
            (
                "old-full-1",
                "full",
                Some("success"),
                "2019-01-01T00:00:00.000000Z",
            ),
            ("old-full-2", "full", Some("success"), old),
            ("old-changes", "changes", Some("success"), old),
            ("old-failed", "full", Some("failed"), old),
            ("old-crashed", "full", None, old),
            ("new-changes", "changes", Some("success"), new),
        ] {
            store.start_run(id, kind, "report", at).unwrap();
            if let Some(outcome) = outcome {
                store.finish_run(id, outcome, at, "{}").unwrap();
            }
        }

        let pruned = store.prune(cutoff, cutoff, Duration::from_secs(5)).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                journal: 2,
                runs: 4,
                complete: true
            }
        );
        let unresolved = store.unresolved().unwrap();
        assert_eq!(unresolved.len(), 1);
        assert_eq!(unresolved[0].user_id, "auth0|3");
        assert_eq!(store.journal_counts().unwrap().get("applied"), Some(&1));
        let runs: Vec<String> = store
            .runs()
            .unwrap()
            .into_iter()
            .map(|run| run.id)
            .collect();
        // The last successful full run stays however old: changes runs and the push guard
        // build on it. The old changes run goes: a newer one succeeded.
        assert_eq!(runs, ["old-full-2", "new-changes"]);
        assert_eq!(store.last_success("full").unwrap().as_deref(), Some(old));
        // Nothing left: a second prune deletes nothing.
        let again = store.prune(cutoff, cutoff, Duration::ZERO).unwrap();
        assert_eq!((again.journal, again.runs), (0, 0));
    }

    #[test]
    fn the_state_file_and_its_journal_are_private_and_an_open_one_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = StateStore::open(&path).unwrap();
        let id = store.journal_plan("r", "auth0|1", "{}", "t").unwrap();
        store
            .journal_resolve(id, JournalState::Applied, None, "t")
            .unwrap();
        drop(store);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        // TRUNCATE keeps the rollback journal beside the file after the first write.
        let journal = dir.path().join("s.db-journal");
        assert_eq!(mode(&journal), 0o600);
        let warning = crate::private_file::state_file_warning(&path, 0o644);
        assert!(warning.contains("chmod 600"), "{warning}");
        assert!(warning.contains(&path.display().to_string()), "{warning}");
    }

    #[test]
    fn unresolved_journal_entries_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let store = StateStore::open(&path).unwrap();
            let a = store.journal_plan("r1", "auth0|1", "{}", "t").unwrap();
            store
                .journal_plan("r1", "auth0|2", "{\"name\":\"x\"}", "t")
                .unwrap();
            store
                .journal_resolve(a, JournalState::Applied, None, "t")
                .unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        let open = store.unresolved().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].user_id, "auth0|2");
        assert_eq!(store.journal_counts().unwrap()["applied"], 1);
    }
}
