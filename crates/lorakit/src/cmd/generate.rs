//! `lorakit generate`: text-to-image with LoRAs, and XY grids of LoRA files × prompts.

use super::device::{device, DeviceArg};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lorakit_models::checkpoint::sd3::Sd3Paths;
use lorakit_models::checkpoint::{detect_family_at, ModelFamily};
use lorakit_models::flux_pipeline::{FluxOptions, FluxPaths, FluxPipeline};
use lorakit_models::grid::compose_grid;
use lorakit_models::lora_inject::{load_lora_file, sets_from_files, ComponentTargets, LoadedLora};
use lorakit_models::pipeline::{GenerateRequest, LoraSets, RgbImage, StableDiffusion};
use lorakit_models::samplers::SamplerKind;
use lorakit_models::sd3_pipeline::{Sd3Options, Sd3Pipeline};

/// Arguments of `lorakit generate`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lorakit generate --model sd15.safetensors --lora mychar.safetensors:0.8 --prompt 'mychar, smiling' -o out.png\n  \
    lorakit generate --model sd15.safetensors --grid --grid-baseline --lora run-000002.safetensors --lora run-000004.safetensors \\\n      \
    --prompt 'mychar, portrait' --prompt 'mychar, full body' -o epochs.png")]
pub struct GenerateArgs {
    /// Base model: a single-file .safetensors checkpoint or a diffusers folder (SD 1.x / 2.x,
    /// SDXL; Flux.1: BFL's transformer file with --clip-l, --t5xxl and --ae, or a diffusers folder;
    /// SD3 / SD3.5: Stability AI's file, with --clip-l, --clip-g, --t5xxl when it holds no text
    /// encoders, or a diffusers folder).
    #[arg(long, value_name = "CKPT")]
    model: PathBuf,
    /// Flux, SD3: the CLIP-L text encoder file (sd-scripts' --clip_l); default: the folder's
    /// text_encoder/ (SD3: or the one inside the file).
    #[arg(long, value_name = "FILE")]
    clip_l: Option<PathBuf>,
    /// SD3: the CLIP-G text encoder file (sd-scripts' --clip_g); default: the one inside the
    /// file, or the folder's text_encoder_2/.
    #[arg(long, value_name = "FILE")]
    clip_g: Option<PathBuf>,
    /// Flux, SD3: the T5-XXL text encoder file (sd-scripts' --t5xxl); default: the folder's
    /// text_encoder_2/ (Flux) or text_encoder_3/ / the one inside the file (SD3).
    #[arg(long, value_name = "FILE")]
    t5xxl: Option<PathBuf>,
    /// Flux: the autoencoder file, BFL's ae.safetensors (sd-scripts' --ae); default: the folder's vae/.
    #[arg(long, value_name = "FILE")]
    ae: Option<PathBuf>,
    /// SD 1.x/2.x, SDXL, SD3: a VAE to use instead of the model's (sd-scripts' --vae, e.g.
    /// SDXL's fp16-fix VAE): an LDM or diffusers .safetensors file or a diffusers VAE folder.
    #[arg(long, value_name = "FILE")]
    vae: Option<PathBuf>,
    /// Flux.1-dev: the embedded guidance (sd-scripts' sample option --g).
    #[arg(long, default_value_t = 3.5)]
    guidance: f64,
    /// Flux, SD3: T5 tokens per prompt (default 512 for Flux dev, 256 for schnell and SD3).
    #[arg(long)]
    t5xxl_max_token_length: Option<usize>,
    /// Flux: mask T5's padding tokens in T5 and the transformer; SD3: in T5 (as the LoRA was
    /// trained with sd-scripts' --apply_t5_attn_mask).
    #[arg(long)]
    apply_t5_attn_mask: bool,
    /// Flux, SD3: keep this many transformer blocks in RAM and copy each to the GPU when it runs
    /// (sd-scripts' --blocks_to_swap; Flux: N/2 double and (N − N/2)·2 single blocks, SD3: the
    /// last N joint blocks, at most depth − 2), for cards that cannot hold the whole model.
    #[arg(long)]
    blocks_to_swap: Option<usize>,
    /// A LoRA file (kohya LoRA/LoCon, PEFT/diffusers, LyCORIS LoHa/LoKr), optionally with a
    /// strength (FILE:0.8). Repeat for several; with --grid each one is a row, otherwise they
    /// are applied together. A file holding NaN/Inf weights is refused (the image would be black).
    #[arg(long, value_name = "FILE[:WEIGHT]")]
    lora: Vec<String>,
    /// The prompt, with A1111 emphasis: `(word:1.2)`, `(word)` ×1.1, `[word]` ÷1.1, `\(` for a
    /// literal bracket. Repeat for several (with --grid each one is a column).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Negative prompt.
    #[arg(long)]
    negative: Option<String>,
    /// Sampler steps (default 25; Flux: 20, SD3: 30, as sd-scripts' samplers).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale with the negative prompt (default 7; Flux: 1 = none; SD3:
    /// 7.5, as sd-scripts' samplers).
    #[arg(long)]
    cfg: Option<f64>,
    /// Seed of the initial noise (every cell of a grid uses the same seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Width in pixels (a multiple of the VAE's factor, 8 for SD; default: the model's native
    /// size: a diffusers folder's, else 512 for SD 1.x/2.x and 1024 for SDXL).
    #[arg(long)]
    width: Option<usize>,
    /// Height in pixels (multiple of 8; default: the model's native size).
    #[arg(long)]
    height: Option<usize>,
    /// Sampler: euler (default), euler_a, ddim, dpmpp_2m, dpmpp_2m_karras (SD families; Flux
    /// always samples with flow-matching Euler).
    #[arg(long, value_parser = parse_sampler)]
    sampler: Option<SamplerKind>,
    /// CLIP skip (2 = penultimate layer, as most anime SD 1.x models expect; SDXL always uses
    /// the penultimate layer, so leave it unset there).
    #[arg(long)]
    clip_skip: Option<usize>,
    /// The model predicts v (SD 2.x 768-v models) instead of noise.
    #[arg(long)]
    v_prediction: bool,
    /// Render an XY grid: rows = LoRA files (e.g. the epochs of one run), columns = prompts.
    #[arg(long)]
    grid: bool,
    /// With --grid, add a first row without any LoRA.
    #[arg(long, requires = "grid")]
    grid_baseline: bool,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Output PNG.
    #[arg(short, long, value_name = "PNG")]
    output: PathBuf,
}

