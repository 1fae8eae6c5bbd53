//! Recognising LoRA key schemes, grouping tensors into modules, and guessing
//! the base model family.
//!
//! kohya names (spec §2.3) are `<prefix>_<module path with . → _>` plus
//! `.lora_down.weight`, `.lora_up.weight`, `.alpha` (and LoCon's optional
//! `.lora_mid.weight`). PEFT/diffusers files use `lora_A`/`lora_B` under
//! `unet.`, `transformer.`, `text_encoder.` … Files of other kinds (LyCORIS
//! LoHa/LoKr, DoRA, full checkpoints) are recognised so callers can refuse them
//! by name instead of mis-reading them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::safetensors_file::{LoraFile, LoraFileError, TensorInfo};

/// kohya prefixes, longest first so `lora_te1_` is not taken for `lora_te_`.
const KOHYA_PREFIXES: [(&str, Component); 5] = [
    ("lora_unet_", Component::Unet),
    ("lora_te1_", Component::TextEncoder1),
    ("lora_te2_", Component::TextEncoder2),
    ("lora_te3_", Component::TextEncoder3),
    ("lora_te_", Component::TextEncoder),
];

/// Key prefixes of whole-model checkpoints (LDM/SGM single files, diffusers
/// U-Nets, Flux/SD3 DiTs, CLIP/T5 encoders, VAEs).
const CHECKPOINT_PREFIXES: [&str; 14] = [
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.embedders.",
    "down_blocks.",
    "up_blocks.",
    "mid_block.",
    "conv_in.",
    "double_blocks.",
    "single_blocks.",
    "joint_blocks.",
    "text_model.encoder.",
    "encoder.block.",
    "decoder.up.",
];

/// The format of a whole file, decided from its tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// kohya LoRA / LoCon: `lora_unet_…`, `lora_te*_…` with `lora_down`/`lora_up`/`alpha`.
    Kohya,
    /// PEFT / diffusers LoRA: `…lora_A.weight` / `…lora_B.weight`.
    Peft,
    /// LyCORIS LoHa (Hadamard product: `hada_w1_a` …).
    LoHa,
    /// LyCORIS LoKr (Kronecker product: `lokr_w1` …).
    LoKr,
    /// DoRA (weight-decomposed LoRA: `dora_scale` or PEFT `lora_magnitude_vector`).
    Dora,
    /// A full model checkpoint (U-Net/DiT, VAE or text encoder weights), not a LoRA.
    FullCheckpoint,
    /// Nothing recognisable.
    Unknown,
}

impl Scheme {
    /// A human-readable name for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Scheme::Kohya => "kohya LoRA/LoCon",
            Scheme::Peft => "PEFT/diffusers LoRA",
            Scheme::LoHa => "LyCORIS LoHa",
            Scheme::LoKr => "LyCORIS LoKr",
            Scheme::Dora => "DoRA",
            Scheme::FullCheckpoint => "full model checkpoint (not a LoRA)",
            Scheme::Unknown => "unrecognised tensor layout",
        }
    }

    /// True for the schemes whose modules are plain `up · down` pairs that
    /// [`modules`] can group.
    pub fn is_plain_lora(self) -> bool {
        matches!(self, Scheme::Kohya | Scheme::Peft)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Decides a file's [`Scheme`] from its tensor names. Variant markers win over
/// plain LoRA keys (a DoRA file also has `lora_down`), and any LoRA marker wins
/// over checkpoint-like prefixes.
pub fn detect_scheme<'a>(names: impl IntoIterator<Item = &'a str>) -> Scheme {
    let (mut dora, mut loha, mut lokr, mut kohya, mut peft, mut ckpt) = (false, false, false, false, false, false);
    for name in names {
        let last = name.rsplit('.').next().unwrap_or(name);
        if last == "dora_scale" || last == "lora_magnitude_vector" {
            dora = true;
        } else if last.starts_with("hada_") {
            loha = true;
        } else if last.starts_with("lokr_") {
            lokr = true;
        } else if kohya_part(name).is_some() {
            kohya = true;
        } else if peft_part(name).is_some() {
            peft = true;
        } else if CHECKPOINT_PREFIXES.iter().any(|p| name.starts_with(p)) {
            ckpt = true;
        }
    }
    if dora {
        Scheme::Dora
    } else if loha {
        Scheme::LoHa
    } else if lokr {
        Scheme::LoKr
    } else if kohya {
        Scheme::Kohya
    } else if peft {
        Scheme::Peft
    } else if ckpt {
        Scheme::FullCheckpoint
    } else {
        Scheme::Unknown
    }
}

