//! Checkpoint loading: single-file LDM vs diffusers folder parity on the tiny SD 1.5 fixture,
//! the LDM → diffusers key map on the full-size SD 1.5 key list, and the refusals (pickles,
//! truncated files, LoRAs, other families, incomplete folders) on small synthetic files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::checkpoint::{
    detect_family, detect_family_at, load_sd_checkpoint, read_safetensors, KeyFate, LdmKeyMap, ModelFamily,
    SdCheckpoint,
};
use lorakit_models::{Error, Weights};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd15_tiny")
}

fn load(path: &Path) -> Result<SdCheckpoint, Error> {
    load_sd_checkpoint(path, DType::F32, &Device::Cpu)
}

/// The error's text, checked to be one line that names the path.
fn error_text(result: Result<SdCheckpoint, Error>, path: &Path) -> String {
    let text = match result {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(!text.contains('\n'), "multi-line error: {text}");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(text.contains(name), "error does not name {name}: {text}");
    text
}

fn sorted_names(w: &Weights) -> Vec<String> {
    let mut names: Vec<String> = w.names().map(str::to_string).collect();
    names.sort();
    names
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_dtype(DType::F32)).and_then(|t| t.to_vec1::<f32>()).expect("tensor values")
}

/// Writes `tensors` (name, shape, stored dtype; values 0, 1, 2, …) as a safetensors file.
fn write_file(path: &Path, tensors: &[(&str, &[usize], DType)]) {
    let mut map = HashMap::new();
    for &(name, shape, dtype) in tensors {
        let n: usize = shape.iter().product();
        let t = if dtype == DType::I64 {
            Tensor::arange(0i64, n as i64, &Device::Cpu)
        } else {
            Tensor::arange(0f32, n as f32, &Device::Cpu).and_then(|t| t.to_dtype(dtype))
        };
        let t = t.and_then(|t| t.reshape(shape)).expect("test tensor");
        map.insert(name.to_string(), t);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create dir");
    }
    candle_core::safetensors::save(&map, path).expect("write safetensors");
}

// ---------------------------------------------------------------------------------------------
// Fixture parity

#[test]
fn single_file_and_diffusers_folder_load_identically() -> TestResult {
    let dir = fixture_dir();
    let single = load(&dir.join("single_file.safetensors"))?;
    let folder = load(&dir.join("diffusers"))?;
    assert_eq!(single.family, ModelFamily::Sd1);
    assert_eq!(folder.family, ModelFamily::Sd1);
    assert!(single.unet_config.is_none() && single.vae_config.is_none() && single.text_encoder_config.is_none());
    let unet_config = folder.unet_config.as_ref().ok_or("no unet config")?;
    assert_eq!(unet_config["cross_attention_dim"], 32);
    assert!(folder.vae_config.is_some() && folder.text_encoder_config.is_some());

    for (component, a, b) in [
        ("unet", &single.unet, &folder.unet),
        ("vae", &single.vae, &folder.vae),
        ("text_encoder", &single.text_encoder, &folder.text_encoder),
    ] {
        let (names_a, names_b) = (sorted_names(a), sorted_names(b));
        assert_eq!(names_a, names_b, "{component}: key sets differ");
        for name in &names_a {
            let (ta, tb) = (a.tensor(name).ok_or("missing")?, b.tensor(name).ok_or("missing")?);
            assert_eq!(ta.dims(), tb.dims(), "{component}.{name}: shapes differ");
            assert_eq!(ta.dtype(), DType::F32);
            assert!(values(ta) == values(tb), "{component}.{name}: values differ");
        }
    }
    // The LDM VAE's 1×1-conv attention arrives as a linear weight.
    let q = single.vae.tensor("encoder.mid_block.attentions.0.to_q.weight").ok_or("no to_q")?;
    assert_eq!(q.rank(), 2);
    assert!(!single.text_encoder.contains("text_model.embeddings.position_ids"));
    Ok(())
}

#[test]
fn fixture_loads_in_half_precision_and_families_are_detected() -> TestResult {
    let dir = fixture_dir();
    for dtype in [DType::F16, DType::BF16] {
        let ckpt = load_sd_checkpoint(&dir.join("single_file.safetensors"), dtype, &Device::Cpu)?;
        let t = ckpt.unet.tensor("conv_in.weight").ok_or("no conv_in")?;
        assert_eq!(t.dtype(), dtype);
    }
    assert_eq!(detect_family_at(&dir.join("single_file.safetensors"))?, ModelFamily::Sd1);
    assert_eq!(detect_family_at(&dir.join("diffusers"))?, ModelFamily::Sd1);
    Ok(())
}

