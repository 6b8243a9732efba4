//! Legal input sizes: finds the image heights and widths a network accepts by lowering it
//! again on trial sizes with a scratch parameter table. Strided layers that feed skip
//! concatenations accept only some sizes (a U-Net with 8 stride-2 levels needs multiples
//! of 256), and a wrong size otherwise shows up as a concatenation error deep inside.
//!
//! Every op of the language treats height and width independently, so trying square
//! sizes is enough: a height is legal exactly when the square of that size is. The one
//! exception is `flatten` before `linear`, whose weight shape follows the input size; such
//! a network is reported as fixed to its declared size.

use super::ast::NetDecl;
use super::diagnostics::{Diagnostic, ErrorKind};
use super::lower::{Builder, ParamTable};
use super::names::arg_dims;
use super::program::Program;
use super::value::Value;
use crate::ir::{Graph, Op, Shape};

/// The largest trial size.
const MAX_TRIAL: usize = 2048;

/// The heights and widths a network accepts for one image argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeReport {
    pub net: String,
    pub arg: String,
    pub declared: usize,
    pub legal: Legal,
    /// The largest size tried.
    pub tried: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Legal {
    /// `first`, `first + step`, `first + 2 * step`, ... (every one tried passed).
    Progression { first: usize, step: usize },
    /// Exactly these sizes passed.
    List(Vec<usize>),
    /// The parameter shapes depend on the size, so only the declared size fits.
    FixedByParams,
}

impl SizeReport {
    /// A sentence for `netc check`: "input x: height and width must be multiples of 256".
    pub fn describe(&self) -> String {
        match &self.legal {
            Legal::List(list) if list.is_empty() => format!(
                "input {}: no height and width from 1 to {} pass the shape checks",
                self.arg, self.tried
            ),
            Legal::Progression { first: 1, step: 1 } => {
                format!("input {}: any height and width pass the shape checks", self.arg)
            }
            _ => format!("input {}: height and width must be {}", self.arg, self.rule()),
        }
    }

    /// Formats the legal sizes as a phrase: "multiples of 256", "at least 24".
    fn rule(&self) -> String {
        match &self.legal {
            Legal::Progression { first, step } if first == step => format!("multiples of {step}"),
            Legal::Progression { first, step: 1 } => format!("at least {first}"),
            Legal::Progression { first, step } if first % step == 0 => {
                format!("multiples of {step}, at least {first}")
            }
            Legal::Progression { first, step } => format!("{first} plus a multiple of {step}"),
            Legal::List(list) => {
                let sizes: Vec<String> = list.iter().map(|s| s.to_string()).collect();
                format!("one of {} (tried 1 to {})", sizes.join(", "), self.tried)
            }
            Legal::FixedByParams => {
                format!("{} (the parameter shapes depend on the input size)", self.declared)
            }
        }
    }

    /// Formats a help line for a shape error: the rule, the declared size and the nearest
    /// legal sizes.
    pub fn suggest(&self) -> String {
        let (arg, net, d) = (&self.arg, &self.net, self.declared);
        let mut line = format!(
            "input `{arg}` of net `{net}` needs a height and width that are {}, but it is declared {d}x{d}",
            self.rule()
        );
        match self.nearest().as_slice() {
            [one] => line.push_str(&format!("; the nearest legal size is {one}")),
            [below, above] => {
                line.push_str(&format!("; the nearest legal sizes are {below} and {above}"))
            }
            _ => {}
        }
        line
    }

    /// Returns the legal sizes just below and above the declared one.
    fn nearest(&self) -> Vec<usize> {
        let legal: Vec<usize> = match &self.legal {
            Legal::Progression { first, step } => (*first..=self.tried).step_by(*step).collect(),
            Legal::List(list) => list.clone(),
            Legal::FixedByParams => return Vec::new(),
        };
        let below = legal.iter().rev().find(|&&s| s < self.declared);
        let above = legal.iter().find(|&&s| s > self.declared);
        below.into_iter().chain(above).copied().collect()
    }
}

