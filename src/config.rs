//! The TOML configuration: its keys (config/driftsync.example.toml), environment overrides and validation.
//!
//! Parsing is strict (unknown keys are errors) and every validation error names the key, so a
//! typo never silently changes what a run compares or pushes. Credentials are not required
//! here: each part that calls Auth0 asks for what it needs when it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::model::plan::{OrphanAction, PushedEmailVerified};
use crate::model::profile::Field;
use crate::model::profile::MigratedRule;
use crate::sources::legacy::{Target, TargetError, TlsSettings};

pub const ENV_LEGACY_URL: &str = "DRIFTSYNC_LEGACY_URL";
pub const ENV_CLIENT_SECRET: &str = "DRIFTSYNC_AUTH0_CLIENT_SECRET";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSource {
    Export,
    File,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    /// `legacy.url` in the file carries a password (see [`Config::permission_warnings`]).
    pub legacy_password_in_file: bool,
    pub legacy: Legacy,
    pub auth0: Auth0,
    pub cache: Cache,
    pub reconcile: Reconcile,
    pub schedule: Option<Schedule>,
    pub metrics: Metrics,
    pub state: State,
    pub cutover: Cutover,
}

/// `[cutover]`: what `driftsync cutover` asks of the last full run.
#[derive(Debug)]
pub struct Cutover {
    /// The last successful full run must have finished at most this many hours ago
    /// (`cutover.max_run_age_hours`, default 48).
    pub max_run_age_hours: u32,
}

#[derive(Debug)]
pub struct Legacy {
    /// Where and how to connect, resolved with libpq's conventions (`legacy.url`,
    /// `legacy.sslmode`, `legacy.sslrootcert`, the `PG*` variables). Its `Debug` and `Display`
    /// leave the password out.
    pub target: Target,
    pub query: String,
}

#[derive(Debug)]
pub struct Auth0 {
    pub domain: Option<String>,
    pub base_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub connection: String,
    pub migrated: MigratedRule,
    /// Timeout of one Management API exchange (`auth0.request_timeout_seconds`).
    pub request_timeout: Duration,
}

#[derive(Debug)]
pub struct Cache {
    pub source: CacheSource,
    pub file: Option<PathBuf>,
    /// How long a users-export job may take (`cache.export_timeout_seconds`).
    pub export_timeout: Duration,
}

#[derive(Debug)]
pub struct Reconcile {
    /// `None`: every field the legacy query returns.
    pub fields: Option<Vec<Field>>,
    /// Root attributes a push may set on migrated users; `None`: the documented default.
    pub push_fields: Option<Vec<Field>>,
    pub push: bool,
    pub max_push_fraction: f64,
    /// A full run stops when its legacy rows or Auth0 users fell by more than this fraction
    /// against the last successful full run.
    pub max_shrink_fraction: f64,
    /// `driftsync apply` refuses a plan older than this (`reconcile.max_plan_age_hours`).
    pub max_plan_age_hours: u32,
    pub orphans: OrphanAction,
    pub pushed_email_verified: PushedEmailVerified,
    /// `verify_email` sent with every pushed email: whether Auth0 mails a verification link.
    pub verify_email: bool,
}

#[derive(Debug)]
pub struct Schedule {
    pub full: String,
    pub changes: Option<String>,
}

#[derive(Debug)]
pub struct Metrics {
    pub listen: SocketAddr,
}

#[derive(Debug)]
pub struct State {
    pub path: PathBuf,
    /// Journal entries that ended are deleted after this many days
    /// (`state.journal_retention_days`, default 30).
    pub journal_retention_days: u32,
    /// Runs are forgotten after this many days (`state.run_history_days`, default 400).
    pub run_history_days: u32,
}

