//! Loading SD 1.x/2.x and SDXL base models (spec §14): single-file LDM / SGM `.safetensors`
//! checkpoints and diffusers folders, both delivered as [`Weights`] stores with diffusers tensor
//! names (three, and SDXL's second text encoder), so the model constructors never see the LDM
//! layout.
//!
//! Files are memory-mapped and every tensor is converted on its own, so peak memory is the
//! converted model plus one tensor. Pickles (`.ckpt`, `.pt`, `.bin`) are refused: unpickling
//! can run arbitrary code. Families this version cannot train (SD3, Flux, the SDXL refiner,
//! EDM-style SDXL models) are recognised from their keys or folder layout and refused by name
//! rather than failing on missing tensors.
//!
//! SDXL single files (SGM layout): `model.diffusion_model.*` (the LDM U-Net rules plus
//! `label_emb.0.{0,2}` → `add_embedding.linear_{1,2}`), `first_stage_model.*`,
//! `conditioner.embedders.0.transformer.text_model.*` (HF CLIP-L, text encoder 1) and
//! `conditioner.embedders.1.model.*` (OpenCLIP bigG, text encoder 2: fused q/k/v split, all 32
//! layers kept — the pooled output needs the last one — `logit_scale` ignored). OpenCLIP's
//! `text_projection` is stored (width, proj) and used as `x @ P`; it becomes the linear weight
//! `text_projection.weight` = Pᵀ, as diffusers' and ComfyUI's converters make it, so a single
//! file and its diffusers conversion hold the same model. (sd-scripts'
//! `convert_sdxl_text_encoder_2_checkpoint` copies P untransposed, so sd-scripts' pooled vector
//! for a single file is x·P instead of the model's; its diffusers-folder path is right.)
//! Their configs come from the weights ([`sdxl::infer_configs`]): sizes the weights show,
//! SDXL's conventions for the rest. The flags NoobAI-style v-prediction files carry — top-level
//! `v_pred` and `ztsnr` tensors, which ComfyUI reads as v-prediction and zero-terminal SNR —
//! become [`SdCheckpoint::declared_prediction`] and [`SdCheckpoint::declared_zero_terminal_snr`].

pub mod flux;
pub mod ldm_keys;
pub mod sd3;
pub mod sdxl;
pub mod vae_file;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_lora::keys::{detect_scheme, Scheme};
use lorakit_lora::safetensors_file::{Dtype, LoraFile, LoraFileError};
use serde_json::Value;

pub use ldm_keys::{Component, KeyFate, LdmKeyMap, Target, Transform};

use crate::schedule::Prediction;
use crate::{Error, Result, Weights};

/// A base-model family, as far as the weights tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// Stable Diffusion 1.x (OpenAI CLIP-L text encoder, 768-wide cross-attention).
    Sd1,
    /// Stable Diffusion 2.x (OpenCLIP-H text encoder, 1024-wide cross-attention).
    Sd2,
    /// SDXL (two text encoders, size/crop conditioning).
    Sdxl,
    /// Stable Diffusion 3 / 3.5 (MMDiT).
    Sd3,
    /// FLUX.1 (double/single-stream DiT).
    Flux,
    /// Nothing the detector recognises.
    Unknown,
}

impl ModelFamily {
    /// Whether this version can load and train the family.
    pub fn is_supported(self) -> bool {
        matches!(self, ModelFamily::Sd1 | ModelFamily::Sd2 | ModelFamily::Sdxl)
    }

    /// The family's name in configs (`model.model_family`): `sd1`, `sd2`, `sdxl`, `sd3`,
    /// `flux`; `unknown` for [`ModelFamily::Unknown`].
    pub fn config_name(self) -> &'static str {
        match self {
            ModelFamily::Sd1 => "sd1",
            ModelFamily::Sd2 => "sd2",
            ModelFamily::Sdxl => "sdxl",
            ModelFamily::Sd3 => "sd3",
            ModelFamily::Flux => "flux",
            ModelFamily::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelFamily::Sd1 => "SD 1.x",
            ModelFamily::Sd2 => "SD 2.x",
            ModelFamily::Sdxl => "SDXL",
            ModelFamily::Sd3 => "SD 3",
            ModelFamily::Flux => "Flux",
            ModelFamily::Unknown => "unknown model family",
        })
    }
}

/// The family of a checkpoint from its tensor names (spec §14.1): `double_blocks.*` ⇒ Flux,
/// `joint_blocks.*` ⇒ SD3, `conditioner.embedders.*` / `label_emb.*` ⇒ SDXL,
/// `cond_stage_model.model.*` (OpenCLIP) ⇒ SD 2.x, `cond_stage_model.transformer.*` ⇒ SD 1.x.
/// SD 1.x and 2.x U-Nets share every key name, so a U-Net-only file reads as `Unknown`; the
/// text encoder tells them apart. Diffusers folders: see [`detect_family_at`].
pub fn detect_family<'a>(keys: impl Iterator<Item = &'a str>) -> ModelFamily {
    detect_from_keys(keys).0
}

/// The family of a checkpoint file (from its header, without reading tensors) or of a
/// diffusers folder (from `model_index.json`, the subfolders and their `config.json`).
pub fn detect_family_at(path: &Path) -> Result<ModelFamily> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    if meta.is_dir() {
        return Ok(DiffusersFolder::read(path)?.family().0);
    }
    refuse_pickle_extension(path)?;
    let file = open_safetensors(path)?;
    Ok(detect_family(file.tensor_names()))
}

