//! `netc check`: compiles a model and prints its layer table, the parameter totals per
//! network and the training steps, or the rendered diagnostics.

use super::{DeviceArgs, ModelArgs};
use netc::frontend;
use netc::frontend::sizes::SizeReport;
use netc::ir::{DataSpec, Half, Module, Net, Op, Optimizer, ParamKind, Schedule, TrainSpec};
use netc::runtime::Gpu;
use netc::train::gradcheck::{check_gradients, GradCheckOptions, Verdict};
use std::fmt::Write;
use std::process::ExitCode;

pub fn run(
    model: &ModelArgs,
    grad: bool,
    watch: bool,
    device: &DeviceArgs,
) -> miette::Result<ExitCode> {
    if grad {
        let module =
            frontend::compile_file(&model.file, &model.set).map_err(miette::Report::new)?;
        return check_grad(&module, device);
    }
    if watch {
        return super::watch::check(model);
    }
    let module = frontend::compile_file(&model.file, &model.set).map_err(miette::Report::new)?;
    let sizes = match std::fs::read_to_string(&model.file) {
        Ok(text) => frontend::sizes::legal_input_sizes(&text, &model.set),
        Err(_) => Vec::new(),
    };
    print!("{}", render(&module, &sizes));
    Ok(ExitCode::SUCCESS)
}

/// One row of the layer table.
struct Row {
    layer: String,
    ops: String,
    shape: String,
    params: usize,
}

/// Renders the whole report: a table per network, then the training steps.
pub fn render(module: &Module, sizes: &[SizeReport]) -> String {
    let mut out = String::new();
    for net in &module.nets {
        render_net(&mut out, module, net);
        for report in sizes.iter().filter(|r| r.net == net.name) {
            let _ = writeln!(out, "  {}", report.describe());
        }
        out.push('\n');
    }
    if let Some(train) = &module.train {
        render_train(&mut out, module, train);
    }
    out
}

/// Longest `ops` cell of the layer table; longer chains are cut with a count of the ops.
const MAX_OPS_WIDTH: usize = 80;

/// Cuts a long `a -> b -> c` chain to fit [`MAX_OPS_WIDTH`], keeping its first ops and
/// saying how many there are in all.
fn clip_ops(ops: &str) -> String {
    if ops.len() <= MAX_OPS_WIDTH {
        return ops.to_string();
    }
    let count = ops.split(" -> ").count();
    let mut kept = String::new();
    for op in ops.split(" -> ") {
        let next = if kept.is_empty() { op.to_string() } else { format!("{kept} -> {op}") };
        if next.len() > MAX_OPS_WIDTH - 20 {
            break;
        }
        kept = next;
    }
    format!("{kept} -> ... ({count} ops)")
}

fn render_net(out: &mut String, module: &Module, net: &Net) {
    let inputs: Vec<String> =
        net.inputs.iter().map(|i| format!("{}: {}", i.name, i.shape)).collect();
    let _ = writeln!(out, "net {}({})", net.name, inputs.join(", "));
    let mut rows = layer_rows(module, net);
    for row in &mut rows {
        row.ops = clip_ops(&row.ops);
    }
    let header =
        Row { layer: "layer".into(), ops: "ops".into(), shape: "output".into(), params: 0 };
    let width = |f: fn(&Row) -> usize| rows.iter().chain([&header]).map(f).max().unwrap_or(0);
    let (wl, wo, ws) = (width(|r| r.layer.len()), width(|r| r.ops.len()), width(|r| r.shape.len()));
    let _ = writeln!(out, "  {:wl$}  {:wo$}  {:ws$}  {:>12}", "layer", "ops", "output", "params");
    for r in &rows {
        let _ = writeln!(
            out,
            "  {:wl$}  {:wo$}  {:ws$}  {:>12}",
            r.layer,
            r.ops,
            r.shape,
            thousands(r.params)
        );
    }
    let trainable = module.trainable_count(&net.name);
    let buffers: usize = net
        .params
        .iter()
        .map(|&p| &module.params[p])
        .filter(|p| p.kind == ParamKind::Buffer)
        .map(|p| p.shape.numel())
        .sum();
    let _ = writeln!(out, "  trainable parameters: {}", thousands(trainable));
    let _ = writeln!(out, "  buffers (batch-norm statistics): {}", thousands(buffers));
}

/// Groups the nodes of a network by layer, in the order the layers were built.
fn layer_rows(module: &Module, net: &Net) -> Vec<Row> {
    let graph = &net.graph;
    let mut rows: Vec<Row> = Vec::new();
    let prefix = format!("{}.", net.name);
    for id in graph.topo_order() {
        let node = graph.node(id);
        if matches!(node.op, Op::Input { .. } | Op::Param { .. } | Op::Constant { .. }) {
            continue;
        }
        let Some(rest) = node.name.strip_prefix(&prefix) else { continue };
        let layer = rest.split('.').next().unwrap_or(rest).to_string();
        let row = match rows.iter_mut().find(|r| r.layer == layer) {
            Some(row) => row,
            None => {
                let params = layer_params(module, net, &layer);
                rows.push(Row { layer, ops: String::new(), shape: String::new(), params });
                rows.last_mut().expect("a row was just pushed")
            }
        };
        if !row.ops.is_empty() {
            row.ops.push_str(" -> ");
        }
        row.ops.push_str(node.op.name());
        row.shape = node.shape.to_string();
    }
    rows
}

