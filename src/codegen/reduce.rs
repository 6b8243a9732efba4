//! Reductions and losses.
//!
//! A reduction that keeps some axes runs one workgroup per output element. A full
//! reduction (every axis, and every loss) runs in two stages: many workgroups write
//! partial sums into the node's aux buffer 0, then one workgroup adds them up.

use super::wgsl::{f32_literal, fill, u};
use super::{Binding, CodegenError, Grid, Kernel, LowerContext, Resource};
use crate::ir::Op;

const AXES: &str = include_str!("../../shaders/reduce_axes.wgsl");
const CHANNEL_SUM: &str = include_str!("../../shaders/channel_sum.wgsl");
const PARTIAL: &str = include_str!("../../shaders/reduce_partial.wgsl");
const FINAL: &str = include_str!("../../shaders/reduce_final.wgsl");

/// The aux buffer of a full reduction's partial sums.
pub const PARTIALS_AUX: u32 = 0;

/// WGSL statements that add to `offset` the memory offset of the multi-index encoded in
/// `rest`, over the listed axes of `dims` (row-major, the last axis fastest).
fn offset_statements(dims: &[usize], axes: &[usize]) -> String {
    let strides: Vec<usize> = (0..dims.len()).map(|a| dims[a + 1..].iter().product()).collect();
    let mut code = String::new();
    for &axis in axes.iter().rev() {
        code.push_str(&format!(
            "    offset += (rest % {d}u) * {s}u;\n    rest /= {d}u;\n",
            d = dims[axis],
            s = strides[axis]
        ));
    }
    code
}

pub(super) fn lower_sum(
    ctx: &LowerContext<'_>,
    axes: &[usize],
    mean: bool,
) -> Result<Vec<Kernel>, CodegenError> {
    let dims = ctx.operand_dims(0);
    let role = if mean { "mean" } else { "sum" };
    let reduced: Vec<usize> =
        if axes.is_empty() { (0..dims.len()).collect() } else { axes.to_vec() };
    let kept: Vec<usize> = (0..dims.len()).filter(|a| !reduced.contains(a)).collect();
    let reduced_count: usize = reduced.iter().map(|&a| dims[a]).product();
    let scale = if mean { 1.0 / reduced_count.max(1) as f64 } else { 1.0 };

    if kept.is_empty() {
        let term = "    return x[i];".to_string();
        let count = dims.iter().product();
        return full_reduction(ctx, role, term, count, scale, vec![ctx.read("x", 0)]);
    }

    if dims.len() >= 3 && kept == [1] {
        return Ok(vec![channel_sum(ctx, role, &dims, scale)?]);
    }

    let outputs = ctx.numel();
    let grid = Grid::fold(
        &ctx.kernel_name(role),
        outputs as u64,
        ctx.target.max_workgroups_per_dimension,
    )?;
    let (wg, sum) = ctx.target.workgroup_sum();
    let constants = vec![
        ("WG", u(wg)),
        ("OUTPUTS", u(outputs as u64)),
        ("REDUCED", u(reduced_count as u64)),
        ("SCALE", f32_literal(scale as f32)),
    ];
    let body = fill(
        AXES,
        &[
            ("KEPT", offset_statements(&dims, &kept)),
            ("REDUCED", offset_statements(&dims, &reduced)),
        ],
    );
    let body = format!("{sum}\n{body}");
    let bindings = vec![ctx.read("x", 0), ctx.output("y")];
    let flops = dims.iter().product::<usize>() as u64;
    Ok(vec![ctx.kernel(role, &body, &constants, bindings, grid, flops)])
}

/// Lowers a sum (or mean, by `scale`) of `[N, C, ...]` over every axis but the channels,
/// such as batch norm's offset gradient or a convolution's bias gradient. One workgroup
/// sums each channel, reading vec4 values when a channel of an image is a multiple of 4.
fn channel_sum(
    ctx: &LowerContext<'_>,
    role: &str,
    dims: &[usize],
    scale: f64,
) -> Result<Kernel, CodegenError> {
    let lanes = super::grad::channel_lanes(dims);
    let spatial: usize = dims[2..].iter().product();
    let grid = Grid::fold(
        &ctx.kernel_name(role),
        dims[1] as u64,
        ctx.target.max_workgroups_per_dimension,
    )?;
    let (wg, sum) = ctx.target.workgroup_sum();
    let constants = vec![
        ("WG", u(wg)),
        ("C", u(dims[1] as u64)),
        ("VS", u((spatial / lanes) as u64)),
        ("VM", u((dims[0] * spatial / lanes) as u64)),
        ("SCALE", f32_literal(scale as f32)),
    ];
    let body = format!("{}\n{sum}\n{CHANNEL_SUM}", super::grad::channel_values(lanes));
    let bindings = vec![super::grad::with_lanes(ctx.read("x", 0), lanes), ctx.output("y")];
    let flops = dims.iter().product::<usize>() as u64;
    Ok(ctx.kernel(role, &body, &constants, bindings, grid, flops))
}

