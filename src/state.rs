//! The state file (SQLite at `state.path`): the runs, the per-user per-field baselines (a hash
//! of the last value both sides agreed on, or that driftsync pushed), and the push journal.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open. The file is
//! in WAL mode with `synchronous = FULL`, so a journal entry is on disk before its request
//! leaves: after a crash every push that may have been sent is still known.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
#[error("state file {path}: cannot {action}")]
pub struct StateError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: rusqlite::Error,
}

/// Each entry migrates the schema from its index to the next version.
const MIGRATIONS: &[&str] = &[
    // 0 → 1
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
];

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

/// Baseline hashes by legacy user id, then key (a field name, or `field.key` for metadata).
pub type Baselines = HashMap<String, Vec<(String, i64)>>;

/// One baseline to set (`Some`) or forget (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineChange {
    pub user_id: String,
    pub key: String,
    pub hash: Option<i64>,
}

pub struct StateStore {
    connection: Connection,
    path: PathBuf,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
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
        self.connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(self.error("switch to WAL mode"))?;
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
            self.connection
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {migration}; PRAGMA user_version = {next}; COMMIT;"
                ))
                .map_err(self.error("migrate the schema"))?;
        }
        Ok(())
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
                 ORDER BY finished_at DESC LIMIT 1",
                params![kind],
                |row| row.get(0),
            )
            .optional()
            .map_err(self.error("read the last run"))
    }

    /// The start of the last successful run of any kind: rows changed after it may be new to
    /// driftsync.
    pub fn watermark(&self) -> Result<Option<String>, StateError> {
        self.connection
            .query_row(
                "SELECT max(started_at) FROM runs WHERE outcome = 'success'",
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
                 ORDER BY finished_at DESC LIMIT 1",
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
        let mut statement = self
            .connection
            .prepare("SELECT user_id, key, hash FROM baselines")
            .map_err(self.error("read the baselines"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.error("read the baselines"))?;
        let mut baselines = Baselines::new();
        for row in rows {
            let (user_id, key, hash) = row.map_err(self.error("read the baselines"))?;
            baselines.entry(user_id).or_default().push((key, hash));
        }
        Ok(baselines)
    }

    /// Applies baseline changes in one transaction; returns how many rows changed.
    pub fn update_baselines(&mut self, changes: &[BaselineChange]) -> Result<usize, StateError> {
        let path = self.path.clone();
        let error = |action: &'static str| {
            let path = path.clone();
            move |source| StateError {
                path: path.clone(),
                action,
                source,
            }
        };
        let transaction = self
            .connection
            .transaction()
            .map_err(error("update the baselines"))?;
        let mut changed = 0;
        {
            let mut upsert = transaction
                .prepare_cached(
                    "INSERT INTO baselines (user_id, key, hash) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, key) DO UPDATE SET hash = excluded.hash",
                )
                .map_err(error("update the baselines"))?;
            let mut delete = transaction
                .prepare_cached("DELETE FROM baselines WHERE user_id = ?1 AND key = ?2")
                .map_err(error("update the baselines"))?;
            for change in changes {
                changed += match change.hash {
                    Some(hash) => upsert.execute(params![change.user_id, change.key, hash]),
                    None => delete.execute(params![change.user_id, change.key]),
                }
                .map_err(error("update the baselines"))?;
            }
        }
        transaction
            .commit()
            .map_err(error("update the baselines"))?;
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
    fn baselines_are_upserted_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(&dir.path().join("s.db")).unwrap();
        let change = |user: &str, key: &str, hash| BaselineChange {
            user_id: user.into(),
            key: key.into(),
            hash,
        };
        store
            .update_baselines(&[
                change("1", "email", Some(7)),
                change("1", "name", Some(8)),
                change("2", "email", Some(9)),
            ])
            .unwrap();
        store
            .update_baselines(&[change("1", "email", Some(70)), change("1", "name", None)])
            .unwrap();
        let baselines = store.baselines().unwrap();
        assert_eq!(baselines["1"], vec![("email".to_owned(), 70)]);
        assert_eq!(baselines["2"], vec![("email".to_owned(), 9)]);
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
