//! Matching the two sides: the legacy rows wait in a compact table keyed by user id while
//! Auth0's profiles stream past; each user is classified as soon as both sides are known (its
//! legacy record is freed then), the push for it is planned, and the baselines that changed are
//! collected — so the state update is proportional to what changed.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::sync::atomic::Ordering;

use crate::baseline::{self, KeyValues};
use crate::classify::{self, Status, Verdict};
use crate::config::OrphanAction;
use crate::export::{self, Auth0User, ExportFilter, USER_ID_PREFIX};
use crate::profile::{Field, LegacyRecord, LegacyView, Profile};
use crate::push::plan::{self, PushPolicy, UserPlan};
use crate::report::{PushOutcome, PushState, Summary, UserEntry};
use crate::state::{self, Baselines};

use super::ReconcileError;
use super::progress::Counters;

/// A legacy row waiting for its Auth0 profile; `None` once matched (kept to catch duplicates).
/// foldhash: several times faster than SipHash on short ids, and randomly seeded per process.
pub type LegacyTable = HashMap<Box<str>, Option<LegacyRecord>, foldhash::fast::RandomState>;

/// What the join needs besides the two sides.
pub struct JoinContext<'a> {
    pub fields: &'a [Field],
    pub filter: &'a ExportFilter,
    pub baselines: &'a Baselines,
    pub policy: &'a PushPolicy,
    pub orphans: OrphanAction,
    pub counters: &'a Counters,
}

/// New packed baseline sets by legacy user id.
pub type BaselineWrites = HashMap<Box<str>, Box<[u8]>, foldhash::fast::RandomState>;

/// A planned push, by Auth0 user id.
#[derive(Debug)]
pub struct Planned {
    pub auth0_id: String,
    pub legacy_id: String,
    pub plan: UserPlan,
}

pub struct Joined {
    pub summary: Summary,
    pub users: Vec<UserEntry>,
    pub planned: Vec<Planned>,
    /// New packed baseline sets of the users whose set changed (empty: forget the user).
    pub baseline_changes: BaselineWrites,
    pub migrated_users: u64,
}

/// Streams the export past the legacy table.
pub fn join(
    source_name: &str,
    input: impl BufRead,
    table: LegacyTable,
    context: &JoinContext<'_>,
) -> Result<Joined, ReconcileError> {
    let mut joined = Joined::new();
    let mut table = table;
    // Auth0 ids without a legacy row, to catch duplicates among them too.
    let mut unmatched: HashSet<Box<str>, foldhash::fast::RandomState> = HashSet::default();
    export::read(
        source_name,
        input,
        context.filter,
        |line, user: Auth0User<'_>| {
            context.counters.auth0_users.fetch_add(1, Ordering::Relaxed);
            joined.summary.auth0_users += 1;
            if user.migrated {
                joined.migrated_users += 1;
            }
            let duplicate = || ReconcileError::DuplicateAuth0User {
                line,
                user_id: user.auth0_id.to_owned(),
            };
            match table.get_mut(user.legacy_id) {
                Some(slot) => {
                    let record = slot.take().ok_or_else(duplicate)?;
                    joined.match_user(context, &record.view(), &user);
                }
                None => {
                    if !unmatched.insert(user.legacy_id.into()) {
                        return Err(duplicate());
                    }
                    let verdict = classify::classify(context.fields, None, Some(&user), None);
                    let plan = (verdict.status == Status::Orphaned
                        && context.orphans == OrphanAction::Block)
                        .then(|| block_plan(&user.profile));
                    joined.record(user.auth0_id, user.legacy_id, verdict, plan);
                }
            }
            Ok(())
        },
    )?;
    for (legacy_id, slot) in &table {
        if let Some(record) = slot {
            let verdict = classify::classify(context.fields, Some(&record.view()), None, None);
            let auth0_id = format!("{USER_ID_PREFIX}{legacy_id}");
            joined.record(&auth0_id, legacy_id, verdict, None);
        }
    }
    Ok(joined)
}

impl Joined {
    pub fn new() -> Joined {
        Joined {
            summary: Summary::default(),
            users: Vec::new(),
            planned: Vec::new(),
            baseline_changes: BaselineWrites::default(),
            migrated_users: 0,
        }
    }

    /// Classifies a user present on both sides, collects its baselines and plans its push.
    pub fn match_user(
        &mut self,
        context: &JoinContext<'_>,
        legacy: &LegacyView<'_>,
        user: &Auth0User<'_>,
    ) {
        let stored = context.baselines.get(user.legacy_id);
        let stored = stored.as_deref();
        let verdict = classify::classify(context.fields, Some(legacy), Some(user), stored);
        collect_baselines(
            &mut self.baseline_changes,
            user.legacy_id,
            &verdict.keys,
            stored,
            context.fields,
        );
        let plan = (verdict.status == Status::Stranded).then(|| {
            let changed: Vec<&KeyValues> = verdict
                .legacy_changed
                .iter()
                .map(|&index| &verdict.keys[index])
                .collect();
            plan::plan_user(&changed, &legacy.profile, &user.profile, context.policy)
        });
        self.record(user.auth0_id, user.legacy_id, verdict, plan);
    }

