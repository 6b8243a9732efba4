//! Reverse-mode differentiation of the training graph, one step at a time.
//!
//! Needs: a shape-checked [`crate::ir::TrainSpec`] graph whose step losses are scalars.
//!
//! Guarantees afterwards, for each step `k`:
//! - the graph contains nodes, all in phase `k`, that compute the gradient of the step's loss
//!   with respect to every parameter the step lists and that reaches the loss. The pass
//!   returns them in [`StepGradients`] and adds no graph outputs;
//! - a value with several consumers gets the sum of their contributions;
//! - only nodes on a path from one of the step's `Param` nodes to its loss get gradient
//!   work: `StopGradient` cuts the graph, and so do operands that have no gradient (class
//!   labels); parameters the step does not list get no gradient at all;
//! - the forward nodes are left unchanged, so node ids taken before the pass stay valid.
//!
//! The gradient rule of each op is one arm of the match in [`rules`]. The backward pass is
//! built once, from the forward graph; gradients of gradients are not supported, so a loss
//! that reads a gradient op is rejected.

mod rules;

use crate::ir::{
    Graph, Module, NodeId, Op, ParamDecl, ParamId, ParamKind, Shape, ShapeError, Span, StepSpec,
};
use std::collections::{HashMap, HashSet};
use tracing::debug;

/// The gradients that the pass appended for one step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepGradients {
    /// The step's name, [`StepSpec::name`].
    pub step: String,
    pub phase: u32,
    /// The gradient node of each parameter that reaches the loss, in the order of
    /// [`StepSpec::params`]. Each has its parameter's shape.
    pub grads: Vec<(ParamId, NodeId)>,
    /// Listed parameters that the loss does not depend on; the optimizer leaves them as
    /// they are.
    pub unused: Vec<ParamId>,
}

/// An error that stops a step from being differentiated.
#[derive(Clone, Debug, PartialEq, thiserror::Error, miette::Diagnostic)]
pub enum AutodiffError {
    #[error("the loss of step {step} must be a scalar, got shape {shape}")]
    LossNotScalar { step: String, shape: Shape, span: Option<Span> },
    #[error("the loss node of step {step} is not in the training graph")]
    MissingLoss { step: String },
    #[error("step {step} lists parameter {param}, which is not declared")]
    UndeclaredParam { step: String, param: ParamId },
    #[error(
        "step {step} lists {name}, a buffer that the forward pass maintains; only trainable \
         parameters can be optimized"
    )]
    NotTrainable { step: String, name: String, span: Option<Span> },
    #[error(
        "the loss of step {step} depends on {node} ({op}) through a differentiable operand, \
         but {op} has no gradient rule (gradients of gradients are not supported)"
    )]
    NoGradientRule { step: String, node: String, op: &'static str, span: Option<Span> },
    /// A rule built a node that breaks a shape rule: a bug in the rule, not in the model.
    #[error("the gradient rule of {node} ({op}) built an invalid node: {source}")]
    InvalidRule {
        node: String,
        op: &'static str,
        #[source]
        source: ShapeError,
    },
}

/// Differentiates every step of the module's `train` section, in order. Returns nothing
/// for a module without one.
pub fn differentiate_module(module: &mut Module) -> Result<Vec<StepGradients>, AutodiffError> {
    let Some(train) = module.train.as_mut() else {
        return Ok(Vec::new());
    };
    let mut all = Vec::with_capacity(train.steps.len());
    for step in &train.steps {
        all.push(differentiate(&mut train.graph, &module.params, step)?);
    }
    Ok(all)
}

/// Appends the backward nodes of one step to `graph` and returns the parameter gradients.
pub fn differentiate(
    graph: &mut Graph,
    params: &[ParamDecl],
    step: &StepSpec,
) -> Result<StepGradients, AutodiffError> {
    let wanted = check_step(graph, params, step)?;
    let on_path = nodes_on_path(graph, &wanted, step.loss);
    debug!(step = %step.name, nodes = on_path.len(), "differentiating");

    // Walk the forward nodes from the loss back to the parameters, so that each node's
    // gradient is complete (every consumer has contributed) before its rule runs.
    let order: Vec<NodeId> =
        graph.topo_order().into_iter().rev().filter(|n| on_path.contains(n)).collect();
    let mut emitter = Emitter::new(graph, step);
    let mut pending: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut param_grads: HashMap<ParamId, Vec<NodeId>> = HashMap::new();
    if on_path.contains(&step.loss) {
        emitter.at(step.loss);
        let seed = emitter.constant(1.0, "seed");
        pending.insert(step.loss, vec![seed]);
    }
    for node in order {
        let Some(contributions) = pending.remove(&node) else {
            continue;
        };
        emitter.at(node);
        let dy = emitter.sum(contributions)?;
        if let Op::Param { id } = emitter.graph.node(node).op {
            param_grads.entry(id).or_default().push(dy);
            continue;
        }
        let operands = emitter.graph.operands(node);
        let needed: Vec<bool> = operands
            .iter()
            .enumerate()
            .map(|(slot, o)| {
                on_path.contains(o) && rules::has_gradient(&emitter.graph.node(node).op, slot)
            })
            .collect();
        let grads = rules::grad(&mut emitter, node, &needed, dy)?;
        for ((operand, grad), needed) in operands.into_iter().zip(grads).zip(needed) {
            if let (Some(grad), true) = (grad, needed) {
                pending.entry(operand).or_default().push(grad);
            }
        }
    }
    finish(emitter, step, param_grads)
}

