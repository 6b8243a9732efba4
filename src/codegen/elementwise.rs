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
    /// Elements per value the kernel reads and writes: 4 for `vec4<f32>`, else 1.
    pub lanes: u32,
}

impl Chunk {
    /// Returns the WGSL alias `T` of the values the kernel reads and writes.
    pub fn alias(&self) -> &'static str {
        if self.lanes == 4 {
            "alias T = vec4<f32>;\n\n"
        } else {
            "alias T = f32;\n\n"
        }
    }

    /// Declares `binding` with this chunk's values: as `vec4<f32>` when it has 4 lanes.
    pub fn values(&self, binding: Binding) -> Binding {
        if self.lanes == 4 {
            binding.vec4()
        } else {
            binding
        }
    }
}

/// Splits `count` elements into chunks that each fit one binding, with the grid and the
/// constants (`WG`, `ITEMS`, `COUNT`, `BASE`, `LANES`) of each. Shared by every
/// elementwise-shaped kernel. Each value is one `f32`.
pub(super) fn elementwise_chunks(
    ctx: &LowerContext<'_>,
    role: &str,
    count: usize,
) -> Result<Vec<Chunk>, CodegenError> {
    chunks_of(ctx, role, count, 1)
}

/// Splits `count` elements as [`elementwise_chunks`] does, into `vec4<f32>` values when
/// `count` is a multiple of 4 and `vectors` is set. `COUNT` then counts vectors, and
/// `BASE` is still the chunk's first element.
pub(super) fn vector_chunks(
    ctx: &LowerContext<'_>,
    role: &str,
    count: usize,
    vectors: bool,
) -> Result<Vec<Chunk>, CodegenError> {
    let lanes = if vectors && count % 4 == 0 { 4 } else { 1 };
    chunks_of(ctx, role, count, lanes)
}

fn chunks_of(
    ctx: &LowerContext<'_>,
    role: &str,
    count: usize,
    lanes: u32,
) -> Result<Vec<Chunk>, CodegenError> {
    let tuning = &ctx.target.tuning;
    let per_group = u64::from(tuning.workgroup_size) * u64::from(tuning.elementwise_items);
    // A multiple of the storage offset alignment, which is at least 16 bytes, so every
    // chunk starts on a whole vec4.
    let chunk = ctx.target.chunk_elements();
    let parts = count.div_ceil(chunk).max(1);
    let mut chunks = Vec::with_capacity(parts);
    for part in 0..parts {
        let start = part * chunk;
        let len = chunk.min(count - start.min(count));
        let role = if parts == 1 { role.to_string() } else { format!("{role}.part{part}") };
        let values = (len / lanes as usize) as u64;
        let groups = values.div_ceil(per_group);
        let grid =
            Grid::fold(&ctx.kernel_name(&role), groups, ctx.target.max_workgroups_per_dimension)?;
        let constants = vec![
            ("WG", u(tuning.workgroup_size)),
            ("ITEMS", u(tuning.elementwise_items)),
            ("COUNT", u(values)),
            ("BASE", u(start as u64)),
            ("LANES", u(u64::from(lanes))),
        ];
        chunks.push(Chunk { role, start, len, grid, constants, lanes });
    }
    Ok(chunks)
}

/// The WGSL expression of a unary op applied to `v`.
fn unary_expression(op: &Op) -> String {
    match op {
        Op::Relu => "max(v, T(0.0))".into(),
        Op::LeakyRelu { slope } => format!("select(v * {}, v, v > T(0.0))", f32_literal(*slope)),
        // NOTE: clamped because tanh(15) rounds to 1 in f32, and some drivers evaluate
        // tanh through exp, which overflows to inf / inf = NaN for large inputs.
        Op::Tanh => "tanh(clamp(v, T(-15.0), T(15.0)))".into(),
        // Both branches are evaluated; `select` keeps the one that cannot overflow.
        Op::Sigmoid => "select(exp(v) / (1.0 + exp(v)), 1.0 / (1.0 + exp(-v)), v >= T(0.0))".into(),
        Op::Neg => "-v".into(),
        other => unreachable!("{} is not a unary elementwise op", other.name()),
    }
}

pub(super) fn lower_unary(ctx: &LowerContext<'_>, op: &Op) -> Result<Vec<Kernel>, CodegenError> {
    let body = fill(UNARY, &[("EXPR", unary_expression(op))]);
    let chunks = vector_chunks(ctx, op.name(), ctx.numel(), true)?;
    Ok(chunks
        .into_iter()
        .map(|c| {
            let bindings = vec![
                c.values(ctx.read("x", 0).range(c.start, c.len)),
                c.values(ctx.output("y").range(c.start, c.len)),
            ];
            let body = format!("{}{body}", c.alias());
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
            chunk.values(binding.range(chunk.start, chunk.len))
        }
    };
    let chunks = vector_chunks(ctx, op.name(), count, true)?;
    Ok(chunks
        .iter()
        .map(|c| {
            let bindings = vec![
                operand("a", 0, c),
                operand("b", 1, c),
                c.values(ctx.output("y").range(c.start, c.len)),
            ];
            let body = format!("{}{body}", c.alias());
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
