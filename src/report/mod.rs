//! The report of one run (docs/INTERFACE.md, "JSON report"): its model here, with the entry a
//! verdict and its push make ([`UserEntry::of`]); its three renderings in `render` (a table for
//! people, JSON and NDJSON for programs); its atomic file in `file` (a reader sees the old
//! report or the new one, never half of one).

mod file;
mod render;

pub use file::{PreparedFile, prepare_atomically, write_atomically};
pub use render::explain;

use serde::Serialize;

use crate::model::classify::{FieldDiff, Origin, Status, Verdict};
use crate::model::plan::Push;

pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Ndjson,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub run: RunInfo,
    pub summary: Summary,
    pub users: Vec<UserEntry>,
    /// What a reader of the table should know about this run's verdicts (the machine formats
    /// carry only the fixed keys of the interface).
    #[serde(skip)]
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub id: String,
    pub kind: &'static str,
    pub mode: &'static str,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub legacy_users: u64,
    pub auth0_users: u64,
    pub in_sync: u64,
    pub stranded: u64,
    pub auth0_ahead: u64,
    pub conflict: u64,
    pub stale_cache: u64,
    pub not_migrated: u64,
    pub orphaned: u64,
    pub deleted_in_auth0: u64,
    pub auth0_only: u64,
    pub pushed: u64,
    pub push_failed: u64,
}

impl Summary {
    pub fn count(&mut self, status: Status) {
        *self.slot(status) += 1;
    }

    /// Adds the counts of another part of the same run.
    pub fn merge(&mut self, other: &Summary) {
        self.legacy_users += other.legacy_users;
        self.auth0_users += other.auth0_users;
        self.in_sync += other.in_sync;
        self.stranded += other.stranded;
        self.auth0_ahead += other.auth0_ahead;
        self.conflict += other.conflict;
        self.stale_cache += other.stale_cache;
        self.not_migrated += other.not_migrated;
        self.orphaned += other.orphaned;
        self.deleted_in_auth0 += other.deleted_in_auth0;
        self.auth0_only += other.auth0_only;
        self.pushed += other.pushed;
        self.push_failed += other.push_failed;
    }

    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::InSync => self.in_sync,
            Status::Stranded => self.stranded,
            Status::Auth0Ahead => self.auth0_ahead,
            Status::Conflict => self.conflict,
            Status::StaleCache => self.stale_cache,
            Status::NotMigrated => self.not_migrated,
            Status::Orphaned => self.orphaned,
            Status::DeletedInAuth0 => self.deleted_in_auth0,
            Status::Auth0Only => self.auth0_only,
        }
    }

    fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::InSync => &mut self.in_sync,
            Status::Stranded => &mut self.stranded,
            Status::Auth0Ahead => &mut self.auth0_ahead,
            Status::Conflict => &mut self.conflict,
            Status::StaleCache => &mut self.stale_cache,
            Status::NotMigrated => &mut self.not_migrated,
            Status::Orphaned => &mut self.orphaned,
            Status::DeletedInAuth0 => &mut self.deleted_in_auth0,
            Status::Auth0Only => &mut self.auth0_only,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UserEntry {
    pub user_id: String,
    pub status: Status,
    pub origin: Option<Origin>,
    pub fields: Vec<FieldDiff>,
    pub push: PushOutcome,
    /// Whether this user still needs someone (exit code 2): stranded, conflict or orphaned, and
    /// not settled by a push (an orphan already blocked under `orphans = "block"` is settled).
    #[serde(skip)]
    pub needs_action: bool,
}

impl UserEntry {
    /// A listed user's entry: its verdict, and what becomes of the push planned for it — planned
    /// when it sends something; skipped, with the fields Auth0 does not accept named, when it
    /// cannot; settled (no action needed) when it has nothing left to send, as for an orphan
    /// that is blocked already.
    pub fn of(auth0_id: &str, verdict: Verdict, plan: Option<&Push>) -> UserEntry {
        let mut needs_action = verdict.status.needs_action();
        let (state, error) = match plan {
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
                needs_action = false;
                (PushState::Skipped, None)
            }
            None => (PushState::Skipped, None),
        };
        UserEntry {
            user_id: auth0_id.to_owned(),
            status: verdict.status,
            origin: verdict.origin,
            fields: verdict.diffs,
            push: PushOutcome { state, error },
            needs_action,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushState {
    /// A push would send (report mode) or is about to send this change.
    Planned,
    Applied,
    Failed,
    /// Nothing is sent for this user.
    Skipped,
    /// A saved plan's push not sent: the user changed since the plan was made.
    Superseded,
}

#[derive(Debug, Serialize)]
pub struct PushOutcome {
    pub state: PushState,
    pub error: Option<String>,
}

impl Report {
    /// Whether users that need action remain un-pushed (exit code 2).
    pub fn needs_action(&self) -> bool {
        self.users.iter().any(|user| user.needs_action)
    }
}
