//! Groups the nodes of a standalone network into the layers of its source.
//!
//! Node names are `<net>.<layer>.<role>` (see [`crate::frontend`]), so a layer is every
//! non-leaf node whose name has the same second segment, and its parameters are the
//! declared parameters named `<net>.<layer>.*`. Layers keep the order in which the front
//! end built them, which is the order of the source.

use crate::ir::{Module, Net, Op, ParamKind, Shape};

/// One layer of a network as the source names it.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    /// The op of each node, in topological order.
    pub ops: Vec<Op>,
    /// The shape of the layer's last node.
    pub output: Shape,
    /// Number of trainable scalars the layer owns.
    pub trainable: usize,
}

impl Layer {
    /// Returns the op names joined as the `.net` chain spells them (`relu -> conv2d`).
    pub fn chain(&self) -> String {
        let names: Vec<&str> = self.ops.iter().map(Op::name).collect();
        names.join(" -> ")
    }
}

/// Lists the layers of `net` in build order.
pub fn layers(module: &Module, net: &Net) -> Vec<Layer> {
    let graph = &net.graph;
    let prefix = format!("{}.", net.name);
    let mut layers: Vec<Layer> = Vec::new();
    for id in graph.topo_order() {
        let node = graph.node(id);
        if matches!(node.op, Op::Input { .. } | Op::Param { .. } | Op::Constant { .. }) {
            continue;
        }
        let Some(rest) = node.name.strip_prefix(&prefix) else { continue };
        let name = rest.split('.').next().unwrap_or(rest);
        let index = match layers.iter().position(|l| l.name == name) {
            Some(index) => index,
            None => {
                layers.push(Layer {
                    name: name.to_string(),
                    ops: Vec::new(),
                    output: Shape::scalar(),
                    trainable: trainable_in(module, &net.name, name),
                });
                layers.len() - 1
            }
        };
        layers[index].ops.push(node.op.clone());
        layers[index].output = node.shape.clone();
    }
    layers
}

/// Returns the layer that parameter `name` of network `net` belongs to.
pub fn layer_of<'a>(net: &str, name: &'a str) -> Option<&'a str> {
    let rest = name.strip_prefix(net)?.strip_prefix('.')?;
    rest.split('.').next()
}

fn trainable_in(module: &Module, net: &str, layer: &str) -> usize {
    module
        .params
        .iter()
        .filter(|p| p.kind == ParamKind::Trainable && p.net == net)
        .filter(|p| layer_of(net, &p.name) == Some(layer))
        .map(|p| p.shape.numel())
        .sum()
}
