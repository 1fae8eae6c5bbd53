//! LoRA networks on our models: creating a trainable network the way sd-scripts'
//! `networks/lora.py` does, and loading existing kohya files onto a model (applied on the fly
//! or merged into the base weights).
//!
//! Models list their targets ([`LoraTarget`]: diffusers module path, kind, dims, which
//! sd-scripts search finds them); kohya's names are `prefix_` + path with `.` → `_`, so the
//! names a run saves and the names a file is matched by are the same function of the model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_lora::blocks::BlockLayout;
use lorakit_lora::convert::{convert_lora, ConvertError, Target as ConvertTarget};
use lorakit_lora::keys::{Family, Scheme};
use lorakit_lora::safetensors_file::LoraFile;
use lorakit_nn::lora::{LoraDropout, LoraKind, LoraModule, LoraPart, LoraSet, LoraTarget, TargetGroup};
use lorakit_nn::lycoris::{LycorisAlgo, LycorisModule};
use rand::{rngs::StdRng, SeedableRng};

use crate::{Error, Result, Weights};

/// kohya's prefix for SD1/SD2 U-Net modules.
pub const UNET_PREFIX: &str = "lora_unet";
/// kohya's prefix for the SD1/SD2 text encoder.
pub const TEXT_ENCODER_PREFIX: &str = "lora_te";

/// What a network's modules are: sd-scripts' `networks.lora` (LoRA, LoCon with conv ranks) or
/// LyCORIS' `lycoris.kohya` with an algorithm and a preset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NetworkKind {
    /// `networks.lora`.
    Lora,
    /// `lycoris.kohya` with `algo=loha|lokr` and `preset`.
    Lycoris { algo: LycorisAlgo, preset: LycorisPreset },
}

impl NetworkKind {
    /// The kind a config names: `network_module` with LyCORIS' `algo`, `preset` (unset:
    /// `full`) and LoKr's `factor`, `decompose_both`, `full_matrix`. Unknown names are an error
    /// naming the key.
    pub fn from_config(
        network_module: &str,
        algo: Option<&str>,
        preset: Option<&str>,
        lokr: lorakit_nn::lycoris::LokrOptions,
    ) -> std::result::Result<Self, String> {
        match network_module {
            "networks.lora" => Ok(NetworkKind::Lora),
            "lycoris.kohya" => {
                let algo = match algo {
                    Some("loha") => LycorisAlgo::LoHa,
                    Some("lokr") => LycorisAlgo::LoKr(lokr),
                    Some("locon" | "lora") => LycorisAlgo::LoCon,
                    other => return Err(format!("network.algo = {other:?}: use \"loha\", \"lokr\" or \"locon\"")),
                };
                let preset = match preset {
                    None => LycorisPreset::Full,
                    Some(p) => LycorisPreset::parse(p)
                        .ok_or_else(|| format!("network.preset = {p:?}: use \"full\", \"full-lin\" or \"attn-mlp\""))?,
                };
                Ok(NetworkKind::Lycoris { algo, preset })
            }
            other => Err(format!("network.network_module = {other:?}: use \"networks.lora\" or \"lycoris.kohya\"")),
        }
    }
}

/// The LyCORIS presets lorakit supports (LyCORIS' `config.PRESET`): which model parts get
/// modules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LycorisPreset {
    /// `full` (LyCORIS' default): every Linear/Conv2d in Transformer2DModel, ResnetBlock2D,
    /// Downsample2D, Upsample2D and the text encoder's CLIPAttention/CLIPMLP; k×k convs with
    /// the conv dim.
    Full,
    /// `full-lin`: Transformer2DModel and ResnetBlock2D without k×k convs.
    FullLin,
    /// `attn-mlp`: Transformer2DModel only (and the text encoder).
    AttnMlp,
}

