//! The job queue against a fake trainer (gui-peers.md §9, layer 1): queue order, progress from
//! the run log, Stop & save, the kill after the timeout, a failure's cause with the queue going
//! on, stale pids after a restart, configs refused with the reason, the output's event stream
//! resuming at `Last-Event-ID`; command jobs (resize, merge, …) in the same queue; reordering
//! kept across a restart; deleting finished jobs. No model, no GPU: the "trainer" is a shell
//! script that reads its behaviour from `folders.output_name` in the config snapshot it is
//! given, the "lorakit" of command jobs another that reads it from the output's file name.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use lorakit_gui::jobs::{CommandArg, CommandJob, CommandKind, JobRecord, Jobs, JobsOptions};
use lorakit_gui::{router, AppState, Roots};
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";
const PORT: u16 = 7999;
/// Generous: the test machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(120);

/// The fake `lorakit train <config>`. Every job appends `start NAME` / `end NAME` to
/// `<output_dir>/order.txt`.
const FAKE: &str = r#"
cfg="$1"
name=$(sed -n 's/^output_name = "\(.*\)"$/\1/p' "$cfg")
out=$(sed -n 's/^output_dir = "\(.*\)"$/\1/p' "$cfg")
echo "start $name" >> "$out/order.txt"
echo "fake trainer: $name"
case "$name" in
  fail)
    echo "loading the model"
    echo "error: model.safetensors: no such file (set model.pretrained_model_name_or_path)" >&2
    exit 2 ;;
  graceful)
    state="$out/graceful-step00000003-state"
    trap 'mkdir -p "$state"; echo "interrupted at step 3: state saved to $state"; echo "end $name" >> "$out/order.txt"; exit 130' INT
    echo ready
    while :; do sleep 0.1; done ;;
  stubborn)
    trap '' INT
    echo ready
    while :; do sleep 0.1; done ;;
  progress)
    echo "training 1000 LoRA parameters: 8 steps, 2 epoch(s) of 4 batches"
    mkdir -p "$out/logs/20250101000000"
    for i in 1 2 3 4; do
      echo "{\"step\":$i,\"epoch\":1,\"wall_time\":$((1000 + i)),\"loss/current\":0.$i,\"loss/average\":0.$i}" >> "$out/logs/20250101000000/log.jsonl"
    done
    while [ ! -e "$out/release" ]; do sleep 0.1; done
    echo "done: 8 steps" ;;
  *)
    for i in 1 2 3 4 5; do echo "line $i of $name"; done
    sleep 0.3
    echo "done: 5 lines" ;;
esac
echo "end $name" >> "$out/order.txt"
"#;

/// The fake `lorakit <subcommand> …` of command jobs: `resize IN OUT …` copies IN to OUT (an
/// OUT named `slow…` waits to be stopped, `fail…` fails); every call appends its arguments to
/// `<OUT's folder>/calls.txt`.
const FAKE_COMMAND: &str = r#"
kind="$1"; shift
in="$1"; out="$2"
echo "$kind $*" >> "$(dirname "$out")/calls.txt"
echo "fake lorakit $kind"
case "$(basename "$out")" in
  slow*) echo ready; while :; do sleep 0.1; done ;;
  fail*) echo "error: $in: not a LoRA file (no lora_down/lora_up pairs)" >&2; exit 1 ;;
esac
cp "$in" "$out"
echo "resized 2 modules → $out"
"#;

struct Setup {
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    jobs: Jobs,
    app: axum::Router,
}

fn fake_options(stop_timeout: Duration) -> JobsOptions {
    JobsOptions {
        program: "sh".into(),
        args: vec!["-c".into(), FAKE.into(), "fake".into()],
        stop_timeout,
        requests: false,
        command_program: "sh".into(),
        command_args: vec!["-c".into(), FAKE_COMMAND.into(), "fake".into()],
    }
}

