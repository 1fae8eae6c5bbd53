//! Running the queue: one child process at a time, its end recorded; signals and process identity.

use std::path::Path;
use std::time::Duration;

use super::progress::{failure_cause, final_progress, last_line, read_tail};
use super::{
    io_err, now, read_record, JobError, Live, Running, Status, StopRequest, COMMAND_FILE, CONFIG_FILE, OUTPUT_FILE,
    REQUESTS_DIR,
};

impl super::Jobs {
    pub(super) async fn run_queue(self) {
        let adopted = self.lock().running.clone().filter(|r| r.adopted);
        if let Some(running) = adopted {
            self.watch_adopted(running).await;
        }
        loop {
            let next = {
                let (records, _) = self.scan();
                records.into_iter().find(|r| r.status == Status::Queued).map(|r| r.id)
            };
            match next {
                Some(id) => self.run_one(&id).await,
                None => self.inner.wake.notified().await,
            }
        }
    }

    /// Starts job `id` (when it is still queued), waits for it and records how it ended.
    async fn run_one(&self, id: &str) {
        let child = {
            let mut live = self.lock();
            match self.spawn(&mut live, id) {
                Ok(Some(child)) => child,
                Ok(None) => return,
                Err(e) => {
                    let error = e.to_string();
                    let _ = self.update(&mut live, id, |r| {
                        r.status = Status::Failed;
                        r.finished = Some(now());
                        r.error = Some(error);
                    });
                    return;
                }
            }
        };
        let mut child = child;
        let waited = child.wait().await;
        let mut live = self.lock();
        let running = live.running.take().filter(|r| r.id == id);
        let dir = self.inner.dir.join(id);
        let (stop, escalated) = running.map_or((None, false), |r| (r.stop, r.escalated));
        let _ = self.update(&mut live, id, |r| {
            r.finished = Some(now());
            r.stop = stop;
            match waited {
                Ok(status) => {
                    r.exit_code = status.code();
                    r.signal = exit_signal(&status);
                }
                Err(e) => r.error = Some(format!("lost track of the process: {e}")),
            }
            let last = last_line(&dir.join(OUTPUT_FILE));
            r.status = match (stop, r.exit_code) {
                (Some(_), _) => Status::Stopped,
                (None, Some(0)) => Status::Done,
                _ => Status::Failed,
            };
            r.error = match (r.status, stop) {
                (Status::Stopped, _) if escalated => Some(format!(
                    "did not stop within {} s of Stop & save: killed (no state saved)",
                    self.inner.options.stop_timeout.as_secs()
                )),
                (Status::Stopped, Some(StopRequest::Kill)) => Some("stopped now (killed; no state saved)".into()),
                (Status::Failed, _) => Some(failure_cause(r.exit_code, r.signal, last)),
                _ => r.error.take(),
            };
            r.progress = Some(final_progress(r, &dir));
        });
    }

    /// Spawns the child for `id` under the lock, so a stop cannot slip between the check that it
    /// is still queued and the record saying it runs.
    fn spawn(&self, live: &mut Live, id: &str) -> Result<Option<tokio::process::Child>, JobError> {
        let dir = self.job_dir(id)?;
        let record = read_record(&dir).map_err(JobError::Io)?;
        if record.status != Status::Queued {
            return Ok(None);
        }
        let log_path = dir.join(OUTPUT_FILE);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| io_err(&log_path, e))?;
        let err_log = log.try_clone().map_err(|e| io_err(&log_path, e))?;
        let options = &self.inner.options;
        let program = if record.kind == "train" { &options.program } else { &options.command_program };
        let mut command = tokio::process::Command::new(program);
        if record.kind == "train" {
            command.args(&options.args);
            if options.requests {
                let requests = dir.join(REQUESTS_DIR);
                std::fs::create_dir_all(&requests).map_err(|e| io_err(&requests, e))?;
                command.arg("--requests").arg(requests);
            }
            command.arg(dir.join(CONFIG_FILE));
        } else {
            command.args(&options.command_args).args(command_argv(&dir)?);
        }
        command.current_dir(&dir).stdin(std::process::Stdio::null()).stdout(log).stderr(err_log).kill_on_drop(false);
        own_process_group(&mut command)?;
        let child = command.spawn().map_err(|e| JobError::Io(format!("cannot start {}: {e}", program.display())))?;
        let pid = child.id().unwrap_or_default();
        let process_start = process_start_time(pid);
        live.running =
            Some(Running { id: id.to_string(), pid, process_start, adopted: false, stop: None, escalated: false });
        self.update(live, id, |r| {
            r.status = Status::Running;
            r.started = Some(now());
            r.pid = Some(pid);
            r.process_start = process_start;
        })?;
        Ok(Some(child))
    }

    /// Waits for a job an earlier server started (not our child: polled), then records its end
    /// from its output, since its exit code is unknowable.
    pub(super) async fn watch_adopted(&self, running: Running) {
        while process_matches(running.pid, running.process_start) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut live = self.lock();
        let now_running = live.running.take();
        let stop = now_running.as_ref().and_then(|r| r.stop);
        let dir = self.inner.dir.join(&running.id);
        let last = last_line(&dir.join(OUTPUT_FILE));
        let _ = self.update(&mut live, &running.id, |r| {
            r.finished = Some(now());
            r.stop = stop;
            // A command job's success shows in its outputs, written (atomically) since it started.
            let done = if r.kind == "train" {
                last.as_deref().is_some_and(|l| l.starts_with("done:"))
            } else if r.kind == "caption" {
                // Captions go to many files: the closing summary says it finished, and with no
                // failed image ("N captions written, M skipped, 0 failed").
                read_tail(&dir.join(OUTPUT_FILE), 64 * 1024)
                    .lines()
                    .any(|l| l.contains(" captions ") && l.ends_with(" 0 failed"))
            } else {
                let since = r.started.unwrap_or(r.created).saturating_sub(2);
                !r.outputs.is_empty() && r.outputs.iter().all(|p| written_since(p, since))
            };
            r.status = match (stop, done) {
                (Some(_), _) => Status::Stopped,
                (None, true) => Status::Done,
                (None, false) => Status::Failed,
            };
            if r.status == Status::Failed {
                r.error =
                    Some(last.unwrap_or_else(|| "ended while an earlier server ran it; exit code unknown".into()));
            }
            r.progress = Some(final_progress(r, &dir));
        });
    }
}

