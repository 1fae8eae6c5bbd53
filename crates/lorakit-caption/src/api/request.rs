//! What is sent and what comes back: the prompt template, the image as an inline JPEG data URL,
//! the chat-completions request body, and the answer parsed and cleaned into a caption.

use std::path::Path;

use base64::Engine as _;
use image::RgbImage;
use lorakit_dataset::preprocess::{decode_upright_rgb, resize_rgb8, Interpolation, PreprocessError};
use serde_json::{json, Value};

/// The variables a prompt may use, with what they stand for (`{{` and `}}` write a brace).
pub const VARIABLES: &str = "{trigger} (the --trigger word), {tags} (the image's existing caption), {name} (the \
                             image's file name without extension), {folder} (its folder without the repeats prefix)";

/// A prompt with `{trigger}`, `{tags}`, `{name}` and `{folder}` filled in per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Trigger,
    Tags,
    Name,
    Folder,
}

/// One image's values for a [`Template`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptVars<'a> {
    /// The trigger word.
    pub trigger: Option<&'a str>,
    /// The image's existing caption (e.g. WD14 tags to refine).
    pub tags: Option<&'a str>,
    /// The file stem.
    pub name: &'a str,
    /// The folder name without kohya's `<repeats>_` prefix.
    pub folder: &'a str,
}

impl Template {
    /// Parses `text`. `{word}` made of letters, digits and `_` must be one of the variables (a
    /// typo like `{tag}` is an error rather than sent to the model as is); other braces, such
    /// as a JSON example, are kept; `{{` and `}}` write one brace.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("{{") || rest.starts_with("}}") {
                literal.push(c);
                rest = &rest[2..];
                continue;
            }
            if c == '{' {
                let inner = &rest[1..];
                let word_len = inner.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')).unwrap_or(inner.len());
                if word_len > 0 && inner[word_len..].starts_with('}') {
                    let word = &inner[..word_len];
                    let var = match word {
                        "trigger" => Var::Trigger,
                        "tags" => Var::Tags,
                        "name" => Var::Name,
                        "folder" => Var::Folder,
                        _ => {
                            return Err(format!(
                                "the prompt uses {{{word}}}, which is not a variable: use {VARIABLES}; write {{{{ and }}}} \
                                 for literal braces"
                            ))
                        }
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Var(var));
                    rest = &inner[word_len + 1..];
                    continue;
                }
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// Whether the prompt uses `{trigger}`.
    pub fn uses_trigger(&self) -> bool {
        self.parts.contains(&Part::Var(Var::Trigger))
    }

    /// Whether the prompt uses `{tags}`.
    pub fn uses_tags(&self) -> bool {
        self.parts.contains(&Part::Var(Var::Tags))
    }

    /// The prompt for one image (a missing value is empty).
    pub fn render(&self, vars: &PromptVars) -> String {
        let mut out = String::new();
        for part in &self.parts {
            out.push_str(match part {
                Part::Text(t) => t,
                Part::Var(Var::Trigger) => vars.trigger.unwrap_or_default(),
                Part::Var(Var::Tags) => vars.tags.unwrap_or_default(),
                Part::Var(Var::Name) => vars.name,
                Part::Var(Var::Folder) => vars.folder,
            });
        }
        out
    }
}

/// The folder name a prompt's `{folder}` stands for: kohya's `<repeats>_<name>` without the
/// repeats (`10_mychar` → `mychar`), any other name as it is.
pub fn folder_variable(image: &Path) -> String {
    let name = image.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match lorakit_dataset::folders::parse_repeat_folder_name(&name) {
        Some((_, class)) => class,
        None => name,
    }
}

/// An image ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedImage {
    /// `data:image/jpeg;base64,…`.
    pub data_url: String,
    /// Upright size of the file.
    pub original: (u32, u32),
    /// Size sent.
    pub sent: (u32, u32),
}

