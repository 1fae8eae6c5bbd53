//! `training.weighted_captions` (sd-scripts' `--weighted_captions`, spec §6.2) through the
//! training seam: lorakit's parser, tokenizer and text encoder together against sd-scripts
//! (fixture: `tools/reference/weighted_captions_fixture.py`, on the quickstart tiny model's
//! text encoder, fp32, ≤ 1e-4 relative), what the flag changes and does not, the config key, and
//! a short run with weighted captions.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use lorakit_train::data::TrainData;
use lorakit_train::kohya_import::import_sd_scripts_args;
use lorakit_train::model::{StableDiffusionModel, TrainableModel};
use lorakit_train::{TrainConfig, Trainer};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn model() -> StableDiffusionModel {
    StableDiffusionModel::load(&repo("examples/quickstart/tiny-sd15"), DType::F32, &Device::Cpu, false).unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    diff / b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-12)
}

#[test]
fn weighted_conditioning_matches_sd_scripts() {
    let dir = repo("tests/fixtures/reference/weighted_captions");
    let doc = json(&dir.join("tokens.json"));
    let captions: Vec<&str> = doc["captions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let fixture = candle_core::safetensors::load(dir.join("weighted_captions.safetensors"), &Device::Cpu).unwrap();
    let model = model();
    for c in doc["configs"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let max_tokens = c["max_token_length"].as_u64().unwrap_or(75) as usize;
        let clip_skip = c["clip_skip"].as_u64().map(|s| s as usize);
        let cond = model.encode_text_weighted(&captions, max_tokens, clip_skip, &[]).unwrap().context;
        let e = rel_err(&cond, &fixture[&format!("{name}.hidden")]);
        eprintln!("{name}: relative error {e:.2e}");
        assert!(e <= 1e-4, "{name}: {e:e}");
    }
}

#[test]
fn weights_change_the_conditioning_and_plain_captions_do_not() {
    let model = model();
    for (max_tokens, skip) in [(75, None), (150, Some(2))] {
        let plain = ["a photo of a cat sitting on a table, 1girl, solo"];
        let off = model.encode_text(&plain, max_tokens, skip, &[]).unwrap().context;
        let on = model.encode_text_weighted(&plain, max_tokens, skip, &[]).unwrap().context;
        assert_eq!(rel_err(&on, &off), 0.0, "a caption without weights is unchanged");

        // `(cat:1.5)`: the "cat" position (BOS, a, cat) is scaled by 1.5, nothing else moves.
        let weighted = model.encode_text_weighted(&["a (cat:1.5)"], max_tokens, skip, &[]).unwrap().context;
        let unweighted = model.encode_text_weighted(&["a cat"], max_tokens, skip, &[]).unwrap().context;
        assert!(rel_err(&weighted, &unweighted) > 0.1);
        let len = weighted.dim(1).unwrap();
        let mut factors = vec![1f32; len];
        factors[2] = 1.5;
        let factors = Tensor::from_vec(factors, (1, len, 1), &Device::Cpu).unwrap();
        assert_eq!(rel_err(&weighted, &unweighted.broadcast_mul(&factors).unwrap()), 0.0);
    }
    let err = model.encode_text_weighted(&["ok", "(bad:1.2.3)"], 75, None, &[]).unwrap_err().to_string();
    assert!(err.contains("(bad:1.2.3)") && err.contains("weighted_captions"), "{err}");
}

#[test]
fn config_key_and_kohya_import() {
    assert!(!TrainConfig::default().training.weighted_captions);
    let c: TrainConfig = toml::from_str("[training]\nweighted_captions = true\n").unwrap();
    assert!(c.training.weighted_captions);
    let imp = import_sd_scripts_args(vec![
        ("weighted_captions".into(), toml::Value::Boolean(true)),
        ("seed".into(), toml::Value::Integer(1)),
    ])
    .unwrap();
    assert!(imp.notes.is_empty(), "{:?}", imp.notes);
    let c: TrainConfig = toml::Value::Table(imp.table).try_into().unwrap();
    assert!(c.training.weighted_captions);
}

/// Two chessboard images with the given captions in a `1_chessboard` folder.
fn dataset(dir: &Path, captions: [&str; 2]) -> PathBuf {
    let src = repo("examples/dataset/img/8_chessboard");
    let dst = dir.join("data/1_chessboard");
    std::fs::create_dir_all(&dst).unwrap();
    let mut jpgs: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    jpgs.sort();
    for (jpg, caption) in jpgs.iter().zip(captions) {
        let to = dst.join(jpg.file_name().unwrap());
        std::fs::copy(jpg, &to).unwrap();
        std::fs::write(to.with_extension("txt"), caption).unwrap();
    }
    dir.join("data")
}

fn config(dir: &Path, data: &Path, weighted: bool) -> TrainConfig {
    let text = format!(
        r#"
[model]
pretrained_model_name_or_path = "{model}"
[folders]
output_dir = "{out}"
output_name = "tiny"
[dataset]
train_data_dir = "{data}"
resolution = "64"
min_bucket_reso = 64
max_bucket_reso = 64
bucket_reso_steps = 64
[network]
network_dim = 4
network_alpha = 2
[training]
train_batch_size = 2
max_train_steps = 3
seed = 7
weighted_captions = {weighted}
[optimizer]
learning_rate = 1e-2
[save]
save_precision = "float"
"#,
        model = repo("examples/quickstart/tiny-sd15").display(),
        out = dir.join(format!("out-{weighted}")).display(),
        data = data.display(),
    );
    TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn losses(config: TrainConfig, model: &StableDiffusionModel) -> Vec<f64> {
    let data = TrainData::load(&config).unwrap();
    let trainer = Trainer::new(config, model, data).unwrap();
    trainer.run(&AtomicBool::new(false), &mut |_| {}).unwrap().losses
}

#[test]
fn a_run_reads_caption_weights_only_when_asked() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), ["(chkbrd:1.6), board", "chkbrd, [[board]]"]);
    let on = losses(config(dir.path(), &data, true), &model);
    let off = losses(config(dir.path(), &data, false), &model);
    assert_eq!(on.len(), 3);
    assert!(on.iter().chain(&off).all(|l| l.is_finite()), "{on:?} {off:?}");
    // Same seed, images, noise and timesteps: only the conditioning differs.
    assert_ne!(on, off);

    let plain = dataset(&dir.path().join("plain"), ["chkbrd, board", "chkbrd, a board"]);
    let on = losses(config(&dir.path().join("plain"), &plain, true), &model);
    let off = losses(config(&dir.path().join("plain"), &plain, false), &model);
    assert_eq!(on, off, "captions without weights train identically");

    let bad = dataset(&dir.path().join("bad"), ["(chkbrd:1.2.3)", "chkbrd"]);
    let cfg = config(&dir.path().join("bad"), &bad, true);
    let data = TrainData::load(&cfg).unwrap();
    let err = match Trainer::new(cfg, &model, data) {
        Ok(_) => panic!("a caption weight sd-scripts cannot read must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(".jpg") && err.contains("1.2.3"), "{err}");
}
