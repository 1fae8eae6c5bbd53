//! `lorakit inspect`: what a LoRA file holds and how strong it is, block by
//! block. The Frobenius norm of a module's effective weight change
//! `scale · up · down` is computed in factor space, and aggregated per block.
//!
//! ‖U·D‖²_F = trace((UᵀU)(DDᵀ)): two r×r Gram matrices instead of the m×n
//! product, so inspecting an SDXL LoRA takes milliseconds, not minutes.

use crate::blocks::{block_of, Block};
use crate::convert::NameMap;
use crate::dit_convert::block_diagonal;
use crate::flux::{self, Layout};
use crate::keys::{detect_scheme, guess_family, modules, Component, Family, FamilyGuess, ModuleError, Scheme};
use crate::lycoris::lycoris_modules;
use crate::metadata::{DimValue, LoraMetadata};
use crate::safetensors_file::{LoraFile, LoraFileError};
use crate::sd3;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// ‖up · down‖_F for `up` (out × rank, row-major) and `down` (rank × in, row-major), in f64.
/// Returns NaN when the inputs hold NaN/Inf or their sizes do not match the shape.
pub fn product_norm(up: &[f32], down: &[f32], out: usize, rank: usize, inn: usize) -> f64 {
    if up.len() != out * rank || down.len() != rank * inn {
        return f64::NAN;
    }
    // G_up[a][b] = Σ_i up[i][a]·up[i][b];  G_down[a][b] = Σ_j down[a][j]·down[b][j].
    let mut g_up = vec![0f64; rank * rank];
    for row in up.chunks_exact(rank.max(1)) {
        for a in 0..rank {
            let ua = f64::from(row[a]);
            for b in a..rank {
                g_up[a * rank + b] += ua * f64::from(row[b]);
            }
        }
    }
    let mut g_down = vec![0f64; rank * rank];
    for a in 0..rank {
        let ra = &down[a * inn..(a + 1) * inn];
        for b in a..rank {
            let rb = &down[b * inn..(b + 1) * inn];
            g_down[a * rank + b] = ra.iter().zip(rb).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        }
    }
    // trace(G_up · G_down) with both symmetric: Σ_ab G_up[a][b]·G_down[a][b].
    let mut sum = 0f64;
    for a in 0..rank {
        for b in 0..rank {
            let (i, j) = if a <= b { (a, b) } else { (b, a) };
            sum += g_up[i * rank + j] * g_down[i * rank + j];
        }
    }
    sum.max(0.0).sqrt()
}

/// Number of NaN or infinite values.
pub fn count_non_finite(values: &[f32]) -> usize {
    values.iter().filter(|v| !v.is_finite()).count()
}

/// The tensors of `file` holding NaN or ±Inf values, with their counts (tensors of dtypes with
/// no float reading are skipped). Reads every tensor, in parallel.
pub fn non_finite_tensors(file: &LoraFile) -> BTreeMap<String, usize> {
    file.tensor_names()
        .collect::<Vec<_>>()
        .par_iter()
        .filter_map(|name| {
            let n = file.tensor_f32(name).map(|v| count_non_finite(&v)).unwrap_or(0);
            (n > 0).then(|| (name.to_string(), n))
        })
        .collect()
}

/// The module a tensor belongs to: its name without the `.weight` ending and the part after
/// the last dot (`lora_unet_x.lora_up.weight`, `lora_unet_x.alpha`, `lora_unet_x.hada_w1_a`
/// → `lora_unet_x`; PEFT's `unet.a.b.lora_A.weight` → `unet.a.b`).
pub fn module_of_tensor(name: &str) -> &str {
    let base = name.strip_suffix(".weight").unwrap_or(name);
    base.rsplit_once('.').map_or(base, |(module, _)| module)
}

/// The modules of a LoRA file whose tensors hold NaN or ±Inf, in name order, with how many
/// such values each has: a module listed here turns whatever it is applied to into NaN.
pub fn non_finite_modules(path: &Path) -> Result<Vec<(String, usize)>, LoraFileError> {
    let file = LoraFile::open(path)?;
    let mut modules: BTreeMap<String, usize> = BTreeMap::new();
    for (tensor, n) in non_finite_tensors(&file) {
        *modules.entry(module_of_tensor(&tensor).to_owned()).or_default() += n;
    }
    Ok(modules.into_iter().collect())
}

