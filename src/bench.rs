//! `netc bench`: times training iterations or generator forward passes of a model on
//! synthetic data of the right shapes, on the device.
//!
//! Needs a model that checks, and a `train` section for training iterations. Reports the
//! compile time (parse to pipelines ready, not counting opening the device), the median and
//! spread of the timed runs after a warm-up, the dispatch count, the planned device memory
//! and a per-kernel table. The per-kernel times are each kernel's median over up to
//! [`KERNEL_TIMING_RUNS`] separate runs with timestamp queries around each kernel where
//! the adapter has them. Without them each dispatch is submitted on its own and waited
//! for, so each time includes a submit's overhead and their sum exceeds one run's time.

use crate::codegen::wgsl::RunValues;
use crate::codegen::{lower_graph, Kernel, Mode};
use crate::frontend;
use crate::infer::{generator, Generator};
use crate::ir::Module;
use crate::runtime::probe::LoadRates;
use crate::runtime::{Gpu, KernelTime, MemoryReport, ParamStore, Program, TimingMethod};
use crate::train::Trainer;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Maximum timed or warm-up runs of one benchmark.
pub const MAX_RUNS: usize = 100_000;

/// Maximum runs whose per-kernel times are measured, fewer when fewer runs are timed.
/// Each kernel's row shows its median over them.
pub const KERNEL_TIMING_RUNS: usize = 5;

/// Settings of one benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed runs after the warm-up.
    pub steps: usize,
    /// Untimed runs first, which also fault in lavapipe's compiled shaders.
    pub warmup: usize,
    /// Time generator forward passes instead of training iterations.
    pub infer: bool,
    /// Seed of the parameters and the synthetic data.
    pub seed: u64,
}

/// One kernel's row of the per-kernel table.
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    /// The layer the kernel implements (`fake.generator.e3.conv`).
    pub layer: String,
    /// The kernel's role within the layer (`conv2d`, `batch_norm_stats`, `adam`).
    pub kernel: String,
    pub seconds: f64,
    /// Seconds of the texture copies before the kernel (see [`KernelTime::copy_seconds`]).
    pub copy_seconds: f64,
    /// Counted floating-point operations per run (a multiply-add counts as two).
    pub flops: u64,
    pub gflops_per_second: f64,
    /// Bytes of every buffer range the kernel binds: an upper bound of what it reads and
    /// writes once, not a measured traffic figure.
    pub bytes_bound: u64,
}

/// Everything `netc bench` prints.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub settings: Vec<(String, serde_json::Value)>,
    pub adapter: String,
    pub backend: String,
    /// Whether kernels read their large operands from texture copies.
    pub texture_operands: bool,
    /// The load speeds behind that choice on a CPU adapter, in GB/s. Absent when the
    /// choice was not measured.
    pub load_rates: Option<LoadRates>,
    /// `train` for training iterations, `infer` for generator forward passes.
    pub mode: String,
    pub compile_seconds: f64,
    /// Each untimed warm-up run's seconds. The first includes the shader compilation that
    /// a driver defers to a pipeline's first dispatch, as lavapipe does.
    pub warmup_seconds: Vec<f64>,
    pub steps: usize,
    /// Each timed run's seconds, in the order they ran.
    pub step_seconds: Vec<f64>,
    pub step_seconds_median: f64,
    pub step_seconds_min: f64,
    pub step_seconds_max: f64,
    pub flops_per_step: u64,
    pub gflops_per_second: f64,
    pub dispatches_per_step: usize,
    /// The parameter store: parameters, buffers, optimizer state and the fused
    /// optimizer's gradient arenas.
    pub parameter_bytes: u64,
    pub intermediate_bytes: u64,
    pub pinned_bytes: u64,
    /// The parameter store, intermediates and pinned buffers together.
    pub peak_device_bytes: u64,
    /// The method behind the per-kernel times.
    pub kernel_timing: String,
    /// Number of runs that each per-kernel time is the median of.
    pub kernel_timing_runs: usize,
    pub kernels: Vec<KernelRow>,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BenchError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Frontend(#[from] frontend::Diagnostics),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Codegen(#[from] crate::codegen::CodegenError),
    #[error("model {model} has no train section, so there is no training step to time")]
    #[diagnostic(help(
        "pass --infer to time the generator's forward pass, or add a train section to the model"
    ))]
    NoTrainSection { model: String },
    #[error("--steps must be at least 1, got 0")]
    #[diagnostic(help("time at least one run, for example --steps 10"))]
    NoSteps,
    #[error("--{flag} {value} is more than the {MAX_RUNS} runs one benchmark times")]
    #[diagnostic(help("pass --{flag} {MAX_RUNS} or less; 10 to 20 runs give a stable median"))]
    TooManyRuns { flag: &'static str, value: usize },
}

