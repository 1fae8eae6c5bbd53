//! Behaviour of `lorakit_dataset::tags`: every operation on caption lines, the
//! rewrite rules for files, target selection and statistics.

use lorakit_dataset::caption::TextNote;
use lorakit_dataset::tags::{
    edit::underscores_to_spaces, is_natural_language, plan_edit, select_caption_files, tag_stats, tag_stats_per_folder,
    AddPosition, EditOptions, FileOutcome, LineOutcome, SortOrder, TagEdit, TagMatching, TagsError,
};
use std::path::{Path, PathBuf};

fn opts() -> EditOptions {
    EditOptions::default()
}

fn ignore_case() -> EditOptions {
    EditOptions { matching: TagMatching { ignore_case: true, underscores_as_spaces: false }, force_tags: false }
}

fn tags(list: &str) -> Vec<String> {
    vec![list.to_owned()]
}

/// The new line, or the old one when unchanged; panics on a skip.
fn apply(edit: &TagEdit, line: &str, options: &EditOptions) -> String {
    match edit.apply_to_line(line, options) {
        LineOutcome::Changed(new) => new,
        LineOutcome::Unchanged => line.to_owned(),
        LineOutcome::SkippedNaturalLanguage => panic!("skipped {line:?}"),
    }
}

const PROSE: &str = "a photo of sks dog sitting on the grass";

// ---- natural language -------------------------------------------------------

#[test]
fn natural_language_heuristic() {
    assert!(is_natural_language(PROSE));
    assert!(is_natural_language("sks, a woman standing in a field"));
    assert!(is_natural_language("a dog sleeping."));
    assert!(is_natural_language("two dogs. they play"));
    assert!(!is_natural_language("1girl, solo, long hair, looking at viewer, smile"));
    assert!(!is_natural_language("st. louis (azur lane), ..., ?"));
    assert!(!is_natural_language(""));
}

// ---- add --------------------------------------------------------------------

#[test]
fn add_at_start_end_and_position() {
    let line = "dog, grass";
    assert_eq!(
        apply(&TagEdit::add(tags("sks, 1girl"), AddPosition::Start, false), line, &opts()),
        "sks, 1girl, dog, grass"
    );
    assert_eq!(apply(&TagEdit::add(tags("sky"), AddPosition::End, false), line, &opts()), "dog, grass, sky");
    assert_eq!(apply(&TagEdit::add(tags("sky"), AddPosition::Index(1), false), line, &opts()), "dog, sky, grass");
    assert_eq!(apply(&TagEdit::add(tags("sky"), AddPosition::Index(99), false), line, &opts()), "dog, grass, sky");
}

#[test]
fn add_skips_tags_already_present() {
    let add = TagEdit::add(tags("dog, sks"), AddPosition::Start, false);
    assert_eq!(apply(&add, "cat, dog", &opts()), "sks, cat, dog");
    assert_eq!(add.apply_to_line("sks, dog", &opts()), LineOutcome::Unchanged);
    // Case only matters without --ignore-case.
    assert_eq!(apply(&add, "SKS, dog", &opts()), "sks, SKS, dog");
    assert_eq!(add.apply_to_line("SKS, Dog", &ignore_case()), LineOutcome::Unchanged);
    let dup = TagEdit::add(tags("dog"), AddPosition::End, true);
    assert_eq!(apply(&dup, "dog", &opts()), "dog, dog");
}

#[test]
fn add_with_underscores_as_spaces() {
    let options =
        EditOptions { matching: TagMatching { ignore_case: false, underscores_as_spaces: true }, force_tags: false };
    let add = TagEdit::add(tags("long hair"), AddPosition::End, false);
    assert_eq!(add.apply_to_line("long_hair", &options), LineOutcome::Unchanged);
    assert_eq!(apply(&add, "long_hair", &opts()), "long_hair, long hair");
}

