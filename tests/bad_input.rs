//! The bad-input catalogue: every case runs the real binary with `reconcile --push` against a
//! real PostgreSQL database and the Auth0 simulator, and must exit 1 with an error that names
//! where the problem is (the key, the column, the row or user id, the line, the endpoint),
//! print no report, write no report file, record no successful run and send no PATCH.
//!
//! Cases are tables; a category's failures are all listed before its test fails. (A query
//! that writes is refused too: `the_legacy_database_is_only_read` in `tests/reconcile.rs`.)

mod common;

use common::app::Run;
use common::tenant::{TABLE, Tenant};
use driftsync::state::StateStore;
use driftsync_testkit::datagen;
use driftsync_testkit::simulator::{BadAnswer, BadAnswerKind, Faults, SimulatorConfig};
use serde_json::{Value, json};

/// The arguments of every case: a push that would send stranded changes if it got that far.
const PUSH: [&str; 8] = [
    "reconcile",
    "--format",
    "json",
    "--push",
    "--max-push-fraction",
    "1",
    "--output",
    "report.json",
];

/// A tenant with stranded users: any case that got as far as pushing would send PATCHes.
async fn tenant() -> Tenant {
    Tenant::new(200, SimulatorConfig::default(), true).await
}

/// Runs the binary with `args` (`--config` added), checks that it failed as it must, and
/// returns what is wrong with the run, if anything.
fn run_case(tenant: &Tenant, case: &str, args: &[&str], needles: &[&str]) -> Option<String> {
    let patches = tenant.sim.stats().patches;
    let run = tenant.app.run(args);
    check(tenant, case, &run, needles, patches)
}

fn successful_runs(tenant: &Tenant) -> usize {
    let state = tenant.app.path("driftsync-state.db");
    if !state.exists() {
        return 0;
    }
    StateStore::open(&state)
        .and_then(|store| store.runs())
        .map_or(0, |runs| {
            runs.iter()
                .filter(|run| run.outcome.as_deref() == Some("success"))
                .count()
        })
}

/// Checks one failed run; returns what is wrong with it, if anything. A report file or a
/// successful run found is removed again, so that the next case starts clean.
fn check(
    tenant: &Tenant,
    case: &str,
    run: &Run,
    needles: &[&str],
    patches_before: u64,
) -> Option<String> {
    let mut problems = Vec::new();
    if run.code != 1 {
        problems.push(format!("exit {} instead of 1", run.code));
    }
    if !run.stdout.is_empty() {
        problems.push("printed a report".to_owned());
    }
    if run.stderr.contains("panicked") {
        problems.push("panicked".to_owned());
    }
    for needle in needles {
        if !run.stderr.contains(needle) {
            problems.push(format!("{needle:?} not named"));
        }
    }
    if tenant.app.path("report.json").exists() {
        problems.push("wrote report.json".to_owned());
        let _ = std::fs::remove_file(tenant.app.path("report.json"));
    }
    let patches = tenant.sim.stats().patches - patches_before;
    if patches != 0 {
        problems.push(format!("{patches} PATCHes sent"));
    }
    if successful_runs(tenant) != 0 {
        problems.push("a run was recorded as successful".to_owned());
        let _ = std::fs::remove_file(tenant.app.path("driftsync-state.db"));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "case {case:?}: {}\nstderr:\n{}",
            problems.join("; "),
            run.stderr
        )
    })
}

