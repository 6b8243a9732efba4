//! `netc data fetch`: downloads a data set's `.tar.gz` archive and unpacks it into the data
//! folder as `NAME/train/`, `NAME/val/`, `NAME/test/`.
//!
//! The archive is saved and unpacked inside a temporary folder under the data folder, and
//! the unpacked `NAME/` is renamed into place only when it is complete, so an interrupted
//! fetch leaves nothing that looks like a data set. Unpacking accepts only regular files
//! and folders whose paths stay inside the target: an absolute path or a `..` component
//! is an error, and links and device entries are skipped.
//!
//! The download is plain HTTP or HTTPS through ureq, and honours the usual proxy
//! variables (`HTTP_PROXY`, `NO_PROXY`). It cannot resume a partial download.

use indicatif::ProgressBar;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The facades archive that the pix2pix authors publish (the address in
/// `datasets/download_pix2pix_dataset.sh` of junyanz/pytorch-CycleGAN-and-pix2pix).
pub const FACADES_URL: &str = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz";

/// Seconds without progress after which connecting or reading fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FetchError {
    #[error("unknown data set `{name}`")]
    #[diagnostic(help("netc can fetch: {}; for another data set pass its .tar.gz address with --url", super::data::FETCHABLE.join(", ")))]
    Unknown { name: String },

    #[error("{} already exists but contains no train/ folder", dir.display())]
    #[diagnostic(help("remove or rename it, then fetch again"))]
    Occupied { dir: PathBuf },

    #[error("failed to download {url}: {reason}")]
    #[diagnostic(help("check the address and the network; pass another address with --url"))]
    Download { url: String, reason: String },

    #[error("invalid archive from {url}: {reason}")]
    #[diagnostic(help("the download is damaged or is not a .tar.gz; try again, or pass another address with --url"))]
    Archive { url: String, reason: String },

    #[error("unsafe path `{entry}` in the archive from {url}")]
    #[diagnostic(help("the archive tries to write outside its folder; it was not unpacked"))]
    UnsafePath { url: String, entry: String },

    #[error("the archive from {url} has no {name}/train/ folder, or it is empty")]
    #[diagnostic(help("pass the address of a pix2pix-style archive with --url"))]
    Layout { url: String, name: String },

    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result of a fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The data set was downloaded and unpacked into this folder.
    Unpacked { dir: PathBuf, files: usize, bytes: u64 },
    /// `root/NAME/train/` already existed, so nothing was downloaded.
    AlreadyPresent { dir: PathBuf },
}

/// Returns the published archive address of a data set that netc can fetch.
pub fn default_url(name: &str) -> Option<&'static str> {
    match name {
        "facades" => Some(FACADES_URL),
        _ => None,
    }
}

/// Downloads the archive of `name` (from `url`, else its published address) and unpacks it
/// into `root/NAME/`. `progress` shows the bytes downloaded.
pub fn fetch(
    name: &str,
    url: Option<&str>,
    root: &Path,
    progress: &ProgressBar,
) -> Result<Fetched, FetchError> {
    let url = match url.or_else(|| default_url(name)) {
        Some(url) => url.to_string(),
        None => return Err(FetchError::Unknown { name: name.to_string() }),
    };
    let dir = root.join(name);
    if dir.join("train").is_dir() {
        return Ok(Fetched::AlreadyPresent { dir });
    }
    if dir.exists() {
        return Err(FetchError::Occupied { dir });
    }

    std::fs::create_dir_all(root).map_err(|source| write_err(root, source))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".fetch-{name}-"))
        .tempdir_in(root)
        .map_err(|source| write_err(root, source))?;
    let archive = staging.path().join("archive.tar.gz");
    tracing::info!(%url, "downloading");
    let bytes = download(&url, &archive, progress)?;

    let unpacked = staging.path().join("unpacked");
    let files = unpack(&url, &archive, &unpacked)?;
    let found = find_data_set(&unpacked, name)
        .ok_or_else(|| FetchError::Layout { url: url.clone(), name: name.to_string() })?;
    std::fs::rename(&found, &dir).map_err(|source| write_err(&dir, source))?;
    tracing::info!(dir = %dir.display(), files, bytes, "unpacked data set");
    Ok(Fetched::Unpacked { dir, files, bytes })
}

/// Streams `url` into the file `to`, advancing `progress`, and returns the byte count.
fn download(url: &str, to: &Path, progress: &ProgressBar) -> Result<u64, FetchError> {
    let failed = |reason: String| FetchError::Download { url: url.to_string(), reason };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(STALL_TIMEOUT))
        .timeout_per_read(Some(STALL_TIMEOUT))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
    let length = response.body().content_length();
    if let Some(length) = length {
        progress.set_length(length);
    }

    let mut reader = response.into_body().into_reader();
    let mut file = File::create(to).map_err(|source| write_err(to, source))?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buffer).map_err(|e| failed(e.to_string()))?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n]).map_err(|source| write_err(to, source))?;
        total += n as u64;
        progress.set_position(total);
    }
    if let Some(length) = length.filter(|&l| l != total) {
        return Err(failed(format!("received {total} of {length} bytes")));
    }
    file.sync_all().map_err(|source| write_err(to, source))?;
    progress.finish();
    Ok(total)
}

/// Unpacks the gzipped tar `archive` into `into`, checking every path first. Returns the
/// number of files written.
fn unpack(url: &str, archive: &Path, into: &Path) -> Result<usize, FetchError> {
    let bad = |reason: String| FetchError::Archive { url: url.to_string(), reason };
    std::fs::create_dir_all(into).map_err(|source| write_err(into, source))?;
    let file = File::open(archive).map_err(|source| write_err(archive, source))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    tar.set_preserve_permissions(false);

    let mut files = 0;
    let mut skipped = 0;
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if !is_contained(&path) {
            let entry = path.display().to_string();
            return Err(FetchError::UnsafePath { url: url.to_string(), entry });
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            skipped += 1;
            continue;
        }
        let written = entry.unpack_in(into).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if !written {
            let entry = path.display().to_string();
            return Err(FetchError::UnsafePath { url: url.to_string(), entry });
        }
        files += usize::from(kind.is_file());
    }
    if skipped > 0 {
        tracing::warn!(skipped, "skipped archive entries that are neither files nor folders");
    }
    Ok(files)
}

/// Checks that `path` is relative and has no `..`, so joining it to a folder stays inside.
fn is_contained(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Finds the unpacked data set folder: `unpacked/NAME/`, or `unpacked/` itself when the
/// archive has `train/` at its top. Its `train/` folder must not be empty.
fn find_data_set(unpacked: &Path, name: &str) -> Option<PathBuf> {
    let has_train = |dir: &PathBuf| {
        std::fs::read_dir(dir.join("train")).is_ok_and(|mut entries| entries.next().is_some())
    };
    [unpacked.join(name), unpacked.to_path_buf()].into_iter().find(has_train)
}

fn write_err(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Write { path: path.to_path_buf(), source }
}