#[test]
fn add_to_natural_language_only_at_start_or_end() {
    let start = TagEdit::add(tags("sks"), AddPosition::Start, false);
    assert_eq!(apply(&start, PROSE, &opts()), format!("sks, {PROSE}"));
    let end = TagEdit::add(tags("sks"), AddPosition::End, false);
    assert_eq!(apply(&end, PROSE, &opts()), format!("{PROSE}, sks"));
    // Already there as a comma-separated segment: nothing to do.
    assert_eq!(start.apply_to_line(&format!("sks, {PROSE}"), &opts()), LineOutcome::Unchanged);
    let at = TagEdit::add(tags("sks"), AddPosition::Index(1), false);
    assert_eq!(at.apply_to_line(PROSE, &opts()), LineOutcome::SkippedNaturalLanguage);
}

#[test]
fn add_to_empty_caption() {
    let add = TagEdit::add(tags("sks"), AddPosition::Start, false);
    assert_eq!(apply(&add, "", &opts()), "sks");
}

// ---- remove -----------------------------------------------------------------

#[test]
fn remove_tags() {
    let remove = TagEdit::remove(tags("dog, grass"));
    assert_eq!(apply(&remove, "sks, dog, sky, grass, dog", &opts()), "sks, sky");
    assert_eq!(apply(&remove, "Dog, sky", &opts()), "Dog, sky");
    assert_eq!(apply(&remove, "Dog, sky", &ignore_case()), "sky");
}

#[test]
fn remove_absent_tag_leaves_the_line_alone_even_if_untidy() {
    let remove = TagEdit::remove(tags("zebra"));
    assert_eq!(remove.apply_to_line("a,b ,  c", &opts()), LineOutcome::Unchanged);
}

#[test]
fn remove_regex_matches_whole_tags() {
    let remove = TagEdit::remove_matching(".*_background", false).unwrap();
    assert_eq!(
        apply(&remove, "sks, white_background, white_background_shadow", &opts()),
        "sks, white_background_shadow"
    );
    let ci = TagEdit::remove_matching("simple.*", true).unwrap();
    assert_eq!(apply(&ci, "Simple Background, sks", &opts()), "sks");
}

#[test]
fn invalid_regex_quotes_the_pattern() {
    let err = TagEdit::remove_matching("(unclosed", false).unwrap_err();
    assert!(matches!(&err, TagsError::InvalidRegex { pattern, .. } if pattern == "(unclosed"));
    assert!(err.to_string().contains("'(unclosed'"));
    assert!(TagEdit::replace_regex("[a-", "x", false).is_err());
}

#[test]
fn remove_skips_natural_language_unless_forced() {
    let remove = TagEdit::remove(tags("sks"));
    let line = "sks, a dog sitting on the grass";
    assert_eq!(remove.apply_to_line(line, &opts()), LineOutcome::SkippedNaturalLanguage);
    let forced = EditOptions { force_tags: true, ..opts() };
    assert_eq!(remove.apply_to_line(line, &forced), LineOutcome::Changed("a dog sitting on the grass".into()));
}

// ---- replace ----------------------------------------------------------------

#[test]
fn replace_whole_tags_only() {
    let replace = TagEdit::replace("dog", "puppy", false).unwrap();
    assert_eq!(apply(&replace, "dog, hotdog, dog collar", &opts()), "puppy, hotdog, dog collar");
    let to_two = TagEdit::replace("dog", "puppy, animal", false).unwrap();
    assert_eq!(apply(&to_two, "sks, dog", &opts()), "sks, puppy, animal");
}

#[test]
fn replace_with_empty_removes_the_tag() {
    let replace = TagEdit::replace("watermark", "", false).unwrap();
    assert_eq!(apply(&replace, "sks, watermark, dog", &opts()), "sks, dog");
}

