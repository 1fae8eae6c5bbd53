//! Microsoft's Florence-2 natural-language captioner on the florence-community checkpoints
//! (transformers' native `Florence2ForConditionalGeneration`).
//!
//! A model folder holds the files of an HF repo such as `florence-community/Florence-2-base`:
//! `config.json` (a `florence2` config with a DaViT `vision_config` and a BART `text_config`),
//! `model.safetensors` (transformers' keys), `tokenizer.json`, `preprocessor_config.json` (or
//! `processor_config.json` holding an `image_processor` section) and, optionally,
//! `generation_config.json`. The parts, each ported from transformers 5.25:
//!
//! - [`davit`]: the DaViT vision tower and the multi-modal projector;
//! - [`bart`]: the BART encoder–decoder with a KV cache and the (tied) LM head;
//! - [`processor`]: image preprocessing, task prompts, tokenisation and post-processing;
//! - [`generate`]: greedy and beam search with the generation config's logits processors.

pub mod bart;
pub mod davit;
pub mod generate;
pub mod processor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_nn::norm::LayerNorm;
use lorakit_nn::FrozenLinear;
use serde_json::Value;

/// The files a Florence-2 folder must hold (the image processor may also live in
/// `processor_config.json`).
pub const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// What can go wrong loading or running Florence-2.
#[derive(Debug, thiserror::Error)]
pub enum Florence2Error {
    /// The model folder lacks a required file.
    #[error(
        "{}: no {file} — a Florence-2 folder holds config.json, model.safetensors, tokenizer.json and \
         preprocessor_config.json; download them from a florence-community repo (e.g. `hf download \
         florence-community/Florence-2-base --local-dir {}`)",
        dir.display(),
        dir.display()
    )]
    MissingFile {
        /// The model folder.
        dir: PathBuf,
        /// The missing file's name.
        file: &'static str,
    },
    /// A file could not be read or parsed, or states something lorakit cannot build.
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
    /// Tokenising or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, Florence2Error>;

/// The checkpoint's tensors with the lookups every part uses (missing and mis-shaped tensors
/// are named).
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Wraps loaded tensors.
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Weights { tensors }
    }

    /// Whether `key` exists.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor `key` as f32, checked to have `shape`.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(key).ok_or_else(|| {
            Florence2Error::Weights(format!("no tensor `{key}` (is this the model config.json describes?)"))
        })?;
        if t.dims() != shape {
            return Err(Florence2Error::Weights(format!(
                "`{key}` has shape {:?}, config.json implies {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The linear layer `{path}.weight` (out, in) with `{path}.bias` when `bias`.
    pub fn linear(&self, path: &str, inp: usize, out: usize, bias: bool) -> Result<FrozenLinear> {
        let w = self.get(&format!("{path}.weight"), &[out, inp])?;
        let b = if bias { Some(self.get(&format!("{path}.bias"), &[out])?) } else { None };
        Ok(FrozenLinear::new(w, b)?)
    }

    /// PyTorch's `nn.LayerNorm(dim)` (eps 1e-5) at `path`.
    pub fn layer_norm(&self, path: &str, dim: usize) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&format!("{path}.weight"), &[dim])?,
            Some(self.get(&format!("{path}.bias"), &[dim])?),
            1e-5,
        ))
    }
}

/// Reads a JSON file, naming it in every error.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Florence2Error::File { path: path.to_path_buf(), message: e.to_string() })?;
    serde_json::from_str(&text)
        .map_err(|e| Florence2Error::File { path: path.to_path_buf(), message: format!("not JSON: {e}") })
}

/// `config[key]` as a usize list.
fn usize_list(config: &Value, key: &str) -> Result<Vec<usize>> {
    let bad = || Florence2Error::Config(format!("`{key}` must be a list of non-negative integers"));
    config
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_u64().map(|x| x as usize).ok_or_else(bad))
        .collect()
}

/// `config[key]` as a usize (`default` when absent).
fn usize_or(config: &Value, key: &str, default: Option<usize>) -> Result<usize> {
    match config.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| Florence2Error::Config(format!("`{key}` is missing"))),
        Some(v) => v
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| Florence2Error::Config(format!("`{key}` must be a non-negative integer, got {v}"))),
    }
}

/// `config[key]` as a bool (`default` when absent).
fn bool_or(config: &Value, key: &str, default: bool) -> Result<bool> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| Florence2Error::Config(format!("`{key}` must be true or false, got {v}"))),
    }
}

/// The whole model: vision tower, projector, BART and LM head.
pub struct Florence2 {
    /// The DaViT backbone.
    pub vision: davit::DaVit,
    /// Vision features → text-width image tokens.
    pub projector: davit::Projector,
    /// Encoder–decoder.
    pub language: bart::Bart,
    /// The placeholder token the image features replace.
    pub image_token_id: u32,
}

