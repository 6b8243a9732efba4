//! Weight transfer after an edit: matches the tensors of a checkpoint to the parameters
//! of a newly compiled module by name and shape.
//!
//! Needs: the module's parameter declarations and the checkpoint's tensors, each with
//! the optimizer moments saved for it. Guarantees: a parameter is copied only when the
//! checkpoint has a tensor of the same name and the same shape, and its moments travel
//! with it. Every other parameter is listed as re-initialised, with the reason, and
//! every checkpoint tensor left unused is listed as dropped. A checkpoint that would
//! copy no trainable parameter at all is rejected unless the caller forces it, because
//! that is almost always the wrong checkpoint rather than an edit.
//!
//! Names come from the source (`generator.d4.conv_transpose.weight`), so a renamed
//! layer is dropped and re-initialised, never matched by position.

use crate::ir::{ParamDecl, ParamId, ParamKind, Shape};
use crate::train::checkpoint::Tensor;
use std::collections::HashMap;
use std::fmt::Write;

/// One tensor of a checkpoint: a parameter or buffer, with the optimizer moments that
/// belong to it (Adam's first and second moments, SGD's momentum), each as long as
/// `values`.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedTensor {
    pub name: String,
    pub shape: Shape,
    pub values: Vec<f32>,
    pub moments: Vec<(String, Vec<f32>)>,
}

/// A parameter or buffer that the new module expects, by name and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSlot {
    pub name: String,
    pub shape: Shape,
    pub kind: ParamKind,
}

impl ParamSlot {
    /// Lists the slots of a module's declared parameters, indexed by [`ParamId`].
    pub fn of_params(params: &[ParamDecl]) -> Vec<ParamSlot> {
        let slot = |p: &ParamDecl| ParamSlot {
            name: p.name.clone(),
            shape: p.shape.clone(),
            kind: p.kind,
        };
        params.iter().map(slot).collect()
    }
}

/// The reason a parameter of the new module starts from its initializer.
#[derive(Clone, Debug, PartialEq)]
pub enum Reinit {
    NotInCheckpoint,
    /// The checkpoint has a tensor of this name with another shape.
    Reshaped {
        saved: Shape,
    },
}

/// A parameter of the new module that starts afresh.
#[derive(Clone, Debug, PartialEq)]
pub struct Reinitialized {
    pub param: ParamId,
    pub name: String,
    pub shape: Shape,
    pub reason: Reinit,
}

/// A checkpoint tensor that no parameter of the new module takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropped {
    pub name: String,
    pub shape: Shape,
    /// The shape the new module declares under the same name, if it has the name.
    pub new_shape: Option<Shape>,
}

/// The parameters a transfer copies and re-initialises, and the tensors it drops.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransferReport {
    /// The copied parameters by id and name, in the module's order.
    pub copied: Vec<(ParamId, String)>,
    pub reinitialized: Vec<Reinitialized>,
    /// In the checkpoint's order.
    pub dropped: Vec<Dropped>,
    /// Scalars copied and scalars the module has in all, buffers included.
    pub copied_values: usize,
    pub total_values: usize,
}

/// The result of a transfer: for each [`ParamId`] of the module, the checkpoint tensor
/// it starts from, or `None` where the caller draws it from its initializer with zero
/// optimizer moments.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    pub tensors: Vec<Option<SavedTensor>>,
    pub report: TransferReport,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum TransferError {
    #[error(
        "none of the {checkpoint} tensors in the checkpoint matches a trainable parameter of \
         the model by name and shape, so every parameter would start afresh\n{}",
        comparison.join("\n")
    )]
    #[diagnostic(help("{help}"))]
    NothingMatches {
        checkpoint: usize,
        /// Lines that compare the tensors that correspond: the names with two shapes, then
        /// the names that only one side has, each group under a title line.
        comparison: Vec<String>,
        /// Number of trainable parameters whose name the checkpoint has with another shape.
        reshaped: usize,
        help: String,
    },
    #[error("the checkpoint has two tensors named {name}")]
    #[diagnostic(help("the checkpoint is damaged; save it again or pass another one"))]
    DuplicateTensor { name: String },
    #[error("checkpoint tensor {name} has shape {shape} ({expected} values) but {got} values")]
    #[diagnostic(help("the checkpoint is damaged; save it again or pass another one"))]
    ValueCount { name: String, shape: Shape, expected: usize, got: usize },
    #[error("optimizer moment {moment} of checkpoint tensor {name} has {got} values, expected {expected}")]
    #[diagnostic(help("the checkpoint is damaged; save it again or pass another one"))]
    MomentCount { name: String, moment: String, expected: usize, got: usize },
}

