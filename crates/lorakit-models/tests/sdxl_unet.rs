//! The SDXL UNet against PyTorch/diffusers/sd-scripts (fixture: `tools/reference/make_sdxl_tiny.py`
//! → `tests/fixtures/reference/sdxl_tiny/`): the tiny SDXL-shaped UNet's outputs with
//! `text_embeds`/`time_ids`, an sd-scripts LoRA's prediction and UNet gradients, its modules' SGM
//! names and the SGM single file's keys; the full-size SDXL base configuration (parameter count,
//! sd-scripts' LoRA module list in the SGM layout, built from the block plan without allocating
//! weights); the diffusers → SGM map on the SD1.5 fixture's single file; the `text_time` addition
//! embedding by hand and on a tiny random model; the errors for missing or mis-shaped added
//! conditions.
//!
//! Fidelity: fp32, relative error max |Δ| / max |reference| ≤ 1e-4 (gradients ≤ 1e-3).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lorakit_lora::convert::NameMap;
use lorakit_lora::keys::Family;
use lorakit_models::unet_2d::{
    AddedConditions, KohyaLayout, PerBlock, Timesteps, UNet2DConditionModel, UNet2DConditionModelConfig,
};
use lorakit_models::Weights;
use lorakit_nn::gradcheck::pseudo_random;
use lorakit_nn::lora::{LoraKind, LoraModule, LoraSet, LoraTarget, TargetGroup};
use lorakit_nn::ForwardCtx;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference")).join(rel)
}

fn sdxl_fixture(rel: &str) -> PathBuf {
    fixture("sdxl_tiny").join(rel)
}

fn load(rel: &str) -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    Ok(candle_core::safetensors::load(sdxl_fixture(rel), &Device::Cpu)?)
}

fn json(rel: &str) -> Result<Value, Box<dyn std::error::Error>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(sdxl_fixture(rel))?)?)
}

/// max |a − b| / max |b|.
fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

