//! The value-level equality rules that keep Auth0's own behaviour from looking like drift, as
//! one *canonical form* per value: two values are equal exactly when their canonical forms are.
//! Every comparison derives from [`canonical`] — the classification's field diff (`classify`, through the
//! keys), the hashes the baselines keep (`baseline`) — so the two can never disagree. The check
//! of a pushed value after a restart (`push::apply`) uses [`equal_ignoring_case`] from here.
//!
//! - NULL, an absent value and `""` are no value; a missing boolean is `false`.
//! - Emails and usernames compare case-insensitively (Auth0 lower-cases both), symmetric even
//!   for non-ASCII letters.
//! - A value Auth0 generates when the Login script returns none — `name` = the email,
//!   `nickname` = the email's local part, `picture` = a Gravatar or Auth0 CDN avatar — counts as
//!   no value, on either side.
//! - Metadata values compare as JSON: numbers by value, objects with sorted keys.

use std::borrow::Cow;

use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::model::profile::{Field, Kind, Profile, Value};

/// Equal when lower-cased (emails and usernames: Auth0 stores both lower-cased).
pub fn equal_ignoring_case(a: &str, b: &str) -> bool {
    // Either side may be the non-ASCII one (`k` and the Kelvin sign `K` lower-case alike), and
    // the baselines' canonical form lower-cases both: equality must not depend on the order.
    a.eq_ignore_ascii_case(b)
        || (!(a.is_ascii() && b.is_ascii()) && a.to_lowercase() == b.to_lowercase())
}

/// Whether an Auth0 value is what Auth0 generates when the Login script returns none, given
/// the email of either side (the email may have changed since the value was generated).
pub fn is_generated_default(
    field: Field,
    value: &str,
    legacy: &Profile<'_>,
    auth0: &Profile<'_>,
) -> bool {
    let emails = [legacy.text(Field::Email), auth0.text(Field::Email)];
    let mut emails = emails
        .into_iter()
        .flatten()
        .filter(|email| !email.is_empty());
    match field {
        Field::Name => emails.any(|email| equal_ignoring_case(email, value)),
        Field::Nickname => emails.any(|email| {
            let local = email.split_once('@').map_or(email, |(local, _)| local);
            equal_ignoring_case(local, value)
        }),
        Field::Picture => is_generated_picture(value),
        _ => false,
    }
}

/// Gravatar (Auth0's default picture) or its initials fallback on Auth0's CDN.
fn is_generated_picture(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    [
        "s.gravatar.com/avatar/",
        "secure.gravatar.com/avatar/",
        "www.gravatar.com/avatar/",
        "gravatar.com/avatar/",
        "cdn.auth0.com/avatars/",
    ]
    .iter()
    .any(|prefix| rest.starts_with(prefix))
}

/// The canonical form of a root field on one side (`own`; `other` is the opposite side, whose
/// email also makes a generated default). `None` is no value. Two values are equal exactly when
/// their canonical forms are: the report's field diff and the baselines' hashes all
/// derive from this one function.
pub fn canonical<'p>(
    field: Field,
    own: &'p Profile<'_>,
    other: &Profile<'_>,
) -> Option<Cow<'p, str>> {
    match field.kind() {
        Kind::Bool => {
            let value = matches!(own.get(field), Some(Value::Bool(true)));
            Some(Cow::Borrowed(if value { "true" } else { "false" }))
        }
        Kind::Text => {
            let text = own.text(field).filter(|text| !text.is_empty())?;
            // On both sides: otherwise a legacy value equal to Auth0's generated one would
            // differ from that same value on the Auth0 side.
            if is_generated_default(field, text, other, own) {
                return None;
            }
            if field.ignores_case()
                && (!text.is_ascii() || text.bytes().any(|b| b.is_ascii_uppercase()))
            {
                return Some(Cow::Owned(text.to_lowercase()));
            }
            Some(Cow::Borrowed(text))
        }
        Kind::Object => None,
    }
}

