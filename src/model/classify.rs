//! Decides each user's status from its legacy row and its Auth0 profile (docs/INTERFACE.md,
//! "Statuses"), with the equality rules that keep Auth0's own behaviour from looking like
//! drift: case-insensitive emails, NULL = absent = "", Auth0-generated defaults, and metadata
//! compared only on the first-level keys the legacy side has.

use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};

use crate::model::baseline::{self, Change, KeyValues, PackedBaselines};
use crate::model::profile::Auth0User;
use crate::model::profile::{Field, Kind, LegacyView, Profile, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InSync,
    Stranded,
    Auth0Ahead,
    Conflict,
    StaleCache,
    NotMigrated,
    Orphaned,
    DeletedInAuth0,
    Auth0Only,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::InSync,
        Status::Stranded,
        Status::Auth0Ahead,
        Status::Conflict,
        Status::StaleCache,
        Status::NotMigrated,
        Status::Orphaned,
        Status::DeletedInAuth0,
        Status::Auth0Only,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Status::InSync => "in_sync",
            Status::Stranded => "stranded",
            Status::Auth0Ahead => "auth0_ahead",
            Status::Conflict => "conflict",
            Status::StaleCache => "stale_cache",
            Status::NotMigrated => "not_migrated",
            Status::Orphaned => "orphaned",
            Status::DeletedInAuth0 => "deleted_in_auth0",
            Status::Auth0Only => "auth0_only",
        }
    }

    /// Statuses that leave work for someone: the run exits 2 while any remain un-pushed.
    pub fn needs_action(self) -> bool {
        matches!(
            self,
            Status::Stranded | Status::Conflict | Status::Orphaned | Status::DeletedInAuth0
        )
    }

    /// Whether the report lists users of this status one by one (the others are only counted).
    pub fn is_listed(self) -> bool {
        !matches!(
            self,
            Status::InSync | Status::NotMigrated | Status::Auth0Only
        )
    }
}

/// What a comparison needs to know besides the two sides and the stored baselines.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The compared fields.
    pub fields: &'a [Field],
    /// `Some(true)`: every user of the connection counts as migrated (import mode on, or
    /// `auth0.migrated = "always"`); `Some(false)`: none does; `None`: a marker on each profile
    /// says (`app_metadata.<key>`), which is then evidence that the user came from legacy.
    pub connection_migrated: Option<bool>,
    /// Whether Auth0 refreshes a cached profile's root attributes at each login: the
    /// connection's `options.set_user_root_attributes` is `on_each_login` (its default).
    pub root_attributes_refreshed: bool,
}

impl Rules<'_> {
    /// Whether a difference in `field` of a cached (not migrated) profile stays until driftsync
    /// pushes it: Auth0 refreshes nothing else at login when root attributes are not refreshed.
    fn stays_in_cache(&self, field: Field) -> bool {
        !self.root_attributes_refreshed && field.synced_at_login()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which rule decided the direction of a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Compared with the last value both sides agreed on.
    Baseline,
    /// The legacy `updated_at` against the Auth0 `created_at` (the migration moment).
    Timestamp,
    /// Nothing to go by: the legacy side is assumed to have changed.
    Assumed,
}

/// One differing field, with both values as they appear in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    pub field: Field,
    pub legacy: ReportValue,
    pub auth0: ReportValue,
}

/// A value as the report shows it, kept as compact JSON text: a report of a hundred thousand
/// differing users holds no JSON trees.
#[derive(Debug, Clone)]
pub struct ReportValue(Box<RawValue>);

impl ReportValue {
    pub fn of<T: Serialize + ?Sized>(value: &T) -> ReportValue {
        ReportValue(
            serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()),
        )
    }

    pub fn to_json(&self) -> Json {
        serde_json::from_str(self.0.get()).unwrap_or(Json::Null)
    }
}