/// Matches `saved` to `params` (indexed by [`ParamId`]) by name and shape. With `force`, a checkpoint that matches
/// no trainable parameter is accepted and every parameter is re-initialised.
pub fn transfer(
    params: &[ParamSlot],
    saved: Vec<SavedTensor>,
    force: bool,
) -> Result<Transfer, TransferError> {
    check_saved(&saved)?;
    let checkpoint_count = saved.len();

    // Pair every parameter with the tensor of the same name.
    let index: HashMap<String, usize> =
        saved.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut saved: Vec<Option<SavedTensor>> = saved.into_iter().map(Some).collect();
    let mut report = TransferReport::default();
    let mut tensors = Vec::with_capacity(params.len());
    for (id, decl) in params.iter().enumerate() {
        report.total_values += decl.shape.numel();
        let slot = index.get(&decl.name).copied();
        let found = slot.and_then(|i| saved[i].as_ref()).map(|t| t.shape.clone());
        match found {
            Some(shape) if shape == decl.shape => {
                report.copied.push((id, decl.name.clone()));
                report.copied_values += decl.shape.numel();
                tensors.push(slot.and_then(|i| saved[i].take()));
            }
            found => {
                let reason = match found {
                    Some(saved) => Reinit::Reshaped { saved },
                    None => Reinit::NotInCheckpoint,
                };
                let (name, shape) = (decl.name.clone(), decl.shape.clone());
                report.reinitialized.push(Reinitialized { param: id, name, shape, reason });
                tensors.push(None);
            }
        }
    }

    // Whatever is left in the checkpoint is dropped, in the checkpoint's order.
    for t in saved.iter().flatten() {
        let new_shape = params.iter().find(|p| p.name == t.name).map(|p| p.shape.clone());
        report.dropped.push(Dropped { name: t.name.clone(), shape: t.shape.clone(), new_shape });
    }

    let copied_trainable =
        report.copied.iter().any(|&(id, _)| params[id].kind == ParamKind::Trainable);
    let has_trainable = params.iter().any(|p| p.kind == ParamKind::Trainable);
    if has_trainable && !copied_trainable && !force {
        return Err(nothing_matches(params, &report, checkpoint_count));
    }
    tracing::info!(
        copied = report.copied.len(),
        reinitialized = report.reinitialized.len(),
        dropped = report.dropped.len(),
        "matched checkpoint tensors to parameters"
    );
    Ok(Transfer { tensors, report })
}

/// Pairs each checkpoint weight with its optimizer moments. A moment belongs to the
/// weight whose name appears in the moment's name as whole dotted segments followed by a
/// state name: `generator.e1.conv.weight.adam_m`, or the trainer's
/// `optimizer.generator.generator.e1.conv.weight.m`. When several weight names fit, the
/// longest is the owner.
/// Returns the paired tensors and the moments that belong to no weight.
pub fn pair_moments(weights: Vec<Tensor>, moments: Vec<Tensor>) -> (Vec<SavedTensor>, Vec<Tensor>) {
    let mut saved: Vec<SavedTensor> = weights
        .into_iter()
        .map(|t| SavedTensor { name: t.name, shape: t.shape, values: t.data, moments: Vec::new() })
        .collect();
    let index: HashMap<String, usize> =
        saved.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    let mut unpaired = Vec::new();
    for moment in moments {
        match owner_of(&moment.name, &index) {
            Some(i) => saved[i].moments.push((moment.name, moment.data)),
            None => unpaired.push(moment),
        }
    }
    (saved, unpaired)
}

/// Returns the index of the longest weight name that is a run of whole segments of
/// `moment` and is followed by at least one more segment.
fn owner_of(moment: &str, index: &HashMap<String, usize>) -> Option<usize> {
    let starts = std::iter::once(0).chain(moment.match_indices('.').map(|(at, _)| at + 1));
    let mut best: Option<(usize, usize)> = None;
    for start in starts {
        for (offset, _) in moment[start..].match_indices('.') {
            let candidate = &moment[start..start + offset];
            let Some(&i) = index.get(candidate) else { continue };
            if best.is_none_or(|(len, _)| candidate.len() > len) {
                best = Some((candidate.len(), i));
            }
        }
    }
    best.map(|(_, i)| i)
}

