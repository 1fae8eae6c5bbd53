//! The training run's log sinks: TensorBoard event files and the JSONL/CSV run log.

use std::path::{Path, PathBuf};

use lorakit_train::run_log::RunLog;
use lorakit_train::tensorboard::{
    crc32c, encode_file_version_event, encode_record, encode_scalar_event, masked_crc32c, read_events, read_records,
    read_scalars, ScalarEvent, TensorBoardWriter, FILE_VERSION,
};

/// Three records written by the `tensorboard` Python package (`event_pb2.Event(...).SerializeToString()`
/// framed by `tensorboard.summary.writer.record_writer.RecordWriter`):
/// 1. `Event(wall_time=1700000000.25, file_version="brain.Event:2")`
/// 2. `Event(wall_time=1700000001.5, step=42, summary=[("loss", 0.125), ("lr/unet", 1e-4)])`
/// 3. `Event(wall_time=1700000002.75, step=-3, summary=[("neg", -2.5)])`
const PYTHON_EVENTS: [u8; 148] = [
    0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa3, 0x7f, 0x4b, 0x22, 0x09, 0x00, 0x00, 0x10, //
    0x40, 0xfc, 0x54, 0xd9, 0x41, 0x1a, 0x0d, 0x62, 0x72, 0x61, 0x69, 0x6e, 0x2e, 0x45, 0x76, 0x65, //
    0x6e, 0x74, 0x3a, 0x32, 0x33, 0x8d, 0x2f, 0xe9, 0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    0xae, 0x8d, 0x91, 0xf5, 0x09, 0x00, 0x00, 0x60, 0x40, 0xfc, 0x54, 0xd9, 0x41, 0x10, 0x2a, 0x2a, //
    0x1d, 0x0a, 0x0b, 0x0a, 0x04, 0x6c, 0x6f, 0x73, 0x73, 0x15, 0x00, 0x00, 0x00, 0x3e, 0x0a, 0x0e, //
    0x0a, 0x07, 0x6c, 0x72, 0x2f, 0x75, 0x6e, 0x65, 0x74, 0x15, 0x17, 0xb7, 0xd1, 0x38, 0x29, 0x75, //
    0xad, 0x11, 0x22, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x78, 0x11, 0x3d, 0xfd, 0x09, 0x00, //
    0x00, 0xb0, 0x40, 0xfc, 0x54, 0xd9, 0x41, 0x10, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, //
    0xff, 0x01, 0x2a, 0x0c, 0x0a, 0x0a, 0x0a, 0x03, 0x6e, 0x65, 0x67, 0x15, 0x00, 0x00, 0x20, 0xc0, //
    0x1e, 0x56, 0xd4, 0xd1,
];

/// The only event file in `dir`.
fn only_event_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// CRC and encoding
// ---------------------------------------------------------------------------------------------

#[test]
fn crc32c_matches_known_vectors() {
    // The standard check value, and RFC 3720 (iSCSI) appendix B.4 vectors.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    let ascending: Vec<u8> = (0u8..32).collect();
    assert_eq!(crc32c(&ascending), 0x46DD_794E);
    let descending: Vec<u8> = (0u8..32).rev().collect();
    assert_eq!(crc32c(&descending), 0x113F_DB5C);
    // Masked values from tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c.
    assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224B_7FA3);
    assert_eq!(masked_crc32c(b""), 0xA282_EAD8);
}

#[test]
fn encoding_is_byte_identical_to_the_python_package() {
    let mut ours = encode_record(&encode_file_version_event(1_700_000_000.25));
    ours.extend(encode_record(&encode_scalar_event(1_700_000_001.5, 42, &[("loss", 0.125), ("lr/unet", 1e-4)])));
    ours.extend(encode_record(&encode_scalar_event(1_700_000_002.75, -3, &[("neg", -2.5)])));
    assert_eq!(ours, PYTHON_EVENTS);
}

#[test]
fn reads_a_file_written_by_the_python_package() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.out.tfevents.1700000000.py");
    std::fs::write(&path, PYTHON_EVENTS).unwrap();
    let events = read_events(&path).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    assert_eq!(events[0].wall_time, 1_700_000_000.25);
    assert!(events[0].scalars.is_empty());
    let scalars = read_scalars(&path).unwrap();
    let expected = vec![
        ScalarEvent { tag: "loss".into(), step: 42, value: 0.125, wall_time: 1_700_000_001.5 },
        ScalarEvent { tag: "lr/unet".into(), step: 42, value: 1e-4, wall_time: 1_700_000_001.5 },
        ScalarEvent { tag: "neg".into(), step: -3, value: -2.5, wall_time: 1_700_000_002.75 },
    ];
    assert_eq!(scalars, expected);
}

