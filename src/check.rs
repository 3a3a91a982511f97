//! `driftsync check`: proves a configuration works before the first run, without writing
//! anywhere. It connects to the legacy database and runs the mapping query with `LIMIT 0` in a
//! read-only transaction, gets a token and reads the connection from Auth0 (when credentials are
//! configured or the configuration needs them), opens the export file for the file source, and
//! prints what it found. It stops at the first problem.

use std::io::Write;

use anyhow::Context;

use crate::auth0::{Auth0Client, EndpointClass, RetryPolicy, Settings};
use crate::config::{CacheSource, Config, Environment};
use crate::model::plan::DEFAULT_MIGRATED_FIELDS;
use crate::model::plan::OrphanAction;
use crate::model::profile::Field;
use crate::model::profile::MigratedRule;
use crate::sources::export::{self, ExportFilter};
use crate::sources::legacy;

pub async fn run(
    config: &Config,
    env: &dyn Environment,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    writeln!(out, "config     {}: valid", config.path.display())?;
    for warning in config.permission_warnings() {
        writeln!(out, "warning    {warning}")?;
    }

    let target = &config.legacy.target;
    let (mut client, verification) = legacy::connect_verbose(target).await?;
    writeln!(out, "legacy     connected to {target}")?;
    // What the server says about this session: `prefer` may have found no TLS to use.
    let session = match legacy::session_tls_version(&client).await? {
        Some(version) => format!("{version}, {verification}"),
        None if verification == legacy::Verification::Plain => verification.to_string(),
        None => "no TLS: the server does not offer it (sslmode prefer)".to_owned(),
    };
    writeln!(out, "           {session}")?;
    let columns = legacy::describe(&mut client, &config.legacy.query).await?;
    let fields = match &config.reconcile.fields {
        Some(fields) => {
            let returned = columns.fields();
            if let Some(missing) = fields.iter().find(|field| !returned.contains(field)) {
                return Err(legacy::LegacyError::FieldNotReturned(*missing).into());
            }
            fields.clone()
        }
        None => columns.fields(),
    };
    legacy::run_empty(&mut client, &config.legacy.query)
        .await
        .context("the mapping query did not run")?;
    writeln!(
        out,
        "           the mapping query runs (LIMIT 0, read-only) and returns user_id, {}{}",
        names(&columns.fields()),
        if columns.has_updated_at() {
            ", updated_at"
        } else {
            " (no updated_at: differences without a baseline are assumed to come from legacy)"
        }
    )?;
    writeln!(out, "           compared fields: {}", names(&fields))?;

    let needs_api = config.cache.source == CacheSource::Export
        || config.auth0.migrated == MigratedRule::ImportMode;
    if needs_api || config.auth0.client_id.is_some() {
        let settings = Settings::from_config(&config.auth0, env)?;
        let base = settings.base_url.clone();
        let auth0 = Auth0Client::new(settings, RetryPolicy::from_config(&config.auth0))?;
        let connection = auth0.connection_by_name(&config.auth0.connection).await?;
        writeln!(out, "auth0      got a token from {base}/oauth/token")?;
        writeln!(
            out,
            "           connection {:?}: id {}, strategy {}, import_mode {}",
            connection.name,
            connection.id,
            connection.strategy.as_deref().unwrap_or("?"),
            if connection.options.import_mode {
                "on (automatic migration)"
            } else {
                "off"
            }
        )?;
        if config.auth0.migrated == MigratedRule::ImportMode {
            writeln!(
                out,
                "           migrated = \"import_mode\": every user of the connection counts as {}",
                if connection.options.import_mode {
                    "migrated"
                } else {
                    "not migrated (cached profiles)"
                }
            )?;
        }
        writeln!(
            out,
            "           set_user_root_attributes {}",
            match connection.options.set_user_root_attributes.as_deref() {
                None => "on_each_login (the default): cached profiles refresh name, nickname, \
                         given_name, family_name and picture at login"
                    .to_owned(),
                Some(value) if connection.options.root_attributes_refreshed() => value.to_owned(),
                Some(value) => format!(
                    "{value}: cached profiles keep their root attributes, so driftsync pushes \
                     legacy changes of name, nickname, given_name, family_name and picture"
                ),
            }
        )?;
        for warning in get_user_warnings(config, &fields, connection.options.import_mode) {
            writeln!(out, "warning    {warning}")?;
        }
        if let Some(remaining) = auth0.limiter().snapshot(EndpointClass::Other).remaining {
            writeln!(
                out,
                "           rate limit: {remaining:.0} requests left in the current bucket"
            )?;
        }
    } else {
        writeln!(
            out,
            "auth0      not called: this configuration reads an export file and needs no credentials"
        )?;
    }

    match (&config.cache.source, &config.cache.file) {
        (CacheSource::File, Some(path)) => {
            let size = std::fs::metadata(path)
                .with_context(|| format!("cannot read the export file {}", path.display()))?
                .len();
            let first = first_user(path, config)?;
            writeln!(
                out,
                "cache      export file {} ({} bytes){}",
                path.display(),
                size,
                match first {
                    Some(id) => format!(": first user of the connection is {id}"),
                    None => ": no user of the connection in it".into(),
                }
            )?;
        }
        (CacheSource::File, None) => writeln!(
            out,
            "cache      source = \"file\" without cache.file: pass --cache-file to reconcile"
        )?,
        (CacheSource::Export, _) => {
            writeln!(out, "cache      a users-export job is created at each run")?
        }
    }
    writeln!(
        out,
        "reconcile  {}; orphans: {}; max_push_fraction {}; max_shrink_fraction {}",
        if config.reconcile.push {
            "push on"
        } else {
            "report only"
        },
        match config.reconcile.orphans {
            OrphanAction::Report => "report",
            OrphanAction::Block => "block",
        },
        config.reconcile.max_push_fraction,
        config.reconcile.max_shrink_fraction
    )?;
    writeln!(out, "\nEverything checked; nothing was written.")?;
    Ok(())
}