/// Which tensor of a module a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Mid,
    Alpha,
}

/// Splits a kohya key into (module name, part).
fn kohya_part(name: &str) -> Option<(&str, Part)> {
    let (base, part) = if let Some(b) = name.strip_suffix(".lora_down.weight") {
        (b, Part::Down)
    } else if let Some(b) = name.strip_suffix(".lora_up.weight") {
        (b, Part::Up)
    } else if let Some(b) = name.strip_suffix(".lora_mid.weight") {
        (b, Part::Mid)
    } else if let Some(b) = name.strip_suffix(".alpha") {
        (b, Part::Alpha)
    } else {
        return None;
    };
    // `.alpha` alone is too generic to claim a file as kohya without a kohya prefix.
    (part != Part::Alpha || KOHYA_PREFIXES.iter().any(|(p, _)| base.starts_with(p))).then_some((base, part))
}

/// Splits a PEFT key into (module name, part): `lora_A`/`lora_B`, the older diffusers
/// `lora.down`/`lora.up`, and XLabs' `…_lora1.down`/`.up` (the last module component names a LoRA).
fn peft_part(name: &str) -> Option<(&str, Part)> {
    for (suffix, part) in [
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
    ] {
        if let Some(base) = name.strip_suffix(suffix) {
            return Some((base, part));
        }
    }
    let (base, part) = if let Some(b) = name.strip_suffix(".down.weight") {
        (b, Part::Down)
    } else {
        (name.strip_suffix(".up.weight")?, Part::Up)
    };
    base.rsplit('.').next().is_some_and(|last| last.contains("lora")).then_some((base, part))
}

/// The network a module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The only text encoder (SD1/SD2: `lora_te_`, PEFT `text_encoder.` without a second one).
    TextEncoder,
    /// First text encoder (`lora_te1_`: CLIP-L in SDXL/SD3/Flux).
    TextEncoder1,
    /// Second text encoder (`lora_te2_`: OpenCLIP bigG / CLIP-G).
    TextEncoder2,
    /// Third text encoder (`lora_te3_`: T5-XXL).
    TextEncoder3,
    /// The denoiser under `lora_unet_` (a U-Net, or the Flux/SD3 DiT kohya also names so).
    Unet,
    /// The denoiser under PEFT `transformer.` (Flux/SD3 diffusers LoRAs).
    Transformer,
    /// A module whose prefix names no known component.
    Other,
}

impl Component {
    /// Short label for tables: `TE`, `TE1`, …, `UNet`, `transformer`.
    pub fn label(self) -> &'static str {
        match self {
            Component::TextEncoder => "TE",
            Component::TextEncoder1 => "TE1",
            Component::TextEncoder2 => "TE2",
            Component::TextEncoder3 => "TE3",
            Component::Unet => "UNet",
            Component::Transformer => "transformer",
            Component::Other => "other",
        }
    }

    /// True for the text encoders.
    pub fn is_text_encoder(self) -> bool {
        matches!(
            self,
            Component::TextEncoder | Component::TextEncoder1 | Component::TextEncoder2 | Component::TextEncoder3
        )
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The component a module name belongs to. `has_second_te` makes PEFT's
/// `text_encoder.` mean TE1 (SDXL) rather than the only TE (SD1/SD2).
pub fn component_of(module_name: &str, has_second_te: bool) -> Component {
    if let Some((_, c)) = KOHYA_PREFIXES.iter().find(|(p, _)| module_name.starts_with(p)) {
        return *c;
    }
    let n = module_name.strip_prefix("base_model.model.").unwrap_or(module_name);
    if n.starts_with("text_encoder_2.") {
        Component::TextEncoder2
    } else if n.starts_with("text_encoder_3.") {
        Component::TextEncoder3
    } else if n.starts_with("text_encoder.") {
        if has_second_te {
            Component::TextEncoder1
        } else {
            Component::TextEncoder
        }
    } else if n.starts_with("unet.") || n.starts_with("diffusion_model.") {
        Component::Unet
    } else if n.starts_with("transformer.") {
        Component::Transformer
    } else {
        Component::Other
    }
}

/// The layer type a LoRA module adapts, from the down (and mid) weight shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// `nn.Linear`: down (r, in), up (out, r).
    Linear,
    /// 1×1 conv (also SD2's `proj_in`/`proj_out`): down (r, in, 1, 1).
    Conv1x1,
    /// k×k conv (LoCon): down (r, in, kh, kw), or kohya/LyCORIS Tucker form
    /// down (r, in, 1, 1) + mid (r, r, kh, kw).
    Conv {
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
    },
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleKind::Linear => f.write_str("linear"),
            ModuleKind::Conv1x1 => f.write_str("conv 1x1"),
            ModuleKind::Conv { kh, kw } => write!(f, "conv {kh}x{kw}"),
        }
    }
}

