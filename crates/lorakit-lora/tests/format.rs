//! The LoRA format layer against real sd-scripts output and hand-built files:
//! hashes, round trips, every bad-input case, key schemes and family guesses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lorakit_lora::keys::{self, Component, Family, ModuleError, ModuleKind, Scheme};
use lorakit_lora::metadata::{DimValue, LoraMetadata};
use lorakit_lora::safetensors_file::{
    parse_header, sshs_hashes, write_lora, Dtype, HeaderError, LoraFile, LoraFileError, Precision, Tensor,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd-scripts/lora").join(name)
}

const FIXTURE: &str = "sd15-r8-fp32.safetensors";
const RESIZED: &str = "sd15-r8-fp32.resized-sv_fro-0.9.safetensors";

/// Builds safetensors bytes from a raw header JSON and data bytes.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Builds a valid file from (name, dtype, shape, bytes) entries, packed in order.
fn build(entries: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, dtype, shape, bytes)) in entries.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let (b, e) = (data.len(), data.len() + bytes.len());
        header
            .push_str(&format!("\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{b},{e}]}}"));
        data.extend_from_slice(bytes);
    }
    header.push('}');
    raw(&header, &data)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn open_bytes(bytes: Vec<u8>) -> Result<LoraFile, LoraFileError> {
    LoraFile::from_bytes(bytes, "mem.safetensors")
}

fn problem(bytes: &[u8]) -> HeaderError {
    parse_header(bytes).expect_err("bad input must be rejected")
}

/// A linear kohya module with deterministic values.
fn linear(t: &mut BTreeMap<String, Tensor>, name: &str, inp: usize, out: usize, rank: usize, alpha: Option<f32>) {
    let down: Vec<f32> = (0..rank * inp).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let up: Vec<f32> = (0..out * rank).map(|i| ((i % 7) as f32 - 3.0) * 0.02).collect();
    t.insert(format!("{name}.lora_down.weight"), Tensor::new(vec![rank, inp], down));
    t.insert(format!("{name}.lora_up.weight"), Tensor::new(vec![out, rank], up));
    if let Some(a) = alpha {
        t.insert(format!("{name}.alpha"), Tensor::scalar(a));
    }
}

fn write_tmp(dir: &tempfile::TempDir, name: &str, t: &BTreeMap<String, Tensor>) -> LoraFile {
    let path = dir.path().join(name);
    write_lora(&path, t, &BTreeMap::new(), Precision::F32).unwrap();
    LoraFile::open(&path).unwrap()
}

// ---------------------------------------------------------------- fixtures

fn recompute_hashes(name: &str) {
    let file = LoraFile::open(fixture(name)).unwrap();
    let mut tensors = BTreeMap::new();
    for n in file.tensor_names() {
        assert_eq!(file.info(n).unwrap().dtype, Dtype::F32);
        tensors.insert(n.to_string(), Tensor::new(file.info(n).unwrap().shape.clone(), file.tensor_f32(n).unwrap()));
    }
    let hashes = sshs_hashes(&tensors, file.metadata(), Precision::F32).unwrap();
    assert_eq!(hashes.model_hash, file.metadata()["sshs_model_hash"], "{name}");
    assert_eq!(hashes.legacy_hash, file.metadata()["sshs_legacy_hash"], "{name}");

    // Writing it back reproduces the data region byte for byte and the same hashes.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.safetensors");
    let written = write_lora(&out, &tensors, file.metadata(), Precision::F32).unwrap();
    assert_eq!(written, hashes);
    let copy = LoraFile::open(&out).unwrap();
    assert_eq!(copy.metadata(), file.metadata(), "same metadata, hashes included");
    let data = |f: &LoraFile| {
        let bytes = std::fs::read(f.path()).unwrap();
        bytes[f.header().data_start()..].to_vec()
    };
    assert_eq!(data(&copy), data(&file));
    assert_eq!(copy.header().tensors, file.header().tensors);
}

#[test]
fn sshs_hashes_of_the_sd_scripts_fixture() {
    recompute_hashes(FIXTURE);
}

#[test]
fn sshs_hashes_of_the_sd_scripts_resize_output() {
    recompute_hashes(RESIZED);
}

