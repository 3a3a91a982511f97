//! One thread's share of a pass: the verdicts, report entries, pushes and new baseline sets of
//! the users it classified, merged into one at the end. The rules themselves live in the model
//! (`classify`, `baseline::next_set`, `plan::for_verdict`) and the report (`UserEntry::of`); this
//! file only collects their results in the pass's memory layout.

use crate::model::baseline::{self, PackedBaselines};
use crate::model::classify::{self, Verdict};
use crate::model::plan::{self, Push};
use crate::model::profile::{Auth0User, LegacyView};
use crate::model::progress::Examples;
use crate::report::{Summary, UserEntry};

use super::Context;
use super::table::{MissingRef, NewSetRef};
use super::writes::BaselineWrites;

#[derive(Default)]
pub struct Joined {
    pub summary: Summary,
    pub users: Vec<UserEntry>,
    pub planned: Vec<Push>,
    /// New baseline sets of the users whose set changed, when the caller collects them here
    /// (a full run keeps them in its [`LegacyTable`]); users with a planned push are not among
    /// them: their sets travel with the plan.
    pub baseline_changes: BaselineWrites,
    /// Auth0 users a push may change: migrated ones, and cached ones when the connection lets
    /// the API change their root attributes (the fraction guard's denominator).
    pub pushable_users: u64,
    /// Legacy users matched with a migrated Auth0 profile.
    pub migrated: u64,
    /// A few ids of each status that blocks the cutover.
    pub examples: Examples,
    /// The not-migrated users by inactivity, when the query returns `last_active_at`.
    pub inactivity: Option<[u64; 6]>,
    /// Where the new baseline sets kept in the [`LegacyTable`] are.
    pub new_sets: Vec<NewSetRef>,
    /// Lines whose legacy row was not in yet, with their numbers.
    pub(super) parked: Vec<(u64, Box<[u8]>)>,
    /// Auth0 users without a legacy row, classified once the join is over: their evidence
    /// (a set an earlier run stored) is found for all of them in one pass over the sets.
    pub(super) without_row: Vec<WithoutRow>,
}

/// What the verdict on an Auth0 user without a legacy row needs; its id stays in the table
/// (no allocation per user on the workers: a thousand small ones each outlive the join in
/// their thread's heap).
#[derive(Debug, Clone, Copy)]
pub(super) struct WithoutRow {
    pub at: MissingRef,
    pub migrated: bool,
    pub blocked: bool,
}

impl Joined {
    pub fn new() -> Joined {
        Joined::default()
    }

    pub(super) fn merge(&mut self, other: &mut Joined) {
        self.summary.merge(&other.summary);
        move_over(&mut self.users, &mut other.users);
        self.planned.append(&mut other.planned);
        self.baseline_changes.append(&mut other.baseline_changes);
        self.pushable_users += other.pushable_users;
        self.migrated += other.migrated;
        move_over(&mut self.new_sets, &mut other.new_sets);
        self.parked.append(&mut other.parked);
        self.without_row.append(&mut other.without_row);
    }
}

impl Joined {
    /// Classifies a user present on both sides and plans its push; returns the user's new
    /// baseline set, packed, when it changed and no push is planned (a planned user's set
    /// travels with its push, to be written after it).
    #[must_use]
    pub fn match_user(
        &mut self,
        context: &Context<'_>,
        legacy: &LegacyView<'_>,
        stored: Option<PackedBaselines<'_>>,
        user: &Auth0User<'_>,
    ) -> Option<Box<[u8]>> {
        let stored = stored.unwrap_or_default();
        self.migrated += u64::from(user.migrated);
        let verdict = classify::classify(&context.rules, Some(legacy), Some(user), Some(stored));
        let mut push = plan::for_verdict(
            &verdict,
            user,
            Some(&legacy.profile),
            context.policy,
            context.orphans,
        );
        if context.review
            && let Some(push) = push.as_mut()
        {
            push.review = Some(Box::new(plan::review(&verdict, &user.profile, push)));
        }
        let seen = baseline::Seen::of(user.migrated);
        let new_set = baseline::next_set(&verdict.keys, stored, context.rules.fields, seen);
        if push.as_ref().is_some_and(Push::sends) {
            let set = new_set.unwrap_or_else(|| stored.0.into());
            self.record(user.auth0_id, verdict, push, Some(set));
            None
        } else {
            self.record(user.auth0_id, verdict, push, None);
            new_set
        }
    }

    /// Counts a verdict, lists the user when its status is listed, and keeps its push.
    /// `baselines` is the set a push's keys are added to once applied (`None`: nothing to
    /// write).
    pub fn record(
        &mut self,
        auth0_id: &str,
        verdict: Verdict,
        push: Option<Push>,
        baselines: Option<Box<[u8]>>,
    ) {
        self.summary.count(verdict.status);
        if !verdict.status.is_listed() {
            return;
        }
        self.users
            .push(UserEntry::of(auth0_id, verdict, push.as_ref()));
        if let Some(mut push) = push.filter(Push::sends) {
            push.baselines = baselines;
            self.planned.push(push);
        }
    }
}

/// Moves every element of `from` into `into` a slice at a time, handing `from`'s memory back as
/// it goes: a plain `append` holds both copies of a worker's part at once (a hundred megabytes
/// more at the peak of a ten-million-user run). The order is not kept; both lists are sorted
/// later.
fn move_over<T>(into: &mut Vec<T>, from: &mut Vec<T>) {
    const SLICE: usize = 1 << 16;
    into.reserve(from.len());
    while !from.is_empty() {
        let rest = from.len().saturating_sub(SLICE);
        into.extend(from.drain(rest..));
        from.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_over_moves_every_element_and_frees_the_source() {
        let mut into: Vec<u32> = (0..10).collect();
        let mut from: Vec<u32> = (10..200_000).collect();
        move_over(&mut into, &mut from);
        assert!(from.is_empty());
        assert_eq!(from.capacity(), 0);
        into.sort_unstable();
        assert_eq!(into, (0..200_000).collect::<Vec<_>>());
    }
}