fn report(category: &str, count: usize, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} of {count} {category} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_configurations_are_named() {
    let tenant = tenant().await;
    let rule = datagen::MIGRATED_RULE;
    std::fs::create_dir(tenant.app.path("secret-dir")).unwrap();
    // (case, [auth0] extra, extra after [cache], needles)
    let cases: Vec<(&str, String, String, Vec<&str>)> = vec![
        (
            "unknown key",
            String::new(),
            "files = \"x\"".into(),
            vec!["files", "driftsync.toml"],
        ),
        (
            "misspelt auth0 key",
            "client_secert = \"x\"".into(),
            String::new(),
            vec!["client_secert", "driftsync.toml"],
        ),
        (
            "unknown field in reconcile.fields",
            String::new(),
            "[reconcile]\nfields = [\"shoe_size\"]".into(),
            vec!["reconcile.fields", "shoe_size"],
        ),
        (
            "field the query does not return",
            String::new(),
            "[reconcile]\nfields = [\"username\"]".into(),
            vec!["reconcile.fields", "username"],
        ),
        (
            "wrong type",
            String::new(),
            "[reconcile]\nmax_push_fraction = \"high\"".into(),
            vec!["max_push_fraction", "driftsync.toml"],
        ),
        (
            "out of range",
            String::new(),
            "[reconcile]\nmax_push_fraction = 5".into(),
            vec!["reconcile.max_push_fraction", "5"],
        ),
        (
            "timeout with a unit",
            "request_timeout_seconds = \"30s\"".into(),
            String::new(),
            vec!["request_timeout_seconds"],
        ),
        (
            "zero export timeout",
            String::new(),
            "export_timeout_seconds = 0".into(),
            vec!["cache.export_timeout_seconds"],
        ),
        (
            "cron expression that is not one",
            String::new(),
            "[schedule]\nfull = \"daily\"".into(),
            vec!["schedule.full", "daily"],
        ),
        (
            "cron hour 25",
            String::new(),
            "[schedule]\nfull = \"0 0 25 * * *\"".into(),
            vec!["schedule.full"],
        ),
        (
            "bad changes cron",
            String::new(),
            "[schedule]\nfull = \"0 0 3 * * *\"\nchanges = \"*/5 * *\"".into(),
            vec!["schedule.changes"],
        ),
        (
            "bad metrics address",
            String::new(),
            "[metrics]\nlisten = \"everywhere\"".into(),
            vec!["metrics.listen", "everywhere"],
        ),
        (
            "unknown cache source",
            String::new(),
            String::new(),
            vec!["cache.source", "\"s3\""],
        ),
        (
            "unknown migration rule",
            String::new(),
            String::new(),
            vec!["auth0.migrated", "app_metadata.a.b"],
        ),
        (
            "unreadable secret file",
            String::new(),
            String::new(),
            vec!["secret-dir"],
        ),
    ];
    let count = cases.len();
    let mut failures = Vec::new();
    for (case, auth0_extra, extra, needles) in cases {
        let mut text = tenant.config_rest("export", rule, &auth0_extra, &extra);
        match case {
            "unknown cache source" => text = text.replace("source = \"export\"", "source = \"s3\""),
            "unknown migration rule" => {
                text = text.replace(rule, "app_metadata.a.b");
            }
            "unreadable secret file" => {
                text = text.replace(
                    "client_secret_file = \"secret\"",
                    "client_secret_file = \"secret-dir\"",
                );
            }
            _ => {}
        }
        tenant.app.config(&datagen::mapping_query(TABLE), &text);
        failures.extend(run_case(&tenant, case, &PUSH, &needles));
    }

    // Whole-file cases: TOML syntax, a URL that is not one, plain http to a remote host, an
    // export source without any Auth0 settings, a missing file.
    let rest = tenant.config_rest("export", rule, "", "");
    let whole: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "TOML syntax error",
            format!(
                "[legacy]\nurl = \"{}\"\nquery = \"SELECT 1\n{rest}",
                tenant.app.db.url
            ),
            vec!["driftsync.toml", "line 3"],
        ),
        (
            "legacy URL that is not one",
            format!("[legacy]\nurl = \"postgres://db:notaport/app\"\nquery = \"SELECT 1\"\n{rest}"),
            vec!["legacy.url"],
        ),
        (
            "base URL with another scheme",
            format!(
                "[legacy]\nurl = \"{}\"\nquery = \"SELECT 1\"\n{}",
                tenant.app.db.url,
                rest.replace(&tenant.sim.base_url(), "ftp://127.0.0.1:1")
            ),
            vec!["auth0.base_url", "ftp://127.0.0.1:1"],
        ),
        (
            "plain http to a remote host",
            format!(
                "[legacy]\nurl = \"{}\"\nquery = \"SELECT 1\"\n{}",
                tenant.app.db.url,
                rest.replace(&tenant.sim.base_url(), "http://tenant.example.com")
            ),
            vec!["auth0.base_url", "http://tenant.example.com", "loopback"],
        ),
        (
            "export source without Auth0 settings",
            format!(
                "[legacy]\nurl = \"{}\"\nquery = \"SELECT 1\"\n[auth0]\nconnection = \"c\"\nmigrated = \"always\"\n",
                tenant.app.db.url
            ),
            vec!["cache.source", "auth0.domain", "--cache-file"],
        ),
        (
            "import_mode rule without Auth0 settings",
            format!(
                "[legacy]\nurl = \"{}\"\nquery = \"SELECT 1\"\n[auth0]\nconnection = \"c\"\n[cache]\nsource = \"file\"\nfile = \"x.json\"\n",
                tenant.app.db.url
            ),
            vec!["import_mode", "auth0.migrated", "auth0.domain"],
        ),
    ];
    let count = count + whole.len() + 1;
    for (case, text, needles) in whole {
        std::fs::write(tenant.app.path("driftsync.toml"), text).unwrap();
        failures.extend(run_case(&tenant, case, &PUSH, &needles));
    }
    let mut args = vec!["--config", "nope.toml"];
    args.extend(PUSH);
    let patches = tenant.sim.stats().patches;
    let run = tenant.app.run_without_config(&args);
    failures.extend(check(
        &tenant,
        "missing config file",
        &run,
        &["nope.toml"],
        patches,
    ));
    report("configuration", count, failures);
}

