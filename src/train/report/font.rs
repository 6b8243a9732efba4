//! A 3x5 pixel bitmap font for the labels of the loss plot and the image grids.
//!
//! Covers digits, letters (lowercase drawn as uppercase) and `.-_:=+/()`. Any other
//! character is drawn as `?`. It exists so the plot needs no font file on the machine.

use image::{Rgb, RgbImage};

/// Glyph width and height in font pixels.
pub const GLYPH_WIDTH: u32 = 3;
pub const GLYPH_HEIGHT: u32 = 5;

/// Each glyph is five rows of three pixels, top row first, `1` for ink.
const GLYPHS: &[(char, &str)] = &[
    ('0', "111101101101111"),
    ('1', "010110010010111"),
    ('2', "111001111100111"),
    ('3', "111001111001111"),
    ('4', "101101111001001"),
    ('5', "111100111001111"),
    ('6', "111100111101111"),
    ('7', "111001001001001"),
    ('8', "111101111101111"),
    ('9', "111101111001111"),
    ('A', "010101111101101"),
    ('B', "110101110101110"),
    ('C', "011100100100011"),
    ('D', "110101101101110"),
    ('E', "111100110100111"),
    ('F', "111100110100100"),
    ('G', "011100101101011"),
    ('H', "101101111101101"),
    ('I', "111010010010111"),
    ('J', "001001001101010"),
    ('K', "101101110101101"),
    ('L', "100100100100111"),
    ('M', "101111111101101"),
    ('N', "110101101101101"),
    ('O', "010101101101010"),
    ('P', "110101110100100"),
    ('Q', "010101101110011"),
    ('R', "110101110101101"),
    ('S', "011100010001110"),
    ('T', "111010010010010"),
    ('U', "101101101101111"),
    ('V', "101101101101010"),
    ('W', "101101111111101"),
    ('X', "101101010101101"),
    ('Y', "101101010010010"),
    ('Z', "111001010100111"),
    ('.', "000000000000010"),
    ('-', "000000111000000"),
    ('_', "000000000000111"),
    (':', "000010000010000"),
    ('=', "000111000111000"),
    ('+', "000010111010000"),
    ('/', "001001010100100"),
    ('(', "010100100100010"),
    (')', "010001001001010"),
    (' ', "000000000000000"),
    ('?', "110001010000010"),
];

fn glyph(c: char) -> &'static str {
    let c = c.to_ascii_uppercase();
    let found = GLYPHS.iter().find(|(g, _)| *g == c);
    found.or_else(|| GLYPHS.iter().find(|(g, _)| *g == '?')).map_or("", |(_, bits)| bits)
}

/// Width in image pixels of `text` drawn at `scale`, with one font pixel between glyphs.
pub fn text_width(text: &str, scale: u32) -> u32 {
    let count = text.chars().count() as u32;
    (count * (GLYPH_WIDTH + 1)).saturating_sub(1) * scale
}

/// Draws `text` with its top-left corner at (`x`, `y`); pixels outside the image are
/// clipped.
pub fn draw_text(image: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, color: Rgb<u8>) {
    let step = i64::from((GLYPH_WIDTH + 1) * scale);
    for (i, c) in text.chars().enumerate() {
        let left = x + i as i64 * step;
        for (bit, ink) in glyph(c).bytes().enumerate() {
            if ink != b'1' {
                continue;
            }
            let (col, row) = (bit as u32 % GLYPH_WIDTH, bit as u32 / GLYPH_WIDTH);
            for dy in 0..scale {
                for dx in 0..scale {
                    let px = left + i64::from(col * scale + dx);
                    let py = y + i64::from(row * scale + dy);
                    put(image, px, py, color);
                }
            }
        }
    }
}

/// Sets one pixel, ignoring coordinates outside the image.
pub fn put(image: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    let inside = x >= 0 && y >= 0 && x < i64::from(image.width()) && y < i64::from(image.height());
    if inside {
        image.put_pixel(x as u32, y as u32, color);
    }
}
