//! Atomic file replacement: write a temporary file beside the target, flush it
//! to disk, then rename it over the target. A crash or Ctrl-C leaves either the
//! old file or the new one, never half of each.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `contents` atomically, keeping the original file's
/// permissions when it exists. The temporary file lives in the same directory
/// so the final rename never crosses a filesystem.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = new_file_builder(".tmp").tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        // Best effort: a read-only target keeps its mode; failure to copy it is not fatal.
        let _ = std::fs::set_permissions(tmp.path(), meta.permissions());
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Encodes 8-bit RGB pixels (`width × height × 3` bytes, rows top to bottom) as PNG and writes
/// them atomically.
pub fn write_png_atomic(path: &Path, width: u32, height: u32, rgb: &[u8]) -> std::io::Result<()> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    let buffer = image::RgbImage::from_raw(width, height, rgb.to_vec()).ok_or_else(|| {
        invalid(format!(
            "{width}×{height} RGB image needs {} bytes, got {}",
            width as usize * height as usize * 3,
            rgb.len()
        ))
    })?;
    let mut bytes = Vec::new();
    buffer
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| invalid(format!("cannot encode PNG: {e}")))?;
    write_atomic(path, &bytes)
}

/// A temporary-file builder whose files end up readable like any new file (0644 before the
/// umask), not tempfile's private 0600: a LoRA or caption written by lorakit must be readable by
/// the web UI or a ComfyUI running as another user.
fn new_file_builder<'s>(suffix: &'s str) -> tempfile::Builder<'static, 's> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".lorakit-").suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn creates_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.txt");
        write_atomic(&p, b"x").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o044, 0o044 & !current_umask(), "new files are readable by others: {mode:o}");
        }
    }

    #[cfg(unix)]
    fn current_umask() -> u32 {
        // The umask of the test process, read from /proc (no libc call that changes it).
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("Umask:")).map(|l| l[6..].trim().to_string()))
            .and_then(|v| u32::from_str_radix(&v, 8).ok())
            .unwrap_or(0o022)
    }
}
