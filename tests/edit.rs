//! The edit loop: `netc diff` on pairs of models under `tests/edit/diff/`, the file
//! watcher and `netc check --watch` on files that a test rewrites.

mod diff {
    use netc::edit::diff::{diff, render, ModuleDiff};
    use netc::edit::train_diff::{ExprChange, StepChange, TrainDiff};
    use netc::frontend::compile_file;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/edit/diff").join(name)
    }

    /// Renders the diff from `unet.net` to `name` with `set` applied to both.
    fn diff_against_base(name: &str, set: &[&str]) -> String {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let old = compile_file(&fixture("unet.net"), &set).expect("unet.net compiles");
        let new = compile_file(&fixture(name), &set)
            .unwrap_or_else(|e| panic!("{name} compiles: {}", e.render_plain()));
        render(&diff(&old, &new))
    }

    #[test]
    fn widened_decoder_layer() {
        insta::assert_snapshot!(diff_against_base("widened.net", &[]));
    }

    #[test]
    fn renamed_encoder_layer() {
        insta::assert_snapshot!(diff_against_base("renamed.net", &[]));
    }

    #[test]
    fn changed_ops_and_settings() {
        insta::assert_snapshot!(diff_against_base("ops.net", &[]));
    }

    #[test]
    fn changed_param_default() {
        insta::assert_snapshot!(diff_against_base("wider_default.net", &[]));
    }

    #[test]
    fn added_network() {
        insta::assert_snapshot!(diff_against_base("second_net.net", &[]));
    }

    #[test]
    fn comments_only_is_unchanged() {
        let text = diff_against_base("comments.net", &[]);
        assert!(text.starts_with("no architecture or training change\n"), "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn set_applies_to_both() {
        // With ch=8 on both sides only the widened layer differs, at the larger width.
        insta::assert_snapshot!(diff_against_base("widened.net", &["ch=8"]));
    }

    /// Compiles two fixtures of this folder and returns their diff.
    fn diff_pair(old: &str, new: &str) -> ModuleDiff {
        let compile = |name: &str| {
            compile_file(&fixture(name), &[])
                .unwrap_or_else(|e| panic!("{name} compiles: {}", e.render_plain()))
        };
        diff(&compile(old), &compile(new))
    }

    #[test]
    fn train_settings_terms_and_values() {
        let result = diff_pair("gan.net", "gan_retrained.net");
        assert!(result.nets.iter().all(|n| n.is_unchanged()), "only the train section changed");
        let Some(TrainDiff::Changed { settings, values, order, steps }) = &result.train else {
            panic!("the train section changed: {:?}", result.train);
        };
        let names: Vec<&str> = settings.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["data", "schedule", "epochs"]);
        assert_eq!(settings[0].detail, "resize 19 -> 20, flip true -> false");
        assert_eq!(values.len(), 1);
        assert!(matches!(&values[0], ExprChange::Added { name, .. } if name == "real_pair"));
        assert!(order.is_none());
        let StepChange::Changed { name, optimizer, terms } = &steps[1] else {
            panic!("the generator step changed: {steps:?}");
        };
        assert_eq!(name, "generator");
        assert_eq!(optimizer.as_ref().map(|o| o.detail.as_str()), Some("beta2 0.999 -> 0.99"));
        let weight = ExprChange::Weight { name: "g_l1".into(), old: 100.0, new: 10.0 };
        assert_eq!(terms[0], weight);
        insta::assert_snapshot!(render(&result));
    }

    #[test]
    fn train_steps_added_and_reordered() {
        let result = diff_pair("gan.net", "gan_steps.net");
        let Some(TrainDiff::Changed { order, steps, .. }) = &result.train else {
            panic!("the train section changed: {:?}", result.train);
        };
        let (old, new) = order.as_ref().expect("the steps run in another order");
        assert_eq!(old, &["discriminator", "generator"]);
        assert_eq!(new, &["generator", "discriminator"]);
        assert!(matches!(&steps[1], StepChange::Added { name, .. } if name == "refiner"));
        insta::assert_snapshot!(render(&result));

        let back = diff_pair("gan_steps.net", "gan.net");
        let Some(TrainDiff::Changed { steps, .. }) = &back.train else {
            panic!("the train section changed: {:?}", back.train);
        };
        assert!(steps
            .iter()
            .any(|s| matches!(s, StepChange::Removed { name, .. } if name == "refiner")));
    }

    #[test]
    fn train_same_graph_is_unchanged() {
        // A param in place of the weight, the factor after the loss and 0.0002 for 2e-4.
        let result = diff_pair("gan.net", "gan_same_graph.net");
        assert_eq!(result.train, None);
    }

    #[test]
    fn train_repeated_step_matched_by_occurrence() {
        let text = std::fs::read_to_string(fixture("gan.net")).unwrap();
        let twice = format!(
            "{}    step generator: adam(lr=1e-4) minimize g_again: l1(fake, target)\n}}\n",
            text.trim_end().trim_end_matches('}')
        );
        let compile = |name: &str, text: &str| {
            netc::frontend::compile_source(name, text, &[])
                .unwrap_or_else(|e| panic!("{name} compiles: {}", e.render_plain()))
        };
        let result = diff(&compile("gan.net", &text), &compile("twice.net", &twice));
        let Some(TrainDiff::Changed { order, steps, .. }) = &result.train else {
            panic!("a step was added: {:?}", result.train);
        };
        assert!(order.is_none(), "the steps both versions have keep their order: {order:?}");
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!(
            matches!(&steps[0], StepChange::Added { name, .. } if name == "generator #2"),
            "{steps:?}"
        );
    }

    #[test]
    fn train_section_added_and_removed() {
        let added = diff_pair("unet.net", "gan.net");
        let Some(TrainDiff::Added { steps }) = &added.train else {
            panic!("the train section is new: {:?}", added.train);
        };
        assert_eq!(steps.len(), 2);
        let text = render(&added);
        assert!(text.contains("train: added"), "{text}");
        assert!(text.contains("g_l1   100 * l1(fake, target)"), "{text}");
        assert!(text.contains("bce_logits(discriminator(input, stop_gradient(fake)), 0)"));
        insta::assert_snapshot!(text);

        let removed = diff_pair("gan.net", "unet.net");
        assert_eq!(removed.train, Some(TrainDiff::Removed));
        assert!(render(&removed).contains("train: removed"));
    }

    #[test]
    fn parameter_counts_match_check() {
        let old = compile_file(&fixture("unet.net"), &[]).expect("unet.net compiles");
        let new = compile_file(&fixture("widened.net"), &[]).expect("widened.net compiles");
        let result = diff(&old, &new);
        let net = &result.nets[0];
        assert_eq!(net.old_params, Some(old.trainable_count("generator")));
        assert_eq!(net.new_params, Some(new.trainable_count("generator")));
        assert_ne!(net.old_params, net.new_params);
    }

    #[test]
    fn broken_new_file_is_rendered() {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
            .arg("diff")
            .arg(fixture("unet.net"))
            .arg(fixture("broken.net"))
            .env("NO_COLOR", "1")
            .output()
            .expect("netc runs");
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert!(!status.status.success());
        assert!(stderr.contains("unknown argument `strid` for conv2d"), "{stderr}");
        assert!(stderr.contains("did you mean `stride`?"), "{stderr}");
        assert!(status.stdout.is_empty());
    }
}

