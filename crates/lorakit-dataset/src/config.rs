//! Dataset configuration: sd-scripts' dataset TOML (`[general]`, `[[datasets]]`,
//! `[[datasets.subsets]]`, spec §5.3) and the same settings given as command-line
//! flags with DreamBooth folders.
//!
//! Values cascade subset → dataset → general → command line → default (first one
//! set wins), exactly as sd-scripts. Every key is checked against the level it
//! appears at; errors quote the key and where it is, and suggest the key that
//! was probably meant.

use crate::bucket::{BucketSettings, Reso};
use crate::folders::{parse_repeat_folder_name, scan_data_dir, FolderScan, IgnoredFolder};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A dataset configuration problem, naming the file (or flag) and the key.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    /// The config file, or "command line".
    pub source_name: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// `resolution`: one number for a square, or `[width, height]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ResolutionValue {
    /// `resolution = 512`
    Square(u32),
    /// `resolution = [768, 512]`
    Pair([u32; 2]),
}

impl ResolutionValue {
    /// `(W, H)`.
    pub fn reso(self) -> Reso {
        match self {
            ResolutionValue::Square(s) => (s, s),
            ResolutionValue::Pair([w, h]) => (w, h),
        }
    }

    /// Parses sd-scripts' `--resolution` text: `"512"` or `"768,512"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let num = |s: &str| s.parse::<u32>().map_err(|_| format!("`{s}` is not a whole number of pixels"));
        match parts.as_slice() {
            [s] => Ok(ResolutionValue::Square(num(s)?)),
            [w, h] => Ok(ResolutionValue::Pair([num(w)?, num(h)?])),
            _ => Err(format!("resolution `{text}` must be `SIZE` or `WIDTH,HEIGHT`")),
        }
    }
}

