//! The finite-difference gradient check behind `netc check --grad` and the autodiff tests.
//!
//! For every step of a `train` section and every parameter the step updates, it compares
//! the directional derivative of the step's loss along a random sign vector `d`, as
//! autodiff computes it on the device (`g . d`), with the central difference
//! `(L(p + h d) - L(p - h d)) / 2h` of two forward runs on the same device. The step `h`
//! is relative to the parameter's scale, so that a weight initialized at N(0, 0.02)
//! moves by the same fraction as a batch-norm scale near 1. Parameters
//! are initialized from the model's initializers and the inputs drawn uniformly from
//! [-1, 1], both from the seed. Dropout masks stay the same across the runs, and batch
//! norm uses batch statistics, so the forward runs differ only in the parameter.
//!
//! It cannot check a loss at a kink (relu at 0, a tie in max pooling, L1 at equal
//! operands): a difference across a kink mixes two slopes. The check compares the two
//! one-sided differences and reports such a parameter as not differentiable rather than
//! as a mismatch. Kinks that move the loss less than the tolerance go unnoticed.

use super::TrainError;
use crate::autodiff;
use crate::codegen::wgsl::RunValues;
use crate::codegen::{lower_graph_keeping, Mode};
use crate::ir::{Graph, Module, NodeId, ParamId};
use crate::reference::random::fold_seed;
use crate::reference::Tensor;
use crate::runtime::{initial_values, Gpu, ParamStore, Program};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use tracing::{debug, info};

/// Settings of a gradient check.
#[derive(Clone, Debug)]
pub struct GradCheckOptions {
    /// Seed of the parameters, inputs, directions and dropout masks.
    pub seed: u64,
    /// The perturbation of every element along `d`, relative to the parameter's scale
    /// (see `step_size` below).
    pub step_size: f32,
    /// Relative tolerance between the two derivatives.
    pub rtol: f64,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        GradCheckOptions { seed: 0, step_size: 1e-3, rtol: 2e-2 }
    }
}

/// The outcome of one parameter's check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Autodiff and the central difference agree within the tolerance.
    Agrees,
    /// They differ by more than the tolerance while the loss is smooth along `d`.
    Mismatch,
    /// They agree, but only because the loss's f32 rounding error, divided by `2h`, is
    /// larger than half the derivative: the loss cannot resolve this parameter's effect.
    Inconclusive,
    /// The one-sided differences disagree with each other, so the loss has a kink
    /// within `h` (a relu at 0, a tie in max pooling) and the central difference is a
    /// poor estimate of the gradient.
    NotDifferentiable,
}

/// The check of one parameter of one step.
#[derive(Clone, Debug)]
pub struct ParamCheck {
    pub step: String,
    pub param: String,
    /// `g . d` from the backward pass.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
    /// The absolute step `h` of the difference.
    pub step_size: f64,
    /// The allowed difference: `rtol` times the larger magnitude, plus an estimate of the
    /// loss's f32 rounding error (4 ulps of each loss) divided by `2h`.
    pub allowed: f64,
    pub verdict: Verdict,
}

impl ParamCheck {
    /// Returns whether the check found no error: the derivatives agree, the loss is not
    /// differentiable at this point, or it cannot resolve the difference.
    pub fn passed(&self) -> bool {
        self.verdict != Verdict::Mismatch
    }
}

/// The values of one differentiated iteration, computed on the device without updates.
pub struct GradientRun {
    /// The iteration graph with every step's backward nodes.
    pub graph: Graph,
    /// The values bound to each graph input.
    pub inputs: HashMap<String, Vec<f32>>,
    /// The initial value of every declared parameter, indexed by [`ParamId`].
    pub params: Vec<Vec<f32>>,
    /// Each step's loss, in step order.
    pub losses: Vec<(String, f32)>,
    /// Each gradient as `(step index, parameter, gradient node, values)`.
    pub grads: Vec<(usize, ParamId, NodeId, Vec<f32>)>,
    /// The run values (seed, iteration) the run used.
    pub run: RunValues,
}

impl GradientRun {
    /// Evaluates the run's graph on the CPU reference with the same inputs, parameters and
    /// run values, returning every node's value by node index. `module` is the module the
    /// run was made from.
    pub fn reference_values(
        &self,
        module: &Module,
    ) -> Result<Vec<Option<Tensor>>, crate::reference::ReferenceError> {
        let inputs: HashMap<String, Tensor> = self
            .inputs
            .iter()
            .map(|(name, values)| {
                let node = self.graph.find(name).expect("run_gradients binds only graph inputs");
                (name.clone(), Tensor::new(self.graph.shape(node).0.clone(), values.clone()))
            })
            .collect();
        let mut params: Vec<Option<Tensor>> = module
            .params
            .iter()
            .zip(&self.params)
            .map(|(decl, values)| Some(Tensor::new(decl.shape.0.clone(), values.clone())))
            .collect();
        crate::reference::evaluate(&self.graph, &inputs, &mut params, Mode::Train, &self.run)
    }
}

