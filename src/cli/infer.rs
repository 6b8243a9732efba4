//! `netc run FILE --infer IMAGE... [-o DIR] [--weights CHECKPOINT] [--running-stats]`: runs
//! a model's generator on image files and writes a PNG per input.

use super::run::RunArgs;
use netc::codegen::Mode;
use netc::frontend;
use netc::infer::Generator;
use netc::ir::Module;
use netc::runtime::{Gpu, ParamStore};
use netc::train::checkpoint;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Compiles the architecture a checkpoint was trained with, from its recorded source and
/// `--set` overrides, so that none has to be repeated.
fn checkpoint_module(
    args: &RunArgs,
    checkpoint: &checkpoint::Checkpoint,
) -> miette::Result<Module> {
    let model = &checkpoint.record.model;
    if !args.model.set.is_empty() {
        eprintln!("note: --set is ignored with --weights; the checkpoint's settings apply");
    }
    let file_text = std::fs::read_to_string(&args.model.file).unwrap_or_default();
    if file_text != model.source {
        eprintln!(
            "note: {} differs from the model the checkpoint was trained with; using the checkpoint's",
            args.model.file.display()
        );
    }
    let name = format!("{}.net", model.name);
    frontend::compile_source(&name, &model.source, &model.overrides).map_err(miette::Report::new)
}

/// Uploads the checkpoint's weights into `params`, after checking every name and shape.
fn load_weights(
    gpu: &Gpu,
    module: &Module,
    params: &ParamStore,
    dir: &std::path::Path,
    checkpoint: &checkpoint::Checkpoint,
) -> miette::Result<()> {
    let expected: Vec<_> =
        module.params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
    checkpoint::check_tensors(dir, &checkpoint.weights, &expected)?;
    for tensor in &checkpoint.weights {
        if let Some(id) = module.param_id(&tensor.name) {
            params.upload(gpu, id, &tensor.data)?;
        }
    }
    Ok(())
}

/// Rejects an output folder where an output PNG would replace one of the input images,
/// as `-o photos` does for `photos/a.png`.
fn check_inputs_kept(images: &[PathBuf], out_dir: &Path) -> miette::Result<()> {
    let outputs = netc::infer::output_paths(images, out_dir);
    for output in &outputs {
        let Some(image) = images.iter().find(|i| super::output::is_same_file(i, output)) else {
            continue;
        };
        return Err(miette::miette!(
            help = "choose another folder with -o",
            "the output {} would replace the input image {}",
            output.display(),
            image.display()
        ));
    }
    Ok(())
}

pub fn run(args: &RunArgs) -> miette::Result<ExitCode> {
    if let Some(dir) = &args.output {
        super::output::check_folder("-o", dir, "netc run --infer", "one PNG per image")?;
    }
    let checkpoint = match &args.weights {
        Some(dir) => Some(checkpoint::load(dir)?),
        None => None,
    };
    let module = match &checkpoint {
        Some(checkpoint) => checkpoint_module(args, checkpoint)?,
        None => frontend::compile_file(&args.model.file, &args.model.set)
            .map_err(miette::Report::new)?,
    };
    let out_dir =
        args.output.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}-infer", module.name)));
    check_inputs_kept(&args.infer, &out_dir)?;
    netc::runtime::affinity::check_setting()?;

    let gpu = Gpu::open(args.device.adapter.as_deref())?;
    gpu.pin_driver_threads()?;
    let params = ParamStore::initialized(&gpu, &module, args.seed)?;
    match (&checkpoint, &args.weights) {
        (Some(checkpoint), Some(dir)) => load_weights(&gpu, &module, &params, dir, checkpoint)?,
        _ => eprintln!(
            "note: no --weights given, so this runs the freshly initialised network (seed {}); \
             its outputs are noise until the model is trained",
            args.seed
        ),
    }

    let started = std::time::Instant::now();
    let mode = if args.running_stats { Mode::Eval } else { Mode::Infer };
    let generator = Generator::compile(&gpu, &module, &params, mode)?;
    let written = generator.run_files(&gpu, &args.infer, &out_dir)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    tracing::info!(
        images = written.len(),
        seconds = started.elapsed().as_secs_f64(),
        "inference done"
    );
    Ok(ExitCode::SUCCESS)
}
