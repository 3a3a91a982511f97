//! One reconcile run, start to end: opens the state file, resolves pushes a stopped process
//! left in flight, reads the legacy rows while Auth0's side is prepared (connection, migration
//! rule, export job), joins both sides ([`join`]), pushes when asked and allowed, updates the
//! baselines, and returns the report. Nothing is recorded as complete after an error.

mod changes;
mod connection;
mod index;
mod join;
mod progress;
mod table;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::auth0::export_job::{self, ExportOptions};
use crate::auth0::{Auth0Client, Auth0Error, Job, RetryPolicy, Settings};
use crate::config::{CacheSource, Config, Environment, MigratedRule};
use crate::export::{self, ExportError, ExportFilter};
use crate::legacy::{self, LegacyError};
use crate::profile::Field;
use crate::push::apply::{self, ApplyError, Outcome, RecoverError};
use crate::push::plan::Push;
use crate::push::{self, Refusal};
use crate::report::{PushState, REPORT_VERSION, Report, RunInfo, Summary, UserEntry};
use crate::state::{StateError, StateStore};
use crate::timestamp;
use connection::ConnectionFacts;
use join::{BaselineWrites, JoinContext, Joined, LegacyTable};
use progress::Counters;
use table::{InsertBehind, Refused};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
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
    #[error("Auth0 export line {line}: user {user_id:?} appears more than once in the export")]
    DuplicateAuth0User { line: u64, user_id: String },
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
    /// The legacy side failed while the export was joined; its own error is the one reported,
    /// this only stops the join.
    #[error("the legacy read failed while the export was joined")]
    LegacyReadFailed,
    /// The state file's last successful run has a start time that is not a timestamp.
    #[error(
        "the state file's last successful run started at {0:?}, which is not a timestamp: the file was edited or damaged"
    )]
    BadWatermark(String),
    /// An internal step found its precondition broken: a bug, never bad input.
    #[error("internal error: {0} (a bug in driftsync: please report it with the log above)")]
    Internal(&'static str),
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
    /// Where a full run writes its report (written while the state is updated; see
    /// [`Report::prepared`]).
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
            report_file: None,
            concurrency: apply::DEFAULT_CONCURRENCY,
            stop: CancellationToken::new(),
            store: None,
        }
    }
}

/// Where Auth0's profiles come from in this run.
enum Source {
    File(PathBuf),
    Export,
}

