//! Which caption files a tags command works on.
//!
//! Each target is one of:
//! - a file: taken as is, whatever its extension;
//! - a folder: walked recursively for files ending in the caption extension;
//!   hidden entries (name starting with `.`) are skipped, symlinked files are
//!   followed, symlinked folders are not (no loops); FIFOs, sockets and devices
//!   with the extension are selected so that reading them fails by name (they
//!   are never opened for reading);
//! - a glob pattern such as `data/**/*.txt` (quote it so the shell leaves it
//!   alone): the files it matches, whatever their extension, so end it with the
//!   caption extension. `*` stays inside one folder, `**` crosses folders.
//!
//! The result is sorted by path, and a file reached twice (also through a
//! symlink) is listed once.

use super::TagsError;
use crate::caption::normalize_caption_extension;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Resolves targets into the caption files to work on (see the module docs).
pub fn select_caption_files(targets: &[PathBuf], caption_extension: &str) -> Result<Vec<PathBuf>, TagsError> {
    let extension = normalize_caption_extension(caption_extension);
    let mut files = Vec::new();
    for target in targets {
        match std::fs::metadata(target) {
            Ok(meta) if meta.is_dir() => walk(target, &mut |path| {
                if has_extension(path, &extension) {
                    files.push(path.to_owned());
                }
            })?,
            Ok(_) => files.push(target.clone()),
            Err(_) => match target.to_str().filter(|t| is_glob(t)) {
                Some(pattern) => files.extend(glob_files(pattern)?),
                None => return Err(TagsError::NotFound(target.clone())),
            },
        }
    }
    files.sort();
    files.dedup();
    let mut seen = HashSet::new();
    files.retain(|path| seen.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone())));
    Ok(files)
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

fn has_extension(path: &Path, extension: &str) -> bool {
    let name = path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default();
    name.len() > extension.len() && name.ends_with(extension.as_bytes())
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

/// Calls `found` for every file under `dir`, depth first in no particular order.
fn walk(dir: &Path, found: &mut dyn FnMut(&Path)) -> Result<(), TagsError> {
    let read_dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let io_error = |source| TagsError::Io { path: read_dir.to_owned(), source };
    for entry in std::fs::read_dir(read_dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        if is_hidden(&name) {
            continue;
        }
        let path = dir.join(&name);
        let file_type = entry.file_type().map_err(io_error)?;
        if file_type.is_dir() {
            walk(&path, found)?;
        } else if !file_type.is_symlink() || std::fs::metadata(&path).is_ok_and(|m| !m.is_dir()) {
            // FIFOs, sockets and devices are listed too: reading refuses them by name
            // (`regular_file`), so they are reported instead of silently left out.
            found(&path);
        }
    }
    Ok(())
}

fn glob_files(pattern: &str) -> Result<Vec<PathBuf>, TagsError> {
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|source| TagsError::InvalidGlob { pattern: pattern.to_owned(), source })?
        .compile_matcher();
    let base = glob_base(pattern);
    let mut files = Vec::new();
    if base.as_os_str().is_empty() || base.is_dir() {
        walk(&base, &mut |path| {
            if matcher.is_match(path) {
                files.push(path.to_owned());
            }
        })?;
    }
    if files.is_empty() {
        return Err(TagsError::NoMatches(pattern.to_owned()));
    }
    Ok(files)
}

/// The folder a glob pattern can match in: its leading components without
/// glob characters (`data/set` for `data/set/**/*.txt`, empty for `*.txt`).
fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    let components: Vec<&str> = pattern.split('/').collect();
    for (i, component) in components.iter().enumerate() {
        if is_glob(component) || i + 1 == components.len() {
            break;
        }
        if i == 0 && component.is_empty() {
            base.push("/");
        } else {
            base.push(component);
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_base_is_the_literal_prefix() {
        assert_eq!(glob_base("data/set/**/*.txt"), PathBuf::from("data/set"));
        assert_eq!(glob_base("*.txt"), PathBuf::new());
        assert_eq!(glob_base("/abs/x*/a.txt"), PathBuf::from("/abs"));
    }

    #[test]
    fn extension_needs_a_name_before_it() {
        assert!(has_extension(Path::new("a/b.txt"), ".txt"));
        assert!(!has_extension(Path::new("a/b.txt.bak"), ".txt"));
        assert!(!has_extension(Path::new("a/.txt"), ".txt"));
    }
}