/// An SD 1.x/2.x or SDXL checkpoint split into its components, every tensor renamed to its
/// diffusers key (`down_blocks.0.resnets.0.conv1.weight`, `encoder.mid_block.attentions.0.to_q.weight`
/// as a linear `[C, C]`, `text_model.encoder.layers.0.self_attn.q_proj.weight`) and converted
/// to the requested dtype and device.
pub struct SdCheckpoint {
    /// The file or folder loaded.
    pub path: PathBuf,
    /// SD 1.x, SD 2.x or SDXL (`Unknown` only for a diffusers folder whose configs and text
    /// encoder match none).
    pub family: ModelFamily,
    /// U-Net tensors (`UNet2DConditionModel` names).
    pub unet: Weights,
    /// VAE tensors (`AutoencoderKL` names).
    pub vae: Weights,
    /// Text encoder tensors (`CLIPTextModel` names, `position_ids` dropped; SD 2.x: 23 layers,
    /// the penultimate-layer encoder SD 2.x conditions on, as in diffusers' SD 2 folders; SDXL:
    /// text encoder 1, CLIP ViT-L).
    pub text_encoder: Weights,
    /// SDXL's text encoder 2 (`CLIPTextModelWithProjection` names: `text_model.*` with every
    /// layer, `text_projection.weight`); `None` for SD 1.x/2.x.
    pub text_encoder_2: Option<Weights>,
    /// `unet/config.json` of a diffusers folder; for SDXL single files the config read from
    /// the weights ([`sdxl::infer_configs`]); `None` for SD 1.x/2.x single files.
    pub unet_config: Option<Value>,
    /// `vae/config.json` of a diffusers folder; SDXL single files: read from the weights
    /// (scaling factor 0.13025, `force_upcast`); `None` for SD 1.x/2.x single files.
    pub vae_config: Option<Value>,
    /// `text_encoder/config.json` of a diffusers folder; SDXL single files: read from the
    /// weights; `None` for SD 1.x/2.x single files.
    pub text_encoder_config: Option<Value>,
    /// `text_encoder_2/config.json` of an SDXL folder, or an SDXL single file's read from the
    /// weights; `None` for SD 1.x/2.x.
    pub text_encoder_2_config: Option<Value>,
    /// What the model says it predicts, with where it says so: a diffusers folder's
    /// `scheduler/scheduler_config.json` `prediction_type`, a single file's `v_pred` flag
    /// tensor (ComfyUI's convention, NoobAI-XL v-pred) or its `modelspec.prediction_type`
    /// metadata. `None` when it does not say (most single files: SD 2 768-v and 512-base files
    /// look alike, so v-prediction must then be asked for).
    pub declared_prediction: Option<(Prediction, String)>,
    /// The model says it was trained with a zero-terminal-SNR schedule (sd-scripts'
    /// `--zero_terminal_snr`): a single file's `ztsnr` flag tensor (NoobAI-XL v-pred; ComfyUI
    /// reads it together with `v_pred`) or a folder scheduler's `rescale_betas_zero_snr = true`.
    pub declared_zero_terminal_snr: bool,
    /// Where it says so, for messages (`Some` exactly when `declared_zero_terminal_snr`).
    pub zero_terminal_snr_source: Option<String>,
}

impl SdCheckpoint {
    /// Swaps in a VAE read from its own file or folder (sd-scripts' `--vae`; any layout
    /// [`vae_file::load_vae_file`] reads), in the dtype the model's own VAE was loaded in. It
    /// must be this model's VAE architecture, tensor for tensor (SDXL's fp16-fix VAE for SDXL,
    /// `vae-ft-mse` for SD 1.x, …); the latent scale stays the family's, as in sd-scripts.
    pub fn replace_vae(&mut self, vae_path: &Path, device: &Device) -> Result<()> {
        let dtype = self.vae.tensor("encoder.conv_in.weight").map_or(DType::F32, Tensor::dtype);
        let file = vae_file::load_vae_file(vae_path, dtype, device)?;
        let mismatch = |message: String| Error::Checkpoint { path: vae_path.to_path_buf(), message };
        let latent_channels = |shape: &[usize]| shape.first().map_or(0, |c| c / 2);
        if let (Some(own), Some(given)) =
            (self.vae.tensor("encoder.conv_out.weight"), file.tensors.get("encoder.conv_out.weight"))
        {
            let (own, given) = (latent_channels(own.dims()), latent_channels(given.dims()));
            if own != given {
                return Err(mismatch(format!(
                    "this VAE makes {given} latent channels; {}'s makes {own} — it is a VAE for another model family (SD3's and Flux's make 16); give a VAE for {}",
                    self.family, self.family
                )));
            }
        }
        let mut own_names: Vec<&str> = self.vae.names().collect();
        own_names.sort_unstable();
        let missing: Vec<&str> = own_names.iter().copied().filter(|n| !file.tensors.contains_key(*n)).collect();
        if let Some(first) = missing.first() {
            return Err(mismatch(format!(
                "`{first}` (and {} more of the model's VAE tensors) missing: not a VAE of {}'s architecture — give a VAE made for it",
                missing.len() - 1,
                self.family
            )));
        }
        for name in own_names {
            let (own, given) = (self.vae.tensor(name).map(Tensor::dims), file.tensors[name].dims());
            if own != Some(given) {
                return Err(mismatch(format!(
                    "`{name}` is {given:?} here but {:?} in {}'s VAE: not a VAE of this architecture",
                    own.unwrap_or_default(),
                    self.family
                )));
            }
        }
        let extra = file.tensors.len() - self.vae.len();
        if extra > 0 {
            tracing::warn!("{}: {extra} tensor(s) the model's VAE does not have, ignored", vae_path.display());
        }
        let tensors = file.tensors.into_iter().filter(|(n, _)| self.vae.contains(n)).collect();
        self.vae = Weights::new(tensors, file.path.display().to_string());
        Ok(())
    }
}

/// Loads an SD 1.x/2.x or SDXL base model: a file is read as a single-file LDM/SGM
/// `.safetensors` checkpoint, a directory as a diffusers folder. Tensors stored as F32/F16/BF16 are converted
/// to `dtype` (a float type). Errors are one line naming the file and what to do.
pub fn load_sd_checkpoint(path: &Path, dtype: DType, device: &Device) -> Result<SdCheckpoint> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
        return Err(Error::Invalid(format!("checkpoints load as f32, f16 or bf16, not {}", dtype.as_str())));
    }
    let meta = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    if meta.is_dir() {
        load_diffusers_folder(path, dtype, device)
    } else {
        load_single_file(path, dtype, device)
    }
}

