//! TensorBoard event files without TensorFlow or a protobuf crate.
//!
//! An event file is a sequence of TFRecords (`u64` LE length, `u32` LE masked CRC-32C of the length
//! bytes, the data, `u32` LE masked CRC-32C of the data). Each record holds one serialized
//! `tensorflow.Event`; only the few fields needed for scalars are encoded by hand:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! [`TensorBoardWriter`] writes such a file (first record: `file_version: "brain.Event:2"`), and
//! [`read_events`] / [`read_scalars`] read one back, verifying every CRC.

use crate::time::unix_seconds;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The `file_version` string of the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

// ---------------------------------------------------------------------------------------------
// CRC-32C
// ---------------------------------------------------------------------------------------------

/// Reflected CRC-32C (Castagnoli) polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ CRC32C_POLY } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli) of `data`, as used by TFRecord (`crc32c(b"123456789") == 0xE306_9283`).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = CRC32C_TABLE[((crc ^ byte as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: `((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// Frames `data` as one TFRecord: length, masked CRC of the length, data, masked CRC of the data.
pub fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// Protobuf encoding (the handful of wire types we need)
// ---------------------------------------------------------------------------------------------

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;
const WIRE_FIXED32: u32 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from((field << 3) | wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Serialized `Event { wall_time, step, summary { value: [{ tag, simple_value }...] } }` (the
/// record payload [`TensorBoardWriter::add_scalars`] writes; `step` 0 is omitted, as proto3 does).
pub fn encode_scalar_event(wall_time: f64, step: i64, values: &[(&str, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in values {
        let mut v = Vec::with_capacity(tag.len() + 8);
        put_bytes(&mut v, 1, tag.as_bytes());
        put_key(&mut v, 2, WIRE_FIXED32);
        v.extend_from_slice(&value.to_le_bytes());
        put_bytes(&mut summary, 1, &v);
    }
    let mut event = Vec::with_capacity(summary.len() + 24);
    put_key(&mut event, 1, WIRE_FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        put_key(&mut event, 2, WIRE_VARINT);
        put_varint(&mut event, step as u64);
    }
    put_bytes(&mut event, 5, &summary);
    event
}

/// Serialized `Event { wall_time, file_version: "brain.Event:2" }` (a file's first record).
pub fn encode_file_version_event(wall_time: f64) -> Vec<u8> {
    let mut event = Vec::with_capacity(32);
    put_key(&mut event, 1, WIRE_FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    put_bytes(&mut event, 3, FILE_VERSION.as_bytes());
    event
}

/// Host name for the file name: `/etc/hostname`, else `$HOSTNAME`, else `localhost`; characters
/// other than `[A-Za-z0-9._-]` become `_`.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string());
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// Appends scalar events to a new TensorBoard event file (buffered; flushed by [`flush`] and on
/// drop).
///
/// [`flush`]: TensorBoardWriter::flush
pub struct TensorBoardWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl TensorBoardWriter {
    /// Creates `dir` (and parents) and a new file `events.out.tfevents.<unix seconds>.<hostname>`
    /// in it, whose first record is the `file_version` event. If that name is taken (a second
    /// writer in the same second), `.1`, `.2`, ... is appended; existing files are never opened.
    /// A resumed run simply creates another file in the same directory: TensorBoard merges them.
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let wall_time = unix_seconds();
        let base = format!("events.out.tfevents.{}.{}", wall_time as u64, hostname());
        let mut suffix = 0u32;
        let (path, file) = loop {
            let name = if suffix == 0 { base.clone() } else { format!("{base}.{suffix}") };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && suffix < 10_000 => suffix += 1,
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            }
        };
        let mut writer = TensorBoardWriter { path, out: BufWriter::new(file) };
        writer.write_record(&encode_file_version_event(wall_time))?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event holding the scalar `tag = value` at `step`.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: i64) -> io::Result<()> {
        self.add_scalars(step, &[(tag, value)])
    }

    /// Appends one event holding several scalars at `step` (nothing is written for an empty slice).
    pub fn add_scalars(&mut self, step: i64, values: &[(&str, f32)]) -> io::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.write_record(&encode_scalar_event(unix_seconds(), step, values))
    }

    /// Writes buffered records to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(&encode_record(data))
    }
}

impl Drop for TensorBoardWriter {
    fn drop(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::warn!("flushing {}: {e}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarEvent {
    /// The value's tag, e.g. `loss/current`.
    pub tag: String,
    /// The event's step.
    pub step: i64,
    /// The value (`simple_value`).
    pub value: f32,
    /// The event's wall time, unix seconds.
    pub wall_time: f64,
}

/// One decoded event (only the fields this module writes; others are skipped).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// Unix seconds.
    pub wall_time: f64,
    /// Training step (0 when absent).
    pub step: i64,
    /// `Some("brain.Event:2")` on a file's first event.
    pub file_version: Option<String>,
    /// `(tag, simple_value)` of the summary's values that have a `simple_value`, in order.
    pub scalars: Vec<(String, f32)>,
}

/// Reads the payloads of all TFRecords in `path`, checking both CRCs of each. A truncated or
/// corrupt record is an `InvalidData` error naming the file and the record's byte offset.
pub fn read_records(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let bad = |offset: usize, msg: String| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: record at byte offset {offset}: {msg}", path.display()))
    };
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let left = bytes.len() - pos;
        if left < 12 {
            return Err(bad(pos, format!("truncated header ({left} of 12 bytes)")));
        }
        let len_bytes = &bytes[pos..pos + 8];
        let stored = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        let computed = masked_crc32c(len_bytes);
        if stored != computed {
            return Err(bad(pos, format!("length CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap());
        let need = 16u64.saturating_add(len);
        if need > left as u64 {
            return Err(bad(pos, format!("truncated record (length {len}, needs {need} bytes, {left} left)")));
        }
        let len = len as usize;
        let data = &bytes[pos + 12..pos + 12 + len];
        let stored = u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap());
        let computed = masked_crc32c(data);
        if stored != computed {
            return Err(bad(pos, format!("data CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")));
        }
        records.push(data.to_vec());
        pos += 16 + len;
    }
    Ok(records)
}

/// Reads and decodes every event in `path` (CRCs checked as in [`read_records`]).
pub fn read_events(path: &Path) -> io::Result<Vec<Event>> {
    let records = read_records(path)?;
    let mut events = Vec::with_capacity(records.len());
    let mut offset = 0usize;
    for data in &records {
        let event = decode_event(data).map_err(|msg| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: record at byte offset {offset}: bad Event protobuf: {msg}", path.display()),
            )
        })?;
        events.push(event);
        offset += 16 + data.len();
    }
    Ok(events)
}

/// Reads every scalar (`simple_value`) in `path`, in file order; an event with several values
/// yields several entries with the same step and wall time.
pub fn read_scalars(path: &Path) -> io::Result<Vec<ScalarEvent>> {
    Ok(read_events(path)?
        .into_iter()
        .flat_map(|e| {
            let (step, wall_time) = (e.step, e.wall_time);
            e.scalars.into_iter().map(move |(tag, value)| ScalarEvent { tag, step, value, wall_time })
        })
        .collect())
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or_else(|| format!("truncated varint at {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at {}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() - self.pos {
            return Err(format!("field of {n} bytes at {} overruns message of {} bytes", self.pos, self.buf.len()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn key(&mut self) -> Result<(u32, u32), String> {
        let key = self.varint()?;
        Ok(((key >> 3) as u32, (key & 7) as u32))
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| "length overflow".to_string())?)
    }

    fn skip(&mut self, wire: u32) -> Result<(), String> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8).map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_FIXED32 => self.take(4).map(drop),
            other => Err(format!("unsupported wire type {other} at {}", self.pos)),
        }
    }
}