// The file as written; `deny_unknown_fields` everywhere so that a misspelt key is an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    legacy: RawLegacy,
    #[serde(default)]
    auth0: RawAuth0,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    reconcile: RawReconcile,
    schedule: Option<RawSchedule>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    cutover: RawCutover,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCutover {
    max_run_age_hours: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLegacy {
    url: Option<String>,
    query: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth0 {
    domain: Option<String>,
    base_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    connection: Option<String>,
    migrated: Option<String>,
    request_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    source: Option<String>,
    file: Option<PathBuf>,
    export_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    fields: Option<Vec<String>>,
    push_fields: Option<Vec<String>>,
    push: Option<bool>,
    max_push_fraction: Option<f64>,
    max_shrink_fraction: Option<f64>,
    max_plan_age_hours: Option<i64>,
    orphans: Option<String>,
    pushed_email_verified: Option<String>,
    verify_email: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    full: String,
    changes: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<PathBuf>,
    journal_retention_days: Option<i64>,
    run_history_days: Option<i64>,
}

/// Where the environment overrides come from; a parameter so tests need not touch the process
/// environment.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// No environment at all (the demo, which must not pick up a real tenant's secrets).
pub struct NoEnv;

impl Environment for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl Config {
    /// Files with secrets or personal data that group or others can read, each with its fix:
    /// the config file when it holds the legacy password, `auth0.client_secret_file`, and an
    /// existing state file.
    pub fn permission_warnings(&self) -> Vec<String> {
        use crate::private_file::open_to_others;
        let mut warnings = Vec::new();
        if self.legacy_password_in_file
            && let Some(mode) = open_to_others(&self.path)
        {
            let path = self.path.display();
            warnings.push(format!(
                "config file {path} holds the legacy database password (legacy.url) and is \
                 readable by group or others (mode {mode:04o}): chmod 600 {path}, or move the \
                 password to {ENV_LEGACY_URL} or a password file (PGPASSFILE)"
            ));
        }
        if let Some(secret) = &self.auth0.client_secret_file
            && let Some(mode) = open_to_others(secret)
        {
            let path = secret.display();
            warnings.push(format!(
                "auth0.client_secret_file {path} is readable by group or others (mode \
                 {mode:04o}): chmod 600 {path}"
            ));
        }
        if let Some(mode) = open_to_others(&self.state.path) {
            warnings.push(crate::private_file::state_file_warning(
                &self.state.path,
                mode,
            ));
        }
        warnings
    }

    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text, env)
    }

    pub fn parse(path: &Path, text: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: toml_error_message(text, error),
        })?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };

        let url = env
            .var(ENV_LEGACY_URL)
            .or(raw.legacy.url.clone())
            .ok_or_else(|| {
                invalid(
                    "legacy.url",
                    format!("not set: set it here or in the environment variable {ENV_LEGACY_URL}"),
                )
            })?;
        // The URL carries the password, so the error describes the problem without echoing it.
        let tls_keys = TlsSettings {
            sslmode: raw.legacy.sslmode.clone(),
            sslrootcert: raw.legacy.sslrootcert.clone(),
        };
        let target = Target::resolve(&url, &tls_keys, &|name| env.var(name)).map_err(|error| {
            let key = match &error {
                TargetError::SslMode { origin, .. } if origin.contains("config key") => {
                    "legacy.sslmode"
                }
                _ => "legacy.url",
            };
            invalid(key, error.to_string())
        })?;
        if raw.legacy.query.trim().is_empty() {
            return Err(invalid("legacy.query", "is empty".into()));
        }

        let connection = raw
            .auth0
            .connection
            .filter(|name| !name.trim().is_empty())
            .ok_or_else(|| {
                invalid(
                    "auth0.connection",
                    "not set: the name of the custom database connection is required".into(),
                )
            })?;
        let migrated = match raw.auth0.migrated.as_deref() {
            None | Some("import_mode") => MigratedRule::ImportMode,
            Some("always") => MigratedRule::Always,
            Some("never") => MigratedRule::Never,
            Some(other) => match other.strip_prefix("app_metadata.") {
                Some(key) if !key.is_empty() && !key.contains('.') => {
                    MigratedRule::AppMetadataKey(key.to_owned())
                }
                _ => {
                    return Err(invalid(
                        "auth0.migrated",
                        format!(
                            "{other:?} is not one of \"import_mode\", \"always\", \"never\" or \"app_metadata.<key>\""
                        ),
                    ));
                }
            },
        };
        if let Some(base_url) = &raw.auth0.base_url
            && !(base_url.starts_with("https://") || base_url.starts_with("http://"))
        {
            return Err(invalid(
                "auth0.base_url",
                format!("{base_url:?} is not an http(s) URL"),
            ));
        }

        let source = match raw.cache.source.as_deref() {
            None | Some("export") => CacheSource::Export,
            Some("file") => CacheSource::File,
            Some(other) => {
                return Err(invalid(
                    "cache.source",
                    format!("{other:?} is not \"export\" or \"file\""),
                ));
            }
        };

        let request_timeout = seconds(
            raw.auth0.request_timeout_seconds,
            DEFAULT_REQUEST_TIMEOUT_SECONDS,
            MAX_REQUEST_TIMEOUT_SECONDS,
        )
        .map_err(|message| invalid("auth0.request_timeout_seconds", message))?;
        let export_timeout = seconds(
            raw.cache.export_timeout_seconds,
            DEFAULT_EXPORT_TIMEOUT_SECONDS,
            MAX_EXPORT_TIMEOUT_SECONDS,
        )
        .map_err(|message| invalid("cache.export_timeout_seconds", message))?;

        let fields = field_list(raw.reconcile.fields.as_deref())
            .map_err(|message| invalid("reconcile.fields", message))?;
        let push_fields = field_list(raw.reconcile.push_fields.as_deref())
            .map_err(|message| invalid("reconcile.push_fields", message))?;
        if let Some(push_fields) = &push_fields
            && let Some(field) = push_fields.iter().find(|field| {
                matches!(
                    field,
                    Field::UserMetadata | Field::AppMetadata | Field::Blocked
                )
            })
        {
            return Err(invalid(
                "reconcile.push_fields",
                format!("{field} is always pushable; list only root profile attributes"),
            ));
        }
        let push = raw.reconcile.push.unwrap_or(false);
        let max_push_fraction = raw.reconcile.max_push_fraction.unwrap_or(0.05);
        if !(0.0..=1.0).contains(&max_push_fraction) {
            return Err(invalid(
                "reconcile.max_push_fraction",
                format!("{max_push_fraction} is not between 0 and 1"),
            ));
        }
        let max_shrink_fraction = raw.reconcile.max_shrink_fraction.unwrap_or(0.10);
        if !(0.0..=1.0).contains(&max_shrink_fraction) {
            return Err(invalid(
                "reconcile.max_shrink_fraction",
                format!("{max_shrink_fraction} is not between 0 and 1"),
            ));
        }
        let max_plan_age_hours = match raw.reconcile.max_plan_age_hours {
            None => 24,
            Some(hours) if (1..=8_760).contains(&hours) => hours as u32,
            Some(hours) => {
                return Err(invalid(
                    "reconcile.max_plan_age_hours",
                    format!("{hours} is not a number of hours from 1 to 8760"),
                ));
            }
        };
        let orphans = match raw.reconcile.orphans.as_deref() {
            None | Some("report") => OrphanAction::Report,
            Some("block") => OrphanAction::Block,
            Some(other) => {
                return Err(invalid(
                    "reconcile.orphans",
                    format!("{other:?} is not \"report\" or \"block\""),
                ));
            }
        };
        let pushed_email_verified = match raw.reconcile.pushed_email_verified.as_deref() {
            None | Some("false") => PushedEmailVerified::False,
            Some("keep") => PushedEmailVerified::Keep,
            Some(other) => {
                return Err(invalid(
                    "reconcile.pushed_email_verified",
                    format!("{other:?} is not \"false\" or \"keep\""),
                ));
            }
        };

        let schedule = match raw.schedule {
            None => None,
            Some(schedule) => {
                check_cron(&schedule.full).map_err(|message| invalid("schedule.full", message))?;
                if let Some(changes) = &schedule.changes {
                    check_cron(changes).map_err(|message| invalid("schedule.changes", message))?;
                }
                Some(Schedule {
                    full: schedule.full,
                    changes: schedule.changes,
                })
            }
        };

        let listen = raw.metrics.listen.as_deref().unwrap_or("127.0.0.1:9477");
        let listen = listen.parse().map_err(|_| {
            invalid(
                "metrics.listen",
                format!("{listen:?} is not an address:port such as \"127.0.0.1:9477\""),
            )
        })?;

        let days = |key: &'static str, value: Option<i64>, default: u32| match value {
            None => Ok(default),
            Some(days) if (1..=36_500).contains(&days) => Ok(days as u32),
            Some(days) => Err(invalid(
                key,
                format!("{days} is not a number of days from 1 to 36500"),
            )),
        };
        let journal_retention_days = days(
            "state.journal_retention_days",
            raw.state.journal_retention_days,
            30,
        )?;
        let run_history_days = days("state.run_history_days", raw.state.run_history_days, 400)?;
        let max_run_age_hours = match raw.cutover.max_run_age_hours {
            None => 48,
            Some(hours) if (1..=8_760).contains(&hours) => hours as u32,
            Some(hours) => {
                return Err(invalid(
                    "cutover.max_run_age_hours",
                    format!("{hours} is not a number of hours from 1 to 8760"),
                ));
            }
        };
        // Whether the file itself holds a password (whatever the environment overrides).
        let legacy_password_in_file = raw
            .legacy
            .url
            .as_deref()
            .and_then(|url| Target::without_environment(url).ok())
            .is_some_and(|target| target.has_password());

        Ok(Config {
            path: path.to_owned(),
            legacy_password_in_file,
            legacy: Legacy {
                target,
                query: raw.legacy.query,
            },
            auth0: Auth0 {
                domain: raw.auth0.domain,
                base_url: raw.auth0.base_url,
                client_id: raw.auth0.client_id,
                client_secret_file: raw.auth0.client_secret_file,
                connection,
                migrated,
                request_timeout,
            },
            cache: Cache {
                source,
                file: raw.cache.file,
                export_timeout,
            },
            reconcile: Reconcile {
                fields,
                push_fields,
                push,
                max_push_fraction,
                max_shrink_fraction,
                max_plan_age_hours,
                orphans,
                pushed_email_verified,
                verify_email: raw.reconcile.verify_email.unwrap_or(false),
            },
            schedule,
            metrics: Metrics { listen },
            state: State {
                path: raw
                    .state
                    .path
                    .unwrap_or_else(|| PathBuf::from("driftsync-state.db")),
                journal_retention_days,
                run_history_days,
            },
            cutover: Cutover { max_run_age_hours },
        })
    }
}

