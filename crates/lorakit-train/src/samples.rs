//! Preview images during training: every prompt of the prompt file rendered with the LoRA as it
//! is at that moment, saved as `<output_dir>/sample/<name>_<tag>_<idx>_<time>[_<seed>].png` (sd-scripts'
//! naming) plus one labelled grid per save point. Sampling uses its own seeded RNG (the prompt's
//! `--d` seed, or one derived from the run seed and prompt index), so it never shifts training's
//! random draws.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lorakit_models::grid::compose_grid;
use lorakit_models::pipeline::{GenerateRequest, RgbImage};
use lorakit_models::samplers::SamplerKind;
use lorakit_nn::lora::LoraSet;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::model::TrainableModel;
use crate::sample_prompts::{parse_prompt_file, sample_file_name, SampleDefaults, SamplePrompt};
use crate::time::compact_timestamp;

pub use crate::sample_prompts::SampleTag;

/// Renders the prompt file's prompts at save points.
pub struct SampleRunner {
    prompts: Vec<SamplePrompt>,
    /// Each prompt's generation request (sampler from its `--ss`, else `samples.sample_sampler`;
    /// seed from its `--d`, else derived from the run seed), built and validated once.
    requests: Vec<GenerateRequest>,
    dir: PathBuf,
    output_name: String,
}

impl SampleRunner {
    /// Reads the prompt file and checks what rendering would refuse — samplers, emphasis
    /// weights of prompts and negative prompts, sizes, steps and scales the pipeline takes — so a
    /// bad file stops the run before training, not at its first sample (errors name the file and
    /// line or prompt).
    /// `model` gives the family's defaults (steps, CFG scale, embedded guidance).
    pub fn new(config: &TrainConfig, prompt_file: &Path, model: &dyn TrainableModel) -> Result<Self> {
        let (steps, cfg_scale) = model.sample_defaults();
        let defaults = SampleDefaults {
            width: 512,
            height: 512,
            steps,
            cfg_scale,
            guidance: model.sample_guidance(),
            sampler: config.samples.sample_sampler.clone(),
        };
        let (prompts, warnings) =
            parse_prompt_file(prompt_file, &defaults).map_err(|e| TrainError::Other(format!("samples: {e}")))?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        let mut requests = Vec::with_capacity(prompts.len());
        for p in &prompts {
            let bad = |e: &dyn std::fmt::Display| {
                TrainError::Other(format!("samples: {}: prompt {}: {e}", prompt_file.display(), p.index + 1))
            };
            for text in std::iter::once(&p.prompt).chain(p.negative.as_ref()) {
                lorakit_dataset::prompt_weights::parse_prompt_attention(text).map_err(|e| bad(&e))?;
            }
            let seed =
                p.seed.unwrap_or_else(|| config.training.seed.wrapping_mul(1_000_003).wrapping_add(p.index as u64));
            let request = GenerateRequest {
                prompt: p.prompt.clone(),
                negative: p.negative.clone(),
                steps: p.steps as usize,
                cfg_scale: p.cfg_scale,
                seed,
                width: p.width as usize,
                height: p.height as usize,
                sampler: sampler_kind(p.sampler.as_deref().unwrap_or(&defaults.sampler))?,
                clip_skip: config.model.clip_skip,
                guidance: p.guidance,
            };
            request.validate().map_err(|e| bad(&e))?;
            let step = model.pixel_step().max(1) as usize;
            if request.width % step != 0 || request.height % step != 0 {
                return Err(bad(&format!(
                    "{}×{} is not a multiple of {step} pixels on each side, which this model needs (--w / --h)",
                    request.width, request.height
                )));
            }
            requests.push(request);
        }
        if prompts.is_empty() {
            return Err(TrainError::Other(format!("samples: {} has no prompts", prompt_file.display())));
        }
        Ok(SampleRunner {
            prompts,
            requests,
            dir: config.folders.output_dir.join("sample"),
            output_name: config.folders.output_name.clone(),
        })
    }

    /// Renders every prompt; returns the files written (images, then the grid).
    pub fn run(&mut self, model: &dyn TrainableModel, sets: &[Arc<LoraSet>], tag: SampleTag) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        let timestamp = compact_timestamp();
        let mut written = Vec::new();
        let mut images = Vec::new();
        for (p, request) in self.prompts.iter().zip(&self.requests) {
            let image = model.sample(request, sets)?;
            let name = sample_file_name(Some(&self.output_name), tag, p.index, &timestamp, p.seed);
            let path = self.dir.join(name);
            write_png(&path, &image)?;
            written.push(path);
            images.push(image);
        }
        let same_size = images.iter().all(|i| i.width == images[0].width && i.height == images[0].height);
        if images.len() > 1 && same_size {
            let labels: Vec<String> = self.prompts.iter().map(|p| truncate(&p.prompt, 24)).collect();
            let row = match tag {
                SampleTag::Epoch(e) => format!("epoch {e}"),
                SampleTag::Step(s) => format!("step {s}"),
            };
            let grid = compose_grid(&[images], &[row], &labels)?;
            let tag_text = match tag {
                SampleTag::Epoch(e) => format!("e{e:06}"),
                SampleTag::Step(s) => format!("{s:06}"),
            };
            let path = self.dir.join(format!("{}_{tag_text}_grid.png", self.output_name));
            write_png(&path, &grid)?;
            written.push(path);
        }
        Ok(written)
    }
}

fn truncate(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(n - 1).collect::<String>())
    }
}

/// sd-scripts' sampler names → ours (the ones without an implementation fall back to a
/// similar one with a warning, so an imported prompt file still renders).
fn sampler_kind(name: &str) -> Result<SamplerKind> {
    match name.parse::<SamplerKind>() {
        Ok(k) => Ok(k),
        Err(_) => {
            let fallback = match name.to_ascii_lowercase().as_str() {
                "pndm" | "lms" | "k_lms" | "heun" | "dpm_2" | "k_dpm_2" | "dpmsolver" | "dpmsingle" => {
                    SamplerKind::Euler
                }
                "dpm_2_a" | "k_dpm_2_a" => SamplerKind::EulerAncestral,
                _ => {
                    return Err(TrainError::Other(format!(
                        "samples: unknown sampler {name:?}; use euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras"
                    )))
                }
            };
            tracing::warn!("sample sampler {name:?} is not implemented; using {fallback} instead");
            Ok(fallback)
        }
    }
}

/// Writes an RGB image as PNG, atomically.
pub fn write_png(path: &Path, image: &RgbImage) -> Result<()> {
    lorakit_dataset::fs_atomic::write_png_atomic(path, image.width as u32, image.height as u32, &image.pixels)
        .map_err(|e| TrainError::io(path, e))
}
