//! The op catalogue of the language: each op's arguments, defaults and parameters, and
//! how a call of it becomes IR nodes. The shape rules themselves live with the IR ops in
//! `ir::op`. This file adds the parameters (weights, batch-norm statistics) that the
//! front end infers from the input shape.
//!
//! Defaults follow PyTorch 2.x where it has one: `stride=1`, `padding=0`, `bias=true`,
//! weights and biases drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), batch-norm
//! `eps=1e-5` and `momentum=0.1`, leaky ReLU slope 0.01, dropout 0.5.

use super::ast::{Arg, Call, Ident};
use super::diagnostics::{Diagnostic, ErrorKind};
use super::lower::Builder;
use super::program::eval_param_expr;
use super::suggest::did_you_mean;
use super::value::{format_float, type_error, Value};
use crate::ir::{Init, NodeId, Op, ParamKind, Shape, Span};
use std::collections::HashMap;

/// The maximum number of channels or features of one layer.
const MAX_CHANNELS: i64 = 1 << 20;
/// The largest kernel, stride or padding.
const MAX_WINDOW: i64 = 1 << 12;
/// The maximum number of elements of one parameter or activation. WGSL indexes buffers
/// with 32-bit integers, so larger tensors could not run.
const MAX_ELEMENTS: usize = 1 << 31;

/// The calling convention of an op.
pub struct Signature {
    pub name: &'static str,
    /// The allowed number of tensor operands, inclusive.
    pub inputs: (usize, usize),
    /// The keyword arguments, of which the first `positional` may also be given by
    /// position after the tensors.
    pub keys: &'static [&'static str],
    pub positional: usize,
    /// Whether the op reads one input, so that a chain can feed it (`x -> relu`) and a
    /// layer written without input reads the layer above.
    pub layer: bool,
    /// Whether a number in a tensor position becomes a scalar constant, as the target of
    /// `bce_logits(logits, 1)` does.
    pub numbers_as_tensors: bool,
}

const fn sig(
    name: &'static str,
    inputs: (usize, usize),
    keys: &'static [&'static str],
    positional: usize,
    layer: bool,
) -> Signature {
    Signature { name, inputs, keys, positional, layer, numbers_as_tensors: false }
}

const CONV_KEYS: &[&str] =
    &["out_channels", "kernel", "stride", "padding", "bias", "init", "bias_init"];
const CONV_T_KEYS: &[&str] =
    &["out_channels", "kernel", "stride", "padding", "output_padding", "bias", "init", "bias_init"];

static SIGNATURES: &[Signature] = &[
    sig("conv2d", (1, 1), CONV_KEYS, 1, true),
    sig("conv_transpose2d", (1, 1), CONV_T_KEYS, 1, true),
    sig("batch_norm", (1, 1), &["eps", "momentum", "scale_init", "offset_init"], 0, true),
    sig("linear", (1, 1), &["out_features", "bias", "init", "bias_init"], 1, true),
    sig("relu", (1, 1), &[], 0, true),
    sig("leaky_relu", (1, 1), &["slope"], 1, true),
    sig("tanh", (1, 1), &[], 0, true),
    sig("sigmoid", (1, 1), &[], 0, true),
    sig("dropout", (1, 1), &["p"], 1, true),
    sig("flatten", (1, 1), &[], 0, true),
    sig("max_pool2d", (1, 1), &["kernel", "stride"], 2, true),
    sig("stop_gradient", (1, 1), &[], 0, true),
    sig("sum", (1, 1), &[], 0, true),
    sig("mean", (1, 1), &[], 0, true),
    sig("concat", (1, usize::MAX), &["axis"], 0, false),
    Signature { numbers_as_tensors: true, ..sig("bce_logits", (2, 2), &[], 0, false) },
    sig("l1", (2, 2), &[], 0, false),
    sig("mse", (2, 2), &[], 0, false),
    sig("cross_entropy", (2, 2), &[], 0, false),
];

