//! Converting LoRA key names between kohya (`lora_unet_…`, `lora_te…_…`) and
//! PEFT/diffusers (`unet.<module>.lora_A.weight`) for SD1.5 and SDXL
//! (`lorakit convert`). Flux.1 and SD3 / SD3.5 files, in any of their layouts, go through
//! [`crate::dit_convert`], which also fuses and splits their qkv (and Flux's linear1) layers.
//!
//! kohya names replace every "." of a module path with "_", which is lossy
//! (`to_q`, `proj_in`, `transformer_blocks` contain underscores), so names are
//! never guessed: [`NameMap`] enumerates every LoRA-targetable module of each
//! architecture and matches on the underscored form. SD1 kohya U-Net names use
//! the diffusers layout; SDXL kohya U-Net names use the original SGM layout
//! (`input_blocks_4_1_…`), mapped to diffusers paths with the LDM ↔ diffusers
//! table of sd-scripts' checkpoint converter.
//!
//! Alpha: PEFT files carry no alpha that loaders honour, so kohya → PEFT folds
//! `alpha / rank` into `lora_B` (up) and writes no alpha; PEFT → kohya writes
//! each module's effective alpha (its `.alpha` key if the file has one, else
//! the rank, i.e. scale 1). `scale · up · down` is unchanged either way.

use crate::dit_convert::{convert_dit, DitSite};
use crate::keys::{guess_family, modules, Family, ModuleError, ModuleSet, Scheme};
use crate::safetensors_file::{serialize, write_lora, Dtype, LoraFile, LoraFileError, Precision, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// The key naming to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// kohya / sd-scripts names (ComfyUI, A1111, Forge).
    Kohya,
    /// PEFT / diffusers names (`load_lora_weights`).
    Peft,
}

impl Target {
    fn scheme(self) -> Scheme {
        match self {
            Target::Kohya => Scheme::Kohya,
            Target::Peft => Scheme::Peft,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Kohya => "kohya",
            Target::Peft => "PEFT",
        })
    }
}

/// Why a file could not be converted. Display is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading or writing failed.
    #[error(transparent)]
    File(#[from] LoraFileError),
    /// The tensors do not form LoRA modules.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// Output and input are the same file.
    #[error("{}: the input and output are the same file; write the converted LoRA to a new file", .0.display())]
    SameFile(PathBuf),
    /// Already in the requested naming.
    #[error("{}: this is already a {scheme} file; nothing to convert (pick the other --to)", path.display())]
    AlreadyTarget {
        /// Input file.
        path: PathBuf,
        /// Its scheme.
        scheme: Scheme,
    },
    /// A base model other than SD1.5/SDXL/Flux/SD3.
    #[error(
        "{}: this LoRA looks like {family} ({evidence}); convert supports SD1.5, SDXL, SD3 and Flux only",
        path.display()
    )]
    UnsupportedFamily {
        /// Input file.
        path: PathBuf,
        /// What it looks like.
        family: Family,
        /// Why.
        evidence: String,
    },
    /// Neither keys nor metadata tell SD1.5 from SDXL.
    #[error(
        "{}: cannot tell which base model this LoRA is for ({evidence}); pass --family sd15, sdxl, sd3 or flux",
        path.display()
    )]
    UnknownFamily {
        /// Input file.
        path: PathBuf,
        /// What the keys showed.
        evidence: String,
    },
    /// A module name that is not a LoRA-targetable module of the architecture.
    #[error(
        "{}: module `{module}` is not a LoRA-targetable {family} module; the file is for another model or uses names convert does not know — nothing was written",
        path.display()
    )]
    Unmappable {
        /// Input file.
        path: PathBuf,
        /// The module name.
        module: String,
        /// The architecture it was looked up in.
        family: Family,
    },
    /// Two input modules name the same layer.
    #[error("{}: modules `{first}` and `{second}` both adapt `{target}`; keep one of them and convert again", path.display())]
    Duplicate {
        /// Input file.
        path: PathBuf,
        /// First module.
        first: String,
        /// Second module.
        second: String,
        /// The output name both map to.
        target: String,
    },
    /// A tensor outside any up/down pair.
    #[error(
        "{}: tensor `{name}` is not part of a LoRA up/down pair, so it cannot be renamed; remove it or convert with the tool that made it",
        path.display()
    )]
    StrayTensor {
        /// Input file.
        path: PathBuf,
        /// Tensor name.
        name: String,
    },
    /// A Flux module whose shape does not fit the layer it names.
    #[error("{}: module `{module}` {reason}; the file is not a Flux.1 LoRA of the usual shapes — nothing was written", path.display())]
    FluxShape {
        /// Input file.
        path: PathBuf,
        /// Module name.
        module: String,
        /// What does not fit.
        reason: String,
    },
    /// An SD3 module whose shape does not fit the layer it names.
    #[error("{}: module `{module}` {reason}; the file is not an SD3 LoRA of the usual shapes — nothing was written", path.display())]
    Sd3Shape {
        /// Input file.
        path: PathBuf,
        /// Module name.
        module: String,
        /// What does not fit.
        reason: String,
    },
    /// LoCon Tucker modules have no PEFT equivalent.
    #[error(
        "{}: module `{module}` stores a LoCon Tucker `lora_mid` weight, which PEFT/diffusers cannot hold",
        path.display()
    )]
    Tucker {
        /// Input file.
        path: PathBuf,
        /// Module name.
        module: String,
    },
}

