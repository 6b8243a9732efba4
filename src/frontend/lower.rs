//! Lowering: instantiates networks, blocks and chains into an [`ir::Graph`], inferring
//! every shape as it adds nodes. Needs a resolved [`Program`]; afterwards every node has a
//! concrete shape and every parameter a declaration, or the errors are in `diags`.
//!
//! A network instantiates lazily, one layer at a time: a layer that names a later layer
//! lowers that one first, and a layer met again while it is being lowered closes a cycle.
//! After an error the value becomes [`Value::Poison`], so one mistake reports once.

use super::ast::{Arg, BinaryOp, Call, Chain, Expr, ExprKind, Name, NetDecl, NetStmt};
use super::diagnostics::{Diagnostic, ErrorKind};
use super::program::{self, Program};
use super::suggest::did_you_mean;
use super::value::{binary, type_error, unary, Value};
use super::{names, ops};
use crate::ir::{Graph, Init, NodeId, Op, ParamDecl, ParamId, ParamKind, Shape, Span};
use std::collections::{HashMap, HashSet};

/// The module's parameters, shared by every graph the front end builds.
#[derive(Default)]
pub struct ParamTable {
    pub decls: Vec<ParamDecl>,
    by_name: HashMap<String, ParamId>,
}

impl ParamTable {
    /// Returns the parameter named `name`, declaring it on first use.
    pub fn get_or_declare(&mut self, decl: ParamDecl) -> Result<ParamId, (Shape, ParamId)> {
        if let Some(&id) = self.by_name.get(&decl.name) {
            let existing = &self.decls[id];
            return if existing.shape == decl.shape {
                Ok(id)
            } else {
                Err((existing.shape.clone(), id))
            };
        }
        let id = self.decls.len();
        self.by_name.insert(decl.name.clone(), id);
        self.decls.push(decl);
        Ok(id)
    }
}

/// A scope: the meaning of names in the innermost block, network or train section.
pub(super) enum Frame<'a> {
    /// A block body: its arguments, then the params.
    Block(HashMap<String, Value>),
    /// A network body: its arguments and layers, then the params.
    Net(NetScope<'a>),
    /// The train section: `input`, `target` and its `let` values, then the params.
    Train(HashMap<String, Value>),
}

pub(super) struct NetScope<'a> {
    pub args: HashMap<String, NodeId>,
    pub layers: Vec<names::Layer<'a>>,
    pub by_name: HashMap<String, usize>,
    /// For each target layer, the skip sources concatenated onto its input.
    pub skips: HashMap<usize, Vec<(usize, Span)>>,
    /// The input of the first layer when it names none: the network's only argument.
    pub first_input: Option<NodeId>,
    /// Layers being lowered, innermost last, for cycle reports.
    pub active: Vec<usize>,
}

/// Builds one graph.
pub struct Builder<'p, 'a> {
    pub prog: &'p Program<'a>,
    pub graph: Graph,
    pub params: &'p mut ParamTable,
    pub diags: Vec<Diagnostic>,
    /// The phase given to every node built from now on (see [`crate::ir::Node::phase`]).
    pub phase: u32,
    /// Prefix of the next node names in the train graph: the call site of the phase.
    pub phase_prefix: String,
    pub(super) frames: Vec<Frame<'a>>,
    param_nodes: HashMap<(ParamId, u32), NodeId>,
    net_stack: Vec<&'a str>,
    /// Names the nodes of the current layer: `fake.generator.e3`.
    pub(super) node_prefix: String,
    /// Names the parameters of the current layer: `generator.e3`.
    pub(super) param_prefix: String,
    /// The network that owns the parameters declared now.
    pub(super) owner: String,
    roles: HashMap<String, usize>,
    node_names: HashSet<String>,
    /// The calls of the blocks being lowered, innermost last.
    block_calls: Vec<(Span, String)>,
}

impl<'p, 'a> Builder<'p, 'a> {
    pub fn new(prog: &'p Program<'a>, params: &'p mut ParamTable) -> Self {
        Builder {
            prog,
            graph: Graph::new(),
            params,
            diags: Vec::new(),
            phase: 0,
            phase_prefix: String::new(),
            frames: Vec::new(),
            param_nodes: HashMap::new(),
            net_stack: Vec::new(),
            node_prefix: String::new(),
            param_prefix: String::new(),
            owner: String::new(),
            roles: HashMap::new(),
            node_names: HashSet::new(),
            block_calls: Vec::new(),
        }
    }

    /// Records an error and returns the poison value that stands for the failed result.
    /// An error raised inside a block also points at the call of the block.
    pub fn error(&mut self, mut diagnostic: Diagnostic) -> Value {
        if let Some(&(call, ref block)) = self.block_calls.last() {
            let note = format!("in block `{block}`, called here");
            diagnostic = diagnostic.with_note(call, note);
        }
        self.diags.push(diagnostic);
        Value::Poison
    }

