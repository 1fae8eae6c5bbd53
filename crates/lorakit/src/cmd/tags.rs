//! `lorakit tags …`: tag statistics and bulk editing of tag captions. Parses
//! arguments and prints; the work is done by `lorakit_dataset::tags`.

use anyhow::Context;
use clap::{Args, Subcommand};
use lorakit_dataset::caption::escape_controls;
use lorakit_dataset::tags::{
    plan_edit, select_caption_files, tag_stats, tag_stats_per_folder, AddPosition, EditOptions, EditPlan, FileOutcome,
    SortOrder, TagEdit, TagMatching, TagStats,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Tag commands. Editing commands change only the first line of each caption
/// file (the one sd-scripts reads), write atomically, and never touch files
/// that would not change. Natural-language captions only get text-safe edits.
#[derive(Subcommand, Debug)]
pub enum TagsCommand {
    /// Tag frequency table (count and % of tag captions), for the whole set or per folder.
    Stats(StatsArgs),
    /// Add tags (comma-separated) at the start, the end or a position; tags already present are skipped.
    Add(AddArgs),
    /// Remove tags (comma-separated), or with --regex every tag a pattern matches as a whole.
    Remove(RemoveArgs),
    /// Replace a tag with another (empty NEW removes it), or with --regex a pattern inside each tag.
    Replace(ReplaceArgs),
    /// Move tags (trigger words, comma-separated) to the front, in the order given.
    MoveToFront(MoveToFrontArgs),
    /// Remove repeated tags, keeping the first occurrence.
    Dedupe(DedupeArgs),
    /// Sort tags alphabetically or by frequency across the selected files.
    Sort(SortArgs),
    /// Trim tags, collapse whitespace, drop empty tags; optionally underscores to spaces.
    Strip(StripArgs),
}

/// Which files to work on.
#[derive(Args, Debug)]
pub struct Targets {
    /// Caption files, folders (searched recursively) or quoted glob patterns such as 'data/**/*.txt'.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Extension of caption files when searching folders (leading dot optional).
    #[arg(long, value_name = "EXT", default_value = ".txt")]
    caption_extension: String,
}

/// How tags are compared.
#[derive(Args, Debug)]
pub struct MatchArgs {
    /// Compare tags ignoring case (`Dog` is `dog`).
    #[arg(long)]
    ignore_case: bool,
    /// Compare tags treating `_` and space as equal (`long_hair` is `long hair`).
    #[arg(long)]
    underscores_as_spaces: bool,
}

/// Options of every editing command.
#[derive(Args, Debug)]
pub struct EditArgs {
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    matching: MatchArgs,
    /// Show what would change (a diff per file) without writing anything.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Treat natural-language captions as tags too (split on commas).
    #[arg(long)]
    force_tags: bool,
}

/// `lorakit tags stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    matching: MatchArgs,
    /// One table per folder holding caption files.
    #[arg(long)]
    per_folder: bool,
    /// Show only the N most frequent tags.
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `lorakit tags add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Tags to add, comma-separated ("sks, 1girl").
    #[arg(value_name = "TAGS")]
    tags: String,
    #[command(flatten)]
    edit: EditArgs,
    /// Where: start, end, or a 0-based position (natural-language captions: start or end only).
    #[arg(long, value_name = "start|end|N", default_value = "start", value_parser = parse_position)]
    at: AddPosition,
    /// Add a tag even when the caption already has it.
    #[arg(long)]
    allow_duplicates: bool,
}

/// `lorakit tags remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// Tags to remove, comma-separated; with --regex, one pattern that must match a whole tag.
    #[arg(value_name = "TAGS")]
    tags: String,
    #[command(flatten)]
    edit: EditArgs,
    /// TAGS is a regular expression (e.g. '.*_background').
    #[arg(long)]
    regex: bool,
}

/// `lorakit tags replace`.
#[derive(Args, Debug)]
pub struct ReplaceArgs {
    /// The tag to replace; with --regex, a pattern searched inside each tag.
    #[arg(value_name = "OLD")]
    old: String,
    /// The replacement (may hold several comma-separated tags; empty removes; $1 refers to a --regex group).
    #[arg(value_name = "NEW")]
    new: String,
    #[command(flatten)]
    edit: EditArgs,
    /// OLD is a regular expression.
    #[arg(long)]
    regex: bool,
}

