//! `lorakit inspect`, `convert`, `resize` and `merge` on Flux.1 LoRAs as users publish them
//! (tests/fixtures/reference/flux_lora: kohya, split_qkv, ComfyUI, diffusers/ai-toolkit, XLabs and
//! BFL layouts of one tiny Flux-shaped model), and the refused inputs (one-line error, exit 2).

use lorakit_lora::keys;
use lorakit_lora::safetensors_file::{write_lora, LoraFile, Precision, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/flux_lora").join(name)
}

fn lorakit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

fn ok(out: &Output) -> (String, String) {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

/// Asserts a refusal: exit code 2, one `error:` line containing `needle`, no panic.
fn assert_refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn module_names(path: &Path) -> Vec<String> {
    let file = LoraFile::open(path).unwrap();
    keys::modules(&file).unwrap().modules.into_iter().map(|m| m.name).collect()
}

#[test]
fn inspect_shows_flux_blocks_for_every_layout() {
    let files: Vec<PathBuf> = ["kohya", "diffusers", "xlabs", "bfl", "comfy", "kohya_split_qkv"]
        .iter()
        .map(|l| fixture(&format!("{l}.safetensors")))
        .collect();
    let mut args: Vec<&std::ffi::OsStr> = vec!["inspect".as_ref()];
    args.extend(files.iter().map(|p| p.as_os_str()));
    let (text, _) = ok(&lorakit(&args));
    assert!(text.contains("base model  Flux\n"), "{text}");
    assert!(text.contains("base model  Flux (dev)\n"), "{text}");
    for layout in ["kohya/sd-scripts", "diffusers/PEFT", "XLabs", "BFL/ComfyUI"] {
        assert!(text.contains(&format!("layout      {layout}\n")), "{layout}: {text}");
    }
    assert!(text.contains("note        7 fused qkv/linear1 layers hold sd-scripts split_qkv parts"), "{text}");
    // One block table, a column per file, in model order.
    let table: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("Block norms")).skip(2).collect();
    let labels: Vec<&str> = table.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(labels, ["TE1", "TE3", "BASE", "D00", "D01", "S00", "S01", "S02", "FINAL"], "{text}");
    let xlabs_column = |row: &str| row.split("  ").filter(|c| !c.trim().is_empty()).nth(3).unwrap().trim().to_string();
    assert_eq!(xlabs_column(table[0]), "-", "XLabs has no text encoder: {}", table[0]);

    let out = lorakit(&["inspect".as_ref(), fixture("diffusers.safetensors").as_os_str(), "--json".as_ref()]);
    let (json, _) = ok(&out);
    let r: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r[0]["base_model"], "Flux");
    assert_eq!(r[0]["layout"], "diffusers/PEFT");
    let m = r[0]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "transformer.single_transformer_blocks.1.proj_mlp")
        .unwrap();
    assert_eq!((m["block"].as_str(), m["component"].as_str()), (Some("S01"), Some("transformer")));
}

#[test]
fn convert_between_kohya_and_diffusers_for_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for layout in ["xlabs", "bfl", "comfy", "diffusers", "diffusers_variants"] {
        let out = dir.path().join(format!("{layout}-kohya.safetensors"));
        let (_, err) = ok(&lorakit(&[
            "convert".as_ref(),
            fixture(&format!("{layout}.safetensors")).as_os_str(),
            out.as_os_str(),
            "--to".as_ref(),
            "kohya".as_ref(),
        ]));
        assert!(err.contains("(Flux,"), "{layout}: {err}");
        let names = module_names(&out);
        assert!(names.iter().all(|n| n.starts_with("lora_unet_") || n.starts_with("lora_te")), "{layout}: {names:?}");
    }
    let peft = dir.path().join("kohya-diffusers.safetensors");
    let (_, err) = ok(&lorakit(&[
        "convert".as_ref(),
        fixture("kohya.safetensors").as_os_str(),
        peft.as_os_str(),
        "--to".as_ref(),
        "diffusers".as_ref(),
    ]));
    // 29 DiT + 10 input/final + 12 CLIP-L + 14 T5 modules; 4 qkv → 12 parts, 3 linear1 → 12 parts.
    assert!(err.contains("converted 65 modules into 82 (Flux, kohya LoRA/LoCon → PEFT"), "{err}");
    assert!(err.contains("note: 14 T5-XXL modules"), "{err}");
    let names = module_names(&peft);
    assert!(names.contains(&"transformer.single_transformer_blocks.0.proj_mlp".to_string()), "{names:?}");
    assert!(names.contains(&"text_encoder.text_model.encoder.layers.1.mlp.fc2".to_string()));
}

