//! SDXL checkpoints: single files in SGM layout and diffusers folders with `text_encoder_2/`.
//!
//! Without the PyTorch fixture: a synthetic SGM file written from random weights (OpenCLIP
//! keys for text encoder 2: fused q/k/v, `text_projection` stored (width, proj), `logit_scale`)
//! and the same weights as a diffusers folder must load to identical stores and identical text
//! conditioning; SDXL's full-size configs are read back from zero-cost (broadcast) full-size
//! stores; flags, variants and broken inputs give the documented answers. With the fixture
//! (`tests/fixtures/reference/sdxl_tiny/`) its two layouts are compared tensor by tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::checkpoint::sdxl::{infer_configs, sdxl_unet_config};
use lorakit_models::checkpoint::{
    detect_family, detect_family_at, load_sd_checkpoint, KeyFate, LdmKeyMap, ModelFamily, SdCheckpoint,
};
use lorakit_models::clip::ClipTextConfig;
use lorakit_models::schedule::Prediction;
use lorakit_models::sdxl_text::SdxlTextEncoders;
use lorakit_models::unet_2d::UNet2DConditionModelConfig;
use lorakit_models::vae::AutoencoderKLConfig;
use lorakit_models::{Error, Weights};
use lorakit_nn::gradcheck::pseudo_random;
use lorakit_nn::ForwardCtx;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn load(path: &Path) -> Result<SdCheckpoint, Error> {
    load_sd_checkpoint(path, DType::F32, &Device::Cpu)
}

fn error_text(path: &Path) -> String {
    match load(path) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            text
        }
    }
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    diff / scale.max(1e-12)
}

/// Every (name, shape) of a CLIP text model of `cfg` (and its projection), diffusers names.
fn clip_shapes(cfg: &ClipTextConfig, projection: bool) -> Vec<(String, Vec<usize>)> {
    cfg.parameter_shapes(projection)
}

fn random(shapes: &[(String, Vec<usize>)], seed: u64) -> HashMap<String, Tensor> {
    shapes
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let t = pseudo_random(shape, seed * 10_000 + k as u64).unwrap();
            let t = if name.contains("norm") && name.ends_with("weight") {
                t.affine(0.1, 1.0).unwrap()
            } else {
                t.affine(0.3, 0.0).unwrap()
            };
            (name.clone(), t.to_dtype(DType::F32).unwrap())
        })
        .collect()
}

/// Zero-cost tensors of the given shapes (a broadcast scalar each): enough to read sizes from.
fn phantom(shapes: &[(String, Vec<usize>)]) -> Weights {
    let zero = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    Weights::new(shapes.iter().map(|(n, s)| (n.clone(), zero.broadcast_as(s.as_slice()).unwrap())).collect(), "phantom")
}

fn te1_config() -> ClipTextConfig {
    ClipTextConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 3,
        num_attention_heads: 1,
        ..ClipTextConfig::sdxl_te1()
    }
}

fn te2_config() -> ClipTextConfig {
    ClipTextConfig {
        hidden_size: 128,
        intermediate_size: 160,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        projection_dim: Some(96),
        ..ClipTextConfig::sdxl_te2()
    }
}

/// A few U-Net tensors: (SGM key without `model.diffusion_model.`, diffusers key, shape).
const UNET_KEYS: [(&str, &str, &[usize]); 10] = [
    ("input_blocks.0.0.weight", "conv_in.weight", &[8, 4, 3, 3]),
    ("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight", &[8]),
    ("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight", &[8, 8, 3, 3]),
    (
        "input_blocks.7.1.transformer_blocks.1.attn1.to_q.weight",
        "down_blocks.2.attentions.0.transformer_blocks.1.attn1.to_q.weight",
        &[8, 8],
    ),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight", &[32, 108]),
    ("label_emb.0.2.bias", "add_embedding.linear_2.bias", &[32]),
    ("time_embed.0.weight", "time_embedding.linear_1.weight", &[32, 8]),
    ("middle_block.1.proj_in.weight", "mid_block.attentions.0.proj_in.weight", &[8, 8]),
    ("output_blocks.2.2.conv.weight", "up_blocks.0.upsamplers.0.conv.weight", &[8, 8, 3, 3]),
    ("out.2.bias", "conv_out.bias", &[4]),
];