mod watch {
    use netc::edit::watch::FileWatcher;
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc::{self, Receiver};
    use std::time::{Duration, Instant};

    /// Long enough for a debug build on a loaded machine; a watch that misses an edit
    /// fails the test after this instead of hanging.
    const PATIENCE: Duration = Duration::from_secs(20);

    fn fixture_text(name: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/edit/diff").join(name);
        std::fs::read_to_string(path).expect("the fixture is readable")
    }

    /// Saves the way many editors do: write a temporary file, then rename it over.
    fn save_by_rename(path: &Path, text: &str) {
        let temporary = path.with_extension("net.swp");
        std::fs::write(&temporary, text).expect("the temporary file is writable");
        std::fs::rename(&temporary, path).expect("the rename succeeds");
    }

    #[test]
    fn watcher_sees_rename_over_save() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("model.net");
        std::fs::write(&path, "first").expect("writable");
        let watcher = FileWatcher::new(&path).expect("the watch starts");

        save_by_rename(&path, "second");
        assert!(watcher.wait_for_change(Some(PATIENCE)).expect("events"), "first save");
        // After the rename the file is a new inode; a second save must still be seen.
        save_by_rename(&path, "third");
        assert!(watcher.wait_for_change(Some(PATIENCE)).expect("events"), "second save");
        std::fs::write(&path, "in place").expect("writable");
        assert!(watcher.wait_for_change(Some(PATIENCE)).expect("events"), "in-place write");
    }

    #[test]
    fn watcher_ignores_reads_and_neighbours() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("model.net");
        std::fs::write(&path, "text").expect("writable");
        let watcher = FileWatcher::new(&path).expect("the watch starts");

        std::fs::read(&path).expect("readable");
        std::fs::write(folder.path().join("other.net"), "x").expect("writable");
        let changed = watcher.wait_for_change(Some(Duration::from_millis(500))).expect("events");
        assert!(!changed, "a read and another file's write are not changes");
    }

    #[test]
    fn watcher_rejects_folder_and_missing_parent() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let error = FileWatcher::new(folder.path()).err().expect("a folder is rejected");
        assert!(error.to_string().contains("it is a folder"), "{error}");
        let missing = folder.path().join("gone/model.net");
        let error = FileWatcher::new(&missing).err().expect("a missing folder is rejected");
        assert!(error.to_string().contains("cannot watch"), "{error}");
    }

    #[test]
    fn watcher_sees_delete_and_recreate() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("model.net");
        let watcher = FileWatcher::new(&path).expect("the file need not exist");
        std::fs::write(&path, "created").expect("writable");
        assert!(watcher.wait_for_change(Some(PATIENCE)).expect("events"), "creation");
        std::fs::remove_file(&path).expect("removable");
        assert!(watcher.wait_for_change(Some(PATIENCE)).expect("events"), "removal");
    }

    /// Kills the watch process when the test ends, passed or failed.
    struct Watch {
        child: Child,
        lines: Receiver<String>,
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Watch {
        fn start(path: &Path) -> Watch {
            let mut child = Command::new(env!("CARGO_BIN_EXE_netc"))
                .args(["check", "--watch"])
                .arg(path)
                .env("NO_COLOR", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("netc starts");
            let (sender, lines) = mpsc::channel();
            for stream in [
                Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
                Box::new(child.stderr.take().expect("piped")),
            ] {
                let sender = sender.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        let _ = sender.send(line);
                    }
                });
            }
            Watch { child, lines }
        }

        /// Collects output lines until one contains `needle`; returns them all.
        fn wait_for(&self, needle: &str) -> Vec<String> {
            let deadline = Instant::now() + PATIENCE;
            let mut seen = Vec::new();
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match self.lines.recv_timeout(left) {
                    Ok(line) => {
                        let found = line.contains(needle);
                        seen.push(line);
                        if found {
                            return seen;
                        }
                    }
                    Err(_) => break,
                }
            }
            panic!(
                "no line containing {needle:?} within {PATIENCE:?}; output:\n{}",
                seen.join("\n")
            );
        }

        /// Collects what the watch prints after `needle` until it has been quiet for a
        /// moment, which is the rest of one check's output.
        fn rest(&self) -> Vec<String> {
            let mut seen = Vec::new();
            while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(300)) {
                seen.push(line);
            }
            seen
        }
    }

    #[test]
    fn check_watch_reprints_after_edits() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("model.net");
        std::fs::write(&path, fixture_text("unet.net")).expect("writable");
        let watch = Watch::start(&path);

        watch.wait_for("check 1:");
        let first = watch.rest().join("\n");
        assert!(first.contains("trainable parameters: 1,624"), "{first}");

        // Widen d2 and save by rename: the table shows the new count.
        let saved = Instant::now();
        save_by_rename(&path, &fixture_text("widened.net"));
        let header = watch.wait_for("check 2:");
        let latency = saved.elapsed();
        assert!(header.last().is_some_and(|l| l.contains("is valid")), "{header:?}");
        let second = watch.rest().join("\n");
        assert!(second.contains("trainable parameters: 2,336"), "{second}");
        eprintln!("rename-over-save to reprinted table: {latency:?}");

        // A broken save prints the diagnostic and the watch goes on.
        std::fs::write(&path, fixture_text("broken.net")).expect("writable");
        let mut third = watch.wait_for("check 3:");
        assert!(third.last().is_some_and(|l| l.contains("has 1 error")), "{third:?}");
        // Diagnostics go to standard error, whose lines may arrive before the header's.
        third.extend(watch.rest());
        let third = third.join("\n");
        assert!(third.contains("unknown argument `strid` for conv2d"), "{third}");

        // Fixing it again brings the table back.
        save_by_rename(&path, &fixture_text("unet.net"));
        watch.wait_for("check 4:");
        let fourth = watch.rest().join("\n");
        assert!(fourth.contains("trainable parameters: 1,624"), "{fourth}");
    }

    #[test]
    fn check_watch_waits_for_missing_file() {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let path = folder.path().join("later.net");
        let watch = Watch::start(&path);
        watch.wait_for("is missing; waiting for it to be saved");
        std::fs::write(&path, fixture_text("unet.net")).expect("writable");
        watch.wait_for("check 1:");
        let table = watch.rest().join("\n");
        assert!(table.contains("trainable parameters: 1,624"), "{table}");
    }
}