// ---------------------------------------------------------------------------------------------
// Writer → reader
// ---------------------------------------------------------------------------------------------

#[test]
fn scalars_round_trip_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs/run1");
    let t0 = now();
    let path = {
        let mut w = TensorBoardWriter::create(&logs).unwrap();
        w.add_scalar("loss/current", 0.5, 1).unwrap();
        w.add_scalar("loss/current", 0.25, 2).unwrap();
        w.add_scalars(3, &[("loss/current", 0.125), ("lr/unet", 1e-4), ("lr/text_encoder", 5e-5)]).unwrap();
        w.add_scalars(4, &[]).unwrap(); // writes nothing
        w.add_scalar("loss/average", f32::MAX, 0).unwrap();
        w.add_scalar("weird", -1.5e-30, i64::MAX).unwrap();
        w.add_scalar("nan", f32::NAN, 5).unwrap();
        w.path().to_path_buf()
        // dropped without flush(): drop must flush
    };
    let t1 = now();
    assert_eq!(only_event_file(&logs), path);

    let scalars = read_scalars(&path).unwrap();
    let got: Vec<(&str, i64, f32)> = scalars.iter().map(|s| (s.tag.as_str(), s.step, s.value)).collect();
    assert_eq!(
        got[..7],
        [
            ("loss/current", 1, 0.5),
            ("loss/current", 2, 0.25),
            ("loss/current", 3, 0.125),
            ("lr/unet", 3, 1e-4),
            ("lr/text_encoder", 3, 5e-5),
            ("loss/average", 0, f32::MAX),
            ("weird", i64::MAX, -1.5e-30),
        ]
    );
    assert_eq!(got.len(), 8);
    assert_eq!((got[7].0, got[7].1), ("nan", 5));
    assert!(got[7].2.is_nan());
    for s in &scalars {
        assert!(s.wall_time >= t0 - 1.0 && s.wall_time <= t1 + 1.0, "{s:?}");
    }
    // One event per add_* call (plus the version event): add_scalars put three values in one event.
    let events = read_events(&path).unwrap();
    assert_eq!(events.len(), 7);
    assert_eq!(events[3].step, 3);
    assert_eq!(events[3].scalars.len(), 3);
}

#[test]
fn first_record_is_the_file_version_event_and_name_follows_tensorflow() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now() as u64;
    let mut w = TensorBoardWriter::create(dir.path()).unwrap();
    w.add_scalar("loss", 1.0, 7).unwrap();
    w.flush().unwrap();

    // flush() makes everything readable while the writer is still open.
    let records = read_records(w.path()).unwrap();
    assert_eq!(records.len(), 2);
    let events = read_events(w.path()).unwrap();
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert!(events[0].scalars.is_empty());
    assert!((events[0].wall_time - now()).abs() < 60.0);
    assert_eq!(events[1].file_version, None);
    assert_eq!(events[1].step, 7);
    assert_eq!(events[1].scalars, vec![("loss".to_string(), 1.0)]);

    let name = w.path().file_name().unwrap().to_str().unwrap().to_string();
    let rest = name.strip_prefix("events.out.tfevents.").unwrap_or_else(|| panic!("{name}"));
    let (secs, host) = rest.split_once('.').unwrap();
    let secs: u64 = secs.parse().unwrap();
    assert!(secs >= t0 && secs <= t0 + 5, "{name}");
    assert!(!host.is_empty());
    assert!(host.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "{name}");
}

#[test]
fn writers_in_the_same_second_get_distinct_files() {
    let dir = tempfile::tempdir().unwrap();
    let first = TensorBoardWriter::create(dir.path()).unwrap();
    let name = first.path().file_name().unwrap().to_str().unwrap().to_string();
    let rest = name.strip_prefix("events.out.tfevents.").unwrap();
    let (secs, host) = rest.split_once('.').unwrap();
    let secs: u64 = secs.parse().unwrap();
    // Occupy the base names of the next seconds too, so the next writer must collide.
    for s in secs + 1..secs + 10 {
        std::fs::write(dir.path().join(format!("events.out.tfevents.{s}.{host}")), b"not ours").unwrap();
    }
    let mut second = TensorBoardWriter::create(dir.path()).unwrap();
    let mut third = TensorBoardWriter::create(dir.path()).unwrap();
    assert_ne!(second.path(), first.path());
    assert_ne!(third.path(), second.path());
    let second_name = second.path().file_name().unwrap().to_str().unwrap().to_string();
    assert!(second_name.ends_with(".1"), "{second_name}");
    second.add_scalar("a", 1.0, 1).unwrap();
    third.add_scalar("b", 2.0, 1).unwrap();
    drop((first, second, third));
    // The colliding files were not touched.
    assert_eq!(
        std::fs::read(dir.path().join(format!("events.out.tfevents.{}.{host}", secs + 1))).unwrap(),
        b"not ours"
    );
    let a: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(".1"))
        .collect();
    assert_eq!(a.len(), 1);
    assert_eq!(read_scalars(&a[0]).unwrap()[0].tag, "a");
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

