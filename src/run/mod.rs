//! One run of either kind, start to end: [`run_kind`] records it in the state file and the
//! metrics; `full` and `changes` read their two sides and hand them to the engine; what both
//! kinds do before and after that is in `setup` (the Management API client, the recovery of a
//! stopped push, the legacy connection; the push phase, the baselines, the report), so the two
//! kinds cannot drift apart. Nothing is recorded as complete after an error.
//!
//! - `setup`: the steps every run shares, around the engine's pass.
//! - `full`: every legacy row against every Auth0 profile (export job or file).
//! - `changes`: the legacy rows changed since the last run, their profiles fetched one by one.
//! - `connection`: what the connection's settings mean for verdicts, pushes and reads.
//! - `push`: the push phase (fraction guard, recovery's evidence, outcomes into the report).
//! - [`apply`]: sending the PATCH requests, journaled and resumable.

pub mod apply;
mod changes;
pub mod connection;
mod full;
mod push;
mod setup;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::auth0::export_job::ExportOptions;
use crate::auth0::{Auth0Error, RetryPolicy};
use crate::config::{Config, Environment};
use crate::engine::EngineError;
use crate::model::guard::Shrink;
use crate::model::progress::Snapshot;
use crate::model::saved_plan::SavedPlan;
use crate::report::{PreparedFile, Report, RunInfo};
use crate::sources::export::ExportError;
use crate::sources::legacy::LegacyError;
use crate::state::{StateError, StateStore};
use crate::timestamp;
use apply::{ApplyError, RecoverError};
use setup::Run;
pub use setup::plan_tenant;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Auth0(#[from] Auth0Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Recover(#[from] RecoverError),
    #[error(
        "{why} needs the Management API (to report from an export file instead: cache.source = \"file\" or --cache-file)"
    )]
    ApiSettings {
        why: &'static str,
        #[source]
        source: Auth0Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The shrink guard refused a full run (`reconcile.max_shrink_fraction`).
    #[error(transparent)]
    Shrunk(#[from] Shrink),
    #[error("cache.source = \"file\" needs cache.file (or --cache-file) naming the Auth0 export")]
    NoCacheFile,
    #[error(
        "stopped by a signal: {applied} users' pushes were applied and journaled, {not_sent} were not sent; the next run finishes the job"
    )]
    Interrupted { applied: u64, not_sent: u64 },
    #[error("stopped by a signal before anything was pushed")]
    Stopped,
    #[error("a changes run needs a completed run first (the watermark): skipped")]
    NoWatermark,
    #[error(
        "schedule.changes needs the legacy query to return `updated_at` (timestamptz): without it a changed row cannot be found"
    )]
    ChangesNeedUpdatedAt,
    /// One of a run's own threads panicked: a bug, never bad input.
    #[error(
        "the {0} stopped unexpectedly (a bug in driftsync: please report it with the log above)"
    )]
    ThreadPanicked(&'static str),
    /// The state file's last successful run has a start time that is not a timestamp.
    #[error(
        "the state file's last successful run started at {0:?}, which is not a timestamp: the file was edited or damaged"
    )]
    BadWatermark(String),
    /// An internal step found its precondition broken: a bug, never bad input.
    #[error("internal error: {0} (a bug in driftsync: please report it with the log above)")]
    Internal(&'static str),
    #[error("cannot write the plan to {}", path.display())]
    PlanFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the report to {}", path.display())]
    ReportFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the command line adds to the configuration for one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cache_file: Option<PathBuf>,
    /// Show a progress line on stderr (when it is a terminal).
    pub progress: bool,
    pub export: ExportOptions,
    pub retry: RetryPolicy,
    /// Apply the planned pushes (`--push`); `reconcile.push` in the config also turns it on.
    pub push: bool,
    /// Overrides `reconcile.max_push_fraction` for this run.
    pub max_push_fraction: Option<f64>,
    /// Lets a full run go on although its legacy rows or Auth0 users fell by more than
    /// `reconcile.max_shrink_fraction` (`--allow-shrink`).
    pub allow_shrink: bool,
    /// Where a full run saves its push plan for review (`reconcile --save-plan FILE`).
    pub save_plan: Option<PathBuf>,
    /// The saved plan a full run applies (`driftsync apply FILE`): only its pushes are sent,
    /// and only those whose users are still what the plan saw.
    pub plan: Option<Arc<SavedPlan>>,
    /// Where the run writes its report (written while the state is updated; see
    /// [`Finished::report_file`]).
    pub report_file: Option<(PathBuf, crate::report::Format)>,
    pub concurrency: usize,
    /// Cancelled on SIGTERM/SIGINT.
    pub stop: CancellationToken,
    /// The state file, when the caller keeps it open across runs (the daemon); otherwise each
    /// run opens `state.path`.
    pub store: Option<Arc<Mutex<StateStore>>>,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            cache_file: None,
            progress: false,
            export: ExportOptions::default(),
            retry: RetryPolicy::default(),
            push: false,
            max_push_fraction: None,
            allow_shrink: false,
            save_plan: None,
            plan: None,
            report_file: None,
            concurrency: apply::DEFAULT_CONCURRENCY,
            stop: CancellationToken::new(),
            store: None,
        }
    }
}

