//! Auth0's side through a users-export job: creates the job with the fields the comparison
//! needs, polls it with backoff until it completes (bounded), and streams the gzip file.
//!
//! The download is a byte stream that never holds the file: when the ~60 s signed link has
//! expired it asks `GET /api/v2/jobs/{id}` for a fresh one, and when the connection drops or
//! stalls it resumes from the last byte received with an HTTP Range request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::client::DownloadFailure;
use super::{Auth0Client, Auth0Error, ExportField, Job};
use crate::model::profile::Field;
use crate::model::profile::MigratedRule;

#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    pub first_poll: Duration,
    pub max_poll: Duration,
    /// How long the job may take before the run gives up.
    pub timeout: Duration,
    /// A download that delivers no byte for this long is resumed.
    pub stall_timeout: Duration,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions {
            first_poll: Duration::from_millis(500),
            max_poll: Duration::from_secs(10),
            timeout: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

impl ExportOptions {
    /// The default options with the configured maximum wait for the job.
    pub fn from_config(cache: &crate::config::Cache) -> ExportOptions {
        ExportOptions {
            timeout: cache.export_timeout,
            ..ExportOptions::default()
        }
    }
}

/// The export fields for a run that reads `attributes` (see [`crate::model::equality::attributes_read`]):
/// the identity, the migration moment, the connection, those attributes, and `app_metadata`
/// when a marker there decides migration.
pub fn fields_for(attributes: &[Field], migrated: &MigratedRule) -> Vec<ExportField> {
    let mut fields = vec![
        ExportField {
            name: "user_id",
            export_as: None,
        },
        ExportField {
            name: "created_at",
            export_as: None,
        },
        ExportField {
            name: "identities[0].connection",
            export_as: Some("connection"),
        },
    ];
    let mut attributes: Vec<Field> = attributes.to_vec();
    if matches!(migrated, MigratedRule::AppMetadataKey(_)) {
        attributes.push(Field::AppMetadata);
    }
    attributes.sort();
    attributes.dedup();
    fields.extend(attributes.into_iter().map(|field| ExportField {
        name: field.name(),
        export_as: None,
    }));
    fields
}

/// Creates a users-export job and waits until it has completed.
pub async fn run_job(
    client: &Auth0Client,
    connection_id: &str,
    fields: &[ExportField],
    options: &ExportOptions,
) -> Result<Job, Auth0Error> {
    let started = Instant::now();
    let mut job = client.create_users_export(connection_id, fields).await?;
    tracing::info!(job = %job.id, "started the Auth0 users-export job");
    let mut interval = options.first_poll;
    loop {
        match job.status.as_str() {
            "completed" if job.location.is_some() => {
                tracing::info!(job = %job.id, elapsed_ms = started.elapsed().as_millis() as u64, "the export job completed");
                return Ok(job);
            }
            "completed" => {
                return Err(Auth0Error::JobFailed {
                    job: job.id,
                    detail: "Auth0 reported it completed but gave no download link (`location`)"
                        .into(),
                });
            }
            "failed" => {
                let why = job
                    .summary
                    .map(|summary| summary.to_string())
                    .unwrap_or_else(|| "Auth0 reported status \"failed\"".into());
                return Err(Auth0Error::JobFailed {
                    job: job.id,
                    detail: format!("{why} (after {:.1} s)", started.elapsed().as_secs_f64()),
                });
            }
            _ => {}
        }
        let elapsed = started.elapsed();
        if elapsed >= options.timeout {
            return Err(Auth0Error::JobTimeout {
                job: job.id,
                seconds: options.timeout.as_secs(),
                status: job.status,
            });
        }
        tokio::time::sleep(interval.min(options.timeout - elapsed)).await;
        interval = interval.mul_f64(1.5).min(options.max_poll);
        let id = job.id.clone();
        job = client.job(&id).await?;
        tracing::debug!(job = %job.id, status = %job.status, "polled the export job");
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The state of a resumable download.
struct Download {
    client: Arc<Auth0Client>,
    job: String,
    location: Option<String>,
    offset: u64,
    body: Option<Body>,
    /// Failures since the last byte received.
    failures: u32,
    refreshed_links: u32,
    stall_timeout: Duration,
    finished: bool,
}

/// Fresh links asked for in a row without receiving a byte.
const MAX_LINK_REFRESHES: u32 = 5;

impl Download {
    async fn open(&mut self) -> Result<(), Auth0Error> {
        loop {
            let location = match &self.location {
                Some(location) => location.clone(),
                None => {
                    let job = self.client.job(&self.job).await?;
                    self.location = job.location;
                    self.location
                        .clone()
                        .ok_or_else(|| self.error("the job has no download link"))?
                }
            };
            match self.client.download(&location, self.offset).await {
                Ok(response) => {
                    self.body = Some(Box::pin(response.bytes_stream()));
                    return Ok(());
                }
                Err(DownloadFailure::Expired) => {
                    self.refreshed_links += 1;
                    if self.refreshed_links > MAX_LINK_REFRESHES {
                        return Err(self.error("every fresh download link was refused"));
                    }
                    tracing::info!(job = %self.job, "the download link expired: asking for a fresh one");
                    self.location = None;
                }
                Err(DownloadFailure::Retry(detail)) => self.failed(detail).await?,
                Err(DownloadFailure::Fatal(detail)) => return Err(self.error(&detail)),
            }
        }
    }

    /// Counts a failure and waits before the next attempt, or gives up.
    async fn failed(&mut self, detail: String) -> Result<(), Auth0Error> {
        self.body = None;
        self.failures += 1;
        let retry = self.client.retry_policy();
        if self.failures >= retry.attempts {
            return Err(self.error(&format!("{detail} (after {} attempts)", self.failures)));
        }
        tracing::info!(job = %self.job, offset = self.offset, %detail, "the download broke off: resuming");
        tokio::time::sleep(retry.backoff(self.failures)).await;
        Ok(())
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, Auth0Error>> {
        loop {
            if self.finished {
                return None;
            }
            if self.body.is_none()
                && let Err(error) = self.open().await
            {
                self.finished = true;
                return Some(Err(error));
            }
            let body = self.body.as_mut()?;
            let next = tokio::time::timeout(self.stall_timeout, body.next()).await;
            let problem = match next {
                Ok(Some(Ok(chunk))) => {
                    self.offset += chunk.len() as u64;
                    self.failures = 0;
                    self.refreshed_links = 0;
                    return Some(Ok(chunk));
                }
                Ok(None) => {
                    self.finished = true;
                    return None;
                }
                Ok(Some(Err(error))) => error.without_url().to_string(),
                Err(_) => format!("no data for {} s", self.stall_timeout.as_secs()),
            };
            if let Err(error) = self.failed(problem).await {
                self.finished = true;
                return Some(Err(error));
            }
        }
    }

    fn error(&self, detail: &str) -> Auth0Error {
        Auth0Error::Download {
            job: self.job.clone(),
            detail: format!("{detail} (at byte {})", self.offset),
        }
    }
}

/// The job's file as a stream of bytes (still gzip-compressed).
pub fn download(
    client: Arc<Auth0Client>,
    job: Job,
    options: &ExportOptions,
) -> Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> {
    let state = Download {
        client,
        job: job.id,
        location: job.location,
        offset: 0,
        body: None,
        failures: 0,
        refreshed_links: 0,
        stall_timeout: options.stall_timeout,
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            let chunk = state.next_chunk().await?;
            Some((chunk.map_err(io::Error::other), state))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_fields_cover_the_comparison_and_the_migration_marker() {
        let names = |fields: Vec<ExportField>| -> Vec<&'static str> {
            fields.iter().map(|field| field.name).collect()
        };
        assert_eq!(
            names(fields_for(
                &crate::model::equality::attributes_read(&[Field::Name], &[]),
                &MigratedRule::Always
            )),
            [
                "user_id",
                "created_at",
                "identities[0].connection",
                "email",
                "name"
            ]
        );
        assert_eq!(
            names(fields_for(
                &[Field::Blocked],
                &MigratedRule::AppMetadataKey("migrated".into())
            )),
            [
                "user_id",
                "created_at",
                "identities[0].connection",
                "blocked",
                "app_metadata"
            ]
        );
    }
}
