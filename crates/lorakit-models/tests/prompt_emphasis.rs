//! Prompt encoding at sampling time against sd-scripts' sample-image path
//! (`lpw_stable_diffusion.get_weighted_text_embeddings`, which is also A1111's emphasis):
//! fixture `tools/reference/lpw_prompt_fixture.py` → `tests/fixtures/reference/prompt_emphasis/`,
//! on the tiny SD1.5-shaped text encoder of examples/quickstart/tiny-sd15 (float32).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use lorakit_dataset::prompt_weights::parse_prompt_attention;
use lorakit_models::clip::{encode_emphasis_pair, ClipTextConfig, ClipTextModel};
use lorakit_models::clip_tokenizer::ClipTokenizer;
use lorakit_models::Weights;
use lorakit_nn::ForwardCtx;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn model() -> ClipTextModel {
    let dir = repo("examples/quickstart/tiny-sd15/text_encoder");
    let cfg = ClipTextConfig::from_json_file(&dir.join("config.json")).unwrap();
    let weights = Weights::from_safetensors(&dir.join("model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let model = ClipTextModel::new(weights.view(""), &cfg).unwrap();
    weights.check_complete().unwrap();
    model
}

/// max |a − b| / max |b|.
fn rel_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    diff / scale
}

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
            let err = rel_error(&(ours * scale as f64).unwrap(), reference);
            assert!(err <= 1e-5, "case {i} {what}: relative error {err:.2e} after the common scale {scale}");
            assert!((scale - 1.0).abs() <= 1e-3, "case {i} {what}: common scale {scale}");
            let raw = rel_error(ours, reference);
            assert!(raw <= 2e-4, "case {i} {what}: relative error {raw:.2e}");
        }
    }
}

#[test]
fn emphasis_reweights_only_the_marked_tokens_before_the_rescale() {
    let (model, tokenizer) = (model(), ClipTokenizer::new().unwrap());
    let (plain, _) = encode(&model, &tokenizer, "a red cat", "", None);
    let (same, _) = encode(&model, &tokenizer, "a (red:1.0) cat", "", None);
    assert_eq!(rel_error(&same, &plain), 0.0, "weight 1.0 is no emphasis");
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
