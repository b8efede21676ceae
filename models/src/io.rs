//! Reading inputs and writing results safely, for every medpatch tool.
//!
//! Inputs are regular files read up to a limit: a FIFO would block the reader forever, a device
//! such as `/dev/zero` would fill memory, and a size recorded on disk can change while a file is
//! read. Results are written whole or not at all, and never through something that is not a
//! regular file (a symbolic link, a FIFO, a device), which the temporary-file-and-rename step
//! would silently replace.

use std::io::{Read, Write};
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// A FIFO, device, socket or folder where a file was expected.
    #[error("it is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("it is over the limit of {limit} bytes")]
    TooLarge { limit: u64 },
}

/// What a file type is, in words, when it is not a regular file.
fn irregular_kind(file_type: std::fs::FileType) -> Option<&'static str> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if file_type.is_char_device() {
            return Some("a character device");
        }
        if file_type.is_block_device() {
            return Some("a block device");
        }
        if file_type.is_socket() {
            return Some("a socket");
        }
    }
    if file_type.is_dir() {
        Some("a folder")
    } else if file_type.is_file() {
        None
    } else {
        Some("not a file")
    }
}

/// Is `path` (following symbolic links) a regular file? `Err` says what it is instead.
pub fn check_regular_file(path: &Path) -> Result<(), ReadError> {
    let metadata = std::fs::metadata(path)?;
    match irregular_kind(metadata.file_type()) {
        Some(kind) => Err(ReadError::NotRegular { kind }),
        None => Ok(()),
    }
}

/// The bytes of the regular file at `path` (symbolic links followed), at most `limit` of them.
///
/// The type is checked before opening (opening a FIFO for reading blocks until a writer comes),
/// the file is opened without blocking and checked again on the open handle (it may have been
/// swapped), and the read stops one byte past `limit` whatever the file's recorded size says.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    check_regular_file(path)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: a FIFO put in the file's place after the check opens at once instead of
        // waiting for a writer; it changes nothing for regular files.
        const O_NONBLOCK: i32 = 0o4000;
        options.custom_flags(O_NONBLOCK);
    }
    let file = options.open(path)?;
    let metadata = file.metadata()?;
    if let Some(kind) = irregular_kind(metadata.file_type()) {
        return Err(ReadError::NotRegular { kind });
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(bytes)
}

/// Largest data file read whole (CSV labels, JSON ground truth and predictions, `.npy` maps):
/// CheXpert's largest CSV and CheXlocalize's ground truth are a few hundred MB at most.
pub const MAX_DATA_FILE_BYTES: u64 = 1 << 30;

/// A regular file's text (UTF-8), read as [`read_regular_file`] reads, at most
/// [`MAX_DATA_FILE_BYTES`].
pub fn read_regular_text(path: &Path) -> Result<String, ReadError> {
    let bytes = read_regular_file(path, MAX_DATA_FILE_BYTES)?;
    String::from_utf8(bytes).map_err(|e| {
        ReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text ({e})")))
    })
}

/// Write to a temporary file beside `path`, then rename: readers never see half a file, and a
/// failure leaves nothing behind. An existing `path` must be a regular file: a symbolic link, a
/// FIFO, a device or a folder there is refused, not replaced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    check_output_path(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".medpatch-").suffix(".part").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // tempfile creates 0600 files; results are ordinary files (0644 before umask).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Can [`write_atomically`] write `path`? Nothing there, or a regular file it may replace; not a
/// symbolic link, FIFO, device or folder. Cheap: callers check before long work.
pub fn check_output_path(path: &Path) -> std::io::Result<()> {
    if let Ok(existing) = std::fs::symlink_metadata(path) {
        let kind = if existing.file_type().is_symlink() {
            Some("a symbolic link")
        } else {
            irregular_kind(existing.file_type())
        };
        if let Some(kind) = kind {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} is {kind}: medpatch writes results as new regular files and will not replace it; \
                     choose another output path",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing_dir = dir.path().join("no/such/dir/out.bin");
        assert!(write_atomically(&missing_dir, b"x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn links_fifos_devices_and_folders_are_neither_read_nor_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.bin");
        std::fs::write(&target, b"keep me").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write_atomically(&link, b"x").unwrap_err().to_string();
        assert!(err.contains("is a symbolic link") && err.contains("will not replace it"), "{err}");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        // Reading follows the link to the regular file.
        assert_eq!(read_regular_file(&link, 100).unwrap(), b"keep me");

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let err = read_regular_file(&fifo, 100).unwrap_err().to_string();
        assert_eq!(err, "it is a FIFO (named pipe), not a regular file");
        assert!(write_atomically(&fifo, b"x").unwrap_err().to_string().contains("is a FIFO"));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());

        let err = read_regular_file(Path::new("/dev/zero"), 100).unwrap_err().to_string();
        assert_eq!(err, "it is a character device, not a regular file");
        assert!(write_atomically(dir.path(), b"x").unwrap_err().to_string().contains("is a folder"));
        let err = read_regular_file(&target, 3).unwrap_err().to_string();
        assert_eq!(err, "it is over the limit of 3 bytes");
        assert_eq!(read_regular_file(&target, 7).unwrap(), b"keep me");
    }
}
