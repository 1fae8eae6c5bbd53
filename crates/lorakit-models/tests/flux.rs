//! The Flux.1 transformer and autoencoder against BFL's code as sd-scripts carries it and
//! against diffusers (fixture: `tools/reference/make_flux_tiny.py` →
//! `tests/fixtures/reference/flux_tiny/`, where both PyTorch implementations agree first):
//! dev and schnell outputs, the T5 attention mask, rotary table, modulation vector, every
//! block's outputs, the BFL single file with and without `model.diffusion_model.`, the diffusers
//! folder, fp8 storage, an sd-scripts `lora_flux.py` LoRA's output and gradients (with and
//! without gradient checkpointing), packing and position ids, the autoencoder from BFL's
//! `ae.safetensors` and from a diffusers folder, and the full-size module list.
//!
//! Fidelity: fp32, relative error max |Δ| / max |reference| ≤ 1e-4 (gradients ≤ 1e-3).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::checkpoint::flux::{load_flux_ae, load_flux_transformer, LinearStorage};
use lorakit_models::dit::flux::{
    image_ids, pack_latents, unpack_latents, FluxConfig, FluxInputs, FluxTransformer, Rope,
};
use lorakit_models::dit::flux_network::{FluxNetworkArgs, FluxTrainBlocks};
use lorakit_models::samplers::flow::{euler, flux_schedule};
use lorakit_models::vae::AutoencoderKL;
use lorakit_nn::lora::{LoraModule, LoraSet};
use lorakit_nn::ForwardCtx;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const AXES: [usize; 3] = [4, 6, 6];

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/flux_tiny")).join(rel)
}

fn load(rel: &str) -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    Ok(candle_core::safetensors::load(fixture(rel), &Device::Cpu)?)
}

/// max |a − b| / max |b|.
fn rel_error(a: &Tensor, b: &Tensor) -> Result<f64, Box<dyn std::error::Error>> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

fn model_at(path: &Path, storage: LinearStorage) -> Result<FluxTransformer, Box<dyn std::error::Error>> {
    let loaded = load_flux_transformer(path, DType::F32, storage, &Device::Cpu, Some(AXES.to_vec()))?;
    let model = FluxTransformer::new(loaded.weights.view(""), &loaded.config)?;
    loaded.weights.check_complete()?;
    assert!(loaded.weights.unused().is_empty(), "unused: {:?}", loaded.weights.unused());
    Ok(model)
}

fn predict(
    model: &FluxTransformer,
    io: &HashMap<String, Tensor>,
    guidance: bool,
    mask: bool,
    ctx: &ForwardCtx,
) -> candle_core::Result<Tensor> {
    model.forward(
        &FluxInputs {
            img: &io["img"],
            img_ids: &io["img_ids"],
            txt: &io["txt"],
            txt_ids: &io["txt_ids"],
            timesteps: &io["timesteps"],
            y: &io["y"],
            guidance: guidance.then(|| &io["guidance"]),
            txt_mask: mask.then(|| &io["txt_mask"]),
        },
        ctx,
    )
}

fn check(name: &str, ours: &Tensor, reference: &Tensor, tol: f64) -> TestResult {
    let err = rel_error(ours, reference)?;
    eprintln!("{name}: {err:.3e}");
    assert!(err <= tol, "{name}: relative error {err:.3e} > {tol:e}");
    Ok(())
}

