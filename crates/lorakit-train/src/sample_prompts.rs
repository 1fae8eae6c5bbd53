//! sd-scripts' sample prompt files (`--sample_prompts`, spec §10) and sample image file names.
//!
//! Three formats, chosen by extension (case-insensitive):
//! - `.txt`: one prompt per non-empty line; a line whose **first character** is `#` is a comment
//!   (as in sd-scripts, an indented `#` line is a prompt — a warning says so). Options follow the
//!   prompt after ` --` (space, two dashes): `--n` negative prompt, `--w`/`--h` size, `--d` seed,
//!   `--s` steps, `--l` CFG scale, `--ss` sampler; `--g`, `--cn`, `--ctr`, `--rcfg`, `--fs` (Flux,
//!   ControlNet, Lumina options) are accepted and ignored with a warning. Letters are
//!   case-insensitive.
//! - `.toml`: a `[prompt]` table of defaults and `[[prompt.subset]]` entries, each merged over the
//!   defaults; keys `prompt, negative_prompt, width, height, seed, sample_steps, scale,
//!   sample_sampler` (+ the ignored `guidance_scale, controlnet_image, cfg_trunc_ratio,
//!   renorm_cfg, flow_shift`).
//! - `.json`: a list whose items are such tables or strings parsed like `.txt` lines.
//!
//! Then, as sd-scripts' `sample_image_inference` does: sizes are floored to a multiple of 8 with a
//! minimum of 64, missing values come from [`SampleDefaults`].
//!
//! Deliberate differences from sd-scripts, all on inputs it mishandles: a value that does not parse
//! (`--w abc`) is an error naming the line and option (sd-scripts logs and ignores it); the prompt
//! text itself is never read as an option (sd-scripts parses e.g. a prompt starting with `d 5` as
//! seed 5) and loses trailing spaces; steps are clamped to 1..=1000 in every format (sd-scripts
//! clamps only `.txt`); a TOML subset may override a `[prompt]` default (sd-scripts crashes); a
//! UTF-8 byte-order mark is ignored.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The sampler names sd-scripts knows for SD/SDXL (`get_my_scheduler`); any other name makes it
/// fall back to `ddim`.
pub const SAMPLERS: &[&str] = &[
    "ddim",
    "pndm",
    "lms",
    "k_lms",
    "euler",
    "k_euler",
    "euler_a",
    "k_euler_a",
    "heun",
    "dpm_2",
    "k_dpm_2",
    "dpm_2_a",
    "k_dpm_2_a",
    "dpmsolver",
    "dpmsolver++",
    "dpmsingle",
];

/// One sample to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePrompt {
    /// The prompt text (may be empty).
    pub prompt: String,
    /// Negative prompt (`--n` / `negative_prompt`).
    pub negative: Option<String>,
    /// Width in pixels, a multiple of 8, at least 64.
    pub width: u32,
    /// Height in pixels, a multiple of 8, at least 64.
    pub height: u32,
    /// Seed (`--d` / `seed`); `None` = nondeterministic.
    pub seed: Option<u64>,
    /// Denoising steps, 1..=1000.
    pub steps: u32,
    /// Classifier-free guidance scale (`--l` / `scale`).
    pub cfg_scale: f64,
    /// Embedded guidance of guidance-distilled models (`--g` / `guidance_scale`, Flux.1-dev);
    /// the family's default elsewhere (ignored by models without it).
    pub guidance: f64,
    /// This prompt's sampler (`--ss` / `sample_sampler`); `None` = the run's sampler
    /// ([`SampleDefaults::sampler`], i.e. `--sample_sampler`).
    pub sampler: Option<String>,
    /// Position in the file's prompt list (0-based), used in the image file name.
    pub index: usize,
}

/// Values for whatever a prompt does not set.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleDefaults {
    /// Default width.
    pub width: u32,
    /// Default height.
    pub height: u32,
    /// Default steps.
    pub steps: u32,
    /// Default CFG scale.
    pub cfg_scale: f64,
    /// Default embedded guidance for guidance-distilled models (Flux.1: sd-scripts' 3.5);
    /// `None`: the model has none, and `--g` is ignored with a warning.
    pub guidance: Option<f64>,
    /// The run's sampler (`--sample_sampler`).
    pub sampler: String,
}

impl Default for SampleDefaults {
    /// SD1/SD2/SDXL: 512×512, 30 steps, CFG 7.5, `ddim` (spec §10).
    fn default() -> Self {
        SampleDefaults { width: 512, height: 512, steps: 30, cfg_scale: 7.5, guidance: None, sampler: "ddim".into() }
    }
}

