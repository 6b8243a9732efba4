//! `netc shaders`: writes every WGSL shader of a model into a folder, one file per
//! kernel, named after the layer it implements.

use super::{DeviceArgs, ModelArgs};
use miette::{Context, IntoDiagnostic};
use netc::codegen::dump::{module_shaders, write_files};
use netc::codegen::Target;
use netc::frontend;
use netc::runtime::Gpu;
use std::path::Path;
use std::process::ExitCode;

pub fn run(model: &ModelArgs, output: &Path, device: &DeviceArgs) -> miette::Result<ExitCode> {
    super::output::check_folder("-o", output, "netc shaders", "its WGSL files")?;
    let module = frontend::compile_file(&model.file, &model.set).map_err(miette::Report::new)?;

    // The shaders are specialised to the adapter's limits; without one, to WebGPU's defaults.
    let target = match Gpu::open(device.adapter.as_deref()) {
        Ok(gpu) => gpu.target(),
        Err(error) if device.adapter.is_some() => return Err(error.into()),
        Err(error) => {
            tracing::warn!(%error, "no adapter opened; writing shaders for the WebGPU default limits");
            Target::default()
        }
    };
    let files = module_shaders(&module, &target)?;
    write_files(output, &files)
        .into_diagnostic()
        .wrap_err_with(|| format!("failed to write shaders to {}", output.display()))?;
    println!("wrote {} shaders to {}", files.len(), output.display());
    Ok(ExitCode::SUCCESS)
}
