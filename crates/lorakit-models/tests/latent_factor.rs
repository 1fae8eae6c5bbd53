//! The VAE's pixels per latent cell come from its config (2^(levels − 1)), not a constant 8:
//! a model whose VAE has three levels generates the size asked for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::pipeline::{GenerateRequest, StableDiffusion};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// The quickstart model with its four-level VAE ([16, 32, 32, 32]) cut to three levels
/// ([16, 32, 32]): encoder blocks 0–2 with block 2's downsampler dropped, decoder blocks 0, 1 and
/// the last one (32 → 16, no upsampler) renumbered 2.
fn three_level_model(dir: &Path) -> PathBuf {
    let src = repo("examples/quickstart/tiny-sd15");
    let dst = dir.join("tiny-3-level-vae");
    for part in ["unet", "text_encoder", "scheduler", "vae"] {
        std::fs::create_dir_all(dst.join(part)).unwrap();
        for entry in std::fs::read_dir(src.join(part)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dst.join(part).join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(src.join("model_index.json"), dst.join("model_index.json")).unwrap();
    let config_path = dst.join("vae/config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["block_out_channels"] = serde_json::json!([16, 32, 32]);
    config["down_block_types"] = serde_json::json!(["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"]);
    config["up_block_types"] = serde_json::json!(["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]);
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let weights = dst.join("vae/diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let kept: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter_map(|(name, t)| {
            let dropped = ["encoder.down_blocks.3.", "encoder.down_blocks.2.downsamplers.", "decoder.up_blocks.2."];
            if dropped.iter().any(|p| name.starts_with(p)) {
                return None;
            }
            let name = match name.strip_prefix("decoder.up_blocks.3.") {
                Some(rest) => format!("decoder.up_blocks.2.{rest}"),
                None => name,
            };
            Some((name, t))
        })
        .collect();
    candle_core::safetensors::save(&kept, &weights).unwrap();
    dst
}

fn generate(model: &StableDiffusion, width: usize, height: usize) -> (usize, usize) {
    let request = GenerateRequest { prompt: "a chessboard".into(), width, height, steps: 2, ..Default::default() };
    let image = model.generate(&request, None, &mut |_, _| {}).unwrap();
    assert_eq!(image.pixels.len(), image.width * image.height * 3);
    (image.width, image.height)
}

#[test]
fn generated_images_have_the_size_asked_for_whatever_the_vae_depth() {
    let dir = tempfile::tempdir().unwrap();
    let four = StableDiffusion::load(&repo("examples/quickstart/tiny-sd15"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(four.latent_factor(), 8);
    assert_eq!(generate(&four, 64, 48), (64, 48));

    let three = StableDiffusion::load(&three_level_model(dir.path()), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(three.latent_factor(), 4);
    assert_eq!(generate(&three, 64, 64), (64, 64), "a constant 8 gave 32×32 here");
    assert_eq!(generate(&three, 40, 56), (40, 56));
    // The VAE encodes to the same cell size it decodes from.
    let pixels = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let latents = three.vae.encode(&pixels).unwrap().mean().clone();
    assert_eq!(latents.dims(), &[1, 4, 16, 16]);
}
