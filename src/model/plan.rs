//! Planning: turns the keys the legacy side changed into `PATCH /api/v2/users/{id}` bodies that
//! Auth0 accepts (the sources of each rule are in SIMULATOR.md, which enforces the same ones):
//! - only the root attributes allowed for the user's state: a cached custom-database profile
//!   (connection without `import_mode`) takes only `app_metadata`, `user_metadata` and
//!   `blocked`; a migrated one also the configured profile attributes;
//! - metadata as first-level keys, `null` for a key the legacy side removed, so keys only Auth0
//!   has are never touched (Auth0 merges one level deep);
//! - `email` always with an explicit `email_verified` (the legacy value, else what
//!   `reconcile.pushed_email_verified` says: by default a new address is not claimed verified)
//!   and an explicit `verify_email` (`reconcile.verify_email`, default `false`), so that
//!   neither a verification state nor a verification mail comes about by surprise;
//! - the combinations Auth0 rejects (`username` with `email`, `email_verified` or `password`;
//!   Management API reference, "Update a user", 400 answers) split into separate requests.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::model::baseline::{self, KeyValues, PackedBaselines, Seen};
use crate::model::classify::{Status, Verdict};
use crate::model::profile::{Auth0User, Field, Kind, Profile, Value};

/// What a run does with an `orphaned` user (`reconcile.orphans`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanAction {
    /// Report it only (the default).
    Report,
    /// Block it in Auth0 (once: an already blocked user is not patched again).
    Block,
}

/// What a pushed email states as `email_verified` when the legacy query does not return it
/// (`reconcile.pushed_email_verified`); with the column, the legacy value always wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushedEmailVerified {
    /// `false`: a new address is not claimed verified (the default).
    False,
    /// Auth0's current value for the old address.
    Keep,
}

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
    /// Whether Auth0 refreshes a cached profile's root attributes at each login (the
    /// connection's `set_user_root_attributes` is `on_each_login`); when it does not, Auth0
    /// lets the Management API change them.
    pub root_attributes_refreshed: bool,
    /// Root attributes allowed for migrated users (besides blocked and metadata).
    pub migrated_fields: Vec<Field>,
    /// Whether the legacy query manages `email_verified` (its value then goes with an email).
    pub legacy_has_email_verified: bool,
    /// What a pushed email states as `email_verified` without the legacy column.
    pub pushed_email_verified: PushedEmailVerified,
    /// `verify_email` sent with every pushed email.
    pub verify_email: bool,
}

impl PushPolicy {
    fn allows(&self, field: Field) -> bool {
        let cached_allows = !self.root_attributes_refreshed && field.synced_at_login();
        CACHED_FIELDS.contains(&field)
            || (self.migrated_fields.contains(&field) && (self.import_mode || cached_allows))
    }

    /// The `email_verified` a pushed email states.
    fn email_verified(&self, legacy: &Profile<'_>, auth0: &Profile<'_>) -> bool {
        let verified = if self.legacy_has_email_verified {
            legacy.get(Field::EmailVerified)
        } else {
            match self.pushed_email_verified {
                PushedEmailVerified::False => None,
                PushedEmailVerified::Keep => auth0.get(Field::EmailVerified),
            }
        };
        matches!(verified, Some(Value::Bool(true)))
    }
}

/// One PATCH body: a JSON object held as its compact text, keys sorted — the very bytes that
/// are sent and journaled. A large run plans tens of thousands of pushes, and a tree each would
/// cost several hundred bytes more; a tree is made from the text only where one is read
/// ([`Body::to_json`]: the saved plan, `explain`, the check of a push a stopped run sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(Box<str>);

impl Body {
    /// The body that sets these attributes.
    pub fn of(attributes: Map<String, Json>) -> Body {
        Body(Json::Object(attributes).to_string().into_boxed_str())
    }

    /// The JSON text Auth0 receives and the journal keeps.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// The body as a JSON tree. Its text is written by [`Body::of`] from a JSON object, so it
    /// always reads back as one.
    pub fn to_json(&self) -> Json {
        serde_json::from_str(&self.0).unwrap_or(Json::Null)
    }

    /// The value the body sets for `name`.
    pub fn get(&self, name: &str) -> Option<Json> {
        match self.to_json() {
            Json::Object(mut attributes) => attributes.remove(name),
            _ => None,
        }
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// One user's push, the one type it is from planning to the journal: whom it is for, the
/// requests, what could not be sent, and what its success records in the baselines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Push {
    pub auth0_id: String,
    pub legacy_id: String,
    /// The PATCH bodies, sent in order; none when nothing needs sending.
    pub bodies: Vec<Body>,
    /// The keys the bodies set, with the hash of their legacy value, for the baselines.
    pub keys: Vec<(String, i64)>,
    /// Root fields the legacy side changed that Auth0 does not accept for this user.
    pub refused: Vec<Field>,
    /// The user's baseline set after this run's agreeing keys, packed; an applied push adds
    /// its keys ([`Push::record_applied`]), and the set is written at the end of the run.
    /// `None` for a user without a legacy row (a blocked orphan): its stored set, the evidence
    /// that it was matched once, stays.
    pub baselines: Option<Box<[u8]>>,
    /// The review data of a push (a saved plan's view of it), when a plan is saved or applied.
    pub review: Option<Box<Review>>,
}

impl Push {
    /// Whether there is a request to send.
    pub fn sends(&self) -> bool {
        !self.bodies.is_empty()
    }

