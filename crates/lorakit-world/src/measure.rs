//! Which shape and colour an image shows: find what differs from the background, then fit
//! every outline of the world to its bounding box and keep the best.

use std::collections::VecDeque;
use std::path::Path;

use crate::geometry::{inside, unit_polygon};
use crate::{NamedColour, Shape, BACKGROUNDS, COLOURS};

/// Below this overlap (intersection over union) of the best outline, the image shows no shape
/// of the world clearly. Clean renders fit at 0.9 or more; a recognisable but ragged drawing
/// of a tiny model fits around 0.7.
pub const MIN_FIT: f64 = 0.6;

/// A radius profile (radius by angle over its mean) whose standard deviation is below this is
/// round: a circle's is about 0.02, a square's or a diamond's 0.12, a star's 0.3.
const ROUND_SPREAD: f64 = 0.05;

/// From this correlation with an outline's radius profile on, the profile decides.
const PROFILE_LIKENESS: f64 = 0.75;

/// A foreground smaller than this fraction of the image is noise, not a shape.
const MIN_AREA: f64 = 0.02;

/// What an image shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The best-fitting shape, when it fits at least [`MIN_FIT`].
    pub shape: Option<Shape>,
    /// The best-fitting shape whatever its fit (None: no foreground at all).
    pub best: Option<Shape>,
    /// Overlap of the best outline with the foreground (0 when there is none).
    pub fit: f64,
    /// The world's shape colour nearest to the foreground's mean colour.
    pub colour: Option<&'static str>,
    /// The world's background colour nearest to the image's border.
    pub background: &'static str,
    /// Foreground area as a fraction of the image.
    pub area: f64,
    /// Centre of the foreground's bounding box, as fractions of width and height.
    pub centre: (f64, f64),
    /// Standard deviation of the radius-by-angle profile over its mean (0: round).
    pub spread: f64,
    /// Correlation of the profile with the most alike outline's other than the circle.
    pub likeness: f64,
    /// That outline.
    pub profile_shape: Option<Shape>,
}

impl Reading {
    /// The image shows `shape`, clearly.
    pub fn shows(&self, shape: Shape) -> bool {
        self.shape == Some(shape)
    }
}

/// Reads an image file (PNG, JPEG, WebP).
pub fn read_image(path: &Path) -> Result<Reading, String> {
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?.to_rgb8();
    let (w, h) = img.dimensions();
    read_pixels(w as usize, h as usize, img.as_raw())
}