impl BenchOptions {
    /// Checks the run counts, before anything is compiled or opened.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.steps == 0 {
            return Err(BenchError::NoSteps);
        }
        for (flag, value) in [("steps", self.steps), ("warmup", self.warmup)] {
            if value > MAX_RUNS {
                return Err(BenchError::TooManyRuns { flag, value });
            }
        }
        Ok(())
    }
}

/// Compiles the model at `path` on `gpu` and times it with `options`.
pub fn bench(
    gpu: &Gpu,
    path: &Path,
    overrides: &[String],
    options: &BenchOptions,
) -> Result<BenchReport, BenchError> {
    let parsed = parse(path, overrides, options)?;
    bench_parsed(gpu, &parsed, options)
}

/// A model compiled to its IR, ready for [`bench_parsed`].
pub struct Parsed {
    module: Module,
    /// Seconds from reading the file to the checked IR.
    seconds: f64,
}

/// Checks `options` and compiles the model at `path` to its IR, without a device, so that
/// a mistake in either is reported before the device is opened.
pub fn parse(
    path: &Path,
    overrides: &[String],
    options: &BenchOptions,
) -> Result<Parsed, BenchError> {
    options.validate()?;
    let started = Instant::now();
    let module = frontend::compile_file(path, overrides)?;
    if !options.infer && module.train.is_none() {
        return Err(BenchError::NoTrainSection { model: module.name.clone() });
    }
    Ok(Parsed { module, seconds: started.elapsed().as_secs_f64() })
}

/// Times the model of `parsed` on `gpu` with `options`.
pub fn bench_parsed(
    gpu: &Gpu,
    parsed: &Parsed,
    options: &BenchOptions,
) -> Result<BenchReport, BenchError> {
    options.validate()?;
    let module = &parsed.module;
    let mut measured = if options.infer {
        bench_infer(gpu, module, options)?
    } else {
        bench_train(gpu, module, options)?
    };
    measured.compile_seconds += parsed.seconds;
    let mut times = measured.times.clone();
    let median = median(&mut times);
    let flops: u64 = measured.kernels.iter().map(|k| k.flops).sum();
    let memory = measured.memory;
    Ok(BenchReport {
        model: module.name.clone(),
        settings: module.settings.clone(),
        adapter: gpu.info.name.clone(),
        backend: format!("{:?}", gpu.info.backend),
        texture_operands: gpu.texture_operands,
        load_rates: gpu.load_rates,
        mode: if options.infer { "infer" } else { "train" }.to_string(),
        compile_seconds: measured.compile_seconds,
        warmup_seconds: measured.warmup,
        steps: times.len(),
        step_seconds_median: median,
        step_seconds_min: times[0],
        step_seconds_max: times[times.len() - 1],
        step_seconds: measured.times,
        flops_per_step: flops,
        gflops_per_second: flops as f64 / median / 1e9,
        dispatches_per_step: measured.dispatches,
        parameter_bytes: measured.parameter_bytes,
        intermediate_bytes: memory.intermediate_bytes,
        pinned_bytes: memory.pinned_bytes,
        peak_device_bytes: measured.parameter_bytes
            + memory.intermediate_bytes
            + memory.pinned_bytes,
        kernel_timing: measured.kernel_timing.describe().to_string(),
        kernel_timing_runs: measured.kernel_timing_runs,
        kernels: measured.kernels,
    })
}

/// The measurements of one benchmark mode.
struct Measured {
    compile_seconds: f64,
    warmup: Vec<f64>,
    times: Vec<f64>,
    kernels: Vec<KernelRow>,
    kernel_timing: TimingMethod,
    kernel_timing_runs: usize,
    dispatches: usize,
    memory: MemoryReport,
    parameter_bytes: u64,
}

fn bench_train(gpu: &Gpu, module: &Module, options: &BenchOptions) -> Result<Measured, BenchError> {
    let started = Instant::now();
    let mut trainer = Trainer::new(gpu, module, options.seed)?;
    let compile_seconds = started.elapsed().as_secs_f64();
    let sizes: HashMap<&str, usize> = trainer.device_program().inputs().collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed);
    let input = synthetic(&mut rng, sizes.get("input").copied().unwrap_or(0));
    let target = synthetic(&mut rng, sizes.get("target").copied().unwrap_or(0));

    let mut warmup = Vec::new();
    for _ in 0..options.warmup {
        let start = Instant::now();
        trainer.step_unread(&input, &target)?;
        warmup.push(start.elapsed().as_secs_f64());
    }
    let mut times = Vec::new();
    for _ in 0..options.steps {
        let start = Instant::now();
        trainer.step_unread(&input, &target)?;
        times.push(start.elapsed().as_secs_f64());
    }

    let program = trainer.device_program();
    let values = RunValues { seed: 1, step: 1, ..RunValues::default() };
    let runs = options.steps.min(KERNEL_TIMING_RUNS);
    let (method, timings) = median_kernel_times(program, gpu, &values, runs)?;
    let kernels = kernel_rows(&trainer.program().kernels, &timings);
    let parameter_bytes = trainer.parameter_store_bytes();
    Ok(Measured {
        compile_seconds,
        warmup,
        times,
        kernels,
        kernel_timing: method,
        kernel_timing_runs: runs,
        dispatches: program.dispatch_count(),
        memory: program.memory().clone(),
        parameter_bytes,
    })
}

