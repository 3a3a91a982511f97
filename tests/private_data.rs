//! Personal data at rest, through the real binary: the files driftsync creates are private,
//! readable secrets and state are warned about with the fix, and the push journal and run
//! history are pruned after a successful run while what recovery needs stays.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::app::{App, FILE_SOURCE_NO_API, TWO_USERS_QUERY};

const QUERY: &str = TWO_USERS_QUERY;
const FILE_SOURCE: &str = FILE_SOURCE_NO_API;

async fn app() -> App {
    let app = App::new().await;
    app.seed_two_users(&[]).await;
    app.config(QUERY, FILE_SOURCE);
    app
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn files_with_personal_data_are_created_private_whatever_the_umask() {
    // The usual umask, which leaves new files readable by everyone: the binary inherits it.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let app = app().await;
    let run = app.run(&[
        "reconcile",
        "--format",
        "json",
        "--output",
        "report.json",
        "--metrics-file",
        "driftsync.prom",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(mode(&app.path("driftsync-state.db")), 0o600, "state file");
    assert_eq!(
        mode(&app.path("driftsync-state.db-journal")),
        0o600,
        "the state file's rollback journal"
    );
    assert_eq!(mode(&app.path("report.json")), 0o600, "--output report");
    // No personal data, and node_exporter runs as another user.
    assert_eq!(mode(&app.path("driftsync.prom")), 0o644, "metrics textfile");
    assert!(!run.stderr.contains("readable by group"), "{}", run.stderr);
}

#[tokio::test]
async fn a_state_file_others_can_read_is_reported_with_the_chmod() {
    let app = app().await;
    assert_eq!(app.run(&["reconcile"]).code, 2);
    let state = app.path("driftsync-state.db");
    chmod(&state, 0o644);
    let needles = [
        format!("state file {}", state.display()),
        "mode 0644".to_owned(),
        format!("chmod 600 {}", state.display()),
    ];
    let run = app.run(&["reconcile"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let check = app.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    for needle in &needles {
        assert!(
            run.stderr.contains(needle),
            "reconcile: {needle:?} missing:\n{}",
            run.stderr
        );
        assert!(
            check.stdout.contains(needle),
            "check: {needle:?} missing:\n{}",
            check.stdout
        );
    }
    chmod(&state, 0o600);
    let run = app.run(&["reconcile"]);
    assert!(!run.stderr.contains("state file"), "{}", run.stderr);
}

#[tokio::test]
async fn a_readable_config_with_the_password_and_a_readable_secret_file_are_warned() {
    let app = app().await;
    // The test cluster trusts loopback, so any password connects.
    let url = app
        .db
        .url
        .replacen("postgres@", "postgres:pw-in-the-file@", 1);
    assert_ne!(url, app.db.url);
    let config = app.path("driftsync.toml");
    std::fs::write(
        &config,
        format!("[legacy]\nurl = {url:?}\nquery = {QUERY:?}\n{FILE_SOURCE}"),
    )
    .unwrap();
    chmod(&config, 0o644);
    let needles = [
        format!("config file {}", config.display()),
        "legacy database password".to_owned(),
        format!("chmod 600 {}", config.display()),
        "DRIFTSYNC_LEGACY_URL".to_owned(),
    ];
    let check = app.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    let run = app.run(&["reconcile"]);
    for needle in &needles {
        assert!(
            check.stdout.contains(needle),
            "check: {needle:?} missing:\n{}",
            check.stdout
        );
        assert!(
            run.stderr.contains(needle),
            "reconcile: {needle:?} missing:\n{}",
            run.stderr
        );
    }
    assert!(!check.stdout.contains("pw-in-the-file"), "{}", check.stdout);
    assert!(!run.stderr.contains("pw-in-the-file"), "{}", run.stderr);

    // Private, or without a password in it: nothing to warn about.
    chmod(&config, 0o600);
    assert!(
        !app.run(&["check"])
            .stdout
            .contains("warning    config file")
    );
    app.config(QUERY, FILE_SOURCE);
    chmod(&config, 0o644);
    assert!(
        !app.run(&["check"])
            .stdout
            .contains("warning    config file")
    );

    // A client secret file others can read.
    let secret = app.path("client-secret");
    std::fs::write(&secret, "s3cret").unwrap();
    chmod(&secret, 0o640);
    std::fs::write(
        &config,
        format!(
            "[legacy]\nurl = {:?}\nquery = {QUERY:?}\n[auth0]\nconnection = \"legacy-users\"\n\
             migrated = \"always\"\nclient_secret_file = {:?}\n[cache]\nsource = \"file\"\n\
             file = \"export.ndjson\"\n",
            app.db.url,
            secret.display().to_string()
        ),
    )
    .unwrap();
    let check = app.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    for needle in [
        format!("auth0.client_secret_file {}", secret.display()),
        "mode 0640".to_owned(),
        format!("chmod 600 {}", secret.display()),
    ] {
        assert!(
            check.stdout.contains(&needle),
            "{needle:?} missing:\n{}",
            check.stdout
        );
    }
    assert!(!check.stdout.contains("s3cret"), "{}", check.stdout);
}

#[tokio::test]
async fn old_journal_entries_and_runs_go_after_a_successful_run_and_planned_ones_stay() {
    let app = app().await;
    assert_eq!(app.run(&["reconcile"]).code, 2);
    let state = app.path("driftsync-state.db");
    let recent = time_ago(2);
    {
        let db = rusqlite::Connection::open(&state).unwrap();
        let old = "2020-01-01T00:00:00.000Z";
        db.execute_batch(&format!(
            "INSERT INTO journal (run_id, user_id, body, state, planned_at, resolved_at) VALUES
               ('old', 'auth0|1', '{{\"email\":\"old-applied@x.io\"}}', 'applied', '{old}', '{old}'),
               ('old', 'auth0|2', '{{\"email\":\"old-failed@x.io\"}}', 'failed', '{old}', '{old}'),
               ('old', 'auth0|3', '{{\"email\":\"old-planned@x.io\"}}', 'planned', '{old}', NULL),
               ('new', 'auth0|4', '{{\"email\":\"recent@x.io\"}}', 'applied', '{recent}', '{recent}');
             INSERT INTO runs (id, kind, mode, started_at, finished_at, outcome, summary) VALUES
               ('ancient-failed', 'full', 'report', '{old}', '{old}', 'failed', ''),
               ('ancient-success', 'full', 'report', '{old}', '{old}', 'success', '{{}}');"
        ))
        .unwrap();
    }
    // A shorter retention for the run history than the entries' age, the default for the
    // journal (30 days).
    app.config(
        QUERY,
        &format!("{FILE_SOURCE}\n[state]\nrun_history_days = 1\n"),
    );
    let run = app.run(&["reconcile"]);
    assert_eq!(run.code, 2, "{}", run.stderr);

    let db = rusqlite::Connection::open(&state).unwrap();
    let bodies: Vec<String> = db
        .prepare("SELECT body FROM journal ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        bodies,
        [
            r#"{"email":"old-planned@x.io"}"#,
            r#"{"email":"recent@x.io"}"#
        ],
        "ended entries older than 30 days are gone; a planned one stays at any age"
    );
    let runs: Vec<String> = db
        .prepare("SELECT id FROM runs ORDER BY started_at")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(
        !runs.iter().any(|id| id.starts_with("ancient")),
        "runs older than run_history_days are gone: {runs:?}"
    );

    // A failed run prunes nothing: the old entry inserted now survives it.
    db.execute(
        "INSERT INTO journal (run_id, user_id, body, state, planned_at, resolved_at) VALUES
           ('old', 'auth0|5', '{}', 'applied', '2020-01-01T00:00:00.000Z', '2020-01-01T00:00:00.000Z')",
        [],
    )
    .unwrap();
    drop(db);
    std::fs::remove_file(app.path("export.ndjson")).unwrap();
    assert_eq!(app.run(&["reconcile"]).code, 1);
    let db = rusqlite::Connection::open(&state).unwrap();
    let left: i64 = db
        .query_row(
            "SELECT count(*) FROM journal WHERE user_id = 'auth0|5'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(left, 1);
}

/// RFC 3339 UTC, `days` days ago, as the state file writes its times.
fn time_ago(days: u64) -> String {
    let at = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400);
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let datetime = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    datetime
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}