#[test]
fn ldm_map_turns_full_size_sd15_keys_into_diffusers_keys() -> TestResult {
    let text = std::fs::read_to_string(fixture_dir().join("sd15_full_shapes.json"))?;
    let json: Value = serde_json::from_str(&text)?;
    let ldm: BTreeMap<String, Vec<usize>> = serde_json::from_value(json["ldm"].clone())?;
    let extras: BTreeMap<String, Value> = serde_json::from_value(json["ldm_extras"].clone())?;
    let pairs: BTreeMap<String, String> = serde_json::from_value(json["ldm_to_diffusers"].clone())?;
    let all_keys: Vec<&str> = ldm.keys().chain(extras.keys()).map(String::as_str).collect();
    let map = LdmKeyMap::new(all_keys.iter().copied());
    assert_eq!(map.layers_per_block(), 2);

    let mut got: BTreeMap<&str, BTreeMap<String, Vec<usize>>> = BTreeMap::new();
    for (key, shape) in &ldm {
        let KeyFate::Renamed(targets) = map.map(key) else {
            panic!("{key} is not renamed: {:?}", map.map(key));
        };
        assert_eq!(targets.len(), 1, "{key}");
        let target = &targets[0];
        let component = match target.component {
            lorakit_models::checkpoint::Component::Unet => "unet",
            lorakit_models::checkpoint::Component::Vae => "vae",
            lorakit_models::checkpoint::Component::TextEncoder => "text_encoder",
            lorakit_models::checkpoint::Component::TextEncoder2 => "text_encoder_2",
        };
        assert_eq!(pairs.get(key), Some(&format!("{component}/{}", target.name)), "{key}");
        let shape = target.transform.shape(shape).ok_or("transform does not apply")?;
        let clash = got.entry(component).or_default().insert(target.name.clone(), shape);
        assert!(clash.is_none(), "two LDM keys map to {component}/{}", target.name);
    }
    for key in extras.keys() {
        assert!(matches!(map.map(key), KeyFate::Ignored(_)), "{key} should be ignored");
    }
    for component in ["unet", "vae", "text_encoder"] {
        let want: BTreeMap<String, Vec<usize>> = serde_json::from_value(json["diffusers"][component].clone())?;
        let have = got.remove(component).unwrap_or_default();
        let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).take(5).collect();
        let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{component}: missing {missing:?}, extra {extra:?}");
        for (name, shape) in &want {
            assert_eq!(&have[name], shape, "{component}/{name}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Synthetic single files

const F16: DType = DType::F16;

/// A minimal SD 1.x single file: a few tensors per component, plus the stray keys real files
/// carry, and a text encoder saved without the `text_model.` level.
fn sd1_tensors(dtype: DType) -> Vec<(&'static str, &'static [usize], DType)> {
    vec![
        ("model.diffusion_model.input_blocks.0.0.weight", &[4, 4, 3, 3], dtype),
        ("model.diffusion_model.input_blocks.3.0.op.weight", &[4, 4, 3, 3], dtype),
        ("model.diffusion_model.output_blocks.2.1.conv.weight", &[4, 4, 3, 3], dtype),
        ("first_stage_model.encoder.mid.attn_1.q.weight", &[4, 4, 1, 1], dtype),
        ("first_stage_model.decoder.up.3.block.0.nin_shortcut.weight", &[4, 2, 1, 1], dtype),
        ("first_stage_model.loss.logvar", &[], DType::F32),
        ("cond_stage_model.transformer.embeddings.token_embedding.weight", &[10, 4], dtype),
        ("cond_stage_model.transformer.embeddings.position_ids", &[1, 77], DType::I64),
        ("model_ema.decay", &[], DType::F32),
        ("alphas_cumprod", &[10], DType::F32),
    ]
}

#[test]
fn single_file_is_renamed_converted_and_cleaned() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for stored in [DType::F16, DType::BF16, DType::F32] {
        let path = tmp.path().join(format!("sd1_{}.safetensors", stored.as_str()));
        write_file(&path, &sd1_tensors(stored));
        let ckpt = load(&path)?;
        assert_eq!(ckpt.family, ModelFamily::Sd1);
        assert_eq!(
            sorted_names(&ckpt.unet),
            ["conv_in.weight", "down_blocks.0.downsamplers.0.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"]
        );
        assert_eq!(
            sorted_names(&ckpt.vae),
            ["decoder.up_blocks.0.resnets.0.conv_shortcut.weight", "encoder.mid_block.attentions.0.to_q.weight"]
        );
        assert_eq!(sorted_names(&ckpt.text_encoder), ["text_model.embeddings.token_embedding.weight"]);
        let q = ckpt.vae.tensor("encoder.mid_block.attentions.0.to_q.weight").ok_or("no q")?;
        assert_eq!((q.dims(), q.dtype()), (&[4usize, 4][..], DType::F32));
        assert_eq!(values(q), (0..16).map(|v| v as f32).collect::<Vec<_>>());
        assert!(ckpt.unet.source().contains("U-Net"));
    }
    Ok(())
}

#[test]
fn sd2_open_clip_text_encoder_becomes_hf_clip() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("sd2.safetensors");
    let mut tensors = sd1_tensors(F16);
    tensors.retain(|(n, _, _)| !n.starts_with("cond_stage_model."));
    tensors.extend([
        ("cond_stage_model.model.token_embedding.weight", &[10usize, 4][..], F16),
        ("cond_stage_model.model.positional_embedding", &[77, 4], F16),
        ("cond_stage_model.model.ln_final.weight", &[4], F16),
        ("cond_stage_model.model.text_projection", &[4, 4], F16),
        ("cond_stage_model.model.logit_scale", &[], F16),
        ("cond_stage_model.model.transformer.resblocks.0.ln_1.weight", &[4], F16),
        ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", &[12, 4], F16),
        ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias", &[12], F16),
        ("cond_stage_model.model.transformer.resblocks.0.attn.out_proj.weight", &[4, 4], F16),
        ("cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight", &[16, 4], F16),
        ("cond_stage_model.model.transformer.resblocks.0.mlp.c_proj.weight", &[4, 16], F16),
        ("cond_stage_model.model.transformer.resblocks.1.ln_1.weight", &[4], F16),
        ("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight", &[12, 4], F16),
    ]);
    write_file(&path, &tensors);
    let ckpt = load(&path)?;
    assert_eq!(ckpt.family, ModelFamily::Sd2);
    let layer = "text_model.encoder.layers.0";
    let mut want: Vec<String> = [
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.weight",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for child in [
        "layer_norm1.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
        "self_attn.out_proj.weight",
        "mlp.fc1.weight",
        "mlp.fc2.weight",
    ] {
        want.push(format!("{layer}.{child}"));
    }
    want.sort();
    // The last OpenCLIP layer is dropped (SD 2.x conditions on the penultimate one).
    assert_eq!(sorted_names(&ckpt.text_encoder), want);
    for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let w = ckpt.text_encoder.tensor(&format!("{layer}.self_attn.{proj}.weight")).ok_or("no proj")?;
        assert_eq!(w.dims(), &[4, 4]);
        assert_eq!(values(w), (16 * i..16 * (i + 1)).map(|v| v as f32).collect::<Vec<_>>());
        let b = ckpt.text_encoder.tensor(&format!("{layer}.self_attn.{proj}.bias")).ok_or("no bias")?;
        assert_eq!(values(b), (4 * i..4 * (i + 1)).map(|v| v as f32).collect::<Vec<_>>());
    }
    Ok(())
}

