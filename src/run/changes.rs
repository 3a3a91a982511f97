//! A `changes` run, for the daemon's short schedule: only the legacy rows whose `updated_at` is
//! later than the start of the last successful run (minus an overlap window, for transactions
//! that committed late), with their Auth0 profiles fetched one by one through the rate-limited
//! client instead of an export job. They are classified with the baselines and pushed when
//! pushing is on, exactly like in a full run (the same setup, engine rules and conclusion).
//! A row whose compared values all still equal what both sides last agreed on (a user Auth0
//! holds in its own store) has nothing to push and costs no request: it is left to full runs,
//! like deletions.

use std::collections::HashSet;

use futures_util::StreamExt;

use crate::config::Environment;
use crate::engine::ChangedUsers;
use crate::model::baseline;
use crate::model::profile::{LegacyRecord, USER_ID_PREFIX};
use crate::sources::export;
use crate::sources::legacy::{self, LegacyError};
use crate::timestamp;

use super::connection::{Classifying, ConnectionFacts};
use super::setup::{Run, Setup};
use super::{Finished, RunError, with_store};

/// Rows changed this long before the last run's start are read again.
pub const OVERLAP_SECONDS: i64 = 60;

/// Profiles fetched at once (the limiter paces them).
const FETCH_CONCURRENCY: usize = 8;

pub(super) async fn run(run: Run<'_>, env: &dyn Environment) -> Result<Finished, RunError> {
    let config = run.config;
    let watermark =
        with_store(run.store, |store| store.watermark())?.ok_or(RunError::NoWatermark)?;
    let since = timestamp::parse_rfc3339(&watermark)
        .map(|micros| timestamp::format_rfc3339(micros - OVERLAP_SECONDS * 1_000_000))
        .ok_or_else(|| RunError::BadWatermark(watermark.clone()))?;
    let Setup {
        client,
        recovered,
        mut db,
        columns,
        fields,
    } = Setup::new(&run, env, Some("a changes run")).await?;
    let client = client.ok_or(RunError::Internal("a changes run without an Auth0 client"))?;
    if !columns.has_updated_at() {
        return Err(RunError::ChangesNeedUpdatedAt);
    }
    let connection = client.connection_by_name(&config.auth0.connection).await?;
    let classifying = Classifying::new(config, ConnectionFacts::read(config, &connection), fields);

    let mut rows: Vec<(Box<str>, LegacyRecord)> = Vec::new();
    let mut seen: HashSet<Box<str>> = HashSet::new();
    let query = &config.legacy.query;
    legacy::stream_changed(&mut db, query, &since, &classifying.fields, |_, row| {
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

    let baselines = with_store(run.store, |store| {
        store.baselines_of(rows.iter().map(|(legacy_id, _)| &**legacy_id))
    })?;
    // Rows read again inside the overlap window after they were pushed or agreed on, and rows
    // whose `updated_at` moved without a compared value changing: nothing to push, so no
    // request. On a short schedule this is most rows (each one is read for a whole window).
    let to_fetch: Vec<usize> = (0..rows.len())
        .filter(|&index| {
            let (legacy_id, record) = &rows[index];
            !baselines.get(legacy_id).is_some_and(|stored| {
                baseline::legacy_unchanged(&classifying.fields, &record.view().profile, stored)
            })
        })
        .collect();
    tracing::info!(
        since = %since,
        changed = rows.len(),
        unchanged_since_agreed = rows.len() - to_fetch.len(),
        "read the changed legacy rows"
    );

    let profiles: Vec<Result<(usize, Option<serde_json::Value>), RunError>> =
        futures_util::stream::iter(to_fetch.iter().map(|&index| (index, &rows[index])))
            .map(|(index, (legacy_id, _))| {
                let client = client.clone();
                let auth0_id = format!("{USER_ID_PREFIX}{legacy_id}");
                async move { Ok((index, client.user(&auth0_id).await?)) }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;

    let context = classifying.context();
    let mut users = ChangedUsers::new(&context);
    for result in profiles {
        let (index, profile) = result?;
        let (legacy_id, record) = &rows[index];
        let stored = baselines.get(legacy_id);
        let mut matched = false;
        if let Some(profile) = profile {
            // The same reader as for export lines, so every rule applies unchanged.
            let line = profile.to_string();
            let source = format!("GET /api/v2/users/{USER_ID_PREFIX}{legacy_id}");
            export::read::<RunError>(&source, line.as_bytes(), &classifying.filter, |_, user| {
                users.matched(&record.view(), stored, &user);
                matched = true;
                Ok(())
            })?;
        }
        if !matched {
            users.legacy_only(legacy_id, &record.view(), stored);
        }
    }
    let mut classified = users.finish();
    // Rows read; the statuses count the rows compared (a row left out above has none).
    classified.summary.legacy_users = rows.len() as u64;
    // The guard's denominator is the size of the tenant as the last full run saw it.
    let tenant_users = run.last_full_counts()?.map_or(0, |(_, auth0)| auth0);
    let client = Some(client);
    run.conclude(
        client.as_ref(),
        &recovered,
        classified,
        tenant_users,
        Vec::new(),
    )
    .await
}
