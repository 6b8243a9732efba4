//! Plain-loop reference implementations of the ops that autodiff adds, the oracle for
//! their WGSL kernels. Inputs and outputs are row-major `f32` slices with their dims;
//! sums accumulate in `f64`.
//!
//! Batch statistics use the biased variance (divided by the element count per channel),
//! as training-mode batch norm does in the forward direction.

use super::random::random_bits;
use super::Tensor;
use crate::codegen::dropout_threshold;
use crate::codegen::wgsl::RunValues;
use crate::ir::Op;

/// Evaluates one of the ops that autodiff adds on its operands' values; `dims` is the
/// node's output shape.
pub fn evaluate(op: &Op, x: &[&Tensor], dims: &[usize], run: &RunValues) -> Tensor {
    let data = match op {
        Op::MatMul { transpose_a, transpose_b } => {
            matmul(&x[0].data, &x[0].dims, &x[1].data, &x[1].dims, *transpose_a, *transpose_b)
        }
        Op::Reshape { .. } => x[0].data.clone(),
        Op::Broadcast { axes, .. } => broadcast(&x[0].data, dims, axes),
        Op::Slice { axis, start, len } => slice(&x[0].data, &x[0].dims, *axis, *start, *len),
        Op::Conv2dWeightGrad { kernel, stride, padding } => conv2d_weight_grad(
            &x[0].data, &x[0].dims, &x[1].data, &x[1].dims, *kernel, *stride, *padding,
        ),
        Op::BatchNormScaleGrad { eps } => {
            batch_norm_scale_grad(&x[0].data, &x[0].dims, &x[1].data, *eps)
        }
        Op::BatchNormInputGrad { eps } => batch_norm_input_grad(
            &x[0].data, &x[0].dims, &x[1].data, &x[2].data, &x[3].data, &x[4].data, *eps,
        ),
        Op::LeakyReluGrad { slope } => leaky_relu_grad(&x[0].data, &x[1].data, *slope),
        Op::DropoutGrad { p, forward } => {
            let threshold = dropout_threshold(*p);
            let node = forward.index() as u32;
            let kept =
                |i: usize| (random_bits(run.seed, run.step, node, i as u32) >> 8) >= threshold;
            dropout_grad(&x[0].data, *p, kept)
        }
        Op::MaxPool2dGrad { kernel, stride } => {
            max_pool2d_grad(&x[0].data, &x[0].dims, &x[1].data, *kernel, *stride)
        }
        Op::BceWithLogitsGrad => bce_logits_grad(&x[0].data, &x[1].data, x[2].data[0]),
        Op::L1LossGrad => l1_grad(&x[0].data, &x[1].data, x[2].data[0]),
        Op::CrossEntropyGrad => {
            cross_entropy_grad(&x[0].data, &x[0].dims, &x[1].data, x[2].data[0])
        }
        other => unreachable!("{} is a forward op, evaluated in ops", other.name()),
    };
    Tensor::new(dims.to_vec(), data)
}

/// Computes the row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; dims.len()];
    for axis in (0..dims.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * dims[axis + 1];
    }
    strides
}

/// Multiplies `a [m, k]` by `b [k, n]`, each optionally transposed first (see `Op::MatMul`).
pub fn matmul(
    a: &[f32],
    a_dims: &[usize],
    b: &[f32],
    b_dims: &[usize],
    transpose_a: bool,
    transpose_b: bool,
) -> Vec<f32> {
    let (m, k) = if transpose_a { (a_dims[1], a_dims[0]) } else { (a_dims[0], a_dims[1]) };
    let n = if transpose_b { b_dims[0] } else { b_dims[1] };
    let a_at = |i: usize, p: usize| if transpose_a { a[p * m + i] } else { a[i * k + p] };
    let b_at = |p: usize, j: usize| if transpose_b { b[j * k + p] } else { b[p * n + j] };
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let sum: f64 = (0..k).map(|p| a_at(i, p) as f64 * b_at(p, j) as f64).sum();
            out[i * n + j] = sum as f32;
        }
    }
    out
}

/// Repeats `x` along `axes` to `dims`; an empty `axes` broadcasts a scalar to every element.
pub fn broadcast(x: &[f32], dims: &[usize], axes: &[usize]) -> Vec<f32> {
    let count: usize = dims.iter().product();
    if axes.is_empty() {
        return vec![x[0]; count];
    }
    let out_strides = strides(dims);
    let kept: Vec<usize> = (0..dims.len()).filter(|a| !axes.contains(a)).collect();
    let kept_dims: Vec<usize> = kept.iter().map(|&a| dims[a]).collect();
    let kept_strides = strides(&kept_dims);
    (0..count)
        .map(|flat| {
            let source: usize = kept
                .iter()
                .zip(&kept_strides)
                .map(|(&axis, &stride)| (flat / out_strides[axis]) % dims[axis] * stride)
                .sum();
            x[source]
        })
        .collect()
}

