//! User export jobs (`POST /api/v2/jobs/users-exports`, `GET /api/v2/jobs/{id}`) and the
//! signed, expiring download links of their gzip NDJSON files (`GET /download/{job}`).
//!
//! A job is `pending` for `export_pending`, then `processing` for `export_processing`; then
//! the users of its connection are snapshotted, projected onto the requested fields and
//! gzipped once in a blocking task, and the job is `completed`. Every `GET /jobs/{id}` of a
//! completed job signs a fresh link (the newer documented behaviour). Downloads answer like
//! S3: XML errors, and `Range` requests for resuming.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::faults::{JobFault, broken_body, chunks, delay, roll};
use super::reply::{ApiError, now_rfc3339, random_text};
use super::{Shared, lock};

/// One requested export field: `name` is a profile path such as `email` or
/// `identities[0].connection`; the line uses `export_as` as its key when given.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldSpec {
    pub name: String,
    #[serde(default)]
    pub export_as: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    connection_id: Option<String>,
    format: Option<String>,
    fields: Option<Vec<FieldSpec>>,
    limit: Option<u64>,
}

#[derive(Debug, Clone)]
enum Status {
    Pending,
    Processing { until: Instant },
    Completed { data: Bytes },
    Failed { reason: String },
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    id: String,
    /// `(index, id, name)` of the exported connection; every connection when `None`.
    connection: Option<(usize, String, String)>,
    fields: Vec<FieldSpec>,
    limit: Option<u64>,
    created_at: String,
    status: Status,
}

impl Job {
    fn to_json(&self) -> Value {
        let mut job = json!({
            "type": "users_export",
            "status": match self.status {
                Status::Pending => "pending",
                Status::Processing { .. } => "processing",
                Status::Completed { .. } => "completed",
                Status::Failed { .. } => "failed",
            },
            "format": "json",
            "fields": self.fields.iter().map(|field| match &field.export_as {
                Some(alias) => json!({"name": field.name, "export_as": alias}),
                None => json!({"name": field.name}),
            }).collect::<Vec<_>>(),
            "created_at": self.created_at,
            "id": self.id,
        });
        if let Some((_, id, name)) = &self.connection {
            job["connection_id"] = json!(id);
            job["connection"] = json!(name);
        }
        if let Some(limit) = self.limit {
            job["limit"] = json!(limit);
        }
        if let Status::Processing { until } = self.status {
            let left = until.saturating_duration_since(Instant::now());
            job["time_left_seconds"] = json!(left.as_secs_f64().ceil() as u64);
            job["percentage_done"] = json!(0);
        }
        if let Status::Failed { reason } = &self.status {
            job["summary"] = json!({ "failed": 1, "reason": reason });
        }
        job
    }
}

/// Signs download links with a per-simulator random key. SipHash under a random key is not a
/// cryptographic MAC, but it is more than enough to tell a link this simulator issued from a
/// tampered or made-up one.
#[derive(Debug, Default)]
pub(crate) struct Signer {
    keys: [RandomState; 2],
}

impl Signer {
    fn sign(&self, job: &str, expires_ms: u64) -> String {
        let [first, second] = &self.keys;
        format!(
            "{:016x}{:016x}",
            first.hash_one((job, expires_ms)),
            second.hash_one((expires_ms, job))
        )
    }

