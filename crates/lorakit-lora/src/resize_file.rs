//! Resizing a whole LoRA file (`lorakit resize`): read every module through the
//! format layer, resize them with [`crate::resize`], and write the result with
//! sd-scripts' metadata updates and freshly computed `sshs_*` hashes.
//!
//! Every layout keeps its names (kohya, PEFT, Flux's BFL/ComfyUI/XLabs, SD3's SAI/ComfyUI). Flux's
//! fused qkv / linear1 and SD3's fused qkv modules are resized as the one linear layer they are, as
//! sd-scripts' `resize_lora.py` does; a `split_qkv` file's block-diagonal layers (rank = parts × the
//! trained rank) come out as plain low-rank pairs, and a new rank below the layer's rank truncates
//! across its parts (the outcome notes how many such layers there were).

use crate::dit_convert::block_diagonal;
use crate::flux;
use crate::keys::{detect_scheme, modules, LoraModule, ModuleError, ModuleSet, Scheme};
use crate::peft_metadata;
use crate::resize::{
    average_fro_line, metadata_updates, resize_modules, verbose_line, ModuleWeights, ResizeError, ResizeSettings,
    ResizedModule,
};
use crate::safetensors_file::{write_lora, LoraFile, LoraFileError, Precision, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a file could not be resized.
#[derive(Debug, thiserror::Error)]
pub enum ResizeFileError {
    #[error(transparent)]
    File(#[from] LoraFileError),
    #[error(transparent)]
    Modules(#[from] ModuleError),
    #[error("{path}: {0}", path = .1.display())]
    Resize(ResizeError, PathBuf),
    #[error(
        "{path}: module {module} stores a LoCon Tucker `lora_mid` weight, which resize does not support yet",
        path = path.display()
    )]
    Tucker { path: PathBuf, module: String },
    #[error("{path}: the input and output are the same file; write the resized LoRA to a new file", path = .0.display())]
    SameFile(PathBuf),
    #[error(
        "{path}: this is a {} file, which resize does not support: its weight change is a {} product, not the \
         up·down pair of a LoRA/LoCon that resize truncates by SVD; \
         resize LoRA/LoCon files, or train the LoHa/LoKr with a smaller network_dim",
        scheme.describe(),
        if *scheme == Scheme::LoHa { "Hadamard" } else { "Kronecker" },
        path = path.display()
    )]
    Lycoris { path: PathBuf, scheme: Scheme },
}

/// What a resize did, for the report.
#[derive(Debug, Clone)]
pub struct ResizeOutcome {
    /// The resized modules in file order.
    pub modules: Vec<ResizedModule>,
    /// One sd-scripts style verbose line per module.
    pub verbose_lines: Vec<String>,
    /// sd-scripts' closing "Average Frobenius norm retention" line.
    pub average_line: String,
    /// Remarks for the user (Flux `split_qkv` layers resized whole).
    pub notes: Vec<String>,
}

/// A file's modules resized in memory: what [`resize_file`] writes, and what the GUI's preview
/// shows, from the same code.
pub struct PlannedResize {
    /// The input, open.
    pub file: LoraFile,
    /// Its modules and the tensors that are not module weights.
    pub set: ModuleSet,
    /// The modules in sd-scripts' order (by name, as it walks a loaded state dict).
    pub ordered: Vec<LoraModule>,
    /// Each of `ordered`, resized.
    pub resized: Vec<ResizedModule>,
    /// Weight values of the modules before resizing.
    pub module_params_before: u64,
}

/// Reads `input` and resizes every module with `settings`, writing nothing.
pub fn plan_resize(input: &Path, settings: &ResizeSettings) -> Result<PlannedResize, ResizeFileError> {
    let file = LoraFile::open(input)?;
    let scheme = detect_scheme(file.tensor_names());
    if matches!(scheme, Scheme::LoHa | Scheme::LoKr) {
        return Err(ResizeFileError::Lycoris { path: input.to_path_buf(), scheme });
    }
    // `modules` refuses every scheme that is not plain up/down pairs (LoHa, LoKr, DoRA, checkpoints).
    let set = modules(&file)?;
    let mut ordered = set.modules.clone();
    // sd-scripts walks a loaded state dict in key order; its report and "last alpha" follow it.
    ordered.sort_by(|a, b| a.name.cmp(&b.name));

    let mut loaded = Vec::with_capacity(ordered.len());
    for m in &ordered {
        if m.mid_key.is_some() {
            return Err(ResizeFileError::Tucker { path: input.to_path_buf(), module: m.name.clone() });
        }
        let shape = |key: &str| file.info(key).map(|i| i.shape.clone()).unwrap_or_default();
        loaded.push((file.tensor_f32(&m.up_key)?, shape(&m.up_key), file.tensor_f32(&m.down_key)?, shape(&m.down_key)));
    }
    let module_params_before = loaded.iter().map(|(up, _, down, _)| (up.len() + down.len()) as u64).sum();
    let weights: Vec<ModuleWeights<'_>> = ordered
        .iter()
        .zip(&loaded)
        .map(|(m, (up, up_shape, down, down_shape))| ModuleWeights {
            name: &m.name,
            up,
            up_shape,
            down,
            down_shape,
            alpha: Some(m.alpha),
        })
        .collect();
    let resized = resize_modules(&weights, settings).map_err(|e| ResizeFileError::Resize(e, input.to_path_buf()))?;
    Ok(PlannedResize { file, set, ordered, resized, module_params_before })
}

