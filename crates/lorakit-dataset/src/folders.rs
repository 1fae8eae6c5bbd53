//! DreamBooth folder layout: a train (or regularisation) directory whose
//! `N_name` subfolders are subsets with N repeats, and the image files in them.
//!
//! Rules follow sd-scripts (spec §5.1) with two deliberate changes, both
//! reported: subfolders are taken in name order (sd-scripts uses the
//! filesystem's unspecified order), and image extensions match in any case
//! (sd-scripts only matches all-lower or all-upper, so `photo.Jpg` is skipped
//! there; lorakit uses it and says so).

use serde::Serialize;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Extensions of images lorakit trains on (matched case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp"];

/// Image formats that are recognised but cannot be used (no pure-Rust decoder here).
pub const UNSUPPORTED_IMAGE_EXTENSIONS: &[&str] =
    &["avif", "jxl", "heic", "heif", "gif", "tif", "tiff", "psd", "svg", "ico", "jfif", "raw", "dng", "cr2", "nef"];

/// A `N_name` subfolder found in a train or regularisation directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepeatFolder {
    /// The subfolder.
    pub dir: PathBuf,
    /// N: how many times each image is seen per epoch.
    pub num_repeats: u32,
    /// Everything after the first `_`: the caption for images without a caption file.
    pub class_tokens: String,
}

/// Why a subfolder of the data directory is not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum IgnoredFolder {
    /// The name does not start with a number followed by `_` (e.g. `dog` instead of `10_dog`).
    NoRepeats { dir: PathBuf },
    /// The repeat count is below 1 (e.g. `0_dog`).
    ZeroRepeats { dir: PathBuf, num_repeats: i64 },
    /// The repeat count does not fit (above [`MAX_FOLDER_REPEATS`], e.g. `99999999999_dog`):
    /// an error, never clamped ([`crate::config::plan_from_dirs`] refuses the folder).
    TooManyRepeats { dir: PathBuf, num_repeats: String },
}

/// The largest repeat count a folder name (or `num_repeats`) may hold.
pub const MAX_FOLDER_REPEATS: u32 = u32::MAX;

/// The result of reading a DreamBooth data directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FolderScan {
    /// Usable subfolders, sorted by name.
    pub subsets: Vec<RepeatFolder>,
    /// Subfolders that are skipped, with the reason.
    pub ignored: Vec<IgnoredFolder>,
    /// Images placed directly in the data directory: never used (the classic "No data found").
    pub loose_images: Vec<PathBuf>,
}

/// Parses a DreamBooth folder name as sd-scripts does: the text before the
/// first `_` must be an integer (Python `int()`: surrounding whitespace and a
/// sign allowed); the rest, with its underscores, is the class token.
/// Returns `None` when there is no leading integer, and the number's text as
/// the error when it does not fit in 64 bits (never a clamped value).
pub fn parse_repeat_folder_name(name: &str) -> Option<(Result<i64, String>, String)> {
    let (head, rest) = match name.split_once('_') {
        Some((h, r)) => (h, r),
        None => (name, ""),
    };
    let head = head.trim();
    let digits = head.strip_prefix(['+', '-']).unwrap_or(head);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse::<i64>().map_err(|_| head.to_owned()), rest.to_owned()))
}

fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Lists the `N_name` subfolders of `base` (a `--train_data_dir` or `--reg_data_dir`).
pub fn scan_data_dir(base: &Path) -> std::io::Result<FolderScan> {
    let mut scan = FolderScan::default();
    let mut entries: Vec<_> = std::fs::read_dir(base)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if is_hidden(&name) {
                continue;
            }
            match parse_repeat_folder_name(&name.to_string_lossy()) {
                None => scan.ignored.push(IgnoredFolder::NoRepeats { dir: path }),
                Some((Ok(n), _)) if n < 1 => {
                    scan.ignored.push(IgnoredFolder::ZeroRepeats { dir: path, num_repeats: n })
                }
                Some((n, class_tokens)) => match n.map(u32::try_from) {
                    Ok(Ok(num_repeats)) => scan.subsets.push(RepeatFolder { dir: path, num_repeats, class_tokens }),
                    Ok(Err(_)) | Err(_) => {
                        let num_repeats =
                            name.to_string_lossy().split('_').next().unwrap_or_default().trim().to_owned();
                        scan.ignored.push(IgnoredFolder::TooManyRepeats { dir: path, num_repeats })
                    }
                },
            }
        } else if image_extension_kind(&path) == ExtensionKind::Image {
            scan.loose_images.push(path);
        }
    }
    Ok(scan)
}

/// What a file's extension says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionKind {
    /// A trainable image extension.
    Image,
    /// An image format lorakit cannot read.
    UnsupportedImage,
    /// Anything else (captions, notes, caches).
    Other,
}

/// Classifies a file by its extension, ignoring case.
pub fn image_extension_kind(path: &Path) -> ExtensionKind {
    let Some(ext) = path.extension().and_then(OsStr::to_str) else {
        return ExtensionKind::Other;
    };
    let lower = ext.to_ascii_lowercase();
    if IMAGE_EXTENSIONS.contains(&lower.as_str()) {
        ExtensionKind::Image
    } else if UNSUPPORTED_IMAGE_EXTENSIONS.contains(&lower.as_str()) {
        ExtensionKind::UnsupportedImage
    } else {
        ExtensionKind::Other
    }
}

/// Whether sd-scripts' glob would find this image: it matches the extension only
/// in all-lower or all-upper case.
pub fn sd_scripts_matches_extension(path: &Path) -> bool {
    match path.extension().and_then(OsStr::to_str) {
        Some(ext) => ext == ext.to_ascii_lowercase() || ext == ext.to_ascii_uppercase(),
        None => false,
    }
}

