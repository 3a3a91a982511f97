//! driftsync: finds the users whose legacy-database changes never reach Auth0 because Auth0
//! already migrated them, and reports them.
//!
//! The binary (`main.rs`) only parses the command line and calls [`cli::main`]; every concern
//! lives in its own module:
//! - [`auth0`]: the Management API client (token, rate limits, retries) and the export job.
//! - [`config`]: the TOML configuration, environment overrides and validation.
//! - [`profile`]: profile fields, their values and the compact per-user legacy record.
//! - [`legacy`]: streams the mapping query from the legacy PostgreSQL database (read only).
//! - [`export`]: reads Auth0's user export (gzip or plain NDJSON).
//! - [`check`]: the `check` command: proves a configuration works, writing nothing.
//! - [`equality`]: the value rules (case, Auth0's generated defaults) every comparison uses.
//! - [`classify`]: the status of each user and its differing fields.
//! - [`baseline`]: canonical values and hashes of what both sides last agreed on.
//! - [`state`]: the SQLite state file: runs, baselines, the push journal.
//! - [`push`]: planning Auth0-acceptable PATCH requests and applying them journaled.
//! - [`reconcile`]: one run: joins both sides, classifies, pushes, builds the report.
//! - [`report`]: the report model and its table, JSON and NDJSON renderings.
//! - [`metrics`]: the Prometheus metrics of docs/INTERFACE.md and the textfile writer.
//! - `demo` (feature `demo`, on by default): the `demo` command: the whole job on generated
//!   data, against the Auth0 simulator of the `driftsync-testkit` crate.
//! - [`daemon`]: the scheduled worker: cron schedules, run lock, metrics endpoint, signals.
//!
//! docs/ARCHITECTURE.md shows the layers these modules form and the rules between them.

pub mod auth0;
pub mod baseline;
pub mod check;
pub mod classify;
pub mod cli;
pub mod codec;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod equality;
mod error_text;
pub mod export;
pub mod legacy;
pub mod metrics;
mod priority;
pub mod private_file;
pub mod profile;
pub mod push;
pub mod reconcile;
pub mod report;
pub mod state;
mod timestamp;
pub mod tls;
