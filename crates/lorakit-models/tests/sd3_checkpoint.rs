//! SD3 / SD3.5 weights from the layouts users have (`checkpoint::sd3`) against diffusers and
//! transformers (fixtures: `tools/reference/sd3_checkpoint_fixture.py` →
//! `tests/fixtures/reference/sd3_checkpoint/`): a tiny SD3 Medium as SAI's single file with
//! everything inside and as a diffusers folder, a tiny SD3.5 Medium as a SAI file without text
//! encoders (given as separate files) and as a diffusers folder — every layout loads to the same
//! tensors, and the models built from them give diffusers' and transformers' outputs.
//!
//! Fidelity: fp32 on f16-rounded weights, relative error max |Δ| / max |reference| ≤ 1e-4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::checkpoint::sd3::{
    load_sd3_text_encoder_weights, load_sd3_transformer, load_sd3_vae, sd3_text_encoder_available, LinearStorage,
    Sd3Paths, Sd3TextEncoder, Sd3TextEncoderConfig,
};
use lorakit_models::clip::ClipTextModelWithProjection;
use lorakit_models::dit::mmdit::{MmditConfig, MmditInputs, MmditTransformer};
use lorakit_models::t5::T5EncoderModel;
use lorakit_models::vae::AutoencoderKL;
use lorakit_models::Weights;
use lorakit_nn::ForwardCtx;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type R<T> = Result<T, Box<dyn std::error::Error>>;

const ENCODERS: [Sd3TextEncoder; 3] = [Sd3TextEncoder::ClipL, Sd3TextEncoder::ClipG, Sd3TextEncoder::T5xxl];

fn reference(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference")).join(rel)
}

fn fixture(rel: &str) -> PathBuf {
    reference("sd3_checkpoint").join(rel)
}

fn model(rel: &str) -> Sd3Paths {
    Sd3Paths { model: fixture(rel), ..Sd3Paths::default() }
}

/// The SD3.5 Medium SAI file with sd3m's encoders as separate files (a file, a folder, a file).
fn sd35m_sai_with_encoders() -> Sd3Paths {
    Sd3Paths {
        clip_l: Some(fixture("sd3m_diffusers/text_encoder/model.safetensors")),
        clip_g: Some(fixture("sd3m_diffusers/text_encoder_2")),
        t5xxl: Some(fixture("sd3m_diffusers/text_encoder_3/model.safetensors")),
        ..model("sd35m_sai.safetensors")
    }
}

fn io() -> R<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu)?)
}

