//! `lorakit caption api`: captions from an OpenAI-compatible vision chat API. The key comes
//! from an environment variable only (never an argument, so it stays out of shell history and
//! `ps`) and is never printed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use lorakit_caption::api::{self, ApiKey, ApiOptions, ClientOptions, RequestOptions, Template, TokensField};
use lorakit_caption::output::{Outcome, Style};

use super::OutputArgs;

/// Arguments of `lorakit caption api`.
#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// The server, the model and how to ask it (boxed: the `lorakit caption` enum stays small).
    #[command(flatten)]
    pub request: Box<RequestArgs>,
}

/// What `lorakit caption api` asks, of which server, and how.
#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    /// The server's OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1 (Ollama),
    /// http://127.0.0.1:8080/v1 (llama.cpp), http://127.0.0.1:1234/v1 (LM Studio),
    /// https://api.openai.com/v1; a full …/chat/completions URL works too.
    #[arg(long, value_name = "URL")]
    pub api: String,
    /// The model name the server knows (e.g. `llama-joycaption-beta-one`, `qwen2.5vl:7b`, `gpt-4o-mini`).
    #[arg(long, value_name = "NAME")]
    pub api_model: String,
    /// The environment variable holding the API key (sent as `Authorization: Bearer`). Local
    /// servers need none: when the default variable is unset, no key is sent.
    #[arg(long, value_name = "VAR", default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// The prompt. Variables: {trigger}, {tags} (the image's existing caption, e.g. WD14 tags to
    /// refine), {name} (file name without extension), {folder} (folder without the repeats
    /// prefix); {{ and }} write braces. The default asks for one plain paragraph.
    #[arg(long, value_name = "TEXT", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// A system message (JoyCaption suggests "You are a helpful image captioner.").
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Read {tags} from `<image stem><EXT>` instead of the caption file (e.g. `.tags` when WD14
    /// tags live there and the natural-language caption goes to .txt).
    #[arg(long, value_name = "EXT")]
    pub tags_extension: Option<String>,
    /// Token limit of each answer (an answer cut off by it fails, and is asked again next run).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_tokens: u32,
    /// The field that carries --max-tokens (OpenAI's reasoning models want max_completion_tokens).
    #[arg(long, value_enum, default_value_t = TokensFieldArg::MaxTokens)]
    pub max_tokens_field: TokensFieldArg,
    /// Sampling temperature (JoyCaption suggests 0.6); the server's default when not given.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// OpenAI's image detail; left out (the server's default) when not given.
    #[arg(long, value_enum)]
    pub detail: Option<Detail>,
    /// Downscale images so their long side is at most this many pixels before sending.
    #[arg(long, value_name = "PX", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..))]
    pub max_side: u32,
    /// Requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Seconds one request may take, from connecting to the end of the answer (local models on
    /// a CPU are slow).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    pub timeout: f64,
    /// Retries after a failed try (connection errors, timeouts, 408, 429, 5xx), with
    /// exponential back-off from 1 s and the server's Retry-After.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
}

/// `--max-tokens-field`.
#[derive(ValueEnum, Clone, Copy, Debug)]
#[value(rename_all = "snake_case")]
pub enum TokensFieldArg {
    MaxTokens,
    MaxCompletionTokens,
}

/// `--detail`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Detail {
    Auto,
    Low,
    High,
}

