//! The training run: data, steps, checkpoints and outputs around an [`Engine`].
//!
//! Needs a checked module with a `train` section and an engine that runs one training
//! iteration (on the device, through the `Trainer`). [`train`] finds and validates the
//! data before the first step and opens or resumes the run folder. Each iteration then
//! takes a batch, runs the step, appends a `losses.csv` row and moves the progress bar.
//! Every `images_every` steps it writes an image grid, the loss plot and `index.html`, and
//! every `checkpoint_every` steps and at the end a checkpoint.
//!
//! Guarantees: `--steps` and `--epochs` count from the start of the run, so a resumed run
//! stops at the same total. A resume restores every tensor, the data cursor and the
//! engine's generator state from the checkpoint, so N steps, a stop and N more give the
//! same weights as 2N straight steps when the engine itself is deterministic. A
//! non-finite loss stops the run before its weights are checkpointed.
//!
//! A resume whose checkpoint was trained from another `.net` source, and a new run with
//! `init_from`, copy only the tensors whose name and shape still match
//! ([`crate::edit::restore`]). Every other parameter starts from its initializer.
//!
//! Cannot do yet: stop cleanly on Ctrl-C (a stop loses the steps since the last
//! checkpoint).

use crate::ir::{Module, ParamKind, Shape};
use crate::train::checkpoint::{
    self, Checkpoint, CheckpointError, DataRecord, ModelRecord, Record, Tensor,
};
use crate::train::data::{self, Batch, DataError, ImageDataset, Mode};
use crate::train::progress;
use crate::train::report::{self, LossLog, LossRow, PageInfo, Panel, ReportError};
use indicatif::ProgressBar;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Number of samples an image grid shows.
const GRID_SAMPLES: usize = 4;

