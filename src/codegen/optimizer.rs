//! Optimizer kernels: one Adam or SGD update over a step's packed parameters, or of one
//! parameter from its gradient.
//!
//! The fused update binds four arenas with one layout ([`Arena`]): the step's parameters,
//! their gradients and each optimizer state. It reads them as `vec4`s, so one dispatch
//! updates every parameter of the step. With texture operands (CPU adapters whose storage
//! loads are slow) the fused Adam update reads the gradients, parameters and moments from
//! texture copies of them. An update larger than one binding is split into
//! one kernel per chunk. The per-parameter update remains for a parameter whose gradient
//! cannot be placed in an arena, such as one that two steps update.
//!
//! The kernels read the learning rate (and Adam's `beta^t`) from a small per-step buffer
//! that the host writes before each submit, so the program never needs recompiling when
//! the rate or the update count changes.

use super::gemm::TEXTURE_WIDTH;
use super::wgsl::{assemble, f32_literal, u};
use super::{Binding, CodegenError, Grid, Kernel, Resource, Target};
use crate::ir::{NodeId, Optimizer, ParamId};

const ADAM: &str = include_str!("../../shaders/adam.wgsl");

/// Elements per kernel of a fused Adam update that reads textures: 16 MiB of `f32`s.
const TEXTURE_CHUNK: usize = 1 << 22;
const SGD: &str = include_str!("../../shaders/sgd.wgsl");

/// One packed buffer of the parameter store: tensors at offsets aligned for a binding and
/// for `vec4` access, with the gaps and the tail zero. The fused kernels update the
/// padding too, and it stays zero because its gradient is zero.
#[derive(Clone, Debug, PartialEq)]
pub struct Arena {
    /// The buffer's label.
    pub label: String,
    /// The tensor in each slot, or none for slots that hold graph values (gradients).
    pub params: Vec<Option<ParamId>>,
    /// First element of each slot.
    pub offsets: Vec<usize>,
    /// Element count of each slot.
    pub lengths: Vec<usize>,
    /// Total element count, a multiple of 4.
    pub len: usize,
}

impl Arena {
    /// Lays out slots of `lengths` elements one after another, each at an offset aligned
    /// to the target's storage offset alignment and to 4 elements.
    pub fn pack(
        label: String,
        params: Vec<Option<ParamId>>,
        lengths: Vec<usize>,
        target: &Target,
    ) -> Self {
        let align = slot_alignment(target);
        let mut offsets = Vec::with_capacity(lengths.len());
        let mut len = 0;
        for &length in &lengths {
            offsets.push(len);
            len = (len + length.max(1)).next_multiple_of(align);
        }
        Arena { label, params, offsets, lengths, len: len.max(4) }
    }

    /// Returns an arena with the same layout and other tensors in its slots.
    pub fn with_params(&self, label: String, params: Vec<Option<ParamId>>) -> Self {
        Arena { label, params, ..self.clone() }
    }
}

/// Alignment of an arena slot in elements: the storage offset alignment, and at least one
/// `vec4`.
fn slot_alignment(target: &Target) -> usize {
    (target.storage_offset_alignment as usize / 4).max(4)
}

/// The tensors one update binds.
#[derive(Clone, Debug)]
pub struct UpdateBindings {
    /// The parameters being updated.
    pub param: Resource,
    /// The resource the gradient is read from.
    pub grad: Resource,
    /// The node the kernel is attributed to in timings: the gradient node of a
    /// per-parameter update, the step's loss for a fused one.
    pub node: NodeId,
    /// The optimizer state tensors, in the order of `train::optimizer::state_names`.
    pub state: Vec<Resource>,
    /// The per-step buffer of `[lr, beta1^t, beta2^t]`.
    pub values: ParamId,
    /// Element count of each tensor bound.
    pub count: usize,
    /// Reads the tensors as `vec4`s. Needs `count` to be a multiple of 4.
    pub vec4: bool,
}