/// Reads a `width × height` RGB buffer (row-major, 3 bytes per pixel).
pub fn read_pixels(width: usize, height: usize, rgb: &[u8]) -> Result<Reading, String> {
    if width < 8 || height < 8 {
        return Err(format!("a {width}×{height} image is too small to read a shape from (8×8 at least)"));
    }
    if rgb.len() != width * height * 3 {
        return Err(format!("{} bytes do not make a {width}×{height} RGB image", rgb.len()));
    }
    let pixel = |i: usize| [rgb[3 * i] as f64, rgb[3 * i + 1] as f64, rgb[3 * i + 2] as f64];
    let background = border_median(width, height, rgb);
    let distance: Vec<f64> = (0..width * height).map(|i| euclid(pixel(i), background)).collect();
    let threshold = otsu(&distance).max(40.0);
    let mask: Vec<bool> = distance.iter().map(|&d| d > threshold).collect();
    let component = largest_component(width, height, &mask);
    let background_name = nearest(&BACKGROUNDS, background).0;
    let area = component.len() as f64 / (width * height) as f64;
    let empty = Reading {
        shape: None,
        best: None,
        fit: 0.0,
        colour: None,
        background: background_name,
        area,
        centre: (0.5, 0.5),
        spread: 0.0,
        likeness: 0.0,
        profile_shape: None,
    };
    if area < MIN_AREA {
        return Ok(empty);
    }
    let (mut x0, mut x1, mut y0, mut y1) = (width, 0, height, 0);
    for &i in &component {
        let (x, y) = (i % width, i / width);
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let (bw, bh) = (x1 + 1 - x0, y1 + 1 - y0);
    if bw < 4 || bh < 4 {
        return Ok(empty);
    }
    let mut in_component = vec![false; width * height];
    for &i in &component {
        in_component[i] = true;
    }
    // Which outline: the one that overlaps the foreground best when scaled to its box, unless
    // the radius-by-angle profile (from the centroid) rises and falls at the same angles as
    // another outline's clearly better: a star whose points a tiny model rounded off overlaps a
    // circle or a diamond best, but its five bumps are where a star's are.
    let profile = radial_profile(width, &component);
    let spread = spread(&profile);
    let mut by_overlap: Option<(Shape, f64)> = None;
    let mut by_profile: Option<(Shape, f64, f64)> = None;
    for shape in Shape::ALL {
        let template: Vec<usize> = template_mask(shape, x0, y0, bw, bh).iter().map(|&(x, y)| y * width + x).collect();
        let both = template.iter().filter(|&&i| in_component[i]).count();
        let fit = both as f64 / (template.len() + component.len() - both).max(1) as f64;
        if by_overlap.is_none_or(|(_, f)| fit > f) {
            by_overlap = Some((shape, fit));
        }
        if shape != Shape::Circle {
            let likeness = correlation(&profile, &radial_profile(width, &template));
            if by_profile.is_none_or(|(_, l, _)| likeness > l) {
                by_profile = Some((shape, likeness, fit));
            }
        }
    }
    let (overlap_shape, overlap_fit) = by_overlap.expect("Shape::ALL is not empty");
    let (profile_shape, likeness, profile_fit) = by_profile.expect("Shape::ALL is not empty");
    let (best_shape, fit) = if spread >= ROUND_SPREAD && likeness >= PROFILE_LIKENESS && profile_fit >= MIN_FIT {
        (profile_shape, profile_fit)
    } else {
        (overlap_shape, overlap_fit)
    };
    // The colour of the shape's inside: edge pixels are blends with the background.
    let interior: Vec<usize> = component
        .iter()
        .copied()
        .filter(|&i| {
            let (x, y) = (i % width, i / width);
            x > 0
                && y > 0
                && x + 1 < width
                && y + 1 < height
                && [i - 1, i + 1, i - width, i + width].iter().all(|&j| in_component[j])
        })
        .collect();
    let colour_pixels = if interior.is_empty() { &component } else { &interior };
    let mut mean = [0.0; 3];
    for &i in colour_pixels {
        let p = pixel(i);
        for c in 0..3 {
            mean[c] += p[c] / colour_pixels.len() as f64;
        }
    }
    Ok(Reading {
        shape: (fit >= MIN_FIT).then_some(best_shape),
        spread,
        likeness,
        profile_shape: Some(profile_shape),
        best: Some(best_shape),
        fit,
        colour: Some(nearest(&COLOURS, mean).0),
        background: background_name,
        area,
        centre: ((x0 + x1 + 1) as f64 / 2.0 / width as f64, (y0 + y1 + 1) as f64 / 2.0 / height as f64),
    })
}

/// Pixels of `shape`'s outline scaled to the box at (x0, y0) of size bw × bh.
fn template_mask(shape: Shape, x0: usize, y0: usize, bw: usize, bh: usize) -> Vec<(usize, usize)> {
    let polygon = unit_polygon(shape);
    let mut out = Vec::new();
    for y in y0..y0 + bh {
        for x in x0..x0 + bw {
            let u = 2.0 * (x as f64 + 0.5 - x0 as f64) / bw as f64 - 1.0;
            let v = 2.0 * (y as f64 + 0.5 - y0 as f64) / bh as f64 - 1.0;
            if inside(&polygon, u, v) {
                out.push((x, y));
            }
        }
    }
    out
}

const PROFILE_BINS: usize = 48;

/// The farthest pixel from the centroid in each of 48 directions, divided by their mean.
fn radial_profile(width: usize, pixels: &[usize]) -> Vec<f64> {
    let n = pixels.len().max(1) as f64;
    let cx = pixels.iter().map(|&i| (i % width) as f64 + 0.5).sum::<f64>() / n;
    let cy = pixels.iter().map(|&i| (i / width) as f64 + 0.5).sum::<f64>() / n;
    let mut radius = vec![f64::NAN; PROFILE_BINS];
    for &i in pixels {
        let (dx, dy) = ((i % width) as f64 + 0.5 - cx, (i / width) as f64 + 0.5 - cy);
        let angle = dy.atan2(dx).rem_euclid(std::f64::consts::TAU);
        let bin = ((angle / std::f64::consts::TAU * PROFILE_BINS as f64) as usize).min(PROFILE_BINS - 1);
        let r = (dx * dx + dy * dy).sqrt() + 0.5;
        if radius[bin].is_nan() || r > radius[bin] {
            radius[bin] = r;
        }
    }
    // Directions no pixel fell in (tiny shapes): the nearest filled neighbour's radius.
    for k in 0..PROFILE_BINS {
        if radius[k].is_nan() {
            radius[k] = (1..PROFILE_BINS)
                .flat_map(|d| [radius[(k + d) % PROFILE_BINS], radius[(k + PROFILE_BINS - d) % PROFILE_BINS]])
                .find(|r| !r.is_nan())
                .unwrap_or(1.0);
        }
    }
    let mean = radius.iter().sum::<f64>() / PROFILE_BINS as f64;
    radius.into_iter().map(|r| r / mean.max(1e-9)).collect()
}

fn spread(profile: &[f64]) -> f64 {
    let mean = profile.iter().sum::<f64>() / profile.len() as f64;
    (profile.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / profile.len() as f64).sqrt()
}

/// Pearson correlation of two profiles.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let (va, vb): (f64, f64) = (a.iter().map(|x| (x - ma).powi(2)).sum(), b.iter().map(|y| (y - mb).powi(2)).sum());
    cov / (va * vb).sqrt().max(1e-12)
}

