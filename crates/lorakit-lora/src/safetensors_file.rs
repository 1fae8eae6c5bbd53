//! Reading and writing LoRA `.safetensors` files.
//!
//! Reading memory-maps the file and validates the header completely (length
//! prefix, JSON, dtypes, shapes, offsets) before any tensor byte is trusted, so
//! a truncated or hostile file gives a one-line error instead of a panic.
//!
//! Writing reproduces what sd-scripts' `save_weights` does: cast every tensor
//! (alpha included) to the save precision, compute `sshs_model_hash` and
//! `sshs_legacy_hash` over an `ss_*`-only serialisation (spec §3.2), add them
//! to the metadata and replace the target file atomically.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Largest header safetensors readers accept (the `safetensors` crate refuses more).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Where sd-webui-additional-networks' legacy hash window starts.
const LEGACY_HASH_OFFSET: usize = 0x10_0000;
/// Length of the legacy hash window.
const LEGACY_HASH_LEN: usize = 0x1_0000;

/// A safetensors element type. Declared in the `safetensors` crate's order,
/// which is the order used to lay tensors out (descending dtype, then name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// MX FP4 (4 bits).
    F4,
    /// MX FP6 E2M3 (6 bits).
    F6E2M3,
    /// MX FP6 E3M2 (6 bits).
    F6E3M2,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// FP8 E5M2.
    F8E5M2,
    /// FP8 E4M3 (the "fn" variant: no infinities).
    F8E4M3,
    /// FP8 E8M0 scale.
    F8E8M0,
    /// FP8 E4M3 FNUZ.
    F8E4M3Fnuz,
    /// FP8 E5M2 FNUZ.
    F8E5M2Fnuz,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex with two f32 parts.
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer (sd-scripts' integer `alpha`).
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    const ALL: [Dtype; 22] = [
        Dtype::Bool,
        Dtype::F4,
        Dtype::F6E2M3,
        Dtype::F6E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::F8E8M0,
        Dtype::F8E4M3Fnuz,
        Dtype::F8E5M2Fnuz,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The name used in safetensors headers (`"F32"`, `"BF16"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::F8E4M3Fnuz => "F8_E4M3FNUZ",
            Dtype::F8E5M2Fnuz => "F8_E5M2FNUZ",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Parses a header dtype name; `None` for names safetensors does not define.
    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Size of one element in bits (sub-byte types exist).
    pub fn bits(self) -> u64 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6E2M3 | Dtype::F6E3M2 => 6,
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 8,
            Dtype::F8E5M2 | Dtype::F8E4M3 | Dtype::F8E8M0 | Dtype::F8E4M3Fnuz | Dtype::F8E5M2Fnuz => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }

    /// True for floating-point element types.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F4
                | Dtype::F6E2M3
                | Dtype::F6E3M2
                | Dtype::F8E5M2
                | Dtype::F8E4M3
                | Dtype::F8E8M0
                | Dtype::F8E4M3Fnuz
                | Dtype::F8E5M2Fnuz
                | Dtype::F16
                | Dtype::BF16
                | Dtype::F32
                | Dtype::C64
                | Dtype::F64
        )
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The precision a LoRA is saved in (`--save_precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// float32.
    #[default]
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
}

impl Precision {
    /// The dtype tensors are stored as.
    pub fn dtype(self) -> Dtype {
        match self {
            Precision::F32 => Dtype::F32,
            Precision::F16 => Dtype::F16,
            Precision::BF16 => Dtype::BF16,
        }
    }
}

/// One tensor's header entry, validated: the byte span matches dtype × shape
/// and lies inside the data region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions; empty for a 0-dim scalar such as `alpha`.
    pub shape: Vec<usize>,
    /// Byte range inside the data region (after the header).
    pub data_offsets: (usize, usize),
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A problem found in a file's bytes. Display says what is wrong and what to do,
/// without the file name (the [`LoraFileError::Invalid`] wrapper adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Zero-byte file.
    #[error("the file is empty (0 bytes); it was never written completely — re-save or re-download it")]
    Empty,
    /// Fewer than 8 bytes: not even the header length fits.
    #[error(
        "the file is only {len} bytes, too short for the 8-byte safetensors header length; it is truncated or not a safetensors file"
    )]
    TooShort {
        /// File length in bytes.
        len: usize,
    },
    /// Header length prefix points past the end of the file.
    #[error(
        "the header claims {header_len} bytes but only {available} follow the length prefix; the file is truncated or not a safetensors file — re-download it"
    )]
    HeaderPastEnd {
        /// Header length from the prefix.
        header_len: u64,
        /// Bytes after the prefix.
        available: usize,
    },
    /// Header larger than any safetensors reader accepts.
    #[error("the header claims {header_len} bytes, more than the 100 MB safetensors allows; the file is corrupt or not a safetensors file")]
    HeaderTooLarge {
        /// Header length from the prefix.
        header_len: u64,
    },
    /// Header bytes are not UTF-8.
    #[error("the header is not valid UTF-8 (bad byte at header offset {offset}); the file is corrupt or not a safetensors file")]
    NotUtf8 {
        /// First invalid byte inside the header.
        offset: usize,
    },
    /// Header is not JSON.
    #[error("the header is not valid JSON ({reason}); the file is corrupt or not a safetensors file")]
    NotJson {
        /// serde_json's message.
        reason: String,
    },
    /// Header JSON is not an object.
    #[error("the header JSON is not an object; the file is not a safetensors file")]
    NotObject,
    /// The same tensor name appears twice.
    #[error("tensor `{name}` appears twice in the header; the file is corrupt — re-save it")]
    DuplicateName {
        /// Tensor name.
        name: String,
    },
    /// A key repeated inside a tensor entry or `__metadata__`.
    #[error("the header repeats a key ({reason}); the file is corrupt — re-save it")]
    DuplicateKey {
        /// serde_json's message, naming the key and position.
        reason: String,
    },
    /// `__metadata__` is not an object of strings.
    #[error("`__metadata__` is malformed ({reason}); safetensors requires string values — re-save the file")]
    BadMetadata {
        /// What is wrong.
        reason: String,
    },
    /// A tensor entry lacks a field or has one of the wrong type.
    #[error("tensor `{name}`: {reason}; the header is corrupt — re-save the file")]
    BadEntry {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// dtype name not defined by safetensors.
    #[error("tensor `{name}` has unknown dtype `{dtype}`; only safetensors dtypes (F32, F16, BF16, …) can be read")]
    UnknownDtype {
        /// Tensor name.
        name: String,
        /// The dtype string found.
        dtype: String,
    },
    /// shape × element size disagrees with the byte span.
    #[error(
        "tensor `{name}` is {dtype} with shape {shape:?}, which needs {expected} bytes, but its data_offsets span {actual}; the header is corrupt — re-save the file"
    )]
    SizeMismatch {
        /// Tensor name.
        name: String,
        /// Element type.
        dtype: Dtype,
        /// Declared shape.
        shape: Vec<u64>,
        /// Bytes dtype × shape needs (saturated at u64::MAX on overflow).
        expected: u64,
        /// Bytes the offsets span.
        actual: u64,
    },
    /// Begin offset after end offset.
    #[error("tensor `{name}` has data_offsets [{begin}, {end}] that run backwards; the header is corrupt — re-save the file")]
    ReversedOffsets {
        /// Tensor name.
        name: String,
        /// Begin offset.
        begin: u64,
        /// End offset.
        end: u64,
    },
    /// Data span past the end of the file.
    #[error(
        "tensor `{name}` ends at data offset {end} but the file holds only {data_len} data bytes; the file is truncated — re-download or re-save it"
    )]
    OffsetOutOfRange {
        /// Tensor name.
        name: String,
        /// End offset.
        end: u64,
        /// Bytes in the data region.
        data_len: usize,
    },
    /// Two tensors share bytes.
    #[error("tensors `{first}` and `{second}` overlap in the data region; the header is corrupt — re-save the file")]
    Overlap {
        /// Earlier tensor.
        first: String,
        /// Tensor starting inside it.
        second: String,
    },
    /// Bytes between tensors that belong to none.
    #[error(
        "data bytes {start}..{end} belong to no tensor; safetensors files pack tensors back to back — re-save the file"
    )]
    Gap {
        /// First unclaimed byte.
        start: usize,
        /// End of the unclaimed span.
        end: usize,
    },
}

