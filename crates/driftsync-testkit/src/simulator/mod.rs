//! An in-process simulator of the parts of Auth0 driftsync talks to: the client-credentials
//! token endpoint, the Management API endpoints for connections, users, user search and user
//! export jobs, and the signed download links of exports — over real HTTP on 127.0.0.1, with
//! Auth0's validation rules, rate-limit buckets and headers, and injectable faults.
//!
//! The server runs on its own thread and Tokio runtime, so it keeps answering while the
//! caller's runtime is blocked (a test running the driftsync binary with
//! `std::process::Command`, for example).
//!
//! Integration tests, benchmarks and `driftsync demo` start one with [`Simulator::start`],
//! fill it with [`Simulator::add_connection`] and [`Simulator::insert_user`] or
//! [`Simulator::load_ndjson`], point driftsync at [`Simulator::base_url`], and afterwards read
//! [`Simulator::stats`] and [`Simulator::user`]. `SIMULATOR.md` lists where it knowingly
//! differs from Auth0.
//!
//! This file holds the public API and the server's start and stop; the parts live in
//! `tenant` (data), `patch` (PATCH rules), `get_user` (the Get User script run on an email or
//! username change), `search`, `export` (jobs and downloads), `auth` (tokens), `limits` (token
//! buckets), `faults`, `reply` (Auth0-shaped answers) and `routes`.

mod auth;
mod export;
mod faults;
mod get_user;
mod limits;
mod patch;
mod reply;
mod routes;
mod search;
mod tenant;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, watch};

pub use faults::{BadAnswer, BadAnswerKind, Faults, JobFault};
pub use limits::{BucketLimit, Limits};

/// How the simulated tenant behaves.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Default `driftsync-test`.
    pub client_id: String,
    /// Default `test-secret`.
    pub client_secret: String,
    /// Default `tenant.simulator.local`; tokens must ask for audience `https://{domain}/api/v2/`.
    pub domain: String,
    /// `expires_in` of issued tokens; default one day.
    pub token_lifetime: Duration,
    /// How long an export job stays `pending`; default 200 ms.
    pub export_pending: Duration,
    /// How long it is then `processing` before it completes; default 300 ms.
    pub export_processing: Duration,
    /// Validity of a signed download link; default 60 s, as Auth0.
    pub download_link_ttl: Duration,
    pub limits: Limits,
}

impl Default for SimulatorConfig {
    fn default() -> SimulatorConfig {
        SimulatorConfig {
            client_id: "driftsync-test".into(),
            client_secret: "test-secret".into(),
            domain: "tenant.simulator.local".into(),
            token_lifetime: Duration::from_secs(86_400),
            export_pending: Duration::from_millis(200),
            export_processing: Duration::from_millis(300),
            download_link_ttl: Duration::from_secs(60),
            limits: Limits::enterprise(),
        }
    }
}

/// How a database connection of the simulated tenant is set up (see
/// [`Simulator::configure_connection`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectionSettings {
    /// "Import Users to Auth0": users are copied into Auth0 at first login (migrated).
    pub import_mode: bool,
    /// `options.set_user_root_attributes`: `None` is Auth0's default, `on_each_login`, which
    /// the connection object then leaves out; `on_first_login` and `never_on_login` let the
    /// Management API change a cached profile's name, nickname, given and family name and
    /// picture.
    pub set_user_root_attributes: Option<String>,
    /// The connection's Get User script, which Auth0 runs on an email or username change of an
    /// import-mode connection; `None` is a script that finds nobody.
    pub get_user: Option<GetUserScript>,
}

/// A Get User script as the simulator runs it: a query against a PostgreSQL database (the
/// legacy one, as a real script would), with the new email or username, lower-cased, as `$1`
/// (text). Any row means the script found a user, and Auth0 refuses the change.
#[derive(Clone, Debug, PartialEq)]
pub struct GetUserScript {
    pub database_url: String,
    pub query: String,
}

