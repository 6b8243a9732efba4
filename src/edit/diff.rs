//! The architecture change between two checked versions of a model. It lists the params
//! whose value changed and the networks and layers added or removed. It also lists layers
//! with a new output shape, new ops or new parameters, every parameter added, removed or
//! reshaped, and the trainable parameter count of each network before and after.
//!
//! Layers and parameters are matched by name, the same way a checkpoint is matched by
//! [`super::transfer`], so a renamed layer shows as one layer removed and one added.
//! Changes to the `train` section (steps, optimizers, loss terms, data, schedule) come from
//! [`super::train_diff`].

use super::layers::{layer_of, layers, Layer};
use super::train_diff::{self, TrainDiff};
use crate::ir::{Module, Op, ParamDecl, ParamKind, Shape};
use std::fmt::Write;

/// A `param` of the file whose resolved value differs, or that only one version declares.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingChange {
    pub name: String,
    pub old: Option<serde_json::Value>,
    pub new: Option<serde_json::Value>,
}

/// The change of one layer between the versions.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerChange {
    Added(Layer),
    Removed(Layer),
    /// Present in both versions with a different output shape, op chain or parameters.
    Changed {
        old: Layer,
        new: Layer,
        params_reshaped: bool,
    },
}

/// The change of one declared parameter or buffer between the versions.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamChange {
    Added { name: String, shape: Shape, kind: ParamKind },
    Removed { name: String, shape: Shape, kind: ParamKind },
    Reshaped { name: String, old: Shape, new: Shape, kind: ParamKind },
}

impl ParamChange {
    pub fn name(&self) -> &str {
        match self {
            ParamChange::Added { name, .. }
            | ParamChange::Removed { name, .. }
            | ParamChange::Reshaped { name, .. } => name,
        }
    }
}

/// The change of one network. `old_params` is `None` for a network that only the new
/// version has, and `new_params` for one that only the old version has.
#[derive(Clone, Debug, PartialEq)]
pub struct NetDiff {
    pub name: String,
    pub old_params: Option<usize>,
    pub new_params: Option<usize>,
    pub layers: Vec<LayerChange>,
    pub params: Vec<ParamChange>,
}

impl NetDiff {
    pub fn is_unchanged(&self) -> bool {
        self.old_params.is_some()
            && self.new_params.is_some()
            && self.layers.is_empty()
            && self.params.is_empty()
    }
}

/// Everything that differs between two versions of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleDiff {
    pub settings: Vec<SettingChange>,
    /// Networks of the new version in its order, then those only the old version has.
    pub nets: Vec<NetDiff>,
    /// The change of the train section; `None` when neither version has one or they agree.
    pub train: Option<TrainDiff>,
}

impl ModuleDiff {
    /// True when no setting, network, layer, parameter or part of the train section differs.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
            && self.nets.iter().all(NetDiff::is_unchanged)
            && self.train.is_none()
    }
}

/// Compares two checked modules.
pub fn diff(old: &Module, new: &Module) -> ModuleDiff {
    let mut nets = Vec::new();
    for net in &new.nets {
        nets.push(diff_net(old, new, &net.name));
    }
    for net in old.nets.iter().filter(|n| new.net(&n.name).is_none()) {
        nets.push(diff_net(old, new, &net.name));
    }
    ModuleDiff { settings: diff_settings(old, new), nets, train: train_diff::diff_train(old, new) }
}

fn diff_settings(old: &Module, new: &Module) -> Vec<SettingChange> {
    let lookup = |module: &Module, name: &str| {
        module.settings.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };
    let mut changes = Vec::new();
    let names = new.settings.iter().chain(&old.settings).map(|(n, _)| n);
    for name in names {
        if changes.iter().any(|c: &SettingChange| &c.name == name) {
            continue;
        }
        let (before, after) = (lookup(old, name), lookup(new, name));
        if before != after {
            changes.push(SettingChange { name: name.clone(), old: before, new: after });
        }
    }
    changes
}

