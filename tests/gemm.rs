//! The implicit-GEMM convolution kernels on the real adapter (lavapipe here) against plain
//! f64 loops, and every generated shader through naga's validator.

use netc::codegen::gemm::{self, ConvGeometry, ConvOp, DeviceProfile, GemmKernel, Operand, Tiling};
use netc::runtime::upload_operand;
use std::sync::OnceLock;
use wgpu::util::DeviceExt;

/// The four ops computed directly from their definitions, one output element at a time,
/// with f64 accumulation. Independent of the GEMM formulation on purpose.
mod reference {
    use super::*;

    pub struct Tensors<'a> {
        pub x: &'a [f32],
        pub w: &'a [f32],
        pub dy: &'a [f32],
    }

    /// Returns the input pixel that output pixel `o` reads at tap `k` along one axis, if any.
    fn conv_source(o: usize, k: usize, s: usize, p: usize, size: usize) -> Option<usize> {
        let i = (o * s + k).checked_sub(p)?;
        (i < size).then_some(i)
    }

    /// Returns the input pixel of conv_transpose2d that reaches output pixel `o` at tap `k`.
    fn transpose_source(o: usize, k: usize, s: usize, p: usize, size: usize) -> Option<usize> {
        let shifted = (o + p).checked_sub(k)?;
        (shifted % s == 0 && shifted / s < size).then_some(shifted / s)
    }

    /// Counts the output elements of `op`.
    pub fn output_len(op: ConvOp, g: &ConvGeometry) -> usize {
        match op {
            ConvOp::Conv2d | ConvOp::ConvTranspose2d => {
                g.batch * g.out_channels * g.out_size[0] * g.out_size[1]
            }
            _ => g.in_channels * g.out_channels * g.kernel[0] * g.kernel[1],
        }
    }

    /// Output element `index` of `op`, in the layout the kernel writes.
    pub fn element(op: ConvOp, g: &ConvGeometry, t: &Tensors, index: usize) -> f64 {
        let ([h, w], [oh, ow], [kh, kw]) = (g.in_size, g.out_size, g.kernel);
        let ([sy, sx], [py, px]) = (g.stride, g.padding);
        let (ci_n, co_n) = (g.in_channels, g.out_channels);
        let x_at = |b: usize, c: usize, y: usize, xx: usize| t.x[((b * ci_n + c) * h + y) * w + xx];
        let dy_at =
            |b: usize, c: usize, y: usize, xx: usize| t.dy[((b * co_n + c) * oh + y) * ow + xx];
        let mut sum = 0.0f64;
        match op {
            ConvOp::Conv2d | ConvOp::ConvTranspose2d => {
                let (b, co, oy, ox) = (
                    index / (co_n * oh * ow),
                    index / (oh * ow) % co_n,
                    index / ow % oh,
                    index % ow,
                );
                for ci in 0..ci_n {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (sources, weight) = if op == ConvOp::Conv2d {
                                let src = conv_source(oy, ky, sy, py, h)
                                    .zip(conv_source(ox, kx, sx, px, w));
                                (src, t.w[((co * ci_n + ci) * kh + ky) * kw + kx])
                            } else {
                                let src = transpose_source(oy, ky, sy, py, h)
                                    .zip(transpose_source(ox, kx, sx, px, w));
                                (src, t.w[((ci * co_n + co) * kh + ky) * kw + kx])
                            };
                            if let Some((iy, ix)) = sources {
                                sum += f64::from(x_at(b, ci, iy, ix)) * f64::from(weight);
                            }
                        }
                    }
                }
            }
            ConvOp::Conv2dWeightGrad => {
                let (co, ci, ky, kx) = (
                    index / (ci_n * kh * kw),
                    index / (kh * kw) % ci_n,
                    index / kw % kh,
                    index % kw,
                );
                for b in 0..g.batch {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let src =
                                conv_source(oy, ky, sy, py, h).zip(conv_source(ox, kx, sx, px, w));
                            if let Some((iy, ix)) = src {
                                sum += f64::from(dy_at(b, co, oy, ox))
                                    * f64::from(x_at(b, ci, iy, ix));
                            }
                        }
                    }
                }
            }
            ConvOp::ConvTranspose2dWeightGrad => {
                let (ci, co, ky, kx) = (
                    index / (co_n * kh * kw),
                    index / (kh * kw) % co_n,
                    index / kw % kh,
                    index % kw,
                );
                for b in 0..g.batch {
                    for iy in 0..h {
                        for ix in 0..w {
                            // Input pixel (iy, ix) reaches output (iy * s - p + ky, ...).
                            let oy = (iy * sy + ky).checked_sub(py).filter(|&o| o < oh);
                            let ox = (ix * sx + kx).checked_sub(px).filter(|&o| o < ow);
                            if let Some((oy, ox)) = oy.zip(ox) {
                                sum += f64::from(x_at(b, ci, iy, ix))
                                    * f64::from(dy_at(b, co, oy, ox));
                            }
                        }
                    }
                }
            }
        }
        sum
    }
}