pub(super) fn lower_loss(ctx: &LowerContext<'_>, op: &Op) -> Result<Vec<Kernel>, CodegenError> {
    let dims = ctx.operand_dims(0);
    let count: usize = dims.iter().product();
    let target_is_scalar = ctx.operand_dims(1).is_empty() && count > 1;
    let target = if target_is_scalar { "b[0]" } else { "b[i]" };
    let (term, terms) = match op {
        Op::L1Loss => ("    return abs(a[i] - b[i]);".to_string(), count),
        Op::MseLoss => ("    let d = a[i] - b[i];\n    return d * d;".to_string(), count),
        // The stable form max(x, 0) - x * y + log(1 + exp(-|x|)), finite for any logit.
        Op::BceWithLogits => (
            format!(
                "    let v = a[i];\n    let t = {target};\n    \
                 return max(v, 0.0) - v * t + log(1.0 + exp(-abs(v)));"
            ),
            count,
        ),
        Op::CrossEntropy => {
            let classes = dims[1];
            (cross_entropy_term(classes), dims[0])
        }
        other => unreachable!("{} is not a loss", other.name()),
    };
    let scale = 1.0 / terms.max(1) as f64;
    let bindings = vec![ctx.read("a", 0), ctx.read("b", 1)];
    full_reduction(ctx, op.name(), term, terms, scale, bindings)
}

/// The per-row term of softmax cross-entropy: logsumexp of the row minus the logit of
/// the row's class. A class index outside `0..K` is clamped into it.
fn cross_entropy_term(classes: usize) -> String {
    format!(
        "    let row = i * {k}u;\n    \
         var m = a[row];\n    \
         for (var k = 1u; k < {k}u; k += 1u) {{ m = max(m, a[row + k]); }}\n    \
         var s = 0.0;\n    \
         for (var k = 0u; k < {k}u; k += 1u) {{ s += exp(a[row + k] - m); }}\n    \
         let label = min(u32(max(b[i], 0.0)), {last}u);\n    \
         return log(s) + m - a[row + label];",
        k = classes,
        last = classes - 1
    )
}

/// Emits the two kernels of a full reduction of `terms` values of `term(i)`, scaled by
/// `scale`, into the node's scalar output.
fn full_reduction(
    ctx: &LowerContext<'_>,
    role: &str,
    term: String,
    terms: usize,
    scale: f64,
    mut inputs: Vec<Binding>,
) -> Result<Vec<Kernel>, CodegenError> {
    let tuning = &ctx.target.tuning;
    let (wg, sum) = ctx.target.workgroup_sum();
    let wg = u64::from(wg);
    let parts = (terms as u64).div_ceil(wg * 16).clamp(1, u64::from(tuning.reduce_max_groups));
    let partials = Resource::Aux { node: ctx.node, index: PARTIALS_AUX };

    let partial_role = format!("{role}_partial");
    let grid = Grid::fold(
        &ctx.kernel_name(&partial_role),
        parts,
        ctx.target.max_workgroups_per_dimension,
    )?;
    let constants = vec![("WG", u(wg)), ("COUNT", u(terms as u64))];
    let body = format!("{sum}\n{}", fill(PARTIAL, &[("TERM", term)]));
    inputs.push(Binding::write("partials", partials, parts as usize));
    let flops = 3 * terms as u64;
    let first = ctx.kernel(&partial_role, &body, &constants, inputs, grid, flops);

    let grid = Grid::fold(&ctx.kernel_name(role), 1, ctx.target.max_workgroups_per_dimension)?;
    let constants = vec![("WG", u(wg)), ("PARTS", u(parts)), ("SCALE", f32_literal(scale as f32))];
    let body = format!("{sum}\n{FINAL}");
    let bindings = vec![Binding::read("partials", partials, parts as usize), ctx.output("y")];
    let second = ctx.kernel(role, &body, &constants, bindings, grid, parts);
    Ok(vec![first, second])
}
