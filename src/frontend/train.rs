//! The train section: builds one iteration of training as a single flat graph with
//! phases, and checks its settings. Needs the module's parameters from the standalone
//! networks. Afterwards each step's loss is a scalar node of its phase that depends on
//! the parameters the step updates.
//!
//! Phase 0 contains `input`, `target` and the `let` values, and step `k` (1-based, in
//! file order) contains its loss terms. Each network call instantiates the network's nodes again,
//! and all instances read the same parameters.

use super::ast::{Arg, Call, Expr, ExprKind, LossTerm, StepDecl, TrainDecl, TrainItem};
use super::diagnostics::{Diagnostic, ErrorKind};
use super::lower::{Builder, Frame, ParamTable};
use super::program::{eval_param_expr, Program};
use super::suggest::did_you_mean;
use super::value::{type_error, Value};
use crate::ir::{
    DataSpec, Graph, Half, LabeledData, LossTerm as IrLossTerm, NodeId, Op, Optimizer, ParamKind,
    Schedule, Shape, Span, StepSpec, TrainSpec,
};
use std::collections::{HashMap, HashSet};

const SETTINGS: &[&str] = &["data", "epochs", "schedule", "infer"];

/// Builds the train section, or pushes its errors into `diags`.
pub fn lower_train(
    prog: &Program,
    train: &TrainDecl,
    params: &mut ParamTable,
    diags: &mut Vec<Diagnostic>,
) -> Option<TrainSpec> {
    // Settings first. An unknown setting is often a misspelt required one, so the
    // missing-setting errors would only repeat it.
    let errors_before = diags.len();
    let settings = collect_settings(train, diags);
    let misspelt = diags.len() > errors_before;
    let data = match settings.get("data") {
        Some(expr) => data_spec(prog, expr, diags),
        None if misspelt => None,
        None => {
            diags.push(missing_data(train));
            None
        }
    };
    let schedule = match settings.get("schedule") {
        Some(expr) => schedule(prog, expr, diags),
        None => Some(Schedule::Constant),
    };
    let epochs = match (settings.get("epochs"), misspelt || schedule.is_none()) {
        (None, true) => None,
        (expr, _) => schedule.as_ref().and_then(|s| epochs(prog, expr.copied(), s, train, diags)),
    };
    let (Some(data), Some(schedule)) = (data, schedule) else {
        check_steps_alone(prog, train, diags);
        return None;
    };
    let epochs = epochs?;

    // Then the iteration graph and the checks that need it.
    let mut builder = Builder::new(prog, params);
    let spec = build_graph(&mut builder, train, &data);
    diags.append(&mut builder.diags);
    let (graph, steps, first_net) = spec?;
    let generator = match settings.get("infer") {
        Some(expr) => infer_net(prog, expr, diags)?,
        None => first_net?,
    };
    let span = Some(train.span);
    let mut spec = TrainSpec { data, graph, steps, schedule, epochs, generator, span };
    fill_step_params(&mut spec, params);
    check_steps_reach_params(&spec, params, train, diags);
    check_lets_used(&spec, train, diags);
    Some(spec)
}

fn missing_data(train: &TrainDecl) -> Diagnostic {
    let message = "the train section has no `data` setting";
    Diagnostic::new(ErrorKind::Missing, train_head(train), message)
        .with_label("in this train section")
        .with_help(
            "bind the images, for example `data: paired(input=right, target=left, crop=256)`",
        )
}

fn train_head(train: &TrainDecl) -> Span {
    Span::new(train.span.start, train.span.start + "train".len())
}

