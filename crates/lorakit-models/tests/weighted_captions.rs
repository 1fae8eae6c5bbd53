//! sd-scripts' `--weighted_captions` tokenisation and encoding for SD1 (fixture:
//! `tools/reference/weighted_captions_fixture.py` → `tests/fixtures/reference/weighted_captions/`,
//! run on the tiny text encoder of `examples/quickstart/tiny-sd15` with CLIP's real vocabulary).
//! The captions' pieces come from sd-scripts' parser (parser.json), so this checks tokenisation
//! and encoding alone; lorakit-train's test runs the whole chain with lorakit's parser.
//!
//! Ids and weights: exact. Hidden states: fp32, max |Δ| / max |reference| ≤ 1e-4.
//!
//! Also the same weights at sampling time (`encode_emphasis_pair`) against sd-scripts'
//! sample-image path (`lpw_stable_diffusion.get_weighted_text_embeddings`, which is also A1111's
//! emphasis; fixture `tools/reference/lpw_prompt_fixture.py` →
//! `tests/fixtures/reference/prompt_emphasis/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_dataset::prompt_weights::parse_prompt_attention;
use lorakit_models::clip::{
    encode_emphasis_pair, encode_prompts, encode_weighted_prompts, ClipTextConfig, ClipTextModel,
};
use lorakit_models::clip_tokenizer::{
    chunk_for_clip, chunk_weights_for_clip, sd_scripts_max_length, ClipTokenizer, CLIP_CHUNK_LEN,
};
use lorakit_models::Weights;
use lorakit_nn::gradcheck::pseudo_random;
use lorakit_nn::lora::{LoraModule, LoraSet};
use lorakit_nn::ForwardCtx;

const TOL: f64 = 1e-4;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn fixture(name: &str) -> PathBuf {
    repo("tests/fixtures/reference/weighted_captions").join(name)
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn tensors() -> HashMap<String, Tensor> {
    let path = fixture("weighted_captions.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn get<'a>(map: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    map.get(key).unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

fn model() -> ClipTextModel {
    let dir = repo("examples/quickstart/tiny-sd15/text_encoder");
    let cfg = ClipTextConfig::from_json_file(&dir.join("config.json")).unwrap();
    let weights = Weights::from_safetensors(&dir.join("model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let model = ClipTextModel::new(weights.view(""), &cfg).unwrap();
    weights.check_complete().unwrap();
    model
}

/// Every fixture caption as sd-scripts parsed it: (text, f64 weight) pieces.
fn captions() -> Vec<Vec<(String, f64)>> {
    let parsed = json(&fixture("parser.json"));
    let by_text: HashMap<&str, &serde_json::Value> =
        parsed["cases"].as_array().unwrap().iter().map(|c| (c["text"].as_str().unwrap(), &c["pieces"])).collect();
    let doc = json(&fixture("tokens.json"));
    doc["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            by_text[c.as_str().unwrap()]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let bits = u64::from_str_radix(p[2].as_str().unwrap(), 16).unwrap();
                    (p[0].as_str().unwrap().to_string(), f64::from_bits(bits))
                })
                .collect()
        })
        .collect()
}

/// (name, max_token_length, clip_skip) of every encoded configuration.
fn configs() -> Vec<(String, Option<usize>, Option<usize>)> {
    json(&fixture("tokens.json"))["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let opt = |k: &str| c[k].as_u64().map(|v| v as usize);
            (c["name"].as_str().unwrap().to_string(), opt("max_token_length"), opt("clip_skip"))
        })
        .collect()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    diff / b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-12)
}

