//! Writes the WGSL of one implicit-GEMM kernel from a [`Problem`] and a [`Tiling`].
//!
//! Each invocation accumulates a `tile_m x tile_n` block of C in scalar variables. Its
//! columns are interleaved with its neighbours' (column `j` of a lane is
//! `n_lane + j * stride`), so neighbouring lanes read neighbouring pixels. With a subgroup
//! size set, the A values of a step are loaded once per subgroup, one row per lane, and
//! handed to every lane with `subgroupBroadcast`. Without one, every invocation loads its
//! own A values.

use super::problem::Problem;
use super::{ConvOp, Fused, GemmError, GemmKernel, Operand, Sizes, Tiling, TEXTURE_WIDTH};
use crate::codegen::wgsl::f32_literal;
use crate::codegen::Grid;
use std::fmt::Write;

pub(super) fn kernel(
    p: &Problem,
    t: &Tiling,
    with_bias: bool,
    fused: &Fused,
    sizes: Sizes,
    max_workgroups_per_dimension: u32,
) -> Result<GemmKernel, GemmError> {
    let columns_per_workgroup = columns_per_workgroup(t);
    let tiles_m = p.m.div_ceil(t.tile_m);
    let tiles_n = p.n.div_ceil(columns_per_workgroup);
    let total = u64::from(p.classes) * u64::from(tiles_m) * u64::from(tiles_n);
    let too_large = GemmError::GridTooLarge {
        op: p.op.name(),
        workgroups: total,
        limit: max_workgroups_per_dimension,
    };
    if total > i32::MAX as u64 {
        return Err(too_large);
    }
    let grid =
        Grid::fold(p.op.name(), total, max_workgroups_per_dimension).map_err(|_| too_large)?;

    let mut s = String::new();
    let uniforms = header(&mut s, p, t, [tiles_m, tiles_n], &grid, sizes);
    fused_header(&mut s, fused);
    let operands = Operands {
        op: p.op,
        with_bias,
        lhs_vectors: vector_a(p, t),
        textures: t.texture_operands,
        rhs_texels: p.b_texels,
    };
    bindings(&mut s, &operands, fused);
    let mut roles = binding_roles(p.op, with_bias, fused);
    if !uniforms.is_empty() {
        shape_block(&mut s, &uniforms, roles.len());
    }
    entry(&mut s, p, t, with_bias, fused, &uniforms);
    if !uniforms.is_empty() {
        roles.push(Operand::Shape);
    }

    Ok(GemmKernel {
        label: format!("{}_{}x{}x{}", p.op.name(), p.m, p.n, p.k),
        wgsl: s,
        entry_point: "main",
        bindings: roles,
        grid,
        uses_subgroups: t.subgroup_size.is_some(),
        lhs_vectors: vector_a(p, t),
        texture_operands: t.texture_operands,
        rhs_texels: p.b_texels,
        flops: 0,
        shape: uniforms.iter().map(|u| u.value).collect(),
    })
}

/// Returns the output columns one workgroup covers: every lane's `tile_n`, or with a split
/// reduction the `tile_n` that all lanes share.
fn columns_per_workgroup(t: &Tiling) -> u32 {
    if t.split_k {
        t.tile_n
    } else {
        t.workgroup_size * t.tile_n
    }
}

/// Returns whether the kernel loads its A values four reduction steps at a time, as
/// `vec4<f32>`: when a chunk is 4 steps and [`Problem::a_rows_are_vectors`].
fn vector_a(p: &Problem, t: &Tiling) -> bool {
    (t.k_chunk == 4 && p.a_rows_are_vectors()) || p.class_rows_are_vectors()
}

/// A size the shader reads from its uniform block instead of a constant.
struct Uniform {
    name: &'static str,
    ty: &'static str,
    /// The value's bits: an `i32` or a `u32`.
    value: u32,
}

