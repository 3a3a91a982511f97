//! The tenant's data: database connections and the users stored in them.
//!
//! A user is kept as its serialized JSON profile (an `Arc<str>`), not as a JSON tree: a
//! million generated users then take about as much memory as their export file, loading an
//! export line is a validation plus a copy, and an export job snapshots the users by cloning
//! `Arc`s. Profiles are parsed only when one is read or patched. Users are ordered by
//! `user_id`, which gives the search its deterministic order.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

use super::patch::UserState;
use super::reply::{now_rfc3339, random_text};
use super::{ConnectionSettings, GetUserScript};

/// Prefix of database-connection user ids.
const AUTH0_PREFIX: &str = "auth0|";

/// A database connection (strategy `auth0`).
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub id: String,
    pub name: String,
    pub settings: ConnectionSettings,
}

impl Connection {
    /// The connection as `GET /api/v2/connections` shows it. `set_user_root_attributes` is
    /// left out while it has its default, `on_each_login` (as Auth0's API is seen to do).
    pub fn to_json(&self) -> Value {
        let mut options = json!({
            "import_mode": self.settings.import_mode,
            "enabledDatabaseCustomization": true,
            "brute_force_protection": true,
            "requires_username": false,
        });
        if let Some(sync) = &self.settings.set_user_root_attributes {
            options["set_user_root_attributes"] = json!(sync);
        }
        json!({
            "id": self.id,
            "name": self.name,
            "strategy": "auth0",
            "options": options,
            "enabled_clients": [],
            "is_domain_connection": false,
            "realms": [self.name],
        })
    }

    /// What the connection lets a PATCH change for its users.
    pub fn user_state(&self) -> UserState {
        UserState {
            migrated: self.settings.import_mode,
            root_attributes_editable: matches!(
                self.settings.set_user_root_attributes.as_deref(),
                Some("on_first_login" | "never_on_login")
            ),
        }
    }

