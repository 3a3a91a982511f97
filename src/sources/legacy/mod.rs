//! The legacy side: connects the way libpq would (see [`target`], [`tls`]), runs the mapping
//! query in a `READ ONLY` transaction and streams its rows.
//!
//! Rows are fetched through a portal in fixed-size batches, so memory holds one batch no matter
//! how large the result is; each row is handed to the caller as a borrowed [`LegacyRow`] and
//! packed into a [`LegacyRecord`] without intermediate strings. The result columns are checked
//! before the first row: the column names are the profile attributes the legacy side manages.

use std::error::Error as StdError;
use std::path::PathBuf;

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use crate::model::profile::{Field, Kind, LegacyRecordBuilder};

mod pgpass;
pub mod target;
pub mod tls;

pub use target::{SslMode, Target, TargetError, TlsSettings};
pub use tls::Verification;

/// Rows fetched per round trip.
const BATCH_ROWS: i32 = 50_000;

/// The longest legacy value accepted. No Auth0 profile attribute holds more (metadata is
/// limited to 16 KB, strings to far less): a longer value is damaged data, never pushed.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

const TIMESTAMP_COLUMN: &str = "updated_at";
const ACTIVITY_COLUMN: &str = "last_active_at";
const ID_COLUMN: &str = "user_id";

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// `detail` is the whole cause, with what to do when it is known; never a password.
    #[error("cannot connect to the legacy database at {endpoint} ({verification}): {detail}")]
    Connect {
        endpoint: String,
        verification: Verification,
        detail: String,
    },
    #[error("legacy database TLS: {0}")]
    Tls(String),
    #[error("legacy database sslrootcert {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error("legacy query failed")]
    Query(#[source] tokio_postgres::Error),
    #[error(
        "legacy query returns no `user_id` column: alias the user id, e.g. `SELECT id::text AS user_id, …`"
    )]
    MissingUserId,
    #[error(
        "legacy query column `{column}` is not a profile attribute driftsync knows; name columns after profile attributes ({known}) or drop it from the query"
    )]
    UnknownColumn { column: String, known: String },
    #[error("legacy query returns the column `{0}` more than once")]
    DuplicateColumn(String),
    #[error(
        "legacy query column `{column}` has type {actual}; expected {expected} (cast it in the query, e.g. `{column}::{cast}`)"
    )]
    ColumnType {
        column: String,
        actual: String,
        expected: &'static str,
        cast: &'static str,
    },
    #[error(
        "reconcile.fields lists `{0}`, but the legacy query returns no such column: add it to the query or remove it from reconcile.fields"
    )]
    FieldNotReturned(Field),
    #[error("legacy row {row}: `user_id` is NULL")]
    NullUserId { row: u64 },
    #[error("legacy row {row}: `user_id` is empty")]
    EmptyUserId { row: u64 },
    #[error(
        "legacy row {row}: user_id {user_id:?} appeared in an earlier row already; the query must return each user once"
    )]
    DuplicateUserId { row: u64, user_id: String },
    #[error(
        "legacy row {row} (user_id {user_id:?}): `{column}` is a JSON {found}, expected an object"
    )]
    MetadataNotObject {
        row: u64,
        user_id: String,
        column: &'static str,
        found: &'static str,
    },
    #[error(
        "legacy row {row} (user_id starting {user_id:?}): the row is larger than 4 GiB, which no profile is"
    )]
    ValueTooLong { row: u64, user_id: String },
    #[error(
        "legacy row {row} (user_id {user_id:?}): `{column}` is {bytes} bytes long, more than any Auth0 profile attribute holds ({MAX_VALUE_BYTES} at most)"
    )]
    ValueTooLarge {
        row: u64,
        user_id: String,
        column: &'static str,
        bytes: usize,
    },
    #[error("legacy row {row}: cannot read column `{column}`")]
    Value {
        row: u64,
        column: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Which column of the result carries what.
#[derive(Debug, Clone)]
pub struct Columns {
    user_id: usize,
    updated_at: Option<usize>,
    last_active_at: Option<usize>,
    fields: Vec<(usize, Field)>,
}

impl Columns {
    /// The profile fields the query returns, in canonical order.
    pub fn fields(&self) -> Vec<Field> {
        let mut fields: Vec<Field> = self.fields.iter().map(|(_, field)| *field).collect();
        fields.sort();
        fields
    }

    pub fn has_updated_at(&self) -> bool {
        self.updated_at.is_some()
    }

    /// Whether the query returns `last_active_at` (the not-migrated users by inactivity).
    pub fn has_last_active_at(&self) -> bool {
        self.last_active_at.is_some()
    }

    fn check(columns: &[tokio_postgres::Column]) -> Result<Columns, LegacyError> {
        let mut user_id = None;
        let mut updated_at = None;
        let mut last_active_at = None;
        let mut fields = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for (index, column) in columns.iter().enumerate() {
            let name = column.name();
            if seen.contains(&name) {
                return Err(LegacyError::DuplicateColumn(name.to_owned()));
            }
            seen.push(name);
            let ty = column.type_();
            match name {
                ID_COLUMN => {
                    expect_type(name, ty, Kind::Text)?;
                    user_id = Some(index);
                }
                TIMESTAMP_COLUMN | ACTIVITY_COLUMN => {
                    if *ty != Type::TIMESTAMPTZ {
                        return Err(LegacyError::ColumnType {
                            column: name.to_owned(),
                            actual: ty.name().to_owned(),
                            expected: "timestamptz",
                            cast: "timestamptz",
                        });
                    }
                    if name == TIMESTAMP_COLUMN {
                        updated_at = Some(index);
                    } else {
                        last_active_at = Some(index);
                    }
                }
                _ => {
                    let field =
                        Field::from_name(name).ok_or_else(|| LegacyError::UnknownColumn {
                            column: name.to_owned(),
                            known: format!(
                                "user_id, updated_at, last_active_at, {}",
                                Field::names()
                            ),
                        })?;
                    expect_type(name, ty, field.kind())?;
                    fields.push((index, field));
                }
            }
        }
        Ok(Columns {
            user_id: user_id.ok_or(LegacyError::MissingUserId)?,
            updated_at,
            last_active_at,
            fields,
        })
    }
}

fn expect_type(column: &str, ty: &Type, kind: Kind) -> Result<(), LegacyError> {
    let (ok, expected, cast) = match kind {
        Kind::Text => (
            matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME)
                || ty.name() == "citext",
            "text",
            "text",
        ),
        Kind::Bool => (*ty == Type::BOOL, "boolean", "boolean"),
        Kind::Object => (
            matches!(*ty, Type::JSON | Type::JSONB),
            "json or jsonb",
            "jsonb",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(LegacyError::ColumnType {
            column: column.to_owned(),
            actual: ty.name().to_owned(),
            expected,
            cast,
        })
    }
}

/// Connects to the legacy database. The connection task ends when the client is dropped.
pub async fn connect(target: &Target) -> Result<Client, LegacyError> {
    connect_verbose(target).await.map(|(client, _)| client)
}

/// [`connect`], also saying how the server's certificate was checked.
pub async fn connect_verbose(target: &Target) -> Result<(Client, Verification), LegacyError> {
    let mut config = target.config.clone();
    if target.uses_socket_only() {
        // PostgreSQL has no TLS on Unix sockets, and libpq ignores sslmode there.
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let mut password_from = None;
    if config.get_password().is_none()
        && let Some(path) = &target.passfile
    {
        match pgpass::lookup(path, &config) {
            pgpass::Lookup::Found(password) => {
                config.password(password);
                password_from = Some(path.clone());
            }
            pgpass::Lookup::Ignored(reason) => {
                tracing::warn!("not using the password file: {reason}");
            }
            pgpass::Lookup::NoMatch | pgpass::Lookup::Missing => {}
        }
    }
    let (tls, verification) = tls::client_config(target)?;
    let connected = match tls {
        None => config.connect(NoTls).await.map(|(client, connection)| {
            spawn_connection(connection);
            client
        }),
        Some(tls) => config
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            .await
            .map(|(client, connection)| {
                spawn_connection(connection);
                client
            }),
    };
    match connected {
        Ok(client) => Ok((client, verification)),
        Err(error) => Err(LegacyError::Connect {
            endpoint: target.endpoints(),
            detail: connect_failure(&error, target, password_from.as_deref()),
            verification,
        }),
    }
}

fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "legacy database connection closed with an error");
        }
    });
}

