//! What every run does before and after the engine's pass, in one place for both kinds: the
//! Management API client, the recovery of pushes a stopped run left in flight, the legacy
//! connection and the mapping query's columns ([`Setup`]); then the push phase, the baselines,
//! the report and its file ([`Run::conclude`]).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth0::{Auth0Client, Settings};
use crate::config::{Config, Environment};
use crate::engine::{Classified, Counters, Ticker, rss_mib};
use crate::model::plan::Push;
use crate::model::profile::Field;
use crate::model::saved_plan::{self, PlannedUser, SavedPlan};
use crate::report::{REPORT_VERSION, Report, RunInfo};
use crate::sources::legacy::{self, Columns};
use crate::state::StateStore;
use crate::timestamp;

use super::apply::{self, Recovered};
use super::push::PushPhase;
use super::{Finished, RunError, RunOptions, with_store};

/// One run under way: what it was asked to do, and its record.
pub(super) struct Run<'a> {
    pub config: &'a Config,
    pub options: &'a RunOptions,
    pub store: &'a Arc<Mutex<StateStore>>,
    /// Whether planned pushes are sent (`--push` or `reconcile.push`).
    pub push: bool,
    pub info: RunInfo,
    /// When the run started, for the phase logs.
    pub started: Instant,
}

/// What a run has once it is set up.
pub(super) struct Setup {
    pub client: Option<Arc<Auth0Client>>,
    /// What resolving a stopped run's journal entries found (see [`Recovered`]).
    pub recovered: Recovered,
    pub db: tokio_postgres::Client,
    pub columns: Columns,
    /// The compared fields: `reconcile.fields`, or every field the query returns.
    pub fields: Vec<Field>,
}

impl Setup {
    /// The Management API client (when `why` names a reason the run needs one), the recovery
    /// of pushes a stopped run left in flight (when pushing), the legacy connection and the
    /// mapping query's columns.
    pub async fn new(
        run: &Run<'_>,
        env: &dyn Environment,
        why: Option<&'static str>,
    ) -> Result<Setup, RunError> {
        let client = match why {
            Some(why) => {
                let settings = Settings::from_config(&run.config.auth0, env)
                    .map_err(|source| RunError::ApiSettings { why, source })?;
                Some(Arc::new(Auth0Client::new(settings, run.options.retry)?))
            }
            None => None,
        };
        let mut recovered = Recovered::default();
        if run.push
            && let Some(client) = &client
        {
            recovered = apply::recover(client, run.store).await?;
            if recovered.applied + recovered.superseded > 0 {
                tracing::warn!(
                    applied = recovered.applied,
                    superseded = recovered.superseded,
                    "resolved pushes a stopped run left in flight"
                );
            }
        }
        let config = run.config;
        let mut db = legacy::connect(&config.legacy.target).await?;
        let columns = legacy::describe(&mut db, &config.legacy.query).await?;
        let fields = match &config.reconcile.fields {
            Some(fields) => fields.clone(),
            None => columns.fields(),
        };
        Ok(Setup {
            client,
            recovered,
            db,
            columns,
            fields,
        })
    }
}