/// A few VAE tensors: (LDM key without `first_stage_model.`, diffusers key, SGM shape).
const VAE_KEYS: [(&str, &str, &[usize]); 4] = [
    ("encoder.conv_in.weight", "encoder.conv_in.weight", &[8, 3, 3, 3]),
    ("encoder.mid.attn_1.q.weight", "encoder.mid_block.attentions.0.to_q.weight", &[8, 8, 1, 1]),
    ("decoder.up.3.block.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv1.weight", &[8, 8, 3, 3]),
    ("decoder.norm_out.bias", "decoder.conv_norm_out.bias", &[8]),
];

/// The same random model as an SGM single file and as a diffusers folder.
struct Synthetic {
    file: PathBuf,
    folder: PathBuf,
    _dir: tempfile::TempDir,
}

fn to_open_clip(te2: &HashMap<String, Tensor>, layers: usize) -> HashMap<String, Tensor> {
    let p = "conditioner.embedders.1.model.";
    let mut out = HashMap::new();
    let get = |k: &str| te2[k].clone();
    out.insert(format!("{p}token_embedding.weight"), get("text_model.embeddings.token_embedding.weight"));
    out.insert(format!("{p}positional_embedding"), get("text_model.embeddings.position_embedding.weight"));
    out.insert(format!("{p}ln_final.weight"), get("text_model.final_layer_norm.weight"));
    out.insert(format!("{p}ln_final.bias"), get("text_model.final_layer_norm.bias"));
    // OpenCLIP computes x @ P with P (width, proj); the linear weight is Pᵀ.
    out.insert(format!("{p}text_projection"), get("text_projection.weight").t().unwrap().contiguous().unwrap());
    out.insert(format!("{p}logit_scale"), Tensor::new(4.6f32, &Device::Cpu).unwrap());
    for l in 0..layers {
        let hf = format!("text_model.encoder.layers.{l}");
        let oc = format!("{p}transformer.resblocks.{l}");
        for param in ["weight", "bias"] {
            let qkv: Vec<Tensor> =
                ["q_proj", "k_proj", "v_proj"].iter().map(|q| get(&format!("{hf}.self_attn.{q}.{param}"))).collect();
            out.insert(format!("{oc}.attn.in_proj_{param}"), Tensor::cat(&qkv, 0).unwrap());
            for (from, to) in [
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ] {
                out.insert(format!("{oc}.{to}.{param}"), get(&format!("{hf}.{from}.{param}")));
            }
        }
    }
    out
}