/// The cause of a failed connection in words, with what to do for the common TLS cases.
fn connect_failure(
    error: &tokio_postgres::Error,
    target: &Target,
    password_from: Option<&std::path::Path>,
) -> String {
    if let Some(problem) = crate::tls::certificate_problem(error) {
        use rustls::CertificateError as Cert;
        let hint = match &problem {
            rustls::Error::InvalidCertificate(
                Cert::NotValidForName | Cert::NotValidForNameContext { .. },
            ) => {
                "connect with a host name the certificate names, or use sslmode=verify-ca to \
                 check the chain only"
            }
            rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => {
                "set sslrootcert to the CA that signed the server's certificate"
            }
            rustls::Error::InvalidCertificate(
                Cert::Expired | Cert::ExpiredContext { .. } | Cert::NotValidYet,
            ) => "renew the server's certificate (or check this machine's clock)",
            _ => "check the server's certificate and sslrootcert",
        };
        return format!("the server's TLS certificate is refused: {problem}; {hint}");
    }
    let mut text = crate::error_text::chain(error);
    if let Some(db) = error.as_db_error() {
        let no_encryption = db.message().contains("no encryption");
        if no_encryption && target.ssl_mode() == SslMode::Disable {
            text.push_str(
                "; the server accepts this connection only over TLS: remove sslmode=disable \
                 (or set sslmode=verify-full)",
            );
        }
        if *db.code() == tokio_postgres::error::SqlState::INVALID_PASSWORD
            && let Some(path) = password_from
        {
            text.push_str(&format!(" (the password came from {})", path.display()));
        }
    } else if text.contains("server does not support TLS") {
        text.push_str(&format!(
            "; sslmode {} needs TLS, which the server has off (ssl = off in postgresql.conf)",
            target.ssl_mode().name()
        ));
    }
    text
}

