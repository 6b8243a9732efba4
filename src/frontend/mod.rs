//! The front end: `.net` text to a checked [`ir::Module`].
//!
//! [`compile_source`] runs the stages in order. It parses the text ([`parse`]), resolves
//! the params, `--set` overrides and declarations ([`program`]), and lowers every network
//! to its own forward graph ([`lower`], with the op catalogue in [`ops`]). Then it lowers
//! the train section to one graph for a whole iteration ([`train`]). Every stage collects
//! all the errors it finds, but a syntax error stops the parse, so it is reported alone.
//!
//! Afterwards every node has a concrete shape (`[N, C, H, W]` for images) and the module
//! passes [`ir::verify::verify_module`].
//!
//! Parameter names are `<net>.<layer>.<role>.<tensor>`, where the role is `conv`,
//! `conv_transpose`, `norm` or `linear`, numbered from the second one in a layer
//! (`conv2`), and the tensor is `weight`, `bias`, `scale`, `offset`, `running_mean` or
//! `running_var`. Node names of a standalone network are `<net>.<layer>.<role>`; in the
//! train graph they start with the call site, the `let` or loss term name
//! (`fake.generator.e3.conv`), and parameter nodes of step `k` with `step<k>`.

// NOTE: a `Diagnostic` (about 150 bytes) is the error type of every front-end function.
// It is built only when the file is wrong, and a syntax error ends the parse, so the size
// of the `Err` variant costs nothing on the path of a correct file.
#![allow(clippy::result_large_err)]

pub mod ast;
pub mod diagnostics;
mod lower;
mod names;
mod ops;
pub mod parse;
mod program;
pub mod sizes;
mod suggest;
mod train;
mod value;

pub use diagnostics::{Diagnostic, Diagnostics, ErrorKind};

use crate::ir::{self, Module, Net, NetInput, Op, Shape};
use std::path::Path;

/// Compiles the text of a `.net` file with `--set` overrides (raw `name=value` strings).
pub fn compile_source(
    file_name: &str,
    text: &str,
    overrides: &[String],
) -> Result<Module, Diagnostics> {
    let _span = tracing::info_span!("frontend", file = file_name).entered();
    let mut diags = Vec::new();
    let ast = match tracing::debug_span!("parse").in_scope(|| parse::parse_file(text)) {
        Ok(ast) => ast,
        Err(d) => return Err(Diagnostics::new(file_name, text, vec![d])),
    };
    if !ast.items.iter().any(|item| matches!(item, ast::Item::Net(_))) {
        diags.push(no_network(file_name));
    }
    let mut prog = program::resolve(&ast, overrides, &mut diags);
    // NOTE: a failed `require` means the params are outside what the model supports, so
    // lowering would only add errors that follow from it.
    if diags.iter().any(|d| d.kind == ErrorKind::Requirement) {
        return Err(Diagnostics::new(file_name, text, dedup(diags)));
    }
    prog.batch = batch_size(&prog);

    let mut params = lower::ParamTable::default();
    let mut nets = Vec::new();
    for net in prog.nets.clone() {
        if let Some(lowered) = lower_standalone(&prog, net, &mut params, &mut diags) {
            nets.push(lowered);
        }
    }
    let train = match prog.train {
        Some(section) if diags.is_empty() => {
            train::lower_train(&prog, section, &mut params, &mut diags)
        }
        _ => None,
    };
    if !diags.is_empty() {
        return Err(Diagnostics::new(file_name, text, dedup(diags)));
    }

    for net in &mut nets {
        net.params =
            (0..params.decls.len()).filter(|&id| params.decls[id].net == net.name).collect();
    }
    let settings = prog.settings.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    let module =
        Module { name: module_name(file_name), params: params.decls, nets, train, settings };
    if let Err(e) = ir::verify::verify_module(&module) {
        panic!("the front end built an invalid module (a compiler bug): {e}");
    }
    tracing::debug!(params = module.params.len(), nets = module.nets.len(), "front end done");
    Ok(module)
}