/// Names the train section gives meaning to, which blocks and nets may not take.
const TRAIN_NAMES: &[&str] = &["paired", "labeled", "adam", "sgd", "constant_lr", "linear_decay"];

pub fn signature(name: &str) -> Option<&'static Signature> {
    SIGNATURES.iter().find(|s| s.name == name)
}

pub fn layer_op_names() -> impl Iterator<Item = &'static str> + Clone {
    SIGNATURES.iter().map(|s| s.name)
}

pub fn all_names() -> impl Iterator<Item = &'static str> + Clone {
    layer_op_names()
}

/// Returns whether `name` belongs to the language, so that no block or net may take it.
pub fn is_builtin(name: &str) -> bool {
    signature(name).is_some()
        || super::program::FUNCTIONS.contains(&name)
        || TRAIN_NAMES.contains(&name)
        || ["input", "target"].contains(&name)
}

pub fn unknown_key(op: &str, key: &Ident, sig: &Signature) -> Diagnostic {
    let help = if sig.keys.is_empty() {
        format!("{op} takes no keyword arguments")
    } else {
        did_you_mean(&key.text, sig.keys.iter().copied(), "argument")
    };
    Diagnostic::new(
        ErrorKind::Unknown,
        key.span,
        format!("unknown argument `{}` for {op}", key.text),
    )
    .with_label("not an argument of this op")
    .with_help(help)
}

/// The values of a conv2d or conv_transpose2d call; absent initializers take the
/// fan-in default.
struct ConvArgs {
    out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    bias: bool,
    init: Option<Init>,
    bias_init: Option<Init>,
}

/// The arguments of one op call, sorted into tensors and named values.
pub struct Bound {
    pub op: &'static str,
    pub span: Span,
    pub tensors: Vec<(NodeId, Span)>,
    pub values: HashMap<&'static str, (Value, Span)>,
    /// Whether a tensor operand is missing because of an earlier error. The values are
    /// still checked, so that their own errors are reported too.
    pub poisoned: bool,
}

impl<'p, 'a> Builder<'p, 'a> {
    /// Lowers a call of a built-in op.
    pub(super) fn build_op(
        &mut self,
        call: &Call,
        sig: &'static Signature,
        piped: Option<(Value, Span)>,
    ) -> Value {
        let Some(bound) = self.bind(call, sig, piped) else { return Value::Poison };
        if bound.poisoned {
            self.check_values(&bound);
            return Value::Poison;
        }
        let x = bound.tensors.first().map(|&(t, _)| t);
        let single = |op: Op| (op, x);
        let (op, x) = match sig.name {
            "conv2d" | "conv_transpose2d" => return self.conv(&bound).unwrap_or(Value::Poison),
            "batch_norm" => return self.batch_norm(&bound).unwrap_or(Value::Poison),
            "linear" => return self.linear(&bound).unwrap_or(Value::Poison),
            "relu" => single(Op::Relu),
            "tanh" => single(Op::Tanh),
            "sigmoid" => single(Op::Sigmoid),
            "flatten" => single(Op::Flatten),
            "stop_gradient" => single(Op::StopGradient),
            "sum" => single(Op::Sum { axes: Vec::new() }),
            "mean" => single(Op::Mean { axes: Vec::new() }),
            "leaky_relu" => {
                let Some(slope) = self.slope(&bound) else { return Value::Poison };
                single(Op::LeakyRelu { slope })
            }
            "dropout" => {
                let Some(p) = self.dropout_p(&bound) else { return Value::Poison };
                // NOTE: dropout(0) is the identity in both modes, so it adds no node.
                if p == 0.0 {
                    return Value::Tensor(bound.tensors[0].0);
                }
                single(Op::Dropout { p })
            }
            "max_pool2d" => {
                let Some((k, s)) = self.pool_window(&bound) else { return Value::Poison };
                single(Op::MaxPool2d { kernel: [k, k], stride: [s, s] })
            }
            "concat" => {
                let rank = self.graph.shape(bound.tensors[0].0).rank() as i64;
                let Some(axis) = self.int(&bound, "axis", Some(1), 0..=rank.max(1) - 1) else {
                    return Value::Poison;
                };
                let operands: Vec<NodeId> = bound.tensors.iter().map(|t| t.0).collect();
                let name = self.node_name("concat");
                return self.add_op(
                    Op::Concat { axis: axis as usize },
                    &operands,
                    name,
                    bound.span,
                );
            }
            "bce_logits" | "l1" | "mse" | "cross_entropy" => {
                let op = match sig.name {
                    "bce_logits" => Op::BceWithLogits,
                    "l1" => Op::L1Loss,
                    "mse" => Op::MseLoss,
                    _ => Op::CrossEntropy,
                };
                let operands: Vec<NodeId> = bound.tensors.iter().map(|t| t.0).collect();
                let name = self.node_name(sig.name);
                return self.add_op(op, &operands, name, bound.span);
            }
            other => unreachable!("op {other} has a signature but no lowering"),
        };
        let x = x.expect("single-input ops were bound with one tensor");
        let name = self.node_name(op.name());
        self.add_op(op, &[x], name, bound.span)
    }