#[test]
fn dev_and_schnell_match_bfl_and_diffusers() -> TestResult {
    let io = load("io_transformer.safetensors")?;
    let dev = model_at(&fixture("dev_bfl.safetensors"), LinearStorage::Compute)?;
    assert!(dev.config().guidance_embed);
    let ctx = ForwardCtx::default();
    check("dev", &predict(&dev, &io, true, false, &ctx)?, &io["dev.out"], 1e-4)?;
    check("dev masked", &predict(&dev, &io, true, true, &ctx)?, &io["dev.out_masked"], 1e-4)?;
    // The mask changes the prediction of the padded sample only.
    let plain = &io["dev.out"];
    assert!(rel_error(&io["dev.out_masked"].get(1)?, &plain.get(1)?)? > 1e-3);

    let vec = dev.modulation_vector(&io["timesteps"], Some(&io["guidance"]), &io["y"], &ctx)?;
    check("modulation vector", &vec, &io["dev.vec"], 1e-5)?;
    let err = predict(&dev, &io, false, false, &ctx).expect_err("dev needs guidance");
    assert!(err.to_string().contains("guidance"), "{err}");

    let schnell = model_at(&fixture("schnell_bfl.safetensors"), LinearStorage::Compute)?;
    assert!(!schnell.config().guidance_embed);
    check("schnell", &predict(&schnell, &io, false, false, &ctx)?, &io["schnell.out"], 1e-4)?;

    let diffusers = model_at(&fixture("dev_diffusers"), LinearStorage::Compute)?;
    assert_eq!(diffusers.config(), dev.config());
    check("dev from diffusers", &predict(&diffusers, &io, true, false, &ctx)?, &io["dev.out"], 1e-4)?;
    Ok(())
}

#[test]
fn rotary_table_and_blocks_match_bfl() -> TestResult {
    let io = load("io_transformer.safetensors")?;
    let ids = Tensor::cat(&[&io["txt_ids"], &io["img_ids"]], 0)?;
    let rope = Rope::new(&ids, &AXES, 10_000.0)?;
    let pe = &io["dev.pe"]; // (L, D/2, 2, 2): [[cos, −sin], [sin, cos]]
    check("rope cos", &rope.cos, &pe.narrow(2, 0, 1)?.narrow(3, 0, 1)?.squeeze(3)?.squeeze(2)?, 1e-6)?;
    check("rope sin", &rope.sin, &pe.narrow(2, 1, 1)?.narrow(3, 0, 1)?.squeeze(3)?.squeeze(2)?, 1e-6)?;
    assert_eq!(image_ids(8, 6, &Device::Cpu)?.to_vec2::<f32>()?, io["img_ids"].to_vec2::<f32>()?);
    assert_eq!(pack_latents(&io["latents"])?.to_vec3::<f32>()?, io["img"].to_vec3::<f32>()?);
    let back = unpack_latents(&io["img"], 8, 6)?;
    assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, io["latents"].flatten_all()?.to_vec1::<f32>()?);
    assert!(pack_latents(&Tensor::zeros((1, 16, 5, 6), DType::F32, &Device::Cpu)?).is_err());
    Ok(())
}

#[test]
fn prefixed_single_file_and_fp8_storage_load() -> TestResult {
    let io = load("io_transformer.safetensors")?;
    let tensors = load("dev_bfl.safetensors")?;
    let dir = tempfile::tempdir()?;
    let prefixed: HashMap<String, Tensor> =
        tensors.iter().map(|(k, v)| (format!("model.diffusion_model.{k}"), v.clone())).collect();
    let path = dir.path().join("flux1-dev.safetensors");
    candle_core::safetensors::save(&prefixed, &path)?;
    let model = model_at(&path, LinearStorage::Compute)?;
    check("prefixed", &predict(&model, &io, true, false, &ForwardCtx::default())?, &io["dev.out"], 1e-4)?;

    // fp8 storage: linear weights rounded to e4m3, every layer computing in f32 — the output
    // equals the f32 model whose linear weights went through the same rounding.
    let fp8 = model_at(&fixture("dev_bfl.safetensors"), LinearStorage::Fp8)?;
    let rounded: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| {
            let v = if k.ends_with(".weight") && v.rank() == 2 {
                v.to_dtype(DType::F8E4M3)?.to_dtype(DType::F32)?
            } else {
                v.clone()
            };
            Ok((k.clone(), v))
        })
        .collect::<candle_core::Result<_>>()?;
    let rounded_path = dir.path().join("rounded.safetensors");
    candle_core::safetensors::save(&rounded, &rounded_path)?;
    let reference = model_at(&rounded_path, LinearStorage::Compute)?;
    let ctx = ForwardCtx::default();
    let (a, b) = (predict(&fp8, &io, true, false, &ctx)?, predict(&reference, &io, true, false, &ctx)?);
    check("fp8 storage vs rounded f32", &a, &b, 1e-5)?;
    // and stays close to the unrounded model
    check("fp8 storage vs f32", &a, &io["dev.out"], 0.2)?;
    Ok(())
}

