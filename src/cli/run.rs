use super::{DeviceArgs, ModelArgs};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Run the generator on these images (JPEG or PNG) and write a PNG for each
    #[arg(long, num_args = 1.., value_name = "IMAGE", conflicts_with = "train")]
    pub infer: Vec<PathBuf>,
    /// Folder for --infer outputs
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Checkpoint folder to load weights (and the architecture) from for --infer
    #[arg(long, value_name = "CHECKPOINT")]
    pub weights: Option<PathBuf>,
    /// Train on the named data set, found as NAME/train/ under the data folder
    #[arg(long, value_name = "NAME")]
    pub train: Option<String>,
    /// Data folder (default: $NETC_DATA, else ./data)
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Stop after this many epochs, counted from the start of the run
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<usize>,
    /// Stop after this many iterations, counted from the start of the run
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed for initialization, data order, augmentation and dropout
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder (default: runs/<model>-<dataset>/)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run whose checkpoint is in this folder
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Start from the parameters of this checkpoint whose names and shapes still match
    #[arg(long, value_name = "CHECKPOINT")]
    pub init_from: Option<PathBuf>,
    /// Accept an --init-from checkpoint even when none of its parameters match
    #[arg(long)]
    pub force: bool,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
    /// Recompile and continue with transferred weights when the model file changes
    #[arg(long)]
    pub watch: bool,
}

pub fn run(args: &RunArgs) -> miette::Result<ExitCode> {
    if !args.infer.is_empty() {
        return super::infer::run(args);
    }
    Err(miette::miette!("netc run is not built yet"))
}
