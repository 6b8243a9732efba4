//! Inference end to end on the device: image files of every supported kind through a
//! small generator to PNG files, seeded initialization, and the paired-image split.

mod support;

use netc::codegen::Mode;
use netc::infer::{load_input, Generator, InferError};
use netc::ir::{
    Graph, Half, Init, Module, Net, NetInput, Op, ParamDecl, ParamKind, Schedule, Shape, TrainSpec,
};
use netc::runtime::{initial_values, Gpu, ParamStore};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

fn gpu() -> &'static Mutex<Gpu> {
    static GPU: OnceLock<Mutex<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        Mutex::new(Gpu::open(None).expect("the inference tests need a wgpu adapter"))
    })
}

fn declare(
    module: &mut Module,
    graph: &mut Graph,
    name: &str,
    dims: &[usize],
    init: Init,
) -> netc::ir::NodeId {
    let id = module.params.len();
    let kind = if name.contains("running") { ParamKind::Buffer } else { ParamKind::Trainable };
    let shape = Shape::new(dims.to_vec());
    module.params.push(ParamDecl {
        name: format!("generator.{name}"),
        shape: shape.clone(),
        init,
        kind,
        net: "generator".into(),
        span: None,
    });
    graph.add_leaf(Op::Param { id }, shape, format!("generator.{name}"), None)
}

/// Builds a two-layer encoder-decoder, `[1, channels, 16, 16]` to `[1, 3, 16, 16]`.
fn tiny_generator(channels: usize, paired: bool) -> Module {
    let mut module = Module {
        name: "tiny".into(),
        params: Vec::new(),
        nets: Vec::new(),
        train: None,
        settings: Vec::new(),
    };
    let mut g = Graph::new();
    let normal = Init::Normal { mean: 0.0, std: 0.2 };
    let input_shape = Shape::new([1, channels, 16, 16]);
    let x = g.add_leaf(
        Op::Input { name: "input".into() },
        input_shape.clone(),
        "generator.input",
        None,
    );
    let w1 = declare(&mut module, &mut g, "e1.weight", &[8, channels, 4, 4], normal.clone());
    let scale = declare(&mut module, &mut g, "e1.norm.scale", &[8], Init::Constant { value: 1.0 });
    let offset =
        declare(&mut module, &mut g, "e1.norm.offset", &[8], Init::Constant { value: 0.0 });
    declare(&mut module, &mut g, "e1.norm.running_mean", &[8], Init::Constant { value: 0.0 });
    declare(&mut module, &mut g, "e1.norm.running_var", &[8], Init::Constant { value: 1.0 });
    let w2 = declare(&mut module, &mut g, "d1.weight", &[8, 3, 4, 4], normal);
    let b2 = declare(&mut module, &mut g, "d1.bias", &[3], Init::Uniform { low: -0.1, high: 0.1 });

    let conv = g.add_op(
        Op::Conv2d { stride: [2, 2], padding: [1, 1] },
        &[x, w1],
        "generator.e1.conv",
        None,
    );
    let norm_op = Op::BatchNorm { eps: 1e-5, momentum: 0.1, running_mean: 3, running_var: 4 };
    let norm = g.add_op(norm_op, &[conv.unwrap(), scale, offset], "generator.e1.norm", None);
    let act = g.add_op(Op::LeakyRelu { slope: 0.2 }, &[norm.unwrap()], "generator.e1.act", None);
    let drop = g.add_op(Op::Dropout { p: 0.5 }, &[act.unwrap()], "generator.e1.dropout", None);
    let up = Op::ConvTranspose2d { stride: [2, 2], padding: [1, 1], output_padding: [0, 0] };
    let deconv = g.add_op(up, &[drop.unwrap(), w2, b2], "generator.d1.conv", None);
    let out = g.add_op(Op::Tanh, &[deconv.unwrap()], "generator.output", None).unwrap();
    g.outputs.push(("output".into(), out));

    module.nets.push(Net {
        name: "generator".into(),
        inputs: vec![NetInput { name: "input".into(), shape: input_shape }],
        graph: g,
        params: (0..module.params.len()).collect(),
        span: None,
    });
    if paired {
        module.train = Some(TrainSpec {
            data: support::paired_data(),
            graph: Graph::new(),
            steps: Vec::new(),
            schedule: Schedule::Constant,
            epochs: 1,
            generator: "generator".into(),
            span: None,
        });
    }
    netc::ir::verify::verify_module(&module).expect("tiny generator verifies");
    module
}