#[test]
fn families_are_detected_from_keys() {
    let cases: [(&[&str], ModelFamily); 8] = [
        (&["cond_stage_model.transformer.text_model.final_layer_norm.weight"], ModelFamily::Sd1),
        (&["cond_stage_model.model.transformer.resblocks.0.ln_1.weight"], ModelFamily::Sd2),
        (&["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.out.2.weight"], ModelFamily::Sdxl),
        (&["model.diffusion_model.label_emb.0.0.weight"], ModelFamily::Sdxl),
        (&["double_blocks.0.img_attn.qkv.weight"], ModelFamily::Flux),
        (&["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"], ModelFamily::Flux),
        (&["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], ModelFamily::Sd3),
        // SD 1.x and 2.x U-Nets share every key: a U-Net alone says nothing.
        (&["model.diffusion_model.input_blocks.0.0.weight"], ModelFamily::Unknown),
    ];
    for (keys, family) in cases {
        assert_eq!(detect_family(keys.iter().copied()), family, "{keys:?}");
    }
    assert_eq!(ModelFamily::Sd1.to_string(), "SD 1.x");
    assert_eq!(ModelFamily::Sdxl.to_string(), "SDXL");
}

#[test]
fn pickles_are_refused_with_a_conversion_hint() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for name in ["model.ckpt", "model.pt", "model.pth", "model.bin"] {
        let path = tmp.path().join(name);
        std::fs::write(&path, b"\x80\x02}q\x00.")?;
        let text = error_text(load(&path), &path);
        assert!(text.contains("pickle") && text.contains("arbitrary code") && text.contains(".safetensors"), "{text}");
        assert!(text.contains("convert_diffusers20_original_sd.py"), "{text}");
        assert!(matches!(load(&path), Err(Error::Checkpoint { .. })));
    }
    // A torch zip checkpoint renamed to .safetensors is recognised by its bytes.
    let path = tmp.path().join("renamed.safetensors");
    std::fs::write(&path, b"PK\x03\x04archive/data.pkl")?;
    let text = error_text(load(&path), &path);
    assert!(text.contains("pickle"), "{text}");
    Ok(())
}

#[test]
fn truncated_empty_and_foreign_files_get_one_line_errors() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let full = tmp.path().join("full.safetensors");
    write_file(&full, &sd1_tensors(F16));
    let bytes = std::fs::read(&full)?;

    let truncated = tmp.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100])?;
    let text = error_text(load(&truncated), &truncated);
    assert!(text.contains("truncated"), "{text}");

    let header_cut = tmp.path().join("header_cut.safetensors");
    std::fs::write(&header_cut, &bytes[..40])?;
    let text = error_text(load(&header_cut), &header_cut);
    assert!(text.contains("truncated"), "{text}");

    let empty = tmp.path().join("empty.safetensors");
    std::fs::write(&empty, b"")?;
    let text = error_text(load(&empty), &empty);
    assert!(text.contains("empty"), "{text}");

    let text_file = tmp.path().join("notes.txt");
    std::fs::write(&text_file, "this is not a model at all, just some words")?;
    let text = error_text(load(&text_file), &text_file);
    assert!(text.contains("not a safetensors file"), "{text}");

    let no_tensors = tmp.path().join("no_tensors.safetensors");
    write_file(&no_tensors, &[]);
    let text = error_text(load(&no_tensors), &no_tensors);
    assert!(text.contains("no tensors"), "{text}");

    let missing = tmp.path().join("absent.safetensors");
    assert!(matches!(load(&missing), Err(Error::Io { .. })));
    Ok(())
}