impl Florence2 {
    /// Builds the model from a `florence2` config.json value and the checkpoint's tensors.
    pub fn load(config: &Value, weights: &Weights) -> Result<Self> {
        let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "florence2" {
            return Err(Florence2Error::Config(format!(
                "model_type is `{model_type}`, not `florence2` (the florence-community checkpoints; the \
                 microsoft/Florence-2-* remote-code layout is not supported)"
            )));
        }
        let vision_config = davit::VisionConfig::from_config(
            config.get("vision_config").ok_or_else(|| Florence2Error::Config("no vision_config".into()))?,
        )?;
        let text_config = bart::BartConfig::from_config(
            config.get("text_config").ok_or_else(|| Florence2Error::Config("no text_config".into()))?,
        )?;
        if vision_config.projection_dim != text_config.d_model {
            return Err(Florence2Error::Config(format!(
                "vision_config.projection_dim {} differs from text_config.d_model {}",
                vision_config.projection_dim, text_config.d_model
            )));
        }
        let tie = bool_or(config, "tie_word_embeddings", true)?;
        let image_token_id = usize_or(config, "image_token_id", Some(51289))?;
        if image_token_id >= text_config.vocab_size {
            return Err(Florence2Error::Config(format!(
                "image_token_id {image_token_id} is outside the vocabulary ({})",
                text_config.vocab_size
            )));
        }
        Ok(Florence2 {
            vision: davit::DaVit::load(weights, "model.vision_tower", &vision_config)?,
            projector: davit::Projector::load(weights, "model.multi_modal_projector", &vision_config)?,
            language: bart::Bart::load(weights, "model.language_model", "lm_head", &text_config, tie)?,
            image_token_id: image_token_id as u32,
        })
    }

    /// Image tokens (B, 1 + h·w, d_model) of preprocessed pixels (B, 3, S, S).
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let features = self.vision.forward(pixel_values)?;
        Ok(self.projector.forward(&features)?)
    }

    /// The encoder input: token embeddings with the image placeholders replaced, in order, by
    /// `image_features` (one row of features per placeholder, as transformers' `masked_scatter`).
    pub fn merged_embeddings(&self, input_ids: &[u32], image_features: &Tensor) -> Result<Tensor> {
        let (_, n_feat, d) = image_features.dims3()?;
        let n_image = input_ids.iter().filter(|&&t| t == self.image_token_id).count();
        if n_image != n_feat {
            return Err(Florence2Error::Config(format!(
                "the prompt has {n_image} image tokens but the image gives {n_feat} features \
                 (preprocessor_config.json image_seq_length does not fit the vision config)"
            )));
        }
        let text = self.language.embed_tokens(input_ids)?; // (L, d)
        let feats = image_features.squeeze(0)?;
        let mut rows = Vec::with_capacity(input_ids.len());
        let mut next = 0;
        for (i, &t) in input_ids.iter().enumerate() {
            if t == self.image_token_id {
                rows.push(feats.narrow(0, next, 1)?);
                next += 1;
            } else {
                rows.push(text.narrow(0, i, 1)?);
            }
        }
        Ok(Tensor::cat(&rows, 0)?.reshape((1, input_ids.len(), d))?)
    }
}

/// A loaded Florence-2 folder: model, processor and generation defaults.
pub struct Captioner {
    /// The network.
    pub model: Florence2,
    /// Image preprocessing, prompts and tokenizer.
    pub processor: processor::Processor,
    /// `generation_config.json` (defaults when absent).
    pub generation: generate::GenerationConfig,
    device: Device,
}

impl Captioner {
    /// Loads a model folder (see [`MODEL_FILES`]) onto `device`; every missing file, bad config
    /// or missing tensor is an error naming the file.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Florence2Error::File {
                path: dir.to_path_buf(),
                message: "not a folder (--model takes the folder holding config.json, model.safetensors, \
                          tokenizer.json and preprocessor_config.json)"
                    .into(),
            });
        }
        for file in MODEL_FILES {
            if !dir.join(file).is_file() {
                return Err(Florence2Error::MissingFile { dir: dir.to_path_buf(), file });
            }
        }
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, device).map_err(|e| Florence2Error::File {
            path: weights_path.clone(),
            message: format!("not a readable safetensors file: {e}"),
        })?;
        let model = Florence2::load(&config, &Weights::new(tensors)).map_err(|e| match e {
            Florence2Error::Config(m) => Florence2Error::File { path: config_path.clone(), message: m },
            Florence2Error::Weights(m) => Florence2Error::File { path: weights_path.clone(), message: m },
            other => other,
        })?;
        let processor = processor::Processor::load(dir, model.image_token_id)?;
        let generation = generate::GenerationConfig::load(dir, &config)?;
        Ok(Captioner { model, processor, generation, device: device.clone() })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl Captioner {
    /// The caption of the image at `path` for `task`: preprocess, encode, generate with
    /// `num_beams` (the generation config's other settings), post-process. A file that is
    /// not a readable image is an [`Florence2Error::Image`] naming it.
    pub fn caption_file(
        &self,
        path: &Path,
        task: processor::Task,
        num_beams: usize,
        max_new_tokens: usize,
    ) -> Result<String> {
        let image = crate::pil_decode::open(path)
            .map_err(|e| Florence2Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
        let cfg = &self.processor.image;
        let pixels = Tensor::from_vec(cfg.pixel_values(&image), (1, 3, cfg.height, cfg.width), &self.device)?;
        let ids = self.processor.input_ids(task)?;
        let feats = self.model.image_features(&pixels)?;
        let encoded = self.model.language.encode(&self.model.merged_embeddings(&ids, &feats)?)?;
        let mut gen = self.generation.clone();
        gen.num_beams = num_beams.max(1);
        let out = generate::generate(&self.model.language, &encoded, &gen, max_new_tokens)?;
        self.processor.caption(&out)
    }
}
