//! The combined streaming pass: joins the legacy rows with Auth0's profiles by user id and
//! classifies every user, in the memory layout a ten-million-user run needs. This file is its
//! one entry point; nothing outside `engine/` sees a table, an index, a thread or a packed set,
//! so the layout can change without touching anything else.
//!
//! - A **full** pass ([`FullPass`]): the stored baselines are loaded, the legacy rows stream
//!   into a table ([`LegacyRows`]) while, on other threads, the export streams past it
//!   ([`ExportSide::join`]); a profile whose row has not arrived yet is parked and joined once
//!   every row is in. [`FullPass::finish`] turns the result into a [`Classified`].
//! - A **changes** pass ([`ChangedUsers`]): a handful of users, each given with both sides.
//!
//! Either way the run gets a [`Classified`]: the summary, the listed users sorted by id, the
//! planned pushes, and the new baseline sets ([`BaselineWrites`]), written once the push phase
//! has recorded what it applied.
//!
//! Inside: `table` and `index` (the legacy side's arena and its lock-free index), `pass` (the
//! producer and worker threads, parking on a condition variable), `joined` (one thread's
//! share of the verdicts), `writes` (the sets to write, in id order), `progress` (the counters
//! and the progress line).

mod index;
mod joined;
mod pass;
mod progress;
mod table;
mod writes;

use std::io::BufRead;
use std::sync::Arc;

use crate::model::baseline::PackedBaselines;
use crate::model::classify::{self, Rules};
use crate::model::plan::{OrphanAction, Push, PushPolicy};
use crate::model::profile::{Auth0User, Field, LegacyView, USER_ID_PREFIX};
use crate::model::progress::Examples;
use crate::report::{Summary, UserEntry};
use crate::sources::export::{ExportError, ExportFilter};
use crate::sources::legacy::LegacyError;

pub use joined::Joined;
pub use progress::{Counters, Ticker, rss_mib};
pub use writes::BaselineWrites;

use pass::Shared;
use table::{InsertBehind, LegacyTable, Refused};

/// Why a pass stopped. Each names the line or the part that failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An export line that cannot be read or is not a user (the line is named).
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("Auth0 export line {line}: user {user_id:?} appears more than once in the export")]
    DuplicateAuth0User { line: u64, user_id: String },
    /// The legacy side failed while the export was joined; its own error is the one to
    /// report, this only stops the join.
    #[error("the legacy read failed while the export was joined")]
    LegacyReadFailed,
    /// One of the pass's threads panicked: a bug, never bad input.
    #[error(
        "the {0} stopped unexpectedly (a bug in driftsync: please report it with the log above)"
    )]
    ThreadPanicked(&'static str),
    /// The pass was finished while one of its sides still held the table: a bug.
    #[error("internal error: {0} (a bug in driftsync: please report it with the log above)")]
    Internal(&'static str),
}

/// What every user is classified with.
pub struct Context<'a> {
    pub rules: Rules<'a>,
    /// The attributes a parked profile keeps: what the run reads from Auth0
    /// ([`crate::model::equality::attributes_read`]).
    pub kept: &'a [Field],
    pub filter: &'a ExportFilter,
    pub policy: &'a PushPolicy,
    pub orphans: OrphanAction,
    /// Keep each push's review data (`saved_plan::Review`): a plan is saved or applied.
    pub review: bool,
}

/// What a pass found.
pub struct Classified {
    pub summary: Summary,
    /// The listed users, sorted by Auth0 user id.
    pub users: Vec<UserEntry>,
    /// The planned pushes; the push phase records in each what it applied.
    pub pushes: Vec<Push>,
    /// Auth0 users a push may change: migrated ones, and cached ones when the connection lets
    /// the API change their root attributes (the fraction guard's denominator of a full run).
    pub pushable_users: u64,
    /// The new baseline sets besides those of the pushes; see [`BaselineWrites::write`].
    pub baselines: BaselineWrites,
    /// Legacy users matched with a migrated Auth0 profile.
    pub migrated: u64,
    /// A few ids of the not-migrated users (the listed statuses are in `users`).
    pub examples: Examples,
    /// The not-migrated users by inactivity ([`crate::model::progress::INACTIVITY_BUCKETS`]),
    /// when the pass was asked to count them.
    pub inactivity: Option<[u64; 6]>,
}

/// A full pass over both sides.
pub struct FullPass {
    shared: Arc<Shared>,
}

impl FullPass {
    /// A pass sized for about `estimated_rows` legacy rows, with the stored baseline sets
    /// loaded: `stored` calls its argument once per stored (legacy id, packed set).
    pub fn new<E>(
        estimated_rows: Option<u64>,
        stored: impl FnOnce(&mut dyn FnMut(&str, &[u8])) -> Result<(), E>,
    ) -> Result<FullPass, E> {
        let mut table =
            estimated_rows.map_or_else(LegacyTable::default, LegacyTable::with_capacity);
        let mut read = Ok(());
        table.load_stored(|each| read = stored(each));
        read?;
        Ok(FullPass {
            shared: Arc::new(Shared::new(table)),
        })
    }