/// Number of tensors each group of a [`TransferError::NothingMatches`] comparison lists.
const COMPARED: usize = 3;

/// Builds the error for a checkpoint that matches no trainable parameter. It compares the
/// tensors that correspond (the same name with another shape) before the names that only
/// one side has, because the first tensors of the two sides are most often unrelated.
fn nothing_matches(
    params: &[ParamSlot],
    report: &TransferReport,
    checkpoint: usize,
) -> TransferError {
    let trainable = |id: ParamId| params[id].kind == ParamKind::Trainable;
    let reshaped: Vec<(&str, &Shape, &Shape)> = report
        .reinitialized
        .iter()
        .filter(|r| trainable(r.param))
        .filter_map(|r| match &r.reason {
            Reinit::Reshaped { saved } => Some((r.name.as_str(), saved, &r.shape)),
            Reinit::NotInCheckpoint => None,
        })
        .collect();
    let model_only: Vec<&str> = report
        .reinitialized
        .iter()
        .filter(|r| trainable(r.param) && r.reason == Reinit::NotInCheckpoint)
        .map(|r| r.name.as_str())
        .collect();
    let checkpoint_only: Vec<&str> =
        report.dropped.iter().filter(|d| d.new_shape.is_none()).map(|d| d.name.as_str()).collect();

    let mut comparison = Vec::new();
    if !reshaped.is_empty() {
        comparison.push("same name, shape in the checkpoint -> in the model:".to_string());
        let width = reshaped.iter().take(COMPARED).map(|r| r.0.len()).max().unwrap_or(0);
        for (name, saved, shape) in reshaped.iter().take(COMPARED) {
            comparison.push(format!("  {name:width$}  {saved} -> {shape}"));
        }
        push_more(&mut comparison, reshaped.len());
    }
    for (title, names) in [
        (
            format!("only in the checkpoint ({}):", count(checkpoint_only.len(), "tensor")),
            &checkpoint_only,
        ),
        (format!("only in the model ({}):", count(model_only.len(), "parameter")), &model_only),
    ] {
        if names.is_empty() {
            continue;
        }
        comparison.push(title);
        comparison.extend(names.iter().take(COMPARED).map(|name| format!("  {name}")));
        push_more(&mut comparison, names.len());
    }
    let reshaped = reshaped.len();
    TransferError::NothingMatches { checkpoint, comparison, reshaped, help: help(reshaped, None) }
}

/// Returns `1 tensor` or `3 tensors`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Adds `  and N more` after a group of `count` entries that lists only [`COMPARED`].
fn push_more(lines: &mut Vec<String>, count: usize) {
    if count > COMPARED {
        lines.push(format!("  and {} more", count - COMPARED));
    }
}

/// Returns the help of [`TransferError::NothingMatches`]. Where names match with other
/// shapes, it names the `--set` values that the checkpoint was trained with, if known.
fn help(reshaped: usize, overrides: Option<&[String]>) -> String {
    let force = "or add --force to start from fresh parameters anyway";
    if reshaped == 0 {
        return format!("pass the checkpoint of an earlier version of this model, {force}");
    }
    match overrides {
        Some([]) => format!("train without --set, as the checkpoint was, {force}"),
        Some(values) => {
            let flags: Vec<String> = values.iter().map(|v| format!("--set {v}")).collect();
            let flags = flags.join(" ");
            format!("pass the --set values that the checkpoint was trained with ({flags}), {force}")
        }
        None => format!("pass the --set values that the checkpoint was trained with, {force}"),
    }
}

impl TransferError {
    /// Adds the `--set` values that the checkpoint was trained with to the help of
    /// [`TransferError::NothingMatches`], where the shapes differ. Other errors pass through.
    pub fn with_checkpoint_overrides(self, overrides: &[String]) -> Self {
        match self {
            TransferError::NothingMatches { checkpoint, comparison, reshaped, .. } => {
                let help = help(reshaped, Some(overrides));
                TransferError::NothingMatches { checkpoint, comparison, reshaped, help }
            }
            other => other,
        }
    }
}