/// One LoRA module: its tensors and the numbers consumers compute from them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// Key without suffix, e.g. `lora_unet_mid_block_attentions_0_proj_in`.
    pub name: String,
    /// Network it adapts.
    pub component: Component,
    /// Layer type.
    pub kind: ModuleKind,
    /// Input features; for convs in_channels × kh × kw, as sd-scripts flattens them.
    pub in_features: usize,
    /// Output features (or channels).
    pub out_features: usize,
    /// Rank: rows of the down weight.
    pub rank: usize,
    /// Effective alpha: the stored value (any dtype, int64 included); for a PEFT file without
    /// alpha keys, the alpha its diffusers adapter metadata gives (`lora_alpha`, `alpha_pattern`,
    /// rsLoRA as scale × rank); else the rank (no alpha, or 0 stored: sd-scripts' rule).
    pub alpha: f32,
    /// Tensor name of the down weight (`lora_down` / `lora_A`).
    pub down_key: String,
    /// Tensor name of the up weight (`lora_up` / `lora_B`).
    pub up_key: String,
    /// Tensor name of the LoCon Tucker mid weight, if any.
    pub mid_key: Option<String>,
    /// Tensor name of the stored alpha, if any.
    pub alpha_key: Option<String>,
}

impl LoraModule {
    /// `alpha / rank`, the factor applied to `up · down`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// A file's modules grouped from its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSet {
    /// The file's scheme (Kohya or Peft).
    pub scheme: Scheme,
    /// Modules in name order.
    pub modules: Vec<LoraModule>,
    /// Tensors that belong to no module (reported by callers, never silently used).
    pub other_tensors: Vec<String>,
}

impl ModuleSet {
    /// Number of modules of one component.
    pub fn count(&self, component: Component) -> usize {
        self.modules.iter().filter(|m| m.component == component).count()
    }

    /// Number of text-encoder modules over all text encoders.
    pub fn text_encoder_count(&self) -> usize {
        self.modules.iter().filter(|m| m.component.is_text_encoder()).count()
    }
}

