//! Report files written atomically: under a temporary name beside the path, synced, then
//! renamed into place, created private (0600) since a report names users.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `path` through a temporary file in the same directory and a rename; the file is
/// created with `mode` (see [`crate::private_file`]).
pub fn write_atomically(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    prepare_atomically(path, mode, write)?.commit()
}

/// A file written and synced under a temporary name beside its path: [`PreparedFile::commit`]
/// renames it into place; dropped uncommitted, it is removed (a run that fails after writing
/// its report leaves no report).
#[derive(Debug)]
pub struct PreparedFile {
    temporary: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl PreparedFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn commit(mut self) -> io::Result<()> {
        std::fs::rename(&self.temporary, &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PreparedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `path`'s content under a temporary name, for [`PreparedFile::commit`]. The file is
/// created with `mode`, which the rename keeps.
pub fn prepare_atomically(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<PreparedFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let prepared = PreparedFile {
        temporary: dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        )),
        path: path.to_owned(),
        committed: false,
    };
    // A leftover of a crashed process with the same pid may have another mode: start afresh.
    match std::fs::remove_file(&prepared.temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let file = crate::private_file::create_new(&prepared.temporary, mode)?;
    let mut writer = io::BufWriter::with_capacity(1 << 20, file);
    write(&mut writer)?;
    let file = writer.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()?;
    Ok(prepared)
}
