//! The netc intermediate representation: a petgraph graph of typed tensor ops.
//!
//! The front end builds a [`Module`] from `.net` text. Every later stage (autodiff, passes,
//! WGSL codegen, the wgpu runtime, training) reads and extends it. Invariants that hold
//! after the front end and after every pass (checked by [`verify::verify_graph`]):
//! - every node has a concrete [`Shape`], and it equals what [`Op::infer_shape`] returns
//!   for the node's operands;
//! - the graph is acyclic and each node has exactly the operands its op takes, in slot order;
//! - every `Param` node refers to a declared parameter whose shape is the node's shape.

pub mod export;
mod graph;
mod module;
mod op;
pub mod verify;

pub use graph::{Graph, Node, NodeId, Operand};
pub use module::{
    DataSpec, Half, Init, LabeledData, LossTerm, Module, Net, NetInput, Optimizer, ParamDecl,
    ParamId, ParamKind, Schedule, StepSpec, TrainSpec,
};
pub use op::{Op, ShapeError};

use serde::{Deserialize, Serialize};
use std::fmt;

/// A tensor shape in row-major order. Image tensors are `[N, C, H, W]`, scalars are `[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn is_scalar(&self) -> bool {
        self.0.is_empty()
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// A byte range in the `.net` source that a node or declaration came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }
}
