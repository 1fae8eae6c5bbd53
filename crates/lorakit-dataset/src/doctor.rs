//! The dataset doctor behind `lorakit dataset check`: loads every dataset as
//! training will, then explains exactly what training will see (subsets,
//! repeats, buckets, steps, captions) and everything that looks wrong.

use crate::bucket::BucketError;
use crate::caption::{escape_controls, TextNote};
use crate::config::{ConfigNote, DatasetPlan};
use crate::dataset::{load_dataset_with, CaptionSource, ImageRecord, LoadProgress, LoadedDataset, ProbeMode};
use crate::duplicates::find_duplicates;
use crate::fingerprint_cache::FingerprintCache;
use crate::folders::{sd_scripts_matches_extension, IgnoredFolder};
use crate::probe::ProbeError;
use crate::steps::{StepPlan, StepRequest};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The image (or dataset) cannot be used.
    Error,
    /// Training works, but probably not as intended.
    Warning,
    /// Worth knowing; nothing to fix.
    Info,
}

/// One thing the doctor noticed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// A stable machine-readable name (e.g. `missing_caption`).
    pub code: &'static str,
    /// What it means and what to do.
    pub message: String,
}

fn finding(severity: Severity, code: &'static str, message: impl Into<String>) -> Finding {
    Finding { severity, code, message: message.into() }
}

/// Settings of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Header-only or full decode.
    pub mode: ProbeMode,
    /// Run length settings for the step plan.
    pub steps: StepRequest,
    /// Largest perceptual-hash distance reported as a near duplicate (≤ 7).
    pub near_duplicate_distance: u32,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            mode: ProbeMode::Full,
            steps: StepRequest { gradient_accumulation_steps: 1, ..Default::default() },
            near_duplicate_distance: 5,
        }
    }
}

/// One image in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// Path relative to the train/reg folder (or config folder) it was found under.
    pub path: String,
    /// Times seen per epoch (regularisation: after balancing; 0 = not used).
    pub repeats: u32,
    /// Regularisation image.
    pub is_reg: bool,
    /// Size as trained `[w, h]` (EXIF orientation applied); null if unreadable.
    pub size: Option<[u32; 2]>,
    /// Bucket `[w, h]`; null if the image cannot be used.
    pub bucket: Option<[u32; 2]>,
    /// Size the image is resized to before the crop to its bucket.
    pub resized: Option<[u32; 2]>,
    /// Share of the resized image's pixels the crop removes (0–1).
    pub crop_fraction: Option<f64>,
    /// The caption as training reads it.
    pub caption: String,
    /// Where the caption came from.
    pub caption_source: CaptionSource,
    /// Detected file format.
    pub format: Option<&'static str>,
    /// EXIF orientation (1 = none).
    pub orientation: Option<u8>,
    /// Training uses this image.
    pub used: bool,
    /// Problems with this image.
    pub warnings: Vec<Finding>,
}

/// One subset in the report.
#[derive(Debug, Clone, Serialize)]
pub struct SubsetReport {
    /// The folder.
    pub dir: String,
    /// Regularisation subset.
    pub is_reg: bool,
    /// Repeats from the folder name or config.
    pub num_repeats: u32,
    /// Caption for images without a caption file.
    pub class_tokens: Option<String>,
    /// Images found.
    pub images: usize,
    /// Images that can be used.
    pub usable: usize,
    /// Samples per epoch: Σ repeats of its used images (after reg balancing).
    pub samples_per_epoch: u64,
    /// The tag most captions start with, if there is one.
    pub trigger_word: Option<String>,
}

/// One bucket in the report.
#[derive(Debug, Clone, Serialize)]
pub struct BucketReport {
    /// `[w, h]`.
    pub resolution: [u32; 2],
    /// Samples per epoch (repeats included).
    pub count: u64,
}

