//! The tag operations on one caption line.
//!
//! Tag captions are split into tags, edited as a list and joined with `, `;
//! a line whose tag list comes out the same is reported unchanged (its
//! spacing is not "fixed" behind the user's back, only `strip` does that).
//! Natural-language captions only get the text-safe operations (see
//! [`TagEdit::is_text_safe`]) unless [`EditOptions::force_tags`] is set.

use super::caption_line::{collapse_whitespace, join_tags, split_tags};
use super::matching::TagMatching;
use super::natural_language::is_natural_language;
use super::TagsError;
use regex::{Regex, RegexBuilder};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Where `add` puts new tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddPosition {
    /// Before the first tag (trigger words go here).
    Start,
    /// After the last tag.
    End,
    /// Before the tag at this 0-based index (past the end means at the end).
    Index(usize),
}

/// Order for `sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    /// A to Z, ignoring case (ties by exact spelling).
    Alphabetical,
    /// Most frequent first, counting the files of the selected set that carry
    /// each tag; ties alphabetical.
    ByFrequency,
}

/// Settings shared by every edit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EditOptions {
    /// When two tags are the same tag.
    pub matching: TagMatching,
    /// Treat natural-language captions as tags too (split on commas).
    pub force_tags: bool,
}

/// What an edit did to one caption line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    /// Nothing to do: the file must not be rewritten.
    Unchanged,
    /// The new first line.
    Changed(String),
    /// A natural-language caption and an operation that only makes sense for tags.
    SkippedNaturalLanguage,
}

/// One bulk operation, built with the constructors below.
#[derive(Debug, Clone)]
pub struct TagEdit {
    kind: EditKind,
}

#[derive(Debug, Clone)]
enum EditKind {
    Add { tags: Vec<String>, at: AddPosition, allow_duplicates: bool },
    Remove { tags: Vec<String> },
    RemoveMatching { whole_tag: Regex },
    Replace { old: String, new: String, in_text: Regex },
    ReplaceRegex { pattern: Regex, replacement: String },
    MoveToFront { tags: Vec<String>, add_missing: bool },
    Dedupe,
    Sort { order: SortOrder, keep_first: usize },
    Strip { underscores: bool },
}

impl TagEdit {
    /// Adds `tags` at `at`. Unless `allow_duplicates`, a tag the caption
    /// already has is not added again.
    pub fn add(tags: Vec<String>, at: AddPosition, allow_duplicates: bool) -> Self {
        Self::from(EditKind::Add { tags: clean_tags(tags), at, allow_duplicates })
    }

    /// Removes every tag that matches one of `tags`.
    pub fn remove(tags: Vec<String>) -> Self {
        Self::from(EditKind::Remove { tags: clean_tags(tags) })
    }

    /// Removes every tag that `pattern` matches as a whole: `.*_background`
    /// removes `white_background` but not `white_background_shadow`.
    pub fn remove_matching(pattern: &str, ignore_case: bool) -> Result<Self, TagsError> {
        compile(pattern, pattern, ignore_case)?; // errors must quote the pattern as given
        let whole_tag = compile(&format!("^(?:{pattern})$"), pattern, ignore_case)?;
        Ok(Self::from(EditKind::RemoveMatching { whole_tag }))
    }

    /// Replaces the tag `old` with `new` (which may hold several
    /// comma-separated tags, or be empty to remove the tag). In
    /// natural-language captions, replaces the text `old` wherever it occurs.
    pub fn replace(old: &str, new: &str, ignore_case: bool) -> Result<Self, TagsError> {
        let in_text = compile(&regex::escape(old), old, ignore_case)?;
        Ok(Self::from(EditKind::Replace { old: old.trim().to_owned(), new: new.to_owned(), in_text }))
    }

    /// Replaces every match of `pattern` inside each tag with `replacement`
    /// (`$1`, `${name}` refer to groups); a tag that becomes empty is removed.
    /// In natural-language captions the pattern runs over the whole line.
    pub fn replace_regex(pattern: &str, replacement: &str, ignore_case: bool) -> Result<Self, TagsError> {
        let compiled = compile(pattern, pattern, ignore_case)?;
        Ok(Self::from(EditKind::ReplaceRegex { pattern: compiled, replacement: replacement.to_owned() }))
    }

    /// Moves `tags` (trigger words) to the front, in the given order. A caption
    /// lacking one is left as is unless `add_missing`.
    pub fn move_to_front(tags: Vec<String>, add_missing: bool) -> Self {
        Self::from(EditKind::MoveToFront { tags: clean_tags(tags), add_missing })
    }

