//! `driftsync progress` and `driftsync cutover`: how far the migration has come, by the
//! snapshots successful full runs recorded in the state file (`model::progress`), and whether
//! the legacy database can be switched off. Both only read the state file; `cutover
//! --migrated-ids FILE` also reads Auth0's side (the export file, or a users-export job) to
//! write every migrated user's legacy id and migration time.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;

use crate::auth0::export_job::{self, ExportOptions};
use crate::config::{Config, Environment};
use crate::model::progress::{self, Blocker, INACTIVITY_BUCKETS, Progress, Projection, Snapshot};
use crate::run::connection::Auth0Access;
use crate::sources::export::{self, ExportError, ExportFilter};
use crate::state::StateStore;

/// The recorded snapshots, oldest first; an error naming the state file when it is missing.
fn history(config: &Config) -> anyhow::Result<Vec<Snapshot>> {
    let path = &config.state.path;
    if !path.exists() {
        bail!(
            "state file {} does not exist: run `driftsync reconcile` (or let the daemon run) first",
            path.display()
        );
    }
    Ok(StateStore::open(path)?.progress_history()?)
}

/// `driftsync progress`.
pub fn progress(config: &Config, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let history = history(config)?;
    let Some(progress) = progress::progress(&history) else {
        bail!(
            "the state file {} holds no successful full run yet: run `driftsync reconcile` first",
            config.state.path.display()
        );
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &progress)?;
        writeln!(out)?;
        return Ok(());
    }
    write_progress(&progress, out)?;
    Ok(())
}

fn write_progress(progress: &Progress, out: &mut dyn Write) -> std::io::Result<()> {
    let latest = &progress.latest;
    writeln!(
        out,
        "migration progress, as of the full run at {}",
        latest.at
    )?;
    writeln!(out, "  legacy users       {:>10}", latest.legacy_users)?;
    writeln!(
        out,
        "  migrated           {:>10}   {:.1}%",
        latest.migrated,
        progress.migrated_share * 100.0
    )?;
    writeln!(out, "  not migrated       {:>10}", latest.not_migrated)?;
    writeln!(
        out,
        "  signups in Auth0   {:>10}   (auth0_only)",
        latest.auth0_only
    )?;
    let rate = |rate: Option<f64>| match rate {
        Some(rate) => format!("{rate:.1}"),
        None => "unknown (runs span less than a day)".to_owned(),
    };
    writeln!(out, "migrations per day")?;
    writeln!(out, "  last 7 days        {:>10}", rate(progress.per_day_7))?;
    writeln!(
        out,
        "  last 28 days       {:>10}",
        rate(progress.per_day_28)
    )?;
    let projection = match &progress.projection {
        Projection::Complete => "complete: no legacy user is left to migrate".to_owned(),
        Projection::At(at) => format!("{} at the 7-day rate", &at[..10.min(at.len())]),
        Projection::NotAtThisRate => "not at this rate (migrations have stalled)".to_owned(),
        Projection::Unknown => "unknown: too little history yet".to_owned(),
    };
    writeln!(out, "projected completion: {projection}")?;
    if let Some(buckets) = &latest.inactivity {
        writeln!(
            out,
            "not migrated, by inactivity in the legacy system (last_active_at)"
        )?;
        for (name, count) in INACTIVITY_BUCKETS.iter().zip(buckets) {
            writeln!(out, "  {:<18} {count:>10}", name.replace('_', " "))?;
        }
        writeln!(
            out,
            "  Users inactive for a year or more will likely never log in: import them in bulk or decide."
        )?;
    }
    writeln!(out, "({} full runs recorded)", progress.runs)
}

/// What `driftsync cutover` was asked.
pub struct CutoverOptions {
    pub json: bool,
    pub migrated_ids: Option<PathBuf>,
    pub cache_file: Option<PathBuf>,
}

