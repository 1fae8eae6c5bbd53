//! Typed reading of the string metadata in a LoRA file: sd-scripts' `ss_*`
//! training record and Stability AI ModelSpec (`modelspec.*`) keys.
//!
//! Every value in a safetensors header is a string written with Python's
//! `str()` (`None`, `True`, `(512, 512)`, `1e-04`, JSON for dicts). Parsing is
//! tolerant: a value that does not parse is recorded in
//! [`LoraMetadata::problems`] and left out, never fatal, because inspect must
//! still show the rest of a hand-edited or foreign file.

use std::collections::BTreeMap;

use serde_json::Value;

/// The metadata keys sd-scripts hashes (`ss_*` only); `sshs_*` and
/// `modelspec.*` keys are excluded, as in `precalculate_safetensors_hashes`.
pub fn ss_only(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    metadata.iter().filter(|(k, _)| k.starts_with("ss_")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A metadata value that was present but could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MetadataProblem {
    /// The key, e.g. `ss_tag_frequency`.
    pub key: String,
    /// Why it was not understood.
    pub reason: String,
}

impl std::fmt::Display for MetadataProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metadata `{}` ignored: {}", self.key, self.reason)
    }
}

/// `ss_network_dim` / `ss_network_alpha`: a number, or sd-scripts' "Dynamic"
/// written by dynamic resizes and SVD merges.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum DimValue {
    /// A single value for all modules.
    Number(f64),
    /// Per-module values differ (`"Dynamic"`).
    Dynamic,
}

/// One entry of `ss_dataset_dirs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct DatasetDir {
    /// Repeats per epoch (`n_repeats`).
    pub n_repeats: u64,
    /// Images in the folder (`img_count`).
    pub img_count: u64,
}

/// The `modelspec.*` keys (ModelSpec 1.0.1) a LoRA may carry.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ModelSpec {
    /// `modelspec.sai_model_spec` (spec version).
    pub sai_model_spec: Option<String>,
    /// `modelspec.architecture`, e.g. `stable-diffusion-v1/lora`.
    pub architecture: Option<String>,
    /// `modelspec.implementation`.
    pub implementation: Option<String>,
    /// `modelspec.title`.
    pub title: Option<String>,
    /// `modelspec.author`.
    pub author: Option<String>,
    /// `modelspec.description`.
    pub description: Option<String>,
    /// `modelspec.license`.
    pub license: Option<String>,
    /// `modelspec.tags` (comma separated as stored).
    pub tags: Option<String>,
    /// `modelspec.date`.
    pub date: Option<String>,
    /// `modelspec.resolution` ("WxH").
    pub resolution: Option<String>,
    /// `modelspec.prediction_type` (`epsilon` or `v`).
    pub prediction_type: Option<String>,
    /// `modelspec.trigger_phrase`.
    pub trigger_phrase: Option<String>,
    /// `modelspec.usage_hint`.
    pub usage_hint: Option<String>,
    /// `modelspec.merged_from`.
    pub merged_from: Option<String>,
    /// `modelspec.implementation_version`.
    pub implementation_version: Option<String>,
}