fn collect_settings<'a>(
    train: &'a TrainDecl,
    diags: &mut Vec<Diagnostic>,
) -> HashMap<&'a str, &'a Expr> {
    let mut settings: HashMap<&str, &Expr> = HashMap::new();
    for item in &train.items {
        let TrainItem::Setting { key, value, .. } = item else { continue };
        if !SETTINGS.contains(&key.text.as_str()) {
            let d = Diagnostic::new(
                ErrorKind::Unknown,
                key.span,
                format!("unknown train setting `{}`", key.text),
            )
            .with_label("not a setting")
            .with_help(did_you_mean(&key.text, SETTINGS.iter().copied(), "setting"));
            diags.push(d);
            continue;
        }
        if settings.insert(&key.text, value).is_some() {
            let message = format!("train setting `{}` is given twice", key.text);
            diags.push(
                Diagnostic::new(ErrorKind::Duplicate, key.span, message)
                    .with_label("given again here"),
            );
        }
    }
    settings
}

/// The keyword arguments of a settings call such as `paired(...)` or `adam(...)`.
struct SettingArgs {
    /// Whether some argument failed; its error is already reported.
    failed: bool,
    /// Keys whose value failed, so that they are not also reported as missing.
    rejected: HashSet<String>,
    call_span: Span,
    name: String,
    values: HashMap<String, (Value, Span)>,
}

fn setting_call<'e>(
    expr: &'e Expr,
    allowed: &[&str],
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'e Call> {
    match &expr.kind {
        ExprKind::Call(call) if allowed.contains(&call.callee.text.as_str()) => Some(call),
        ExprKind::Call(call) => {
            let message = format!("unknown {what} `{}`", call.callee.text);
            let d = Diagnostic::new(ErrorKind::Unknown, call.callee.span, message)
                .with_help(did_you_mean(&call.callee.text, allowed.iter().copied(), what));
            diags.push(d);
            None
        }
        ExprKind::Name(n) if allowed.contains(&n.ident.text.as_str()) => {
            let message = format!("`{}` needs parentheses: `{}(...)`", n.ident.text, n.ident.text);
            diags.push(Diagnostic::new(ErrorKind::Syntax, n.span, message));
            None
        }
        _ => {
            let list =
                allowed.iter().map(|a| format!("`{a}(...)`")).collect::<Vec<_>>().join(" or ");
            diags.push(Diagnostic::new(
                ErrorKind::Type,
                expr.span,
                format!("expected a {what}: {list}"),
            ));
            None
        }
    }
}

/// Evaluates the arguments of a settings call against its keys; `positional` keys may be
/// given by position. `left` and `right` evaluate to strings, and the keys in `sides`
/// take one of them (or a param whose value is one).
fn setting_args(
    prog: &Program,
    call: &Call,
    keys: &[&str],
    positional: usize,
    sides: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> Option<SettingArgs> {
    let name = call.callee.text.clone();
    let mut values = HashMap::new();
    let mut rejected = HashSet::new();
    let mut position = 0;
    let mut ok = true;
    for arg in &call.args {
        let (key, expr) = match arg {
            Arg::Positional(e) => {
                position += 1;
                if position > positional {
                    let d = Diagnostic::new(
                        ErrorKind::Type,
                        e.span,
                        format!("too many arguments for {name}"),
                    )
                    .with_help(format!("give them as key=value; {name} takes {}", keys.join(", ")));
                    diags.push(d);
                    ok = false;
                    continue;
                }
                (keys[position - 1].to_string(), e)
            }
            Arg::Keyword(k, e) => {
                if !keys.contains(&k.text.as_str()) {
                    let d = Diagnostic::new(
                        ErrorKind::Unknown,
                        k.span,
                        format!("unknown argument `{}` for {name}", k.text),
                    )
                    .with_label("not an argument of this call")
                    .with_help(did_you_mean(
                        &k.text,
                        keys.iter().copied(),
                        "argument",
                    ));
                    diags.push(d);
                    ok = false;
                    continue;
                }
                (k.text.clone(), e)
            }
        };
        let value = match &e_kind_side(expr) {
            Some(side) => Ok(Value::Str(side.to_string())),
            None if sides.contains(&key.as_str()) => side_value(prog, &name, &key, expr),
            None => eval_param_expr(expr, &prog.params),
        };
        match value {
            Ok(Value::Poison) => {
                rejected.insert(key);
                ok = false;
            }
            Ok(v) => {
                if values.insert(key.clone(), (v, expr.span)).is_some() {
                    diags.push(Diagnostic::new(
                        ErrorKind::Duplicate,
                        expr.span,
                        format!("argument `{key}` of {name} is given twice"),
                    ));
                    ok = false;
                }
            }
            Err(d) => {
                diags.push(d);
                rejected.insert(key);
                ok = false;
            }
        }
    }
    Some(SettingArgs { failed: !ok, rejected, call_span: call.span, name, values })
}

/// Evaluates the value of a key that names a half of the image, such as `input` of
/// `paired`. A bare name other than `left`, `right` or a param is reported as an invalid
/// value of the key rather than as an undefined param.
fn side_value(prog: &Program, call: &str, key: &str, expr: &Expr) -> Result<Value, Diagnostic> {
    match &expr.kind {
        ExprKind::Name(n) if n.index.is_none() && !prog.params.contains_key(&n.ident.text) => {
            let message = format!("invalid value `{}` for `{key}` of {call}", n.ident.text);
            Err(Diagnostic::new(ErrorKind::Type, expr.span, message)
                .with_label("expected `left` or `right`")
                .with_help(format!(
                    "write {key}=left or {key}=right, the half of each side-by-side image \
                     that is the {key}"
                )))
        }
        _ => eval_param_expr(expr, &prog.params),
    }
}

fn e_kind_side(expr: &Expr) -> Option<&'static str> {
    match &expr.kind {
        ExprKind::Name(n) if n.index.is_none() && n.ident.text == "left" => Some("left"),
        ExprKind::Name(n) if n.index.is_none() && n.ident.text == "right" => Some("right"),
        _ => None,
    }
}

