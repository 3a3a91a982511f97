//! A legacy database and a simulated Auth0 tenant holding the same generated users, with a
//! driftsync configuration that reads Auth0 through the simulator.

// Every test binary compiles this module but not all of them use every item.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use driftsync::auth0::{Auth0Client, RetryPolicy, Settings};
use driftsync_testkit::datagen::{self, DataSet};
use driftsync_testkit::simulator::{Simulator, SimulatorConfig};
use serde_json::Value;

use super::app::App;

pub const TABLE: &str = "users";

/// A legacy database and a simulated tenant holding the same generated users.
pub struct Tenant {
    pub app: App,
    pub sim: Simulator,
    pub set: DataSet,
}

impl Tenant {
    pub async fn new(users: u64, config: SimulatorConfig, import_mode: bool) -> Tenant {
        let app = App::new().await;
        let set = DataSet::new(users, 3);
        datagen::load_legacy(&app.db.client().await, &set, TABLE)
            .await
            .unwrap();
        let sim = Simulator::start(config).await.unwrap();
        sim.add_connection(datagen::CONNECTION, import_mode);
        let mut export = Vec::new();
        set.write_export(&mut export).unwrap();
        sim.load_ndjson(datagen::CONNECTION, export.as_slice())
            .unwrap();
        app.export_bytes("export.json.gz", &export);
        let tenant = Tenant { app, sim, set };
        tenant.config("export", datagen::MIGRATED_RULE);
        tenant
    }

    pub fn config(&self, source: &str, migrated: &str) {
        self.config_with(source, migrated, "");
    }

    /// The configuration plus extra TOML (e.g. a `[reconcile]` table).
    pub fn config_with(&self, source: &str, migrated: &str, extra: &str) {
        self.config_full(source, migrated, "", extra);
    }

    /// The configuration with extra `[auth0]` keys, plus extra TOML after the `[cache]` table
    /// (its own keys first, e.g. `export_timeout_seconds = 2`, then other tables).
    pub fn config_full(&self, source: &str, migrated: &str, auth0_extra: &str, extra: &str) {
        self.app.config(
            &datagen::mapping_query(TABLE),
            &self.config_rest(source, migrated, auth0_extra, extra),
        );
    }

    /// The configuration after `[legacy]` (for `App::config` with another query), and the
    /// secret file it names.
    pub fn config_rest(
        &self,
        source: &str,
        migrated: &str,
        auth0_extra: &str,
        extra: &str,
    ) -> String {
        let defaults = SimulatorConfig::default();
        std::fs::write(self.app.path("secret"), &defaults.client_secret).unwrap();
        format!(
            r#"[auth0]
domain = {domain:?}
base_url = {base:?}
client_id = {client:?}
client_secret_file = "secret"
connection = {connection:?}
migrated = {migrated:?}
{auth0_extra}
[cache]
source = {source:?}
file = "export.json.gz"
{extra}
"#,
            domain = defaults.domain,
            base = self.sim.base_url(),
            client = defaults.client_id,
            connection = datagen::CONNECTION,
        )
    }

    pub fn reconcile(&self) -> Value {
        let run = self.app.run(&["reconcile", "--format", "json"]);
        assert_eq!(run.code, 2, "stderr:\n{}", run.stderr);
        run.json()
    }

    pub fn client(&self, retry: RetryPolicy) -> Arc<Auth0Client> {
        let defaults = SimulatorConfig::default();
        let settings = Settings {
            base_url: self.sim.base_url(),
            audience: format!("https://{}/api/v2/", defaults.domain),
            client_id: defaults.client_id,
            client_secret: defaults.client_secret.into(),
        };
        Arc::new(Auth0Client::new(settings, retry).unwrap())
    }
}

pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RetryPolicy::default()
    }
}