/// The commonly shown `ss_*` and `modelspec.*` values of a LoRA, parsed.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct LoraMetadata {
    /// `ss_network_module`, e.g. `networks.lora`.
    pub network_module: Option<String>,
    /// `ss_network_dim`.
    pub network_dim: Option<DimValue>,
    /// `ss_network_alpha`.
    pub network_alpha: Option<DimValue>,
    /// `ss_network_args`: JSON object; non-string values kept as their JSON text.
    pub network_args: Option<BTreeMap<String, String>>,
    /// `ss_base_model_version`, e.g. `sd_v1`, `sdxl_base_v1-0`, `flux1`.
    pub base_model_version: Option<String>,
    /// `ss_resolution` as (width, height).
    pub resolution: Option<(u32, u32)>,
    /// `ss_num_epochs`.
    pub num_epochs: Option<u64>,
    /// `ss_epoch` (the epoch this file was saved at).
    pub epoch: Option<u64>,
    /// `ss_steps`.
    pub steps: Option<u64>,
    /// `ss_optimizer`, e.g. `bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1)`.
    pub optimizer: Option<String>,
    /// `ss_learning_rate`.
    pub learning_rate: Option<f64>,
    /// `ss_unet_lr`.
    pub unet_lr: Option<f64>,
    /// `ss_text_encoder_lr`: one value, or one per text encoder (a Python list repr).
    pub text_encoder_lr: Option<Vec<f64>>,
    /// `ss_dataset_dirs`: image folder → repeats and count.
    pub dataset_dirs: Option<BTreeMap<String, DatasetDir>>,
    /// `ss_tag_frequency`: image folder → tag → count.
    pub tag_frequency: Option<BTreeMap<String, BTreeMap<String, u64>>>,
    /// `ss_training_started_at` (unix seconds).
    pub training_started_at: Option<f64>,
    /// `ss_training_finished_at` (unix seconds).
    pub training_finished_at: Option<f64>,
    /// `ss_training_comment`.
    pub training_comment: Option<String>,
    /// `ss_output_name`.
    pub output_name: Option<String>,
    /// `ss_v2` ("True" means an SD2 base).
    pub v2: Option<bool>,
    /// `sshs_model_hash`.
    pub sshs_model_hash: Option<String>,
    /// `sshs_legacy_hash`.
    pub sshs_legacy_hash: Option<String>,
    /// ModelSpec keys.
    pub modelspec: ModelSpec,
    /// Values present but not understood.
    pub problems: Vec<MetadataProblem>,
}

impl LoraMetadata {
    /// Parses the known keys of a metadata map; unknown keys are ignored and
    /// malformed values are listed in `problems`.
    pub fn parse(map: &BTreeMap<String, String>) -> LoraMetadata {
        let mut p = Parser { map, problems: Vec::new() };
        let modelspec = ModelSpec {
            sai_model_spec: p.text("modelspec.sai_model_spec"),
            architecture: p.text("modelspec.architecture"),
            implementation: p.text("modelspec.implementation"),
            title: p.text("modelspec.title"),
            author: p.text("modelspec.author"),
            description: p.text("modelspec.description"),
            license: p.text("modelspec.license"),
            tags: p.text("modelspec.tags"),
            date: p.text("modelspec.date"),
            resolution: p.text("modelspec.resolution"),
            prediction_type: p.text("modelspec.prediction_type"),
            trigger_phrase: p.text("modelspec.trigger_phrase"),
            usage_hint: p.text("modelspec.usage_hint"),
            merged_from: p.text("modelspec.merged_from"),
            implementation_version: p.text("modelspec.implementation_version"),
        };
        LoraMetadata {
            network_module: p.text("ss_network_module"),
            network_dim: p.dim("ss_network_dim"),
            network_alpha: p.dim("ss_network_alpha"),
            network_args: p.network_args(),
            base_model_version: p.text("ss_base_model_version"),
            resolution: p.resolution("ss_resolution"),
            num_epochs: p.int("ss_num_epochs"),
            epoch: p.int("ss_epoch"),
            steps: p.int("ss_steps"),
            optimizer: p.text("ss_optimizer"),
            learning_rate: p.float("ss_learning_rate"),
            unet_lr: p.float("ss_unet_lr"),
            text_encoder_lr: p.float_list("ss_text_encoder_lr"),
            dataset_dirs: p.dataset_dirs(),
            tag_frequency: p.tag_frequency(),
            training_started_at: p.float("ss_training_started_at"),
            training_finished_at: p.float("ss_training_finished_at"),
            training_comment: p.text("ss_training_comment"),
            output_name: p.text("ss_output_name"),
            v2: p.boolean("ss_v2"),
            sshs_model_hash: p.text("sshs_model_hash"),
            sshs_legacy_hash: p.text("sshs_legacy_hash"),
            modelspec,
            problems: p.problems,
        }
    }

    /// Seconds between `ss_training_started_at` and `ss_training_finished_at`,
    /// when both exist and are in order.
    pub fn training_seconds(&self) -> Option<f64> {
        let (s, f) = (self.training_started_at?, self.training_finished_at?);
        (f >= s).then_some(f - s)
    }

