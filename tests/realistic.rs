//! Profiles shaped like a real tenant's (every field, UTF-8 names, nested metadata with an
//! array, a number and a boolean, app_metadata with roles and the migration marker) classify
//! exactly as the generator built them: jsonb's key order and spacing, UTF-8 and the Auth0-only
//! marker key make no difference.

mod common;

use common::app::App;
use driftsync_testkit::datagen::{self, DataSet, Shape};

#[tokio::test]
async fn realistic_profiles_give_the_generators_summary() {
    let app = App::new().await;
    let set = DataSet::new(3_000, 5).with_shape(Shape::Realistic);
    datagen::load_legacy(&app.db.client().await, &set, "users")
        .await
        .unwrap();
    let mut export = Vec::new();
    set.write_export(&mut export).unwrap();
    app.export_bytes("export.json", &export);
    app.config(
        &set.mapping_query("users"),
        &format!(
            "[auth0]\nconnection = {:?}\nmigrated = {:?}\n[cache]\nsource = \"file\"\nfile = \"export.json\"\n",
            datagen::CONNECTION,
            datagen::MIGRATED_RULE
        ),
    );
    let run = app.run(&["reconcile", "--format", "json"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let report = run.json();
    assert_eq!(
        report["summary"],
        serde_json::to_value(set.expected()).unwrap(),
        "{}",
        report["summary"]
    );
    // The stranded metadata users differ in user_metadata.plan only.
    let metadata: Vec<&serde_json::Value> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|user| user["fields"][0]["field"] == "user_metadata")
        .collect();
    assert!(!metadata.is_empty());
    for user in metadata {
        assert_eq!(
            user["fields"][0]["legacy"],
            serde_json::json!({"plan": "enterprise"}),
            "{user}"
        );
    }
}
