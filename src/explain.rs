//! `driftsync explain USER_ID`: why one user has the status it has. Reads the user's legacy row
//! (the mapping query restricted to that id, in a `READ ONLY` transaction), its Auth0 profile
//! (`GET /api/v2/users/{id}`, or the export file), and its stored baseline set; classifies it
//! with the very rules of a run (`model::trace`) and shows every compared key — both values,
//! whether they are equal and by which rule, what the baseline says — then the verdict and the
//! PATCH bodies a push would send. With `--push` it sends this user's push now, journaled like
//! a run's push (provision on demand).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::bail;
use serde::Serialize;
use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;

use crate::auth0::Auth0Client;
use crate::config::{Config, Environment};
use crate::model::baseline::{PackedBaselines, Seen};
use crate::model::classify::{self, Origin, Status, Verdict};
use crate::model::plan::{self, Push};
use crate::model::profile::{
    Auth0User, Field, LegacyRecord, LegacyView, Profile, USER_ID_PREFIX, Value,
};
use crate::model::trace::{self, KeyTrace};
use crate::run::apply::{self, Outcome};
use crate::run::connection::{Auth0Access, Classifying};
use crate::run::with_store;
use crate::sources::export::{self, ExportError};
use crate::sources::legacy;
use crate::state::StateStore;

/// What `driftsync explain` was asked.
pub struct Options {
    /// The user, with or without `auth0|`.
    pub user_id: String,
    /// Send the user's push now.
    pub push: bool,
    /// Read the Auth0 profile from this export file instead of the Management API.
    pub cache_file: Option<PathBuf>,
    pub json: bool,
}

/// What the explanation found, for the exit code.
pub struct Explained {
    /// The user still needs someone (as for `reconcile`'s exit code 2).
    pub needs_action: bool,
}

/// The explanation as `--format json` writes it.
#[derive(Serialize)]
struct Explanation {
    user_id: String,
    legacy_id: String,
    /// The legacy row's compared values, `null` when the query returns no row for the id.
    legacy: Option<serde_json::Map<String, Json>>,
    /// The Auth0 profile's compared values, `null` when there is no such user.
    auth0: Option<serde_json::Map<String, Json>>,
    migrated: Option<bool>,
    /// The stored baseline set: what the last run that matched the user saw of it, and its
    /// keys; `null` without one.
    baseline: Option<Json>,
    fields: Vec<KeyTrace>,
    status: Status,
    origin: Option<Origin>,
    /// The PATCH bodies a push sends, in order.
    push_bodies: Vec<Json>,
    /// Root fields the legacy side changed that Auth0 does not accept for this user.
    push_refused: Vec<Field>,
    /// What `--push` did: `applied`, `failed` or `not_sent`, with Auth0's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pushed: Option<Json>,
}

pub async fn run(
    config: &Config,
    options: &Options,
    env: &dyn Environment,
    out: &mut dyn Write,
) -> anyhow::Result<Explained> {
    let legacy_id = options
        .user_id
        .strip_prefix(USER_ID_PREFIX)
        .unwrap_or(&options.user_id)
        .to_owned();
    if legacy_id.is_empty() {
        bail!("explain needs a user id (with or without `{USER_ID_PREFIX}`)");
    }
    let auth0_id = format!("{USER_ID_PREFIX}{legacy_id}");
    let (record, fields) = legacy_row(config, &legacy_id).await?;
    let auth0 = auth0_side(config, options, env, &auth0_id, fields).await?;
    let store = if config.state.path.exists() || options.push {
        Some(Arc::new(Mutex::new(StateStore::open(&config.state.path)?)))
    } else {
        // Explaining alone never creates the state file.
        None
    };
    let stored: Option<Box<[u8]>> = match &store {
        Some(store) => with_store(store, |store| store.baselines_of([legacy_id.as_str()]))?
            .get(&legacy_id)
            .map(|set| set.0.into()),
        None => None,
    };
    let user = User {
        auth0_id: &auth0_id,
        legacy_id: &legacy_id,
        legacy: record.as_ref().map(LegacyRecord::view),
        stored: stored.as_deref().map(PackedBaselines),
    };
    let Some((mut explanation, push)) = user.explain(&auth0)? else {
        bail!(
            "user {legacy_id:?} exists on neither side: the mapping query returns no row with \
             user_id = {legacy_id:?}, and the connection {:?} has no Auth0 user {auth0_id:?}{}",
            config.auth0.connection,
            match &auth0.file {
                Some(path) => format!(" in {}", path.display()),
                None => String::new(),
            }
        );
    };

    let mut needs_action = explanation.status.needs_action();
    if options.push {
        explanation.pushed = Some(match (push, &auth0.client, &store) {
            (Some(push), Some(client), Some(store)) => {
                let outcome = push_one(client, store, push).await?;
                needs_action &= !matches!(outcome, Outcome::Applied);
                match outcome {
                    Outcome::Applied => json!({"state": "applied"}),
                    Outcome::Failed(error) => json!({"state": "failed", "error": error}),
                    Outcome::NotSent(reason) => json!({"state": "not_sent", "error": reason}),
                }
            }
            _ => json!({"state": "not_sent", "error": "nothing to push for this user"}),
        });
    }
    render(&explanation, options.json, out)?;
    Ok(Explained { needs_action })
}

