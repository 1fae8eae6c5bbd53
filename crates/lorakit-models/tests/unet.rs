//! The SD1.5 UNet against PyTorch/diffusers on the tiny fixture (outputs, key/shape maps,
//! sd-scripts' LoRA target list, an sd-scripts LoRA's prediction and gradients), the full-size
//! SD1.5 parameter map and LoRA target list, and gradients: gradient checkpointing on vs off,
//! and finite differences on single blocks.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lorakit_models::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use lorakit_models::transformer_2d::{
    BasicTransformerBlock, BasicTransformerBlockConfig, Transformer2DModel, Transformer2DModelConfig,
};
use lorakit_models::unet_2d::{UNet2DConditionModel, UNet2DConditionModelConfig};
use lorakit_models::Weights;
use lorakit_nn::gradcheck::{check, pseudo_random};
use lorakit_nn::lora::{LoraKind, LoraModule, LoraSet, TargetGroup};
use lorakit_nn::ForwardCtx;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/sd15_tiny")).join(rel)
}

fn tiny_config() -> Result<UNet2DConditionModelConfig, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(fixture("diffusers/unet/config.json"))?)?)
}

fn tiny_unet_in(dtype: DType) -> Result<(UNet2DConditionModel, Weights), Box<dyn std::error::Error>> {
    let cfg = tiny_config()?;
    let weights =
        Weights::from_safetensors(&fixture("diffusers/unet/diffusion_pytorch_model.safetensors"), dtype, &Device::Cpu)?;
    let unet = UNet2DConditionModel::new(weights.view(""), &cfg)?;
    weights.check_complete()?;
    Ok((unet, weights))
}

fn tiny_unet() -> Result<(UNet2DConditionModel, Weights), Box<dyn std::error::Error>> {
    tiny_unet_in(DType::F32)
}

/// max |a − b| / max |b|.
fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

#[test]
fn tiny_unet_matches_diffusers() -> TestResult {
    let (unet, weights) = tiny_unet()?;
    assert!(weights.unused().is_empty(), "unread keys: {:?}", weights.unused());
    let io = candle_core::safetensors::load(fixture("io_unet.safetensors"), &Device::Cpu)?;
    let ctx = ForwardCtx::default();
    for (suffix, ehs_key) in [("", "encoder_hidden_states"), ("_b", "ehs_b"), ("_c", "ehs_c")] {
        let get = |k: &str| io.get(k).cloned().ok_or_else(|| format!("io_unet lacks {k}"));
        let out =
            unet.forward(&get(&format!("sample{suffix}"))?, &get(&format!("timestep{suffix}"))?, &get(ehs_key)?, &ctx)?;
        let err = rel_error(&out, &get(&format!("out{suffix}"))?)?;
        eprintln!("case '{suffix}': relative error {err:.3e}");
        assert!(err <= 1e-4, "case '{suffix}': relative error {err:.3e}");
    }
    // Float timesteps give the same result as integer ones.
    let out_int = unet.forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"], &ctx)?;
    let out_f =
        unet.forward(&io["sample"], &io["timestep"].to_dtype(DType::F32)?, &io["encoder_hidden_states"], &ctx)?;
    assert_eq!(rel_error(&out_f, &out_int)?, 0.0);
    Ok(())
}

#[test]
fn odd_latent_sizes_and_bad_shapes() -> TestResult {
    let (unet, _) = tiny_unet()?;
    let ctx = ForwardCtx::default();
    let ehs = Tensor::zeros((1, 77, 32), DType::F32, &Device::Cpu)?;
    let t = Tensor::new(&[10u32], &Device::Cpu)?;
    // 13 → 7 → 4 → 2 on the way down; the up path must come back to the skip sizes.
    let x = Tensor::zeros((1, 4, 13, 10), DType::F32, &Device::Cpu)?;
    assert_eq!(unet.forward(&x, &t, &ehs, &ctx)?.dims(), &[1, 4, 13, 10]);
    // Errors, not panics.
    let bad = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu)?;
    assert!(unet.forward(&bad, &t, &ehs, &ctx).is_err());
    let bad_ehs = Tensor::zeros((1, 77, 31), DType::F32, &Device::Cpu)?;
    assert!(unet.forward(&x, &t, &bad_ehs, &ctx).is_err());
    let two_t = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
    assert!(unet.forward(&x, &two_t, &ehs, &ctx).is_err());
    Ok(())
}

