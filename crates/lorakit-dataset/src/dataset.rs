//! Loading a dataset the way training will see it: list each subset's images,
//! read captions, probe images (in parallel), balance regularisation repeats
//! against the train images, and put every image in its bucket.
//!
//! Unlike sd-scripts, a broken image never stops the run: it is left out, with
//! the reason, and every count below is over the images that can be used.

use crate::bucket::{BucketChoice, BucketError, BucketHistogram, BucketManager};
use crate::caption::{count_tags, read_caption, CaptionFile};
use crate::config::{DatasetSpec, SubsetSpec};
use crate::fingerprint_cache::FingerprintCache;
use crate::folders::{list_images, FolderListing, ImageFile};
use crate::probe::{decode_and_fingerprint, probe_header, ImageProbe, ProbeError};
use crate::steps::MAX_SAMPLES_PER_EPOCH;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;

/// How deeply images are examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbeMode {
    /// Header only: format, size, orientation. Fast; misses damage after the header.
    Header,
    /// Decode every pixel and fingerprint (finds truncated files and duplicates).
    #[default]
    Full,
}

/// Where an image's caption came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionSource {
    /// Its caption file.
    File,
    /// No caption file (or a 0-byte one): the subset's class tokens.
    ClassTokens,
    /// No caption file and no class tokens: an empty caption.
    Missing,
}

/// One image of a dataset and everything known about it.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    /// The image file.
    pub file: ImageFile,
    /// Index of its subset in [`LoadedDataset::subsets`].
    pub subset: usize,
    /// A regularisation image.
    pub is_reg: bool,
    /// Times seen per epoch (regularisation images: after balancing; 0 if unused).
    pub repeats: u32,
    /// The caption as training reads it (before shuffling, dropout, prefix/suffix).
    pub caption: String,
    /// Where the caption came from.
    pub caption_source: CaptionSource,
    /// The caption file, if one exists.
    pub caption_file: Option<CaptionFile>,
    /// Reading the caption file failed.
    pub caption_error: Option<String>,
    /// The image header (or why it cannot be read).
    pub probe: Result<ImageProbe, ProbeError>,
    /// File hash and perceptual hash (full mode only).
    pub fingerprint: Option<(u128, u64)>,
    /// Its bucket (None when the image cannot be read).
    pub bucket: Option<Result<BucketChoice, BucketError>>,
    /// Left out of the training split (`validation_split`; see [`apply_validation_split`]).
    pub held_out: bool,
    /// In the validation split: its loss is measured, never trained on.
    pub validation: bool,
}

impl ImageRecord {
    /// The image can be trained on: readable and with a bucket.
    pub fn usable(&self) -> bool {
        matches!(self.bucket, Some(Ok(_)))
    }

    /// The image is part of training (usable, in the training split, and not a surplus
    /// regularisation image).
    pub fn trained(&self) -> bool {
        self.usable() && !self.held_out && self.repeats > 0
    }
}

/// One subset after loading.
#[derive(Debug, Clone)]
pub struct LoadedSubset {
    /// Its settings.
    pub spec: SubsetSpec,
    /// What was found in its folder.
    pub listing: FolderListing,
    /// The folder could not be read (missing, permissions).
    pub read_error: Option<String>,
    /// Number of images found.
    pub images: usize,
    /// Number of usable images.
    pub usable: usize,
}

/// A dataset as training will see it.
#[derive(Debug, Clone)]
pub struct LoadedDataset {
    /// Its settings.
    pub spec: DatasetSpec,
    /// Predefined buckets (empty with `bucket_no_upscale`).
    pub predefined_buckets: Vec<(u32, u32)>,
    /// Subsets in order.
    pub subsets: Vec<LoadedSubset>,
    /// Every image found, train subsets first, each subset in path order.
    pub images: Vec<ImageRecord>,
    /// Samples per bucket (repeats included).
    pub histogram: BucketHistogram,
    /// Σ usable train images × repeats.
    pub num_train_images: u64,
    /// Σ usable regularisation images × their folder repeats (before balancing).
    pub num_reg_images: u64,
    /// Tag counts per folder name, as sd-scripts writes `ss_tag_frequency`.
    pub tag_frequency: BTreeMap<String, BTreeMap<String, u64>>,
    /// Mean |bucket aspect − image aspect| over usable images (bucketing on).
    pub mean_ar_error: Option<f64>,
}