/// An error reading or writing a LoRA file; Display is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum LoraFileError {
    /// A module's `alpha` is not one finite number.
    #[error("{}: `{name}` (the module's alpha) {reason}; re-save the file with alpha as one float number", path.display())]
    BadAlpha {
        /// File involved.
        path: PathBuf,
        /// The alpha tensor (module name + `.alpha`).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The OS refused to open, map, or write the file.
    #[error("{}: {action} failed: {source}", path.display())]
    Io {
        /// File involved.
        path: PathBuf,
        /// What was being done ("open", "write", …).
        action: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// The path is a directory.
    #[error("{}: is a directory, not a .safetensors file; pass the LoRA file itself", path.display())]
    IsDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// The path is a pipe, socket or device: reading it could block forever.
    #[error("{}: is not a regular file (a pipe, socket or device); pass the .safetensors file itself", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
    },
    /// The bytes are not a valid safetensors file.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        problem: HeaderError,
    },
    /// Asked for a tensor the file does not have.
    #[error("{}: no tensor named `{name}`; list the file's tensors with `lorakit inspect`", path.display())]
    NoSuchTensor {
        /// File involved.
        path: PathBuf,
        /// Requested name.
        name: String,
    },
    /// The tensor's dtype cannot be converted to f32 here.
    #[error("{}: tensor `{name}` is {dtype}, which lorakit cannot convert to f32; convert the file to F32/F16/BF16 first", path.display())]
    UnsupportedDtype {
        /// File involved.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A tensor handed to the writer is inconsistent.
    #[error("{}: cannot write tensor `{name}`: {reason}", path.display())]
    BadTensor {
        /// Target file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl LoraFileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            LoraFileError::BadAlpha { path, .. }
            | LoraFileError::Io { path, .. }
            | LoraFileError::IsDirectory { path }
            | LoraFileError::NotRegularFile { path }
            | LoraFileError::Invalid { path, .. }
            | LoraFileError::NoSuchTensor { path, .. }
            | LoraFileError::UnsupportedDtype { path, .. }
            | LoraFileError::BadTensor { path, .. } => path,
        }
    }
}