/// `maxComputeWorkgroupsPerDimension` on every adapter wgpu supports.
const MAX_GRID: u32 = 65_535;

/// Deterministic values in [-1, 1) from an xorshift generator.
fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    profile: DeviceProfile,
}

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter =
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
                .expect("no adapter; install mesa-vulkan-drivers for lavapipe");
        let features = adapter.features() & wgpu::Features::SUBGROUP;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("gemm tests"),
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .expect("request_device failed");
        let profile = DeviceProfile::of(&adapter, features);
        Gpu { device, queue, profile }
    })
}

/// Parses and validates `wgsl` with naga, with subgroup operations allowed.
fn validate(kernel: &GemmKernel) {
    let module = naga::front::wgsl::parse_str(&kernel.wgsl).unwrap_or_else(|e| {
        panic!("{} does not parse: {}", kernel.label, e.emit_to_string(&kernel.wgsl))
    });
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::SUBGROUP,
    );
    validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
    validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    if let Err(e) = validator.validate(&module) {
        panic!("{} is invalid: {}", kernel.label, e.emit_to_string(&kernel.wgsl));
    }
}

/// The tensors of one test case and the inputs each binding reads.
struct Case {
    op: ConvOp,
    geometry: ConvGeometry,
    x: Vec<f32>,
    w: Vec<f32>,
    dy: Vec<f32>,
    bias: Vec<f32>,
    /// The per-dimension grid limit the kernel is folded to.
    max_grid: u32,
}

impl Case {
    fn new(op: ConvOp, geometry: ConvGeometry, seed: u64) -> Self {
        let g = &geometry;
        let image = |c: usize, s: [usize; 2]| g.batch * c * s[0] * s[1];
        let weight = g.in_channels * g.out_channels * g.kernel[0] * g.kernel[1];
        Case {
            op,
            geometry,
            x: random(image(g.in_channels, g.in_size), seed),
            w: random(weight, seed + 1),
            dy: random(image(g.out_channels, g.out_size), seed + 2),
            bias: random(g.out_channels, seed + 3),
            max_grid: MAX_GRID,
        }
    }

    fn binding(&self, role: Operand) -> &[f32] {
        match role {
            Operand::Input => &self.x,
            Operand::Weight => &self.w,
            Operand::OutputGrad => &self.dy,
            Operand::Bias => &self.bias,
            Operand::Output | Operand::Mask | Operand::Addend | Operand::Shape => {
                unreachable!("{role:?} is not an input of an unfused kernel")
            }
        }
    }