fn write_json(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn save(path: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    candle_core::safetensors::save(tensors, path).unwrap();
}

fn synthetic(flags: &[&str]) -> Synthetic {
    let dir = tempfile::tempdir().unwrap();
    let (c1, c2) = (te1_config(), te2_config());
    let te1 = random(&clip_shapes(&c1, false), 1);
    let te2 = random(&clip_shapes(&c2, true), 2);
    let unet_shapes: Vec<(String, Vec<usize>)> =
        UNET_KEYS.iter().map(|(_, d, s)| (d.to_string(), s.to_vec())).collect();
    let unet = random(&unet_shapes, 3);
    let vae_sgm: Vec<(String, Vec<usize>)> = VAE_KEYS.iter().map(|(l, _, s)| (l.to_string(), s.to_vec())).collect();
    let vae_ldm = random(&vae_sgm, 4);

    let mut single: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in &te1 {
        single.insert(format!("conditioner.embedders.0.transformer.{k}"), t.clone());
    }
    single.extend(to_open_clip(&te2, c2.num_hidden_layers));
    for (sgm, diffusers, _) in UNET_KEYS {
        single.insert(format!("model.diffusion_model.{sgm}"), unet[diffusers].clone());
    }
    for (ldm, _, _) in VAE_KEYS {
        single.insert(format!("first_stage_model.{ldm}"), vae_ldm[ldm].clone());
    }
    for flag in flags {
        single.insert(flag.to_string(), Tensor::new(&[] as &[f32], &Device::Cpu).unwrap());
    }
    let file = dir.path().join("sdxl.safetensors");
    save(&file, &single);

    let folder = dir.path().join("sdxl");
    write_json(&folder.join("model_index.json"), r#"{"_class_name": "StableDiffusionXLPipeline"}"#);
    write_json(&folder.join("unet/config.json"), r#"{"addition_embed_type": "text_time"}"#);
    save(&folder.join("unet/diffusion_pytorch_model.safetensors"), &unet);
    let vae: HashMap<String, Tensor> = VAE_KEYS
        .iter()
        .map(|(ldm, d, _)| {
            let t = &vae_ldm[*ldm];
            let t = if t.rank() == 4 && t.dims()[2] == 1 && d.contains("to_q") {
                t.squeeze(3).unwrap().squeeze(2).unwrap()
            } else {
                t.clone()
            };
            (d.to_string(), t)
        })
        .collect();
    write_json(&folder.join("vae/config.json"), r#"{"scaling_factor": 0.13025}"#);
    save(&folder.join("vae/diffusion_pytorch_model.safetensors"), &vae);
    write_json(&folder.join("text_encoder/config.json"), &serde_json::to_string(&c1).unwrap());
    save(&folder.join("text_encoder/model.safetensors"), &te1);
    write_json(&folder.join("text_encoder_2/config.json"), &serde_json::to_string(&c2).unwrap());
    save(&folder.join("text_encoder_2/model.safetensors"), &te2);
    write_json(
        &folder.join("scheduler/scheduler_config.json"),
        r#"{"prediction_type": "v_prediction", "rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}"#,
    );
    Synthetic { file, folder, _dir: dir }
}

fn sorted_names(w: &Weights) -> Vec<String> {
    let mut n: Vec<String> = w.names().map(str::to_string).collect();
    n.sort();
    n
}

fn assert_same_store(what: &str, a: &Weights, b: &Weights) {
    assert_eq!(sorted_names(a), sorted_names(b), "{what}: tensor names");
    for name in sorted_names(b) {
        let (x, y) = (a.tensor(&name).unwrap(), b.tensor(&name).unwrap());
        assert_eq!(x.dims(), y.dims(), "{what} {name}");
        assert_eq!(rel_err(x, y), 0.0, "{what} {name}");
    }
}

#[test]
fn sgm_single_file_and_diffusers_folder_hold_the_same_model() -> TestResult {
    let s = synthetic(&[]);
    let file = load(&s.file)?;
    let folder = load(&s.folder)?;
    assert_eq!((file.family, folder.family), (ModelFamily::Sdxl, ModelFamily::Sdxl));
    assert_same_store("unet", &file.unet, &folder.unet);
    assert_same_store("vae", &file.vae, &folder.vae);
    assert_same_store("text encoder 1", &file.text_encoder, &folder.text_encoder);
    assert_same_store("text encoder 2", file.text_encoder_2.as_ref().unwrap(), folder.text_encoder_2.as_ref().unwrap());
    // Every OpenCLIP layer is kept (the pooled output needs the last one).
    assert!(file.text_encoder_2.as_ref().unwrap().contains("text_model.encoder.layers.2.mlp.fc2.weight"));
    // No flags, no modelspec: nothing declared by the file; the folder's scheduler declares both.
    assert!(file.declared_prediction.is_none() && !file.declared_zero_terminal_snr);
    assert_eq!(folder.declared_prediction.as_ref().map(|p| p.0), Some(Prediction::VPrediction));
    assert!(folder.declared_zero_terminal_snr);
    assert!(folder.zero_terminal_snr_source.as_deref().unwrap().contains("rescale_betas_zero_snr"));

    // Every key of the file is renamed, except the projection head's logit_scale.
    let names: Vec<String> = candle_core::safetensors::load(&s.file, &Device::Cpu)?.into_keys().collect();
    let map = LdmKeyMap::new(names.iter().map(String::as_str));
    for name in &names {
        match map.map(name) {
            KeyFate::Renamed(_) => {}
            KeyFate::Ignored(_) if name.ends_with("logit_scale") => {}
            other => panic!("{name}: {other:?}"),
        }
    }

    // The single file's configs come from its weights and equal the folder's text encoders.
    assert_eq!(serde_json::from_value::<ClipTextConfig>(file.text_encoder_config.clone().unwrap())?, te1_config());
    assert_eq!(serde_json::from_value::<ClipTextConfig>(file.text_encoder_2_config.clone().unwrap())?, te2_config());
    let vae_cfg: AutoencoderKLConfig = serde_json::from_value(file.vae_config.clone().unwrap())?;
    assert_eq!((vae_cfg.scaling_factor, vae_cfg.force_upcast), (0.13025, true));

    // Both layouts condition identically.
    let (a, b) = (SdxlTextEncoders::from_checkpoint(&file)?, SdxlTextEncoders::from_checkpoint(&folder)?);
    let ctx = ForwardCtx::default();
    let prompts = ["a castle on a hill at sunset", "1girl, solo!"];
    let (x, y) = (a.encode(&prompts, Some(150), [&ctx, &ctx])?, b.encode(&prompts, Some(150), [&ctx, &ctx])?);
    assert_eq!(x.context.dims(), &[2, 152, 64 + 128]);
    assert_eq!(x.pooled.dims(), &[2, 96]);
    assert_eq!(rel_err(&x.context, &y.context), 0.0);
    assert_eq!(rel_err(&x.pooled, &y.pooled), 0.0);
    Ok(())
}

#[test]
fn v_pred_and_ztsnr_flags_are_declared() -> TestResult {
    let s = synthetic(&["v_pred", "ztsnr"]);
    let ckpt = load(&s.file)?;
    let (prediction, source) = ckpt.declared_prediction.clone().ok_or("no declared prediction")?;
    assert_eq!(prediction, Prediction::VPrediction);
    assert!(source.contains("v_pred"), "{source}");
    assert!(ckpt.declared_zero_terminal_snr);
    assert!(ckpt.zero_terminal_snr_source.as_deref().unwrap().contains("ztsnr"));

    let only_v = synthetic(&["v_pred"]);
    let ckpt = load(&only_v.file)?;
    assert_eq!(ckpt.declared_prediction.map(|p| p.0), Some(Prediction::VPrediction));
    assert!(!ckpt.declared_zero_terminal_snr && ckpt.zero_terminal_snr_source.is_none());

    for flag in ["edm_mean", "edm_vpred.sigma_max"] {
        let edm = synthetic(&[flag]);
        let text = error_text(&edm.file);
        assert!(text.contains("EDM"), "{text}");
        assert!(matches!(load(&edm.file), Err(Error::UnsupportedFamily { .. })));
    }
    Ok(())
}

#[test]
fn family_is_detected_from_keys_files_and_folders() -> TestResult {
    let s = synthetic(&[]);
    assert_eq!(detect_family_at(&s.file)?, ModelFamily::Sdxl);
    assert_eq!(detect_family_at(&s.folder)?, ModelFamily::Sdxl);
    assert!(ModelFamily::Sdxl.is_supported());
    for keys in [
        &["conditioner.embedders.1.model.ln_final.weight"][..],
        &["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"],
        &["model.diffusion_model.label_emb.0.0.weight"],
    ] {
        assert_eq!(detect_family(keys.iter().copied()), ModelFamily::Sdxl, "{keys:?}");
    }
    // A folder is SDXL by its pipeline class, its second text encoder, or its U-Net config.
    let dir = tempfile::tempdir()?;
    let by_config = dir.path().join("by_config");
    write_json(
        &by_config.join("unet/config.json"),
        r#"{"addition_embed_type": "text_time", "cross_attention_dim": 2048}"#,
    );
    assert_eq!(detect_family_at(&by_config)?, ModelFamily::Sdxl);
    Ok(())
}

#[test]
fn broken_and_unsupported_sdxl_inputs_get_one_line_errors() -> TestResult {
    let s = synthetic(&[]);
    let dir = s.file.parent().unwrap().to_path_buf();

    // A truncated download.
    let bytes = std::fs::read(&s.file)?;
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let text = error_text(&truncated);
    assert!(text.contains("truncated.safetensors"), "{text}");
    // A header that is not JSON.
    let corrupt = dir.join("corrupt.safetensors");
    let mut damaged = bytes.clone();
    for b in &mut damaged[8..40] {
        *b = 0xff;
    }
    std::fs::write(&corrupt, &damaged)?;
    let text = error_text(&corrupt);
    assert!(text.contains("corrupt.safetensors"), "{text}");

    // A single file without its second text encoder.
    let mut tensors = candle_core::safetensors::load(&s.file, &Device::Cpu)?;
    tensors.retain(|k, _| !k.starts_with("conditioner.embedders.1."));
    let no_te2 = dir.join("no_te2.safetensors");
    save(&no_te2, &tensors);
    let text = error_text(&no_te2);
    assert!(text.contains("text encoder 2") && text.contains("conditioner.embedders.1.model"), "{text}");

    // A folder without text_encoder_2/, and one without its config.json.
    let folder = &s.folder;
    std::fs::rename(folder.join("text_encoder_2/config.json"), dir.join("te2_config.json"))?;
    let text = error_text(folder);
    assert!(text.contains("text_encoder_2/config.json"), "{text}");
    std::fs::rename(folder.join("text_encoder_2"), dir.join("te2_moved"))?;
    let text = error_text(folder);
    assert!(text.contains("text_encoder_2/") && text.contains("SDXL"), "{text}");
    assert!(matches!(load(folder), Err(Error::Checkpoint { .. })));

    // The refiner (text_encoder_2/ without text_encoder/) is refused by name.
    std::fs::rename(dir.join("te2_moved"), folder.join("text_encoder_2"))?;
    std::fs::rename(dir.join("te2_config.json"), folder.join("text_encoder_2/config.json"))?;
    std::fs::remove_dir_all(folder.join("text_encoder"))?;
    let text = error_text(folder);
    assert!(text.contains("refiner"), "{text}");
    assert!(matches!(load(folder), Err(Error::UnsupportedFamily { .. })));
    Ok(())
}

#[test]
fn full_size_sdxl_configs_are_read_back_from_full_size_weights() -> TestResult {
    // The shapes of SDXL base: its U-Net and VAE from their configs, the text encoders from
    // theirs. Reading sizes from them must give the published configs back.
    let unet_preset = UNet2DConditionModelConfig::sdxl();
    let unet_shapes = unet_preset.parameter_shapes();
    assert!(unet_shapes.iter().any(|(n, _)| n == "add_embedding.linear_1.weight"));
    let unet = phantom(&unet_shapes);
    let vae = phantom(&AutoencoderKLConfig::sdxl().parameter_shapes());
    let te1 = phantom(&clip_shapes(&ClipTextConfig::sdxl_te1(), false));
    let te2 = phantom(&clip_shapes(&ClipTextConfig::sdxl_te2(), true));
    let configs = infer_configs(&unet, &vae, &te1, Some(&te2));
    assert_eq!(serde_json::from_value::<ClipTextConfig>(configs.text_encoder)?, ClipTextConfig::sdxl_te1());
    assert_eq!(serde_json::from_value::<ClipTextConfig>(configs.text_encoder_2)?, ClipTextConfig::sdxl_te2());
    assert_eq!(serde_json::from_value::<AutoencoderKLConfig>(configs.vae)?, AutoencoderKLConfig::sdxl());
    assert_eq!(configs.unet, sdxl_unet_config());
    assert_eq!(serde_json::from_value::<UNet2DConditionModelConfig>(configs.unet)?, unet_preset);

    // A distilled U-Net (fewer transformer blocks, SSD-1B style) gets its own depths.
    let shallow: Vec<(String, Vec<usize>)> = unet_shapes
        .iter()
        .filter(|(n, _)| {
            !(n.starts_with("down_blocks.2.attentions.")
                && n.split('.').nth(5).and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i >= 4))
        })
        .cloned()
        .collect();
    let configs = infer_configs(&phantom(&shallow), &vae, &te1, Some(&te2));
    assert_eq!(configs.unet["transformer_layers_per_block"], serde_json::json!([1, 2, 4]));
    assert!(configs.unet.get("reverse_transformer_layers_per_block").is_some(), "up blocks keep 10");

    // SDXL's VAE: SD's architecture, scaling 0.13025, upcast.
    let sdxl_vae = AutoencoderKLConfig::sdxl();
    assert_eq!((sdxl_vae.scaling_factor, sdxl_vae.force_upcast, sdxl_vae.sample_size), (0.13025, true, 1024));
    assert_eq!(sdxl_vae.downsample_factor(), 8);
    assert_eq!(AutoencoderKLConfig::sdxl().parameter_shapes(), AutoencoderKLConfig::sd15().parameter_shapes());
    Ok(())
}

#[test]
fn sgm_unet_keys_follow_the_sdxl_rules() {
    let keys: Vec<String> = [
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.2.0.in_layers.0.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.1.proj_in.weight",
        "input_blocks.6.0.op.weight",
        "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
        "middle_block.1.transformer_blocks.9.ff.net.2.weight",
        "output_blocks.0.1.transformer_blocks.9.norm3.bias",
        "output_blocks.2.2.conv.weight",
        "output_blocks.5.2.conv.bias",
        "output_blocks.8.0.skip_connection.weight",
        "label_emb.0.0.weight",
        "label_emb.0.2.bias",
    ]
    .iter()
    .map(|k| format!("model.diffusion_model.{k}"))
    .collect();
    let map = LdmKeyMap::new(keys.iter().map(String::as_str));
    assert_eq!(map.layers_per_block(), 2);
    let want = [
        "conv_in.weight",
        "down_blocks.0.resnets.0.norm1.weight",
        "down_blocks.0.resnets.1.norm1.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.1.attentions.0.proj_in.weight",
        "down_blocks.1.downsamplers.0.conv.weight",
        "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight",
        "mid_block.attentions.0.transformer_blocks.9.ff.net.2.weight",
        "up_blocks.0.attentions.0.transformer_blocks.9.norm3.bias",
        "up_blocks.0.upsamplers.0.conv.weight",
        "up_blocks.1.upsamplers.0.conv.bias",
        "up_blocks.2.resnets.2.conv_shortcut.weight",
        "add_embedding.linear_1.weight",
        "add_embedding.linear_2.bias",
    ];
    for (key, want) in keys.iter().zip(want) {
        match map.map(key) {
            KeyFate::Renamed(t) => assert_eq!(t[0].name, want, "{key}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(matches!(map.map("model.diffusion_model.label_emb.0.1.weight"), KeyFate::Unmapped(_)));
    for flag in ["v_pred", "ztsnr"] {
        assert!(matches!(map.map(flag), KeyFate::Ignored(_)));
    }
}

// ---------------------------------------------------------------------------------------------
// The PyTorch fixture (`tools/reference/make_sdxl_tiny.py`).

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/sdxl_tiny")).join(rel)
}

fn fixture_json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

#[test]
fn fixture_single_file_holds_the_folder_model() -> TestResult {
    let file = load(&fixture("single_file.safetensors"))?;
    let folder = load(&fixture("diffusers"))?;
    assert_eq!((file.family, folder.family), (ModelFamily::Sdxl, ModelFamily::Sdxl));
    assert_same_store("unet", &file.unet, &folder.unet);
    assert_same_store("vae", &file.vae, &folder.vae);
    assert_same_store("text encoder 1", &file.text_encoder, &folder.text_encoder);
    assert_same_store("text encoder 2", file.text_encoder_2.as_ref().unwrap(), folder.text_encoder_2.as_ref().unwrap());
    assert_eq!(file.text_encoder_2.as_ref().unwrap().len(), 69);
    // SDXL base's scheduler file says epsilon; nothing says zero-terminal SNR.
    assert_eq!(folder.declared_prediction.as_ref().map(|p| p.0), Some(Prediction::Epsilon));
    assert!(file.declared_prediction.is_none());
    assert!(!file.declared_zero_terminal_snr && !folder.declared_zero_terminal_snr);

    // Every stored key is renamed but the non-model extras the fixture documents.
    let names: Vec<String> =
        candle_core::safetensors::load(fixture("single_file.safetensors"), &Device::Cpu)?.into_keys().collect();
    let map = LdmKeyMap::new(names.iter().map(String::as_str));
    let mut ignored: Vec<&str> = names
        .iter()
        .filter(|n| match map.map(n) {
            KeyFate::Renamed(_) => false,
            KeyFate::Ignored(_) => true,
            KeyFate::Unmapped(c) => panic!("{n} ({c}) is unmapped"),
        })
        .map(String::as_str)
        .collect();
    ignored.sort_unstable();
    assert_eq!(
        ignored,
        [
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            "conditioner.embedders.1.model.logit_scale",
            "denoiser.sigmas",
        ]
    );

    // The single file's U-Net and VAE configs read from its weights: the folder's, but for
    // what weights cannot show (heads: SDXL's 64 channels each; sample size; VAE groups).
    let mut inferred = file.unet_config.clone().unwrap();
    let mut published = folder.unet_config.clone().unwrap();
    for key in ["attention_head_dim", "sample_size", "_diffusers_version", "attention_type", "dropout"] {
        inferred.as_object_mut().unwrap().remove(key);
        published.as_object_mut().unwrap().remove(key);
    }
    published.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    inferred.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    assert_eq!(inferred, published);
    let vae: AutoencoderKLConfig = serde_json::from_value(file.vae_config.clone().unwrap())?;
    let want: AutoencoderKLConfig = serde_json::from_value(folder.vae_config.clone().unwrap())?;
    assert_eq!(
        (&vae.block_out_channels, vae.layers_per_block, vae.latent_channels, vae.scaling_factor, vae.force_upcast),
        (&want.block_out_channels, want.layers_per_block, want.latent_channels, want.scaling_factor, want.force_upcast)
    );
    Ok(())
}

#[test]
fn fixture_full_size_sgm_keys_map_to_diffusers_and_give_the_published_configs() -> TestResult {
    let full = fixture_json("sdxl_full_shapes.json");
    let sgm: std::collections::BTreeMap<String, Vec<usize>> = serde_json::from_value(full["sgm"].clone())?;
    let want: std::collections::BTreeMap<String, Option<String>> =
        serde_json::from_value(full["sgm_to_diffusers"].clone())?;
    let te2_shapes: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_value(full["diffusers_text_encoder_2"].clone())?;
    let map = LdmKeyMap::new(sgm.keys().map(String::as_str));
    let mut stores: std::collections::BTreeMap<&str, Vec<(String, Vec<usize>)>> = Default::default();
    for (key, shape) in &sgm {
        let component_name = |c: lorakit_models::checkpoint::Component| match c {
            lorakit_models::checkpoint::Component::Unet => "unet",
            lorakit_models::checkpoint::Component::Vae => "vae",
            lorakit_models::checkpoint::Component::TextEncoder => "text_encoder",
            lorakit_models::checkpoint::Component::TextEncoder2 => "text_encoder_2",
        };
        match (map.map(key), &want[key]) {
            (KeyFate::Ignored(_), None) => {}
            (KeyFate::Renamed(targets), Some(expected)) => {
                let names: Vec<String> =
                    targets.iter().map(|t| format!("{}/{}", component_name(t.component), t.name)).collect();
                if targets.len() == 3 {
                    // "…{q,k,v}_proj.weight (concatenated on dim 0)"
                    let pattern = expected.split(' ').next().unwrap();
                    let expand: Vec<String> = ["q", "k", "v"].iter().map(|p| pattern.replace("{q,k,v}", p)).collect();
                    assert_eq!(names, expand, "{key}");
                } else {
                    assert_eq!(names.len(), 1, "{key}");
                    assert_eq!(&names[0], expected.split(' ').next().unwrap(), "{key}");
                }
                for t in &targets {
                    let shape = t.transform.shape(shape).ok_or("transform")?;
                    if t.component == lorakit_models::checkpoint::Component::TextEncoder2 {
                        assert_eq!(Some(&shape), te2_shapes.get(&t.name), "{key} → {}", t.name);
                    }
                    stores.entry(component_name(t.component)).or_default().push((t.name.clone(), shape));
                }
            }
            (fate, expected) => panic!("{key}: {fate:?}, expected {expected:?}"),
        }
    }
    let counts = &full["key_counts"];
    for c in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        assert_eq!(stores[c].len() as u64, counts[c].as_u64().unwrap(), "{c} keys");
    }
    // The sizes read from those shapes are SDXL base's published configs.
    let configs = infer_configs(
        &phantom(&stores["unet"]),
        &phantom(&stores["vae"]),
        &phantom(&stores["text_encoder"]),
        Some(&phantom(&stores["text_encoder_2"])),
    );
    let published = fixture_json("sdxl_full_configs.json");
    let unet: UNet2DConditionModelConfig = serde_json::from_value(configs.unet)?;
    assert_eq!(unet, serde_json::from_value::<UNet2DConditionModelConfig>(published["unet"].clone())?);
    assert_eq!(unet, UNet2DConditionModelConfig::sdxl());
    let vae: AutoencoderKLConfig = serde_json::from_value(configs.vae)?;
    assert_eq!(vae, serde_json::from_value::<AutoencoderKLConfig>(published["vae"].clone())?);
    assert_eq!(vae, AutoencoderKLConfig::sdxl());
    for (ours, key, preset) in [
        (configs.text_encoder, "text_encoder", ClipTextConfig::sdxl_te1()),
        (configs.text_encoder_2, "text_encoder_2", ClipTextConfig::sdxl_te2()),
    ] {
        let ours: ClipTextConfig = serde_json::from_value(ours)?;
        assert_eq!(ours, serde_json::from_value::<ClipTextConfig>(published[key].clone())?, "{key}");
        assert_eq!(ours, preset, "{key}");
    }
    assert_eq!(
        published["sd_scripts_constants"]["VAE_SCALE_FACTOR"].as_f64(),
        Some(AutoencoderKLConfig::sdxl().scaling_factor)
    );
    Ok(())
}

#[test]
fn fixture_three_level_vae_matches_diffusers_from_both_layouts() -> TestResult {
    let io = candle_core::safetensors::load(fixture("io_vae.safetensors"), &Device::Cpu)?;
    let folder = load(&fixture("diffusers"))?;
    let file = load(&fixture("single_file.safetensors"))?;
    let cfg: AutoencoderKLConfig = serde_json::from_value(folder.vae_config.clone().unwrap())?;
    assert_eq!((cfg.scaling_factor, cfg.force_upcast, cfg.downsample_factor()), (0.13025, true, 4));
    for (what, ckpt) in [("folder", &folder), ("single file", &file)] {
        let vae = lorakit_models::vae::AutoencoderKL::new(ckpt.vae.view(""), &cfg)?;
        ckpt.vae.check_complete()?;
        assert!(ckpt.vae.unused().is_empty(), "{what}: {:?}", ckpt.vae.unused());
        let posterior = vae.encode(&io["image"])?;
        assert_eq!(posterior.mean().dims(), &[1, 4, 6, 10]);
        let checks = [
            ("latent_mean", posterior.mean().clone()),
            ("latent_logvar", posterior.logvar().clone()),
            ("latent_sample", posterior.sample_with_noise(&io["posterior_eps"])?),
            ("decoded_mean", vae.decode(&io["latent_mean"])?),
        ];
        for (name, ours) in checks {
            let err = rel_err(&ours, &io[name]);
            eprintln!("{what} {name}: relative error {err:.3e}");
            assert!(err <= 1e-4, "{what} {name}: relative error {err:.3e}");
        }
    }
    Ok(())
}
