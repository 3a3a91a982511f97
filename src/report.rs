//! The report of one run (docs/INTERFACE.md, "JSON report") and its three renderings: a table for
//! people, JSON and NDJSON for programs. Files are written atomically: a reader sees the old
//! report or the new one, never half of one.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value as Json;

use crate::classify::{FieldDiff, Origin, Status};

pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Ndjson,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub run: RunInfo,
    pub summary: Summary,
    pub users: Vec<UserEntry>,
    /// The report file, written while the state was updated, for the caller to put in place
    /// (`RunOptions::report_file`).
    #[serde(skip)]
    pub prepared: Option<PreparedFile>,
    /// What a reader of the table should know about this run's verdicts (the machine formats
    /// carry only the fixed keys of the interface).
    #[serde(skip)]
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub id: String,
    pub kind: &'static str,
    pub mode: &'static str,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub legacy_users: u64,
    pub auth0_users: u64,
    pub in_sync: u64,
    pub stranded: u64,
    pub auth0_ahead: u64,
    pub conflict: u64,
    pub stale_cache: u64,
    pub not_migrated: u64,
    pub orphaned: u64,
    pub deleted_in_auth0: u64,
    pub auth0_only: u64,
    pub pushed: u64,
    pub push_failed: u64,
}

impl Summary {
    pub fn count(&mut self, status: Status) {
        *self.slot(status) += 1;
    }

    /// Adds the counts of another part of the same run.
    pub fn merge(&mut self, other: &Summary) {
        self.legacy_users += other.legacy_users;
        self.auth0_users += other.auth0_users;
        self.in_sync += other.in_sync;
        self.stranded += other.stranded;
        self.auth0_ahead += other.auth0_ahead;
        self.conflict += other.conflict;
        self.stale_cache += other.stale_cache;
        self.not_migrated += other.not_migrated;
        self.orphaned += other.orphaned;
        self.deleted_in_auth0 += other.deleted_in_auth0;
        self.auth0_only += other.auth0_only;
        self.pushed += other.pushed;
        self.push_failed += other.push_failed;
    }

    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::InSync => self.in_sync,
            Status::Stranded => self.stranded,
            Status::Auth0Ahead => self.auth0_ahead,
            Status::Conflict => self.conflict,
            Status::StaleCache => self.stale_cache,
            Status::NotMigrated => self.not_migrated,
            Status::Orphaned => self.orphaned,
            Status::DeletedInAuth0 => self.deleted_in_auth0,
            Status::Auth0Only => self.auth0_only,
        }
    }

    fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::InSync => &mut self.in_sync,
            Status::Stranded => &mut self.stranded,
            Status::Auth0Ahead => &mut self.auth0_ahead,
            Status::Conflict => &mut self.conflict,
            Status::StaleCache => &mut self.stale_cache,
            Status::NotMigrated => &mut self.not_migrated,
            Status::Orphaned => &mut self.orphaned,
            Status::DeletedInAuth0 => &mut self.deleted_in_auth0,
            Status::Auth0Only => &mut self.auth0_only,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UserEntry {
    pub user_id: String,
    pub status: Status,
    pub origin: Option<Origin>,
    pub fields: Vec<FieldDiff>,
    pub push: PushOutcome,
    /// Whether this user still needs someone (exit code 2): stranded, conflict or orphaned, and
    /// not settled by a push (an orphan already blocked under `orphans = "block"` is settled).
    #[serde(skip)]
    pub needs_action: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushState {
    /// A push would send (report mode) or is about to send this change.
    Planned,
    Applied,
    Failed,
    /// Nothing is sent for this user.
    Skipped,
}

#[derive(Debug, Serialize)]
pub struct PushOutcome {
    pub state: PushState,
    pub error: Option<String>,
}

impl Report {
    /// Whether users that need action remain un-pushed (exit code 2).
    pub fn needs_action(&self) -> bool {
        self.users.iter().any(|user| user.needs_action)
    }

    pub fn render(&self, format: Format, out: &mut dyn Write) -> io::Result<()> {
        match format {
            Format::Json => {
                serde_json::to_writer_pretty(&mut *out, self)?;
                out.write_all(b"\n")
            }
            Format::Ndjson => {
                for user in &self.users {
                    serde_json::to_writer(&mut *out, user)?;
                    out.write_all(b"\n")?;
                }
                #[derive(Serialize)]
                struct SummaryLine<'a> {
                    summary: &'a Summary,
                }
                serde_json::to_writer(
                    &mut *out,
                    &SummaryLine {
                        summary: &self.summary,
                    },
                )?;
                out.write_all(b"\n")
            }
            Format::Table => out.write_all(self.table().as_bytes()),
        }
    }

    fn table(&self) -> String {
        let mut text = String::new();
        let run = &self.run;
        let _ = writeln!(
            text,
            "driftsync {} run {} ({}), {} → {}\n",
            run.kind, run.id, run.mode, run.started_at, run.finished_at
        );
        let summary = &self.summary;
        let _ = writeln!(text, "  {:<16} {:>9}", "legacy users", summary.legacy_users);
        let _ = writeln!(text, "  {:<16} {:>9}\n", "auth0 users", summary.auth0_users);
        for status in Status::ALL {
            let _ = writeln!(
                text,
                "  {:<16} {:>9}   {}",
                status.name(),
                summary.get(status),
                explain(status)
            );
        }
        if run.mode == "push" {
            let _ = writeln!(text, "  {:<16} {:>9}", "pushed", summary.pushed);
            let _ = writeln!(text, "  {:<16} {:>9}", "push failed", summary.push_failed);
        }
        for note in &self.notes {
            let _ = writeln!(text, "\nNote: {note}");
        }
        if self.users.is_empty() {
            text.push_str("\nNo user needs attention.\n");
            return text;
        }
        let _ = writeln!(
            text,
            "\n{:<24} {:<12} {:<10} {:<15} {:<34} AUTH0",
            "USER", "STATUS", "ORIGIN", "FIELD", "LEGACY"
        );
        for user in &self.users {
            let origin = user.origin.map_or("-", origin_name);
            let mut first = true;
            let head = |first: bool| {
                if first {
                    format!(
                        "{:<24} {:<12} {:<10}",
                        user.user_id,
                        user.status.name(),
                        origin
                    )
                } else {
                    format!("{:<24} {:<12} {:<10}", "", "", "")
                }
            };
            for field in &user.fields {
                let _ = writeln!(
                    text,
                    "{} {:<15} {:<34} {}",
                    head(first),
                    field.field.name(),
                    cell(&field.legacy.to_json()),
                    cell(&field.auth0.to_json())
                );
                first = false;
            }
            if first {
                let missing = match user.status {
                    Status::DeletedInAuth0 => "(no Auth0 user)",
                    _ => "(no legacy row)",
                };
                let _ = writeln!(text, "{} {missing}", head(true));
            }
        }
        text
    }
}

