//! `lorakit inspect`, `convert`, `resize` and `merge` on SD3 / SD3.5 LoRAs as users publish them
//! (tests/fixtures/reference/sd3_lora: kohya, split_qkv, SAI/ComfyUI, diffusers and OneTrainer
//! layouts of one tiny SD3.5-Medium-shaped model), and the refused inputs (one-line error, exit 2).

use lorakit_lora::keys;
use lorakit_lora::safetensors_file::{write_lora, LoraFile, Precision, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd3_lora").join(name)
}

fn lorakit<S: AsRef<OsStr>>(args: &[S]) -> Output {
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

fn convert(input: &Path, output: &Path, to: &str, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec!["convert".as_ref(), input.as_os_str(), output.as_os_str(), "--to".as_ref()];
    args.push(to.as_ref());
    args.extend(extra.iter().map(OsStr::new));
    lorakit(&args)
}

#[test]
fn inspect_shows_sd3_blocks_for_every_layout() {
    let files: Vec<PathBuf> = ["kohya", "diffusers", "comfy", "onetrainer", "kohya_split_qkv"]
        .iter()
        .map(|l| fixture(&format!("{l}.safetensors")))
        .collect();
    let mut args: Vec<&OsStr> = vec!["inspect".as_ref()];
    args.extend(files.iter().map(|p| p.as_os_str()));
    let (text, _) = ok(&lorakit(&args));
    assert_eq!(text.matches("base model  SD3 (3.5 Medium)\n").count(), 5, "{text}");
    for layout in
        ["kohya/sd-scripts", "diffusers/PEFT", "SAI/ComfyUI", "kohya/sd-scripts + kohya-style diffusers names"]
    {
        assert!(text.contains(&format!("layout      {layout}\n")), "{layout}: {text}");
    }
    assert!(text.contains("kinds       conv 2x2 ×1, linear ×74\n"), "{text}");
    assert!(text.contains("note        7 fused qkv layers hold sd-scripts split_qkv parts"), "{text}");
    // One block table, a column per file, in model order.
    let table: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("Block norms")).skip(2).collect();
    let labels: Vec<&str> = table.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(labels, ["TE1", "TE2", "TE3", "BASE", "J00", "J01", "J02", "FINAL"], "{text}");

    let out = lorakit(&["inspect".as_ref(), fixture("diffusers.safetensors").as_os_str(), "--json".as_ref()]);
    let (json, _) = ok(&out);
    let r: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r[0]["layout"], "diffusers/PEFT");
    let module = |name: &str| r[0]["modules"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone();
    let m = module("transformer.transformer_blocks.0.attn2.to_q");
    assert_eq!((m["block"].as_str(), m["component"].as_str()), (Some("J00"), Some("UNet")));
    let m = module("text_encoder_2.text_model.encoder.layers.1.mlp.fc1");
    assert_eq!((m["block"].as_str(), m["component"].as_str()), (Some("TE2"), Some("TE2")));
    assert_eq!(module("transformer.pos_embed.proj")["kind"], "conv 2x2");
}

#[test]
fn convert_between_kohya_and_diffusers_for_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    for layout in ["comfy", "diffusers", "onetrainer"] {
        let out = dir.path().join(format!("{layout}-kohya.safetensors"));
        let (_, err) = ok(&convert(&fixture(&format!("{layout}.safetensors")), &out, "kohya", &[]));
        assert!(err.contains("(SD3,"), "{layout}: {err}");
        let names = module_names(&out);
        assert!(names.iter().all(|n| n.starts_with("lora_unet_") || n.starts_with("lora_te")), "{layout}: {names:?}");
        assert!(names.contains(&"lora_unet_joint_blocks_0_x_block_attn2_qkv".to_string()), "{layout}");
    }
    let peft = dir.path().join("kohya-diffusers.safetensors");
    let (_, err) = ok(&convert(&fixture("kohya.safetensors"), &peft, "diffusers", &[]));
    // 37 MMDiT + 24 CLIP + 14 T5 modules; 7 qkv → 21 parts.
    assert!(err.contains("converted 75 modules into 89 (SD3, kohya LoRA/LoCon → PEFT"), "{err}");
    assert!(err.contains("note: 14 T5-XXL modules are written as text_encoder_3"), "{err}");
    let names = module_names(&peft);
    for name in [
        "transformer.transformer_blocks.2.norm1_context.linear",
        "transformer.transformer_blocks.0.attn.add_k_proj",
        "transformer.pos_embed.proj",
        "text_encoder_2.text_model.encoder.layers.1.mlp.fc2",
    ] {
        assert!(names.contains(&name.to_string()), "{name}: {names:?}");
    }

    // Names Flux and SD3 share say nothing of the model: --family sd3 decides.
    let mut t = BTreeMap::new();
    t.insert("transformer.proj_out.lora_A.weight".to_string(), Tensor::new(vec![2, 16], vec![0.1; 32]));
    t.insert("transformer.proj_out.lora_B.weight".to_string(), Tensor::new(vec![16, 2], vec![0.1; 32]));
    let bare = dir.path().join("bare.safetensors");
    write_lora(&bare, &t, &BTreeMap::new(), Precision::F32).unwrap();
    let out = dir.path().join("bare-kohya.safetensors");
    assert_refused(&convert(&bare, &out, "kohya", &[]), "--family sd15, sdxl, sd3 or flux");
    ok(&convert(&bare, &out, "kohya", &["--family", "sd3"]));
    assert_eq!(module_names(&out), ["lora_unet_final_layer_linear"]);
}