    /// Starts naming nodes under `prefix`, as the train section does for each call site.
    pub(super) fn set_node_prefix(&mut self, prefix: &str) {
        self.node_prefix = prefix.to_string();
        self.roles.clear();
    }

    // ---- Node construction -------------------------------------------------------------

    /// Returns a unique node name for a role (`conv`, `norm`) in the current layer.
    pub(super) fn node_name(&mut self, role: &str) -> String {
        let count = self.roles.entry(role.to_string()).or_insert(0);
        *count += 1;
        let base = match *count {
            1 => format!("{}.{role}", self.node_prefix),
            n => format!("{}.{role}{n}", self.node_prefix),
        };
        self.unique_name(base)
    }

    fn unique_name(&mut self, base: String) -> String {
        let base = base.trim_start_matches('.').to_string();
        let mut name = base.clone();
        let mut n = 2;
        while self.node_names.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.node_names.insert(name.clone());
        name
    }

    /// Returns the stable name of a parameter of the current layer: `generator.e3.conv.weight`.
    pub(super) fn param_name(&self, role_node: &str, tensor: &str) -> String {
        let role = role_node.rsplit('.').next().unwrap_or(role_node);
        format!("{}.{role}.{tensor}", self.param_prefix)
    }

    /// Adds an op node; a failed shape rule becomes a diagnostic at `span`.
    pub(super) fn add_op(
        &mut self,
        op: Op,
        operands: &[NodeId],
        name: String,
        span: Span,
    ) -> Value {
        let op_name = op.name();
        match self.graph.add_op(op, operands, name, Some(span)) {
            Ok(id) => {
                self.graph.node_mut(id).phase = self.phase.max(self.graph.node(id).phase);
                Value::Tensor(id)
            }
            Err(e) => {
                let shapes: Vec<String> =
                    operands.iter().map(|&o| self.graph.shape(o).to_string()).collect();
                let layer = self.current_layer();
                let message = match layer {
                    Some(l) => format!("shape mismatch in layer `{l}`: {}", e.rule),
                    None => format!("shape mismatch in {op_name}: {}", e.rule),
                };
                let label = format!("{op_name} of {}", shapes.join(" and "));
                self.error(Diagnostic::new(ErrorKind::Shape, span, message).with_label(label))
            }
        }
    }

    /// Adds a scalar constant.
    pub(super) fn constant(&mut self, value: f64, span: Span) -> NodeId {
        let name = self.node_name("const");
        let id = self.graph.add_leaf(
            Op::Constant { value: value as f32 },
            Shape::scalar(),
            name,
            Some(span),
        );
        self.graph.node_mut(id).phase = self.phase;
        id
    }

    /// Declares (on first use) a parameter of the current layer.
    pub(super) fn declare_param(
        &mut self,
        role_node: &str,
        tensor: &str,
        shape: Shape,
        init: Init,
        kind: ParamKind,
        span: Span,
    ) -> Option<ParamId> {
        let name = self.param_name(role_node, tensor);
        let decl = ParamDecl {
            name: name.clone(),
            shape: shape.clone(),
            init,
            kind,
            net: self.owner.clone(),
            span: Some(span),
        };
        match self.params.get_or_declare(decl) {
            Ok(id) => Some(id),
            Err((existing, _)) => {
                let message = format!(
                    "parameter `{name}` is used with shape {shape}, but it was declared with {existing}"
                );
                self.error(Diagnostic::new(ErrorKind::Shape, span, message));
                None
            }
        }
    }

    /// Declares (on first use) a parameter of the current layer and returns the node that
    /// reads it in the current phase.
    pub(super) fn param(
        &mut self,
        role_node: &str,
        tensor: &str,
        shape: Shape,
        init: Init,
        kind: ParamKind,
        span: Span,
    ) -> Option<NodeId> {
        let id = self.declare_param(role_node, tensor, shape.clone(), init, kind, span)?;
        if let Some(&node) = self.param_nodes.get(&(id, self.phase)) {
            return Some(node);
        }
        let name = self.params.decls[id].name.clone();
        let node_name = match self.phase {
            0 => name,
            _ => format!("{}.{name}", self.phase_prefix_root()),
        };
        let node_name = self.unique_name(node_name);
        let node = self.graph.add_leaf(Op::Param { id }, shape, node_name, Some(span));
        self.graph.node_mut(node).phase = self.phase;
        self.param_nodes.insert((id, self.phase), node);
        Some(node)
    }

    fn phase_prefix_root(&self) -> String {
        self.phase_prefix.split('.').next().unwrap_or_default().to_string()
    }

