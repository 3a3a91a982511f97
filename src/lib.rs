//! driftsync: finds the users whose legacy-database changes never reach Auth0 because Auth0
//! already migrated them, and reports them.
//!
//! The binary (`main.rs`) only parses the command line and calls [`cli::run`]; every concern
//! lives in its own module:
//! - [`config`]: the TOML configuration, environment overrides and validation.
//! - [`profile`]: profile fields, their values and the compact per-user legacy record.
//! - [`legacy`]: streams the mapping query from the legacy PostgreSQL database (read only).
//! - [`export`]: reads Auth0's user export (gzip or plain NDJSON).
//! - [`classify`]: the equality rules and the status of each user.
//! - [`reconcile`]: one run: joins both sides, classifies, builds the report.
//! - [`report`]: the report model and its table, JSON and NDJSON renderings.
//! - [`datagen`]: deterministic legacy rows and Auth0 exports for benchmarks, tests and demos.
//! - [`simulator`]: an in-process Auth0 (token endpoint, Management API, export downloads) over
//!   real HTTP, for integration tests, benchmarks and the demo.

pub mod classify;
pub mod cli;
pub mod config;
pub mod datagen;
pub mod export;
pub mod legacy;
pub mod profile;
pub mod reconcile;
pub mod report;
pub mod simulator;
mod timestamp;
