//! From the `[dataset]` settings to the batches of each epoch.
//!
//! Batches follow sd-scripts' rules (spec §4.7): every image enters its bucket once per repeat
//! (regularisation images with their balanced repeats), each bucket is cut into batches of
//! `batch_size` (the last one may be short; batches never mix buckets), and each epoch the images
//! inside every bucket and the list of batches are shuffled. The shuffles are seeded by
//! `(seed, epoch)` only — never by a running RNG — so an epoch's order is the same whether the
//! run was interrupted or not, which is what makes resume exact.

use std::path::{Path, PathBuf};

use lorakit_dataset::bucket::{BucketChoice, Reso};
use lorakit_dataset::config::{
    plan_from_dirs, plan_from_toml, CaptionOptions, DatasetPlan, OptionLayer, ResolutionValue,
};
use lorakit_dataset::dataset::{apply_validation_split, load_dataset, ImageRecord, LoadedDataset, ProbeMode};
use lorakit_dataset::steps::StepPlan;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand::{rngs::StdRng, Rng};
use serde::Serialize;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// A deterministic RNG for one purpose at one point of the run: the same inputs always give
/// the same stream (SplitMix64-style mixing of the parts into a seed).
pub fn rng_for(parts: &[u64]) -> StdRng {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
        h = splitmix(h);
    }
    StdRng::seed_from_u64(h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Purposes of [`rng_for`] streams (kept distinct so adding one never shifts another).
pub mod stream {
    /// Order of images within buckets.
    pub const BUCKET_ORDER: u64 = 1;
    /// Order of batches.
    pub const BATCH_ORDER: u64 = 2;
    /// Horizontal flips.
    pub const FLIP: u64 = 3;
    /// Noise and timesteps of one micro-step.
    pub const NOISE: u64 = 4;
    /// LoRA dropout masks of one micro-step.
    pub const DROPOUT: u64 = 5;
    /// VAE sampling of one image's latent.
    pub const LATENT: u64 = 6;
    /// Caption shuffling and dropout of one sample.
    pub const CAPTION: u64 = 7;
    /// Random crop and colour augmentation of one sample.
    pub const AUGMENT: u64 = 8;
    /// The model family's own training draws of one micro-step (SD3: text-encoder dropout,
    /// position-table crop).
    pub const MODEL: u64 = 9;
    /// The noise of one validation batch at one validation timestep.
    pub const VALIDATION: u64 = 10;
    /// The model family's own draws in one validation forward.
    pub const VALIDATION_MODEL: u64 = 11;
}

/// One image as training uses it.
#[derive(Debug, Clone, Serialize)]
pub struct TrainImage {
    /// The image file.
    pub path: PathBuf,
    /// Its caption as read (prefix/suffix, shuffling and dropout are applied per sample).
    pub caption: String,
    /// Its subset's caption handling.
    pub caption_options: CaptionOptions,
    /// Its bucket and the size it is resized to before cropping.
    pub choice: BucketChoice,
    /// Times it is seen per epoch.
    pub repeats: u32,
    /// A regularisation image (loss weighted by `prior_loss_weight`).
    pub is_reg: bool,
    /// Flip augmentation applies.
    pub flip_aug: bool,
    /// A random crop instead of the centre one (sd-scripts' `random_crop`; no latent caching).
    pub random_crop: bool,
    /// sd-scripts' `color_aug` (no latent caching).
    pub color_aug: bool,
    /// The image's alpha channel masks the loss (`alpha_mask`).
    pub alpha_mask: bool,
    /// Resize filter.
    pub interpolation: Option<String>,
    /// The size SDXL's micro-conditioning reports as the original `(W, H)`: the upright image
    /// size, or the training resolution when bucketing is off (sd-scripts then crops to it).
    pub original_size: (u32, u32),
}

impl TrainImage {
    /// SDXL's size/crop conditioning of this image as sd-scripts computes it for a sample:
    /// `get_crop_ltrb` of the bucket and the original size, mirrored when `flip` (zero when the
    /// original size is the bucket, as without bucketing).
    pub fn size_condition(&self, flip: bool) -> crate::model::SizeCondition {
        let (bw, bh) = self.choice.bucket;
        let (left, top, _, _) = lorakit_dataset::preprocess::crop_ltrb(self.choice.bucket, self.original_size, flip);
        crate::model::SizeCondition {
            original_hw: (self.original_size.1, self.original_size.0),
            crop_top_left: (top, left),
            target_hw: (bh, bw),
        }
    }
}

/// One entry of a batch: an image and whether it is flipped this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleRef {
    /// Index into [`TrainData::images`].
    pub image: usize,
    /// Flipped horizontally.
    pub flip: bool,
}

