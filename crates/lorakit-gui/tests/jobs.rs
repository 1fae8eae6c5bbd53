//! The job queue against a fake trainer (gui-peers.md §9, layer 1): queue order, progress from
//! the run log, Stop & save, the kill after the timeout, a failure's cause with the queue going
//! on, stale pids after a restart, configs refused with the reason, and the output's event
//! stream resuming at `Last-Event-ID`. No model, no GPU: the "trainer" is a shell script that
//! reads its behaviour from `folders.output_name` in the config snapshot it is given.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use lorakit_gui::jobs::{JobRecord, Jobs, JobsOptions};
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