/// Checkpoint folders kept in `RUN/checkpoints/`; older ones are removed.
const KEEP_CHECKPOINTS: usize = 2;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RunError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Checkpoint(#[from] CheckpointError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Report(#[from] ReportError),

    #[error("model `{model}` has no train section")]
    #[diagnostic(help("add a `train` section to the .net file to train it"))]
    NoTrainSection { model: String },

    #[error(
        "the data gives {name} batches of shape {data}, but the model's `{name}` input is {model}"
    )]
    #[diagnostic(help("make the train section's crop (or resize) and batch match the network input, or change the input shape"))]
    ShapeMismatch { name: String, data: Shape, model: Shape },

    #[error("{} already contains a run (it has a checkpoints folder)", dir.display())]
    #[diagnostic(help("continue it with --resume {}, or write the new run elsewhere with --out", dir.display()))]
    RunExists { dir: PathBuf },

    #[error("the checkpoint in {} was trained on `{found}` with {pairs} pairs, but this run uses `{expected}` with {now} pairs", dir.display())]
    #[diagnostic(help("resume on the data set the run started with"))]
    DataChanged { dir: PathBuf, found: String, pairs: usize, expected: String, now: usize },

    #[error("loss `{term}` is {value} at step {step}; training diverged, so no checkpoint was written for it")]
    #[diagnostic(help(
        "lower the learning rate, or resume from the last checkpoint with another --seed"
    ))]
    NonFiniteLoss { term: String, value: f32, step: u64 },

    #[error("failed to restore the random-generator state `{found}` from the checkpoint in {}: {reason}", dir.display())]
    #[diagnostic(help("the checkpoint was written by another netc version; start a new run from its weights with --init-from"))]
    EngineState { dir: PathBuf, found: String, reason: String },

    #[error("training step {step} failed: {message}")]
    Engine { step: u64, message: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Transfer(#[from] crate::edit::transfer::TransferError),

    #[error("--resume and --init-from both name a checkpoint")]
    #[diagnostic(help("pass --resume to continue a run, or --init-from to start a new run from a checkpoint's weights"))]
    ResumeAndInit,
}

/// One training iteration and access to the state a checkpoint stores. The `Trainer`
/// implements it on the device; the tensors are the module's parameters and buffers, and
/// the optimizer moments, by name.
pub trait Engine {
    /// Names of the loss terms [`Engine::step`] returns, in order: the `losses.csv` columns.
    fn loss_names(&self) -> Vec<String>;

    /// Learning rate of each optimizer step in `epoch`, by step name.
    fn learning_rates(&self, epoch: usize) -> BTreeMap<String, f32>;

    /// Runs iteration `step` (from 0, counted from the start of the run) on `batch` in
    /// epoch `epoch` and returns the loss terms.
    fn step(&mut self, step: u64, epoch: usize, batch: &Batch) -> Result<Vec<f32>, String>;

    /// Runs the generator in evaluation mode on `batch.input` and returns its output, CHW
    /// per sample, together with the output's channel count. The batch can hold more
    /// samples than the training batch size.
    fn generate(&mut self, batch: &Batch) -> Result<(usize, Vec<f32>), String>;

    /// Reads back every parameter and buffer, and every optimizer moment.
    fn tensors(&mut self) -> Result<(Vec<Tensor>, Vec<Tensor>), String>;

    /// Names and shapes that [`Engine::tensors`] returns, for checking a checkpoint.
    fn tensor_shapes(&self) -> (Vec<(String, Shape)>, Vec<(String, Shape)>);

    /// Replaces every parameter, buffer and moment with the checkpoint's.
    fn restore(&mut self, weights: &[Tensor], moments: &[Tensor]) -> Result<(), String>;

    /// Generator state (dropout masks, for instance) to store in the checkpoint.
    fn rng_state(&self) -> serde_json::Value;

    /// Restores the state [`Engine::rng_state`] returned.
    fn restore_rng(&mut self, state: &serde_json::Value) -> Result<(), String>;
}

/// Everything `netc run --train` passes besides the module and the engine.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The `.net` source text and its `--set` overrides, stored in checkpoints.
    pub source: String,
    pub overrides: Vec<String>,
    pub dataset: String,
    /// `--data`, and the value of `NETC_DATA`.
    pub data: Option<PathBuf>,
    pub data_env: Option<OsString>,
    pub epochs: Option<usize>,
    pub steps: Option<u64>,
    pub seed: u64,
    pub out: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    /// A checkpoint whose parameters a new run starts from where name and shape match.
    pub init_from: Option<PathBuf>,
    /// Accept an `init_from` checkpoint, or the checkpoint of an edited model on resume,
    /// that matches no trainable parameter.
    pub force: bool,
    pub quiet: bool,
    pub images_every: u64,
    pub checkpoint_every: u64,
    /// Checked after every step: a request ends the run early, with a checkpoint.
    pub stop: StopFlag,
}

/// The reason a run stopped before its last step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An interrupt or termination signal (Ctrl-C, SIGTERM).
    Interrupt,
    /// The model file changed, for `run --train --watch`.
    Edit,
}

/// A request to end a run after its current step, shared with a signal handler or a file
/// watcher. The run then writes a checkpoint and its outputs as at its last step. An
/// interrupt outranks an edit.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicU8>);

impl StopFlag {
    const EDIT: u8 = 1;
    const INTERRUPT: u8 = 2;

    /// Requests a stop after the current step.
    pub fn request(&self, reason: StopReason) {
        let value = match reason {
            StopReason::Edit => Self::EDIT,
            StopReason::Interrupt => Self::INTERRUPT,
        };
        self.0.fetch_max(value, Ordering::SeqCst);
    }

