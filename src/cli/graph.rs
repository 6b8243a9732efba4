//! `netc graph`: writes the IR of a model as Graphviz DOT or JSON, to a file or to
//! standard output.

use super::{GraphFormat, ModelArgs};
use miette::{Context, IntoDiagnostic};
use netc::frontend;
use netc::ir::export;
use netc::train::atomic::temp_file_in;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub fn run(
    model: &ModelArgs,
    format: GraphFormat,
    output: Option<&Path>,
) -> miette::Result<ExitCode> {
    if let Some(path) = output {
        let extension = match format {
            GraphFormat::Dot => "dot",
            GraphFormat::Json => "json",
        };
        super::output::check_file("-o", path, "netc graph", &model.file, extension)?;
    }
    let module = frontend::compile_file(&model.file, &model.set).map_err(miette::Report::new)?;
    let text = match format {
        GraphFormat::Dot => export::module_to_dot(&module),
        GraphFormat::Json => export::module_to_json(&module),
    };
    match output {
        Some(path) => write_atomically(path, text.as_bytes())?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .into_diagnostic()
                .wrap_err("failed to write to standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`, so a
/// reader never sees a half-written file.
fn write_atomically(path: &Path, bytes: &[u8]) -> miette::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let context = || format!("failed to write {}", path.display());
    let mut file = temp_file_in(dir).into_diagnostic().wrap_err_with(context)?;
    file.write_all(bytes).into_diagnostic().wrap_err_with(context)?;
    file.persist(path).map_err(|e| e.error).into_diagnostic().wrap_err_with(context)?;
    tracing::info!(path = %path.display(), bytes = bytes.len(), "wrote the graph");
    Ok(())
}