    /// After every request was applied: the pushed keys' legacy values become their baselines.
    pub fn record_applied(&mut self) {
        let Some(baselines) = &self.baselines else {
            return;
        };
        let set = PackedBaselines(baselines);
        let seen = set.seen().unwrap_or(Seen::Unknown);
        let mut entries = set.entries();
        for (key, hash) in &self.keys {
            match entries.iter_mut().find(|(name, _)| name == key) {
                Some(entry) => entry.1 = *hash,
                None => entries.push((key.clone(), *hash)),
            }
        }
        entries.sort_unstable();
        self.baselines = Some(baseline::pack(seen, &entries));
    }
}

/// The push a verdict plans, if any: the legacy side's changes of a `stranded` user (`changed`
/// are the keys it changed), and the block of an `orphaned` one under `orphans = "block"`.
pub fn for_verdict(
    verdict: &Verdict,
    user: &Auth0User<'_>,
    legacy: Option<&Profile<'_>>,
    policy: &PushPolicy,
    orphans: OrphanAction,
) -> Option<Push> {
    let ids = (user.auth0_id, user.legacy_id);
    match (verdict.status, legacy) {
        (Status::Stranded, Some(legacy)) => {
            let changed: Vec<&KeyValues> = verdict
                .legacy_changed
                .iter()
                .map(|&index| &verdict.keys[index])
                .collect();
            Some(plan_user(ids, &changed, legacy, &user.profile, policy))
        }
        (Status::Orphaned, None) if orphans == OrphanAction::Block => {
            Some(block_orphan(ids, &user.profile))
        }
        _ => None,
    }
}

/// `orphans = "block"`: block a migrated user whose legacy row is gone, unless it is blocked
/// already (then nothing is sent, run after run).
fn block_orphan((auth0_id, legacy_id): (&str, &str), auth0: &Profile<'_>) -> Push {
    let blocked = matches!(auth0.get(Field::Blocked), Some(Value::Bool(true)));
    let mut push = Push {
        auth0_id: auth0_id.to_owned(),
        legacy_id: legacy_id.to_owned(),
        ..Push::default()
    };
    if !blocked {
        let mut body = Map::new();
        body.insert("blocked".into(), Json::Bool(true));
        push.bodies.push(Body::of(body));
    }
    push
}

/// Plans the push of `changed` (keys the legacy side changed) for one user.
pub fn plan_user(
    (auth0_id, legacy_id): (&str, &str),
    changed: &[&KeyValues],
    legacy: &Profile<'_>,
    auth0: &Profile<'_>,
    policy: &PushPolicy,
) -> Push {
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
    if body.contains_key("email") {
        if !body.contains_key("email_verified") {
            let verified = policy.email_verified(legacy, auth0);
            body.insert("email_verified".into(), Json::Bool(verified));
        }
        body.insert("verify_email".into(), Json::Bool(policy.verify_email));
    }
    let mut bodies = Vec::new();
    // Auth0 rejects username together with email or email_verified (and password, never sent
    // here): the username goes in a request of its own, after the rest.
    if body.contains_key("username")
        && (body.contains_key("email") || body.contains_key("email_verified"))
    {
        let mut username = Map::new();
        if let Some(value) = body.remove("username") {
            username.insert("username".into(), value);
        }
        bodies.push(Body::of(body));
        bodies.push(Body::of(username));
    } else if !body.is_empty() {
        bodies.push(Body::of(body));
    }
    Push {
        auth0_id: auth0_id.to_owned(),
        legacy_id: legacy_id.to_owned(),
        bodies,
        keys,
        refused,
        baselines: None,
        review: None,
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

/// What a plan keeps of a push beyond its requests: the review data, collected only when a
/// plan is saved or applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Review {
    pub auth0_before: Map<String, Json>,
    pub seen: Vec<SeenKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeenKey {
    pub key: String,
    pub legacy: String,
    pub auth0: String,
}

impl SeenKey {
    pub fn new(key: &str, legacy: i64, auth0: i64) -> SeenKey {
        SeenKey {
            key: key.to_owned(),
            legacy: format!("{:016x}", legacy as u64),
            auth0: format!("{:016x}", auth0 as u64),
        }
    }
}

/// The review data of `push`, planned from `verdict` against the Auth0 profile `auth0`.
pub fn review(verdict: &Verdict, auth0: &Profile<'_>, push: &Push) -> Review {
    let mut auth0_before = Map::new();
    for (key, _) in &push.keys {
        let value = match key.split_once('.') {
            Some((field, member)) => Field::from_name(field)
                .and_then(|field| baseline::object(auth0.get(field)).remove(member)),
            None => Field::from_name(key).and_then(|field| match auth0.get(field)? {
                Value::Text(text) => Some(Json::String(text.to_string())),
                Value::Bool(value) => Some(Json::Bool(*value)),
                Value::Object(text) => serde_json::from_str(text).ok(),
            }),
        };
        auth0_before.insert(key.clone(), value.unwrap_or(Json::Null));
    }
    Review {
        auth0_before,
        seen: verdict
            .keys
            .iter()
            .map(|key| SeenKey::new(&key.key, key.legacy, key.auth0))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::baseline::key_values;
    use crate::model::profile::fixtures::{object, profile, text};
    use serde_json::json;

    /// A PATCH body from a JSON object literal.
    fn body(value: Json) -> Body {
        match value {
            Json::Object(map) => Body::of(map),
            other => panic!("not an object: {other}"),
        }
    }

    fn policy(import_mode: bool) -> PushPolicy {
        PushPolicy {
            import_mode,
            root_attributes_refreshed: true,
            migrated_fields: DEFAULT_MIGRATED_FIELDS.to_vec(),
            legacy_has_email_verified: false,
            pushed_email_verified: PushedEmailVerified::False,
            verify_email: false,
        }
    }

    fn plan(
        fields: &[Field],
        legacy: &Profile,
        auth0: &Profile,
        extra: &[(Field, &str)],
        policy: &PushPolicy,
    ) -> Push {
        let keys = key_values(fields, legacy, auth0, extra);
        let changed: Vec<&KeyValues> = keys.iter().filter(|k| k.differs()).collect();
        plan_user(("auth0|1", "1"), &changed, legacy, auth0, policy)
    }

    #[test]
    fn an_email_states_its_verification_and_whether_to_mail_explicitly() {
        let legacy = profile(&[(Field::Email, text("new@x.io"))]);
        let auth0 = profile(&[
            (Field::Email, text("old@x.io")),
            (Field::EmailVerified, Value::Bool(true)),
        ]);
        // By default a new address is not claimed verified, and no mail goes out.
        let plan_with = |policy: &PushPolicy| plan(&[Field::Email], &legacy, &auth0, &[], policy);
        assert_eq!(
            plan_with(&policy(true)).bodies,
            [body(
                json!({"email": "new@x.io", "email_verified": false, "verify_email": false})
            )]
        );
        assert_eq!(
            plan_with(&policy(true)).keys,
            [(
                "email".to_owned(),
                crate::model::baseline::hash(Some("new@x.io"))
            )]
        );
        let keep_and_mail = PushPolicy {
            pushed_email_verified: PushedEmailVerified::Keep,
            verify_email: true,
            ..policy(true)
        };
        assert_eq!(
            plan_with(&keep_and_mail).bodies,
            [body(
                json!({"email": "new@x.io", "email_verified": true, "verify_email": true})
            )]
        );
        // The legacy column wins over both.
        let legacy_verified = profile(&[
            (Field::Email, text("new@x.io")),
            (Field::EmailVerified, Value::Bool(true)),
        ]);
        let from_legacy = PushPolicy {
            legacy_has_email_verified: true,
            ..policy(true)
        };
        let plan = plan(
            &[Field::Email, Field::EmailVerified],
            &legacy_verified,
            &profile(&[(Field::Email, text("old@x.io"))]),
            &[],
            &from_legacy,
        );
        assert_eq!(
            plan.bodies[0].get("email_verified").unwrap_or_default(),
            json!(true),
            "{:?}",
            plan.bodies
        );
    }

    #[test]
    fn cached_root_attributes_are_pushed_when_not_refreshed_at_login() {
        let legacy = profile(&[(Field::Name, text("New")), (Field::Email, text("n@x.io"))]);
        let auth0 = profile(&[(Field::Name, text("Old")), (Field::Email, text("o@x.io"))]);
        let not_refreshed = PushPolicy {
            root_attributes_refreshed: false,
            ..policy(false)
        };
        let plan = plan(
            &[Field::Name, Field::Email],
            &legacy,
            &auth0,
            &[],
            &not_refreshed,
        );
        assert_eq!(plan.bodies, [body(json!({"name": "New"}))]);
        assert_eq!(
            plan.refused,
            [Field::Email],
            "an email still needs import mode"
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
        assert_eq!(plan.bodies, [body(json!({"blocked": true}))]);
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
            [body(json!({"user_metadata": {"lang": "de", "plan": null}}))]
        );
    }

    #[test]
    fn username_goes_apart_from_email() {
        let legacy = profile(&[
            (Field::Username, text("pat")),
            (Field::Email, text("pat@x.io")),
        ]);
        let auth0 = profile(&[
            (Field::Username, text("patrick")),
            (Field::Email, text("patrick@x.io")),
        ]);
        let mut with_username = policy(true);
        with_username.migrated_fields.push(Field::Username);
        let plan = plan(
            &[Field::Username, Field::Email],
            &legacy,
            &auth0,
            &[],
            &with_username,
        );
        assert_eq!(
            plan.bodies,
            [
                body(json!({"email": "pat@x.io", "email_verified": false, "verify_email": false})),
                body(json!({"username": "pat"}))
            ]
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
                body(json!({"email_verified": true})),
                body(json!({"username": "pat"}))
            ]
        );
    }
}