#[test]
fn other_families_and_loras_are_refused_by_name() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let sdxl = tmp.path().join("sdxl.safetensors");
    write_file(
        &sdxl,
        &[
            ("model.diffusion_model.input_blocks.0.0.weight", &[4, 4, 3, 3], F16),
            // The SDXL refiner: OpenCLIP bigG as embedder 0, no CLIP-L (SDXL base loads).
            ("conditioner.embedders.0.model.ln_final.weight", &[4], F16),
            ("first_stage_model.encoder.conv_in.weight", &[4, 3, 3, 3], F16),
        ],
    );
    let result = load(&sdxl);
    let text = error_text(result, &sdxl);
    assert!(text.contains("SDXL refiner") && text.contains("SDXL base"), "{text}");
    assert!(matches!(load(&sdxl), Err(Error::UnsupportedFamily { .. })));

    let flux = tmp.path().join("flux.safetensors");
    write_file(&flux, &[("double_blocks.0.img_attn.qkv.weight", &[12, 4], F16)]);
    let text = error_text(load(&flux), &flux);
    assert!(text.contains("Flux"), "{text}");

    let lora = tmp.path().join("my_lora.safetensors");
    write_file(
        &lora,
        &[
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", &[4, 8], F16),
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", &[8, 4], F16),
            ("lora_unet_down_blocks_0_attentions_0_proj_in.alpha", &[], F16),
        ],
    );
    let text = error_text(load(&lora), &lora);
    assert!(text.contains("LoRA") && text.contains("not a base model"), "{text}");
    Ok(())
}