/// Reads every tensor of a `.safetensors` file, converted to `dtype` on `device`.
pub fn read_safetensors(path: &Path, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>, Error> {
    read_safetensors_as(path, dtype, LinearStorage::Compute, device)
}

/// How a model's frozen weights are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearStorage {
    /// Every tensor in the compute dtype.
    Compute,
    /// Linear weights (2-D `*.weight`, not embedding tables) in f8 e4m3, cast per layer when it
    /// runs (sd-scripts' `--fp8_base`); files already in e4m3 are kept as they are.
    Fp8,
}

impl LinearStorage {
    /// sd-scripts' storage rule for a DiT and its T5 (Flux's and SD3's scripts alike):
    /// `fp8_base` puts the transformer in fp8, and T5 too unless `fp8_base_unet` (which alone
    /// also puts the transformer in fp8). Returns (transformer, T5).
    pub fn for_fp8_base(fp8_base: bool, fp8_base_unet: bool) -> (LinearStorage, LinearStorage) {
        let fp8 = |on: bool| if on { LinearStorage::Fp8 } else { LinearStorage::Compute };
        (fp8(fp8_base || fp8_base_unet), fp8(fp8_base && !fp8_base_unet))
    }
}

/// [`read_safetensors`] with linear weights in f8 e4m3 under [`LinearStorage::Fp8`] (kept as
/// stored when the file already is e4m3), everything else in `dtype`.
pub(crate) fn read_safetensors_as(
    path: &Path,
    dtype: DType,
    storage: LinearStorage,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    refuse_pickle_extension(path)?;
    let file = open_safetensors(path)?;
    file.tensor_names()
        .map(|name| {
            // Linear weights are the 2-D `.weight`s (norm scales and biases are 1-D). An fp8 file
            // loaded without fp8 storage is upcast to the compute dtype, as sd-scripts does.
            // Embedding tables and T5's relative-position table are indexed, not multiplied: they
            // keep the compute dtype.
            let is_linear_weight = name.ends_with(".weight")
                && file.info(name).is_some_and(|i| i.shape.len() == 2)
                && !name.contains("embed_tokens")
                && !name.contains("shared.")
                && !name.contains("relative_attention_bias");
            let target = if storage == LinearStorage::Fp8 && is_linear_weight { DType::F8E4M3 } else { dtype };
            Ok((name.to_string(), load_tensor(&file, name, target, device)?))
        })
        .collect()
}

/// Every tensor of one component: a diffusers component folder (`<stem>.safetensors`, its fp16
/// variant or shards) or a single file, read as [`read_safetensors_as`].
pub(crate) fn read_component(
    path: &Path,
    stem: &str,
    dtype: DType,
    storage: LinearStorage,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    if !path.is_dir() {
        return read_safetensors_as(path, dtype, storage, device);
    }
    let mut tensors = HashMap::new();
    for file in component_files(path, stem, dtype)? {
        tensors.extend(read_safetensors_as(&file, dtype, storage, device)?);
    }
    Ok(tensors)
}

/// The tensor names of a `.safetensors` file (header only).
pub(crate) fn tensor_names(path: &Path) -> Result<Vec<String>> {
    Ok(open_safetensors(path)?.tensor_names().map(str::to_string).collect())
}