impl LycorisPreset {
    /// The preset named `name` (LyCORIS' spelling).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "full" => Some(LycorisPreset::Full),
            "full-lin" => Some(LycorisPreset::FullLin),
            "attn-mlp" => Some(LycorisPreset::AttnMlp),
            _ => None,
        }
    }

    /// LyCORIS' name of the preset.
    pub fn name(&self) -> &'static str {
        match self {
            LycorisPreset::Full => "full",
            LycorisPreset::FullLin => "full-lin",
            LycorisPreset::AttnMlp => "attn-mlp",
        }
    }

    /// Whether the preset adapts layers found by this search, and k×k convs at all
    /// (LyCORIS' `enable_conv`): `full` every group, `full-lin` all but k×k convs (of the named
    /// layers: the time embedding's linears), `attn-mlp` the transformers.
    fn covers(&self, group: TargetGroup, spatial_conv: bool) -> bool {
        let group_ok = match self {
            LycorisPreset::Full | LycorisPreset::FullLin => true,
            LycorisPreset::AttnMlp => group == TargetGroup::Attention,
        };
        group_ok && (!spatial_conv || *self == LycorisPreset::Full)
    }
}

/// The shape of a network to train (sd-scripts' `network_dim`, `network_alpha`, `conv_dim`,
/// `conv_alpha` and the dropout arguments; LyCORIS' algorithm and preset).
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSpec {
    /// LoRA/LoCon or LyCORIS LoHa/LoKr.
    pub kind: NetworkKind,
    /// Rank of linear and 1×1 modules (`network_dim`).
    pub rank: usize,
    /// Their alpha (`network_alpha`; sd-scripts' default is 1).
    pub alpha: f64,
    /// Rank of k×k conv modules; `None` leaves ResnetBlock2D/Downsample2D/Upsample2D alone
    /// (LoRA), or uses `rank` (LyCORIS, whose `conv_dim` defaults to `network_dim`).
    pub conv_rank: Option<usize>,
    /// Their alpha (`conv_alpha`, default 1).
    pub conv_alpha: f64,
    /// Dropout hooks applied to every module.
    pub dropout: LoraDropout,
    /// Per-block ranks and alphas (sd-scripts' `block_dims` & co.); U-Net networks only.
    pub block_ranks: Option<BlockRanks>,
    /// A diffusion transformer's module choice (`lora_flux.py`'s / `lora_sd3.py`'s type dims,
    /// block indices, input layers, `split_qkv`); that transformer's network only.
    pub dit: Option<DitNetworkArgs>,
    /// The modules, ranks and alphas of a LoRA file, by kohya module name (sd-scripts'
    /// `dim_from_weights`, `create_network_from_weights`): when set, exactly these modules are
    /// made, each with its own rank and alpha, and every other rule above is bypassed.
    pub module_dims: Option<std::sync::Arc<ModuleDims>>,
}

/// (rank, alpha) by kohya module name: a network's shape as a LoRA file gives it.
pub type ModuleDims = HashMap<String, (usize, f64)>;

/// The network arguments of sd-scripts' DiT LoRA modules, one variant per family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DitNetworkArgs {
    /// `networks.lora_flux`.
    Flux(crate::dit::flux_network::FluxNetworkArgs),
    /// `networks.lora_sd3`.
    Sd3(crate::dit::sd3_network::Sd3NetworkArgs),
}

impl DitNetworkArgs {
    /// The output widths of the parts `split_qkv` cuts the linear `name` (kohya name) into.
    fn split_widths(&self, name: &str, in_dim: usize, out_dim: usize) -> Option<Vec<usize>> {
        match self {
            DitNetworkArgs::Flux(f) => f.split_widths(name, in_dim, out_dim),
            DitNetworkArgs::Sd3(s) => s.split_widths(name, in_dim, out_dim),
        }
    }
}

/// sd-scripts' per-block ranks (spec §2.5), indexed by [`BlockLayout`] slot: linear and 1×1
/// modules take `dims`/`alphas`, k×k convs `conv_dims`/`conv_alphas` (none without them); a
/// rank of 0 means no module.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockRanks {
    pub layout: BlockLayout,
    pub dims: Vec<usize>,
    pub alphas: Vec<f64>,
    pub conv_dims: Option<Vec<usize>>,
    pub conv_alphas: Option<Vec<f64>>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            kind: NetworkKind::Lora,
            rank: 4,
            alpha: 1.0,
            conv_rank: None,
            conv_alpha: 1.0,
            dropout: LoraDropout::default(),
            block_ranks: None,
            dit: None,
            module_dims: None,
        }
    }
}

