//! The comparison: a legacy profile (packed as the legacy reader packs it) against an Auth0
//! profile, with an arbitrary stored baseline.
//!
//! Properties:
//! - `classify`, `diff`, `key_values`, `LegacyView::of` and `PackedBaselines` never panic,
//!   whatever the bytes;
//! - the report agrees with the status: a user present on both sides is `in_sync` exactly when
//!   no field differs, and `diff` of one field differs exactly when one of its keys does;
//! - a profile compared with itself, or with itself after Auth0's re-serialization of its
//!   metadata (parsed and written again), is `in_sync`;
//! - root fields compare symmetrically (DESIGN: emails case-insensitive, "" = NULL, generated
//!   defaults = no value; only metadata is one-sided: the legacy side's keys);
//! - a baseline equal to one side's values puts every difference on the other side;
//! - packed baselines round-trip.
#![no_main]

use std::borrow::Cow;

use arbitrary::Arbitrary;
use driftsync::model::baseline::{self, PackedBaselines, Seen};
use driftsync::model::classify::{self, Rules, Status};
use driftsync::model::profile::Auth0User;
use driftsync::model::profile::{Field, Kind, LegacyRecordBuilder, LegacyView, Profile, Value};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Which fields are compared: bit i selects `Field::ALL[i]`; bit 15 says the connection
    /// does not refresh cached root attributes at login.
    fields: u16,
    legacy: Side<'a>,
    auth0: Side<'a>,
    updated_at: Option<i64>,
    created_at: Option<i64>,
    migrated: bool,
    /// A stored baseline set, as damaged or odd as the fuzzer likes.
    baseline: &'a [u8],
    /// Extra (key, hash) pairs to pack and read back.
    stored: Vec<(&'a str, i64)>,
}

#[derive(Arbitrary, Debug)]
struct Side<'a> {
    texts: [Option<&'a str>; 7],
    bools: [Option<bool>; 2],
    objects: [Option<Object<'a>>; 2],
}

/// Metadata: JSON text, kept only when it is an object (as both readers ensure), or an object
/// written from members, so that numbers in their many spellings are easy to reach.
#[derive(Arbitrary, Debug)]
enum Object<'a> {
    Text(&'a str),
    Members(Vec<(&'a str, Member<'a>)>),
}

#[derive(Arbitrary, Debug)]
enum Member<'a> {
    Null,
    Bool(bool),
    Integer(i64),
    /// A float and how to spell it.
    Float(f64, u8),
    Text(&'a str),
    Array(Vec<Member<'a>>),
    Object(Vec<(&'a str, Member<'a>)>),
}

impl Object<'_> {
    fn json(&self) -> Option<String> {
        match self {
            Object::Text(text) => is_object(text).then(|| text.to_string()),
            Object::Members(members) => {
                let mut out = String::new();
                write_members(members, &mut out);
                // A spelling beyond the largest float is no JSON number serde_json takes.
                is_object(&out).then_some(out)
            }
        }
    }
}

fn write_members(members: &[(&str, Member<'_>)], out: &mut String) {
    out.push('{');
    for (index, (key, member)) in members.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).unwrap());
        out.push(':');
        write_member(member, out);
    }
    out.push('}');
}

fn write_member(member: &Member<'_>, out: &mut String) {
    match member {
        Member::Null => out.push_str("null"),
        Member::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
        Member::Integer(value) => out.push_str(&value.to_string()),
        Member::Float(value, _) if !value.is_finite() => out.push_str("null"),
        // Spellings of the same number: shortest, exponent, a trailing zero (as PostgreSQL's
        // numeric keeps what it was given), more digits than needed.
        Member::Float(value, style) => out.push_str(&match style % 4 {
            0 => format!("{value:?}"),
            1 => format!("{value:e}"),
            2 => {
                let text = format!("{value:e}");
                match text.split_once('e') {
                    Some((mantissa, exponent)) if mantissa.contains('.') => {
                        format!("{mantissa}0e{exponent}")
                    }
                    Some((mantissa, exponent)) => format!("{mantissa}.0e{exponent}"),
                    None => text,
                }
            }
            _ => format!("{value:.20e}"),
        }),
        Member::Text(text) => out.push_str(&serde_json::to_string(text).unwrap()),
        Member::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_member(item, out);
            }
            out.push(']');
        }
        Member::Object(members) => write_members(members, out),
    }
}