/// The tiny SDXL-shaped UNet of the fixture's diffusers folder (f16 weights computed in f32),
/// every key read.
fn tiny_unet() -> Result<UNet2DConditionModel, Box<dyn std::error::Error>> {
    let cfg: UNet2DConditionModelConfig =
        serde_json::from_str(&std::fs::read_to_string(sdxl_fixture("diffusers/unet/config.json"))?)?;
    let weights = Weights::from_safetensors(
        &sdxl_fixture("diffusers/unet/diffusion_pytorch_model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )?;
    let unet = UNet2DConditionModel::new(weights.view(""), &cfg)?;
    weights.check_complete()?;
    assert!(weights.unused().is_empty(), "unread keys: {:?}", weights.unused());
    Ok(unet)
}

#[test]
fn tiny_sdxl_unet_matches_diffusers() -> TestResult {
    let unet = tiny_unet()?;
    assert!(unet.needs_added_conditions());
    assert_eq!(unet.kohya_layout(), KohyaLayout::Sgm);
    let io = load("io_unet.safetensors")?;
    let get = |k: &str| io.get(k).cloned().ok_or_else(|| format!("io_unet lacks {k}"));
    // Case a: batch 2, a 10×14 latent (not a multiple of 4: the upsamplers take the skips' sizes),
    // integer timesteps, a 154-token context. Case b: batch 1, a float timestep (499.5).
    for suffix in ["", "_b"] {
        let k = |name: &str| get(&format!("{name}{suffix}"));
        let added = AddedConditions { text_embeds: k("text_embeds")?, time_ids: k("time_ids")? };
        let out = unet.forward_with(
            &k("sample")?,
            &k("timestep")?,
            &k("encoder_hidden_states")?,
            Some(&added),
            &ForwardCtx::default(),
        )?;
        let err = rel_error(&out, &k("out")?)?;
        eprintln!("case '{suffix}': relative error {err:.3e}");
        assert!(err <= 1e-4, "case '{suffix}': relative error {err:.3e}");
    }
    // sd-scripts' size embedding (get_size_embeddings, 256 per number) is diffusers' add_time_proj
    // at SDXL's width: our Timesteps gives it too, to f32 rounding of arguments up to 1600 rad
    // (one ulp there is 1.2e-4).
    let ids = get("time_ids")?;
    let ours = Timesteps::new(256, true, 0.0).forward(&ids.flatten_all()?)?.reshape((2, 6 * 256))?;
    let err = rel_error(&ours, &get("size_embeddings_256")?)?;
    assert!(err <= 2e-4, "size embeddings: {err:.3e}");
    let ours = Timesteps::new(8, true, 0.0).forward(&ids.flatten_all()?)?.reshape((2, 48))?;
    assert!(rel_error(&ours, &get("time_ids_embeds")?)? <= 1e-6);
    Ok(())
}

/// The diffusers → SGM map on the tiny SDXL model: every UNet key names the same tensor in the
/// fixture's SGM single file (`add_embedding` as `label_emb.0.*`, upsamplers at `.2.conv`).
#[test]
fn sgm_paths_match_the_sdxl_single_file() -> TestResult {
    let cfg: UNet2DConditionModelConfig =
        serde_json::from_str(&std::fs::read_to_string(sdxl_fixture("diffusers/unet/config.json"))?)?;
    let diffusers = load("diffusers/unet/diffusion_pytorch_model.safetensors")?;
    let single = load("single_file.safetensors")?;
    let ldm_unet = single.keys().filter(|k| k.starts_with("model.diffusion_model.")).count();
    assert_eq!(ldm_unet, diffusers.len());
    for (key, tensor) in &diffusers {
        let sgm = cfg.sgm_path(key).ok_or_else(|| format!("no SGM path for {key}"))?;
        let theirs = single
            .get(&format!("model.diffusion_model.{sgm}"))
            .ok_or_else(|| format!("{key} → {sgm}: not in the file"))?;
        let diff = (tensor.to_dtype(DType::F32)?.flatten_all()? - theirs.to_dtype(DType::F32)?.flatten_all()?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{key} → {sgm}");
    }
    assert_eq!(cfg.sgm_path("add_embedding.linear_2.weight").as_deref(), Some("label_emb.0.2.weight"));
    assert_eq!(cfg.sgm_path("up_blocks.1.upsamplers.0.conv.bias").as_deref(), Some("output_blocks.5.2.conv.bias"));
    Ok(())
}

/// The tiny fixture's LoRA was made by sd-scripts on a diffusers UNet, so its files use
/// diffusers-layout names; `sgm_name` is what sd-scripts' own SDXL training calls each module.
#[test]
fn tiny_lora_targets_and_sgm_names_match_sd_scripts() -> TestResult {
    let unet = tiny_unet()?;
    let names = json("lora/module_names.json")?;
    let modules = names["modules"].as_object().ok_or("modules is not an object")?;
    let expected: Vec<(&String, &Value)> = modules.iter().filter(|(k, _)| k.starts_with("lora_unet_")).collect();
    let diffusers = unet.lora_targets();
    let sgm = unet.lora_targets_in(KohyaLayout::Sgm);
    assert_eq!(expected.len(), diffusers.len());
    assert_eq!(sgm.len(), diffusers.len());
    let by_path: HashMap<&str, &LoraTarget> = sgm.iter().map(|t| (t.path.as_str(), t)).collect();
    for (name, m) in expected {
        let t =
            diffusers.iter().find(|t| t.kohya_name("lora_unet") == *name).ok_or_else(|| format!("missing {name}"))?;
        assert_eq!(m["module_path"].as_str(), Some(t.path.as_str()));
        check_module(name, m, t);
        let s = by_path[t.path.as_str()];
        assert_eq!(m["sgm_name"].as_str(), Some(s.kohya_name("lora_unet").as_str()), "{name}");
    }
    Ok(())
}

/// Dims, kind and sd-scripts' target class of one module description against our target.
fn check_module(name: &str, m: &Value, t: &LoraTarget) {
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

/// The fixture's sd-scripts LoRA applied through our UNet: prediction, loss and every UNet LoRA
/// gradient match PyTorch (the context and pooled embedding are the fixture's, computed by the
/// text encoders with their LoRA), with and without gradient checkpointing.
#[test]
fn sd_scripts_lora_prediction_and_gradients_match() -> TestResult {
    let unet = tiny_unet()?;
    let file = load("lora/lora.safetensors")?;
    let io = load("lora/io.safetensors")?;
    let io_unet = load("io_unet.safetensors")?;
    let reference = load("lora/grads.safetensors")?;
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
    assert_eq!(vars.len(), reference.keys().filter(|k| k.starts_with("lora_unet_")).count());
    let lora = Arc::new(set);
    // Inference with the LoRA on io_unet's case a.
    let added = AddedConditions { text_embeds: io_unet["text_embeds"].clone(), time_ids: io_unet["time_ids"].clone() };
    let out = unet.forward_with(
        &io_unet["sample"],
        &io_unet["timestep"],
        &io_unet["encoder_hidden_states"],
        Some(&added),
        &ForwardCtx::with_lora(lora.clone()),
    )?;
    let out_err = rel_error(&out, &io["out"])?;
    assert!(out_err <= 1e-4, "LoRA output: {out_err:.3e}");
    let added = AddedConditions { text_embeds: io["pool2"].clone(), time_ids: io["time_ids"].clone() };
    for checkpointing in [false, true] {
        lora.clear_side_grads();
        let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
        let pred = unet.forward_with(&io["sample"], &io["timestep"], &io["context"], Some(&added), &ctx)?;
        let pred_err = rel_error(&pred, &io["pred"])?;
        let loss = (&pred * &io["loss_weight"])?.mean_all()?;
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
        assert!(pred_err <= 1e-4 && loss_err <= 1e-4, "pred {pred_err:.3e}, loss {loss_err:.3e}");
        assert!(worst.0 <= 1e-3, "{worst:?}");
    }
    Ok(())
}

/// The module names of a JSON object in file order (serde_json's map is sorted): every
/// `"lora_unet_…": {` key.
fn unet_keys_in_file_order(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("\"lora_unet_") {
        let rest = &text[at + 1..];
        let Some(end) = rest.find('"') else { continue };
        if rest[end + 1..].trim_start().starts_with(':') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

/// sd-scripts' full-size SDXL module list (its own SGM UNet on the meta device) against ours from
/// the block plan, without weights: names in creation order, dims, kinds, target classes, which
/// modules exist without conv_dim, and which take conv_dim's rank (3×3 convs only).
#[test]
fn full_size_lora_modules_match_sd_scripts() -> TestResult {
    let text = std::fs::read_to_string(sdxl_fixture("sdxl_full_lora_names.json"))?;
    let names: Value = serde_json::from_str(&text)?;
    assert_eq!(names["counts_with_conv_dim"]["unet"].as_u64(), Some(788));
    assert_eq!(names["counts_without_conv_dim"]["unet"].as_u64(), Some(722));
    let order = unet_keys_in_file_order(&text);
    assert_eq!(order.len(), 788);
    let targets = full_size_sdxl()?.lora_targets_in(KohyaLayout::Sgm);
    let ours: Vec<String> = targets.iter().map(|t| t.kohya_name("lora_unet")).collect();
    assert_eq!(ours, order, "sd-scripts' creation order");
    let (conv_dim, network_dim) = (names["conv_dim"].as_u64(), names["network_dim"].as_u64());
    for t in &targets {
        let name = t.kohya_name("lora_unet");
        let m = &names["modules"][name.as_str()];
        assert_eq!(m["module_path"].as_str(), Some(t.kohya_module_path()));
        check_module(&name, m, t);
        assert_eq!(m["without_conv_dim"].as_bool(), Some(t.group == TargetGroup::Attention), "{name}");
        let rank = if t.is_spatial_conv() { conv_dim } else { network_dim };
        assert_eq!(m["rank"].as_u64(), rank, "{name}");
    }
    Ok(())
}

/// `UNet2DConditionModelConfig::sdxl()` is diffusers' reading of sd-scripts'
/// `DIFFUSERS_SDXL_UNET_CONFIG`; its parameter map has every SGM key of the full-size model
/// (through `sgm_path`) with the same shape, and the parameter count.
#[test]
fn full_size_sdxl_config_keys_and_sgm_map_match() -> TestResult {
    let configs = json("sdxl_full_configs.json")?;
    let theirs: UNet2DConditionModelConfig = serde_json::from_value(configs["unet"].clone())?;
    assert_eq!(theirs, UNet2DConditionModelConfig::sdxl());
    let shapes = json("sdxl_full_shapes.json")?;
    let cfg = UNet2DConditionModelConfig::sdxl();
    let ours = cfg.parameter_shapes();
    assert_eq!(shapes["key_counts"]["unet"].as_u64(), Some(ours.len() as u64));
    let total: usize = ours.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(shapes["param_counts"]["unet"].as_u64(), Some(total as u64));
    let sgm_to_diffusers = shapes["sgm_to_diffusers"].as_object().ok_or("sgm_to_diffusers")?;
    let mut mapped = 0;
    for (key, shape) in &ours {
        let sgm =
            format!("model.diffusion_model.{}", cfg.sgm_path(key).ok_or_else(|| format!("no SGM path for {key}"))?);
        assert_eq!(sgm_to_diffusers.get(&sgm).and_then(Value::as_str), Some(format!("unet/{key}").as_str()), "{sgm}");
        let theirs: Vec<usize> = serde_json::from_value(shapes["sgm"][sgm.as_str()].clone())?;
        assert_eq!(&theirs, shape, "{key}");
        mapped += 1;
    }
    assert_eq!(mapped, sgm_to_diffusers.keys().filter(|k| k.starts_with("model.diffusion_model.")).count());
    Ok(())
}

/// The full-size SDXL UNet without weights: every tensor is a zero broadcast (no memory),
/// enough to enumerate the layers.
fn full_size_sdxl() -> Result<UNet2DConditionModel, Box<dyn std::error::Error>> {
    let empty = Weights::new(HashMap::new(), "none");
    Ok(UNet2DConditionModel::new(empty.view(""), &UNet2DConditionModelConfig::sdxl())?)
}

#[test]
fn sdxl_config_has_sdxl_base_parameter_count() -> TestResult {
    let cfg = UNet2DConditionModelConfig::sdxl();
    cfg.validate()?;
    assert_eq!(cfg.kohya_layout(), KohyaLayout::Sgm);
    assert_eq!(UNet2DConditionModelConfig::sd15().kohya_layout(), KohyaLayout::Diffusers);
    let shapes = cfg.parameter_shapes();
    let total: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(total, 2_567_463_684);
    assert_eq!(shapes.len(), 1680);
    let keys: BTreeSet<&str> = shapes.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), shapes.len(), "duplicate keys");
    let shape = |k: &str| shapes.iter().find(|(n, _)| n == k).map(|(_, s)| s.clone());
    assert_eq!(shape("add_embedding.linear_1.weight"), Some(vec![1280, 2816]));
    assert_eq!(shape("add_embedding.linear_2.weight"), Some(vec![1280, 1280]));
    // Transformer depth 10 at the deepest level, down, mid and up; 2 at the middle level.
    assert!(keys.contains("down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight"));
    assert!(keys.contains("mid_block.attentions.0.transformer_blocks.9.ff.net.2.weight"));
    assert!(keys.contains("up_blocks.0.attentions.2.transformer_blocks.9.attn1.to_q.weight"));
    assert!(!keys.contains("up_blocks.1.attentions.0.transformer_blocks.2.attn1.to_q.weight"));
    assert!(!keys.iter().any(|k| k.starts_with("down_blocks.0.attentions") || k.starts_with("up_blocks.2.attentions")));
    assert_eq!(shape("down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight"), Some(vec![1280, 2048]));
    Ok(())
}

#[test]
fn sdxl_lora_names_are_sd_scripts_sgm_names() -> TestResult {
    let unet = full_size_sdxl()?;
    let targets = unet.lora_targets_in(KohyaLayout::Sgm);
    assert_eq!(targets.len(), 788);
    let attention: Vec<_> = targets.iter().filter(|t| t.group == TargetGroup::Attention).collect();
    assert_eq!(attention.len(), 722, "sd-scripts' SDXL U-Net LoRA without conv_dim");
    let names: Vec<String> = targets.iter().map(|t| t.kohya_name("lora_unet")).collect();
    let unique: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(unique.len(), names.len(), "duplicate names");
    for name in [
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "lora_unet_input_blocks_4_1_proj_in",
        "lora_unet_middle_block_1_transformer_blocks_3_attn2_to_out_0",
        "lora_unet_output_blocks_2_2_conv",
        "lora_unet_output_blocks_5_2_conv",
        "lora_unet_input_blocks_3_0_op",
        "lora_unet_input_blocks_6_0_op",
        "lora_unet_input_blocks_1_0_in_layers_2",
        "lora_unet_input_blocks_1_0_emb_layers_1",
        "lora_unet_input_blocks_1_0_out_layers_3",
        "lora_unet_input_blocks_4_0_skip_connection",
        "lora_unet_middle_block_2_out_layers_3",
        "lora_unet_output_blocks_8_0_skip_connection",
        "lora_unet_output_blocks_0_1_transformer_blocks_9_ff_net_2",
    ] {
        assert!(unique.contains(name), "missing {name}");
    }
    assert!(!names.iter().any(|n| n.contains("down_blocks") || n.contains("up_blocks") || n.contains("mid_block")));
    // The layers still look their modules up by diffusers path.
    let upsampler = targets.iter().find(|t| t.kohya_name("lora_unet") == "lora_unet_output_blocks_2_2_conv").unwrap();
    assert_eq!(upsampler.path, "up_blocks.0.upsamplers.0.conv");
    assert_eq!(upsampler.kind, LoraKind::Conv { kernel: 3, stride: 1, padding: 1 });
    // Input blocks, then the middle block, then output blocks.
    let first = |prefix: &str| names.iter().position(|n| n.starts_with(prefix)).unwrap();
    let last = |prefix: &str| names.iter().rposition(|n| n.starts_with(prefix)).unwrap();
    assert!(last("lora_unet_input_blocks_") < first("lora_unet_middle_block_"));
    assert!(last("lora_unet_middle_block_") < first("lora_unet_output_blocks_"));
    assert!(last("lora_unet_input_blocks_3_") < first("lora_unet_input_blocks_4_"));
    // The diffusers layout is unchanged.
    assert!(unet.lora_targets().iter().all(|t| t.kohya_path.is_none()));
    assert_eq!(unet.named_targets_in(KohyaLayout::Sgm).len(), 0);
    assert_eq!(unet.named_targets_in(KohyaLayout::Diffusers).len(), 4);
    Ok(())
}

/// lorakit-lora's converter enumerates SDXL's module names by hand (spec §14.3); our names come
/// from the block plan. Every target maps to the same kohya name, and the converter's U-Net
/// modules beyond ours are exactly the stems sd-scripts' `networks.lora` never targets.
#[test]
fn sdxl_sgm_names_agree_with_the_converters_map() -> TestResult {
    let unet = full_size_sdxl()?;
    let map = NameMap::new(Family::Sdxl).ok_or("no SDXL map")?;
    let mut ours = BTreeSet::new();
    for t in unet.lora_targets_in(KohyaLayout::Sgm) {
        let name = t.kohya_name("lora_unet");
        assert_eq!(map.to_kohya(&format!("unet.{}", t.path)), Some(name.as_str()), "{}", t.path);
        ours.insert(name);
    }
    let theirs: BTreeSet<String> =
        map.pairs().filter(|(k, _)| k.starts_with("lora_unet_")).map(|(k, _)| k.to_string()).collect();
    let extra: Vec<&String> = theirs.difference(&ours).collect();
    assert_eq!(
        extra,
        [
            "lora_unet_input_blocks_0_0",
            "lora_unet_label_emb_0_0",
            "lora_unet_label_emb_0_2",
            "lora_unet_out_2",
            "lora_unet_time_embed_0",
            "lora_unet_time_embed_2"
        ]
    );
    assert!(ours.is_subset(&theirs));
    Ok(())
}

/// The SGM map on a four-level SD1.5 layout (upsamplers at `.1` without attention, `.2` with):
/// every diffusers key of the tiny SD1.5 UNet names the same tensor in the fixture's LDM single
/// file (written with diffusers' and sd-scripts' converters).
#[test]
fn sgm_paths_match_the_sd15_single_file() -> TestResult {
    let dir = fixture("sd15_tiny");
    let cfg: UNet2DConditionModelConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("diffusers/unet/config.json"))?)?;
    let diffusers =
        candle_core::safetensors::load(dir.join("diffusers/unet/diffusion_pytorch_model.safetensors"), &Device::Cpu)?;
    let single = candle_core::safetensors::load(dir.join("single_file.safetensors"), &Device::Cpu)?;
    let ldm_unet = single.keys().filter(|k| k.starts_with("model.diffusion_model.")).count();
    assert_eq!(ldm_unet, diffusers.len());
    for (key, tensor) in &diffusers {
        let sgm = cfg.sgm_path(key).ok_or_else(|| format!("no SGM path for {key}"))?;
        let theirs = single
            .get(&format!("model.diffusion_model.{sgm}"))
            .ok_or_else(|| format!("{key} → {sgm}: not in the file"))?;
        // The file stores f16: compare our f32 tensor rounded the same way.
        let ours = tensor.to_dtype(theirs.dtype())?.to_dtype(DType::F32)?.flatten_all()?;
        let diff = (ours - theirs.to_dtype(DType::F32)?.flatten_all()?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{key} → {sgm}");
    }
    assert_eq!(cfg.sgm_path("up_blocks.0.upsamplers.0.conv").as_deref(), Some("output_blocks.2.1.conv"));
    assert_eq!(cfg.sgm_path("up_blocks.1.upsamplers.0.conv").as_deref(), Some("output_blocks.5.2.conv"));
    assert_eq!(cfg.sgm_path("down_blocks.0.resnets.9.conv1"), None);
    assert_eq!(cfg.sgm_path("down_blocks.0.resnets.0.norm3"), None);
    assert_eq!(cfg.sgm_path("conv_in_x"), None);
    Ok(())
}

/// diffusers' `add_time_proj` = `Timesteps(256, flip_sin_to_cos=True, 0)` (sd-scripts'
/// `get_size_embeddings` computes the same): cos then sin of id · 10000^(−i/128).
#[test]
fn add_time_proj_features_by_hand() -> TestResult {
    let ids = Tensor::new(&[1024f32, 0.0, 64.0], &Device::Cpu)?;
    let features: Vec<Vec<f32>> = Timesteps::new(256, true, 0.0).forward(&ids)?.to_vec2()?;
    for (row, id) in features.iter().zip([1024f64, 0.0, 64.0]) {
        assert_eq!(row.len(), 256);
        for i in 0..128 {
            let arg = id * (-(10000f64.ln()) * i as f64 / 128.0).exp();
            assert!((row[i] as f64 - arg.cos()).abs() < 2e-4, "id {id}, cos {i}: {} vs {}", row[i], arg.cos());
            assert!((row[128 + i] as f64 - arg.sin()).abs() < 2e-4, "id {id}, sin {i}");
        }
    }
    Ok(())
}

/// A tiny SDXL-shaped configuration: three levels, attention from the second, transformer depths
/// 1/2, linear projections, `text_time` with 6 ids of 8 features beside a 12-wide text embedding.
fn tiny_sdxl_config() -> UNet2DConditionModelConfig {
    UNet2DConditionModelConfig {
        sample_size: Some(16),
        down_block_types: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"].map(String::from).to_vec(),
        up_block_types: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"].map(String::from).to_vec(),
        block_out_channels: vec![16, 32, 32],
        layers_per_block: PerBlock::One(1),
        norm_num_groups: Some(8),
        cross_attention_dim: PerBlock::One(24),
        attention_head_dim: PerBlock::Many(vec![2, 4, 4]),
        transformer_layers_per_block: PerBlock::Many(vec![1, 1, 2]),
        use_linear_projection: true,
        addition_embed_type: Some("text_time".into()),
        addition_time_embed_dim: Some(8),
        projection_class_embeddings_input_dim: Some(12 + 6 * 8),
        ..Default::default()
    }
}

fn random_weights(cfg: &UNet2DConditionModelConfig) -> Result<Weights, Box<dyn std::error::Error>> {
    let mut tensors = HashMap::new();
    for (i, (name, shape)) in cfg.parameter_shapes().into_iter().enumerate() {
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let r = pseudo_random(&shape, 1000 + i as u64)?.to_dtype(DType::F32)?;
        let t = if shape.len() == 1 && name.contains("norm") && name.ends_with("weight") {
            ((r * 0.2)? + 1.0)?
        } else if shape.len() == 1 {
            (r * 0.2)?
        } else {
            (r * (1.5 / (fan_in as f64).sqrt()))?
        };
        tensors.insert(name, t);
    }
    Ok(Weights::new(tensors, "random"))
}

struct Inputs {
    sample: Tensor,
    t: Tensor,
    ehs: Tensor,
    added: AddedConditions,
}

fn inputs() -> Result<Inputs, Box<dyn std::error::Error>> {
    let f32 = |shape: &[usize], seed| -> Result<Tensor, Box<dyn std::error::Error>> {
        Ok(pseudo_random(shape, seed)?.to_dtype(DType::F32)?)
    };
    Ok(Inputs {
        sample: f32(&[2, 4, 8, 8], 1)?,
        t: Tensor::new(&[10u32, 900], &Device::Cpu)?,
        ehs: f32(&[2, 7, 24], 2)?,
        added: AddedConditions {
            text_embeds: f32(&[2, 12], 3)?,
            time_ids: Tensor::new(
                &[[1024f32, 768., 0., 16., 1024., 1024.], [512., 512., 8., 0., 512., 512.]],
                &Device::Cpu,
            )?,
        },
    })
}

#[test]
fn tiny_text_time_unet_reads_add_embedding_and_uses_the_conditions() -> TestResult {
    let cfg = tiny_sdxl_config();
    let weights = random_weights(&cfg)?;
    let unet = UNet2DConditionModel::new(weights.view(""), &cfg)?;
    weights.check_complete()?;
    assert!(weights.unused().is_empty(), "unread keys: {:?}", weights.unused());
    assert!(unet.needs_added_conditions());
    let x = inputs()?;
    let ctx = ForwardCtx::default();
    let out = unet.forward_with(&x.sample, &x.t, &x.ehs, Some(&x.added), &ctx)?;
    assert_eq!(out.dims(), &[2, 4, 8, 8]);
    // The ids matter, per sample: changing sample 1's crop changes only its prediction.
    let mut ids: Vec<Vec<f32>> = x.added.time_ids.to_vec2()?;
    ids[1][2] = 24.0;
    let moved = AddedConditions { text_embeds: x.added.text_embeds.clone(), time_ids: Tensor::new(ids, &Device::Cpu)? };
    let out2 = unet.forward_with(&x.sample, &x.t, &x.ehs, Some(&moved), &ctx)?;
    let diff =
        (&out - &out2)?.abs()?.max_keepdim(3)?.max_keepdim(2)?.max_keepdim(1)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(diff[0], 0.0);
    assert!(diff[1] > 1e-6, "{diff:?}");
    // Gradients reach the pooled text embedding (SDXL's second text encoder trains through it).
    let text = Var::from_tensor(&x.added.text_embeds)?;
    let added = AddedConditions { text_embeds: text.as_tensor().clone(), time_ids: x.added.time_ids.clone() };
    let out = unet.forward_with(&x.sample, &x.t, &x.ehs, Some(&added), &ctx)?;
    let grads = out.sqr()?.sum_all()?.backward()?;
    let g = grads.get(&text).ok_or("no text_embeds gradient")?;
    assert!(g.abs()?.max_all()?.to_scalar::<f32>()? > 0.0);
    Ok(())
}

/// With `add_embedding.linear_2` zeroed the added conditions contribute nothing: the model then
/// equals the same weights without the addition embedding (it is added to the time embedding and
/// nowhere else).
#[test]
fn zero_add_embedding_is_the_plain_model() -> TestResult {
    let cfg = tiny_sdxl_config();
    let mut weights = random_weights(&cfg)?;
    for key in ["add_embedding.linear_2.weight", "add_embedding.linear_2.bias"] {
        let zeros = weights.tensor(key).ok_or(key)?.zeros_like()?;
        weights.insert(key, zeros);
    }
    let with = UNet2DConditionModel::new(weights.view(""), &cfg)?;
    let plain_cfg = UNet2DConditionModelConfig {
        addition_embed_type: None,
        addition_time_embed_dim: None,
        projection_class_embeddings_input_dim: None,
        ..cfg
    };
    let plain = UNet2DConditionModel::new(weights.view(""), &plain_cfg)?;
    let x = inputs()?;
    let ctx = ForwardCtx::default();
    let a = with.forward_with(&x.sample, &x.t, &x.ehs, Some(&x.added), &ctx)?;
    let b = plain.forward(&x.sample, &x.t, &x.ehs, &ctx)?;
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(diff, 0.0);
    Ok(())
}

#[test]
fn added_conditions_are_required_checked_and_refused() -> TestResult {
    let cfg = tiny_sdxl_config();
    let weights = random_weights(&cfg)?;
    let unet = UNet2DConditionModel::new(weights.view(""), &cfg)?;
    let x = inputs()?;
    let ctx = ForwardCtx::default();
    let err = |r: candle_core::Result<Tensor>| r.expect_err("must fail").to_string();

    let e = err(unet.forward(&x.sample, &x.t, &x.ehs, &ctx));
    assert!(e.contains("text_time") && e.contains("forward_with"), "{e}");
    let e = err(unet.forward_with(&x.sample, &x.t, &x.ehs, None, &ctx));
    assert!(e.contains("text_embeds, time_ids"), "{e}");

    let bad = |text_embeds: Tensor, time_ids: Tensor| AddedConditions { text_embeds, time_ids };
    // Five ids where six are needed; ids for one sample of two; flat ids; a wrong text width.
    let five = x.added.time_ids.narrow(1, 0, 5)?;
    let e = err(unet.forward_with(&x.sample, &x.t, &x.ehs, Some(&bad(x.added.text_embeds.clone(), five)), &ctx));
    assert!(e.contains("time_ids must be (2, 6)") && e.contains("[2, 5]"), "{e}");
    let one = x.added.time_ids.narrow(0, 0, 1)?;
    let e = err(unet.forward_with(&x.sample, &x.t, &x.ehs, Some(&bad(x.added.text_embeds.clone(), one)), &ctx));
    assert!(e.contains("time_ids must be (2, 6)") && e.contains("[1, 6]"), "{e}");
    let flat = x.added.time_ids.flatten_all()?;
    let e = err(unet.forward_with(&x.sample, &x.t, &x.ehs, Some(&bad(x.added.text_embeds.clone(), flat)), &ctx));
    assert!(e.contains("time_ids must be"), "{e}");
    let wide = Tensor::zeros((2, 20), DType::F32, &Device::Cpu)?;
    let e = err(unet.forward_with(&x.sample, &x.t, &x.ehs, Some(&bad(wide, x.added.time_ids.clone())), &ctx));
    assert!(e.contains("time_ids must be") && e.contains("width 20"), "{e}");
    let e = err(unet.forward_with(
        &x.sample,
        &x.t,
        &x.ehs,
        Some(&bad(Tensor::zeros((2, 80), DType::F32, &Device::Cpu)?, x.added.time_ids.clone())),
        &ctx,
    ));
    assert!(e.contains("text_embeds must be (2, P)"), "{e}");

    // A model without an addition embedding refuses them.
    let plain = UNet2DConditionModel::new(weights.view(""), &tiny_sdxl_config_without_text_time())?;
    assert!(!plain.needs_added_conditions());
    let e = err(plain.forward_with(&x.sample, &x.t, &x.ehs, Some(&x.added), &ctx));
    assert!(e.contains("without an addition embedding"), "{e}");
    Ok(())
}

fn tiny_sdxl_config_without_text_time() -> UNet2DConditionModelConfig {
    UNet2DConditionModelConfig {
        addition_embed_type: None,
        addition_time_embed_dim: None,
        projection_class_embeddings_input_dim: None,
        ..tiny_sdxl_config()
    }
}

#[test]
fn addition_embedding_config_is_validated() {
    let cfg = |f: fn(&mut UNet2DConditionModelConfig)| {
        let mut c = tiny_sdxl_config();
        f(&mut c);
        c.validate().map_err(|e| e.to_string())
    };
    assert!(cfg(|_| {}).is_ok());
    let e = cfg(|c| c.addition_embed_type = Some("text_image".into())).unwrap_err();
    assert!(e.contains("text_image") && e.contains("only text_time"), "{e}");
    let e = cfg(|c| c.projection_class_embeddings_input_dim = None).unwrap_err();
    assert!(e.contains("projection_class_embeddings_input_dim"), "{e}");
    let e = cfg(|c| c.addition_time_embed_dim = Some(0)).unwrap_err();
    assert!(e.contains("addition_time_embed_dim"), "{e}");
    // A config without the embedding has no add_embedding keys.
    assert!(!tiny_sdxl_config_without_text_time()
        .parameter_shapes()
        .iter()
        .any(|(k, _)| k.starts_with("add_embedding")));
}

#[test]
fn activation_scale_follows_the_block_structure() {
    use lorakit_models::unet_2d::UNet2DConditionModelConfig;
    assert_eq!(UNet2DConditionModelConfig::sd15().activation_scale(), 1.0);
    // Measured on the step benchmarks (BENCHMARKS.md): SDXL keeps ~1.28× SD 1.5's activations
    // at the same latent size, far from its 3× parameter count.
    let sdxl = UNet2DConditionModelConfig::sdxl().activation_scale();
    assert!((1.15..1.45).contains(&sdxl), "{sdxl}");
    assert!((UNet2DConditionModelConfig::sd2().activation_scale() - 1.0).abs() < 0.05);
}