#[test]
fn partial_and_component_only_files_say_what_is_missing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let no_vae = tmp.path().join("no_vae.safetensors");
    let mut tensors = sd1_tensors(F16);
    tensors.retain(|(n, _, _)| !n.starts_with("first_stage_model."));
    write_file(&no_vae, &tensors);
    let text = error_text(load(&no_vae), &no_vae);
    assert!(text.contains("no VAE") && !text.contains("no U-Net"), "{text}");

    let unet_only = tmp.path().join("unet_only.safetensors");
    write_file(&unet_only, &[("model.diffusion_model.input_blocks.0.0.weight", &[4, 4, 3, 3], F16)]);
    let text = error_text(load(&unet_only), &unet_only);
    assert!(text.contains("no VAE") && text.contains("no text encoder"), "{text}");

    let diffusers_unet = tmp.path().join("diffusion_pytorch_model.safetensors");
    write_file(
        &diffusers_unet,
        &[("conv_in.weight", &[4, 4, 3, 3], F16), ("down_blocks.0.resnets.0.conv1.weight", &[4, 4, 3, 3], F16)],
    );
    let text = error_text(load(&diffusers_unet), &diffusers_unet);
    assert!(text.contains("diffusers U-Net alone"), "{text}");

    let vae_only = tmp.path().join("vae-ft-mse.safetensors");
    write_file(&vae_only, &[("encoder.down.0.block.0.conv1.weight", &[4, 4, 3, 3], F16)]);
    let text = error_text(load(&vae_only), &vae_only);
    assert!(text.contains("VAE alone"), "{text}");

    let other = tmp.path().join("other.safetensors");
    write_file(&other, &[("backbone.layer1.weight", &[4], F16)]);
    let text = error_text(load(&other), &other);
    assert!(text.contains("no Stable Diffusion weights") && text.contains("backbone.layer1.weight"), "{text}");
    Ok(())
}

#[test]
fn read_safetensors_reads_every_tensor_as_requested() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("plain.safetensors");
    write_file(&path, &[("a", &[2, 3], DType::BF16), ("b", &[4], DType::F32)]);
    let tensors = read_safetensors(&path, DType::F16, &Device::Cpu)?;
    assert_eq!(tensors.len(), 2);
    assert_eq!(tensors["a"].dtype(), DType::F16);
    assert_eq!(values(&tensors["a"]), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let weights = Weights::from_safetensors(&path, DType::F32, &Device::Cpu)?;
    assert_eq!(weights.len(), 2);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Synthetic diffusers folders

fn write_json(path: &Path, json: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create dir");
    }
    std::fs::write(path, json).expect("write json");
}

