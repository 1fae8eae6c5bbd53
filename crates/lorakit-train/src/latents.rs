//! Latents: encoding training images with the VAE, in memory or cached on disk.
//!
//! A disk cache file sits next to its image (`photo.png` → `photo.lorakit-latent.safetensors`,
//! like sd-scripts' `.npz` files) and records what it was made from: a hash of the image bytes,
//! the bucket and resize size, the resize filter and a fingerprint of the VAE. It is reused only
//! when all of them match, so editing an image, changing the resolution or switching the VAE can
//! never feed stale latents to training. The VAE's posterior is sampled with noise seeded by the
//! image hash: the same image always gives the same latent, cached or not.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lorakit_dataset::preprocess::{load_alpha_mask, load_training_image_with_color, ColorAug, Crop};

use crate::data::{rng_for, stream, TrainData, TrainImage};
use crate::error::{Result, TrainError};
use crate::model::TrainableModel;

/// Version of the cache file layout (bumped when the meaning of a file changes).
const CACHE_FORMAT: &str = "1";

/// How one sample is cropped and coloured this time (drawn per step when the subset asks for
/// `random_crop` / `color_aug`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleAugment {
    pub crop: Crop,
    pub color: Option<ColorAug>,
}

impl SampleAugment {
    /// Centre crop, original colours (what cached latents hold).
    pub const NONE: SampleAugment = SampleAugment { crop: Crop::Center, color: None };
}

/// Loads one image, resized and cropped to its bucket, as a `(1, 3, H, W)` tensor in [-1, 1].
pub fn image_tensor(image: &TrainImage, flip: bool, augment: SampleAugment, device: &Device) -> Result<Tensor> {
    let loaded = load_training_image_with_color(
        &image.path,
        &image.choice,
        image.interpolation.as_deref(),
        augment.crop,
        flip,
        augment.color,
    )
    .map_err(unreadable)?;
    let (w, h) = (loaded.width as usize, loaded.height as usize);
    Ok(Tensor::from_vec(loaded.pixels, (1, 3, h, w), &Device::Cpu)?.to_device(device)?)
}

/// The error for a training image that cannot be loaded (the run's and the preflight's).
fn unreadable(e: impl std::fmt::Display) -> TrainError {
    TrainError::Dataset(format!("{e}\n(fix or remove the image; `lorakit dataset check` lists every unreadable file)"))
}

