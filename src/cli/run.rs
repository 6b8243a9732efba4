//! `netc run`: trains a model (`--train`) or runs its generator on images (`--infer`).
//! The training loop itself is `netc::train::run`; this file only gathers its inputs.

use super::{DeviceArgs, ModelArgs};
use clap::Args;
use netc::edit::watch::FileWatcher;
use netc::frontend;
use netc::ir::Module;
use netc::runtime::Gpu;
use netc::train::checkpoint;
use netc::train::report;
use netc::train::run::{self, RunOptions, StopFlag, StopReason};
use netc::train::Trainer;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const DEFAULT_IMAGES_EVERY: u64 = 200;
const DEFAULT_CHECKPOINT_EVERY: u64 = 500;

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
    #[arg(long, default_value_t = DEFAULT_IMAGES_EVERY, value_name = "STEPS", requires = "train")]
    pub images_every: u64,
    /// Write a checkpoint every this many steps (and always at the end); the run folder
    /// keeps the two newest
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_EVERY, value_name = "STEPS", requires = "train")]
    pub checkpoint_every: u64,
}

pub fn run(args: &RunArgs) -> miette::Result<ExitCode> {
    if args.watch && args.train.is_none() {
        return Err(miette::miette!(
            help = "pass --train NAME to train with --watch, or use netc check --watch FILE",
            "--watch applies to training runs only"
        ));
    }
    match &args.train {
        Some(dataset) => train(args, dataset),
        None if !args.infer.is_empty() => super::infer::run(args),
        None => Err(miette::miette!(
            "netc run needs --train NAME or --infer IMAGE...; see netc run --help"
        )),
    }
}

/// Returns the `--set` values of a training run: the command line's, and on `--resume` the
/// ones the checkpoint was trained with that the command line does not set again. Also rejects a resume whose run
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
    if record.model.overrides.is_empty() {
        return Ok(args.model.set.clone());
    }
    // The command line's values replace the checkpoint's of the same name.
    let name = |value: &str| value.split_once('=').map_or(value, |(n, _)| n).trim().to_string();
    let set_again: Vec<String> = args.model.set.iter().map(|v| name(v)).collect();
    let mut overrides: Vec<String> =
        record.model.overrides.into_iter().filter(|v| !set_again.contains(&name(v))).collect();
    tracing::info!(
        overrides = overrides.join(" "),
        "using the --set values the checkpoint was trained with"
    );
    overrides.extend(args.model.set.iter().cloned());
    Ok(overrides)
}

/// `netc run FILE --train NAME`: compiles the model, opens the device and hands the run to
/// `netc::train::run::train_on`. Ctrl-C or SIGTERM ends the run after its current step with
/// a checkpoint, and `--watch` recompiles after each save of the model file.
fn train(args: &RunArgs, dataset: &str) -> miette::Result<ExitCode> {
    if let Some(out) = &args.out {
        super::output::check_folder("--out", out, "netc run --train", "the run's outputs")?;
    }
    let path = &args.model.file;
    let stop = StopFlag::default();
    install_stop_handler(&stop)?;
    // The watch starts before the first read, so a save during the first compile counts.
    let watcher = if args.watch { Some(FileWatcher::new(path)?) } else { None };
    let source = read_model(path)?;
    let name = path.display().to_string();
    let overrides = resume_overrides(args)?;
    let module =
        frontend::compile_source(&name, &source, &overrides).map_err(miette::Report::new)?;

    let mut options = RunOptions {
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
        stop: stop.clone(),
    };

    // Data errors come before the device work, which takes minutes on a CPU adapter.
    netc::runtime::affinity::check_setting().map_err(miette::Report::new)?;
    let data = run::load_data(&module, &options).map_err(miette::Report::new)?;
    let gpu = Gpu::open(args.device.adapter.as_deref()).map_err(miette::Report::new)?;
    gpu.pin_driver_threads().map_err(miette::Report::new)?;
    let trainer = Trainer::new(&gpu, &module, args.seed).map_err(miette::Report::new)?;
    if let Some(watcher) = watcher {
        watch_for_edits(watcher, options.source.clone(), stop.clone());
        eprintln!(
            "watching {name} for changes; a save recompiles the model after the current step"
        );
    }
    let mut current = Model { module, trainer, data, source: options.source.clone() };
    // The model before the last edit, until a run of the edited one has started.
    let mut previous: Option<Model> = None;
    loop {
        let result = run::train_on(&current.module, &mut current.trainer, &options, &current.data);
        let summary = match (result, previous.take()) {
            (Ok(summary), _) => summary,
            (Err(error), Some(old)) => {
                // The edited model could not take over the checkpoint (for instance, the
                // transfer would drop every trainable parameter): go back to the old one.
                eprintln!("{:?}", miette::Report::new(error));
                eprintln!(
                    "{name}: the edit does not apply, so training goes on with the previous model"
                );
                current = old;
                options.source = current.source.clone();
                continue;
            }
            (Err(error), None) => return Err(miette::Report::new(error)),
        };
        print_summary(&summary);
        match summary.stopped {
            None => return Ok(ExitCode::SUCCESS),
            Some(StopReason::Interrupt) => {
                eprintln!(
                    "interrupted after step {}; continue with: {}",
                    summary.first_step + summary.steps,
                    resume_command(args, dataset, &summary.run_dir)
                );
                if read_model(path).ok().as_deref() != Some(current.source.as_str()) {
                    eprintln!(
                        "note: {name} has changed since the model this run trains was compiled; \
                         the checkpoint's checkpoint.json holds that model under model.source"
                    );
                }
                return Ok(ExitCode::from(130));
            }
            Some(StopReason::Edit) => {
                stop.clear_edit();
                options.resume = Some(summary.checkpoint.clone());
                options.out = Some(summary.run_dir.clone());
                options.init_from = None;
                if let Some(edited) = recompile(&gpu, args, &options, &name) {
                    options.source = edited.source.clone();
                    previous = Some(std::mem::replace(&mut current, edited));
                }
            }
        }
    }
}

