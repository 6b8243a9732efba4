//! Kernel fusion across nodes: nodes whose work another node's kernel does, so that they
//! need no kernel, no dispatch and no buffer of their own.
//!
//! Needs: a verified graph and the order its nodes are lowered in. Guarantees: a node
//! that the plan fuses away is computed by exactly one other kernel, which runs where all
//! the node's operands are ready and before any consumer reads its value. Three kinds:
//!
//! - Batch norm's backward pass. The autodiff rule emits the offset gradient (a channel
//!   sum of dy), the scale gradient and the input gradient as three nodes that each read
//!   dy. One kernel, at the first of them in lowering order, computes all three.
//! - An activation (ReLU, leaky ReLU) whose every consumer is a convolution's implicit
//!   GEMM is applied as the GEMM loads its input, so its output is never stored.
//! - A leaky ReLU gradient whose incoming gradient is a small convolution GEMM's output
//!   that nothing else reads is applied as the GEMM stores its output. The GEMM then runs
//!   at the gradient node and writes the gradient node's value.
//!
//! Values that are read back from the device must not be fused away: the runtime rejects
//! a requested output that no kernel writes.

use super::views::ViewPlan;
use crate::codegen::conv::gemm_problem;
use crate::codegen::gemm::is_large;
use crate::ir::{Graph, NodeId, Op};
use std::collections::HashMap;

/// One group of nodes computed by one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedGroup {
    /// `offset_grad = Sum(dy)`, `scale_grad = BatchNormScaleGrad(x, dy)` and
    /// `dx = BatchNormInputGrad(x, scale, dy, scale_grad, offset_grad)`.
    BatchNormBackward { offset_grad: NodeId, scale_grad: NodeId, input_grad: NodeId },
}

impl FusedGroup {
    fn nodes(&self) -> [NodeId; 3] {
        match *self {
            FusedGroup::BatchNormBackward { offset_grad, scale_grad, input_grad } => {
                [offset_grad, scale_grad, input_grad]
            }
        }
    }
}

/// The fused work of one graph, and where each kernel that carries it runs.
#[derive(Clone, Debug, Default)]
pub struct FusionPlan {
    /// Each grouped node's group, and whether the group's kernel runs at that node.
    members: HashMap<NodeId, (FusedGroup, bool)>,
    /// Activations applied in their consumers' loads: their input and slope.
    activations: HashMap<NodeId, (NodeId, f32)>,
    /// GEMM producers whose output a leaky ReLU gradient masks as it is stored: the
    /// gradient node, the activation input and the slope.
    masked: HashMap<NodeId, (NodeId, NodeId, f32)>,
    /// The producer of each masked gradient node.
    producers: HashMap<NodeId, NodeId>,
    /// Values stored inside another value's buffer ([`ViewPlan`]), set by the caller
    /// after the fusion groups are known.
    pub views: ViewPlan,
}

impl FusionPlan {
    /// Finds the groups of `graph`, whose nodes are lowered in `order`.
    pub fn new(graph: &Graph, order: &[NodeId]) -> Self {
        let position: HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, &node)| (node, i)).collect();
        let mut members = HashMap::new();
        for &node in order {
            let Some(group) = batch_norm_backward(graph, node) else { continue };
            let nodes = group.nodes();
            if nodes.iter().any(|n| !position.contains_key(n) || members.contains_key(n)) {
                continue;
            }
            let lead = nodes.into_iter().min_by_key(|n| position[n]).unwrap_or(node);
            for member in nodes {
                members.insert(member, (group, member == lead));
            }
        }
        let mut plan = FusionPlan { members, ..FusionPlan::default() };
        for &node in order {
            if let Some(fused) = fused_activation(graph, node) {
                plan.activations.insert(node, fused);
            }
            if let Some((producer, input, slope)) = masked_gradient(graph, node) {
                let free = |n: &NodeId| !plan.members.contains_key(n);
                if free(&producer) && free(&node) && !plan.masked.contains_key(&producer) {
                    plan.masked.insert(producer, (node, input, slope));
                    plan.producers.insert(node, producer);
                }
            }
        }
        plan
    }

    /// Returns the input and slope of `node` when it is an activation that its consumers
    /// apply as they load it.
    pub fn fused_activation(&self, node: NodeId) -> Option<(NodeId, f32)> {
        self.activations.get(&node).copied()
    }

    /// Returns the node whose buffer stores `node`'s value, masked, when `node` is a GEMM
    /// producer that a leaky ReLU gradient consumes.
    pub fn stored_in(&self, node: NodeId) -> Option<NodeId> {
        self.masked.get(&node).map(|&(gradient, _, _)| gradient)
    }

    /// Returns the activation input and slope that mask `node`'s output as it is stored.
    pub fn output_mask(&self, node: NodeId) -> Option<(NodeId, f32)> {
        self.masked.get(&node).map(|&(_, input, slope)| (input, slope))
    }

    /// Returns the GEMM producer that computes the leaky ReLU gradient `node`.
    pub fn masked_producer(&self, node: NodeId) -> Option<NodeId> {
        self.producers.get(&node).copied()
    }

    /// Returns the group of `node` and whether its kernel runs at `node`.
    pub fn group(&self, node: NodeId) -> Option<(FusedGroup, bool)> {
        self.members.get(&node).copied()
    }
}

