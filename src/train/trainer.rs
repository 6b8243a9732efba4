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

use super::optimizer::UpdateValues;
use super::program::TrainProgram;
use super::schedule::learning_rate;
use super::TrainError;
use crate::codegen::wgsl::RunValues;
use crate::ir::{Module, ParamKind, Shape};
use crate::reference::random::fold_seed;
use crate::runtime::{Gpu, ParamStore, Program};
use serde::{Deserialize, Serialize};
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
}

impl<'g> Trainer<'g> {
    /// Builds and compiles the iteration of `module`'s `train` section and initializes
    /// every parameter from its initializer with `seed`; optimizer state starts at zero.
    pub fn new(gpu: &'g Gpu, module: &Module, seed: u64) -> Result<Self, TrainError> {
        let program = TrainProgram::build(module, &gpu.target())?;
        let store = ParamStore::initialized(gpu, &program.module, seed)?;
        let compiled = Program::compile(
            gpu,
            &program.graph,
            crate::codegen::Mode::Train,
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
        })
    }

    /// The compiled program: its graph, steps, kernels and the training module.
    pub fn program(&self) -> &TrainProgram {
        &self.program
    }

    /// The compiled device program, for dispatch counts and the memory report.
    pub fn device_program(&self) -> &Program {
        &self.compiled
    }

    /// Sets the epoch whose learning rates the next iterations use.
    pub fn set_epoch(&mut self, epoch: usize) {
        self.state.epoch = epoch;
    }

    /// The learning rate each step uses in the current epoch, by step name.
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
    /// step's total loss by the step's name. The values are those computed before the
    /// iteration's updates.
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
    /// nobody shows.
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

    /// The counters a checkpoint stores.
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

    /// Every tensor a checkpoint stores: the module's parameters and buffers under their
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

    /// The names of the trainable parameters of `net`, in declaration order.
    pub fn trainable_names(&self, net: &str) -> Vec<String> {
        self.program
            .module
            .params
            .iter()
            .filter(|p| p.net == net && p.kind == ParamKind::Trainable)
            .map(|p| p.name.clone())
            .collect()
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