/// The tensors of a single file that `rename` keeps, under the names it gives — only those are
/// read. Stored as `read_safetensors_as` does: linear weights in f8 e4m3 under
/// [`LinearStorage::Fp8`], everything else (and the indexed embedding tables) in `dtype`.
pub(crate) fn read_where(
    path: &Path,
    rename: impl Fn(&str) -> Option<String>,
    dtype: DType,
    storage: LinearStorage,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let file = open_safetensors(path)?;
    let mut out = HashMap::new();
    for name in file.tensor_names() {
        let Some(renamed) = rename(name) else { continue };
        let is_linear_weight = name.ends_with(".weight")
            && file.info(name).is_some_and(|i| i.shape.len() == 2)
            && !name.contains("embed_tokens")
            && !name.contains("shared.")
            && !name.contains("relative_attention_bias")
            && !name.contains("embedding.");
        let target = if storage == LinearStorage::Fp8 && is_linear_weight { DType::F8E4M3 } else { dtype };
        out.insert(renamed, load_tensor(&file, name, target, device)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Family detection

/// The family and the key prefix that gave it away (for messages).
fn detect_from_keys<'a>(keys: impl Iterator<Item = &'a str>) -> (ModelFamily, Option<&'static str>) {
    let mut seen: [Option<&'static str>; 5] = [None; 5];
    let mut mark = |family: ModelFamily, evidence: &'static str| {
        let slot = match family {
            ModelFamily::Flux => 0,
            ModelFamily::Sd3 => 1,
            ModelFamily::Sdxl => 2,
            ModelFamily::Sd2 => 3,
            _ => 4,
        };
        seen[slot].get_or_insert(evidence);
    };
    for key in keys {
        let bare = key.strip_prefix(ldm_keys::UNET_PREFIX).unwrap_or(key);
        if bare.starts_with("double_blocks.") || bare.starts_with("single_blocks.") {
            mark(ModelFamily::Flux, "double_blocks.*");
        } else if bare.starts_with("single_transformer_blocks.") {
            mark(ModelFamily::Flux, "single_transformer_blocks.*");
        } else if bare.starts_with("joint_blocks.") {
            mark(ModelFamily::Sd3, "joint_blocks.*");
        } else if bare.starts_with("pos_embed.proj.") || bare.starts_with("context_embedder.") {
            // Diffusers MMDiT (SD3); Flux also has a context embedder but is caught above.
            mark(ModelFamily::Sd3, "context_embedder.* / pos_embed.*");
        } else if key.starts_with("conditioner.embedders.") {
            mark(ModelFamily::Sdxl, "conditioner.embedders.*");
        } else if bare.starts_with("label_emb.") || key.starts_with("add_embedding.") {
            mark(ModelFamily::Sdxl, "label_emb.* (size/crop conditioning)");
        } else if key.starts_with(ldm_keys::OPEN_CLIP_PREFIX) {
            mark(ModelFamily::Sd2, "cond_stage_model.model.* (OpenCLIP)");
        } else if key.starts_with(ldm_keys::CLIP_PREFIX) {
            mark(ModelFamily::Sd1, "cond_stage_model.transformer.* (CLIP-L)");
        }
    }
    let families = [ModelFamily::Flux, ModelFamily::Sd3, ModelFamily::Sdxl, ModelFamily::Sd2, ModelFamily::Sd1];
    families
        .into_iter()
        .zip(seen)
        .find_map(|(family, evidence)| evidence.map(|e| (family, Some(e))))
        .unwrap_or((ModelFamily::Unknown, None))
}

fn unsupported(path: &Path, family: ModelFamily, evidence: &str) -> Error {
    Error::UnsupportedFamily {
        path: path.to_path_buf(),
        message: format!(
            "this is {} {family} model (it has {evidence}); this version of lorakit loads SD 1.x, SD 2.x and SDXL models only — pick an SD 1.5, SD 2.x or SDXL base model",
            if family == ModelFamily::Flux { "a" } else { "an" }
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Single files

/// Extensions of PyTorch pickle files.
const PICKLE_EXTENSIONS: [&str; 6] = ["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

fn pickle_advice(what: &str) -> String {
    format!(
        "{what}; lorakit does not load pickles because unpickling can run arbitrary code — convert it to .safetensors with a tool you trust, e.g. sd-scripts' `python tools/convert_diffusers20_original_sd.py --v1 model.ckpt model.safetensors` (--v2 for SD 2.x), and pass the .safetensors file"
    )
}

pub(crate) fn refuse_pickle_extension(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            message: pickle_advice(&format!("a .{ext} file is a PyTorch pickle")),
        });
    }
    Ok(())
}

/// Opens and validates a safetensors file, turning format errors into one-line advice.
pub(crate) fn open_safetensors(path: &Path) -> Result<LoraFile> {
    LoraFile::open(path).map_err(|e| match e {
        LoraFileError::Io { path, source, .. } => Error::Io { path, source },
        LoraFileError::Invalid { path, problem } => {
            let message = match sniff(&path) {
                Some(kind) => kind,
                None => {
                    let mut message = problem.to_string();
                    if path.extension().and_then(|e| e.to_str()).is_none_or(|e| !e.eq_ignore_ascii_case("safetensors"))
                    {
                        message.push_str(" (lorakit loads .safetensors checkpoints and diffusers folders)");
                    }
                    message
                }
            };
            Error::Checkpoint { path, message }
        }
        other => file_error(other),
    })
}

/// What the first bytes of an unreadable file say it is, when that explains the failure (regular
/// files only: opening a FIFO to read would block).
fn sniff(path: &Path) -> Option<String> {
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).ok()?;
    file.read_exact(&mut head).ok()?;
    match head {
        [b'P', b'K', 3, 4] => Some(pickle_advice("this is a PyTorch (zip) pickle checkpoint, not safetensors")),
        [0x80, 2..=5, ..] => Some(pickle_advice("this is a PyTorch pickle checkpoint, not safetensors")),
        [b'G', b'G', b'U', b'F'] => Some(
            "this is a GGUF (quantized) model; lorakit trains on full-precision .safetensors checkpoints — use the original F16/F32 model"
                .to_string(),
        ),
        _ => None,
    }
}

/// A `LoraFileError` as this crate's error, without repeating the path in the message.
fn file_error(e: LoraFileError) -> Error {
    let path = e.path().to_path_buf();
    match e {
        LoraFileError::Io { path, source, .. } => return Error::Io { path, source },
        LoraFileError::IsDirectory { path } => {
            let message = "is a directory, not a .safetensors file".to_string();
            return Error::Checkpoint { path, message };
        }
        _ => {}
    }
    let text = e.to_string();
    let prefix = format!("{}: ", path.display());
    let message = text.strip_prefix(&prefix).unwrap_or(&text).to_string();
    Error::Checkpoint { path, message }
}

/// The candle dtype of a stored dtype, where candle has one.
fn candle_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::F8E4M3 => DType::F8E4M3,
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        _ => return None,
    })
}

/// One tensor from the mapped file, converted to `dtype` on `device`.
pub(crate) fn load_tensor(file: &LoraFile, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
    let info = file.info(name).ok_or_else(|| Error::Checkpoint {
        path: file.path().to_path_buf(),
        message: format!("tensor `{name}` vanished from the header"),
    })?;
    let stored = candle_dtype(info.dtype).ok_or_else(|| Error::Checkpoint {
        path: file.path().to_path_buf(),
        message: format!(
            "tensor `{name}` is stored as {}, which lorakit cannot read; re-save the checkpoint in F32, F16 or BF16",
            info.dtype.as_str()
        ),
    })?;
    let bytes = file.tensor_bytes(name).map_err(file_error)?;
    let tensor = Tensor::from_raw_buffer(bytes, stored, &info.shape, device)?;
    Ok(if stored == dtype { tensor } else { tensor.to_dtype(dtype)? })
}

/// Refuses LoRA/LyCORIS files passed where a base model belongs.
fn refuse_lora<'a>(path: &Path, names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let scheme = detect_scheme(names);
    if matches!(scheme, Scheme::Kohya | Scheme::Peft | Scheme::LoHa | Scheme::LoKr | Scheme::Dora) {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "this is a {scheme} file, not a base model; pass an SD 1.x/2.x or SDXL checkpoint (e.g. v1-5-pruned-emaonly.safetensors) as the model and give the LoRA where LoRA weights are expected"
            ),
        });
    }
    Ok(())
}