#[test]
fn replace_regex_with_groups() {
    let replace = TagEdit::replace_regex("^(.+)_hair$", "$1 hair", false).unwrap();
    assert_eq!(apply(&replace, "long_hair, blue_eyes, red_hair", &opts()), "long hair, blue_eyes, red hair");
    let swap = TagEdit::replace_regex(r"(\w+) (\w+)", "$2 $1", false).unwrap();
    assert_eq!(apply(&swap, "hair long", &opts()), "long hair");
}

#[test]
fn replace_in_natural_language_is_textual() {
    let replace = TagEdit::replace("dog", "cat", false).unwrap();
    assert_eq!(apply(&replace, PROSE, &opts()), "a photo of sks cat sitting on the grass");
    let ci = TagEdit::replace("SKS", "ohwx", true).unwrap();
    assert_eq!(apply(&ci, PROSE, &opts()), "a photo of ohwx dog sitting on the grass");
    // `$` in a plain replacement is literal text.
    let dollars = TagEdit::replace("dog", "$1", false).unwrap();
    assert_eq!(apply(&dollars, PROSE, &opts()), "a photo of sks $1 sitting on the grass");
    let re = TagEdit::replace_regex(r"sitting on (the \w+)", "lying on $1", false).unwrap();
    assert_eq!(apply(&re, PROSE, &opts()), "a photo of sks dog lying on the grass");
}

// ---- move to front ----------------------------------------------------------

#[test]
fn move_to_front() {
    let m = TagEdit::move_to_front(tags("sks"), false);
    assert_eq!(apply(&m, "dog, sks, grass", &opts()), "sks, dog, grass");
    assert_eq!(m.apply_to_line("sks, dog", &opts()), LineOutcome::Unchanged);
    assert_eq!(m.apply_to_line("dog, grass", &opts()), LineOutcome::Unchanged);
    let add = TagEdit::move_to_front(tags("sks"), true);
    assert_eq!(apply(&add, "dog, grass", &opts()), "sks, dog, grass");
    let two = TagEdit::move_to_front(tags("sks, 1girl"), false);
    assert_eq!(apply(&two, "smile, 1girl, sks", &opts()), "sks, 1girl, smile");
    assert_eq!(apply(&m, "dog, SKS", &ignore_case()), "SKS, dog");
    assert_eq!(m.apply_to_line(PROSE, &opts()), LineOutcome::SkippedNaturalLanguage);
}

// ---- dedupe -----------------------------------------------------------------

#[test]
fn dedupe_keeps_first() {
    let d = TagEdit::dedupe();
    assert_eq!(apply(&d, "dog, cat, dog, sky, cat", &opts()), "dog, cat, sky");
    assert_eq!(apply(&d, "Dog, dog", &opts()), "Dog, dog");
    assert_eq!(apply(&d, "Dog, dog, DOG, cat", &ignore_case()), "Dog, cat");
    assert_eq!(d.apply_to_line("dog,cat", &opts()), LineOutcome::Unchanged);
}

// ---- sort -------------------------------------------------------------------

#[test]
fn sort_alphabetical_ignores_case() {
    let s = TagEdit::sort(SortOrder::Alphabetical, 0);
    assert_eq!(apply(&s, "sky, Blue eyes, apple, 1girl", &opts()), "1girl, apple, Blue eyes, sky");
}

#[test]
fn sort_keeps_first_n_in_place() {
    let s = TagEdit::sort(SortOrder::Alphabetical, 2);
    assert_eq!(apply(&s, "sks, zeta, sky, apple", &opts()), "sks, zeta, apple, sky");
    let all = TagEdit::sort(SortOrder::Alphabetical, 10);
    assert_eq!(all.apply_to_line("b, a", &opts()), LineOutcome::Unchanged);
}

