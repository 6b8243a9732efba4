//! Kernels of the ops that autodiff adds: weight, batch-norm, activation, pooling and
//! loss gradients, plus the layout ops (matmul, broadcast, slice) the rules use.
//!
//! Reshape needs no kernel: like `flatten`, it reads its operand's buffer. The
//! elementwise-shaped kernels are split into chunks that each fit one binding, as the
//! forward elementwise kernels are. Broadcast and slice chunk their output but bind their
//! whole operand, so an operand over one binding is rejected.
//!
//! conv2d_weight_grad is an implicit GEMM from [`super::gemm`]. The direct loop here, over
//! the output pixels with a small register block of channels per invocation, remains for
//! a geometry the GEMM generator rejects.

use super::elementwise::{elementwise_chunks, vector_chunks, Chunk};
use super::norm::STATS_AUX;
use super::wgsl::{f32_literal, fill, i, u};
use super::{Binding, CodegenError, Grid, Kernel, LowerContext, Resource};
use crate::ir::{NodeId, Op};

const RANDOM: &str = include_str!("../../shaders/random.wgsl");
const DROPOUT: &str = include_str!("../../shaders/dropout.wgsl");
const BINARY: &str = include_str!("../../shaders/binary.wgsl");
const CONV2D_WEIGHT_GRAD: &str = include_str!("../../shaders/conv2d_weight_grad.wgsl");
const BATCH_NORM_GRAD_STATS: &str = include_str!("../../shaders/batch_norm_grad_stats.wgsl");
const BATCH_NORM_SAVED_STATS: &str = include_str!("../../shaders/batch_norm_saved_stats.wgsl");
const BATCH_NORM_SCALE_GRAD: &str = include_str!("../../shaders/batch_norm_scale_grad.wgsl");
const BATCH_NORM_INPUT_GRAD: &str = include_str!("../../shaders/batch_norm_input_grad.wgsl");
const BATCH_NORM_BACKWARD: &str = include_str!("../../shaders/batch_norm_backward.wgsl");
const LOSS_GRAD: &str = include_str!("../../shaders/loss_grad.wgsl");
const CROSS_ENTROPY_GRAD: &str = include_str!("../../shaders/cross_entropy_grad.wgsl");
const MAX_POOL2D_GRAD: &str = include_str!("../../shaders/max_pool2d_grad.wgsl");
const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
const GATHER: &str = include_str!("../../shaders/gather.wgsl");

/// Folds a grid of one invocation per item, `WG` invocations a workgroup.
fn linear_grid(ctx: &LowerContext<'_>, role: &str, items: usize) -> Result<Grid, CodegenError> {
    let groups = (items as u64).div_ceil(u64::from(ctx.target.tuning.workgroup_size));
    Grid::fold(&ctx.kernel_name(role), groups, ctx.target.max_workgroups_per_dimension)
}

/// Folds a grid of one workgroup per channel.
fn channel_grid(ctx: &LowerContext<'_>, role: &str, channels: usize) -> Result<Grid, CodegenError> {
    Grid::fold(&ctx.kernel_name(role), channels as u64, ctx.target.max_workgroups_per_dimension)
}

/// Input channels each weight-gradient invocation covers, next to the output channels of
/// `Tuning::conv_out_channel_tile`.
const WEIGHT_GRAD_IN_CHANNEL_TILE: usize = 4;

pub(super) fn lower_conv2d_weight_grad(
    ctx: &LowerContext<'_>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Kernel, CodegenError> {
    if let Some(kernel) = super::conv::lower_conv2d_weight_grad_gemm(ctx)? {
        return Ok(kernel);
    }
    let role = "conv2d_weight_grad";
    let (x, dy, dw) = (ctx.operand_dims(0), ctx.operand_dims(1), ctx.dims().to_vec());
    let (ci, co, kh, kw) = (x[1], dy[1], dw[2], dw[3]);
    let out_tile = (ctx.target.tuning.conv_out_channel_tile as usize).clamp(1, co);
    let in_tile = WEIGHT_GRAD_IN_CHANNEL_TILE.clamp(1, ci);
    let (co_groups, ci_groups) = (co.div_ceil(out_tile), ci.div_ceil(in_tile));
    let grid = linear_grid(ctx, role, co_groups * ci_groups * kh * kw)?;
    let constants = vec![
        ("WG", u(ctx.target.tuning.workgroup_size)),
        ("N", u(x[0] as u64)),
        ("CI", u(ci as u64)),
        ("H", u(x[2] as u64)),
        ("W", u(x[3] as u64)),
        ("CO", u(co as u64)),
        ("OH", u(dy[2] as u64)),
        ("OW", u(dy[3] as u64)),
        ("KH", u(kh as u64)),
        ("KW", u(kw as u64)),
        ("SH", u(stride[0] as u64)),
        ("SW", u(stride[1] as u64)),
        ("PH", i(padding[0] as i64)),
        ("PW", i(padding[1] as i64)),
        ("COT", u(out_tile as u64)),
        ("CIT", u(in_tile as u64)),
        ("CO_GROUPS", u(co_groups as u64)),
        ("CI_GROUPS", u(ci_groups as u64)),
    ];
    let bindings = vec![ctx.read("x", 0), ctx.read("dy", 1), ctx.output("dw")];
    let flops = 2 * (dy[0] * dy[2] * dy[3]) as u64 * ctx.numel() as u64;
    Ok(ctx.kernel(role, CONV2D_WEIGHT_GRAD, &constants, bindings, grid, flops))
}

