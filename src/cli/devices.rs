use std::process::ExitCode;

pub fn run() -> miette::Result<ExitCode> {
    Err(miette::miette!("netc devices is not built yet"))
}
