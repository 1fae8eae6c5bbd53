//! SmilingWolf's WD v3 taggers on their timm weights, with kohya's
//! `tag_images_by_wd14_tagger.py` behaviour.
//!
//! A model folder holds the files of an HF repo such as `SmilingWolf/wd-vit-tagger-v3`:
//! `config.json` (timm hub config: architecture + `model_args`), `model.safetensors` (timm
//! keys) and `selected_tags.csv` (one row per output class). [`Tagger::load`] reads it,
//! [`preprocess`] turns an image into the model's input exactly as kohya does (§1.2 of the
//! captioning notes), [`Tagger::probabilities`] runs a batch, and [`postprocess`] picks the
//! tags with kohya's options.
//!
//! # Adding an architecture (the interface every `wd14/<arch>.rs` keeps)
//!
//! - `pub struct <Arch>Config` with
//!   `<Arch>Config::from_timm(&serde_json::Value /* the whole config.json */) -> Result<Self, Wd14Error>`
//!   (helpers for `model_args` are in [`config`]);
//! - `pub struct <Arch>` with
//!   `pub fn load(tensors: &HashMap<String, candle_core::Tensor>, config: &<Arch>Config) -> Result<Self, Wd14Error>`
//!   (use [`weight`] / [`linear`] so a missing or mis-shaped tensor is named) and
//!   `pub fn forward(&self, x: &Tensor /* N,3,H,W normalised BGR */) -> candle_core::Result<Tensor /* N,classes logits */>`;
//! - one variant in [`config::Architecture`] with its arm in `Architecture::from_timm`, and one
//!   variant in [`Model`] with its arms in `Model::load` / `Model::forward` below.

pub mod config;
pub mod convnext;
pub mod cv_area;
pub mod eva02;
pub mod postprocess;
pub mod preprocess;
pub mod swinv2;
pub mod tags;
pub mod vit;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_nn::infer::InferLinear;
use lorakit_nn::FrozenLinear;
use rayon::prelude::*;

use config::Architecture;
pub use preprocess::Resize;
pub use tags::{Category, Tags};

/// The files a WD tagger folder must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "selected_tags.csv"];

