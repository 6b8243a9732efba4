//! The training progress bar, and a log writer that draws log lines above it.
//!
//! Only one bar is shown at a time. [`show`] registers it, and [`LogWriter`] (installed as
//! the tracing writer by the CLI) hides the bar while it writes a line to stderr, so logs
//! and the bar never overwrite each other. With no bar registered, it writes straight to
//! stderr.
//!
//! NOTE: code must not log from inside `suspend` of the registered bar. The bar's lock is
//! held there, so the log line's own `suspend` would wait for it forever.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::sync::Mutex;

/// The bar that log lines must not overwrite.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Creates the training bar at `position` of `total` steps, or a hidden one when `quiet`,
/// and registers it for [`LogWriter`].
pub fn training_bar(quiet: bool, position: u64, total: u64, per_epoch: u64) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] step {pos}/{len} {msg} {per_sec}, {eta} left",
    )
    .expect("the progress template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_position(position);
    bar.reset_eta();
    set_epoch(&bar, position, total, per_epoch);
    show(&bar);
    bar
}

/// Shows "epoch E/N" for the step after `step` in the bar's prefix.
pub fn set_epoch(bar: &ProgressBar, step: u64, total: u64, per_epoch: u64) {
    let per_epoch = per_epoch.max(1);
    let epoch = (step.min(total.saturating_sub(1)) / per_epoch) + 1;
    bar.set_prefix(format!("epoch {epoch}/{}", total.div_ceil(per_epoch)));
}

/// Registers `bar` as the one log lines are drawn above.
pub fn show(bar: &ProgressBar) {
    if let Ok(mut active) = ACTIVE.lock() {
        *active = Some(bar.clone());
    }
}

/// Clears the bar from the terminal and unregisters it.
pub fn finish(bar: &ProgressBar) {
    bar.finish_and_clear();
    if let Ok(mut active) = ACTIVE.lock() {
        *active = None;
    }
}

/// A tracing writer to stderr that suspends the registered progress bar for each line.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().ok().and_then(|active| active.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}
