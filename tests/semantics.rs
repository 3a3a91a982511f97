//! Auth0's own semantics, end to end (the real binary, a real PostgreSQL, the simulator over
//! HTTP): signups are not orphans and deletions need evidence, email and username pushes meet
//! the connection's Get User script, usernames ignore case, root attributes of cached profiles
//! that are not refreshed at login are pushed, rate limits of both bucket layouts are never
//! overdrawn, a pushed email states its verification, and an orphan is blocked once.

mod common;

use std::collections::BTreeMap;

use common::app::{App, Run};
use common::tenant::fast_retries;
use driftsync::auth0::{Auth0Client, EndpointClass, RequestBody, Settings};
use driftsync_testkit::simulator::{
    BucketLimit, ConnectionSettings, GetUserScript, Limits, Simulator, SimulatorConfig,
};
use serde_json::{Value, json};

const CONNECTION: &str = "legacy-users";

/// A legacy `users` table and a simulated tenant whose connection has `settings`.
struct Setup {
    app: App,
    sim: Simulator,
}

const SCHEMA: &str = "CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text,
    username text,
    name text,
    given_name text,
    verified boolean,
    updated_at timestamptz
)";

/// Migrated (or cached) on 2024-06-01; legacy rows changed later carry `updated_at` after it.
const MIGRATED_AT: &str = "2024-06-01T00:00:00.000Z";

impl Setup {
    async fn new(limits: Limits, settings: ConnectionSettings, rows: &str) -> Setup {
        let app = App::new().await;
        app.sql(SCHEMA).await;
        if !rows.is_empty() {
            app.sql(&format!(
                "INSERT INTO users (id, email, username, name, given_name, verified, updated_at) VALUES {rows}"
            ))
            .await;
        }
        let sim = Simulator::start(SimulatorConfig {
            limits,
            ..SimulatorConfig::default()
        })
        .await
        .unwrap();
        sim.configure_connection(CONNECTION, settings);
        Setup { app, sim }
    }

    /// Migrated users with these ids, emails and names, their emails verified.
    fn users(&self, users: &[(&str, &str, &str)]) {
        for (id, email, name) in users {
            self.user(
                id,
                json!({"email": email, "name": name, "email_verified": true}),
            );
        }
    }

    /// An Auth0 user of the connection with these attributes.
    fn user(&self, id: &str, attributes: Value) {
        let mut profile = json!({
            "user_id": format!("auth0|{id}"),
            "created_at": MIGRATED_AT,
            "updated_at": MIGRATED_AT,
        });
        for (key, value) in attributes.as_object().unwrap() {
            profile[key] = value.clone();
        }
        self.sim.insert_user(CONNECTION, profile);
    }

    /// `driftsync.toml`: the columns of `query`, the simulator through an export job,
    /// `migrated = "import_mode"` (no marker), and extra `[reconcile]` keys.
    fn config(&self, query: &str, reconcile: &str) {
        let defaults = SimulatorConfig::default();
        std::fs::write(self.app.path("secret"), &defaults.client_secret).unwrap();
        self.app.config(
            query,
            &format!(
                "[auth0]\ndomain = {:?}\nbase_url = {:?}\nclient_id = {:?}\nclient_secret_file = \"secret\"\nconnection = {CONNECTION:?}\nmigrated = \"import_mode\"\n[cache]\nsource = \"export\"\n[reconcile]\nmax_push_fraction = 1.0\n{reconcile}\n",
                defaults.domain,
                self.sim.base_url(),
                defaults.client_id,
            ),
        );
    }

    fn run(&self, args: &[&str]) -> (Run, Value) {
        let mut all = vec!["reconcile", "--format", "json"];
        all.extend_from_slice(args);
        let run = self.app.run(&all);
        let report = run.report();
        (run, report)
    }

    fn push(&self) -> (Run, Value) {
        self.run(&["--push"])
    }

    /// The PATCH bodies the simulator received, by user id.
    fn patches(&self) -> BTreeMap<String, Vec<Value>> {
        let mut by_user: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for record in self.sim.patch_log() {
            by_user.entry(record.user_id).or_default().push(record.body);
        }
        by_user
    }
}

fn import_mode() -> ConnectionSettings {
    ConnectionSettings {
        import_mode: true,
        ..ConnectionSettings::default()
    }
}