#[test]
fn sort_by_frequency_across_the_set() {
    let s = TagEdit::sort(SortOrder::ByFrequency, 1);
    let lines = ["sks, rare, common, mid", "sks, common, mid", "sks, common, zed", PROSE];
    let out = s.apply_to_lines(&lines, &opts());
    // common: 3 files, mid: 2, rare and zed: 1 (alphabetical tie); sks kept first.
    assert_eq!(out[0], LineOutcome::Changed("sks, common, mid, rare".into()));
    assert_eq!(out[1], LineOutcome::Unchanged);
    assert_eq!(out[2], LineOutcome::Unchanged);
    assert_eq!(out[3], LineOutcome::SkippedNaturalLanguage);
}

// ---- strip ------------------------------------------------------------------

#[test]
fn strip_whitespace_and_empty_tags() {
    let s = TagEdit::strip(false);
    assert_eq!(apply(&s, "  dog ,,  long   hair,  , sky  ", &opts()), "dog, long hair, sky");
    assert_eq!(apply(&s, "dog,cat", &opts()), "dog, cat");
    assert_eq!(s.apply_to_line("dog, long_hair", &opts()), LineOutcome::Unchanged);
}

#[test]
fn strip_underscores_spares_emoticons() {
    let s = TagEdit::strip(true);
    assert_eq!(
        apply(&s, "long_hair, ^_^, >_<, o_o, ^_^;, blue__eyes", &opts()),
        "long hair, ^_^, >_<, o_o, ^_^;, blue eyes"
    );
    assert_eq!(underscores_to_spaces("looking_at_viewer"), "looking at viewer");
    assert_eq!(underscores_to_spaces("x_x"), "x_x");
}

#[test]
fn strip_natural_language_normalises_whitespace_only() {
    let s = TagEdit::strip(false);
    assert_eq!(apply(&s, "  a photo   of a_dog  sitting on grass ", &opts()), "a photo of a_dog sitting on grass");
    assert_eq!(TagEdit::strip(true).apply_to_line(PROSE, &opts()), LineOutcome::SkippedNaturalLanguage);
}

#[test]
fn text_safety() {
    assert!(TagEdit::add(tags("a"), AddPosition::Start, false).is_text_safe());
    assert!(TagEdit::add(tags("a"), AddPosition::End, false).is_text_safe());
    assert!(!TagEdit::add(tags("a"), AddPosition::Index(0), false).is_text_safe());
    assert!(TagEdit::replace("a", "b", false).unwrap().is_text_safe());
    assert!(TagEdit::strip(false).is_text_safe());
    assert!(!TagEdit::strip(true).is_text_safe());
    assert!(!TagEdit::dedupe().is_text_safe());
    assert!(!TagEdit::sort(SortOrder::Alphabetical, 0).is_text_safe());
    assert!(!TagEdit::remove(tags("a")).is_text_safe());
    assert!(!TagEdit::move_to_front(tags("a"), true).is_text_safe());
}

// ---- files: plan and write --------------------------------------------------

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn rewrite_keeps_line_endings_and_extra_lines() {
    let dir = tempfile::tempdir().unwrap();
    let crlf = write(dir.path(), "crlf.txt", b"dog, cat\r\nnotes here\r\n");
    let bare = write(dir.path(), "bare.txt", b"dog, cat");
    let lf = write(dir.path(), "lf.txt", b"dog, cat\n");
    let plan = plan_edit(&[crlf.clone(), bare.clone(), lf.clone()], &TagEdit::remove(tags("cat")), &opts());
    assert_eq!(plan.counts().changed, 3);
    assert!(plan.write().is_empty());
    assert_eq!(std::fs::read(&crlf).unwrap(), b"dog\r\nnotes here\r\n");
    assert_eq!(std::fs::read(&bare).unwrap(), b"dog");
    assert_eq!(std::fs::read(&lf).unwrap(), b"dog\n");
}

