//! Florence-2 against transformers 5.25 on a tiny random `Florence2ForConditionalGeneration`
//! (tools/reference/florence2_fixture.py → tests/fixtures/reference/florence2/): pixel values,
//! vision features, image tokens, merged embeddings, encoder output, forced-decoder logits,
//! greedy and beam-search ids for the three caption tasks, and the post-processed text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_caption::florence2::processor::Task;
use lorakit_caption::florence2::{generate, Captioner, Florence2Error};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/florence2")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(root().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("reference.json")).unwrap()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn load() -> Captioner {
    Captioner::load(&root().join("model"), &Device::Cpu).unwrap()
}

fn pixels(c: &Captioner) -> Tensor {
    let image = image::open(root().join("images/photo.png")).unwrap();
    let cfg = &c.processor.image;
    Tensor::from_vec(cfg.pixel_values(&image), (1, 3, cfg.height, cfg.width), &Device::Cpu).unwrap()
}

const TASKS: [(Task, &str, &str); 3] = [
    (Task::Caption, "caption", "<CAPTION>"),
    (Task::Detailed, "detailed", "<DETAILED_CAPTION>"),
    (Task::MoreDetailed, "more_detailed", "<MORE_DETAILED_CAPTION>"),
];

#[test]
fn preprocessing_matches_the_pil_processor() {
    let c = load();
    let r = reference();
    let d = max_diff(&pixels(&c), &r["pixel_values"]);
    assert!(d < 1e-5, "pixel values differ by {d}");
}

#[test]
fn vision_tower_and_projector_match_transformers() {
    let c = load();
    let r = reference();
    let px = &r["pixel_values"];
    let vis = c.model.vision.forward(px).unwrap();
    let d = max_diff(&vis, &r["vision_features"]);
    assert!(d < 1e-4, "vision features differ by {d}");
    let feats = c.model.image_features(px).unwrap();
    let d = max_diff(&feats, &r["image_features"]);
    assert!(d < 1e-4, "image features differ by {d}");
}

#[test]
fn prompts_embeddings_and_encoder_match_transformers() {
    let c = load();
    let r = reference();
    let feats = c.model.image_features(&r["pixel_values"]).unwrap();
    for (task, name, _) in TASKS {
        let ids = c.processor.input_ids(task).unwrap();
        let want: Vec<u32> = r[&format!("input_ids_{name}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(ids, want, "{name}: prompt ids");
        let emb = c.model.merged_embeddings(&ids, &feats).unwrap();
        let d = max_diff(&emb, &r[&format!("inputs_embeds_{name}")]);
        assert!(d < 1e-4, "{name}: merged embeddings differ by {d}");
        let enc = c.model.language.encode(&emb).unwrap();
        let d = max_diff(&enc, &r[&format!("encoder_{name}")]);
        assert!(d < 1e-4, "{name}: encoder output differs by {d}");
    }
}

#[test]
fn decoder_logits_match_with_and_without_the_cache() {
    let c = load();
    let r = reference();
    let enc = &r["encoder_caption"];
    let dec = r["decoder_ids"].to_dtype(DType::U32).unwrap();
    let want = &r["logits_caption"];
    // The whole sequence at once (causal mask).
    let mut cache = c.model.language.new_cache(enc).unwrap();
    let logits = c.model.language.decode(&dec, &mut cache).unwrap();
    let d = max_diff(&logits, want);
    assert!(d < 1e-4, "forced-decoder logits differ by {d}");
    // One token at a time through the KV cache, then a two-token chunk.
    let mut cache = c.model.language.new_cache(enc).unwrap();
    let n = dec.dim(1).unwrap();
    let mut steps = Vec::new();
    for i in 0..n - 2 {
        steps.push(c.model.language.decode(&dec.narrow(1, i, 1).unwrap(), &mut cache).unwrap());
    }
    steps.push(c.model.language.decode(&dec.narrow(1, n - 2, 2).unwrap(), &mut cache).unwrap());
    let stepped = Tensor::cat(&steps, 1).unwrap();
    let d = max_diff(&stepped, want);
    assert!(d < 1e-4, "cached decoding differs by {d}");
    assert_eq!(cache.len(), n);
}

#[test]
fn greedy_and_beam_search_ids_and_text_match_generate() {
    let c = load();
    let r = reference();
    let m = meta();
    let max_new = m["max_new_tokens"].as_u64().unwrap() as usize;
    assert_eq!(c.generation.num_beams, 3);
    assert_eq!(c.generation.no_repeat_ngram_size, 3);
    let feats = c.model.image_features(&pixels(&c)).unwrap();
    let mut early = 0;
    for (task, name, token) in TASKS {
        let ids = c.processor.input_ids(task).unwrap();
        let enc = c.model.language.encode(&c.model.merged_embeddings(&ids, &feats).unwrap()).unwrap();
        for (kind, beams) in [("greedy", 1), ("beam", 3)] {
            let mut cfg = c.generation.clone();
            cfg.num_beams = beams;
            let got = generate::generate(&c.model.language, &enc, &cfg, max_new).unwrap();
            let want: Vec<u32> = r[&format!("{kind}_{name}")]
                .flatten_all()
                .unwrap()
                .to_vec1::<i64>()
                .unwrap()
                .iter()
                .map(|&v| v as u32)
                .collect();
            assert_eq!(got, want, "{name} {kind}: token ids");
            if got.len() < max_new + 1 {
                early += 1;
            }
            let text = c.processor.caption(&got).unwrap();
            assert_eq!(text, m["tasks"][token][kind].as_str().unwrap(), "{name} {kind}: text");
        }
    }
    // The fixture has hypotheses that end on their own before the limit (EOS, early stopping).
    assert!(early >= 2, "only {early} generations ended before max_new_tokens");
}

#[test]
fn a_folder_missing_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "generation_config.json"] {
        std::fs::copy(root().join("model").join(f), dir.path().join(f)).unwrap();
    }
    match Captioner::load(dir.path(), &Device::Cpu) {
        Err(e @ Florence2Error::MissingFile { file: "tokenizer.json", .. }) => {
            assert!(e.to_string().contains("tokenizer.json"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("loaded without tokenizer.json"),
    }
    // A truncated weights file is named too.
    std::fs::copy(root().join("model/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let e = Captioner::load(dir.path(), &Device::Cpu).err().expect("garbage weights loaded");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn caption_file_gives_the_processor_text_and_names_a_bad_image() {
    let c = load();
    let m = meta();
    let max_new = m["max_new_tokens"].as_u64().unwrap() as usize;
    let text = c.caption_file(&root().join("images/photo.png"), Task::Detailed, 3, max_new).unwrap();
    assert_eq!(text, m["tasks"]["<DETAILED_CAPTION>"]["beam"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG not really").unwrap();
    let e = c.caption_file(&bad, Task::Caption, 3, max_new).unwrap_err();
    assert!(matches!(e, Florence2Error::Image { .. }) && e.to_string().contains("broken.png"), "{e}");
}
