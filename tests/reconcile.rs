//! End-to-end `driftsync reconcile` runs: the real binary against a real PostgreSQL database
//! and Auth0 export files, checking every status, every equality rule and the report shapes.

mod common;

use common::app::App;
use serde_json::{Value, json};

const SCHEMA: &str = "
    CREATE TABLE users (
        id bigint PRIMARY KEY,
        email text,
        email_confirmed boolean,
        full_name text,
        nick text,
        first_name text,
        last_name text,
        avatar text,
        banned boolean,
        prefs jsonb,
        modified_at timestamptz
    );";

const QUERY: &str = "SELECT id::text AS user_id, email, email_confirmed AS email_verified, \
    full_name AS name, nick AS nickname, first_name AS given_name, last_name AS family_name, \
    avatar AS picture, banned AS blocked, prefs AS user_metadata, modified_at AS updated_at \
    FROM users";

const FILE_SOURCE: &str = r#"
[auth0]
connection = "legacy-users"
migrated = "app_metadata.migrated"

[cache]
source = "file"
file = "export.ndjson"
"#;

/// An Auth0 export line of the `legacy-users` connection, migrated at 2024-06-01.
fn auth0(id: &str, migrated: bool, extra: Value) -> Value {
    let mut line = json!({
        "user_id": format!("auth0|{id}"),
        "created_at": "2024-06-01T00:00:00.000Z",
        "updated_at": "2024-06-01T00:00:00.000Z",
        "identities": [{"connection": "legacy-users", "provider": "auth0", "user_id": id, "isSocial": false}],
        "app_metadata": {"migrated": migrated},
    });
    for (key, value) in extra.as_object().unwrap() {
        line[key] = value.clone();
    }
    line
}

async fn app_with_users(rows: &str) -> App {
    let app = App::new().await;
    app.sql(SCHEMA).await;
    if !rows.is_empty() {
        app.sql(&format!(
            "INSERT INTO users (id, email, full_name, banned, prefs, modified_at) VALUES {rows}"
        ))
        .await;
    }
    app.config(QUERY, FILE_SOURCE);
    app
}

/// One user for each status of docs/INTERFACE.md's table, plus one of another connection.
async fn every_status() -> App {
    let app = app_with_users(
        "(1, 'ann@x.io', 'Ann', false, NULL, '2024-01-01Z'),
         (2, 'new2@x.io', 'Bo', false, NULL, '2024-09-01Z'),
         (3, 'cy@x.io', 'Cy Bee', false, NULL, NULL),
         (4, 'di@x.io', 'Di', false, NULL, '2024-01-01Z'),
         (5, 'ed@x.io', 'Ed Renamed', false, NULL, '2024-09-01Z'),
         (6, 'fay@x.io', 'Fay', false, NULL, '2024-09-01Z'),
         (9, 'ivy@x.io', 'Ivy', false, NULL, '2024-09-01Z'),
         (10, 'jo@x.io', 'Jo', true, '{\"lang\": \"de\"}', '2024-09-01Z')",
    )
    .await;
    app.export(
        "export.ndjson",
        &[
            auth0("1", true, json!({"email": "ann@x.io", "name": "Ann"})),
            auth0("2", true, json!({"email": "old2@x.io", "name": "Bo"})),
            auth0("3", true, json!({"email": "cy@x.io", "name": "Cy"})),
            auth0("4", true, json!({"email": "di@x.io", "name": "Diana"})),
            auth0("5", false, json!({"email": "ed@x.io", "name": "Ed"})),
            auth0("7", true, json!({"email": "gus@x.io", "name": "Gus"})),
            auth0("8", false, json!({"email": "hal@x.io", "name": "Hal"})),
            json!({"user_id": "auth0|9", "email": "ivy@x.io", "connection": "other-db"}),
            auth0(
                "10",
                true,
                json!({"email": "jo@x.io", "name": "Jo", "user_metadata": {"lang": "en", "theme": "dark"}}),
            ),
        ],
    );
    app
}

