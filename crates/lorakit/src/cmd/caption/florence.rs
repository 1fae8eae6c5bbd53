//! `lorakit caption florence`: natural-language captions (Flux/SD3 style) from a local
//! florence-community Florence-2 folder, decoded as transformers' `generate` + the processor's
//! post-processing do.

use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use lorakit_caption::florence2::processor::Task;
use lorakit_caption::florence2::{Captioner, Florence2Error};
use lorakit_caption::output::{self, Outcome, Style};

use super::OutputArgs;
use crate::cmd::device::{device, DeviceArg};

/// Arguments of `lorakit caption florence`.
#[derive(clap::Args, Debug)]
pub struct FlorenceArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// The model folder: config.json, model.safetensors, tokenizer.json and
    /// preprocessor_config.json of a florence-community repo (e.g. `hf download
    /// florence-community/Florence-2-base --local-dir florence-2-base`).
    #[arg(long, value_name = "DIR")]
    pub model: std::path::PathBuf,
    /// Caption length: <CAPTION>, <DETAILED_CAPTION> or <MORE_DETAILED_CAPTION>.
    #[arg(long, value_enum, default_value_t = TaskArg::Caption)]
    pub task: TaskArg,
    /// Beam-search width (1 = greedy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub num_beams: u32,
    /// Most tokens per caption.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_new_tokens: u32,
    /// Where the model runs (cuda: a build with the `cuda` feature; not yet run on a GPU).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
}

/// `--task`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskArg {
    /// `<CAPTION>`: one sentence.
    Caption,
    /// `<DETAILED_CAPTION>`.
    Detailed,
    /// `<MORE_DETAILED_CAPTION>`: a paragraph.
    MoreDetailed,
}

/// Runs `lorakit caption florence`.
pub fn run(args: FlorenceArgs) -> anyhow::Result<ExitCode> {
    let task = match args.task {
        TaskArg::Caption => Task::Caption,
        TaskArg::Detailed => Task::Detailed,
        TaskArg::MoreDetailed => Task::MoreDetailed,
    };
    let (targets, write) = args.output.prepare(Style::Text)?;
    let captioner = Captioner::load(&args.model, &device(args.device)?).context("cannot load Florence-2")?;
    super::report_passed_over(&targets);
    let (todo, mut summary) = output::plan_all(&targets.targets, &write);
    eprintln!(
        "captioning {} images with Florence-2 ({}, {} beams){}",
        todo.len(),
        task.token(),
        args.num_beams,
        if summary.skipped.is_empty() { String::new() } else { format!("; {} skipped", summary.skipped.len()) }
    );
    let bar = super::progress_bar(todo.len());
    for (target, existing) in todo {
        let path = &target.image;
        let outcome = match captioner.caption_file(path, task, args.num_beams as usize, args.max_new_tokens as usize) {
            Ok(text) => output::write(target, &output::compose(&text, existing.as_deref(), &write), &write),
            Err(Florence2Error::Image { message, .. }) => Outcome::Failed(message),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        match &outcome {
            Outcome::WouldWrite(caption) => bar.suspend(|| println!("{}: {caption}", path.display())),
            Outcome::Failed(why) => bar.suspend(|| eprintln!("failed: {}: {why}", path.display())),
            _ => {}
        }
        summary.add(path.clone(), &outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();
    print!("{}", summary.render(5));
    Ok(if summary.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
