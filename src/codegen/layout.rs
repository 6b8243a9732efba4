//! Data-movement kernels: concatenation.

use super::elementwise::vector_chunks;
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
        // An operand that its producer writes into this concat's buffer needs no copy.
        if ctx.fusion.views.placed_in(ctx.operands()[slot], ctx.node) {
            offset += dims[axis];
            continue;
        }
        let role = format!("concat{slot}");
        // NOTE: one chunk: a copy whose operand exceeds the binding limit is rejected by
        // the limit check rather than split, because its output slices interleave.
        // The copy moves vec4s when every block and slice offset is a whole vec4.
        let block = (dims[axis] * inner).max(1);
        let vectors = [block, out_block, offset * inner].iter().all(|v| v % 4 == 0);
        let chunk = vector_chunks(ctx, &role, count, vectors)?.remove(0);
        let lanes = chunk.lanes as usize;
        let bindings = vec![chunk.values(ctx.read("x", slot)), chunk.values(ctx.output("y"))];
        let body = format!("{}{CONCAT}", chunk.alias());
        let mut constants = chunk.constants;
        constants.extend([
            ("BLOCK", u((block / lanes) as u64)),
            ("OUT_BLOCK", u((out_block / lanes) as u64)),
            ("OFFSET", u((offset * inner / lanes) as u64)),
        ]);
        kernels.push(ctx.kernel(&role, &body, &constants, bindings, chunk.grid, 0));
        offset += dims[axis];
    }
    Ok(kernels)
}
