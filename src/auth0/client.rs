//! The Management API client: a client-credentials token (cached, renewed before expiry and
//! once on 401), the rate limiter in front of every request, bounded retries with exponential
//! backoff and jitter for 5xx answers, timeouts and dropped connections, and Auth0's error body
//! turned into a typed error. The client secret is only ever placed in the token request body.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::limiter::{self, EndpointClass, RateLimiter};
use super::{Auth0Error, Settings};
use crate::metrics;

/// Retry bounds; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts for one request when answers are 5xx or the connection fails.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// 429 answers tolerated for one request before giving up.
    pub max_throttled: u32,
    /// Timeout of one HTTP exchange (connect to last byte of a Management API answer).
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(15),
            max_throttled: 100,
            timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The default policy with the configured request timeout.
    pub fn from_config(auth0: &crate::config::Auth0) -> RetryPolicy {
        RetryPolicy {
            timeout: auth0.request_timeout,
            ..RetryPolicy::default()
        }
    }

    /// Full jitter: a random wait up to the exponential bound, so that retries of many
    /// requests do not arrive together.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let bound = self
            .first_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        bound.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

struct Token {
    value: SecretString,
    renew_at: Instant,
}

/// Counters for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ClientStats {
    pub requests: u64,
    pub throttled: u64,
    pub throttled_wait: Duration,
    pub retries: u64,
    pub tokens_fetched: u64,
}

