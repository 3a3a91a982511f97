//! One way to put an error and its causes on one line, for the messages of both outbound
//! connections (Auth0, the legacy database), whose libraries nest the real cause several
//! sources deep.

/// An error and its sources, "outer: inner: innermost", skipping a link whose text its
/// outer one already ends with.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(current) = next {
        let part = current.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = current.source();
    }
    text
}
