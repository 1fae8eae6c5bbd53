//! Caption files: finding the caption of an image and reading it the way
//! sd-scripts does (first line, stripped), while noticing the text problems
//! that silently damage training (BOM glued to the trigger word, CRLF, wrong
//! encoding, extra lines that are ignored).

use serde::Serialize;
use std::path::{Path, PathBuf};

/// Something about a caption file's bytes worth telling the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextNote {
    /// Started with a UTF-8 byte-order mark. sd-scripts keeps it, glued to the first tag.
    Bom,
    /// Windows line endings.
    Crlf,
    /// UTF-16 with a byte-order mark (Windows Notepad "Unicode"); decoded, sd-scripts fails on it.
    Utf16,
    /// Not valid UTF-8; invalid bytes were replaced with U+FFFD.
    InvalidUtf8,
}

impl TextNote {
    /// A sentence for the user.
    pub fn describe(&self) -> &'static str {
        match self {
            TextNote::Bom => {
                "starts with a UTF-8 byte-order mark (BOM); lorakit strips it, sd-scripts would glue it to the first tag"
            }
            TextNote::Crlf => "uses Windows line endings (CRLF); they are stripped",
            TextNote::Utf16 => "is UTF-16 text; lorakit decodes it, sd-scripts stops with a UnicodeDecodeError: re-save as UTF-8",
            TextNote::InvalidUtf8 => {
                "is not valid UTF-8 (invalid bytes replaced by U+FFFD); sd-scripts stops on it: re-save as UTF-8"
            }
        }
    }
}

/// Caption text decoded from a file's bytes, with what was noticed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedText {
    /// The text with any BOM removed (line endings untouched).
    pub text: String,
    /// Problems seen in the bytes.
    pub notes: Vec<TextNote>,
}

/// Decodes caption bytes: UTF-8 (BOM stripped), UTF-16 with BOM, or lossy UTF-8.
pub fn decode_text(bytes: &[u8]) -> DecodedText {
    let mut notes = Vec::new();
    let text = if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        notes.push(TextNote::Bom);
        utf8_or_lossy(rest, &mut notes)
    } else if bytes.len() >= 2 && (bytes[..2] == [0xFF, 0xFE] || bytes[..2] == [0xFE, 0xFF]) {
        notes.push(TextNote::Utf16);
        let le = bytes[0] == 0xFF;
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|c| if le { u16::from_le_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], c[1]]) })
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        utf8_or_lossy(bytes, &mut notes)
    };
    if text.contains("\r\n") {
        notes.push(TextNote::Crlf);
    }
    DecodedText { text, notes }
}

fn utf8_or_lossy(bytes: &[u8], notes: &mut Vec<TextNote>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            notes.push(TextNote::InvalidUtf8);
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

/// Splits text into lines as Python's universal newlines do (`\n`, `\r\n`, lone `\r`).
pub fn universal_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// A caption read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionFile {
    /// The caption file that was used.
    pub path: PathBuf,
    /// The caption as training reads it (first line stripped; all non-empty lines with wildcards).
    pub text: String,
    /// Number of lines in the file.
    pub lines: usize,
    /// Non-empty lines after the first, which training ignores (without wildcards).
    pub ignored_lines: usize,
    /// The file had no bytes at all (sd-scripts stops with "caption file is empty").
    pub zero_bytes: bool,
    /// Encoding and line-ending problems.
    pub notes: Vec<TextNote>,
}

/// The caption file candidates sd-scripts tries for `image`: `<stem><ext>`, then,
/// for face-crop style names (five or more `_`-separated parts in the whole path),
/// the path without its last four `_` parts.
pub fn caption_candidates(image: &Path, caption_extension: &str) -> Vec<PathBuf> {
    let ext = normalize_caption_extension(caption_extension);
    let base = image.with_extension("");
    let base_bytes = base.as_os_str().as_encoded_bytes();
    let mut out = vec![append_os(&base, &ext)];
    let parts: Vec<&[u8]> = base_bytes.split(|&b| b == b'_').collect();
    if parts.len() >= 5 {
        let keep = parts[..parts.len() - 4].join(&b'_');
        // SAFETY: split at an ASCII byte of a valid OsStr encoding, so each part is valid too.
        let face = unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(keep) };
        let cand = append_os(Path::new(&face), &ext);
        if cand != out[0] {
            out.push(cand);
        }
    }
    out
}