fn write_images(dir: &Path) -> Vec<PathBuf> {
    let rgb =
        image::RgbImage::from_fn(37, 23, |x, y| image::Rgb([(x * 7) as u8, (y * 11) as u8, 128]));
    let gray = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([((x + y) * 8) as u8]));
    let rgba =
        image::RgbaImage::from_fn(20, 20, |x, y| image::Rgba([x as u8 * 12, 0, y as u8 * 12, 90]));
    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(31, 31, |x, y| {
        image::Rgb([(x * 2000) as u16, (y * 2000) as u16, 40000])
    });
    let files = [
        ("photo.jpg", image::DynamicImage::ImageRgb8(rgb)),
        ("gray.png", image::DynamicImage::ImageLuma8(gray)),
        ("alpha.png", image::DynamicImage::ImageRgba8(rgba)),
        ("deep.png", image::DynamicImage::ImageRgb16(deep)),
    ];
    files
        .into_iter()
        .map(|(name, img)| {
            let path = dir.join(name);
            img.save(&path).expect("test image is written");
            path
        })
        .collect()
}

fn run_generator(module: &Module, seed: u64, images: &[PathBuf], out: &Path) -> Vec<Vec<u8>> {
    run_generator_in(Mode::Infer, module, seed, images, out)
}

fn run_generator_in(
    mode: Mode,
    module: &Module,
    seed: u64,
    images: &[PathBuf],
    out: &Path,
) -> Vec<Vec<u8>> {
    let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
    let params = ParamStore::initialized(&gpu, module, seed).expect("parameters initialize");
    let generator = Generator::compile(&gpu, module, &params, mode).expect("generator compiles");
    let paths = generator.run_files(&gpu, images, out).expect("inference runs");
    paths.iter().map(|p| std::fs::read(p).expect("output PNG exists")).collect()
}

#[test]
fn every_image_kind_becomes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let images = write_images(dir.path());
    let out = dir.path().join("out");
    let outputs = run_generator(&tiny_generator(3, false), 1, &images, &out);
    assert_eq!(outputs.len(), images.len());
    for (image, bytes) in images.iter().zip(&outputs) {
        let decoded = image::load_from_memory(bytes).expect("output decodes as an image");
        assert_eq!((decoded.width(), decoded.height()), (16, 16), "{}", image.display());
        assert_eq!(decoded.color(), image::ColorType::Rgb8);
    }
    for name in ["photo.png", "gray.png", "alpha.png", "deep.png"] {
        assert!(out.join(name).exists(), "{name} missing");
    }
}

#[test]
fn grayscale_generator_reads_luma() {
    let dir = tempfile::tempdir().unwrap();
    let images = write_images(dir.path());
    let outputs =
        run_generator(&tiny_generator(1, false), 1, &images[..2], &dir.path().join("out"));
    assert_eq!(outputs.len(), 2);
}

#[test]
fn same_seed_gives_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let images = write_images(dir.path());
    let module = tiny_generator(3, false);
    for mode in [Mode::Infer, Mode::Eval] {
        let run = |seed, name: &str| {
            run_generator_in(mode, &module, seed, &images, &dir.path().join(name))
        };
        let first = run(7, "a");
        let second = run(7, "b");
        let other = run(8, "c");
        assert_eq!(first, second, "{mode:?}: same seed");
        assert_ne!(first, other, "{mode:?}: other seed");
    }
}

#[test]
fn inference_mode_keeps_running_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let images = write_images(dir.path());
    let module = tiny_generator(3, false);
    let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
    let params = ParamStore::initialized(&gpu, &module, 3).expect("parameters initialize");
    let before = params.download_all(&gpu).expect("parameter download");
    let generator =
        Generator::compile(&gpu, &module, &params, Mode::Infer).expect("generator compiles");
    generator.run_files(&gpu, &images, &dir.path().join("out")).expect("inference runs");
    let after = params.download_all(&gpu).expect("parameter download");
    assert_eq!(before, after, "inference wrote to the parameter store");
}

