//! `Florence2Processor` with its PIL image path (`CLIPImageProcessorPil`), from transformers 5.25:
//! images resized straight to the configured size with PIL's 8-bit resampling, rescaled and
//! normalised; task tokens expanded to their prompts; the prompt laid out as
//! `<image>×image_seq_length + <s> + prompt + </s>` and tokenised without added specials;
//! generated ids decoded with the special tokens kept, then `<s>`/`</s>` removed and the text
//! stripped (`post_process_generation` for the pure-text tasks).

use std::path::Path;

use image::DynamicImage;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::{read_json, Florence2Error, Result};

/// A captioning task and the prompt transformers' processor puts in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `<CAPTION>`: one short sentence.
    Caption,
    /// `<DETAILED_CAPTION>`: a few sentences.
    Detailed,
    /// `<MORE_DETAILED_CAPTION>`: a paragraph.
    MoreDetailed,
}

impl Task {
    /// The task token.
    pub fn token(self) -> &'static str {
        match self {
            Task::Caption => "<CAPTION>",
            Task::Detailed => "<DETAILED_CAPTION>",
            Task::MoreDetailed => "<MORE_DETAILED_CAPTION>",
        }
    }

    /// The prompt text (`task_prompts_without_inputs`).
    pub fn prompt(self) -> &'static str {
        match self {
            Task::Caption => "What does the image describe?",
            Task::Detailed => "Describe in detail what is shown in the image.",
            Task::MoreDetailed => "Describe with a paragraph what is shown in the image.",
        }
    }
}

/// PIL resampling filters the CLIP processor may name (`resample`: 2 bilinear, 3 bicubic).
pub use crate::pil_resize::PilFilter as Resample;

/// What `preprocessor_config.json` states.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    /// Output height.
    pub height: usize,
    /// Output width.
    pub width: usize,
    /// Resize at all.
    pub do_resize: bool,
    /// Filter.
    pub resample: Resample,
    /// Multiply bytes by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f64,
    /// Subtract `image_mean`, divide by `image_std`.
    pub do_normalize: bool,
    /// Per-channel mean (RGB).
    pub image_mean: [f64; 3],
    /// Per-channel std (RGB).
    pub image_std: [f64; 3],
    /// Image placeholder tokens per image.
    pub image_seq_length: usize,
}

impl ImageConfig {
    /// Reads an image-processor config (CLIPImageProcessor keys).
    pub fn from_config(c: &Value) -> std::result::Result<Self, String> {
        let size = c.get("size").ok_or("no `size`")?;
        let dim = |k: &str| size.get(k).and_then(Value::as_u64).map(|v| v as usize);
        let (height, width) = match (dim("height"), dim("width"), dim("shortest_edge")) {
            (Some(h), Some(w), _) => (h, w),
            _ => {
                return Err(
                    "`size` must give height and width (shortest_edge resizing is not what Florence-2 uses)".into()
                )
            }
        };
        if c.get("do_center_crop").and_then(Value::as_bool).unwrap_or(false) {
            return Err("do_center_crop = true is not supported (Florence-2's processors do not crop)".into());
        }
        let resample = match c.get("resample").and_then(Value::as_u64).unwrap_or(3) {
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            other => return Err(format!("resample {other} is not supported (2 bilinear, 3 bicubic)")),
        };
        let triple = |k: &str, default: [f64; 3]| -> std::result::Result<[f64; 3], String> {
            match c.get(k) {
                None => Ok(default),
                Some(v) => {
                    let a: Vec<f64> =
                        v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
                    <[f64; 3]>::try_from(a).map_err(|_| format!("`{k}` must be three numbers"))
                }
            }
        };
        let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(true);
        Ok(ImageConfig {
            height,
            width,
            do_resize: flag("do_resize"),
            resample,
            do_rescale: flag("do_rescale"),
            rescale_factor: c.get("rescale_factor").and_then(Value::as_f64).unwrap_or(1.0 / 255.0),
            do_normalize: flag("do_normalize"),
            image_mean: triple("image_mean", [0.485, 0.456, 0.406])?,
            image_std: triple("image_std", [0.229, 0.224, 0.225])?,
            image_seq_length: c
                .get("image_seq_length")
                .and_then(Value::as_u64)
                .ok_or("no `image_seq_length` (the number of image tokens)")? as usize,
        })
    }

