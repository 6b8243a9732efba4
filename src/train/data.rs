//! The paired-image data set: side-by-side image pairs turned into `[N, C, H, W]` batches.
//!
//! Needs a folder of JPEG or PNG files, each two square halves side by side (the pix2pix
//! layout: facades has the photo on the left and the label map on the right), and the
//! model's [`DataSpec`]. [`PairedDataset::load`] decodes and checks every file before it
//! returns, so a broken file stops a run before its first step. It caches the halves
//! already resized, as 8-bit RGB, so an epoch only crops, flips and converts.
//!
//! Guarantees afterwards: [`PairedDataset::batch`] is a pure function of the seed and the
//! [`DataCursor`]. The file order of an epoch and each sample's crop and flip are drawn from
//! ChaCha8 streams keyed by (seed, epoch, position), so a resumed run gets the same batches
//! as an uninterrupted one. Values are in [-1, 1]. An epoch has `len / batch` batches, and
//! the last partial batch is dropped because the graph's batch size is fixed.
//!
//! Cannot do yet: images with an alpha channel lose it (halves are converted to RGB or to
//! luma), and halves that are not square are rejected rather than resized unevenly.

use crate::ir::{DataSpec, Half};
use image::imageops::FilterType;
use image::{GrayImage, RgbImage};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// Data sets that `netc data fetch` can download.
pub const FETCHABLE: &[&str] = &["facades"];

/// File extensions read as images (compared case-insensitively).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// How many bad files one error lists before it only counts the rest.
const MAX_LISTED_FILES: usize = 10;

/// Stream tags that keep the order and augmentation streams of one seed apart.
const ORDER_STREAM: u64 = 0x6f72_6465_72; // "order"
const AUGMENT_STREAM: u64 = 0x6175_676d; // "augm"

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DataError {
    #[error("data set `{name}` not found: looked for {}", list_paths(looked))]
    #[diagnostic(help("{hint}"))]
    NotFound { name: String, looked: Vec<PathBuf>, hint: String },

    #[error("failed to read the data folder {}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no JPEG or PNG images in {}", dir.display())]
    #[diagnostic(help("put the image pairs directly in this folder, as NAME.jpg or NAME.png"))]
    Empty { dir: PathBuf },

    #[error("{} of {total} image files in {} are invalid:\n{}", files.len(), dir.display(), list_bad(files))]
    #[diagnostic(help(
        "each file must be a readable JPEG or PNG of two square halves side by side \
         (width = 2 x height); fix or remove the files listed"
    ))]
    BadFiles { dir: PathBuf, total: usize, files: Vec<BadFile> },

    #[error("{} holds {count} image pairs, fewer than the batch size {batch}", dir.display())]
    #[diagnostic(help("lower the `batch` of the model's train section or add image pairs"))]
    TooFewPairs { dir: PathBuf, count: usize, batch: usize },

    #[error("invalid data settings: {reason}")]
    #[diagnostic(help("fix the `data` settings of the model's train section"))]
    InvalidSpec { reason: String },
}

/// One file that failed validation, with the reason.
#[derive(Debug, Clone)]
pub struct BadFile {
    pub path: PathBuf,
    pub reason: String,
}

fn list_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

fn list_bad(files: &[BadFile]) -> String {
    let mut lines: Vec<String> = files
        .iter()
        .take(MAX_LISTED_FILES)
        .map(|f| format!("  {}: {}", f.path.display(), f.reason))
        .collect();
    if files.len() > MAX_LISTED_FILES {
        lines.push(format!("  and {} more", files.len() - MAX_LISTED_FILES));
    }
    lines.join("\n")
}

/// Origin of the data folder path, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSource {
    Flag,
    Env,
    Default,
}

/// The split folders of one data set. `train` exists; `val` and `test` when present.
#[derive(Clone, Debug)]
pub struct DataDirs {
    pub name: String,
    pub root: PathBuf,
    pub train: PathBuf,
    pub val: Option<PathBuf>,
    pub test: Option<PathBuf>,
}