/// `Some("FILE: 3 modules hold NaN/Inf values: a (4), …")` when the LoRA at `path` has
/// non-finite weights (the first five modules named), `None` when every value is finite. The
/// one check `generate`, `merge`, `resize` and `convert` make before using a file.
pub fn non_finite_summary(path: &Path) -> Result<Option<String>, LoraFileError> {
    let modules = non_finite_modules(path)?;
    Ok((!modules.is_empty()).then(|| format!("{}: {}", path.display(), describe_non_finite(&modules, 5))))
}

/// Refuses a LoRA with NaN/Inf weights: `Err` names the file and its first modules and says
/// that `consequence` (e.g. "generating with it would give a black image") is why nothing was
/// done, and what to do. File errors are returned as their message.
pub fn ensure_finite(path: &Path, consequence: &str) -> Result<(), String> {
    match non_finite_summary(path) {
        Ok(None) => Ok(()),
        Ok(Some(problem)) => Err(format!(
            "{problem}. {consequence}, so nothing was done; the file is broken (often a training run whose loss \
             diverged): use an earlier epoch's file (`lorakit inspect` lists every such tensor)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// One line naming non-finite modules, the first `shown` with their counts, then how many more:
/// `3 modules hold NaN/Inf values: a (4), b (1), … and 1 more`.
pub fn describe_non_finite(modules: &[(String, usize)], shown: usize) -> String {
    let listed: Vec<String> = modules.iter().take(shown).map(|(m, n)| format!("{m} ({n})")).collect();
    let more = modules.len().saturating_sub(shown);
    format!(
        "{} module{} hold{} NaN/Inf values: {}{}",
        modules.len(),
        if modules.len() == 1 { "" } else { "s" },
        if modules.len() == 1 { "s" } else { "" },
        listed.join(", "),
        if more > 0 { format!(" and {more} more") } else { String::new() }
    )
}

/// Norm statistics of one block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockStat {
    /// Block label (`IN04`, `M00`, `TE1`, …).
    pub block: String,
    /// Modules in the block.
    pub modules: usize,
    /// Mean of ‖scale·up·down‖_F over its modules.
    pub mean_norm: f64,
    /// Largest ‖scale·up·down‖_F among its modules.
    pub max_norm: f64,
}

/// Groups `(block, norm)` pairs into per-block mean and max, in model order.
/// Non-finite norms are left out of the statistics (they are reported elsewhere).
pub fn block_stats<'a>(norms: impl IntoIterator<Item = (&'a Block, f64)>) -> Vec<BlockStat> {
    let mut groups: BTreeMap<Block, Vec<f64>> = BTreeMap::new();
    for (block, norm) in norms {
        let entry = groups.entry(block.clone()).or_default();
        if norm.is_finite() {
            entry.push(norm);
        }
    }
    groups
        .into_iter()
        .map(|(block, v)| BlockStat {
            block: block.to_string(),
            modules: v.len(),
            mean_norm: if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 },
            max_norm: v.iter().copied().fold(f64::NAN, f64::max),
        })
        .collect()
}

/// One module of an inspected file.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleReport {
    /// kohya (or PEFT) module name.
    pub name: String,
    /// `TE`, `TE1`, …, `UNet`, `transformer`.
    pub component: &'static str,
    /// Block label (`IN04`, `M00`, `TE`, …).
    pub block: String,
    /// `linear`, `conv 1x1`, `conv 3x3`.
    pub kind: String,
    /// Input features (convs: in_channels × kh × kw).
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Rank (0: a LyCORIS LoKr module whose factors are both stored whole).
    pub rank: usize,
    /// Alpha (missing alpha = rank).
    pub alpha: f32,
    /// alpha / rank.
    pub scale: f32,
    /// ‖ΔW‖_F: ‖scale · up · down‖_F for LoRA, the LoHa/LoKr product for LyCORIS (NaN when the
    /// weights hold NaN/Inf, or for LyCORIS' Tucker form).
    pub norm: f64,
}

