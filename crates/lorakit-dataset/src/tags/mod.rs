//! Tag captions: parsing, statistics and bulk editing (what TagGUI does, for a
//! whole folder tree at once).
//!
//! A caption file's first line holds comma-separated booru-style tags; that is
//! the only line sd-scripts reads, so every operation here acts on it and keeps
//! any further lines byte for byte. The pieces:
//!
//! - [`select`]: which files to work on (folders walked recursively, globs).
//! - [`caption_line`]: splitting a caption into its first line, its tags and the rest.
//! - [`natural_language`]: telling sentence captions from tag captions.
//! - [`matching`]: when two tags count as the same tag.
//! - [`edit`]: the operations (add, remove, replace, move to front, dedupe, sort, strip) on one line.
//! - [`plan`]: an edit over many files: what would change (dry run), then atomic writes.
//! - [`stats`]: tag frequency tables.

pub mod caption_line;
pub mod edit;
pub mod matching;
pub mod natural_language;
pub mod plan;
pub mod select;
pub mod stats;

pub use edit::{AddPosition, EditOptions, LineOutcome, SortOrder, TagEdit};
pub use matching::TagMatching;
pub use natural_language::is_natural_language;
pub use plan::{plan_edit, CaptionChange, EditCounts, EditPlan, FileEdit, FileOutcome, WriteFailure};
pub use select::select_caption_files;
pub use stats::{tag_stats, tag_stats_per_folder, FolderTagStats, TagCount, TagStats};

use std::path::PathBuf;

/// Why a tags command could not start (the underlying error, if any, is the
/// [`std::error::Error::source`]). Problems with single files are not
/// errors: they are reported per file so the other files still get done.
#[derive(Debug, thiserror::Error)]
pub enum TagsError {
    /// A path argument that is neither an existing file or folder nor a glob pattern.
    #[error("{}: no such file or folder", .0.display())]
    NotFound(PathBuf),
    /// A glob pattern that matched no file (most often a typo).
    #[error("glob pattern '{0}' matched no files")]
    NoMatches(String),
    /// A glob pattern globset cannot parse.
    #[error("invalid glob pattern '{pattern}'")]
    InvalidGlob {
        /// The pattern as given.
        pattern: String,
        /// What globset said.
        source: globset::Error,
    },
    /// A regular expression the regex crate cannot parse.
    #[error("invalid regular expression '{pattern}'")]
    InvalidRegex {
        /// The pattern as given.
        pattern: String,
        /// What the regex crate said.
        source: regex::Error,
    },
    /// A folder that could not be listed.
    #[error("cannot read {}", path.display())]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}
