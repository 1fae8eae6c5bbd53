//! SD3 / SD3.5 weights as users have them (sd-scripts' `sd3_train_network.py` `load_target_model`,
//! `library/sd3_utils.py`; diffusers' single-file and folder loaders):
//!
//! - SAI's single file (`sd3_medium.safetensors`, `sd3.5_large.safetensors`, …): the MMDiT under
//!   `model.diffusion_model.` (bare keys accepted too), the VAE under `first_stage_model.` (LDM
//!   keys), and optionally the text encoders in transformers' layouts under
//!   `text_encoders.{clip_l,clip_g,t5xxl}.transformer.` — SAI's files carry no CLIP-L
//!   `text_projection`, for which sd-scripts and diffusers use an identity, as done here.
//! - Separate text-encoder files (sd-scripts' `--clip_l`, `--clip_g`, `--t5xxl`; a VAE with
//!   `--vae`), in transformers' layout or SAI's prefixed one; they override the checkpoint's.
//! - A diffusers folder (`transformer/`, `vae/`, `text_encoder{,_2,_3}/`): the transformer is
//!   renamed to SAI's keys ([`sai_from_diffusers`], the inverse of diffusers'
//!   `convert_sd3_transformer_checkpoint_to_diffusers`), the layout `MmditTransformer` and
//!   sd-scripts' LoRA names use.
//!
//! Only the tensors of the part asked for are read from a single file, so loading the
//! transformer from a file that also holds T5-XXL does not read T5.
//!
//! sd-scripts differs in two places, both followed neither here nor by diffusers: its
//! in-checkpoint CLIP loaders strip `text_encoders.clip_l.` but not `transformer.`, so the keys
//! miss the model (loaded with `strict=False`); and it prefers an embedded CLIP-G over `--clip_g`
//! while `--clip_l` overrides an embedded CLIP-L. Here every given file overrides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::ldm_keys::{UNET_PREFIX, VAE_PREFIX};
use super::vae_file::{load_vae_file, read_ldm_vae};
pub use super::LinearStorage;
use super::{detect_family, detect_family_at, open_safetensors, read_component, read_where, tensor_names, ModelFamily};
use crate::clip::ClipTextConfig;
use crate::dit::mmdit::MmditConfig;
use crate::t5::{T5Config, T5FeedForward};
use crate::vae::AutoencoderKLConfig;
use crate::{Error, Result, Weights};

/// SD3's VAE latent scale (diffusers' `scaling_factor`), used when no `vae/config.json` says.
pub const SD3_VAE_SCALE: f64 = 1.5305;
/// SD3's VAE latent shift (diffusers' `shift_factor`), used when no `vae/config.json` says.
pub const SD3_VAE_SHIFT: f64 = 0.0609;
/// Latent channels of SD3's VAE (the MMDiT's input).
const SD3_LATENT_CHANNELS: usize = 16;
/// A key only diffusers' SD3 transformer has.
const DIFFUSERS_MARKER: &str = "pos_embed.proj.weight";
/// CLIP's head width: the head count is not in the tensor shapes.
const CLIP_HEAD_DIM: usize = 64;

/// Where an SD3 model's parts are (sd-scripts' arguments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sd3Paths {
    /// SAI single file or diffusers folder (`--pretrained_model_name_or_path`).
    pub model: PathBuf,
    /// CLIP-L (`--clip_l`): a file or a transformers folder.
    pub clip_l: Option<PathBuf>,
    /// CLIP-G (`--clip_g`).
    pub clip_g: Option<PathBuf>,
    /// T5-XXL (`--t5xxl`).
    pub t5xxl: Option<PathBuf>,
    /// The VAE (`--vae`): LDM or diffusers keys, or a diffusers `vae/` folder.
    pub vae: Option<PathBuf>,
}

/// One of SD3's three text encoders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sd3TextEncoder {
    /// CLIP ViT-L/14 (`text_encoder`, with projection).
    ClipL,
    /// OpenCLIP ViT-bigG/14 (`text_encoder_2`, with projection).
    ClipG,
    /// T5 v1.1 XXL's encoder (`text_encoder_3`).
    T5xxl,
}

