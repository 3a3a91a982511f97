//! Prometheus metrics with the names of docs/INTERFACE.md (prefix `driftsync_`), recorded through the
//! `metrics` facade: the daemon serves them, and `reconcile --metrics-file` writes them for
//! node_exporter's textfile collector. Labels never carry user ids or emails, only bounded sets
//! (run kind, outcome, status, field, endpoint template, HTTP status).
//!
//! Without an installed recorder every call here is a no-op, so library code records freely.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::model::classify::Status;
use crate::model::profile::Field;
use crate::model::progress::{Progress, Projection};
use crate::report::{Report, Summary};

/// Run durations span seconds (a small tenant) to hours (millions of users with pushes).
const DURATION_BUCKETS: [f64; 12] = [
    0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set up the metrics recorder: {0}")]
    Install(String),
    #[error("cannot write the metrics file {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Installs the process-wide recorder and describes every metric; call once.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("driftsync_run_duration_seconds".into()),
            &DURATION_BUCKETS,
        )
        .map_err(|error| MetricsError::Install(error.to_string()))?
        .install_recorder()
        .map_err(|error| MetricsError::Install(error.to_string()))?;
    describe();
    gauge!("driftsync_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    describe_counter!("driftsync_runs_total", "Runs by kind and outcome.");
    describe_histogram!(
        "driftsync_run_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of runs by kind."
    );
    describe_gauge!(
        "driftsync_last_success_timestamp_seconds",
        metrics::Unit::Seconds,
        "UNIX time of the last successful run of each kind."
    );
    describe_gauge!(
        "driftsync_users",
        "Users by status in the last completed run."
    );
    describe_gauge!(
        "driftsync_field_drift",
        "Users whose value of a field differs between the sides, in the last completed run."
    );
    describe_counter!("driftsync_rows_read_total", "Rows read by source.");
    describe_counter!("driftsync_pushes_total", "Pushed users by outcome.");
    describe_counter!(
        "driftsync_api_requests_total",
        "Auth0 requests by endpoint template and HTTP status."
    );
    describe_gauge!(
        "driftsync_api_rate_limit_remaining",
        "x-ratelimit-remaining of the last Auth0 answer."
    );
    describe_counter!(
        "driftsync_api_throttled_seconds_total",
        metrics::Unit::Seconds,
        "Time spent waiting for Auth0 rate limits."
    );
    describe_gauge!("driftsync_build_info", "Always 1; the version is a label.");
    describe_gauge!(
        "driftsync_migrated_ratio",
        "Share of the legacy users that are migrated, as the last full run saw it."
    );
    describe_gauge!(
        "driftsync_migrations_per_day",
        "Migrations per day over the last 7 days of full runs."
    );
    describe_gauge!(
        "driftsync_projected_completion_timestamp_seconds",
        metrics::Unit::Seconds,
        "UNIX time the migration completes at the 7-day rate; absent (NaN once known) when there is no such date."
    );
}

/// One Auth0 answer (`status` is the HTTP code, or `error` when none came).
pub fn api_request(endpoint: &'static str, status: &str) {
    counter!("driftsync_api_requests_total", "endpoint" => endpoint, "status" => status.to_owned())
        .increment(1);
}

pub fn rate_limit_remaining(remaining: u32) {
    gauge!("driftsync_api_rate_limit_remaining").set(f64::from(remaining));
}

/// Counters are integers: the total is kept in microseconds and exported as whole seconds.
static THROTTLED_MICROS: AtomicU64 = AtomicU64::new(0);

pub fn throttled(waited: Duration) {
    let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
    let total = THROTTLED_MICROS
        .fetch_add(micros, Ordering::Relaxed)
        .saturating_add(micros);
    counter!("driftsync_api_throttled_seconds_total").absolute(total / 1_000_000);
}

pub fn rows_read(source: &'static str, rows: u64) {
    counter!("driftsync_rows_read_total", "source" => source).increment(rows);
}

pub fn pushes(applied: u64, failed: u64) {
    counter!("driftsync_pushes_total", "outcome" => "applied").increment(applied);
    counter!("driftsync_pushes_total", "outcome" => "failed").increment(failed);
}

/// A scheduled run that did not start because another replica held the lock.
pub fn run_skipped(kind: &'static str) {
    counter!("driftsync_runs_total", "kind" => kind, "outcome" => "skipped").increment(1);
}

/// Records the end of a run; `report` is present for a completed run. The user gauges follow
/// full runs only (a changes run sees a few users, not the tenant).
pub fn run_finished(
    kind: &'static str,
    outcome: &'static str,
    took: Duration,
    report: Option<&Report>,
) {
    counter!("driftsync_runs_total", "kind" => kind, "outcome" => outcome).increment(1);
    histogram!("driftsync_run_duration_seconds", "kind" => kind).record(took.as_secs_f64());
    let Some(report) = report else {
        return;
    };
    if outcome != "success" {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!("driftsync_last_success_timestamp_seconds", "kind" => kind).set(now.as_secs_f64());
    // The user gauges describe the whole tenant: only a full run knows it.
    if kind != "full" {
        return;
    }
    users(&report.summary);
    for (field, count) in field_drift(report) {
        gauge!("driftsync_field_drift", "field" => field.name()).set(count as f64);
    }
}

/// The migration's progress after a successful full run. The projected date is left out until
/// there is one, and reads NaN when a later run finds none (a gauge cannot be withdrawn).
pub fn progress(progress: &Progress) {
    gauge!("driftsync_migrated_ratio").set(progress.migrated_share);
    if let Some(rate) = progress.per_day_7 {
        gauge!("driftsync_migrations_per_day").set(rate);
    }
    let projected = match &progress.projection {
        Projection::At(at) => crate::timestamp::parse_rfc3339(at),
        Projection::Complete => crate::timestamp::parse_rfc3339(&progress.latest.at),
        Projection::NotAtThisRate | Projection::Unknown => None,
    };
    static PROJECTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match projected {
        Some(micros) => {
            PROJECTED.store(true, Ordering::Relaxed);
            gauge!("driftsync_projected_completion_timestamp_seconds").set(micros as f64 / 1e6);
        }
        None if PROJECTED.load(Ordering::Relaxed) => {
            gauge!("driftsync_projected_completion_timestamp_seconds").set(f64::NAN);
        }
        None => {}
    }
}

fn users(summary: &Summary) {
    for status in Status::ALL {
        gauge!("driftsync_users", "status" => status.name()).set(summary.get(status) as f64);
    }
}

/// Users per differing field; every known field appears, so a field back in sync reads 0.
fn field_drift(report: &Report) -> BTreeMap<Field, u64> {
    let mut drift: BTreeMap<Field, u64> = Field::ALL.into_iter().map(|field| (field, 0)).collect();
    for user in &report.users {
        for diff in &user.fields {
            *drift.entry(diff.field).or_default() += 1;
        }
    }
    drift
}

/// Writes the current metrics in Prometheus text format, atomically (textfile collector).
pub fn write_file(handle: &PrometheusHandle, path: &Path) -> Result<(), MetricsError> {
    let text = handle.render();
    // No personal data: readable by node_exporter, which runs as another user.
    let mode = crate::private_file::PUBLIC;
    crate::report::write_atomically(path, mode, |out| out.write_all(text.as_bytes())).map_err(
        |source| MetricsError::Write {
            path: path.to_owned(),
            source,
        },
    )
}
