//! Checkpoints: a run's tensors as safetensors plus a JSON record of the run's position.
//!
//! A checkpoint is a folder with three files:
//! - `weights.safetensors`: every parameter and buffer of the model, f32, keyed by the
//!   parameter's dotted name, so PyTorch and other safetensors readers can load it;
//! - `optimizer.safetensors`: the optimizer moments, keyed by the names the trainer gives;
//! - `checkpoint.json`: the [`Record`] (step, epoch, learning rates, seed and generator
//!   state, data order and position, netc's version, the `.net` source, its SHA-256 and
//!   the `--set` overrides).
//!
//! [`save`] writes the folder under a temporary name inside `RUN/checkpoints/`, syncs it,
//! renames it to `step-NNNNNNNN` and only then points `RUN/checkpoints/latest` at it (also
//! a temporary file and a rename). A crash at any moment leaves the previous checkpoint
//! and the `latest` pointer intact. [`load`] checks every file, the source hash and that
//! the data order is a permutation of the pairs. [`check_tensors`] compares the tensors
//! with the names and shapes a model expects, and [`check_data_position`] the data cursor
//! and order with the ones a resume recomputes. Each error names the file.

use crate::ir::Shape;
use crate::train::atomic::{sync_dir, write_atomic};
use crate::train::data::DataCursor;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout. [`load`] rejects other versions.
pub const FORMAT_VERSION: u32 = 1;

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const RECORD_FILE: &str = "checkpoint.json";
/// Folder of a run's checkpoints, inside the run folder.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// File inside [`CHECKPOINTS_DIR`] that contains the folder name of the newest checkpoint.
pub const LATEST_FILE: &str = "latest";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CheckpointError {
    #[error("no checkpoint in {}: neither {} nor {} exists", dir.display(), RECORD_FILE, Path::new(CHECKPOINTS_DIR).join(LATEST_FILE).display())]
    #[diagnostic(help("pass a run folder or one of its checkpoints/step-* folders"))]
    NotFound { dir: PathBuf },

    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid checkpoint file {}: {reason}", path.display())]
    #[diagnostic(help("the checkpoint is damaged or was not written by netc; use an older one from the same checkpoints folder"))]
    Invalid { path: PathBuf, reason: String },

    #[error("checkpoint format {found} in {} is not supported (this netc reads format {FORMAT_VERSION})", path.display())]
    #[diagnostic(help("resume it with the netc version that wrote it: {writer}"))]
    Version { path: PathBuf, found: u32, writer: String },

    #[error("invalid `{field}` in {}: {reason}", path.display())]
    #[diagnostic(help("netc computes `{field}` from the seed and the step, so restore the value it wrote, or resume from an older checkpoint in the same checkpoints folder"))]
    EditedField { path: PathBuf, field: &'static str, reason: String },

    #[error("the data position in {} does not follow from its step: {reason}", path.display())]
    #[diagnostic(help("if the model's batch size changed since the checkpoint, a resume cannot continue it: start a new run from it with --init-from. Otherwise `data.cursor` was edited: restore the value netc wrote"))]
    DataPosition { path: PathBuf, reason: String },

    #[error("{} does not match the model:\n{}", path.display(), problems.join("\n"))]
    #[diagnostic(help("resume with the .net file and --set values the checkpoint was trained with, or start from it with --init-from"))]
    Mismatch { path: PathBuf, problems: Vec<String> },
}

/// One named f32 tensor, in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Shape,
    pub data: Vec<f32>,
}

/// The `.net` file a checkpoint was trained from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The module name (the file stem).
    pub name: String,
    pub source: String,
    /// SHA-256 of `source`, in lowercase hex.
    pub sha256: String,
    /// The `--set name=value` overrides, in command-line order.
    pub overrides: Vec<String>,
}

impl ModelRecord {
    pub fn new(name: &str, source: &str, overrides: &[String]) -> Self {
        ModelRecord {
            name: name.to_string(),
            source: source.to_string(),
            sha256: sha256_hex(source.as_bytes()),
            overrides: overrides.to_vec(),
        }
    }
}

