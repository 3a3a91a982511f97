//! `PATCH /api/v2/users/{id}` as Auth0 applies it, as a pure function of the stored profile,
//! the user's migration state and the request body.
//!
//! Checks run in the order Auth0's validator appears to use: the body's shape, unknown
//! properties, property types, rejected combinations, and only then what a cached
//! (not migrated) profile may change. Where Auth0's documentation and observed behaviour
//! differ, the stricter reading is implemented (see `SIMULATOR.md`).

use serde_json::{Map, Value};

use super::reply::type_name;

/// Every property the endpoint accepts.
const ALLOWED: [&str; 18] = [
    "blocked",
    "email_verified",
    "email",
    "phone_number",
    "phone_verified",
    "verify_email",
    "verify_phone_number",
    "password",
    "user_metadata",
    "app_metadata",
    "given_name",
    "family_name",
    "name",
    "nickname",
    "picture",
    "username",
    "connection",
    "client_id",
];

/// What a cached profile may carry in a PATCH body. `connection` and `client_id` are request
/// context, not attributes.
const CACHED_ALLOWED: [&str; 5] = [
    "app_metadata",
    "user_metadata",
    "blocked",
    "connection",
    "client_id",
];

/// Root attributes that `null` removes.
const NULLABLE: [&str; 6] = [
    "name",
    "nickname",
    "given_name",
    "family_name",
    "picture",
    "username",
];

/// Pairs Auth0 refuses in one request.
const REJECTED_PAIRS: [(&str, &str); 3] = [
    ("username", "password"),
    ("username", "email_verified"),
    ("password", "email_verified"),
];

/// Why a PATCH body is refused; all are 400 answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatchError {
    #[error("Payload validation error: 'Expected type object but found type {0}'.")]
    NotAnObject(&'static str),
    #[error("Payload validation error: 'Too few properties defined (0), minimum 1'.")]
    Empty,
    #[error("Payload validation error: 'Additional properties not allowed: {0}'.")]
    UnknownProperty(String),
    #[error(
        "Payload validation error: 'Expected type {expected} but found type {found}' on property {property}."
    )]
    WrongType {
        property: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "Payload validation error: 'String is too short (0 chars), minimum 1' on property {0}."
    )]
    EmptyString(String),
    #[error(
        "Payload validation error: 'Object didn't pass validation for format email: {0}' on property email."
    )]
    BadEmail(String),
    #[error("Cannot update {0} and {1} simultaneously.")]
    Combination(&'static str, &'static str),
    #[error(
        "Cannot update root attribute '{0}': the user's profile is cached from a custom database \
         connection that does not import users (import_mode is off). Only app_metadata, \
         user_metadata and blocked can be updated; change other attributes in the custom database, \
         Auth0 refreshes the cached profile at the next login."
    )]
    CachedProfile(String),
}

impl PatchError {
    pub fn error_code(&self) -> &'static str {
        match self {
            PatchError::CachedProfile(_) => "operation_not_supported",
            _ => "invalid_body",
        }
    }
}

/// Validates `body` and applies it to `profile`; on error `profile` is untouched.
/// `now` becomes `updated_at`.
pub(crate) fn apply(
    profile: &mut Map<String, Value>,
    migrated: bool,
    body: &Value,
    now: &str,
) -> Result<(), PatchError> {
    let body = validate(body, migrated)?;
    for (key, value) in body {
        match key.as_str() {
            "email" => {
                let email = value.as_str().unwrap_or_default().to_lowercase();
                let changed = profile
                    .get("email")
                    .and_then(Value::as_str)
                    .is_none_or(|old| old.to_lowercase() != email);
                if changed && !body.contains_key("email_verified") {
                    profile.insert("email_verified".into(), Value::Bool(false));
                }
                profile.insert(key.clone(), Value::String(email));
            }
            "user_metadata" | "app_metadata" => merge_metadata(profile, key, value),
            // Write-only or request context: never part of the profile.
            "password" | "verify_email" | "verify_phone_number" | "connection" | "client_id" => {}
            _ if value.is_null() => {
                profile.remove(key);
            }
            _ => {
                profile.insert(key.clone(), value.clone());
            }
        }
    }
    profile.insert("updated_at".into(), Value::String(now.to_owned()));
    Ok(())
}

fn validate(body: &Value, migrated: bool) -> Result<&Map<String, Value>, PatchError> {
    let Value::Object(body) = body else {
        return Err(PatchError::NotAnObject(type_name(body)));
    };
    if body.is_empty() {
        return Err(PatchError::Empty);
    }
    if let Some(unknown) = body.keys().find(|key| !ALLOWED.contains(&key.as_str())) {
        return Err(PatchError::UnknownProperty(unknown.clone()));
    }
    for (key, value) in body {
        check_type(key, value)?;
    }
    for (first, second) in REJECTED_PAIRS {
        if body.contains_key(first) && body.contains_key(second) {
            return Err(PatchError::Combination(first, second));
        }
    }
    if !migrated
        && let Some(root) = body
            .keys()
            .find(|key| !CACHED_ALLOWED.contains(&key.as_str()))
    {
        return Err(PatchError::CachedProfile(root.clone()));
    }
    Ok(body)
}

