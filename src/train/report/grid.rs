//! Image grids: one row per sample with its input, the generator's output and the target.

use super::font::{draw_text, text_width, GLYPH_HEIGHT};
use image::{Rgb, RgbImage};

const GAP: u32 = 4;
const LABEL_SCALE: u32 = 2;
const LABEL_HEIGHT: u32 = GLYPH_HEIGHT * LABEL_SCALE + 2 * GAP;

/// One CHW image with values in [-1, 1]; 1 channel is drawn as grey, 3 as RGB.
#[derive(Clone, Copy, Debug)]
pub struct Panel<'a> {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: &'a [f32],
}

/// Lays out `rows` of panels under a header of column `labels`, on white with gaps.
/// Panels with other than 1 or 3 channels show their first channel.
pub fn grid(labels: &[&str], rows: &[Vec<Panel<'_>>]) -> RgbImage {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0).max(labels.len()) as u32;
    let cell_w = rows.iter().flatten().map(|p| p.width as u32).max().unwrap_or(0);
    let cell_h = rows.iter().flatten().map(|p| p.height as u32).max().unwrap_or(0);
    let width = GAP + columns * (cell_w + GAP);
    let height = LABEL_HEIGHT + rows.len() as u32 * (cell_h + GAP);
    let mut image = RgbImage::from_pixel(width.max(1), height.max(1), Rgb([255, 255, 255]));

    for (c, label) in labels.iter().enumerate() {
        let centre = GAP + c as u32 * (cell_w + GAP) + cell_w / 2;
        let x = i64::from(centre) - i64::from(text_width(label, LABEL_SCALE) / 2);
        draw_text(&mut image, x, i64::from(GAP), label, LABEL_SCALE, Rgb([30, 30, 30]));
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, panel) in row.iter().enumerate() {
            let x0 = GAP + c as u32 * (cell_w + GAP);
            let y0 = LABEL_HEIGHT + r as u32 * (cell_h + GAP);
            blit(&mut image, panel, x0, y0);
        }
    }
    image
}

fn blit(image: &mut RgbImage, panel: &Panel<'_>, x0: u32, y0: u32) {
    let plane = panel.height * panel.width;
    let available = panel.data.len() / plane.max(1);
    if available == 0 {
        return;
    }
    for y in 0..panel.height {
        for x in 0..panel.width {
            let at = y * panel.width + x;
            let channel =
                |c: usize| to_byte(panel.data[c.min(available.saturating_sub(1)) * plane + at]);
            let pixel = if panel.channels == 3 {
                [channel(0), channel(1), channel(2)]
            } else {
                [channel(0); 3]
            };
            image.put_pixel(x0 + x as u32, y0 + y as u32, Rgb(pixel));
        }
    }
}

/// Maps [-1, 1] to [0, 255], clamping values outside; NaN becomes 0.
fn to_byte(v: f32) -> u8 {
    ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}
