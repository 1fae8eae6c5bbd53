//! Writing captions, the same way for every captioner.
//!
//! - An existing caption is **kept** unless asked otherwise ([`Existing::Skip`], so a run that
//!   stopped half-way picks up where it was and nothing a user wrote is lost); `Overwrite`
//!   replaces it, `Append` keeps it first and adds what is new (kohya's `--append_tags`: for
//!   tags, the new tags not already there; for sentences, the new text after the old).
//! - The trigger word goes first (unless the caption already starts with it).
//! - `dry_run` writes nothing and reports what would be written.
//! - Files are written atomically (a crash leaves the old caption or the new one, never half of
//!   one), UTF-8, with a final newline as kohya writes them.

use std::path::PathBuf;

use crate::targets::Target;

/// What to do with a caption file that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Leave it, and do not caption the image (resumable runs; nothing overwritten).
    #[default]
    Skip,
    /// Replace it.
    Overwrite,
    /// Keep it first and add what the captioner found that it lacks.
    Append,
}

/// How captions are made of parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Style {
    /// Tags joined by `separator` (kohya's `--caption_separator`, `", "` by default).
    Tags {
        /// Between tags.
        separator: String,
    },
    /// Natural-language text.
    Text,
}

/// How a run writes its captions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// What to do with existing captions.
    pub existing: Existing,
    /// Put first in every caption (the LoRA's trigger word).
    pub trigger: Option<String>,
    /// Tags or text.
    pub style: Style,
    /// Write nothing; report what would be written.
    pub dry_run: bool,
}

/// Whether an image is captioned at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Caption it; `existing` is the caption to append to.
    Caption {
        /// The current caption (only with [`Existing::Append`]).
        existing: Option<String>,
    },
    /// Leave it, with the reason.
    Skip(String),
}

/// What happened to one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The caption was written.
    Written(String),
    /// `dry_run`: this caption would be written.
    WouldWrite(String),
    /// Not captioned, with the reason.
    Skipped(String),
    /// Captioning or writing failed, with the reason.
    Failed(String),
}

/// Decides, before any model runs, whether `target` is captioned.
pub fn plan(target: &Target, options: &WriteOptions) -> Plan {
    let exists = target.caption.exists();
    match (exists, options.existing) {
        (false, _) => Plan::Caption { existing: None },
        (true, Existing::Skip) => {
            Plan::Skip("it has a caption already (--overwrite replaces it, --append adds to it)".into())
        }
        (true, Existing::Overwrite) => Plan::Caption { existing: None },
        (true, Existing::Append) => match std::fs::read(&target.caption) {
            Ok(bytes) => {
                let text = lorakit_dataset::caption::decode_text(&bytes).text;
                Plan::Caption { existing: Some(text.lines().next().unwrap_or_default().trim().to_string()) }
            }
            Err(e) => Plan::Skip(format!("its caption {} cannot be read: {e}", target.caption.display())),
        },
    }
}

/// Which of `targets` are captioned (each with the caption to append to), and a summary that
/// already counts the ones left alone.
pub fn plan_all<'a>(targets: &'a [Target], options: &WriteOptions) -> (Vec<(&'a Target, Option<String>)>, Summary) {
    let mut summary = Summary::default();
    let mut todo = Vec::new();
    for target in targets {
        match plan(target, options) {
            Plan::Caption { existing } => todo.push((target, existing)),
            Plan::Skip(why) => summary.add(target.image.clone(), &Outcome::Skipped(why)),
        }
    }
    (todo, summary)
}

/// The caption to write: `new` after `existing` (when appending) with the trigger word first.
pub fn compose(new: &str, existing: Option<&str>, options: &WriteOptions) -> String {
    let new = new.trim();
    match &options.style {
        Style::Tags { separator } => {
            let sep = separator.trim();
            let split = |s: &str| -> Vec<String> {
                s.split(sep).map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
            };
            let mut tags = existing.map(split).unwrap_or_default();
            for tag in split(new) {
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            if let Some(trigger) = options.trigger.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                tags.retain(|t| t != trigger);
                tags.insert(0, trigger.to_string());
            }
            tags.join(separator)
        }
        Style::Text => {
            let mut text = match existing.map(str::trim).filter(|e| !e.is_empty()) {
                Some(old) if !new.is_empty() => format!("{old} {new}"),
                Some(old) => old.to_string(),
                None => new.to_string(),
            };
            if let Some(trigger) = options.trigger.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                if !text.starts_with(trigger) {
                    text = format!("{trigger}, {text}");
                }
            }
            text
        }
    }
}

