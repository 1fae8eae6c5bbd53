//! Which images a captioning run writes captions for, and where: every image lorakit trains on
//! (`lorakit_dataset::folders::IMAGE_EXTENSIONS`) in a folder — and its subfolders with
//! `recursive`, as kohya's `--recursive` — each captioned in `<stem><caption_extension>` beside it,
//! as `tag_images_by_wd14_tagger.py` writes (`os.path.splitext(path)[0] + caption_extension`).

use std::path::{Path, PathBuf};

use lorakit_dataset::caption::normalize_caption_extension;
use lorakit_dataset::folders::list_images;

/// One image and the caption file it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The image.
    pub image: PathBuf,
    /// Its caption file (it may not exist yet).
    pub caption: PathBuf,
}

/// Images found, and files passed over with the reason.
#[derive(Debug, Default, Clone)]
pub struct Targets {
    /// The images to caption, in path order.
    pub targets: Vec<Target>,
    /// Files named like images that are not captioned (formats lorakit cannot read, FIFOs and
    /// other special files, broken links), with why.
    pub passed_over: Vec<(PathBuf, String)>,
}

/// Why the images could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The folder is missing or unreadable.
    #[error("{}: {source} (give the folder that holds the images)", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a folder.
    #[error("{}: not a folder (give the folder that holds the images)", .0.display())]
    NotAFolder(PathBuf),
}

/// The images under `dir` (and its subfolders, hidden ones skipped, when `recursive`) with their
/// caption paths for `caption_extension` (`.txt`, `txt` and `.caption` all work).
pub fn find_targets(dir: &Path, recursive: bool, caption_extension: &str) -> Result<Targets, TargetError> {
    if dir.exists() && !dir.is_dir() {
        return Err(TargetError::NotAFolder(dir.to_path_buf()));
    }
    let extension = normalize_caption_extension(caption_extension);
    let mut found = Targets::default();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let listing = list_images(&folder).map_err(|source| TargetError::Folder { path: folder.clone(), source })?;
        for image in listing.images {
            if image.broken_link {
                found.passed_over.push((image.path, "a link to a file that does not exist".into()));
                continue;
            }
            let caption = caption_path(&image.path, &extension);
            found.targets.push(Target { image: image.path, caption });
        }
        for path in listing.unsupported {
            found.passed_over.push((path, "an image format lorakit cannot read (use png, jpg, webp or bmp)".into()));
        }
        for (path, kind) in listing.not_regular {
            found.passed_over.push((path, format!("a {kind}, not a file")));
        }
        if recursive {
            folders.extend(listing.subfolders);
        }
    }
    found.targets.sort_by(|a, b| a.image.cmp(&b.image));
    found.passed_over.sort();
    Ok(found)
}

/// `<image without its extension><extension>` (the extension with its dot).
pub fn caption_path(image: &Path, extension: &str) -> PathBuf {
    let mut name = image.with_extension("").into_os_string();
    name.push(extension);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_paths_replace_the_image_extension() {
        assert_eq!(caption_path(Path::new("a/b.c.png"), ".txt"), Path::new("a/b.c.txt"));
        assert_eq!(caption_path(Path::new("a/x.webp"), ".caption"), Path::new("a/x.caption"));
    }
}
