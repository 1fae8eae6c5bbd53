//! Aspect-ratio buckets, computed exactly as sd-scripts' `BucketManager` and
//! `make_bucket_resolutions` do (spec §4), so every image lands in the bucket
//! sd-scripts would give it.
//!
//! Two deliberate differences, both where sd-scripts would crash: images whose
//! bucket would have a zero side (tiny images with `bucket_no_upscale`) and
//! images of zero size get [`BucketError`] instead of a `ZeroDivisionError`.

use serde::{Deserialize, Serialize};

/// A `(width, height)` pair in pixels, as sd-scripts writes resolutions.
pub type Reso = (u32, u32);

/// How buckets are made for one dataset (sd-scripts' dataset-level bucket arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketSettings {
    /// Training resolution `(W, H)`; its area is the target area of every bucket.
    pub resolution: Reso,
    /// `enable_bucket`: aspect-ratio bucketing on (otherwise one bucket of `resolution`).
    pub enable_bucket: bool,
    /// `min_bucket_reso`: smallest bucket side.
    pub min_bucket_reso: u32,
    /// `max_bucket_reso`: largest bucket side.
    pub max_bucket_reso: u32,
    /// `bucket_reso_steps`: bucket sides are multiples of this.
    pub bucket_reso_steps: u32,
    /// `bucket_no_upscale`: one bucket per image size, images are never enlarged.
    pub bucket_no_upscale: bool,
}

impl Default for BucketSettings {
    /// lorakit's defaults: sd-scripts' argument defaults, with buckets on (as the guide advises).
    fn default() -> Self {
        BucketSettings {
            resolution: (512, 512),
            enable_bucket: true,
            min_bucket_reso: 256,
            max_bucket_reso: 1024,
            bucket_reso_steps: 64,
            bucket_no_upscale: false,
        }
    }
}

/// Bucket settings that cannot work, with the argument to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketSettingsError {
    #[error("bucket_reso_steps must be at least 1 (got 0)")]
    ZeroSteps,
    #[error("resolution must be positive (got {0}x{1})")]
    ZeroResolution(u32, u32),
    #[error(
        "min_bucket_reso ({min}) is larger than the resolution's shorter side ({short}): \
         lower min_bucket_reso or raise the resolution"
    )]
    MinAboveResolution { min: u32, short: u32 },
    #[error(
        "max_bucket_reso ({max}) is smaller than the resolution's longer side ({long}): \
         raise max_bucket_reso or lower the resolution"
    )]
    MaxBelowResolution { max: u32, long: u32 },
}

/// A note about settings that sd-scripts adjusts silently (with a log line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingsAdjustment {
    /// The argument that was adjusted.
    pub key: &'static str,
    /// Its value as given.
    pub from: u32,
    /// Its value as used.
    pub to: u32,
}

impl BucketSettings {
    /// Rounds `min_bucket_reso` down and `max_bucket_reso` up to multiples of
    /// `bucket_reso_steps` and checks the resolution lies between them, as
    /// sd-scripts' `adjust_min_max_bucket_reso_by_steps` does. Returns what was adjusted.
    pub fn normalize(&mut self) -> Result<Vec<SettingsAdjustment>, BucketSettingsError> {
        let steps = self.bucket_reso_steps;
        if steps == 0 {
            return Err(BucketSettingsError::ZeroSteps);
        }
        let (w, h) = self.resolution;
        if w == 0 || h == 0 {
            return Err(BucketSettingsError::ZeroResolution(w, h));
        }
        let mut adjusted = Vec::new();
        if !self.enable_bucket {
            return Ok(adjusted);
        }
        if self.min_bucket_reso % steps != 0 {
            let to = self.min_bucket_reso - self.min_bucket_reso % steps;
            adjusted.push(SettingsAdjustment { key: "min_bucket_reso", from: self.min_bucket_reso, to });
            self.min_bucket_reso = to;
        }
        if self.max_bucket_reso % steps != 0 {
            let to = self.max_bucket_reso + steps - self.max_bucket_reso % steps;
            adjusted.push(SettingsAdjustment { key: "max_bucket_reso", from: self.max_bucket_reso, to });
            self.max_bucket_reso = to;
        }
        let (short, long) = (w.min(h), w.max(h));
        if short < self.min_bucket_reso {
            return Err(BucketSettingsError::MinAboveResolution { min: self.min_bucket_reso, short });
        }
        if long > self.max_bucket_reso {
            return Err(BucketSettingsError::MaxBelowResolution { max: self.max_bucket_reso, long });
        }
        Ok(adjusted)
    }
}

