//! The WGSL netc emits, with no device: every op kind's kernels validate with naga, and
//! their text is pinned by insta snapshots so that any change shows up as a diff.

mod support;

use netc::codegen::{lower_graph, validate_wgsl, Kernel, Mode, Target, Tuning};
use netc::ir::{Graph, Init, Module, NodeId, Op, ParamDecl, ParamKind, Shape};

struct Builder {
    graph: Graph,
    module: Module,
}

impl Builder {
    fn new() -> Self {
        let module = Module {
            name: "shaders".into(),
            params: Vec::new(),
            nets: Vec::new(),
            train: None,
            settings: Vec::new(),
        };
        Builder { graph: Graph::new(), module }
    }

    fn input(&mut self, name: &str, dims: &[usize]) -> NodeId {
        self.graph.add_leaf(Op::Input { name: name.into() }, Shape::new(dims.to_vec()), name, None)
    }

    fn param(&mut self, name: &str, dims: &[usize]) -> (NodeId, usize) {
        let id = self.module.params.len();
        self.module.params.push(ParamDecl {
            name: name.into(),
            shape: Shape::new(dims.to_vec()),
            init: Init::Constant { value: 0.0 },
            kind: ParamKind::Trainable,
            net: "net".into(),
            span: None,
        });
        (self.graph.add_leaf(Op::Param { id }, Shape::new(dims.to_vec()), name, None), id)
    }

    fn op(&mut self, name: &str, op: Op, operands: &[NodeId]) -> NodeId {
        self.graph.add_op(op, operands, name, None).expect("well-shaped test graph")
    }

    fn lower(&self, mode: Mode, target: &Target) -> Vec<Kernel> {
        netc::ir::verify::verify_graph(&self.graph, &self.module).expect("graph verifies");
        let kernels = lower_graph(&self.graph, target, mode).expect("lowering succeeds");
        for kernel in &kernels {
            if let Err(message) = validate_wgsl(&kernel.wgsl) {
                panic!("kernel {} is invalid WGSL:\n{message}", kernel.name);
            }
        }
        kernels
    }
}

