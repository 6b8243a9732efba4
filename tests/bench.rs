//! `netc bench` end to end: the JSON report of a small pix2pix on the real device, the
//! forward-pass mode, the texture-operand setting and the errors a user can cause.

use serde_json::Value;
use std::process::{Command, Output};

const SMALL: [&str; 6] = ["--set", "ngf=4", "--set", "ndf=4", "--set", "size=64"];

fn netc(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_netc"));
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("netc starts")
}

/// Runs `netc bench --json` on the small pix2pix with `extra` arguments and returns the
/// parsed report.
fn bench_json(extra: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = vec!["bench", "models/pix2pix.net"];
    args.extend(SMALL);
    args.extend(extra);
    args.push("--json");
    let output = netc(&args, env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "netc bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{stdout}"))
}

fn number(report: &Value, key: &str) -> f64 {
    report[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {}", report[key]))
}

#[test]
fn training_report_covers_every_kernel() {
    let report = bench_json(&["--steps", "3"], &[]);
    assert_eq!(report["mode"], "train");

    let steps: Vec<f64> = report["step_seconds"]
        .as_array()
        .expect("step_seconds is a list")
        .iter()
        .map(|v| v.as_f64().expect("a step time is a number"))
        .collect();
    assert_eq!(steps.len(), 3);
    assert!(steps.iter().all(|&s| s > 0.0), "{steps:?}");
    let (min, median, max) = (
        number(&report, "step_seconds_min"),
        number(&report, "step_seconds_median"),
        number(&report, "step_seconds_max"),
    );
    assert!(min <= median, "min {min} over median {median}");
    assert_eq!(report["kernel_timing_runs"], 3, "each kernel's median of the 3 timed runs");
    assert!(median <= max, "median {median} over max {max}");
    assert!(number(&report, "compile_seconds") > 0.0);

    // One row per dispatch, and the step's FLOPs are the rows' sum.
    let kernels = report["kernels"].as_array().expect("kernels is a list");
    assert_eq!(kernels.len() as f64, number(&report, "dispatches_per_step"));
    let flops: f64 = kernels.iter().map(|k| k["flops"].as_f64().expect("flops")).sum();
    assert_eq!(flops, number(&report, "flops_per_step"));
    assert!(kernels.iter().any(|k| k["kernel"] == "conv2d"));
    assert!(kernels.iter().any(|k| k["layer"] == "optimizer"));

    // Lavapipe and GPUs with timestamp queries time each kernel on the device. Those
    // times add up to about one step, not to far more, as per-submit times would.
    let timing = report["kernel_timing"].as_str().expect("kernel_timing is text");
    let timed: f64 = kernels.iter().map(|k| k["seconds"].as_f64().expect("seconds")).sum();
    assert!(kernels.iter().all(|k| k["seconds"].as_f64().is_some_and(|s| s >= 0.0)));
    if timing.starts_with("timestamp") {
        assert!(timed < 3.0 * max, "kernels summed to {timed} s, steps took at most {max} s");
        let zero = kernels.iter().filter(|k| k["seconds"].as_f64() == Some(0.0)).count();
        assert!(zero * 10 < kernels.len(), "{zero} kernels timed at zero");
    }

    let memory = ["parameter_bytes", "intermediate_bytes", "pinned_bytes"];
    let total: f64 = memory.iter().map(|key| number(&report, key)).sum();
    assert_eq!(total, number(&report, "peak_device_bytes"));
}

#[test]
fn infer_report_times_forward_passes() {
    let report = bench_json(&["--infer", "--steps", "2"], &[]);
    assert_eq!(report["mode"], "infer");
    assert_eq!(report["step_seconds"].as_array().map(Vec::len), Some(2));
    let kernels = report["kernels"].as_array().expect("kernels is a list");
    assert!(!kernels.is_empty());
    assert!(kernels.iter().all(|k| k["layer"] != "optimizer"), "inference has no update");
}

#[test]
fn texture_operands_follow_the_environment() {
    let forced = bench_json(&["--steps", "1"], &[("NETC_TEXTURE_OPERANDS", "on")]);
    assert_eq!(forced["texture_operands"], true);
    assert!(forced["load_rates"].is_null(), "a forced choice measures nothing");

    let off = bench_json(&["--steps", "1"], &[("NETC_TEXTURE_OPERANDS", "off")]);
    assert_eq!(off["texture_operands"], false);
}

#[test]
fn invalid_texture_setting_is_rejected() {
    let mut args = vec!["bench", "models/pix2pix.net", "--steps", "1"];
    args.extend(SMALL);
    let output = netc(&args, &[("NETC_TEXTURE_OPERANDS", "sometimes")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NETC_TEXTURE_OPERANDS"), "{stderr}");
    assert!(stderr.contains("sometimes"), "{stderr}");
    assert!(stderr.contains("auto, on or off"), "{stderr}");
}

#[test]
fn zero_steps_are_rejected() {
    let mut args = vec!["bench", "models/pix2pix.net", "--steps", "0"];
    args.extend(SMALL);
    let output = netc(&args, &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--steps must be at least 1"), "{stderr}");
}

#[test]
fn huge_run_counts_rejected_early() {
    for (flag, value) in [("--steps", "100001"), ("--warmup", "18446744073709551615")] {
        let mut args = vec!["bench", "models/pix2pix.net", flag, value];
        args.extend(SMALL);
        let output = netc(&args, &[("RUST_LOG", "info")]);
        assert_eq!(output.status.code(), Some(1), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("{flag} {value} is more than")), "{stderr}");
        assert!(!stderr.contains("opened device"), "checked after opening the device: {stderr}");
    }
}

#[test]
fn infer_rejects_a_classifier() {
    let args = ["bench", "models/classifier.net", "--infer", "--steps", "1"];
    let output = netc(&args, &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("classifier's output has shape"), "{stderr}");
    assert!(stderr.contains("without --infer"), "{stderr}");
}

#[test]
fn non_utf8_texture_setting_is_rejected() {
    use std::os::unix::ffi::OsStrExt;
    let mut args = vec!["bench", "models/pix2pix.net", "--steps", "1"];
    args.extend(SMALL);
    let output = Command::new(env!("CARGO_BIN_EXE_netc"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(&args)
        .env("NETC_TEXTURE_OPERANDS", std::ffi::OsStr::from_bytes(b"\xff"))
        .output()
        .expect("netc starts");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid NETC_TEXTURE_OPERANDS"), "{stderr}");
}

#[test]
fn pipeline_cache_file_is_checked() {
    let gpu = netc::runtime::Gpu::open(None).expect("the bench tests need a wgpu adapter");
    if !gpu.device.features().contains(wgpu::Features::PIPELINE_CACHE) {
        return;
    }
    drop(gpu);
    let folder = tempfile::tempdir().expect("temporary folder");
    let dir = folder.path().to_str().expect("a UTF-8 temporary path");
    let files = || -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(folder.path()).expect("cache folder");
        entries.map(|e| e.expect("folder entry").path()).collect()
    };
    let verified = |path: &std::path::Path| {
        let bytes = std::fs::read(path).expect("cache file");
        netc::runtime::pipeline_cache::verified_data(&bytes).is_some()
    };

    bench_json(&["--steps", "1"], &[("NETC_CACHE_DIR", dir)]);
    let written = files();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(verified(&written[0]), "the file's digest does not match its data");

    // A corrupt file is ignored with a warning and replaced by a valid one.
    std::fs::write(&written[0], b"netcpc01 not a digest").expect("overwrite the cache");
    let mut args = vec!["bench", "models/pix2pix.net", "--steps", "1"];
    args.extend(SMALL);
    let output = netc(&args, &[("NETC_CACHE_DIR", dir)]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ignored an invalid pipeline cache file"), "{stderr}");
    assert!(verified(&written[0]), "the corrupt file was not replaced");
    assert_eq!(files().len(), 1, "a temporary file was left behind");
}