/// A root with an `output` folder, a state folder and a running queue.
fn setup(stop_timeout: Duration) -> Setup {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("output")).unwrap();
    let state = tempfile::tempdir().unwrap();
    start(root, state, stop_timeout).0
}

fn start(root: tempfile::TempDir, state: tempfile::TempDir, stop_timeout: Duration) -> (Setup, Vec<String>) {
    let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
    let (jobs, notes) = Jobs::open(state.path(), roots.clone(), fake_options(stop_timeout)).unwrap();
    jobs.start();
    let app = router(AppState::new(roots, TOKEN.into(), PORT, vec![]).unwrap().with_jobs(jobs.clone()));
    (Setup { root, state, jobs, app }, notes)
}

impl Setup {
    fn output(&self) -> PathBuf {
        self.root.path().canonicalize().unwrap().join("output")
    }

    async fn send(&self, req: Request<Body>) -> Response<Body> {
        self.app.clone().oneshot(req).await.unwrap()
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let resp = self.send(request("GET", uri).body(Body::empty()).unwrap()).await;
        let status = resp.status();
        (status, json(resp).await)
    }

    async fn post(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        let req = request("POST", uri).header(header::ORIGIN, format!("http://127.0.0.1:{PORT}"));
        let resp = self.send(req.body(Body::from(body.to_string())).unwrap()).await;
        let status = resp.status();
        (status, json(resp).await)
    }