/// Writes a version event and three scalar events; returns the path and the record offsets.
fn three_scalar_file(dir: &Path) -> (PathBuf, Vec<usize>) {
    let path = {
        let mut w = TensorBoardWriter::create(dir).unwrap();
        for step in 1..=3 {
            w.add_scalar("loss", step as f32, step).unwrap();
        }
        w.path().to_path_buf()
    };
    let bytes = std::fs::read(&path).unwrap();
    let mut offsets = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        offsets.push(pos);
        pos += 16 + u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
    }
    assert_eq!(pos, bytes.len());
    assert_eq!(offsets.len(), 4);
    (path, offsets)
}

#[test]
fn corrupt_data_byte_fails_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = three_scalar_file(dir.path());
    assert_eq!(read_scalars(&path).unwrap().len(), 3);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offsets[2] + 14] ^= 0x01; // a data byte of the third record
    std::fs::write(&path, &bytes).unwrap();
    let err = read_scalars(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(msg.contains(&format!("byte offset {}", offsets[2])), "{msg}");
    assert!(msg.contains("data CRC"), "{msg}");
    assert!(msg.contains(path.file_name().unwrap().to_str().unwrap()), "{msg}");
}

#[test]
fn corrupt_length_and_crc_bytes_fail_with_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = three_scalar_file(dir.path());
    let clean = std::fs::read(&path).unwrap();
    // A length byte, a length-CRC byte, and the trailing data-CRC byte of the last record.
    for (at, record, what) in
        [(offsets[1], 1, "length CRC"), (offsets[3] + 9, 3, "length CRC"), (clean.len() - 1, 3, "data CRC")]
    {
        let mut bytes = clean.clone();
        bytes[at] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        let msg = read_scalars(&path).unwrap_err().to_string();
        assert!(msg.contains(&format!("byte offset {}:", offsets[record])), "byte {at}: {msg}");
        assert!(msg.contains(what), "byte {at}: {msg}");
    }
}

#[test]
fn truncated_file_fails_with_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offsets) = three_scalar_file(dir.path());
    let clean = std::fs::read(&path).unwrap();
    for cut in [clean.len() - 1, offsets[3] + 13, offsets[3] + 5] {
        std::fs::write(&path, &clean[..cut]).unwrap();
        let msg = read_scalars(&path).unwrap_err().to_string();
        assert!(msg.contains(&format!("byte offset {}:", offsets[3])), "cut at {cut}: {msg}");
        assert!(msg.contains("truncated"), "cut at {cut}: {msg}");
    }
    // Cut exactly at a record boundary: a valid, shorter file.
    std::fs::write(&path, &clean[..offsets[3]]).unwrap();
    assert_eq!(read_scalars(&path).unwrap().len(), 2);
}

