//! What the run knows about the custom database connection — whether its users are migrated,
//! whether Auth0 refreshes cached root attributes at login — and what follows from it for the
//! comparison ([`Rules`]), the push ([`PushPolicy`]) and the attributes read from Auth0. A full
//! run and a changes run derive all three from here, so they cannot disagree.

use crate::auth0::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::RunError;
use crate::auth0::{Auth0Client, RetryPolicy, Settings};
use crate::config::{CacheSource, Config, Environment};
use crate::engine::Context;
use crate::model::classify::Rules;
use crate::model::plan::{DEFAULT_MIGRATED_FIELDS, PushPolicy};
use crate::model::plan::{OrphanAction, PushedEmailVerified};
use crate::model::profile::Field;
use crate::model::profile::MigratedRule;
use crate::sources::export::ExportFilter;

/// The connection's settings that decide verdicts and pushes.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    /// The migration rule, `import_mode` replaced by what the connection says.
    pub migrated: MigratedRule,
    pub import_mode: bool,
    pub root_attributes_refreshed: bool,
}

impl ConnectionFacts {
    /// From the connection as the Management API describes it.
    pub fn read(config: &Config, connection: &Connection) -> ConnectionFacts {
        let import_mode = connection.options.import_mode;
        ConnectionFacts {
            migrated: resolve_migrated(&config.auth0.migrated, import_mode),
            import_mode,
            root_attributes_refreshed: connection.options.root_attributes_refreshed(),
        }
    }

    /// Without the Management API (a report from a file): a rule that says "migrated" implies
    /// import mode, and root attributes are taken to be refreshed at login (Auth0's default,
    /// which pushes nothing a cached profile might refuse).
    pub fn assumed(config: &Config) -> ConnectionFacts {
        ConnectionFacts {
            migrated: config.auth0.migrated.clone(),
            import_mode: config.auth0.migrated != MigratedRule::Never,
            root_attributes_refreshed: true,
        }
    }

    /// The comparison's rules for these compared fields.
    pub fn rules<'a>(&self, fields: &'a [Field]) -> Rules<'a> {
        Rules {
            fields,
            connection_migrated: match &self.migrated {
                MigratedRule::AppMetadataKey(_) => None,
                MigratedRule::Never => Some(false),
                MigratedRule::Always => Some(true),
                MigratedRule::ImportMode => Some(self.import_mode),
            },
            root_attributes_refreshed: self.root_attributes_refreshed,
        }
    }

    /// What a push may send.
    pub fn push_policy(&self, config: &Config, fields: &[Field]) -> PushPolicy {
        PushPolicy {
            import_mode: self.import_mode,
            root_attributes_refreshed: self.root_attributes_refreshed,
            migrated_fields: config
                .reconcile
                .push_fields
                .clone()
                .unwrap_or_else(|| DEFAULT_MIGRATED_FIELDS.to_vec()),
            legacy_has_email_verified: fields.contains(&Field::EmailVerified),
            pushed_email_verified: config.reconcile.pushed_email_verified,
            verify_email: config.reconcile.verify_email,
        }
    }
}

/// Everything a run classifies with, owned by the run; [`Classifying::context`] lends it to
/// the engine. Both kinds of run build it here, from the connection's facts.
pub struct Classifying {
    pub facts: ConnectionFacts,
    pub fields: Vec<Field>,
    kept: Vec<Field>,
    pub filter: ExportFilter,
    policy: PushPolicy,
    orphans: OrphanAction,
    /// Keep each push's review data (a plan is saved or applied).
    pub review: bool,
}

impl Classifying {
    pub fn new(config: &Config, facts: ConnectionFacts, fields: Vec<Field>) -> Classifying {
        Classifying {
            kept: attributes_read(config, &fields),
            filter: ExportFilter {
                connection: config.auth0.connection.clone(),
                migrated: facts.migrated.clone(),
            },
            policy: facts.push_policy(config, &fields),
            orphans: config.reconcile.orphans,
            review: false,
            facts,
            fields,
        }
    }

    pub fn context(&self) -> Context<'_> {
        Context {
            rules: self.facts.rules(&self.fields),
            kept: &self.kept,
            filter: &self.filter,
            policy: &self.policy,
            orphans: self.orphans,
            review: self.review,
        }
    }
}

/// Auth0's side for a command that reads it outside a run (`explain`, `cutover
/// --migrated-ids`): the export file when there is one (`cache_file`, else the configured
/// file source), otherwise the Management API; and the connection's facts, read through the
/// API whenever a client is at hand.
pub struct Auth0Access {
    pub client: Option<Arc<Auth0Client>>,
    pub facts: ConnectionFacts,
    /// The connection's id, when it was read through the API.
    pub connection_id: Option<String>,
    pub file: Option<PathBuf>,
}

impl Auth0Access {
    /// `command` names the command in the error when the API is needed and not configured;
    /// `api_anyway` is true when the command needs the API even with a file (to push).
    pub async fn open(
        config: &Config,
        env: &dyn Environment,
        cache_file: Option<&Path>,
        command: &'static str,
        api_anyway: bool,
    ) -> Result<Auth0Access, RunError> {
        let file = cache_file.map(Path::to_owned).or_else(|| {
            (config.cache.source == CacheSource::File)
                .then(|| config.cache.file.clone())
                .flatten()
        });
        let client = if file.is_none()
            || api_anyway
            || matches!(config.auth0.migrated, MigratedRule::ImportMode)
        {
            let settings = Settings::from_config(&config.auth0, env).map_err(|source| {
                RunError::ApiSettings {
                    why: command,
                    source,
                }
            })?;
            let retry = RetryPolicy::from_config(&config.auth0);
            Some(Arc::new(Auth0Client::new(settings, retry)?))
        } else {
            None
        };
        let (facts, connection_id) = match &client {
            Some(client) => {
                let connection = client.connection_by_name(&config.auth0.connection).await?;
                (
                    ConnectionFacts::read(config, &connection),
                    Some(connection.id),
                )
            }
            None => (ConnectionFacts::assumed(config), None),
        };
        Ok(Auth0Access {
            client,
            facts,
            connection_id,
            file,
        })
    }
}

/// The Auth0 attributes a run reads: the compared ones, and what its pushes look at besides —
/// `blocked` when orphans are blocked (an orphan already blocked is not patched again), and
/// `email_verified` when a pushed email keeps Auth0's verification.
pub fn attributes_read(config: &Config, fields: &[Field]) -> Vec<Field> {
    let mut also = Vec::new();
    if config.reconcile.orphans == OrphanAction::Block {
        also.push(Field::Blocked);
    }
    if fields.contains(&Field::Email)
        && config.reconcile.pushed_email_verified == PushedEmailVerified::Keep
    {
        also.push(Field::EmailVerified);
    }
    crate::model::equality::attributes_read(fields, &also)
}

/// The migration rule with `import_mode` replaced by what the connection says.
fn resolve_migrated(rule: &MigratedRule, import_mode: bool) -> MigratedRule {
    match rule {
        MigratedRule::ImportMode if import_mode => MigratedRule::Always,
        MigratedRule::ImportMode => MigratedRule::Never,
        other => other.clone(),
    }
}
