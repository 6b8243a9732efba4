//! The limits and tuning choices a lowering is specialised for.

use super::{Access, CodegenError, Kernel};

const WORKGROUP_SUM: &str = include_str!("../../shaders/workgroup_sum.wgsl");
const SUBGROUP_SUM: &str = include_str!("../../shaders/subgroup_sum.wgsl");

/// Tiling and work-per-invocation choices. They are data, not code, so a device can get
/// the sizes that suit it without touching the lowerings.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Invocations per workgroup for the one-dimensional kernels.
    pub workgroup_size: u32,
    /// Elements each invocation of an elementwise kernel handles.
    pub elementwise_items: u32,
    /// Output channels each conv invocation accumulates, so one input load feeds that many
    /// multiply-adds.
    pub conv_out_channel_tile: u32,
    /// Output pixels (along a row) each conv invocation accumulates, so one weight load
    /// feeds that many multiply-adds.
    pub conv_pixel_tile: u32,
    /// Maximum workgroups of the first stage of a full reduction.
    pub reduce_max_groups: u32,
    /// Invocations per workgroup of the kernels that sum with one workgroup per channel
    /// or per output element (batch statistics and their gradients, sums over axes, the
    /// stages of a full reduction). When it equals the adapter's fixed subgroup size,
    /// they sum with `subgroupAdd` and no workgroup barrier.
    pub reduction_workgroup_size: u32,
    /// Read the large read-only operands (the convolutions' A and B, the fused Adam
    /// update's inputs, elementwise and batch-norm inputs) from textures that the runtime
    /// copies them into, instead of from storage buffers. Set on CPU adapters whose
    /// storage loads are much slower than texel fetches (see `runtime::probe`).
    pub texture_operands: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            workgroup_size: 256,
            elementwise_items: 4,
            conv_out_channel_tile: 8,
            conv_pixel_tile: 8,
            reduce_max_groups: 256,
            reduction_workgroup_size: 256,
            texture_operands: false,
        }
    }
}

/// What the generated code must fit: the device's limits and the tuning.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub max_workgroups_per_dimension: u32,
    pub max_storage_buffer_binding_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    /// `minStorageBufferOffsetAlignment` in bytes, for kernels that bind chunks.
    pub storage_offset_alignment: u32,
    /// `maxTextureDimension2D`: the most rows a texture operand may have.
    pub max_texture_dimension_2d: u32,
    pub subgroups: bool,
    /// The subgroup size when the adapter has a single one (`subgroup_min_size ==
    /// subgroup_max_size`); the subgroup GEMM kernels bake it in. `None` when unknown.
    pub subgroup_size: Option<u32>,
    /// Whether the adapter runs shaders on the CPU (lavapipe), which favours larger tiles.
    pub cpu: bool,
    pub tuning: Tuning,
}

impl Default for Target {
    /// The WebGPU default limits, for code generated without a device (`netc shaders`
    /// before any adapter is opened, snapshots, naga validation).
    fn default() -> Self {
        let limits = wgpu::Limits::default();
        Target {
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            max_texture_dimension_2d: limits.max_texture_dimension_2d,
            subgroups: false,
            subgroup_size: None,
            cpu: false,
            tuning: Tuning::default(),
        }
    }
}

impl Target {
    /// Returns the workgroup size of the summing kernels and the WGSL of their
    /// `workgroup_sum`: a `subgroupAdd` when the workgroup is exactly one subgroup, else a
    /// tree in workgroup memory.
    pub fn workgroup_sum(&self) -> (u32, &'static str) {
        let wg = self.tuning.reduction_workgroup_size;
        if self.subgroups && self.subgroup_size == Some(wg) {
            (wg, SUBGROUP_SUM)
        } else {
            (wg, WORKGROUP_SUM)
        }
    }

    /// The largest number of elements a chunked kernel binds at once: the binding limit,
    /// rounded down so that every chunk starts on the offset alignment.
    pub fn chunk_elements(&self) -> usize {
        let align = u64::from(self.storage_offset_alignment.max(4)) / 4;
        let elements = self.max_storage_buffer_binding_size / 4;
        ((elements / align) * align).max(align) as usize
    }

    pub fn from_limits(limits: &wgpu::Limits, features: wgpu::Features) -> Self {
        Target {
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            max_texture_dimension_2d: limits.max_texture_dimension_2d,
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_size: None,
            cpu: false,
            tuning: Tuning::default(),
        }
    }

    /// Rejects a kernel that binds more than the device allows.
    pub fn check(&self, kernel: &Kernel) -> Result<(), CodegenError> {
        for binding in kernel.bindings.iter().filter(|b| b.access == Access::Texture) {
            if binding.texture_rows() > u64::from(self.max_texture_dimension_2d) {
                return Err(CodegenError::BindingTooLarge {
                    kernel: kernel.name.clone(),
                    binding: binding.name,
                    bytes: binding.bytes(),
                    limit: u64::from(self.max_texture_dimension_2d)
                        * u64::from(super::gemm::TEXTURE_WIDTH)
                        * if binding.vec4 { 16 } else { 4 },
                });
            }
        }
        let storage = kernel
            .bindings
            .iter()
            .filter(|b| !matches!(b.access, Access::Uniform | Access::Texture));
        let count = storage.clone().count() as u32;
        if count > self.max_storage_buffers_per_shader_stage {
            return Err(CodegenError::TooManyStorageBuffers {
                kernel: kernel.name.clone(),
                count,
                limit: self.max_storage_buffers_per_shader_stage,
            });
        }
        for binding in storage {
            if binding.bytes() > self.max_storage_buffer_binding_size {
                return Err(CodegenError::BindingTooLarge {
                    kernel: kernel.name.clone(),
                    binding: binding.name,
                    bytes: binding.bytes(),
                    limit: self.max_storage_buffer_binding_size,
                });
            }
        }
        Ok(())
    }
}
