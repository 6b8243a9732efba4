//! Convolutions: conv2d and conv_transpose2d as implicit GEMMs from [`super::gemm`], with
//! the tiling [`gemm::choose_tiling`] picks for the target (subgroup operand sharing
//! where the target has a fixed subgroup size). The direct kernels below remain for a
//! geometry the GEMM generator rejects: each invocation accumulates a register tile of
//! `conv_pixel_tile` output pixels by `conv_out_channel_tile` output channels, and the
//! transposed convolution visits only the kernel taps that reach each output pixel.

use super::gemm::{self, ConvGeometry, ConvOp, DeviceProfile, Fused, GemmError, Operand};
use super::value_resource;
use super::wgsl::{fill, i, u};
use super::{Binding, CodegenError, Grid, Kernel, LowerContext, Target};
use crate::ir::{Graph, NodeId, Op};

const CONV2D: &str = include_str!("../../shaders/conv2d.wgsl");
const CONV_TRANSPOSE2D: &str = include_str!("../../shaders/conv_transpose2d.wgsl");

/// Builds the tiling inputs of a target. `max_invocations` is WebGPU's guaranteed minimum, because
/// the target does not record the adapter's.
fn device_profile(target: &Target) -> DeviceProfile {
    DeviceProfile {
        fixed_subgroup_size: if target.subgroups { target.subgroup_size } else { None },
        max_invocations: 256,
        cpu: target.cpu,
        texture_operands: target.tuning.texture_operands,
        max_texture_rows: target.max_texture_dimension_2d,
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
    // Binding 0 reads A and binding 1 B, each from the operand slot of its role.
    let slot_of = |role: Operand| usize::from(role != Operand::Input);
    let [lhs_role, rhs_role] = gemm::operand_roles(op);
    let epilogue = ctx.fusion.epilogue(ctx.node);
    let mask = epilogue.and_then(|e| e.mask);
    let addend = epilogue.and_then(|e| e.addend);
    let fused = Fused {
        lhs_activation: ctx.fused_activation(slot_of(lhs_role)),
        rhs_activation: ctx.fused_activation(slot_of(rhs_role)),
        output_mask: mask.map(|(_, slope)| slope),
        output_addend: addend.is_some(),
    };
    let sizes = gemm::Sizes::Uniform;
    let generated = match gemm::generate_fused(op, geometry, &tiling, has_bias, fused, sizes, max) {
        Ok(generated) => generated,
        Err(GemmError::GridTooLarge { workgroups, limit, .. }) => {
            return Err(CodegenError::GridTooLarge { kernel: name, workgroups, limit });
        }
        Err(error) => {
            tracing::warn!(kernel = %name, %error, "implicit GEMM rejected; using the direct kernel");
            return Ok(None);
        }
    };

    // The generated shader names its bindings lhs, rhs, dst, bias and shape, in that
    // order. The operand slots are those of conv2d, conv_transpose2d (x, weight, bias) and
    // of the IR's conv2d_weight_grad (x, dy).
    let bindings = generated
        .bindings
        .iter()
        .enumerate()
        .map(|(index, operand)| match operand {
            Operand::Input => ctx.read(["lhs", "rhs"][index], 0),
            Operand::Weight | Operand::OutputGrad => ctx.read(["lhs", "rhs"][index], 1),
            Operand::Bias => ctx.read("bias", 2),
            Operand::Output => ctx.output("dst"),
            Operand::Mask => {
                let (input, _) = mask.expect("a GEMM binds a mask only when the output is masked");
                let elements = ctx.graph.shape(input).numel();
                Binding::read("mask", value_resource(ctx.graph, input, ctx.mode), elements)
            }
            Operand::Addend => {
                let other = addend.expect("a GEMM binds an addend only when it has one");
                let elements = ctx.graph.shape(other).numel();
                Binding::read("addend", value_resource(ctx.graph, other, ctx.mode), elements)
            }
            Operand::Shape => Binding::shape("shape", generated.shape.len()),
        })
        .enumerate()
        .map(|(index, binding)| {
            let vectors =
                (index == 0 && generated.lhs_vectors) || (index == 1 && generated.rhs_texels);
            let binding = if vectors { binding.vec4() } else { binding };
            if index < 2 && generated.texture_operands {
                binding.texture()
            } else {
                binding
            }
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
        shape: generated.shape,
    }))
}