/// One batch: images of one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The bucket (W, H).
    pub bucket: Reso,
    /// Its samples.
    pub samples: Vec<SampleRef>,
}

/// One dataset's batching: its batch size and, per bucket, its images with their repeats
/// (repeats are counts, laid out as samples only for the epoch being built, so memory does not
/// grow with the repeat count beyond one epoch, nor with the number of epochs).
struct BatchGroup {
    batch_size: u32,
    buckets: Vec<BucketMembers>,
}

/// The images of one bucket: `(image index, repeats)` in file order, and their sample total.
struct BucketMembers {
    bucket: Reso,
    images: Vec<(usize, u32)>,
    samples: u64,
}

impl BucketMembers {
    /// Every sample of an epoch in file order: each image once per repeat.
    fn samples(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.samples as usize);
        for &(image, repeats) in &self.images {
            out.extend(std::iter::repeat_n(image, repeats as usize));
        }
        out
    }
}

/// Everything training needs from the dataset.
pub struct TrainData {
    /// The usable images.
    pub images: Vec<TrainImage>,
    /// Per dataset: how its images are batched.
    groups: Vec<BatchGroup>,
    /// The loaded datasets (for metadata).
    pub datasets: Vec<LoadedDataset>,
    /// Notes from resolving the config.
    pub notes: Vec<String>,
    /// Whether the dataset came from a dataset TOML.
    pub from_dataset_config: bool,
    /// The validation split's batches (`dataset.validation_split`): per dataset, its held-out
    /// images by bucket (buckets by size, files in path order), cut into batches of its batch
    /// size, never flipped. Their images are in [`TrainData::images`] with 0 repeats unless
    /// they are trained too (sd-scripts' split without a `validation_seed` can do that).
    pub validation: Vec<Batch>,
}

impl TrainData {
    /// Loads the dataset the config describes.
    pub fn load(config: &TrainConfig) -> Result<TrainData> {
        let plan = plan_for(config)?;
        let mut notes: Vec<String> = plan.notes.iter().map(|n| n.message.clone()).collect();
        let mut datasets: Vec<LoadedDataset> =
            plan.datasets.iter().map(|d| load_dataset(d, ProbeMode::Header)).collect();
        // sd-scripts' shuffles draw from the run seed (its `set_seed`) unless a validation_seed is given.
        notes.extend(apply_validation_split(&mut datasets, config.training.seed));
        let mut data = Self::from_loaded(datasets, notes, config.dataset.dataset_config.is_some())?;
        let t = &config.training;
        if data.validation.is_empty()
            && (t.validate_every_n_steps.is_some()
                || t.validate_every_n_epochs.is_some()
                || t.max_validation_steps.is_some())
        {
            data.notes.push(
                "training.validate_every_n_steps / validate_every_n_epochs / max_validation_steps have no effect: no \
                 images are held out for validation (set dataset.validation_split, or validation_split in the dataset TOML)"
                    .into(),
            );
        }
        // The run length must be representable before anything is planned from it (the trainer
        // plans with exactly this request).
        StepPlan::try_new(data.batches_per_epoch(), config.step_request())
            .map_err(|e| TrainError::Other(format!("training.{e}")))?;
        if config.loss.masked_loss && !data.images.iter().any(|i| i.alpha_mask) {
            return Err(TrainError::Dataset(
                "loss.masked_loss is on but no subset uses alpha_mask: set dataset.alpha_mask = true (or alpha_mask in \
                 the dataset TOML) for images with transparency; masks from a conditioning_data_dir are not supported yet"
                    .into(),
            ));
        }
        if config.training.cache_latents {
            // sd-scripts' rule: a cached latent has one crop and one colour.
            if let Some(image) = data.images.iter().find(|i| i.random_crop || i.color_aug) {
                return Err(TrainError::Dataset(format!(
                    "{}: its subset uses {} but training.cache_latents is on (a cached latent has one fixed crop and \
                     colour); turn caching off or the option off",
                    image.path.display(),
                    if image.random_crop { "random_crop" } else { "color_aug" }
                )));
            }
        }
        Ok(data)
    }

