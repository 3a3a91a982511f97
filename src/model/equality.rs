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

use crate::model::profile::{Field, Kind, Profile, Value};

/// Equal when lower-cased (emails and usernames: Auth0 stores both lower-cased).
pub fn equal_ignoring_case(a: &str, b: &str) -> bool {
    // Either side may be the non-ASCII one (`k` and the Kelvin sign `K` lower-case alike), and
    // the baselines' canonical form lower-cases both: equality must not depend on the order.
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    // `str::to_lowercase` lower-cases one letter by its place: a capital sigma ending a word
    // becomes `ς`. Without one, comparing char by char is the same and allocates nothing.
    if a.contains('\u{3A3}') || b.contains('\u{3A3}') {
        return a.to_lowercase() == b.to_lowercase();
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
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
        Field::Name => {
            // Lower-casing neither makes nor takes an `@`: a quick no for most names.
            let has_at = value.contains('@');
            emails.any(|email| email.contains('@') == has_at && equal_ignoring_case(email, value))
        }
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

/// The canonical form of one metadata value (a first-level member, as raw JSON); `null` is no
/// value. Written straight from the text ([`Canon`]): no tree, and no copy at all when the text
/// is already canonical (strings without escapes, booleans, short integers, compact objects with
/// sorted keys). A text the writer leaves to serde_json (escapes, numbers it cannot take as
/// written) goes through [`canonical_json`]; the two agree (the random-JSON tests below; the
/// classify fuzz target reaches both).
pub fn canonical_member(raw: &str) -> Option<Cow<'_, str>> {
    let text = raw.trim();
    if text == "null" {
        return None;
    }
    if is_simple(text) {
        return Some(Cow::Borrowed(text));
    }
    let mut out = Vec::with_capacity(text.len());
    if Canon::new(text).value(&mut out).is_ok() {
        if out == text.as_bytes() {
            return Some(Cow::Borrowed(text));
        }
        // Pieces of the text cut at token boundaries: always UTF-8.
        if let Ok(out) = String::from_utf8(out) {
            return Some(Cow::Owned(out));
        }
    }
    // A valid JSON value can still fail to become a tree (a number beyond f64, as `numeric`
    // holds; an object keyed by serde_json's private raw-value token): it is kept as written
    // rather than taken for no value, which would hide a difference.
    match serde_json::from_str::<Json>(text) {
        Ok(value) => canonical_json(&value).map(Cow::Owned),
        Err(_) => Some(Cow::Borrowed(text)),
    }
}

/// Canonical as written: a string without escapes, a boolean, an integer of at most 15 digits
/// without a leading zero.
fn is_simple(text: &str) -> bool {
    match text.as_bytes().first() {
        Some(b'"') => !text.contains('\\'),
        Some(b't' | b'f') => true,
        Some(b'-' | b'0'..=b'9') => is_plain_integer(text),
        _ => false,
    }
}

/// An integer serde_json reads as an `i64` and writes back the same: at most 15 digits, no
/// leading zero, not `-0`.
fn is_plain_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.len() <= 15
        && digits.bytes().all(|byte| byte.is_ascii_digit())
        && !(digits.len() > 1 && digits.starts_with('0'))
        && text != "-0"
}

