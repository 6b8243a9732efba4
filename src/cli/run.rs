//! `netc run`: trains a model (`--train`) or runs its generator on images (`--infer`).
//! The training loop itself is `netc::train::run`; this file only gathers its inputs.

use super::{DeviceArgs, ModelArgs};
use clap::Args;
use netc::frontend;
use netc::runtime::Gpu;
use netc::train::checkpoint;
use netc::train::engine::DeviceEngine;
use netc::train::report;
use netc::train::run::{self, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Run the generator on these images (JPEG or PNG) and write a PNG for each
    #[arg(long, num_args = 1.., value_name = "IMAGE", conflicts_with = "train")]
    pub infer: Vec<PathBuf>,
    /// Folder for the --infer outputs, one PNG per image named after it (default:
    /// runs/<model>-infer/)
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Checkpoint folder to load weights (and the architecture) from for --infer
    #[arg(long, value_name = "CHECKPOINT")]
    pub weights: Option<PathBuf>,
    /// Run --infer with the running batch-norm statistics and no dropout, instead of the
    /// statistics of each input batch with dropout as in training (the pix2pix default)
    #[arg(long, requires = "infer")]
    pub running_stats: bool,
    /// Train on the named data set, found as NAME/train/ under the data folder
    #[arg(long, value_name = "NAME")]
    pub train: Option<String>,
    /// Data folder (default: $NETC_DATA, else ./data)
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Stop after this many epochs, counted from the start of the run
    #[arg(long, conflicts_with = "steps", value_parser = parse_positive)]
    pub epochs: Option<usize>,
    /// Stop after this many iterations, counted from the start of the run
    #[arg(long, value_parser = parse_positive)]
    pub steps: Option<usize>,
    /// Seed for initialization, data order, augmentation and dropout
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder (default: runs/<model>-<dataset>/)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run whose checkpoint is in this folder
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Start a new run from a checkpoint (a run folder or one of its checkpoints): each
    /// parameter whose name and shape match is copied, the others start from their
    /// initializers
    #[arg(long, value_name = "CHECKPOINT")]
    pub init_from: Option<PathBuf>,
    /// Accept an --init-from checkpoint, or the checkpoint of an edited model on --resume,
    /// even when no trainable parameter matches by name and shape
    #[arg(long)]
    pub force: bool,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
    /// Recompile and continue with transferred weights when the model file changes
    #[arg(long)]
    pub watch: bool,
    /// Write an image grid, the loss plot and index.html every this many steps
    #[arg(long, default_value_t = 200, value_name = "STEPS", requires = "train")]
    pub images_every: u64,
    /// Write a checkpoint every this many steps (and always at the end)
    #[arg(long, default_value_t = 500, value_name = "STEPS", requires = "train")]
    pub checkpoint_every: u64,
}

pub fn run(args: &RunArgs) -> miette::Result<ExitCode> {
    match &args.train {
        Some(dataset) => train(args, dataset),
        None if !args.infer.is_empty() => super::infer::run(args),
        None => Err(miette::miette!(
            "netc run needs --train NAME or --infer IMAGE...; see netc run --help"
        )),
    }
}

/// Returns the `--set` values of a training run: the command line's, or on `--resume`
/// without any, the ones the checkpoint was trained with. Also rejects a resume whose run
/// has already reached `--steps`, before any data is loaded.
fn resume_overrides(args: &RunArgs) -> miette::Result<Vec<String>> {
    let Some(dir) = &args.resume else {
        return Ok(args.model.set.clone());
    };
    let record = checkpoint::load_record(dir).map_err(miette::Report::new)?;
    if let Some(steps) = args.steps {
        if record.step >= steps as u64 {
            return Err(miette::miette!(
                help = "pass a larger --steps to continue training",
                "the run in {} is already at step {}, which reaches --steps {steps}",
                dir.display(),
                record.step
            ));
        }
    }
    if !args.model.set.is_empty() || record.model.overrides.is_empty() {
        return Ok(args.model.set.clone());
    }
    tracing::info!(
        overrides = record.model.overrides.join(" "),
        "using the --set values the checkpoint was trained with"
    );
    Ok(record.model.overrides)
}

/// `netc run FILE --train NAME`: compiles the model, opens the device and hands the run to
/// `netc::train::run::train`.
fn train(args: &RunArgs, dataset: &str) -> miette::Result<ExitCode> {
    if args.watch {
        return Err(miette::miette!("netc run --train --watch is not supported yet"));
    }
    if let Some(out) = &args.out {
        super::output::check_folder("--out", out, "netc run --train", "the run's outputs")?;
    }
    let path = &args.model.file;
    let source = std::fs::read_to_string(path)
        .map_err(|e| miette::miette!("failed to read {}: {e}", path.display()))?;
    let name = path.display().to_string();
    let overrides = resume_overrides(args)?;
    let module =
        frontend::compile_source(&name, &source, &overrides).map_err(miette::Report::new)?;

    let options = RunOptions {
        source,
        overrides,
        dataset: dataset.to_string(),
        data: args.data.clone(),
        data_env: std::env::var_os("NETC_DATA"),
        epochs: args.epochs,
        steps: args.steps.map(|s| s as u64),
        seed: args.seed,
        out: args.out.clone(),
        resume: args.resume.clone(),
        init_from: args.init_from.clone(),
        force: args.force,
        quiet: args.quiet,
        images_every: args.images_every,
        checkpoint_every: args.checkpoint_every,
    };

    // Data errors come before the device work, which takes minutes on a CPU adapter.
    let data = run::load_data(&module, &options).map_err(miette::Report::new)?;
    let gpu = Gpu::open(args.device.adapter.as_deref()).map_err(miette::Report::new)?;
    let mut engine = DeviceEngine::new(&gpu, &module, args.seed).map_err(miette::Report::new)?;
    let summary =
        run::train_on(&module, &mut engine, &options, data).map_err(miette::Report::new)?;

    let losses: Vec<String> =
        summary.last_losses.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
    println!(
        "trained steps {}..{} at {:.3} s/step; last losses: {}",
        summary.first_step + 1,
        summary.first_step + summary.steps,
        summary.mean_seconds_per_step,
        losses.join(", ")
    );
    println!("checkpoint: {}", summary.checkpoint.display());
    println!("report: {}", summary.run_dir.join(report::INDEX_FILE).display());
    Ok(ExitCode::SUCCESS)
}

/// Parses a count that must be at least 1 (`--steps`, `--epochs`).
fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}; pass a whole number of at least 1")),
    }
}