/// Builds one graph per op kind: (snapshot name, builder, mode).
fn op_kinds() -> Vec<(&'static str, Builder, Mode)> {
    let mut cases = Vec::new();
    let unary = [
        ("relu", Op::Relu),
        ("leaky_relu", Op::LeakyRelu { slope: 0.2 }),
        ("tanh", Op::Tanh),
        ("sigmoid", Op::Sigmoid),
        ("neg", Op::Neg),
    ];
    for (name, op) in unary {
        let mut b = Builder::new();
        let x = b.input("x", &[1, 3, 5, 7]);
        b.op(name, op, &[x]);
        cases.push((name, b, Mode::Eval));
    }
    for (name, op) in [("add", Op::Add), ("sub", Op::Sub), ("mul", Op::Mul), ("div", Op::Div)] {
        let mut b = Builder::new();
        let x = b.input("x", &[2, 3, 5, 7]);
        let y = b.input("y", &[2, 3, 5, 7]);
        let c = b.graph.add_leaf(Op::Constant { value: 0.5 }, Shape::scalar(), "half", None);
        let first = b.op(&format!("{name}_tensors"), op.clone(), &[x, y]);
        b.op(&format!("{name}_scalar"), op, &[first, c]);
        cases.push((name, b, Mode::Eval));
    }

    let mut b = Builder::new();
    let x = b.input("x", &[1, 64, 128, 128]);
    b.op("dropout", Op::Dropout { p: 0.5 }, &[x]);
    cases.push(("dropout", b, Mode::Train));

    let mut b = Builder::new();
    let x = b.input("x", &[1, 3, 256, 256]);
    let (w, _) = b.param("w", &[64, 3, 4, 4]);
    let (bias, _) = b.param("b", &[64]);
    b.op("conv2d", Op::Conv2d { stride: [2, 2], padding: [1, 1] }, &[x, w, bias]);
    cases.push(("conv2d", b, Mode::Eval));

    let mut b = Builder::new();
    let x = b.input("x", &[1, 128, 64, 64]);
    let (w, _) = b.param("w", &[128, 3, 4, 4]);
    let op = Op::ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [0, 0] };
    b.op("conv_transpose2d", op, &[x, w]);
    cases.push(("conv_transpose2d", b, Mode::Eval));

    for (name, mode) in [("batch_norm_train", Mode::Train), ("batch_norm_eval", Mode::Eval)] {
        let mut b = Builder::new();
        let x = b.input("x", &[4, 128, 32, 32]);
        let (scale, _) = b.param("scale", &[128]);
        let (offset, _) = b.param("offset", &[128]);
        let (_, running_mean) = b.param("running_mean", &[128]);
        let (_, running_var) = b.param("running_var", &[128]);
        let op = Op::BatchNorm { eps: 1e-5, momentum: 0.1, running_mean, running_var };
        b.op("norm", op, &[x, scale, offset]);
        cases.push((name, b, mode));
    }

    let mut b = Builder::new();
    let x = b.input("x", &[1, 512, 8, 8]);
    let y = b.input("y", &[1, 256, 8, 8]);
    b.op("concat", Op::Concat { axis: 1 }, &[x, y]);
    cases.push(("concat", b, Mode::Eval));

    let mut b = Builder::new();
    let x = b.input("x", &[4, 3, 8, 8]);
    let flat = b.op("flatten", Op::Flatten, &[x]);
    let (w, _) = b.param("w", &[10, 192]);
    let (bias, _) = b.param("b", &[10]);
    b.op("linear", Op::Linear, &[flat, w, bias]);
    cases.push(("linear", b, Mode::Eval));

    let mut b = Builder::new();
    let x = b.input("x", &[2, 16, 30, 30]);
    b.op("max_pool2d", Op::MaxPool2d { kernel: [2, 2], stride: [2, 2] }, &[x]);
    cases.push(("max_pool2d", b, Mode::Eval));

    let mut b = Builder::new();
    let x = b.input("x", &[2, 16, 30, 30]);
    b.op("sum_axes", Op::Sum { axes: vec![0, 2, 3] }, &[x]);
    b.op("mean_all", Op::Mean { axes: vec![] }, &[x]);
    cases.push(("reductions", b, Mode::Eval));

    let mut b = Builder::new();
    let logits = b.input("logits", &[1, 1, 30, 30]);
    let label = b.graph.add_leaf(Op::Constant { value: 1.0 }, Shape::scalar(), "real", None);
    b.op("bce", Op::BceWithLogits, &[logits, label]);
    let fake = b.input("fake", &[1, 3, 256, 256]);
    let real = b.input("real", &[1, 3, 256, 256]);
    b.op("l1", Op::L1Loss, &[fake, real]);
    b.op("mse", Op::MseLoss, &[fake, real]);
    let scores = b.input("scores", &[8, 10]);
    let classes = b.input("classes", &[8]);
    b.op("cross_entropy", Op::CrossEntropy, &[scores, classes]);
    cases.push(("losses", b, Mode::Eval));
    cases
}

