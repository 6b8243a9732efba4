//! The image data set: a folder of images turned into `[N, C, H, W]` batches.
//!
//! Paired data is a folder of JPEG or PNG files, each two square halves side by side (the
//! pix2pix layout: facades has the photo on the left and the label map on the right), and
//! the model's [`DataSpec`] sets which half is the input. Labeled data
//! (`DataSpec::labeled`) is one subfolder per class, class `k` being the `k`-th folder by
//! name, and the target is the class index. [`ImageDataset::load`] decodes and checks
//! every file before it returns, so a broken file stops a run before its first step. It
//! caches the images already resized, as 8-bit pixels, so an epoch only crops, flips and
//! converts.
//!
//! Guarantees afterwards: [`ImageDataset::batch`] is a pure function of the seed and the
//! [`DataCursor`]. The file order of an epoch and each sample's crop and flip are drawn from
//! ChaCha8 streams keyed by (seed, epoch, position), so a resumed run gets the same batches
//! as an uninterrupted one. Image values are in [-1, 1]. An epoch has `len / batch`
//! batches, and the last partial batch is dropped because the graph's batch size is fixed.
//!
//! Cannot do yet: images with an alpha channel lose it (they are converted to RGB or to
//! luma), and paired halves that are not square are rejected rather than resized unevenly.

mod decode;

pub use decode::read_image;

use crate::ir::{DataSpec, Half};
use decode::{
    decode_all, decode_labeled, decode_pair, list_images, list_labeled, mismatched_sizes, Sample,
    Target,
};
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

    #[error("{} has {found} class folders, but the model's data has {classes} classes", dir.display())]
    #[diagnostic(help("put each class's images in its own subfolder (class k is the k-th folder by name), or change `classes`"))]
    ClassCount { dir: PathBuf, found: usize, classes: usize },

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
    // `netc data fetch` finds $NETC_DATA and ./data itself; only a --data folder needs
    // repeating.
    let fetch = if FETCHABLE.contains(&name) {
        let flag = match source {
            RootSource::Flag => format!(" --data {}", root.display()),
            RootSource::Env | RootSource::Default => String::new(),
        };
        format!("download it with `netc data fetch {name}{flag}`, or ")
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

/// One batch in NCHW layout, image values in [-1, 1].
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[N, C, H, W]` of `input`.
    pub shape: [usize; 4],
    pub input: Vec<f32>,
    /// Images of the input's shape for paired data, or `N` class indices as f32.
    pub target: Vec<f32>,
    /// Indices into [`ImageDataset::files`] of the batch's samples, in batch order.
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

/// A validated, decoded image folder: side-by-side pairs, or labeled images in one
/// subfolder per class.
#[derive(Clone, Debug)]
pub struct ImageDataset {
    dir: PathBuf,
    files: Vec<PathBuf>,
    /// Class folder names of a labeled data set, in class order; empty for pairs.
    classes: Vec<String>,
    pairs: Vec<Sample>,
    spec: DataSpec,
    mode: Mode,
    channels: usize,
    /// Side of the cached halves.
    stored: usize,
    /// Side of the samples a batch holds.
    sample: usize,
}

impl ImageDataset {
    /// Decodes and checks every image in `dir` and caches the resized pixels. For paired
    /// data it splits each file into the halves that `spec` binds to input and target. For
    /// labeled data (`spec.labeled`) each subfolder of `dir` is a class, in name order.
    /// `channels` is 3 (RGB) or 1 (luma).
    ///
    /// Every file is checked before this returns; the error lists each bad file.
    pub fn load(
        dir: &Path,
        spec: &DataSpec,
        mode: Mode,
        channels: usize,
    ) -> Result<Self, DataError> {
        check_spec(spec, channels)?;
        let (files, classes, results) = match &spec.labeled {
            Some(labeled) => {
                let side = spec.resize.or(spec.crop).unwrap_or(0);
                let (classes, listed) = list_labeled(dir, labeled.classes)?;
                let files: Vec<PathBuf> = listed.iter().map(|(f, _)| f.clone()).collect();
                let decode =
                    |i: usize, path: &Path| decode_labeled(path, listed[i].1, side, channels);
                let results = decode_all(&files, decode);
                (files, classes, results)
            }
            None => {
                let files = list_images(dir)?;
                let decode = |_: usize, path: &Path| decode_pair(path, spec, mode, channels);
                let results = decode_all(&files, decode);
                (files, Vec::new(), results)
            }
        };

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
        Ok(ImageDataset {
            dir: dir.to_path_buf(),
            files,
            classes,
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

    /// Returns the image files, sorted by name (by class folder, then name, for labeled
    /// data). Batch indices point into this list.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Returns the class folder names of a labeled data set, in class order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Checks whether targets are class indices rather than images.
    pub fn is_labeled(&self) -> bool {
        self.spec.labeled.is_some()
    }

    /// Returns the shape of [`Batch::target`]: `[N]` class indices for labeled data, else
    /// the input's `[N, C, H, W]`.
    pub fn target_shape(&self) -> Vec<usize> {
        let batch = self.spec.batch;
        if self.is_labeled() {
            vec![batch]
        } else {
            vec![batch, self.channels, self.sample, self.sample]
        }
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

    /// Builds up to `count` samples in file order with no augmentation, for image grids. In
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
        let per_target = if self.is_labeled() { 1 } else { per_sample };
        let mut target = vec![0.0; indices.len() * per_target];
        for (slot, &index) in indices.iter().enumerate() {
            let (x0, y0, flip) = window(slot, index);
            let sample = &self.pairs[index];
            let range = slot * per_sample..(slot + 1) * per_sample;
            sample.input.write_window(x0, y0, size, flip, &mut input[range]);
            let range = slot * per_target..(slot + 1) * per_target;
            match &sample.target {
                Target::Image(pixels) => {
                    pixels.write_window(x0, y0, size, flip, &mut target[range])
                }
                Target::Class(class) => target[slot] = *class as f32,
            }
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
    if let Some(labeled) = &spec.labeled {
        if labeled.channels != channels {
            let found = labeled.channels;
            return invalid(format!(
                "the data has {found} channels, but the network takes {channels}"
            ));
        }
        if spec.resize.or(spec.crop).is_none() {
            return invalid("labeled data needs a size".to_string());
        }
    } else if spec.input == spec.target {
        let half = if spec.input == Half::Left { "left" } else { "right" };
        return invalid(format!("input and target are both the {half} half"));
    }
    match (spec.resize, spec.crop) {
        (Some(0), _) | (_, Some(0)) => invalid("resize and crop sizes must be positive".into()),
        (Some(r), Some(c)) if c > r => invalid(format!("crop {c} is larger than resize {r}")),
        _ => Ok(()),
    }
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