/// Constants of the per-channel batch-norm gradient kernels, for x of `dims` read in
/// values of `lanes` elements: `VS` values per channel and image, `VM` per channel.
fn batch_norm_constants(
    ctx: &LowerContext<'_>,
    dims: &[usize],
    eps: f32,
    lanes: usize,
) -> Vec<(&'static str, String)> {
    let spatial: usize = dims[2..].iter().product();
    vec![
        ("WG", u(ctx.target.workgroup_sum().0)),
        ("C", u(dims[1] as u64)),
        ("S", u(spatial as u64)),
        ("M", u((dims[0] * spatial) as u64)),
        ("LANES", u(lanes as u64)),
        ("VS", u((spatial / lanes) as u64)),
        ("VM", u((dims[0] * spatial / lanes) as u64)),
        ("EPS", f32_literal(eps)),
    ]
}

/// Returns the elements per value of the per-channel kernels over x of `dims`: 4, one
/// vec4, when a channel of an image is a multiple of 4 long, else 1.
pub(super) fn channel_lanes(dims: &[usize]) -> usize {
    let spatial: usize = dims[2..].iter().product();
    if spatial % 4 == 0 {
        4
    } else {
        1
    }
}

/// Returns the WGSL that defines the value type `T` of `lanes` elements and
/// `lanes_sum`, the sum of a value's elements, and `element`, the index of value `j` of
/// channel `c` of `[N, C, S]` read as values of `T`.
pub(super) fn channel_values(lanes: usize) -> String {
    let (alias, sum) =
        if lanes == 4 { ("vec4<f32>", "v.x + v.y + v.z + v.w") } else { ("f32", "v") };
    format!(
        "alias T = {alias};\n\nfn lanes_sum(v: T) -> f32 {{\n    return {sum};\n}}\n\n\
         // element(c, j) is the index of value j of channel c, with VS values of type T per\n\
         // channel and image.\n\
         fn element(c: u32, j: u32) -> u32 {{\n    return ((j / VS) * C + c) * VS + j % VS;\n}}\n"
    )
}

/// Declares `binding` as `vec4<f32>` values when `lanes` is 4.
pub(super) fn with_lanes(binding: Binding, lanes: usize) -> Binding {
    if lanes == 4 {
        binding.vec4()
    } else {
        binding
    }
}

/// Returns the statistics buffer of the forward batch_norm that normalized this gradient
/// op's x (operand 0) with `eps`, when exactly one did. The forward pass keeps it for the
/// whole program, so the backward kernels read the mean and variance instead of two more
/// passes over x.
fn saved_statistics(ctx: &LowerContext<'_>, eps: f32) -> Option<Resource> {
    let x = ctx.operands()[0];
    let forward: Vec<NodeId> = ctx
        .graph
        .users(x)
        .into_iter()
        .filter(|&(user, slot)| {
            slot == 0 && matches!(ctx.graph.node(user).op, Op::BatchNorm { eps: e, .. } if e == eps)
        })
        .map(|(user, _)| user)
        .collect();
    match forward.as_slice() {
        [node] if ctx.mode.uses_batch_statistics() => {
            Some(Resource::Aux { node: *node, index: STATS_AUX })
        }
        _ => None,
    }
}

/// Returns the statistics snippet of a batch-norm gradient kernel and the binding it
/// needs: the saved statistics when [`saved_statistics`] finds them, else a recomputation
/// from x.
/// Returns the WGSL of a per-channel batch-norm gradient kernel: the value helpers, the
/// workgroup sum, the `statistics` source and the kernel `template`.
fn batch_norm_grad_body(
    ctx: &LowerContext<'_>,
    lanes: usize,
    statistics: &str,
    template: &str,
) -> String {
    format!("{}\n{}\n{statistics}\n{template}", channel_values(lanes), ctx.target.workgroup_sum().1)
}