fn diff_net(old: &Module, new: &Module, name: &str) -> NetDiff {
    let params = diff_params(old, new, name);
    let old_layers = old.net(name).map(|n| layers(old, n)).unwrap_or_default();
    let new_layers = new.net(name).map(|n| layers(new, n)).unwrap_or_default();

    let mut changes = Vec::new();
    for layer in &new_layers {
        match old_layers.iter().find(|l| l.name == layer.name) {
            None => changes.push(LayerChange::Added(layer.clone())),
            Some(before) => {
                let reshaped =
                    params.iter().any(|p| layer_of(name, p.name()) == Some(layer.name.as_str()));
                if reshaped || !same_layer(before, layer) {
                    changes.push(LayerChange::Changed {
                        old: before.clone(),
                        new: layer.clone(),
                        params_reshaped: reshaped,
                    });
                }
            }
        }
    }
    for layer in old_layers.iter().filter(|l| !new_layers.iter().any(|n| n.name == l.name)) {
        changes.push(LayerChange::Removed(layer.clone()));
    }
    NetDiff {
        name: name.to_string(),
        old_params: old.net(name).map(|_| old.trainable_count(name)),
        new_params: new.net(name).map(|_| new.trainable_count(name)),
        layers: changes,
        params,
    }
}

fn same_layer(old: &Layer, new: &Layer) -> bool {
    old.output == new.output
        && old.ops.len() == new.ops.len()
        && old.ops.iter().zip(&new.ops).all(|(a, b)| same_op(a, b))
}

/// Compares two ops by kind and settings. Batch norm refers to its running statistics by
/// [`crate::ir::ParamId`], an index that differs between modules, so only its settings count.
fn same_op(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (
            Op::BatchNorm { eps: e1, momentum: m1, .. },
            Op::BatchNorm { eps: e2, momentum: m2, .. },
        ) => e1 == e2 && m1 == m2,
        _ => a == b,
    }
}

fn diff_params(old: &Module, new: &Module, net: &str) -> Vec<ParamChange> {
    let of_net = |module: &'_ Module| -> Vec<ParamDecl> {
        module.params.iter().filter(|p| p.net == net).cloned().collect()
    };
    let (before, after) = (of_net(old), of_net(new));
    let mut changes = Vec::new();
    for p in &after {
        match before.iter().find(|b| b.name == p.name) {
            None => changes.push(ParamChange::Added {
                name: p.name.clone(),
                shape: p.shape.clone(),
                kind: p.kind,
            }),
            Some(b) if b.shape != p.shape => changes.push(ParamChange::Reshaped {
                name: p.name.clone(),
                old: b.shape.clone(),
                new: p.shape.clone(),
                kind: p.kind,
            }),
            Some(_) => {}
        }
    }
    for b in before.iter().filter(|b| !after.iter().any(|p| p.name == b.name)) {
        changes.push(ParamChange::Removed {
            name: b.name.clone(),
            shape: b.shape.clone(),
            kind: b.kind,
        });
    }
    changes
}

/// Renders the diff as `netc diff` prints it.
pub fn render(diff: &ModuleDiff) -> String {
    let mut out = String::new();
    if diff.is_empty() {
        out.push_str("no architecture or training change\n");
    }
    for s in &diff.settings {
        let show =
            |v: &Option<serde_json::Value>| v.as_ref().map_or("absent".into(), ToString::to_string);
        let _ = writeln!(out, "param {}: {} -> {}", s.name, show(&s.old), show(&s.new));
    }
    if !diff.settings.is_empty() {
        out.push('\n');
    }
    for net in &diff.nets {
        render_net(&mut out, net);
    }
    if let Some(train) = &diff.train {
        train_diff::render(&mut out, train);
    }
    out
}

fn render_net(out: &mut String, net: &NetDiff) {
    let _ = match (net.old_params, net.new_params) {
        (Some(a), Some(b)) if a == b => {
            writeln!(out, "net {}: {} trainable parameters", net.name, thousands(b))
        }
        (Some(a), Some(b)) => writeln!(
            out,
            "net {}: {} -> {} trainable parameters ({})",
            net.name,
            thousands(a),
            thousands(b),
            signed(b as i128 - a as i128)
        ),
        (None, Some(b)) => {
            writeln!(out, "net {}: added, {} trainable parameters", net.name, thousands(b))
        }
        (Some(a), None) => {
            writeln!(out, "net {}: removed, {} trainable parameters", net.name, thousands(a))
        }
        (None, None) => Ok(()),
    };
    if net.is_unchanged() {
        let _ = writeln!(out, "  unchanged");
    }

    let rows: Vec<[String; 3]> =
        net.layers.iter().map(|change| layer_row(change, &net.layers)).collect();
    write_table(out, "layers", &rows);
    let rows: Vec<[String; 3]> = net.params.iter().map(param_row).collect();
    write_table(out, "parameters", &rows);
    out.push('\n');
}

