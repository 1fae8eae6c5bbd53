//! `lorakit generate` end to end on the tiny SD1.5-shaped reference model
//! (tests/fixtures/reference/sd15_tiny), with sd-scripts' LoRA from the same fixture.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd15_tiny").join(rel)
}

fn lorakit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

/// The tiny fixture model with its text encoder's vocabulary widened to CLIP's 49,408 tokens,
/// so real prompts tokenise into valid ids (the fixture itself only has 1,000).
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    for sub in ["unet", "vae", "text_encoder"] {
        std::fs::create_dir_all(model.join(sub)).unwrap();
    }
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        std::fs::copy(fixture(&format!("diffusers/{f}")), model.join(f)).unwrap();
    }
    let mut te =
        candle_core::safetensors::load(fixture("diffusers/text_encoder/model.safetensors"), &Device::Cpu).unwrap();
    let key = "text_model.embeddings.token_embedding.weight";
    let small = te[key].to_dtype(DType::F32).unwrap();
    let extra = Tensor::randn(0f32, 0.5, (49408 - small.dim(0).unwrap(), small.dim(1).unwrap()), &Device::Cpu).unwrap();
    te.insert(key.to_string(), Tensor::cat(&[&small, &extra], 0).unwrap());
    candle_core::safetensors::save(&te, model.join("text_encoder/model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("diffusers/text_encoder/config.json")).unwrap()).unwrap();
    config["vocab_size"] = 49408.into();
    config["bos_token_id"] = 49406.into();
    config["eos_token_id"] = 49407.into();
    config["pad_token_id"] = 49407.into();
    std::fs::write(model.join("text_encoder/config.json"), config.to_string()).unwrap();
    model
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

fn generate(model: &Path, extra: &[&str], out: &Path) -> Output {
    let mut args: Vec<String> = vec!["generate".into(), "--model".into(), model.display().to_string()];
    for (flag, default) in [("--width", "64"), ("--height", "48"), ("--steps", "3")] {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), default.to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-o".to_string(), out.display().to_string()]);
    lorakit(&args)
}

#[test]
fn generates_deterministic_images_with_and_without_lora() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let lora = fixture("lora/lora.safetensors");
    let lora_arg = format!("{}:0.7", lora.display());
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    let c = dir.path().join("c.png");
    let d = dir.path().join("d.png");
    for (out, extra) in [
        (&a, vec!["--prompt", "a photo of a cat", "--lora", &lora_arg, "--seed", "1"]),
        (&b, vec!["--prompt", "a photo of a cat", "--lora", &lora_arg, "--seed", "1"]),
        (&c, vec!["--prompt", "a photo of a cat", "--seed", "1"]),
        (
            &d,
            vec![
                "--prompt",
                "a photo of a cat",
                "--lora",
                &lora_arg,
                "--seed",
                "2",
                "--sampler",
                "dpmpp_2m_karras",
                "--negative",
                "blurry",
            ],
        ),
    ] {
        let o = generate(&model, &extra, out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(png_size(out), (64, 48));
    }
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "same seed and LoRA must give the same image");
    assert_ne!(bytes(&a), bytes(&c), "the LoRA must change the image");
    assert_ne!(bytes(&a), bytes(&d));
}

#[test]
fn without_a_size_a_diffusers_folder_is_drawn_at_its_own_size() {
    // As diffusers' pipelines do: the UNet's sample_size × the VAE's factor, 16 × 8 here (not
    // SD 1.5's 512, which would take this tiny model 16 times longer to draw).
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("native.png");
    let m = model.display().to_string();
    let o =
        lorakit(&["generate", "--model", &m, "--prompt", "a cat", "--steps", "2", "-o", &out.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(png_size(&out), (128, 128));
}

#[test]
fn grid_has_a_row_per_lora_and_a_column_per_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let lora = fixture("lora/lora.safetensors").display().to_string();
    let out = dir.path().join("grid.png");
    let half = format!("{lora}:0.5");
    let o = generate(
        &model,
        &[
            "--grid",
            "--grid-baseline",
            "--lora",
            &lora,
            "--lora",
            &half,
            "--prompt",
            "a cat",
            "--prompt",
            "a dog",
            "--sampler",
            "euler_a",
        ],
        &out,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w, h) = png_size(&out);
    // 3 rows (baseline + 2 LoRAs) × 2 columns of 64×48 cells, plus label margins.
    assert!(w > 2 * 64 && h > 3 * 48, "{w}×{h}");
    let img = image::open(&out).unwrap().to_rgb8();
    // The labels put dark pixels into the white top-left margin.
    assert!(img.enumerate_pixels().any(|(x, y, p)| x < 40 && y < 40 && p.0[0] < 100));
}

#[test]
fn bad_requests_fail_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("x.png");
    let check = |extra: &[&str], model: &Path, needle: &str| {
        let o = generate(model, extra, &out);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: expected {needle:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    check(&["--prompt", "x", "--width", "60"], &model, "multiple of 8");
    check(&["--prompt", "x", "--prompt", "y"], &model, "--grid");
    check(&["--prompt", "x", "--sampler", "plms"], &model, "euler");
    check(&["--prompt", "x"], &dir.path().join("missing.safetensors"), "missing.safetensors");
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 not really").unwrap();
    check(&["--prompt", "x"], &ckpt, "pickle");
    // A LoRA whose module names do not exist in this model.
    let foreign = dir.path().join("foreign.safetensors");
    let mut t = std::collections::HashMap::new();
    t.insert(
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight".to_string(),
        Tensor::zeros((4, 640), DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight".to_string(),
        Tensor::zeros((640, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &foreign).unwrap();
    check(&["--prompt", "x", "--lora", &foreign.display().to_string()], &model, "lora_unet_input_blocks_4_1_proj_in");
    assert!(!out.exists(), "no output may be written for a failed request");
}

#[test]
fn overlong_prompt_warns_and_still_generates() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("long.png");
    let prompt = "masterpiece, ".repeat(120);
    let o = generate(&model, &["--prompt", &prompt, "--steps", "1"], &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("225 tokens"), "{err}");
    assert_eq!(png_size(&out), (64, 48));
}

use crate::common;

/// A LoRA with NaN/Inf weights would make a black image: generate refuses it before sampling,
/// naming the modules, exit ≠ 0, no PNG.
#[test]
fn non_finite_lora_is_refused_naming_its_modules() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let bad = dir.path().join("nan.safetensors");
    let modules = common::poisoned_lora(&fixture("lora/lora.safetensors"), &bad, 1);
    let out = dir.path().join("x.png");
    let o = generate(&model, &["--prompt", "x", "--lora", &format!("{}:0.8", bad.display())], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("nan.safetensors") && err.contains("1 module holds NaN/Inf") && err.contains(&modules[0]),
        "{err}"
    );
    assert!(err.contains("black image"), "{err}");
    assert!(!out.exists(), "no PNG is written");
}

#[test]
fn vae_flag_swaps_the_decoder_and_refuses_other_families_vaes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let swap = |rel: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference").join(rel).display().to_string()
    };
    let run = |extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let o = generate(&model, &[&["--prompt", "a cat", "--seed", "3"], extra].concat(), &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        image::open(&out).unwrap().to_rgb8().into_raw()
    };
    let own = run(&[], "own.png");
    let ldm = run(&["--vae", &swap("vae_swap/ldm_bare.safetensors")], "ldm.png");
    let folder = run(&["--vae", &swap("vae_swap/diffusers")], "folder.png");
    assert_ne!(own, ldm, "the given VAE decodes the image");
    assert_eq!(ldm, folder, "the same VAE in either layout draws the same image");

    let o =
        generate(&model, &["--prompt", "a cat", "--vae", &swap("sd3_tiny/pipeline/vae")], &dir.path().join("x.png"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("16 latent channels"), "{err}");
    assert!(!dir.path().join("x.png").exists());
}
