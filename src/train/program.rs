//! The iteration program: one training iteration of a `train` section as one kernel list.
//!
//! Needs: a module with a `train` section whose steps have scalar losses.
//!
//! Guarantees: the kernels run phase 0 (the shared forward values, such as
//! `fake = generator(input)`), then for each step `k` in order its loss, its backward
//! pass and its optimizer updates, before anything of phase `k + 1`. So a later step's
//! `Param` nodes read the weights the earlier steps just updated, and each step's updates
//! touch only the parameters it lists.
//!
//! The optimizer state lives in the parameter store, as extra buffers of a training copy
//! of the module named `optimizer.<step>.<parameter>.<state>`. Each step also gets an
//! `optimizer.<step>.values` buffer, which the host fills with the learning rate and
//! Adam's `beta^t` before each iteration.
//!
//! Each step's parameters, their gradients and each optimizer state are packed into arenas
//! with one layout, so one fused kernel updates the whole step. The kernels that compute a
//! gradient write it straight into its slot of the step's gradient arena.

use super::optimizer::state_names;
use super::TrainError;
use crate::autodiff::{self, StepGradients};
use crate::codegen::optimizer::{lower_update, Arena, UpdateBindings};
use crate::codegen::{
    lower_fused, lower_node, value_resource, Kernel, LowerContext, Mode, Resource, Target,
};
use crate::ir::{
    Graph, Init, Module, NodeId, Op, Optimizer, ParamDecl, ParamId, ParamKind, Schedule, Shape,
};
use std::collections::{HashMap, HashSet};
use tracing::{info, warn};

/// One parameter update of a step.
#[derive(Clone, Debug)]
pub struct ParamUpdate {
    pub param: ParamId,
    /// The gradient node in [`TrainProgram::graph`].
    pub grad: NodeId,
    /// The optimizer state buffers, in the order of [`state_names`].
    pub state: Vec<ParamId>,
}

/// One optimizer step of the iteration, as compiled.
#[derive(Clone, Debug)]
pub struct StepPlan {
    pub name: String,
    pub phase: u32,
    pub optimizer: Optimizer,
    pub updates: Vec<ParamUpdate>,
    /// Parameters the step lists but its loss does not depend on: they are not updated.
    pub unused: Vec<ParamId>,
    /// The `[lr, beta1^t, beta2^t]` buffer of the step.
    pub values: ParamId,
    /// The step's loss node and its named terms, as `(output name, node)`.
    pub loss: NodeId,
    pub terms: Vec<(String, NodeId)>,
    /// The updates that one fused kernel applies, if any; the others get a kernel each.
    pub fused: Option<FusedUpdate>,
}

/// The updates of a step that one kernel applies over the step's arenas.
#[derive(Clone, Debug)]
pub struct FusedUpdate {
    /// Indices into [`StepPlan::updates`], in slot order.
    pub updates: Vec<usize>,
    /// Indices into [`TrainProgram::arenas`] of the parameters and the gradients.
    pub params: u32,
    pub grads: u32,
    /// Arena indices of the optimizer state, in the order of [`state_names`].
    pub state: Vec<u32>,
}

/// Everything a [`super::Trainer`] compiles and runs.
#[derive(Clone, Debug)]
pub struct TrainProgram {
    /// The module with the optimizer state and per-step value buffers added to `params`.
    pub module: Module,
    /// The iteration graph with every step's backward nodes.
    pub graph: Graph,
    pub steps: Vec<StepPlan>,
    pub schedule: Schedule,
    /// Every kernel of one iteration, in dispatch order.
    pub kernels: Vec<Kernel>,
    /// The packed buffers the parameter store allocates for this program: for each step
    /// with a fused update, its parameters, their gradients and each optimizer state.
    pub arenas: Vec<Arena>,
    /// The values a run can read back: each loss term by its name, and each step's total
    /// loss by the step's name.
    pub outputs: Vec<(String, NodeId)>,
}

impl TrainProgram {
    /// Differentiates every step of `module`'s `train` section and lowers the iteration.
    pub fn build(module: &Module, target: &Target) -> Result<TrainProgram, TrainError> {
        let _span = tracing::info_span!("build_train_program", model = %module.name).entered();
        let train = module
            .train
            .as_ref()
            .ok_or_else(|| TrainError::NoTrainSection { model: module.name.clone() })?;
        let mut graph = train.graph.clone();
        let mut training = module.clone();
        let mut steps = Vec::with_capacity(train.steps.len());
        for step in &train.steps {
            let gradients = autodiff::differentiate(&mut graph, &module.params, step)?;
            for &param in &gradients.unused {
                warn!(step = %step.name, param = %module.params[param].name,
                    "the step's loss does not depend on this parameter, so it is never updated");
            }
            steps.push(plan_step(&mut training, step, gradients));
        }
        steps.sort_by_key(|s| s.phase);

        let outputs = output_list(&steps);
        let arenas = plan_arenas(&graph, &training, &mut steps, target);
        let slots = gradient_slots(&graph, &steps, &arenas);
        let mut kernels = lower_iteration(&graph, &training, &steps, &arenas, target, &slots)?;
        place_gradients(&mut kernels, &slots);
        info!(kernels = kernels.len(), nodes = graph.node_count(), "built the training program");
        Ok(TrainProgram {
            module: training,
            graph,
            steps,
            schedule: train.schedule.clone(),
            kernels,
            arenas,
            outputs,
        })
    }
}

