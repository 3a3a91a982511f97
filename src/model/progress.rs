//! How far the migration has come, and whether the legacy database can be switched off: the
//! figures each full run records ([`Snapshot`]), the rate and the projection read off their
//! history ([`progress`]), and the cutover check on the last one ([`cutover`]). Pure: the state
//! file keeps the snapshots, the commands print what these functions say.

use serde::{Deserialize, Serialize};

use crate::model::classify::Status;

/// Microseconds in a day.
const DAY: i64 = 86_400_000_000;

/// Ids shown per blocker and for the not-migrated users.
pub const EXAMPLES: usize = 5;

/// The inactivity buckets of the not-migrated users, by days since `last_active_at`.
pub const INACTIVITY_BUCKETS: [&str; 6] = [
    "under_30_days",
    "30_to_89_days",
    "90_to_179_days",
    "180_to_364_days",
    "365_days_or_more",
    "unknown",
];

/// What one successful full run found, as the state file keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the run finished (RFC 3339 UTC).
    pub at: String,
    pub legacy_users: u64,
    /// Legacy users whose Auth0 profile is migrated (import mode, or the marker).
    pub migrated: u64,
    pub not_migrated: u64,
    /// Signups: Auth0 users of the connection that never had a legacy row.
    pub auth0_only: u64,
    pub stranded: u64,
    pub conflict: u64,
    pub deleted_in_auth0: u64,
    pub orphaned: u64,
    /// Not-migrated users per [`INACTIVITY_BUCKETS`], when the query returns `last_active_at`.
    pub inactivity: Option<[u64; 6]>,
    /// A few ids of each status that blocks the cutover.
    pub examples: Examples,
}

/// A few Auth0 user ids per status that blocks the cutover.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Examples {
    pub not_migrated: Vec<String>,
    pub stranded: Vec<String>,
    pub conflict: Vec<String>,
    pub deleted_in_auth0: Vec<String>,
}

impl Examples {
    /// Keeps `user_id` as an example of `status` if it blocks the cutover and there are fewer
    /// than [`EXAMPLES`] of it so far.
    pub fn offer(&mut self, status: Status, user_id: &str) {
        let list = match status {
            Status::NotMigrated => &mut self.not_migrated,
            Status::Stranded => &mut self.stranded,
            Status::Conflict => &mut self.conflict,
            Status::DeletedInAuth0 => &mut self.deleted_in_auth0,
            _ => return,
        };
        if list.len() < EXAMPLES {
            list.push(user_id.to_owned());
        }
    }
}

/// The bucket of a not-migrated user last active at `last_active` (microseconds), seen `now`.
pub fn inactivity_bucket(last_active: Option<i64>, now: i64) -> usize {
    let Some(last_active) = last_active else {
        return 5;
    };
    match (now - last_active) / DAY {
        ..30 => 0,
        30..90 => 1,
        90..180 => 2,
        180..365 => 3,
        _ => 4,
    }
}

/// When the migration completes at the current rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "at")]
pub enum Projection {
    /// No legacy user is left to migrate.
    Complete,
    /// At the 7-day rate (RFC 3339 UTC).
    At(String),
    /// The rate is zero or falling: not at this rate.
    NotAtThisRate,
    /// Too little history for a rate (runs spanning less than a day).
    Unknown,
}

/// The migration's progress, from the history of snapshots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub latest: Snapshot,
    /// `migrated / legacy_users` (0 without legacy users).
    pub migrated_share: f64,
    /// Migrations per day over the last 7 and 28 days (`None`: too little history).
    pub per_day_7: Option<f64>,
    pub per_day_28: Option<f64>,
    pub projection: Projection,
    /// Snapshots the figures were read from.
    pub runs: usize,
}

/// The progress read off `history` (any order). `None` without a snapshot.
pub fn progress(history: &[Snapshot]) -> Option<Progress> {
    let mut history: Vec<(&Snapshot, i64)> = history
        .iter()
        .filter_map(|s| Some((s, crate::timestamp::parse_rfc3339(&s.at)?)))
        .collect();
    history.sort_by_key(|(_, at)| *at);
    let &(latest, latest_at) = history.last()?;
    let rate = |days: i64| {
        // The newest snapshot at least `days` old, or failing that the oldest one, if it is at
        // least a day older than the latest.
        let reference = history
            .iter()
            .rev()
            .find(|(_, at)| latest_at - at >= days * DAY)
            .or_else(|| history.first())
            .filter(|(_, at)| latest_at - at >= DAY)?;
        let elapsed_days = (latest_at - reference.1) as f64 / DAY as f64;
        Some((latest.migrated as f64 - reference.0.migrated as f64) / elapsed_days)
    };
    let per_day_7 = rate(7);
    let per_day_28 = rate(28);
    let projection = match per_day_7 {
        _ if latest.not_migrated == 0 => Projection::Complete,
        None => Projection::Unknown,
        Some(rate) if rate <= 0.0 || !rate.is_finite() => Projection::NotAtThisRate,
        Some(rate) => {
            let days = latest.not_migrated as f64 / rate;
            // Beyond a century is not a date anyone plans by.
            if days > 36_500.0 {
                Projection::NotAtThisRate
            } else {
                let at = latest_at + (days * DAY as f64) as i64;
                Projection::At(crate::timestamp::format_rfc3339(at))
            }
        }
    };
    Some(Progress {
        migrated_share: if latest.legacy_users == 0 {
            0.0
        } else {
            latest.migrated as f64 / latest.legacy_users as f64
        },
        latest: latest.clone(),
        per_day_7,
        per_day_28,
        projection,
        runs: history.len(),
    })
}

/// One reason the legacy database cannot be switched off yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocker {
    /// A status, or `no_recent_run`.
    pub reason: &'static str,
    pub count: u64,
    pub examples: Vec<String>,
    /// What to do about it.
    pub remedy: &'static str,
}

