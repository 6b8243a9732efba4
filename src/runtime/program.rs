//! A compiled program: buffers, pipelines and bind groups for a list of kernels, created
//! once, and the run that records every dispatch into one compute pass and one submit.

use super::{kernel_key, CacheCounts, CachedPipeline, Gpu, ParamStore, RuntimeError};
use crate::codegen::gemm::TEXTURE_WIDTH;
use crate::codegen::wgsl::{RunValues, RUN_VALUES_BYTES};
use crate::codegen::{value_resource, Access, Kernel, Mode, Resource};
use crate::ir::{Graph, NodeId, Op};
use crate::passes::memory::{self, MemoryPlan};
use std::collections::{BTreeMap, HashMap, HashSet};
use wgpu::BufferUsages;

/// Device memory a program holds, in bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryReport {
    /// Intermediate values after buffer reuse: the planned peak.
    pub intermediate_bytes: u64,
    /// Intermediate values if each had a buffer of its own.
    pub unshared_bytes: u64,
    /// Inputs, outputs, constants and per-node scratch (batch statistics, partial sums).
    pub pinned_bytes: u64,
    /// Number of planned intermediate buffers.
    pub buffers: usize,
}

pub(super) struct CompiledKernel {
    pub(super) name: String,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    /// The copies that fill the kernel's texture operands, encoded before its pass.
    pub(super) copies: Vec<TextureCopy>,
}

impl CompiledKernel {
    /// Records the kernel's dispatch into `pass`.
    pub(super) fn dispatch(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// A copy of a bound buffer range into a texture operand, [`TEXTURE_WIDTH`] texels a row.
pub(super) struct TextureCopy {
    buffer: wgpu::Buffer,
    /// Byte offset of the first element in `buffer`.
    offset: u64,
    elements: u64,
    /// Values per texel: 4 for `Rgba32Float`, 1 for `R32Float`.
    lanes: u64,
    texture: wgpu::Texture,
    /// The pool texture's key: binding index and whether its texels are vec4. Copies at
    /// the start of a run, into textures of their own, have `usize::MAX` as the index.
    slot: (usize, bool),
}

impl TextureCopy {
    /// Encodes the whole rows with one copy and the last, partial row with another.
    pub(super) fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let width = u64::from(TEXTURE_WIDTH);
        let row_bytes = width * self.lanes * 4;
        let texels = self.elements / self.lanes;
        let (rows, rest) = (texels / width, texels % width);
        let copy = |encoder: &mut wgpu::CommandEncoder, offset, row, extent| {
            encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset,
                        bytes_per_row: Some(row_bytes as u32),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: &self.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y: row, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                extent,
            );
        };
        if rows > 0 {
            let extent = wgpu::Extent3d {
                width: TEXTURE_WIDTH,
                height: rows as u32,
                depth_or_array_layers: 1,
            };
            copy(encoder, self.offset, 0, extent);
        }
        if rest > 0 {
            let extent = wgpu::Extent3d { width: rest as u32, height: 1, depth_or_array_layers: 1 };
            copy(encoder, self.offset + rows * row_bytes, rows as u32, extent);
        }
    }
}

/// Drops each copy whose pool texture already contains the same range, unwritten since an
/// earlier kernel of the run copied it (batch-norm statistics and normalization read the
/// same input, for one). `writes` lists each kernel's written byte ranges. The first copy
/// into each texture in a run is always kept, because the host writes inputs and
/// parameters between runs.
fn skip_held_copies(kernels: &mut [CompiledKernel], writes: &[Vec<(wgpu::Buffer, u64, u64)>]) {
    let mut contents: HashMap<(usize, bool), (wgpu::Buffer, u64, u64)> = HashMap::new();
    for (kernel, written) in kernels.iter_mut().zip(writes) {
        kernel.copies.retain(|copy| {
            let range = (copy.buffer.clone(), copy.offset, copy.offset + copy.elements * 4);
            contents.get(&copy.slot) != Some(&range)
        });
        for copy in &kernel.copies {
            let range = (copy.buffer.clone(), copy.offset, copy.offset + copy.elements * 4);
            contents.insert(copy.slot, range);
        }
        contents.retain(|_, (buffer, start, end)| {
            !written.iter().any(|(b, s, e)| b == buffer && *s < *end && *start < *e)
        });
    }
}

