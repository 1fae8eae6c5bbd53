//! The job queue (gui-peers.md §8, "Process model").
//!
//! The server never trains (or resizes, merges, converts, generates) in its own process: each
//! job is a **child process** in a process group of its own — a training is this binary's
//! `lorakit train <job>/config.toml`, a command job (`resize`, `merge`, `convert`, `generate`)
//! this binary's subcommand with the argument list the server built from a checked request —
//! so a crash, an OOM kill or a CUDA abort takes down the job, never the server, and a job keeps
//! running when the browser closes (or the server stops: the next server adopts it).
//!
//! On disk, under the state folder (`~/.lorakit/gui` by default):
//!
//! ```text
//! jobs/<id>/job.json      the record (JobRecord), replaced atomically on every change
//! jobs/<id>/config.toml   a training's config snapshot: every key, paths absolute
//! jobs/<id>/command.json  a command job's argument list (after the program) and its request
//! jobs/<id>/output.log    the child's stdout and stderr
//! ```
//!
//! Ids are zero-padded counters; the queue order is each record's `position` (its id number
//! until the job is moved), so a reorder survives a restart. One job runs at a time.
//! Stop & save sends SIGINT to the job's group (`lorakit train` finishes the step, saves a
//! resumable `<name>-stepNNNNNNNN-state` folder and exits), then SIGKILL when it is still alive
//! after [`JobsOptions::stop_timeout`]; Stop now sends SIGKILL. At start a job recorded as running
//! whose process is gone (or whose pid now belongs to another process: the start time from
//! `/proc/<pid>/stat` differs) becomes `interrupted`; one still alive is adopted and watched.

mod command;
mod progress;
mod runner;

pub use command::{CommandArg, CommandJob, CommandKind};
pub use progress::read_lines_from;
pub use runner::{process_matches, process_start_time};

use progress::{compute_progress, read_tail};
use runner::{signal_group, Signal};

use std::ffi::OsString;
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
/// A command job's argument list and request in its folder.
pub const COMMAND_FILE: &str = "command.json";

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
    /// `queued`, `starting`, `training` (a command job: `resizing`, `merging`, `converting`,
    /// `generating`), or the final status.
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
    /// A command job's last output line.
    #[serde(default)]
    pub line: Option<String>,
}

/// `jobs/<id>/job.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobRecord {
    /// The folder name: a zero-padded counter (queue order).
    pub id: String,
    /// `train`, or a command job's subcommand: `resize`, `merge`, `convert`, `generate`.
    pub kind: String,
    /// Place in the queue (lower runs first; the id number until the job is moved).
    #[serde(default)]
    pub position: Option<u64>,
    /// A command job in a few words (`resize a.safetensors → b.safetensors`).
    #[serde(default)]
    pub summary: Option<String>,
    /// The files a command job writes (absolute).
    #[serde(default)]
    pub outputs: Vec<PathBuf>,
    /// Those files as the browser addresses them (root and path), when they exist; filled when
    /// the record is read, never stored.
    #[serde(default, skip_deserializing)]
    pub files: Vec<FileRef>,
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

/// A file under a root, as the browser addresses it (`/api/image?root=…&path=…`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// The root's id.
    pub root: usize,
    /// The path under it, `/`-separated.
    pub path: String,
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
    /// The program started for command jobs (resize, merge, convert, generate).
    pub command_program: PathBuf,
    /// Its arguments before the job's own (`resize IN OUT --rank 8 …`).
    pub command_args: Vec<OsString>,
}

