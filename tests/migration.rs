//! `driftsync progress` and `driftsync cutover` over a state file with several recorded full
//! runs: the rate and the projected date from a known history, the inactivity of the users
//! not migrated, each cutover blocker, a stale run, and the migrated ids.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::app::{App, FILE_SOURCE_NO_API};
use serde_json::{Value, json};

const QUERY: &str = "SELECT id::text AS user_id, email, last_seen AS last_active_at FROM users";

fn line(id: u32) -> Value {
    json!({
        "user_id": format!("auth0|{id}"),
        "email": format!("u{id}@x.io"),
        "created_at": format!("2024-06-{:02}T00:00:00.000Z", id),
        "identities": [{"connection": "legacy-users", "provider": "auth0", "user_id": id.to_string(), "isSocial": false}],
    })
}

/// Ten legacy users: 1–5 active ten days ago, 6–10 four hundred days ago; `migrated` of them
/// (the lowest ids) in Auth0.
async fn app() -> App {
    let app = App::new().await;
    app.sql(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text, last_seen timestamptz);
         INSERT INTO users SELECT n, 'u' || n || '@x.io',
             now() - (CASE WHEN n <= 5 THEN 10 ELSE 400 END) * interval '1 day'
           FROM generate_series(1, 10) AS n;",
    )
    .await;
    // Small runs lose and gain users freely here: the shrink guard is not the subject.
    app.config(
        QUERY,
        &format!("{FILE_SOURCE_NO_API}\n[reconcile]\nmax_shrink_fraction = 1.0\n"),
    );
    app
}

fn reconcile_with(app: &App, migrated: u32) {
    app.export(
        "export.ndjson",
        &(1..=migrated).map(line).collect::<Vec<_>>(),
    );
    let run = app.run(&["reconcile", "--format", "json"]);
    assert!(run.code == 0 || run.code == 2, "{}", run.stderr);
}

fn state(app: &App) -> rusqlite::Connection {
    rusqlite::Connection::open(app.path("driftsync-state.db")).unwrap()
}

/// Moves a recorded run's progress snapshot to `at`.
fn move_snapshot(app: &App, index: usize, at: &str) {
    let state = state(app);
    let run_id: String = state
        .query_row(
            "SELECT run_id FROM run_progress ORDER BY finished_at LIMIT 1 OFFSET ?1",
            [index as i64],
            |row| row.get(0),
        )
        .unwrap();
    state
        .execute(
            "UPDATE run_progress SET finished_at = ?1, snapshot = json_set(snapshot, '$.at', ?1)
             WHERE run_id = ?2",
            rusqlite::params![at, run_id],
        )
        .unwrap();
}

#[tokio::test]
async fn progress_reads_the_rate_and_the_projection_off_the_recorded_runs() {
    let app = app().await;
    let none = app.run(&["progress"]);
    assert_eq!(none.code, 1);
    assert!(none.stderr.contains("does not exist"), "{}", none.stderr);

    reconcile_with(&app, 4);
    reconcile_with(&app, 6);
    // The first run two days before the second: 2 migrations in 2 days, 4 users left.
    move_snapshot(&app, 0, "2026-03-01T00:00:00Z");
    move_snapshot(&app, 1, "2026-03-03T00:00:00Z");

    let run = app.run(&["progress", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let progress = run.json();
    let latest = &progress["latest"];
    assert_eq!(
        (
            &latest["legacy_users"],
            &latest["migrated"],
            &latest["not_migrated"]
        ),
        (&json!(10), &json!(6), &json!(4))
    );
    assert_eq!(progress["migrated_share"], json!(0.6));
    assert_eq!(progress["per_day_7"], json!(1.0));
    assert_eq!(
        progress["projection"],
        json!({"state": "at", "at": "2026-03-07T00:00:00Z"})
    );
    // Users 7–10 are not migrated, inactive for over a year.
    assert_eq!(latest["inactivity"], json!([0, 0, 0, 0, 4, 0]));
    let mut examples: Vec<&str> = latest["examples"]["not_migrated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    examples.sort_unstable();
    assert_eq!(examples, ["auth0|10", "auth0|7", "auth0|8", "auth0|9"]);

    let table = app.run(&["progress"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    for needle in [
        "migrated                    6   60.0%",
        "projected completion: 2026-03-07 at the 7-day rate",
        "365 days or more            4",
    ] {
        assert!(
            table.stdout.contains(needle),
            "{needle:?} missing:\n{}",
            table.stdout
        );
    }

    // No migration since: a stalled rate projects no date.
    reconcile_with(&app, 6);
    move_snapshot(&app, 2, "2026-03-12T00:00:00Z");
    let stalled = app.run(&["progress", "--format", "json"]).json();
    assert_eq!(stalled["per_day_7"], json!(0.0));
    assert_eq!(stalled["projection"], json!({"state": "not_at_this_rate"}));
}

#[tokio::test]
async fn cutover_names_the_blockers_until_everyone_is_migrated_and_writes_the_ids() {
    let app = app().await;
    let no_run = app.run(&["cutover"]);
    assert_eq!(no_run.code, 1, "{}", no_run.stderr);

    reconcile_with(&app, 8);
    // User 2 changed in legacy since Auth0's copy: stranded.
    app.sql("UPDATE users SET email = 'new2@x.io' WHERE id = 2")
        .await;
    reconcile_with(&app, 8);
    let blocked = app.run(&["cutover", "--format", "json"]);
    assert_eq!(blocked.code, 2, "{}", blocked.stderr);
    let blocked = blocked.json();
    assert_eq!(blocked["ready"], false);
    let reasons: Vec<(String, u64)> = blocked["blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["reason"].as_str().unwrap().to_owned(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [("not_migrated".to_owned(), 2), ("stranded".to_owned(), 1)]
    );
    assert_eq!(blocked["blockers"][1]["examples"], json!(["auth0|2"]));
    let table = app.run(&["cutover"]);
    assert_eq!(table.code, 2);
    assert!(
        table.stdout.contains("not ready: 2 blockers"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("e.g. auth0|2"), "{}", table.stdout);

    // Everyone migrated and in sync: ready, and the ids of every migrated user are written.
    app.sql("UPDATE users SET email = 'u2@x.io' WHERE id = 2")
        .await;
    reconcile_with(&app, 10);
    let ids = app.path("migrated.csv");
    let ready = app.run(&[
        "cutover",
        "--migrated-ids",
        ids.to_str().unwrap(),
        "--cache-file",
        app.path("export.ndjson").to_str().unwrap(),
    ]);
    assert_eq!(ready.code, 0, "{}\n{}", ready.stdout, ready.stderr);
    assert!(
        ready.stdout.starts_with("last successful full run:"),
        "{}",
        ready.stdout
    );
    assert!(ready.stdout.contains("ready:"), "{}", ready.stdout);
    let csv = std::fs::read_to_string(&ids).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 11, "{csv}");
    assert_eq!(lines[0], "user_id,migrated_at");
    assert!(lines.contains(&"3,2024-06-03T00:00:00Z"), "{csv}");
    assert_eq!(
        std::fs::metadata(&ids).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A run older than cutover.max_run_age_hours decides nothing.
    state(&app)
        .execute(
            "UPDATE run_progress SET finished_at = '2026-01-01T00:00:00Z',
                 snapshot = json_set(snapshot, '$.at', '2026-01-01T00:00:00Z')",
            [],
        )
        .unwrap();
    let stale = app.run(&["cutover", "--format", "json"]);
    assert_eq!(stale.code, 2, "{}", stale.stderr);
    assert_eq!(stale.json()["blockers"][0]["reason"], "no_recent_run");
}
