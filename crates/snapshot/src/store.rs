//! The snapshot's copy in the state dir, written atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// File name of the snapshot inside the state dir.
pub const FILE_NAME: &str = "hosts-snapshot.bin";

/// Distinguishes temp files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Path of the snapshot file inside `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes the encoded snapshot to `dir` atomically: a temp file in the same dir is written,
/// fsynced and renamed over [`FILE_NAME`], then the dir is fsynced. Creates `dir` if missing.
/// Readers see the old file or the new one, never a mix; the temp file is removed on error.
pub fn save(dir: &Path, encoded: &[u8]) -> Result<(), Error> {
    save_file(dir, FILE_NAME, encoded)
}

/// [`save`] for any file name in `dir`.
pub(crate) fn save_file(dir: &Path, file_name: &str, encoded: &[u8]) -> Result<(), Error> {
    save_file_as(dir, file_name, encoded, &Attributes::default())
}

/// Mode and ownership given to a file before it is renamed into place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Permission bits (e.g. `0o644`), set exactly (not masked by the umask); `None` keeps
    /// the default of a new file.
    pub mode: Option<u32>,
    /// Owner uid; `None` keeps ours.
    pub owner: Option<u32>,
    /// Group gid; `None` keeps ours.
    pub group: Option<u32>,
}

/// [`save_file`] with the temp file's mode and owner set before the rename, so the file
/// never appears at its path with other permissions.
pub(crate) fn save_file_as(
    dir: &Path,
    file_name: &str,
    encoded: &[u8],
    attributes: &Attributes,
) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|source| Error::io(dir, source))?;
    let temp_path = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_synced(&temp_path, encoded, attributes).and_then(|()| {
        let final_path = dir.join(file_name);
        fs::rename(&temp_path, &final_path).map_err(|source| Error::io(&final_path, source))
    });
    if result.is_err() {
        // Best effort: the original error is what matters.
        let _ = fs::remove_file(&temp_path);
        return result;
    }
    sync_dir(dir)
}

fn write_synced(temp_path: &Path, encoded: &[u8], attributes: &Attributes) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp_path)
        .map_err(|source| Error::io(temp_path, source))?;
    set_attributes(&file, attributes).map_err(|source| Error::io(temp_path, source))?;
    file.write_all(encoded)
        .and_then(|()| file.sync_all())
        .map_err(|source| Error::io(temp_path, source))
}

#[cfg(unix)]
fn set_attributes(file: &File, attributes: &Attributes) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if attributes.owner.is_some() || attributes.group.is_some() {
        std::os::unix::fs::fchown(file, attributes.owner, attributes.group)?;
    }
    // After the chown, which may clear set-id bits.
    if let Some(mode) = attributes.mode {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_attributes(_file: &File, _attributes: &Attributes) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| Error::io(dir, source))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}

/// Reads the snapshot file from `dir`; `None` when there is none yet. The bytes are not
/// verified: pass them to [`crate::codec::decode`].
pub fn load(dir: &Path) -> Result<Option<Vec<u8>>, Error> {
    let file_path = path(dir);
    match fs::read(&file_path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::io(file_path, source)),
    }
}
