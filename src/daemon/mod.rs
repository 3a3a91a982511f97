//! `driftsync daemon`: the scheduled worker. It runs full reconciles on `schedule.full` and, if
//! set, changes runs on `schedule.changes` (cron with a seconds field), one at a time — a run
//! that overlaps the next fire time makes that fire time pass, it never runs twice at once.
//! Across replicas a PostgreSQL advisory lock on the legacy database lets one replica run and
//! the others skip (counted as `outcome="skipped"`). A failed run is logged and counted; the
//! daemon goes on. It serves `/metrics` and `/healthz` on `metrics.listen`, reports READY,
//! STATUS and WATCHDOG to systemd, reloads its configuration on SIGHUP (keeping the old one if
//! the new one is invalid), and on SIGTERM/SIGINT stops scheduling, lets the running step finish
//! and journal, and exits 0 within 10 s.

mod http;
mod lock;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProcessEnv, Schedule};
use crate::run::{self, RunError, RunKind, RunOptions};
use crate::state::StateStore;

/// How long the running step may take to finish after SIGTERM before the daemon leaves it.
const STOP_DEADLINE: Duration = Duration::from_secs(9);

/// The parsed schedules of one configuration.
struct Schedules {
    full: cron::Schedule,
    changes: Option<cron::Schedule>,
}

impl Schedules {
    fn of(schedule: &Schedule) -> anyhow::Result<Schedules> {
        // The configuration already checked both expressions.
        Ok(Schedules {
            full: cron::Schedule::from_str(&schedule.full).context("schedule.full")?,
            changes: schedule
                .changes
                .as_deref()
                .map(cron::Schedule::from_str)
                .transpose()
                .context("schedule.changes")?,
        })
    }

    /// The next run: its kind and when. A full run wins a tie (it covers the changes).
    fn next(&self) -> Option<(RunKind, chrono::DateTime<chrono::Utc>)> {
        let full = self
            .full
            .upcoming(chrono::Utc)
            .next()
            .map(|at| (RunKind::Full, at));
        let changes = self
            .changes
            .as_ref()
            .and_then(|schedule| schedule.upcoming(chrono::Utc).next())
            .map(|at| (RunKind::Changes, at));
        match (full, changes) {
            (Some(full), Some(changes)) if changes.1 < full.1 => Some(changes),
            (Some(full), _) => Some(full),
            (None, changes) => changes,
        }
    }
}

fn load(path: &Path) -> anyhow::Result<(Config, Schedules)> {
    let config = Config::load(path, &ProcessEnv)?;
    for warning in config.permission_warnings() {
        tracing::warn!("{warning}");
    }
    let schedule = config.schedule.as_ref().with_context(|| {
        format!(
            "{}: the daemon needs a [schedule] table with `full` (e.g. full = \"0 0 3 * * *\")",
            path.display()
        )
    })?;
    let schedules = Schedules::of(schedule)?;
    Ok((config, schedules))
}

pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let (mut config, mut schedules) = load(&config_path)?;
    // Opened once for the life of the process; a reload that moves state.path reopens it.
    let mut store = open_store(&config)?;
    let handle = crate::metrics::install()?;
    let server = http::serve(config.metrics.listen, handle)
        .await
        .with_context(|| format!("metrics.listen = {}: cannot listen", config.metrics.listen))?;
    tracing::info!(listen = %config.metrics.listen, "serving /metrics and /healthz");

    let stop = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let watchdog = start_watchdog();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("waiting for the first scheduled run"),
    ]);

    loop {
        let Some((kind, at)) = schedules.next() else {
            tracing::error!("the schedules have no future fire time; stopping");
            break;
        };
        let wait = (at - chrono::Utc::now()).to_std().unwrap_or_default();
        tracing::debug!(kind = kind.name(), at = %at, "next run");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                match load(&config_path) {
                    Ok((new_config, new_schedules)) => {
                        if new_config.metrics.listen != config.metrics.listen {
                            tracing::warn!("metrics.listen changed: it takes effect at the next restart");
                        }
                        if new_config.state.path != config.state.path {
                            match open_store(&new_config) {
                                Ok(reopened) => store = reopened,
                                Err(error) => {
                                    tracing::error!("keeping the old configuration: {error:#}");
                                    continue;
                                }
                            }
                        }
                        config = new_config;
                        schedules = new_schedules;
                        tracing::info!("reloaded the configuration");
                        notify(&[sd_notify::NotifyState::Status("configuration reloaded")]);
                    }
                    Err(error) => {
                        tracing::error!("the new configuration is invalid, keeping the old one: {error:#}");
                    }
                }
                continue;
            }
        }
        notify(&[sd_notify::NotifyState::Status(&format!(
            "running a {} run",
            kind.name()
        ))]);
        let step = run_once(kind, &config, &store, stop.clone());
        tokio::pin!(step);
        let status = tokio::select! {
            status = &mut step => status,
            _ = term.recv() => finish_after_stop(&stop, step).await,
            _ = interrupt.recv() => finish_after_stop(&stop, step).await,
        };
        notify(&[sd_notify::NotifyState::Status(&status)]);
        release_freed_memory();
        if stop.is_cancelled() {
            break;
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    server.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Hands what the run freed back to the kernel. glibc keeps memory freed by a run's threads in
/// their arenas for reuse; after a full run of a large tenant that is a large part of its peak,
/// held until the next run. Over a thousand small runs (`bench/soak.sh`) it made no measurable
/// difference either way.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes and returns plain integers and only gives free pages back to
    // the kernel; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// After SIGTERM: the step stops starting pushes; it gets a deadline to finish and journal.
async fn finish_after_stop(
    stop: &CancellationToken,
    step: std::pin::Pin<&mut impl std::future::Future<Output = String>>,
) -> String {
    tracing::warn!("stopping: the running step finishes first");
    stop.cancel();
    match tokio::time::timeout(STOP_DEADLINE, step).await {
        Ok(status) => status,
        Err(_) => {
            // Only a read can still be running; it is read-only and nothing of it is recorded
            // as complete. Pushes in flight had their own grace period and are journaled.
            "stopped during a run".into()
        }
    }
}

/// One scheduled run, under the advisory lock; returns a one-line status for systemd.
async fn run_once(
    kind: RunKind,
    config: &Config,
    store: &Arc<Mutex<StateStore>>,
    stop: CancellationToken,
) -> String {
    let started = Instant::now();
    let lock = match lock::try_acquire(config).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::info!(
                kind = kind.name(),
                "another replica holds the run lock: skipped"
            );
            crate::metrics::run_skipped(kind.name());
            return format!("{} run skipped: another replica is running", kind.name());
        }
        Err(error) => {
            tracing::error!(kind = kind.name(), "cannot take the run lock: {error:#}");
            crate::metrics::run_finished(kind.name(), "failed", started.elapsed(), None);
            return format!("{} run failed: cannot take the run lock", kind.name());
        }
    };
    let options = RunOptions {
        stop,
        store: Some(store.clone()),
        export: crate::auth0::export_job::ExportOptions::from_config(&config.cache),
        retry: crate::auth0::RetryPolicy::from_config(&config.auth0),
        ..RunOptions::default()
    };
    let result = run::run_kind(kind, config, &options, &ProcessEnv).await;
    drop(lock);
    match result {
        Ok(run::Finished { report, .. }) => {
            let summary = &report.summary;
            tracing::info!(
                kind = kind.name(),
                seconds = started.elapsed().as_secs(),
                stranded = summary.stranded,
                conflict = summary.conflict,
                orphaned = summary.orphaned,
                deleted_in_auth0 = summary.deleted_in_auth0,
                auth0_only = summary.auth0_only,
                pushed = summary.pushed,
                push_failed = summary.push_failed,
                "run finished"
            );
            format!(
                "{} run at {}: {} stranded, {} conflict, {} orphaned, {} deleted in Auth0, {} pushed",
                kind.name(),
                report.run.finished_at,
                summary.stranded,
                summary.conflict,
                summary.orphaned,
                summary.deleted_in_auth0,
                summary.pushed
            )
        }
        Err(RunError::NoWatermark) => {
            tracing::info!("changes run skipped: no completed run yet");
            "changes run skipped: waiting for a first full run".into()
        }
        Err(error @ (RunError::Stopped | RunError::Interrupted { .. })) => {
            tracing::warn!(kind = kind.name(), "{error}");
            format!("{} run stopped", kind.name())
        }
        Err(error) => {
            tracing::error!(
                kind = kind.name(),
                "run failed: {:#}",
                anyhow::Error::from(error)
            );
            format!("{} run failed; see the log", kind.name())
        }
    }
}

fn open_store(config: &Config) -> anyhow::Result<Arc<Mutex<StateStore>>> {
    Ok(Arc::new(Mutex::new(StateStore::open(&config.state.path)?)))
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    // Outside systemd (no NOTIFY_SOCKET) this does nothing.
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

/// Pings systemd's watchdog at half its interval while the daemon lives.
fn start_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return None;
    }
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}
