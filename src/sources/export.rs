//! Auth0's side from a users-export file: NDJSON, gzip-compressed or plain (detected from the
//! first bytes), one profile per line.
//!
//! Lines are parsed into borrowed structs that name only the attributes driftsync compares, so
//! no generic JSON tree is built and nothing outlives its line. The connection may appear as a
//! nested `identities` array, as the flattened key `identities[0].connection` or as an
//! `export_as` name `connection`; users of other connections and non-database users are
//! skipped. Any malformed line stops the read with its line number.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::model::profile::MigratedRule;
use crate::model::profile::{Auth0User, Field, Profile, Text, USER_ID_PREFIX, Value};
use crate::timestamp;

/// Longest line accepted; Auth0 caps metadata at 16 KB per object, so a longer line is damage.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot open the Auth0 export {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Auth0 export {source_name}: reading after line {line} failed")]
    Read {
        source_name: String,
        line: u64,
        source: std::io::Error,
    },
    #[error("Auth0 export {source_name} line {line}: {message}")]
    Line {
        source_name: String,
        line: u64,
        message: String,
    },
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    user_id: Option<Text<'a>>,
    #[serde(borrow)]
    email: Option<Text<'a>>,
    email_verified: Option<bool>,
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow)]
    nickname: Option<Text<'a>>,
    #[serde(borrow)]
    given_name: Option<Text<'a>>,
    #[serde(borrow)]
    family_name: Option<Text<'a>>,
    #[serde(borrow)]
    picture: Option<Text<'a>>,
    #[serde(borrow)]
    username: Option<Text<'a>>,
    blocked: Option<bool>,
    #[serde(borrow)]
    created_at: Option<Text<'a>>,
    #[serde(borrow)]
    user_metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    app_metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    identities: Option<FirstIdentity<'a>>,
    #[serde(borrow)]
    connection: Option<Text<'a>>,
    #[serde(borrow, rename = "identities[0].connection")]
    first_identity_connection: Option<Text<'a>>,
}

/// The first element of `identities` (the user's own connection), read without collecting
/// the array: no allocation per line.
struct FirstIdentity<'a>(Option<Identity<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstIdentity<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = FirstIdentity<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of identities")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut items: A,
            ) -> Result<FirstIdentity<'a>, A::Error> {
                let first = items.next_element::<Identity<'a>>()?;
                while items.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstIdentity(first))
            }
        }
        deserializer.deserialize_seq(Visitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Identity<'a> {
    #[serde(borrow)]
    connection: Option<Text<'a>>,
    #[serde(rename = "user_id")]
    _user_id: Option<IgnoredAny>,
}

/// What the reader needs to know to filter and interpret lines.
#[derive(Debug, Clone)]
pub struct ExportFilter {
    pub connection: String,
    pub migrated: MigratedRule,
}

/// Counts of what a read skipped, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStats {
    pub lines: u64,
    pub users: u64,
    pub other_connection: u64,
    pub not_database_user: u64,
}

/// Opens an export file, gzip or plain, decompressed ahead on its own thread.
pub fn open_file(path: &Path) -> Result<Box<dyn BufRead + Send>, ExportError> {
    let open_error = |source| ExportError::Open {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    let input = decompressing(BufReader::with_capacity(256 * 1024, file)).map_err(open_error)?;
    Ok(read_ahead(input))
}

/// Blocks read ahead of the reader: at most this many are in flight.
const READ_AHEAD_BLOCKS: usize = 8;
const READ_AHEAD_BLOCK_BYTES: usize = 256 * 1024;

/// Reads `input` on a thread of its own, a few blocks ahead of the consumer, so that
/// decompression (the floor of a run) overlaps parsing and classification; memory stays at a
/// few blocks. A read error reaches the consumer in order, after the data before it.
pub fn read_ahead(mut input: Box<dyn BufRead + Send>) -> Box<dyn BufRead + Send> {
    let (sender, receiver) =
        std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(READ_AHEAD_BLOCKS);
    // Read blocks come back to be filled again: no fresh allocation (and page faults) per block.
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        crate::priority::yield_to_legacy_side();
        loop {
            let mut block = recycled.try_recv().unwrap_or_default();
            block.resize(READ_AHEAD_BLOCK_BYTES, 0);
            let result = input.read(&mut block).map(|read| {
                block.truncate(read);
                block
            });
            let done = matches!(&result, Ok(block) if block.is_empty()) || result.is_err();
            // A consumer that stopped early (an error, a duplicate) waits for nothing more.
            if sender.send(result).is_err() || done {
                break;
            }
        }
    });
    Box::new(ChannelReader {
        receiver,
        recycle,
        block: Vec::new(),
        position: 0,
        finished: false,
    })
}