    pub(super) fn current_layer(&self) -> Option<String> {
        for frame in self.frames.iter().rev() {
            if let Frame::Net(scope) = frame {
                return scope.active.last().map(|&i| scope.layers[i].name.clone());
            }
        }
        None
    }

    // ---- Networks ----------------------------------------------------------------------

    /// Instantiates `net` on `args` and returns its output. Node names start with
    /// `prefix` (empty for a standalone network).
    pub fn instantiate(&mut self, net: &'a NetDecl, args: Vec<NodeId>, prefix: &str) -> Value {
        let name = net.name.text.as_str();
        let saved = (
            std::mem::take(&mut self.node_prefix),
            std::mem::take(&mut self.param_prefix),
            std::mem::replace(&mut self.owner, name.to_string()),
            std::mem::take(&mut self.roles),
        );
        let base = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        self.net_stack.push(name);

        let scope = self.net_scope(net, &args);
        self.frames.push(Frame::Net(scope));
        let count = match self.frames.last() {
            Some(Frame::Net(s)) => s.layers.len(),
            _ => 0,
        };
        let errors_before = self.diags.len();
        let mut output = Value::Poison;
        for index in 0..count {
            output = self.layer_value(index, &base);
        }
        if count == 0 {
            self.error(
                Diagnostic::new(
                    ErrorKind::Missing,
                    net.name.span,
                    format!("net `{name}` has no layers"),
                )
                .with_help("add a layer, such as `y = x -> relu`"),
            );
        }
        // NOTE: after another error an unused layer is most often a consequence of it,
        // such as the reader of the layer failing, so it is only reported alone.
        let clean = self.diags.len() == errors_before;
        if let Some(Frame::Net(scope)) = self.frames.pop() {
            if clean {
                self.report_unused(&scope, name);
            }
        }

        self.net_stack.pop();
        (self.node_prefix, self.param_prefix, self.owner, self.roles) = saved;
        match output {
            Value::Tensor(_) | Value::Poison => output,
            other => {
                let span = net.name.span;
                self.error(type_error(span, &format!("net `{name}` must return a tensor"), &other))
            }
        }
    }

    fn net_scope(&mut self, net: &'a NetDecl, args: &[NodeId]) -> NetScope<'a> {
        let mut scope = NetScope {
            args: HashMap::new(),
            layers: Vec::new(),
            by_name: HashMap::new(),
            skips: HashMap::new(),
            first_input: if args.len() == 1 { Some(args[0]) } else { None },
            active: Vec::new(),
        };
        for (arg, &node) in net.args.iter().zip(args) {
            scope.args.insert(arg.name.text.clone(), node);
        }
        let mut diags = Vec::new();
        names::declare_layers(self.prog, net, &mut scope, &mut diags);
        for stmt in &net.stmts {
            if let NetStmt::Skip(edges) = stmt {
                names::declare_skips(self.prog, edges, &mut scope, &mut diags);
            }
        }
        self.diags.extend(diags);
        scope
    }

    fn report_unused(&mut self, scope: &NetScope<'a>, net: &str) {
        let last = scope.layers.len().saturating_sub(1);
        for (i, layer) in scope.layers.iter().enumerate() {
            if i != last && !layer.used {
                self.diags.push(
                    Diagnostic::new(
                        ErrorKind::Unused,
                        layer.span,
                        format!("layer `{}` of net `{net}` is not used", layer.name),
                    )
                    .with_label("nothing reads this layer")
                    .with_help(format!(
                        "the output of `{net}` is its last layer, `{}`; feed `{}` into a later layer or remove it",
                        scope.layers[last].name, layer.name
                    )),
                );
            }
        }
    }

    fn scope_mut(&mut self) -> &mut NetScope<'a> {
        match self.frames.last_mut() {
            Some(Frame::Net(scope)) => scope,
            _ => unreachable!("layers are only lowered inside a net frame"),
        }
    }

    /// Lowers layer `index` of the innermost network, once, and returns its value.
    fn layer_value(&mut self, index: usize, base: &str) -> Value {
        let scope = self.scope_mut();
        match &scope.layers[index].state {
            names::LayerState::Done(v) => return v.clone(),
            names::LayerState::Active => return self.report_cycle(index),
            names::LayerState::Pending => {}
        }

        // Lower the run of layers that this one reads implicitly from the bottom up, so
        // that a forward reference to a long chain does not recurse once per layer.
        let mut start = index;
        while start > 0 && self.reads_layer_above(start) && self.is_pending(start - 1) {
            start -= 1;
        }
        for k in start..index {
            self.layer_value(k, base);
        }

        let scope = self.scope_mut();
        scope.layers[index].state = names::LayerState::Active;
        scope.active.push(index);
        let layer_name = scope.layers[index].name.clone();
        let chain = scope.layers[index].chain;

        let saved = (
            std::mem::replace(&mut self.node_prefix, format!("{base}.{layer_name}")),
            std::mem::replace(&mut self.param_prefix, format!("{}.{layer_name}", self.owner)),
            std::mem::take(&mut self.roles),
        );
        let value = self.lower_layer(index, chain, base);
        (self.node_prefix, self.param_prefix, self.roles) = saved;

        let scope = self.scope_mut();
        scope.active.pop();
        scope.layers[index].state = names::LayerState::Done(value.clone());
        value
    }