/// The user's legacy row (the mapping query restricted to its id, read only), and the
/// compared fields.
async fn legacy_row(
    config: &Config,
    legacy_id: &str,
) -> anyhow::Result<(Option<LegacyRecord>, Vec<Field>)> {
    let mut db = legacy::connect(&config.legacy.target).await?;
    let columns = legacy::describe(&mut db, &config.legacy.query).await?;
    let fields = match &config.reconcile.fields {
        Some(fields) => fields.clone(),
        None => columns.fields(),
    };
    let mut record = None;
    legacy::stream_one(
        &mut db,
        &config.legacy.query,
        legacy_id,
        &fields,
        |_, row| {
            record = Some(LegacyRecord::from_packed(row.record));
            Ok(())
        },
    )
    .await?;
    Ok((record, fields))
}

/// What explain knows of the Auth0 side: the connection's rules, the client (when the profile
/// or the connection is read through the Management API, or to push), and the user's profile
/// as an export line.
struct Auth0Side {
    classifying: Classifying,
    client: Option<Arc<Auth0Client>>,
    /// The export file the profile came from, if any.
    file: Option<PathBuf>,
    line: Option<Vec<u8>>,
}

async fn auth0_side(
    config: &Config,
    options: &Options,
    env: &dyn Environment,
    auth0_id: &str,
    fields: Vec<Field>,
) -> anyhow::Result<Auth0Side> {
    let access = Auth0Access::open(
        config,
        env,
        options.cache_file.as_deref(),
        "explain (without --cache-file)",
        options.push,
    )
    .await?;
    let Auth0Access {
        client,
        facts,
        file,
        ..
    } = access;
    let classifying = Classifying::new(config, facts, fields);
    let line = match (&file, &client) {
        (Some(path), _) => line_from_file(path, auth0_id, &classifying)?,
        (None, Some(client)) => client
            .user(auth0_id)
            .await?
            .map(|profile| profile.to_string().into_bytes()),
        (None, None) => None,
    };
    Ok(Auth0Side {
        classifying,
        client,
        file,
        line,
    })
}

/// The user, as read from the legacy side and the state file.
struct User<'a> {
    auth0_id: &'a str,
    legacy_id: &'a str,
    legacy: Option<LegacyView<'a>>,
    stored: Option<PackedBaselines<'a>>,
}

