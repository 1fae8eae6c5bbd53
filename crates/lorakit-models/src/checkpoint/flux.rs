//! Flux.1 weights as users have them (spec §13.2): the transformer as BFL's single file
//! (`flux1-dev.safetensors`, with or without the `model.diffusion_model.` prefix, fp8 e4m3fn
//! included) or a diffusers folder (`transformer/`, renamed here to BFL's keys, the layout the
//! model code and kohya's LoRA names use); the autoencoder as BFL's `ae.safetensors` (LDM VAE
//! keys without `quant_conv`) or a diffusers `vae/` folder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::ldm_keys::UNET_PREFIX;
pub use super::LinearStorage;
use super::{read_component, read_safetensors_as};
use crate::dit::flux::FluxConfig;
use crate::vae::AutoencoderKLConfig;
use crate::{Error, Result, Weights};

/// The Flux autoencoder's latent scale and shift (BFL `ae.safetensors` carries no config).
pub const FLUX_AE_SCALE: f64 = 0.3611;
/// See [`FLUX_AE_SCALE`].
pub const FLUX_AE_SHIFT: f64 = 0.1159;

/// A key only diffusers' Flux transformer has (sd-scripts' detection key).
const DIFFUSERS_MARKER: &str = "transformer_blocks.0.attn.add_k_proj.bias";

/// A loaded Flux transformer: its configuration and BFL-keyed weights.
pub struct FluxTransformerWeights {
    /// Sizes (from the keys, or the diffusers config).
    pub config: FluxConfig,
    /// The tensors under BFL keys.
    pub weights: Weights,
}