#[tokio::test]
async fn json_report_classifies_every_status() {
    let app = every_status().await;
    let run = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(run.code, 2, "stranded users remain: exit 2\n{}", run.stderr);
    let report = run.json();
    assert_eq!(report["version"], 1);
    assert_eq!(report["run"]["kind"], "full");
    assert_eq!(report["run"]["mode"], "report");
    for key in ["id", "started_at", "finished_at"] {
        assert!(report["run"][key].is_string(), "run.{key}: {report}");
    }
    assert_eq!(
        report["summary"],
        json!({"legacy_users": 8, "auth0_users": 8, "in_sync": 1, "stranded": 3,
               "auth0_ahead": 1, "conflict": 0, "stale_cache": 1, "not_migrated": 2,
               "orphaned": 1, "deleted_in_auth0": 0, "auth0_only": 1,
               "pushed": 0, "push_failed": 0})
    );
    let users = report["users"].as_array().unwrap();
    let listed: Vec<(&str, &str, &Value)> = users
        .iter()
        .map(|user| {
            (
                user["user_id"].as_str().unwrap(),
                user["status"].as_str().unwrap(),
                &user["origin"],
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("auth0|10", "stranded", &json!("timestamp")),
            ("auth0|2", "stranded", &json!("timestamp")),
            ("auth0|3", "stranded", &json!("assumed")),
            ("auth0|4", "auth0_ahead", &json!("timestamp")),
            ("auth0|5", "stale_cache", &Value::Null),
            ("auth0|7", "orphaned", &Value::Null),
        ]
    );
    assert_eq!(
        users[0]["fields"],
        json!([
            {"field": "blocked", "legacy": true, "auth0": null},
            {"field": "user_metadata", "legacy": {"lang": "de"}, "auth0": {"lang": "en"}},
        ])
    );
    assert_eq!(
        users[1]["fields"],
        json!([{"field": "email", "legacy": "new2@x.io", "auth0": "old2@x.io"}])
    );
    assert_eq!(
        users[3]["fields"],
        json!([{"field": "name", "legacy": "Di", "auth0": "Diana"}])
    );
    assert_eq!(users[1]["push"], json!({"state": "planned", "error": null}));
    assert_eq!(users[3]["push"], json!({"state": "skipped", "error": null}));
    assert_eq!(users[5]["fields"], json!([]));
}

#[tokio::test]
async fn ndjson_report_is_the_users_then_a_summary_line() {
    let app = every_status().await;
    let json_report = app.run(&["reconcile", "--format", "json"]).json();
    let run = app.run(&["reconcile", "--format", "ndjson"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (summary, users) = lines.split_last().unwrap();
    assert_eq!(summary, &json!({"summary": json_report["summary"]}));
    assert_eq!(users, json_report["users"].as_array().unwrap().as_slice());
}

#[tokio::test]
async fn table_report_shows_counts_and_differing_fields() {
    let app = every_status().await;
    let run = app.run(&["reconcile"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let table = &run.stdout;
    let counts = [
        ("stranded", 3),
        ("orphaned", 1),
        ("auth0_only", 1),
        ("deleted_in_auth0", 0),
    ]
    .map(|(status, count)| format!("{status:<16} {count:>9}"));
    let cells = ["auth0|2", "new2@x.io", "old2@x.io", "assumed"];
    for expected in counts.iter().map(String::as_str).chain(cells) {
        assert!(table.contains(expected), "missing {expected:?} in\n{table}");
    }
    // With a migration marker a first run has no doubt about Auth0-only users to note.
    assert!(!table.contains("first run"), "{table}");
}

#[tokio::test]
async fn output_file_is_written_whole_and_nothing_else_is_left() {
    let app = every_status().await;
    let run = app.run(&["reconcile", "--format", "json", "--output", "report.json"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "report went to the file: {}",
        run.stdout
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(app.path("report.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["stranded"], 3);
    let leftovers: Vec<String> = std::fs::read_dir(app.dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn equality_rules_hold_end_to_end() {
    let app = App::new().await;
    app.sql(SCHEMA).await;
    app.sql(
        "INSERT INTO users (id, email, email_confirmed, full_name, nick, first_name, last_name, avatar, banned, prefs, modified_at) VALUES
         (1, 'Pat@Example.ORG', true, 'Pat', NULL, NULL, NULL, NULL, NULL, NULL, '2024-09-01Z'),
         (2, 'q@x.io', NULL, 'Q', NULL, '', NULL, NULL, false, NULL, '2024-09-01Z'),
         (3, 'sam.k@example.org', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2024-09-01Z'),
         (4, 'r@x.io', NULL, 'R', NULL, NULL, NULL, NULL, NULL, '{\"lang\": \"en\", \"n\": 1}', '2024-09-01Z'),
         (5, 'changed@x.io', NULL, 'S', NULL, NULL, NULL, NULL, NULL, NULL, '2024-09-01Z'),
         (6, 't@x.io', NULL, 'T', NULL, NULL, NULL, NULL, NULL, NULL, '2024-09-01Z'),
         (7, 'u@x.io', NULL, 'U', NULL, NULL, NULL, NULL, NULL, '{\"lang\": \"fr\"}', '2024-09-01Z'),
         (8, 'v@x.io', NULL, 'V', NULL, NULL, NULL, 'https://img.x.io/v.png', NULL, NULL, '2024-09-01Z')",
    )
    .await;
    app.config(QUERY, FILE_SOURCE);
    let gravatar = "https://s.gravatar.com/avatar/4ecf?s=480&r=pg&d=https%3A%2F%2Fcdn.auth0.com%2Favatars%2Fsa.png";
    app.export(
        "export.ndjson",
        &[
            // Case-insensitive email.
            auth0("1", true, json!({"email": "pat@example.org", "email_verified": true, "name": "Pat"})),
            // "" = NULL = absent; missing email_verified and blocked are false.
            auth0("2", true, json!({"email": "q@x.io", "name": "Q", "family_name": ""})),
            // Auth0-generated name, nickname and picture against legacy NULLs.
            auth0("3", true, json!({"email": "sam.k@example.org", "name": "sam.k@example.org", "nickname": "sam.k", "picture": gravatar})),
            // Metadata: only the legacy keys, numbers by value.
            auth0("4", true, json!({"email": "r@x.io", "name": "R", "user_metadata": {"lang": "en", "n": 1.0, "theme": "dark"}})),
            // And the cases that are drift.
            auth0("5", true, json!({"email": "original@x.io", "name": "S"})),
            auth0("6", true, json!({"email": "t@x.io", "name": "T", "nickname": "tee"})),
            auth0("7", true, json!({"email": "u@x.io", "name": "U", "user_metadata": {"lang": "en"}})),
            auth0("8", true, json!({"email": "v@x.io", "name": "V", "picture": "https://cdn.auth0.com/avatars/v.png"})),
        ],
    );
    let report = app.run(&["reconcile", "--format", "json"]).json();
    assert_eq!(report["summary"]["in_sync"], 4, "{report:#}");
    assert_eq!(report["summary"]["stranded"], 4, "{report:#}");
    let drift: Vec<(String, Value)> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| {
            (
                user["user_id"].as_str().unwrap().to_owned(),
                user["fields"].clone(),
            )
        })
        .collect();
    assert_eq!(
        drift,
        [
            (
                "auth0|5".into(),
                json!([{"field": "email", "legacy": "changed@x.io", "auth0": "original@x.io"}])
            ),
            (
                "auth0|6".into(),
                json!([{"field": "nickname", "legacy": null, "auth0": "tee"}])
            ),
            (
                "auth0|7".into(),
                json!([{"field": "user_metadata", "legacy": {"lang": "fr"}, "auth0": {"lang": "en"}}])
            ),
            (
                "auth0|8".into(),
                json!([{"field": "picture", "legacy": "https://img.x.io/v.png", "auth0": "https://cdn.auth0.com/avatars/v.png"}])
            ),
        ]
    );
}

#[tokio::test]
async fn nothing_to_act_on_exits_zero_and_gzip_is_read() {
    let app = app_with_users(
        "(1, 'a@x.io', 'A', false, NULL, '2024-01-01Z'), (2, 'b@x.io', 'B', false, NULL, NULL)",
    )
    .await;
    app.export_bytes(
        "export.json.gz",
        format!(
            "{}\n{}\n",
            auth0("1", true, json!({"email": "a@x.io", "name": "Diff"})),
            auth0("1b", false, json!({"email": "z@x.io"}))
        )
        .as_bytes(),
    );
    // auth0_ahead needs no action, 1b has no legacy row and no sign that it ever had one (a
    // signup), and user 2 is simply not migrated yet.
    let run = app.run(&[
        "reconcile",
        "--format",
        "json",
        "--cache-file",
        "export.json.gz",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = &run.json()["summary"];
    assert_eq!(summary["auth0_ahead"], 1);
    assert_eq!(summary["auth0_only"], 1);
    assert_eq!(summary["not_migrated"], 1);
}

#[tokio::test]
async fn rows_stream_across_many_batches_and_ids_keep_their_prefix() {
    let app = App::new().await;
    app.sql(
        "CREATE TABLE people AS SELECT 'Conn|' || g AS uid, 'u' || g || '@x.io' AS mail
         FROM generate_series(1, 12345) AS g",
    )
    .await;
    app.config(
        "SELECT uid AS user_id, mail AS email FROM people",
        &FILE_SOURCE.replace("app_metadata.migrated", "always"),
    );
    let lines: Vec<Value> = (1..=12345)
        .map(|n| {
            let email = if n % 1000 == 0 { format!("moved{n}@x.io") } else { format!("u{n}@x.io") };
            json!({"user_id": format!("auth0|Conn|{n}"), "email": email, "identities[0].connection": "legacy-users"})
        })
        .collect();
    app.export("export.ndjson", &lines);
    let report = app.run(&["reconcile", "--format", "json"]).json();
    assert_eq!(report["summary"]["legacy_users"], 12345);
    assert_eq!(report["summary"]["in_sync"], 12333);
    assert_eq!(report["summary"]["stranded"], 12);
    // Sorted as strings, and the id keeps everything after the first `auth0|`.
    assert_eq!(report["users"][0]["user_id"], "auth0|Conn|1000");
    assert_eq!(report["users"][1]["user_id"], "auth0|Conn|10000");
}

#[tokio::test]
async fn configured_fields_limit_the_comparison() {
    let app = every_status().await;
    app.config(
        QUERY,
        &format!("{FILE_SOURCE}\n[reconcile]\nfields = [\"email\"]"),
    );
    let report = app.run(&["reconcile", "--format", "json"]).json();
    // Only user 2's email differs; names, blocked and metadata are no longer compared.
    assert_eq!(report["summary"]["stranded"], 1, "{report:#}");
    assert_eq!(report["summary"]["auth0_ahead"], 0);
}

/// Runs a reconcile that must fail, and returns its stderr.
fn fails(app: &App, args: &[&str]) -> String {
    let run = app.run(args);
    assert_eq!(
        run.code, 1,
        "expected exit 1\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "an error reports nothing: {}",
        run.stdout
    );
    run.stderr
}

fn assert_mentions(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "{needle:?} missing from:\n{message}"
        );
    }
}

#[tokio::test]
async fn the_legacy_database_is_only_read() {
    let app = every_status().await;
    app.config(
        "WITH gone AS (DELETE FROM users RETURNING id) SELECT id::text AS user_id FROM gone",
        FILE_SOURCE,
    );
    assert_mentions(&fails(&app, &["reconcile"]), &["read-only transaction"]);
    let client = app.db.client().await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 8, "no row was deleted");
}

#[tokio::test]
async fn a_database_password_never_reaches_the_output() {
    let app = every_status().await;
    let url = app.db.url.replacen("://", "://nobody:s3cret-pw@", 1);
    let run = app.run_with_env(&["reconcile"], &[("DRIFTSYNC_LEGACY_URL", &url)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains("s3cret-pw"), "{}", run.stderr);
    assert_mentions(&run.stderr, &["legacy database"]);
}

#[tokio::test]
async fn usage_errors_exit_one_not_two() {
    let app = every_status().await;
    let run = app.run(&["reconcile", "--format", "xml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_mentions(&run.stderr, &["xml"]);
    let help = app.run(&["reconcile", "--help"]);
    assert_eq!(help.code, 0);
    assert_mentions(&help.stdout, &["--format", "--cache-file", "--output"]);
}

#[tokio::test]
async fn a_generated_data_set_gives_exactly_the_expected_mix() {
    use driftsync_testkit::datagen::{self, DataSet};
    let app = App::new().await;
    let set = DataSet::new(5_000, 42);
    datagen::load_legacy(&app.db.client().await, &set, "users")
        .await
        .unwrap();
    let mut export = Vec::new();
    set.write_export(&mut export).unwrap();
    app.export_bytes("export.json.gz", &export);
    app.config(
        &datagen::mapping_query("users"),
        &format!(
            "[auth0]\nconnection = {:?}\nmigrated = {:?}\n[cache]\nsource = \"file\"\nfile = \"export.json.gz\"",
            datagen::CONNECTION,
            datagen::MIGRATED_RULE
        ),
    );
    let run = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let report = run.json();
    let expected = serde_json::to_value(set.expected()).unwrap();
    assert_eq!(report["summary"], expected);
    let origins: std::collections::BTreeSet<&str> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|user| user["origin"].as_str())
        .collect();
    assert_eq!(
        origins.into_iter().collect::<Vec<_>>(),
        ["assumed", "timestamp"]
    );
}
