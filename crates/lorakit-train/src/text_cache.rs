//! Text-encoder outputs computed once before training (sd-scripts' `--cache_text_encoder_outputs`
//! and `--cache_text_encoder_outputs_to_disk`).
//!
//! Only possible when every sample of an image always gets the same caption and the cached
//! encoders are not trained (Flux: T5-XXL's outputs are cached while CLIP-L trains and is run
//! at every step, sd-scripts' partial caching — [`TrainableModel::caches_text_with`]): the checks in [`check_cacheable`] refuse the options that change a
//! caption from step to step (sd-scripts refuses the same ones, and we also refuse the two it
//! would silently freeze: wildcards and epoch-wise caption dropout).
//!
//! A disk cache file sits next to its image (`photo.png` → `photo.lorakit-te.safetensors`) and
//! records what it was made from: the caption text (hashed) and a fingerprint of the encoders'
//! output together with the token length and caption weighting. It is reused only when all
//! match, so editing a caption or switching the model never feeds stale conditioning.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_dataset::caption_process::{process_caption, CaptionMoment};

use crate::config::TrainConfig;
use crate::data::{rng_for, TrainData, TrainImage};
use crate::error::{Result, TrainError};
use crate::model::{Conditioning, TrainableModel};

/// Version of the cache file layout.
const CACHE_FORMAT: &str = "1";

/// Captions encoded per text-encoder call while caching.
const ENCODE_BATCH: usize = 8;

/// Refuses `cache_text_encoder_outputs` with options that need the text encoders at every
/// step, naming the option and what to do.
pub fn check_cacheable(config: &TrainConfig, data: &TrainData, model: &dyn TrainableModel) -> Result<()> {
    let refuse = |why: String| {
        Err(TrainError::Other(format!(
            "training.cache_text_encoder_outputs: {why}; turn caching off or drop that option"
        )))
    };
    // Flux caches T5-XXL's outputs while CLIP-L trains (sd-scripts' partial caching); a trained
    // encoder whose outputs would be cached is refused.
    if !model.caches_text_with(&crate::model::trained_components(config, &model.components())) {
        return refuse(
            "the text encoders are trained, so their outputs change every step (set network.network_train_unet_only = true to train the U-Net only, as sd-scripts requires; Flux caches T5-XXL's outputs while CLIP-L trains, but not while T5-XXL trains)".into(),
        );
    }
    for image in &data.images {
        let o = &image.caption_options;
        let why = if o.shuffle_caption {
            Some("shuffle_caption reorders the tags every step")
        } else if o.caption_dropout_rate > 0.0 {
            Some("caption_dropout_rate drops captions at random steps")
        } else if o.caption_dropout_every_n_epochs > 0 {
            Some("caption_dropout_every_n_epochs drops captions in some epochs")
        } else if o.caption_tag_dropout_rate > 0.0 {
            Some("caption_tag_dropout_rate drops tags at random steps")
        } else if o.token_warmup_step > 0.0 {
            Some("token_warmup_step lengthens captions as training goes on")
        } else if o.enable_wildcard && image.caption.contains('{') {
            Some("enable_wildcard picks a different {a|b} choice every step")
        } else {
            None
        };
        if let Some(why) = why {
            return refuse(format!("{why} (the subset of {})", image.path.display()));
        }
    }
    Ok(())
}

/// The caption an image trains with when captions are fixed (prefix/suffix applied).
pub(crate) fn fixed_caption(image: &TrainImage) -> String {
    let moment = CaptionMoment { epoch: 1, step: 0, max_train_steps: 1 };
    process_caption(&image.caption, &image.caption_options, moment, &mut rng_for(&[0]))
}

/// The path of an image's text-encoder cache file.
pub fn cache_path(image: &Path) -> PathBuf {
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    image.with_file_name(format!("{stem}.lorakit-te.safetensors"))
}

/// How captions are encoded, as text: part of every cache key.
fn encoder_fingerprint(model: &dyn TrainableModel, config: &TrainConfig) -> Result<String> {
    use sha2::{Digest, Sha256};
    let probe = encode(model, config, &["lorakit text encoder fingerprint"])?;
    let mut h = Sha256::new();
    for t in std::iter::once(&probe.context).chain(probe.pooled.as_ref()).chain(probe.mask.as_ref()) {
        for v in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            h.update(v.to_le_bytes());
        }
    }
    h.update(
        format!(
            "{:?}|{}|{:?}|{}",
            model.dtype(),
            config.training.max_token_length,
            config.model.clip_skip,
            config.training.weighted_captions
        )
        .as_bytes(),
    );
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The frozen text encoders' conditioning for `captions`, moved to the CPU in f32.
fn encode(model: &dyn TrainableModel, config: &TrainConfig, captions: &[&str]) -> Result<Conditioning> {
    let (max_tokens, clip_skip) = (config.training.max_token_length, config.model.clip_skip);
    let cond = if config.training.weighted_captions {
        model.encode_text_weighted(captions, max_tokens, clip_skip, &[])?
    } else {
        model.encode_text(captions, max_tokens, clip_skip, &[])?
    };
    let cpu = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?) };
    Ok(Conditioning {
        context: cpu(&cond.context)?,
        pooled: cond.pooled.as_ref().map(cpu).transpose()?,
        mask: cond.mask.as_ref().map(cpu).transpose()?,
    })
}

