//! Convolutions lowered as implicit GEMMs, specialised to one geometry and one tiling.
//!
//! Needs: a convolution geometry whose sizes agree with the op's shape rule, and a
//! [`Tiling`] (usually from [`choose_tiling`]). Guarantees: a WGSL compute shader, the
//! order of its bindings and a dispatch grid within 65,535 workgroups per dimension. The
//! sizes the reduction loop divides by are constants, and by default the others come from
//! a uniform block, so one pipeline serves every layer with the same kernel window. No
//! im2col buffer is written: each load computes its source address from the GEMM indices.
//!
//! Each op is `C[m, n] = sum_k A(m, k) * B(k, n)`. Rows `m` are output channels (for the
//! weight gradients, the channels of the image read along rows). A is loaded once per
//! subgroup and shared with `subgroupBroadcast`; each lane loads its own B columns.
//! - conv2d: A is the weight, B gathers input pixels, `n` is the output pixel.
//! - conv_transpose2d: split into `stride_h * stride_w` output parity classes, each a plain
//!   convolution over the taps that reach it, so no multiply-by-zero taps are computed.
//! - weight gradients: `k` runs over pixels, A is an image read row-wise and B gathers the
//!   other image at each tap. The conv_transpose2d weight gradient is the conv2d one with
//!   the two images swapped.
//!
//! Loads run one lane at a time on lavapipe, so the kernels load fewer, wider values
//! where the layout allows it. A chunk of 4 reduction steps along a row of A is one
//! `vec4` load. A conv2d whose chunk is one kernel row gives each invocation a run of
//! neighbouring output pixels, which share most of their input pixels. A weight gradient
//! gives each invocation whole kernel rows of taps, whose four pixels of a chunk share
//! most of theirs. Each shared value is loaded once.
//!
//! The input gradients need no kernel of their own: the input gradient of conv2d is
//! conv_transpose2d of the output gradient with the same weight, and the other way round.
//!
//! Cannot do yet: split the reduction of a weight gradient over several workgroups, which
//! a real GPU would need for the outer layers (few outputs, many pixels).

mod emit;
mod problem;

use crate::codegen::Grid;
use problem::Problem;

/// The op a kernel computes. Weights use PyTorch's layouts: conv2d `[Co, Ci, kh, kw]`,
/// conv_transpose2d `[Ci, Co, kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvOp {
    /// `y = conv2d(x, w) (+ bias)`.
    Conv2d,
    /// `y = conv_transpose2d(x, w) (+ bias)`.
    ConvTranspose2d,
    /// `dw` of conv2d from `x` and `dy`.
    Conv2dWeightGrad,
    /// `dw` of conv_transpose2d from `x` and `dy`.
    ConvTranspose2dWeightGrad,
}

impl ConvOp {
    /// Returns the name used in shader labels and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            ConvOp::Conv2d => "conv2d",
            ConvOp::ConvTranspose2d => "conv_transpose2d",
            ConvOp::Conv2dWeightGrad => "conv2d_weight_grad",
            ConvOp::ConvTranspose2dWeightGrad => "conv_transpose2d_weight_grad",
        }
    }
}

/// The sizes of one convolution, always described by its forward op: `x` is
/// `[batch, in_channels, in_size]` and `y` is `[batch, out_channels, out_size]`, for the
/// weight gradient ops too (there `y` is the shape of the output gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_size: [usize; 2],
    pub out_channels: usize,
    pub out_size: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl ConvGeometry {
    /// Builds the geometry of a conv2d, with the output size from its shape rule.
    pub fn conv2d(
        batch: usize,
        in_channels: usize,
        in_size: [usize; 2],
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Self {
        let out =
            |d: usize| (in_size[d] + 2 * padding[d]).saturating_sub(kernel[d]) / stride[d] + 1;
        let out_size = [out(0), out(1)];
        Self { batch, in_channels, in_size, out_channels, out_size, kernel, stride, padding }
    }

    /// Builds the geometry of a conv_transpose2d, with the output size from its shape rule.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose2d(
        batch: usize,
        in_channels: usize,
        in_size: [usize; 2],
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        output_padding: [usize; 2],
    ) -> Self {
        let out = |d: usize| {
            ((in_size[d] - 1) * stride[d] + kernel[d] + output_padding[d])
                .saturating_sub(2 * padding[d])
        };
        let out_size = [out(0), out(1)];
        Self { batch, in_channels, in_size, out_channels, out_size, kernel, stride, padding }
    }

    /// Counts the multiply-adds of the op (the same for the forward op and its weight gradient),
    /// times two. For conv_transpose2d this counts only the taps that reach an output.
    pub fn flops(&self, op: ConvOp) -> u64 {
        let [kh, kw] = self.kernel;
        let taps = match op {
            ConvOp::Conv2d | ConvOp::Conv2dWeightGrad => {
                (self.out_size[0] * self.out_size[1] * kh * kw) as u64
            }
            ConvOp::ConvTranspose2d | ConvOp::ConvTranspose2dWeightGrad => {
                (self.in_size[0] * self.in_size[1] * kh * kw) as u64
            }
        };
        2 * (self.batch * self.in_channels * self.out_channels) as u64 * taps
    }
}

