//! Planning: turns the keys the legacy side changed into `PATCH /api/v2/users/{id}` bodies that
//! Auth0 accepts (`../shared/reference/auth0.md`):
//! - only the root attributes allowed for the user's state: a cached custom-database profile
//!   (connection without `import_mode`) takes only `app_metadata`, `user_metadata` and
//!   `blocked`; a migrated one also the configured profile attributes;
//! - metadata as first-level keys, `null` for a key the legacy side removed, so keys only Auth0
//!   has are never touched (Auth0 merges one level deep);
//! - `email` always with `email_verified`, because Auth0 resets verification otherwise;
//! - the combinations Auth0 rejects (`username` with `email_verified` or `password`) split into
//!   separate requests.

use serde_json::{Map, Value as Json};

use crate::baseline::KeyValues;
use crate::profile::{Field, Kind, Profile, Value};

/// Root attributes a push may set on a migrated user by default (the reference's list).
pub const DEFAULT_MIGRATED_FIELDS: [Field; 7] = [
    Field::Email,
    Field::EmailVerified,
    Field::Name,
    Field::Nickname,
    Field::GivenName,
    Field::FamilyName,
    Field::Picture,
];

/// What a cached (not migrated) custom-database profile accepts.
const CACHED_FIELDS: [Field; 3] = [Field::Blocked, Field::UserMetadata, Field::AppMetadata];

#[derive(Debug, Clone)]
pub struct PushPolicy {
    /// The connection's `import_mode`: users are migrated into Auth0's own store.
    pub import_mode: bool,
    /// Root attributes allowed for migrated users (besides blocked and metadata).
    pub migrated_fields: Vec<Field>,
    /// Whether the legacy query manages `email_verified` (else Auth0's value is kept).
    pub legacy_has_email_verified: bool,
}

impl PushPolicy {
    fn allows(&self, field: Field) -> bool {
        CACHED_FIELDS.contains(&field)
            || (self.import_mode && self.migrated_fields.contains(&field))
    }
}

/// The requests for one user, and what could not be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct UserPlan {
    /// One or more PATCH bodies, sent in order.
    pub bodies: Vec<Map<String, Json>>,
    /// The keys the bodies set, with the hash of their legacy value, for the baselines.
    pub keys: Vec<(String, i64)>,
    /// Root fields the legacy side changed that Auth0 does not accept for this user.
    pub refused: Vec<Field>,
}

/// Plans the push of `changed` (keys the legacy side changed) for one user.
pub fn plan_user(
    changed: &[&KeyValues],
    legacy: &Profile<'_>,
    auth0: &Profile<'_>,
    policy: &PushPolicy,
) -> UserPlan {
    let mut body = Map::new();
    let mut keys = Vec::new();
    let mut refused = Vec::new();
    for values in changed {
        let (field_name, metadata_key) = match values.key.split_once('.') {
            Some((field, key)) => (field, Some(key)),
            None => (values.key.as_ref(), None),
        };
        let Some(field) = Field::from_name(field_name) else {
            continue;
        };
        if !policy.allows(field) {
            if !refused.contains(&field) {
                refused.push(field);
            }
            continue;
        }
        match (field.kind(), metadata_key) {
            (Kind::Object, Some(key)) => {
                let value = metadata_value(legacy.get(field), key);
                let object = body
                    .entry(field.name())
                    .or_insert_with(|| Json::Object(Map::new()));
                if let Json::Object(object) = object {
                    object.insert(key.to_owned(), value);
                }
            }
            (Kind::Object, None) => continue,
            (Kind::Bool, _) => {
                let value = matches!(legacy.get(field), Some(Value::Bool(true)));
                body.insert(field.name().to_owned(), Json::Bool(value));
            }
            (Kind::Text, _) => {
                let text = legacy.text(field).filter(|text| !text.is_empty());
                if field == Field::Email && text.is_none() {
                    // Auth0 cannot unset a database user's email; a person has to decide.
                    refused.push(field);
                    continue;
                }
                body.insert(
                    field.name().to_owned(),
                    text.map_or(Json::Null, |text| Json::String(text.to_owned())),
                );
            }
        }
        keys.push((values.key.to_string(), values.legacy));
    }
    if body.contains_key("email") && !body.contains_key("email_verified") {
        let verified = if policy.legacy_has_email_verified {
            legacy.get(Field::EmailVerified)
        } else {
            auth0.get(Field::EmailVerified)
        };
        body.insert(
            "email_verified".into(),
            Json::Bool(matches!(verified, Some(Value::Bool(true)))),
        );
    }
    let mut bodies = Vec::new();
    // Auth0 rejects username together with email_verified (and password, never sent here).
    if body.contains_key("username") && body.contains_key("email_verified") {
        let mut username = Map::new();
        if let Some(value) = body.remove("username") {
            username.insert("username".into(), value);
        }
        bodies.push(body);
        bodies.push(username);
    } else if !body.is_empty() {
        bodies.push(body);
    }
    UserPlan {
        bodies,
        keys,
        refused,
    }
}