impl NetworkSpec {
    /// The part widths of `target` (kohya name `name`) when `split_qkv` splits it.
    fn split_widths(&self, target: &LoraTarget, name: &str) -> Option<Vec<usize>> {
        let dit = self.dit.as_ref()?;
        if target.kind != LoraKind::Linear {
            return None;
        }
        dit.split_widths(name, target.in_dim, target.out_dim)
    }

    /// The (rank, alpha) sd-scripts gives `target` (kohya module name `name`), or `None` when it
    /// gets no module: attention targets always use `rank`; conv-block targets only when
    /// `conv_rank` is set, linears and 1×1 convs there with `rank`, k×k convs with `conv_rank`.
    /// With block ranks, the target's block slot picks them instead (conv-block targets only when
    /// conv ranks exist, as sd-scripts adds those modules only then).
    ///
    /// LyCORIS networks follow LyCORIS' `create_single_module`: the preset picks the layers,
    /// k×k convs take `conv_rank` (default `rank`; 0: none) and `conv_alpha`, the rest
    /// `rank`/`alpha`.
    pub fn rank_for(&self, target: &LoraTarget, name: &str) -> Option<(usize, f64)> {
        if let Some(dims) = &self.module_dims {
            return dims.get(name).copied();
        }
        if let NetworkKind::Lycoris { preset, .. } = self.kind {
            let spatial = target.is_spatial_conv();
            if !preset.covers(target.group, spatial) {
                return None;
            }
            // LyCORIS: an unset conv_dim is network_dim; conv_dim = 0 switches k×k convs off.
            let pick =
                if spatial { (self.conv_rank.unwrap_or(self.rank), self.conv_alpha) } else { (self.rank, self.alpha) };
            return Some(pick).filter(|(rank, _)| *rank > 0);
        }
        match &self.dit {
            // Linear targets only (Flux has no convs): the block linears at `rank` unless the
            // arguments say otherwise, the input layers only with `in_dims`.
            Some(DitNetworkArgs::Flux(flux)) => {
                return flux
                    .rank_for(name, target.group == TargetGroup::Named, self.rank)
                    .map(|rank| (rank, self.alpha))
            }
            // The joint blocks' linears, and the embedders only with `emb_dims` (the patch
            // embedding's conv takes `conv_dim` when set, as sd-scripts).
            Some(DitNetworkArgs::Sd3(sd3)) => {
                return sd3.module_for(
                    name,
                    target.group == TargetGroup::Named,
                    target.is_spatial_conv(),
                    (self.rank, self.alpha),
                    self.conv_rank.map(|r| (r, self.conv_alpha)),
                )
            }
            None => {}
        }
        if target.group == TargetGroup::Named {
            return None;
        }
        if let Some(b) = &self.block_ranks {
            if target.group == TargetGroup::ConvBlock && b.conv_dims.is_none() {
                return None;
            }
            let slot = b.layout.slot(name)?;
            let pick = if target.is_spatial_conv() {
                b.conv_dims.as_ref().zip(b.conv_alphas.as_ref()).map(|(d, a)| (d[slot], a[slot]))
            } else {
                Some((b.dims[slot], b.alphas[slot]))
            };
            return pick.filter(|(rank, _)| *rank > 0);
        }
        let pick = match target.group {
            TargetGroup::Attention => Some((self.rank, self.alpha)),
            TargetGroup::Named => None,
            TargetGroup::ConvBlock => match self.conv_rank {
                None => None,
                Some(conv_rank) if target.is_spatial_conv() => Some((conv_rank, self.conv_alpha)),
                Some(_) => Some((self.rank, self.alpha)),
            },
        };
        pick.filter(|(rank, _)| *rank > 0)
    }
}