#[test]
fn sd3_refusals_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    assert_refused(&convert(&fixture("diffusers.safetensors"), &out, "peft", &[]), "already a PEFT/diffusers");
    assert_refused(&convert(&fixture("kohya.safetensors"), &out, "kohya", &[]), "already a kohya");
    // A module no SD3 layer has (the q norm is not a LoRA target).
    let mut t = BTreeMap::new();
    for name in ["lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_joint_blocks_0_x_block_attn_ln_q"] {
        t.insert(format!("{name}.lora_down.weight"), Tensor::new(vec![2, 4], vec![0.1; 8]));
        t.insert(format!("{name}.lora_up.weight"), Tensor::new(vec![12, 2], vec![0.1; 24]));
    }
    let odd = dir.path().join("odd.safetensors");
    write_lora(&odd, &t, &BTreeMap::new(), Precision::F32).unwrap();
    assert_refused(
        &convert(&odd, &out, "peft", &[]),
        "`lora_unet_joint_blocks_0_x_block_attn_ln_q` is not a LoRA-targetable SD3 module",
    );
    assert!(!out.exists());
}

#[test]
fn resize_and_merge_sd3_files() {
    let dir = tempfile::tempdir().unwrap();
    let [kohya, split, comfy, diffusers, onetrainer] =
        ["kohya", "kohya_split_qkv", "comfy", "diffusers", "onetrainer"].map(|l| fixture(&format!("{l}.safetensors")));
    let resized = dir.path().join("r4.safetensors");
    let args: [&OsStr; 5] =
        ["resize".as_ref(), split.as_os_str(), resized.as_os_str(), "--rank".as_ref(), "4".as_ref()];
    let (_, err) = ok(&lorakit(&args));
    assert!(err.contains("resized 29 modules") && err.contains("note: 7 fused layers"), "{err}");
    let file = LoraFile::open(&resized).unwrap();
    assert_eq!(file.info("lora_unet_joint_blocks_0_x_block_attn2_qkv.lora_up.weight").unwrap().shape, [48, 4]);

    // A diffusers file keeps its names and its patch-embedding conv shapes.
    let resized = dir.path().join("d2.safetensors");
    let args: [&OsStr; 5] =
        ["resize".as_ref(), diffusers.as_os_str(), resized.as_os_str(), "--rank".as_ref(), "2".as_ref()];
    ok(&lorakit(&args));
    let file = LoraFile::open(&resized).unwrap();
    assert_eq!(file.info("transformer.pos_embed.proj.lora_A.weight").unwrap().shape, [2, 4, 2, 2]);

    // Files of four layouts merge layer by layer under kohya names.
    let merged = dir.path().join("merged.safetensors");
    let args: [&OsStr; 9] = [
        "merge".as_ref(),
        kohya.as_os_str(),
        "-o".as_ref(),
        merged.as_os_str(),
        diffusers.as_os_str(),
        comfy.as_os_str(),
        onetrainer.as_os_str(),
        "--rank".as_ref(),
        "4".as_ref(),
    ];
    let (_, err) = ok(&lorakit(&args));
    assert!(err.contains("merged 4 LoRAs (75 modules, SD3)"), "{err}");
    let names = module_names(&merged);
    assert!(names.contains(&"lora_unet_joint_blocks_2_context_block_adaLN_modulation_1".to_string()), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("lora_")), "{names:?}");
    let file = LoraFile::open(&merged).unwrap();
    assert_eq!(file.info("lora_unet_x_embedder_proj.lora_down.weight").unwrap().shape, [4, 4, 2, 2]);
    // modelspec's architecture comes from the first input that has one (the ComfyUI file's).
    let md = file.metadata();
    assert_eq!(md.get("modelspec.architecture").map(String::as_str), Some("stable-diffusion-3-5-medium/lora"));
    assert_eq!(md.get("ss_base_model_version").map(String::as_str), Some("sd3"));
}