/// Tensors per component while a checkpoint is assembled, plus what was left out.
#[derive(Default)]
struct Assembly {
    parts: BTreeMap<Component, HashMap<String, Tensor>>,
    /// Diffusers key → the stored key it came from (to report collisions).
    origin: HashMap<(Component, String), String>,
    ignored: BTreeMap<&'static str, Vec<String>>,
    unmapped: BTreeMap<Component, Vec<String>>,
}

impl Assembly {
    /// Loads `name` from `file` and files it under each of its targets.
    fn add(&mut self, file: &LoraFile, name: &str, targets: &[Target], dtype: DType, device: &Device) -> Result<()> {
        let tensor = load_tensor(file, name, dtype, device)?;
        for target in targets {
            let key = (target.component, target.name.clone());
            if let Some(first) = self.origin.insert(key, name.to_string()) {
                return Err(Error::Checkpoint {
                    path: file.path().to_path_buf(),
                    message: format!(
                        "tensors `{first}` and `{name}` both map to {} tensor `{}`; the checkpoint holds two copies of one weight — re-save it",
                        target.component, target.name
                    ),
                });
            }
            let value = target.transform.apply(&tensor)?;
            self.parts.entry(target.component).or_default().insert(target.name.clone(), value);
        }
        Ok(())
    }

    fn ignore(&mut self, reason: &'static str, name: &str) {
        self.ignored.entry(reason).or_default().push(name.to_string());
    }

    /// Logs what was left out: stray keys at debug, unmapped component keys at warn.
    fn log(&self, path: &Path) {
        for (reason, names) in &self.ignored {
            tracing::debug!(
                path = %path.display(),
                "ignored {} tensor(s), {reason}: {}",
                names.len(),
                sample(names)
            );
        }
        for (component, names) in &self.unmapped {
            tracing::warn!(
                path = %path.display(),
                "{} {component} tensor(s) match no known SD 1.x/2.x/SDXL layout and were skipped: {}",
                names.len(),
                sample(names)
            );
        }
    }

    /// The stores; `source` names a component's origin in later errors. Text encoder 2 only
    /// when it has tensors.
    fn finish(mut self, source: impl Fn(Component) -> String) -> Stores {
        let te2 = self.parts.remove(&Component::TextEncoder2).map(|t| Weights::new(t, source(Component::TextEncoder2)));
        let mut take = |c: Component| Weights::new(self.parts.remove(&c).unwrap_or_default(), source(c));
        Stores {
            unet: take(Component::Unet),
            vae: take(Component::Vae),
            text_encoder: take(Component::TextEncoder),
            text_encoder_2: te2,
        }
    }

    /// Whether any tensor of `component` has been filed.
    fn has(&self, component: Component) -> bool {
        self.parts.get(&component).is_some_and(|p| !p.is_empty())
    }
}

/// The assembled weight stores.
struct Stores {
    unet: Weights,
    vae: Weights,
    text_encoder: Weights,
    text_encoder_2: Option<Weights>,
}

/// The first few names of a list, for messages.
fn sample(names: &[String]) -> String {
    let mut out = names.iter().take(4).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > 4 {
        out.push_str(", …");
    }
    out
}

fn load_single_file(path: &Path, dtype: DType, device: &Device) -> Result<SdCheckpoint> {
    refuse_pickle_extension(path)?;
    let file = open_safetensors(path)?;
    let checkpoint_error = |message: String| Error::Checkpoint { path: path.to_path_buf(), message };
    if file.is_empty() {
        return Err(checkpoint_error(
            "the file holds no tensors; it is not a model checkpoint — pass an SD 1.x/2.x or SDXL .safetensors checkpoint"
                .into(),
        ));
    }
    refuse_lora(path, file.tensor_names())?;
    let (family, evidence) = detect_from_keys(file.tensor_names());
    if !family.is_supported() {
        if let (false, Some(evidence)) = (family == ModelFamily::Unknown, evidence) {
            return Err(unsupported(path, family, evidence));
        }
        let ldm_prefixes =
            [ldm_keys::UNET_PREFIX, ldm_keys::VAE_PREFIX, ldm_keys::CLIP_PREFIX, ldm_keys::OPEN_CLIP_PREFIX];
        if !file.tensor_names().any(|n| ldm_prefixes.iter().any(|p| n.starts_with(p))) {
            return Err(checkpoint_error(describe_foreign_file(&file)));
        }
    }
    let flags = sdxl::ModelFlags::from_names(file.tensor_names());
    if family == ModelFamily::Sdxl {
        sdxl::refuse_unsupported_variant(&file)?;
    }

    let map = LdmKeyMap::new(file.tensor_names());
    let mut plan: Vec<(&str, Vec<Target>)> = Vec::with_capacity(file.len());
    let mut assembly = Assembly::default();
    for name in file.tensor_names() {
        match map.map(name) {
            KeyFate::Renamed(targets) => plan.push((name, targets)),
            KeyFate::Ignored(reason) => assembly.ignore(reason, name),
            KeyFate::Unmapped(component) => assembly.unmapped.entry(component).or_default().push(name.to_string()),
        }
    }
    let sdxl = family == ModelFamily::Sdxl;
    let required: &[(Component, &str)] = if sdxl {
        &[
            (Component::Unet, "no U-Net (`model.diffusion_model.*`)"),
            (Component::Vae, "no VAE (`first_stage_model.*`)"),
            (Component::TextEncoder, "no text encoder 1 (`conditioner.embedders.0.transformer.*`)"),
            (Component::TextEncoder2, "no text encoder 2 (`conditioner.embedders.1.model.*`)"),
        ]
    } else {
        &[
            (Component::Unet, "no U-Net (`model.diffusion_model.*`)"),
            (Component::Vae, "no VAE (`first_stage_model.*`)"),
            (Component::TextEncoder, "no text encoder (`cond_stage_model.*`)"),
        ]
    };
    let missing: Vec<&str> = required
        .iter()
        .filter(|(c, _)| !plan.iter().any(|(_, targets)| targets.iter().any(|t| t.component == *c)))
        .map(|(_, what)| *what)
        .collect();
    if !missing.is_empty() {
        let (what, parts) = if sdxl {
            ("an SDXL", "U-Net, VAE and both text encoders")
        } else {
            ("a full SD 1.x/2.x", "U-Net, VAE and text encoder")
        };
        return Err(checkpoint_error(format!(
            "the checkpoint has {}; lorakit needs {what} checkpoint with {parts} (or a diffusers folder)",
            missing.join(" and ")
        )));
    }

    for (name, targets) in &plan {
        assembly.add(&file, name, targets, dtype, device)?;
    }
    assembly.log(path);
    let modelspec = match file.metadata().get("modelspec.prediction_type") {
        Some(value) => Some((
            parse_prediction(value).map_err(checkpoint_error)?,
            format!("modelspec.prediction_type = {value:?} in the file's metadata"),
        )),
        None => None,
    };
    let declared_prediction = match (flags.v_pred, modelspec) {
        (true, modelspec) => {
            if let Some((Prediction::Epsilon, source)) = &modelspec {
                tracing::warn!(path = %path.display(), "the file has a `v_pred` flag but {source}; taking v-prediction");
            }
            Some((
                Prediction::VPrediction,
                "a `v_pred` key in the file (the v-prediction flag ComfyUI reads)".to_string(),
            ))
        }
        (false, modelspec) => modelspec,
    };
    let zero_terminal_snr =
        flags.ztsnr.then(|| "a `ztsnr` key in the file (the zero-terminal-SNR flag ComfyUI reads)".to_string());
    let stores = assembly.finish(|c| format!("{} ({c})", path.display()));
    let configs = if sdxl {
        Some(sdxl::infer_configs(&stores.unet, &stores.vae, &stores.text_encoder, stores.text_encoder_2.as_ref()))
    } else {
        None
    };
    let (unet_config, vae_config, text_encoder_config, text_encoder_2_config) = match configs {
        Some(c) => (Some(c.unet), Some(c.vae), Some(c.text_encoder), Some(c.text_encoder_2)),
        None => (None, None, None, None),
    };
    Ok(SdCheckpoint {
        path: path.to_path_buf(),
        family,
        unet: stores.unet,
        vae: stores.vae,
        text_encoder: stores.text_encoder,
        text_encoder_2: stores.text_encoder_2,
        unet_config,
        vae_config,
        text_encoder_config,
        text_encoder_2_config,
        declared_prediction,
        declared_zero_terminal_snr: zero_terminal_snr.is_some(),
        zero_terminal_snr_source: zero_terminal_snr,
    })
}