fn rel_error(a: &Tensor, b: &Tensor) -> R<f64> {
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

/// Same names, and every tensor bit-identical.
fn same_tensors(what: &str, a: &Weights, b: &Weights) -> TestResult {
    let mut names: Vec<&str> = a.names().collect();
    let mut other: Vec<&str> = b.names().collect();
    names.sort_unstable();
    other.sort_unstable();
    assert_eq!(names, other, "{what}: tensor names differ");
    assert!(!names.is_empty(), "{what}: no tensors");
    for name in names {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(x.dims(), y.dims(), "{what}: {name}");
        let diff = (x.to_dtype(DType::F32)? - y.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{what}: {name} differs");
    }
    Ok(())
}

fn transformer(paths: &Sd3Paths) -> R<(MmditConfig, Weights)> {
    Ok(load_sd3_transformer(&paths.model, DType::F32, LinearStorage::Compute, &Device::Cpu)?)
}

fn encoder(paths: &Sd3Paths, which: Sd3TextEncoder) -> R<(Sd3TextEncoderConfig, Weights)> {
    Ok(load_sd3_text_encoder_weights(paths, which, DType::F32, LinearStorage::Compute, &Device::Cpu)?)
}

#[test]
fn sd3_medium_single_file_and_diffusers_folder_load_the_same_model() -> TestResult {
    let (sai, folder) = (model("sd3m_sai.safetensors"), model("sd3m_diffusers"));
    let (sai_cfg, sai_w) = transformer(&sai)?;
    let (dir_cfg, dir_w) = transformer(&folder)?;
    assert_eq!(sai_cfg, dir_cfg);
    assert_eq!(sai_cfg.model_type(), "sd3m");
    assert_eq!((sai_cfg.depth, sai_cfg.hidden_size, sai_cfg.num_heads), (1, 64, 1));
    assert_eq!((sai_cfg.pooled_dim, sai_cfg.context_dim, sai_cfg.pos_embed_max_size), (64, 32, 4));
    same_tensors("transformer", &sai_w, &dir_w)?;

    let (sai_vae_cfg, sai_vae, sai_scaling) = load_sd3_vae(&sai, &Device::Cpu)?;
    let (dir_vae_cfg, dir_vae, dir_scaling) = load_sd3_vae(&folder, &Device::Cpu)?;
    same_tensors("vae", &sai_vae, &dir_vae)?;
    assert_eq!(sai_scaling, dir_scaling);
    assert_eq!((sai_scaling.scale, sai_scaling.shift), (1.5305, 0.0609));
    // What the shapes show matches the folder's config.
    let (a, b) = (&sai_vae_cfg, &dir_vae_cfg);
    assert_eq!(a.block_out_channels, b.block_out_channels);
    assert_eq!((a.layers_per_block, a.latent_channels, a.norm_num_groups), (1, 16, 8));
    assert_eq!((b.layers_per_block, b.latent_channels, b.norm_num_groups), (1, 16, 8));
    assert_eq!((a.use_quant_conv, a.use_post_quant_conv), (b.use_quant_conv, b.use_post_quant_conv));
    assert_eq!((a.in_channels, a.out_channels, a.mid_block_add_attention), (3, 3, true));
    assert_eq!((a.scaling_factor, a.shift_factor), (b.scaling_factor, b.shift_factor));

    for which in ENCODERS {
        let (sai_cfg, sai_w) = encoder(&sai, which)?;
        let (dir_cfg, dir_w) = encoder(&folder, which)?;
        // The shapes (and sd-scripts' presets for what they cannot tell) give the folder's config.
        assert_eq!(sai_cfg, dir_cfg, "{which:?}");
        same_tensors(which.flag(), &sai_w, &dir_w)?;
    }
    Ok(())
}

#[test]
fn sd35_medium_single_file_with_separate_encoders_loads_like_its_folder() -> TestResult {
    let paths = sd35m_sai_with_encoders();
    let (cfg, w) = transformer(&paths)?;
    let (dir_cfg, dir_w) = transformer(&model("sd35m_diffusers"))?;
    assert_eq!(cfg, dir_cfg);
    assert_eq!(cfg.model_type(), "sd35m");
    assert_eq!((cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.x_self_attn_layers.clone()), (2, 32, 2, vec![0]));
    same_tensors("sd35m transformer", &w, &dir_w)?;
    // The transformer folder itself works as the model path too.
    let (_, inner) = load_sd3_transformer(
        &fixture("sd35m_diffusers/transformer"),
        DType::F32,
        LinearStorage::Compute,
        &Device::Cpu,
    )?;
    same_tensors("sd35m transformer/", &inner, &dir_w)?;

    let (_, vae, _) = load_sd3_vae(&paths, &Device::Cpu)?;
    let (_, folder_vae, _) = load_sd3_vae(&model("sd3m_diffusers"), &Device::Cpu)?;
    same_tensors("sd35m vae", &vae, &folder_vae)?;

    let embedded = model("sd3m_sai.safetensors");
    for which in ENCODERS {
        let (given_cfg, given) = encoder(&paths, which)?;
        let (inside_cfg, inside) = encoder(&embedded, which)?;
        assert_eq!(given_cfg, inside_cfg, "{which:?}");
        same_tensors(which.flag(), &given, &inside)?;
    }
    Ok(())
}

#[test]
fn a_given_encoder_file_overrides_the_one_inside_the_checkpoint() -> TestResult {
    // CLIP-L's file given as CLIP-G: what loads is that file, not the embedded CLIP-G.
    let clip_l_file = fixture("sd3m_diffusers/text_encoder/model.safetensors");
    let paths = Sd3Paths { clip_g: Some(clip_l_file), ..model("sd3m_sai.safetensors") };
    let (_, g) = encoder(&paths, Sd3TextEncoder::ClipG)?;
    let (_, l) = encoder(&paths, Sd3TextEncoder::ClipL)?;
    let (_, embedded_g) = encoder(&model("sd3m_sai.safetensors"), Sd3TextEncoder::ClipG)?;
    same_tensors("given clip_g", &g, &l)?;
    let key = "text_model.encoder.layers.0.mlp.fc1.weight";
    let diff = (g.tensor(key).unwrap() - embedded_g.tensor(key).unwrap())?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff > 0.0, "the given file must replace the embedded CLIP-G");
    Ok(())
}

fn run_mmdit(paths: &Sd3Paths, variant: &str, io: &HashMap<String, Tensor>) -> TestResult {
    let (cfg, weights) = transformer(paths)?;
    let model = MmditTransformer::new(weights.view(""), &cfg)?;
    weights.check_complete()?;
    let inputs = MmditInputs::new(&io["mmdit.x"], &io["mmdit.t"], &io["mmdit.pooled"], &io["mmdit.context"]);
    let out = model.forward(&inputs, &ForwardCtx::default())?;
    check(&format!("{variant} from {}", paths.model.display()), &out, &io[&format!("{variant}.out")])
}

#[test]
fn the_mmdit_from_every_layout_predicts_like_diffusers() -> TestResult {
    let io = io()?;
    run_mmdit(&model("sd3m_diffusers"), "sd3m", &io)?;
    run_mmdit(&model("sd3m_sai.safetensors"), "sd3m", &io)?;
    run_mmdit(&model("sd35m_diffusers"), "sd35m", &io)?;
    run_mmdit(&model("sd35m_sai.safetensors"), "sd35m", &io)
}

#[test]
fn bare_sai_keys_load_too() -> TestResult {
    // make_sd3_tiny.py's files hold the MMDiT under bare SAI keys (ComfyUI's transformer-only files).
    let io: HashMap<String, Tensor> =
        candle_core::safetensors::load(reference("sd3_tiny/io.safetensors"), &Device::Cpu)?;
    for variant in ["sd3m", "sd35l", "sd35m"] {
        let path = reference(&format!("sd3_tiny/{variant}.safetensors"));
        let (cfg, weights) = load_sd3_transformer(&path, DType::F32, LinearStorage::Compute, &Device::Cpu)?;
        assert_eq!(cfg.model_type(), variant);
        let model = MmditTransformer::new(weights.view(""), &cfg)?;
        let inputs = MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]);
        check(variant, &model.forward(&inputs, &ForwardCtx::default())?, &io[&format!("{variant}.out")])?;
    }
    Ok(())
}

