//! The change of the `train` section between two checked versions of a model: the data
//! binding, the schedule, `epochs` and `infer`, the `let` values, the steps and their
//! order, and each step's optimizer and loss terms with their weights.
//!
//! Steps are matched by the network they update (the second step of one network with the
//! other version's second, shown as `generator #2`), and loss terms and values by name. Terms
//! and values are compared as expressions read back from the train graph, with network
//! calls written as calls (`discriminator(input, stop_gradient(fake))`). So an edit that
//! builds the same graph, such as a param in place of its value, shows no change. A term's
//! weight is its constant factor (`100` in `100 * l1(fake, target)`), reported on its own
//! when only the weight changed.

use crate::ir::{
    DataSpec, Graph, Half, Module, NodeId, Op, Optimizer, Schedule, StepSpec, TrainSpec,
};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// A setting of the train section (`data`, `schedule`, `epochs`, `infer`) that differs,
/// or an optimizer that differs. `detail` lists the changed keys (`batch 1 -> 4`), or both
/// whole values when their kind differs.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingChange {
    pub name: String,
    pub detail: String,
}

/// The change of a loss term or a `let` value, by name, with its expression as the train
/// graph computes it.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprChange {
    Added {
        name: String,
        expr: String,
    },
    Removed {
        name: String,
        expr: String,
    },
    Changed {
        name: String,
        old: String,
        new: String,
    },
    /// The same expression with another constant factor.
    Weight {
        name: String,
        old: f32,
        new: f32,
    },
}

/// The change of one step, matched by the network it updates. `name` is the step's label
/// (`generator`, or `generator #2` for the second step of that network).
#[derive(Clone, Debug, PartialEq)]
pub enum StepChange {
    Added { name: String, optimizer: String, terms: Vec<ExprChange> },
    Removed { name: String, optimizer: String },
    Changed { name: String, optimizer: Option<SettingChange>, terms: Vec<ExprChange> },
}

/// Everything that differs between the train sections of two versions.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainDiff {
    /// Only the new version has a train section; its steps are listed as added.
    Added {
        steps: Vec<StepChange>,
    },
    Removed,
    Changed {
        settings: Vec<SettingChange>,
        values: Vec<ExprChange>,
        /// The names of the steps that both versions have, in the old and the new order,
        /// when the order differs.
        order: Option<(Vec<String>, Vec<String>)>,
        steps: Vec<StepChange>,
    },
}

/// Compares the train sections of two modules. Returns `None` when neither has one or
/// they agree.
pub fn diff_train(old: &Module, new: &Module) -> Option<TrainDiff> {
    match (&old.train, &new.train) {
        (None, None) => None,
        (None, Some(train)) => {
            let section = Section::new(new, train);
            let steps = labeled_steps(train).map(|(label, s)| added_step(&section, label, s));
            Some(TrainDiff::Added { steps: steps.collect() })
        }
        (Some(_), None) => Some(TrainDiff::Removed),
        (Some(a), Some(b)) => {
            let (before, after) = (Section::new(old, a), Section::new(new, b));
            let settings = diff_settings(a, b);
            let values = diff_exprs(&before.values(), &after.values());
            let order = step_order(a, b);
            let steps = diff_steps(&before, &after);
            let unchanged =
                settings.is_empty() && values.is_empty() && order.is_none() && steps.is_empty();
            (!unchanged).then_some(TrainDiff::Changed { settings, values, order, steps })
        }
    }
}

fn diff_settings(old: &TrainSpec, new: &TrainSpec) -> Vec<SettingChange> {
    let pairs = [
        ("data", data_setting(&old.data), data_setting(&new.data)),
        ("schedule", schedule_setting(&old.schedule), schedule_setting(&new.schedule)),
        ("epochs", Setting::value(old.epochs), Setting::value(new.epochs)),
        ("infer", Setting::value(&old.generator), Setting::value(&new.generator)),
    ];
    let changes = pairs.into_iter().filter_map(|(name, a, b)| a.diff(&b).map(|d| (name, d)));
    changes.map(|(name, detail)| SettingChange { name: name.to_string(), detail }).collect()
}