/// Declares the uniform block of `uniforms` at binding `index` and the grid's
/// `group_index`, which reads its row width from the block.
fn shape_block(s: &mut String, uniforms: &[Uniform], index: usize) {
    let values: Vec<String> = uniforms
        .iter()
        .map(|u| match u.ty {
            "i32" => format!("{} = {}", u.name, u.value as i32),
            _ => format!("{} = {}", u.name, u.value),
        })
        .collect();
    let _ = writeln!(s, "// Sizes that differ between kernels of one pipeline. This kernel's:");
    for line in values.chunks(8) {
        let _ = writeln!(s, "//   {}", line.join(", "));
    }
    s.push_str("struct Shape {\n");
    for u in uniforms {
        let _ = writeln!(s, "    {}: {},", u.name, u.ty);
    }
    let _ = writeln!(
        s,
        "}}\n@group(0) @binding({index}) var<uniform> shape: Shape;\n\n\
         // The logical workgroup index; values of GROUPS and above are surplus.\n\
         fn group_index(wid: vec3<u32>) -> u32 {{\n    \
             return wid.x + shape.GRID_X * (wid.y + shape.GRID_Y * wid.z);\n}}\n"
    );
}

/// Writes the header comment and the constants, and returns the sizes that go to the
/// uniform block instead (none with [`Sizes::Baked`]).
fn header(
    s: &mut String,
    p: &Problem,
    t: &Tiling,
    tiles: [u32; 2],
    grid: &Grid,
    sizes: Sizes,
) -> Vec<Uniform> {
    let lanes = t.subgroup_size.map_or("none".to_string(), |n| n.to_string());
    let classes = match p.classes {
        1 => String::new(),
        n => format!(", once per each of {n} output parity classes"),
    };
    let blocks = match t.block_m.clamp(1, t.tile_m) {
        1 => "one row at a time".to_string(),
        rows => format!("in blocks of {rows} rows"),
    };
    let _ = writeln!(
        s,
        "// {}: implicit GEMM, M = {}, N = {}, K = {}{classes}.\n\
         // Tiling: {}x{} outputs per invocation, {} invocations per workgroup, subgroup {lanes},\n\
         // {} reduction steps staged at a time, {blocks}.",
        p.op.name(),
        p.m,
        p.n,
        p.k,
        t.tile_m,
        t.tile_n,
        t.workgroup_size,
        t.k_chunk,
    );
    let gemm = [("M", p.m as usize), ("N", p.n as usize), ("K", p.k as usize)];
    let tile_counts = [("TILES_M", tiles[0] as usize), ("TILES_N", tiles[1] as usize)];
    let mut uniforms = Vec::new();
    for &(name, value) in gemm.iter().chain(p.constants()).chain(&tile_counts) {
        if sizes == Sizes::Uniform && p.is_runtime(name) {
            uniforms.push(Uniform { name, ty: "i32", value: value as u32 });
        } else {
            let _ = writeln!(s, "const {name} = {value}i;");
        }
    }
    if sizes == Sizes::Baked {
        let _ = writeln!(s, "{}", grid.wgsl());
        return uniforms;
    }
    let [x, y, _] = grid.workgroups;
    let groups = u32::try_from(grid.groups).unwrap_or(u32::MAX);
    for (name, value) in [("GRID_X", x), ("GRID_Y", y), ("GROUPS", groups)] {
        uniforms.push(Uniform { name, ty: "u32", value });
    }
    uniforms
}

/// Notes the fused elementwise work in the header comment.
fn fused_header(s: &mut String, fused: &Fused) {
    let activation = |slope: Option<f32>| match slope {
        Some(0.0) => "relu",
        Some(_) => "leaky_relu",
        None => "",
    };
    for (operand, slope) in [("A", fused.lhs_activation), ("B", fused.rhs_activation)] {
        if slope.is_some() {
            let _ = writeln!(
                s,
                "// Fused: {} of each {operand} value as it is loaded.",
                activation(slope)
            );
        }
    }
    if fused.output_mask.is_some() {
        s.push_str("// Fused: the leaky_relu_grad of each output, masked by the sign of `mask`.\n");
    }
    if fused.output_addend {
        s.push_str("// Fused: the sum of each output and the same element of `addend`.\n");
    }
}