/// Defines [`OptionLayer`] and its field-wise fallback merge from one field list.
macro_rules! option_layer {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty ),* $(,)?) => {
        /// One level of settings (a subset, a dataset, `[general]`, or the
        /// command line): every key optional, so levels can cascade.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
        pub struct OptionLayer {
            $( $(#[$doc])* pub $field: Option<$ty>, )*
        }

        impl OptionLayer {
            /// Fills every unset value from `fallback` (the next level out).
            pub fn or(mut self, fallback: &OptionLayer) -> OptionLayer {
                $( if self.$field.is_none() { self.$field = fallback.$field.clone(); } )*
                self
            }
        }
    };
}

option_layer! {
    // Dataset level.
    /// Images per batch (`train_batch_size` on the command line).
    batch_size: u32,
    /// One bucket per image size, never upscale.
    bucket_no_upscale: bool,
    /// Bucket sides are multiples of this.
    bucket_reso_steps: u32,
    /// Aspect-ratio bucketing.
    enable_bucket: bool,
    /// Largest bucket side.
    max_bucket_reso: u32,
    /// Smallest bucket side.
    min_bucket_reso: u32,
    /// Seed of the validation split.
    validation_seed: u64,
    /// Fraction of images held out for validation.
    validation_split: f64,
    /// Training resolution.
    resolution: ResolutionValue,
    /// LoRA multiplier for this dataset (carried; unused by sd-scripts' LoRA trainers).
    network_multiplier: f64,
    /// Resize filter (lanczos, nearest, bilinear, linear, bicubic, cubic, area, box).
    resize_interpolation: String,
    // Subset level (cascades from dataset and general).
    /// Random hue/gamma jitter.
    color_aug: bool,
    /// Face-crop scale range `[lo, hi]`.
    face_crop_aug_range: [f64; 2],
    /// Random horizontal flip.
    flip_aug: bool,
    /// Times each image is seen per epoch.
    num_repeats: i64,
    /// Random instead of center crop.
    random_crop: bool,
    /// Shuffle the caption's tags.
    shuffle_caption: bool,
    /// The first N tags stay in place.
    keep_tokens: u32,
    /// Marker that splits fixed from shuffled tags.
    keep_tokens_separator: String,
    /// Groups tags that move together.
    secondary_separator: String,
    /// Tag separator (default `,`).
    caption_separator: String,
    /// `{a|b}` wildcards and random caption lines.
    enable_wildcard: bool,
    /// Tags used at step 0 of token warmup.
    token_warmup_min: u32,
    /// Step at which all tags are used.
    token_warmup_step: f64,
    /// Text put before every caption.
    caption_prefix: String,
    /// Text put after every caption.
    caption_suffix: String,
    /// Free-form attributes (e.g. `diff_output_preservation`).
    custom_attributes: toml::Table,
    /// Drop every caption in epochs divisible by N.
    caption_dropout_every_n_epochs: u32,
    /// Probability of dropping a whole caption.
    caption_dropout_rate: f64,
    /// Probability of dropping each tag.
    caption_tag_dropout_rate: f64,
    /// Caption file extension (default `.txt`).
    caption_extension: String,
    /// Caption for images without a caption file.
    class_tokens: String,
    /// Cache image sizes and captions in `metadata_cache.json`.
    cache_info: bool,
    // Subset only.
    /// The subset's image folder.
    image_dir: PathBuf,
    /// Regularisation images.
    is_reg: bool,
    /// Use the image's alpha channel as a loss mask.
    alpha_mask: bool,
    /// Fine-tuning metadata JSON (not supported yet).
    metadata_file: PathBuf,
    /// ControlNet conditioning images (not supported yet).
    conditioning_data_dir: PathBuf,
}

const DATASET_KEYS: &[&str] = &[
    "batch_size",
    "bucket_no_upscale",
    "bucket_reso_steps",
    "enable_bucket",
    "max_bucket_reso",
    "min_bucket_reso",
    "validation_seed",
    "validation_split",
    "resolution",
    "network_multiplier",
    "resize_interpolation",
];
const SUBSET_KEYS: &[&str] = &[
    "color_aug",
    "face_crop_aug_range",
    "flip_aug",
    "num_repeats",
    "random_crop",
    "shuffle_caption",
    "keep_tokens",
    "keep_tokens_separator",
    "secondary_separator",
    "caption_separator",
    "enable_wildcard",
    "token_warmup_min",
    "token_warmup_step",
    "caption_prefix",
    "caption_suffix",
    "custom_attributes",
    "resize_interpolation",
    "caption_dropout_every_n_epochs",
    "caption_dropout_rate",
    "caption_tag_dropout_rate",
    "caption_extension",
    "class_tokens",
    "cache_info",
];
const SUBSET_ONLY_KEYS: &[&str] = &["image_dir", "is_reg", "alpha_mask", "metadata_file", "conditioning_data_dir"];

/// Interpolation names sd-scripts accepts.
pub const RESIZE_INTERPOLATIONS: &[&str] =
    &["lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box"];

/// Caption handling of one subset (applied per sample during training).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionOptions {
    pub shuffle_caption: bool,
    pub keep_tokens: u32,
    pub keep_tokens_separator: String,
    pub secondary_separator: Option<String>,
    pub caption_separator: String,
    pub enable_wildcard: bool,
    pub token_warmup_min: u32,
    pub token_warmup_step: f64,
    pub caption_prefix: Option<String>,
    pub caption_suffix: Option<String>,
    pub caption_dropout_rate: f64,
    pub caption_dropout_every_n_epochs: u32,
    pub caption_tag_dropout_rate: f64,
}

/// Image augmentation of one subset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AugmentOptions {
    pub color_aug: bool,
    pub flip_aug: bool,
    pub random_crop: bool,
    pub face_crop_aug_range: Option<(f64, f64)>,
    pub alpha_mask: bool,
}

/// One subset: a folder of images with its repeats and caption rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubsetSpec {
    /// The image folder.
    pub image_dir: PathBuf,
    /// Regularisation images (balanced against the train images, §5.2).
    pub is_reg: bool,
    /// Times each image is seen per epoch (reg images: before balancing).
    pub num_repeats: u32,
    /// Caption for images without a caption file (folder mode: the name after `N_`).
    pub class_tokens: Option<String>,
    /// Caption file extension, with its leading dot.
    pub caption_extension: String,
    /// Use/write `metadata_cache.json`.
    pub cache_info: bool,
    /// Caption handling.
    pub caption: CaptionOptions,
    /// Augmentation.
    pub augment: AugmentOptions,
    /// Resize filter for this subset (None = automatic).
    pub resize_interpolation: Option<String>,
}