/// The split of the output into per-invocation tiles and workgroups, and the order of the
/// reduction loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// Output rows (channels) per invocation.
    pub tile_m: u32,
    /// Output columns per invocation.
    pub tile_n: u32,
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// Steps of the reduction whose operands are loaded before any multiply-add of them.
    pub k_chunk: u32,
    /// Rows of the tile whose multiply-adds run together over a chunk: their
    /// `block_m * tile_n` accumulators are the ones the compiler can keep in registers.
    pub block_m: u32,
    /// Share A across a subgroup of this many invocations with `subgroupBroadcast`; `None`
    /// loads A in every invocation.
    pub subgroup_size: Option<u32>,
    /// Spread the reduction over the lanes of the workgroup's one subgroup instead of
    /// giving each lane its own columns: lane `l` sums the chunks `l, l + lanes, ...`, and
    /// `subgroupAdd` adds the lanes' sums before the first lane stores them. For problems
    /// with fewer columns than lanes, where most lanes would idle. Needs `subgroup_size`
    /// equal to `workgroup_size`, and then `tile_n` is the workgroup's column count.
    pub split_k: bool,
    /// Read A and B with `textureLoad` from 2D textures of [`TEXTURE_WIDTH`] texels a row
    /// rather than from storage buffers. Lavapipe (Mesa 22.3) loads storage values one lane
    /// at a time, and its texel fetches ran 9 times faster on an AMD Zen 2 but only 1.2 to
    /// 1.7 times on a Zen 4 and an Intel Xeon (`examples/load_bench.rs`, `runtime/probe.rs`).
    pub texture_operands: bool,
}

/// Texels per row of the textures that A and B are read from with
/// [`Tiling::texture_operands`]. Element `i` is texel `(i % TEXTURE_WIDTH, i / TEXTURE_WIDTH)`.
pub const TEXTURE_WIDTH: u32 = 4096;

/// What the adapter offers that the choice of tiling depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceProfile {
    /// The subgroup size when the adapter has `Features::SUBGROUP` and a single fixed size
    /// (`subgroup_min_size == subgroup_max_size`); `None` otherwise.
    pub fixed_subgroup_size: Option<u32>,
    /// `max_compute_invocations_per_workgroup`.
    pub max_invocations: u32,
    /// Whether the adapter is a CPU (`DeviceType::Cpu`, as lavapipe reports).
    pub cpu: bool,
    /// Whether A and B may be read from textures ([`Tiling::texture_operands`]).
    pub texture_operands: bool,
    /// `max_texture_dimension_2d`: operands of more than this many rows of
    /// [`TEXTURE_WIDTH`] values stay in storage buffers.
    pub max_texture_rows: u32,
}

impl DeviceProfile {
    /// Reads the profile of an adapter, given the features the device was created with.
    pub fn of(adapter: &wgpu::Adapter, device_features: wgpu::Features) -> Self {
        let info = adapter.get_info();
        let fixed = info.subgroup_min_size == info.subgroup_max_size;
        let subgroups = device_features.contains(wgpu::Features::SUBGROUP) && fixed;
        Self {
            fixed_subgroup_size: subgroups.then_some(info.subgroup_min_size),
            max_invocations: adapter.limits().max_compute_invocations_per_workgroup,
            cpu: info.device_type == wgpu::DeviceType::Cpu,
            // NOTE: as on a CPU adapter whose storage loads are slow. `runtime::Gpu` decides
            // from a measurement instead.
            texture_operands: info.device_type == wgpu::DeviceType::Cpu,
            max_texture_rows: adapter.limits().max_texture_dimension_2d,
        }
    }
}

/// Workgroups below which [`choose_tiling`] shrinks the tile on a GPU.
const MIN_WORKGROUPS: u64 = 16;

