//! `lorakit convert` as a user runs it: the sd-scripts SD1.5 LoRA to PEFT and
//! back, and the refused inputs (one-line error, exit code 2, no panic).

use lorakit_lora::keys;
use lorakit_lora::safetensors_file::{write_lora, LoraFile, Precision, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd-scripts/lora/sd15-r8-fp32.safetensors")
}

fn lorakit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

fn convert(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["convert".as_ref(), input.as_os_str(), output.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    lorakit(&args)
}

fn names(path: &Path) -> BTreeSet<String> {
    LoraFile::open(path).unwrap().tensor_names().map(str::to_string).collect()
}

/// Asserts a refusal: exit code 2, one `error:` line containing `needle`, no panic.
fn assert_refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn fixture_to_peft_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let (peft, back) = (dir.path().join("peft.safetensors"), dir.path().join("kohya.safetensors"));

    let out = convert(&fixture(), &peft, &["--to", "peft"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("converted 264 modules (SD1.x, kohya LoRA/LoCon → PEFT, F32)"), "{err}");
    assert!(err.contains("alpha/rank folded into lora_B for 264 modules"), "{err}");
    let peft_names = names(&peft);
    assert_eq!(peft_names.len(), 528);
    assert!(peft_names.contains("unet.up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0.lora_B.weight"));

    let out = convert(&peft, &back, &["--to", "kohya", "--precision", "fp16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("converted 264 modules (SD1.x, PEFT/diffusers LoRA → kohya, F16)"), "{err}");
    assert_eq!(names(&back), names(&fixture()));

    // Effective weights survive (to fp16 precision): compare one module's scale·up·down.
    let (a, b) = (LoraFile::open(fixture()).unwrap(), LoraFile::open(&back).unwrap());
    let (ma, mb) = (keys::modules(&a).unwrap(), keys::modules(&b).unwrap());
    for (x, y) in ma.modules.iter().zip(&mb.modules) {
        assert_eq!(x.name, y.name);
        let (ua, da) = (a.tensor_f32(&x.up_key).unwrap(), a.tensor_f32(&x.down_key).unwrap());
        let (ub, db) = (b.tensor_f32(&y.up_key).unwrap(), b.tensor_f32(&y.down_key).unwrap());
        // First element of the product: Σ_k up[0,k]·down[k,0].
        let cols = da.len() / x.rank;
        let wa: f32 = (0..x.rank).map(|k| ua[k] * da[k * cols]).sum::<f32>() * x.scale();
        let wb: f32 = (0..y.rank).map(|k| ub[k] * db[k * cols]).sum::<f32>() * y.scale();
        let mag: f32 = (0..x.rank).map(|k| (ua[k] * da[k * cols]).abs()).sum::<f32>() * x.scale();
        assert!((wa - wb).abs() <= 2e-3 * mag + 1e-8, "{}: {wa} vs {wb}", x.name);
    }
}

#[test]
fn bad_inputs_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.safetensors");

    assert_refused(
        &convert(&dir.path().join("missing.safetensors"), &out_path, &["--to", "peft"]),
        "missing.safetensors",
    );
    assert_refused(&convert(&fixture(), &fixture(), &["--to", "peft"]), "same file");
    assert_refused(&convert(&fixture(), &out_path, &["--to", "kohya"]), "already a kohya");

    let mut t = BTreeMap::new();
    t.insert(
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight".to_string(),
        Tensor::new(vec![2, 4], vec![0.1; 8]),
    );
    t.insert(
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight".to_string(),
        Tensor::new(vec![4, 2], vec![0.1; 8]),
    );
    let flux = dir.path().join("flux.safetensors");
    write_lora(&flux, &t, &BTreeMap::new(), Precision::F32).unwrap();
    // A Flux qkv whose 4 outputs are no q/k/v split.
    assert_refused(&convert(&flux, &out_path, &["--to", "peft"]), "do not split into the 3 parts");
    // Forcing a family does not make Flux names mappable.
    assert_refused(
        &convert(&flux, &out_path, &["--to", "peft", "--family", "sdxl"]),
        "lora_unet_double_blocks_0_img_attn_qkv",
    );

    let out = convert(&fixture(), &out_path, &["--to", "comfy"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects an unknown --to");
    assert!(!out_path.exists());
}
