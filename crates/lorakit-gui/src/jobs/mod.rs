//! The job queue (gui-peers.md §8, "Process model").
//!
//! The server never trains in its own process: each job is a **child process** (production:
//! this binary's `lorakit train <job>/config.toml`) in a process group of its own, so a crash,
//! an OOM kill or a CUDA abort takes down the job, never the server, and a job keeps running when
//! the browser closes (or the server stops: the next server adopts it).
//!
//! On disk, under the state folder (`~/.lorakit/gui` by default):
//!
//! ```text
//! jobs/<id>/job.json     the record (JobRecord), replaced atomically on every change
//! jobs/<id>/config.toml  the config snapshot: every key, paths absolute
//! jobs/<id>/output.log   the child's stdout and stderr
//! ```
//!
//! Ids are zero-padded counters, so the queue order is the id order. One job runs at a time.
//! Stop & save sends SIGINT to the job's group (`lorakit train` finishes the step, saves a
//! resumable `<name>-stepNNNNNNNN-state` folder and exits), then SIGKILL when it is still alive
//! after [`JobsOptions::stop_timeout`]; Stop now sends SIGKILL. At start a job recorded as running
//! whose process is gone (or whose pid now belongs to another process: the start time from
//! `/proc/<pid>/stat` differs) becomes `interrupted`; one still alive is adopted and watched.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::Roots;

/// The record's file name in a job folder.
pub const JOB_FILE: &str = "job.json";
/// The folder of a job's Save now / Sample now request files (`lorakit train --requests`).
const REQUESTS_DIR: &str = "requests";
/// The config snapshot's file name in a job folder.
pub const CONFIG_FILE: &str = "config.toml";
/// The captured stdout + stderr's file name in a job folder.
pub const OUTPUT_FILE: &str = "output.log";

/// Where a job is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its turn.
    Queued,
    /// Its process runs.
    Running,
    /// Exited with code 0.
    Done,
    /// Exited otherwise, without being asked to stop.
    Failed,
    /// Stopped on request (or cancelled before it started).
    Stopped,
    /// Its process disappeared while no server watched it (server or machine stopped).
    Interrupted,
}

impl Status {
    /// Whether the job will not change any more (by itself).
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// How a stop was asked for.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum StopRequest {
    /// Stop & save: SIGINT, SIGKILL after the timeout.
    Graceful,
    /// Stop now: SIGKILL.
    Kill,
}

/// Training progress as far as it is known.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// `queued`, `starting`, `training`, or the final status.
    pub phase: String,
    /// Last logged optimizer step.
    pub step: Option<u64>,
    /// Total steps, from `lorakit train`'s "… N steps, M epoch(s)" line.
    pub total: Option<u64>,
    /// Epoch of the last logged row (1-based).
    pub epoch: Option<u64>,
    /// Last step's loss (`loss/current`).
    pub loss: Option<f64>,
    /// Steps per second over this run's logged rows.
    pub its: Option<f64>,
    /// Seconds left at that speed (running jobs only).
    pub eta_s: Option<f64>,
}

/// `jobs/<id>/job.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobRecord {
    /// The folder name: a zero-padded counter (queue order).
    pub id: String,
    /// `train` (captioning, resizing and generating will share the queue).
    pub kind: String,
    /// Unix seconds when queued.
    pub created: u64,
    /// Where it is.
    pub status: Status,
    /// Unix seconds when its process started.
    #[serde(default)]
    pub started: Option<u64>,
    /// Unix seconds when it ended.
    #[serde(default)]
    pub finished: Option<u64>,
    /// The child's pid (its process group id too).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The child's start time in clock ticks after boot (`/proc/<pid>/stat` field 22; Linux),
    /// which tells a reused pid apart.
    #[serde(default)]
    pub process_start: Option<u64>,
    /// Exit code, when it exited normally.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Why it failed (or how a stop went), in one line.
    #[serde(default)]
    pub error: Option<String>,
    /// A stop asked for while it ran.
    #[serde(default)]
    pub stop: Option<StopRequest>,
    /// The job this one resumes.
    #[serde(default)]
    pub resumed_from: Option<String>,
    /// The state folder it resumes from (`save.resume`).
    #[serde(default)]
    pub resume_state: Option<PathBuf>,
    /// The run's log folder (with `log.jsonl`), once found.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Progress when it ended.
    #[serde(default)]
    pub progress: Option<Progress>,
}