/// The operand bindings' declarations that [`bindings`] writes.
struct Operands {
    op: ConvOp,
    with_bias: bool,
    lhs_vectors: bool,
    textures: bool,
    rhs_texels: bool,
}

/// Returns the WGSL function `name` that applies a leaky ReLU of `slope` (ReLU at 0) to a
/// value of type `ty`, written as the elementwise kernels write them.
fn activation_fn(name: &str, ty: &str, slope: f32) -> String {
    let body = if slope == 0.0 {
        format!("max(v, {ty}(0.0))")
    } else {
        format!("select(v * {}, v, v > {ty}(0.0))", f32_literal(slope))
    };
    format!("fn {name}(v: {ty}) -> {ty} {{\n    return {body};\n}}\n\n")
}

fn bindings(s: &mut String, operands: &Operands, fused: &Fused) {
    let Operands { op, with_bias, lhs_vectors, textures, rhs_texels } = *operands;
    let (a, b) = match op {
        ConvOp::Conv2d | ConvOp::ConvTranspose2d => ("weight", "input"),
        ConvOp::Conv2dWeightGrad => ("output gradient", "input"),
        ConvOp::ConvTranspose2dWeightGrad => ("input", "output gradient"),
    };
    let (a_note, a_type) = if lhs_vectors {
        (", four reduction steps of a row per element", "vec4<f32>")
    } else {
        ("", "f32")
    };
    let b_layout = if rhs_texels { ", B four consecutive elements a texel" } else { "" };
    // A fused activation wraps each raw load in its function.
    let mut activations = String::new();
    if let Some(slope) = fused.lhs_activation {
        activations += &activation_fn("activate_lhs", a_type, slope);
    }
    if let Some(slope) = fused.rhs_activation {
        let ty = if rhs_texels && textures { "vec4<f32>" } else { "f32" };
        activations += &activation_fn("activate_rhs", ty, slope);
    }
    let wrap = |function: &str, on: bool, load: &str| {
        if on {
            format!("{function}({load})")
        } else {
            load.to_string()
        }
    };
    let lhs_load = |load: &str| wrap("activate_lhs", fused.lhs_activation.is_some(), load);
    let rhs_load = |load: &str| wrap("activate_rhs", fused.rhs_activation.is_some(), load);
    let (helpers, declarations) = if textures {
        let a_part = if lhs_vectors { "" } else { ".x" };
        let coordinates = format!(
            "vec2<i32>(i & {}, i >> {}u)",
            TEXTURE_WIDTH - 1,
            TEXTURE_WIDTH.trailing_zeros()
        );
        (
            format!(
                "fn lhs_at(i: i32) -> {a_type} {{\n    return {};\n}}\n\n{}",
                lhs_load(&format!("textureLoad(lhs, {coordinates}, 0){a_part}")),
                if rhs_texels {
                    format!(
                        "fn rhs_texel(i: i32) -> vec4<f32> {{\n    \
                         return {};\n}}\n\n\
                         fn rhs_at(i: i32) -> f32 {{\n    return rhs_texel(i >> 2u)[i & 3];\n}}",
                        rhs_load(&format!("textureLoad(rhs, {coordinates}, 0)"))
                    )
                } else {
                    format!(
                        "fn rhs_at(i: i32) -> f32 {{\n    return {};\n}}",
                        rhs_load(&format!("textureLoad(rhs, {coordinates}, 0).x"))
                    )
                }
            ),
            format!(
                "// A: the {a}{a_note}.\n// B: the {b}.\n\
                 // Both are 2D textures of {TEXTURE_WIDTH} texels a row{b_layout}.\n\
                 @group(0) @binding(0) var lhs: texture_2d<f32>;\n\
                 @group(0) @binding(1) var rhs: texture_2d<f32>;"
            ),
        )
    } else {
        (
            format!(
                "fn lhs_at(i: i32) -> {a_type} {{\n    return {};\n}}\n\n\
                 fn rhs_at(i: i32) -> f32 {{\n    return {};\n}}",
                lhs_load("lhs[i]"),
                rhs_load("rhs[i]")
            ),
            format!(
                "// A: the {a}{a_note}.\n@group(0) @binding(0) var<storage, read> lhs: array<{a_type}>;\n\
                 // B: the {b}.\n@group(0) @binding(1) var<storage, read> rhs: array<f32>;"
            ),
        )
    };
    let _ = writeln!(
        s,
        "{declarations}\n@group(0) @binding(2) var<storage, read_write> dst: array<f32>;"
    );
    if with_bias {
        let _ = writeln!(s, "@group(0) @binding(3) var<storage, read> bias: array<f32>;");
    }
    if let Some(slope) = fused.output_mask {
        let index = 3 + usize::from(with_bias);
        let _ = writeln!(
            s,
            "// The activation input whose sign masks each output.\n\
             @group(0) @binding({index}) var<storage, read> mask: array<f32>;\n\n\
             fn masked(v: f32, i: i32) -> f32 {{\n    \
                 return select(v * {}, v, mask[i] > 0.0);\n}}",
            f32_literal(slope)
        );
    }
    if fused.output_addend {
        let index = 3 + usize::from(with_bias) + usize::from(fused.output_mask.is_some());
        let _ = writeln!(s, "@group(0) @binding({index}) var<storage, read> addend: array<f32>;");
    }
    let _ = writeln!(s, "\n{activations}{helpers}\n");
}