/// Creates fresh trainable modules for `targets` with sd-scripts' initialisation (LyCORIS'
/// for LoHa/LoKr). Every rank is checked before anything is allocated: a LoRA/LoCon rank above
/// the smaller of the layer's dimensions (out, in·k·k), or a LoHa rank above the larger, is an
/// error naming the module, its dimensions and the key to change. LoKr ranks are not limited:
/// a rank at or above half a factor's side makes that factor a full matrix (LyCORIS' "full
/// dimension" network_dim = 100000 makes both full).
pub fn create_network(
    targets: &[LoraTarget],
    prefix: &str,
    spec: &NetworkSpec,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<LoraSet> {
    let planned = planned_modules(targets, prefix, spec);
    check_planned_ranks(spec, &planned)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut set = LoraSet::new(seed, device)?;
    for (target, name, rank, alpha) in planned {
        match spec.kind {
            NetworkKind::Lora => match spec.split_widths(target, &name) {
                // split_qkv: one pair per part of the fused layer, initialised in order.
                Some(widths) => {
                    let mut offset = 0;
                    for (index, &width) in widths.iter().enumerate() {
                        let part_target = LoraTarget { out_dim: width, ..target.clone() };
                        let part = LoraPart { index, count: widths.len(), offset };
                        let module = LoraModule::new_trainable(
                            name.clone(),
                            &part_target,
                            rank,
                            alpha,
                            dtype,
                            device,
                            &mut rng,
                        )?
                        .with_dropout(spec.dropout)
                        .as_part(part)?;
                        set.insert(target.path.clone(), module);
                        offset += width;
                    }
                }
                None => {
                    let module = LoraModule::new_trainable(name, target, rank, alpha, dtype, device, &mut rng)?
                        .with_dropout(spec.dropout);
                    set.insert(target.path.clone(), module);
                }
            },
            NetworkKind::Lycoris { algo, .. } => {
                let module = LycorisModule::new_trainable(name, target, algo, rank, alpha, dtype, device, &mut rng)?
                    .with_dropout(spec.dropout);
                set.insert_lycoris(target.path.clone(), module);
            }
        }
    }
    Ok(set)
}

/// The modules `spec` gives `targets`: (target, kohya name, rank, alpha).
fn planned_modules<'a>(
    targets: &'a [LoraTarget],
    prefix: &str,
    spec: &NetworkSpec,
) -> Vec<(&'a LoraTarget, String, usize, f64)> {
    targets
        .iter()
        .filter_map(|t| {
            let name = t.kohya_name(prefix);
            spec.rank_for(t, &name).map(|(rank, alpha)| (t, name, rank, alpha))
        })
        .collect()
}

fn check_planned_ranks(spec: &NetworkSpec, planned: &[(&LoraTarget, String, usize, f64)]) -> Result<()> {
    planned.iter().try_for_each(|(target, name, rank, _)| {
        // A split layer's parts are LoRAs of their own rows: the narrowest part bounds the rank.
        let narrowest = spec.split_widths(target, name).and_then(|w| w.into_iter().min());
        let target = LoraTarget { out_dim: narrowest.unwrap_or(target.out_dim), ..(*target).clone() };
        check_rank(spec, &target, name, *rank)
    })
}

/// The trainable parameters [`create_network`] will make for `targets` (kohya names with
/// `prefix`), counted from the module shapes without allocating anything.
pub fn planned_parameters(targets: &[LoraTarget], prefix: &str, spec: &NetworkSpec) -> usize {
    planned_modules(targets, prefix, spec)
        .into_iter()
        .map(|(t, name, rank, _)| match spec.kind {
            NetworkKind::Lora => {
                // split_qkv parts each have their own down: parts × in + out per rank.
                let downs = spec.split_widths(t, &name).map_or(1, |w| w.len());
                rank.saturating_mul(flat_in_features(t).saturating_mul(downs) + t.out_dim)
            }
            NetworkKind::Lycoris { algo, .. } => LycorisModule::factor_names(algo, t, rank)
                .iter()
                .map(|(_, shape)| shape.iter().fold(1usize, |n, d| n.saturating_mul(*d)))
                .fold(0usize, usize::saturating_add),
        })
        .fold(0, usize::saturating_add)
}

/// [`create_network`]'s rank check alone (nothing allocated): the first module whose rank is
/// above its layer's dimensions, named with the key to change.
pub fn check_ranks(targets: &[LoraTarget], prefix: &str, spec: &NetworkSpec) -> Result<()> {
    check_planned_ranks(spec, &planned_modules(targets, prefix, spec))
}