/// Returns each step with its label: the name of its network, followed by `#k` for the
/// `k`-th step (from 2) of a network that several steps update.
fn labeled_steps(train: &TrainSpec) -> impl Iterator<Item = (String, &StepSpec)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    train.steps.iter().map(move |step| {
        let count = seen.entry(step.name.as_str()).or_default();
        *count += 1;
        let label = if *count == 1 { step.name.clone() } else { format!("{} #{count}", step.name) };
        (label, step)
    })
}

/// Returns the steps that both versions have, by label, when they run in another order.
fn step_order(old: &TrainSpec, new: &TrainSpec) -> Option<(Vec<String>, Vec<String>)> {
    let names = |spec: &TrainSpec| labeled_steps(spec).map(|(label, _)| label).collect::<Vec<_>>();
    let (a, b) = (names(old), names(new));
    let common_a: Vec<String> = a.iter().filter(|n| b.contains(n)).cloned().collect();
    let common_b: Vec<String> = b.iter().filter(|n| a.contains(n)).cloned().collect();
    (common_a != common_b).then_some((common_a, common_b))
}

fn diff_steps(old: &Section, new: &Section) -> Vec<StepChange> {
    let before: Vec<(String, &StepSpec)> = labeled_steps(old.train).collect();
    let after: Vec<(String, &StepSpec)> = labeled_steps(new.train).collect();
    let mut changes = Vec::new();
    for (label, step) in &after {
        let Some((_, previous)) = before.iter().find(|(l, _)| l == label) else {
            changes.push(added_step(new, label.clone(), step));
            continue;
        };
        let optimizer =
            optimizer_setting(&previous.optimizer).diff(&optimizer_setting(&step.optimizer));
        let optimizer = optimizer.map(|detail| SettingChange { name: "optimizer".into(), detail });
        let terms = diff_exprs(&old.terms(previous), &new.terms(step));
        if optimizer.is_some() || !terms.is_empty() {
            changes.push(StepChange::Changed { name: label.clone(), optimizer, terms });
        }
    }
    for (label, step) in &before {
        if !after.iter().any(|(l, _)| l == label) {
            let optimizer = optimizer_setting(&step.optimizer).render();
            changes.push(StepChange::Removed { name: label.clone(), optimizer });
        }
    }
    changes
}

fn added_step(section: &Section, label: String, step: &StepSpec) -> StepChange {
    let terms = diff_exprs(&[], &section.terms(step));
    let optimizer = optimizer_setting(&step.optimizer).render();
    StepChange::Added { name: label, optimizer, terms }
}

/// Compares named expressions, each with its constant factor split off.
fn diff_exprs(old: &[Named], new: &[Named]) -> Vec<ExprChange> {
    let mut changes = Vec::new();
    for item in new {
        let name = item.name.clone();
        match old.iter().find(|o| o.name == item.name) {
            None => changes.push(ExprChange::Added { name, expr: item.whole() }),
            Some(before) if before.body != item.body => {
                changes.push(ExprChange::Changed { name, old: before.whole(), new: item.whole() })
            }
            Some(before) if before.weight != item.weight => {
                changes.push(ExprChange::Weight { name, old: before.weight, new: item.weight })
            }
            Some(_) => {}
        }
    }
    for item in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)) {
        changes.push(ExprChange::Removed { name: item.name.clone(), expr: item.whole() });
    }
    changes
}

/// A setting as a kind and its keys with rendered values, such as `paired` with
/// `batch` 1.
struct Setting {
    kind: String,
    keys: Vec<(&'static str, String)>,
}

impl Setting {
    fn value(value: impl ToString) -> Setting {
        Setting { kind: value.to_string(), keys: Vec::new() }
    }