    fn reads_layer_above(&mut self, index: usize) -> bool {
        let chain = self.scope_mut().layers[index].chain;
        self.needs_implicit_input(&chain.stages[0])
    }

    fn is_pending(&mut self, index: usize) -> bool {
        matches!(self.scope_mut().layers[index].state, names::LayerState::Pending)
    }

    fn report_cycle(&mut self, index: usize) -> Value {
        let scope = self.scope_mut();
        let start = scope.active.iter().position(|&i| i == index).unwrap_or(0);
        let mut path: Vec<String> =
            scope.active[start..].iter().map(|&i| format!("`{}`", scope.layers[i].name)).collect();
        path.push(format!("`{}`", scope.layers[index].name));
        let span = scope.layers[index].span;
        let notes: Vec<(Span, String)> = scope.active[start + 1..]
            .iter()
            .map(|&i| {
                (scope.layers[i].span, format!("`{}` is part of the cycle", scope.layers[i].name))
            })
            .collect();
        let mut d = Diagnostic::new(ErrorKind::Cycle, span, format!("layers form a cycle: {}", path.join(" -> ")))
            .with_label("this layer depends on itself")
            .with_help("a layer without an explicit input reads the layer above it; break the cycle by naming an earlier input");
        for (s, text) in notes {
            d = d.with_note(s, text);
        }
        self.error(d)
    }

    fn lower_layer(&mut self, index: usize, chain: &'a Chain, base: &str) -> Value {
        let first = &chain.stages[0];
        let skips = self.scope_mut().skips.get(&index).cloned().unwrap_or_default();
        let needs_input = self.needs_implicit_input(first);
        let mut stages = chain.stages.iter();

        // The value that enters the first op: the previous layer, or a leading tensor.
        let mut value = if needs_input {
            self.implicit_input(index, first.span, base)
        } else {
            let v = self.eval(stages.next().expect("a chain has a first stage"));
            if !skips.is_empty() && !matches!(first.kind, ExprKind::Name(_)) {
                let layer = self.scope_mut().layers[index].name.clone();
                return self.error(
                    Diagnostic::new(
                        ErrorKind::Type,
                        first.span,
                        format!("layer `{layer}` is the target of a skip edge but has no single input"),
                    )
                    .with_label("the skip input would join here")
                    .with_help("start the layer with the input it extends, as `d7 = d8 -> up(512)`, or leave it out and let it read the layer above"),
                );
            }
            v
        };
        if !skips.is_empty() {
            value = self.concat_skips(value, &skips, first.span, base);
        }
        let mut value_span = first.span;
        for stage in stages {
            value = self.eval_stage(stage, Some((value, value_span)));
            value_span = stage.span;
        }
        match value {
            Value::Tensor(_) | Value::Poison => value,
            other => {
                let name = self.scope_mut().layers[index].name.clone();
                self.error(type_error(
                    chain.span,
                    &format!("layer `{name}` must compute a tensor"),
                    &other,
                ))
            }
        }
    }

    fn implicit_input(&mut self, index: usize, span: Span, base: &str) -> Value {
        if index > 0 {
            self.scope_mut().layers[index - 1].used = true;
            return self.layer_value(index - 1, base);
        }
        match self.scope_mut().first_input {
            Some(node) => Value::Tensor(node),
            None => {
                let name = self.scope_mut().layers[index].name.clone();
                self.error(
                    Diagnostic::new(
                        ErrorKind::Missing,
                        span,
                        format!("layer `{name}` has no input"),
                    )
                    .with_label("this op needs an input tensor")
                    .with_help(format!(
                        "the net has several arguments, so name one: `{name} = x -> ...`"
                    )),
                )
            }
        }
    }