pub struct Auth0Client {
    http: reqwest::Client,
    settings: Settings,
    retry: RetryPolicy,
    token: Mutex<Option<Token>>,
    limiter: RateLimiter,
    stats: std::sync::Mutex<ClientStats>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Auth0's error body on the Management API, and the OAuth one on `/oauth/token`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

impl Auth0Client {
    pub fn new(settings: Settings, retry: RetryPolicy) -> Result<Auth0Client, Auth0Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("driftsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .https_only(false)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // A redirect must not take a token or profiles off https either.
                if attempt.url().scheme() == "https" || super::is_loopback(attempt.url()) {
                    reqwest::redirect::Policy::default().redirect(attempt)
                } else {
                    attempt.error("a redirect to plain http beyond loopback was refused")
                }
            }))
            .build()
            .map_err(|error| Auth0Error::Setup(error.to_string()))?;
        Ok(Auth0Client {
            http,
            settings,
            retry,
            token: Mutex::new(None),
            limiter: RateLimiter::new(),
            stats: std::sync::Mutex::new(ClientStats::default()),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    pub fn stats(&self) -> ClientStats {
        *self.stats_lock()
    }

    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// `{base}/api/v2/{segments…}`, each segment percent-encoded (user ids contain `|`).
    pub fn api_url(&self, segments: &[&str]) -> Result<Url, Auth0Error> {
        let mut url = Url::parse(&self.settings.base_url)
            .map_err(|error| Auth0Error::Setup(format!("auth0 base URL: {error}")))?;
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| Auth0Error::Setup("auth0 base URL cannot have a path".into()))?;
            path.pop_if_empty().extend(["api", "v2"]).extend(segments);
        }
        Ok(url)
    }

    /// Sends a Management API request and decodes a JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        class: EndpointClass,
        endpoint: &'static str,
        url: Url,
        body: Option<&serde_json::Value>,
    ) -> Result<T, Auth0Error> {
        let (_, bytes) = self
            .send(
                method.clone(),
                class,
                endpoint,
                url,
                body.map(RequestBody::Json),
            )
            .await?;
        decode(&method, endpoint, &bytes)
    }

    /// Sends a Management API request: waits for the rate limiter, retries what can be
    /// retried, renews the token once on 401, and returns the status and body of a 2xx answer
    /// (or 404, which callers often expect).
    pub async fn send(
        &self,
        method: Method,
        class: EndpointClass,
        endpoint: &'static str,
        url: Url,
        body: Option<RequestBody<'_>>,
    ) -> Result<(StatusCode, Bytes), Auth0Error> {
        let request = Request {
            method: &method,
            class,
            endpoint,
            url: url.as_str(),
            body,
            bearer: true,
        };
        self.exchange(request, |answer| {
            if answer.status.is_success() || answer.status == StatusCode::NOT_FOUND {
                check_answer(
                    &method,
                    endpoint,
                    answer.status,
                    answer.content_type.as_deref(),
                    answer.rate_headers,
                    &answer.bytes,
                )?;
                Ok((answer.status, answer.bytes))
            } else {
                Err(api_error(&method, endpoint, answer.status, &answer.bytes))
            }
        })
        .await
    }

    /// The one path every request to Auth0 takes (the Management API and `/oauth/token`): the
    /// rate limiter, the request, the metrics, 429s (waited out, up to `max_throttled`),
    /// transport errors and 5xx answers (retried with backoff, up to `attempts`), a refused
    /// certificate (never retried) and, with a bearer token, one renewal on 401. Any other
    /// answer goes to `accept`, whose verdict is final.
    async fn exchange<T>(
        &self,
        request: Request<'_>,
        accept: impl Fn(Answer) -> Result<T, Auth0Error>,
    ) -> Result<T, Auth0Error> {
        let Request {
            method,
            class,
            endpoint,
            url,
            body,
            bearer,
        } = request;
        let mut failures = 0u32;
        let mut throttled = 0u32;
        let mut renewed = false;
        loop {
            let token = if bearer {
                Some(self.token().await?)
            } else {
                None
            };
            let permit = self.limiter.acquire(class).await;
            if !permit.waited.is_zero() {
                self.stats_lock().throttled_wait += permit.waited;
                metrics::throttled(permit.waited);
            }
            let mut builder = self
                .http
                .request(method.clone(), url)
                .timeout(self.retry.timeout);
            if let Some(token) = &token {
                builder = builder.bearer_auth(token.expose_secret());
            }
            match body {
                Some(RequestBody::Json(body)) => builder = builder.json(body),
                Some(RequestBody::Text(text)) => {
                    builder = builder
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(text.to_owned());
                }
                None => {}
            }
            if class != EndpointClass::Token {
                self.stats_lock().requests += 1;
            }
            let failure = match builder.send().await {
                Err(error) => {
                    self.limiter.abandon(&permit);
                    metrics::api_request(endpoint, "error");
                    if let Some(detail) = certificate_problem(&error) {
                        return Err(Auth0Error::Certificate {
                            method: method.to_string(),
                            endpoint,
                            detail,
                        });
                    }
                    Failure::Transport(self.transport_detail(error))
                }
                Ok(response) => {
                    let status = response.status();
                    let info = limiter::rate_info(response.headers());
                    metrics::api_request(endpoint, status.as_str());
                    // The gauge is the Management API's bucket; the token endpoint's is apart.
                    if let Some(info) = info.filter(|_| class != EndpointClass::Token) {
                        metrics::rate_limit_remaining(info.remaining);
                    }
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = limiter::throttle_wait(response.headers(), info);
                        self.limiter.observe(&permit, info, Some(wait));
                        throttled += 1;
                        self.stats_lock().throttled += 1;
                        tracing::debug!(
                            endpoint,
                            wait_ms = wait.as_millis() as u64,
                            "Auth0 answered 429"
                        );
                        if throttled > self.retry.max_throttled {
                            return Err(Auth0Error::Throttled {
                                method: method.to_string(),
                                endpoint,
                                attempts: throttled,
                            });
                        }
                        continue;
                    }
                    self.limiter.observe(&permit, info, None);
                    let content_type = response
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
                    match response.bytes().await {
                        Err(error) => Failure::Transport(format!(
                            "the answer broke off: {}",
                            self.transport_detail(error)
                        )),
                        Ok(_) if status == StatusCode::UNAUTHORIZED && bearer && !renewed => {
                            renewed = true;
                            if let Some(token) = &token {
                                self.forget_token(token).await;
                            }
                            tracing::debug!(endpoint, "token refused (401): fetching a new one");
                            continue;
                        }
                        Ok(bytes) if status.is_server_error() => Failure::Server(status, bytes),
                        Ok(bytes) => {
                            return accept(Answer {
                                status,
                                rate_headers: info.is_some(),
                                content_type,
                                bytes,
                            });
                        }
                    }
                }
            };
            failures += 1;
            if failures >= self.retry.attempts {
                return Err(match failure {
                    Failure::Transport(detail) => Auth0Error::Transport {
                        method: method.to_string(),
                        endpoint,
                        attempts: failures,
                        detail,
                    },
                    Failure::Server(status, bytes) => api_error(method, endpoint, status, &bytes),
                });
            }
            let wait = self.retry.backoff(failures);
            self.stats_lock().retries += 1;
            tracing::debug!(endpoint, failures, wait_ms = wait.as_millis() as u64, reason = %failure, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// The cached token, fetched or renewed when missing or close to expiry.
    async fn token(&self) -> Result<SecretString, Auth0Error> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        // Boxed: fetching goes through `exchange`, which comes here for a bearer token.
        let fresh = Box::pin(self.fetch_token()).await?;
        let value = fresh.value.clone();
        *slot = Some(fresh);
        Ok(value)
    }

    async fn forget_token(&self, refused: &SecretString) {
        let mut slot = self.token.lock().await;
        if slot
            .as_ref()
            .is_some_and(|token| token.value.expose_secret() == refused.expose_secret())
        {
            *slot = None;
        }
    }

    async fn fetch_token(&self) -> Result<Token, Auth0Error> {
        let url = format!(
            "{}/oauth/token",
            self.settings.base_url.trim_end_matches('/')
        );
        let body = serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret.expose_secret(),
            "audience": self.settings.audience,
        });
        let started = Instant::now();
        let request = Request {
            method: &Method::POST,
            class: EndpointClass::Token,
            endpoint: "/oauth/token",
            url: &url,
            body: Some(RequestBody::Json(&body)),
            bearer: false,
        };
        let token = self
            .exchange(request, |answer| {
                if !answer.status.is_success() {
                    let parsed: ErrorBody =
                        serde_json::from_slice(&answer.bytes).unwrap_or_default();
                    return Err(Auth0Error::TokenRejected {
                        status: answer.status.as_u16(),
                        message: parsed
                            .error_description
                            .or(parsed.message)
                            .or(parsed.error)
                            .unwrap_or_else(|| snippet(&answer.bytes)),
                    });
                }
                // The token endpoint has its own limits and may omit rate-limit headers.
                check_answer(
                    &Method::POST,
                    "/oauth/token",
                    answer.status,
                    answer.content_type.as_deref(),
                    true,
                    &answer.bytes,
                )?;
                let answer: TokenAnswer = decode(&Method::POST, "/oauth/token", &answer.bytes)?;
                let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(86_400));
                // Renew a tenth of the lifetime early (at most a minute), so a request never
                // leaves with a token that expires on its way.
                let margin = (lifetime / 10).min(Duration::from_secs(60));
                Ok(Token {
                    value: SecretString::from(answer.access_token),
                    renew_at: started + lifetime - margin,
                })
            })
            .await?;
        self.stats_lock().tokens_fetched += 1;
        Ok(token)
    }

    /// GETs a download link (no token: the link is signed). `offset` resumes with a Range.
    pub async fn download(
        &self,
        url: &str,
        offset: u64,
    ) -> Result<reqwest::Response, DownloadFailure> {
        // The export holds every profile of the connection: it never crosses a network in
        // clear text, whatever link the job handed out.
        match reqwest::Url::parse(url) {
            Ok(link) if link.scheme() == "https" || super::is_loopback(&link) => {}
            Ok(link) => {
                return Err(DownloadFailure::Fatal(format!(
                    "the download link is {}:// to {}, not https; refusing to fetch profiles in clear text",
                    link.scheme(),
                    link.host_str().unwrap_or("no host")
                )));
            }
            Err(error) => {
                return Err(DownloadFailure::Fatal(format!(
                    "the download link is not a URL: {error}"
                )));
            }
        }
        let mut request = self.http.get(url);
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|error| match certificate_problem(&error) {
                Some(detail) => DownloadFailure::Fatal(format!(
                    "the download server's TLS certificate was refused: {detail}"
                )),
                None => DownloadFailure::Retry(error.without_url().to_string()),
            })?;
        let status = response.status();
        match status {
            StatusCode::OK if offset == 0 => Ok(response),
            StatusCode::PARTIAL_CONTENT if offset > 0 => Ok(response),
            StatusCode::OK => Err(DownloadFailure::Fatal(
                "the download server ignored the Range request, so the download cannot resume"
                    .into(),
            )),
            StatusCode::FORBIDDEN | StatusCode::GONE | StatusCode::BAD_REQUEST => {
                Err(DownloadFailure::Expired)
            }
            status if status.is_server_error() => Err(DownloadFailure::Retry(status.to_string())),
            status => Err(DownloadFailure::Fatal(format!(
                "the download answered {status}"
            ))),
        }
    }

    /// What went wrong with an exchange, saying so plainly for a timeout.
    fn transport_detail(&self, error: reqwest::Error) -> String {
        if error.is_timeout() {
            format!(
                "no complete answer within {} s (auth0.request_timeout_seconds)",
                self.retry.timeout.as_secs_f64()
            )
        } else {
            // reqwest's own text ("error sending request") and hyper's ("client error
            // (Connect)") hide the cause deeper in the chain: say every link of it.
            crate::error_text::chain(&error.without_url())
        }
    }

    fn stats_lock(&self) -> std::sync::MutexGuard<'_, ClientStats> {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The certificate error behind a failed exchange (see [`crate::tls::certificate_problem`]).