/// Differentiates `module`'s train section, runs it once on `gpu` and reads back every
/// step's loss and gradients.
pub fn run_gradients(gpu: &Gpu, module: &Module, seed: u64) -> Result<GradientRun, TrainError> {
    let train = module
        .train
        .as_ref()
        .ok_or_else(|| TrainError::NoTrainSection { model: module.name.clone() })?;
    let mut graph = train.graph.clone();
    let mut outputs = Vec::new();
    let mut steps = Vec::new();
    for (index, step) in train.steps.iter().enumerate() {
        let gradients = autodiff::differentiate(&mut graph, &module.params, step)?;
        outputs.push((format!("loss.{}", step.name), step.loss));
        for &(param, node) in &gradients.grads {
            outputs.push((format!("grad.{}.{}", step.name, module.params[param].name), node));
            steps.push((index, param, node));
        }
    }

    let target = gpu.target();
    let keep: HashSet<NodeId> = outputs.iter().map(|&(_, node)| node).collect();
    let kernels = lower_graph_keeping(&graph, &target, Mode::Train, &keep)?;
    let store = ParamStore::initialized(gpu, module, seed)?;
    let program = Program::compile(gpu, &graph, Mode::Train, &kernels, &store, &outputs)?;
    let inputs = random_inputs(&graph, seed);
    for (name, values) in &inputs {
        program.write_input(gpu, name, values)?;
    }
    let params = module
        .params
        .iter()
        .map(|decl| initial_values(decl, seed))
        .collect::<Result<Vec<_>, _>>()?;

    let run = RunValues { seed: fold_seed(seed), ..RunValues::default() };
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    let mut values = program.run(gpu, &run, &names)?.into_iter();
    let mut losses = Vec::new();
    let mut grads = Vec::new();
    let mut pending = steps.into_iter().peekable();
    for (index, step) in train.steps.iter().enumerate() {
        let loss = values.next().expect("one value per output");
        losses.push((step.name.clone(), loss[0]));
        while let Some(&(_, param, node)) = pending.peek().filter(|(i, _, _)| *i == index) {
            grads.push((index, param, node, values.next().expect("one value per output")));
            pending.next();
        }
    }
    Ok(GradientRun { graph, inputs, params, losses, grads, run })
}

/// Chooses the step `h` of one parameter: `step_size` times the parameter's scale, its
/// root mean square, or 1 for a parameter that is still about zero (fresh biases and
/// batch-norm offsets).
///
/// NOTE: a larger step would resolve small derivatives of a large loss better in f32,
/// but it crosses more kinks. On pix2pix at 64x64 a ten times larger step turned several
/// agreeing weights into mismatches. So the step stays small, and the parameters that it
/// cannot resolve are reported as inconclusive.
fn step_size(options: &GradCheckOptions, values: &[f32]) -> f32 {
    let mean_square =
        values.iter().map(|&p| p as f64 * p as f64).sum::<f64>() / values.len().max(1) as f64;
    let scale = if mean_square.sqrt() < 1e-3 { 1.0 } else { mean_square.sqrt() };
    (options.step_size as f64 * scale) as f32
}

/// Compares the autodiff directional derivative `analytic` with the central difference of
/// `losses` (at `+h` and `-h`, around `center`) and returns the difference, the allowed
/// error, the verdict and `h`.
fn judge(
    analytic: f64,
    center: f64,
    losses: [f64; 2],
    h: f64,
    options: &GradCheckOptions,
) -> (f64, f64, Verdict, f64) {
    let numeric = (losses[0] - losses[1]) / (2.0 * h);
    let rounding = 4.0 * f32::EPSILON as f64 * (losses[0].abs() + losses[1].abs()) / (2.0 * h);
    let allowed = options.rtol * analytic.abs().max(numeric.abs()) + rounding;
    let (forward_slope, backward_slope) = ((losses[0] - center) / h, (center - losses[1]) / h);
    let kink = (forward_slope - backward_slope).abs()
        > 0.1 * forward_slope.abs().max(backward_slope.abs()) + 4.0 * rounding;
    let exact_zero = analytic == 0.0 && numeric == 0.0;
    let verdict = if (analytic - numeric).abs() <= allowed {
        if rounding > 0.5 * analytic.abs().max(numeric.abs()) && !exact_zero {
            Verdict::Inconclusive
        } else {
            Verdict::Agrees
        }
    } else if kink {
        Verdict::NotDifferentiable
    } else {
        Verdict::Mismatch
    };
    (numeric, allowed, verdict, h)
}