fn shape_map(shapes: &[(String, Vec<usize>)]) -> BTreeMap<String, Vec<usize>> {
    shapes.iter().cloned().collect()
}

#[test]
fn parameter_shapes_match_diffusers() -> TestResult {
    // Tiny: exactly the tensors of the diffusers file.
    let tiny = tiny_config()?.parameter_shapes();
    let file =
        candle_core::safetensors::load(fixture("diffusers/unet/diffusion_pytorch_model.safetensors"), &Device::Cpu)?;
    let file_map: BTreeMap<String, Vec<usize>> = file.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect();
    assert_eq!(tiny.len(), file_map.len(), "duplicate keys in parameter_shapes");
    assert_eq!(shape_map(&tiny), file_map);
    let tiny_params: usize = tiny.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(tiny_params, 3_222_692);

    // Full size: the meta-device SD1.5 map, and the preset equals the real config.json.
    let full: Value = serde_json::from_str(&std::fs::read_to_string(fixture("sd15_full_shapes.json"))?)?;
    let cfg: UNet2DConditionModelConfig = serde_json::from_value(full["configs"]["unet"].clone())?;
    assert_eq!(cfg, UNet2DConditionModelConfig::sd15());
    let expected: BTreeMap<String, Vec<usize>> = serde_json::from_value(full["diffusers"]["unet"].clone())?;
    let ours = UNet2DConditionModelConfig::sd15().parameter_shapes();
    assert_eq!(ours.len(), 686);
    assert_eq!(shape_map(&ours), expected);
    let total: usize = ours.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(total, 859_520_964);
    assert_eq!(full["param_counts"]["unet"].as_u64(), Some(total as u64));
    Ok(())
}

#[test]
fn lora_targets_match_sd_scripts() -> TestResult {
    let (unet, _) = tiny_unet()?;
    let targets = unet.lora_targets();
    let names: Value = serde_json::from_str(&std::fs::read_to_string(fixture("lora/module_names.json"))?)?;
    let modules = names["modules"].as_object().ok_or("modules is not an object")?;
    let expected: BTreeMap<&str, &Value> =
        modules.iter().filter(|(k, _)| k.starts_with("lora_unet_")).map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(targets.len(), 277);
    assert_eq!(targets.len(), expected.len());
    let ours: HashMap<String, _> = targets.iter().map(|t| (t.kohya_name("lora_unet"), t)).collect();
    assert_eq!(ours.len(), targets.len(), "duplicate targets");
    for (name, m) in &expected {
        let t = ours.get(*name).ok_or_else(|| format!("missing target {name}"))?;
        assert_eq!(m["module_path"].as_str(), Some(t.path.as_str()));
        assert_eq!(m["in_dim"].as_u64(), Some(t.in_dim as u64), "{name}");
        assert_eq!(m["out_dim"].as_u64(), Some(t.out_dim as u64), "{name}");
        match (m["org_class"].as_str(), t.kind) {
            (Some("Linear"), LoraKind::Linear) => {}
            (Some("Conv2d"), LoraKind::Conv { kernel, stride, padding }) => {
                assert_eq!(m["kernel_size"][0].as_u64(), Some(kernel as u64), "{name}");
                assert_eq!(m["stride"][0].as_u64(), Some(stride as u64), "{name}");
                assert_eq!(m["padding"][0].as_u64(), Some(padding as u64), "{name}");
            }
            (class, kind) => panic!("{name}: sd-scripts {class:?}, ours {kind:?}"),
        }
        let group = if m["target_class"].as_str() == Some("Transformer2DModel") {
            TargetGroup::Attention
        } else {
            TargetGroup::ConvBlock
        };
        assert_eq!(t.group, group, "{name}");
    }
    let attention = targets.iter().filter(|t| t.group == TargetGroup::Attention).count();
    assert_eq!(attention, 16 * 12);
    Ok(())
}

