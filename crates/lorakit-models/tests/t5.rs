//! The T5 encoder against transformers 4.54.1 and sd-scripts (fixture:
//! `tools/reference/make_t5_tiny.py` → `tests/fixtures/reference/t5_tiny/`: a tiny
//! `T5EncoderModel` with T5 v1.1's structure — d_model 40, d_kv 12, 3 heads, d_ff 56, 3 layers,
//! 32 buckets, max distance 20, vocabulary 32128 — fed real tokenizer ids), a LoRA made by
//! sd-scripts' `lora_flux.py` with PyTorch's gradients, the full-size T5-XXL key list and
//! sd-scripts' 168 module names, and f64 gradient checks.
//!
//! Fidelity: fp32, relative error max |Δ| / max |reference| ≤ 1e-4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::t5::{relative_position_bucket, T5Config, T5EncoderModel, T5FeedForward, T5_LORA_PREFIX};
use lorakit_models::t5_tokenizer::T5Tokenizer;
use lorakit_models::Weights;
use lorakit_nn::gradcheck::{check, pseudo_random};
use lorakit_nn::lora::{LoraKind, LoraModule, LoraSet, TargetGroup};
use lorakit_nn::ForwardCtx;

const TOL: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/t5_tiny")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn get<'a>(map: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    map.get(key).unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

fn tiny_config() -> T5Config {
    T5Config::from_json_file(&fixture_dir().join("config.json")).unwrap()
}

/// The tiny model's weights (stored as f16, exact values) in `dtype`.
fn tiny_weights(dtype: DType) -> Weights {
    Weights::from_safetensors(&fixture_dir().join("model.safetensors"), dtype, &Device::Cpu).unwrap()
}

fn build(weights: &Weights, cfg: &T5Config) -> T5EncoderModel {
    let model = T5EncoderModel::new(weights.view(""), cfg).unwrap();
    weights.check_complete().unwrap();
    assert!(weights.unused().is_empty(), "unused weights: {:?}", weights.unused());
    model
}

fn tiny_model(dtype: DType) -> T5EncoderModel {
    build(&tiny_weights(dtype), &tiny_config())
}

fn io() -> HashMap<String, Tensor> {
    load(&fixture_dir().join("io.safetensors"))
}

/// max |a − b| / max |b|, after checking shapes.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    diff / scale.max(1e-12)
}

fn assert_close(name: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let e = rel_err(a, b);
    eprintln!("{name}: relative error {e:.2e}");
    assert!(e <= tol, "{name}: relative error {e:.3e} > {tol:e}");
}

fn all_finite(t: &Tensor) -> bool {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().all(|v| v.is_finite())
}

