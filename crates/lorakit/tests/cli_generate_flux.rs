//! `lorakit generate` with Flux.1: the tiny f16 pipeline folder (tests/fixtures/reference/flux_tiny/pipeline),
//! its transformer given as a file with `--clip-l` / `--t5xxl` / `--ae`, a grid, and the refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pipeline(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/flux_tiny/pipeline").join(rel)
}

fn lorakit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn draws_from_the_folder_and_from_separate_parts() {
    let dir = tempfile::tempdir().unwrap();
    let folder = pipeline("");
    let a = dir.path().join("a.png");
    let common = ["--prompt", "a red star", "--width", "32", "--height", "24", "--steps", "2"];
    let mut args = vec!["generate", "--model", folder.to_str().unwrap(), "-o", a.to_str().unwrap()];
    args.extend(common);
    let out = lorakit(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Flux.1 dev"), "{}", stderr(&out));
    let img = image::open(&a).unwrap();
    assert_eq!((img.width(), img.height()), (32, 24));

    // The BFL single file of the same transformer needs the other parts named; the tiny
    // model's rotary axes are not Flux.1's, so only the folder form works for it — the error
    // must say what is missing first.
    let transformer = pipeline("transformer/diffusion_pytorch_model.safetensors");
    let b = dir.path().join("b.png");
    let mut args = vec!["generate", "--model", transformer.to_str().unwrap(), "-o", b.to_str().unwrap()];
    args.extend(common);
    let out = lorakit(&args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("clip_l"), "{}", stderr(&out));
    assert!(!b.exists());

    // A grid: one column per prompt.
    let grid = dir.path().join("grid.png");
    let out = lorakit(&[
        "generate",
        "--model",
        folder.to_str().unwrap(),
        "--grid",
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--width",
        "32",
        "--height",
        "24",
        "--steps",
        "1",
        "-o",
        grid.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let img = image::open(&grid).unwrap();
    assert!(img.width() >= 64 && img.height() >= 24, "{}×{}", img.width(), img.height());
}

#[test]
fn refuses_what_does_not_apply_to_flux() {
    let dir = tempfile::tempdir().unwrap();
    let folder = pipeline("");
    let out_png = dir.path().join("x.png");
    for (extra, expected) in
        [(&["--sampler", "ddim"][..], "--sampler does not apply"), (&["--clip-skip", "2"][..], "do not apply to Flux")]
    {
        let mut args =
            vec!["generate", "--model", folder.to_str().unwrap(), "--prompt", "x", "-o", out_png.to_str().unwrap()];
        args.extend(extra);
        let out = lorakit(&args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    let sd =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd15_tiny/single_file.safetensors");
    let out = lorakit(&[
        "generate",
        "--model",
        sd.to_str().unwrap(),
        "--clip-l",
        "x.safetensors",
        "--prompt",
        "x",
        "-o",
        out_png.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--clip-l is for Flux"), "{}", stderr(&out));
    assert!(!out_png.exists());
}