    /// The `n` most frequent tags summed over all folders of `ss_tag_frequency`,
    /// most frequent first, ties by tag name.
    pub fn top_tags(&self, n: usize) -> Vec<(String, u64)> {
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for tags in self.tag_frequency.iter().flat_map(|f| f.values()) {
            for (tag, count) in tags {
                let t = totals.entry(tag.as_str()).or_default();
                *t = t.saturating_add(*count);
            }
        }
        let mut v: Vec<(String, u64)> = totals.into_iter().map(|(t, c)| (t.to_string(), c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// Collects problems while reading values.
struct Parser<'a> {
    map: &'a BTreeMap<String, String>,
    problems: Vec<MetadataProblem>,
}

impl Parser<'_> {
    /// The raw value, with Python's "None" and empty strings treated as absent.
    fn raw(&self, key: &str) -> Option<&str> {
        let v = self.map.get(key)?.trim();
        (!v.is_empty() && v != "None").then_some(v)
    }

    fn problem(&mut self, key: &str, reason: impl Into<String>) {
        self.problems.push(MetadataProblem { key: key.to_string(), reason: reason.into() });
    }

    fn text(&mut self, key: &str) -> Option<String> {
        self.raw(key).map(str::to_string)
    }

    fn float(&mut self, key: &str) -> Option<f64> {
        let v = self.raw(key)?;
        match v.parse::<f64>() {
            Ok(x) => Some(x),
            Err(_) => {
                let reason = format!("`{}` is not a number", excerpt(v));
                self.problem(key, reason);
                None
            }
        }
    }

    fn int(&mut self, key: &str) -> Option<u64> {
        let v = self.raw(key)?;
        match v.parse::<u64>() {
            Ok(x) => Some(x),
            Err(_) => {
                let reason = format!("`{}` is not a non-negative integer", excerpt(v));
                self.problem(key, reason);
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.raw(key)? {
            "True" | "true" => Some(true),
            "False" | "false" => Some(false),
            other => {
                let reason = format!("`{}` is not True/False", excerpt(other));
                self.problem(key, reason);
                None
            }
        }
    }

    fn dim(&mut self, key: &str) -> Option<DimValue> {
        if self.raw(key)? == "Dynamic" {
            return Some(DimValue::Dynamic);
        }
        self.float(key).map(DimValue::Number)
    }

    /// "0.0001", "[0.0001, 5e-05]" or "(1e-4,)": Python reprs of a float or a sequence.
    fn float_list(&mut self, key: &str) -> Option<Vec<f64>> {
        let v = self.raw(key)?;
        let inner = v.trim_start_matches(['[', '(']).trim_end_matches([']', ')']);
        let parsed: Result<Vec<f64>, _> =
            inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse::<f64>).collect();
        match parsed {
            Ok(list) if !list.is_empty() => Some(list),
            _ => {
                let reason = format!("`{}` is not a number or a list of numbers", excerpt(v));
                self.problem(key, reason);
                None
            }
        }
    }

    /// "(512, 512)", "512", "512,768" or "[512, 768]" (sd-scripts writes a tuple repr).
    fn resolution(&mut self, key: &str) -> Option<(u32, u32)> {
        let v = self.raw(key)?;
        let inner = v.trim_start_matches(['[', '(']).trim_end_matches([']', ')']);
        let parts: Result<Vec<u32>, _> = inner.split([',', 'x']).map(|s| s.trim().parse::<u32>()).collect();
        match parts.as_deref() {
            Ok([s]) => Some((*s, *s)),
            Ok([w, h]) => Some((*w, *h)),
            _ => {
                let reason = format!("`{}` is not a resolution like (512, 512)", excerpt(v));
                self.problem(key, reason);
                None
            }
        }
    }

    fn json(&mut self, key: &str) -> Option<Value> {
        let v = self.raw(key)?;
        match serde_json::from_str::<Value>(v) {
            Ok(j) => Some(j),
            Err(e) => {
                self.problem(key, format!("not valid JSON ({e})"));
                None
            }
        }
    }

    fn network_args(&mut self) -> Option<BTreeMap<String, String>> {
        const KEY: &str = "ss_network_args";
        match self.json(KEY)? {
            Value::Object(map) => Some(
                map.into_iter()
                    .map(|(k, v)| {
                        let s = match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k, s)
                    })
                    .collect(),
            ),
            _ => {
                self.problem(KEY, "not a JSON object");
                None
            }
        }
    }

    fn dataset_dirs(&mut self) -> Option<BTreeMap<String, DatasetDir>> {
        const KEY: &str = "ss_dataset_dirs";
        let Value::Object(map) = self.json(KEY)? else {
            self.problem(KEY, "not a JSON object");
            return None;
        };
        let mut out = BTreeMap::new();
        for (dir, entry) in map {
            let field = |name: &str| entry.get(name).and_then(Value::as_u64);
            match (field("n_repeats"), field("img_count")) {
                (Some(n_repeats), Some(img_count)) => {
                    out.insert(dir, DatasetDir { n_repeats, img_count });
                }
                _ => self.problem(KEY, format!("entry `{dir}` lacks integer n_repeats/img_count")),
            }
        }
        Some(out)
    }

    fn tag_frequency(&mut self) -> Option<BTreeMap<String, BTreeMap<String, u64>>> {
        const KEY: &str = "ss_tag_frequency";
        let Value::Object(map) = self.json(KEY)? else {
            self.problem(KEY, "not a JSON object");
            return None;
        };
        let mut out = BTreeMap::new();
        for (dir, tags) in map {
            let Value::Object(tags) = tags else {
                self.problem(KEY, format!("entry `{dir}` is not an object of tag counts"));
                continue;
            };
            let mut counts = BTreeMap::new();
            let mut skipped = 0usize;
            for (tag, count) in tags {
                // Counts are ints, but tolerate floats some tools write.
                match count.as_u64().or_else(|| count.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)) {
                    Some(c) => {
                        counts.insert(tag, c);
                    }
                    None => skipped += 1,
                }
            }
            if skipped > 0 {
                self.problem(KEY, format!("{skipped} tag count(s) in `{dir}` are not numbers"));
            }
            out.insert(dir, counts);
        }
        Some(out)
    }
}

/// A short, single-line excerpt of a value for messages.
fn excerpt(v: &str) -> String {
    let one_line: String = v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() > 60 {
        format!("{}…", one_line.chars().take(60).collect::<String>())
    } else {
        one_line
    }
}

/// UTC calendar time `(year, month, day, hour, minute, second)` of Unix seconds (Howard
/// Hinnant's days-to-civil), for modelspec dates without a date-time dependency.
pub fn civil_from_unix(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rem / 3600) as u32, ((rem % 3600) / 60) as u32, (rem % 60) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_sd_scripts_values() {
        let m = LoraMetadata::parse(&map(&[
            ("ss_network_module", "networks.lora"),
            ("ss_network_dim", "8"),
            ("ss_network_alpha", "4.0"),
            ("ss_network_args", r#"{"conv_dim": "4", "conv_alpha": "1"}"#),
            ("ss_base_model_version", "sd_v1"),
            ("ss_resolution", "(512, 768)"),
            ("ss_num_epochs", "10"),
            ("ss_epoch", "3"),
            ("ss_steps", "1200"),
            ("ss_optimizer", "torch.optim.adamw.AdamW(weight_decay=0.01)"),
            ("ss_learning_rate", "0.0001"),
            ("ss_unet_lr", "1e-04"),
            ("ss_text_encoder_lr", "[5e-05, 2.5e-05]"),
            ("ss_dataset_dirs", r#"{"10_cat": {"n_repeats": 10, "img_count": 25}}"#),
            ("ss_tag_frequency", r#"{"10_cat": {"cat": 25, "sitting": 7}, "reg": {"cat": 3, "dog": 9}}"#),
            ("ss_training_started_at", "1700000000.5"),
            ("ss_training_finished_at", "1700003600.5"),
            ("ss_training_comment", "None"),
            ("ss_v2", "False"),
            ("modelspec.architecture", "stable-diffusion-v1/lora"),
            ("modelspec.title", "cat"),
            ("modelspec.trigger_phrase", "a photo of sks cat"),
        ]));
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(m.network_module.as_deref(), Some("networks.lora"));
        assert_eq!(m.network_dim, Some(DimValue::Number(8.0)));
        assert_eq!(m.network_alpha, Some(DimValue::Number(4.0)));
        assert_eq!(m.network_args.as_ref().unwrap()["conv_dim"], "4");
        assert_eq!(m.resolution, Some((512, 768)));
        assert_eq!((m.num_epochs, m.epoch, m.steps), (Some(10), Some(3), Some(1200)));
        assert_eq!(m.learning_rate, Some(1e-4));
        assert_eq!(m.unet_lr, Some(1e-4));
        assert_eq!(m.text_encoder_lr, Some(vec![5e-5, 2.5e-5]));
        assert_eq!(m.dataset_dirs.as_ref().unwrap()["10_cat"], DatasetDir { n_repeats: 10, img_count: 25 });
        assert_eq!(m.training_seconds(), Some(3600.0));
        assert_eq!(m.training_comment, None, "Python None means absent");
        assert_eq!(m.v2, Some(false));
        assert_eq!(m.modelspec.architecture.as_deref(), Some("stable-diffusion-v1/lora"));
        assert_eq!(m.modelspec.trigger_phrase.as_deref(), Some("a photo of sks cat"));
        assert_eq!(
            m.top_tags(2),
            vec![("cat".to_string(), 28), ("dog".to_string(), 9)],
            "tags summed across folders, most frequent first"
        );
    }

    #[test]
    fn dynamic_and_scalar_forms() {
        let m = LoraMetadata::parse(&map(&[
            ("ss_network_dim", "Dynamic"),
            ("ss_network_alpha", "Dynamic"),
            ("ss_resolution", "1024"),
            ("ss_text_encoder_lr", "5e-05"),
        ]));
        assert_eq!(m.network_dim, Some(DimValue::Dynamic));
        assert_eq!(m.network_alpha, Some(DimValue::Dynamic));
        assert_eq!(m.resolution, Some((1024, 1024)));
        assert_eq!(m.text_encoder_lr, Some(vec![5e-5]));
    }

    #[test]
    fn malformed_values_are_reported_not_fatal() {
        let m = LoraMetadata::parse(&map(&[
            ("ss_network_dim", "eight"),
            ("ss_tag_frequency", "{not json"),
            ("ss_dataset_dirs", "[1, 2]"),
            ("ss_steps", "-3"),
            ("ss_resolution", "(a, b)"),
            ("ss_network_module", "networks.lora"),
        ]));
        assert_eq!(m.network_module.as_deref(), Some("networks.lora"));
        assert_eq!(m.network_dim, None);
        assert_eq!(m.tag_frequency, None);
        assert_eq!(m.dataset_dirs, None);
        assert_eq!(m.steps, None);
        assert_eq!(m.resolution, None);
        let keys: Vec<&str> = m.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["ss_network_dim", "ss_resolution", "ss_steps", "ss_dataset_dirs", "ss_tag_frequency"],
            "{:?}",
            m.problems
        );
        assert!(m.problems[4].to_string().contains("not valid JSON"));
    }

    #[test]
    fn training_time_needs_both_ends_in_order() {
        let m = LoraMetadata::parse(&map(&[("ss_training_started_at", "10"), ("ss_training_finished_at", "5")]));
        assert_eq!(m.training_seconds(), None);
        let m = LoraMetadata::parse(&map(&[("ss_training_started_at", "10")]));
        assert_eq!(m.training_seconds(), None);
    }

    #[test]
    fn ss_only_keeps_training_keys() {
        let m = map(&[
            ("ss_network_dim", "8"),
            ("sshs_model_hash", "x"),
            ("sshs_legacy_hash", "y"),
            ("modelspec.title", "t"),
        ]);
        assert_eq!(ss_only(&m).keys().collect::<Vec<_>>(), ["ss_network_dim"]);
    }
}