/// JPEG quality of the images sent: visually lossless for a captioner, a fifth of PNG's size.
const JPEG_QUALITY: u8 = 90;

/// The size an upright `(w, h)` image is sent at: the long side at most `max_side` (never
/// enlarged), the aspect ratio kept, rounded to whole pixels.
pub fn sent_size((w, h): (u32, u32), max_side: u32) -> (u32, u32) {
    let long = w.max(h);
    if long <= max_side || max_side == 0 {
        return (w, h);
    }
    let scale = max_side as f64 / long as f64;
    let side = |s: u32| ((s as f64 * scale).round() as u32).clamp(1, max_side);
    (side(w), side(h))
}

/// Reads `path` upright (EXIF orientation applied, as lorakit trains it), downscales it to
/// `max_side` with PIL's Lanczos filter, and encodes it as a JPEG data URL. The JPEG is written
/// fresh, so no EXIF or other metadata from the file is sent.
pub fn encode_image(path: &Path, max_side: u32) -> Result<EncodedImage, String> {
    let rgb = decode_upright_rgb(path).map_err(|e| match e {
        PreprocessError::Image { source, .. } => format!("{source} (replace or remove the image)"),
        other => other.to_string(),
    })?;
    let original = rgb.dimensions();
    let sent = sent_size(original, max_side);
    let rgb: RgbImage = if sent == original { rgb } else { resize_rgb8(&rgb, sent, Interpolation::Lanczos) };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
        .encode_image(&rgb)
        .map_err(|e| format!("cannot encode it as JPEG: {e}"))?;
    let data_url = format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(&jpeg));
    Ok(EncodedImage { data_url, original, sent })
}

/// The field that carries the token limit: `max_tokens` (every server) or
/// `max_completion_tokens` (OpenAI's reasoning models refuse `max_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokensField {
    /// `max_tokens`.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`.
    MaxCompletionTokens,
}

impl TokensField {
    /// The JSON field name.
    pub fn name(self) -> &'static str {
        match self {
            TokensField::MaxTokens => "max_tokens",
            TokensField::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// What every request of a run carries besides the prompt and the image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestOptions {
    /// The model name the server knows.
    pub model: String,
    /// A system message, if any.
    pub system: Option<String>,
    /// The answer's token limit, if any.
    pub max_tokens: Option<u32>,
    /// Which field carries it.
    pub tokens_field: TokensField,
    /// Sampling temperature; the server's default when `None` (some models refuse any other).
    pub temperature: Option<f32>,
    /// OpenAI's image `detail` (`auto`, `low`, `high`); left out when `None`.
    pub detail: Option<String>,
}

/// The chat-completions request body: an optional system message, then one user message of the
/// prompt and the image.
pub fn request_body(options: &RequestOptions, prompt: &str, data_url: &str) -> Value {
    let mut image_url = json!({ "url": data_url });
    if let Some(detail) = &options.detail {
        image_url["detail"] = json!(detail);
    }
    let mut messages = Vec::new();
    if let Some(system) = &options.system {
        messages.push(json!({ "role": "system", "content": system }));
    }
    messages.push(json!({
        "role": "user",
        "content": [
            { "type": "text", "text": prompt },
            { "type": "image_url", "image_url": image_url },
        ],
    }));
    let mut body = json!({ "model": options.model, "messages": messages });
    if let Some(n) = options.max_tokens {
        body[options.tokens_field.name()] = json!(n);
    }
    if let Some(t) = options.temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// Tokens a request used, as the server's `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `prompt_tokens` (the image's tokens included).
    pub prompt: u64,
    /// `completion_tokens`.
    pub completion: u64,
    /// `total_tokens` (or the sum when the server leaves it out).
    pub total: u64,
}

impl Usage {
    /// Adds `other`.
    pub fn add(&mut self, other: Usage) {
        self.prompt += other.prompt;
        self.completion += other.completion;
        self.total += other.total;
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `choices[0].message.content`, text parts joined.
    pub text: String,
    /// Its tokens (zero when the server reports none).
    pub usage: Usage,
}

/// Reads a chat-completions answer. `content` may be a string or an array of parts (its `text`
/// parts are joined). An answer that is not JSON, has no choices, or no text, or was cut off by
/// the token limit (`finish_reason: "length"`, half a caption) is an error saying so.
pub fn parse_answer(body: &str) -> Result<Answer, String> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| format!("the server's answer is not JSON ({e}): {}", excerpt(body, 200)))?;
    if let Some(message) = error_message(&value) {
        return Err(format!("the server answered with an error: {message}"));
    }
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| format!("the server's answer has no choices: {}", excerpt(body, 200)))?;
    let content = choice.pointer("/message/content");
    let text = match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("")
        }
        _ => String::new(),
    };
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    if finish == Some("length") {
        return Err("the answer was cut off by the token limit (finish_reason \"length\"): raise --max-tokens".into());
    }
    if text.trim().is_empty() {
        let refusal = choice.pointer("/message/refusal").and_then(Value::as_str).filter(|r| !r.is_empty());
        return Err(match refusal {
            Some(r) => format!("the model refused: {}", excerpt(r, 300)),
            None => "the server's answer has no text in choices[0].message.content".into(),
        });
    }
    let count = |k: &str| value.pointer(&format!("/usage/{k}")).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, completion) = (count("prompt_tokens"), count("completion_tokens"));
    let total = value.pointer("/usage/total_tokens").and_then(Value::as_u64).unwrap_or(prompt + completion);
    Ok(Answer { text, usage: Usage { prompt, completion, total } })
}

