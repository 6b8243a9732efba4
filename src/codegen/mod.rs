//! WGSL code generation: one IR node (with concrete shapes) to one or more specialised
//! compute kernels.
//!
//! Needs: a verified graph, so every node has a concrete shape and the operands its op
//! takes. Guarantees: each [`Kernel`] carries its WGSL with its sizes baked in as
//! constants, the buffers it binds in binding order, and its dispatch grid already folded
//! to the target's per-dimension limit. A convolution is the exception to the constants:
//! it reads all but its window, stride and padding from its own uniform block
//! ([`Kernel::shape`]). [`lower_graph`] rejects a kernel whose
//! binding is larger than `maxStorageBufferBindingSize` or that binds more storage buffers
//! than `maxStorageBuffersPerShaderStage`, naming the kernel, the size and the limit.
//!
//! Adding an op kind: write its template under `shaders/`, a `lower_*` function in the
//! file of its family here (or a new file), and an arm in [`lower_node`]. The grid
//! folding lives in [`grid`] and the binding header in [`wgsl`], so a lowering only
//! chooses its constants, bindings and element count. A template that reads a binding
//! `x` only through `x_at(i)` gets it as a texture on a CPU adapter ([`Access::Texture`]).

pub mod conv;
mod dense;
pub mod dump;
mod elementwise;
pub mod gemm;
mod grad;
pub mod grid;
mod layout;
mod norm;
pub mod optimizer;
mod reduce;
mod target;
pub mod wgsl;

pub use elementwise::dropout_threshold;
pub use grid::Grid;
pub use target::{Target, Tuning};

use crate::ir::{Graph, NodeId, Op, ParamId};
use crate::passes::fusion::{FusedGroup, FusionPlan};
use crate::passes::views::ViewPlan;
use std::collections::HashSet;

/// What a kernel binding refers to. The runtime maps each to a device buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// The value a node produces (an intermediate, a graph input, a constant).
    Node(NodeId),
    /// A parameter or buffer in the parameter store.
    Param(ParamId),
    /// Scratch storage that belongs to a node and lives as long as the program, such as
    /// batch statistics (index 0) that a backward kernel reads again. Its size in `f32`s is
    /// the binding's `elements`.
    Aux { node: NodeId, index: u32 },
    /// A packed buffer of the parameter store that contains several tensors at aligned
    /// offsets, indexed like the arena list the program was compiled with. The fused
    /// optimizer kernels bind a whole arena of parameters, gradients or moments.
    Arena(u32),
    /// The per-run uniform block ([`wgsl::RUN_VALUES_WGSL`]).
    RunValues,
    /// The kernel's own uniform block of sizes, [`Kernel::shape`].
    Shape,
}

/// How a kernel accesses a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
    Uniform,
    /// Read as a 2D texture of [`gemm::TEXTURE_WIDTH`] texels a row (`Rgba32Float` with
    /// [`Binding::vec4`], else `R32Float`), which the runtime copies the bound range into
    /// before the kernel runs.
    Texture,
}

/// One binding of a kernel, in binding-index order.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// The WGSL variable name the kernel body uses.
    pub name: &'static str,
    pub resource: Resource,
    pub access: Access,
    /// Number of `f32` elements bound (0 for the uniform block).
    pub elements: u64,
    /// First bound element, for a kernel that covers one chunk of a buffer larger than a
    /// binding may be.
    pub offset: u64,
    /// Declares the binding as `array<vec4<f32>>` rather than `array<f32>`. The offset and
    /// element count must then be multiples of 4.
    pub vec4: bool,
}

impl Binding {
    pub fn read(name: &'static str, resource: Resource, elements: usize) -> Self {
        Binding {
            name,
            resource,
            access: Access::Read,
            elements: elements.max(1) as u64,
            offset: 0,
            vec4: false,
        }
    }

    pub fn write(name: &'static str, resource: Resource, elements: usize) -> Self {
        Binding {
            name,
            resource,
            access: Access::ReadWrite,
            elements: elements.max(1) as u64,
            offset: 0,
            vec4: false,
        }
    }

    pub fn run_values() -> Self {
        Binding {
            name: "run",
            resource: Resource::RunValues,
            access: Access::Uniform,
            elements: 0,
            offset: 0,
            vec4: false,
        }
    }