#[test]
fn fp8_storage_keeps_linear_weights_in_e4m3() -> TestResult {
    let path = fixture("sd3m_sai.safetensors");
    let (_, w) = load_sd3_transformer(&path, DType::F32, LinearStorage::Fp8, &Device::Cpu)?;
    assert_eq!(w.tensor("joint_blocks.0.x_block.attn.qkv.weight").unwrap().dtype(), DType::F8E4M3);
    assert_eq!(w.tensor("joint_blocks.0.x_block.attn.qkv.bias").unwrap().dtype(), DType::F32);
    assert_eq!(w.tensor("pos_embed").unwrap().dtype(), DType::F32);
    assert_eq!(w.tensor("x_embedder.proj.weight").unwrap().dtype(), DType::F32);
    Ok(())
}

#[test]
fn the_vae_encodes_and_decodes_like_diffusers() -> TestResult {
    let io = io()?;
    for paths in [model("sd3m_diffusers"), model("sd3m_sai.safetensors"), model("sd35m_sai.safetensors")] {
        let (cfg, weights, scaling) = load_sd3_vae(&paths, &Device::Cpu)?;
        let vae = AutoencoderKL::new(weights.view(""), &cfg)?;
        weights.check_complete()?;
        let what = paths.model.display().to_string();
        let posterior = vae.encode(&io["vae.image"])?;
        check(&format!("{what} mean"), posterior.mean(), &io["vae.mean"])?;
        check(&format!("{what} logvar"), posterior.logvar(), &io["vae.logvar"])?;
        let latents = scaling.to_model_space(posterior.mean())?;
        check(&format!("{what} latents"), &latents, &io["vae.latents"])?;
        // The config carries the same scale and shift for AutoencoderKL's own helpers.
        check(&format!("{what} to_model_space"), &vae.to_model_space(posterior.mean())?, &io["vae.latents"])?;
        let decoded = vae.decode(&scaling.from_model_space(&io["vae.latents"])?)?;
        check(&format!("{what} decoded"), &decoded, &io["vae.decoded"])?;
    }
    Ok(())
}

#[test]
fn text_encoders_give_transformers_hidden_states() -> TestResult {
    let io = io()?;
    let ctx = ForwardCtx::default();
    for paths in [model("sd3m_sai.safetensors"), model("sd3m_diffusers"), sd35m_sai_with_encoders()] {
        let what = paths.model.display().to_string();
        for (which, name) in [(Sd3TextEncoder::ClipL, "clip_l"), (Sd3TextEncoder::ClipG, "clip_g")] {
            let (Sd3TextEncoderConfig::Clip(cfg), weights) = encoder(&paths, which)? else {
                panic!("{name}: not a CLIP config")
            };
            let clip = ClipTextModelWithProjection::new(weights.view(""), &cfg)?;
            weights.check_complete()?;
            let out = clip.forward(&io["clip.ids"], &ctx)?;
            check(&format!("{what} {name} hidden"), &out.text.last_hidden_state, &io[&format!("{name}.hidden")])?;
            check(&format!("{what} {name} pooled"), &out.text_embeds, &io[&format!("{name}.embeds")])?;
        }
        let (Sd3TextEncoderConfig::T5(cfg), weights) = encoder(&paths, Sd3TextEncoder::T5xxl)? else {
            panic!("t5xxl: not a T5 config")
        };
        let t5 = T5EncoderModel::new(weights.view(""), &cfg)?;
        check(&format!("{what} t5xxl hidden"), &t5.forward(&io["t5.ids"], None, &ctx)?, &io["t5.hidden"])?;
    }
    Ok(())
}