fn euclid(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn nearest(palette: &[NamedColour], value: [f64; 3]) -> NamedColour {
    let d = |c: &NamedColour| euclid([c.1[0] as f64, c.1[1] as f64, c.1[2] as f64], value);
    *palette.iter().min_by(|a, b| d(a).total_cmp(&d(b))).expect("palettes are not empty")
}

/// Per-channel median of the outermost ring of pixels: the background, even where the shape
/// touches the border.
fn border_median(width: usize, height: usize, rgb: &[u8]) -> [f64; 3] {
    let mut ring: Vec<usize> = (0..width).flat_map(|x| [x, (height - 1) * width + x]).collect();
    ring.extend((1..height - 1).flat_map(|y| [y * width, y * width + width - 1]));
    let mut out = [0.0; 3];
    for (c, value) in out.iter_mut().enumerate() {
        let mut v: Vec<u8> = ring.iter().map(|&i| rgb[3 * i + c]).collect();
        v.sort_unstable();
        *value = v[v.len() / 2] as f64;
    }
    out
}

/// Otsu's threshold of the distances from the background: splits them into background and
/// shape whatever the contrast of the two colours.
fn otsu(values: &[f64]) -> f64 {
    const BINS: usize = 128;
    let max = values.iter().copied().fold(0.0, f64::max).max(1e-9);
    let mut hist = [0usize; BINS];
    for &v in values {
        hist[((v / max) * (BINS - 1) as f64) as usize] += 1;
    }
    let total = values.len() as f64;
    let sum_all: f64 = hist.iter().enumerate().map(|(i, &n)| i as f64 * n as f64).sum();
    let (mut weight_low, mut sum_low, mut best, mut best_bin) = (0.0, 0.0, -1.0, 0);
    for (i, &n) in hist.iter().enumerate() {
        weight_low += n as f64;
        sum_low += i as f64 * n as f64;
        let weight_high = total - weight_low;
        if weight_low == 0.0 || weight_high == 0.0 {
            continue;
        }
        let mean_low = sum_low / weight_low;
        let mean_high = (sum_all - sum_low) / weight_high;
        let between = weight_low * weight_high * (mean_low - mean_high).powi(2);
        if between > best {
            best = between;
            best_bin = i;
        }
    }
    (best_bin as f64 + 0.5) / (BINS - 1) as f64 * max
}

/// Indices of the largest 4-connected region of `mask`.
fn largest_component(width: usize, height: usize, mask: &[bool]) -> Vec<usize> {
    let mut seen = vec![false; mask.len()];
    let mut largest = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        let mut region = Vec::new();
        let mut queue = VecDeque::from([start]);
        seen[start] = true;
        while let Some(i) = queue.pop_front() {
            region.push(i);
            let (x, y) = (i % width, i / width);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < width).then(|| i + 1),
                (y > 0).then(|| i - width),
                (y + 1 < height).then(|| i + width),
            ];
            for j in neighbours.into_iter().flatten() {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    queue.push_back(j);
                }
            }
        }
        if region.len() > largest.len() {
            largest = region;
        }
    }
    largest
}