    /// The Get User script Auth0 runs on an email or username change: only with import mode.
    pub fn get_user(&self) -> Option<&GetUserScript> {
        self.settings
            .get_user
            .as_ref()
            .filter(|_| self.settings.import_mode)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct StoredUser {
    /// Index into the tenant's connections.
    pub connection: usize,
    pub json: Arc<str>,
}

/// Why a profile cannot be stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProfileError {
    #[error("a profile must be a JSON object")]
    NotAnObject,
    #[error("the profile has no string `user_id`")]
    NoUserId,
    #[error("not a JSON profile: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Default)]
pub(crate) struct Tenant {
    connections: Vec<Connection>,
    users: BTreeMap<String, StoredUser>,
}

impl Tenant {
    /// Adds a connection, or replaces the settings of the one with that name; returns its id.
    pub fn configure_connection(&mut self, name: &str, settings: ConnectionSettings) -> String {
        if let Some(existing) = self.connections.iter_mut().find(|c| c.name == name) {
            existing.settings = settings;
            return existing.id.clone();
        }
        let id = format!("con_{}", random_text(16));
        self.connections.push(Connection {
            id: id.clone(),
            name: name.to_owned(),
            settings,
        });
        id
    }

    /// Adds a connection, or updates `import_mode` of the one with that name; returns its id.
    pub fn add_connection(&mut self, name: &str, import_mode: bool) -> String {
        let mut settings = self
            .connections
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.settings.clone())
            .unwrap_or_default();
        settings.import_mode = import_mode;
        self.configure_connection(name, settings)
    }

    pub fn connections(&self) -> &[Connection] {
        &self.connections
    }

    pub fn connection(&self, index: usize) -> Option<&Connection> {
        self.connections.get(index)
    }

    pub fn connection_by_id(&self, id: &str) -> Option<usize> {
        self.connections.iter().position(|c| c.id == id)
    }

    /// The connection with this name or id; an unknown name creates a connection without
    /// import mode (helpers that take a connection name never fail).
    pub fn connection_for_insert(&mut self, name_or_id: &str) -> usize {
        if let Some(index) = self
            .connections
            .iter()
            .position(|c| c.name == name_or_id || c.id == name_or_id)
        {
            return index;
        }
        tracing::warn!(
            connection = name_or_id,
            "simulator: unknown connection, creating it without import mode"
        );
        self.add_connection(name_or_id, false);
        self.connections.len() - 1
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn insert(&mut self, user_id: String, user: StoredUser) {
        self.users.insert(user_id, user);
    }

    /// The parsed profile and its connection.
    pub fn profile(&self, user_id: &str) -> Option<(Map<String, Value>, &Connection)> {
        let stored = self.users.get(user_id)?;
        let connection = self.connection(stored.connection)?;
        // Stored JSON was produced or validated by this module, so it parses.
        let profile = serde_json::from_str(&stored.json).ok()?;
        Some((profile, connection))
    }

    /// Replaces a user's profile (after a PATCH), keeping its connection.
    pub fn replace(&mut self, user_id: &str, profile: &Map<String, Value>) {
        if let Some(stored) = self.users.get_mut(user_id) {
            stored.json = Arc::from(Value::Object(profile.clone()).to_string());
        }
    }

    pub fn remove(&mut self, user_id: &str) -> bool {
        self.users.remove(user_id).is_some()
    }

    /// The users in `user_id` order, with their connection index.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &StoredUser)> {
        self.users.iter()
    }

    /// The profiles an export of `connection` (all connections when `None`) contains.
    pub fn snapshot(&self, connection: Option<usize>, limit: Option<u64>) -> Vec<Arc<str>> {
        let limit = limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        self.users
            .values()
            .filter(|user| connection.is_none_or(|index| user.connection == index))
            .take(limit)
            .map(|user| Arc::clone(&user.json))
            .collect()
    }
}

/// Completes a profile as Auth0 would hold it: an `identities` entry for the connection and
/// `created_at`/`updated_at` when missing. A missing `user_id` gets a generated one when
/// `generate_id` is set.
pub(crate) fn normalize(
    profile: Value,
    connection: &str,
    generate_id: bool,
) -> Result<(String, Map<String, Value>), ProfileError> {
    let Value::Object(mut profile) = profile else {
        return Err(ProfileError::NotAnObject);
    };
    let user_id = match profile.get("user_id") {
        Some(Value::String(id)) => id.clone(),
        None if generate_id => {
            let id = format!("{AUTH0_PREFIX}{}", random_text(24).to_ascii_lowercase());
            profile.insert("user_id".into(), json!(id));
            id
        }
        _ => return Err(ProfileError::NoUserId),
    };
    if !profile.contains_key("identities") {
        let bare = user_id.strip_prefix(AUTH0_PREFIX).unwrap_or(&user_id);
        profile.insert(
            "identities".into(),
            json!([{"connection": connection, "provider": "auth0",
                    "user_id": bare, "isSocial": false}]),
        );
    }
    if !profile.contains_key("created_at") {
        profile.insert("created_at".into(), json!(now_rfc3339()));
    }
    if !profile.contains_key("updated_at") {
        let created = profile.get("created_at").cloned().unwrap_or(Value::Null);
        profile.insert("updated_at".into(), created);
    }
    Ok((user_id, profile))
}

/// The few keys the fast path of [`read_ndjson`] looks at; the rest is only validated.
#[derive(Deserialize)]
struct LineHead {
    user_id: Option<String>,
    identities: Option<IgnoredAny>,
    created_at: Option<IgnoredAny>,
    updated_at: Option<IgnoredAny>,
}

/// Parses NDJSON export lines into `(user_id, json)` pairs, calling `batch` with every few
/// thousand so that the caller can insert them without holding its lock for the whole file.
/// A line that already has `identities`, `created_at` and `updated_at` is stored verbatim.
pub(crate) fn read_ndjson(
    connection: &str,
    mut reader: impl BufRead,
    mut batch: impl FnMut(Vec<(String, Arc<str>)>),
) -> std::io::Result<u64> {
    const BATCH: usize = 8192;
    let mut pending = Vec::with_capacity(BATCH);
    let mut line = Vec::with_capacity(4096);
    let mut line_number = 0u64;
    let mut loaded = 0u64;
    let invalid = |line_number: u64, error: ProfileError| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("NDJSON line {line_number}: {error}"),
        )
    };
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        line_number += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        // A struct also deserializes from a JSON array; only objects are profiles.
        if text.first() != Some(&b'{') {
            return Err(invalid(line_number, ProfileError::NotAnObject));
        }
        let head: LineHead =
            serde_json::from_slice(text).map_err(|error| invalid(line_number, error.into()))?;
        let entry = match head {
            LineHead {
                user_id: Some(user_id),
                identities: Some(_),
                created_at: Some(_),
                updated_at: Some(_),
            } => {
                // Validated by the parse above, so valid UTF-8.
                let json = std::str::from_utf8(text)
                    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
                (user_id, Arc::from(json))
            }
            _ => {
                let profile: Value = serde_json::from_slice(text)
                    .map_err(|error| invalid(line_number, error.into()))?;
                let (user_id, profile) = normalize(profile, connection, false)
                    .map_err(|error| invalid(line_number, error))?;
                (user_id, Arc::from(Value::Object(profile).to_string()))
            }
        };
        pending.push(entry);
        loaded += 1;
        if pending.len() == BATCH {
            batch(std::mem::replace(&mut pending, Vec::with_capacity(BATCH)));
        }
    }
    if !pending.is_empty() {
        batch(pending);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_adds_identities_and_timestamps() {
        let (id, profile) = normalize(
            json!({"user_id": "auth0|Conn|7", "email": "a@b.c"}),
            "legacy",
            false,
        )
        .unwrap();
        assert_eq!(id, "auth0|Conn|7");
        assert_eq!(
            profile["identities"],
            json!([{"connection": "legacy", "provider": "auth0",
                    "user_id": "Conn|7", "isSocial": false}])
        );
        assert_eq!(profile["created_at"], profile["updated_at"]);
        assert!(matches!(
            normalize(json!({"email": "x"}), "legacy", false),
            Err(ProfileError::NoUserId)
        ));
        let (generated, _) = normalize(json!({}), "legacy", true).unwrap();
        assert!(generated.starts_with("auth0|"));
    }

    #[test]
    fn ndjson_keeps_complete_lines_verbatim_and_completes_others() {
        let text = concat!(
            r#"{"user_id":"auth0|2","identities":[],"created_at":"x","updated_at":"y"}"#,
            "\n\n",
            r#"{"user_id":"auth0|1","email":"a@b.c"}"#,
            "\n",
        );
        let mut users = Vec::new();
        let count = read_ndjson("legacy", text.as_bytes(), |batch| users.extend(batch)).unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            &*users[0].1,
            r#"{"user_id":"auth0|2","identities":[],"created_at":"x","updated_at":"y"}"#
        );
        assert!(users[1].1.contains(r#""connection":"legacy""#));

        let error = read_ndjson("legacy", "{}\n[1]\n".as_bytes(), |_| {}).unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
        let error = read_ndjson("legacy", "[1]\n".as_bytes(), |_| {}).unwrap_err();
        assert!(error.to_string().contains("JSON object"), "{error}");
    }

    #[test]
    fn snapshot_filters_by_connection_in_id_order() {
        let mut tenant = Tenant::default();
        tenant.add_connection("a", true);
        let b = tenant.connection_for_insert("b");
        for (id, connection) in [("auth0|3", 0), ("auth0|1", 0), ("auth0|2", b)] {
            let json = Arc::from(format!(r#"{{"user_id":"{id}"}}"#));
            tenant.insert(id.into(), StoredUser { connection, json });
        }
        let ids: Vec<String> = tenant
            .snapshot(Some(0), None)
            .iter()
            .map(|json| json.to_string())
            .collect();
        assert_eq!(
            ids,
            [r#"{"user_id":"auth0|1"}"#, r#"{"user_id":"auth0|3"}"#]
        );
        assert_eq!(tenant.snapshot(None, Some(2)).len(), 2);
        let (_, connection) = tenant.profile("auth0|1").unwrap();
        assert!(connection.user_state().migrated);
        assert!(!tenant.profile("auth0|2").unwrap().1.user_state().migrated);
    }
}