impl SamplePrompt {
    /// The sampler to use: this prompt's, else the run's.
    pub fn sampler_or<'a>(&'a self, defaults: &'a SampleDefaults) -> &'a str {
        self.sampler.as_deref().unwrap_or(&defaults.sampler)
    }
}

/// Why a prompt file cannot be used. Messages name the file and, where it applies, the line or
/// entry and the option.
#[derive(Debug, thiserror::Error)]
pub enum SamplePromptError {
    /// The file cannot be read.
    #[error("cannot read the sample prompt file {}: {source}", path.display())]
    Read {
        /// The prompt file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The extension is not `.txt`, `.toml` or `.json`.
    #[error("{}: sample prompt files must end in .txt, .toml or .json", path.display())]
    UnknownFormat {
        /// The prompt file.
        path: PathBuf,
    },
    /// Something in the file is wrong.
    #[error("{}{at}: {message}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Invalid {
        /// The prompt file, when parsing a file.
        file: Option<PathBuf>,
        /// Where: `line 3`, `entry 2`, `[[prompt.subset]] 1`, or `file` for the whole file.
        at: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The tag of a sample image: epoch end or optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleTag {
    /// Sampled at the end of this epoch: `e{epoch:06}`.
    Epoch(u64),
    /// Sampled after this global step: `{step:06}`.
    Step(u64),
}

/// sd-scripts' sample image name: `<output_name>_<tag>_<idx:02>_<timestamp>[_<seed>].png`
/// (`<output_name>_` left out when there is no output name). `timestamp` is local time as
/// `YYYYmmddHHMMSS`.
pub fn sample_file_name(
    output_name: Option<&str>,
    tag: SampleTag,
    index: usize,
    timestamp: &str,
    seed: Option<u64>,
) -> String {
    let prefix = output_name.map(|n| format!("{n}_")).unwrap_or_default();
    let tag = match tag {
        SampleTag::Epoch(e) => format!("e{e:06}"),
        SampleTag::Step(s) => format!("{s:06}"),
    };
    let seed = seed.map(|s| format!("_{s}")).unwrap_or_default();
    format!("{prefix}{tag}_{index:02}_{timestamp}{seed}.png")
}

/// Reads and parses a prompt file; returns the prompts and warnings for the user.
pub fn parse_prompt_file(
    path: &Path,
    defaults: &SampleDefaults,
) -> Result<(Vec<SamplePrompt>, Vec<String>), SamplePromptError> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let format = match ext.as_deref() {
        Some("txt") => Format::Txt,
        Some("toml") => Format::Toml,
        Some("json") => Format::Json,
        _ => return Err(SamplePromptError::UnknownFormat { path: path.to_path_buf() }),
    };
    let bytes = std::fs::read(path).map_err(|source| SamplePromptError::Read { path: path.to_path_buf(), source })?;
    let text = String::from_utf8(bytes).map_err(|_| invalid(Some(path), "file", "the file is not UTF-8 text"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut warnings = Vec::new();
    let prompts = match format {
        Format::Txt => parse_txt(text, defaults, Some(path), &mut warnings)?,
        Format::Toml => parse_toml(text, defaults, path, &mut warnings)?,
        Format::Json => parse_json(text, defaults, path, &mut warnings)?,
    };
    let prefix = format!("{}: ", path.display());
    let warnings = warnings.into_iter().map(|w| format!("{prefix}{w}")).collect();
    Ok((prompts, warnings))
}

/// Parses the content of a `.txt` prompt file.
pub fn parse_prompt_text(
    text: &str,
    defaults: &SampleDefaults,
) -> Result<(Vec<SamplePrompt>, Vec<String>), SamplePromptError> {
    let mut warnings = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let prompts = parse_txt(text, defaults, None, &mut warnings)?;
    Ok((prompts, warnings))
}

enum Format {
    Txt,
    Toml,
    Json,
}

fn invalid(file: Option<&Path>, at: &str, message: impl Into<String>) -> SamplePromptError {
    SamplePromptError::Invalid { file: file.map(Path::to_path_buf), at: at.to_string(), message: message.into() }
}

/// What one prompt sets, before defaults.
#[derive(Default)]
struct Fields {
    prompt: Option<String>,
    negative: Option<String>,
    width: Option<u64>,
    height: Option<u64>,
    seed: Option<u64>,
    steps: Option<u64>,
    cfg_scale: Option<f64>,
    guidance: Option<f64>,
    sampler: Option<String>,
}

fn parse_txt(
    text: &str,
    defaults: &SampleDefaults,
    file: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<Vec<SamplePrompt>, SamplePromptError> {
    // Python's text mode turns \r\n and lone \r into line ends.
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut prompts = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.trim();
        if line.is_empty() || raw.starts_with('#') {
            continue;
        }
        let at = format!("line {}", i + 1);
        if line.starts_with('#') {
            warnings.push(format!(
                "{at}: `{}` is used as a prompt (only a `#` in the first column starts a comment, as in sd-scripts)",
                short(line)
            ));
        }
        let fields = parse_line(line, defaults.guidance.is_some(), file, &at, warnings)?;
        let index = prompts.len();
        prompts.push(finish(fields, defaults, index, &at, warnings));
    }
    Ok(prompts)
}

/// One `.txt` line (or JSON string): the prompt, then ` --` options.
fn parse_line(
    line: &str,
    guides: bool,
    file: Option<&Path>,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<Fields, SamplePromptError> {
    let mut parts = line.split(" --");
    let mut fields =
        Fields { prompt: Some(parts.next().unwrap_or_default().trim_end().to_string()), ..Fields::default() };
    for part in parts {
        let part = part.trim();
        let (name, value) = match part.split_once(char::is_whitespace) {
            Some((n, v)) => (n, v.trim()),
            None => (part, ""),
        };
        let opt = name.to_ascii_lowercase();
        let err = |what: &str| invalid(file, at, format!("`--{part}`: {what}"));
        let need = |v: &str| if v.is_empty() { Err(err("the option needs a value")) } else { Ok(v.to_string()) };
        let int = |v: &str, example: &str| {
            v.parse::<u64>().map_err(|_| err(&format!("`{v}` is not a whole number (e.g. --{opt} {example})")))
        };
        let float = |v: &str, example: &str| match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(err(&format!("`{v}` is not a number (e.g. --{opt} {example})"))),
        };
        match opt.as_str() {
            "n" => fields.negative = Some(need(value)?),
            "w" => fields.width = Some(int(value, "768")?),
            "h" => fields.height = Some(int(value, "768")?),
            "d" => fields.seed = Some(int(value, "42")?),
            "s" => fields.steps = Some(int(value, "30")?),
            "l" => fields.cfg_scale = Some(float(value, "7.5")?),
            "ss" => fields.sampler = Some(need(value)?),
            "g" if guides => fields.guidance = Some(float(value, "3.5")?),
            "g" | "ctr" | "rcfg" | "fs" => {
                float(value, "1.0")?;
                warnings.push(format!("{at}: `--{name}` ({}) is not used for SD models; ignored", unused_name(&opt)));
            }
            "cn" => {
                need(value)?;
                warnings.push(format!("{at}: `--cn` (ControlNet image) is not supported; ignored"));
            }
            _ => warnings.push(format!("{at}: unknown option `--{}` ignored (sd-scripts ignores it too)", short(part))),
        }
    }
    Ok(fields)
}

fn unused_name(opt: &str) -> &'static str {
    match opt {
        "g" | "guidance_scale" => "Flux embedded guidance",
        "ctr" | "cfg_trunc_ratio" => "CFG truncation ratio",
        "rcfg" | "renorm_cfg" => "CFG renormalisation",
        "fs" | "flow_shift" => "flow shift",
        _ => "ControlNet image",
    }
}

/// At most 60 characters of `s`, for messages.
fn short(s: &str) -> String {
    if s.chars().count() <= 60 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(60).collect::<String>())
    }
}

