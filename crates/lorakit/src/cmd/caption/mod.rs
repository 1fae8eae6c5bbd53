//! `lorakit caption`: write captions for a folder of training images — `wd14` (booru tags from
//! a WD v3 tagger), `florence` (natural language from a local Florence-2) or `api` (natural
//! language from any OpenAI-compatible vision model). Every
//! captioner shares [`OutputArgs`]: which images, where their captions go, what happens to
//! captions that exist, the trigger word and the dry run.

pub mod api;
pub mod florence;
pub mod wd14;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use lorakit_caption::output::{Existing, Style, WriteOptions};
use lorakit_caption::targets::{find_targets, Targets};

/// Names the files a run passes over (not images lorakit reads), on stderr.
pub fn report_passed_over(targets: &Targets) {
    for (path, why) in &targets.passed_over {
        eprintln!("passed over: {}: {why}", path.display());
    }
}

/// The progress bar of a run over `images`.
pub fn progress_bar(images: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(images as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `lorakit caption <captioner>`.
#[derive(Subcommand, Debug)]
pub enum CaptionCommand {
    /// Booru tags from a local WD v3 tagger folder (model.safetensors, config.json,
    /// selected_tags.csv), with kohya's tag_images_by_wd14_tagger.py options.
    Wd14(wd14::Wd14Args),
    /// Captions from an OpenAI-compatible vision chat API (OpenAI, or a local llama.cpp,
    /// Ollama, LM Studio or vLLM server running JoyCaption, Qwen-VL, …).
    Api(api::ApiArgs),
    /// Natural-language captions from a local Florence-2 folder (base, large or a fine-tune such
    /// as PromptGen), for Flux and SD3 datasets.
    Florence(florence::FlorenceArgs),
}

/// Runs a `lorakit caption` subcommand.
pub fn run(command: CaptionCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        CaptionCommand::Wd14(args) => wd14::run(args),
        CaptionCommand::Api(args) => api::run(args),
        CaptionCommand::Florence(args) => florence::run(args),
    }
}

/// What every captioner writes, and where.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// The folder of images (e.g. `img/10_mychar`).
    pub dir: PathBuf,
    /// Also caption the images in subfolders (kohya's --recursive).
    #[arg(long)]
    pub recursive: bool,
    /// Caption file extension (kohya's --caption_extension).
    #[arg(long, default_value = ".txt")]
    pub caption_extension: String,
    /// Replace existing captions (by default an image that has one is skipped, so nothing is
    /// lost and a stopped run resumes where it was).
    #[arg(long, conflicts_with = "append")]
    pub overwrite: bool,
    /// Keep existing captions first and add what is new (kohya's --append_tags).
    #[arg(long)]
    pub append: bool,
    /// Put this first in every caption (the LoRA's trigger word).
    #[arg(long, value_name = "WORD")]
    pub trigger: Option<String>,
    /// Write nothing; print each caption that would be written.
    #[arg(long)]
    pub dry_run: bool,
}

impl OutputArgs {
    /// The images to caption, and how their captions are written in `style`.
    pub fn prepare(&self, style: Style) -> anyhow::Result<(Targets, WriteOptions)> {
        let targets = find_targets(&self.dir, self.recursive, &self.caption_extension)?;
        let existing = if self.overwrite {
            Existing::Overwrite
        } else if self.append {
            Existing::Append
        } else {
            Existing::Skip
        };
        Ok((targets, WriteOptions { existing, trigger: self.trigger.clone(), style, dry_run: self.dry_run }))
    }
}