/// The legacy value of one metadata key, `null` when the legacy object no longer has it.
fn metadata_value(object: Option<&Value<'_>>, key: &str) -> Json {
    let Some(Value::Object(text)) = object else {
        return Json::Null;
    };
    serde_json::from_str::<Map<String, Json>>(text)
        .ok()
        .and_then(|mut map| map.remove(key))
        .unwrap_or(Json::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::key_values;
    use crate::profile::fixtures::{object, profile, text};
    use serde_json::json;

    fn policy(import_mode: bool) -> PushPolicy {
        PushPolicy {
            import_mode,
            migrated_fields: DEFAULT_MIGRATED_FIELDS.to_vec(),
            legacy_has_email_verified: false,
        }
    }

    fn plan(
        fields: &[Field],
        legacy: &Profile,
        auth0: &Profile,
        extra: &[(Field, &str)],
        policy: &PushPolicy,
    ) -> UserPlan {
        let keys = key_values(fields, legacy, auth0, extra);
        let changed: Vec<&KeyValues> = keys.iter().filter(|k| k.differs()).collect();
        plan_user(&changed, legacy, auth0, policy)
    }

    #[test]
    fn email_goes_with_the_current_verification() {
        let legacy = profile(&[(Field::Email, text("new@x.io"))]);
        let auth0 = profile(&[
            (Field::Email, text("old@x.io")),
            (Field::EmailVerified, Value::Bool(true)),
        ]);
        let plan = plan(&[Field::Email], &legacy, &auth0, &[], &policy(true));
        assert_eq!(
            plan.bodies,
            [json!({"email": "new@x.io", "email_verified": true})
                .as_object()
                .unwrap()
                .clone()]
        );
        assert_eq!(
            plan.keys,
            [("email".to_owned(), crate::baseline::hash(Some("new@x.io")))]
        );
    }

    #[test]
    fn cached_profiles_get_only_metadata_and_blocked() {
        let legacy = profile(&[
            (Field::Name, text("New")),
            (Field::Blocked, Value::Bool(true)),
        ]);
        let auth0 = profile(&[(Field::Name, text("Old"))]);
        let plan = plan(
            &[Field::Name, Field::Blocked],
            &legacy,
            &auth0,
            &[],
            &policy(false),
        );
        assert_eq!(
            plan.bodies,
            [json!({"blocked": true}).as_object().unwrap().clone()]
        );
        assert_eq!(plan.refused, [Field::Name]);
    }

    #[test]
    fn metadata_sends_changed_keys_and_null_for_removed_ones() {
        let legacy = profile(&[(Field::UserMetadata, object(r#"{"lang":"de","same":1}"#))]);
        let auth0 = profile(&[(
            Field::UserMetadata,
            object(r#"{"lang":"en","same":1,"plan":"pro","auth0_only":true}"#),
        )]);
        let plan = plan(
            &[Field::UserMetadata],
            &legacy,
            &auth0,
            &[(Field::UserMetadata, "plan")],
            &policy(true),
        );
        assert_eq!(
            plan.bodies,
            [json!({"user_metadata": {"lang": "de", "plan": null}})
                .as_object()
                .unwrap()
                .clone()]
        );
    }

    #[test]
    fn username_and_email_verified_go_in_separate_requests() {
        let legacy = profile(&[
            (Field::Username, text("pat")),
            (Field::EmailVerified, Value::Bool(true)),
        ]);
        let auth0 = profile(&[(Field::Username, text("patrick"))]);
        let mut with_username = policy(true);
        with_username.migrated_fields.push(Field::Username);
        let plan = plan(
            &[Field::Username, Field::EmailVerified],
            &legacy,
            &auth0,
            &[],
            &with_username,
        );
        assert_eq!(
            plan.bodies,
            [
                json!({"email_verified": true}).as_object().unwrap().clone(),
                json!({"username": "pat"}).as_object().unwrap().clone()
            ]
        );
    }
}