/// One dataset in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// `[w, h]`.
    pub resolution: [u32; 2],
    /// Bucketing on.
    pub enable_bucket: bool,
    /// Smallest bucket side.
    pub min_bucket_reso: u32,
    /// Largest bucket side.
    pub max_bucket_reso: u32,
    /// Bucket side step.
    pub bucket_reso_steps: u32,
    /// Never upscale.
    pub bucket_no_upscale: bool,
    /// Images per batch.
    pub batch_size: u32,
    /// Subsets.
    pub subsets: Vec<SubsetReport>,
    /// Buckets in use.
    pub buckets: Vec<BucketReport>,
    /// Σ usable train images × repeats.
    pub num_train_images: u64,
    /// Σ usable reg images × folder repeats (before balancing).
    pub num_reg_images: u64,
    /// Batches per epoch.
    pub batches_per_epoch: u64,
    /// Mean |bucket aspect − image aspect|.
    pub mean_ar_error: Option<f64>,
    /// Every image.
    pub images: Vec<ImageReport>,
}

/// Counts over all datasets.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Image files found.
    pub images: usize,
    /// Images training uses.
    pub used: usize,
    /// Images that cannot be used (broken, unreadable, no bucket).
    pub unusable: usize,
    /// Samples per epoch (repeats and reg balancing included).
    pub samples_per_epoch: u64,
    /// Findings by severity.
    pub errors: usize,
    /// Findings by severity.
    pub warnings: usize,
    /// Findings by severity.
    pub infos: usize,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "full" (decoded every image) or "quick" (headers only).
    pub mode: &'static str,
    /// Datasets.
    pub datasets: Vec<DatasetReport>,
    /// The planned run length.
    pub steps: StepPlan,
    /// The most frequent tags over all train captions (tag, count), most frequent first.
    pub top_tags: Vec<(String, u64)>,
    /// Tag counts per folder name (sd-scripts' `ss_tag_frequency`).
    pub tag_frequency: BTreeMap<String, BTreeMap<String, u64>>,
    /// Findings about folders and settings (not about one image).
    pub findings: Vec<Finding>,
    /// Totals.
    pub totals: Totals,
    /// Training can run on this dataset.
    pub usable: bool,
}

/// Runs the doctor on a resolved plan. `roots` are the folders the user named
/// (train dir, reg dir or the config's folder); image paths are shown relative to them.
pub fn check(plan: &DatasetPlan, roots: &[PathBuf], options: &CheckOptions) -> Report {
    check_with(plan, roots, options, &FingerprintCache::disabled(), &|_| {})
}

