//! The domain core: pure rules, no I/O, no threads. What a profile is, when two values are
//! equal, what a baseline remembers, each user's verdict, and the push a verdict plans.
//!
//! - [`profile`]: the profile fields, their values, the packed legacy record, `Auth0User`.
//! - [`equality`]: the one equality rule, as a canonical form per value.
//! - [`baseline`]: the hashes of agreed values, packed per user; which side changed a key.
//! - [`classify`]: one user's verdict from both sides and its baseline; the field diffs.
//! - [`plan`]: the push a verdict plans, as the PATCH bodies Auth0 accepts.
//! - [`guard`]: the guards against a mapping mistake: push fraction, shrink.
//! - [`progress`]: the migration's progress, its projection, and the cutover check.
//! - [`saved_plan`]: a push plan saved for review, and whether it still holds.
//! - [`trace`]: one user's verdict explained key by key (`driftsync explain`).

pub mod baseline;
pub mod classify;
pub mod equality;
pub mod guard;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod saved_plan;
pub mod trace;