impl JobsOptions {
    /// `<this binary> train <job>/config.toml` (command jobs: `<this binary> <subcommand> …`), killed 5 minutes after Stop & save when still
    /// alive (a slow step on a CPU can take minutes; Stop now is there for the impatient).
    pub fn lorakit() -> std::io::Result<JobsOptions> {
        Ok(JobsOptions {
            program: std::env::current_exe()?,
            args: vec!["train".into()],
            stop_timeout: Duration::from_secs(300),
            requests: true,
            command_program: std::env::current_exe()?,
            command_args: Vec::new(),
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

/// A status as the API writes it (`queued`, `running`, …).
fn status_name(status: Status) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
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
        records.sort_by_key(queue_key);
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
            self.fill_files(r);
        }
        (records, skipped)
    }

    /// One job, with live progress when it runs.
    pub fn get(&self, id: &str) -> Result<JobRecord, JobError> {
        let dir = self.job_dir(id)?;
        let mut record = read_record(&dir).map_err(JobError::Io)?;
        self.fill_progress(&mut record);
        self.fill_files(&mut record);
        Ok(record)
    }

    /// The job's config snapshot (for Clone & edit); a command job has none.
    pub fn config_text(&self, id: &str) -> Result<String, JobError> {
        let path = self.job_dir(id)?.join(CONFIG_FILE);
        if !path.exists() && path.with_file_name(COMMAND_FILE).exists() {
            return Err(JobError::Conflict(format!("job {id} is a command job: it has no training config")));
        }
        std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))
    }

    /// The command job's outputs that exist, addressed under a root.
    fn fill_files(&self, record: &mut JobRecord) {
        let roots = &self.inner.roots;
        record.files = record
            .outputs
            .iter()
            .filter_map(|p| p.canonicalize().ok().filter(|c| c.is_file()))
            .filter_map(|p| {
                (0..roots.all().len()).find_map(|r| roots.relative(r, &p).map(|path| FileRef { root: r, path }))
            })
            .collect();
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
            resolve_paths(&mut config, base);
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
        self.create(CONFIG_FILE, snapshot.into_bytes(), |record| {
            record.resumed_from = resumed_from;
            record.resume_state = resume_state;
        })
    }

    /// Queues a command job (resize, merge, convert, generate): every path it names must lie
    /// inside the roots, its inputs must be existing files, and no output may be one of its
    /// inputs or an existing folder.
    pub fn submit_command(&self, job: CommandJob) -> Result<JobRecord, JobError> {
        let argv = job.check(&self.inner.roots)?;
        let file = serde_json::json!({ "kind": job.kind.name(), "argv": argv, "request": job.request });
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| JobError::Io(e.to_string()))?;
        let outputs = job.outputs();
        self.create(COMMAND_FILE, bytes, |record| {
            record.kind = job.kind.name().into();
            record.summary = Some(job.summary.clone());
            record.outputs = outputs;
        })
    }

    /// Makes the next job folder with `file` in it, then its record (`fill` sets the
    /// kind-specific fields), and wakes the runner.
    fn create(&self, file: &str, bytes: Vec<u8>, fill: impl FnOnce(&mut JobRecord)) -> Result<JobRecord, JobError> {
        let mut live = self.lock();
        let (id, dir, number) = loop {
            let number = live.next_id;
            let id = format!("{number:06}");
            live.next_id += 1;
            let dir = self.inner.dir.join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir, number),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&dir, e)),
            }
        };
        let path = dir.join(file);
        lorakit_dataset::fs_atomic::write_atomic(&path, &bytes).map_err(|e| io_err(&path, e))?;
        let mut record = JobRecord {
            id,
            kind: "train".into(),
            // New ids are above every position in use (positions are only ever swapped).
            position: Some(number),
            summary: None,
            outputs: Vec::new(),
            files: Vec::new(),
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
            resumed_from: None,
            resume_state: None,
            log_dir: None,
            progress: None,
        };
        fill(&mut record);
        // The record comes last: a folder without one is an unfinished submission, skipped.
        self.write_record(&record)?;
        drop(live);
        self.inner.wake.notify_one();
        Ok(record)
    }

    /// Moves a queued job `by` places (-1: earlier, 1: later) among the queued jobs, by swapping
    /// its position with its neighbour's; the positions are stored, so a restart keeps the order.
    pub fn move_job(&self, id: &str, by: i64) -> Result<JobRecord, JobError> {
        if by != -1 && by != 1 {
            return Err(JobError::Invalid(format!("move by {by}: a job moves one place at a time (-1 or 1)")));
        }
        let mut live = self.lock();
        let dir = self.job_dir(id)?;
        let record = read_record(&dir).map_err(JobError::Io)?;
        if record.status != Status::Queued {
            return Err(JobError::Conflict(format!(
                "job {id} is {}: only queued jobs move",
                status_name(record.status)
            )));
        }
        let (records, _) = self.scan();
        let queued: Vec<&JobRecord> = records.iter().filter(|r| r.status == Status::Queued).collect();
        let at = queued.iter().position(|r| r.id == id).ok_or_else(|| JobError::NotFound(id.to_string()))?;
        let other = at.checked_add_signed(by as isize).and_then(|i| queued.get(i)).ok_or_else(|| {
            JobError::Conflict(format!("job {id} is already {} in the queue", if by < 0 { "first" } else { "last" }))
        })?;
        let (mine, theirs) = (queue_key(queued[at]).0, queue_key(other).0);
        // Equal positions (a crash between the two writes below) are told apart by id.
        let (mine, theirs) = if mine == theirs { (theirs + by.signum() as u64, theirs) } else { (mine, theirs) };
        let other_id = other.id.clone();
        self.update(&mut live, &other_id, |r| r.position = Some(mine))?;
        self.update(&mut live, id, |r| r.position = Some(theirs))
    }

    /// Deletes a finished job's folder (record, snapshot, output); what the job wrote elsewhere
    /// (its LoRA files, images) stays. Queued and running jobs are refused.
    pub fn delete(&self, id: &str) -> Result<JobRecord, JobError> {
        let live = self.lock();
        let dir = self.job_dir(id)?;
        let record = read_record(&dir).map_err(JobError::Io)?;
        let running_here = live.running.as_ref().is_some_and(|r| r.id == id);
        if !record.status.is_final() || running_here {
            let what = if record.status == Status::Queued { "cancel it first" } else { "stop it first" };
            return Err(JobError::Conflict(format!(
                "job {id} is {}: {what}; only finished jobs are deleted",
                status_name(record.status)
            )));
        }
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(record)
    }

    /// A command job's request as the page sent it (for Clone & edit on the tools page).
    pub fn command_request(&self, id: &str) -> Result<serde_json::Value, JobError> {
        let path = self.job_dir(id)?.join(COMMAND_FILE);
        if !path.is_file() {
            return Err(JobError::Conflict(format!("job {id} is a training: it has no command request")));
        }
        let text = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
        let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| io_err(&path, e))?;
        Ok(serde_json::json!({ "kind": value["kind"], "request": value["request"] }))
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
        if record.kind != "train" {
            return Err(JobError::Conflict(format!(
                "job {id} is a {} job: only trainings save or sample now",
                record.kind
            )));
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
        if record.kind != "train" {
            // A command has no saved state to go on from: queue it again from the tools page.
            return Err(JobError::Conflict(format!(
                "job {id} is a {} job: only trainings resume (Clone & edit queues the command again)",
                record.kind
            )));
        }
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
            Status::Running if record.kind != "train" => {
                let line = progress::last_line(&self.inner.dir.join(&record.id).join(OUTPUT_FILE));
                record.progress =
                    Some(Progress { phase: command::phase(&record.kind).into(), line, ..Progress::default() })
            }
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
}

/// Where a record sorts in the queue: its position, then its id.
fn queue_key(record: &JobRecord) -> (u64, u64) {
    let id = record.id.parse::<u64>().unwrap_or(u64::MAX);
    (record.position.unwrap_or(id), id)
}

fn read_record(dir: &Path) -> Result<JobRecord, String> {
    let path = dir.join(JOB_FILE);
    let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not a job record: {e}", path.display()))
}

/// The config's relative paths made relative to `base` (the first root), every path key included.
pub(crate) fn resolve_paths(config: &mut lorakit_train::TrainConfig, base: &Path) {
    config.resolve_paths(base);
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