/// What [`LoadedDataset::recount`] derives from the images.
struct Counts {
    histogram: BucketHistogram,
    num_train_images: u64,
    num_reg_images: u64,
    tag_frequency: BTreeMap<String, BTreeMap<String, u64>>,
    mean_ar_error: Option<f64>,
}

impl LoadedDataset {
    /// Recomputes every count from the images (after the validation split changed which are
    /// trained): regularisation repeats are balanced again from their folders' repeats.
    pub fn recount(&mut self) {
        for r in self.images.iter_mut().filter(|r| r.is_reg) {
            r.repeats = self.subsets[r.subset].spec.num_repeats;
        }
        let counts = count(&mut self.images, &self.subsets, &self.spec);
        self.histogram = counts.histogram;
        self.num_train_images = counts.num_train_images;
        self.num_reg_images = counts.num_reg_images;
        self.tag_frequency = counts.tag_frequency;
        self.mean_ar_error = counts.mean_ar_error;
    }

    /// The images of the validation split, in dataset order.
    pub fn validation_images(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.iter().filter(|r| r.validation && r.usable())
    }

    /// Batches per epoch: Σ over buckets of ceil(samples / batch size).
    pub fn batches_per_epoch(&self) -> u64 {
        self.histogram.batches(self.spec.batch_size)
    }

    /// Regularisation images that training never uses (more reg images than train samples).
    pub fn unused_reg_images(&self) -> usize {
        self.images.iter().filter(|r| r.is_reg && r.usable() && r.repeats == 0).count()
    }

    /// Samples in one epoch: Σ repeats of the trained images (regularisation included).
    pub fn samples_per_epoch(&self) -> u64 {
        self.histogram.buckets.iter().map(|&(_, n)| n).sum()
    }

    /// Refuses an epoch of more than [`MAX_SAMPLES_PER_EPOCH`] samples (training lays one epoch
    /// out in memory), naming the subset with the most samples and its repeat count.
    pub fn check_epoch_size(&self) -> Result<(), String> {
        let samples = self.samples_per_epoch();
        if samples <= MAX_SAMPLES_PER_EPOCH {
            return Ok(());
        }
        let mut per_subset = vec![(0u64, 0usize); self.subsets.len()];
        for r in self.images.iter().filter(|r| r.trained()) {
            per_subset[r.subset].0 += u64::from(r.repeats);
            per_subset[r.subset].1 += 1;
        }
        let too_many =
            format!("one epoch would hold {samples} samples, more than the {MAX_SAMPLES_PER_EPOCH} lorakit supports");
        let Some((si, &(largest, images))) = per_subset.iter().enumerate().max_by_key(|(_, (n, _))| *n) else {
            return Err(too_many);
        };
        let spec = &self.subsets[si].spec;
        let key = if spec.is_reg { "regularisation repeats (balanced to the train samples)" } else { "num_repeats" };
        Err(format!(
            "{too_many}; most come from {} ({images} image(s) × {key} {} = {largest} samples): lower its repeat count \
             (the number in the folder name, or num_repeats in the dataset config)",
            spec.image_dir.display(),
            spec.num_repeats,
        ))
    }
}

/// Reads the caption of one image, applying sd-scripts' fallbacks.
fn caption_of(file: &ImageFile, subset: &SubsetSpec) -> (String, CaptionSource, Option<CaptionFile>, Option<String>) {
    let fallback = || match &subset.class_tokens {
        Some(c) => (c.clone(), CaptionSource::ClassTokens),
        None => (String::new(), CaptionSource::Missing),
    };
    match read_caption(&file.path, &subset.caption_extension, subset.caption.enable_wildcard) {
        Ok(Some(cf)) if cf.zero_bytes => {
            let (text, src) = fallback();
            (text, src, Some(cf), None)
        }
        Ok(Some(cf)) => (cf.text.clone(), CaptionSource::File, Some(cf), None),
        Ok(None) => {
            let (text, src) = fallback();
            (text, src, None, None)
        }
        Err(e) => {
            let (text, src) = fallback();
            (text, src, None, Some(e.to_string()))
        }
    }
}

