//! `driftsync daemon` as a real process: scheduling, metrics, the run lock across replicas,
//! signals, and the changes schedule against the simulator.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::app::App;
use common::daemon::{Daemon, free_port};
use common::tenant::{TABLE, Tenant};
use driftsync::state::StateStore;
use driftsync_testkit::datagen::{self, DataSet};
use driftsync_testkit::simulator::SimulatorConfig;

const SUCCESS: &str = "driftsync_runs_total{kind=\"full\",outcome=\"success\"}";

/// A legacy table and export file of `users` generated users, and a daemon config running a
/// full reconcile every second.
async fn file_setup(users: u64) -> App {
    let app = App::new().await;
    let set = DataSet::new(users, 5);
    datagen::load_legacy(&app.db.client().await, &set, TABLE)
        .await
        .unwrap();
    let mut export = Vec::new();
    set.write_export(&mut export).unwrap();
    app.export_bytes("export.json.gz", &export);
    app
}

fn daemon_config(app: &App, name: &str, state: &str) -> String {
    let text = format!(
        "[legacy]\nurl = {url:?}\nquery = {query:?}\n[auth0]\nconnection = {connection:?}\nmigrated = {migrated:?}\n\
         [cache]\nsource = \"file\"\nfile = \"export.json.gz\"\n[schedule]\nfull = \"* * * * * *\"\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\n[state]\npath = {state:?}\n",
        url = app.db.url,
        query = datagen::mapping_query(TABLE),
        connection = datagen::CONNECTION,
        migrated = datagen::MIGRATED_RULE,
        port = free_port(),
    );
    std::fs::write(app.path(name), text).unwrap();
    name.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_runs_and_sigterm_exits_zero() {
    let app = file_setup(800).await;
    let config = daemon_config(&app, "daemon.toml", "state.db");
    let daemon = Daemon::start(app.dir.path(), &config);
    let first = daemon.wait_for(SUCCESS, 1.0).await;
    let runs = first[SUCCESS];
    let later = daemon.wait_for(SUCCESS, runs + 2.0).await;
    let moved = |values: &HashMap<String, f64>| values["driftsync_last_success_timestamp_seconds{kind=\"full\"}"];
    assert!(
        moved(&later) > moved(&first),
        "last_success_timestamp_seconds moves"
    );

    // The gauges equal the report of a one-shot run on the same data.
    let report = app
        .run_without_config(&["--config", &config, "reconcile", "--format", "json"])
        .json();
    for status in [
        "in_sync",
        "stranded",
        "auth0_ahead",
        "stale_cache",
        "not_migrated",
        "orphaned",
        "deleted_in_auth0",
        "auth0_only",
    ] {
        let key = format!("driftsync_users{{status=\"{status}\"}}");
        assert_eq!(
            later.get(&key).copied(),
            report["summary"][status].as_f64(),
            "{key}"
        );
    }
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthz", daemon.port))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let (code, took) = daemon.stop().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_on_sighup_keeps_the_daemon_on_the_old_one() {
    let app = file_setup(200).await;
    let config = daemon_config(&app, "daemon.toml", "state.db");
    let daemon = Daemon::start(app.dir.path(), &config);
    daemon.wait_for(SUCCESS, 1.0).await;
    let good = std::fs::read_to_string(app.path(&config)).unwrap();
    std::fs::write(
        app.path(&config),
        good.replace("[cache]", "[cache]\nsorce = \"file\""),
    )
    .unwrap();
    daemon.signal("HUP");
    let before = daemon.metrics().await.unwrap()[SUCCESS];
    daemon.wait_for(SUCCESS, before + 2.0).await;
    let log = daemon.log_text();
    assert!(
        log.contains("keeping the old one") && log.contains("sorce"),
        "{log}"
    );
    let (code, _) = daemon.stop().await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_database_never_run_at_once() {
    let app = file_setup(6_000).await;
    let one = daemon_config(&app, "one.toml", "one.db");
    let two = daemon_config(&app, "two.toml", "two.db");
    let first = Daemon::start(app.dir.path(), &one);
    let second = Daemon::start(app.dir.path(), &two);
    let skipped = "driftsync_runs_total{kind=\"full\",outcome=\"skipped\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = first.metrics().await.unwrap_or_default();
        let b = second.metrics().await.unwrap_or_default();
        let count =
            |values: &HashMap<String, f64>, key: &str| values.get(key).copied().unwrap_or(0.0);
        if count(&a, SUCCESS) + count(&b, SUCCESS) >= 6.0
            && count(&a, skipped) + count(&b, skipped) >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "runs: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(first.stop().await.0, Some(0));
    assert_eq!(second.stop().await.0, Some(0));
    let mut intervals = Vec::new();
    for state in ["one.db", "two.db"] {
        for run in StateStore::open(&app.path(state)).unwrap().runs().unwrap() {
            if let Some(finished) = run.finished_at {
                intervals.push((run.started_at, finished, state));
            }
        }
    }
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "runs overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_schedule_catches_a_legacy_edit_without_an_export_job() {
    let tenant = Tenant::new(400, SimulatorConfig::default(), true).await;
    let port = free_port();
    tenant.config_with(
        "export",
        datagen::MIGRATED_RULE,
        &format!(
            "[reconcile]\npush = true\nmax_push_fraction = 0.5\n[schedule]\nfull = \"0 0 3 1 1 *\"\n\
             changes = \"* * * * * *\"\n[metrics]\nlisten = \"127.0.0.1:{port}\""
        ),
    );
    // A first full run (with its export job) sets the watermark and the baselines.
    let run = tenant.app.run(&["reconcile", "--format", "json"]);
    assert!(run.code == 0 || run.code == 2, "{}", run.stderr);
    let jobs = |tenant: &Tenant| {
        tenant
            .sim
            .stats()
            .by_endpoint
            .get("POST /api/v2/jobs/users-exports")
            .copied()
            .unwrap_or(0)
    };
    let jobs_before = jobs(&tenant);
    let daemon = Daemon::start(tenant.app.dir.path(), "driftsync.toml");
    daemon
        .wait_for(
            "driftsync_runs_total{kind=\"changes\",outcome=\"success\"}",
            1.0,
        )
        .await;

    let client = tenant.app.db.client().await;
    let id = (1..=400i64)
        .find(|id| {
            tenant
                .sim
                .user(&format!("auth0|{id}"))
                .is_some_and(|profile| profile["app_metadata"]["migrated"] == true)
        })
        .unwrap();
    client
        .execute(
            &format!("UPDATE {TABLE} SET name = 'Changed Later', updated_at = now() WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap();
    let edited = Instant::now();
    let deadline = edited + Duration::from_secs(20);
    while tenant.sim.user(&format!("auth0|{id}")).unwrap()["name"] != "Changed Later" {
        assert!(
            Instant::now() < deadline,
            "the edit never reached Auth0:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        edited.elapsed() < Duration::from_secs(5),
        "within one period or so: {:?}",
        edited.elapsed()
    );
    assert_eq!(
        jobs(&tenant),
        jobs_before,
        "no export job for a changes run"
    );

    // The edited row stays inside the overlap window, so the next changes runs read it again;
    // it now equals what both sides agreed on, and Auth0 is not asked for it again.
    let profile_requests = |tenant: &Tenant| {
        tenant
            .sim
            .stats()
            .by_endpoint
            .get("GET /api/v2/users/{id}")
            .copied()
            .unwrap_or(0)
    };
    let changes_runs = "driftsync_runs_total{kind=\"changes\",outcome=\"success\"}";
    let runs = daemon.wait_for(changes_runs, 1.0).await[changes_runs];
    let requests = profile_requests(&tenant);
    assert!(requests >= 1, "the pushing run asked for the profile");
    daemon.wait_for(changes_runs, runs + 3.0).await;
    assert_eq!(
        profile_requests(&tenant),
        requests,
        "a pushed row read again asks Auth0 nothing:\n{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("unchanged_since_agreed=1"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(daemon.stop().await.0, Some(0));
}
