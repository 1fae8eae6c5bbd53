//! `lorakit inspect`: what a LoRA file holds, block by block, across epochs.

use clap::Args;
use lorakit_lora::inspect::{inspect_file, render_text};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `lorakit inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// LoRA files (.safetensors). Give the epochs of one run to see block norms grow, one column per file.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print the report as JSON (per module: name, rank, alpha, norm, block, …).
    #[arg(long)]
    pub json: bool,
}

/// Runs `lorakit inspect`. Every file is reported; a file that cannot be read
/// is named on stderr and makes the exit status 1.
pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    let mut failed = false;
    for path in &args.files {
        match inspect_file(path) {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else if !reports.is_empty() {
        print!("{}", render_text(&reports));
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