/// Runs it.
pub fn run(args: ApiArgs) -> anyhow::Result<ExitCode> {
    let ApiArgs { output, request } = args;
    let args = *request;
    let url = api::endpoint(&args.api).map_err(anyhow::Error::msg)?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout {}: give a positive number of seconds", args.timeout);
    }
    let prompt_text = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --prompt-file {}", file.display()))?
            .trim()
            .to_string(),
        (None, None) => api::DEFAULT_PROMPT.to_string(),
    };
    if prompt_text.trim().is_empty() {
        bail!("the prompt is empty: give --prompt TEXT or a --prompt-file with text");
    }
    let prompt = Template::parse(&prompt_text).map_err(anyhow::Error::msg)?;
    if prompt.uses_trigger() && output.trigger.is_none() {
        bail!("the prompt uses {{trigger}} but no --trigger WORD was given");
    }
    let key = key_from_env(&args.api_key_env)?;
    if prompt.uses_tags() && args.tags_extension.is_none() && !output.overwrite && !output.append {
        eprintln!(
            "note: the prompt uses {{tags}} from the caption files, but images that have one are skipped: add \
             --overwrite (the new caption replaces the tags), --append, or --tags-extension"
        );
    }

    let (targets, write) = output.prepare(Style::Text)?;
    super::report_passed_over(&targets);
    if !write.dry_run {
        // Temporary files a killed run left beside its captions (ours, by dead processes).
        let folders: BTreeSet<_> = targets.targets.iter().filter_map(|t| t.caption.parent()).collect();
        for folder in folders {
            lorakit_dataset::fs_atomic::clean_stale_temp_files_beside(&folder.join("x"));
        }
    }
    let key_note = match &key {
        Some(_) => format!("key from ${}", args.api_key_env),
        None => format!("no key: ${} is not set", args.api_key_env),
    };
    eprintln!("captioning {} images with {} at {url} ({key_note})", targets.targets.len(), args.api_model);

    let options = ApiOptions {
        client: ClientOptions {
            url: url.clone(),
            key,
            timeout: Duration::from_secs_f64(args.timeout),
            retries: args.retries,
            backoff: Duration::from_secs(1),
        },
        request: RequestOptions {
            model: args.api_model.clone(),
            system: args.system.clone(),
            max_tokens: Some(args.max_tokens),
            tokens_field: match args.max_tokens_field {
                TokensFieldArg::MaxTokens => TokensField::MaxTokens,
                TokensFieldArg::MaxCompletionTokens => TokensField::MaxCompletionTokens,
            },
            temperature: args.temperature,
            detail: args.detail.map(|d| format!("{d:?}").to_lowercase()),
        },
        prompt,
        max_side: args.max_side,
        concurrency: args.concurrency as usize,
        tags_extension: args.tags_extension.clone(),
    };
    let report = api::caption_all(&targets.targets, &options, &write, |event| {
        let progress = format!("[{}/{}]", event.done, event.total);
        match event.outcome {
            Outcome::Written(_) => eprintln!("{progress} written {}", event.image.display()),
            Outcome::WouldWrite(caption) => println!("{progress} {}: {caption}", event.image.display()),
            Outcome::Failed(why) => eprintln!("{progress} failed {}: {why}", event.image.display()),
            Outcome::Skipped(_) => {}
        }
    });
    print!("{}", report.summary.render(5));
    let usage = report.usage;
    if usage.total > 0 {
        println!("tokens: {} prompt + {} completion = {} in all", usage.prompt, usage.completion, usage.total);
    }
    if let Some(why) = report.stopped {
        bail!(
            "{why}\nthe run stopped: {} images not captioned (captions written so far are kept; run again to resume)",
            report.not_done.len()
        );
    }
    Ok(if report.summary.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The key in `var`; none when the default variable is unset (local servers need no key), an
/// error when a variable named on purpose is missing.
fn key_from_env(var: &str) -> anyhow::Result<Option<ApiKey>> {
    match std::env::var(var) {
        Ok(value) => Ok(ApiKey::new(value)),
        Err(std::env::VarError::NotPresent) if var == "OPENAI_API_KEY" => Ok(None),
        Err(std::env::VarError::NotPresent) => {
            bail!("--api-key-env {var}: the environment variable is not set (export {var}=… first)")
        }
        Err(std::env::VarError::NotUnicode(_)) => bail!("the environment variable {var} is not valid UTF-8"),
    }
}
