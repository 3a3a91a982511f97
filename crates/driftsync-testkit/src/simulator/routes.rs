//! The HTTP surface: the router, the gate every Management API request passes (statistics,
//! faults, rate limit, bearer token, rate-limit headers), and the user and connection
//! handlers. Export jobs and downloads live in `export.rs`, tokens in `auth.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::limits::{Class, Take};
use super::reply::{ApiError, now_rfc3339, with_rate_headers};
use super::{Shared, auth, export, faults, get_user, lock, patch, search};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/token", post(auth::token))
        .route("/download/{job}", get(export::download))
        .route("/api/v2/connections", get(list_connections))
        .route("/api/v2/connections/{id}", get(get_connection))
        .route("/api/v2/users", get(search_users))
        .route("/api/v2/users-by-email", get(users_by_email))
        .route(
            "/api/v2/users/{id}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route("/api/v2/jobs/users-exports", post(export::create))
        .route("/api/v2/jobs/{id}", get(export::get))
        // Auth0 answers 404, not 405, for a method a path does not have.
        .method_not_allowed_fallback(no_route)
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), gate))
        // Outermost: damages answers after the gate added its headers.
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), damage))
        .with_state(shared)
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

/// The bucket class and the statistics key of a Management API request.
fn classify(method: &Method, path: &str) -> (Class, String) {
    let rest = path.strip_prefix("/api/v2/").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    let (class, template) = match segments.as_slice() {
        ["users"] if method == Method::GET => (Class::UsersRead, "users"),
        ["users"] => (Class::UsersWrite, "users"),
        ["users-by-email"] => (Class::UsersRead, "users-by-email"),
        ["users", _] if method == Method::GET => (Class::UsersRead, "users/{id}"),
        ["users", _] => (Class::UsersWrite, "users/{id}"),
        ["jobs", "users-exports"] => (Class::Jobs, "jobs/users-exports"),
        ["jobs", _] => (Class::Jobs, "jobs/{id}"),
        ["jobs", ..] => (Class::Jobs, "jobs/…"),
        ["connections"] => (Class::Other, "connections"),
        ["connections", _] => (Class::Other, "connections/{id}"),
        _ => (Class::Other, "(unknown)"),
    };
    (class, format!("{method} /api/v2/{template}"))
}

/// The statistics key of any request: Management API endpoints as [`classify`] names them,
/// `POST /oauth/token` and `GET /download/{job}`.
fn endpoint_key(method: &Method, path: &str) -> String {
    if path.starts_with("/api/v2/") {
        classify(method, path).1
    } else if path.starts_with("/download/") {
        format!("{method} /download/{{job}}")
    } else {
        format!("{method} {path}")
    }
}

/// [`Faults::bad_answer`](super::Faults::bad_answer): damages the answers of one endpoint.
async fn damage(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let bad = lock(&shared.faults).bad_answer.clone();
    let Some(bad) =
        bad.filter(|bad| bad.endpoint == endpoint_key(request.method(), request.uri().path()))
    else {
        return next.run(request).await;
    };
    let response = next.run(request).await;
    faults::bad_answer(&bad.kind, response)
}

/// Statistics, faults, rate limit and authorization for `/api/v2/…`; other paths pass through.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/api/v2/") {
        return next.run(request).await;
    }
    let (class, endpoint) = classify(request.method(), request.uri().path());
    shared.count(&endpoint, |stats| stats.requests += 1);
    let faults = lock(&shared.faults).clone();
    faults::delay(&faults, shared.take_stall()).await;
    shared.count_towards_revocation();

    if shared.take_forced_429() {
        shared.count_throttled(false);
        let rate = lock(&shared.buckets).peek(class);
        let mut response = with_rate_headers(ApiError::too_many_requests().into_response(), rate);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let taken = lock(&shared.buckets).take(class);
    let rate = match taken {
        Take::Granted(rate) => rate,
        Take::Empty(rate) => {
            shared.count_throttled(true);
            return with_rate_headers(ApiError::too_many_requests().into_response(), rate);
        }
    };
    if faults::roll(faults.server_error_rate) {
        let response = faults::server_error();
        // Only Auth0 itself (the 500) sets rate-limit headers; the proxy errors do not.
        return if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
            with_rate_headers(response, rate)
        } else {
            response
        };
    }
    let response = match auth::authorize(&shared, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    };
    let response = with_rate_headers(response, rate);
    if faults::roll(faults.drop_rate) {
        faults::dropped(response).await
    } else {
        response
    }
}

fn user_not_found() -> ApiError {
    ApiError::not_found("The user does not exist.", "inexistent_user")
}

async fn list_connections(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let tenant = lock(&shared.tenant);
    let connections = tenant
        .connections()
        .iter()
        .filter(|c| query.get("name").is_none_or(|name| &c.name == name))
        .filter(|_| query.get("strategy").is_none_or(|s| s == "auth0"))
        .map(|c| c.to_json())
        .collect();
    Json(Value::Array(connections))
}

