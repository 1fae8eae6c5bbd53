//! Merging LoRAs into one of a chosen rank (`lorakit merge`), with the semantics of sd-scripts'
//! `networks/svd_merge_lora.py` (spec §12.2): per module the weighted delta
//! `Σ_k ratio_k · (alpha_k / rank_k) · up_k · down_k` is re-factored by SVD to
//! `min(rank, in, out)` (`conv_rank` for k×k convs), `up = U·diag(S)`, `down = Vᵀ`, both clamped to
//! ±(0.99 quantile of their values) and saved with `alpha = rank`.
//!
//! The dense `out×in` delta is never formed: the sum equals the product of the concatenated factors
//! `[c₁·up₁ | c₂·up₂ | …] · [down₁; down₂; …]`, whose exact SVD [`LowRankSvd`] computes in factor
//! space. `--lbws` block weights are not supported.
//!
//! Flux.1 and SD3 inputs in other layouts (diffusers/ai-toolkit, ComfyUI/BFL/SAI, XLabs) are read under
//! their kohya names first ([`crate::convert::convert_lora`]), so the same layer merges whatever layout
//! each file uses; fused qkv / linear1 layers are merged whole, like any linear module.

use crate::convert::{convert_lora, ConvertError, Target};
use crate::keys::{detect_scheme, guess_family, modules, Family, LoraModule, ModuleError, ModuleKind, Scheme};
use crate::resize::{LowRankSvd, ResizeError};
use crate::safetensors_file::{write_lora, LoraFile, LoraFileError, Precision, SshsHashes, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// sd-scripts' `CLAMP_QUANTILE`: merged factors are clamped to ± this quantile of their values.
pub const CLAMP_QUANTILE: f64 = 0.99;

/// Why a merge could not be done. Display is one line naming the file or module involved.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// No input files.
    #[error("no input LoRAs given; pass one or more FILE[:RATIO] arguments")]
    NoInputs,
    /// `--rank` or `--conv-rank` is 0.
    #[error("{flag} must be at least 1")]
    ZeroRank {
        /// The offending option.
        flag: &'static str,
    },
    /// A ratio is NaN or infinite.
    #[error("{}: ratio {ratio} is not a finite number; give a ratio such as 0.7 or -1", path.display())]
    BadRatio {
        /// The input.
        path: PathBuf,
        /// Its ratio.
        ratio: f32,
    },
    /// The output path names one of the inputs.
    #[error("{}: the output is one of the inputs; write the merged LoRA to a new file", .0.display())]
    OutputIsInput(PathBuf),
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] LoraFileError),
    /// A file's tensors do not form LoRA modules.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// A Flux input could not be read under kohya names.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// Not a kohya LoRA/LoCon file.
    #[error(
        "{}: this is a {scheme}; merge works on kohya LoRA/LoCon files (lora_down/lora_up pairs) — \
         convert it to kohya format first or leave it out",
        path.display()
    )]
    Unsupported {
        /// The input.
        path: PathBuf,
        /// What it is.
        scheme: Scheme,
    },
    /// A LoCon module in Tucker form (with `lora_mid`).
    #[error("{}: module `{module}` stores a LoCon Tucker `lora_mid` weight, which merge does not support", path.display())]
    Tucker {
        /// The input.
        path: PathBuf,
        /// The module.
        module: String,
    },
    /// Two inputs are LoRAs for different base models.
    #[error(
        "{} is a {first_family} LoRA but {} is a {other_family} LoRA; merge only LoRAs of the same base model",
        first.display(),
        other.display()
    )]
    FamilyMismatch {
        /// The first input with a known family.
        first: PathBuf,
        /// Its family.
        first_family: Family,
        /// The disagreeing input.
        other: PathBuf,
        /// Its family.
        other_family: Family,
    },
    /// The same module has different shapes in two inputs.
    #[error(
        "module `{module}` is {first_shape} in {} but {other_shape} in {}; these LoRAs were trained on different models",
        first.display(),
        other.display()
    )]
    ShapeMismatch {
        /// The module.
        module: String,
        /// The first input having it.
        first: PathBuf,
        /// Its shape there.
        first_shape: String,
        /// The disagreeing input.
        other: PathBuf,
        /// Its shape there.
        other_shape: String,
    },
    /// The SVD of a module failed (non-finite weights or no convergence).
    #[error("module `{module}`: {source}; check the inputs with `lorakit inspect`")]
    Svd {
        /// The module.
        module: String,
        /// What went wrong.
        source: ResizeError,
    },
}

