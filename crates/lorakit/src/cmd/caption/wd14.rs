//! `lorakit caption wd14`: booru tags from a local WD v3 tagger folder, with kohya's
//! `tag_images_by_wd14_tagger.py` options under the same names (kebab-case) and defaults.
//!
//! Differences from kohya, on purpose: an image that has a caption is skipped unless
//! `--overwrite` / `--append` (kohya overwrites); `--tag-replacement` works (kohya @48d368f
//! parses it and drops the result); spaces around `--always-first-tags` entries are ignored;
//! nothing is downloaded (`--model` is a folder you fetched).

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::ValueEnum;
use lorakit_caption::output::{self, Outcome, Style};
use lorakit_caption::wd14::postprocess::{Frequency, Options, Selector};
use lorakit_caption::wd14::{Resize, Tagger, Wd14Error};

use super::OutputArgs;
use crate::cmd::device::{device, DeviceArg};

/// Arguments of `lorakit caption wd14`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Differences from kohya's tag_images_by_wd14_tagger.py: existing captions are skipped \
    unless --overwrite or --append (kohya overwrites them); --tag-replacement is applied (kohya's current \
    script parses it but never applies it); nothing is downloaded.")]
pub struct Wd14Args {
    #[command(flatten)]
    pub output: OutputArgs,
    /// The tagger folder: config.json, model.safetensors and selected_tags.csv of a
    /// SmilingWolf/wd-*-tagger-v3 repo (e.g. `hf download SmilingWolf/wd-vit-tagger-v3
    /// --local-dir wd-vit-v3`).
    #[arg(long, visible_alias = "model-dir", value_name = "DIR")]
    pub model: std::path::PathBuf,
    /// Keep a tag when its probability is at least this (kohya's --thresh).
    #[arg(long, default_value_t = 0.35)]
    pub thresh: f32,
    /// Threshold of general tags (default: --thresh).
    #[arg(long)]
    pub general_threshold: Option<f32>,
    /// Threshold of character tags (default: --thresh).
    #[arg(long)]
    pub character_threshold: Option<f32>,
    /// Put character tags first (each goes to the front, so several come out in reverse CSV
    /// order, as in kohya).
    #[arg(long)]
    pub character_tags_first: bool,
    /// Put the most probable rating (general / sensitive / questionable / explicit) first.
    #[arg(long, conflicts_with = "use_rating_tags_as_last_tag")]
    pub use_rating_tags: bool,
    /// Put the most probable rating last.
    #[arg(long)]
    pub use_rating_tags_as_last_tag: bool,
    /// Replace underscores with spaces in tags longer than 3 characters (`^_^` stays).
    #[arg(long)]
    pub remove_underscore: bool,
    /// Tags never written, separated by the caption separator (written as they appear after
    /// --remove-underscore).
    #[arg(long, default_value = "", value_name = "TAGS")]
    pub undesired_tags: String,
    /// Tags moved to the front when present; each in turn, so the last listed ends up first.
    #[arg(long, value_name = "TAGS")]
    pub always_first_tags: Option<String>,
    /// Between tags.
    #[arg(long, default_value = ", ", value_name = "SEP")]
    pub caption_separator: String,
    /// Rename tags: `source,target;source,target` (escape , and ; as \, and \;).
    #[arg(long, value_name = "PAIRS")]
    pub tag_replacement: Option<String>,
    /// Split `name_(series)` character tags into `name, series`.
    #[arg(long)]
    pub character_tag_expand: bool,
    /// Print how many captions each tag went into.
    #[arg(long)]
    pub frequency_tags: bool,
    /// Per-image MCut threshold instead of the fixed one for these categories (the official
    /// WD Space's option; the character threshold is at least 0.15).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CATEGORY")]
    pub mcut: Vec<McutCategory>,
    /// At most this many general + character tags per image (the most probable).
    #[arg(long, value_name = "N")]
    pub max_tags: Option<usize>,
    /// Resize rule: kohya's (OpenCV area when shrinking, PIL Lanczos when enlarging) or the
    /// official WD Space's (PIL bicubic).
    #[arg(long, value_enum, default_value_t = ResizeArg::Kohya)]
    pub resize: ResizeArg,
    /// Images per forward pass.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: u32,
    /// Where the model runs (cuda: a build with the `cuda` feature; not yet run on a GPU).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}

/// `--mcut` categories.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum McutCategory {
    /// General tags.
    General,
    /// Character tags.
    Character,
}

/// `--resize`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeArg {
    /// kohya's rule.
    Kohya,
    /// The official Space's rule.
    Bicubic,
}

