//! Captions for LoRA training data, written next to the images the way kohya's tools write them.
//!
//! - [`targets`]: which images a run captions and where each caption goes (`<stem>.txt`).
//! - [`output`]: writing a caption — skip / overwrite / append an existing one, the trigger word
//!   first, `--dry-run`, atomic writes — and the run's summary (written, skipped, failed with
//!   the reason). Every captioner goes through it, so they all keep the same promises.
//! - [`wd14`]: the WD v3 taggers (timm weights on candle) with kohya's options.
//! - [`florence2`]: Florence-2 natural-language captions (DaViT + BART, beam search) on the
//!   florence-community weights.
//! - [`api`]: captions from any OpenAI-compatible vision chat API, with retries and resumable runs.
//! - [`pil_resize`]: PIL's resize, bit for bit, which the captioners' references use.
//! - [`pil_decode`]: image files decoded as PIL decodes them (JPEGs through libjpeg-turbo).

pub mod api;
pub mod florence2;
pub mod output;
pub mod pil_decode;
pub mod pil_resize;
pub mod targets;
pub mod wd14;
