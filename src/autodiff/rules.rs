//! The gradient rule of every op: one arm of [`grad`] per op.
//!
//! A rule receives the forward node, which of its operand slots need a gradient, and the
//! node that contains the loss's gradient with respect to the forward node's output (`dy`).
//! It returns one entry per operand slot, `Some` for each slot that was asked for. Rules
//! reuse forward ops where the math allows it: conv2d's input gradient is a
//! conv_transpose2d with the same weight and the reverse, tanh's and sigmoid's gradients
//! are elementwise arithmetic on their outputs.

use super::{AutodiffError, Emitter};
use crate::ir::{NodeId, Op, Shape};

/// Returns whether the loss can have a gradient with respect to operand `slot` of `op`. Class
/// labels have none, and `StopGradient` passes none.
pub(super) fn has_gradient(op: &Op, slot: usize) -> bool {
    match op {
        Op::StopGradient => false,
        Op::CrossEntropy => slot == 0,
        _ => true,
    }
}

/// Builds the gradients of the current forward node's operands from `dy`.
pub(super) fn grad(
    e: &mut Emitter<'_>,
    node: NodeId,
    needed: &[bool],
    dy: NodeId,
) -> Result<Vec<Option<NodeId>>, AutodiffError> {
    let forward = e.graph.node(node).clone();
    let x = e.graph.operands(node);
    let shape = |e: &Emitter<'_>, i: usize| e.graph.shape(x[i]).clone();
    let mut out: Vec<Option<NodeId>> = vec![None; x.len()];
    let want = |i: usize| needed.get(i).copied().unwrap_or(false);

    match &forward.op {
        Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } | Op::StopGradient => {}

        Op::Conv2d { stride, padding } => {
            let (input, weight) = (shape(e, 0), shape(e, 1));
            let kernel = [weight.0[2], weight.0[3]];
            if want(0) {
                // The rows and columns that the last window leaves out get zero gradient:
                // output_padding restores them so that dx has x's size.
                let output_padding = [
                    (input.0[2] + 2 * padding[0] - kernel[0]) % stride[0],
                    (input.0[3] + 2 * padding[1] - kernel[1]) % stride[1],
                ];
                let op = Op::ConvTranspose2d { stride: *stride, padding: *padding, output_padding };
                out[0] = Some(e.op(op, &[dy, x[1]], "dx")?);
            }
            if want(1) {
                let op = Op::Conv2dWeightGrad { kernel, stride: *stride, padding: *padding };
                out[1] = Some(e.op(op, &[x[0], dy], "dweight")?);
            }
            if x.len() > 2 && want(2) {
                out[2] = Some(e.op(Op::Sum { axes: vec![0, 2, 3] }, &[dy], "dbias")?);
            }
        }

        Op::ConvTranspose2d { stride, padding, .. } => {
            let weight = shape(e, 1);
            let kernel = [weight.0[2], weight.0[3]];
            if want(0) {
                let op = Op::Conv2d { stride: *stride, padding: *padding };
                out[0] = Some(e.op(op, &[dy, x[1]], "dx")?);
            }
            if want(1) {
                // The transposed convolution is the adjoint of a conv2d from dy's space to
                // x's, so its weight gradient is that conv2d's with the operands swapped.
                let op = Op::Conv2dWeightGrad { kernel, stride: *stride, padding: *padding };
                out[1] = Some(e.op(op, &[dy, x[0]], "dweight")?);
            }
            if x.len() > 2 && want(2) {
                out[2] = Some(e.op(Op::Sum { axes: vec![0, 2, 3] }, &[dy], "dbias")?);
            }
        }

        Op::BatchNorm { eps, .. } => {
            let input = shape(e, 0);
            let axes: Vec<usize> = (0..input.rank()).filter(|&a| a != 1).collect();
            let offset_grad = e.op(Op::Sum { axes }, &[dy], "doffset")?;
            let scale_grad = e.op(Op::BatchNormScaleGrad { eps: *eps }, &[x[0], dy], "dscale")?;
            if want(0) {
                let op = Op::BatchNormInputGrad { eps: *eps };
                out[0] = Some(e.op(op, &[x[0], x[1], dy, scale_grad, offset_grad], "dx")?);
            }
            out[1] = want(1).then_some(scale_grad);
            out[2] = want(2).then_some(offset_grad);
        }

        Op::Relu => out[0] = Some(e.op(Op::LeakyReluGrad { slope: 0.0 }, &[x[0], dy], "dx")?),
        Op::LeakyRelu { slope } => {
            out[0] = Some(e.op(Op::LeakyReluGrad { slope: *slope }, &[x[0], dy], "dx")?);
        }

        Op::Tanh => {
            // d tanh(x) / dx = 1 - tanh(x)^2, computed from the forward output.
            let one = e.constant(1.0, "one");
            let square = e.op(Op::Mul, &[node, node], "y2")?;
            let slope = e.op(Op::Sub, &[one, square], "dydx")?;
            out[0] = Some(e.op(Op::Mul, &[dy, slope], "dx")?);
        }

        Op::Sigmoid => {
            // d sigmoid(x) / dx = y * (1 - y), computed from the forward output.
            let one = e.constant(1.0, "one");
            let complement = e.op(Op::Sub, &[one, node], "1my")?;
            let slope = e.op(Op::Mul, &[node, complement], "dydx")?;
            out[0] = Some(e.op(Op::Mul, &[dy, slope], "dx")?);
        }

        Op::Dropout { p } => {
            let op = Op::DropoutGrad { p: *p, forward: node };
            out[0] = Some(e.op(op, &[dy], "dx")?);
        }

        Op::Concat { axis } => {
            let mut start = 0;
            for i in 0..x.len() {
                let len = shape(e, i).0[*axis];
                if want(i) {
                    let op = Op::Slice { axis: *axis, start, len };
                    out[i] = Some(e.op(op, &[dy], &format!("dx{i}"))?);
                }
                start += len;
            }
        }

        Op::Add => {
            out[0] = want(0).then(|| reduce_to(e, dy, &shape(e, 0), "da")).transpose()?;
            out[1] = want(1).then(|| reduce_to(e, dy, &shape(e, 1), "db")).transpose()?;
        }

        Op::Sub => {
            out[0] = want(0).then(|| reduce_to(e, dy, &shape(e, 0), "da")).transpose()?;
            if want(1) {
                let reduced = reduce_to(e, dy, &shape(e, 1), "db_sum")?;
                out[1] = Some(e.op(Op::Neg, &[reduced], "db")?);
            }
        }

        Op::Mul => {
            if want(0) {
                let product = e.op(Op::Mul, &[dy, x[1]], "da_full")?;
                out[0] = Some(reduce_to(e, product, &shape(e, 0), "da")?);
            }
            if want(1) {
                let product = e.op(Op::Mul, &[dy, x[0]], "db_full")?;
                out[1] = Some(reduce_to(e, product, &shape(e, 1), "db")?);
            }
        }

        Op::Div => {
            if want(0) {
                let quotient = e.op(Op::Div, &[dy, x[1]], "da_full")?;
                out[0] = Some(reduce_to(e, quotient, &shape(e, 0), "da")?);
            }
            if want(1) {
                // d(a / b) / db = -(a / b) / b, computed from the forward output.
                let ratio = e.op(Op::Div, &[node, x[1]], "y_over_b")?;
                let product = e.op(Op::Mul, &[dy, ratio], "db_full")?;
                let reduced = reduce_to(e, product, &shape(e, 1), "db_sum")?;
                out[1] = Some(e.op(Op::Neg, &[reduced], "db")?);
            }
        }

        Op::Neg => out[0] = Some(e.op(Op::Neg, &[dy], "dx")?),

        Op::Linear => {
            if want(0) {
                let op = Op::MatMul { transpose_a: false, transpose_b: false };
                out[0] = Some(e.op(op, &[dy, x[1]], "dx")?);
            }
            if want(1) {
                let op = Op::MatMul { transpose_a: true, transpose_b: false };
                out[1] = Some(e.op(op, &[dy, x[0]], "dweight")?);
            }
            if x.len() > 2 && want(2) {
                out[2] = Some(e.op(Op::Sum { axes: vec![0] }, &[dy], "dbias")?);
            }
        }

        Op::MatMul { transpose_a, transpose_b } => {
            let (a, b) = (x[0], x[1]);
            // With C = op(A) op(B): dA and dB are products of dC with the other operand,
            // arranged so that each comes out in its operand's own layout.
            let (da, db) = match (transpose_a, transpose_b) {
                (false, false) => (((dy, b), (false, true)), ((a, dy), (true, false))),
                (true, false) => (((b, dy), (false, true)), ((a, dy), (false, false))),
                (false, true) => (((dy, b), (false, false)), ((dy, a), (true, false))),
                (true, true) => (((b, dy), (true, true)), ((dy, a), (true, true))),
            };
            for (i, ((p, q), (ta, tb)), tag) in [(0, da, "da"), (1, db, "db")] {
                if want(i) {
                    let op = Op::MatMul { transpose_a: ta, transpose_b: tb };
                    out[i] = Some(e.op(op, &[p, q], tag)?);
                }
            }
        }

        Op::Flatten | Op::Reshape { .. } => {
            out[0] = Some(e.op(Op::Reshape { shape: shape(e, 0) }, &[dy], "dx")?);
        }

        Op::Broadcast { axes, .. } => {
            out[0] = Some(e.op(Op::Sum { axes: axes.clone() }, &[dy], "dx")?);
        }

        Op::Slice { axis, start, len } => {
            // Zeros before and after the slice, concatenated with dy along the axis.
            let input = shape(e, 0);
            let mut pieces = Vec::new();
            let after = input.0[*axis] - start - len;
            for (size, tag) in [(*start, "zeros_before"), (0, ""), (after, "zeros_after")] {
                if tag.is_empty() {
                    pieces.push(dy);
                } else if size > 0 {
                    let mut piece = input.clone();
                    piece.0[*axis] = size;
                    let zero = e.constant(0.0, "zero");
                    pieces.push(e.op(
                        Op::Broadcast { shape: piece, axes: vec![] },
                        &[zero],
                        tag,
                    )?);
                }
            }
            out[0] = Some(e.op(Op::Concat { axis: *axis }, &pieces, "dx")?);
        }

        Op::MaxPool2d { kernel, stride } => {
            let op = Op::MaxPool2dGrad { kernel: *kernel, stride: *stride };
            out[0] = Some(e.op(op, &[x[0], dy], "dx")?);
        }

        Op::Sum { axes } => {
            let op = Op::Broadcast { shape: shape(e, 0), axes: axes.clone() };
            out[0] = Some(e.op(op, &[dy], "dx")?);
        }

        Op::Mean { axes } => {
            let input = shape(e, 0);
            let count: usize = if axes.is_empty() {
                input.numel()
            } else {
                axes.iter().map(|&a| input.0[a]).product()
            };
            let inverse = e.constant(1.0 / count as f32, "inv_count");
            let scaled = e.op(Op::Mul, &[dy, inverse], "dy_mean")?;
            out[0] =
                Some(e.op(Op::Broadcast { shape: input, axes: axes.clone() }, &[scaled], "dx")?);
        }

        Op::BceWithLogits => {
            if want(0) {
                out[0] = Some(e.op(Op::BceWithLogitsGrad, &[x[0], x[1], dy], "dlogits")?);
            }
            if want(1) {
                // d loss / d target = -logits / n.
                let factor = e.constant(-1.0 / shape(e, 0).numel() as f32, "neg_inv_count");
                let scaled = e.op(Op::Mul, &[x[0], factor], "dtarget_unit")?;
                let full = e.op(Op::Mul, &[scaled, dy], "dtarget_full")?;
                out[1] = Some(reduce_to(e, full, &shape(e, 1), "dtarget")?);
            }
        }

        Op::L1Loss => {
            let da = e.op(Op::L1LossGrad, &[x[0], x[1], dy], "da")?;
            out[0] = want(0).then_some(da);
            out[1] = want(1).then(|| e.op(Op::Neg, &[da], "db")).transpose()?;
        }

        Op::MseLoss => {
            // d mean((a - b)^2) / da = 2 (a - b) / n.
            let diff = e.op(Op::Sub, &[x[0], x[1]], "diff")?;
            let factor = e.constant(2.0 / shape(e, 0).numel() as f32, "two_over_n");
            let scaled = e.op(Op::Mul, &[diff, factor], "da_unit")?;
            let da = e.op(Op::Mul, &[scaled, dy], "da")?;
            out[0] = want(0).then_some(da);
            out[1] = want(1).then(|| e.op(Op::Neg, &[da], "db")).transpose()?;
        }

        Op::CrossEntropy => {
            out[0] = Some(e.op(Op::CrossEntropyGrad, &[x[0], x[1], dy], "dlogits")?);
        }

        Op::Conv2dWeightGrad { .. }
        | Op::BatchNormScaleGrad { .. }
        | Op::BatchNormInputGrad { .. }
        | Op::LeakyReluGrad { .. }
        | Op::DropoutGrad { .. }
        | Op::MaxPool2dGrad { .. }
        | Op::BceWithLogitsGrad
        | Op::L1LossGrad
        | Op::CrossEntropyGrad => {
            return Err(AutodiffError::NoGradientRule {
                step: e.step().to_string(),
                node: forward.name.clone(),
                op: forward.op.name(),
                span: forward.span,
            });
        }
    }

    for (i, grad) in out.iter().enumerate() {
        if let Some(g) = grad {
            debug_assert_eq!(
                e.graph.shape(*g),
                e.graph.shape(x[i]),
                "the gradient of operand {i} of {} has its operand's shape",
                forward.name
            );
        }
    }
    Ok(out)
}

/// Sums `grad` to `target`, the shape of an operand that an elementwise op broadcast from a
/// scalar; returns `grad` itself when the shapes already agree.
fn reduce_to(
    e: &mut Emitter<'_>,
    grad: NodeId,
    target: &Shape,
    tag: &str,
) -> Result<NodeId, AutodiffError> {
    if e.graph.shape(grad) == target {
        return Ok(grad);
    }
    e.op(Op::Sum { axes: vec![] }, &[grad], tag)
}