fn expect_wire(field: u32, wire: u32, want: u32) -> Result<(), String> {
    if wire == want {
        Ok(())
    } else {
        Err(format!("field {field} has wire type {wire}, expected {want}"))
    }
}

fn decode_event(buf: &[u8]) -> Result<Event, String> {
    let mut event = Event::default();
    let mut d = Decoder::new(buf);
    while !d.done() {
        let (field, wire) = d.key()?;
        match field {
            1 => {
                expect_wire(field, wire, WIRE_FIXED64)?;
                event.wall_time = f64::from_le_bytes(d.take(8)?.try_into().unwrap());
            }
            2 => {
                expect_wire(field, wire, WIRE_VARINT)?;
                event.step = d.varint()? as i64;
            }
            3 => {
                expect_wire(field, wire, WIRE_LEN)?;
                let s = d.len_delimited()?;
                event.file_version = Some(String::from_utf8_lossy(s).into_owned());
            }
            5 => {
                expect_wire(field, wire, WIRE_LEN)?;
                decode_summary(d.len_delimited()?, &mut event.scalars)?;
            }
            _ => d.skip(wire)?,
        }
    }
    Ok(event)
}

fn decode_summary(buf: &[u8], scalars: &mut Vec<(String, f32)>) -> Result<(), String> {
    let mut d = Decoder::new(buf);
    while !d.done() {
        let (field, wire) = d.key()?;
        if field == 1 && wire == WIRE_LEN {
            let mut v = Decoder::new(d.len_delimited()?);
            let mut tag = String::new();
            let mut value = None;
            while !v.done() {
                let (field, wire) = v.key()?;
                match (field, wire) {
                    (1, WIRE_LEN) => tag = String::from_utf8_lossy(v.len_delimited()?).into_owned(),
                    (2, WIRE_FIXED32) => value = Some(f32::from_le_bytes(v.take(4)?.try_into().unwrap())),
                    _ => v.skip(wire)?,
                }
            }
            if let Some(value) = value {
                scalars.push((tag, value));
            }
        } else {
            d.skip(wire)?;
        }
    }
    Ok(())
}