#[test]
fn sd_scripts_lora_output_and_gradients_match() -> TestResult {
    let io = load("io_transformer.safetensors")?;
    let file = load("lora.safetensors")?;
    let model = model_at(&fixture("dev_bfl.safetensors"), LinearStorage::Compute)?;
    let targets = model.lora_targets();
    assert_eq!(targets, model.config().lora_targets());
    assert_eq!(model.input_lora_targets().concat(), model.config().input_lora_targets());
    let mut set = LoraSet::new(0, &Device::Cpu)?;
    let mut vars = Vec::new();
    for t in &targets {
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
        vars.push((name.clone(), "lora_down", module.down().clone()));
        vars.push((name.clone(), "lora_up", module.up().clone()));
        set.insert(t.path.clone(), module);
    }
    assert_eq!(
        vars.len(),
        file.keys().filter(|k| k.ends_with(".grad")).count(),
        "every sd-scripts module has a target"
    );
    let lora = Arc::new(set);
    for checkpointing in [false, true] {
        lora.clear_side_grads();
        let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
        let out = predict(&model, &io, true, false, &ctx)?;
        check("LoRA output", &out, &file["out"], 1e-4)?;
        let grads = (&out * &file["probe"])?.sum_all()?.backward()?;
        let mut worst = (0.0, String::new());
        for (name, part, var) in &vars {
            let ours = lora.grad(&grads, var)?.ok_or_else(|| format!("no gradient for {name}.{part}"))?;
            let err = rel_error(&ours, &file[&format!("{name}.{part}.grad")])?;
            if err > worst.0 {
                worst = (err, format!("{name}.{part}"));
            }
        }
        eprintln!("checkpointing {checkpointing}: worst of {} LoRA grads {:.3e} ({})", vars.len(), worst.0, worst.1);
        assert!(worst.0 <= 1e-3, "{worst:?}");
    }
    Ok(())
}

#[test]
fn full_size_dev_has_sd_scripts_module_count_and_shapes() {
    let dev = FluxConfig::dev();
    let targets = dev.lora_targets();
    assert_eq!(targets.len(), 304, "sd-scripts' lora_flux.py creates 304 modules for FLUX.1");
    let names: Vec<String> = targets.iter().map(|t| t.kohya_name("lora_unet")).collect();
    for expected in [
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_18_txt_mlp_2",
        "lora_unet_single_blocks_37_linear1",
        "lora_unet_single_blocks_0_modulation_lin",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}");
    }
    let linear1 = targets.iter().find(|t| t.path == "single_blocks.0.linear1").expect("linear1");
    assert_eq!((linear1.in_dim, linear1.out_dim), (3072, 3 * 3072 + 12288));
    let params: usize = dev.parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    // FLUX.1-dev's transformer: 11,901,408,320 parameters.
    assert_eq!(params, 11_901_408_320);
    let schnell: usize =
        FluxConfig::schnell().parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(params - schnell, 256 * 3072 + 3072 + 3072 * 3072 + 3072);
}

#[test]
fn autoencoder_matches_bfl_from_both_layouts() -> TestResult {
    let io = load("io_ae.safetensors")?;
    for path in [fixture("ae_bfl.safetensors"), fixture("ae_diffusers")] {
        let loaded = load_flux_ae(&path, DType::F32, &Device::Cpu)?;
        let cfg = &loaded.config;
        assert_eq!((cfg.latent_channels, cfg.scaling_factor, cfg.shift_factor), (16, 0.3611, Some(0.1159)));
        assert_eq!(cfg.downsample_factor(), 4);
        let vae = AutoencoderKL::new(loaded.weights.view(""), cfg)?;
        loaded.weights.check_complete()?;
        assert!(loaded.weights.unused().is_empty(), "unused: {:?}", loaded.weights.unused());
        let posterior = vae.encode(&io["image"])?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        check(&format!("{name} mean"), posterior.mean(), &io["mean"], 1e-4)?;
        check(&format!("{name} logvar"), posterior.logvar(), &io["logvar"], 1e-4)?;
        let latents = ((posterior.mean() - 0.1159)? * 0.3611)?;
        check(&format!("{name} latents"), &latents, &io["latents"], 1e-4)?;
        let decoded = vae.decode(&((&io["latents"] / 0.3611)? + 0.1159)?)?;
        check(&format!("{name} decoded"), &decoded, &io["decoded"], 1e-4)?;
        check(&format!("{name} packed"), &pack_latents(&io["latents"])?, &io["packed"], 0.0)?;
    }
    Ok(())
}