    /// Runs the kernel of this case with `tiling` and returns its output.
    fn run(&self, tiling: &Tiling, with_bias: bool) -> Vec<f32> {
        let kernel = gemm::generate(self.op, &self.geometry, tiling, with_bias, self.max_grid)
            .unwrap_or_else(|e| panic!("generate failed: {e}"));
        validate(&kernel);
        let gpu = gpu();
        let out_len = reference::output_len(self.op, &self.geometry);
        let out_bytes = (out_len * 4) as u64;
        let views: Vec<Option<wgpu::TextureView>> = kernel
            .bindings
            .iter()
            .enumerate()
            .map(|(i, &role)| {
                // NaN padding makes a read past the end show in the output.
                let vectors = (i == 0 && kernel.lhs_vectors) || (i == 1 && kernel.rhs_texels);
                (kernel.texture_operands && i < 2).then(|| {
                    upload_operand(&gpu.device, &gpu.queue, self.binding(role), vectors, f32::NAN)
                })
            })
            .collect();
        let buffers: Vec<wgpu::Buffer> = kernel
            .bindings
            .iter()
            .map(|&role| match role {
                Operand::Output => gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("output"),
                    size: out_bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                Operand::Shape => {
                    gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("shape"),
                        contents: bytemuck::cast_slice(&padded_shape(&kernel.shape)),
                        usage: wgpu::BufferUsages::UNIFORM,
                    })
                }
                role => gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(self.binding(role)),
                    usage: wgpu::BufferUsages::STORAGE,
                }),
            })
            .collect();
        let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&kernel.label),
            source: wgpu::ShaderSource::Wgsl(kernel.wgsl.as_str().into()),
        });
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&kernel.label),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry_point),
            compilation_options: Default::default(),
            cache: None,
        });
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .zip(&views)
            .enumerate()
            .map(|(i, (b, view))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: match view {
                    Some(view) => wgpu::BindingResource::TextureView(view),
                    None => b.as_entire_binding(),
                },
            })
            .collect();
        let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: out_bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let output =
            kernel.bindings.iter().position(|&r| r == Operand::Output).expect("output binding");

        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            let [x, y, z] = kernel.grid.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
        encoder.copy_buffer_to_buffer(&buffers[output], 0, &staging, 0, out_bytes);
        gpu.queue.submit([encoder.finish()]);
        staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map failed"));
        gpu.device.poll(wgpu::PollType::wait_indefinitely()).expect("poll failed");
        let view = staging.get_mapped_range(..).expect("mapped range");
        bytemuck::cast_slice(&view).to_vec()
    }

    /// Compares `got` with the reference at `indices`, within 1e-4 of the larger of the
    /// element's magnitude and the root mean square of the checked reference values.
    fn check(&self, got: &[f32], indices: &[usize], with_bias: bool, what: &str) {
        let tensors = reference::Tensors { x: &self.x, w: &self.w, dy: &self.dy };
        let spatial = self.geometry.out_size[0] * self.geometry.out_size[1];
        let expected: Vec<f64> = indices
            .iter()
            .map(|&i| {
                let bias = if with_bias {
                    f64::from(self.bias[i / spatial % self.geometry.out_channels])
                } else {
                    0.0
                };
                reference::element(self.op, &self.geometry, &tensors, i) + bias
            })
            .collect();
        let rms = (expected.iter().map(|v| v * v).sum::<f64>() / expected.len() as f64).sqrt();
        for (&i, &want) in indices.iter().zip(&expected) {
            let error = (f64::from(got[i]) - want).abs();
            let tolerance = 1e-4 * want.abs().max(rms).max(1e-6);
            assert!(
                error <= tolerance,
                "{what}: {} element {i} is {}, expected {want} (error {error:e}, tolerance {tolerance:e})",
                self.op.name(),
                got[i]
            );
        }
    }
}

fn all_indices(len: usize) -> Vec<usize> {
    (0..len).collect()
}

/// Picks the first and last 64 elements and `count` spread pseudo-randomly in between.
fn sample_indices(len: usize, count: usize) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..len.min(64)).chain(len.saturating_sub(64)..len).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        indices.push((state % len as u64) as usize);
    }
    indices
}