/// [`check`] with a cache of decode results, reporting progress while images are examined.
pub fn check_with(
    plan: &DatasetPlan,
    roots: &[PathBuf],
    options: &CheckOptions,
    cache: &FingerprintCache,
    progress: &(dyn Fn(LoadProgress) + Sync),
) -> Report {
    let loaded: Vec<LoadedDataset> =
        plan.datasets.iter().map(|d| load_dataset_with(d, options.mode, cache, progress)).collect();
    let mut findings = folder_findings(plan, roots);

    // Duplicates are looked for across every dataset.
    let flat: Vec<(usize, usize)> =
        loaded.iter().enumerate().flat_map(|(d, ds)| (0..ds.images.len()).map(move |i| (d, i))).collect();
    let fingerprints: Vec<_> = flat.iter().map(|&(d, i)| loaded[d].images[i].fingerprint).collect();
    let mut duplicate_notes: BTreeMap<(usize, usize), Finding> = BTreeMap::new();
    for pair in find_duplicates(&fingerprints, options.near_duplicate_distance) {
        let (ed, ei) = flat[pair.earlier];
        let other = display_path(&loaded[ed].images[ei].file.path, roots);
        let f = if pair.exact {
            finding(
                Severity::Warning,
                "exact_duplicate",
                format!("the same file as {other}: it is trained twice as often; delete one copy"),
            )
        } else {
            finding(
                Severity::Warning,
                "near_duplicate",
                format!(
                    "looks like a near duplicate of {other} (perceptual distance {}/64): near copies over-train that picture",
                    pair.distance
                ),
            )
        };
        duplicate_notes.insert(flat[pair.later], f);
    }

    let mut datasets = Vec::new();
    let mut epoch_fits = true;
    let mut total_tags: BTreeMap<String, u64> = BTreeMap::new();
    let mut tag_frequency: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (d, ds) in loaded.iter().enumerate() {
        let triggers: Vec<Option<String>> = (0..ds.subsets.len()).map(|s| trigger_word(ds, s)).collect();
        let mut images = Vec::new();
        for (i, r) in ds.images.iter().enumerate() {
            let mut warnings = image_findings(r, &triggers[r.subset], ds);
            if let Some(f) = duplicate_notes.remove(&(d, i)) {
                warnings.push(f);
            }
            warnings.sort_by_key(|f| f.severity);
            images.push(image_report(r, roots, warnings));
        }
        for (dir, tags) in &ds.tag_frequency {
            let merged = tag_frequency.entry(dir.clone()).or_default();
            for (t, n) in tags {
                *merged.entry(t.clone()).or_default() += n;
            }
        }
        for r in ds.images.iter().filter(|r| r.trained() && !r.is_reg) {
            crate::caption::count_tags(&r.caption, &mut total_tags);
        }
        findings.extend(dataset_findings(ds, roots));
        if let Err(message) = ds.check_epoch_size() {
            epoch_fits = false;
            findings.push(finding(Severity::Error, "epoch_too_large", message));
        }
        datasets.push(dataset_report(ds, roots, &triggers, images));
    }

    let batches: u64 = datasets.iter().map(|d| d.batches_per_epoch).sum();
    let steps = StepPlan::try_new(batches, options.steps).unwrap_or_else(|e| {
        epoch_fits = false;
        findings.push(finding(Severity::Error, "run_too_long", format!("--epochs: {e}")));
        StepPlan::new(batches, options.steps)
    });
    if epoch_fits && steps.max_train_steps == 0 && batches > 0 {
        findings.push(finding(
            Severity::Warning,
            "zero_steps",
            "max_train_steps is 0: nothing would be trained (sd-scripts saves an empty LoRA)",
        ));
    }
    let used_train = datasets.iter().flat_map(|d| &d.images).filter(|i| i.used && !i.is_reg).count();
    let all_images: Vec<&ImageReport> = datasets.iter().flat_map(|d| &d.images).collect();
    if used_train == 0 {
        findings.push(no_data_finding(plan, roots, all_images.len()));
    }
    let mut top_tags: Vec<(String, u64)> = total_tags.into_iter().collect();
    top_tags.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top_tags.truncate(25);

    let count = |s: Severity| {
        findings.iter().filter(|f| f.severity == s).count()
            + all_images.iter().flat_map(|i| &i.warnings).filter(|f| f.severity == s).count()
    };
    let totals = Totals {
        images: all_images.len(),
        used: all_images.iter().filter(|i| i.used).count(),
        unusable: all_images.iter().filter(|i| i.bucket.is_none()).count(),
        samples_per_epoch: datasets.iter().map(|d| d.buckets.iter().map(|b| b.count).sum::<u64>()).sum(),
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        infos: count(Severity::Info),
    };
    findings.sort_by_key(|f| f.severity);
    Report {
        mode: if options.mode == ProbeMode::Full { "full" } else { "quick" },
        datasets,
        steps,
        top_tags,
        tag_frequency,
        findings,
        totals,
        usable: used_train > 0 && epoch_fits,
    }
}

/// Shows `path` relative to the deepest root containing it.
pub fn display_path(path: &Path, roots: &[PathBuf]) -> String {
    roots
        .iter()
        .filter_map(|r| path.strip_prefix(r).ok())
        .min_by_key(|rel| rel.components().count())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The tag most captions of a train subset start with (at least 2 captions and half of them).
fn trigger_word(ds: &LoadedDataset, subset: usize) -> Option<String> {
    if ds.subsets[subset].spec.is_reg {
        return None;
    }
    let mut firsts: BTreeMap<String, usize> = BTreeMap::new();
    let mut captioned = 0;
    for r in ds.images.iter().filter(|r| r.subset == subset && r.caption_source == CaptionSource::File) {
        captioned += 1;
        if let Some(first) = r.caption.split(',').next().map(|t| t.trim().to_lowercase()).filter(|t| !t.is_empty()) {
            *firsts.entry(first).or_default() += 1;
        }
    }
    let (tag, n) = firsts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))?;
    (n >= 2 && 2 * n >= captioned && tag.split_whitespace().count() <= 4).then_some(tag)
}

