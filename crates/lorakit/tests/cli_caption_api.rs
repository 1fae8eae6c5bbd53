//! `lorakit caption api` end to end against a mock OpenAI server on 127.0.0.1: captions
//! written, the key never printed (even on errors), dry runs, and a run killed with SIGKILL
//! that the next run finishes — every image captioned exactly once, no partial file.

use crate::common;
#[path = "../../lorakit-caption/tests/mock_openai/mod.rs"]
mod mock_openai;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{output_within, text};
use mock_openai::{MockServer, Response};

const KEY: &str = "sk-lorakit-test-Q3v8WmZp2Kx";
const KEY_VAR: &str = "LORAKIT_TEST_CAPTION_KEY";

fn images(dir: &Path, n: usize) {
    for i in 0..n {
        let img = image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([(x * 5) as u8, (y * 7) as u8, (i * 20) as u8]));
        img.save(dir.join(format!("img{i:02}.png"))).unwrap();
    }
}

fn caption_cmd(server: &MockServer, dir: &Path, extra: &[&str]) -> Command {
    command(&server.base, "Describe {name}.", dir, extra)
}

fn command(api: &str, prompt: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lorakit"));
    cmd.args(["caption", "api"]).arg(dir).args(["--api", api, "--api-model", "mock-vlm"]);
    cmd.args(["--api-key-env", KEY_VAR, "--prompt", prompt]).args(extra);
    cmd.env(KEY_VAR, KEY).env_remove("HTTP_PROXY").env_remove("http_proxy").env_remove("ALL_PROXY");
    cmd
}

/// The mock's caption for a prompt `Describe NAME.`.
fn answer_for(prompt: &str) -> String {
    format!("A photo of {}.", prompt.trim_start_matches("Describe ").trim_end_matches('.'))
}

#[test]
fn captions_are_written_and_the_key_is_sent_but_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path(), 3);
    let server =
        MockServer::start(|r, _| Response::caption(&format!("Here is the caption:\n\"{}\"", answer_for(&r.prompt()))));
    let out = output_within(caption_cmd(&server, dir.path(), &["--trigger", "lkstar"]), 60);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for i in 0..3 {
        let caption = std::fs::read_to_string(dir.path().join(format!("img{i:02}.txt"))).unwrap();
        assert_eq!(caption, format!("lkstar, A photo of img{i:02}.\n"));
    }
    assert!(all.contains("3 captions written, 0 skipped, 0 failed"), "{all}");
    assert!(all.contains("tokens: 300 prompt + 30 completion = 330 in all"), "{all}");
    assert!(all.contains(&format!("key from ${KEY_VAR}")), "{all}");
    assert!(!all.contains(KEY), "the key was printed: {all}");
    assert!(server.requests().iter().all(|r| r.header("authorization") == Some(&format!("Bearer {KEY}"))));

    // Again: everything is captioned, nothing is sent.
    let out = output_within(caption_cmd(&server, dir.path(), &[]), 60);
    assert!(text(&out).contains("0 captions written, 3 skipped"), "{}", text(&out));
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn errors_and_dry_runs_never_print_the_key() {
    let dir = tempfile::tempdir().unwrap();
    images(dir.path(), 2);
    // A server that quotes the key it refuses, as OpenAI does.
    let refusing = MockServer::start(|r, _| {
        let auth = r.header("authorization").unwrap_or_default().to_string();
        Response::raw(401, &format!(r#"{{"error":{{"message":"Incorrect API key provided: {auth}"}}}}"#))
    });
    let out = output_within(caption_cmd(&refusing, dir.path(), &[]), 60);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("refused the key") && all.contains("Bearer ***"), "{all}");
    assert!(all.contains("2 images not captioned"), "{all}");
    assert!(!all.contains(KEY), "the key was printed: {all}");

    // An unreachable server: one clear message with the URL, at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cmd = command(&format!("http://127.0.0.1:{port}/v1/"), "Describe {name}.", dir.path(), &[]);
    let start = Instant::now();
    let out = output_within(cmd, 60);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains(&format!("http://127.0.0.1:{port}/v1/chat/completions")) && all.contains("server running"),
        "{all}"
    );
    assert!(start.elapsed() < Duration::from_secs(10), "it did not fail fast");
    assert!(!all.contains(KEY), "the key was printed: {all}");

    // A dry run prints captions, writes nothing, and never the key.
    let answering = MockServer::start(|r, _| Response::caption(&answer_for(&r.prompt())));
    let out = output_within(caption_cmd(&answering, dir.path(), &["--dry-run"]), 60);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("img00.png: A photo of img00.") && all.contains("2 captions would be written"), "{all}");
    assert!(!dir.path().join("img00.txt").exists());
    assert!(!all.contains(KEY), "the key was printed: {all}");

    // A typo in the prompt stops before any request.
    let out = output_within(command(&answering.base, "Tags: {tag}", dir.path(), &[]), 60);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("{tag}"), "{}", text(&out));
    assert_eq!(answering.requests().len(), 2);
}