/// A validated safetensors header: tensor entries and string metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Length of the JSON header in bytes (the u64 prefix value).
    pub header_len: usize,
    /// Tensor entries by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The `__metadata__` map (empty when absent).
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// Offset of the data region inside the file.
    pub fn data_start(&self) -> usize {
        8 + self.header_len
    }
}

/// Prefix of the error raised for a repeated key inside a header object.
const DUPLICATE_KEY: &str = "duplicate key";

/// Header entries in file order. Top-level duplicates are kept so they can be
/// reported by name; duplicates inside nested objects fail deserialisation
/// (serde_json's `Value` would silently keep the last one, where the
/// `safetensors` reader rejects a repeated field).
struct RawEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for RawEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = RawEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, StrictValue(v))) = map.next_entry::<String, StrictValue>()? {
                    out.push((k, v));
                }
                Ok(RawEntries(out))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// A JSON value whose objects may not repeat a key.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrictVisitor;
        impl<'de> Visitor<'de> for StrictVisitor {
            type Value = StrictValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::String(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
                let mut out = Vec::new();
                while let Some(StrictValue(v)) = seq.next_element::<StrictValue>()? {
                    out.push(v);
                }
                Ok(StrictValue(Value::Array(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, StrictValue(v))) = map.next_entry::<String, StrictValue>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE_KEY} `{k}`")));
                    }
                    out.insert(k, v);
                }
                Ok(StrictValue(Value::Object(out)))
            }
        }
        deserializer.deserialize_any(StrictVisitor)
    }
}