/// Why a file's tensors do not form LoRA modules. Display names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Not a plain LoRA.
    #[error(
        "{}: this is a {scheme} file; only kohya LoRA/LoCon and PEFT LoRA files are supported here — pass a LoRA file",
        path.display()
    )]
    Unsupported {
        /// File involved.
        path: PathBuf,
        /// What it is.
        scheme: Scheme,
    },
    /// A LyCORIS module lacks one of its factors.
    #[error("{}: LyCORIS module `{module}` has no {missing}; the file is incomplete — re-save it", path.display())]
    Incomplete {
        /// File involved.
        path: PathBuf,
        /// Module name.
        module: String,
        /// The tensors it lacks.
        missing: String,
    },
    /// A module has a down weight but no up weight.
    #[error("{}: module `{module}` has no up weight; the file is incomplete — re-save it", path.display())]
    MissingUp {
        /// File involved.
        path: PathBuf,
        /// Module name.
        module: String,
    },
    /// A module has an up weight but no down weight.
    #[error("{}: module `{module}` has no down weight; the file is incomplete — re-save it", path.display())]
    MissingDown {
        /// File involved.
        path: PathBuf,
        /// Module name.
        module: String,
    },
    /// up's columns ≠ down's rows.
    #[error(
        "{}: module `{module}` has down rank {down_rank} but up rank {up_rank}; the file is corrupt — re-save it",
        path.display()
    )]
    RankMismatch {
        /// File involved.
        path: PathBuf,
        /// Module name.
        module: String,
        /// Rows of down.
        down_rank: usize,
        /// Columns of up.
        up_rank: usize,
    },
    /// Shapes that no LoRA layer has.
    #[error("{}: module `{module}`: {reason}; the file is corrupt or of an unsupported layout", path.display())]
    BadShape {
        /// File involved.
        path: PathBuf,
        /// Module name.
        module: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading a tensor (alpha) failed.
    #[error(transparent)]
    File(#[from] LoraFileError),
}

#[derive(Default)]
struct Parts {
    down: Option<String>,
    up: Option<String>,
    mid: Option<String>,
    alpha: Option<String>,
}

/// Groups a kohya or PEFT file's tensors into modules, checking shapes.
/// Other schemes are refused with [`ModuleError::Unsupported`].
pub fn modules(file: &LoraFile) -> Result<ModuleSet, ModuleError> {
    let scheme = detect_scheme(file.tensor_names());
    // Any `<module>.alpha` belongs to its module (ComfyUI's `diffusion_model.….alpha` too); an
    // alpha with no up/down beside it is left as an other tensor below.
    let split: fn(&str) -> Option<(&str, Part)> = match scheme {
        Scheme::Kohya => |n| kohya_part(n).or_else(|| n.strip_suffix(".alpha").map(|b| (b, Part::Alpha))),
        Scheme::Peft => |n| peft_part(n).or_else(|| n.strip_suffix(".alpha").map(|b| (b, Part::Alpha))),
        other => return Err(ModuleError::Unsupported { path: file.path().to_path_buf(), scheme: other }),
    };
    let mut groups: BTreeMap<&str, Parts> = BTreeMap::new();
    let mut other_tensors = Vec::new();
    for name in file.tensor_names() {
        let Some((base, part)) = split(name) else {
            other_tensors.push(name.to_string());
            continue;
        };
        let g = groups.entry(base).or_default();
        let slot = match part {
            Part::Down => &mut g.down,
            Part::Up => &mut g.up,
            Part::Mid => &mut g.mid,
            Part::Alpha => &mut g.alpha,
        };
        *slot = Some(name.to_string());
    }
    groups.retain(|_, g| {
        let lone_alpha = g.down.is_none() && g.up.is_none() && g.mid.is_none();
        if lone_alpha {
            other_tensors.extend(g.alpha.take());
        }
        !lone_alpha
    });
    other_tensors.sort();
    let has_second_te = groups.keys().any(|n| component_of(n, false) == Component::TextEncoder2);
    let mut modules = Vec::with_capacity(groups.len());
    for (base, parts) in groups {
        modules.push(build_module(file, base, parts, has_second_te, scheme == Scheme::Peft)?);
    }
    Ok(ModuleSet { scheme, modules, other_tensors })
}

fn build_module(
    file: &LoraFile,
    base: &str,
    parts: Parts,
    has_second_te: bool,
    peft: bool,
) -> Result<LoraModule, ModuleError> {
    let path = || file.path().to_path_buf();
    let module = base.to_string();
    let bad = |reason: String| ModuleError::BadShape { path: path(), module: module.clone(), reason };
    let down_key = parts.down.ok_or_else(|| ModuleError::MissingDown { path: path(), module: module.clone() })?;
    let up_key = parts.up.ok_or_else(|| ModuleError::MissingUp { path: path(), module: module.clone() })?;
    let shape = |key: &str| -> Result<Vec<usize>, ModuleError> {
        file.info(key)
            .map(|i: &TensorInfo| i.shape.clone())
            .ok_or_else(|| ModuleError::File(LoraFileError::NoSuchTensor { path: path(), name: key.to_string() }))
    };
    let down = shape(&down_key)?;
    let up = shape(&up_key)?;
    let mid = parts.mid.as_deref().map(shape).transpose()?;

    let (kind, rank, in_features, out_features, up_rank) = match (down.as_slice(), up.as_slice(), mid.as_deref()) {
        (&[r, i], &[o, ur], None) => (ModuleKind::Linear, r, i, o, ur),
        (&[r, i, 1, 1], &[o, ur, 1, 1], None) => (ModuleKind::Conv1x1, r, i, o, ur),
        (&[r, i, kh, kw], &[o, ur, 1, 1], None) => {
            let flat = i.checked_mul(kh).and_then(|x| x.checked_mul(kw)).ok_or_else(|| bad("size overflows".into()))?;
            (ModuleKind::Conv { kh, kw }, r, flat, o, ur)
        }
        (&[r, i, 1, 1], &[o, ur, 1, 1], Some(&[mr0, mr1, kh, kw])) => {
            if mr0 != r || mr1 != ur {
                return Err(bad(format!("mid weight is {mr0}x{mr1} but down rank is {r} and up rank {ur}")));
            }
            let flat = i.checked_mul(kh).and_then(|x| x.checked_mul(kw)).ok_or_else(|| bad("size overflows".into()))?;
            (ModuleKind::Conv { kh, kw }, r, flat, o, ur)
        }
        _ => {
            return Err(bad(format!(
                "down {down:?}, up {up:?}{} do not form a linear or conv LoRA",
                mid.as_ref().map(|m| format!(", mid {m:?}")).unwrap_or_default()
            )))
        }
    };
    if rank != up_rank {
        return Err(ModuleError::RankMismatch { path: path(), module, down_rank: rank, up_rank });
    }
    if rank == 0 {
        return Err(bad("rank is 0".into()));
    }
    let stored = match &parts.alpha {
        Some(key) => Some(file.alpha_f32(key)?),
        None => None,
    };
    // A PEFT file without alpha keys may record its alphas in diffusers' adapter metadata.
    let from_config = || if peft { crate::peft_metadata::adapter_alpha(file.metadata(), base, rank) } else { None };
    let alpha = match stored {
        Some(a) if a != 0.0 => a,
        Some(_) => rank as f32,
        None => from_config().unwrap_or(rank as f32),
    };
    Ok(LoraModule {
        component: component_of(base, has_second_te),
        name: module,
        kind,
        in_features,
        out_features,
        rank,
        alpha,
        down_key,
        up_key,
        mid_key: parts.mid,
        alpha_key: parts.alpha,
    })
}

/// Base model family of a LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Stable Diffusion 1.x.
    Sd1,
    /// Stable Diffusion 2.x.
    Sd2,
    /// Stable Diffusion XL.
    Sdxl,
    /// Stable Diffusion 3 / 3.5.
    Sd3,
    /// Flux.1 (and Chroma, which shares its architecture).
    Flux,
    /// Not determinable.
    Unknown,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Sd1 => "SD1.x",
            Family::Sd2 => "SD2.x",
            Family::Sdxl => "SDXL",
            Family::Sd3 => "SD3",
            Family::Flux => "Flux",
            Family::Unknown => "unknown",
        })
    }
}

