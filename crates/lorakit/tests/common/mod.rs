//! Helpers shared by the CLI tests: running the binary with a deadline (so a hang fails the
//! test instead of stalling the suite) and making special files.

#![allow(dead_code)] // each test file uses a part

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A path in the repository.
pub fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// A `2_chessboard` DreamBooth folder under `dir/data` with the first `n` bundled chessboard
/// images and their captions; returns `dir/data`.
pub fn chessboard_data(dir: &Path, n: usize) -> std::path::PathBuf {
    let data = dir.join("data/2_chessboard");
    std::fs::create_dir_all(&data).unwrap();
    for i in 1..=n {
        let name = format!("left{i:02}");
        let src = repo(&format!("examples/dataset/img/8_chessboard/{name}"));
        std::fs::copy(src.with_extension("jpg"), data.join(format!("{name}.jpg"))).unwrap();
        std::fs::copy(src.with_extension("txt"), data.join(format!("{name}.txt"))).unwrap();
    }
    dir.join("data")
}

/// Runs the lorakit binary with `args` to completion.
pub fn lorakit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

/// A command's stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `cmd` to completion, or kills it and panics after `seconds`.
pub fn output_within(mut cmd: Command, seconds: u64) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start lorakit");
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).ok();
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut b).ok();
        b
    });
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("lorakit did not finish within {seconds} s (it hangs)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

/// Creates a FIFO (named pipe) at `path` with the system's `mkfifo`.
pub fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Copies the LoRA `src` to `dst` with the first `modules` modules' up weights poisoned: one
/// NaN and one +Inf each. Returns the poisoned module names, in name order.
pub fn poisoned_lora(src: &Path, dst: &Path, modules: usize) -> Vec<String> {
    use lorakit_lora::safetensors_file::{write_lora, LoraFile, Precision, Tensor};
    let file = LoraFile::open(src).unwrap();
    let ups: Vec<String> = file.tensor_names().filter(|n| n.ends_with(".lora_up.weight")).map(String::from).collect();
    let poisoned: Vec<String> = ups.iter().take(modules).cloned().collect();
    let mut tensors = std::collections::BTreeMap::new();
    for name in file.tensor_names() {
        let mut data = file.tensor_f32(name).unwrap();
        if poisoned.iter().any(|p| p == name) {
            data[0] = f32::NAN;
            *data.last_mut().unwrap() = f32::INFINITY;
        }
        tensors.insert(name.to_string(), Tensor::new(file.info(name).unwrap().shape.clone(), data));
    }
    write_lora(dst, &tensors, file.metadata(), Precision::F32).unwrap();
    poisoned.iter().map(|n| n.trim_end_matches(".lora_up.weight").to_string()).collect()
}

/// A temporary file named as an interrupted lorakit write by a process that has ended, in
/// `dir`; returns its path.
pub fn abandoned_temp_file(dir: &Path) -> std::path::PathBuf {
    let mut child = Command::new("true").spawn().expect("run true");
    let pid = child.id();
    child.wait().unwrap();
    let path = dir.join(format!(".lorakit-tmp-{pid}-Ab12Cd.tmp"));
    std::fs::write(&path, b"half a file").unwrap();
    path
}