/// Lists the tilings every awkward case runs with: one output per invocation and an odd
/// register tile with texture operands, both without subgroups. Where the adapter has subgroups, an odd tile, the
/// chosen one and the large CPU tile follow, whose rows mostly lie outside these outputs.
fn tilings(op: ConvOp, g: &ConvGeometry) -> Vec<Tiling> {
    let profile = gpu().profile;
    let textured = Tiling { texture_operands: true, ..plain(3, 5, 16, 3, 2) };
    let mut list = vec![plain(1, 1, 64, 1, 1), textured];
    match profile.fixed_subgroup_size {
        Some(size) => {
            let with_subgroups = |t: Tiling| Tiling { subgroup_size: Some(size), ..t };
            list.push(with_subgroups(plain(size + 3, 3, 2 * size, 3, 5)));
            list.push(gemm::choose_tiling(op, g, &profile));
            list.push(with_subgroups(plain(64, 8, size, 4, 2)));
            // Split reductions, with chunks of 4 and a ragged 3.
            list.push(Tiling { split_k: true, ..with_subgroups(plain(5, 3, size, 4, 2)) });
            list.push(Tiling { split_k: true, ..with_subgroups(plain(16, 4, size, 3, 1)) });
        }
        None => list.push(gemm::choose_tiling(op, g, &profile)),
    }
    list
}

/// Builds a tiling without subgroup operations.
fn plain(tile_m: u32, tile_n: u32, workgroup_size: u32, k_chunk: u32, block_m: u32) -> Tiling {
    Tiling {
        tile_m,
        tile_n,
        workgroup_size,
        k_chunk,
        block_m,
        subgroup_size: None,
        split_k: false,
        texture_operands: false,
    }
}

/// Geometry of the forward op of `op` with the output size from its shape rule.
#[allow(clippy::too_many_arguments)]
fn geometry(
    op: ConvOp,
    batch: usize,
    ci: usize,
    size: [usize; 2],
    co: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    output_padding: [usize; 2],
) -> ConvGeometry {
    match op {
        ConvOp::Conv2d | ConvOp::Conv2dWeightGrad => {
            ConvGeometry::conv2d(batch, ci, size, co, kernel, stride, padding)
        }
        _ => ConvGeometry::conv_transpose2d(
            batch,
            ci,
            size,
            co,
            kernel,
            stride,
            padding,
            output_padding,
        ),
    }
}

mod awkward {
    use super::*;

    /// (batch, ci, size, co, kernel, stride, padding, output_padding) of each case.
    type Shape = (usize, usize, [usize; 2], usize, [usize; 2], [usize; 2], [usize; 2], [usize; 2]);
    const SHAPES: [Shape; 9] = [
        (1, 1, [1, 1], 1, [1, 1], [1, 1], [0, 0], [0, 0]),
        (1, 3, [7, 5], 5, [3, 3], [1, 1], [1, 1], [0, 0]),
        (2, 5, [11, 13], 7, [4, 4], [2, 2], [1, 1], [1, 1]),
        (1, 6, [9, 9], 13, [4, 4], [2, 2], [1, 1], [0, 0]),
        (3, 2, [5, 7], 3, [3, 2], [2, 3], [0, 1], [1, 2]),
        (1, 17, [8, 8], 1, [4, 4], [1, 1], [1, 1], [0, 0]),
        (1, 9, [2, 2], 10, [5, 5], [3, 3], [2, 2], [2, 1]),
        (2, 4, [13, 1], 6, [3, 1], [2, 1], [1, 0], [0, 0]),
        // Rows a multiple of 4 long in both images, over two images.
        (2, 3, [8, 8], 5, [4, 4], [2, 2], [1, 1], [0, 0]),
    ];