/// Reports the legal sizes of each image argument (rank 3, `[C, H, W]`) of `net`.
pub(super) fn legal_sizes(prog: &Program, net: &NetDecl) -> Vec<SizeReport> {
    let mut scratch = Vec::new();
    let Some(dims) =
        net.args.iter().map(|a| arg_dims(prog, a, &mut scratch)).collect::<Option<Vec<_>>>()
    else {
        return Vec::new();
    };
    let mut reports = Vec::new();
    for (k, arg) in net.args.iter().enumerate() {
        if dims[k].len() != 3 {
            continue;
        }
        let declared = dims[k][1].max(dims[k][2]);
        let tried = (2 * declared).clamp(64, MAX_TRIAL);
        let mut legal = Vec::new();
        let mut param_shapes: Option<Vec<Shape>> = None;
        let mut fixed = false;
        for size in 1..=tried {
            let mut trial = dims.clone();
            // Arguments of the same image size move together, as `concat(x, y)` needs.
            for d in trial.iter_mut().filter(|d| d.len() == 3 && d[1..] == dims[k][1..]) {
                d[1] = size;
                d[2] = size;
            }
            let Some(shapes) = try_lower(prog, net, &trial) else { continue };
            legal.push(size);
            match &param_shapes {
                None => param_shapes = Some(shapes),
                Some(first) => fixed |= *first != shapes,
            }
        }
        let legal = if fixed { Legal::FixedByParams } else { summarize(&legal, tried) };
        reports.push(SizeReport {
            net: net.name.text.clone(),
            arg: arg.name.text.clone(),
            declared,
            legal,
            tried,
        });
    }
    reports
}

/// Lowers `net` on trial argument shapes; returns its parameter shapes when no rule fails.
fn try_lower(prog: &Program, net: &NetDecl, dims: &[Vec<usize>]) -> Option<Vec<Shape>> {
    let mut params = ParamTable::default();
    let mut builder = Builder::new(prog, &mut params);
    let mut nodes = Vec::new();
    for (arg, d) in net.args.iter().zip(dims) {
        let mut shape = vec![prog.batch];
        shape.extend(d);
        let op = Op::Input { name: arg.name.text.clone() };
        nodes.push(builder.graph.add_leaf(op, Shape::new(shape), arg.name.text.clone(), None));
    }
    let output = builder.instantiate(net, nodes, "");
    let ok = builder.diags.is_empty()
        && matches!(output, Value::Tensor(_))
        && !drops_pixels(&builder.graph);
    drop(builder);
    ok.then(|| params.decls.into_iter().map(|p| p.shape).collect())
}

/// Returns whether a strided window leaves input rows or columns unread, as a stride-2 conv does
/// on an odd size. PyTorch rounds such sizes down without an error, so a U-Net then
/// returns an image smaller than its input.
fn drops_pixels(graph: &Graph) -> bool {
    graph.inner.node_indices().any(|id| {
        let (kernel, stride, padding) = match graph.node(id).op {
            Op::Conv2d { stride, padding } => {
                let w = graph.shape(graph.operands(id)[1]).dims().to_vec();
                ([w[2], w[3]], stride, padding)
            }
            Op::MaxPool2d { kernel, stride } => (kernel, stride, [0, 0]),
            _ => return false,
        };
        let x = graph.shape(graph.operands(id)[0]).dims().to_vec();
        (0..2).any(|a| (x[2 + a] + 2 * padding[a] - kernel[a]) % stride[a] != 0)
    })
}

fn summarize(legal: &[usize], tried: usize) -> Legal {
    let (Some(&first), true) = (legal.first(), legal.len() >= 2) else {
        return Legal::List(legal.to_vec());
    };
    let step = legal.windows(2).map(|w| w[1] - w[0]).fold(0, gcd);
    let expected: Vec<usize> = (first..=tried).step_by(step).collect();
    if expected == legal {
        Legal::Progression { first, step }
    } else {
        Legal::List(legal.to_vec())
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Adds the legal input sizes to the shape errors of a network, when every error of it is
/// a shape error and some size would pass.
pub(super) fn explain_shape_errors(prog: &Program, net: &NetDecl, errors: &mut [Diagnostic]) {
    if errors.is_empty() || errors.iter().any(|d| d.kind != ErrorKind::Shape) {
        return;
    }
    let reports = legal_sizes(prog, net);
    let useful: Vec<&SizeReport> = reports
        .iter()
        .filter(|r| !matches!(&r.legal, Legal::List(l) if l.is_empty()))
        .filter(|r| !matches!(r.legal, Legal::FixedByParams))
        .collect();
    if useful.is_empty() {
        return;
    }
    let lines: Vec<String> = useful.iter().map(|r| r.suggest()).collect();
    let extra = lines.join("\n");
    for d in errors.iter_mut() {
        *d = d.clone().add_help(extra.clone());
    }
}

/// Reports the legal input sizes of every network of a file, for `netc check`. Returns
/// nothing for a file that does not compile.
pub fn legal_input_sizes(text: &str, overrides: &[String]) -> Vec<SizeReport> {
    let Ok(ast) = super::parse::parse_file(text) else { return Vec::new() };
    let mut diags = Vec::new();
    let mut prog = super::program::resolve(&ast, overrides, &mut diags);
    if !diags.is_empty() {
        return Vec::new();
    }
    prog.batch = 1;
    prog.nets.clone().into_iter().flat_map(|net| legal_sizes(&prog, net)).collect()
}