impl PartialEq for ReportValue {
    fn eq(&self, other: &ReportValue) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for ReportValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub origin: Option<Origin>,
    pub diffs: Vec<FieldDiff>,
    /// Every compared key of a user present on both sides, canonical (for baselines).
    pub keys: Vec<KeyValues>,
    /// Indexes into `keys` of the differing keys the legacy side changed (what a push sends).
    pub legacy_changed: Vec<usize>,
}

impl Verdict {
    fn plain(status: Status) -> Verdict {
        Verdict {
            status,
            origin: None,
            diffs: Vec::new(),
            keys: Vec::new(),
            legacy_changed: Vec::new(),
        }
    }
}

/// A user's baseline hashes by key, as stored.
pub type UserBaseline<'a> = PackedBaselines<'a>;

/// Classifies one user id; at least one side is present. `baseline` holds the user's stored
/// baseline set, if any: besides the hashes, its presence is the evidence that an earlier run
/// matched the user with a legacy row (see [`baseline::Seen`]).
pub fn classify(
    rules: &Rules<'_>,
    legacy: Option<&LegacyView<'_>>,
    auth0: Option<&Auth0User<'_>>,
    baseline: Option<UserBaseline<'_>>,
) -> Verdict {
    let baseline = baseline.unwrap_or_default();
    let (legacy, auth0) = match (legacy, auth0) {
        (Some(legacy), Some(auth0)) => (legacy, auth0),
        (Some(_), None) => return Verdict::plain(legacy_only(rules, baseline)),
        (None, Some(auth0)) => return Verdict::plain(auth0_only(rules, auth0, baseline)),
        (None, None) => return Verdict::plain(Status::NotMigrated),
    };
    let fields = rules.fields;
    let remembered = baseline::remembered_metadata_keys(&baseline);
    let keys = baseline::key_values(fields, &legacy.profile, &auth0.profile, &remembered);
    let differing: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].differs()).collect();
    if differing.is_empty() {
        return Verdict {
            keys,
            ..Verdict::plain(Status::InSync)
        };
    }
    let diffs = report_diffs(fields, &legacy.profile, &auth0.profile, &keys, &differing);
    // A cached profile's differences are refreshed at the next login, except the root
    // attributes of a connection that does not refresh them: those stay until pushed.
    let differing: Vec<usize> = if auth0.migrated {
        differing
    } else {
        differing
            .into_iter()
            .filter(|&index| {
                Field::from_name(&keys[index].key).is_some_and(|field| rules.stays_in_cache(field))
            })
            .collect()
    };
    if differing.is_empty() {
        return Verdict {
            status: Status::StaleCache,
            origin: None,
            diffs,
            keys,
            legacy_changed: Vec::new(),
        };
    }
    // Without a baseline for a key, the timestamps decide, or the legacy side is assumed.
    let fallback = match (legacy.updated_at, auth0.created_at) {
        (Some(changed), Some(migrated)) if changed > migrated => {
            (Change::Legacy, Origin::Timestamp)
        }
        (Some(_), Some(_)) => (Change::Auth0, Origin::Timestamp),
        _ => (Change::Legacy, Origin::Assumed),
    };
    let mut legacy_changed = Vec::new();
    let mut legacy_origin = None;
    let mut auth0_origin = None;
    let mut conflict = false;
    for &index in &differing {
        let (change, origin) = match baseline.find(&keys[index].key) {
            Some(hash) => (baseline::change(&keys[index], hash), Origin::Baseline),
            None => fallback,
        };
        // A baseline is the stronger evidence: it names the origin when it took part.
        let prefer = |current: Option<Origin>| match current {
            Some(Origin::Baseline) => Some(Origin::Baseline),
            _ => Some(origin),
        };
        match change {
            Change::Legacy => {
                legacy_changed.push(index);
                legacy_origin = prefer(legacy_origin);
            }
            Change::Auth0 => auth0_origin = prefer(auth0_origin),
            Change::Both => conflict = true,
        }
    }
    let (status, origin) = if conflict {
        (Status::Conflict, Some(Origin::Baseline))
    } else if !legacy_changed.is_empty() {
        (Status::Stranded, legacy_origin)
    } else {
        (Status::Auth0Ahead, auth0_origin)
    };
    Verdict {
        status,
        origin,
        diffs,
        keys,
        legacy_changed,
    }
}