/// Rejects a checkpoint whose tensors contradict their own shapes or repeat a name.
fn check_saved(saved: &[SavedTensor]) -> Result<(), TransferError> {
    let mut seen = std::collections::HashSet::new();
    for t in saved {
        if !seen.insert(t.name.as_str()) {
            return Err(TransferError::DuplicateTensor { name: t.name.clone() });
        }
        let expected = t.shape.numel();
        if t.values.len() != expected {
            return Err(TransferError::ValueCount {
                name: t.name.clone(),
                shape: t.shape.clone(),
                expected,
                got: t.values.len(),
            });
        }
        for (moment, values) in &t.moments {
            if values.len() != expected {
                return Err(TransferError::MomentCount {
                    name: t.name.clone(),
                    moment: moment.clone(),
                    expected,
                    got: values.len(),
                });
            }
        }
    }
    Ok(())
}

impl TransferReport {
    /// Renders the copied, re-initialised and dropped tensors, one a line, for the start
    /// of a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let total = self.copied.len() + self.reinitialized.len();
        let _ = writeln!(
            out,
            "copied {} of {total} parameters and buffers from the checkpoint ({} of {} values)",
            self.copied.len(),
            super::diff::thousands(self.copied_values),
            super::diff::thousands(self.total_values),
        );
        for (_, name) in &self.copied {
            let _ = writeln!(out, "  copied          {name}");
        }
        for r in &self.reinitialized {
            let reason = match &r.reason {
                Reinit::NotInCheckpoint => "not in the checkpoint".to_string(),
                Reinit::Reshaped { saved } => format!("the checkpoint has {saved}"),
            };
            let _ = writeln!(out, "  re-initialised  {} {}: {reason}", r.name, r.shape);
        }
        // A reshaped tensor is already listed as re-initialised, with both shapes.
        for d in self.dropped.iter().filter(|d| d.new_shape.is_none()) {
            let _ = writeln!(out, "  dropped         {} {}: not in the model", d.name, d.shape);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, dims: &[usize], kind: ParamKind) -> ParamSlot {
        ParamSlot { name: name.into(), shape: Shape::new(dims.to_vec()), kind }
    }

    fn saved(name: &str, dims: &[usize], first: f32) -> SavedTensor {
        let count: usize = dims.iter().product();
        let values: Vec<f32> = (0..count).map(|i| first + i as f32).collect();
        let m = values.iter().map(|v| v * 0.5).collect();
        let v = values.iter().map(|v| v * 0.25).collect();
        SavedTensor {
            name: name.into(),
            shape: Shape::new(dims.to_vec()),
            values,
            moments: vec![("m".into(), m), ("v".into(), v)],
        }
    }

    /// A generator before an edit: two layers and a batch norm with its buffers.
    fn checkpoint() -> Vec<SavedTensor> {
        vec![
            saved("g.e1.conv.weight", &[4, 3, 2, 2], 1.0),
            saved("g.e1.norm.scale", &[4], 100.0),
            saved("g.e1.norm.running_mean", &[4], 200.0),
            saved("g.d1.conv_transpose.weight", &[4, 3, 2, 2], 300.0),
        ]
    }

    #[test]
    fn matching_names_and_shapes_copy() {
        let params = vec![
            decl("g.e1.conv.weight", &[4, 3, 2, 2], ParamKind::Trainable),
            decl("g.e1.norm.scale", &[4], ParamKind::Trainable),
            decl("g.e1.norm.running_mean", &[4], ParamKind::Buffer),
            decl("g.d1.conv_transpose.weight", &[4, 3, 2, 2], ParamKind::Trainable),
        ];
        let expected = checkpoint();
        let result = transfer(&params, checkpoint(), false).expect("every tensor matches");
        assert_eq!(result.report.copied.len(), 4);
        assert!(result.report.reinitialized.is_empty());
        assert!(result.report.dropped.is_empty());
        assert_eq!(result.report.copied_values, 104);
        for (tensor, want) in result.tensors.iter().zip(&expected) {
            assert_eq!(tensor.as_ref(), Some(want), "values and moments copy bit for bit");
        }
    }

