//! The progress line on stderr while a run reads both sides (only when stderr is a terminal).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Counters {
    pub legacy_rows: AtomicU64,
    pub auth0_users: AtomicU64,
}

pub struct Ticker {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Counters {
    /// Prints a progress line on stderr twice a second until stopped.
    pub fn spawn_ticker(counters: Arc<Counters>) -> Ticker {
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                eprint!(
                    "\r\x1b[Kreading: {} legacy rows, {} Auth0 profiles ({:.0?})",
                    counters.legacy_rows.load(Ordering::Relaxed),
                    counters.auth0_users.load(Ordering::Relaxed),
                    started.elapsed()
                );
            }
            eprint!("\r\x1b[K");
        });
        Ticker {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The process's resident memory in MiB (Linux; 0 elsewhere), for the phase logs.
pub fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096 / (1024 * 1024))
}
