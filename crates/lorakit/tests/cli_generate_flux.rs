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
    // Block swapping streams blocks to the device: the same image.
    let swapped = dir.path().join("swapped.png");
    let mut args = vec!["generate", "--model", folder.to_str().unwrap(), "-o", swapped.to_str().unwrap()];
    args.extend(common);
    args.extend(["--blocks-to-swap", "2"]);
    let out = lorakit(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image::open(&swapped).unwrap().to_rgb8().into_raw(), img.to_rgb8().into_raw());

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
    for (extra, expected) in [
        (&["--sampler", "ddim"][..], "--sampler does not apply"),
        (&["--clip-skip", "2"][..], "do not apply to Flux"),
        (&["--vae", "sdxl_vae.safetensors"][..], "give a Flux model's autoencoder with --ae"),
    ] {
        let mut args =
            vec!["generate", "--model", folder.to_str().unwrap(), "--prompt", "x", "-o", out_png.to_str().unwrap()];
        args.extend(extra);
        let out = lorakit(&args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    // A FIFO given as the model is refused at once, not read (reading would block).
    let fifo = dir.path().join("flux1-dev.safetensors");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out =
        lorakit(&["generate", "--model", fifo.to_str().unwrap(), "--prompt", "x", "-o", out_png.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a regular file"), "{}", stderr(&out));
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
    assert!(stderr(&out).contains("--clip-l is for Flux and SD3"), "{}", stderr(&out));
    assert!(!out_png.exists());
}

/// The pixels of a PNG.
fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8().into_raw()
}

/// kohya's Flux module name → BFL's module path (`lora_unet_double_blocks_0_img_attn_qkv` →
/// `double_blocks.0.img_attn.qkv`).
fn bfl_path(module: &str) -> String {
    let rest = module.strip_prefix("lora_unet_").expect("a transformer module");
    let mut parts: Vec<&str> = rest.split('_').collect();
    let mut out = Vec::new();
    // blocks and index
    out.push(format!("{}_{}.{}", parts[0], parts[1], parts[2]));
    parts.drain(..3);
    let tail = parts.join("_");
    let tail = match tail.as_str() {
        "modulation_lin" => "modulation.lin".to_string(),
        t if t.ends_with("_mod_lin") => t.replace("_mod_lin", "_mod.lin"),
        t if t.contains("_attn_") => t.replacen("_attn_", "_attn.", 1),
        t if t.contains("_mlp_") => t.replacen("_mlp_", "_mlp.", 1),
        t => t.to_string(),
    };
    out.push(tail);
    out.join(".")
}

#[test]
fn applies_flux_loras_in_kohya_diffusers_and_comfyui_layouts_alike() {
    let dir = tempfile::tempdir().unwrap();
    let folder = pipeline("");
    let kohya = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference/trained_lora/tiny_flux_trained.safetensors");
    // The same 2-step 32×32 drawing, with the given LoRA file or none.
    let draw = |lora: Option<&Path>, out: &str| {
        let png = dir.path().join(out);
        let mut args = vec!["generate", "--model", folder.to_str().unwrap(), "--prompt", "chkbrd"];
        args.extend(["--width", "32", "--height", "32", "--steps", "2", "-o", png.to_str().unwrap()]);
        if let Some(lora) = lora {
            args.extend(["--lora", lora.to_str().unwrap()]);
        }
        let out = lorakit(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        pixels(&png)
    };
    let base = draw(None, "base.png");
    let with_kohya = draw(Some(&kohya), "kohya.png");
    assert_ne!(with_kohya, base, "the LoRA changes the image");

    // diffusers / PEFT names, as `lorakit convert --to diffusers` writes them (q/k/v split).
    let diffusers = dir.path().join("diffusers.safetensors");
    let out = lorakit(&["convert", kohya.to_str().unwrap(), diffusers.to_str().unwrap(), "--to", "diffusers"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let with_diffusers = draw(Some(&diffusers), "diffusers.png");
    let close = |a: &[u8], b: &[u8]| a.iter().zip(b).all(|(x, y)| x.abs_diff(*y) <= 1);
    assert!(close(&with_diffusers, &with_kohya), "diffusers layout draws what the kohya file draws");

    // ComfyUI / BFL names (`diffusion_model.<BFL path>.lora_down.weight`), transformer modules only.
    let tensors = candle_core::safetensors::load(&kohya, &candle_core::Device::Cpu).unwrap();
    let unet_only: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.iter().filter(|(k, _)| k.starts_with("lora_unet_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let comfy: std::collections::HashMap<String, candle_core::Tensor> = unet_only
        .iter()
        .map(|(k, v)| {
            let (module, suffix) = k.split_once('.').unwrap();
            (format!("diffusion_model.{}.{suffix}", bfl_path(module)), v.clone())
        })
        .collect();
    let (kohya_unet, comfy_file) = (dir.path().join("kohya_unet.safetensors"), dir.path().join("comfy.safetensors"));
    candle_core::safetensors::save(&unet_only, &kohya_unet).unwrap();
    candle_core::safetensors::save(&comfy, &comfy_file).unwrap();
    assert_eq!(
        draw(Some(&comfy_file), "comfy.png"),
        draw(Some(&kohya_unet), "kohya_unet.png"),
        "ComfyUI layout = kohya"
    );
}
