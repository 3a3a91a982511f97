//! Fault injection against the real binary: 429 storms, 5xx and dropped connections, stalled
//! connections, tokens and credentials revoked mid-run, export jobs that fail or never
//! complete, the legacy backend killed in the middle of the read, a full or read-only state
//! disk, SIGTERM during a push, and SIGKILL at random moments of pushes.
//!
//! After every fault the run either finishes with the right result or fails with exit 1 and a
//! clear error, records nothing as complete, and pushes nothing it cannot account for.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::app::{App, Run};
use common::tenant::{TABLE, Tenant, fast_retries};
use driftsync::state::StateStore;
use driftsync_testkit::datagen;
use driftsync_testkit::simulator::{BucketLimit, Faults, JobFault, Limits, SimulatorConfig};
use serde_json::{Value, json};

/// The rate-limit test measures pacing against wall-clock time, which a CPU starved by the
/// other tests of this file (process kills, restarts, 20k-row reads) would distort: it runs
/// alone (write), the others together (read).
static PACING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const PUSH: [&str; 6] = [
    "reconcile",
    "--format",
    "json",
    "--push",
    "--max-push-fraction",
    "1",
];

/// The parts of a report that do not depend on when it ran.
fn content(report: &Value) -> (Value, Value) {
    (report["summary"].clone(), report["users"].clone())
}

fn endpoint_count(tenant: &Tenant, endpoint: &str) -> u64 {
    tenant
        .sim
        .stats()
        .by_endpoint
        .get(endpoint)
        .copied()
        .unwrap_or(0)
}

fn store(app: &App) -> StateStore {
    StateStore::open(&app.path("driftsync-state.db")).unwrap()
}

/// The run failed with exit 1, said so naming `needles`, printed no report, left no report
/// file, and the state file records the run as failed.
fn assert_failed_cleanly(app: &App, run: &Run, needles: &[&str]) {
    assert_eq!(
        run.code, 1,
        "expected exit 1\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stdout.is_empty(), "a failed run reports nothing");
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} missing from:\n{}",
            run.stderr
        );
    }
    assert!(
        !app.path("report.json").exists(),
        "no report file after an error"
    );
    let runs = store(app).runs().unwrap();
    let last = runs.last().expect("the run is recorded");
    assert_eq!(last.outcome.as_deref(), Some("failed"), "{runs:?}");
}