#[test]
fn fixture_modules_and_family() {
    let file = LoraFile::open(fixture(FIXTURE)).unwrap();
    assert_eq!(file.len(), 792);
    let set = keys::modules(&file).unwrap();
    assert_eq!(set.scheme, Scheme::Kohya);
    assert_eq!(set.count(Component::TextEncoder), 72);
    assert_eq!(set.text_encoder_count(), 72);
    assert_eq!(set.count(Component::Unet), 192);
    assert_eq!(set.modules.len(), 264);
    assert!(set.other_tensors.is_empty());
    assert_eq!(set.modules.iter().filter(|m| m.kind == ModuleKind::Conv1x1).count(), 32);
    for m in &set.modules {
        // SD1.5's transformer proj_in/proj_out are 1×1 convs; everything else is linear.
        let kind = if m.name.ends_with("proj_in") || m.name.ends_with("proj_out") {
            ModuleKind::Conv1x1
        } else {
            ModuleKind::Linear
        };
        assert_eq!((m.rank, m.alpha, m.kind), (8, 4.0, kind), "{}", m.name);
        assert_eq!(m.scale(), 0.5);
        assert!(m.alpha_key.is_some());
    }
    let q = set.modules.iter().find(|m| m.name == "lora_te_text_model_encoder_layers_0_self_attn_q_proj").unwrap();
    assert_eq!((q.in_features, q.out_features), (768, 768));
    assert_eq!(q.down_key, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight");
    let ff = set
        .modules
        .iter()
        .find(|m| m.name == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj")
        .unwrap();
    assert_eq!((ff.in_features, ff.out_features), (320, 2560));

    let guess = keys::guess_family(&file);
    assert_eq!(guess.family, Family::Sd1);
    assert_eq!(guess.from_keys, Family::Sd1);
    assert_eq!(guess.from_metadata, Some(Family::Sd1));
    assert_eq!(guess.conflict, None);

    let meta = LoraMetadata::parse(file.metadata());
    assert_eq!(meta.network_module.as_deref(), Some("networks.lora"));
    assert_eq!(meta.network_dim, Some(DimValue::Number(8.0)));
    assert_eq!(meta.network_alpha, Some(DimValue::Number(4.0)));
    assert!(meta.problems.is_empty());

    let resized = LoraFile::open(fixture(RESIZED)).unwrap();
    let meta = LoraMetadata::parse(resized.metadata());
    assert_eq!(meta.network_dim, Some(DimValue::Dynamic));
    let ranks: std::collections::BTreeSet<usize> =
        keys::modules(&resized).unwrap().modules.iter().map(|m| m.rank).collect();
    assert_eq!(ranks.into_iter().collect::<Vec<_>>(), [2, 3, 4, 6, 8]);
}

// ---------------------------------------------------------------- round trips

#[test]
fn round_trip_in_every_precision() {
    let mut t = BTreeMap::new();
    let values: Vec<f32> = vec![1.0, -0.5, 0.333_333_34, 1e-3, -65504.0, 3.0e-8, 0.0, 1234.5678];
    t.insert("lora_unet_x.lora_down.weight".to_string(), Tensor::new(vec![2, 4], values.clone()));
    t.insert("lora_unet_x.alpha".to_string(), Tensor::scalar(4.0));
    let mut meta = BTreeMap::new();
    meta.insert("ss_network_dim".to_string(), "2".to_string());
    meta.insert("modelspec.title".to_string(), "t\u{e9}st \"quoted\"".to_string());
    meta.insert("sshs_model_hash".to_string(), "stale".to_string());
    let dir = tempfile::tempdir().unwrap();
    for (precision, dtype) in
        [(Precision::F32, Dtype::F32), (Precision::F16, Dtype::F16), (Precision::BF16, Dtype::BF16)]
    {
        let path = dir.path().join(format!("{dtype}.safetensors"));
        let hashes = write_lora(&path, &t, &meta, precision).unwrap();
        let f = LoraFile::open(&path).unwrap();
        assert_eq!(f.info("lora_unet_x.alpha").unwrap().dtype, dtype, "alpha is cast too, as sd-scripts does");
        assert_eq!(f.info("lora_unet_x.alpha").unwrap().shape, Vec::<usize>::new());
        assert_eq!(f.scalar_f32("lora_unet_x.alpha").unwrap(), Some(4.0));
        let back = f.tensor_f32("lora_unet_x.lora_down.weight").unwrap();
        let expect: Vec<f32> = match precision {
            Precision::F32 => values.clone(),
            Precision::F16 => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
            Precision::BF16 => values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
        };
        assert_eq!(back, expect);
        assert_eq!(f.metadata()["modelspec.title"], meta["modelspec.title"]);
        assert_eq!(f.metadata()["sshs_model_hash"], hashes.model_hash, "stale hash replaced");
        assert_eq!(f.metadata()["sshs_legacy_hash"], hashes.legacy_hash);
        assert_eq!(hashes.model_hash.len(), 64);
        assert_eq!(hashes.legacy_hash.len(), 8);
        // The file must also satisfy the reference safetensors reader.
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 2);
    }
    // Overwriting an existing file leaves no temporary files behind.
    write_lora(dir.path().join("F32.safetensors"), &t, &meta, Precision::F32).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn hashes_depend_only_on_ss_metadata() {
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_unet_a", 4, 4, 2, Some(1.0));
    let mut meta = BTreeMap::new();
    meta.insert("ss_network_dim".to_string(), "2".to_string());
    let base = sshs_hashes(&t, &meta, Precision::F16).unwrap();
    meta.insert("modelspec.title".to_string(), "anything".to_string());
    assert_eq!(sshs_hashes(&t, &meta, Precision::F16).unwrap(), base);
    assert_ne!(sshs_hashes(&t, &meta, Precision::F32).unwrap().model_hash, base.model_hash);
}

#[test]
fn writer_rejects_inconsistent_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = BTreeMap::new();
    t.insert("x".to_string(), Tensor::new(vec![2, 3], vec![0.0; 5]));
    let err = write_lora(dir.path().join("bad.safetensors"), &t, &BTreeMap::new(), Precision::F32).unwrap_err();
    assert!(matches!(err, LoraFileError::BadTensor { .. }), "{err}");
    assert!(err.to_string().contains("bad.safetensors"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
    let err = write_lora(dir.path(), &BTreeMap::new(), &BTreeMap::new(), Precision::F32).unwrap_err();
    assert!(matches!(err, LoraFileError::IsDirectory { .. }), "{err}");
}

#[test]
fn reads_every_numeric_dtype() {
    let bytes = build(&[
        ("a_i64", "I64", &[], 4i64.to_le_bytes().to_vec()),
        ("b_f64", "F64", &[2], [1.5f64, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ("c_f16", "F16", &[1], half::f16::from_f32(0.5).to_le_bytes().to_vec()),
        ("d_bf16", "BF16", &[1], half::bf16::from_f32(-3.0).to_le_bytes().to_vec()),
        ("e_i32", "I32", &[1], (-7i32).to_le_bytes().to_vec()),
        ("f_u8", "U8", &[2], vec![0, 255]),
        ("g_f8", "F8_E4M3", &[1], vec![0x38]),
        ("h_f4", "F4", &[2], vec![0x11]),
    ]);
    let f = open_bytes(bytes).unwrap();
    assert_eq!(f.tensor_f32("a_i64").unwrap(), vec![4.0]);
    assert_eq!(f.tensor_f32("b_f64").unwrap(), vec![1.5, -2.0]);
    assert_eq!(f.tensor_f32("c_f16").unwrap(), vec![0.5]);
    assert_eq!(f.tensor_f32("d_bf16").unwrap(), vec![-3.0]);
    assert_eq!(f.tensor_f32("e_i32").unwrap(), vec![-7.0]);
    assert_eq!(f.tensor_f32("f_u8").unwrap(), vec![0.0, 255.0]);
    assert_eq!(f.tensor_f32("g_f8").unwrap(), vec![1.0]);
    let err = f.tensor_f32("h_f4").unwrap_err();
    assert!(matches!(err, LoraFileError::UnsupportedDtype { dtype: Dtype::F4, .. }), "{err}");
    let err = f.tensor_f32("nope").unwrap_err();
    assert!(err.to_string().starts_with("mem.safetensors: no tensor named `nope`"), "{err}");
}

// ---------------------------------------------------------------- bad input

/// Every rejection is one line that names the file.
fn assert_one_line_naming(err: &LoraFileError, file: &str) {
    let s = err.to_string();
    assert!(s.contains(file), "{s}");
    assert!(!s.contains('\n'), "{s}");
}

#[test]
fn empty_file_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let err = LoraFile::open(&empty).unwrap_err();
    assert!(matches!(err, LoraFileError::Invalid { problem: HeaderError::Empty, .. }), "{err}");
    assert_one_line_naming(&err, "empty.safetensors");

    let err = LoraFile::open(dir.path()).unwrap_err();
    assert!(matches!(err, LoraFileError::IsDirectory { .. }), "{err}");
    assert!(err.to_string().contains("is a directory"));

    let err = LoraFile::open(dir.path().join("missing.safetensors")).unwrap_err();
    assert!(matches!(err, LoraFileError::Io { .. }), "{err}");
    assert_one_line_naming(&err, "missing.safetensors");
}

#[test]
fn truncated_and_oversized_headers() {
    assert_eq!(problem(b""), HeaderError::Empty);
    assert_eq!(problem(&[1, 2, 3]), HeaderError::TooShort { len: 3 });
    let mut b = 100u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert_eq!(problem(&b), HeaderError::HeaderPastEnd { header_len: 100, available: 2 });
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert_eq!(problem(&b), HeaderError::HeaderTooLarge { header_len: u64::MAX });

    // A real file cut short: the last tensor runs past the end.
    let full = std::fs::read(fixture(FIXTURE)).unwrap();
    let cut = &full[..full.len() - 100];
    assert!(matches!(problem(cut), HeaderError::OffsetOutOfRange { .. }), "{:?}", problem(cut));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.safetensors");
    std::fs::write(&p, cut).unwrap();
    let err = LoraFile::open(&p).unwrap_err();
    assert_one_line_naming(&err, "cut.safetensors");
    assert!(err.to_string().contains("truncated"), "{err}");
    // Cut inside the header.
    assert!(matches!(problem(&full[..1000]), HeaderError::HeaderPastEnd { .. }));
}

#[test]
fn header_not_json_not_object_not_utf8() {
    assert!(matches!(problem(&raw("{\"a\":", b"")), HeaderError::NotJson { .. }));
    assert!(matches!(problem(&raw("", b"")), HeaderError::NotJson { .. }));
    assert_eq!(problem(&raw("[1,2]", b"")), HeaderError::NotObject);
    assert_eq!(problem(&raw("\"x\"", b"")), HeaderError::NotObject);
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
    assert_eq!(problem(&b), HeaderError::NotUtf8 { offset: 1 });
    assert!(matches!(problem(&raw("{\"__metadata__\":{\"k\":1}}", b"")), HeaderError::BadMetadata { .. }));
    assert!(matches!(problem(&raw("{\"__metadata__\":[]}", b"")), HeaderError::BadMetadata { .. }));
    let err = open_bytes(raw("[]", b"")).unwrap_err();
    assert_one_line_naming(&err, "mem.safetensors");
    // Trailing spaces (safetensors' padding) are fine; metadata only is fine.
    let f = open_bytes(raw("{\"__metadata__\":{\"ss_a\":\"1\"}}   ", b"")).unwrap();
    assert!(f.is_empty());
    assert_eq!(f.metadata()["ss_a"], "1");
}

#[test]
fn bad_tensor_entries() {
    let entry = |dtype: &str, shape: &str, offsets: &str, data: &[u8]| {
        raw(&format!("{{\"t\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":{offsets}}}}}"), data)
    };
    assert_eq!(
        problem(&entry("F33", "[1]", "[0,4]", &[0; 4])),
        HeaderError::UnknownDtype { name: "t".into(), dtype: "F33".into() }
    );
    assert!(matches!(
        problem(&entry("F32", "[2]", "[0,4]", &[0; 4])),
        HeaderError::SizeMismatch { expected: 8, actual: 4, .. }
    ));
    // Shape product overflowing u64 is a size mismatch, not a panic.
    assert!(matches!(
        problem(&entry("F32", "[4294967296,4294967296,16]", "[0,4]", &[0; 4])),
        HeaderError::SizeMismatch { expected: u64::MAX, .. }
    ));
    assert!(matches!(
        problem(&entry("F32", "[1]", "[4,0]", &[0; 4])),
        HeaderError::ReversedOffsets { begin: 4, end: 0, .. }
    ));
    assert!(matches!(
        problem(&entry("F32", "[2]", "[0,8]", &[0; 4])),
        HeaderError::OffsetOutOfRange { end: 8, data_len: 4, .. }
    ));
    assert!(matches!(
        problem(&entry("F32", "[1]", "[0,18446744073709551615]", &[0; 4])),
        HeaderError::OffsetOutOfRange { .. }
    ));
    assert!(matches!(problem(&entry("F32", "[-1]", "[0,4]", &[0; 4])), HeaderError::BadEntry { .. }));
    assert!(matches!(problem(&entry("F32", "[1]", "[0]", &[0; 4])), HeaderError::BadEntry { .. }));
    assert!(matches!(
        problem(&raw("{\"t\":{\"shape\":[],\"data_offsets\":[0,0]}}", b"")),
        HeaderError::BadEntry { .. }
    ));
    assert!(matches!(problem(&raw("{\"t\":3}", b"")), HeaderError::BadEntry { .. }));
    // Unused bytes after the last tensor.
    assert_eq!(problem(&entry("F32", "[1]", "[0,4]", &[0; 8])), HeaderError::Gap { start: 4, end: 8 });

    let err = open_bytes(entry("Q4", "[1]", "[0,4]", &[0; 4])).unwrap_err();
    assert_one_line_naming(&err, "mem.safetensors");
    assert!(err.to_string().contains("unknown dtype `Q4`"), "{err}");
}

#[test]
fn overlapping_gapped_and_duplicate_offsets() {
    let two = |a: &str, b: &str, len: usize| {
        raw(
            &format!(
                "{{\"a\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{a}}},\"b\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{b}}}}}"
            ),
            &vec![0u8; len],
        )
    };
    assert_eq!(problem(&two("[0,4]", "[0,4]", 8)), HeaderError::Overlap { first: "a".into(), second: "b".into() });
    assert!(matches!(problem(&two("[0,4]", "[2,6]", 8)), HeaderError::Overlap { .. }));
    assert_eq!(problem(&two("[0,4]", "[8,12]", 12)), HeaderError::Gap { start: 4, end: 8 });
    assert_eq!(problem(&two("[4,8]", "[8,12]", 12)), HeaderError::Gap { start: 0, end: 4 });
    // Header order need not follow offsets (old writers sorted by name).
    let f = open_bytes(two("[4,8]", "[0,4]", 8)).unwrap();
    assert_eq!(f.info("a").unwrap().data_offsets, (4, 8));
    let dup = raw(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
        &[0; 8],
    );
    assert_eq!(problem(&dup), HeaderError::DuplicateName { name: "a".into() });
    // A field repeated inside an entry (the `safetensors` reader rejects it too; found by fuzzing).
    let dup_field = raw("{\"a\":{\"dtype\":\"F32\",\"shape\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", &[0; 4]);
    assert!(matches!(problem(&dup_field), HeaderError::DuplicateKey { .. }), "{:?}", problem(&dup_field));
    let dup_meta = raw("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", b"");
    assert!(matches!(problem(&dup_meta), HeaderError::DuplicateKey { .. }));
    let err = open_bytes(two("[0,4]", "[2,6]", 8)).unwrap_err();
    assert_one_line_naming(&err, "mem.safetensors");
    assert!(err.to_string().contains("overlap"), "{err}");
}

#[test]
fn no_panic_on_mutated_fixture_headers() {
    // Flip bytes throughout a small real file's header; every outcome is Ok or Err.
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_unet_a", 3, 2, 2, Some(1.0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    write_lora(&path, &t, &BTreeMap::new(), Precision::F16).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for i in 0..bytes.len() {
        for v in [0u8, b'9', b'"', b'-', 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            if let Ok(f) = open_bytes(b) {
                for n in f.tensor_names().map(str::to_string).collect::<Vec<_>>() {
                    let _ = f.tensor_f32(&n);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- modules

#[test]
fn int64_and_missing_alpha() {
    let down = f32_bytes(&[0.0; 6]);
    let up = f32_bytes(&[0.0; 4]);
    let bytes = build(&[
        ("lora_unet_a.alpha", "I64", &[], 1i64.to_le_bytes().to_vec()),
        ("lora_unet_a.lora_down.weight", "F32", &[2, 3], down.clone()),
        ("lora_unet_a.lora_up.weight", "F32", &[2, 2], up.clone()),
        ("lora_unet_b.lora_down.weight", "F32", &[2, 3], down.clone()),
        ("lora_unet_b.lora_up.weight", "F32", &[2, 2], up.clone()),
        ("lora_unet_c.alpha", "F32", &[], f32_bytes(&[0.0])),
        ("lora_unet_c.lora_down.weight", "F32", &[2, 3], down),
        ("lora_unet_c.lora_up.weight", "F32", &[2, 2], up),
    ]);
    let f = open_bytes(bytes).unwrap();
    let set = keys::modules(&f).unwrap();
    let m: BTreeMap<&str, _> = set.modules.iter().map(|m| (m.name.as_str(), m)).collect();
    assert_eq!((m["lora_unet_a"].alpha, m["lora_unet_a"].scale()), (1.0, 0.5), "int64 alpha read");
    assert_eq!((m["lora_unet_b"].alpha, m["lora_unet_b"].scale()), (2.0, 1.0), "missing alpha = rank");
    assert_eq!(m["lora_unet_b"].alpha_key, None);
    assert_eq!(m["lora_unet_c"].alpha, 2.0, "alpha 0 = rank, as sd-scripts");
}

/// An alpha that is not one finite number is an error naming the module's alpha tensor; any
/// one-element numeric alpha is read as its value.
#[test]
fn alpha_as_text_bytes_or_odd_tensors_is_refused_by_name() {
    let module = |alpha: (&'static str, &'static [usize], Vec<u8>)| {
        build(&[
            ("lora_unet_a.alpha", alpha.0, alpha.1, alpha.2),
            ("lora_unet_a.lora_down.weight", "F32", &[2, 3], f32_bytes(&[0.1; 6])),
            ("lora_unet_a.lora_up.weight", "F32", &[2, 2], f32_bytes(&[0.1; 4])),
        ])
    };
    for (alpha, why) in [
        (("U8", &[3][..], b"8.0".to_vec()), "\"8.0\""),
        (("F32", &[2][..], f32_bytes(&[8.0, 8.0])), "shape [2]"),
        (("F32", &[0][..], Vec::new()), "shape [0]"),
        (("F32", &[][..], f32_bytes(&[f32::NAN])), "NaN"),
        (("F16", &[1][..], vec![0x00, 0x7C]), "inf"),
    ] {
        let f = open_bytes(module(alpha)).unwrap();
        let err = keys::modules(&f).unwrap_err().to_string();
        assert!(err.contains("mem.safetensors") && err.contains("lora_unet_a.alpha") && err.contains(why), "{err}");
    }
    for (alpha, value) in [
        (("U8", &[][..], vec![8u8]), 8.0),
        (("I32", &[1][..], 4i32.to_le_bytes().to_vec()), 4.0),
        (("F64", &[1, 1][..], 1.5f64.to_le_bytes().to_vec()), 1.5),
        (("BF16", &[][..], vec![0x00, 0x40]), 2.0),
    ] {
        let f = open_bytes(module(alpha)).unwrap();
        assert_eq!(keys::modules(&f).unwrap().modules[0].alpha, value);
    }
}

#[test]
fn conv_kinds_and_tucker_mid() {
    let mut t = BTreeMap::new();
    let z = |n: usize| vec![0.0f32; n];
    t.insert("lora_unet_r_conv1.lora_down.weight".into(), Tensor::new(vec![4, 320, 3, 3], z(4 * 320 * 9)));
    t.insert("lora_unet_r_conv1.lora_up.weight".into(), Tensor::new(vec![320, 4, 1, 1], z(320 * 4)));
    t.insert("lora_unet_r_conv1.alpha".into(), Tensor::scalar(1.0));
    t.insert("lora_unet_p_proj_in.lora_down.weight".into(), Tensor::new(vec![8, 64, 1, 1], z(8 * 64)));
    t.insert("lora_unet_p_proj_in.lora_up.weight".into(), Tensor::new(vec![64, 8, 1, 1], z(8 * 64)));
    t.insert("lora_unet_t_conv2.lora_down.weight".into(), Tensor::new(vec![2, 16, 1, 1], z(32)));
    t.insert("lora_unet_t_conv2.lora_mid.weight".into(), Tensor::new(vec![2, 2, 3, 3], z(36)));
    t.insert("lora_unet_t_conv2.lora_up.weight".into(), Tensor::new(vec![8, 2, 1, 1], z(16)));
    let dir = tempfile::tempdir().unwrap();
    let f = write_tmp(&dir, "locon.safetensors", &t);
    assert_eq!(keys::detect_scheme(f.tensor_names()), Scheme::Kohya);
    let set = keys::modules(&f).unwrap();
    let m: BTreeMap<&str, _> = set.modules.iter().map(|m| (m.name.as_str(), m)).collect();
    let c = m["lora_unet_r_conv1"];
    assert_eq!((c.kind, c.in_features, c.out_features, c.rank), (ModuleKind::Conv { kh: 3, kw: 3 }, 2880, 320, 4));
    assert_eq!(c.kind.to_string(), "conv 3x3");
    let p = m["lora_unet_p_proj_in"];
    assert_eq!((p.kind, p.in_features, p.out_features, p.alpha), (ModuleKind::Conv1x1, 64, 64, 8.0));
    let tk = m["lora_unet_t_conv2"];
    assert_eq!((tk.kind, tk.in_features, tk.out_features, tk.rank), (ModuleKind::Conv { kh: 3, kw: 3 }, 144, 8, 2));
    assert_eq!(tk.mid_key.as_deref(), Some("lora_unet_t_conv2.lora_mid.weight"));
}

#[test]
fn module_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = BTreeMap::new();
    t.insert("lora_unet_a.lora_down.weight".into(), Tensor::new(vec![4, 3], vec![0.0; 12]));
    t.insert("lora_unet_a.lora_up.weight".into(), Tensor::new(vec![3, 2], vec![0.0; 6]));
    let f = write_tmp(&dir, "mismatch.safetensors", &t);
    let err = keys::modules(&f).unwrap_err();
    assert!(matches!(err, ModuleError::RankMismatch { down_rank: 4, up_rank: 2, .. }), "{err}");
    assert!(err.to_string().contains("mismatch.safetensors") && !err.to_string().contains('\n'));

    let mut t = BTreeMap::new();
    t.insert("lora_unet_a.lora_down.weight".into(), Tensor::new(vec![4, 3], vec![0.0; 12]));
    t.insert("lora_unet_a.alpha".into(), Tensor::scalar(1.0));
    let f = write_tmp(&dir, "noup.safetensors", &t);
    assert!(matches!(keys::modules(&f).unwrap_err(), ModuleError::MissingUp { .. }));

    let mut t = BTreeMap::new();
    t.insert("lora_unet_a.lora_up.weight".into(), Tensor::new(vec![3, 2], vec![0.0; 6]));
    let f = write_tmp(&dir, "nodown.safetensors", &t);
    assert!(matches!(keys::modules(&f).unwrap_err(), ModuleError::MissingDown { .. }));

    let mut t = BTreeMap::new();
    t.insert("lora_unet_a.lora_down.weight".into(), Tensor::new(vec![4, 3, 1, 1], vec![0.0; 12]));
    t.insert("lora_unet_a.lora_up.weight".into(), Tensor::new(vec![3, 4], vec![0.0; 12]));
    let f = write_tmp(&dir, "mixed.safetensors", &t);
    assert!(matches!(keys::modules(&f).unwrap_err(), ModuleError::BadShape { .. }));
}

#[test]
fn other_schemes_are_recognised_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = |v: f32| Tensor::scalar(v);
    let cases: [(&str, &[&str], Scheme); 5] = [
        (
            "loha",
            &["lora_unet_a.hada_w1_a", "lora_unet_a.hada_w1_b", "lora_unet_a.hada_w2_a", "lora_unet_a.alpha"],
            Scheme::LoHa,
        ),
        ("lokr", &["lora_unet_a.lokr_w1", "lora_unet_a.lokr_w2", "lora_unet_a.alpha"], Scheme::LoKr),
        (
            "dora",
            &["lora_unet_a.lora_down.weight", "lora_unet_a.lora_up.weight", "lora_unet_a.dora_scale"],
            Scheme::Dora,
        ),
        (
            "ckpt",
            &["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.decoder.conv_in.weight"],
            Scheme::FullCheckpoint,
        ),
        ("unknown", &["foo.bar"], Scheme::Unknown),
    ];
    for (name, keys_, scheme) in cases {
        let t: BTreeMap<String, Tensor> = keys_.iter().map(|k| (k.to_string(), s(1.0))).collect();
        let f = write_tmp(&dir, &format!("{name}.safetensors"), &t);
        assert_eq!(keys::detect_scheme(f.tensor_names()), scheme, "{name}");
        let err = keys::modules(&f).unwrap_err();
        assert!(matches!(err, ModuleError::Unsupported { scheme: s, .. } if s == scheme), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("{name}.safetensors")) && msg.contains(scheme.describe()), "{msg}");
    }
    // The diffusers U-Net layout of a full checkpoint is recognised too.
    assert_eq!(keys::detect_scheme(["down_blocks.0.resnets.0.conv1.weight"]), Scheme::FullCheckpoint);
}

#[test]
fn peft_modules_and_components() {
    let mut t = BTreeMap::new();
    let mut peft = |name: &str, inp: usize, out: usize, r: usize| {
        t.insert(format!("{name}.lora_A.weight"), Tensor::new(vec![r, inp], vec![0.0; r * inp]));
        t.insert(format!("{name}.lora_B.weight"), Tensor::new(vec![out, r], vec![0.0; out * r]));
    };
    peft("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", 2048, 640, 4);
    peft("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", 768, 768, 4);
    peft("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj", 1280, 1280, 4);
    peft("base_model.model.unet.mid_block.attentions.0.proj_in", 1280, 1280, 4);
    t.insert("base_model.model.unet.mid_block.attentions.0.proj_in.alpha".into(), Tensor::scalar(2.0));
    let dir = tempfile::tempdir().unwrap();
    let f = write_tmp(&dir, "peft.safetensors", &t);
    let set = keys::modules(&f).unwrap();
    assert_eq!(set.scheme, Scheme::Peft);
    assert_eq!(set.modules.len(), 4);
    assert_eq!(set.count(Component::TextEncoder1), 1, "text_encoder. is TE1 beside text_encoder_2.");
    assert_eq!(set.count(Component::TextEncoder2), 1);
    assert_eq!(set.count(Component::Unet), 2);
    let k = set.modules.iter().find(|m| m.name.ends_with("attn2.to_k")).unwrap();
    assert_eq!((k.in_features, k.out_features, k.rank, k.alpha), (2048, 640, 4, 4.0));
    assert_eq!(k.down_key, "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight");
    let p = set.modules.iter().find(|m| m.name == "base_model.model.unet.mid_block.attentions.0.proj_in").unwrap();
    assert_eq!(p.scale(), 0.5);
    assert_eq!(keys::guess_family(&f).from_keys, Family::Sdxl);
}

// ---------------------------------------------------------------- families

fn family_of(t: &BTreeMap<String, Tensor>, meta: &[(&str, &str)]) -> keys::FamilyGuess {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.safetensors");
    let meta: BTreeMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    write_lora(&path, t, &meta, Precision::F16).unwrap();
    keys::guess_family(&LoraFile::open(&path).unwrap())
}

#[test]
fn families_from_keys_and_shapes() {
    // SD1: single TE of width 768 only.
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, 1, None);
    assert_eq!(family_of(&t, &[]).family, Family::Sd1);

    // SD2: 23 TE layers (width given as 1024 too), no metadata.
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_te_text_model_encoder_layers_22_mlp_fc1", 1024, 8, 1, None);
    let g = family_of(&t, &[]);
    assert_eq!((g.family, g.from_metadata), (Family::Sd2, None));
    assert!(g.key_evidence.contains("23"), "{}", g.key_evidence);

    // SDXL: lora_te1/lora_te2 and SGM U-Net names.
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_te1_text_model_encoder_layers_0_mlp_fc1", 8, 8, 1, None);
    linear(&mut t, "lora_te2_text_model_encoder_layers_0_mlp_fc1", 8, 8, 1, None);
    assert_eq!(family_of(&t, &[]).family, Family::Sdxl);
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_unet_input_blocks_4_1_proj_in", 8, 8, 1, None);
    assert_eq!(family_of(&t, &[]).family, Family::Sdxl);

    // SDXL by cross-attention width even with diffusers-style names.
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 2048, 8, 1, None);
    assert_eq!(family_of(&t, &[]).family, Family::Sdxl);

    // Flux and SD3.
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_unet_double_blocks_0_img_attn_qkv", 8, 8, 1, None);
    assert_eq!(family_of(&t, &[]).family, Family::Flux);
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_unet_joint_blocks_0_x_block_attn_qkv", 8, 8, 1, None);
    assert_eq!(family_of(&t, &[]).family, Family::Sd3);
    let mut t = BTreeMap::new();
    linear(&mut t, "transformer.single_transformer_blocks.0.proj_out", 8, 8, 1, None);
    assert_eq!(family_of(&t, &[]).family, Family::Flux);

    // Nothing to go on.
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_unet_something", 8, 8, 1, None);
    assert_eq!(family_of(&t, &[]).family, Family::Unknown);
}

#[test]
fn metadata_is_preferred_and_disagreement_reported() {
    let mut t = BTreeMap::new();
    linear(&mut t, "lora_unet_double_blocks_0_img_attn_qkv", 8, 8, 1, None);
    let g = family_of(&t, &[("ss_base_model_version", "sdxl_base_v1-0")]);
    assert_eq!((g.family, g.from_keys, g.from_metadata), (Family::Sdxl, Family::Flux, Some(Family::Sdxl)));
    let conflict = g.conflict.expect("disagreement reported");
    assert!(conflict.contains("SDXL") && conflict.contains("Flux"), "{conflict}");

    let g = family_of(&t, &[("modelspec.architecture", "flux-1-dev/lora")]);
    assert_eq!((g.family, g.conflict), (Family::Flux, None));
}

#[test]
fn alphas_beside_any_module_name_and_lone_alphas() {
    // ComfyUI writes kohya suffixes under `diffusion_model.`; its alpha belongs to the module.
    let dir = tempfile::tempdir().unwrap();
    let mut t = BTreeMap::new();
    linear(&mut t, "diffusion_model.img_in", 12, 48, 4, Some(2.0));
    t.insert("diffusion_model.txt_in.alpha".into(), Tensor::scalar(8.0));
    let file = write_tmp(&dir, "comfy.safetensors", &t);
    let set = keys::modules(&file).unwrap();
    assert_eq!(set.scheme, Scheme::Kohya);
    assert_eq!(set.modules.len(), 1);
    assert_eq!((set.modules[0].alpha, set.modules[0].scale()), (2.0, 0.5));
    assert_eq!(set.other_tensors, ["diffusion_model.txt_in.alpha"], "an alpha with no pair is left over");
}

#[test]
fn a_fifo_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.safetensors");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(status.success());
    // Opening a FIFO to read blocks until a writer comes: the check must come first.
    let err = LoraFile::open(&fifo).unwrap_err();
    assert!(matches!(err, LoraFileError::NotRegularFile { .. }), "{err}");
    assert!(err.to_string().contains("pipe.safetensors") && err.to_string().contains("not a regular file"), "{err}");
}
