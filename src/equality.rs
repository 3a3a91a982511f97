//! The value-level equality rules that keep Auth0's own behaviour from looking like drift,
//! in one place for every comparison that needs them: the classification's field diff
//! (`classify`), the canonical form the baselines hash (`baseline`) and the check of a pushed
//! value after a restart (`push::apply`).
//!
//! - Emails and usernames compare case-insensitively (Auth0 lower-cases both), symmetric even
//!   for non-ASCII letters.
//! - A value Auth0 generates when the Login script returns none — `name` = the email,
//!   `nickname` = the email's local part, `picture` = a Gravatar or Auth0 CDN avatar — counts as
//!   no value, on either side.

use crate::profile::{Field, Profile};

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
    fn equal_ignoring_case_is_symmetric() {
        // The Kelvin sign lower-cases to an ASCII `k`; `is_ascii` of the first argument alone
        // decided whether to look beyond ASCII.
        assert!(equal_ignoring_case("\u{212A}@x.io", "k@x.io"));
        assert!(equal_ignoring_case("k@x.io", "\u{212A}@x.io"));
        assert!(!equal_ignoring_case("k@x.io", "l@x.io"));
    }
}