#[test]
fn config_parses_transformers_json_and_refuses_what_it_cannot_run() {
    let cfg = tiny_config();
    assert_eq!(
        cfg,
        T5Config {
            vocab_size: 32128,
            d_model: 40,
            d_kv: 12,
            d_ff: 56,
            num_layers: 3,
            num_heads: 3,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 20,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: T5FeedForward::GatedGelu,
        }
    );
    assert_eq!(cfg.inner_dim(), 36);
    let text = serde_json::to_string(&cfg).unwrap();
    assert!(text.contains(r#""feed_forward_proj":"gated-gelu""#), "{text}");
    assert_eq!(serde_json::from_str::<T5Config>(&text).unwrap(), cfg);
    // sd-scripts' T5-XXL config (flux_utils.load_t5xxl) is the built-in one.
    let full = json(&fixture_dir().join("t5xxl_full.json"));
    let parsed: T5Config = serde_json::from_value(full["config"].clone()).unwrap();
    assert_eq!(parsed, T5Config::t5_v1_1_xxl());
    let relu = T5Config::from_json_file(&fixture_dir().join("relu/config.json")).unwrap();
    assert_eq!(relu.feed_forward_proj, T5FeedForward::Relu);
    assert_eq!(serde_json::from_str::<T5Config>("{}").unwrap(), T5Config::default());

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut v = full["config"].clone();
    v["feed_forward_proj"] = "gated-silu".into();
    let p = write("silu.json", &v.to_string());
    let err = T5Config::from_json_file(&p).unwrap_err().to_string();
    assert!(err.contains("silu.json") && err.contains("\"gated-silu\" is not supported"), "{err}");
    let err = T5Config::from_json_file(&write("broken.json", "{\"d_model\": 40,")).unwrap_err().to_string();
    assert!(err.contains("broken.json") && err.contains("not a usable T5 config"), "{err}");
    let err = T5Config::from_json_file(&write("zero.json", "{\"num_heads\": 0}")).unwrap_err().to_string();
    assert!(err.contains("zero.json") && err.contains("num_heads"), "{err}");
    let err = T5Config::from_json_file(&write("buckets.json", "{\"relative_attention_num_buckets\": 2}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("buckets.json") && err.contains("buckets"), "{err}");
    let err = T5Config::from_json_file(&dir.path().join("absent.json")).unwrap_err().to_string();
    assert!(err.contains("absent.json"), "{err}");
}

#[test]
fn relative_position_buckets_match_transformers() {
    let full = json(&fixture_dir().join("t5xxl_full.json"));
    let b = &full["buckets"];
    for (key, max_distance) in [("xxl", 128), ("tiny", 20)] {
        let theirs: Vec<u64> = b[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let ours: Vec<u64> = (-600i64..=600).map(|r| relative_position_bucket(r, 32, max_distance) as u64).collect();
        assert_eq!(ours, theirs, "buckets for (32, {max_distance})");
    }
}

#[test]
fn forward_matches_transformers_with_and_without_mask() {
    let model = tiny_model(DType::F32);
    let io = io();
    let (ids, mask) = (get(&io, "input_ids"), get(&io, "attention_mask"));
    let ctx = ForwardCtx::default();
    let masked = model.forward(ids, Some(mask), &ctx).unwrap();
    assert_close("last_hidden_state (masked)", &masked, get(&io, "last_hidden_state_masked"), TOL);
    let unmasked = model.forward(ids, None, &ctx).unwrap();
    assert_close("last_hidden_state (no mask)", &unmasked, get(&io, "last_hidden_state"), TOL);
    // The two references differ clearly, so each check tests its path.
    assert!(rel_err(&masked, &unmasked) > 0.05);

    // Layer by layer: embeddings, the relative-position bias, block outputs.
    let len = ids.dim(1).unwrap();
    let bias = model.attention_bias(len, None).unwrap();
    assert_close("position_bias", &bias.position, get(&io, "position_bias"), 1e-7);
    let mut h = model.embed(ids).unwrap();
    assert_close("hidden_states.0", &h, get(&io, "hidden_states.0"), 1e-7);
    for (i, block) in model.blocks().iter().enumerate().take(2) {
        h = block.forward(&h, &bias, &ctx).unwrap();
        assert_close(&format!("hidden_states.{}", i + 1), &h, get(&io, &format!("hidden_states.{}", i + 1)), TOL);
    }

    // Any integer id dtype and any mask dtype give the same result.
    let ids_u32 = ids.to_dtype(DType::U32).unwrap();
    let mask_f = mask.to_dtype(DType::F32).unwrap();
    assert_eq!(rel_err(&model.forward(&ids_u32, Some(&mask_f), &ctx).unwrap(), &masked), 0.0);
    // A mask of ones is no mask.
    let ones = Tensor::ones(ids.dims(), DType::U8, &Device::Cpu).unwrap();
    assert_close("all-ones mask", &model.forward(ids, Some(&ones), &ctx).unwrap(), &unmasked, 1e-7);
}

#[test]
fn tokenizer_and_encode_give_sd_scripts_conditioning() {
    // The fixture's ids came from transformers' T5TokenizerFast; ours must be the same, and
    // encode() must apply the mask only when asked (sd-scripts' apply_t5_attn_mask).
    let model = tiny_model(DType::F32);
    let io = io();
    let prompts = json(&fixture_dir().join("prompts.json"));
    let texts: Vec<&str> = prompts["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let max_length = prompts["max_length"].as_u64().unwrap() as usize;
    let tokens = T5Tokenizer::new().unwrap().tokenize(&texts, max_length).unwrap();
    let ids: Vec<u32> = get(&io, "input_ids").flatten_all().unwrap().to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let mask: Vec<u32> =
        get(&io, "attention_mask").flatten_all().unwrap().to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    assert_eq!(tokens.input_ids, ids);
    assert_eq!(tokens.attention_mask, mask);
    assert!(tokens.dropped[1] > 0, "the long prompt is truncated");
    let ctx = ForwardCtx::default();
    let with_mask = model.encode(&tokens, true, &ctx).unwrap();
    assert_close("encode(mask)", &with_mask, get(&io, "last_hidden_state_masked"), TOL);
    let without = model.encode(&tokens, false, &ctx).unwrap();
    assert_close("encode(no mask)", &without, get(&io, "last_hidden_state"), TOL);
}

#[test]
fn both_embedding_keys_load() {
    // Files carry `shared.weight`, `encoder.embed_tokens.weight`, or both (tied).
    let cfg = tiny_config();
    let io = io();
    let reference = tiny_model(DType::F32).forward(get(&io, "input_ids"), None, &ForwardCtx::default()).unwrap();
    let base = tiny_weights(DType::F32).into_tensors();
    let shared = base["shared.weight"].clone();
    let mut only_encoder = base.clone();
    only_encoder.remove("shared.weight");
    only_encoder.insert("encoder.embed_tokens.weight".into(), shared.clone());
    let mut both = base.clone();
    both.insert("encoder.embed_tokens.weight".into(), shared);
    for (name, tensors) in [("encoder.embed_tokens only", only_encoder), ("both", both)] {
        let weights = Weights::new(tensors, name);
        let model = build(&weights, &cfg);
        let out = model.forward(get(&io, "input_ids"), None, &ForwardCtx::default()).unwrap();
        assert_eq!(rel_err(&out, &reference), 0.0, "{name}");
    }
    // Neither: one error naming the key.
    let mut none = base;
    none.remove("shared.weight");
    let weights = Weights::new(none, "no-embedding.safetensors");
    T5EncoderModel::new(weights.view(""), &cfg).unwrap();
    let err = weights.check_complete().unwrap_err().to_string();
    assert!(err.contains("no-embedding.safetensors") && err.contains("embed_tokens.weight (missing)"), "{err}");
}

#[test]
fn relu_variant_matches_transformers() {
    let cfg = T5Config::from_json_file(&fixture_dir().join("relu/config.json")).unwrap();
    let weights =
        Weights::from_safetensors(&fixture_dir().join("relu/model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let model = build(&weights, &cfg);
    let io = load(&fixture_dir().join("relu/io.safetensors"));
    let ctx = ForwardCtx::default();
    let (ids, mask) = (get(&io, "input_ids"), get(&io, "attention_mask"));
    assert_close(
        "relu masked",
        &model.forward(ids, Some(mask), &ctx).unwrap(),
        get(&io, "last_hidden_state_masked"),
        TOL,
    );
    assert_close("relu no mask", &model.forward(ids, None, &ctx).unwrap(), get(&io, "last_hidden_state"), TOL);
    assert!(rel_err(get(&io, "last_hidden_state_masked"), get(&io, "last_hidden_state")) > 0.05);
    // sd-scripts searches T5Attention and T5DenseGatedActDense only: no FFN targets here.
    let targets = model.lora_targets();
    assert_eq!(targets.len(), 4 * cfg.num_layers);
    assert!(targets.iter().all(|t| t.path.contains(".SelfAttention.")));
}

#[test]
fn full_size_keys_shapes_and_lora_targets_match_transformers_and_sd_scripts() {
    // Every state-dict tensor of the full T5-XXL encoder as a zero-cost broadcast of its shape:
    // the model must read exactly these keys with exactly these shapes.
    let full = json(&fixture_dir().join("t5xxl_full.json"));
    let sd = full["state_dict"].as_object().unwrap();
    let shape = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()
    };
    let cfg = T5Config::t5_v1_1_xxl();
    let ours: Vec<(String, Vec<usize>)> = cfg.parameter_shapes();
    let theirs: Vec<(String, Vec<usize>)> = sd.iter().map(|(k, v)| (k.clone(), shape(v))).collect();
    let sorted = |mut v: Vec<(String, Vec<usize>)>| {
        v.sort();
        v
    };
    assert_eq!(sorted(ours.clone()), sorted(theirs));
    let params: usize =
        ours.iter().filter(|(k, _)| k != "shared.weight").map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(params as u64, full["parameters"].as_u64().unwrap());

    let zero = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> =
        ours.iter().map(|(k, s)| (k.clone(), zero.broadcast_as(s.as_slice()).unwrap())).collect();
    let weights = Weights::new(tensors, "t5xxl_full.json");
    let model = build(&weights, &cfg);

    let names = full["lora_te3"].as_array().unwrap();
    let targets = model.lora_targets();
    assert_eq!(targets.len(), 168);
    assert_eq!(names.len(), 168);
    for (t, dims) in targets.iter().zip(names) {
        let name = dims["name"].as_str().unwrap();
        assert_eq!(t.kohya_name(T5_LORA_PREFIX), name, "sd-scripts' creation order");
        assert_eq!(
            (t.in_dim as u64, t.out_dim as u64),
            (dims["in_dim"].as_u64().unwrap(), dims["out_dim"].as_u64().unwrap()),
            "{name}"
        );
        assert_eq!((t.kind, t.group), (LoraKind::Linear, TargetGroup::Attention));
    }
    assert_eq!(targets[0].kohya_name(T5_LORA_PREFIX), "lora_te3_encoder_block_0_layer_0_SelfAttention_q");
    assert_eq!(targets[5].kohya_name(T5_LORA_PREFIX), "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_1");

    // The tiny checkpoint against the full-size configuration: one error listing problems.
    let tiny = tiny_weights(DType::F32);
    T5EncoderModel::new(tiny.view(""), &cfg).unwrap();
    let err = tiny.check_complete().unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("[32128, 4096]"), "{err}");
}

/// sd-scripts' LoRA file for the tiny model, attached by target path; trainable factors.
fn fixture_lora(model: &T5EncoderModel) -> LoraSet {
    let file = load(&fixture_dir().join("lora/lora.safetensors"));
    let mut set = LoraSet::new(0, &Device::Cpu).unwrap();
    for target in model.lora_targets() {
        let name = target.kohya_name(T5_LORA_PREFIX);
        let t = |suffix: &str| get(&file, &format!("{name}.{suffix}")).clone();
        let alpha = t("alpha").to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let module = LoraModule::from_weights(
            name.clone(),
            target.kind,
            t("lora_down.weight"),
            t("lora_up.weight"),
            Some(alpha),
            true,
        )
        .unwrap();
        set.insert(target.path.clone(), module);
    }
    assert_eq!(set.len() * 3, file.len(), "the file has modules the model does not target");
    set
}

#[test]
fn lora_targets_output_and_gradients_match_sd_scripts() {
    let model = tiny_model(DType::F32);
    let names = json(&fixture_dir().join("lora/module_names.json"));
    let theirs = names["modules"].as_array().unwrap();
    let targets = model.lora_targets();
    assert_eq!((targets.len(), theirs.len()), (21, 21));
    for (t, dims) in targets.iter().zip(theirs) {
        assert_eq!(t.kohya_name(T5_LORA_PREFIX), dims["name"].as_str().unwrap(), "sd-scripts' creation order");
        assert_eq!(t.in_dim as u64, dims["in_dim"].as_u64().unwrap());
        assert_eq!(t.out_dim as u64, dims["out_dim"].as_u64().unwrap());
    }

    let io = load(&fixture_dir().join("lora/io.safetensors"));
    let w = get(&io, "loss_weights");
    for checkpointing in [false, true] {
        let lora = Arc::new(fixture_lora(&model));
        let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
        let out = model.forward(get(&io, "input_ids"), Some(get(&io, "attention_mask")), &ctx).unwrap();
        assert_close("LoRA last_hidden_state", &out, get(&io, "last_hidden_state"), TOL);
        let grads = (out * w).unwrap().sum_all().unwrap().backward().unwrap();
        let mut worst = 0f64;
        for module in lora.modules() {
            for (part, var) in [("lora_down", module.down()), ("lora_up", module.up())] {
                let g =
                    lora.grad(&grads, var).unwrap().unwrap_or_else(|| panic!("{}.{part}: no gradient", module.name()));
                let e = rel_err(&g, get(&io, &format!("{}.{part}.weight.grad", module.name())));
                assert!(e <= TOL, "{}.{part}: gradient relative error {e:.3e}", module.name());
                worst = worst.max(e);
            }
        }
        lora.clear_side_grads();
        eprintln!("LoRA gradients (checkpointing {checkpointing}): worst relative error {worst:.2e} over 42 factors");
    }
}

#[test]
fn block_gradient_is_exact() {
    // f64 weights (fp16-exact values), a LoRA on every linear of block 1, the padding mask and the
    // relative-position bias: the block's input gradient (RMS norms, unscaled attention, gated
    // GELU, LoRA branches) against central differences; then the final norm alone.
    let weights = tiny_weights(DType::F64);
    let model = T5EncoderModel::new(weights.view(""), &tiny_config()).unwrap();
    let mut set = LoraSet::new(0, &Device::Cpu).unwrap();
    for (i, t) in model.lora_targets().into_iter().enumerate().filter(|(_, t)| t.path.contains("block.1.")) {
        let down = (pseudo_random(&[3, t.in_dim], 100 + i as u64).unwrap() * 0.3).unwrap();
        let up = (pseudo_random(&[t.out_dim, 3], 200 + i as u64).unwrap() * 0.3).unwrap();
        let module =
            LoraModule::from_weights(t.kohya_name(T5_LORA_PREFIX), t.kind, down, up, Some(1.5), false).unwrap();
        set.insert(t.path.clone(), module);
    }
    assert_eq!(set.len(), 7);
    let ctx = ForwardCtx::with_lora(Arc::new(set));
    let mask = Tensor::from_vec(vec![1u32, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], (2, 6), &Device::Cpu).unwrap();
    let bias = model.attention_bias(6, Some(&mask)).unwrap();
    let block = model.blocks()[1].clone();
    let x = pseudo_random(&[2, 6, 40], 5).unwrap();
    let report = check(|xs| block.forward(&xs[0], &bias, &ctx), std::slice::from_ref(&x), 1e-6).unwrap();
    eprintln!("T5 block gradcheck: {report:?}, relative {:.2e}", report.relative_error());
    assert!(report.max_magnitude > 1e-2);
    assert!(report.relative_error() < 1e-6, "{report:?}");

    let norm = model.final_layer_norm().clone();
    let x = (pseudo_random(&[3, 40], 9).unwrap() * 3.0).unwrap();
    let report = check(|xs| norm.forward(&xs[0]), std::slice::from_ref(&x), 1e-6).unwrap();
    assert!(report.max_magnitude > 1e-2 && report.relative_error() < 1e-7, "{report:?}");

    // Masked keys are invisible: changing a padded position's input leaves the other rows of
    // that sample unchanged.
    let y = block.forward(&x_with(&pseudo_random(&[2, 6, 40], 5).unwrap(), None), &bias, &ctx).unwrap();
    let y2 = block.forward(&x_with(&pseudo_random(&[2, 6, 40], 5).unwrap(), Some(4)), &bias, &ctx).unwrap();
    let others = Tensor::cat(&[y.narrow(1, 0, 4).unwrap(), y.narrow(1, 5, 1).unwrap()], 1).unwrap();
    let others2 = Tensor::cat(&[y2.narrow(1, 0, 4).unwrap(), y2.narrow(1, 5, 1).unwrap()], 1).unwrap();
    assert_eq!(rel_err(&others.narrow(0, 0, 1).unwrap(), &others2.narrow(0, 0, 1).unwrap()), 0.0);
    assert!(rel_err(&y.narrow(0, 0, 1).unwrap(), &y2.narrow(0, 0, 1).unwrap()) > 0.0);
}

/// `x` with position `pos` of sample 0 changed (None: unchanged).
fn x_with(x: &Tensor, pos: Option<usize>) -> Tensor {
    let Some(pos) = pos else { return x.clone() };
    let bump = Tensor::zeros(x.dims(), DType::F64, &Device::Cpu).unwrap();
    let one = Tensor::ones((1, 1, 40), DType::F64, &Device::Cpu).unwrap();
    let bump = bump.slice_assign(&[0..1, pos..pos + 1, 0..40], &one).unwrap();
    (x + bump).unwrap()
}

#[test]
fn half_precision_is_finite_and_close_and_f16_keeps_wo_in_f32() {
    let io = io();
    let (ids, mask) = (get(&io, "input_ids"), get(&io, "attention_mask"));
    let ctx = ForwardCtx::default();
    let reference = get(&io, "last_hidden_state_masked");
    for dtype in [DType::BF16, DType::F16] {
        let model = tiny_model(dtype);
        assert_eq!(model.dtype(), dtype);
        let out = model.forward(ids, Some(mask), &ctx).unwrap();
        assert_eq!(out.dtype(), dtype);
        assert!(all_finite(&out), "{dtype:?}: non-finite output");
        let e = rel_err(&out, reference);
        eprintln!("{dtype:?} vs transformers fp32: relative error {e:.2e}");
        assert!(e < 5e-2, "{dtype:?}: {e}");
    }

    // A model whose FFN output exceeds f16's range (wo scaled by 1e5, as T5-XXL's activations
    // do): with wo and the residual stream in f32 the f16 model stays finite and matches f32.
    let cfg = tiny_config();
    let mut tensors = tiny_weights(DType::F32).into_tensors();
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("DenseReluDense.wo.weight") {
            *t = (&*t * 1e5).unwrap().to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
        }
    }
    let f32_model = build(&Weights::new(tensors.clone(), "scaled"), &cfg);
    let big = f32_model.forward(ids, Some(mask), &ctx).unwrap();
    let embed_max = |m: &T5EncoderModel| {
        let bias = m.attention_bias(ids.dim(1).unwrap(), Some(mask)).unwrap();
        let h = m.blocks()[0].forward(&m.embed(ids).unwrap(), &bias, &ctx).unwrap();
        (h.dtype(), h.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap())
    };
    let (_, peak) = embed_max(&f32_model);
    assert!(peak > 1e5, "the scaled model must leave f16's range, 65504 (peak {peak})");
    let f16: HashMap<String, Tensor> = tensors.into_iter().map(|(k, t)| (k, t.to_dtype(DType::F16).unwrap())).collect();
    let f16_model = build(&Weights::new(f16, "scaled f16"), &cfg);
    let (residual, _) = embed_max(&f16_model);
    assert_eq!(residual, DType::F32, "an f16 model's residual stream is f32");
    let out = f16_model.forward(ids, Some(mask), &ctx).unwrap();
    assert!(all_finite(&out), "f16 with large FFN outputs overflowed");
    let e = rel_err(&out, &big);
    eprintln!("f16 with FFN outputs beyond f16's range vs f32: relative error {e:.2e}");
    assert!(e < 5e-2, "{e}");
}

#[test]
fn fp8_storage_computes_like_its_upcast_values() {
    // sd-scripts' fp8_base: every tensor stored as float8_e4m3fn, computed in f32 / bf16 / f16.
    // Linears are cast per use, so the result equals an f32 model of the fp8-rounded values.
    let cfg = tiny_config();
    let io = io();
    let (ids, mask) = (get(&io, "input_ids"), get(&io, "attention_mask"));
    let ctx = ForwardCtx::default();
    let base = tiny_weights(DType::F32).into_tensors();
    let fp8: HashMap<String, Tensor> =
        base.iter().map(|(k, t)| (k.clone(), t.to_dtype(DType::F8E4M3).unwrap())).collect();
    let rounded: HashMap<String, Tensor> =
        fp8.iter().map(|(k, t)| (k.clone(), t.to_dtype(DType::F32).unwrap())).collect();
    let reference = build(&Weights::new(rounded, "fp8 values in f32"), &cfg).forward(ids, Some(mask), &ctx).unwrap();
    let fp8_weights = Weights::new(fp8, "fp8");
    // new() computes in the norms' dtype, which fp8 is not: it says what to do instead.
    let e = T5EncoderModel::new(fp8_weights.view(""), &cfg).unwrap_err().to_string();
    assert!(e.contains("F8E4M3") && e.contains("new_in"), "{e}");
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 5e-2), (DType::F16, 5e-2)] {
        let model = T5EncoderModel::new_in(fp8_weights.view(""), &cfg, dtype).unwrap();
        fp8_weights.check_complete().unwrap();
        let out = model.forward(ids, Some(mask), &ctx).unwrap();
        assert_eq!(out.dtype(), dtype);
        assert!(all_finite(&out), "{dtype:?}");
        assert_close(&format!("fp8 storage, {dtype:?} compute"), &out, &reference, tol);
    }
    assert!(T5EncoderModel::new_in(fp8_weights.view(""), &cfg, DType::U8).is_err());
}

#[test]
fn bad_input_is_an_error() {
    let model = tiny_model(DType::F32);
    let ctx = ForwardCtx::default();
    let dev = Device::Cpu;
    let ids = |v: Vec<i64>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();

    let mut row = vec![5i64; 10];
    row[3] = 32128;
    let e = err(model.forward(&ids(row.clone(), &[1, 10]), None, &ctx));
    assert!(e.contains("32128") && e.contains("position 3") && e.contains("vocabulary"), "{e}");
    row[3] = -1;
    assert!(err(model.forward(&ids(row, &[1, 10]), None, &ctx)).contains("-1"));
    assert!(err(model.forward(&ids(vec![1; 10], &[10]), None, &ctx)).contains("(batch, length)"));
    assert!(err(model.forward(&ids(vec![], &[1, 0]), None, &ctx)).contains("empty"));
    let floats = Tensor::zeros((1, 10), DType::F32, &dev).unwrap();
    assert!(err(model.forward(&floats, None, &ctx)).contains("integer dtype"));
    let good = ids(vec![1; 10], &[1, 10]);
    let short_mask = ids(vec![1; 9], &[1, 9]);
    assert!(err(model.forward(&good, Some(&short_mask), &ctx)).contains("does not fit"));
    let batch_mask = ids(vec![1; 20], &[2, 10]);
    assert!(err(model.forward(&good, Some(&batch_mask), &ctx)).contains("does not fit"));
    let flat_mask = ids(vec![1; 10], &[10]);
    assert!(err(model.forward(&good, Some(&flat_mask), &ctx)).contains("(batch, length)"));
    // Long sequences need no position table: 600 tokens (beyond max distance) run.
    let long = model.forward(&ids(vec![7; 600], &[1, 600]), None, &ctx).unwrap();
    assert_eq!(long.dims(), &[1, 600, 40]);

    // Mis-shaped weights (a checkpoint of another size): one error naming file, key and shapes.
    let mut tensors = tiny_weights(DType::F32).into_tensors();
    let wo = "encoder.block.2.layer.1.DenseReluDense.wo.weight";
    tensors.insert(wo.into(), Tensor::zeros((40, 57), DType::F32, &dev).unwrap());
    tensors.remove("encoder.block.1.layer.0.SelfAttention.k.weight");
    let weights = Weights::new(tensors, "wrong.safetensors");
    T5EncoderModel::new(weights.view(""), &tiny_config()).unwrap();
    let e = weights.check_complete().unwrap_err().to_string();
    assert!(e.contains("wrong.safetensors") && e.contains("2 tensor(s)"), "{e}");
    assert!(e.contains(wo) && e.contains("[40, 57]") && e.contains("[40, 56]"), "{e}");
    assert!(e.contains("block.1.layer.0.SelfAttention.k.weight (missing)"), "{e}");

    // Integer norm weights cannot be computed in.
    let mut tensors = tiny_weights(DType::F32).into_tensors();
    let norm = tensors["encoder.final_layer_norm.weight"].to_dtype(DType::U8).unwrap();
    tensors.insert("encoder.final_layer_norm.weight".into(), norm);
    let e = T5EncoderModel::new(Weights::new(tensors, "int").view(""), &tiny_config()).unwrap_err().to_string();
    assert!(e.contains("final_layer_norm") && e.contains("U8"), "{e}");
}
