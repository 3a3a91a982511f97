//! Timestamps as microseconds since the Unix epoch: the one representation shared by
//! PostgreSQL's `timestamptz`, Auth0's RFC 3339 strings and the report.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses an RFC 3339 timestamp such as Auth0's `2024-03-02T09:15:00.000Z`.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000).ok()
}

/// Formats microseconds since the Unix epoch as RFC 3339 in UTC.
pub fn format_rfc3339(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| String::from("1970-01-01T00:00:00Z"))
}

/// The current time in RFC 3339, to the millisecond (as Auth0 writes its timestamps).
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let millis = now.millisecond();
    now.replace_millisecond(millis)
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auth0_timestamps() {
        let micros = parse_rfc3339("2024-03-02T09:15:00.000Z").unwrap();
        assert_eq!(micros, 1_709_370_900_000_000);
        assert_eq!(format_rfc3339(micros), "2024-03-02T09:15:00Z");
        assert_eq!(parse_rfc3339("2024-03-02 09:15"), None);
    }
}