    /// Narrows the binding to `len` elements from element `start`.
    pub fn range(mut self, start: usize, len: usize) -> Self {
        self.offset = start as u64;
        self.elements = len.max(1) as u64;
        self
    }

    /// Binds the kernel's uniform block of `words` sizes, [`Kernel::shape`].
    pub fn shape(name: &'static str, words: usize) -> Self {
        Binding {
            name,
            resource: Resource::Shape,
            access: Access::Uniform,
            elements: words as u64,
            offset: 0,
            vec4: false,
        }
    }

    /// Declares the binding as an array of `vec4<f32>`.
    pub fn vec4(mut self) -> Self {
        self.vec4 = true;
        self
    }

    /// Binds a read-only range as a texture instead of a storage buffer ([`Access::Texture`]).
    pub fn texture(mut self) -> Self {
        debug_assert_eq!(self.access, Access::Read, "only read bindings become textures");
        self.access = Access::Texture;
        self
    }

    /// Returns the rows of the texture a [`Access::Texture`] binding is copied into.
    pub fn texture_rows(&self) -> u64 {
        let lanes = if self.vec4 { 4 } else { 1 };
        (self.elements / lanes).div_ceil(u64::from(gemm::TEXTURE_WIDTH))
    }

    /// Size of the binding in bytes.
    pub fn bytes(&self) -> u64 {
        match (self.access, self.resource) {
            (Access::Uniform, Resource::Shape) => (self.elements * 4).next_multiple_of(16),
            (Access::Uniform, _) => wgsl::RUN_VALUES_BYTES,
            _ => self.elements * 4,
        }
    }
}

/// A specialised compute kernel, ready for pipeline creation.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Unique within a program: the node's dotted name plus the kernel's role
    /// (`generator.e3.conv.conv2d`, `generator.e3.norm.batch_norm_stats`).
    pub name: String,
    /// The node the kernel implements, for the memory plan and per-kernel timings.
    pub node: NodeId,
    pub wgsl: String,
    pub bindings: Vec<Binding>,
    pub grid: Grid,
    /// Floating-point operations per run, an estimate for the benchmark table.
    pub flops: u64,
    /// The contents of the kernel's [`Resource::Shape`] uniform block, if it binds one.
    pub shape: Vec<u32>,
}

/// Batch-norm and dropout behaviour of a lowered program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics, active dropout, and a momentum update of the running statistics.
    Train,
    /// Running statistics and no dropout.
    Eval,
    /// Batch statistics and active dropout as in [`Mode::Train`], but the running statistics
    /// are never written, so a forward pass leaves the parameters unchanged. pix2pix runs its
    /// generator this way at test time (Isola et al. 2017, "Image-to-Image Translation with
    /// Conditional Adversarial Networks", section 3.3).
    Infer,
}

impl Mode {
    /// Returns true when batch norm normalizes with the statistics of the current batch.
    pub fn uses_batch_statistics(self) -> bool {
        matches!(self, Mode::Train | Mode::Infer)
    }

    /// Returns true when dropout with `p > 0` zeroes elements instead of passing its input on.
    pub fn applies_dropout(self) -> bool {
        matches!(self, Mode::Train | Mode::Infer)
    }

    /// Returns true when batch norm writes its running statistics to the parameter store.
    pub fn updates_running_statistics(self) -> bool {
        self == Mode::Train
    }
}

/// A failure to lower a graph within the target's limits.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CodegenError {
    #[error(
        "kernel {kernel} binds {binding} of {bytes} bytes, over this adapter's \
         maxStorageBufferBindingSize of {limit} bytes"
    )]
    #[diagnostic(help(
        "reduce the batch size or the image size, or use an adapter with larger limits"
    ))]
    BindingTooLarge { kernel: String, binding: &'static str, bytes: u64, limit: u64 },
    #[error(
        "kernel {kernel} binds {count} storage buffers, over this adapter's \
         maxStorageBuffersPerShaderStage of {limit}"
    )]
    TooManyStorageBuffers { kernel: String, count: u32, limit: u32 },
    #[error("kernel {kernel} needs {workgroups} workgroups, more than a folded 3D grid holds ({limit}^3)")]
    GridTooLarge { kernel: String, workgroups: u64, limit: u32 },
    #[error("node {node} ({op}) has no WGSL lowering")]
    Unsupported { node: String, op: &'static str },
    /// A compiler bug: the fusion pass fused work into a kernel that cannot carry it.
    #[error("kernel {kernel} cannot carry its fused work: {reason}")]
    FusionRejected { kernel: String, reason: String },
}