#[test]
fn bom_and_utf16_are_dropped_only_when_tags_change() {
    let dir = tempfile::tempdir().unwrap();
    let bom_changes = write(dir.path(), "a.txt", b"\xEF\xBB\xBFsks, dog\n");
    let bom_stays = write(dir.path(), "b.txt", b"\xEF\xBB\xBFsks, cat\n");
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in "sks, dog".encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    let utf16_path = write(dir.path(), "c.txt", &utf16);
    let files = [bom_changes.clone(), bom_stays.clone(), utf16_path.clone()];
    let plan = plan_edit(&files, &TagEdit::remove(tags("dog")), &opts());
    match &plan.files[0].outcome {
        FileOutcome::Change(change) => {
            assert_eq!(change.old_line, "sks, dog");
            assert_eq!(change.new_line, "sks");
            assert_eq!(change.converted, vec![TextNote::Bom]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.files[1].outcome, FileOutcome::Unchanged);
    assert!(plan.write().is_empty());
    assert_eq!(std::fs::read(&bom_changes).unwrap(), b"sks\n");
    assert_eq!(std::fs::read(&bom_stays).unwrap(), b"\xEF\xBB\xBFsks, cat\n");
    assert_eq!(std::fs::read(&utf16_path).unwrap(), b"sks");
}

#[test]
fn invalid_utf8_is_never_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.txt", b"caf\xe9, dog");
    let plan = plan_edit(std::slice::from_ref(&bad), &TagEdit::remove(tags("dog")), &opts());
    assert!(matches!(&plan.files[0].outcome, FileOutcome::Failed(m) if m.contains("UTF-8")));
    assert!(plan.write().is_empty());
    assert_eq!(std::fs::read(&bad).unwrap(), b"caf\xe9, dog");
}

#[test]
fn missing_file_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.txt", b"dog");
    let plan = plan_edit(
        &[dir.path().join("gone.txt"), good.clone()],
        &TagEdit::add(tags("sks"), AddPosition::Start, false),
        &opts(),
    );
    let counts = plan.counts();
    assert_eq!((counts.failed, counts.changed), (1, 1));
    assert!(plan.write().is_empty());
    assert_eq!(std::fs::read(&good).unwrap(), b"sks, dog");
}

#[test]
fn file_changed_after_planning_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.txt", b"dog");
    let plan = plan_edit(std::slice::from_ref(&path), &TagEdit::add(tags("sks"), AddPosition::Start, false), &opts());
    std::fs::write(&path, b"edited elsewhere").unwrap();
    let failures = plan.write();
    assert_eq!(failures.len(), 1);
    assert_eq!(std::fs::read(&path).unwrap(), b"edited elsewhere");
}

#[cfg(unix)]
#[test]
fn symlinked_caption_is_written_through_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "real/a.txt", b"dog\n");
    let link = dir.path().join("set/a.txt");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let plan = plan_edit(std::slice::from_ref(&link), &TagEdit::add(tags("sks"), AddPosition::Start, false), &opts());
    assert!(plan.write().is_empty());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"sks, dog\n");
}

#[test]
fn natural_language_file_is_skipped_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let prose = write(dir.path(), "p.txt", PROSE.as_bytes());
    let plan = plan_edit(std::slice::from_ref(&prose), &TagEdit::dedupe(), &opts());
    assert_eq!(plan.counts().skipped_natural_language, 1);
    assert!(plan.write().is_empty());
    assert_eq!(std::fs::read(&prose).unwrap(), PROSE.as_bytes());
}

// ---- selection --------------------------------------------------------------

#[test]
fn folders_are_walked_for_the_caption_extension() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "10_sks/a.txt", b"x");
    write(d, "10_sks/a.png", b"x");
    write(d, "10_sks/deep/b.txt", b"x");
    write(d, "10_sks/.hidden.txt", b"x");
    write(d, ".cache/c.txt", b"x");
    write(d, "other/c.caption", b"x");
    let files = select_caption_files(&[d.to_owned()], ".txt").unwrap();
    assert_eq!(files, vec![d.join("10_sks/a.txt"), d.join("10_sks/deep/b.txt")]);
    let captions = select_caption_files(&[d.to_owned()], "caption").unwrap();
    assert_eq!(captions, vec![d.join("other/c.caption")]);
    // An explicit file is taken whatever its extension.
    let explicit = select_caption_files(&[d.join("other/c.caption")], ".txt").unwrap();
    assert_eq!(explicit, vec![d.join("other/c.caption")]);
}

