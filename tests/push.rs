//! Pushing stranded changes: convergence, Auth0's rules, baselines, the fraction guard and
//! per-user failures. Stopping (SIGTERM) or crashing (SIGKILL) in the middle of a push is in
//! `tests/faults.rs`.

mod common;

use std::collections::BTreeSet;

use common::tenant::{TABLE, Tenant};
use driftsync_testkit::datagen;
use driftsync_testkit::simulator::SimulatorConfig;
use serde_json::Value;

fn users_with(report: &Value, status: &str) -> Vec<Value> {
    report["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|user| user["status"] == status)
        .cloned()
        .collect()
}

fn push(tenant: &Tenant, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["reconcile", "--format", "json", "--push"];
    args.extend_from_slice(extra);
    let run = tenant.app.run(&args);
    let report = run.report();
    (run.code, report, run.stderr)
}

/// Ids of users that are in sync (present on both sides, not listed in the report).
fn in_sync_ids(tenant: &Tenant, report: &Value, count: usize) -> Vec<u64> {
    let listed: BTreeSet<String> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["user_id"].as_str().unwrap().to_owned())
        .collect();
    (1..=tenant.set.users)
        .filter(|id| {
            let auth0_id = format!("auth0|{id}");
            !listed.contains(&auth0_id) && tenant.sim.user(&auth0_id).is_some()
        })
        .take(count)
        .collect()
}