impl User<'_> {
    /// Classifies the user with a run's rules and explains it; `None` when it is on neither
    /// side. Also returns the push a run would plan for it.
    fn explain(&self, auth0: &Auth0Side) -> anyhow::Result<Option<(Explanation, Option<Push>)>> {
        let context = auth0.classifying.context();
        let mut found = None;
        if let Some(line) = &auth0.line {
            let source = format!("the Auth0 profile of {}", self.auth0_id);
            let filter = &auth0.classifying.filter;
            export::read::<ExportError>(&source, line.as_slice(), filter, |_, user| {
                let (verdict, keys) = match &self.legacy {
                    Some(legacy) => {
                        let trace = trace::trace(&context.rules, legacy, &user, self.stored);
                        (trace.verdict, trace.keys)
                    }
                    None => (
                        classify::classify(&context.rules, None, Some(&user), self.stored),
                        Vec::new(),
                    ),
                };
                let legacy_profile = self.legacy.as_ref().map(|legacy| &legacy.profile);
                let push = plan::for_verdict(
                    &verdict,
                    &user,
                    legacy_profile,
                    context.policy,
                    context.orphans,
                );
                let sides = (legacy_profile, Some(&user));
                let explanation = self.describe(auth0, sides, verdict, keys, push.as_ref());
                found = Some((explanation, push.filter(Push::sends)));
                Ok(())
            })?;
        }
        Ok(match (found, &self.legacy) {
            (Some(found), _) => Some(found),
            (None, Some(legacy)) => {
                let verdict = classify::classify(&context.rules, Some(legacy), None, self.stored);
                let sides = (Some(&legacy.profile), None);
                Some((self.describe(auth0, sides, verdict, Vec::new(), None), None))
            }
            (None, None) => None,
        })
    }
    /// The explanation of the user on one side or both.
    fn describe(
        &self,
        auth0: &Auth0Side,
        (legacy, auth0_user): (Option<&Profile<'_>>, Option<&Auth0User<'_>>),
        verdict: Verdict,
        keys: Vec<KeyTrace>,
        push: Option<&Push>,
    ) -> Explanation {
        let fields = &auth0.classifying.fields;
        let values = |profile: &Profile<'_>| {
            let mut map = serde_json::Map::new();
            for &field in fields {
                let value = match profile.get(field) {
                    Some(Value::Text(text)) => Json::String(text.to_string()),
                    Some(Value::Bool(value)) => Json::Bool(*value),
                    Some(Value::Object(text)) => serde_json::from_str(text).unwrap_or(Json::Null),
                    None => Json::Null,
                };
                map.insert(field.name().to_owned(), value);
            }
            map
        };
        let baseline = self.stored.filter(|set| !set.is_empty()).map(|set| {
            let seen = match set.seen() {
                Some(Seen::Migrated) => "migrated",
                Some(Seen::Cached) => "cached",
                Some(Seen::Unknown) | None => "unknown",
            };
            let keys: Vec<String> = set.entries().into_iter().map(|(key, _)| key).collect();
            json!({"seen": seen, "keys": keys})
        });
        Explanation {
            user_id: self.auth0_id.to_owned(),
            legacy_id: self.legacy_id.to_owned(),
            legacy: legacy.map(values),
            auth0: auth0_user.map(|user| values(&user.profile)),
            migrated: auth0_user.map(|user| user.migrated),
            baseline,
            fields: keys,
            status: verdict.status,
            origin: verdict.origin,
            push_bodies: push
                .map(|push| push.bodies.iter().map(|body| body.to_json()).collect())
                .unwrap_or_default(),
            push_refused: push.map(|push| push.refused.clone()).unwrap_or_default(),
            pushed: None,
        }
    }
}

/// The user's line in the export file, kept minimal (the attributes a run reads).
fn line_from_file(
    path: &std::path::Path,
    auth0_id: &str,
    classifying: &Classifying,
) -> anyhow::Result<Option<Vec<u8>>> {
    let input = export::open_file(path)?;
    let context = classifying.context();
    let mut found = None;
    export::read::<ExportError>(
        &path.display().to_string(),
        input,
        &classifying.filter,
        |_, user| {
            if user.auth0_id == auth0_id {
                found = Some(export::minimal_line(
                    &user,
                    context.kept,
                    &classifying.filter,
                ));
            }
            Ok(())
        },
    )?;
    Ok(found)
}

/// Sends one user's push, journaled exactly like a run's: a stopped push of an earlier process
/// is resolved first, the run is recorded (kind `explain`, which moves no watermark), and the
/// applied keys become the user's baselines.
async fn push_one(
    client: &Arc<Auth0Client>,
    store: &Arc<Mutex<StateStore>>,
    mut push: Push,
) -> anyhow::Result<Outcome> {
    apply::recover(client, store).await?;
    let run_id = crate::run::new_run_id();
    let now = crate::timestamp::now_rfc3339();
    with_store(store, |store| {
        store.start_run(&run_id, "explain", "push", &now)
    })?;
    let outcomes = apply::apply(
        client.clone(),
        store.clone(),
        &run_id,
        vec![(0, &push)],
        1,
        CancellationToken::new(),
    )
    .await;
    let outcome = match outcomes {
        Ok(mut outcomes) => outcomes.pop().map_or(
            Outcome::NotSent("the push was not attempted".into()),
            |(_, outcome)| outcome,
        ),
        Err(error) => {
            let now = crate::timestamp::now_rfc3339();
            with_store(store, |store| store.finish_run(&run_id, "failed", &now, ""))?;
            return Err(error.into());
        }
    };
    if matches!(outcome, Outcome::Applied) {
        push.record_applied();
        if let Some(set) = &push.baselines {
            with_store(store, |store| {
                store.write_baselines([(push.legacy_id.as_str(), &set[..])])
            })?;
        }
    }
    let now = crate::timestamp::now_rfc3339();
    with_store(store, |store| {
        store.finish_run(&run_id, "success", &now, "")
    })?;
    Ok(outcome)
}

