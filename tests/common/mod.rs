//! Shared helpers for the integration tests.

pub mod app;
pub mod daemon;
pub mod pg;
pub mod tenant;
