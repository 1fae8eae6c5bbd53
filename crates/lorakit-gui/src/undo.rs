//! The undo history of caption edits, shared by the tag editor, the natural-language find and
//! replace and the one-caption editor: each applied edit is a record of, per file, the bytes it
//! had before (or that it did not exist) and the bytes the edit wrote. Undo puts a file back
//! only while it still holds what the edit wrote, so a later change (by hand, by another tool)
//! is never lost.
//!
//! With the GUI's state folder the history lives on disk (`<state>/tag-undo/<seq>.json`, one
//! file per edit, written atomically), so a restarted server can still undo; without one (tests,
//! a server made by [`crate::AppState::new`] alone) it is kept in memory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Records kept; older ones are dropped when a new edit is applied.
const KEEP: usize = 100;

/// One applied edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoRecord {
    /// What the edit was, for the messages ("replace \"dog\" with \"cat\"").
    pub summary: String,
    /// The files it wrote.
    pub files: Vec<UndoFile>,
}

/// One file an edit wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoFile {
    /// The file (canonical, under a root when it was written).
    pub path: PathBuf,
    /// Its bytes before the edit; `None`: the edit created it (undo removes it).
    #[serde(with = "bytes_or_text_opt")]
    pub before: Option<Vec<u8>>,
    /// The bytes the edit wrote.
    #[serde(with = "bytes_or_text")]
    pub after: Vec<u8>,
}

/// What an undo did.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Undone {
    /// The edit's summary.
    pub undone: String,
    /// Files put back.
    pub restored: usize,
    /// Files left as they are, each with the reason.
    pub kept: Vec<String>,
}

/// Where the records are.
enum Store {
    Memory(Vec<UndoRecord>),
    Disk(PathBuf),
}

/// The history (newest last).
pub struct UndoHistory {
    store: Mutex<Store>,
}

impl UndoHistory {
    /// A history for this process only.
    pub fn in_memory() -> UndoHistory {
        UndoHistory { store: Mutex::new(Store::Memory(Vec::new())) }
    }