fn certificate_problem(error: &reqwest::Error) -> Option<String> {
    crate::tls::certificate_problem(error).map(|problem| problem.to_string())
}

/// Why a download attempt failed.
#[derive(Debug)]
pub enum DownloadFailure {
    /// The signed link expired: get a fresh one.
    Expired,
    /// Worth another try after a backoff.
    Retry(String),
    Fatal(String),
}

/// One request to send through [`Auth0Client::exchange`].
struct Request<'a> {
    method: &'a Method,
    class: EndpointClass,
    /// The endpoint's template, for metrics and messages.
    endpoint: &'static str,
    url: &'a str,
    body: Option<RequestBody<'a>>,
    /// Whether it carries the Management API token (renewed once on a 401).
    bearer: bool,
}

/// A request's JSON body: a tree, or JSON text sent as it is (a planned PATCH body).
#[derive(Debug, Clone, Copy)]
pub enum RequestBody<'a> {
    Json(&'a serde_json::Value),
    Text(&'a str),
}

/// An answer `exchange` does not handle itself (not a 429, not a 5xx, not the 401 it renews
/// the token for).
struct Answer {
    status: StatusCode,
    rate_headers: bool,
    content_type: Option<String>,
    bytes: Bytes,
}

enum Failure {
    Transport(String),
    Server(StatusCode, Bytes),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transport(detail) => f.write_str(detail),
            Failure::Server(status, _) => write!(f, "{status}"),
        }
    }
}

