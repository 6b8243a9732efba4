//! One function per op, written as the definition reads, accumulating in `f64`.

use super::random::random_bits;
use super::Tensor;
use crate::codegen::wgsl::RunValues;
use crate::codegen::{dropout_threshold, Mode};

pub fn map(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::new(x.dims.clone(), x.data.iter().map(|&v| f(f64::from(v)) as f32).collect())
}

/// Applies `f` elementwise; a scalar operand is broadcast.
pub fn zip(a: &Tensor, b: &Tensor, dims: &[usize], f: impl Fn(f64, f64) -> f64) -> Tensor {
    let len: usize = dims.iter().product();
    let at =
        |t: &Tensor, i: usize| f64::from(if t.data.len() == 1 { t.data[0] } else { t.data[i] });
    Tensor::new(dims.to_vec(), (0..len).map(|i| f(at(a, i), at(b, i)) as f32).collect())
}

pub fn dropout(x: &Tensor, p: f32, node: u32, run: &RunValues) -> Tensor {
    let threshold = dropout_threshold(p);
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let kept = (random_bits(run.seed, run.step, node, i as u32) >> 8) >= threshold;
            if kept {
                v * scale
            } else {
                0.0
            }
        })
        .collect();
    Tensor::new(x.dims.clone(), data)
}

fn index4(dims: &[usize], a: usize, b: usize, c: usize, d: usize) -> usize {
    ((a * dims[1] + b) * dims[2] + c) * dims[3] + d
}

pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 2],
    padding: [usize; 2],
    out_dims: &[usize],
) -> Tensor {
    let (n, ci, h, wd) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
    let (co, oh, ow) = (out_dims[1], out_dims[2], out_dims[3]);
    let (kh, kw) = (w.dims[2], w.dims[3]);
    let mut out = Tensor::zeros(out_dims.to_vec());
    for b in 0..n {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |t| f64::from(t.data[o]));
                    for c in 0..ci {
                        for ky in 0..kh {
                            let iy = (oy * stride[0] + ky) as isize - padding[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * stride[1] + kx) as isize - padding[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x.data[index4(&x.dims, b, c, iy as usize, ix as usize)];
                                let wv = w.data[index4(&w.dims, o, c, ky, kx)];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    out.data[index4(out_dims, b, o, oy, ox)] = acc as f32;
                }
            }
        }
    }
    out
}

