//! Writers for the IR: Graphviz DOT for reading a graph, and JSON (through serde) for
//! tools. Both are deterministic: nodes and edges appear in topological order.

use super::{Graph, Module, Op};
use std::fmt::Write;

/// Writes every network of the module and its train graph as one Graphviz digraph, each
/// graph in its own cluster. The train graph has one nested cluster per phase.
pub fn module_to_dot(module: &Module) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(&module.name));
    let _ = writeln!(out, "  rankdir=TB;");
    let _ = writeln!(out, "  node [shape=box, fontname=\"Helvetica\", fontsize=10];");
    let _ = writeln!(out, "  edge [fontname=\"Helvetica\", fontsize=8];");
    for (k, net) in module.nets.iter().enumerate() {
        let title = format!("net {}", net.name);
        write_cluster(&mut out, &format!("n{k}"), &title, &net.graph, module, false);
    }
    if let Some(train) = &module.train {
        write_cluster(&mut out, "t", "train", &train.graph, module, true);
    }
    out.push_str("}\n");
    out
}

/// Writes one graph as a DOT cluster whose node ids start with `id_prefix`.
fn write_cluster(
    out: &mut String,
    id_prefix: &str,
    title: &str,
    graph: &Graph,
    module: &Module,
    phases: bool,
) {
    let _ = writeln!(out, "  subgraph cluster_{id_prefix} {{");
    let _ = writeln!(out, "    label={};", quote(title));
    let order = graph.topo_order();
    let max_phase = order.iter().map(|&n| graph.node(n).phase).max().unwrap_or(0);
    for phase in 0..=max_phase {
        let indent = if phases { "      " } else { "    " };
        if phases {
            let label = if phase == 0 {
                "phase 0: shared values".to_string()
            } else {
                format!("phase {phase}")
            };
            let _ = writeln!(out, "    subgraph cluster_{id_prefix}_p{phase} {{");
            let _ = writeln!(out, "      label={};", quote(&label));
        }
        for &id in order.iter().filter(|&&n| graph.node(n).phase == phase) {
            let node = graph.node(id);
            let detail = match &node.op {
                Op::Param { id: p } => module
                    .params
                    .get(*p)
                    .map_or("param".into(), |d| format!("param {:?}", d.kind).to_lowercase()),
                Op::Constant { value } => format!("constant {value}"),
                op => op.name().to_string(),
            };
            let label = format!("{}\n{detail}\n{}", node.name, node.shape);
            let style = match node.op {
                Op::Input { .. } => ", style=filled, fillcolor=\"#d5e8d4\"",
                Op::Param { .. } => ", shape=ellipse, style=filled, fillcolor=\"#eeeeee\"",
                Op::Constant { .. } => ", shape=ellipse",
                _ => "",
            };
            let _ = writeln!(
                out,
                "{indent}{id_prefix}_{} [label={}{style}];",
                id.index(),
                quote(&label)
            );
        }
        if phases {
            let _ = writeln!(out, "    }}");
        }
    }
    for &id in &order {
        let operands = graph.operands(id);
        for (slot, src) in operands.iter().enumerate() {
            let label =
                if operands.len() > 1 { format!(" [label=\"{slot}\"]") } else { String::new() };
            let _ = writeln!(
                out,
                "    {id_prefix}_{} -> {id_prefix}_{}{label};",
                src.index(),
                id.index()
            );
        }
    }
    let outputs: Vec<String> = graph
        .outputs
        .iter()
        .map(|(name, id)| format!("{name} = {}", graph.node(*id).name))
        .collect();
    if !outputs.is_empty() {
        let _ = writeln!(
            out,
            "    {id_prefix}_outputs [shape=note, label={}];",
            quote(&outputs.join("\n"))
        );
    }
    let _ = writeln!(out, "  }}");
}

/// Quotes a string for DOT, escaping quotes and backslashes and keeping newlines.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Serializes the whole module (parameters, networks, train program) as pretty JSON.
pub fn module_to_json(module: &Module) -> String {
    // NOTE: every IR type derives Serialize with string keys and finite fields, so
    // serializing cannot fail; a failure would be a bug in those derives.
    let mut json = serde_json::to_string_pretty(module).expect("the IR always serializes to JSON");
    json.push('\n');
    json
}