/// The canonical form of one metadata value (a first-level member, as raw JSON): strings without escapes, booleans and short
/// integers are canonical as written; anything else goes through [`canonical_json`].
pub fn canonical_member(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get().trim();
    let simple = match text.as_bytes().first() {
        Some(b'"') => !text.contains('\\'),
        Some(b't' | b'f') => true,
        Some(b'n') => return None,
        Some(b'-' | b'0'..=b'9') => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            digits.len() <= 15
                && digits.bytes().all(|byte| byte.is_ascii_digit())
                && !(digits.len() > 1 && digits.starts_with('0'))
                && text != "-0"
        }
        _ => false,
    };
    if simple {
        return Some(Cow::Borrowed(text));
    }
    // A valid JSON value can still fail to become a tree (a number beyond f64, as `numeric`
    // holds; an object keyed by serde_json's private raw-value token): it is kept as written
    // rather than taken for no value, which would hide a difference.
    match serde_json::from_str::<Json>(text) {
        Ok(value) => canonical_json(&value).map(Cow::Owned),
        Err(_) => Some(Cow::Borrowed(text)),
    }
}

/// JSON written canonically (sorted keys, numbers by value); `null` is no value.
pub(crate) fn canonical_json(value: &Json) -> Option<String> {
    if value.is_null() {
        return None;
    }
    let mut out = String::new();
    write_canonical(value, &mut out);
    Some(out)
}

fn write_canonical(value: &Json, out: &mut String) {
    match value {
        Json::Number(number) => match (number.as_i64(), number.as_f64()) {
            (Some(integer), _) => out.push_str(&integer.to_string()),
            (None, Some(float)) if float.fract() == 0.0 && float.abs() < 9.0e15 => {
                out.push_str(&(float as i64).to_string())
            }
            _ => out.push_str(&number.to_string()),
        },
        Json::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Json::Object(map) => {
            // serde_json's Map keeps keys sorted (no `preserve_order`), so this is canonical.
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Json::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The Auth0 attributes a run reads: the `compared` ones, the email when a generated default
/// (name, nickname) is judged against it, and `also` (what pushes look at besides). The export
/// job asks for these, and a parked profile keeps them (`export::minimal_line`).
pub fn attributes_read(compared: &[Field], also: &[Field]) -> Vec<Field> {
    let mut attributes: Vec<Field> = compared.iter().chain(also).copied().collect();
    if compared
        .iter()
        .any(|f| matches!(f, Field::Name | Field::Nickname))
    {
        attributes.push(Field::Email);
    }
    attributes.sort();
    attributes.dedup();
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_canonicalize_like_parsed_ones() {
        for text in [
            r#""plain""#,
            r#""esc\u00e9""#,
            "true",
            "12",
            "-3",
            "1.0",
            "1e2",
            "-0",
            "123456789012345678901",
            r#"{"b":1,"a":[1.0,"x"]}"#,
            "[1, 2]",
        ] {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            let parsed: Json = serde_json::from_str(text).unwrap();
            assert_eq!(
                canonical_member(&raw).map(Cow::into_owned),
                canonical_json(&parsed),
                "{text}"
            );
        }
        let null: Box<RawValue> = serde_json::from_str("null").unwrap();
        assert_eq!(canonical_member(&null), None);
    }

    #[test]
    fn spellings_of_one_float_have_one_canonical_form() {
        // Found by the classify fuzz target: without serde_json's `float_roundtrip`, some long
        // mantissas parsed one unit in the last place off, so the same number written with a
        // trailing zero (as PostgreSQL's numeric keeps it), or parsed and written again (as
        // Auth0 stores metadata), had two canonical forms and showed as a difference.
        let canonical_of = |text: &str| {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            canonical_member(&raw).map(Cow::into_owned)
        };
        for (written, same) in [
            ("-1.0851508951498214e-277", "-1.08515089514982140e-277"),
            ("7.284003528366592e-304", "72.84003528366592e-305"),
        ] {
            assert_eq!(canonical_of(written), canonical_of(same), "{written}");
            let rewritten = serde_json::from_str::<Json>(written).unwrap().to_string();
            assert_eq!(canonical_of(written), canonical_of(&rewritten), "{written}");
        }
    }

    #[test]
    fn equal_ignoring_case_is_symmetric() {
        // The Kelvin sign lower-cases to an ASCII `k`; `is_ascii` of the first argument alone
        // decided whether to look beyond ASCII.
        assert!(equal_ignoring_case("\u{212A}@x.io", "k@x.io"));
        assert!(equal_ignoring_case("k@x.io", "\u{212A}@x.io"));
        assert!(!equal_ignoring_case("k@x.io", "l@x.io"));
    }
}