/// Progress of a long load, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadProgress {
    /// The folders are listed: this many images will be examined.
    Found(u64),
    /// One more image was examined.
    Examined,
}

/// Loads one dataset: every subset's images, captions, sizes and buckets.
pub fn load_dataset(spec: &DatasetSpec, mode: ProbeMode) -> LoadedDataset {
    load_dataset_with(spec, mode, &FingerprintCache::disabled(), &|_| {})
}

/// [`load_dataset`] with a cache of decode results (full mode) and progress
/// reports (`progress` is called from several threads).
pub fn load_dataset_with(
    spec: &DatasetSpec,
    mode: ProbeMode,
    cache: &FingerprintCache,
    progress: &(dyn Fn(LoadProgress) + Sync),
) -> LoadedDataset {
    let manager = BucketManager::new(&spec.buckets);

    // Train subsets first, then regularisation, as sd-scripts registers them.
    let mut order: Vec<&SubsetSpec> = spec.subsets.iter().filter(|s| !s.is_reg).collect();
    order.extend(spec.subsets.iter().filter(|s| s.is_reg));

    let mut subsets = Vec::new();
    let mut jobs: Vec<(usize, ImageFile)> = Vec::new();
    for (si, subset) in order.iter().enumerate() {
        let (listing, read_error) = match list_images(&subset.image_dir) {
            Ok(l) => (l, None),
            Err(e) => (FolderListing::default(), Some(e.to_string())),
        };
        match &read_error {
            None => tracing::debug!(
                dir = %subset.image_dir.display(),
                images = listing.images.len(),
                repeats = subset.num_repeats,
                is_reg = subset.is_reg,
                "subset listed"
            ),
            Some(e) => tracing::warn!(dir = %subset.image_dir.display(), error = %e, "cannot list subset folder"),
        }
        jobs.extend(listing.images.iter().cloned().map(|f| (si, f)));
        subsets.push(LoadedSubset {
            spec: (*subset).clone(),
            images: listing.images.len(),
            listing,
            read_error,
            usable: 0,
        });
    }

    progress(LoadProgress::Found(jobs.len() as u64));
    let started = std::time::Instant::now();
    let mut images: Vec<ImageRecord> = jobs
        .into_par_iter()
        .map(|(si, file)| {
            let subset = order[si];
            let (caption, caption_source, caption_file, caption_error) = caption_of(&file, subset);
            let (probe, fingerprint) = match mode {
                ProbeMode::Header => (probe_header(&file.path), None),
                ProbeMode::Full => match cache.get(&file.path).unwrap_or_else(|| {
                    let decoded = decode_and_fingerprint(&file.path);
                    cache.put(&file.path, &decoded);
                    decoded
                }) {
                    Ok(d) => (Ok(d.probe), Some((d.content_hash, d.phash))),
                    Err(e) => (Err(e), None),
                },
            };
            let bucket = probe.as_ref().ok().map(|p| manager.select(p.size.0, p.size.1));
            progress(LoadProgress::Examined);
            ImageRecord {
                file,
                subset: si,
                is_reg: subset.is_reg,
                repeats: subset.num_repeats,
                caption,
                caption_source,
                caption_file,
                caption_error,
                probe,
                fingerprint,
                bucket,
                held_out: false,
                validation: false,
            }
        })
        .collect();

    tracing::debug!(images = images.len(), elapsed = ?started.elapsed(), ?mode, "images examined");
    for r in &images {
        if r.usable() {
            subsets[r.subset].usable += 1;
        }
    }

    let counts = count(&mut images, &subsets, spec);
    LoadedDataset {
        spec: spec.clone(),
        predefined_buckets: manager.predefined().to_vec(),
        subsets,
        images,
        histogram: counts.histogram,
        num_train_images: counts.num_train_images,
        num_reg_images: counts.num_reg_images,
        tag_frequency: counts.tag_frequency,
        mean_ar_error: counts.mean_ar_error,
    }
}

