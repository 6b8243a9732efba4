//! Argument definitions and dispatch for every `netc` subcommand.

mod bench;
mod check;
mod data;
mod devices;
mod diff;
mod graph;
mod infer;
mod output;
mod run;
mod shaders;
mod watch;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "netc",
    version,
    about = "A declarative neural-network compiler: .net files to WGSL on wgpu"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log more: -v for debug, -vv for trace (RUST_LOG overrides it)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// `--set name=value` overrides of a model's `param` declarations.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// The `.net` model file
    pub file: PathBuf,
    /// Override a `param` of the model, as name=value; repeatable
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

/// The wgpu adapter choice shared by every command that runs kernels.
#[derive(Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// Adapter to run on: a substring of a name that `netc devices` lists
    #[arg(long, env = "NETC_ADAPTER", value_name = "NAME")]
    pub adapter: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse and shape-check a model and print its layer table
    Check {
        #[command(flatten)]
        model: ModelArgs,
        /// Check every gradient rule of the model against finite differences on the device
        #[arg(long)]
        grad: bool,
        /// Re-check the file every time it is saved
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Write the IR of a model as Graphviz or JSON
    Graph {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
        /// Output file (standard output when absent)
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Write every WGSL shader of a model into a folder, named after its layers
    Shaders {
        #[command(flatten)]
        model: ModelArgs,
        /// Folder to write the shaders into
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// List the wgpu adapters on this machine
    Devices,
    /// Train a model, or run its generator on images
    Run(run::RunArgs),
    /// Time training steps or forward passes on synthetic data
    Bench(bench::BenchArgs),
    /// Print the architecture and training changes between two versions of a model
    Diff {
        /// The `.net` file before the edit
        old: PathBuf,
        /// The `.net` file after the edit
        new: PathBuf,
        /// Override a `param` of both models, as name=value; repeatable
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Download and unpack data sets
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "netc=info",
        1 => "netc=debug",
        _ => "netc=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(netc::train::progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

pub fn dispatch(cli: Cli) -> miette::Result<ExitCode> {
    match cli.command {
        Command::Check { model, grad, watch, device } => check::run(&model, grad, watch, &device),
        Command::Graph { model, format, output } => graph::run(&model, format, output.as_deref()),
        Command::Shaders { model, output, device } => shaders::run(&model, &output, &device),
        Command::Devices => devices::run(),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Diff { old, new, set } => diff::run(&old, &new, &set),
        Command::Data { command } => data::run(&command),
    }
}
