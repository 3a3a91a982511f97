//! `driftsync daemon` as a real process, stopped (killed if need be) when dropped.

// Every test binary compiles this module but not all of them use every item.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, config: &str) -> Daemon {
        Daemon::start_logging(dir, config, "driftsync=debug")
    }

    /// Starts the daemon with `DRIFTSYNC_LOG` set to `filter`; its stderr goes to a log file.
    pub fn start_logging(dir: &Path, config: &str, filter: &str) -> Daemon {
        let log = dir.join(format!("{config}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_driftsync"))
            .current_dir(dir)
            .args(["--config", config, "daemon"])
            .env("DRIFTSYNC_LOG", filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let text = std::fs::read_to_string(dir.join(config)).unwrap();
        let port = text
            .lines()
            .find_map(|line| line.strip_prefix("listen = \"127.0.0.1:"))
            .and_then(|rest| rest.trim_end_matches('"').parse().ok())
            .expect("the config sets metrics.listen");
        Daemon { child, port, log }
    }

    /// The text of one scrape of /metrics.
    pub async fn scrape(&self) -> Option<String> {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    pub async fn metrics(&self) -> Option<HashMap<String, f64>> {
        let text = self.scrape().await?;
        Some(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| {
                    let (name, value) = line.rsplit_once(' ')?;
                    Some((name.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// Waits until `metric` reaches `at_least`, and returns the scrape.
    pub async fn wait_for(&self, metric: &str, at_least: f64) -> HashMap<String, f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(values) = self.metrics().await
                && values.get(metric).copied().unwrap_or(0.0) >= at_least
            {
                return values;
            }
            assert!(
                Instant::now() < deadline,
                "{metric} never reached {at_least}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then the exit code and how long it took.
    pub async fn stop(mut self) -> (Option<i32>, Duration) {
        self.signal("TERM");
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || self.child.wait())
            .await
            .unwrap()
            .unwrap();
        (status.code(), started.elapsed())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    /// A failing test must not leave a daemon running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
