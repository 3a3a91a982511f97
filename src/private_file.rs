//! Files that hold personal data (emails, names, bans, hashes of them) or secrets are created
//! readable by their owner only, whatever the umask; one that others can already read is
//! reported with the `chmod` that fixes it.
//!
//! The state file and its rollback journal, and `--output` reports, are created 0600 (less if
//! the umask says so: `open(2)` applies it on top). The metrics textfile holds no personal data
//! and stays readable for node_exporter.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Owner read/write only.
pub const PRIVATE: u32 = 0o600;
/// Readable by everyone (the metrics textfile: no personal data).
pub const PUBLIC: u32 = 0o644;

/// Creates `path`, which must not exist yet, with `mode` (and the umask on top).
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Creates an empty private file at `path` unless something is there already, so that a
/// program that creates it with its own default mode (SQLite: 0644) finds it private.
pub fn create_if_missing(path: &Path) -> io::Result<()> {
    match create_new(path, PRIVATE) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// The permission bits of `path` when group or others may read or write it.
pub fn open_to_others(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

/// The warning for a state file that group or others can read, with the fix (given by
/// `Config::permission_warnings` to `check`, `reconcile` and the daemon).
pub fn state_file_warning(path: &Path, mode: u32) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let path = path.display();
    format!(
        "state file {path} is readable by group or others (mode {mode:04o}); it holds personal \
         data (hashes of profile values, the push journal's request bodies): chmod 600 {path} \
         {path}-journal"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_files_are_private_and_others_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        create_if_missing(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(open_to_others(&path), None);
        // An existing file is left as it is, and reported when others can read it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_if_missing(&path).unwrap();
        assert_eq!(open_to_others(&path), Some(0o644));
        assert!(
            create_new(&path, PRIVATE).is_err(),
            "create_new never reuses a file"
        );
    }
}