/// A legacy row without an Auth0 user: never migrated, or migrated and deleted in Auth0 since
/// (its next login migrates it again). Only the set an earlier run stored tells.
fn legacy_only(rules: &Rules<'_>, baseline: UserBaseline<'_>) -> Status {
    let seen_migrated = match baseline.seen() {
        None | Some(baseline::Seen::Cached) => false,
        Some(baseline::Seen::Migrated) => true,
        // A set written before driftsync recorded it: migrated if the whole connection is.
        Some(baseline::Seen::Unknown) => rules.connection_migrated == Some(true),
    };
    if seen_migrated {
        Status::DeletedInAuth0
    } else {
        Status::NotMigrated
    }
}

/// An Auth0 user without a legacy row. Only evidence that it came from the legacy database —
/// an earlier run matched it (its stored set), or the configured migration marker is set —
/// makes it `orphaned` (or, cached, `stale_cache`); without any it most likely signed up in
/// Auth0, where import mode creates new users directly.
fn auth0_only(rules: &Rules<'_>, auth0: &Auth0User<'_>, baseline: UserBaseline<'_>) -> Status {
    let marker_set = rules.connection_migrated.is_none() && auth0.migrated;
    let evidence = !baseline.is_empty() || marker_set;
    match (evidence, auth0.migrated) {
        (false, _) => Status::Auth0Only,
        (true, true) => Status::Orphaned,
        (true, false) => Status::StaleCache,
    }
}

/// The report's per-field differences, read off the differing keys (so a field differs here
/// exactly when its hashes do): root fields with both values, metadata fields with the differing
/// first-level keys only.
fn report_diffs(
    fields: &[Field],
    legacy: &Profile<'_>,
    auth0: &Profile<'_>,
    keys: &[KeyValues],
    differing: &[usize],
) -> Vec<FieldDiff> {
    let mut diffs = Vec::new();
    for &field in fields {
        if field.kind() != Kind::Object {
            if differing
                .iter()
                .any(|&index| keys[index].key == field.name())
            {
                diffs.push(root_diff(field, legacy, auth0));
            }
            continue;
        }
        let prefix = format!("{}.", field.name());
        let names: Vec<&str> = differing
            .iter()
            .filter_map(|&index| keys[index].key.strip_prefix(&prefix))
            .collect();
        if names.is_empty() {
            continue;
        }
        let legacy_object = baseline::object(legacy.get(field));
        let auth0_object = baseline::object(auth0.get(field));
        let pick = |object: &Map<String, Json>| {
            Json::Object(
                names
                    .iter()
                    .map(|name| {
                        (
                            (*name).to_owned(),
                            object.get(*name).cloned().unwrap_or(Json::Null),
                        )
                    })
                    .collect(),
            )
        };
        diffs.push(FieldDiff {
            field,
            legacy: ReportValue::of(&pick(&legacy_object)),
            auth0: ReportValue::of(&pick(&auth0_object)),
        });
    }
    diffs
}

/// A differing root field's two values as the report shows them: text as written (`""` shown
/// as none), booleans as given (Auth0 omits `blocked` unless true).
fn root_diff(field: Field, legacy: &Profile<'_>, auth0: &Profile<'_>) -> FieldDiff {
    let value = |profile: &Profile<'_>| match field.kind() {
        Kind::Bool => ReportValue::of(&boolean(profile.get(field))),
        _ => ReportValue::of(&non_empty(profile.text(field))),
    };
    FieldDiff {
        field,
        legacy: value(legacy),
        auth0: value(auth0),
    }
}

