//! Load-speed probe: how fast the adapter's shaders load values from a storage buffer
//! and from a texture, which decides whether kernels read their large operands from
//! textures (see [`crate::codegen::Tuning::texture_operands`]).
//!
//! Mesa 22.3's lavapipe loads storage values one lane at a time, and what that costs
//! depends on the CPU. On 2 cores of an AMD EPYC (Zen 2) storage `vec4` loads ran at
//! 1.1 GB/s and texel fetches at 9.7. On 2 cores of a Zen 4 EPYC they ran at 11.4 and 16.0
//! (`examples/load_bench.rs`). Texture operands cost a copy of each operand before its
//! kernel, so they pay only where storage loads are much slower.

use super::upload_operand;
use crate::codegen::gemm::TEXTURE_WIDTH;
use std::time::Instant;
use wgpu::util::DeviceExt;

/// How many times faster texture loads must be than storage loads for texture operands
/// to be used. On the Zen 2 machine above (8.8x) textures made the ngf=16, 128x128
/// pix2pix training step 2 times faster. On the Zen 4 one the probe measured 1.36x to
/// 1.74x over six runs, and the copies made that step 10 to 25% slower.
pub const TEXTURE_ADVANTAGE: f64 = 3.0;

/// Values per table: 64 KiB of `vec4`s, so the data stays in cache and the figure is the
/// cost of the load instructions.
const TABLE_VEC4S: u32 = 4096;
/// Workgroups of 64 invocations per dispatch, each invocation loading 16 `vec4`s.
const WORKGROUPS: u32 = 1024;

// The texture tables' shaders below address 4096 texels a row, as `upload_operand` lays
// them out.
const _: () = assert!(TEXTURE_WIDTH == 4096);
const LOADED_BYTES: f64 = WORKGROUPS as f64 * 64.0 * 16.0 * 16.0;

const SUM: &str = "
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    var s = vec4(0.0);
    for (var i = 0u; i < 16u; i++) {
        s += load((g.x * 16u + i) & 4095u);
    }
    out[g.x] = s.x + s.y + s.z + s.w;
}
";

/// A way of loading the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadKind {
    /// `array<f32>` in a storage buffer, four loads a `vec4`.
    StorageScalar,
    /// `array<vec4<f32>>` in a storage buffer.
    StorageVec4,
    /// `array<vec4<f32>, 4096>` in a uniform buffer.
    UniformVec4,
    /// `textureLoad` from an `Rgba32Float` texture.
    TextureRgba32,
    /// `textureLoad` from an `R32Float` texture, four fetches a `vec4`.
    TextureR32,
}

impl LoadKind {
    pub const ALL: [LoadKind; 5] = [
        LoadKind::StorageScalar,
        LoadKind::StorageVec4,
        LoadKind::UniformVec4,
        LoadKind::TextureRgba32,
        LoadKind::TextureR32,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            LoadKind::StorageScalar => "storage f32 (four loads a vec4)",
            LoadKind::StorageVec4 => "storage vec4",
            LoadKind::UniformVec4 => "uniform vec4",
            LoadKind::TextureRgba32 => "texture rgba32float",
            LoadKind::TextureR32 => "texture r32float (four fetches a vec4)",
        }
    }

    fn declaration(self) -> &'static str {
        match self {
            LoadKind::StorageScalar => {
                "@group(0) @binding(0) var<storage, read> table: array<f32>;
                 fn load(i: u32) -> vec4<f32> {
                     return vec4(table[4u * i], table[4u * i + 1u], table[4u * i + 2u],
                                 table[4u * i + 3u]);
                 }"
            }
            LoadKind::StorageVec4 => {
                "@group(0) @binding(0) var<storage, read> table: array<vec4<f32>>;
                 fn load(i: u32) -> vec4<f32> { return table[i]; }"
            }
            LoadKind::UniformVec4 => {
                "@group(0) @binding(0) var<uniform> table: array<vec4<f32>, 4096>;
                 fn load(i: u32) -> vec4<f32> { return table[i]; }"
            }
            LoadKind::TextureRgba32 => {
                "@group(0) @binding(0) var table: texture_2d<f32>;
                 fn load(i: u32) -> vec4<f32> {
                     return textureLoad(table, vec2(i & 4095u, i >> 12u), 0);
                 }"
            }
            LoadKind::TextureR32 => {
                "@group(0) @binding(0) var table: texture_2d<f32>;
                 fn texel(j: u32) -> f32 { return textureLoad(table, vec2(j & 4095u, j >> 12u), 0).x; }
                 fn load(i: u32) -> vec4<f32> {
                     return vec4(texel(4u * i), texel(4u * i + 1u), texel(4u * i + 2u),
                                 texel(4u * i + 3u));
                 }"
            }
        }
    }
}