/// The compiled model a run trains, with its data.
struct Model<'g> {
    module: Module,
    trainer: Trainer<'g>,
    data: run::RunData,
    /// The `.net` text the module was compiled from.
    source: String,
}

/// Compiles the edited model file for a run that continues from its last checkpoint, and
/// returns `None` after printing why when the edit does not check, its data does not load
/// or its program does not compile. The run then goes on with the previous model.
fn recompile<'g>(
    gpu: &'g Gpu,
    args: &RunArgs,
    options: &RunOptions,
    name: &str,
) -> Option<Model<'g>> {
    let keep = |report: miette::Report| {
        eprintln!("{report:?}");
        eprintln!("{name}: the edit does not apply, so training goes on with the previous model");
        None
    };
    let source = match read_model(&args.model.file) {
        Ok(source) => source,
        Err(report) => return keep(report),
    };
    let module = match frontend::compile_source(name, &source, &options.overrides) {
        Ok(module) => module,
        Err(diagnostics) => return keep(miette::Report::new(diagnostics)),
    };
    let data = match run::load_data(&module, options) {
        Ok(data) => data,
        Err(error) => return keep(miette::Report::new(error)),
    };
    let trainer = match Trainer::new(gpu, &module, options.seed) {
        Ok(trainer) => trainer,
        Err(error) => return keep(miette::Report::new(error)),
    };
    let shaders = trainer.device_program().shader_counts();
    eprintln!(
        "{name} changed: recompiled with {} shaders reused and {} compiled; continuing from {}",
        shaders.reused,
        shaders.compiled,
        options.resume.as_deref().unwrap_or(Path::new("")).display()
    );
    Some(Model { module, trainer, data, source })
}

/// Starts a thread that requests an edit stop whenever the model file's content differs
/// from what the run last compiled. A failing watch is logged and ends only the watching.
fn watch_for_edits(watcher: FileWatcher, source: String, stop: StopFlag) {
    std::thread::spawn(move || {
        let mut last = source.into_bytes();
        loop {
            if let Err(error) = watcher.wait_for_change(None) {
                tracing::error!(%error, "the model file watch stopped");
                return;
            }
            // A removed or unreadable file is not an edit; the next save is.
            if let Ok(bytes) = std::fs::read(watcher.path()) {
                if bytes != last {
                    last = bytes;
                    stop.request(StopReason::Edit);
                }
            }
        }
    });
}

/// Makes Ctrl-C, SIGTERM and SIGHUP request a stop after the current step. A second signal
/// ends the process at once, without a checkpoint of the steps since the last one.
fn install_stop_handler(stop: &StopFlag) -> miette::Result<()> {
    let stop = stop.clone();
    ctrlc::set_handler(move || {
        if stop.pending() == Some(StopReason::Interrupt) {
            eprintln!("\nsecond interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after the current step and writing a checkpoint");
        stop.request(StopReason::Interrupt);
    })
    .map_err(|e| miette::miette!("failed to install the interrupt handler: {e}"))
}

/// Returns the command line that continues an interrupted run in `run_dir`. The
/// checkpoint supplies the `--set` values and the seed.
fn resume_command(args: &RunArgs, dataset: &str, run_dir: &Path) -> String {
    let path = |p: &Path| shell_word(&p.display().to_string());
    let mut words = vec!["netc run".to_string(), path(&args.model.file)];
    words.push(format!("--train {}", shell_word(dataset)));
    if let Some(data) = &args.data {
        words.push(format!("--data {}", path(data)));
    }
    if let Some(steps) = args.steps {
        words.push(format!("--steps {steps}"));
    }
    if let Some(epochs) = args.epochs {
        words.push(format!("--epochs {epochs}"));
    }
    if args.images_every != DEFAULT_IMAGES_EVERY {
        words.push(format!("--images-every {}", args.images_every));
    }
    if args.checkpoint_every != DEFAULT_CHECKPOINT_EVERY {
        words.push(format!("--checkpoint-every {}", args.checkpoint_every));
    }
    if let Some(adapter) = &args.device.adapter {
        words.push(format!("--adapter {}", shell_word(adapter)));
    }
    if args.watch {
        words.push("--watch".to_string());
    }
    words.push(format!("--resume {}", path(run_dir)));
    words.join(" ")
}

/// Quotes `word` for a POSIX shell unless it contains only plain path characters.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn read_model(path: &Path) -> miette::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| miette::miette!("failed to read {}: {e}", path.display()))
}

fn print_summary(summary: &run::RunSummary) {
    let losses: Vec<String> =
        summary.last_losses.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
    if summary.steps == 0 {
        println!("trained no steps; the run is at step {}", summary.first_step);
    } else {
        println!(
            "trained steps {}..{} at {:.3} s/step; last losses: {}",
            summary.first_step + 1,
            summary.first_step + summary.steps,
            summary.mean_seconds_per_step,
            losses.join(", ")
        );
    }
    println!("checkpoint: {}", summary.checkpoint.display());
    println!("report: {}", summary.run_dir.join(report::INDEX_FILE).display());
}

/// Parses a count that must be at least 1 (`--steps`, `--epochs`).
fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}; pass a whole number of at least 1")),
    }
}
