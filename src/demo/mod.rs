//! `driftsync demo`: the whole job on generated data, with no Auth0 account and no setup. It
//! starts a throwaway PostgreSQL (or uses `--legacy-url`), seeds a legacy table, starts the
//! Auth0 simulator with a tenant where most users migrated and some legacy rows changed
//! afterwards, runs a report-only reconcile through a users-export job, and explains the report.

pub mod cluster;

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::config::{Config, NoEnv};
use crate::datagen::{self, DataSet};
use crate::reconcile::{self, RunOptions};
use crate::report::{self, Format};
use crate::simulator::{Simulator, SimulatorConfig};
use cluster::Cluster;

/// The demo's legacy table; a distinct name so that `--legacy-url` never touches a real table.
const TABLE: &str = "driftsync_demo_users";

pub struct DemoOptions {
    pub legacy_url: Option<String>,
    pub users: u64,
    pub seed: u64,
}

pub async fn run(options: &DemoOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "driftsync demo: {} generated users, a legacy PostgreSQL database and a simulated Auth0 tenant.\n\
         Nothing outside this machine is contacted.\n",
        options.users
    )?;
    let set = DataSet::new(options.users, options.seed);

    let (cluster, url) = match &options.legacy_url {
        Some(url) => (None, url.clone()),
        None => {
            writeln!(out, "1. Starting a throwaway PostgreSQL server…")?;
            let cluster = tokio::task::spawn_blocking(Cluster::start)
                .await
                .context("the PostgreSQL starter stopped")??;
            let url = cluster.url();
            (Some(cluster), url)
        }
    };
    let outcome = demo_with_database(&set, &url, out).await;
    if options.legacy_url.is_some() {
        // Leave the user's database as it was, even after a failure.
        if let Ok(client) = crate::legacy::connect(&url).await {
            let _ = client
                .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
                .await;
        }
    }
    if let Some(cluster) = cluster {
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
    }
    outcome
}

async fn demo_with_database(set: &DataSet, url: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let client = crate::legacy::connect(url).await?;
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}"))
        .await
        .context("cannot prepare the demo table")?;
    let rows = datagen::load_legacy(&client, set, TABLE)
        .await
        .context("cannot load the demo table")?;
    writeln!(out, "2. Seeded the legacy table {TABLE} with {rows} users.")?;

    let simulator = Simulator::start(SimulatorConfig::default())
        .await
        .context("cannot start the Auth0 simulator")?;
    simulator.add_connection(datagen::CONNECTION, true);
    let mut export = Vec::new();
    set.write_export(&mut export)?;
    let loaded = simulator.load_ndjson(datagen::CONNECTION, export.as_slice())?;
    writeln!(
        out,
        "3. Started a simulated Auth0 tenant at {} with {loaded} users in the connection {:?};\n   \
         some of their legacy rows changed after they migrated.",
        simulator.base_url(),
        datagen::CONNECTION
    )?;

    let outcome = reconcile_against(set, url, &simulator, out).await;
    simulator.shutdown().await;
    outcome
}

async fn reconcile_against(
    set: &DataSet,
    url: &str,
    simulator: &Simulator,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("driftsync-demo-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, SimulatorConfig::default().client_secret)?;
    let config_text = demo_config(url, &simulator.base_url(), &secret_file);
    let config_path = dir.join("driftsync.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_path, &config_text, &NoEnv);
    writeln!(
        out,
        "4. Running `driftsync reconcile` (report only) with this configuration:\n"
    )?;
    for line in config_text.lines() {
        writeln!(out, "     {line}")?;
    }
    writeln!(out)?;
    let result = match config {
        Ok(config) => {
            let options = RunOptions {
                progress: true,
                ..RunOptions::default()
            };
            reconcile::run(&config, &options, &NoEnv)
                .await
                .map_err(anyhow::Error::from)
        }
        Err(error) => Err(error.into()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    report.render(Format::Table, out)?;
    let stats = simulator.stats();
    writeln!(
        out,
        "\nThe run made {} Management API requests (token, connection, export job and its polls) \
         for {} Auth0 users, and sent nothing to Auth0.\n",
        stats.requests + stats.token_requests,
        report.summary.auth0_users
    )?;
    explain(&report, out)?;
    let expected = set.expected();
    anyhow::ensure!(
        report.summary == expected,
        "the demo's report {:?} differs from what the generated data holds {:?}",
        report.summary,
        expected
    );
    Ok(())
}

fn demo_config(url: &str, base_url: &str, secret_file: &Path) -> String {
    format!(
        r#"[legacy]
url = "{url}"
query = "{query}"

[auth0]
domain = "{domain}"
base_url = "{base_url}"
client_id = "{client_id}"
client_secret_file = "{secret}"
connection = "{connection}"
migrated = "{migrated}"

[cache]
source = "export"
"#,
        query = datagen::mapping_query(TABLE),
        domain = SimulatorConfig::default().domain,
        client_id = SimulatorConfig::default().client_id,
        secret = secret_file.display(),
        connection = datagen::CONNECTION,
        migrated = datagen::MIGRATED_RULE,
    )
}

fn explain(report: &report::Report, out: &mut dyn Write) -> std::io::Result<()> {
    use crate::classify::Status;
    writeln!(out, "What the statuses mean:")?;
    let advice = |status: Status| match status {
        Status::InSync => "nothing to do.",
        Status::Stranded => {
            "the legacy row changed after the user migrated; Auth0 will never see it on its own. \
             These are the users driftsync exists for: `driftsync reconcile --push` sends the \
             legacy-side changes through the Management API."
        }
        Status::Auth0Ahead => {
            "only Auth0's copy changed (the user edited their profile); Auth0 owns migrated users, so \
             nothing is sent."
        }
        Status::Conflict => "both sides changed the same field: a person decides.",
        Status::StaleCache => {
            "not migrated: Auth0 keeps a cached copy that refreshes at the next login, so nothing \
             needs pushing."
        }
        Status::NotMigrated => {
            "has not logged in since migration was switched on: no Auth0 user yet."
        }
        Status::Orphaned => {
            "deleted from the legacy database but can still log in to Auth0: review them \
             (with reconcile.orphans = \"block\", a push blocks them)."
        }
    };
    for status in Status::ALL {
        let count = report.summary.get(status);
        if count > 0 {
            writeln!(
                out,
                "  {:<13} {:>6}  {}",
                status.name(),
                count,
                advice(status)
            )?;
        }
    }
    writeln!(
        out,
        "\nNext: copy config/driftsync.example.toml, point [legacy] at your database and [auth0] at \
         your tenant, run `driftsync check`, then `driftsync reconcile`."
    )
}
