//! Command jobs: one of this binary's file subcommands (`resize`, `merge`, `convert`,
//! `generate`, `caption`) with an argument list the server builds from a checked request — never an argv
//! from the browser. Every path in it is a typed [`CommandArg`], checked against the roots
//! before the job is queued.

use std::path::{Path, PathBuf};

use super::{inside_roots, JobError};
use crate::Roots;

/// Which subcommand a command job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// `lorakit resize`.
    Resize,
    /// `lorakit merge`.
    Merge,
    /// `lorakit convert`.
    Convert,
    /// `lorakit generate` (the XY plot: `--grid`).
    Generate,
    /// `lorakit caption` (`wd14` or `api` over a folder of images).
    Caption,
}

impl CommandKind {
    /// The subcommand (also the job's `kind`).
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Resize => "resize",
            CommandKind::Merge => "merge",
            CommandKind::Convert => "convert",
            CommandKind::Generate => "generate",
            CommandKind::Caption => "caption",
        }
    }
}

/// The progress phase of a running command job of `kind`.
pub(super) fn phase(kind: &str) -> &'static str {
    match kind {
        "resize" => "resizing",
        "merge" => "merging",
        "convert" => "converting",
        "generate" => "generating",
        "caption" => "captioning",
        _ => "running",
    }
}

/// One argument of a command job.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandArg {
    /// A flag or a value the server wrote (`--rank`, `8`, `--prompt=…`).
    Text(String),
    /// A file or folder the command reads, written `[FLAG=]PATH[:WEIGHT]`; it must exist.
    Input {
        /// `--lora`, `--model`, …; `None`: positional.
        flag: Option<&'static str>,
        /// Absolute.
        path: PathBuf,
        /// The ratio or strength after the last `:` (merge, generate).
        weight: Option<f64>,
    },
    /// A file the command writes, written `[FLAG=]PATH`: never one of the inputs, never a folder.
    Output {
        /// `--output`; `None`: positional.
        flag: Option<&'static str>,
        /// Absolute.
        path: PathBuf,
    },
}

/// A command job to queue.
#[derive(Clone, Debug)]
pub struct CommandJob {
    /// The subcommand.
    pub kind: CommandKind,
    /// Its arguments, in order.
    pub args: Vec<CommandArg>,
    /// What it does in a few words, for the queue table.
    pub summary: String,
    /// The request it was built from, kept for Clone & edit (the tools page refills its form).
    pub request: serde_json::Value,
}

impl CommandJob {
    /// The files it writes.
    pub(super) fn outputs(&self) -> Vec<PathBuf> {
        self.args
            .iter()
            .filter_map(|a| match a {
                CommandArg::Output { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect()
    }

    /// Checks every path against the roots and the outputs against the inputs, and returns the
    /// argument list after the program (`resize IN OUT --rank 8 …`).
    pub(super) fn check(&self, roots: &Roots) -> Result<Vec<String>, JobError> {
        let outside = |p: &Path| {
            JobError::Invalid(format!(
                "{}: outside the GUI's roots (start lorakit gui with --root for the folder that holds it)",
                p.display()
            ))
        };
        let mut inputs = Vec::new();
        for arg in &self.args {
            if let CommandArg::Input { path, .. } = arg {
                if !inside_roots(path, roots) {
                    return Err(outside(path));
                }
                let canonical = path
                    .canonicalize()
                    .map_err(|e| JobError::Invalid(format!("{}: cannot be read: {e}", path.display())))?;
                inputs.push(canonical);
            }
        }
        let mut argv = vec![self.kind.name().to_string()];
        for arg in &self.args {
            let text = match arg {
                CommandArg::Text(text) => {
                    if text.contains('\0') {
                        return Err(JobError::Invalid("an argument holds a NUL character".into()));
                    }
                    text.clone()
                }
                CommandArg::Input { flag, path, weight } => {
                    let mut text = utf8(path)?.to_string();
                    if let Some(w) = weight {
                        if !w.is_finite() {
                            return Err(JobError::Invalid(format!(
                                "{}: weight {w} is not a finite number",
                                path.display()
                            )));
                        }
                        text = format!("{text}:{w}");
                    }
                    with_flag(*flag, text)
                }
                CommandArg::Output { flag, path } => {
                    if !inside_roots(path, roots) {
                        return Err(outside(path));
                    }
                    if path.is_dir() {
                        return Err(JobError::Invalid(format!("{}: a folder; give a file name", path.display())));
                    }
                    let canonical = match path.canonicalize() {
                        Ok(c) => c,
                        Err(_) => path
                            .parent()
                            .and_then(|d| d.canonicalize().ok())
                            .map_or_else(|| path.clone(), |d| d.join(path.file_name().unwrap_or_default())),
                    };
                    if inputs.contains(&canonical) {
                        return Err(JobError::Invalid(format!(
                            "{}: this is also an input; write the {} result to a new file",
                            path.display(),
                            self.kind.name()
                        )));
                    }
                    with_flag(*flag, utf8(path)?.to_string())
                }
            };
            argv.push(text);
        }
        Ok(argv)
    }
}

fn utf8(path: &Path) -> Result<&str, JobError> {
    path.to_str().ok_or_else(|| JobError::Invalid(format!("{}: not a UTF-8 path", path.display())))
}

/// `--flag=value` keeps a value that starts with `-` from being read as a flag.
fn with_flag(flag: Option<&str>, value: String) -> String {
    match flag {
        Some(f) => format!("{f}={value}"),
        None => value,
    }
}
