//! `lorakit tags …` end to end: the built binary on caption folders in temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn lorakit(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).env_remove("RUST_LOG").output().unwrap()
}

fn run(args: &[&str]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    lorakit(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

const PROSE: &[u8] = b"a photo of sks dog sitting on the grass.\n";

/// A small dataset: two tag captions, one with a BOM, one natural-language, one image.
struct Dataset {
    dir: tempfile::TempDir,
    dog: PathBuf,
    cat_bom: PathBuf,
    prose: PathBuf,
}

impl Dataset {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dog = write(d, "10_sks/dog.txt", b"dog, sks, grass\n");
        let cat_bom = write(d, "10_sks/cat.txt", b"\xEF\xBB\xBFcat, sks\r\n");
        let prose = write(d, "5_prose/p.txt", PROSE);
        write(d, "10_sks/dog.png", b"\x89PNG not really");
        Dataset { dir, dog, cat_bom, prose }
    }

    fn root(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        [&self.dog, &self.cat_bom, &self.prose].iter().map(|p| read(p)).collect()
    }
}

#[test]
fn dry_run_prints_diff_and_leaves_files_identical() {
    let ds = Dataset::new();
    let before = ds.snapshot();
    let out = run(&["tags", "move-to-front", "sks", ds.root(), "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("10_sks/dog.txt:\n- dog, sks, grass\n+ sks, dog, grass\n"), "{text}");
    assert!(text.contains("10_sks/cat.txt:\n- cat, sks\n+ sks, cat\n"), "{text}");
    assert!(text.contains("skipped (natural language):"), "{text}");
    assert!(text.contains("5_prose/p.txt"), "{text}");
    assert!(text.contains("2 files would change, 0 unchanged, 1 skipped (natural language)"), "{text}");
    assert_eq!(ds.snapshot(), before);
}

#[test]
fn real_run_changes_exactly_the_files_that_change() {
    let ds = Dataset::new();
    let d = ds.dir.path();
    let untouched = write(d, "10_sks/other.txt", b"cat,  tree\n");
    let mtime = std::fs::metadata(&untouched).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = run(&["tags", "remove", "grass,dog", ds.root()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 file changed, 2 unchanged, 1 skipped (natural language)"), "{}", stdout(&out));
    assert_eq!(read(&ds.dog), b"sks\n");
    assert_eq!(read(&ds.cat_bom), b"\xEF\xBB\xBFcat, sks\r\n");
    assert_eq!(read(&ds.prose), PROSE);
    assert_eq!(read(&untouched), b"cat,  tree\n");
    assert_eq!(std::fs::metadata(&untouched).unwrap().modified().unwrap(), mtime);
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(d.join("10_sks")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[test]
fn bom_file_loses_its_bom_only_when_its_tags_change() {
    let ds = Dataset::new();
    let out = run(&["tags", "add", "sks", ds.root()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // sks is already in both tag captions: nothing changes, the BOM stays.
    assert_eq!(read(&ds.cat_bom), b"\xEF\xBB\xBFcat, sks\r\n");
    let out = run(&["tags", "add", "1girl", "--at", "end", ds.cat_bom.to_str().unwrap(), "-n"]);
    assert!(stdout(&out).contains("without byte-order mark"), "{}", stdout(&out));
    let out = run(&["tags", "add", "1girl", "--at", "end", ds.cat_bom.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Rewritten as UTF-8 without BOM, CRLF kept.
    assert_eq!(read(&ds.cat_bom), b"cat, sks, 1girl\r\n");
}

#[test]
fn natural_language_gets_text_safe_edits_only() {
    let ds = Dataset::new();
    let out = run(&["tags", "remove", "sks", ds.prose.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("0 files changed, 0 unchanged, 1 skipped (natural language)"), "{}", stdout(&out));
    assert_eq!(read(&ds.prose), PROSE);
    let out = run(&["tags", "add", "ohwx", ds.prose.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(read(&ds.prose), b"ohwx, a photo of sks dog sitting on the grass.\n");
    let out = run(&["tags", "replace", "dog", "cat", ds.prose.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(read(&ds.prose), b"ohwx, a photo of sks cat sitting on the grass.\n");
}

#[test]
fn glob_selects_only_matching_files() {
    let ds = Dataset::new();
    let pattern = format!("{}/10_sks/d*.txt", ds.root());
    let out = run(&["tags", "add", "new", &pattern]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&ds.dog), b"new, dog, sks, grass\n");
    assert_eq!(read(&ds.cat_bom), b"\xEF\xBB\xBFcat, sks\r\n");
    let out = run(&["tags", "add", "new", &format!("{}/**/nothing*.txt", ds.root())]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("matched no files"), "{}", stderr(&out));
}

#[test]
fn thai_names_and_spaces_in_folders() {
    let dir = tempfile::tempdir().unwrap();
    let thai = write(dir.path(), "ชุด ภาพ/ช้าง 1.txt", b"long_hair, ^_^\n");
    let out = run(&["tags", "strip", "--underscores", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&thai), b"long hair, ^_^\n");
    let out = run(&["tags", "stats", dir.path().join("ชุด ภาพ").to_str().unwrap()]);
    assert!(stdout(&out).contains("long hair"), "{}", stdout(&out));
}

#[cfg(unix)]
#[test]
fn non_utf8_file_name() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&path, b"b, a\n").unwrap();
    let out = lorakit(&["tags".as_ref(), "sort".as_ref(), dir.path().as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&path), b"a, b\n");
    // Passed directly as an argument too.
    let out = lorakit(&["tags".as_ref(), "add".as_ref(), "c".as_ref(), path.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&path), b"c, a, b\n");
}

#[cfg(unix)]
#[test]
fn symlinked_caption_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let real = write(dir.path(), "store/a.txt", b"dog, dog\n");
    std::fs::create_dir_all(dir.path().join("set")).unwrap();
    let link = dir.path().join("set/a.txt");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = run(&["tags", "dedupe", dir.path().join("set").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("1 file changed"), "{}", stdout(&out));
    assert_eq!(read(&real), b"dog\n");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

#[test]
fn missing_path_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no such folder");
    let out = run(&["tags", "dedupe", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such folder"), "{}", stderr(&out));
}

#[test]
fn invalid_regex_fails_before_touching_anything() {
    let ds = Dataset::new();
    let before = ds.snapshot();
    let out = run(&["tags", "replace", "--regex", "(oops", "x", ds.root()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'(oops'"), "{}", stderr(&out));
    assert_eq!(ds.snapshot(), before);
}

#[test]
fn unreadable_file_warns_and_exits_1_after_doing_the_rest() {
    let ds = Dataset::new();
    let bad = write(ds.dir.path(), "10_sks/bad.txt", b"caf\xe9, dog\n");
    let out = run(&["tags", "remove", "dog", ds.root()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.txt"), "{}", stderr(&out));
    assert_eq!(read(&bad), b"caf\xe9, dog\n");
    assert_eq!(read(&ds.dog), b"sks, grass\n");
}

#[test]
fn regex_replace_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "a.txt", b"long_hair, white_background, red_hair\n");
    let out = run(&["tags", "remove", "--regex", ".*_background", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["tags", "replace", "--regex", "^(.+)_hair$", "$1 hair", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&f), b"long hair, red hair\n");
}

#[test]
fn sort_keep_first_and_by_frequency() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.txt", b"sks, rare, common\n");
    let b = write(dir.path(), "b.txt", b"sks, zeta, common\n");
    let out = run(&["tags", "sort", "--keep-first", "1", "--by-frequency", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&a), b"sks, common, rare\n");
    assert_eq!(read(&b), b"sks, common, zeta\n");
}

#[test]
fn caption_extension_selects_files_in_folders() {
    let dir = tempfile::tempdir().unwrap();
    let cap = write(dir.path(), "a.caption", b"dog\n");
    let txt = write(dir.path(), "a.txt", b"dog\n");
    let out = run(&["tags", "add", "sks", "--caption-extension", "caption", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&cap), b"sks, dog\n");
    assert_eq!(read(&txt), b"dog\n");
}

#[test]
fn add_at_position() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "a.txt", b"a, c\n");
    let out = run(&["tags", "add", "b, c", "--at", "1", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read(&f), b"a, b, c\n");
    let out = run(&["tags", "add", "x", "--at", "middle", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn stats_json_counts() {
    let ds = Dataset::new();
    write(ds.dir.path(), "10_sks/empty.txt", b"");
    let out = run(&["tags", "stats", "--json", "--per-folder", ds.root()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["files"], 4);
    assert_eq!(json["tag_files"], 3);
    assert_eq!(json["natural_language"], 1);
    assert_eq!(json["empty"], 1);
    let tags = json["tags"].as_array().unwrap();
    assert_eq!(tags[0]["tag"], "sks");
    assert_eq!(tags[0]["count"], 2);
    assert_eq!(tags[0]["percent"], 66.7);
    let counted: Vec<(&str, u64)> =
        tags.iter().map(|t| (t["tag"].as_str().unwrap(), t["count"].as_u64().unwrap())).collect();
    assert_eq!(counted, vec![("sks", 2), ("cat", 1), ("dog", 1), ("grass", 1)]);
    let folders = json["folders"].as_array().unwrap();
    assert_eq!(folders.len(), 2);
    assert!(folders[0]["folder"].as_str().unwrap().ends_with("10_sks"));
    assert_eq!(folders[0]["files"], 3);
    assert_eq!(folders[1]["natural_language"], 1);

    let top = run(&["tags", "stats", "--json", "--top", "1", ds.root()]);
    let json: serde_json::Value = serde_json::from_slice(&top.stdout).unwrap();
    assert_eq!(json["tags"].as_array().unwrap().len(), 1);
    assert!(json.get("folders").is_none());
}

#[test]
fn stats_table() {
    let ds = Dataset::new();
    let out = run(&["tags", "stats", ds.root()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("3 files: 2 tag captions (0 empty), 1 natural language"), "{text}");
    assert!(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["2", "100.0%", "sks"]), "{text}");
}

use crate::common;

/// A failed write (here: the file-size limit, as a full disk would fail it) is reported as
/// not written, with the reason; only the files really written count as changed; exit 1.
#[test]
fn failed_writes_are_reported_exactly_and_leave_the_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let small = write(dir.path(), "1_x/small.txt", b"dog, sks\n");
    // Over 512 bytes after the edit: refused by `ulimit -f 1` (one 512-byte block).
    let long_tags: String = (0..80).map(|i| format!("tag{i}, ")).collect();
    let big_text = format!("dog, {long_tags}end\n");
    let big = write(dir.path(), "1_x/big.txt", big_text.as_bytes());
    let mut cmd = Command::new("sh");
    // Ignore SIGXFSZ so the write fails with EFBIG instead of killing the process.
    cmd.args(["-c", "ulimit -f 1; trap '' XFSZ; exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_lorakit")])
        .args(["tags", "add", "new"])
        .arg(dir.path())
        .env_remove("RUST_LOG");
    let out = common::output_within(cmd, 60);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(err.contains("big.txt") && err.contains("not written") && err.contains("unchanged"), "{err}");
    assert!(text.contains(&format!("changed: {}", small.display())), "{text}");
    assert!(!text.contains(&format!("changed: {}", big.display())), "{text}");
    assert!(text.contains("1 file changed, 0 unchanged, 0 skipped (natural language), 1 not written"), "{text}");
    assert_eq!(read(&small), b"new, dog, sks\n");
    assert_eq!(read(&big), big_text.as_bytes(), "the failed file is untouched");
    let names: Vec<String> = std::fs::read_dir(dir.path().join("1_x"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
}

/// An edited caption keeps its mode (and, when lorakit runs as root, its owner and group).
#[cfg(unix)]
#[test]
fn edited_caption_keeps_permissions_and_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let caption = write(dir.path(), "a.txt", b"dog, sks\n");
    std::fs::set_permissions(&caption, std::fs::Permissions::from_mode(0o604)).unwrap();
    // Succeeds only with the privilege to give files away (root): then the owner must stay.
    let chowned = std::os::unix::fs::chown(&caption, Some(4321), Some(4322)).is_ok();
    let out = run(&["tags", "add", "new", caption.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read(&caption), b"new, dog, sks\n");
    let meta = std::fs::metadata(&caption).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o604);
    if chowned {
        assert_eq!((meta.uid(), meta.gid()), (4321, 4322));
    }
}

/// A FIFO named like a caption (in a folder, or given by name) is reported, never opened for
/// reading; the other files are still done.
#[cfg(unix)]
#[test]
fn fifo_caption_is_reported_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let caption = write(dir.path(), "1_x/a.txt", b"dog\n");
    let fifo = dir.path().join("1_x/pipe.txt");
    common::mkfifo(&fifo);
    for target in [dir.path().to_path_buf(), fifo.clone()] {
        for sub in [&["add", "new"][..], &["stats"][..]] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_lorakit"));
            cmd.arg("tags").args(sub).arg(&target).env_remove("RUST_LOG");
            let out = common::output_within(cmd, 60);
            assert_eq!(out.status.code(), Some(1), "{sub:?} {}", stderr(&out));
            assert!(stderr(&out).contains("pipe.txt") && stderr(&out).contains("FIFO"), "{}", stderr(&out));
        }
    }
    assert_eq!(read(&caption), b"new, dog\n");
}

/// Control bytes in captions are escaped in diffs and tables, never sent to the terminal raw.
#[test]
fn caption_control_bytes_are_escaped_in_diffs_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", b"dog\x1b[2J, cat\x1b]0;title\x07\n");
    for args in [&["tags", "add", "new", "--dry-run"][..], &["tags", "stats"][..]] {
        let mut args = args.to_vec();
        args.push(dir.path().to_str().unwrap());
        let out = run(&args);
        let text = stdout(&out);
        assert!(!text.contains(['\x1b', '\x07']), "{args:?}: {text:?}");
        assert!(text.contains("dog\\u{1b}[2J"), "{args:?}: {text}");
    }
}

/// Temporary files left by an interrupted earlier write are removed from the folder written to;
/// other files that merely look alike stay.
#[test]
fn stale_temp_files_are_removed_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let caption = write(dir.path(), "a.txt", b"dog\n");
    let stale = common::abandoned_temp_file(dir.path());
    let lookalike = write(dir.path(), "notes.tmp", b"mine");
    let out = run(&["tags", "add", "new", caption.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stale.exists(), "the abandoned temporary file is still there");
    assert_eq!(read(&lookalike), b"mine");
    assert_eq!(read(&caption), b"new, dog\n");
}