    fn concat_skips(
        &mut self,
        input: Value,
        skips: &[(usize, Span)],
        span: Span,
        base: &str,
    ) -> Value {
        let Value::Tensor(input) = input else { return Value::Poison };
        let mut operands = vec![input];
        for &(source, _) in skips {
            self.scope_mut().layers[source].used = true;
            match self.layer_value(source, base) {
                Value::Tensor(t) => operands.push(t),
                _ => return Value::Poison,
            }
        }
        let name = self.node_name("skip");
        let value = self.add_op(Op::Concat { axis: 1 }, &operands, name, span);
        if value == Value::Poison {
            if let Some(last) = self.diags.last_mut() {
                let sources: Vec<String> = skips
                    .iter()
                    .map(|&(s, _)| match self.frames.last() {
                        Some(Frame::Net(scope)) => format!("`{}`", scope.layers[s].name),
                        _ => String::new(),
                    })
                    .collect();
                last.label = format!("the skip edge from {} joins here", sources.join(", "));
                for &(_, edge_span) in skips {
                    last.notes.push((edge_span, "skip edge declared here".into()));
                }
            }
        }
        value
    }

    // ---- Expressions -------------------------------------------------------------------

    /// Returns whether the first stage of a chain is a layer written without its input, as in
    /// `e2 = down(128)`, so that it reads the layer above.
    pub(super) fn needs_implicit_input(&self, expr: &Expr) -> bool {
        match &expr.kind {
            ExprKind::Name(n) => {
                n.index.is_none()
                    && self.is_layer_callable(&n.ident.text)
                    && !self.is_value_name(&n.ident.text)
            }
            ExprKind::Call(c) => {
                if !self.is_layer_callable(&c.callee.text) {
                    return false;
                }
                match c.args.first() {
                    Some(Arg::Positional(first)) => !self.mentions_tensor(first),
                    _ => true,
                }
            }
            _ => false,
        }
    }

    fn is_layer_callable(&self, name: &str) -> bool {
        ops::signature(name).is_some_and(|s| s.layer) || self.prog.blocks.contains_key(name)
    }

    /// Returns whether `name` is a value (an argument, layer, let or block argument) in scope.
    fn is_value_name(&self, name: &str) -> bool {
        match self.frames.last() {
            Some(Frame::Block(locals)) => locals.contains_key(name),
            Some(Frame::Net(scope)) => {
                scope.args.contains_key(name) || scope.by_name.contains_key(name)
            }
            Some(Frame::Train(lets)) => lets.contains_key(name),
            None => false,
        }
    }

    fn mentions_tensor(&self, expr: &Expr) -> bool {
        match &expr.kind {
            ExprKind::Name(n) => {
                if n.index.is_some() {
                    return matches!(self.frames.last(), Some(Frame::Net(_)));
                }
                match self.frames.last() {
                    Some(Frame::Block(locals)) => {
                        matches!(locals.get(&n.ident.text), Some(Value::Tensor(_)))
                    }
                    Some(Frame::Net(scope)) => {
                        scope.args.contains_key(&n.ident.text)
                            || scope.by_name.contains_key(&n.ident.text)
                    }
                    Some(Frame::Train(lets)) => {
                        matches!(lets.get(&n.ident.text), Some(Value::Tensor(_)))
                    }
                    None => false,
                }
            }
            ExprKind::Call(c) => {
                self.prog.net(&c.callee.text).is_some()
                    || c.args.iter().any(|a| match a {
                        Arg::Positional(e) | Arg::Keyword(_, e) => self.mentions_tensor(e),
                    })
            }
            ExprKind::Unary(_, e) => self.mentions_tensor(e),
            ExprKind::Binary(_, a, b) => self.mentions_tensor(a) || self.mentions_tensor(b),
            _ => false,
        }
    }

    /// Evaluates a stage of a chain; `piped` is the value arriving through `->`.
    pub(super) fn eval_stage(&mut self, expr: &Expr, piped: Option<(Value, Span)>) -> Value {
        let Some(piped) = piped else { return self.eval(expr) };
        match &expr.kind {
            ExprKind::Call(call) => self.apply(call, Some(piped)),
            ExprKind::Name(n) if n.index.is_none() && !self.is_value_name(&n.ident.text) => {
                let call = Call { callee: n.ident.clone(), args: Vec::new(), span: n.span };
                self.apply(&call, Some(piped))
            }
            _ => self.error(
                Diagnostic::new(ErrorKind::Type, expr.span, "`->` must lead into an op, block or net")
                    .with_label("this is not something a tensor can flow into")
                    .with_help("write `x -> relu` or `x -> conv2d(64)`; combine tensors with `concat(a, b)` or arithmetic"),
            ),
        }
    }

    pub(super) fn eval(&mut self, expr: &Expr) -> Value {
        match &expr.kind {
            ExprKind::Int(i) => Value::Int(*i),
            ExprKind::Float(f) => Value::Float(*f),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Name(name) => self.lookup(name),
            ExprKind::Call(call) => self.apply(call, None),
            ExprKind::Unary(op, e) => match self.eval(e) {
                Value::Poison => Value::Poison,
                Value::Tensor(t) if *op == super::ast::UnaryOp::Neg => {
                    let name = self.node_name("neg");
                    self.add_op(Op::Neg, &[t], name, expr.span)
                }
                v => unary(*op, &v, expr.span).unwrap_or_else(|d| self.error(d)),
            },
            ExprKind::Binary(op, a, b) => {
                let (va, vb) = (self.eval(a), self.eval(b));
                self.binary_value(*op, va, vb, expr.span)
            }
        }
    }