/// With import mode, Auth0 runs the connection's Get User script when a push changes an email
/// or a username, and refuses the change when the script finds the new value in the legacy
/// store — where the row already holds it. Whether such pushes succeed is up to the script.
fn get_user_warnings(config: &Config, fields: &[Field], import_mode: bool) -> Vec<String> {
    if !import_mode {
        return Vec::new();
    }
    let pushable = config
        .reconcile
        .push_fields
        .as_deref()
        .unwrap_or(&DEFAULT_MIGRATED_FIELDS);
    [Field::Email, Field::Username]
        .into_iter()
        .filter(|field| fields.contains(field) && pushable.contains(field))
        .map(|field| {
            format!(
                "{field} can be pushed, and with import mode Auth0 runs the connection's Get User \
                 script on every {field} change: a script that finds the new {field} in the \
                 legacy database (where the row already holds it) makes Auth0 refuse the push \
                 (\"The specified new {field} already exists\"). Let the script skip users who \
                 already live in Auth0, for instance legacy rows marked as migrated; see the \
                 README, \"Email and username pushes meet the Get User script\"."
            )
        })
        .collect()
}

fn names(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|field| field.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the export file up to its first user of the connection.
fn first_user(path: &std::path::Path, config: &Config) -> anyhow::Result<Option<String>> {
    enum Stop {
        Found(String),
        Failed(export::ExportError),
    }
    impl From<export::ExportError> for Stop {
        fn from(error: export::ExportError) -> Stop {
            Stop::Failed(error)
        }
    }
    let filter = ExportFilter {
        connection: config.auth0.connection.clone(),
        migrated: MigratedRule::Never,
    };
    let input = export::open_file(path)?;
    // One user proves the format; stop there instead of reading a large file.
    match export::read(&path.display().to_string(), input, &filter, |_, user| {
        Err(Stop::Found(user.auth0_id.to_owned()))
    }) {
        Ok(_) => Ok(None),
        Err(Stop::Found(id)) => Ok(Some(id)),
        Err(Stop::Failed(error)) => Err(error.into()),
    }
}
