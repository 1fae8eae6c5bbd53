//! `lorakit dataset …`: the dataset doctor.

use anyhow::Context;
use clap::{Args, Subcommand};
use lorakit_dataset::config::{plan_from_dirs, plan_from_toml, OptionLayer, ResolutionValue};
use lorakit_dataset::dataset::{LoadProgress, ProbeMode};
use lorakit_dataset::doctor::{check_with, CheckOptions};
use lorakit_dataset::duplicates::MAX_NEAR_DISTANCE;
use lorakit_dataset::fingerprint_cache::{default_cache_dir, FingerprintCache};
use lorakit_dataset::steps::StepRequest;
use std::path::PathBuf;
use std::process::ExitCode;

/// Dataset commands.
#[derive(Subcommand, Debug)]
pub enum DatasetCommand {
    /// Show exactly what training will see, and everything that looks wrong.
    ///
    /// DIR is the train folder: the parent of `N_name` subfolders (N = repeats,
    /// e.g. `10_mychar`) holding images (png, jpg, jpeg, webp, bmp) and .txt captions.
    /// The report lists each subset (repeats, images, samples per epoch), the
    /// bucket histogram, steps per epoch and in total, tag frequencies, and
    /// warnings: broken or fake images, missing or empty captions, BOM/CRLF,
    /// upscaled images, extreme aspect ratios and heavy crops, duplicates,
    /// ignored folders, captions missing the trigger word.
    ///
    /// Exit status: 0 when training can use the dataset, 1 when it cannot
    /// (no images, every image broken), 2 on bad arguments or config.
    #[command(after_help = "Examples:\n  \
        lorakit dataset check train/ --reg reg/ --resolution 512 --batch-size 2 --epochs 10\n  \
        lorakit dataset check --config dataset.toml --json > report.json\n  \
        lorakit dataset check train/ --quick   # headers only: skips decoding and duplicate search")]
    Check(CheckArgs),
}

/// Arguments of `lorakit dataset check`; flags are named after sd-scripts' arguments.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Train folder (parent of `N_name` subfolders). Not needed with --config.
    #[arg(required_unless_present = "config")]
    pub dir: Option<PathBuf>,
    /// Regularisation folder (parent of `N_name` subfolders), like sd-scripts' --reg_data_dir.
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    pub reg: Option<PathBuf>,
    /// sd-scripts dataset config (TOML with [general], [[datasets]], [[datasets.subsets]]).
    #[arg(long, value_name = "FILE", conflicts_with = "dir")]
    pub config: Option<PathBuf>,
    /// Training resolution: SIZE or WIDTH,HEIGHT [default: 512].
    #[arg(long, value_name = "W[,H]", value_parser = ResolutionValue::parse)]
    pub resolution: Option<ResolutionValue>,
    /// Smallest bucket side, rounded down to --bucket-reso-steps [default: 256].
    #[arg(long, value_name = "PX")]
    pub min_bucket_reso: Option<u32>,
    /// Largest bucket side, rounded up to --bucket-reso-steps [default: 1024].
    #[arg(long, value_name = "PX")]
    pub max_bucket_reso: Option<u32>,
    /// Bucket sides are multiples of this (64 for SD1.x/SD2.x/Flux, 32 allowed for SDXL/SD3) [default: 64].
    #[arg(long, value_name = "PX")]
    pub bucket_reso_steps: Option<u32>,
    /// Never upscale: each image gets a bucket of its own size, cut down to the step.
    #[arg(long)]
    pub bucket_no_upscale: bool,
    /// Turn aspect-ratio buckets off: every image is resized and cropped to the resolution.
    #[arg(long)]
    pub no_buckets: bool,
    /// Images per batch (sd-scripts' --train_batch_size) [default: 1].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<u32>,
    /// Epochs to train (sd-scripts' --max_train_epochs); wins over --max-train-steps.
    #[arg(long, value_name = "N")]
    pub epochs: Option<u64>,
    /// Total optimizer steps (sd-scripts' --max_train_steps; its default is 1600).
    #[arg(long, value_name = "N")]
    pub max_train_steps: Option<u64>,
    /// Gradient accumulation steps [default: 1].
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub grad_accum: u64,
    /// Caption file extension, e.g. .txt or .caption [default: .txt].
    #[arg(long, value_name = "EXT")]
    pub caption_extension: Option<String>,
    /// Read headers only: much faster, but truncated images and duplicates are not detected.
    #[arg(long)]
    pub quick: bool,
    /// Decode every image again instead of reusing results of earlier checks for unchanged
    /// files (the cache lives in $LORAKIT_CACHE_DIR, else ~/.cache/lorakit).
    #[arg(long)]
    pub no_cache: bool,
    /// Largest perceptual-hash distance (0–7 of 64 bits) reported as a near duplicate.
    #[arg(long, value_name = "BITS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=(MAX_NEAR_DISTANCE as i64)))]
    pub near_duplicate_distance: u32,
    /// Print the report as JSON (every image with path, repeats, is_reg, size, bucket, caption, warnings).
    #[arg(long)]
    pub json: bool,
}

