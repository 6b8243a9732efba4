use super::{DeviceArgs, ModelArgs};
use std::path::Path;
use std::process::ExitCode;

pub fn run(_model: &ModelArgs, _output: &Path, _device: &DeviceArgs) -> miette::Result<ExitCode> {
    Err(miette::miette!("netc shaders is not built yet"))
}