    fn binary_value(&mut self, op: BinaryOp, a: Value, b: Value, span: Span) -> Value {
        if a == Value::Poison || b == Value::Poison {
            return Value::Poison;
        }
        if !matches!(a, Value::Tensor(_)) && !matches!(b, Value::Tensor(_)) {
            return binary(op, &a, &b, span).unwrap_or_else(|d| self.error(d));
        }
        let ir_op = match op {
            BinaryOp::Add => Op::Add,
            BinaryOp::Sub => Op::Sub,
            BinaryOp::Mul => Op::Mul,
            BinaryOp::Div => Op::Div,
            _ => {
                return self.error(Diagnostic::new(
                    ErrorKind::Type,
                    span,
                    format!("`{}` does not apply to tensors", op.symbol()),
                ))
            }
        };
        let a = self.as_tensor(a, span);
        let b = self.as_tensor(b, span);
        let (Some(a), Some(b)) = (a, b) else { return Value::Poison };
        let name = self.node_name(ir_op.name());
        self.add_op(ir_op, &[a, b], name, span)
    }

    /// Converts a value to a tensor operand: a tensor as it is, a number as a scalar
    /// constant.
    pub(super) fn as_tensor(&mut self, value: Value, span: Span) -> Option<NodeId> {
        match value {
            Value::Tensor(t) => Some(t),
            Value::Int(i) => Some(self.constant(i as f64, span)),
            Value::Float(f) => Some(self.constant(f, span)),
            Value::Poison => None,
            other => {
                self.error(type_error(span, "expected a tensor or a number", &other));
                None
            }
        }
    }

    fn lookup(&mut self, name: &Name) -> Value {
        let Some(text) = self.resolve_name(name) else { return Value::Poison };
        let found = match self.frames.last_mut() {
            Some(Frame::Block(locals)) => locals.get(&text).cloned().map(Ok),
            Some(Frame::Train(lets)) => lets.get(&text).cloned().map(Ok),
            Some(Frame::Net(scope)) => match scope.args.get(&text) {
                Some(&node) => Some(Ok(Value::Tensor(node))),
                None => scope.by_name.get(&text).map(|&i| Err(i)),
            },
            None => None,
        };
        match found {
            Some(Ok(value)) => return value,
            Some(Err(index)) => {
                self.scope_mut().layers[index].used = true;
                let base = self
                    .node_prefix
                    .rsplit_once('.')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or_default();
                return self.layer_value(index, &base);
            }
            None => {}
        }
        if name.index.is_none() {
            if let Some(value) = self.prog.params.get(&text) {
                return value.clone();
            }
        }
        self.undefined(name, &text)
    }

    /// Resolves the full name a reference denotes: `e{levels}` becomes `e8`.
    fn resolve_name(&mut self, name: &Name) -> Option<String> {
        let Some(index) = &name.index else { return Some(name.ident.text.clone()) };
        match program::eval_param_expr(index, &self.prog.params) {
            Ok(Value::Int(i)) if i >= 0 => Some(format!("{}{i}", name.ident.text)),
            Ok(Value::Poison) => None,
            Ok(other) => {
                self.error(type_error(
                    index.span,
                    "a layer index must be a non-negative integer",
                    &other,
                ));
                None
            }
            Err(d) => {
                self.error(d);
                None
            }
        }
    }

    fn undefined(&mut self, name: &Name, text: &str) -> Value {
        let callable = ops::signature(text).is_some()
            || self.prog.blocks.contains_key(text)
            || self.prog.net(text).is_some();
        if callable {
            return self.error(
                Diagnostic::new(
                    ErrorKind::Type,
                    name.span,
                    format!("`{text}` is an op, block or net, not a value"),
                )
                .with_label("used as a value here")
                .with_help(format!("apply it to a tensor: `x -> {text}` or `{text}(x, ...)`")),
            );
        }
        let mut candidates: Vec<String> = self.prog.params.keys().cloned().collect();
        let what = match self.frames.last() {
            Some(Frame::Block(locals)) => {
                candidates.extend(locals.keys().cloned());
                "block argument or param"
            }
            Some(Frame::Net(scope)) => {
                candidates.extend(scope.args.keys().cloned());
                candidates.extend(scope.by_name.keys().cloned());
                "name"
            }
            Some(Frame::Train(lets)) => {
                candidates.extend(lets.keys().cloned());
                "value"
            }
            None => "param",
        };
        let help = did_you_mean(text, candidates.iter().map(|s| s.as_str()), "name");
        self.error(
            Diagnostic::new(
                ErrorKind::Undefined,
                name.span,
                format!("{what} `{text}` is not defined"),
            )
            .with_label("not defined")
            .with_help(help),
        )
    }