/// The family guess with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyGuess {
    /// The answer: metadata when it names a family, else the key-based guess.
    pub family: Family,
    /// What the tensor names and shapes suggest.
    pub from_keys: Family,
    /// Why the keys suggest it.
    pub key_evidence: String,
    /// What `modelspec.architecture` / `ss_base_model_version` / `ss_v2` say.
    pub from_metadata: Option<Family>,
    /// Set when metadata and keys name different families.
    pub conflict: Option<String>,
    /// The model variant when metadata names it (Flux: `dev`, `schnell`, `chroma`).
    pub variant: Option<&'static str>,
}

impl FamilyGuess {
    /// The family with its variant, e.g. `Flux` or `Flux (dev)`.
    pub fn describe(&self) -> String {
        match self.variant {
            Some(v) => format!("{} ({v})", self.family),
            None => self.family.to_string(),
        }
    }
}

/// Guesses a LoRA's base model from metadata (preferred) and keys, reporting
/// any disagreement between the two.
pub fn guess_family(file: &LoraFile) -> FamilyGuess {
    let (from_keys, key_evidence) = family_from_keys(&file.header().tensors);
    let from_metadata = family_from_metadata(file.metadata());
    let conflict = match from_metadata {
        Some(m) if from_keys != Family::Unknown && m != from_keys => {
            Some(format!("metadata says {m} but the keys look like {from_keys} ({key_evidence})"))
        }
        _ => None,
    };
    let family = from_metadata.unwrap_or(from_keys);
    let variant = if family == Family::Flux { flux_variant(file.metadata()) } else { None };
    FamilyGuess { family, from_keys, key_evidence, from_metadata, conflict, variant }
}

