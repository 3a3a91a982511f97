//! Applying planned pushes: several requests in flight through the rate-limited client (Auth0
//! answers in 100–300 ms, so one at a time could not use the rate), each request journaled
//! before it is sent and its outcome after. A stop request (SIGTERM, SIGINT) starts no new
//! request and gives the ones in flight a few seconds to finish and be journaled; whatever is
//! still unanswered stays `planned` in the journal and is resolved at the next start.
//!
//! [`recover`] resolves such entries against Auth0's current profile: a change already in
//! effect is recorded as applied, anything else as superseded (the run re-plans from fresh
//! data), so a change is never sent twice on the word of a stale journal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Map, Value as Json};
use tokio_util::sync::CancellationToken;

use crate::auth0::{Auth0Client, Auth0Error, EndpointClass};
use crate::state::{JournalState, StateError, StateStore};
use crate::timestamp;

/// Requests in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 12;

/// How long requests in flight may take to finish after a stop request.
pub const STOP_GRACE: Duration = Duration::from_secs(7);

/// One user's requests.
#[derive(Debug, Clone)]
pub struct PushTask {
    /// Index of the user in the report.
    pub index: usize,
    pub auth0_id: String,
    pub bodies: Vec<Map<String, Json>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    /// Auth0 refused or never answered; the message names why.
    Failed(String),
    /// Not sent (stopped first).
    NotSent(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the journal writer stopped: {0}")]
    Worker(String),
}

type Store = Arc<Mutex<StateStore>>;

/// Runs a journal operation on a blocking thread (it waits for an fsync).
async fn journal<T: Send + 'static>(
    store: &Store,
    operation: impl FnOnce(&StateStore) -> Result<T, StateError> + Send + 'static,
) -> Result<T, ApplyError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let guard = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        operation(&guard)
    })
    .await
    .map_err(|error| ApplyError::Worker(error.to_string()))?
    .map_err(ApplyError::from)
}