/// Writes `caption` for `target` (atomically, with a final newline), or says what would be
/// written under `dry_run`.
pub fn write(target: &Target, caption: &str, options: &WriteOptions) -> Outcome {
    if options.dry_run {
        return Outcome::WouldWrite(caption.to_string());
    }
    let text = format!("{caption}\n");
    match lorakit_dataset::fs_atomic::write_atomic(&target.caption, text.as_bytes()) {
        Ok(()) => Outcome::Written(caption.to_string()),
        Err(e) => Outcome::Failed(format!("cannot write {}: {e}", target.caption.display())),
    }
}

/// A run's account: how many captions were written, which images were skipped or failed, and
/// why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Captions written (or, in a dry run, that would be).
    pub written: usize,
    /// Images left alone, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Images that failed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Whether nothing was written.
    pub dry_run: bool,
}

impl Summary {
    /// Counts `outcome` for `image`.
    pub fn add(&mut self, image: PathBuf, outcome: &Outcome) {
        match outcome {
            Outcome::Written(_) => self.written += 1,
            Outcome::WouldWrite(_) => {
                self.written += 1;
                self.dry_run = true;
            }
            Outcome::Skipped(why) => self.skipped.push((image, why.clone())),
            Outcome::Failed(why) => self.failed.push((image, why.clone())),
        }
    }

    /// The closing lines: counts, then each failure (and skips, up to `show_skipped`).
    pub fn render(&self, show_skipped: usize) -> String {
        let verb = if self.dry_run { "would be written" } else { "written" };
        let mut out =
            format!("{} captions {verb}, {} skipped, {} failed\n", self.written, self.skipped.len(), self.failed.len());
        for (image, why) in &self.failed {
            out.push_str(&format!("failed: {}: {why}\n", image.display()));
        }
        for (image, why) in self.skipped.iter().take(show_skipped) {
            out.push_str(&format!("skipped: {}: {why}\n", image.display()));
        }
        if self.skipped.len() > show_skipped {
            out.push_str(&format!("… and {} more skipped\n", self.skipped.len() - show_skipped));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(existing: Existing, trigger: Option<&str>) -> WriteOptions {
        WriteOptions {
            existing,
            trigger: trigger.map(String::from),
            style: Style::Tags { separator: ", ".into() },
            dry_run: false,
        }
    }

    #[test]
    fn appended_tags_keep_the_old_ones_first_and_add_only_new_ones() {
        let o = tags(Existing::Append, None);
        assert_eq!(compose("1girl, solo, smile", Some("solo, red hair"), &o), "solo, red hair, 1girl, smile");
        assert_eq!(compose("a, b", None, &o), "a, b");
    }

    #[test]
    fn the_trigger_word_comes_first_once() {
        let o = tags(Existing::Overwrite, Some("lkstar"));
        assert_eq!(compose("1girl, lkstar, solo", None, &o), "lkstar, 1girl, solo");
        let text = WriteOptions { style: Style::Text, ..o };
        assert_eq!(compose("A star on a table.", None, &text), "lkstar, A star on a table.");
        assert_eq!(compose("lkstar on a table.", None, &text), "lkstar on a table.");
        assert_eq!(compose("More.", Some("Old text."), &text), "lkstar, Old text. More.");
    }

    #[test]
    fn existing_captions_are_skipped_unless_asked_and_writes_are_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target { image: dir.path().join("a.png"), caption: dir.path().join("a.txt") };
        let skip = tags(Existing::Skip, None);
        assert_eq!(plan(&target, &skip), Plan::Caption { existing: None });
        assert_eq!(write(&target, "x, y", &skip), Outcome::Written("x, y".into()));
        assert_eq!(std::fs::read_to_string(&target.caption).unwrap(), "x, y\n");
        assert!(matches!(plan(&target, &skip), Plan::Skip(_)));
        let append = tags(Existing::Append, None);
        assert_eq!(plan(&target, &append), Plan::Caption { existing: Some("x, y".into()) });
        let dry = WriteOptions { dry_run: true, ..tags(Existing::Overwrite, None) };
        assert_eq!(write(&target, "z", &dry), Outcome::WouldWrite("z".into()));
        assert_eq!(std::fs::read_to_string(&target.caption).unwrap(), "x, y\n", "a dry run writes nothing");
        let mut summary = Summary::default();
        summary.add(target.image.clone(), &Outcome::WouldWrite("z".into()));
        summary.add(target.image.clone(), &Outcome::Failed("boom".into()));
        assert!(summary.render(5).starts_with("1 captions would be written, 0 skipped, 1 failed\nfailed: "));
    }
}