    fn check_all_shapes(op: ConvOp) {
        for (case_number, &(n, ci, size, co, k, s, p, op_pad)) in SHAPES.iter().enumerate() {
            let g = geometry(op, n, ci, size, co, k, s, p, op_pad);
            let case = Case::new(op, g, 10 * case_number as u64);
            let indices = all_indices(reference::output_len(op, &g));
            for tiling in tilings(op, &g) {
                let what = format!("case {case_number} {g:?} {tiling:?}");
                let got = case.run(&tiling, false);
                case.check(&got, &indices, false, &what);
            }
        }
    }

    #[test]
    fn conv2d_matches_reference() {
        check_all_shapes(ConvOp::Conv2d);
    }

    #[test]
    fn conv_transpose2d_matches_reference() {
        check_all_shapes(ConvOp::ConvTranspose2d);
    }

    #[test]
    fn conv2d_weight_grad_matches_reference() {
        check_all_shapes(ConvOp::Conv2dWeightGrad);
    }

    #[test]
    fn conv_transpose2d_weight_grad_matches_reference() {
        check_all_shapes(ConvOp::ConvTranspose2dWeightGrad);
    }

    #[test]
    fn bias_is_added_per_channel() {
        for op in [ConvOp::Conv2d, ConvOp::ConvTranspose2d] {
            let g = geometry(op, 2, 5, [11, 13], 7, [4, 4], [2, 2], [1, 1], [1, 1]);
            let case = Case::new(op, g, 99);
            let indices = all_indices(reference::output_len(op, &g));
            for tiling in tilings(op, &g) {
                let got = case.run(&tiling, true);
                case.check(&got, &indices, true, &format!("bias {tiling:?}"));
            }
        }
    }

    #[test]
    fn conv_transpose2d_with_output_padding_is_accepted() {
        // The input gradient of a stride-2 conv2d on 7x7: conv2d gives 3x3, and
        // conv_transpose2d must give back 7x7 (output padding 1 over the plain rule's 6).
        let g = ConvGeometry::conv_transpose2d(1, 4, [3, 3], 3, [3, 3], [2, 2], [1, 1], [1, 1]);
        assert_eq!(g.out_size, [6, 6]);
        let case = Case::new(ConvOp::ConvTranspose2d, g, 5);
        let got = case.run(&gpu_choice(ConvOp::ConvTranspose2d, &g), false);
        case.check(&got, &all_indices(got.len()), false, "output padding");
    }

    #[test]
    fn grid_above_65535_workgroups_is_folded() {
        // 70 x 256 x 256 outputs at one per invocation and 64 invocations per workgroup
        // need 71,680 workgroups.
        let g = ConvGeometry::conv2d(1, 1, [256, 256], 70, [1, 1], [1, 1], [0, 0]);
        let tiling = plain(1, 1, 64, 1, 1);
        let kernel =
            gemm::generate(ConvOp::Conv2d, &g, &tiling, false, MAX_GRID).expect("generate");
        assert_eq!(kernel.grid.workgroups, [35_840, 2, 1]);
        let case = Case::new(ConvOp::Conv2d, g, 3);
        let got = case.run(&tiling, false);
        case.check(&got, &sample_indices(got.len(), 4000), false, "folded grid");
    }

    #[test]
    fn split_reduction_grid_is_folded() {
        // Two rows of 256 x 256 columns, one column per workgroup of one subgroup, are
        // 131,072 workgroups. The reduction over K = 9 is split over the lanes.
        let Some(size) = gpu().profile.fixed_subgroup_size else {
            eprintln!("the adapter has no fixed subgroup size; nothing to test");
            return;
        };
        let g = ConvGeometry::conv2d(1, 1, [258, 258], 2, [3, 3], [1, 1], [0, 0]);
        let tiling = Tiling { split_k: true, subgroup_size: Some(size), ..plain(1, 1, size, 4, 1) };
        let kernel =
            gemm::generate(ConvOp::Conv2d, &g, &tiling, false, MAX_GRID).expect("generate");
        assert_eq!(kernel.grid.groups, 131_072);
        assert!(kernel.grid.workgroups[1] > 1, "{:?}", kernel.grid.workgroups);
        let case = Case::new(ConvOp::Conv2d, g, 4);
        let got = case.run(&tiling, false);
        case.check(&got, &sample_indices(got.len(), 4000), false, "split reduction, folded grid");
    }