/// Python's float floor division `a // b` for positive operands
/// (computed through `fmod` as CPython does, so results agree bit for bit).
fn py_floordiv(a: f64, b: f64) -> f64 {
    let rem = a % b;
    ((a - rem) / b).floor()
}

/// sd-scripts' `make_bucket_resolutions`: the predefined buckets for a target
/// area of `max_reso.0 * max_reso.1`, sorted by `(w, h)`.
pub fn make_bucket_resolutions(max_reso: Reso, min_size: u32, max_size: u32, divisible: u32) -> Vec<Reso> {
    let divisible = divisible.max(1);
    let area = u64::from(max_reso.0) * u64::from(max_reso.1);
    let mut resos = std::collections::BTreeSet::new();

    let square = (py_floordiv((area as f64).sqrt(), f64::from(divisible)) as u64 * u64::from(divisible)) as u32;
    resos.insert((square, square));

    let mut width = min_size;
    while width <= max_size {
        if width > 0 {
            let by_area = (area / u64::from(width)) / u64::from(divisible) * u64::from(divisible);
            let height = by_area.min(u64::from(max_size)) as u32;
            if height >= min_size {
                resos.insert((width, height));
                resos.insert((height, width));
            }
        }
        width += divisible;
    }
    resos.into_iter().collect()
}

/// Where one image goes: its bucket and the size it is resized to before the
/// center (or random) crop to the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BucketChoice {
    /// The bucket resolution `(W, H)`.
    pub bucket: Reso,
    /// The size the image is scaled to; at least the bucket in both sides.
    pub resized: Reso,
    /// `bucket aspect − image aspect`, as sd-scripts records it.
    pub ar_error: f64,
}

impl BucketChoice {
    /// Fraction of the resized image's pixels cut off by the crop to the bucket (0 = none).
    pub fn cropped_fraction(&self) -> f64 {
        let resized = f64::from(self.resized.0) * f64::from(self.resized.1);
        if resized <= 0.0 {
            return 0.0;
        }
        1.0 - f64::from(self.bucket.0) * f64::from(self.bucket.1) / resized
    }
}

/// Why an image cannot be put in any bucket (sd-scripts would crash on these).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketError {
    #[error("the image has a zero side ({0}x{1})")]
    ZeroSize(u32, u32),
    #[error(
        "the image is {w}x{h}: with bucket_no_upscale its bucket would be {bw}x{bh} \
         (sides are cut down to multiples of bucket_reso_steps = {steps}); \
         enlarge the image or drop bucket_no_upscale"
    )]
    EmptyBucket { w: u32, h: u32, bw: u32, bh: u32, steps: u32 },
}

/// Assigns images to buckets for one dataset, like sd-scripts' `BucketManager`.
#[derive(Debug, Clone)]
pub struct BucketManager {
    settings: BucketSettings,
    predefined: Vec<Reso>,
    predefined_ar: Vec<f64>,
}

impl BucketManager {
    /// Builds the manager; `settings` should already be [`BucketSettings::normalize`]d.
    pub fn new(settings: &BucketSettings) -> Self {
        let predefined = if !settings.enable_bucket {
            vec![settings.resolution]
        } else if settings.bucket_no_upscale {
            Vec::new()
        } else {
            make_bucket_resolutions(
                settings.resolution,
                settings.min_bucket_reso,
                settings.max_bucket_reso,
                settings.bucket_reso_steps,
            )
        };
        let predefined_ar = predefined.iter().map(|&(w, h)| f64::from(w) / f64::from(h)).collect();
        BucketManager { settings: settings.clone(), predefined, predefined_ar }
    }

