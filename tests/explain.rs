//! `driftsync explain`: one user's trace from a real PostgreSQL row, an export file or the
//! simulated Management API, and the state file's baseline; and `--push`, journaled.

mod common;

use common::app::{App, FILE_SOURCE_NO_API};
use common::tenant::Tenant;
use driftsync_testkit::simulator::SimulatorConfig;
use serde_json::{Value, json};

const QUERY: &str = "SELECT id::text AS user_id, email, full_name AS name FROM users";

fn line(id: u32, email: &str, name: &str) -> Value {
    json!({
        "user_id": format!("auth0|{id}"),
        "email": email,
        "name": name,
        "created_at": "2024-06-01T00:00:00.000Z",
        "identities": [{"connection": "legacy-users", "provider": "auth0", "user_id": id.to_string(), "isSocial": false}],
    })
}

/// Users 1–3 agree on both sides in a first run (their baselines are stored); then user 2's
/// email changes in legacy (stranded), user 3's name on both sides (conflict); user 4 has a
/// legacy row only.
async fn three_users_after_a_run() -> App {
    let app = App::new().await;
    app.sql(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text, full_name text);
         INSERT INTO users VALUES (1, 'Ann@x.io', 'Ann'), (2, 'bo@x.io', 'Bo'),
                                  (3, 'cy@x.io', 'Cy'), (4, 'di@x.io', 'Di');",
    )
    .await;
    let export = |three: &str| {
        vec![
            line(1, "ann@x.io", "Ann"),
            line(2, "bo@x.io", "Bo"),
            line(3, "cy@x.io", three),
        ]
    };
    app.export("export.ndjson", &export("Cy"));
    app.config(QUERY, FILE_SOURCE_NO_API);
    let first = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    app.sql("UPDATE users SET email = 'bo.new@x.io' WHERE id = 2; UPDATE users SET full_name = 'Cy Legacy' WHERE id = 3;")
        .await;
    app.export("export.ndjson", &export("Cy Auth0"));
    app
}

fn field<'a>(explanation: &'a Value, key: &str) -> &'a Value {
    explanation["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {explanation}"))
}

#[tokio::test]
async fn in_sync_stranded_and_conflict_users_are_explained_with_their_rules() {
    let app = three_users_after_a_run().await;

    // In sync: every key equal, the email by the case rule, nothing to push; exit 0.
    let one = app.run(&["explain", "1", "--format", "json"]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    let one = one.json();
    assert_eq!(one["status"], "in_sync");
    assert_eq!(one["user_id"], "auth0|1");
    assert_eq!(
        (
            &field(&one, "email")["rule"],
            &field(&one, "email")["equal"]
        ),
        (&json!("case_insensitive"), &json!(true))
    );
    assert_eq!(field(&one, "name")["rule"], "identical");
    assert_eq!(one["baseline"]["seen"], "migrated");
    assert_eq!(one["push_bodies"], json!([]));

    // Stranded, decided by the baseline: the email changed on the legacy side, and the push
    // sends it with an explicit verification state. Accepted with the prefix too; exit 2.
    let two = app.run(&["explain", "auth0|2", "--format", "json"]);
    assert_eq!(two.code, 2, "{}", two.stderr);
    let two = two.json();
    assert_eq!(
        (&two["status"], &two["origin"]),
        (&json!("stranded"), &json!("baseline"))
    );
    let email = field(&two, "email");
    assert_eq!(
        (
            &email["legacy"],
            &email["auth0"],
            &email["equal"],
            &email["changed"]
        ),
        (
            &json!("bo.new@x.io"),
            &json!("bo@x.io"),
            &json!(false),
            &json!("legacy")
        )
    );
    assert_eq!(
        two["push_bodies"],
        json!([{"email": "bo.new@x.io", "email_verified": false, "verify_email": false}])
    );

    // Conflict: both sides changed the name since the baseline; nothing is pushed.
    let three = app.run(&["explain", "3"]);
    assert_eq!(three.code, 2, "{}", three.stderr);
    for needle in [
        "status: conflict",
        "Cy Legacy",
        "Cy Auth0",
        "stored; both changed",
        "push: nothing to send",
    ] {
        assert!(
            three.stdout.contains(needle),
            "{needle:?} missing:\n{}",
            three.stdout
        );
    }

    // A legacy row only: not migrated yet.
    let four = app.run(&["explain", "4", "--format", "json"]);
    assert_eq!(four.code, 0, "{}", four.stderr);
    let four = four.json();
    assert_eq!(
        (&four["status"], &four["auth0"]),
        (&json!("not_migrated"), &Value::Null)
    );

    // On neither side: exit 1, naming the id.
    let none = app.run(&["explain", "auth0|99"]);
    assert_eq!(none.code, 1);
    assert!(
        none.stderr.contains("\"99\" exists on neither side"),
        "{}",
        none.stderr
    );
    assert!(none.stdout.is_empty());

    // The explanations agree with a run's report.
    let report = app.run(&["reconcile", "--format", "json"]).json();
    let statuses: Vec<(&str, &str)> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_str().unwrap(),
                u["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(statuses, [("auth0|2", "stranded"), ("auth0|3", "conflict")]);
}

#[tokio::test]
async fn explain_push_sends_one_user_journaled_and_it_converges() {
    let tenant = Tenant::new(300, SimulatorConfig::default(), true).await;
    let report = tenant.reconcile();
    let stranded = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["status"] == "stranded")
        .expect("a stranded user")
        .clone();
    let id = stranded["user_id"].as_str().unwrap();
    let shown = tenant.app.run(&["explain", id, "--format", "json"]);
    assert_eq!(shown.code, 2, "{}", shown.stderr);
    let bodies = shown.json()["push_bodies"].clone();
    assert_eq!(bodies.as_array().map(Vec::len), Some(1), "{bodies}");
    let before = tenant.sim.patch_log().len();
    assert_eq!(
        tenant.sim.patch_log().len(),
        before,
        "explain alone sends nothing"
    );

    let pushed = tenant
        .app
        .run(&["explain", id, "--push", "--format", "json"]);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    let pushed = pushed.json();
    assert_eq!(pushed["pushed"]["state"], "applied", "{pushed}");
    assert_eq!(pushed["push_bodies"], bodies);
    // Exactly one PATCH, for this user, with the body shown.
    let log = tenant.sim.patch_log();
    assert_eq!(log.len(), before + 1);
    assert_eq!(
        (
            log[before].user_id.as_str(),
            &log[before].body,
            log[before].applied
        ),
        (id, &bodies[0], true)
    );
    // Journaled like a run's push.
    let state = rusqlite::Connection::open(tenant.app.path("driftsync-state.db")).unwrap();
    let (user, journal_state): (String, String) = state
        .query_row(
            "SELECT user_id, state FROM journal ORDER BY id DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((user.as_str(), journal_state.as_str()), (id, "applied"));

    // The user is in sync now, by its new baseline too; a second push sends nothing.
    let again = tenant
        .app
        .run(&["explain", id, "--push", "--format", "json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let again = again.json();
    assert_eq!(again["status"], "in_sync");
    assert_eq!(again["pushed"]["state"], "not_sent");
    assert_eq!(tenant.sim.patch_log().len(), before + 1);
}
