//! Injected faults: latency and stalls, server errors, forced 429s and dropped connections.
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
/// [`Simulator::set_faults`](super::Simulator::set_faults). `/oauth/token` is never faulted.
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
    /// Like `latency`, for simulating a hung server: requests wait this long before answering.
    pub stall: Duration,
}

/// Whether an event of probability `rate` happens this time.
pub(crate) fn roll(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

/// Waits for the configured latency and stall.
pub(crate) async fn delay(faults: &Faults) {
    let wait = faults.latency + faults.stall;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
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
