//! A VAE given apart from the model (`model.vae`, `generate --vae`, sd-scripts' `--vae`): every
//! layout loads to the same tensors, the swapped-in VAE encodes and decodes as diffusers does
//! (`tools/reference/vae_swap_fixture.py`), and VAEs of another architecture or family, LoRAs,
//! pickles and missing files are refused by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::checkpoint::vae_file::load_vae_file;
use lorakit_models::checkpoint::{load_sd_checkpoint, read_safetensors};
use lorakit_models::pipeline::StableDiffusion;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn reference(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference").join(rel)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// The fixture's VAE in the layouts the fixture leaves to the test: a whole checkpoint's
/// `first_stage_model.*`, and diffusers < 0.14's mid-block attention names.
fn derived_layouts(dir: &Path) -> Result<(PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let bare = read_safetensors(&reference("vae_swap/ldm_bare.safetensors"), DType::F16, &Device::Cpu)?;
    let prefixed: HashMap<String, Tensor> =
        bare.into_iter().map(|(k, v)| (format!("first_stage_model.{k}"), v)).collect();
    let prefixed_path = dir.join("with_prefix.safetensors");
    candle_core::safetensors::save(&prefixed, &prefixed_path)?;
    let diffusers = read_safetensors(
        &reference("vae_swap/diffusers/diffusion_pytorch_model.safetensors"),
        DType::F16,
        &Device::Cpu,
    )?;
    let legacy: HashMap<String, Tensor> = diffusers
        .into_iter()
        .map(|(k, v)| {
            let mut k = k;
            for (new, old) in [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")] {
                let marker = format!(".mid_block.attentions.0.{new}.");
                if k.contains(&marker) {
                    k = k.replace(&marker, &format!(".mid_block.attentions.0.{old}."));
                    break;
                }
            }
            (k, v)
        })
        .collect();
    let legacy_path = dir.join("legacy.safetensors");
    candle_core::safetensors::save(&legacy, &legacy_path)?;
    Ok((prefixed_path, legacy_path))
}

#[test]
fn every_layout_loads_to_the_same_tensors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (prefixed, legacy) = derived_layouts(dir.path())?;
    let folder = reference("vae_swap/diffusers");
    let want = load_vae_file(&folder, DType::F32, &Device::Cpu)?;
    assert!(want.config.is_some(), "a diffusers folder's config.json is read");
    let diffusers_file = folder.join("diffusion_pytorch_model.safetensors");
    for path in [reference("vae_swap/ldm_bare.safetensors"), prefixed, legacy, diffusers_file] {
        let got = load_vae_file(&path, DType::F32, &Device::Cpu)?;
        let mut names: Vec<&String> = got.tensors.keys().collect();
        names.sort();
        let mut want_names: Vec<&String> = want.tensors.keys().collect();
        want_names.sort();
        assert_eq!(names, want_names, "{}", path.display());
        for (name, t) in &want.tensors {
            assert_eq!(got.tensors[name].dims(), t.dims(), "{name} in {}", path.display());
            assert_eq!(max_diff(&got.tensors[name], t)?, 0.0, "{name} in {}", path.display());
        }
    }
    // A model folder given as the VAE: its vae/ is read.
    let from_model = load_vae_file(&reference("sd15_tiny/diffusers"), DType::F32, &Device::Cpu)?;
    assert!(from_model.path.ends_with("vae"));
    Ok(())
}

#[test]
fn the_swapped_vae_encodes_and_decodes_as_diffusers() -> TestResult {
    let io = read_safetensors(&reference("vae_swap/io.safetensors"), DType::F32, &Device::Cpu)?;
    let model = reference("sd15_tiny/diffusers");
    let own = StableDiffusion::load(&model, DType::F32, &Device::Cpu)?;
    for vae in [reference("vae_swap/ldm_bare.safetensors"), reference("vae_swap/diffusers")] {
        let sd = StableDiffusion::load_with_vae(&model, Some(&vae), DType::F32, &Device::Cpu)?;
        let posterior = sd.vae.encode(&io["image"])?;
        assert!(max_diff(posterior.mean(), &io["mean"])? < 1e-4, "{}", vae.display());
        assert!(max_diff(posterior.std(), &io["std"])? < 1e-4, "{}", vae.display());
        assert!(max_diff(&sd.vae.decode(&io["latent"])?, &io["decoded"])? < 1e-4, "{}", vae.display());
        // The checkpoint's own VAE is another one: the swap is what changed the numbers.
        let before = own.vae.encode(&io["image"])?;
        assert!(max_diff(before.mean(), &io["mean"])? > 1e-2);
        // Everything else is the checkpoint's, and the latent scale stays SD 1.5's.
        assert_eq!(sd.vae.config().scaling_factor, own.vae.config().scaling_factor);
    }
    assert_eq!(io["mean"].dims(), io["sd_scripts_mean"].dims());
    assert_eq!(max_diff(&io["mean"], &io["sd_scripts_mean"])?, 0.0, "sd-scripts' --vae loader reads the same VAE");
    Ok(())
}

#[test]
fn vaes_of_another_architecture_or_family_are_refused() -> TestResult {
    let err = |model: &str, vae: PathBuf| -> String {
        let mut ckpt = load_sd_checkpoint(&reference(model), DType::F32, &Device::Cpu).unwrap();
        match ckpt.replace_vae(&vae, &Device::Cpu) {
            Ok(()) => panic!("{} was taken as {model}'s VAE", vae.display()),
            Err(e) => e.to_string(),
        }
    };
    // The tiny SDXL model's VAE has three levels, the fixture's four.
    let e = err("sdxl_tiny/single_file.safetensors", reference("vae_swap/ldm_bare.safetensors"));
    assert!(e.contains("ldm_bare.safetensors") && e.contains("not a VAE of") && e.contains("SDXL"), "{e}");
    // SD3's VAE makes 16 latent channels.
    let e = err("sd15_tiny/single_file.safetensors", reference("sd3_tiny/pipeline/vae"));
    assert!(e.contains("16 latent channels") && e.contains("another model family"), "{e}");
    // A LoRA, a pickle, a missing file, a folder without config.json.
    let lora = reference("sd15_tiny/lora/lora.safetensors");
    let e = err("sd15_tiny/single_file.safetensors", lora.clone());
    assert!(e.contains(&lora.display().to_string()) && e.contains("no VAE weights"), "{e}");
    let dir = tempfile::tempdir()?;
    let pickle = dir.path().join("vae-ft-mse-840000-ema-pruned.ckpt");
    std::fs::write(&pickle, b"\x80\x02}q\x00.")?;
    let e = err("sd15_tiny/single_file.safetensors", pickle);
    assert!(e.contains("pickle") && e.contains(".safetensors"), "{e}");
    let e = err("sd15_tiny/single_file.safetensors", dir.path().join("nope.safetensors"));
    assert!(e.contains("nope.safetensors"), "{e}");
    let e = err("sd15_tiny/single_file.safetensors", dir.path().to_path_buf());
    assert!(e.contains("config.json"), "{e}");
    Ok(())
}