/// Follows ops that need no kernel (`flatten`, `stop_gradient`, dropout in evaluation
/// mode or with `p = 0`) back to the node whose buffer contains the value.
pub fn storage_root(graph: &Graph, mut id: NodeId, mode: Mode) -> NodeId {
    loop {
        let passes_through = match graph.node(id).op {
            Op::Flatten | Op::StopGradient | Op::Reshape { .. } => true,
            Op::Dropout { p } => !mode.applies_dropout() || p == 0.0,
            _ => false,
        };
        if !passes_through {
            return id;
        }
        id = graph.operands(id)[0];
    }
}

/// The resource a node's value is read from.
pub fn value_resource(graph: &Graph, id: NodeId, mode: Mode) -> Resource {
    let root = storage_root(graph, id, mode);
    match graph.node(root).op {
        Op::Param { id } => Resource::Param(id),
        _ => Resource::Node(root),
    }
}

/// Everything a lowering function reads: the graph, the node, the target, the mode and
/// the graph's fused groups.
pub struct LowerContext<'a> {
    pub graph: &'a Graph,
    pub node: NodeId,
    pub target: &'a Target,
    pub mode: Mode,
    pub fusion: &'a FusionPlan,
}

impl LowerContext<'_> {
    pub fn operands(&self) -> Vec<NodeId> {
        self.graph.operands(self.node)
    }

    /// Shape dims of operand `slot`.
    pub fn operand_dims(&self, slot: usize) -> Vec<usize> {
        self.graph.shape(self.operands()[slot]).0.clone()
    }

    pub fn operand_count(&self) -> usize {
        self.operands().len()
    }

    /// A read binding of operand `slot`. An operand that is an activation fused into this
    /// kernel's loads ([`LowerContext::fused_activation`]) is read from its input.
    pub fn read(&self, name: &'static str, slot: usize) -> Binding {
        let mut operand = self.operands()[slot];
        if let Some((input, _)) = self.fusion.fused_activation(operand) {
            operand = input;
        }
        let elements = self.graph.shape(operand).numel();
        Binding::read(name, value_resource(self.graph, operand, self.mode), elements)
    }

    /// Returns the slope of the leaky ReLU (0 for ReLU) fused into this kernel's loads of
    /// operand `slot`, whose value no kernel stores.
    pub fn fused_activation(&self, slot: usize) -> Option<f32> {
        let operand = *self.operands().get(slot)?;
        self.fusion.fused_activation(operand).map(|(_, slope)| slope)
    }

    /// The binding of this node's own output, or of the node that stores it when a
    /// consumer's elementwise work is fused into this kernel's stores.
    pub fn output(&self, name: &'static str) -> Binding {
        let node = self.fusion.stored_in(self.node).unwrap_or(self.node);
        let elements = self.graph.shape(node).numel();
        Binding::write(name, Resource::Node(node), elements)
    }

    pub fn dims(&self) -> &[usize] {
        self.graph.shape(self.node).dims()
    }

    pub fn numel(&self) -> usize {
        self.graph.shape(self.node).numel()
    }

    /// The kernel name for `role`: the node's name, then the role unless the name already
    /// ends with it (`e1.relu`, not `e1.relu.relu`).
    pub fn kernel_name(&self, role: &str) -> String {
        let name = &self.graph.node(self.node).name;
        if name.rsplit('.').next() == Some(role) {
            name.clone()
        } else {
            format!("{name}.{role}")
        }
    }

    /// Builds a kernel from a template body, checking it against the target's limits.
    pub fn kernel(
        &self,
        role: &str,
        template: &str,
        constants: &[(&str, String)],
        bindings: Vec<Binding>,
        grid: Grid,
        flops: u64,
    ) -> Kernel {
        let name = self.kernel_name(role);
        let bindings: Vec<Binding> =
            bindings.into_iter().map(|b| self.texture_if_faster(b, template)).collect();
        let wgsl = wgsl::assemble(&name, template, constants, &bindings, &grid);
        Kernel { name, node: self.node, wgsl, bindings, grid, flops, shape: Vec::new() }
    }

    /// Turns a read binding into a texture when the target has texture operands (CPU
    /// adapters whose storage loads are slow), the template reads it only through
    /// `NAME_at` and the range fits in a texture.
    fn texture_if_faster(&self, binding: Binding, template: &str) -> Binding {
        let name = binding.name;
        let only_helper = wgsl::mentions(template, &format!("{name}_at("))
            && !wgsl::mentions(template, &format!("{name}["));
        let fits = binding.texture_rows() <= u64::from(self.target.max_texture_dimension_2d);
        if self.target.tuning.texture_operands
            && binding.access == Access::Read
            && only_helper
            && fits
        {
            binding.texture()
        } else {
            binding
        }
    }
}