/// What a conversion did, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertOutcome {
    /// Base model the names were mapped for.
    pub family: Family,
    /// The input's scheme.
    pub from: Scheme,
    /// The naming written.
    pub to: Target,
    /// Precision of the written tensors.
    pub precision: Precision,
    /// (input module name, output module name) in input name order.
    pub renamed: Vec<(String, String)>,
    /// Modules whose `alpha / rank` ≠ 1 was folded into `lora_B` (to PEFT; Flux parts with
    /// different scales fused to kohya).
    pub folded: usize,
    /// What the user should know about the result (Flux: parts padded or cut, T5 modules).
    pub notes: Vec<String>,
}

/// The two-way map between kohya module names and PEFT/diffusers module paths
/// of one architecture, built from its real module layout.
#[derive(Debug, Clone)]
pub struct NameMap {
    family: Family,
    /// (canonical kohya name, PEFT name).
    pairs: Vec<(String, String)>,
    by_kohya: HashMap<String, usize>,
    by_peft: HashMap<String, usize>,
}

impl NameMap {
    /// The map for SD1.x or SDXL; `None` for other families.
    pub fn new(family: Family) -> Option<NameMap> {
        let mut map = NameMap { family, pairs: Vec::new(), by_kohya: HashMap::new(), by_peft: HashMap::new() };
        match family {
            Family::Sd1 => {
                for (_, diffusers) in sd1_unet() {
                    map.push("lora_unet", &diffusers, "unet", &diffusers);
                }
                for path in clip_paths(12) {
                    map.push("lora_te", &path, "text_encoder", &path);
                }
            }
            Family::Sdxl => {
                for (sgm, diffusers) in sdxl_unet() {
                    map.push("lora_unet", &sgm, "unet", &diffusers);
                    // Some trainers write SDXL kohya names in the diffusers layout; sd-scripts
                    // accepts them on load, so they are read too (and written back as SGM).
                    let alias = kohya_name("lora_unet", &diffusers);
                    let i = map.pairs.len() - 1;
                    map.by_kohya.insert(alias, i);
                }
                for path in clip_paths(12) {
                    map.push("lora_te1", &path, "text_encoder", &path);
                }
                for path in clip_paths(32) {
                    map.push("lora_te2", &path, "text_encoder_2", &path);
                }
            }
            _ => return None,
        }
        Some(map)
    }

    fn push(&mut self, kohya_prefix: &str, kohya_path: &str, peft_prefix: &str, peft_path: &str) {
        let kohya = kohya_name(kohya_prefix, kohya_path);
        let peft = format!("{peft_prefix}.{peft_path}");
        let i = self.pairs.len();
        let clash_k = self.by_kohya.insert(kohya.clone(), i);
        let clash_p = self.by_peft.insert(peft.clone(), i);
        debug_assert!(clash_k.is_none() && clash_p.is_none(), "duplicate module {kohya} / {peft}");
        self.pairs.push((kohya, peft));
    }

