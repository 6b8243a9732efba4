//! Training: the iteration program (autodiff, kernels, optimizer updates in step order),
//! the [`Trainer`] a run loop drives, optimizers, learning-rate schedules and the
//! finite-difference gradient check; around them the data pipeline, checkpoints and the
//! run's outputs.
//!
//! `data` turns a folder of paired images into batches, `checkpoint` saves and restores a
//! run, and `report` writes `losses.csv`, image grids, the loss plot and `index.html`.

pub mod atomic;
pub mod checkpoint;
pub mod data;
pub mod fetch;
pub mod gradcheck;
pub mod optimizer;
pub mod program;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
mod trainer;

pub use trainer::{NamedTensor, Trainer, TrainerState};

use crate::autodiff::AutodiffError;
use crate::codegen::CodegenError;
use crate::ir::Shape;
use crate::runtime::RuntimeError;

/// A failure to build, run or restore a training program.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum TrainError {
    #[error("model {model} has no train section")]
    #[diagnostic(help("add a `train` section that names the steps, their losses and optimizers"))]
    NoTrainSection { model: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Autodiff(#[from] AutodiffError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Codegen(#[from] CodegenError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the training program has no tensor named {name}")]
    #[diagnostic(help("the checkpoint was written by a different model, or the model changed"))]
    UnknownTensor { name: String },
    #[error("tensor {name} has shape {got}, but the model expects {expected}")]
    #[diagnostic(help("the checkpoint was written by a different model, or the model changed"))]
    TensorShape { name: String, expected: Shape, got: Shape },
    #[error("the saved state has steps [{got}], but the model's train section has [{expected}]")]
    StepsMismatch { expected: String, got: String },
    #[error("failed to run the generator: {message}")]
    Generator { message: String },
}