fn caption_hash(caption: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(caption.as_bytes()))
}

fn cache_key(caption: &str, fingerprint: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("lorakit.te_format".to_string(), CACHE_FORMAT.to_string()),
        ("lorakit.caption_xxh3".to_string(), caption_hash(caption)),
        ("lorakit.text_encoders".to_string(), fingerprint.to_string()),
    ])
}

fn read_cache(path: &Path, key: &BTreeMap<String, String>) -> Option<Conditioning> {
    let mut tensors = crate::cache_file::read(path, key)?;
    Some(Conditioning {
        context: tensors.remove("context")?,
        pooled: tensors.remove("pooled"),
        mask: tensors.remove("mask"),
    })
}

fn write_cache(path: &Path, key: &BTreeMap<String, String>, cond: &Conditioning) -> Result<()> {
    let mut tensors = vec![("context", &cond.context)];
    tensors.extend(cond.pooled.as_ref().map(|p| ("pooled", p)));
    tensors.extend(cond.mask.as_ref().map(|m| ("mask", m)));
    crate::cache_file::write(path, key, &tensors)
}

/// Every caption's conditioning, one row each, kept on the CPU.
pub struct TextEncoderCache {
    rows: HashMap<String, Conditioning>,
    /// Images whose disk cache file was reused.
    pub reused: usize,
}

impl TextEncoderCache {
    /// Encodes (or loads from disk) the caption of every image; `progress(done, total)` after
    /// each batch. Call [`check_cacheable`] first.
    pub fn build(
        model: &dyn TrainableModel,
        data: &TrainData,
        config: &TrainConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<TextEncoderCache> {
        let to_disk = config.training.cache_text_encoder_outputs_to_disk;
        let fingerprint = encoder_fingerprint(model, config)?;
        let captions: Vec<String> = data.images.iter().map(fixed_caption).collect();
        let mut rows: HashMap<String, Conditioning> = HashMap::new();
        let mut reused = 0;
        // Images whose disk cache file matched.
        let mut valid = vec![false; data.images.len()];
        if to_disk {
            crate::cache_file::clean_image_folders(data.images.iter().map(|i| i.path.as_path()));
            for (k, (image, caption)) in data.images.iter().zip(&captions).enumerate() {
                if let Some(found) = read_cache(&cache_path(&image.path), &cache_key(caption, &fingerprint)) {
                    reused += 1;
                    valid[k] = true;
                    rows.entry(caption.clone()).or_insert(found);
                }
            }
        }
        let mut missing: Vec<&str> = Vec::new();
        for c in &captions {
            if !rows.contains_key(c) && !missing.contains(&c.as_str()) {
                missing.push(c);
            }
        }
        let total = missing.len();
        for (done, chunk) in missing.chunks(ENCODE_BATCH).enumerate() {
            let cond = encode(model, config, chunk)?;
            for (i, caption) in chunk.iter().enumerate() {
                rows.insert(caption.to_string(), cond.row(i)?);
            }
            progress((done * ENCODE_BATCH + chunk.len()).min(total), total);
        }
        if to_disk {
            for ((image, caption), _) in data.images.iter().zip(&captions).zip(&valid).filter(|(_, v)| !**v) {
                let (key, path) = (cache_key(caption, &fingerprint), cache_path(&image.path));
                if let Err(e) = write_cache(&path, &key, &rows[caption]) {
                    tracing::warn!("cannot write the text-encoder cache (training goes on without it): {e}");
                }
            }
        }
        Ok(TextEncoderCache { rows, reused })
    }

    /// The conditioning of a batch of images, on `device` in `dtype`.
    pub fn batch(&self, data: &TrainData, images: &[usize], device: &Device) -> Result<Conditioning> {
        let mut rows = Vec::with_capacity(images.len());
        for &i in images {
            let caption = fixed_caption(&data.images[i]);
            let row = self.rows.get(&caption).ok_or_else(|| {
                TrainError::Other(format!(
                    "internal: no cached text-encoder output for {}",
                    data.images[i].path.display()
                ))
            })?;
            rows.push(row.clone());
        }
        Conditioning::cat(&rows)?.to_device(device)
    }

    /// Number of distinct captions held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no caption is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}
