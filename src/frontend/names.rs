//! Layer names: expands `e4..e{levels}` ranges into one layer per index, resolves skip
//! edges to layer indices and evaluates network argument shapes. Needs the resolved
//! params; afterwards each network layer has one unique name.

use super::ast::{Chain, Name, Names, NetArg, NetDecl, NetStmt, SkipEdge};
use super::diagnostics::{Diagnostic, ErrorKind};
use super::lower::NetScope;
use super::program::{eval_param_expr, Program};
use super::suggest::did_you_mean;
use super::value::{type_error, Value};
use crate::ir::Span;

/// The maximum number of layers one range may name.
const MAX_RANGE: i64 = 4096;

/// The largest size of one dimension a shape may declare.
pub const MAX_DIM: i64 = 1 << 24;

pub(super) enum LayerState {
    Pending,
    Active,
    Done(Value),
}

pub(super) struct Layer<'a> {
    pub name: String,
    /// The span of the name on the left of the statement.
    pub span: Span,
    pub chain: &'a Chain,
    pub state: LayerState,
    /// Whether another layer, a skip edge or the output reads this layer.
    pub used: bool,
}

/// Expands the layer statements of `net` into `scope.layers`.
pub(super) fn declare_layers<'a>(
    prog: &Program,
    net: &'a NetDecl,
    scope: &mut NetScope<'a>,
    diags: &mut Vec<Diagnostic>,
) {
    for stmt in &net.stmts {
        let NetStmt::Layer { names, chain, .. } = stmt else { continue };
        let Some(expanded) = expand(prog, names, diags) else { continue };
        for (name, span) in expanded {
            if let Some(d) = name_conflict(prog, net, scope, &name, span) {
                diags.push(d);
                continue;
            }
            scope.by_name.insert(name.clone(), scope.layers.len());
            scope.layers.push(Layer { name, span, chain, state: LayerState::Pending, used: false });
        }
    }
}

fn name_conflict(
    prog: &Program,
    net: &NetDecl,
    scope: &NetScope,
    name: &str,
    span: Span,
) -> Option<Diagnostic> {
    if let Some(&i) = scope.by_name.get(name) {
        let d = Diagnostic::new(
            ErrorKind::Duplicate,
            span,
            format!("layer `{name}` is defined twice"),
        )
        .with_label("defined again here")
        .with_note(scope.layers[i].span, "first defined here")
        .with_help(
            "give each layer its own name; check that ranges such as `e4..e8` do not overlap",
        );
        return Some(d);
    }
    if let Some(arg) = net.args.iter().find(|a| a.name.text == name) {
        let d = Diagnostic::new(
            ErrorKind::Duplicate,
            span,
            format!("layer `{name}` has the name of an input of the net"),
        )
        .with_note(arg.name.span, "input declared here");
        return Some(d);
    }
    if prog.params.contains_key(name) {
        let message = format!("layer `{name}` has the name of a param");
        return Some(
            Diagnostic::new(ErrorKind::Duplicate, span, message)
                .with_help("rename the layer or the param"),
        );
    }
    None
}

