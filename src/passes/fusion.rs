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
//!   that nothing else reads, and then a sum with another tensor, are applied as the GEMM
//!   stores its output. The GEMM then runs at the last of these nodes and writes its
//!   value.
//!
//! Values that are read back from the device must not be fused away: the runtime rejects
//! a requested output that no kernel writes.

use super::views::ViewPlan;
use crate::codegen::conv::gemm_problem;
use crate::codegen::gemm::is_large;
use crate::ir::{Graph, NodeId, Op};
use std::collections::{HashMap, HashSet};

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
    /// GEMM producers whose consumers' elementwise work runs in their stores.
    epilogues: HashMap<NodeId, Epilogue>,
    /// The producer that computes each epilogue's stored node.
    producers: HashMap<NodeId, NodeId>,
    /// Nodes between a producer and its stored node, which no kernel stores.
    skipped: HashSet<NodeId>,
    /// Values stored inside another value's buffer ([`ViewPlan`]), set by the caller
    /// after the fusion groups are known.
    pub views: ViewPlan,
}

impl FusionPlan {
    /// Finds the fused work of `graph`, whose nodes are lowered in `order`. No node of
    /// `keep` (values the caller reads back) is left unstored.
    pub fn new(graph: &Graph, order: &[NodeId], keep: &HashSet<NodeId>) -> Self {
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
            if keep.contains(&node) {
                continue;
            }
            if let Some(fused) = fused_activation(graph, node) {
                plan.activations.insert(node, fused);
            }
            let epilogue = epilogue(graph, node)
                .filter(|(_, skipped)| skipped.iter().all(|n| !keep.contains(n)));
            if let Some((epilogue, skipped)) = epilogue {
                let free = |n: &NodeId| !plan.members.contains_key(n) && !plan.skipped.contains(n);
                let all_free = skipped.iter().chain([&node, &epilogue.store]).all(free);
                if all_free && !plan.producers.contains_key(&epilogue.store) {
                    plan.producers.insert(epilogue.store, node);
                    plan.skipped.extend(skipped);
                    plan.epilogues.insert(node, epilogue);
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

    /// Returns the node whose buffer stores the result of `node`'s epilogue, when `node` is
    /// a GEMM producer whose consumers' work runs in its stores.
    pub fn stored_in(&self, node: NodeId) -> Option<NodeId> {
        self.epilogues.get(&node).map(|e| e.store)
    }

    /// Returns the elementwise work in `node`'s stores, when it is a GEMM producer.
    pub fn epilogue(&self, node: NodeId) -> Option<Epilogue> {
        self.epilogues.get(&node).copied()
    }

    /// Returns the GEMM producer whose epilogue computes `node`.
    pub fn epilogue_producer(&self, node: NodeId) -> Option<NodeId> {
        self.producers.get(&node).copied()
    }

    /// Returns whether `node` is computed inside another kernel and never stored: a fused
    /// activation, or a GEMM producer or an intermediate node of an epilogue.
    pub fn unstored(&self, node: NodeId) -> bool {
        self.activations.contains_key(&node)
            || self.epilogues.contains_key(&node)
            || self.skipped.contains(&node)
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
    let consumers: HashSet<NodeId> = users.iter().map(|&(user, _)| user).collect();
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

/// Elementwise work that a GEMM producer does as it stores its output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epilogue {
    /// The node whose value the GEMM stores.
    pub store: NodeId,
    /// A leaky ReLU gradient of the output: the activation input and the slope.
    pub mask: Option<(NodeId, f32)>,
    /// A tensor added to the output, after the mask.
    pub addend: Option<NodeId>,
}

/// Returns the epilogue of a small convolution GEMM `node` and the nodes it skips: a
/// leaky ReLU gradient of its output, then a sum with another tensor of the same shape,
/// each the only consumer of what it reads.
fn epilogue(graph: &Graph, node: NodeId) -> Option<(Epilogue, Vec<NodeId>)> {
    // NOTE: on lavapipe the 64x16-tile GEMMs of the full-size pix2pix ran about 10%
    // slower with a mask in their stores (l4's input gradient 65-68 ms against 72-75),
    // more than the separate gradient kernel costs, so only small GEMMs take an
    // epilogue. This was not measured on a GPU.
    let (op, geometry) = gemm_problem(graph, node)?;
    if is_large(op, &geometry) {
        return None;
    }
    let only_user = |n: NodeId| match graph.users(n)[..] {
        [(user, slot)] => Some((user, slot)),
        _ => None,
    };
    let shape = graph.shape(node);
    let mut epilogue = Epilogue { store: node, mask: None, addend: None };
    let mut path = Vec::new();

    let masked = matches!(graph.node(node).op, Op::Conv2d { .. } | Op::ConvTranspose2d { .. });
    if let (true, Some((user, 1))) = (masked, only_user(node)) {
        if let Op::LeakyReluGrad { slope } = graph.node(user).op {
            let input = graph.operands(user)[0];
            if input != node && graph.shape(input) == shape {
                epilogue.mask = Some((input, slope));
                epilogue.store = user;
            }
        }
    }
    if let Some((user, slot)) = only_user(epilogue.store) {
        let operands = graph.operands(user);
        if matches!(graph.node(user).op, Op::Add) && operands.len() == 2 {
            let other = operands[1 - slot as usize];
            let same = graph.shape(other) == shape && graph.shape(user) == shape;
            if same && other != epilogue.store && other != node {
                path.push(epilogue.store);
                epilogue.addend = Some(other);
                epilogue.store = user;
            }
        }
    }
    if epilogue.store == node {
        return None;
    }
    path.retain(|&n| n != node && n != epilogue.store);
    Some((epilogue, path))
}
