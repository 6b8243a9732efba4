//! Decoding of the image files: listing, validation, resizing and the cached pixels.

use super::{BadFile, DataError, Mode, IMAGE_EXTENSIONS};
use crate::ir::{DataSpec, Half};
use image::imageops::FilterType;
use image::{GrayImage, RgbImage};
use std::path::{Path, PathBuf};

/// One example, resized and stored as 8-bit pixels: both halves of a paired file, or a
/// labeled image and its class.
#[derive(Clone, Debug)]
pub(super) struct Sample {
    pub input: Pixels,
    pub target: Target,
}

#[derive(Clone, Debug)]
pub(super) enum Target {
    Image(Pixels),
    /// Class index, from 0.
    Class(usize),
}

#[derive(Clone, Debug)]
pub(super) enum Pixels {
    Rgb(RgbImage),
    Luma(GrayImage),
}

impl Pixels {
    pub fn side(&self) -> usize {
        match self {
            Pixels::Rgb(img) => img.width() as usize,
            Pixels::Luma(img) => img.width() as usize,
        }
    }

    /// Writes the `size` x `size` window at (`x0`, `y0`), mirrored when `flip`, into `out`
    /// as planar channels mapped from [0, 255] to [-1, 1].
    pub fn write_window(&self, x0: usize, y0: usize, size: usize, flip: bool, out: &mut [f32]) {
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

/// Files whose halves differ in size from the first file's, which happens when the spec
/// does not resize. Call only when every file decoded, so `files` and `pairs` line up.
pub(super) fn mismatched_sizes(files: &[PathBuf], pairs: &[Sample]) -> Vec<BadFile> {
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
pub(super) fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
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

/// Decodes every file on all cores with `decode`, keeping the input order. A decoder panic
/// becomes an error for that file, because a malformed image must not end the run.
pub(super) fn decode_all<F>(files: &[PathBuf], decode: F) -> Vec<Result<Sample, String>>
where
    F: Fn(usize, &Path) -> Result<Sample, String> + Sync,
{
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len());
    let chunk = files.len().div_ceil(workers.max(1)).max(1);
    let decode = &decode;
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .enumerate()
            .map(|(part_index, part)| {
                scope.spawn(move || {
                    let first = part_index * chunk;
                    let guarded = |(i, path): (usize, &PathBuf)| {
                        let run = std::panic::AssertUnwindSafe(|| decode(first + i, path));
                        std::panic::catch_unwind(run)
                            .unwrap_or_else(|_| Err("the image decoder panicked".into()))
                    };
                    part.iter().enumerate().map(guarded).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decode_all catches decoder panics"))
            .collect()
    })
}

/// Reads and decodes one image file, guessing the format from its content and rejecting a
/// truncated JPEG.
pub fn read_image(path: &Path) -> Result<image::DynamicImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("failed to read: {e}"))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| format!("failed to read: {e}"))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !ends_with_jpeg_eoi(&bytes) {
        return Err("not a readable image: truncated JPEG (no end-of-image marker)".to_string());
    }
    reader.decode().map_err(|e| format!("not a readable image: {e}"))
}

/// Resizes `image` to `side` x `side` (unless it already is) and converts it to
/// `channels` channels.
fn to_pixels(image: image::DynamicImage, side: u32, channels: usize) -> Pixels {
    let resized = if image.width() == side && image.height() == side {
        image
    } else {
        image.resize_exact(side, side, FilterType::CatmullRom)
    };
    if channels == 1 {
        Pixels::Luma(resized.to_luma8())
    } else {
        Pixels::Rgb(resized.to_rgb8())
    }
}

/// Decodes one file and returns its two halves resized for `mode`, or the reason it is
/// invalid.
pub(super) fn decode_pair(
    path: &Path,
    spec: &DataSpec,
    mode: Mode,
    channels: usize,
) -> Result<Sample, String> {
    let image = read_image(path)?;
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

    let half = |x0: u32| to_pixels(image.crop_imm(x0, 0, side, side), stored, channels);
    let (left, right) = (half(0), half(side));
    let (input, target) = match spec.input {
        Half::Left => (left, right),
        Half::Right => (right, left),
    };
    Ok(Sample { input, target: Target::Image(target) })
}

/// Decodes one labeled image of class `class` and resizes it to `side` x `side`. Any
/// aspect ratio is accepted and stretched, as a plain resize does.
pub(super) fn decode_labeled(
    path: &Path,
    class: usize,
    side: usize,
    channels: usize,
) -> Result<Sample, String> {
    let image = read_image(path)?;
    if image.width() == 0 || image.height() == 0 {
        return Err("is empty (0 pixels)".to_string());
    }
    let input = to_pixels(image, side as u32, channels);
    Ok(Sample { input, target: Target::Class(class) })
}

/// Lists the class folders of a labeled data set (sorted by name, class `k` is the `k`-th)
/// and the images of each, as (file, class) pairs.
pub(super) fn list_labeled(
    dir: &Path,
    classes: usize,
) -> Result<(Vec<String>, Vec<(PathBuf, usize)>), DataError> {
    let read_err = |source| DataError::ReadDir { dir: dir.to_path_buf(), source };
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.is_dir() {
            folders.push(path);
        }
    }
    folders.sort();
    let names: Vec<String> = folders
        .iter()
        .map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    if names.len() != classes {
        return Err(DataError::ClassCount { dir: dir.to_path_buf(), found: names.len(), classes });
    }

    let mut files = Vec::new();
    for (class, folder) in folders.iter().enumerate() {
        files.extend(list_images(folder)?.into_iter().map(|f| (f, class)));
    }
    Ok((names, files))
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