/// Lowers one node to its kernels; ops that need none (leaves, `flatten`, ...) give none.
pub fn lower_node(ctx: &LowerContext<'_>) -> Result<Vec<Kernel>, CodegenError> {
    if let Some((group, lead)) = ctx.fusion.group(ctx.node) {
        return if lead { lower_group(ctx, group) } else { Ok(Vec::new()) };
    }
    // A fused activation, a GEMM producer with an epilogue and the nodes the epilogue
    // skips have no kernel. The epilogue's last node lowers the producer in their place.
    if ctx.fusion.unstored(ctx.node) {
        return Ok(Vec::new());
    }
    if matches!(node_op(ctx), Op::Slice { .. }) && ctx.fusion.views.view(ctx.node).is_some() {
        return Ok(Vec::new());
    }
    if let Some(producer) = ctx.fusion.epilogue_producer(ctx.node) {
        return lower_op(&LowerContext { node: producer, ..*ctx });
    }
    lower_op(ctx)
}

fn node_op<'a>(ctx: &LowerContext<'a>) -> &'a Op {
    &ctx.graph.node(ctx.node).op
}

/// Lowers the node's own op, the match over [`Op`].
fn lower_op(ctx: &LowerContext<'_>) -> Result<Vec<Kernel>, CodegenError> {
    let node = ctx.graph.node(ctx.node);
    let kernels = match &node.op {
        Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } => Vec::new(),
        Op::Flatten | Op::StopGradient => Vec::new(),
        Op::Dropout { p } if !ctx.mode.applies_dropout() || *p == 0.0 => Vec::new(),
        Op::Dropout { p } => elementwise::lower_dropout(ctx, *p)?,
        Op::Relu | Op::LeakyRelu { .. } | Op::Tanh | Op::Sigmoid | Op::Neg => {
            elementwise::lower_unary(ctx, &node.op)?
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => elementwise::lower_binary(ctx, &node.op)?,
        Op::Conv2d { stride, padding } => vec![conv::lower_conv2d(ctx, *stride, *padding)?],
        Op::ConvTranspose2d { stride, padding, .. } => {
            vec![conv::lower_conv_transpose2d(ctx, *stride, *padding)?]
        }
        Op::BatchNorm { eps, momentum, running_mean, running_var } => {
            norm::lower_batch_norm(ctx, *eps, *momentum, *running_mean, *running_var)?
        }
        Op::Concat { axis } => layout::lower_concat(ctx, *axis)?,
        Op::Linear => vec![dense::lower_linear(ctx)?],
        Op::MaxPool2d { kernel, stride } => vec![dense::lower_max_pool2d(ctx, *kernel, *stride)?],
        Op::Sum { axes } => reduce::lower_sum(ctx, axes, false)?,
        Op::Mean { axes } => reduce::lower_sum(ctx, axes, true)?,
        Op::BceWithLogits | Op::L1Loss | Op::MseLoss | Op::CrossEntropy => {
            reduce::lower_loss(ctx, &node.op)?
        }
        Op::Reshape { .. } => Vec::new(),
        Op::MatMul { transpose_a, transpose_b } => {
            vec![grad::lower_matmul(ctx, *transpose_a, *transpose_b)?]
        }
        Op::Broadcast { axes, .. } => grad::lower_broadcast(ctx, axes)?,
        Op::Slice { axis, start, len } => grad::lower_slice(ctx, *axis, *start, *len)?,
        Op::Conv2dWeightGrad { stride, padding, .. } => {
            vec![grad::lower_conv2d_weight_grad(ctx, *stride, *padding)?]
        }
        Op::BatchNormScaleGrad { eps } => vec![grad::lower_batch_norm_scale_grad(ctx, *eps)?],
        Op::BatchNormInputGrad { eps } => vec![grad::lower_batch_norm_input_grad(ctx, *eps)?],
        Op::LeakyReluGrad { slope } => grad::lower_leaky_relu_grad(ctx, *slope)?,
        Op::DropoutGrad { p, forward } => grad::lower_dropout_grad(ctx, *p, *forward)?,
        Op::MaxPool2dGrad { kernel, stride } => {
            vec![grad::lower_max_pool2d_grad(ctx, *kernel, *stride)?]
        }
        Op::BceWithLogitsGrad | Op::L1LossGrad => grad::lower_loss_grad(ctx, &node.op)?,
        Op::CrossEntropyGrad => vec![grad::lower_cross_entropy_grad(ctx)?],
    };
    for kernel in &kernels {
        ctx.target.check(kernel)?;
    }
    Ok(kernels)
}