/// Validates a whole safetensors file held in memory and returns its header.
///
/// Checks, in order: length, the u64 header-length prefix, UTF-8, JSON object,
/// `__metadata__` strings, each tensor's dtype/shape/offsets, that dtype × shape
/// equals the byte span, and that spans tile the data region exactly (no
/// overlap, no gap, nothing past the end). Never panics; all size arithmetic is
/// checked. This is the fuzzing entry point.
pub fn parse_header(bytes: &[u8]) -> Result<Header, HeaderError> {
    if bytes.is_empty() {
        return Err(HeaderError::Empty);
    }
    let Some(prefix) = bytes.get(..8) else {
        return Err(HeaderError::TooShort { len: bytes.len() });
    };
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(prefix);
    let header_len = u64::from_le_bytes(len_bytes);
    let available = bytes.len() - 8;
    if header_len > available as u64 {
        if header_len > MAX_HEADER_LEN {
            return Err(HeaderError::HeaderTooLarge { header_len });
        }
        return Err(HeaderError::HeaderPastEnd { header_len, available });
    }
    if header_len > MAX_HEADER_LEN {
        return Err(HeaderError::HeaderTooLarge { header_len });
    }
    let header_len = header_len as usize; // ≤ available, so it fits
    let header_bytes = &bytes[8..8 + header_len];
    let data_len = available - header_len;
    let text = std::str::from_utf8(header_bytes).map_err(|e| HeaderError::NotUtf8 { offset: e.valid_up_to() })?;
    let RawEntries(entries) = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if e.to_string().starts_with(DUPLICATE_KEY) => {
            HeaderError::DuplicateKey { reason: e.to_string() }
        }
        serde_json::error::Category::Data => HeaderError::NotObject,
        _ => HeaderError::NotJson { reason: e.to_string() },
    })?;

    let mut metadata = BTreeMap::new();
    let mut seen_metadata = false;
    let mut tensors = BTreeMap::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            if seen_metadata {
                return Err(HeaderError::DuplicateName { name });
            }
            seen_metadata = true;
            let Value::Object(map) = value else {
                return Err(HeaderError::BadMetadata { reason: "it is not a JSON object".into() });
            };
            for (k, v) in map {
                let Value::String(s) = v else {
                    return Err(HeaderError::BadMetadata { reason: format!("the value of `{k}` is not a string") });
                };
                metadata.insert(k, s);
            }
            continue;
        }
        let info = parse_entry(&name, &value, data_len)?;
        if tensors.contains_key(&name) {
            return Err(HeaderError::DuplicateName { name });
        }
        tensors.insert(name, info);
    }

    let mut spans: Vec<(&str, (usize, usize))> = tensors.iter().map(|(n, t)| (n.as_str(), t.data_offsets)).collect();
    spans.sort_by_key(|&(name, span)| (span, name));
    let mut cursor = 0usize;
    let mut previous: Option<&str> = None;
    for (name, (begin, end)) in spans {
        if begin < cursor {
            return Err(HeaderError::Overlap {
                first: previous.unwrap_or_default().to_string(),
                second: name.to_string(),
            });
        }
        if begin > cursor {
            return Err(HeaderError::Gap { start: cursor, end: begin });
        }
        cursor = end;
        previous = Some(name);
    }
    if cursor != data_len {
        return Err(HeaderError::Gap { start: cursor, end: data_len });
    }
    Ok(Header { header_len, tensors, metadata })
}

/// Validates one tensor entry of the header.
fn parse_entry(name: &str, value: &Value, data_len: usize) -> Result<TensorInfo, HeaderError> {
    let bad = |reason: &str| HeaderError::BadEntry { name: name.to_string(), reason: reason.to_string() };
    let Value::Object(obj) = value else {
        return Err(bad("its entry is not a JSON object"));
    };
    let dtype_name = obj.get("dtype").ok_or_else(|| bad("`dtype` is missing"))?;
    let dtype_name = dtype_name.as_str().ok_or_else(|| bad("`dtype` is not a string"))?;
    let dtype = Dtype::parse(dtype_name)
        .ok_or_else(|| HeaderError::UnknownDtype { name: name.to_string(), dtype: dtype_name.to_string() })?;
    let shape = obj.get("shape").ok_or_else(|| bad("`shape` is missing"))?;
    let shape = shape.as_array().ok_or_else(|| bad("`shape` is not an array"))?;
    let shape: Vec<u64> = shape
        .iter()
        .map(|d| d.as_u64().ok_or_else(|| bad("`shape` holds something other than a non-negative integer")))
        .collect::<Result<_, _>>()?;
    let offsets = obj.get("data_offsets").ok_or_else(|| bad("`data_offsets` is missing"))?;
    let offsets = offsets.as_array().ok_or_else(|| bad("`data_offsets` is not an array"))?;
    let [begin, end] = offsets.as_slice() else {
        return Err(bad("`data_offsets` does not hold exactly two numbers"));
    };
    let (Some(begin), Some(end)) = (begin.as_u64(), end.as_u64()) else {
        return Err(bad("`data_offsets` holds something other than non-negative integers"));
    };
    if begin > end {
        return Err(HeaderError::ReversedOffsets { name: name.to_string(), begin, end });
    }
    if end > data_len as u64 {
        return Err(HeaderError::OffsetOutOfRange { name: name.to_string(), end, data_len });
    }
    let actual = end - begin;
    let expected_bits =
        shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).and_then(|n| n.checked_mul(dtype.bits()));
    let expected = match expected_bits {
        Some(bits) if bits % 8 == 0 => Some(bits / 8),
        Some(bits) => {
            return Err(bad(&format!("{bits} bits of {dtype} data is not a whole number of bytes")));
        }
        None => None,
    };
    if expected != Some(actual) {
        return Err(HeaderError::SizeMismatch {
            name: name.to_string(),
            dtype,
            shape,
            expected: expected.unwrap_or(u64::MAX),
            actual,
        });
    }
    // Every dimension divides a byte count that fits in the file, so it fits in usize.
    let shape = shape.iter().map(|&d| usize::try_from(d).map_err(|_| bad("a dimension does not fit in memory")));
    let shape = shape.collect::<Result<Vec<_>, _>>()?;
    Ok(TensorInfo { dtype, shape, data_offsets: (begin as usize, end as usize) })
}

