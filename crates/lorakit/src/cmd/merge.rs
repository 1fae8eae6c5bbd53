//! `lorakit merge`: weighted sum of LoRAs re-factored by SVD to a chosen rank (sd-scripts'
//! svd_merge_lora.py).

use super::resize::SavePrecision;
use clap::Args;
use lorakit_lora::merge::{merge_files, MergeSettings};
use lorakit_lora::safetensors_file::Precision;
use std::path::PathBuf;
use std::process::ExitCode;

/// One `FILE[:RATIO]` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedInput {
    /// The LoRA file.
    pub path: PathBuf,
    /// Its weight in the sum.
    pub ratio: f32,
}

/// Parses `FILE[:RATIO]`: the text after the last `:` is a ratio only if it parses as a number, so
/// `C:\x.safetensors` is a file. A ratio that is present but not a finite number is an error.
pub fn parse_weighted(text: &str) -> Result<WeightedInput, String> {
    if let Some((file, ratio)) = text.rsplit_once(':') {
        if let Ok(r) = ratio.trim().parse::<f32>() {
            if !r.is_finite() {
                return Err(format!("`{text}`: ratio `{ratio}` is not a finite number; use e.g. FILE:0.7"));
            }
            if file.is_empty() {
                return Err(format!("`{text}`: no file before the ratio; use FILE:RATIO"));
            }
            return Ok(WeightedInput { path: file.into(), ratio: r });
        }
        // `file.safetensors:abc` — a ratio was meant but does not parse (drive letters and
        // directories with colons leave a path separator after the colon).
        if !ratio.contains(['/', '\\']) && file.ends_with(".safetensors") {
            return Err(format!(
                "`{text}`: ratio `{ratio}` is not a number; use FILE:RATIO such as my.safetensors:0.7"
            ));
        }
    }
    if text.is_empty() {
        return Err("empty input; use FILE[:RATIO]".into());
    }
    Ok(WeightedInput { path: text.into(), ratio: 1.0 })
}

/// Arguments of `lorakit merge`.
#[derive(Args, Debug)]
#[command(after_help = "An input holding NaN/Inf weights is refused, naming its modules: the merged modules would be \
NaN (use an earlier epoch's file instead).\n\n\
Flux LoRAs of any layout (kohya, diffusers/ai-toolkit, ComfyUI/BFL, XLabs) and SD3 LoRAs of any layout (kohya, \
diffusers, SAI/ComfyUI, OneTrainer) are read under their kohya names, so a layer merges across files of different \
layouts; the merged file has kohya names.\n\n\
Examples:\n  \
    lorakit merge style.safetensors:0.7 character.safetensors:0.5 -o merged.safetensors --rank 32\n  \
    lorakit merge a.safetensors b.safetensors:-1 -o diff.safetensors --rank 8 --precision fp16")]
pub struct MergeArgs {
    /// LoRAs to merge, each FILE or FILE:RATIO (ratio defaults to 1.0; may be negative).
    #[arg(required = true, value_name = "FILE[:RATIO]", value_parser = parse_weighted)]
    pub inputs: Vec<WeightedInput>,
    /// Where to write the merged LoRA (written atomically; never one of the inputs).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Rank of the merged LoRA (capped per module by its in/out size).
    #[arg(long, value_name = "N")]
    pub rank: usize,
    /// Rank for k×k conv modules (LoCon) [default: --rank].
    #[arg(long, value_name = "N")]
    pub conv_rank: Option<usize>,
    /// Save precision.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: SavePrecision,
}

/// Runs `lorakit merge`.
pub fn run(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let settings = MergeSettings::new(args.rank, args.conv_rank)?;
    let precision = match args.precision {
        SavePrecision::Fp32 => Precision::F32,
        SavePrecision::Fp16 => Precision::F16,
        SavePrecision::Bf16 => Precision::BF16,
    };
    let inputs: Vec<(PathBuf, f32)> = args.inputs.iter().map(|i| (i.path.clone(), i.ratio)).collect();
    for (path, _) in &inputs {
        lorakit_lora::inspect::ensure_finite(path, "The merged LoRA would be NaN in those modules")
            .map_err(anyhow::Error::msg)?;
    }
    lorakit_dataset::fs_atomic::clean_stale_temp_files_beside(&args.output);
    let started = std::time::Instant::now();
    let outcome = merge_files(&inputs, &args.output, &settings, precision)?;
    let mut ranks = std::collections::BTreeMap::<usize, usize>::new();
    for m in &outcome.modules {
        *ranks.entry(m.rank).or_default() += 1;
    }
    let ranks: Vec<String> = ranks.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
    eprintln!(
        "merged {} LoRAs ({} modules, {}) in {:.2} s → {} (ranks: {})",
        inputs.len(),
        outcome.modules.len(),
        outcome.family,
        started.elapsed().as_secs_f64(),
        args.output.display(),
        ranks.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (PathBuf, f32) {
        let w = parse_weighted(text).unwrap();
        (w.path, w.ratio)
    }

    #[test]
    fn ratios_split_at_the_last_colon_only_when_numeric() {
        assert_eq!(ok("a.safetensors:0.7"), ("a.safetensors".into(), 0.7));
        assert_eq!(ok("a.safetensors:-1"), ("a.safetensors".into(), -1.0));
        assert_eq!(ok("a.safetensors:1e-1"), ("a.safetensors".into(), 0.1));
        assert_eq!(ok("a.safetensors"), ("a.safetensors".into(), 1.0));
        assert_eq!(ok(r"C:\loras\x.safetensors"), (r"C:\loras\x.safetensors".into(), 1.0));
        assert_eq!(ok(r"C:\loras\x.safetensors:0.5"), (r"C:\loras\x.safetensors".into(), 0.5));
        assert_eq!(ok("D:/x.safetensors:2"), ("D:/x.safetensors".into(), 2.0));
        assert_eq!(ok("dir:with:colons/x.safetensors"), ("dir:with:colons/x.safetensors".into(), 1.0));
    }

    #[test]
    fn bad_ratio_text_is_an_error() {
        for bad in ["a.safetensors:abc", "a.safetensors:", "a.safetensors:nan", "a.safetensors:inf", ":0.5", ""] {
            let e = parse_weighted(bad).unwrap_err();
            assert!(e.contains("FILE"), "{bad}: {e}");
        }
    }
}
