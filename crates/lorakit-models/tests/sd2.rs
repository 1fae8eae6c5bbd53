//! SD 2.x against PyTorch/diffusers/transformers (fixture: `tools/reference/make_sd2_tiny.py` →
//! `tests/fixtures/reference/sd2_tiny/`): a tiny UNet with SD 2's linear projections and
//! per-level head counts, a tiny GELU (OpenCLIP-style) text encoder, v-prediction declared by the
//! folder's scheduler config, the same model as one LDM file with OpenCLIP keys, and the
//! full-size SD 2.1 configurations and key map.
//!
//! Fidelity: fp32, relative error max |Δ| / max |reference| ≤ 1e-4.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::checkpoint::{load_sd_checkpoint, Component, KeyFate, LdmKeyMap, ModelFamily};
use lorakit_models::clip::{ClipActivation, ClipTextConfig};
use lorakit_models::pipeline::StableDiffusion;
use lorakit_models::schedule::Prediction;
use lorakit_models::unet_2d::UNet2DConditionModelConfig;
use lorakit_nn::ForwardCtx;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/sd2_tiny")).join(rel)
}

fn io(name: &str) -> Result<std::collections::HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    Ok(candle_core::safetensors::load(fixture(name), &Device::Cpu)?)
}

/// max |a − b| / max |b|.
fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

fn tiny_model() -> Result<StableDiffusion, Box<dyn std::error::Error>> {
    Ok(StableDiffusion::load(&fixture("diffusers"), DType::F32, &Device::Cpu)?)
}

#[test]
fn tiny_sd2_folder_is_sd2_and_declares_v_prediction() -> TestResult {
    let model = tiny_model()?;
    assert_eq!(model.family, ModelFamily::Sd2);
    assert_eq!(model.prediction, Prediction::VPrediction);
    let (declared, source) = model.declared_prediction.as_ref().ok_or("no declared prediction")?;
    assert_eq!(*declared, Prediction::VPrediction);
    assert!(source.contains("scheduler_config.json") && source.contains("v_prediction"), "{source}");
    Ok(())
}

#[test]
fn tiny_sd2_unet_matches_diffusers() -> TestResult {
    let model = tiny_model()?;
    let io = io("io_unet.safetensors")?;
    let ctx = ForwardCtx::default();
    // Case b: a 16×24 latent and a 154-token (two-chunk) context.
    for (suffix, ehs) in [("", "encoder_hidden_states"), ("_b", "ehs_b")] {
        let get = |k: &str| io.get(k).cloned().ok_or_else(|| format!("io_unet lacks {k}"));
        let out = model.unet.forward(
            &get(&format!("sample{suffix}"))?,
            &get(&format!("timestep{suffix}"))?,
            &get(ehs)?,
            &ctx,
        )?;
        let err = rel_error(&out, &get(&format!("out{suffix}"))?)?;
        eprintln!("case '{suffix}': relative error {err:.3e}");
        assert!(err <= 1e-4, "case '{suffix}': relative error {err:.3e}");
    }
    Ok(())
}

#[test]
fn tiny_sd2_text_encoder_matches_transformers() -> TestResult {
    let model = tiny_model()?;
    let io = io("io_text_encoder.safetensors")?;
    let out = model.clip_text_encoder().unwrap().forward(&io["input_ids"], &ForwardCtx::default())?;
    // The cut encoder's output is what SD 2 conditions on (the script checks it equals the full
    // encoder's penultimate layer through the final norm).
    let err = rel_error(&out.last_hidden_state, &io["last_hidden_state"])?;
    assert!(err <= 1e-4, "relative error {err:.3e}");
    Ok(())
}