    fn verify(&self, job: &str, expires_ms: u64, signature: &str) -> bool {
        self.sign(job, expires_ms) == signature
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// `POST /api/v2/jobs/users-exports`.
pub(crate) async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match create_job(&shared, &body) {
        Ok(job) => (StatusCode::CREATED, Json(job)).into_response(),
        Err(error) => error.into_response(),
    }
}

fn create_job(shared: &Arc<Shared>, body: &[u8]) -> Result<Value, ApiError> {
    let invalid = |message: String| ApiError::bad_request(message, "invalid_body");
    let request: ExportRequest = serde_json::from_slice(body)
        .map_err(|error| invalid(format!("Payload validation error: {error}")))?;
    match request.format.as_deref() {
        Some("json") => {}
        // Auth0's default format is CSV, which driftsync never asks for.
        None | Some("csv") => {
            return Err(invalid(
                "The simulator does not support format \"csv\" (Auth0's default); \
                 send \"format\": \"json\""
                    .into(),
            ));
        }
        Some(other) => {
            return Err(invalid(format!(
                "Payload validation error: 'No enum match for: \"{other}\"' on property format."
            )));
        }
    }
    let fields = request.fields.unwrap_or_default();
    if fields.iter().any(|field| field.name.is_empty()) {
        return Err(invalid(
            "Payload validation error: 'String is too short (0 chars), minimum 1' on property \
             fields[].name."
                .into(),
        ));
    }
    let connection = match request.connection_id {
        None => None,
        Some(id) => {
            let tenant = lock(&shared.tenant);
            let index = tenant.connection_by_id(&id).ok_or_else(|| {
                ApiError::not_found("The connection does not exist.", "inexistent_connection")
            })?;
            let name = tenant
                .connection(index)
                .map(|c| c.name.clone())
                .unwrap_or_default();
            Some((index, id, name))
        }
    };
    let job = Job {
        id: format!("job_{}", random_text(16)),
        connection,
        fields,
        limit: request.limit,
        created_at: now_rfc3339(),
        status: Status::Pending,
    };
    let answer = job.to_json();
    let id = job.id.clone();
    lock(&shared.jobs).insert(id.clone(), job);
    // Runs on the simulator's runtime, which cancels it when the simulator stops.
    // The fault is decided now: faults changed later apply to later jobs.
    let fault = lock(&shared.faults).export_jobs;
    tokio::spawn(run(Arc::clone(shared), id, fault));
    Ok(answer)
}

/// Moves a job through its states and builds its file.
async fn run(shared: Arc<Shared>, id: String, fault: JobFault) {
    tokio::time::sleep(shared.config.export_pending).await;
    let until = Instant::now() + shared.config.export_processing;
    let job = {
        let mut jobs = lock(&shared.jobs);
        let Some(job) = jobs.get_mut(&id) else {
            return;
        };
        job.status = Status::Processing { until };
        job.clone()
    };
    tokio::time::sleep(shared.config.export_processing).await;
    match fault {
        JobFault::Complete => {}
        JobFault::Fail => {
            if let Some(job) = lock(&shared.jobs).get_mut(&id) {
                job.status = Status::Failed {
                    reason: "simulated failure (Faults::export_jobs)".into(),
                };
            }
            return;
        }
        // Stays `processing` (with `time_left_seconds` 0) until the simulator stops.
        JobFault::NeverComplete => return,
    }
    let users = lock(&shared.tenant).snapshot(job.connection.as_ref().map(|c| c.0), job.limit);
    let fields = job.fields;
    let built = tokio::task::spawn_blocking(move || build(&users, &fields)).await;
    let status = match built {
        Ok(Ok(data)) => Status::Completed { data },
        Ok(Err(error)) => Status::Failed {
            reason: error.to_string(),
        },
        Err(error) => Status::Failed {
            reason: error.to_string(),
        },
    };
    if let Some(job) = lock(&shared.jobs).get_mut(&id) {
        job.status = status;
    }
}

/// The gzip NDJSON file: one line per user with only the requested fields, in the requested
/// order (every attribute when none were requested).
fn build(users: &[Arc<str>], fields: &[FieldSpec]) -> std::io::Result<Bytes> {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut line = Vec::with_capacity(4096);
    for user in users {
        line.clear();
        if fields.is_empty() {
            line.extend_from_slice(user.as_bytes());
        } else {
            write_line(&mut line, user, fields)?;
        }
        line.push(b'\n');
        gzip.write_all(&line)?;
    }
    Ok(Bytes::from(gzip.finish()?))
}

/// Writes the requested fields of one stored profile as a JSON object.
fn write_line(line: &mut Vec<u8>, user: &str, fields: &[FieldSpec]) -> std::io::Result<()> {
    // Top-level attributes as raw JSON borrowed from the stored profile: attributes copied
    // whole (most of them) are never parsed into a tree, which keeps a million-user export
    // to seconds.
    let Ok(top) = serde_json::from_str::<HashMap<&str, &RawValue>>(user) else {
        // A key with escapes cannot be borrowed: project a parsed tree instead.
        let profile: Value = serde_json::from_str(user)?;
        serde_json::to_writer(&mut *line, &project(&profile, fields))?;
        return Ok(());
    };
    line.push(b'{');
    let mut first = true;
    for field in fields {
        let (head, rest) = split_path(&field.name);
        let Some(raw) = top.get(head) else {
            continue;
        };
        let nested;
        let value = if rest.is_empty() {
            raw.get()
        } else {
            let parsed: Value = serde_json::from_str(raw.get())?;
            match resolve(&parsed, rest) {
                Some(value) => {
                    nested = value.to_string();
                    nested.as_str()
                }
                None => continue,
            }
        };
        if !first {
            line.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut *line, field.export_as.as_ref().unwrap_or(&field.name))?;
        line.push(b':');
        line.extend_from_slice(value.as_bytes());
    }
    line.push(b'}');
    Ok(())
}

/// `identities[0].connection` → (`identities`, `[0].connection`);
/// `app_metadata.migrated` → (`app_metadata`, `migrated`).
fn split_path(path: &str) -> (&str, &str) {
    match path.find(['.', '[']) {
        Some(at) if path.as_bytes()[at] == b'.' => (&path[..at], &path[at + 1..]),
        Some(at) => (&path[..at], &path[at..]),
        None => (path, ""),
    }
}

/// The requested fields of a parsed profile.
fn project(profile: &Value, fields: &[FieldSpec]) -> Map<String, Value> {
    let mut line = Map::new();
    for field in fields {
        if let Some(value) = resolve(profile, &field.name) {
            let key = field.export_as.as_ref().unwrap_or(&field.name);
            line.insert(key.clone(), value.clone());
        }
    }
    line
}

/// Follows a path like `identities[0].connection` or `app_metadata.migrated`.
fn resolve<'a>(profile: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = profile;
    for segment in path.split('.') {
        let (key, mut indexes) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            current = current.get(key)?;
        }
        while let Some(rest) = indexes.strip_prefix('[') {
            let (index, after) = rest.split_once(']')?;
            current = current.get(index.parse::<usize>().ok()?)?;
            indexes = after;
        }
    }
    Some(current)
}

