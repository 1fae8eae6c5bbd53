//! The folders the GUI may touch, fixed at start.
//!
//! Every path from the browser is a root id plus a relative path. It is refused before it
//! reaches the file system when it is absolute, holds `..`, a NUL or a Windows prefix; then it
//! is joined to the root, canonicalised (symlinks resolved) and must still lie under the root,
//! compared component by component — so a symlink inside a root that points outside is refused
//! too.

use std::path::{Component, Path, PathBuf};

use crate::GuiError;

/// The canonicalised roots, in the order given.
#[derive(Debug, Clone)]
pub struct Roots {
    roots: Vec<PathBuf>,
}

/// Why a path from the browser was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// No root has that id.
    #[error("no root {0}")]
    NoSuchRoot(usize),
    /// Absolute, `..`, NUL, or it leaves the root after resolving symlinks.
    #[error("{0}: not inside the root")]
    Outside(String),
    /// It does not exist (or cannot be read).
    #[error("{0}: not found")]
    NotFound(String),
}

impl Roots {
    /// Canonicalises `dirs`; each must be an existing folder.
    pub fn new(dirs: &[PathBuf]) -> Result<Roots, GuiError> {
        if dirs.is_empty() {
            return Err(GuiError::NoRoot);
        }
        let mut roots = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let canonical =
                dir.canonicalize().map_err(|e| GuiError::Root { path: dir.clone(), reason: e.to_string() })?;
            if !canonical.is_dir() {
                return Err(GuiError::Root { path: dir.clone(), reason: "not a folder".into() });
            }
            roots.push(canonical);
        }
        Ok(Roots { roots })
    }

    /// Every root, canonical.
    pub fn all(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The existing file or folder `relative` names under root `root`, canonical.
    pub fn resolve(&self, root: usize, relative: &str) -> Result<PathBuf, PathError> {
        let base = self.roots.get(root).ok_or(PathError::NoSuchRoot(root))?;
        let outside = || PathError::Outside(relative.to_string());
        if relative.contains('\0') {
            return Err(outside());
        }
        let rel = Path::new(relative);
        for c in rel.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(outside()),
            }
        }
        let joined = base.join(rel);
        let canonical = joined.canonicalize().map_err(|_| PathError::NotFound(relative.to_string()))?;
        if canonical.starts_with(base) {
            Ok(canonical)
        } else {
            Err(outside())
        }
    }

    /// `path`'s place under root `root` as the browser names it (`/`-separated), when it is
    /// inside.
    pub fn relative(&self, root: usize, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(self.roots.get(root)?).ok()?;
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        Some(parts?.join("/"))
    }
}