/// Returns the implicit GEMM that lowers `node` (a conv2d, a conv_transpose2d or the IR's
/// conv2d_weight_grad, whose operands are x and dy) and its geometry, or `None` for other
/// ops and for geometries the generator rejects.
pub fn gemm_problem(graph: &Graph, node: NodeId) -> Option<(ConvOp, ConvGeometry)> {
    let operands = graph.operands(node);
    let dims = |id: NodeId| graph.shape(id).dims().to_vec();
    let out = graph.shape(node).dims().to_vec();
    let (op, stride, padding) = match graph.node(node).op {
        Op::Conv2d { stride, padding } => (ConvOp::Conv2d, stride, padding),
        Op::ConvTranspose2d { stride, padding, .. } => (ConvOp::ConvTranspose2d, stride, padding),
        Op::Conv2dWeightGrad { stride, padding, .. } => (ConvOp::Conv2dWeightGrad, stride, padding),
        _ => return None,
    };
    let (x, second) = (dims(*operands.first()?), dims(*operands.get(1)?));
    if x.len() != 4 || second.len() != 4 || out.len() != 4 {
        return None;
    }
    // A weight gradient's operands are x and dy, and its output has the weight's shape.
    let (out_channels, out_size, kernel) = if op == ConvOp::Conv2dWeightGrad {
        (second[1], [second[2], second[3]], [out[2], out[3]])
    } else {
        (out[1], [out[2], out[3]], [second[2], second[3]])
    };
    let geometry = ConvGeometry {
        batch: x[0],
        in_channels: x[1],
        in_size: [x[2], x[3]],
        out_channels,
        out_size,
        kernel,
        stride,
        padding,
    };
    gemm::check_geometry(op, &geometry).ok()?;
    Some((op, geometry))
}

/// Lowers the IR's conv2d_weight_grad (operands x and dy, output the weight's shape) as an
/// implicit GEMM, or returns `None` when the generator rejects it.
pub(super) fn lower_conv2d_weight_grad_gemm(
    ctx: &LowerContext<'_>,
) -> Result<Option<Kernel>, CodegenError> {
    lower_node_gemm(ctx, "conv2d_weight_grad")
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
    let channel_tile = (tuning.conv_out_channel_tile as usize).clamp(1, co);
    let co_groups = co.div_ceil(channel_tile);
    let transposed = template == CONV_TRANSPOSE2D;
    // A conv2d tile runs along a row; a transposed tile along one residue class of it.
    let row = if transposed { ow.div_ceil(stride[1]) } else { ow };
    let pixel_tile = (tuning.conv_pixel_tile as usize).clamp(1, row);
    let row_tiles = row.div_ceil(pixel_tile);
    let classes = if transposed { stride[1] } else { 1 };
    let invocations = (n * oh * classes * row_tiles * co_groups) as u64;
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
        ("TP", u(pixel_tile as u64)),
        ("TC", u(channel_tile as u64)),
        ("CO_GROUPS", u(co_groups as u64)),
        (if transposed { "Q_TILES" } else { "OW_TILES" }, u(row_tiles as u64)),
    ];
    let has_bias = ctx.operand_count() == 3;
    let tile = TileCode { pixels: pixel_tile, channels: channel_tile, transposed, has_bias };
    let body = fill(
        template,
        &[
            ("DECLARE", tile.declarations()),
            ("LOADS", tile.loads()),
            ("FMAS", tile.multiply_adds()),
            ("STORES", tile.stores()),
        ],
    );
    let mut bindings: Vec<Binding> = vec![ctx.read("x", 0), ctx.read("w", 1)];
    if has_bias {
        bindings.push(ctx.read("b", 2));
    }
    bindings.push(ctx.output("y"));
    // A transposed convolution reaches each output pixel with KH*KW / (SH*SW) taps.
    let taps = if transposed { (kh * kw) / (stride[0] * stride[1]).max(1) } else { kh * kw };
    let flops = 2 * (n * co * oh * ow) as u64 * (ci * taps) as u64;
    Ok(ctx.kernel(role, &body, &constants, bindings, grid, flops))
}

