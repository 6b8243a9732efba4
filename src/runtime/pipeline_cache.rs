//! wgpu's pipeline cache, kept in a file per adapter so that a new process can skip the
//! driver's shader compilation for pipelines an earlier one created.
//!
//! Needs: an adapter with `Features::PIPELINE_CACHE` (wgpu implements it on Vulkan only).
//! Guarantees: the file is replaced atomically (a temporary file, then a rename), and a
//! file that is truncated or corrupt is ignored with a warning, never handed to the
//! driver. The file starts with [`MAGIC`] and the SHA-256 of the data that follows.
//!
//! NOTE: lavapipe (Mesa 22.3) accepts the cache but returns about 100 bytes of header,
//! because it keeps its compiled shaders in Mesa's own disk cache
//! (`~/.cache/mesa_shader_cache`). On it this file saves nothing, and Mesa's cache is
//! what makes a second run start fast.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The first bytes of a cache file, with the format version.
pub const MAGIC: &[u8; 8] = b"netcpc01";

/// The environment variable that sets the cache folder. An empty value turns the cache off.
pub const CACHE_DIR_VAR: &str = "NETC_CACHE_DIR";

/// The fix a cache warning suggests. Without the cache, netc compiles every pipeline again.
pub const CACHE_HELP: &str =
    "set NETC_CACHE_DIR to a writable folder, or to an empty value to turn the cache off";

/// A pipeline cache and the file it is loaded from and saved to.
pub struct DiskPipelineCache {
    cache: wgpu::PipelineCache,
    path: PathBuf,
}

impl DiskPipelineCache {
    /// Opens the cache file of the adapter `info` describes, when `device` has the
    /// `PIPELINE_CACHE` feature and a cache folder is known. A missing or invalid file
    /// gives an empty cache.
    pub fn open(device: &wgpu::Device, info: &wgpu::AdapterInfo) -> Option<Self> {
        if !device.features().contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let path = cache_dir()?.join(wgpu::util::pipeline_cache_key(info)?);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                let path = path.display();
                tracing::warn!(%path, %error, help = CACHE_HELP, "failed to read the pipeline cache");
                None
            }
        };
        let data = bytes.as_deref().and_then(|bytes| {
            let data = verified_data(bytes);
            if data.is_none() {
                tracing::warn!(path = %path.display(), "ignored an invalid pipeline cache file");
            }
            data
        });
        tracing::debug!(
            path = %path.display(),
            bytes = data.map_or(0, <[u8]>::len),
            "opened the pipeline cache"
        );
        // SAFETY: `data` is what `PipelineCache::get_data` returned in an earlier process,
        // as the digest written with it shows, for an adapter with the same cache key.
        // wgpu checks the driver's header and, with `fallback`, starts empty when the data
        // does not fit this device.
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("netc pipelines"),
                data,
                fallback: true,
            })
        };
        Some(DiskPipelineCache { cache, path })
    }

    pub fn cache(&self) -> &wgpu::PipelineCache {
        &self.cache
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the cache's current data to its file, through a temporary file in the same
    /// folder and a rename.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(data) = self.cache.get_data() else {
            return Ok(());
        };
        let folder = self.path.parent().unwrap_or(Path::new("."));
        if folder.exists() && !folder.is_dir() {
            let message = format!("{} is not a folder", folder.display());
            return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, message));
        }
        std::fs::create_dir_all(folder)?;
        let mut contents = Vec::with_capacity(MAGIC.len() + 32 + data.len());
        contents.extend_from_slice(MAGIC);
        contents.extend_from_slice(&Sha256::digest(&data));
        contents.extend_from_slice(&data);
        let mut temporary = tempfile::NamedTempFile::new_in(folder)?;
        std::io::Write::write_all(&mut temporary, &contents)?;
        temporary.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Returns the data of a cache file whose magic and digest are intact.
pub fn verified_data(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (digest, data) = rest.split_at_checked(32)?;
    (Sha256::digest(data).as_slice() == digest).then_some(data)
}

/// Returns the cache folder: `NETC_CACHE_DIR`, else `$XDG_CACHE_HOME/netc`, else
/// `$HOME/.cache/netc`. `None` when `NETC_CACHE_DIR` is empty or none of them is set.
fn cache_dir() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(value) = std::env::var_os(CACHE_DIR_VAR) {
        return (!value.is_empty()).then(|| PathBuf::from(value));
    }
    set("XDG_CACHE_HOME")
        .map(|dir| dir.join("netc"))
        .or_else(|| set("HOME").map(|home| home.join(".cache").join("netc")))
}
