//! Has a LoRA taught the concept? Draw the same prompts and seeds with and without it through
//! `lorakit generate`, read every image, and count.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{read_image, Reading, Shape};

/// A prompt and what a model that understood it draws.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The prompt.
    pub prompt: String,
    /// The shape it asks for.
    pub shape: Shape,
    /// The colour it asks for.
    pub colour: &'static str,
}

impl Probe {
    fn new(prompt: &str, shape: Shape, colour: &'static str) -> Probe {
        Probe { prompt: prompt.into(), shape, colour }
    }
}

/// The quick start's trigger word (the star of `examples/shapes`).
pub const TRIGGER: &str = "lkstar";

/// Prompts with the trigger word that no training image shows (its stars are red, blue or
/// yellow, on the left or centred, on white or black): new places, a new colour, and a new
/// colour, place and background at once. All large: the tiny model's VAE rounds the points of
/// small stars off.
pub fn concept_probes() -> Vec<Probe> {
    vec![
        Probe::new("red lkstar, large, right, white background", Shape::Star, "red"),
        Probe::new("blue lkstar, large, right, black background", Shape::Star, "blue"),
        Probe::new("purple lkstar, large, center, white background", Shape::Star, "purple"),
        Probe::new("green lkstar, large, right, gray background", Shape::Star, "green"),
    ]
}

/// Prompts of the base world without the trigger word: a LoRA that does not break the model
/// leaves these as the base model draws them.
pub fn base_probes() -> Vec<Probe> {
    vec![
        Probe::new("green circle, large, right, gray background", Shape::Circle, "green"),
        Probe::new("purple square, large, right, white background", Shape::Square, "purple"),
        Probe::new("orange triangle, large, center, gray background", Shape::Triangle, "orange"),
        Probe::new("blue diamond, large, left, black background", Shape::Diamond, "blue"),
    ]
}

/// How `lorakit generate` is run.
#[derive(Clone, Debug)]
pub struct Generator {
    /// The `lorakit` binary.
    pub lorakit: PathBuf,
    /// The base model folder or file.
    pub model: PathBuf,
    /// Image side in pixels.
    pub size: usize,
    /// Sampler steps.
    pub steps: usize,
    /// CFG scale.
    pub cfg: f64,
    /// Sampler name.
    pub sampler: String,
    /// Where images are written.
    pub out_dir: PathBuf,
}

impl Generator {
    /// Draws `prompt` with `seed` (and `lora` when given) into `<out_dir>/<name>.png` and reads it.
    pub fn draw(&self, name: &str, prompt: &str, seed: u64, lora: Option<&Path>) -> Result<Reading, String> {
        let out = self.out_dir.join(format!("{name}.png"));
        let mut cmd = Command::new(&self.lorakit);
        cmd.arg("generate").arg("--model").arg(&self.model).args(["--prompt", prompt]);
        cmd.args(["--seed", &seed.to_string(), "--steps", &self.steps.to_string(), "--cfg", &self.cfg.to_string()]);
        cmd.args(["--sampler", &self.sampler, "--width", &self.size.to_string(), "--height", &self.size.to_string()]);
        if let Some(lora) = lora {
            cmd.arg("--lora").arg(lora);
        }
        let output = cmd.arg("-o").arg(&out).output().map_err(|e| format!("{}: {e}", self.lorakit.display()))?;
        if !output.status.success() {
            return Err(format!("lorakit generate failed for {prompt:?}: {}", String::from_utf8_lossy(&output.stderr)));
        }
        read_image(&out)
    }
}

/// Counts over a set of probes × seeds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Images drawn.
    pub images: usize,
    /// Images showing the asked shape.
    pub shape: usize,
    /// Images showing the asked shape in the asked colour.
    pub shape_and_colour: usize,
    /// Images whose reading (shape and colour) equals the other model's for the same prompt
    /// and seed (only for [`compare`]).
    pub same_as_base: usize,
}

impl Tally {
    /// `count / images`.
    pub fn rate(&self, count: usize) -> f64 {
        count as f64 / self.images.max(1) as f64
    }
}

/// Base model and LoRA side by side on the same probes and seeds.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// The base model.
    pub base: Tally,
    /// The base model with the LoRA; `same_as_base` counts its agreement with `base`.
    pub lora: Tally,
    /// `(probe, seed, base reading, LoRA reading)` for every image.
    pub readings: Vec<(String, u64, Reading, Reading)>,
}

/// A comparison's counts as fractions of its images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Base model: the asked shape.
    pub base_shape: f64,
    /// Base model: the asked shape in the asked colour.
    pub base_shape_colour: f64,
    /// With the LoRA: the asked shape.
    pub lora_shape: f64,
    /// With the LoRA: the asked shape in the asked colour.
    pub lora_shape_colour: f64,
    /// With the LoRA: the same reading as the base model's.
    pub lora_same_as_base: f64,
}

impl Comparison {
    /// The counts as fractions of the images.
    pub fn rates(&self) -> Rates {
        Rates {
            base_shape: self.base.rate(self.base.shape),
            base_shape_colour: self.base.rate(self.base.shape_and_colour),
            lora_shape: self.lora.rate(self.lora.shape),
            lora_shape_colour: self.lora.rate(self.lora.shape_and_colour),
            lora_same_as_base: self.lora.rate(self.lora.same_as_base),
        }
    }
}

/// Draws every probe with every seed, with and without `lora`, and counts.
pub fn compare(
    generator: &Generator,
    lora: &Path,
    probes: &[Probe],
    seeds: &[u64],
    tag: &str,
) -> Result<Comparison, String> {
    let mut c = Comparison::default();
    for (p, probe) in probes.iter().enumerate() {
        for &seed in seeds {
            let base = generator.draw(&format!("{tag}-base-p{p}-s{seed}"), &probe.prompt, seed, None)?;
            let with = generator.draw(&format!("{tag}-lora-p{p}-s{seed}"), &probe.prompt, seed, Some(lora))?;
            for (tally, r) in [(&mut c.base, &base), (&mut c.lora, &with)] {
                tally.images += 1;
                tally.shape += r.shows(probe.shape) as usize;
                tally.shape_and_colour += (r.shows(probe.shape) && r.colour == Some(probe.colour)) as usize;
            }
            c.lora.same_as_base += (base.shape == with.shape && base.colour == with.colour) as usize;
            c.readings.push((probe.prompt.clone(), seed, base, with));
        }
    }
    Ok(c)
}