fn has_tag(caption: &str, tag: &str) -> bool {
    caption.split(',').any(|t| t.trim().to_lowercase() == tag)
}

fn describe_probe_error(e: &ProbeError) -> (&'static str, String) {
    match e {
        ProbeError::Unreadable(_) => ("unreadable", format!("{e}; check the file's permissions")),
        ProbeError::Empty => ("empty_file", format!("{e}: re-export or delete it")),
        ProbeError::NotAnImage(_) => ("not_an_image", format!("{e}; delete or replace it")),
        ProbeError::Unsupported(_) => ("unsupported_format", e.to_string()),
        ProbeError::Corrupt { .. } => ("corrupt_image", format!("{e}; re-export or delete it")),
        ProbeError::ZeroSize(..) => ("zero_size", format!("{e}; delete it")),
        ProbeError::TooManyPixels { .. } => ("too_many_pixels", e.to_string()),
    }
}

/// Share of pixels a bucket crop may remove before it is worth a warning: normal
/// bucketing cuts less than one bucket step (about 12% at 512 px).
const HEAVY_CROP: f64 = 0.15;

fn image_findings(r: &ImageRecord, trigger: &Option<String>, ds: &LoadedDataset) -> Vec<Finding> {
    let mut out = Vec::new();
    let subset = &ds.subsets[r.subset].spec;
    if r.file.path.to_str().is_none() {
        out.push(finding(
            Severity::Warning,
            "non_utf8_name",
            "the file name is not valid UTF-8 (shown with replacement characters); other tools may fail on it: rename it",
        ));
    }
    if !sd_scripts_matches_extension(&r.file.path) {
        out.push(finding(
            Severity::Info,
            "mixed_case_extension",
            "sd-scripts skips this file (its extension is neither all lower nor all upper case); lorakit uses it",
        ));
    }
    match &r.probe {
        Err(_) if r.file.broken_link => {
            out.push(finding(
                Severity::Error,
                "broken_symlink",
                "broken symbolic link: its target does not exist; the image is skipped",
            ));
        }
        Err(e) => {
            let (code, msg) = describe_probe_error(e);
            out.push(finding(Severity::Error, code, format!("{msg}; the image is skipped")));
        }
        Ok(p) => {
            let ext = r.file.path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            let ext_format = if ext == "jpg" { "jpeg" } else { ext.as_str() };
            if ext_format != p.format {
                out.push(finding(
                    Severity::Info,
                    "extension_mismatch",
                    format!(
                        "the file is {} but named .{ext}; it works, but other tools may refuse it",
                        p.format.to_uppercase()
                    ),
                ));
            }
            if p.orientation != 1 {
                out.push(finding(
                    Severity::Info,
                    "exif_orientation",
                    format!(
                        "EXIF orientation {}: lorakit trains it upright as {}x{}; sd-scripts ignores the tag and trains it as stored ({}x{})",
                        p.orientation, p.size.0, p.size.1, p.stored_size.0, p.stored_size.1
                    ),
                ));
            }
            let ratio = f64::from(p.size.0.max(p.size.1)) / f64::from(p.size.0.min(p.size.1));
            if ratio >= 3.0 {
                out.push(finding(
                    Severity::Warning,
                    "extreme_aspect_ratio",
                    format!("extreme aspect ratio {ratio:.2}:1; consider cropping it into parts"),
                ));
            }
        }
    }
    match &r.bucket {
        Some(Err(e @ BucketError::EmptyBucket { .. })) => {
            out.push(finding(Severity::Error, "too_small_for_bucket", format!("{e}; the image is skipped")))
        }
        Some(Err(e)) => out.push(finding(Severity::Error, "no_bucket", format!("{e}; the image is skipped"))),
        Some(Ok(choice)) => {
            if let Ok(p) = &r.probe {
                let scale = f64::from(choice.resized.0) / f64::from(p.size.0);
                if scale > 1.0 + 1e-9 {
                    let severity = if scale >= 1.5 { Severity::Warning } else { Severity::Info };
                    out.push(finding(
                        severity,
                        "upscaled",
                        format!(
                            "smaller than its bucket {}x{}: upscaled ×{scale:.2} to {}x{} (soft details are learned)",
                            choice.bucket.0, choice.bucket.1, choice.resized.0, choice.resized.1
                        ),
                    ));
                }
            }
            let crop = choice.cropped_fraction();
            if crop > HEAVY_CROP {
                out.push(finding(
                    Severity::Warning,
                    "heavy_crop",
                    format!(
                        "the crop to bucket {}x{} removes {:.0}% of the image; check nothing important is at its edges",
                        choice.bucket.0,
                        choice.bucket.1,
                        crop * 100.0
                    ),
                ));
            }
        }
        None => {}
    }
    // Caption findings only matter for images training can use.
    if !r.usable() {
        return out;
    }
    if let Some(e) = &r.caption_error {
        out.push(finding(Severity::Warning, "caption_unreadable", format!("cannot read its caption file: {e}")));
    }
    let fallback = match r.caption_source {
        CaptionSource::ClassTokens => format!("training uses the folder's class name \"{}\"", r.caption),
        _ => "training uses an empty caption".to_owned(),
    };
    match &r.caption_file {
        None if r.caption_error.is_none() => {
            let expected = r.file.path.with_extension(subset.caption_extension.trim_start_matches('.'));
            let name = expected.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // Regularisation images usually go without captions on purpose.
            let severity = if r.is_reg { Severity::Info } else { Severity::Warning };
            out.push(finding(severity, "missing_caption", format!("no caption file ({name}); {fallback}")));
        }
        None => {}
        Some(cf) => {
            let name = cf.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if cf.zero_bytes {
                out.push(finding(
                    Severity::Warning,
                    "empty_caption_file",
                    format!("caption file {name} is empty (0 bytes; sd-scripts stops on it); {fallback}"),
                ));
            } else if r.caption.is_empty() {
                out.push(finding(
                    Severity::Warning,
                    "empty_caption",
                    format!("caption file {name} has an empty first line"),
                ));
            }
            for note in &cf.notes {
                let severity = if *note == TextNote::Crlf { Severity::Info } else { Severity::Warning };
                let code = match note {
                    TextNote::Bom => "caption_bom",
                    TextNote::Crlf => "caption_crlf",
                    TextNote::Utf16 => "caption_utf16",
                    TextNote::InvalidUtf8 => "caption_not_utf8",
                };
                out.push(finding(severity, code, format!("caption file {name} {}", note.describe())));
            }
            if cf.ignored_lines > 0 {
                out.push(finding(
                    Severity::Warning,
                    "caption_extra_lines",
                    format!(
                        "caption file {name} has {} more non-empty line(s) after the first: only the first is used \
                         (enable_wildcard picks a random line)",
                        cf.ignored_lines
                    ),
                ));
            }
        }
    }
    if let Some(tag) = trigger {
        if r.trained() && !has_tag(&r.caption, tag) {
            out.push(finding(
                Severity::Warning,
                "trigger_missing",
                format!("the caption lacks the trigger word \"{tag}\" that starts most captions in this folder"),
            ));
        }
    }
    out
}

