//! The memory plan: which device buffer stores each intermediate value.
//!
//! Needs: the program's kernels in execution order, and the values that must keep a
//! buffer of their own (graph inputs, constants, requested outputs). Guarantees: a buffer
//! is handed to a new value only after the last kernel that reads or writes its previous
//! value, and never to two values that a single kernel binds. The plan is greedy (best
//! fit among free buffers in execution order), not optimal.

use crate::codegen::{Kernel, Resource};
use crate::ir::NodeId;
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPlan {
    /// The buffer index of each planned value.
    pub assignment: BTreeMap<NodeId, usize>,
    /// The size in bytes of each planned buffer.
    pub buffers: Vec<u64>,
    /// Bytes all planned buffers take, the peak of intermediate memory.
    pub peak_bytes: u64,
    /// Bytes the planned values would take with a buffer each.
    pub unshared_bytes: u64,
}

/// Plans a buffer for every `Resource::Node` the kernels bind, except the `pinned` ones.
/// `bytes` gives each value's size.
pub fn plan(
    kernels: &[Kernel],
    pinned: &HashSet<NodeId>,
    bytes: impl Fn(NodeId) -> u64,
) -> MemoryPlan {
    // The first and last kernel that binds each value.
    let mut lifetimes: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
    for (index, kernel) in kernels.iter().enumerate() {
        for binding in &kernel.bindings {
            if let Resource::Node(node) = binding.resource {
                if !pinned.contains(&node) {
                    let entry = lifetimes.entry(node).or_insert((index, index));
                    entry.1 = index;
                }
            }
        }
    }
    let mut starts: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
    let mut ends: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
    for (&node, &(first, last)) in &lifetimes {
        starts.entry(first).or_default().push(node);
        ends.entry(last).or_default().push(node);
    }

    let mut result = MemoryPlan::default();
    let mut free: Vec<usize> = Vec::new();
    for index in 0..kernels.len() {
        for &node in starts.get(&index).into_iter().flatten() {
            let need = bytes(node).max(4);
            result.unshared_bytes += need;
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, &b)| result.buffers[b] >= need)
                .min_by_key(|(_, &b)| result.buffers[b]);
            let buffer = match best {
                Some((slot, &b)) => {
                    free.swap_remove(slot);
                    b
                }
                None => {
                    result.buffers.push(need);
                    result.buffers.len() - 1
                }
            };
            result.assignment.insert(node, buffer);
        }
        for &node in ends.get(&index).into_iter().flatten() {
            free.push(result.assignment[&node]);
        }
    }
    result.peak_bytes = result.buffers.iter().sum();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::{Binding, Grid, Kernel};
    use petgraph::graph::NodeIndex;

    fn kernel(reads: &[u32], write: u32) -> Kernel {
        let mut bindings: Vec<Binding> = reads
            .iter()
            .map(|&r| Binding::read("x", Resource::Node(NodeIndex::new(r as usize)), 1))
            .collect();
        bindings.push(Binding::write("y", Resource::Node(NodeIndex::new(write as usize)), 1));
        Kernel {
            name: format!("k{write}"),
            node: NodeIndex::new(write as usize),
            wgsl: String::new(),
            bindings,
            grid: Grid { workgroups: [1, 1, 1], groups: 1 },
            flops: 0,
            shape: Vec::new(),
        }
    }

    #[test]
    fn chain_reuses_buffers_after_last_reader() {
        // 0 -> 1 -> 2 -> 3 -> 4, with 0 pinned as the input.
        let kernels: Vec<Kernel> = (1..5).map(|i| kernel(&[i - 1], i)).collect();
        let pinned = HashSet::from([NodeIndex::new(0)]);
        let plan = plan(&kernels, &pinned, |_| 100);
        assert_eq!(plan.buffers.len(), 2, "{plan:?}");
        assert_eq!(plan.peak_bytes, 200);
        assert_eq!(plan.unshared_bytes, 400);
    }

    #[test]
    fn skip_connection_keeps_value_alive() {
        // 1 = f(0), 2 = f(1), 3 = f(2), 4 = g(3, 1): value 1 lives until kernel 3.
        let kernels = vec![kernel(&[0], 1), kernel(&[1], 2), kernel(&[2], 3), kernel(&[3, 1], 4)];
        let pinned = HashSet::from([NodeIndex::new(0)]);
        let plan = plan(&kernels, &pinned, |_| 8);
        let buffer = |n: usize| plan.assignment[&NodeIndex::new(n)];
        assert_ne!(buffer(1), buffer(2));
        assert_ne!(buffer(1), buffer(3));
        assert_ne!(buffer(1), buffer(4));
        assert_ne!(buffer(3), buffer(4));
        assert_eq!(plan.buffers.len(), 3);
    }

    #[test]
    fn larger_value_gets_its_own_buffer() {
        let kernels = vec![kernel(&[0], 1), kernel(&[1], 2), kernel(&[2], 3)];
        let pinned = HashSet::from([NodeIndex::new(0)]);
        let plan = plan(&kernels, &pinned, |n| if n.index() == 3 { 64 } else { 16 });
        assert_eq!(plan.buffers, vec![16, 16, 64]);
    }
}