async fn get_connection(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = lock(&shared.tenant);
    tenant
        .connection_by_id(&id)
        .and_then(|index| tenant.connection(index))
        .map(|c| Json(c.to_json()))
        .ok_or_else(|| {
            ApiError::not_found("The connection does not exist.", "inexistent_connection")
        })
}

async fn search_users(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let request = search::parse(&query)?;
    Ok(Json(search::run(&lock(&shared.tenant), &request)))
}

async fn users_by_email(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let Some(email) = query.get("email") else {
        return Err(ApiError::invalid_query("Missing required property: email"));
    };
    let request = search::SearchRequest {
        filter: search::Filter {
            email: Some(email.clone()),
            ..search::Filter::default()
        },
        page: 0,
        per_page: search::MAX_RESULTS,
        include_totals: false,
    };
    Ok(Json(search::run(&lock(&shared.tenant), &request)))
}

async fn get_user(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = lock(&shared.tenant);
    let profile = tenant.profile(&id).map(|(profile, _)| profile);
    drop(tenant);
    profile
        .map(|profile| Json(Value::Object(profile)))
        .ok_or_else(user_not_found)
}

async fn patch_user(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    shared.update_stats(|stats| stats.patches += 1);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let result = apply_patch(&shared, &id, parsed.as_ref()).await;
    shared.record_patch(super::PatchRecord {
        user_id: id,
        body: parsed.unwrap_or(Value::Null),
        applied: result.is_ok(),
    });
    result
}

fn patch_refused(error: patch::PatchError) -> ApiError {
    ApiError::bad_request(error.to_string(), error.error_code())
}

async fn apply_patch(
    shared: &Shared,
    id: &str,
    body: Option<&Value>,
) -> Result<Json<Value>, ApiError> {
    let body = body.ok_or_else(|| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: "Invalid request payload JSON format".into(),
        error_code: None,
        attributes: None,
    })?;
    let now = now_rfc3339();
    // First the body and the user's rules, on a copy; then, for an email or username change of
    // an import-mode connection, the Get User script (no lock held while it runs).
    let lookups = {
        let tenant = lock(&shared.tenant);
        let Some((profile, connection)) = tenant.profile(id) else {
            drop(tenant);
            // The body is validated before the user is looked up.
            patch::validate_body(body).map_err(patch_refused)?;
            return Err(user_not_found());
        };
        let script = connection.get_user().cloned();
        patch::apply(&mut profile.clone(), connection.user_state(), body, &now)
            .map_err(patch_refused)?;
        script.map(|script| (script, patch::changed_identifiers(&profile, body)))
    };
    if let Some((script, changed)) = lookups {
        for (attribute, value) in changed {
            shared.update_stats(|stats| stats.get_user_runs += 1);
            if get_user::finds(&script, &value).await? {
                shared.update_stats(|stats| stats.get_user_refusals += 1);
                return Err(get_user::refusal(attribute));
            }
        }
    }
    let mut tenant = lock(&shared.tenant);
    let Some((mut profile, connection)) = tenant.profile(id) else {
        return Err(user_not_found());
    };
    let state = connection.user_state();
    let applied = patch::apply(&mut profile, state, body, &now).map_err(patch_refused)?;
    tenant.replace(id, &profile);
    drop(tenant);
    shared.update_stats(|stats| {
        stats.patches_applied += 1;
        stats.verification_emails += u64::from(applied.verification_email);
    });
    Ok(Json(Value::Object(profile)))
}

async fn delete_user(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> StatusCode {
    // On a custom database connection this would run the legacy Delete script.
    tracing::warn!(user_id = %id, "simulator: DELETE /api/v2/users/{{id}} was called");
    shared.update_stats(|stats| stats.deletes += 1);
    lock(&shared.tenant).remove(&id);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let cases = [
            (
                Method::GET,
                "/api/v2/users",
                Class::UsersRead,
                "GET /api/v2/users",
            ),
            (
                Method::GET,
                "/api/v2/users/auth0%7C1",
                Class::UsersRead,
                "GET /api/v2/users/{id}",
            ),
            (
                Method::PATCH,
                "/api/v2/users/auth0%7C1",
                Class::UsersWrite,
                "PATCH /api/v2/users/{id}",
            ),
            (
                Method::GET,
                "/api/v2/jobs/job_x",
                Class::Jobs,
                "GET /api/v2/jobs/{id}",
            ),
            (
                Method::POST,
                "/api/v2/jobs/users-exports",
                Class::Jobs,
                "POST /api/v2/jobs/users-exports",
            ),
            (
                Method::GET,
                "/api/v2/connections",
                Class::Other,
                "GET /api/v2/connections",
            ),
            (
                Method::GET,
                "/api/v2/roles",
                Class::Other,
                "GET /api/v2/(unknown)",
            ),
        ];
        for (method, path, class, key) in cases {
            assert_eq!(classify(&method, path), (class, key.to_owned()), "{path}");
        }
    }
}
