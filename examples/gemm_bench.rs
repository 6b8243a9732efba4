//! Times the implicit-GEMM convolution kernels on the pix2pix layer shapes (256x256,
//! ngf = ndf = 64, batch 1) and prints GFLOP/s for the naive tiling and the chosen one.
//!
//! Usage: `cargo run --release --example gemm_bench -- [--layers e2,d6] [--ops fwd,wgrad]
//! [--tiling TMxTN/WG[/sgS]]... [--samples N]`. Each figure is the median of `--samples`
//! timed submits, each of enough back-to-back dispatches to take about 0.3 s.

use netc::codegen::gemm::{self, ConvGeometry, ConvOp, DeviceProfile, Tiling};
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

struct Layer {
    name: &'static str,
    forward: ConvOp,
    geometry: ConvGeometry,
}

/// The convolutions of pix2pix at 256x256 with 64 base channels and batch 1.
fn pix2pix_layers() -> Vec<Layer> {
    let mut layers = Vec::new();
    let encoder = [3, 64, 128, 256, 512, 512, 512, 512, 512];
    let names = ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8"];
    for (i, name) in names.iter().enumerate() {
        let size = 256 >> i;
        let g = ConvGeometry::conv2d(
            1,
            encoder[i],
            [size, size],
            encoder[i + 1],
            [4, 4],
            [2, 2],
            [1, 1],
        );
        layers.push(Layer { name, forward: ConvOp::Conv2d, geometry: g });
    }
    // Decoder d1 is the innermost: it reads the 1x1 bottleneck.
    let decoder = [
        (512, 512),
        (1024, 512),
        (1024, 512),
        (1024, 512),
        (1024, 256),
        (512, 128),
        (256, 64),
        (128, 3),
    ];
    let names = ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"];
    for (i, (name, (ci, co))) in names.iter().zip(decoder).enumerate() {
        let size = 1 << i;
        let g =
            ConvGeometry::conv_transpose2d(1, ci, [size, size], co, [4, 4], [2, 2], [1, 1], [0, 0]);
        layers.push(Layer { name, forward: ConvOp::ConvTranspose2d, geometry: g });
    }
    let disc =
        [(6, 64, 2, 256), (64, 128, 2, 128), (128, 256, 2, 64), (256, 512, 1, 32), (512, 1, 1, 31)];
    let names = ["D1", "D2", "D3", "D4", "D5"];
    for (name, (ci, co, s, size)) in names.iter().zip(disc) {
        let g = ConvGeometry::conv2d(1, ci, [size, size], co, [4, 4], [s, s], [1, 1]);
        layers.push(Layer { name, forward: ConvOp::Conv2d, geometry: g });
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
    let (tm, tn) = parts[0].split_once('x').expect("tiling is TMxTN/WG[/sgS]");
    let subgroup_size =
        parts.get(2).map(|s| s.trim_start_matches("sg").parse().expect("subgroup size"));
    Tiling {
        tile_m: tm.parse().expect("tile_m"),
        tile_n: tn.parse().expect("tile_n"),
        workgroup_size: parts[1].parse().expect("workgroup size"),
        subgroup_size,
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

fn random_buffer(gpu: &Gpu, len: usize, seed: u32) -> wgpu::Buffer {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let data: Vec<f32> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) - 0.5
        })
        .collect();
    gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&data),
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
    }
}

/// Runs the kernel `reps` times in one pass and one submit and returns the wall time.
fn time_kernel(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    group: &wgpu::BindGroup,
    grid: [u32; 3],
    reps: u32,
) -> Duration {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        for _ in 0..reps {
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
    }
    let start = Instant::now();
    gpu.queue.submit([encoder.finish()]);
    gpu.device.poll(wgpu::PollType::wait_indefinitely()).expect("poll failed");
    start.elapsed()
}

fn measure(gpu: &Gpu, op: ConvOp, g: &ConvGeometry, tiling: &Tiling, samples: usize) -> f64 {
    let kernel = gemm::generate(op, g, tiling, false).expect("generate failed");
    let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&kernel.label),
        source: wgpu::ShaderSource::Wgsl(kernel.wgsl.as_str().into()),
    });
    let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&kernel.label),
        layout: None,
        module: &module,
        entry_point: Some(kernel.entry_point),
        compilation_options: Default::default(),
        cache: None,
    });
    let buffers: Vec<wgpu::Buffer> = kernel
        .bindings
        .iter()
        .enumerate()
        .map(|(i, &role)| random_buffer(gpu, operand_len(op, g, role), i as u32 + 1))
        .collect();
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
        .collect();
    let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });

    let once = time_kernel(gpu, &pipeline, &group, kernel.workgroups, 1);
    let reps = (0.3 / once.as_secs_f64().max(1e-6)).clamp(1.0, 200.0) as u32;
    let mut rates: Vec<f64> = (0..samples)
        .map(|_| {
            let t = time_kernel(gpu, &pipeline, &group, kernel.workgroups, reps);
            kernel.flops as f64 * f64::from(reps) / t.as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value =
        |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let layers_filter: Option<Vec<String>> =
        value("--layers").map(|s| s.split(',').map(String::from).collect());
    let ops = value("--ops").unwrap_or_else(|| "fwd,wgrad".to_string());
    let samples: usize = value("--samples").map_or(5, |s| s.parse().expect("--samples"));
    let extra: Vec<Tiling> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--tiling")
        .filter_map(|(i, _)| args.get(i + 1))
        .map(|s| parse_tiling(s))
        .collect();
    let naive = Tiling { tile_m: 1, tile_n: 1, workgroup_size: 64, subgroup_size: None };
    let skip_naive = args.iter().any(|a| a == "--no-naive");

    let gpu = open_gpu();
    println!(
        "{:<4} {:<29} {:>5} {:>6} {:>6} {:>7} {:>8} {:>8}  tiling",
        "layer", "op", "M", "N", "K", "GFLOP", "naive", "chosen"
    );
    for layer in pix2pix_layers() {
        if layers_filter.as_ref().is_some_and(|f| !f.iter().any(|n| n == layer.name)) {
            continue;
        }
        for (tag, op) in [("fwd", layer.forward), ("wgrad", weight_grad(layer.forward))] {
            if !ops.split(',').any(|o| o == tag) {
                continue;
            }
            let g = &layer.geometry;
            let chosen = gemm::choose_tiling(op, g, &gpu.profile);
            let kernel = gemm::generate(op, g, &chosen, false).expect("generate failed");
            let (m, n, k) = gemm_sizes(&kernel.wgsl);
            let naive_rate =
                if skip_naive { f64::NAN } else { measure(&gpu, op, g, &naive, samples) };
            let tilings: Vec<Tiling> = if extra.is_empty() { vec![chosen] } else { extra.clone() };
            for t in tilings {
                let rate = measure(&gpu, op, g, &t, samples);
                println!(
                    "{:<5} {:<29} {:>5} {:>6} {:>6} {:>7.3} {:>8.2} {:>8.2}  {}x{}/{}/{:?}",
                    layer.name,
                    op.name(),
                    m,
                    n,
                    k,
                    kernel.flops as f64 / 1e9,
                    naive_rate,
                    rate,
                    t.tile_m,
                    t.tile_n,
                    t.workgroup_size,
                    t.subgroup_size
                );
            }
        }
    }
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
