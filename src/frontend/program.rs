//! Declarations: resolves the file's `param`s (applying `--set` overrides), checks its
//! `require`s, and indexes its blocks, networks and op defaults by name. Needs a parsed
//! file; afterwards every name is declared once and every param has a value.

use super::ast::{BlockDecl, Call, Expr, ExprKind, File, Ident, Item, NetDecl, TrainDecl};
use super::diagnostics::{Diagnostic, ErrorKind};
use super::ops;
use super::parse;
use super::suggest::did_you_mean;
use super::value::{binary, format_float, unary, Value};
use std::collections::HashMap;

/// The resolved declarations of a file.
pub struct Program<'a> {
    pub params: HashMap<String, Value>,
    /// Params in declaration order with their final values, for [`crate::ir::Module`].
    pub settings: Vec<(String, Value)>,
    pub blocks: HashMap<&'a str, &'a BlockDecl>,
    pub nets: Vec<&'a NetDecl>,
    pub defaults: HashMap<&'a str, Vec<(&'a Ident, &'a Expr)>>,
    pub train: Option<&'a TrainDecl>,
    /// Batch size of the standalone networks: the train section's, else 1.
    pub batch: usize,
}

impl<'a> Program<'a> {
    pub fn net(&self, name: &str) -> Option<&'a NetDecl> {
        self.nets.iter().copied().find(|n| n.name.text == name)
    }
}

/// Builds the program, pushing every error it finds into `diags`.
pub fn resolve<'a>(
    file: &'a File,
    overrides: &[String],
    diags: &mut Vec<Diagnostic>,
) -> Program<'a> {
    let mut program = Program {
        params: HashMap::new(),
        settings: Vec::new(),
        blocks: HashMap::new(),
        nets: Vec::new(),
        defaults: HashMap::new(),
        train: None,
        batch: 1,
    };
    let overrides = parse_overrides(overrides, diags);
    resolve_params(file, &overrides, &mut program, diags);
    check_overrides_declared(file, &overrides, diags);
    check_requires(file, &program, diags);
    index_declarations(file, &mut program, diags);
    program
}

/// A `--set name=value` flag after parsing. `value` is the parser's message when the text
/// after `=` is not an expression, which is reported where the param is declared.
struct Override {
    raw: String,
    name: String,
    value: Result<Expr, String>,
}

fn parse_overrides(raw: &[String], diags: &mut Vec<Diagnostic>) -> Vec<Override> {
    let mut parsed: Vec<Override> = Vec::new();
    for flag in raw {
        let Some((name, value)) = flag.split_once('=') else {
            diags.push(
                Diagnostic::without_span(ErrorKind::Override, format!("invalid --set `{flag}`"))
                    .with_help("write it as name=value, for example --set ngf=32"),
            );
            continue;
        };
        let name = name.trim().to_string();
        if parsed.iter().any(|o| o.name == name) {
            diags.push(Diagnostic::without_span(
                ErrorKind::Duplicate,
                format!("--set gives `{name}` twice"),
            ));
            continue;
        }
        let value = parse::parse_expr(value.trim()).map_err(|e| e.message);
        parsed.push(Override { raw: flag.clone(), name, value });
    }
    parsed
}

fn resolve_params(
    file: &File,
    overrides: &[Override],
    program: &mut Program,
    diags: &mut Vec<Diagnostic>,
) {
    let declared = declared_params(file);
    let mut spans = HashMap::new();
    for item in &file.items {
        let Item::Param(decl) = item else { continue };
        let name = decl.name.text.as_str();
        if let Some(first) = spans.get(name) {
            diags.push(
                Diagnostic::new(
                    ErrorKind::Duplicate,
                    decl.name.span,
                    format!("param `{name}` is declared twice"),
                )
                .with_label("declared again here")
                .with_note(*first, "first declared here"),
            );
            continue;
        }
        spans.insert(name.to_string(), decl.name.span);
        let default = eval_param_expr(&decl.value, &program.params);
        let value = match overrides.iter().find(|o| o.name == name) {
            Some(o) => apply_override(o, default, decl, &program.params, &declared),
            None => default,
        };
        let value = value.unwrap_or_else(|e| {
            diags.push(e);
            Value::Poison
        });
        program.settings.push((name.to_string(), value.clone()));
        program.params.insert(name.to_string(), value);
    }
}