fn binding_roles(op: ConvOp, with_bias: bool, fused: &Fused) -> Vec<Operand> {
    let mut roles = super::operand_roles(op).to_vec();
    roles.push(Operand::Output);
    if with_bias {
        roles.push(Operand::Bias);
    }
    if fused.output_mask.is_some() {
        roles.push(Operand::Mask);
    }
    if fused.output_addend {
        roles.push(Operand::Addend);
    }
    roles
}

fn entry(
    s: &mut String,
    p: &Problem,
    t: &Tiling,
    with_bias: bool,
    fused: &Fused,
    uniforms: &[Uniform],
) {
    let (tm, tn) = (t.tile_m, t.tile_n);
    let lane_builtins = if t.subgroup_size.is_some() {
        ",\n    @builtin(subgroup_invocation_id) lane_id: u32,\n    @builtin(subgroup_id) subgroup_id: u32"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "@compute @workgroup_size({})\nfn main(\n    @builtin(workgroup_id) wg: vec3<u32>,\n    \
         @builtin(local_invocation_index) local: u32{lane_builtins},\n) {{",
        t.workgroup_size
    );
    for u in uniforms {
        let _ = writeln!(s, "    let {0} = shape.{0};", u.name);
    }
    s.push_str(
        "    let flat = group_index(wg);\n    if flat >= GROUPS {\n        return;\n    }\n",
    );
    s.push_str("    let parity = i32(flat) / (TILES_M * TILES_N);\n");
    s.push_str("    let tile = i32(flat) % (TILES_M * TILES_N);\n");
    let _ = writeln!(s, "    let m0 = (tile % TILES_M) * {tm};");
    let _ = writeln!(s, "    let n0 = (tile / TILES_M) * {};", columns_per_workgroup(t));
    s.push_str(p.class_setup());

    // With a split reduction every lane has the workgroup's columns n0 + j.
    if t.split_k {
        s.push_str("    let lane = i32(lane_id);\n");
        for j in 0..tn {
            let _ = writeln!(s, "    let col{j} = n0 + {j};");
            s.push_str(&p.column_setup(j));
        }
    }
    // Column j of this invocation is n_lane + j * stride.
    let stride = match t.subgroup_size {
        _ if t.split_k => 0,
        Some(lanes) => {
            let _ = writeln!(s, "    let lane = i32(lane_id);");
            let _ = writeln!(s, "    let n_lane = n0 + i32(subgroup_id) * {} + lane;", lanes * tn);
            lanes
        }
        None => {
            s.push_str("    let n_lane = n0 + i32(local);\n");
            t.workgroup_size
        }
    };
    // With runs, this invocation's columns are c0 .. c0 + tile_n.
    if p.row_run.is_some() || p.tap_run.is_some() {
        let first = match t.subgroup_size {
            Some(lanes) => format!("n0 + (i32(subgroup_id) * {lanes} + lane) * {tn}"),
            None => format!("n0 + i32(local) * {tn}"),
        };
        let _ = writeln!(s, "    let c0 = {first};");
    }
    match (p.row_run, p.tap_run) {
        _ if t.split_k => {}
        (Some(run), _) => s.push_str(&p.run_setup(run)),
        (None, Some(run)) => s.push_str(&p.tap_setup(run)),
        (None, None) => {
            for j in 0..tn {
                let _ = writeln!(s, "    let col{j} = n_lane + {};", j * stride);
                s.push_str(&p.column_setup(j));
            }
        }
    }

    // Rows this invocation loads of A: one per subgroup lane, or all of its own.
    let a_rows: Vec<String> = match t.subgroup_size {
        _ if t.split_k => (0..tm).map(|i| format!("m0 + {i}")).collect(),
        Some(lanes) => {
            (0..tm.div_ceil(lanes)).map(|r| format!("m0 + {} + lane", r * lanes)).collect()
        }
        None => (0..tm).map(|i| format!("m0 + {i}")).collect(),
    };
    for (r, row) in a_rows.iter().enumerate() {
        let _ = writeln!(s, "    let ar{r} = {row};\n    let ar{r}_live = ar{r} < M;");
    }
    let (width, accumulator) = accumulator_type(tn);
    for i in 0..tm {
        for q in 0..tn / width {
            let _ = writeln!(s, "    var c{i}_{q} = {accumulator}();");
        }
    }

    main_loop(s, p, t, a_rows.len());
    if t.split_k {
        s.push_str(
            "    // Each lane summed its own chunks, and the first lane stores the total.\n",
        );
        for i in 0..tm {
            for q in 0..tn / width {
                let _ = writeln!(s, "    c{i}_{q} = subgroupAdd(c{i}_{q});");
            }
        }
        s.push_str("    if lane != 0 {\n        return;\n    }\n");
    }

    // Store the tile. The column and row parts of each offset are named once to keep the
    // shader short, because naga's WGSL parse time grew with the square of the function's
    // length (105 ms for l4's conv2d at 18,500 expressions, 24 ms at 8,000).
    for j in 0..tn {
        let offset = match p.row_run {
            Some(_) => p.run_output_offset(j),
            None => p.output_offset(j),
        };
        let _ = writeln!(s, "    let out{j} = {offset};");
    }
    for i in 0..tm {
        let _ = writeln!(
            s,
            "    let row{i} = m0 + {i};\n    let row{i}_out = row{i} * ({});",
            p.output_row_stride()
        );
        if with_bias {
            let _ = writeln!(s, "    let bias{i} = bias[min(row{i}, M - 1)];");
        }
    }
    let value = |i: u32, j: u32| {
        let element = accumulator_element(i, j, width);
        let value = if with_bias { format!("{element} + bias{i}") } else { element };
        let index = format!("row{i}_out + out{j}");
        let value =
            if fused.output_mask.is_some() { format!("masked({value}, {index})") } else { value };
        if fused.output_addend {
            format!("{value} + addend[{index}]")
        } else {
            value
        }
    };
    // When M is a multiple of the tile height every row is live, and one test per column
    // guards the column's stores. Lavapipe's pipeline creation slows with the number of
    // branches: with a test per element the 64x16 tile's took 0.30 s, with one per column
    // 0.06 s.
    if p.m % tm == 0 {
        for j in 0..tn {
            let _ = writeln!(s, "    if live{j} {{");
            for i in 0..tm {
                let _ = writeln!(s, "        dst[row{i}_out + out{j}] = {};", value(i, j));
            }
            s.push_str("    }\n");
        }
    } else {
        for i in 0..tm {
            for j in 0..tn {
                let _ = writeln!(
                    s,
                    "    if row{i} < M && live{j} {{\n        dst[row{i}_out + out{j}] = {};\n    }}",
                    value(i, j)
                );
            }
        }
    }
    s.push_str("}\n");
}