#[test]
fn globs_select_matching_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "set/a.txt", b"x");
    write(d, "set/sub/b.txt", b"x");
    write(d, "set/sub/b.caption", b"x");
    let root = d.to_str().unwrap();
    let deep = select_caption_files(&[PathBuf::from(format!("{root}/set/**/*.txt"))], ".txt").unwrap();
    assert_eq!(deep, vec![d.join("set/a.txt"), d.join("set/sub/b.txt")]);
    let shallow = select_caption_files(&[PathBuf::from(format!("{root}/set/*.txt"))], ".txt").unwrap();
    assert_eq!(shallow, vec![d.join("set/a.txt")]);
    let none = select_caption_files(&[PathBuf::from(format!("{root}/set/*.json"))], ".txt");
    assert!(matches!(none, Err(TagsError::NoMatches(_))));
}

#[test]
fn missing_path_is_an_error_naming_it() {
    let err = select_caption_files(&[PathBuf::from("/no/such/folder")], ".txt").unwrap_err();
    assert!(matches!(&err, TagsError::NotFound(p) if p == Path::new("/no/such/folder")));
    assert!(err.to_string().contains("/no/such/folder"));
}

#[cfg(unix)]
#[test]
fn symlinks_followed_once_and_odd_names_kept() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let real = write(d, "real/a.txt", b"x");
    std::fs::create_dir_all(d.join("set")).unwrap();
    std::os::unix::fs::symlink(&real, d.join("set/link.txt")).unwrap();
    let latin1 = d.join("set").join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&latin1, b"x").unwrap();
    let thai = write(d, "ชุด ภาพ/ช้าง.txt", b"x");
    let linked = select_caption_files(&[d.join("set")], ".txt").unwrap();
    assert_eq!(linked, vec![latin1.clone(), d.join("set/link.txt")]);
    // Reached both directly and through the link: listed once.
    let all = select_caption_files(&[d.to_owned()], ".txt").unwrap();
    assert_eq!(all, vec![real, latin1, thai]);
}

// ---- statistics -------------------------------------------------------------

#[test]
fn stats_count_files_per_tag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = vec![
        write(d, "a/1.txt", b"sks, dog, dog"),
        write(d, "a/2.txt", b"sks, Cat"),
        write(d, "b/3.txt", b"sks, cat\nsecond line, ignored"),
        write(d, "b/4.txt", b""),
        write(d, "b/5.txt", PROSE.as_bytes()),
    ];
    let stats = tag_stats(&files, &TagMatching::default());
    assert_eq!((stats.files, stats.tag_files, stats.natural_language, stats.empty), (5, 4, 1, 1));
    let table: Vec<(&str, usize, f64)> = stats.tags.iter().map(|t| (t.tag.as_str(), t.count, t.percent)).collect();
    assert_eq!(table, vec![("sks", 3, 75.0), ("Cat", 1, 25.0), ("cat", 1, 25.0), ("dog", 1, 25.0)]);
    let merged = tag_stats(&files, &TagMatching { ignore_case: true, underscores_as_spaces: false });
    assert_eq!((merged.tags[1].tag.as_str(), merged.tags[1].count), ("Cat", 2));

    let folders = tag_stats_per_folder(&files, &TagMatching::default());
    assert_eq!(folders.len(), 2);
    assert_eq!(folders[0].folder, d.join("a"));
    assert_eq!((folders[0].stats.files, folders[0].stats.tags[0].count), (2, 2));
    assert_eq!((folders[1].stats.files, folders[1].stats.natural_language, folders[1].stats.empty), (3, 1, 1));
}
