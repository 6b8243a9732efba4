//! `netc diff OLD NEW`: compiles both versions of a model with the same `--set`
//! overrides and prints the architecture change.

use netc::edit::diff;
use netc::frontend;
use std::path::Path;
use std::process::ExitCode;

pub fn run(old: &Path, new: &Path, set: &[String]) -> miette::Result<ExitCode> {
    let before = frontend::compile_file(old, set);
    let after = frontend::compile_file(new, set);
    let (before, after) = match (before, after) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(a), Err(b)) => {
            // Both files have errors: show the old file's here, the new file's on return,
            // and one copy when both are the same file.
            let (a, b) = (miette::Report::new(a), miette::Report::new(b));
            if format!("{a:?}") != format!("{b:?}") {
                eprintln!("{a:?}");
            }
            return Err(b);
        }
        (Err(e), _) | (_, Err(e)) => return Err(miette::Report::new(e)),
    };
    print!("{}", diff::render(&diff::diff(&before, &after)));
    Ok(ExitCode::SUCCESS)
}
