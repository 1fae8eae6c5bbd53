//! Which tags a caption gets, as kohya's `tag_images_by_wd14_tagger.py` (@48d368f) picks them
//! for SmilingWolf's format, with the same option names and defaults:
//!
//! - a general tag is kept when `p >= general_threshold`, a character tag when `p >=
//!   character_threshold` (both default to `thresh`, 0.35); compared in f32 as numpy 2 does;
//! - order: general tags in CSV order, then character tags; `character_tags_first` inserts each
//!   character tag at the front, so several come out in reverse CSV order (kohya's quirk, kept);
//! - `use_rating_tags` / `use_rating_tags_as_last_tag`: the argmax of the four ratings, first / last;
//! - `always_first_tags` moves each listed tag to the front in turn: the last listed ends first;
//! - names: `character_tag_expand` (`name_(series)` → `name<sep>series`), then
//!   `remove_underscore` (only names longer than 3 characters, so `^_^` stays), then
//!   `tag_replacement` (`a,b;c,d`, `\,` `\;` escapes) — which kohya @48d368f parses but never
//!   applies (its loop rebinds the list); lorakit applies it as documented (and as 26db64be did);
//! - `undesired_tags` / `always_first_tags` are split on the stripped separator and compared
//!   after the renames; lorakit also trims spaces around `always_first_tags` entries (kohya keeps
//!   them, so `"1girl, 1boy"` never matches ` 1boy` there).
//!
//! Additions: `mcut` (the official Space's MCut threshold per category, character floored at
//! 0.15) and `max_tags` (the most probable N general + character tags, kohya's order kept).

use std::collections::HashMap;

use super::tags::{Category, Tags};

/// kohya's options (and lorakit's two additions).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `--thresh` (0.35).
    pub thresh: f32,
    /// `--general_threshold` (default `thresh`).
    pub general_threshold: Option<f32>,
    /// `--character_threshold` (default `thresh`).
    pub character_threshold: Option<f32>,
    /// `--character_tags_first`.
    pub character_tags_first: bool,
    /// `--use_rating_tags`.
    pub use_rating_tags: bool,
    /// `--use_rating_tags_as_last_tag`.
    pub use_rating_tags_as_last_tag: bool,
    /// `--remove_underscore`.
    pub remove_underscore: bool,
    /// `--undesired_tags` (separator-separated).
    pub undesired_tags: String,
    /// `--always_first_tags` (separator-separated).
    pub always_first_tags: Option<String>,
    /// `--caption_separator` (", ").
    pub caption_separator: String,
    /// `--tag_replacement` (`source,target;source,target`).
    pub tag_replacement: Option<String>,
    /// `--character_tag_expand`.
    pub character_tag_expand: bool,
    /// MCut threshold for general tags instead of `general_threshold`.
    pub mcut_general: bool,
    /// MCut threshold (at least 0.15) for character tags instead of `character_threshold`.
    pub mcut_character: bool,
    /// At most this many general + character tags (the most probable).
    pub max_tags: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            thresh: 0.35,
            general_threshold: None,
            character_threshold: None,
            character_tags_first: false,
            use_rating_tags: false,
            use_rating_tags_as_last_tag: false,
            remove_underscore: false,
            undesired_tags: String::new(),
            always_first_tags: None,
            caption_separator: ", ".into(),
            tag_replacement: None,
            character_tag_expand: false,
            mcut_general: false,
            mcut_character: false,
            max_tags: None,
        }
    }
}

/// How many captions each tag went into (kohya's `--frequency_tags`), in first-seen order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frequency {
    counts: Vec<(String, usize)>,
    index: HashMap<String, usize>,
}

impl Frequency {
    fn add(&mut self, tag: &str) {
        match self.index.get(tag) {
            Some(&i) => self.counts[i].1 += 1,
            None => {
                self.index.insert(tag.to_string(), self.counts.len());
                self.counts.push((tag.to_string(), 1));
            }
        }
    }

    /// Most frequent first; ties in first-seen order (Python's stable sort of kohya's dict).
    pub fn sorted(&self) -> Vec<(String, usize)> {
        let mut v = self.counts.clone();
        v.sort_by_key(|t| std::cmp::Reverse(t.1));
        v
    }

    /// kohya's printout: `Tag frequencies:` then `tag: count` lines.
    pub fn render(&self) -> String {
        let mut s = String::from("Tag frequencies:\n");
        for (tag, n) in self.sorted() {
            s.push_str(&format!("{tag}: {n}\n"));
        }
        s
    }
}

/// The tag selection for one tag list and option set.
#[derive(Debug, Clone)]
pub struct Selector {
    options: Options,
    /// Output name per CSV row, after expand / underscore / replacement.
    names: Vec<String>,
    categories: Vec<Category>,
    undesired: Vec<String>,
    always_first: Vec<String>,
}

/// The MCut threshold (Largeron et al. 2012) as the WD Space computes it: the midpoint of the
/// largest gap between neighbouring sorted probabilities.
pub fn mcut_threshold(probs: &[f32]) -> f32 {
    let mut sorted = probs.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    if sorted.len() < 2 {
        return sorted.first().copied().unwrap_or(0.0);
    }
    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
    for i in 0..sorted.len() - 1 {
        let gap = sorted[i] - sorted[i + 1];
        if gap > best {
            best = gap;
            at = i;
        }
    }
    (sorted[at] + sorted[at + 1]) / 2.0
}