/// Scatter form, the definition of the transposed convolution: every input pixel adds
/// its value times the kernel into the output window it maps to.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 2],
    padding: [usize; 2],
    out_dims: &[usize],
) -> Tensor {
    let (n, ci, h, wd) = (x.dims[0], x.dims[1], x.dims[2], x.dims[3]);
    let (co, oh, ow) = (out_dims[1], out_dims[2], out_dims[3]);
    let (kh, kw) = (w.dims[2], w.dims[3]);
    let mut acc = vec![0.0f64; out_dims.iter().product()];
    for b in 0..n {
        for c in 0..ci {
            for iy in 0..h {
                for ix in 0..wd {
                    let xv = f64::from(x.data[index4(&x.dims, b, c, iy, ix)]);
                    for o in 0..co {
                        for ky in 0..kh {
                            let oy = (iy * stride[0] + ky) as isize - padding[0] as isize;
                            if oy < 0 || oy >= oh as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ox = (ix * stride[1] + kx) as isize - padding[1] as isize;
                                if ox < 0 || ox >= ow as isize {
                                    continue;
                                }
                                let wv = f64::from(w.data[index4(&w.dims, c, o, ky, kx)]);
                                acc[index4(out_dims, b, o, oy as usize, ox as usize)] += xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(bias) = bias {
        let plane = oh * ow;
        for (i, v) in acc.iter_mut().enumerate() {
            *v += f64::from(bias.data[(i / plane) % co]);
        }
    }
    Tensor::new(out_dims.to_vec(), acc.into_iter().map(|v| v as f32).collect())
}

#[derive(Clone, Copy)]
pub struct BatchNormStats {
    pub eps: f32,
    pub momentum: f32,
}

/// Batch norm; in training mode also returns the updated running statistics, and in the
/// other modes `None`.
pub fn batch_norm(
    x: &Tensor,
    scale: &Tensor,
    offset: &Tensor,
    running: (Tensor, Tensor),
    settings: BatchNormStats,
    mode: Mode,
) -> (Tensor, Option<(Tensor, Tensor)>) {
    let (n, c) = (x.dims[0], x.dims[1]);
    let spatial: usize = x.dims[2..].iter().product();
    let count = (n * spatial) as f64;
    let channel_values =
        |ch: usize| (0..n).flat_map(move |b| (0..spatial).map(move |s| (b * c + ch) * spatial + s));
    let mut mean = vec![0.0f64; c];
    let mut var = vec![0.0f64; c];
    for ch in 0..c {
        if mode.uses_batch_statistics() {
            mean[ch] = channel_values(ch).map(|i| f64::from(x.data[i])).sum::<f64>() / count;
            var[ch] =
                channel_values(ch).map(|i| (f64::from(x.data[i]) - mean[ch]).powi(2)).sum::<f64>()
                    / count;
        } else {
            mean[ch] = f64::from(running.0.data[ch]);
            var[ch] = f64::from(running.1.data[ch]);
        }
    }
    let mut out = Tensor::zeros(x.dims.clone());
    for (i, v) in out.data.iter_mut().enumerate() {
        let ch = (i / spatial) % c;
        let normalized =
            (f64::from(x.data[i]) - mean[ch]) / (var[ch] + f64::from(settings.eps)).sqrt();
        *v = (normalized * f64::from(scale.data[ch]) + f64::from(offset.data[ch])) as f32;
    }
    if !mode.updates_running_statistics() {
        return (out, None);
    }
    let m = f64::from(settings.momentum);
    let unbias = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
    let (mut new_mean, mut new_var) = running;
    for ch in 0..c {
        new_mean.data[ch] = ((1.0 - m) * f64::from(new_mean.data[ch]) + m * mean[ch]) as f32;
        new_var.data[ch] = ((1.0 - m) * f64::from(new_var.data[ch]) + m * var[ch] * unbias) as f32;
    }
    (out, Some((new_mean, new_var)))
}

pub fn concat(operands: &[&Tensor], axis: usize, out_dims: &[usize]) -> Tensor {
    let outer: usize = out_dims[..axis].iter().product();
    let inner: usize = out_dims[axis + 1..].iter().product();
    let mut data = Vec::with_capacity(out_dims.iter().product());
    for o in 0..outer {
        for t in operands {
            let block = t.dims[axis] * inner;
            data.extend_from_slice(&t.data[o * block..(o + 1) * block]);
        }
    }
    Tensor::new(out_dims.to_vec(), data)
}

pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out_dims: &[usize]) -> Tensor {
    let (n, inputs, outputs) = (x.dims[0], x.dims[1], w.dims[0]);
    let mut out = Tensor::zeros(out_dims.to_vec());
    for b in 0..n {
        for o in 0..outputs {
            let mut acc = bias.map_or(0.0, |t| f64::from(t.data[o]));
            for i in 0..inputs {
                acc += f64::from(x.data[b * inputs + i]) * f64::from(w.data[o * inputs + i]);
            }
            out.data[b * outputs + o] = acc as f32;
        }
    }
    out
}

pub fn max_pool2d(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    out_dims: &[usize],
) -> Tensor {
    let mut out = Tensor::zeros(out_dims.to_vec());
    for b in 0..out_dims[0] {
        for c in 0..out_dims[1] {
            for oy in 0..out_dims[2] {
                for ox in 0..out_dims[3] {
                    let mut best = f32::NEG_INFINITY;
                    for ky in 0..kernel[0] {
                        for kx in 0..kernel[1] {
                            let v = x.data
                                [index4(&x.dims, b, c, oy * stride[0] + ky, ox * stride[1] + kx)];
                            best = best.max(v);
                        }
                    }
                    out.data[index4(out_dims, b, c, oy, ox)] = best;
                }
            }
        }
    }
    out
}

/// Sum or mean over `axes` (all axes when empty), which are removed from the shape.
pub fn reduce(x: &Tensor, axes: &[usize], mean: bool, out_dims: &[usize]) -> Tensor {
    let rank = x.dims.len();
    let reduced: Vec<usize> = if axes.is_empty() { (0..rank).collect() } else { axes.to_vec() };
    let kept: Vec<usize> = (0..rank).filter(|a| !reduced.contains(a)).collect();
    let mut acc = vec![0.0f64; out_dims.iter().product::<usize>().max(1)];
    let mut index = vec![0usize; rank];
    for &v in &x.data {
        let out_index = kept.iter().fold(0, |o, &a| o * x.dims[a] + index[a]);
        acc[out_index] += f64::from(v);
        // Advance the row-major multi-index.
        for a in (0..rank).rev() {
            index[a] += 1;
            if index[a] < x.dims[a] {
                break;
            }
            index[a] = 0;
        }
    }
    let count: usize = reduced.iter().map(|&a| x.dims[a]).product();
    let scale = if mean { 1.0 / count.max(1) as f64 } else { 1.0 };
    Tensor::new(out_dims.to_vec(), acc.into_iter().map(|v| (v * scale) as f32).collect())
}

/// Computes the mean of `f(a[i], b[i])`, broadcasting a scalar `b`.
pub fn mean_of(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> Tensor {
    let total: f64 = (0..a.data.len())
        .map(|i| {
            let bv = if b.data.len() == 1 { b.data[0] } else { b.data[i] };
            f(f64::from(a.data[i]), f64::from(bv))
        })
        .sum();
    Tensor::scalar((total / a.data.len().max(1) as f64) as f32)
}

pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Tensor {
    mean_of(logits, targets, |x, y| x.max(0.0) - x * y + (-x.abs()).exp().ln_1p())
}

pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (n, k) = (logits.dims[0], logits.dims[1]);
    let mut total = 0.0f64;
    for row in 0..n {
        let values: Vec<f64> =
            logits.data[row * k..(row + 1) * k].iter().map(|&v| f64::from(v)).collect();
        let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let log_sum = values.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        let label = (labels.data[row].max(0.0) as usize).min(k - 1);
        total += log_sum - values[label];
    }
    Tensor::scalar((total / n.max(1) as f64) as f32)
}