/// The unrolled register tile of a convolution kernel: `pixels` x `channels` scalar
/// accumulators `a{j}_{p}`, the input loads `x{p}` and weight loads `w{j}` of one tap.
struct TileCode {
    pixels: usize,
    channels: usize,
    transposed: bool,
    has_bias: bool,
}

impl TileCode {
    fn declarations(&self) -> String {
        let mut code = String::new();
        for j in 0..self.channels {
            // Channels past CO read a valid weight row and are never stored.
            let row = if self.transposed { "KH * KW" } else { "CI * KH * KW" };
            code.push_str(&format!("    let wb{j} = min(co0 + {j}u, CO - 1u) * ({row});\n"));
        }
        for j in 0..self.channels {
            let names: Vec<String> = (0..self.pixels).map(|p| format!("a{j}_{p}")).collect();
            for name in names {
                code.push_str(&format!("    var {name} = 0.0;\n"));
            }
        }
        code
    }

    fn loads(&self) -> String {
        let indent = "                ";
        let mut code = String::new();
        for p in 0..self.pixels {
            let ix = if self.transposed {
                format!("i32(q0 + {p}u) + shift")
            } else {
                format!("i32((ox0 + {p}u) * SW + kx) - PW")
            };
            code.push_str(&format!("{indent}let ix{p} = {ix};\n"));
            code.push_str(&format!(
                "{indent}let x{p} = select(0.0, x[x_row + u32(clamp(ix{p}, 0, i32(W) - 1))], \
                 ix{p} >= 0 && ix{p} < i32(W));\n"
            ));
        }
        for j in 0..self.channels {
            code.push_str(&format!("{indent}let w{j} = w[wb{j} + tap];\n"));
        }
        code
    }

    fn multiply_adds(&self) -> String {
        let mut code = String::new();
        for j in 0..self.channels {
            for p in 0..self.pixels {
                code.push_str(&format!("                a{j}_{p} += w{j} * x{p};\n"));
            }
        }
        code
    }

    fn stores(&self) -> String {
        let mut code = String::new();
        for j in 0..self.channels {
            let bias = if self.has_bias { format!("b[co0 + {j}u]") } else { "0.0".to_string() };
            for p in 0..self.pixels {
                let ox = if self.transposed {
                    format!("rx + SW * (q0 + {p}u)")
                } else {
                    format!("ox0 + {p}u")
                };
                code.push_str(&format!(
                    "    if (co0 + {j}u < CO && {ox} < OW) {{\n        \
                     y[((n * CO + co0 + {j}u) * OH + oy) * OW + {ox}] = a{j}_{p} + {bias};\n    }}\n"
                ));
            }
        }
        code
    }
}

pub(super) fn lower_conv2d(
    ctx: &LowerContext<'_>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Kernel, CodegenError> {
    match lower_node_gemm(ctx, "conv2d")? {
        Some(kernel) => Ok(kernel),
        None => lower_direct(ctx, "conv2d", CONV2D, stride, padding),
    }
}

pub(super) fn lower_conv_transpose2d(
    ctx: &LowerContext<'_>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Kernel, CodegenError> {
    match lower_node_gemm(ctx, "conv_transpose2d")? {
        Some(kernel) => Ok(kernel),
        None => lower_direct(ctx, "conv_transpose2d", CONV_TRANSPOSE2D, stride, padding),
    }
}

/// Lowers the node as the implicit GEMM of [`gemm_problem`], or returns `None` when there
/// is none. Work fused into the GEMM has no other lowering, so a rejected GEMM with fused
/// work is an error.
fn lower_node_gemm(ctx: &LowerContext<'_>, role: &str) -> Result<Option<Kernel>, CodegenError> {
    let kernel = match gemm_problem(ctx.graph, ctx.node) {
        Some((op, geometry)) => lower_gemm(ctx, role, op, &geometry)?,
        None => None,
    };
    let fused = (0..ctx.operand_count()).any(|slot| ctx.fused_activation(slot).is_some())
        || ctx.fusion.epilogue(ctx.node).is_some();
    if kernel.is_none() && fused {
        return Err(CodegenError::FusionRejected {
            kernel: ctx.kernel_name(role),
            reason: "the implicit GEMM that would carry the fused elementwise work is \
                     unavailable for this geometry"
                .to_string(),
        });
    }
    Ok(kernel)
}