/// The compiled-kernel cache on the device: a recompile after a one-layer edit creates
/// pipelines only for the kernels whose WGSL changed, and the reused pipelines compute
/// the same values as the CPU reference.
mod cache {
    use netc::codegen::wgsl::RunValues;
    use netc::codegen::{lower_graph, Kernel, Mode};
    use netc::frontend::compile_file;
    use netc::ir::Module;
    use netc::reference::{self, Tensor};
    use netc::runtime::{initial_values, kernel_key, Gpu, ParamStore, Program};
    use std::collections::{HashMap, HashSet};
    use std::path::PathBuf;

    fn module(name: &str) -> Module {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/edit/diff").join(name);
        compile_file(&path, &[]).expect("the fixture compiles")
    }

    struct Compiled {
        program: Program,
        store: ParamStore,
        kernels: Vec<Kernel>,
    }

    fn compile(gpu: &Gpu, module: &Module) -> Compiled {
        let net = &module.nets[0];
        let kernels = lower_graph(&net.graph, &gpu.target(), Mode::Train).expect("lowers");
        let store = ParamStore::initialized(gpu, module, 3).expect("parameters");
        let output = net.graph.output("output").expect("the net has an output");
        let outputs = vec![("output".to_string(), output)];
        let program = Program::compile(gpu, &net.graph, Mode::Train, &kernels, &store, &outputs)
            .expect("the program compiles");
        Compiled { program, store, kernels }
    }