/// The run's position in its data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The data set name given to `--train`.
    pub dataset: String,
    /// Number of training pairs, so a resume on a changed folder is caught.
    pub pairs: usize,
    /// The batch the next step trains on.
    pub cursor: DataCursor,
    /// The file order of `cursor.epoch`, as indices into the sorted file list.
    pub order: Vec<usize>,
}

/// The JSON half of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub netc_version: String,
    /// Iterations completed since the start of the run.
    pub step: u64,
    /// The epoch the next step belongs to, from 0.
    pub epoch: usize,
    /// Learning rate of each optimizer step at the last completed iteration, by step name.
    pub learning_rates: BTreeMap<String, f32>,
    pub seed: u64,
    /// Random-generator state of the trainer (dropout masks, initialization), stored as
    /// the trainer serializes it.
    pub rng: serde_json::Value,
    pub data: DataRecord,
    pub model: ModelRecord,
}

/// A whole checkpoint in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub record: Record,
    pub weights: Vec<Tensor>,
    pub moments: Vec<Tensor>,
}

/// Returns the lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `checkpoint` as `RUN/checkpoints/step-NNNNNNNN/`, points `latest` at it and
/// removes all but the newest `keep` checkpoint folders. Returns the new folder.
pub fn save(
    run_dir: &Path,
    checkpoint: &Checkpoint,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let parent = run_dir.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(&parent).map_err(|source| write_err(&parent, source))?;
    let name = format!("step-{:08}", checkpoint.record.step);
    let dir = parent.join(&name);

    // Fill a temporary folder next to the final one, so the rename stays on one file system.
    let staging = tempfile::Builder::new()
        .prefix(".tmp-checkpoint-")
        .tempdir_in(&parent)
        .map_err(|source| write_err(&parent, source))?;
    write_synced(
        &staging.path().join(WEIGHTS_FILE),
        &encode_tensors(WEIGHTS_FILE, &checkpoint.weights)?,
    )?;
    write_synced(
        &staging.path().join(OPTIMIZER_FILE),
        &encode_tensors(OPTIMIZER_FILE, &checkpoint.moments)?,
    )?;
    let record = serde_json::to_vec_pretty(&checkpoint.record)
        .expect("a Record contains only JSON-representable values");
    write_synced(&staging.path().join(RECORD_FILE), &record)?;

    // A folder of the same step exists when a resumed run saves again at that step. Move it
    // aside first, because a rename cannot replace a non-empty folder.
    let replaced = dir.exists().then(|| parent.join(format!(".old-{name}")));
    if let Some(old) = &replaced {
        std::fs::rename(&dir, old).map_err(|source| write_err(&dir, source))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &dir).map_err(|source| write_err(&dir, source))?;
    sync_dir(&parent);
    let latest = parent.join(LATEST_FILE);
    write_atomic(&latest, name.as_bytes()).map_err(|source| write_err(&latest, source))?;
    if let Some(old) = replaced {
        remove_quietly(&old);
    }

    prune(&parent, &name, keep);
    tracing::info!(step = checkpoint.record.step, dir = %dir.display(), "wrote checkpoint");
    Ok(dir)
}