/// Returns the batch-norm backward group whose input gradient is `node`: its offset
/// gradient is a channel sum of its dy, and its scale gradient reads its x and dy with
/// the same eps.
fn batch_norm_backward(graph: &Graph, node: NodeId) -> Option<FusedGroup> {
    let Op::BatchNormInputGrad { eps } = graph.node(node).op else { return None };
    let operands = graph.operands(node);
    let [x, _scale, dy, scale_grad, offset_grad] = operands[..] else { return None };
    let scale_ok = matches!(graph.node(scale_grad).op, Op::BatchNormScaleGrad { eps: e } if e == eps)
        && graph.operands(scale_grad) == [x, dy];
    let rank = graph.shape(dy).rank();
    let channel_axes: Vec<usize> = (0..rank).filter(|&a| a != 1).collect();
    let offset_ok = matches!(&graph.node(offset_grad).op, Op::Sum { axes } if *axes == channel_axes)
        && graph.operands(offset_grad) == [dy];
    (scale_ok && offset_ok).then_some(FusedGroup::BatchNormBackward {
        offset_grad,
        scale_grad,
        input_grad: node,
    })
}

/// Returns the input and slope of an activation whose every consumer reads it as an
/// implicit GEMM operand, once: x of a conv2d or conv_transpose2d, or either operand of a
/// weight gradient.
fn fused_activation(graph: &Graph, node: NodeId) -> Option<(NodeId, f32)> {
    let slope = match graph.node(node).op {
        Op::Relu => 0.0,
        Op::LeakyRelu { slope } => slope,
        _ => return None,
    };
    let users = graph.users(node);
    let mut consumers: Vec<NodeId> = users.iter().map(|&(user, _)| user).collect();
    consumers.dedup();
    if users.is_empty() || consumers.len() != users.len() {
        return None;
    }
    let operand_of_gemm = |&(user, slot): &(NodeId, u32)| {
        let reads_operand = match graph.node(user).op {
            Op::Conv2d { .. } | Op::ConvTranspose2d { .. } => slot == 0,
            Op::Conv2dWeightGrad { .. } => slot <= 1,
            _ => false,
        };
        reads_operand && gemm_problem(graph, user).is_some()
    };
    if !users.iter().all(operand_of_gemm) {
        return None;
    }
    Some((graph.operands(node)[0], slope))
}

/// Returns the producer, the activation input and the slope of a leaky ReLU gradient whose
/// incoming gradient is a small convolution GEMM's output that nothing else reads.
fn masked_gradient(graph: &Graph, node: NodeId) -> Option<(NodeId, NodeId, f32)> {
    let Op::LeakyReluGrad { slope } = graph.node(node).op else { return None };
    let operands = graph.operands(node);
    let [input, gradient] = operands[..] else { return None };
    // NOTE: on lavapipe the 64x16-tile GEMMs of the full-size pix2pix ran about 10%
    // slower with the mask in their stores (l4's input gradient 65-68 ms against 72-75),
    // more than the separate gradient kernel costs, so only small GEMMs take it. This
    // was not measured on a GPU.
    let small_gemm =
        matches!(graph.node(gradient).op, Op::Conv2d { .. } | Op::ConvTranspose2d { .. })
            && gemm_problem(graph, gradient).is_some_and(|(op, g)| !is_large(op, &g));
    let only_consumer = graph.users(gradient) == [(node, 1)];
    let same_shape = graph.shape(input) == graph.shape(gradient);
    let fused = small_gemm && only_consumer && same_shape && input != gradient;
    fused.then_some((gradient, input, slope))
}
