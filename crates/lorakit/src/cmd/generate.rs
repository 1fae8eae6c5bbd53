//! `lorakit generate`: text-to-image with LoRAs, and XY grids of LoRA files × prompts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use lorakit_models::grid::compose_grid;
use lorakit_models::lora_inject::{load_lora_file, sets_from_files, LoadedLora};
use lorakit_models::pipeline::{GenerateRequest, LoraSets, RgbImage, StableDiffusion};
use lorakit_models::samplers::SamplerKind;

/// Arguments of `lorakit generate`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    lorakit generate --model sd15.safetensors --lora mychar.safetensors:0.8 --prompt 'mychar, smiling' -o out.png\n  \
    lorakit generate --model sd15.safetensors --grid --grid-baseline --lora run-000002.safetensors --lora run-000004.safetensors \\\n      \
    --prompt 'mychar, portrait' --prompt 'mychar, full body' -o epochs.png")]
pub struct GenerateArgs {
    /// Base model: a single-file .safetensors checkpoint or a diffusers folder (SD 1.x / 2.x).
    #[arg(long, value_name = "CKPT")]
    model: PathBuf,
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
    /// Sampler steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.0)]
    cfg: f64,
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
    /// Sampler: euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras.
    #[arg(long, default_value = "euler", value_parser = parse_sampler)]
    sampler: SamplerKind,
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

#[derive(Copy, Clone, Debug, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Metal,
}

fn parse_sampler(s: &str) -> Result<SamplerKind, String> {
    s.parse::<SamplerKind>().map_err(|e| e.to_string())
}

fn device(arg: DeviceArg) -> Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => {
            Device::new_cuda(0).context("CUDA device (this build needs the `cuda` feature and an NVIDIA driver)")?
        }
        DeviceArg::Metal => Device::new_metal(0).context("Metal device (this build needs the `metal` feature)")?,
    })
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
        steps: args.steps,
        cfg_scale: args.cfg,
        seed: args.seed,
        width: args.width.unwrap_or(512),
        height: args.height.unwrap_or(512),
        sampler: args.sampler,
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
    let mut model = StableDiffusion::load(&args.model, dtype, &device)?;
    let native = model.native_size;
    let request =
        GenerateRequest { width: args.width.unwrap_or(native), height: args.height.unwrap_or(native), ..request };
    request.validate()?;
    if model.declared_zero_terminal_snr {
        eprintln!("zero-terminal-SNR model (it has a `ztsnr` key): sampling with the rescaled schedule");
    }
    use lorakit_models::schedule::Prediction;
    match (&model.declared_prediction, args.v_prediction) {
        (Some((Prediction::VPrediction, source)), _) => eprintln!("v-prediction model ({source})"),
        (Some((Prediction::Epsilon, source)), true) => {
            eprintln!("note: the model declares epsilon-prediction ({source}); sampling with v-prediction as --v-prediction asks")
        }
        (None, false) if model.family == lorakit_models::checkpoint::ModelFamily::Sd2 => eprintln!(
            "note: an SD 2.x file that does not say what it predicts; sampling with epsilon-prediction — for a 768-v model add --v-prediction (its images are noise without it)"
        ),
        _ => {}
    }
    if args.v_prediction {
        model.prediction = Prediction::VPrediction;
    }

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

    let total = (rows.len() * args.prompt.len() * args.steps) as u64;
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