/// Finds the checkpoint folder that `dir` refers to: `dir` itself when it contains
/// `checkpoint.json`, else the folder that `dir/checkpoints/latest` names.
pub fn resolve(dir: &Path) -> Result<PathBuf, CheckpointError> {
    if dir.join(RECORD_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let latest = dir.join(CHECKPOINTS_DIR).join(LATEST_FILE);
    if !latest.is_file() {
        return Err(CheckpointError::NotFound { dir: dir.to_path_buf() });
    }
    let name = std::fs::read_to_string(&latest).map_err(|source| read_err(&latest, source))?;
    let name = name.trim();
    let valid =
        !name.is_empty() && Path::new(name).components().count() == 1 && !name.starts_with('.');
    if !valid {
        return Err(invalid(&latest, format!("`{name}` is not a checkpoint folder name")));
    }
    let target = dir.join(CHECKPOINTS_DIR).join(name);
    if !target.join(RECORD_FILE).is_file() {
        let reason = format!("it names {}, which has no {RECORD_FILE}", target.display());
        return Err(invalid(&latest, reason));
    }
    Ok(target)
}

/// Reads and checks the checkpoint that `dir` refers to (see [`resolve`]).
/// Reads only the JSON record of the checkpoint that `dir` names (a checkpoint folder or
/// a run folder), without the tensors.
pub fn load_record(dir: &Path) -> Result<Record, CheckpointError> {
    let dir = resolve(dir)?;
    read_record(&dir.join(RECORD_FILE))
}

pub fn load(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let dir = resolve(dir)?;
    let record = read_record(&dir.join(RECORD_FILE))?;
    let weights = decode_tensors(&dir.join(WEIGHTS_FILE))?;
    let moments = decode_tensors(&dir.join(OPTIMIZER_FILE))?;
    tracing::debug!(dir = %dir.display(), step = record.step, "read checkpoint");
    Ok(Checkpoint { record, weights, moments })
}

/// Compares `tensors`, read from `file`, with the `expected` names and shapes. Every
/// missing, unknown or differently shaped tensor is listed in one error.
pub fn check_tensors(
    file: &Path,
    tensors: &[Tensor],
    expected: &[(String, Shape)],
) -> Result<(), CheckpointError> {
    let found: HashMap<&str, &Shape> =
        tensors.iter().map(|t| (t.name.as_str(), &t.shape)).collect();
    let wanted: HashMap<&str, &Shape> = expected.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match found.get(name.as_str()) {
            None => problems.push(format!("  missing tensor `{name}` {shape}")),
            Some(&got) if got != shape => problems
                .push(format!("  tensor `{name}` has shape {got}, the model expects {shape}")),
            Some(_) => {}
        }
    }
    for tensor in tensors.iter().filter(|t| !wanted.contains_key(t.name.as_str())) {
        problems.push(format!("  unknown tensor `{}` {}", tensor.name, tensor.shape));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CheckpointError::Mismatch { path: file.to_path_buf(), problems })
    }
}

fn read_record(path: &Path) -> Result<Record, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| read_err(path, source))?;

    // Read the version first, so an old or newer layout gets a version error rather than a
    // confusing field error.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(path, format!("not valid JSON: {e}")))?;
    let found = value.get("format").and_then(|v| v.as_u64());
    if found != Some(u64::from(FORMAT_VERSION)) {
        let writer = value.get("netc_version").and_then(|v| v.as_str()).unwrap_or("unknown");
        let Some(found) = found else {
            return Err(invalid(path, "the `format` field is missing".to_string()));
        };
        return Err(CheckpointError::Version {
            path: path.to_path_buf(),
            found: u32::try_from(found).unwrap_or(u32::MAX),
            writer: writer.to_string(),
        });
    }

    let record: Record = serde_json::from_value(value).map_err(|e| invalid(path, e.to_string()))?;
    let hash = sha256_hex(record.model.source.as_bytes());
    if hash != record.model.sha256 {
        let reason = format!(
            "the model source hashes to {hash}, but the record says {}",
            record.model.sha256
        );
        return Err(invalid(path, reason));
    }
    check_order_is_permutation(path, &record.data)?;
    Ok(record)
}

/// Rejects a `data.order` that is not a permutation of the record's `0..pairs`: a wrong
/// length, an index out of range or an index listed twice.
fn check_order_is_permutation(path: &Path, data: &DataRecord) -> Result<(), CheckpointError> {
    let edited = |reason: String| CheckpointError::EditedField {
        path: path.to_path_buf(),
        field: "data.order",
        reason,
    };
    let (order, pairs) = (&data.order, data.pairs);
    if order.len() != pairs {
        let count = order.len();
        return Err(edited(format!("it lists {count} indices, but `data.pairs` is {pairs}")));
    }
    let mut seen = vec![false; pairs];
    for (position, &index) in order.iter().enumerate() {
        let Some(slot) = seen.get_mut(index) else {
            let reason = format!(
                "position {position} is {index}, but the indices of {pairs} pairs run from 0 to {}",
                pairs.saturating_sub(1)
            );
            return Err(edited(reason));
        };
        if *slot {
            let reason = format!("position {position} lists pair {index} a second time");
            return Err(edited(reason));
        }
        *slot = true;
    }
    Ok(())
}

