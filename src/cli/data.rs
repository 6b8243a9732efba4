use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download a public data set and unpack it under the data folder
    Fetch {
        /// Data set name, such as facades
        name: String,
        /// Folder to unpack into (default: $NETC_DATA, else ./data)
        #[arg(long)]
        data: Option<PathBuf>,
        /// Archive address to download from instead of the data set's public one
        #[arg(long)]
        url: Option<String>,
    },
}

pub fn run(_command: &DataCommand) -> miette::Result<ExitCode> {
    Err(miette::miette!("netc data fetch is not built yet"))
}