#[test]
fn a_run_killed_with_sigkill_is_finished_by_the_next_with_each_image_captioned_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = 16;
    images(dir.path(), n);
    let server =
        MockServer::start(|r, _| Response::caption(&answer_for(&r.prompt())).after(Duration::from_millis(250)));
    let captions = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".txt"))
            .collect();
        names.sort();
        names
    };

    let mut child = caption_cmd(&server, dir.path(), &["--concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while captions(dir.path()).len() < 4 {
        assert!(Instant::now() < deadline, "no captions written");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let first = captions(dir.path());
    assert!(first.len() < n, "the run finished before it was killed");
    let sent_first = server.requests().len();

    let out = output_within(caption_cmd(&server, dir.path(), &["--concurrency", "2"]), 120);
    assert!(out.status.success(), "{}", text(&out));
    let names: Vec<String> = (0..n).map(|i| format!("img{i:02}")).collect();
    let second: Vec<String> = server.requests()[sent_first..].iter().map(|r| r.prompt()).collect();
    for name in &names {
        let caption = std::fs::read_to_string(dir.path().join(format!("{name}.txt"))).unwrap();
        assert_eq!(caption, format!("A photo of {name}.\n"), "a partial or doubled caption");
        let done_before = first.contains(&format!("{name}.txt"));
        let asked_again = second.contains(&format!("Describe {name}."));
        assert!(
            done_before != asked_again,
            "{name}: written in the first run: {done_before}, asked again: {asked_again}"
        );
    }
    assert!(text(&out).contains(&format!("{} captions written, {} skipped, 0 failed", n - first.len(), first.len())));
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".png") && !n.ends_with(".txt"))
        .collect();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}

#[test]
fn existing_tags_are_refined_into_the_caption_with_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("5_red_star");
    std::fs::create_dir(&sub).unwrap();
    images(&sub, 1);
    std::fs::write(sub.join("img00.txt"), "1girl, red hair, smile\n").unwrap();
    let server = MockServer::start(|r, _| Response::caption(&format!("Refined: {}", r.prompt())));
    let prompt = "{folder}: {tags}";
    let out = output_within(command(&server.base, prompt, dir.path(), &["--recursive"]), 60);
    assert!(text(&out).contains("note: the prompt uses {tags}") && text(&out).contains("1 skipped"), "{}", text(&out));
    assert!(server.requests().is_empty());
    let out = output_within(command(&server.base, prompt, dir.path(), &["--recursive", "--overwrite"]), 60);
    assert!(out.status.success(), "{}", text(&out));
    let caption = std::fs::read_to_string(sub.join("img00.txt")).unwrap();
    assert_eq!(caption, "Refined: red_star: 1girl, red hair, smile\n");
}
