//! The run folder's human-readable outputs: `losses.csv`, image grids, the loss plot and
//! `index.html`.
//!
//! `losses.csv` has the header `step,epoch,lr,<one column per loss term>,seconds_per_step`
//! and gains one row per logged step. Steps and epochs count from 1. Rows are appended and flushed as they come, so a
//! crash can cut only the last row. [`LossLog::resume`] drops every row after the
//! checkpoint's step (and any cut row) so the resumed run continues the file without
//! duplicates. Grids, the plot and the page are written to a temporary file and renamed.
//! `index.html` refers to the PNGs by relative path, so it opens from disk with no server.

mod font;
mod grid;
mod plot;

pub use grid::{grid, Panel};
pub use plot::{plot, Series};

use crate::train::atomic::write_atomic;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const LOSSES_FILE: &str = "losses.csv";
pub const PLOT_FILE: &str = "losses.png";
pub const INDEX_FILE: &str = "index.html";
/// Folder of the image grids inside the run folder.
pub const IMAGES_DIR: &str = "images";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ReportError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} has the columns `{found}`, but this run logs `{expected}`", path.display())]
    #[diagnostic(help(
        "resume with the model the run was started with, or start a new run with --out"
    ))]
    Columns { path: PathBuf, found: String, expected: String },
}

/// One row of `losses.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct LossRow {
    /// Iterations completed, from 1.
    pub step: u64,
    /// The epoch of the step, from 1, as the progress bar and `index.html` count it.
    pub epoch: usize,
    pub lr: f32,
    /// One value per loss column, in column order.
    pub losses: Vec<f32>,
    pub seconds_per_step: f64,
}

/// The appending writer of `losses.csv`.
pub struct LossLog {
    path: PathBuf,
    columns: Vec<String>,
    file: BufWriter<File>,
}

impl LossLog {
    /// Starts a new `losses.csv` in `run_dir` with the header for `columns`, replacing any
    /// file there.
    pub fn create(run_dir: &Path, columns: &[String]) -> Result<Self, ReportError> {
        let path = run_dir.join(LOSSES_FILE);
        let header = format!("{}\n", header(columns));
        write_atomic(&path, header.as_bytes()).map_err(|source| write_err(&path, source))?;
        Self::open_append(path, columns)
    }