/// `GET /api/v2/jobs/{id}`.
pub(crate) async fn get(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if !id.starts_with("job_") {
        return ApiError::bad_request(
            format!(
                "Path validation error: 'String does not match pattern ^job_[a-zA-Z0-9]{{16}}$' \
                 on property id ({id:?})."
            ),
            "invalid_uri",
        )
        .into_response();
    }
    let Some(mut answer) = lock(&shared.jobs).get(&id).map(|job| {
        let completed = matches!(job.status, Status::Completed { .. });
        (job.to_json(), completed)
    }) else {
        return ApiError::not_found("The job does not exist.", "inexistent_job").into_response();
    };
    if answer.1 {
        let ttl = shared.config.download_link_ttl.as_millis() as u64;
        let expires = now_ms() + ttl;
        let signature = shared.signer.sign(&id, expires);
        answer.0["location"] = json!(format!(
            "{}/download/{id}?expires={expires}&sig={signature}",
            shared.base_url
        ));
    }
    Json(answer.0).into_response()
}

/// `GET /download/{job}?expires=&sig=`: no authorization header, no rate limit.
pub(crate) async fn download(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    shared.count("GET /download/{job}", |stats| stats.downloads += 1);
    let faults = lock(&shared.faults).clone();
    delay(&faults, shared.take_stall()).await;
    let expires = query
        .get("expires")
        .and_then(|text| text.parse::<u64>().ok());
    let signature = query.get("sig").map(String::as_str).unwrap_or_default();
    let Some(expires) = expires.filter(|&at| shared.signer.verify(&id, at, signature)) else {
        return s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "The request signature we calculated does not match the signature you provided.",
        );
    };
    if now_ms() > expires {
        return s3_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    let data = match lock(&shared.jobs).get(&id).map(|job| job.status.clone()) {
        Some(Status::Completed { data }) => data,
        _ => {
            return s3_error(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
            );
        }
    };
    let total = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map_or(Range::Full, |value| parse_range(value, total));
    let (status, body, content_range) = match range {
        Range::Full => (StatusCode::OK, data, None),
        Range::Partial(start, end) => (
            StatusCode::PARTIAL_CONTENT,
            data.slice(start as usize..=end as usize),
            Some(format!("bytes {start}-{end}/{total}")),
        ),
        Range::Unsatisfiable => {
            let mut response = s3_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
            );
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{total}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };
    let length = body.len();
    let body = if roll(faults.drop_rate) {
        broken_body(body.slice(..length / 2))
    } else {
        Body::from_stream(chunks(body))
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some(value) = content_range.and_then(|text| HeaderValue::from_str(&text).ok()) {
        headers.insert(header::CONTENT_RANGE, value);
    }
    response
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    response
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    Full,
    /// Inclusive byte positions.
    Partial(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (`N-`, `N-M` or `-SUFFIX`); anything else is ignored, as HTTP allows.
fn parse_range(value: &str, total: u64) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Range::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(start), Ok(end)) if end >= start => (start, end.min(total.saturating_sub(1))),
        (Ok(start), Err(_)) if last.is_empty() => (start, total.saturating_sub(1)),
        (Err(_), Ok(suffix)) if first.is_empty() && suffix > 0 => {
            (total.saturating_sub(suffix), total.saturating_sub(1))
        }
        _ => return Range::Full,
    };
    if start >= total {
        Range::Unsatisfiable
    } else {
        Range::Partial(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_uses_paths_and_export_as() {
        let profile = json!({
            "user_id": "auth0|1", "email": "a@b.c",
            "identities": [{"connection": "legacy", "user_id": "1"}],
            "app_metadata": {"migrated": true},
        });
        let fields = [
            FieldSpec {
                name: "user_id".into(),
                export_as: None,
            },
            FieldSpec {
                name: "identities[0].connection".into(),
                export_as: Some("connection".into()),
            },
            FieldSpec {
                name: "app_metadata.migrated".into(),
                export_as: None,
            },
            FieldSpec {
                name: "blocked".into(),
                export_as: None,
            },
        ];
        assert_eq!(
            Value::Object(project(&profile, &fields)),
            json!({"user_id": "auth0|1", "connection": "legacy", "app_metadata.migrated": true})
        );
        assert_eq!(resolve(&profile, "identities[1].connection"), None);

        let mut line = Vec::new();
        write_line(&mut line, &profile.to_string(), &fields).unwrap();
        let written: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(written, Value::Object(project(&profile, &fields)));
        let escaped = r#"{"user_id":"auth0|1","we\u0069rd":1}"#;
        line.clear();
        write_line(&mut line, escaped, &fields[..1]).unwrap();
        assert_eq!(line, br#"{"user_id":"auth0|1"}"#);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=10-", 100), Range::Partial(10, 99));
        assert_eq!(parse_range("bytes=10-19", 100), Range::Partial(10, 19));
        assert_eq!(parse_range("bytes=90-200", 100), Range::Partial(90, 99));
        assert_eq!(parse_range("bytes=-5", 100), Range::Partial(95, 99));
        assert_eq!(parse_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Range::Full);
        assert_eq!(parse_range("items=0-1", 100), Range::Full);
    }

    #[test]
    fn signatures_bind_job_and_expiry() {
        let signer = Signer::default();
        let signature = signer.sign("job_a", 1_000);
        assert!(signer.verify("job_a", 1_000, &signature));
        assert!(!signer.verify("job_a", 1_001, &signature));
        assert!(!signer.verify("job_b", 1_000, &signature));
        assert!(!Signer::default().verify("job_a", 1_000, &signature));
    }
}