/// Finds `NAME/train/` under `--data DIR`, else under `$NETC_DATA`, else under `./data`.
///
/// `env` is the value of `NETC_DATA`, passed in so that callers and tests decide where it
/// comes from. The error lists the folders it tried and how to fetch the data set.
pub fn locate(
    name: &str,
    flag: Option<&Path>,
    env: Option<OsString>,
) -> Result<DataDirs, DataError> {
    let (root, source) = match (flag, env) {
        (Some(dir), _) => (dir.to_path_buf(), RootSource::Flag),
        (None, Some(dir)) if !dir.is_empty() => (PathBuf::from(dir), RootSource::Env),
        _ => (PathBuf::from("data"), RootSource::Default),
    };

    let dir = root.join(name);
    if !dir.join("train").is_dir() {
        return Err(DataError::NotFound {
            name: name.to_string(),
            looked: vec![dir.join("train")],
            hint: not_found_hint(name, &root, source),
        });
    }

    let split = |s: &str| Some(dir.join(s)).filter(|p| p.is_dir());
    Ok(DataDirs {
        name: name.to_string(),
        root: root.clone(),
        train: dir.join("train"),
        val: split("val"),
        test: split("test"),
    })
}

fn not_found_hint(name: &str, root: &Path, source: RootSource) -> String {
    let from = match source {
        RootSource::Flag => "the --data folder".to_string(),
        RootSource::Env => "the folder $NETC_DATA names".to_string(),
        RootSource::Default => {
            "./data, the default when neither --data nor $NETC_DATA is set".to_string()
        }
    };
    let fetch = if FETCHABLE.contains(&name) {
        format!("download it with `netc data fetch {name} --data {}`, or ", root.display())
    } else {
        String::new()
    };
    format!(
        "{fetch}put the training pairs in {}; the data set is looked up under {from}",
        root.join(name).join("train").display()
    )
}

/// Position in the stream of batches: batch `batch` of epoch `epoch`, both from 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    pub epoch: usize,
    pub batch: usize,
}

/// One batch in NCHW layout, values in [-1, 1].
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
    pub input: Vec<f32>,
    pub target: Vec<f32>,
    /// Indices into [`PairedDataset::files`] of the batch's samples, in batch order.
    pub indices: Vec<usize>,
}

/// Whether samples get the random crop and flip of training, or a plain resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Resize to `resize`, random `crop`, random flip (when the spec enables them).
    Train,
    /// Resize straight to the crop size (or `resize` when there is no crop); no flip. This
    /// is how pix2pix evaluates, so validation images match the network's input size.
    Eval,
}

/// Both halves of one file, resized and stored as 8-bit pixels.
#[derive(Clone, Debug)]
struct Pair {
    input: Pixels,
    target: Pixels,
}

#[derive(Clone, Debug)]
enum Pixels {
    Rgb(RgbImage),
    Luma(GrayImage),
}

impl Pixels {
    fn side(&self) -> usize {
        match self {
            Pixels::Rgb(img) => img.width() as usize,
            Pixels::Luma(img) => img.width() as usize,
        }
    }

    /// Writes the `size` x `size` window at (`x0`, `y0`), mirrored when `flip`, into `out`
    /// as planar channels mapped from [0, 255] to [-1, 1].
    fn write_window(&self, x0: usize, y0: usize, size: usize, flip: bool, out: &mut [f32]) {
        let plane = size * size;
        for y in 0..size {
            for x in 0..size {
                let sx = if flip { x0 + size - 1 - x } else { x0 + x };
                let (sx, sy) = (sx as u32, (y0 + y) as u32);
                let at = y * size + x;
                match self {
                    Pixels::Rgb(img) => {
                        let p = img.get_pixel(sx, sy).0;
                        for c in 0..3 {
                            out[c * plane + at] = to_unit(p[c]);
                        }
                    }
                    Pixels::Luma(img) => out[at] = to_unit(img.get_pixel(sx, sy).0[0]),
                }
            }
        }
    }
}

