//! Checks of the paths that `-o` and `--out` name, made before any work starts, so that a
//! wrong path fails at once and no user file is replaced by an output.

use std::path::Path;

/// Rejects `path` as the folder that `command` writes `contents` into when it is a file.
pub fn check_folder(flag: &str, path: &Path, command: &str, contents: &str) -> miette::Result<()> {
    if !path.exists() || path.is_dir() {
        return Ok(());
    }
    Err(miette::miette!(
        help = format!(
            "pass a folder to {flag}, either an existing one or a new path that netc creates. \
             {} is left unchanged",
            path.display()
        ),
        "{flag} {} is a file, but {command} writes {contents} into a folder",
        path.display()
    ))
}

/// Rejects `path` as the one file that `command` writes when it is a folder or the model
/// file `model` itself. Any other existing file is replaced, as `-o` usually does. The
/// help suggests a file named after the model with `extension`.
pub fn check_file(
    flag: &str,
    path: &Path,
    command: &str,
    model: &Path,
    extension: &str,
) -> miette::Result<()> {
    if path.is_dir() {
        let name = model.with_extension(extension);
        let example = path.join(name.file_name().unwrap_or_default());
        return Err(miette::miette!(
            help = format!("name a file, such as {flag} {}", example.display()),
            "{flag} {} is a folder, but {command} writes one file",
            path.display()
        ));
    }
    if is_same_file(path, model) {
        return Err(miette::miette!(
            help = format!("choose another path for {flag}"),
            "{flag} {} is the model file, which the output would replace",
            path.display()
        ));
    }
    Ok(())
}

/// Returns whether two paths name the same existing file.
pub fn is_same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