    /// Returns the pending request, if any, without clearing it.
    pub fn pending(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            Self::INTERRUPT => Some(StopReason::Interrupt),
            Self::EDIT => Some(StopReason::Edit),
            _ => None,
        }
    }

    /// Clears a pending edit request, for the next run after a recompile. An interrupt
    /// stays pending.
    pub fn clear_edit(&self) {
        let _ = self.0.compare_exchange(Self::EDIT, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Summary of a finished run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub first_step: u64,
    pub steps: u64,
    pub last_losses: Vec<(String, f32)>,
    pub checkpoint: PathBuf,
    pub mean_seconds_per_step: f64,
    /// Set when a [`StopFlag`] request ended the run before its last step.
    pub stopped: Option<StopReason>,
}

/// The data a run trains on and shows in its grids.
pub struct RunData {
    train: ImageDataset,
    /// Fixed samples for the image grids: from `val/` when present, else from `train/`.
    grid: Batch,
}

/// The restored state of a resumed run.
struct Resumed {
    step: u64,
    checkpoint: PathBuf,
}

/// Trains `module` with `engine` as `options` set and returns a summary.
pub fn train(
    module: &Module,
    engine: &mut dyn Engine,
    options: &RunOptions,
) -> Result<RunSummary, RunError> {
    let data = load_data(module, options)?;
    train_on(module, engine, options, &data)
}

/// Trains as [`train`] does, on data that [`load_data`] already loaded. The CLI loads the
/// data first, so a missing or broken file is reported before the device compiles.
pub fn train_on(
    module: &Module,
    engine: &mut dyn Engine,
    options: &RunOptions,
    data: &RunData,
) -> Result<RunSummary, RunError> {
    let run_dir = run_folder(module, options)?;
    std::fs::create_dir_all(&run_dir)
        .map_err(|source| ReportError::Write { path: run_dir.clone(), source })?;
    for dir in [
        run_dir.clone(),
        run_dir.join(report::IMAGES_DIR),
        run_dir.join(checkpoint::CHECKPOINTS_DIR),
    ] {
        let removed = crate::train::atomic::remove_stale_temporaries(&dir);
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "removed temporary files of an interrupted write");
        }
    }

    let mut seed = options.seed;
    let resumed = match &options.resume {
        Some(_) if options.init_from.is_some() => return Err(RunError::ResumeAndInit),
        Some(dir) => Some(resume(module, engine, options, dir, &data.train, &mut seed)?),
        None => {
            if run_dir.join(checkpoint::CHECKPOINTS_DIR).exists() {
                return Err(RunError::RunExists { dir: run_dir });
            }
            None
        }
    };
    if let Some(dir) = &options.init_from {
        let saved = checkpoint::load(dir)?;
        crate::edit::restore::restore_matching(module, engine, saved, options.force)?;
        tracing::info!(checkpoint = %dir.display(), "initialised from checkpoint");
    }

    let columns = engine.loss_names();
    let first_step = resumed.as_ref().map_or(0, |r| r.step);
    let mut log = match &resumed {
        Some(r) => LossLog::resume(&run_dir, &columns, r.step)?,
        None => LossLog::create(&run_dir, &columns)?,
    };
    let per_epoch = data.train.batches_per_epoch() as u64;
    let total = options.steps.unwrap_or_else(|| {
        let epochs = options.epochs.unwrap_or(module.train.as_ref().map_or(1, |t| t.epochs));
        epochs as u64 * per_epoch
    });

    let mut looper = Looper {
        module,
        engine,
        options,
        data,
        run_dir: &run_dir,
        seed,
        total,
        columns,
        progress: progress::training_bar(options.quiet, first_step, total, per_epoch),
        saved_step: resumed.as_ref().map(|r| r.step),
        last_checkpoint: resumed.map(|r| r.checkpoint),
    };
    tracing::info!(model = %module.name, dataset = %options.dataset, run = %run_dir.display(), first_step, total, "training");
    let outcome = looper.run(first_step, &mut log);
    progress::finish(&looper.progress);
    let summary = outcome?;
    tracing::info!(steps = summary.steps, checkpoint = %summary.checkpoint.display(), "stopped training");
    Ok(summary)
}

