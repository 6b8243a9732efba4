//! Views: values stored inside another value's buffer, so that a concat or a slice along
//! a contiguous range needs no copy kernel.
//!
//! Needs: the fusion plan of the same graph (a fused-away value has no buffer to place).
//! Guarantees: a view is a contiguous range of its base's buffer, at an element offset
//! that is a multiple of the target's storage offset alignment, and every kernel binding
//! of the view is moved onto that range by [`ViewPlan::rebind`]. Two kinds:
//!
//! - A concat whose operands each fill one contiguous range of its output, because every
//!   axis before the concat axis has size 1 (a channel concat at batch 1). Each operand
//!   that a kernel computes is written straight into its range of the concat.
//! - A slice of such a range is read straight from its operand.
//!
//! Values that the caller excludes (gradients that live in an optimizer arena, values it
//! reads back) are not made views, and the runtime rejects a requested output that no
//! kernel writes. A view that would make a kernel bind one buffer both read-only and
//! read-write is dropped ([`ViewPlan::conflicts`]).

use super::fusion::FusionPlan;
use crate::codegen::{value_resource, Access, Kernel, Mode, Resource};
use crate::ir::{Graph, NodeId, Op};
use std::collections::{HashMap, HashSet};

/// The views of one graph: each view's base node and element offset in it.
#[derive(Clone, Debug, Default)]
pub struct ViewPlan {
    views: HashMap<NodeId, (NodeId, u64)>,
}

impl ViewPlan {
    /// Finds the views of `graph` in lowering order. `alignment` is the storage offset
    /// alignment in elements; `exclude` lists nodes that must keep a buffer of their own.
    pub fn new(
        graph: &Graph,
        order: &[NodeId],
        mode: Mode,
        fusion: &FusionPlan,
        alignment: u64,
        exclude: &HashSet<NodeId>,
    ) -> Self {
        let mut plan = ViewPlan::default();
        let alignment = alignment.max(4);
        // A value with a buffer of its own, written by its own kernels: not a leaf, not
        // a pass-through, not fused away, and not already a view or excluded.
        let stored = |plan: &ViewPlan, node: NodeId| {
            let leaf = matches!(
                graph.node(node).op,
                Op::Input { .. } | Op::Param { .. } | Op::Constant { .. }
            );
            !leaf
                && value_resource(graph, node, mode) == Resource::Node(node)
                && !fusion.unstored(node)
                && !plan.views.contains_key(&node)
                && !exclude.contains(&node)
        };
        for &node in order {
            match graph.node(node).op {
                Op::Concat { axis } if stored(&plan, node) => {
                    let Some(inner) = contiguous_inner(graph.shape(node).dims(), axis) else {
                        continue;
                    };
                    let operands = graph.operands(node);
                    let mut offset = 0u64;
                    for &operand in &operands {
                        let once = operands.iter().filter(|&&o| o == operand).count() == 1;
                        let aligned = offset % alignment == 0;
                        if once && aligned && operand != node && stored(&plan, operand) {
                            plan.views.insert(operand, (node, offset));
                        }
                        offset += (graph.shape(operand).dims()[axis] * inner) as u64;
                    }
                }
                Op::Slice { axis, start, .. } if stored(&plan, node) => {
                    let source = graph.operands(node)[0];
                    let Some(inner) = contiguous_inner(graph.shape(source).dims(), axis) else {
                        continue;
                    };
                    let offset = (start * inner) as u64;
                    let has_buffer = stored(&plan, source) || plan.views.contains_key(&source);
                    if offset % alignment == 0 && has_buffer && !exclude.contains(&source) {
                        plan.views.insert(node, (source, offset));
                    }
                }
                _ => {}
            }
        }
        plan
    }

    /// Returns the base node and element offset of `node` when it is a view, following
    /// views of views to the node that owns the buffer.
    pub fn view(&self, node: NodeId) -> Option<(NodeId, u64)> {
        let (mut base, mut offset) = *self.views.get(&node)?;
        while let Some(&(next, more)) = self.views.get(&base) {
            base = next;
            offset += more;
        }
        Some((base, offset))
    }

    /// Returns whether `node`'s value is stored in `base`'s buffer by its producer.
    pub fn placed_in(&self, node: NodeId, base: NodeId) -> bool {
        self.views.get(&node).is_some_and(|&(b, _)| b == base)
    }

    /// Returns the views to drop so that no kernel binds one buffer both read-only and
    /// read-write, which WebGPU forbids even for disjoint ranges. Such a kernel reads one
    /// operand of a concat and writes another one, as in `concat(a, conv(a))`. The views
    /// it writes are dropped, or, when it writes the base itself, the views it reads.
    pub fn conflicts(&self, kernels: &[Kernel]) -> HashSet<NodeId> {
        let mut drop = HashSet::new();
        for kernel in kernels {
            // Per base buffer: the nodes bound read-only and the nodes bound read-write.
            let mut bases: HashMap<NodeId, (Vec<NodeId>, Vec<NodeId>)> = HashMap::new();
            for binding in &kernel.bindings {
                let Resource::Node(node) = binding.resource else { continue };
                let base = self.view(node).map_or(node, |(base, _)| base);
                let (reads, writes) = bases.entry(base).or_default();
                match binding.access {
                    Access::Read => reads.push(node),
                    Access::ReadWrite => writes.push(node),
                    // A texture operand is copied before the kernel's pass starts.
                    Access::Texture | Access::Uniform => {}
                }
            }
            for (reads, writes) in bases.values() {
                if reads.is_empty() || writes.is_empty() {
                    continue;
                }
                let written: Vec<NodeId> =
                    writes.iter().copied().filter(|n| self.views.contains_key(n)).collect();
                let chosen = if written.is_empty() { reads } else { &written };
                drop.extend(chosen.iter().copied().filter(|n| self.views.contains_key(n)));
            }
        }
        drop
    }

    /// Moves every binding of a view onto its range of the base's buffer.
    pub fn rebind(&self, kernels: &mut [Kernel]) {
        for binding in kernels.iter_mut().flat_map(|k| &mut k.bindings) {
            if let Resource::Node(node) = binding.resource {
                if let Some((base, offset)) = self.view(node) {
                    binding.resource = Resource::Node(base);
                    binding.offset += offset;
                }
            }
        }
    }
}

/// Returns the elements per index of `axis` when every axis before it has size 1, so each
/// index range along `axis` is one contiguous range.
fn contiguous_inner(dims: &[usize], axis: usize) -> Option<usize> {
    if axis >= dims.len() || dims[..axis].iter().any(|&d| d != 1) {
        return None;
    }
    Some(dims[axis + 1..].iter().product())
}
