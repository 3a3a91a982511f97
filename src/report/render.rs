//! The report's renderings: a table for people (with what each status means and the run's
//! notes), JSON and NDJSON for programs, in the key order docs/INTERFACE.md gives.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value as Json;

use super::{Format, Report, Summary};
use crate::model::classify::{Origin, Status};

impl Report {
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