// ---------------------------------------------------------------------------------------------
// Legacy query results
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_legacy_results_are_named() {
    let tenant = tenant().await;
    let rest = tenant.config_rest("export", datagen::MIGRATED_RULE, "", "");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown column",
            format!("SELECT id::text AS user_id, email, name AS fullname FROM {TABLE}"),
            vec!["fullname"],
        ),
        (
            "user_id not text",
            format!("SELECT id AS user_id FROM {TABLE}"),
            vec!["user_id", "int8", "expected text"],
        ),
        (
            "boolean as text",
            format!(
                "SELECT id::text AS user_id, email_verified::text AS email_verified FROM {TABLE}"
            ),
            vec!["email_verified", "boolean"],
        ),
        (
            "metadata as text",
            format!("SELECT id::text AS user_id, name AS user_metadata FROM {TABLE}"),
            vec!["user_metadata", "json"],
        ),
        (
            "timestamp without time zone",
            format!("SELECT id::text AS user_id, updated_at::timestamp AS updated_at FROM {TABLE}"),
            vec!["updated_at", "timestamptz"],
        ),
        (
            "no user_id column",
            format!("SELECT email FROM {TABLE}"),
            vec!["user_id"],
        ),
        (
            "column twice",
            format!("SELECT id::text AS user_id, email, email FROM {TABLE}"),
            vec!["email", "more than once"],
        ),
        (
            "SQL syntax error",
            format!("SELECT id::text AS user_id, FROM {TABLE}"),
            vec!["legacy query failed", "syntax"],
        ),
        (
            "unknown table",
            "SELECT id::text AS user_id FROM no_such_table".into(),
            vec!["legacy query failed", "no_such_table"],
        ),
        (
            "NULL user_id",
            format!("SELECT NULL::text AS user_id FROM {TABLE}"),
            vec!["row 1", "user_id", "NULL"],
        ),
        (
            "empty user_id",
            format!("SELECT ''::text AS user_id FROM {TABLE}"),
            vec!["row 1", "user_id", "empty"],
        ),
        (
            "duplicate user_id",
            format!("SELECT (id % 3)::text AS user_id FROM {TABLE} ORDER BY id"),
            vec!["\"1\"", "row 4", "earlier row"],
        ),
        (
            "metadata array",
            format!(
                "SELECT id::text AS user_id, '[1]'::jsonb AS app_metadata FROM {TABLE} ORDER BY id"
            ),
            vec!["app_metadata", "array", "row 1", "\"1\""],
        ),
        (
            "metadata JSON string",
            format!(
                "SELECT id::text AS user_id, CASE WHEN id = 7 THEN '\"{{lang: de}}\"'::jsonb \
                 ELSE metadata END AS user_metadata FROM {TABLE} ORDER BY id"
            ),
            vec!["user_metadata", "string", "row 7", "\"7\""],
        ),
        (
            "giant value",
            format!(
                "SELECT id::text AS user_id, CASE WHEN id = 5 THEN repeat('x', 2000000) \
                 ELSE name END AS name FROM {TABLE} ORDER BY id"
            ),
            vec!["row 5", "\"5\"", "`name`", "2000000 bytes"],
        ),
        (
            "giant metadata",
            format!(
                "SELECT id::text AS user_id, CASE WHEN id = 9 THEN \
                 jsonb_build_object('blob', repeat('y', 2000000)) ELSE metadata END \
                 AS user_metadata FROM {TABLE} ORDER BY id"
            ),
            vec!["row 9", "\"9\"", "`user_metadata`"],
        ),
    ];
    let count = cases.len();
    let mut failures = Vec::new();
    for (case, query, needles) in cases {
        tenant.app.config(&query, &rest);
        failures.extend(run_case(&tenant, case, &PUSH, &needles));
    }
    report("legacy", count, failures);
}

