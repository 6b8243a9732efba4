//! Starts a training engine from the matching tensors of a checkpoint of another version
//! of the model: `--init-from`, and `--resume` after the `.net` file changed.
//!
//! Needs: an engine that holds freshly initialised parameters and zero optimizer moments.
//! Guarantees: every parameter and buffer whose name and shape match a checkpoint tensor
//! takes the checkpoint's values bit for bit, and so does each optimizer moment of it
//! whose name and length match one the engine has. Everything else keeps the engine's
//! fresh values. The engine receives one [`Engine::restore`] call with complete sets.

use super::transfer::{pair_moments, transfer, ParamSlot, TransferReport};
use crate::ir::{Module, ParamKind};
use crate::train::checkpoint::Checkpoint;
use crate::train::run::{Engine, RunError};

/// Copies the matching tensors of `checkpoint` into `engine` and logs the report. With
/// `force`, a checkpoint that matches no trainable parameter is accepted.
pub fn restore_matching(
    module: &Module,
    engine: &mut dyn Engine,
    checkpoint: Checkpoint,
    force: bool,
) -> Result<TransferReport, RunError> {
    let failed = |message| RunError::Engine { step: checkpoint.record.step, message };
    let (mut weights, mut moments) = engine.tensors().map_err(failed)?;

    // The engine's tensors are the slots; the module says which of them are buffers.
    let kind_of = |name: &str| {
        let decl = module.params.iter().find(|p| p.name == name);
        decl.map_or(ParamKind::Trainable, |p| p.kind)
    };
    let slots: Vec<ParamSlot> = weights
        .iter()
        .map(|t| ParamSlot { name: t.name.clone(), shape: t.shape.clone(), kind: kind_of(&t.name) })
        .collect();
    let step = checkpoint.record.step;
    let (saved, unpaired) = pair_moments(checkpoint.weights, checkpoint.moments);
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
    engine.restore(&weights, &moments).map_err(|message| RunError::Engine { step, message })?;

    for line in result.report.render().lines() {
        tracing::info!("{line}");
    }
    tracing::info!(
        moments_copied,
        moments_fresh = moments.len() - moments_copied,
        moments_unpaired = unpaired.len(),
        "optimizer moments transferred with their parameters"
    );
    Ok(result.report)
}