/// One dataset: subsets sharing a resolution, buckets and batch size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetSpec {
    /// Images per batch.
    pub batch_size: u32,
    /// Bucket settings (normalised).
    pub buckets: BucketSettings,
    /// Dataset LoRA multiplier.
    pub network_multiplier: f64,
    /// Validation split fraction.
    pub validation_split: f64,
    /// Validation split seed.
    pub validation_seed: Option<u64>,
    /// The subsets, train and regularisation.
    pub subsets: Vec<SubsetSpec>,
}

/// Something in the configuration worth telling the user, though not an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigNote {
    /// Human-readable text.
    pub message: String,
}

/// Every dataset to train on, plus notes gathered while resolving them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatasetPlan {
    /// The datasets, in order.
    pub datasets: Vec<DatasetSpec>,
    /// Notes (ignored folders, adjusted values, suspicious settings).
    pub notes: Vec<ConfigNote>,
    /// The DreamBooth folder scans (folder mode only), for the doctor's report.
    #[serde(skip)]
    pub scans: Vec<(PathBuf, bool, FolderScan)>,
}

/// The built-in defaults: sd-scripts' argument defaults, except buckets on,
/// `.txt` captions and a 512 resolution (what the kohya_ss GUI and the guide use).
pub fn default_layer() -> OptionLayer {
    OptionLayer {
        batch_size: Some(1),
        bucket_no_upscale: Some(false),
        bucket_reso_steps: Some(64),
        enable_bucket: Some(true),
        max_bucket_reso: Some(1024),
        min_bucket_reso: Some(256),
        resolution: Some(ResolutionValue::Square(512)),
        network_multiplier: Some(1.0),
        validation_split: Some(0.0),
        num_repeats: Some(1),
        caption_separator: Some(",".into()),
        caption_extension: Some(".txt".into()),
        token_warmup_min: Some(1),
        token_warmup_step: Some(0.0),
        ..Default::default()
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn suggestion(key: &str) -> String {
    let all = DATASET_KEYS.iter().chain(SUBSET_KEYS).chain(SUBSET_ONLY_KEYS).chain(&["subsets", "general", "datasets"]);
    all.map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// Which keys a table at `level` may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    General,
    Dataset,
    Subset,
}

impl Level {
    fn allows(self, key: &str) -> bool {
        match self {
            Level::General => DATASET_KEYS.contains(&key) || SUBSET_KEYS.contains(&key),
            Level::Dataset => DATASET_KEYS.contains(&key) || SUBSET_KEYS.contains(&key) || key == "subsets",
            Level::Subset => SUBSET_KEYS.contains(&key) || SUBSET_ONLY_KEYS.contains(&key),
        }
    }
}

/// Checks a table's keys and types and turns it into an [`OptionLayer`].
fn parse_layer(table: &toml::Table, level: Level, at: &str, source_name: &str) -> Result<OptionLayer, ConfigError> {
    let err = |message: String| ConfigError { source_name: source_name.to_owned(), message };
    for (key, value) in table {
        if !level.allows(key) {
            let hint = if level == Level::Subset && DATASET_KEYS.contains(&key.as_str()) {
                " — it is a dataset-level key: move it to its [[datasets]] table or to [general]".to_owned()
            } else if level != Level::Subset && SUBSET_ONLY_KEYS.contains(&key.as_str()) {
                " — it belongs in a [[datasets.subsets]] table".to_owned()
            } else {
                suggestion(key)
            };
            return Err(err(format!("unknown key `{key}` in {at}{hint}")));
        }
        if key == "subsets" {
            continue;
        }
        // Deserialise the key alone so a type error names exactly this key.
        let mut single = toml::Table::new();
        single.insert(key.clone(), value.clone());
        if let Err(e) = toml::Value::Table(single).try_into::<OptionLayer>() {
            let msg = e.to_string();
            let msg = msg.trim().trim_end_matches(&format!("for key `{key}`")).trim();
            return Err(err(format!("`{key}` in {at} has the wrong type ({msg}); got `{value}`")));
        }
    }
    let mut plain = table.clone();
    plain.remove("subsets");
    toml::Value::Table(plain).try_into::<OptionLayer>().map_err(|e| err(format!("in {at}: {e}")))
}

/// Resolves one subset's layer (already cascaded) into a [`SubsetSpec`], validating values.
fn resolve_subset(l: &OptionLayer, at: &str, source_name: &str) -> Result<SubsetSpec, ConfigError> {
    let err = |message: String| ConfigError { source_name: source_name.to_owned(), message };
    let image_dir =
        l.image_dir.clone().ok_or_else(|| err(format!("{at} has no `image_dir`: every subset needs one")))?;
    let rate = |key: &str, v: Option<f64>| -> Result<f64, ConfigError> {
        let v = v.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&v) {
            return Err(err(format!("`{key}` in {at} must be between 0 and 1 (got {v})")));
        }
        Ok(v)
    };
    let num_repeats = l.num_repeats.unwrap_or(1);
    let num_repeats = u32::try_from(num_repeats.max(0)).map_err(|_| {
        err(format!(
            "`num_repeats` in {at} is {num_repeats}: at most {} repeats are possible (and an epoch of at most {} \
             samples, see `lorakit dataset check`); use a repeat count that fits the run",
            crate::folders::MAX_FOLDER_REPEATS,
            crate::steps::MAX_SAMPLES_PER_EPOCH
        ))
    })?;
    let face_crop_aug_range = match l.face_crop_aug_range {
        Some([lo, hi]) if !(lo > 0.0 && lo <= hi) => {
            return Err(err(format!("`face_crop_aug_range` in {at} must be [low, high] with 0 < low <= high")))
        }
        other => other.map(|[a, b]| (a, b)),
    };
    if let Some(interp) = &l.resize_interpolation {
        if !RESIZE_INTERPOLATIONS.contains(&interp.as_str()) {
            return Err(err(format!(
                "`resize_interpolation` in {at} is `{interp}`; use one of {}",
                RESIZE_INTERPOLATIONS.join(", ")
            )));
        }
    }
    Ok(SubsetSpec {
        image_dir,
        is_reg: l.is_reg.unwrap_or(false),
        num_repeats,
        class_tokens: l.class_tokens.clone(),
        caption_extension: crate::caption::normalize_caption_extension(
            l.caption_extension.as_deref().unwrap_or(".txt"),
        ),
        cache_info: l.cache_info.unwrap_or(false),
        caption: CaptionOptions {
            shuffle_caption: l.shuffle_caption.unwrap_or(false),
            keep_tokens: l.keep_tokens.unwrap_or(0),
            keep_tokens_separator: l.keep_tokens_separator.clone().unwrap_or_default(),
            secondary_separator: l.secondary_separator.clone(),
            caption_separator: l.caption_separator.clone().unwrap_or_else(|| ",".into()),
            enable_wildcard: l.enable_wildcard.unwrap_or(false),
            token_warmup_min: l.token_warmup_min.unwrap_or(1),
            token_warmup_step: l.token_warmup_step.unwrap_or(0.0),
            caption_prefix: l.caption_prefix.clone(),
            caption_suffix: l.caption_suffix.clone(),
            caption_dropout_rate: rate("caption_dropout_rate", l.caption_dropout_rate)?,
            caption_dropout_every_n_epochs: l.caption_dropout_every_n_epochs.unwrap_or(0),
            caption_tag_dropout_rate: rate("caption_tag_dropout_rate", l.caption_tag_dropout_rate)?,
        },
        augment: AugmentOptions {
            color_aug: l.color_aug.unwrap_or(false),
            flip_aug: l.flip_aug.unwrap_or(false),
            random_crop: l.random_crop.unwrap_or(false),
            face_crop_aug_range,
            alpha_mask: l.alpha_mask.unwrap_or(false),
        },
        resize_interpolation: l.resize_interpolation.clone(),
    })
}

/// Resolves one dataset's layer into its settings (subsets are added by the caller).
fn resolve_dataset(
    l: &OptionLayer,
    at: &str,
    source_name: &str,
    notes: &mut Vec<ConfigNote>,
) -> Result<DatasetSpec, ConfigError> {
    let err = |message: String| ConfigError { source_name: source_name.to_owned(), message };
    let batch_size = l.batch_size.unwrap_or(1);
    if batch_size == 0 {
        return Err(err(format!("`batch_size` in {at} must be at least 1")));
    }
    let mut buckets = BucketSettings {
        resolution: l.resolution.map(ResolutionValue::reso).unwrap_or((512, 512)),
        enable_bucket: l.enable_bucket.unwrap_or(true),
        min_bucket_reso: l.min_bucket_reso.unwrap_or(256),
        max_bucket_reso: l.max_bucket_reso.unwrap_or(1024),
        bucket_reso_steps: l.bucket_reso_steps.unwrap_or(64),
        bucket_no_upscale: l.bucket_no_upscale.unwrap_or(false),
    };
    let adjusted = buckets.normalize().map_err(|e| err(format!("{at}: {e}")))?;
    for a in adjusted {
        notes.push(ConfigNote {
            message: format!(
                "{at}: {} {} is not a multiple of bucket_reso_steps ({}); using {} as sd-scripts does",
                a.key, a.from, buckets.bucket_reso_steps, a.to
            ),
        });
    }
    if buckets.enable_bucket && buckets.bucket_reso_steps % 64 != 0 {
        notes.push(ConfigNote {
            message: format!(
                "{at}: bucket_reso_steps {} is not a multiple of 64: SD1.x/SD2.x training requires 64 (SDXL, SD3 and Flux accept 32)",
                buckets.bucket_reso_steps
            ),
        });
    }
    let (w, h) = buckets.resolution;
    if !buckets.enable_bucket && (w % 64 != 0 || h % 64 != 0) {
        notes.push(ConfigNote {
            message: format!(
                "{at}: without buckets every image is trained at {w}x{h}, which is not a multiple of 64: \
                 the UNet needs multiples of 64; use e.g. {}x{}",
                w / 64 * 64,
                h / 64 * 64
            ),
        });
    }
    if buckets.enable_bucket && buckets.bucket_no_upscale {
        notes.push(ConfigNote {
            message: format!(
                "{at}: min_bucket_reso and max_bucket_reso are ignored with bucket_no_upscale (as in sd-scripts)"
            ),
        });
    }
    let validation_split = l.validation_split.unwrap_or(0.0);
    if !(0.0..1.0).contains(&validation_split) {
        return Err(err(format!("`validation_split` in {at} must be in [0, 1) (got {validation_split})")));
    }
    Ok(DatasetSpec {
        batch_size,
        buckets,
        network_multiplier: l.network_multiplier.unwrap_or(1.0),
        validation_split,
        validation_seed: l.validation_seed,
        subsets: Vec::new(),
    })
}

/// Resolves a dataset TOML file. `args` holds command-line values (the level
/// between `[general]` and the defaults). Relative `image_dir`s are taken from
/// the current directory as sd-scripts does, or else from the config's folder.
pub fn plan_from_toml(path: &Path, args: &OptionLayer) -> Result<DatasetPlan, ConfigError> {
    let source_name = path.display().to_string();
    let err = |message: String| ConfigError { source_name: source_name.clone(), message };
    let bytes = crate::regular_file::read_regular(path).map_err(|e| err(format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text: save the dataset config as UTF-8".into()))?;
    plan_from_toml_str(&text, path.parent().unwrap_or(Path::new(".")), &source_name, args)
}

/// [`plan_from_toml`] on text already read; `base_dir` is the config file's folder.
pub fn plan_from_toml_str(
    text: &str,
    base_dir: &Path,
    source_name: &str,
    args: &OptionLayer,
) -> Result<DatasetPlan, ConfigError> {
    let err = |message: String| ConfigError { source_name: source_name.to_owned(), message };
    let root: toml::Table = text.parse().map_err(|e: toml::de::Error| err(format!("not valid TOML: {e}")))?;
    for key in root.keys() {
        if key != "general" && key != "datasets" {
            let hint = if DATASET_KEYS.contains(&key.as_str()) || SUBSET_KEYS.contains(&key.as_str()) {
                " — put it under [general] (or a [[datasets]] table)".to_owned()
            } else {
                suggestion(key)
            };
            return Err(err(format!("unknown top-level key `{key}`{hint}")));
        }
    }
    let general = match root.get("general") {
        None => OptionLayer::default(),
        Some(toml::Value::Table(t)) => parse_layer(t, Level::General, "[general]", source_name)?,
        Some(_) => return Err(err("`general` must be a table: write it as [general]".into())),
    };
    let datasets = match root.get("datasets") {
        Some(toml::Value::Array(a)) => a,
        Some(_) => return Err(err("`datasets` must be an array of tables: write each as [[datasets]]".into())),
        None => return Err(err("no [[datasets]] table: a dataset config needs at least one".into())),
    };
    let outer = general.or(args).or(&default_layer());
    let mut plan = DatasetPlan::default();
    for (di, dataset) in datasets.iter().enumerate() {
        let at = format!("[[datasets]] #{}", di + 1);
        let toml::Value::Table(dt) = dataset else {
            return Err(err(format!("{at} must be a table")));
        };
        let dlayer = parse_layer(dt, Level::Dataset, &at, source_name)?.or(&outer);
        let mut spec = resolve_dataset(&dlayer, &at, source_name, &mut plan.notes)?;
        let subsets = match dt.get("subsets") {
            Some(toml::Value::Array(a)) => a.as_slice(),
            Some(_) => {
                return Err(err(format!("`subsets` in {at} must be an array of tables: write [[datasets.subsets]]")))
            }
            None => &[],
        };
        if subsets.is_empty() {
            return Err(err(format!("{at} has no [[datasets.subsets]]: add one with an image_dir")));
        }
        for (si, subset) in subsets.iter().enumerate() {
            let sat = format!("[[datasets.subsets]] #{} of {at}", si + 1);
            let toml::Value::Table(st) = subset else {
                return Err(err(format!("{sat} must be a table")));
            };
            let slayer = parse_layer(st, Level::Subset, &sat, source_name)?;
            if slayer.metadata_file.is_some() {
                return Err(err(format!(
                    "{sat} uses `metadata_file` (a fine-tuning dataset): lorakit supports DreamBooth subsets \
                     with `image_dir` so far; caption the images with .txt files instead"
                )));
            }
            if slayer.conditioning_data_dir.is_some() {
                return Err(err(format!(
                    "{sat} uses `conditioning_data_dir` (ControlNet): not supported for LoRA training"
                )));
            }
            let explicit_repeats = slayer.num_repeats.is_some();
            let mut subset = resolve_subset(&slayer.or(&dlayer), &sat, source_name)?;
            if subset.image_dir.is_relative() && !subset.image_dir.exists() {
                let beside_config = base_dir.join(&subset.image_dir);
                if beside_config.exists() {
                    subset.image_dir = beside_config;
                }
            }
            if !explicit_repeats {
                if let Some(name) = subset.image_dir.file_name().and_then(|n| n.to_str()) {
                    if let Some((Ok(n), _)) =
                        parse_repeat_folder_name(name).filter(|(n, _)| n.as_ref().is_ok_and(|n| *n > 1))
                    {
                        plan.notes.push(ConfigNote {
                            message: format!(
                                "{sat}: folder `{name}` looks like a repeats folder ({n}_…), but in a dataset config \
                                 repeats come from `num_repeats` ({} here); set num_repeats = {n} if that was meant",
                                subset.num_repeats
                            ),
                        });
                    }
                }
            }
            if subset.num_repeats < 1 {
                plan.notes.push(ConfigNote {
                    message: format!("{sat}: num_repeats is below 1, so this subset is ignored (as in sd-scripts)"),
                });
                continue;
            }
            if spec.subsets.iter().any(|s| s.image_dir == subset.image_dir) {
                plan.notes.push(ConfigNote {
                    message: format!(
                        "{sat}: image_dir {} is already a subset of this dataset; the duplicate is ignored (as in sd-scripts)",
                        subset.image_dir.display()
                    ),
                });
                continue;
            }
            spec.subsets.push(subset);
        }
        plan.datasets.push(spec);
    }
    Ok(plan)
}

/// Builds a one-dataset plan from DreamBooth folders: every `N_name` subfolder
/// of `train_dir` (and of `reg_dir`, as regularisation) is a subset. `args`
/// holds the command-line settings.
pub fn plan_from_dirs(
    train_dir: &Path,
    reg_dir: Option<&Path>,
    args: &OptionLayer,
) -> Result<DatasetPlan, ConfigError> {
    let layer = args.clone().or(&default_layer());
    let mut plan = DatasetPlan::default();
    let mut spec = resolve_dataset(&layer, "the command line", "command line", &mut plan.notes)?;
    for (dir, is_reg) in std::iter::once((train_dir, false)).chain(reg_dir.map(|d| (d, true))) {
        let role = if is_reg { "regularisation" } else { "train" };
        let scan = scan_data_dir(dir).map_err(|e| ConfigError {
            source_name: dir.display().to_string(),
            message: format!("cannot read the {role} folder: {e}"),
        })?;
        if let Some(IgnoredFolder::TooManyRepeats { dir, num_repeats }) =
            scan.ignored.iter().find(|i| matches!(i, IgnoredFolder::TooManyRepeats { .. }))
        {
            return Err(ConfigError {
                source_name: dir.display().to_string(),
                message: format!(
                    "the folder name's repeat count {num_repeats} is too large (at most {}, and an epoch holds at \
                     most {} samples): rename the folder with the repeat count you mean, e.g. 10_name",
                    crate::folders::MAX_FOLDER_REPEATS,
                    crate::steps::MAX_SAMPLES_PER_EPOCH
                ),
            });
        }
        for folder in &scan.subsets {
            let subset_layer = OptionLayer {
                image_dir: Some(folder.dir.clone()),
                num_repeats: Some(i64::from(folder.num_repeats)),
                class_tokens: Some(folder.class_tokens.clone()),
                is_reg: Some(is_reg),
                ..Default::default()
            }
            .or(&layer);
            let at = format!("folder {}", folder.dir.display());
            spec.subsets.push(resolve_subset(&subset_layer, &at, "command line")?);
        }
        plan.scans.push((dir.to_path_buf(), is_reg, scan));
    }
    plan.datasets.push(spec);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<DatasetPlan, ConfigError> {
        plan_from_toml_str(text, Path::new("."), "test.toml", &OptionLayer::default())
    }

    #[test]
    fn cascade_subset_dataset_general_args_default() {
        let text = r#"
            [general]
            shuffle_caption = true
            caption_extension = "caption"
            keep_tokens = 1

            [[datasets]]
            resolution = [768, 512]
            batch_size = 4
            keep_tokens = 2

              [[datasets.subsets]]
              image_dir = "a"
              num_repeats = 10
              keep_tokens = 3

              [[datasets.subsets]]
              image_dir = "b"
              is_reg = true
        "#;
        let args = OptionLayer { flip_aug: Some(true), keep_tokens: Some(9), ..Default::default() };
        let p = plan_from_toml_str(text, Path::new("."), "t.toml", &args).unwrap();
        let d = &p.datasets[0];
        assert_eq!(d.batch_size, 4);
        assert_eq!(d.buckets.resolution, (768, 512));
        assert!(d.buckets.enable_bucket);
        let (a, b) = (&d.subsets[0], &d.subsets[1]);
        assert_eq!((a.num_repeats, a.caption.keep_tokens), (10, 3));
        assert_eq!((b.num_repeats, b.caption.keep_tokens), (1, 2));
        assert!(b.is_reg && !a.is_reg);
        assert_eq!(a.caption_extension, ".caption");
        assert!(a.caption.shuffle_caption && a.augment.flip_aug);
    }

    #[test]
    fn unknown_keys_are_quoted_with_a_suggestion() {
        let e = plan("[[datasets]]\nbatch_sise = 2\n[[datasets.subsets]]\nimage_dir='a'").unwrap_err();
        assert!(e.message.contains("`batch_sise`") && e.message.contains("did you mean `batch_size`"), "{e}");
        let e = plan("[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'\nresolution=512").unwrap_err();
        assert!(e.message.contains("dataset-level key"), "{e}");
        let e = plan("[general]\nimage_dir='a'\n[[datasets]]\n[[datasets.subsets]]\nimage_dir='a'").unwrap_err();
        assert!(e.message.contains("[[datasets.subsets]]"), "{e}");
        let e = plan("resolution = 512\n[[datasets]]").unwrap_err();
        assert!(e.message.contains("under [general]"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = plan("[[datasets]]\nbatch_size = \"two\"\n[[datasets.subsets]]\nimage_dir='a'").unwrap_err();
        assert!(e.message.contains("`batch_size`") && e.message.contains("wrong type"), "{e}");
        let e = plan("[[datasets]]\nresolution = [512]\n[[datasets.subsets]]\nimage_dir='a'").unwrap_err();
        assert!(e.message.contains("`resolution`"), "{e}");
    }

    #[test]
    fn value_checks() {
        let e = plan("[[datasets]]\n[[datasets.subsets]]\nnum_repeats=2").unwrap_err();
        assert!(e.message.contains("image_dir"), "{e}");
        let e = plan("[[datasets]]\nresolution=2048\n[[datasets.subsets]]\nimage_dir='a'").unwrap_err();
        assert!(e.message.contains("max_bucket_reso"), "{e}");
        let e = plan("[[datasets]]\ncaption_dropout_rate=1.5\n[[datasets.subsets]]\nimage_dir='a'").unwrap_err();
        assert!(e.message.contains("caption_dropout_rate"), "{e}");
        let e = plan("[[datasets]]\nresize_interpolation='fancy'\n[[datasets.subsets]]\nimage_dir='a'").unwrap_err();
        assert!(e.message.contains("lanczos"), "{e}");
        let e = plan("[[datasets]]\n[[datasets.subsets]]\nmetadata_file='m.json'").unwrap_err();
        assert!(e.message.contains("fine-tuning"), "{e}");
        assert!(plan("[[datasets]]").unwrap_err().message.contains("no [[datasets.subsets]]"));
        assert!(plan("").unwrap_err().message.contains("no [[datasets]]"));
        assert!(plan("[[datasets]\n").unwrap_err().message.contains("not valid TOML"));
    }

    #[test]
    fn notes_for_repeats_folder_duplicates_and_zero_repeats() {
        let p = plan(
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir='x/10_dog'\n[[datasets.subsets]]\nimage_dir='x/10_dog'\n\
             [[datasets.subsets]]\nimage_dir='y'\nnum_repeats=0",
        )
        .unwrap();
        assert_eq!(p.datasets[0].subsets.len(), 1);
        let all: String = p.notes.iter().map(|n| n.message.clone()).collect::<Vec<_>>().join("\n");
        assert!(all.contains("looks like a repeats folder"), "{all}");
        assert!(all.contains("duplicate is ignored"), "{all}");
        assert!(all.contains("num_repeats is below 1"), "{all}");
    }

    #[test]
    fn resolution_text() {
        assert_eq!(ResolutionValue::parse("512").unwrap().reso(), (512, 512));
        assert_eq!(ResolutionValue::parse("768, 512").unwrap().reso(), (768, 512));
        assert!(ResolutionValue::parse("a").is_err());
        assert!(ResolutionValue::parse("1,2,3").is_err());
    }
}