fn parse_sampler(s: &str) -> Result<SamplerKind, String> {
    s.parse::<SamplerKind>().map_err(|e| e.to_string())
}

/// `FILE[:WEIGHT]`; a colon followed by something that is not a number is part of the path
/// (Windows drive letters, odd file names).
fn parse_lora_spec(spec: &str) -> Result<(PathBuf, f64)> {
    if let Some((path, weight)) = spec.rsplit_once(':') {
        if let Ok(w) = weight.parse::<f64>() {
            if !w.is_finite() {
                bail!("LoRA weight in {spec:?} must be a finite number");
            }
            return Ok((PathBuf::from(path), w));
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// Runs the command.
pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    if !args.grid && args.prompt.len() > 1 {
        bail!(
            "{} prompts given: use --grid to render one column per prompt, or pass a single --prompt",
            args.prompt.len()
        );
    }
    if args.output.is_dir() {
        bail!("{} is a directory; give the output PNG's file name", args.output.display());
    }
    let request = GenerateRequest {
        prompt: args.prompt[0].clone(),
        negative: args.negative.clone(),
        steps: args.steps.unwrap_or(25),
        cfg_scale: args.cfg.unwrap_or(7.0),
        guidance: args.guidance,
        seed: args.seed,
        width: args.width.unwrap_or(512),
        height: args.height.unwrap_or(512),
        sampler: args.sampler.unwrap_or(SamplerKind::Euler),
        clip_skip: args.clip_skip,
    };
    request.validate()?;
    let loras: Vec<(PathBuf, f64)> = args.lora.iter().map(|s| parse_lora_spec(s)).collect::<Result<_>>()?;
    for (path, _) in &loras {
        // NaN/Inf in any applied module turns every pixel NaN: the PNG would be black.
        lorakit_lora::inspect::ensure_finite(path, "Generating with it would give a black image")
            .map_err(anyhow::Error::msg)?;
    }
    lorakit_dataset::fs_atomic::clean_stale_temp_files_beside(&args.output);
    let device = device(args.device)?;
    let dtype = DType::F32;
    eprintln!("loading {}", args.model.display());
    let family = detect_family_at(&args.model)?;
    // sd-scripts' Flux sampler: 20 steps, no CFG (scale 1); its SD3 sampler: 30 steps, CFG 7.5;
    // both flow Euler only.
    let request = match family {
        ModelFamily::Flux | ModelFamily::Sd3 => {
            if args.sampler.is_some() {
                bail!("--sampler does not apply to {family} models: they sample with flow-matching Euler");
            }
            let (steps, cfg) = if family == ModelFamily::Flux { (20, 1.0) } else { (30, 7.5) };
            GenerateRequest { steps: args.steps.unwrap_or(steps), cfg_scale: args.cfg.unwrap_or(cfg), ..request }
        }
        _ => request,
    };
    let model = match family {
        ModelFamily::Flux => load_flux(&args, &device)?,
        ModelFamily::Sd3 => load_sd3(&args, &device)?,
        _ => load_sd(&args, dtype, &device)?,
    };
    let native = model.native_size();
    let request =
        GenerateRequest { width: args.width.unwrap_or(native), height: args.height.unwrap_or(native), ..request };
    request.validate()?;

    let load = |(path, weight): &(PathBuf, f64)| -> Result<LoadedLora> {
        Ok(load_lora_file(path, *weight, false, &model.lora_components(), dtype, &device)?)
    };
    let as_sets = |files: Vec<LoadedLora>| -> Result<LoraSets> {
        Ok(LoraSets { sets: sets_from_files(files, model.lora_components().len(), &device)? })
    };
    // Rows: LoRA combinations (None = base model) with their labels.
    let mut rows: Vec<(String, Option<LoraSets>)> = Vec::new();
    if args.grid {
        if args.grid_baseline || loras.is_empty() {
            rows.push(("no LoRA".to_string(), None));
        }
        for spec in &loras {
            let name =
                spec.0.file_stem().map_or_else(|| spec.0.display().to_string(), |s| s.to_string_lossy().into_owned());
            let label = if spec.1 == 1.0 { name } else { format!("{name} x{}", spec.1) };
            rows.push((label, Some(as_sets(vec![load(spec)?])?)));
        }
    } else {
        let files = loras.iter().map(load).collect::<Result<Vec<_>>>()?;
        rows.push((String::new(), if files.is_empty() { None } else { Some(as_sets(files)?) }));
    }

    let total = (rows.len() * args.prompt.len() * request.steps) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed} < {eta}  {msg}").expect("valid template"),
    );
    let mut cells: Vec<Vec<RgbImage>> = Vec::new();
    for (label, sets) in &rows {
        let mut row = Vec::new();
        for prompt in &args.prompt {
            bar.set_message(label.clone());
            let req = GenerateRequest { prompt: prompt.clone(), ..request.clone() };
            let image = model.generate(&req, sets.as_ref(), &mut |_, _| bar.inc(1))?;
            row.push(image);
        }
        cells.push(row);
    }
    bar.finish_and_clear();
    let image = if args.grid {
        let row_labels: Vec<String> = rows.iter().map(|(l, _)| l.clone()).collect();
        compose_grid(&cells, &row_labels, &args.prompt)?
    } else {
        cells.remove(0).remove(0)
    };
    write_png(&args.output, &image)?;
    eprintln!("wrote {} ({}×{})", args.output.display(), image.width, image.height);
    Ok(ExitCode::SUCCESS)
}