    /// Continues the `losses.csv` of a resumed run: keeps the rows up to and including
    /// `step` and drops the rest. A missing file is started afresh.
    pub fn resume(run_dir: &Path, columns: &[String], step: u64) -> Result<Self, ReportError> {
        let path = run_dir.join(LOSSES_FILE);
        if !path.exists() {
            return Self::create(run_dir, columns);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| read_err(&path, source))?;
        let expected = header(columns);
        let found = text.lines().next().unwrap_or_default();
        if found != expected {
            return Err(ReportError::Columns { path, found: found.to_string(), expected });
        }

        let mut kept = format!("{expected}\n");
        for line in text.lines().skip(1) {
            let parsed = parse_row(line, columns.len());
            if parsed.is_some_and(|row| row.step <= step) {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        write_atomic(&path, kept.as_bytes()).map_err(|source| write_err(&path, source))?;
        Self::open_append(path, columns)
    }

    fn open_append(path: PathBuf, columns: &[String]) -> Result<Self, ReportError> {
        let file = OpenOptions::new().append(true).open(&path).map_err(|s| write_err(&path, s))?;
        Ok(LossLog { path, columns: columns.to_vec(), file: BufWriter::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Appends one row and flushes it to the file.
    pub fn append(&mut self, row: &LossRow) -> Result<(), ReportError> {
        let mut line = format!("{},{},{}", row.step, row.epoch, row.lr);
        for value in &row.losses {
            line.push_str(&format!(",{value}"));
        }
        line.push_str(&format!(",{:.6}\n", row.seconds_per_step));
        self.file.write_all(line.as_bytes()).map_err(|s| write_err(&self.path, s))?;
        self.file.flush().map_err(|s| write_err(&self.path, s))
    }
}

fn header(columns: &[String]) -> String {
    let mut names = vec!["step", "epoch", "lr"];
    names.extend(columns.iter().map(String::as_str));
    names.push("seconds_per_step");
    names.join(",")
}

/// Parses a data row with `losses` loss columns, or `None` for a malformed one.
fn parse_row(line: &str, losses: usize) -> Option<LossRow> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() != losses + 4 {
        return None;
    }
    let values: Option<Vec<f32>> = fields[3..3 + losses].iter().map(|f| f.parse().ok()).collect();
    Some(LossRow {
        step: fields[0].parse().ok()?,
        epoch: fields[1].parse().ok()?,
        lr: fields[2].parse().ok()?,
        losses: values?,
        seconds_per_step: fields[3 + losses].parse().ok()?,
    })
}

/// Reads `losses.csv`: the loss column names and every well-formed row.
pub fn read_losses(path: &Path) -> Result<(Vec<String>, Vec<LossRow>), ReportError> {
    let text = std::fs::read_to_string(path).map_err(|source| read_err(path, source))?;
    let mut lines = text.lines();
    let names: Vec<String> =
        lines.next().unwrap_or_default().split(',').map(String::from).collect();
    let columns: Vec<String> =
        if names.len() >= 4 { names[3..names.len() - 1].to_vec() } else { Vec::new() };
    let rows = lines.filter_map(|line| parse_row(line, columns.len())).collect();
    Ok((columns, rows))
}

/// Draws the loss curves of `losses.csv` in `run_dir` into `losses.png`.
pub fn write_plot(run_dir: &Path) -> Result<PathBuf, ReportError> {
    let (columns, rows) = read_losses(&run_dir.join(LOSSES_FILE))?;
    let series: Vec<Series<'_>> = columns
        .iter()
        .enumerate()
        .map(|(i, name)| Series {
            name,
            points: rows.iter().map(|r| (r.step as f64, f64::from(r.losses[i]))).collect(),
        })
        .collect();
    let path = run_dir.join(PLOT_FILE);
    write_png(&path, &plot(&series))?;
    Ok(path)
}

/// Writes an input | output | target grid for `step` as `images/step-NNNNNNNN.png`.
pub fn write_grid(
    run_dir: &Path,
    step: u64,
    rows: &[Vec<Panel<'_>>],
) -> Result<PathBuf, ReportError> {
    let dir = run_dir.join(IMAGES_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| write_err(&dir, source))?;
    let path = dir.join(format!("step-{step:08}.png"));
    write_png(&path, &grid(&["input", "output", "target"], rows))?;
    Ok(path)
}

/// Encodes `image` as PNG and replaces `path` with it.
pub fn write_png(path: &Path, image: &image::RgbImage) -> Result<(), ReportError> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| write_err(path, std::io::Error::other(e)))?;
    write_atomic(path, &bytes).map_err(|source| write_err(path, source))
}

/// Run details for `index.html`, besides the files it finds in the run folder.
pub struct PageInfo<'a> {
    pub model: &'a str,
    pub dataset: &'a str,
    pub step: u64,
    /// The step the run stops at.
    pub total_steps: u64,
    /// The epoch of `step`, from 0. The page shows it from 1.
    pub epoch: usize,
    pub overrides: &'a [String],
    pub seed: u64,
    /// The newest checkpoint folder, relative to the run folder.
    pub checkpoint: Option<String>,
}

/// Writes `index.html`: the run's settings, the latest losses, the loss plot and every
/// image grid in `images/`, newest first.
pub fn write_index(run_dir: &Path, info: &PageInfo<'_>) -> Result<PathBuf, ReportError> {
    let losses = run_dir.join(LOSSES_FILE);
    let (columns, rows) =
        if losses.exists() { read_losses(&losses)? } else { (Vec::new(), Vec::new()) };
    let grids = list_grids(&run_dir.join(IMAGES_DIR));
    let html = render_index(info, &columns, rows.last(), &grids, run_dir.join(PLOT_FILE).exists());
    let path = run_dir.join(INDEX_FILE);
    write_atomic(&path, html.as_bytes()).map_err(|source| write_err(&path, source))?;
    Ok(path)
}

/// Grid file names in `dir`, newest step first.
fn list_grids(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-") && n.ends_with(".png"))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    names
}

fn render_index(
    info: &PageInfo<'_>,
    columns: &[String],
    last: Option<&LossRow>,
    grids: &[String],
    has_plot: bool,
) -> String {
    let title = escape(&format!("{} on {}", info.model, info.dataset));
    let mut html = String::new();
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // NOTE: the page reloads itself every minute so an open tab follows a running job.
    html.push_str("<meta http-equiv=\"refresh\" content=\"60\">\n");
    html.push_str(&format!("<title>{title}</title>\n"));
    html.push_str(
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}\
        table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;\
        border-bottom:1px solid #ddd}img{max-width:100%}</style>\n</head>\n<body>\n",
    );
    html.push_str(&format!("<h1>{title}</h1>\n<table>\n"));

    let mut setting = |name: &str, value: String| {
        html.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(name), escape(&value)));
    };
    setting("step", format!("{} of {}", info.step, info.total_steps));
    setting("epoch", (info.epoch + 1).to_string());
    setting("seed", info.seed.to_string());
    let overrides =
        if info.overrides.is_empty() { "none".to_string() } else { info.overrides.join(" ") };
    setting("--set", overrides);
    if let Some(checkpoint) = &info.checkpoint {
        setting("checkpoint", checkpoint.clone());
    }
    if let Some(row) = last {
        setting("lr", row.lr.to_string());
        for (name, value) in columns.iter().zip(&row.losses) {
            setting(name, format!("{value:.5}"));
        }
        setting("seconds per step", format!("{:.3}", row.seconds_per_step));
    }
    html.push_str("</table>\n");

    html.push_str(&format!(
        "<h2>Losses</h2>\n<p><a href=\"{LOSSES_FILE}\">{LOSSES_FILE}</a></p>\n"
    ));
    if has_plot {
        html.push_str(&format!("<img src=\"{PLOT_FILE}\" alt=\"loss curves\">\n"));
    }
    html.push_str("<h2>Images (input | output | target)</h2>\n");
    if grids.is_empty() {
        html.push_str("<p>No image grids yet.</p>\n");
    }
    for name in grids {
        let name = escape(name);
        let step =
            name.trim_start_matches("step-").trim_end_matches(".png").trim_start_matches('0');
        let step = if step.is_empty() { "0" } else { step };
        html.push_str(&format!(
            "<h3>step {step}</h3>\n<img src=\"{IMAGES_DIR}/{name}\" alt=\"grid at step {step}\">\n"
        ));
    }
    html.push_str("</body>\n</html>\n");
    html
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn read_err(path: &Path, source: std::io::Error) -> ReportError {
    ReportError::Read { path: path.to_path_buf(), source }
}

fn write_err(path: &Path, source: std::io::Error) -> ReportError {
    ReportError::Write { path: path.to_path_buf(), source }
}