    /// Builds the training view of already loaded datasets.
    pub fn from_loaded(
        datasets: Vec<LoadedDataset>,
        notes: Vec<String>,
        from_dataset_config: bool,
    ) -> Result<TrainData> {
        let mut images = Vec::new();
        let mut groups = Vec::new();
        let mut problems = Vec::new();
        let mut validation = Vec::new();
        for ds in &datasets {
            ds.check_epoch_size().map_err(TrainError::Dataset)?;
            let mut buckets: Vec<BucketMembers> = Vec::new();
            // Index in `images` of each record trained (by record position), for the validation split.
            let mut trained_index = vec![None; ds.images.len()];
            for (position, record) in ds.images.iter().enumerate() {
                if let Some(Err(e)) = &record.bucket {
                    problems.push(format!("{}: {e}", record.file.path.display()));
                }
                if let Err(e) = &record.probe {
                    problems.push(format!("{}: {e}", record.file.path.display()));
                }
                if !record.trained() {
                    continue;
                }
                let Some(image) = train_image(ds, record, record.repeats) else { continue };
                let choice = image.choice;
                let index = images.len();
                trained_index[position] = Some(index);
                images.push(image);
                let slot = match buckets.iter().position(|b| b.bucket == choice.bucket) {
                    Some(i) => i,
                    None => {
                        buckets.push(BucketMembers { bucket: choice.bucket, images: Vec::new(), samples: 0 });
                        buckets.len() - 1
                    }
                };
                buckets[slot].images.push((index, record.repeats));
                buckets[slot].samples += u64::from(record.repeats);
            }
            // Buckets in a fixed order (by size) so the epoch order does not depend on file order
            // quirks beyond what the shuffles decide.
            buckets.sort_by_key(|b| b.bucket);
            groups.push(BatchGroup { batch_size: ds.spec.batch_size, buckets });

            let mut held_out: std::collections::BTreeMap<Reso, Vec<usize>> = Default::default();
            for (position, record) in ds.images.iter().enumerate().filter(|(_, r)| r.validation) {
                let index = match trained_index[position] {
                    Some(index) => index,
                    None => {
                        let Some(image) = train_image(ds, record, 0) else { continue };
                        images.push(image);
                        images.len() - 1
                    }
                };
                held_out.entry(images[index].choice.bucket).or_default().push(index);
            }
            for (bucket, members) in held_out {
                for chunk in members.chunks(ds.spec.batch_size.max(1) as usize) {
                    let samples = chunk.iter().map(|&image| SampleRef { image, flip: false }).collect();
                    validation.push(Batch { bucket, samples });
                }
            }
        }
        if images.iter().all(|i| i.is_reg || i.repeats == 0) {
            let mut msg = String::from(
                "no trainable images found. Put images (png, jpg, webp) in folders named like `10_mychar` \
                 inside the train folder (10 = repeats per epoch); `lorakit dataset check <folder>` shows what was found",
            );
            if !problems.is_empty() {
                msg.push_str("\nproblems:\n");
                msg.push_str(&problems.iter().take(10).cloned().collect::<Vec<_>>().join("\n"));
            }
            return Err(TrainError::Dataset(msg));
        }
        for p in problems.iter().take(20) {
            tracing::warn!("left out of training: {p}");
        }
        let mut notes = notes;
        notes.extend(not_yet_applied(&datasets));
        notes.extend(skipped_files(&datasets));
        Ok(TrainData { images, groups, datasets, notes, from_dataset_config, validation })
    }