/// The Flux variant metadata names: sd-scripts' `modelspec.architecture` is `flux-1-dev/lora`,
/// `flux-1-schnell/lora` or `chroma/lora` (`flux-1/lora` when unknown); its
/// `ss_base_model_version` is `flux1` (or `chroma`) for every variant.
pub fn flux_variant(metadata: &BTreeMap<String, String>) -> Option<&'static str> {
    let arch = metadata.get("modelspec.architecture").map(|a| a.trim().to_ascii_lowercase()).unwrap_or_default();
    let version = metadata.get("ss_base_model_version").map(|v| v.trim().to_ascii_lowercase()).unwrap_or_default();
    if arch.starts_with("flux-1-dev") {
        Some("dev")
    } else if arch.starts_with("flux-1-schnell") {
        Some("schnell")
    } else if arch.starts_with("chroma") || version.starts_with("chroma") {
        Some("chroma")
    } else {
        None
    }
}

/// The family named by metadata: `modelspec.architecture`, then
/// `ss_base_model_version`, then `ss_v2 = True`.
pub fn family_from_metadata(metadata: &BTreeMap<String, String>) -> Option<Family> {
    let arch = metadata.get("modelspec.architecture").map(|a| a.split('/').next().unwrap_or(a).trim());
    let by_arch = arch.and_then(|a| {
        if a.starts_with("stable-diffusion-v1") {
            Some(Family::Sd1)
        } else if a.starts_with("stable-diffusion-v2") {
            Some(Family::Sd2)
        } else if a.starts_with("stable-diffusion-xl") {
            Some(Family::Sdxl)
        } else if a.starts_with("stable-diffusion-3") {
            Some(Family::Sd3)
        } else if a.starts_with("flux") || a.starts_with("chroma") {
            Some(Family::Flux)
        } else {
            None
        }
    });
    let version = metadata.get("ss_base_model_version").map(|v| v.trim());
    let by_version = version.and_then(|v| {
        if v.starts_with("sd_v1") {
            Some(Family::Sd1)
        } else if v.starts_with("sd_v2") {
            Some(Family::Sd2)
        } else if v.starts_with("sdxl") {
            Some(Family::Sdxl)
        } else if v.starts_with("flux") || v.starts_with("chroma") {
            Some(Family::Flux)
        } else if v.starts_with("sd3") || matches!(v, "medium" | "large" | "5-large" | "5-medium" | "5-large-turbo") {
            Some(Family::Sd3)
        } else {
            None
        }
    });
    let by_v2 = (metadata.get("ss_v2").map(String::as_str) == Some("True")).then_some(Family::Sd2);
    by_arch.or(by_version).or(by_v2)
}