const TEXT_FIELDS: [Field; 7] = [
    Field::Email,
    Field::Name,
    Field::Nickname,
    Field::GivenName,
    Field::FamilyName,
    Field::Picture,
    Field::Username,
];
const BOOL_FIELDS: [Field; 2] = [Field::EmailVerified, Field::Blocked];
const OBJECT_FIELDS: [Field; 2] = [Field::UserMetadata, Field::AppMetadata];

fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_ok()
}

impl<'a> Side<'a> {
    fn profile(&self) -> Profile<'static> {
        let mut profile = Profile::default();
        for (field, text) in TEXT_FIELDS.into_iter().zip(self.texts) {
            profile.set(
                field,
                text.map(|text| Value::Text(Cow::Owned(text.to_owned()))),
            );
        }
        for (field, value) in BOOL_FIELDS.into_iter().zip(self.bools) {
            profile.set(field, value.map(Value::Bool));
        }
        for (field, object) in OBJECT_FIELDS.into_iter().zip(&self.objects) {
            let json = object.as_ref().and_then(Object::json);
            profile.set(field, json.map(|json| Value::Object(Cow::Owned(json))));
        }
        profile
    }
}

/// Packs a profile as the legacy reader does.
fn record(profile: &Profile<'_>, updated_at: Option<i64>) -> Vec<u8> {
    let mut builder = LegacyRecordBuilder::default();
    for field in Field::ALL {
        match profile.get(field) {
            Some(Value::Text(text)) => builder.text(field, text),
            Some(Value::Bool(value)) => builder.boolean(field, *value),
            Some(Value::Object(json)) => builder.object(field, json),
            None => {}
        }
    }
    if let Some(micros) = updated_at {
        builder.updated_at(micros);
    }
    builder.finish().as_bytes().to_vec()
}