/// unet (fp16 variant only), vae (pre-0.14 attention names), text encoder in two shards.
fn write_folder(dir: &Path) {
    write_json(&dir.join("model_index.json"), r#"{"_class_name": "StableDiffusionPipeline"}"#);
    write_json(&dir.join("unet/config.json"), r#"{"cross_attention_dim": 1024}"#);
    write_file(&dir.join("unet/diffusion_pytorch_model.fp16.safetensors"), &[("conv_in.weight", &[4, 4, 3, 3], F16)]);
    write_json(&dir.join("vae/config.json"), r#"{"latent_channels": 4}"#);
    write_file(
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        &[
            ("encoder.mid_block.attentions.0.query.weight", &[4, 4], F16),
            ("decoder.mid_block.attentions.0.proj_attn.bias", &[4], F16),
        ],
    );
    write_json(&dir.join("text_encoder/config.json"), r#"{"hidden_act": "gelu", "hidden_size": 4}"#);
    write_json(
        &dir.join("text_encoder/model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {
            "text_model.embeddings.token_embedding.weight": "model-00001-of-00002.safetensors",
            "text_model.final_layer_norm.weight": "model-00002-of-00002.safetensors"}}"#,
    );
    write_file(
        &dir.join("text_encoder/model-00001-of-00002.safetensors"),
        &[
            ("text_model.embeddings.token_embedding.weight", &[10, 4], F16),
            ("text_model.embeddings.position_ids", &[1, 77], DType::I64),
        ],
    );
    write_file(
        &dir.join("text_encoder/model-00002-of-00002.safetensors"),
        &[("text_model.final_layer_norm.weight", &[4], F16)],
    );
}

#[test]
fn diffusers_folder_variants_shards_and_legacy_names() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    write_folder(&dir);
    let ckpt = load(&dir)?;
    assert_eq!(ckpt.family, ModelFamily::Sd2);
    assert_eq!(sorted_names(&ckpt.unet), ["conv_in.weight"]);
    assert_eq!(
        sorted_names(&ckpt.vae),
        ["decoder.mid_block.attentions.0.to_out.0.bias", "encoder.mid_block.attentions.0.to_q.weight"]
    );
    assert_eq!(
        sorted_names(&ckpt.text_encoder),
        ["text_model.embeddings.token_embedding.weight", "text_model.final_layer_norm.weight"]
    );
    assert_eq!(ckpt.unet_config.as_ref().map(|c| c["cross_attention_dim"].clone()), Some(1024.into()));

    // Both variants present: f16 loads pick the .fp16 file, other dtypes the full one.
    let unet = dir.join("unet");
    let mut zeros = HashMap::new();
    zeros.insert("conv_in.weight".to_string(), Tensor::zeros((4, 4, 3, 3), DType::F32, &Device::Cpu)?);
    candle_core::safetensors::save(&zeros, unet.join("diffusion_pytorch_model.safetensors"))?;
    let sum = |c: &SdCheckpoint| values(c.unet.tensor("conv_in.weight").expect("conv_in")).iter().sum::<f32>();
    assert_eq!(sum(&load(&dir)?), 0.0);
    assert!(sum(&load_sd_checkpoint(&dir, DType::F16, &Device::Cpu)?) > 0.0);
    Ok(())
}

#[test]
fn incomplete_or_foreign_folders_are_explained() -> TestResult {
    let tmp = tempfile::tempdir()?;

    let no_vae = tmp.path().join("no_vae");
    write_folder(&no_vae);
    std::fs::remove_dir_all(no_vae.join("vae"))?;
    let text = error_text(load(&no_vae), &no_vae);
    assert!(text.contains("lacks vae/"), "{text}");

    let empty = tmp.path().join("empty_dir");
    std::fs::create_dir_all(&empty)?;
    let text = error_text(load(&empty), &empty);
    assert!(text.contains("not a diffusers model folder"), "{text}");

    let component = tmp.path().join("sd").join("unet");
    write_file(&component.join("diffusion_pytorch_model.safetensors"), &[("conv_in.weight", &[4, 4, 3, 3], F16)]);
    let text = error_text(load(&component), &component);
    assert!(text.contains("single diffusers component folder"), "{text}");

    let pickled = tmp.path().join("pickled");
    write_folder(&pickled);
    std::fs::remove_file(pickled.join("unet/diffusion_pytorch_model.fp16.safetensors"))?;
    std::fs::write(pickled.join("unet/diffusion_pytorch_model.bin"), b"\x80\x02")?;
    let text = error_text(load(&pickled), &pickled.join("unet/diffusion_pytorch_model.bin"));
    assert!(text.contains("pickle") && text.contains("safe_serialization"), "{text}");

    let no_weights = tmp.path().join("no_weights");
    write_folder(&no_weights);
    std::fs::remove_file(no_weights.join("unet/diffusion_pytorch_model.fp16.safetensors"))?;
    let text = error_text(load(&no_weights), &no_weights.join("unet"));
    assert!(text.contains("diffusion_pytorch_model.safetensors"), "{text}");

    let missing_shard = tmp.path().join("missing_shard");
    write_folder(&missing_shard);
    std::fs::remove_file(missing_shard.join("text_encoder/model-00002-of-00002.safetensors"))?;
    let text = error_text(load(&missing_shard), &missing_shard.join("text_encoder/model-00002-of-00002.safetensors"));
    assert!(text.contains("missing"), "{text}");

    let sdxl = tmp.path().join("sdxl");
    write_folder(&sdxl);
    write_json(&sdxl.join("model_index.json"), r#"{"_class_name": "StableDiffusionXLPipeline"}"#);
    // SDXL loads, so an SDXL folder without its second text encoder is incomplete.
    let text = error_text(load(&sdxl), &sdxl);
    assert!(text.contains("SDXL") && text.contains("text_encoder_2/"), "{text}");
    assert!(matches!(load(&sdxl), Err(Error::Checkpoint { .. })));
    assert_eq!(detect_family_at(&sdxl)?, ModelFamily::Sdxl);

    // A part without its config.json: the error names that file, not a shape far away.
    for sub in ["unet", "vae", "text_encoder"] {
        let no_config = tmp.path().join(format!("no_{sub}_config"));
        write_folder(&no_config);
        std::fs::remove_file(no_config.join(sub).join("config.json"))?;
        let text = error_text(load(&no_config), &no_config.join(sub).join("config.json"));
        assert!(text.contains("missing") && text.contains(&format!("fetch {sub}/config.json")), "{text}");
    }

    let bad_json = tmp.path().join("bad_json");
    write_folder(&bad_json);
    write_json(&bad_json.join("unet/config.json"), "{ not json");
    let text = error_text(load(&bad_json), &bad_json.join("unet/config.json"));
    assert!(text.contains("not valid JSON"), "{text}");
    Ok(())
}
