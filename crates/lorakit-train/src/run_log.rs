//! The plain training log: `log.jsonl` and `log.csv` in the run's log directory.
//!
//! Every [`RunLog::log`] call appends one line to each file and flushes it, so a crash loses at
//! most the line being written.
//!
//! - `log.jsonl`: one JSON object per line, keys in this order: `step`, `epoch`, `wall_time` (unix
//!   seconds), then the logged names in call order. NaN and ±infinity are written as `null`.
//! - `log.csv`: the column set is fixed by the first row written (`step,epoch,wall_time`, then that
//!   row's names), or, when resuming, by the existing header. A later row leaves a missing column
//!   empty; **names that are not columns are written only to the JSONL** (a CSV header cannot grow
//!   once rows follow it). Numbers use the same text as the JSONL; NaN is `nan`, infinities `inf`
//!   and `-inf`. Names containing `,`, `"` or line breaks are quoted.

use crate::time::unix_seconds;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// File name of the JSON-lines log.
pub const JSONL_FILE: &str = "log.jsonl";
/// File name of the CSV log.
pub const CSV_FILE: &str = "log.csv";

/// Keys every row carries before the logged values.
const FIXED_KEYS: [&str; 3] = ["step", "epoch", "wall_time"];

/// Appends rows to `log.jsonl` and `log.csv` (see the module docs for the formats).
pub struct RunLog {
    jsonl_path: PathBuf,
    csv_path: PathBuf,
    jsonl: File,
    csv: File,
    /// CSV columns; `None` until the header is known (first row, or the resumed file's header).
    columns: Option<Vec<String>>,
}

impl RunLog {
    /// Creates `dir` (and parents) and opens `dir/log.jsonl` and `dir/log.csv`. With
    /// `resume == false` both files are truncated; with `resume == true` rows are appended and an
    /// existing CSV header fixes the columns (a file missing or empty is started afresh). A last
    /// line cut short by a crash is terminated before new rows are appended.
    pub fn create(dir: &Path, resume: bool) -> io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| annotate(dir, e))?;
        let jsonl_path = dir.join(JSONL_FILE);
        let csv_path = dir.join(CSV_FILE);
        let jsonl = open_log(&jsonl_path, resume).map_err(|e| annotate(&jsonl_path, e))?;
        let mut columns = None;
        let csv = if resume {
            let mut csv = open_log(&csv_path, true).map_err(|e| annotate(&csv_path, e))?;
            csv.seek(SeekFrom::Start(0))?;
            let mut text = String::new();
            csv.read_to_string(&mut text).map_err(|e| annotate(&csv_path, e))?;
            if let Some(header) = text.lines().next().filter(|h| !h.trim().is_empty()) {
                columns = Some(split_csv_line(header));
            }
            csv
        } else {
            open_log(&csv_path, false).map_err(|e| annotate(&csv_path, e))?
        };
        Ok(RunLog { jsonl_path, csv_path, jsonl, csv, columns })
    }

    /// Path of `log.jsonl`.
    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl_path
    }

    /// Path of `log.csv`.
    pub fn csv_path(&self) -> &Path {
        &self.csv_path
    }

    /// The CSV columns, once fixed by the first row or a resumed header.
    pub fn csv_columns(&self) -> Option<&[String]> {
        self.columns.as_deref()
    }

    /// Appends one row at the current wall time and flushes both files. `values` are written in
    /// order after `step`, `epoch` and `wall_time`; a name repeated, or equal to one of those three,
    /// is an `InvalidInput` error and nothing is written.
    pub fn log(&mut self, step: u64, epoch: u64, values: &[(&str, f64)]) -> io::Result<()> {
        let wall_time = unix_seconds();
        for (i, (name, _)) in values.iter().enumerate() {
            if FIXED_KEYS.contains(name) || values[..i].iter().any(|(n, _)| n == name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("run log: value name {name:?} is repeated or reserved"),
                ));
            }
        }

        let mut json = format!("{{\"step\":{step},\"epoch\":{epoch},\"wall_time\":{}", json_number(wall_time));
        for (name, value) in values {
            json.push(',');
            json.push_str(&serde_json::to_string(name).map_err(io::Error::other)?);
            json.push(':');
            json.push_str(&json_number(*value));
        }
        json.push_str("}\n");

        let mut csv = String::new();
        if self.columns.is_none() {
            let columns: Vec<String> =
                FIXED_KEYS.iter().map(|k| k.to_string()).chain(values.iter().map(|(n, _)| n.to_string())).collect();
            csv.push_str(&columns.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
            csv.push('\n');
            self.columns = Some(columns);
        }
        let columns = self.columns.as_ref().expect("columns set above");
        let cells: Vec<String> = columns
            .iter()
            .map(|col| match col.as_str() {
                "step" => step.to_string(),
                "epoch" => epoch.to_string(),
                "wall_time" => csv_number(wall_time),
                name => values.iter().find(|(n, _)| *n == name).map(|(_, v)| csv_number(*v)).unwrap_or_default(),
            })
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');

        self.jsonl.write_all(json.as_bytes()).map_err(|e| annotate(&self.jsonl_path, e))?;
        self.jsonl.flush()?;
        self.csv.write_all(csv.as_bytes()).map_err(|e| annotate(&self.csv_path, e))?;
        self.csv.flush()
    }
}

fn annotate(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Opens a log for appending (creating it) or truncates it; when appending to a file whose last
/// line has no newline (a crash mid-write), writes one so the next row starts on its own line.
fn open_log(path: &Path, resume: bool) -> io::Result<File> {
    if !resume {
        return File::create(path);
    }
    let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        file.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

/// A JSON number, or `null` for NaN and infinities.
fn json_number(v: f64) -> String {
    if v.is_finite() {
        serde_json::Number::from_f64(v).map(|n| n.to_string()).unwrap_or_else(|| "null".into())
    } else {
        "null".into()
    }
}

/// The JSONL text of a finite number; `nan`, `inf`, `-inf` otherwise.
fn csv_number(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        json_number(v)
    }
}

/// Quotes a CSV field when it contains `,`, `"`, CR or LF.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits one CSV line (RFC 4180 quoting) into fields.
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches(['\r', '\n']).chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}
