//! Timestamps as microseconds since the Unix epoch: the one representation shared by
//! PostgreSQL's `timestamptz`, Auth0's RFC 3339 strings and the report.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: the moments RFC 3339 can write in UTC.
const FIRST_MICROS: i64 = -62_167_219_200_000_000;
const LAST_MICROS: i64 = 253_402_300_799_999_999;

/// Parses an RFC 3339 timestamp such as Auth0's `2024-03-02T09:15:00.000Z`.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let micros = i64::try_from(parsed.unix_timestamp_nanos() / 1_000).ok()?;
    // An offset can move a four-digit year past 0000 or 9999 in UTC, where `format_rfc3339`
    // cannot write it back (a parked profile's line would say 1970): refused like bad text.
    (FIRST_MICROS..=LAST_MICROS)
        .contains(&micros)
        .then_some(micros)
}

/// Formats microseconds since the Unix epoch as RFC 3339 in UTC.
pub fn format_rfc3339(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| String::from("1970-01-01T00:00:00Z"))
}

/// The current time in RFC 3339, to the millisecond (as Auth0 writes its timestamps), always
/// with three digits of fraction: the state file orders runs by these strings, and a trimmed
/// fraction (`.67Z` after `.671Z`) would sort out of time order.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
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

    #[test]
    fn every_accepted_timestamp_formats_back_to_itself() {
        // Found while fuzzing the export reader: these parsed, but their UTC years (-1 and
        // 10000) have no RFC 3339 form, so a parked profile's minimal line said 1970.
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00+23:59"), None);
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59-23:59"), None);
        for text in [
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "0001-01-01T00:00:00+23:59",
            "1969-12-31T23:59:59.5Z",
        ] {
            let micros = parse_rfc3339(text).unwrap();
            assert_eq!(
                parse_rfc3339(&format_rfc3339(micros)),
                Some(micros),
                "{text}"
            );
        }
    }

    #[test]
    fn now_has_a_fixed_width_so_that_its_strings_sort_in_time_order() {
        let now = now_rfc3339();
        assert_eq!(now.len(), "2026-11-30T02:17:23.670Z".len(), "{now}");
        assert!(parse_rfc3339(&now).is_some(), "{now}");
    }
}
