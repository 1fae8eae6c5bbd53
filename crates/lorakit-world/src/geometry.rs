//! The world's outlines, the same as `tools/world/world.py` draws them.

use crate::Shape;

/// Side of the world's images in pixels.
pub const IMAGE_SIZE: usize = 64;

/// Inner radius of the star relative to its points (a classic star has 0.38; a fatter one is
/// easier for a tiny model to draw and for [`crate::read_image`] to tell from a diamond).
const STAR_INNER_RADIUS: f64 = 0.45;

/// The shape's outline in the box [-1, 1]² (y down), scaled to touch all four sides.
pub fn unit_polygon(shape: Shape) -> Vec<(f64, f64)> {
    use std::f64::consts::PI;
    let points: Vec<(f64, f64)> = match shape {
        Shape::Square => vec![(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)],
        Shape::Triangle => vec![(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)],
        Shape::Diamond => vec![(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)],
        Shape::Circle => (0..96).map(|k| 2.0 * PI * k as f64 / 96.0).map(|a| (a.cos(), a.sin())).collect(),
        Shape::Star => (0..10)
            .map(|k| {
                let r = if k % 2 == 0 { 1.0 } else { STAR_INNER_RADIUS };
                let a = -PI / 2.0 + k as f64 * PI / 5.0;
                (r * a.cos(), r * a.sin())
            })
            .collect(),
        Shape::Heart => (0..96)
            .map(|k| {
                let t = 2.0 * PI * k as f64 / 96.0;
                let x = 16.0 * t.sin().powi(3);
                let y = -(13.0 * t.cos() - 5.0 * (2.0 * t).cos() - 2.0 * (3.0 * t).cos() - (4.0 * t).cos());
                (x, y)
            })
            .collect(),
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    points.into_iter().map(|(x, y)| (2.0 * (x - x0) / (x1 - x0) - 1.0, 2.0 * (y - y0) / (y1 - y0) - 1.0)).collect()
}

/// Even-odd point-in-polygon test.
pub(crate) fn inside(polygon: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut hit = false;
    let mut j = polygon.len() - 1;
    for i in 0..polygon.len() {
        let (xi, yi) = polygon[i];
        let (xj, yj) = polygon[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            hit = !hit;
        }
        j = i;
    }
    hit
}

/// One shape on a plain background.
#[derive(Clone, Debug)]
pub struct Scene {
    /// What is drawn.
    pub shape: Shape,
    /// Its colour.
    pub colour: [u8; 3],
    /// The background's colour.
    pub background: [u8; 3],
    /// Centre of the shape's box, as fractions of the image side (x, y).
    pub centre: (f64, f64),
    /// Half the box side, as a fraction of the image side.
    pub half: f64,
}

/// Draws `scene` into a `size × size` RGB buffer, anti-aliased by 4×4 samples per pixel.
pub fn render(scene: &Scene, size: usize) -> Vec<u8> {
    const SAMPLES: usize = 4;
    let polygon = unit_polygon(scene.shape);
    let mut pixels = Vec::with_capacity(size * size * 3);
    for py in 0..size {
        for px in 0..size {
            let mut covered = 0;
            for sy in 0..SAMPLES {
                for sx in 0..SAMPLES {
                    let x = (px as f64 + (sx as f64 + 0.5) / SAMPLES as f64) / size as f64;
                    let y = (py as f64 + (sy as f64 + 0.5) / SAMPLES as f64) / size as f64;
                    let u = (x - scene.centre.0) / scene.half;
                    let v = (y - scene.centre.1) / scene.half;
                    if u.abs() <= 1.0 && v.abs() <= 1.0 && inside(&polygon, u, v) {
                        covered += 1;
                    }
                }
            }
            let a = covered as f64 / (SAMPLES * SAMPLES) as f64;
            for c in 0..3 {
                let value = a * scene.colour[c] as f64 + (1.0 - a) * scene.background[c] as f64;
                pixels.push(value.round() as u8);
            }
        }
    }
    pixels
}