/// Everything `lorakit inspect` shows about one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: String,
    /// Size in bytes.
    pub file_size: u64,
    /// Recognised format (`kohya LoRA/LoCon`, `PEFT/diffusers LoRA`, `LyCORIS LoHa`, …).
    pub format: String,
    /// Why modules are not listed (formats inspect cannot decompose yet).
    pub unsupported: Option<String>,
    /// Base model family guess (with the variant when metadata names it: `Flux (dev)`).
    pub base_model: String,
    /// How a Flux LoRA's modules are named (`kohya/sd-scripts`, `diffusers/PEFT`, `XLabs`, …).
    pub layout: Option<String>,
    /// Remarks about the modules (e.g. sd-scripts `split_qkv` layers and their scale).
    pub notes: Vec<String>,
    /// Disagreement between metadata and keys about the base model.
    pub base_model_conflict: Option<String>,
    /// Tensor count per dtype.
    pub dtypes: BTreeMap<String, usize>,
    /// Parsed `ss_*` / `modelspec.*` metadata.
    pub metadata: LoraMetadata,
    /// Module count per component.
    pub modules_per_component: BTreeMap<String, usize>,
    /// Module count per kind.
    pub modules_per_kind: BTreeMap<String, usize>,
    /// Module count per rank.
    pub ranks: BTreeMap<usize, usize>,
    /// Module count per alpha (as text, e.g. "4").
    pub alphas: BTreeMap<String, usize>,
    /// Tensors holding NaN or Inf values, with their count.
    pub non_finite: BTreeMap<String, usize>,
    /// Per-block norm statistics, in model order.
    pub blocks: Vec<BlockStat>,
    /// Every module.
    pub modules: Vec<ModuleReport>,
}

/// Why a file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    File(#[from] LoraFileError),
    #[error(transparent)]
    Modules(#[from] ModuleError),
}