/// Reads and compiles a `.net` file; a read failure is a diagnostic as well.
pub fn compile_file(path: &Path, overrides: &[String]) -> Result<Module, Diagnostics> {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => compile_source(&name, &text, overrides),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let message = format!("{name} is not valid UTF-8 (invalid byte at offset {at})");
                let d = Diagnostic::without_span(ErrorKind::Io, message)
                    .with_help("save the file as UTF-8");
                Err(Diagnostics::new(&name, "", vec![d]))
            }
        },
        Err(e) => {
            let d = Diagnostic::without_span(ErrorKind::Io, format!("failed to read {name}: {e}"))
                .with_help("check the path of the model file");
            Err(Diagnostics::new(&name, "", vec![d]))
        }
    }
}

/// The smallest useful model file, which the error for a file without a `net` shows.
pub const MINIMAL_MODEL: &str = "\
net tiny(x: [3, 32, 32]) {
    y = x -> conv2d(8, kernel=3, padding=1) -> relu
}";

/// Builds the error for a file without a `net`, such as an empty file, one with only
/// comments, or one with only params and a train section. Nothing in it can be trained.
fn no_network(file_name: &str) -> Diagnostic {
    let message = format!("{file_name} declares no network");
    Diagnostic::without_span(ErrorKind::Missing, message).with_help(format!(
        "a model file needs at least one `net`, such as\n\n{MINIMAL_MODEL}\n\n\
         models/classifier.net and models/pix2pix.net in the netc repository are complete \
         examples"
    ))
}

fn module_name(file_name: &str) -> String {
    Path::new(file_name)
        .file_stem()
        .map_or_else(|| file_name.to_string(), |s| s.to_string_lossy().into_owned())
}

fn batch_size(prog: &program::Program) -> usize {
    let Some(train) = prog.train else { return 1 };
    for item in &train.items {
        let ast::TrainItem::Setting { key, value, .. } = item else { continue };
        let ast::ExprKind::Call(call) = &value.kind else { continue };
        if key.text != "data" {
            continue;
        }
        for arg in &call.args {
            if let ast::Arg::Keyword(k, e) = arg {
                if k.text == "batch" {
                    if let Ok(value::Value::Int(b)) = program::eval_param_expr(e, &prog.params) {
                        if (1..=65_536).contains(&b) {
                            return b as usize;
                        }
                    }
                }
            }
        }
    }
    1
}

/// Lowers one network on its declared input shapes, with batch size `prog.batch`.
fn lower_standalone<'a>(
    prog: &program::Program<'a>,
    net: &'a ast::NetDecl,
    params: &mut lower::ParamTable,
    diags: &mut Vec<Diagnostic>,
) -> Option<Net> {
    let mut inputs = Vec::new();
    for arg in &net.args {
        let dims = names::arg_dims(prog, arg, diags)?;
        let mut shape = vec![prog.batch];
        shape.extend(dims);
        inputs.push(NetInput { name: arg.name.text.clone(), shape: Shape::new(shape) });
    }

    // Lower the network on `Input` nodes named after its arguments.
    let mut builder = lower::Builder::new(prog, params);
    let nodes: Vec<_> = inputs
        .iter()
        .zip(&net.args)
        .map(|(input, arg)| {
            let op = Op::Input { name: input.name.clone() };
            builder.graph.add_leaf(op, input.shape.clone(), input.name.clone(), Some(arg.span))
        })
        .collect();
    let output = builder.instantiate(net, nodes, "");

    // Collect the errors, with the legal input sizes where a shape rule failed.
    let mut graph = std::mem::take(&mut builder.graph);
    let mut errors = std::mem::take(&mut builder.diags);
    drop(builder);
    if errors.iter().any(|d| d.kind == ErrorKind::Shape) {
        sizes::explain_shape_errors(prog, net, &mut errors);
    }
    let failed = !errors.is_empty();
    diags.append(&mut errors);
    let value::Value::Tensor(out) = output else { return None };
    if failed {
        return None;
    }

    graph.outputs.push(("output".to_string(), out));
    Some(Net {
        name: net.name.text.clone(),
        inputs,
        graph,
        params: Vec::new(),
        span: Some(net.span),
    })
}

/// Removes repeated diagnostics: a network instantiated several times reports the same
/// error at the same place each time.
fn dedup(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    for d in diags {
        if !out.iter().any(|o| o.span == d.span && o.message == d.message) {
            out.push(d);
        }
    }
    out.sort_by_key(|d| d.span.map_or(0, |s| s.start));
    out
}