/// Runs a dataset command.
pub fn run(cmd: DatasetCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DatasetCommand::Check(args) => run_check(args),
    }
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let layer = OptionLayer {
        resolution: args.resolution,
        min_bucket_reso: args.min_bucket_reso,
        max_bucket_reso: args.max_bucket_reso,
        bucket_reso_steps: args.bucket_reso_steps,
        bucket_no_upscale: args.bucket_no_upscale.then_some(true),
        enable_bucket: args.no_buckets.then_some(false),
        batch_size: args.batch_size,
        caption_extension: args.caption_extension.clone(),
        ..Default::default()
    };
    let (plan, roots) = if let Some(config) = &args.config {
        let plan = plan_from_toml(config, &layer)?;
        let root = config.parent().map(PathBuf::from).unwrap_or_default();
        (plan, vec![root])
    } else {
        let dir = args.dir.clone().context("give the train folder or --config")?;
        if !dir.is_dir() {
            anyhow::bail!(
                "{}: no such folder. Give the train folder: the parent of `N_name` subfolders such as 10_mychar",
                dir.display()
            );
        }
        if let Some(reg) = &args.reg {
            if !reg.is_dir() {
                anyhow::bail!("{}: no such regularisation folder", reg.display());
            }
        }
        let plan = plan_from_dirs(&dir, args.reg.as_deref(), &layer)?;
        let mut roots = vec![dir];
        roots.extend(args.reg.clone());
        (plan, roots)
    };
    let options = CheckOptions {
        mode: if args.quick { ProbeMode::Header } else { ProbeMode::Full },
        steps: StepRequest {
            max_train_epochs: args.epochs,
            max_train_steps: args.max_train_steps,
            gradient_accumulation_steps: args.grad_accum,
        },
        near_duplicate_distance: args.near_duplicate_distance,
    };
    let bar = progress_bar(if args.quick { "reading headers" } else { "decoding images" });
    let cache = match default_cache_dir() {
        Some(dir) if !args.no_cache && !args.quick => FingerprintCache::open(&dir),
        _ => FingerprintCache::disabled(),
    };
    let report = check_with(&plan, &roots, &options, &cache, &|event| match event {
        LoadProgress::Found(n) => bar.inc_length(n),
        LoadProgress::Examined => bar.inc(1),
    });
    bar.finish_and_clear();
    if let Err(e) = cache.save() {
        tracing::warn!("could not save the image cache (the next check decodes everything again): {e}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        if !report.usable {
            // The JSON says so too; a script that only checks the exit code still gets a reason.
            let reasons: Vec<&str> = report
                .findings
                .iter()
                .filter(|f| f.severity == lorakit_dataset::doctor::Severity::Error)
                .map(|f| f.message.as_str())
                .collect();
            eprintln!(
                "error: the dataset is not usable: {}",
                lorakit_dataset::caption::escape_controls(&reasons.join("; "))
            );
        }
    } else {
        print!("{}", report.render_text());
    }
    Ok(if report.usable { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A progress bar on stderr when it is a terminal (hidden otherwise, e.g. in scripts and CI).
fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} images, {per_sec}, ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}
