//! What a job has done so far, read from its output and its run log.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::{JobRecord, Progress, OUTPUT_FILE};

/// Progress from the output (total steps) and the run's `log.jsonl` (step, epoch, loss, speed).
pub(super) fn compute_progress(record: &JobRecord, dir: &Path) -> Progress {
    let head = read_head(&dir.join(OUTPUT_FILE), 64 * 1024);
    let total = head.lines().find_map(|l| {
        let rest = l.split_once("LoRA parameters: ")?.1;
        rest.split_once(" steps")?.0.trim().parse::<u64>().ok()
    });
    let mut p = Progress { phase: "starting".into(), total, ..Progress::default() };
    let Some(log_dir) = &record.log_dir else { return p };
    let path = log_dir.join(lorakit_train::run_log::JSONL_FILE);
    let rows = |text: &str| -> Vec<serde_json::Value> {
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect()
    };
    let first = rows(&read_head(&path, 4096)).into_iter().next();
    let last_rows = rows(&read_tail(&path, 16 * 1024));
    let Some(last) = last_rows.last() else { return p };
    p.phase = "training".into();
    p.step = last["step"].as_u64();
    p.epoch = last["epoch"].as_u64();
    p.loss = last_rows.iter().rev().find_map(|r| r["loss/current"].as_f64());
    if let (Some(first), Some(step)) = (first, p.step) {
        let steps = step.saturating_sub(first["step"].as_u64().unwrap_or(step)) as f64;
        let secs = last["wall_time"].as_f64().unwrap_or(0.0) - first["wall_time"].as_f64().unwrap_or(0.0);
        if steps > 0.0 && secs > 0.0 {
            let its = steps / secs;
            p.its = Some(its);
            p.eta_s = p.total.map(|t| t.saturating_sub(step) as f64 / its);
        }
    }
    p
}

/// The progress a job ended with, its phase the final status.
pub(super) fn final_progress(record: &JobRecord, dir: &Path) -> Progress {
    let mut progress = if record.kind == "train" {
        compute_progress(record, dir)
    } else {
        Progress { line: last_line(&dir.join(OUTPUT_FILE)), ..Progress::default() }
    };
    progress.phase =
        serde_json::to_value(record.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    progress.eta_s = None;
    progress
}

/// One line saying why a job failed.
pub(super) fn failure_cause(code: Option<i32>, signal: Option<i32>, last: Option<String>) -> String {
    if let Some(sig) = signal {
        #[cfg(unix)]
        if sig == libc::SIGKILL {
            return "killed (SIGKILL) without a stop request: often the system ran out of memory".into();
        }
        return last.unwrap_or_else(|| format!("ended by signal {sig}"));
    }
    last.unwrap_or_else(|| match code {
        Some(c) => format!("exited with code {c} and printed nothing"),
        None => "ended without an exit code".into(),
    })
}

/// Up to `max` bytes from the start of `path` (lossy UTF-8; empty when unreadable).
fn read_head(path: &Path, max: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(max).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `max` bytes of `path`, from the first whole line on.
pub(super) fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        text.split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default()
    } else {
        text
    }
}

/// The last non-empty line of `path`, at most 500 characters.
pub(super) fn last_line(path: &Path) -> Option<String> {
    let tail = read_tail(path, 16 * 1024);
    let line = tail.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(500).collect())
}

/// Complete lines of `path` from byte `offset` (at most about `max` bytes): each with the offset
/// just after it (what a reader passes back to continue there). A last line without its newline
/// is returned only when `finished` (the writer is gone); a line longer than `max` comes in
/// pieces.
pub fn read_lines_from(path: &Path, offset: u64, max: usize, finished: bool) -> std::io::Result<Vec<(u64, String)>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if offset >= len {
        return Ok(Vec::new());
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf)?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        out.push((offset + pos as u64, String::from_utf8_lossy(line).into_owned()));
    }
    let rest_is_all = offset + buf.len() as u64 >= len;
    if pos < buf.len() && (buf.len() >= max || (finished && rest_is_all)) {
        out.push((offset + buf.len() as u64, String::from_utf8_lossy(&buf[pos..]).into_owned()));
    }
    Ok(out)
}
