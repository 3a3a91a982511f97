//! Injected faults: latency and stalls, server errors, forced 429s, dropped connections,
//! revoked tokens and credentials, export jobs that fail or never complete, and malformed
//! answers (HTML pages, wrong JSON shapes, missing headers).
//!
//! Server errors are decided *before* the request reaches its handler, so a 5xx never applies
//! a PATCH. Drops are decided *after* the handler ran: the client sees a broken connection
//! although the change was applied, which is the ambiguous outcome a journaling client must
//! survive (a retried PATCH is idempotent).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream;

use super::reply::ApiError;

/// Faults injected into the simulator's answers; change them at any time with
/// [`Simulator::set_faults`](super::Simulator::set_faults). `/oauth/token` is only affected by
/// `revoke_credentials` and `bad_answer`.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fraction (0.0–1.0) of Management API requests answered 500, 502 or 503. The 500 has
    /// Auth0's JSON body; 502 and 503 have an HTML body and no rate-limit headers, like a load
    /// balancer in front of Auth0.
    pub server_error_rate: f64,
    /// Added to every Management API request and download before it is answered.
    pub latency: Duration,
    /// Fraction (0.0–1.0) of Management API requests and downloads whose connection is dropped:
    /// either before any byte of the answer or in the middle of its body.
    pub drop_rate: f64,
    /// The next N Management API requests answer 429 whatever their bucket holds (with
    /// `Retry-After: 1`); the count goes down as they are answered.
    pub forced_429: u32,
    /// A hung server: requests (Management API and downloads) wait this long before answering,
    /// on top of `latency`. Which requests: see `stall_count`.
    pub stall: Duration,
    /// `None`: every request stalls for `stall`. `Some(n)`: only the next n requests do; the
    /// count goes down as they arrive.
    pub stall_count: Option<u32>,
    /// After this many more Management API requests, every token issued so far is revoked (the
    /// request that brings the count to zero already answers 401 `Invalid token`), as when an
    /// administrator revokes the application's grants. Tokens issued later work again.
    pub revoke_tokens_after: Option<u32>,
    /// The client's credentials are revoked: `/oauth/token` answers 401 `access_denied`. With
    /// `revoke_tokens_after` it happens at the same moment as the token revocation, otherwise
    /// at once.
    pub revoke_credentials: bool,
    /// What users-export jobs created from now on do.
    pub export_jobs: JobFault,
    /// Every answer of one endpoint is replaced or damaged.
    pub bad_answer: Option<BadAnswer>,
}

/// How users-export jobs end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JobFault {
    /// `pending` → `processing` → `completed` (the default).
    #[default]
    Complete,
    /// `pending` → `processing` → `failed`, with a `summary` saying why.
    Fail,
    /// `pending` → `processing` forever.
    NeverComplete,
}

/// A malformed answer for every request to `endpoint`, a statistics key such as
/// `"GET /api/v2/connections"`, `"GET /api/v2/jobs/{id}"`, `"POST /oauth/token"` or
/// `"GET /download/{job}"`. The request is handled first (a PATCH is applied), then its answer
/// is replaced or damaged.
#[derive(Clone, Debug)]
pub struct BadAnswer {
    pub endpoint: String,
    pub kind: BadAnswerKind,
}

#[derive(Clone, Debug)]
pub enum BadAnswerKind {
    /// An HTML page with this status and `text/html`, without rate-limit headers: a captive
    /// portal, a web application firewall or a wrong `base_url`.
    Html(u16),
    /// This JSON body, status 200, `application/json`, instead of the real answer (its
    /// rate-limit headers are kept).
    Json(serde_json::Value),
    /// The real answer without its `x-ratelimit-*` headers.
    NoRateLimitHeaders,
    /// The real answer without its `Content-Type` header.
    NoContentType,
}

impl BadAnswer {
    pub fn new(endpoint: &str, kind: BadAnswerKind) -> BadAnswer {
        BadAnswer {
            endpoint: endpoint.to_owned(),
            kind,
        }
    }
}

/// Whether an event of probability `rate` happens this time.
pub(crate) fn roll(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

/// Waits for the configured latency, and for the stall when this request is to stall
/// (`stalls`, from [`Shared::take_stall`](super::Shared::take_stall)).
pub(crate) async fn delay(faults: &Faults, stalls: bool) {
    let mut wait = faults.latency;
    if stalls {
        wait += faults.stall;
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// `response` damaged as `kind` says.
pub(crate) fn bad_answer(kind: &BadAnswerKind, response: Response) -> Response {
    match kind {
        BadAnswerKind::Html(status) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let html = "<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head>\n\
                        <body><h1>Please sign in</h1><p>This network requires a login.</p></body></html>\n";
            let mut page = (status, html).into_response();
            page.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            page
        }
        BadAnswerKind::Json(body) => {
            let mut replaced = (StatusCode::OK, axum::Json(body.clone())).into_response();
            for name in [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
            ] {
                if let Some(value) = response.headers().get(name) {
                    replaced.headers_mut().insert(name, value.clone());
                }
            }
            replaced
        }
        BadAnswerKind::NoRateLimitHeaders => {
            let mut response = response;
            for name in [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
            ] {
                response.headers_mut().remove(name);
            }
            response
        }
        BadAnswerKind::NoContentType => {
            let mut response = response;
            response.headers_mut().remove(header::CONTENT_TYPE);
            response
        }
    }
}

/// A random 500 (Auth0-shaped), 502 or 503 (load-balancer HTML).
pub(crate) fn server_error() -> Response {
    let status = match fastrand::u8(0..3) {
        0 => return ApiError::internal().into_response(),
        1 => StatusCode::BAD_GATEWAY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let reason = status.canonical_reason().unwrap_or("Error");
    let html = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{code} {reason}</h1></center>\r\n</body>\r\n</html>\r\n",
        code = status.as_u16()
    );
    let mut response = (status, html).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// Rebuilds `response` so that its connection breaks: half the time before anything is
/// sent, otherwise after the head and the first half of the body.
pub(crate) async fn dropped(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    let keep = if fastrand::bool() { 0 } else { bytes.len() / 2 };
    Response::from_parts(parts, broken_body(bytes.slice(..keep)))
}

/// A body that sends `prefix` and then fails, which makes the server abort the connection.
pub(crate) fn broken_body(prefix: Bytes) -> Body {
    let sent_something = !prefix.is_empty();
    let fail = stream::once(async move {
        if sent_something {
            // Let the server flush what was sent before the connection breaks.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection dropped by the simulator's fault injection",
        ))
    });
    Body::from_stream(chunks(prefix).chain(fail))
}

/// `data` as a stream of 64 KiB chunks (cheap slices of one buffer).
pub(crate) fn chunks(
    data: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    const CHUNK: usize = 64 * 1024;
    let count = data.len().div_ceil(CHUNK);
    stream::iter((0..count).map(move |index| {
        let start = index * CHUNK;
        Ok(data.slice(start..(start + CHUNK).min(data.len())))
    }))
}