/// Balances the regularisation repeats (from their folder repeats) and counts what training
/// sees: train images in the training split, buckets, tags, aspect error.
fn count(images: &mut [ImageRecord], subsets: &[LoadedSubset], spec: &DatasetSpec) -> Counts {
    let num_train_images: u64 =
        images.iter().filter(|r| !r.is_reg && !r.held_out && r.usable()).map(|r| u64::from(r.repeats)).sum();
    let num_reg_images: u64 = images.iter().filter(|r| r.is_reg && r.usable()).map(|r| u64::from(r.repeats)).sum();
    balance_reg_repeats(images, num_train_images);

    let mut histogram = BucketHistogram::default();
    let mut tag_frequency: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut ar_errors = Vec::new();
    for r in images.iter().filter(|r| r.trained()) {
        if let Some(Ok(choice)) = &r.bucket {
            histogram.add(choice.bucket, u64::from(r.repeats));
            ar_errors.push(choice.ar_error.abs());
        }
        let dir_name = subsets[r.subset].spec.image_dir.file_name().map(|n| n.to_string_lossy().into_owned());
        count_tags(&r.caption, tag_frequency.entry(dir_name.unwrap_or_default()).or_default());
    }
    let mean_ar_error = (spec.buckets.enable_bucket && !ar_errors.is_empty())
        .then(|| ar_errors.iter().sum::<f64>() / ar_errors.len() as f64);
    Counts { histogram, num_train_images, num_reg_images, tag_frequency, mean_ar_error }
}

/// sd-scripts' validation split over every dataset of a run (`validation_split`,
/// `validation_seed`; see [`crate::validation_split`] for how sd-scripts cuts): every image not in
/// the training split is marked `held_out` and every image of the validation split `validation`,
/// and the split datasets are counted again (regularisation balanced against the remaining train
/// images). `run_seed` is the run's seed, which sd-scripts' shuffles draw from when a dataset
/// has no `validation_seed`. Returns notes for the user: what is held out, and images that
/// sd-scripts' cut puts in both splits.
pub fn apply_validation_split(datasets: &mut [LoadedDataset], run_seed: u64) -> Vec<String> {
    use crate::validation_split::{SplitSettings, ValidationSplitter};
    let settings: Vec<SplitSettings> = datasets
        .iter()
        .map(|d| SplitSettings::new(d.spec.validation_split, d.spec.validation_seed).unwrap_or(SplitSettings::NONE))
        .collect();
    if !settings.iter().any(SplitSettings::is_split) {
        return Vec::new();
    }
    // Each subset's records in its sorted file order: the list sd-scripts shuffles.
    let members: Vec<Vec<Vec<usize>>> = datasets
        .iter()
        .map(|ds| {
            let mut per_subset = vec![Vec::new(); ds.subsets.len()];
            for (i, r) in ds.images.iter().enumerate() {
                per_subset[r.subset].push(i);
            }
            per_subset
        })
        .collect();
    let mut splitter = ValidationSplitter::new(run_seed);
    let mut training: Vec<Vec<bool>> = datasets.iter().map(|ds| vec![true; ds.images.len()]).collect();
    for (d, ds) in datasets.iter().enumerate() {
        for (si, subset) in ds.subsets.iter().enumerate() {
            let list = &members[d][si];
            // These draw nothing from sd-scripts' random state and keep every image; it skips
            // subsets without repeats before its training shuffle.
            if !settings[d].is_split() || subset.spec.is_reg || subset.spec.num_repeats < 1 {
                continue;
            }
            for &i in list {
                training[d][i] = false;
            }
            for k in splitter.training_indices(list.len(), false, settings[d]) {
                training[d][list[k]] = true;
            }
        }
    }
    let mut pass = splitter.validation_pass();
    let mut notes = Vec::new();
    for (d, ds) in datasets.iter_mut().enumerate() {
        if !settings[d].is_split() {
            continue;
        }
        for (si, subset) in ds.subsets.iter().enumerate() {
            let list = &members[d][si];
            for k in pass.validation_indices(list.len(), subset.spec.is_reg, settings[d]) {
                ds.images[list[k]].validation = true;
            }
        }
        for (r, trained) in ds.images.iter_mut().zip(&training[d]) {
            r.held_out = !trained;
        }
        ds.recount();
        let held_out = ds.images.iter().filter(|r| r.held_out && r.usable()).count();
        let validation = ds.validation_images().count();
        let both = ds.validation_images().filter(|r| !r.held_out && !r.is_reg).count();
        notes.push(format!(
            "dataset {}: validation_split {} holds {held_out} image(s) out of training; the validation loss is measured on {validation}",
            d + 1,
            ds.spec.validation_split
        ));
        if both > 0 {
            notes.push(format!(
                "dataset {}: {both} image(s) are both trained and validated on, as sd-scripts splits them ({})",
                d + 1,
                if ds.spec.validation_seed.is_some() {
                    "its training cut rounds up and its validation cut rounds to nearest"
                } else {
                    "without validation_seed its validation images come from a second shuffle; set validation_seed to cut both from one"
                }
            ));
        }
    }
    notes
}

