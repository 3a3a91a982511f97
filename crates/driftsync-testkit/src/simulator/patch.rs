//! `PATCH /api/v2/users/{id}` as Auth0 applies it, as a pure function of the stored profile,
//! the user's state (migrated or cached, what its connection lets the API change) and the
//! request body. The Get User script that Auth0 runs on an email or username change of an
//! import-mode connection is an I/O step around this (see `routes.rs`); [`changed_identifiers`]
//! says when it runs.
//!
//! Checks run in the order Auth0's validator appears to use: the body's shape, unknown
//! properties, property types, rejected combinations, and only then what a cached
//! (not migrated) profile may change. Where Auth0's documentation and observed behaviour
//! differ, the stricter reading is implemented (see `SIMULATOR.md`, which names the source of
//! each rule).

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

/// What a cached profile may carry in a PATCH body ("Update User Profiles Using Your
/// Database": `app_metadata`, `user_metadata`, `blocked`). `connection` and `client_id` are
/// request context, not attributes.
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

/// Root attributes a cached profile may also change when its connection does not refresh
/// them at login (`set_user_root_attributes` is `on_first_login` or `never_on_login`: "allowing
/// them to be independently updated thereafter", Management API connection schema).
const SYNCED_AT_LOGIN: [&str; 5] = ["name", "nickname", "given_name", "family_name", "picture"];

/// Pairs Auth0 refuses in one request: the 400 answers "Cannot update X and Y
/// simultaneously." of the Management API reference's "Update a user".
const REJECTED_PAIRS: [(&str, &str); 5] = [
    ("password", "email"),
    ("password", "email_verified"),
    ("username", "email"),
    ("username", "email_verified"),
    ("username", "password"),
];

/// What decides which changes a user takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserState {
    /// Migrated into Auth0's own store (the connection's `import_mode`).
    pub migrated: bool,
    /// A cached profile whose connection lets the Management API change its root attributes
    /// (they are not refreshed at each login).
    pub root_attributes_editable: bool,
}

impl UserState {
    pub fn migrated() -> UserState {
        UserState {
            migrated: true,
            root_attributes_editable: true,
        }
    }

    fn allows(&self, key: &str) -> bool {
        self.migrated
            || CACHED_ALLOWED.contains(&key)
            || (self.root_attributes_editable && SYNCED_AT_LOGIN.contains(&key))
    }
}

/// What an applied PATCH set off besides the change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Auth0 mails the user a verification link: `verify_email: true`, or a new email without
    /// `verify_email` and not stated verified (Auth0 documents these precedence rules for
    /// creating a user; the simulator applies them to an email change too, the reading in
    /// which a mail goes out unless the request says otherwise).
    pub verification_email: bool,
}

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
    #[error("The following user attributes cannot be updated: {0}.")]
    CachedProfile(String),
    #[error("Cannot update username for users without an username already set.")]
    NoUsernameYet,
}

impl PatchError {
    pub fn error_code(&self) -> &'static str {
        match self {
            PatchError::CachedProfile(_) => "operation_not_supported",
            _ => "invalid_body",
        }
    }
}

/// The email and username a (valid) body changes, lower-cased as Auth0 stores them: what
/// Auth0 asks an import-mode connection's Get User script about.
pub(crate) fn changed_identifiers(
    profile: &Map<String, Value>,
    body: &Value,
) -> Vec<(&'static str, String)> {
    ["email", "username"]
        .into_iter()
        .filter_map(|key| {
            let new = body.get(key)?.as_str()?.to_lowercase();
            let old = profile.get(key).and_then(Value::as_str);
            old.is_none_or(|old| old.to_lowercase() != new)
                .then_some((key, new))
        })
        .collect()
}