    #[test]
    fn few_columns_split_the_reduction() {
        // The innermost U-Net layers at ngf=16, 128x128: one and four output pixels.
        let profile = DeviceProfile {
            fixed_subgroup_size: Some(8),
            max_invocations: 1024,
            cpu: true,
            texture_operands: false,
            max_texture_rows: 8192,
        };
        let e7 = ConvGeometry::conv2d(1, 128, [2, 2], 128, [4, 4], [2, 2], [1, 1]);
        let e6 = ConvGeometry::conv2d(1, 128, [4, 4], 128, [4, 4], [2, 2], [1, 1]);
        let e5 = ConvGeometry::conv2d(1, 128, [8, 8], 128, [4, 4], [2, 2], [1, 1]);
        assert!(gemm::choose_tiling(ConvOp::Conv2d, &e7, &profile).split_k);
        assert!(gemm::choose_tiling(ConvOp::Conv2d, &e6, &profile).split_k);
        assert!(!gemm::choose_tiling(ConvOp::Conv2d, &e5, &profile).split_k);
        assert!(!gemm::choose_tiling(ConvOp::Conv2dWeightGrad, &e7, &profile).split_k);
    }

    #[test]
    fn grid_folds_into_three_dimensions() {
        // 30 channels of 25 x 25 outputs, one per invocation in workgroups of 64, are
        // 30 x 10 = 300 workgroups: with at most 7 per dimension they need x, y and z.
        let g = ConvGeometry::conv2d(1, 2, [27, 27], 30, [3, 3], [1, 1], [0, 0]);
        let case = Case { max_grid: 7, ..Case::new(ConvOp::Conv2d, g, 8) };
        let tiling = plain(1, 1, 64, 1, 1);
        let kernel = gemm::generate(ConvOp::Conv2d, &g, &tiling, false, 7).expect("generate");
        assert_eq!(kernel.grid.groups, 300);
        assert!(kernel.grid.workgroups[2] > 1, "{:?}", kernel.grid.workgroups);
        let got = case.run(&tiling, false);
        case.check(&got, &all_indices(got.len()), false, "grid of 7 per dimension");
    }

    #[test]
    fn grid_beyond_folding_limit_is_rejected() {
        let g = ConvGeometry::conv2d(1, 2, [27, 27], 30, [3, 3], [1, 1], [0, 0]);
        let err = gemm::generate(ConvOp::Conv2d, &g, &plain(1, 1, 64, 1, 1), false, 6)
            .expect_err("300 workgroups do not fit 6^3");
        assert!(err.to_string().contains("300 workgroups"), "{err}");
    }

    fn gpu_choice(op: ConvOp, g: &ConvGeometry) -> Tiling {
        gemm::choose_tiling(op, g, &gpu().profile)
    }
}

mod pix2pix {
    use super::*;