/// sd-scripts' regularisation balancing (§5.2): take reg images in order, each
/// with its folder's repeats, until their samples reach the train sample count
/// `target`; if one pass is not enough, keep adding one repeat to each in turn.
/// Reg images past the point where the count is reached get 0 repeats (unused).
fn balance_reg_repeats(images: &mut [ImageRecord], target: u64) {
    let reg: Vec<usize> = images.iter().enumerate().filter(|(_, r)| r.is_reg && r.usable()).map(|(i, _)| i).collect();
    let mut repeats: Vec<u64> = vec![0; reg.len()];
    let mut n: u64 = 0;
    if !reg.is_empty() && target > 0 {
        'first: for (k, &i) in reg.iter().enumerate() {
            repeats[k] = u64::from(images[i].repeats);
            n += repeats[k];
            if n >= target {
                break 'first;
            }
        }
        if n < target {
            // Every reg image is registered; spread the remainder one repeat at a time.
            let extra = target - n;
            let len = reg.len() as u64;
            for (k, r) in repeats.iter_mut().enumerate() {
                *r += extra / len + u64::from((k as u64) < extra % len);
            }
        }
    }
    for (k, &i) in reg.iter().enumerate() {
        // Above u32 only when the train samples are far above MAX_SAMPLES_PER_EPOCH, a dataset
        // `check_epoch_size` refuses (so this bound is never trained with).
        images[i].repeats = u32::try_from(repeats[k]).unwrap_or(u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn reg_record(repeats: u32) -> ImageRecord {
        ImageRecord {
            file: ImageFile { path: PathBuf::from("x.png"), is_symlink: false, broken_link: false },
            subset: 0,
            is_reg: true,
            repeats,
            caption: String::new(),
            caption_source: CaptionSource::Missing,
            caption_file: None,
            caption_error: None,
            probe: Err(ProbeError::Empty),
            fingerprint: None,
            bucket: Some(Ok(BucketChoice { bucket: (512, 512), resized: (512, 512), ar_error: 0.0 })),
            held_out: false,
            validation: false,
        }
    }

    /// The loop exactly as sd-scripts writes it, to compare against.
    fn sd_scripts_balance(repeats: &[u32], target: u64) -> Vec<u64> {
        let mut reps: Vec<u64> = repeats.iter().map(|&r| u64::from(r)).collect();
        let mut registered = vec![false; reps.len()];
        let mut n = 0;
        let mut first = true;
        while n < target {
            for k in 0..reps.len() {
                if first {
                    registered[k] = true;
                    n += reps[k];
                } else {
                    reps[k] += 1;
                    n += 1;
                }
                if n >= target {
                    break;
                }
            }
            first = false;
        }
        reps.iter().zip(&registered).map(|(r, g)| if *g { *r } else { 0 }).collect()
    }

    #[test]
    fn reg_balancing_matches_sd_scripts_loop() {
        for (reps, target) in [
            (vec![1], 82u64),
            (vec![1, 1, 1], 10),
            (vec![2, 3], 4),
            (vec![5, 5, 5, 5], 7),
            (vec![1, 2, 3, 4], 101),
            (vec![10], 10),
            (vec![3, 1], 0),
        ] {
            let mut imgs: Vec<ImageRecord> = reps.iter().map(|&r| reg_record(r)).collect();
            balance_reg_repeats(&mut imgs, target);
            let got: Vec<u64> = imgs.iter().map(|r| u64::from(r.repeats)).collect();
            let want = if target == 0 { vec![0; reps.len()] } else { sd_scripts_balance(&reps, target) };
            assert_eq!(got, want, "repeats {reps:?} target {target}");
        }
    }
}