/// What the Auth0 side settled before the join.
struct Auth0Side {
    facts: ConnectionFacts,
    job: Option<Job>,
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

/// Runs a full reconcile and returns its report. `env` supplies the Auth0 client secret
/// (`DRIFTSYNC_AUTH0_CLIENT_SECRET`) when the run calls the Management API.
pub async fn run(
    config: &Config,
    options: &RunOptions,
    env: &dyn Environment,
) -> Result<Report, ReconcileError> {
    run_kind(RunKind::Full, config, options, env).await
}

/// Runs a reconcile of the given kind, recording it in the state file and the metrics.
pub async fn run_kind(
    kind: RunKind,
    config: &Config,
    options: &RunOptions,
    env: &dyn Environment,
) -> Result<Report, ReconcileError> {
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
    let result = match kind {
        RunKind::Full => run_recorded(config, options, env, push, run, &store).await,
        RunKind::Changes => changes::run(config, options, env, push, run, &store).await,
    };
    let (outcome, summary) = match &result {
        Ok(report) => (
            "success",
            serde_json::to_string(&report.summary).unwrap_or_default(),
        ),
        Err(ReconcileError::Interrupted { .. } | ReconcileError::Stopped) => {
            ("interrupted", String::new())
        }
        Err(ReconcileError::NoWatermark) => ("skipped", String::new()),
        Err(_) => ("failed", String::new()),
    };
    // The outcome is recorded even for a failed run; a failure to record it must not hide the
    // run's own error.
    let recorded = with_store(&store, |store| {
        store.finish_run(&id, outcome, &timestamp::now_rfc3339(), &summary)
    });
    crate::metrics::run_finished(run_kind, outcome, started.elapsed(), result.as_ref().ok());
    let report = result?;
    recorded?;
    with_store(&store, |store| {
        prune_history(store, &config.state);
        Ok(())
    })?;
    Ok(report)
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

/// Writes this run's baseline changes: the collected ones, the sets of planned users, and the
/// new sets left in a full run's table — merged in id order, so that SQLite appends to its
/// B-tree instead of splitting pages all over it.
fn write_baselines(
    store: &mut StateStore,
    mut changes: BaselineWrites,
    planned: Vec<Push>,
    mut table_sets: table::NewBaselines,
) -> Result<usize, StateError> {
    join::planned_baselines(&planned, &mut changes);
    let written = store.write_baselines(merge_sorted(changes.sorted(), table_sets.sorted()));
    // Their memory (gigabytes at ten million users, and millions of small allocations) is
    // handed back on a thread of its own: neither the end of the run nor a one-shot command's
    // exit waits for it.
    let leftovers = (changes, planned, table_sets);
    if let Err(error) = std::thread::Builder::new()
        .name("free-table".into())
        .spawn(move || drop(leftovers))
    {
        tracing::debug!(%error, "freeing the table on this thread");
    }
    written
}

/// Merges two iterators sorted by id (the two never hold the same user).
fn merge_sorted<'a>(
    a: impl Iterator<Item = (&'a str, &'a [u8])>,
    b: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> impl Iterator<Item = (&'a str, &'a [u8])> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y.0 < x.0 => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

fn with_store<T>(
    store: &Mutex<StateStore>,
    operation: impl FnOnce(&mut StateStore) -> Result<T, StateError>,
) -> Result<T, StateError> {
    let mut guard = store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    operation(&mut guard)
}

async fn run_recorded(
    config: &Config,
    options: &RunOptions,
    env: &dyn Environment,
    push: bool,
    mut run: RunInfo,
    store: &Arc<Mutex<StateStore>>,
) -> Result<Report, ReconcileError> {
    let clock = Instant::now();
    let first_run = with_store(store, |store| store.last_success("full"))?.is_none();
    let source = source(config, options)?;
    let client = api_client(config, &source, push, options, env)?;
    let mut recovered = apply::Recovered::default();
    if push && let Some(client) = &client {
        recovered = apply::recover(client, store).await?;
        if recovered.applied + recovered.superseded > 0 {
            tracing::warn!(
                applied = recovered.applied,
                superseded = recovered.superseded,
                "resolved pushes a stopped run left in flight"
            );
        }
    }
    let counters = Arc::new(Counters::default());
    let ticker = (options.progress && std::io::stderr().is_terminal())
        .then(|| Counters::spawn_ticker(counters.clone()));

    let mut db = legacy::connect(&config.legacy.target).await?;
    let columns = legacy::describe(&mut db, &config.legacy.query).await?;
    let fields = match &config.reconcile.fields {
        Some(fields) => fields.clone(),
        None => columns.fields(),
    };

    // Stored baselines are at hand before the rows arrive, so that each user's set joins its
    // record as the row is stored.
    let estimate = legacy::estimate_rows(&mut db, &config.legacy.query).await;
    let mut table = estimate.map_or_else(LegacyTable::default, LegacyTable::with_capacity);
    with_store(store, |store| {
        let mut read = Ok(());
        table.load_stored(|each| {
            read = store.for_each_baseline(|user_id, packed| each(user_id, packed))
        });
        read
    })?;
    let table = Arc::new(table);
    tracing::info!(
        elapsed_ms = clock.elapsed().as_millis() as u64,
        rss_mib = progress::rss_mib(),
        "loaded the stored baselines"
    );

    // Three things run at once: the legacy rows stream into the table; Auth0's side is
    // prepared (connection, migration rule, export job: a job takes Auth0 a while); and as soon
    // as it is, the export streams past the table on worker threads. A profile whose row has
    // not arrived yet is parked until every row is in.
    let legacy_progress = Arc::new(join::LegacyProgress::default());
    let legacy_side = async {
        let mut legacy_users = 0u64;
        let mut rows = InsertBehind::new(&table);
        let refused = |refused: Refused| {
            let Refused { row, user_id, .. } = refused;
            if refused.duplicate {
                LegacyError::DuplicateUserId { row, user_id }
            } else {
                LegacyError::ValueTooLong { row, user_id }
            }
        };
        let result = legacy::stream(&mut db, &config.legacy.query, &fields, |_, row| {
            counters
                .legacy_rows
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            legacy_users += u64::from(
                rows.push(row.number, row.user_id, row.record)
                    .map_err(refused)?,
            );
            Ok(())
        })
        .await
        .and_then(|columns| {
            legacy_users += u64::from(rows.finish().map_err(refused)?);
            Ok(columns)
        });
        legacy_progress.finish(result.is_ok());
        table.forget_stored();
        tracing::info!(
            legacy_users,
            elapsed_ms = clock.elapsed().as_millis() as u64,
            rss_mib = progress::rss_mib(),
            "read the legacy rows"
        );
        result.map(|_| legacy_users)
    };
    let kept = connection::attributes_read(config, &fields);
    let join_side = async {
        let side =
            prepare_auth0_side(config, client.as_deref(), &source, &kept, &options.export).await?;
        let policy = side.facts.push_policy(config, &fields);
        let facts = side.facts.clone();
        let filter = ExportFilter {
            connection: config.auth0.connection.clone(),
            migrated: side.facts.migrated,
        };
        let orphans = config.reconcile.orphans;
        let download = match (&source, side.job, &client) {
            (Source::Export, Some(job), Some(client)) => {
                let name = format!("of export job {}", job.id);
                Some((
                    name,
                    export_job::download(client.clone(), job, &options.export),
                ))
            }
            _ => None,
        };
        let source = match &source {
            Source::File(path) => Source::File(path.clone()),
            Source::Export => Source::Export,
        };
        let fields = fields.clone();
        let join_counters = counters.clone();
        let join_table = table.clone();
        let join_progress = legacy_progress.clone();
        let joined = tokio::task::spawn_blocking(move || {
            // This thread cuts the export into chunks; it shares the workers' priority.
            crate::priority::yield_to_legacy_side();
            let (name, input) = match (source, download) {
                (_, Some((name, stream))) => {
                    let reader = tokio_util::io::SyncIoBridge::new(
                        tokio_util::io::StreamReader::new(stream),
                    );
                    let buffered = std::io::BufReader::with_capacity(256 * 1024, reader);
                    let input =
                        export::decompressing(buffered).map_err(|source| ExportError::Read {
                            source_name: name.clone(),
                            line: 0,
                            source,
                        })?;
                    (name, export::read_ahead(input))
                }
                (Source::File(path), None) => {
                    (path.display().to_string(), export::open_file(&path)?)
                }
                (Source::Export, None) => {
                    return Err(ReconcileError::Internal(
                        "an export source without its export job",
                    ));
                }
            };
            let context = JoinContext {
                rules: facts.rules(&fields),
                kept: &kept,
                filter: &filter,
                policy: &policy,
                orphans,
                counters: &join_counters,
            };
            join::join(&name, input, &join_table, &context, &join_progress)
        })
        .await
        .map_err(|_| ReconcileError::ThreadPanicked("join of the export with the legacy rows"))?;
        Ok::<_, ReconcileError>(joined)
    };
    let (legacy_result, join_result) = tokio::join!(legacy_side, join_side);
    // The legacy side's error first: a join cut short by it says less.
    let legacy_users = legacy_result?;
    let joined = join_result?;
    let joined = joined?;
    drop(db);
    if options.stop.is_cancelled() {
        return Err(ReconcileError::Stopped);
    }
    drop(ticker);
    let table = Arc::try_unwrap(table)
        .map_err(|_| ReconcileError::Internal("the legacy table is still shared after the join"))?;
    let Joined {
        mut summary,
        mut users,
        mut planned,
        baseline_changes,
        pushable_users,
        new_sets,
        ..
    } = joined;
    let mut table_sets = table.into_new_baselines(new_sets);
    summary.legacy_users = legacy_users;
    crate::metrics::rows_read("legacy", legacy_users);
    crate::metrics::rows_read("auth0", summary.auth0_users);
    // The two sorts of a large run, side by side.
    std::thread::scope(|scope| {
        scope.spawn(|| table_sets.sort());
        users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    });
    tracing::info!(
        auth0_users = summary.auth0_users,
        reported = users.len(),
        planned = planned.len(),
        elapsed_ms = clock.elapsed().as_millis() as u64,
        rss_mib = progress::rss_mib(),
        "classified every user"
    );

    let mut interrupted = None;
    if push && !planned.is_empty() {
        let limit = options
            .max_push_fraction
            .unwrap_or(config.reconcile.max_push_fraction);
        let client = client
            .clone()
            .ok_or(ReconcileError::Internal("a push without an Auth0 client"))?;
        let phase = PushPhase {
            client: &client,
            store,
            run_id: &run.id,
            options,
            limit,
            recovered: &recovered.profiles,
        };
        interrupted = phase
            .run(&mut users, &mut summary, &mut planned, pushable_users)
            .await?;
    }

    let notes = first_run_notes(first_run, &config.auth0.migrated, &summary);
    run.finished_at = timestamp::now_rfc3339();
    let mut report = Report {
        version: REPORT_VERSION,
        run,
        summary,
        users,
        prepared: None,
        notes,
    };
    // The report file is written while the baselines are: neither waits for the other, and
    // the file only takes its name once the whole run has succeeded.
    let (changed, prepared) = std::thread::scope(|scope| {
        let rendering = options.report_file.as_ref().map(|(path, format)| {
            let report = &report;
            scope.spawn(move || {
                crate::report::prepare_atomically(path, crate::private_file::PRIVATE, |out| {
                    report.render(*format, out)
                })
                .map_err(|source| ReconcileError::ReportFile {
                    path: path.clone(),
                    source,
                })
            })
        });
        let changed = with_store(store, |store| {
            write_baselines(store, baseline_changes, planned, table_sets)
        });
        let prepared = rendering.map(|rendering| {
            rendering
                .join()
                .unwrap_or_else(|_| Err(ReconcileError::ThreadPanicked("report writer")))
        });
        (changed, prepared)
    });
    let changed = changed?;
    report.prepared = prepared.transpose()?;
    if let Some(interrupted) = interrupted {
        return Err(interrupted);
    }
    tracing::info!(
        baselines_changed = changed,
        elapsed_ms = clock.elapsed().as_millis() as u64,
        rss_mib = progress::rss_mib(),
        "updated the baselines"
    );
    if let Some(client) = &client {
        let stats = client.stats();
        tracing::info!(
            requests = stats.requests,
            throttled = stats.throttled,
            retries = stats.retries,
            "Management API use"
        );
    }
    Ok(report)
}

/// What the first run of a state file tells its reader: it cannot tell a deletion in the
/// legacy database from a signup yet. With a migration marker there is no such doubt: a
/// migrated user carries the marker.
fn first_run_notes(first_run: bool, rule: &MigratedRule, summary: &Summary) -> Vec<String> {
    if !first_run || summary.auth0_only == 0 || matches!(rule, MigratedRule::AppMetadataKey(_)) {
        return Vec::new();
    }
    let note = format!(
        "{} Auth0 users of the connection have no legacy row and no evidence that they ever had \
         one, so they are auth0_only (with import mode, people who sign up are created in Auth0 \
         only). This is the first run with this state file: a user deleted from the legacy \
         database before it looks the same, unless the migration marker \
         (auth0.migrated = \"app_metadata.<key>\") is set on it. From now on, a user this run \
         matched that loses its legacy row is reported orphaned.",
        summary.auth0_only
    );
    tracing::warn!("{note}");
    vec![note]
}

/// The push step of a run: the fraction guard, then the journaled apply; outcomes go into the
/// report entries, and the baselines of applied keys into the plans' sets. Returns the
/// `Interrupted` error to raise once the baselines are written, when a signal stopped it.
struct PushPhase<'a> {
    client: &'a Arc<Auth0Client>,
    store: &'a Arc<Mutex<StateStore>>,
    run_id: &'a str,
    options: &'a RunOptions,
    /// `max_push_fraction` for this run.
    limit: f64,
    /// Profiles read while resolving a stopped run's journal entries (see [`apply::Recovered`]).
    recovered: &'a std::collections::HashMap<String, serde_json::Value>,
}

impl PushPhase<'_> {
    async fn run(
        &self,
        users: &mut [UserEntry],
        summary: &mut Summary,
        planned: &mut [Push],
        pushable_users: u64,
    ) -> Result<Option<ReconcileError>, ReconcileError> {
        // Users are sorted by id now: find each plan's report entry once (entry → plan).
        let by_index: std::collections::HashMap<usize, usize> = planned
            .iter()
            .enumerate()
            .filter_map(|(plan_index, planned)| {
                let index = users
                    .binary_search_by(|user| user.user_id.as_str().cmp(&planned.auth0_id))
                    .ok()?;
                Some((index, plan_index))
            })
            .collect();
        if let Err(refusal) = push::check_fraction(planned.len() as u64, pushable_users, self.limit)
        {
            refuse(users, by_index.keys().copied(), &refusal);
            return Ok(None);
        }
        // A request the stopped run sent may have landed after the export this run read was
        // taken: what the fresher profile read while resolving its journal entry already
        // shows is not sent again.
        // (report index, plan index) pairs.
        let (in_effect, to_send): (Vec<_>, Vec<_>) = by_index
            .iter()
            .map(|(&index, &plan_index)| (index, plan_index))
            .partition(|&(_, plan_index)| {
                let push = &planned[plan_index];
                self.recovered.get(&push.auth0_id).is_some_and(|profile| {
                    push.bodies
                        .iter()
                        .all(|body| apply::is_in_effect(body, profile))
                })
            });
        if !in_effect.is_empty() {
            tracing::info!(
                users = in_effect.len(),
                "changes a stopped run's requests already made are not sent again"
            );
        }
        let started = Instant::now();
        let pushes = to_send
            .iter()
            .map(|&(index, plan_index)| (index, &planned[plan_index]))
            .collect();
        let mut outcomes = apply::apply(
            self.client.clone(),
            self.store.clone(),
            self.run_id,
            pushes,
            self.options.concurrency,
            self.options.stop.clone(),
        )
        .await?;
        outcomes.extend(
            in_effect
                .iter()
                .map(|&(index, _)| (index, Outcome::Applied)),
        );
        let (mut applied, mut not_sent) = (0, 0);
        for (index, outcome) in outcomes {
            let user = &mut users[index];
            match outcome {
                Outcome::Applied => {
                    user.push.state = PushState::Applied;
                    user.needs_action = false;
                    summary.pushed += 1;
                    applied += 1;
                    if let Some(&plan_index) = by_index.get(&index) {
                        planned[plan_index].record_applied();
                    }
                }
                Outcome::Failed(error) => {
                    user.push.state = PushState::Failed;
                    user.push.error = Some(error);
                    summary.push_failed += 1;
                }
                Outcome::NotSent(reason) => {
                    user.push.state = PushState::Skipped;
                    user.push.error = Some(reason);
                    not_sent += 1;
                }
            }
        }
        crate::metrics::pushes(applied, summary.push_failed);
        let stats = self.client.stats();
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            applied,
            failed = summary.push_failed,
            throttled = stats.throttled,
            seconds = format!("{seconds:.2}"),
            users_per_second = format!("{:.2}", applied as f64 / seconds.max(1e-9)),
            "push finished"
        );
        Ok(self
            .options
            .stop
            .is_cancelled()
            .then_some(ReconcileError::Interrupted { applied, not_sent }))
    }
}