/// Decodes every training image as the run loads it (resized and cropped to its bucket), so an
/// image whose header reads but whose data does not fails before training, not at the step or
/// the caching that first meets it. In parallel; the first failure in dataset order is reported.
pub fn check_images_decode(data: &TrainData) -> Result<()> {
    let images = &data.images;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, images.len().max(1));
    let chunk = images.len().div_ceil(threads).max(1);
    let failures: Vec<(usize, TrainError)> = std::thread::scope(|scope| {
        let workers: Vec<_> = images
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter().enumerate().find_map(|(i, image)| {
                        load_training_image_with_color(
                            &image.path,
                            &image.choice,
                            image.interpolation.as_deref(),
                            Crop::Center,
                            false,
                            None,
                        )
                        .err()
                        .map(|e| (c * chunk + i, unreadable(e)))
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| {
                w.join().unwrap_or_else(|_| {
                    Some((usize::MAX, TrainError::Dataset("an image decoder crashed while checking the images".into())))
                })
            })
            .collect()
    });
    match failures.into_iter().min_by_key(|(i, _)| *i) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A hash of the image file's bytes (what the latent depends on).
fn file_hash(path: &Path) -> Result<u64> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    Ok(xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// Encodes one image — deterministic per image content and augmentation.
fn encode_one(
    model: &dyn TrainableModel,
    image: &TrainImage,
    flip: bool,
    augment: SampleAugment,
    hash: u64,
) -> Result<Tensor> {
    let pixels = image_tensor(image, flip, augment, model.device())?;
    let mut rng = rng_for(&[stream::LATENT, hash, u64::from(flip)]);
    Ok(model.encode_images(&pixels, &mut rng)?.squeeze(0)?.to_device(&Device::Cpu)?)
}

/// Encodes the latents of a batch on the fly (no cache): `(B, 4, h, w)` on the model's device.
pub fn encode_batch(
    model: &dyn TrainableModel,
    data: &TrainData,
    samples: &[crate::data::SampleRef],
    augments: &[SampleAugment],
) -> Result<Tensor> {
    let mut out = Vec::with_capacity(samples.len());
    for (s, augment) in samples.iter().zip(augments) {
        let image = &data.images[s.image];
        let hash = file_hash(&image.path)?;
        out.push(encode_one(model, image, s.flip, *augment, hash)?);
    }
    Ok(Tensor::stack(&out, 0)?.to_device(model.device())?)
}

/// The loss mask of a batch from the images' alpha channels (all ones for images whose subset
/// has no `alpha_mask`), area-resized to the latent size as sd-scripts' `apply_masked_loss`:
/// `(B, 1, h, w)`. `None` when no image of the batch uses a mask.
pub fn alpha_masks(
    data: &TrainData,
    samples: &[crate::data::SampleRef],
    augments: &[SampleAugment],
    latent_hw: (usize, usize),
    device: &Device,
) -> Result<Option<Tensor>> {
    if samples.iter().all(|s| !data.images[s.image].alpha_mask) {
        return Ok(None);
    }
    let mut masks = Vec::with_capacity(samples.len());
    for (s, augment) in samples.iter().zip(augments) {
        let image = &data.images[s.image];
        let (w, h) = (image.choice.bucket.0 as usize, image.choice.bucket.1 as usize);
        let values = if image.alpha_mask {
            load_alpha_mask(&image.path, &image.choice, image.interpolation.as_deref(), augment.crop, s.flip)
                .map_err(|e| TrainError::Dataset(e.to_string()))?
        } else {
            vec![1.0; w * h]
        };
        let mask = Tensor::from_vec(values, (1, 1, h, w), &Device::Cpu)?;
        // torch's interpolate(mode="area") to an exact divisor is average pooling.
        let (lh, lw) = latent_hw;
        let pooled = if h % lh == 0 && w % lw == 0 {
            mask.avg_pool2d((h / lh, w / lw))?
        } else {
            return Err(TrainError::Other(format!(
                "alpha mask of {}: the bucket {w}×{h} is not a multiple of the latent {lw}×{lh}",
                image.path.display()
            )));
        };
        masks.push(pooled.squeeze(0)?);
    }
    Ok(Some(Tensor::stack(&masks, 0)?.to_device(device)?))
}

/// The path of an image's disk cache file.
pub fn cache_path(image: &Path) -> PathBuf {
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    image.with_file_name(format!("{stem}.lorakit-latent.safetensors"))
}

/// What a cache file must match to be reused.
fn cache_key(image: &TrainImage, hash: u64, vae: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("lorakit.latent_format".into(), CACHE_FORMAT.into());
    m.insert("lorakit.image_xxh3".into(), format!("{hash:016x}"));
    m.insert("lorakit.bucket".into(), format!("{}x{}", image.choice.bucket.0, image.choice.bucket.1));
    m.insert("lorakit.resized".into(), format!("{}x{}", image.choice.resized.0, image.choice.resized.1));
    m.insert("lorakit.interpolation".into(), image.interpolation.clone().unwrap_or_else(|| "auto".into()));
    m.insert("lorakit.vae".into(), vae.to_string());
    m
}

/// Reads a cache file if it matches `key` and holds every orientation needed.
fn read_cache(path: &Path, key: &BTreeMap<String, String>, need_flip: bool) -> Option<(Tensor, Option<Tensor>)> {
    let mut tensors = crate::cache_file::read(path, key)?;
    let plain = tensors.remove("latent")?;
    let flipped = tensors.remove("latent_flipped");
    if need_flip && flipped.is_none() {
        return None;
    }
    Some((plain, flipped))
}

/// Writes a cache file atomically.
fn write_cache(path: &Path, key: &BTreeMap<String, String>, plain: &Tensor, flipped: Option<&Tensor>) -> Result<()> {
    let mut tensors = vec![("latent", plain)];
    tensors.extend(flipped.map(|f| ("latent_flipped", f)));
    crate::cache_file::write(path, key, &tensors)
}

/// Latents of every image (both orientations when flip augmentation is on), kept on the CPU.
pub struct LatentCache {
    latents: HashMap<(usize, bool), Tensor>,
    /// Images whose disk cache was reused.
    pub reused: usize,
}

impl LatentCache {
    /// Encodes (or loads from disk) every image; `progress(done, total)` after each image.
    pub fn build(
        model: &dyn TrainableModel,
        data: &TrainData,
        to_disk: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<LatentCache> {
        let vae = model.vae_fingerprint();
        if to_disk {
            crate::cache_file::clean_image_folders(data.images.iter().map(|i| i.path.as_path()));
        }
        let mut latents = HashMap::new();
        let mut reused = 0;
        let total = data.images.len();
        for (index, image) in data.images.iter().enumerate() {
            let hash = file_hash(&image.path)?;
            let need_flip = image.flip_aug;
            let key = cache_key(image, hash, &vae);
            let path = cache_path(&image.path);
            let cached = if to_disk { read_cache(&path, &key, need_flip) } else { None };
            let (plain, flipped) = match cached {
                Some(found) => {
                    reused += 1;
                    found
                }
                None => {
                    let plain = encode_one(model, image, false, SampleAugment::NONE, hash)?;
                    let flipped =
                        if need_flip { Some(encode_one(model, image, true, SampleAugment::NONE, hash)?) } else { None };
                    if to_disk {
                        if let Err(e) = write_cache(&path, &key, &plain, flipped.as_ref()) {
                            tracing::warn!("cannot write the latent cache (training goes on without it): {e}");
                        }
                    }
                    (plain, flipped)
                }
            };
            latents.insert((index, false), plain);
            if let Some(f) = flipped {
                latents.insert((index, true), f);
            }
            progress(index + 1, total);
        }
        Ok(LatentCache { latents, reused })
    }

    /// The latents of a batch, `(B, 4, h, w)` on `device`.
    pub fn batch(&self, samples: &[crate::data::SampleRef], device: &Device) -> Result<Tensor> {
        let mut out = Vec::with_capacity(samples.len());
        for s in samples {
            let t = self
                .latents
                .get(&(s.image, s.flip))
                .ok_or_else(|| TrainError::Other(format!("internal: no cached latent for image {}", s.image)))?;
            out.push(t.clone());
        }
        Ok(Tensor::stack(&out, 0)?.to_device(device)?)
    }
}
