//! The training API that a run loop drives: one call per iteration, plus access to every
//! tensor and counter a checkpoint needs.
//!
//! ```text
//! let mut trainer = Trainer::new(&gpu, &module, seed)?;
//! trainer.set_epoch(epoch);                       // learning rates from the schedule
//! let losses = trainer.step(&input, &target)?;    // [(term or step name, value)]
//! let tensors = trainer.tensors()?;               // parameters, buffers, optimizer state
//! let state = trainer.state();                    // iteration, epoch, update counts, seed
//! // ... later, in a new process:
//! let mut trainer = Trainer::new(&gpu, &module, state.seed)?;
//! trainer.set_tensors(&tensors)?;
//! trainer.restore_state(&state)?;
//! ```
//!
//! Guarantees: an iteration is one submit that runs every step of the `train` section in
//! order (see [`super::program`]). Dropout masks are keyed by the run's seed, the
//! iteration number, the node and the element, so restoring the tensors and the state
//! continues a run bit for bit on the same adapter. Inputs are `[N, C, H, W]` row-major
//! `f32` in the shapes of the train graph's `input` and `target` nodes.

use super::checkpoint::Tensor;
use super::data::Batch;
use super::optimizer::UpdateValues;
use super::program::TrainProgram;
use super::run::Engine;
use super::schedule::learning_rate;
use super::TrainError;
use crate::codegen::wgsl::RunValues;
use crate::codegen::Mode;
use crate::infer::{self, Generator};
use crate::ir::{Module, ParamKind, Shape};
use crate::reference::random::fold_seed;
use crate::runtime::{Gpu, ParamStore, Program};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracing::debug;

/// A tensor by name, as checkpoints store it.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Shape,
    pub data: Vec<f32>,
}

/// The counters that, with the tensors, determine how a run continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The run's seed, which keys parameter initialization and dropout.
    pub seed: u64,
    /// Iterations completed; the next iteration's dropout masks are keyed by it.
    pub iteration: u64,
    /// The epoch whose learning rates the next iteration uses.
    pub epoch: usize,
    /// Updates each step has applied, by step name: Adam's `t` of the last update.
    pub updates: Vec<(String, u64)>,
}

/// A compiled training program with its parameters and optimizer state on the device.
pub struct Trainer<'g> {
    gpu: &'g Gpu,
    program: TrainProgram,
    compiled: Program,
    store: ParamStore,
    state: TrainerState,
    /// Output names of the values one iteration reads back.
    loss_names: Vec<String>,
    /// The generator compiled for evaluation against the same parameters, on first use.
    generator: Option<Generator>,
}

impl<'g> Trainer<'g> {
    /// Builds and compiles the iteration of `module`'s `train` section and initializes
    /// every parameter from its initializer with `seed`; optimizer state starts at zero.
    pub fn new(gpu: &'g Gpu, module: &Module, seed: u64) -> Result<Self, TrainError> {
        let program = TrainProgram::build(module, &gpu.target())?;
        let store = ParamStore::initialized_packed(gpu, &program.module, &program.arenas, seed)?;
        let compiled = Program::compile(
            gpu,
            &program.graph,
            Mode::Train,
            &program.kernels,
            &store,
            &program.outputs,
        )?;
        let updates = program.steps.iter().map(|s| (s.name.clone(), 0)).collect();
        let loss_names = program.outputs.iter().map(|(name, _)| name.clone()).collect();
        Ok(Trainer {
            gpu,
            program,
            compiled,
            store,
            state: TrainerState { seed, iteration: 0, epoch: 0, updates },
            loss_names,
            generator: None,
        })
    }

    /// Returns the compiled program: its graph, steps, kernels and the training module.
    pub fn program(&self) -> &TrainProgram {
        &self.program
    }

    /// Returns the compiled device program, for dispatch counts and the memory report.
    pub fn device_program(&self) -> &Program {
        &self.compiled
    }

    /// Returns the device memory of the parameter store in bytes, gradient arenas included.
    pub fn parameter_store_bytes(&self) -> u64 {
        self.store.bytes()
    }

    /// Sets the epoch whose learning rates the next iterations use.
    pub fn set_epoch(&mut self, epoch: usize) {
        self.state.epoch = epoch;
    }