/// Applies every task; returns each task's outcome by its report index.
pub async fn apply(
    client: Arc<Auth0Client>,
    store: Store,
    run_id: &str,
    tasks: Vec<PushTask>,
    concurrency: usize,
    stop: CancellationToken,
) -> Result<Vec<(usize, Outcome)>, ApplyError> {
    let run_id: Arc<str> = Arc::from(run_id);
    let results: Vec<Result<(usize, Outcome), ApplyError>> = futures_util::stream::iter(tasks)
        .map(|task| {
            let client = client.clone();
            let store = store.clone();
            let run_id = run_id.clone();
            let stop = stop.clone();
            async move {
                let index = task.index;
                if stop.is_cancelled() {
                    return Ok((
                        index,
                        Outcome::NotSent("the run was stopped before this push was sent".into()),
                    ));
                }
                push_user(&client, &store, &run_id, task, &stop)
                    .await
                    .map(|outcome| (index, outcome))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

async fn push_user(
    client: &Auth0Client,
    store: &Store,
    run_id: &Arc<str>,
    task: PushTask,
    stop: &CancellationToken,
) -> Result<Outcome, ApplyError> {
    for body in task.bodies {
        let text = Json::Object(body.clone()).to_string();
        let (run, user) = (run_id.to_string(), task.auth0_id.clone());
        let entry = journal(store, move |store| {
            store.journal_plan(&run, &user, &text, &timestamp::now_rfc3339())
        })
        .await?;
        let url = match client.api_url(&["users", &task.auth0_id]) {
            Ok(url) => url,
            Err(error) => return fail(store, entry, error).await,
        };
        let body = Json::Object(body);
        let send = client.send(
            Method::PATCH,
            EndpointClass::UsersWrite,
            "/api/v2/users/{id}",
            url,
            Some(&body),
        );
        let answer = tokio::select! {
            answer = send => answer,
            () = grace_over(stop) => {
                // Left `planned`: the next start resolves it against Auth0's profile.
                return Ok(Outcome::NotSent("stopped while the request was in flight; resolved at the next run".into()));
            }
        };
        match answer {
            Ok((status, _)) if status.is_success() => {
                journal(store, move |store| {
                    store.journal_resolve(
                        entry,
                        JournalState::Applied,
                        None,
                        &timestamp::now_rfc3339(),
                    )
                })
                .await?;
            }
            Ok((status, _)) => {
                let error = format!("Auth0 answered {status}: the user does not exist");
                return fail(store, entry, error).await;
            }
            Err(error) => return fail(store, entry, error).await,
        }
    }
    Ok(Outcome::Applied)
}

async fn fail(
    store: &Store,
    entry: i64,
    error: impl std::fmt::Display,
) -> Result<Outcome, ApplyError> {
    let message = error.to_string();
    let recorded = message.clone();
    journal(store, move |store| {
        store.journal_resolve(
            entry,
            JournalState::Failed,
            Some(&recorded),
            &timestamp::now_rfc3339(),
        )
    })
    .await?;
    Ok(Outcome::Failed(message))
}

/// Completes `STOP_GRACE` after a stop request; never before one.
async fn grace_over(stop: &CancellationToken) {
    stop.cancelled().await;
    tokio::time::sleep(STOP_GRACE).await;
}

/// What a recovery found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    pub applied: u64,
    pub superseded: u64,
    /// The profiles read to resolve the entries, by user id. They are newer than an export
    /// taken before this run, so they show a stopped run's request that landed after it.
    pub profiles: HashMap<String, Json>,
}

/// Resolves journal entries left `planned` by a process that stopped mid-push.
pub async fn recover(client: &Auth0Client, store: &Store) -> Result<Recovered, RecoverError> {
    let entries = journal(store, |store| store.unresolved()).await?;
    let mut recovered = Recovered::default();
    for entry in entries {
        let body: Map<String, Json> = serde_json::from_str(&entry.body).unwrap_or_default();
        let profile = client.user(&entry.user_id).await?;
        let in_effect = profile
            .as_ref()
            .is_some_and(|profile| is_in_effect(&body, profile));
        if let Some(profile) = profile {
            recovered.profiles.insert(entry.user_id.clone(), profile);
        }
        let state = if in_effect {
            recovered.applied += 1;
            JournalState::Applied
        } else {
            recovered.superseded += 1;
            JournalState::Superseded
        };
        journal(store, move |store| {
            store.journal_resolve(entry.id, state, None, &timestamp::now_rfc3339())
        })
        .await?;
    }
    Ok(recovered)
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("resolving the push journal")]
    Apply(#[from] ApplyError),
    #[error("resolving the push journal")]
    Auth0(#[from] Auth0Error),
}

/// Whether a PATCH body's effect is visible in a profile: root values equal (`null` = absent),
/// metadata keys equal (`null` = removed).
pub fn is_in_effect(body: &Map<String, Json>, profile: &Json) -> bool {
    body.iter().all(|(key, sent)| {
        let current = profile.get(key).unwrap_or(&Json::Null);
        match (key.as_str(), sent) {
            ("user_metadata" | "app_metadata", Json::Object(keys)) => keys
                .iter()
                .all(|(name, value)| current.get(name).unwrap_or(&Json::Null) == value),
            ("email", Json::String(email)) => current
                .as_str()
                .is_some_and(|current| current.eq_ignore_ascii_case(email)),
            ("blocked", Json::Bool(false)) => !matches!(current, Json::Bool(true)),
            _ => current == sent,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_is_in_effect_when_the_profile_shows_it() {
        let body = json!({"email": "New@x.io", "email_verified": true, "user_metadata": {"lang": "de", "gone": null}});
        let body = body.as_object().unwrap();
        let applied = json!({"email": "new@x.io", "email_verified": true, "user_metadata": {"lang": "de", "keep": 1}});
        assert!(is_in_effect(body, &applied));
        let not_yet =
            json!({"email": "old@x.io", "email_verified": true, "user_metadata": {"lang": "de"}});
        assert!(!is_in_effect(body, &not_yet));
        let key_still_there = json!({"email": "new@x.io", "email_verified": true, "user_metadata": {"lang": "de", "gone": 1}});
        assert!(!is_in_effect(body, &key_still_there));
        assert!(is_in_effect(
            json!({"blocked": false}).as_object().unwrap(),
            &json!({})
        ));
        assert!(is_in_effect(
            json!({"name": null}).as_object().unwrap(),
            &json!({"email": "a"})
        ));
    }
}
