//! The push phase of a run: the fraction guard, then the journaled apply of every planned
//! push that the recovery of a stopped run did not find in effect already; each outcome goes
//! into its user's report entry, and an applied push's keys into its baseline set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth0::Auth0Client;
use crate::model::guard::{self, Refusal};
use crate::model::plan::Push;
use crate::model::saved_plan::{PlannedUser, SavedPlan};
use crate::report::{PushState, Summary, UserEntry};
use crate::state::StateStore;

use super::apply::{self, Outcome};
use super::{RunError, RunOptions};

/// The push step of a run: the fraction guard, then the journaled apply; outcomes go into the
/// report entries, and the baselines of applied keys into the plans' sets. Returns the
/// `Interrupted` error to raise once the baselines are written, when a signal stopped it.
pub(super) struct PushPhase<'a> {
    pub client: &'a Arc<Auth0Client>,
    pub store: &'a Arc<Mutex<StateStore>>,
    pub run_id: &'a str,
    pub options: &'a RunOptions,
    /// `max_push_fraction` for this run.
    pub limit: f64,
    /// Profiles read while resolving a stopped run's journal entries (see [`apply::Recovered`]).
    pub recovered: &'a HashMap<String, serde_json::Value>,
    /// The saved plan being applied: only its users' pushes are sent, and only while their
    /// users are what it saw.
    pub plan: Option<&'a SavedPlan>,
}

impl PushPhase<'_> {
    pub async fn run(
        &self,
        users: &mut [UserEntry],
        summary: &mut Summary,
        planned: &mut [Push],
        pushable_users: u64,
    ) -> Result<Option<RunError>, RunError> {
        // Users are sorted by id now: find each plan's report entry once (entry → plan).
        let mut by_index: HashMap<usize, usize> = planned
            .iter()
            .enumerate()
            .filter_map(|(plan_index, planned)| {
                let index = users
                    .binary_search_by(|user| user.user_id.as_str().cmp(&planned.auth0_id))
                    .ok()?;
                Some((index, plan_index))
            })
            .collect();
        if let Some(plan) = self.plan {
            keep_the_plan(plan, users, planned, &mut by_index);
        }
        if let Err(refusal) =
            guard::check_fraction(by_index.len() as u64, pushable_users, self.limit)
        {
            refuse(users, by_index.keys().copied(), &refusal);
            return Ok(None);
        }
        // A request the stopped run sent may have landed after the export this run read was
        // taken: what the fresher profile read while resolving its journal entry already
        // shows is not sent again.
        // (report index, plan index) pairs.
        let (in_effect, to_send): (Vec<_>, Vec<_>) = by_index
            .iter()
            .map(|(&index, &plan_index)| (index, plan_index))
            .partition(|&(_, plan_index)| {
                let push = &planned[plan_index];
                self.recovered.get(&push.auth0_id).is_some_and(|profile| {
                    push.bodies
                        .iter()
                        .all(|body| apply::is_in_effect(&body.to_json(), profile))
                })
            });
        if !in_effect.is_empty() {
            tracing::info!(
                users = in_effect.len(),
                "changes a stopped run's requests already made are not sent again"
            );
        }
        let started = Instant::now();
        let pushes = to_send
            .iter()
            .map(|&(index, plan_index)| (index, &planned[plan_index]))
            .collect();
        let mut outcomes = apply::apply(
            self.client.clone(),
            self.store.clone(),
            self.run_id,
            pushes,
            self.options.concurrency,
            self.options.stop.clone(),
        )
        .await?;
        outcomes.extend(
            in_effect
                .iter()
                .map(|&(index, _)| (index, Outcome::Applied)),
        );
        let (mut applied, mut not_sent) = (0, 0);
        for (index, outcome) in outcomes {
            let user = &mut users[index];
            match outcome {
                Outcome::Applied => {
                    user.push.state = PushState::Applied;
                    user.needs_action = false;
                    summary.pushed += 1;
                    applied += 1;
                    if let Some(&plan_index) = by_index.get(&index) {
                        planned[plan_index].record_applied();
                    }
                }
                Outcome::Failed(error) => {
                    user.push.state = PushState::Failed;
                    user.push.error = Some(error);
                    summary.push_failed += 1;
                }
                Outcome::NotSent(reason) => {
                    user.push.state = PushState::Skipped;
                    user.push.error = Some(reason);
                    not_sent += 1;
                }
            }
        }
        crate::metrics::pushes(applied, summary.push_failed);
        let stats = self.client.stats();
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            applied,
            failed = summary.push_failed,
            throttled = stats.throttled,
            seconds = format!("{seconds:.2}"),
            users_per_second = format!("{:.2}", applied as f64 / seconds.max(1e-9)),
            "push finished"
        );
        Ok(self
            .options
            .stop
            .is_cancelled()
            .then_some(RunError::Interrupted { applied, not_sent }))
    }
}

/// Marks every planned push as not sent, with the guard's reason, and says it loudly.
fn refuse(users: &mut [UserEntry], planned: impl Iterator<Item = usize>, refusal: &Refusal) {
    tracing::error!("{refusal}");
    for index in planned {
        users[index].push.state = PushState::Skipped;
        users[index].push.error =
            Some("not sent: the push was refused by reconcile.max_push_fraction".into());
    }
}

/// Keeps in `by_index` (report index → push index) only the pushes an applied plan holds and
/// that still hold: the others are reported not sent, `superseded` when their user changed.
fn keep_the_plan(
    plan: &SavedPlan,
    users: &mut [UserEntry],
    planned: &[Push],
    by_index: &mut HashMap<usize, usize>,
) {
    let entries: HashMap<&str, &PlannedUser> = plan
        .users
        .iter()
        .map(|user| (user.user_id.as_str(), user))
        .collect();
    by_index.retain(|&index, &mut plan_index| {
        let push = &planned[plan_index];
        let (state, error) = match entries.get(push.auth0_id.as_str()) {
            None => (
                PushState::Skipped,
                "not sent: not in the plan being applied".to_owned(),
            ),
            Some(entry) => match entry.still_holds(push) {
                None => return true,
                Some(reason) => (PushState::Superseded, reason),
            },
        };
        users[index].push.state = state;
        users[index].push.error = Some(error);
        false
    });
}