fn image_report(r: &ImageRecord, roots: &[PathBuf], warnings: Vec<Finding>) -> ImageReport {
    let probe = r.probe.as_ref().ok();
    let choice = r.bucket.as_ref().and_then(|b| b.as_ref().ok());
    ImageReport {
        path: display_path(&r.file.path, roots),
        repeats: r.repeats,
        is_reg: r.is_reg,
        size: probe.map(|p| [p.size.0, p.size.1]),
        bucket: choice.map(|c| [c.bucket.0, c.bucket.1]),
        resized: choice.map(|c| [c.resized.0, c.resized.1]),
        crop_fraction: choice.map(|c| (c.cropped_fraction() * 1e4).round() / 1e4),
        caption: r.caption.clone(),
        caption_source: r.caption_source,
        format: probe.map(|p| p.format),
        orientation: probe.map(|p| p.orientation),
        used: r.trained(),
        warnings,
    }
}

fn dataset_report(
    ds: &LoadedDataset,
    roots: &[PathBuf],
    triggers: &[Option<String>],
    images: Vec<ImageReport>,
) -> DatasetReport {
    let b = &ds.spec.buckets;
    let subsets = ds
        .subsets
        .iter()
        .enumerate()
        .map(|(si, s)| SubsetReport {
            dir: display_path(&s.spec.image_dir, roots),
            is_reg: s.spec.is_reg,
            num_repeats: s.spec.num_repeats,
            class_tokens: s.spec.class_tokens.clone(),
            images: s.images,
            usable: s.usable,
            samples_per_epoch: ds
                .images
                .iter()
                .filter(|r| r.subset == si && r.trained())
                .map(|r| u64::from(r.repeats))
                .sum(),
            trigger_word: triggers[si].clone(),
        })
        .collect();
    DatasetReport {
        resolution: [b.resolution.0, b.resolution.1],
        enable_bucket: b.enable_bucket,
        min_bucket_reso: b.min_bucket_reso,
        max_bucket_reso: b.max_bucket_reso,
        bucket_reso_steps: b.bucket_reso_steps,
        bucket_no_upscale: b.bucket_no_upscale,
        batch_size: ds.spec.batch_size,
        subsets,
        buckets: ds
            .histogram
            .buckets
            .iter()
            .map(|&((w, h), count)| BucketReport { resolution: [w, h], count })
            .collect(),
        num_train_images: ds.num_train_images,
        num_reg_images: ds.num_reg_images,
        batches_per_epoch: ds.batches_per_epoch(),
        mean_ar_error: ds.mean_ar_error,
        images,
    }
}