/// The rank limit of [`create_network`] for one module.
fn check_rank(spec: &NetworkSpec, target: &LoraTarget, name: &str, rank: usize) -> Result<()> {
    let (out, flat_in) = (target.out_dim, flat_in_features(target));
    let (limit, what) = match spec.kind {
        NetworkKind::Lora | NetworkKind::Lycoris { algo: LycorisAlgo::LoCon, .. } => {
            (out.min(flat_in), "a LoRA of this layer has rank at most the smaller dimension")
        }
        NetworkKind::Lycoris { algo: LycorisAlgo::LoHa, .. } => (
            out.max(flat_in),
            "a LoHa reaches full rank at rank² ≥ the smaller dimension; above the larger one it only costs memory",
        ),
        NetworkKind::Lycoris { algo: LycorisAlgo::LoKr(_), .. } => return Ok(()),
    };
    if rank <= limit {
        return Ok(());
    }
    let spatial = target.is_spatial_conv();
    let key = match (&spec.block_ranks, spatial) {
        (Some(_), false) => "network.block_dims",
        (Some(_), true) => "network.conv_block_dims",
        (None, false) => "network.network_dim",
        (None, true) => "network.conv_dim",
    };
    Err(Error::Invalid(format!(
        "{name}: rank {rank} is above the dimensions of its layer {} ({} → {out}, {flat_in} inputs per output): {what} ({limit}); lower {key}",
        target.path, target.in_dim
    )))
}