    /// Batches per epoch (Σ over datasets and buckets of ceil(samples / batch size)).
    pub fn batches_per_epoch(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| g.buckets.iter().map(|b| b.samples.div_ceil(u64::from(g.batch_size))).sum::<u64>())
            .sum()
    }

    /// Σ train images × repeats.
    pub fn num_train_images(&self) -> u64 {
        self.images.iter().filter(|i| !i.is_reg).map(|i| u64::from(i.repeats)).sum()
    }

    /// Images in the validation split.
    pub fn num_validation_images(&self) -> usize {
        self.validation.iter().map(|b| b.samples.len()).sum()
    }

    /// Σ regularisation images × repeats used.
    pub fn num_reg_images(&self) -> u64 {
        self.images.iter().filter(|i| i.is_reg).map(|i| u64::from(i.repeats)).sum()
    }

    /// The batches of epoch `epoch` (0-based) for run seed `seed`. Memory: one epoch's samples
    /// (at most `MAX_SAMPLES_PER_EPOCH`, checked when the data is loaded), whatever the epoch.
    pub fn epoch_batches(&self, seed: u64, epoch: u64) -> Vec<Batch> {
        let mut order_rng = rng_for(&[seed, stream::BUCKET_ORDER, epoch]);
        let mut flip_rng = rng_for(&[seed, stream::FLIP, epoch]);
        let mut batches = Vec::new();
        for group in &self.groups {
            for members in &group.buckets {
                let bucket = &members.bucket;
                let mut members = members.samples();
                members.shuffle(&mut order_rng);
                for chunk in members.chunks(group.batch_size as usize) {
                    let samples = chunk
                        .iter()
                        .map(|&image| SampleRef {
                            image,
                            flip: self.images[image].flip_aug && flip_rng.random::<bool>(),
                        })
                        .collect();
                    batches.push(Batch { bucket: *bucket, samples });
                }
            }
        }
        batches.shuffle(&mut rng_for(&[seed, stream::BATCH_ORDER, epoch]));
        batches
    }

    /// Whether any image can be flipped (latent caching then encodes both orientations).
    pub fn any_flip(&self) -> bool {
        self.images.iter().any(|i| i.flip_aug)
    }
}

/// The training view of a usable image of `ds` (`None`: no bucket), seen `repeats` times per epoch.
fn train_image(ds: &LoadedDataset, record: &ImageRecord, repeats: u32) -> Option<TrainImage> {
    let Some(Ok(choice)) = &record.bucket else { return None };
    let subset = &ds.subsets[record.subset].spec;
    let original_size = match &record.probe {
        Ok(p) if ds.spec.buckets.enable_bucket => p.size,
        _ => choice.bucket,
    };
    Some(TrainImage {
        path: record.file.path.clone(),
        caption: record.caption.clone(),
        caption_options: subset.caption.clone(),
        choice: *choice,
        repeats,
        is_reg: record.is_reg,
        flip_aug: subset.augment.flip_aug,
        random_crop: subset.augment.random_crop,
        color_aug: subset.augment.color_aug,
        alpha_mask: subset.augment.alpha_mask,
        interpolation: subset.resize_interpolation.clone(),
        original_size,
    })
}

