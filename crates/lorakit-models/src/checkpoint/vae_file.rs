//! A VAE given apart from the model (sd-scripts' `--vae`, read by `model_util.load_vae` for
//! SD 1.x/2.x/SDXL and `sd3_utils.load_vae` for SD3), in every layout users have:
//!
//! - an LDM-keyed file: bare keys (`encoder.down.0.block.0.conv1.weight`, as in
//!   `sdxl_vae.safetensors` or `vae-ft-mse-840000-ema-pruned.safetensors`), or a whole
//!   checkpoint's `first_stage_model.*` (sd-scripts takes either);
//! - a diffusers-keyed file (`encoder.down_blocks.*`, a `diffusion_pytorch_model.safetensors`
//!   given on its own), with its `config.json` when one lies beside it;
//! - a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`), or a model
//!   folder holding `vae/` (sd-scripts retries with `subfolder="vae"`).
//!
//! Every layout becomes diffusers' `AutoencoderKL` keys. Pickles are refused as for models.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::ldm_keys::{diffusers_fate, Component, KeyFate, LdmKeyMap, VAE_PREFIX};
use super::{read_component, read_where, refuse_pickle_extension, tensor_names, LinearStorage};
use crate::vae::AutoencoderKLConfig;
use crate::{Error, Result};

/// A VAE read from its own file or folder.
pub struct VaeFile {
    /// The file or folder the tensors came from (a model folder's `vae/` when given the model).
    pub path: PathBuf,
    /// The tensors under diffusers' `AutoencoderKL` names.
    pub tensors: HashMap<String, Tensor>,
    /// The folder's (or the file's neighbouring) `config.json`; `None` for LDM files, which
    /// carry no config.
    pub config: Option<AutoencoderKLConfig>,
}

/// Reads the VAE at `path` (any layout in the module docs) in `dtype` on `device`.
pub fn load_vae_file(path: &Path, dtype: DType, device: &Device) -> Result<VaeFile> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    if meta.is_dir() {
        let dir = if path.join("vae").is_dir() { path.join("vae") } else { path.to_path_buf() };
        let json = dir.join("config.json");
        if !json.is_file() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: "a folder given as the VAE needs diffusers' config.json and diffusion_pytorch_model.safetensors (or a vae/ subfolder with them); or give the VAE's .safetensors file".into(),
            });
        }
        let tensors = read_component(&dir, "diffusion_pytorch_model", dtype, LinearStorage::Compute, device)?;
        return Ok(VaeFile { config: Some(read_vae_config(&json)?), tensors: current_names(tensors)?, path: dir });
    }
    refuse_pickle_extension(path)?;
    let names = tensor_names(path)?;
    if names.iter().any(|n| n.starts_with("encoder.down_blocks.")) {
        // A diffusers VAE file given on its own; its config.json, when beside it, says more.
        let json = path.with_file_name("config.json");
        let config = if json.is_file() { Some(read_vae_config(&json)?) } else { None };
        let tensors = read_where(path, |n| Some(n.to_string()), dtype, LinearStorage::Compute, device)?;
        return Ok(VaeFile { path: path.to_path_buf(), tensors: current_names(tensors)?, config });
    }
    let tensors = read_ldm_vae(path, &names, true, dtype, device)?;
    Ok(VaeFile { path: path.to_path_buf(), tensors, config: None })
}

/// Diffusers VAE tensors under today's names: attention written by diffusers < 0.14
/// (`query`/`key`/`value`/`proj_attn`, as in 2022's `sd-vae-ft-mse`) or as 1×1 convs becomes
/// the linear `to_q`/`to_k`/`to_v`/`to_out.0`, as for a model folder's `vae/`.
fn current_names(tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        if let KeyFate::Renamed(targets) = diffusers_fate(Component::Vae, &name) {
            for target in targets {
                out.insert(target.name.clone(), target.transform.apply(&tensor)?);
            }
        }
    }
    Ok(out)
}

/// An LDM-keyed VAE → diffusers keys: `first_stage_model.*` (only those are read), or bare LDM
/// keys when `separate` (a file given as the VAE; a model file's bare keys are its denoiser's).
pub(crate) fn read_ldm_vae(
    path: &Path,
    names: &[String],
    separate: bool,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let prefixed = names.iter().any(|n| n.starts_with(VAE_PREFIX));
    let bare = separate && names.iter().any(|n| n.starts_with("encoder.down."));
    if !prefixed && !bare {
        let message = if separate {
            format!(
                "no VAE weights here (neither LDM keys `encoder.down.*` / `first_stage_model.*` nor diffusers keys `encoder.down_blocks.*`); found e.g. {} — give a VAE file (such as sdxl_vae.safetensors, or Flux's ae.safetensors)",
                names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )
        } else {
            "no VAE weights (`first_stage_model.*`) in this checkpoint; give the VAE file (vae, as sd-scripts' --vae)"
                .into()
        };
        return Err(Error::Checkpoint { path: path.to_path_buf(), message });
    }
    let full = |n: &str| if prefixed { n.to_string() } else { format!("{VAE_PREFIX}{n}") };
    let stored = read_where(
        path,
        |n| (!prefixed || n.starts_with(VAE_PREFIX)).then(|| full(n)),
        dtype,
        LinearStorage::Compute,
        device,
    )?;
    let map = LdmKeyMap::new(stored.keys().map(String::as_str));
    let mut tensors = HashMap::new();
    for (key, tensor) in stored {
        match map.map(&key) {
            KeyFate::Renamed(targets) => {
                for target in targets.into_iter().filter(|t| t.component == Component::Vae) {
                    tensors.insert(target.name.clone(), target.transform.apply(&tensor)?);
                }
            }
            KeyFate::Ignored(_) => {}
            KeyFate::Unmapped(_) => {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!("`{key}` is not a VAE weight of the LDM layout"),
                })
            }
        }
    }
    Ok(tensors)
}

/// A diffusers `AutoencoderKL` `config.json`.
pub(crate) fn read_vae_config(json: &Path) -> Result<AutoencoderKLConfig> {
    let text = std::fs::read_to_string(json).map_err(|source| Error::Io { path: json.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: json.to_path_buf(),
        message: format!("not an AutoencoderKL config: {e}"),
    })
}