/// Returns the workgroups below which [`choose_tiling`] shrinks the tile. A CPU adapter
/// runs each workgroup on one thread (lavapipe starts one per core), and two per thread
/// balance the load. More cost tile size: on the 2-core build machine, a floor of 4
/// rather than 16 took the ngf=16, 128x128 training step from 0.082 to 0.076 s, because
/// 64x8 tiles load each value for more multiply-adds than 64x2 ones.
fn min_workgroups(device: &DeviceProfile) -> u64 {
    if device.cpu {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
        2 * threads.clamp(1, 64)
    } else {
        MIN_WORKGROUPS
    }
}

/// Work (in FLOPs) from which a CPU adapter gets its large tile (64x8, or 64x16 with
/// texture operands) rather than 32x8.
///
/// Lavapipe compiles a pipeline's machine code at its first dispatch, and a 64x16 GEMM
/// shader took 8 to 10 s there against 0.7 to 0.9 s for 32x8 (2-core AMD EPYC Zen 4,
/// Mesa 22.3, `examples/gemm_bench.rs`, Mesa's shader cache off). 64x16 ran the 1 to 4
/// GFLOP full-size pix2pix layers about 10% faster, and the ngf=16, 128x128 layers (60
/// MFLOP at most) no faster. With this threshold that training step's first run took 11 s
/// instead of 71 s, and the full-size step kept its speed (2.11 s against 2.03 s, in noise).
/// On a 2-core Intel Xeon, 64x8 tiles from 16 MFLOP up left that step at 0.070 s.
const LARGE_TILE_FLOPS: u64 = 1 << 28;

/// Returns whether `op` on `geometry` is a problem of [`LARGE_TILE_FLOPS`] or more, which
/// a CPU adapter runs with its largest tile.
pub fn is_large(op: ConvOp, geometry: &ConvGeometry) -> bool {
    problem_flops(&Problem::new(op, geometry)) >= LARGE_TILE_FLOPS
}

/// Returns the multiply-adds of `problem` counted as two operations each.
fn problem_flops(problem: &Problem) -> u64 {
    2 * u64::from(problem.classes)
        * u64::from(problem.m)
        * u64::from(problem.n)
        * u64::from(problem.k)
}