fn render(explanation: &Explanation, as_json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if as_json {
        serde_json::to_writer_pretty(&mut *out, explanation)?;
        writeln!(out)?;
        return Ok(());
    }
    let e = explanation;
    let side = |present: bool| if present { "found" } else { "none" };
    writeln!(out, "user {} (legacy user_id {:?})", e.user_id, e.legacy_id)?;
    writeln!(
        out,
        "legacy row: {}; Auth0 profile: {}{}",
        side(e.legacy.is_some()),
        side(e.auth0.is_some()),
        match e.migrated {
            Some(true) => " (migrated)",
            Some(false) => " (cached, not migrated)",
            None => "",
        }
    )?;
    match &e.baseline {
        Some(baseline) => writeln!(
            out,
            "stored baseline: {} keys, from a run that saw the user {}",
            baseline["keys"].as_array().map_or(0, Vec::len),
            baseline["seen"].as_str().unwrap_or("unknown")
        )?,
        None => writeln!(
            out,
            "stored baseline: none (no earlier run matched this user)"
        )?,
    }
    if !e.fields.is_empty() {
        writeln!(out)?;
        let rows: Vec<[String; 6]> = e
            .fields
            .iter()
            .map(|key| {
                [
                    key.key.clone(),
                    cell(&key.legacy),
                    cell(&key.auth0),
                    if key.equal { "yes" } else { "no" }.to_owned(),
                    serde_json::to_value(key.rule)
                        .ok()
                        .and_then(|rule| rule.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    match (key.baseline, key.changed) {
                        (_, Some(changed)) => format!("stored; {changed} changed"),
                        (true, None) => "stored".to_owned(),
                        (false, None) => "-".to_owned(),
                    },
                ]
            })
            .collect();
        let header = ["KEY", "LEGACY", "AUTH0", "EQUAL", "RULE", "BASELINE"];
        let widths: Vec<usize> = (0..6)
            .map(|i| {
                rows.iter()
                    .map(|row| row[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[&str]| {
            cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        writeln!(out, "{}", line(&header))?;
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            writeln!(out, "{}", line(&cells))?;
        }
    }
    writeln!(out)?;
    let origin = match e.origin {
        Some(Origin::Baseline) => " (decided by the stored baseline)",
        Some(Origin::Timestamp) => " (decided by the legacy updated_at against the migration time)",
        Some(Origin::Assumed) => " (no baseline and no timestamps: the legacy side is assumed)",
        None => "",
    };
    writeln!(
        out,
        "status: {}{origin}\n  {}",
        e.status,
        crate::report::explain(e.status)
    )?;
    if e.push_bodies.is_empty() {
        writeln!(out, "push: nothing to send")?;
    }
    for body in &e.push_bodies {
        writeln!(out, "push: PATCH /api/v2/users/{} {body}", e.user_id)?;
    }
    if !e.push_refused.is_empty() {
        let names: Vec<&str> = e.push_refused.iter().map(|field| field.name()).collect();
        writeln!(
            out,
            "not pushable: Auth0 does not accept {} for this user",
            names.join(", ")
        )?;
    }
    if let Some(pushed) = &e.pushed {
        writeln!(
            out,
            "pushed: {}{}",
            pushed["state"].as_str().unwrap_or(""),
            pushed["error"]
                .as_str()
                .map(|error| format!(": {error}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// A value in a table cell: text bare, everything else as JSON, cut to 40 characters.
fn cell(value: &Json) -> String {
    let text = match value {
        Json::Null => "-".to_owned(),
        Json::String(text) => text.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 40 {
        let cut: String = text.chars().take(39).collect();
        format!("{cut}…")
    } else {
        text
    }
}
