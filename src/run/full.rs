//! A full run: every legacy row against every Auth0 profile of the connection. Three things
//! run at once: the legacy rows stream into the engine's table; Auth0's side is prepared
//! (connection, migration rule, export job: a job takes Auth0 a while); and as soon as it is,
//! the export streams past the table on the engine's threads.

use std::path::PathBuf;

use crate::auth0::export_job::{self, ExportOptions};
use crate::auth0::{Auth0Client, Job};
use crate::config::{CacheSource, Config, Environment};
use crate::engine::{FullPass, rss_mib};
use crate::model::classify::Status;
use crate::model::guard::{self, Sizes};
use crate::model::profile::Field;
use crate::model::profile::MigratedRule;
use crate::model::progress::{Examples, Snapshot};
use crate::report::{Report, Summary};
use crate::sources::export;
use crate::sources::legacy;
use crate::timestamp;

use super::connection::{Classifying, ConnectionFacts};
use super::setup::{Run, Setup};
use super::{Finished, RunError, with_store};

/// Where Auth0's profiles come from in this run.
enum Source {
    File(PathBuf),
    Export,
}

/// What the Auth0 side settled before the join.
struct Auth0Side {
    facts: ConnectionFacts,
    job: Option<Job>,
}

pub(super) async fn run(run: Run<'_>, env: &dyn Environment) -> Result<Finished, RunError> {
    let config = run.config;
    let options = run.options;
    let clock = run.started;
    let first_run = with_store(run.store, |store| store.last_success("full"))?.is_none();
    // A saved plan is checked against Auth0 as it is now: always a fresh export job.
    let source = match options.plan {
        Some(_) => Source::Export,
        None => source(config, options.cache_file.as_ref())?,
    };
    let Setup {
        client,
        recovered,
        mut db,
        columns,
        fields,
    } = Setup::new(&run, env, needs_client(config, &source, run.push)).await?;

    // Stored baselines are at hand before the rows arrive, so that each user's set joins its
    // record as the row is stored.
    let estimate = legacy::estimate_rows(&mut db, &config.legacy.query).await;
    let mut pass = with_store(run.store, |store| {
        FullPass::new(estimate, |each| {
            store.for_each_baseline(|user_id, packed| each(user_id, packed))
        })
    })?;
    if columns.has_last_active_at() {
        pass.count_inactivity(timestamp::parse_rfc3339(&run.info.started_at).unwrap_or(0));
    }
    tracing::info!(
        elapsed_ms = clock.elapsed().as_millis() as u64,
        rss_mib = rss_mib(),
        "loaded the stored baselines"
    );
    let ticker = run.ticker(|| pass.counters());

    let legacy_side = async {
        let mut rows = pass.legacy_rows();
        let read = legacy::stream(&mut db, &config.legacy.query, &fields, |_, row| {
            rows.push(row.number, row.user_id, row.record)
        })
        .await;
        let result = rows.finish(read);
        if let Ok(legacy_users) = result {
            tracing::info!(
                legacy_users,
                elapsed_ms = clock.elapsed().as_millis() as u64,
                rss_mib = rss_mib(),
                "read the legacy rows"
            );
        }
        result
    };
    let kept = super::connection::attributes_read(config, &fields);
    let export_side = pass.export_side();
    let join_side = async {
        let side =
            prepare_auth0_side(config, client.as_deref(), &source, &kept, &options.export).await?;
        let mut classifying = Classifying::new(config, side.facts, fields.clone());
        classifying.review = options.save_plan.is_some() || options.plan.is_some();
        let download = match (&source, side.job, &client) {
            (Source::Export, Some(job), Some(client)) => {
                let name = format!("of export job {}", job.id);
                Some((
                    name,
                    export_job::download(client.clone(), job, &options.export),
                ))
            }
            _ => None,
        };
        let source = match &source {
            Source::File(path) => Source::File(path.clone()),
            Source::Export => Source::Export,
        };
        tokio::task::spawn_blocking(move || {
            // This thread cuts the export into chunks; it shares the workers' priority.
            crate::priority::yield_to_legacy_side();
            let (name, input) = match (source, download) {
                (_, Some((name, stream))) => {
                    let input = export::from_download(&name, stream)?;
                    (name, input)
                }
                (Source::File(path), None) => {
                    (path.display().to_string(), export::open_file(&path)?)
                }
                (Source::Export, None) => {
                    return Err(RunError::Internal(
                        "an export source without its export job",
                    ));
                }
            };
            Ok(export_side.join(&name, input, &classifying.context())?)
        })
        .await
        .map_err(|_| RunError::ThreadPanicked("join of the export with the legacy rows"))?
    };
    let (legacy_result, join_result) = tokio::join!(legacy_side, join_side);
    // The legacy side's error first: a join cut short by it says less.
    let legacy_users = legacy_result?;
    let joined = join_result?;
    drop(db);
    if options.stop.is_cancelled() {
        return Err(RunError::Stopped);
    }
    drop(ticker);
    let mut classified = pass.finish(joined)?;
    classified.summary.legacy_users = legacy_users;
    tracing::info!(
        auth0_users = classified.summary.auth0_users,
        reported = classified.users.len(),
        planned = classified.pushes.len(),
        elapsed_ms = clock.elapsed().as_millis() as u64,
        rss_mib = rss_mib(),
        "classified every user"
    );
    if !options.allow_shrink
        && let Some((legacy_before, auth0_before)) = run.last_full_counts()?
    {
        let summary = &classified.summary;
        guard::check_shrink(
            Sizes {
                before: legacy_before,
                now: summary.legacy_users,
            },
            Sizes {
                before: auth0_before,
                now: summary.auth0_users,
            },
            config.reconcile.max_shrink_fraction,
        )?;
    }
    let notes = first_run_notes(first_run, &config.auth0.migrated, &classified.summary);
    let pushable = classified.pushable_users;
    let (migrated, examples, inactivity) = (
        classified.migrated,
        std::mem::take(&mut classified.examples),
        classified.inactivity,
    );
    let mut finished = run
        .conclude(client.as_ref(), &recovered, classified, pushable, notes)
        .await?;
    finished.progress = Some(snapshot(&finished.report, migrated, examples, inactivity));
    Ok(finished)
}