/// A TOML error as its position, message and key path, without the quoted source line that
/// toml's own rendering shows: that line can hold the database password (`legacy.url`) or a
/// secret written under a wrong key, and the message ends up in logs and terminals.
fn toml_error_message(text: &str, mut error: toml::de::Error) -> String {
    let position = error.span().map(|span| {
        // Bytes, not chars, would do for the line; the column counts characters as editors do.
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        format!("TOML parse error at line {line}, column {column}: ")
    });
    // Without its input, the error renders only its message (and the key path, if any).
    error.set_input(None);
    let detail = error.to_string();
    let detail = detail.trim_end().replace('\n', "; ");
    format!("{}{detail}", position.unwrap_or_default())
}

/// Default of `auth0.request_timeout_seconds`.
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 30;
const MAX_REQUEST_TIMEOUT_SECONDS: u64 = 600;
/// Default of `cache.export_timeout_seconds`: Auth0 exports a million users in minutes.
pub const DEFAULT_EXPORT_TIMEOUT_SECONDS: u64 = 3600;
/// A day: Auth0 deletes jobs after 24 hours anyway.
const MAX_EXPORT_TIMEOUT_SECONDS: u64 = 86_400;

/// A duration in whole seconds, from 1 to `max`.
fn seconds(value: Option<u64>, default: u64, max: u64) -> Result<Duration, String> {
    match value.unwrap_or(default) {
        0 => Err("must be at least 1 (seconds)".into()),
        value if value > max => Err(format!("{value} is more than the maximum, {max} (seconds)")),
        value => Ok(Duration::from_secs(value)),
    }
}

