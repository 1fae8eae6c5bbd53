//! The `lorakit` command line. It only parses arguments and calls the library crates.

mod cmd;

use clap::{Parser, Subcommand};

/// lorakit: Stable Diffusion LoRA training in one binary.
#[derive(Parser, Debug)]
#[command(name = "lorakit", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short = 'v', long = "log-verbose", action = clap::ArgAction::Count, global = true)]
    log_verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a dataset: what training will see, and what is wrong with it.
    #[command(subcommand)]
    Dataset(cmd::dataset::DatasetCommand),
    /// Edit and count the tags of tag-style captions (like TagGUI, for a whole folder).
    #[command(subcommand)]
    Tags(cmd::tags::TagsCommand),
    /// Caption a folder of images: WD14 tags, or any OpenAI-compatible vision model.
    #[command(subcommand)]
    Caption(cmd::caption::CaptionCommand),
    /// Show what a LoRA file holds: metadata, modules, ranks, block-by-block weight norms.
    Inspect(cmd::inspect::InspectArgs),
    /// Shrink a LoRA by SVD (fixed rank or sd-scripts' dynamic methods).
    Resize(cmd::resize::ResizeArgs),
    /// Merge weighted LoRAs into one of a chosen rank (sd-scripts' svd_merge_lora).
    Merge(cmd::merge::MergeArgs),
    /// Convert a LoRA between kohya and PEFT/diffusers key names (SD1.5, SDXL).
    Convert(cmd::convert::ConvertArgs),
    /// Generate images with LoRAs; --grid renders LoRA files × prompts as one labelled PNG.
    Generate(cmd::generate::GenerateArgs),
    /// Train a LoRA from a TOML config (see `lorakit config new`).
    Train(cmd::train::TrainArgs),
    /// Write a commented starting training config.
    #[command(subcommand)]
    Config(cmd::train::ConfigCommand),
    /// Serve the web GUI on this machine (token-protected; files only under --root folders).
    Gui(cmd::gui::GuiArgs),
}

fn main() -> std::process::ExitCode {
    lorakit_nn::runtime::init_cpu_runtime();
    let cli = Cli::parse();
    init_logging(cli.log_verbose);
    let result = match cli.command {
        Command::Dataset(c) => cmd::dataset::run(c),
        Command::Tags(c) => cmd::tags::run(c),
        Command::Caption(c) => cmd::caption::run(c),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Resize(a) => cmd::resize::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Config(c) => cmd::train::run_config(c),
        Command::Gui(a) => cmd::gui::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            std::process::ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, skipping causes whose text the
/// message already quotes (our error types print their source themselves).
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