    /// Applies an op, block, net or function to its arguments; `piped` arrives via `->`.
    pub(super) fn apply(&mut self, call: &Call, piped: Option<(Value, Span)>) -> Value {
        let name = call.callee.text.as_str();
        if let Some(block) = self.prog.blocks.get(name).copied() {
            return self.call_block(block, call, piped);
        }
        if let Some(net) = self.prog.net(name) {
            return self.call_net(net, call, piped);
        }
        if let Some(sig) = ops::signature(name) {
            return self.build_op(call, sig, piped);
        }
        if program::FUNCTIONS.contains(&name) {
            return self.call_function(call, piped);
        }
        let mut candidates: Vec<&str> = ops::all_names().collect();
        candidates.extend(self.prog.blocks.keys().copied());
        candidates.extend(self.prog.nets.iter().map(|n| n.name.text.as_str()));
        candidates.extend(program::FUNCTIONS.iter().copied());
        let help = did_you_mean(name, candidates.iter().copied(), "op");
        self.error(
            Diagnostic::new(ErrorKind::Unknown, call.callee.span, format!("unknown op `{name}`"))
                .with_label("not an op, block, net or function")
                .with_help(help),
        )
    }

    fn call_function(&mut self, call: &Call, piped: Option<(Value, Span)>) -> Value {
        let name = call.callee.text.as_str();
        if piped.is_some() {
            return self.error(
                Diagnostic::new(
                    ErrorKind::Type,
                    call.span,
                    format!("`{name}` works on numbers, not on a tensor"),
                )
                .with_label("a tensor flows in here"),
            );
        }
        let mut args = Vec::new();
        for arg in &call.args {
            match arg {
                Arg::Positional(e) => {
                    let v = self.eval(e);
                    args.push((v, e.span));
                }
                Arg::Keyword(k, _) => {
                    let message = format!("{name} takes no keyword arguments");
                    return self.error(Diagnostic::new(ErrorKind::Unknown, k.span, message));
                }
            }
        }
        if args.iter().any(|(v, _)| *v == Value::Poison) {
            return Value::Poison;
        }
        if let Some((v, span)) = args.iter().find(|(v, _)| matches!(v, Value::Tensor(_))) {
            let d = type_error(*span, &format!("`{name}` works on numbers"), v);
            return self.error(d);
        }
        program::eval_function(call, &args).unwrap_or_else(|d| self.error(d))
    }

    /// Calls a block: binds its arguments in a new scope and lowers its chain on `piped`.
    fn call_block(
        &mut self,
        block: &'a super::ast::BlockDecl,
        call: &Call,
        piped: Option<(Value, Span)>,
    ) -> Value {
        let name = block.name.text.as_str();
        if self.block_calls.iter().any(|(_, b)| b == name) {
            let path: Vec<&str> = self.block_calls.iter().map(|(_, b)| b.as_str()).collect();
            let message = format!("block `{name}` calls itself: {} -> {name}", path.join(" -> "));
            let d = Diagnostic::new(ErrorKind::Cycle, call.callee.span, message)
                .with_label("recursive call")
                .with_help("a block cannot contain itself; use a range such as `e1..e4 = ...` to repeat it");
            return self.error(d);
        }
        let Some((input, input_span)) = piped else {
            return self.error(
                Diagnostic::new(
                    ErrorKind::Missing,
                    call.span,
                    format!("block `{name}` needs an input tensor"),
                )
                .with_label("nothing flows into this block")
                .with_help(format!("write `x -> {name}(...)`")),
            );
        };
        let mut locals = HashMap::new();
        let mut positional = 0;
        let mut poisoned = input == Value::Poison;
        for arg in &call.args {
            let (key, expr) = match arg {
                Arg::Positional(e) => {
                    positional += 1;
                    match block.params.get(positional - 1) {
                        Some(p) => (p, e),
                        None => {
                            let message = format!(
                                "block `{name}` takes {} arguments, got more",
                                block.params.len()
                            );
                            let note = (block.name.span, format!("`{name}` is declared here"));
                            return self.error(
                                Diagnostic::new(ErrorKind::Type, e.span, message)
                                    .with_note(note.0, note.1),
                            );
                        }
                    }
                }
                Arg::Keyword(k, e) => match block.params.iter().find(|p| p.text == k.text) {
                    Some(p) => (p, e),
                    None => {
                        let help = did_you_mean(
                            &k.text,
                            block.params.iter().map(|p| p.text.as_str()),
                            "argument",
                        );
                        let message = format!("block `{name}` has no argument `{}`", k.text);
                        return self.error(
                            Diagnostic::new(ErrorKind::Unknown, k.span, message).with_help(help),
                        );
                    }
                },
            };
            let value = self.eval(expr);
            poisoned |= value == Value::Poison;
            if locals.insert(key.text.clone(), value).is_some() {
                let message = format!("argument `{}` of block `{name}` is given twice", key.text);
                return self.error(Diagnostic::new(ErrorKind::Duplicate, expr.span, message));
            }
        }
        if let Some(missing) = block.params.iter().find(|p| !locals.contains_key(&p.text)) {
            let message = format!("block `{name}` needs argument `{}`", missing.text);
            let d = Diagnostic::new(ErrorKind::Missing, call.span, message)
                .with_note(block.span, format!("`{name}` is declared here"));
            return self.error(d);
        }
        if poisoned {
            return Value::Poison;
        }

        self.frames.push(Frame::Block(locals));
        self.block_calls.push((call.span, name.to_string()));
        let chain = &block.body;
        let mut stages = chain.stages.iter();
        let mut value = if self.needs_implicit_input(&chain.stages[0]) {
            (input, input_span)
        } else {
            self.frames.pop();
            self.block_calls.pop();
            let message = format!("block `{name}` must start with a layer that reads its input");
            let d = Diagnostic::new(ErrorKind::Type, chain.stages[0].span, message)
                .with_label("this does not take the block's input")
                .with_help(format!(
                    "start the chain with an op, as in `block {name}(...) = relu -> ...`"
                ));
            return self.error(d);
        };
        for stage in stages.by_ref() {
            let v = self.eval_stage(stage, Some(value));
            value = (v, stage.span);
        }
        self.frames.pop();
        self.block_calls.pop();
        value.0
    }

