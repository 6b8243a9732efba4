use super::{DeviceArgs, ModelArgs};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Timed iterations after the warm-up
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Time generator forward passes instead of training steps
    #[arg(long)]
    pub infer: bool,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &BenchArgs) -> miette::Result<ExitCode> {
    Err(miette::miette!("netc bench is not built yet"))
}