/// Files training leaves out or reads differently without it being an error, each named:
/// FIFOs, sockets and devices named like images (never opened), and unreadable caption files
/// of trained images (such as a FIFO caption: the class caption is used instead).
fn skipped_files(datasets: &[LoadedDataset]) -> Vec<String> {
    let mut notes = Vec::new();
    for ds in datasets {
        for subset in &ds.subsets {
            for (path, kind) in &subset.listing.not_regular {
                notes.push(format!("{} is {kind}, not a regular file: left out without being read", path.display()));
            }
        }
        for record in ds.images.iter().filter(|r| r.trained()) {
            if let Some(e) = &record.caption_error {
                notes.push(format!(
                    "the caption of {} cannot be read ({e}); it is trained with {:?}",
                    record.file.path.display(),
                    record.caption
                ));
            }
        }
    }
    notes
}

/// Subset options that training does not apply yet, named so nobody believes they took effect.
fn not_yet_applied(datasets: &[LoadedDataset]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    for ds in datasets {
        for subset in &ds.subsets {
            let a = &subset.spec.augment;
            for (on, name) in [(a.face_crop_aug_range.is_some(), "face_crop_aug_range")] {
                if on {
                    found.insert(name);
                }
            }
        }
    }
    found
        .into_iter()
        .map(|name| {
            format!("dataset option `{name}` is not applied by this version of lorakit yet (training runs without it)")
        })
        .collect()
}

/// The dataset plan for the config: the dataset TOML, or the DreamBooth folders.
fn plan_for(config: &TrainConfig) -> Result<DatasetPlan> {
    let d = &config.dataset;
    let resolution = ResolutionValue::parse(&d.resolution)
        .map_err(|e| TrainError::Dataset(format!("dataset.resolution = {:?}: {e}", d.resolution)))?;
    let layer = OptionLayer {
        batch_size: Some(config.training.train_batch_size),
        resolution: Some(resolution),
        enable_bucket: Some(d.enable_bucket),
        min_bucket_reso: Some(d.min_bucket_reso),
        max_bucket_reso: Some(d.max_bucket_reso),
        bucket_reso_steps: Some(d.bucket_reso_steps),
        bucket_no_upscale: Some(d.bucket_no_upscale),
        caption_extension: Some(d.caption_extension.clone()),
        resize_interpolation: d.resize_interpolation.clone(),
        flip_aug: Some(d.flip_aug),
        random_crop: Some(d.random_crop),
        color_aug: Some(d.color_aug),
        alpha_mask: Some(d.alpha_mask),
        caption_prefix: d.caption_prefix.clone(),
        caption_suffix: d.caption_suffix.clone(),
        shuffle_caption: Some(d.shuffle_caption),
        keep_tokens: Some(d.keep_tokens),
        keep_tokens_separator: Some(d.keep_tokens_separator.clone()),
        secondary_separator: d.secondary_separator.clone(),
        caption_separator: Some(d.caption_separator.clone()),
        enable_wildcard: Some(d.enable_wildcard),
        token_warmup_min: Some(d.token_warmup_min),
        token_warmup_step: Some(d.token_warmup_step),
        caption_dropout_rate: Some(d.caption_dropout_rate),
        caption_dropout_every_n_epochs: Some(d.caption_dropout_every_n_epochs),
        caption_tag_dropout_rate: Some(d.caption_tag_dropout_rate),
        validation_split: Some(d.validation_split),
        validation_seed: d.validation_seed,
        ..Default::default()
    };
    if let Some(toml_path) = &d.dataset_config {
        return plan_from_toml(toml_path, &layer).map_err(|e| TrainError::Dataset(e.to_string()));
    }
    let train_dir = d.train_data_dir.as_deref().ok_or_else(|| {
        TrainError::Dataset(
            "no images to train on: set dataset.train_data_dir (the folder holding `N_name` subfolders) or dataset.dataset_config"
                .into(),
        )
    })?;
    check_dir(train_dir, "dataset.train_data_dir")?;
    if let Some(reg) = &d.reg_data_dir {
        check_dir(reg, "dataset.reg_data_dir")?;
    }
    plan_from_dirs(train_dir, d.reg_data_dir.as_deref(), &layer).map_err(|e| TrainError::Dataset(e.to_string()))
}