fn program_text(kernels: &[Kernel]) -> String {
    kernels
        .iter()
        .map(|k| format!("// ---- {} grid {:?}\n{}", k.name, k.grid.workgroups, k.wgsl))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_op_kind_validates_with_naga() {
    let targets = [
        Target::default(),
        Target { subgroups: true, ..Target::default() },
        cpu_target(),
        Target {
            tuning: Tuning { elementwise_items: 1, conv_out_channel_tile: 3, ..Tuning::default() },
            max_storage_buffer_binding_size: 4096,
            max_workgroups_per_dimension: 7,
            ..Target::default()
        },
    ];
    for (name, builder, mode) in op_kinds() {
        for target in &targets {
            let result = lower_graph(&builder.graph, target, mode);
            // The small-binding target rejects the non-elementwise kernels by design.
            if let Ok(kernels) = result {
                for kernel in kernels {
                    if let Err(message) = validate_wgsl(&kernel.wgsl) {
                        panic!("{name}: kernel {} is invalid WGSL:\n{message}", kernel.name);
                    }
                }
            }
        }
        let kernels = builder.lower(mode, &Target::default());
        assert!(!kernels.is_empty(), "{name} lowered to no kernels");
    }
}

/// Returns the target of a CPU adapter with 8-wide subgroups, as lavapipe is, whose
/// storage loads are slow enough that its convolutions read their operands as textures.
fn cpu_target() -> Target {
    let mut target =
        Target { cpu: true, subgroups: true, subgroup_size: Some(8), ..Target::default() };
    target.tuning.texture_operands = true;
    target
}

#[test]
fn op_kind_shaders_match_snapshots() {
    for (name, builder, mode) in op_kinds() {
        let kernels = builder.lower(mode, &Target::default());
        insta::assert_snapshot!(name, program_text(&kernels));
        if name == "conv2d" {
            let kernels = builder.lower(mode, &cpu_target());
            insta::assert_snapshot!("conv2d_cpu", program_text(&kernels));
        }
    }
}

/// The innermost encoder layer of pix2pix at ngf=16, 128x128, whose one output pixel per
/// channel makes a CPU adapter split the reduction over the subgroup's lanes.
#[test]
fn split_reduction_conv_matches_snapshot() {
    let mut b = Builder::new();
    let x = b.input("x", &[1, 128, 2, 2]);
    let (w, _) = b.param("w", &[128, 128, 4, 4]);
    b.op("conv2d", Op::Conv2d { stride: [2, 2], padding: [1, 1] }, &[x, w]);
    let mut target = cpu_target();
    target.tuning.texture_operands = false;
    let kernels = b.lower(Mode::Eval, &target);
    let text = program_text(&kernels);
    assert!(text.contains("subgroupAdd"), "{text}");
    for kernel in &kernels {
        if let Err(message) = validate_wgsl(&kernel.wgsl) {
            panic!("kernel {} is invalid WGSL:\n{message}", kernel.name);
        }
    }
    insta::assert_snapshot!("conv2d_split_reduction", text);
}

#[test]
fn pix2pix_generator_program_matches_snapshot() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pix2pix.net");
    let module = netc::frontend::compile_file(&path, &[]).expect("pix2pix.net compiles");
    let net = module.net("generator").expect("pix2pix has a generator");
    let kernels =
        lower_graph(&net.graph, &Target::default(), Mode::Eval).expect("lowering succeeds");
    for kernel in &kernels {
        if let Err(message) = validate_wgsl(&kernel.wgsl) {
            panic!("kernel {} is invalid WGSL:\n{message}", kernel.name);
        }
    }
    insta::assert_snapshot!("pix2pix_generator", program_text(&kernels));
}

#[test]
fn netc_shaders_rejects_file_as_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pix2pix.net");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(["shaders", model.to_str().unwrap(), "-o"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .output()
        .expect("netc runs");
    assert!(!output.status.success());
    let stderr = support::report_words(&output.stderr);
    assert!(stderr.contains("notes.txt is a file, but netc shaders writes"), "{stderr}");
    assert!(stderr.contains("pass a folder to -o"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn netc_shaders_writes_valid_wgsl_files() {
    let out = tempfile::tempdir().unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pix2pix.net");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(["shaders", model.to_str().unwrap(), "--set", "ngf=8", "--set", "ndf=8", "-o"])
        .arg(out.path())
        .output()
        .expect("netc runs");
    assert!(
        status.status.success(),
        "netc shaders failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    let mut files = Vec::new();
    for folder in ["generator", "discriminator", "train"] {
        let dir = out.path().join(folder);
        assert!(dir.is_dir(), "{folder} folder missing");
        for entry in std::fs::read_dir(&dir).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    assert!(files.len() > 100, "only {} shaders", files.len());
    // Each file gets the mode that the umask gives ordinary files, like `File::create`.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
        let reference = out.path().join("reference");
        std::fs::File::create(&reference).unwrap();
        assert_eq!(mode(&files[0]) & 0o777, mode(&reference) & 0o777, "{}", files[0].display());
    }
    assert!(out.path().join("generator/generator.e2.conv.conv2d.wgsl").is_file());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if let Err(message) = validate_wgsl(&text) {
            panic!("{} is invalid WGSL:\n{message}", file.display());
        }
    }

    // An independent naga (the `naga` command of naga-cli) checks them too where installed.
    let Ok(version) = std::process::Command::new("naga").arg("--version").output() else {
        return;
    };
    assert!(version.status.success());
    for file in &files {
        let result = std::process::Command::new("naga").arg(file).output().unwrap();
        assert!(
            result.status.success(),
            "naga rejects {}: {}",
            file.display(),
            String::from_utf8_lossy(&result.stderr)
        );
    }
}