/// One line per status for the table, so a reader needs no manual.
pub fn explain(status: Status) -> &'static str {
    match status {
        Status::InSync => "both sides agree",
        Status::Stranded => "legacy changed after migration: Auth0 will never see it",
        Status::Auth0Ahead => "only Auth0 changed: Auth0 owns migrated users",
        Status::Conflict => "the same field changed on both sides",
        Status::StaleCache => "not migrated: Auth0's cached copy refreshes at next login",
        Status::NotMigrated => "legacy user without an Auth0 user yet",
        Status::Orphaned => "gone from legacy, still able to log in to Auth0",
        Status::DeletedInAuth0 => "deleted in Auth0: migrated again at the next login",
        Status::Auth0Only => "no legacy row ever seen: signed up in Auth0, most likely",
    }
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Baseline => "baseline",
        Origin::Timestamp => "timestamp",
        Origin::Assumed => "assumed",
    }
}

/// A value shortened to fit its column.
fn cell(value: &Json) -> String {
    const WIDTH: usize = 34;
    let text = match value {
        Json::Null => "(none)".to_owned(),
        Json::String(text) => text.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > WIDTH {
        let cut: String = text.chars().take(WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Writes `path` through a temporary file in the same directory and a rename; the file is
/// created with `mode` (see [`crate::private_file`]).
pub fn write_atomically(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    prepare_atomically(path, mode, write)?.commit()
}

/// A file written and synced under a temporary name beside its path: [`PreparedFile::commit`]
/// renames it into place; dropped uncommitted, it is removed (a run that fails after writing
/// its report leaves no report).
#[derive(Debug)]
pub struct PreparedFile {
    temporary: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl PreparedFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn commit(mut self) -> io::Result<()> {
        std::fs::rename(&self.temporary, &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PreparedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `path`'s content under a temporary name, for [`PreparedFile::commit`]. The file is
/// created with `mode`, which the rename keeps.
pub fn prepare_atomically(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<PreparedFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let prepared = PreparedFile {
        temporary: dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        )),
        path: path.to_owned(),
        committed: false,
    };
    // A leftover of a crashed process with the same pid may have another mode: start afresh.
    match std::fs::remove_file(&prepared.temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let file = crate::private_file::create_new(&prepared.temporary, mode)?;
    let mut writer = io::BufWriter::with_capacity(1 << 20, file);
    write(&mut writer)?;
    let file = writer.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()?;
    Ok(prepared)
}
