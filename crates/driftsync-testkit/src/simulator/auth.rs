//! Access tokens: `POST /oauth/token` (client credentials grant) and the bearer check of every
//! Management API request.
//!
//! Tokens are random opaque strings rather than signed JWTs: clients must treat them as opaque
//! anyway, and an opaque token cannot be validated by accident without asking the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Form, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::limits::{Class, Take};
use super::reply::{ApiError, oauth_error, random_text, with_rate_headers};
use super::{Shared, lock};

/// Expired tokens are forgotten this long after expiry (then they answer "Invalid token").
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The scopes every token carries (they are not enforced).
const SCOPES: &str = "read:users update:users read:connections create:users_exports";

#[derive(Debug, Default)]
pub(crate) struct Tokens {
    expiry: HashMap<String, Instant>,
}

impl Tokens {
    pub fn issue(&mut self, lifetime: Duration) -> String {
        let now = Instant::now();
        self.expiry
            .retain(|_, expires| *expires + FORGET_AFTER > now);
        let token = random_text(48);
        self.expiry.insert(token.clone(), now + lifetime);
        token
    }

    /// `Err` carries the 401 message Auth0 uses.
    pub fn check(&self, token: &str) -> Result<(), &'static str> {
        match self.expiry.get(token) {
            None => Err("Invalid token"),
            Some(expires) if Instant::now() >= *expires => Err("Expired token"),
            Some(_) => Ok(()),
        }
    }

    pub fn issued(&self) -> Vec<String> {
        self.expiry.keys().cloned().collect()
    }

    pub fn revoke_all(&mut self) {
        self.expiry.clear();
    }
}

/// The bearer check of a Management API request.
pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::missing_authentication());
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|text| text.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError {
            // Auth0's answer to an Authorization header that is not `Bearer <token>`.
            status: StatusCode::BAD_REQUEST,
            message: "Bad HTTP authentication header format".into(),
            error_code: None,
            attributes: None,
        })?;
    lock(&shared.tokens)
        .check(token)
        .map_err(ApiError::unauthorized)
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    audience: Option<String>,
}

/// `POST /oauth/token`, form-urlencoded or JSON.
pub(crate) async fn token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.count("POST /oauth/token", |stats| stats.token_requests += 1);
    let rate = match lock(&shared.buckets).take(Class::Token) {
        Take::Granted(rate) => rate,
        Take::Empty(rate) => {
            shared.count_throttled(true);
            let response = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Global limit has been reached",
            );
            return with_rate_headers(response, rate);
        }
    };
    let response = match parse(request).await {
        Ok(body) => issue(&shared, body),
        Err(message) => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &message),
    };
    with_rate_headers(response, rate)
}

async fn parse(request: Request) -> Result<TokenRequest, String> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        Json::<TokenRequest>::from_request(request, &())
            .await
            .map(|Json(body)| body)
            .map_err(|rejection| rejection.body_text())
    } else {
        Form::<TokenRequest>::from_request(request, &())
            .await
            .map(|Form(body)| body)
            .map_err(|rejection| rejection.body_text())
    }
}

fn issue(shared: &Shared, body: TokenRequest) -> Response {
    let config = &shared.config;
    match body.grant_type.as_deref() {
        Some("client_credentials") => {}
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter: grant_type",
            );
        }
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            );
        }
    }
    if body.client_id.as_deref() != Some(config.client_id.as_str())
        || body.client_secret.as_deref() != Some(config.client_secret.as_str())
        || shared.credentials_revoked()
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    }
    let audience = format!("https://{}/api/v2/", config.domain);
    let requested = body.audience.unwrap_or_default();
    if requested != audience {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            &format!("Service not found: {requested}"),
        );
    }
    let token = lock(&shared.tokens).issue(config.token_lifetime);
    let mut response = Json(json!({
        "access_token": token,
        "expires_in": config.token_lifetime.as_secs(),
        "token_type": "Bearer",
        "scope": SCOPES,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_revoke() {
        let mut tokens = Tokens::default();
        let short = tokens.issue(Duration::ZERO);
        let long = tokens.issue(Duration::from_secs(60));
        assert_eq!(tokens.check(&short), Err("Expired token"));
        assert_eq!(tokens.check(&long), Ok(()));
        assert_eq!(tokens.check("nope"), Err("Invalid token"));
        tokens.revoke_all();
        assert_eq!(tokens.check(&long), Err("Invalid token"));
    }
}
