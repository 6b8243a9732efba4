//! The loss curves as a PNG: one panel per loss term, stacked, each scaled to its own range.
//!
//! Each panel draws the raw per-step values in a light colour and a moving average over
//! about a fiftieth of the run in a strong one. Labels give the term's name and the y
//! range, and below the last panel the first and last step. Non-finite values are skipped, so a NaN
//! loss leaves a gap instead of breaking the plot.

use super::font::{draw_text, put, GLYPH_HEIGHT};
use image::{Rgb, RgbImage};

const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 170;
const LEFT: u32 = 90;
const RIGHT: u32 = 16;
const TOP: u32 = 12;
const BOTTOM: u32 = 28;
const TEXT_SCALE: u32 = 2;

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const FRAME: Rgb<u8> = Rgb([120, 120, 120]);
const GRID: Rgb<u8> = Rgb([232, 232, 232]);
const TEXT: Rgb<u8> = Rgb([30, 30, 30]);

/// Strong colours for the averages; the raw values use the same colour faded to white.
const PALETTE: &[[u8; 3]] = &[
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [255, 127, 14],
    [23, 190, 207],
];

/// One curve: a name and (step, value) points in step order.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` as stacked panels.
pub fn plot(series: &[Series<'_>]) -> RgbImage {
    let panels = series.len().max(1) as u32;
    let height = TOP + panels * PANEL_HEIGHT + BOTTOM;
    let mut image = RgbImage::from_pixel(WIDTH, height, BACKGROUND);
    let steps = step_range(series);

    for (i, s) in series.iter().enumerate() {
        let top = TOP + i as u32 * PANEL_HEIGHT;
        let color = PALETTE[i % PALETTE.len()];
        draw_panel(&mut image, top, s, steps, color);
    }
    if let Some((first, last)) = steps {
        let y = i64::from(height - BOTTOM + 8);
        draw_text(
            &mut image,
            i64::from(LEFT),
            y,
            &format!("STEP {}", first as u64),
            TEXT_SCALE,
            TEXT,
        );
        let label = format!("{}", last as u64);
        let x = i64::from(WIDTH - RIGHT) - i64::from(super::font::text_width(&label, TEXT_SCALE));
        draw_text(&mut image, x, y, &label, TEXT_SCALE, TEXT);
    }
    image
}

fn step_range(series: &[Series<'_>]) -> Option<(f64, f64)> {
    let steps = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = steps.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    (lo <= hi).then_some((lo, hi))
}

/// The plot area of one panel, in image pixels.
struct Area {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

fn draw_panel(
    image: &mut RgbImage,
    top: u32,
    series: &Series<'_>,
    steps: Option<(f64, f64)>,
    color: [u8; 3],
) {
    let area = Area {
        left: f64::from(LEFT),
        right: f64::from(WIDTH - RIGHT),
        top: f64::from(top + 4 + GLYPH_HEIGHT * TEXT_SCALE + 6),
        bottom: f64::from(top + PANEL_HEIGHT - 8),
    };
    draw_text(image, i64::from(LEFT), i64::from(top + 4), series.name, TEXT_SCALE, TEXT);

    let finite: Vec<(f64, f64)> =
        series.points.iter().copied().filter(|p| p.1.is_finite()).collect();
    let (lo, hi) = value_range(&finite);
    for k in 1..4 {
        let y = area.top + (area.bottom - area.top) * f64::from(k) / 4.0;
        hline(image, area.left, area.right, y, GRID);
    }
    frame(image, &area);
    let label_x =
        |text: &str| i64::from(LEFT) - 6 - i64::from(super::font::text_width(text, TEXT_SCALE));
    let (hi_label, lo_label) = (format_value(hi), format_value(lo));
    draw_text(image, label_x(&hi_label), area.top as i64, &hi_label, TEXT_SCALE, TEXT);
    let lo_y = area.bottom as i64 - i64::from(GLYPH_HEIGHT * TEXT_SCALE);
    draw_text(image, label_x(&lo_label), lo_y, &lo_label, TEXT_SCALE, TEXT);

    let Some((first, last)) = steps else { return };
    let span = (last - first).max(1.0);
    let to_pixel = |(x, v): (f64, f64)| {
        let px = area.left + (x - first) / span * (area.right - area.left);
        let py = area.bottom - (v - lo) / (hi - lo) * (area.bottom - area.top);
        (px, py)
    };
    let faded = Rgb(color.map(|c| ((u16::from(c) + 3 * 255) / 4) as u8));
    polyline(image, &series.points, &to_pixel, faded);
    let window = (finite.len() / 50).max(1);
    polyline(image, &moving_average(&series.points, window), &to_pixel, Rgb(color));
}

/// Computes the y range to draw: the finite values' range padded by 5 %, or around the value when
/// all values are equal.
fn value_range(points: &[(f64, f64)]) -> (f64, f64) {
    let (lo, hi) =
        points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.5 };
    (lo - pad, hi + pad)
}

/// Trailing mean over `window` finite values; non-finite points stay as gaps.
fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    let mut recent = std::collections::VecDeque::with_capacity(window);
    let mut averaged = Vec::with_capacity(points.len());
    for &(x, v) in points {
        if !v.is_finite() {
            averaged.push((x, v));
            continue;
        }
        recent.push_back(v);
        sum += v;
        if recent.len() > window {
            sum -= recent.pop_front().unwrap_or(0.0);
        }
        averaged.push((x, sum / recent.len() as f64));
    }
    averaged
}

/// Joins consecutive finite points with straight lines.
fn polyline(
    image: &mut RgbImage,
    points: &[(f64, f64)],
    to_pixel: &dyn Fn((f64, f64)) -> (f64, f64),
    color: Rgb<u8>,
) {
    let mut previous: Option<(f64, f64)> = None;
    for &point in points {
        if !point.1.is_finite() {
            previous = None;
            continue;
        }
        let pixel = to_pixel(point);
        match previous {
            Some(from) => line(image, from, pixel, color),
            None => put(image, pixel.0.round() as i64, pixel.1.round() as i64, color),
        }
        previous = Some(pixel);
    }
}

/// Draws a one-pixel line by stepping along its longer axis.
fn line(image: &mut RgbImage, from: (f64, f64), to: (f64, f64), color: Rgb<u8>) {
    let (dx, dy) = (to.0 - from.0, to.1 - from.1);
    let steps = dx.abs().max(dy.abs()).ceil().max(1.0);
    for i in 0..=steps as i64 {
        let t = i as f64 / steps;
        put(image, (from.0 + dx * t).round() as i64, (from.1 + dy * t).round() as i64, color);
    }
}

fn hline(image: &mut RgbImage, left: f64, right: f64, y: f64, color: Rgb<u8>) {
    line(image, (left, y), (right, y), color);
}

fn frame(image: &mut RgbImage, area: &Area) {
    hline(image, area.left, area.right, area.top, FRAME);
    hline(image, area.left, area.right, area.bottom, FRAME);
    line(image, (area.left, area.top), (area.left, area.bottom), FRAME);
    line(image, (area.right, area.top), (area.right, area.bottom), FRAME);
}

/// Formats an axis label in at most about seven characters.
fn format_value(v: f64) -> String {
    let magnitude = v.abs();
    if magnitude != 0.0 && !(0.01..10_000.0).contains(&magnitude) {
        return format!("{v:.1e}");
    }
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}