    /// Forward op and geometry of each pix2pix convolution at 256x256, 64 base channels,
    /// batch 1: the U-Net encoder, its decoder and the PatchGAN discriminator.
    pub fn layers() -> Vec<(String, ConvOp, ConvGeometry)> {
        let mut layers = Vec::new();
        let widths = [3, 64, 128, 256, 512, 512, 512, 512, 512];
        for i in 0..8 {
            let size = 256 >> i;
            let g = ConvGeometry::conv2d(
                1,
                widths[i],
                [size, size],
                widths[i + 1],
                [4, 4],
                [2, 2],
                [1, 1],
            );
            layers.push((format!("e{}", i + 1), ConvOp::Conv2d, g));
        }
        let decoder = [
            (512, 512),
            (1024, 512),
            (1024, 512),
            (1024, 512),
            (1024, 256),
            (512, 128),
            (256, 64),
            (128, 3),
        ];
        for (i, (ci, co)) in decoder.into_iter().enumerate() {
            let g = ConvGeometry::conv_transpose2d(
                1,
                ci,
                [1 << i, 1 << i],
                co,
                [4, 4],
                [2, 2],
                [1, 1],
                [0, 0],
            );
            layers.push((format!("d{}", i + 1), ConvOp::ConvTranspose2d, g));
        }
        let disc = [
            (6, 64, 2, 256),
            (64, 128, 2, 128),
            (128, 256, 2, 64),
            (256, 512, 1, 32),
            (512, 1, 1, 31),
        ];
        for (i, (ci, co, s, size)) in disc.into_iter().enumerate() {
            let g = ConvGeometry::conv2d(1, ci, [size, size], co, [4, 4], [s, s], [1, 1]);
            layers.push((format!("D{}", i + 1), ConvOp::Conv2d, g));
        }
        layers
    }

    fn weight_grad(op: ConvOp) -> ConvOp {
        if op == ConvOp::Conv2d {
            ConvOp::Conv2dWeightGrad
        } else {
            ConvOp::ConvTranspose2dWeightGrad
        }
    }

    #[test]
    fn every_pix2pix_shader_validates() {
        let profiles = [
            DeviceProfile {
                fixed_subgroup_size: Some(8),
                max_invocations: 1024,
                cpu: true,
                texture_operands: true,
                max_texture_rows: 8192,
            },
            DeviceProfile {
                fixed_subgroup_size: None,
                max_invocations: 1024,
                cpu: true,
                texture_operands: true,
                max_texture_rows: 8192,
            },
            DeviceProfile {
                fixed_subgroup_size: Some(32),
                max_invocations: 1024,
                cpu: false,
                texture_operands: false,
                max_texture_rows: 8192,
            },
            DeviceProfile {
                fixed_subgroup_size: None,
                max_invocations: 256,
                cpu: false,
                texture_operands: false,
                max_texture_rows: 8192,
            },
        ];
        for (name, forward, g) in layers() {
            for op in [forward, weight_grad(forward)] {
                for profile in &profiles {
                    let tiling = gemm::choose_tiling(op, &g, profile);
                    let kernel = gemm::generate(op, &g, &tiling, false, MAX_GRID)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    validate(&kernel);
                }
            }
        }
    }

    fn check_layers(ops: impl Fn(ConvOp) -> ConvOp) {
        for (number, (name, forward, g)) in layers().into_iter().enumerate() {
            let op = ops(forward);
            let case = Case::new(op, g, 1000 + number as u64);
            let tiling = gemm::choose_tiling(op, &g, &gpu().profile);
            let got = case.run(&tiling, false);
            let indices = sample_indices(got.len(), 300);
            case.check(&got, &indices, false, &format!("{name} {tiling:?}"));
        }
    }

    #[test]
    fn pix2pix_forward_layers_match_reference() {
        check_layers(|op| op);
    }

    #[test]
    fn pix2pix_weight_grads_match_reference() {
        check_layers(weight_grad);
    }
}

mod adjoint {
    use super::*;

    /// For a bilinear `y = conv(x, w)`, `<dy, conv(x, w)> = <conv_transpose(dy, w), x>` and
    /// `= <weight_grad(x, dy), w>`: checks that the kernels are each other's gradients.
    fn check_identities(forward: ConvOp, g: ConvGeometry) {
        let tiling = gemm::choose_tiling(forward, &g, &gpu().profile);
        let case = Case::new(forward, g, 77);
        let dot = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum::<f64>()
        };
        let y = case.run(&tiling, false);
        let y_dot = dot(&case.dy, &y);

