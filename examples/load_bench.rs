//! Times how fast the adapter's shaders load values from a storage buffer, a uniform buffer
//! and a texture, the choice behind texture operands for the convolutions on lavapipe.
//!
//! Each kernel sums 16 `vec4` values per invocation from a 64 KiB table (so the data stays
//! in cache and the figure is the cost of the load instructions) and writes one `f32`.
//! Usage: `cargo run --release --example load_bench`. Prints GB/s of values loaded.

use std::time::Instant;
use wgpu::util::DeviceExt;

/// Workgroups of 64 invocations per dispatch, each invocation loading 16 `vec4`.
const WORKGROUPS: u32 = 4096;
const LOADED_BYTES: f64 = (WORKGROUPS as f64) * 64.0 * 16.0 * 16.0;

const SUM: &str = "
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    var s = vec4(0.0);
    for (var i = 0u; i < 16u; i++) {
        s += load((g.x * 16u + i) & 4095u);
    }
    out[g.x] = s.x + s.y + s.z + s.w;
}
";

const KINDS: [(&str, &str); 5] = [
    (
        "storage f32 (four loads a vec4)",
        "@group(0) @binding(0) var<storage, read> table: array<f32>;
         fn load(i: u32) -> vec4<f32> {
             return vec4(table[4u * i], table[4u * i + 1u], table[4u * i + 2u], table[4u * i + 3u]);
         }",
    ),
    (
        "storage vec4",
        "@group(0) @binding(0) var<storage, read> table: array<vec4<f32>>;
         fn load(i: u32) -> vec4<f32> { return table[i]; }",
    ),
    (
        "uniform vec4",
        "@group(0) @binding(0) var<uniform> table: array<vec4<f32>, 4096>;
         fn load(i: u32) -> vec4<f32> { return table[i]; }",
    ),
    (
        "texture rgba32float",
        "@group(0) @binding(0) var table: texture_2d<f32>;
         fn load(i: u32) -> vec4<f32> { return textureLoad(table, vec2(i & 1023u, i >> 10u), 0); }",
    ),
    (
        "texture r32float (four fetches a vec4)",
        "@group(0) @binding(0) var table: texture_2d<f32>;
         fn texel(j: u32) -> f32 { return textureLoad(table, vec2(j & 4095u, j >> 12u), 0).x; }
         fn load(i: u32) -> vec4<f32> {
             return vec4(texel(4u * i), texel(4u * i + 1u), texel(4u * i + 2u), texel(4u * i + 3u));
         }",
    ),
];

fn main() {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("no adapter; install mesa-vulkan-drivers for lavapipe");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("request_device failed");
    println!("adapter: {} ({})", adapter.get_info().name, adapter.get_info().driver_info);

    let values: Vec<f32> = (0..16_384).map(|i| (i % 97) as f32 * 0.01).collect();
    let table = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("table"),
        contents: bytemuck::cast_slice(&values),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
    });
    let size = wgpu::Extent3d { width: 1024, height: 4, depth_or_array_layers: 1 };
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("table"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        texture.as_image_copy(),
        bytemuck::cast_slice(&values),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(16 * 1024),
            rows_per_image: None,
        },
        size,
    );
    let view = texture.create_view(&Default::default());
    let single_size = wgpu::Extent3d { width: 4096, height: 4, depth_or_array_layers: 1 };
    let single = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("table r32"),
        size: single_size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::R32Float,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        single.as_image_copy(),
        bytemuck::cast_slice(&values),
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * 4096),
            rows_per_image: None,
        },
        single_size,
    );
    let single_view = single.create_view(&Default::default());
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("out"),
        size: u64::from(WORKGROUPS) * 64 * 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });

    for (name, declaration) in KINDS {
        let source = format!(
            "{declaration}\n@group(0) @binding(1) var<storage, read_write> out: array<f32>;\n{SUM}"
        );
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let resource = if name.starts_with("texture r32") {
            wgpu::BindingResource::TextureView(&single_view)
        } else if name.starts_with("texture") {
            wgpu::BindingResource::TextureView(&view)
        } else {
            table.as_entire_binding()
        };
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(name),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource },
                wgpu::BindGroupEntry { binding: 1, resource: out.as_entire_binding() },
            ],
        });
        let mut times: Vec<f64> = (0..7)
            .map(|_| {
                let mut encoder = device.create_command_encoder(&Default::default());
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &group, &[]);
                    pass.dispatch_workgroups(WORKGROUPS, 1, 1);
                }
                let start = Instant::now();
                queue.submit([encoder.finish()]);
                device.poll(wgpu::PollType::wait_indefinitely()).expect("poll failed");
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("{name:<32} {:8.3} ms {:7.2} GB/s", median * 1e3, LOADED_BYTES / median / 1e9);
    }
}