/// Device memory that the texture operands copied once a run may take, beyond the pool:
/// at full-size pix2pix the weights fit, and the Adam update's inputs (about 580 MiB
/// more) keep using the pool.
const MAX_FRONT_TEXTURE_BYTES: u64 = 256 << 20;

/// Returns the size of a texture operand of `rows` rows.
fn texture_bytes(rows: u64, vec4: bool) -> u64 {
    rows * u64::from(TEXTURE_WIDTH) * if vec4 { 16 } else { 4 }
}

/// Creates an empty texture operand of `rows` rows of [`TEXTURE_WIDTH`] texels:
/// `Rgba32Float` with `vec4`, else `R32Float`.
pub fn operand_texture(device: &wgpu::Device, rows: u32, vec4: bool) -> wgpu::Texture {
    let format =
        if vec4 { wgpu::TextureFormat::Rgba32Float } else { wgpu::TextureFormat::R32Float };
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some("texture operand"),
        size: wgpu::Extent3d { width: TEXTURE_WIDTH, height: rows, depth_or_array_layers: 1 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    })
}

/// Uploads `values` as a texture operand laid out as the kernels read it: four values a
/// texel with `vec4`, one otherwise, the last row filled up with `padding`.
pub fn upload_operand(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    values: &[f32],
    vec4: bool,
    padding: f32,
) -> wgpu::TextureView {
    let lanes = if vec4 { 4 } else { 1 };
    let width = TEXTURE_WIDTH as usize;
    let rows = values.len().div_ceil(lanes * width).max(1);
    let mut data = values.to_vec();
    data.resize(rows * width * lanes, padding);
    let texture = operand_texture(device, rows as u32, vec4);
    queue.write_texture(
        texture.as_image_copy(),
        bytemuck::cast_slice(&data),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some((width * lanes * 4) as u32),
            rows_per_image: None,
        },
        texture.size(),
    );
    texture.create_view(&Default::default())
}

/// The textures that texture operands are copied into, one per binding index and texel
/// format, each as tall as the tallest operand that uses it. Kernels run one after the
/// other, so each one's copies can overwrite the previous kernel's operands.
struct TexturePool {
    textures: HashMap<(usize, bool), (wgpu::Texture, wgpu::TextureView)>,
    bytes: u64,
}

impl TexturePool {
    /// Creates the pool for the texture bindings of `kernels` that `front` does not list.
    fn new(gpu: &Gpu, kernels: &[Kernel], front: &HashSet<(usize, usize)>) -> Self {
        let mut rows: BTreeMap<(usize, bool), u64> = BTreeMap::new();
        for (k, kernel) in kernels.iter().enumerate() {
            for (index, binding) in kernel.bindings.iter().enumerate() {
                if binding.access == Access::Texture && !front.contains(&(k, index)) {
                    let tallest = rows.entry((index, binding.vec4)).or_default();
                    *tallest = (*tallest).max(binding.texture_rows().max(1));
                }
            }
        }
        let mut bytes = 0;
        let textures = rows
            .into_iter()
            .map(|((index, vec4), height)| {
                let texture = operand_texture(&gpu.device, height as u32, vec4);
                bytes += texture_bytes(height, vec4);
                let view = texture.create_view(&Default::default());
                ((index, vec4), (texture, view))
            })
            .collect();
        TexturePool { textures, bytes }
    }
}

struct Port {
    name: String,
    buffer: wgpu::Buffer,
    /// Byte offset of the first element in `buffer`.
    offset: u64,
    elements: usize,
}

