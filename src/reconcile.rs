//! One reconcile run: reads the legacy rows into a compact in-memory table keyed by user id,
//! streams Auth0's profiles past it (classifying each user as soon as both sides are known and
//! freeing its legacy record), and assembles the report.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use crate::classify::{self, Status, Verdict};
use crate::config::{CacheSource, Config, MigratedRule};
use crate::export::{self, Auth0User, ExportError, ExportFilter, USER_ID_PREFIX};
use crate::legacy::{self, LegacyError};
use crate::profile::{Field, LegacyRecord};
use crate::report::{PushOutcome, PushState, REPORT_VERSION, Report, RunInfo, Summary, UserEntry};
use crate::timestamp;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Legacy(#[from] LegacyError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("Auth0 export line {line}: user {user_id:?} appears more than once in the export")]
    DuplicateAuth0User { line: u64, user_id: String },
    #[error(
        "cache.source = \"export\" reads Auth0 through the Management API, which this version of driftsync cannot call yet: set cache.source = \"file\" with cache.file, or pass --cache-file"
    )]
    ExportSourceUnavailable,
    #[error("cache.source = \"file\" needs cache.file (or --cache-file) naming the Auth0 export")]
    NoCacheFile,
    #[error(
        "auth0.migrated = \"import_mode\" reads the connection's options.import_mode through the Management API, which this version of driftsync cannot call yet: set auth0.migrated to \"always\", \"never\" or \"app_metadata.<key>\""
    )]
    ImportModeUnavailable,
    #[error("the export reader stopped unexpectedly: {0}")]
    Worker(String),
}

/// What the command line adds to the configuration for one run.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub cache_file: Option<PathBuf>,
    /// Show a progress line on stderr (when it is a terminal).
    pub progress: bool,
}

/// A legacy row waiting for its Auth0 profile; `None` once matched (kept to catch duplicates).
type LegacyTable = HashMap<Box<str>, Option<LegacyRecord>>;

/// Runs a report-only reconcile and returns its report.
pub async fn run(config: &Config, options: &RunOptions) -> Result<Report, ReconcileError> {
    let started_at = timestamp::now_rfc3339();
    let run_id = new_run_id();
    let clock = Instant::now();
    let cache_file = cache_file(config, options)?;
    if config.auth0.migrated == MigratedRule::ImportMode {
        return Err(ReconcileError::ImportModeUnavailable);
    }
    let counters = Arc::new(Counters::default());
    let ticker = options
        .progress
        .then(|| std::io::stderr().is_terminal())
        .filter(|&terminal| terminal)
        .map(|_| Counters::spawn_ticker(counters.clone()));

    let mut client = legacy::connect(config.legacy.url.expose_secret()).await?;
    let mut table = LegacyTable::new();
    let wanted = config.reconcile.fields.clone();
    let columns = legacy::stream(
        &mut client,
        &config.legacy.query,
        wanted.as_deref().unwrap_or(&[]),
        |_, row| {
            counters.legacy_rows.fetch_add(1, Ordering::Relaxed);
            match table.entry(row.user_id.into()) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    Err(LegacyError::DuplicateUserId {
                        row: row.number,
                        user_id: row.user_id.to_owned(),
                    })
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(Some(row.record));
                    Ok(())
                }
            }
        },
    )
    .await?;
    drop(client);
    let legacy_users = table.len() as u64;
    tracing::info!(
        legacy_users,
        elapsed_ms = clock.elapsed().as_millis() as u64,
        "read the legacy rows"
    );

    let fields = match wanted {
        Some(fields) => fields,
        None => columns.fields(),
    };
    let filter = ExportFilter {
        connection: config.auth0.connection.clone(),
        migrated: config.auth0.migrated.clone(),
    };
    let export_counters = counters.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let input = export::open_file(&cache_file)?;
        let name = cache_file.display().to_string();
        join_export(&name, input, &filter, &fields, table, &export_counters)
    })
    .await
    .map_err(|error| ReconcileError::Worker(error.to_string()))?;
    drop(ticker);
    let Joined {
        mut summary,
        mut users,
    } = joined?;
    summary.legacy_users = legacy_users;
    users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    tracing::info!(
        auth0_users = summary.auth0_users,
        reported = users.len(),
        elapsed_ms = clock.elapsed().as_millis() as u64,
        "classified every user"
    );
    Ok(Report {
        version: REPORT_VERSION,
        run: RunInfo {
            id: run_id,
            kind: "full",
            mode: "report",
            started_at,
            finished_at: timestamp::now_rfc3339(),
        },
        summary,
        users,
    })
}