/// What can go wrong loading or running a WD tagger.
#[derive(Debug, thiserror::Error)]
pub enum Wd14Error {
    /// The model folder lacks one of [`MODEL_FILES`].
    #[error(
        "{}: no {file} — a WD tagger folder holds config.json, model.safetensors and selected_tags.csv; \
         download them from a SmilingWolf/wd-*-tagger-v3 repo (e.g. `hf download SmilingWolf/wd-vit-tagger-v3 \
         --local-dir {}`)",
        dir.display(),
        dir.display()
    )]
    MissingFile {
        /// The model folder.
        dir: PathBuf,
        /// The missing file's name.
        file: &'static str,
    },
    /// A file could not be read or parsed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// `config.json` states something lorakit cannot build.
    #[error("config.json: {0}")]
    Config(String),
    /// `model.safetensors` lacks a tensor or has one of the wrong shape.
    #[error("model.safetensors: {0}")]
    Weights(String),
    /// An image could not be decoded.
    #[error("{}: {message}", path.display())]
    Image {
        /// The image.
        path: PathBuf,
        /// The decoder's complaint.
        message: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The tensor `key` as f32, checked to have `shape`.
pub fn weight(tensors: &HashMap<String, Tensor>, key: &str, shape: &[usize]) -> Result<Tensor, Wd14Error> {
    let t = tensors
        .get(key)
        .ok_or_else(|| Wd14Error::Weights(format!("no tensor `{key}` (is this the model config.json describes?)")))?;
    if t.dims() != shape {
        return Err(Wd14Error::Weights(format!("`{key}` has shape {:?}, config.json implies {shape:?}", t.dims())));
    }
    Ok(t.to_dtype(DType::F32)?)
}

/// The linear layer `{path}.weight` (out, in) and, with `bias`, `{path}.bias`.
pub fn linear(
    tensors: &HashMap<String, Tensor>,
    path: &str,
    inp: usize,
    out: usize,
    bias: bool,
) -> Result<FrozenLinear, Wd14Error> {
    let w = weight(tensors, &format!("{path}.weight"), &[out, inp])?;
    let b = if bias { Some(weight(tensors, &format!("{path}.bias"), &[out])?) } else { None };
    Ok(FrozenLinear::new(w, b)?)
}

/// The linear layer `{path}.weight` (out, in) and, with `bias`, `{path}.bias`, for inference
/// ([`InferLinear`]: on the CPU its weight is transposed once here for the GEMM).
pub fn infer_linear(
    tensors: &HashMap<String, Tensor>,
    path: &str,
    inp: usize,
    out: usize,
    bias: bool,
) -> Result<InferLinear, Wd14Error> {
    let w = weight(tensors, &format!("{path}.weight"), &[out, inp])?;
    let b = if bias { Some(weight(tensors, &format!("{path}.bias"), &[out])?) } else { None };
    Ok(InferLinear::new(w, b)?)
}

/// A fused projection `{path}` of `parts · out` outputs (timm's `qkv`) as `parts` layers of
/// `out` outputs each, in order: each product then writes its own contiguous tensor, where
/// slicing one output would copy every part.
pub fn split_linear(
    tensors: &HashMap<String, Tensor>,
    path: &str,
    inp: usize,
    out: usize,
    parts: usize,
    bias: bool,
) -> Result<Vec<InferLinear>, Wd14Error> {
    let w = weight(tensors, &format!("{path}.weight"), &[parts * out, inp])?;
    let b = if bias { Some(weight(tensors, &format!("{path}.bias"), &[parts * out])?) } else { None };
    (0..parts)
        .map(|i| {
            let b = b.as_ref().map(|b| b.narrow(0, i * out, out)).transpose()?;
            Ok(InferLinear::new(w.narrow(0, i * out, out)?, b)?)
        })
        .collect()
}

/// The layer norm `{path}.weight` / `{path}.bias` of width `dim`, with timm's `eps` for it.
pub fn layer_norm(
    tensors: &HashMap<String, Tensor>,
    path: &str,
    dim: usize,
    eps: f64,
) -> Result<lorakit_nn::norm::LayerNorm, Wd14Error> {
    Ok(lorakit_nn::norm::LayerNorm::new(
        weight(tensors, &format!("{path}.weight"), &[dim])?,
        Some(weight(tensors, &format!("{path}.bias"), &[dim])?),
        eps,
    ))
}

/// A built tagger network.
pub enum Model {
    /// [`vit::Vit`].
    Vit(vit::Vit),
    /// [`convnext::ConvNext`].
    ConvNext(convnext::ConvNext),
    /// [`swinv2::SwinV2`].
    SwinV2(swinv2::SwinV2),
    /// [`eva02::Eva02`].
    Eva02(eva02::Eva02),
}

impl Model {
    /// Builds the network `architecture` describes from `tensors`.
    pub fn load(tensors: &HashMap<String, Tensor>, architecture: &Architecture) -> Result<Self, Wd14Error> {
        Ok(match architecture {
            Architecture::Vit(c) => Model::Vit(vit::Vit::load(tensors, c)?),
            Architecture::ConvNext(c) => Model::ConvNext(convnext::ConvNext::load(tensors, c)?),
            Architecture::SwinV2(c) => Model::SwinV2(swinv2::SwinV2::load(tensors, c)?),
            Architecture::Eva02(c) => Model::Eva02(eva02::Eva02::load(tensors, c)?),
        })
    }

    /// Logits (N, classes) of a normalised BGR batch (N, 3, S, S).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Model::Vit(m) => m.forward(x),
            Model::ConvNext(m) => m.forward(x),
            Model::SwinV2(m) => m.forward(x),
            Model::Eva02(m) => m.forward(x),
        }
    }
}

/// A loaded WD tagger: network, tag list and input size.
pub struct Tagger {
    model: Model,
    tags: Tags,
    size: usize,
    architecture: String,
    device: Device,
}

