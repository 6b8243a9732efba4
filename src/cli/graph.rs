use super::{GraphFormat, ModelArgs};
use std::path::Path;
use std::process::ExitCode;

pub fn run(
    _model: &ModelArgs,
    _format: GraphFormat,
    _output: Option<&Path>,
) -> miette::Result<ExitCode> {
    Err(miette::miette!("netc graph is not built yet"))
}