/// What a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Every legacy row and every Auth0 profile.
    Full,
    /// The legacy rows changed since the last run, and their profiles.
    Changes,
}

impl RunKind {
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Full => "full",
            RunKind::Changes => "changes",
        }
    }
}

/// A run that succeeded.
#[derive(Debug)]
pub struct Finished {
    pub report: Report,
    /// The report file (`RunOptions::report_file`), written and synced under a temporary name
    /// while the state was updated, for the caller to put in place once it has decided the
    /// run's outcome.
    pub report_file: Option<PreparedFile>,
    /// What a full run found of the migration's progress (recorded in the state file).
    pub progress: Option<Snapshot>,
}

/// Runs a full reconcile. `env` supplies the Auth0 client secret
/// (`DRIFTSYNC_AUTH0_CLIENT_SECRET`) when the run calls the Management API.
pub async fn run(
    config: &Config,
    options: &RunOptions,
    env: &dyn Environment,
) -> Result<Finished, RunError> {
    run_kind(RunKind::Full, config, options, env).await
}

/// Runs a reconcile of the given kind, recording it in the state file and the metrics.
pub async fn run_kind(
    kind: RunKind,
    config: &Config,
    options: &RunOptions,
    env: &dyn Environment,
) -> Result<Finished, RunError> {
    let push = options.push || config.reconcile.push;
    let run_kind = kind.name();
    let run = RunInfo {
        id: new_run_id(),
        kind: run_kind,
        mode: if push { "push" } else { "report" },
        started_at: timestamp::now_rfc3339(),
        finished_at: String::new(),
    };
    let id = run.id.clone();
    let started = Instant::now();
    let store = match &options.store {
        Some(store) => store.clone(),
        None => Arc::new(Mutex::new(StateStore::open(&config.state.path)?)),
    };
    with_store(&store, |store| {
        store.start_run(&run.id, run.kind, run.mode, &run.started_at)
    })?;
    let this = Run {
        config,
        options,
        store: &store,
        push,
        info: run,
        started,
    };
    let result = match kind {
        RunKind::Full => full::run(this, env).await,
        RunKind::Changes => changes::run(this, env).await,
    };
    let (outcome, summary) = match &result {
        Ok(finished) => (
            "success",
            serde_json::to_string(&finished.report.summary).unwrap_or_default(),
        ),
        Err(RunError::Interrupted { .. } | RunError::Stopped) => ("interrupted", String::new()),
        Err(RunError::NoWatermark) => ("skipped", String::new()),
        Err(RunError::Shrunk(_)) => ("refused", String::new()),
        Err(_) => ("failed", String::new()),
    };
    // The outcome is recorded even for a failed run; a failure to record it must not hide the
    // run's own error.
    let recorded = with_store(&store, |store| {
        store.finish_run(&id, outcome, &timestamp::now_rfc3339(), &summary)?;
        match result.as_ref().ok().and_then(|f| f.progress.as_ref()) {
            Some(snapshot) => {
                store.record_progress(&id, snapshot)?;
                store.progress_history().map(Some)
            }
            None => Ok(None),
        }
    });
    let report = result.as_ref().ok().map(|finished| &finished.report);
    crate::metrics::run_finished(run_kind, outcome, started.elapsed(), report);
    let finished = result?;
    if let Some(progress) = recorded?
        .as_deref()
        .and_then(crate::model::progress::progress)
    {
        crate::metrics::progress(&progress);
    }
    with_store(&store, |store| {
        prune_history(store, &config.state);
        Ok(())
    })?;
    Ok(finished)
}

/// How long the pruning at the end of a run may take; what is left goes at the next run.
const PRUNE_BUDGET: Duration = Duration::from_secs(2);

/// After a successful run: forgets journal entries that ended more than
/// `state.journal_retention_days` ago (never a `planned` one) and runs older than
/// `state.run_history_days`. A failure is logged, never the run's failure.
fn prune_history(store: &StateStore, settings: &crate::config::State) {
    const DAY_MICROS: i64 = 86_400_000_000;
    let Some(now) = timestamp::parse_rfc3339(&timestamp::now_rfc3339()) else {
        return;
    };
    let before = |days: u32| timestamp::format_rfc3339(now - i64::from(days) * DAY_MICROS);
    match store.prune(
        &before(settings.journal_retention_days),
        &before(settings.run_history_days),
        PRUNE_BUDGET,
    ) {
        Ok(pruned) if pruned.journal + pruned.runs > 0 || !pruned.complete => {
            tracing::info!(
                journal_entries = pruned.journal,
                runs = pruned.runs,
                complete = pruned.complete,
                "pruned the state file's history"
            );
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot prune the state file's history"),
    }
}

pub(crate) fn with_store<T>(
    store: &Mutex<StateStore>,
    operation: impl FnOnce(&mut StateStore) -> Result<T, StateError>,
) -> Result<T, StateError> {
    let mut guard = store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    operation(&mut guard)
}

/// A run id that sorts by time and stays unique across hosts and processes.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let random = RandomState::new().hash_one(std::process::id()) as u32;
    format!("{nanos:x}-{random:08x}")
}