/// The bytes behind a [`LoraFile`].
#[derive(Debug)]
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open, validated safetensors file (normally memory-mapped).
#[derive(Debug)]
pub struct LoraFile {
    path: PathBuf,
    storage: Storage,
    header: Header,
}

impl LoraFile {
    /// Memory-maps `path` and validates its header. Errors name the file and
    /// say what to do: a directory, an empty or truncated file, a bad header.
    pub fn open(path: impl AsRef<Path>) -> Result<LoraFile, LoraFileError> {
        let path = path.as_ref().to_path_buf();
        let io = |action, source| LoraFileError::Io { path: path.clone(), action, source };
        let meta = std::fs::metadata(&path).map_err(|e| io("open", e))?;
        if meta.is_dir() {
            return Err(LoraFileError::IsDirectory { path });
        }
        if !meta.is_file() {
            return Err(LoraFileError::NotRegularFile { path });
        }
        if meta.len() == 0 {
            return Err(LoraFileError::Invalid { path, problem: HeaderError::Empty });
        }
        let file = File::open(&path).map_err(|e| io("open", e))?;
        // SAFETY: the map is read-only and private to this value. Another process
        // truncating the file while it is mapped can fault; that is the usual
        // memory-mapping caveat every safetensors reader shares.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("memory-map", e))?;
        let header = parse_header(&map).map_err(|problem| LoraFileError::Invalid { path: path.clone(), problem })?;
        Ok(LoraFile { path, storage: Storage::Mapped(map), header })
    }

    /// Validates an in-memory file; `label` stands in for the path in errors.
    pub fn from_bytes(bytes: Vec<u8>, label: impl Into<PathBuf>) -> Result<LoraFile, LoraFileError> {
        let path = label.into();
        let header = parse_header(&bytes).map_err(|problem| LoraFileError::Invalid { path: path.clone(), problem })?;
        Ok(LoraFile { path, storage: Storage::Owned(bytes), header })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Total file size in bytes.
    pub fn file_len(&self) -> usize {
        self.storage.bytes().len()
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The `__metadata__` map (empty when the file has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.header.metadata
    }

    /// Tensor names, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.header.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.header.tensors.len()
    }

    /// True when the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.header.tensors.is_empty()
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.header.tensors.contains_key(name)
    }

    /// Dtype, shape and span of one tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.get(name)
    }

    /// Raw little-endian bytes of one tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], LoraFileError> {
        let info = self.require(name)?;
        let start = self.header.data_start() + info.data_offsets.0;
        let end = self.header.data_start() + info.data_offsets.1;
        // Validated by parse_header; `get` keeps this panic-free regardless.
        self.storage.bytes().get(start..end).ok_or_else(|| LoraFileError::Invalid {
            path: self.path.clone(),
            problem: HeaderError::OffsetOutOfRange {
                name: name.to_string(),
                end: info.data_offsets.1 as u64,
                data_len: self.file_len().saturating_sub(self.header.data_start()),
            },
        })
    }

    /// One tensor converted to f32, row-major. Reads every float dtype except
    /// the MX sub-byte and complex ones, and integer dtypes (sd-scripts saves an
    /// integer `alpha` as I64) as numbers.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, LoraFileError> {
        let info = self.require(name)?;
        let bytes = self.tensor_bytes(name)?;
        decode_f32(info.dtype, bytes).ok_or_else(|| LoraFileError::UnsupportedDtype {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: info.dtype,
        })
    }

    /// A scalar tensor's value (e.g. `alpha`); the first element if it is not 0-dim.
    /// `Ok(None)` for an empty tensor.
    pub fn scalar_f32(&self, name: &str) -> Result<Option<f32>, LoraFileError> {
        Ok(self.tensor_f32(name)?.first().copied())
    }

    /// A module's alpha: exactly one finite number (a 0-dim or one-element tensor of any
    /// numeric dtype, integers included). Anything else — several elements (e.g. the text
    /// "8.0" stored as U8 bytes), no element, NaN/Inf, a dtype with no number reading — is an
    /// error naming the tensor, never a misread first byte.
    pub fn alpha_f32(&self, name: &str) -> Result<f32, LoraFileError> {
        let info = self.require(name)?;
        let bad = |reason: String| LoraFileError::BadAlpha { path: self.path.clone(), name: name.to_string(), reason };
        if info.numel() != 1 {
            let bytes = self.tensor_bytes(name)?;
            let text =
                std::str::from_utf8(bytes).ok().filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()));
            return Err(bad(match text {
                Some(text) if matches!(info.dtype, Dtype::U8 | Dtype::I8) => {
                    format!("holds the text {text:?} as {:?} bytes instead of a number", info.dtype)
                }
                _ => format!("is a {:?} tensor of shape {:?}, not a single number", info.dtype, info.shape),
            }));
        }
        let value = self.scalar_f32(name)?.expect("one element");
        if !value.is_finite() {
            return Err(bad(format!("is {value}")));
        }
        Ok(value)
    }

    fn require(&self, name: &str) -> Result<&TensorInfo, LoraFileError> {
        self.header
            .tensors
            .get(name)
            .ok_or_else(|| LoraFileError::NoSuchTensor { path: self.path.clone(), name: name.to_string() })
    }
}