    fn keys(kernels: &[Kernel]) -> HashSet<[u8; 32]> {
        kernels.iter().map(kernel_key).collect()
    }

    /// Keys of the kernels of layer `layer`.
    fn layer_keys(kernels: &[Kernel], layer: &str) -> HashSet<[u8; 32]> {
        let prefix = format!("generator.{layer}.");
        kernels.iter().filter(|k| k.name.starts_with(&prefix)).map(kernel_key).collect()
    }

    #[test]
    fn one_layer_edit_reuses_untouched_kernels() {
        // A device of its own, so no other test's pipelines are in its cache.
        let gpu = Gpu::open(None).expect("the cache test needs a wgpu adapter");
        let base = module("unet.net");
        let widened = module("widened.net");

        let first = compile(&gpu, &base);
        let first_keys = keys(&first.kernels);
        assert_eq!(first.program.shader_counts().reused, 0);
        assert_eq!(first.program.shader_counts().compiled, first_keys.len());
        assert_eq!(gpu.kernels.len(), first_keys.len());

        // Widening d2 changes the kernels of d2 and of d1, which reads it; e1 and e2 keep
        // their WGSL and so their pipelines.
        let second = compile(&gpu, &widened);
        let second_keys = keys(&second.kernels);
        let reused_keys: HashSet<_> = first_keys.intersection(&second_keys).copied().collect();
        let counts = second.program.shader_counts();
        assert_eq!(counts.reused, reused_keys.len());
        assert_eq!(counts.compiled, second_keys.len() - reused_keys.len());
        for layer in ["e1", "e2"] {
            let untouched = layer_keys(&second.kernels, layer);
            assert!(!untouched.is_empty(), "layer {layer} has kernels");
            assert!(untouched.is_subset(&reused_keys), "every kernel of {layer} is reused");
        }
        assert!(!layer_keys(&second.kernels, "d2").is_subset(&reused_keys), "d2 is compiled again");
        assert!(counts.compiled > 0);
        assert_eq!(gpu.kernels.len(), first_keys.union(&second_keys).count());

        // Going back to the first version compiles nothing.
        let third = compile(&gpu, &base);
        assert_eq!(third.program.shader_counts().compiled, 0);
        assert_eq!(third.program.shader_counts().reused, first_keys.len());

        check_against_reference(&gpu, &widened, &second);
    }

    #[test]
    fn same_window_layers_share_pipelines() {
        // The sizes of a convolution come from a uniform block, so pix2pix's encoder
        // convolutions, all 4x4 with stride 2, need fewer pipelines than layers. Each layer
        // still binds its own sizes. The U-Net forward tests check a program whose layers
        // share pipelines this way against the CPU reference.
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/pix2pix.net");
        let module = compile_file(&path, &[]).expect("pix2pix compiles");
        let gpu = Gpu::open(None).expect("the pipeline test needs a wgpu adapter");
        let net = &module.nets[0];
        let kernels = lower_graph(&net.graph, &gpu.target(), Mode::Train).expect("lowers");
        let convs: Vec<&Kernel> =
            kernels.iter().filter(|k| k.name.ends_with(".conv.conv2d")).collect();
        let distinct: HashSet<[u8; 32]> = convs.iter().map(|k| kernel_key(k)).collect();
        assert_eq!(convs.len(), 8, "e1..e8");
        // e1 reads the image, the others fuse a leaky ReLU into their loads, and on a CPU
        // adapter the larger layers get larger tiles, so several groups remain.
        assert!(distinct.len() <= 5, "{} pipelines for 8 encoder layers", distinct.len());
        for kernel in &convs {
            assert!(!kernel.shape.is_empty(), "{} has a shape block", kernel.name);
        }
    }

