//! A throwaway PostgreSQL cluster for the demo: `initdb` into a temporary directory, started on
//! a free loopback port with trust authentication, stopped and deleted when dropped.
//!
//! PostgreSQL refuses to run as root, so as root the directory is handed to the `postgres`
//! user and the server binaries run through `runuser -u postgres --`.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "the PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql-15, or pass --legacy-url to use an existing database"
    )]
    NotInstalled,
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
}

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The server options, for a restart.
    options: String,
}

impl Cluster {
    /// Creates and starts a cluster; blocks for a few seconds.
    pub fn start() -> Result<Cluster, ClusterError> {
        let bin = find_binaries().ok_or(ClusterError::NotInstalled)?;
        let as_postgres = running_as_root();
        let dir = std::env::temp_dir().join(format!(
            "driftsync-demo-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let step = |step: &'static str| move |detail: String| ClusterError::Step { step, detail };
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| step("creating the directory")(e.to_string()))?;
        let port = free_port().map_err(|e| step("finding a free port")(e.to_string()))?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.join("data").display()
        );
        let cluster = Cluster {
            dir,
            bin,
            port,
            as_postgres,
            options,
        };
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir))
            .map_err(step("chown postgres"))?;
        }
        let data = cluster.dir.join("data");
        cluster
            .pg("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .map_err(|e| e.to_string())
            .and_then(checked)
            .map_err(step("initdb"))?;
        cluster
            .pg_ctl("start")
            .map_err(step("starting PostgreSQL"))?;
        Ok(cluster)
    }

    /// Restarts the server (fast shutdown: open sessions are ended), as an operator or a
    /// failover would; for fault tests.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.pg_ctl("restart").map_err(|detail| ClusterError::Step {
            step: "restarting PostgreSQL",
            detail,
        })
    }

    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        self.pg("pg_ctl")
            .arg(action)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "-t", "60", "-l"])
            .arg(self.dir.join("log"))
            .args(["-o", &self.options])
            .output()
            .map_err(|e| e.to_string())
            .and_then(checked)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(path)
                .current_dir(&self.dir);
            command
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    command
        .output()
        .map_err(|e| e.to_string())
        .and_then(checked)
}

fn checked(output: std::process::Output) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A directory holding both `initdb` and `pg_ctl`: on PATH, else the newest Debian install.
fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