/// An object's first-level members as (key, value text), in the order written, read without
/// building anything; `None` for text it leaves to serde_json (a key with escapes, anything but
/// an object). The text must be valid JSON, as both readers keep it (PostgreSQL checks `json`
/// and `jsonb`; the export reader parses each line).
pub(crate) fn object_members(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut cursor = Canon::new(text);
    cursor.expect(b'{').ok()?;
    let mut members = Vec::with_capacity(8);
    if cursor.peek().ok()? == b'}' {
        cursor.at += 1;
    } else {
        loop {
            let key = cursor.string().ok()?;
            cursor.expect(b':').ok()?;
            cursor.skip_space();
            let start = cursor.at;
            cursor.skip_value().ok()?;
            members.push((&key[1..key.len() - 1], &text[start..cursor.at]));
            match cursor.peek().ok()? {
                b',' => cursor.at += 1,
                b'}' => {
                    cursor.at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    cursor.skip_space();
    (cursor.at == text.len()).then_some(members)
}

/// The writer gave the value to serde_json (an escape, a number it does not take as written).
struct Fallback;

/// The canonical writer over a valid JSON text (a `RawValue`: serde_json has checked it):
/// whitespace dropped, object members sorted by key with the last of a repeated key kept,
/// numbers by value. What it does not handle itself it returns as [`Fallback`], never a guess.
struct Canon<'t> {
    text: &'t str,
    at: usize,
}

impl<'t> Canon<'t> {
    fn new(text: &'t str) -> Canon<'t> {
        Canon { text, at: 0 }
    }

    fn skip_space(&mut self) {
        let bytes = self.text.as_bytes();
        while self.at < bytes.len() && matches!(bytes[self.at], b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Result<u8, Fallback> {
        self.skip_space();
        self.text.as_bytes().get(self.at).copied().ok_or(Fallback)
    }

    fn expect(&mut self, byte: u8) -> Result<(), Fallback> {
        if self.peek()? != byte {
            return Err(Fallback);
        }
        self.at += 1;
        Ok(())
    }

    /// A string without escapes, quotes included (one with escapes falls back).
    fn string(&mut self) -> Result<&'t str, Fallback> {
        self.expect(b'"')?;
        let start = self.at - 1;
        let rest = &self.text.as_bytes()[self.at..];
        let end = memchr::memchr2(b'"', b'\\', rest).ok_or(Fallback)?;
        if rest[end] != b'"' {
            return Err(Fallback);
        }
        self.at += end + 1;
        Ok(&self.text[start..self.at])
    }

    /// Past a string whose opening quote is at `self.at`, escapes and all.
    fn skip_string(&mut self) -> Result<(), Fallback> {
        let bytes = self.text.as_bytes();
        self.at += 1;
        loop {
            let rest = bytes.get(self.at..).ok_or(Fallback)?;
            let found = memchr::memchr2(b'"', b'\\', rest).ok_or(Fallback)?;
            self.at += found + 1;
            if rest[found] == b'"' {
                return Ok(());
            }
            self.at += 1;
        }
    }

    /// Past one value, without writing it.
    fn skip_value(&mut self) -> Result<(), Fallback> {
        let bytes = self.text.as_bytes();
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *bytes.get(self.at).ok_or(Fallback)? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                let rest = &bytes[self.at..];
                self.at += rest
                    .iter()
                    .position(|byte| {
                        matches!(byte, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                    })
                    .unwrap_or(rest.len());
                Ok(())
            }
        }
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Result<(), Fallback> {
        match self.peek()? {
            b'"' => out.extend_from_slice(self.string()?.as_bytes()),
            b'{' => self.object(out)?,
            b'[' => {
                self.at += 1;
                out.push(b'[');
                if self.peek()? == b']' {
                    self.at += 1;
                } else {
                    loop {
                        self.value(out)?;
                        match self.peek()? {
                            b',' => out.push(b','),
                            b']' => break,
                            _ => return Err(Fallback),
                        }
                        self.at += 1;
                    }
                    self.at += 1;
                }
                out.push(b']');
            }
            b't' | b'f' | b'n' => {
                let word = ["true", "false", "null"]
                    .into_iter()
                    .find(|word| self.text[self.at..].starts_with(word))
                    .ok_or(Fallback)?;
                self.at += word.len();
                out.extend_from_slice(word.as_bytes());
            }
            _ => {
                let rest = &self.text.as_bytes()[self.at..];
                let len = rest
                    .iter()
                    .position(|byte| {
                        !matches!(byte, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                    })
                    .unwrap_or(rest.len());
                let number = &self.text[self.at..self.at + len];
                self.at += len;
                if is_plain_integer(number) {
                    out.extend_from_slice(number.as_bytes());
                } else {
                    let number: serde_json::Number =
                        serde_json::from_str(number).map_err(|_| Fallback)?;
                    let mut written = String::new();
                    write_number(&number, &mut written);
                    out.extend_from_slice(written.as_bytes());
                }
            }
        }
        Ok(())
    }

    /// Members are written in the order they come, then put in key order.
    fn object(&mut self, out: &mut Vec<u8>) -> Result<(), Fallback> {
        self.expect(b'{')?;
        let mark = out.len();
        // (key with its quotes, where its canonical value starts and ends in `out`)
        let mut members: Vec<(&'t str, usize, usize)> = Vec::new();
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                let key = self.string()?;
                self.expect(b':')?;
                let start = out.len();
                self.value(out)?;
                members.push((key, start, out.len()));
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(Fallback),
                }
            }
        }
        // Without escapes a key's text between its quotes is the key itself: byte order is the
        // order serde_json's map keeps.
        fn key<'k>(member: &(&'k str, usize, usize)) -> &'k str {
            let (text, _, _) = *member;
            &text[1..text.len() - 1]
        }
        // Later first, so that the stable sort and dedup keep the last of a repeated key.
        members.reverse();
        members.sort_by(|a, b| key(a).cmp(key(b)));
        members.dedup_by(|later, kept| key(later) == key(kept));
        // The members in key order after the values as written, which then go.
        let written = out.len();
        out.push(b'{');
        for (index, &(text, start, end)) in members.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(text.as_bytes());
            out.push(b':');
            out.extend_from_within(start..end);
        }
        out.push(b'}');
        out.drain(mark..written);
        Ok(())
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

/// A number by value: integers as integers (a float with no fraction below 2^53 too), other
/// floats in their shortest round-trip form.
fn write_number(number: &serde_json::Number, out: &mut String) {
    match (number.as_i64(), number.as_f64()) {
        (Some(integer), _) => out.push_str(&integer.to_string()),
        (None, Some(float)) if float.fract() == 0.0 && float.abs() < 9.0e15 => {
            out.push_str(&(float as i64).to_string())
        }
        _ => out.push_str(&number.to_string()),
    }
}

fn write_canonical(value: &Json, out: &mut String) {
    match value {
        Json::Number(number) => write_number(number, out),
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
    use serde_json::value::RawValue;

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
                canonical_member(raw.get()).map(Cow::into_owned),
                canonical_json(&parsed),
                "{text}"
            );
        }
        let null: Box<RawValue> = serde_json::from_str("null").unwrap();
        assert_eq!(canonical_member(null.get()), None);
    }

    /// A random JSON text, written the ways a database or a service might: spaces anywhere,
    /// keys in any order and repeated, escapes, integers and floats of every length.
    fn random_json(seed: &mut u64, depth: u32, out: &mut String) {
        fn next_of(seed: &mut u64, bound: u64) -> u64 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed % bound
        }
        let space = |n: u64| [" ", "", "\n  ", "", "\t"][n as usize % 5];
        let kind = if depth >= 3 {
            next_of(seed, 6)
        } else {
            next_of(seed, 8)
        };
        out.push_str(space(next_of(seed, 5)));
        match kind {
            0 => out.push_str(["true", "false", "null"][next_of(seed, 3) as usize]),
            1 => {
                let integers = [
                    "0",
                    "-7",
                    "12",
                    "120000000000000",
                    "1234567890123456",
                    "-0",
                    "99999999999999999999999",
                    "9223372036854775807",
                    "-9223372036854775808",
                ];
                out.push_str(integers[next_of(seed, integers.len() as u64) as usize]);
            }
            2 => {
                let floats = [
                    "1.0",
                    "50.5",
                    "-0.0",
                    "1e2",
                    "1E-7",
                    "2.50",
                    "0.1",
                    "123456789.125",
                    "1.7976931348623157e308",
                    "5e-324",
                    "9007199254740993.0",
                    "1e15",
                ];
                out.push_str(floats[next_of(seed, floats.len() as u64) as usize]);
            }
            3 | 4 => {
                let strings = [
                    "\"plain\"",
                    "\"\"",
                    "\"Jürgen\"",
                    "\"esc\\u00e9\"",
                    "\"q\\\"q\"",
                    "\"São Paulo\"",
                    "\"\\/\"",
                    "\"a b\"",
                ];
                out.push_str(strings[next_of(seed, strings.len() as u64) as usize]);
            }
            5 => {
                out.push('[');
                for index in 0..next_of(seed, 4) {
                    if index > 0 {
                        out.push(',');
                    }
                    random_json(seed, depth + 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                let keys = [
                    "\"b\"",
                    "\"a\"",
                    "\"zip\"",
                    "\"city\"",
                    "\"ä\"",
                    "\"A\"",
                    "\"\\u0061\"",
                    "\"aa\"",
                    "\"\"",
                ];
                for index in 0..next_of(seed, 6) {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(keys[next_of(seed, keys.len() as u64) as usize]);
                    out.push_str(space(next_of(seed, 5)));
                    out.push(':');
                    random_json(seed, depth + 1, out);
                }
                out.push('}');
            }
        }
        out.push_str(space(next_of(seed, 5)));
    }

    #[test]
    fn the_writer_from_text_agrees_with_the_tree_on_random_json() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut written_without_a_tree = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            random_json(&mut seed, 0, &mut text);
            let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
            let expected = match serde_json::from_str::<Json>(&text) {
                Ok(parsed) => canonical_json(&parsed),
                Err(_) => Some(text.trim().to_string()),
            };
            assert_eq!(
                canonical_member(raw.get()).map(Cow::into_owned),
                expected,
                "{text}"
            );
            if Canon::new(text.trim()).value(&mut Vec::new()).is_ok() {
                written_without_a_tree += 1;
            }
        }
        // The tree is the exception, not the rule: most texts are written from the text.
        assert!(written_without_a_tree > 10_000, "{written_without_a_tree}");
    }

    #[test]
    fn members_read_from_text_are_those_serde_json_reads() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut read_from_text = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            random_json(&mut seed, 0, &mut text);
            let Ok(expected) =
                serde_json::from_str::<std::collections::BTreeMap<String, &RawValue>>(&text)
            else {
                assert_eq!(object_members(&text), None, "{text}");
                continue;
            };
            let Some(mut members) = object_members(&text) else {
                continue;
            };
            read_from_text += 1;
            members.reverse();
            members.sort_by_key(|&(key, _)| key);
            members.dedup_by_key(|&mut (key, _)| key);
            let expected: Vec<(&str, &str)> = expected
                .iter()
                .map(|(key, value)| (key.as_str(), value.get()))
                .collect();
            assert_eq!(members, expected, "{text}");
        }
        assert!(read_from_text > 3_000, "{read_from_text}");
        assert_eq!(object_members(r#"{"a\u0041":1}"#), None);
        assert_eq!(object_members("[1]"), None);
        assert_eq!(
            object_members(r#" { "s" : "x\"}" , "o":{"a":[1,{"b":"]"}]} } "#),
            Some(vec![("s", r#""x\"}""#), ("o", r#"{"a":[1,{"b":"]"}]}"#)])
        );
    }

    #[test]
    fn canonical_text_is_borrowed_and_other_text_rewritten() {
        let raw: Box<RawValue> = serde_json::from_str(r#"{"a":[1,"x"],"b":{"c":2.5}}"#).unwrap();
        assert!(matches!(
            canonical_member(raw.get()),
            Some(Cow::Borrowed(_))
        ));
        let raw: Box<RawValue> =
            serde_json::from_str(r#"{"b": {"c": 2.50}, "a": [1, "x"], "b": {"c": 2.5}}"#).unwrap();
        assert_eq!(
            canonical_member(raw.get()).as_deref(),
            Some(r#"{"a":[1,"x"],"b":{"c":2.5}}"#)
        );
    }

    #[test]
    fn spellings_of_one_float_have_one_canonical_form() {
        // Found by the classify fuzz target: without serde_json's `float_roundtrip`, some long
        // mantissas parsed one unit in the last place off, so the same number written with a
        // trailing zero (as PostgreSQL's numeric keeps it), or parsed and written again (as
        // Auth0 stores metadata), had two canonical forms and showed as a difference.
        let canonical_of = |text: &str| {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            canonical_member(raw.get()).map(Cow::into_owned)
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
        // Lower-cased as whole texts, not letter by letter: a final sigma is `ς`.
        assert!(equal_ignoring_case("ΟΔΟΣ", "οδος"));
        assert!(!equal_ignoring_case("ΟΔΟΣ", "οδοσ"));
        assert!(equal_ignoring_case("Jürgen MÜLLER", "jürgen müller"));
        assert!(!equal_ignoring_case(
            "Jürgen Müller",
            "juergen.mueller1@example.org"
        ));
        for (a, b) in [("İx", "i̇x"), ("ǅ", "ǆ"), ("ß", "SS"), ("Ω", "ω")] {
            assert_eq!(
                equal_ignoring_case(a, b),
                a.to_lowercase() == b.to_lowercase(),
                "{a} {b}"
            );
        }
    }
}