fn statistics_source(
    ctx: &LowerContext<'_>,
    eps: f32,
    channels: usize,
) -> (&'static str, Option<Binding>) {
    match saved_statistics(ctx, eps) {
        Some(stats) => (BATCH_NORM_SAVED_STATS, Some(Binding::read("saved", stats, 2 * channels))),
        None => (BATCH_NORM_GRAD_STATS, None),
    }
}

pub(super) fn lower_batch_norm_scale_grad(
    ctx: &LowerContext<'_>,
    eps: f32,
) -> Result<Kernel, CodegenError> {
    let role = "batch_norm_scale_grad";
    let dims = ctx.operand_dims(0);
    let grid = channel_grid(ctx, role, dims[1])?;
    let lanes = channel_lanes(&dims);
    let constants = batch_norm_constants(ctx, &dims, eps, lanes);
    let (statistics, saved) = statistics_source(ctx, eps, dims[1]);
    let body = batch_norm_grad_body(ctx, lanes, statistics, BATCH_NORM_SCALE_GRAD);
    let mut bindings = vec![
        with_lanes(ctx.read("x", 0), lanes),
        with_lanes(ctx.read("dy", 1), lanes),
        ctx.output("scale_grad"),
    ];
    bindings.extend(saved);
    let flops = 8 * ctx.graph.shape(ctx.operands()[0]).numel() as u64;
    Ok(ctx.kernel(role, &body, &constants, bindings, grid, flops))
}

pub(super) fn lower_batch_norm_input_grad(
    ctx: &LowerContext<'_>,
    eps: f32,
) -> Result<Kernel, CodegenError> {
    let role = "batch_norm_input_grad";
    let dims = ctx.dims().to_vec();
    let grid = channel_grid(ctx, role, dims[1])?;
    let lanes = channel_lanes(&dims);
    let constants = batch_norm_constants(ctx, &dims, eps, lanes);
    let (statistics, saved) = statistics_source(ctx, eps, dims[1]);
    let body = batch_norm_grad_body(ctx, lanes, statistics, BATCH_NORM_INPUT_GRAD);
    let mut bindings = vec![
        with_lanes(ctx.read("x", 0), lanes),
        ctx.read("scale", 1),
        with_lanes(ctx.read("dy", 2), lanes),
        ctx.read("scale_grad", 3),
        ctx.read("offset_grad", 4),
        with_lanes(ctx.output("dx"), lanes),
    ];
    bindings.extend(saved);
    let flops = 12 * ctx.numel() as u64;
    Ok(ctx.kernel(role, &body, &constants, bindings, grid, flops))
}

/// Lowers batch norm's whole backward pass at its input-gradient node: one kernel that
/// writes the `offset_grad` and `scale_grad` nodes' values and this node's dx.
pub(super) fn lower_batch_norm_backward(
    ctx: &LowerContext<'_>,
    eps: f32,
    scale_grad: NodeId,
    offset_grad: NodeId,
) -> Result<Kernel, CodegenError> {
    let role = "batch_norm_backward";
    let dims = ctx.dims().to_vec();
    let channels = dims[1];
    let grid = channel_grid(ctx, role, channels)?;
    let lanes = channel_lanes(&dims);
    let constants = batch_norm_constants(ctx, &dims, eps, lanes);
    let (statistics, saved) = statistics_source(ctx, eps, channels);
    let body = batch_norm_grad_body(ctx, lanes, statistics, BATCH_NORM_BACKWARD);
    let mut bindings = vec![
        with_lanes(ctx.read("x", 0), lanes),
        ctx.read("scale", 1),
        with_lanes(ctx.read("dy", 2), lanes),
        Binding::write("scale_grad", Resource::Node(scale_grad), channels),
        Binding::write("offset_grad", Resource::Node(offset_grad), channels),
        with_lanes(ctx.output("dx"), lanes),
    ];
    bindings.extend(saved);
    let flops = 16 * ctx.numel() as u64;
    Ok(ctx.kernel(role, &body, &constants, bindings, grid, flops))
}