fn to_unit(v: u8) -> f32 {
    f32::from(v) / 127.5 - 1.0
}

/// A validated, decoded paired-image folder.
#[derive(Clone, Debug)]
pub struct PairedDataset {
    dir: PathBuf,
    files: Vec<PathBuf>,
    pairs: Vec<Pair>,
    spec: DataSpec,
    mode: Mode,
    channels: usize,
    /// Side of the cached halves.
    stored: usize,
    /// Side of the samples a batch holds.
    sample: usize,
}

impl PairedDataset {
    /// Decodes and checks every image in `dir`, splits it into halves bound as `spec`
    /// sets, and caches the resized halves. `channels` is 3 (RGB) or 1 (luma).
    ///
    /// Every file is checked before this returns; the error lists each bad file.
    pub fn load(
        dir: &Path,
        spec: &DataSpec,
        mode: Mode,
        channels: usize,
    ) -> Result<Self, DataError> {
        check_spec(spec, channels)?;
        let files = list_images(dir)?;
        let results = decode_all(&files, spec, mode, channels);

        let mut pairs = Vec::with_capacity(files.len());
        let mut bad = Vec::new();
        for (path, result) in files.iter().zip(results) {
            match result {
                Ok(pair) => pairs.push(pair),
                Err(reason) => bad.push(BadFile { path: path.clone(), reason }),
            }
        }
        bad.extend(mismatched_sizes(&files, &pairs));
        if !bad.is_empty() {
            return Err(DataError::BadFiles {
                dir: dir.to_path_buf(),
                total: files.len(),
                files: bad,
            });
        }
        if mode == Mode::Train && pairs.len() < spec.batch {
            return Err(DataError::TooFewPairs {
                dir: dir.to_path_buf(),
                count: pairs.len(),
                batch: spec.batch,
            });
        }

        let stored = pairs[0].input.side();
        let sample = match mode {
            Mode::Train => spec.crop.unwrap_or(stored),
            Mode::Eval => stored,
        };
        tracing::debug!(dir = %dir.display(), pairs = pairs.len(), stored, sample, "loaded data");
        Ok(PairedDataset {
            dir: dir.to_path_buf(),
            files,
            pairs,
            spec: spec.clone(),
            mode,
            channels,
            stored,
            sample,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the image files, sorted by name. Batch indices point into this list.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Side of every sample in a batch (the `H` and `W` of [`Batch::shape`]).
    pub fn sample_size(&self) -> usize {
        self.sample
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Full batches per epoch; the last partial batch is dropped.
    pub fn batches_per_epoch(&self) -> usize {
        self.pairs.len() / self.spec.batch
    }

    /// Returns the cursor of the batch that global step `step` (from 0) trains on.
    pub fn cursor_at(&self, step: usize) -> DataCursor {
        let per_epoch = self.batches_per_epoch();
        DataCursor { epoch: step / per_epoch, batch: step % per_epoch }
    }

    /// Draws the file order of `epoch`, a permutation of `0..len` drawn from the seed.
    pub fn order(&self, seed: u64, epoch: usize) -> Vec<usize> {
        let mut rng = stream(seed, ORDER_STREAM, epoch as u64, 0);
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        for i in (1..order.len()).rev() {
            let j = below(&mut rng, i + 1);
            order.swap(i, j);
        }
        order
    }

    /// Builds the training batch at `cursor`: files in the epoch's shuffled order, each with its
    /// own random crop and flip, identical for both halves.
    pub fn batch(&self, seed: u64, cursor: DataCursor) -> Batch {
        let order = self.order(seed, cursor.epoch);
        let start = cursor.batch * self.spec.batch;
        let indices = order[start..start + self.spec.batch].to_vec();
        self.assemble(seed, cursor, indices)
    }

    /// Up to `count` samples in file order with no augmentation, for image grids. In
    /// [`Mode::Train`] it takes the centre crop.
    pub fn fixed_samples(&self, count: usize) -> Batch {
        let count = count.min(self.pairs.len());
        let indices: Vec<usize> = (0..count).collect();
        let offset = (self.stored - self.sample) / 2;
        self.fill(&indices, |_, _| (offset, offset, false))
    }

    fn assemble(&self, seed: u64, cursor: DataCursor, indices: Vec<usize>) -> Batch {
        let slack = self.stored - self.sample;
        let augment = self.mode == Mode::Train;
        let flip = augment && self.spec.flip;
        self.fill(&indices, |slot, _| {
            let position = (cursor.batch * self.spec.batch + slot) as u64;
            let mut rng = stream(seed, AUGMENT_STREAM, cursor.epoch as u64, position);
            let x0 = if augment { below(&mut rng, slack + 1) } else { slack / 2 };
            let y0 = if augment { below(&mut rng, slack + 1) } else { slack / 2 };
            let mirrored = flip && rng.next_u32() & 1 == 1;
            (x0, y0, mirrored)
        })
    }

    /// Builds a batch of `indices`, asking `window(slot, index)` for each sample's crop
    /// origin and flip.
    fn fill(
        &self,
        indices: &[usize],
        mut window: impl FnMut(usize, usize) -> (usize, usize, bool),
    ) -> Batch {
        let size = self.sample;
        let per_sample = self.channels * size * size;
        let mut input = vec![0.0; indices.len() * per_sample];
        let mut target = vec![0.0; indices.len() * per_sample];
        for (slot, &index) in indices.iter().enumerate() {
            let (x0, y0, flip) = window(slot, index);
            let range = slot * per_sample..(slot + 1) * per_sample;
            let pair = &self.pairs[index];
            pair.input.write_window(x0, y0, size, flip, &mut input[range.clone()]);
            pair.target.write_window(x0, y0, size, flip, &mut target[range]);
        }
        Batch {
            shape: [indices.len(), self.channels, size, size],
            input,
            target,
            indices: indices.to_vec(),
        }
    }
}

fn check_spec(spec: &DataSpec, channels: usize) -> Result<(), DataError> {
    let invalid = |reason: String| Err(DataError::InvalidSpec { reason });
    if channels != 1 && channels != 3 {
        return invalid(format!("images have 1 or 3 channels, but the network takes {channels}"));
    }
    if spec.batch == 0 {
        return invalid("batch is 0".to_string());
    }
    if spec.input == spec.target {
        let half = if spec.input == Half::Left { "left" } else { "right" };
        return invalid(format!("input and target are both the {half} half"));
    }
    match (spec.resize, spec.crop) {
        (Some(0), _) | (_, Some(0)) => invalid("resize and crop sizes must be positive".into()),
        (Some(r), Some(c)) if c > r => invalid(format!("crop {c} is larger than resize {r}")),
        _ => Ok(()),
    }
}

/// Files whose halves differ in size from the first file's, which happens when the spec
/// does not resize. Call only when every file decoded, so `files` and `pairs` line up.
fn mismatched_sizes(files: &[PathBuf], pairs: &[Pair]) -> Vec<BadFile> {
    if pairs.len() != files.len() || pairs.is_empty() {
        return Vec::new();
    }
    let first = pairs[0].input.side();
    let odd = files.iter().zip(pairs).filter(|(_, pair)| pair.input.side() != first);
    odd.map(|(path, pair)| {
        let side = pair.input.side();
        let reason = format!(
            "halves are {side}x{side}, but {} has {first}x{first}; set `resize` to accept both",
            files[0].display()
        );
        BadFile { path: path.clone(), reason }
    })
    .collect()
}

/// Lists the image files directly in `dir`, sorted by name. Other files are skipped.
fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let read_err = |source| DataError::ReadDir { dir: dir.to_path_buf(), source };
    let mut files = Vec::new();
    let mut skipped = 0usize;
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)));
        if is_image && path.is_file() {
            files.push(path);
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        tracing::debug!(dir = %dir.display(), skipped, "skipped entries that are not image files");
    }
    if files.is_empty() {
        return Err(DataError::Empty { dir: dir.to_path_buf() });
    }
    files.sort();
    Ok(files)
}

