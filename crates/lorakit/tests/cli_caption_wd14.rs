//! `lorakit caption wd14` end to end with the tiny WD ViT of `tools/reference/wd14_fixtures.py`:
//! the captions equal what kohya's tag selection makes of timm's probabilities for the same
//! images, dry runs write nothing, existing captions are kept, the trigger word comes first, a
//! corrupt image is named and skipped while the others are written, and a model folder without
//! selected_tags.csv is refused by name.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{output_within, repo, text};

fn fixtures() -> PathBuf {
    repo("tests/fixtures/reference/wd14")
}

/// kohya's captions (default options) for the fixture images, by file name.
fn kohya_defaults() -> Vec<(String, String)> {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("postprocess.json")).unwrap()).unwrap();
    let case = fixture["cases"].as_array().unwrap().iter().find(|c| c["name"] == "defaults").unwrap();
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The fixture's first probability rows are the images' in this order.
    names
        .into_iter()
        .zip(case["captions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()))
        .collect()
}

fn images(dir: &Path) {
    for entry in std::fs::read_dir(fixtures().join("images")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
}

fn wd14(dir: &Path, model: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lorakit"));
    cmd.args(["caption", "wd14"]).arg(dir).arg("--model").arg(model).args(extra);
    output_within(cmd, 120)
}

fn caption(dir: &Path, image: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(Path::new(image).with_extension("txt"))).ok()
}

#[test]
fn captions_are_kohyas_and_bad_images_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    images(tmp.path());
    std::fs::write(tmp.path().join("broken.png"), b"this is not a png").unwrap();
    std::fs::write(tmp.path().join("grey.txt"), "my own caption\n").unwrap();
    let model = fixtures().join("vit");

    // Dry run: the captions are printed, nothing is written.
    let out = wd14(tmp.path(), &model, &["--dry-run"]);
    let all = text(&out);
    assert!(all.contains("would be written"), "{all}");
    assert!(caption(tmp.path(), "tiny.png").is_none(), "a dry run wrote a caption");

    let out = wd14(tmp.path(), &model, &["--batch-size", "3", "--frequency-tags"]);
    let all = text(&out);
    // One image failed: exit code 1, the file named, the others written.
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("broken.png") && all.contains("cannot decode"), "{all}");
    assert!(all.contains("Tag frequencies:"), "{all}");
    assert!(!tmp.path().join("broken.txt").exists());
    for (image, want) in kohya_defaults() {
        let got = caption(tmp.path(), &image).unwrap();
        if image == "grey.png" {
            assert_eq!(got, "my own caption\n", "an existing caption was replaced");
        } else {
            assert_eq!(got, format!("{want}\n"), "{image}");
        }
    }
    assert!(all.contains("6 captions written, 1 skipped, 1 failed"), "{all}");

    // --overwrite with a trigger word: first, and kohya's tags after it.
    let out = wd14(tmp.path(), &model, &["--overwrite", "--trigger", "lkstar", "--remove-underscore"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let want = kohya_defaults().into_iter().find(|(n, _)| n == "grey.png").unwrap().1;
    let want = want.split(", ").map(|t| if t.chars().count() > 3 { t.replace('_', " ") } else { t.to_string() });
    let want = std::iter::once("lkstar".to_string()).chain(want).collect::<Vec<_>>().join(", ");
    assert_eq!(caption(tmp.path(), "grey.png").unwrap(), format!("{want}\n"));
}

#[test]
fn a_model_folder_without_its_tag_list_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    images(tmp.path());
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("vit").join(f), model.join(f)).unwrap();
    }
    let out = wd14(tmp.path(), &model, &[]);
    let all = text(&out);
    assert!(!out.status.success());
    assert!(all.contains("selected_tags.csv") && all.contains("SmilingWolf/wd-"), "{all}");
    assert!(caption(tmp.path(), "tiny.png").is_none());
}

#[test]
fn a_bad_option_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    images(tmp.path());
    let out = wd14(tmp.path(), &fixtures().join("convnext"), &["--tag-replacement", "a,b,c"]);
    let all = text(&out);
    assert!(!out.status.success() && all.contains("source,target"), "{all}");
    let out = wd14(tmp.path(), &fixtures().join("convnext"), &["--thresh", "1.5"]);
    assert!(!out.status.success() && text(&out).contains("--thresh"), "{}", text(&out));
    assert!(caption(tmp.path(), "tiny.png").is_none());
}
