//! `netc bench`: prints what `netc::bench` measured, as a table or as JSON.

use super::{DeviceArgs, ModelArgs};
use clap::Args;
use netc::bench::{bench_parsed, parse, BenchOptions, BenchReport};
use netc::runtime::Gpu;
use std::process::ExitCode;

/// Rows of the per-kernel table in the text output; `--json` has them all.
const KERNEL_ROWS: usize = 25;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Timed iterations after the warm-up
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed iterations before the timed ones
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Time generator forward passes instead of training steps
    #[arg(long)]
    pub infer: bool,
    /// Seed of the parameters and the synthetic data
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the results as JSON (the median step time is `step_seconds_median`)
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BenchArgs) -> miette::Result<ExitCode> {
    let options =
        BenchOptions { steps: args.steps, warmup: args.warmup, infer: args.infer, seed: args.seed };
    // The options and the model are checked before the device is opened and probed.
    let parsed = parse(&args.model.file, &args.model.set, &options).map_err(miette::Report::new)?;
    netc::runtime::affinity::check_setting().map_err(miette::Report::new)?;
    let gpu = Gpu::open(args.device.adapter.as_deref()).map_err(miette::Report::new)?;
    gpu.pin_driver_threads().map_err(miette::Report::new)?;
    let report = bench_parsed(&gpu, &parsed, &options).map_err(miette::Report::new)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| miette::miette!("failed to write the report as JSON: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn render(report: &BenchReport) -> String {
    let what = if report.mode == "infer" { "generator forward pass" } else { "training step" };
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut out = String::new();
    out += &format!("{} on {} ({})\n", report.model, report.adapter, report.backend);
    let settings: Vec<String> = report.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out += &format!("  settings: {}\n", settings.join(" "));
    let operands = match (report.texture_operands, report.load_rates) {
        (on, Some(rates)) => format!(
            "{} (texel fetches ran {:.2}x as fast as storage loads in the median of \
             back-to-back pairs, {:.0}x needed; fastest single runs: textures {:.1} GB/s, \
             storage {:.1} GB/s)",
            if on { "textures" } else { "storage buffers" },
            rates.texture_speedup,
            netc::runtime::probe::TEXTURE_ADVANTAGE,
            rates.texture,
            rates.storage
        ),
        (true, None) => "textures (set by NETC_TEXTURE_OPERANDS)".to_string(),
        (false, None) => "storage buffers".to_string(),
    };
    out += &format!("  operands: {operands}\n");
    out += &format!("  compile (parse to pipelines ready): {:.3} s\n", report.compile_seconds);
    if let Some(first) = report.warmup_seconds.first() {
        out += &format!(
            "  first {what} (with the driver's deferred shader compilation, if any): {first:.3} s\n"
        );
    }
    out += &format!(
        "  {what}: median {:.4} s, min {:.4} s, max {:.4} s over {} runs\n",
        report.step_seconds_median, report.step_seconds_min, report.step_seconds_max, report.steps
    );
    out += &format!(
        "  work: {:.2} GFLOP per run, {:.2} GFLOP/s at the median\n",
        report.flops_per_step as f64 / 1e9,
        report.gflops_per_second
    );
    out += &format!("  dispatches per run: {}\n", report.dispatches_per_step);
    out += &format!(
        "  device memory: {:.1} MiB (parameter store {:.1}, intermediates {:.1}, pinned {:.1})\n",
        mib(report.peak_device_bytes),
        mib(report.parameter_bytes),
        mib(report.intermediate_bytes),
        mib(report.pinned_bytes)
    );

    let mut rows: Vec<_> = report.kernels.iter().collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let copies: f64 = rows.iter().map(|r| r.copy_seconds).sum();
    out += &format!(
        "\n  per kernel ({}, median of {} runs): kernels {:.4} s, texture copies and pass \
         changes {:.4} s\n",
        report.kernel_timing, report.kernel_timing_runs, total, copies
    );
    out += &format!("  slowest {} of {}:\n", KERNEL_ROWS.min(rows.len()), rows.len());
    // The layer column is as wide as the longest name it shows.
    let width = rows.iter().take(KERNEL_ROWS).map(|r| r.layer.len()).max().unwrap_or(0).max(5);
    out += &format!(
        "  {:<width$} {:<26} {:>9} {:>9} {:>9} {:>8} {:>10}\n",
        "layer", "kernel", "ms", "copy ms", "MFLOP", "GFLOP/s", "MiB bound"
    );
    for row in rows.iter().take(KERNEL_ROWS) {
        out += &format!(
            "  {:<width$} {:<26} {:>9.3} {:>9.3} {:>9.1} {:>8.2} {:>10.2}\n",
            row.layer,
            row.kernel,
            row.seconds * 1e3,
            row.copy_seconds * 1e3,
            row.flops as f64 / 1e6,
            row.gflops_per_second,
            mib(row.bytes_bound)
        );
    }
    out
}