/// Picks the tiling for one op on one device.
///
/// On a CPU adapter with subgroups the tile for problems of [`LARGE_TILE_FLOPS`] and more
/// is 64x8 outputs per invocation from storage buffers and 64x16 from texture operands,
/// and 32x8 below, staged 4 steps at a time. Loads run one lane at a time on lavapipe
/// (Mesa 22.3, LLVM 15, 8-wide AVX2 subgroups), and where they are slow a larger tile
/// loads each value for more multiply-adds. On a 2-core AMD EPYC (Zen 2) storage loads
/// ran 9 times slower than texel fetches. There, with texture operands,
/// `examples/gemm_bench.rs` measured 64x16 against 64x8 at 42 against 36 GFLOP/s on
/// l4's conv2d, 32 against 28 on its weight gradient and 35 against 25 on d4's
/// conv_transpose2d. On a 2-core Intel Xeon storage loads ran at 0.85 times the texel
/// rate. There, with storage operands, 64x8 was the faster on all 12 full-size kernels
/// timed (1 to 4 GFLOP each): l4's conv2d at 60 against 49 GFLOP/s, e3's at 56 against
/// 45, d4's conv_transpose2d at 45 against 39 and l2's weight gradient at 54 against 46.
/// The 64x16 shader also needed to be short, with vec4 accumulators and one store test per
/// column (see `emit.rs`), or its pipeline took 0.55 s to create. 64x32 was faster on
/// l4 (48 GFLOP/s, Zen 2) but slower on d4 (23). The tile shrinks for small outputs so
/// that there are at least two workgroups per core.
///
/// NOTE: the GPU choice (8x4 per invocation, 64 invocations) is a conventional register
/// tile that has not been measured on a GPU.
pub fn choose_tiling(op: ConvOp, geometry: &ConvGeometry, device: &DeviceProfile) -> Tiling {
    let problem = Problem::new(op, geometry);
    let large = problem_flops(&problem) >= LARGE_TILE_FLOPS;
    // A convolution with fewer columns than half a subgroup (the innermost U-Net layers)
    // splits its reduction over the lanes instead. At ngf=16, 128x128 that took e7's
    // conv2d (N = 1, K = 2048) from 1.7 to 2.4 GFLOP/s, d7's conv_transpose2d from 1.2 to
    // 1.8 and d6's (N = 4) from 4.2 to 5.8, and left e6's at 7.6 (2-core Intel Xeon,
    // `examples/gemm_bench.rs`). They read each weight once, so memory bounds them.
    let forward = matches!(op, ConvOp::Conv2d | ConvOp::ConvTranspose2d);
    let few_columns =
        |lanes: u32| forward && problem.n * 2 <= lanes && lanes <= device.max_invocations;
    let mut tiling = match (device.cpu, device.fixed_subgroup_size) {
        (true, Some(lanes)) if few_columns(lanes) => Tiling {
            tile_m: problem.m.min(16),
            tile_n: problem.n.next_power_of_two(),
            workgroup_size: lanes,
            k_chunk: 4,
            block_m: 2,
            subgroup_size: Some(lanes),
            split_k: true,
            texture_operands: false,
        },
        (true, Some(size)) => Tiling {
            tile_m: if large { 64 } else { 32 },
            tile_n: if large && device.texture_operands { 16 } else { 8 },
            workgroup_size: size,
            k_chunk: 4,
            block_m: 2,
            subgroup_size: Some(size),
            split_k: false,
            texture_operands: false,
        },
        (true, None) => Tiling {
            tile_m: 32,
            tile_n: 8,
            workgroup_size: 8,
            k_chunk: 4,
            block_m: 2,
            subgroup_size: None,
            split_k: false,
            texture_operands: false,
        },
        (false, subgroup_size) => Tiling {
            tile_m: 8,
            tile_n: 4,
            workgroup_size: subgroup_size.map_or(64, |s| s.max(64)).min(device.max_invocations),
            k_chunk: 1,
            block_m: 8,
            subgroup_size,
            split_k: false,
            texture_operands: false,
        },
    };

    if !tiling.split_k {
        fit_to_problem(&mut tiling, op, geometry, &problem, device);
    }

    // Lavapipe on a 2-core AMD EPYC (Zen 2) took e3's conv2d from 11.6 to 22.2 GFLOP/s
    // with texture operands (`examples/gemm_bench.rs`), because its storage loads run one
    // lane at a time. The device profile records whether this adapter's loads are that slow.
    // Operands too tall for a texture stay in storage buffers.
    let g = geometry;
    let largest = [
        g.batch * g.in_channels * g.in_size[0] * g.in_size[1],
        g.batch * g.out_channels * g.out_size[0] * g.out_size[1],
        g.in_channels * g.out_channels * g.kernel[0] * g.kernel[1],
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let rows = largest.div_ceil(TEXTURE_WIDTH as usize);
    tiling.texture_operands = device.texture_operands && rows <= device.max_texture_rows as usize;
    // With texture operands one row per block was faster than two on all 12 pix2pix
    // kernels timed there (e2 to d5, forward and weight gradient), by 1 to 11%.
    if tiling.texture_operands {
        tiling.block_m = 1;
    }
    tiling
}

/// Shrinks `tiling` to `problem`: no taller than the output, no wider than it needs, and
/// small enough to give every thread some work.
fn fit_to_problem(
    tiling: &mut Tiling,
    op: ConvOp,
    geometry: &ConvGeometry,
    problem: &Problem,
    device: &DeviceProfile,
) {
    // No taller than the output, even below the subgroup width (the lanes past M then load
    // no row of A), no wider than it needs, and small enough to give every thread some
    // work. The 3-row output layer d1 went from 6.9 to 9.0 GFLOP/s with a 3-row tile, and
    // the 1-row logits from 2.7 to 8.0.
    let lanes = tiling.subgroup_size.unwrap_or(1);
    tiling.tile_m = tiling.tile_m.min(problem.m).max(1);
    while tiling.tile_n > 1 && tiling.workgroup_size * (tiling.tile_n / 2) >= problem.n {
        tiling.tile_n /= 2;
    }

    let workgroups = |t: &Tiling| {
        u64::from(problem.classes)
            * u64::from(problem.m.div_ceil(t.tile_m))
            * u64::from(problem.n.div_ceil(t.workgroup_size * t.tile_n))
    };

    // A weight gradient whose columns are whole kernel rows loads each pixel once for all
    // of them (`Problem::use_tap_runs`). Keeping those runs beat doubling the workgroups:
    // at ngf=16, 128x128, the e1, l1 and d1 weight gradients (N = 48 or 96, K = 4096) ran
    // at 19, 25 and 23 GFLOP/s with 16x4 tiles on 2 or 3 workgroups, against 13, 19 and
    // 19 with 16x2 on 3 to 6 (2-core Intel Xeon, `examples/gemm_bench.rs`).
    let kernel_width = geometry.kernel[1] as u32;
    let weight_grad = matches!(op, ConvOp::Conv2dWeightGrad | ConvOp::ConvTranspose2dWeightGrad);
    let keeps_runs = |n: u32| weight_grad && n % kernel_width == 0 && (n / 2) % kernel_width != 0;
    let floor = min_workgroups(device);
    while workgroups(tiling) < floor {
        if tiling.tile_n > 2 && !keeps_runs(tiling.tile_n) {
            tiling.tile_n /= 2;
        } else if tiling.tile_m > 2 * lanes.max(4) {
            tiling.tile_m /= 2;
        } else {
            break;
        }
    }
}

/// The tensor a binding holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    Input,
    Weight,
    Bias,
    OutputGrad,
    /// The tensor the kernel writes: `y` for the forward ops, `dw` for the weight gradients.
    Output,
    /// The activation input whose sign masks the output ([`Fused::output_mask`]).
    Mask,
    /// The tensor added to the output ([`Fused::output_addend`]).
    Addend,
    /// The uniform block of sizes, [`GemmKernel::shape`].
    Shape,
}

