//! SD3 / SD3.5's MMDiT against diffusers' `SD3Transformer2DModel` and sd-scripts'
//! `sd3_models.MMDiT` (fixture: `tools/reference/make_sd3_tiny.py` →
//! `tests/fixtures/reference/sd3_tiny/`): SD3 Medium, SD3.5 Large (q/k norms) and SD3.5 Medium
//! (q/k norms and the x side's second attention) from SAI-layout files — the config read from the
//! shapes, the conditioning vector, every joint block's outputs (sd-scripts) and the prediction
//! (diffusers), with an odd position grid so the centre crop is off-centre.
//!
//! Fidelity: fp32 on f16-rounded weights, relative error max |Δ| / max |reference| ≤ 1e-4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::dit::mmdit::{MmditConfig, MmditInputs, MmditTransformer};
use lorakit_models::Weights;
use lorakit_nn::ForwardCtx;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/sd3_tiny")).join(rel)
}

fn io() -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    Ok(candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu)?)
}

/// max |a − b| / max |b|.
fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

fn check(what: &str, ours: &Tensor, reference: &Tensor) -> TestResult {
    let err = rel_error(ours, reference)?;
    eprintln!("{what}: relative error {err:.2e}");
    assert!(err <= 1e-4, "{what}: relative error {err:.3e}");
    Ok(())
}

fn load(variant: &str) -> Result<(Weights, MmditConfig), Box<dyn std::error::Error>> {
    let weights = Weights::from_safetensors(&fixture(&format!("{variant}.safetensors")), DType::F32, &Device::Cpu)?;
    let names: Vec<&str> = weights.names().collect();
    let cfg = MmditConfig::from_sai_shapes(names.iter().copied(), |k| weights.tensor(k).map(|t| t.dims().to_vec()))?;
    Ok((weights, cfg))
}

#[test]
fn the_config_is_read_from_the_shapes_as_sd_scripts_does() -> TestResult {
    for (variant, qk_norm, attn2) in [("sd3m", false, vec![]), ("sd35l", true, vec![]), ("sd35m", true, vec![0])] {
        let (_, cfg) = load(variant)?;
        assert_eq!(cfg.model_type(), variant);
        assert_eq!((cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.head_dim()), (2, 128, 2, 64), "{variant}");
        assert_eq!((cfg.patch_size, cfg.pos_embed_max_size, cfg.in_channels), (2, 7, 16));
        assert_eq!((cfg.pooled_dim, cfg.context_dim, cfg.mlp_hidden), (40, 36, 512));
        assert_eq!((cfg.qk_norm, cfg.x_self_attn_layers.clone()), (qk_norm, attn2), "{variant}");
    }
    let only_pos = |k: &str| (k == "pos_embed").then(|| vec![1, 49, 128]);
    let err = MmditConfig::from_sai_shapes(["pos_embed"].into_iter(), only_pos).unwrap_err();
    assert!(err.contains("x_embedder.proj.weight"), "{err}");
    Ok(())
}

#[test]
fn predictions_match_diffusers_and_blocks_match_sd_scripts() -> TestResult {
    let io = io()?;
    for variant in ["sd3m", "sd35l", "sd35m"] {
        let (weights, cfg) = load(variant)?;
        let model = MmditTransformer::new(weights.view(""), &cfg)?;
        weights.check_complete()?;
        assert!(weights.unused().is_empty(), "{variant} unused: {:?}", weights.unused());
        let ctx = ForwardCtx::default();
        let c = model.conditioning(&io["t"], &io["y"], &ctx)?;
        check(&format!("{variant} conditioning"), &c, &io[&format!("{variant}.c")])?;
        let inputs = MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]);
        let mut blocks = Vec::new();
        let out = model.forward_observed(&inputs, &ctx, &mut |i, context, x| {
            blocks.push((i, context.cloned(), x.clone()));
        })?;
        check(&format!("{variant} prediction"), &out, &io[&format!("{variant}.out")])?;
        // sd-scripts' blocks (where it agrees with diffusers): the last one has no context out.
        if variant != "sd35m" {
            assert_eq!(blocks.len(), 2);
            for (i, context, x) in &blocks {
                check(&format!("{variant} block {i} x"), x, &io[&format!("{variant}.block{i}.x")])?;
                let key = format!("{variant}.block{i}.context");
                match (context, io.get(&key)) {
                    (Some(c), Some(reference)) => check(&format!("{variant} block {i} context"), c, reference)?,
                    (None, None) => assert_eq!(*i, 1, "only the last block is pre-only"),
                    _ => panic!("{key}: context output present on one side only"),
                }
            }
        }
        if variant == "sd35m" {
            // sd-scripts' second attention splits heads differently (see make_sd3_tiny.py).
            let err = rel_error(&out, &io["sd35m.out_sd_scripts"])?;
            assert!(err > 1e-3, "sd-scripts' attn2 was expected to differ, error {err:.2e}");
        }
    }
    Ok(())
}

#[test]
fn the_position_table_is_the_centre_crop_and_oversized_latents_are_refused() -> TestResult {
    let (weights, cfg) = load("sd3m")?;
    let model = MmditTransformer::new(weights.view(""), &cfg)?;
    let table = weights.tensor("pos_embed").expect("pos_embed").reshape((7, 7, 128))?;
    // A 3×2-patch latent on a 7×7 grid: rows 2..5, columns 2..4.
    let crop = model.cropped_pos_embed(3, 2)?;
    let expected = table.narrow(0, 2, 3)?.narrow(1, 2, 2)?.reshape((6, 128))?;
    assert_eq!(rel_error(&crop, &expected)?, 0.0);
    let err = model.cropped_pos_embed(8, 2).unwrap_err().to_string();
    assert!(err.contains("7×7"), "{err}");
    let x = Tensor::zeros((1, 16, 5, 4), DType::F32, &Device::Cpu)?;
    let (t, y, context) = (
        Tensor::zeros(1, DType::F32, &Device::Cpu)?,
        Tensor::zeros((1, 40), DType::F32, &Device::Cpu)?,
        Tensor::zeros((1, 3, 36), DType::F32, &Device::Cpu)?,
    );
    let err = model.forward(&MmditInputs::new(&x, &t, &y, &context), &ForwardCtx::default()).unwrap_err();
    assert!(err.to_string().contains("multiples of 2"), "{err}");
    Ok(())
}

#[test]
fn lora_targets_are_every_linear_of_the_joint_blocks_in_sd_scripts_order() -> TestResult {
    for (variant, count) in [("sd3m", 17), ("sd35m", 19)] {
        let (weights, cfg) = load(variant)?;
        let model = MmditTransformer::new(weights.view(""), &cfg)?;
        let names: Vec<String> = model.lora_targets().iter().map(|t| t.kohya_name("lora_unet")).collect();
        assert_eq!(names.len(), count, "{variant}: {names:?}");
        assert_eq!(names[0], "lora_unet_joint_blocks_0_context_block_attn_qkv");
        assert_eq!(names[4], "lora_unet_joint_blocks_0_context_block_adaLN_modulation_1");
        // The last block's context side is pre-only: q/k/v and its modulation, nothing else.
        let last_context: Vec<&String> = names.iter().filter(|n| n.contains("joint_blocks_1_context")).collect();
        assert_eq!(
            last_context,
            [
                "lora_unet_joint_blocks_1_context_block_attn_qkv",
                "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1"
            ]
        );
        assert_eq!(names.iter().any(|n| n == "lora_unet_joint_blocks_0_x_block_attn2_qkv"), variant == "sd35m");
    }
    Ok(())
}
