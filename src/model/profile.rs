//! Profile attributes driftsync compares, their values, and the compact record that holds one
//! legacy user in memory while the Auth0 side is read.
//!
//! A run keeps every legacy user in memory until its Auth0 profile arrives, so the record is a
//! single heap allocation of tagged, length-prefixed values: NULLs take no space and nothing is
//! parsed twice.

use std::borrow::Cow;
use std::fmt;

/// A normalized-profile attribute that the legacy side can manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Email,
    EmailVerified,
    Name,
    Nickname,
    GivenName,
    FamilyName,
    Picture,
    Username,
    Blocked,
    UserMetadata,
    AppMetadata,
}

/// The shape of a field's value, which decides the SQL type a legacy column must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    /// A JSON object (metadata).
    Object,
}

impl Field {
    pub const ALL: [Field; 11] = [
        Field::Email,
        Field::EmailVerified,
        Field::Name,
        Field::Nickname,
        Field::GivenName,
        Field::FamilyName,
        Field::Picture,
        Field::Username,
        Field::Blocked,
        Field::UserMetadata,
        Field::AppMetadata,
    ];
    pub const COUNT: usize = Field::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            Field::Email => "email",
            Field::EmailVerified => "email_verified",
            Field::Name => "name",
            Field::Nickname => "nickname",
            Field::GivenName => "given_name",
            Field::FamilyName => "family_name",
            Field::Picture => "picture",
            Field::Username => "username",
            Field::Blocked => "blocked",
            Field::UserMetadata => "user_metadata",
            Field::AppMetadata => "app_metadata",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether Auth0 stores this attribute lower-cased (emails and usernames), so that values
    /// differing only in case are the same value. The one place this rule lives: the report's
    /// comparison, the baselines' canonical form and the push's "already in effect" check all
    /// ask here.
    pub fn ignores_case(self) -> bool {
        matches!(self, Field::Email | Field::Username)
    }

    /// The root attributes Auth0 refreshes on a cached (not imported) profile at each login when
    /// the connection's `set_user_root_attributes` is `on_each_login` (its default); with
    /// `on_first_login` or `never_on_login` they are set once and then only the Management API
    /// changes them.
    pub fn synced_at_login(self) -> bool {
        matches!(
            self,
            Field::Name | Field::Nickname | Field::GivenName | Field::FamilyName | Field::Picture
        )
    }

