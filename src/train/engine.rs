//! The device engine: the [`Trainer`] and an inference-mode generator behind the run
//! driver's [`Engine`] trait.
//!
//! Needs a module with a `train` section and an opened [`Gpu`]. The losses it reports are
//! the named terms of every step, in the order the train section lists them. Optimizer
//! state is stored in checkpoints under the trainer's names
//! (`optimizer.<step>.<parameter>.<state>`), in `optimizer.safetensors`. The generator
//! for image grids is compiled once in [`Mode::Infer`], as pix2pix runs it at test time
//! (batch statistics and dropout, but no update of the running statistics). It reads a
//! copy of the trainer's generator parameters, refreshed before each grid.

use crate::codegen::wgsl::RunValues;
use crate::codegen::Mode;
use crate::infer::{generator, Generator, InferError};
use crate::ir::{Module, Shape};
use crate::runtime::{Gpu, ParamStore};
use crate::train::checkpoint::Tensor;
use crate::train::data::Batch;
use crate::train::run::Engine;
use crate::train::schedule::learning_rate;
use crate::train::{NamedTensor, TrainError, Trainer, TrainerState};
use std::collections::BTreeMap;

/// Prefix of the trainer's optimizer-state tensors.
const OPTIMIZER_PREFIX: &str = "optimizer.";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum EngineError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Train(#[from] TrainError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Infer(#[from] InferError),
}

/// The trainer of a module and the evaluation generator of its grids.
pub struct DeviceEngine<'g> {
    gpu: &'g Gpu,
    trainer: Trainer<'g>,
    /// Loss term names, the `losses.csv` columns.
    terms: Vec<String>,
    /// Evaluation copy of the module's parameters that [`DeviceEngine::generator`] reads.
    eval_params: ParamStore,
    generator: Generator,
    /// `(id in eval_params, name)` of every parameter the generator network reads.
    generator_params: Vec<(usize, String)>,
    input_name: String,
    /// `[N, C, H, W]` of the generator's input and output.
    input_dims: [usize; 4],
    output_dims: [usize; 4],
}

impl<'g> DeviceEngine<'g> {
    /// Compiles the training iteration and the evaluation generator of `module`, with
    /// parameters initialized from `seed`.
    pub fn new(gpu: &'g Gpu, module: &Module, seed: u64) -> Result<Self, EngineError> {
        let trainer = Trainer::new(gpu, module, seed)?;
        let train = module
            .train
            .as_ref()
            .ok_or_else(|| TrainError::NoTrainSection { model: module.name.clone() })?;
        let terms =
            train.steps.iter().flat_map(|s| s.terms.iter().map(|t| t.name.clone())).collect();

        let net = generator(module)?;
        let eval_params = ParamStore::zeros(gpu, module).map_err(TrainError::from)?;
        let generator = Generator::compile(gpu, module, &eval_params, Mode::Infer)?;
        let generator_params =
            net.params.iter().map(|&id| (id, module.params[id].name.clone())).collect();
        let input = net.inputs.first().map(|i| (i.name.clone(), i.shape.clone()));
        let (input_name, input_shape) = input.unwrap_or_default();
        let output = net.graph.output("output").map(|id| net.graph.shape(id).clone());
        Ok(DeviceEngine {
            gpu,
            trainer,
            terms,
            eval_params,
            generator,
            generator_params,
            input_name,
            input_dims: dims4(&input_shape),
            output_dims: dims4(&output.unwrap_or_default()),
        })
    }

    pub fn trainer(&self) -> &Trainer<'g> {
        &self.trainer
    }

    /// Copies the trainer's current generator parameters into the evaluation store.
    fn refresh_generator(&self) -> Result<(), TrainError> {
        for (id, name) in &self.generator_params {
            let tensor = self.trainer.tensor(name)?;
            self.eval_params.upload(self.gpu, *id, &tensor.data)?;
        }
        Ok(())
    }
}

fn dims4(shape: &Shape) -> [usize; 4] {
    match shape.dims() {
        &[n, c, h, w] => [n, c, h, w],
        _ => [0; 4],
    }
}