    /// Sorts a call's arguments by the signature and fills in the file's `defaults`.
    /// Returns `None` after an error, or when an argument is already invalid.
    fn bind(
        &mut self,
        call: &Call,
        sig: &'static Signature,
        piped: Option<(Value, Span)>,
    ) -> Option<Bound> {
        let op = sig.name;
        let mut bound = Bound {
            op,
            span: call.span,
            tensors: Vec::new(),
            values: HashMap::new(),
            poisoned: false,
        };
        let mut poisoned = false;
        // Operands that failed earlier, such as a piped input from a failed layer. They
        // still fill their operand slot, so the values after them are not taken for one.
        let mut failed_operands = 0;
        if let Some((value, span)) = piped {
            match value {
                Value::Tensor(t) => bound.tensors.push((t, span)),
                Value::Poison => {
                    poisoned = true;
                    failed_operands += 1;
                }
                other => {
                    self.error(type_error(span, &format!("{op} needs a tensor input"), &other));
                    return None;
                }
            }
        }

        // Leading tensors are the operands; the positional values after them fill the
        // keys in order.
        let mut config = 0;
        for arg in &call.args {
            let Arg::Positional(expr) = arg else { continue };
            let value = self.eval(expr);
            let operands = bound.tensors.len() + failed_operands;
            if value == Value::Poison {
                // A failed value still takes its place, so later values keep theirs.
                poisoned = true;
                if operands < sig.inputs.0 && config == 0 {
                    failed_operands += 1;
                } else {
                    if let Some(&key) = sig.keys.get(config) {
                        bound.values.insert(key, (Value::Poison, expr.span));
                    }
                    config += 1;
                }
                continue;
            }
            let room = operands < sig.inputs.1 && config == 0;
            match value {
                Value::Tensor(t) if room => bound.tensors.push((t, expr.span)),
                Value::Int(_) | Value::Float(_) if sig.numbers_as_tensors && room => {
                    let t = self.as_tensor(value, expr.span)?;
                    bound.tensors.push((t, expr.span));
                }
                value => {
                    if config >= sig.positional {
                        let d = self.too_many_arguments(sig, expr.span);
                        self.error(d);
                        return None;
                    }
                    if let Value::Tensor(_) = value {
                        self.error(type_error(
                            expr.span,
                            &format!("`{}` of {op} must not be a tensor", sig.keys[config]),
                            &value,
                        ));
                        return None;
                    }
                    bound.values.insert(sig.keys[config], (value, expr.span));
                    config += 1;
                }
            }
        }
        for arg in &call.args {
            let Arg::Keyword(key, expr) = arg else { continue };
            let Some(&name) = sig.keys.iter().find(|k| **k == key.text) else {
                self.error(unknown_key(op, key, sig));
                return None;
            };
            let value = self.eval(expr);
            poisoned |= value == Value::Poison;
            if bound.values.insert(name, (value, expr.span)).is_some() {
                let message = format!("argument `{name}` of {op} is given twice");
                self.error(
                    Diagnostic::new(ErrorKind::Duplicate, key.span, message)
                        .with_label("given again here"),
                );
                return None;
            }
        }
        self.apply_defaults(&mut bound);
        bound.poisoned = poisoned;
        if !poisoned {
            self.check_tensor_count(sig, &bound, call.span)?;
        }
        Some(bound)
    }