    /// Runs the program built from reused pipelines and compares it with the reference.
    fn check_against_reference(gpu: &Gpu, module: &Module, compiled: &Compiled) {
        let net = &module.nets[0];
        let input = &net.inputs[0];
        let count = input.shape.numel();
        // Odd, uneven values, so a wrong binding or stride shows.
        let values: Vec<f32> = (0..count).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        compiled.program.write_input(gpu, &input.name, &values).expect("input upload");
        let run = RunValues::default();
        let device = compiled.program.run(gpu, &run, &["output"]).expect("runs").remove(0);
        assert_eq!(compiled.store.len(), module.params.len());

        let mut params: Vec<Option<Tensor>> = module
            .params
            .iter()
            .map(|p| {
                let data = initial_values(p, 3).expect("initial values");
                Some(Tensor::new(p.shape.dims().to_vec(), data))
            })
            .collect();
        let inputs =
            HashMap::from([(input.name.clone(), Tensor::new(input.shape.dims().to_vec(), values))]);
        let output = net.graph.output("output").expect("output");
        let all = reference::evaluate(&net.graph, &inputs, &mut params, Mode::Train, &run)
            .expect("the reference evaluates");
        let want = all[output.index()].clone().expect("output evaluated").data;
        assert_eq!(device.len(), want.len());
        let worst = device.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "largest difference from the reference: {worst}");
    }
}

/// `--init-from` and resume after an edit through the run driver, checkpoint files
/// included: train the base model, widen d2 and rename e3, start from the checkpoint.
///
/// NOTE: the engine here is a CPU stand-in for the device trainer. Its step moves every
/// trainable parameter and moment by a deterministic amount, which is all this test
/// needs: trained values that differ from fresh ones, so a copy shows bit for bit.
mod init_from {
    use image::{Rgb, RgbImage};
    use netc::edit::restore::restore_matching;
    use netc::edit::transfer::{Reinit, TransferError};
    use netc::frontend::compile_file;
    use netc::ir::{Module, ParamKind, Shape};
    use netc::runtime::initial_values;
    use netc::train::checkpoint::{self, Tensor};
    use netc::train::data::Batch;
    use netc::train::run::{train, Engine, RunError, RunOptions};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    const SEED: u64 = 5;

    fn module(name: &str) -> Module {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/edit/transfer").join(name);
        compile_file(&path, &[]).unwrap_or_else(|e| panic!("{name}: {}", e.render_plain()))
    }

    /// Every parameter and buffer of a module, with Adam moments for the trainable ones.
    struct StandIn {
        weights: Vec<Tensor>,
        moments: Vec<Tensor>,
    }

    impl StandIn {
        fn new(module: &Module) -> StandIn {
            let mut weights = Vec::new();
            let mut moments = Vec::new();
            for decl in &module.params {
                let data = initial_values(decl, SEED).expect("initial values");
                let shape = decl.shape.clone();
                weights.push(Tensor { name: decl.name.clone(), shape: shape.clone(), data });
                if decl.kind == ParamKind::Trainable {
                    for moment in ["adam_m", "adam_v"] {
                        let data = vec![0.0; shape.numel()];
                        let name = format!("{}.{moment}", decl.name);
                        moments.push(Tensor { name, shape: shape.clone(), data });
                    }
                }
            }
            StandIn { weights, moments }
        }
    }

    impl Engine for StandIn {
        fn loss_names(&self) -> Vec<String> {
            vec!["l1".into()]
        }

        fn learning_rates(&self, _epoch: usize) -> BTreeMap<String, f32> {
            BTreeMap::from([("generator".into(), 2e-4)])
        }

        fn step(&mut self, step: u64, _epoch: usize, _batch: &Batch) -> Result<Vec<f32>, String> {
            for (w, tensor) in self.weights.iter_mut().enumerate() {
                for (i, value) in tensor.data.iter_mut().enumerate() {
                    *value += ((i + w) as f32 + step as f32).sin() * 1e-3;
                }
            }
            for moment in &mut self.moments {
                for (i, value) in moment.data.iter_mut().enumerate() {
                    *value = 0.5 * *value + (i as f32 * 0.37 + step as f32).cos();
                }
            }
            Ok(vec![1.0 / (step + 1) as f32])
        }