#[test]
fn broken_files_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut tensors = load("dev_bfl.safetensors")?;
    tensors.remove("double_blocks.1.txt_mlp.2.weight");
    let path = dir.path().join("partial.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    let loaded = load_flux_transformer(&path, DType::F32, LinearStorage::Compute, &Device::Cpu, Some(AXES.to_vec()))?;
    let _ = FluxTransformer::new(loaded.weights.view(""), &loaded.config)?;
    let err = loaded.weights.check_complete().expect_err("a missing weight").to_string();
    assert!(err.contains("double_blocks.1.txt_mlp.2.weight") && err.contains("partial.safetensors"), "{err}");

    let sd15 = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference/sdxl_tiny/single_file.safetensors"
    ));
    let err = load_flux_transformer(sd15, DType::F32, LinearStorage::Compute, &Device::Cpu, None)
        .err()
        .expect("not a Flux file")
        .to_string();
    assert!(err.contains("no Flux transformer weights") && err.contains("single_file.safetensors"), "{err}");

    // A single file whose head width is not 128 needs its rotary axes.
    let err =
        load_flux_transformer(&fixture("dev_bfl.safetensors"), DType::F32, LinearStorage::Compute, &Device::Cpu, None)
            .err()
            .expect("axes unknown")
            .to_string();
    assert!(err.contains("rotary axes"), "{err}");
    Ok(())
}

#[test]
fn flow_schedules_match_sd_scripts() -> TestResult {
    let text = std::fs::read_to_string(fixture("schedules.json"))?;
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    assert!(cases.len() >= 5);
    for case in cases {
        let steps = case["steps"].as_u64().ok_or("steps")? as usize;
        let seq = case["image_seq_len"].as_u64().ok_or("seq")? as usize;
        let shift = case["shift"].as_bool().ok_or("shift")?;
        let expected: Vec<f64> = serde_json::from_value(case["sigmas"].clone())?;
        let ours = flux_schedule(steps, seq, shift);
        assert_eq!(ours.len(), expected.len());
        for (a, b) in ours.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-7, "{steps} steps, {seq} tokens, shift {shift}: {ours:?} vs {expected:?}");
        }
    }
    Ok(())
}

#[test]
fn euler_sampling_matches_sd_scripts_denoise() -> TestResult {
    let io = load("io_transformer.safetensors")?;
    let sample = load("sample.safetensors")?;
    let model = model_at(&fixture("dev_bfl.safetensors"), LinearStorage::Compute)?;
    let noise = &sample["noise"];
    let sigmas = flux_schedule(3, noise.dim(1)?, true);
    let expected: Vec<f32> = sample["sigmas"].to_vec1()?;
    assert!(sigmas.iter().zip(&expected).all(|(a, b)| (a - f64::from(*b)).abs() < 1e-7));
    let (txt, y) = (io["txt"].narrow(0, 0, 1)?, io["y"].narrow(0, 0, 1)?);
    let guidance = Tensor::new(&[3.5f32], &Device::Cpu)?;
    let mut steps = Vec::new();
    let out = euler(
        &sigmas,
        noise,
        &mut |x, sigma| {
            let t = Tensor::new(&[sigma as f32], &Device::Cpu)?;
            model.forward(
                &FluxInputs {
                    img: x,
                    img_ids: &io["img_ids"],
                    txt: &txt,
                    txt_ids: &io["txt_ids"],
                    timesteps: &t,
                    y: &y,
                    guidance: Some(&guidance),
                    txt_mask: None,
                },
                &ForwardCtx::default(),
            )
        },
        &mut |i, n| steps.push((i, n)),
    )?;
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    check("3-step Euler", &out, &sample["out"], 1e-4)
}

/// A module as (kohya name, in, out, rank).
type ModuleRow = (String, usize, usize, usize);

