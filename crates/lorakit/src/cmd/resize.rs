//! `lorakit resize`: shrink a LoRA by SVD, choosing ranks as sd-scripts' resize_lora.py does.

use clap::{Args, ValueEnum};
use lorakit_lora::resize::{ResizeMethod, ResizeSettings};
use lorakit_lora::resize_file::resize_file;
use lorakit_lora::safetensors_file::Precision;
use std::path::PathBuf;
use std::process::ExitCode;

/// Dynamic rank selection (sd-scripts' --dynamic_method; its spellings with `_` work too).
// The shared `Sv` prefix is sd-scripts' own naming, which users type.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DynamicMethod {
    /// Keep singular values above S₀ / param (param ≥ 2).
    #[value(alias = "sv_ratio")]
    SvRatio,
    /// Keep enough singular values for `param` of the Frobenius norm (0 < param < 1).
    #[value(alias = "sv_fro")]
    SvFro,
    /// Keep enough singular values for `param` of their sum (0 < param < 1).
    #[value(alias = "sv_cumulative")]
    SvCumulative,
}

/// Save precision.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SavePrecision {
    Fp32,
    Fp16,
    Bf16,
}

/// Arguments of `lorakit resize`.
#[derive(Args, Debug)]
#[command(after_help = "An input holding NaN/Inf weights is refused, naming its modules: their SVD would be NaN \
(use an earlier epoch's file instead).\n\n\
Flux and SD3 LoRAs keep their layout (kohya, diffusers, ComfyUI/BFL/SAI, XLabs, OneTrainer). A fused qkv / linear1 \
module is resized as one \
layer, as sd-scripts' resize_lora.py does; sd-scripts split_qkv files store those layers block-diagonally at \
parts × their rank, so a smaller --rank truncates across the parts (--verbose shows what each keeps).\n\n\
Examples:\n  \
    lorakit resize my.safetensors my-r16.safetensors --rank 16\n  \
    lorakit resize my.safetensors my-dyn.safetensors --rank 32 --dynamic sv-fro --param 0.9 --verbose")]
pub struct ResizeArgs {
    /// The LoRA to resize.
    pub input: PathBuf,
    /// Where to write the resized LoRA (written atomically; never the input).
    pub output: PathBuf,
    /// New rank (with --dynamic: the largest rank allowed).
    #[arg(long, value_name = "N")]
    pub rank: usize,
    /// New rank for k×k conv modules (LoCon) [default: --rank].
    #[arg(long, value_name = "N")]
    pub conv_rank: Option<usize>,
    /// Choose each module's rank from its singular values.
    #[arg(long, value_enum)]
    pub dynamic: Option<DynamicMethod>,
    /// Parameter of --dynamic.
    #[arg(long, value_name = "X")]
    pub param: Option<f64>,
    /// Save precision.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: SavePrecision,
    /// Print sd-scripts' per-module report (retained norm, chosen rank).
    #[arg(long)]
    pub verbose: bool,
}

/// Runs `lorakit resize`.
pub fn run(args: ResizeArgs) -> anyhow::Result<ExitCode> {
    let dynamic = args.dynamic.map(|d| match d {
        DynamicMethod::SvRatio => "sv_ratio",
        DynamicMethod::SvFro => "sv_fro",
        DynamicMethod::SvCumulative => "sv_cumulative",
    });
    let method = ResizeMethod::from_flags(dynamic, args.param)?;
    let settings = ResizeSettings::new(method, args.rank, args.conv_rank)?;
    let precision = match args.precision {
        SavePrecision::Fp32 => Precision::F32,
        SavePrecision::Fp16 => Precision::F16,
        SavePrecision::Bf16 => Precision::BF16,
    };
    lorakit_lora::inspect::ensure_finite(&args.input, "The resized LoRA would be NaN in those modules")
        .map_err(anyhow::Error::msg)?;
    lorakit_dataset::fs_atomic::clean_stale_temp_files_beside(&args.output);
    let started = std::time::Instant::now();
    let outcome = resize_file(&args.input, &args.output, &settings, precision)?;
    if args.verbose {
        println!();
        for line in &outcome.verbose_lines {
            println!("{line}");
        }
        println!("{}", outcome.average_line);
    }
    let mut ranks = std::collections::BTreeMap::<usize, usize>::new();
    for m in &outcome.modules {
        *ranks.entry(m.rank).or_default() += 1;
    }
    let ranks: Vec<String> = ranks.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
    eprintln!(
        "resized {} modules in {:.2} s → {} (ranks: {})",
        outcome.modules.len(),
        started.elapsed().as_secs_f64(),
        args.output.display(),
        ranks.join(", ")
    );
    for note in &outcome.notes {
        eprintln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}
