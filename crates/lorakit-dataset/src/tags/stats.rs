//! Tag frequency tables, for the whole selection or per folder.
//!
//! A tag's count is the number of caption files that carry it (a tag repeated
//! in one file counts once); its percentage is relative to the tag captions
//! (natural-language captions are counted apart and their words are not tags).

use super::caption_line::{split_first_line, split_tags};
use super::matching::TagMatching;
use super::natural_language::is_natural_language;
use crate::caption::decode_text;
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// One row of a frequency table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagCount {
    /// The tag, spelled as first seen.
    pub tag: String,
    /// Files that carry it.
    pub count: usize,
    /// `count` as a percentage of the tag captions, rounded to 0.1.
    pub percent: f64,
}

/// Statistics of a set of caption files.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TagStats {
    /// Caption files read.
    pub files: usize,
    /// Of those, tag captions (including empty ones): the base of the percentages.
    pub tag_files: usize,
    /// Of those, natural-language captions.
    pub natural_language: usize,
    /// Captions whose first line holds no tag.
    pub empty: usize,
    /// Files that could not be read, with the reason.
    #[serde(serialize_with = "serialize_failures")]
    pub unreadable: Vec<(PathBuf, String)>,
    /// Tags, most frequent first, ties alphabetical.
    pub tags: Vec<TagCount>,
}

/// The statistics of the caption files in one folder (not its subfolders).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FolderTagStats {
    /// The folder holding the caption files.
    #[serde(serialize_with = "serialize_path")]
    pub folder: PathBuf,
    /// Its statistics.
    #[serde(flatten)]
    pub stats: TagStats,
}

/// Statistics over all `files`; tags that `matching` considers the same are counted together.
pub fn tag_stats(files: &[PathBuf], matching: &TagMatching) -> TagStats {
    let mut tally = Tally::default();
    for path in files {
        tally.add(path, read_first_line(path), matching);
    }
    tally.finish()
}

/// Statistics grouped by the folder that holds each caption file, folders sorted by path.
pub fn tag_stats_per_folder(files: &[PathBuf], matching: &TagMatching) -> Vec<FolderTagStats> {
    let mut folders: BTreeMap<PathBuf, Tally> = BTreeMap::new();
    for path in files {
        let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
        folders.entry(folder).or_default().add(path, read_first_line(path), matching);
    }
    folders.into_iter().map(|(folder, tally)| FolderTagStats { folder, stats: tally.finish() }).collect()
}

fn read_first_line(path: &Path) -> Result<String, String> {
    let bytes = crate::regular_file::read_regular(path).map_err(|e| e.to_string())?;
    let text = decode_text(&bytes).text;
    Ok(split_first_line(&text).0.to_owned())
}

#[derive(Default)]
struct Tally {
    stats: TagStats,
    /// Matching key → (first spelling, files).
    counts: HashMap<String, (String, usize)>,
}

impl Tally {
    fn add(&mut self, path: &Path, line: Result<String, String>, matching: &TagMatching) {
        self.stats.files += 1;
        let line = match line {
            Ok(line) => line,
            Err(message) => {
                self.stats.unreadable.push((path.to_owned(), message));
                return;
            }
        };
        if is_natural_language(&line) {
            self.stats.natural_language += 1;
            return;
        }
        self.stats.tag_files += 1;
        let tags = split_tags(&line);
        if tags.is_empty() {
            self.stats.empty += 1;
        }
        let mut seen = HashSet::new();
        for tag in tags {
            let key = matching.key(&tag);
            if seen.insert(key.clone()) {
                self.counts.entry(key).or_insert_with(|| (tag, 0)).1 += 1;
            }
        }
    }

    fn finish(self) -> TagStats {
        let base = self.stats.tag_files.max(1) as f64;
        let mut tags: Vec<TagCount> = self
            .counts
            .into_values()
            .map(|(tag, count)| TagCount { tag, count, percent: (count as f64 * 1000.0 / base).round() / 10.0 })
            .collect();
        tags.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.tag.cmp(&b.tag)));
        TagStats { tags, ..self.stats }
    }
}

fn serialize_path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

fn serialize_failures<S: Serializer>(failures: &[(PathBuf, String)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(failures.len()))?;
    for (path, message) in failures {
        seq.serialize_element(&serde_json::json!({ "path": path.to_string_lossy(), "error": message }))?;
    }
    seq.end()
}