fn declared_params(file: &File) -> Vec<&str> {
    let params = file.items.iter().filter_map(|item| match item {
        Item::Param(p) => Some(p.name.text.as_str()),
        _ => None,
    });
    params.collect()
}

/// Evaluates the value of `--set` for `decl` against the params declared before it, and
/// checks that it has the type of the param's own value. `declared` lists every param of
/// the file, so that a reference to a later one gets its own message.
fn apply_override(
    o: &Override,
    default: Result<Value, Diagnostic>,
    decl: &super::ast::ParamDecl,
    env: &HashMap<String, Value>,
    declared: &[&str],
) -> Result<Value, Diagnostic> {
    let invalid = |problem: String| override_error(o, decl, default.as_ref().ok(), problem);
    let expr = o.value.as_ref().map_err(|message| invalid(message.clone()))?;
    let mut names = Vec::new();
    collect_names(expr, &mut names);
    if let Some(unknown) = names.iter().find(|n| !env.contains_key(n.as_str())) {
        let problem = if declared.contains(&unknown.as_str()) {
            format!("`{unknown}` is declared after `{}`, so its value is not known yet", o.name)
        } else {
            format!("`{unknown}` is neither a number nor a param declared before `{}`", o.name)
        };
        return Err(invalid(problem));
    }
    let value = eval_param_expr(expr, env).map_err(|e| invalid(e.message))?;
    let mismatch = |what: &str| {
        invalid(format!(
            "{} is {}, but `{}` is {what}",
            value.describe(),
            value.type_name(),
            o.name
        ))
    };
    match (&default, &value) {
        // NOTE: an override replaces a default that fails to evaluate, so `--set` can
        // repair a param whose expression is out of range for the other settings.
        (Err(_), _) => Ok(value),
        (Ok(Value::Int(_)), Value::Int(_)) | (Ok(Value::Float(_)), Value::Float(_)) => Ok(value),
        (Ok(Value::Bool(_)), Value::Bool(_)) => Ok(value),
        (Ok(Value::Float(_)), Value::Int(i)) => Ok(Value::Float(*i as f64)),
        (Ok(Value::Int(_)), _) => Err(mismatch("an integer")),
        (Ok(Value::Float(_)), _) => Err(mismatch("a number")),
        (Ok(Value::Bool(_)), _) => Err(mismatch("a boolean")),
        (Ok(_), _) => Ok(value),
    }
}

/// Builds the error for a `--set` value that cannot replace `decl`'s. It names the flag and
/// the problem, points at the declaration and shows the form of value the param takes.
fn override_error(
    o: &Override,
    decl: &super::ast::ParamDecl,
    default: Option<&Value>,
    problem: String,
) -> Diagnostic {
    let message = format!("invalid --set `{}`: {problem}", o.raw);
    let d = Diagnostic::new(ErrorKind::Override, decl.value.span, message);
    let (form, example) = match default {
        Some(v @ (Value::Int(_) | Value::Float(_) | Value::Bool(_) | Value::Str(_))) => {
            let form = match v {
                Value::Int(_) => "an integer",
                Value::Float(_) => "a number",
                Value::Bool(_) => "`true` or `false`",
                _ => "a string",
            };
            (form, v.describe())
        }
        Some(Value::Init(_)) => ("an initializer", "normal(0, 0.02)".to_string()),
        _ => return d.with_label(format!("`{}` is declared here", o.name)),
    };
    d.with_label(format!("`{}` is declared here, as {form}", o.name))
        .with_help(format!("give `{}` {form}, such as --set {}={example}", o.name, o.name))
}

fn check_overrides_declared(file: &File, overrides: &[Override], diags: &mut Vec<Diagnostic>) {
    let declared = declared_params(file);
    for o in overrides {
        if !declared.contains(&o.name.as_str()) {
            diags.push(
                Diagnostic::without_span(
                    ErrorKind::Override,
                    format!("--set {}: the file declares no param `{}`", o.raw, o.name),
                )
                .with_help(did_you_mean(
                    &o.name,
                    declared.iter().copied(),
                    "param",
                )),
            );
        }
    }
}

