//! The reference implementation: every op as obvious loops with `f64` accumulation, the
//! oracle the kernel tests compare against.
//!
//! Needs: a verified graph. Guarantees: the same semantics as the WGSL kernels, including
//! the dropout masks (through [`random`]) and the running-statistics update of batch norm
//! in training mode. It is slow by design; size its inputs for tests.

pub mod grad;
mod ops;
pub mod random;

use crate::codegen::wgsl::RunValues;
use crate::codegen::{storage_root, Mode};
use crate::ir::{Graph, NodeId, Op};
use petgraph::visit::NodeIndexable;
use std::collections::HashMap;

/// A dense row-major `f32` tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(dims: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "tensor data does not fit {dims:?}");
        Tensor { dims, data }
    }

    pub fn zeros(dims: Vec<usize>) -> Self {
        let len = dims.iter().product();
        Tensor { dims, data: vec![0.0; len] }
    }

    pub fn scalar(value: f32) -> Self {
        Tensor { dims: Vec::new(), data: vec![value] }
    }
}

/// A missing input or parameter value.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("missing value for graph input {0}")]
    MissingInput(String),
    #[error("missing value for parameter {0}")]
    MissingParam(usize),
}

/// Evaluates every node of `graph` in order. `params` contains the value of every parameter
/// the graph reads; in training mode batch norm updates its running statistics in it.
/// Returns the value of each node, indexed by node index.
pub fn evaluate(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    params: &mut [Option<Tensor>],
    mode: Mode,
    run: &RunValues,
) -> Result<Vec<Option<Tensor>>, ReferenceError> {
    let mut values: Vec<Option<Tensor>> = vec![None; graph.inner.node_bound()];
    for id in graph.topo_order() {
        let value = evaluate_node(graph, id, &values, inputs, params, mode, run)?;
        values[id.index()] = Some(value);
    }
    Ok(values)
}

fn evaluate_node(
    graph: &Graph,
    id: NodeId,
    values: &[Option<Tensor>],
    inputs: &HashMap<String, Tensor>,
    params: &mut [Option<Tensor>],
    mode: Mode,
    run: &RunValues,
) -> Result<Tensor, ReferenceError> {
    let node = graph.node(id);
    let operands: Vec<&Tensor> = graph
        .operands(id)
        .iter()
        .map(|o| values[o.index()].as_ref().expect("operands are evaluated before their users"))
        .collect();
    let dims = node.shape.0.clone();
    Ok(match &node.op {
        Op::Input { name } => {
            inputs.get(name).cloned().ok_or_else(|| ReferenceError::MissingInput(name.clone()))?
        }
        Op::Param { id } => {
            params.get(*id).and_then(|p| p.clone()).ok_or(ReferenceError::MissingParam(*id))?
        }
        Op::Constant { value } => Tensor::scalar(*value),
        Op::Flatten | Op::StopGradient => Tensor::new(dims, operands[0].data.clone()),
        Op::Dropout { p } => {
            if storage_root(graph, id, mode) != id {
                operands[0].clone()
            } else {
                ops::dropout(operands[0], *p, id.index() as u32, run)
            }
        }
        Op::Relu => ops::map(operands[0], |v| v.max(0.0)),
        Op::LeakyRelu { slope } => {
            let slope = f64::from(*slope);
            ops::map(operands[0], move |v| if v > 0.0 { v } else { v * slope })
        }
        Op::Tanh => ops::map(operands[0], f64::tanh),
        Op::Sigmoid => ops::map(operands[0], |v| 1.0 / (1.0 + (-v).exp())),
        Op::Neg => ops::map(operands[0], |v| -v),
        Op::Add => ops::zip(operands[0], operands[1], &dims, |a, b| a + b),
        Op::Sub => ops::zip(operands[0], operands[1], &dims, |a, b| a - b),
        Op::Mul => ops::zip(operands[0], operands[1], &dims, |a, b| a * b),
        Op::Div => ops::zip(operands[0], operands[1], &dims, |a, b| a / b),
        Op::Conv2d { stride, padding } => ops::conv2d(
            operands[0],
            operands[1],
            operands.get(2).copied(),
            *stride,
            *padding,
            &dims,
        ),
        Op::ConvTranspose2d { stride, padding, .. } => ops::conv_transpose2d(
            operands[0],
            operands[1],
            operands.get(2).copied(),
            *stride,
            *padding,
            &dims,
        ),
        Op::BatchNorm { eps, momentum, running_mean, running_var } => {
            let stats = ops::BatchNormStats { eps: *eps, momentum: *momentum };
            let (mean, var) = (*running_mean, *running_var);
            let running = (
                params
                    .get(mean)
                    .and_then(|p| p.clone())
                    .ok_or(ReferenceError::MissingParam(mean))?,
                params.get(var).and_then(|p| p.clone()).ok_or(ReferenceError::MissingParam(var))?,
            );
            let (out, updated) =
                ops::batch_norm(operands[0], operands[1], operands[2], running, stats, mode);
            if let Some((new_mean, new_var)) = updated {
                params[mean] = Some(new_mean);
                params[var] = Some(new_var);
            }
            out
        }
        Op::Concat { axis } => ops::concat(&operands, *axis, &dims),
        Op::Linear => ops::linear(operands[0], operands[1], operands.get(2).copied(), &dims),
        Op::MaxPool2d { kernel, stride } => ops::max_pool2d(operands[0], *kernel, *stride, &dims),
        Op::Sum { axes } => ops::reduce(operands[0], axes, false, &dims),
        Op::Mean { axes } => ops::reduce(operands[0], axes, true, &dims),
        Op::BceWithLogits => ops::bce_with_logits(operands[0], operands[1]),
        Op::L1Loss => ops::mean_of(operands[0], operands[1], |a, b| (a - b).abs()),
        Op::MseLoss => ops::mean_of(operands[0], operands[1], |a, b| (a - b) * (a - b)),
        Op::CrossEntropy => ops::cross_entropy(operands[0], operands[1]),
        Op::MatMul { .. }
        | Op::Reshape { .. }
        | Op::Broadcast { .. }
        | Op::Slice { .. }
        | Op::Conv2dWeightGrad { .. }
        | Op::BatchNormScaleGrad { .. }
        | Op::BatchNormInputGrad { .. }
        | Op::LeakyReluGrad { .. }
        | Op::DropoutGrad { .. }
        | Op::MaxPool2dGrad { .. }
        | Op::BceWithLogitsGrad
        | Op::L1LossGrad
        | Op::CrossEntropyGrad => grad::evaluate(&node.op, &operands, &dims, run),
    })
}