/// Decodes little-endian elements of `dtype` into f32; `None` for dtypes with
/// no sensible f32 reading here (sub-byte MX floats, E8M0, FNUZ fp8, complex).
fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    Some(match dtype {
        Dtype::F32 => each(bytes, f32::from_le_bytes),
        Dtype::F16 => each(bytes, |b| f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => each(bytes, |b| bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        Dtype::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
        Dtype::U64 => each(bytes, |b| u64::from_le_bytes(b) as f32),
        Dtype::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
        Dtype::U32 => each(bytes, |b| u32::from_le_bytes(b) as f32),
        Dtype::I16 => each(bytes, |b| f32::from(i16::from_le_bytes(b))),
        Dtype::U16 => each(bytes, |b| f32::from(u16::from_le_bytes(b))),
        Dtype::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
        Dtype::U8 | Dtype::Bool => bytes.iter().map(|&b| f32::from(b)).collect(),
        // E5M2 is the top byte of an f16.
        Dtype::F8E5M2 => bytes.iter().map(|&b| f16::from_bits(u16::from(b) << 8).to_f32()).collect(),
        Dtype::F8E4M3 => bytes.iter().map(|&b| f8_e4m3fn_to_f32(b)).collect(),
        Dtype::F4
        | Dtype::F6E2M3
        | Dtype::F6E3M2
        | Dtype::F8E8M0
        | Dtype::F8E4M3Fnuz
        | Dtype::F8E5M2Fnuz
        | Dtype::C64 => return None,
    })
}

/// float8 e4m3fn: bias 7, no infinities, S.1111.111 is NaN.
fn f8_e4m3fn_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let man = f32::from(b & 0x07);
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// A tensor to be written: shape and row-major f32 values. The writer casts it
/// to the chosen [`Precision`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// Row-major values; length must equal the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from shape and data (checked when written).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor { shape, data }
    }

    /// A 0-dim scalar, as sd-scripts stores `alpha`.
    pub fn scalar(value: f32) -> Tensor {
        Tensor { shape: Vec::new(), data: vec![value] }
    }
}

/// The two hashes sd-scripts stores in every LoRA it saves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshsHashes {
    /// `sshs_model_hash`: SHA-256 (64 hex chars) of the tensor data region.
    pub model_hash: String,
    /// `sshs_legacy_hash`: first 8 hex chars of SHA-256 of bytes 0x100000..0x110000
    /// of the `ss_*`-only serialisation.
    pub legacy_hash: String,
}

/// Tensors cast and laid out for writing.
struct Prepared {
    /// (name, shape, bytes) in file order: dtype descending, then name.
    entries: Vec<(String, Vec<usize>, Vec<u8>)>,
    dtype: Dtype,
}