#[test]
fn full_size_lora_targets_match_sd_scripts() -> TestResult {
    // No weights: every tensor is a zero broadcast (no memory), enough to enumerate the layers.
    let empty = Weights::new(HashMap::new(), "none");
    let unet = UNet2DConditionModel::new(empty.view(""), &UNet2DConditionModelConfig::sd15())?;
    let targets = unet.lora_targets();
    let names: Value = serde_json::from_str(&std::fs::read_to_string(fixture("lora/sd15_full_names.json"))?)?;
    let list = |key: &str| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        Ok(serde_json::from_value(names[key].clone())?)
    };
    let mut all: Vec<String> = targets.iter().map(|t| t.kohya_name("lora_unet")).collect();
    all.sort();
    assert_eq!(all.len(), 278);
    assert_eq!(all, list("unet_with_conv_dim")?);
    let mut attention: Vec<String> =
        targets.iter().filter(|t| t.group == TargetGroup::Attention).map(|t| t.kohya_name("lora_unet")).collect();
    attention.sort();
    assert_eq!(attention.len(), 192);
    assert_eq!(attention, list("unet_without_conv_dim")?);
    for t in &targets {
        let m = &names["modules_with_conv_dim"][t.kohya_name("lora_unet")];
        assert_eq!(
            (m["in_dim"].as_u64(), m["out_dim"].as_u64()),
            (Some(t.in_dim as u64), Some(t.out_dim as u64)),
            "{}",
            t.path
        );
    }
    Ok(())
}

/// The sd-scripts LoRA of the fixture applied through our UNet: prediction, loss and every UNet
/// LoRA gradient match PyTorch, with and without gradient checkpointing.
#[test]
fn sd_scripts_lora_prediction_and_gradients_match() -> TestResult {
    let (unet, _) = tiny_unet()?;
    let file = candle_core::safetensors::load(fixture("lora/lora.safetensors"), &Device::Cpu)?;
    let io = candle_core::safetensors::load(fixture("lora/io.safetensors"), &Device::Cpu)?;
    let reference = candle_core::safetensors::load(fixture("lora/grads.safetensors"), &Device::Cpu)?;
    let mut set = LoraSet::new(0, &Device::Cpu)?;
    let mut vars = Vec::new();
    for t in unet.lora_targets() {
        let name = t.kohya_name("lora_unet");
        let get = |suffix: &str| {
            file.get(&format!("{name}.{suffix}")).cloned().ok_or_else(|| format!("{name}.{suffix} missing"))
        };
        let alpha = get("alpha")?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let module = LoraModule::from_weights(
            name.clone(),
            t.kind,
            get("lora_down.weight")?,
            get("lora_up.weight")?,
            Some(alpha),
            true,
        )?;
        vars.push((format!("{name}.lora_down.weight"), module.down().clone()));
        vars.push((format!("{name}.lora_up.weight"), module.up().clone()));
        set.insert(t.path.clone(), module);
    }
    let lora = Arc::new(set);
    for checkpointing in [false, true] {
        lora.clear_side_grads();
        let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
        let pred = unet.forward(&io["noisy"], &io["timestep"], &io["ehs"], &ctx)?;
        let pred_err = rel_error(&pred, &io["pred"])?;
        let loss = (&pred - &io["target"])?.sqr()?.mean_all()?;
        let loss_err = rel_error(&loss, &io["loss"])?;
        let grads = loss.backward()?;
        let mut worst = (0.0, String::new());
        for (key, var) in &vars {
            let ours = lora.grad(&grads, var)?.ok_or_else(|| format!("no gradient for {key}"))?;
            let err = rel_error(&ours, &reference[key.as_str()])?;
            if err > worst.0 {
                worst = (err, key.clone());
            }
        }
        eprintln!(
            "checkpointing {checkpointing}: pred {pred_err:.3e}, loss {loss_err:.3e}, worst of {} LoRA grads {:.3e} ({})",
            vars.len(),
            worst.0,
            worst.1
        );
        assert!(pred_err <= 1e-4 && loss_err <= 1e-4);
        assert!(worst.0 <= 1e-3, "{worst:?}");
    }
    Ok(())
}