fn message(err: impl std::fmt::Display) -> String {
    let text = err.to_string();
    eprintln!("{text}");
    text
}

#[test]
fn a_missing_part_is_an_error_naming_its_flag() -> TestResult {
    let paths = model("sd35m_sai.safetensors");
    for which in ENCODERS {
        assert!(!sd3_text_encoder_available(&paths, which)?);
        let err = load_sd3_text_encoder_weights(&paths, which, DType::F32, LinearStorage::Compute, &Device::Cpu)
            .err()
            .expect("no encoder inside");
        let text = message(err);
        assert!(text.contains("sd35m_sai.safetensors"), "{text}");
        assert!(text.contains(&format!("--{}", which.flag())), "{text}");
    }
    assert!(sd3_text_encoder_available(&model("sd3m_sai.safetensors"), Sd3TextEncoder::T5xxl)?);
    // A folder saved without VAE and encoders: both named.
    let folder = model("sd35m_diffusers");
    let text = message(load_sd3_vae(&folder, &Device::Cpu).err().expect("no vae/"));
    assert!(text.contains("--vae") && text.contains("sd35m_diffusers"), "{text}");
    let text = message(encoder(&folder, Sd3TextEncoder::ClipG).err().expect("no text_encoder_2/"));
    assert!(text.contains("--clip_g") && text.contains("text_encoder_2"), "{text}");
    // A file that is not an SD3 VAE.
    let wrong = Sd3Paths {
        vae: Some(fixture("sd3m_diffusers/text_encoder/model.safetensors")),
        ..model("sd3m_sai.safetensors")
    };
    let text = message(load_sd3_vae(&wrong, &Device::Cpu).err().expect("a CLIP file is no VAE"));
    assert!(text.contains("text_encoder/model.safetensors") && text.contains("vae"), "{text}");
    Ok(())
}

#[test]
fn checkpoints_of_other_families_are_named() -> TestResult {
    for (rel, family) in [
        ("flux_tiny/dev_bfl.safetensors", "Flux"),
        ("flux_tiny/dev_diffusers", "Flux"),
        ("sdxl_tiny/single_file.safetensors", "SDXL"),
        ("sdxl_tiny/diffusers", "SDXL"),
        ("sd15_tiny/single_file.safetensors", "SD 1.x"),
        ("sd15_tiny/diffusers", "SD 1.x"),
    ] {
        let path = reference(rel);
        let err = load_sd3_transformer(&path, DType::F32, LinearStorage::Compute, &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{rel} loaded as SD3"));
        let text = message(err);
        assert!(text.contains(family) && text.contains("not SD3"), "{rel}: {text}");
    }
    // SDXL's 4-channel VAE is not SD3's.
    let paths = Sd3Paths { vae: Some(reference("sdxl_tiny/single_file.safetensors")), ..model("sd3m_sai.safetensors") };
    let text = message(load_sd3_vae(&paths, &Device::Cpu).err().expect("a 4-channel VAE"));
    assert!(text.contains("4 latent channels") && text.contains("single_file.safetensors"), "{text}");
    Ok(())
}

#[test]
fn a_truncated_file_is_an_error_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bytes = std::fs::read(fixture("sd3m_sai.safetensors"))?;
    let cut = dir.path().join("sd3_medium.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
    let paths = Sd3Paths { model: cut.clone(), ..Sd3Paths::default() };
    let errors = [
        message(load_sd3_transformer(&cut, DType::F32, LinearStorage::Compute, &Device::Cpu).err().expect("truncated")),
        message(load_sd3_vae(&paths, &Device::Cpu).err().expect("truncated")),
        message(encoder(&paths, Sd3TextEncoder::ClipL).err().expect("truncated")),
    ];
    for text in errors {
        assert!(text.contains("sd3_medium.safetensors"), "{text}");
    }
    Ok(())
}