impl Prepared {
    fn new(path: &Path, tensors: &BTreeMap<String, Tensor>, precision: Precision) -> Result<Prepared, LoraFileError> {
        let dtype = precision.dtype();
        let mut entries = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            let bad =
                |reason: String| LoraFileError::BadTensor { path: path.to_path_buf(), name: name.clone(), reason };
            if name == "__metadata__" {
                return Err(bad("`__metadata__` is reserved by safetensors; rename the tensor".into()));
            }
            let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if numel != Some(t.data.len()) {
                return Err(bad(format!("shape {:?} does not match its {} values", t.shape, t.data.len())));
            }
            let bytes: Vec<u8> = match precision {
                Precision::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Precision::F16 => t.data.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
                Precision::BF16 => t.data.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
            };
            entries.push((name.clone(), t.shape.clone(), bytes));
        }
        // Every tensor has the same dtype after the cast, so safetensors' order
        // (dtype descending, then name ascending) is name order, as BTreeMap gives.
        Ok(Prepared { entries, dtype })
    }

    /// The padded JSON header safetensors writes for these tensors and metadata.
    fn header(&self, metadata: &BTreeMap<String, String>) -> Vec<u8> {
        let mut json = String::from("{\"__metadata__\":");
        json.push_str(&serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into()));
        let mut offset = 0usize;
        for (name, shape, bytes) in &self.entries {
            let end = offset + bytes.len();
            json.push(',');
            json.push_str(&serde_json::to_string(name).unwrap_or_default());
            json.push_str(&format!(
                ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
                self.dtype,
                serde_json::to_string(shape).unwrap_or_default()
            ));
            offset = end;
        }
        json.push('}');
        let mut bytes = json.into_bytes();
        let aligned = bytes.len().next_multiple_of(8);
        bytes.resize(aligned, b' ');
        bytes
    }

    fn hashes(&self, metadata: &BTreeMap<String, String>) -> SshsHashes {
        let header = self.header(&crate::metadata::ss_only(metadata));
        let prefix = (header.len() as u64).to_le_bytes();

        let mut model = Sha256::new();
        for (_, _, bytes) in &self.entries {
            model.update(bytes);
        }

        // The legacy window of the whole serialisation, gathered piece by piece.
        let mut legacy = Sha256::new();
        let window = LEGACY_HASH_OFFSET..LEGACY_HASH_OFFSET + LEGACY_HASH_LEN;
        let mut pos = 0usize;
        let pieces =
            [prefix.as_slice(), header.as_slice()].into_iter().chain(self.entries.iter().map(|(_, _, b)| b.as_slice()));
        for piece in pieces {
            let (start, end) = (pos, pos + piece.len());
            let lo = start.max(window.start);
            let hi = end.min(window.end);
            if lo < hi {
                legacy.update(&piece[lo - start..hi - start]);
            }
            pos = end;
            if pos >= window.end {
                break;
            }
        }
        SshsHashes { model_hash: hex(&model.finalize()), legacy_hash: hex(&legacy.finalize())[..8].to_string() }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Computes `sshs_model_hash` / `sshs_legacy_hash` as sd-scripts'
/// `precalculate_safetensors_hashes` would for these tensors saved at
/// `precision` with this metadata (only its `ss_*` keys matter).
pub fn sshs_hashes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    precision: Precision,
) -> Result<SshsHashes, LoraFileError> {
    Ok(Prepared::new(Path::new("<memory>"), tensors, precision)?.hashes(metadata))
}

/// Serialises tensors and metadata to safetensors bytes without hashing,
/// metadata keys sorted. Tensor layout matches the `safetensors` crate.
pub fn serialize(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    precision: Precision,
) -> Result<Vec<u8>, LoraFileError> {
    let prepared = Prepared::new(Path::new("<memory>"), tensors, precision)?;
    let header = prepared.header(metadata);
    let mut out = Vec::with_capacity(8 + header.len() + prepared.entries.iter().map(|e| e.2.len()).sum::<usize>());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, _, bytes) in &prepared.entries {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// Saves a LoRA the way sd-scripts' `save_weights` does: every tensor cast to
/// `precision`, `sshs_model_hash` and `sshs_legacy_hash` computed and added to
/// `metadata` (replacing stale values), then written atomically (temporary
/// file beside the target, fsync, rename). Returns the hashes written.
pub fn write_lora(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    precision: Precision,
) -> Result<SshsHashes, LoraFileError> {
    let path = path.as_ref();
    let prepared = Prepared::new(path, tensors, precision)?;
    let hashes = prepared.hashes(metadata);
    let mut full = metadata.clone();
    full.insert("sshs_model_hash".into(), hashes.model_hash.clone());
    full.insert("sshs_legacy_hash".into(), hashes.legacy_hash.clone());
    let header = prepared.header(&full);
    write_atomic(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (_, _, bytes) in &prepared.entries {
            w.write_all(bytes)?;
        }
        Ok(())
    })?;
    Ok(hashes)
}