fn folder_findings(plan: &DatasetPlan, roots: &[PathBuf]) -> Vec<Finding> {
    let mut out: Vec<Finding> =
        plan.notes.iter().map(|ConfigNote { message }| finding(Severity::Warning, "config", message.clone())).collect();
    for (dir, is_reg, scan) in &plan.scans {
        let role = if *is_reg { "regularisation" } else { "train" };
        for ignored in &scan.ignored {
            let (path, why) = match ignored {
                IgnoredFolder::NoRepeats { dir } => {
                    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    (dir, format!("its name must start with the repeat count, like 10_{name}"))
                }
                IgnoredFolder::ZeroRepeats { dir, num_repeats } => {
                    (dir, format!("its repeat count {num_repeats} is below 1"))
                }
                IgnoredFolder::TooManyRepeats { dir, num_repeats } => {
                    (dir, format!("its repeat count {num_repeats} is too large"))
                }
            };
            out.push(finding(
                Severity::Warning,
                "folder_ignored",
                format!("folder {} is ignored: {why}", display_path(path, roots)),
            ));
        }
        if !scan.loose_images.is_empty() {
            let severity = if scan.subsets.is_empty() { Severity::Error } else { Severity::Warning };
            out.push(finding(
                severity,
                "loose_images",
                format!(
                    "{} image(s) sit directly in the {role} folder {} and are not used: training reads only `N_name` \
                     subfolders (N = repeats). Move them into a subfolder such as {}",
                    scan.loose_images.len(),
                    dir.display(),
                    dir.join("10_subject").display()
                ),
            ));
        }
        if *is_reg && scan.subsets.is_empty() && scan.loose_images.is_empty() {
            out.push(finding(
                Severity::Warning,
                "no_reg_images",
                format!("the regularisation folder {} has no `N_name` subfolders with images", dir.display()),
            ));
        }
    }
    out
}

