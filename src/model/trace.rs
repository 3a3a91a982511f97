//! One user's verdict, explained key by key (`driftsync explain`): for every compared key both
//! values, whether they count as equal and by which equality rule, what the stored baseline
//! says about it, and which side changed it. Everything here is read off the same functions a
//! run uses — `classify`, the keys' canonical hashes, `baseline::change` — so an explanation
//! can never disagree with the verdict a run gives.

use serde::Serialize;
use serde_json::Value as Json;

use crate::model::baseline::{self, Change, KeyValues, PackedBaselines};
use crate::model::classify::{self, Rules, Verdict};
use crate::model::equality;
use crate::model::profile::{Auth0User, Field, Kind, LegacyView, Profile, Value};

/// Which equality rule made two values equal, or that they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EqualityRule {
    /// The same value on both sides.
    Identical,
    /// No value on either side: NULL, absent and `""` (for metadata keys: missing and `null`)
    /// are all no value.
    AbsentEqualsEmpty,
    /// A missing boolean is `false` (Auth0 omits `blocked` unless it is true).
    MissingIsFalse,
    /// Emails and usernames compare case-insensitively (Auth0 stores both lower-cased).
    CaseInsensitive,
    /// A value Auth0 generates when the Login script returns none (`name` = the email,
    /// `nickname` = its local part, a Gravatar or CDN `picture`) counts as no value.
    GeneratedDefault,
    /// Metadata values compare as JSON: numbers by value, objects whatever their key order.
    JsonByValue,
    /// The values differ.
    Different,
}

/// One compared key, explained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyTrace {
    /// A field name, or `field.key` for a metadata key.
    pub key: String,
    pub legacy: Json,
    pub auth0: Json,
    pub equal: bool,
    pub rule: EqualityRule,
    /// Whether the user's stored baseline set holds this key.
    pub baseline: bool,
    /// For a differing key: which side changed it (`legacy`, `auth0` or `both`) by the
    /// baseline, or `None` when the key has no baseline (then the verdict's origin decides).
    pub changed: Option<&'static str>,
}

/// A user present on both sides, explained: the verdict and each key.
#[derive(Debug)]
pub struct Trace {
    pub verdict: Verdict,
    pub keys: Vec<KeyTrace>,
}

/// Classifies a user present on both sides and explains every compared key.
pub fn trace(
    rules: &Rules<'_>,
    legacy: &LegacyView<'_>,
    auth0: &Auth0User<'_>,
    stored: Option<PackedBaselines<'_>>,
) -> Trace {
    let verdict = classify::classify(rules, Some(legacy), Some(auth0), stored);
    let stored = stored.unwrap_or_default();
    let keys = verdict
        .keys
        .iter()
        .map(|values| key_trace(values, &legacy.profile, &auth0.profile, stored))
        .collect();
    Trace { verdict, keys }
}

fn key_trace(
    values: &KeyValues,
    legacy: &Profile<'_>,
    auth0: &Profile<'_>,
    stored: PackedBaselines<'_>,
) -> KeyTrace {
    let (field_name, member) = match values.key.split_once('.') {
        Some((field, member)) => (field, Some(member)),
        None => (&*values.key, None),
    };
    let field = Field::from_name(field_name);
    let (legacy_value, auth0_value) = match (field, member) {
        (Some(field), Some(member)) => (
            baseline::object(legacy.get(field)).remove(member),
            baseline::object(auth0.get(field)).remove(member),
        ),
        (Some(field), None) => (shown(legacy, field), shown(auth0, field)),
        (None, _) => (None, None),
    };
    let equal = !values.differs();
    let rule = match (equal, field, member) {
        (false, _, _) => EqualityRule::Different,
        (true, Some(field), None) => root_rule(field, legacy, auth0),
        (true, _, _) => match (&legacy_value, &auth0_value) {
            (l, a) if l == a && l.as_ref().is_some_and(|v| !v.is_null()) => EqualityRule::Identical,
            (None | Some(Json::Null), None | Some(Json::Null)) => EqualityRule::AbsentEqualsEmpty,
            _ => EqualityRule::JsonByValue,
        },
    };
    let found = stored.find(&values.key);
    let changed = match (equal, found) {
        (false, Some(hash)) => Some(match baseline::change(values, hash) {
            Change::Legacy => "legacy",
            Change::Auth0 => "auth0",
            Change::Both => "both",
        }),
        _ => None,
    };
    KeyTrace {
        key: values.key.to_string(),
        legacy: legacy_value.unwrap_or(Json::Null),
        auth0: auth0_value.unwrap_or(Json::Null),
        equal,
        rule,
        baseline: found.is_some(),
        changed,
    }
}

/// A root field's value as JSON, as the side holds it.
fn shown(profile: &Profile<'_>, field: Field) -> Option<Json> {
    match profile.get(field)? {
        Value::Text(text) => Some(Json::String(text.to_string())),
        Value::Bool(value) => Some(Json::Bool(*value)),
        Value::Object(text) => serde_json::from_str(text).ok(),
    }
}