/// A 2xx (or 404) answer must be Auth0's: JSON, and on the Management API with the rate-limit
/// headers every Auth0 answer carries. Anything else comes from something in between (a
/// captive portal, a proxy, a wrong `auth0.base_url`) and must not be taken for data.
fn check_answer(
    method: &Method,
    endpoint: &'static str,
    status: StatusCode,
    content_type: Option<&str>,
    has_rate_headers: bool,
    bytes: &[u8],
) -> Result<(), Auth0Error> {
    let bad = |detail: String| Auth0Error::BadAnswer {
        method: method.to_string(),
        endpoint,
        detail,
    };
    if !bytes.is_empty() {
        let json = content_type.is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(bad(format!(
                "{status} with Content-Type {}, not application/json; the answer starts with: {}",
                content_type.map_or_else(|| "(none)".to_owned(), |value| format!("{value:?}")),
                snippet(bytes)
            )));
        }
    }
    if !has_rate_headers {
        return Err(bad(format!(
            "{status} without the x-ratelimit-limit/-remaining/-reset headers Auth0 always sends \
             (without them requests cannot be paced); is auth0.base_url the Management API, \
             or does a proxy strip them?"
        )));
    }
    Ok(())
}

pub(super) fn decode<T: DeserializeOwned>(
    method: &Method,
    endpoint: &'static str,
    bytes: &[u8],
) -> Result<T, Auth0Error> {
    serde_json::from_slice(bytes).map_err(|error| Auth0Error::BadAnswer {
        method: method.to_string(),
        endpoint,
        detail: format!("{error}; the answer starts with: {}", snippet(bytes)),
    })
}

fn api_error(
    method: &Method,
    endpoint: &'static str,
    status: StatusCode,
    bytes: &[u8],
) -> Auth0Error {
    let parsed: Option<ErrorBody> = serde_json::from_slice(bytes).ok();
    let (code, message) = match parsed {
        Some(body) => (
            body.error_code.or(body.error),
            body.message
                .or(body.error_description)
                .unwrap_or_else(|| snippet(bytes)),
        ),
        None => (None, format!("not an Auth0 error body: {}", snippet(bytes))),
    };
    Auth0Error::Api {
        method: method.to_string(),
        endpoint,
        status: status.as_u16(),
        code,
        message,
    }
}

/// The start of a body, on one line, for error messages.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "(empty)".into()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_plain_http_download_link_beyond_loopback_is_refused_unsent() {
        let settings = Settings {
            base_url: "https://tenant.example".into(),
            audience: "https://tenant.example/api/v2/".into(),
            client_id: "id".into(),
            client_secret: SecretString::from("secret"),
        };
        let client = Auth0Client::new(settings, RetryPolicy::default()).unwrap();
        // 192.0.2.1 is TEST-NET-1: nothing answers there, so only a refusal before any
        // connection can come back as Fatal with this text.
        match client.download("http://192.0.2.1/export.json.gz", 0).await {
            Err(DownloadFailure::Fatal(detail)) => {
                assert!(detail.contains("not https"), "{detail}")
            }
            other => panic!("{:?}", other.map(|response| response.status())),
        }
    }
}
