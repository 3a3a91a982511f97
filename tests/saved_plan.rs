//! A reviewed plan applied exactly: `reconcile --save-plan FILE` against the simulator, a user
//! changed in between (superseded, not sent), the others applied exactly once, and plans for
//! another connection or made too long ago refused.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use common::tenant::{TABLE, Tenant};
use driftsync_testkit::simulator::SimulatorConfig;
use serde_json::{Value, json};

/// PATCH requests the simulator received, by user.
fn patches(tenant: &Tenant) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in tenant.sim.patch_log() {
        *counts.entry(record.user_id).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_saved_plan_sends_exactly_its_requests_to_users_still_as_it_saw_them() {
    let tenant = Tenant::new(400, SimulatorConfig::default(), true).await;
    let plan_path = tenant.app.path("plan.json");
    let plan_arg = plan_path.to_str().unwrap();

    // Report-only run that saves the plan: nothing is sent.
    let saved = tenant
        .app
        .run(&["reconcile", "--format", "json", "--save-plan", plan_arg]);
    assert_eq!(saved.code, 2, "{}", saved.stderr);
    assert!(patches(&tenant).is_empty());
    let report = saved.json();
    let planned: Vec<String> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|user| user["push"]["state"] == "planned")
        .map(|user| user["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(planned.len() >= 5, "{}", report["summary"]);
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    assert_eq!(plan["format"], "driftsync-plan/1");
    assert_eq!(plan["connection"], "legacy-users");
    let in_plan: Vec<String> = plan["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(in_plan, planned);
    let first = &plan["users"][0];
    assert!(first["requests"][0].is_object(), "{first}");
    assert!(!first["seen"].as_array().unwrap().is_empty(), "{first}");
    assert_eq!(
        std::fs::metadata(&plan_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The dry run shows the plan readably and sends nothing.
    let dry = tenant.app.run(&["apply", "--dry-run", plan_arg]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains(&format!("\n{}\n", planned[0])),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("  PATCH       {"), "{}", dry.stdout);
    assert!(patches(&tenant).is_empty());

    // One planned user changes in the legacy database after the plan was made.
    let changed = planned[1].clone();
    let legacy_id = changed.trim_start_matches("auth0|");
    tenant
        .app
        .sql(&format!(
            "UPDATE {TABLE} SET given_name = 'Changed Since', updated_at = now() WHERE id = {legacy_id}"
        ))
        .await;

    // A plan of this size is more than reconcile.max_push_fraction of a 400-user tenant: the
    // guard applies to a plan as to any push, and a reviewed plan is what overriding it is for.
    let refused = tenant.app.run(&["apply", "--format", "json", plan_arg]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("refusing to push"),
        "{}",
        refused.stderr
    );
    assert!(patches(&tenant).is_empty());
    let applied = tenant.app.run(&[
        "apply",
        "--format",
        "json",
        "--max-push-fraction",
        "1",
        plan_arg,
    ]);
    assert!(applied.code == 0 || applied.code == 2, "{}", applied.stderr);
    let applied = applied.json();
    assert_eq!(applied["run"]["mode"], "push");
    let state_of = |report: &Value, id: &str| {
        report["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|user| user["user_id"] == id)
            .map(|user| user["push"].clone())
    };
    let superseded = state_of(&applied, &changed).expect("the changed user is listed");
    assert_eq!(superseded["state"], "superseded", "{superseded}");
    assert!(
        superseded["error"]
            .as_str()
            .unwrap()
            .contains("given_name changed"),
        "{superseded}"
    );
    let sent = patches(&tenant);
    assert!(!sent.contains_key(&changed), "{sent:?}");
    for id in planned.iter().filter(|id| **id != changed) {
        assert_eq!(state_of(&applied, id).unwrap()["state"], "applied", "{id}");
        assert_eq!(
            sent.get(id),
            Some(&1),
            "{id} must be patched exactly once: {sent:?}"
        );
    }
    assert_eq!(sent.len(), planned.len() - 1);

    // Applied again, the plan sends nothing more: its users no longer need those pushes.
    let again = tenant
        .app
        .run(&["apply", "--max-push-fraction", "1", plan_arg]);
    assert!(again.code == 0 || again.code == 2, "{}", again.stderr);
    assert!(
        again
            .stdout
            .contains("users of the plan need no push any more"),
        "{}",
        again.stdout
    );
    assert_eq!(patches(&tenant), sent);
}

#[tokio::test]
async fn plans_for_another_connection_or_made_too_long_ago_are_refused() {
    let tenant = Tenant::new(100, SimulatorConfig::default(), true).await;
    let plan_path = tenant.app.path("plan.json");
    let plan_arg = plan_path.to_str().unwrap();
    let saved = tenant.app.run(&["reconcile", "--save-plan", plan_arg]);
    assert_eq!(saved.code, 2, "{}", saved.stderr);
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();

    let write = |plan: &Value| std::fs::write(&plan_path, plan.to_string()).unwrap();
    let mut other = plan.clone();
    other["connection"] = json!("another-db");
    write(&other);
    let refused = tenant.app.run(&["apply", plan_arg]);
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .contains("connection \"another-db\", and this configuration is for tenant"),
        "{}",
        refused.stderr
    );

    let mut old = plan.clone();
    old["made_at"] = json!("2026-01-01T00:00:00Z");
    write(&old);
    let stale = tenant.app.run(&["apply", "--dry-run", plan_arg]);
    assert_eq!(stale.code, 1);
    assert!(
        stale
            .stderr
            .contains("more than reconcile.max_plan_age_hours = 24"),
        "{}",
        stale.stderr
    );

    std::fs::write(&plan_path, "{\"format\": \"driftsync-plan/1\",").unwrap();
    let broken = tenant.app.run(&["apply", plan_arg]);
    assert_eq!(broken.code, 1);
    assert!(
        broken.stderr.contains("is not a driftsync plan"),
        "{}",
        broken.stderr
    );
    assert!(broken.stderr.contains("line 1"), "{}", broken.stderr);
    assert!(tenant.sim.patch_log().is_empty());

    // --save-plan is for report-only runs.
    let both = tenant
        .app
        .run(&["reconcile", "--push", "--save-plan", plan_arg]);
    assert_eq!(both.code, 1, "{}", both.stderr);
}
