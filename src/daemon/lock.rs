//! The run lock across replicas: a session-level PostgreSQL advisory lock on the legacy
//! database, held by a dedicated connection for the length of a run. Closing the connection
//! releases it, so a crashed replica never leaves it held. Taking an advisory lock writes no
//! data: it is allowed on a read-only role and a hot standby, and the database stays unchanged.

use crate::config::Config;
use crate::legacy::{self, LegacyError};

/// Held while a run goes on; dropping it closes the connection and releases the lock.
pub struct RunLock {
    _client: tokio_postgres::Client,
}

/// The lock key: the same for every replica of one deployment (one connection), different for
/// deployments that share a database.
fn key(config: &Config) -> i64 {
    let text = format!("driftsync:{}", config.auth0.connection);
    crate::baseline::hash(Some(&text))
}

/// Takes the lock if no other replica holds it.
pub async fn try_acquire(config: &Config) -> Result<Option<RunLock>, LegacyError> {
    let client = legacy::connect(&config.legacy.target).await?;
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key(config)])
        .await
        .map_err(LegacyError::Query)?;
    let taken: bool = row.get(0);
    Ok(taken.then_some(RunLock { _client: client }))
}