pub(super) fn lower_leaky_relu_grad(
    ctx: &LowerContext<'_>,
    slope: f32,
) -> Result<Vec<Kernel>, CodegenError> {
    let role = "leaky_relu_grad";
    let expression = format!("select(rhs * {}, rhs, lhs > T(0.0))", f32_literal(slope));
    let body =
        fill(BINARY, &[("A_INDEX", "i".into()), ("B_INDEX", "i".into()), ("EXPR", expression)]);
    let chunks = vector_chunks(ctx, role, ctx.numel(), true)?;
    Ok(chunks
        .into_iter()
        .map(|c| {
            let bindings = vec![
                c.values(ctx.read("a", 0).range(c.start, c.len)),
                c.values(ctx.read("b", 1).range(c.start, c.len)),
                c.values(ctx.output("y").range(c.start, c.len)),
            ];
            let body = format!("{}{body}", c.alias());
            ctx.kernel(&c.role, &body, &c.constants, bindings, c.grid, c.len as u64)
        })
        .collect())
}

/// Lowers a dropout gradient with the forward dropout kernel itself, keyed by the forward
/// node, so the mask is the same one the forward pass drew.
pub(super) fn lower_dropout_grad(
    ctx: &LowerContext<'_>,
    p: f32,
    forward: NodeId,
) -> Result<Vec<Kernel>, CodegenError> {
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let body = format!("{RANDOM}\n{DROPOUT}");
    let chunks = elementwise_chunks(ctx, "dropout_grad", ctx.numel())?;
    Ok(chunks
        .into_iter()
        .map(|mut c| {
            c.constants.extend([
                ("NODE", u(forward.index() as u64)),
                ("THRESHOLD", u(super::dropout_threshold(p))),
                ("SCALE", f32_literal(scale)),
            ]);
            let bindings = vec![
                ctx.read("x", 0).range(c.start, c.len),
                ctx.output("y").range(c.start, c.len),
                Binding::run_values(),
            ];
            ctx.kernel(&c.role, &body, &c.constants, bindings, c.grid, c.len as u64)
        })
        .collect())
}

pub(super) fn lower_max_pool2d_grad(
    ctx: &LowerContext<'_>,
    kernel: [usize; 2],
    stride: [usize; 2],
) -> Result<Kernel, CodegenError> {
    let role = "max_pool2d_grad";
    let (x, dy) = (ctx.operand_dims(0), ctx.operand_dims(1));
    let grid = linear_grid(ctx, role, ctx.numel())?;
    let constants = vec![
        ("WG", u(ctx.target.tuning.workgroup_size)),
        ("PLANES", u((x[0] * x[1]) as u64)),
        ("H", u(x[2] as u64)),
        ("W", u(x[3] as u64)),
        ("OH", u(dy[2] as u64)),
        ("OW", u(dy[3] as u64)),
        ("KH", u(kernel[0] as u64)),
        ("KW", u(kernel[1] as u64)),
        ("SH", u(stride[0] as u64)),
        ("SW", u(stride[1] as u64)),
    ];
    let bindings = vec![ctx.read("x", 0), ctx.read("dy", 1), ctx.output("dx")];
    let flops = (kernel[0] * kernel[1]) as u64 * ctx.numel() as u64;
    Ok(ctx.kernel(role, MAX_POOL2D_GRAD, &constants, bindings, grid, flops))
}

/// Lowers the gradient of a mean loss with respect to its first operand.
pub(super) fn lower_loss_grad(
    ctx: &LowerContext<'_>,
    op: &Op,
) -> Result<Vec<Kernel>, CodegenError> {
    let count = ctx.numel();
    let expression = match op {
        Op::BceWithLogitsGrad => "g * (stable_sigmoid(a) - b) * INV_N",
        Op::L1LossGrad => "g * sign(a - b) * INV_N",
        other => unreachable!("{} is not an elementwise loss gradient", other.name()),
    };
    let scalar_target = ctx.operand_dims(1).is_empty() && count > 1;
    let body = fill(
        LOSS_GRAD,
        &[("B_INDEX", if scalar_target { "0u" } else { "i" }.into()), ("EXPR", expression.into())],
    );
    let target = |c: &Chunk| {
        let binding = ctx.read("y", 1);
        if scalar_target {
            binding
        } else {
            binding.range(c.start, c.len)
        }
    };
    let chunks = elementwise_chunks(ctx, op.name(), count)?;
    Ok(chunks
        .into_iter()
        .map(|mut c| {
            // The mean's factor is over the whole tensor, not the chunk.
            c.constants.push(("INV_N", f32_literal((1.0 / count as f64) as f32)));
            let bindings = vec![
                ctx.read("x", 0).range(c.start, c.len),
                target(&c),
                ctx.read("dy", 2),
                ctx.output("dx").range(c.start, c.len),
            ];
            ctx.kernel(&c.role, &body, &c.constants, bindings, c.grid, 6 * c.len as u64)
        })
        .collect())
}

