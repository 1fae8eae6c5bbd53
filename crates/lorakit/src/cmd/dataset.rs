//! `lorakit dataset …` (placeholder until the doctor lands).

use clap::Subcommand;

/// Dataset commands.
#[derive(Subcommand, Debug)]
pub enum DatasetCommand {
    /// Check a dataset.
    Check,
}

/// Runs a dataset command.
pub fn run(_cmd: DatasetCommand) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not implemented yet")
}