/// A job folder whose record could not be read.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Skipped {
    /// The folder name.
    pub id: String,
    /// What is wrong.
    pub error: String,
}

/// Why a job request was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job with that id (or an id that is not one).
    #[error("no job {0}")]
    NotFound(String),
    /// The config is invalid or reaches outside the roots.
    #[error("{0}")]
    Invalid(String),
    /// Not possible in the job's current state.
    #[error("{0}")]
    Conflict(String),
    /// The state folder could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// What jobs run and how they are stopped.
#[derive(Debug, Clone)]
pub struct JobsOptions {
    /// The program started for each job.
    pub program: PathBuf,
    /// Its arguments before the config snapshot's path (which comes last).
    pub args: Vec<OsString>,
    /// How long Stop & save waits before SIGKILL.
    pub stop_timeout: Duration,
    /// Pass `--requests <job>/requests` before the config (lorakit train's Save now / Sample
    /// now channel; a fake trainer in tests may not take the flag).
    pub requests: bool,
}

impl JobsOptions {
    /// `<this binary> train <job>/config.toml`, killed 5 minutes after Stop & save when still
    /// alive (a slow step on a CPU can take minutes; Stop now is there for the impatient).
    pub fn lorakit() -> std::io::Result<JobsOptions> {
        Ok(JobsOptions {
            program: std::env::current_exe()?,
            args: vec!["train".into()],
            stop_timeout: Duration::from_secs(300),
            requests: true,
        })
    }
}

/// The job store and its runner (cheap to clone).
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    roots: Roots,
    options: JobsOptions,
    live: Mutex<Live>,
    wake: Notify,
    closing: AtomicBool,
}

struct Live {
    next_id: u64,
    running: Option<Running>,
}