/// Resizes `input` into `output` (written atomically, `precision` for every float tensor).
pub fn resize_file(
    input: &Path,
    output: &Path,
    settings: &ResizeSettings,
    precision: Precision,
) -> Result<ResizeOutcome, ResizeFileError> {
    if std::fs::canonicalize(input).ok().is_some_and(|a| std::fs::canonicalize(output).ok() == Some(a)) {
        return Err(ResizeFileError::SameFile(output.to_path_buf()));
    }
    let PlannedResize { file, set, ordered, resized, .. } = plan_resize(input, settings)?;

    // A PEFT file whose alphas live in diffusers' adapter metadata gets them as `.alpha` tensors
    // (diffusers' network alphas) instead: resizing changes them per module.
    let adapter_config = set.scheme == Scheme::Peft && file.metadata().contains_key(peft_metadata::KEY);
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for name in &set.other_tensors {
        let shape = file.info(name).map(|i| i.shape.clone()).unwrap_or_default();
        tensors.insert(name.clone(), Tensor::new(shape, file.tensor_f32(name)?));
    }
    for (m, r) in ordered.iter().zip(&resized) {
        tensors.insert(m.down_key.clone(), Tensor::new(r.down_shape.clone(), r.down.clone()));
        tensors.insert(m.up_key.clone(), Tensor::new(r.up_shape.clone(), r.up.clone()));
        // A file without alpha means alpha = rank; keep that form only while it still holds.
        let alpha_key = m.alpha_key.clone().unwrap_or_else(|| format!("{}.alpha", m.name));
        if m.alpha_key.is_some() || adapter_config || (r.alpha - r.rank as f64).abs() > 1e-6 {
            tensors.insert(alpha_key, Tensor::scalar(r.alpha as f32));
        }
    }

    let mut metadata = file.metadata().clone();
    if adapter_config {
        metadata.remove(peft_metadata::KEY);
    }
    let old_comment = metadata.get("ss_training_comment").cloned();
    for (key, value) in metadata_updates(settings, &resized, old_comment.as_deref()) {
        metadata.insert(key, value);
    }
    write_lora(output, &tensors, &metadata, precision)?;

    let verbose_lines = resized.iter().map(|r| verbose_line(r, settings.method())).collect();
    let average_line = average_fro_line(&resized);
    let split: Vec<&str> = ordered
        .iter()
        .filter(|m| {
            if let Some(n) = crate::sd3::parse(&m.name).filter(|n| n.site.is_fused()) {
                let whole = n.parts == (0..3) && m.out_features % 3 == 0;
                let widths = [m.out_features / 3; 3];
                return whole
                    && file.tensor_f32(&m.up_key).is_ok_and(|up| block_diagonal(&up, m.rank, &widths).is_some());
            }
            let Some(n) = flux::parse(&m.name) else { return false };
            let widths = n.site.part_widths(m.in_features, m.out_features);
            n.site.is_fused()
                && n.parts == (0..n.site.part_count())
                && widths.is_some_and(|w| {
                    file.tensor_f32(&m.up_key).is_ok_and(|up| block_diagonal(&up, m.rank, &w).is_some())
                })
        })
        .map(|m| m.name.as_str())
        .collect();
    let mut notes = Vec::new();
    if let Some(first) = split.first() {
        notes.push(format!(
            "{} fused layers (first: {first}) held sd-scripts split_qkv parts; each was resized as one linear layer, \
             as sd-scripts' resize_lora.py does, and is no longer block-diagonal",
            split.len()
        ));
    }
    Ok(ResizeOutcome { modules: resized, verbose_lines, average_line, notes })
}