/// The message of an error body: OpenAI's `{"error": {"message": …}}`, Ollama's
/// `{"error": "…"}`, or a top-level `message`.
pub fn error_message(value: &Value) -> Option<String> {
    match value.get("error") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(e @ Value::Object(_)) => {
            Some(e.get("message").and_then(Value::as_str).map_or_else(|| e.to_string(), String::from))
        }
        _ => value.get("message").and_then(Value::as_str).filter(|_| value.get("choices").is_none()).map(String::from),
    }
}

/// The first `max` characters of `text` on one line, with `…` when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// The caption in a model's answer. Conservative on purpose — only what is never part of a
/// caption goes:
/// 1. a leading `<think>…</think>` block (reasoning models);
/// 2. a first line that is only a lead-in ending with `:` and starting with "Here is",
///    "Here's", "Sure" or "Certainly" (`Here is a caption for the image:`);
/// 3. a leading label `Caption:` or `Description:` (any case, also as `**Caption:**`);
/// 4. quotes around the whole text (`"…"`, `“…”`, `'…'`, `` `…` ``) when the same quote
///    appears nowhere inside;
/// 5. line breaks: the text becomes one line (kohya reads only a caption's first line, so a
///    second paragraph would never be trained on), runs of spaces one space, ends trimmed.
pub fn clean_caption(answer: &str) -> String {
    let mut text = answer.trim();
    if let Some(after) = text.strip_prefix("<think>").and_then(|t| t.split_once("</think>")).map(|(_, a)| a) {
        text = after.trim();
    }
    if let Some((first, rest)) = text.split_once('\n') {
        let lower = first.trim().to_lowercase();
        let lead_in = ["here is", "here's", "sure", "certainly"].iter().any(|p| lower.starts_with(p));
        if lead_in && lower.ends_with(':') && !rest.trim().is_empty() {
            text = rest.trim();
        }
    }
    for label in ["caption:", "description:"] {
        for wrapped in [format!("**{label}**"), label.to_string()] {
            if text.len() >= wrapped.len()
                && text.is_char_boundary(wrapped.len())
                && text[..wrapped.len()].eq_ignore_ascii_case(&wrapped)
            {
                text = text[wrapped.len()..].trim();
            }
        }
    }
    for (open, close) in [('"', '"'), ('“', '”'), ('\'', '\''), ('`', '`')] {
        if let Some(inner) = text.strip_prefix(open).and_then(|t| t.strip_suffix(close)) {
            if !inner.contains(open) && !inner.contains(close) {
                text = inner.trim();
                break;
            }
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_variables_keep_other_braces_and_refuse_typos() {
        let t = Template::parse("Tags: {tags}. {name} in {folder}, {trigger}. JSON {\"a\": 1} {{x}}").unwrap();
        let vars = PromptVars { trigger: Some("lk"), tags: Some("1girl"), name: "img1", folder: "mychar" };
        assert_eq!(t.render(&vars), "Tags: 1girl. img1 in mychar, lk. JSON {\"a\": 1} {x}");
        assert!(t.uses_tags() && t.uses_trigger());
        let err = Template::parse("Describe {tag}").unwrap_err();
        assert!(err.contains("{tag}") && err.contains("{tags}"), "{err}");
        assert_eq!(Template::parse("ünï {name}").unwrap().render(&PromptVars { name: "é", ..vars }), "ünï é");
    }

    #[test]
    fn folders_lose_the_repeats_prefix() {
        assert_eq!(folder_variable(Path::new("img/10_my_char/a.png")), "my_char");
        assert_eq!(folder_variable(Path::new("img/photos/a.png")), "photos");
    }

    #[test]
    fn sizes_shrink_to_the_long_side_and_never_grow() {
        assert_eq!(sent_size((4000, 3000), 1024), (1024, 768));
        assert_eq!(sent_size((300, 2000), 1024), (154, 1024));
        assert_eq!(sent_size((500, 400), 1024), (500, 400));
        assert_eq!(sent_size((5000, 1), 1024), (1024, 1));
    }

    #[test]
    fn answers_are_cleaned_conservatively() {
        assert_eq!(clean_caption("  \"A cat on a mat.\"\n"), "A cat on a mat.");
        assert_eq!(clean_caption("Here is a caption for the image:\n\nA cat\non a mat."), "A cat on a mat.");
        assert_eq!(clean_caption("**Caption:** A cat."), "A cat.");
        assert_eq!(clean_caption("<think>hmm</think>\nA cat."), "A cat.");
        // Kept: quotes that are part of the text, a lead-in without a following caption.
        assert_eq!(clean_caption("\"Hi\" says the \"cat\""), "\"Hi\" says the \"cat\"");
        assert_eq!(clean_caption("Sure, a cat sits on a mat."), "Sure, a cat sits on a mat.");
        assert_eq!(clean_caption("Captions are hard: a cat."), "Captions are hard: a cat.");
    }

    #[test]
    fn answers_parse_from_strings_and_parts_and_garbage_is_named() {
        let a = parse_answer(
            r#"{"choices":[{"message":{"content":"A cat."}}],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(a, Answer { text: "A cat.".into(), usage: Usage { prompt: 5, completion: 3, total: 8 } });
        let parts =
            r#"{"choices":[{"message":{"content":[{"type":"text","text":"A "},{"type":"text","text":"dog."}]}}]}"#;
        assert_eq!(parse_answer(parts).unwrap().text, "A dog.");
        assert!(parse_answer("<html>502</html>").unwrap_err().contains("not JSON"));
        assert!(parse_answer(r#"{"choices":[]}"#).unwrap_err().contains("no choices"));
        assert!(parse_answer(r#"{"choices":[{"message":{"content":""}}]}"#).unwrap_err().contains("no text"));
        let cut = r#"{"choices":[{"message":{"content":"A ca"},"finish_reason":"length"}]}"#;
        assert!(parse_answer(cut).unwrap_err().contains("--max-tokens"));
        assert!(parse_answer(r#"{"error":{"message":"model not found"}}"#).unwrap_err().contains("model not found"));
    }
}