/// The transformer modules (kohya name, in, out, rank) sd-scripts' `lora_flux.py` creates for a
/// variant of `tests/fixtures/reference/flux_lora/module_names.json`.
fn sd_scripts_unet_modules(variant: &str) -> Result<Vec<ModuleRow>, Box<dyn std::error::Error>> {
    let path =
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/flux_lora/module_names.json"));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let rows: Vec<ModuleRow> = serde_json::from_value(json["variants"][variant].clone())?;
    Ok(rows.into_iter().filter(|r| r.0.starts_with("lora_unet_")).collect())
}

/// What our targets and `FluxNetworkArgs` give, in the same form.
fn our_unet_modules(cfg: &FluxConfig, args: &FluxNetworkArgs, rank: usize) -> Vec<ModuleRow> {
    let blocks = cfg.lora_targets().into_iter().map(|t| (t, false));
    let inputs = cfg.input_lora_targets().into_iter().map(|t| (t, true));
    blocks
        .chain(inputs)
        .filter_map(|(t, input)| {
            let name = t.kohya_name("lora_unet");
            args.rank_for(&name, input, rank).map(|r| (name, t.in_dim, t.out_dim, r))
        })
        .collect()
}

#[test]
fn network_args_select_sd_scripts_modules_on_full_size_flux() -> TestResult {
    let dev = FluxConfig::dev();
    let default = FluxNetworkArgs::default();
    assert_eq!(our_unet_modules(&dev, &default, 4), sd_scripts_unet_modules("default")?);
    for (variant, blocks) in
        [("train_blocks_single", FluxTrainBlocks::Single), ("train_blocks_double", FluxTrainBlocks::Double)]
    {
        let args = FluxNetworkArgs { train_blocks: blocks, ..Default::default() };
        assert_eq!(our_unet_modules(&dev, &args, 4), sd_scripts_unet_modules(variant)?, "{variant}");
    }
    let in_dims =
        FluxNetworkArgs { in_dims: Some(FluxNetworkArgs::parse_in_dims("[4,4,4,4,4]")?), ..Default::default() };
    assert_eq!(our_unet_modules(&dev, &in_dims, 4), sd_scripts_unet_modules("in_dims")?);
    assert_eq!(our_unet_modules(&FluxConfig::schnell(), &in_dims, 4), sd_scripts_unet_modules("in_dims_schnell")?);
    Ok(())
}

#[test]
fn type_dims_and_block_indices_follow_sd_scripts_rules() -> TestResult {
    let dev = FluxConfig::dev();
    // img_attn 8, txt_mlp off, single linear1/linear2 2, single modulation off.
    let args = FluxNetworkArgs {
        type_dims: [Some(8), None, None, Some(0), None, None, Some(2), Some(0)],
        double_blocks: Some(FluxNetworkArgs::parse_block_selection("train_double_block_indices", "0-2,18", 19)?),
        single_blocks: Some(FluxNetworkArgs::parse_block_selection("train_single_block_indices", "none", 38)?),
        ..Default::default()
    };
    let modules = our_unet_modules(&dev, &args, 4);
    let rank = |n: &str| modules.iter().find(|m| m.0 == n).map(|m| m.3);
    assert_eq!(rank("lora_unet_double_blocks_0_img_attn_qkv"), Some(8));
    assert_eq!(rank("lora_unet_double_blocks_2_img_attn_proj"), Some(8));
    assert_eq!(rank("lora_unet_double_blocks_18_txt_attn_qkv"), Some(4));
    assert_eq!(rank("lora_unet_double_blocks_1_txt_mlp_0"), None);
    assert_eq!(rank("lora_unet_double_blocks_3_img_attn_qkv"), None, "block 3 not selected");
    assert!(modules.iter().all(|m| !m.0.contains("single_blocks")), "no single block selected");
    // 4 selected double blocks × (10 − 2 txt_mlp) modules.
    assert_eq!(modules.len(), 4 * 8);
    let single =
        FluxNetworkArgs { type_dims: [None, None, None, None, None, None, Some(2), Some(0)], ..Default::default() };
    let modules = our_unet_modules(&dev, &single, 4);
    let rank = |n: &str| modules.iter().find(|m| m.0 == n).map(|m| m.3);
    assert_eq!(
        (rank("lora_unet_single_blocks_5_linear1"), rank("lora_unet_single_blocks_5_linear2")),
        (Some(2), Some(2))
    );
    assert_eq!(rank("lora_unet_single_blocks_5_modulation_lin"), None);
    for bad in ["0-40", "3-1", "x", "1,,2"] {
        assert!(FluxNetworkArgs::parse_block_selection("train_double_block_indices", bad, 19).is_err(), "{bad}");
    }
    assert!(FluxNetworkArgs::parse_in_dims("[4,4,4]").is_err());
    assert!(FluxNetworkArgs::parse_train_blocks("both").is_err());
    Ok(())
}