/// Pipelines, bind groups and buffers for one list of kernels, ready to run many times.
pub struct Program {
    pub(super) kernels: Vec<CompiledKernel>,
    /// Copies into texture operands whose ranges no kernel writes before reading them,
    /// encoded once at the start of each run.
    pub(super) front_copies: Vec<TextureCopy>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    pub(super) run_values: wgpu::Buffer,
    memory: MemoryReport,
    shaders: CacheCounts,
}

fn storage_buffer(
    gpu: &Gpu,
    label: &str,
    bytes: u64,
    extra: BufferUsages,
) -> Result<wgpu::Buffer, RuntimeError> {
    let size = bytes.max(4).next_multiple_of(4);
    if size > gpu.limits.max_buffer_size {
        return Err(RuntimeError::BufferTooLarge {
            what: label.to_string(),
            bytes: size,
            limit: gpu.limits.max_buffer_size,
        });
    }
    Ok(gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        // Any buffer may be copied into a texture operand.
        usage: BufferUsages::STORAGE | BufferUsages::COPY_SRC | extra,
        mapped_at_creation: false,
    }))
}

/// The buffers behind every resource the kernels bind, except parameters.
struct Buffers {
    nodes: HashMap<NodeId, wgpu::Buffer>,
    planned: Vec<wgpu::Buffer>,
    plan: MemoryPlan,
    aux: BTreeMap<(NodeId, u32), wgpu::Buffer>,
    pinned_bytes: u64,
}

impl Buffers {
    /// Returns the buffer behind `resource` and the byte offset where the resource starts.
    fn get<'a>(
        &'a self,
        resource: Resource,
        params: &'a ParamStore,
        run: &'a wgpu::Buffer,
        shape: Option<&'a wgpu::Buffer>,
    ) -> (&'a wgpu::Buffer, u64) {
        match resource {
            Resource::Node(node) => {
                let buffer = self
                    .nodes
                    .get(&node)
                    .unwrap_or_else(|| &self.planned[self.plan.assignment[&node]]);
                (buffer, 0)
            }
            Resource::Param(id) => (params.buffer(id), params.offset(id)),
            Resource::Arena(index) => (params.arena(index as usize), 0),
            Resource::Aux { node, index } => (&self.aux[&(node, index)], 0),
            Resource::RunValues => (run, 0),
            Resource::Shape => (shape.expect("kernels with a shape binding have a shape block"), 0),
        }
    }
}