/// Decodes every file on all cores, keeping the input order.
fn decode_all(
    files: &[PathBuf],
    spec: &DataSpec,
    mode: Mode,
    channels: usize,
) -> Vec<Result<Pair, String>> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len());
    let chunk = files.len().div_ceil(workers.max(1));
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter().map(|f| decode_guarded(f, spec, mode, channels)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decode_guarded catches decoder panics"))
            .collect()
    })
}

/// Runs [`decode_pair`] and turns a decoder panic into an error for that file, because a
/// malformed image must not end the run.
fn decode_guarded(
    path: &Path,
    spec: &DataSpec,
    mode: Mode,
    channels: usize,
) -> Result<Pair, String> {
    let decode = || decode_pair(path, spec, mode, channels);
    std::panic::catch_unwind(decode).unwrap_or_else(|_| Err("the image decoder panicked".into()))
}

/// Decodes one file and returns its two halves resized for `mode`, or the reason it is
/// invalid.
fn decode_pair(path: &Path, spec: &DataSpec, mode: Mode, channels: usize) -> Result<Pair, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("failed to read: {e}"))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| format!("failed to read: {e}"))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !ends_with_jpeg_eoi(&bytes) {
        return Err("not a readable image: truncated JPEG (no end-of-image marker)".to_string());
    }
    let image = reader.decode().map_err(|e| format!("not a readable image: {e}"))?;

    let (width, height) = (image.width(), image.height());
    if height == 0 || width != 2 * height {
        return Err(format!(
            "is {width}x{height}, but a pair is two square halves side by side \
             (width = 2 x height)"
        ));
    }
    let side = height;

    // Train mode resizes to `resize` and crops later; eval mode resizes to the crop size.
    let target_side = match mode {
        Mode::Train => spec.resize,
        Mode::Eval => spec.crop.or(spec.resize),
    };
    let stored = target_side.map_or(side, |s| s as u32);
    if mode == Mode::Train && spec.resize.is_none() {
        if let Some(crop) = spec.crop.filter(|&c| c as u32 > side) {
            return Err(format!("halves are {side}x{side}, smaller than the crop {crop}"));
        }
    }

    let half = |x0: u32| -> Pixels {
        let view = image.crop_imm(x0, 0, side, side);
        let resized = if stored == side {
            view
        } else {
            view.resize_exact(stored, stored, FilterType::CatmullRom)
        };
        if channels == 1 {
            Pixels::Luma(resized.to_luma8())
        } else {
            Pixels::Rgb(resized.to_rgb8())
        }
    };
    let (left, right) = (half(0), half(side));
    let (input, target) = match spec.input {
        Half::Left => (left, right),
        Half::Right => (right, left),
    };
    Ok(Pair { input, target })
}

/// Checks whether a JPEG's end-of-image marker (`FF D9`) is among its last bytes. The JPEG decoder
/// fills a truncated file's missing rows with grey instead of failing, so a cut-off
/// download would otherwise train silently. Some encoders pad after the marker, hence the
/// window rather than the last two bytes.
fn ends_with_jpeg_eoi(bytes: &[u8]) -> bool {
    const TAIL: usize = 64;
    let tail = &bytes[bytes.len().saturating_sub(TAIL)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// A ChaCha8 generator for one (seed, stream, epoch, index) tuple.
fn stream(seed: u64, tag: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, word) in [seed, tag, epoch, index].into_iter().enumerate() {
        key[i * 8..(i + 1) * 8].copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// Draws a number in `0..n` from the top bits of a 64-bit draw (multiply-shift). Written out
/// rather than taken from `rand`, so data order never changes with a `rand` upgrade.
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

impl fmt::Display for DataCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {} batch {}", self.epoch, self.batch)
    }
}