        fn generate(&mut self, batch: &Batch) -> Result<(usize, Vec<f32>), String> {
            Ok((3, batch.input.clone()))
        }

        fn tensors(&mut self) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
            Ok((self.weights.clone(), self.moments.clone()))
        }

        fn tensor_shapes(&self) -> (Vec<(String, Shape)>, Vec<(String, Shape)>) {
            let shapes =
                |list: &[Tensor]| list.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
            (shapes(&self.weights), shapes(&self.moments))
        }

        fn restore(&mut self, weights: &[Tensor], moments: &[Tensor]) -> Result<(), String> {
            self.weights = weights.to_vec();
            self.moments = moments.to_vec();
            Ok(())
        }

        fn rng_state(&self) -> serde_json::Value {
            serde_json::Value::Null
        }

        fn restore_rng(&mut self, _state: &serde_json::Value) -> Result<(), String> {
            Ok(())
        }
    }

    /// Writes three 32x16 paired images under `root/pairs/train/`.
    fn data_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("a temporary folder");
        let dir = root.path().join("pairs/train");
        std::fs::create_dir_all(&dir).expect("writable");
        for i in 0..3u32 {
            let image =
                RgbImage::from_fn(32, 16, |x, y| Rgb([(x * 7 + i) as u8, (y * 9) as u8, 90]));
            image.save(dir.join(format!("{i}.png"))).expect("the image saves");
        }
        root
    }

    fn options(data: &Path, out: &Path, steps: u64, source: &str) -> RunOptions {
        RunOptions {
            source: source.into(),
            dataset: "pairs".into(),
            data: Some(data.to_path_buf()),
            steps: Some(steps),
            seed: SEED,
            out: Some(out.to_path_buf()),
            quiet: true,
            ..RunOptions::default()
        }
    }

    fn tensor<'a>(list: &'a [Tensor], name: &str) -> Option<&'a Tensor> {
        list.iter().find(|t| t.name == name)
    }

    fn bits(tensor: &Tensor) -> Vec<u32> {
        tensor.data.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn unchanged_layers_start_trained() {
        let data = data_root();
        let runs = tempfile::tempdir().expect("a temporary folder");
        let (trained_run, edited_run) = (runs.path().join("base"), runs.path().join("edited"));
        let (base, edited) = (module("base.net"), module("edited.net"));
        train(&base, &mut StandIn::new(&base), &options(data.path(), &trained_run, 3, "base"))
            .expect("the base model trains");
        let trained = checkpoint::load(&trained_run).expect("the base run has a checkpoint");

        // Zero steps: the checkpoint of the new run contains exactly the starting values.
        let start = RunOptions {
            init_from: Some(trained_run.clone()),
            ..options(data.path(), &edited_run, 0, "edited")
        };
        train(&edited, &mut StandIn::new(&edited), &start).expect("--init-from starts");
        let started = checkpoint::load(&edited_run).expect("the new run has a checkpoint");

        let fresh = StandIn::new(&edited);
        let mut copied = 0;
        assert_eq!(started.weights.len(), fresh.weights.len());
        for now in &started.weights {
            let new = tensor(&fresh.weights, &now.name).expect("the edited model has it");
            match tensor(&trained.weights, &now.name).filter(|t| t.shape == now.shape) {
                Some(before) => {
                    assert!(bits(now) == bits(before), "{} starts trained", now.name);
                    assert!(bits(now) != bits(new), "{} moved in training", now.name);
                    copied += 1;
                }
                None => assert!(bits(now) == bits(new), "{} starts fresh", now.name),
            }
        }
        // e1, e2, d3: conv or conv_transpose weight, scale, offset and two statistics,
        // except e1, which has no batch norm.
        assert_eq!(copied, 1 + 5 + 5);

        for now in &started.moments {
            let before = tensor(&trained.moments, &now.name);
            let owner = now.name.rsplit_once('.').map(|(owner, _)| owner).expect("dotted");
            let reshaped = tensor(&trained.weights, owner)
                .zip(tensor(&started.weights, owner))
                .is_some_and(|(a, b)| a.shape != b.shape);
            match before.filter(|_| !reshaped) {
                Some(before) => assert!(bits(now) == bits(before), "{} transferred", now.name),
                None => assert!(now.data.iter().all(|&v| v == 0.0), "{} starts at zero", now.name),
            }
        }
    }

    #[test]
    fn renamed_layer_is_dropped_and_reinitialised() {
        let data = data_root();
        let runs = tempfile::tempdir().expect("a temporary folder");
        let run = runs.path().join("base");
        let (base, edited) = (module("base.net"), module("edited.net"));
        train(&base, &mut StandIn::new(&base), &options(data.path(), &run, 2, "base"))
            .expect("the base model trains");
        let saved = checkpoint::load(&run).expect("checkpoint");

        let report = restore_matching(&edited, &mut StandIn::new(&edited), saved, false)
            .expect("the transfer succeeds");
        let dropped: Vec<&str> = report.dropped.iter().map(|d| d.name.as_str()).collect();
        for name in ["generator.e3.conv.weight", "generator.e3.norm.scale"] {
            assert!(dropped.contains(&name), "{name} is dropped: {dropped:?}");
        }
        let renamed = report
            .reinitialized
            .iter()
            .find(|r| r.name == "generator.bottom.conv.weight")
            .expect("bottom is re-initialised");
        assert_eq!(renamed.reason, Reinit::NotInCheckpoint);
        let widened = report
            .reinitialized
            .iter()
            .find(|r| r.name == "generator.d2.conv_transpose.weight")
            .expect("d2 is re-initialised");
        assert_eq!(widened.reason, Reinit::Reshaped { saved: Shape::new([16, 4, 4, 4]) });
        let text = report.render();
        assert!(
            text.contains(
                "dropped         generator.e3.conv.weight [8, 8, 4, 4]: not in the model"
            ),
            "{text}"
        );
    }

    #[test]
    fn unrelated_checkpoint_needs_force() {
        let data = data_root();
        let runs = tempfile::tempdir().expect("a temporary folder");
        let run = runs.path().join("base");
        let base = module("base.net");
        train(&base, &mut StandIn::new(&base), &options(data.path(), &run, 1, "base"))
            .expect("the base model trains");

        // The same shapes under other network names: nothing matches by name.
        let source = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/edit/transfer/base.net"),
        )
        .expect("readable");
        let renamed = source.replace("generator", "painter");
        let other = netc::frontend::compile_source("other.net", &renamed, &[]).expect("compiles");
        let start = |force| RunOptions {
            init_from: Some(run.clone()),
            force,
            ..options(data.path(), &runs.path().join(format!("other-{force}")), 0, &renamed)
        };
        let error = train(&other, &mut StandIn::new(&other), &start(false)).expect_err("rejected");
        assert!(
            matches!(
                error,
                RunError::Transfer(TransferError::NothingMatches { checkpoint: 22, .. })
            ),
            "{error:?}"
        );
        train(&other, &mut StandIn::new(&other), &start(true)).expect("--force accepts it");
    }

    #[test]
    fn resume_after_edit_continues_the_run() {
        let data = data_root();
        let runs = tempfile::tempdir().expect("a temporary folder");
        let run = runs.path().join("base");
        let (base, edited) = (module("base.net"), module("edited.net"));
        train(&base, &mut StandIn::new(&base), &options(data.path(), &run, 2, "base"))
            .expect("the base model trains");
        let before = checkpoint::load(&run).expect("checkpoint");

        let resume =
            RunOptions { resume: Some(run.clone()), ..options(data.path(), &run, 2, "edited") };
        let summary = train(&edited, &mut StandIn::new(&edited), &resume).expect("resumes");
        assert_eq!(summary.first_step, 2);
        assert_eq!(summary.steps, 0);

        let resume =
            RunOptions { resume: Some(run.clone()), ..options(data.path(), &run, 3, "edited") };
        let summary = train(&edited, &mut StandIn::new(&edited), &resume).expect("resumes");
        assert_eq!(summary.first_step, 2);
        assert_eq!(summary.steps, 1);
        let after = checkpoint::load(&run).expect("checkpoint");
        assert_eq!(after.record.step, 3);
        assert_eq!(after.record.model.source, "edited");
        let e1 = "generator.e1.conv.weight";
        let (a, b) = (tensor(&before.weights, e1), tensor(&after.weights, e1));
        assert_eq!(a.map(|t| &t.shape), b.map(|t| &t.shape));
        assert!(tensor(&after.weights, "generator.bottom.conv.weight").is_some());
    }
}

