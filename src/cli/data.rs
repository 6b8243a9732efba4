//! `netc data fetch NAME`: downloads and unpacks a public data set into the data folder.

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use netc::train::fetch::{fetch, Fetched};
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

pub fn run(command: &DataCommand) -> miette::Result<ExitCode> {
    let DataCommand::Fetch { name, data, url } = command;
    let root = data_root(data.as_ref());
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
        )
        .expect("the progress template is valid")
        .progress_chars("=> "),
    );
    progress.set_message(format!("downloading {name}"));

    let fetched = fetch(name, url.as_deref(), &root, &progress);
    progress.finish_and_clear();
    match fetched? {
        Fetched::AlreadyPresent { dir } => {
            println!(
                "{name} is already in {}; remove that folder to fetch it again",
                dir.display()
            );
        }
        Fetched::Unpacked { dir, files, bytes } => {
            let megabytes = bytes as f64 / 1e6;
            println!("unpacked {files} files ({megabytes:.1} MB download) into {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the data folder: `--data`, else `$NETC_DATA`, else `./data`.
pub fn data_root(flag: Option<&PathBuf>) -> PathBuf {
    match (flag, std::env::var_os("NETC_DATA")) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from("data"),
    }
}