/// A list of field names: known, not repeated, not empty; sorted in canonical order.
fn field_list(names: Option<&[String]>) -> Result<Option<Vec<Field>>, String> {
    let Some(names) = names else {
        return Ok(None);
    };
    let mut fields = Vec::with_capacity(names.len());
    for name in names {
        let field = Field::from_name(name)
            .ok_or_else(|| format!("unknown field {name:?}; known fields: {}", Field::names()))?;
        if fields.contains(&field) {
            return Err(format!("{name:?} is listed twice"));
        }
        fields.push(field);
    }
    if fields.is_empty() {
        return Err(
            "is empty: list at least one field, or remove the key to use the default".into(),
        );
    }
    fields.sort();
    Ok(Some(fields))
}

fn check_cron(expression: &str) -> Result<(), String> {
    cron::Schedule::from_str(expression)
        .map(|_| ())
        .map_err(|error| {
            format!(
                "{expression:?} is not a cron expression with a seconds field, such as \"0 0 3 * * *\" ({error})"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|value| value.to_string())
        }
    }

    const MINIMAL: &str = r#"
        [legacy]
        url = "postgres://reader@localhost/app"
        query = "SELECT id::text AS user_id, email FROM users"
        [auth0]
        connection = "legacy-users"
        migrated = "always"
        [cache]
        source = "file"
        file = "export.json.gz"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text, &FakeEnv(HashMap::new()))
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.auth0.migrated, MigratedRule::Always);
        assert_eq!(config.cache.source, CacheSource::File);
        assert_eq!(config.reconcile.fields, None);
        assert!(!config.reconcile.push);
        assert_eq!(config.reconcile.max_push_fraction, 0.05);
        assert_eq!(config.reconcile.max_shrink_fraction, 0.10);
        assert_eq!(config.reconcile.orphans, OrphanAction::Report);
        assert_eq!(
            config.reconcile.pushed_email_verified,
            PushedEmailVerified::False
        );
        assert!(!config.reconcile.verify_email);
        assert_eq!(config.metrics.listen.to_string(), "127.0.0.1:9477");
        assert_eq!(config.state.path, PathBuf::from("driftsync-state.db"));
    }

    #[test]
    fn the_documented_example_parses_with_its_stated_defaults() {
        let example = include_str!("../config/driftsync.example.toml");
        let config = parse(example).unwrap();
        assert_eq!(config.auth0.migrated, MigratedRule::ImportMode);
        assert_eq!(config.cache.source, CacheSource::Export);
        assert_eq!(config.auth0.connection, "legacy-users");
        assert!(config.legacy.query.contains("AS user_id"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let message = error_of(&MINIMAL.replace("[cache]", "[cache]\nsorce = \"file\""));
        assert!(message.contains("sorce"), "{message}");
        let message = error_of(&format!("{MINIMAL}\n[extra]\nx = 1"));
        assert!(message.contains("extra"), "{message}");
    }

    #[test]
    fn env_overrides_the_legacy_url() {
        let env = FakeEnv(HashMap::from([(ENV_LEGACY_URL, "postgres://other@db/x")]));
        let config = Config::parse(Path::new("t.toml"), MINIMAL, &env).unwrap();
        assert_eq!(config.legacy.target.endpoints(), "db:5432");
        assert!(config.legacy.target.to_string().contains("user other"));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            (
                "migrated = \"always\"",
                "migrated = \"sometimes\"",
                "auth0.migrated",
            ),
            (
                "migrated = \"always\"",
                "migrated = \"app_metadata.\"",
                "auth0.migrated",
            ),
            ("source = \"file\"", "source = \"api\"", "cache.source"),
            (
                "connection = \"legacy-users\"",
                "connection = \"\"",
                "auth0.connection",
            ),
            (
                "url = \"postgres://reader@localhost/app\"",
                "url = \"postgres://reader@localhost:notaport/app\"",
                "legacy.url",
            ),
        ];
        for (from, to, key) in cases {
            let message = error_of(&MINIMAL.replace(from, to));
            assert!(message.contains(key), "{to}: {message}");
        }
        let extra = [
            (
                "[state]\njournal_retention_days = 0",
                "state.journal_retention_days",
            ),
            ("[state]\nrun_history_days = -5", "state.run_history_days"),
            (
                "[cutover]\nmax_run_age_hours = 0",
                "cutover.max_run_age_hours",
            ),
            ("[reconcile]\nfields = [\"emial\"]", "reconcile.fields"),
            ("[reconcile]\nfields = []", "reconcile.fields"),
            (
                "[reconcile]\nmax_push_fraction = 1.5",
                "reconcile.max_push_fraction",
            ),
            (
                "[reconcile]\nmax_shrink_fraction = -0.1",
                "reconcile.max_shrink_fraction",
            ),
            ("[reconcile]\norphans = \"delete\"", "reconcile.orphans"),
            (
                "[reconcile]\npushed_email_verified = \"true\"",
                "reconcile.pushed_email_verified",
            ),
            (
                "[reconcile]\npush_fields = [\"blocked\"]",
                "reconcile.push_fields",
            ),
            (
                "[reconcile]\npush_fields = [\"nmae\"]",
                "reconcile.push_fields",
            ),
            ("[schedule]\nfull = \"every day\"", "schedule.full"),
            (
                "[schedule]\nfull = \"0 0 3 * * *\"\nchanges = \"*/5 * *\"",
                "schedule.changes",
            ),
            ("[metrics]\nlisten = \"localhost\"", "metrics.listen"),
        ];
        for (section, key) in extra {
            let message = error_of(&format!("{MINIMAL}\n{section}"));
            assert!(message.contains(key), "{section}: {message}");
        }
    }

    #[test]
    fn a_bad_url_error_does_not_echo_the_password() {
        let text = MINIMAL.replace(
            "postgres://reader@localhost/app",
            "postgres://reader:hunter2@localhost:99999999/app",
        );
        let message = error_of(&text);
        assert!(message.contains("legacy.url"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn a_toml_error_names_the_line_but_does_not_quote_it() {
        // Found by the config_parse fuzz target: toml's rendering quoted the offending line.
        let syntax = MINIMAL.replace(
            "postgres://reader@localhost/app\"",
            "postgres://reader:hunter2@localhost/app\" x",
        );
        let message = error_of(&syntax);
        assert!(message.contains("line 3, column"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let misplaced = MINIMAL.replace("[cache]", "client_secret = \"s3cr3t-value\"\n[cache]");
        let message = error_of(&misplaced);
        assert!(message.contains("line 8, column 9"), "{message}");
        assert!(message.contains("client_secret"), "{message}");
        assert!(!message.contains("s3cr3t-value"), "{message}");
    }

    #[test]
    fn missing_url_points_at_the_env_variable() {
        let message = error_of(&MINIMAL.replace("url = \"postgres://reader@localhost/app\"", ""));
        assert!(message.contains("legacy.url"), "{message}");
        assert!(message.contains(ENV_LEGACY_URL), "{message}");
    }
}
