//! The graph container: nodes with shapes and stable names, edges with operand slots.

use super::{Op, ParamId, Shape, ShapeError, Span};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use serde::{Deserialize, Serialize};

pub type NodeId = NodeIndex<u32>;

/// One op instance with its output shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub shape: Shape,
    /// Stable dotted name derived from the source (`generator.e3.conv`), unique in a graph.
    pub name: String,
    /// The training step that runs this node: 0 for the forward values shared by all
    /// steps, `k` for step `k` (1-based) of the `train` section. Steps run in order, and a
    /// `Param` node of step `k` reads the parameter after the updates of steps before `k`.
    pub phase: u32,
    /// Where in the `.net` source the node came from, for diagnostics.
    pub span: Option<Span>,
}

/// An edge from an operand to its consumer, tagged with the operand slot.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Operand {
    pub slot: u32,
}

/// A directed acyclic graph of ops. Edges point from an operand to its consumer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Graph {
    pub inner: StableDiGraph<Node, Operand, u32>,
    /// Named results of the graph (network outputs, loss terms).
    pub outputs: Vec<(String, NodeId)>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a leaf node (`Input`, `Param`, `Constant`) with its declared shape.
    pub fn add_leaf(
        &mut self,
        op: Op,
        shape: Shape,
        name: impl Into<String>,
        span: Option<Span>,
    ) -> NodeId {
        self.inner.add_node(Node { op, shape, name: name.into(), phase: 0, span })
    }

    /// Adds an op node, inferring its shape from the operands. On a shape error nothing is
    /// added.
    pub fn add_op(
        &mut self,
        op: Op,
        operands: &[NodeId],
        name: impl Into<String>,
        span: Option<Span>,
    ) -> Result<NodeId, ShapeError> {
        let shapes: Vec<&Shape> = operands.iter().map(|&n| &self.inner[n].shape).collect();
        let shape = match op.infer_shape(&shapes) {
            Some(result) => result?,
            None => {
                return Err(ShapeError {
                    rule: format!("{} is a leaf and takes no operands", op.name()),
                })
            }
        };
        let phase = operands.iter().map(|&n| self.inner[n].phase).max().unwrap_or(0);
        let id = self.inner.add_node(Node { op, shape, name: name.into(), phase, span });
        for (slot, &src) in operands.iter().enumerate() {
            self.inner.add_edge(src, id, Operand { slot: slot as u32 });
        }
        Ok(id)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.inner[id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.inner[id]
    }

    pub fn shape(&self, id: NodeId) -> &Shape {
        &self.inner[id].shape
    }

    /// The operands of `id`, in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> = self
            .inner
            .edges_directed(id, Direction::Incoming)
            .map(|e| (e.weight().slot, e.source()))
            .collect();
        edges.sort_by_key(|&(slot, _)| slot);
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The consumers of `id` with the slot each reads it through. A consumer that reads
    /// `id` through two slots appears twice.
    pub fn users(&self, id: NodeId) -> Vec<(NodeId, u32)> {
        let mut users: Vec<(NodeId, u32)> = self
            .inner
            .edges_directed(id, Direction::Outgoing)
            .map(|e| (e.target(), e.weight().slot))
            .collect();
        users.sort();
        users
    }

    /// All node ids in a deterministic topological order: by phase, then by dependencies,
    /// ties broken by insertion order.
    pub fn topo_order(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.inner.node_indices().collect();
        ids.sort_by_key(|&n| (self.inner[n].phase, n.index()));
        let mut placed = vec![false; self.inner.node_bound()];
        let mut order = Vec::with_capacity(ids.len());
        // Depth-first placement keeps the phase order wherever dependencies allow it.
        for &root in &ids {
            let mut stack = vec![(root, false)];
            while let Some((n, expanded)) = stack.pop() {
                if placed[n.index()] {
                    continue;
                }
                if expanded {
                    placed[n.index()] = true;
                    order.push(n);
                    continue;
                }
                stack.push((n, true));
                for operand in self.operands(n).into_iter().rev() {
                    if !placed[operand.index()] {
                        stack.push((operand, false));
                    }
                }
            }
        }
        order
    }

    /// Finds a node by its stable name.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.inner.node_indices().find(|&n| self.inner[n].name == name)
    }

    /// The output registered under `name`.
    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|(n, _)| n == name).map(|&(_, id)| id)
    }

    /// All `Param` nodes and the parameter each reads.
    pub fn param_nodes(&self) -> Vec<(NodeId, ParamId)> {
        self.inner
            .node_indices()
            .filter_map(|n| match self.inner[n].op {
                Op::Param { id } => Some((n, id)),
                _ => None,
            })
            .collect()
    }

    /// All `Input` nodes by name.
    pub fn input_nodes(&self) -> Vec<(NodeId, String)> {
        self.inner
            .node_indices()
            .filter_map(|n| match &self.inner[n].op {
                Op::Input { name } => Some((n, name.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn node_count(&self) -> usize {
        self.inner.node_count()
    }
}