/// Loads a Flux transformer from a BFL single file or a diffusers folder (the model folder
/// with `transformer/`, or the `transformer/` folder itself). `axes_dim`: the rotary axes when
/// a single file's head width is not Flux.1's 128 (tests with tiny models).
pub fn load_flux_transformer(
    path: &Path,
    dtype: DType,
    storage: LinearStorage,
    device: &Device,
    axes_dim: Option<Vec<usize>>,
) -> Result<FluxTransformerWeights> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let (tensors, config_json, source) = if meta.is_dir() {
        let dir = if path.join("transformer").is_dir() { path.join("transformer") } else { path.to_path_buf() };
        let tensors = read_component(&dir, "diffusion_pytorch_model", dtype, storage, device)?;
        (tensors, Some(dir.join("config.json")), dir)
    } else {
        (read_safetensors_as(path, dtype, storage, device)?, None, path.to_path_buf())
    };
    let bad = |message: String| Error::Checkpoint { path: source.clone(), message };
    let mut tensors: HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| (k.strip_prefix(UNET_PREFIX).map(str::to_string).unwrap_or(k), v)).collect();
    if tensors.contains_key(DIFFUSERS_MARKER) {
        let hidden = tensors
            .get("x_embedder.weight")
            .map(|t| t.dim(0))
            .transpose()?
            .ok_or_else(|| bad("diffusers Flux weights without `x_embedder.weight`".into()))?;
        tensors = bfl_from_diffusers(tensors, hidden).map_err(bad)?;
    }
    if !tensors.contains_key("double_blocks.0.img_attn.qkv.weight") {
        return Err(bad(format!(
            "no Flux transformer weights (`double_blocks.*`); found e.g. {}",
            tensors.keys().take(3).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let config = match config_json.filter(|p| p.is_file()) {
        Some(json) => FluxConfig::from_diffusers_json(&json)?,
        None => {
            let shapes: HashMap<&str, Vec<usize>> =
                tensors.iter().map(|(k, v)| (k.as_str(), v.dims().to_vec())).collect();
            FluxConfig::from_bfl_shapes(shapes.keys().copied(), |k| shapes.get(k).cloned(), axes_dim).map_err(bad)?
        }
    };
    Ok(FluxTransformerWeights { config, weights: Weights::new(tensors, source.display().to_string()) })
}

/// Renames a diffusers `FluxTransformer2DModel` state dict to BFL's keys — the inverse of
/// diffusers' `convert_flux_transformer_checkpoint_to_diffusers`: q/k/v concatenated into
/// `qkv`, the single blocks' q/k/v/MLP into `linear1`, and the final norm's (scale, shift)
/// halves swapped back to BFL's (shift, scale).
pub fn bfl_from_diffusers(
    mut sd: HashMap<String, Tensor>,
    hidden: usize,
) -> std::result::Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::new();
    let take = |sd: &mut HashMap<String, Tensor>, key: &str| sd.remove(key).ok_or_else(|| format!("missing `{key}`"));
    let mut moves: Vec<(String, String)> = vec![
        ("x_embedder".into(), "img_in".into()),
        ("context_embedder".into(), "txt_in".into()),
        ("time_text_embed.timestep_embedder.linear_1".into(), "time_in.in_layer".into()),
        ("time_text_embed.timestep_embedder.linear_2".into(), "time_in.out_layer".into()),
        ("time_text_embed.text_embedder.linear_1".into(), "vector_in.in_layer".into()),
        ("time_text_embed.text_embedder.linear_2".into(), "vector_in.out_layer".into()),
        ("proj_out".into(), "final_layer.linear".into()),
    ];
    if sd.contains_key("time_text_embed.guidance_embedder.linear_1.weight") {
        moves.push(("time_text_embed.guidance_embedder.linear_1".into(), "guidance_in.in_layer".into()));
        moves.push(("time_text_embed.guidance_embedder.linear_2".into(), "guidance_in.out_layer".into()));
    }
    let count = |sd: &HashMap<String, Tensor>, prefix: &str| {
        sd.keys()
            .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1)
    };
    let (double, single) = (count(&sd, "transformer_blocks."), count(&sd, "single_transformer_blocks."));
    for i in 0..double {
        let (d, b) = (format!("transformer_blocks.{i}"), format!("double_blocks.{i}"));
        for (from, to) in [
            ("norm1.linear", "img_mod.lin"),
            ("norm1_context.linear", "txt_mod.lin"),
            ("attn.to_out.0", "img_attn.proj"),
            ("attn.to_add_out", "txt_attn.proj"),
            ("ff.net.0.proj", "img_mlp.0"),
            ("ff.net.2", "img_mlp.2"),
            ("ff_context.net.0.proj", "txt_mlp.0"),
            ("ff_context.net.2", "txt_mlp.2"),
        ] {
            moves.push((format!("{d}.{from}"), format!("{b}.{to}")));
        }
        for (from, to) in [
            ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"),
            ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
            ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
            ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
        ] {
            out.insert(format!("{b}.{to}"), take(&mut sd, &format!("{d}.{from}"))?);
        }
        for (parts, to) in
            [(["to_q", "to_k", "to_v"], "img_attn.qkv"), (["add_q_proj", "add_k_proj", "add_v_proj"], "txt_attn.qkv")]
        {
            for suffix in ["weight", "bias"] {
                let keys: Vec<String> = parts.iter().map(|p| format!("{d}.attn.{p}.{suffix}")).collect();
                if suffix == "bias" && !sd.contains_key(&keys[0]) {
                    continue;
                }
                let pieces = keys.iter().map(|k| take(&mut sd, k)).collect::<std::result::Result<Vec<_>, _>>()?;
                out.insert(format!("{b}.{to}.{suffix}"), Tensor::cat(&pieces, 0).map_err(|e| e.to_string())?);
            }
        }
    }
    for i in 0..single {
        let (d, b) = (format!("single_transformer_blocks.{i}"), format!("single_blocks.{i}"));
        moves.push((format!("{d}.norm.linear"), format!("{b}.modulation.lin")));
        moves.push((format!("{d}.proj_out"), format!("{b}.linear2")));
        out.insert(format!("{b}.norm.query_norm.scale"), take(&mut sd, &format!("{d}.attn.norm_q.weight"))?);
        out.insert(format!("{b}.norm.key_norm.scale"), take(&mut sd, &format!("{d}.attn.norm_k.weight"))?);
        for suffix in ["weight", "bias"] {
            let keys = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"].map(|p| format!("{d}.{p}.{suffix}"));
            let pieces = keys.iter().map(|k| take(&mut sd, k)).collect::<std::result::Result<Vec<_>, _>>()?;
            out.insert(format!("{b}.linear1.{suffix}"), Tensor::cat(&pieces, 0).map_err(|e| e.to_string())?);
        }
    }
    for (from, to) in moves {
        for suffix in ["weight", "bias"] {
            if let Some(t) = sd.remove(&format!("{from}.{suffix}")) {
                out.insert(format!("{to}.{suffix}"), t);
            }
        }
    }
    for suffix in ["weight", "bias"] {
        let t = take(&mut sd, &format!("norm_out.linear.{suffix}"))?;
        let (scale, shift) = (
            t.narrow(0, 0, hidden).map_err(|e| e.to_string())?,
            t.narrow(0, hidden, hidden).map_err(|e| e.to_string())?,
        );
        out.insert(
            format!("final_layer.adaLN_modulation.1.{suffix}"),
            Tensor::cat(&[shift, scale], 0).map_err(|e| e.to_string())?,
        );
    }
    if let Some(left) = sd.keys().next() {
        return Err(format!("diffusers Flux tensor `{left}` has no BFL counterpart ({} left over)", sd.len()));
    }
    Ok(out)
}

/// A loaded Flux autoencoder: diffusers `AutoencoderKL` config and diffusers-keyed weights.
pub struct FluxAeWeights {
    /// Config (from `config.json`, or inferred from BFL keys with Flux's scale and shift).
    pub config: AutoencoderKLConfig,
    /// The tensors under diffusers keys.
    pub weights: Weights,
}

/// Loads the Flux autoencoder from BFL's `ae.safetensors` or a diffusers folder (the model
/// folder with `vae/`, or the `vae/` folder itself).
pub fn load_flux_ae(path: &Path, dtype: DType, device: &Device) -> Result<FluxAeWeights> {
    // BFL's keys are the LDM VAE's without the `first_stage_model.` prefix: a VAE file's layout.
    let file = super::vae_file::load_vae_file(path, dtype, device)?;
    if let Some(config) = file.config {
        return Ok(FluxAeWeights { config, weights: Weights::new(file.tensors, file.path.display().to_string()) });
    }
    let tensors = file.tensors;
    let bad = |message: String| Error::Checkpoint { path: path.to_path_buf(), message };
    let dims = |k: &str| {
        tensors
            .get(k)
            .map(|t: &Tensor| t.dims().to_vec())
            .ok_or_else(|| bad(format!("no `{k}`; is this Flux's ae.safetensors?")))
    };
    let latent_channels = dims("decoder.conv_in.weight")?[1];
    let levels = count_indices(tensors.keys(), "encoder.down_blocks.");
    let layers = count_indices(tensors.keys(), "encoder.down_blocks.0.resnets.");
    let block_out_channels = (0..levels)
        .map(|i| dims(&format!("encoder.down_blocks.{i}.resnets.0.conv1.weight")).map(|d| d[0]))
        .collect::<Result<Vec<_>>>()?;
    let config = AutoencoderKLConfig {
        down_block_types: vec!["DownEncoderBlock2D".into(); levels],
        up_block_types: vec!["UpDecoderBlock2D".into(); levels],
        block_out_channels,
        layers_per_block: layers,
        latent_channels,
        norm_num_groups: 32,
        sample_size: 1024,
        scaling_factor: FLUX_AE_SCALE,
        shift_factor: Some(FLUX_AE_SHIFT),
        force_upcast: true,
        use_quant_conv: false,
        use_post_quant_conv: false,
        mid_block_add_attention: true,
        ..AutoencoderKLConfig::default()
    };
    Ok(FluxAeWeights { config, weights: Weights::new(tensors, path.display().to_string()) })
}

/// 1 + the largest `N` of keys `prefix N.…`.
fn count_indices<'a>(keys: impl Iterator<Item = &'a String>, prefix: &str) -> usize {
    keys.filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1)
}