// ---------------------------------------------------------------------------------------------
// Rate limits, server errors, dropped and stalled connections
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_429_storm_and_a_tight_bucket_never_make_the_client_overdraw() {
    let _pacing = PACING.write().await;
    let config = SimulatorConfig {
        limits: Limits {
            users_read: BucketLimit {
                burst: 5,
                per_second: 40.0,
            },
            ..Limits::per_class(BucketLimit::ENTERPRISE)
        },
        ..SimulatorConfig::default()
    };
    let tenant = Tenant::new(300, config, true).await;
    tenant.sim.set_faults(Faults {
        forced_429: 3,
        ..Faults::default()
    });
    let client = tenant.client(fast_retries());
    let started = Instant::now();
    let ids: Vec<String> = (1..=120).map(|id| format!("auth0|{id}")).collect();
    let lookups = ids.iter().map(|id| {
        let client = client.clone();
        async move { client.user(id).await }
    });
    let results = futures_util::future::join_all(lookups).await;
    let found = results
        .into_iter()
        .map(|result| result.unwrap())
        .filter(Option::is_some)
        .count();
    assert!(found > 100, "{found}");
    let stats = tenant.sim.stats();
    assert_eq!(
        stats.over_limit_attempts, 0,
        "the client sent into an empty bucket: {stats:?}"
    );
    assert!(
        stats.throttled >= 3,
        "the forced 429s were answered: {stats:?}"
    );
    // 120 requests with 5 of burst at 40/s take at least ~2.9 s.
    assert!(
        started.elapsed() >= Duration::from_millis(2_800),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_retried() {
    let _pacing = PACING.read().await;
    let tenant = Tenant::new(1_500, SimulatorConfig::default(), true).await;
    let clean = tenant.reconcile();
    // With 6 attempts, a request fails for good with probability (1 - 0.85²)⁶ ≈ 0.05 %.
    tenant.sim.set_faults(Faults {
        server_error_rate: 0.15,
        drop_rate: 0.15,
        ..Faults::default()
    });
    let faulty = tenant.reconcile();
    assert_eq!(content(&clean), content(&faulty));
}

#[tokio::test]
async fn stalled_requests_time_out_and_are_retried() {
    let _pacing = PACING.read().await;
    let tenant = Tenant::new(300, SimulatorConfig::default(), true).await;
    tenant.config_full(
        "export",
        datagen::MIGRATED_RULE,
        "request_timeout_seconds = 1",
        "",
    );
    let clean = tenant.reconcile();
    let before = endpoint_count(&tenant, "GET /api/v2/connections");
    // The first two requests of the run (the connection lookup and its retry) hang for 30 s.
    tenant.sim.set_faults(Faults {
        stall: Duration::from_secs(30),
        stall_count: Some(2),
        ..Faults::default()
    });
    let started = Instant::now();
    let stalled = tenant.reconcile();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the client waited for the stalled answers: {:?}",
        started.elapsed()
    );
    assert_eq!(content(&clean), content(&stalled));
    assert_eq!(
        endpoint_count(&tenant, "GET /api/v2/connections"),
        before + 3,
        "two timed out, the third was answered"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_run_clearly_and_in_bounded_time() {
    let _pacing = PACING.read().await;
    let tenant = Tenant::new(300, SimulatorConfig::default(), true).await;
    tenant.config_full(
        "export",
        datagen::MIGRATED_RULE,
        "request_timeout_seconds = 1",
        "",
    );
    tenant.sim.set_faults(Faults {
        stall: Duration::from_secs(60),
        ..Faults::default()
    });
    let started = Instant::now();
    let mut args = PUSH.to_vec();
    args.extend(["--output", "report.json"]);
    let run = tenant.app.run(&args);
    // 6 attempts of 1 s plus at most 7.75 s of backoff.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert_failed_cleanly(
        &tenant.app,
        &run,
        &[
            "GET /api/v2/connections",
            "after 6 attempts",
            "no complete answer within 1 s",
            "auth0.request_timeout_seconds",
        ],
    );
    assert_eq!(tenant.sim.stats().patches, 0);
}

// ---------------------------------------------------------------------------------------------
// Tokens and credentials
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_are_renewed_before_expiry_and_after_a_401() {
    let _pacing = PACING.read().await;
    let config = SimulatorConfig {
        token_lifetime: Duration::from_secs(1),
        export_pending: Duration::from_millis(1_200),
        export_processing: Duration::from_millis(1_200),
        ..SimulatorConfig::default()
    };
    let tenant = Tenant::new(300, config, true).await;
    // The export job outlives two tokens; the run must renew without a failed request.
    tenant.reconcile();
    let stats = tenant.sim.stats();
    assert!(stats.token_requests >= 2, "{stats:?}");

    let client = tenant.client(fast_retries());
    client
        .connection_by_name(datagen::CONNECTION)
        .await
        .unwrap();
    tenant.sim.revoke_tokens();
    let before = tenant.sim.stats().token_requests;
    client
        .connection_by_name(datagen::CONNECTION)
        .await
        .unwrap();
    assert_eq!(tenant.sim.stats().token_requests, before + 1);
}

#[tokio::test]
async fn a_token_revoked_mid_run_is_replaced_once_and_revoked_credentials_stop_the_run() {
    let _pacing = PACING.read().await;
    let tenant = Tenant::new(300, SimulatorConfig::default(), true).await;
    let clean = tenant.reconcile();
    let tokens = tenant.sim.stats().token_requests;
    // Connection lookup, job creation, then the first poll finds the token revoked.
    tenant.sim.set_faults(Faults {
        revoke_tokens_after: Some(3),
        ..Faults::default()
    });
    let renewed = tenant.reconcile();
    assert_eq!(content(&clean), content(&renewed));
    assert_eq!(
        tenant.sim.stats().token_requests,
        tokens + 2,
        "one token for the run, one after the revocation"
    );

    tenant.sim.set_faults(Faults {
        revoke_tokens_after: Some(3),
        revoke_credentials: true,
        ..Faults::default()
    });
    let tokens = tenant.sim.stats().token_requests;
    let mut args = PUSH.to_vec();
    args.extend(["--output", "report.json"]);
    let run = tenant.app.run(&args);
    assert_failed_cleanly(
        &tenant.app,
        &run,
        &["POST /oauth/token", "refused the client credentials", "401"],
    );
    let secret = SimulatorConfig::default().client_secret;
    assert!(!run.stderr.contains(&secret), "{}", run.stderr);
    assert_eq!(
        tenant.sim.stats().token_requests,
        tokens + 2,
        "a refused token request is not retried"
    );
    assert_eq!(tenant.sim.stats().patches, 0);
}

// ---------------------------------------------------------------------------------------------
// Export jobs
// ---------------------------------------------------------------------------------------------

/// A first run (no baselines yet) that fails while the export job runs: nothing is recorded
/// as complete and nothing is pushed; then a run without the fault succeeds.
async fn export_job_fault(fault: JobFault, cache_extra: &str, needles: &[&str]) -> Duration {
    let tenant = Tenant::new(300, SimulatorConfig::default(), true).await;
    tenant.config_with("export", datagen::MIGRATED_RULE, cache_extra);
    tenant.sim.set_faults(Faults {
        export_jobs: fault,
        ..Faults::default()
    });
    let started = Instant::now();
    let mut args = PUSH.to_vec();
    args.extend(["--output", "report.json"]);
    let run = tenant.app.run(&args);
    let elapsed = started.elapsed();
    assert_failed_cleanly(&tenant.app, &run, needles);
    assert!(
        run.stderr.contains("job_"),
        "the job id is named: {}",
        run.stderr
    );
    assert_eq!(tenant.sim.stats().patches, 0, "nothing was pushed");
    let store = store(&tenant.app);
    assert!(
        store.baselines().unwrap().is_empty(),
        "no baselines after an error"
    );
    assert!(store.journal_counts().unwrap().is_empty());
    drop(store);

    tenant.sim.set_faults(Faults::default());
    let run = tenant.app.run(&args);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(tenant.app.path("report.json").exists());
    assert!(tenant.sim.stats().patches > 0);
    elapsed
}

#[tokio::test]
async fn a_failed_export_job_stops_the_run_naming_the_job() {
    let _pacing = PACING.read().await;
    export_job_fault(
        JobFault::Fail,
        "",
        &["users-export job", "failed", "simulated failure", " s)"],
    )
    .await;
}

#[tokio::test]
async fn an_export_job_that_never_completes_is_abandoned_after_the_configured_wait() {
    let _pacing = PACING.read().await;
    let elapsed = export_job_fault(
        JobFault::NeverComplete,
        "export_timeout_seconds = 2",
        &[
            "did not complete within 2 s",
            "cache.export_timeout_seconds",
            "processing",
        ],
    )
    .await;
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The legacy database
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_legacy_backend_killed_mid_read_fails_cleanly_and_the_next_run_succeeds() {
    let _pacing = PACING.read().await;
    legacy_fault_mid_read(LegacyFault::TerminateBackend).await;
}

#[tokio::test]
async fn postgresql_restarted_mid_read_fails_cleanly_and_the_next_run_succeeds() {
    let _pacing = PACING.read().await;
    legacy_fault_mid_read(LegacyFault::RestartServer).await;
}

/// What happens to the legacy database in the middle of the read.
enum LegacyFault {
    /// `pg_terminate_backend` on the session (an administrator, an idle-session killer).
    TerminateBackend,
    /// The whole server restarts (a failover, an upgrade): on a private cluster, so that the
    /// other tests' shared one stays up.
    RestartServer,
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn legacy_fault_mid_read(fault: LegacyFault) {
    let app = App::new().await;
    let cluster = match fault {
        LegacyFault::TerminateBackend => None,
        LegacyFault::RestartServer => Some(
            tokio::task::spawn_blocking(driftsync::demo::cluster::Cluster::start)
                .await
                .unwrap()
                .expect("a private PostgreSQL cluster (initdb and pg_ctl must be installed)"),
        ),
    };
    let url = cluster
        .as_ref()
        .map_or_else(|| app.db.url.clone(), |cluster| cluster.url());
    // 20,000 rows with a pause every 2,000: the read takes about 1.5 s, and the fault lands
    // in the middle of it.
    connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, email text NOT NULL);
         INSERT INTO big SELECT g, 'u' || g || '@x.io' FROM generate_series(1, 20000) g;
         CREATE FUNCTION slow(id bigint) RETURNS bigint LANGUAGE plpgsql AS $$
         BEGIN
             IF id % 2000 = 0 THEN PERFORM pg_sleep(0.15); END IF;
             RETURN id;
         END $$;",
        )
        .await
        .unwrap();
    let lines: Vec<Value> = (1..=100)
        .map(|id| {
            json!({"user_id": format!("auth0|{id}"), "email": format!("u{id}@x.io"),
                   "created_at": "2024-06-01T00:00:00.000Z", "connection": "legacy-users"})
        })
        .collect();
    app.export("export.ndjson", &lines);
    app.config(
        "SELECT slow(id)::text AS user_id, email FROM big",
        "[auth0]\nconnection = \"legacy-users\"\nmigrated = \"always\"\n\
         [cache]\nsource = \"file\"\nfile = \"export.ndjson\"",
    );
    let legacy_url = [("DRIFTSYNC_LEGACY_URL", url.as_str())];
    let files_before: BTreeSet<PathBuf> = files(app.dir.path());

    let binary = env!("CARGO_BIN_EXE_driftsync");
    let child = Command::new(binary)
        .current_dir(app.dir.path())
        .args([
            "--config",
            "driftsync.toml",
            "reconcile",
            "--format",
            "json",
            "--output",
            "report.json",
        ])
        .envs(legacy_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let admin = connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND query LIKE '%slow(id)%'",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            break row.get(0);
        }
        assert!(Instant::now() < deadline, "the legacy query never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Some rows are read by now; most are not.
    tokio::time::sleep(Duration::from_millis(400)).await;
    match &cluster {
        None => {
            let killed: bool = admin
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap()
                .get(0);
            assert!(killed, "the read was still going on");
        }
        Some(cluster) => {
            drop(admin);
            std::thread::scope(|scope| scope.spawn(|| cluster.restart()).join())
                .unwrap()
                .expect("restart PostgreSQL");
        }
    }
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_failed_cleanly(&app, &run, &["legacy", "terminating connection"]);
    assert!(store(&app).baselines().unwrap().is_empty());
    // Nothing half-written is left: only the state file (and SQLite's own files) is new.
    let new: Vec<PathBuf> = files(app.dir.path())
        .difference(&files_before)
        .filter(|path| {
            !path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("driftsync-state.db"))
        })
        .cloned()
        .collect();
    assert!(new.is_empty(), "left behind: {new:?}");

    let run = app.run_with_env(
        &["reconcile", "--format", "json", "--output", "report.json"],
        &legacy_url,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value =
        serde_json::from_slice(&std::fs::read(app.path("report.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["in_sync"], 100, "{}", report["summary"]);
    assert_eq!(report["summary"]["not_migrated"], 19_900);
    assert_eq!(store(&app).baselines().unwrap().len(), 100);
    let runs = store(&app).runs().unwrap();
    let outcomes: Vec<_> = runs.iter().map(|run| run.outcome.as_deref()).collect();
    assert_eq!(outcomes, [Some("failed"), Some("success")]);
}

fn files(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The state file's disk
// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        assert!(
            is_root(),
            "this test mounts a tmpfs to fill or write-protect the state file's disk: run it as \
             root (CI does)"
        );
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs {} failed", path.display());
        Tmpfs { path }
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(uids.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false)
}

/// A tenant whose state file lives on its own tmpfs, `<dir>/state/driftsync-state.db`.
async fn tenant_with_state_on_tmpfs(users: u64, size: &str) -> (Tenant, Tmpfs, PathBuf) {
    let tenant = Tenant::new(users, SimulatorConfig::default(), true).await;
    let mount = Tmpfs::mount(tenant.app.path("state"), size);
    let state = mount.path.join("driftsync-state.db");
    tenant.config_with(
        "export",
        datagen::MIGRATED_RULE,
        &format!("[state]\npath = {:?}", state.display().to_string()),
    );
    (tenant, mount, state)
}

/// Every change was applied exactly once: one applied PATCH per user, and a report-only run
/// finds nothing stranded.
fn assert_each_user_patched_once(tenant: &Tenant, expected_users: u64) {
    let mut applied: BTreeMap<String, u32> = BTreeMap::new();
    for record in tenant.sim.patch_log() {
        assert!(record.applied, "refused: {record:?}");
        *applied.entry(record.user_id).or_default() += 1;
    }
    let twice: Vec<_> = applied.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "patched more than once: {twice:?}");
    assert_eq!(applied.len() as u64, expected_users);
}

#[tokio::test]
async fn a_full_state_disk_fails_naming_the_state_file_and_loses_nothing() {
    let _pacing = PACING.read().await;
    let (tenant, mount, state) = tenant_with_state_on_tmpfs(1_500, "8m").await;
    let stranded = tenant.set.expected().stranded;
    let state_text = state.display().to_string();
    // Less and less room: the state file cannot be created, then a run cannot start, then
    // the journal or the baselines cannot be written.
    for free in [0usize, 16 << 10, 48 << 10] {
        let filler = mount.path.join("filler");
        let _ = std::fs::remove_file(&filler);
        let _ = std::fs::remove_file(&state);
        for leftover in ["journal", "wal", "shm"] {
            let _ = std::fs::remove_file(mount.path.join(format!("driftsync-state.db-{leftover}")));
        }
        fill(&filler, (8 << 20) - free);
        let mut args = PUSH.to_vec();
        args.extend(["--output", "report.json"]);
        let run = tenant.app.run(&args);
        assert_eq!(run.code, 1, "free {free}: {}", run.stderr);
        assert!(run.stdout.is_empty());
        assert!(
            run.stderr.contains(&state_text),
            "free {free}: the state file is named: {}",
            run.stderr
        );
        assert!(!tenant.app.path("report.json").exists());
        // Whatever was sent was journaled first: nothing in flight, nothing lost.
        if let Ok(store) = StateStore::open(&state)
            && let Ok(runs) = store.runs()
        {
            assert!(
                runs.iter()
                    .all(|run| run.outcome.as_deref() != Some("success")),
                "{runs:?}"
            );
        }
    }
    std::fs::remove_file(mount.path.join("filler")).unwrap();
    let run = tenant.app.run(&PUSH);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_each_user_patched_once(&tenant, stranded);
    let after = tenant.reconcile();
    assert_eq!(after["summary"]["stranded"], 0, "{}", after["summary"]);
    let store = StateStore::open(&state).unwrap();
    assert!(store.unresolved().unwrap().is_empty());
    assert_eq!(
        store.journal_counts().unwrap().get("applied").copied(),
        Some(stranded)
    );
}

fn fill(path: &Path, bytes: usize) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        if file.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n;
    }
}

#[tokio::test]
async fn a_read_only_state_disk_fails_naming_the_state_file_and_loses_nothing() {
    let _pacing = PACING.read().await;
    let (tenant, mount, state) = tenant_with_state_on_tmpfs(1_000, "16m").await;
    let first = tenant.reconcile();
    let stranded = first["summary"]["stranded"].as_u64().unwrap();
    assert!(stranded > 0);
    mount.remount("ro");
    let mut args = PUSH.to_vec();
    args.extend(["--output", "report.json"]);
    let run = tenant.app.run(&args);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr.contains(&state.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(!tenant.app.path("report.json").exists());
    assert_eq!(
        tenant.sim.stats().patches,
        0,
        "nothing unjournaled was sent"
    );

    mount.remount("rw");
    let run = tenant.app.run(&PUSH);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let pushed: Value = run.json();
    assert_eq!(pushed["summary"]["pushed"], stranded);
    assert_each_user_patched_once(&tenant, stranded);
    let store = StateStore::open(&state).unwrap();
    let outcomes: Vec<Option<String>> = store
        .runs()
        .unwrap()
        .into_iter()
        .map(|run| run.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [Some("success".to_owned()), Some("success".to_owned())],
        "the read-only run could not record itself, and recorded nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Stopping and crashing in the middle of a push
// ---------------------------------------------------------------------------------------------

/// A tenant where `users` legacy rows all changed their name after migration, with a write
/// bucket that makes the push take several seconds.
async fn busy_tenant(users: u64, per_second: f64) -> Tenant {
    let config = SimulatorConfig {
        limits: Limits {
            users_write: BucketLimit {
                burst: 20,
                per_second,
            },
            ..Limits::per_class(BucketLimit::ENTERPRISE)
        },
        ..SimulatorConfig::default()
    };
    let tenant = Tenant::new(users, config, true).await;
    tenant
        .app
        .sql(&format!(
            "UPDATE {TABLE} SET name = name || ' Jr', updated_at = now()"
        ))
        .await;
    tenant
}

fn spawn_push(tenant: &Tenant, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_driftsync"))
        .current_dir(tenant.app.dir.path())
        .args(["--config", "driftsync.toml"])
        .args(PUSH)
        .args(extra)
        .env("DRIFTSYNC_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_for_patches(tenant: &Tenant, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while tenant.sim.stats().patches < at_least {
        assert!(
            Instant::now() < deadline,
            "the push never got going: {:?}",
            tenant.sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn push_to_completion(tenant: &Tenant, extra: &[&str]) -> Value {
    let mut args = PUSH.to_vec();
    args.extend_from_slice(extra);
    let report = tenant.app.run(&args).report();
    assert_eq!(report["summary"]["push_failed"], 0, "{}", report["summary"]);
    report
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_and_the_next_run_completes() {
    let _pacing = PACING.read().await;
    let tenant = busy_tenant(400, 200.0).await;
    let child = spawn_push(&tenant, &[]);
    wait_for_patches(&tenant, 100).await;
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(status.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
    let store = store(&tenant.app);
    assert!(
        store.unresolved().unwrap().is_empty(),
        "in-flight pushes were journaled"
    );
    drop(store);

    push_to_completion(&tenant, &[]);
    let after = tenant.reconcile();
    assert_eq!(after["summary"]["stranded"], 0, "{}", after["summary"]);
}

/// Writes every profile the simulator holds now as an export file.
fn snapshot_export(tenant: &Tenant, name: &str) {
    let lines: Vec<Value> = (1..=tenant.set.users)
        .filter_map(|id| tenant.sim.user(&format!("auth0|{id}")))
        .collect();
    assert!(!lines.is_empty());
    tenant.app.export(name, &lines);
}

/// Journal rows `(user_id, body, state)`.
fn journal_rows(path: &Path) -> Vec<(String, String, String)> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut statement = connection
        .prepare("SELECT user_id, body, state FROM journal ORDER BY id")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A stopped run's request can land after the export the next run reads was taken. The
/// profile read while resolving its journal entry shows it: the change is not sent twice.
#[tokio::test]
async fn a_change_that_landed_after_the_export_is_not_sent_again() {
    let _pacing = PACING.read().await;
    let tenant = Tenant::new(60, SimulatorConfig::default(), true).await;
    push_to_completion(&tenant, &[]);
    let id = (1..=tenant.set.users)
        .find(|id| {
            tenant
                .sim
                .user(&format!("auth0|{id}"))
                .is_some_and(|profile| profile["app_metadata"]["migrated"] == true)
        })
        .expect("a migrated user");
    let auth0_id = format!("auth0|{id}");
    let landed = "Landed After The Export";
    tenant
        .app
        .sql(&format!(
            "UPDATE {TABLE} SET name = '{landed}', updated_at = now() WHERE id = {id}"
        ))
        .await;
    snapshot_export(&tenant, "snapshot.ndjson");
    // The stopped run: its journal entry left planned, and its PATCH, which landed late.
    let body = json!({ "name": landed });
    StateStore::open(&tenant.app.path("driftsync-state.db"))
        .unwrap()
        .journal_plan(
            "stopped-run",
            &auth0_id,
            &body.to_string(),
            "2026-11-28T00:00:00Z",
        )
        .unwrap();
    let mut profile = tenant.sim.user(&auth0_id).unwrap();
    profile["name"] = json!(landed);
    tenant.sim.insert_user(datagen::CONNECTION, profile);
    let log_start = tenant.sim.patch_log().len();

    let report = push_to_completion(&tenant, &["--cache-file", "snapshot.ndjson"]);
    let sent: Vec<_> = tenant.sim.patch_log()[log_start..]
        .iter()
        .filter(|record| record.user_id == auth0_id)
        .map(|record| record.body.clone())
        .collect();
    assert!(sent.is_empty(), "sent again: {sent:?}");
    let entry = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["user_id"] == *auth0_id)
        .expect("the user is reported: the export it read was older");
    assert_eq!(entry["push"]["state"], "applied", "{entry}");
    let journal = journal_rows(&tenant.app.path("driftsync-state.db"));
    assert_eq!(
        journal
            .iter()
            .filter(|(user, _, _)| *user == auth0_id)
            .map(|(_, _, state)| state.as_str())
            .collect::<Vec<_>>(),
        ["applied"]
    );
    assert_eq!(tenant.sim.user(&auth0_id).unwrap()["name"], landed);
}

#[tokio::test]
async fn sigkill_at_random_moments_of_a_push_never_loses_or_repeats_a_change() {
    let _pacing = PACING.read().await;
    const ROUNDS: u32 = 20;
    const PER_ROUND: usize = 40;
    let seed = std::env::var("DRIFTSYNC_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed_u64);
    eprintln!("seed {seed} (set DRIFTSYNC_TEST_SEED to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let config = SimulatorConfig {
        export_pending: Duration::from_millis(20),
        export_processing: Duration::from_millis(20),
        limits: Limits {
            users_write: BucketLimit {
                burst: 10,
                per_second: 80.0,
            },
            ..Limits::per_class(BucketLimit::ENTERPRISE)
        },
        ..SimulatorConfig::default()
    };
    let tenant = Tenant::new(300, config, true).await;
    // Requests spend a while in flight, so that kills find some there.
    tenant.sim.set_faults(Faults {
        latency: Duration::from_millis(25),
        ..Faults::default()
    });
    // Settle the generated data set first: from here on, legacy and Auth0 agree.
    push_to_completion(&tenant, &[]);
    // Each run reads Auth0's profiles from a snapshot taken just before it (instead of an
    // export job, which takes half a second of polling), and pushes through the API.
    let snapshot = ["--cache-file", "snapshot.ndjson"];
    let mut current: BTreeMap<i64, String> = tenant
        .app
        .db
        .client()
        .await
        .query(&format!("SELECT id, name FROM {TABLE}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let candidates: Vec<i64> = current
        .iter()
        .filter(|(id, name)| {
            tenant
                .sim
                .user(&format!("auth0|{id}"))
                .is_some_and(|profile| {
                    profile["app_metadata"]["migrated"] == true && profile["name"] == **name
                })
        })
        .map(|(id, _)| *id)
        .collect();
    assert!(candidates.len() > PER_ROUND * 3, "{}", candidates.len());
    let state = tenant.app.path("driftsync-state.db");
    let mut mid_push = 0;
    for round in 1..=ROUNDS {
        let mut ids = candidates.clone();
        rng.shuffle(&mut ids);
        ids.truncate(PER_ROUND);
        let planned: BTreeMap<String, String> = ids
            .iter()
            .map(|id| (format!("auth0|{id}"), format!("{} r{round}", current[id])))
            .collect();
        tenant
            .app
            .sql(&format!(
                "UPDATE {TABLE} SET name = name || ' r{round}', updated_at = now() \
                 WHERE id IN ({})",
                ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
            ))
            .await;
        let log_start = tenant.sim.patch_log().len();
        let patches_start = tenant.sim.stats().patches;

        // Kill after a random number of PATCHes have arrived, plus a random few milliseconds.
        snapshot_export(&tenant, "snapshot.ndjson");
        let mut child = spawn_push(&tenant, &snapshot);
        let after = rng.u64(0..PER_ROUND as u64 - 4);
        wait_for_patches(&tenant, patches_start + after).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..30))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let applied_at_kill = tenant.sim.patch_log()[log_start..]
            .iter()
            .filter(|record| record.applied)
            .count();
        if applied_at_kill > 0 && applied_at_kill < PER_ROUND {
            mid_push += 1;
        }

        // The next run recovers the journal and finishes the job.
        snapshot_export(&tenant, "snapshot.ndjson");
        push_to_completion(&tenant, &snapshot);

        // Every planned change is in effect, applied exactly once, to planned users only.
        let log = tenant.sim.patch_log();
        let mut applied: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for record in &log[log_start..] {
            assert!(record.applied, "round {round}: refused {record:?}");
            applied
                .entry(record.user_id.as_str())
                .or_default()
                .push(&record.body);
        }
        for (user, name) in &planned {
            let bodies = applied.get(user.as_str()).cloned().unwrap_or_default();
            assert_eq!(
                bodies,
                [&json!({ "name": name })],
                "round {round}: {user} must be patched exactly once"
            );
            assert_eq!(tenant.sim.user(user).unwrap()["name"], **name);
        }
        assert_eq!(
            applied.len(),
            planned.len(),
            "round {round}: only planned users are patched: {:?}",
            applied.keys().collect::<Vec<_>>()
        );

        // The journal: nothing left in flight, one applied entry per planned change.
        let rows = journal_rows(&state);
        assert!(
            rows.iter().all(|(_, _, state)| state != "planned"),
            "round {round}: entries left planned"
        );
        for (user, name) in &planned {
            let body = json!({ "name": name }).to_string();
            let applied_entries = rows
                .iter()
                .filter(|(entry_user, entry_body, state)| {
                    entry_user == user && state == "applied" && *entry_body == body
                })
                .count();
            assert_eq!(applied_entries, 1, "round {round}: journal of {user}");
        }

        // Baselines hold the pushed (legacy) values.
        let baselines = StateStore::open(&state).unwrap().baselines().unwrap();
        for (user, name) in &planned {
            let legacy_id = user.trim_start_matches("auth0|");
            let hash = baselines
                .get(legacy_id)
                .and_then(|entries| entries.find("name"));
            assert_eq!(
                hash,
                Some(driftsync::model::baseline::hash(Some(name))),
                "round {round}: baseline of {user}"
            );
        }

        for id in &ids {
            let name = current.get_mut(id).unwrap();
            name.push_str(&format!(" r{round}"));
        }
    }
    assert_eq!(
        tenant.sim.stats().deletes,
        0,
        "driftsync never deletes a user"
    );
    assert!(
        mid_push >= ROUNDS / 2,
        "most kills should land in the middle of a push: {mid_push} of {ROUNDS}"
    );
}