/// The cutover check on the last full run (`None`: there is none), seen `now`, with runs older
/// than `max_age` (microseconds) too old to decide on.
pub fn cutover(latest: Option<&Snapshot>, now: i64, max_age: i64) -> Vec<Blocker> {
    let Some(latest) = latest else {
        return vec![Blocker {
            reason: "no_recent_run",
            count: 0,
            examples: Vec::new(),
            remedy: "no successful full run is recorded in the state file: run `driftsync reconcile`",
        }];
    };
    let mut blockers = Vec::new();
    let age = crate::timestamp::parse_rfc3339(&latest.at).map(|at| now - at);
    if age.is_none_or(|age| age > max_age) {
        blockers.push(Blocker {
            reason: "no_recent_run",
            count: 0,
            examples: vec![latest.at.clone()],
            remedy: "the last successful full run is older than cutover.max_run_age_hours: run `driftsync reconcile` and check again",
        });
    }
    let e = &latest.examples;
    for (reason, count, examples, remedy) in [
        (
            "not_migrated",
            latest.not_migrated,
            &e.not_migrated,
            "these users never logged in since the migration began: import them in bulk (Auth0's user import) or decide to drop them",
        ),
        (
            "stranded",
            latest.stranded,
            &e.stranded,
            "their legacy changes never reached Auth0: `driftsync reconcile --push`",
        ),
        (
            "conflict",
            latest.conflict,
            &e.conflict,
            "both sides changed since they last agreed: decide per user (`driftsync explain`) and fix one side",
        ),
        (
            "deleted_in_auth0",
            latest.deleted_in_auth0,
            &e.deleted_in_auth0,
            "deleted in Auth0 but still in legacy: their next login migrates them again; delete or mark the legacy rows",
        ),
    ] {
        if count > 0 {
            blockers.push(Blocker {
                reason,
                count,
                examples: examples.clone(),
                remedy,
            });
        }
    }
    blockers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(at: &str, migrated: u64, not_migrated: u64) -> Snapshot {
        Snapshot {
            at: at.into(),
            legacy_users: migrated + not_migrated,
            migrated,
            not_migrated,
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_rate_and_the_projection_follow_the_history() {
        // 100 migrations a day for four weeks; 7,000 users left.
        let history: Vec<Snapshot> = (0..=28)
            .map(|day| {
                let at = format!("2026-01-{:02}T00:00:00Z", day + 1);
                snapshot(&at, 1_000 + 100 * day, 9_800 - 100 * day)
            })
            .collect();
        let progress = progress(&history).unwrap();
        assert_eq!(progress.per_day_7, Some(100.0));
        assert_eq!(progress.per_day_28, Some(100.0));
        assert_eq!(progress.latest.not_migrated, 7_000);
        // 7,000 left at 100 a day: 70 days after 2026-01-29.
        assert_eq!(
            progress.projection,
            Projection::At("2026-04-09T00:00:00Z".into())
        );
        assert_eq!(progress.migrated_share, 3_800.0 / 10_800.0);
        assert_eq!(progress.runs, 29);
    }

    #[test]
    fn a_stalled_or_young_history_projects_no_date() {
        let stalled = [
            snapshot("2026-01-01T00:00:00Z", 500, 500),
            snapshot("2026-01-09T00:00:00Z", 500, 500),
        ];
        assert_eq!(
            progress(&stalled).unwrap().projection,
            Projection::NotAtThisRate
        );
        let young = [
            snapshot("2026-01-01T00:00:00Z", 500, 500),
            snapshot("2026-01-01T12:00:00Z", 520, 480),
        ];
        assert_eq!(progress(&young).unwrap().projection, Projection::Unknown);
        assert_eq!(progress(&young).unwrap().per_day_7, None);
        let done = [snapshot("2026-01-01T00:00:00Z", 1_000, 0)];
        assert_eq!(progress(&done).unwrap().projection, Projection::Complete);
        assert!(progress(&[]).is_none());
    }

    #[test]
    fn cutover_names_every_blocker_and_a_stale_run() {
        let now = crate::timestamp::parse_rfc3339("2026-01-02T00:00:00Z").unwrap();
        let mut latest = snapshot("2026-01-01T12:00:00Z", 10, 0);
        assert!(cutover(Some(&latest), now, DAY).is_empty());
        latest.stranded = 2;
        latest.examples.stranded = vec!["auth0|1".into(), "auth0|2".into()];
        latest.deleted_in_auth0 = 1;
        let blockers = cutover(Some(&latest), now, DAY);
        let reasons: Vec<(&str, u64)> = blockers.iter().map(|b| (b.reason, b.count)).collect();
        assert_eq!(reasons, [("stranded", 2), ("deleted_in_auth0", 1)]);
        assert_eq!(blockers[0].examples, ["auth0|1", "auth0|2"]);
        let stale = cutover(Some(&latest), now, DAY / 4);
        assert_eq!(stale[0].reason, "no_recent_run");
        assert_eq!(cutover(None, now, DAY)[0].reason, "no_recent_run");
    }

    #[test]
    fn inactivity_buckets_by_days() {
        let now = 400 * DAY;
        assert_eq!(inactivity_bucket(Some(now - 29 * DAY), now), 0);
        assert_eq!(inactivity_bucket(Some(now - 30 * DAY), now), 1);
        assert_eq!(inactivity_bucket(Some(now - 179 * DAY), now), 2);
        assert_eq!(inactivity_bucket(Some(now - 364 * DAY), now), 3);
        assert_eq!(inactivity_bucket(Some(now - 365 * DAY), now), 4);
        assert_eq!(inactivity_bucket(None, now), 5);
    }
}