impl Sd3TextEncoder {
    /// sd-scripts' argument for it (without `--`).
    pub fn flag(self) -> &'static str {
        match self {
            Sd3TextEncoder::ClipL => "clip_l",
            Sd3TextEncoder::ClipG => "clip_g",
            Sd3TextEncoder::T5xxl => "t5xxl",
        }
    }

    /// Its subfolder in a diffusers folder.
    pub fn folder(self) -> &'static str {
        match self {
            Sd3TextEncoder::ClipL => "text_encoder",
            Sd3TextEncoder::ClipG => "text_encoder_2",
            Sd3TextEncoder::T5xxl => "text_encoder_3",
        }
    }

    /// The prefix of its transformers keys in SAI's single files.
    pub fn sai_prefix(self) -> &'static str {
        match self {
            Sd3TextEncoder::ClipL => "text_encoders.clip_l.transformer.",
            Sd3TextEncoder::ClipG => "text_encoders.clip_g.transformer.",
            Sd3TextEncoder::T5xxl => "text_encoders.t5xxl.transformer.",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sd3TextEncoder::ClipL => "CLIP-L",
            Sd3TextEncoder::ClipG => "CLIP-G",
            Sd3TextEncoder::T5xxl => "T5-XXL",
        }
    }

    /// A tensor every file of this encoder has (transformers' names).
    fn marker(self) -> &'static str {
        match self {
            Sd3TextEncoder::ClipL | Sd3TextEncoder::ClipG => "text_model.embeddings.token_embedding.weight",
            Sd3TextEncoder::T5xxl => "encoder.block.0.layer.0.SelfAttention.q.weight",
        }
    }
}

/// A text encoder's configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum Sd3TextEncoderConfig {
    /// For `ClipTextModelWithProjection` (both CLIPs).
    Clip(ClipTextConfig),
    /// For `T5EncoderModel`.
    T5(T5Config),
}

/// The VAE's latent normalisation: the denoiser sees `(z − shift)·scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VaeScaling {
    /// diffusers' `scaling_factor`.
    pub scale: f64,
    /// diffusers' `shift_factor`.
    pub shift: f64,
}

impl VaeScaling {
    /// VAE latents → the denoiser's: `(z − shift)·scale`.
    pub fn to_model_space(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        (z - self.shift)? * self.scale
    }

    /// The inverse: what the VAE decodes.
    pub fn from_model_space(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        (latents / self.scale)? + self.shift
    }
}