/// Validates the step and returns the set of parameters it differentiates.
fn check_step(
    graph: &Graph,
    params: &[ParamDecl],
    step: &StepSpec,
) -> Result<HashSet<ParamId>, AutodiffError> {
    let Some(loss) = graph.inner.node_weight(step.loss) else {
        return Err(AutodiffError::MissingLoss { step: step.name.clone() });
    };
    if !loss.shape.is_scalar() {
        return Err(AutodiffError::LossNotScalar {
            step: step.name.clone(),
            shape: loss.shape.clone(),
            span: loss.span,
        });
    }
    for &param in &step.params {
        let Some(decl) = params.get(param) else {
            return Err(AutodiffError::UndeclaredParam { step: step.name.clone(), param });
        };
        if decl.kind != ParamKind::Trainable {
            return Err(AutodiffError::NotTrainable {
                step: step.name.clone(),
                name: decl.name.clone(),
                span: decl.span,
            });
        }
    }
    Ok(step.params.iter().copied().collect())
}

/// Collects the nodes that lie on a differentiable path from a `Param` node of `wanted` to `loss`,
/// both ends included.
fn nodes_on_path(graph: &Graph, wanted: &HashSet<ParamId>, loss: NodeId) -> HashSet<NodeId> {
    // Forward from the parameters, through differentiable operand slots only.
    let mut from_params = HashSet::new();
    let mut stack: Vec<NodeId> = graph
        .param_nodes()
        .into_iter()
        .filter(|(_, id)| wanted.contains(id))
        .map(|(node, _)| node)
        .collect();
    while let Some(node) = stack.pop() {
        if !from_params.insert(node) {
            continue;
        }
        for (user, slot) in graph.users(node) {
            if rules::has_gradient(&graph.node(user).op, slot as usize) {
                stack.push(user);
            }
        }
    }

    // Backward from the loss, keeping only what the forward walk reached.
    let mut on_path = HashSet::new();
    let mut stack = vec![loss];
    while let Some(node) = stack.pop() {
        if !from_params.contains(&node) || !on_path.insert(node) {
            continue;
        }
        stack.extend(graph.operands(node));
    }
    on_path
}

/// Sums each parameter's contributions into its gradient node.
fn finish(
    mut emitter: Emitter<'_>,
    step: &StepSpec,
    mut param_grads: HashMap<ParamId, Vec<NodeId>>,
) -> Result<StepGradients, AutodiffError> {
    let mut result = StepGradients {
        step: step.name.clone(),
        phase: step.phase,
        grads: Vec::new(),
        unused: Vec::new(),
    };
    for &param in &step.params {
        let Some(contributions) = param_grads.remove(&param) else {
            result.unused.push(param);
            continue;
        };
        let grad = emitter.sum(contributions)?;
        result.grads.push((param, grad));
    }
    Ok(result)
}

/// Adds the backward nodes of one step: every node in the step's phase, named after the
/// forward node it serves (`grad.<step>.<forward node>.<what>`).
pub(crate) struct Emitter<'g> {
    pub(crate) graph: &'g mut Graph,
    step: String,
    phase: u32,
    /// The forward node whose rule runs now.
    current: NodeId,
    names: HashSet<String>,
}

impl<'g> Emitter<'g> {
    fn new(graph: &'g mut Graph, step: &StepSpec) -> Self {
        let names = graph.inner.node_weights().map(|n| n.name.clone()).collect();
        let current = step.loss;
        Emitter { graph, step: step.name.clone(), phase: step.phase, current, names }
    }

    fn at(&mut self, node: NodeId) {
        self.current = node;
    }

    pub(crate) fn step(&self) -> &str {
        &self.step
    }

    fn unique_name(&mut self, tag: &str) -> String {
        let base = format!("grad.{}.{}.{tag}", self.step, self.graph.node(self.current).name);
        let mut name = base.clone();
        let mut n = 2;
        while self.names.contains(&name) {
            name = format!("{base}{n}");
            n += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds an op node in the step's phase.
    pub(crate) fn op(
        &mut self,
        op: Op,
        operands: &[NodeId],
        tag: &str,
    ) -> Result<NodeId, AutodiffError> {
        let name = self.unique_name(tag);
        let span = self.graph.node(self.current).span;
        let op_name = op.name();
        let id = self.graph.add_op(op, operands, name, span).map_err(|source| {
            AutodiffError::InvalidRule {
                node: self.graph.node(self.current).name.clone(),
                op: op_name,
                source,
            }
        })?;
        self.graph.node_mut(id).phase = self.phase;
        Ok(id)
    }

    /// Adds a scalar constant in the step's phase.
    pub(crate) fn constant(&mut self, value: f32, tag: &str) -> NodeId {
        let name = self.unique_name(tag);
        let id = self.graph.add_leaf(Op::Constant { value }, Shape::scalar(), name, None);
        self.graph.node_mut(id).phase = self.phase;
        id
    }

    /// Sums gradient contributions of equal shapes, left to right.
    fn sum(&mut self, contributions: Vec<NodeId>) -> Result<NodeId, AutodiffError> {
        let mut iter = contributions.into_iter();
        let first = iter.next().expect("a pending gradient has at least one contribution");
        iter.try_fold(first, |acc, next| self.op(Op::Add, &[acc, next], "acc"))
    }
}
