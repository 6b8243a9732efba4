//! `netc devices`: lists the wgpu adapters in the order the default choice prefers them.

use netc::runtime::{list_adapters, LAVAPIPE_HINT};
use std::process::ExitCode;

pub fn run() -> miette::Result<ExitCode> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        return Err(miette::miette!(help = LAVAPIPE_HINT, "no GPU adapter found"));
    }
    for (index, adapter) in adapters.iter().enumerate() {
        let default = if index == 0 { " (default)" } else { "" };
        println!("{}{default}", adapter.name);
        println!(
            "  type {}, backend {}, driver {}",
            adapter.device_type, adapter.backend, adapter.driver
        );
        println!(
            "  max storage binding {} MiB, {} storage buffers per stage, {} workgroups per dimension, subgroups {}",
            adapter.max_storage_buffer_binding_size >> 20,
            adapter.max_storage_buffers_per_shader_stage,
            adapter.max_compute_workgroups_per_dimension,
            if adapter.subgroups { "yes" } else { "no" },
        );
    }
    println!("\nChoose one with --adapter NAME or NETC_ADAPTER=NAME (a substring of its name).");
    Ok(ExitCode::SUCCESS)
}
