//! `driftsync demo`: the whole job on generated data, with no Auth0 account and no setup. It
//! starts a throwaway PostgreSQL (or uses `--legacy-url`), seeds a legacy table, starts the
//! Auth0 simulator with a tenant where most users migrated, some legacy rows changed afterwards,
//! some users signed up in Auth0 and some left the legacy database, runs a report-only
//! reconcile through a users-export job and explains the report; then a user is deleted in
//! Auth0, the connection gets the usual Get User script, and a push to the simulated tenant
//! shows both (deleted_in_auth0, and the email pushes Auth0 refuses).

pub mod cluster;

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::config::{Config, NoEnv};
use crate::report::{self, Format, PushState};
use crate::run::{self, RunOptions};
use cluster::Cluster;
use driftsync_testkit::datagen::{self, DataSet};
use driftsync_testkit::simulator::{ConnectionSettings, GetUserScript, Simulator, SimulatorConfig};

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
        if let Ok(target) = crate::sources::legacy::Target::without_environment(&url)
            && let Ok(client) = crate::sources::legacy::connect(&target).await
        {
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
    let target = crate::sources::legacy::Target::without_environment(url)?;
    let client = crate::sources::legacy::connect(&target).await?;
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
    let result = two_runs(set, url, simulator, &dir, out).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A first, report-only run; then, after a user was deleted in Auth0 and with the usual Get
/// User script, a push.
async fn two_runs(
    set: &DataSet,
    url: &str,
    simulator: &Simulator,
    dir: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let secret_file = dir.join("client-secret");
    std::fs::write(&secret_file, SimulatorConfig::default().client_secret)?;
    let config_text = demo_config(
        url,
        &simulator.base_url(),
        &secret_file,
        &dir.join("state.db"),
    );
    let config_path = dir.join("driftsync.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_path, &config_text, &NoEnv)?;
    writeln!(
        out,
        "4. Running `driftsync reconcile` (report only) with this configuration:\n"
    )?;
    for line in config_text.lines() {
        writeln!(out, "     {line}")?;
    }
    writeln!(out)?;
    let options = RunOptions {
        progress: true,
        ..RunOptions::default()
    };
    let report = run::run(&config, &options, &NoEnv).await?.report;
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
        serde_json::to_value(&report.summary)? == serde_json::to_value(&expected)?,
        "the demo's report {:?} differs from what the generated data holds {:?}",
        report.summary,
        expected
    );

    // A day later: someone deleted an in-sync user in Auth0, and the connection's Get User
    // script looks every new email up in the legacy table, as such scripts usually do.
    let listed: std::collections::HashSet<&str> = report
        .users
        .iter()
        .map(|user| user.user_id.as_str())
        .collect();
    let deleted = (1..=set.users)
        .map(|id| format!("{}{id}", crate::model::profile::USER_ID_PREFIX))
        .find(|id| !listed.contains(id.as_str()) && simulator.user(id).is_some())
        .context("the demo data has no user in sync")?;
    simulator.remove_user(&deleted);
    simulator.configure_connection(
        datagen::CONNECTION,
        ConnectionSettings {
            import_mode: true,
            get_user: Some(GetUserScript {
                database_url: url.to_owned(),
                query: format!("SELECT 1 FROM {TABLE} WHERE lower(email) = $1"),
            }),
            ..ConnectionSettings::default()
        },
    );
    writeln!(
        out,
        "\n5. A day later: {deleted} was deleted in the Auth0 Dashboard (its legacy row stays), and \
         the connection's Get User script, written as such scripts usually are, looks every email \
         up in the legacy table. Running `driftsync reconcile --push` against the simulated tenant…\n"
    )?;
    let push = RunOptions {
        push: true,
        // A generated tenant changes more users at once than the default guard allows.
        max_push_fraction: Some(1.0),
        ..options
    };
    let pushed = run::run(&config, &push, &NoEnv).await?.report;
    let summary = &pushed.summary;
    writeln!(
        out,
        "   pushed {}, push failed {}, deleted_in_auth0 {} ({deleted}), auth0_only {}.",
        summary.pushed, summary.push_failed, summary.deleted_in_auth0, summary.auth0_only
    )?;
    let refused = pushed.users.iter().find_map(|user| {
        user.push
            .error
            .as_deref()
            .filter(|_| user.push.state == PushState::Failed)
    });
    if let Some(error) = refused {
        writeln!(out, "   A failed push says: {error}")?;
    }
    writeln!(
        out,
        "\n   The {} failed pushes are the new emails: the legacy rows already hold them, so the \
         Get User script finds them and Auth0 answers \"The specified new email already \
         exists\". driftsync records each as failed, names the cause and does not retry it; the \
         users stay stranded. The remedy is in the script: it must skip users who already live \
         in Auth0 (mark their legacy rows as migrated). The other stranded changes were applied.\n   \
         {deleted} is deleted_in_auth0: a run saw it migrated, and at its next login Auth0 will \
         migrate it again from the legacy row. auth0_only users signed up in Auth0 and never \
         had a legacy row: nothing to do, and never blocked.",
        summary.push_failed
    )?;
    anyhow::ensure!(
        summary.deleted_in_auth0 == 1 && summary.push_failed == set.stranded_emails(),
        "the demo's push {summary:?} is not what the generated data holds ({} email changes, one user deleted in Auth0)",
        set.stranded_emails()
    );
    writeln!(
        out,
        "\nNext: copy config/driftsync.example.toml, point [legacy] at your database and [auth0] at \
         your tenant, run `driftsync check`, then `driftsync reconcile`."
    )?;
    Ok(())
}

fn demo_config(url: &str, base_url: &str, secret_file: &Path, state: &Path) -> String {
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

[state]
path = "{state}"
"#,
        state = state.display(),
        query = datagen::mapping_query(TABLE),
        domain = SimulatorConfig::default().domain,
        client_id = SimulatorConfig::default().client_id,
        secret = secret_file.display(),
        connection = datagen::CONNECTION,
        migrated = datagen::MIGRATED_RULE,
    )
}

fn explain(report: &report::Report, out: &mut dyn Write) -> std::io::Result<()> {
    use crate::model::classify::Status;
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
        Status::DeletedInAuth0 => {
            "an earlier run saw them migrated, and their Auth0 user is gone while the legacy row \
             stays: at their next login Auth0 migrates them again. If they were deleted on \
             purpose, mark or remove the legacy row too."
        }
        Status::Auth0Only => {
            "Auth0 users with no legacy row and no sign they ever had one: with import mode, \
             people who sign up are created in Auth0 only. Nothing to do."
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
    Ok(())
}
