//! Linear layers and max pooling.

use super::wgsl::{fill, u};
use super::{Binding, CodegenError, Grid, Kernel, LowerContext};

const LINEAR: &str = include_str!("../../shaders/linear.wgsl");
const MAX_POOL2D: &str = include_str!("../../shaders/max_pool2d.wgsl");

fn one_per_invocation(
    ctx: &LowerContext<'_>,
    role: &str,
    count: usize,
) -> Result<Grid, CodegenError> {
    let groups = (count as u64).div_ceil(u64::from(ctx.target.tuning.workgroup_size));
    Grid::fold(&ctx.kernel_name(role), groups, ctx.target.max_workgroups_per_dimension)
}

pub(super) fn lower_linear(ctx: &LowerContext<'_>) -> Result<Kernel, CodegenError> {
    let x = ctx.operand_dims(0);
    let weight = ctx.operand_dims(1);
    let (n, inputs, outputs) = (x[0], x[1], weight[0]);
    let grid = one_per_invocation(ctx, "linear", n * outputs)?;
    let constants = vec![
        ("WG", u(ctx.target.tuning.workgroup_size)),
        ("N", u(n as u64)),
        ("IN", u(inputs as u64)),
        ("OUT", u(outputs as u64)),
    ];
    let has_bias = ctx.operand_count() == 3;
    let body = fill(LINEAR, &[("BIAS", if has_bias { "b[o]" } else { "0.0" }.to_string())]);
    let mut bindings: Vec<Binding> = vec![ctx.read("x", 0), ctx.read("w", 1)];
    if has_bias {
        bindings.push(ctx.read("b", 2));
    }
    bindings.push(ctx.output("y"));
    let flops = 2 * (n * outputs * inputs) as u64;
    Ok(ctx.kernel("linear", &body, &constants, bindings, grid, flops))
}

pub(super) fn lower_max_pool2d(
    ctx: &LowerContext<'_>,
    kernel: [usize; 2],
    stride: [usize; 2],
) -> Result<Kernel, CodegenError> {
    let x = ctx.operand_dims(0);
    let out = ctx.dims().to_vec();
    let count = ctx.numel();
    let grid = one_per_invocation(ctx, "max_pool2d", count)?;
    let constants = vec![
        ("WG", u(ctx.target.tuning.workgroup_size)),
        ("COUNT", u(count as u64)),
        ("H", u(x[2] as u64)),
        ("W", u(x[3] as u64)),
        ("OH", u(out[2] as u64)),
        ("OW", u(out[3] as u64)),
        ("KH", u(kernel[0] as u64)),
        ("KW", u(kernel[1] as u64)),
        ("SH", u(stride[0] as u64)),
        ("SW", u(stride[1] as u64)),
    ];
    let bindings = vec![ctx.read("x", 0), ctx.output("y")];
    let flops = (count * kernel[0] * kernel[1]) as u64;
    Ok(ctx.kernel("max_pool2d", MAX_POOL2D, &constants, bindings, grid, flops))
}