/// Compares one field; `None` when the two sides count as equal under the equality rules
/// (`equality::canonical`, the same form the baselines hash).
pub fn diff(field: Field, legacy: &Profile<'_>, auth0: &Profile<'_>) -> Option<FieldDiff> {
    let keys = baseline::key_values(&[field], legacy, auth0, &[]);
    let differing: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].differs()).collect();
    report_diffs(&[field], legacy, auth0, &keys, &differing).pop()
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|text| !text.is_empty())
}

fn boolean(value: Option<&Value<'_>>) -> Option<bool> {
    match value {
        Some(Value::Bool(value)) => Some(*value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::fixtures::object as obj;
    use crate::model::profile::fixtures::{profile, text};
    use std::borrow::Cow;

    fn differs(
        field: Field,
        legacy: &[(Field, Value<'static>)],
        auth0: &[(Field, Value<'static>)],
    ) -> bool {
        diff(field, &profile(legacy), &profile(auth0)).is_some()
    }

    #[test]
    fn emails_compare_case_insensitively() {
        let e = Field::Email;
        assert!(!differs(
            e,
            &[(e, text("Pat@Example.ORG"))],
            &[(e, text("pat@example.org"))]
        ));
        assert!(!differs(
            e,
            &[(e, text("ÄNNE@x.io"))],
            &[(e, text("änne@x.io"))]
        ));
        assert!(differs(
            e,
            &[(e, text("pat@example.org"))],
            &[(e, text("pat2@example.org"))]
        ));
    }

    #[test]
    fn null_absent_and_empty_are_equal() {
        let f = Field::GivenName;
        assert!(!differs(f, &[], &[]));
        assert!(!differs(f, &[(f, text(""))], &[]));
        assert!(!differs(f, &[], &[(f, text(""))]));
        assert!(differs(f, &[], &[(f, text("Pat"))]));
        assert!(differs(f, &[(f, text("Pat"))], &[]));
        assert!(differs(f, &[(f, text("Pat"))], &[(f, text("pat"))]));
    }

    #[test]
    fn generated_defaults_are_not_drift() {
        let email = (Field::Email, text("sam.k@example.org"));
        let n = Field::Name;
        assert!(!differs(
            n,
            std::slice::from_ref(&email),
            &[email.clone(), (n, text("sam.k@example.org"))]
        ));
        assert!(differs(
            n,
            std::slice::from_ref(&email),
            &[email.clone(), (n, text("Sam K"))]
        ));
        let nick = Field::Nickname;
        assert!(!differs(
            nick,
            std::slice::from_ref(&email),
            &[email.clone(), (nick, text("sam.k"))]
        ));
        assert!(differs(
            nick,
            std::slice::from_ref(&email),
            &[email.clone(), (nick, text("sammy"))]
        ));
        // The email changed in legacy after Auth0 generated the name from the old one.
        assert!(!differs(
            n,
            &[(Field::Email, text("new@example.org"))],
            &[
                (Field::Email, text("old@example.org")),
                (n, text("old@example.org"))
            ]
        ));
        let p = Field::Picture;
        for generated in [
            "https://s.gravatar.com/avatar/9b0a?s=480&r=pg&d=https%3A%2F%2Fcdn.auth0.com%2Favatars%2Fpl.png",
            "https://cdn.auth0.com/avatars/pl.png",
        ] {
            assert!(!differs(
                p,
                &[],
                &[(p, Value::Text(Cow::Owned(generated.into())))]
            ));
        }
        assert!(differs(
            p,
            &[],
            &[(p, text("https://img.example.org/pat.png"))]
        ));
        // A generated default only excuses a NULL: a real legacy value must match.
        assert!(differs(
            p,
            &[(p, text("https://img.example.org/pat.png"))],
            &[(p, text("https://cdn.auth0.com/avatars/pl.png"))]
        ));
    }

    #[test]
    fn a_generated_default_on_the_legacy_side_counts_as_no_value_too() {
        // Found by the classify fuzz target: a legacy name equal to the email differed from
        // the very same Auth0 name in the baseline hashes (the user was stranded with no
        // differing field, and every run pushed the name again).
        let email = (Field::Email, text("sam.k@example.org"));
        let fields = [Field::Email, Field::Name, Field::Nickname, Field::Picture];
        let same = [
            email.clone(),
            (Field::Name, text("sam.k@example.org")),
            (Field::Nickname, text("sam.k")),
            (Field::Picture, text("https://cdn.auth0.com/avatars/sa.png")),
        ];
        let verdict = classify(
            &rules(&fields),
            Some(&legacy(None, &same)),
            Some(&auth0(true, None, &same)),
            None,
        );
        assert_eq!(
            (verdict.status, verdict.diffs),
            (Status::InSync, Vec::new())
        );
        for field in [Field::Name, Field::Nickname, Field::Picture] {
            // Either way round: the generated value against no value is equal.
            let value = same.iter().find(|(f, _)| *f == field).unwrap().clone();
            let with_value = [email.clone(), value];
            let without = std::slice::from_ref(&email);
            assert!(!differs(field, &with_value, without));
            assert!(!differs(field, without, &with_value));
            assert!(differs(
                field,
                &[email.clone(), (field, text("x"))],
                without
            ));
        }
    }

    #[test]
    fn booleans_treat_missing_as_false() {
        let b = Field::Blocked;
        assert!(!differs(b, &[(b, Value::Bool(false))], &[]));
        assert!(!differs(b, &[], &[]));
        assert!(differs(b, &[(b, Value::Bool(true))], &[]));
        let v = Field::EmailVerified;
        assert!(differs(
            v,
            &[(v, Value::Bool(false))],
            &[(v, Value::Bool(true))]
        ));
    }

    #[test]
    fn metadata_compares_only_the_legacy_keys() {
        let m = Field::UserMetadata;
        assert!(!differs(
            m,
            &[(m, obj(r#"{"lang":"en"}"#))],
            &[(m, obj(r#"{"lang":"en","theme":"dark"}"#))]
        ));
        assert!(!differs(
            m,
            &[(m, obj(r#"{"n":1}"#))],
            &[(m, obj(r#"{"n":1.0}"#))]
        ));
        assert!(!differs(m, &[(m, obj(r#"{"gone":null}"#))], &[]));
        assert!(!differs(m, &[], &[(m, obj(r#"{"lang":"en"}"#))]));
        let found = diff(
            m,
            &profile(&[(m, obj(r#"{"lang":"de","tier":{"a":[1,2]},"same":true}"#))]),
            &profile(&[(
                m,
                obj(r#"{"lang":"en","tier":{"a":[1,3]},"same":true,"x":1}"#),
            )]),
        )
        .unwrap();
        assert_eq!(
            found.legacy.to_json(),
            serde_json::json!({"lang":"de","tier":{"a":[1,2]}})
        );
        assert_eq!(
            found.auth0.to_json(),
            serde_json::json!({"lang":"en","tier":{"a":[1,3]}})
        );
    }

    fn legacy(updated_at: Option<i64>, values: &[(Field, Value<'static>)]) -> LegacyView<'static> {
        LegacyView {
            profile: profile(values),
            updated_at,
            last_active_at: None,
        }
    }

    fn auth0(
        migrated: bool,
        created_at: Option<i64>,
        values: &[(Field, Value<'static>)],
    ) -> Auth0User<'static> {
        Auth0User {
            auth0_id: "auth0|1",
            legacy_id: "1",
            profile: profile(values),
            created_at,
            migrated,
        }
    }

    /// Every user of the connection migrated, root attributes refreshed at login.
    fn rules(fields: &[Field]) -> Rules<'_> {
        Rules {
            fields,
            connection_migrated: Some(true),
            root_attributes_refreshed: true,
        }
    }

    #[test]
    fn statuses_follow_the_design_table() {
        let fields = [Field::Email];
        let old = [(Field::Email, text("old@x.io"))];
        let new = [(Field::Email, text("new@x.io"))];
        let status = |l: Option<&LegacyView>, a: Option<&Auth0User>| {
            let verdict = classify(&rules(&fields), l, a, None);
            (verdict.status, verdict.origin)
        };
        assert_eq!(
            status(Some(&legacy(None, &old)), Some(&auth0(true, None, &old))),
            (Status::InSync, None)
        );
        assert_eq!(
            status(
                Some(&legacy(Some(20), &new)),
                Some(&auth0(true, Some(10), &old))
            ),
            (Status::Stranded, Some(Origin::Timestamp))
        );
        assert_eq!(
            status(
                Some(&legacy(Some(5), &new)),
                Some(&auth0(true, Some(10), &old))
            ),
            (Status::Auth0Ahead, Some(Origin::Timestamp))
        );
        assert_eq!(
            status(
                Some(&legacy(None, &new)),
                Some(&auth0(true, Some(10), &old))
            ),
            (Status::Stranded, Some(Origin::Assumed))
        );
        assert_eq!(
            status(
                Some(&legacy(Some(20), &new)),
                Some(&auth0(false, Some(10), &old))
            ),
            (Status::StaleCache, None)
        );
        assert_eq!(
            status(Some(&legacy(None, &new)), None),
            (Status::NotMigrated, None)
        );
        // Without evidence that it ever had a legacy row, an Auth0-only user signed up.
        assert_eq!(
            status(None, Some(&auth0(true, None, &old))),
            (Status::Auth0Only, None)
        );
        assert_eq!(
            status(None, Some(&auth0(false, None, &old))),
            (Status::Auth0Only, None)
        );
    }

    #[test]
    fn one_sided_users_need_evidence_from_an_earlier_run_or_the_marker() {
        let fields = [Field::Email];
        let old = [(Field::Email, text("old@x.io"))];
        let verdict = |rules: &Rules, l: Option<&LegacyView>, a: Option<&Auth0User>, set: &[u8]| {
            classify(rules, l, a, Some(PackedBaselines(set))).status
        };
        let import_mode = rules(&fields);
        let marker = Rules {
            connection_migrated: None,
            ..rules(&fields)
        };
        let migrated_set = baseline::pack(baseline::Seen::Migrated, &[]);
        let cached_set = baseline::pack(baseline::Seen::Cached, &[]);
        let old_set = baseline::pack_without_seen(&[("email".to_owned(), 1)]);
        let row = legacy(None, &old);
        // Matched before, now without a legacy row: orphaned; a cached one: stale_cache.
        let migrated_user = auth0(true, None, &old);
        let cached_user = auth0(false, None, &old);
        assert_eq!(
            verdict(&import_mode, None, Some(&migrated_user), &migrated_set),
            Status::Orphaned
        );
        assert_eq!(
            verdict(&marker, None, Some(&cached_user), &cached_set),
            Status::StaleCache
        );
        // The marker is evidence on its own; without it and without a set, a signup.
        assert_eq!(
            verdict(&marker, None, Some(&migrated_user), &[]),
            Status::Orphaned
        );
        assert_eq!(
            verdict(&marker, None, Some(&cached_user), &[]),
            Status::Auth0Only
        );
        assert_eq!(
            verdict(&import_mode, None, Some(&migrated_user), &[]),
            Status::Auth0Only
        );
        // A legacy row whose Auth0 user is gone: deleted in Auth0 only if it was seen migrated.
        assert_eq!(
            verdict(&import_mode, Some(&row), None, &migrated_set),
            Status::DeletedInAuth0
        );
        assert_eq!(
            verdict(&marker, Some(&row), None, &cached_set),
            Status::NotMigrated
        );
        assert_eq!(
            verdict(&import_mode, Some(&row), None, &[]),
            Status::NotMigrated
        );
        // A set from before driftsync recorded how it matched: migrated if the connection is.
        assert_eq!(
            verdict(&import_mode, Some(&row), None, &old_set),
            Status::DeletedInAuth0
        );
        assert_eq!(
            verdict(&marker, Some(&row), None, &old_set),
            Status::NotMigrated
        );
        for status in [Status::Auth0Only, Status::NotMigrated, Status::InSync] {
            assert!(!status.is_listed() && !status.needs_action(), "{status}");
        }
        assert!(Status::DeletedInAuth0.is_listed() && Status::DeletedInAuth0.needs_action());
    }

    #[test]
    fn cached_root_attributes_not_refreshed_at_login_are_stranded() {
        let fields = [Field::Name, Field::Email];
        let legacy_side = legacy(
            Some(20),
            &[(Field::Name, text("New")), (Field::Email, text("n@x.io"))],
        );
        let cached = auth0(
            false,
            Some(10),
            &[(Field::Name, text("Old")), (Field::Email, text("o@x.io"))],
        );
        let refreshed = classify(&rules(&fields), Some(&legacy_side), Some(&cached), None);
        assert_eq!(refreshed.status, Status::StaleCache);
        let not_refreshed = Rules {
            root_attributes_refreshed: false,
            ..rules(&fields)
        };
        let verdict = classify(&not_refreshed, Some(&legacy_side), Some(&cached), None);
        assert_eq!(
            (verdict.status, verdict.origin),
            (Status::Stranded, Some(Origin::Timestamp))
        );
        // Both differences are reported; only the name is the legacy side's to push.
        assert_eq!(verdict.diffs.len(), 2);
        let pushed: Vec<&str> = verdict
            .legacy_changed
            .iter()
            .map(|&index| verdict.keys[index].key.as_ref())
            .collect();
        assert_eq!(pushed, ["name"]);
        // An email difference alone still refreshes at login.
        let email_only = auth0(
            false,
            Some(10),
            &[(Field::Name, text("New")), (Field::Email, text("o@x.io"))],
        );
        assert_eq!(
            classify(&not_refreshed, Some(&legacy_side), Some(&email_only), None).status,
            Status::StaleCache
        );
    }

    #[test]
    fn usernames_compare_case_insensitively_like_emails() {
        let u = Field::Username;
        assert!(!differs(u, &[(u, text("PatK"))], &[(u, text("patk"))]));
        assert!(differs(u, &[(u, text("PatK"))], &[(u, text("pat"))]));
        let keys = baseline::key_values(
            &[u],
            &profile(&[(u, text("PatK"))]),
            &profile(&[(u, text("patk"))]),
            &[],
        );
        assert!(!keys[0].differs(), "the baselines' canonical form agrees");
    }

    #[test]
    fn baselines_decide_the_three_cases() {
        let fields = [Field::Name];
        let named = |name: &'static str| [(Field::Name, text(name))];
        let agreed = baseline::pack(
            baseline::Seen::Migrated,
            &[("name".to_owned(), baseline::hash(Some("Old")))],
        );
        let case = |l: &'static str, a: &'static str| {
            // Timestamps that would say "auth0_ahead": the baseline must win over them.
            let verdict = classify(
                &rules(&fields),
                Some(&legacy(Some(5), &named(l))),
                Some(&auth0(true, Some(10), &named(a))),
                Some(PackedBaselines(&agreed)),
            );
            (verdict.status, verdict.origin)
        };
        assert_eq!(
            case("New", "Old"),
            (Status::Stranded, Some(Origin::Baseline))
        );
        assert_eq!(
            case("Old", "New"),
            (Status::Auth0Ahead, Some(Origin::Baseline))
        );
        assert_eq!(
            case("New", "Newer"),
            (Status::Conflict, Some(Origin::Baseline))
        );
        assert_eq!(case("Same", "Same").0, Status::InSync);
    }

    #[test]
    fn only_configured_fields_are_compared() {
        let verdict = classify(
            &rules(&[Field::Name]),
            Some(&legacy(None, &[(Field::Email, text("new@x.io"))])),
            Some(&auth0(true, None, &[(Field::Email, text("old@x.io"))])),
            None,
        );
        assert_eq!(verdict.status, Status::InSync);
    }
}
