//! `netc check --watch`: checks the model, then checks it again after every save and
//! prints the layer table or the diagnostics each time.

use super::ModelArgs;
use netc::edit::watch::FileWatcher;
use netc::frontend;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

/// Runs until interrupted. Only an error of the watch itself ends it; an error in the
/// model is printed and the watch goes on.
pub fn check(model: &ModelArgs) -> miette::Result<ExitCode> {
    // Start the watch before the first check, so a save during that check is not lost.
    let watcher = FileWatcher::new(&model.file)?;
    eprintln!("watching {} for changes; press Ctrl-C to stop", model.file.display());
    let mut last: Option<Vec<u8>> = None;
    let mut count = 0usize;
    loop {
        match std::fs::read(&model.file) {
            // Saving without a change, or touching the file, prints nothing new.
            Ok(bytes) if last.as_ref() == Some(&bytes) => {}
            Ok(bytes) => {
                count += 1;
                check_once(model, &bytes, count);
                last = Some(bytes);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if last.take().is_some() || count == 0 {
                    eprintln!("{} is missing; waiting for it to be saved", model.file.display());
                }
            }
            Err(error) => {
                eprintln!(
                    "cannot read {}: {error}; waiting for the next save",
                    model.file.display()
                );
                last = None;
            }
        }
        watcher.wait_for_change(None)?;
    }
}

/// Compiles `bytes` as the model's text and prints the table or the diagnostics.
fn check_once(model: &ModelArgs, bytes: &[u8], count: usize) {
    let started = Instant::now();
    let name = model.file.display().to_string();
    let text = std::str::from_utf8(bytes);
    let result = match text {
        Ok(text) => frontend::compile_source(&name, text, &model.set),
        // The file's own read reports the invalid byte with the usual message.
        Err(_) => frontend::compile_file(&model.file, &model.set),
    };
    let sizes = match (&result, text) {
        (Ok(_), Ok(text)) => frontend::sizes::legal_input_sizes(text, &model.set),
        _ => Vec::new(),
    };
    let elapsed = started.elapsed().as_millis();

    let mut stdout = std::io::stdout().lock();
    if stdout.is_terminal() {
        // Clear the screen and move the cursor home, so each check replaces the last.
        let _ = write!(stdout, "\x1b[2J\x1b[H");
    }
    match result {
        Ok(module) => {
            let _ = writeln!(stdout, "check {count}: {name} is valid ({elapsed} ms)");
            let _ = write!(stdout, "{}", super::check::render(&module, &sizes));
        }
        Err(diagnostics) => {
            let errors = diagnostics.len();
            let noun = if errors == 1 { "error" } else { "errors" };
            let _ = writeln!(stdout, "check {count}: {name} has {errors} {noun} ({elapsed} ms)");
            let _ = stdout.flush();
            eprintln!("{:?}", miette::Report::new(diagnostics));
        }
    }
    // NOTE: standard output is block-buffered when it is a pipe, and a watch must show
    // each result as soon as it is ready.
    let _ = stdout.flush();
}
