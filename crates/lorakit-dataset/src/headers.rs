//! Minimal readers for the headers of PNG, JPEG, WebP and BMP: the size and
//! EXIF orientation from the first few kilobytes, skipping over everything
//! else with seeks. The `image` crate's decoders read far more (its JPEG
//! decoder reads the whole file), which dominates a header-only scan of a
//! large dataset.
//!
//! These readers answer `None` whenever a file is anything but plain and
//! well-formed; the caller then asks the `image` crate, so a file is never
//! judged by these shortcuts alone.

use image::metadata::Orientation;
use std::io::{Read, Seek, SeekFrom};

/// Header facts: format name, stored `(width, height)`, EXIF orientation (1–8).
pub type HeaderFacts = (&'static str, (u32, u32), u8);

/// Bytes read up front; enough for the headers of nearly every file.
const FIRST_READ: usize = 4096;
/// Largest metadata block read to find an orientation (EXIF is at most 64 KiB in JPEG).
const MAX_EXIF: u64 = 1 << 20;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The orientation in an EXIF block (with or without the `Exif\0\0` prefix).
fn exif_orientation(block: &[u8]) -> u8 {
    let tiff = block.strip_prefix(b"Exif\0\0").unwrap_or(block);
    Orientation::from_exif_chunk(tiff).map(Orientation::to_exif).unwrap_or(1)
}

/// Reads `len` bytes at `offset`, from the buffer when it holds them, else from the file.
fn bytes_at<R: Read + Seek>(file: &mut R, head: &[u8], offset: u64, len: u64) -> Option<Vec<u8>> {
    if len > MAX_EXIF {
        return None;
    }
    let end = offset.checked_add(len)?;
    if end <= head.len() as u64 {
        return Some(head[offset as usize..end as usize].to_vec());
    }
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0; len as usize];
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Reads the header of `file` (positioned at its start; `file_len` bytes long).
pub fn read_header<R: Read + Seek>(file: &mut R, file_len: u64) -> Option<HeaderFacts> {
    let mut head = vec![0u8; FIRST_READ.min(file_len as usize)];
    file.read_exact(&mut head).ok()?;
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        png(file, &head, file_len)
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg(file, &head, file_len)
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        webp(file, &head, file_len)
    } else if head.starts_with(b"BM") {
        bmp(&head)
    } else {
        None
    }
}

fn png<R: Read + Seek>(file: &mut R, head: &[u8], file_len: u64) -> Option<HeaderFacts> {
    if be32(head, 8)? != 13 || head.get(12..16)? != b"IHDR" {
        return None;
    }
    let size = (be32(head, 16)?, be32(head, 20)?);
    // Walk the chunks before the image data for an eXIf chunk.
    let mut pos: u64 = 8;
    let mut orientation = 1;
    loop {
        let chunk_head = bytes_at(file, head, pos, 8)?;
        let len = u64::from(be32(&chunk_head, 0)?);
        let kind = &chunk_head[4..8];
        if kind == b"IDAT" || kind == b"IEND" {
            break;
        }
        if kind == b"eXIf" {
            orientation = exif_orientation(&bytes_at(file, head, pos + 8, len)?);
        }
        pos = pos.checked_add(12 + len)?;
        if pos >= file_len {
            return None;
        }
    }
    Some(("png", size, orientation))
}

fn jpeg<R: Read + Seek>(file: &mut R, head: &[u8], file_len: u64) -> Option<HeaderFacts> {
    let mut pos: u64 = 2;
    let mut orientation = 1;
    loop {
        let m = bytes_at(file, head, pos, 4)?;
        if m[0] != 0xFF {
            return None;
        }
        let marker = m[1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            pos += 2;
            continue;
        }
        let len = u64::from(be16(&m, 2)?);
        if len < 2 {
            return None;
        }
        match marker {
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let sof = bytes_at(file, head, pos + 4, 5)?;
                let (h, w) = (be16(&sof, 1)?, be16(&sof, 3)?);
                return Some(("jpeg", (u32::from(w), u32::from(h)), orientation));
            }
            0xE1 if orientation == 1 => {
                let data = bytes_at(file, head, pos + 4, len - 2)?;
                if data.starts_with(b"Exif\0\0") {
                    orientation = exif_orientation(&data);
                }
            }
            0xD9 | 0xDA => return None, // image data before any frame header
            _ => {}
        }
        pos = pos.checked_add(2 + len)?;
        if pos >= file_len {
            return None;
        }
    }
}

fn webp<R: Read + Seek>(file: &mut R, head: &[u8], file_len: u64) -> Option<HeaderFacts> {
    let kind = head.get(12..16)?;
    let data = 20;
    match kind {
        b"VP8 " => {
            if head.get(data + 3..data + 6)? != [0x9D, 0x01, 0x2A] {
                return None;
            }
            let size = (u32::from(le16(head, data + 6)? & 0x3FFF), u32::from(le16(head, data + 8)? & 0x3FFF));
            Some(("webp", size, 1))
        }
        b"VP8L" => {
            if *head.get(data)? != 0x2F {
                return None;
            }
            let bits = le32(head, data + 1)?;
            Some(("webp", ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1), 1))
        }
        b"VP8X" => {
            let flags = *head.get(data)?;
            let size = (le24(head, data + 4)? + 1, le24(head, data + 7)? + 1);
            let mut orientation = 1;
            if flags & 0x08 != 0 {
                // Find the EXIF chunk (usually after the image data) by skipping chunk by chunk.
                let mut pos: u64 = 12;
                while pos + 8 <= file_len {
                    let ch = bytes_at(file, head, pos, 8)?;
                    let len = u64::from(le32(&ch, 4)?);
                    if &ch[..4] == b"EXIF" {
                        orientation = exif_orientation(&bytes_at(file, head, pos + 8, len)?);
                        break;
                    }
                    pos = pos.checked_add(8 + len + (len & 1))?;
                }
            }
            Some(("webp", size, orientation))
        }
        _ => None,
    }
}

fn bmp(head: &[u8]) -> Option<HeaderFacts> {
    let dib = le32(head, 14)?;
    let size = if dib == 12 {
        (u32::from(le16(head, 18)?), u32::from(le16(head, 20)?))
    } else if dib >= 40 {
        let w = i32::from_le_bytes(head.get(18..22)?.try_into().ok()?);
        let h = i32::from_le_bytes(head.get(22..26)?.try_into().ok()?);
        if w <= 0 || h == 0 || h == i32::MIN {
            return None;
        }
        (w as u32, h.unsigned_abs())
    } else {
        return None;
    };
    Some(("bmp", size, 1))
}