impl Program {
    /// Compiles `kernels` (lowered from `graph` in `mode`, plus any the caller appends)
    /// against `params`. `outputs` names the values a run may read back.
    pub fn compile(
        gpu: &Gpu,
        graph: &Graph,
        mode: Mode,
        kernels: &[Kernel],
        params: &ParamStore,
        outputs: &[(String, NodeId)],
    ) -> Result<Program, RuntimeError> {
        let _span = tracing::info_span!("compile_program", kernels = kernels.len()).entered();
        crate::codegen::dump::dump_kernels(&program_label(graph), kernels);
        let target = gpu.target();
        for kernel in kernels {
            target.check(kernel)?;
        }
        check_outputs_written(graph, mode, kernels, outputs)?;
        let buffers = Self::allocate(gpu, graph, mode, kernels, outputs)?;
        let run_values = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("run values"),
            size: RUN_VALUES_BYTES,
            usage: BufferUsages::UNIFORM | BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let keys: Vec<[u8; 32]> = kernels.iter().map(kernel_key).collect();
        let (pipelines, shaders) = create_pipelines(gpu, kernels, &keys)?;
        if let (Some(cache), true) = (&gpu.pipeline_cache, shaders.compiled > 0) {
            if let Err(error) = cache.save() {
                let path = cache.path().display();
                let help = super::pipeline_cache::CACHE_HELP;
                tracing::warn!(%path, %error, help, "failed to save the pipeline cache");
            }
        }
        // A texture operand whose range no kernel writes before it reads it is copied once,
        // at the start of the run, into a texture of its own. Every kernel that reads the
        // same range shares it. The weights are such ranges, because the forward and the
        // input-gradient convolutions read them and only the optimizer updates them, at the
        // end of the run. Long copies between dispatches also made steps slower (see
        // BENCHMARKS.md), and these run before the first dispatch.
        let range_of = |binding: &crate::codegen::Binding| {
            let (buffer, base) = buffers.get(binding.resource, params, &run_values, None);
            let offset = base + binding.offset * 4;
            (buffer.clone(), offset, offset + binding.elements * 4)
        };
        let mut front = HashSet::new();
        let mut hoisted = HashSet::new();
        let mut front_bytes = 0;
        let mut written: Vec<(wgpu::Buffer, u64, u64)> = Vec::new();
        for (k, kernel) in kernels.iter().enumerate() {
            for (index, binding) in kernel.bindings.iter().enumerate() {
                if binding.access == Access::Texture && binding.resource != Resource::Shape {
                    let (buffer, start, end) = range_of(binding);
                    let overlaps = |(b, s, e): &(wgpu::Buffer, u64, u64)| {
                        *b == buffer && *s < end && start < *e
                    };
                    let slot = (buffer.clone(), start, end, binding.vec4);
                    let bytes = texture_bytes(binding.texture_rows().max(1), binding.vec4);
                    if written.iter().any(overlaps) {
                        continue;
                    }
                    if hoisted.contains(&slot) || front_bytes + bytes <= MAX_FRONT_TEXTURE_BYTES {
                        if hoisted.insert(slot) {
                            front_bytes += bytes;
                        }
                        front.insert((k, index));
                    }
                }
            }
            for binding in kernel.bindings.iter().filter(|b| b.access == Access::ReadWrite) {
                if binding.resource != Resource::Shape {
                    written.push(range_of(binding));
                }
            }
        }
        let pool = TexturePool::new(gpu, kernels, &front);
        let mut front_textures: HashMap<(wgpu::Buffer, u64, u64, bool), wgpu::TextureView> =
            HashMap::new();
        let mut front_copies = Vec::new();
        let mut compiled = Vec::with_capacity(kernels.len());
        let mut writes = Vec::with_capacity(kernels.len());
        for (k, kernel) in kernels.iter().enumerate() {
            for (index, binding) in kernel.bindings.iter().enumerate() {
                if !front.contains(&(k, index)) {
                    continue;
                }
                let (buffer, offset, end) = range_of(binding);
                let slot = (buffer.clone(), offset, end, binding.vec4);
                if front_textures.contains_key(&slot) {
                    continue;
                }
                let rows = binding.texture_rows().max(1);
                let texture = operand_texture(&gpu.device, rows as u32, binding.vec4);
                front_textures.insert(slot, texture.create_view(&Default::default()));
                front_copies.push(TextureCopy {
                    buffer,
                    offset,
                    elements: binding.elements,
                    lanes: if binding.vec4 { 4 } else { 1 },
                    texture,
                    slot: (usize::MAX, binding.vec4),
                });
            }
        }
        for (k, (kernel, key)) in kernels.iter().zip(&keys).enumerate() {
            let CachedPipeline { pipeline, layout } = &pipelines[key];
            let shape = shape_buffer(gpu, kernel)?;
            let mut copies = Vec::new();
            let mut kernel_writes = Vec::new();
            let entries: Vec<wgpu::BindGroupEntry> = kernel
                .bindings
                .iter()
                .enumerate()
                .map(|(index, binding)| {
                    let (buffer, base) =
                        buffers.get(binding.resource, params, &run_values, shape.as_ref());
                    let offset = base + binding.offset * 4;
                    if binding.access == Access::ReadWrite {
                        kernel_writes.push((buffer.clone(), offset, offset + binding.bytes()));
                    }
                    if front.contains(&(k, index)) {
                        let (buffer, start, end) = range_of(binding);
                        let slot = (buffer, start, end, binding.vec4);
                        return wgpu::BindGroupEntry {
                            binding: index as u32,
                            resource: wgpu::BindingResource::TextureView(&front_textures[&slot]),
                        };
                    }
                    if binding.access == Access::Texture {
                        let (texture, view) = &pool.textures[&(index, binding.vec4)];
                        copies.push(TextureCopy {
                            buffer: buffer.clone(),
                            offset,
                            elements: binding.elements,
                            lanes: if binding.vec4 { 4 } else { 1 },
                            texture: texture.clone(),
                            slot: (index, binding.vec4),
                        });
                        return wgpu::BindGroupEntry {
                            binding: index as u32,
                            resource: wgpu::BindingResource::TextureView(view),
                        };
                    }
                    wgpu::BindGroupEntry {
                        binding: index as u32,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer,
                            offset,
                            size: wgpu::BufferSize::new(binding.bytes()),
                        }),
                    }
                })
                .collect();
            let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&kernel.name),
                layout,
                entries: &entries,
            });
            compiled.push(CompiledKernel {
                name: kernel.name.clone(),
                pipeline: pipeline.clone(),
                bind_group,
                workgroups: kernel.grid.workgroups,
                copies,
            });
            writes.push(kernel_writes);
        }
        skip_held_copies(&mut compiled, &writes);

        let inputs = graph
            .input_nodes()
            .into_iter()
            .map(|(node, name)| Port {
                name,
                buffer: buffers.nodes[&node].clone(),
                offset: 0,
                elements: graph.shape(node).numel(),
            })
            .collect();
        let outputs = outputs
            .iter()
            .map(|(name, node)| {
                let (buffer, offset) =
                    buffers.get(value_resource(graph, *node, mode), params, &run_values, None);
                Port {
                    name: name.clone(),
                    buffer: buffer.clone(),
                    offset,
                    elements: graph.shape(*node).numel(),
                }
            })
            .collect();
        let memory = MemoryReport {
            intermediate_bytes: buffers.plan.peak_bytes,
            unshared_bytes: buffers.plan.unshared_bytes,
            pinned_bytes: buffers.pinned_bytes + pool.bytes + front_bytes,
            buffers: buffers.plan.buffers.len(),
        };
        tracing::info!(
            kernels = compiled.len(),
            shaders_compiled = shaders.compiled,
            shaders_reused = shaders.reused,
            texture_copies = compiled.iter().map(|k| k.copies.len()).sum::<usize>(),
            front_texture_copies = front_copies.len(),
            intermediate_bytes = memory.intermediate_bytes,
            unshared_bytes = memory.unshared_bytes,
            "compiled program"
        );
        Ok(Program {
            kernels: compiled,
            front_copies,
            inputs,
            outputs,
            run_values,
            memory,
            shaders,
        })
    }

    /// Creates the pinned buffers (inputs, constants, outputs, aux) and the planned ones.
    fn allocate(
        gpu: &Gpu,
        graph: &Graph,
        mode: Mode,
        kernels: &[Kernel],
        outputs: &[(String, NodeId)],
    ) -> Result<Buffers, RuntimeError> {
        let bytes_of = |node: NodeId| (graph.shape(node).numel().max(1) * 4) as u64;
        let mut nodes = HashMap::new();
        let mut pinned_bytes = 0;
        for (node, name) in graph.input_nodes() {
            // Inputs can be read back too, when a requested output aliases one.
            let usage = BufferUsages::COPY_DST | BufferUsages::COPY_SRC;
            let buffer = storage_buffer(gpu, &name, bytes_of(node), usage)?;
            pinned_bytes += buffer.size();
            nodes.insert(node, buffer);
        }
        for node in graph.inner.node_indices() {
            if let Op::Constant { value } = graph.node(node).op {
                let buffer =
                    storage_buffer(gpu, &graph.node(node).name, 4, BufferUsages::COPY_DST)?;
                gpu.queue.write_buffer(&buffer, 0, bytemuck::bytes_of(&value));
                pinned_bytes += 4;
                nodes.insert(node, buffer);
            }
        }
        for (name, node) in outputs {
            if let Resource::Node(root) = value_resource(graph, *node, mode) {
                if !nodes.contains_key(&root) {
                    let buffer = storage_buffer(gpu, name, bytes_of(root), BufferUsages::COPY_SRC)?;
                    pinned_bytes += buffer.size();
                    nodes.insert(root, buffer);
                }
            }
        }

        let mut aux_sizes: BTreeMap<(NodeId, u32), u64> = BTreeMap::new();
        for binding in kernels.iter().flat_map(|k| &k.bindings) {
            if let Resource::Aux { node, index } = binding.resource {
                let size = aux_sizes.entry((node, index)).or_default();
                *size = (*size).max(binding.bytes());
            }
        }
        let mut aux = BTreeMap::new();
        for (&(node, index), &bytes) in &aux_sizes {
            let label = format!("{}.aux{index}", graph.node(node).name);
            aux.insert((node, index), storage_buffer(gpu, &label, bytes, BufferUsages::COPY_SRC)?);
            pinned_bytes += bytes;
        }

        let pinned: HashSet<NodeId> = nodes.keys().copied().collect();
        let plan = memory::plan(kernels, &pinned, bytes_of);
        let planned = plan
            .buffers
            .iter()
            .enumerate()
            .map(|(i, &bytes)| {
                storage_buffer(gpu, &format!("intermediate{i}"), bytes, BufferUsages::COPY_SRC)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Buffers { nodes, planned, plan, aux, pinned_bytes })
    }

    pub fn memory(&self) -> &MemoryReport {
        &self.memory
    }

    /// Returns how many distinct shaders this compile created and how many it took from
    /// the device's kernel cache.
    pub fn shader_counts(&self) -> CacheCounts {
        self.shaders
    }

    /// Returns the kernel names in dispatch order.
    pub fn kernel_names(&self) -> impl Iterator<Item = &str> {
        self.kernels.iter().map(|k| k.name.as_str())
    }

    pub fn dispatch_count(&self) -> usize {
        self.kernels.len()
    }

    /// Returns the name and element count of each graph input.
    pub fn inputs(&self) -> impl Iterator<Item = (&str, usize)> {
        self.inputs.iter().map(|p| (p.name.as_str(), p.elements))
    }

    /// Writes the values of input `name`; takes effect at the next run.
    pub fn write_input(&self, gpu: &Gpu, name: &str, values: &[f32]) -> Result<(), RuntimeError> {
        let Some(port) = self.inputs.iter().find(|p| p.name == name) else {
            let available: Vec<&str> = self.inputs.iter().map(|p| p.name.as_str()).collect();
            return Err(RuntimeError::UnknownInput {
                name: name.to_string(),
                available: available.join(", "),
            });
        };
        if values.len() != port.elements {
            return Err(RuntimeError::InputLength {
                name: name.to_string(),
                expected: port.elements,
                got: values.len(),
            });
        }
        gpu.queue.write_buffer(&port.buffer, 0, bytemuck::cast_slice(values));
        Ok(())
    }

    /// Runs every kernel once, in one compute pass and one submit, and returns the values
    /// of the outputs named in `read`, in that order.
    pub fn run(
        &self,
        gpu: &Gpu,
        values: &RunValues,
        read: &[&str],
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let ports = read
            .iter()
            .map(|name| {
                self.outputs.iter().find(|p| p.name == *name).ok_or_else(|| {
                    let available: Vec<&str> =
                        self.outputs.iter().map(|p| p.name.as_str()).collect();
                    RuntimeError::UnknownOutput {
                        name: name.to_string(),
                        available: available.join(", "),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        gpu.queue.write_buffer(&self.run_values, 0, bytemuck::bytes_of(values));

        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        for copy in &self.front_copies {
            copy.encode(&mut encoder);
        }
        // A kernel with texture copies starts a new pass after them. One whose textures
        // already contain its operands runs in the current pass.
        let mut start = 0;
        while start < self.kernels.len() {
            for copy in &self.kernels[start].copies {
                copy.encode(&mut encoder);
            }
            let end = self.kernels[start + 1..]
                .iter()
                .position(|k| !k.copies.is_empty())
                .map_or(self.kernels.len(), |p| start + 1 + p);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("run"),
                timestamp_writes: None,
            });
            for kernel in &self.kernels[start..end] {
                kernel.dispatch(&mut pass);
            }
            drop(pass);
            start = end;
        }
        let list: Vec<(&wgpu::Buffer, u64, usize)> =
            ports.iter().map(|p| (&p.buffer, p.offset, p.elements)).collect();
        read_with(gpu, encoder, &list)
    }
}

/// Rejects a requested output that no kernel writes, such as an activation that the
/// fusion pass folded into its consumers' loads.
fn check_outputs_written(
    graph: &Graph,
    mode: Mode,
    kernels: &[Kernel],
    outputs: &[(String, NodeId)],
) -> Result<(), RuntimeError> {
    let written: HashSet<Resource> = kernels
        .iter()
        .flat_map(|k| &k.bindings)
        .filter(|b| b.access == Access::ReadWrite)
        .map(|b| b.resource)
        .collect();
    for (name, node) in outputs {
        let resource = value_resource(graph, *node, mode);
        let Resource::Node(root) = resource else { continue };
        let leaf = matches!(graph.node(root).op, Op::Input { .. } | Op::Constant { .. });
        if !leaf && !written.contains(&resource) {
            return Err(RuntimeError::OutputNotComputed {
                name: name.clone(),
                node: graph.node(root).name.clone(),
            });
        }
    }
    Ok(())
}

/// Names a program after the network its nodes come from, for the shader dump.
fn program_label(graph: &Graph) -> String {
    graph
        .inner
        .node_weights()
        .find_map(|n| n.name.split_once('.').map(|(net, _)| net.to_string()))
        .unwrap_or_else(|| "program".to_string())
}

/// Creates the uniform block of `kernel`'s sizes, if it binds one.
fn shape_buffer(gpu: &Gpu, kernel: &Kernel) -> Result<Option<wgpu::Buffer>, RuntimeError> {
    let Some(binding) = kernel.bindings.iter().find(|b| b.resource == Resource::Shape) else {
        return Ok(None);
    };
    if kernel.shape.is_empty() || binding.elements as usize != kernel.shape.len() {
        return Err(RuntimeError::Pipeline {
            kernel: kernel.name.clone(),
            message: format!(
                "the shape binding has {} values, but the kernel's shape block has {}",
                binding.elements,
                kernel.shape.len()
            ),
        });
    }
    let mut contents = kernel.shape.clone();
    contents.resize(binding.bytes() as usize / 4, 0);
    let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(&kernel.name),
        size: binding.bytes(),
        usage: BufferUsages::UNIFORM | BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue.write_buffer(&buffer, 0, bytemuck::cast_slice(&contents));
    Ok(Some(buffer))
}

/// Creates the pipeline of every distinct kernel of `kernels`, whose cache keys are `keys`,
/// or takes it from the device's kernel cache, and counts both. Pipelines are created on
/// one thread per CPU core, because a CPU adapter such as lavapipe compiles each one on
/// the calling thread.
fn create_pipelines(
    gpu: &Gpu,
    kernels: &[Kernel],
    keys: &[[u8; 32]],
) -> Result<(HashMap<[u8; 32], CachedPipeline>, CacheCounts), RuntimeError> {
    let mut distinct: Vec<([u8; 32], &Kernel)> = Vec::new();
    let mut seen = HashSet::new();
    for (kernel, &key) in kernels.iter().zip(keys) {
        if seen.insert(key) {
            distinct.push((key, kernel));
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(distinct.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut created = Vec::new();
        loop {
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(key, kernel)) = distinct.get(index) else { break };
            let result = gpu.kernels.get_or_create(key, || create_pipeline(gpu, kernel));
            let failed = result.is_err();
            created.push(result.map(|(pipeline, reused)| (key, pipeline, reused)));
            if failed {
                // Later kernels are left to the other threads, which stop at the end of
                // the list; the first error is reported.
                break;
            }
        }
        created
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| scope.spawn(work)).collect();
        handles.into_iter().flat_map(|h| h.join().expect("a pipeline thread panicked")).collect()
    });

    let mut pipelines = HashMap::with_capacity(distinct.len());
    let mut counts = CacheCounts::default();
    for result in results {
        let (key, pipeline, reused) = result?;
        if reused {
            counts.reused += 1;
        } else {
            counts.compiled += 1;
        }
        pipelines.insert(key, pipeline);
    }
    Ok((pipelines, counts))
}

/// Creates the pipeline and bind group layout of one kernel, turning wgpu validation
/// errors into a [`RuntimeError::Pipeline`] that names the kernel.
fn create_pipeline(gpu: &Gpu, kernel: &Kernel) -> Result<CachedPipeline, RuntimeError> {
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&kernel.name),
        source: wgpu::ShaderSource::Wgsl(kernel.wgsl.as_str().into()),
    });
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings
        .iter()
        .enumerate()
        .map(|(index, binding)| wgpu::BindGroupLayoutEntry {
            binding: index as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match binding.access {
                Access::Texture => wgpu::BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Float { filterable: false },
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
                access => wgpu::BindingType::Buffer {
                    ty: match access {
                        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                        Access::Uniform => wgpu::BufferBindingType::Uniform,
                        _ => wgpu::BufferBindingType::Storage { read_only: true },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
            },
            count: None,
        })
        .collect();
    let layout = gpu.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&kernel.name),
        entries: &entries,
    });
    let pipeline_layout = gpu.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&kernel.name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&kernel.name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: gpu.pipeline_cache.as_ref().map(|c| c.cache()),
    });
    if let Some(error) = pollster::block_on(scope.pop()) {
        return Err(RuntimeError::Pipeline {
            kernel: kernel.name.clone(),
            message: error.to_string(),
        });
    }
    Ok(CachedPipeline { pipeline, layout })
}

