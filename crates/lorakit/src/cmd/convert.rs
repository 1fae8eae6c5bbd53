//! `lorakit convert`: rename a LoRA's keys between kohya (ComfyUI/A1111/Forge)
//! and PEFT/diffusers naming for SD1.5, SDXL, SD3/SD3.5 and Flux.1 (Flux files in any layout:
//! kohya, diffusers/ai-toolkit, ComfyUI/BFL, XLabs; SD3 files: kohya, SAI/ComfyUI, diffusers,
//! OneTrainer).

use clap::{Args, ValueEnum};
use lorakit_lora::convert::{convert_file, Target};
use lorakit_lora::keys::Family;
use lorakit_lora::safetensors_file::Precision;
use std::path::PathBuf;
use std::process::ExitCode;

/// The naming to write.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ToNaming {
    /// kohya / sd-scripts names (`lora_unet_…`, `lora_te…`), for ComfyUI, A1111, Forge.
    Kohya,
    /// PEFT / diffusers names (`unet.….lora_A.weight`, Flux `transformer.….lora_A.weight`), for
    /// diffusers' `load_lora_weights`.
    #[value(alias = "diffusers")]
    Peft,
}

/// Save precision.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SavePrecision {
    Fp32,
    Fp16,
    Bf16,
}

/// Base model, when the file cannot tell.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FamilyArg {
    /// Stable Diffusion 1.x.
    #[value(alias = "sd1")]
    Sd15,
    /// Stable Diffusion XL.
    Sdxl,
    /// Flux.1 (dev, schnell; Chroma shares its layers).
    Flux,
    /// Stable Diffusion 3 / 3.5 (Medium, Large).
    Sd3,
}

/// Arguments of `lorakit convert`.
#[derive(Args, Debug)]
#[command(after_help = "Going to PEFT folds each module's alpha/rank into lora_B (diffusers ignores alpha keys); \
going to kohya writes alpha = the PEFT alpha, or the rank when the file has none. The effective weights are unchanged.\n\n\
Flux: kohya's fused img_attn_qkv / txt_attn_qkv / linear1 are split into diffusers' to_q, to_k, to_v (add_*_proj) \
and proj_mlp and fused back, as sd-scripts' convert_flux_lora.py does (split_qkv files are cut into their parts); \
BFL/ComfyUI (diffusion_model.…), XLabs and ai-toolkit files are read too. diffusers' FluxPipeline does not load \
T5 (text_encoder_2) modules.\n\n\
SD3/SD3.5: kohya's fused attn_qkv / attn2_qkv are split into diffusers' to_q, to_k, to_v (add_*_proj, attn2.*) and fused \
back; the final and the last block's context modulations swap their halves as diffusers' SD3 checkpoint conversion does. \
SAI/ComfyUI (diffusion_model.joint_blocks.…) and OneTrainer (lora_transformer_…) files are read too. diffusers' \
StableDiffusion3Pipeline does not load T5 (text_encoder_3) modules.\n\n\
A file holding NaN/Inf weights is converted as it is (a faithful copy), with a warning naming its modules.\n\n\
Examples:\n  \
    lorakit convert my.safetensors my-diffusers.safetensors --to peft\n  \
    lorakit convert diffusers.safetensors comfy.safetensors --to kohya --precision fp16\n  \
    lorakit convert flux-xlabs.safetensors flux-kohya.safetensors --to kohya")]
pub struct ConvertArgs {
    /// The LoRA to convert (kohya or PEFT names, SD1.5, SDXL, SD3 or Flux).
    pub input: PathBuf,
    /// Where to write the converted LoRA (written atomically; never the input).
    pub output: PathBuf,
    /// The key naming to write.
    #[arg(long, value_enum)]
    pub to: ToNaming,
    /// Save precision [default: the input's].
    #[arg(long, value_enum)]
    pub precision: Option<SavePrecision>,
    /// Base model, overriding detection from keys and metadata.
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,
}

/// Runs `lorakit convert`.
pub fn run(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let to = match args.to {
        ToNaming::Kohya => Target::Kohya,
        ToNaming::Peft => Target::Peft,
    };
    let precision = args.precision.map(|p| match p {
        SavePrecision::Fp32 => Precision::F32,
        SavePrecision::Fp16 => Precision::F16,
        SavePrecision::Bf16 => Precision::BF16,
    });
    let family = args.family.map(|f| match f {
        FamilyArg::Sd15 => Family::Sd1,
        FamilyArg::Sdxl => Family::Sdxl,
        FamilyArg::Flux => Family::Flux,
        FamilyArg::Sd3 => Family::Sd3,
    });
    if let Some(problem) = lorakit_lora::inspect::non_finite_summary(&args.input)? {
        eprintln!("warning: {problem}; the converted file keeps them (applying it gives NaN/black images)");
    }
    lorakit_dataset::fs_atomic::clean_stale_temp_files_beside(&args.output);
    let outcome = convert_file(&args.input, &args.output, to, precision, family)?;
    let folded = if outcome.folded > 0 {
        format!("; alpha/rank folded into lora_B for {} modules", outcome.folded)
    } else {
        String::new()
    };
    // Flux / SD3 layers split into parts (or parts fused) turn N modules into M.
    let inputs: std::collections::BTreeSet<&str> = outcome.renamed.iter().map(|(a, _)| a.as_str()).collect();
    let outputs: std::collections::BTreeSet<&str> = outcome.renamed.iter().map(|(_, b)| b.as_str()).collect();
    let count = if inputs.len() == outputs.len() {
        format!("{} modules", inputs.len())
    } else {
        format!("{} modules into {}", inputs.len(), outputs.len())
    };
    eprintln!(
        "converted {count} ({}, {} → {}, {}) → {}{folded}",
        outcome.family,
        outcome.from.describe(),
        outcome.to,
        outcome.precision.dtype(),
        args.output.display()
    );
    for note in &outcome.notes {
        eprintln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}