    /// Calls a network on tensors: the piped value first, then the positional arguments.
    fn call_net(&mut self, net: &'a NetDecl, call: &Call, piped: Option<(Value, Span)>) -> Value {
        let name = net.name.text.as_str();
        if self.net_stack.contains(&name) {
            let path = self.net_stack.join(" -> ");
            let message = format!("net `{name}` calls itself: {path} -> {name}");
            let d = Diagnostic::new(ErrorKind::Cycle, call.callee.span, message)
                .with_label("recursive call")
                .with_help(
                    "a network cannot contain itself; copy the layers it needs into a block",
                );
            return self.error(d);
        }
        let mut inputs: Vec<(Value, Span)> = piped.into_iter().collect();
        for arg in &call.args {
            match arg {
                Arg::Positional(e) => {
                    let v = self.eval(e);
                    inputs.push((v, e.span));
                }
                Arg::Keyword(k, _) => {
                    let message =
                        format!("net `{name}` takes its inputs by position, not as `{}=`", k.text);
                    return self.error(Diagnostic::new(ErrorKind::Type, k.span, message));
                }
            }
        }
        if inputs.iter().any(|(v, _)| *v == Value::Poison) {
            return Value::Poison;
        }
        if inputs.len() != net.args.len() {
            let message =
                format!("net `{name}` takes {} inputs, got {}", net.args.len(), inputs.len());
            let d = Diagnostic::new(ErrorKind::Type, call.span, message)
                .with_note(net.name.span, format!("`{name}` is declared here"));
            return self.error(d);
        }
        let mut nodes = Vec::new();
        for ((value, span), arg) in inputs.into_iter().zip(&net.args) {
            let Value::Tensor(node) = value else {
                let d = type_error(
                    span,
                    &format!("input `{}` of net `{name}` must be a tensor", arg.name.text),
                    &value,
                );
                return self.error(d);
            };
            if !self.check_net_input(net, arg, node, span) {
                return Value::Poison;
            }
            nodes.push(node);
        }
        let prefix = self.node_prefix.clone();
        self.instantiate(net, nodes, &prefix)
    }

    /// Checks that `node` has the declared shape of a net argument, plus the batch axis.
    fn check_net_input(
        &mut self,
        net: &NetDecl,
        arg: &super::ast::NetArg,
        node: NodeId,
        span: Span,
    ) -> bool {
        let Some(dims) = names::arg_dims(self.prog, arg, &mut self.diags) else { return false };
        let shape = self.graph.shape(node).clone();
        if shape.rank() == dims.len() + 1 && shape.dims()[1..] == dims[..] {
            return true;
        }
        let declared = Shape::new(dims);
        let message = format!(
            "input `{}` of net `{}` must have shape {declared} plus the batch axis, got {shape}",
            arg.name.text, net.name.text
        );
        let d = Diagnostic::new(ErrorKind::Shape, span, message)
            .with_label(format!("this is {shape}"))
            .with_note(arg.span, "declared here");
        self.error(d);
        false
    }
}