/// A candle tensor as the `lorakit-lora` writer takes it (f32 values on the host).
pub fn to_file_tensor(t: &Tensor) -> Result<lorakit_lora::safetensors_file::Tensor> {
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    Ok(lorakit_lora::safetensors_file::Tensor::new(t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
}

/// The tensors of a network as kohya saves them: `<name>.lora_down.weight`,
/// `<name>.lora_up.weight` and `<name>.alpha` (f32 scalar), ready for `lorakit_lora::write_lora`;
/// LoHa/LoKr modules as LyCORIS saves them (`custom_state_dict`): `<name>.hada_w1_a` … or
/// `<name>.lokr_w1` …, with `hada_w1_a`/`lokr_w1(_a)` times LoHa's max-norm scalar, and `alpha`.
pub fn state_dict(sets: &[&LoraSet]) -> Result<BTreeMap<String, lorakit_lora::safetensors_file::Tensor>> {
    let mut out = BTreeMap::new();
    for set in sets {
        for module in set.lycoris_modules() {
            for (suffix, t) in module.saved_factors()? {
                out.insert(format!("{}.{suffix}", module.name()), to_file_tensor(&t)?);
            }
            out.insert(
                format!("{}.alpha", module.name()),
                lorakit_lora::safetensors_file::Tensor::scalar(module.alpha() as f32),
            );
        }
        // split_qkv parts: fused back into one module per layer (see `fuse_parts`).
        let mut parts: BTreeMap<&str, Vec<&LoraModule>> = BTreeMap::new();
        for module in set.modules().iter().filter(|m| m.part().is_some()) {
            parts.entry(module.name()).or_default().push(module);
        }
        for (name, group) in parts {
            let (down, up, alpha) = lorakit_nn::lora::fuse_parts(&group)?;
            out.insert(format!("{name}.lora_down.weight"), to_file_tensor(&down)?);
            out.insert(format!("{name}.lora_up.weight"), to_file_tensor(&up)?);
            out.insert(format!("{name}.alpha"), lorakit_lora::safetensors_file::Tensor::scalar(alpha as f32));
        }
        for module in set.modules().iter().filter(|m| m.part().is_none()) {
            out.insert(format!("{}.lora_down.weight", module.name()), to_file_tensor(module.down().as_tensor())?);
            out.insert(format!("{}.lora_up.weight", module.name()), to_file_tensor(module.up().as_tensor())?);
            out.insert(
                format!("{}.alpha", module.name()),
                lorakit_lora::safetensors_file::Tensor::scalar(module.alpha() as f32),
            );
        }
    }
    Ok(out)
}

/// A model component's LoRA targets with the kohya prefix its modules are named with.
#[derive(Clone, Copy)]
pub struct ComponentTargets<'a> {
    /// `lora_unet`, `lora_te`, …
    pub prefix: &'a str,
    /// The component's targets (from its `lora_targets()`).
    pub targets: &'a [LoraTarget],
}

/// A LoRA file's modules, matched to model layers: for each component (in the order given to
/// [`load_lora_file`]), `(layer path, module)` pairs.
pub struct LoadedLora {
    /// Per component, the matched modules.
    pub components: Vec<Vec<(String, LoraModule)>>,
    /// The file's module count.
    pub module_count: usize,
}

impl LoadedLora {
    /// Adds this file's modules to per-component sets (several files may share one set).
    pub fn add_to(self, sets: &mut [LoraSet]) {
        for (modules, set) in self.components.into_iter().zip(sets.iter_mut()) {
            for (path, module) in modules {
                set.insert(path, module);
            }
        }
    }

    /// Merges every module (at its multiplier) into the component weights, as sd-scripts'
    /// `merge_lora.py` does: `W += multiplier · alpha/rank · up·down`.
    pub fn merge_into(&self, weights: &mut [&mut Weights]) -> Result<()> {
        for (modules, weights) in self.components.iter().zip(weights.iter_mut()) {
            for (path, module) in modules {
                let key = format!("{path}.weight");
                let base = weights
                    .tensor(&key)
                    .ok_or_else(|| {
                        Error::Invalid(format!("LoRA module {} targets {key}, which the model lacks", module.name()))
                    })?
                    .clone();
                let delta = module.delta_weight()?.to_device(base.device())?;
                let delta = if delta.dims() != base.dims() { delta.reshape(base.dims())? } else { delta };
                let merged = (base.to_dtype(DType::F32)? + delta)?.to_dtype(base.dtype())?;
                weights.insert(key, merged);
            }
        }
        Ok(())
    }
}

/// Reads a kohya LoRA file and matches every module to a layer of the given components by
/// name; `trainable` makes its weights `Var`s that receive gradients (resuming or continuing
/// a training), otherwise they are constants. Modules that match no layer, or whose shapes differ from the layer's, are an error
/// naming them — usually the file was trained for another base model (the message says which
/// family the file looks like).
pub fn load_lora_file(
    path: &Path,
    multiplier: f64,
    trainable: bool,
    components: &[ComponentTargets<'_>],
    dtype: DType,
    device: &Device,
) -> Result<LoadedLora> {
    let lora_err = |message: String| Error::Lora { path: path.to_path_buf(), message };
    let file = LoraFile::open(path).map_err(|e| lora_err(e.to_string()))?;
    if matches!(lorakit_lora::keys::detect_scheme(file.tensor_names()), Scheme::LoHa | Scheme::LoKr) {
        if trainable {
            return Err(lora_err("LyCORIS LoHa/LoKr files can be applied but not trained further".into()));
        }
        return load_lycoris(&file, multiplier, components, dtype, device).map_err(lora_err);
    }
    // Flux files in another layout (ComfyUI/BFL `diffusion_model.…`, diffusers/ai-toolkit,
    // XLabs) are read under kohya's names in memory, as `lorakit convert --to kohya` writes them.
    let file = if lorakit_lora::keys::detect_scheme(file.tensor_names()).is_plain_lora()
        && lorakit_lora::keys::guess_family(&file).family == Family::Flux
    {
        match convert_lora(&file, ConvertTarget::Kohya, Some(Family::Flux)) {
            Ok((bytes, outcome)) => {
                tracing::info!(
                    "{}: a Flux {} file, applied under kohya names",
                    path.display(),
                    outcome.from.describe()
                );
                LoraFile::from_bytes(bytes, path).map_err(|e| lora_err(e.to_string()))?
            }
            Err(ConvertError::AlreadyTarget { .. }) => file,
            Err(e) => return Err(lora_err(e.to_string())),
        }
    } else {
        file
    };
    let set = lorakit_lora::keys::modules(&file).map_err(|e| lora_err(e.to_string()))?;
    // PEFT/diffusers files (HF's training scripts) get kohya names in memory, exactly as
    // `lorakit convert --to kohya` would write them, and load as one.
    let (file, set) = if set.scheme == Scheme::Peft {
        // Small or partial files may not show their family: then the first map that names
        // every module wins (matching against the model below still checks every name).
        let (bytes, outcome) = match convert_lora(&file, ConvertTarget::Kohya, None) {
            Err(ConvertError::UnknownFamily { .. }) => convert_lora(&file, ConvertTarget::Kohya, Some(Family::Sd1))
                .or_else(|_| convert_lora(&file, ConvertTarget::Kohya, Some(Family::Sdxl))),
            other => other,
        }
        .map_err(|e| lora_err(e.to_string()))?;
        let file = LoraFile::from_bytes(bytes, path).map_err(|e| lora_err(e.to_string()))?;
        let set = lorakit_lora::keys::modules(&file).map_err(|e| lora_err(e.to_string()))?;
        tracing::info!(
            "{}: {} modules of a {} {} file applied under kohya names",
            path.display(),
            outcome.renamed.len(),
            outcome.family,
            outcome.from.describe()
        );
        (file, set)
    } else {
        (file, set)
    };
    if set.scheme != Scheme::Kohya {
        return Err(lora_err(format!(
            "{} files cannot be applied yet; kohya LoRA/LoCon, PEFT/diffusers LoRA and LyCORIS LoHa/LoKr files can",
            set.scheme.describe()
        )));
    }
    let by_name = targets_by_kohya_name(components);
    let mut matched: Vec<Vec<(String, LoraModule)>> = components.iter().map(|_| Vec::new()).collect();
    let mut unmatched = Vec::new();
    for info in &set.modules {
        let Some(&(index, target)) = by_name.get(&info.name) else {
            unmatched.push(info.name.clone());
            continue;
        };
        if info.mid_key.is_some() {
            return Err(lora_err(format!(
                "{}: Tucker-decomposed (lora_mid) conv modules are not supported yet",
                info.name
            )));
        }
        let load = |key: &str| -> Result<Tensor> {
            let t = file.tensor_f32(key).map_err(|e| lora_err(e.to_string()))?;
            let shape = file.info(key).map(|i| i.shape.clone()).unwrap_or_default();
            Ok(Tensor::from_vec(t, shape.as_slice(), device)?.to_dtype(dtype)?)
        };
        let (down, up) = (load(&info.down_key)?, load(&info.up_key)?);
        check_factor_shapes(info, target, &down, &up).map_err(lora_err)?;
        // kohya stores a 1×1-conv target's factors 4-D; a linear target may still get 4-D
        // factors (SD2 proj_in/proj_out), which LoraModule flattens.
        let kind = target.kind;
        let (down, up) = match target.kind {
            LoraKind::Conv { .. } if down.rank() == 2 => {
                (down.unsqueeze(2)?.unsqueeze(3)?, up.unsqueeze(2)?.unsqueeze(3)?)
            }
            _ => (down, up),
        };
        let module = LoraModule::from_weights(info.name.clone(), kind, down, up, Some(info.alpha as f64), trainable)?;
        module.set_multiplier(multiplier);
        matched[index].push((target.path.clone(), module));
    }
    if !unmatched.is_empty() {
        return Err(lora_err(unmatched_message(&file, unmatched, set.modules.len())));
    }
    Ok(LoadedLora { components: matched, module_count: set.modules.len() })
}

/// Every target of the components by its kohya module name, with its component's index. A
/// target kohya names in another layout than its module path (SDXL's SGM names) is also found
/// under its diffusers-layout name, which some trainers write and sd-scripts accepts on load.
fn targets_by_kohya_name<'a>(components: &'a [ComponentTargets<'a>]) -> HashMap<String, (usize, &'a LoraTarget)> {
    let mut by_name = HashMap::new();
    let mut aliases = Vec::new();
    for (index, component) in components.iter().enumerate() {
        for target in component.targets {
            by_name.insert(target.kohya_name(component.prefix), (index, target));
            if target.kohya_path.is_some() {
                aliases.push((format!("{}_{}", component.prefix, target.path.replace('.', "_")), (index, target)));
            }
        }
    }
    for (alias, entry) in aliases {
        by_name.entry(alias).or_insert(entry);
    }
    by_name
}

fn unmatched_message(file: &LoraFile, mut unmatched: Vec<String>, total: usize) -> String {
    unmatched.sort();
    let family = lorakit_lora::keys::guess_family(file);
    format!(
        "{} of {total} modules match no layer of this model (first: {}); the file looks like a {} LoRA — was it trained for another base model?",
        unmatched.len(),
        unmatched.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
        family.family
    )
}

/// LyCORIS LoHa/LoKr modules, applied on the fly as A1111/ComfyUI apply them: each module's
/// weight change ΔW (alpha/rank applied once, `lorakit_lora::lycoris`) becomes a LoRA module
/// whose down weight is ΔW itself (a full linear or conv) and whose up weight is the identity,
/// so `multiplier · up(down(x)) = multiplier · ΔW x`. That holds a dense copy of every adapted
/// weight: memory as large as those layers' weights.
fn load_lycoris(
    file: &LoraFile,
    multiplier: f64,
    components: &[ComponentTargets<'_>],
    dtype: DType,
    device: &Device,
) -> std::result::Result<LoadedLora, String> {
    let modules = lorakit_lora::lycoris::lycoris_modules(file).map_err(|e| e.to_string())?;
    let by_name = targets_by_kohya_name(components);
    let mut matched: Vec<Vec<(String, LoraModule)>> = components.iter().map(|_| Vec::new()).collect();
    let mut unmatched = Vec::new();
    for m in &modules {
        let Some(&(index, target)) = by_name.get(&m.name) else {
            unmatched.push(m.name.clone());
            continue;
        };
        if m.tucker {
            return Err(format!("{}: LyCORIS' Tucker form (hada_t1/t2, lokr_t2) is not supported yet", m.name));
        }
        let out = target.out_dim;
        if m.out_features != out || m.in_features != flat_in_features(target) {
            return Err(format!(
                "{}: a {} of {} → {} does not fit the model's layer {} ({} → {}) — was the file trained for another base model?",
                m.name, m.kind, m.in_features, m.out_features, target.path, target.in_dim, out
            ));
        }
        let delta = m.delta_weight(file).ok_or_else(|| format!("{}: its factors do not chain", m.name))?;
        let build = || -> candle_core::Result<LoraModule> {
            let down = Tensor::from_vec(delta, (out, m.in_features), device)?.to_dtype(dtype)?;
            let up = Tensor::eye(out, dtype, device)?;
            let (down, up) = match target.kind {
                LoraKind::Linear => (down, up),
                LoraKind::Conv { kernel, .. } => {
                    (down.reshape((out, target.in_dim, kernel, kernel))?, up.reshape((out, out, 1, 1))?)
                }
            };
            let module = LoraModule::from_weights(m.name.clone(), target.kind, down, up, Some(out as f64), false)?;
            module.set_multiplier(multiplier);
            Ok(module)
        };
        matched[index].push((target.path.clone(), build().map_err(|e| format!("{}: {e}", m.name))?));
    }
    if !unmatched.is_empty() {
        return Err(unmatched_message(file, unmatched, modules.len()));
    }
    Ok(LoadedLora { components: matched, module_count: modules.len() })
}

/// A target's input features as LoRA factors flatten them: in_channels × k × k for convs.
fn flat_in_features(target: &LoraTarget) -> usize {
    match target.kind {
        LoraKind::Linear => target.in_dim,
        LoraKind::Conv { kernel, .. } => target.in_dim * kernel * kernel,
    }
}

fn check_factor_shapes(
    info: &lorakit_lora::keys::LoraModule,
    target: &LoraTarget,
    down: &Tensor,
    up: &Tensor,
) -> std::result::Result<(), String> {
    let expected_in = flat_in_features(target);
    let down_in: usize = down.dims()[1..].iter().product();
    let kernel_ok = match target.kind {
        LoraKind::Conv { kernel, .. } if kernel > 1 => down.dims().get(2..) == Some(&[kernel, kernel][..]),
        _ => true,
    };
    if down_in != expected_in || up.dims()[0] != target.out_dim || !kernel_ok {
        return Err(format!(
            "{}: lora_down {:?} / lora_up {:?} do not fit the model's layer {} ({} → {}) — was the file trained for another base model?",
            info.name,
            down.dims(),
            up.dims(),
            target.path,
            target.in_dim,
            target.out_dim
        ));
    }
    Ok(())
}

/// Builds an `Arc<LoraSet>` per component from several loaded files (applied together).
pub fn sets_from_files(files: Vec<LoadedLora>, components: usize, device: &Device) -> Result<Vec<Arc<LoraSet>>> {
    let mut sets: Vec<LoraSet> =
        (0..components).map(|_| LoraSet::new(0, device)).collect::<candle_core::Result<_>>()?;
    for file in files {
        file.add_to(&mut sets);
    }
    Ok(sets.into_iter().map(Arc::new).collect())
}
