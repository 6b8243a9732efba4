//! The IR verifier: checks the invariants listed in the `ir` module docs. Runs before and
//! after the pass list in debug builds and tests. A failure is a compiler bug, never a
//! user error, so it reports the first broken invariant as a plain string.

use super::{Graph, Module, Op};
use petgraph::algo::is_cyclic_directed;

/// Checks one graph against the module's parameter declarations.
pub fn verify_graph(graph: &Graph, module: &Module) -> Result<(), String> {
    if is_cyclic_directed(&graph.inner) {
        return Err("graph has a cycle".into());
    }
    for id in graph.inner.node_indices() {
        let node = graph.node(id);
        let operands = graph.operands(id);
        let (min, max) = node.op.arity();
        if operands.len() < min || operands.len() > max {
            return Err(format!(
                "node {} ({}) has {} operands",
                node.name,
                node.op.name(),
                operands.len()
            ));
        }
        let shapes: Vec<_> = operands.iter().map(|&o| graph.shape(o)).collect();
        match node.op.infer_shape(&shapes) {
            Some(Ok(shape)) if shape != node.shape => {
                return Err(format!(
                    "node {} has shape {} but its rule gives {shape}",
                    node.name, node.shape
                ));
            }
            Some(Err(e)) => return Err(format!("node {}: {e}", node.name)),
            _ => {}
        }
        if let Op::Param { id: p } = node.op {
            let Some(decl) = module.params.get(p) else {
                return Err(format!("node {} reads undeclared parameter {p}", node.name));
            };
            if decl.shape != node.shape {
                return Err(format!(
                    "node {} has shape {} but parameter {} is {}",
                    node.name, node.shape, decl.name, decl.shape
                ));
            }
        }
    }
    for (name, id) in &graph.outputs {
        if graph.inner.node_weight(*id).is_none() {
            return Err(format!("output {name} refers to a removed node"));
        }
    }
    Ok(())
}

/// Checks every graph of the module.
pub fn verify_module(module: &Module) -> Result<(), String> {
    for net in &module.nets {
        verify_graph(&net.graph, module).map_err(|e| format!("net {}: {e}", net.name))?;
    }
    if let Some(train) = &module.train {
        verify_graph(&train.graph, module).map_err(|e| format!("train: {e}"))?;
    }
    Ok(())
}