/// The family suggested by tensor names and shapes, with the evidence used.
/// Names are compared with `.` replaced by `_`, so kohya and PEFT spellings match.
pub fn family_from_keys(tensors: &BTreeMap<String, TensorInfo>) -> (Family, String) {
    let flat: Vec<(String, &TensorInfo)> = tensors.iter().map(|(k, v)| (k.replace('.', "_"), v)).collect();
    let has = |s: &str| flat.iter().any(|(k, _)| k.contains(s));
    // Input width of the first down/lora_A weight whose name contains `pat`.
    let in_dim = |pat: &str| {
        flat.iter()
            .filter(|(k, _)| k.contains(pat) && (k.ends_with("lora_down_weight") || k.ends_with("lora_A_weight")))
            .find_map(|(_, t)| t.shape.get(1).copied())
    };

    if has("double_blocks") || has("single_blocks") || has("single_transformer_blocks") {
        return (Family::Flux, "Flux double/single blocks".into());
    }
    // Layers only Flux has: diffusers' x_embedder / guidance embedder / single-block proj_mlp
    // (SD3's kohya `x_embedder_proj` is a conv), and sd-scripts' `in_dims` input layers.
    let flux_only = ["transformer_x_embedder", "guidance_embedder", "proj_mlp", "lora_unet_img_in", "lora_unet_txt_in"];
    if let Some(key) = flux_only.iter().find(|k| has(k)) {
        return (Family::Flux, format!("Flux-only layer `{key}`"));
    }
    for prefix in ["lora_unet_time_in_", "lora_unet_vector_in_", "lora_unet_guidance_in_"] {
        if has(prefix) {
            return (Family::Flux, format!("Flux input layer `{prefix}…`"));
        }
    }
    if has("joint_blocks") {
        return (Family::Sd3, "SD3 joint blocks".into());
    }
    // SD3-only layers: sd-scripts' `emb_dims` inputs, diffusers' patch embedding and SD3.5
    // Medium's second attention.
    let sd3_only =
        ["lora_unet_t_embedder_", "lora_unet_y_embedder_", "lora_unet_x_embedder_proj", "transformer_pos_embed_proj"];
    if let Some(key) = sd3_only.iter().find(|k| has(k)) {
        return (Family::Sd3, format!("SD3-only layer `{key}…`"));
    }
    if has("transformer_transformer_blocks") && has("_attn2_to_") {
        return (Family::Sd3, "diffusers joint transformer blocks with a second attention (SD3.5 Medium)".into());
    }
    if has("transformer_transformer_blocks") && (has("add_q_proj") || has("attn_to_q")) {
        // Diffusers Flux and SD3 share these names; Flux's width is 3072.
        return match in_dim("add_q_proj").or_else(|| in_dim("attn_to_q")) {
            Some(3072) => (Family::Flux, "diffusers transformer blocks of width 3072".into()),
            Some(w) => (Family::Sd3, format!("diffusers joint transformer blocks of width {w}")),
            None => (Family::Unknown, "diffusers transformer blocks of unknown width".into()),
        };
    }
    // Cross-attention key input = text-embedding width: 768 SD1, 1024 SD2, 2048 SDXL.
    match in_dim("attn2_to_k") {
        Some(768) => return (Family::Sd1, "cross-attention context width 768".into()),
        Some(1024) => return (Family::Sd2, "cross-attention context width 1024".into()),
        Some(2048) => return (Family::Sdxl, "cross-attention context width 2048".into()),
        _ => {}
    }
    if has("lora_te2_") || has("text_encoder_2_") {
        return (Family::Sdxl, "two CLIP text encoders (lora_te1/lora_te2)".into());
    }
    if has("lora_unet_input_blocks") || has("lora_unet_output_blocks") || has("lora_unet_middle_block") {
        return (Family::Sdxl, "SGM U-Net names (input_blocks/middle_block/output_blocks)".into());
    }
    // A single text encoder: CLIP-L (768 wide, 12 layers) for SD1, OpenCLIP-H (1024, 23 layers) for SD2.
    let single_te = flat.iter().any(|(k, _)| k.starts_with("lora_te_") || k.contains("text_encoder_text_model"));
    if single_te {
        match in_dim("self_attn_q_proj") {
            Some(768) => return (Family::Sd1, "text encoder width 768".into()),
            Some(1024) => return (Family::Sd2, "text encoder width 1024".into()),
            _ => {}
        }
        let layers = flat
            .iter()
            .filter_map(|(k, _)| k.split("encoder_layers_").nth(1)?.split('_').next()?.parse::<usize>().ok())
            .max()
            .map(|m| m + 1);
        match layers {
            Some(23) => return (Family::Sd2, "23 text encoder layers".into()),
            Some(12) => return (Family::Sd1, "12 text encoder layers".into()),
            _ => {}
        }
    }
    (Family::Unknown, "no family-specific keys".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_precedence() {
        assert_eq!(detect_scheme(["lora_unet_a.lora_down.weight", "lora_unet_a.dora_scale"]), Scheme::Dora);
        assert_eq!(detect_scheme(["unet.a.lora_A.weight", "unet.a.lora_magnitude_vector"]), Scheme::Dora);
        assert_eq!(detect_scheme(["lora_unet_a.hada_w1_a", "lora_unet_b.lora_down.weight"]), Scheme::LoHa);
        assert_eq!(detect_scheme(["lora_unet_a.lokr_w1"]), Scheme::LoKr);
        assert_eq!(detect_scheme(["model.diffusion_model.out.2.weight"]), Scheme::FullCheckpoint);
        assert_eq!(detect_scheme(["down_blocks.0.resnets.0.conv1.weight"]), Scheme::FullCheckpoint);
        assert_eq!(detect_scheme(["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"]), Scheme::Peft);
        assert_eq!(detect_scheme(["weird.alpha"]), Scheme::Unknown);
        assert_eq!(detect_scheme(["diffusion_model.img_in.lora_down.weight"]), Scheme::Kohya);
        assert_eq!(detect_scheme(["transformer.x_embedder.lora.down.weight"]), Scheme::Peft);
        assert_eq!(detect_scheme(["double_blocks.0.processor.qkv_lora1.down.weight"]), Scheme::Peft);
        assert_eq!(peft_part("a.qkv_lora1.up.weight"), Some(("a.qkv_lora1", Part::Up)));
        assert_eq!(peft_part("transformer.x.lora.up.weight"), Some(("transformer.x", Part::Up)));
        assert_eq!(peft_part("decoder.up.weight"), None);
        assert_eq!(detect_scheme(std::iter::empty()), Scheme::Unknown);
    }

    #[test]
    fn components() {
        assert_eq!(component_of("lora_te1_text_model_encoder_layers_0_mlp_fc1", false), Component::TextEncoder1);
        assert_eq!(component_of("lora_te_text_model_encoder_layers_0_mlp_fc1", false), Component::TextEncoder);
        assert_eq!(component_of("lora_unet_double_blocks_0_img_attn_qkv", false), Component::Unet);
        assert_eq!(component_of("base_model.model.text_encoder.x", true), Component::TextEncoder1);
        assert_eq!(component_of("text_encoder.x", false), Component::TextEncoder);
        assert_eq!(component_of("transformer.single_transformer_blocks.0.proj_out", false), Component::Transformer);
        assert_eq!(component_of("something.else", false), Component::Other);
    }

    #[test]
    fn metadata_families() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(family_from_metadata(&m(&[("ss_base_model_version", "sd_v1")])), Some(Family::Sd1));
        assert_eq!(family_from_metadata(&m(&[("ss_base_model_version", "sd_v2_v")])), Some(Family::Sd2));
        assert_eq!(family_from_metadata(&m(&[("ss_base_model_version", "sdxl_base_v1-0")])), Some(Family::Sdxl));
        assert_eq!(family_from_metadata(&m(&[("ss_base_model_version", "5-large")])), Some(Family::Sd3));
        assert_eq!(family_from_metadata(&m(&[("ss_base_model_version", "chroma")])), Some(Family::Flux));
        assert_eq!(family_from_metadata(&m(&[("ss_v2", "True")])), Some(Family::Sd2));
        assert_eq!(
            family_from_metadata(&m(&[
                ("modelspec.architecture", "flux-1-dev/lora"),
                ("ss_base_model_version", "sd_v1")
            ])),
            Some(Family::Flux),
            "modelspec.architecture is preferred"
        );
        assert_eq!(family_from_metadata(&m(&[("ss_base_model_version", "what")])), None);
        assert_eq!(family_from_metadata(&m(&[("ss_base_model_version", "flux1")])), Some(Family::Flux));
        assert_eq!(flux_variant(&m(&[("modelspec.architecture", "flux-1-dev/lora")])), Some("dev"));
        assert_eq!(flux_variant(&m(&[("modelspec.architecture", "flux-1-schnell/lora")])), Some("schnell"));
        assert_eq!(
            flux_variant(&m(&[("modelspec.architecture", "flux-1/lora"), ("ss_base_model_version", "flux1")])),
            None
        );
        assert_eq!(flux_variant(&m(&[("ss_base_model_version", "flux1")])), None);
    }
}
