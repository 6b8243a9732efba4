//! The parameter store: the device buffers of the declared parameters, shared by every
//! program compiled against it (inference, training), and their seeded initialization.

use super::{Gpu, RuntimeError};
use crate::codegen::optimizer::Arena;
use crate::ir::{Init, Module, ParamDecl, ParamId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Device buffers of a module's parameters, indexed by [`ParamId`]. A parameter lives in a
/// buffer of its own or in a slot of an arena, a packed buffer shared with others.
pub struct ParamStore {
    names: Vec<String>,
    lengths: Vec<usize>,
    /// Each parameter's buffer (an index into `buffers`) and the byte offset of its first
    /// element there.
    locations: Vec<(usize, u64)>,
    buffers: Vec<wgpu::Buffer>,
    /// The buffer index of each arena, in the order of the arena list.
    arenas: Vec<usize>,
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
    /// Allocates zero-filled buffers for every parameter of `module`, one each.
    pub fn zeros(gpu: &Gpu, module: &Module) -> Result<ParamStore, RuntimeError> {
        Self::packed(gpu, module, &[])
    }

    /// Allocates zero-filled buffers for every parameter of `module`: one per arena, with
    /// the parameters an arena lists in its slots, and one for each other parameter.
    pub fn packed(
        gpu: &Gpu,
        module: &Module,
        arenas: &[Arena],
    ) -> Result<ParamStore, RuntimeError> {
        let mut store = ParamStore {
            names: Vec::new(),
            lengths: Vec::new(),
            locations: Vec::new(),
            buffers: Vec::new(),
            arenas: Vec::new(),
        };
        let mut placed: Vec<Option<(usize, u64)>> = vec![None; module.params.len()];
        for arena in arenas {
            let index = store.allocate(gpu, &arena.label, arena.len)?;
            store.arenas.push(index);
            for (slot, param) in arena.params.iter().enumerate() {
                let Some(param) = *param else { continue };
                let length = module.params[param].shape.numel();
                if placed[param].is_some() || length > arena.lengths[slot] {
                    return Err(RuntimeError::ArenaSlot {
                        arena: arena.label.clone(),
                        name: module.params[param].name.clone(),
                    });
                }
                placed[param] = Some((index, arena.offsets[slot] as u64 * 4));
            }
        }
        for (id, decl) in module.params.iter().enumerate() {
            let len = decl.shape.numel();
            let location = match placed[id] {
                Some(location) => location,
                None => (store.allocate(gpu, &decl.name, len)?, 0),
            };
            store.names.push(decl.name.clone());
            store.lengths.push(len);
            store.locations.push(location);
        }
        Ok(store)
    }

    fn allocate(&mut self, gpu: &Gpu, label: &str, len: usize) -> Result<usize, RuntimeError> {
        let bytes = (len.max(1) * 4) as u64;
        check_size(gpu, label, bytes)?;
        self.buffers.push(gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }));
        Ok(self.buffers.len() - 1)
    }

    /// Allocates and fills every parameter from its initializer, drawn with `seed`.
    pub fn initialized(gpu: &Gpu, module: &Module, seed: u64) -> Result<ParamStore, RuntimeError> {
        Self::initialized_packed(gpu, module, &[], seed)
    }

    /// Allocates as [`ParamStore::packed`] does, then fills every parameter from its
    /// initializer, drawn with `seed`.
    pub fn initialized_packed(
        gpu: &Gpu,
        module: &Module,
        arenas: &[Arena],
        seed: u64,
    ) -> Result<ParamStore, RuntimeError> {
        let store = Self::packed(gpu, module, arenas)?;
        // New buffers are zero-filled, so zero-initialized tensors (optimizer moments,
        // offsets) need no upload. The others are drawn on one thread per core: each
        // parameter has its own random stream, so the values do not depend on the split.
        let drawn: Vec<ParamId> = (0..module.params.len())
            .filter(|&id| module.params[id].init != Init::Constant { value: 0.0 })
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, usize::from).max(1);
        let per_thread = drawn.len().div_ceil(threads).max(1);
        let values: Vec<Result<Vec<f32>, RuntimeError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = drawn
                .chunks(per_thread)
                .map(|ids| {
                    scope.spawn(move || {
                        ids.iter()
                            .map(|&id| initial_values(&module.params[id], seed))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("an initialization thread panicked"))
                .collect()
        });
        for (&id, values) in drawn.iter().zip(values) {
            store.upload(gpu, id, &values?)?;
        }
        Ok(store)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Returns the buffer that contains parameter `id`, which may be an arena.
    pub fn buffer(&self, id: ParamId) -> &wgpu::Buffer {
        &self.buffers[self.locations[id].0]
    }

    /// Returns the size of every buffer of the store together, in bytes.
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().map(wgpu::Buffer::size).sum()
    }

    /// Returns the byte offset of parameter `id` in [`ParamStore::buffer`].
    pub fn offset(&self, id: ParamId) -> u64 {
        self.locations[id].1
    }

    /// Returns the buffer of arena `index` of the arena list the store was allocated with.
    pub fn arena(&self, index: usize) -> &wgpu::Buffer {
        &self.buffers[self.arenas[index]]
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
            gpu.queue.write_buffer(self.buffer(id), self.offset(id), bytemuck::cast_slice(values));
        }
        Ok(())
    }

    /// Reads parameter `id` back from the device.
    pub fn download(&self, gpu: &Gpu, id: ParamId) -> Result<Vec<f32>, RuntimeError> {
        let region = (self.buffer(id), self.offset(id), self.lengths[id]);
        let mut values = super::program::read_buffers(gpu, &[region])?;
        Ok(values.remove(0))
    }

    /// Reads every parameter back with one submit, indexed by [`ParamId`].
    pub fn download_all(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let list: Vec<(&wgpu::Buffer, u64, usize)> = (0..self.len())
            .map(|id| (self.buffer(id), self.offset(id), self.lengths[id]))
            .collect();
        super::program::read_buffers(gpu, &list)
    }
}