fn trim_float(v: f32) -> String {
    let s = format!("{v}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// Reads `path` and computes its report (module norms in parallel).
pub fn inspect_file(path: &Path) -> Result<FileReport, InspectError> {
    let file = LoraFile::open(path)?;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for name in file.tensor_names() {
        if let Some(info) = file.info(name) {
            *dtypes.entry(info.dtype.to_string()).or_default() += 1;
        }
    }
    let non_finite = non_finite_tensors(&file);
    let family = guess_family(&file);
    let scheme = detect_scheme(file.tensor_names());
    let mut report = FileReport {
        path: path.display().to_string(),
        file_size: file.file_len() as u64,
        format: scheme.describe().to_owned(),
        unsupported: None,
        base_model: family.describe(),
        layout: None,
        notes: Vec::new(),
        base_model_conflict: family.conflict.clone(),
        dtypes,
        metadata: LoraMetadata::parse(file.metadata()),
        modules_per_component: BTreeMap::new(),
        modules_per_kind: BTreeMap::new(),
        ranks: BTreeMap::new(),
        alphas: BTreeMap::new(),
        non_finite,
        blocks: Vec::new(),
        modules: Vec::new(),
    };
    if matches!(scheme, Scheme::LoHa | Scheme::LoKr) {
        let lycoris = lycoris_modules(&file)?;
        let none = Naming::Kohya;
        let module_reports: Vec<ModuleReport> = lycoris
            .par_iter()
            .map(|m| ModuleReport {
                name: m.name.clone(),
                component: m.component.label(),
                block: block_label(&m.name, &none).to_string(),
                kind: if m.tucker { format!("{} (Tucker)", m.kind) } else { m.kind.to_string() },
                in_features: m.in_features,
                out_features: m.out_features,
                rank: m.rank.unwrap_or(0),
                alpha: m.alpha,
                scale: m.scale(),
                norm: m.norm(&file),
            })
            .collect();
        if lycoris.iter().any(|m| m.tucker) {
            report.unsupported =
                Some("modules in LyCORIS' Tucker form (hada_t1/t2, lokr_t2) have no norm yet (shown as NaN)".into());
        }
        finish_report(&mut report, module_reports, &none);
        return Ok(report);
    }
    if !scheme.is_plain_lora() {
        report.unsupported = Some(format!(
            "{} files are recognised but not decomposed into modules yet: block norms are not available",
            scheme.describe()
        ));
        return Ok(report);
    }
    let set = modules(&file)?;
    // Flux names in every layout, and PEFT names (diffusers paths) through the kohya name map.
    let names = if family.family == Family::Flux {
        Naming::Flux
    } else if family.family == Family::Sd3 {
        Naming::Sd3
    } else if scheme == Scheme::Peft {
        NameMap::new(family.family).map_or(Naming::Kohya, Naming::Peft)
    } else {
        Naming::Kohya
    };
    if matches!(names, Naming::Flux) {
        let layouts: std::collections::BTreeSet<Layout> =
            set.modules.iter().filter_map(|m| flux::parse(&m.name)).map(|n| n.layout).collect();
        let listed: Vec<String> = layouts.iter().map(|l| l.to_string()).collect();
        report.layout = (!listed.is_empty()).then(|| listed.join(" + "));
        let unknown = set.modules.iter().filter(|m| flux::parse(&m.name).is_none()).count();
        if unknown > 0 {
            report.notes.push(format!("{unknown} modules name no Flux.1 layer (block OTHER)"));
        }
        if let Some(note) = split_qkv_note(&file, &set.modules) {
            report.notes.push(note);
        }
    }
    if matches!(names, Naming::Sd3) {
        sd3_report(&mut report, &file, &set.modules, &family);
    }
    let module_reports: Vec<ModuleReport> = set
        .modules
        .par_iter()
        .map(|m| {
            let norm = match (file.tensor_f32(&m.up_key), file.tensor_f32(&m.down_key)) {
                (Ok(up), Ok(down)) if m.mid_key.is_none() => {
                    product_norm(&up, &down, m.out_features, m.rank, m.in_features) * f64::from(m.scale())
                }
                _ => f64::NAN,
            };
            ModuleReport {
                name: m.name.clone(),
                component: component_label(&m.name, m.component, &names),
                block: block_label(&m.name, &names).to_string(),
                kind: m.kind.to_string(),
                in_features: m.in_features,
                out_features: m.out_features,
                rank: m.rank,
                alpha: m.alpha,
                scale: m.scale(),
                norm,
            }
        })
        .collect();
    finish_report(&mut report, module_reports, &names);
    Ok(report)
}

/// How module names are read for their blocks.
enum Naming {
    /// kohya names (`block_of` reads them directly).
    Kohya,
    /// PEFT names of SD1.5/SDXL, through the kohya name map.
    Peft(NameMap),
    /// Flux names in any layout ([`flux::parse`]).
    Flux,
    /// SD3 names in any layout ([`sd3::parse`]).
    Sd3,
}

/// Counts, block statistics and the module list of a report.
fn finish_report(report: &mut FileReport, module_reports: Vec<ModuleReport>, names: &Naming) {
    for m in &module_reports {
        *report.modules_per_component.entry(m.component.to_owned()).or_default() += 1;
        *report.modules_per_kind.entry(m.kind.clone()).or_default() += 1;
        *report.ranks.entry(m.rank).or_default() += 1;
        *report.alphas.entry(trim_float(m.alpha)).or_default() += 1;
    }
    let blocks: Vec<(Block, f64)> = module_reports.iter().map(|r| (block_label(&r.name, names), r.norm)).collect();
    report.blocks = block_stats(blocks.iter().map(|(b, n)| (b, *n)));
    report.modules = module_reports;
}

/// The block of a module: Flux names in any layout, PEFT names via their kohya name.
fn block_label(name: &str, names: &Naming) -> Block {
    match names {
        Naming::Flux => flux::parse(name).map_or_else(|| block_of(name), |n| n.site.block()),
        Naming::Sd3 => sd3::parse(name).map_or_else(|| block_of(name), |n| n.site.block()),
        Naming::Peft(map) => map.to_kohya(name).map_or_else(|| block_of(name), block_of),
        Naming::Kohya => block_of(name),
    }
}

/// The component label; a Flux module's comes from the layer it names (T5 under diffusers'
/// `text_encoder_2.` is TE3, BFL/XLabs names without a prefix are the denoiser's).
fn component_label(name: &str, component: Component, names: &Naming) -> &'static str {
    if let (Naming::Sd3, Some(n)) = (names, sd3::parse(name)) {
        return n.site.component().label();
    }
    match (names, flux::parse(name)) {
        (Naming::Flux, Some(n)) if n.site.component() != Component::Unet => n.site.component().label(),
        (Naming::Flux, Some(_)) if component == Component::Other => Component::Unet.label(),
        _ => component.label(),
    }
}

/// An SD3 file's layout, variant (3.5 Medium / 3.5 Large when its modules show it), modules that
/// name no SD3 layer, and sd-scripts `split_qkv` layers (block-diagonal `up`, scale alpha/rank of
/// the file as every loader applies it).
fn sd3_report(report: &mut FileReport, file: &LoraFile, modules: &[crate::keys::LoraModule], family: &FamilyGuess) {
    let layouts: std::collections::BTreeSet<sd3::Layout> =
        modules.iter().filter_map(|m| sd3::parse(&m.name)).map(|n| n.layout).collect();
    let listed: Vec<String> = layouts.iter().map(|l| l.to_string()).collect();
    report.layout = (!listed.is_empty()).then(|| listed.join(" + "));
    if let Some(v) = sd3::variant(modules.iter().map(|m| (m.name.as_str(), m.in_features))) {
        report.base_model = format!("{} ({v})", family.family);
    }
    let unknown = modules.iter().filter(|m| sd3::parse(&m.name).is_none()).count();
    if unknown > 0 {
        report.notes.push(format!("{unknown} modules name no SD3 layer (block OTHER)"));
    }
    // lorakit saves split_qkv layers with alpha × 3 (the trained scale in every loader),
    // sd-scripts with the trained alpha (a third of it).
    let network_alpha: Option<f32> = file.metadata().get("ss_network_alpha").and_then(|a| a.parse().ok());
    let (mut split, mut folded) = (0, 0);
    for m in modules {
        let Some(n) = sd3::parse(&m.name) else { continue };
        let whole = n.site.is_fused() && n.parts == (0..n.site.part_count()) && m.out_features % 3 == 0;
        let widths = [m.out_features / 3; 3];
        if whole && file.tensor_f32(&m.up_key).is_ok_and(|up| block_diagonal(&up, m.rank, &widths).is_some()) {
            split += 1;
            folded += usize::from(network_alpha.is_some_and(|a| a > 0.0 && m.alpha == 3.0 * a));
        }
    }
    if split > 0 && folded == split {
        report.notes.push(format!(
            "{split} fused qkv layers hold split_qkv parts (block-diagonal up) saved with alpha × 3: alpha/rank of the file is the per-part scale training used, as every loader applies it"
        ));
    } else if split > 0 {
        report.notes.push(format!(
            "{split} fused qkv layers hold sd-scripts split_qkv parts (block-diagonal up): their scale here is alpha/rank of the file, as every loader applies it, i.e. 1/3 of the per-part scale training used"
        ));
    }
}

/// sd-scripts' `split_qkv` saves a fused layer's parts block-diagonally (rank = parts × the
/// trained rank) with the trained alpha, so every loader — sd-scripts' own included — applies
/// alpha/(parts·rank): a note saying how many such layers the file has. lorakit saves alpha ×
/// parts instead (the trained scale in every loader); such files, told apart by an alpha of
/// parts × `ss_network_alpha`, get a note saying so.
fn split_qkv_note(file: &LoraFile, modules: &[crate::keys::LoraModule]) -> Option<String> {
    let network_alpha: Option<f32> = file.metadata().get("ss_network_alpha").and_then(|a| a.parse().ok());
    let mut folded = 0;
    let fused = modules
        .iter()
        .filter(|m| {
            let Some(n) = flux::parse(&m.name) else { return false };
            let whole = n.parts == (0..n.site.part_count());
            let widths = n.site.part_widths(m.in_features, m.out_features);
            whole
                && n.site.is_fused()
                && widths.is_some_and(|w| {
                    let split =
                        file.tensor_f32(&m.up_key).ok().is_some_and(|up| block_diagonal(&up, m.rank, &w).is_some());
                    if split && network_alpha.is_some_and(|a| a > 0.0 && m.alpha == a * w.len() as f32) {
                        folded += 1;
                    }
                    split
                })
        })
        .count();
    (fused > 0).then(|| {
        if folded == fused {
            format!(
                "{fused} fused qkv/linear1 layers hold split_qkv parts (block-diagonal up) saved with alpha × parts: alpha/rank of the file is the per-part scale training used, as every loader applies it"
            )
        } else {
            format!(
                "{fused} fused qkv/linear1 layers hold sd-scripts split_qkv parts (block-diagonal up): their scale here is alpha/rank of the file, as every loader applies it, i.e. 1/parts of the per-part scale training used"
            )
        }
    })
}

fn human_size(bytes: u64) -> String {
    let mb = bytes as f64 / 1_048_576.0;
    if mb >= 1.0 {
        format!("{mb:.1} MB")
    } else {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    }
}

fn counts<K: std::fmt::Display>(map: &BTreeMap<K, usize>) -> String {
    map.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", ")
}

