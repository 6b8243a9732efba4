//! Batch normalization.
//!
//! Training mode runs one kernel, one workgroup per channel, that computes the batch
//! statistics (into the node's aux buffer 0, `[mean; C]` then `[variance; C]`, which
//! stays alive for the backward pass), updates the running statistics in the parameter
//! store and normalizes. Inference mode runs the same kernel without the update, so it
//! reads no running statistics and writes none. Evaluation mode runs an elementwise
//! normalization with the running statistics.

use super::elementwise::vector_chunks;
use super::wgsl::{f32_literal, fill, u};
use super::{Binding, CodegenError, Grid, Kernel, LowerContext, Resource};
use crate::ir::ParamId;

const STATS: &str = include_str!("../../shaders/batch_norm_stats.wgsl");
const APPLY: &str = include_str!("../../shaders/batch_norm_apply.wgsl");

/// The aux buffer that contains a batch-norm node's batch statistics in training and
/// inference mode.
pub const STATS_AUX: u32 = 0;

pub(super) fn lower_batch_norm(
    ctx: &LowerContext<'_>,
    eps: f32,
    momentum: f32,
    running_mean: ParamId,
    running_var: ParamId,
) -> Result<Vec<Kernel>, CodegenError> {
    let dims = ctx.dims().to_vec();
    let (n, c) = (dims[0], dims[1]);
    let spatial: usize = dims[2..].iter().product();
    let per_channel = n * spatial;
    let stats = Resource::Aux { node: ctx.node, index: STATS_AUX };
    let mut kernels = Vec::new();

    if ctx.mode.uses_batch_statistics() {
        let grid = Grid::fold(
            &ctx.kernel_name("batch_norm"),
            c as u64,
            ctx.target.max_workgroups_per_dimension,
        )?;
        let (wg, sum) = ctx.target.workgroup_sum();
        let lanes = super::grad::channel_lanes(&dims);
        let mut constants = vec![
            ("WG", u(wg)),
            ("C", u(c as u64)),
            ("M", u(per_channel as u64)),
            ("VS", u((spatial / lanes) as u64)),
            ("VM", u((per_channel / lanes) as u64)),
            ("EPS", f32_literal(eps)),
        ];
        let mut bindings = vec![
            super::grad::with_lanes(ctx.read("x", 0), lanes),
            ctx.read("scale", 1),
            ctx.read("offset", 2),
            Binding::write("stats", stats, 2 * c),
            super::grad::with_lanes(ctx.output("y"), lanes),
        ];
        // The running statistics move by MOMENTUM towards the batch's, with the variance
        // made unbiased by UNBIAS = M / (M - 1), as PyTorch does.
        let update = if ctx.mode.updates_running_statistics() {
            let unbias =
                if per_channel > 1 { per_channel as f64 / (per_channel - 1) as f64 } else { 1.0 };
            constants.push(("MOMENTUM", f32_literal(momentum)));
            constants.push(("UNBIAS", f32_literal(unbias as f32)));
            bindings.push(Binding::write("running_mean", Resource::Param(running_mean), c));
            bindings.push(Binding::write("running_var", Resource::Param(running_var), c));
            "        running_mean[c] = (1.0 - MOMENTUM) * running_mean[c] + MOMENTUM * mean;\n\
             \x20       running_var[c] = (1.0 - MOMENTUM) * running_var[c] \
             + MOMENTUM * variance * UNBIAS;\n"
        } else {
            ""
        };
        let body = format!(
            "{}\n{sum}\n{}",
            super::grad::channel_values(lanes),
            fill(STATS, &[("UPDATE", update.to_string())])
        );
        let flops = 9 * ctx.numel() as u64;
        kernels.push(ctx.kernel("batch_norm", &body, &constants, bindings, grid, flops));
        return Ok(kernels);
    }

    let body = fill(
        APPLY,
        &[("MEAN", "running_mean[c]".to_string()), ("VAR", "running_var[c]".to_string())],
    );
    // Four neighbouring elements share a channel when the channels are a multiple of 4
    // long, so they are one vec4.
    let vectors = spatial % 4 == 0;
    for mut chunk in vector_chunks(ctx, "batch_norm", ctx.numel(), vectors)? {
        chunk.constants.extend([
            ("C", u(c as u64)),
            ("S", u(spatial as u64)),
            ("EPS", f32_literal(eps)),
        ]);
        let (start, len) = (chunk.start, chunk.len);
        let bindings = vec![
            chunk.values(ctx.read("x", 0).range(start, len)),
            ctx.read("scale", 1),
            ctx.read("offset", 2),
            Binding::read("running_mean", Resource::Param(running_mean), c),
            Binding::read("running_var", Resource::Param(running_var), c),
            chunk.values(ctx.output("y").range(start, len)),
        ];
        let flops = 5 * len as u64;
        let body = format!("{}{body}", chunk.alias());
        kernels.push(ctx.kernel(&chunk.role, &body, &chunk.constants, bindings, chunk.grid, flops));
    }

    Ok(kernels)
}