/// Validates `body` and applies it to `profile`; on error `profile` is untouched.
/// `now` becomes `updated_at`.
pub(crate) fn apply(
    profile: &mut Map<String, Value>,
    state: UserState,
    body: &Value,
    now: &str,
) -> Result<Applied, PatchError> {
    let body = validate(body, state)?;
    if body.get("username").is_some_and(Value::is_string) && !profile.contains_key("username") {
        return Err(PatchError::NoUsernameYet);
    }
    let mut applied = Applied::default();
    let verify_email = body.get("verify_email").and_then(Value::as_bool);
    applied.verification_email = verify_email == Some(true);
    for (key, value) in body {
        match key.as_str() {
            // Auth0's own store keeps emails and usernames lower-cased.
            "email" => {
                let email = value.as_str().unwrap_or_default().to_lowercase();
                let changed = profile
                    .get("email")
                    .and_then(Value::as_str)
                    .is_none_or(|old| old.to_lowercase() != email);
                let stated = body.get("email_verified").and_then(Value::as_bool);
                if changed && stated.is_none() {
                    profile.insert("email_verified".into(), Value::Bool(false));
                }
                if changed && verify_email.is_none() && stated != Some(true) {
                    applied.verification_email = true;
                }
                profile.insert(key.clone(), Value::String(email));
            }
            "username" if value.is_string() => {
                let username = value.as_str().unwrap_or_default().to_lowercase();
                profile.insert(key.clone(), Value::String(username));
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
    Ok(applied)
}

/// Checks a body's shape and properties, as for a migrated user (before the user is found).
pub(crate) fn validate_body(body: &Value) -> Result<(), PatchError> {
    validate(body, UserState::migrated()).map(|_| ())
}

fn validate(body: &Value, state: UserState) -> Result<&Map<String, Value>, PatchError> {
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
    let refused: Vec<&str> = body
        .keys()
        .map(String::as_str)
        .filter(|key| !state.allows(key))
        .collect();
    if !refused.is_empty() {
        return Err(PatchError::CachedProfile(refused.join(", ")));
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
        let state = UserState {
            migrated,
            root_attributes_editable: false,
        };
        patch_as(state, body).map(|(profile, _)| profile)
    }

    fn patch_as(
        state: UserState,
        body: Value,
    ) -> Result<(Map<String, Value>, Applied), PatchError> {
        let mut profile = user();
        apply(&mut profile, state, &body, NOW).map(|applied| (profile, applied))
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
    fn a_new_email_mails_a_verification_link_unless_the_request_says_otherwise() {
        let mailed = |body: Value| patch_as(UserState::migrated(), body).unwrap().1;
        assert!(mailed(json!({"email": "b@x.io"})).verification_email);
        assert!(mailed(json!({"email": "b@x.io", "email_verified": false})).verification_email);
        assert!(!mailed(json!({"email": "b@x.io", "email_verified": true})).verification_email);
        assert!(
            !mailed(json!({"email": "b@x.io", "email_verified": false, "verify_email": false}))
                .verification_email
        );
        assert!(mailed(json!({"name": "B", "verify_email": true})).verification_email);
        assert!(
            !mailed(json!({"email": "A@x.io"})).verification_email,
            "the same address"
        );
    }

    #[test]
    fn usernames_are_stored_lower_cased_and_need_one_to_change() {
        let mut profile = user();
        profile.insert("username".into(), json!("old"));
        apply(
            &mut profile,
            UserState::migrated(),
            &json!({"username": "PatK"}),
            NOW,
        )
        .unwrap();
        assert_eq!(profile["username"], "patk");
        assert_eq!(
            patch(true, json!({"username": "pat"})).unwrap_err(),
            PatchError::NoUsernameYet
        );
        assert_eq!(
            changed_identifiers(&profile, &json!({"username": "PATK", "email": "New@x.io"})),
            [("email", "new@x.io".to_owned())]
        );
    }

    #[test]
    fn cached_root_attributes_take_changes_only_when_not_refreshed_at_login() {
        let body = json!({"name": "B", "given_name": "Bea"});
        assert_eq!(
            patch(false, body.clone()).unwrap_err(),
            PatchError::CachedProfile("given_name, name".into())
        );
        let editable = UserState {
            migrated: false,
            root_attributes_editable: true,
        };
        let (after, _) = patch_as(editable, body).unwrap();
        assert_eq!(after["given_name"], "Bea");
        assert_eq!(
            patch_as(editable, json!({"email": "b@x.io"})).unwrap_err(),
            PatchError::CachedProfile("email".into())
        );
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
            (
                json!({"password": "p", "email": "b@x.io"}),
                PatchError::Combination("password", "email"),
            ),
            (
                json!({"username": "u", "email": "b@x.io"}),
                PatchError::Combination("username", "email"),
            ),
        ];
        for (body, expected) in cases {
            let error = patch(true, body.clone()).unwrap_err();
            assert_eq!(error, expected, "{body}");
            assert_eq!(error.error_code(), "invalid_body");
        }
    }
}