    /// Pixel values (3·H·W, channels first) of a decoded image.
    pub fn pixel_values(&self, image: &DynamicImage) -> Vec<f32> {
        // PIL convert("RGB") drops alpha without compositing; so does `to_rgb8`.
        let rgb = image.to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let (bytes, w, h) = if self.do_resize {
            (
                crate::pil_resize::resize(rgb.as_raw(), w, h, self.width, self.height, self.resample),
                self.width,
                self.height,
            )
        } else {
            (rgb.into_raw(), w, h)
        };
        let mut out = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                let mut v = bytes[i * 3 + c] as f64;
                if self.do_rescale {
                    v *= self.rescale_factor;
                }
                if self.do_normalize {
                    v = (v - self.image_mean[c]) / self.image_std[c];
                }
                out[c * h * w + i] = v as f32;
            }
        }
        out
    }
}

/// Tokenizer + image config + the special tokens the prompt layout needs.
pub struct Processor {
    /// The image preprocessing.
    pub image: ImageConfig,
    tokenizer: Tokenizer,
    image_token_id: u32,
    bos: String,
    eos: String,
}

impl Processor {
    /// Reads `tokenizer.json` and `preprocessor_config.json` (or the `image_processor` section
    /// of `processor_config.json`) from a model folder.
    pub fn load(dir: &Path, image_token_id: u32) -> Result<Self> {
        let pre = dir.join("preprocessor_config.json");
        let proc_path = dir.join("processor_config.json");
        let (path, section) = if pre.is_file() {
            (pre.clone(), read_json(&pre)?)
        } else if proc_path.is_file() {
            let v = read_json(&proc_path)?;
            let section = v.get("image_processor").cloned().ok_or_else(|| Florence2Error::File {
                path: proc_path.clone(),
                message: "no `image_processor` section (and no preprocessor_config.json)".into(),
            })?;
            (proc_path.clone(), section)
        } else {
            return Err(Florence2Error::MissingFile { dir: dir.to_path_buf(), file: "preprocessor_config.json" });
        };
        let image = ImageConfig::from_config(&section).map_err(|message| Florence2Error::File { path, message })?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| Florence2Error::File {
            path: tok_path.clone(),
            message: format!("not a tokenizers file: {e}"),
        })?;
        let token = |name: &str, default: &str| -> String {
            let cfg = dir.join("tokenizer_config.json");
            read_json(&cfg)
                .ok()
                .and_then(|v| v.get(name).and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| default.to_string())
        };
        let (bos, eos) = (token("bos_token", "<s>"), token("eos_token", "</s>"));
        for t in [&bos, &eos] {
            if tokenizer.token_to_id(t).is_none() {
                return Err(Florence2Error::File {
                    path: tok_path.clone(),
                    message: format!("the special token `{t}` is not in the vocabulary"),
                });
            }
        }
        match tokenizer.id_to_token(image_token_id) {
            Some(_) => {}
            None => {
                return Err(Florence2Error::File {
                    path: tok_path,
                    message: format!("config.json's image_token_id {image_token_id} is not in the vocabulary"),
                })
            }
        }
        Ok(Processor { image, tokenizer, image_token_id, bos, eos })
    }

    /// The encoder input ids for `task`: image placeholders, then `<s>` prompt `</s>`.
    pub fn input_ids(&self, task: Task) -> Result<Vec<u32>> {
        let text = format!("{}{}{}", self.bos, task.prompt(), self.eos);
        let enc = self.tokenizer.encode(text, false).map_err(|e| Florence2Error::Tokenizer(e.to_string()))?;
        let mut ids = vec![self.image_token_id; self.image.image_seq_length];
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The caption of generated ids: decoded with special tokens kept, `<s>`/`</s>` removed,
    /// stripped (transformers' pure-text post-processing).
    pub fn caption(&self, ids: &[u32]) -> Result<String> {
        let text = self.tokenizer.decode(ids, false).map_err(|e| Florence2Error::Tokenizer(e.to_string()))?;
        Ok(text.replace(&self.bos, "").replace(&self.eos, "").trim().to_string())
    }
}