#[test]
fn inference_and_running_statistics_differ() {
    let dir = tempfile::tempdir().unwrap();
    let images = write_images(dir.path());
    let module = tiny_generator(3, false);
    let infer = run_generator_in(Mode::Infer, &module, 4, &images, &dir.path().join("a"));
    let eval = run_generator_in(Mode::Eval, &module, 4, &images, &dir.path().join("b"));
    assert_ne!(infer, eval);
}

#[test]
fn paired_image_uses_the_input_half() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pair.png");
    let pair = image::RgbImage::from_fn(64, 32, |x, _| {
        if x < 32 {
            image::Rgb([0, 0, 0])
        } else {
            image::Rgb([255, 255, 255])
        }
    });
    pair.save(&path).unwrap();
    let right = load_input(&path, Some(Half::Right), 3, 16, 16).unwrap();
    assert!(right.iter().all(|&v| (v - 1.0).abs() < 1e-6), "right half is white");
    let left = load_input(&path, Some(Half::Left), 3, 16, 16).unwrap();
    assert!(left.iter().all(|&v| (v + 1.0).abs() < 1e-6), "left half is black");
    let whole = load_input(&path, None, 3, 16, 16).unwrap();
    assert!(whole.iter().any(|&v| v > 0.9), "the whole image has the white half");
    assert!(whole.iter().any(|&v| v < -0.9), "the whole image has the black half");

    let outputs = run_generator(&tiny_generator(3, true), 1, &[path], &dir.path().join("out"));
    assert_eq!(outputs.len(), 1);
}

#[test]
fn unreadable_image_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.jpg");
    std::fs::write(&path, b"not an image").unwrap();
    let error = load_input(&path, None, 3, 16, 16).unwrap_err();
    assert!(matches!(error, InferError::ImageRead { .. }));
    assert!(error.to_string().contains("broken.jpg"), "{error}");
    let missing = load_input(&dir.path().join("absent.png"), None, 3, 16, 16).unwrap_err();
    assert!(missing.to_string().contains("absent.png"), "{missing}");
}

#[test]
fn duplicate_stems_get_distinct_outputs() {
    let paths = netc::infer::output_paths(
        &[PathBuf::from("a/x.jpg"), PathBuf::from("b/x.png"), PathBuf::from("y.png")],
        Path::new("out"),
    );
    assert_eq!(
        paths,
        vec![PathBuf::from("out/x.png"), PathBuf::from("out/x-2.png"), PathBuf::from("out/y.png")]
    );
}

#[test]
fn initialization_is_seeded_per_parameter() {
    let module = tiny_generator(3, false);
    let weight = &module.params[0];
    let first = initial_values(weight, 5).unwrap();
    assert_eq!(first, initial_values(weight, 5).unwrap());
    assert_ne!(first, initial_values(weight, 6).unwrap());
    let mut renamed = weight.clone();
    renamed.name.push_str(".other");
    assert_ne!(first, initial_values(&renamed, 5).unwrap());

    let mut big = weight.clone();
    big.shape = Shape::new([100_000]);
    let values = initial_values(&big, 1).unwrap();
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
    let var =
        values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / values.len() as f64;
    assert!(mean.abs() < 0.005, "mean {mean}");
    assert!((var.sqrt() - 0.2).abs() < 0.005, "std {}", var.sqrt());

    let bias = &module.params[6];
    let values = initial_values(bias, 1).unwrap();
    assert!(values.iter().all(|&v| (-0.1..0.1).contains(&v)));
    let mut invalid = bias.clone();
    invalid.init = Init::Normal { mean: 0.0, std: -1.0 };
    assert!(initial_values(&invalid, 1).is_err());
}