/// The consumer's end of [`read_ahead`]: hands out the blocks as they come, without copying.
struct ChannelReader {
    receiver: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    block: Vec<u8>,
    position: usize,
    finished: bool,
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.position == self.block.len() {
            if self.finished {
                return Ok(&[]);
            }
            match self.receiver.recv() {
                Ok(Ok(block)) if block.is_empty() => self.finished = true,
                Ok(Ok(block)) => {
                    let used = std::mem::replace(&mut self.block, block);
                    // The reader thread may have finished: then the block is simply freed.
                    let _ = self.recycle.send(used);
                    self.position = 0;
                }
                Ok(Err(error)) => {
                    self.finished = true;
                    return Err(error);
                }
                // The reader thread ended without saying so: it panicked.
                Err(_) => {
                    self.finished = true;
                    return Err(std::io::Error::other("the read-ahead thread stopped"));
                }
            }
        }
        Ok(&self.block[self.position..])
    }

    fn consume(&mut self, amount: usize) {
        self.position = (self.position + amount).min(self.block.len());
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let count = out.len().min(available.len());
        out[..count].copy_from_slice(&available[..count]);
        self.consume(count);
        Ok(count)
    }
}

/// Wraps a byte stream in a gzip decoder when it starts with the gzip magic bytes.
pub fn decompressing<R: BufRead + Send + 'static>(
    mut input: R,
) -> std::io::Result<Box<dyn BufRead + Send>> {
    let head = input.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let decoder = flate2::bufread::MultiGzDecoder::new(input);
        Ok(Box::new(BufReader::with_capacity(256 * 1024, decoder)))
    } else {
        Ok(Box::new(input))
    }
}

/// Reads every line and calls `each` for each user of the configured connection (with its
/// line number); an error from `each` stops the read and is returned as is.
pub fn read<E: From<ExportError>>(
    source_name: &str,
    mut input: impl BufRead,
    filter: &ExportFilter,
    mut each: impl FnMut(u64, Auth0User<'_>) -> Result<(), E>,
) -> Result<ExportStats, E> {
    let mut stats = ExportStats::default();
    let mut buffer = Vec::with_capacity(4096);
    loop {
        buffer.clear();
        let line_number = stats.lines + 1;
        let read = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buffer)
            .map_err(|source| ExportError::Read {
                source_name: source_name.to_owned(),
                line: stats.lines,
                source,
            })?;
        if read == 0 {
            break;
        }
        let line_error = |message: String| ExportError::Line {
            source_name: source_name.to_owned(),
            line: line_number,
            message,
        };
        stats.lines = line_number;
        if buffer.len() > MAX_LINE_BYTES {
            return Err(line_too_long(source_name, line_number).into());
        }
        match parse_line(&buffer, filter).map_err(line_error)? {
            Interpreted::User(user) => {
                stats.users += 1;
                each(line_number, user)?;
            }
            Interpreted::OtherConnection => stats.other_connection += 1,
            Interpreted::NotDatabaseUser => stats.not_database_user += 1,
            Interpreted::Blank => {}
        }
    }
    Ok(stats)
}

/// A minimal export line for `user` that [`parse_line`] reads back as the same user under the
/// same filter, with only the `fields` a run reads ([`crate::model::equality::attributes_read`]): what a parked profile
/// keeps while it waits for its legacy row (a fifth of a full line: no identities, login
/// counters…).
pub fn minimal_line(user: &Auth0User<'_>, fields: &[Field], filter: &ExportFilter) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, text: &str) {
        // Writing JSON to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"user_id\":");
    string(&mut out, user.auth0_id);
    out.extend_from_slice(b",\"connection\":");
    string(&mut out, &filter.connection);
    if let Some(created_at) = user.created_at {
        out.extend_from_slice(b",\"created_at\":");
        string(&mut out, &timestamp::format_rfc3339(created_at));
    }
    let mut app_metadata_written = false;
    for &field in fields {
        let Some(value) = user.profile.get(field) else {
            continue;
        };
        out.push(b',');
        string(&mut out, field.name());
        out.push(b':');
        match value {
            Value::Text(text) => string(&mut out, text),
            Value::Bool(value) => out.extend_from_slice(if *value { b"true" } else { b"false" }),
            Value::Object(json) => out.extend_from_slice(json.as_bytes()),
        }
        app_metadata_written |= field == Field::AppMetadata;
    }
    if let MigratedRule::AppMetadataKey(key) = &filter.migrated
        && !app_metadata_written
        && user.migrated
    {
        out.extend_from_slice(b",\"app_metadata\":{");
        string(&mut out, key);
        out.extend_from_slice(b":true}");
    }
    out.push(b'}');
    out
}

