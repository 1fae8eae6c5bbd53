//! Atomic file replacement: write a temporary file beside the target, flush it
//! to disk, then rename it over the target. A crash or Ctrl-C leaves either the
//! old file or the new one, never half of each.
//!
//! Temporary files are named `.lorakit-tmp-<pid>-<random>.tmp` ([`TEMP_PREFIX`]), so one left
//! behind by a killed process is recognisably ours and which process wrote it is known:
//! [`clean_stale_temp_files`] removes such leftovers from a folder before a command writes there.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Start of the name of every temporary file lorakit writes (followed by `<pid>-<random>.tmp`).
pub const TEMP_PREFIX: &str = ".lorakit-tmp-";
/// End of the name of every temporary file lorakit writes.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Prefix of the temporary files of lorakit versions before the pid was in the name.
const LEGACY_PREFIX: &str = ".lorakit-";

/// Age after which one of our temporary files is stale even when the process that wrote it
/// seems alive (its pid may have been reused): an atomic write takes seconds, not an hour.
pub const STALE_AGE: Duration = Duration::from_secs(60 * 60);

/// Replaces `path` with `contents` atomically, keeping the original file's
/// permissions (and owner, where this process may set it) when it exists. The temporary file
/// lives in the same directory so the final rename never crosses a filesystem.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(contents))
}

/// [`write_atomic`] with the contents streamed by `fill` into a buffered writer. Errors say
/// which step failed; on any error the temporary file is removed and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let step = |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let prefix = format!("{TEMP_PREFIX}{}-", std::process::id());
    let tmp = new_file_builder(&prefix)
        .tempfile_in(dir)
        .map_err(step(format!("cannot create a temporary file in {}", dir.display())))?;
    let written = step(format!("cannot write the temporary file {}", tmp.path().display()));
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        fill(&mut w).map_err(&written)?;
        w.flush().map_err(&written)?;
    }
    tmp.as_file().sync_all().map_err(&written)?;
    if let Ok(meta) = std::fs::metadata(path) {
        keep_owner_and_mode(tmp.as_file(), &meta)
            .map_err(step(format!("cannot give the new file the permissions of {}", path.display())))?;
    }
    tmp.persist(path).map_err(|e| step(format!("cannot replace {}", path.display()))(e.error))?;
    if let Ok(d) = File::open(dir) {
        // Best effort: makes the rename durable on Unix; not possible on every platform.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Gives the new file the replaced file's mode, and its owner and group where this process
/// may (root, or a group the owner belongs to); a refused ownership change is not an error.
fn keep_owner_and_mode(file: &File, original: &std::fs::Metadata) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let current = file.metadata()?;
        if (current.uid(), current.gid()) != (original.uid(), original.gid()) {
            // Before the mode: a change of owner can clear set-id bits.
            if let Err(e) = std::os::unix::fs::fchown(file, Some(original.uid()), Some(original.gid())) {
                tracing::debug!(error = %e, "cannot keep the replaced file's owner");
            }
        }
    }
    file.set_permissions(original.permissions())
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
fn new_file_builder(prefix: &str) -> tempfile::Builder<'_, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(TEMP_SUFFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder
}

/// What a file name says about a lorakit temporary file: `Some(Some(pid))` for ours with the
/// writer's pid, `Some(None)` for an older version's (no pid), `None` for anything else.
fn temp_file_writer(name: &str) -> Option<Option<u32>> {
    let body = name.strip_suffix(TEMP_SUFFIX)?;
    let alphanumeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if let Some(rest) = body.strip_prefix(TEMP_PREFIX) {
        let (pid, random) = rest.split_once('-')?;
        if !alphanumeric(random) || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return Some(pid.parse().ok());
    }
    // Before the pid was in the name: `.lorakit-<6 random>.tmp` or `.lorakit-<6 random>.safetensors.tmp`.
    let random = body.strip_prefix(LEGACY_PREFIX)?;
    let random = random.strip_suffix(".safetensors").unwrap_or(random);
    (random.len() == 6 && alphanumeric(random)).then_some(None)
}

/// Whether process `pid` is running (true when it cannot be told, e.g. off Unix): what makes a
/// leftover temporary file or folder provably abandoned.
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // Signal 0 checks existence only; EPERM means it exists under another user.
        // SAFETY: kill with signal 0 sends nothing.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes lorakit's own leftover temporary files (from interrupted atomic writes) directly in