impl SettingArgs {
    fn int(
        &self,
        key: &str,
        default: Option<i64>,
        range: std::ops::RangeInclusive<i64>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<i64> {
        match self.values.get(key) {
            None if self.rejected.contains(key) => None,
            None => default.or_else(|| {
                let d = Diagnostic::new(
                    ErrorKind::Missing,
                    self.call_span,
                    format!("{} needs `{key}`", self.name),
                )
                .with_label(format!("`{key}` is missing"));
                diags.push(d);
                None
            }),
            Some((Value::Int(i), span)) => {
                if range.contains(i) {
                    Some(*i)
                } else {
                    let message = format!("`{key}` of {} is {i}, out of range", self.name);
                    let label = format!("must be between {} and {}", range.start(), range.end());
                    diags.push(Diagnostic::new(ErrorKind::Range, *span, message).with_label(label));
                    None
                }
            }
            Some((other, span)) => {
                diags.push(type_error(
                    *span,
                    &format!("`{key}` of {} must be an integer", self.name),
                    other,
                ));
                None
            }
        }
    }

    fn float(
        &self,
        key: &str,
        default: Option<f32>,
        range: std::ops::RangeInclusive<f32>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<f32> {
        let (value, span) = match self.values.get(key) {
            None if self.rejected.contains(key) => return None,
            None => {
                return default.or_else(|| {
                    let d = Diagnostic::new(
                        ErrorKind::Missing,
                        self.call_span,
                        format!("{} needs `{key}`", self.name),
                    )
                    .with_label(format!("`{key}` is missing"));
                    diags.push(d);
                    None
                })
            }
            Some((Value::Int(i), span)) => (*i as f64, *span),
            Some((Value::Float(f), span)) => (*f, *span),
            Some((other, span)) => {
                diags.push(type_error(
                    *span,
                    &format!("`{key}` of {} must be a number", self.name),
                    other,
                ));
                return None;
            }
        };
        let v = value as f32;
        if v.is_finite() && range.contains(&v) {
            return Some(v);
        }
        let message = format!("`{key}` of {} is {value}, out of range", self.name);
        let label = format!("must be between {} and {}", range.start(), range.end());
        diags.push(Diagnostic::new(ErrorKind::Range, span, message).with_label(label));
        None
    }

    fn bool(&self, key: &str, default: bool, diags: &mut Vec<Diagnostic>) -> Option<bool> {
        match self.values.get(key) {
            None if self.rejected.contains(key) => None,
            None => Some(default),
            Some((Value::Bool(b), _)) => Some(*b),
            Some((other, span)) => {
                diags.push(type_error(
                    *span,
                    &format!("`{key}` of {} must be `true` or `false`", self.name),
                    other,
                ));
                None
            }
        }
    }

    fn half(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Option<Half> {
        match self.values.get(key) {
            Some((Value::Str(s), _)) if s == "left" => Some(Half::Left),
            Some((Value::Str(s), _)) if s == "right" => Some(Half::Right),
            Some((other, span)) => {
                diags.push(type_error(
                    *span,
                    &format!("`{key}` of {} must be `left` or `right`", self.name),
                    other,
                ));
                None
            }
            None if self.rejected.contains(key) => None,
            None => {
                let d = Diagnostic::new(
                    ErrorKind::Missing,
                    self.call_span,
                    format!("{} needs `{key}`", self.name),
                )
                .with_label(format!(
                    "say which half of the image is the {key}: {key}=left or {key}=right"
                ));
                diags.push(d);
                None
            }
        }
    }
}

const MAX_IMAGE: i64 = 1 << 14;

fn data_spec(prog: &Program, expr: &Expr, diags: &mut Vec<Diagnostic>) -> Option<DataSpec> {
    let call = setting_call(expr, &["paired", "labeled"], "data binding", diags)?;
    if call.callee.text == "labeled" {
        return labeled_spec(prog, call, diags);
    }

    let keys = ["input", "target", "resize", "crop", "flip", "batch"];
    let args = setting_args(prog, call, &keys, 0, &["input", "target"], diags)?;
    let input = args.half("input", diags);
    let target = args.half("target", diags);
    let resize =
        args.values.contains_key("resize").then(|| args.int("resize", None, 1..=MAX_IMAGE, diags));
    let crop =
        args.values.contains_key("crop").then(|| args.int("crop", None, 1..=MAX_IMAGE, diags));
    let flip = args.bool("flip", false, diags);
    let batch = args.int("batch", Some(1), 1..=65_536, diags);

    // Cross-checks, reported even when another argument failed.
    if let (Some(i), Some(t)) = (input, target) {
        if i == t {
            let span = args.values.get("target").map_or(call.span, |v| v.1);
            let message = "input and target are the same half of the image";
            let d = Diagnostic::new(ErrorKind::Type, span, message)
                .with_label("the input is this half too")
                .with_help("set one to left and the other to right");
            diags.push(d);
            return None;
        }
    }
    if args.failed {
        return None;
    }

    let (input, target, flip, batch) = (input?, target?, flip?, batch?);
    let resize = match resize {
        Some(r) => Some(r? as usize),
        None => None,
    };
    let crop = match crop {
        Some(c) => Some(c? as usize),
        None => None,
    };
    if let (Some(r), Some(c)) = (resize, crop) {
        if c > r {
            let message = format!("crop {c} is larger than the resized image {r}");
            diags.push(
                Diagnostic::new(ErrorKind::Range, call.span, message)
                    .with_help("make crop at most resize"),
            );
            return None;
        }
    }
    if resize.is_none() && crop.is_none() {
        let d =
            Diagnostic::new(ErrorKind::Missing, call.span, "paired data needs `crop` or `resize`")
                .with_label("the image size of the network input is unknown")
                .with_help("add crop=256 (or resize=256) so that the input shape is fixed");
        diags.push(d);
        return None;
    }
    Some(DataSpec { input, target, resize, crop, flip, batch: batch as usize, labeled: None })
}

/// `labeled(classes=10, size=32, channels=3)`: one image per example, one folder per class.
fn labeled_spec(prog: &Program, call: &Call, diags: &mut Vec<Diagnostic>) -> Option<DataSpec> {
    let keys = ["classes", "size", "channels", "flip", "batch"];
    let args = setting_args(prog, call, &keys, 0, &[], diags)?;
    let classes = args.int("classes", None, 2..=1_000_000, diags);
    let size = args.int("size", None, 1..=MAX_IMAGE, diags);
    let channels = args.int("channels", Some(3), 1..=4, diags);
    let flip = args.bool("flip", false, diags);
    let batch = args.int("batch", Some(1), 1..=65_536, diags);
    if args.failed {
        return None;
    }
    let (classes, size, channels) = (classes? as usize, size? as usize, channels? as usize);
    if channels == 2 || channels == 4 {
        let span = args.values.get("channels").map_or(call.span, |v| v.1);
        let d = Diagnostic::new(
            ErrorKind::Range,
            span,
            format!("images with {channels} channels are not supported"),
        )
        .with_label("must be 1 (grayscale) or 3 (RGB)");
        diags.push(d);
        return None;
    }
    Some(DataSpec {
        input: Half::Left,
        target: Half::Right,
        resize: Some(size),
        crop: None,
        flip: flip?,
        batch: batch? as usize,
        labeled: Some(LabeledData { classes, channels }),
    })
}

fn schedule(prog: &Program, expr: &Expr, diags: &mut Vec<Diagnostic>) -> Option<Schedule> {
    let call = setting_call(expr, &["constant_lr", "linear_decay"], "schedule", diags)?;
    if call.callee.text == "constant_lr" {
        setting_args(prog, call, &[], 0, &[], diags)?;
        return Some(Schedule::Constant);
    }
    let args = setting_args(prog, call, &["constant", "decay"], 2, &[], diags)?;
    let constant = args.int("constant", None, 0..=1_000_000, diags);
    let decay = args.int("decay", None, 0..=1_000_000, diags);
    if args.failed {
        return None;
    }
    Some(Schedule::LinearDecay { constant: constant? as usize, decay: decay? as usize })
}

fn epochs(
    prog: &Program,
    expr: Option<&Expr>,
    schedule: &Schedule,
    train: &TrainDecl,
    diags: &mut Vec<Diagnostic>,
) -> Option<usize> {
    let Some(expr) = expr else {
        return match schedule {
            Schedule::LinearDecay { constant, decay } => Some(constant + decay),
            Schedule::Constant => {
                let d = Diagnostic::new(
                    ErrorKind::Missing,
                    train_head(train),
                    "the train section has no `epochs` setting",
                )
                .with_label("in this train section")
                .with_help(
                    "add `epochs: 10`, or a schedule such as `schedule: linear_decay(100, 100)`",
                );
                diags.push(d);
                None
            }
        };
    };
    match eval_param_expr(expr, &prog.params) {
        Ok(Value::Int(e)) if (1..=1_000_000).contains(&e) => Some(e as usize),
        Ok(Value::Int(e)) => {
            let d =
                Diagnostic::new(ErrorKind::Range, expr.span, format!("epochs {e} is out of range"))
                    .with_label("must be between 1 and 1000000");
            diags.push(d);
            None
        }
        Ok(Value::Poison) => None,
        Ok(other) => {
            diags.push(type_error(expr.span, "epochs must be an integer", &other));
            None
        }
        Err(d) => {
            diags.push(d);
            None
        }
    }
}

fn infer_net(prog: &Program, expr: &Expr, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let names: Vec<&str> = prog.nets.iter().map(|n| n.name.text.as_str()).collect();
    match &expr.kind {
        ExprKind::Name(n) if n.index.is_none() && names.contains(&n.ident.text.as_str()) => {
            Some(n.ident.text.clone())
        }
        ExprKind::Name(n) => {
            let d = Diagnostic::new(
                ErrorKind::Undefined,
                n.span,
                format!("net `{}` is not defined", n.ident.text),
            )
            .with_help(did_you_mean(&n.ident.text, names.iter().copied(), "net"));
            diags.push(d);
            None
        }
        _ => {
            diags.push(Diagnostic::new(
                ErrorKind::Type,
                expr.span,
                "infer names a net, as `infer: generator`",
            ));
            None
        }
    }
}

/// Builds the iteration graph; returns it with the steps and the first network a `let`
/// calls (the default for `infer`).
fn build_graph(
    b: &mut Builder,
    train: &TrainDecl,
    data: &DataSpec,
) -> Option<(Graph, Vec<StepSpec>, Option<String>)> {
    let size = data.crop.or(data.resize).expect("data_spec requires crop or resize");
    let (input_shape, target_shape) = match &data.labeled {
        Some(l) => (Shape::new([data.batch, l.channels, size, size]), Shape::new([data.batch])),
        None => {
            let shape = Shape::new([data.batch, 3, size, size]);
            (shape.clone(), shape)
        }
    };
    let input = b.graph.add_leaf(Op::Input { name: "input".into() }, input_shape, "input", None);
    let target =
        b.graph.add_leaf(Op::Input { name: "target".into() }, target_shape, "target", None);
    let mut lets = HashMap::from([
        ("input".to_string(), Value::Tensor(input)),
        ("target".to_string(), Value::Tensor(target)),
    ]);
    let mut first_net = None;
    let mut steps = Vec::new();
    let mut term_names: HashMap<String, Span> = HashMap::new();
    let mut failed = false;

    for item in &train.items {
        match item {
            TrainItem::Setting { .. } => {}
            TrainItem::Let { name, value, .. } => {
                if lets.contains_key(&name.text) || term_names.contains_key(&name.text) {
                    let message = format!("`{}` is defined twice in the train section", name.text);
                    b.error(Diagnostic::new(ErrorKind::Duplicate, name.span, message));
                    failed = true;
                    continue;
                }
                if let ExprKind::Call(call) = &value.kind {
                    if first_net.is_none() && b.prog.net(&call.callee.text).is_some() {
                        first_net = Some(call.callee.text.clone());
                    }
                }
                b.phase = 0;
                b.phase_prefix = name.text.clone();
                let v = eval_in_train(b, &lets, &name.text, value);
                if let Value::Tensor(t) = v {
                    b.graph.outputs.push((name.text.clone(), t));
                }
                failed |= v == Value::Poison;
                lets.insert(name.text.clone(), v);
            }
            TrainItem::Step(step) => {
                let phase = steps.len() as u32 + 1;
                match lower_step(b, &lets, step, phase, &mut term_names) {
                    Some(spec) => steps.push(spec),
                    None => failed = true,
                }
            }
        }
    }
    if steps.is_empty() && !failed {
        let d = Diagnostic::new(ErrorKind::Missing, train_head(train), "the train section has no `step`")
            .with_help("add a step, for example `step classifier: sgd(lr=0.01) minimize cross_entropy(classifier(input), target)`");
        b.error(d);
        return None;
    }
    let first_net = first_net.or_else(|| steps.first().map(|s| s.name.clone()));
    (!failed).then(|| (std::mem::take(&mut b.graph), steps, first_net))
}

fn eval_in_train(
    b: &mut Builder,
    lets: &HashMap<String, Value>,
    prefix: &str,
    expr: &Expr,
) -> Value {
    b.frames.push(Frame::Train(lets.clone()));
    b.set_node_prefix(prefix);
    let value = b.eval(expr);
    b.frames.pop();
    value
}

fn lower_step(
    b: &mut Builder,
    lets: &HashMap<String, Value>,
    step: &StepDecl,
    phase: u32,
    term_names: &mut HashMap<String, Span>,
) -> Option<StepSpec> {
    let name = step.net.text.clone();
    let net_names: Vec<&str> = b.prog.nets.iter().map(|n| n.name.text.as_str()).collect();
    if !net_names.contains(&name.as_str()) {
        let d = Diagnostic::new(
            ErrorKind::Undefined,
            step.net.span,
            format!("step `{name}` names no net"),
        )
        .with_label("a step updates the parameters of the net it names")
        .with_help(did_you_mean(&name, net_names.iter().copied(), "net"));
        b.error(d);
        return None;
    }
    let optimizer = optimizer(b, &step.optimizer);
    b.phase = phase;
    b.phase_prefix = format!("step{phase}");

    let mut terms = Vec::new();
    let mut ok = optimizer.is_some();
    for (k, term) in step.terms.iter().enumerate() {
        let term_name = term_name(term, &name, k, step.terms.len());
        if let Some(first) = term_names
            .get(&term_name)
            .copied()
            .or_else(|| lets.contains_key(&term_name).then_some(term.span))
        {
            let message = format!("loss term `{term_name}` is defined twice");
            let d = Diagnostic::new(
                ErrorKind::Duplicate,
                term.name.as_ref().map_or(term.span, |n| n.span),
                message,
            )
            .with_note(first, "first defined here")
            .with_help("give each term its own name, as `g_l1: 100 * l1(fake, target)`");
            b.error(d);
            ok = false;
            continue;
        }
        term_names.insert(term_name.clone(), term.name.as_ref().map_or(term.span, |n| n.span));
        let value = eval_in_train(b, lets, &term_name, &term.expr);
        match value {
            Value::Tensor(t) if b.graph.shape(t).is_scalar() => {
                b.graph.outputs.push((term_name.clone(), t));
                terms.push(IrLossTerm { name: term_name, node: t });
            }
            Value::Tensor(t) => {
                let shape = b.graph.shape(t).clone();
                let d = Diagnostic::new(
                    ErrorKind::Shape,
                    term.expr.span,
                    format!("loss term `{term_name}` is a tensor of shape {shape}, not a scalar"),
                )
                .with_label(format!("this is {shape}"))
                .with_help(
                    "a loss op (bce_logits, l1, mse, cross_entropy) or mean(...) makes a scalar",
                );
                b.error(d);
                ok = false;
            }
            Value::Poison => ok = false,
            other => {
                let d = type_error(
                    term.expr.span,
                    &format!("loss term `{term_name}` must be a tensor"),
                    &other,
                )
                .with_help("a constant has no gradient, so it cannot be minimized");
                b.error(d);
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let loss = sum_terms(b, &terms, &name, step.span)?;
    b.graph.outputs.push((format!("{name}.loss"), loss));
    Some(StepSpec {
        name,
        phase,
        loss,
        terms,
        params: Vec::new(),
        optimizer: optimizer?,
        span: Some(step.span),
    })
}

/// Returns the name of a term: its label, else `<step>_loss` for a single term or
/// `<step>_<k>`.
fn term_name(term: &LossTerm, step: &str, k: usize, count: usize) -> String {
    match &term.name {
        Some(n) => n.text.clone(),
        None if count == 1 => format!("{step}_loss"),
        None => format!("{step}_{}", k + 1),
    }
}

fn sum_terms(b: &mut Builder, terms: &[IrLossTerm], step: &str, span: Span) -> Option<NodeId> {
    if terms.len() == 1 {
        return Some(terms[0].node);
    }
    b.set_node_prefix(step);
    let mut total = terms[0].node;
    for (k, term) in terms.iter().enumerate().skip(1) {
        let role = if k + 1 == terms.len() { "loss" } else { "partial_loss" };
        let name = b.node_name(role);
        match b.add_op(Op::Add, &[total, term.node], name, span) {
            Value::Tensor(t) => total = t,
            _ => return None,
        }
    }
    Some(total)
}

fn optimizer(b: &mut Builder, call: &Call) -> Option<Optimizer> {
    let mut diags = Vec::new();
    let expr = Expr { kind: ExprKind::Call(call.clone()), span: call.span };
    let result = (|| {
        let call = setting_call(&expr, &["adam", "sgd"], "optimizer", &mut diags)?;
        if call.callee.text == "adam" {
            let args =
                setting_args(b.prog, call, &["lr", "beta1", "beta2", "eps"], 1, &[], &mut diags)?;
            let lr = args.float("lr", None, 0.0..=10.0, &mut diags);
            let beta1 = args.float("beta1", Some(0.9), 0.0..=0.999_999, &mut diags);
            let beta2 = args.float("beta2", Some(0.999), 0.0..=0.999_999_9, &mut diags);
            let eps = args.float("eps", Some(1e-8), 1e-30..=1.0, &mut diags);
            if args.failed {
                return None;
            }
            return Some(Optimizer::Adam { lr: lr?, beta1: beta1?, beta2: beta2?, eps: eps? });
        }
        let args = setting_args(b.prog, call, &["lr", "momentum"], 1, &[], &mut diags)?;
        let lr = args.float("lr", None, 0.0..=10.0, &mut diags);
        let momentum = args.float("momentum", Some(0.0), 0.0..=0.999_999, &mut diags);
        if args.failed {
            return None;
        }
        Some(Optimizer::Sgd { lr: lr?, momentum: momentum? })
    })();
    b.diags.append(&mut diags);
    result
}

/// Checks what the steps declare without building them, when the data binding failed and
/// the input shapes are unknown.
fn check_steps_alone(prog: &Program, train: &TrainDecl, diags: &mut Vec<Diagnostic>) {
    let mut params = ParamTable::default();
    let mut b = Builder::new(prog, &mut params);
    for item in &train.items {
        let TrainItem::Step(step) = item else { continue };
        let names: Vec<&str> = prog.nets.iter().map(|n| n.name.text.as_str()).collect();
        if !names.contains(&step.net.text.as_str()) {
            let message = format!("step `{}` names no net", step.net.text);
            let d = Diagnostic::new(ErrorKind::Undefined, step.net.span, message)
                .with_help(did_you_mean(&step.net.text, names.iter().copied(), "net"));
            b.error(d);
        }
        optimizer(&mut b, &step.optimizer);
    }
    diags.append(&mut b.diags);
}

fn fill_step_params(spec: &mut TrainSpec, params: &ParamTable) {
    for step in &mut spec.steps {
        step.params = params
            .decls
            .iter()
            .enumerate()
            .filter(|(_, p)| p.net == step.name && p.kind == ParamKind::Trainable)
            .map(|(id, _)| id)
            .collect();
    }
}

/// Rejects a step whose loss reads none of the parameters it updates: its gradient would
/// be zero.
fn check_steps_reach_params(
    spec: &TrainSpec,
    params: &ParamTable,
    train: &TrainDecl,
    diags: &mut Vec<Diagnostic>,
) {
    for step in &spec.steps {
        let mut stack = vec![step.loss];
        let mut seen = std::collections::HashSet::new();
        let mut reaches = false;
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            let node = spec.graph.node(n);
            match node.op {
                Op::Param { id } if params.decls[id].net == step.name => {
                    reaches = true;
                    break;
                }
                Op::StopGradient => continue,
                _ => stack.extend(spec.graph.operands(n)),
            }
        }
        if !reaches {
            let span = step.span.unwrap_or(train.span);
            let message = format!(
                "the loss of step `{}` does not depend on the parameters of net `{}`",
                step.name, step.name
            );
            let d = Diagnostic::new(ErrorKind::Type, span, message)
                .with_label("this step would update nothing")
                .with_help(format!("call `{}` in the loss, outside stop_gradient(...)", step.name));
            diags.push(d);
        }
    }
}

/// Rejects a `let` value that no step reads: it would be computed every iteration for
/// nothing, and it is most often a misspelt reference in a loss.
fn check_lets_used(spec: &TrainSpec, train: &TrainDecl, diags: &mut Vec<Diagnostic>) {
    let mut reached = std::collections::HashSet::new();
    let mut stack: Vec<NodeId> = spec.steps.iter().map(|s| s.loss).collect();
    while let Some(n) = stack.pop() {
        if reached.insert(n) {
            stack.extend(spec.graph.operands(n));
        }
    }
    for item in &train.items {
        let TrainItem::Let { name, .. } = item else { continue };
        let Some(node) = spec.graph.output(&name.text) else { continue };
        if reached.contains(&node) {
            continue;
        }
        let message = format!("value `{}` of the train section is not used by any step", name.text);
        let d = Diagnostic::new(ErrorKind::Unused, name.span, message)
            .with_label("no loss reads this value")
            .with_help(format!("use `{}` in a loss term, or remove it", name.text));
        diags.push(d);
    }
}