fn layer_params(module: &Module, net: &Net, layer: &str) -> usize {
    let prefix = format!("{}.{layer}.", net.name);
    net.params
        .iter()
        .map(|&p| &module.params[p])
        .filter(|p| p.kind == ParamKind::Trainable && p.name.starts_with(&prefix))
        .map(|p| p.shape.numel())
        .sum()
}

fn render_train(out: &mut String, module: &Module, train: &TrainSpec) {
    let _ = writeln!(out, "train");
    let _ = writeln!(out, "  data: {}", describe_data(&train.data));
    let schedule = match &train.schedule {
        Schedule::Constant => "constant_lr".to_string(),
        Schedule::LinearDecay { constant, decay } => {
            format!("linear_decay(constant={constant}, decay={decay})")
        }
    };
    let _ = writeln!(out, "  epochs: {}, schedule: {schedule}", train.epochs);
    let _ = writeln!(out, "  infer: {}", train.generator);
    let _ = writeln!(out, "  iteration graph: {} nodes", train.graph.node_count());
    for step in &train.steps {
        let count: usize = step.params.iter().map(|&p| module.params[p].shape.numel()).sum();
        let terms: Vec<&str> = step.terms.iter().map(|t| t.name.as_str()).collect();
        let optimizer = match step.optimizer {
            Optimizer::Adam { lr, beta1, beta2, eps } => {
                format!("adam(lr={lr:e}, beta1={beta1}, beta2={beta2}, eps={eps:e})")
            }
            Optimizer::Sgd { lr, momentum } => format!("sgd(lr={lr:e}, momentum={momentum})"),
        };
        let _ = writeln!(
            out,
            "  step {} {}: {optimizer} on {} parameters, minimize {}",
            step.phase,
            step.name,
            thousands(count),
            terms.join(" + ")
        );
    }
}

fn describe_data(data: &DataSpec) -> String {
    let mut parts = Vec::new();
    match &data.labeled {
        Some(l) => {
            parts.push(format!("labeled images, {} classes, {} channels", l.classes, l.channels));
            if let Some(size) = data.resize {
                parts.push(format!("size {size}"));
            }
        }
        None => {
            let half = |h: Half| if h == Half::Left { "left" } else { "right" };
            parts.push(format!(
                "paired images, input {}, target {}",
                half(data.input),
                half(data.target)
            ));
            if let Some(r) = data.resize {
                parts.push(format!("resize {r}"));
            }
            if let Some(c) = data.crop {
                parts.push(format!("crop {c}"));
            }
        }
    }
    if data.flip {
        parts.push("flip".into());
    }
    parts.push(format!("batch {}", data.batch));
    parts.join(", ")
}

/// Formats a count with thousands separators: 54414976 as 54,414,976.
fn thousands(n: usize) -> String {
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

/// Runs the finite-difference gradient check of `module` on the chosen adapter and prints
/// one row per step and parameter. Fails when any gradient disagrees.
fn check_grad(module: &Module, device: &DeviceArgs) -> miette::Result<ExitCode> {
    let gpu = Gpu::open(device.adapter.as_deref())?;
    let options = GradCheckOptions::default();
    let checks = check_gradients(&gpu, module, &options)?;

    let width = checks.iter().map(|c| c.param.len()).max().unwrap_or(0).max("parameter".len());
    let step_width = checks.iter().map(|c| c.step.len()).max().unwrap_or(0).max("step".len());
    println!(
        "gradient check of {} on {}: autodiff against central differences along a random \
         sign vector, relative step {}; a difference passes within `allowed`, {} of the \
         larger value plus the f32 rounding of the loss over 2h",
        module.name, gpu.info.name, options.step_size, options.rtol
    );
    println!(
        "{:<step_width$}  {:<width$}  {:>13}  {:>13}  {:>9}  {:>9}  result",
        "step", "parameter", "autodiff", "numeric", "allowed", "h"
    );
    for c in &checks {
        let result = match c.verdict {
            Verdict::Agrees => "ok",
            Verdict::Mismatch => "MISMATCH",
            Verdict::NotDifferentiable => "kink: not differentiable here, not checked",
            Verdict::Inconclusive => "inconclusive: below the loss's f32 resolution",
        };
        println!(
            "{:<step_width$}  {:<width$}  {:>13.6e}  {:>13.6e}  {:>9.2e}  {:>9.2e}  {result}",
            c.step, c.param, c.analytic, c.numeric, c.allowed, c.step_size
        );
    }
    let count = |verdict| checks.iter().filter(|c| c.verdict == verdict).count();
    let failed = count(Verdict::Mismatch);
    println!(
        "{} of {} gradients agree, {failed} disagree, {} not checked at a kink, {} inconclusive",
        count(Verdict::Agrees),
        checks.len(),
        count(Verdict::NotDifferentiable),
        count(Verdict::Inconclusive)
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