/// Declares the optimizer state of one step in `training` and returns the step's plan.
fn plan_step(
    training: &mut Module,
    step: &crate::ir::StepSpec,
    gradients: StepGradients,
) -> StepPlan {
    let declare = |training: &mut Module, name: String, shape: Shape, net: &str| {
        training.params.push(ParamDecl {
            name,
            shape,
            init: Init::Constant { value: 0.0 },
            kind: ParamKind::Buffer,
            net: net.to_string(),
            span: None,
        });
        training.params.len() - 1
    };

    let mut updates = Vec::with_capacity(gradients.grads.len());
    for &(param, grad) in &gradients.grads {
        let decl = training.params[param].clone();
        let state = state_names(&step.optimizer)
            .iter()
            .map(|state| {
                let name = format!("optimizer.{}.{}.{state}", step.name, decl.name);
                declare(training, name, decl.shape.clone(), &decl.net)
            })
            .collect();
        updates.push(ParamUpdate { param, grad, state });
    }
    let values =
        declare(training, format!("optimizer.{}.values", step.name), Shape::new([3]), &step.name);
    let terms = step.terms.iter().map(|t| (t.name.clone(), t.node)).collect();
    StepPlan {
        name: step.name.clone(),
        phase: step.phase,
        optimizer: step.optimizer.clone(),
        updates,
        unused: gradients.unused,
        values,
        loss: step.loss,
        terms,
        fused: None,
    }
}

/// Chooses each step's fused updates and lays out their arenas. An update is fused when
/// its parameter belongs to this step only and its gradient has a buffer of its own that
/// no other update reads, so the gradient can live in the step's gradient arena.
fn plan_arenas(
    graph: &Graph,
    training: &Module,
    steps: &mut [StepPlan],
    target: &Target,
) -> Vec<Arena> {
    let mut param_steps: HashMap<ParamId, usize> = HashMap::new();
    let mut root_uses: HashMap<NodeId, usize> = HashMap::new();
    for update in steps.iter().flat_map(|s| &s.updates) {
        *param_steps.entry(update.param).or_default() += 1;
        if let Resource::Node(root) = value_resource(graph, update.grad, Mode::Train) {
            *root_uses.entry(root).or_default() += 1;
        }
    }
    let placeable = |update: &ParamUpdate| {
        let Resource::Node(root) = value_resource(graph, update.grad, Mode::Train) else {
            return false;
        };
        let computed = !matches!(graph.node(root).op, Op::Input { .. } | Op::Constant { .. });
        computed
            && root_uses[&root] == 1
            && param_steps[&update.param] == 1
            && graph.shape(root).numel() == training.params[update.param].shape.numel()
    };

    let mut arenas = Vec::new();
    for step in steps.iter_mut() {
        let updates: Vec<usize> =
            (0..step.updates.len()).filter(|&index| placeable(&step.updates[index])).collect();
        if updates.is_empty() {
            continue;
        }
        let slots = |pick: &dyn Fn(&ParamUpdate) -> ParamId| -> Vec<Option<ParamId>> {
            updates.iter().map(|&index| Some(pick(&step.updates[index]))).collect()
        };
        let lengths =
            slots(&|u| u.param).iter().map(|p| training.params[p.unwrap()].shape.numel()).collect();
        let params = Arena::pack(
            format!("optimizer.{}.parameters", step.name),
            slots(&|u| u.param),
            lengths,
            target,
        );
        let grads = params
            .with_params(format!("optimizer.{}.gradients", step.name), vec![None; updates.len()]);
        let base = arenas.len() as u32;
        let state_arenas: Vec<Arena> = state_names(&step.optimizer)
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let label = format!("optimizer.{}.{name}", step.name);
                params.with_params(label, slots(&|u| u.state[k]))
            })
            .collect();
        let state = (0..state_arenas.len() as u32).map(|k| base + 2 + k).collect();
        arenas.extend([params, grads]);
        arenas.extend(state_arenas);
        step.fused = Some(FusedUpdate { updates, params: base, grads: base + 1, state });
    }
    arenas
}

