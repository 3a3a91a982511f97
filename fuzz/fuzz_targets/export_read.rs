//! The Auth0 export reader on arbitrary bytes, plain or gzip.
//!
//! Input: one option byte, then the export. Properties:
//! - `decompressing` + `read` never panic: damage is an `Err` naming its line;
//! - every user read comes back unchanged from its `minimal_line` (what a parked profile keeps
//!   while it waits for its legacy row), under the same filter.
#![no_main]

use std::io::{BufRead, Write};

use driftsync::model::profile::MigratedRule;
use driftsync::sources::export::{self, ExportError, ExportFilter, Interpreted};
use driftsync::model::profile::Auth0User;
use driftsync::model::profile::Field;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&options, export_bytes)) = data.split_first() else {
        return;
    };
    let filter = ExportFilter {
        connection: "legacy-users".into(),
        migrated: match options & 0b11 {
            0 => MigratedRule::Always,
            1 => MigratedRule::Never,
            2 => MigratedRule::ImportMode,
            _ => MigratedRule::AppMetadataKey("migrated".into()),
        },
    };
    // Bit 2: the harness compresses the bytes, so that the gzip path sees valid streams too
    // (the fuzzer finds damaged ones on its own through the magic bytes).
    let bytes = if options & 0b100 != 0 {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(export_bytes).unwrap();
        encoder.finish().unwrap()
    } else {
        export_bytes.to_vec()
    };
    let input = match export::decompressing(std::io::Cursor::new(bytes)) {
        Ok(input) => input,
        Err(_) => return,
    };
    // Bit 3: through the read-ahead thread, as `open_file` reads.
    let input: Box<dyn BufRead + Send> = if options & 0b1000 != 0 {
        export::read_ahead(input)
    } else {
        input
    };
    let _ = export::read::<ExportError>("fuzz", input, &filter, |_, user| {
        check_minimal_line(&user, &filter);
        Ok(())
    });
});

fn check_minimal_line(user: &Auth0User<'_>, filter: &ExportFilter) {
    let minimal = export::minimal_line(user, &Field::ALL, filter);
    let again = match export::parse_line(&minimal, filter) {
        Ok(Interpreted::User(again)) => again,
        Ok(_) => panic!(
            "the minimal line is not a user: {}",
            String::from_utf8_lossy(&minimal)
        ),
        Err(error) => panic!(
            "the minimal line does not parse ({error}): {}",
            String::from_utf8_lossy(&minimal)
        ),
    };
    assert_eq!(again.auth0_id, user.auth0_id);
    assert_eq!(again.legacy_id, user.legacy_id);
    assert_eq!(again.created_at, user.created_at, "created_at");
    assert_eq!(again.migrated, user.migrated, "migrated");
    for field in Field::ALL {
        assert_eq!(again.profile.get(field), user.profile.get(field), "{field}");
    }
}