    /// Removes repeated tags, keeping the first occurrence.
    pub fn dedupe() -> Self {
        Self::from(EditKind::Dedupe)
    }

    /// Sorts the tags, leaving the first `keep_first` (trigger words) in place.
    pub fn sort(order: SortOrder, keep_first: usize) -> Self {
        Self::from(EditKind::Sort { order, keep_first })
    }

    /// Trims tags, collapses whitespace runs to one space and drops empty tags;
    /// with `underscores`, also turns `long_hair` into `long hair` (see
    /// [`underscores_to_spaces`] for the tags left alone).
    pub fn strip(underscores: bool) -> Self {
        Self::from(EditKind::Strip { underscores })
    }

    /// Whether the edit also applies to natural-language captions: adding at
    /// the start or end, replacing text, and whitespace-only `strip`.
    pub fn is_text_safe(&self) -> bool {
        match &self.kind {
            EditKind::Add { at, .. } => matches!(at, AddPosition::Start | AddPosition::End),
            EditKind::Replace { .. } | EditKind::ReplaceRegex { .. } => true,
            EditKind::Strip { underscores } => !underscores,
            _ => false,
        }
    }

    /// Applies the edit to one caption's first line. `sort` by frequency
    /// counts only this line here: use [`TagEdit::apply_to_lines`] for a set.
    pub fn apply_to_line(&self, line: &str, options: &EditOptions) -> LineOutcome {
        self.apply_with(line, options, &HashMap::new())
    }

    /// Applies the edit to the first lines of a set of captions, in order.
    /// `sort --by-frequency` counts tag frequencies across this set.
    pub fn apply_to_lines(&self, lines: &[&str], options: &EditOptions) -> Vec<LineOutcome> {
        let frequency = match self.kind {
            EditKind::Sort { order: SortOrder::ByFrequency, .. } => file_frequency(lines, options),
            _ => HashMap::new(),
        };
        lines.iter().map(|line| self.apply_with(line, options, &frequency)).collect()
    }

    fn apply_with(&self, line: &str, options: &EditOptions, frequency: &HashMap<String, usize>) -> LineOutcome {
        if !options.force_tags && is_natural_language(line) {
            if !self.is_text_safe() {
                return LineOutcome::SkippedNaturalLanguage;
            }
            return outcome_from_text(line, self.edit_text(line, &options.matching));
        }
        if let EditKind::Strip { underscores } = self.kind {
            return outcome_from_text(line, strip_line(line, underscores));
        }
        let before = split_tags(line);
        let after = self.edit_tags(before.clone(), &options.matching, frequency);
        if after == before {
            LineOutcome::Unchanged
        } else {
            LineOutcome::Changed(join_tags(&after))
        }
    }

    /// The text-safe form of the edit, for natural-language captions.
    fn edit_text(&self, line: &str, matching: &TagMatching) -> String {
        match &self.kind {
            EditKind::Add { tags, at, allow_duplicates } => {
                let present = split_tags(line);
                let mut new: Vec<String> = Vec::new();
                for tag in tags {
                    let seen = present.iter().chain(&new).any(|t| matching.same(t, tag));
                    if *allow_duplicates || !seen {
                        new.push(tag.clone());
                    }
                }
                if new.is_empty() {
                    return line.to_owned();
                }
                let added = join_tags(&new);
                match (line.trim().is_empty(), at) {
                    (true, _) => added,
                    (false, AddPosition::End) => format!("{}, {added}", line.trim_end()),
                    (false, _) => format!("{added}, {}", line.trim_start()),
                }
            }
            EditKind::Replace { new, in_text, .. } => in_text.replace_all(line, regex::NoExpand(new)).into_owned(),
            EditKind::ReplaceRegex { pattern, replacement } => {
                pattern.replace_all(line, replacement.as_str()).into_owned()
            }
            EditKind::Strip { .. } => collapse_whitespace(line),
            _ => line.to_owned(),
        }
    }

