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
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use crate::auth0::{Auth0Client, Auth0Error, EndpointClass, RequestBody};
use crate::model::equality::equal_ignoring_case;
use crate::model::plan::{Body, Push};
use crate::model::profile::Field;
use crate::state::{JournalState, StateError, StateStore};
use crate::timestamp;

/// Requests in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 12;

/// How long requests in flight may take to finish after a stop request.
pub const STOP_GRACE: Duration = Duration::from_secs(7);

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
    /// The blocking thread that writes the journal panicked: a bug, never bad input.
    #[error("the journal writer stopped unexpectedly (a bug in driftsync: please report it)")]
    JournalWriterPanicked,
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
    .map_err(|_| ApplyError::JournalWriterPanicked)?
    .map_err(ApplyError::from)
}

/// Applies every push (each with the index of its user in the report); returns each push's
/// outcome by that index.
pub async fn apply(
    client: Arc<Auth0Client>,
    store: Store,
    run_id: &str,
    pushes: Vec<(usize, &Push)>,
    concurrency: usize,
    stop: CancellationToken,
) -> Result<Vec<(usize, Outcome)>, ApplyError> {
    let run_id: Arc<str> = Arc::from(run_id);
    let results: Vec<Result<(usize, Outcome), ApplyError>> = futures_util::stream::iter(pushes)
        .map(|(index, push)| {
            let client = client.clone();
            let store = store.clone();
            let run_id = run_id.clone();
            let stop = stop.clone();
            async move {
                if stop.is_cancelled() {
                    return Ok((
                        index,
                        Outcome::NotSent("the run was stopped before this push was sent".into()),
                    ));
                }
                push_user(&client, &store, &run_id, push, &stop)
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
    push: &Push,
    stop: &CancellationToken,
) -> Result<Outcome, ApplyError> {
    for body in &push.bodies {
        let text = body.text().to_owned();
        let (run, user) = (run_id.to_string(), push.auth0_id.clone());
        let entry = journal(store, move |store| {
            store.journal_plan(&run, &user, &text, &timestamp::now_rfc3339())
        })
        .await?;
        let url = match client.api_url(&["users", &push.auth0_id]) {
            Ok(url) => url,
            Err(error) => return fail(store, entry, error).await,
        };
        let send = client.send(
            Method::PATCH,
            EndpointClass::UsersWrite,
            "/api/v2/users/{id}",
            url,
            Some(RequestBody::Text(body.text())),
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
            Err(error) => {
                let why = get_user_refusal(body, &error).unwrap_or_else(|| error.to_string());
                return fail(store, entry, why).await;
            }
        }
    }
    Ok(Outcome::Applied)
}

/// Auth0's answer when the connection's Get User script finds a pushed email or username in
/// the legacy store, explained. With import mode, Auth0 runs that script when the Update-a-user
/// endpoint changes either, to check that the new value is not taken; the legacy row already
/// holds the new value (that is why the user is stranded), so a script written the usual way
/// finds it, and Auth0 answers 400 "The specified new email already exists" (Auth0 support,
/// "Email Conflict During Automatic Migration with Auth0 Custom Database Connections").
/// Sending it again cannot succeed until the script changes.
fn get_user_refusal(body: &Body, error: &Auth0Error) -> Option<String> {
    let Auth0Error::Api {
        status: 400,
        message,
        ..
    } = error
    else {
        return None;
    };
    let attribute = ["email", "username"].into_iter().find(|attribute| {
        body.contains_key(attribute) && message.contains(&format!("new {attribute} already exists"))
    })?;
    Some(format!(
        "Auth0 refused the new {attribute}: {message:?}. With import mode Auth0 runs the \
         connection's Get User script when a push changes the {attribute}, and the script found \
         the new value in the legacy database, whose row already holds it. Make the Get User \
         script skip users who already live in Auth0 (for instance legacy rows marked as \
         migrated), then push again; not retried in this run"
    ))
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
        // A body that does not read back (a damaged journal) is never taken as in effect: the
        // change is then superseded and planned again from fresh data.
        let body: Json = serde_json::from_str(&entry.body).unwrap_or(Json::Null);
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

/// Whether a PATCH body's effect is visible in a profile: root values equal (`null` = absent;
/// emails and usernames in any case, as Auth0 stores them lower-cased), metadata keys equal
/// (`null` = removed). `verify_email` asks for a mail and leaves nothing in the profile.
pub fn is_in_effect(body: &Json, profile: &Json) -> bool {
    let Some(body) = body.as_object() else {
        return false;
    };
    body.iter().all(|(key, sent)| {
        let current = profile.get(key).unwrap_or(&Json::Null);
        let ignores_case = Field::from_name(key).is_some_and(Field::ignores_case);
        match (key.as_str(), sent) {
            ("verify_email", _) => true,
            ("user_metadata" | "app_metadata", Json::Object(keys)) => keys
                .iter()
                .all(|(name, value)| current.get(name).unwrap_or(&Json::Null) == value),
            (_, Json::String(text)) if ignores_case => current
                .as_str()
                .is_some_and(|current| equal_ignoring_case(current, text)),
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
    fn a_get_user_refusal_is_named_with_its_remedy_and_nothing_else_is() {
        let api = |status, message: &str| Auth0Error::Api {
            method: "PATCH".into(),
            endpoint: "/api/v2/users/{id}",
            status,
            code: Some("auth0_idp_error".into()),
            message: message.into(),
        };
        let email = Body::of(
            json!({"email": "new@x.io", "email_verified": false})
                .as_object()
                .cloned()
                .unwrap(),
        );
        let refusal =
            get_user_refusal(&email, &api(400, "The specified new email already exists")).unwrap();
        assert!(refusal.contains("Get User script"), "{refusal}");
        assert!(refusal.contains("marked as migrated"), "{refusal}");
        let username = Body::of(json!({"username": "pat"}).as_object().cloned().unwrap());
        assert!(
            get_user_refusal(
                &username,
                &api(400, "The specified new username already exists")
            )
            .unwrap()
            .contains("new username")
        );
        // Another 400, or the same words for an attribute the body did not change: as is.
        assert!(get_user_refusal(&email, &api(400, "Payload validation error")).is_none());
        assert!(
            get_user_refusal(
                &username,
                &api(400, "The specified new email already exists")
            )
            .is_none()
        );
        assert!(
            get_user_refusal(&email, &api(409, "The specified new email already exists")).is_none()
        );
    }

    #[test]
    fn a_body_is_in_effect_when_the_profile_shows_it() {
        let body = &json!({"email": "New@x.io", "email_verified": true, "user_metadata": {"lang": "de", "gone": null}});
        let applied = json!({"email": "new@x.io", "email_verified": true, "user_metadata": {"lang": "de", "keep": 1}});
        assert!(is_in_effect(body, &applied));
        let not_yet =
            json!({"email": "old@x.io", "email_verified": true, "user_metadata": {"lang": "de"}});
        assert!(!is_in_effect(body, &not_yet));
        let key_still_there = json!({"email": "new@x.io", "email_verified": true, "user_metadata": {"lang": "de", "gone": 1}});
        assert!(!is_in_effect(body, &key_still_there));
        assert!(is_in_effect(&json!({"blocked": false}), &json!({})));
        assert!(is_in_effect(&json!({"name": null}), &json!({"email": "a"})));
        let username = json!({"username": "PatK"});
        assert!(is_in_effect(&username, &json!({"username": "patk"})));
        let email = json!({"email": "a@x.io", "email_verified": false, "verify_email": false});
        assert!(is_in_effect(
            &email,
            &json!({"email": "a@x.io", "email_verified": false})
        ));
        // A journal body that does not read back is not in effect.
        assert!(!is_in_effect(&Json::Null, &json!({"email": "a@x.io"})));
    }
}