/// Applies defaults, flooring and clamping.
fn finish(f: Fields, d: &SampleDefaults, index: usize, at: &str, warnings: &mut Vec<String>) -> SamplePrompt {
    let mut size = |v: Option<u64>, default: u32, what: &str| {
        let v = v.unwrap_or(u64::from(default));
        let floored = (v - v % 8).clamp(64, u64::from(u32::MAX - 7));
        if floored != v {
            warnings.push(format!("{at}: {what} {v} becomes {floored} (a multiple of 8, at least 64)"));
        }
        floored as u32
    };
    let width = size(f.width, d.width, "width");
    let height = size(f.height, d.height, "height");
    let steps = f.steps.unwrap_or(u64::from(d.steps));
    let clamped = steps.clamp(1, 1000);
    if clamped != steps {
        warnings.push(format!("{at}: {steps} steps clamped to {clamped} (1 to 1000)"));
    }
    if let Some(s) = &f.sampler {
        if !SAMPLERS.contains(&s.as_str()) {
            warnings.push(format!(
                "{at}: unknown sampler `{s}` (sd-scripts falls back to ddim); known: {}",
                SAMPLERS.join(", ")
            ));
        }
    }
    SamplePrompt {
        prompt: f.prompt.unwrap_or_default(),
        negative: f.negative,
        width,
        height,
        seed: f.seed,
        steps: clamped as u32,
        cfg_scale: f.cfg_scale.unwrap_or(d.cfg_scale),
        guidance: f.guidance.or(d.guidance).unwrap_or(3.5),
        sampler: f.sampler,
        index,
    }
}