    /// The predefined bucket list (empty with `bucket_no_upscale`, where buckets follow the images).
    pub fn predefined(&self) -> &[Reso] {
        &self.predefined
    }

    /// sd-scripts' `round_to_steps`: round half up, then floor to a multiple of the steps.
    fn round_to_steps(&self, x: f64) -> u32 {
        let x = (x + 0.5) as u32;
        x - x % self.settings.bucket_reso_steps
    }

    /// sd-scripts' `select_bucket` for an image of `(width, height)` pixels.
    pub fn select(&self, width: u32, height: u32) -> Result<BucketChoice, BucketError> {
        if width == 0 || height == 0 {
            return Err(BucketError::ZeroSize(width, height));
        }
        let (wf, hf) = (f64::from(width), f64::from(height));
        let ar = wf / hf;
        if !(self.settings.enable_bucket && self.settings.bucket_no_upscale) {
            let bucket = if self.predefined.contains(&(width, height)) {
                (width, height)
            } else {
                // First minimum of |ar_bucket - ar|, as numpy's argmin.
                let mut best = 0;
                for (i, bar) in self.predefined_ar.iter().enumerate() {
                    if (bar - ar).abs() < (self.predefined_ar[best] - ar).abs() {
                        best = i;
                    }
                }
                self.predefined[best]
            };
            let bar = f64::from(bucket.0) / f64::from(bucket.1);
            let scale = if ar > bar { f64::from(bucket.1) / hf } else { f64::from(bucket.0) / wf };
            let resized = ((wf * scale + 0.5) as u32, (hf * scale + 0.5) as u32);
            return Ok(BucketChoice { bucket, resized, ar_error: bar - ar });
        }

        let steps = self.settings.bucket_reso_steps;
        let max_area = f64::from(self.settings.resolution.0) * f64::from(self.settings.resolution.1);
        let resized = if wf * hf > max_area {
            let rw = (max_area * ar).sqrt();
            let rh = max_area / rw;

            let b_width_rounded = self.round_to_steps(rw);
            let b_height_in_wr = self.round_to_steps(f64::from(b_width_rounded) / ar);
            let b_height_rounded = self.round_to_steps(rh);
            let b_width_in_hr = self.round_to_steps(f64::from(b_height_rounded) * ar);
            // sd-scripts divides by these and crashes on zero; a zero candidate simply loses.
            let err_w = if b_height_in_wr == 0 {
                f64::INFINITY
            } else {
                (f64::from(b_width_rounded) / f64::from(b_height_in_wr) - ar).abs()
            };
            let err_h = if b_height_rounded == 0 {
                f64::INFINITY
            } else {
                (f64::from(b_width_in_hr) / f64::from(b_height_rounded) - ar).abs()
            };
            if err_w < err_h {
                (b_width_rounded, (f64::from(b_width_rounded) / ar + 0.5) as u32)
            } else {
                ((f64::from(b_height_rounded) * ar + 0.5) as u32, b_height_rounded)
            }
        } else {
            (width, height)
        };
        let bucket = (resized.0 - resized.0 % steps, resized.1 - resized.1 % steps);
        if bucket.0 == 0 || bucket.1 == 0 {
            return Err(BucketError::EmptyBucket { w: width, h: height, bw: bucket.0, bh: bucket.1, steps });
        }
        let bar = f64::from(bucket.0) / f64::from(bucket.1);
        Ok(BucketChoice { bucket, resized, ar_error: bar - ar })
    }
}

/// Images (with repeats) per bucket, sorted by resolution as sd-scripts sorts its buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BucketHistogram {
    /// `(bucket, samples)` pairs in ascending `(w, h)` order; only buckets in use.
    pub buckets: Vec<(Reso, u64)>,
}

impl BucketHistogram {
    /// Counts `samples` (image repeats) into `bucket`.
    pub fn add(&mut self, bucket: Reso, samples: u64) {
        match self.buckets.binary_search_by(|(r, _)| r.cmp(&bucket)) {
            Ok(i) => self.buckets[i].1 += samples,
            Err(i) => self.buckets.insert(i, (bucket, samples)),
        }
    }