fn cache_file(config: &Config, options: &RunOptions) -> Result<PathBuf, ReconcileError> {
    if let Some(path) = &options.cache_file {
        return Ok(path.clone());
    }
    match config.cache.source {
        CacheSource::Export => Err(ReconcileError::ExportSourceUnavailable),
        CacheSource::File => config.cache.file.clone().ok_or(ReconcileError::NoCacheFile),
    }
}

struct Joined {
    summary: Summary,
    users: Vec<UserEntry>,
}

/// Streams the export past the legacy table, classifying each user once both sides are known.
fn join_export(
    source_name: &str,
    input: impl std::io::BufRead,
    filter: &ExportFilter,
    fields: &[Field],
    mut table: LegacyTable,
    counters: &Counters,
) -> Result<Joined, ReconcileError> {
    let mut summary = Summary::default();
    let mut users = Vec::new();
    // Auth0 ids without a legacy row, to catch duplicates among them too.
    let mut unmatched: HashSet<Box<str>> = HashSet::new();
    let mut duplicate = None;
    let record = |summary: &mut Summary, users: &mut Vec<UserEntry>, verdict: Verdict, id: &str| {
        summary.count(verdict.status);
        if !matches!(verdict.status, Status::InSync | Status::NotMigrated) {
            users.push(entry(id, verdict));
        }
    };
    export::read(source_name, input, filter, |line, user: Auth0User<'_>| {
        counters.auth0_users.fetch_add(1, Ordering::Relaxed);
        summary.auth0_users += 1;
        let verdict = match table.get_mut(user.legacy_id) {
            Some(slot) => match slot.take() {
                Some(legacy) => classify::classify(fields, Some(&legacy.view()), Some(&user)),
                None => {
                    duplicate = Some((line, user.auth0_id.to_owned()));
                    return Err(stop_reading());
                }
            },
            None => {
                if !unmatched.insert(user.legacy_id.into()) {
                    duplicate = Some((line, user.auth0_id.to_owned()));
                    return Err(stop_reading());
                }
                classify::classify(fields, None, Some(&user))
            }
        };
        record(&mut summary, &mut users, verdict, user.auth0_id);
        Ok(())
    })
    .map_err(|error| match duplicate.take() {
        Some((line, user_id)) => ReconcileError::DuplicateAuth0User { line, user_id },
        None => ReconcileError::Export(error),
    })?;
    for (legacy_id, slot) in &table {
        if let Some(legacy) = slot {
            let verdict = classify::classify(fields, Some(&legacy.view()), None);
            let id = format!("{USER_ID_PREFIX}{legacy_id}");
            record(&mut summary, &mut users, verdict, &id);
        }
    }
    Ok(Joined { summary, users })
}

/// The reader's callback can only return its own error type; the caller swaps in the real one.
fn stop_reading() -> ExportError {
    ExportError::Line {
        source_name: String::new(),
        line: 0,
        message: "duplicate user".into(),
    }
}

fn entry(user_id: &str, verdict: Verdict) -> UserEntry {
    // Report-only: what a push would send is `planned`, everything else is `skipped`.
    let state = if verdict.status == Status::Stranded {
        PushState::Planned
    } else {
        PushState::Skipped
    };
    UserEntry {
        user_id: user_id.to_owned(),
        status: verdict.status,
        origin: verdict.origin,
        fields: verdict.diffs,
        push: PushOutcome { state, error: None },
    }
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

#[derive(Default)]
struct Counters {
    legacy_rows: AtomicU64,
    auth0_users: AtomicU64,
}

struct Ticker {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Counters {
    /// Prints a progress line on stderr twice a second until stopped.
    fn spawn_ticker(counters: Arc<Counters>) -> Ticker {
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                eprint!(
                    "\r\x1b[Kreading: {} legacy rows, {} Auth0 profiles ({:.0?})",
                    counters.legacy_rows.load(Ordering::Relaxed),
                    counters.auth0_users.load(Ordering::Relaxed),
                    started.elapsed()
                );
            }
            eprint!("\r\x1b[K");
        });
        Ticker {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