/// Ranks of the merged LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeSettings {
    rank: usize,
    conv_rank: usize,
}

impl MergeSettings {
    /// `rank` for linear and 1×1 modules; `conv_rank` (default `rank`) for k×k convs. Both ≥ 1.
    pub fn new(rank: usize, conv_rank: Option<usize>) -> Result<Self, MergeError> {
        if rank == 0 {
            return Err(MergeError::ZeroRank { flag: "--rank" });
        }
        let conv_rank = conv_rank.unwrap_or(rank);
        if conv_rank == 0 {
            return Err(MergeError::ZeroRank { flag: "--conv-rank" });
        }
        Ok(Self { rank, conv_rank })
    }

    /// Rank for linear and 1×1 conv modules.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Rank for k×k conv modules.
    pub fn conv_rank(&self) -> usize {
        self.conv_rank
    }
}

/// One input's term in a module's sum: `coeff · up · down` (`up` row-major `rows×rank`, `down`
/// row-major `rank×cols`, convs flattened).
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    /// Up factor.
    pub up: &'a [f32],
    /// Down factor.
    pub down: &'a [f32],
    /// Rank of the pair.
    pub rank: usize,
    /// `ratio · alpha / rank`.
    pub coeff: f32,
}

/// One module's merged factors.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedFactors {
    /// Row-major `rows×rank`: `U[:, :rank]·diag(S[:rank])`, clamped.
    pub up: Vec<f32>,
    /// Row-major `rank×cols`: `Vᵀ[:rank]`, clamped.
    pub down: Vec<f32>,
    /// The rank kept.
    pub rank: usize,
    /// The clamp bound `hi` (values were clamped to `[−hi, hi]`).
    pub clamp: f32,
}

/// `torch.quantile(values, q)` with its default linear interpolation: sorted `x`, position
/// `q·(n−1)`, interpolated between its neighbours. `None` for an empty slice.
pub fn quantile_linear(values: &[f32], q: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (a, b) = (f64::from(sorted[lo]), f64::from(sorted[hi]));
    Some((a + (b - a) * (pos - lo as f64)) as f32)
}