/// Ids and weights of every caption, chunked, as (B, n, 77) tensors.
fn tokenise(
    tokenizer: &ClipTokenizer,
    captions: &[Vec<(String, f64)>],
    max_token_length: Option<usize>,
) -> (Tensor, Tensor) {
    let max_length = sd_scripts_max_length(max_token_length).unwrap();
    let pad = tokenizer.pad_id();
    let (mut ids, mut weights, mut n) = (Vec::new(), Vec::new(), 0);
    for pieces in captions {
        let (i, w, _) = tokenizer.encode_weighted_padded(pieces, max_length, pad);
        assert_eq!((i.len(), w.len()), (max_length, max_length));
        let rows = chunk_for_clip(&i, pad != ClipTokenizer::EOS, pad);
        n = rows.len();
        ids.extend(rows.iter().flatten().map(|&t| t as i64));
        weights.extend(chunk_weights_for_clip(&w).iter().flatten().copied());
    }
    let shape = (captions.len(), n, CLIP_CHUNK_LEN);
    (Tensor::from_vec(ids, shape, &Device::Cpu).unwrap(), Tensor::from_vec(weights, shape, &Device::Cpu).unwrap())
}

fn assert_same_ids_and_weights(name: &str, got: (Tensor, Tensor), ids: &Tensor, weights: &Tensor) {
    assert_eq!(got.0.dims(), ids.dims(), "{name}: ids shape");
    assert_eq!(got.0.to_vec3::<i64>().unwrap(), ids.to_vec3::<i64>().unwrap(), "{name}: ids");
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|w| w.to_bits()).collect()
    };
    assert_eq!(bits(&got.1), bits(weights), "{name}: weights");
}

#[test]
fn token_ids_and_weights_match_sd_scripts() {
    let tensors = tensors();
    let captions = captions();
    let sd1 = ClipTokenizer::new().unwrap();
    for (name, mtl, _) in configs() {
        let got = tokenise(&sd1, &captions, mtl);
        assert_same_ids_and_weights(
            &name,
            got,
            get(&tensors, &format!("{name}.ids")),
            get(&tensors, &format!("{name}.weights")),
        );
    }
    // The SD2 tokenizer (pad `!`, id 0) and its chunk fix-ups.
    let got = tokenise(&ClipTokenizer::new_sd2().unwrap(), &captions, Some(150));
    assert_same_ids_and_weights("sd2_150", got, get(&tensors, "sd2_150.ids"), get(&tensors, "sd2_150.weights"));
}

#[test]
fn weighted_hidden_states_match_sd_scripts() {
    let tensors = tensors();
    let model = model();
    let tokenizer = ClipTokenizer::new().unwrap();
    let captions = captions();
    let ctx = ForwardCtx::default();
    for (name, mtl, skip) in configs() {
        let want = get(&tensors, &format!("{name}.hidden"));
        // From sd-scripts' ids and weights: the encoding alone.
        let ids = get(&tensors, &format!("{name}.ids"));
        let weights = get(&tensors, &format!("{name}.weights"));
        let h = model.encode_chunked_weighted(ids, weights, skip, &ctx).unwrap();
        let e = rel_err(&h, want);
        eprintln!("{name}: relative error {e:.2e} (encode_chunked_weighted)");
        assert!(e <= TOL, "{name}: {e:e}");
        // From the parsed pieces: tokenisation, chunking and encoding.
        let h = encode_weighted_prompts(&model, &tokenizer, &captions, mtl, skip, &ctx).unwrap();
        let e = rel_err(&h, want);
        eprintln!("{name}: relative error {e:.2e} (encode_weighted_prompts)");
        assert!(e <= TOL, "{name}: {e:e}");
    }
}