    pub fn record(
        &mut self,
        auth0_id: &str,
        legacy_id: &str,
        verdict: Verdict,
        plan: Option<UserPlan>,
    ) {
        self.summary.count(verdict.status);
        if matches!(verdict.status, Status::InSync | Status::NotMigrated) {
            return;
        }
        let mut needs_action = verdict.status.needs_action();
        let (state, error) = match &plan {
            Some(plan) if !plan.bodies.is_empty() => (PushState::Planned, None),
            Some(plan) if !plan.refused.is_empty() => (
                PushState::Skipped,
                Some(format!(
                    "Auth0 does not accept {} for this user: change it in Auth0 by hand",
                    plan.refused
                        .iter()
                        .map(|field| field.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            ),
            Some(_) => {
                // A plan with nothing to send: the change is already in effect (an orphan
                // that is blocked already).
                needs_action = false;
                (PushState::Skipped, None)
            }
            None => (PushState::Skipped, None),
        };
        self.users.push(UserEntry {
            user_id: auth0_id.to_owned(),
            status: verdict.status,
            origin: verdict.origin,
            fields: verdict.diffs,
            push: PushOutcome { state, error },
            needs_action,
        });
        if let Some(plan) = plan.filter(|plan| !plan.bodies.is_empty()) {
            self.planned.push(Planned {
                auth0_id: auth0_id.to_owned(),
                legacy_id: legacy_id.to_owned(),
                plan,
            });
        }
    }
}

/// `orphans = "block"`: block a migrated user whose legacy row is gone, unless already blocked.
fn block_plan(auth0: &Profile<'_>) -> UserPlan {
    let blocked = matches!(
        auth0.get(Field::Blocked),
        Some(crate::profile::Value::Bool(true))
    );
    let mut body = serde_json::Map::new();
    if !blocked {
        body.insert("blocked".into(), serde_json::Value::Bool(true));
    }
    UserPlan {
        bodies: if body.is_empty() {
            Vec::new()
        } else {
            vec![body]
        },
        keys: Vec::new(),
        refused: Vec::new(),
    }
}

/// Computes the user's new baseline set: agreeing keys take the agreed value, differing keys
/// keep what is stored, metadata keys that neither side has any more are forgotten. Only a set
/// that changed is recorded.
fn collect_baselines(
    changes: &mut BaselineWrites,
    legacy_id: &str,
    keys: &[KeyValues],
    stored: Option<&[(String, i64)]>,
    fields: &[Field],
) {
    let stored = stored.unwrap_or_default();
    if unchanged(keys, stored, fields) {
        return;
    }
    let mut entries: Vec<(String, i64)> = stored.to_vec();
    for key in keys.iter().filter(|key| !key.differs()) {
        let position = entries.iter().position(|(name, _)| *name == key.key);
        if key.legacy == baseline::no_value() && key.key.contains('.') {
            // A metadata key absent on both sides needs no baseline.
            if let Some(position) = position {
                entries.swap_remove(position);
            }
            continue;
        }
        match position {
            Some(position) => entries[position].1 = key.legacy,
            None => entries.push((key.key.to_string(), key.legacy)),
        }
    }
    // Stored metadata keys of compared fields that are no longer among the keys at all.
    entries.retain(|(name, _)| match name.split_once('.') {
        Some((field, _)) if fields.iter().any(|f| f.name() == field) => {
            keys.iter().any(|key| key.key == *name)
        }
        _ => true,
    });
    entries.sort_unstable();
    let mut before = stored.to_vec();
    before.sort_unstable();
    if entries != before {
        changes.insert(legacy_id.into(), state::pack(&entries));
    }
}

/// Whether the stored set already holds every agreeing key with its value and nothing to
/// forget: the common case of every run after the first, checked without allocating.
fn unchanged(keys: &[KeyValues], stored: &[(String, i64)], fields: &[Field]) -> bool {
    let agreed_match = keys.iter().filter(|key| !key.differs()).all(|key| {
        let found = stored.iter().find(|(name, _)| *name == key.key);
        if key.legacy == baseline::no_value() && key.key.contains('.') {
            found.is_none()
        } else {
            found.is_some_and(|(_, hash)| *hash == key.legacy)
        }
    });
    let nothing_stale = stored.iter().all(|(name, _)| match name.split_once('.') {
        Some((field, _)) if fields.iter().any(|f| f.name() == field) => {
            keys.iter().any(|key| key.key == *name)
        }
        _ => true,
    });
    agreed_match && nothing_stale
}

/// Sets the baselines of pushed keys for a user, on top of this run's other changes.
pub fn record_pushed(
    changes: &mut BaselineWrites,
    stored: &Baselines,
    legacy_id: &str,
    pushed: &[(String, i64)],
) {
    let mut entries = match changes.get(legacy_id) {
        Some(packed) => state::unpack(packed),
        None => stored.get(legacy_id).unwrap_or_default(),
    };
    for (key, hash) in pushed {
        match entries.iter_mut().find(|(name, _)| name == key) {
            Some(entry) => entry.1 = *hash,
            None => entries.push((key.clone(), *hash)),
        }
    }
    entries.sort_unstable();
    changes.insert(legacy_id.into(), state::pack(&entries));
}