/// Explains a safetensors file that holds no SD single-file layout.
fn describe_foreign_file(file: &LoraFile) -> String {
    let has = |prefixes: &[&str]| file.tensor_names().any(|n| prefixes.iter().any(|p| n.starts_with(p)));
    if has(&["down_blocks.", "mid_block.", "conv_in."]) {
        return "this holds a diffusers U-Net alone (`down_blocks.*` keys), not a full checkpoint; pass the diffusers model folder (with unet/, vae/, text_encoder/) or a single-file SD 1.x/2.x/SDXL checkpoint".into();
    }
    if has(&["encoder.down", "decoder.up", "decoder.mid", "quant_conv."]) {
        return "this holds a VAE alone, not a full checkpoint; pass a single-file SD 1.x/2.x/SDXL checkpoint or a diffusers folder".into();
    }
    if has(&["text_model.", "transformer.resblocks."]) {
        return "this holds a text encoder alone, not a full checkpoint; pass a single-file SD 1.x/2.x/SDXL checkpoint or a diffusers folder".into();
    }
    let names: Vec<String> = file.tensor_names().take(3).map(str::to_string).collect();
    format!(
        "no Stable Diffusion weights found ({} tensor(s), e.g. {}); expected a single-file SD 1.x/2.x/SDXL checkpoint (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*` or `conditioner.embedders.*`) or a diffusers folder",
        file.len(),
        sample(&names)
    )
}

// ---------------------------------------------------------------------------------------------
// Diffusers folders

/// The three SD components of a diffusers folder: (component, subfolder, weights file stem).
const DIFFUSERS_PARTS: [(Component, &str, &str); 3] = [
    (Component::Unet, "unet", "diffusion_pytorch_model"),
    (Component::Vae, "vae", "diffusion_pytorch_model"),
    (Component::TextEncoder, "text_encoder", "model"),
];

/// SDXL's second text encoder in a diffusers folder. (The tokenizers' folders are not read:
/// like sd-scripts, lorakit uses the CLIP-L and bigG tokenizers whatever a folder holds.)
const DIFFUSERS_TE2: (Component, &str, &str) = (Component::TextEncoder2, "text_encoder_2", "model");

/// What a diffusers folder's JSON files say, read once.
struct DiffusersFolder {
    dir: PathBuf,
    model_index: Option<Value>,
    configs: BTreeMap<Component, Value>,
    transformer_config: Option<Value>,
    scheduler_config: Option<Value>,
    has_text_encoder_2: bool,
}

impl DiffusersFolder {
    fn read(dir: &Path) -> Result<Self> {
        let mut configs = BTreeMap::new();
        for (component, sub, _) in DIFFUSERS_PARTS.into_iter().chain([DIFFUSERS_TE2]) {
            if let Some(config) = read_json(&dir.join(sub).join("config.json"))? {
                configs.insert(component, config);
            }
        }
        Ok(DiffusersFolder {
            dir: dir.to_path_buf(),
            model_index: read_json(&dir.join("model_index.json"))?,
            configs,
            transformer_config: read_json(&dir.join("transformer").join("config.json"))?,
            scheduler_config: read_json(&dir.join("scheduler").join("scheduler_config.json"))?,
            has_text_encoder_2: dir.join("text_encoder_2").is_dir(),
        })
    }

