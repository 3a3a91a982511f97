//! The scheduling priority of a run's threads: the legacy side (PostgreSQL's rows) is the
//! slower stream, so the threads that read and parse the Auth0 export yield to it. Used by the
//! export reader and the combined pass alike, so it lives below both.

/// Lowers the calling thread's scheduling priority, so that while the legacy rows still stream
/// (on threads at normal priority, with PostgreSQL's own process), the export side only takes
/// the CPU they leave idle instead of outrunning them and parking lines. On Linux the nice
/// value is per thread.
pub fn yield_to_legacy_side() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and changes nothing but the calling thread's
    // nice value; a failure leaves it as it was, which is harmless.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}