    /// Renders it as the `.net` file writes it: `paired(input=right, batch=1)`.
    fn render(&self) -> String {
        if self.keys.is_empty() {
            return self.kind.clone();
        }
        let keys: Vec<String> = self.keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}({})", self.kind, keys.join(", "))
    }

    /// Describes the change to `new` as the keys that differ, or as both whole settings
    /// when the kind differs. Returns `None` when they agree.
    fn diff(&self, new: &Setting) -> Option<String> {
        if self.kind != new.kind || self.keys.is_empty() {
            let (a, b) = (self.render(), new.render());
            return (a != b).then(|| format!("{a} -> {b}"));
        }
        let changed: Vec<String> = self
            .keys
            .iter()
            .zip(&new.keys)
            .filter(|(a, b)| a.1 != b.1)
            .map(|((key, a), (_, b))| format!("{key} {a} -> {b}"))
            .collect();
        (!changed.is_empty()).then(|| changed.join(", "))
    }
}

fn data_setting(data: &DataSpec) -> Setting {
    let flip = data.flip.to_string();
    let batch = data.batch.to_string();
    if let Some(labeled) = &data.labeled {
        let size = data.resize.map_or_else(|| "none".into(), |s| s.to_string());
        let keys = vec![
            ("classes", labeled.classes.to_string()),
            ("size", size),
            ("channels", labeled.channels.to_string()),
            ("flip", flip),
            ("batch", batch),
        ];
        return Setting { kind: "labeled".into(), keys };
    }
    let half = |h: Half| if h == Half::Left { "left" } else { "right" }.to_string();
    let size = |s: Option<usize>| s.map_or_else(|| "none".into(), |s| s.to_string());
    let keys = vec![
        ("input", half(data.input)),
        ("target", half(data.target)),
        ("resize", size(data.resize)),
        ("crop", size(data.crop)),
        ("flip", flip),
        ("batch", batch),
    ];
    Setting { kind: "paired".into(), keys }
}

fn schedule_setting(schedule: &Schedule) -> Setting {
    match schedule {
        Schedule::Constant => Setting::value("constant_lr"),
        Schedule::LinearDecay { constant, decay } => Setting {
            kind: "linear_decay".into(),
            keys: vec![("constant", constant.to_string()), ("decay", decay.to_string())],
        },
    }
}

fn optimizer_setting(optimizer: &Optimizer) -> Setting {
    match *optimizer {
        Optimizer::Adam { lr, beta1, beta2, eps } => Setting {
            kind: "adam".into(),
            keys: vec![
                ("lr", number(lr)),
                ("beta1", number(beta1)),
                ("beta2", number(beta2)),
                ("eps", number(eps)),
            ],
        },
        Optimizer::Sgd { lr, momentum } => Setting {
            kind: "sgd".into(),
            keys: vec![("lr", number(lr)), ("momentum", number(momentum))],
        },
    }
}

/// Formats an f32 in its shortest form, with an exponent for very small or large values
/// (`1e-8` rather than `0.00000001`).
fn number(value: f32) -> String {
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-4..1e6).contains(&magnitude) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

/// A loss term or `let` value: its name, its constant factor and the rest of it.
struct Named {
    name: String,
    weight: f32,
    body: String,
}

impl Named {
    /// Renders the whole expression, with its factor where it is not 1.
    fn whole(&self) -> String {
        if self.weight == 1.0 {
            self.body.clone()
        } else {
            format!("{} * {}", number(self.weight), self.body)
        }
    }
}

/// One module's train section, for reading its expressions back from the graph.
struct Section<'a> {
    module: &'a Module,
    train: &'a TrainSpec,
    /// The `let` values by node, which the expressions that read them show by name.
    values: HashMap<NodeId, &'a str>,
}

impl<'a> Section<'a> {
    fn new(module: &'a Module, train: &'a TrainSpec) -> Self {
        let values = value_outputs(train).map(|(name, node)| (node, name)).collect();
        Section { module, train, values }
    }

