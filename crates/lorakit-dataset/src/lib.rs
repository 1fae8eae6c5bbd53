//! The dataset engine of lorakit: everything between a folder of images and
//! the batches a training run sees, matching kohya-ss/sd-scripts.
//!
//! - [`folders`]: DreamBooth `N_name` folders and the images in them.
//! - [`config`]: sd-scripts' dataset TOML (`[general]`, `[[datasets]]`, `[[datasets.subsets]]`).
//! - [`caption`]: caption files, read as sd-scripts reads them.
//! - [`caption_process`]: what a caption becomes each time training loads it (shuffle, dropout, …).
//! - [`prompt_weights`]: A1111 attention weights in captions (`--weighted_captions`).
//! - [`probe`]: image size and EXIF orientation from headers; full decode and fingerprints.
//! - [`bucket`]: aspect-ratio buckets identical to sd-scripts'.
//! - [`dataset`]: loading a dataset: subsets → images → reg balancing → buckets.
//! - [`steps`]: steps per epoch, epochs and total steps.
//! - [`doctor`]: the `lorakit dataset check` report.
//! - [`tags`]: tag captions: statistics and bulk editing.
//! - [`regular_file`]: reads that refuse FIFOs, sockets and devices (which would hang or never end).

pub mod bucket;
pub mod caption;
pub mod caption_process;
pub mod config;
pub mod dataset;
pub mod doctor;
pub mod duplicates;
pub mod fingerprint_cache;
pub mod folders;
pub mod fs_atomic;
pub mod headers;
pub mod preprocess;
pub mod probe;
pub mod prompt_weights;
pub mod regular_file;
pub mod steps;
pub mod tags;
pub mod validation_split;
