//! Errors of a training run, each naming the file or setting involved and what to do.

use std::path::{Path, PathBuf};

/// Something that stops a training run (or keeps it from starting).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is invalid.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// The dataset cannot be trained on.
    #[error("dataset: {0}")]
    Dataset(String),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] lorakit_models::Error),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A saved state cannot be resumed from.
    #[error("cannot resume from {}: {message}", path.display())]
    Resume { path: PathBuf, message: String },
    /// The loss became NaN or infinite.
    #[error("{0}")]
    NonFinite(String),
    /// The user interrupted the run (the state was saved if possible).
    #[error("interrupted")]
    Interrupted,
    /// Anything else, already explained.
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    /// A configuration error about `path`.
    pub fn config(path: &Path, message: impl Into<String>) -> Self {
        TrainError::Config { path: path.to_path_buf(), message: message.into() }
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), source }
    }
}

impl From<lorakit_lora::safetensors_file::LoraFileError> for TrainError {
    fn from(e: lorakit_lora::safetensors_file::LoraFileError) -> Self {
        TrainError::Other(e.to_string())
    }
}

/// Result of training operations.
pub type Result<T> = std::result::Result<T, TrainError>;