/// A users-export job's download (`name` says which, in errors) as lines to read: decompressed
/// and read ahead on a thread of its own. Call it on a blocking thread of the async runtime:
/// reading it blocks on the download.
pub fn from_download(
    name: &str,
    stream: impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + 'static,
) -> Result<Box<dyn BufRead + Send>, ExportError> {
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let input = decompressing(BufReader::with_capacity(256 * 1024, reader)).map_err(|source| {
        ExportError::Read {
            source_name: name.to_owned(),
            line: 0,
            source,
        }
    })?;
    Ok(read_ahead(input))
}

/// The error for a line over [`MAX_LINE_BYTES`].
pub fn line_too_long(source_name: &str, line: u64) -> ExportError {
    ExportError::Line {
        source_name: source_name.to_owned(),
        line,
        message: format!(
            "longer than {MAX_LINE_BYTES} bytes; the file is damaged or not an Auth0 export"
        ),
    }
}

/// What one line holds.
#[allow(
    clippy::large_enum_variant,
    reason = "lives on the stack for one line; boxing would allocate per line"
)]
pub enum Interpreted<'a> {
    User(Auth0User<'a>),
    OtherConnection,
    NotDatabaseUser,
    Blank,
}

/// Parses one line (without the line-length check, which the caller makes); the error says
/// what is wrong with it, for a message that adds the source and line number.
pub fn parse_line<'a>(bytes: &'a [u8], filter: &ExportFilter) -> Result<Interpreted<'a>, String> {
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return Ok(Interpreted::Blank);
    }
    // Validating the line as a whole first is several times cheaper than serde_json checking
    // each string on its own; a line that is not UTF-8 gets serde_json's error and position.
    let parsed = match std::str::from_utf8(text) {
        Ok(text) => serde_json::from_str::<Line<'_>>(text),
        Err(_) => serde_json::from_slice::<Line<'_>>(text),
    };
    let line = parsed.map_err(|error| format!("not a valid export line: {error}"))?;
    interpret(line, filter)
}

fn interpret<'a>(line: Line<'a>, filter: &ExportFilter) -> Result<Interpreted<'a>, String> {
    let Some(Text(user_id)) = line.user_id else {
        return Err("has no `user_id`".into());
    };
    // A `user_id` with escapes cannot be borrowed; ids are plain ASCII in practice, so an
    // escaped one is rejected rather than copied for every line.
    let Cow::Borrowed(auth0_id) = user_id else {
        return Err(format!(
            "`user_id` {:?} contains JSON escapes, which Auth0 ids never do",
            user_id
        ));
    };
    let connection = line
        .identities
        .as_ref()
        .and_then(|identities| identities.0.as_ref())
        .and_then(|identity| identity.connection.as_deref())
        .or(line.first_identity_connection.as_deref())
        .or(line.connection.as_deref());
    if connection.is_some_and(|name| name != filter.connection) {
        return Ok(Interpreted::OtherConnection);
    }
    let Some(legacy_id) = auth0_id.strip_prefix(USER_ID_PREFIX) else {
        return Ok(Interpreted::NotDatabaseUser);
    };
    if legacy_id.is_empty() {
        return Err(format!("`user_id` {auth0_id:?} has nothing after `auth0|`"));
    }

    let created_at = match line.created_at.as_deref() {
        None => None,
        Some(text) => Some(
            timestamp::parse_rfc3339(text)
                .ok_or_else(|| format!("`created_at` {text:?} is not an RFC 3339 timestamp"))?,
        ),
    };
    let user_metadata = object(Field::UserMetadata, line.user_metadata)?;
    let app_metadata = object(Field::AppMetadata, line.app_metadata)?;
    let migrated = match &filter.migrated {
        MigratedRule::Always => true,
        MigratedRule::Never => false,
        // The reconcile run resolves `import_mode` to `always` or `never` before reading.
        MigratedRule::ImportMode => true,
        MigratedRule::AppMetadataKey(key) => marker_is_set(app_metadata.as_deref(), key)?,
    };

    let mut profile = Profile::default();
    let text = |value: Option<Text<'a>>| value.map(|Text(text)| Value::Text(text));
    profile.set(Field::Email, text(line.email));
    profile.set(Field::EmailVerified, line.email_verified.map(Value::Bool));
    profile.set(Field::Name, text(line.name));
    profile.set(Field::Nickname, text(line.nickname));
    profile.set(Field::GivenName, text(line.given_name));
    profile.set(Field::FamilyName, text(line.family_name));
    profile.set(Field::Picture, text(line.picture));
    profile.set(Field::Username, text(line.username));
    profile.set(Field::Blocked, line.blocked.map(Value::Bool));
    profile.set(Field::UserMetadata, user_metadata.map(Value::Object));
    profile.set(Field::AppMetadata, app_metadata.map(Value::Object));
    Ok(Interpreted::User(Auth0User {
        auth0_id,
        legacy_id,
        profile,
        created_at,
        migrated,
    }))
}