    fn config_str(&self, component: Component, key: &str) -> Option<&str> {
        self.configs.get(&component)?.get(key)?.as_str()
    }

    fn config_u64(&self, component: Component, key: &str) -> Option<u64> {
        self.configs.get(&component)?.get(key)?.as_u64()
    }

    /// The family and, for families other than SD 1.x/2.x, what gave it away.
    fn family(&self) -> (ModelFamily, &'static str) {
        let class = self.model_index.as_ref().and_then(|m| m.get("_class_name")).and_then(Value::as_str).unwrap_or("");
        if class.contains("Flux") {
            return (ModelFamily::Flux, "a Flux pipeline in model_index.json");
        }
        if class.contains("StableDiffusion3") {
            return (ModelFamily::Sd3, "an SD3 pipeline in model_index.json");
        }
        if class.contains("XL") {
            return (ModelFamily::Sdxl, "an SDXL pipeline in model_index.json");
        }
        if let Some(config) = &self.transformer_config {
            let class = config.get("_class_name").and_then(Value::as_str).unwrap_or("");
            if class.contains("Flux") {
                return (ModelFamily::Flux, "a Flux transformer/ folder");
            }
            if class.contains("SD3") {
                return (ModelFamily::Sd3, "an SD3 transformer/ folder");
            }
        }
        if self.has_text_encoder_2 || self.config_str(Component::Unet, "addition_embed_type") == Some("text_time") {
            return (ModelFamily::Sdxl, "a second text encoder (text_encoder_2/)");
        }
        // OpenAI CLIP (SD 1.x) uses quick_gelu, OpenCLIP (SD 2.x) gelu: true at any size.
        match self.config_str(Component::TextEncoder, "hidden_act") {
            Some("quick_gelu") => return (ModelFamily::Sd1, ""),
            Some("gelu") => return (ModelFamily::Sd2, ""),
            _ => {}
        }
        match self.config_u64(Component::Unet, "cross_attention_dim") {
            Some(768) => (ModelFamily::Sd1, ""),
            Some(1024) => (ModelFamily::Sd2, ""),
            Some(2048) => (ModelFamily::Sdxl, "2048-wide cross-attention in unet/config.json"),
            _ => (ModelFamily::Unknown, ""),
        }
    }

    /// Explains a directory without the SD subfolders.
    fn not_a_model_folder(&self) -> Error {
        let dir = &self.dir;
        let component_file = ["diffusion_pytorch_model.safetensors", "model.safetensors", "config.json"]
            .iter()
            .any(|f| dir.join(f).is_file());
        let message = if component_file {
            "this is a single diffusers component folder; pass the model folder above it (the one with model_index.json, unet/, vae/ and text_encoder/)".to_string()
        } else {
            "not a diffusers model folder (no unet/, vae/ or text_encoder/ subfolders); pass a single-file .safetensors checkpoint or a diffusers folder".to_string()
        };
        Error::Checkpoint { path: dir.clone(), message }
    }
}

/// A JSON file, or `None` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path: path.to_path_buf(), source }),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not valid JSON ({e}); the download is damaged — fetch the file again"),
    })
}