/// The profile with its metadata parsed and written again, as Auth0 stores what it is sent.
fn reserialized(profile: &Profile<'_>) -> Profile<'static> {
    let mut copy = Profile::default();
    for field in Field::ALL {
        let value = profile.get(field).map(|value| match value {
            Value::Text(text) => Value::Text(Cow::Owned(text.to_string())),
            Value::Bool(value) => Value::Bool(*value),
            // Text serde_json cannot build into a tree (a number beyond f64, its private
            // raw-value token as a key) stays as written.
            Value::Object(json) => match serde_json::from_str::<serde_json::Value>(json) {
                Ok(parsed) => Value::Object(Cow::Owned(parsed.to_string())),
                Err(_) => Value::Object(Cow::Owned(json.to_string())),
            },
        });
        copy.set(field, value);
    }
    copy
}

fn auth0_user<'a>(profile: Profile<'a>, input: &Input<'_>) -> Auth0User<'a> {
    Auth0User {
        auth0_id: "auth0|1",
        legacy_id: "1",
        profile,
        created_at: input.created_at,
        migrated: input.migrated,
    }
}

fn assert_in_sync(rules: &Rules<'_>, legacy: &LegacyView<'_>, auth0: &Auth0User<'_>, what: &str) {
    let verdict = classify::classify(rules, Some(legacy), Some(auth0), None);
    assert_eq!(
        verdict.status,
        Status::InSync,
        "{what}: {verdict:?}\nlegacy {:?}\nauth0 {:?}",
        legacy.profile,
        auth0.profile
    );
    assert!(verdict.diffs.is_empty(), "{what}: {verdict:?}");
}

fuzz_target!(|input: Input<'_>| {
    let fields: Vec<Field> = Field::ALL
        .into_iter()
        .enumerate()
        .filter(|(index, _)| input.fields & (1 << index) != 0)
        .map(|(_, field)| field)
        .collect();
    // The bit above the fields: whether the connection refreshes cached root attributes.
    let rules = Rules {
        fields: &fields,
        connection_migrated: Some(input.migrated),
        root_attributes_refreshed: input.fields & (1 << 15) == 0,
    };

    // Damaged bytes where packed ones are expected: no panic.
    let _ = LegacyView::of(input.baseline);
    let _ = PackedBaselines(input.baseline).entries();

    let legacy_profile = input.legacy.profile();
    let packed = record(&legacy_profile, input.updated_at);
    let legacy = LegacyView::of(&packed);
    assert_eq!(
        legacy.profile, legacy_profile,
        "the legacy record round-trips"
    );
    assert_eq!(legacy.updated_at, input.updated_at);
    let auth0_profile = input.auth0.profile();
    let auth0 = auth0_user(auth0_profile.clone(), &input);

    // Any pair, any stored baseline: no panic, and the report agrees with the status.
    let baseline = PackedBaselines(input.baseline);
    let verdict = classify::classify(&rules, Some(&legacy), Some(&auth0), Some(baseline));
    assert_eq!(
        verdict.status == Status::InSync,
        verdict.diffs.is_empty(),
        "{verdict:?}\nlegacy {legacy_profile:?}\nauth0 {auth0_profile:?}"
    );
    for &index in &verdict.legacy_changed {
        assert!(verdict.keys[index].differs());
    }
    let _ = classify::classify(&rules, Some(&legacy), None, Some(baseline));
    let _ = classify::classify(&rules, None, Some(&auth0), Some(baseline));

    for field in Field::ALL {
        let keys = baseline::key_values(&[field], &legacy.profile, &auth0.profile, &[]);
        let found = classify::diff(field, &legacy.profile, &auth0.profile);
        assert_eq!(
            keys.iter().any(|key| key.differs()),
            found.is_some(),
            "{field}: keys {keys:?} diff {found:?}\nlegacy {legacy_profile:?}\nauth0 {auth0_profile:?}"
        );
        if field.kind() != Kind::Object {
            let reversed = classify::diff(field, &auth0.profile, &legacy.profile);
            assert_eq!(
                found.is_some(),
                reversed.is_some(),
                "{field} is not symmetric\nlegacy {legacy_profile:?}\nauth0 {auth0_profile:?}"
            );
        }
    }

    // A baseline equal to one side: every difference is the other side's change.
    let verdict = classify::classify(&rules, Some(&legacy), Some(&auth0), None);
    if input.migrated && verdict.status != Status::InSync {
        let agreed_legacy: Vec<(String, i64)> = verdict
            .keys
            .iter()
            .map(|key| (key.key.to_string(), key.legacy))
            .collect();
        let agreed_auth0: Vec<(String, i64)> = verdict
            .keys
            .iter()
            .map(|key| (key.key.to_string(), key.auth0))
            .collect();
        for (agreed, expected) in [
            (agreed_legacy, Status::Auth0Ahead),
            (agreed_auth0, Status::Stranded),
        ] {
            let packed = baseline::pack(Seen::Migrated, &agreed);
            assert_eq!(PackedBaselines(&packed).entries(), agreed);
            let verdict = classify::classify(
                &rules,
                Some(&legacy),
                Some(&auth0),
                Some(PackedBaselines(&packed)),
            );
            assert_eq!(verdict.status, expected, "{verdict:?}");
        }
    }

    // A profile against itself, and against its re-serialized metadata.
    let same = auth0_user(legacy_profile.clone(), &input);
    assert_in_sync(&rules, &legacy, &same, "itself");
    let again = auth0_user(reserialized(&legacy_profile), &input);
    assert_in_sync(&rules, &legacy, &again, "re-serialized");

    // Packed baselines round-trip whatever the keys.
    let stored: Vec<(String, i64)> = input
        .stored
        .iter()
        .map(|(key, hash)| (key.to_string(), *hash))
        .collect();
    assert_eq!(
        PackedBaselines(&baseline::pack(Seen::Migrated, &stored)).entries(),
        stored
    );
});