#[test]
fn unweighted_caption_encodes_exactly_as_without_weights() {
    let model = model();
    let tokenizer = ClipTokenizer::new().unwrap();
    let ctx = ForwardCtx::default();
    let long = "many words in a long caption ".repeat(12);
    for text in ["a photo of a cat sitting on a table", long.as_str()] {
        for (mtl, skip) in [(None, None), (Some(150), Some(2))] {
            let plain = encode_prompts(&model, &tokenizer, &[text], mtl, skip, &ctx).unwrap();
            let weighted = encode_weighted_prompts(&model, &tokenizer, &[vec![(text, 1.0)]], mtl, skip, &ctx).unwrap();
            assert_eq!(rel_err(&weighted, &plain), 0.0, "{text:?} {mtl:?}");
        }
    }
    // A weight changes exactly the positions of its tokens, by exactly that factor.
    let plain = encode_prompts(&model, &tokenizer, &["a red cat"], None, None, &ctx).unwrap();
    let pieces = vec![("a ", 1.0), ("red", 1.5), (" cat", 1.0)];
    let weighted = encode_weighted_prompts(&model, &tokenizer, &[pieces], None, None, &ctx).unwrap();
    let mut factors = vec![1f32; 77];
    factors[2] = 1.5; // BOS, "a", "red", …
    let factors = Tensor::from_vec(factors, (1, 77, 1), &Device::Cpu).unwrap();
    assert_eq!(rel_err(&weighted, &plain.broadcast_mul(&factors).unwrap()), 0.0);
}

