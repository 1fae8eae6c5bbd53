//! `lorakit tags …` (placeholder until the tags commands land).

use clap::Subcommand;

/// Tag editing commands.
#[derive(Subcommand, Debug)]
pub enum TagsCommand {
    /// Tag frequency table.
    Stats,
}

/// Runs a tags command.
pub fn run(_cmd: TagsCommand) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not implemented yet")
}