/// `driftsync cutover`: returns whether nothing blocks switching the legacy database off.
pub async fn cutover(
    config: &Config,
    options: &CutoverOptions,
    env: &dyn Environment,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let history = history(config)?;
    let latest = history.last();
    let now = crate::timestamp::parse_rfc3339(&crate::timestamp::now_rfc3339()).unwrap_or(0);
    let max_age = i64::from(config.cutover.max_run_age_hours) * 3_600_000_000;
    let blockers = progress::cutover(latest, now, max_age);
    let migrated_ids = match &options.migrated_ids {
        Some(path) => Some((
            path,
            write_migrated_ids(config, env, path, options.cache_file.as_deref()).await?,
        )),
        None => None,
    };
    if options.json {
        let value = json!({
            "ready": blockers.is_empty(),
            "last_full_run": latest.map(|snapshot| &snapshot.at),
            "blockers": blockers,
            "migrated_ids": migrated_ids.as_ref().map(|(path, count)| json!({"file": path, "users": count})),
        });
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
    } else {
        write_cutover(latest, &blockers, out)?;
        if let Some((path, count)) = &migrated_ids {
            writeln!(
                out,
                "wrote {count} migrated users (user_id,migrated_at) to {}",
                path.display()
            )?;
        }
    }
    Ok(blockers.is_empty())
}

fn write_cutover(
    latest: Option<&Snapshot>,
    blockers: &[Blocker],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if let Some(latest) = latest {
        writeln!(out, "last successful full run: {}", latest.at)?;
    }
    if blockers.is_empty() {
        writeln!(
            out,
            "ready: every legacy user is migrated and nothing is stranded, in conflict or deleted \
             in Auth0. Mark the legacy rows as migrated (--migrated-ids) before switching the \
             legacy database off, so that a deleted user cannot come back."
        )?;
        return Ok(());
    }
    writeln!(out, "not ready: {} blockers", blockers.len())?;
    for blocker in blockers {
        let count = if blocker.reason == "no_recent_run" {
            String::new()
        } else {
            format!(" {}", blocker.count)
        };
        writeln!(out, "  {}{count}: {}", blocker.reason, blocker.remedy)?;
        if !blocker.examples.is_empty() {
            writeln!(out, "    e.g. {}", blocker.examples.join(", "))?;
        }
    }
    Ok(())
}

/// Writes `user_id,migrated_at` (the legacy id and Auth0's `created_at`) of every migrated user
/// of the connection as CSV, privately and atomically; returns how many.
async fn write_migrated_ids(
    config: &Config,
    env: &dyn Environment,
    path: &Path,
    cache_file: Option<&Path>,
) -> anyhow::Result<u64> {
    let Auth0Access {
        client,
        facts,
        connection_id,
        file,
    } = Auth0Access::open(
        config,
        env,
        cache_file,
        "--migrated-ids (without --cache-file)",
        false,
    )
    .await?;
    let filter = ExportFilter {
        connection: config.auth0.connection.clone(),
        migrated: facts.migrated.clone(),
    };
    let (name, input): (String, Box<dyn BufRead + Send>) = match (file, &client, connection_id) {
        (Some(file), _, _) => (file.display().to_string(), export::open_file(&file)?),
        (None, Some(client), Some(connection_id)) => {
            let options = ExportOptions::from_config(&config.cache);
            let fields = export_job::fields_for(&[], &facts.migrated);
            let job = export_job::run_job(client, &connection_id, &fields, &options).await?;
            let name = format!("of export job {}", job.id);
            let stream = export_job::download(client.clone(), job, &options);
            let input = export::from_download(&name, stream)?;
            (name, input)
        }
        _ => bail!("--migrated-ids needs the export file or the Management API"),
    };
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut count = 0u64;
        crate::report::write_atomically(&path, crate::private_file::PRIVATE, |out| {
            writeln!(out, "user_id,migrated_at")?;
            let mut failed = None;
            export::read::<ExportError>(&name, input, &filter, |_, user| {
                if !user.migrated {
                    return Ok(());
                }
                let migrated_at = user
                    .created_at
                    .map(crate::timestamp::format_rfc3339)
                    .unwrap_or_default();
                if let Err(error) = writeln!(out, "{},{migrated_at}", csv(user.legacy_id)) {
                    failed = Some(error);
                }
                count += 1;
                Ok(())
            })
            .map_err(std::io::Error::other)?;
            failed.map_or(Ok(()), Err)
        })
        .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(count)
    })
    .await
    .context("the thread writing the migrated ids stopped unexpectedly")?
}

/// A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::csv;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv("42"), "42");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