/// Copies elements `start..start + len` of `x` along `axis`.
pub fn slice(x: &[f32], dims: &[usize], axis: usize, start: usize, len: usize) -> Vec<f32> {
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = o * dims[axis] * inner;
        out.extend_from_slice(&x[base + start * inner..base + (start + len) * inner]);
    }
    out
}

/// Computes conv2d's weight gradient `[Co, Ci, kh, kw]` from x `[N, Ci, H, W]` and
/// dy `[N, Co, Ho, Wo]`.
pub fn conv2d_weight_grad(
    x: &[f32],
    x_dims: &[usize],
    dy: &[f32],
    dy_dims: &[usize],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Vec<f32> {
    let (n, ci, h, w) = (x_dims[0], x_dims[1], x_dims[2], x_dims[3]);
    let (co, ho, wo) = (dy_dims[1], dy_dims[2], dy_dims[3]);
    let [kh, kw] = kernel;
    let mut out = vec![0.0; co * ci * kh * kw];
    for o in 0..co {
        for c in 0..ci {
            for a in 0..kh {
                for b in 0..kw {
                    let mut sum = 0.0f64;
                    for batch in 0..n {
                        for oy in 0..ho {
                            let iy = (oy * stride[0] + a) as isize - padding[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for ox in 0..wo {
                                let ix = (ox * stride[1] + b) as isize - padding[1] as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((batch * ci + c) * h + iy as usize) * w + ix as usize];
                                let gv = dy[((batch * co + o) * ho + oy) * wo + ox];
                                sum += xv as f64 * gv as f64;
                            }
                        }
                    }
                    out[((o * ci + c) * kh + a) * kw + b] = sum as f32;
                }
            }
        }
    }
    out
}

/// Per-channel mean and `1 / sqrt(var + eps)` of `x [N, C, ...]` over every other axis.
fn channel_statistics(x: &[f32], dims: &[usize], eps: f32) -> (Vec<f64>, Vec<f64>) {
    let (n, c) = (dims[0], dims[1]);
    let inner: usize = dims[2..].iter().product();
    let count = (n * inner) as f64;
    let mut mean = vec![0.0f64; c];
    let mut inv_std = vec![0.0f64; c];
    for ch in 0..c {
        let values = (0..n).flat_map(|b| (0..inner).map(move |i| (b * c + ch) * inner + i));
        let m: f64 = values.clone().map(|i| x[i] as f64).sum::<f64>() / count;
        let var: f64 = values.map(|i| (x[i] as f64 - m).powi(2)).sum::<f64>() / count;
        mean[ch] = m;
        inv_std[ch] = 1.0 / (var + eps as f64).sqrt();
    }
    (mean, inv_std)
}

/// Visits every element index of channel `ch` of a `[N, C, ...]` tensor.
fn channel_indices(dims: &[usize], ch: usize) -> impl Iterator<Item = usize> + Clone {
    let (n, c) = (dims[0], dims[1]);
    let inner: usize = dims[2..].iter().product();
    (0..n).flat_map(move |b| (0..inner).map(move |i| (b * c + ch) * inner + i))
}

/// Computes the per-channel sum of `dy * x_hat` (batch norm's scale gradient).
pub fn batch_norm_scale_grad(x: &[f32], dims: &[usize], dy: &[f32], eps: f32) -> Vec<f32> {
    let (mean, inv_std) = channel_statistics(x, dims, eps);
    (0..dims[1])
        .map(|ch| {
            channel_indices(dims, ch)
                .map(|i| dy[i] as f64 * (x[i] as f64 - mean[ch]) * inv_std[ch])
                .sum::<f64>() as f32
        })
        .collect()
}

/// Computes training-mode batch norm's input gradient (see `Op::BatchNormInputGrad`).
pub fn batch_norm_input_grad(
    x: &[f32],
    dims: &[usize],
    scale: &[f32],
    dy: &[f32],
    scale_grad: &[f32],
    offset_grad: &[f32],
    eps: f32,
) -> Vec<f32> {
    let (mean, inv_std) = channel_statistics(x, dims, eps);
    let count = (x.len() / dims[1]) as f64;
    let mut out = vec![0.0; x.len()];
    for ch in 0..dims[1] {
        for i in channel_indices(dims, ch) {
            let x_hat = (x[i] as f64 - mean[ch]) * inv_std[ch];
            let centered = dy[i] as f64
                - offset_grad[ch] as f64 / count
                - x_hat * scale_grad[ch] as f64 / count;
            out[i] = (scale[ch] as f64 * inv_std[ch] * centered) as f32;
        }
    }
    out
}

/// Passes `dy` where `x > 0` and `slope * dy` elsewhere.
pub fn leaky_relu_grad(x: &[f32], dy: &[f32], slope: f32) -> Vec<f32> {
    x.iter().zip(dy).map(|(&v, &g)| if v > 0.0 { g } else { slope * g }).collect()
}

/// Applies a dropout mask to `dy`: `kept(i)` returns whether the forward pass kept element `i`.
pub fn dropout_grad(dy: &[f32], p: f32, kept: impl Fn(usize) -> bool) -> Vec<f32> {
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    dy.iter().enumerate().map(|(i, &g)| if kept(i) { g * scale } else { 0.0 }).collect()
}

/// Routes each element of `dy` to the first maximum of its window in `x [N, C, H, W]`.
pub fn max_pool2d_grad(
    x: &[f32],
    x_dims: &[usize],
    dy: &[f32],
    kernel: [usize; 2],
    stride: [usize; 2],
) -> Vec<f32> {
    let (n, c, h, w) = (x_dims[0], x_dims[1], x_dims[2], x_dims[3]);
    let ho = (h - kernel[0]) / stride[0] + 1;
    let wo = (w - kernel[1]) / stride[1] + 1;
    let mut out = vec![0.0f32; x.len()];
    for plane in 0..n * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut best = plane * h * w + oy * stride[0] * w + ox * stride[1];
                for a in 0..kernel[0] {
                    for b in 0..kernel[1] {
                        let i = plane * h * w + (oy * stride[0] + a) * w + ox * stride[1] + b;
                        if x[i] > x[best] {
                            best = i;
                        }
                    }
                }
                out[best] += dy[(plane * ho + oy) * wo + ox];
            }
        }
    }
    out
}