/// Loads the MMDiT from a SAI single file (prefixed or bare keys, fp8 e4m3 included), a diffusers
/// folder (with `transformer/`, or that folder itself) or a diffusers transformer file: the
/// config from the shapes (`MmditConfig::from_sai_shapes`; a folder's `config.json` gives the
/// head count) and the weights under SAI's keys without prefix, for
/// `MmditTransformer::new(weights.view(""), &config)`.
pub fn load_sd3_transformer(
    path: &Path,
    dtype: DType,
    storage: LinearStorage,
    device: &Device,
) -> Result<(MmditConfig, Weights)> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let (mut tensors, config_json, source) = if meta.is_dir() {
        refuse_folder_of_other_family(path)?;
        let dir = if path.join("transformer").is_dir() { path.join("transformer") } else { path.to_path_buf() };
        let tensors = read_component(&dir, "diffusion_pytorch_model", dtype, storage, device)?;
        (tensors, Some(dir.join("config.json")), dir)
    } else {
        let names = tensor_names(path)?;
        let prefix = if names.iter().any(|n| n.starts_with(UNET_PREFIX)) { UNET_PREFIX } else { "" };
        let is_other_part = |n: &str| n.starts_with(VAE_PREFIX) || n.starts_with("text_encoders.");
        let keep = |n: &str| if prefix.is_empty() { !is_other_part(n) } else { n.starts_with(prefix) };
        if !names.iter().filter(|n| keep(n)).any(|n| {
            let bare = &n[prefix.len()..];
            bare.starts_with("joint_blocks.") || bare == DIFFUSERS_MARKER
        }) {
            return Err(not_sd3(path, &names));
        }
        let tensors = read_where(path, |n| keep(n).then(|| n[prefix.len()..].to_string()), dtype, storage, device)?;
        (tensors, None, path.to_path_buf())
    };
    let bad = |message: String| Error::Checkpoint { path: source.clone(), message };
    if tensors.contains_key(DIFFUSERS_MARKER) {
        tensors = sai_from_diffusers(tensors).map_err(bad)?;
    }
    if !tensors.contains_key("joint_blocks.0.x_block.attn.qkv.weight") {
        let names: Vec<String> = tensors.keys().cloned().collect();
        return Err(not_sd3(&source, &names));
    }
    let shapes: HashMap<&str, Vec<usize>> = tensors.iter().map(|(k, v)| (k.as_str(), v.dims().to_vec())).collect();
    let mut config = MmditConfig::from_sai_shapes(shapes.keys().copied(), |k| shapes.get(k).cloned()).map_err(bad)?;
    // Without q/k norms the shapes cannot tell the head count (SAI's 64-wide heads are assumed);
    // a diffusers config says it.
    if let Some(json) = config_json.filter(|p| p.is_file()) {
        let value = read_json(&json)?;
        let field = |name: &str| value.get(name).and_then(|v| v.as_u64()).map(|v| v as usize);
        if let (Some(heads), Some(head_dim)) = (field("num_attention_heads"), field("attention_head_dim")) {
            if heads * head_dim != config.hidden_size {
                return Err(Error::Checkpoint {
                    path: json,
                    message: format!(
                        "{heads} heads of {head_dim} do not make the transformer's width {}",
                        config.hidden_size
                    ),
                });
            }
            config.num_heads = heads;
        }
    }
    Ok((config, Weights::new(tensors, source.display().to_string())))
}