    fn graph(&self) -> &'a Graph {
        &self.train.graph
    }

    fn values(&self) -> Vec<Named> {
        let named = value_outputs(self.train).map(|(name, node)| Named {
            name: name.to_string(),
            weight: 1.0,
            body: self.expr(node, true),
        });
        named.collect()
    }

    fn terms(&self, step: &StepSpec) -> Vec<Named> {
        let term = |t: &crate::ir::LossTerm| {
            let (weight, body) = self.split_weight(t.node);
            Named { name: t.name.clone(), weight, body }
        };
        step.terms.iter().map(term).collect()
    }

    /// Splits a constant factor off `node`: `c * x`, `x * c` and `x / c` give `c` (or
    /// `1 / c`) and `x`. Any other expression has the factor 1.
    fn split_weight(&self, node: NodeId) -> (f32, String) {
        let graph = self.graph();
        let operands = graph.operands(node);
        let constant = |id: NodeId| match graph.node(id).op {
            Op::Constant { value } => Some(value),
            _ => None,
        };
        let split = match (&graph.node(node).op, operands.as_slice()) {
            (Op::Mul, &[a, b]) => match (constant(a), constant(b)) {
                (Some(c), None) => Some((c, b)),
                (None, Some(c)) => Some((c, a)),
                _ => None,
            },
            (Op::Div, &[a, b]) => constant(b).filter(|&c| c != 0.0).map(|c| (1.0 / c, a)),
            _ => None,
        };
        match split {
            Some((weight, rest)) => (weight, self.expr(rest, false)),
            None => (1.0, self.expr(node, true)),
        }
    }

    /// Renders the expression that computes `node`. A `let` value other than the `root`
    /// is shown by its name, and a network instance as a call of the network.
    fn expr(&self, node: NodeId, root: bool) -> String {
        if !root {
            if let Some(name) = self.values.get(&node) {
                return name.to_string();
            }
        }
        let graph = self.graph();
        let n = graph.node(node);
        let operands = graph.operands(node);
        match &n.op {
            Op::Input { name } => return name.clone(),
            Op::Constant { value } => return number(*value),
            Op::Param { id } => return self.module.params[*id].name.clone(),
            _ => {}
        }
        if let Some((net, base)) = self.instance(&n.name) {
            return self.call(node, net, base);
        }
        match (&n.op, operands.as_slice()) {
            (Op::Add | Op::Sub | Op::Mul | Op::Div, &[a, b]) => {
                let symbol = match n.op {
                    Op::Add => "+",
                    Op::Sub => "-",
                    Op::Mul => "*",
                    _ => "/",
                };
                let left = self.operand(a, precedence(&n.op), false);
                let right = self.operand(b, precedence(&n.op), matches!(n.op, Op::Sub | Op::Div));
                format!("{left} {symbol} {right}")
            }
            (Op::Neg, &[a]) => format!("-{}", self.operand(a, 3, false)),
            (op, _) => {
                let mut args: Vec<String> = operands.iter().map(|&o| self.expr(o, false)).collect();
                args.extend(super::diff::op_fields(op));
                format!("{}({})", op.name(), args.join(", "))
            }
        }
    }

    /// Renders an operand of a binary op of precedence `parent`, in parentheses where it
    /// binds looser (or equally loose on the right of `-` and `/`).
    fn operand(&self, node: NodeId, parent: u8, right: bool) -> String {
        let text = self.expr(node, false);
        let shown_as_op = !self.values.contains_key(&node)
            && self.instance(&self.graph().node(node).name).is_none();
        let own = precedence(&self.graph().node(node).op);
        if shown_as_op && (own < parent || (right && own == parent)) {
            format!("({text})")
        } else {
            text
        }
    }

    /// Returns the network and the name prefix of the instance that a train-graph node
    /// belongs to. Such nodes are named `<site>.<net>.<layer>.<role>` (the front end's
    /// convention), and a network's name is never that of an op.
    fn instance<'n>(&self, name: &'n str) -> Option<(&'a str, &'n str)> {
        let segments: Vec<&str> = name.split('.').collect();
        // A site comes before the network's name and a layer after it.
        for index in 1..segments.len().saturating_sub(1) {
            let Some(net) = self.module.nets.iter().find(|n| n.name == segments[index]) else {
                continue;
            };
            let length = segments[..=index].iter().map(|s| s.len() + 1).sum::<usize>() - 1;
            return Some((net.name.as_str(), &name[..length]));
        }
        None
    }

    /// Renders the network instance whose output is `node` as `net(arg, ...)`. The
    /// arguments are the values outside the instance that it reads, in the order of the
    /// network's declared inputs where the standalone network shows which one each is.
    fn call(&self, node: NodeId, net: &str, base: &str) -> String {
        let graph = self.graph();
        let prefix = format!("{base}.");
        let site = &base[..base.len() - net.len()];
        let standalone = self.module.net(net);
        let mut args: Vec<(usize, NodeId)> = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![node];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            for (slot, operand) in graph.operands(id).into_iter().enumerate() {
                let inner = graph.node(operand);
                if inner.name.starts_with(&prefix) {
                    stack.push(operand);
                    continue;
                }
                if matches!(inner.op, Op::Param { .. } | Op::Constant { .. }) {
                    continue;
                }
                if args.iter().any(|&(_, a)| a == operand) {
                    continue;
                }
                // The same node of the standalone network reads an `Input` in this slot,
                // whose position among the network's inputs is the argument's.
                let name = graph.node(id).name.strip_prefix(site).unwrap_or_default();
                let position =
                    standalone.and_then(|n| Some((n, n.graph.find(name)?))).and_then(|(n, id)| {
                        let input = *n.graph.operands(id).get(slot)?;
                        let Op::Input { name } = &n.graph.node(input).op else { return None };
                        n.inputs.iter().position(|i| &i.name == name)
                    });
                args.push((position.unwrap_or(usize::MAX), operand));
            }
        }
        args.sort_by_key(|&(position, _)| position);
        let args: Vec<String> = args.iter().map(|&(_, a)| self.expr(a, false)).collect();
        format!("{net}({})", args.join(", "))
    }
}

