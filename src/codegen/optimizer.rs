//! Optimizer kernels: one Adam or SGD update of one parameter from its gradient.
//!
//! A parameter larger than one binding is updated by one kernel per chunk.
//!
//! The kernels read the learning rate (and Adam's `beta^t`) from a small per-step buffer
//! that the host writes before each submit, so the program never needs recompiling when
//! the rate or the update count changes.
//!
//! FIXME(perf): one dispatch per parameter. Packing a step's parameters, gradients and
//! moments into shared buffers would let one dispatch update them all.

use super::wgsl::{assemble, f32_literal, u};
use super::{Binding, CodegenError, Grid, Kernel, Resource, Target};
use crate::ir::{NodeId, Optimizer, ParamId};

const ADAM: &str = include_str!("../../shaders/adam.wgsl");
const SGD: &str = include_str!("../../shaders/sgd.wgsl");

/// The tensors one update binds.
#[derive(Clone, Debug)]
pub struct UpdateBindings {
    /// The parameter being updated.
    pub param: ParamId,
    /// The resource the gradient is read from (the gradient node's value resource).
    pub grad: Resource,
    /// The gradient node, for the kernel's bookkeeping.
    pub grad_node: NodeId,
    /// The optimizer state tensors, in the order of `train::optimizer::state_names`.
    pub state: Vec<ParamId>,
    /// The per-step buffer of `[lr, beta1^t, beta2^t]`.
    pub values: ParamId,
    /// Element count of the parameter.
    pub count: usize,
}

/// Lowers the update of `bindings.param` with `optimizer`, one kernel per chunk of at
/// most one binding. `name` names the kernel.
pub fn lower_update(
    name: &str,
    optimizer: &Optimizer,
    bindings: &UpdateBindings,
    target: &Target,
) -> Result<Vec<Kernel>, CodegenError> {
    let tuning = &target.tuning;
    let per_group = u64::from(tuning.workgroup_size) * u64::from(tuning.elementwise_items);
    let chunk = target.chunk_elements();
    let parts = bindings.count.div_ceil(chunk).max(1);
    let mut kernels = Vec::with_capacity(parts);
    for part in 0..parts {
        let start = part * chunk;
        let len = chunk.min(bindings.count - start.min(bindings.count));
        let name = if parts == 1 { name.to_string() } else { format!("{name}.part{part}") };
        let grid = Grid::fold(
            &name,
            (len as u64).div_ceil(per_group),
            target.max_workgroups_per_dimension,
        )?;
        let mut constants = vec![
            ("WG", u(tuning.workgroup_size)),
            ("ITEMS", u(tuning.elementwise_items)),
            ("COUNT", u(len as u64)),
        ];
        let tensor = |name: &'static str, id: ParamId| {
            Binding::write(name, Resource::Param(id), bindings.count).range(start, len)
        };
        let mut list = vec![
            Binding::read("grad", bindings.grad, bindings.count).range(start, len),
            tensor("param", bindings.param),
            Binding::read("values", Resource::Param(bindings.values), 3),
        ];
        let template = match *optimizer {
            Optimizer::Adam { beta1, beta2, eps, .. } => {
                constants.extend([
                    ("BETA1", f32_literal(beta1)),
                    ("BETA2", f32_literal(beta2)),
                    ("EPS", f32_literal(eps)),
                ]);
                list.push(tensor("exp_avg", bindings.state[0]));
                list.push(tensor("exp_avg_sq", bindings.state[1]));
                ADAM
            }
            Optimizer::Sgd { momentum, .. } => {
                constants.push(("MOMENTUM", f32_literal(momentum)));
                list.push(tensor("momentum_buffer", bindings.state[0]));
                SGD
            }
        };
        let wgsl = assemble(&name, template, &constants, &list, &grid);
        let kernel = Kernel {
            name,
            node: bindings.grad_node,
            wgsl,
            bindings: list,
            grid,
            flops: 10 * len as u64,
        };
        target.check(&kernel)?;
        kernels.push(kernel);
    }
    Ok(kernels)
}