/// Copies each `(buffer, byte offset, elements)` to a staging buffer and reads it back, in
/// one submit.
pub(super) fn read_buffers(
    gpu: &Gpu,
    list: &[(&wgpu::Buffer, u64, usize)],
) -> Result<Vec<Vec<f32>>, RuntimeError> {
    let encoder =
        gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read") });
    read_with(gpu, encoder, list)
}

/// Appends staging copies of `list` to `encoder`, submits it and maps the copies.
pub(super) fn read_with(
    gpu: &Gpu,
    mut encoder: wgpu::CommandEncoder,
    list: &[(&wgpu::Buffer, u64, usize)],
) -> Result<Vec<Vec<f32>>, RuntimeError> {
    let staging: Vec<wgpu::Buffer> = list
        .iter()
        .map(|&(buffer, offset, elements)| {
            let bytes = (elements.max(1) * 4) as u64;
            let copy = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes,
                usage: BufferUsages::MAP_READ | BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            encoder.copy_buffer_to_buffer(buffer, offset, &copy, 0, bytes);
            copy
        })
        .collect();
    gpu.queue.submit([encoder.finish()]);

    let (sender, receiver) = std::sync::mpsc::channel();
    for (index, copy) in staging.iter().enumerate() {
        let sender = sender.clone();
        copy.map_async(wgpu::MapMode::Read, .., move |result| {
            let _ = sender.send((index, result));
        });
    }
    drop(sender);
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| RuntimeError::Readback { message: e.to_string() })?;
    gpu.take_device_error()?;
    for (_, result) in receiver.iter() {
        result.map_err(|e| RuntimeError::Readback { message: e.to_string() })?;
    }
    let mut values = Vec::with_capacity(list.len());
    for (copy, &(_, _, elements)) in staging.iter().zip(list) {
        let view = copy
            .get_mapped_range(..)
            .map_err(|e| RuntimeError::Readback { message: e.to_string() })?;
        let floats: &[f32] = bytemuck::cast_slice(&view);
        values.push(floats[..elements].to_vec());
        drop(view);
        copy.unmap();
    }
    Ok(values)
}