    /// Returns the learning rate each step uses in the current epoch, by step name.
    pub fn learning_rates(&self) -> Vec<(String, f32)> {
        self.program
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    learning_rate(&s.optimizer, &self.program.schedule, self.state.epoch),
                )
            })
            .collect()
    }

    /// Runs one iteration on a batch and returns every loss term by name, then each
    /// step's total loss by the step's name. Each step's loss is computed with the weights
    /// that step reads: after the updates of the steps before it in this iteration.
    pub fn step(
        &mut self,
        input: &[f32],
        target: &[f32],
    ) -> Result<Vec<(String, f32)>, TrainError> {
        let names = self.loss_names.clone();
        let read: Vec<&str> = names.iter().map(String::as_str).collect();
        let values = self.run(input, target, &read)?;
        Ok(names.into_iter().zip(values.into_iter().map(|v| v[0])).collect())
    }

    /// Runs one iteration without reading anything back, for iterations whose losses
    /// are not shown.
    pub fn step_unread(&mut self, input: &[f32], target: &[f32]) -> Result<(), TrainError> {
        self.run(input, target, &[]).map(|_| ())
    }

    fn run(
        &mut self,
        input: &[f32],
        target: &[f32],
        read: &[&str],
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        self.compiled.write_input(self.gpu, "input", input)?;
        self.compiled.write_input(self.gpu, "target", target)?;

        // Each step's update values: this epoch's rate and Adam's beta^t of update t.
        let rates = self.learning_rates();
        for (index, step) in self.program.steps.iter().enumerate() {
            let t = self.state.updates[index].1 + 1;
            let values = UpdateValues::new(&step.optimizer, rates[index].1, t);
            let packed = [values.lr, values.beta1_power, values.beta2_power];
            self.store.upload(self.gpu, step.values, &packed)?;
        }

        let run = RunValues {
            seed: fold_seed(self.state.seed),
            step: self.state.iteration as u32,
            ..RunValues::default()
        };
        let values = self.compiled.run(self.gpu, &run, read)?;
        self.state.iteration += 1;
        for (index, step) in self.program.steps.iter().enumerate() {
            if !step.updates.is_empty() {
                self.state.updates[index].1 += 1;
            }
        }
        debug!(iteration = self.state.iteration, "ran a training iteration");
        Ok(values)
    }

    /// Returns the counters a checkpoint stores.
    pub fn state(&self) -> TrainerState {
        self.state.clone()
    }

    /// Restores the counters of a checkpoint written by the same model.
    pub fn restore_state(&mut self, state: &TrainerState) -> Result<(), TrainError> {
        let expected: Vec<&str> = self.program.steps.iter().map(|s| s.name.as_str()).collect();
        let got: Vec<&str> = state.updates.iter().map(|(n, _)| n.as_str()).collect();
        if expected != got {
            return Err(TrainError::StepsMismatch {
                expected: expected.join(", "),
                got: got.join(", "),
            });
        }
        self.state = state.clone();
        Ok(())
    }

    /// Downloads every tensor a checkpoint stores: the module's parameters and buffers under their
    /// own names, and the optimizer state as `optimizer.<step>.<parameter>.<state>`.
    pub fn tensors(&self) -> Result<Vec<NamedTensor>, TrainError> {
        let values = self.store.download_all(self.gpu)?;
        let skipped = self.value_buffers();
        Ok(self
            .program
            .module
            .params
            .iter()
            .zip(values)
            .enumerate()
            .filter(|(id, _)| !skipped.contains(id))
            .map(|(_, (decl, data))| NamedTensor {
                name: decl.name.clone(),
                shape: decl.shape.clone(),
                data,
            })
            .collect())
    }

    /// Reads one tensor by name (see [`Trainer::tensors`] for the names).
    pub fn tensor(&self, name: &str) -> Result<NamedTensor, TrainError> {
        let id = self.tensor_id(name)?;
        let decl = &self.program.module.params[id];
        let data = self.store.download(self.gpu, id)?;
        Ok(NamedTensor { name: decl.name.clone(), shape: decl.shape.clone(), data })
    }

    /// Overwrites the named tensors, for a resume or a weight transfer. Tensors not
    /// listed keep their values.
    pub fn set_tensors(&mut self, tensors: &[NamedTensor]) -> Result<(), TrainError> {
        for tensor in tensors {
            let id = self.tensor_id(&tensor.name)?;
            let decl = &self.program.module.params[id];
            if decl.shape != tensor.shape {
                return Err(TrainError::TensorShape {
                    name: tensor.name.clone(),
                    expected: decl.shape.clone(),
                    got: tensor.shape.clone(),
                });
            }
            self.store.upload(self.gpu, id, &tensor.data)?;
        }
        Ok(())
    }

    /// Returns the names of the trainable parameters of `net`, in declaration order.
    pub fn trainable_names(&self, net: &str) -> Vec<String> {
        self.program
            .module
            .params
            .iter()
            .filter(|p| p.net == net && p.kind == ParamKind::Trainable)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Returns the names of the loss terms, step by step; a step without named terms contributes
    /// its total under the step's name.
    pub fn term_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for step in &self.program.steps {
            if step.terms.is_empty() {
                names.push(step.name.clone());
            }
            for (name, _) in &step.terms {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// Runs the train section's generator in [`Mode::Infer`] (batch statistics and dropout,
    /// running statistics left unchanged) on `input`, any number of `[C, H, W]` samples, and
    /// returns the output channel count and the outputs, `[C, H, W]` per sample.
    pub fn generate_images(&mut self, input: &[f32]) -> Result<(usize, Vec<f32>), TrainError> {
        let net = infer::generator(&self.program.module)
            .map_err(|e| TrainError::Generator { message: e.to_string() })?;
        let [source] = net.inputs.as_slice() else {
            return Err(TrainError::Generator {
                message: format!("network {} must take exactly one input", net.name),
            });
        };
        let input_name = source.name.clone();
        let dims = source.shape.dims().to_vec();
        let output = net.graph.output("output").ok_or_else(|| TrainError::Generator {
            message: format!("network {} has no output", net.name),
        })?;
        let out_dims = net.graph.shape(output).dims().to_vec();
        if self.generator.is_none() {
            let module = &self.program.module;
            let compiled = Generator::compile(self.gpu, module, &self.store, Mode::Infer)
                .map_err(|e| TrainError::Generator { message: e.to_string() })?;
            self.generator = Some(compiled);
        }
        let program = self.generator.as_ref().expect("compiled above").program();

        // The network has a fixed batch size: run it on chunks of that many samples, the
        // last one padded with zeros.
        let batch = dims[0].max(1);
        let sample: usize = dims[1..].iter().product();
        let out_sample: usize = out_dims[1..].iter().product();
        if sample == 0 || input.len() % sample != 0 {
            return Err(TrainError::Generator {
                message: format!(
                    "{} input values are not a whole number of {:?} samples",
                    input.len(),
                    &dims[1..]
                ),
            });
        }
        let samples = input.len() / sample;
        let mut outputs = Vec::with_capacity(samples * out_sample);
        for chunk in input.chunks(batch * sample) {
            let mut values = chunk.to_vec();
            values.resize(batch * sample, 0.0);
            program.write_input(self.gpu, &input_name, &values)?;
            let result = program.run(self.gpu, &RunValues::default(), &["output"])?.remove(0);
            outputs.extend_from_slice(&result[..(chunk.len() / sample) * out_sample]);
        }
        Ok((out_dims[1], outputs))
    }

    fn value_buffers(&self) -> Vec<usize> {
        self.program.steps.iter().map(|s| s.values).collect()
    }

    fn tensor_id(&self, name: &str) -> Result<usize, TrainError> {
        let skipped = self.value_buffers();
        self.program
            .module
            .param_id(name)
            .filter(|id| !skipped.contains(id))
            .ok_or_else(|| TrainError::UnknownTensor { name: name.to_string() })
    }
}

/// The names of the optimizer state tensors start with this prefix; every other tensor is
/// a parameter or buffer of the model.
const STATE_PREFIX: &str = "optimizer.";

/// The run loop's view of the trainer. Weights are the module's parameters and buffers,
/// moments the optimizer state; the generator state is the [`TrainerState`] as JSON.
impl Engine for Trainer<'_> {
    fn loss_names(&self) -> Vec<String> {
        self.term_names()
    }

    fn learning_rates(&self, epoch: usize) -> BTreeMap<String, f32> {
        self.program
            .steps
            .iter()
            .map(|s| (s.name.clone(), learning_rate(&s.optimizer, &self.program.schedule, epoch)))
            .collect()
    }

    fn step(&mut self, step: u64, epoch: usize, batch: &Batch) -> Result<Vec<f32>, String> {
        // The run loop's step number keys the dropout masks, so a resumed run draws the
        // masks a straight run would.
        self.state.iteration = step;
        self.set_epoch(epoch);
        let losses = Trainer::step(self, &batch.input, &batch.target).map_err(|e| e.to_string())?;
        let terms = self.term_names();
        Ok(terms
            .iter()
            .map(|name| losses.iter().find(|(n, _)| n == name).map_or(f32::NAN, |(_, v)| *v))
            .collect())
    }

    fn generate(&mut self, batch: &Batch) -> Result<(usize, Vec<f32>), String> {
        self.generate_images(&batch.input).map_err(|e| e.to_string())
    }

    fn tensors(&mut self) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
        let all = Trainer::tensors(self).map_err(|e| e.to_string())?;
        let (moments, weights): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|t| t.name.starts_with(STATE_PREFIX));
        let convert = |t: NamedTensor| Tensor { name: t.name, shape: t.shape, data: t.data };
        Ok((weights.into_iter().map(convert).collect(), moments.into_iter().map(convert).collect()))
    }

    fn tensor_shapes(&self) -> (Vec<(String, Shape)>, Vec<(String, Shape)>) {
        let skipped = self.value_buffers();
        let (moments, weights): (Vec<_>, Vec<_>) = self
            .program
            .module
            .params
            .iter()
            .enumerate()
            .filter(|(id, _)| !skipped.contains(id))
            .map(|(_, p)| (p.name.clone(), p.shape.clone()))
            .partition(|(name, _)| name.starts_with(STATE_PREFIX));
        (weights, moments)
    }

    fn restore(&mut self, weights: &[Tensor], moments: &[Tensor]) -> Result<(), String> {
        let tensors: Vec<NamedTensor> = weights
            .iter()
            .chain(moments)
            .map(|t| NamedTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
            .collect();
        self.set_tensors(&tensors).map_err(|e| e.to_string())
    }

    fn rng_state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("the trainer state is plain data")
    }

    fn restore_rng(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let state: TrainerState =
            serde_json::from_value(state.clone()).map_err(|e| e.to_string())?;
        self.restore_state(&state).map_err(|e| e.to_string())
    }
}
