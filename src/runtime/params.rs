//! The parameter store: one device buffer per declared parameter, shared by every
//! program compiled against it (inference, training), and their seeded initialization.

use super::{Gpu, RuntimeError};
use crate::ir::{Init, Module, ParamDecl, ParamId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Device buffers of a module's parameters, indexed by [`ParamId`].
pub struct ParamStore {
    names: Vec<String>,
    lengths: Vec<usize>,
    buffers: Vec<wgpu::Buffer>,
}

/// Draws a parameter's initial values. Each parameter has its own random stream, keyed
/// by the seed and its name, so adding a parameter leaves the others' values unchanged.
pub fn initial_values(decl: &ParamDecl, seed: u64) -> Result<Vec<f32>, RuntimeError> {
    let count = decl.shape.numel();
    let invalid = |message: String| RuntimeError::InvalidInit { param: decl.name.clone(), message };
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(decl.name.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(hasher.finalize().into());
    match decl.init {
        Init::Constant { value } => Ok(vec![value; count]),
        Init::Normal { mean, std } => {
            if !(std >= 0.0) || !std.is_finite() || !mean.is_finite() {
                return Err(invalid(format!(
                    "normal needs a finite mean and std >= 0, got {mean} and {std}"
                )));
            }
            let normal = rand_distr::Normal::new(mean, std)
                .map_err(|e| invalid(format!("normal(mean {mean}, std {std}): {e}")))?;
            Ok((0..count).map(|_| rng.sample(normal)).collect())
        }
        Init::Uniform { low, high } => {
            if !(low <= high) || !low.is_finite() || !high.is_finite() {
                return Err(invalid(format!(
                    "uniform needs finite low <= high, got {low} and {high}"
                )));
            }
            if low == high {
                return Ok(vec![low; count]);
            }
            Ok((0..count).map(|_| rng.random_range(low..high)).collect())
        }
    }
}

fn check_size(gpu: &Gpu, what: &str, bytes: u64) -> Result<(), RuntimeError> {
    if bytes > gpu.limits.max_buffer_size {
        return Err(RuntimeError::BufferTooLarge {
            what: what.to_string(),
            bytes,
            limit: gpu.limits.max_buffer_size,
        });
    }
    Ok(())
}

impl ParamStore {
    /// Allocates zero-filled buffers for every parameter of `module`.
    pub fn zeros(gpu: &Gpu, module: &Module) -> Result<ParamStore, RuntimeError> {
        let mut store = ParamStore { names: Vec::new(), lengths: Vec::new(), buffers: Vec::new() };
        for decl in &module.params {
            let len = decl.shape.numel();
            let bytes = (len.max(1) * 4) as u64;
            check_size(gpu, &decl.name, bytes)?;
            store.buffers.push(gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&decl.name),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }));
            store.names.push(decl.name.clone());
            store.lengths.push(len);
        }
        Ok(store)
    }

    /// Allocates and fills every parameter from its initializer, drawn with `seed`.
    pub fn initialized(gpu: &Gpu, module: &Module, seed: u64) -> Result<ParamStore, RuntimeError> {
        let store = Self::zeros(gpu, module)?;
        for (id, decl) in module.params.iter().enumerate() {
            store.upload(gpu, id, &initial_values(decl, seed)?)?;
        }
        Ok(store)
    }

    pub fn len(&self) -> usize {
        self.buffers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    pub fn buffer(&self, id: ParamId) -> &wgpu::Buffer {
        &self.buffers[id]
    }

    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id]
    }

    /// Number of `f32` values of parameter `id`.
    pub fn length(&self, id: ParamId) -> usize {
        self.lengths[id]
    }

    /// Writes `values` into parameter `id`; takes effect before the next submit.
    pub fn upload(&self, gpu: &Gpu, id: ParamId, values: &[f32]) -> Result<(), RuntimeError> {
        if values.len() != self.lengths[id] {
            return Err(RuntimeError::ParamLength {
                name: self.names[id].clone(),
                expected: self.lengths[id],
                got: values.len(),
            });
        }
        if !values.is_empty() {
            gpu.queue.write_buffer(&self.buffers[id], 0, bytemuck::cast_slice(values));
        }
        Ok(())
    }

    /// Reads parameter `id` back from the device.
    pub fn download(&self, gpu: &Gpu, id: ParamId) -> Result<Vec<f32>, RuntimeError> {
        let mut values =
            super::program::read_buffers(gpu, &[(&self.buffers[id], self.lengths[id])])?;
        Ok(values.remove(0))
    }

    /// Reads every parameter back with one submit, indexed by [`ParamId`].
    pub fn download_all(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let list: Vec<(&wgpu::Buffer, usize)> =
            self.buffers.iter().zip(&self.lengths).map(|(b, &l)| (b, l)).collect();
        super::program::read_buffers(gpu, &list)
    }
}