    /// A history kept in `dir` (made when the first edit is recorded).
    pub fn on_disk(dir: PathBuf) -> UndoHistory {
        UndoHistory { store: Mutex::new(Store::Disk(dir)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an applied edit (nothing when it wrote no file).
    pub fn push(&self, record: UndoRecord) -> Result<(), String> {
        if record.files.is_empty() {
            return Ok(());
        }
        match &mut *self.lock() {
            Store::Memory(records) => {
                records.push(record);
                let extra = records.len().saturating_sub(KEEP);
                records.drain(..extra);
                Ok(())
            }
            Store::Disk(dir) => {
                std::fs::create_dir_all(&*dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let existing = record_files(dir)?;
                let next = existing.last().map_or(1, |(n, _)| n + 1);
                let path = dir.join(format!("{next:08}.json"));
                let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
                lorakit_dataset::fs_atomic::write_atomic(&path, &json)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                for (_, old) in existing.iter().take((existing.len() + 1).saturating_sub(KEEP)) {
                    let _ = std::fs::remove_file(old);
                }
                Ok(())
            }
        }
    }

    /// The newest record's summary and file count, without taking it.
    pub fn peek(&self) -> Result<Option<(String, usize)>, String> {
        match &*self.lock() {
            Store::Memory(records) => Ok(records.last().map(|r| (r.summary.clone(), r.files.len()))),
            Store::Disk(dir) => match record_files(dir)?.last() {
                Some((_, path)) => read_record(path).map(|r| Some((r.summary, r.files.len()))),
                None => Ok(None),
            },
        }
    }

    /// Takes the newest record off the history (`None`: nothing to undo).
    pub fn pop(&self) -> Result<Option<UndoRecord>, String> {
        match &mut *self.lock() {
            Store::Memory(records) => Ok(records.pop()),
            Store::Disk(dir) => {
                let Some((_, path)) = record_files(dir)?.pop() else { return Ok(None) };
                let record = read_record(&path)?;
                std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Some(record))
            }
        }
    }
}

/// The numbered record files of `dir`, oldest first (none when the folder does not exist).
fn record_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_suffix(".json")?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn read_record(path: &Path) -> Result<UndoRecord, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not an undo record ({e}); delete the file to undo older edits", path.display()))
}

/// Puts back the files of `record`, each only while it still holds what the edit wrote.
pub fn restore(record: &UndoRecord) -> Undone {
    let mut done = Undone { undone: record.summary.clone(), ..Undone::default() };
    for file in &record.files {
        let path = &file.path;
        match std::fs::read(path) {
            Ok(now) if now == file.after => {
                let result = match &file.before {
                    Some(before) => lorakit_dataset::fs_atomic::write_atomic(path, before),
                    None => std::fs::remove_file(path),
                };
                match result {
                    Ok(()) => done.restored += 1,
                    Err(e) => done.kept.push(format!("{}: {e}", path.display())),
                }
            }
            Ok(_) => done.kept.push(format!("{}: changed since the edit; left as it is", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                done.kept.push(format!("{}: deleted since the edit; left deleted", path.display()))
            }
            Err(e) => done.kept.push(format!("{}: {e}", path.display())),
        }
    }
    done
}

/// File bytes in JSON: a string when they are UTF-8 (captions almost always are), else an array
/// of byte values.
mod bytes_or_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    pub(super) enum Stored {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub(super) fn stored(bytes: &[u8]) -> Stored {
        match std::str::from_utf8(bytes) {
            Ok(text) => Stored::Text(text.to_string()),
            Err(_) => Stored::Bytes(bytes.to_vec()),
        }
    }

    pub(super) fn bytes(stored: Stored) -> Vec<u8> {
        match stored {
            Stored::Text(t) => t.into_bytes(),
            Stored::Bytes(b) => b,
        }
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        stored(bytes).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Stored::deserialize(d).map(bytes)
    }
}

/// [`bytes_or_text`] for a file that may not have existed (`null`).
mod bytes_or_text_opt {
    use super::bytes_or_text::{bytes, stored, Stored};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        value.as_deref().map(stored).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<Stored>::deserialize(d).map(|o| o.map(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(summary: &str, path: &Path, before: Option<&[u8]>, after: &[u8]) -> UndoRecord {
        UndoRecord {
            summary: summary.into(),
            files: vec![UndoFile {
                path: path.to_path_buf(),
                before: before.map(<[u8]>::to_vec),
                after: after.to_vec(),
            }],
        }
    }

    #[test]
    fn records_on_disk_come_back_newest_first_with_their_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let history = UndoHistory::on_disk(dir.path().join("tag-undo"));
        assert_eq!(history.pop().unwrap(), None, "no folder yet: nothing to undo");
        let not_utf8: &[u8] = &[0xff, 0xfe, b'a'];
        let first = record("first", Path::new("/x/a.txt"), Some(not_utf8), b"a, b\n");
        let second = record("second", Path::new("/x/b.txt"), None, b"made");
        history.push(first.clone()).unwrap();
        history.push(second.clone()).unwrap();
        // Another history over the same folder (a restarted server) sees them.
        let again = UndoHistory::on_disk(dir.path().join("tag-undo"));
        assert_eq!(again.peek().unwrap(), Some(("second".into(), 1)));
        assert_eq!(again.pop().unwrap(), Some(second));
        assert_eq!(again.pop().unwrap(), Some(first));
        assert_eq!(again.pop().unwrap(), None);
    }

    #[test]
    fn a_damaged_record_is_named_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000003.json"), "{").unwrap();
        let err = UndoHistory::on_disk(dir.path().to_path_buf()).pop().unwrap_err();
        assert!(err.contains("00000003.json") && err.contains("delete the file"), "{err}");
    }

    #[test]
    fn restore_puts_back_only_what_the_edit_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a.txt"), dir.path().join("b.txt"), dir.path().join("c.txt"));
        std::fs::write(&a, "new a").unwrap();
        std::fs::write(&b, "changed by hand").unwrap();
        std::fs::write(&c, "created").unwrap();
        let record = UndoRecord {
            summary: "edit".into(),
            files: vec![
                UndoFile { path: a.clone(), before: Some(b"old a\n".to_vec()), after: b"new a".to_vec() },
                UndoFile { path: b.clone(), before: Some(b"old b".to_vec()), after: b"new b".to_vec() },
                UndoFile { path: c.clone(), before: None, after: b"created".to_vec() },
            ],
        };
        let done = restore(&record);
        assert_eq!(done.restored, 2, "{done:?}");
        assert_eq!(std::fs::read(&a).unwrap(), b"old a\n");
        assert_eq!(std::fs::read(&b).unwrap(), b"changed by hand");
        assert!(!c.exists(), "a file the edit created is removed");
        assert!(done.kept[0].contains("changed since the edit"), "{done:?}");
    }
}