/// What the simulator has seen, as of [`Simulator::stats`].
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Management API requests (`/api/v2/…`, whatever their answer).
    pub requests: u64,
    /// `POST /oauth/token` requests.
    pub token_requests: u64,
    /// Download requests.
    pub downloads: u64,
    /// 429 answers, from an empty bucket or forced by [`Faults::forced_429`].
    pub throttled: u64,
    /// Requests that found their bucket empty (the bucket-caused 429s). A client that paces
    /// itself by the rate-limit headers keeps this at 0.
    pub over_limit_attempts: u64,
    /// PATCH requests that passed the gate (token, rate limit, faults).
    pub patches: u64,
    /// PATCH requests that changed a user (answered 200).
    pub patches_applied: u64,
    /// DELETE user requests; driftsync must never send one.
    pub deletes: u64,
    /// Verification emails Auth0 would have sent (see `SIMULATOR.md`, PATCH).
    pub verification_emails: u64,
    /// Get User script runs, and those that found the new value (the PATCH was refused).
    pub get_user_runs: u64,
    pub get_user_refusals: u64,
    /// Requests per endpoint, e.g. `"GET /api/v2/jobs/{id}"`, including `POST /oauth/token`
    /// and `GET /download/{job}`.
    pub by_endpoint: BTreeMap<String, u64>,
}

/// One PATCH request as the simulator received it (see [`Simulator::patch_log`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchRecord {
    /// The user id of the path, e.g. `auth0|42`.
    pub user_id: String,
    /// The body (`Value::Null` when it was not JSON).
    pub body: Value,
    /// Whether the change was applied (answered 200).
    pub applied: bool,
}

/// State shared by the handlers. Every lock is held briefly and never across an `.await`.
pub(crate) struct Shared {
    config: SimulatorConfig,
    base_url: String,
    tenant: Mutex<tenant::Tenant>,
    tokens: Mutex<auth::Tokens>,
    jobs: Mutex<std::collections::HashMap<String, export::Job>>,
    buckets: Mutex<limits::Buckets>,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    patch_log: Mutex<Vec<PatchRecord>>,
    /// Set by [`Faults::revoke_credentials`]: `/oauth/token` refuses the client.
    credentials_revoked: std::sync::atomic::AtomicBool,
    signer: export::Signer,
}

/// Locks a mutex; a handler that panicked while holding it does not stop the simulator.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn update_stats(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut lock(&self.stats));
    }

    /// Counts a request to `endpoint` and applies `update`.
    fn count(&self, endpoint: &str, update: impl FnOnce(&mut Stats)) {
        let mut stats = lock(&self.stats);
        *stats.by_endpoint.entry(endpoint.to_owned()).or_default() += 1;
        update(&mut stats);
    }

    fn count_throttled(&self, bucket_empty: bool) {
        self.update_stats(|stats| {
            stats.throttled += 1;
            if bucket_empty {
                stats.over_limit_attempts += 1;
            }
        });
    }

    /// Whether this request stalls (see [`Faults::stall_count`]), using up one stall.
    fn take_stall(&self) -> bool {
        let mut faults = lock(&self.faults);
        if faults.stall.is_zero() {
            return false;
        }
        match &mut faults.stall_count {
            None => true,
            Some(0) => false,
            Some(left) => {
                *left -= 1;
                true
            }
        }
    }

    /// Counts a Management API request towards [`Faults::revoke_tokens_after`] and revokes
    /// the tokens (and the credentials, with [`Faults::revoke_credentials`]) when it is due.
    fn count_towards_revocation(&self) {
        let mut faults = lock(&self.faults);
        let Some(left) = &mut faults.revoke_tokens_after else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left == 0 {
            faults.revoke_tokens_after = None;
            if faults.revoke_credentials {
                self.credentials_revoked
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            drop(faults);
            lock(&self.tokens).revoke_all();
        }
    }

    /// Whether `/oauth/token` refuses the client: revoked with the tokens, or at once when
    /// no token revocation is pending.
    pub(crate) fn credentials_revoked(&self) -> bool {
        if self
            .credentials_revoked
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return true;
        }
        let faults = lock(&self.faults);
        faults.revoke_credentials && faults.revoke_tokens_after.is_none()
    }

    fn record_patch(&self, record: PatchRecord) {
        lock(&self.patch_log).push(record);
    }

    /// Uses up one forced 429, if any is left.
    fn take_forced_429(&self) -> bool {
        let mut faults = lock(&self.faults);
        if faults.forced_429 > 0 {
            faults.forced_429 -= 1;
            true
        } else {
            false
        }
    }
}