fn load_diffusers_folder(dir: &Path, dtype: DType, device: &Device) -> Result<SdCheckpoint> {
    let folder = DiffusersFolder::read(dir)?;
    let (mut family, evidence) = folder.family();
    if matches!(family, ModelFamily::Sd3 | ModelFamily::Flux) {
        return Err(unsupported(dir, family, evidence));
    }
    let sdxl = family == ModelFamily::Sdxl;
    let parts: Vec<(Component, &str, &str)> =
        if sdxl { DIFFUSERS_PARTS.into_iter().chain([DIFFUSERS_TE2]).collect() } else { DIFFUSERS_PARTS.to_vec() };
    let missing: Vec<&str> = parts.iter().filter(|(_, sub, _)| !dir.join(sub).is_dir()).map(|p| p.1).collect();
    if missing.len() >= DIFFUSERS_PARTS.len() && !sdxl {
        return Err(folder.not_a_model_folder());
    }
    if sdxl && missing == ["text_encoder"] {
        return Err(Error::UnsupportedFamily {
            path: dir.to_path_buf(),
            message: "this is an SDXL refiner (text_encoder_2/ without text_encoder/); lorakit trains the SDXL base model — pick an SDXL base checkpoint".into(),
        });
    }
    if !missing.is_empty() {
        let list = missing.iter().map(|m| format!("{m}/")).collect::<Vec<_>>().join(", ");
        let needs = if sdxl {
            format!("an SDXL model folder ({evidence}) needs unet/, vae/, text_encoder/ and text_encoder_2/")
        } else {
            "an SD model folder needs unet/, vae/ and text_encoder/".to_string()
        };
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "the diffusers folder lacks {list}; {needs} — the download is incomplete, fetch the missing subfolder(s)"
            ),
        });
    }
    // Each part's config.json gives its layer sizes: without it the model would be built with
    // SD 1.5's and fail with a misleading shape error far from the cause.
    if let Some((_, sub, _)) = parts.iter().find(|(component, _, _)| !folder.configs.contains_key(component)) {
        return Err(Error::Checkpoint {
            path: dir.join(sub).join("config.json"),
            message: format!(
                "missing: every part of a diffusers folder needs its config.json (it holds the {sub} layer sizes); \
                 the download is incomplete — fetch {sub}/config.json from the model's repository"
            ),
        });
    }

    let mut assembly = Assembly::default();
    let mut sources: BTreeMap<Component, String> = BTreeMap::new();
    for &(component, sub, stem) in &parts {
        let files = component_files(&dir.join(sub), stem, dtype)?;
        sources.insert(component, files.first().map(|f| f.display().to_string()).unwrap_or_default());
        let before = assembly.parts.get(&component).map_or(0, HashMap::len);
        for path in &files {
            let file = open_safetensors(path)?;
            for name in file.tensor_names() {
                match ldm_keys::diffusers_fate(component, name) {
                    KeyFate::Renamed(targets) => assembly.add(&file, name, &targets, dtype, device)?,
                    KeyFate::Ignored(reason) => assembly.ignore(reason, name),
                    KeyFate::Unmapped(c) => assembly.unmapped.entry(c).or_default().push(name.to_string()),
                }
            }
            assembly.log(path);
            assembly.ignored.clear();
            assembly.unmapped.clear();
        }
        if assembly.parts.get(&component).map_or(0, HashMap::len) == before {
            return Err(Error::Checkpoint {
                path: files.first().cloned().unwrap_or_else(|| dir.join(sub)),
                message: format!("the {component} weights file holds no tensors; fetch {sub}/ again"),
            });
        }
    }
    if sdxl && !assembly.has(Component::TextEncoder2) {
        return Err(Error::Checkpoint {
            path: dir.join("text_encoder_2"),
            message: "SDXL's second text encoder holds no tensors; fetch text_encoder_2/ again".into(),
        });
    }
    if family == ModelFamily::Unknown {
        // No usable config: the text encoder's width tells CLIP-L from OpenCLIP-H.
        let width = assembly
            .parts
            .get(&Component::TextEncoder)
            .and_then(|te| te.get("text_model.embeddings.token_embedding.weight"))
            .and_then(|t| t.dims().get(1).copied());
        family = match width {
            Some(768) => ModelFamily::Sd1,
            Some(1024) => ModelFamily::Sd2,
            _ => ModelFamily::Unknown,
        };
    }
    let stores = assembly.finish(|c| sources.get(&c).cloned().unwrap_or_default());
    let scheduler_config = dir.join("scheduler").join("scheduler_config.json");
    let scheduler = folder.scheduler_config.as_ref();
    let declared_prediction = match scheduler.and_then(|c| c.get("prediction_type")) {
        Some(Value::String(value)) => Some((
            parse_prediction(value).map_err(|message| Error::Checkpoint { path: scheduler_config.clone(), message })?,
            format!("prediction_type = {value:?} in {}", scheduler_config.display()),
        )),
        _ => None,
    };
    let zero_terminal_snr = match scheduler.and_then(|c| c.get("rescale_betas_zero_snr")) {
        Some(Value::Bool(true)) => Some(format!("rescale_betas_zero_snr = true in {}", scheduler_config.display())),
        _ => None,
    };
    let mut configs = folder.configs;
    Ok(SdCheckpoint {
        path: dir.to_path_buf(),
        family,
        unet: stores.unet,
        vae: stores.vae,
        text_encoder: stores.text_encoder,
        text_encoder_2: stores.text_encoder_2,
        unet_config: configs.remove(&Component::Unet),
        vae_config: configs.remove(&Component::Vae),
        text_encoder_config: configs.remove(&Component::TextEncoder),
        text_encoder_2_config: if sdxl { configs.remove(&Component::TextEncoder2) } else { None },
        declared_prediction,
        declared_zero_terminal_snr: zero_terminal_snr.is_some(),
        zero_terminal_snr_source: zero_terminal_snr,
    })
}

/// A prediction type as diffusers' scheduler configs (`epsilon`, `v_prediction`) or modelspec
/// metadata (`epsilon`, `v`) spell it.
fn parse_prediction(value: &str) -> std::result::Result<Prediction, String> {
    match value {
        "epsilon" | "eps" => Ok(Prediction::Epsilon),
        "v_prediction" | "v" => Ok(Prediction::VPrediction),
        other => Err(format!(
            "prediction type {other:?} is not supported (lorakit trains and samples epsilon- and v-prediction models)"
        )),
    }
}

/// The safetensors file(s) of one component folder: `<stem>.safetensors`, the `.fp16` variant
/// (preferred when loading as f16, else only the fallback), or the shards of an index.
pub(crate) fn component_files(dir: &Path, stem: &str, dtype: DType) -> Result<Vec<PathBuf>> {
    let variants: [&str; 2] = if dtype == DType::F16 { [".fp16", ""] } else { ["", ".fp16"] };
    for variant in variants {
        let single = dir.join(format!("{stem}{variant}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{stem}{variant}.safetensors.index.json"));
        if index.is_file() {
            return shard_files(&index);
        }
    }
    // transformers names the text encoder's pickle `pytorch_model.bin`.
    for pickle in [format!("{stem}.bin"), format!("{stem}.fp16.bin"), "pytorch_model.bin".to_string()] {
        let pickle = dir.join(pickle);
        if pickle.is_file() {
            return Err(Error::Checkpoint {
                path: pickle,
                message: "this diffusers folder stores weights as PyTorch pickles (.bin); lorakit does not load pickles because unpickling can run arbitrary code — re-save the folder with safetensors (diffusers: `pipe.save_pretrained(dir, safe_serialization=True)`) or download its .safetensors files".to_string(),
            });
        }
    }
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        message: format!(
            "no weights file: expected {stem}.safetensors (or {stem}.fp16.safetensors); the download is incomplete — fetch it again"
        ),
    })
}

/// The shard files listed by a `*.safetensors.index.json`, in name order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let bad = |message: String| Error::Checkpoint { path: index.to_path_buf(), message };
    let json = read_json(index)?.unwrap_or(Value::Null);
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("has no `weight_map` object; fetch the index file again".into()))?;
    let mut names: Vec<&str> = Vec::new();
    for value in map.values() {
        let name = value.as_str().ok_or_else(|| bad("`weight_map` holds a non-string file name".into()))?;
        if Path::new(name).file_name().and_then(|f| f.to_str()) != Some(name) {
            return Err(bad(format!("`weight_map` names `{name}`, which is not a file in the same folder")));
        }
        names.push(name);
    }
    names.sort_unstable();
    names.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    if let Some(absent) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::Checkpoint {
            path: absent.clone(),
            message: format!("shard listed in {} is missing; fetch it again", index.display()),
        });
    }
    if files.is_empty() {
        return Err(bad("`weight_map` lists no files; fetch the index file again".into()));
    }
    Ok(files)
}