fn bench_infer(gpu: &Gpu, module: &Module, options: &BenchOptions) -> Result<Measured, BenchError> {
    let started = Instant::now();
    let store = ParamStore::initialized(gpu, module, options.seed)?;
    let net = generator(module)?;
    let generator = Generator::compile(gpu, module, &store, Mode::Infer)?;
    let compile_seconds = started.elapsed().as_secs_f64();
    let program: &Program = generator.program();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed);
    let inputs: Vec<(String, Vec<f32>)> = program
        .inputs()
        .map(|(name, elements)| (name.to_string(), synthetic(&mut rng, elements)))
        .collect();
    for (name, values) in &inputs {
        program.write_input(gpu, name, values)?;
    }

    let values = RunValues::default();
    let mut warmup = Vec::new();
    for _ in 0..options.warmup {
        let start = Instant::now();
        program.run(gpu, &values, &["output"])?;
        warmup.push(start.elapsed().as_secs_f64());
    }
    let mut times = Vec::new();
    for _ in 0..options.steps {
        let start = Instant::now();
        program.run(gpu, &values, &["output"])?;
        times.push(start.elapsed().as_secs_f64());
    }

    // The generator lowers the same way each time, so this gives the compiled kernels'
    // FLOP counts and bindings.
    let lowered = lower_graph(&net.graph, &gpu.target(), Mode::Infer)?;
    let runs = options.steps.min(KERNEL_TIMING_RUNS);
    let (method, timings) = median_kernel_times(program, gpu, &values, runs)?;
    Ok(Measured {
        compile_seconds,
        warmup,
        times,
        kernels: kernel_rows(&lowered, &timings),
        kernel_timing: method,
        kernel_timing_runs: runs,
        dispatches: program.dispatch_count(),
        memory: program.memory().clone(),
        parameter_bytes: module_param_bytes(module),
    })
}

/// Times every kernel of `program` in `runs` runs and returns each kernel's median time
/// and median copy time, because one run's times vary by a factor of two on a busy CPU.
fn median_kernel_times(
    program: &Program,
    gpu: &Gpu,
    values: &RunValues,
    runs: usize,
) -> Result<(TimingMethod, Vec<KernelTime>), BenchError> {
    let (method, mut first) = program.time_kernels(gpu, values)?;
    let mut samples: Vec<Vec<(f64, f64)>> =
        first.iter().map(|t| vec![(t.seconds, t.copy_seconds)]).collect();
    for _ in 1..runs {
        let (_, timings) = program.time_kernels(gpu, values)?;
        for (kernel, timing) in samples.iter_mut().zip(&timings) {
            kernel.push((timing.seconds, timing.copy_seconds));
        }
    }
    for (timing, kernel) in first.iter_mut().zip(&samples) {
        let mut seconds: Vec<f64> = kernel.iter().map(|s| s.0).collect();
        let mut copies: Vec<f64> = kernel.iter().map(|s| s.1).collect();
        timing.seconds = median(&mut seconds);
        timing.copy_seconds = median(&mut copies);
    }
    Ok((method, first))
}

/// Returns the median of `values`, or 0 for none. It sorts `values` in place.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Uniform values in [-1, 1], the range of netc's image inputs.
fn synthetic(rng: &mut rand_chacha::ChaCha8Rng, elements: usize) -> Vec<f32> {
    (0..elements).map(|_| rng.random_range(-1.0f32..=1.0)).collect()
}

fn module_param_bytes(module: &Module) -> u64 {
    module.params.iter().map(|p| 4 * p.shape.numel() as u64).sum()
}

/// Joins the measured per-kernel times with each kernel's FLOP count and bindings.
fn kernel_rows(kernels: &[Kernel], timings: &[KernelTime]) -> Vec<KernelRow> {
    let by_name: HashMap<&str, &Kernel> = kernels.iter().map(|k| (k.name.as_str(), k)).collect();
    timings
        .iter()
        .map(|timing| {
            let (name, seconds) = (&timing.name, &timing.seconds);
            let (layer, kernel) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            let (flops, bytes_bound) = by_name
                .get(name.as_str())
                .map(|k| (k.flops, k.bindings.iter().map(|b| 4 * b.elements).sum()))
                .unwrap_or((0, 0));
            KernelRow {
                layer: layer.to_string(),
                kernel: kernel.to_string(),
                seconds: *seconds,
                copy_seconds: timing.copy_seconds,
                flops,
                gflops_per_second: if *seconds > 0.0 { flops as f64 / seconds / 1e9 } else { 0.0 },
                bytes_bound,
            }
        })
        .collect()
}