    /// Queues a job for the fake named `name`; returns its id.
    async fn submit(&self, name: &str) -> String {
        let (status, body) = self.post("/api/jobs", &config(name)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "queued", "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    async fn job(&self, id: &str) -> JobRecord {
        let (status, body) = self.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// Polls job `id` until `done` holds (panics after [`PATIENCE`]).
    async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&JobRecord) -> bool) -> JobRecord {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(start.elapsed() < PATIENCE, "job {id}: waited {PATIENCE:?} for {what}; it is {job:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_status(&self, id: &str, status: &str) -> JobRecord {
        self.wait_for(id, status, |j| status_name(j) == status).await
    }

    /// Waits until the fake wrote `text` to its output.
    async fn wait_output(&self, id: &str, text: &str) {
        let path = self.jobs.dir().join(id).join("output.log");
        let start = Instant::now();
        while !std::fs::read_to_string(&path).unwrap_or_default().contains(text) {
            assert!(start.elapsed() < PATIENCE, "job {id} never printed {text:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn order(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.output().join("order.txt")).unwrap_or_default();
        text.lines().map(str::to_string).collect()
    }
}

fn status_name(job: &JobRecord) -> String {
    serde_json::to_value(job.status).unwrap().as_str().unwrap().to_string()
}

fn config(name: &str) -> String {
    // Relative paths are taken from the first root.
    format!("[folders]\noutput_dir = \"output\"\noutput_name = \"{name}\"\n")
}

fn request(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, format!("127.0.0.1:{PORT}"))
        .header(header::COOKIE, format!("lorakit_{PORT}={TOKEN}"))
}

async fn text(resp: Response<Body>) -> String {
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

async fn json(resp: Response<Body>) -> Value {
    let body = text(resp).await;
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_one_at_a_time_in_queue_order() {
    let s = setup(Duration::from_secs(60));
    let first = s.submit("first").await;
    let second = s.submit("second").await;
    assert!(first < second, "ids sort in queue order");
    s.wait_status(&second, "done").await;
    assert_eq!(s.order(), ["start first", "end first", "start second", "end second"]);
    let first = s.job(&first).await;
    assert_eq!((first.exit_code, first.error.as_deref()), (Some(0), None));
    // The snapshot holds every key with paths made absolute under the root.
    let resp = s.send(request("GET", &format!("/api/jobs/{}/config", first.id)).body(Body::empty()).unwrap()).await;
    let snapshot = text(resp).await;
    assert!(snapshot.contains(&format!("output_dir = \"{}\"", s.output().display())), "{snapshot}");
    assert!(snapshot.contains("max_train_epochs = "), "every key: {snapshot}");
    let (_, list) = s.get("/api/jobs").await;
    let ids: Vec<&str> = list["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first.id.as_str(), second.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_comes_from_the_run_log() {
    let s = setup(Duration::from_secs(60));
    let id = s.submit("progress").await;
    let job = s.wait_for(&id, "four logged steps", |j| j.progress.as_ref().is_some_and(|p| p.step == Some(4))).await;
    let p = job.progress.unwrap();
    assert_eq!((p.phase.as_str(), p.total, p.epoch, p.loss), ("training", Some(8), Some(1), Some(0.4)));
    // Steps 1..4 logged at 1001..1004 s: one step a second, four to go.
    assert_eq!((p.its, p.eta_s), (Some(1.0), Some(4.0)));
    assert_eq!(job.log_dir, Some(s.output().join("logs").join("20250101000000")));
    std::fs::write(s.output().join("release"), "").unwrap();
    let done = s.wait_status(&id, "done").await;
    let p = done.progress.expect("the last progress is kept");
    assert_eq!((p.phase.as_str(), p.step, p.eta_s), ("done", Some(4), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_save_interrupts_and_resume_continues_from_the_state() {
    let s = setup(Duration::from_secs(120));
    let id = s.submit("graceful").await;
    let next = s.submit("after").await;
    s.wait_status(&id, "running").await;
    s.wait_output(&id, "ready").await;
    let (status, body) = s.post(&format!("/api/jobs/{id}/stop"), "").await;
    assert_eq!((status, &body["stop"]), (StatusCode::OK, &Value::from("graceful")), "{body}");
    let job = s.wait_status(&id, "stopped").await;
    assert_eq!(job.exit_code, Some(130), "{job:?}");
    assert_eq!(job.error, None, "a graceful stop is no failure");
    s.wait_status(&next, "done").await;
    // Resume: a new job from the snapshot with save.resume at the state the stop saved.
    let (status, resumed) = s.post(&format!("/api/jobs/{id}/resume"), "").await;
    assert_eq!(status, StatusCode::CREATED, "{resumed}");
    let state = s.output().join("graceful-step00000003-state");
    assert_eq!(resumed["resume_state"], state.display().to_string());
    assert_eq!(resumed["resumed_from"], id);
    let new_id = resumed["id"].as_str().unwrap();
    let snapshot = s.jobs.config_text(new_id).unwrap();
    assert!(snapshot.contains(&format!("resume = \"{}\"", state.display())), "{snapshot}");
    // Stopping it while queued or running both end as stopped; a finished job cannot resume.
    s.wait_status(new_id, "running").await;
    s.post(&format!("/api/jobs/{new_id}/kill"), "").await;
    s.wait_status(new_id, "stopped").await;
    let (status, body) = s.post(&format!("/api/jobs/{next}/resume"), "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = s.post(&format!("/api/jobs/{next}/stop"), "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Save now / Sample now only reach a running job.
    for request in ["save-now", "sample-now"] {
        let (status, body) = s.post(&format!("/api/jobs/{next}/{request}"), "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{request}: {body}");
        assert!(body.to_string().contains("not running"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ignores_the_interrupt_is_killed_after_the_timeout() {
    let s = setup(Duration::from_millis(500));
    let id = s.submit("stubborn").await;
    s.wait_status(&id, "running").await;
    s.wait_output(&id, "ready").await;
    let (status, _) = s.post(&format!("/api/jobs/{id}/stop"), "").await;
    assert_eq!(status, StatusCode::OK);
    let job = s.wait_status(&id, "stopped").await;
    assert_eq!(job.signal, Some(libc::SIGKILL), "{job:?}");
    assert!(job.error.as_deref().unwrap().contains("killed (no state saved)"), "{job:?}");
    assert_eq!(s.order(), ["start stubborn"], "no trap ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_shows_its_cause_and_the_queue_goes_on() {
    let s = setup(Duration::from_secs(60));
    let failing = s.submit("fail").await;
    let next = s.submit("next").await;
    let job = s.wait_status(&failing, "failed").await;
    assert_eq!(job.exit_code, Some(2));
    assert_eq!(
        job.error.as_deref(),
        Some("error: model.safetensors: no such file (set model.pretrained_model_name_or_path)")
    );
    s.wait_status(&next, "done").await;
    // Stop now on a queued job cancels it.
    let blocker = s.submit("stubborn").await;
    let queued = s.submit("never").await;
    s.wait_status(&blocker, "running").await;
    let (status, body) = s.post(&format!("/api/jobs/{queued}/kill"), "").await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &Value::from("stopped")), "{body}");
    s.post(&format!("/api/jobs/{blocker}/kill"), "").await;
    let killed = s.wait_status(&blocker, "stopped").await;
    assert_eq!(killed.signal, Some(libc::SIGKILL));
    assert!(!s.order().contains(&"start never".to_string()), "{:?}", s.order());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_are_refused_with_the_reason() {
    let s = setup(Duration::from_secs(60));
    for (body, reason) in [
        ("[training]\nmax_train_epochs = -1\n", "max_train_epochs"),
        ("this is not toml", "not valid TOML"),
        ("[training]\nno_such_key = 1\n", "no_such_key"),
        ("[folders]\noutput_dir = \"/\"\n", "outside the GUI's roots"),
        ("[folders]\noutput_dir = \"../elsewhere\"\n", "outside the GUI's roots"),
    ] {
        let (status, resp) = s.post("/api/jobs", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {resp}");
        assert!(resp["error"].as_str().unwrap().contains(reason), "{body}: {resp}");
    }
    let (_, list) = s.get("/api/jobs").await;
    assert_eq!(list["jobs"], Value::Array(vec![]), "nothing queued");
    // Ids that are not job ids are not found (no path tricks), and actions are POST only.
    for uri in ["/api/jobs/..", "/api/jobs/%2e%2e", "/api/jobs/000001", "/api/jobs/1x"] {
        assert_eq!(s.get(uri).await.0, StatusCode::NOT_FOUND, "{uri}");
    }
    let get_stop = s.send(request("GET", "/api/jobs/000001/stop").body(Body::empty()).unwrap()).await;
    assert_eq!(get_stop.status(), StatusCode::METHOD_NOT_ALLOWED);
    let cross_site = request("POST", "/api/jobs").header(header::ORIGIN, "https://evil.example");
    let resp = s.send(cross_site.body(Body::from(config("x"))).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

/// SD3's CLIP-G file (`model.clip_g`) is a path like the others: outside the roots it is refused,
/// relative it is taken from the first root, and the job's snapshot names the absolute file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd3_text_encoder_files_stay_inside_the_roots() {
    let s = setup(Duration::from_secs(60));
    for clip_g in ["/etc/clip_g.safetensors", "../clip_g.safetensors"] {
        let body = format!("{}[model]\nclip_g = \"{clip_g}\"\n", config("sd3"));
        let (status, resp) = s.post("/api/jobs", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {resp}");
        let message = resp["error"].as_str().unwrap();
        assert!(message.starts_with("model.clip_g = ") && message.contains("outside the GUI's roots"), "{message}");
    }
    assert!(s.jobs.list().0.is_empty(), "nothing queued");
    let body = format!("{}[model]\nclip_g = \"te/clip_g.safetensors\"\n", config("sd3"));
    let (status, job) = s.post("/api/jobs", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let snapshot = std::fs::read_to_string(s.jobs.dir().join(job["id"].as_str().unwrap()).join("config.toml")).unwrap();
    let written = lorakit_train::TrainConfig::from_toml_str(&snapshot, &[]).unwrap();
    let root = s.root.path().canonicalize().unwrap();
    assert_eq!(written.model.clip_g, Some(root.join("te/clip_g.safetensors")), "{snapshot}");
}

/// A job folder as an earlier server left it (snapshots hold absolute paths).
fn write_record(state: &Path, output: &Path, id: &str, json: &str) {
    let dir = state.join("jobs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("job.json"), json).unwrap();
    let snapshot = format!("[folders]\noutput_dir = \"{}\"\noutput_name = \"old\"\n", output.display());
    std::fs::write(dir.join("config.toml"), snapshot).unwrap();
}

fn running_record(id: &str, pid: u32, start: Option<u64>) -> String {
    serde_json::json!({
        "id": id, "kind": "train", "created": 1, "status": "running", "started": 1,
        "pid": pid, "process_start": start,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_dead_jobs_are_interrupted_and_live_ones_adopted() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("output")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let output = root.path().canonicalize().unwrap().join("output");
    // A process that has exited (and been reaped): its pid is gone.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    write_record(state.path(), &output, "000001", &running_record("000001", gone.id(), None));
    // A pid that now belongs to another process (this test): the start time differs.
    let me = std::process::id();
    let my_start = lorakit_gui::jobs::process_start_time(me);
    write_record(state.path(), &output, "000002", &running_record("000002", me, my_start.map(|s| s + 1).or(Some(1))));
    write_record(state.path(), &output, "000003", "{ not json");
    // A job an earlier server started that still runs, in its own group like the real ones.
    let mut live = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep").arg("300").process_group(0).spawn().unwrap()
    };
    let live_start = lorakit_gui::jobs::process_start_time(live.id());
    write_record(state.path(), &output, "000004", &running_record("000004", live.id(), live_start));

    let (s, notes) = start(root, state, Duration::from_secs(60));
    assert!(notes.iter().any(|n| n.starts_with("job 000003: skipped")), "{notes:?}");
    for id in ["000001", "000002"] {
        let job = s.job(id).await;
        assert_eq!(status_name(&job), "interrupted", "{job:?}");
        assert!(job.error.as_deref().unwrap().contains("ended while no lorakit gui was watching"), "{job:?}");
    }
    let (_, list) = s.get("/api/jobs").await;
    assert_eq!(list["skipped"][0]["id"], "000003", "{list}");
    assert!(list["skipped"][0]["error"].as_str().unwrap().contains("not a job record"), "{list}");
    // The adopted job holds the queue until it ends; new ids continue after the highest.
    assert_eq!(status_name(&s.job("000004").await), "running");
    let queued = s.submit("after-restart").await;
    assert_eq!(queued, "000005");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_name(&s.job(&queued).await), "queued", "waits for the adopted job");
    let (status, body) = s.post("/api/jobs/000004/kill", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let adopted = s.wait_status("000004", "stopped").await;
    assert_eq!(adopted.exit_code, None, "not our child: its exit code is unknowable");
    assert_eq!(adopted.progress.map(|p| p.phase).as_deref(), Some("stopped"));
    s.wait_status(&queued, "done").await;
    let _ = live.wait();
    // An interrupted job resumes (here from scratch: it left no state).
    let (status, resumed) = s.post("/api/jobs/000001/resume", "").await;
    assert_eq!(status, StatusCode::CREATED, "{resumed}");
    assert_eq!(resumed["resume_state"], Value::Null);
    s.wait_status(resumed["id"].as_str().unwrap(), "done").await;
    drop(s.state);
}

/// `(id, data)` of the output events, and the name of the `end` event's status.
fn parse_events(body: &str) -> (Vec<(u64, String)>, Option<String>) {
    let mut lines = Vec::new();
    let mut end = None;
    for block in body.split("\n\n") {
        let (mut id, mut event, mut data) = (None, None, None);
        for field in block.lines() {
            if let Some(v) = field.strip_prefix("id: ") {
                id = v.parse::<u64>().ok();
            } else if let Some(v) = field.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else if let Some(v) = field.strip_prefix("data: ") {
                data = Some(v.to_string());
            }
        }
        match (event.as_deref(), id, data) {
            (None, Some(id), Some(data)) => lines.push((id, data)),
            (Some("end"), _, data) => end = data,
            _ => {}
        }
    }
    (lines, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_at_last_event_id() {
    let s = setup(Duration::from_secs(60));
    let id = s.submit("chatty").await;
    // Read while it runs: the stream ends after the job does, with every line once.
    let resp = s.send(request("GET", &format!("/api/jobs/{id}/events")).body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let (events, end) = parse_events(&text(resp).await);
    let data: Vec<&str> = events.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        data,
        [
            "fake trainer: chatty",
            "line 1 of chatty",
            "line 2 of chatty",
            "line 3 of chatty",
            "line 4 of chatty",
            "line 5 of chatty",
            "done: 5 lines"
        ]
    );
    assert_eq!(end.as_deref(), Some("done"));
    // Each id is the byte offset after its line.
    let log = std::fs::read_to_string(s.jobs.dir().join(&id).join("output.log")).unwrap();
    assert_eq!(events.last().unwrap().0, log.len() as u64);
    assert_eq!(&log[events[1].0 as usize..events[2].0 as usize], "line 2 of chatty\n");
    // A reconnect with the id of "line 2" goes on at "line 3".
    let resume = request("GET", &format!("/api/jobs/{id}/events")).header("last-event-id", events[2].0.to_string());
    let (again, end) = parse_events(&text(s.send(resume.body(Body::empty()).unwrap()).await).await);
    assert_eq!(again, events[3..].to_vec());
    assert_eq!(end.as_deref(), Some("done"));
    // Past the end (or garbage): nothing more, just the end.
    let past = request("GET", &format!("/api/jobs/{id}/events")).header("last-event-id", "999999");
    let (none, end) = parse_events(&text(s.send(past.body(Body::empty()).unwrap()).await).await);
    assert!(none.is_empty() && end.as_deref() == Some("done"));
    // A running job's stream ends when the server shuts down (a graceful shutdown would
    // otherwise wait for every open browser tab); the job itself keeps running.
    let running = s.submit("stubborn").await;
    s.wait_status(&running, "running").await;
    let app = s.app.clone();
    let uri = format!("/api/jobs/{running}/events");
    let reader = tokio::spawn(async move {
        text(app.oneshot(request("GET", &uri).body(Body::empty()).unwrap()).await.unwrap()).await
    });
    s.wait_output(&running, "ready").await;
    assert_eq!(s.jobs.close().as_deref(), Some(running.as_str()), "the job left running");
    let body = tokio::time::timeout(PATIENCE, reader).await.expect("the stream ends").unwrap();
    assert!(!body.contains("event: end"), "{body}");
    assert_eq!(status_name(&s.job(&running).await), "running");
    s.post(&format!("/api/jobs/{running}/kill"), "").await;
    s.wait_status(&running, "stopped").await;
}

/// A resize job from `input` to `output` (absolute), built as the tools page's routes build it.
fn resize_job(input: &Path, output: &Path) -> CommandJob {
    CommandJob {
        kind: CommandKind::Resize,
        args: vec![
            CommandArg::Input { flag: None, path: input.to_path_buf(), weight: None },
            CommandArg::Output { flag: None, path: output.to_path_buf() },
            CommandArg::Text("--rank".into()),
            CommandArg::Text("4".into()),
        ],
        summary: "resize".into(),
        request: serde_json::json!({ "rank": 4 }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_jobs_share_the_queue_and_show_their_last_line() {
    let s = setup(Duration::from_secs(60));
    let input = s.output().join("in.safetensors");
    std::fs::write(&input, "weights").unwrap();
    let training = s.submit("first").await;
    let job = s.jobs.submit_command(resize_job(&input, &s.output().join("small.safetensors"))).unwrap();
    assert_eq!((job.kind.as_str(), job.status), ("resize", lorakit_gui::jobs::Status::Queued));
    let done = s.wait_status(&job.id, "done").await;
    assert_eq!(s.order()[..2], ["start first", "end first"], "after the training before it");
    s.wait_status(&training, "done").await;
    assert_eq!(std::fs::read_to_string(s.output().join("small.safetensors")).unwrap(), "weights");
    let calls = std::fs::read_to_string(s.output().join("calls.txt")).unwrap();
    let expected = format!("resize {} {} --rank 4\n", input.display(), s.output().join("small.safetensors").display());
    assert_eq!(calls, expected);
    let p = done.progress.expect("final progress");
    assert_eq!(p.phase, "done");
    assert!(p.line.as_deref().unwrap().starts_with("resized 2 modules"), "{p:?}");
    // The output, as the browser addresses it.
    let (_, body) = s.get(&format!("/api/jobs/{}", job.id)).await;
    assert_eq!(body["files"], serde_json::json!([{ "root": 0, "path": "output/small.safetensors" }]), "{body}");
    let (_, request) = s.get(&format!("/api/jobs/{}/command", job.id)).await;
    assert_eq!(request, serde_json::json!({ "kind": "resize", "request": { "rank": 4 } }));
    // Training-only actions are refused with the reason; a command job has no samples.
    let (status, body) = s.post(&format!("/api/jobs/{}/resume", job.id), "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("only trainings resume"), "{body}");
    let (status, body) = s.get(&format!("/api/jobs/{}/samples", job.id)).await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!([])));
    let (status, _) = s.get(&format!("/api/jobs/{}/config", job.id)).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_job_fails_with_its_cause_and_stops_on_request() {
    let s = setup(Duration::from_secs(60));
    let input = s.output().join("in.safetensors");
    std::fs::write(&input, "weights").unwrap();
    let failing = s.jobs.submit_command(resize_job(&input, &s.output().join("fail.safetensors"))).unwrap();
    let slow = s.jobs.submit_command(resize_job(&input, &s.output().join("slow.safetensors"))).unwrap();
    let failed = s.wait_status(&failing.id, "failed").await;
    assert_eq!(failed.exit_code, Some(1));
    assert_eq!(
        failed.error.as_deref(),
        Some(format!("error: {}: not a LoRA file (no lora_down/lora_up pairs)", input.display()).as_str())
    );
    s.wait_status(&slow.id, "running").await;
    s.wait_output(&slow.id, "ready").await;
    let running = s.job(&slow.id).await;
    let p = running.progress.unwrap();
    assert_eq!((p.phase.as_str(), p.line.as_deref()), ("resizing", Some("ready")));
    let (status, body) = s.post(&format!("/api/jobs/{}/kill", slow.id), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stopped = s.wait_status(&slow.id, "stopped").await;
    assert_eq!(stopped.signal, Some(libc::SIGKILL));
    assert!(!s.output().join("slow.safetensors").exists());
}

#[test]
fn command_jobs_are_refused_outside_the_roots_or_onto_an_input() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
    let (jobs, _) = Jobs::open(state.path(), roots, fake_options(Duration::from_secs(1))).unwrap();
    let base = root.path().canonicalize().unwrap();
    let input = base.join("in.safetensors");
    std::fs::write(&input, "weights").unwrap();
    let foreign = outside.path().join("x.safetensors");
    std::fs::write(&foreign, "weights").unwrap();
    for (job, reason) in [
        (resize_job(&foreign, &base.join("out.safetensors")), "outside the GUI's roots"),
        (resize_job(&input, &outside.path().join("out.safetensors")), "outside the GUI's roots"),
        (resize_job(&input, &base.join("..").join("out.safetensors")), "outside the GUI's roots"),
        (resize_job(&input, &input), "this is also an input"),
        (resize_job(&input, &base), "a folder"),
        (resize_job(&base.join("missing.safetensors"), &base.join("out.safetensors")), "cannot be read"),
    ] {
        let e = jobs.submit_command(job.clone()).unwrap_err().to_string();
        assert!(e.contains(reason), "{job:?}: {e}");
    }
    assert!(jobs.list().0.is_empty(), "nothing queued");
}

fn ids(list: &Value) -> Vec<String> {
    list["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_move_and_the_order_survives_a_restart() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("output")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
    // No runner: the jobs stay queued while they are moved.
    let (jobs, _) = Jobs::open(state.path(), roots.clone(), fake_options(Duration::from_secs(60))).unwrap();
    let app = router(AppState::new(roots, TOKEN.into(), PORT, vec![]).unwrap().with_jobs(jobs.clone()));
    let s = Setup { root, state, jobs, app };
    let a = s.submit("a").await;
    let b = s.submit("b").await;
    let c = s.submit("c").await;
    let (status, body) = s.post(&format!("/api/jobs/{c}/move"), r#"{"by": -1}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = s.get("/api/jobs").await;
    assert_eq!(ids(&list), [a.clone(), c.clone(), b.clone()]);
    s.post(&format!("/api/jobs/{c}/move"), r#"{"by": -1}"#).await;
    for (id, by, reason) in [(&c, -1, "already first"), (&b, 1, "already last"), (&a, 2, "one place at a time")] {
        let (status, body) = s.post(&format!("/api/jobs/{id}/move"), &format!(r#"{{"by": {by}}}"#)).await;
        assert!(status.is_client_error(), "{id} by {by}: {body}");
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
    }
    // A restart reads the stored positions back, and runs the jobs in that order.
    let Setup { root, state, .. } = s;
    let (s, _) = start(root, state, Duration::from_secs(60));
    let (_, list) = s.get("/api/jobs").await;
    assert_eq!(ids(&list), [c.clone(), a.clone(), b.clone()]);
    s.wait_status(&b, "done").await;
    assert_eq!(s.order(), ["start c", "end c", "start a", "end a", "start b", "end b"]);
    // Finished jobs do not move.
    let (status, body) = s.post(&format!("/api/jobs/{a}/move"), r#"{"by": 1}"#).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("only queued jobs move"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_deleted_with_their_folder_but_not_their_outputs() {
    let s = setup(Duration::from_secs(60));
    let input = s.output().join("in.safetensors");
    std::fs::write(&input, "weights").unwrap();
    let resize = s.jobs.submit_command(resize_job(&input, &s.output().join("kept.safetensors"))).unwrap();
    s.wait_status(&resize.id, "done").await;
    let blocker = s.submit("stubborn").await;
    let waiting = s.submit("waiting").await;
    s.wait_status(&blocker, "running").await;
    for (id, reason) in [(&blocker, "is running: stop it first"), (&waiting, "is queued: cancel it first")] {
        let (status, body) = s.post(&format!("/api/jobs/{id}/delete"), "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
        assert!(s.jobs.dir().join(id.as_str()).is_dir());
    }
    let (status, body) = s.post(&format!("/api/jobs/{}/delete", resize.id), "").await;
    assert_eq!((status, &body["deleted"]), (StatusCode::OK, &Value::from(resize.id.clone())), "{body}");
    assert!(!s.jobs.dir().join(&resize.id).exists(), "the job folder is gone");
    assert!(s.output().join("kept.safetensors").is_file(), "what it wrote stays");
    assert!(input.is_file());
    assert_eq!(s.get(&format!("/api/jobs/{}", resize.id)).await.0, StatusCode::NOT_FOUND);
    let (status, _) = s.post("/api/jobs/999999/delete", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.post(&format!("/api/jobs/{blocker}/kill"), "").await;
    s.wait_status(&waiting, "done").await;
}