fn check_type(key: &str, value: &Value) -> Result<(), PatchError> {
    let expected = match key {
        "blocked"
        | "email_verified"
        | "phone_verified"
        | "verify_email"
        | "verify_phone_number" => "boolean",
        "user_metadata" | "app_metadata" => "object",
        _ => "string",
    };
    let nullable = NULLABLE.contains(&key);
    let found = type_name(value);
    if found != expected && !(nullable && value.is_null()) {
        return Err(PatchError::WrongType {
            property: key.to_owned(),
            expected,
            found,
        });
    }
    if let Value::String(text) = value {
        if text.is_empty() {
            return Err(PatchError::EmptyString(key.to_owned()));
        }
        if key == "email" && !looks_like_email(text) {
            return Err(PatchError::BadEmail(text.clone()));
        }
    }
    Ok(())
}

fn looks_like_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !text.contains(' ')
        }
        None => false,
    }
}

/// One level deep: keys in `patch` replace, a key set to `null` is deleted.
fn merge_metadata(profile: &mut Map<String, Value>, key: &str, patch: &Value) {
    let Value::Object(patch) = patch else {
        return;
    };
    let target = profile
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (name, value) in patch {
            if value.is_null() {
                target.remove(name);
            } else {
                target.insert(name.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2025-01-01T00:00:00.000Z";

    fn user() -> Map<String, Value> {
        let Value::Object(map) = json!({
            "user_id": "auth0|1", "email": "a@x.io", "email_verified": true,
            "name": "A", "nickname": "a", "updated_at": "2024-01-01T00:00:00.000Z",
            "user_metadata": {"lang": "en", "plan": "free", "prefs": {"x": 1}},
        }) else {
            unreachable!()
        };
        map
    }

    fn patch(migrated: bool, body: Value) -> Result<Map<String, Value>, PatchError> {
        let mut profile = user();
        apply(&mut profile, migrated, &body, NOW).map(|()| profile)
    }

    #[test]
    fn metadata_merges_one_level_with_null_deletes() {
        let after = patch(
            true,
            json!({"user_metadata": {"plan": "pro", "lang": null, "prefs": {"y": 2}}}),
        )
        .unwrap();
        assert_eq!(
            after["user_metadata"],
            json!({"plan": "pro", "prefs": {"y": 2}})
        );
        assert_eq!(after["updated_at"], NOW);
        let unchanged = patch(true, json!({"user_metadata": {}})).unwrap();
        assert_eq!(unchanged["user_metadata"], user()["user_metadata"]);
        let created = patch(true, json!({"app_metadata": {"migrated": true}})).unwrap();
        assert_eq!(created["app_metadata"], json!({"migrated": true}));
    }

    #[test]
    fn root_fields_replace_and_null_unsets() {
        let after = patch(true, json!({"name": "B", "nickname": null})).unwrap();
        assert_eq!(after["name"], "B");
        assert!(!after.contains_key("nickname"));
    }

    #[test]
    fn email_change_resets_verification_unless_sent() {
        let after = patch(true, json!({"email": "New@X.io"})).unwrap();
        assert_eq!(
            (&after["email"], &after["email_verified"]),
            (&json!("new@x.io"), &json!(false))
        );
        let after = patch(true, json!({"email": "new@x.io", "email_verified": true})).unwrap();
        assert_eq!(after["email_verified"], true);
        let same = patch(true, json!({"email": "A@x.io"})).unwrap();
        assert_eq!(same["email_verified"], true, "same address, case aside");
    }

    #[test]
    fn cached_profiles_only_take_metadata_and_blocked() {
        let error = patch(false, json!({"blocked": true, "email": "b@x.io"})).unwrap_err();
        assert_eq!(error, PatchError::CachedProfile("email".into()));
        assert_eq!(error.error_code(), "operation_not_supported");
        let after = patch(
            false,
            json!({"blocked": true, "app_metadata": {"a": 1}, "connection": "legacy"}),
        )
        .unwrap();
        assert_eq!(after["blocked"], true);
    }

    #[test]
    fn invalid_bodies() {
        let cases = [
            (json!([1]), PatchError::NotAnObject("array")),
            (json!({}), PatchError::Empty),
            (
                json!({"name": "x", "foo": 1}),
                PatchError::UnknownProperty("foo".into()),
            ),
            (
                json!({"blocked": "yes"}),
                PatchError::WrongType {
                    property: "blocked".into(),
                    expected: "boolean",
                    found: "string",
                },
            ),
            (
                json!({"user_metadata": null}),
                PatchError::WrongType {
                    property: "user_metadata".into(),
                    expected: "object",
                    found: "null",
                },
            ),
            (
                json!({"email": null}),
                PatchError::WrongType {
                    property: "email".into(),
                    expected: "string",
                    found: "null",
                },
            ),
            (json!({"name": ""}), PatchError::EmptyString("name".into())),
            (
                json!({"email": "nope"}),
                PatchError::BadEmail("nope".into()),
            ),
            (
                json!({"username": "u", "password": "p"}),
                PatchError::Combination("username", "password"),
            ),
            (
                json!({"email_verified": true, "username": "u"}),
                PatchError::Combination("username", "email_verified"),
            ),
            (
                json!({"password": "p", "email_verified": false}),
                PatchError::Combination("password", "email_verified"),
            ),
        ];
        for (body, expected) in cases {
            let error = patch(true, body.clone()).unwrap_err();
            assert_eq!(error, expected, "{body}");
            assert_eq!(error.error_code(), "invalid_body");
        }
    }
}