/// Lists the graph outputs that are `let` values, which are neither loss terms nor a
/// step's total loss.
fn value_outputs(train: &TrainSpec) -> impl Iterator<Item = (&str, NodeId)> {
    let terms: HashSet<&str> =
        train.steps.iter().flat_map(|s| s.terms.iter().map(|t| t.name.as_str())).collect();
    let losses: HashSet<String> = train.steps.iter().map(|s| format!("{}.loss", s.name)).collect();
    train
        .graph
        .outputs
        .iter()
        .filter(move |(name, _)| !terms.contains(name.as_str()) && !losses.contains(name))
        .map(|(name, node)| (name.as_str(), *node))
}

fn precedence(op: &Op) -> u8 {
    match op {
        Op::Add | Op::Sub => 1,
        Op::Mul | Op::Div => 2,
        _ => 3,
    }
}

/// Renders the train section's change as `netc diff` prints it, after the networks.
pub fn render(out: &mut String, diff: &TrainDiff) {
    match diff {
        TrainDiff::Added { steps } => {
            let _ = writeln!(out, "train: added");
            for step in steps {
                render_step(out, step);
            }
        }
        TrainDiff::Removed => {
            let _ = writeln!(out, "train: removed");
        }
        TrainDiff::Changed { settings, values, order, steps } => {
            let _ = writeln!(out, "train");
            let mut rows: Vec<[String; 3]> = settings
                .iter()
                .map(|s| ["changed".into(), s.name.clone(), s.detail.clone()])
                .collect();
            rows.extend(values.iter().map(|v| expr_row(v, "value ")));
            if let Some((a, b)) = order {
                let detail = format!("{} -> {}", a.join(", "), b.join(", "));
                rows.push(["changed".into(), "step order".into(), detail]);
            }
            write_rows(out, "  ", &rows);
            for step in steps {
                render_step(out, step);
            }
        }
    }
    out.push('\n');
}