/// `lorakit tags move-to-front`.
#[derive(Args, Debug)]
pub struct MoveToFrontArgs {
    /// Tags (trigger words) to put first, comma-separated, in this order.
    #[arg(value_name = "TAGS")]
    tags: String,
    #[command(flatten)]
    edit: EditArgs,
    /// Add the tags to captions that lack them (otherwise those are left alone).
    #[arg(long)]
    add_missing: bool,
}

/// `lorakit tags dedupe`.
#[derive(Args, Debug)]
pub struct DedupeArgs {
    #[command(flatten)]
    edit: EditArgs,
}

/// `lorakit tags sort`.
#[derive(Args, Debug)]
pub struct SortArgs {
    #[command(flatten)]
    edit: EditArgs,
    /// Leave the first N tags (trigger words) where they are.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_first: usize,
    /// Most frequent tags (across the selected files) first, ties alphabetical.
    #[arg(long)]
    by_frequency: bool,
}

/// `lorakit tags strip`.
#[derive(Args, Debug)]
pub struct StripArgs {
    #[command(flatten)]
    edit: EditArgs,
    /// Also turn underscores into spaces (long_hair → long hair), leaving emoticons like ^_^ alone.
    #[arg(long)]
    underscores: bool,
}

fn parse_position(text: &str) -> Result<AddPosition, String> {
    match text {
        "start" => Ok(AddPosition::Start),
        "end" => Ok(AddPosition::End),
        n => n.parse().map(AddPosition::Index).map_err(|_| format!("expected start, end or a number, got '{n}'")),
    }
}

/// Runs a tags command. Exit code 1 when some file could not be read or written.
pub fn run(cmd: TagsCommand) -> anyhow::Result<ExitCode> {
    let (edit, args) = match cmd {
        TagsCommand::Stats(args) => return run_stats(args),
        TagsCommand::Add(a) => (TagEdit::add(vec![a.tags], a.at, a.allow_duplicates), a.edit),
        TagsCommand::Remove(a) if a.regex => (TagEdit::remove_matching(&a.tags, a.edit.matching.ignore_case)?, a.edit),
        TagsCommand::Remove(a) => (TagEdit::remove(vec![a.tags]), a.edit),
        TagsCommand::Replace(a) if a.regex => {
            (TagEdit::replace_regex(&a.old, &a.new, a.edit.matching.ignore_case)?, a.edit)
        }
        TagsCommand::Replace(a) => (TagEdit::replace(&a.old, &a.new, a.edit.matching.ignore_case)?, a.edit),
        TagsCommand::MoveToFront(a) => (TagEdit::move_to_front(vec![a.tags], a.add_missing), a.edit),
        TagsCommand::Dedupe(a) => (TagEdit::dedupe(), a.edit),
        TagsCommand::Sort(a) => {
            let order = if a.by_frequency { SortOrder::ByFrequency } else { SortOrder::Alphabetical };
            (TagEdit::sort(order, a.keep_first), a.edit)
        }
        TagsCommand::Strip(a) => (TagEdit::strip(a.underscores), a.edit),
    };
    run_edit(&edit, &args)
}

fn matching(args: &MatchArgs) -> TagMatching {
    TagMatching { ignore_case: args.ignore_case, underscores_as_spaces: args.underscores_as_spaces }
}

fn select(targets: &Targets) -> anyhow::Result<Vec<PathBuf>> {
    let files = select_caption_files(&targets.paths, &targets.caption_extension)?;
    if files.is_empty() {
        eprintln!("warning: no caption files ending in {} found", targets.caption_extension);
    }
    Ok(files)
}

/// `-v` (debug logging) also lists changed and skipped files.
fn verbose() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

