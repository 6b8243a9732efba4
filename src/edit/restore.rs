//! Starts a training engine from the matching tensors of a checkpoint of another version
//! of the model: `--init-from`, and `--resume` after the `.net` file changed.
//!
//! Needs: an engine that contains freshly initialised parameters and zero optimizer moments.
//! Guarantees: every parameter and buffer whose name and shape match a checkpoint tensor
//! takes the checkpoint's values bit for bit, and so does each optimizer moment of it
//! whose name and length match one the engine has. Everything else keeps the engine's
//! fresh values. The engine receives one [`Engine::restore`] call with complete sets.
//!
//! NOTE: `--init-from` carries the moments but not Adam's update count, which a new run
//! restarts at zero. Bias correction then divides the carried second moment by
//! `1 - beta2^t` for a small `t`, so the first updates after the transfer are smaller than
//! in the old run (about 30 times at beta2 0.999), not larger.

use super::transfer::{pair_moments, transfer, ParamSlot, TransferError, TransferReport};
use crate::ir::{Module, ParamKind};
use crate::train::checkpoint::{Checkpoint, Tensor};
use crate::train::run::{Engine, RunError};

/// The tensors a model starts from after a transfer, in the order the engine gave them.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    pub weights: Vec<Tensor>,
    pub moments: Vec<Tensor>,
    pub report: TransferReport,
    /// Optimizer moments taken from the checkpoint.
    pub moments_copied: usize,
    /// Checkpoint moments that belong to no checkpoint weight.
    pub moments_unpaired: usize,
}

/// Overwrites `weights` and `moments`, a model's fresh tensors, with the matching ones of
/// `saved`, a checkpoint's weights and moments. `module` marks which weights are buffers.
pub fn merge_matching(
    module: &Module,
    (mut weights, mut moments): (Vec<Tensor>, Vec<Tensor>),
    saved: (Vec<Tensor>, Vec<Tensor>),
    force: bool,
) -> Result<Merged, TransferError> {
    let kind_of = |name: &str| {
        let decl = module.params.iter().find(|p| p.name == name);
        decl.map_or(ParamKind::Trainable, |p| p.kind)
    };
    let slots: Vec<ParamSlot> = weights
        .iter()
        .map(|t| ParamSlot { name: t.name.clone(), shape: t.shape.clone(), kind: kind_of(&t.name) })
        .collect();
    let (saved, unpaired) = pair_moments(saved.0, saved.1);
    let result = transfer(&slots, saved, force)?;

    let mut moments_copied = 0;
    for (weight, tensor) in weights.iter_mut().zip(result.tensors) {
        let Some(tensor) = tensor else { continue };
        weight.data = tensor.values;
        for (name, values) in tensor.moments {
            let target =
                moments.iter_mut().find(|m| m.name == name && m.data.len() == values.len());
            if let Some(target) = target {
                target.data = values;
                moments_copied += 1;
            }
        }
    }
    Ok(Merged {
        weights,
        moments,
        report: result.report,
        moments_copied,
        moments_unpaired: unpaired.len(),
    })
}

/// Copies the matching tensors of `checkpoint` into `engine` and logs the report. With
/// `force`, a checkpoint that matches no trainable parameter is accepted.
pub fn restore_matching(
    module: &Module,
    engine: &mut dyn Engine,
    checkpoint: Checkpoint,
    force: bool,
) -> Result<TransferReport, RunError> {
    let step = checkpoint.record.step;
    let failed = |message| RunError::Engine { step, message };
    let fresh = engine.tensors().map_err(failed)?;
    let overrides = checkpoint.record.model.overrides;
    let saved = (checkpoint.weights, checkpoint.moments);
    let merged = merge_matching(module, fresh, saved, force)
        .map_err(|e| e.with_checkpoint_overrides(&overrides))?;
    engine.restore(&merged.weights, &merged.moments).map_err(failed)?;

    for line in merged.report.render().lines() {
        tracing::info!("{line}");
    }
    tracing::info!(
        moments_copied = merged.moments_copied,
        moments_fresh = merged.moments.len() - merged.moments_copied,
        moments_unpaired = merged.moments_unpaired,
        "optimizer moments transferred with their parameters"
    );
    Ok(merged.report)
}