/// Returns how many columns of a tile row one accumulator holds, and its type: a
/// `vec4<f32>` for four, which takes a quarter of the multiply-add statements.
fn accumulator_type(tile_n: u32) -> (u32, &'static str) {
    if tile_n % 4 == 0 {
        (4, "vec4<f32>")
    } else {
        (1, "f32")
    }
}

/// Returns the expression for the accumulated value of tile row `i`, column `j`.
fn accumulator_element(i: u32, j: u32, width: u32) -> String {
    if width == 4 {
        format!("c{i}_{}.{}", j / 4, ["x", "y", "z", "w"][(j % 4) as usize])
    } else {
        format!("c{i}_{j}")
    }
}

/// Writes the `k` loop. Each trip stages `k_chunk` steps of A and B values, then runs the
/// multiply-adds one block of `block_m` rows at a time. A block's accumulators can then
/// stay in registers for the whole chunk while the staged operands are reread.
fn main_loop(s: &mut String, p: &Problem, t: &Tiling, a_loads: usize) {
    let (tm, tn, chunk) = (t.tile_m, t.tile_n, t.k_chunk);
    let ragged = p.k % chunk != 0;
    for kk in 0..chunk {
        let names: Vec<String> = (0..a_loads)
            .map(|r| format!("a{kk}_{r}"))
            .chain((0..tn).map(|j| format!("b{kk}_{j}")))
            .collect();
        let _ = writeln!(s, "    var {}: f32;", names.join(": f32;\n    var "));
    }
    s.push_str(p.loop_setup());
    let class_rows = p.class_rows_are_vectors();
    let vectors = vector_a(p, t) && !class_rows;
    // A split reduction keeps the loop's trip count the same in every lane, and each
    // lane's chunk starts at kl. Steps at or past K read zeros.
    let ragged = ragged || t.split_k;
    let (step, start) = match t.subgroup_size {
        Some(lanes) if t.split_k => (chunk * lanes, "kl"),
        _ => (chunk, "k0"),
    };
    let _ = writeln!(s, "    for (var k0 = 0i; k0 < K; k0 += {step}) {{");
    if t.split_k {
        let _ = writeln!(s, "        let kl = k0 + lane * {chunk};");
    }
    if let Some(run) = p.row_run {
        s.push_str(&p.run_loads(run, chunk));
    }
    if let Some(run) = p.tap_run {
        // The chunk's first pixel, the loads of all four, and the counters moved past them.
        let _ = writeln!(s, "        let k = {start};");
        if !vectors {
            s.push_str("        let chunk_col = kx;\n");
        }
        s.push_str(p.step_setup());
        s.push_str(&p.tap_loads(run));
        s.push_str(p.chunk_advance());
    }
    let runs = p.row_run.is_some() || p.tap_run.is_some();
    // conv_transpose2d's A loads need each step's tap, which the step setup decodes.
    let step_setup = !runs || (p.row_run.is_some() && p.op == ConvOp::ConvTranspose2d);
    for kk in 0..chunk {
        let _ = writeln!(s, "        {{\n        let k = {start} + {kk};");
        if step_setup {
            s.push_str(p.step_setup());
        }
        let in_range = if ragged { " && k < K" } else { "" };
        // K is a multiple of 4 with vectors, so no step of a chunk is out of range, and
        // the first step's offset is a multiple of 4.
        let chunk_live = if t.split_k { " && kl < K" } else { "" };
        for r in (0..a_loads).filter(|_| vectors && kk == 0) {
            let access = p.a_access(&format!("ar{r}"));
            let ok = format!("ar{r}_live{chunk_live}");
            let _ = writeln!(
                s,
                "        let av{r} = select(vec4<f32>(), \
                 lhs_at(select(0i, ({}) / 4, {ok})), {ok});",
                access.offset
            );
            for (step, part) in ["x", "y", "z", "w"].iter().enumerate() {
                let _ = writeln!(s, "        a{step}_{r} = av{r}.{part};");
            }
        }
        // A tap row of a parity class is one vec4 of the weight, its first step loads it.
        let taps = p.class_taps_per_row();
        for r in (0..a_loads).filter(|_| class_rows && kk % taps == 0) {
            let ok = format!("ar{r}_live{chunk_live}");
            let _ = writeln!(
                s,
                "        let av{r} = select(vec4<f32>(), \
                 lhs_at(select(0i, (aoff - kx + ar{r} * (KH * KW)) / 4, {ok})), {ok});"
            );
            for step in 0..taps {
                let _ = writeln!(s, "        a{}_{r} = {};", kk + step, p.class_tap(r, step));
            }
        }
        for r in (0..a_loads).filter(|_| !vectors && !class_rows) {
            let access = match p.tap_run {
                Some(_) => p.tap_a_access(&format!("ar{r}"), kk),
                None => p.a_access(&format!("ar{r}")),
            };
            let extra = if access.valid.is_empty() {
                String::new()
            } else {
                format!(" && {}", access.valid)
            };
            let _ = writeln!(
                s,
                "        let a{r}_valid = ar{r}_live{extra}{in_range};\n        \
                 a{kk}_{r} = select(0.0, lhs_at(select(0i, {}, a{r}_valid)), a{r}_valid);",
                access.offset
            );
        }
        for j in (0..tn).filter(|_| runs) {
            let input = match p.row_run {
                Some(_) => p.run_input(j, kk),
                None => p.tap_input(j, kk),
            };
            let _ = writeln!(s, "        b{kk}_{j} = {input};");
        }
        for j in (0..tn).filter(|_| !runs) {
            s.push_str(&p.b_pixel(j));
            let access = p.b_access(j);
            let _ = writeln!(
                s,
                "        let b{j}_valid = {}{in_range};\n        \
                 b{kk}_{j} = select(0.0, rhs_at(select(0i, {}, b{j}_valid)), b{j}_valid);",
                access.valid, access.offset
            );
        }
        if !runs {
            s.push_str(p.step_advance());
        }
        s.push_str("        }\n");
    }
    let (width, accumulator) = accumulator_type(tn);
    if width == 4 {
        for kk in 0..chunk {
            for q in 0..tn / 4 {
                let parts: Vec<String> = (0..4).map(|c| format!("b{kk}_{}", 4 * q + c)).collect();
                let _ = writeln!(s, "        let bv{kk}_{q} = vec4<f32>({});", parts.join(", "));
            }
        }
    }
    let b_value =
        |kk: u32, q: u32| if width == 4 { format!("bv{kk}_{q}") } else { format!("b{kk}_{q}") };
    let block = t.block_m.clamp(1, tm);
    for first in (0..tm).step_by(block as usize) {
        for kk in 0..chunk {
            for i in first..(first + block).min(tm) {
                let a = match t.subgroup_size {
                    _ if t.split_k => format!("a{kk}_{i}"),
                    Some(lanes) => {
                        format!("subgroupBroadcast(a{kk}_{}, {}u)", i / lanes, i % lanes)
                    }
                    None => format!("a{kk}_{i}"),
                };
                let _ = writeln!(s, "        let s{kk}_{i} = {accumulator}({a});");
                for q in 0..tn / width {
                    let b = b_value(kk, q);
                    let _ = writeln!(s, "        c{i}_{q} = fma(s{kk}_{i}, {b}, c{i}_{q});");
                }
            }
        }
    }
    s.push_str("    }\n");
}