/// The model `generate` draws with: an SD family's pipeline, Flux's or SD3's.
enum Model {
    Sd(Box<StableDiffusion>),
    Flux(Box<FluxPipeline>),
    Sd3(Box<Sd3Pipeline>),
}

impl Model {
    fn lora_components(&self) -> Vec<ComponentTargets<'_>> {
        match self {
            Model::Sd(m) => m.lora_components(),
            Model::Flux(m) => m.lora_components(),
            Model::Sd3(m) => m.lora_components(),
        }
    }

    /// The default image side: an SD folder's native size; Flux's and SD3's VAE `sample_size`.
    fn native_size(&self) -> usize {
        match self {
            Model::Sd(m) => m.native_size,
            Model::Flux(m) => m.ae().config().sample_size,
            Model::Sd3(m) => m.vae().config().sample_size,
        }
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        lora: Option<&LoraSets>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> lorakit_models::Result<RgbImage> {
        match self {
            Model::Sd(m) => m.generate(request, lora, on_step),
            Model::Flux(m) => m.generate(request, lora, on_step),
            Model::Sd3(m) => m.generate(request, lora, on_step),
        }
    }
}

/// An SD 1.x/2.x/SDXL model, with what it declares about its prediction reported.
fn load_sd(args: &GenerateArgs, dtype: DType, device: &Device) -> Result<Model> {
    for (flag, given) in [
        ("--clip-l", args.clip_l.is_some()),
        ("--clip-g", args.clip_g.is_some()),
        ("--t5xxl", args.t5xxl.is_some()),
        ("--ae", args.ae.is_some()),
    ] {
        if given {
            bail!("{flag} is for Flux and SD3 models; {} is not one", args.model.display());
        }
    }
    let mut model = StableDiffusion::load_with_vae(&args.model, args.vae.as_deref(), dtype, device)?;
    if model.declared_zero_terminal_snr {
        eprintln!("zero-terminal-SNR model (it has a `ztsnr` key): sampling with the rescaled schedule");
    }
    use lorakit_models::schedule::Prediction;
    match (&model.declared_prediction, args.v_prediction) {
        (Some((Prediction::VPrediction, source)), _) => eprintln!("v-prediction model ({source})"),
        (Some((Prediction::Epsilon, source)), true) => {
            eprintln!("note: the model declares epsilon-prediction ({source}); sampling with v-prediction as --v-prediction asks")
        }
        (None, false) if model.family == ModelFamily::Sd2 => eprintln!(
            "note: an SD 2.x file that does not say what it predicts; sampling with epsilon-prediction — for a 768-v model add --v-prediction (its images are noise without it)"
        ),
        _ => {}
    }
    if args.v_prediction {
        model.prediction = Prediction::VPrediction;
    }
    Ok(Model::Sd(Box::new(model)))
}

