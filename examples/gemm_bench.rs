//! Times the implicit-GEMM convolution kernels on the pix2pix layer shapes (256x256,
//! ngf = ndf = 64, batch 1, unless `--size` and `--ngf` set others) and prints GFLOP/s
//! for the naive tiling and the chosen one.
//!
//! Columns: GFLOP/s by wall time (`naive`, `tiled`) and by CPU time spread over all cores
//! (`naive/c`, `tiled/c`), then the seconds to create the tiled pipeline.
//!
//! Usage: `cargo run --release --example gemm_bench -- [--layers e2,d6] [--ops fwd,wgrad]
//! [--tiling TMxTN/WG[/sgS][/kcC][/bmB][/split][/tex][/unchecked][/baked]]... [--samples N] [--no-naive]
//! [--baked] [--storage] [--ngf N] [--size S]`. Each figure is the median of `--samples` timed submits, each of enough
//! back-to-back dispatches to take about 0.25 s. `/unchecked` creates the module without
//! wgpu's bounds checks, `/baked` bakes every size into the shader instead of reading
//! some from its uniform block, `/split` splits the reduction over the subgroup's lanes,
//! and `/tex` reads the operands from textures. `--baked` adds the baked variant of the
//! chosen tiling, so the two are timed side by side. `--storage` makes the chosen tiling
//! read storage buffers, as on an adapter whose texel fetches are not much faster.

use netc::codegen::gemm::{self, ConvGeometry, ConvOp, DeviceProfile, Sizes, Tiling};
use netc::runtime::upload_operand;
use std::time::Instant;
use wgpu::util::DeviceExt;

struct Layer {
    name: String,
    forward: ConvOp,
    geometry: ConvGeometry,
}

/// Lists the convolutions of `models/pix2pix.net` at batch 1, `size` x `size` images and
/// `ngf` = `ndf` base channels, under the model's layer names (`d1` is the output layer,
/// `l1`..`logits` the discriminator's).
fn pix2pix_layers(ngf: usize, size: usize) -> Vec<Layer> {
    let levels = size.trailing_zeros() as usize;
    let width = |level: usize| ngf << (level - 1).min(3);
    let mut layers = Vec::new();
    let conv = |ci, co, s: usize, stride| {
        ConvGeometry::conv2d(1, ci, [s, s], co, [4, 4], [stride; 2], [1, 1])
    };
    for level in 1..=levels {
        let ci = if level == 1 { 3 } else { width(level - 1) };
        let g = conv(ci, width(level), size >> (level - 1), 2);
        layers.push(Layer { name: format!("e{level}"), forward: ConvOp::Conv2d, geometry: g });
    }
    for level in (1..=levels).rev() {
        // Each decoder level below the innermost reads the previous level and a skip.
        let ci = if level == levels { width(levels) } else { 2 * width(level) };
        let co = if level == 1 { 3 } else { width(level - 1) };
        let s = size >> level;
        let g = ConvGeometry::conv_transpose2d(1, ci, [s, s], co, [4, 4], [2, 2], [1, 1], [0, 0]);
        layers.push(Layer {
            name: format!("d{level}"),
            forward: ConvOp::ConvTranspose2d,
            geometry: g,
        });
    }
    let disc = [
        ("l1", 6, ngf, 2, size),
        ("l2", ngf, 2 * ngf, 2, size / 2),
        ("l3", 2 * ngf, 4 * ngf, 2, size / 4),
        ("l4", 4 * ngf, 8 * ngf, 1, size / 8),
        ("logits", 8 * ngf, 1, 1, size / 8 - 1),
    ];
    for (name, ci, co, stride, s) in disc {
        layers.push(Layer {
            name: name.to_string(),
            forward: ConvOp::Conv2d,
            geometry: conv(ci, co, s, stride),
        });
    }
    layers
}

fn weight_grad(forward: ConvOp) -> ConvOp {
    match forward {
        ConvOp::Conv2d => ConvOp::Conv2dWeightGrad,
        _ => ConvOp::ConvTranspose2dWeightGrad,
    }
}

fn parse_tiling(text: &str) -> Tiling {
    let parts: Vec<&str> = text.split('/').collect();
    let number = |prefix: &str, default: u32| {
        parts
            .iter()
            .find_map(|p| p.strip_prefix(prefix))
            .map_or(default, |v| v.parse().expect("number"))
    };
    let (tm, tn) = parts[0].split_once('x').expect("tiling is TMxTN/WG[/sgS]");
    let subgroup_size =
        parts.iter().find_map(|p| p.strip_prefix("sg")).map(|v| v.parse().expect("sg"));
    Tiling {
        tile_m: tm.parse().expect("tile_m"),
        tile_n: tn.parse().expect("tile_n"),
        workgroup_size: parts[1].parse().expect("workgroup size"),
        k_chunk: number("kc", 1),
        block_m: number("bm", 1024),
        subgroup_size,
        split_k: parts.contains(&"split"),
        texture_operands: parts.contains(&"tex"),
    }
}

struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    profile: DeviceProfile,
}

fn open_gpu() -> Gpu {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("no adapter; install mesa-vulkan-drivers for lavapipe");
    let features = adapter.features() & wgpu::Features::SUBGROUP;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("gemm_bench"),
        required_features: features,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("request_device failed");
    let info = adapter.get_info();
    println!(
        "adapter: {} ({}), subgroups {}..{}",
        info.name, info.driver_info, info.subgroup_min_size, info.subgroup_max_size
    );
    let profile = DeviceProfile::of(&adapter, features);
    Gpu { device, queue, profile }
}

fn random_values(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

fn random_buffer(gpu: &Gpu, len: usize, seed: u32) -> wgpu::Buffer {
    gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&random_values(len, seed)),
        usage: wgpu::BufferUsages::STORAGE,
    })
}

fn operand_len(op: ConvOp, g: &ConvGeometry, role: gemm::Operand) -> usize {
    let image = |c: usize, s: [usize; 2]| g.batch * c * s[0] * s[1];
    let weight = g.in_channels * g.out_channels * g.kernel[0] * g.kernel[1];
    match (role, op) {
        (gemm::Operand::Input, _) => image(g.in_channels, g.in_size),
        (gemm::Operand::OutputGrad, _) => image(g.out_channels, g.out_size),
        (gemm::Operand::Weight, _) => weight,
        (gemm::Operand::Bias, _) => g.out_channels,
        (gemm::Operand::Output, ConvOp::Conv2d | ConvOp::ConvTranspose2d) => {
            image(g.out_channels, g.out_size)
        }
        (gemm::Operand::Output, _) => weight,
        (gemm::Operand::Mask | gemm::Operand::Addend, _) => {
            unreachable!("the benchmark fuses no elementwise work")
        }
        (gemm::Operand::Shape, _) => unreachable!("the shape block is not a tensor"),
    }
}

/// Reads the CPU time of all threads of this process so far, from `/proc/self/task/*/schedstat`
/// (Linux), in seconds. lavapipe runs shaders on its own threads inside the process.
fn process_cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let nanos: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 * 1e-9
}

/// Runs the kernel `reps` times in one pass and one submit and returns the wall time and
/// the CPU time it took, in seconds.
fn time_kernel(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    group: &wgpu::BindGroup,
    grid: [u32; 3],
    reps: u32,
) -> (f64, f64) {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        for _ in 0..reps {
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
    }
    let command_buffer = encoder.finish();
    let (start, cpu_start) = (Instant::now(), process_cpu_seconds());
    gpu.queue.submit([command_buffer]);
    gpu.device.poll(wgpu::PollType::wait_indefinitely()).expect("poll failed");
    (start.elapsed().as_secs_f64(), process_cpu_seconds() - cpu_start)
}

/// A tiling to time, whether to create its module without wgpu's bounds checks, and where
/// its sizes live.
#[derive(Clone, Copy)]
struct Variant {
    tiling: Tiling,
    unchecked: bool,
    sizes: Sizes,
}

fn parse_variant(text: &str) -> Variant {
    let mut rest = text;
    let mut flag = |suffix: &str| match rest.strip_suffix(suffix) {
        Some(stripped) => {
            rest = stripped;
            true
        }
        None => false,
    };
    let baked = flag("/baked");
    let unchecked = flag("/unchecked");
    let sizes = if baked { Sizes::Baked } else { Sizes::Uniform };
    Variant { tiling: parse_tiling(rest), unchecked, sizes }
}

/// A kernel ready to dispatch, with the repetitions that make one sample.
struct Prepared {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    grid: [u32; 3],
    flops: u64,
    reps: u32,
    /// Shader module and pipeline creation, which is where lavapipe compiles.
    compile_seconds: f64,
    _buffers: Vec<Option<wgpu::Buffer>>,
    _views: Vec<Option<wgpu::TextureView>>,
}