/// Finds, decodes and checks the training data (and `val/` for the grids, when present)
/// and compares its batch shapes with the train graph's inputs.
pub fn load_data(module: &Module, options: &RunOptions) -> Result<RunData, RunError> {
    let spec = module
        .train
        .as_ref()
        .ok_or_else(|| RunError::NoTrainSection { model: module.name.clone() })?;
    let input = graph_input(module, "input");
    let channels = input.as_ref().and_then(|s| s.dims().get(1).copied()).unwrap_or(3);
    let dirs = data::locate(&options.dataset, options.data.as_deref(), options.data_env.clone())?;

    let started = Instant::now();
    let train = ImageDataset::load(&dirs.train, &spec.data, Mode::Train, channels)?;
    let grid = match &dirs.val {
        Some(val) => {
            ImageDataset::load(val, &spec.data, Mode::Eval, channels)?.fixed_samples(GRID_SAMPLES)
        }
        None => train.fixed_samples(GRID_SAMPLES),
    };
    tracing::info!(pairs = train.len(), dir = %dirs.train.display(), seconds = started.elapsed().as_secs_f32(), "loaded training data");

    // The batches must have the shape of the graph's `input` and `target`.
    let size = train.sample_size();
    let input_shape = Shape::new([spec.data.batch, channels, size, size]);
    for (name, data) in [("input", input_shape), ("target", Shape::new(train.target_shape()))] {
        if let Some(model) = graph_input(module, name) {
            if model != data {
                return Err(RunError::ShapeMismatch { name: name.into(), data, model });
            }
        }
    }
    Ok(RunData { train, grid })
}

/// Returns the shape of the train graph's `Input` node called `name`.
fn graph_input(module: &Module, name: &str) -> Option<Shape> {
    let graph = &module.train.as_ref()?.graph;
    graph.inner.node_weights().find_map(|node| match &node.op {
        crate::ir::Op::Input { name: n } if n == name => Some(node.shape.clone()),
        _ => None,
    })
}

/// Picks the run folder: `--out`, else the run that `--resume` names, else
/// `runs/<model>-<dataset>/`.
fn run_folder(module: &Module, options: &RunOptions) -> Result<PathBuf, RunError> {
    if let Some(out) = &options.out {
        return Ok(out.clone());
    }
    if let Some(resume) = &options.resume {
        // A checkpoint folder is RUN/checkpoints/step-N, whether --resume names it or the
        // run folder, so the run folder is two levels up. A checkpoint outside a run
        // folder continues in the default one, never inside the checkpoint itself.
        let checkpoint = checkpoint::resolve(resume)?;
        let parent = checkpoint.parent();
        if parent.and_then(Path::file_name) == Some(OsStr::new(checkpoint::CHECKPOINTS_DIR)) {
            let run = parent.and_then(Path::parent).unwrap_or(Path::new("."));
            let run = if run.as_os_str().is_empty() { Path::new(".") } else { run };
            return Ok(run.to_path_buf());
        }
    }
    Ok(PathBuf::from("runs").join(format!("{}-{}", module.name, options.dataset)))
}

fn resume(
    module: &Module,
    engine: &mut dyn Engine,
    options: &RunOptions,
    dir: &Path,
    train: &ImageDataset,
    seed: &mut u64,
) -> Result<Resumed, RunError> {
    let folder = checkpoint::resolve(dir)?;
    let saved = checkpoint::load(&folder)?;
    let record = &saved.record;

    let expected = checkpoint::sha256_hex(options.source.as_bytes());
    let edited = record.model.sha256 != expected;
    if record.data.dataset != options.dataset || record.data.pairs != train.len() {
        return Err(RunError::DataChanged {
            dir: folder,
            found: record.data.dataset.clone(),
            pairs: record.data.pairs,
            expected: options.dataset.clone(),
            now: train.len(),
        });
    }
    if *seed != record.seed {
        tracing::info!(checkpoint_seed = record.seed, "resuming with the checkpoint's seed");
        *seed = record.seed;
    }
    let cursor = train.cursor_at(record.step as usize);
    let order = train.order(record.seed, cursor.epoch);
    checkpoint::check_data_position(&folder, record, cursor, &order)?;

    let step = record.step;
    if edited {
        // The model changed since the checkpoint: carry over what still matches.
        tracing::info!(checkpoint_sha256 = %record.model.sha256, sha256 = %expected, "the .net source changed since the checkpoint");
        let rng = record.rng.clone();
        crate::edit::restore::restore_matching(module, engine, saved, options.force)?;
        restore_rng(engine, &folder, &rng)?;
        tracing::info!(step, checkpoint = %folder.display(), model = %module.name, "resumed after an edit");
        return Ok(Resumed { step, checkpoint: folder });
    }

    let (weight_shapes, moment_shapes) = engine.tensor_shapes();
    checkpoint::check_tensors(
        &folder.join(checkpoint::WEIGHTS_FILE),
        &saved.weights,
        &weight_shapes,
    )?;
    checkpoint::check_tensors(
        &folder.join(checkpoint::OPTIMIZER_FILE),
        &saved.moments,
        &moment_shapes,
    )?;
    let failed = |message| RunError::Engine { step, message };
    engine.restore(&saved.weights, &saved.moments).map_err(failed)?;
    restore_rng(engine, &folder, &record.rng)?;
    tracing::info!(step, checkpoint = %folder.display(), model = %module.name, "resumed");
    Ok(Resumed { step, checkpoint: folder })
}