#[test]
fn tiny_sd2_single_file_holds_the_folder_model() -> TestResult {
    let file = load_sd_checkpoint(&fixture("single_file.safetensors"), DType::F32, &Device::Cpu)?;
    let folder = load_sd_checkpoint(&fixture("diffusers"), DType::F32, &Device::Cpu)?;
    assert_eq!(file.family, ModelFamily::Sd2);
    assert_eq!(folder.family, ModelFamily::Sd2);
    // Single files rarely say what they predict; this one does not.
    assert!(file.declared_prediction.is_none());
    for (what, a, b) in [
        ("unet", &file.unet, &folder.unet),
        ("vae", &file.vae, &folder.vae),
        // OpenCLIP's fused q/k/v split, its last layer dropped, the unused projection skipped.
        ("text encoder", &file.text_encoder, &folder.text_encoder),
    ] {
        let names = |w: &lorakit_models::Weights| {
            let mut n: Vec<String> = w.names().map(str::to_string).collect();
            n.sort();
            n
        };
        assert_eq!(names(a), names(b), "{what}: tensor names");
        for name in names(b) {
            let (x, y) = (a.tensor(&name).ok_or("missing")?, b.tensor(&name).ok_or("missing")?);
            assert_eq!(x.dims(), y.dims(), "{what} {name}");
            assert_eq!(rel_error(x, y)?, 0.0, "{what} {name}");
        }
    }
    assert!(file.text_encoder.names().all(|n| !n.contains("layers.3.")), "the last OpenCLIP layer is dropped");
    Ok(())
}

#[test]
fn full_size_sd2_configs_and_key_map_match_diffusers() -> TestResult {
    let full: Value = serde_json::from_str(&std::fs::read_to_string(fixture("sd2_full_shapes.json"))?)?;

    // The presets single files are built with equal SD 2.1's published configs.
    let unet_cfg: UNet2DConditionModelConfig = serde_json::from_value(full["configs"]["unet"].clone())?;
    assert_eq!(unet_cfg, UNet2DConditionModelConfig::sd2());
    let te_cfg: ClipTextConfig = serde_json::from_value(full["configs"]["text_encoder"].clone())?;
    assert_eq!(te_cfg, ClipTextConfig::sd2());
    assert_eq!(te_cfg.hidden_act, ClipActivation::Gelu);

    let expected: BTreeMap<String, Vec<usize>> = serde_json::from_value(full["diffusers"]["unet"].clone())?;
    let ours: BTreeMap<String, Vec<usize>> = UNet2DConditionModelConfig::sd2().parameter_shapes().into_iter().collect();
    assert_eq!(ours, expected);
    let total: usize = ours.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(total, 865_910_724);
    assert_eq!(full["unet_params"].as_u64(), Some(total as u64));

    // Every key of a full-size SD 2.1 single file (OpenCLIP-H with all 24 layers) lands on the
    // diffusers tensor of the right shape; layer 23 and the CLIP projection are left out.
    let ldm: BTreeMap<String, Vec<usize>> = serde_json::from_value(full["ldm"].clone())?;
    let map = LdmKeyMap::new(ldm.keys().map(String::as_str));
    let mut got: BTreeMap<(&str, String), Vec<usize>> = BTreeMap::new();
    for (key, shape) in &ldm {
        match map.map(key) {
            KeyFate::Renamed(targets) => {
                for target in targets {
                    let component = match target.component {
                        Component::Unet => "unet",
                        Component::Vae => "vae",
                        Component::TextEncoder => "text_encoder",
                        Component::TextEncoder2 => "text_encoder_2",
                    };
                    let shape = target.transform.shape(shape).ok_or_else(|| format!("{key}: transform"))?;
                    let clash = got.insert((component, target.name.clone()), shape);
                    assert!(clash.is_none(), "two keys map to {component}/{}", target.name);
                }
            }
            KeyFate::Ignored(_) => {
                assert!(
                    key.contains("resblocks.23.") || key.ends_with("text_projection") || key.ends_with("logit_scale"),
                    "{key} should not be ignored"
                );
            }
            KeyFate::Unmapped(_) => panic!("{key} is not mapped"),
        }
    }
    for component in ["unet", "text_encoder"] {
        let want: BTreeMap<String, Vec<usize>> = serde_json::from_value(full["diffusers"][component].clone())?;
        let have: BTreeMap<String, Vec<usize>> =
            got.iter().filter(|((c, _), _)| *c == component).map(|((_, n), s)| (n.clone(), s.clone())).collect();
        assert_eq!(have, want, "{component}");
    }
    Ok(())
}