    /// The architecture.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Number of targetable modules.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when the map is empty (never for a built map).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Every (kohya name, PEFT name) pair.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|(k, p)| (k.as_str(), p.as_str()))
    }

    /// The PEFT module name for a kohya module name.
    pub fn to_peft(&self, kohya: &str) -> Option<&str> {
        self.by_kohya.get(kohya).map(|&i| self.pairs[i].1.as_str())
    }

    /// The kohya module name for a PEFT module name; accepts PEFT's
    /// `base_model.model.` prefix and bare U-Net paths without `unet.`.
    pub fn to_kohya(&self, peft: &str) -> Option<&str> {
        let name = peft.strip_prefix("base_model.model.").unwrap_or(peft);
        let i = self.by_peft.get(name).or_else(|| self.by_peft.get(&format!("unet.{name}")))?;
        Some(self.pairs[*i].0.as_str())
    }
}

fn kohya_name(prefix: &str, path: &str) -> String {
    format!("{prefix}_{}", path.replace('.', "_"))
}

/// HF CLIP text-model modules that kohya targets (attention and MLP linears).
fn clip_paths(layers: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(layers * 6);
    for l in 0..layers {
        for child in
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]
        {
            out.push(format!("text_model.encoder.layers.{l}.{child}"));
        }
    }
    out
}

/// Linear/conv children of a `Transformer2DModel` / `SpatialTransformer`
/// (identical in both layouts).
fn attention(out: &mut Vec<(String, String)>, sgm: &str, diffusers: &str, depth: usize) {
    let mut children = vec!["proj_in".to_string(), "proj_out".to_string()];
    for k in 0..depth {
        for attn in ["attn1", "attn2"] {
            for p in ["to_q", "to_k", "to_v", "to_out.0"] {
                children.push(format!("transformer_blocks.{k}.{attn}.{p}"));
            }
        }
        children.push(format!("transformer_blocks.{k}.ff.net.0.proj"));
        children.push(format!("transformer_blocks.{k}.ff.net.2"));
    }
    for c in children {
        out.push((format!("{sgm}.{c}"), format!("{diffusers}.{c}")));
    }
}