/// Elementwise work fused into a GEMM kernel's loads and stores, so that it needs no
/// kernel of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fused {
    /// A leaky ReLU with this negative slope (0 for ReLU) applied to each A value as it is
    /// loaded.
    pub lhs_activation: Option<f32>,
    /// The same for B.
    pub rhs_activation: Option<f32>,
    /// A leaky ReLU gradient with this slope applied to each output before it is stored:
    /// the output is multiplied by the slope where the same element of the
    /// [`Operand::Mask`] binding (the activation's input) is not positive.
    pub output_mask: Option<f32>,
    /// Add the same element of the [`Operand::Addend`] binding to each output, after the
    /// mask, before it is stored.
    pub output_addend: bool,
}

/// Returns the operand roles of A and B (bindings 0 and 1) of `op`.
pub fn operand_roles(op: ConvOp) -> [Operand; 2] {
    match op {
        ConvOp::Conv2d | ConvOp::ConvTranspose2d => [Operand::Weight, Operand::Input],
        ConvOp::Conv2dWeightGrad => [Operand::OutputGrad, Operand::Input],
        ConvOp::ConvTranspose2dWeightGrad => [Operand::Input, Operand::OutputGrad],
    }
}

/// Checks that the generator accepts `geometry` for `op`.
pub fn check_geometry(op: ConvOp, geometry: &ConvGeometry) -> Result<(), GemmError> {
    problem::check_geometry(op, geometry)
}

/// The placement of a kernel's sizes: WGSL constants or a uniform block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// Every size is a WGSL constant, so each geometry is a shader of its own.
    Baked,
    /// Sizes that the `k` loop does not divide by come from a uniform block, so kernels of
    /// one op, tiling and kernel window share one shader and one pipeline. The weight
    /// gradients walk their pixels with counters, so their image size is no divisor.
    Uniform,
}

/// A specialised shader and how to run it.
#[derive(Clone, Debug)]
pub struct GemmKernel {
    pub label: String,
    pub wgsl: String,
    pub entry_point: &'static str,
    /// The tensors at bindings `0..` of group 0, in order. Only the output is read-write.
    pub bindings: Vec<Operand>,
    /// The workgroups to dispatch, folded into up to three dimensions.
    pub grid: Grid,
    /// Whether the shader needs `Features::SUBGROUP`.
    pub uses_subgroups: bool,
    /// Whether binding 0 (A) is declared as `array<vec4<f32>>`, four reduction steps of a
    /// row per element, rather than `array<f32>`.
    pub lhs_vectors: bool,
    /// Whether A and B are textures ([`Tiling::texture_operands`]): `Rgba32Float` for A
    /// with `lhs_vectors` and for B with `rhs_texels`, `R32Float` otherwise.
    pub texture_operands: bool,
    /// Whether B is an `Rgba32Float` texture of four consecutive elements a texel rather
    /// than `R32Float`.
    pub rhs_texels: bool,
    pub flops: u64,
    /// The contents of the [`Operand::Shape`] uniform block, as `i32` and `u32` bits.
    pub shape: Vec<u32>,
}

