use std::path::Path;
use std::process::ExitCode;

pub fn run(_old: &Path, _new: &Path, _set: &[String]) -> miette::Result<ExitCode> {
    Err(miette::miette!("netc diff is not built yet"))
}