pub(super) fn lower_cross_entropy_grad(ctx: &LowerContext<'_>) -> Result<Kernel, CodegenError> {
    let role = "cross_entropy_grad";
    let dims = ctx.dims().to_vec();
    let grid = linear_grid(ctx, role, dims[0])?;
    let constants = vec![
        ("WG", u(ctx.target.tuning.workgroup_size)),
        ("ROWS", u(dims[0] as u64)),
        ("K", u(dims[1] as u64)),
    ];
    let bindings =
        vec![ctx.read("logits", 0), ctx.read("labels", 1), ctx.read("dy", 2), ctx.output("dx")];
    Ok(ctx.kernel(role, CROSS_ENTROPY_GRAD, &constants, bindings, grid, 6 * ctx.numel() as u64))
}

pub(super) fn lower_matmul(
    ctx: &LowerContext<'_>,
    transpose_a: bool,
    transpose_b: bool,
) -> Result<Kernel, CodegenError> {
    let role = "matmul";
    let a = ctx.operand_dims(0);
    let out = ctx.dims().to_vec();
    let (m, n) = (out[0], out[1]);
    let k = if transpose_a { a[0] } else { a[1] };
    let grid = linear_grid(ctx, role, m * n)?;
    let constants = vec![
        ("WG", u(ctx.target.tuning.workgroup_size)),
        ("M", u(m as u64)),
        ("N", u(n as u64)),
        ("K", u(k as u64)),
    ];
    let a_at = if transpose_a { "p * M + i" } else { "i * K + p" };
    let b_at = if transpose_b { "j * K + p" } else { "p * N + j" };
    let body = fill(MATMUL, &[("A_AT", a_at.into()), ("B_AT", b_at.into())]);
    let bindings = vec![ctx.read("a", 0), ctx.read("b", 1), ctx.output("y")];
    Ok(ctx.kernel(role, &body, &constants, bindings, grid, 2 * (m * n * k) as u64))
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; dims.len()];
    for axis in (0..dims.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * dims[axis + 1];
    }
    strides
}

/// Lowers a gather whose source index of output value `g` is `source(lanes)`, for values
/// of `lanes` elements: vec4s when `vectors` is set and the count is a multiple of 4.
fn lower_gather(
    ctx: &LowerContext<'_>,
    role: &str,
    vectors: bool,
    source: impl Fn(usize) -> String,
) -> Result<Vec<Kernel>, CodegenError> {
    let chunks = vector_chunks(ctx, role, ctx.numel(), vectors)?;
    Ok(chunks
        .into_iter()
        .map(|c| {
            let body = fill(GATHER, &[("SOURCE", source(c.lanes as usize))]);
            let body = format!("{}{body}", c.alias());
            let bindings =
                vec![c.values(ctx.read("x", 0)), c.values(ctx.output("y").range(c.start, c.len))];
            ctx.kernel(&c.role, &body, &c.constants, bindings, c.grid, 0)
        })
        .collect())
}

pub(super) fn lower_broadcast(
    ctx: &LowerContext<'_>,
    axes: &[usize],
) -> Result<Vec<Kernel>, CodegenError> {
    // The source index sums, over the axes that the operand keeps, the output coordinate
    // times the operand's stride. A scalar operand is read at 0.
    let dims = ctx.dims().to_vec();
    let out_strides = strides(&dims);
    let kept: Vec<usize> = if axes.is_empty() {
        Vec::new()
    } else {
        (0..dims.len()).filter(|a| !axes.contains(a)).collect()
    };
    let kept_dims: Vec<usize> = kept.iter().map(|&a| dims[a]).collect();
    let source_strides = strides(&kept_dims);
    let terms: Vec<String> = kept
        .iter()
        .zip(&source_strides)
        .map(|(&axis, &stride)| {
            format!("((g / {}u) % {}u) * {}u", out_strides[axis], dims[axis], stride)
        })
        .collect();
    let source = if terms.is_empty() { "0u".to_string() } else { terms.join(" + ") };
    lower_gather(ctx, "broadcast", false, |_| source.clone())
}

pub(super) fn lower_slice(
    ctx: &LowerContext<'_>,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<Vec<Kernel>, CodegenError> {
    let input = ctx.operand_dims(0);
    let inner: usize = input[axis + 1..].iter().product();
    let (block, source_block, offset) = (len * inner, input[axis] * inner, start * inner);
    // Whole vec4s when the slice's blocks and its offset are.
    let vectors = [block, source_block, offset].iter().all(|v| v % 4 == 0);
    lower_gather(ctx, "slice", vectors, |lanes| {
        format!(
            "(g / {block}u) * {source_block}u + {offset}u + g % {block}u",
            block = block / lanes,
            source_block = source_block / lanes,
            offset = offset / lanes,
        )
    })
}