/// Draws every graph input uniformly from [-1, 1], from `seed`.
fn random_inputs(graph: &Graph, seed: u64) -> HashMap<String, Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1e9u64);
    let mut nodes = graph.input_nodes();
    nodes.sort_by(|a, b| a.1.cmp(&b.1));
    nodes
        .into_iter()
        .map(|(node, name)| {
            let count = graph.shape(node).numel();
            (name, (0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        })
        .collect()
}

/// Checks every gradient of `module`'s train section against central differences.
pub fn check_gradients(
    gpu: &Gpu,
    module: &Module,
    options: &GradCheckOptions,
) -> Result<Vec<ParamCheck>, TrainError> {
    let _span = tracing::info_span!("check_gradients", model = %module.name).entered();
    let train = module
        .train
        .as_ref()
        .ok_or_else(|| TrainError::NoTrainSection { model: module.name.clone() })?;
    let gradients = run_gradients(gpu, module, options.seed)?;

    // A forward-only program over the same parameter store, reading every step's loss.
    let target = gpu.target();
    let outputs: Vec<(String, NodeId)> =
        train.steps.iter().map(|s| (format!("loss.{}", s.name), s.loss)).collect();
    let keep: HashSet<NodeId> = outputs.iter().map(|&(_, node)| node).collect();
    let kernels = lower_graph_keeping(&train.graph, &target, Mode::Train, &keep)?;
    let store = ParamStore::initialized(gpu, module, options.seed)?;
    let forward = Program::compile(gpu, &train.graph, Mode::Train, &kernels, &store, &outputs)?;
    for (name, values) in &gradients.inputs {
        forward.write_input(gpu, name, values)?;
    }

    let names: Vec<String> = train.steps.iter().map(|s| format!("loss.{}", s.name)).collect();
    let unperturbed =
        forward.run(gpu, &gradients.run, &names.iter().map(String::as_str).collect::<Vec<_>>())?;

    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0xd1ec7u64);
    let mut checks = Vec::with_capacity(gradients.grads.len());
    for (step_index, param, _, grad) in &gradients.grads {
        let step = &train.steps[*step_index];
        let original = &gradients.params[*param];
        let direction: Vec<f32> =
            (0..original.len()).map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect();
        let analytic: f64 = grad.iter().zip(&direction).map(|(&g, &d)| g as f64 * d as f64).sum();
        let center = unperturbed[*step_index][0] as f64;
        let base = step_size(options, original);

        // A gradient that disagrees at the first step is tried again at ten times and a
        // tenth of it. A wrong rule disagrees at every step, while f32 rounding (which
        // grows as the step shrinks) and kinks crossed (which grow with it) do not.
        let mut result: Option<(f64, f64, Verdict, f64)> = None;
        for h in [base, base * 10.0, base / 10.0] {
            let mut losses = [0.0f64; 2];
            for (slot, sign) in [(0, 1.0f32), (1, -1.0f32)] {
                let moved: Vec<f32> =
                    original.iter().zip(&direction).map(|(&p, &d)| p + sign * h * d).collect();
                store.upload(gpu, *param, &moved)?;
                losses[slot] =
                    forward.run(gpu, &gradients.run, &[&names[*step_index]])?[0][0] as f64;
            }
            store.upload(gpu, *param, original)?;
            let judged = judge(analytic, center, losses, h as f64, options);
            let first = result.is_none();
            if first || matches!(judged.2, Verdict::Agrees | Verdict::Inconclusive) {
                result = Some(judged);
            }
            if result.is_some_and(|r| r.2 != Verdict::Mismatch) {
                break;
            }
        }
        let (numeric, allowed, verdict, h) = result.expect("the loop runs at least once");
        let check = ParamCheck {
            step: step.name.clone(),
            param: module.params[*param].name.clone(),
            analytic,
            numeric,
            step_size: h,
            allowed,
            verdict,
        };
        debug!(step = %check.step, param = %check.param, analytic, numeric, ?verdict, "checked a gradient");
        checks.push(check);
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    info!(checked = checks.len(), failed, "finished the gradient check");
    Ok(checks)
}