/// Compares the data position of `record`, read from the checkpoint folder `dir`, with the
/// cursor and file order that a resume recomputes from the step and the seed. The record
/// stores both for readers, so an edit of either would make it describe a run that the
/// resume does not continue.
pub fn check_data_position(
    dir: &Path,
    record: &Record,
    cursor: DataCursor,
    order: &[usize],
) -> Result<(), CheckpointError> {
    let path = dir.join(RECORD_FILE);
    if record.data.cursor != cursor {
        let found = record.data.cursor;
        return Err(CheckpointError::DataPosition {
            path,
            reason: format!(
                "`data.cursor` is {{ epoch: {}, batch: {} }}, but with this run's batch size \
                 step {} is at {{ epoch: {}, batch: {} }}",
                found.epoch, found.batch, record.step, cursor.epoch, cursor.batch
            ),
        });
    }
    let length = order.len().max(record.data.order.len());
    let differs = (0..length).find(|&i| record.data.order.get(i) != order.get(i));
    if let Some(position) = differs {
        let (found, expected) = (record.data.order.get(position), order.get(position));
        return Err(CheckpointError::EditedField {
            path,
            field: "data.order",
            reason: format!(
                "position {position} is {}, but the order that seed {} draws for \
                 `data.cursor.epoch` {} has {} there",
                found.map_or("missing".to_string(), usize::to_string),
                record.seed,
                cursor.epoch,
                expected.map_or("nothing".to_string(), usize::to_string),
            ),
        });
    }
    Ok(())
}

/// Serializes `tensors` as safetensors; `file` names the file in errors.
fn encode_tensors(file: &str, tensors: &[Tensor]) -> Result<Vec<u8>, CheckpointError> {
    let bytes: Vec<(&str, Vec<u8>)> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (tensor, (name, data)) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, tensor.shape.0.clone(), data).map_err(|e| {
            let reason = format!(
                "tensor `{name}` has {} values for shape {}: {e}",
                tensor.data.len(),
                tensor.shape
            );
            invalid(Path::new(file), reason)
        })?;
        views.push((*name, view));
    }
    let version = env!("CARGO_PKG_VERSION").to_string();
    let metadata = HashMap::from([("netc_version".to_string(), version)]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| invalid(Path::new(file), format!("failed to serialize: {e}")))
}

fn decode_tensors(path: &Path) -> Result<Vec<Tensor>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| read_err(path, source))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| invalid(path, format!("not a valid safetensors file: {e}")))?;
    let mut tensors = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        if view.dtype() != Dtype::F32 {
            let reason = format!("tensor `{name}` is {:?}, netc reads only F32", view.dtype());
            return Err(invalid(path, reason));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push(Tensor { name: name.to_string(), shape: Shape::new(view.shape()), data });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// Writes `bytes` to a new file and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = File::create(path).map_err(|source| write_err(path, source))?;
    file.write_all(bytes).map_err(|source| write_err(path, source))?;
    file.sync_all().map_err(|source| write_err(path, source))
}

/// Removes checkpoint folders other than the newest `keep`, never `current`.
fn prune(parent: &Path, current: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    let mut steps: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-") && n.as_str() != current)
        .collect();
    steps.sort();
    let excess = (steps.len() + 1).saturating_sub(keep.max(1));
    for name in steps.iter().take(excess) {
        remove_quietly(&parent.join(name));
    }
}

fn remove_quietly(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), %error, "failed to remove an old checkpoint");
    }
}

fn read_err(path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Read { path: path.to_path_buf(), source }
}

fn write_err(path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Write { path: path.to_path_buf(), source }
}

fn invalid(path: &Path, reason: String) -> CheckpointError {
    CheckpointError::Invalid { path: path.to_path_buf(), reason }
}