    /// Batches per epoch: `Σ ceil(count / batch_size)` (batches never mix buckets).
    pub fn batches(&self, batch_size: u32) -> u64 {
        let b = u64::from(batch_size.max(1));
        self.buckets.iter().map(|(_, n)| n.div_ceil(b)).sum()
    }

    /// Total samples over all buckets.
    pub fn samples(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_512() {
        let r = make_bucket_resolutions((512, 512), 256, 1024, 64);
        let want = vec![
            (256, 832),
            (256, 896),
            (256, 960),
            (256, 1024),
            (320, 704),
            (320, 768),
            (384, 640),
            (448, 576),
            (512, 512),
            (576, 448),
            (640, 384),
            (704, 320),
            (768, 320),
            (832, 256),
            (896, 256),
            (960, 256),
            (1024, 256),
        ];
        assert_eq!(r, want);
    }

    #[test]
    fn spec_example_1024_has_41_buckets() {
        let r = make_bucket_resolutions((1024, 1024), 256, 2048, 64);
        assert_eq!(r.len(), 41);
        assert_eq!(r[0], (256, 2048));
        assert_eq!(*r.last().unwrap(), (2048, 512));
        assert!(r.contains(&(1024, 1024)));
    }

    #[test]
    fn exact_bucket_size_is_kept() {
        let m = BucketManager::new(&BucketSettings::default());
        let c = m.select(448, 576).unwrap();
        assert_eq!(c.bucket, (448, 576));
        assert_eq!(c.resized, (448, 576));
        assert_eq!(c.cropped_fraction(), 0.0);
    }

    #[test]
    fn no_bucket_mode_uses_resolution() {
        let s = BucketSettings { enable_bucket: false, ..Default::default() };
        let m = BucketManager::new(&s);
        let c = m.select(1200, 300).unwrap();
        assert_eq!(c.bucket, (512, 512));
        // Covers the bucket: height matched, width follows.
        assert_eq!(c.resized, (2048, 512));
        assert!(c.cropped_fraction() > 0.7);
    }

    #[test]
    fn no_upscale_tiny_image_is_an_error_not_a_crash() {
        let s = BucketSettings { bucket_no_upscale: true, ..Default::default() };
        let m = BucketManager::new(&s);
        assert!(matches!(m.select(50, 40), Err(BucketError::EmptyBucket { .. })));
        assert!(matches!(m.select(0, 40), Err(BucketError::ZeroSize(0, 40))));
        // Extremely wide large image: one rounding candidate is zero.
        let c = m.select(100_000, 10);
        assert!(matches!(c, Err(BucketError::EmptyBucket { .. })));
        assert!(matches!(m.select(20_000, 70), Err(BucketError::EmptyBucket { .. })));
        let c = m.select(4000, 500).unwrap();
        assert_eq!((c.bucket, c.resized), ((1024, 128), (1024, 128)));
    }

    #[test]
    fn normalize_rounds_and_checks() {
        let mut s = BucketSettings { min_bucket_reso: 300, max_bucket_reso: 1000, ..Default::default() };
        let adj = s.normalize().unwrap();
        assert_eq!((s.min_bucket_reso, s.max_bucket_reso), (256, 1024));
        assert_eq!(adj.len(), 2);
        let mut s = BucketSettings { resolution: (1280, 1280), ..Default::default() };
        assert!(matches!(s.normalize(), Err(BucketSettingsError::MaxBelowResolution { .. })));
        let mut s = BucketSettings { resolution: (128, 512), ..Default::default() };
        assert!(matches!(s.normalize(), Err(BucketSettingsError::MinAboveResolution { .. })));
    }

    #[test]
    fn histogram_batches() {
        let mut h = BucketHistogram::default();
        h.add((512, 512), 3);
        h.add((448, 576), 4);
        h.add((512, 512), 2);
        assert_eq!(h.buckets, vec![((448, 576), 4), ((512, 512), 5)]);
        assert_eq!(h.batches(2), 2 + 3);
        assert_eq!(h.samples(), 9);
    }
}