/// A TOML/JSON table → fields, checking each key's type.
fn fields_from_table(
    table: &serde_json::Map<String, Value>,
    guides: bool,
    file: &Path,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<Fields, SamplePromptError> {
    let mut f = Fields::default();
    for (key, value) in table {
        if value.is_null() {
            continue;
        }
        let err = |what: &str| invalid(Some(file), at, format!("`{key}` {what}"));
        let text = || value.as_str().map(str::to_string).ok_or_else(|| err("must be a string"));
        let whole = || {
            value
                .as_u64()
                .or_else(|| value.as_f64().filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 1.8e19).map(|x| x as u64))
                .ok_or_else(|| err(&format!("must be a whole number ≥ 0, not {value}")))
        };
        let number =
            || value.as_f64().filter(|x| x.is_finite()).ok_or_else(|| err(&format!("must be a number, not {value}")));
        match key.as_str() {
            "prompt" => f.prompt = Some(text()?),
            "negative_prompt" => f.negative = Some(text()?),
            "width" => f.width = Some(whole()?),
            "height" => f.height = Some(whole()?),
            "seed" => f.seed = Some(whole()?),
            "sample_steps" => f.steps = Some(whole()?),
            "scale" => f.cfg_scale = Some(number()?),
            "sample_sampler" => f.sampler = Some(text()?),
            "guidance_scale" if guides => f.guidance = Some(number()?),
            "guidance_scale" | "cfg_trunc_ratio" | "renorm_cfg" | "flow_shift" => {
                // flow_shift is a string in sd-scripts' .txt parsing; accept both.
                if value.as_f64().is_none() && value.as_str().and_then(|s| s.trim().parse::<f64>().ok()).is_none() {
                    return Err(err(&format!("must be a number, not {value}")));
                }
                warnings.push(format!("{at}: `{key}` ({}) is not used for SD models; ignored", unused_name(key)));
            }
            "controlnet_image" => {
                text()?;
                warnings.push(format!("{at}: `controlnet_image` is not supported; ignored"));
            }
            "enum" | "subset" => {}
            _ => warnings.push(format!("{at}: unknown key `{key}` ignored")),
        }
    }
    Ok(f)
}

fn parse_toml(
    text: &str,
    defaults: &SampleDefaults,
    file: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<SamplePrompt>, SamplePromptError> {
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| invalid(Some(file), "file", format!("not valid TOML: {e}")))?;
    let doc = serde_json::to_value(doc).map_err(|e| invalid(Some(file), "file", e.to_string()))?;
    let no_table = || {
        invalid(
            Some(file),
            "file",
            "expected a `[prompt]` table with `[[prompt.subset]]` entries, e.g.\n[prompt]\nwidth = 768\n\n[[prompt.subset]]\nprompt = \"a cat\"",
        )
    };
    let prompt = doc.get("prompt").and_then(Value::as_object).ok_or_else(no_table)?;
    let subsets = match prompt.get("subset") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => return Err(no_table()),
    };
    let mut base = prompt.clone();
    base.remove("subset");
    let mut out = Vec::new();
    for (i, subset) in subsets.iter().enumerate() {
        let at = format!("[[prompt.subset]] {}", i + 1);
        let subset = subset.as_object().ok_or_else(|| invalid(Some(file), &at, "must be a table"))?;
        let mut merged = base.clone();
        for (k, v) in subset {
            merged.insert(k.clone(), v.clone());
        }
        let fields = fields_from_table(&merged, defaults.guidance.is_some(), file, &at, warnings)?;
        out.push(finish(fields, defaults, out.len(), &at, warnings));
    }
    Ok(out)
}

fn parse_json(
    text: &str,
    defaults: &SampleDefaults,
    file: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<SamplePrompt>, SamplePromptError> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| invalid(Some(file), "file", format!("not valid JSON: {e}")))?;
    let items = doc.as_array().ok_or_else(|| {
        invalid(
            Some(file),
            "file",
            "expected a list of prompts, e.g. [\"a cat --w 768\", {\"prompt\": \"a dog\", \"seed\": 1}]",
        )
    })?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("entry {}", i + 1);
        let fields = match item {
            Value::String(line) => parse_line(line, defaults.guidance.is_some(), Some(file), &at, warnings)?,
            Value::Object(table) => fields_from_table(table, defaults.guidance.is_some(), file, &at, warnings)?,
            _ => return Err(invalid(Some(file), &at, "must be a prompt string or a table of prompt settings")),
        };
        out.push(finish(fields, defaults, out.len(), &at, warnings));
    }
    Ok(out)
}