/// How long requests in flight may take to finish once the simulator is asked to stop.
const GRACE: Duration = Duration::from_secs(1);

/// A running simulator. Dropping it stops the server as well (in the background);
/// [`Simulator::shutdown`] also waits for it.
pub struct Simulator {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl Simulator {
    /// Starts a simulator on a free port of 127.0.0.1.
    pub async fn start(config: SimulatorConfig) -> std::io::Result<Simulator> {
        Simulator::start_on(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), config).await
    }

    /// Starts a simulator listening on `addr` (port 0 picks a free port).
    pub async fn start_on(addr: SocketAddr, config: SimulatorConfig) -> std::io::Result<Simulator> {
        // Bound here so that the port is known, and a bind error reported, before returning.
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let host = if local.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local.ip()
        };
        let base_url = format!("http://{}", SocketAddr::new(host, local.port()));
        let shared = Arc::new(Shared {
            buckets: Mutex::new(limits::Buckets::new(&config.limits)),
            config,
            base_url,
            tenant: Mutex::default(),
            tokens: Mutex::default(),
            jobs: Mutex::default(),
            faults: Mutex::default(),
            stats: Mutex::default(),
            patch_log: Mutex::default(),
            credentials_revoked: std::sync::atomic::AtomicBool::new(false),
            signer: export::Signer::default(),
        });
        let app = routes::router(Arc::clone(&shared));
        let (stop, stop_requested) = watch::channel(false);
        let (started_sender, started) = oneshot::channel();
        let (stopped_sender, stopped) = oneshot::channel();
        // The runtime is built and dropped on its own thread: dropping a runtime inside the
        // caller's async context would panic.
        std::thread::Builder::new()
            .name("auth0-simulator".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("auth0-simulator")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started_sender.send(Err(error));
                        return;
                    }
                };
                let _ = started_sender.send(Ok(()));
                runtime.block_on(serve(listener, app, stop_requested));
                // Cancels export jobs and connections still open.
                runtime.shutdown_timeout(Duration::from_millis(100));
                let _ = stopped_sender.send(());
            })?;
        started
            .await
            .map_err(|_| std::io::Error::other("the simulator thread ended while starting"))??;
        tracing::debug!(url = %shared.base_url, "simulator: listening");
        Ok(Simulator {
            shared,
            stop,
            stopped: Some(stopped),
        })
    }

    /// `http://127.0.0.1:PORT`, to use as driftsync's `auth0.base_url`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimulatorConfig {
        &self.shared.config
    }

    /// Adds a database connection (or sets `import_mode` of the existing one with that name)
    /// and returns its id, `con_…`.
    pub fn add_connection(&self, name: &str, import_mode: bool) -> String {
        lock(&self.shared.tenant).add_connection(name, import_mode)
    }

    /// Adds a database connection with these settings (or replaces the settings of the
    /// existing one with that name) and returns its id.
    pub fn configure_connection(&self, name: &str, settings: ConnectionSettings) -> String {
        lock(&self.shared.tenant).configure_connection(name, settings)
    }

    /// Removes a user, as an administrator deleting it in the Dashboard would (not counted in
    /// [`Stats::deletes`], which counts the Management API's DELETEs); true if it existed.
    pub fn remove_user(&self, auth0_id: &str) -> bool {
        lock(&self.shared.tenant).remove(auth0_id)
    }

    /// Stores a user of `connection` (a name or id; an unknown name is created without import
    /// mode). `profile` is shaped like an export line; `identities`, `created_at` and
    /// `updated_at` are added when absent, and a missing `user_id` is generated. The user is
    /// migrated exactly when its connection has `import_mode`. A profile that is not a JSON
    /// object is logged and ignored.
    pub fn insert_user(&self, connection: &str, profile: Value) {
        let mut tenant = lock(&self.shared.tenant);
        let index = tenant.connection_for_insert(connection);
        let name = tenant
            .connection(index)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        match tenant::normalize(profile, &name, true) {
            Ok((user_id, profile)) => {
                let json = Arc::from(Value::Object(profile).to_string());
                tenant.insert(
                    user_id,
                    tenant::StoredUser {
                        connection: index,
                        json,
                    },
                );
            }
            Err(error) => tracing::error!(%error, "simulator: insert_user ignored a profile"),
        }
    }

    /// Stores every user of an NDJSON export (for example `datagen`'s `write_export`) in
    /// `connection`, as [`Simulator::insert_user`] would; lines that already have
    /// `identities`, `created_at` and `updated_at` are stored verbatim, which keeps a million
    /// users to a few seconds. Returns the number of users read; a line that is not a JSON
    /// object with a string `user_id` is an `InvalidData` error naming the line.
    pub fn load_ndjson(&self, connection: &str, reader: impl BufRead) -> std::io::Result<u64> {
        let (index, name) = {
            let mut tenant = lock(&self.shared.tenant);
            let index = tenant.connection_for_insert(connection);
            let name = tenant
                .connection(index)
                .map(|c| c.name.clone())
                .unwrap_or_default();
            (index, name)
        };
        tenant::read_ndjson(&name, reader, |batch| {
            let mut tenant = lock(&self.shared.tenant);
            for (user_id, json) in batch {
                tenant.insert(
                    user_id,
                    tenant::StoredUser {
                        connection: index,
                        json,
                    },
                );
            }
        })
    }

    /// The stored profile of `auth0_id` (`auth0|…`).
    pub fn user(&self, auth0_id: &str) -> Option<Value> {
        let tenant = lock(&self.shared.tenant);
        tenant
            .profile(auth0_id)
            .map(|(profile, _)| Value::Object(profile))
    }

    pub fn user_count(&self) -> usize {
        lock(&self.shared.tenant).len()
    }

    /// Replaces the injected faults (including the counts left of forced 429s, stalls and
    /// requests before a revocation). Credentials revoked by the previous faults work again
    /// unless the new ones revoke them too.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
        self.shared
            .credentials_revoked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Invalidates every token issued so far: they answer 401 "Invalid token".
    pub fn revoke_tokens(&self) {
        lock(&self.shared.tokens).revoke_all();
    }

    /// The access tokens issued and not yet forgotten (so tests can look for them where they
    /// must never appear: logs, reports, metrics, the state file).
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.tokens).issued()
    }

    /// Every PATCH received so far, in order of arrival (those refused by the gate — token,
    /// rate limit, server-error faults — never reach the handler and are not listed).
    pub fn patch_log(&self) -> Vec<PatchRecord> {
        lock(&self.shared.patch_log).clone()
    }

    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Stops accepting connections, lets requests in flight finish (for at most a second),
    /// cancels export jobs, and waits until the server thread is done.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(stopped) = self.stopped.take() {
            let _ = tokio::time::timeout(GRACE * 2, stopped).await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        // Without a receiver the send fails, and the server is stopping anyway.
        let _ = self.stop.send(true);
    }
}

/// Serves until `stop` is set (or its sender dropped), then for at most [`GRACE`] more while
/// requests in flight finish.
async fn serve(listener: std::net::TcpListener, app: axum::Router, stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "simulator: cannot listen");
            return;
        }
    };
    let mut graceful = stop.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            // An error means the Simulator was dropped: stop as well.
            let _ = graceful.wait_for(|stop| *stop).await;
        })
        .into_future();
    let mut deadline = stop;
    let grace_over = async move {
        let _ = deadline.wait_for(|stop| *stop).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        result = server => {
            if let Err(error) = result {
                tracing::warn!(%error, "simulator: the server stopped with an error");
            }
        }
        () = grace_over => tracing::debug!("simulator: dropping requests still in flight"),
    }
}