/// Measured load speeds of an adapter, in GB/s of values loaded.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LoadRates {
    pub storage: f64,
    pub texture: f64,
    /// The median over back-to-back pairs of how many times faster the texture loads ran.
    pub texture_speedup: f64,
}

/// Dispatch pairs the probe times.
const PAIRS: usize = 7;

impl LoadRates {
    /// Measures storage `vec4` and `Rgba32Float` texture loads in back-to-back pairs, so
    /// that a busy spell of the machine slows both loads of a pair. The rates are the
    /// fastest dispatch of each, and the speedup is the median of the pairs' ratios.
    pub fn measure(device: &wgpu::Device, queue: &wgpu::Queue) -> LoadRates {
        let storage = Probe::new(device, queue, LoadKind::StorageVec4);
        let texture = Probe::new(device, queue, LoadKind::TextureRgba32);
        storage.dispatch(device, queue);
        texture.dispatch(device, queue);
        let pairs: Vec<(f64, f64)> = (0..PAIRS)
            .map(|_| (storage.dispatch(device, queue), texture.dispatch(device, queue)))
            .collect();
        let mut ratios: Vec<f64> = pairs.iter().map(|(s, t)| s / t).collect();
        ratios.sort_by(f64::total_cmp);
        let fastest = |times: &mut dyn Iterator<Item = f64>| times.fold(f64::INFINITY, f64::min);
        LoadRates {
            storage: LOADED_BYTES / fastest(&mut pairs.iter().map(|p| p.0)) / 1e9,
            texture: LOADED_BYTES / fastest(&mut pairs.iter().map(|p| p.1)) / 1e9,
            texture_speedup: ratios[PAIRS / 2],
        }
    }

    /// Returns whether texture loads are [`TEXTURE_ADVANTAGE`] times faster than storage
    /// loads.
    pub fn favour_textures(&self) -> bool {
        self.texture_speedup >= TEXTURE_ADVANTAGE
    }
}

/// Returns the GB/s of values that `kind` loads, the fastest of `samples` dispatches after
/// one untimed dispatch (lavapipe compiles a pipeline at its first dispatch).
pub fn load_rate(device: &wgpu::Device, queue: &wgpu::Queue, kind: LoadKind, samples: u32) -> f64 {
    let probe = Probe::new(device, queue, kind);
    probe.dispatch(device, queue);
    let fastest =
        (0..samples.max(1)).map(|_| probe.dispatch(device, queue)).fold(f64::INFINITY, f64::min);
    LOADED_BYTES / fastest / 1e9
}

/// One load kernel, ready to dispatch.
struct Probe {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    _table: Table,
}

impl Probe {
    fn new(device: &wgpu::Device, queue: &wgpu::Queue, kind: LoadKind) -> Self {
        let values: Vec<f32> = (0..4 * TABLE_VEC4S).map(|i| (i % 97) as f32 * 0.01).collect();
        let table = match kind {
            // Laid out as the kernels' texture operands, 4096 texels a row.
            LoadKind::TextureRgba32 => {
                Table::Texture(upload_operand(device, queue, &values, true, 0.0))
            }
            LoadKind::TextureR32 => {
                Table::Texture(upload_operand(device, queue, &values, false, 0.0))
            }
            _ => Table::Buffer(device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("load probe table"),
                contents: bytemuck::cast_slice(&values),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
            })),
        };
        let out = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("load probe output"),
            size: u64::from(WORKGROUPS) * 64 * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let source = format!(
            "{}\n@group(0) @binding(1) var<storage, read_write> out: array<f32>;\n{SUM}",
            kind.declaration()
        );
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kind.describe()),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kind.describe()),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let resource = match &table {
            Table::Buffer(buffer) => buffer.as_entire_binding(),
            Table::Texture(view) => wgpu::BindingResource::TextureView(view),
        };
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kind.describe()),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource },
                wgpu::BindGroupEntry { binding: 1, resource: out.as_entire_binding() },
            ],
        });
        Probe { pipeline, group, _table: table }
    }

    /// Runs the kernel once and returns the seconds it took, submit to completion.
    fn dispatch(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> f64 {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &self.group, &[]);
            pass.dispatch_workgroups(WORKGROUPS, 1, 1);
        }
        let start = Instant::now();
        queue.submit([encoder.finish()]);
        // A failed wait leaves the time too long, which only biases the choice.
        let _ = device.poll(wgpu::PollType::wait_indefinitely());
        start.elapsed().as_secs_f64()
    }
}

enum Table {
    Buffer(wgpu::Buffer),
    Texture(wgpu::TextureView),
}