fn layer_row(change: &LayerChange, all: &[LayerChange]) -> [String; 3] {
    let summary =
        |l: &Layer| format!("{}  {}  {} params", l.chain(), l.output, thousands(l.trainable));
    match change {
        LayerChange::Added(l) => {
            let mut detail = summary(l);
            if let Some(old) = renamed_from(l, all) {
                let _ = write!(detail, "; same as removed {old}, whose weights will not transfer");
            }
            ["added".into(), l.name.clone(), detail]
        }
        LayerChange::Removed(l) => ["removed".into(), l.name.clone(), summary(l)],
        LayerChange::Changed { old, new, params_reshaped } => {
            let mut parts = Vec::new();
            if old.output != new.output {
                parts.push(format!("output {} -> {}", old.output, new.output));
            }
            if old.ops.len() != new.ops.len()
                || old.ops.iter().map(Op::name).ne(new.ops.iter().map(Op::name))
            {
                parts.push(format!("ops changed from {} to {}", old.chain(), new.chain()));
            } else {
                for (a, b) in old.ops.iter().zip(&new.ops).filter(|(a, b)| !same_op(a, b)) {
                    parts.push(format!("{} -> {}", op_settings(a), op_settings(b)));
                }
            }
            if *params_reshaped || old.trainable != new.trainable {
                let (a, b) = (old.trainable, new.trainable);
                parts.push(format!("params {} -> {}", thousands(a), thousands(b)));
            }
            ["changed".into(), new.name.clone(), parts.join(", ")]
        }
    }
}

/// Formats an op with its settings as the IR's JSON form names them:
/// `leaky_relu(slope=0.2)`. Parameter ids are left out because they are indices.
fn op_settings(op: &Op) -> String {
    format!("{}({})", op.name(), op_fields(op).join(", "))
}

/// Lists an op's settings as `key=value`, without the parameter ids.
pub(super) fn op_fields(op: &Op) -> Vec<String> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(op) else {
        return Vec::new();
    };
    fields
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "op" | "id" | "running_mean" | "running_var"))
        .map(|(key, value)| match value.as_f64().filter(|_| value.is_f64()) {
            // The IR stores f32, and its shortest form reads as the source wrote it.
            Some(float) => format!("{key}={}", float as f32),
            None => format!("{key}={value}"),
        })
        .collect()
}

/// Returns the one removed layer that `added` repeats exactly, which suggests a rename.
fn renamed_from<'a>(added: &Layer, all: &'a [LayerChange]) -> Option<&'a str> {
    let mut candidates = all.iter().filter_map(|c| match c {
        LayerChange::Removed(old) if same_layer(old, added) && old.trainable == added.trainable => {
            Some(old.name.as_str())
        }
        _ => None,
    });
    let first = candidates.next()?;
    candidates.next().is_none().then_some(first)
}

fn param_row(change: &ParamChange) -> [String; 3] {
    let buffer = |kind: &ParamKind| if *kind == ParamKind::Buffer { " (buffer)" } else { "" };
    match change {
        ParamChange::Added { name, shape, kind } => {
            ["added".into(), name.clone(), format!("{shape}{}", buffer(kind))]
        }
        ParamChange::Removed { name, shape, kind } => {
            ["removed".into(), name.clone(), format!("{shape}{}", buffer(kind))]
        }
        ParamChange::Reshaped { name, old, new, kind } => {
            ["reshaped".into(), name.clone(), format!("{old} -> {new}{}", buffer(kind))]
        }
    }
}

fn write_table(out: &mut String, title: &str, rows: &[[String; 3]]) {
    if rows.is_empty() {
        return;
    }
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    let _ = writeln!(out, "  {title}");
    for [kind, name, detail] in rows {
        let _ = writeln!(out, "    {kind:w0$}  {name:w1$}  {detail}");
    }
}

/// Formats a count with thousands separators: 54414976 as 54,414,976.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn signed(delta: i128) -> String {
    let sign = if delta < 0 { '-' } else { '+' };
    format!("{sign}{}", thousands(delta.unsigned_abs() as usize))
}