/// kohya's `--tag_replacement` pairs: `;`-separated `source,target`, with `\,` and `\;`.
pub fn parse_replacements(arg: &str) -> Result<Vec<(String, String)>, String> {
    let escaped = arg.replace("\\,", "\u{0}").replace("\\;", "\u{1}");
    escaped
        .split(';')
        .map(|pair| {
            let parts: Vec<&str> = pair.split(',').collect();
            let [source, target] = parts[..] else {
                return Err(format!("--tag-replacement {arg:?}: each entry must be `source,target` (escape a comma as \\, and a semicolon as \\;)"));
            };
            let unescape = |s: &str| s.replace('\u{0}', ",").replace('\u{1}', ";");
            Ok((unescape(source), unescape(target)))
        })
        .collect()
}

impl Selector {
    /// Prepares the names and lists; a malformed `tag_replacement` is an error.
    pub fn new(tags: &Tags, options: Options) -> Result<Self, String> {
        let sep = options.caption_separator.clone();
        let replacements = options.tag_replacement.as_deref().map(parse_replacements).transpose()?.unwrap_or_default();
        let mut names: Vec<String> = tags
            .rows
            .iter()
            .map(|t| {
                let mut name = t.name.clone();
                if options.character_tag_expand && t.category == Category::Character && name.ends_with(')') {
                    // kohya's expand_character_tags: split on the last "(".
                    let (character, series) = name.rsplit_once('(').unwrap_or(("", &name));
                    let character = character.strip_suffix('_').unwrap_or(character);
                    name = format!("{character}{sep}{}", series.replace(')', ""));
                }
                if options.remove_underscore && name.chars().count() > 3 {
                    name = name.replace('_', " ");
                }
                name
            })
            .collect();
        // kohya replaces the first occurrence per category list.
        for (source, target) in &replacements {
            for category in [Category::Rating, Category::General, Category::Character] {
                if let Some(i) = (0..names.len()).find(|&i| tags.rows[i].category == category && &names[i] == source) {
                    names[i] = target.clone();
                }
            }
        }
        let stripped = options.caption_separator.trim().to_string();
        let split = |s: &str| -> Vec<String> {
            if stripped.is_empty() {
                return vec![s.trim().to_string()].into_iter().filter(|t| !t.is_empty()).collect();
            }
            s.split(stripped.as_str()).map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect()
        };
        let undesired = split(&options.undesired_tags);
        let always_first = options.always_first_tags.as_deref().map(split).unwrap_or_default();
        Ok(Selector {
            names,
            categories: tags.rows.iter().map(|t| t.category).collect(),
            undesired,
            always_first,
            options,
        })
    }

    /// The caption's tags for one image's probabilities (one per CSV row), counting them in
    /// `frequency`.
    pub fn select(&self, probs: &[f32], frequency: &mut Frequency) -> Vec<String> {
        let o = &self.options;
        let of = |c: Category| -> Vec<f32> {
            probs.iter().zip(&self.categories).filter(|(_, k)| **k == c).map(|(p, _)| *p).collect()
        };
        let general_thr = if o.mcut_general {
            mcut_threshold(&of(Category::General))
        } else {
            o.general_threshold.unwrap_or(o.thresh)
        };
        let character_thr = if o.mcut_character {
            mcut_threshold(&of(Category::Character)).max(0.15)
        } else {
            o.character_threshold.unwrap_or(o.thresh)
        };
        let mut picked: Vec<usize> = (0..probs.len().min(self.names.len()))
            .filter(|&i| match self.categories[i] {
                Category::General => probs[i] >= general_thr,
                Category::Character => probs[i] >= character_thr,
                _ => false,
            })
            .filter(|&i| !self.undesired.contains(&self.names[i]))
            .collect();
        if let Some(max) = o.max_tags {
            let mut by_p = picked.clone();
            by_p.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            by_p.truncate(max);
            picked.retain(|i| by_p.contains(i));
        }
        // kohya walks general rows then character rows (CSV order within each).
        picked.sort_by_key(|&i| (self.categories[i] == Category::Character, i));
        let mut out: Vec<String> = Vec::new();
        for &i in &picked {
            let name = self.names[i].clone();
            frequency.add(&name);
            if self.categories[i] == Category::Character && o.character_tags_first {
                out.insert(0, name);
            } else {
                out.push(name);
            }
        }
        if o.use_rating_tags || o.use_rating_tags_as_last_tag {
            let ratings: Vec<usize> = (0..self.categories.len().min(probs.len()))
                .filter(|&i| self.categories[i] == Category::Rating)
                .collect();
            // numpy argmax: the first maximum.
            let mut best: Option<usize> = None;
            for &i in &ratings {
                if best.is_none_or(|b| probs[i] > probs[b]) {
                    best = Some(i);
                }
            }
            if let Some(b) = best {
                let name = self.names[b].clone();
                if !self.undesired.contains(&name) {
                    frequency.add(&name);
                    if o.use_rating_tags {
                        out.insert(0, name);
                    } else {
                        out.push(name);
                    }
                }
            }
        }
        for tag in &self.always_first {
            if let Some(pos) = out.iter().position(|t| t == tag) {
                let t = out.remove(pos);
                out.insert(0, t);
            }
        }
        out
    }

    /// The caption text: the tags joined with `caption_separator`.
    pub fn caption(&self, tags: &[String]) -> String {
        tags.join(&self.options.caption_separator)
    }
}