fn restore_rng(
    engine: &mut dyn Engine,
    folder: &Path,
    state: &serde_json::Value,
) -> Result<(), RunError> {
    engine.restore_rng(state).map_err(|reason| RunError::EngineState {
        dir: folder.to_path_buf(),
        found: state.to_string(),
        reason,
    })
}

/// The state of the training loop.
struct Looper<'a> {
    module: &'a Module,
    engine: &'a mut dyn Engine,
    options: &'a RunOptions,
    data: &'a RunData,
    run_dir: &'a Path,
    seed: u64,
    total: u64,
    columns: Vec<String>,
    progress: ProgressBar,
    last_checkpoint: Option<PathBuf>,
    /// The step of `last_checkpoint`.
    saved_step: Option<u64>,
}

impl Looper<'_> {
    fn run(&mut self, first: u64, log: &mut LossLog) -> Result<RunSummary, RunError> {
        let per_epoch = self.data.train.batches_per_epoch() as u64;
        let mut last_losses = Vec::new();
        let mut seconds = 0.0;
        let mut step = first;
        let mut stopped = None;
        while step < self.total {
            if let Some(reason) = self.options.stop.pending() {
                tracing::info!(step, ?reason, "stopping the run early");
                stopped = Some(reason);
                break;
            }
            let started = Instant::now();
            let cursor = self.data.train.cursor_at(step as usize);
            let batch = self.data.train.batch(self.seed, cursor);
            let losses = self
                .engine
                .step(step, cursor.epoch, &batch)
                .map_err(|message| RunError::Engine { step, message })?;
            if let Some((term, &value)) =
                self.columns.iter().zip(&losses).find(|(_, v)| !v.is_finite())
            {
                return Err(RunError::NonFiniteLoss { term: term.clone(), value, step: step + 1 });
            }
            step += 1;

            let elapsed = started.elapsed().as_secs_f64();
            seconds += elapsed;
            let lr =
                self.engine.learning_rates(cursor.epoch).values().next().copied().unwrap_or(0.0);
            log.append(&LossRow {
                step,
                epoch: cursor.epoch + 1,
                lr,
                losses: losses.clone(),
                seconds_per_step: elapsed,
            })?;
            last_losses = losses;
            self.show_progress(step, per_epoch, &last_losses);

            let every = |n: u64| n > 0 && step % n == 0;
            if every(self.options.checkpoint_every) && step < self.total {
                self.save_checkpoint(step)?;
            }
            if every(self.options.images_every) && step < self.total {
                self.write_outputs(step)?;
            }
        }

        // A stop right after a periodic checkpoint needs no second one of the same step.
        let checkpoint = if self.saved_step != Some(step) || self.last_checkpoint.is_none() {
            self.save_checkpoint(step)?
        } else {
            self.last_checkpoint.clone().unwrap_or_default()
        };
        self.write_outputs(step)?;
        let steps = step - first;
        Ok(RunSummary {
            run_dir: self.run_dir.to_path_buf(),
            first_step: first,
            steps,
            last_losses: self.columns.iter().cloned().zip(last_losses).collect(),
            checkpoint,
            mean_seconds_per_step: if steps > 0 { seconds / steps as f64 } else { 0.0 },
            stopped,
        })
    }

    fn show_progress(&self, step: u64, per_epoch: u64, losses: &[f32]) {
        self.progress.set_position(step);
        progress::set_epoch(&self.progress, step, self.total, per_epoch);
        let text: Vec<String> =
            self.columns.iter().zip(losses).map(|(n, v)| format!("{n} {v:.4}")).collect();
        self.progress.set_message(text.join(" "));
    }

    fn save_checkpoint(&mut self, step: u64) -> Result<PathBuf, RunError> {
        let failed = |message| RunError::Engine { step, message };
        let (weights, moments) = self.engine.tensors().map_err(failed)?;
        let cursor = self.data.train.cursor_at(step as usize);
        let record = Record {
            format: checkpoint::FORMAT_VERSION,
            netc_version: env!("CARGO_PKG_VERSION").to_string(),
            step,
            epoch: cursor.epoch,
            learning_rates: self.engine.learning_rates(cursor.epoch),
            seed: self.seed,
            rng: self.engine.rng_state(),
            data: DataRecord {
                dataset: self.options.dataset.clone(),
                pairs: self.data.train.len(),
                cursor,
                order: self.data.train.order(self.seed, cursor.epoch),
            },
            model: ModelRecord::new(
                &self.module.name,
                &self.options.source,
                &self.options.overrides,
            ),
        };
        let checkpoint = Checkpoint { record, weights, moments };
        let dir = checkpoint::save(self.run_dir, &checkpoint, KEEP_CHECKPOINTS)?;
        self.last_checkpoint = Some(dir.clone());
        self.saved_step = Some(step);
        Ok(dir)
    }

    /// Writes the image grid of `step`, the loss plot and `index.html`.
    fn write_outputs(&mut self, step: u64) -> Result<(), RunError> {
        // A classifier's output is not an image, so labeled data gets no grids.
        if !self.data.train.is_labeled() {
            self.write_grid(step)?;
        }
        report::write_plot(self.run_dir)?;

        let checkpoint =
            self.last_checkpoint.as_ref().and_then(|c| c.strip_prefix(self.run_dir).ok());
        let info = PageInfo {
            model: &self.module.name,
            dataset: &self.options.dataset,
            step,
            total_steps: self.total,
            epoch: self.data.train.cursor_at(step.saturating_sub(1) as usize).epoch,
            overrides: &self.options.overrides,
            seed: self.seed,
            checkpoint: checkpoint.map(|c| c.display().to_string()),
        };
        let page = report::write_index(self.run_dir, &info)?;
        tracing::debug!(step, page = %page.display(), "wrote image grid and index");
        Ok(())
    }

    /// Writes the input | output | target grid of `step`.
    fn write_grid(&mut self, step: u64) -> Result<(), RunError> {
        let grid = &self.data.grid;
        let (out_channels, output) =
            self.engine.generate(grid).map_err(|message| RunError::Engine { step, message })?;
        let [count, channels, height, width] = grid.shape;
        let rows: Vec<Vec<Panel<'_>>> = (0..count)
            .map(|i| {
                vec![
                    sample_panel(&grid.input, i, channels, height, width),
                    sample_panel(&output, i, out_channels, height, width),
                    sample_panel(&grid.target, i, channels, height, width),
                ]
            })
            .collect();
        report::write_grid(self.run_dir, step, &rows)?;
        Ok(())
    }
}

/// Returns sample `index` of a CHW batch as a grid panel (empty when the data is short).
fn sample_panel(
    data: &[f32],
    index: usize,
    channels: usize,
    height: usize,
    width: usize,
) -> Panel<'_> {
    let len = channels * height * width;
    let data = data.get(index * len..(index + 1) * len).unwrap_or(&[]);
    Panel { channels, height, width, data }
}

/// Names and shapes of the module's parameters and buffers, as checkpoints store them.
pub fn module_tensor_shapes(module: &Module) -> Vec<(String, Shape)> {
    let stored =
        module.params.iter().filter(|p| matches!(p.kind, ParamKind::Trainable | ParamKind::Buffer));
    stored.map(|p| (p.name.clone(), p.shape.clone())).collect()
}