fn entry<'r>(report: &'r Value, id: &str) -> Option<&'r Value> {
    report["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["user_id"] == id)
}

const QUERY: &str =
    "SELECT id::text AS user_id, email, name, verified AS email_verified, updated_at FROM users";

/// Points 1 and 7: a signup is `auth0_only` and never blocked, even with `orphans = "block"`;
/// a user a run matched that then loses its legacy row is `orphaned` and blocked once (the
/// export asks for `blocked` although it is not compared); a user a run saw migrated and that
/// is then deleted in Auth0 is `deleted_in_auth0`.
#[tokio::test]
async fn signups_are_never_orphans_and_deletions_need_a_run_that_saw_the_user() {
    let setup = Setup::new(
        Limits::enterprise(),
        import_mode(),
        "(1, 'ann@x.io', NULL, 'Ann', NULL, true, '2024-01-01Z'),
         (2, 'bo@x.io', NULL, 'Bo', NULL, true, '2024-01-01Z'),
         (3, 'cy@x.io', NULL, 'Cy', NULL, true, '2024-01-01Z'),
         (4, 'di@x.io', NULL, 'Di', NULL, true, '2024-01-01Z')",
    )
    .await;
    setup.users(&[
        ("1", "ann@x.io", "Ann"),
        ("2", "bo@x.io", "Bo"),
        ("3", "cy@x.io", "Cy"),
    ]);
    // Signed up in Auth0: an id Auth0 generated, no legacy row, never seen by a run.
    let signup = "auth0|65a1f0c2e4b0d2a1f3c4e5d6";
    setup.user(
        "65a1f0c2e4b0d2a1f3c4e5d6",
        json!({"email": "new@x.io", "name": "New", "email_verified": true}),
    );
    // A four-user tenant that loses a user on each side: a fall the shrink guard would refuse
    // (tests/guards.rs), which this test is not about.
    setup.config(
        "SELECT id::text AS user_id, email, name FROM users",
        "orphans = \"block\"\nmax_shrink_fraction = 1.0",
    );

    // A first run cannot tell a signup from a user deleted in legacy before it: it says so.
    let table = setup.app.run(&["reconcile"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    for needle in [
        &format!("{:<16} {:>9}", "auth0_only", 1),
        "This is the first run with this state file",
    ] {
        assert!(
            table.stdout.contains(needle),
            "{needle:?} missing:\n{}",
            table.stdout
        );
    }
    let (first, report) = setup.push();
    assert_eq!(
        first.code, 0,
        "signups need no action: {}",
        report["summary"]
    );
    let summary = &report["summary"];
    assert_eq!(
        (
            &summary["in_sync"],
            &summary["auth0_only"],
            &summary["orphaned"],
            &summary["not_migrated"]
        ),
        (&json!(3), &json!(1), &json!(0), &json!(1)),
        "{summary}"
    );
    assert!(
        entry(&report, signup).is_none(),
        "auth0_only users are counted, not listed"
    );
    assert_eq!(
        setup.sim.stats().patches,
        0,
        "nothing is blocked without evidence"
    );
    let table = setup.app.run(&["reconcile"]);
    assert!(
        !table.stdout.contains("first run with this state file"),
        "the note belongs to the first run only:\n{}",
        table.stdout
    );

    // Bo leaves the legacy database; Cy is deleted in Auth0 while the legacy row stays.
    setup.app.sql("DELETE FROM users WHERE id = 2").await;
    assert!(setup.sim.remove_user("auth0|3"));
    let (second, report) = setup.push();
    assert_eq!(second.code, 2, "{}", report["summary"]);
    let summary = &report["summary"];
    assert_eq!(
        (
            &summary["orphaned"],
            &summary["deleted_in_auth0"],
            &summary["auth0_only"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{summary}"
    );
    let orphan = entry(&report, "auth0|2").expect("the orphan is listed");
    assert_eq!(orphan["status"], "orphaned");
    assert_eq!(orphan["push"]["state"], "applied");
    let deleted = entry(&report, "auth0|3").expect("the deleted user is listed");
    assert_eq!(
        (&deleted["status"], &deleted["origin"], &deleted["fields"]),
        (&json!("deleted_in_auth0"), &Value::Null, &json!([]))
    );
    assert_eq!(deleted["push"]["state"], "skipped");
    assert_eq!(setup.sim.user("auth0|2").unwrap()["blocked"], true);

    // The export asks for `blocked`: the blocked orphan is not patched again.
    let (third, report) = setup.push();
    assert_eq!(
        third.code, 2,
        "the user deleted in Auth0 still needs a person"
    );
    assert_eq!(report["summary"]["orphaned"], 1);
    assert_eq!(
        entry(&report, "auth0|2").unwrap()["push"],
        json!({"state": "skipped", "error": null})
    );
    let patches = setup.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches["auth0|2"], [json!({"blocked": true})]);
    assert!(!patches.contains_key(signup));
    assert_eq!(setup.sim.stats().deletes, 0);
}

/// Point 2: with import mode, an email push meets the connection's Get User script; the
/// usual script finds the new address in the legacy row and Auth0 refuses. The push is
/// `failed` with the cause and the remedy, sent once, the user stays stranded, and the rest of
/// the push goes on; with the script's remedy the next push goes through.
#[tokio::test]
async fn an_email_push_refused_by_get_user_names_the_cause_and_the_rest_goes_on() {
    let app_rows = "(1, 'ann.new@x.io', NULL, 'Ann', NULL, true, '2024-09-01Z'),
                    (2, 'bo.new@x.io', NULL, 'Bo', NULL, true, '2024-09-01Z'),
                    (3, 'cy@x.io', NULL, 'Cy Renamed', NULL, true, '2024-09-01Z')";
    let setup = Setup::new(Limits::enterprise(), import_mode(), app_rows).await;
    let script = |query: &str| ConnectionSettings {
        import_mode: true,
        get_user: Some(GetUserScript {
            database_url: setup.app.db.url.clone(),
            query: query.into(),
        }),
        ..ConnectionSettings::default()
    };
    // The Get User script as it is usually written: any legacy row with that email.
    setup.sim.configure_connection(
        CONNECTION,
        script("SELECT 1 FROM users WHERE lower(email) = $1"),
    );
    setup.users(&[
        ("1", "ann@x.io", "Ann"),
        ("2", "bo@x.io", "Bo"),
        ("3", "cy@x.io", "Cy"),
    ]);
    setup.config(QUERY, "");

    let (run, report) = setup.push();
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(
        (
            &report["summary"]["pushed"],
            &report["summary"]["push_failed"]
        ),
        (&json!(1), &json!(2)),
        "{}",
        report["summary"]
    );
    for id in ["auth0|1", "auth0|2"] {
        let user = entry(&report, id).unwrap();
        assert_eq!(user["status"], "stranded", "{user}");
        assert_eq!(user["push"]["state"], "failed", "{user}");
        let error = user["push"]["error"].as_str().unwrap();
        for needle in [
            "The specified new email already exists",
            "Get User script",
            "marked as migrated",
        ] {
            assert!(error.contains(needle), "{needle:?} missing: {error}");
        }
    }
    assert_eq!(
        entry(&report, "auth0|3").unwrap()["push"]["state"],
        "applied"
    );
    assert_eq!(setup.sim.user("auth0|3").unwrap()["name"], "Cy Renamed");
    let patches = setup.patches();
    for id in ["auth0|1", "auth0|2"] {
        assert_eq!(patches[id].len(), 1, "sent once, not retried: {patches:?}");
    }
    let stats = setup.sim.stats();
    assert_eq!((stats.get_user_runs, stats.get_user_refusals), (2, 2));
    assert_eq!(setup.sim.user("auth0|1").unwrap()["email"], "ann@x.io");

    // The remedy: rows of users who live in Auth0 are marked, and Get User skips them.
    setup
        .app
        .sql("ALTER TABLE users ADD migrated_at timestamptz; UPDATE users SET migrated_at = now()")
        .await;
    setup.sim.configure_connection(
        CONNECTION,
        script("SELECT 1 FROM users WHERE lower(email) = $1 AND migrated_at IS NULL"),
    );
    let (run, report) = setup.push();
    assert_eq!(run.code, 0, "{}", report["summary"]);
    assert_eq!(report["summary"]["pushed"], 2);
    assert_eq!(setup.sim.user("auth0|1").unwrap()["email"], "ann.new@x.io");
}

/// Point 3: usernames compare case-insensitively, so a legacy username with capitals is in
/// sync with Auth0's lower-cased one, and a changed one converges after one push.
#[tokio::test]
async fn mixed_case_usernames_converge() {
    let setup = Setup::new(
        Limits::enterprise(),
        import_mode(),
        "(1, 'pat@x.io', 'PatK', 'Pat', NULL, true, '2024-01-01Z'),
         (2, 'sam@x.io', 'Sam.Lee-New', 'Sam', NULL, true, '2024-09-01Z')",
    )
    .await;
    setup.user("1", json!({"email": "pat@x.io", "username": "patk"}));
    setup.user("2", json!({"email": "sam@x.io", "username": "sam.lee"}));
    setup.config(
        "SELECT id::text AS user_id, username, updated_at FROM users",
        "push_fields = [\"username\"]",
    );
    let (run, report) = setup.push();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        (&report["summary"]["in_sync"], &report["summary"]["pushed"]),
        (&json!(1), &json!(1)),
        "{}",
        report["summary"]
    );
    assert!(entry(&report, "auth0|1").is_none(), "PatK = patk");
    assert_eq!(
        setup.sim.user("auth0|2").unwrap()["username"],
        "sam.lee-new"
    );
    for _ in 0..2 {
        let (run, report) = setup.push();
        assert_eq!(run.code, 0);
        assert_eq!(report["summary"]["in_sync"], 2, "{}", report["summary"]);
    }
    assert_eq!(
        setup.sim.stats().patches,
        1,
        "converged: nothing sent again"
    );
}

/// Point 4: a connection without import mode refreshes cached root attributes at login only
/// with `set_user_root_attributes = on_each_login` (the default); with `on_first_login` a
/// legacy change of `name` stays until pushed, and Auth0 accepts the push.
#[tokio::test]
async fn root_attributes_not_refreshed_at_login_are_pushed_to_cached_profiles() {
    let setup = Setup::new(
        Limits::enterprise(),
        ConnectionSettings::default(),
        "(1, 'ann@x.io', NULL, 'Ann Renamed', 'Ann', true, '2024-09-01Z'),
         (2, 'bo.new@x.io', NULL, 'Bo', 'Bo', true, '2024-09-01Z')",
    )
    .await;
    setup.user(
        "1",
        json!({"email": "ann@x.io", "name": "Ann", "given_name": "Ann"}),
    );
    setup.user(
        "2",
        json!({"email": "bo@x.io", "name": "Bo", "given_name": "Bo"}),
    );
    setup.config(
        "SELECT id::text AS user_id, email, name, given_name, updated_at FROM users",
        "",
    );
    let (run, report) = setup.push();
    assert_eq!(run.code, 0, "refreshed at the next login: {}", run.stderr);
    assert_eq!(report["summary"]["stale_cache"], 2);
    assert_eq!(setup.sim.stats().patches, 0);

    setup.sim.configure_connection(
        CONNECTION,
        ConnectionSettings {
            set_user_root_attributes: Some("on_first_login".into()),
            ..ConnectionSettings::default()
        },
    );
    let (run, report) = setup.push();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let ann = entry(&report, "auth0|1").unwrap();
    assert_eq!(
        (&ann["status"], &ann["origin"], &ann["push"]["state"]),
        (&json!("stranded"), &json!("timestamp"), &json!("applied"))
    );
    assert_eq!(setup.sim.user("auth0|1").unwrap()["name"], "Ann Renamed");
    // An email is refreshed at login (and needs import mode to be pushed): still cached.
    assert_eq!(entry(&report, "auth0|2").unwrap()["status"], "stale_cache");
    assert_eq!(setup.patches()["auth0|1"], [json!({"name": "Ann Renamed"})]);
    let (_, report) = setup.push();
    assert_eq!(report["summary"]["in_sync"], 1, "{}", report["summary"]);
}

/// Point 6: a pushed email states `email_verified` and `verify_email`: by default the new
/// address is not claimed verified and no mail goes out; `keep` and `verify_email = true`
/// carry Auth0's verification over and ask for the mail; a legacy column wins.
#[tokio::test]
async fn email_pushes_state_their_verification_and_whether_to_mail() {
    let setup = Setup::new(
        Limits::enterprise(),
        import_mode(),
        "(1, 'ann.new@x.io', NULL, 'Ann', NULL, true, '2024-09-01Z'),
         (2, 'bo.new@x.io', NULL, 'Bo', NULL, false, '2024-09-01Z'),
         (3, 'cy.new@x.io', NULL, 'Cy', NULL, true, '2024-09-01Z')",
    )
    .await;
    setup.users(&[
        ("1", "ann@x.io", "Ann"),
        ("2", "bo@x.io", "Bo"),
        ("3", "cy@x.io", "Cy"),
    ]);
    let without_column = "SELECT id::text AS user_id, email, updated_at FROM users";
    setup.config(&format!("{without_column} WHERE id = 1"), "");
    setup.push();
    setup.config(
        &format!("{without_column} WHERE id = 2"),
        "pushed_email_verified = \"keep\"\nverify_email = true",
    );
    setup.push();
    setup.config(&format!("{QUERY} WHERE id = 3"), "");
    setup.push();
    let patches = setup.patches();
    assert_eq!(
        patches["auth0|1"],
        [json!({"email": "ann.new@x.io", "email_verified": false, "verify_email": false})]
    );
    assert_eq!(
        patches["auth0|2"],
        [json!({"email": "bo.new@x.io", "email_verified": true, "verify_email": true})]
    );
    assert_eq!(
        patches["auth0|3"],
        [json!({"email": "cy.new@x.io", "email_verified": true, "verify_email": false})]
    );
    assert_eq!(setup.sim.user("auth0|1").unwrap()["email_verified"], false);
    assert_eq!(
        setup.sim.stats().verification_emails,
        1,
        "only the push that asked for it mailed a link"
    );
}

fn client(sim: &Simulator) -> Auth0Client {
    let defaults = SimulatorConfig::default();
    let settings = Settings {
        base_url: sim.base_url(),
        audience: format!("https://{}/api/v2/", defaults.domain),
        client_id: defaults.client_id,
        client_secret: defaults.client_secret.into(),
    };
    Auth0Client::new(settings, fast_retries()).unwrap()
}

/// Point 5: the limiter follows Auth0's reading of the headers (the reset is when one more
/// request is added) and never sends into an empty bucket, whether the tenant has one global
/// bucket (Enterprise) or one per endpoint group (Essentials, Professional) — also when a run
/// moves from reading users to writing them, and when the bucket refills faster than the
/// client asks.
#[tokio::test]
async fn the_limiter_never_overdraws_either_bucket_layout() {
    let small = BucketLimit {
        burst: 8,
        per_second: 12.0,
    };
    let layouts = [
        (
            "global",
            Limits {
                global: Some(small),
                ..Limits::per_class(small)
            },
        ),
        ("per endpoint group", Limits::per_class(small)),
    ];
    for (name, limits) in layouts {
        let setup = Setup::new(limits, import_mode(), "").await;
        for id in 1..=30 {
            setup.user(&id.to_string(), json!({"email": format!("u{id}@x.io")}));
        }
        let client = std::sync::Arc::new(client(&setup.sim));
        let started = std::time::Instant::now();
        // Reads, then writes, then reads again: each phase many at once.
        for phase in ["read", "write", "read"] {
            let requests = (1..=30).map(|id| {
                let client = client.clone();
                async move {
                    let auth0_id = format!("auth0|{id}");
                    if phase == "read" {
                        client.user(&auth0_id).await.map(|_| ())
                    } else {
                        let url = client.api_url(&["users", &auth0_id]).unwrap();
                        let body = json!({"user_metadata": {"n": id}});
                        client
                            .send(
                                reqwest::Method::PATCH,
                                EndpointClass::UsersWrite,
                                "/api/v2/users/{id}",
                                url,
                                Some(RequestBody::Json(&body)),
                            )
                            .await
                            .map(|_| ())
                    }
                }
            });
            for result in futures_util::future::join_all(requests).await {
                result.unwrap();
            }
        }
        let stats = setup.sim.stats();
        assert_eq!(
            (stats.over_limit_attempts, stats.throttled),
            (0, 0),
            "{name}: sent into an empty bucket: {stats:?}"
        );
        // 90 requests, 8 at once, 12/s: the global bucket takes ~7 s, separate buckets less;
        // far from a request per announced reset (a minute and a half).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{name}: {:?}",
            started.elapsed()
        );
    }
}
