//! Data-movement kernels: concatenation.

use super::elementwise::elementwise_chunks;
use super::wgsl::u;
use super::{CodegenError, Kernel, LowerContext};

const CONCAT: &str = include_str!("../../shaders/concat.wgsl");

/// One copy kernel per operand, each writing its slice of the output, so a kernel binds
/// two buffers however many operands the concatenation has.
pub(super) fn lower_concat(
    ctx: &LowerContext<'_>,
    axis: usize,
) -> Result<Vec<Kernel>, CodegenError> {
    let out_dims = ctx.dims().to_vec();
    let inner: usize = out_dims[axis + 1..].iter().product();
    let out_block = out_dims[axis] * inner;
    let mut offset = 0;
    let mut kernels = Vec::new();
    for slot in 0..ctx.operand_count() {
        let dims = ctx.operand_dims(slot);
        let count: usize = dims.iter().product();
        let role = format!("concat{slot}");
        // NOTE: one chunk: a copy whose operand exceeds the binding limit is rejected by
        // the limit check rather than split, because its output slices interleave.
        let chunk = elementwise_chunks(ctx, &role, count)?.remove(0);
        let (grid, mut constants) = (chunk.grid, chunk.constants);
        constants.extend([
            ("BLOCK", u((dims[axis] * inner).max(1) as u64)),
            ("OUT_BLOCK", u(out_block as u64)),
            ("OFFSET", u((offset * inner) as u64)),
        ]);
        let bindings = vec![ctx.read("x", slot), ctx.output("y")];
        kernels.push(ctx.kernel(&role, CONCAT, &constants, bindings, grid, 0));
        offset += dims[axis];
    }
    Ok(kernels)
}
