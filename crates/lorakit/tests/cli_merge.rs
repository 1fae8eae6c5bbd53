//! `lorakit merge` as a user runs it: FILE:RATIO parsing, the written file, and one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd-scripts/lora").join(name)
}

fn lorakit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

fn arg(path: &Path, ratio: &str) -> String {
    format!("{}:{ratio}", path.display())
}

/// Asserts a failed run: non-zero exit, one `error:` line naming `needle`, no panic.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // clap's usage errors add its standard "For more information, try '--help'." hint.
    let lines: Vec<&str> =
        err.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("For more information")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error:") && lines[0].contains(needle), "{err}");
}

#[test]
fn merges_the_fixture_with_its_resize() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let a = fixture("sd15-r8-fp32.safetensors");
    let b = fixture("sd15-r8-fp32.resized-sv_fro-0.9.safetensors");
    let mut args = vec!["merge".to_string()];
    args.extend([arg(&a, "0.7"), arg(&b, "-0.5"), "-o".into(), out.display().to_string()]);
    args.extend(["--rank", "4", "--precision", "bf16"].map(String::from));
    let run = lorakit(&args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(err.contains("merged 2 LoRAs (264 modules, SD1.x)") && err.contains("ranks: 4 ×264"), "{err}");

    let inspect = lorakit(&["inspect".as_ref(), out.as_os_str(), "--json".as_ref()]);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let r: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(r[0]["ranks"]["4"], 264);
    assert_eq!(r[0]["alphas"]["4"], 264);
    assert_eq!(r[0]["base_model"], "SD1.x");

    // A file with no ratio counts 1.0; the output may not overwrite an input.
    let run =
        lorakit(&["merge".as_ref(), out.as_os_str(), "-o".as_ref(), out.as_os_str(), "--rank".as_ref(), "2".as_ref()]);
    assert_one_line_error(&run, "output is one of the inputs");
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let fx = fixture("sd15-r8-fp32.safetensors");
    let o = out.display().to_string();
    let merge = |inputs: &[String]| {
        let mut args = vec!["merge".to_string()];
        args.extend(inputs.iter().cloned());
        args.extend(["-o".into(), o.clone(), "--rank".into(), "4".into()]);
        lorakit(&args)
    };

    assert_one_line_error(
        &merge(&[dir.path().join("missing.safetensors").display().to_string()]),
        "missing.safetensors",
    );
    assert_one_line_error(&merge(&[arg(&fx, "abc")]), "not a number");
    assert_one_line_error(&merge(&[arg(&fx, "nan")]), "not a finite number");

    // A full checkpoint is refused by name.
    let ckpt = dir.path().join("model.safetensors");
    let header = br#"{"model.diffusion_model.out.2.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]);
    std::fs::write(&ckpt, bytes).unwrap();
    assert_one_line_error(&merge(&[fx.display().to_string(), ckpt.display().to_string()]), "model.safetensors");

    // Same module names, SDXL metadata: families disagree.
    let xl = dir.path().join("xl.safetensors");
    let src = std::fs::read(&fx).unwrap();
    let n = u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&src[8..8 + n]).unwrap();
    h["__metadata__"] = serde_json::json!({ "ss_base_model_version": "sdxl_base_v1-0" });
    let h = serde_json::to_vec(&h).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&src[8 + n..]);
    std::fs::write(&xl, bytes).unwrap();
    let run = merge(&[fx.display().to_string(), arg(&xl, "0.5")]);
    assert_one_line_error(&run, "xl.safetensors");
    assert!(String::from_utf8_lossy(&run.stderr).contains("SDXL"));

    let run = lorakit(&["merge", fx.to_str().unwrap(), "-o", o.as_str(), "--rank", "0"]);
    assert_one_line_error(&run, "--rank must be at least 1");
    assert!(!out.exists());
}

use crate::common;

/// A LoRA holding NaN/Inf is refused by merge and resize (their output would be NaN), naming
/// the first modules and the count, and converted with a warning naming them.
#[test]
fn non_finite_inputs_are_refused_by_merge_and_resize_and_named_by_convert() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("diverged.safetensors");
    let modules = common::poisoned_lora(&fixture("sd15-r8-fp32.safetensors"), &bad, 7);
    let out = dir.path().join("out.safetensors");
    let named = |err: &str| {
        assert!(err.contains("diverged.safetensors") && err.contains("7 modules hold NaN/Inf"), "{err}");
        assert!(err.contains(&format!("{} (2)", modules[0])) && err.contains("and 2 more"), "{err}");
    };
    let good = fixture("sd15-r8-fp32.safetensors");
    let merge = lorakit(&["merge", &arg(&good, "0.5"), &arg(&bad, "0.5"), "-o", out.to_str().unwrap(), "--rank", "4"]);
    assert_one_line_error(&merge, "merged LoRA would be NaN");
    named(&String::from_utf8_lossy(&merge.stderr));
    let resize = lorakit(&["resize", bad.to_str().unwrap(), out.to_str().unwrap(), "--rank", "4"]);
    assert_one_line_error(&resize, "resized LoRA would be NaN");
    named(&String::from_utf8_lossy(&resize.stderr));
    assert!(!out.exists(), "nothing is written");
    let convert = lorakit(&["convert", bad.to_str().unwrap(), out.to_str().unwrap(), "--to", "peft"]);
    let err = String::from_utf8_lossy(&convert.stderr);
    assert!(convert.status.success(), "{err}");
    assert!(err.contains("warning:"), "{err}");
    named(&err);
}

/// The LoRA commands remove temporary files of interrupted earlier writes beside their output.
#[test]
fn stale_temp_files_beside_the_output_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let stale = common::abandoned_temp_file(dir.path());
    let out = dir.path().join("peft.safetensors");
    let o = lorakit(&[
        "convert",
        fixture("sd15-r8-fp32.safetensors").to_str().unwrap(),
        out.to_str().unwrap(),
        "--to",
        "peft",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.exists() && !stale.exists());
}