/// Which rule made a root field's two values equal (they are, by their canonical forms).
fn root_rule(field: Field, legacy: &Profile<'_>, auth0: &Profile<'_>) -> EqualityRule {
    if field.kind() == Kind::Bool {
        return match (legacy.get(field), auth0.get(field)) {
            (Some(l), Some(a)) if l == a => EqualityRule::Identical,
            _ => EqualityRule::MissingIsFalse,
        };
    }
    let (l, a) = (legacy.text(field), auth0.text(field));
    if l == a && l.is_some_and(|text| !text.is_empty()) {
        return EqualityRule::Identical;
    }
    let generated = |text: Option<&str>| {
        text.is_some_and(|text| {
            !text.is_empty() && equality::is_generated_default(field, text, legacy, auth0)
        })
    };
    if generated(l) || generated(a) {
        EqualityRule::GeneratedDefault
    } else if l.is_none_or(str::is_empty) && a.is_none_or(str::is_empty) {
        EqualityRule::AbsentEqualsEmpty
    } else {
        EqualityRule::CaseInsensitive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::baseline::{Seen, key_values, pack};
    use crate::model::profile::fixtures::{object, profile, text};

    const FIELDS: [Field; 6] = [
        Field::Email,
        Field::Name,
        Field::Nickname,
        Field::Blocked,
        Field::Username,
        Field::UserMetadata,
    ];

    fn rules() -> Rules<'static> {
        Rules {
            fields: &FIELDS,
            connection_migrated: Some(true),
            root_attributes_refreshed: true,
        }
    }

    fn user(profile: Profile<'static>) -> Auth0User<'static> {
        Auth0User {
            auth0_id: "auth0|1",
            legacy_id: "1",
            profile,
            created_at: Some(0),
            migrated: true,
        }
    }

    fn rule_of(trace: &Trace, key: &str) -> (bool, EqualityRule) {
        let key = trace.keys.iter().find(|k| k.key == key).unwrap();
        (key.equal, key.rule)
    }

    #[test]
    fn every_equality_rule_is_named_and_agrees_with_the_verdict() {
        let legacy = LegacyView {
            profile: profile(&[
                (Field::Email, text("Ann@X.io")),
                (Field::Username, text("ann")),
                (
                    Field::UserMetadata,
                    object(r#"{"n": 1.0, "same": "x", "lang": "de"}"#),
                ),
            ]),
            updated_at: None,
            last_active_at: None,
        };
        let auth0 = user(profile(&[
            (Field::Email, text("ann@x.io")),
            (Field::Name, text("ann@x.io")),
            (Field::Nickname, text("")),
            (Field::Username, text("ann")),
            (Field::Blocked, Value::Bool(false)),
            (
                Field::UserMetadata,
                object(r#"{"n": 1, "same": "x", "lang": "en"}"#),
            ),
        ]));
        let trace = trace(&rules(), &legacy, &auth0, None);
        assert_eq!(
            rule_of(&trace, "email"),
            (true, EqualityRule::CaseInsensitive)
        );
        assert_eq!(
            rule_of(&trace, "name"),
            (true, EqualityRule::GeneratedDefault)
        );
        assert_eq!(
            rule_of(&trace, "nickname"),
            (true, EqualityRule::AbsentEqualsEmpty)
        );
        assert_eq!(
            rule_of(&trace, "blocked"),
            (true, EqualityRule::MissingIsFalse)
        );
        assert_eq!(rule_of(&trace, "username"), (true, EqualityRule::Identical));
        assert_eq!(
            rule_of(&trace, "user_metadata.n"),
            (true, EqualityRule::JsonByValue)
        );
        assert_eq!(
            rule_of(&trace, "user_metadata.same"),
            (true, EqualityRule::Identical)
        );
        assert_eq!(
            rule_of(&trace, "user_metadata.lang"),
            (false, EqualityRule::Different)
        );
        // The one differing key is what the verdict found differing.
        let differing: Vec<&str> = trace
            .keys
            .iter()
            .filter(|k| !k.equal)
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(differing, ["user_metadata.lang"]);
        assert_eq!(trace.verdict.status, classify::Status::Stranded);
        let lang = trace
            .keys
            .iter()
            .find(|k| k.key == "user_metadata.lang")
            .unwrap();
        assert_eq!(
            (&lang.legacy, &lang.auth0),
            (&Json::from("de"), &Json::from("en"))
        );
    }

    #[test]
    fn the_baseline_names_the_side_that_changed() {
        let old = profile(&[(Field::Email, text("old@x.io"))]);
        let new = profile(&[(Field::Email, text("new@x.io"))]);
        let agreed = key_values(&[Field::Email], &old, &old, &[]);
        let stored = pack(Seen::Migrated, &[("email".into(), agreed[0].legacy)]);
        let rules = Rules {
            fields: &[Field::Email],
            ..rules()
        };
        let legacy = LegacyView {
            profile: new,
            updated_at: None,
            last_active_at: None,
        };
        let trace = trace(&rules, &legacy, &user(old), Some(PackedBaselines(&stored)));
        assert_eq!(trace.keys[0].changed, Some("legacy"));
        assert!(trace.keys[0].baseline);
        assert_eq!(trace.verdict.status, classify::Status::Stranded);
        assert_eq!(trace.verdict.origin, Some(classify::Origin::Baseline));
    }
}
