//! Runs the real `driftsync` binary against a fresh PostgreSQL database and export files
//! written into a per-test directory.

// Every test binary compiles this module but not all of them use every item.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

use super::pg::{TestDb, fresh_database};

pub struct App {
    pub db: TestDb,
    pub dir: TempDir,
}

/// What a run of the binary left behind.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON report of a run that completed (exit 0, or 2 when users need action).
    pub fn report(&self) -> Value {
        assert!(
            self.code == 0 || self.code == 2,
            "exit {}:\n{}",
            self.code,
            self.stderr
        );
        self.json()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl App {
    pub async fn new() -> App {
        App::with_db(fresh_database().await)
    }

    /// An app on a database made elsewhere (e.g. on the TLS cluster).
    pub fn with_db(db: TestDb) -> App {
        App {
            db,
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// Runs SQL statements in the test database.
    pub async fn sql(&self, sql: &str) {
        self.db
            .client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes NDJSON lines as an export file, gzip-compressed when `name` ends in `.gz`.
    pub fn export(&self, name: &str, lines: &[Value]) -> PathBuf {
        let mut text = String::new();
        for line in lines {
            text.push_str(&line.to_string());
            text.push('\n');
        }
        self.export_bytes(name, text.as_bytes())
    }

    pub fn export_bytes(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        let data = if name.ends_with(".gz") {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap()
        } else {
            bytes.to_vec()
        };
        std::fs::write(&path, data).unwrap();
        path
    }

    /// Writes `driftsync.toml` with this database's URL, the given query and extra TOML
    /// (appended after the `[legacy]` table).
    pub fn config(&self, query: &str, rest: &str) -> PathBuf {
        let text = format!(
            "[legacy]\nurl = {url:?}\nquery = {query:?}\n\n{rest}\n",
            url = self.db.url
        );
        let path = self.path("driftsync.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `driftsync --config <dir>/driftsync.toml <args>` in the test directory.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_env(args, &[])
    }

    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let config = self.path("driftsync.toml");
        let mut full_args = vec!["--config", config.to_str().unwrap()];
        full_args.extend_from_slice(args);
        self.run_without_config_with_env(&full_args, env)
    }

    /// Runs the binary with exactly `args` (no `--config` added).
    pub fn run_without_config(&self, args: &[&str]) -> Run {
        self.run_without_config_with_env(args, &[])
    }

    fn run_without_config_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_driftsync"));
        command
            .current_dir(self.dir.path())
            .args(args)
            .env_remove("DRIFTSYNC_LEGACY_URL")
            .env_remove("DRIFTSYNC_CONFIG")
            .env_remove("DRIFTSYNC_LOG")
            // HOME is the test directory: no ~/.pgpass or ~/.postgresql/root.crt of this
            // machine's user reaches a test, and a test can place its own there.
            .env("HOME", self.dir.path());
        // libpq's variables fill in what a connection string leaves out: none from outside.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                command.env_remove(name);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let Output {
            status,
            stdout,
            stderr,
        } = command.output().expect("driftsync binary runs");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

/// The mapping query of [`App::seed_two_users`]'s table.
pub const TWO_USERS_QUERY: &str = "SELECT id::text AS user_id, email, full_name AS name FROM users";

/// A report from `export.ndjson` without the Management API: every user of the connection
/// counts as migrated.
pub const FILE_SOURCE_NO_API: &str = r#"
[auth0]
connection = "legacy-users"
migrated = "always"

[cache]
source = "file"
file = "export.ndjson"
"#;

impl App {
    /// A legacy table `users` of two users, one whose email changed since Auth0's copy (so a
    /// report finds one `in_sync`, one `stranded`), readable by `readers`, and its export:
    /// for tests about connections and files rather than the comparison.
    pub async fn seed_two_users(&self, readers: &[&str]) {
        let mut sql = "CREATE TABLE users (id bigint PRIMARY KEY, email text, full_name text);
             INSERT INTO users VALUES (1, 'ann@x.io', 'Ann'), (2, 'new@x.io', 'Bo');"
            .to_owned();
        if !readers.is_empty() {
            sql.push_str(&format!("GRANT SELECT ON users TO {};", readers.join(", ")));
        }
        self.sql(&sql).await;
        let line = |id: &str, email: &str, name: &str| {
            serde_json::json!({
                "user_id": format!("auth0|{id}"),
                "email": email,
                "name": name,
                "identities": [{"connection": "legacy-users", "provider": "auth0", "user_id": id, "isSocial": false}],
            })
        };
        self.export(
            "export.ndjson",
            &[line("1", "ann@x.io", "Ann"), line("2", "old@x.io", "Bo")],
        );
    }
}
