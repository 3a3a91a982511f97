//! driftsync: finds the users whose legacy-database changes never reach Auth0 because Auth0
//! already migrated them, reports them, and can push the changes through the Management API.
//!
//! The binary (`main.rs`) only parses the command line and calls [`cli::main`]. The modules
//! form layers; each imports only its own layer or lower ones (docs/ARCHITECTURE.md, checked by
//! `tests/architecture.rs`):
//! - foundation: [`codec`] (every byte format), `timestamp`, [`tls`], `error_text`,
//!   [`private_file`], `priority`.
//! - [`model`]: the pure domain — profiles, the one equality rule, baselines, verdicts, push
//!   plans and the fraction guard. No I/O, no threads.
//! - [`report`]: the report model, its table/JSON/NDJSON renderings and its atomic file.
//! - adapters: [`config`], [`sources`] (the legacy PostgreSQL database, export files),
//!   [`auth0`] (Management API client, rate limiter, export job), [`state`] (SQLite),
//!   [`metrics`] (Prometheus).
//! - [`engine`]: the combined streaming pass that joins both sides and classifies every user,
//!   behind one entry point.
//! - [`run`]: one run of either kind (full or changes): shared setup, the pass, the journaled
//!   push, the state update.
//! - commands: [`check`], [`explain`], [`migration`] (`progress`, `cutover`), [`reviewed`]
//!   (`apply`), [`daemon`], `demo` (feature `demo`, on by default: the whole job on
//!   generated data against the Auth0 simulator of the `driftsync-testkit` crate), [`cli`].

pub mod auth0;
pub mod check;
pub mod cli;
pub mod codec;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod engine;
mod error_text;
pub mod explain;
pub mod metrics;
pub mod migration;
pub mod model;
mod priority;
pub mod private_file;
pub mod report;
pub mod reviewed;
pub mod run;
pub mod sources;
pub mod state;
mod timestamp;
pub mod tls;
