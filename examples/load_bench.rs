//! Times how fast the adapter's shaders load values from a storage buffer, a uniform buffer
//! and a texture: the measurement behind texture operands on CPU adapters.
//!
//! Each kernel sums 16 `vec4` values per invocation from a 64 KiB table (so the data stays
//! in cache and the figure is the cost of the load instructions) and writes one `f32`.
//! Usage: `cargo run --release --example load_bench`. Prints GB/s of values loaded, the
//! fastest of 7 dispatches.

use netc::runtime::probe::{load_rate, LoadKind};

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
    for kind in LoadKind::ALL {
        let rate = load_rate(&device, &queue, kind, 7);
        println!("{:<40} {rate:7.2} GB/s", kind.describe());
    }
}
