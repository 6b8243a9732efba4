//! The op set and each op's shape rule.

use super::{NodeId, ParamId, Shape};
use serde::{Deserialize, Serialize};

/// A typed tensor operation. Operands are listed in slot order in each variant's doc.
///
/// Image tensors are `[N, C, H, W]`. Weights use PyTorch's layouts, so checkpoints map
/// one to one: conv2d `[C_out, C_in, kh, kw]`, conv_transpose2d `[C_in, C_out, kh, kw]`,
/// linear `[out, in]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A data input bound by the runtime (`input`, `target`, a network argument). No operands.
    Input {
        name: String,
    },
    /// A declared parameter or buffer. No operands.
    Param {
        id: ParamId,
    },
    /// A scalar constant (shape `[]`). No operands.
    Constant {
        value: f32,
    },
    /// Operands: x `[N, Ci, H, W]`, weight `[Co, Ci, kh, kw]`, optional bias `[Co]`.
    Conv2d {
        stride: [usize; 2],
        padding: [usize; 2],
    },
    /// Operands: x `[N, Ci, H, W]`, weight `[Ci, Co, kh, kw]`, optional bias `[Co]`.
    /// Output size is `(H - 1) * stride - 2 * padding + kh + output_padding`.
    ConvTranspose2d {
        stride: [usize; 2],
        padding: [usize; 2],
        output_padding: [usize; 2],
    },
    /// Operands: x `[N, C, ...]`, scale `[C]`, offset `[C]`. In training mode it normalizes
    /// with the batch statistics and updates the running statistics (non-trainable
    /// parameters) with `momentum`; in evaluation mode it uses the running statistics.
    BatchNorm {
        eps: f32,
        momentum: f32,
        running_mean: ParamId,
        running_var: ParamId,
    },
    Relu,
    LeakyRelu {
        slope: f32,
    },
    Tanh,
    Sigmoid,
    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)` in
    /// training mode; the identity in evaluation mode.
    Dropout {
        p: f32,
    },
    /// Concatenates all operands along `axis`; the other dimensions must agree.
    Concat {
        axis: usize,
    },
    /// Elementwise binary ops. The operands have equal shapes, or one of them is a scalar.
    Add,
    Sub,
    Mul,
    Div,
    Neg,
    /// Operands: x `[N, in]`, weight `[out, in]`, optional bias `[out]`.
    Linear,
    /// `[N, d1, d2, ...]` to `[N, d1 * d2 * ...]`.
    Flatten,
    /// Max pooling over `kernel` windows with `stride`, no padding.
    MaxPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    /// Reductions over `axes` (all axes when empty), which are removed from the shape.
    Sum {
        axes: Vec<usize>,
    },
    Mean {
        axes: Vec<usize>,
    },
    /// Mean binary cross-entropy on logits, in the stable form
    /// `max(x, 0) - x * y + log(1 + exp(-|x|))`. Operands: logits, targets (same shape, or
    /// a scalar). Output: scalar.
    BceWithLogits,
    /// Mean absolute difference. Operands: a, b of equal shapes. Output: scalar.
    L1Loss,
    /// Mean squared difference. Operands: a, b of equal shapes. Output: scalar.
    MseLoss,
    /// Mean softmax cross-entropy. Operands: logits `[N, K]`, class indices `[N]` stored as
    /// f32. Output: scalar.
    CrossEntropy,
    /// The identity in the forward direction; autodiff passes no gradient through it.
    StopGradient,

    // The ops below come from autodiff (`src/autodiff/rules.rs` shows which forward op
    // each serves), but they are ordinary ops with ordinary shape rules.
    /// Matrix product of two rank-2 operands, each optionally transposed first: `a [m, k]`
    /// (or `[k, m]` with `transpose_a`), `b [k, n]` (or `[n, k]` with `transpose_b`).
    /// Output `[m, n]`.
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    /// The same elements in a new shape with the same element count. Operand: x.
    Reshape {
        shape: Shape,
    },
    /// Repeats the operand along `axes` to `shape`; the inverse of `Sum { axes }` on a tensor
    /// of `shape`. The operand's shape is `shape` with `axes` removed (a scalar when `axes`
    /// is empty, which means every axis).
    Broadcast {
        shape: Shape,
        axes: Vec<usize>,
    },
    /// Elements `start..start + len` of the operand along `axis`.
    Slice {
        axis: usize,
        start: usize,
        len: usize,
    },
    /// Gradient of conv2d with respect to its weight. Operands: x `[N, Ci, H, W]` and the
    /// output gradient dy `[N, Co, Ho, Wo]`, where `[Ho, Wo]` is conv2d's output size for x.
    /// Output `[Co, Ci, kh, kw]`. With x and dy swapped it is also the weight gradient of
    /// conv_transpose2d.
    Conv2dWeightGrad {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    /// Per-channel sum of `dy * x_hat`, where `x_hat` is x normalized with its batch
    /// statistics: the gradient of batch_norm's scale. Operands: x `[N, C, ...]`, dy (x's
    /// shape). Output `[C]`.
    BatchNormScaleGrad {
        eps: f32,
    },
    /// Gradient of training-mode batch_norm with respect to x:
    /// `scale * inv_std * (dy - offset_grad / M - x_hat * scale_grad / M)`, with `M` the
    /// element count per channel. Operands: x, scale `[C]`, dy, scale_grad `[C]` (from
    /// `BatchNormScaleGrad`), offset_grad `[C]` (the per-channel sum of dy). Output: x's
    /// shape.
    BatchNormInputGrad {
        eps: f32,
    },
    /// `dy` where `x > 0`, `slope * dy` elsewhere (relu uses slope 0). Operands: x, dy.
    LeakyReluGrad {
        slope: f32,
    },
    /// `dy` with the mask of the forward dropout node `forward` applied and the kept
    /// elements scaled by `1 / (1 - p)`. The mask is drawn again from the counter-based
    /// hash keyed by the forward node's id, so nothing is stored. Operand: dy.
    DropoutGrad {
        p: f32,
        forward: NodeId,
    },
    /// Routes each element of dy to the first maximum of its window in x. Operands: x, dy.
    /// Output: x's shape.
    MaxPool2dGrad {
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    /// `dy * (sigmoid(x) - y) / n`, the gradient of `BceWithLogits` with respect to its
    /// logits. Operands: logits x, targets y (x's shape or a scalar), dy `[]`. Output: x's
    /// shape.
    BceWithLogitsGrad,
    /// `dy * sign(a - b) / n` with `sign(0) = 0`, the gradient of `L1Loss` with respect to
    /// a. Operands: a, b, dy `[]`. Output: a's shape.
    L1LossGrad,
    /// `dy * (softmax(x) - one_hot(labels)) / N`, the gradient of `CrossEntropy` with
    /// respect to its logits. Operands: logits `[N, K]`, labels `[N]`, dy `[]`.
    CrossEntropyGrad,
}

/// A violated shape rule, rendered by the front end with the source span of the node.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{rule}")]
pub struct ShapeError {
    /// What failed, as a sentence fragment naming the shapes involved.
    pub rule: String,
}

fn fail<T>(rule: impl Into<String>) -> Result<T, ShapeError> {
    Err(ShapeError { rule: rule.into() })
}

impl Op {
    /// The op's name as the DSL and the IR dumps spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Constant { .. } => "constant",
            Op::Conv2d { .. } => "conv2d",
            Op::ConvTranspose2d { .. } => "conv_transpose2d",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Relu => "relu",
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::Tanh => "tanh",
            Op::Sigmoid => "sigmoid",
            Op::Dropout { .. } => "dropout",
            Op::Concat { .. } => "concat",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Neg => "neg",
            Op::Linear => "linear",
            Op::Flatten => "flatten",
            Op::MaxPool2d { .. } => "max_pool2d",
            Op::Sum { .. } => "sum",
            Op::Mean { .. } => "mean",
            Op::BceWithLogits => "bce_logits",
            Op::L1Loss => "l1",
            Op::MseLoss => "mse",
            Op::CrossEntropy => "cross_entropy",
            Op::StopGradient => "stop_gradient",
            Op::MatMul { .. } => "matmul",
            Op::Reshape { .. } => "reshape",
            Op::Broadcast { .. } => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Conv2dWeightGrad { .. } => "conv2d_weight_grad",
            Op::BatchNormScaleGrad { .. } => "batch_norm_scale_grad",
            Op::BatchNormInputGrad { .. } => "batch_norm_input_grad",
            Op::LeakyReluGrad { .. } => "leaky_relu_grad",
            Op::DropoutGrad { .. } => "dropout_grad",
            Op::MaxPool2dGrad { .. } => "max_pool2d_grad",
            Op::BceWithLogitsGrad => "bce_logits_grad",
            Op::L1LossGrad => "l1_grad",
            Op::CrossEntropyGrad => "cross_entropy_grad",
        }
    }

    /// The allowed operand counts, inclusive.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } => (0, 0),
            Op::Conv2d { .. } | Op::ConvTranspose2d { .. } | Op::Linear => (2, 3),
            Op::BatchNorm { .. } => (3, 3),
            Op::Relu
            | Op::LeakyRelu { .. }
            | Op::Tanh
            | Op::Sigmoid
            | Op::Dropout { .. }
            | Op::Neg
            | Op::Flatten
            | Op::MaxPool2d { .. }
            | Op::Sum { .. }
            | Op::Mean { .. }
            | Op::StopGradient
            | Op::Reshape { .. }
            | Op::Broadcast { .. }
            | Op::Slice { .. }
            | Op::DropoutGrad { .. } => (1, 1),
            Op::Concat { .. } => (1, usize::MAX),
            Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::BceWithLogits
            | Op::L1Loss
            | Op::MseLoss
            | Op::CrossEntropy
            | Op::MatMul { .. }
            | Op::Conv2dWeightGrad { .. }
            | Op::BatchNormScaleGrad { .. }
            | Op::LeakyReluGrad { .. }
            | Op::MaxPool2dGrad { .. } => (2, 2),
            Op::BceWithLogitsGrad | Op::L1LossGrad | Op::CrossEntropyGrad => (3, 3),
            Op::BatchNormInputGrad { .. } => (5, 5),
        }
    }

    /// Computes the output shape from the operand shapes, or the rule that failed.
    ///
    /// Leaf ops (`Input`, `Param`, `Constant`) have no rule here: their shape comes from
    /// their declaration, so this returns `None` for them.
    pub fn infer_shape(&self, operands: &[&Shape]) -> Option<Result<Shape, ShapeError>> {
        let (min, max) = self.arity();
        if operands.len() < min || operands.len() > max {
            return Some(fail(format!(
                "{} takes {} operands, got {}",
                self.name(),
                if min == max { min.to_string() } else { format!("{min} to {max}") },
                operands.len()
            )));
        }
        Some(match self {
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } => return None,
            Op::Conv2d { stride, padding } => conv2d_shape(operands, *stride, *padding),
            Op::ConvTranspose2d { stride, padding, output_padding } => {
                conv_transpose2d_shape(operands, *stride, *padding, *output_padding)
            }
            Op::BatchNorm { .. } => batch_norm_shape(operands),
            Op::Relu
            | Op::LeakyRelu { .. }
            | Op::Tanh
            | Op::Sigmoid
            | Op::Dropout { .. }
            | Op::Neg
            | Op::StopGradient => Ok(operands[0].clone()),
            Op::Concat { axis } => concat_shape(operands, *axis),
            Op::Add | Op::Sub | Op::Mul | Op::Div => elementwise_shape(self.name(), operands),
            Op::Linear => linear_shape(operands),
            Op::Flatten => flatten_shape(operands[0]),
            Op::MaxPool2d { kernel, stride } => max_pool2d_shape(operands[0], *kernel, *stride),
            Op::Sum { axes } | Op::Mean { axes } => reduce_shape(operands[0], axes),
            Op::BceWithLogits | Op::L1Loss | Op::MseLoss => {
                let (a, b) = (operands[0], operands[1]);
                if a == b || (self == &Op::BceWithLogits && b.is_scalar()) {
                    Ok(Shape::scalar())
                } else {
                    fail(format!("{} needs operands of equal shapes, got {a} and {b}", self.name()))
                }
            }
            Op::CrossEntropy => cross_entropy_shape(operands[0], operands[1]),
            Op::MatMul { transpose_a, transpose_b } => {
                matmul_shape(operands, *transpose_a, *transpose_b)
            }
            Op::Reshape { shape } => reshape_shape(operands[0], shape),
            Op::Broadcast { shape, axes } => broadcast_shape(operands[0], shape, axes),
            Op::Slice { axis, start, len } => slice_shape(operands[0], *axis, *start, *len),
            Op::Conv2dWeightGrad { kernel, stride, padding } => {
                conv2d_weight_grad_shape(operands, *kernel, *stride, *padding)
            }
            Op::BatchNormScaleGrad { .. } => batch_norm_scale_grad_shape(operands),
            Op::BatchNormInputGrad { .. } => batch_norm_input_grad_shape(operands),
            Op::LeakyReluGrad { .. } => same_shapes(self.name(), operands[0], operands[1]),
            Op::MaxPool2dGrad { kernel, stride } => {
                max_pool2d_grad_shape(operands[0], operands[1], *kernel, *stride)
            }
            Op::DropoutGrad { .. } => Ok(operands[0].clone()),
            Op::BceWithLogitsGrad | Op::L1LossGrad | Op::CrossEntropyGrad => {
                loss_grad_shape(self, operands)
            }
        })
    }
}

fn expect_rank(what: &str, shape: &Shape, rank: usize) -> Result<(), ShapeError> {
    if shape.rank() == rank {
        Ok(())
    } else {
        fail(format!("{what} must have rank {rank}, got {shape}"))
    }
}

fn expect_bias(bias: Option<&&Shape>, channels: usize) -> Result<(), ShapeError> {
    match bias {
        Some(b) if b.dims() != [channels] => {
            fail(format!("bias must have shape [{channels}], got {b}"))
        }
        _ => Ok(()),
    }
}

fn conv2d_shape(
    ops: &[&Shape],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Shape, ShapeError> {
    let (x, w) = (ops[0], ops[1]);
    expect_rank("conv2d input", x, 4)?;
    expect_rank("conv2d weight", w, 4)?;
    let (n, ci, h, wd) = (x.0[0], x.0[1], x.0[2], x.0[3]);
    let (co, wci, kh, kw) = (w.0[0], w.0[1], w.0[2], w.0[3]);
    if ci != wci {
        return fail(format!("conv2d input has {ci} channels but the weight {w} expects {wci}"));
    }
    if stride[0] == 0 || stride[1] == 0 {
        return fail("conv2d stride must be at least 1");
    }
    let (ph, pw) = (h + 2 * padding[0], wd + 2 * padding[1]);
    if ph < kh || pw < kw {
        return fail(format!(
            "conv2d kernel {kh}x{kw} is larger than the padded input {ph}x{pw} (input {x})"
        ));
    }
    expect_bias(ops.get(2), co)?;
    Ok(Shape::new([n, co, (ph - kh) / stride[0] + 1, (pw - kw) / stride[1] + 1]))
}

fn conv_transpose2d_shape(
    ops: &[&Shape],
    stride: [usize; 2],
    padding: [usize; 2],
    output_padding: [usize; 2],
) -> Result<Shape, ShapeError> {
    let (x, w) = (ops[0], ops[1]);
    expect_rank("conv_transpose2d input", x, 4)?;
    expect_rank("conv_transpose2d weight", w, 4)?;
    let (n, ci, h, wd) = (x.0[0], x.0[1], x.0[2], x.0[3]);
    let (wci, co, kh, kw) = (w.0[0], w.0[1], w.0[2], w.0[3]);
    if ci != wci {
        return fail(format!(
            "conv_transpose2d input has {ci} channels but the weight {w} expects {wci}"
        ));
    }
    if stride[0] == 0 || stride[1] == 0 {
        return fail("conv_transpose2d stride must be at least 1");
    }
    if output_padding[0] >= stride[0] || output_padding[1] >= stride[1] {
        return fail("conv_transpose2d output_padding must be smaller than the stride");
    }
    let full_h = (h - 1) * stride[0] + kh + output_padding[0];
    let full_w = (wd - 1) * stride[1] + kw + output_padding[1];
    if full_h <= 2 * padding[0] || full_w <= 2 * padding[1] {
        return fail(format!(
            "conv_transpose2d padding {padding:?} leaves no output for input {x}"
        ));
    }
    expect_bias(ops.get(2), co)?;
    Ok(Shape::new([n, co, full_h - 2 * padding[0], full_w - 2 * padding[1]]))
}

fn batch_norm_shape(ops: &[&Shape]) -> Result<Shape, ShapeError> {
    let x = ops[0];
    if x.rank() < 2 {
        return fail(format!("batch_norm input must have a channel axis, got {x}"));
    }
    let c = x.0[1];
    for (what, s) in [("scale", ops[1]), ("offset", ops[2])] {
        if s.dims() != [c] {
            return fail(format!("batch_norm {what} must have shape [{c}], got {s}"));
        }
    }
    Ok(x.clone())
}

fn concat_shape(ops: &[&Shape], axis: usize) -> Result<Shape, ShapeError> {
    let first = ops[0];
    if axis >= first.rank() {
        return fail(format!("concat axis {axis} is out of range for {first}"));
    }
    let mut out = first.clone();
    for s in &ops[1..] {
        let agrees = s.rank() == first.rank()
            && s.0.iter().zip(&first.0).enumerate().all(|(i, (a, b))| i == axis || a == b);
        if !agrees {
            return fail(format!(
                "concat along axis {axis} needs equal other dimensions, got {first} and {s}"
            ));
        }
        out.0[axis] += s.0[axis];
    }
    Ok(out)
}

fn elementwise_shape(name: &str, ops: &[&Shape]) -> Result<Shape, ShapeError> {
    let (a, b) = (ops[0], ops[1]);
    if a == b || b.is_scalar() {
        Ok(a.clone())
    } else if a.is_scalar() {
        Ok(b.clone())
    } else {
        fail(format!("{name} needs equal shapes or a scalar operand, got {a} and {b}"))
    }
}

fn linear_shape(ops: &[&Shape]) -> Result<Shape, ShapeError> {
    let (x, w) = (ops[0], ops[1]);
    expect_rank("linear input", x, 2)?;
    expect_rank("linear weight", w, 2)?;
    if x.0[1] != w.0[1] {
        return fail(format!(
            "linear input {x} has {} features but the weight {w} expects {}",
            x.0[1], w.0[1]
        ));
    }
    expect_bias(ops.get(2), w.0[0])?;
    Ok(Shape::new([x.0[0], w.0[0]]))
}

fn flatten_shape(x: &Shape) -> Result<Shape, ShapeError> {
    if x.rank() < 1 {
        return fail("flatten needs a batch axis, got a scalar");
    }
    Ok(Shape::new([x.0[0], x.0[1..].iter().product()]))
}

fn max_pool2d_shape(
    x: &Shape,
    kernel: [usize; 2],
    stride: [usize; 2],
) -> Result<Shape, ShapeError> {
    expect_rank("max_pool2d input", x, 4)?;
    if stride[0] == 0 || stride[1] == 0 || kernel[0] == 0 || kernel[1] == 0 {
        return fail("max_pool2d kernel and stride must be at least 1");
    }
    let (h, w) = (x.0[2], x.0[3]);
    if h < kernel[0] || w < kernel[1] {
        return fail(format!("max_pool2d kernel {kernel:?} is larger than the input {x}"));
    }
    Ok(Shape::new([
        x.0[0],
        x.0[1],
        (h - kernel[0]) / stride[0] + 1,
        (w - kernel[1]) / stride[1] + 1,
    ]))
}

fn reduce_shape(x: &Shape, axes: &[usize]) -> Result<Shape, ShapeError> {
    if axes.is_empty() {
        return Ok(Shape::scalar());
    }
    if let Some(a) = axes.iter().find(|&&a| a >= x.rank()) {
        return fail(format!("reduction axis {a} is out of range for {x}"));
    }
    Ok(Shape(x.0.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| *d).collect()))
}

fn cross_entropy_shape(logits: &Shape, labels: &Shape) -> Result<Shape, ShapeError> {
    expect_rank("cross_entropy logits", logits, 2)?;
    if labels.dims() != [logits.0[0]] {
        return fail(format!(
            "cross_entropy labels must have shape [{}], got {labels}",
            logits.0[0]
        ));
    }
    Ok(Shape::scalar())
}

fn matmul_shape(ops: &[&Shape], transpose_a: bool, transpose_b: bool) -> Result<Shape, ShapeError> {
    let (a, b) = (ops[0], ops[1]);
    expect_rank("matmul operand a", a, 2)?;
    expect_rank("matmul operand b", b, 2)?;
    let (m, ka) = if transpose_a { (a.0[1], a.0[0]) } else { (a.0[0], a.0[1]) };
    let (kb, n) = if transpose_b { (b.0[1], b.0[0]) } else { (b.0[0], b.0[1]) };
    if ka != kb {
        return fail(format!(
            "matmul inner dimensions differ: {a} (transposed: {transpose_a}) and {b} \
             (transposed: {transpose_b})"
        ));
    }
    Ok(Shape::new([m, n]))
}

fn reshape_shape(x: &Shape, shape: &Shape) -> Result<Shape, ShapeError> {
    if x.numel() != shape.numel() {
        return fail(format!("reshape from {x} to {shape} changes the element count"));
    }
    Ok(shape.clone())
}

fn broadcast_shape(x: &Shape, shape: &Shape, axes: &[usize]) -> Result<Shape, ShapeError> {
    let reduced = reduce_shape(shape, axes)?;
    if &reduced != x {
        return fail(format!(
            "broadcast to {shape} along axes {axes:?} needs an operand of shape {reduced}, got {x}"
        ));
    }
    Ok(shape.clone())
}

fn slice_shape(x: &Shape, axis: usize, start: usize, len: usize) -> Result<Shape, ShapeError> {
    if axis >= x.rank() {
        return fail(format!("slice axis {axis} is out of range for {x}"));
    }
    if len == 0 || start + len > x.0[axis] {
        return fail(format!(
            "slice {start}..{} along axis {axis} is empty or outside {x}",
            start + len
        ));
    }
    let mut out = x.clone();
    out.0[axis] = len;
    Ok(out)
}

fn conv2d_weight_grad_shape(
    ops: &[&Shape],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Shape, ShapeError> {
    let (x, dy) = (ops[0], ops[1]);
    expect_rank("conv2d_weight_grad input", x, 4)?;
    expect_rank("conv2d_weight_grad output gradient", dy, 4)?;
    let weight = Shape::new([dy.0[1], x.0[1], kernel[0], kernel[1]]);
    let y = conv2d_shape(&[x, &weight], stride, padding)?;
    if &y != dy {
        return fail(format!(
            "conv2d_weight_grad output gradient must have conv2d's output shape {y}, got {dy}"
        ));
    }
    Ok(weight)
}

fn batch_norm_scale_grad_shape(ops: &[&Shape]) -> Result<Shape, ShapeError> {
    let (x, dy) = (ops[0], ops[1]);
    if x.rank() < 2 {
        return fail(format!("batch_norm_scale_grad input must have a channel axis, got {x}"));
    }
    same_shapes("batch_norm_scale_grad", x, dy)?;
    Ok(Shape::new([x.0[1]]))
}

fn batch_norm_input_grad_shape(ops: &[&Shape]) -> Result<Shape, ShapeError> {
    let (x, dy) = (ops[0], ops[2]);
    let channels = batch_norm_scale_grad_shape(&[x, dy])?;
    for (what, s) in [("scale", ops[1]), ("scale gradient", ops[3]), ("offset gradient", ops[4])] {
        if s != &channels {
            return fail(format!(
                "batch_norm_input_grad {what} must have shape {channels}, got {s}"
            ));
        }
    }
    Ok(x.clone())
}

fn max_pool2d_grad_shape(
    x: &Shape,
    dy: &Shape,
    kernel: [usize; 2],
    stride: [usize; 2],
) -> Result<Shape, ShapeError> {
    let y = max_pool2d_shape(x, kernel, stride)?;
    if &y != dy {
        return fail(format!(
            "max_pool2d_grad output gradient must have max_pool2d's output shape {y}, got {dy}"
        ));
    }
    Ok(x.clone())
}

fn same_shapes(name: &str, a: &Shape, b: &Shape) -> Result<Shape, ShapeError> {
    if a != b {
        return fail(format!("{name} needs operands of equal shapes, got {a} and {b}"));
    }
    Ok(a.clone())
}

/// Checks the loss gradients: the forward loss's rule on the first two operands, and
/// a scalar output gradient.
fn loss_grad_shape(op: &Op, ops: &[&Shape]) -> Result<Shape, ShapeError> {
    let forward = match op {
        Op::BceWithLogitsGrad => Op::BceWithLogits,
        Op::L1LossGrad => Op::L1Loss,
        _ => Op::CrossEntropy,
    };
    forward.infer_shape(&ops[..2]).expect("a loss is not a leaf")?;
    if !ops[2].is_scalar() {
        return fail(format!("{} output gradient must be a scalar, got {}", op.name(), ops[2]));
    }
    Ok(ops[0].clone())
}
