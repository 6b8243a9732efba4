//! Reports saves of one file, through the operating system's file events (the `notify`
//! crate: inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on Windows).
//!
//! The watch is on the file's folder, not on the file. Editors that save by writing a
//! temporary file and renaming it over the original replace the file's inode, and a
//! watch on the old inode would see nothing after the first save. Events for other files
//! in the folder are ignored, and so are reads of the file, including netc's own.
//!
//! NOTE: when the path is a symbolic link, the watch reports changes to the link, not
//! to the file it points to.

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long the folder must stay quiet after an event before a save counts as finished.
/// An editor's save is a burst of events (create, write, rename) within a few
/// milliseconds, and one check per burst is enough.
const SETTLE: Duration = Duration::from_millis(30);

/// The maximum delay a burst adds to the check, for a file that is written continuously.
const MAX_SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum WatchError {
    #[error("cannot watch {path}: {message}")]
    #[diagnostic(help("check that the folder exists and that you may read it"))]
    Start { path: PathBuf, message: String },
    #[error("the file watcher of {path} stopped: {message}")]
    Stopped { path: PathBuf, message: String },
}

/// A watch on one file that outlives renames and deletions of the file.
pub struct FileWatcher {
    /// Kept alive for as long as events are wanted; dropping it ends the watch.
    _watcher: notify::RecommendedWatcher,
    events: Receiver<notify::Result<notify::Event>>,
    path: PathBuf,
    folder: PathBuf,
    file_name: OsString,
}

impl FileWatcher {
    /// Starts watching `path`. The file need not exist yet, but its folder must, and the
    /// path must not be a folder itself.
    pub fn new(path: &Path) -> Result<FileWatcher, WatchError> {
        let start_error = |message: String| WatchError::Start { path: path.to_path_buf(), message };
        if path.is_dir() {
            return Err(start_error("it is a folder; pass the .net file to watch".into()));
        }
        let file_name = path
            .file_name()
            .ok_or_else(|| start_error("the path does not name a file".into()))?
            .to_os_string();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let folder = parent.canonicalize().map_err(|e| start_error(e.to_string()))?;

        let (sender, events) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // NOTE: the receiver is gone only after the FileWatcher was dropped.
            let _ = sender.send(event);
        })
        .map_err(|e| start_error(e.to_string()))?;
        watcher
            .watch(&folder, RecursiveMode::NonRecursive)
            .map_err(|e| start_error(e.to_string()))?;
        tracing::debug!(folder = %folder.display(), "watching folder");
        Ok(FileWatcher { _watcher: watcher, events, path: path.to_path_buf(), folder, file_name })
    }

    /// Returns the watched path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks until the file was created, written, replaced or removed and the burst of
    /// events that came with it has settled. Returns `false` when `timeout` passed first.
    pub fn wait_for_change(&self, timeout: Option<Duration>) -> Result<bool, WatchError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let event = match deadline {
                None => self.events.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => self.events.recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            match event {
                Ok(event) if self.is_change(&event) => break,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Ok(false),
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped("no more events")),
            }
        }
        self.settle()?;
        Ok(true)
    }

    /// Consumes events until none arrives for [`SETTLE`], or [`MAX_SETTLE`] has passed.
    fn settle(&self) -> Result<(), WatchError> {
        let until = Instant::now() + MAX_SETTLE;
        while Instant::now() < until {
            match self.events.recv_timeout(SETTLE) {
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped("no more events")),
            }
        }
        Ok(())
    }

    /// Returns whether `event` may have changed the watched file's content.
    fn is_change(&self, event: &notify::Result<notify::Event>) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                // NOTE: an overflowed event queue loses events, so the file may have
                // changed; the caller checks it again.
                tracing::warn!(%error, "file watcher reported an error");
                return true;
            }
        };
        let content = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        let ours = event.paths.is_empty() || event.paths.iter().any(|p| self.is_watched(p));
        content && ours
    }

    fn is_watched(&self, path: &Path) -> bool {
        path.file_name() == Some(self.file_name.as_os_str())
            && path.parent().is_some_and(|p| p == self.folder)
    }

    fn stopped(&self, message: &str) -> WatchError {
        WatchError::Stopped { path: self.path.clone(), message: message.to_string() }
    }
}