fn check_dir(dir: &Path, key: &str) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(TrainError::Dataset(format!("{key} = {}: no such folder", dir.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DreamBooth folders (`name`, images) of 64×64 PNGs in a temp dir.
    fn folders(folders: &[(&str, usize)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, images) in folders {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            for i in 0..*images {
                image::RgbImage::new(64, 64).save(sub.join(format!("{i}.png"))).unwrap();
            }
        }
        dir
    }

    /// The training view of the DreamBooth folders in `dir` (64 px buckets, batch size 2).
    fn train_data(dir: &Path) -> Result<TrainData> {
        let layer = OptionLayer {
            resolution: Some(ResolutionValue::Square(64)),
            min_bucket_reso: Some(64),
            max_bucket_reso: Some(64),
            batch_size: Some(2),
            ..Default::default()
        };
        let plan = plan_from_dirs(dir, None, &layer).unwrap();
        let loaded = plan.datasets.iter().map(|d| load_dataset(d, ProbeMode::Header)).collect();
        TrainData::from_loaded(loaded, Vec::new(), false)
    }

    fn load(spec: &[(&str, usize)]) -> (tempfile::TempDir, Result<TrainData>) {
        let dir = folders(spec);
        let data = train_data(dir.path());
        (dir, data)
    }

    #[cfg(unix)]
    #[test]
    fn fifos_named_like_images_or_captions_are_noted_not_read() {
        let dir = folders(&[("1_a", 1)]);
        let sub = dir.path().join("1_a");
        for name in ["pipe.png", "0.txt"] {
            let c = std::ffi::CString::new(sub.join(name).into_os_string().into_encoded_bytes()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || tx.send(train_data(&path).map(|d| (d.images.len(), d.notes))).ok());
        let result = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("loading a dataset with FIFOs hung");
        let (images, notes) = result.unwrap();
        assert_eq!(images, 1);
        let notes = notes.join("\n");
        assert!(notes.contains("pipe.png is a FIFO"), "{notes}");
        assert!(notes.contains("0.txt") && notes.contains("FIFO") && notes.contains("trained with \"a\""), "{notes}");
    }

    #[test]
    fn repeats_are_counts_laid_out_per_epoch() {
        let (_dir, data) = load(&[("3_a", 2), ("2_b", 1)]);
        let data = data.unwrap();
        assert_eq!(data.batches_per_epoch(), 4); // 8 samples of one bucket, 2 per batch
        for epoch in 0..3 {
            let batches = data.epoch_batches(7, epoch);
            let mut seen = vec![0; data.images.len()];
            batches.iter().flat_map(|b| &b.samples).for_each(|s| seen[s.image] += 1);
            let want: Vec<u32> = data.images.iter().map(|i| i.repeats).collect();
            assert_eq!(seen, want.iter().map(|&r| r as usize).collect::<Vec<_>>(), "epoch {epoch}");
            assert_eq!(batches, data.epoch_batches(7, epoch), "an epoch's order depends only on (seed, epoch)");
        }
    }

    #[test]
    fn an_absurd_epoch_is_refused_by_folder_before_any_sample_is_laid_out() {
        // 4,294,967,295 repeats fit the folder name, but one epoch would need ~270 GB of samples.
        let (_dir, data) = load(&[("4294967295_huge", 1), ("2_fine", 1)]);
        let message = match data {
            Err(TrainError::Dataset(m)) => m,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("an epoch of 4294967297 samples was accepted"),
        };
        assert!(message.contains("4294967295_huge") && message.contains("4294967297 samples"), "{message}");
    }

    #[test]
    fn rng_streams_differ_and_repeat() {
        let a: u64 = rng_for(&[1, 2, 3]).random();
        let b: u64 = rng_for(&[1, 2, 3]).random();
        let c: u64 = rng_for(&[1, 2, 4]).random();
        let d: u64 = rng_for(&[1, 3, 2]).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
