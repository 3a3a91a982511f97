//! The run lock across replicas: a session-level PostgreSQL advisory lock on the legacy
//! database, held by a dedicated connection for the length of a run. Closing the connection
//! releases it, so a crashed replica never leaves it held. Taking an advisory lock writes no
//! data: it is allowed on a read-only role and a hot standby, and the database stays unchanged.

use crate::codec;
use crate::config::Config;
use crate::sources::legacy::{self, LegacyError};

/// Held while a run goes on; dropping it closes the connection and releases the lock.
pub struct RunLock {
    _client: tokio_postgres::Client,
}

/// The lock key: the same for every replica of one deployment (one `auth0.connection`),
/// different for deployments that share a database, and the same across driftsync versions,
/// so that replicas of two versions during a rolling upgrade still exclude each other.
///
/// Its own derivation, fixed for good (a test pins its value): 64-bit FNV-1a (offset basis
/// 0xcbf29ce484222325, prime 0x100000001b3) over the byte 0x01 followed by the UTF-8 bytes of
/// `driftsync:<connection>`, read as a signed 64-bit integer (`pg_try_advisory_lock(bigint)`).
/// It is the value earlier versions took from the baseline hash, which may now change freely.
fn key(connection: &str) -> i64 {
    let hash = codec::fnv1a(codec::FNV_OFFSET, &[0x01]);
    let hash = codec::fnv1a(hash, b"driftsync:");
    codec::fnv1a(hash, connection.as_bytes()) as i64
}

/// Takes the lock if no other replica holds it.
pub async fn try_acquire(config: &Config) -> Result<Option<RunLock>, LegacyError> {
    let client = legacy::connect(&config.legacy.target).await?;
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&key(&config.auth0.connection)],
        )
        .await
        .map_err(LegacyError::Query)?;
    let taken: bool = row.get(0);
    Ok(taken.then_some(RunLock { _client: client }))
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn the_lock_key_never_changes() {
        // Computed by hand from the definition above; releases before this function took the
        // same value from the baseline hash. Changing it would let replicas of two versions
        // run at the same time.
        assert_eq!(key("legacy-users"), 475_088_124_692_028_976);
        assert_ne!(key("legacy-users"), key("legacy-users-2"));
    }
}