#[test]
fn block_swap_streams_blocks_without_changing_a_number() -> TestResult {
    let io = load("io_transformer.safetensors")?;
    let file = load("lora.safetensors")?;
    let plain = model_at(&fixture("dev_bfl.safetensors"), LinearStorage::Compute)?;
    // 1 double + 2 single blocks stay "in host memory" (here the CPU streams to itself: the
    // copies happen, the numbers must not move).
    let swapped =
        model_at(&fixture("dev_bfl.safetensors"), LinearStorage::Compute)?.with_block_swap(2, &Device::Cpu)?;
    assert_eq!(swapped.host_blocks(), (1, 2));
    let ctx = ForwardCtx::default();
    let (a, b) = (predict(&plain, &io, true, false, &ctx)?, predict(&swapped, &io, true, false, &ctx)?);
    assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    // LoRA gradients through the streamed blocks' recomputation equal the plain model's.
    let grads_of = |model: &FluxTransformer| -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error>> {
        let mut set = LoraSet::new(0, &Device::Cpu)?;
        let mut vars = Vec::new();
        for t in model.lora_targets() {
            let name = t.kohya_name("lora_unet");
            let get = |s: &str| file.get(&format!("{name}.{s}")).cloned().ok_or("factor");
            let module = LoraModule::from_weights(
                name.clone(),
                t.kind,
                get("lora_down.weight")?,
                get("lora_up.weight")?,
                Some(2.0),
                true,
            )?;
            vars.push(module.down().clone());
            set.insert(t.path.clone(), module);
        }
        let lora = Arc::new(set);
        let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: true };
        let out = predict(model, &io, true, false, &ctx)?;
        let grads = (&out * &file["probe"])?.sum_all()?.backward()?;
        vars.iter().map(|v| Ok(lora.grad(&grads, v)?.ok_or("no grad")?.flatten_all()?.to_vec1::<f32>()?)).collect()
    };
    assert_eq!(grads_of(&plain)?, grads_of(&swapped)?);
    let err = model_at(&fixture("dev_bfl.safetensors"), LinearStorage::Compute)?
        .with_block_swap(5, &Device::Cpu)
        .expect_err("more blocks than the model has")
        .to_string();
    assert!(err.contains("blocks_to_swap = 5"), "{err}");
    Ok(())
}

