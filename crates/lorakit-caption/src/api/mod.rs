//! Captions from any OpenAI-compatible vision chat API — OpenAI, or a local llama.cpp
//! (`llama-server --mmproj`), Ollama, LM Studio or vLLM server running JoyCaption, Qwen-VL, ….
//!
//! Each image is decoded upright, downscaled, re-encoded as a JPEG and sent inline as a base64
//! data URL (Ollama refuses image URLs, and a local file has none) with a prompt filled in from
//! a [`Template`]. A bounded pool of worker threads keeps `concurrency` requests in flight; each
//! caption is written (atomically) as soon as its answer arrives, so a run that is killed loses
//! only the images in flight, and the next run skips what is done. One image failing (a corrupt
//! file, an error answer, garbage) is reported and the others go on; an error every image would
//! hit (unreachable server, refused key, unknown model) stops the run at once.

pub mod client;
pub mod request;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

pub use client::{endpoint, ApiKey, Client, ClientOptions, Failure};
pub use request::{
    clean_caption, encode_image, parse_answer, request_body, RequestOptions, Template, TokensField, Usage,
};

use crate::output::{self, Outcome, Plan, Summary, WriteOptions};
use crate::targets::{caption_path, Target};
use request::{folder_variable, PromptVars};

/// The prompt used without `--prompt`: one plain paragraph, subject first, no preamble — what
/// Flux/SD3 LoRA captions look like (after JoyCaption's "descriptive" prompt).
pub const DEFAULT_PROMPT: &str = "Write a caption for this image, to train an image generation model on. Write one \
paragraph of plain natural language, no lists or headings. Describe the main subject and its appearance, clothing, \
pose and expression, then the setting, lighting, composition and the art style or medium. Start directly with the \
subject, without phrases like \"This image shows\", and answer with the caption only.";

/// A run's settings besides what [`WriteOptions`] says.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Where and how to connect.
    pub client: ClientOptions,
    /// Model, system message, token limit, temperature, detail.
    pub request: RequestOptions,
    /// The prompt.
    pub prompt: Template,
    /// Long side of the images sent, in pixels.
    pub max_side: u32,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Caption extension `{tags}` reads (`None`: the caption extension of the run).
    pub tags_extension: Option<String>,
}

/// What happened to one image, reported as it happens.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// The image.
    pub image: &'a Path,
    /// Its outcome.
    pub outcome: &'a Outcome,
    /// Tokens its request used (`None` when there was no answer).
    pub usage: Option<Usage>,
    /// Images done so far (this one included) and to do in all.
    pub done: usize,
    /// Images to caption in this run.
    pub total: usize,
}

/// A run's result.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Written, skipped, failed.
    pub summary: Summary,
    /// Tokens of every answer, summed.
    pub usage: Usage,
    /// Why the run stopped early, when it did.
    pub stopped: Option<String>,
    /// Images not captioned because the run stopped.
    pub not_done: Vec<PathBuf>,
}

/// One image's work for a worker.
struct Job {
    target: Target,
    existing: Option<String>,
}

/// Captions `targets` through the API (see the module docs); `on_event` hears of each image as
/// its outcome is known.
pub fn caption_all(
    targets: &[Target],
    options: &ApiOptions,
    write: &WriteOptions,
    mut on_event: impl FnMut(&Event),
) -> Report {
    let mut report = Report::default();
    let mut jobs = Vec::new();
    for target in targets {
        match output::plan(target, write) {
            Plan::Caption { existing } => jobs.push(Job { target: target.clone(), existing }),
            Plan::Skip(why) => report.summary.add(target.image.clone(), &Outcome::Skipped(why)),
        }
    }
    if write.dry_run {
        report.summary.dry_run = true;
    }
    let total = jobs.len();
    let client = Client::new(options.client.clone());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut answered = vec![false; total];
    let (tx, rx) = mpsc::channel::<(usize, Result<(String, Usage), Failure>)>();
    std::thread::scope(|scope| {
        for _ in 0..options.concurrency.clamp(1, total.max(1)) {
            let tx = tx.clone();
            let (jobs, client, next, stop) = (&jobs, &client, &next, &stop);
            scope.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let result = caption_one(job, client, options, write);
                if matches!(result, Err(Failure::Fatal(_))) {
                    // Before the answer reaches the collector: no worker starts another image.
                    stop.store(true, Ordering::Relaxed);
                }
                if tx.send((i, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, result) in rx {
            let job = &jobs[i];
            let (outcome, usage) = match result {
                Ok((answer, usage)) => {
                    report.usage.add(usage);
                    let caption = output::compose(&answer, job.existing.as_deref(), write);
                    (output::write(&job.target, &caption, write), Some(usage))
                }
                Err(Failure::Image(why)) => (Outcome::Failed(why), None),
                Err(Failure::Fatal(why)) => {
                    stop.store(true, Ordering::Relaxed);
                    report.stopped.get_or_insert(why);
                    continue;
                }
            };
            answered[i] = true;
            done += 1;
            report.summary.add(job.target.image.clone(), &outcome);
            on_event(&Event { image: &job.target.image, outcome: &outcome, usage, done, total });
        }
    });
    report.not_done = jobs.iter().zip(&answered).filter(|(_, a)| !**a).map(|(j, _)| j.target.image.clone()).collect();
    report
}

/// Asks for one image's caption: its prompt, its image, the request, the cleaned answer.
fn caption_one(
    job: &Job,
    client: &Client,
    options: &ApiOptions,
    write: &WriteOptions,
) -> Result<(String, Usage), Failure> {
    let image = &job.target.image;
    let tags = if options.prompt.uses_tags() { read_tags(job, options) } else { None };
    let name = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let folder = folder_variable(image);
    let vars = PromptVars { trigger: write.trigger.as_deref(), tags: tags.as_deref(), name: &name, folder: &folder };
    let prompt = options.prompt.render(&vars);
    let encoded = encode_image(image, options.max_side).map_err(Failure::Image)?;
    let body = request_body(&options.request, &prompt, &encoded.data_url);
    let text = client.post(&body)?;
    let answer = parse_answer(&text).map_err(Failure::Image)?;
    let caption = clean_caption(&answer.text);
    if caption.is_empty() {
        return Err(Failure::Image(format!(
            "the model's answer has no caption once cleaned: {}",
            request::excerpt(&answer.text, 200)
        )));
    }
    Ok((caption, answer.usage))
}

/// The image's existing caption for `{tags}`: the one being appended to, else the first line of
/// its caption file (or of the `tags_extension` file), if any.
fn read_tags(job: &Job, options: &ApiOptions) -> Option<String> {
    let path = match &options.tags_extension {
        Some(ext) => caption_path(&job.target.image, &lorakit_dataset::caption::normalize_caption_extension(ext)),
        None => {
            if job.existing.is_some() {
                return job.existing.clone();
            }
            job.target.caption.clone()
        }
    };
    let bytes = std::fs::read(path).ok()?;
    let text = lorakit_dataset::caption::decode_text(&bytes).text;
    Some(text.lines().next().unwrap_or_default().trim().to_string()).filter(|t| !t.is_empty())
}