fn check_requires(file: &File, program: &Program, diags: &mut Vec<Diagnostic>) {
    for item in &file.items {
        let Item::Require(req) = item else { continue };
        match eval_param_expr(&req.condition, &program.params) {
            Ok(Value::Bool(true)) | Ok(Value::Poison) => {}
            Ok(Value::Bool(false)) => {
                let mut d = Diagnostic::new(
                    ErrorKind::Requirement,
                    req.condition.span,
                    match &req.message {
                        Some(m) => m.clone(),
                        None => "requirement failed".to_string(),
                    },
                )
                .with_label("this condition is false");
                let values = describe_names(&req.condition, &program.params);
                if !values.is_empty() {
                    d = d.with_help(format!("with {values}; change them with --set"));
                }
                diags.push(d);
            }
            Ok(other) => diags.push(
                Diagnostic::new(
                    ErrorKind::Type,
                    req.condition.span,
                    format!("require needs a condition, got {}", other.describe()),
                )
                .with_label(format!("this is {}", other.type_name())),
            ),
            Err(e) => diags.push(e),
        }
    }
}

/// Lists `name = value` for every param an expression reads, for help lines.
fn describe_names(expr: &Expr, env: &HashMap<String, Value>) -> String {
    let mut names = Vec::new();
    collect_names(expr, &mut names);
    names.sort();
    names.dedup();
    names
        .iter()
        .filter_map(|n| env.get(n).map(|v| format!("{n} = {}", v.describe())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn collect_names(expr: &Expr, out: &mut Vec<String>) {
    match &expr.kind {
        ExprKind::Name(n) => out.push(n.ident.text.clone()),
        ExprKind::Call(c) => {
            for arg in &c.args {
                match arg {
                    super::ast::Arg::Positional(e) | super::ast::Arg::Keyword(_, e) => {
                        collect_names(e, out)
                    }
                }
            }
        }
        ExprKind::Unary(_, e) => collect_names(e, out),
        ExprKind::Binary(_, a, b) => {
            collect_names(a, out);
            collect_names(b, out);
        }
        _ => {}
    }
}

fn index_declarations<'a>(file: &'a File, program: &mut Program<'a>, diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<&str, (&str, crate::ir::Span)> = HashMap::new();
    for item in &file.items {
        let (name, kind) = match item {
            Item::Block(b) => (&b.name, "block"),
            Item::Net(n) => (&n.name, "net"),
            Item::Param(p) => (&p.name, "param"),
            Item::Train(t) => {
                if program.train.is_some() {
                    diags.push(
                        Diagnostic::new(
                            ErrorKind::Duplicate,
                            t.span,
                            "the file has two train sections",
                        )
                        .with_label("second train section")
                        .with_help("merge the steps into one train section"),
                    );
                }
                program.train.get_or_insert(t);
                continue;
            }
            Item::Defaults(calls) => {
                index_defaults(calls, program, diags);
                continue;
            }
            Item::Require(_) => continue,
        };
        if kind != "param" && ops::is_builtin(&name.text) {
            diags.push(
                Diagnostic::new(
                    ErrorKind::Duplicate,
                    name.span,
                    format!("{kind} `{}` has the name of a built-in op or function", name.text),
                )
                .with_label("choose another name"),
            );
            continue;
        }
        if let Some((first_kind, first_span)) = seen.get(name.text.as_str()) {
            if kind != "param" || *first_kind != "param" {
                diags.push(
                    Diagnostic::new(
                        ErrorKind::Duplicate,
                        name.span,
                        format!(
                            "{kind} `{}` has the name of a {first_kind} declared earlier",
                            name.text
                        ),
                    )
                    .with_label("declared again here")
                    .with_note(*first_span, "first declared here"),
                );
            }
            continue;
        }
        seen.insert(&name.text, (kind, name.span));
        match item {
            Item::Block(b) => {
                program.blocks.insert(&b.name.text, b);
            }
            Item::Net(n) => program.nets.push(n),
            _ => {}
        }
    }
}

fn index_defaults<'a>(calls: &'a [Call], program: &mut Program<'a>, diags: &mut Vec<Diagnostic>) {
    for call in calls {
        let op = call.callee.text.as_str();
        let Some(sig) = ops::signature(op) else {
            diags.push(
                Diagnostic::new(
                    ErrorKind::Unknown,
                    call.callee.span,
                    format!("unknown op `{op}` in defaults"),
                )
                .with_help(did_you_mean(op, ops::layer_op_names(), "op")),
            );
            continue;
        };
        let entry = program.defaults.entry(&call.callee.text).or_default();
        for arg in &call.args {
            match arg {
                super::ast::Arg::Keyword(key, value) => {
                    if !sig.keys.contains(&key.text.as_str()) {
                        diags.push(ops::unknown_key(op, key, sig));
                    } else if entry.iter().any(|(k, _)| k.text == key.text) {
                        diags.push(
                            Diagnostic::new(
                                ErrorKind::Duplicate,
                                key.span,
                                format!("defaults set `{}` of {op} twice", key.text),
                            )
                            .with_label("set again here"),
                        );
                    } else {
                        entry.push((key, value));
                    }
                }
                super::ast::Arg::Positional(e) => diags.push(
                    Diagnostic::new(
                        ErrorKind::Syntax,
                        e.span,
                        "defaults take keyword arguments only",
                    )
                    .with_label("write this as key=value"),
                ),
            }
        }
    }
}

/// Evaluates an expression that may only read params: a param's value, a `require`, a
/// range index, a shape, a default.
pub fn eval_param_expr(expr: &Expr, env: &HashMap<String, Value>) -> Result<Value, Diagnostic> {
    match &expr.kind {
        ExprKind::Int(i) => Ok(Value::Int(*i)),
        ExprKind::Float(f) => Ok(Value::Float(*f)),
        ExprKind::Bool(b) => Ok(Value::Bool(*b)),
        ExprKind::Str(s) => Ok(Value::Str(s.clone())),
        ExprKind::Name(n) => {
            if n.index.is_some() {
                return Err(Diagnostic::new(
                    ErrorKind::Type,
                    n.span,
                    format!("`{}{{...}}` names a layer, which is not allowed here", n.ident.text),
                ));
            }
            env.get(&n.ident.text).cloned().ok_or_else(|| {
                Diagnostic::new(
                    ErrorKind::Undefined,
                    n.span,
                    format!("param `{}` is not defined", n.ident.text),
                )
                .with_label("not defined")
                .with_help(did_you_mean(
                    &n.ident.text,
                    env.keys().map(|k| k.as_str()),
                    "param",
                ))
            })
        }
        ExprKind::Unary(op, e) => match eval_param_expr(e, env)? {
            Value::Poison => Ok(Value::Poison),
            v => unary(*op, &v, expr.span),
        },
        ExprKind::Binary(op, a, b) => {
            let (a, b) = (eval_param_expr(a, env)?, eval_param_expr(b, env)?);
            if a == Value::Poison || b == Value::Poison {
                return Ok(Value::Poison);
            }
            binary(*op, &a, &b, expr.span)
        }
        ExprKind::Call(call) => {
            let mut args = Vec::new();
            for arg in &call.args {
                match arg {
                    super::ast::Arg::Positional(e) => args.push((eval_param_expr(e, env)?, e.span)),
                    super::ast::Arg::Keyword(k, _) => {
                        return Err(Diagnostic::new(
                            ErrorKind::Unknown,
                            k.span,
                            format!("{} takes no keyword arguments", call.callee.text),
                        ))
                    }
                }
            }
            if args.iter().any(|(v, _)| *v == Value::Poison) {
                return Ok(Value::Poison);
            }
            eval_function(call, &args)
        }
    }
}

/// Names of the functions on numbers that expressions may call.
pub const FUNCTIONS: &[&str] = &["log2", "min", "max", "sqrt", "normal", "uniform", "constant"];

/// Evaluates a call of one of [`FUNCTIONS`] on evaluated arguments.
pub fn eval_function(call: &Call, args: &[(Value, crate::ir::Span)]) -> Result<Value, Diagnostic> {
    let name = call.callee.text.as_str();
    let arity = match name {
        "log2" | "sqrt" | "constant" => 1,
        "min" | "max" | "normal" | "uniform" => 2,
        _ => {
            return Err(Diagnostic::new(
                ErrorKind::Unknown,
                call.callee.span,
                format!("unknown function `{name}`"),
            )
            .with_label("not a function")
            .with_help(did_you_mean(name, FUNCTIONS.iter().copied(), "function")))
        }
    };
    if args.len() != arity {
        return Err(Diagnostic::new(
            ErrorKind::Missing,
            call.span,
            format!(
                "{name} takes {arity} argument{}, got {}",
                if arity == 1 { "" } else { "s" },
                args.len()
            ),
        ));
    }
    let number = |i: usize| -> Result<f64, Diagnostic> {
        match &args[i].0 {
            Value::Int(v) => Ok(*v as f64),
            Value::Float(v) => Ok(*v),
            v => Err(super::value::type_error(args[i].1, &format!("{name} needs a number"), v)),
        }
    };
    // Initializer values are stored as f32, so they must fit in one.
    let f32_value = |i: usize| -> Result<f32, Diagnostic> {
        let x = number(i)?;
        if (x as f32).is_finite() {
            return Ok(x as f32);
        }
        let message = format!("{} does not fit in a 32-bit float", format_float(x));
        Err(Diagnostic::new(ErrorKind::Range, args[i].1, message)
            .with_label("initializer values are 32-bit floats"))
    };
    match name {
        "log2" => log2(&args[0]),
        "sqrt" => {
            let x = number(0)?;
            if x < 0.0 {
                return Err(Diagnostic::new(
                    ErrorKind::Range,
                    args[0].1,
                    format!("sqrt of negative {}", format_float(x)),
                ));
            }
            Ok(Value::Float(x.sqrt()))
        }
        "min" | "max" => match (&args[0].0, &args[1].0) {
            (Value::Int(a), Value::Int(b)) => {
                Ok(Value::Int(if name == "min" { *a.min(b) } else { *a.max(b) }))
            }
            _ => {
                let (a, b) = (number(0)?, number(1)?);
                Ok(Value::Float(if name == "min" { a.min(b) } else { a.max(b) }))
            }
        },
        "normal" => {
            let (mean, std) = (f32_value(0)?, f32_value(1)?);
            if std < 0.0 {
                let message = "the standard deviation must not be negative";
                return Err(Diagnostic::new(ErrorKind::Range, args[1].1, message));
            }
            Ok(Value::Init(crate::ir::Init::Normal { mean, std }))
        }
        "uniform" => {
            let (low, high) = (f32_value(0)?, f32_value(1)?);
            if low > high {
                let message = "uniform needs low <= high";
                return Err(Diagnostic::new(ErrorKind::Range, call.span, message));
            }
            Ok(Value::Init(crate::ir::Init::Uniform { low, high }))
        }
        "constant" => Ok(Value::Init(crate::ir::Init::Constant { value: f32_value(0)? })),
        _ => unreachable!("arity matched the name above"),
    }
}

fn log2(arg: &(Value, crate::ir::Span)) -> Result<Value, Diagnostic> {
    match arg.0 {
        Value::Int(x) if x > 0 && x.count_ones() == 1 => Ok(Value::Int(x.trailing_zeros() as i64)),
        Value::Int(x) => Err(Diagnostic::new(
            ErrorKind::Range,
            arg.1,
            format!("log2({x}) is not a whole number"),
        )
        .with_label(format!("this is {x}"))
        .with_help("use a power of two (64, 128, 256, 512), or a float for a fractional log2")),
        Value::Float(x) if x > 0.0 => Ok(Value::Float(x.log2())),
        Value::Float(x) => {
            Err(Diagnostic::new(ErrorKind::Range, arg.1, format!("log2 of {}", format_float(x))))
        }
        ref v => Err(super::value::type_error(arg.1, "log2 needs a number", v)),
    }
}