/// A Flux.1 model from its file(s) or folder.
fn load_flux(args: &GenerateArgs, device: &Device) -> Result<Model> {
    if args.v_prediction || args.clip_skip.is_some() {
        bail!("--v-prediction and --clip-skip do not apply to Flux models");
    }
    if args.clip_g.is_some() {
        bail!("--clip-g is for SD3 models; {} is a Flux model", args.model.display());
    }
    if args.vae.is_some() {
        bail!("--vae is for SD 1.x/2.x, SDXL and SD3 models; give a Flux model's autoencoder with --ae");
    }
    let paths = FluxPaths {
        model: args.model.clone(),
        clip_l: args.clip_l.clone(),
        t5xxl: args.t5xxl.clone(),
        ae: args.ae.clone(),
    };
    let opts = FluxOptions {
        t5_max_length: args.t5xxl_max_token_length,
        apply_t5_attn_mask: args.apply_t5_attn_mask,
        blocks_to_swap: args.blocks_to_swap.unwrap_or(0),
        ..FluxOptions::default()
    };
    let model = FluxPipeline::load(&paths, &opts, device)?;
    let kind = if model.transformer().config().guidance_embed { "dev (guidance-distilled)" } else { "schnell" };
    eprintln!(
        "Flux.1 {kind}: {} double + {} single blocks",
        model.transformer().config().depth,
        model.transformer().config().depth_single_blocks
    );
    Ok(Model::Flux(Box::new(model)))
}

/// An SD3 / SD3.5 model from its file(s) or folder.
fn load_sd3(args: &GenerateArgs, device: &Device) -> Result<Model> {
    for (flag, given) in
        [("--v-prediction", args.v_prediction), ("--clip-skip", args.clip_skip.is_some()), ("--ae", args.ae.is_some())]
    {
        if given {
            bail!("{flag} does not apply to SD3 models");
        }
    }
    let paths = Sd3Paths {
        model: args.model.clone(),
        clip_l: args.clip_l.clone(),
        clip_g: args.clip_g.clone(),
        t5xxl: args.t5xxl.clone(),
        vae: args.vae.clone(),
    };
    let opts = Sd3Options {
        t5_max_length: args.t5xxl_max_token_length,
        apply_t5_attn_mask: args.apply_t5_attn_mask,
        blocks_to_swap: args.blocks_to_swap.unwrap_or(0),
        ..Sd3Options::default()
    };
    let model = Sd3Pipeline::load(&paths, &opts, device)?;
    let cfg = model.transformer().config();
    let kind = match cfg.model_type() {
        "sd35l" => "SD3.5 Large",
        "sd35m" => "SD3.5 Medium",
        _ => "SD3 Medium",
    };
    eprintln!("{kind}-shaped MMDiT: {} joint blocks of width {}", cfg.depth, cfg.hidden_size);
    Ok(Model::Sd3(Box::new(model)))
}

fn write_png(path: &std::path::Path, image: &RgbImage) -> Result<()> {
    lorakit_dataset::fs_atomic::write_png_atomic(path, image.width as u32, image.height as u32, &image.pixels)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_spec_weight_and_paths_with_colons() {
        assert_eq!(parse_lora_spec("a.safetensors:0.8").unwrap(), (PathBuf::from("a.safetensors"), 0.8));
        assert_eq!(parse_lora_spec("a.safetensors").unwrap(), (PathBuf::from("a.safetensors"), 1.0));
        assert_eq!(parse_lora_spec("C:/x/a.safetensors").unwrap(), (PathBuf::from("C:/x/a.safetensors"), 1.0));
        assert_eq!(
            parse_lora_spec("dir:v2/a.safetensors:-0.5").unwrap(),
            (PathBuf::from("dir:v2/a.safetensors"), -0.5)
        );
        assert!(parse_lora_spec("a.safetensors:inf").is_err());
    }
}