/// Runs `netc run models/pix2pix.net --infer` on a reduced model with a paired test image.
fn netc_infer(dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pix2pix.net");
    let image = dir.join("pair.png");
    if !image.exists() {
        let pair = image::RgbImage::from_fn(128, 64, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 4) as u8, 200])
        });
        pair.save(&image).unwrap();
    }
    std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
        .args([
            "run",
            model.to_str().unwrap(),
            "--set",
            "ngf=8",
            "--set",
            "ndf=8",
            "--set",
            "size=64",
        ])
        .arg("--infer")
        .arg(&image)
        .arg("-o")
        .arg(dir.join(out))
        .args(extra)
        .output()
        .expect("netc runs")
}

#[test]
fn netc_run_infer_writes_png_per_input() {
    let dir = tempfile::tempdir().unwrap();
    let first = netc_infer(dir.path(), "a", &[]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "netc failed: {stderr}");
    assert!(stderr.contains("freshly initialised"), "no notice: {stderr}");
    let png = image::open(dir.path().join("a/pair.png")).expect("output PNG");
    assert_eq!((png.width(), png.height()), (64, 64));
    // The PNG gets the mode that the umask gives ordinary files, as the input has here.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("a/pair.png")), mode(&dir.path().join("pair.png")));
    }

    let second = netc_infer(dir.path(), "b", &[]);
    assert!(second.status.success());
    let other = netc_infer(dir.path(), "c", &["--seed", "5"]);
    assert!(other.status.success());
    let read = |name: &str| std::fs::read(dir.path().join(name).join("pair.png")).unwrap();
    assert_eq!(read("a"), read("b"), "same seed, same bits");
    assert_ne!(read("a"), read("c"), "another seed");

    let running = netc_infer(dir.path(), "d", &["--running-stats"]);
    assert!(running.status.success(), "{}", String::from_utf8_lossy(&running.stderr));
    assert_ne!(read("a"), read("d"), "--running-stats runs evaluation mode");
}

#[test]
fn netc_run_infer_rejects_file_as_output() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("out.png"), b"keep me").unwrap();
    let output = netc_infer(dir.path(), "out.png", &[]);
    assert!(!output.status.success());
    let stderr = support::report_words(&output.stderr);
    assert!(stderr.contains("out.png is a file, but netc run --infer writes"), "{stderr}");
    assert!(stderr.contains("pass a folder to -o"), "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("out.png")).unwrap(), b"keep me");
}

#[test]
fn netc_run_infer_keeps_input_images() {
    let dir = tempfile::tempdir().unwrap();
    let pair = image::RgbImage::from_fn(128, 64, |x, _| image::Rgb([x as u8, 0, 0]));
    pair.save(dir.path().join("pair.png")).unwrap();
    let before = std::fs::read(dir.path().join("pair.png")).unwrap();
    // `-o .` beside the input: the output pair.png would replace the input pair.png.
    let output = netc_infer(dir.path(), ".", &[]);
    assert!(!output.status.success());
    let stderr = support::report_words(&output.stderr);
    assert!(stderr.contains("would replace the input image"), "{stderr}");
    assert!(stderr.contains("choose another folder with -o"), "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("pair.png")).unwrap(), before);
}

#[test]
fn netc_run_infer_reports_missing_image() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pix2pix.net");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
        .args([
            "run",
            model.to_str().unwrap(),
            "--set",
            "ngf=8",
            "--set",
            "size=64",
            "--infer",
            "absent.jpg",
            "-o",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("absent.jpg"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_adapter_error_says_how_to_install_lavapipe() {
    // WGPU_BACKEND restricts wgpu to Metal, which no Linux machine has, so no adapter opens.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
        .arg("devices")
        .env("WGPU_BACKEND", "metal")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no GPU adapter found"), "{stderr}");
    // miette wraps the help line, so the command is checked in its two halves.
    assert!(stderr.contains("apt-get install"), "{stderr}");
    assert!(stderr.contains("mesa-vulkan-drivers libvulkan1"), "{stderr}");
}

#[test]
fn unknown_adapter_lists_available_ones() {
    let dir = tempfile::tempdir().unwrap();
    let output = netc_infer(dir.path(), "a", &["--adapter", "no-such-adapter-name"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no adapter matches \"no-such-adapter-name\""), "{stderr}");
    assert!(stderr.contains("available:"), "{stderr}");
}