fn run_edit(edit: &TagEdit, args: &EditArgs) -> anyhow::Result<ExitCode> {
    let files = select(&args.targets)?;
    let options = EditOptions { matching: matching(&args.matching), force_tags: args.force_tags };
    let plan = plan_edit(&files, edit, &options);
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for file in &plan.files {
        if let FileOutcome::Failed(message) = &file.outcome {
            eprintln!("warning: {}: {message}", file.path.display());
            failed = true;
        }
    }
    if args.dry_run {
        print_diff(&mut out, &plan)?;
    } else {
        let failures = plan.write();
        for failure in &failures {
            eprintln!("error: {}: not written: {}", failure.path.display(), failure.message);
        }
        failed |= !failures.is_empty();
        let not_written: std::collections::HashSet<&PathBuf> = failures.iter().map(|f| &f.path).collect();
        print_written(&mut out, &plan, &not_written)?;
    }
    out.flush()?;
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn print_diff(out: &mut impl Write, plan: &EditPlan) -> anyhow::Result<()> {
    for file in &plan.files {
        match &file.outcome {
            FileOutcome::Change(change) => {
                writeln!(out, "{}:", file.path.display())?;
                writeln!(out, "- {}", escape_controls(&change.old_line))?;
                writeln!(out, "+ {}", escape_controls(&change.new_line))?;
                if !change.converted.is_empty() {
                    writeln!(out, "  (will be saved as UTF-8 without byte-order mark)")?;
                }
            }
            FileOutcome::SkippedNaturalLanguage => {
                writeln!(out, "skipped (natural language): {}", file.path.display())?;
            }
            FileOutcome::Unchanged | FileOutcome::Failed(_) => {}
        }
    }
    writeln!(out, "{}", summary_line(plan, "would change", 0))?;
    Ok(())
}

/// `N files <verb>, M unchanged, K skipped (natural language)[, F failed][, W not written]`,
/// where the changed count holds only files that were (or, in a dry run, would be) written.
fn summary_line(plan: &EditPlan, verb: &str, not_written: usize) -> String {
    let c = plan.counts();
    format!(
        "{} {verb}, {} unchanged, {} skipped (natural language){}{}",
        files(c.changed - not_written),
        c.unchanged,
        c.skipped_natural_language,
        failed_suffix(c.failed),
        if not_written == 0 { String::new() } else { format!(", {not_written} not written (see the errors above)") }
    )
}

/// What a real run did: the files written (always listed when some write failed, so nothing
/// is claimed that did not happen; otherwise with `-v`), then the summary.
fn print_written(
    out: &mut impl Write,
    plan: &EditPlan,
    not_written: &std::collections::HashSet<&PathBuf>,
) -> anyhow::Result<()> {
    if verbose() || !not_written.is_empty() {
        for file in &plan.files {
            match &file.outcome {
                FileOutcome::Change(_) if not_written.contains(&file.path) => {}
                FileOutcome::Change(_) => writeln!(out, "changed: {}", file.path.display())?,
                FileOutcome::SkippedNaturalLanguage if verbose() => {
                    writeln!(out, "skipped (natural language): {}", file.path.display())?
                }
                _ => {}
            }
        }
    }
    writeln!(out, "{}", summary_line(plan, "changed", not_written.len()))?;
    Ok(())
}

fn files(n: usize) -> String {
    format!("{n} file{}", if n == 1 { "" } else { "s" })
}

fn failed_suffix(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} failed")
    }
}

fn run_stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let files = select(&args.targets)?;
    let matching = matching(&args.matching);
    let mut total = tag_stats(&files, &matching);
    let mut folders = if args.per_folder { tag_stats_per_folder(&files, &matching) } else { Vec::new() };
    if let Some(top) = args.top {
        total.tags.truncate(top);
        for folder in &mut folders {
            folder.stats.tags.truncate(top);
        }
    }
    for (path, message) in &total.unreadable {
        eprintln!("warning: {}: {message}", path.display());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut json = serde_json::to_value(&total).context("serializing statistics")?;
        if args.per_folder {
            json["folders"] = serde_json::to_value(&folders).context("serializing statistics")?;
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else if args.per_folder {
        for folder in &folders {
            writeln!(out, "{}:", folder.folder.display())?;
            print_table(&mut out, &folder.stats)?;
            writeln!(out)?;
        }
        writeln!(out, "all folders:")?;
        print_table(&mut out, &total)?;
    } else {
        print_table(&mut out, &total)?;
    }
    out.flush()?;
    Ok(if total.unreadable.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_table(out: &mut impl Write, stats: &TagStats) -> anyhow::Result<()> {
    writeln!(
        out,
        "{}: {} tag captions ({} empty), {} natural language{}",
        files(stats.files),
        stats.tag_files,
        stats.empty,
        stats.natural_language,
        if stats.unreadable.is_empty() { String::new() } else { format!(", {} unreadable", stats.unreadable.len()) }
    )?;
    let width = stats.tags.iter().map(|t| t.count.to_string().len()).max().unwrap_or(1);
    for tag in &stats.tags {
        writeln!(out, "{:>width$}  {:>5.1}%  {}", tag.count, tag.percent, escape_controls(&tag.tag))?;
    }
    Ok(())
}