/// Lowers the kernel of a fused group at its lead node.
fn lower_group(ctx: &LowerContext<'_>, group: FusedGroup) -> Result<Vec<Kernel>, CodegenError> {
    let kernel = match group {
        FusedGroup::BatchNormBackward { offset_grad, scale_grad, input_grad } => {
            let Op::BatchNormInputGrad { eps } = ctx.graph.node(input_grad).op else {
                unreachable!("the fusion pass groups batch-norm input gradients only")
            };
            let at_input_grad = LowerContext { node: input_grad, ..*ctx };
            grad::lower_batch_norm_backward(&at_input_grad, eps, scale_grad, offset_grad)?
        }
    };
    ctx.target.check(&kernel)?;
    Ok(vec![kernel])
}

/// Lowers every node of `graph` in its topological order (which runs the phases in
/// order) to the program's kernel list, with the fused work and views of [`lower_fused`].
/// The graph's named outputs keep their buffers; another value that the caller reads back
/// must be listed with [`lower_graph_keeping`].
pub fn lower_graph(
    graph: &Graph,
    target: &Target,
    mode: Mode,
) -> Result<Vec<Kernel>, CodegenError> {
    lower_graph_keeping(graph, target, mode, &HashSet::new())
}

/// Lowers `graph` as [`lower_graph`] does, keeping a buffer for each node of `keep` too.
pub fn lower_graph_keeping(
    graph: &Graph,
    target: &Target,
    mode: Mode,
    keep: &HashSet<NodeId>,
) -> Result<Vec<Kernel>, CodegenError> {
    let order = graph.topo_order();
    let mut keep = keep.clone();
    keep.extend(graph.outputs.iter().map(|&(_, node)| node));
    lower_fused(graph, &order, target, mode, &keep, &HashSet::new(), |fusion| {
        let mut kernels = Vec::new();
        for &node in &order {
            let ctx = LowerContext { graph, node, target, mode, fusion };
            kernels.extend(lower_node(&ctx)?);
        }
        Ok(kernels)
    })
}

/// Plans the fused work and the views of `graph`, lowered in `order`, and lowers it with
/// `lower`. A node of `keep` is neither fused away nor a view, and a node of `no_views`
/// is not a view. When a view would make a kernel bind one buffer both read-only and
/// read-write, the plan drops it and lowers again, so the returned kernels bind each
/// view's range of its base buffer and no such pair.
pub fn lower_fused<E>(
    graph: &Graph,
    order: &[NodeId],
    target: &Target,
    mode: Mode,
    keep: &HashSet<NodeId>,
    no_views: &HashSet<NodeId>,
    lower: impl Fn(&FusionPlan) -> Result<Vec<Kernel>, E>,
) -> Result<Vec<Kernel>, E> {
    let alignment = u64::from(target.storage_offset_alignment) / 4;
    let mut excluded: HashSet<NodeId> = keep.union(no_views).copied().collect();
    loop {
        let mut fusion = FusionPlan::new(graph, order, keep);
        fusion.views = ViewPlan::new(graph, order, mode, &fusion, alignment, &excluded);
        let mut kernels = lower(&fusion)?;
        let conflicts = fusion.views.conflicts(&kernels);
        if conflicts.is_empty() {
            fusion.views.rebind(&mut kernels);
            return Ok(kernels);
        }
        tracing::debug!(views = conflicts.len(), "dropped views that alias a kernel's operands");
        excluded.extend(conflicts);
    }
}

/// Parses and validates `source` with naga, returning naga's message on failure.
pub fn validate_wgsl(source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
    validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    validator.validate(&module).map_err(|e| e.emit_to_string(source))?;
    Ok(())
}
