//! Direct convolutions: conv2d and conv_transpose2d, each invocation accumulating a tile
//! of output channels for one output pixel.
//!
//! FIXME(perf): these are direct loops; implicit-GEMM lowerings with larger register
//! tiles (and subgroup sharing where the target has it) belong here, chosen by `Tuning`.

use super::wgsl::{fill, i, u};
use super::{Binding, CodegenError, Grid, Kernel, LowerContext};

const CONV2D: &str = include_str!("../../shaders/conv2d.wgsl");
const CONV_TRANSPOSE2D: &str = include_str!("../../shaders/conv_transpose2d.wgsl");

/// Lowers either convolution; the two share constants and differ in the template and in
/// where the weight keeps its channel axes.
fn lower_conv(
    ctx: &LowerContext<'_>,
    role: &str,
    template: &str,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Kernel, CodegenError> {
    let x = ctx.operand_dims(0);
    let weight = ctx.operand_dims(1);
    let out = ctx.dims().to_vec();
    let (n, ci, h, w) = (x[0], x[1], x[2], x[3]);
    let (co, oh, ow) = (out[1], out[2], out[3]);
    let (kh, kw) = (weight[2], weight[3]);

    let tuning = &ctx.target.tuning;
    let tile = (tuning.conv_out_channel_tile as usize).clamp(1, co);
    let co_groups = co.div_ceil(tile);
    let invocations = (n * oh * ow * co_groups) as u64;
    let groups = invocations.div_ceil(u64::from(tuning.workgroup_size));
    let grid = Grid::fold(&ctx.kernel_name(role), groups, ctx.target.max_workgroups_per_dimension)?;

    let constants = vec![
        ("WG", u(tuning.workgroup_size)),
        ("N", u(n as u64)),
        ("CI", u(ci as u64)),
        ("H", u(h as u64)),
        ("W", u(w as u64)),
        ("CO", u(co as u64)),
        ("OH", u(oh as u64)),
        ("OW", u(ow as u64)),
        ("KH", u(kh as u64)),
        ("KW", u(kw as u64)),
        ("SH", u(stride[0] as u64)),
        ("SW", u(stride[1] as u64)),
        ("PH", i(padding[0] as i64)),
        ("PW", i(padding[1] as i64)),
        ("COT", u(tile as u64)),
        ("CO_GROUPS", u(co_groups as u64)),
    ];
    let has_bias = ctx.operand_count() == 3;
    let body = fill(template, &[("BIAS", if has_bias { "b[co]" } else { "0.0" }.to_string())]);
    let mut bindings: Vec<Binding> = vec![ctx.read("x", 0), ctx.read("w", 1)];
    if has_bias {
        bindings.push(ctx.read("b", 2));
    }
    bindings.push(ctx.output("y"));
    let flops = 2 * (n * co * oh * ow) as u64 * (ci * kh * kw) as u64;
    Ok(ctx.kernel(role, &body, &constants, bindings, grid, flops))
}

pub(super) fn lower_conv2d(
    ctx: &LowerContext<'_>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Kernel, CodegenError> {
    lower_conv(ctx, "conv2d", CONV2D, stride, padding)
}

/// The flop estimate counts every tap of the gather, including the ones the stride
/// skips, so it is an upper bound of about `stride^2` times the useful work.
pub(super) fn lower_conv_transpose2d(
    ctx: &LowerContext<'_>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Kernel, CodegenError> {
    lower_conv(ctx, "conv_transpose2d", CONV_TRANSPOSE2D, stride, padding)
}