/// The TLS protocol version of this session as the server reports it (`pg_stat_ssl`), `None`
/// when the session is not encrypted.
pub async fn session_tls_version(client: &Client) -> Result<Option<String>, LegacyError> {
    let row = client
        .query_opt(
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
            &[],
        )
        .await
        .map_err(LegacyError::Query)?;
    Ok(row.and_then(|row| row.get::<_, Option<String>>(0)))
}

/// Every legacy transaction is READ ONLY: the database refuses any write a query might attempt.
async fn read_only(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>, LegacyError> {
    client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(LegacyError::Query)
}

/// Prepares the query in a read-only transaction and returns its checked columns without
/// fetching a row (what `check` needs).
pub async fn describe(client: &mut Client, query: &str) -> Result<Columns, LegacyError> {
    let transaction = read_only(client).await?;
    let statement = transaction
        .prepare(query)
        .await
        .map_err(LegacyError::Query)?;
    Columns::check(statement.columns())
}

/// PostgreSQL's estimate of the rows the query returns (its planner's `rows=`, from the
/// table statistics), to size the table they go into; `None` when there is none. The query is
/// planned, not run.
pub async fn estimate_rows(client: &mut Client, query: &str) -> Option<u64> {
    let transaction = read_only(client).await.ok()?;
    let inner = query.trim().trim_end_matches(';');
    let plan = transaction
        .query(&format!("EXPLAIN {inner}"), &[])
        .await
        .ok()?;
    let first: &str = plan.first()?.try_get(0).ok()?;
    let rows = first.split("rows=").nth(1)?;
    rows.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs the query with `LIMIT 0` in a read-only transaction: proves that it executes,
/// privileges included, without reading a row.
pub async fn run_empty(client: &mut Client, query: &str) -> Result<(), LegacyError> {
    let transaction = read_only(client).await?;
    let inner = query.trim().trim_end_matches(';');
    transaction
        .query(
            &format!("SELECT * FROM ({inner}) AS driftsync_check LIMIT 0"),
            &[],
        )
        .await
        .map_err(LegacyError::Query)?;
    transaction.commit().await.map_err(LegacyError::Query)
}

/// One legacy row, borrowed from the fetched batch.
pub struct LegacyRow<'a> {
    /// 1-based position in the result, for error messages.
    pub number: u64,
    pub user_id: &'a str,
    /// The packed record (see [`crate::model::profile::LegacyRecord`]), borrowed from the reader's buffer: a row
    /// costs no allocation of its own.
    pub record: &'a [u8],
}

/// Runs `query` in a `READ ONLY` transaction and calls `each` for every row, in result order.
/// Fails before the first row when the query does not return every field of `required`.
pub async fn stream(
    client: &mut Client,
    query: &str,
    required: &[Field],
    each: impl FnMut(&Columns, LegacyRow<'_>) -> Result<(), LegacyError>,
) -> Result<Columns, LegacyError> {
    stream_sql(client, query, &[], required, each).await
}

/// Like [`stream`], for the rows whose `updated_at` is later than `since` (RFC 3339).
pub async fn stream_changed(
    client: &mut Client,
    query: &str,
    since: &str,
    required: &[Field],
    each: impl FnMut(&Columns, LegacyRow<'_>) -> Result<(), LegacyError>,
) -> Result<Columns, LegacyError> {
    let inner = query.trim().trim_end_matches(';');
    let sql = format!(
        "SELECT * FROM ({inner}) AS driftsync_changes WHERE updated_at > ($1::text)::timestamptz"
    );
    stream_sql(client, &sql, &[&since], required, each).await
}

/// Like [`stream`], for the one row whose `user_id` is `user_id` (`driftsync explain`).
pub async fn stream_one(
    client: &mut Client,
    query: &str,
    user_id: &str,
    required: &[Field],
    each: impl FnMut(&Columns, LegacyRow<'_>) -> Result<(), LegacyError>,
) -> Result<Columns, LegacyError> {
    let inner = query.trim().trim_end_matches(';');
    let sql = format!("SELECT * FROM ({inner}) AS driftsync_one WHERE user_id = $1::text");
    stream_sql(client, &sql, &[&user_id], required, each).await
}

async fn stream_sql(
    client: &mut Client,
    query: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    required: &[Field],
    mut each: impl FnMut(&Columns, LegacyRow<'_>) -> Result<(), LegacyError>,
) -> Result<Columns, LegacyError> {
    let transaction = read_only(client).await?;
    let statement = transaction
        .prepare(query)
        .await
        .map_err(LegacyError::Query)?;
    let columns = Columns::check(statement.columns())?;
    let returned = columns.fields();
    if let Some(missing) = required.iter().find(|field| !returned.contains(field)) {
        return Err(LegacyError::FieldNotReturned(*missing));
    }
    let portal = transaction
        .bind(&statement, params)
        .await
        .map_err(LegacyError::Query)?;
    let mut builder = LegacyRecordBuilder::default();
    let mut number = 0u64;
    loop {
        let rows = transaction
            .query_portal_raw(&portal, BATCH_ROWS)
            .await
            .map_err(LegacyError::Query)?;
        pin_mut!(rows);
        let mut in_batch = 0;
        while let Some(row) = rows.try_next().await.map_err(LegacyError::Query)? {
            number += 1;
            in_batch += 1;
            let user_id = read_row(&columns, &row, number, &mut builder)?;
            each(
                &columns,
                LegacyRow {
                    number,
                    user_id,
                    record: builder.packed(),
                },
            )?;
        }
        if in_batch < BATCH_ROWS {
            break;
        }
    }
    // Read-only: committing and rolling back are the same; commit ends it without a warning.
    transaction.commit().await.map_err(LegacyError::Query)?;
    Ok(columns)
}

fn read_row<'r>(
    columns: &Columns,
    row: &'r Row,
    number: u64,
    builder: &mut LegacyRecordBuilder,
) -> Result<&'r str, LegacyError> {
    let value_error = |index: usize, source| LegacyError::Value {
        row: number,
        column: row.columns()[index].name().to_owned(),
        source,
    };
    let user_id: Option<&str> = row
        .try_get(columns.user_id)
        .map_err(|e| value_error(columns.user_id, e))?;
    let user_id = user_id.ok_or(LegacyError::NullUserId { row: number })?;
    if user_id.is_empty() {
        return Err(LegacyError::EmptyUserId { row: number });
    }
    builder.clear();
    let too_long = |field: Field, bytes: usize| LegacyError::ValueTooLarge {
        row: number,
        user_id: user_id.to_owned(),
        column: field.name(),
        bytes,
    };
    for &(index, field) in &columns.fields {
        match field.kind() {
            Kind::Text => {
                let text: Option<&str> = row.try_get(index).map_err(|e| value_error(index, e))?;
                if let Some(text) = text {
                    if text.len() > MAX_VALUE_BYTES {
                        return Err(too_long(field, text.len()));
                    }
                    builder.text(field, text);
                }
            }
            Kind::Bool => {
                let value: Option<bool> = row.try_get(index).map_err(|e| value_error(index, e))?;
                if let Some(value) = value {
                    builder.boolean(field, value);
                }
            }
            Kind::Object => {
                let json: Option<RawJson<'_>> =
                    row.try_get(index).map_err(|e| value_error(index, e))?;
                if let Some(RawJson(json)) = json {
                    let found = json_kind(json);
                    if json.len() > MAX_VALUE_BYTES {
                        return Err(too_long(field, json.len()));
                    }
                    if found != "object" {
                        return Err(LegacyError::MetadataNotObject {
                            row: number,
                            user_id: user_id.to_owned(),
                            column: field.name(),
                            found,
                        });
                    }
                    builder.object(field, json);
                }
            }
        }
    }
    if let Some(index) = columns.updated_at {
        let at: Option<PgTimestamp> = row.try_get(index).map_err(|e| value_error(index, e))?;
        if let Some(PgTimestamp(micros)) = at {
            builder.updated_at(micros);
        }
    }
    if let Some(index) = columns.last_active_at {
        let at: Option<PgTimestamp> = row.try_get(index).map_err(|e| value_error(index, e))?;
        if let Some(PgTimestamp(micros)) = at {
            builder.last_active_at(micros);
        }
    }
    Ok(user_id)
}

/// The JSON type of a document PostgreSQL already validated, from its first character.
fn json_kind(json: &str) -> &'static str {
    match json.trim_start().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "boolean",
        _ => "number",
    }
}

/// A `json` or `jsonb` value as its text, without building a JSON tree.
struct RawJson<'a>(&'a str);

impl<'a> FromSql<'a> for RawJson<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let text = if *ty == Type::JSONB {
            // Binary jsonb is a version byte (1) followed by the JSON text.
            match raw.split_first() {
                Some((1, text)) => text,
                _ => return Err("unsupported jsonb binary format version".into()),
            }
        } else {
            raw
        };
        Ok(RawJson(std::str::from_utf8(text)?))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }
}

/// A `timestamptz` as microseconds since the Unix epoch.
struct PgTimestamp(i64);

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

impl<'a> FromSql<'a> for PgTimestamp {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let bytes: [u8; 8] = raw
            .try_into()
            .map_err(|_| "timestamptz value is not 8 bytes")?;
        let since_2000 = i64::from_be_bytes(bytes);
        // ±infinity are i64::MAX/MIN; saturating keeps them at the ends of time.
        Ok(PgTimestamp(
            since_2000.saturating_add(PG_EPOCH_OFFSET_MICROS),
        ))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}