/// Replaces `path` atomically through `lorakit_dataset::fs_atomic` (temporary file
/// `.lorakit-tmp-<pid>-<random>.tmp` beside it, fsync, rename, directory fsync): a crash leaves
/// the old file or the new one, never half of each, and the leftover temporary file is
/// recognisably ours for `fs_atomic::clean_stale_temp_files`.
fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> Result<(), LoraFileError> {
    if path.is_dir() {
        return Err(LoraFileError::IsDirectory { path: path.to_path_buf() });
    }
    lorakit_dataset::fs_atomic::write_atomic_with(path, fill).map_err(|source| LoraFileError::Io {
        path: path.to_path_buf(),
        action: "save",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_tensors() -> BTreeMap<String, Tensor> {
        let mut t = BTreeMap::new();
        t.insert("b.lora_up.weight".to_string(), Tensor::new(vec![3, 2], vec![1.0, -2.0, 0.5, 0.25, 3.0, -0.125]));
        t.insert("b.lora_down.weight".to_string(), Tensor::new(vec![2, 2], vec![0.1, 0.2, 0.3, 0.4]));
        t.insert("b.alpha".to_string(), Tensor::scalar(4.0));
        t
    }

    /// Adapts our tensors to the `safetensors` crate's View for byte comparison.
    struct View<'a>(&'a Tensor);
    impl safetensors::View for View<'_> {
        fn dtype(&self) -> safetensors::Dtype {
            safetensors::Dtype::F32
        }
        fn shape(&self) -> &[usize] {
            &self.0.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            self.0.data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()
        }
        fn data_len(&self) -> usize {
            self.0.data.len() * 4
        }
    }

    #[test]
    fn serialisation_is_byte_identical_to_the_safetensors_crate() {
        let tensors = small_tensors();
        let mut meta = BTreeMap::new();
        meta.insert("ss_network_dim".to_string(), "2".to_string());
        let ours = serialize(&tensors, &meta, Precision::F32).unwrap();
        let theirs = safetensors::serialize(
            tensors.iter().map(|(k, v)| (k.clone(), View(v))),
            Some(meta.clone().into_iter().collect()),
        )
        .unwrap();
        assert_eq!(ours, theirs);
        // And with empty metadata, as sd-scripts hashes when no ss_ keys exist.
        let ours = serialize(&tensors, &BTreeMap::new(), Precision::F32).unwrap();
        let theirs =
            safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), View(v))), Some(Default::default()))
                .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn dtype_order_matches_the_safetensors_crate() {
        let mut ours: Vec<Dtype> = Dtype::ALL.to_vec();
        ours.sort();
        let names: Vec<&str> = ours.iter().map(|d| d.as_str()).collect();
        let mut theirs: Vec<safetensors::Dtype> =
            names.iter().map(|n| serde_json::from_value(serde_json::Value::String(n.to_string())).unwrap()).collect();
        let before = theirs.clone();
        theirs.sort();
        assert_eq!(theirs, before, "our enum order must equal safetensors' Ord");
        for d in Dtype::ALL {
            let theirs: safetensors::Dtype = serde_json::from_value(Value::String(d.as_str().into())).unwrap();
            assert_eq!(theirs.bitsize() as u64, d.bits(), "{d}");
        }
    }

    #[test]
    fn legacy_hash_covers_the_fixed_window() {
        // A tensor big enough that the window lies fully inside the data.
        let n = 0x50000;
        let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut tensors = BTreeMap::new();
        tensors.insert("x".to_string(), Tensor::new(vec![n], data));
        let meta: BTreeMap<String, String> =
            [("ss_a".to_string(), "1".to_string()), ("other".to_string(), "z".to_string())].into_iter().collect();
        let h = sshs_hashes(&tensors, &meta, Precision::F32).unwrap();
        let ss_only: BTreeMap<String, String> = [("ss_a".to_string(), "1".to_string())].into_iter().collect();
        let bytes = serialize(&tensors, &ss_only, Precision::F32).unwrap();
        let expect = hex(&Sha256::digest(&bytes[0x100000..0x110000]));
        assert_eq!(h.legacy_hash, expect[..8]);
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(h.model_hash, hex(&Sha256::digest(&bytes[8 + hlen..])));
        // Short buffer: the window is empty, so the hash is that of no bytes.
        let tiny = sshs_hashes(&small_tensors(), &BTreeMap::new(), Precision::F32).unwrap();
        assert_eq!(tiny.legacy_hash, "e3b0c442");
    }

    #[test]
    fn e4m3_decoding() {
        assert_eq!(f8_e4m3fn_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3fn_to_f32(0xb8), -1.0);
        assert_eq!(f8_e4m3fn_to_f32(0x7e), 448.0);
        assert_eq!(f8_e4m3fn_to_f32(0x01), 2f32.powi(-9));
        assert!(f8_e4m3fn_to_f32(0x7f).is_nan());
        assert_eq!(decode_f32(Dtype::F8E5M2, &[0x3c]).unwrap(), vec![1.0]);
    }
}