    /// Also counts the not-migrated users by inactivity (`last_active_at`), as of `now`
    /// (microseconds). Called before either side starts.
    pub fn count_inactivity(&mut self, now: i64) {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.inactivity_at = Some(now);
        }
    }

    /// The counters the progress line shows.
    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Where the legacy rows go, in the order the query returns them.
    pub fn legacy_rows(&self) -> LegacyRows<'_> {
        LegacyRows {
            rows: InsertBehind::new(&self.shared.table),
            shared: &self.shared,
            users: 0,
        }
    }

    /// The export's side of the pass, to be run on a thread of its own.
    pub fn export_side(&self) -> ExportSide {
        ExportSide {
            shared: self.shared.clone(),
        }
    }

    /// The pass's result, once both sides are done: the users sorted by id, the table's new
    /// sets gathered with the collected ones.
    pub fn finish(self, joined: Joined) -> Result<Classified, EngineError> {
        let shared = Arc::try_unwrap(self.shared).map_err(|_| {
            EngineError::Internal("the legacy table is still shared after the join")
        })?;
        let mut joined = joined;
        let new_sets = std::mem::take(&mut joined.new_sets);
        let table_sets = shared.table.into_new_baselines(new_sets);
        joined.baseline_changes.add_table_sets(table_sets);
        Ok(classified(joined, true))
    }
}

/// A pass's result, its users sorted by id; with `sort_table_sets`, the table's baseline sets
/// are sorted meanwhile on another thread (the two sorts of a large run, side by side).
fn classified(joined: Joined, sort_table_sets: bool) -> Classified {
    let Joined {
        summary,
        mut users,
        planned,
        mut baseline_changes,
        pushable_users,
        migrated,
        examples,
        inactivity,
        ..
    } = joined;
    std::thread::scope(|scope| {
        if sort_table_sets {
            scope.spawn(|| baseline_changes.sort_table_sets());
        }
        users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    });
    Classified {
        summary,
        users,
        pushes: planned,
        pushable_users,
        baselines: baseline_changes,
        migrated,
        examples,
        inactivity,
    }
}

/// The legacy side of a full pass: rows go into the table one behind their arrival.
pub struct LegacyRows<'p> {
    rows: InsertBehind<'p>,
    shared: &'p Shared,
    users: u64,
}

impl LegacyRows<'_> {
    /// Takes one row (`row` is its number, for errors).
    pub fn push(&mut self, row: u64, user_id: &str, record: &[u8]) -> Result<(), LegacyError> {
        self.shared
            .counters
            .legacy_rows
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inserted = self.rows.push(row, user_id, record).map_err(refused)?;
        self.users += u64::from(inserted);
        Ok(())
    }

    /// Ends the legacy side with the read's outcome; returns the number of legacy users. The
    /// export side goes on once this is called (or stops, when the read failed).
    pub fn finish<T>(mut self, read: Result<T, LegacyError>) -> Result<u64, LegacyError> {
        let result = read.and_then(|_| {
            let inserted = self.rows.finish().map_err(refused)?;
            Ok(self.users + u64::from(inserted))
        });
        self.shared.legacy_finished(result.is_ok());
        self.shared.table.forget_stored();
        result
    }
}

fn refused(refused: Refused) -> LegacyError {
    let Refused { row, user_id, .. } = refused;
    if refused.duplicate {
        LegacyError::DuplicateUserId { row, user_id }
    } else {
        LegacyError::ValueTooLong { row, user_id }
    }
}

/// The export side of a full pass.
pub struct ExportSide {
    shared: Arc<Shared>,
}

impl ExportSide {
    /// Streams the export (`source_name` names it in errors) past the legacy table on worker
    /// threads and classifies every user; returns once both sides are done.
    pub fn join(
        self,
        source_name: &str,
        input: impl BufRead,
        context: &Context<'_>,
    ) -> Result<Joined, EngineError> {
        pass::join(source_name, input, &self.shared, context)
    }
}

/// A changes pass: users given one by one with both sides, as a changes run reads them.
pub struct ChangedUsers<'c> {
    context: &'c Context<'c>,
    joined: Joined,
}

impl<'c> ChangedUsers<'c> {
    pub fn new(context: &'c Context<'c>) -> ChangedUsers<'c> {
        ChangedUsers {
            context,
            joined: Joined::new(),
        }
    }

    /// A legacy row and its Auth0 user.
    pub fn matched(
        &mut self,
        legacy: &LegacyView<'_>,
        stored: Option<PackedBaselines<'_>>,
        user: &Auth0User<'_>,
    ) {
        self.joined.summary.auth0_users += 1;
        if let Some(set) = self.joined.match_user(self.context, legacy, stored, user) {
            self.joined.baseline_changes.push(user.legacy_id, &set);
        }
    }

    /// A legacy row without an Auth0 user: not migrated yet, or deleted in Auth0 since a run
    /// saw it migrated.
    pub fn legacy_only(
        &mut self,
        legacy_id: &str,
        legacy: &LegacyView<'_>,
        stored: Option<PackedBaselines<'_>>,
    ) {
        let verdict = classify::classify(&self.context.rules, Some(legacy), None, stored);
        let auth0_id = format!("{USER_ID_PREFIX}{legacy_id}");
        self.joined.record(&auth0_id, verdict, None, None);
    }

    /// The pass's result, the users sorted by id.
    pub fn finish(self) -> Classified {
        classified(self.joined, false)
    }
}