impl Tagger {
    /// Loads a model folder (see [`MODEL_FILES`]) onto `device`. Every missing file, bad
    /// config, missing tensor or tag-count mismatch is an error naming the file.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, Wd14Error> {
        if !dir.is_dir() {
            return Err(Wd14Error::File {
                path: dir.to_path_buf(),
                message: "not a folder (--model takes the folder holding config.json, model.safetensors and selected_tags.csv)".into(),
            });
        }
        for file in MODEL_FILES {
            if !dir.join(file).is_file() {
                return Err(Wd14Error::MissingFile { dir: dir.to_path_buf(), file });
            }
        }
        let config_path = dir.join("config.json");
        let file_error = |path: &Path, message: String| Wd14Error::File { path: path.to_path_buf(), message };
        let text = std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, e.to_string()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| file_error(&config_path, format!("not JSON: {e}")))?;
        let located = |e: Wd14Error| match e {
            Wd14Error::Config(m) => file_error(&config_path, m),
            other => other,
        };
        let architecture = Architecture::from_timm(&config).map_err(located)?;
        let size = config::input_size(&config, 448).map_err(located)?;
        let classes = config::num_classes(&config).map_err(located)?;
        let tags_path = dir.join("selected_tags.csv");
        let tags = Tags::load(&tags_path)?;
        if tags.len() != classes {
            return Err(file_error(
                &tags_path,
                format!(
                    "{} tag rows, but {} says the model has {classes} classes (the two files come from different models)",
                    tags.len(),
                    config_path.display()
                ),
            ));
        }
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|e| file_error(&weights_path, format!("not a readable safetensors file: {e}")))?;
        let model = Model::load(&tensors, &architecture).map_err(|e| match e {
            Wd14Error::Weights(m) | Wd14Error::Config(m) => file_error(&weights_path, m),
            other => other,
        })?;
        Ok(Tagger {
            model,
            tags,
            size,
            architecture: config::architecture_name(&config)?.to_string(),
            device: device.clone(),
        })
    }

    /// The tag list (one per output class).
    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// The square input side.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The timm architecture name from config.json.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Sigmoid probabilities, one vector per image, of preprocessed images (each
    /// [`preprocess::Prepared`] of this tagger's size).
    pub fn probabilities(&self, images: &[preprocess::Prepared]) -> Result<Vec<Vec<f32>>, Wd14Error> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.size;
        let mut data = Vec::with_capacity(images.len() * 3 * s * s);
        for image in images {
            if image.size != s {
                return Err(Wd14Error::Config(format!("image prepared at {}², the model takes {s}²", image.size)));
            }
            data.extend(image.nchw_normalised());
        }
        let x = Tensor::from_vec(data, (images.len(), 3, s, s), &self.device)?;
        let logits = self.model.forward(&x)?;
        let probs = candle_core::Tensor::ones_like(&logits)?.broadcast_div(&(logits.neg()?.exp()? + 1.0)?)?;
        Ok(probs.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// Tags `paths` in batches of `batch_size`: each batch's images are decoded and prepared in
    /// parallel, run together, and every image's probabilities (or its own error — one bad
    /// image never stops the others) go to `on_result` in input order.
    pub fn tag_files(
        &self,
        paths: &[PathBuf],
        resize: Resize,
        batch_size: usize,
        mut on_result: impl FnMut(&Path, Result<Vec<f32>, Wd14Error>),
    ) -> Result<(), Wd14Error> {
        for chunk in paths.chunks(batch_size.max(1)) {
            let prepared: Vec<Result<preprocess::Prepared, Wd14Error>> =
                chunk.par_iter().map(|p| preprocess::load(p, self.size, resize)).collect();
            let mut good = Vec::new();
            let mut errors = Vec::new();
            for r in prepared {
                match r {
                    Ok(p) => {
                        good.push(p);
                        errors.push(None);
                    }
                    Err(e) => errors.push(Some(e)),
                }
            }
            let mut probs = self.probabilities(&good)?.into_iter();
            for (path, error) in chunk.iter().zip(errors) {
                match error {
                    None => on_result(path, Ok(probs.next().unwrap_or_default())),
                    Some(e) => on_result(path, Err(e)),
                }
            }
        }
        Ok(())
    }
}
