//! The compiled-kernel cache: compute pipelines keyed by the SHA-256 of their WGSL and
//! the access mode of each binding, shared by every [`super::Program`] compiled on one
//! [`super::Gpu`].
//!
//! Codegen bakes every size and stride into the WGSL, so two kernels with the same text
//! do the same work, and a kernel whose layer an edit did not touch keeps its text. A
//! recompile after an edit therefore creates pipelines only for the kernels whose code
//! changed. The key includes the bindings' access modes because the bind group layout is
//! built from them.
//!
//! NOTE: the cache lives as long as the device, in memory, so it serves recompiles within
//! one process (a training run that recompiles, a test), and entries are never evicted.
//! Across processes the driver's own caches help: wgpu's pipeline cache file
//! ([`super::pipeline_cache`]) on Vulkan GPUs, and Mesa's shader cache on lavapipe.

use super::RuntimeError;
use crate::codegen::{Access, Kernel};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// A created pipeline and the bind group layout its bindings need.
#[derive(Clone, Debug)]
pub struct CachedPipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Counts of distinct shaders in one compile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Shaders compiled into a new pipeline.
    pub compiled: usize,
    /// Shaders whose pipeline an earlier compile on the same device created.
    pub reused: usize,
}

/// Pipelines by kernel key, for one device.
#[derive(Debug, Default)]
pub struct KernelCache {
    entries: Mutex<HashMap<[u8; 32], CachedPipeline>>,
}

/// Returns the cache key of a kernel: SHA-256 over its WGSL and binding access modes.
pub fn kernel_key(kernel: &Kernel) -> [u8; 32] {
    let mut hasher = Sha256::new();
    // Comments (the kernel's name, its sizes) do not change the pipeline.
    for line in kernel.wgsl.lines() {
        let code = line.split_once("//").map_or(line, |(code, _)| code);
        hasher.update(code.as_bytes());
        hasher.update(b"\n");
    }
    for binding in &kernel.bindings {
        let mode: &[u8] = match binding.access {
            Access::Read => b"r",
            Access::ReadWrite => b"w",
            Access::Uniform => b"u",
            Access::Texture => b"t",
        };
        hasher.update(mode);
    }
    hasher.finalize().into()
}

impl KernelCache {
    /// Returns the pipeline of `key`, creating it with `create` when the cache has none.
    /// The flag is true when the pipeline was already cached.
    pub fn get_or_create(
        &self,
        key: [u8; 32],
        create: impl FnOnce() -> Result<CachedPipeline, RuntimeError>,
    ) -> Result<(CachedPipeline, bool), RuntimeError> {
        if let Some(found) = self.lock().get(&key) {
            return Ok((found.clone(), true));
        }
        // NOTE: the lock is released while the pipeline is created, so two threads that
        // miss the same key both create it and the second insert wins. Both are valid.
        let created = create()?;
        self.lock().insert(key, created.clone());
        Ok((created, false))
    }

    /// Returns the number of cached pipelines.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every cached pipeline.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CachedPipeline>> {
        // NOTE: a panic while the lock is held cannot leave a half-written entry, because
        // each insert is one call, so a poisoned lock is safe to use.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