/// Marks every planned push as not sent, with the guard's reason, and says it loudly.
fn refuse(
    users: &mut [crate::report::UserEntry],
    planned: impl Iterator<Item = usize>,
    refusal: &Refusal,
) {
    tracing::error!("{refusal}");
    for index in planned {
        users[index].push.state = PushState::Skipped;
        users[index].push.error =
            Some("not sent: the push was refused by reconcile.max_push_fraction".into());
    }
}

fn source(config: &Config, options: &RunOptions) -> Result<Source, ReconcileError> {
    if let Some(path) = &options.cache_file {
        return Ok(Source::File(path.clone()));
    }
    match config.cache.source {
        CacheSource::Export => Ok(Source::Export),
        CacheSource::File => config
            .cache
            .file
            .clone()
            .map(Source::File)
            .ok_or(ReconcileError::NoCacheFile),
    }
}

/// A Management API client when this run needs one: for an export job, to read the
/// connection's `import_mode`, or to push.
fn api_client(
    config: &Config,
    source: &Source,
    push: bool,
    options: &RunOptions,
    env: &dyn Environment,
) -> Result<Option<Arc<Auth0Client>>, ReconcileError> {
    let why = match (source, &config.auth0.migrated) {
        (Source::Export, _) => "cache.source = \"export\"",
        (_, MigratedRule::ImportMode) => "auth0.migrated = \"import_mode\"",
        _ if push => "pushing",
        _ => return Ok(None),
    };
    let settings = Settings::from_config(&config.auth0, env)
        .map_err(|source| ReconcileError::ApiSettings { why, source })?;
    Ok(Some(Arc::new(Auth0Client::new(settings, options.retry)?)))
}

/// Reads the connection (migration rule, `import_mode`) and, for the export source, runs the
/// export job to completion.
async fn prepare_auth0_side(
    config: &Config,
    client: Option<&Auth0Client>,
    source: &Source,
    attributes: &[Field],
    export: &ExportOptions,
) -> Result<Auth0Side, ReconcileError> {
    let Some(client) = client else {
        return Ok(Auth0Side {
            facts: ConnectionFacts::assumed(config),
            job: None,
        });
    };
    let connection = client.connection_by_name(&config.auth0.connection).await?;
    let facts = ConnectionFacts::read(config, &connection);
    tracing::info!(
        connection = %connection.id,
        import_mode = facts.import_mode,
        root_attributes_refreshed = facts.root_attributes_refreshed,
        "found the connection"
    );
    let job = match source {
        Source::Export => {
            let wanted = export_job::fields_for(attributes, &facts.migrated);
            Some(export_job::run_job(client, &connection.id, &wanted, export).await?)
        }
        Source::File(_) => None,
    };
    Ok(Auth0Side { facts, job })
}

/// A run id that sorts by time and stays unique across hosts and processes.
fn new_run_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let random = RandomState::new().hash_one(std::process::id()) as u32;
    format!("{nanos:x}-{random:08x}")
}
