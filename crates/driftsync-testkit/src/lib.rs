//! driftsync's test kit, kept out of the product: the Auth0 simulator ([`simulator`]) that the
//! integration tests, the benchmarks and `driftsync demo` run against, and the deterministic
//! data generator ([`datagen`]) that feeds them. It does not depend on driftsync, so the
//! product can use it (for the demo) and be tested with it.
//!
//! Binaries: `simulator` (the simulator as a process, for benchmarks) and `datagen` (a data
//! set as files).

pub mod datagen;
pub mod simulator;
