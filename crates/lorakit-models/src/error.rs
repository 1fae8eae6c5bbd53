//! The error type of model loading; forward passes return `candle_core::Result`.

use std::path::PathBuf;

use crate::weights::WeightProblem;

/// What went wrong while loading or preparing a model. Every variant names the file or source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not a usable checkpoint (truncated, not safetensors, a pickle, …).
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// The checkpoint is of a model family this build cannot run yet.
    #[error("{}: {message}", path.display())]
    UnsupportedFamily { path: PathBuf, message: String },
    /// Tensors a model needs are missing or have other shapes (`origin`: the file or folder).
    #[error("{origin}: {} tensor(s) missing or mis-shaped: {}{} — is this a checkpoint of the expected model and configuration?",
        problems.len(),
        problems.iter().take(4).map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
        if problems.len() > 4 { ", …" } else { "" })]
    BadWeights { origin: String, problems: Vec<WeightProblem> },
    /// A LoRA file does not fit the model it is applied to.
    #[error("{}: {message}", path.display())]
    Lora { path: PathBuf, message: String },
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A request the model cannot serve (size not a multiple of 8, unknown sampler, …).
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