/// The migration's progress as this run leaves it: a stranded user whose push was applied no
/// longer blocks the cutover, so the counts and examples are read from the final report.
fn snapshot(
    report: &Report,
    migrated: u64,
    mut examples: Examples,
    inactivity: Option<[u64; 6]>,
) -> Snapshot {
    let summary = &report.summary;
    let mut unsettled = |status: Status| {
        let mut count = 0;
        for user in report.users.iter().filter(|user| user.status == status) {
            if user.needs_action {
                count += 1;
                examples.offer(status, &user.user_id);
            }
        }
        count
    };
    let stranded = unsettled(Status::Stranded);
    let conflict = unsettled(Status::Conflict);
    let deleted_in_auth0 = unsettled(Status::DeletedInAuth0);
    Snapshot {
        at: report.run.finished_at.clone(),
        legacy_users: summary.legacy_users,
        migrated,
        not_migrated: summary.not_migrated,
        auth0_only: summary.auth0_only,
        stranded,
        conflict,
        deleted_in_auth0,
        orphaned: summary.orphaned,
        inactivity,
        examples,
    }
}

fn source(config: &Config, cache_file: Option<&PathBuf>) -> Result<Source, RunError> {
    if let Some(path) = cache_file {
        return Ok(Source::File(path.clone()));
    }
    match config.cache.source {
        CacheSource::Export => Ok(Source::Export),
        CacheSource::File => config
            .cache
            .file
            .clone()
            .map(Source::File)
            .ok_or(RunError::NoCacheFile),
    }
}

/// Why this run needs a Management API client, if it does: for an export job, to read the
/// connection's `import_mode`, or to push.
fn needs_client(config: &Config, source: &Source, push: bool) -> Option<&'static str> {
    match (source, &config.auth0.migrated) {
        (Source::Export, _) => Some("cache.source = \"export\""),
        (_, MigratedRule::ImportMode) => Some("auth0.migrated = \"import_mode\""),
        _ if push => Some("pushing"),
        _ => None,
    }
}

/// Reads the connection (migration rule, `import_mode`) and, for the export source, runs the
/// export job to completion.
async fn prepare_auth0_side(
    config: &Config,
    client: Option<&Auth0Client>,
    source: &Source,
    attributes: &[Field],
    export: &ExportOptions,
) -> Result<Auth0Side, RunError> {
    let Some(client) = client else {
        return Ok(Auth0Side {
            facts: ConnectionFacts::assumed(config),
            job: None,
        });
    };
    let connection = client.connection_by_name(&config.auth0.connection).await?;
    let facts = ConnectionFacts::read(config, &connection);
    tracing::info!(
        connection = %connection.id,
        import_mode = facts.import_mode,
        root_attributes_refreshed = facts.root_attributes_refreshed,
        "found the connection"
    );
    let job = match source {
        Source::Export => {
            let wanted = export_job::fields_for(attributes, &facts.migrated);
            Some(export_job::run_job(client, &connection.id, &wanted, export).await?)
        }
        Source::File(_) => None,
    };
    Ok(Auth0Side { facts, job })
}

/// What the first run of a state file tells its reader: it cannot tell a deletion in the
/// legacy database from a signup yet. With a migration marker there is no such doubt: a
/// migrated user carries the marker.
fn first_run_notes(first_run: bool, rule: &MigratedRule, summary: &Summary) -> Vec<String> {
    if !first_run || summary.auth0_only == 0 || matches!(rule, MigratedRule::AppMetadataKey(_)) {
        return Vec::new();
    }
    let note = format!(
        "{} Auth0 users of the connection have no legacy row and no evidence that they ever had \
         one, so they are auth0_only (with import mode, people who sign up are created in Auth0 \
         only). This is the first run with this state file: a user deleted from the legacy \
         database before it looks the same, unless the migration marker \
         (auth0.migrated = \"app_metadata.<key>\") is set on it. From now on, a user this run \
         matched that loses its legacy row is reported orphaned.",
        summary.auth0_only
    );
    tracing::warn!("{note}");
    vec![note]
}
