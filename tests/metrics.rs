//! `reconcile --metrics-file`: the metrics of docs/INTERFACE.md, with values equal to the report's,
//! written after failed runs too, never carrying a user id or email, and valid for promtool.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::app::App;
use serde_json::json;

/// `name{labels} value` lines of a Prometheus text exposition.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn app() -> App {
    let app = App::new().await;
    app.sql(
        "CREATE TABLE users (id int, email text, name text, updated_at timestamptz);
         INSERT INTO users VALUES (1, 'pat@x.io', 'Pat', '2024-09-01Z'), (2, 'sam@x.io', 'Sam', NULL),
                                  (3, 'kai@x.io', 'Kai', '2024-01-01Z')",
    )
    .await;
    app.config(
        "SELECT id::text AS user_id, email, name, updated_at FROM users",
        "[auth0]\nconnection = \"legacy-users\"\nmigrated = \"always\"\n[cache]\nsource = \"file\"\nfile = \"export.ndjson\"",
    );
    let line = |id: &str, email: &str, name: &str| {
        json!({"user_id": format!("auth0|{id}"), "email": email, "name": name,
               "created_at": "2024-06-01T00:00:00Z", "connection": "legacy-users"})
    };
    app.export(
        "export.ndjson",
        &[
            line("1", "old@x.io", "Pat"),
            line("2", "sam@x.io", "Sammy"),
            line("3", "kai@x.io", "Kai"),
            line("4", "gone@x.io", "Gone"),
        ],
    );
    app
}

#[tokio::test]
async fn the_metrics_file_matches_the_report() {
    let app = app().await;
    let run = app.run(&[
        "reconcile",
        "--format",
        "json",
        "--metrics-file",
        "driftsync.prom",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let report = run.json();
    let text = std::fs::read_to_string(app.path("driftsync.prom")).unwrap();
    let values = samples(&text);
    for status in [
        "in_sync",
        "stranded",
        "auth0_ahead",
        "conflict",
        "stale_cache",
        "not_migrated",
        "orphaned",
        "deleted_in_auth0",
        "auth0_only",
    ] {
        let key = format!("driftsync_users{{status=\"{status}\"}}");
        assert_eq!(
            values.get(&key).copied(),
            report["summary"][status].as_f64(),
            "{key}\n{text}"
        );
    }
    let expect = [
        (
            "driftsync_runs_total{kind=\"full\",outcome=\"success\"}",
            1.0,
        ),
        ("driftsync_rows_read_total{source=\"legacy\"}", 3.0),
        ("driftsync_rows_read_total{source=\"auth0\"}", 4.0),
        ("driftsync_field_drift{field=\"email\"}", 1.0),
        ("driftsync_field_drift{field=\"name\"}", 1.0),
        ("driftsync_field_drift{field=\"picture\"}", 0.0),
        ("driftsync_run_duration_seconds_count{kind=\"full\"}", 1.0),
    ];
    for (key, value) in expect {
        assert_eq!(values.get(key), Some(&value), "{key}\n{text}");
    }
    let version = format!(
        "driftsync_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(values.get(&version), Some(&1.0), "{text}");
    assert!(values.contains_key("driftsync_last_success_timestamp_seconds{kind=\"full\"}"));
    for private in ["auth0|", "@x.io", "Pat", "Sammy"] {
        assert!(
            !text.contains(private),
            "{private:?} leaked into the metrics:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_failed_run_still_writes_its_outcome() {
    let app = app().await;
    app.export_bytes("export.ndjson", b"{not json}\n");
    let run = app.run(&["reconcile", "--metrics-file", "driftsync.prom"]);
    assert_eq!(run.code, 1);
    let values = samples(&std::fs::read_to_string(app.path("driftsync.prom")).unwrap());
    assert_eq!(
        values.get("driftsync_runs_total{kind=\"full\",outcome=\"failed\"}"),
        Some(&1.0)
    );
    assert!(!values.contains_key("driftsync_last_success_timestamp_seconds{kind=\"full\"}"));
}

#[tokio::test]
async fn the_exposition_passes_promtool() {
    let app = app().await;
    app.run(&["reconcile", "--metrics-file", "driftsync.prom"]);
    let text = std::fs::read(app.path("driftsync.prom")).unwrap();
    let promtool = ["promtool", "/usr/bin/promtool"]
        .into_iter()
        .find(|candidate| Command::new(candidate).arg("--version").output().is_ok())
        .expect("promtool is not installed: run deploy/test-alerts.sh (it installs Debian's prometheus package) or apt-get install prometheus");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &text).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