    #[test]
    fn widened_layer_is_reinitialised() {
        // d1 widened from 3 to 5 output channels, and e1 renamed to stem.
        let params = vec![
            decl("g.stem.conv.weight", &[4, 3, 2, 2], ParamKind::Trainable),
            decl("g.e1.norm.scale", &[4], ParamKind::Trainable),
            decl("g.e1.norm.running_mean", &[4], ParamKind::Buffer),
            decl("g.d1.conv_transpose.weight", &[4, 5, 2, 2], ParamKind::Trainable),
        ];
        let result = transfer(&params, checkpoint(), false).expect("the norm still matches");
        let report = &result.report;

        let copied: Vec<&str> = report.copied.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(copied, ["g.e1.norm.scale", "g.e1.norm.running_mean"]);
        assert_eq!(report.reinitialized.len(), 2);
        assert_eq!(report.reinitialized[0].name, "g.stem.conv.weight");
        assert_eq!(report.reinitialized[0].reason, Reinit::NotInCheckpoint);
        assert_eq!(report.reinitialized[1].name, "g.d1.conv_transpose.weight");
        assert_eq!(
            report.reinitialized[1].reason,
            Reinit::Reshaped { saved: Shape::new([4, 3, 2, 2]) }
        );

        let dropped: Vec<(&str, Option<&Shape>)> =
            report.dropped.iter().map(|d| (d.name.as_str(), d.new_shape.as_ref())).collect();
        let widened = Shape::new([4, 5, 2, 2]);
        assert_eq!(
            dropped,
            [("g.e1.conv.weight", None), ("g.d1.conv_transpose.weight", Some(&widened))]
        );
        assert!(result.tensors[0].is_none());
        assert!(result.tensors[3].is_none());
        assert_eq!(result.tensors[1].as_ref().map(|t| t.values[0]), Some(100.0));
    }

    #[test]
    fn moments_travel_with_parameter() {
        let params = vec![decl("g.d1.conv_transpose.weight", &[4, 3, 2, 2], ParamKind::Trainable)];
        let result = transfer(&params, checkpoint(), false).expect("d1 matches");
        let tensor = result.tensors[0].as_ref().expect("d1 is copied");
        assert_eq!(tensor.moments[0].0, "m");
        assert_eq!(tensor.moments[0].1[0], 150.0);
        assert_eq!(tensor.moments[1].1[47], (300.0 + 47.0) * 0.25);
    }

    #[test]
    fn nothing_matching_is_rejected() {
        let params = vec![
            decl("g.stem.conv.weight", &[4, 3, 2, 2], ParamKind::Trainable),
            // A buffer that matches does not make the checkpoint acceptable.
            decl("g.e1.norm.running_mean", &[4], ParamKind::Buffer),
        ];
        let error = transfer(&params, checkpoint(), false).expect_err("no trainable match");
        let TransferError::NothingMatches { checkpoint, comparison, reshaped, help } = &error
        else {
            panic!("expected NothingMatches, got {error:?}");
        };
        assert_eq!(*checkpoint, 4);
        assert_eq!(*reshaped, 0);
        let expected = [
            "only in the checkpoint (3 tensors):",
            "  g.e1.conv.weight",
            "  g.e1.norm.scale",
            "  g.d1.conv_transpose.weight",
            "only in the model (1 parameter):",
            "  g.stem.conv.weight",
        ];
        assert_eq!(comparison, &expected);
        assert!(help.starts_with("pass the checkpoint of an earlier version"), "{help}");
    }

    #[test]
    fn nothing_matching_compares_same_names() {
        // Every layer is twice as wide, as another --set value makes it, so the tensors of
        // the same name are compared shape by shape.
        let params = vec![
            decl("g.e1.conv.weight", &[8, 3, 2, 2], ParamKind::Trainable),
            decl("g.e1.norm.scale", &[8], ParamKind::Trainable),
            decl("g.e1.norm.running_mean", &[8], ParamKind::Buffer),
            decl("g.d1.conv_transpose.weight", &[8, 3, 2, 2], ParamKind::Trainable),
            decl("g.d2.conv_transpose.weight", &[8, 3, 2, 2], ParamKind::Trainable),
        ];
        let error = transfer(&params, checkpoint(), false).expect_err("every shape differs");
        let TransferError::NothingMatches { comparison, reshaped, .. } = &error else {
            panic!("expected NothingMatches, got {error:?}");
        };
        assert_eq!(*reshaped, 3);
        let expected = [
            "same name, shape in the checkpoint -> in the model:",
            "  g.e1.conv.weight            [4, 3, 2, 2] -> [8, 3, 2, 2]",
            "  g.e1.norm.scale             [4] -> [8]",
            "  g.d1.conv_transpose.weight  [4, 3, 2, 2] -> [8, 3, 2, 2]",
            "only in the model (1 parameter):",
            "  g.d2.conv_transpose.weight",
        ];
        assert_eq!(comparison, &expected);
        let message = error.to_string();
        assert!(message.contains("start afresh\nsame name, shape in the checkpoint"), "{message}");

        let error = error.with_checkpoint_overrides(&["ch=4".to_string(), "size=16".to_string()]);
        let TransferError::NothingMatches { help, .. } = &error else { unreachable!() };
        assert!(help.contains("trained with (--set ch=4 --set size=16), or add --force"), "{help}");
    }

