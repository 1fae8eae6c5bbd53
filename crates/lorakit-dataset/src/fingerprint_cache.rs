//! A cache of full-decode results (header facts, file hash, perceptual hash,
//! or the decode error), so that checking a dataset again only decodes the
//! images that changed. Decoding dominates a full check; a dataset is usually
//! checked many times while it is being fixed.
//!
//! An entry is valid only for the same absolute path, file size and
//! modification time. The cache is a convenience: a missing, unreadable or
//! corrupt cache file is ignored (and rewritten), never an error.

use crate::probe::{DecodedImage, ImageProbe, ProbeError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

/// Bumped whenever decoding or hashing changes, so old entries are dropped.
const CACHE_VERSION: u32 = 2;

/// File name of the cache inside the cache folder.
pub const CACHE_FILE_NAME: &str = "image-fingerprints-v2.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    len: u64,
    mtime_ns: u128,
    result: CachedResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CachedResult {
    Ok { format: String, stored: (u32, u32), orientation: u8, content_hash: String, phash: u64 },
    Err(ProbeError),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: HashMap<String, Entry>,
}

/// Decode results remembered between runs.
#[derive(Debug, Default)]
pub struct FingerprintCache {
    path: Option<PathBuf>,
    entries: Mutex<HashMap<String, Entry>>,
    dirty: AtomicBool,
}

/// The folder for lorakit's caches: `$LORAKIT_CACHE_DIR`, else the platform
/// cache folder (e.g. `~/.cache/lorakit`).
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LORAKIT_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).map(PathBuf::from);
    if cfg!(target_os = "windows") {
        std::env::var_os("LOCALAPPDATA").map(|d| PathBuf::from(d).join("lorakit").join("cache"))
    } else if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library/Caches/lorakit"))
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".cache")))
            .map(|d| d.join("lorakit"))
    }
}

/// Packs a 128-bit hash as hex (JSON numbers cannot hold it).
fn hex128(v: u128) -> String {
    format!("{v:032x}")
}

fn key_and_stamp(file: &Path) -> Option<(String, u64, u128)> {
    let abs = std::path::absolute(file).ok()?;
    let key = abs.to_str()?.to_owned();
    let meta = std::fs::metadata(&abs).ok()?;
    let mtime_ns = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos();
    Some((key, meta.len(), mtime_ns))
}

impl FingerprintCache {
    /// A cache that remembers nothing.
    pub fn disabled() -> Self {
        FingerprintCache::default()
    }

    /// Opens the cache stored in `dir` (created on save). A bad file starts an empty cache.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(CACHE_FILE_NAME);
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|f| f.version == CACHE_VERSION)
            .map(|f| f.entries)
            .unwrap_or_default();
        FingerprintCache { path: Some(path), entries: Mutex::new(entries), dirty: AtomicBool::new(false) }
    }

    /// The remembered result for `file`, if it has not changed since.
    pub fn get(&self, file: &Path) -> Option<Result<DecodedImage, ProbeError>> {
        self.path.as_ref()?;
        let (key, len, mtime_ns) = key_and_stamp(file)?;
        let entries = self.entries.lock().ok()?;
        let e = entries.get(&key).filter(|e| e.len == len && e.mtime_ns == mtime_ns)?;
        Some(match &e.result {
            CachedResult::Err(err) => Err(err.clone()),
            CachedResult::Ok { format, stored, orientation, content_hash, phash } => {
                let probe = ImageProbe::from_parts(format, *stored, *orientation, len)?;
                let content_hash = u128::from_str_radix(content_hash, 16).ok()?;
                Ok(DecodedImage { probe, content_hash, phash: *phash })
            }
        })
    }

    /// Remembers the result for `file`.
    pub fn put(&self, file: &Path, result: &Result<DecodedImage, ProbeError>) {
        if self.path.is_none() {
            return;
        }
        // Unreadable files are not remembered: permissions may be fixed without touching the file.
        if matches!(result, Err(ProbeError::Unreadable(_))) {
            return;
        }
        let Some((key, len, mtime_ns)) = key_and_stamp(file) else { return };
        let result = match result {
            Ok(d) => CachedResult::Ok {
                format: d.probe.format.to_owned(),
                stored: d.probe.stored_size,
                orientation: d.probe.orientation,
                content_hash: hex128(d.content_hash),
                phash: d.phash,
            },
            Err(e) => CachedResult::Err(e.clone()),
        };
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, Entry { len, mtime_ns, result });
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Writes the cache (atomically) if anything was added.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if !self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let entries = self.entries.lock().map_err(|_| std::io::Error::other("cache lock poisoned"))?;
        let file = CacheFile { version: CACHE_VERSION, entries: entries.clone() };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::fs_atomic::write_atomic(path, &serde_json::to_vec(&file)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_file_changes_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.png");
        image::RgbImage::from_pixel(40, 30, image::Rgb([9, 9, 9])).save(&img).unwrap();
        let decoded = crate::probe::decode_and_fingerprint(&img);
        let cache = FingerprintCache::open(dir.path());
        assert!(cache.get(&img).is_none());
        cache.put(&img, &decoded);
        cache.save().unwrap();

        let cache = FingerprintCache::open(dir.path());
        assert_eq!(cache.get(&img).unwrap().unwrap(), decoded.clone().unwrap());

        // A different file at the same path (different size) is not served from the cache.
        image::RgbImage::from_pixel(41, 30, image::Rgb([9, 9, 9])).save(&img).unwrap();
        assert!(cache.get(&img).is_none());

        std::fs::write(dir.path().join(CACHE_FILE_NAME), b"{not json").unwrap();
        let cache = FingerprintCache::open(dir.path());
        assert!(cache.get(&img).is_none());
        assert!(FingerprintCache::disabled().get(&img).is_none());
    }
}
