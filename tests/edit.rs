//! The edit loop: `netc diff` on pairs of models under `tests/edit/diff/`, the file
//! watcher and `netc check --watch` on files that a test rewrites.

mod diff {
    use netc::edit::diff::{diff, render};
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
        assert!(text.starts_with("no architecture change\n"), "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn set_applies_to_both() {
        // With ch=8 on both sides only the widened layer differs, at the larger width.
        insta::assert_snapshot!(diff_against_base("widened.net", &["ch=8"]));
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
        let header = watch.wait_for("check 3:");
        assert!(header.last().is_some_and(|l| l.contains("has 1 error")), "{header:?}");
        let third = watch.rest().join("\n");
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
        let kept: HashSet<_> = first_keys.intersection(&second_keys).copied().collect();
        let counts = second.program.shader_counts();
        assert_eq!(counts.reused, kept.len());
        assert_eq!(counts.compiled, second_keys.len() - kept.len());
        for layer in ["e1", "e2"] {
            let untouched = layer_keys(&second.kernels, layer);
            assert!(!untouched.is_empty(), "layer {layer} has kernels");
            assert!(untouched.is_subset(&kept), "every kernel of {layer} is reused");
        }
        assert!(!layer_keys(&second.kernels, "d2").is_subset(&kept), "d2 is compiled again");
        assert!(counts.compiled > 0);
        assert_eq!(gpu.kernels.len(), first_keys.union(&second_keys).count());

        // Going back to the first version compiles nothing.
        let third = compile(&gpu, &base);
        assert_eq!(third.program.shader_counts().compiled, 0);
        assert_eq!(third.program.shader_counts().reused, first_keys.len());

        check_against_reference(&gpu, &widened, &second);
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
