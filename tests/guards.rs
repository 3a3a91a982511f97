//! The shrink guard, end to end: a full run whose mapping query lost rows, or whose export lost
//! users, against the last successful full run stops with exit 1 before anything is written,
//! pushed or reported, and is recorded as `refused`; `--allow-shrink` lets one run through.

mod common;

use common::app::{App, FILE_SOURCE_NO_API};
use serde_json::{Value, json};

const QUERY: &str = "SELECT id::text AS user_id, email FROM users";

fn line(id: u32) -> Value {
    json!({
        "user_id": format!("auth0|{id}"),
        "email": format!("u{id}@x.io"),
        "identities": [{"connection": "legacy-users", "provider": "auth0", "user_id": id.to_string(), "isSocial": false}],
    })
}

/// Ten legacy users, all in the export, one of them stranded (a new email), and a first
/// successful run that the guard compares against.
async fn ten_users() -> App {
    let app = App::new().await;
    app.sql(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);
         INSERT INTO users SELECT n, 'u' || n || '@x.io' FROM generate_series(1, 10) AS n;
         UPDATE users SET email = 'new10@x.io' WHERE id = 10;",
    )
    .await;
    app.export("export.ndjson", &(1..=10).map(line).collect::<Vec<_>>());
    app.config(QUERY, FILE_SOURCE_NO_API);
    let first = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(first.code, 2, "{}", first.stderr);
    assert_eq!(first.json()["summary"]["legacy_users"], 10);
    app
}

/// A query's rows from the state file, each row's columns as text or hex.
fn state_rows(app: &App, sql: &str) -> Vec<String> {
    let state = rusqlite::Connection::open(app.path("driftsync-state.db")).unwrap();
    let mut statement = state.prepare(sql).unwrap();
    statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The outcomes of the state file's runs, oldest first.
fn outcomes(app: &App) -> Vec<String> {
    state_rows(app, "SELECT outcome FROM runs ORDER BY started_at")
}

/// Every stored baseline chunk, as text.
fn baselines(app: &App) -> Vec<String> {
    state_rows(
        app,
        "SELECT first_id || ':' || hex(body) FROM baseline_chunks ORDER BY first_id",
    )
}

#[tokio::test]
async fn a_query_that_lost_thirty_percent_of_its_rows_is_refused_until_allowed_once() {
    let app = ten_users().await;
    let baselines_before = baselines(&app);
    assert!(!baselines_before.is_empty());
    // A broken mapping query: a filter that drops 3 of the 10 users.
    app.config(&format!("{QUERY} WHERE id <= 7"), FILE_SOURCE_NO_API);
    let report = app.path("report.json");
    let metrics = app.path("metrics.prom");
    let refused = app.run(&[
        "reconcile",
        "--format",
        "json",
        "--output",
        report.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    for needle in [
        "returned 7 rows (the last successful full run: 10, -30.0%)",
        "Auth0 has 10 users (the last successful full run: 10, +0.0%)",
        "reconcile.max_shrink_fraction = 0.1",
        "--allow-shrink",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "{needle:?} missing from:\n{}",
            refused.stderr
        );
    }
    assert!(!report.exists(), "a refused run made a report");
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    let exposition = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("driftsync_runs_total{") && l.contains("outcome=\"refused\"")),
        "{exposition}"
    );
    assert_eq!(outcomes(&app), ["success", "refused"]);
    assert_eq!(
        baselines(&app),
        baselines_before,
        "a refused run wrote baselines"
    );

    // Let through once: the run completes (and shows why the guard exists: the three users the
    // query lost look orphaned), and later runs compare against it.
    let allowed = app.run(&["reconcile", "--format", "json", "--allow-shrink"]);
    assert_eq!(allowed.code, 2, "{}", allowed.stderr);
    let summary = &allowed.json()["summary"];
    assert_eq!(
        (&summary["legacy_users"], &summary["orphaned"]),
        (&json!(7), &json!(3))
    );
    let next = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(next.code, 2, "{}", next.stderr);
    assert_eq!(outcomes(&app), ["success", "refused", "success", "success"]);
}

#[tokio::test]
async fn a_truncated_export_is_refused_and_a_small_fall_is_not() {
    let app = ten_users().await;
    // One user fewer in the export (10 %) is within the default limit.
    app.export("export.ndjson", &(1..=9).map(line).collect::<Vec<_>>());
    let small = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(small.code, 2, "{}", small.stderr);
    assert_eq!(small.json()["summary"]["auth0_users"], 9);
    // A truncated export: 5 of the 9 users the last run saw.
    app.export("export.ndjson", &(1..=5).map(line).collect::<Vec<_>>());
    let refused = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("Auth0 has 5 users (the last successful full run: 9, -44.4%)"),
        "{}",
        refused.stderr
    );
    // A stricter limit refuses the small fall too.
    app.export("export.ndjson", &(1..=9).map(line).collect::<Vec<_>>());
    app.config(
        QUERY,
        &format!("{FILE_SOURCE_NO_API}\n[reconcile]\nmax_shrink_fraction = 0.0\n"),
    );
    app.sql("DELETE FROM users WHERE id = 1").await;
    let strict = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(strict.code, 1, "{}", strict.stderr);
    assert!(
        strict
            .stderr
            .contains("returned 9 rows (the last successful full run: 10, -10.0%)"),
        "{}",
        strict.stderr
    );
}
