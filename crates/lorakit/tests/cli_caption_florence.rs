//! `lorakit caption florence` end to end with the tiny Florence-2 of
//! `tools/reference/florence2_fixture.py`: the written caption is what transformers' `generate`
//! and processor make of the same image for each task (beam search), dry runs write nothing,
//! existing captions are kept, the trigger word comes first, and a folder that is not a
//! Florence-2 model is refused by the file it lacks.

use crate::common;

use std::path::PathBuf;

use common::{lorakit, repo, text};

fn fixture() -> PathBuf {
    repo("tests/fixtures/reference/florence2")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap()).unwrap()
}

#[test]
fn captions_equal_transformers_for_each_task_and_existing_ones_are_kept() {
    let r = reference();
    let model = fixture().join("model");
    let max = r["max_new_tokens"].to_string();
    for (task, key) in
        [("caption", "<CAPTION>"), ("detailed", "<DETAILED_CAPTION>"), ("more-detailed", "<MORE_DETAILED_CAPTION>")]
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture().join(r["image"].as_str().unwrap()), dir.path().join("a.png")).unwrap();
        let caption = dir.path().join("a.txt");
        let args = |extra: &[&str]| {
            let mut a: Vec<String> =
                ["caption", "florence", dir.path().to_str().unwrap(), "--model", model.to_str().unwrap()]
                    .map(String::from)
                    .to_vec();
            a.extend(["--task", task, "--num-beams", "3", "--max-new-tokens", &max].map(String::from));
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let expected = r["tasks"][key]["beam"].as_str().unwrap().trim().to_string();
        let dry = lorakit(&args(&["--dry-run"]));
        assert!(dry.status.success(), "{}", text(&dry));
        assert!(!caption.exists(), "a dry run writes nothing");
        let run = lorakit(&args(&[]));
        assert!(run.status.success(), "{}", text(&run));
        assert_eq!(std::fs::read_to_string(&caption).unwrap(), format!("{expected}\n"), "{task}");
        // A second run keeps it; --overwrite with a trigger word writes it first.
        std::fs::write(&caption, "mine\n").unwrap();
        let again = lorakit(&args(&[]));
        assert!(again.status.success() && text(&again).contains("1 skipped"), "{}", text(&again));
        assert_eq!(std::fs::read_to_string(&caption).unwrap(), "mine\n");
        let trig = lorakit(&args(&["--overwrite", "--trigger", "lkstar"]));
        assert!(trig.status.success(), "{}", text(&trig));
        assert_eq!(std::fs::read_to_string(&caption).unwrap(), format!("lkstar, {expected}\n"));
    }
}

#[test]
fn a_folder_without_the_model_files_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.png"), b"not an image").unwrap();
    let out = lorakit(&["caption", "florence", dir.path().to_str().unwrap(), "--model", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("config.json"), "{}", text(&out));
}
