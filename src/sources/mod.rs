//! Where the two sides of a run are read from: the legacy PostgreSQL database ([`legacy`]) and
//! Auth0's users export as NDJSON ([`export`]). Both turn what they read into the model's types
//! at the edge, and name the row or line of anything they refuse.

pub mod export;
pub mod legacy;