fn object<'a>(field: Field, raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, String> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get().starts_with('{') => Ok(Some(Cow::Borrowed(raw.get()))),
        Some(raw) => Err(format!("`{field}` is not a JSON object: {}", raw.get())),
    }
}

/// A migration marker counts as set unless it is absent, `null`, `false`, `0` or `""`.
fn marker_is_set(app_metadata: Option<&str>, key: &str) -> Result<bool, String> {
    let Some(json) = app_metadata else {
        return Ok(false);
    };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let marker = serde::de::DeserializeSeed::deserialize(Marker(key), &mut deserializer)
        .map_err(|error| format!("`app_metadata` cannot be read: {error}"))?;
    Ok(match marker.map(RawValue::get) {
        None | Some("null" | "false" | "0" | "\"\"") => false,
        Some(_) => true,
    })
}

/// Finds one key's value in an object without building a map of it (this runs for every
/// profile); like a map, a key given twice counts with its last value.
struct Marker<'k>(&'k str);

impl<'de, 'k> serde::de::DeserializeSeed<'de> for Marker<'k> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, 'k> serde::de::Visitor<'de> for Marker<'k> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
            if name == self.0 {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_line_reads_back_as_the_same_user() {
        let full = r#"{"user_id":"auth0|7","email":"A\"b@x.io","email_verified":true,"name":"Ann","picture":"https://p/x.png","created_at":"2024-01-02T03:04:05.678Z","identities":[{"connection":"legacy-users","user_id":"7"}],"user_metadata":{"lang":"de"},"app_metadata":{"migrated":1,"roles":["a"]},"logins_count":3}"#;
        for migrated in [
            MigratedRule::AppMetadataKey("migrated".into()),
            MigratedRule::Always,
            MigratedRule::Never,
        ] {
            let filter = filter(migrated);
            let Ok(Interpreted::User(user)) = parse_line(full.as_bytes(), &filter) else {
                panic!("the full line is a user");
            };
            let fields = [
                Field::Email,
                Field::EmailVerified,
                Field::Name,
                Field::UserMetadata,
            ];
            let minimal = minimal_line(&user, &fields, &filter);
            assert!(minimal.len() < full.len());
            let Ok(Interpreted::User(again)) = parse_line(&minimal, &filter) else {
                panic!(
                    "the minimal line is a user: {}",
                    String::from_utf8_lossy(&minimal)
                );
            };
            assert_eq!(
                (
                    again.auth0_id,
                    again.legacy_id,
                    again.created_at,
                    again.migrated
                ),
                (
                    user.auth0_id,
                    user.legacy_id,
                    user.created_at,
                    user.migrated
                )
            );
            for field in fields {
                assert_eq!(again.profile.get(field), user.profile.get(field), "{field}");
            }
            assert_eq!(again.profile.get(Field::Picture), None);
        }
    }

    fn filter(migrated: MigratedRule) -> ExportFilter {
        ExportFilter {
            connection: "legacy-users".into(),
            migrated,
        }
    }

    fn read_all(text: &str, migrated: MigratedRule) -> Result<Vec<(String, bool)>, ExportError> {
        let mut users = Vec::new();
        read::<ExportError>("t", text.as_bytes(), &filter(migrated), |_, user| {
            users.push((user.legacy_id.to_owned(), user.migrated));
            Ok(())
        })?;
        Ok(users)
    }

    #[test]
    fn reads_the_reference_sample_with_every_connection_spelling() {
        let sample = include_str!("../../tests/data/export-sample.ndjson");
        let users = read_all(sample, MigratedRule::Always).unwrap();
        let ids: Vec<&str> = users.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["42", "43", "44", "45"]);
    }

    #[test]
    fn skips_other_connections_and_non_database_users() {
        let text = concat!(
            r#"{"user_id":"auth0|1","connection":"other"}"#,
            "\n",
            r#"{"user_id":"google-oauth2|2","identities":[{"connection":"legacy-users"}]}"#,
            "\n\n",
            r#"{"user_id":"auth0|Conn|3","identities[0].connection":"legacy-users"}"#,
            "\n",
        );
        let users = read_all(text, MigratedRule::Always).unwrap();
        assert_eq!(users, [("Conn|3".to_owned(), true)]);
    }

    #[test]
    fn migration_marker_in_app_metadata() {
        let text = concat!(
            r#"{"user_id":"auth0|1","app_metadata":{"migrated":true}}"#,
            "\n",
            r#"{"user_id":"auth0|2","app_metadata":{"migrated":false}}"#,
            "\n",
            r#"{"user_id":"auth0|3"}"#,
            "\n",
            r#"{"user_id":"auth0|4","app_metadata":{"migrated":"2024-01-01"}}"#,
            "\n",
            // Found among other keys, spelled with an escape, or given twice (the last counts).
            r#"{"user_id":"auth0|5","app_metadata":{"roles":["a"],"migr\u0061ted":{"at":1}}}"#,
            "\n",
            r#"{"user_id":"auth0|6","app_metadata":{"migrated":1,"migrated":null}}"#,
            "\n",
            r#"{"user_id":"auth0|7","app_metadata":{"migrated":0,"x":{"migrated":true}}}"#,
            "\n",
            r#"{"user_id":"auth0|8","app_metadata":{"migrated":""}}"#,
        );
        let users = read_all(text, MigratedRule::AppMetadataKey("migrated".into())).unwrap();
        let flags: Vec<bool> = users.iter().map(|(_, migrated)| *migrated).collect();
        assert_eq!(flags, [true, false, false, true, true, false, false, false]);
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let cases = [
            (
                "{\"user_id\":\"auth0|1\"}\n{not json}\n",
                2,
                "not a valid export line",
            ),
            ("{\"email\":\"a@b\"}\n", 1, "no `user_id`"),
            (
                "\n{\"user_id\":\"auth0|1\",\"created_at\":\"yesterday\"}",
                2,
                "created_at",
            ),
            (
                "{\"user_id\":\"auth0|1\",\"user_metadata\":[1]}",
                1,
                "user_metadata",
            ),
            (
                "{\"user_id\":\"auth0|1\",\"blocked\":\"yes\"}",
                1,
                "invalid type",
            ),
            ("{\"user_id\":\"auth0|\"}", 1, "nothing after"),
        ];
        for (text, line, needle) in cases {
            let message = read_all(text, MigratedRule::Always)
                .unwrap_err()
                .to_string();
            assert!(message.contains(&format!("line {line}:")), "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn invalid_utf8_and_overlong_lines_are_errors() {
        let mut bytes = b"{\"user_id\":\"auth0|1\",\"name\":\"".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b"\"}\n");
        let error = read::<ExportError>(
            "t",
            bytes.as_slice(),
            &filter(MigratedRule::Always),
            |_, _| Ok(()),
        );
        assert!(error.unwrap_err().to_string().contains("line 1:"));

        let long = format!(
            "{{\"user_id\":\"auth0|1\",\"name\":\"{}\"}}\n",
            "x".repeat(MAX_LINE_BYTES)
        );
        let error = read_all(&long, MigratedRule::Always)
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 1: longer than"), "{error}");
    }

    #[test]
    fn read_ahead_delivers_every_byte_then_the_error_in_order() {
        struct Failing {
            data: std::io::Cursor<Vec<u8>>,
        }
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                match self.data.read(out)? {
                    0 => Err(std::io::Error::other("cut")),
                    read => Ok(read),
                }
            }
        }
        let data: Vec<u8> = (0..3 * READ_AHEAD_BLOCK_BYTES + 17)
            .map(|i| i as u8)
            .collect();
        let mut all = Vec::new();
        read_ahead(Box::new(std::io::Cursor::new(data.clone())))
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, data);
        let failing = BufReader::new(Failing {
            data: std::io::Cursor::new(data.clone()),
        });
        let mut partial = Vec::new();
        let error = read_ahead(Box::new(failing))
            .read_to_end(&mut partial)
            .unwrap_err();
        assert_eq!(error.to_string(), "cut");
        assert_eq!(partial, data);
    }

    #[test]
    fn gzip_is_detected_from_the_bytes() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(b"{\"user_id\":\"auth0|7\"}\n").unwrap();
        let gz = encoder.finish().unwrap();
        let input = decompressing(std::io::Cursor::new(gz)).unwrap();
        let mut ids = Vec::new();
        read::<ExportError>("t", input, &filter(MigratedRule::Always), |_, user| {
            ids.push(user.legacy_id.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(ids, ["7"]);
    }
}