    /// The tag-list form of the edit.
    fn edit_tags(
        &self,
        mut tags: Vec<String>,
        matching: &TagMatching,
        frequency: &HashMap<String, usize>,
    ) -> Vec<String> {
        match &self.kind {
            EditKind::Add { tags: new, at, allow_duplicates } => {
                let mut added: Vec<String> = Vec::new();
                for tag in new {
                    let seen = tags.iter().chain(&added).any(|t| matching.same(t, tag));
                    if *allow_duplicates || !seen {
                        added.push(tag.clone());
                    }
                }
                let index = match at {
                    AddPosition::Start => 0,
                    AddPosition::End => tags.len(),
                    AddPosition::Index(i) => (*i).min(tags.len()),
                };
                tags.splice(index..index, added);
                tags
            }
            EditKind::Remove { tags: unwanted } => {
                tags.retain(|t| !unwanted.iter().any(|u| matching.same(t, u)));
                tags
            }
            EditKind::RemoveMatching { whole_tag } => {
                tags.retain(|t| !whole_tag.is_match(t));
                tags
            }
            EditKind::Replace { old, new, .. } => {
                tags.into_iter().flat_map(|t| if matching.same(&t, old) { split_tags(new) } else { vec![t] }).collect()
            }
            EditKind::ReplaceRegex { pattern, replacement } => {
                tags.into_iter().flat_map(|t| split_tags(&pattern.replace_all(&t, replacement.as_str()))).collect()
            }
            EditKind::MoveToFront { tags: wanted, add_missing } => {
                let mut front = Vec::new();
                for want in wanted {
                    if let Some(i) = tags.iter().position(|t| matching.same(t, want)) {
                        front.push(tags.remove(i));
                    } else if *add_missing {
                        front.push(want.clone());
                    }
                }
                front.extend(tags);
                front
            }
            EditKind::Dedupe => {
                let mut seen = std::collections::HashSet::new();
                tags.retain(|t| seen.insert(matching.key(t)));
                tags
            }
            EditKind::Sort { order, keep_first } => {
                let keep = (*keep_first).min(tags.len());
                let rest = &mut tags[keep..];
                match order {
                    SortOrder::Alphabetical => rest.sort_by(|a, b| alphabetical(a, b)),
                    SortOrder::ByFrequency => rest.sort_by(|a, b| {
                        let count = |t: &String| frequency.get(&matching.key(t)).copied().unwrap_or(0);
                        count(b).cmp(&count(a)).then_with(|| alphabetical(a, b))
                    }),
                }
                tags
            }
            EditKind::Strip { .. } => tags,
        }
    }
}

impl From<EditKind> for TagEdit {
    fn from(kind: EditKind) -> Self {
        Self { kind }
    }
}

/// Turns `long_hair` into `long hair`, leaving emoticon-like tags alone: a tag
/// keeps its underscores when it has 3 characters or fewer (`^_^`, `o_o`,
/// `>_<`, the rule of sd-scripts' WD14 tagger `--remove_underscore`) or has no
/// letter at all (`^_^;`).
pub fn underscores_to_spaces(tag: &str) -> String {
    let emoticon_like = tag.chars().count() <= 3 || !tag.chars().any(char::is_alphabetic);
    if emoticon_like {
        tag.to_owned()
    } else {
        collapse_whitespace(&tag.replace('_', " "))
    }
}

fn strip_line(line: &str, underscores: bool) -> String {
    let tags: Vec<String> = line
        .split(',')
        .map(collapse_whitespace)
        .map(|t| if underscores { underscores_to_spaces(&t) } else { t })
        .filter(|t| !t.is_empty())
        .collect();
    join_tags(&tags)
}

fn outcome_from_text(before: &str, after: String) -> LineOutcome {
    if after == before {
        LineOutcome::Unchanged
    } else {
        LineOutcome::Changed(after)
    }
}

fn alphabetical(a: &str, b: &str) -> Ordering {
    a.to_lowercase().cmp(&b.to_lowercase()).then_with(|| a.cmp(b))
}

fn clean_tags(tags: Vec<String>) -> Vec<String> {
    tags.iter().flat_map(|t| split_tags(t)).collect()
}

fn compile(source: &str, shown: &str, ignore_case: bool) -> Result<Regex, TagsError> {
    RegexBuilder::new(source)
        .case_insensitive(ignore_case)
        .build()
        .map_err(|source| TagsError::InvalidRegex { pattern: shown.to_owned(), source })
}

/// How many of the tag captions in `lines` carry each tag (by matching key).
fn file_frequency(lines: &[&str], options: &EditOptions) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        if !options.force_tags && is_natural_language(line) {
            continue;
        }
        let keys: std::collections::HashSet<String> =
            split_tags(line).iter().map(|t| options.matching.key(t)).collect();
        for key in keys {
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}
