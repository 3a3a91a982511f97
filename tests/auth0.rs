//! The Management API side over real HTTP: the export-job source end to end against the
//! simulator (including an expired link), `import_mode`, `check` and `demo`. Faults (429s, 5xx,
//! dropped and stalled connections, revoked tokens, failing jobs) are in `tests/faults.rs`.

mod common;

use std::time::Duration;

use common::app::App;
use common::tenant::{Tenant, fast_retries};
use driftsync::auth0::export_job::{self, ExportOptions};
use driftsync::auth0::{Auth0Error, EndpointClass};
use driftsync_testkit::datagen;
use driftsync_testkit::simulator::SimulatorConfig;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// The parts of a report that do not depend on when it ran.
fn content(report: &Value) -> (Value, Value) {
    (report["summary"].clone(), report["users"].clone())
}

#[tokio::test]
async fn export_job_and_export_file_give_identical_reports() {
    let tenant = Tenant::new(2_000, SimulatorConfig::default(), true).await;
    let through_api = tenant.reconcile();
    assert_eq!(
        through_api["summary"],
        serde_json::to_value(tenant.set.expected()).unwrap()
    );
    tenant.config("file", datagen::MIGRATED_RULE);
    let from_file = tenant.reconcile();
    assert_eq!(content(&through_api), content(&from_file));
    let stats = tenant.sim.stats();
    assert_eq!(stats.deletes, 0);
    assert_eq!(stats.patches, 0, "report-only sends nothing");
    assert_eq!(stats.over_limit_attempts, 0);
}

#[tokio::test]
async fn management_api_requests_do_not_grow_with_users() {
    let mut counts = Vec::new();
    for users in [300, 3_000] {
        let tenant = Tenant::new(users, SimulatorConfig::default(), true).await;
        tenant.reconcile();
        let stats = tenant.sim.stats();
        counts.push((stats.requests, stats.token_requests, stats.downloads));
    }
    assert_eq!(counts[0], counts[1], "{counts:?}");
    let (requests, tokens, downloads) = counts[0];
    assert_eq!((tokens, downloads), (1, 1));
    assert!(
        requests <= 6,
        "connection, job, and a few polls: {requests}"
    );
}

#[tokio::test]
async fn import_mode_is_read_from_the_connection() {
    for (import_mode, migrated_status) in [(true, "stranded"), (false, "stale_cache")] {
        let tenant = Tenant::new(400, SimulatorConfig::default(), import_mode).await;
        tenant.config("export", "import_mode");
        let run = tenant.app.run(&["reconcile", "--format", "json"]);
        let report = run.json();
        let summary = &report["summary"];
        if import_mode {
            // Every Auth0 user counts as migrated: cached profiles become stranded or in sync.
            assert_eq!(summary["stale_cache"], 0, "{summary}");
            assert!(summary[migrated_status].as_u64().unwrap() > 0, "{summary}");
        } else {
            assert_eq!(summary["stranded"], 0, "{summary}");
            assert_eq!(summary["orphaned"], 0, "{summary}");
            assert!(summary[migrated_status].as_u64().unwrap() > 0, "{summary}");
        }
    }
}

#[tokio::test]
async fn an_expired_download_link_is_replaced_by_a_fresh_one() {
    let config = SimulatorConfig {
        download_link_ttl: Duration::from_millis(300),
        ..SimulatorConfig::default()
    };
    let tenant = Tenant::new(500, config, true).await;
    let client = tenant.client(fast_retries());
    let connection = client
        .connection_by_name(datagen::CONNECTION)
        .await
        .unwrap();
    let fields = export_job::fields_for(
        &[driftsync::model::profile::Field::Email],
        &driftsync::model::profile::MigratedRule::Always,
    );
    let options = ExportOptions {
        first_poll: Duration::from_millis(50),
        ..ExportOptions::default()
    };
    let job = export_job::run_job(&client, &connection.id, &fields, &options)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs_before = tenant
        .sim
        .stats()
        .by_endpoint
        .get("GET /api/v2/jobs/{id}")
        .copied()
        .unwrap_or(0);
    let mut stream = export_job::download(client.clone(), job, &options);
    let mut gz = Vec::new();
    while let Some(chunk) = stream.next().await {
        gz.extend_from_slice(&chunk.unwrap());
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut text)
        .unwrap();
    assert_eq!(
        text.lines().count() as u64,
        tenant.set.expected().auth0_users
    );
    let jobs_after = tenant
        .sim
        .stats()
        .by_endpoint
        .get("GET /api/v2/jobs/{id}")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        jobs_after,
        jobs_before + 1,
        "one GET /jobs/{{id}} for a fresh link"
    );
}

