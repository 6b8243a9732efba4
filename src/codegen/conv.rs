//! Convolutions: conv2d and conv_transpose2d as implicit GEMMs from [`super::gemm`], with
//! the tiling [`gemm::choose_tiling`] picks for the target. The direct kernels (each
//! invocation accumulating a tile of output channels for one output pixel) remain for a
//! geometry the GEMM generator rejects.

use super::gemm::{self, ConvGeometry, ConvOp, DeviceProfile, GemmError, Operand};
use super::wgsl::{fill, i, u};
use super::{Binding, CodegenError, Grid, Kernel, LowerContext, Target};

const CONV2D: &str = include_str!("../../shaders/conv2d.wgsl");
const CONV_TRANSPOSE2D: &str = include_str!("../../shaders/conv_transpose2d.wgsl");

/// Builds the tiling inputs of a target. `max_invocations` is WebGPU's guaranteed minimum, because
/// the target does not record the adapter's.
fn device_profile(target: &Target) -> DeviceProfile {
    DeviceProfile {
        fixed_subgroup_size: if target.subgroups { target.subgroup_size } else { None },
        max_invocations: 256,
        cpu: target.cpu,
    }
}

/// Lowers either convolution as an implicit GEMM, or returns `None` when the generator
/// rejects the geometry or tiling (the caller then uses the direct kernel).
fn lower_gemm(
    ctx: &LowerContext<'_>,
    role: &str,
    op: ConvOp,
    geometry: &ConvGeometry,
) -> Result<Option<Kernel>, CodegenError> {
    let name = ctx.kernel_name(role);
    let tiling = gemm::choose_tiling(op, geometry, &device_profile(ctx.target));
    let has_bias = ctx.operand_count() == 3;
    let max = ctx.target.max_workgroups_per_dimension;
    let generated = match gemm::generate(op, geometry, &tiling, has_bias, max) {
        Ok(generated) => generated,
        Err(GemmError::GridTooLarge { workgroups, limit, .. }) => {
            return Err(CodegenError::GridTooLarge { kernel: name, workgroups, limit });
        }
        Err(error) => {
            tracing::warn!(kernel = %name, %error, "implicit GEMM rejected; using the direct kernel");
            return Ok(None);
        }
    };

    // The generated shader names its bindings lhs, rhs, dst and bias, in that order. The
    // operand slots are those of conv2d, conv_transpose2d (x, weight, bias) and of the IR's
    // conv2d_weight_grad (x, dy).
    let names = ["lhs", "rhs", "dst", "bias"];
    let bindings = generated
        .bindings
        .iter()
        .zip(names)
        .map(|(operand, name)| match operand {
            Operand::Input => ctx.read(name, 0),
            Operand::Weight | Operand::OutputGrad => ctx.read(name, 1),
            Operand::Bias => ctx.read(name, 2),
            Operand::Output => ctx.output(name),
        })
        .collect();
    let wgsl = format!("// netc kernel {name}\n\n{}", generated.wgsl);
    Ok(Some(Kernel {
        name,
        node: ctx.node,
        wgsl,
        bindings,
        grid: generated.grid,
        flops: generated.flops,
    }))
}

/// Builds the GEMM geometry of the node: input operand 0, output the node itself.
fn geometry(ctx: &LowerContext<'_>, stride: [usize; 2], padding: [usize; 2]) -> ConvGeometry {
    let x = ctx.operand_dims(0);
    let weight = ctx.operand_dims(1);
    let out = ctx.dims();
    ConvGeometry {
        batch: x[0],
        in_channels: x[1],
        in_size: [x[2], x[3]],
        out_channels: out[1],
        out_size: [out[2], out[3]],
        kernel: [weight[2], weight[3]],
        stride,
        padding,
    }
}

/// Lowers the IR's conv2d_weight_grad (operands x and dy, output the weight's shape) as an
/// implicit GEMM, or returns `None` when the generator rejects it.
pub(super) fn lower_conv2d_weight_grad_gemm(
    ctx: &LowerContext<'_>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Option<Kernel>, CodegenError> {
    let (x, dy, dw) = (ctx.operand_dims(0), ctx.operand_dims(1), ctx.dims());
    let geometry = ConvGeometry {
        batch: x[0],
        in_channels: x[1],
        in_size: [x[2], x[3]],
        out_channels: dy[1],
        out_size: [dy[2], dy[3]],
        kernel: [dw[2], dw[3]],
        stride,
        padding,
    };
    lower_gemm(ctx, "conv2d_weight_grad", ConvOp::Conv2dWeightGrad, &geometry)
}

/// Lowers either convolution directly; the two share constants and differ in the
/// template and in where the weight keeps its channel axes.
fn lower_direct(
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
    let geometry = geometry(ctx, stride, padding);
    match lower_gemm(ctx, "conv2d", ConvOp::Conv2d, &geometry)? {
        Some(kernel) => Ok(kernel),
        None => lower_direct(ctx, "conv2d", CONV2D, stride, padding),
    }
}

/// Lowers a conv_transpose2d. The flop count of the GEMM kernel covers only the taps that reach an output. That of
/// the direct kernel counts every tap of the gather, including the ones the stride skips,
/// so it is an upper bound of about `stride^2` times the useful work.
pub(super) fn lower_conv_transpose2d(
    ctx: &LowerContext<'_>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Kernel, CodegenError> {
    let geometry = geometry(ctx, stride, padding);
    match lower_gemm(ctx, "conv_transpose2d", ConvOp::ConvTranspose2d, &geometry)? {
        Some(kernel) => Ok(kernel),
        None => lower_direct(ctx, "conv_transpose2d", CONV_TRANSPOSE2D, stride, padding),
    }
}
