//! Shared helpers for the integration tests.

pub mod app;
pub mod pg;
pub mod tenant;