    fn too_many_arguments(&self, sig: &Signature, span: Span) -> Diagnostic {
        let named: Vec<String> =
            sig.keys[..sig.positional].iter().map(|k| format!("`{k}`")).collect();
        let takes = match named.len() {
            0 => "no values by position".to_string(),
            _ => format!("{} by position", named.join(", ")),
        };
        Diagnostic::new(ErrorKind::Type, span, format!("too many arguments for {}", sig.name))
            .with_label("unexpected argument")
            .with_help(format!("{} takes {takes}; give the others as key=value", sig.name))
    }

    fn apply_defaults(&mut self, bound: &mut Bound) {
        let Some(defaults) = self.prog.defaults.get(bound.op) else { return };
        for (key, expr) in defaults {
            let Some(&name) =
                signature(bound.op).and_then(|s| s.keys.iter().find(|k| **k == key.text))
            else {
                continue;
            };
            if bound.values.contains_key(name) {
                continue;
            }
            match eval_param_expr(expr, &self.prog.params) {
                Ok(value) => {
                    bound.values.insert(name, (value, expr.span));
                }
                Err(d) => {
                    self.error(d);
                }
            }
        }
    }

    fn check_tensor_count(&mut self, sig: &Signature, bound: &Bound, span: Span) -> Option<()> {
        let n = bound.tensors.len();
        let (min, max) = sig.inputs;
        if n >= min && n <= max {
            return Some(());
        }
        let op = sig.name;
        let d = if n < min && sig.layer {
            Diagnostic::new(ErrorKind::Missing, span, format!("{op} has no input tensor"))
                .with_label("nothing flows into this op")
                .with_help(format!(
                    "feed it with `x -> {op}(...)`, or pass the tensor first: `{op}(x, ...)`"
                ))
        } else if n < min {
            let message =
                format!("{op} takes {min} tensor{}, got {n}", if min == 1 { "" } else { "s" });
            Diagnostic::new(ErrorKind::Missing, span, message).with_label("missing a tensor")
        } else {
            let message =
                format!("{op} takes {max} tensor{}, got {n}", if max == 1 { "" } else { "s" });
            Diagnostic::new(ErrorKind::Type, span, message)
                .with_label("too many tensors")
                .with_help("in a chain, `a -> op(b)` passes `a` as the first tensor")
        };
        self.error(d);
        None
    }

    // ---- Argument values ---------------------------------------------------------------

    pub(super) fn int(
        &mut self,
        b: &Bound,
        key: &str,
        default: Option<i64>,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        let Some((value, span)) = b.values.get(key) else {
            return default.or_else(|| {
                let d = Diagnostic::new(ErrorKind::Missing, b.span, format!("{} needs `{key}`", b.op))
                    .with_label(format!("`{key}` is missing"))
                    .with_help(format!("pass it as {key}=..., or set it for the whole file with `defaults {}({key}=...)`", b.op));
                self.error(d);
                None
            });
        };
        match value {
            Value::Poison => None,
            Value::Int(i) if range.contains(i) => Some(*i),
            Value::Int(i) => {
                let message = format!("`{key}` of {} is {i}, out of range", b.op);
                let label = format!("must be between {} and {}", range.start(), range.end());
                self.error(Diagnostic::new(ErrorKind::Range, *span, message).with_label(label));
                None
            }
            Value::Float(f) if f.fract() == 0.0 => {
                let message =
                    format!("`{key}` of {} must be an integer, got {}", b.op, format_float(*f));
                let d = Diagnostic::new(ErrorKind::Type, *span, message)
                    .with_label("this is a float")
                    .with_help(format!("write {}", *f as i64));
                self.error(d);
                None
            }
            other => {
                self.error(type_error(
                    *span,
                    &format!("`{key}` of {} must be an integer", b.op),
                    other,
                ));
                None
            }
        }
    }