#[tokio::test]
async fn a_push_converges_and_touches_only_what_legacy_changed() {
    let tenant = Tenant::new(2_000, SimulatorConfig::default(), true).await;
    let before = tenant.reconcile();
    let stranded = before["summary"]["stranded"].as_u64().unwrap();
    assert!(stranded > 20, "{}", before["summary"]);

    let (code, pushed, _) = push(&tenant, &[]);
    assert_eq!(code, 2, "orphaned users remain to be reviewed");
    assert_eq!(pushed["run"]["mode"], "push");
    assert_eq!(pushed["summary"]["pushed"], stranded);
    assert_eq!(pushed["summary"]["push_failed"], 0);
    for user in users_with(&pushed, "stranded") {
        assert_eq!(user["push"]["state"], "applied", "{user}");
    }
    for user in users_with(&pushed, "auth0_ahead") {
        assert_eq!(user["push"]["state"], "skipped", "{user}");
        // Auth0's newer value survives.
        let profile = tenant.sim.user(user["user_id"].as_str().unwrap()).unwrap();
        assert_eq!(profile["name"], user["fields"][0]["auth0"], "{user}");
    }

    let after = tenant.reconcile();
    assert_eq!(after["summary"]["stranded"], 0, "{}", after["summary"]);
    assert_eq!(
        after["summary"]["in_sync"].as_u64().unwrap(),
        before["summary"]["in_sync"].as_u64().unwrap() + stranded
    );
    // Metadata keys only Auth0 has survive a push of legacy metadata.
    let metadata_user = users_with(&before, "stranded")
        .into_iter()
        .find(|user| user["fields"][0]["field"] == "user_metadata")
        .expect("the generated data has a metadata change");
    let profile = tenant
        .sim
        .user(metadata_user["user_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(profile["user_metadata"]["plan"], "enterprise");
    assert_eq!(profile["user_metadata"]["theme"], "dark");
    let stats = tenant.sim.stats();
    assert_eq!(stats.deletes, 0);
    assert_eq!(
        stats.patches, stats.patches_applied,
        "no request was refused"
    );
}

#[tokio::test]
async fn cached_profiles_only_ever_receive_metadata_and_blocked() {
    // The connection does not migrate users, but the rule says they are: driftsync must still
    // send only what Auth0 accepts for cached profiles.
    let tenant = Tenant::new(1_000, SimulatorConfig::default(), false).await;
    tenant.config("export", "always");
    let (_, report, _) = push(&tenant, &["--max-push-fraction", "0.5"]);
    let stats = tenant.sim.stats();
    assert!(stats.patches > 0, "blocked and metadata changes were sent");
    assert_eq!(
        stats.patches, stats.patches_applied,
        "Auth0 refused nothing: {stats:?}"
    );
    let email_users: Vec<Value> = users_with(&report, "stranded")
        .into_iter()
        .filter(|user| {
            user["fields"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["field"] == "email")
        })
        .collect();
    assert!(!email_users.is_empty());
    for user in email_users {
        assert_eq!(user["push"]["state"], "skipped", "{user}");
        assert!(
            user["push"]["error"].as_str().unwrap().contains("email"),
            "{user}"
        );
    }
}

#[tokio::test]
async fn baselines_decide_the_three_cases_and_only_legacy_changes_are_sent() {
    let tenant = Tenant::new(300, SimulatorConfig::default(), true).await;
    let first = tenant.reconcile();
    let ids = in_sync_ids(&tenant, &first, 3);
    let (legacy_only, auth0_only, both) = (ids[0], ids[1], ids[2]);
    let client = tenant.app.db.client().await;
    // updated_at stays old: the timestamp rule alone would call a legacy change auth0_ahead.
    for (id, name) in [(legacy_only, "Legacy Renamed"), (both, "Legacy Side")] {
        client
            .execute(
                &format!("UPDATE {TABLE} SET name = $1 WHERE id = $2"),
                &[&name, &(id as i64)],
            )
            .await
            .unwrap();
    }
    for (id, name) in [(auth0_only, "Auth0 Renamed"), (both, "Auth0 Side")] {
        let mut profile = tenant.sim.user(&format!("auth0|{id}")).unwrap();
        profile["name"] = Value::from(name);
        tenant.sim.insert_user(datagen::CONNECTION, profile);
    }
    let (_, report, _) = push(&tenant, &["--max-push-fraction", "0.5"]);
    let find = |id: u64| {
        report["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|user| user["user_id"] == format!("auth0|{id}"))
            .cloned()
            .unwrap_or_else(|| panic!("auth0|{id} not in the report"))
    };
    let cases = [
        (legacy_only, "stranded", "applied", "Legacy Renamed"),
        (auth0_only, "auth0_ahead", "skipped", "Auth0 Renamed"),
        (both, "conflict", "skipped", "Auth0 Side"),
    ];
    for (id, status, state, final_name) in cases {
        let user = find(id);
        assert_eq!(user["status"], status, "{user}");
        assert_eq!(user["origin"], "baseline", "{user}");
        assert_eq!(user["push"]["state"], state, "{user}");
        let profile = tenant.sim.user(&format!("auth0|{id}")).unwrap();
        assert_eq!(profile["name"], final_name);
    }
}

#[tokio::test]
async fn the_fraction_guard_sends_nothing_and_says_how_to_override() {
    let tenant = Tenant::new(1_000, SimulatorConfig::default(), true).await;
    tenant.config_with(
        "export",
        datagen::MIGRATED_RULE,
        "[reconcile]\nmax_push_fraction = 0.001",
    );
    let (code, report, stderr) = push(&tenant, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--max-push-fraction"), "{stderr}");
    assert!(stderr.contains("max_push_fraction = 0.001"), "{stderr}");
    assert_eq!(tenant.sim.stats().patches, 0);
    assert_eq!(report["summary"]["pushed"], 0);
    for user in users_with(&report, "stranded") {
        assert_eq!(user["push"]["state"], "skipped");
    }
    let (_, report, _) = push(&tenant, &["--max-push-fraction", "0.5"]);
    assert_eq!(report["summary"]["pushed"], report["summary"]["stranded"]);
}

#[tokio::test]
async fn a_400_for_one_user_is_recorded_and_the_others_are_pushed() {
    let tenant = Tenant::new(800, SimulatorConfig::default(), true).await;
    let first = tenant.reconcile();
    let victim = in_sync_ids(&tenant, &first, 1)[0];
    let client = tenant.app.db.client().await;
    client
        .execute(
            &format!("UPDATE {TABLE} SET email = 'not-an-email', updated_at = now() WHERE id = $1"),
            &[&(victim as i64)],
        )
        .await
        .unwrap();
    let (code, report, _) = push(&tenant, &["--max-push-fraction", "0.5"]);
    assert_eq!(code, 2);
    assert_eq!(report["summary"]["push_failed"], 1);
    let stranded = report["summary"]["stranded"].as_u64().unwrap();
    assert_eq!(report["summary"]["pushed"].as_u64().unwrap(), stranded - 1);
    let failed: Vec<Value> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|user| user["push"]["state"] == "failed")
        .cloned()
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["user_id"], format!("auth0|{victim}"));
    let error = failed[0]["push"]["error"].as_str().unwrap();
    assert!(
        error.contains("400") && error.contains("invalid_body"),
        "{error}"
    );
}

#[tokio::test]
async fn orphans_are_blocked_once_and_then_settled() {
    let tenant = Tenant::new(600, SimulatorConfig::default(), true).await;
    tenant.config_with(
        "export",
        datagen::MIGRATED_RULE,
        "[reconcile]\norphans = \"block\"",
    );
    let (code, report, _) = push(&tenant, &["--max-push-fraction", "0.5"]);
    assert_eq!(code, 0, "everything pushed: nothing left to act on");
    let orphans = users_with(&report, "orphaned");
    assert!(!orphans.is_empty());
    for orphan in &orphans {
        assert_eq!(orphan["push"]["state"], "applied", "{orphan}");
        let profile = tenant
            .sim
            .user(orphan["user_id"].as_str().unwrap())
            .unwrap();
        assert_eq!(profile["blocked"], true);
    }
    let patches = tenant.sim.stats().patches;
    let (code, again, _) = push(&tenant, &[]);
    assert_eq!(code, 0, "blocked orphans are settled");
    assert_eq!(tenant.sim.stats().patches, patches, "nothing is sent twice");
    for orphan in users_with(&again, "orphaned") {
        assert_eq!(
            orphan["push"],
            serde_json::json!({"state": "skipped", "error": null})
        );
    }
    assert_eq!(tenant.sim.stats().deletes, 0);
}