/// Weight transfer between two device trainers: train the base model on lavapipe, widen
/// d2 and rename e3, and start the edited model from the trained tensors.
mod trainer_transfer {
    use netc::edit::restore::merge_matching;
    use netc::edit::transfer::Reinit;
    use netc::frontend::compile_file;
    use netc::ir::{Module, ParamKind};
    use netc::runtime::Gpu;
    use netc::train::checkpoint::Tensor;
    use netc::train::{NamedTensor, Trainer};
    use std::path::PathBuf;

    fn module(name: &str) -> Module {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/edit/transfer").join(name);
        compile_file(&path, &[]).expect("the fixture compiles")
    }

    /// Splits a trainer's tensors into the module's parameters and buffers, and the
    /// optimizer state.
    fn split(trainer: &Trainer, module: &Module) -> (Vec<Tensor>, Vec<Tensor>) {
        let all = trainer.tensors().expect("the tensors read back");
        let convert = |t: NamedTensor| Tensor { name: t.name, shape: t.shape, data: t.data };
        let (weights, moments): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|t| module.param_id(&t.name).is_some());
        (weights.into_iter().map(convert).collect(), moments.into_iter().map(convert).collect())
    }

    fn find<'a>(list: &'a [Tensor], name: &str) -> Option<&'a Tensor> {
        list.iter().find(|t| t.name == name)
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.data.iter().map(|v| v.to_bits()).collect()
    }

    /// Returns an uneven batch of `[1, 3, 16, 16]` values in [-1, 1].
    fn batch(offset: usize) -> (Vec<f32>, Vec<f32>) {
        let value = |i: usize, k: usize| ((i * k + offset) % 199) as f32 / 99.0 - 1.0;
        ((0..768).map(|i| value(i, 31)).collect(), (0..768).map(|i| value(i, 17)).collect())
    }

    #[test]
    fn edited_trainer_starts_from_trained_tensors() {
        let gpu = Gpu::open(None).expect("the transfer test needs a wgpu adapter");
        let (base, edited) = (module("base.net"), module("edited.net"));

        // Train the base model for three iterations.
        let mut trainer = Trainer::new(&gpu, &base, 5).expect("the base trainer compiles");
        for i in 0..3 {
            let (input, target) = batch(i);
            trainer.step(&input, &target).expect("the iteration runs");
        }
        let trained = split(&trainer, &base);

        // Start the edited model from them.
        let mut next = Trainer::new(&gpu, &edited, 5).expect("the edited trainer compiles");
        let fresh = split(&next, &edited);
        let merged = merge_matching(&edited, fresh.clone(), trained.clone(), false)
            .expect("the transfer succeeds");
        let all: Vec<NamedTensor> = merged
            .weights
            .iter()
            .chain(&merged.moments)
            .map(|t| NamedTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
            .collect();
        next.set_tensors(&all).expect("the tensors upload");
        let started = split(&next, &edited);

        // Every parameter and buffer whose name and shape match starts trained, bit for bit.
        let mut copied = Vec::new();
        for now in &started.0 {
            let new = find(&fresh.0, &now.name).expect("the fresh trainer has it");
            match find(&trained.0, &now.name).filter(|t| t.shape == now.shape) {
                Some(before) => {
                    assert!(bits(now) == bits(before), "{} starts trained", now.name);
                    let trainable = edited.param_id(&now.name).map(|id| edited.params[id].kind)
                        == Some(ParamKind::Trainable);
                    if trainable {
                        assert!(bits(now) != bits(new), "{} moved in training", now.name);
                    }
                    copied.push(now.name.clone());
                }
                None => assert!(bits(now) == bits(new), "{} starts fresh", now.name),
            }
        }
        assert!(copied.contains(&"generator.e1.conv.weight".to_string()), "{copied:?}");
        assert!(copied.contains(&"generator.d3.norm.running_var".to_string()), "{copied:?}");
        assert_eq!(copied.len(), 11, "{copied:?}");

        // The optimizer state of a copied parameter comes along; the rest starts at zero.
        for now in &started.1 {
            let owner = copied.iter().find(|name| now.name.contains(&format!(".{name}.")));
            match owner {
                Some(_) => {
                    let before = find(&trained.1, &now.name).expect("the base has this moment");
                    assert!(bits(now) == bits(before), "{} transferred", now.name);
                    assert!(now.data.iter().any(|&v| v != 0.0), "{} is trained state", now.name);
                }
                None => assert!(now.data.iter().all(|&v| v == 0.0), "{} is zero", now.name),
            }
        }
        assert!(merged.moments_copied > 0);

        // The renamed layer is dropped and re-initialised, and the widened one reshaped.
        let report = &merged.report;
        assert!(report.dropped.iter().any(|d| d.name == "generator.e3.conv.weight"));
        let reason = |name: &str| {
            report.reinitialized.iter().find(|r| r.name == name).map(|r| r.reason.clone())
        };
        assert_eq!(reason("generator.bottom.conv.weight"), Some(Reinit::NotInCheckpoint));
        assert!(matches!(
            reason("generator.d2.conv_transpose.weight"),
            Some(Reinit::Reshaped { .. })
        ));

        // The edited model trains from there.
        let (input, target) = batch(7);
        let losses = next.step(&input, &target).expect("the edited model trains");
        assert!(losses.iter().all(|(_, v)| v.is_finite()), "{losses:?}");
    }
}