    pub(super) fn float(
        &mut self,
        b: &Bound,
        key: &str,
        default: Option<f32>,
        range: std::ops::RangeInclusive<f32>,
    ) -> Option<f32> {
        let Some((value, span)) = b.values.get(key) else {
            return default.or_else(|| {
                let d =
                    Diagnostic::new(ErrorKind::Missing, b.span, format!("{} needs `{key}`", b.op));
                self.error(d);
                None
            });
        };
        let f = match value {
            Value::Poison => return None,
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            other => {
                self.error(type_error(
                    *span,
                    &format!("`{key}` of {} must be a number", b.op),
                    other,
                ));
                return None;
            }
        };
        let f32_value = f as f32;
        if !f32_value.is_finite() || !range.contains(&f32_value) {
            let message = format!("`{key}` of {} is {}, out of range", b.op, format_float(f));
            let label = format!("must be between {} and {}", range.start(), range.end());
            self.error(Diagnostic::new(ErrorKind::Range, *span, message).with_label(label));
            return None;
        }
        Some(f32_value)
    }

    fn bool(&mut self, b: &Bound, key: &str, default: bool) -> Option<bool> {
        match b.values.get(key) {
            None => Some(default),
            Some((Value::Poison, _)) => None,
            Some((Value::Bool(v), _)) => Some(*v),
            Some((other, span)) => {
                self.error(type_error(
                    *span,
                    &format!("`{key}` of {} must be `true` or `false`", b.op),
                    other,
                ));
                None
            }
        }
    }

    /// Reads an initializer argument: `Some(None)` when it is absent, `None` after an error.
    fn init_value(&mut self, b: &Bound, key: &str) -> Option<Option<Init>> {
        match b.values.get(key) {
            None => Some(None),
            Some((Value::Poison, _)) => None,
            Some((Value::Init(init), _)) => Some(Some(init.clone())),
            Some((other, span)) => {
                let d = type_error(
                    *span,
                    &format!("`{key}` of {} must be an initializer", b.op),
                    other,
                )
                .with_help("write normal(mean, std), uniform(low, high) or constant(value)");
                self.error(d);
                None
            }
        }
    }

    fn slope(&mut self, b: &Bound) -> Option<f32> {
        self.float(b, "slope", Some(0.01), 0.0..=1e6)
    }

    fn dropout_p(&mut self, b: &Bound) -> Option<f32> {
        let p = self.float(b, "p", Some(0.5), 0.0..=1.0)?;
        if p < 1.0 {
            return Some(p);
        }
        let span = b.values.get("p").map_or(b.span, |v| v.1);
        let d =
            Diagnostic::new(ErrorKind::Range, span, "dropout probability 1 drops every element")
                .with_label("must be below 1")
                .with_help("use a probability in [0, 1), such as 0.5");
        self.error(d);
        None
    }

    fn pool_window(&mut self, b: &Bound) -> Option<(usize, usize)> {
        let kernel = self.int(b, "kernel", None, 1..=MAX_WINDOW)?;
        let stride = self.int(b, "stride", Some(kernel), 1..=MAX_WINDOW)?;
        Some((kernel as usize, stride as usize))
    }

    /// Checks the values of a call whose input failed, so that their errors are reported
    /// along with the earlier one.
    fn check_values(&mut self, b: &Bound) {
        match b.op {
            "conv2d" | "conv_transpose2d" => {
                self.conv_args(b);
            }
            "batch_norm" => {
                self.batch_norm_args(b);
            }
            "linear" => {
                self.linear_args(b);
            }
            "leaky_relu" => {
                self.slope(b);
            }
            "dropout" => {
                self.dropout_p(b);
            }
            "max_pool2d" => {
                self.pool_window(b);
            }
            _ => {}
        }
    }

    // ---- Ops with parameters -----------------------------------------------------------