/// The text report: a summary per file, then one block-norm table with a column per file.
pub fn render_text(reports: &[FileReport]) -> String {
    let mut s = String::new();
    for r in reports {
        let _ = writeln!(s, "{}  ({}, {})", r.path, human_size(r.file_size), counts(&r.dtypes));
        let _ = writeln!(s, "  format      {}", r.format);
        let _ = writeln!(s, "  base model  {}", r.base_model);
        if let Some(layout) = &r.layout {
            let _ = writeln!(s, "  layout      {layout}");
        }
        if let Some(c) = &r.base_model_conflict {
            let _ = writeln!(s, "  warning     {c}");
        }
        let m = &r.metadata;
        if let Some(module) = &m.network_module {
            let dim = m.network_dim.as_ref().map(dim_text).unwrap_or_else(|| "?".into());
            let alpha = m.network_alpha.as_ref().map(dim_text).unwrap_or_else(|| "?".into());
            let _ = writeln!(s, "  network     {module}, dim {dim}, alpha {alpha}");
            if let Some(args) = m.network_args.as_ref().filter(|a| !a.is_empty()) {
                let _ = writeln!(s, "  args        {}", counts_kv(args));
            }
        }
        let mut training = Vec::new();
        if let Some((w, h)) = m.resolution {
            training.push(format!("{w}x{h}"));
        }
        if let Some(e) = m.epoch.or(m.num_epochs) {
            training.push(format!("epoch {e}"));
        }
        if let Some(st) = m.steps {
            training.push(format!("{st} steps"));
        }
        if let Some(o) = &m.optimizer {
            training.push(o.clone());
        }
        if let Some(lr) = m.learning_rate {
            training.push(format!("lr {lr}"));
        }
        if let Some(lr) = m.unet_lr {
            training.push(format!("unet lr {lr}"));
        }
        if let Some(te) = &m.text_encoder_lr {
            training.push(format!("te lr {te:?}"));
        }
        if let Some(t) = m.training_seconds() {
            training.push(format!("trained {:.0} min", t / 60.0));
        }
        if !training.is_empty() {
            let _ = writeln!(s, "  training    {}", training.join(", "));
        }
        if let Some(dirs) = &m.dataset_dirs {
            let list: Vec<String> =
                dirs.iter().map(|(d, i)| format!("{d} ({} images × {})", i.img_count, i.n_repeats)).collect();
            let _ = writeln!(s, "  datasets    {}", list.join(", "));
        }
        let tags = m.top_tags(10);
        if !tags.is_empty() {
            let list: Vec<String> = tags.iter().map(|(t, n)| format!("{t} ({n})")).collect();
            let _ = writeln!(s, "  top tags    {}", list.join(", "));
        }
        for p in &m.problems {
            let _ = writeln!(s, "  warning     metadata {}: {}", p.key, p.reason);
        }
        if let Some(u) = &r.unsupported {
            let _ = writeln!(s, "  note        {u}");
        } else {
            let _ = writeln!(s, "  modules     {} ({})", r.modules.len(), counts(&r.modules_per_component));
            let _ = writeln!(s, "  kinds       {}", counts(&r.modules_per_kind));
            // Rank 0 is a LoKr module whose factors are both whole: no rank, full matrices.
            let ranks: BTreeMap<String, usize> =
                r.ranks.iter().map(|(k, n)| (if *k == 0 { "full".to_string() } else { k.to_string() }, *n)).collect();
            let _ = writeln!(s, "  ranks       {}", counts(&ranks));
            let _ = writeln!(s, "  alphas      {}", counts(&r.alphas));
        }
        for note in &r.notes {
            let _ = writeln!(s, "  note        {note}");
        }
        if r.non_finite.is_empty() {
            let _ = writeln!(s, "  NaN/Inf     none");
        } else {
            let _ = writeln!(s, "  NaN/Inf     {} tensor(s): {}", r.non_finite.len(), counts(&r.non_finite));
        }
        let _ = writeln!(s);
    }
    render_block_table(&mut s, reports);
    s
}