/// A small trainable LoRA on a few UNet layers (non-zero up and down so both get gradients).
fn test_lora(unet: &UNet2DConditionModel) -> Result<Arc<LoraSet>, Box<dyn std::error::Error>> {
    let mut set = LoraSet::new(5, &Device::Cpu)?;
    let wanted = [
        "down_blocks.0.attentions.0.proj_in",
        "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
        "down_blocks.0.resnets.0.conv1",
        "up_blocks.0.upsamplers.0.conv",
        "up_blocks.3.resnets.2.conv_shortcut",
    ];
    for (i, path) in wanted.iter().enumerate() {
        let t = unet.lora_targets().into_iter().find(|t| t.path == *path).ok_or_else(|| format!("no target {path}"))?;
        let rank = 2;
        let (down_shape, up_shape) = match t.kind {
            LoraKind::Linear => (vec![rank, t.in_dim], vec![t.out_dim, rank]),
            LoraKind::Conv { kernel, .. } => (vec![rank, t.in_dim, kernel, kernel], vec![t.out_dim, rank, 1, 1]),
        };
        let down = (pseudo_random(&down_shape, 100 + i as u64)? * 0.3)?;
        let up = (pseudo_random(&up_shape, 200 + i as u64)? * 0.3)?;
        set.insert(*path, LoraModule::from_weights(t.kohya_name("lora_unet"), t.kind, down, up, Some(1.0), true)?);
    }
    Ok(Arc::new(set))
}

/// In f64, so that the only possible difference — the order in which gradient contributions
/// are summed — stays at rounding level and any real discrepancy stands out.
#[test]
fn gradient_checkpointing_gives_identical_gradients() -> TestResult {
    let (unet, _) = tiny_unet_in(DType::F64)?;
    let io = candle_core::safetensors::load(fixture("io_unet.safetensors"), &Device::Cpu)?;
    let lora = test_lora(&unet)?;
    let sample = Var::from_tensor(&io["sample"].to_dtype(DType::F64)?)?;
    let ehs = Var::from_tensor(&io["encoder_hidden_states"].to_dtype(DType::F64)?)?;
    let weights = pseudo_random(io["out"].dims(), 3)?;

    let mut results = Vec::new();
    for checkpointing in [false, true] {
        lora.clear_side_grads();
        let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
        let out = unet.forward(sample.as_tensor(), &io["timestep"], ehs.as_tensor(), &ctx)?;
        let grads = (out.clone() * &weights)?.sum_all()?.backward()?;
        let mut g = vec![
            out,
            grads.get(&sample).ok_or("no sample grad")?.clone(),
            grads.get(&ehs).ok_or("no context grad")?.clone(),
        ];
        for var in lora.trainable_vars() {
            g.push(lora.grad(&grads, &var)?.ok_or("no LoRA grad")?);
        }
        results.push(g);
    }
    for (i, (a, b)) in results[0].iter().zip(&results[1]).enumerate() {
        let scale = a.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(scale > 0.0, "tensor {i} is all zero");
        let err = rel_error(b, a)?;
        eprintln!("tensor {i} {:?}: checkpointed vs plain relative difference {err:.3e}", a.dims());
        assert!(err <= 1e-12, "tensor {i}: {err:.3e}");
    }
    Ok(())
}