#[test]
fn missing_file_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.out.tfevents.0.nothere");
    let err = read_scalars(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("nothere"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Run log
// ---------------------------------------------------------------------------------------------

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    lines(path).iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

/// Replaces the wall_time cell (third column) with `T` after checking it is a recent time.
fn mask_wall_time(row: &str) -> String {
    let mut cells: Vec<String> = row.split(',').map(str::to_string).collect();
    let t: f64 = cells[2].parse().unwrap_or_else(|_| panic!("{row}"));
    assert!((t - now()).abs() < 60.0, "{row}");
    cells[2] = "T".into();
    cells.join(",")
}

#[test]
fn run_log_writes_jsonl_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("a/b");
    let mut log = RunLog::create(&logs, false).unwrap();
    log.log(1, 0, &[("loss", 0.5), ("lr", 1e-4)]).unwrap();
    // Files are complete after each call (no drop needed).
    assert_eq!(lines(&logs.join("log.jsonl")).len(), 1);
    log.log(2, 0, &[("lr", 2e-4), ("extra", 3.0)]).unwrap();
    log.log(3, 1, &[("loss", 0.25), ("lr", 3.0)]).unwrap();
    assert_eq!(log.csv_columns().unwrap(), ["step", "epoch", "wall_time", "loss", "lr"]);
    assert_eq!(log.jsonl_path(), logs.join("log.jsonl"));
    assert_eq!(log.csv_path(), logs.join("log.csv"));

    let raw = lines(&logs.join("log.jsonl"));
    assert_eq!(raw.len(), 3);
    assert!(raw[0].starts_with(r#"{"step":1,"epoch":0,"wall_time":"#), "{}", raw[0]);
    assert!(raw[0].ends_with(r#","loss":0.5,"lr":0.0001}"#), "{}", raw[0]);
    assert!(raw[1].ends_with(r#","lr":0.0002,"extra":3.0}"#), "{}", raw[1]);
    let rows = json_lines(&logs.join("log.jsonl"));
    assert_eq!(rows[1]["step"], 2);
    assert_eq!(rows[2]["epoch"], 1);
    assert_eq!(rows[2]["loss"], 0.25);
    assert!(rows[1].get("loss").is_none());
    assert!((rows[0]["wall_time"].as_f64().unwrap() - now()).abs() < 60.0);
    assert!(rows[0]["wall_time"].as_f64().unwrap() <= rows[2]["wall_time"].as_f64().unwrap());

    let csv: Vec<String> = lines(&logs.join("log.csv"));
    assert_eq!(csv[0], "step,epoch,wall_time,loss,lr");
    let masked: Vec<String> = csv[1..].iter().map(|r| mask_wall_time(r)).collect();
    // Row 2: missing loss is empty; "extra" is not a column, so only the JSONL has it.
    assert_eq!(masked, ["1,0,T,0.5,0.0001", "2,0,T,,0.0002", "3,1,T,0.25,3.0"]);
}

#[test]
fn run_log_nan_and_infinity() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RunLog::create(dir.path(), false).unwrap();
    log.log(1, 0, &[("nan", f64::NAN), ("inf", f64::INFINITY), ("ninf", f64::NEG_INFINITY), ("ok", 1.5)]).unwrap();
    let raw = lines(&dir.path().join("log.jsonl"));
    assert!(raw[0].ends_with(r#","nan":null,"inf":null,"ninf":null,"ok":1.5}"#), "{}", raw[0]);
    let rows = json_lines(&dir.path().join("log.jsonl"));
    assert!(rows[0]["nan"].is_null() && rows[0]["inf"].is_null() && rows[0]["ninf"].is_null());
    let csv = lines(&dir.path().join("log.csv"));
    assert_eq!(csv[0], "step,epoch,wall_time,nan,inf,ninf,ok");
    assert_eq!(mask_wall_time(&csv[1]), "1,0,T,nan,inf,-inf,1.5");
}

#[test]
fn run_log_resume_appends_and_keeps_the_header() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = RunLog::create(dir.path(), false).unwrap();
        log.log(1, 0, &[("loss", 1.0), ("lr", 0.5)]).unwrap();
        log.log(2, 0, &[("loss", 2.0), ("lr", 0.5)]).unwrap();
    }
    {
        let mut log = RunLog::create(dir.path(), true).unwrap();
        assert_eq!(log.csv_columns().unwrap(), ["step", "epoch", "wall_time", "loss", "lr"]);
        // Different order and a new name: the CSV follows the existing header.
        log.log(3, 1, &[("new", 9.0), ("lr", 0.25), ("loss", 3.0)]).unwrap();
    }
    let rows = json_lines(&dir.path().join("log.jsonl"));
    assert_eq!(rows.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(rows[2]["new"], 9.0);
    let csv = lines(&dir.path().join("log.csv"));
    assert_eq!(csv.len(), 4, "{csv:?}");
    assert_eq!(csv[0], "step,epoch,wall_time,loss,lr");
    assert_eq!(mask_wall_time(&csv[3]), "3,1,T,3.0,0.25");

    // resume == false truncates both files.
    let mut log = RunLog::create(dir.path(), false).unwrap();
    log.log(10, 0, &[("other", 1.0)]).unwrap();
    assert_eq!(json_lines(&dir.path().join("log.jsonl")).len(), 1);
    let csv = lines(&dir.path().join("log.csv"));
    assert_eq!(csv.len(), 2);
    assert_eq!(csv[0], "step,epoch,wall_time,other");
}

#[test]
fn run_log_resume_without_files_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = RunLog::create(dir.path(), true).unwrap();
    assert!(log.csv_columns().is_none());
    log.log(5, 2, &[("loss", 0.1)]).unwrap();
    let csv = lines(&dir.path().join("log.csv"));
    assert_eq!(csv[0], "step,epoch,wall_time,loss");
    assert_eq!(mask_wall_time(&csv[1]), "5,2,T,0.1");
}

#[test]
fn run_log_resume_after_a_cut_off_line() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = RunLog::create(dir.path(), false).unwrap();
        log.log(1, 0, &[("loss", 1.0)]).unwrap();
    }
    // A crash in the middle of writing the second row.
    let append = |name: &str, text: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join(name)).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    append("log.jsonl", r#"{"step":2,"epo"#);
    append("log.csv", "2,0,17");
    let mut log = RunLog::create(dir.path(), true).unwrap();
    log.log(2, 0, &[("loss", 2.0)]).unwrap();
    let raw = lines(&dir.path().join("log.jsonl"));
    assert_eq!(raw.len(), 3);
    assert_eq!(raw[1], r#"{"step":2,"epo"#);
    let row: serde_json::Value = serde_json::from_str(&raw[2]).unwrap();
    assert_eq!(row["loss"], 2.0);
    let csv = lines(&dir.path().join("log.csv"));
    assert_eq!(csv.len(), 4);
    assert_eq!(csv[2], "2,0,17");
    assert_eq!(mask_wall_time(&csv[3]), "2,0,T,2.0");
}

#[test]
fn run_log_quotes_names_and_rejects_reserved_or_repeated_names() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = RunLog::create(dir.path(), false).unwrap();
        log.log(1, 0, &[("a,b", 1.0), ("say \"hi\"", 2.0)]).unwrap();
        for bad in [&[("step", 1.0)][..], &[("x", 1.0), ("x", 2.0)][..], &[("wall_time", 0.0)][..]] {
            let err = log.log(2, 0, bad).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        }
    }
    let csv = lines(&dir.path().join("log.csv"));
    assert_eq!(csv.len(), 2, "rejected rows must write nothing: {csv:?}");
    assert_eq!(csv[0], r#"step,epoch,wall_time,"a,b","say ""hi""""#);
    assert_eq!(json_lines(&dir.path().join("log.jsonl"))[0]["say \"hi\""], 2.0);
    // The quoted header is parsed back on resume.
    let log = RunLog::create(dir.path(), true).unwrap();
    assert_eq!(log.csv_columns().unwrap(), ["step", "epoch", "wall_time", "a,b", "say \"hi\""]);
}

/// Writes event files for `tools/reference/read_tensorboard.py` (run by hand, see
/// `tools/reference/README.md`): two files in `$LORAKIT_TB_SAMPLE_DIR` as a run and its resume
/// would, plus `expected.json` with every tag's `[step, value]` pairs.
#[test]
#[ignore = "writes files for the Python check; run with LORAKIT_TB_SAMPLE_DIR=<dir> -- --ignored"]
fn write_event_files_for_python_check() {
    let dir = PathBuf::from(std::env::var("LORAKIT_TB_SAMPLE_DIR").expect("set LORAKIT_TB_SAMPLE_DIR"));
    let mut expected: std::collections::BTreeMap<&str, Vec<(i64, f32)>> = Default::default();
    let mut writer = TensorBoardWriter::create(&dir).unwrap();
    for step in 1..=120i64 {
        if step == 61 {
            // The resumed run: a second file in the same directory.
            writer = TensorBoardWriter::create(&dir).unwrap();
        }
        let loss = 1.0 / step as f32 + 0.01 * (step as f32).sin();
        let lr = 1e-4 * (1.0 - step as f32 / 200.0);
        if step % 3 == 0 {
            writer
                .add_scalars(step, &[("loss/current", loss), ("lr/unet", lr), ("lr/text_encoder", lr / 2.0)])
                .unwrap();
            expected.entry("lr/unet").or_default().push((step, lr));
            expected.entry("lr/text_encoder").or_default().push((step, lr / 2.0));
        } else {
            writer.add_scalar("loss/current", loss, step).unwrap();
        }
        expected.entry("loss/current").or_default().push((step, loss));
    }
    writer.add_scalar("loss/epoch", -0.5, 1_000_000_000_000).unwrap();
    expected.entry("loss/epoch").or_default().push((1_000_000_000_000, -0.5));
    drop(writer);
    let json: serde_json::Map<String, serde_json::Value> = expected
        .into_iter()
        .map(|(tag, points)| (tag.to_string(), points.iter().map(|&(s, v)| serde_json::json!([s, v as f64])).collect()))
        .collect();
    std::fs::write(dir.join("expected.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
}