        let grad_op = if forward == ConvOp::Conv2d {
            ConvOp::Conv2dWeightGrad
        } else {
            ConvOp::ConvTranspose2dWeightGrad
        };
        let dw = Case { op: grad_op, ..Case::new(grad_op, g, 77) }.run(&tiling, false);
        let w_dot = dot(&dw, &case.w);
        assert!(
            (y_dot - w_dot).abs() <= 1e-4 * y_dot.abs().max(1.0),
            "<dy, y> = {y_dot}, <dw, w> = {w_dot}"
        );

        // The input gradient is the other forward op, on the swapped geometry.
        let (other, back) = if forward == ConvOp::Conv2d {
            let output_padding =
                [0, 1].map(|d| (g.in_size[d] + 2 * g.padding[d] - g.kernel[d]) % g.stride[d]);
            let back = ConvGeometry::conv_transpose2d(
                g.batch,
                g.out_channels,
                g.out_size,
                g.in_channels,
                g.kernel,
                g.stride,
                g.padding,
                output_padding,
            );
            (ConvOp::ConvTranspose2d, back)
        } else {
            let back = ConvGeometry::conv2d(
                g.batch,
                g.out_channels,
                g.out_size,
                g.in_channels,
                g.kernel,
                g.stride,
                g.padding,
            );
            (ConvOp::Conv2d, back)
        };
        assert_eq!(back.out_size, g.in_size, "the input gradient has the input's size");
        let dx_case = Case {
            op: other,
            geometry: back,
            x: case.dy.clone(),
            w: case.w.clone(),
            dy: Vec::new(),
            bias: Vec::new(),
            max_grid: MAX_GRID,
        };
        let dx = dx_case.run(&gemm::choose_tiling(other, &back, &gpu().profile), false);
        let x_dot = dot(&dx, &case.x);
        assert!(
            (y_dot - x_dot).abs() <= 1e-4 * y_dot.abs().max(1.0),
            "<dy, y> = {y_dot}, <dx, x> = {x_dot}"
        );
    }

    #[test]
    fn conv2d_gradients_are_adjoint() {
        check_identities(
            ConvOp::Conv2d,
            ConvGeometry::conv2d(2, 5, [11, 12], 6, [4, 4], [2, 2], [1, 1]),
        );
        check_identities(
            ConvOp::Conv2d,
            ConvGeometry::conv2d(1, 3, [9, 9], 4, [3, 3], [2, 2], [0, 0]),
        );
    }

    #[test]
    fn conv_transpose2d_gradients_are_adjoint() {
        let g = ConvGeometry::conv_transpose2d(2, 5, [6, 7], 6, [4, 4], [2, 2], [1, 1], [0, 0]);
        check_identities(ConvOp::ConvTranspose2d, g);
    }
}

mod errors {
    use super::*;

    #[test]
    fn inconsistent_output_size_is_rejected() {
        let mut g = ConvGeometry::conv2d(1, 3, [8, 8], 4, [3, 3], [1, 1], [1, 1]);
        g.out_size = [7, 8];
        let err = gemm::generate(ConvOp::Conv2d, &g, &plain(1, 1, 1, 1, 1), false, MAX_GRID)
            .expect_err("a wrong output size must be rejected");
        assert!(err.to_string().contains("output size 7 along axis 0"), "{err}");
    }

    #[test]
    fn workgroup_not_multiple_of_subgroup_is_rejected() {
        let g = ConvGeometry::conv2d(1, 3, [8, 8], 4, [3, 3], [1, 1], [1, 1]);
        let tiling = Tiling { subgroup_size: Some(8), ..plain(8, 2, 12, 1, 1) };
        let err = gemm::generate(ConvOp::Conv2d, &g, &tiling, false, MAX_GRID)
            .expect_err("must be rejected");
        assert!(err.to_string().contains("multiple of the subgroup size"), "{err}");
    }
}

/// Pads a kernel's shape block to a whole number of 16-byte rows, as uniform buffers need.
fn padded_shape(shape: &[u32]) -> Vec<u32> {
    let mut words = shape.to_vec();
    words.resize(shape.len().next_multiple_of(4), 0);
    words
}