fn render_step(out: &mut String, step: &StepChange) {
    let rows: Vec<[String; 3]> = match step {
        StepChange::Added { name, optimizer, terms } => {
            let _ = writeln!(out, "  step {name}: added, {optimizer}");
            terms.iter().map(|t| expr_row(t, "")).collect()
        }
        StepChange::Removed { name, optimizer } => {
            let _ = writeln!(out, "  step {name}: removed, {optimizer}");
            Vec::new()
        }
        StepChange::Changed { name, optimizer, terms } => {
            let _ = writeln!(out, "  step {name}");
            let optimizer = optimizer.iter().map(|o| {
                let row: [String; 3] = ["changed".into(), o.name.clone(), o.detail.clone()];
                row
            });
            optimizer.chain(terms.iter().map(|t| expr_row(t, ""))).collect()
        }
    };
    write_rows(out, "    ", &rows);
}

fn expr_row(change: &ExprChange, kind: &str) -> [String; 3] {
    match change {
        ExprChange::Added { name, expr } => ["added".into(), format!("{kind}{name}"), expr.clone()],
        ExprChange::Removed { name, expr } => {
            ["removed".into(), format!("{kind}{name}"), expr.clone()]
        }
        ExprChange::Changed { name, old, new } => {
            ["changed".into(), format!("{kind}{name}"), format!("{old} -> {new}")]
        }
        ExprChange::Weight { name, old, new } => [
            "changed".into(),
            format!("{kind}{name}"),
            format!("weight {} -> {}", number(*old), number(*new)),
        ],
    }
}

fn write_rows(out: &mut String, indent: &str, rows: &[[String; 3]]) {
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    for [kind, name, detail] in rows {
        let _ = writeln!(out, "{indent}{kind:w0$}  {name:w1$}  {detail}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::LabeledData;

    #[test]
    fn setting_diff_lists_changed_keys() {
        let sgd = |lr, momentum| optimizer_setting(&Optimizer::Sgd { lr, momentum });
        assert_eq!(sgd(0.01, 0.9).diff(&sgd(0.01, 0.9)), None);
        assert_eq!(
            sgd(0.01, 0.9).diff(&sgd(0.1, 0.0)).unwrap(),
            "lr 0.01 -> 0.1, momentum 0.9 -> 0"
        );
        let adam =
            optimizer_setting(&Optimizer::Adam { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8 });
        assert_eq!(
            sgd(0.01, 0.9).diff(&adam).unwrap(),
            "sgd(lr=0.01, momentum=0.9) -> adam(lr=0.0002, beta1=0.5, beta2=0.999, eps=1e-8)"
        );
        let constant = schedule_setting(&Schedule::Constant);
        let decay = schedule_setting(&Schedule::LinearDecay { constant: 100, decay: 100 });
        assert_eq!(
            constant.diff(&decay).unwrap(),
            "constant_lr -> linear_decay(constant=100, decay=100)"
        );
        assert_eq!(Setting::value(200).diff(&Setting::value(100)).unwrap(), "200 -> 100");
    }

    #[test]
    fn labeled_data_keys() {
        let data = |classes, batch| DataSpec {
            input: Half::Left,
            target: Half::Right,
            resize: Some(32),
            crop: None,
            flip: true,
            batch,
            labeled: Some(LabeledData { classes, channels: 3 }),
        };
        let (a, b) = (data_setting(&data(10, 32)), data_setting(&data(100, 64)));
        assert_eq!(a.render(), "labeled(classes=10, size=32, channels=3, flip=true, batch=32)");
        assert_eq!(a.diff(&b).unwrap(), "classes 10 -> 100, batch 32 -> 64");
    }

    #[test]
    fn number_is_short() {
        assert_eq!(number(2e-4), "0.0002");
        assert_eq!(number(1e-8), "1e-8");
        assert_eq!(number(100.0), "100");
        assert_eq!(number(0.0), "0");
    }
}