    pub fn kind(self) -> Kind {
        match self {
            Field::EmailVerified | Field::Blocked => Kind::Bool,
            Field::UserMetadata | Field::AppMetadata => Kind::Object,
            _ => Kind::Text,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_index(index: u8) -> Option<Field> {
        Field::ALL.get(usize::from(index)).copied()
    }

    /// Every field name, for error messages.
    pub fn names() -> String {
        Field::ALL.map(Field::name).join(", ")
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One attribute value. Metadata stays JSON text until a comparison needs its keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Text(Cow<'a, str>),
    Bool(bool),
    /// JSON text of an object.
    Object(Cow<'a, str>),
}

/// The values one side holds for a user; `None` is "no value" (NULL or absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile<'a> {
    values: [Option<Value<'a>>; Field::COUNT],
}

impl<'a> Profile<'a> {
    pub fn get(&self, field: Field) -> Option<&Value<'a>> {
        self.values[field.index()].as_ref()
    }

    pub fn set(&mut self, field: Field, value: Option<Value<'a>>) {
        self.values[field.index()] = value;
    }

    pub fn text(&self, field: Field) -> Option<&str> {
        match self.get(field) {
            Some(Value::Text(text)) => Some(text),
            _ => None,
        }
    }
}

/// Tag byte for the legacy `updated_at` timestamp in a [`LegacyRecord`]; field tags are the
/// field indexes, so this sits above them.
const TAG_UPDATED_AT: u8 = 0xFF;
/// Tag byte for the legacy `last_active_at` timestamp (the user's last activity in the legacy
/// system, optional): the not-migrated users by inactivity (`driftsync progress`).
const TAG_LAST_ACTIVE_AT: u8 = 0xFE;

/// One legacy row, packed: `[tag][len: LEB128][bytes]` per non-NULL value, booleans as one
/// byte, `updated_at` and `last_active_at` as 8 little-endian bytes of microseconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyRecord(Box<[u8]>);

/// Builds a [`LegacyRecord`] from borrowed values without intermediate allocations.
#[derive(Debug, Default)]
pub struct LegacyRecordBuilder {
    bytes: Vec<u8>,
}

impl LegacyRecordBuilder {
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    pub fn text(&mut self, field: Field, text: &str) {
        self.push(field.index() as u8, text.as_bytes());
    }

    pub fn object(&mut self, field: Field, json: &str) {
        self.push(field.index() as u8, json.as_bytes());
    }

    pub fn boolean(&mut self, field: Field, value: bool) {
        self.push(field.index() as u8, &[u8::from(value)]);
    }

    pub fn updated_at(&mut self, micros: i64) {
        self.push(TAG_UPDATED_AT, &micros.to_le_bytes());
    }

    pub fn last_active_at(&mut self, micros: i64) {
        self.push(TAG_LAST_ACTIVE_AT, &micros.to_le_bytes());
    }

    pub fn finish(&self) -> LegacyRecord {
        LegacyRecord(self.bytes.as_slice().into())
    }

    /// The record built so far, packed, without copying it.
    pub fn packed(&self) -> &[u8] {
        &self.bytes
    }

    fn push(&mut self, tag: u8, bytes: &[u8]) {
        self.bytes.push(tag);
        crate::codec::write_varint(&mut self.bytes, bytes.len());
        self.bytes.extend_from_slice(bytes);
    }
}

/// A legacy record unpacked into a [`Profile`] borrowing its bytes.
#[derive(Debug, Default)]
pub struct LegacyView<'a> {
    pub profile: Profile<'a>,
    pub updated_at: Option<i64>,
    /// The user's last activity in the legacy system, when the query returns `last_active_at`.
    pub last_active_at: Option<i64>,
}

impl LegacyRecord {
    /// Heap bytes this record holds (for memory accounting).
    pub fn heap_len(&self) -> usize {
        self.0.len()
    }

    pub fn view(&self) -> LegacyView<'_> {
        LegacyView::of(&self.0)
    }

    /// A record from its packed bytes (as [`LegacyRecordBuilder::packed`] gives them).
    pub fn from_packed(bytes: &[u8]) -> LegacyRecord {
        LegacyRecord(bytes.into())
    }

    /// The packed bytes, to be kept inside a larger allocation (the join table).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl<'a> LegacyView<'a> {
    /// Unpacks the bytes of a [`LegacyRecord`].
    pub fn of(bytes: &'a [u8]) -> LegacyView<'a> {
        let mut view = LegacyView::default();
        let mut rest: &[u8] = bytes;
        // The builder is the only writer, so the encoding is well formed; a short read simply
        // ends the walk instead of panicking.
        while let Some((&tag, after_tag)) = rest.split_first() {
            let Some((len, after_len)) = crate::codec::read_varint(after_tag) else {
                break;
            };
            let Some((bytes, after_value)) = after_len.split_at_checked(len) else {
                break;
            };
            rest = after_value;
            if tag == TAG_UPDATED_AT || tag == TAG_LAST_ACTIVE_AT {
                if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
                    let micros = Some(i64::from_le_bytes(raw));
                    match tag {
                        TAG_UPDATED_AT => view.updated_at = micros,
                        _ => view.last_active_at = micros,
                    }
                }
                continue;
            }
            let Some(field) = Field::from_index(tag) else {
                continue;
            };
            let value = match field.kind() {
                Kind::Bool => Value::Bool(bytes.first() == Some(&1)),
                Kind::Text => Value::Text(Cow::Borrowed(utf8(bytes))),
                Kind::Object => Value::Object(Cow::Borrowed(utf8(bytes))),
            };
            view.profile.set(field, Some(value));
        }
        view
    }
}

fn utf8(bytes: &[u8]) -> &str {
    // Only `&str` values are ever written, so this cannot fail; an empty string is the
    // harmless answer if it somehow did.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Building profiles in unit tests.
/// Prefix of every database-connection user id.
pub const USER_ID_PREFIX: &str = "auth0|";

/// One Auth0 profile of the configured connection.
#[derive(Debug)]
pub struct Auth0User<'a> {
    /// The full Auth0 id, `auth0|…`.
    pub auth0_id: &'a str,
    /// The legacy `user_id`: the Auth0 id without its first `auth0|`.
    pub legacy_id: &'a str,
    pub profile: Profile<'a>,
    /// The migration moment for migrated users.
    pub created_at: Option<i64>,
    pub migrated: bool,
}

/// A JSON string borrowed from the line when it has no escapes. (serde only borrows a bare
/// `Cow<str>` field, not one inside an `Option`, hence this type.)
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// How driftsync decides that an Auth0 user was migrated (and so is no longer refreshed from
/// the legacy database at login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigratedRule {
    /// The connection's `options.import_mode` (read through the Management API).
    ImportMode,
    Always,
    Never,
    /// A marker the Login script sets in `app_metadata`, e.g. `app_metadata.migrated`.
    AppMetadataKey(String),
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn profile(values: &[(Field, Value<'static>)]) -> Profile<'static> {
        let mut profile = Profile::default();
        for (field, value) in values {
            profile.set(*field, Some(value.clone()));
        }
        profile
    }

    pub fn text(value: &'static str) -> Value<'static> {
        Value::Text(Cow::Borrowed(value))
    }

    pub fn object(value: &'static str) -> Value<'static> {
        Value::Object(Cow::Borrowed(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_every_kind_and_skips_nulls() {
        let mut builder = LegacyRecordBuilder::default();
        builder.text(Field::Email, "a@b.io");
        builder.boolean(Field::Blocked, true);
        builder.boolean(Field::EmailVerified, false);
        let long = "x".repeat(300);
        builder.text(Field::Name, &long);
        builder.object(Field::UserMetadata, r#"{"k":1}"#);
        builder.updated_at(-42);
        builder.last_active_at(7);
        let record = builder.finish();
        let view = record.view();
        assert_eq!(view.profile.text(Field::Email), Some("a@b.io"));
        assert_eq!(view.profile.text(Field::Name), Some(long.as_str()));
        assert_eq!(view.profile.get(Field::Blocked), Some(&Value::Bool(true)));
        assert_eq!(
            view.profile.get(Field::EmailVerified),
            Some(&Value::Bool(false))
        );
        assert_eq!(
            view.profile.get(Field::UserMetadata),
            Some(&Value::Object(Cow::Borrowed(r#"{"k":1}"#)))
        );
        assert_eq!(view.profile.get(Field::Picture), None);
        assert_eq!(view.updated_at, Some(-42));
        assert_eq!(view.last_active_at, Some(7));
    }

    #[test]
    fn field_names_round_trip() {
        for field in Field::ALL {
            assert_eq!(Field::from_name(field.name()), Some(field));
        }
        assert_eq!(Field::from_name("user_id"), None);
    }
}