/// `split_qkv` (sd-scripts' `split_dims`): the network made by `create_network` has sd-scripts'
/// parts (q, k, v per double-block qkv; q, k, v, MLP per single-block linear1) under its state
/// names, gives sd-scripts' output and per-part gradients, and saves the parts fused as
/// sd-scripts' `state_dict()` does — with alpha × parts, so that the saved file, read back as
/// any loader reads it, reproduces the trained output (sd-scripts' own alpha would not).
#[test]
fn split_qkv_parts_match_sd_scripts_and_save_fused_with_the_trained_scale() -> TestResult {
    use lorakit_models::lora_inject::{create_network, state_dict, DitNetworkArgs, NetworkSpec};
    let io = load("io_transformer.safetensors")?;
    let file = load("lora_split_qkv.safetensors")?;
    let model = model_at(&fixture("dev_bfl.safetensors"), LinearStorage::Compute)?;
    let spec = NetworkSpec {
        rank: 4,
        alpha: 2.0,
        dit: Some(DitNetworkArgs::Flux(FluxNetworkArgs { split_qkv: true, ..Default::default() })),
        ..Default::default()
    };
    let set = create_network(&model.lora_targets(), "lora_unet", &spec, DType::F32, &Device::Cpu, 5)?;
    let named = set.named_vars();
    let expected: Vec<&String> = file.keys().filter(|k| k.ends_with(".weight") && !k.starts_with("saved.")).collect();
    assert_eq!(named.len(), expected.len(), "sd-scripts' parameter count");
    for v in &named {
        let value = file.get(&v.name).ok_or_else(|| format!("{} is not an sd-scripts parameter", v.name))?;
        assert_eq!(v.var.dims(), value.dims(), "{}", v.name);
        v.var.set(value)?;
    }
    let parts = set.modules().iter().filter(|m| m.part().is_some()).count();
    assert_eq!(parts, 2 * 2 * 3 + 3 * 4, "2 double blocks × img/txt qkv × 3 + 3 single linear1 × 4");
    let lora = Arc::new(set);
    for checkpointing in [false, true] {
        lora.clear_side_grads();
        let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
        let out = predict(&model, &io, true, false, &ctx)?;
        check("split LoRA output", &out, &file["out"], 1e-4)?;
        let grads = (&out * &file["probe"])?.sum_all()?.backward()?;
        let mut worst = (0.0, String::new());
        for v in &named {
            let ours = lora.grad(&grads, &v.var)?.ok_or_else(|| format!("no gradient for {}", v.name))?;
            let err = rel_error(&ours, &file[&v.name.replace(".weight", ".grad")])?;
            if err > worst.0 {
                worst = (err, v.name.clone());
            }
        }
        eprintln!(
            "split_qkv, checkpointing {checkpointing}: worst of {} grads {:.3e} ({})",
            named.len(),
            worst.0,
            worst.1
        );
        assert!(worst.0 <= 1e-3, "{worst:?}");
    }

    // Saved fused: the factors equal sd-scripts' state_dict(); alpha is parts × sd-scripts'.
    let saved = state_dict(&[lora.as_ref()])?;
    let to_tensor =
        |t: &lorakit_lora::safetensors_file::Tensor| Tensor::from_vec(t.data.clone(), t.shape.clone(), &Device::Cpu);
    let mut fused = 0;
    for (key, ours) in &saved {
        let theirs = &file[&format!("saved.{key}")];
        let ours = to_tensor(ours)?;
        if key.ends_with(".alpha") {
            let (a, b) = (ours.to_scalar::<f32>()?, theirs.to_scalar::<f32>()?);
            let parts = if key.contains("_qkv") {
                3.0
            } else if key.contains("linear1") {
                4.0
            } else {
                1.0
            };
            fused += usize::from(parts > 1.0);
            assert_eq!(a, b * parts, "{key}");
        } else {
            assert!(rel_error(&ours, theirs)? == 0.0, "{key} differs from sd-scripts' fused tensor");
        }
    }
    assert_eq!(fused, 7);
    assert_eq!(saved.len(), file.keys().filter(|k| k.starts_with("saved.")).count());

    // Read back as a loader reads it (one module per layer, rank = rows of down, the file's
    // alpha): the trained output, and not with sd-scripts' unchanged alpha.
    for (alphas, reproduces) in [("lorakit", true), ("sd-scripts", false)] {
        let mut loaded = LoraSet::new(0, &Device::Cpu)?;
        for t in model.lora_targets() {
            let name = t.kohya_name("lora_unet");
            let get = |s: &str| -> Result<Tensor, Box<dyn std::error::Error>> {
                Ok(match alphas {
                    "lorakit" => to_tensor(&saved[&format!("{name}.{s}")])?,
                    _ => file[&format!("saved.{name}.{s}")].clone(),
                })
            };
            let alpha = get("alpha")?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let module = LoraModule::from_weights(
                name.clone(),
                t.kind,
                get("lora_down.weight")?,
                get("lora_up.weight")?,
                Some(alpha),
                false,
            )?;
            loaded.insert(t.path.clone(), module);
        }
        let out = predict(&model, &io, true, false, &ForwardCtx::with_lora(Arc::new(loaded)))?;
        let err = rel_error(&out, &file["out"])?;
        assert_eq!(err <= 1e-4, reproduces, "{alphas} alpha: output error {err:.3e}");
    }
    Ok(())
}
