//! The whole Flux pipeline on the tiny f16 diffusers folder (`make_flux_tiny.py` → `flux_tiny/pipeline`):
//! loading every part from one folder or from separate files, text encoding as sd-scripts lays it
//! out, latents round-tripping through the autoencoder, and generation (size, determinism, CFG,
//! LoRA). The parts' numbers are checked against PyTorch in `flux.rs`, `t5.rs` and `clip.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::flux_pipeline::{FluxOptions, FluxPaths, FluxPipeline};
use lorakit_models::pipeline::{GenerateRequest, LoraSets};
use lorakit_nn::lora::{LoraModule, LoraSet};
use lorakit_nn::ForwardCtx;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn pipeline_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/flux_tiny/pipeline")).to_path_buf()
}

fn load(opts: &FluxOptions) -> Result<FluxPipeline, Box<dyn std::error::Error>> {
    Ok(FluxPipeline::load(&FluxPaths { model: pipeline_dir(), ..Default::default() }, opts, &Device::Cpu)?)
}

fn request(seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: "a red star".into(),
        steps: 2,
        width: 32,
        height: 24,
        seed,
        cfg_scale: 1.0,
        ..Default::default()
    }
}

#[test]
fn encodes_prompts_as_sd_scripts_lays_them_out() -> TestResult {
    let flux = load(&FluxOptions::default())?;
    assert_eq!(flux.t5_max_length(), 512, "dev's default t5xxl_max_token_length");
    let cond = flux.encode_prompts(&["a red star", ""], &ForwardCtx::default(), &ForwardCtx::default())?;
    assert_eq!(cond.t5.dims(), &[2, 512, 40]);
    assert_eq!(cond.pooled.dims(), &[2, 24]);
    assert!(cond.mask.is_none());
    let masked = load(&FluxOptions { apply_t5_attn_mask: true, t5_max_length: Some(16), ..Default::default() })?;
    let cond = masked.encode_prompts(&["a red star"], &ForwardCtx::default(), &ForwardCtx::default())?;
    assert_eq!(cond.t5.dims(), &[1, 16, 40]);
    let mask: Vec<f32> = cond.mask.ok_or("mask")?.flatten_all()?.to_vec1()?;
    // "a red star" + </s> are real tokens, the rest padding.
    assert!(mask[0] == 1.0 && mask[15] == 0.0 && mask.iter().sum::<f32>() >= 4.0, "{mask:?}");
    Ok(())
}

#[test]
fn latents_round_trip_and_shapes() -> TestResult {
    let flux = load(&FluxOptions::default())?;
    assert_eq!(flux.pixels_per_token(), 8);
    let pixels = Tensor::rand(-1f32, 1f32, (1, 3, 24, 32), &Device::Cpu)?;
    let latents = flux.encode_images(&pixels, None)?;
    assert_eq!(latents.dims(), &[1, 16, 6, 8]);
    let image = flux.decode_to_rgb(&latents)?;
    assert_eq!((image.width, image.height), (32, 24));
    Ok(())
}

#[test]
fn generates_deterministically_with_cfg_and_lora() -> TestResult {
    let flux = load(&FluxOptions::default())?;
    let mut steps = 0;
    let a = flux.generate(&request(1), None, &mut |_, _| steps += 1)?;
    assert_eq!(steps, 2);
    assert_eq!((a.width, a.height, a.pixels.len()), (32, 24, 32 * 24 * 3));
    assert_eq!(a, flux.generate(&request(1), None, &mut |_, _| {})?, "same seed, same image");
    assert_ne!(a, flux.generate(&request(2), None, &mut |_, _| {})?, "another seed, another image");
    let cfg = GenerateRequest { cfg_scale: 3.0, negative: Some("blue".into()), ..request(1) };
    assert_ne!(a, flux.generate(&cfg, None, &mut |_, _| {})?, "true CFG changes the image");
    let guided = GenerateRequest { guidance: 1.0, ..request(1) };
    assert_ne!(a, flux.generate(&guided, None, &mut |_, _| {})?, "embedded guidance reaches dev");

    // A LoRA on every transformer target moves the image; an all-zero one does not.
    let components = flux.lora_components();
    let sets = |scale: f64| -> Result<LoraSets, Box<dyn std::error::Error>> {
        let mut set = LoraSet::new(0, &Device::Cpu)?;
        for t in components[0].targets {
            let down = (Tensor::ones((4, t.in_dim), DType::F32, &Device::Cpu)? * 0.05)?;
            let up = (Tensor::ones((t.out_dim, 4), DType::F32, &Device::Cpu)? * scale)?;
            let module = LoraModule::from_weights(t.kohya_name("lora_unet"), t.kind, down, up, Some(4.0), false)?;
            set.insert(t.path.clone(), module);
        }
        let empty = || LoraSet::new(0, &Device::Cpu).map(Arc::new);
        Ok(LoraSets { sets: vec![Arc::new(set), empty()?, empty()?] })
    };
    assert_eq!(a, flux.generate(&request(1), Some(&sets(0.0)?), &mut |_, _| {})?);
    assert_ne!(a, flux.generate(&request(1), Some(&sets(0.05)?), &mut |_, _| {})?);

    let odd = GenerateRequest { width: 36, ..request(1) };
    let err = flux.generate(&odd, None, &mut |_, _| {}).expect_err("36 px").to_string();
    assert!(err.contains("multiple"), "{err}");
    Ok(())
}

#[test]
fn separate_files_and_missing_parts() -> TestResult {
    let dir = pipeline_dir();
    let paths = FluxPaths {
        model: dir.join("transformer/diffusion_pytorch_model.safetensors"),
        clip_l: Some(dir.join("text_encoder")),
        t5xxl: Some(dir.join("text_encoder_2")),
        ae: Some(dir.join("vae")),
    };
    // A single diffusers-keyed transformer file has no config.json: the rotary axes of a
    // non-Flux.1 head width cannot be known, and the error says so.
    let err = FluxPipeline::load(&paths, &FluxOptions::default(), &Device::Cpu).err().expect("axes").to_string();
    assert!(err.contains("rotary axes"), "{err}");
    let only_model = FluxPaths { model: paths.model.clone(), ..Default::default() };
    let err = FluxPipeline::load(&only_model, &FluxOptions::default(), &Device::Cpu).err().expect("clip").to_string();
    assert!(err.contains("clip_l") && err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    for length in [0, 513, 1 << 30] {
        let opts = FluxOptions { t5_max_length: Some(length), ..FluxOptions::default() };
        let err = FluxPipeline::load(&FluxPaths { model: dir.clone(), ..Default::default() }, &opts, &Device::Cpu)
            .err()
            .expect("length out of range")
            .to_string();
        assert!(err.contains("t5xxl_max_token_length") && err.contains("1 to 512"), "{err}");
    }
    let with_parts = FluxPaths { model: dir.join("transformer"), ..paths };
    let flux = FluxPipeline::load(&with_parts, &FluxOptions::default(), &Device::Cpu)?;
    assert!(flux.transformer().config().guidance_embed);
    Ok(())
}