impl Run<'_> {
    /// The legacy users and Auth0 users the last successful full run saw, if there was one.
    pub fn last_full_counts(&self) -> Result<Option<(u64, u64)>, RunError> {
        let summary = with_store(self.store, |store| store.last_full_summary())?
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        Ok(summary.map(|summary| {
            let count = |key: &str| summary[key].as_u64().unwrap_or(0);
            (count("legacy_users"), count("auth0_users"))
        }))
    }

    /// The progress line on stderr, when asked for and stderr is a terminal.
    pub fn ticker(&self, counters: impl FnOnce() -> Arc<Counters>) -> Option<Ticker> {
        (self.options.progress && std::io::stderr().is_terminal())
            .then(|| Counters::spawn_ticker(counters()))
    }

    /// Everything after the pass: the push phase (when pushing and something is planned; the
    /// fraction guard counts against `pushable` users), the report and its file, written while
    /// the baselines are, and the Management API's use in the log.
    pub async fn conclude(
        self,
        client: Option<&Arc<Auth0Client>>,
        recovered: &Recovered,
        classified: Classified,
        pushable: u64,
        notes: Vec<String>,
    ) -> Result<Finished, RunError> {
        let Classified {
            mut summary,
            mut users,
            mut pushes,
            baselines,
            ..
        } = classified;
        crate::metrics::rows_read("legacy", summary.legacy_users);
        crate::metrics::rows_read("auth0", summary.auth0_users);
        let mut notes = notes;
        if let Some(plan) = &self.options.plan {
            notes.extend(plan_leftovers(plan, &pushes));
        }
        if let Some(path) = &self.options.save_plan {
            let count = save_plan(self.config, &self.info, path, &pushes)?;
            tracing::info!(users = count, path = %path.display(), "saved the push plan");
        }
        let mut interrupted = None;
        if self.push && !pushes.is_empty() {
            let limit = self
                .options
                .max_push_fraction
                .unwrap_or(self.config.reconcile.max_push_fraction);
            let client = client.ok_or(RunError::Internal("a push without an Auth0 client"))?;
            let phase = PushPhase {
                client,
                store: self.store,
                run_id: &self.info.id,
                options: self.options,
                limit,
                recovered: &recovered.profiles,
                plan: self.options.plan.as_deref(),
            };
            interrupted = phase
                .run(&mut users, &mut summary, &mut pushes, pushable)
                .await?;
        }
        let started = self.started;
        let mut info = self.info;
        info.finished_at = timestamp::now_rfc3339();
        let report = Report {
            version: REPORT_VERSION,
            run: info,
            summary,
            users,
            notes,
        };
        // The report file is written while the baselines are: neither waits for the other,
        // and the file only takes its name once the whole run has succeeded.
        let (changed, report_file) = std::thread::scope(|scope| {
            let rendering = self.options.report_file.as_ref().map(|(path, format)| {
                let report = &report;
                scope.spawn(move || {
                    crate::report::prepare_atomically(path, crate::private_file::PRIVATE, |out| {
                        report.render(*format, out)
                    })
                    .map_err(|source| RunError::ReportFile {
                        path: path.clone(),
                        source,
                    })
                })
            });
            let changed = with_store(self.store, |store| baselines.write(store, pushes));
            let report_file = rendering.map(|rendering| {
                rendering
                    .join()
                    .unwrap_or_else(|_| Err(RunError::ThreadPanicked("report writer")))
            });
            (changed, report_file)
        });
        let changed = changed?;
        let report_file = report_file.transpose()?;
        if let Some(interrupted) = interrupted {
            return Err(interrupted);
        }
        tracing::info!(
            baselines_changed = changed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            rss_mib = rss_mib(),
            "updated the baselines"
        );
        if let Some(client) = client {
            let stats = client.stats();
            tracing::info!(
                requests = stats.requests,
                throttled = stats.throttled,
                retries = stats.retries,
                "Management API use"
            );
        }
        Ok(Finished {
            report,
            report_file,
            progress: None,
        })
    }
}

/// The users of an applied plan that no push of this run is for: their data changed since the
/// plan was made so that they need no push any more (or a different one). Said in the report's
/// notes and the log.
fn plan_leftovers(plan: &SavedPlan, pushes: &[Push]) -> Option<String> {
    let fresh: std::collections::HashSet<&str> =
        pushes.iter().map(|push| push.auth0_id.as_str()).collect();
    let gone: Vec<&str> = plan
        .users
        .iter()
        .map(|user| user.user_id.as_str())
        .filter(|id| !fresh.contains(id))
        .collect();
    if gone.is_empty() {
        return None;
    }
    let shown: Vec<&str> = gone.iter().take(10).copied().collect();
    let note = format!(
        "{} users of the plan need no push any more (superseded: their data changed since the \
         plan was made): {}{}",
        gone.len(),
        shown.join(", "),
        if gone.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    );
    tracing::warn!("{note}");
    Some(note)
}

/// Writes the run's planned pushes as a plan for review (`reconcile --save-plan FILE`),
/// privately and atomically; returns how many users it holds.
fn save_plan(
    config: &Config,
    run: &RunInfo,
    path: &std::path::Path,
    pushes: &[Push],
) -> Result<usize, RunError> {
    let mut users: Vec<PlannedUser> = pushes
        .iter()
        .filter(|push| push.sends())
        .map(PlannedUser::of)
        .collect();
    users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let count = users.len();
    let plan = SavedPlan {
        format: saved_plan::FORMAT.to_owned(),
        run_id: run.id.clone(),
        made_at: timestamp::now_rfc3339(),
        tenant: plan_tenant(config),
        connection: config.auth0.connection.clone(),
        users,
    };
    crate::report::write_atomically(path, crate::private_file::PRIVATE, |out| {
        serde_json::to_writer_pretty(&mut *out, &plan)?;
        out.write_all(b"\n")
    })
    .map_err(|source| RunError::PlanFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(count)
}

/// The tenant a plan is for: `auth0.domain`, or `auth0.base_url` without one.
pub fn plan_tenant(config: &Config) -> String {
    config
        .auth0
        .domain
        .clone()
        .or_else(|| config.auth0.base_url.clone())
        .unwrap_or_default()
}