fn dim_text(d: &DimValue) -> String {
    match d {
        DimValue::Number(n) => trim_float(*n as f32),
        DimValue::Dynamic => "Dynamic".into(),
    }
}

fn counts_kv(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// Block norms, one column per file ("mean / max"), so growth across epochs shows at a glance.
fn render_block_table(s: &mut String, reports: &[FileReport]) {
    let mut order: Vec<String> = Vec::new();
    for r in reports {
        for b in &r.blocks {
            if !order.contains(&b.block) {
                order.push(b.block.clone());
            }
        }
    }
    if order.is_empty() {
        return;
    }
    // Keep model order across files by sorting on the first file that has each block.
    let rank_of =
        |label: &str| reports.iter().find_map(|r| r.blocks.iter().position(|b| b.block == label)).unwrap_or(usize::MAX);
    order.sort_by_key(|b| rank_of(b));
    let _ = writeln!(s, "Block norms ‖ΔW‖_F (LoRA: scale·up·down), mean / max over the block's modules");
    let names: Vec<String> = reports
        .iter()
        .map(|r| Path::new(&r.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(15);
    let _ = write!(s, "  {:<6}", "block");
    for n in &names {
        let _ = write!(s, "  {n:>width$}");
    }
    let _ = writeln!(s);
    for block in &order {
        let _ = write!(s, "  {block:<6}");
        for r in reports {
            let cell = r
                .blocks
                .iter()
                .find(|b| &b.block == block)
                .map(|b| format!("{:.3} / {:.3}", b.mean_norm, b.max_norm))
                .unwrap_or_else(|| "-".into());
            let _ = write!(s, "  {cell:>width$}");
        }
        let _ = writeln!(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense_norm(up: &[f32], down: &[f32], out: usize, rank: usize, inn: usize) -> f64 {
        let mut s = 0f64;
        for i in 0..out {
            for j in 0..inn {
                let v: f64 = (0..rank).map(|k| f64::from(up[i * rank + k]) * f64::from(down[k * inn + j])).sum();
                s += v * v;
            }
        }
        s.sqrt()
    }

    #[test]
    fn factor_space_norm_equals_dense_norm() {
        let mut x = 12345u32;
        let mut rnd = || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            ((x >> 8) as f32 / (1u32 << 24) as f32) - 0.5
        };
        for (out, rank, inn) in [(7, 3, 5), (16, 8, 9), (1, 1, 1), (5, 4, 3)] {
            let up: Vec<f32> = (0..out * rank).map(|_| rnd()).collect();
            let down: Vec<f32> = (0..rank * inn).map(|_| rnd()).collect();
            let a = product_norm(&up, &down, out, rank, inn);
            let b = dense_norm(&up, &down, out, rank, inn);
            assert!((a - b).abs() <= 1e-9 * b.max(1.0), "{a} vs {b}");
        }
        assert!(product_norm(&[1.0], &[1.0, 2.0], 1, 1, 3).is_nan());
    }

    #[test]
    fn blocks_aggregate_in_model_order() {
        let (out0, in1, te) = (Block::Out(0), Block::In(1), Block::TextEncoder("TE"));
        let stats = block_stats([(&out0, 1.0), (&in1, 2.0), (&in1, 4.0), (&te, 0.5), (&in1, f64::NAN)]);
        let names: Vec<_> = stats.iter().map(|s| s.block.as_str()).collect();
        assert_eq!(names, ["TE", "IN01", "OUT00"]);
        assert_eq!((stats[1].modules, stats[1].mean_norm, stats[1].max_norm), (2, 3.0, 4.0));
        assert_eq!(count_non_finite(&[1.0, f32::NAN, f32::INFINITY]), 2);
    }
}