impl Engine for DeviceEngine<'_> {
    fn loss_names(&self) -> Vec<String> {
        self.terms.clone()
    }

    fn learning_rates(&self, epoch: usize) -> BTreeMap<String, f32> {
        let program = self.trainer.program();
        let rate = |s: &crate::train::program::StepPlan| {
            learning_rate(&s.optimizer, &program.schedule, epoch)
        };
        program.steps.iter().map(|s| (s.name.clone(), rate(s))).collect()
    }

    fn step(&mut self, _step: u64, epoch: usize, batch: &Batch) -> Result<Vec<f32>, String> {
        self.trainer.set_epoch(epoch);
        let losses = self.trainer.step(&batch.input, &batch.target).map_err(|e| e.to_string())?;
        let value = |name: &String| losses.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        self.terms
            .iter()
            .map(|name| value(name).ok_or_else(|| format!("the trainer returned no loss `{name}`")))
            .collect()
    }

    fn generate(&mut self, batch: &Batch) -> Result<(usize, Vec<f32>), String> {
        self.refresh_generator().map_err(|e| e.to_string())?;
        let [n, c, h, w] = self.input_dims;
        let [_, out_c, out_h, out_w] = self.output_dims;
        if [batch.shape[1], batch.shape[2], batch.shape[3]] != [c, h, w] {
            return Err(format!(
                "grid samples are {:?}, but the generator takes {:?}",
                batch.shape, self.input_dims
            ));
        }

        // The generator's batch size is fixed, so samples go in groups of `n` and the last
        // group is padded with zeros.
        // NOTE: with `n > 1` that padding shifts the batch statistics of the last group.
        let (in_size, out_size) = (c * h * w, out_c * out_h * out_w);
        let program = self.generator.program();
        let mut output = Vec::with_capacity(batch.shape[0] * out_size);
        for group in batch.input.chunks(n * in_size) {
            let mut values = group.to_vec();
            values.resize(n * in_size, 0.0);
            program.write_input(self.gpu, &self.input_name, &values).map_err(|e| e.to_string())?;
            let result = program
                .run(self.gpu, &RunValues::default(), &["output"])
                .map_err(|e| e.to_string())?;
            let samples = group.len() / in_size;
            output.extend_from_slice(&result[0][..samples * out_size]);
        }
        Ok((out_c, output))
    }

    fn tensors(&mut self) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
        let all = self.trainer.tensors().map_err(|e| e.to_string())?;
        let (moments, weights): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|t| t.name.starts_with(OPTIMIZER_PREFIX));
        let convert = |list: Vec<NamedTensor>| {
            list.into_iter()
                .map(|t| Tensor { name: t.name, shape: t.shape, data: t.data })
                .collect()
        };
        Ok((convert(weights), convert(moments)))
    }

    fn tensor_shapes(&self) -> (Vec<(String, Shape)>, Vec<(String, Shape)>) {
        let program = self.trainer.program();
        let values: Vec<usize> = program.steps.iter().map(|s| s.values).collect();
        let stored =
            program.module.params.iter().enumerate().filter(|(id, _)| !values.contains(id));
        let (moments, weights): (Vec<_>, Vec<_>) = stored
            .map(|(_, p)| (p.name.clone(), p.shape.clone()))
            .partition(|(name, _)| name.starts_with(OPTIMIZER_PREFIX));
        (weights, moments)
    }

    fn restore(&mut self, weights: &[Tensor], moments: &[Tensor]) -> Result<(), String> {
        let all: Vec<NamedTensor> = weights
            .iter()
            .chain(moments)
            .map(|t| NamedTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
            .collect();
        self.trainer.set_tensors(&all).map_err(|e| e.to_string())
    }

    fn rng_state(&self) -> serde_json::Value {
        serde_json::to_value(self.trainer.state()).expect("TrainerState serializes to JSON")
    }

    fn restore_rng(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let state: TrainerState =
            serde_json::from_value(state.clone()).map_err(|e| e.to_string())?;
        self.trainer.restore_state(&state).map_err(|e| e.to_string())
    }
}