/// The argument list a command job's folder stores (after the program).
fn command_argv(dir: &Path) -> Result<Vec<String>, JobError> {
    let path = dir.join(COMMAND_FILE);
    let text = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| io_err(&path, e))?;
    serde_json::from_value(value["argv"].clone()).map_err(|e| io_err(&path, format!("argv: {e}")))
}

/// Whether `path` is a file modified at or after `since` (Unix seconds).
fn written_since(path: &Path, since: u64) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .is_some_and(|t| t.as_secs() >= since)
}

pub(super) enum Signal {
    Interrupt,
    Kill,
}

/// Sends `signal` to the process group `pid` leads (the job and anything it started).
#[cfg(unix)]
pub(super) fn signal_group(pid: u32, signal: Signal) -> std::io::Result<()> {
    // pid 0 or 1 would signal our own group or every process: never.
    let pid =
        libc::pid_t::try_from(pid).ok().filter(|&p| p > 1).ok_or_else(|| std::io::Error::other("no valid pid"))?;
    let sig = match signal {
        Signal::Interrupt => libc::SIGINT,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    if unsafe { libc::kill(-pid, sig) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Already gone: nothing to stop.
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
pub(super) fn signal_group(_pid: u32, _signal: Signal) -> std::io::Result<()> {
    Err(std::io::Error::other("stopping jobs needs a Unix system (Linux, macOS) for now"))
}

#[cfg(unix)]
fn own_process_group(command: &mut tokio::process::Command) -> Result<(), JobError> {
    command.process_group(0);
    Ok(())
}

#[cfg(not(unix))]
fn own_process_group(_command: &mut tokio::process::Command) -> Result<(), JobError> {
    Err(JobError::Io("jobs need a Unix system (Linux, macOS) for now".into()))
}

#[cfg(unix)]
fn exit_signal(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn exit_signal(_status: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// `(state, start time)` from `/proc/<pid>/stat` (fields 3 and 22), on Linux.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// The process start time that tells a reused pid apart (Linux; `None` elsewhere).
pub fn process_start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// Whether `pid` runs and (when known) started at `start`; zombies count as gone.
pub fn process_matches(pid: u32, start: Option<u64>) -> bool {
    if pid <= 1 {
        return false;
    }
    if cfg!(target_os = "linux") {
        return match proc_stat(pid) {
            Some((state, started)) => !matches!(state, 'Z' | 'X') && start.is_none_or(|s| s == started),
            None => false,
        };
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: signal 0 checks existence only.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::read_lines_from;

    #[test]
    fn lines_resume_at_the_offset_they_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        std::fs::write(&path, "one\ntwo\r\nthr").unwrap();
        let lines = read_lines_from(&path, 0, 1024, false).unwrap();
        assert_eq!(lines, vec![(4, "one".to_string()), (9, "two".to_string())]);
        assert_eq!(read_lines_from(&path, 4, 1024, false).unwrap(), vec![(9, "two".to_string())]);
        assert!(read_lines_from(&path, 9, 1024, false).unwrap().is_empty(), "an unfinished line waits");
        assert_eq!(read_lines_from(&path, 9, 1024, true).unwrap(), vec![(12, "thr".to_string())]);
        assert_eq!(read_lines_from(&path, 0, 2, false).unwrap(), vec![(2, "on".to_string())], "long lines in pieces");
        assert!(read_lines_from(&dir.path().join("missing"), 0, 10, true).unwrap().is_empty());
    }

    #[test]
    fn our_own_process_matches_and_a_wrong_start_time_does_not() {
        let me = std::process::id();
        assert!(process_matches(me, None));
        if cfg!(target_os = "linux") {
            let start = process_start_time(me).expect("Linux has /proc");
            assert!(process_matches(me, Some(start)));
            assert!(!process_matches(me, Some(start + 1)), "a reused pid");
        }
        assert!(!process_matches(0, None) && !process_matches(1, None), "never init or our group");
    }
}