fn prepare(gpu: &Gpu, op: ConvOp, g: &ConvGeometry, variant: &Variant) -> Prepared {
    let kernel = gemm::generate_with(op, g, &variant.tiling, false, variant.sizes, 65_535)
        .expect("generate failed");
    let descriptor = wgpu::ShaderModuleDescriptor {
        label: Some(&kernel.label),
        source: wgpu::ShaderSource::Wgsl(kernel.wgsl.as_str().into()),
    };
    let module = if variant.unchecked {
        // SAFETY: every load index is clamped into its tensor by the generated code and the
        // buffers are sized from the same geometry.
        unsafe {
            gpu.device
                .create_shader_module_trusted(descriptor, wgpu::ShaderRuntimeChecks::unchecked())
        }
    } else {
        gpu.device.create_shader_module(descriptor)
    };
    let compile_start = Instant::now();
    let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&kernel.label),
        layout: None,
        module: &module,
        entry_point: Some(kernel.entry_point),
        compilation_options: Default::default(),
        cache: None,
    });
    let compile_seconds = compile_start.elapsed().as_secs_f64();
    let textured = |i: usize| kernel.texture_operands && i < 2;
    let buffers: Vec<Option<wgpu::Buffer>> = kernel
        .bindings
        .iter()
        .enumerate()
        .map(|(i, &role)| match role {
            _ if textured(i) => None,
            gemm::Operand::Shape => {
                let mut words = kernel.shape.clone();
                words.resize(words.len().next_multiple_of(4), 0);
                Some(gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("shape"),
                    contents: bytemuck::cast_slice(&words),
                    usage: wgpu::BufferUsages::UNIFORM,
                }))
            }
            role => Some(random_buffer(gpu, operand_len(op, g, role), i as u32 + 1)),
        })
        .collect();
    let views: Vec<Option<wgpu::TextureView>> = kernel
        .bindings
        .iter()
        .enumerate()
        .map(|(i, &role)| {
            let vectors = (i == 0 && kernel.lhs_vectors) || (i == 1 && kernel.rhs_texels);
            textured(i).then(|| {
                let values = random_values(operand_len(op, g, role), i as u32 + 1);
                upload_operand(&gpu.device, &gpu.queue, &values, vectors, 0.0)
            })
        })
        .collect();
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .zip(&views)
        .enumerate()
        .map(|(i, (b, v))| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: match (b, v) {
                (Some(b), _) => b.as_entire_binding(),
                (None, Some(v)) => wgpu::BindingResource::TextureView(v),
                (None, None) => unreachable!("every binding has a buffer or a texture"),
            },
        })
        .collect();
    let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    // Lavapipe compiles a pipeline's machine code at its first dispatch, so one workgroup
    // runs here and counts as compile time.
    let (first, _) = time_kernel(gpu, &pipeline, &group, [1, 1, 1], 1);
    let compile_seconds = compile_seconds + first;
    let (once, _) = time_kernel(gpu, &pipeline, &group, kernel.grid.workgroups, 1);
    let reps = (0.25 / once.max(1e-6)).clamp(1.0, 200.0) as u32;
    Prepared {
        pipeline,
        group,
        grid: kernel.grid.workgroups,
        flops: kernel.flops,
        reps,
        compile_seconds,
        _buffers: buffers,
        _views: views,
    }
}

