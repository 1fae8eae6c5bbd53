//! An edit over many caption files: first a plan (what each file would
//! become, which is all a dry run shows), then atomic writes of exactly the
//! files that change.
//!
//! Rewriting rules:
//! - only the first line is edited; the line breaks and any further lines are
//!   kept byte for byte, so a CRLF file stays CRLF and a file without a final
//!   newline gets none;
//! - the output is UTF-8 without a byte-order mark: a file with a BOM, or in
//!   UTF-16, is converted, but only when its first line changes;
//! - a file whose first line does not change is never written;
//! - files that are not valid UTF-8 are never rewritten (their bytes would be lost);
//! - a symlinked caption file is written through the link (the link stays).

use super::caption_line::split_first_line;
use super::edit::{EditOptions, LineOutcome, TagEdit};
use crate::caption::{decode_text, TextNote};
use crate::fs_atomic::write_atomic;
use std::path::{Path, PathBuf};

/// What an edit would do to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEdit {
    /// The caption file as selected.
    pub path: PathBuf,
    /// What happens to it.
    pub outcome: FileOutcome,
}

/// The fate of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// The first line changes; the file will be rewritten.
    Change(CaptionChange),
    /// Nothing to do; the file is not touched.
    Unchanged,
    /// A natural-language caption and a tags-only operation.
    SkippedNaturalLanguage,
    /// The file could not be read or must not be rewritten; the message says why.
    Failed(String),
}

/// A planned rewrite of one caption file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionChange {
    /// The first line before.
    pub old_line: String,
    /// The first line after.
    pub new_line: String,
    /// Encoding details the rewrite drops (a BOM, UTF-16): the new file is plain UTF-8.
    pub converted: Vec<TextNote>,
    /// The complete new file.
    pub new_bytes: Vec<u8>,
    original_bytes: Vec<u8>,
}

impl CaptionChange {
    /// The file's bytes when it was read (what an undo writes back).
    pub fn original_bytes(&self) -> &[u8] {
        &self.original_bytes
    }
}

/// Tally of a plan, for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EditCounts {
    /// Files that change.
    pub changed: usize,
    /// Files left as they are.
    pub unchanged: usize,
    /// Natural-language captions skipped.
    pub skipped_natural_language: usize,
    /// Files that could not be handled.
    pub failed: usize,
}

/// A file whose planned rewrite failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// The caption file.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// The outcome of an edit for every selected file, in selection order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditPlan {
    /// One entry per file.
    pub files: Vec<FileEdit>,
}

/// Reads every file and works out what `edit` would do to it. Nothing is written.
pub fn plan_edit(files: &[PathBuf], edit: &TagEdit, options: &EditOptions) -> EditPlan {
    let read: Vec<Result<ReadCaption, String>> = files.iter().map(|p| read_caption(p)).collect();
    let lines: Vec<&str> = read.iter().filter_map(|r| r.as_ref().ok()).map(|c| c.first_line()).collect();
    let mut outcomes = edit.apply_to_lines(&lines, options).into_iter();
    let files = files
        .iter()
        .zip(read)
        .map(|(path, caption)| {
            let outcome = match caption {
                Err(message) => FileOutcome::Failed(message),
                Ok(caption) => match outcomes.next().expect("one outcome per readable file") {
                    LineOutcome::Unchanged => FileOutcome::Unchanged,
                    LineOutcome::SkippedNaturalLanguage => FileOutcome::SkippedNaturalLanguage,
                    LineOutcome::Changed(new_line) => caption.rewrite(new_line),
                },
            };
            FileEdit { path: path.clone(), outcome }
        })
        .collect();
    EditPlan { files }
}

impl EditPlan {
    /// How many files change, stay, are skipped or failed.
    pub fn counts(&self) -> EditCounts {
        let mut counts = EditCounts::default();
        for file in &self.files {
            match file.outcome {
                FileOutcome::Change(_) => counts.changed += 1,
                FileOutcome::Unchanged => counts.unchanged += 1,
                FileOutcome::SkippedNaturalLanguage => counts.skipped_natural_language += 1,
                FileOutcome::Failed(_) => counts.failed += 1,
            }
        }
        counts
    }

    /// Writes every planned change atomically (temporary file + rename), keeping each file's
    /// permissions and owner. A file that changed on disk since it was planned is not
    /// overwritten. Returns the files that could not be written (each left exactly as it was);
    /// the other changes are done. Leftover temporary files of interrupted earlier runs are
    /// removed from the folders written to first (`fs_atomic::clean_stale_temp_files`).
    pub fn write(&self) -> Vec<WriteFailure> {
        let mut failures = Vec::new();
        let folders: std::collections::BTreeMap<PathBuf, PathBuf> = self
            .files
            .iter()
            .filter(|f| matches!(f.outcome, FileOutcome::Change(_)))
            .filter_map(|f| {
                let target = std::fs::canonicalize(&f.path).ok()?;
                Some((target.parent()?.to_path_buf(), target))
            })
            .collect();
        for target in folders.values() {
            crate::fs_atomic::clean_stale_temp_files_beside(target);
        }
        for file in &self.files {
            if let FileOutcome::Change(change) = &file.outcome {
                if let Err(message) = write_change(&file.path, change) {
                    failures.push(WriteFailure { path: file.path.clone(), message });
                }
            }
        }
        failures
    }
}

fn write_change(path: &Path, change: &CaptionChange) -> Result<(), String> {
    // Write through symlinks: replacing the link itself would leave its target stale.
    let target = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let current = crate::regular_file::read_regular(&target).map_err(|e| e.to_string())?;
    if current != change.original_bytes {
        return Err("changed on disk since it was read; not overwritten".to_owned());
    }
    write_atomic(&target, &change.new_bytes).map_err(|e| format!("{e}; the file is unchanged"))
}

struct ReadCaption {
    bytes: Vec<u8>,
    text: String,
    notes: Vec<TextNote>,
}

fn read_caption(path: &Path) -> Result<ReadCaption, String> {
    let bytes = crate::regular_file::read_regular(path).map_err(|e| e.to_string())?;
    let decoded = decode_text(&bytes);
    if decoded.notes.contains(&TextNote::InvalidUtf8) {
        return Err("not valid UTF-8 text; re-save it as UTF-8 (lorakit will not rewrite it and lose bytes)".into());
    }
    Ok(ReadCaption { bytes, text: decoded.text, notes: decoded.notes })
}

impl ReadCaption {
    fn first_line(&self) -> &str {
        split_first_line(&self.text).0
    }

    fn rewrite(self, new_line: String) -> FileOutcome {
        let (old_line, rest) = split_first_line(&self.text);
        let new_bytes = format!("{new_line}{rest}").into_bytes();
        if new_bytes == self.bytes {
            return FileOutcome::Unchanged;
        }
        let converted = self.notes.iter().filter(|n| matches!(n, TextNote::Bom | TextNote::Utf16)).cloned().collect();
        FileOutcome::Change(CaptionChange {
            old_line: old_line.to_owned(),
            new_line,
            converted,
            new_bytes,
            original_bytes: self.bytes,
        })
    }
}