#[test]
fn text_encoder_lora_gets_the_weighted_gradient() {
    // d/dθ Σ (w ⊙ h)·R must equal d/dθ Σ h·(w ⊙ R): the weights stay in the graph.
    let model = model();
    let tensors = tensors();
    let ids = get(&tensors, "mtl150_skip2.ids");
    let weights = get(&tensors, "mtl150_skip2.weights");
    let mut set = LoraSet::new(0, &Device::Cpu).unwrap();
    for (i, t) in model.lora_targets().into_iter().enumerate() {
        let down = pseudo_random(&[4, t.in_dim], 10 + i as u64).unwrap().to_dtype(DType::F32).unwrap();
        let up = (pseudo_random(&[t.out_dim, 4], 50 + i as u64).unwrap() * 0.2).unwrap().to_dtype(DType::F32).unwrap();
        let module = LoraModule::from_weights(t.kohya_name("lora_te"), t.kind, down, up, Some(2.0), true).unwrap();
        set.insert(t.path.clone(), module);
    }
    let set = Arc::new(set);
    let ctx = ForwardCtx::with_lora(set.clone());

    let weighted = model.encode_chunked_weighted(ids, weights, Some(2), &ctx).unwrap();
    let r = pseudo_random(weighted.dims(), 3).unwrap().to_dtype(DType::F32).unwrap();
    let grads_w = (&weighted * &r).unwrap().sum_all().unwrap().backward().unwrap();

    // The same weights laid out along the stitched sequence: 1, chunk 0's 1..76, chunk 1's 1..76, 1.
    let (b, n, _) = weights.dims3().unwrap();
    let mut parts = vec![Tensor::ones((b, 1), DType::F32, &Device::Cpu).unwrap()];
    for k in 0..n {
        parts.push(weights.narrow(1, k, 1).unwrap().squeeze(1).unwrap().narrow(1, 1, 75).unwrap());
    }
    parts.push(Tensor::ones((b, 1), DType::F32, &Device::Cpu).unwrap());
    let along = Tensor::cat(&parts, 1).unwrap().unsqueeze(2).unwrap();
    let plain = model.encode_chunked(ids, Some(2), &ctx).unwrap();
    let grads_p = (&plain * r.broadcast_mul(&along).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();

    let mut checked = 0;
    for var in set.trainable_vars() {
        let (gw, gp) = (set.grad(&grads_w, &var).unwrap(), set.grad(&grads_p, &var).unwrap());
        let (Some(gw), Some(gp)) = (gw, gp) else { continue };
        assert!(gw.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        let e = rel_err(&gw, &gp);
        assert!(e <= 1e-5, "gradient differs: {e:e}");
        checked += 1;
    }
    // clip_skip 2 on 3 layers: the last layer's 6 modules (12 vars) are not run.
    assert_eq!(checked, 24, "LoRA vars with a gradient");
}

#[test]
fn mismatched_weights_are_an_error() {
    let model = model();
    let ids = Tensor::zeros((1, 1, 77), DType::U32, &Device::Cpu).unwrap();
    let weights = Tensor::ones((1, 2, 77), DType::F32, &Device::Cpu).unwrap();
    let err = model.encode_chunked_weighted(&ids, &weights, None, &ForwardCtx::default()).unwrap_err().to_string();
    assert!(err.contains("[1, 2, 77]") && err.contains("[1, 1, 77]"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Emphasis at sampling time

fn encode(
    model: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    prompt: &str,
    negative: &str,
    clip_skip: Option<usize>,
) -> (Tensor, Tensor) {
    let (p, n) = (parse_prompt_attention(prompt).unwrap(), parse_prompt_attention(negative).unwrap());
    encode_emphasis_pair(model, tokenizer, &p, &n, clip_skip, &ForwardCtx::default()).unwrap()
}

#[test]
fn emphasis_encoding_matches_sd_scripts_sample_pipeline() {
    let dir = repo("tests/fixtures/reference/prompt_emphasis");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let want = candle_core::safetensors::load(dir.join("embeddings.safetensors"), &Device::Cpu).unwrap();
    let (model, tokenizer) = (model(), ClipTokenizer::new().unwrap());
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for (i, case) in cases.iter().enumerate() {
        let clip_skip = case["clip_skip"].as_u64().map(|k| k as usize);
        let (cond, uncond) =
            encode(&model, &tokenizer, case["prompt"].as_str().unwrap(), case["negative"].as_str().unwrap(), clip_skip);
        for (what, ours) in [("cond", &cond), ("uncond", &uncond)] {
            let reference = &want[&format!("{i}.{what}")];
            assert_eq!(ours.dims(), reference.dims(), "case {i} {what}: positions");
            // The rescale divides by the mean of all states, which for this random encoder is
            // ~1e-4 of their size: the last-bit differences of two summation orders become
            // ~1e-4 of one common factor. So: the states must agree exactly up to one scalar,
            // and that scalar must be 1 within what the conditioning allows.
            let scale = (ours * reference).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
                / ours.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            let err = rel_err(&(ours * scale as f64).unwrap(), reference);
            assert!(err <= 1e-5, "case {i} {what}: relative error {err:.2e} after the common scale {scale}");
            assert!((scale - 1.0).abs() <= 1e-3, "case {i} {what}: common scale {scale}");
            let raw = rel_err(ours, reference);
            assert!(raw <= 2e-4, "case {i} {what}: relative error {raw:.2e}");
        }
    }
}

#[test]
fn emphasis_reweights_only_the_marked_tokens_before_the_rescale() {
    let (model, tokenizer) = (model(), ClipTokenizer::new().unwrap());
    let (plain, _) = encode(&model, &tokenizer, "a red cat", "", None);
    let (same, _) = encode(&model, &tokenizer, "a (red:1.0) cat", "", None);
    assert_eq!(rel_err(&same, &plain), 0.0, "weight 1.0 is no emphasis");
    let (strong, _) = encode(&model, &tokenizer, "a (red:1.5) cat", "", None);
    // Up to one common factor (the mean rescale), only position 2 ("red") changes, by 1.5.
    let ratio = (&strong / &plain).unwrap().squeeze(0).unwrap().to_dtype(DType::F64).unwrap();
    let ratio: Vec<Vec<f64>> = ratio.to_vec2().unwrap();
    let common = ratio[0][0];
    for (pos, row) in ratio.iter().enumerate() {
        let want = if pos == 2 { 1.5 * common } else { common };
        for &r in row {
            assert!((r - want).abs() <= 1e-4 * want.abs(), "position {pos}: ratio {r}, expected {want}");
        }
    }
    assert!((common - 1.0).abs() > 1e-6, "the rescale keeps the mean, so it is not 1 here");
    // The mean is kept (to rounding, measured against the states' size).
    let mean = |t: &Tensor| t.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let size = plain.abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((mean(&strong) - mean(&plain)).abs() <= 1e-6 * size);
}
