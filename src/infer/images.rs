//! Image files to network inputs and network outputs to PNG files.
//!
//! Inputs go through the same conversion as the training data: 8-bit RGB or luma, a
//! Catmull-Rom resize, values mapped from `[0, 255]` to `[-1, 1]`. So grayscale, RGBA
//! (the alpha channel is dropped) and 16-bit files all work, at 8 bits of precision.

use super::InferError;
use crate::ir::Half;
use crate::train::atomic::temp_file_in;
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView};
use std::io::Write;
use std::path::Path;

/// Loads `path` as a `[channels, height, width]` tensor in `[-1, 1]`. When the image is a
/// side-by-side pair (twice as wide as high) and `half` is given, only that half is used.
pub fn load_input(
    path: &Path,
    half: Option<Half>,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<f32>, InferError> {
    let image = crate::train::data::read_image(path)
        .map_err(|message| InferError::ImageRead { path: path.to_path_buf(), message })?;
    let image = select_half(image, half);
    let resized = image.resize_exact(width as u32, height as u32, FilterType::CatmullRom);
    let to_unit = |v: u8| f32::from(v) / 127.5 - 1.0;
    let plane = height * width;
    let mut values = vec![0.0; channels * plane];
    match channels {
        1 => {
            for (i, pixel) in resized.to_luma8().pixels().enumerate() {
                values[i] = to_unit(pixel.0[0]);
            }
        }
        3 => {
            for (i, pixel) in resized.to_rgb8().pixels().enumerate() {
                for c in 0..3 {
                    values[c * plane + i] = to_unit(pixel.0[c]);
                }
            }
        }
        _ => return Err(InferError::Channels { channels, what: "input" }),
    }
    Ok(values)
}

/// Crops a side-by-side pair to `half`; other images pass through unchanged.
fn select_half(image: DynamicImage, half: Option<Half>) -> DynamicImage {
    let (width, height) = image.dimensions();
    let Some(half) = half else {
        return image;
    };
    if width != 2 * height {
        return image;
    }
    let left = match half {
        Half::Left => 0,
        Half::Right => height,
    };
    image.crop_imm(left, 0, height, height)
}

/// Writes a `[channels, height, width]` tensor in `[-1, 1]` as an 8-bit PNG, through a
/// temporary file in the same folder and a rename.
pub fn save_png(
    path: &Path,
    values: &[f32],
    channels: usize,
    height: usize,
    width: usize,
) -> Result<(), InferError> {
    let plane = height * width;
    let to_byte = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    let image = match channels {
        1 => {
            let bytes: Vec<u8> = values[..plane].iter().map(|&v| to_byte(v)).collect();
            image::GrayImage::from_raw(width as u32, height as u32, bytes)
                .map(DynamicImage::ImageLuma8)
        }
        3 => {
            let bytes: Vec<u8> = (0..plane)
                .flat_map(|i| (0..3).map(move |c| to_byte(values[c * plane + i])))
                .collect();
            image::RgbImage::from_raw(width as u32, height as u32, bytes)
                .map(DynamicImage::ImageRgb8)
        }
        _ => None,
    };
    let Some(image) = image else {
        return Err(InferError::Channels { channels, what: "output" });
    };

    let write_error = |message: String| InferError::Write { path: path.to_path_buf(), message };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = temp_file_in(dir).map_err(|e| write_error(e.to_string()))?;
    let mut encoded = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut encoded), image::ImageFormat::Png)
        .map_err(|e| write_error(e.to_string()))?;
    file.write_all(&encoded).map_err(|e| write_error(e.to_string()))?;
    file.persist(path).map_err(|e| write_error(e.error.to_string()))?;
    Ok(())
}