    /// Checks that a tensor has rank `rank`, naming the expected layout otherwise.
    fn expect_rank(&mut self, b: &Bound, rank: usize, layout: &str) -> Option<Shape> {
        let (x, span) = b.tensors[0];
        let shape = self.graph.shape(x).clone();
        if shape.rank() == rank {
            return Some(shape);
        }
        let message = format!("{} needs an input of shape {layout}, got {shape}", b.op);
        let label = format!("the input is {shape}");
        let mut d = Diagnostic::new(ErrorKind::Shape, b.span, message).with_label(label);
        if span != b.span {
            d = d.with_note(span, "input from here");
        }
        if let Some(layer) = self.current_layer() {
            d.message = format!("shape mismatch in layer `{layer}`: {}", d.message);
        }
        self.error(d);
        None
    }

    fn conv_args(&mut self, b: &Bound) -> Option<ConvArgs> {
        let transposed = b.op == "conv_transpose2d";
        // Every value is read before any `?`, so that each one reports its own error.
        let out = self.int(b, "out_channels", None, 1..=MAX_CHANNELS);
        let kernel = self.int(b, "kernel", None, 1..=MAX_WINDOW);
        let stride = self.int(b, "stride", Some(1), 1..=MAX_WINDOW);
        let padding = self.int(b, "padding", Some(0), 0..=MAX_WINDOW);
        let output_padding = match transposed {
            true => self.int(b, "output_padding", Some(0), 0..=MAX_WINDOW),
            false => Some(0),
        };
        let bias = self.bool(b, "bias", true);
        let init = self.init_value(b, "init");
        let bias_init = self.init_value(b, "bias_init");
        Some(ConvArgs {
            out: out? as usize,
            kernel: kernel? as usize,
            stride: stride? as usize,
            padding: padding? as usize,
            output_padding: output_padding? as usize,
            bias: bias?,
            init: init?,
            bias_init: bias_init?,
        })
    }

    fn conv(&mut self, b: &Bound) -> Option<Value> {
        let transposed = b.op == "conv_transpose2d";
        let args = self.conv_args(b)?;
        let shape = self.expect_rank(b, 4, "[N, C, H, W]")?;
        let ConvArgs { out, kernel: k, stride, padding, output_padding, bias, .. } = args;
        let cin = shape.dims()[1];
        // PyTorch's fan_in is weight.size(1) * kh * kw for both layouts.
        let fan_in = if transposed { out * k * k } else { cin * k * k };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let uniform = Init::Uniform { low: -bound, high: bound };
        let init = args.init.unwrap_or_else(|| uniform.clone());
        let bias_init = args.bias_init.unwrap_or(uniform);

        let weight_shape = if transposed { [cin, out, k, k] } else { [out, cin, k, k] };
        self.check_elements(b, "weight", &weight_shape)?;
        let role = self.node_name(if transposed { "conv_transpose" } else { "conv" });
        let weight = self.param(
            &role,
            "weight",
            Shape::new(weight_shape),
            init,
            ParamKind::Trainable,
            b.span,
        )?;
        let mut operands = vec![b.tensors[0].0, weight];
        if bias {
            let bias = self.param(
                &role,
                "bias",
                Shape::new([out]),
                bias_init,
                ParamKind::Trainable,
                b.span,
            )?;
            operands.push(bias);
        }
        let op = match transposed {
            true => Op::ConvTranspose2d {
                stride: [stride, stride],
                padding: [padding, padding],
                output_padding: [output_padding, output_padding],
            },
            false => Op::Conv2d { stride: [stride, stride], padding: [padding, padding] },
        };
        Some(self.add_checked(op, &operands, role, b))
    }

    fn batch_norm_args(&mut self, b: &Bound) -> Option<(f32, f32, Init, Init)> {
        let eps = self.float(b, "eps", Some(1e-5), f32::MIN_POSITIVE..=1.0);
        let momentum = self.float(b, "momentum", Some(0.1), 0.0..=1.0);
        let scale_init = self.init_value(b, "scale_init");
        let offset_init = self.init_value(b, "offset_init");
        let scale_init = scale_init?.unwrap_or(Init::Constant { value: 1.0 });
        let offset_init = offset_init?.unwrap_or(Init::Constant { value: 0.0 });
        Some((eps?, momentum?, scale_init, offset_init))
    }