fn dataset_findings(ds: &LoadedDataset, roots: &[PathBuf]) -> Vec<Finding> {
    let mut out = Vec::new();
    for s in &ds.subsets {
        let dir = display_path(&s.spec.image_dir, roots);
        if let Some(e) = &s.read_error {
            out.push(finding(Severity::Error, "folder_unreadable", format!("cannot read folder {dir}: {e}")));
            continue;
        }
        if s.images == 0 {
            out.push(finding(Severity::Warning, "empty_folder", format!("folder {dir} has no images; it is ignored")));
        }
        for sub in &s.listing.subfolders {
            out.push(finding(
                Severity::Warning,
                "nested_folder",
                format!(
                    "{} is a subfolder: folders are not searched recursively, so its images are not used",
                    display_path(sub, roots)
                ),
            ));
        }
        if !s.listing.unsupported.is_empty() {
            let names: Vec<String> = s.listing.unsupported.iter().take(5).map(|p| display_path(p, roots)).collect();
            out.push(finding(
                Severity::Warning,
                "unsupported_files",
                format!(
                    "{} image(s) in formats lorakit cannot train on (e.g. {}): convert them to PNG, JPEG or WebP",
                    s.listing.unsupported.len(),
                    names.join(", ")
                ),
            ));
        }
        for (path, kind) in &s.listing.not_regular {
            out.push(finding(
                Severity::Error,
                "not_regular_file",
                format!(
                    "{} is {kind}, not a regular file: it is skipped without being read (reading it could hang); \
                     move or delete it",
                    display_path(path, roots)
                ),
            ));
        }
        if !s.listing.hidden.is_empty() {
            out.push(finding(
                Severity::Info,
                "hidden_files",
                format!(
                    "{} hidden image file(s) (names starting with '.') in {dir} are skipped, as sd-scripts does",
                    s.listing.hidden.len()
                ),
            ));
        }
    }
    let unused = ds.unused_reg_images();
    if unused > 0 {
        out.push(finding(
            Severity::Info,
            "reg_unused",
            format!("{unused} regularisation image(s) are not used: only as many reg samples as train samples ({}) are taken", ds.num_train_images),
        ));
    }
    out
}

fn no_data_finding(plan: &DatasetPlan, roots: &[PathBuf], images: usize) -> Finding {
    let message = if images > 0 {
        "no usable train images: every image is broken or too small (see the errors above)".to_owned()
    } else if let Some((dir, _, scan)) = plan.scans.iter().find(|(_, is_reg, _)| !is_reg) {
        if scan.subsets.is_empty() {
            format!(
                "no data found: {} has no `N_name` subfolders. The train folder must be the parent of folders \
                 named like 10_mychar (10 = repeats) that hold the images and .txt captions",
                dir.display()
            )
        } else {
            format!(
                "no data found: the `N_name` subfolders of {} hold no images (png, jpg, jpeg, webp, bmp)",
                dir.display()
            )
        }
    } else {
        let dirs: Vec<String> = plan
            .datasets
            .iter()
            .flat_map(|d| &d.subsets)
            .filter(|s| !s.is_reg)
            .map(|s| display_path(&s.image_dir, roots))
            .collect();
        format!("no data found: the train subsets ({}) hold no usable images", dirs.join(", "))
    };
    finding(Severity::Error, "no_data", message)
}