/// The job whose process runs now.
#[derive(Clone)]
struct Running {
    id: String,
    pid: u32,
    process_start: Option<u64>,
    /// Started by an earlier server: not our child, watched by polling.
    adopted: bool,
    stop: Option<StopRequest>,
    /// SIGKILLed because Stop & save timed out.
    escalated: bool,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

fn io_err(what: &Path, e: impl std::fmt::Display) -> JobError {
    JobError::Io(format!("{}: {e}", what.display()))
}

impl Jobs {
    /// Opens (creating) `state_dir/jobs`, reconciles jobs recorded as running with the processes
    /// that exist, and returns the store with one note per job changed or skipped. Call
    /// [`Jobs::start`] inside a tokio runtime to run the queue.
    pub fn open(state_dir: &Path, roots: Roots, options: JobsOptions) -> std::io::Result<(Jobs, Vec<String>)> {
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create the job folder {}: {e} (give --state DIR)", dir.display()),
            )
        })?;
        // Absolute: children run inside their job folder and get the snapshot's path.
        let dir = dir.canonicalize()?;
        let jobs = Jobs {
            inner: Arc::new(Inner {
                dir,
                roots,
                options,
                live: Mutex::new(Live { next_id: 1, running: None }),
                wake: Notify::new(),
                closing: AtomicBool::new(false),
            }),
        };
        let mut notes = Vec::new();
        let (records, skipped) = jobs.scan();
        let mut live = jobs.lock();
        live.next_id = jobs.max_folder_id() + 1;
        for s in skipped {
            notes.push(format!("job {}: skipped: {}", s.id, s.error));
        }
        for mut record in records.into_iter().filter(|r| r.status == Status::Running) {
            let alive = record.pid.is_some_and(|pid| process_matches(pid, record.process_start));
            match (alive, &live.running) {
                (true, None) => {
                    live.running = Some(Running {
                        id: record.id.clone(),
                        pid: record.pid.unwrap_or_default(),
                        process_start: record.process_start,
                        adopted: true,
                        stop: record.stop,
                        escalated: false,
                    });
                    notes.push(format!(
                        "job {}: still running (pid {}): watching it",
                        record.id,
                        record.pid.unwrap_or(0)
                    ));
                    continue;
                }
                (true, Some(_)) => {
                    record.error = Some("another job was already running; this one is no longer watched".into())
                }
                (false, _) => {
                    record.error = Some(match record.pid {
                        Some(pid) => format!("its process (pid {pid}) ended while no lorakit gui was watching it"),
                        None => "it never recorded a process".into(),
                    })
                }
            }
            record.status = Status::Interrupted;
            record.finished = Some(now());
            notes.push(format!("job {}: interrupted ({})", record.id, record.error.as_deref().unwrap_or("")));
            if let Err(e) = jobs.write_record(&record) {
                notes.push(format!("job {}: {e}", record.id));
            }
        }
        drop(live);
        Ok((jobs, notes))
    }

    /// Spawns the runner on the current tokio runtime: it starts queued jobs one at a time, in
    /// queue order, for as long as the runtime lives.
    pub fn start(&self) {
        let jobs = self.clone();
        tokio::spawn(async move { jobs.run_queue().await });
    }

    /// Marks the server as shutting down: event streams end (so a graceful shutdown does not
    /// wait for browsers), and returns the id of the job left running, which keeps running in
    /// its own process group for the next server to adopt.
    pub fn close(&self) -> Option<String> {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.lock().running.as_ref().map(|r| r.id.clone())
    }

    /// Whether [`Jobs::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    /// The folder of job folders.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job_dir(&self, id: &str) -> Result<PathBuf, JobError> {
        if !valid_id(id) {
            return Err(JobError::NotFound(id.to_string()));
        }
        let dir = self.inner.dir.join(id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(JobError::NotFound(id.to_string()))
        }
    }

    fn max_folder_id(&self) -> u64 {
        std::fs::read_dir(&self.inner.dir)
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok()).max().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Every readable record in queue order, and the folders skipped with the reason.
    fn scan(&self) -> (Vec<JobRecord>, Vec<Skipped>) {
        let mut records = Vec::new();
        let mut skipped = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.inner.dir) else { return (records, skipped) };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
            if !valid_id(&id) || !entry.path().is_dir() {
                continue;
            }
            match read_record(&entry.path()) {
                Ok(r) if r.id == id => records.push(r),
                Ok(r) => skipped.push(Skipped { id, error: format!("{JOB_FILE} names job {}", r.id) }),
                Err(error) => skipped.push(Skipped { id, error }),
            }
        }
        records.sort_by_key(|r| r.id.parse::<u64>().unwrap_or(u64::MAX));
        skipped.sort_by(|a, b| a.id.cmp(&b.id));
        (records, skipped)
    }

    fn write_record(&self, record: &JobRecord) -> Result<(), JobError> {
        let path = self.inner.dir.join(&record.id).join(JOB_FILE);
        let text = serde_json::to_vec_pretty(record).map_err(|e| io_err(&path, e))?;
        lorakit_dataset::fs_atomic::write_atomic(&path, &text).map_err(|e| io_err(&path, e))
    }

    /// Reads, changes and writes a record (callers hold the lock, so changes never interleave).
    fn update(&self, _live: &mut Live, id: &str, change: impl FnOnce(&mut JobRecord)) -> Result<JobRecord, JobError> {
        let dir = self.job_dir(id)?;
        let mut record = read_record(&dir).map_err(JobError::Io)?;
        change(&mut record);
        self.write_record(&record)?;
        Ok(record)
    }

    /// Every job (with live progress for running ones) in queue order, and the unreadable
    /// folders.
    pub fn list(&self) -> (Vec<JobRecord>, Vec<Skipped>) {
        let (mut records, skipped) = self.scan();
        for r in &mut records {
            self.fill_progress(r);
        }
        (records, skipped)
    }

    /// One job, with live progress when it runs.
    pub fn get(&self, id: &str) -> Result<JobRecord, JobError> {
        let dir = self.job_dir(id)?;
        let mut record = read_record(&dir).map_err(JobError::Io)?;
        self.fill_progress(&mut record);
        Ok(record)
    }

    /// The job's config snapshot (for Clone & edit).
    pub fn config_text(&self, id: &str) -> Result<String, JobError> {
        let path = self.job_dir(id)?.join(CONFIG_FILE);
        std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))
    }

    /// Path of the job's captured output.
    pub fn output_path(&self, id: &str) -> Result<PathBuf, JobError> {
        Ok(self.job_dir(id)?.join(OUTPUT_FILE))
    }

    /// Checks a training config as `lorakit train` reads it, makes its relative paths relative to
    /// the first root, refuses paths outside the roots, and queues it.
    pub fn submit(&self, toml_text: &str) -> Result<JobRecord, JobError> {
        let mut config = lorakit_train::TrainConfig::from_toml_str(toml_text, &[]).map_err(JobError::Invalid)?;
        if let Some(base) = self.inner.roots.all().first() {
            config.resolve_paths(base);
        }
        self.queue(config, None, None)
    }

    fn queue(
        &self,
        config: lorakit_train::TrainConfig,
        resumed_from: Option<String>,
        resume_state: Option<PathBuf>,
    ) -> Result<JobRecord, JobError> {
        check_paths(&config, &self.inner.roots)?;
        let snapshot = config.to_toml_string();
        let mut live = self.lock();
        let (id, dir) = loop {
            let id = format!("{:06}", live.next_id);
            live.next_id += 1;
            let dir = self.inner.dir.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&dir, e)),
            }
        };
        let config_path = dir.join(CONFIG_FILE);
        lorakit_dataset::fs_atomic::write_atomic(&config_path, snapshot.as_bytes())
            .map_err(|e| io_err(&config_path, e))?;
        let record = JobRecord {
            id,
            kind: "train".into(),
            created: now(),
            status: Status::Queued,
            started: None,
            finished: None,
            pid: None,
            process_start: None,
            exit_code: None,
            signal: None,
            error: None,
            stop: None,
            resumed_from,
            resume_state,
            log_dir: None,
            progress: None,
        };
        // The record comes last: a folder without one is an unfinished submission, skipped.
        self.write_record(&record)?;
        drop(live);
        self.inner.wake.notify_one();
        Ok(record)
    }

    /// Stop & save: SIGINT to a running job (SIGKILL after the timeout); a queued job is
    /// cancelled.
    pub fn stop(&self, id: &str) -> Result<JobRecord, JobError> {
        self.request_stop(id, StopRequest::Graceful)
    }

    /// Save now / Sample now: leaves lorakit train's request file (`save-now` / `sample-now`) in
    /// the running job's requests folder; the run takes it after its current step.
    pub fn request(&self, id: &str, what: &str) -> Result<JobRecord, JobError> {
        let _live = self.lock();
        let dir = self.job_dir(id)?;
        let record = read_record(&dir).map_err(JobError::Io)?;
        if record.status != Status::Running {
            return Err(JobError::Conflict(format!("job {id} is {:?}, not running", record.status).to_lowercase()));
        }
        let requests = dir.join(REQUESTS_DIR);
        std::fs::create_dir_all(&requests).map_err(|e| io_err(&requests, e))?;
        std::fs::write(requests.join(what), b"").map_err(|e| io_err(&requests.join(what), e))?;
        Ok(record)
    }

    /// Stop now: SIGKILL to a running job; a queued job is cancelled.
    pub fn kill(&self, id: &str) -> Result<JobRecord, JobError> {
        self.request_stop(id, StopRequest::Kill)
    }

    fn request_stop(&self, id: &str, how: StopRequest) -> Result<JobRecord, JobError> {
        let mut live = self.lock();
        let dir = self.job_dir(id)?;
        let record = read_record(&dir).map_err(JobError::Io)?;
        match record.status {
            Status::Queued => {
                return self.update(&mut live, id, |r| {
                    r.status = Status::Stopped;
                    r.stop = Some(how);
                    r.finished = Some(now());
                    r.error = Some("cancelled before it started".into());
                })
            }
            Status::Running => {}
            other => {
                return Err(JobError::Conflict(format!("job {id} is not running (it is {other:?})").to_lowercase()))
            }
        }
        let Some(running) = live.running.as_mut().filter(|r| r.id == id) else {
            return Err(JobError::Conflict(format!("job {id} is recorded as running but this server does not run it")));
        };
        if running.adopted && !process_matches(running.pid, running.process_start) {
            return Err(JobError::Conflict(format!("job {id}'s process has just ended")));
        }
        let pid = running.pid;
        let first = running.stop.is_none();
        match how {
            StopRequest::Graceful if !first => {} // a second SIGINT makes lorakit quit without saving
            StopRequest::Graceful => {
                running.stop = Some(how);
                signal_group(pid, Signal::Interrupt)
                    .map_err(|e| JobError::Io(format!("cannot signal job {id}: {e}")))?;
                let jobs = self.clone();
                let id = id.to_string();
                let timeout = self.inner.options.stop_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    jobs.escalate(&id, pid);
                });
            }
            StopRequest::Kill => {
                running.stop = Some(how);
                signal_group(pid, Signal::Kill).map_err(|e| JobError::Io(format!("cannot signal job {id}: {e}")))?;
            }
        }
        let stop = running.stop;
        self.update(&mut live, id, |r| r.stop = stop)
    }

    /// SIGKILL after Stop & save timed out, when the same process still runs.
    fn escalate(&self, id: &str, pid: u32) {
        let mut live = self.lock();
        if let Some(running) = live.running.as_mut().filter(|r| r.id == id && r.pid == pid) {
            if running.adopted && !process_matches(pid, running.process_start) {
                return;
            }
            running.escalated = true;
            if let Err(e) = signal_group(pid, Signal::Kill) {
                tracing::warn!("job {id}: cannot kill process group {pid}: {e}");
            }
        }
    }

    /// Queues a new job from `id`'s snapshot with `save.resume` at the state folder it left (the
    /// one its output names, else the newest `<output_name>…-state` folder written since it
    /// started); without one the new job starts over, and says so (`resume_state` empty).
    pub fn resume(&self, id: &str) -> Result<JobRecord, JobError> {
        let dir = self.job_dir(id)?;
        let record = read_record(&dir).map_err(JobError::Io)?;
        if !matches!(record.status, Status::Stopped | Status::Interrupted | Status::Failed) {
            return Err(JobError::Conflict(format!(
                "job {id} is {}: only stopped, interrupted or failed jobs resume",
                serde_json::to_value(record.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )));
        }
        let config_path = dir.join(CONFIG_FILE);
        let mut config = lorakit_train::TrainConfig::load(&config_path, &[])
            .map_err(|e| JobError::Invalid(format!("the snapshot no longer reads: {e}")))?;
        let state = self.find_state(&record, &dir, &config);
        config.save.resume = state.clone();
        self.queue(config, Some(id.to_string()), state)
    }

    fn find_state(&self, record: &JobRecord, dir: &Path, config: &lorakit_train::TrainConfig) -> Option<PathBuf> {
        let inside = |p: &Path| p.is_dir() && inside_roots(p, &self.inner.roots);
        let tail = read_tail(&dir.join(OUTPUT_FILE), 64 * 1024);
        let named = tail.lines().rev().find_map(|line| {
            let line = line.trim();
            let path = match line.split_once("state saved to ") {
                Some((_, p)) => p,
                None => line.strip_prefix("saved ").filter(|p| p.ends_with("-state"))?,
            };
            Some(PathBuf::from(path.trim())).filter(|p| inside(p))
        });
        if named.is_some() {
            return named;
        }
        let since = record.started.unwrap_or(record.created).saturating_sub(2);
        let prefix = &config.folders.output_name;
        std::fs::read_dir(&config.folders.output_dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let ok = name.starts_with(prefix.as_str()) && name.ends_with("-state") && !name.starts_with('.');
                let modified = e.metadata().ok()?.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_secs();
                (ok && modified >= since).then(|| (modified, e.path()))
            })
            .filter(|(_, p)| inside(p))
            .max()
            .map(|(_, p)| p)
    }

    /// Adds live progress to a running job's record (final progress is stored at exit).
    fn fill_progress(&self, record: &mut JobRecord) {
        match record.status {
            Status::Queued => record.progress = Some(Progress { phase: "queued".into(), ..Progress::default() }),
            Status::Running => {
                if record.log_dir.is_none() {
                    if let Some(found) = self.find_log_dir(record) {
                        let mut live = self.lock();
                        let _ = self.update(&mut live, &record.id, |r| r.log_dir = Some(found.clone()));
                        record.log_dir = Some(found);
                    }
                }
                record.progress = Some(compute_progress(record, &self.inner.dir.join(&record.id)));
            }
            _ => {}
        }
    }

    /// The run's log folder: `<logging_dir or output_dir/logs>/<log_prefix><timestamp>` made
    /// after the job started (the earliest such; jobs run one at a time).
    fn find_log_dir(&self, record: &JobRecord) -> Option<PathBuf> {
        let config = lorakit_train::TrainConfig::load(&self.inner.dir.join(&record.id).join(CONFIG_FILE), &[]).ok()?;
        let root = config.folders.logging_dir.clone().unwrap_or_else(|| config.folders.output_dir.join("logs"));
        let prefix = config.logging.log_prefix.clone().unwrap_or_default();
        let since = record.started?.saturating_sub(2);
        std::fs::read_dir(&root)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let stamp = name.strip_prefix(prefix.as_str())?;
                let ok = stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit());
                let modified = e.metadata().ok()?.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_secs();
                (ok && modified >= since && e.path().join(lorakit_train::run_log::JSONL_FILE).is_file())
                    .then(|| (modified, e.path()))
            })
            .min()
            .map(|(_, p)| p)
    }

    async fn run_queue(self) {
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
        let mut command = tokio::process::Command::new(&options.program);
        command.args(&options.args);
        if options.requests {
            let requests = dir.join(REQUESTS_DIR);
            std::fs::create_dir_all(&requests).map_err(|e| io_err(&requests, e))?;
            command.arg("--requests").arg(requests);
        }
        command
            .arg(dir.join(CONFIG_FILE))
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(false);
        own_process_group(&mut command)?;
        let child =
            command.spawn().map_err(|e| JobError::Io(format!("cannot start {}: {e}", options.program.display())))?;
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
    async fn watch_adopted(&self, running: Running) {
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
            let done = last.as_deref().is_some_and(|l| l.starts_with("done:"));
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

fn read_record(dir: &Path) -> Result<JobRecord, String> {
    let path = dir.join(JOB_FILE);
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not a job record: {e}", path.display()))
}

/// Every path key of the config must lie under a root (symlinks resolved where they exist):
/// the browser reaches nothing outside the roots, through a job neither.
pub(crate) fn check_paths(config: &lorakit_train::TrainConfig, roots: &Roots) -> Result<(), JobError> {
    for (key, path) in config.paths() {
        if path.as_os_str().is_empty() {
            continue;
        }
        if !inside_roots(&path, roots) {
            return Err(JobError::Invalid(format!(
                "{key} = {}: outside the GUI's roots (start lorakit gui with --root for the folder that holds it)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Whether `path` (absolute; it need not exist) lies under a root once its existing part is
/// canonicalised.
fn inside_roots(path: &Path, roots: &Roots) -> bool {
    if !path.is_absolute() {
        return false;
    }
    let mut existing = path;
    let mut rest = Vec::new();
    let canonical = loop {
        if let Ok(c) = existing.canonicalize() {
            break c;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return false,
        }
    };
    let mut full = canonical;
    for part in rest.into_iter().rev() {
        if !matches!(Path::new(&part).components().next(), Some(Component::Normal(_))) {
            return false;
        }
        full.push(part);
    }
    roots.all().iter().any(|r| full.starts_with(r))
}

/// Progress from the output (total steps) and the run's `log.jsonl` (step, epoch, loss, speed).
fn compute_progress(record: &JobRecord, dir: &Path) -> Progress {
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
fn final_progress(record: &JobRecord, dir: &Path) -> Progress {
    let mut progress = compute_progress(record, dir);
    progress.phase =
        serde_json::to_value(record.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    progress.eta_s = None;
    progress
}

/// One line saying why a job failed.
fn failure_cause(code: Option<i32>, signal: Option<i32>, last: Option<String>) -> String {
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
fn read_tail(path: &Path, max: u64) -> String {
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
fn last_line(path: &Path) -> Option<String> {
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

enum Signal {
    Interrupt,
    Kill,
}

/// Sends `signal` to the process group `pid` leads (the job and anything it started).
#[cfg(unix)]
fn signal_group(pid: u32, signal: Signal) -> std::io::Result<()> {
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
fn signal_group(_pid: u32, _signal: Signal) -> std::io::Result<()> {
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