/// The unclamped re-factoring of one module: the SVD of `Σ coeff·up·down` (`rows×cols`) truncated
/// to `rank` (`1 ≤ rank ≤ min(rows, cols)`), as `(up, down)` = `(U·diag(S), Vᵀ)`.
pub fn svd_merge(
    contributions: &[Contribution<'_>],
    rows: usize,
    cols: usize,
    rank: usize,
) -> Result<(Vec<f32>, Vec<f32>), ResizeError> {
    if rank == 0 || rank > rows.min(cols) {
        return Err(ResizeError::Shape(format!("rank {rank} does not fit a {rows}×{cols} module")));
    }
    let terms: Vec<&Contribution<'_>> = contributions.iter().filter(|c| c.coeff != 0.0).collect();
    let total: usize = terms.iter().map(|c| c.rank).sum();
    if total == 0 {
        // Zero delta: U·S is 0; Vᵀ rows are any orthonormal set (sd-scripts' SVD gives unit vectors).
        let mut down = vec![0f32; rank * cols];
        (0..rank).for_each(|j| down[j * cols + j] = 1.0);
        return Ok((vec![0f32; rows * rank], down));
    }
    let mut up_cat = vec![0f32; rows * total];
    let mut down_cat = Vec::with_capacity(total * cols);
    let mut offset = 0;
    for c in &terms {
        if c.up.len() != rows * c.rank || c.down.len() != c.rank * cols {
            return Err(ResizeError::Shape(format!(
                "factors of {} and {} values do not form {rows}×{r} · {r}×{cols}",
                c.up.len(),
                c.down.len(),
                r = c.rank
            )));
        }
        for i in 0..rows {
            let src = &c.up[i * c.rank..(i + 1) * c.rank];
            for (dst, &x) in up_cat[i * total + offset..i * total + offset + c.rank].iter_mut().zip(src) {
                *dst = c.coeff * x;
            }
        }
        down_cat.extend_from_slice(c.down);
        offset += c.rank;
    }
    let svd = LowRankSvd::from_factors(&up_cat, &down_cat, rows, total, cols)?;
    svd.truncate(rank).ok_or_else(|| ResizeError::Shape(format!("rank {rank} exceeds {rows}×{cols}")))
}

/// sd-scripts' clamp: `hi` = the `q` quantile ([`quantile_linear`]) of all values of `up` and
/// `down` concatenated; both are clamped to `[−hi, hi]` in place. Returns `hi`.
pub fn clamp_factors(up: &mut [f32], down: &mut [f32], q: f64) -> f32 {
    let all: Vec<f32> = up.iter().chain(down.iter()).copied().collect();
    let hi = quantile_linear(&all, q).unwrap_or(0.0);
    // torch.clamp(x, lo, hi) = min(max(x, lo), hi)
    for x in up.iter_mut().chain(down.iter_mut()) {
        *x = x.max(-hi).min(hi);
    }
    hi
}

/// Merges one module as sd-scripts does: [`svd_merge`], then [`clamp_factors`] at
/// [`CLAMP_QUANTILE`].
pub fn merge_module(
    contributions: &[Contribution<'_>],
    rows: usize,
    cols: usize,
    rank: usize,
) -> Result<MergedFactors, ResizeError> {
    let (mut up, mut down) = svd_merge(contributions, rows, cols, rank)?;
    let clamp = clamp_factors(&mut up, &mut down, CLAMP_QUANTILE);
    Ok(MergedFactors { up, down, rank, clamp })
}

/// One merged module, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedModule {
    /// kohya module name.
    pub name: String,
    /// How many inputs contributed to it.
    pub sources: usize,
    /// Its new rank.
    pub rank: usize,
    /// The clamp bound applied.
    pub clamp: f32,
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeOutcome {
    /// Merged modules in name order.
    pub modules: Vec<MergedModule>,
    /// The base model family the inputs agree on (`Unknown` if none could be told).
    pub family: Family,
    /// The metadata written (including the `sshs_*` hashes).
    pub metadata: BTreeMap<String, String>,
    /// The hashes written.
    pub hashes: SshsHashes,
}

/// One input, opened and checked.
struct Input {
    path: PathBuf,
    ratio: f32,
    file: LoraFile,
    modules: Vec<LoraModule>,
}

/// A merged module ready to write: name, up shape, factors, down shape, number of sources.
type WrittenModule = (String, Vec<usize>, MergedFactors, Vec<usize>, usize);

/// Shape signature of a module, compared across inputs.
fn shape_text(m: &LoraModule) -> String {
    format!("{} {}→{}", m.kind, m.in_features, m.out_features)
}

/// Merges `inputs` (file, ratio) into `output` (written atomically, every float tensor cast to
/// `precision`), as sd-scripts' `svd_merge_lora.py` does. Modules present in only some inputs
/// get only those inputs' terms.
pub fn merge_files(
    inputs: &[(PathBuf, f32)],
    output: &Path,
    settings: &MergeSettings,
    precision: Precision,
) -> Result<MergeOutcome, MergeError> {
    if inputs.is_empty() {
        return Err(MergeError::NoInputs);
    }
    let out_canon = std::fs::canonicalize(output).ok();
    let mut opened = Vec::with_capacity(inputs.len());
    let mut family: Option<(Family, PathBuf)> = None;
    for (path, ratio) in inputs {
        if !ratio.is_finite() {
            return Err(MergeError::BadRatio { path: path.clone(), ratio: *ratio });
        }
        if out_canon.is_some() && std::fs::canonicalize(path).ok() == out_canon {
            return Err(MergeError::OutputIsInput(output.to_path_buf()));
        }
        let file = flux_as_kohya(LoraFile::open(path)?)?;
        let scheme = detect_scheme(file.tensor_names());
        if scheme != Scheme::Kohya {
            return Err(MergeError::Unsupported { path: path.clone(), scheme });
        }
        let set = modules(&file)?;
        if let Some(m) = set.modules.iter().find(|m| m.mid_key.is_some()) {
            return Err(MergeError::Tucker { path: path.clone(), module: m.name.clone() });
        }
        let this = guess_family(&file).family;
        match &family {
            Some((f, first)) if this != Family::Unknown && this != *f => {
                return Err(MergeError::FamilyMismatch {
                    first: first.clone(),
                    first_family: *f,
                    other: path.clone(),
                    other_family: this,
                });
            }
            None if this != Family::Unknown => family = Some((this, path.clone())),
            _ => {}
        }
        opened.push(Input { path: path.clone(), ratio: *ratio, file, modules: set.modules });
    }

    // Module name → (input index, module index) of every input having it, shapes checked.
    let mut plan: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for (i, input) in opened.iter().enumerate() {
        for (j, m) in input.modules.iter().enumerate() {
            let entry = plan.entry(m.name.as_str()).or_default();
            if let Some(&(fi, fj)) = entry.first() {
                let first = &opened[fi].modules[fj];
                if (first.kind, first.in_features, first.out_features) != (m.kind, m.in_features, m.out_features) {
                    return Err(MergeError::ShapeMismatch {
                        module: m.name.clone(),
                        first: opened[fi].path.clone(),
                        first_shape: shape_text(first),
                        other: input.path.clone(),
                        other_shape: shape_text(m),
                    });
                }
            }
            entry.push((i, j));
        }
    }

    let merged: Vec<WrittenModule> = plan
        .par_iter()
        .map(|(&name, members)| {
            let (fi, fj) = members[0];
            let first = &opened[fi].modules[fj];
            let mut loaded = Vec::with_capacity(members.len());
            for &(i, j) in members {
                let m = &opened[i].modules[j];
                let file = &opened[i].file;
                loaded.push((file.tensor_f32(&m.up_key)?, file.tensor_f32(&m.down_key)?, m.rank, m.scale()));
            }
            let contributions: Vec<Contribution<'_>> = members
                .iter()
                .zip(&loaded)
                .map(|(&(i, _), (up, down, rank, scale))| Contribution {
                    up,
                    down,
                    rank: *rank,
                    coeff: opened[i].ratio * scale,
                })
                .collect();
            let (rows, cols) = (first.out_features, first.in_features);
            // sd-scripts caps by the unflattened in_channels of a k×k conv.
            let (target, in_dim, down_tail) = match first.kind {
                ModuleKind::Conv { kh, kw } => (settings.conv_rank, cols / (kh * kw), vec![cols / (kh * kw), kh, kw]),
                ModuleKind::Conv1x1 => (settings.rank, cols, vec![cols, 1, 1]),
                ModuleKind::Linear => (settings.rank, cols, vec![cols]),
            };
            let rank = target.min(in_dim).min(rows);
            let factors = merge_module(&contributions, rows, cols, rank)
                .map_err(|source| MergeError::Svd { module: name.to_string(), source })?;
            let up_shape = if first.kind == ModuleKind::Linear { vec![rows, rank] } else { vec![rows, rank, 1, 1] };
            let down_shape: Vec<usize> = std::iter::once(rank).chain(down_tail).collect();
            Ok((name.to_string(), up_shape, factors, down_shape, members.len()))
        })
        .collect::<Result<_, MergeError>>()?;

    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut report = Vec::with_capacity(merged.len());
    for (name, up_shape, f, down_shape, sources) in merged {
        report.push(MergedModule { name: name.clone(), sources, rank: f.rank, clamp: f.clamp });
        tensors.insert(format!("{name}.alpha"), Tensor::scalar(f.rank as f32));
        tensors.insert(format!("{name}.lora_up.weight"), Tensor::new(up_shape, f.up));
        tensors.insert(format!("{name}.lora_down.weight"), Tensor::new(down_shape, f.down));
    }

    let family = family.map(|(f, _)| f).unwrap_or(Family::Unknown);
    let mut metadata = merge_metadata(&opened, settings, family, output);
    let hashes = write_lora(output, &tensors, &metadata, precision)?;
    metadata.insert("sshs_model_hash".into(), hashes.model_hash.clone());
    metadata.insert("sshs_legacy_hash".into(), hashes.legacy_hash.clone());
    Ok(MergeOutcome { modules: report, family, metadata, hashes })
}

/// A Flux or SD3 LoRA in another layout, read under its kohya names (in memory); any other file
/// as is.
fn flux_as_kohya(file: LoraFile) -> Result<LoraFile, MergeError> {
    let plain = detect_scheme(file.tensor_names()).is_plain_lora();
    let family = guess_family(&file).family;
    if !plain || !matches!(family, Family::Flux | Family::Sd3) {
        return Ok(file);
    }
    match convert_lora(&file, Target::Kohya, Some(family)) {
        Ok((bytes, _)) => Ok(LoraFile::from_bytes(bytes, file.path())?),
        Err(ConvertError::AlreadyTarget { .. }) => Ok(file),
        Err(e) => Err(e.into()),
    }
}

/// sd-scripts' merge metadata: `build_minimum_network_metadata` (`ss_v2` and
/// `ss_base_model_version` from the first input having them) plus modelspec with `merged_from`,
/// and `lorakit.merge_sources` (file names and ratios as JSON).
fn merge_metadata(
    inputs: &[Input],
    settings: &MergeSettings,
    family: Family,
    output: &Path,
) -> BTreeMap<String, String> {
    let first_with = |key: &str| inputs.iter().find_map(|i| i.file.metadata().get(key).cloned());
    let v2 = first_with("ss_v2");
    let base_model = first_with("ss_base_model_version");
    let mut md = BTreeMap::new();
    md.insert("ss_network_module".to_string(), "networks.lora".to_string());
    md.insert("ss_network_dim".to_string(), settings.rank.to_string());
    md.insert("ss_network_alpha".to_string(), settings.rank.to_string());
    md.insert(
        "ss_network_args".to_string(),
        format!("{{\"conv_dim\": {c}, \"conv_alpha\": {c}}}", c = settings.conv_rank),
    );
    if let Some(v) = &v2 {
        md.insert("ss_v2".to_string(), v.clone());
    }
    if let Some(b) = &base_model {
        md.insert("ss_base_model_version".to_string(), b.clone());
    }

    // sd-scripts: sdxl from the base model name, v2 (⇒ v-prediction) from ss_v2; the key-based
    // family fills in when metadata is missing.
    let sdxl = base_model.as_deref().is_some_and(|b| b.to_lowercase().starts_with("sdxl")) || family == Family::Sdxl;
    let v2 = v2.as_deref() == Some("True") || family == Family::Sd2;
    let stability = "https://github.com/Stability-AI/generative-models";
    let (arch, implementation, reso, prediction) = match family {
        Family::Flux | Family::Sd3 => {
            let copied = first_with("modelspec.architecture");
            let default = if family == Family::Flux { "flux-1/lora" } else { "stable-diffusion-3/lora" };
            let implementation = first_with("modelspec.implementation").unwrap_or_else(|| {
                if family == Family::Flux { "https://github.com/black-forest-labs/flux" } else { "diffusers" }.into()
            });
            let prediction = (family == Family::Sd3).then_some("epsilon");
            (copied.unwrap_or_else(|| default.into()), implementation, "1024x1024", prediction)
        }
        _ if sdxl => ("stable-diffusion-xl-v1-base/lora".into(), stability.into(), "1024x1024", Some("epsilon")),
        _ if v2 => ("stable-diffusion-v2-768-v/lora".into(), "diffusers".into(), "768x768", Some("v")),
        _ => ("stable-diffusion-v1/lora".into(), "diffusers".into(), "512x512", Some("epsilon")),
    };
    let titles: Vec<String> = inputs
        .iter()
        .map(|i| i.file.metadata().get("modelspec.title").cloned().unwrap_or_else(|| file_stem(&i.path)))
        .collect();
    let sources: Vec<serde_json::Value> = inputs
        .iter()
        .map(|i| {
            let name = i.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            serde_json::json!({ "file": name, "ratio": i.ratio })
        })
        .collect();
    let spec = [
        ("sai_model_spec", "1.0.1".to_string()),
        ("architecture", arch),
        ("implementation", implementation),
        ("title", file_stem(output)),
        ("date", iso_date_utc(std::time::SystemTime::now())),
        ("resolution", reso.to_string()),
        ("merged_from", titles.join(", ")),
        ("implementation_version", format!("lorakit/{}", env!("CARGO_PKG_VERSION"))),
    ];
    for (k, v) in spec {
        md.insert(format!("modelspec.{k}"), v);
    }
    if let Some(p) = prediction {
        md.insert("modelspec.prediction_type".into(), p.into());
    }
    md.insert("lorakit.merge_sources".into(), serde_json::Value::Array(sources).to_string());
    md
}

fn file_stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC, whole seconds (modelspec's date form).
fn iso_date_utc(now: std::time::SystemTime) -> String {
    let secs = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (year, month, day, h, m, s) = crate::metadata::civil_from_unix(secs as i64);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_date_matches_known_instants() {
        let at = |s: u64| iso_date_utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20");
    }
}