/// Runs `lorakit caption wd14`.
pub fn run(args: Wd14Args) -> anyhow::Result<ExitCode> {
    for (name, t) in [
        ("--thresh", Some(args.thresh)),
        ("--general-threshold", args.general_threshold),
        ("--character-threshold", args.character_threshold),
    ] {
        if let Some(t) = t {
            if !(0.0..=1.0).contains(&t) {
                bail!("{name} {t}: give a probability between 0 and 1");
            }
        }
    }
    let options = Options {
        thresh: args.thresh,
        general_threshold: args.general_threshold,
        character_threshold: args.character_threshold,
        character_tags_first: args.character_tags_first,
        use_rating_tags: args.use_rating_tags,
        use_rating_tags_as_last_tag: args.use_rating_tags_as_last_tag,
        remove_underscore: args.remove_underscore,
        undesired_tags: args.undesired_tags.clone(),
        always_first_tags: args.always_first_tags.clone(),
        caption_separator: args.caption_separator.clone(),
        tag_replacement: args.tag_replacement.clone(),
        character_tag_expand: args.character_tag_expand,
        mcut_general: args.mcut.contains(&McutCategory::General),
        mcut_character: args.mcut.contains(&McutCategory::Character),
        max_tags: args.max_tags,
    };
    let (targets, write) = args.output.prepare(Style::Tags { separator: args.caption_separator.clone() })?;
    let tagger = Tagger::load(&args.model, &device(args.device)?).context("cannot load the WD tagger")?;
    let selector = Selector::new(tagger.tags(), options).map_err(anyhow::Error::msg)?;
    let resize = match args.resize {
        ResizeArg::Kohya => Resize::Kohya,
        ResizeArg::Bicubic => Resize::Bicubic,
    };
    super::report_passed_over(&targets);
    let (todo, mut summary) = output::plan_all(&targets.targets, &write);
    eprintln!(
        "tagging {} images with {} ({}², {} tags){}",
        todo.len(),
        tagger.architecture(),
        tagger.size(),
        tagger.tags().len(),
        if summary.skipped.is_empty() { String::new() } else { format!("; {} skipped", summary.skipped.len()) }
    );
    let bar = super::progress_bar(todo.len());
    let mut frequency = Frequency::default();
    let paths: Vec<_> = todo.iter().map(|(t, _)| t.image.clone()).collect();
    let mut next = todo.iter();
    tagger.tag_files(&paths, resize, args.batch_size as usize, |path, probs| {
        let Some((target, existing)) = next.next() else { return };
        let outcome = match probs {
            Ok(probs) => {
                let tags = selector.select(&probs, &mut frequency);
                let caption = output::compose(&selector.caption(&tags), existing.as_deref(), &write);
                output::write(target, &caption, &write)
            }
            Err(Wd14Error::Image { message, .. }) => Outcome::Failed(message),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        match &outcome {
            Outcome::WouldWrite(caption) => bar.suspend(|| println!("{}: {caption}", path.display())),
            Outcome::Failed(why) => bar.suspend(|| eprintln!("failed: {}: {why}", path.display())),
            _ => {}
        }
        summary.add(path.to_path_buf(), &outcome);
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    print!("{}", summary.render(5));
    if args.frequency_tags {
        print!("{}", frequency.render());
    }
    Ok(if summary.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