    fn batch_norm(&mut self, b: &Bound) -> Option<Value> {
        let (eps, momentum, scale_init, offset_init) = self.batch_norm_args(b)?;
        let (x, _) = b.tensors[0];
        let shape = self.graph.shape(x).clone();
        if shape.rank() < 2 {
            self.expect_rank(b, 4, "[N, C, ...]")?;
        }
        let channels = shape.dims()[1];

        let role = self.node_name("norm");
        let c = || Shape::new([channels]);
        let scale = self.param(&role, "scale", c(), scale_init, ParamKind::Trainable, b.span)?;
        let offset = self.param(&role, "offset", c(), offset_init, ParamKind::Trainable, b.span)?;
        let zero = Init::Constant { value: 0.0 };
        let one = Init::Constant { value: 1.0 };
        let running_mean =
            self.declare_param(&role, "running_mean", c(), zero, ParamKind::Buffer, b.span)?;
        let running_var =
            self.declare_param(&role, "running_var", c(), one, ParamKind::Buffer, b.span)?;
        let op = Op::BatchNorm { eps, momentum, running_mean, running_var };
        Some(self.add_checked(op, &[x, scale, offset], role, b))
    }

    fn linear_args(&mut self, b: &Bound) -> Option<(usize, bool, Option<Init>, Option<Init>)> {
        let out = self.int(b, "out_features", None, 1..=MAX_CHANNELS);
        let bias = self.bool(b, "bias", true);
        let init = self.init_value(b, "init");
        let bias_init = self.init_value(b, "bias_init");
        Some((out? as usize, bias?, init?, bias_init?))
    }

    fn linear(&mut self, b: &Bound) -> Option<Value> {
        let (out, bias, init, bias_init) = self.linear_args(b)?;
        let layout = "[N, features]; flatten an image first with `-> flatten`";
        let shape = self.expect_rank(b, 2, layout)?;
        let features = shape.dims()[1];
        let bound = 1.0 / (features as f32).sqrt();
        let uniform = Init::Uniform { low: -bound, high: bound };
        let init = init.unwrap_or_else(|| uniform.clone());
        let bias_init = bias_init.unwrap_or(uniform);

        self.check_elements(b, "weight", &[out, features])?;
        let role = self.node_name("linear");
        let weight = self.param(
            &role,
            "weight",
            Shape::new([out, features]),
            init,
            ParamKind::Trainable,
            b.span,
        )?;
        let mut operands = vec![b.tensors[0].0, weight];
        if bias {
            operands.push(self.param(
                &role,
                "bias",
                Shape::new([out]),
                bias_init,
                ParamKind::Trainable,
                b.span,
            )?);
        }
        Some(self.add_checked(Op::Linear, &operands, role, b))
    }

    /// Adds a node and rejects an output too large to index.
    fn add_checked(&mut self, op: Op, operands: &[NodeId], name: String, b: &Bound) -> Value {
        let value = self.add_op(op, operands, name, b.span);
        if let Value::Tensor(t) = value {
            let dims = self.graph.shape(t).dims().to_vec();
            if self.check_elements(b, "output", &dims).is_none() {
                return Value::Poison;
            }
        }
        value
    }

    fn check_elements(&mut self, b: &Bound, what: &str, dims: &[usize]) -> Option<()> {
        let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if count.is_some_and(|c| c <= MAX_ELEMENTS) {
            return Some(());
        }
        let shape = Shape::new(dims.to_vec());
        let message = format!("the {what} of {} would have shape {shape}, too large", b.op);
        let d = Diagnostic::new(ErrorKind::Range, b.span, message)
            .with_label(format!("more than {MAX_ELEMENTS} elements"))
            .with_help("reduce the channels or the input size");
        self.error(d);
        None
    }
}