/// Returns the arena and element offset of each fused gradient's slot, by the node that
/// stores the gradient.
fn gradient_slots(
    graph: &Graph,
    steps: &[StepPlan],
    arenas: &[Arena],
) -> HashMap<NodeId, (u32, usize)> {
    let mut slots: HashMap<NodeId, (u32, usize)> = HashMap::new();
    for step in steps {
        let Some(fused) = &step.fused else { continue };
        for (slot, &index) in fused.updates.iter().enumerate() {
            let update = &step.updates[index];
            if let Resource::Node(root) = value_resource(graph, update.grad, Mode::Train) {
                slots.insert(root, (fused.grads, arenas[fused.grads as usize].offsets[slot]));
            }
        }
    }
    slots
}

/// Rebinds each fused gradient from its own buffer to its slot of the step's gradient
/// arena, in every kernel that writes or reads it.
fn place_gradients(kernels: &mut [Kernel], slots: &HashMap<NodeId, (u32, usize)>) {
    for binding in kernels.iter_mut().flat_map(|k| &mut k.bindings) {
        if let Resource::Node(node) = binding.resource {
            if let Some(&(arena, offset)) = slots.get(&node) {
                binding.resource = Resource::Arena(arena);
                binding.offset += offset as u64;
            }
        }
    }
}

/// Lists each step's terms by name and its total by the step's name, skipping a total
/// that is also a term.
fn output_list(steps: &[StepPlan]) -> Vec<(String, NodeId)> {
    let mut outputs: Vec<(String, NodeId)> = Vec::new();
    for step in steps {
        for (name, node) in &step.terms {
            if !outputs.iter().any(|(n, _)| n == name) {
                outputs.push((name.clone(), *node));
            }
        }
        if !outputs.iter().any(|(n, _)| n == &step.name) {
            outputs.push((step.name.clone(), step.loss));
        }
    }
    outputs
}

/// Lowers every node in topological order and inserts each step's updates right after
/// the last node of its phase.
fn lower_iteration(
    graph: &Graph,
    training: &Module,
    steps: &[StepPlan],
    arenas: &[Arena],
    target: &Target,
    gradient_slots: &HashMap<NodeId, (u32, usize)>,
) -> Result<Vec<Kernel>, TrainError> {
    let order = graph.topo_order();
    // Gradients that live in an arena slot keep out of views.
    let no_views: HashSet<NodeId> = gradient_slots.keys().copied().collect();
    let keep: HashSet<NodeId> = graph.outputs.iter().map(|&(_, node)| node).collect();
    lower_fused(graph, &order, target, Mode::Train, &keep, &no_views, |fusion| {
        let mut kernels = Vec::new();
        let mut next_step = 0;
        for &node in &order {
            let phase = graph.node(node).phase;
            while next_step < steps.len() && steps[next_step].phase < phase {
                kernels.extend(lower_updates(graph, training, &steps[next_step], arenas, target)?);
                next_step += 1;
            }
            let ctx = LowerContext { graph, node, target, mode: Mode::Train, fusion };
            kernels.extend(lower_node(&ctx)?);
        }
        for step in &steps[next_step..] {
            kernels.extend(lower_updates(graph, training, step, arenas, target)?);
        }
        Ok(kernels)
    })
}

fn lower_updates(
    graph: &Graph,
    training: &Module,
    step: &StepPlan,
    arenas: &[Arena],
    target: &Target,
) -> Result<Vec<Kernel>, TrainError> {
    let mut kernels = Vec::new();
    let mut fused_updates: &[usize] = &[];
    if let Some(fused) = &step.fused {
        fused_updates = &fused.updates;
        let bindings = UpdateBindings {
            param: Resource::Arena(fused.params),
            grad: Resource::Arena(fused.grads),
            node: step.loss,
            state: fused.state.iter().map(|&a| Resource::Arena(a)).collect(),
            values: step.values,
            count: arenas[fused.params as usize].len,
            vec4: true,
        };
        let name = format!("optimizer.{}", step.name);
        kernels.extend(lower_update(&name, &step.optimizer, &bindings, target)?);
    }
    for (index, update) in step.updates.iter().enumerate() {
        if fused_updates.contains(&index) {
            continue;
        }
        let decl = &training.params[update.param];
        let name = format!("optimizer.{}.{}", step.name, decl.name);
        let bindings = UpdateBindings {
            param: Resource::Param(update.param),
            grad: value_resource(graph, update.grad, Mode::Train),
            node: update.grad,
            state: update.state.iter().map(|&id| Resource::Param(id)).collect(),
            values: step.values,
            count: decl.shape.numel(),
            vec4: false,
        };
        kernels.extend(lower_update(&name, &step.optimizer, &bindings, target)?);
    }
    Ok(kernels)
}
