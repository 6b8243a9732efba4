use super::{DeviceArgs, ModelArgs};
use std::process::ExitCode;

pub fn run(
    _model: &ModelArgs,
    _grad: bool,
    _watch: bool,
    _device: &DeviceArgs,
) -> miette::Result<ExitCode> {
    Err(miette::miette!("netc check is not built yet"))
}
