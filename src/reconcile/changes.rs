//! A `changes` run, for the daemon's short schedule: only the legacy rows whose `updated_at` is
//! later than the start of the last successful run (minus an overlap window, for transactions
//! that committed late), with their Auth0 profiles fetched one by one through the rate-limited
//! client instead of an export job. They are classified with the baselines and pushed when
//! pushing is on, exactly like in a full run. Deletions are only seen by full runs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use super::connection::ConnectionFacts;
use super::join::{JoinContext, Joined};
use super::progress::Counters;
use super::{PushPhase, ReconcileError, RunOptions, with_store};
use crate::auth0::{Auth0Client, Settings};
use crate::classify::{self};
use crate::config::{Config, Environment};
use crate::export::{self, ExportFilter};
use crate::legacy::{self, LegacyError};
use crate::profile::LegacyRecord;
use crate::push::apply;
use crate::report::{REPORT_VERSION, Report, RunInfo};
use crate::state::StateStore;
use crate::timestamp;

/// Rows changed this long before the last run's start are read again.
pub const OVERLAP_SECONDS: i64 = 60;

/// Profiles fetched at once (the limiter paces them).
const FETCH_CONCURRENCY: usize = 8;

pub(super) async fn run(
    config: &Config,
    options: &RunOptions,
    env: &dyn Environment,
    push: bool,
    mut run: RunInfo,
    store: &Arc<Mutex<StateStore>>,
) -> Result<Report, ReconcileError> {
    let watermark =
        with_store(store, |store| store.watermark())?.ok_or(ReconcileError::NoWatermark)?;
    let since = timestamp::parse_rfc3339(&watermark)
        .map(|micros| timestamp::format_rfc3339(micros - OVERLAP_SECONDS * 1_000_000))
        .ok_or_else(|| ReconcileError::BadWatermark(watermark.clone()))?;
    let settings = Settings::from_config(&config.auth0, env).map_err(|source| {
        ReconcileError::ApiSettings {
            why: "a changes run",
            source,
        }
    })?;
    let client = Arc::new(Auth0Client::new(settings, options.retry)?);
    let recovered = if push {
        apply::recover(&client, store).await?
    } else {
        apply::Recovered::default()
    };
    let connection = client.connection_by_name(&config.auth0.connection).await?;
    let facts = ConnectionFacts::read(config, &connection);

    let mut db = legacy::connect(&config.legacy.target).await?;
    let columns = legacy::describe(&mut db, &config.legacy.query).await?;
    if !columns.has_updated_at() {
        return Err(ReconcileError::ChangesNeedUpdatedAt);
    }
    let fields = match &config.reconcile.fields {
        Some(fields) => fields.clone(),
        None => columns.fields(),
    };
    let mut rows: Vec<(Box<str>, LegacyRecord)> = Vec::new();
    let mut seen: HashSet<Box<str>> = HashSet::new();
    legacy::stream_changed(&mut db, &config.legacy.query, &since, &fields, |_, row| {
        if !seen.insert(row.user_id.into()) {
            return Err(LegacyError::DuplicateUserId {
                row: row.number,
                user_id: row.user_id.to_owned(),
            });
        }
        rows.push((row.user_id.into(), LegacyRecord::from_packed(row.record)));
        Ok(())
    })
    .await?;
    drop(db);
    tracing::info!(since = %since, changed = rows.len(), "read the changed legacy rows");

    let profiles: Vec<Result<(usize, Option<serde_json::Value>), ReconcileError>> =
        futures_util::stream::iter(rows.iter().enumerate())
            .map(|(index, (legacy_id, _))| {
                let client = client.clone();
                let auth0_id = format!("{}{legacy_id}", crate::profile::USER_ID_PREFIX);
                async move { Ok((index, client.user(&auth0_id).await?)) }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;

    let baselines = with_store(store, |store| {
        store.baselines_of(rows.iter().map(|(legacy_id, _)| &**legacy_id))
    })?;
    let policy = facts.push_policy(config, &fields);
    let kept = super::connection::attributes_read(config, &fields);
    let filter = ExportFilter {
        connection: config.auth0.connection.clone(),
        migrated: facts.migrated.clone(),
    };
    let counters = Counters::default();
    let context = JoinContext {
        rules: facts.rules(&fields),
        kept: &kept,
        filter: &filter,
        policy: &policy,
        orphans: config.reconcile.orphans,
        counters: &counters,
    };
    let mut joined = Joined::new();
    for result in profiles {
        let (index, profile) = result?;
        let (legacy_id, record) = &rows[index];
        let auth0_id = format!("{}{legacy_id}", crate::profile::USER_ID_PREFIX);
        let mut matched = false;
        if let Some(profile) = profile {
            // The same reader as for export lines, so every rule applies unchanged.
            let line = profile.to_string();
            let source = format!("GET /api/v2/users/{auth0_id}");
            export::read::<ReconcileError>(&source, line.as_bytes(), &filter, |_, user| {
                joined.summary.auth0_users += 1;
                if let Some(entries) =
                    joined.match_user(&context, &record.view(), baselines.get(legacy_id), &user)
                {
                    joined.baseline_changes.push(legacy_id, &entries);
                }
                matched = true;
                Ok(())
            })?;
        }
        if !matched {
            // No Auth0 user: not migrated yet, or deleted in Auth0 since a run saw it migrated.
            let verdict = classify::classify(
                &context.rules,
                Some(&record.view()),
                None,
                baselines.get(legacy_id),
            );
            joined.record(&auth0_id, verdict, None, None);
        }
    }
    let Joined {
        mut summary,
        mut users,
        mut planned,
        baseline_changes,
        ..
    } = joined;
    summary.legacy_users = rows.len() as u64;
    crate::metrics::rows_read("legacy", summary.legacy_users);
    crate::metrics::rows_read("auth0", summary.auth0_users);
    users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));

    let mut interrupted = None;
    if push && !planned.is_empty() {
        // The guard's denominator is the size of the tenant as the last full run saw it.
        let tenant_users = with_store(store, |store| store.last_full_summary())?
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|summary| summary["auth0_users"].as_u64())
            .unwrap_or(0);
        let limit = options
            .max_push_fraction
            .unwrap_or(config.reconcile.max_push_fraction);
        let phase = PushPhase {
            client: &client,
            store,
            run_id: &run.id,
            options,
            limit,
            recovered: &recovered.profiles,
        };
        interrupted = phase
            .run(&mut users, &mut summary, &mut planned, tenant_users)
            .await?;
    }
    with_store(store, |store| {
        super::write_baselines(store, baseline_changes, planned, Default::default())
    })?;
    if let Some(interrupted) = interrupted {
        return Err(interrupted);
    }
    run.finished_at = timestamp::now_rfc3339();
    Ok(Report {
        version: REPORT_VERSION,
        run,
        summary,
        users,
        prepared: None,
        notes: Vec::new(),
    })
}
