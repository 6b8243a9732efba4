//! Crash-safe file writes: a temporary file in the target's folder, synced, then renamed.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` through a synced temporary file in the same folder and a
/// rename, so a reader sees either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new().prefix(".tmp-").tempfile_in(parent)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    sync_dir(parent);
    Ok(())
}

/// Flushes a folder's entries, so a rename inside it survives a power loss. A failure only
/// weakens that guarantee, so it is logged, not returned.
pub fn sync_dir(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), %error, "failed to sync folder");
    }
}