/// Computes `dy * (sigmoid(x) - y) / n`; `y` has x's length or is a single value.
pub fn bce_logits_grad(x: &[f32], y: &[f32], dy: f32) -> Vec<f32> {
    let n = x.len() as f64;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let target = if y.len() == 1 { y[0] } else { y[i] } as f64;
            let sigmoid = 1.0 / (1.0 + (-(v as f64)).exp());
            (dy as f64 * (sigmoid - target) / n) as f32
        })
        .collect()
}

/// Computes `dy * sign(a - b) / n` with `sign(0) = 0`.
pub fn l1_grad(a: &[f32], b: &[f32], dy: f32) -> Vec<f32> {
    let n = a.len() as f64;
    a.iter()
        .zip(b)
        .map(|(&p, &q)| {
            let sign = if p > q {
                1.0
            } else if p < q {
                -1.0
            } else {
                0.0
            };
            (dy as f64 * sign / n) as f32
        })
        .collect()
}

/// Computes `dy * (softmax(logits) - one_hot(labels)) / N` for logits `[N, K]`.
pub fn cross_entropy_grad(logits: &[f32], dims: &[usize], labels: &[f32], dy: f32) -> Vec<f32> {
    let (rows, classes) = (dims[0], dims[1]);
    let mut out = vec![0.0f32; logits.len()];
    for r in 0..rows {
        let row = &logits[r * classes..(r + 1) * classes];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let total: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let label = labels[r] as usize;
        for k in 0..classes {
            let softmax = (row[k] as f64 - max).exp() / total;
            let one_hot = if k == label { 1.0 } else { 0.0 };
            out[r * classes + k] = (dy as f64 * (softmax - one_hot) / rows as f64) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_transposes_agree() {
        // a = [[1, 2, 3], [4, 5, 6]], b = [[1, 0], [0, 1], [1, 1]].
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let plain = matmul(&a, &[2, 3], &b, &[3, 2], false, false);
        assert_eq!(plain, [4.0, 5.0, 10.0, 11.0]);
        let a_t = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let b_t = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        assert_eq!(matmul(&a_t, &[3, 2], &b, &[3, 2], true, false), plain);
        assert_eq!(matmul(&a, &[2, 3], &b_t, &[2, 3], false, true), plain);
        assert_eq!(matmul(&a_t, &[3, 2], &b_t, &[2, 3], true, true), plain);
    }

    #[test]
    fn broadcast_inverts_channel_sum() {
        let out = broadcast(&[1.0, 2.0], &[2, 2, 3], &[0, 2]);
        assert_eq!(out, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        assert_eq!(broadcast(&[7.0], &[2, 2], &[]), [7.0; 4]);
    }

    #[test]
    fn slice_takes_middle_channels() {
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(slice(&x, &[2, 3, 2], 1, 1, 2), [2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn max_pool_grad_picks_first_maximum() {
        let x = [1.0, 3.0, 3.0, 0.0];
        assert_eq!(
            max_pool2d_grad(&x, &[1, 1, 2, 2], &[5.0], [2, 2], [2, 2]),
            [0.0, 5.0, 0.0, 0.0]
        );
    }

    #[test]
    fn single_element_batch_norm_gradient_is_zero() {
        // One element per channel: x_hat is 0 and the centered gradient vanishes.
        let dx = batch_norm_input_grad(&[3.0], &[1, 1, 1, 1], &[2.0], &[0.7], &[0.0], &[0.7], 1e-5);
        assert_eq!(dx, [0.0]);
        assert!(dx[0].is_finite());
    }
}