/// One image file found in a subset folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Path as found (the folder joined with the file name).
    pub path: PathBuf,
    /// The name is a symbolic link.
    pub is_symlink: bool,
    /// The link points nowhere (or to something that is not a file).
    pub broken_link: bool,
}

/// The files of one subset folder.
#[derive(Debug, Clone, Default)]
pub struct FolderListing {
    /// Images, sorted by path as sd-scripts sorts them.
    pub images: Vec<ImageFile>,
    /// Images in formats lorakit cannot read.
    pub unsupported: Vec<PathBuf>,
    /// Hidden images (name starts with `.`): sd-scripts' glob skips them, so does lorakit.
    pub hidden: Vec<PathBuf>,
    /// Subfolders: their images are not used (folders are not searched recursively).
    pub subfolders: Vec<PathBuf>,
    /// Entries named like images that are FIFOs, sockets or devices (directly or through a
    /// link), with what they are: never opened (reading one would hang or never end).
    pub not_regular: Vec<(PathBuf, &'static str)>,
}

/// Lists the images directly inside `dir` (not recursive, as sd-scripts).
pub fn list_images(dir: &Path) -> std::io::Result<FolderListing> {
    let mut listing = FolderListing::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        let is_symlink = file_type.is_symlink();
        // Only links and unusual entries need a second look (`metadata` follows links); the
        // directory entry already says what a plain file or folder is, which saves a stat per image.
        let (is_dir, is_file) = if is_symlink || !(file_type.is_dir() || file_type.is_file()) {
            let target = std::fs::metadata(&path);
            if let Some(kind) = target.as_ref().ok().and_then(crate::regular_file::special_kind) {
                if image_extension_kind(&path) != ExtensionKind::Other {
                    listing.not_regular.push((path, kind));
                }
                continue;
            }
            (target.as_ref().is_ok_and(|m| m.is_dir()), target.is_ok_and(|m| m.is_file()))
        } else {
            (file_type.is_dir(), file_type.is_file())
        };
        if is_dir {
            if !is_hidden(&entry.file_name()) {
                listing.subfolders.push(path);
            }
            continue;
        }
        match image_extension_kind(&path) {
            ExtensionKind::Image => {
                if is_hidden(&entry.file_name()) {
                    listing.hidden.push(path);
                    continue;
                }
                listing.images.push(ImageFile { path, is_symlink, broken_link: is_symlink && !is_file });
            }
            ExtensionKind::UnsupportedImage => listing.unsupported.push(path),
            ExtensionKind::Other => {}
        }
    }
    listing.images.sort_by(|a, b| a.path.as_os_str().as_encoded_bytes().cmp(b.path.as_os_str().as_encoded_bytes()));
    listing.unsupported.sort();
    listing.hidden.sort();
    listing.subfolders.sort();
    listing.not_regular.sort();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_parse_like_python_int() {
        assert_eq!(parse_repeat_folder_name("10_sks_dog"), Some((Ok(10), "sks_dog".into())));
        assert_eq!(parse_repeat_folder_name("10_sks dog"), Some((Ok(10), "sks dog".into())));
        assert_eq!(parse_repeat_folder_name("3"), Some((Ok(3), String::new())));
        assert_eq!(parse_repeat_folder_name(" 4 _x"), Some((Ok(4), "x".into())));
        assert_eq!(parse_repeat_folder_name("+2_x"), Some((Ok(2), "x".into())));
        assert_eq!(parse_repeat_folder_name("0_x"), Some((Ok(0), "x".into())));
        assert_eq!(parse_repeat_folder_name("-1_x"), Some((Ok(-1), "x".into())));
        assert_eq!(parse_repeat_folder_name("dog"), None);
        assert_eq!(parse_repeat_folder_name("x10_dog"), None);
        assert_eq!(parse_repeat_folder_name("_dog"), None);
        assert_eq!(parse_repeat_folder_name("1.5_dog"), None);
        // Too large for any integer type: the text, never a clamped number.
        assert_eq!(parse_repeat_folder_name("99999999999999999999_x").unwrap().0, Err("99999999999999999999".into()));
    }

    #[test]
    fn repeat_counts_that_do_not_fit_are_reported_not_clamped() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["99999999999_big", "99999999999999999999999_huge", "4294967295_max", "2_ok"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let scan = scan_data_dir(dir.path()).unwrap();
        let repeats: Vec<u32> = scan.subsets.iter().map(|s| s.num_repeats).collect();
        assert_eq!(repeats, [2, MAX_FOLDER_REPEATS]);
        let too_many: Vec<String> = scan
            .ignored
            .iter()
            .filter_map(|i| match i {
                IgnoredFolder::TooManyRepeats { num_repeats, .. } => Some(num_repeats.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(too_many, ["99999999999999999999999", "99999999999"]); // in name order
    }

    #[test]
    fn extension_rules() {
        assert_eq!(image_extension_kind(Path::new("a.JPG")), ExtensionKind::Image);
        assert_eq!(image_extension_kind(Path::new("a.Jpeg")), ExtensionKind::Image);
        assert_eq!(image_extension_kind(Path::new("a.avif")), ExtensionKind::UnsupportedImage);
        assert_eq!(image_extension_kind(Path::new("a.txt")), ExtensionKind::Other);
        assert_eq!(image_extension_kind(Path::new("png")), ExtensionKind::Other);
        assert!(sd_scripts_matches_extension(Path::new("a.PNG")));
        assert!(!sd_scripts_matches_extension(Path::new("a.Png")));
    }
}