/// Expands `e3` or `e4..e8` into names with their spans; `None` after an error.
fn expand(
    prog: &Program,
    names: &Names,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<(String, Span)>> {
    let Some(last) = &names.last else {
        let (prefix, index) = split(prog, &names.first, diags)?;
        let name = match index {
            Some(i) => format!("{prefix}{i}"),
            None => prefix,
        };
        return Some(vec![(name, names.span)]);
    };
    let (prefix, start) = split(prog, &names.first, diags)?;
    let (last_prefix, end) = split(prog, last, diags)?;
    let (Some(start), Some(end)) = (start, end) else {
        let d = Diagnostic::new(ErrorKind::Type, names.span, "both ends of a range need an index")
            .with_label("write the range as `e4..e8` or `e4..e{levels}`");
        diags.push(d);
        return None;
    };
    if prefix != last_prefix {
        let message =
            format!("the ends of a range must share a name, got `{prefix}` and `{last_prefix}`");
        diags.push(
            Diagnostic::new(ErrorKind::Type, names.span, message).with_label("different names"),
        );
        return None;
    }
    let count = (end - start).abs() + 1;
    if count > MAX_RANGE {
        let message = format!("range `{prefix}{start}..{prefix}{end}` names {count} layers");
        let d = Diagnostic::new(ErrorKind::Range, names.span, message)
            .with_label(format!("at most {MAX_RANGE} layers per range"));
        diags.push(d);
        return None;
    }
    let step = if end >= start { 1 } else { -1 };
    Some((0..count).map(|k| (format!("{prefix}{}", start + k * step), names.span)).collect())
}

/// Splits a name into its prefix and index: `e4` into (`e`, 4), `e{levels}` into (`e`, 8),
/// and `input` into (`input`, none).
fn split(
    prog: &Program,
    name: &Name,
    diags: &mut Vec<Diagnostic>,
) -> Option<(String, Option<i64>)> {
    let text = &name.ident.text;
    let Some(index) = &name.index else {
        let digits = text.len() - text.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 || digits == text.len() {
            return Some((text.clone(), None));
        }
        let (prefix, number) = text.split_at(text.len() - digits);
        return match number.parse::<i64>() {
            Ok(i) => Some((prefix.to_string(), Some(i))),
            Err(_) => {
                diags.push(Diagnostic::new(
                    ErrorKind::Range,
                    name.span,
                    format!("index of `{text}` is too large"),
                ));
                None
            }
        };
    };
    match eval_param_expr(index, &prog.params) {
        Ok(Value::Int(i)) if (0..=i64::from(u32::MAX)).contains(&i) => {
            Some((text.clone(), Some(i)))
        }
        Ok(Value::Poison) => None,
        Ok(Value::Int(i)) => {
            let message = format!("layer index {i} is out of range");
            diags.push(
                Diagnostic::new(ErrorKind::Range, index.span, message)
                    .with_label("must be 0 or more"),
            );
            None
        }
        Ok(other) => {
            diags.push(type_error(index.span, "a layer index must be an integer", &other));
            None
        }
        Err(d) => {
            diags.push(d);
            None
        }
    }
}

/// Resolves skip edges to layer indices in `scope.skips`.
pub(super) fn declare_skips(
    prog: &Program,
    edges: &[SkipEdge],
    scope: &mut NetScope,
    diags: &mut Vec<Diagnostic>,
) {
    for edge in edges {
        let (Some(from), Some(to)) =
            (expand(prog, &edge.from, diags), expand(prog, &edge.to, diags))
        else {
            continue;
        };
        if from.len() != to.len() {
            let message = format!("skip edge connects {} layers to {}", from.len(), to.len());
            let d = Diagnostic::new(ErrorKind::Type, edge.span, message)
                .with_label("both sides need the same number of layers");
            diags.push(d);
            continue;
        }
        for ((source, source_span), (target, target_span)) in from.iter().zip(&to) {
            let (Some(s), Some(t)) = (
                find_layer(scope, source, *source_span, "source", diags),
                find_layer(scope, target, *target_span, "target", diags),
            ) else {
                continue;
            };
            if s == t {
                let message = format!("skip edge from `{source}` to itself");
                diags.push(Diagnostic::new(ErrorKind::Cycle, edge.span, message));
                continue;
            }
            scope.skips.entry(t).or_default().push((s, edge.span));
        }
    }
}

fn find_layer(
    scope: &NetScope,
    name: &str,
    span: Span,
    end: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<usize> {
    if let Some(&i) = scope.by_name.get(name) {
        return Some(i);
    }
    let help = did_you_mean(name, scope.by_name.keys().map(|k| k.as_str()), "layer");
    let message = format!("skip edge {end} `{name}` is not a layer of this net");
    diags.push(
        Diagnostic::new(ErrorKind::Undefined, span, message)
            .with_label("no such layer")
            .with_help(help),
    );
    None
}

/// Evaluates the declared shape of a network argument, without the batch axis.
pub fn arg_dims(prog: &Program, arg: &NetArg, diags: &mut Vec<Diagnostic>) -> Option<Vec<usize>> {
    let mut dims = Vec::new();
    for dim in &arg.dims {
        match eval_param_expr(dim, &prog.params) {
            Ok(Value::Int(d)) if (1..=MAX_DIM).contains(&d) => dims.push(d as usize),
            Ok(Value::Int(d)) => {
                let message = format!("dimension {d} of input `{}` is out of range", arg.name.text);
                let label = format!("must be between 1 and {MAX_DIM}");
                diags.push(Diagnostic::new(ErrorKind::Range, dim.span, message).with_label(label));
                return None;
            }
            Ok(Value::Poison) => return None,
            Ok(other) => {
                diags.push(type_error(dim.span, "a dimension must be an integer", &other));
                return None;
            }
            Err(d) => {
                diags.push(d);
                return None;
            }
        }
    }
    Some(dims)
}
