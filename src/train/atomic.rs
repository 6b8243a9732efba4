//! Crash-safe file writes: a temporary file in the target's folder, synced, then renamed.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use tempfile::NamedTempFile;

/// Replaces `path` with `bytes` through a synced temporary file in the same folder and a
/// rename, so a reader sees either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = temp_file_in(parent)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    sync_dir(parent);
    Ok(())
}

/// Creates a temporary file in `dir` that becomes an ordinary output file once renamed.
///
/// A temporary file is created with mode 0600 by default. This one requests 0666, which
/// the process umask reduces as it does for `File::create` (to 0644 under the usual umask
/// 022), so outputs can be read by the other users that the umask allows.
pub fn temp_file_in(dir: &Path) -> std::io::Result<NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

/// Removes the temporary files and folders whose names start with `.tmp-` from `dir`, and
/// returns how many it removed. [`temp_file_in`] and the checkpoint writer leave them when
/// a process is killed mid-write. Only one run writes to a run folder, so at the start of
/// a run none of them is in use.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let path = entry.path();
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "failed to remove a temporary file")
            }
        }
    }
    removed
}

/// Flushes a folder's entries, so a rename inside it survives a power loss. A failure only
/// weakens that guarantee, so it is logged, not returned.
pub fn sync_dir(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), %error, "failed to sync folder");
    }
}
