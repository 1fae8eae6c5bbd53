//! Reading only regular files. A FIFO (named pipe), socket or device that is
//! named like an image or a caption must never be opened for reading: opening
//! a FIFO blocks until a writer appears (the process hangs), and a device such
//! as `/dev/zero` never ends (the process fills memory). Symbolic links to
//! regular files work as the files they point at.
//!
//! Every image and caption read of this crate goes through [`open_regular`] or
//! [`read_regular`]; folder listings use [`special_kind`] to skip and report
//! such entries without opening them.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

/// What a non-regular, non-folder file is (`None` for a regular file or a folder).
pub fn special_kind(meta: &Metadata) -> Option<&'static str> {
    let file_type = meta.file_type();
    if file_type.is_file() || file_type.is_dir() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if file_type.is_socket() {
            return Some("a socket");
        }
        if file_type.is_char_device() {
            return Some("a character device");
        }
        if file_type.is_block_device() {
            return Some("a block device");
        }
    }
    Some("not a regular file")
}

/// The error for a path that is `kind` instead of a regular file.
pub fn not_regular_error(kind: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("it is {kind}, not a regular file: skipped without reading it (move or delete it)"),
    )
}

/// Opens `path` for reading if it is a regular file (or a link to one). The
/// open itself never blocks: on Unix it is non-blocking, so a FIFO is refused
/// after opening instead of waiting for a writer.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    match special_kind(&meta) {
        None if meta.is_file() => Ok(file),
        None => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "it is a folder, not a file")),
        Some(kind) => Err(not_regular_error(kind)),
    }
}

/// [`std::fs::read`] for regular files only (see [`open_regular`]).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let mut bytes = Vec::with_capacity(file.metadata().map(|m| m.len() as usize).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn fifo_is_refused_without_blocking_and_links_to_files_work() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.txt");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || tx.send(read_regular(&f).map_err(|e| e.to_string())).unwrap());
        let result = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("reading a FIFO hung");
        let message = result.unwrap_err();
        assert!(message.contains("FIFO"), "{message}");

        let file = dir.path().join("real.txt");
        std::fs::write(&file, b"tags").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_regular(&link).unwrap(), b"tags");
        assert!(read_regular(Path::new("/dev/zero")).unwrap_err().to_string().contains("character device"));
    }
}