/// Renames a diffusers `SD3Transformer2DModel` state dict to SAI's keys — the inverse of
/// diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`: q/k/v (and the context side's
/// `add_*_proj`, the second attention's) concatenated into `qkv`, `norm_q`/`norm_k` → `ln_q`/
/// `ln_k`, and the halves of `norm_out` and of the last block's pre-only context norm swapped
/// from diffusers' (scale, shift) back to SAI's (shift, scale).
pub fn sai_from_diffusers(mut sd: HashMap<String, Tensor>) -> std::result::Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::new();
    let take = |sd: &mut HashMap<String, Tensor>, key: &str| sd.remove(key).ok_or_else(|| format!("missing `{key}`"));
    let depth = sd
        .keys()
        .filter_map(|k| k.strip_prefix("transformer_blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    out.insert("pos_embed".to_string(), take(&mut sd, "pos_embed.pos_embed")?);
    let mut moves: Vec<(String, String)> = [
        ("pos_embed.proj", "x_embedder.proj"),
        ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
        ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
        ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
        ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
        ("context_embedder", "context_embedder"),
        ("proj_out", "final_layer.linear"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .into();
    for i in 0..depth {
        let (d, b) = (format!("transformer_blocks.{i}"), format!("joint_blocks.{i}"));
        for (from, to) in [
            ("attn.norm_q", "x_block.attn.ln_q"),
            ("attn.norm_k", "x_block.attn.ln_k"),
            ("attn.norm_added_q", "context_block.attn.ln_q"),
            ("attn.norm_added_k", "context_block.attn.ln_k"),
            ("attn2.norm_q", "x_block.attn2.ln_q"),
            ("attn2.norm_k", "x_block.attn2.ln_k"),
            ("attn.to_out.0", "x_block.attn.proj"),
            ("attn.to_add_out", "context_block.attn.proj"),
            ("attn2.to_out.0", "x_block.attn2.proj"),
            ("norm1.linear", "x_block.adaLN_modulation.1"),
            ("ff.net.0.proj", "x_block.mlp.fc1"),
            ("ff.net.2", "x_block.mlp.fc2"),
            ("ff_context.net.0.proj", "context_block.mlp.fc1"),
            ("ff_context.net.2", "context_block.mlp.fc2"),
        ] {
            moves.push((format!("{d}.{from}"), format!("{b}.{to}")));
        }
        for (parts, to) in [
            (["attn.to_q", "attn.to_k", "attn.to_v"], "x_block.attn.qkv"),
            (["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], "context_block.attn.qkv"),
            (["attn2.to_q", "attn2.to_k", "attn2.to_v"], "x_block.attn2.qkv"),
        ] {
            for suffix in ["weight", "bias"] {
                let keys = parts.map(|p| format!("{d}.{p}.{suffix}"));
                // The second attention exists only in SD3.5 Medium's first blocks.
                if to.contains("attn2") && !sd.contains_key(&keys[0]) {
                    continue;
                }
                let pieces = keys.iter().map(|k| take(&mut sd, k)).collect::<std::result::Result<Vec<_>, _>>()?;
                out.insert(format!("{b}.{to}.{suffix}"), Tensor::cat(&pieces, 0).map_err(|e| e.to_string())?);
            }
        }
        for suffix in ["weight", "bias"] {
            let t = take(&mut sd, &format!("{d}.norm1_context.linear.{suffix}"))?;
            // Only the last block's context norm is diffusers' AdaLayerNormContinuous.
            let t = if i + 1 == depth { swap_halves(&t)? } else { t };
            out.insert(format!("{b}.context_block.adaLN_modulation.1.{suffix}"), t);
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
        out.insert(format!("final_layer.adaLN_modulation.1.{suffix}"), swap_halves(&t)?);
    }
    if let Some(left) = sd.keys().next() {
        return Err(format!("diffusers SD3 tensor `{left}` has no SAI counterpart ({} left over)", sd.len()));
    }
    Ok(out)
}

/// `[a, b]` → `[b, a]` along dim 0.
fn swap_halves(t: &Tensor) -> std::result::Result<Tensor, String> {
    let half = t.dim(0).map_err(|e| e.to_string())? / 2;
    let (a, b) = (t.narrow(0, 0, half), t.narrow(0, half, half));
    let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
    Tensor::cat(&[b, a], 0).map_err(|e| e.to_string())
}

/// Loads SD3's VAE (f32) from `--vae` when given, else the model folder's `vae/` or the single
/// file's `first_stage_model.*`: diffusers `AutoencoderKL` config and keys, and the latent scale
/// and shift (`vae/config.json`'s when there is one, else SD3's 1.5305 and 0.0609).
pub fn load_sd3_vae(paths: &Sd3Paths, device: &Device) -> Result<(AutoencoderKLConfig, Weights, VaeScaling)> {
    let path = match &paths.vae {
        Some(p) => p.clone(),
        None if paths.model.is_dir() => paths.model.join("vae"),
        None => paths.model.clone(),
    };
    let meta = std::fs::metadata(&path).map_err(|source| {
        if paths.vae.is_none() && paths.model.is_dir() {
            Error::Checkpoint {
                path: paths.model.clone(),
                message: "this diffusers folder has no vae/; give the VAE file (vae, as sd-scripts' --vae)".into(),
            }
        } else {
            Error::Io { path: path.clone(), source }
        }
    })?;
    let (config, tensors) = if paths.vae.is_none() && !meta.is_dir() {
        // The model's single file: its `first_stage_model.*`.
        (None, read_ldm_vae(&path, &tensor_names(&path)?, false, DType::F32, device)?)
    } else {
        let file = load_vae_file(&path, DType::F32, device)?;
        (file.config, file.tensors)
    };
    let weights = Weights::new(tensors, path.display().to_string());
    let mut config = match config {
        Some(c) => c,
        None => AutoencoderKLConfig {
            scaling_factor: SD3_VAE_SCALE,
            shift_factor: Some(SD3_VAE_SHIFT),
            sample_size: 1024,
            ..super::sdxl::vae_config(&weights)
        },
    };
    if config.shift_factor.is_none() {
        tracing::warn!("{}: the VAE config has no shift_factor; using SD3's {SD3_VAE_SHIFT}", path.display());
        config.shift_factor = Some(SD3_VAE_SHIFT);
    }
    if config.latent_channels != SD3_LATENT_CHANNELS {
        return Err(Error::Checkpoint {
            path,
            message: format!(
                "this VAE has {} latent channels; SD3's has {SD3_LATENT_CHANNELS} — give SD3's VAE (vae)",
                config.latent_channels
            ),
        });
    }
    let scaling = VaeScaling { scale: config.scaling_factor, shift: config.shift_factor.unwrap_or(SD3_VAE_SHIFT) };
    Ok((config, weights, scaling))
}

/// Where a text encoder comes from.
enum TextEncoderSource {
    /// A file or folder given for it.
    Given(PathBuf),
    /// The model folder's subfolder.
    Folder(PathBuf),
    /// Inside the model's single file, under SAI's prefix.
    Embedded(PathBuf),
}

fn text_encoder_source(paths: &Sd3Paths, which: Sd3TextEncoder) -> Result<Option<TextEncoderSource>> {
    let given = match which {
        Sd3TextEncoder::ClipL => &paths.clip_l,
        Sd3TextEncoder::ClipG => &paths.clip_g,
        Sd3TextEncoder::T5xxl => &paths.t5xxl,
    };
    if let Some(p) = given {
        return Ok(Some(TextEncoderSource::Given(p.clone())));
    }
    let model = &paths.model;
    if model.is_dir() {
        let dir = model.join(which.folder());
        return Ok(dir.is_dir().then_some(TextEncoderSource::Folder(dir)));
    }
    let marker = format!("{}{}", which.sai_prefix(), which.marker());
    let file = open_safetensors(model)?;
    let found = file.tensor_names().any(|n| n == marker);
    Ok(found.then(|| TextEncoderSource::Embedded(model.clone())))
}

/// Whether the text encoder can be loaded: given, in the model folder, or inside the single file
/// (SAI's `sd3_medium_incl_clips.safetensors` has no T5; SD3 then conditions on zeros in its place).
pub fn sd3_text_encoder_available(paths: &Sd3Paths, which: Sd3TextEncoder) -> Result<bool> {
    Ok(text_encoder_source(paths, which)?.is_some())
}

/// Loads one text encoder in transformers' layout (`ClipTextModelWithProjection` for both CLIPs,
/// `T5EncoderModel`): from its given file or folder, else the model folder's subfolder, else the
/// single file's `text_encoders.*`; a missing one is an error naming sd-scripts' flag. The config
/// is the folder's `config.json`, else read from the shapes (see [`clip_config_from_shapes`],
/// [`t5_config_from_shapes`]). A CLIP-L without `text_projection` gets an identity, as SAI's
/// files are used by sd-scripts and diffusers.
pub fn load_sd3_text_encoder_weights(
    paths: &Sd3Paths,
    which: Sd3TextEncoder,
    dtype: DType,
    storage: LinearStorage,
    device: &Device,
) -> Result<(Sd3TextEncoderConfig, Weights)> {
    let source = text_encoder_source(paths, which)?.ok_or_else(|| {
        let inside = if paths.model.is_dir() {
            format!("this diffusers folder has no {}/", which.folder())
        } else {
            format!("this checkpoint does not include {} (`{}*`)", which.label(), which.sai_prefix())
        };
        Error::Checkpoint {
            path: paths.model.clone(),
            message: format!(
                "{inside}; give the {} file ({}, as sd-scripts' --{})",
                which.label(),
                which.flag(),
                which.flag()
            ),
        }
    })?;
    let (path, config_json, mut tensors) = match source {
        TextEncoderSource::Folder(dir) => {
            let t = read_component(&dir, "model", dtype, storage, device)?;
            (dir.clone(), Some(dir.join("config.json")), t)
        }
        TextEncoderSource::Given(p) if p.is_dir() => {
            let t = read_component(&p, "model", dtype, storage, device)?;
            (p.clone(), Some(p.join("config.json")), t)
        }
        TextEncoderSource::Given(p) | TextEncoderSource::Embedded(p) => {
            let names = tensor_names(&p)?;
            let prefix = which.sai_prefix();
            let prefix = if names.iter().any(|n| n.starts_with(prefix)) { prefix } else { "" };
            let t = read_where(&p, |n| n.strip_prefix(prefix).map(str::to_string), dtype, storage, device)?;
            (p, None, t)
        }
    };
    let bad = |message: String| Error::Checkpoint { path: path.clone(), message };
    let is_clip = which != Sd3TextEncoder::T5xxl;
    tensors.retain(|k, _| {
        !k.ends_with("position_ids")
            && if is_clip {
                k.starts_with("text_model.") || k == "text_projection.weight"
            } else {
                k.starts_with("shared.") || k.starts_with("encoder.")
            }
    });
    if !tensors.contains_key(which.marker()) {
        let family = detect_family_at(&path).ok().filter(|f| *f != ModelFamily::Unknown);
        return Err(bad(format!(
            "no {} weights (`{}`){}; give the {} file ({})",
            which.label(),
            which.marker(),
            family.map(|f| format!(" — this looks like a {f} checkpoint")).unwrap_or_default(),
            which.label(),
            which.flag()
        )));
    }
    let shapes = |k: &str| tensors.get(k).map(|t| t.dims().to_vec());
    let json = config_json.filter(|p| p.is_file());
    let config = match which {
        Sd3TextEncoder::T5xxl => Sd3TextEncoderConfig::T5(match json {
            Some(j) => T5Config::from_json_file(&j)?,
            None => t5_config_from_shapes(tensors.keys().map(String::as_str), shapes).map_err(bad)?,
        }),
        _ => {
            if !tensors.contains_key("text_projection.weight") {
                if which == Sd3TextEncoder::ClipG {
                    return Err(bad("CLIP-G has no `text_projection.weight`; SD3 needs its pooled projection — give the full CLIP-G (clip_g)".into()));
                }
                let width = shapes(which.marker()).map_or(0, |s| s[1]);
                tensors.insert("text_projection.weight".into(), Tensor::eye(width, dtype, device)?);
            }
            let shapes = |k: &str| tensors.get(k).map(|t| t.dims().to_vec());
            Sd3TextEncoderConfig::Clip(match json {
                Some(j) => ClipTextConfig::from_json_file(&j)?,
                None => clip_config_from_shapes(which, tensors.keys().map(String::as_str), shapes).map_err(bad)?,
            })
        }
    };
    Ok((config, Weights::new(tensors, path.display().to_string())))
}

/// A CLIP text config from transformers-keyed shapes: widths, vocabulary, positions, layers and
/// projection from the tensors; sd-scripts' SD3 config for what shapes cannot tell — the
/// activation (CLIP-L quick-GELU, CLIP-G GELU), the LayerNorm epsilon, the token ids — and the
/// head count from CLIP's 64-wide heads (one head when 64 does not divide the width, a guess
/// logged as such).
pub fn clip_config_from_shapes<'a>(
    which: Sd3TextEncoder,
    keys: impl Iterator<Item = &'a str>,
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
) -> std::result::Result<ClipTextConfig, String> {
    let need = |k: &str| shape_of(k).ok_or_else(|| format!("missing `{k}`"));
    let preset = if which == Sd3TextEncoder::ClipL { ClipTextConfig::sdxl_te1() } else { ClipTextConfig::sdxl_te2() };
    let token = need("text_model.embeddings.token_embedding.weight")?;
    let hidden = token[1];
    let heads = if hidden >= CLIP_HEAD_DIM && hidden % CLIP_HEAD_DIM == 0 {
        hidden / CLIP_HEAD_DIM
    } else {
        tracing::warn!(
            "{} is {hidden} wide, not a multiple of CLIP's 64-wide heads: assuming one head, which the weights cannot confirm (a config.json beside the weights says)",
            which.label()
        );
        1
    };
    let cfg = ClipTextConfig {
        vocab_size: token[0],
        hidden_size: hidden,
        intermediate_size: need("text_model.encoder.layers.0.mlp.fc1.weight")?[0],
        num_hidden_layers: count_indices(keys, "text_model.encoder.layers."),
        num_attention_heads: heads,
        max_position_embeddings: need("text_model.embeddings.position_embedding.weight")?[0],
        projection_dim: Some(need("text_projection.weight")?[0]),
        ..preset
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// A T5 encoder config from transformers-keyed shapes: vocabulary and widths, blocks, heads and
/// buckets (the relative-position table is buckets × heads), head width from q; gated GELU
/// (`wi_0`/`wi_1`, T5 v1.1) or ReLU (`wi`). The shapes cannot tell the bucket distance nor the
/// epsilon: T5 v1.1's 128 and 1e-6.
pub fn t5_config_from_shapes<'a>(
    keys: impl Iterator<Item = &'a str> + Clone,
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
) -> std::result::Result<T5Config, String> {
    let need = |k: &str| shape_of(k).ok_or_else(|| format!("missing `{k}`"));
    let embed = shape_of("shared.weight").or_else(|| shape_of("encoder.embed_tokens.weight"));
    let embed = embed.ok_or("missing `shared.weight`")?;
    let block = "encoder.block.0.layer";
    let bias = need(&format!("{block}.0.SelfAttention.relative_attention_bias.weight"))?;
    let (buckets, heads) = (bias[0], bias[1]);
    let inner = need(&format!("{block}.0.SelfAttention.q.weight"))?[0];
    let (d_ff, feed_forward_proj) = match shape_of(&format!("{block}.1.DenseReluDense.wi_0.weight")) {
        Some(s) => (s[0], T5FeedForward::GatedGelu),
        None => (need(&format!("{block}.1.DenseReluDense.wi.weight"))?[0], T5FeedForward::Relu),
    };
    let cfg = T5Config {
        vocab_size: embed[0],
        d_model: embed[1],
        d_kv: inner / heads.max(1),
        d_ff,
        num_layers: count_indices(keys, "encoder.block."),
        num_heads: heads,
        relative_attention_num_buckets: buckets,
        feed_forward_proj,
        ..T5Config::t5_v1_1_xxl()
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// 1 + the largest `N` of keys `prefix N.…`.
fn count_indices<'a>(keys: impl Iterator<Item = &'a str>, prefix: &str) -> usize {
    keys.filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1)
}

/// The error for a file whose keys are not an SD3 transformer's, naming the family it is.
fn not_sd3(path: &Path, names: &[String]) -> Error {
    let family = detect_family(names.iter().map(String::as_str));
    let message = match family {
        ModelFamily::Unknown | ModelFamily::Sd3 => format!(
            "no SD3 transformer weights (`model.diffusion_model.joint_blocks.*`); found e.g. {} — pass an SD3 / SD3.5 checkpoint such as sd3_medium.safetensors",
            names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ),
        other => format!(
            "this is {} {other} checkpoint, not SD3 / SD3.5 — pass an SD3 model (sd3_medium.safetensors, sd3.5_large.safetensors, …) or train it with its own family",
            if other == ModelFamily::Flux { "a" } else { "an" }
        ),
    };
    Error::UnsupportedFamily { path: path.to_path_buf(), message }
}

/// Refuses a diffusers folder of another family (its `model_index.json` or subfolders say).
fn refuse_folder_of_other_family(path: &Path) -> Result<()> {
    if !path.join("model_index.json").is_file() && !path.join("unet").is_dir() {
        return Ok(());
    }
    match detect_family_at(path)? {
        ModelFamily::Sd3 | ModelFamily::Unknown => Ok(()),
        other => Err(Error::UnsupportedFamily {
            path: path.to_path_buf(),
            message: format!("this is a diffusers {other} folder, not SD3 / SD3.5 — pass an SD3 model"),
        }),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), message: format!("not valid JSON: {e}") })
}