#[tokio::test]
async fn a_permanent_400_reports_auth0s_error_code_and_message() {
    let tenant = Tenant::new(50, SimulatorConfig::default(), false).await;
    let client = tenant.client(fast_retries());
    let url = client.api_url(&["users", "auth0|1"]).unwrap();
    let error = client
        .json::<Value>(
            reqwest::Method::PATCH,
            EndpointClass::UsersWrite,
            "/api/v2/users/{id}",
            url,
            Some(&json!({"email": "new@example.org"})),
        )
        .await
        .unwrap_err();
    match &error {
        Auth0Error::Api { status, code, .. } => {
            assert_eq!(*status, 400);
            assert_eq!(code.as_deref(), Some("operation_not_supported"));
        }
        other => panic!("{other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("PATCH /api/v2/users/{id}") && message.contains("operation_not_supported"),
        "{message}"
    );
    assert_eq!(tenant.sim.stats().patches, 1, "a 400 is not retried");
}

#[tokio::test]
async fn bad_credentials_and_unknown_connections_are_clear_errors() {
    let tenant = Tenant::new(50, SimulatorConfig::default(), true).await;
    std::fs::write(tenant.app.path("secret"), "wrong-secret-value").unwrap();
    let run = tenant.app.run(&["reconcile"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("client credentials"), "{}", run.stderr);
    assert!(!run.stderr.contains("wrong-secret-value"), "{}", run.stderr);

    tenant.config("export", datagen::MIGRATED_RULE);
    let text = std::fs::read_to_string(tenant.app.path("driftsync.toml")).unwrap();
    std::fs::write(
        tenant.app.path("driftsync.toml"),
        text.replace(
            "connection = \"legacy-users\"",
            "connection = \"legacy-userz\"",
        ),
    )
    .unwrap();
    let run = tenant.app.run(&["reconcile"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("legacy-userz") && run.stderr.contains("legacy-users"),
        "{}",
        run.stderr
    );

    std::fs::remove_file(tenant.app.path("secret")).unwrap();
    let run = tenant.app.run(&["reconcile"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("secret"), "{}", run.stderr);
}

#[tokio::test]
async fn check_reports_what_it_found_and_writes_nothing() {
    let tenant = Tenant::new(100, SimulatorConfig::default(), true).await;
    let run = tenant.app.run(&["check"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for needle in [
        "legacy",
        "LIMIT 0",
        "connection \"legacy-users\"",
        "import_mode on",
        "compared fields",
        "set_user_root_attributes on_each_login (the default)",
        "warning    email can be pushed",
        "Get User script",
        "nothing was written",
    ] {
        assert!(
            run.stdout.contains(needle),
            "{needle:?} missing:\n{}",
            run.stdout
        );
    }
    // Without import mode no Get User script runs on a push, and check says nothing of it.
    tenant.sim.add_connection(datagen::CONNECTION, false);
    let run = tenant.app.run(&["check"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains("Get User"), "{}", run.stdout);
    let stats = tenant.sim.stats();
    assert_eq!((stats.patches, stats.deletes), (0, 0));
    assert_eq!(
        stats.by_endpoint.get("POST /api/v2/jobs/users-exports"),
        None,
        "check starts no job"
    );

    tenant.app.config("SELECT id::text AS user_id, nonsense FROM users", "[auth0]\nconnection = \"legacy-users\"\nmigrated = \"always\"\n[cache]\nsource = \"file\"\nfile = \"export.json.gz\"");
    let run = tenant.app.run(&["check"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("nonsense"), "{}", run.stderr);
}

#[tokio::test]
async fn demo_runs_against_a_given_database() {
    let app = App::new().await;
    let run = app.run_without_config(&["demo", "--users", "600", "--legacy-url", &app.db.url]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    for needle in [
        "stranded",
        "orphaned",
        "auth0_only",
        "What the statuses mean",
        "source = \"export\"",
        "deleted_in_auth0 1",
        "The specified new email already exists",
        "Get User script",
    ] {
        assert!(
            run.stdout.contains(needle),
            "{needle:?} missing:\n{}",
            run.stdout
        );
    }
    let client = app.db.client().await;
    let left = client
        .query_one("SELECT to_regclass('driftsync_demo_users') IS NULL", &[])
        .await
        .unwrap();
    assert!(left.get::<_, bool>(0), "the demo table was dropped again");
}

#[tokio::test]
async fn demo_starts_its_own_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_driftsync"))
        .current_dir(dir.path())
        .args(["demo", "--users", "300"])
        .env_remove("DRIFTSYNC_LEGACY_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("throwaway PostgreSQL"), "{stdout}");
    assert!(stdout.contains("stranded"), "{stdout}");
}