// ---------------------------------------------------------------------------------------------
// Export files
// ---------------------------------------------------------------------------------------------

fn auth0_line(id: u64) -> Value {
    json!({"user_id": format!("auth0|{id}"), "email": format!("u{id}@x.io"),
           "created_at": "2024-06-01T00:00:00.000Z", "app_metadata": {"migrated": true},
           "identities": [{"connection": "legacy-users", "provider": "auth0"}]})
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn bad_export_files_are_named() {
    let tenant = tenant().await;
    tenant.config("file", datagen::MIGRATED_RULE);
    let good = auth0_line(1).to_string();
    let good2 = auth0_line(2).to_string();
    let huge = json!({"user_id": "auth0|3", "name": "x".repeat(1 << 20)}).to_string();
    let two = format!("{good}\n{good2}\n");
    let zipped = gzip(two.as_bytes());
    let cases: Vec<(&str, &str, Vec<u8>, Vec<&str>)> = vec![
        (
            "invalid JSON",
            "a.ndjson",
            format!("{good}\n{{\"user_id\": \"auth0|2\",\n").into_bytes(),
            vec!["a.ndjson", "line 2"],
        ),
        (
            "missing user_id",
            "b.ndjson",
            format!("{good}\n{{\"email\": \"x@y\"}}\n").into_bytes(),
            vec!["b.ndjson", "line 2", "user_id"],
        ),
        (
            "user_id not a string",
            "c.ndjson",
            format!("{good}\n{{\"user_id\": 12}}\n").into_bytes(),
            vec!["c.ndjson", "line 2", "expected a string"],
        ),
        (
            "duplicate user",
            "d.ndjson",
            format!("{good}\n{good}\n").into_bytes(),
            vec!["line 2", "auth0|1", "more than once"],
        ),
        (
            "invalid UTF-8",
            "e.ndjson",
            b"{\"user_id\": \"auth0|1\", \"name\": \"\xff\"}\n".to_vec(),
            vec!["e.ndjson", "line 1"],
        ),
        (
            "a line over 1 MiB",
            "f.ndjson",
            format!("{good}\n{huge}\n{good2}\n").into_bytes(),
            vec!["f.ndjson", "line 2", "longer than 1048576 bytes"],
        ),
        (
            "a JSON array line",
            "g.ndjson",
            format!("{good}\n[1, 2]\n").into_bytes(),
            vec!["g.ndjson", "line 2"],
        ),
        (
            "truncated gzip",
            "h.json.gz",
            zipped[..zipped.len() - 12].to_vec(),
            vec!["h.json.gz"],
        ),
        (
            "not gzip at all",
            "i.json.gz",
            b"\x1f\x8bthis is not deflate data at all".to_vec(),
            vec!["i.json.gz"],
        ),
    ];
    let count = cases.len() + 1;
    let mut failures = Vec::new();
    for (case, name, bytes, needles) in cases {
        std::fs::write(tenant.app.path(name), bytes).unwrap();
        let mut args = PUSH.to_vec();
        args.extend(["--cache-file", name]);
        failures.extend(run_case(&tenant, case, &args, &needles));
    }
    let mut args = PUSH.to_vec();
    args.extend(["--cache-file", "missing.json"]);
    failures.extend(run_case(&tenant, "missing file", &args, &["missing.json"]));
    report("export file", count, failures);
}

// ---------------------------------------------------------------------------------------------
// Management API answers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_management_api_answers_are_named() {
    let tenant = tenant().await;
    let cases: Vec<(&str, &str, BadAnswerKind, Vec<&str>)> = vec![
        (
            "HTML page instead of the connections",
            "GET /api/v2/connections",
            BadAnswerKind::Html(200),
            vec!["GET /api/v2/connections", "text/html", "Please sign in"],
        ),
        (
            "firewall's HTML 403 for the job",
            "POST /api/v2/jobs/users-exports",
            BadAnswerKind::Html(403),
            vec![
                "POST /api/v2/jobs/users-exports",
                "403",
                "not an Auth0 error body",
            ],
        ),
        (
            "connections as an object",
            "GET /api/v2/connections",
            BadAnswerKind::Json(json!({"connections": []})),
            vec!["GET /api/v2/connections", "unexpected answer"],
        ),
        (
            "job without an id",
            "POST /api/v2/jobs/users-exports",
            BadAnswerKind::Json(json!({"status": "pending"})),
            vec!["POST /api/v2/jobs/users-exports", "unexpected answer", "id"],
        ),
        (
            "completed job without a link",
            "GET /api/v2/jobs/{id}",
            BadAnswerKind::Json(json!({"id": "job_x", "status": "completed"})),
            vec!["job_x", "location"],
        ),
        (
            "no rate-limit headers",
            "GET /api/v2/connections",
            BadAnswerKind::NoRateLimitHeaders,
            vec!["GET /api/v2/connections", "x-ratelimit"],
        ),
        (
            "no content type",
            "POST /api/v2/jobs/users-exports",
            BadAnswerKind::NoContentType,
            vec!["POST /api/v2/jobs/users-exports", "Content-Type"],
        ),
        (
            "HTML page instead of a token",
            "POST /oauth/token",
            BadAnswerKind::Html(200),
            vec!["POST /oauth/token", "text/html"],
        ),
        (
            "token answer without access_token",
            "POST /oauth/token",
            BadAnswerKind::Json(json!({"token": "abc"})),
            vec!["POST /oauth/token", "access_token"],
        ),
        (
            "HTML page instead of the export file",
            "GET /download/{job}",
            BadAnswerKind::Html(200),
            vec!["export job job_", "line 1", "not a valid export line"],
        ),
    ];
    let count = cases.len();
    let mut failures = Vec::new();
    for (case, endpoint, kind, needles) in cases {
        tenant.sim.set_faults(Faults {
            bad_answer: Some(BadAnswer::new(endpoint, kind)),
            ..Faults::default()
        });
        failures.extend(run_case(&tenant, case, &PUSH, &needles));
    }
    report("Management API", count, failures);
}