/// Median rates of one variant in GFLOP/s: by wall time, and by CPU time spread over all
/// cores (`flops / (cpu_seconds / cores)`), which is less sensitive to other processes.
#[derive(Clone, Copy)]
struct Rates {
    wall: f64,
    cpu: f64,
    compile_seconds: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Times every variant in turn, `samples` rounds, and returns each one's median rates.
/// Taking turns spreads the load of other processes on the machine over all variants.
fn measure(
    gpu: &Gpu,
    op: ConvOp,
    g: &ConvGeometry,
    variants: &[Variant],
    samples: usize,
) -> Vec<Rates> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let prepared: Vec<Prepared> = variants.iter().map(|v| prepare(gpu, op, g, v)).collect();
    let mut times = vec![(Vec::new(), Vec::new()); prepared.len()];
    for _ in 0..samples {
        for (p, (wall, cpu)) in prepared.iter().zip(&mut times) {
            let (w, c) = time_kernel(gpu, &p.pipeline, &p.group, p.grid, p.reps);
            let flops = p.flops as f64 * f64::from(p.reps) / 1e9;
            wall.push(flops / w);
            cpu.push(flops / (c / cores));
        }
    }
    times
        .into_iter()
        .zip(&prepared)
        .map(|((wall, cpu), p)| Rates {
            wall: median(wall),
            cpu: median(cpu),
            compile_seconds: p.compile_seconds,
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value =
        |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let layers_filter: Option<Vec<String>> =
        value("--layers").map(|s| s.split(',').map(String::from).collect());
    let ops = value("--ops").unwrap_or_else(|| "fwd,wgrad".to_string());
    let samples: usize = value("--samples").map_or(5, |s| s.parse().expect("--samples"));
    let ngf: usize = value("--ngf").map_or(64, |s| s.parse().expect("--ngf"));
    let size: usize = value("--size").map_or(256, |s| s.parse().expect("--size"));
    assert!(size.is_power_of_two(), "--size must be a power of two");
    assert!(size >= 64, "--size must be at least 64");
    let extra: Vec<Variant> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--tiling")
        .filter_map(|(i, _)| args.get(i + 1))
        .map(|s| parse_variant(s))
        .collect();
    let naive = Tiling {
        tile_m: 1,
        tile_n: 1,
        workgroup_size: 64,
        k_chunk: 1,
        block_m: 1,
        subgroup_size: None,
        split_k: false,
        texture_operands: false,
    };
    let skip_naive = args.iter().any(|a| a == "--no-naive");
    let add_baked = args.iter().any(|a| a == "--baked");

    let mut gpu = open_gpu();
    if args.iter().any(|a| a == "--storage") {
        gpu.profile.texture_operands = false;
    }
    println!(
        "{:<5} {:<29} {:>5} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7}  tiling",
        "layer", "op", "M", "N", "K", "GFLOP", "naive", "naive/c", "tiled", "tiled/c", "compile"
    );
    for layer in pix2pix_layers(ngf, size) {
        if layers_filter.as_ref().is_some_and(|f| !f.iter().any(|n| *n == layer.name)) {
            continue;
        }
        for (tag, op) in [("fwd", layer.forward), ("wgrad", weight_grad(layer.forward))] {
            if !ops.split(',').any(|o| o == tag) {
                continue;
            }
            let g = &layer.geometry;
            let chosen = gemm::choose_tiling(op, g, &gpu.profile);
            let kernel = gemm::generate_with(op, g, &chosen, false, Sizes::Baked, 65_535)
                .expect("generate failed");
            let (m, n, k) = gemm_sizes(&kernel.wgsl);
            let variant = |tiling, sizes| Variant { tiling, unchecked: false, sizes };
            let mut variants = if extra.is_empty() {
                vec![variant(chosen, Sizes::Uniform)]
            } else {
                extra.clone()
            };
            if add_baked {
                variants.push(variant(chosen, Sizes::Baked));
            }
            if !skip_naive {
                variants.insert(0, variant(naive, Sizes::Uniform));
            }
            let rates = measure(&gpu, op, g, &variants, samples);
            let first = usize::from(!skip_naive);
            let naive_rate = if skip_naive {
                Rates { wall: f64::NAN, cpu: f64::NAN, compile_seconds: f64::NAN }
            } else {
                rates[0]
            };
            for (v, rate) in variants[first..].iter().zip(&rates[first..]) {
                let t = v.tiling;
                println!(
                    "{:<5} {:<29} {:>5} {:>6} {:>6} {:>7.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2}  {}{}",
                    layer.name,
                    op.name(),
                    m,
                    n,
                    k,
                    kernel.flops as f64 / 1e9,
                    naive_rate.wall,
                    naive_rate.cpu,
                    rate.wall,
                    rate.cpu,
                    rate.compile_seconds,
                    describe(&t),
                    match (v.unchecked, v.sizes) {
                        (true, Sizes::Baked) => " unchecked baked",
                        (true, Sizes::Uniform) => " unchecked",
                        (false, Sizes::Baked) => " baked",
                        (false, Sizes::Uniform) => "",
                    }
                );
            }
        }
    }
}

/// Writes a tiling in the syntax `--tiling` reads.
fn describe(t: &Tiling) -> String {
    let subgroup = t.subgroup_size.map_or(String::new(), |s| format!("/sg{s}"));
    let textures = if t.texture_operands { "/tex" } else { "" };
    let split = if t.split_k { "/split" } else { "" };
    format!(
        "{}x{}/{}{subgroup}/kc{}/bm{}{split}{textures}",
        t.tile_m, t.tile_n, t.workgroup_size, t.k_chunk, t.block_m
    )
}

/// Reads M, N and K back from the shader's constants, for the table.
fn gemm_sizes(wgsl: &str) -> (String, String, String) {
    let get = |name: &str| {
        wgsl.lines()
            .find_map(|l| l.strip_prefix(&format!("const {name} = ")))
            .map_or("?".to_string(), |v| v.trim_end_matches("i;").to_string())
    };
    (get("M"), get("N"), get("K"))
}