fn append_os(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// Adds the leading dot sd-scripts adds to a caption extension given without one.
pub fn normalize_caption_extension(ext: &str) -> String {
    if ext.is_empty() || ext.starts_with('.') {
        ext.to_owned()
    } else {
        format!(".{ext}")
    }
}

/// Finds and reads the caption of `image`. `Ok(None)` when no caption file exists.
pub fn read_caption(
    image: &Path,
    caption_extension: &str,
    enable_wildcard: bool,
) -> std::io::Result<Option<CaptionFile>> {
    for cand in caption_candidates(image, caption_extension) {
        // Try to read directly instead of checking first: one system call per image, not two.
        let bytes = match crate::regular_file::read_regular(&cand) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) if cand.is_dir() => continue, // a folder with a caption-like name
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", cand.display()))),
        };
        let decoded = decode_text(&bytes);
        let lines = universal_lines(&decoded.text);
        let text = if enable_wildcard {
            lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
        } else {
            lines.first().map(|l| l.trim().to_owned()).unwrap_or_default()
        };
        let ignored_lines =
            if enable_wildcard { 0 } else { lines.iter().skip(1).filter(|l| !l.trim().is_empty()).count() };
        return Ok(Some(CaptionFile {
            path: cand,
            text,
            lines: lines.len(),
            ignored_lines,
            zero_bytes: bytes.is_empty(),
            notes: decoded.notes,
        }));
    }
    Ok(None)
}

/// Caption text (or any text read from a user's files) made safe to print on a terminal: C0
/// controls (ESC, `\r`, `\n`, `\t`, …), DEL, C1 controls (U+0080–U+009F) and the Unicode
/// bidirectional overrides and line separators become visible escapes (`\r`, `\u{1b}`), so a
/// caption can neither move the cursor, recolour, retitle or clear the terminal, nor reorder or
/// hide text. Everything else is unchanged; text without such characters is not copied. Every
/// place that prints caption text (the dataset doctor's text report, `lorakit tags`, training's
/// prompt warnings) goes through this function.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let needs = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(needs) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Adds a caption's tags to a frequency table as sd-scripts' `set_tag_frequency`
/// does for `ss_tag_frequency`: split on `,`, strip, lower-case, skip empties.
pub fn count_tags(caption: &str, freq: &mut std::collections::BTreeMap<String, u64>) {
    for tag in caption.split(',') {
        let tag = tag.trim();
        if !tag.is_empty() {
            *freq.entry(tag.to_lowercase()).or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert!(matches!(escape_controls("1girl, café, 日本"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\x1b[2J\x1b]0;pwned\x07b"), "a\\u{1b}[2J\\u{1b}]0;pwned\\u{7}b");
        assert_eq!(escape_controls("x\ry\nz\t\u{7f}\u{9b}"), "x\\ry\\nz\\t\\u{7f}\\u{9b}");
        assert_eq!(escape_controls("abc\u{202e}fed"), "abc\\u{202e}fed");
    }

    #[test]
    fn bom_and_crlf_are_noted_and_stripped() {
        let d = decode_text(b"\xEF\xBB\xBFsks, dog\r\nsecond\r\n");
        assert_eq!(d.notes, vec![TextNote::Bom, TextNote::Crlf]);
        assert_eq!(universal_lines(&d.text), vec!["sks, dog", "second"]);
    }

    #[test]
    fn utf16_is_decoded() {
        let mut bytes = vec![0xFF, 0xFE];
        for u in "ช้าง, cat".encode_utf16() {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        let d = decode_text(&bytes);
        assert_eq!(d.text, "ช้าง, cat");
        assert_eq!(d.notes, vec![TextNote::Utf16]);
    }

    #[test]
    fn invalid_utf8_is_lossy() {
        let d = decode_text(b"caf\xe9, tag");
        assert_eq!(d.notes, vec![TextNote::InvalidUtf8]);
        assert!(d.text.starts_with("caf\u{FFFD}"));
    }

    #[test]
    fn universal_newlines() {
        assert_eq!(universal_lines("a\rb\r\nc\nd"), vec!["a", "b", "c", "d"]);
        assert_eq!(universal_lines(""), Vec::<&str>::new());
        assert_eq!(universal_lines("\n"), vec![""]);
    }

    #[test]
    fn face_crop_candidate() {
        let c = caption_candidates(Path::new("/d/10_x/img_100_120_40_40.png"), "txt");
        assert_eq!(c[0], PathBuf::from("/d/10_x/img_100_120_40_40.txt"));
        assert_eq!(c[1], PathBuf::from("/d/10_x/img.txt"));
        let c = caption_candidates(Path::new("/d/x/a.png"), ".caption");
        assert_eq!(c, vec![PathBuf::from("/d/x/a.caption")]);
    }

    #[test]
    fn reads_first_line_or_all_with_wildcards() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.png");
        std::fs::write(dir.path().join("a.txt"), "  first, tag \n\n second \n").unwrap();
        let c = read_caption(&img, ".txt", false).unwrap().unwrap();
        assert_eq!(c.text, "first, tag");
        assert_eq!((c.lines, c.ignored_lines), (3, 1));
        let c = read_caption(&img, ".txt", true).unwrap().unwrap();
        assert_eq!(c.text, "first, tag\nsecond");
        assert!(read_caption(&dir.path().join("b.png"), ".txt", false).unwrap().is_none());
    }

    #[test]
    fn tag_counting_matches_sd_scripts() {
        let mut f = Default::default();
        count_tags("Sks, dog , ,dog", &mut f);
        assert_eq!(f.get("sks"), Some(&1));
        assert_eq!(f.get("dog"), Some(&2));
        assert_eq!(f.len(), 2);
    }
}