    #[test]
    fn force_accepts_nothing_matching() {
        let params = vec![decl("g.stem.conv.weight", &[4, 3, 2, 2], ParamKind::Trainable)];
        let result = transfer(&params, checkpoint(), true).expect("--force accepts it");
        assert!(result.report.copied.is_empty());
        assert_eq!(result.report.reinitialized.len(), 1);
        assert_eq!(result.report.dropped.len(), 4);
        assert_eq!(result.tensors, vec![None]);
    }

    #[test]
    fn damaged_checkpoints_are_rejected() {
        let params = vec![decl("g.e1.conv.weight", &[4, 3, 2, 2], ParamKind::Trainable)];

        let mut short = checkpoint();
        short[1].values.pop();
        let error = transfer(&params, short, true).expect_err("3 values for shape [4]");
        assert!(matches!(error, TransferError::ValueCount { expected: 4, got: 3, .. }));

        let mut moment = checkpoint();
        moment[0].moments[1].1.push(0.0);
        let error = transfer(&params, moment, true).expect_err("a moment of 49 values");
        assert!(matches!(error, TransferError::MomentCount { expected: 48, got: 49, .. }));

        let mut twice = checkpoint();
        twice.push(saved("g.e1.conv.weight", &[4, 3, 2, 2], 0.0));
        let error = transfer(&params, twice, true).expect_err("a repeated name");
        assert!(matches!(error, TransferError::DuplicateTensor { .. }));
    }

    #[test]
    fn moments_pair_by_longest_prefix() {
        let tensor = |name: &str, value: f32| Tensor {
            name: name.into(),
            shape: Shape::new([1]),
            data: vec![value],
        };
        let weights = vec![tensor("g.e1.conv", 1.0), tensor("g.e1.conv.weight", 2.0)];
        let moments = vec![
            tensor("g.e1.conv.weight.adam_m", 3.0),
            tensor("g.e1.conv.momentum_buffer", 4.0),
            tensor("optimizer.g.g.e1.conv.weight.v", 7.0),
            tensor("g.e9.conv.weight.adam_m", 5.0),
            tensor("optimizer.g.values", 6.0),
            tensor("g.e1.m", 8.0),
        ];
        let (saved, unpaired) = pair_moments(weights, moments);
        let names = |t: &SavedTensor| t.moments.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&saved[0]), ["g.e1.conv.momentum_buffer"]);
        assert_eq!(names(&saved[1]), ["g.e1.conv.weight.adam_m", "optimizer.g.g.e1.conv.weight.v"]);
        assert_eq!(saved[1].moments[1].1, vec![7.0]);
        let names: Vec<&str> = unpaired.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["g.e9.conv.weight.adam_m", "optimizer.g.values", "g.e1.m"]);
    }

    #[test]
    fn report_lists_every_group() {
        let params = vec![
            decl("g.e1.conv.weight", &[4, 3, 2, 2], ParamKind::Trainable),
            decl("g.d1.conv_transpose.weight", &[4, 5, 2, 2], ParamKind::Trainable),
        ];
        let result = transfer(&params, checkpoint(), false).expect("e1 matches");
        let text = result.report.render();
        let expected = "\
copied 1 of 2 parameters and buffers from the checkpoint (48 of 128 values)
  copied          g.e1.conv.weight
  re-initialised  g.d1.conv_transpose.weight [4, 5, 2, 2]: the checkpoint has [4, 3, 2, 2]
  dropped         g.e1.norm.scale [4]: not in the model
  dropped         g.e1.norm.running_mean [4]: not in the model
";
        assert_eq!(text, expected);
    }
}
