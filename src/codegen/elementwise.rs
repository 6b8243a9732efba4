//! Elementwise kernels: activations, arithmetic with scalar broadcasting, and dropout.
//!
//! A tensor larger than `maxStorageBufferBindingSize` is covered by several kernels, one
//! per chunk, each binding its range of every operand; `BASE` is the chunk's first
//! element, for kernels whose result depends on the element index.

use super::wgsl::{f32_literal, fill, u};
use super::{Binding, CodegenError, Grid, Kernel, LowerContext};
use crate::ir::Op;

const UNARY: &str = include_str!("../../shaders/unary.wgsl");
const BINARY: &str = include_str!("../../shaders/binary.wgsl");
const RANDOM: &str = include_str!("../../shaders/random.wgsl");
const DROPOUT: &str = include_str!("../../shaders/dropout.wgsl");

/// One chunk of an elementwise kernel: its role name, element range, grid and constants.
pub(super) struct Chunk {
    pub role: String,
    pub start: usize,
    pub len: usize,
    pub grid: Grid,
    pub constants: Vec<(&'static str, String)>,
}

/// Splits `count` elements into chunks that each fit one binding, with the grid and the
/// constants (`WG`, `ITEMS`, `COUNT`, `BASE`) of each. Shared by every elementwise-shaped
/// kernel.
pub(super) fn elementwise_chunks(
    ctx: &LowerContext<'_>,
    role: &str,
    count: usize,
) -> Result<Vec<Chunk>, CodegenError> {
    let tuning = &ctx.target.tuning;
    let per_group = u64::from(tuning.workgroup_size) * u64::from(tuning.elementwise_items);
    let chunk = ctx.target.chunk_elements();
    let parts = count.div_ceil(chunk).max(1);
    let mut chunks = Vec::with_capacity(parts);
    for part in 0..parts {
        let start = part * chunk;
        let len = chunk.min(count - start.min(count));
        let role = if parts == 1 { role.to_string() } else { format!("{role}.part{part}") };
        let groups = (len as u64).div_ceil(per_group);
        let grid =
            Grid::fold(&ctx.kernel_name(&role), groups, ctx.target.max_workgroups_per_dimension)?;
        let constants = vec![
            ("WG", u(tuning.workgroup_size)),
            ("ITEMS", u(tuning.elementwise_items)),
            ("COUNT", u(len as u64)),
            ("BASE", u(start as u64)),
        ];
        chunks.push(Chunk { role, start, len, grid, constants });
    }
    Ok(chunks)
}

/// The WGSL expression of a unary op applied to `v`.
fn unary_expression(op: &Op) -> String {
    match op {
        Op::Relu => "max(v, 0.0)".into(),
        Op::LeakyRelu { slope } => format!("select(v * {}, v, v > 0.0)", f32_literal(*slope)),
        // NOTE: clamped because tanh(15) rounds to 1 in f32, and some drivers evaluate
        // tanh through exp, which overflows to inf / inf = NaN for large inputs.
        Op::Tanh => "tanh(clamp(v, -15.0, 15.0))".into(),
        // Both branches are evaluated; `select` keeps the one that cannot overflow.
        Op::Sigmoid => "select(exp(v) / (1.0 + exp(v)), 1.0 / (1.0 + exp(-v)), v >= 0.0)".into(),
        Op::Neg => "-v".into(),
        other => unreachable!("{} is not a unary elementwise op", other.name()),
    }
}

pub(super) fn lower_unary(ctx: &LowerContext<'_>, op: &Op) -> Result<Vec<Kernel>, CodegenError> {
    let body = fill(UNARY, &[("EXPR", unary_expression(op))]);
    let chunks = elementwise_chunks(ctx, op.name(), ctx.numel())?;
    Ok(chunks
        .into_iter()
        .map(|c| {
            let bindings =
                vec![ctx.read("x", 0).range(c.start, c.len), ctx.output("y").range(c.start, c.len)];
            ctx.kernel(&c.role, &body, &c.constants, bindings, c.grid, c.len as u64)
        })
        .collect())
}

pub(super) fn lower_binary(ctx: &LowerContext<'_>, op: &Op) -> Result<Vec<Kernel>, CodegenError> {
    let count = ctx.numel();
    let scalar = |slot: usize| ctx.operand_dims(slot).is_empty() && count > 1;
    let index = |slot: usize| if scalar(slot) { "0u" } else { "i" }.to_string();
    let expression = match op {
        Op::Add => "lhs + rhs",
        Op::Sub => "lhs - rhs",
        Op::Mul => "lhs * rhs",
        Op::Div => "lhs / rhs",
        other => unreachable!("{} is not a binary elementwise op", other.name()),
    };
    let body = fill(
        BINARY,
        &[("A_INDEX", index(0)), ("B_INDEX", index(1)), ("EXPR", expression.to_string())],
    );
    let operand = |name: &'static str, slot: usize, chunk: &Chunk| {
        let binding = ctx.read(name, slot);
        if scalar(slot) {
            binding
        } else {
            binding.range(chunk.start, chunk.len)
        }
    };
    let chunks = elementwise_chunks(ctx, op.name(), count)?;
    Ok(chunks
        .iter()
        .map(|c| {
            let bindings =
                vec![operand("a", 0, c), operand("b", 1, c), ctx.output("y").range(c.start, c.len)];
            ctx.kernel(&c.role, &body, &c.constants, bindings, c.grid, c.len as u64)
        })
        .collect())
}

/// The keep threshold on the top 24 random bits for drop probability `p`.
pub fn dropout_threshold(p: f32) -> u32 {
    (f64::from(p.clamp(0.0, 1.0)) * f64::from(1u32 << 24)).round() as u32
}

pub(super) fn lower_dropout(ctx: &LowerContext<'_>, p: f32) -> Result<Vec<Kernel>, CodegenError> {
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let body = format!("{RANDOM}\n{DROPOUT}");
    let chunks = elementwise_chunks(ctx, "dropout", ctx.numel())?;
    Ok(chunks
        .into_iter()
        .map(|mut c| {
            c.constants.extend([
                ("NODE", u(ctx.node.index() as u64)),
                ("THRESHOLD", u(dropout_threshold(p))),
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
