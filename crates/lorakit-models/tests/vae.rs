//! The SD VAE against PyTorch/diffusers on the tiny fixture (encode moments, posterior sample,
//! decode), its key/shape maps (tiny file, full-size SD1.5), and that it records no graph.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use lorakit_models::vae::{AutoencoderKL, AutoencoderKLConfig};
use lorakit_models::Weights;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/sd15_tiny")).join(rel)
}

fn tiny_config() -> Result<AutoencoderKLConfig, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(fixture("diffusers/vae/config.json"))?)?)
}

fn tiny_vae() -> Result<(AutoencoderKL, Weights), Box<dyn std::error::Error>> {
    let weights = Weights::from_safetensors(
        &fixture("diffusers/vae/diffusion_pytorch_model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )?;
    let vae = AutoencoderKL::new(weights.view(""), &tiny_config()?)?;
    weights.check_complete()?;
    Ok((vae, weights))
}

/// max |a − b| / max |b|.
fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    Ok(diff / scale.max(1e-30))
}

#[test]
fn tiny_vae_matches_diffusers() -> TestResult {
    let (vae, weights) = tiny_vae()?;
    assert!(weights.unused().is_empty(), "unread keys: {:?}", weights.unused());
    assert_eq!(vae.config().scaling_factor, 0.18215);
    let io = candle_core::safetensors::load(fixture("io_vae.safetensors"), &Device::Cpu)?;
    let posterior = vae.encode(&io["image"])?;
    let checks = [
        ("latent_mean", posterior.mean().clone()),
        ("latent_logvar", posterior.logvar().clone()),
        ("latent_sample", posterior.sample_with_noise(&io["posterior_eps"])?),
        ("decoded", vae.decode(&io["latent_in"])?),
    ];
    for (name, ours) in checks {
        let err = rel_error(&ours, &io[name])?;
        eprintln!("{name}: relative error {err:.3e}");
        assert!(err <= 1e-4, "{name}: relative error {err:.3e}");
    }
    Ok(())
}

#[test]
fn vae_records_no_graph_and_rejects_bad_shapes() -> TestResult {
    let (vae, _) = tiny_vae()?;
    let image = Var::from_tensor(&Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu)?)?;
    let posterior = vae.encode(image.as_tensor())?;
    assert!(!posterior.mean().track_op() && !posterior.logvar().track_op());
    let latents = Var::from_tensor(&Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu)?)?;
    let decoded = vae.decode(latents.as_tensor())?;
    assert_eq!(decoded.dims(), &[1, 3, 16, 16]);
    assert!(!decoded.track_op());
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    assert_eq!(posterior.sample(&mut rng)?.dims(), &[1, 4, 2, 2]);

    assert!(vae.encode(&Tensor::zeros((1, 4, 16, 16), DType::F32, &Device::Cpu)?).is_err());
    assert!(vae.decode(&Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu)?).is_err());
    assert!(vae.decode(&Tensor::zeros((4, 2, 2), DType::F32, &Device::Cpu)?).is_err());
    Ok(())
}

#[test]
fn parameter_shapes_match_diffusers() -> TestResult {
    let tiny = tiny_config()?.parameter_shapes();
    let file =
        candle_core::safetensors::load(fixture("diffusers/vae/diffusion_pytorch_model.safetensors"), &Device::Cpu)?;
    let file_map: BTreeMap<String, Vec<usize>> = file.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
    assert_eq!(tiny.len(), file_map.len(), "duplicate keys in parameter_shapes");
    assert_eq!(tiny.into_iter().collect::<BTreeMap<_, _>>(), file_map);

    let full: Value = serde_json::from_str(&std::fs::read_to_string(fixture("sd15_full_shapes.json"))?)?;
    let cfg: AutoencoderKLConfig = serde_json::from_value(full["configs"]["vae"].clone())?;
    assert_eq!(cfg, AutoencoderKLConfig::sd15());
    let expected: BTreeMap<String, Vec<usize>> = serde_json::from_value(full["diffusers"]["vae"].clone())?;
    let ours = AutoencoderKLConfig::sd15().parameter_shapes();
    assert_eq!(ours.len(), 248);
    let total: usize = ours.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(ours.into_iter().collect::<BTreeMap<_, _>>(), expected);
    assert_eq!(total, 83_653_863);
    Ok(())
}