/// Lowers one update with `optimizer`, one kernel per chunk of at most one binding. `name`
/// names the kernel.
pub fn lower_update(
    name: &str,
    optimizer: &Optimizer,
    bindings: &UpdateBindings,
    target: &Target,
) -> Result<Vec<Kernel>, CodegenError> {
    let tuning = &target.tuning;
    let lanes = if bindings.vec4 { 4 } else { 1 };
    let per_group = u64::from(tuning.workgroup_size) * u64::from(tuning.elementwise_items);
    // With texture operands Adam reads its four inputs from textures. Each of the four is
    // copied into a texture of its own, so chunks of TEXTURE_CHUNK elements keep those
    // textures at 16 MiB each.
    let textures = target.tuning.texture_operands
        && bindings.vec4
        && matches!(optimizer, Optimizer::Adam { .. });
    let mut limit = target.chunk_elements();
    if textures {
        limit = limit.min(TEXTURE_CHUNK);
    }
    let chunk = (limit / slot_alignment(target)).max(1) * slot_alignment(target);
    let parts = bindings.count.div_ceil(chunk).max(1);
    let mut kernels = Vec::with_capacity(parts);
    for part in 0..parts {
        let start = part * chunk;
        let len = chunk.min(bindings.count - start.min(bindings.count));
        let name = if parts == 1 { name.to_string() } else { format!("{name}.part{part}") };
        let items = (len / lanes) as u64;
        let grid =
            Grid::fold(&name, items.div_ceil(per_group), target.max_workgroups_per_dimension)?;
        let mut constants = vec![
            ("WG", u(tuning.workgroup_size)),
            ("ITEMS", u(tuning.elementwise_items)),
            ("COUNT", u(items)),
        ];
        let tensor = |binding: Binding| {
            let binding = binding.range(start, len);
            if bindings.vec4 {
                binding.vec4()
            } else {
                binding
            }
        };
        let rows = (len / 4).div_ceil(TEXTURE_WIDTH as usize);
        let textures = textures && rows <= target.max_texture_dimension_2d as usize;
        let grad = tensor(Binding::read("grad", bindings.grad, bindings.count));
        let mut list = vec![
            if textures { grad.texture() } else { grad },
            tensor(Binding::write("param", bindings.param, bindings.count)),
            Binding::read("values", Resource::Param(bindings.values), 3),
        ];
        let template = match *optimizer {
            Optimizer::Adam { beta1, beta2, eps, .. } => {
                constants.extend([
                    ("BETA1", f32_literal(beta1)),
                    ("BETA2", f32_literal(beta2)),
                    ("EPS", f32_literal(eps)),
                ]);
                list.push(tensor(Binding::write("exp_avg", bindings.state[0], bindings.count)));
                list.push(tensor(Binding::write("exp_avg_sq", bindings.state[1], bindings.count)));
                ADAM
            }
            Optimizer::Sgd { momentum, .. } => {
                constants.push(("MOMENTUM", f32_literal(momentum)));
                list.push(tensor(Binding::write(
                    "momentum_buffer",
                    bindings.state[0],
                    bindings.count,
                )));
                SGD
            }
        };
        // `assemble` writes each `NAME_at` from the binding of that name. With textures,
        // the updated tensors are read from the texture copies `NAME_in` instead.
        let mut body = template.to_string();
        if textures {
            for (source, name, texture) in [
                (bindings.param, "param", "param_in"),
                (bindings.state[0], "exp_avg", "exp_avg_in"),
                (bindings.state[1], "exp_avg_sq", "exp_avg_sq_in"),
            ] {
                list.push(tensor(Binding::read(texture, source, bindings.count)).texture());
                body = format!(
                    "fn {name}_at(i: u32) -> vec4<f32> {{\n    return {texture}_at(i);\n}}\n\n{body}"
                );
            }
        }
        let wgsl = assemble(&name, &body, &constants, &list, &grid);
        let kernel = Kernel {
            name,
            node: bindings.node,
            wgsl,
            bindings: list,
            grid,
            flops: 10 * len as u64,
            shape: Vec::new(),
        };
        target.check(&kernel)?;
        kernels.push(kernel);
    }
    Ok(kernels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::{validate_wgsl, Access};

    #[test]
    fn arena_slots_are_aligned() {
        let target = Target { storage_offset_alignment: 256, ..Target::default() };
        let arena = Arena::pack("a".into(), vec![None; 3], vec![1, 64, 65], &target);
        assert_eq!(arena.offsets, [0, 64, 128]);
        assert_eq!(arena.len, 256);
    }

    #[test]
    fn adam_update_validates_on_cpu_and_gpu() {
        // A CPU target reads the inputs from textures, and more than TEXTURE_CHUNK
        // elements split the update into parts.
        let adam = Optimizer::Adam { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8 };
        for (cpu, vec4, count, parts) in
            [(false, true, 64, 1), (false, false, 63, 1), (true, true, TEXTURE_CHUNK + 64, 2)]
        {
            let mut target = Target { cpu, ..Target::default() };
            target.tuning.texture_operands = cpu;
            let bindings = UpdateBindings {
                param: Resource::Arena(0),
                grad: Resource::Arena(1),
                node: NodeId::new(0),
                state: vec![Resource::Arena(2), Resource::Arena(3)],
                values: 0,
                count,
                vec4,
            };
            let kernels = lower_update("optimizer", &adam, &bindings, &target).expect("lowers");
            assert_eq!(kernels.len(), parts);
            for kernel in &kernels {
                let textures = kernel.bindings.iter().filter(|b| b.access == Access::Texture);
                assert_eq!(textures.count(), if cpu { 4 } else { 0 }, "{}", kernel.name);
                if let Err(message) = validate_wgsl(&kernel.wgsl) {
                    panic!("{} is invalid WGSL:\n{message}\n{}", kernel.name, kernel.wgsl);
                }
            }
        }
    }

    #[test]
    fn arena_slots_hold_whole_vec4s() {
        let target = Target { storage_offset_alignment: 4, ..Target::default() };
        let arena = Arena::pack("a".into(), vec![None; 3], vec![3, 0, 5], &target);
        assert_eq!(arena.offsets, [0, 4, 8]);
        assert_eq!(arena.len, 16);
    }
}