/// Linear/conv children of a resnet block: (SGM child, diffusers child).
fn resnet(out: &mut Vec<(String, String)>, sgm: &str, diffusers: &str, shortcut: bool) {
    let mut children = vec![("in_layers.2", "conv1"), ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj")];
    if shortcut {
        children.push(("skip_connection", "conv_shortcut"));
    }
    for (s, d) in children {
        out.push((format!("{sgm}.{s}"), format!("{diffusers}.{d}")));
    }
}

/// conv_in and the time (and SDXL's size/crop) embedding linears.
fn stems(sdxl: bool) -> Vec<(String, String)> {
    let mut pairs = vec![
        ("input_blocks.0.0", "conv_in"),
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
    ];
    if sdxl {
        pairs.extend([("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")]);
    }
    pairs.into_iter().map(|(s, d)| (s.to_string(), d.to_string())).collect()
}

/// SD1.x U-Net (4 levels, 320/640/1280/1280, attention in down 0–2 and up 1–3,
/// one transformer block each) as (SGM path, diffusers path).
fn sd1_unet() -> Vec<(String, String)> {
    let mut out = stems(false);
    for i in 0..4 {
        for j in 0..2 {
            let n = 3 * i + j + 1;
            resnet(
                &mut out,
                &format!("input_blocks.{n}.0"),
                &format!("down_blocks.{i}.resnets.{j}"),
                j == 0 && (i == 1 || i == 2),
            );
            if i < 3 {
                attention(&mut out, &format!("input_blocks.{n}.1"), &format!("down_blocks.{i}.attentions.{j}"), 1);
            }
        }
        if i < 3 {
            out.push((format!("input_blocks.{}.0.op", 3 * (i + 1)), format!("down_blocks.{i}.downsamplers.0.conv")));
        }
    }
    resnet(&mut out, "middle_block.0", "mid_block.resnets.0", false);
    attention(&mut out, "middle_block.1", "mid_block.attentions.0", 1);
    resnet(&mut out, "middle_block.2", "mid_block.resnets.1", false);
    for i in 0..4 {
        for j in 0..3 {
            let n = 3 * i + j;
            resnet(&mut out, &format!("output_blocks.{n}.0"), &format!("up_blocks.{i}.resnets.{j}"), true);
            if i > 0 {
                attention(&mut out, &format!("output_blocks.{n}.1"), &format!("up_blocks.{i}.attentions.{j}"), 1);
            }
        }
        if i < 3 {
            let slot = if i == 0 { 1 } else { 2 };
            out.push((format!("output_blocks.{}.{slot}.conv", 3 * i + 2), format!("up_blocks.{i}.upsamplers.0.conv")));
        }
    }
    out.push(("out.2".into(), "conv_out".into()));
    out
}

/// SDXL U-Net (3 levels, 320/640/1280, no attention in down 0 / up 2,
/// transformer depths 2 and 10, upsampler always `.2.`) as (SGM path, diffusers path).
fn sdxl_unet() -> Vec<(String, String)> {
    let mut out = stems(true);
    for (i, depth) in [0, 2, 10].into_iter().enumerate() {
        for j in 0..2 {
            let n = 3 * i + j + 1;
            resnet(&mut out, &format!("input_blocks.{n}.0"), &format!("down_blocks.{i}.resnets.{j}"), j == 0 && i > 0);
            if i > 0 {
                let (s, d) = (format!("input_blocks.{n}.1"), format!("down_blocks.{i}.attentions.{j}"));
                attention(&mut out, &s, &d, depth);
            }
        }
        if i < 2 {
            out.push((format!("input_blocks.{}.0.op", 3 * (i + 1)), format!("down_blocks.{i}.downsamplers.0.conv")));
        }
    }
    resnet(&mut out, "middle_block.0", "mid_block.resnets.0", false);
    attention(&mut out, "middle_block.1", "mid_block.attentions.0", 10);
    resnet(&mut out, "middle_block.2", "mid_block.resnets.1", false);
    for (i, depth) in [10, 2, 0].into_iter().enumerate() {
        for j in 0..3 {
            let n = 3 * i + j;
            resnet(&mut out, &format!("output_blocks.{n}.0"), &format!("up_blocks.{i}.resnets.{j}"), true);
            if i < 2 {
                let (s, d) = (format!("output_blocks.{n}.1"), format!("up_blocks.{i}.attentions.{j}"));
                attention(&mut out, &s, &d, depth);
            }
        }
        if i < 2 {
            out.push((format!("output_blocks.{}.2.conv", 3 * i + 2), format!("up_blocks.{i}.upsamplers.0.conv")));
        }
    }
    out.push(("out.2".into(), "conv_out".into()));
    out
}

/// Converts `input` to `to` naming and writes `output` atomically.
///
/// `family` overrides detection (SD1 or SDXL); `precision` of `None` keeps
/// the input's float precision. Metadata is kept as is (`ss_*`,
/// `modelspec.*`), with a `lorakit_convert` note added and the `sshs_*`
/// hashes recomputed. Every module must map, or nothing is written.
pub fn convert_file(
    input: &Path,
    output: &Path,
    to: Target,
    precision: Option<Precision>,
    family: Option<Family>,
) -> Result<ConvertOutcome, ConvertError> {
    if std::fs::canonicalize(input).ok().is_some_and(|a| std::fs::canonicalize(output).ok() == Some(a)) {
        return Err(ConvertError::SameFile(output.to_path_buf()));
    }
    let file = LoraFile::open(input)?;
    let converted = convert(&file, to, precision, family)?;
    write_lora(output, &converted.tensors, &converted.metadata, converted.outcome.precision)?;
    Ok(converted.outcome)
}

/// A LoRA converted in memory, before [`convert_file`] writes it or [`convert_lora`]
/// serialises it.
struct Converted {
    /// The renamed tensors (f32; saved at `outcome.precision`).
    tensors: BTreeMap<String, Tensor>,
    /// The input's metadata with the `lorakit_convert` note.
    metadata: BTreeMap<String, String>,
    /// What was done.
    outcome: ConvertOutcome,
}

/// [`convert_file`] without the write: the converted file as safetensors bytes (no `sshs_*`
/// hashes), e.g. to apply a PEFT/diffusers LoRA as a kohya one without a file on disk.
pub fn convert_lora(
    file: &LoraFile,
    to: Target,
    family: Option<Family>,
) -> Result<(Vec<u8>, ConvertOutcome), ConvertError> {
    let converted = convert(file, to, None, family)?;
    let bytes = serialize(&converted.tensors, &converted.metadata, converted.outcome.precision)?;
    Ok((bytes, converted.outcome))
}

fn convert(
    file: &LoraFile,
    to: Target,
    precision: Option<Precision>,
    family: Option<Family>,
) -> Result<Converted, ConvertError> {
    let input = file.path();
    let path = || input.to_path_buf();
    let set = modules(file)?;
    let family = match family {
        Some(f) => Ok(f),
        None => detect_family(file),
    };
    match family {
        Ok(Family::Flux) => return convert_dit_file::<crate::flux::Site>(file, &set, to, precision),
        Ok(Family::Sd3) => return convert_dit_file::<crate::sd3::Site>(file, &set, to, precision),
        _ => {}
    }
    if set.scheme == to.scheme() {
        return Err(ConvertError::AlreadyTarget { path: path(), scheme: set.scheme });
    }
    if let Some(name) = set.other_tensors.first() {
        return Err(ConvertError::StrayTensor { path: path(), name: name.clone() });
    }
    let family = family?;
    let Some(map) = NameMap::new(family) else {
        return Err(ConvertError::UnsupportedFamily { path: path(), family, evidence: "chosen with --family".into() });
    };
    let precision = precision.unwrap_or_else(|| input_precision(file, &set));

    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut renamed = Vec::with_capacity(set.modules.len());
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut folded = 0;
    for m in &set.modules {
        if m.mid_key.is_some() {
            return Err(ConvertError::Tucker { path: path(), module: m.name.clone() });
        }
        let mapped = match to {
            Target::Peft => map.to_peft(&m.name),
            Target::Kohya => map.to_kohya(&m.name),
        };
        let Some(new_name) = mapped.map(str::to_string) else {
            return Err(ConvertError::Unmappable { path: path(), module: m.name.clone(), family });
        };
        if let Some(first) = owner.insert(new_name.clone(), m.name.clone()) {
            return Err(ConvertError::Duplicate { path: path(), first, second: m.name.clone(), target: new_name });
        }
        let shape = |key: &str| file.info(key).map(|i| i.shape.clone()).unwrap_or_default();
        let down = Tensor::new(shape(&m.down_key), file.tensor_f32(&m.down_key)?);
        let mut up = Tensor::new(shape(&m.up_key), file.tensor_f32(&m.up_key)?);
        match to {
            Target::Peft => {
                let scale = m.scale();
                if scale != 1.0 {
                    up.data.iter_mut().for_each(|x| *x *= scale);
                    folded += 1;
                }
                tensors.insert(format!("{new_name}.lora_A.weight"), down);
                tensors.insert(format!("{new_name}.lora_B.weight"), up);
            }
            Target::Kohya => {
                tensors.insert(format!("{new_name}.lora_down.weight"), down);
                tensors.insert(format!("{new_name}.lora_up.weight"), up);
                tensors.insert(format!("{new_name}.alpha"), Tensor::scalar(m.alpha));
            }
        }
        renamed.push((m.name.clone(), new_name));
    }

    let alpha_note = match to {
        Target::Peft => "alpha/rank folded into lora_B (no alpha keys)",
        Target::Kohya => "alpha = PEFT alpha, or rank when absent",
    };
    let metadata = convert_metadata(file, &set, to, family, alpha_note);
    Ok(Converted {
        tensors,
        metadata,
        outcome: ConvertOutcome { family, from: set.scheme, to, precision, renamed, folded, notes: Vec::new() },
    })
}

/// [`convert`] for a DiT family (Flux, SD3), whose layers are fused and split by [`convert_dit`].
fn convert_dit_file<S: DitSite>(
    file: &LoraFile,
    set: &ModuleSet,
    to: Target,
    precision: Option<Precision>,
) -> Result<Converted, ConvertError> {
    if let Some(name) = set.other_tensors.first() {
        return Err(ConvertError::StrayTensor { path: file.path().to_path_buf(), name: name.clone() });
    }
    let dit = convert_dit::<S>(file, set, to)?;
    let precision = precision.unwrap_or_else(|| input_precision(file, set));
    let metadata = convert_metadata(file, set, to, S::FAMILY, S::METADATA_NOTE);
    let outcome = ConvertOutcome {
        family: S::FAMILY,
        from: set.scheme,
        to,
        precision,
        renamed: dit.renamed,
        folded: dit.folded,
        notes: dit.notes,
    };
    Ok(Converted { tensors: dit.tensors, metadata, outcome })
}

/// The precision of the input's first down weight (f16/bf16 kept, anything else f32).
fn input_precision(file: &LoraFile, set: &ModuleSet) -> Precision {
    let dtype = set.modules.first().and_then(|m| file.info(&m.down_key)).map(|i| i.dtype);
    match dtype {
        Some(Dtype::F16) => Precision::F16,
        Some(Dtype::BF16) => Precision::BF16,
        _ => Precision::F32,
    }
}

/// The input's metadata with a `lorakit_convert` note saying what was done.
fn convert_metadata(
    file: &LoraFile,
    set: &ModuleSet,
    to: Target,
    family: Family,
    note: &str,
) -> BTreeMap<String, String> {
    let mut metadata = file.metadata().clone();
    // Alphas are now in the tensors (kohya) or folded into lora_B (PEFT): a copied adapter config
    // would make diffusers apply its lora_alpha a second time.
    metadata.remove(crate::peft_metadata::KEY);
    let source = file.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    metadata.insert(
        "lorakit_convert".into(),
        format!("{} -> {to} ({family}) from {source}; {note}", set.scheme.describe()),
    );
    metadata
}

/// SD1, SDXL, SD3 or Flux from the keys, falling back to metadata when keys say nothing.
fn detect_family(file: &LoraFile) -> Result<Family, ConvertError> {
    let guess = guess_family(file);
    let path = file.path().to_path_buf();
    let family = match guess.from_keys {
        Family::Unknown => guess.from_metadata.unwrap_or(Family::Unknown),
        f => f,
    };
    match family {
        Family::Sd1 | Family::Sdxl | Family::Sd3 | Family::Flux => Ok(family),
        Family::Unknown => Err(ConvertError::UnknownFamily { path, evidence: guess.key_evidence }),
        other => {
            let evidence =
                if guess.from_keys == other { guess.key_evidence } else { "named by the file's metadata".into() };
            Err(ConvertError::UnsupportedFamily { path, family: other, evidence })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_bijective_and_sized_like_sd_scripts() {
        for (family, unet_lora, te) in [(Family::Sd1, 192, 72), (Family::Sdxl, 722, 264)] {
            let map = NameMap::new(family).unwrap();
            for (k, p) in map.pairs() {
                assert_eq!(map.to_peft(k), Some(p));
                assert_eq!(map.to_kohya(p), Some(k));
            }
            let attn = map.pairs().filter(|(k, _)| k.starts_with("lora_unet") && is_attention(k)).count();
            assert_eq!(attn, unet_lora, "{family} attention modules");
            assert_eq!(map.pairs().filter(|(k, _)| k.starts_with("lora_te")).count(), te, "{family} TE modules");
        }
        // SD1 with conv_dim: 278 U-Net modules (+ conv_in, conv_out, time embedding linears).
        let sd1 = NameMap::new(Family::Sd1).unwrap();
        assert_eq!(sd1.pairs().filter(|(k, _)| k.starts_with("lora_unet")).count(), 278 + 4);
        assert!(NameMap::new(Family::Sd2).is_none());
    }

    fn is_attention(k: &str) -> bool {
        k.contains("transformer_blocks") || k.ends_with("proj_in") || k.ends_with("proj_out")
    }
}