/// A store of pseudo-random f64 weights for the given keys (norm weights around 1).
fn random_weights(shapes: &[(String, Vec<usize>)]) -> Result<Weights, Box<dyn std::error::Error>> {
    let mut tensors = HashMap::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let r = pseudo_random(shape, 1000 + i as u64)?;
        let t = if shape.len() == 1 && name.contains("norm") && name.ends_with("weight") {
            ((r * 0.2)? + 1.0)?
        } else if shape.len() == 1 {
            (r * 0.2)?
        } else {
            (r * (1.5 / (fan_in as f64).sqrt()))?
        };
        tensors.insert(name.clone(), t);
    }
    Ok(Weights::new(tensors, "random"))
}

#[test]
fn resnet_block_gradcheck() -> TestResult {
    let cfg = ResnetBlock2DConfig {
        in_channels: 4,
        out_channels: 6,
        temb_channels: Some(5),
        groups: 2,
        eps: 1e-5,
        output_scale_factor: 1.0,
    };
    let mut shapes = Vec::new();
    ResnetBlock2D::parameter_shapes("r", &cfg, &mut shapes);
    let weights = random_weights(&shapes)?;
    let block = ResnetBlock2D::new(weights.view("r"), &cfg)?;
    weights.check_complete()?;
    let ctx = ForwardCtx::default();
    let x = pseudo_random(&[2, 4, 4, 3], 11)?;
    let temb = pseudo_random(&[2, 5], 12)?;
    let report = check(|xs| block.forward(&xs[0], Some(&xs[1]), &ctx), &[x, temb], 1e-5)?;
    eprintln!("ResnetBlock2D gradcheck: {report:?}");
    assert!(report.relative_error() < 1e-6, "{report:?}");
    Ok(())
}

#[test]
fn transformer_gradcheck() -> TestResult {
    // One BasicTransformerBlock on tokens.
    let cfg = BasicTransformerBlockConfig {
        dim: 8,
        num_attention_heads: 2,
        attention_head_dim: 4,
        cross_attention_dim: Some(6),
        only_cross_attention: false,
        upcast_attention: false,
        norm_eps: 1e-5,
    };
    let mut shapes = Vec::new();
    BasicTransformerBlock::parameter_shapes("b", &cfg, &mut shapes);
    let weights = random_weights(&shapes)?;
    let block = BasicTransformerBlock::new(weights.view("b"), &cfg)?;
    weights.check_complete()?;
    let ctx = ForwardCtx::default();
    let x = pseudo_random(&[2, 5, 8], 21)?;
    let context = pseudo_random(&[2, 3, 6], 22)?;
    // The error floor here (~1e-7 relative, independent of the step) is candle's GELU backward,
    // which uses 0.398942 for 1/√(2π); the attention alone checks to ~1e-10.
    let report = check(|xs| block.forward(&xs[0], Some(&xs[1]), &ctx), &[x, context], 1e-5)?;
    eprintln!("BasicTransformerBlock gradcheck: {report:?}");
    assert!(report.relative_error() < 1e-6, "{report:?}");

    // The whole Transformer2DModel on a feature map, both projection styles.
    for linear in [false, true] {
        let cfg = Transformer2DModelConfig {
            num_attention_heads: 2,
            attention_head_dim: 4,
            in_channels: 8,
            num_layers: 1,
            cross_attention_dim: Some(6),
            norm_num_groups: 2,
            use_linear_projection: linear,
            only_cross_attention: false,
            upcast_attention: false,
        };
        let mut shapes = Vec::new();
        Transformer2DModel::parameter_shapes("t", &cfg, &mut shapes);
        let weights = random_weights(&shapes)?;
        let model = Transformer2DModel::new(weights.view("t"), &cfg)?;
        weights.check_complete()?;
        let x = pseudo_random(&[1, 8, 3, 2], 31)?;
        let context = pseudo_random(&[1, 3, 6], 32)?;
        let report = check(|xs| model.forward(&xs[0], Some(&xs[1]), &ctx), &[x, context], 1e-5)?;
        eprintln!("Transformer2DModel (linear projection {linear}) gradcheck: {report:?}");
        assert!(report.relative_error() < 1e-6, "{report:?}");
    }
    Ok(())
}