#[test]
fn flux_refusals_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let convert = |input: &Path, to: &str, extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["convert".as_ref(), input.as_os_str(), out.as_os_str()];
        let head = ["--to", to];
        args.extend(head.iter().chain(extra).map(std::ffi::OsStr::new));
        lorakit(&args)
    };
    assert_refused(&convert(&fixture("diffusers.safetensors"), "peft", &[]), "already a PEFT/diffusers");
    assert_refused(&convert(&fixture("kohya.safetensors"), "kohya", &[]), "already a kohya");

    // A BFL control LoRA also replaces norm scales: not LoRA pairs, so not converted.
    let file = LoraFile::open(fixture("bfl.safetensors")).unwrap();
    let mut tensors: BTreeMap<String, Tensor> = file
        .tensor_names()
        .map(|k| (k.to_string(), Tensor::new(file.info(k).unwrap().shape.clone(), file.tensor_f32(k).unwrap())))
        .collect();
    tensors.insert(
        "diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale".into(),
        Tensor::new(vec![24], vec![1.0; 24]),
    );
    let control = dir.path().join("control.safetensors");
    write_lora(&control, &tensors, &BTreeMap::new(), Precision::F32).unwrap();
    assert_refused(
        &convert(&control, "kohya", &[]),
        "`diffusion_model.double_blocks.0.img_attn.norm.query_norm.scale`",
    );

    // A module no Flux layer has.
    let mut t = BTreeMap::new();
    t.insert(
        "lora_unet_double_blocks_0_img_attn_norm.lora_down.weight".to_string(),
        Tensor::new(vec![2, 4], vec![0.1; 8]),
    );
    t.insert(
        "lora_unet_double_blocks_0_img_attn_norm.lora_up.weight".to_string(),
        Tensor::new(vec![4, 2], vec![0.1; 8]),
    );
    let odd = dir.path().join("odd.safetensors");
    write_lora(&odd, &t, &BTreeMap::new(), Precision::F32).unwrap();
    assert_refused(
        &convert(&odd, "peft", &[]),
        "`lora_unet_double_blocks_0_img_attn_norm` is not a LoRA-targetable Flux module",
    );
    assert!(!out.exists());
}

#[test]
fn resize_and_merge_flux_files() {
    let dir = tempfile::tempdir().unwrap();
    let resized = dir.path().join("r4.safetensors");
    let (_, err) = ok(&lorakit(&[
        "resize".as_ref(),
        fixture("kohya_split_qkv.safetensors").as_os_str(),
        resized.as_os_str(),
        "--rank".as_ref(),
        "4".as_ref(),
    ]));
    assert!(err.contains("resized 29 modules") && err.contains("note: 7 fused layers"), "{err}");

    let merged = dir.path().join("merged.safetensors");
    let (_, err) = ok(&lorakit(&[
        "merge".as_ref(),
        fixture("kohya.safetensors").as_os_str(),
        "-o".as_ref(),
        merged.as_os_str(),
        fixture("diffusers.safetensors").as_os_str(),
        fixture("xlabs.safetensors").as_os_str(),
        "--rank".as_ref(),
        "4".as_ref(),
    ]));
    assert!(err.contains("merged 3 LoRAs") && err.contains("Flux"), "{err}");
    let names = module_names(&merged);
    assert!(names.contains(&"lora_unet_single_blocks_2_linear1".to_string()), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("lora_")), "{names:?}");
    let file = LoraFile::open(&merged).unwrap();
    // modelspec's architecture comes from the first input that has one (XLabs' flux-1-dev).
    assert_eq!(file.metadata().get("modelspec.architecture").map(String::as_str), Some("flux-1-dev/lora"));
    assert_eq!(file.metadata().get("ss_base_model_version").map(String::as_str), Some("flux1"));
}