/// `dir`, and returns the removed paths. Only regular files named like ours are considered
/// (`.lorakit-tmp-<pid>-<random>.tmp`, or an older version's `.lorakit-<random>[.safetensors].tmp`),
/// and only when provably abandoned — the process that wrote one has exited — or older than
/// [`STALE_AGE`]; a file this process or another running lorakit is writing right now is left
/// alone. Call it once per folder before writing there (it reads the whole folder).
pub fn clean_stale_temp_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(writer) = entry.file_name().to_str().and_then(temp_file_writer) else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.file_type().is_file() {
            continue; // never follow a link or touch a folder
        }
        let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age > STALE_AGE);
        let abandoned = writer.is_some_and(|pid| pid != std::process::id() && !process_alive(pid));
        if old || abandoned {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a temporary file left by an interrupted write");
                    removed.push(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary file"),
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// [`clean_stale_temp_files`] in the folder that will hold `output` (a file about to be written),
/// before a command writes it. Best effort: a folder that cannot be read is left for the write
/// itself to report.
pub fn clean_stale_temp_files_beside(output: &Path) {
    let dir = output.parent().unwrap_or(Path::new(""));
    if let Err(e) = clean_stale_temp_files(dir) {
        tracing::debug!(folder = %dir.display(), error = %e, "cannot look for stale temporary files");
    }
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
    #[test]
    fn replaced_file_keeps_its_mode_and_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&p, Some(4321), Some(4322)).unwrap();
        }
        write_atomic(&p, b"new").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        if root {
            assert_eq!((meta.uid(), meta.gid()), (4321, 4322), "root keeps the caption's owner");
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn failed_write_leaves_target_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.txt");
        std::fs::write(&p, "old").unwrap();
        let err = write_atomic_with(&p, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(err.to_string().contains("cannot write the temporary file") && err.to_string().contains("disk full"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_names_are_recognised() {
        assert_eq!(temp_file_writer(".lorakit-tmp-123-aB3xYz.tmp"), Some(Some(123)));
        assert_eq!(temp_file_writer(".lorakit-aB3xYz.tmp"), Some(None));
        assert_eq!(temp_file_writer(".lorakit-aB3xYz.safetensors.tmp"), Some(None));
        for other in
            ["a.tmp", ".lorakit-tmp-12-.tmp", ".lorakit-tmp-x1-abc.tmp", ".lorakit-cache.json", "x.lorakit-tmp-1-a.tmp"]
        {
            assert_eq!(temp_file_writer(other), None, "{other}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn stale_temp_files_of_ours_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A process that has exited: a child we waited for.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let old = std::time::SystemTime::now() - STALE_AGE - Duration::from_secs(60);
        let make = |name: &str, aged: bool| {
            let p = d.join(name);
            std::fs::write(&p, b"partial").unwrap();
            if aged {
                File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
            }
            p
        };
        let abandoned = make(&format!(".lorakit-tmp-{dead}-abc123.tmp"), false);
        let legacy_old = make(".lorakit-Ab12Cd.safetensors.tmp", true);
        let mine_now = make(&format!(".lorakit-tmp-{me}-abc123.tmp"), false);
        let legacy_new = make(".lorakit-Zz99Yy.tmp", false);
        let not_ours = make("notes.tmp", true);
        let lookalike = make(".lorakit-cache.json", true);
        std::fs::create_dir(d.join(format!(".lorakit-tmp-{dead}-dir000.tmp"))).unwrap();
        std::os::unix::fs::symlink(&not_ours, d.join(format!(".lorakit-tmp-{dead}-lnk000.tmp"))).unwrap();

        let removed = clean_stale_temp_files(d).unwrap();
        let mut want = vec![abandoned.clone(), legacy_old.clone()];
        want.sort();
        assert_eq!(removed, want);
        for kept in [&mine_now, &legacy_new, &not_ours, &lookalike] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        assert!(d.join(format!(".lorakit-tmp-{dead}-dir000.tmp")).is_dir());
        assert!(d.join(format!(".lorakit-tmp-{dead}-lnk000.tmp")).symlink_metadata().is_ok());
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