/// A geometry or tiling the generator cannot build a kernel for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GemmError {
    #[error("{op} geometry is invalid: {reason}")]
    InvalidGeometry { op: &'static str, reason: String },
    #[error("tiling {tiling:?} is invalid: {reason}")]
    InvalidTiling { tiling: Tiling, reason: String },
    #[error("{op} needs {workgroups} workgroups, more than a folded grid of {limit}^3 holds")]
    GridTooLarge { op: &'static str, workgroups: u64, limit: u32 },
}

/// Generates the kernel of `op` on `geometry` with `tiling`, its sizes in a uniform block
/// ([`Sizes::Uniform`]). A `bias` binding is added for the forward ops when `with_bias` is
/// set. The grid is folded so that no dimension exceeds `max_workgroups_per_dimension`.
pub fn generate(
    op: ConvOp,
    geometry: &ConvGeometry,
    tiling: &Tiling,
    with_bias: bool,
    max_workgroups_per_dimension: u32,
) -> Result<GemmKernel, GemmError> {
    let fused = Fused::default();
    let sizes = Sizes::Uniform;
    generate_fused(op, geometry, tiling, with_bias, fused, sizes, max_workgroups_per_dimension)
}

/// Generates the kernel as [`generate`] does, with the sizes where `sizes` puts them.
pub fn generate_with(
    op: ConvOp,
    geometry: &ConvGeometry,
    tiling: &Tiling,
    with_bias: bool,
    sizes: Sizes,
    max_workgroups_per_dimension: u32,
) -> Result<GemmKernel, GemmError> {
    let fused = Fused::default();
    generate_fused(op, geometry, tiling, with_bias, fused, sizes, max_workgroups_per_dimension)
}

/// Generates the kernel as [`generate_with`] does, with the elementwise work of `fused`.
pub fn generate_fused(
    op: ConvOp,
    geometry: &ConvGeometry,
    tiling: &Tiling,
    with_bias: bool,
    fused: Fused,
    sizes: Sizes,
    max_workgroups_per_dimension: u32,
) -> Result<GemmKernel, GemmError> {
    problem::check_geometry(op, geometry)?;
    check_tiling(tiling)?;
    let mut problem = Problem::new(op, geometry);
    // Pixel counters follow consecutive steps, and a lane of a split reduction skips steps.
    problem.pixel_counters = sizes == Sizes::Uniform && !tiling.split_k;
    // Runs give each lane neighbouring columns of its own, which a split reduction shares.
    if problem.row_runs_fit(tiling.k_chunk) && !tiling.split_k {
        problem.use_row_runs(tiling.tile_n);
    }
    if problem.tap_runs_fit(tiling.k_chunk, tiling.tile_n) && !tiling.split_k {
        problem.use_tap_runs(tiling.tile_n);
    }
    // Runs read B in consecutive stretches, which whole texels of four serve with about a
    // quarter of the fetches, when B's length allows four to a texel.
    let b_len = match op {
        ConvOp::ConvTranspose2dWeightGrad => {
            geometry.batch * geometry.out_channels * geometry.out_size[0] * geometry.out_size[1]
        }
        _ => geometry.batch * geometry.in_channels * geometry.in_size[0] * geometry.in_size[1],
    };
    let runs = problem.row_run.is_some() || problem.tap_run.is_some();
    problem.b_texels = tiling.texture_operands && runs && b_len % 4 == 0;
    let with_bias = with_bias && matches!(op, ConvOp::Conv2d | ConvOp::ConvTranspose2d);
    let mut kernel =
        emit::kernel(&problem, tiling, with_bias, &fused, sizes, max_workgroups_per_dimension)?;
    kernel.flops = geometry.flops(op);
    Ok(kernel)
}

fn check_tiling(tiling: &Tiling) -> Result<(), GemmError> {
    let invalid = |reason: &str| {
        Err(GemmError::InvalidTiling { tiling: *tiling, reason: reason.to_string() })
    };
    let sizes =
        [tiling.tile_m, tiling.tile_n, tiling.workgroup_size, tiling.k_chunk, tiling.block_m];
    if sizes.contains(&0) {
        return invalid("tile, block, chunk and workgroup sizes must be at least 1");
    }
    if let Some(size) = tiling.subgroup_size {
        if size == 0 || tiling.workgroup_size % size != 0 {
            return invalid("the workgroup size must be a multiple of the subgroup size");
        }
    }
    if tiling.split_k && tiling.subgroup_size != Some(tiling.workgroup_size) {
        return invalid("a split reduction needs a workgroup of exactly one subgroup");
    }
    Ok(())
}