impl Report {
    /// The report as text for a terminal.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        for (di, d) in self.datasets.iter().enumerate() {
            render_dataset(&mut s, di, d);
        }
        let p = &self.steps;
        let _ = writeln!(s, "Steps");
        let _ = writeln!(
            s,
            "  {} batches per epoch, gradient accumulation {} → {} optimizer steps per epoch",
            p.batches_per_epoch, p.gradient_accumulation_steps, p.steps_per_epoch
        );
        let how = match p.source {
            crate::steps::LengthSource::Epochs => "from --epochs",
            crate::steps::LengthSource::Steps => "from --max-train-steps",
            crate::steps::LengthSource::DefaultSteps => {
                "sd-scripts' default max_train_steps; set --epochs to plan by epochs"
            }
        };
        let _ = writeln!(s, "  {} epochs, {} steps in total ({how})", p.epochs, p.max_train_steps);
        if p.epochs > 0 && p.last_epoch_steps != p.steps_per_epoch {
            let _ = writeln!(s, "  the last epoch stops after {} of {} steps", p.last_epoch_steps, p.steps_per_epoch);
        }
        if !self.top_tags.is_empty() {
            let _ = writeln!(s, "\nTop tags (train captions, one count per image)");
            let tags: Vec<String> = self.top_tags.iter().take(15).map(|(t, n)| format!("{t} ({n})")).collect();
            let _ = writeln!(s, "  {}", escape_controls(&tags.join(", ")));
        }
        let mut lines: Vec<(Severity, String)> =
            self.findings.iter().map(|f| (f.severity, format!("{}: {}", label(f.severity), f.message))).collect();
        // Per-image findings, grouped by kind so a big dataset does not flood the terminal.
        let mut by_code: BTreeMap<(Severity, &str), Vec<String>> = BTreeMap::new();
        for img in self.datasets.iter().flat_map(|d| &d.images) {
            for f in &img.warnings {
                let line = format!("{}: {}: {}", label(f.severity), img.path, f.message);
                by_code.entry((f.severity, f.code)).or_default().push(line);
            }
        }
        for ((severity, code), group) in by_code {
            let shown = group.len().min(TEXT_FINDINGS_PER_KIND);
            lines.extend(group[..shown].iter().map(|l| (severity, l.clone())));
            if group.len() > shown {
                let more = format!("  … and {} more `{code}` (see --json for all)", group.len() - shown);
                lines.push((severity, more));
            }
        }
        lines.sort_by_key(|(sev, _)| *sev);
        if !lines.is_empty() {
            let _ = writeln!(s, "\nFindings");
            for (_, l) in &lines {
                // Messages quote captions and file names: never let their control bytes through.
                let _ = writeln!(s, "  {}", escape_controls(l));
            }
        }
        let t = &self.totals;
        let _ = writeln!(
            s,
            "\n{} images, {} used, {} unusable; {} samples per epoch. {} error(s), {} warning(s), {} note(s) ({} check).",
            t.images, t.used, t.unusable, t.samples_per_epoch, t.errors, t.warnings, t.infos, self.mode
        );
        let _ = writeln!(
            s,
            "{}",
            if self.usable { "The dataset is usable." } else { "The dataset is NOT usable: fix the errors above." }
        );
        s
    }
}

/// Images listed per kind of finding in the text report.
const TEXT_FINDINGS_PER_KIND: usize = 8;

fn label(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

fn render_dataset(s: &mut String, di: usize, d: &DatasetReport) {
    let buckets = if !d.enable_bucket {
        "buckets off (every image cropped to the resolution)".to_owned()
    } else if d.bucket_no_upscale {
        format!("buckets on, no upscale (step {})", d.bucket_reso_steps)
    } else {
        format!("buckets on ({}–{}, step {})", d.min_bucket_reso, d.max_bucket_reso, d.bucket_reso_steps)
    };
    let _ = writeln!(
        s,
        "Dataset {}: resolution {}x{}, {buckets}, batch size {}",
        di + 1,
        d.resolution[0],
        d.resolution[1],
        d.batch_size
    );
    let width = d.subsets.iter().map(|x| x.dir.chars().count()).max().unwrap_or(6).max(6);
    let _ = writeln!(s, "  {:<width$}  kind   repeats  images  usable  samples/epoch  trigger", "subset");
    for x in &d.subsets {
        let repeats = if x.is_reg && x.usable > 0 { format!("{}*", x.num_repeats) } else { x.num_repeats.to_string() };
        let _ = writeln!(
            s,
            "  {:<width$}  {:<5}  {:>7}  {:>6}  {:>6}  {:>13}  {}",
            escape_controls(&x.dir),
            if x.is_reg { "reg" } else { "train" },
            repeats,
            x.images,
            x.usable,
            x.samples_per_epoch,
            escape_controls(x.trigger_word.as_deref().unwrap_or("-"))
        );
    }
    if d.subsets.iter().any(|x| x.is_reg && x.usable > 0) {
        let _ = writeln!(
            s,
            "  * regularisation repeats are balanced to match the {} train samples (as sd-scripts)",
            d.num_train_images
        );
    }
    let max = d.buckets.iter().map(|b| b.count).max().unwrap_or(1).max(1);
    let _ = writeln!(s, "  Buckets (samples per epoch, repeats included):");
    for b in &d.buckets {
        let bar = "█".repeat(((b.count * 30).div_ceil(max)) as usize);
        let _ = writeln!(s, "    {:>4}x{:<4} {:>6}  {bar}", b.resolution[0], b.resolution[1], b.count);
    }
    if let Some(e) = d.mean_ar_error {
        let _ = writeln!(s, "  mean aspect-ratio error {e:.4}");
    }
    let _ = writeln!(s);
}
