//! `lorakit inspect` and `lorakit resize` as a user runs them, on the LoRA that
//! sd-scripts' own network code wrote and on sd-scripts' resize of it.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd-scripts/lora").join(name)
}

fn lorakit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

fn inspect_json(path: &Path) -> Value {
    let out = lorakit(&["inspect".as_ref(), path.as_os_str(), "--json".as_ref()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_reports_the_sd_scripts_fixture() {
    let r = inspect_json(&fixture("sd15-r8-fp32.safetensors"));
    let f = &r[0];
    assert_eq!(f["format"], "kohya LoRA/LoCon");
    assert_eq!(f["base_model"], "SD1.x");
    assert_eq!(f["modules_per_component"]["TE"], 72);
    assert_eq!(f["modules_per_component"]["UNet"], 192);
    assert_eq!(f["ranks"]["8"], 264);
    assert_eq!(f["alphas"]["4"], 264);
    let modules = f["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 264);
    for m in modules {
        assert!(m["name"].is_string() && m["rank"] == 8 && m["alpha"] == 4.0);
        assert!(m["norm"].as_f64().unwrap() > 0.0);
    }
    let blocks: Vec<&str> = f["blocks"].as_array().unwrap().iter().map(|b| b["block"].as_str().unwrap()).collect();
    assert_eq!(blocks.first(), Some(&"TE"));
    assert!(blocks.contains(&"IN01") && blocks.contains(&"M00") && blocks.contains(&"OUT11"));

    // Two files: one table, a column per file.
    let out = lorakit(&[
        "inspect".as_ref(),
        fixture("sd15-r8-fp32.safetensors").as_os_str(),
        fixture("sd15-r8-fp32.resized-sv_fro-0.9.safetensors").as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().find(|l| l.trim_start().starts_with("block")).expect("block table");
    assert!(header.contains("sd15-r8-fp32.safetensors") && header.contains("resized-sv_fro-0.9"), "{header}");
    assert!(text.contains("ranks       2 ×53, 3 ×53, 4 ×53, 6 ×53, 8 ×52"), "{text}");
}

#[test]
fn resize_matches_sd_scripts_rank_for_rank() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("resized.safetensors");
    let out = lorakit(&[
        "resize".as_ref(),
        fixture("sd15-r8-fp32.safetensors").as_os_str(),
        out_path.as_os_str(),
        "--rank".as_ref(),
        "8".as_ref(),
        "--dynamic".as_ref(),
        "sv-fro".as_ref(),
        "--param".as_ref(),
        "0.9".as_ref(),
        "--verbose".as_ref(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The verbose report is line for line sd-scripts' own.
    let want = std::fs::read_to_string(fixture("sd15-r8-fp32.resized-sv_fro-0.9.report.txt")).unwrap();
    let want: Vec<&str> = want.lines().filter(|l| !l.contains("%|") && !l.trim().is_empty()).collect();
    let got = String::from_utf8_lossy(&out.stdout);
    let got: Vec<&str> = got.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(got, want);

    let ours = inspect_json(&out_path);
    let theirs = inspect_json(&fixture("sd15-r8-fp32.resized-sv_fro-0.9.safetensors"));
    let by_name = |v: &Value| -> Vec<(String, u64, f64)> {
        let mut m: Vec<_> = v[0]["modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (m["name"].as_str().unwrap().to_owned(), m["rank"].as_u64().unwrap(), m["alpha"].as_f64().unwrap())
            })
            .collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        m
    };
    assert_eq!(by_name(&ours), by_name(&theirs));
    let meta = &ours[0]["metadata"];
    assert_eq!(meta["network_dim"], theirs[0]["metadata"]["network_dim"]);
    assert_eq!(meta["training_comment"], theirs[0]["metadata"]["training_comment"]);
    // Fresh sshs hashes were written (and differ from the input's).
    let input = inspect_json(&fixture("sd15-r8-fp32.safetensors"));
    assert!(meta["sshs_model_hash"].as_str().unwrap().len() == 64);
    assert_ne!(meta["sshs_model_hash"], input[0]["metadata"]["sshs_model_hash"]);

    // fp16 output keeps the choices and halves the size.
    let half = dir.path().join("half.safetensors");
    let out = lorakit(&[
        "resize".as_ref(),
        fixture("sd15-r8-fp32.safetensors").as_os_str(),
        half.as_os_str(),
        "--rank".as_ref(),
        "4".as_ref(),
        "--precision".as_ref(),
        "fp16".as_ref(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let h = inspect_json(&half);
    assert_eq!(h[0]["ranks"]["4"], 264);
    assert_eq!(h[0]["dtypes"]["F16"], 792);
}

#[test]
fn bad_lora_inputs_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(fixture("sd15-r8-fp32.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let huge_header = dir.path().join("huge.safetensors");
    std::fs::write(&huge_header, [&1_000_000u64.to_le_bytes()[..], b"{}"].concat()).unwrap();
    let checkpoint = dir.path().join("model.safetensors");
    let header =
        br#"{"model.diffusion_model.input_blocks.0.0.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut ckpt = (header.len() as u64).to_le_bytes().to_vec();
    ckpt.extend_from_slice(header);
    ckpt.extend_from_slice(&[0, 0, 0, 0]);
    std::fs::write(&checkpoint, ckpt).unwrap();

    for (path, expect) in [
        (empty.as_path(), "empty"),
        (truncated.as_path(), "truncated.safetensors"),
        (huge_header.as_path(), "huge.safetensors"),
        (dir.path(), "directory"),
    ] {
        let out = lorakit(&["inspect".as_ref(), path.as_os_str()]);
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect) && !err.contains("panicked"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let out = lorakit(&["inspect".as_ref(), checkpoint.as_os_str()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("full model checkpoint"));
    let out = lorakit(&[
        "resize".as_ref(),
        checkpoint.as_os_str(),
        dir.path().join("x.safetensors").as_os_str(),
        "--rank".as_ref(),
        "4".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("full model checkpoint"));

    // Parameter ranges as the guide states them.
    let fx = fixture("sd15-r8-fp32.safetensors");
    let target = dir.path().join("y.safetensors");
    for (method, param) in [("sv-ratio", "1.5"), ("sv-fro", "1.2"), ("sv-cumulative", "0")] {
        let out = lorakit(&[
            "resize".as_ref(),
            fx.as_os_str(),
            target.as_os_str(),
            "--rank".as_ref(),
            "8".as_ref(),
            "--dynamic".as_ref(),
            method.as_ref(),
            "--param".as_ref(),
            param.as_ref(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{method} {param}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--param"), "{method}");
        assert!(!target.exists());
    }
    let copy = dir.path().join("in.safetensors");
    std::fs::copy(&fx, &copy).unwrap();
    let out = lorakit(&["resize".as_ref(), copy.as_os_str(), copy.as_os_str(), "--rank".as_ref(), "4".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same file"));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&fx).unwrap(), "input untouched");
}

#[test]
fn inspect_labels_peft_blocks_like_kohya_ones() {
    let dir = tempfile::tempdir().unwrap();
    let peft = dir.path().join("peft.safetensors");
    let fx = fixture("sd15-r8-fp32.safetensors");
    let out = lorakit(&["convert".as_ref(), fx.as_os_str(), peft.as_os_str(), "--to".as_ref(), "peft".as_ref()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (inspect_json(&fx), inspect_json(&peft));
    assert_eq!(b[0]["format"], "PEFT/diffusers LoRA");
    let blocks = |v: &Value| -> Vec<(String, u64, f64)> {
        v[0]["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["block"].as_str().unwrap().to_owned(),
                    b["modules"].as_u64().unwrap(),
                    b["mean_norm"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (ka, kb) = (blocks(&a), blocks(&b));
    assert_eq!(ka.len(), kb.len());
    assert!(!kb.iter().any(|(name, _, _)| name == "OTHER"));
    for ((na, ma, xa), (nb, mb, xb)) in ka.iter().zip(&kb) {
        assert_eq!((na, ma), (nb, mb));
        assert!((xa - xb).abs() <= 1e-6 * xa.max(1e-9), "{na}: {xa} vs {xb}");
    }
}
