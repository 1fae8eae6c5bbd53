//! The CLIP text encoder against transformers 4.54.1 and sd-scripts (fixture:
//! `tools/reference/make_sd15_tiny.py` → `tests/fixtures/reference/sd15_tiny/`, a tiny
//! CLIPTextModel: vocab 1000, width 32, 3 layers, 4 heads, quick_gelu, eos 999), plus gradient
//! checks of the causal attention (with and without a padding mask) and of gradient checkpointing.
//!
//! Fidelity: fp32, relative error max |Δ| / max |reference| ≤ 1e-4.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use lorakit_models::clip::{encode_prompts, ClipActivation, ClipTextConfig, ClipTextModel};
use lorakit_models::clip_tokenizer::{chunk_for_clip, ClipTokenizer};
use lorakit_models::Weights;
use lorakit_nn::gradcheck::{check, pseudo_random};
use lorakit_nn::lora::{LoraDropout, LoraKind, LoraModule, LoraSet, TargetGroup};
use lorakit_nn::ForwardCtx;

const TOL: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd15_tiny")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn tiny_config() -> ClipTextConfig {
    ClipTextConfig::from_json_file(&fixture_dir().join("diffusers/text_encoder/config.json")).unwrap()
}

/// The tiny model's weights (stored as f16, fp16-exact values) in `dtype`.
fn tiny_weights(dtype: DType) -> Weights {
    Weights::from_safetensors(&fixture_dir().join("diffusers/text_encoder/model.safetensors"), dtype, &Device::Cpu)
        .unwrap()
}

fn tiny_model(dtype: DType) -> ClipTextModel {
    let weights = tiny_weights(dtype);
    let model = ClipTextModel::new(weights.view(""), &tiny_config()).unwrap();
    weights.check_complete().unwrap();
    assert!(weights.unused().is_empty(), "unused weights: {:?}", weights.unused());
    model
}

fn io() -> HashMap<String, Tensor> {
    load(&fixture_dir().join("io_text_encoder.safetensors"))
}

fn get<'a>(map: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    map.get(key).unwrap_or_else(|| panic!("fixture has no tensor {key}"))
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

fn assert_close(name: &str, a: &Tensor, b: &Tensor) {
    let e = rel_err(a, b);
    eprintln!("{name}: relative error {e:.2e}");
    assert!(e <= TOL, "{name}: relative error {e:.3e} > {TOL:e}");
}

#[test]
fn config_parses_transformers_json() {
    let cfg = tiny_config();
    assert_eq!(
        cfg,
        ClipTextConfig {
            vocab_size: 1000,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: Some(998),
            eos_token_id: 999,
            pad_token_id: Some(999),
            projection_dim: Some(32),
        }
    );
    let text = serde_json::to_string(&cfg).unwrap();
    assert!(text.contains(r#""hidden_act":"quick_gelu""#), "{text}");
    assert_eq!(serde_json::from_str::<ClipTextConfig>(&text).unwrap(), cfg);
    // The full-size configuration the fixture script built SD1.5's text encoder from.
    let full = json(&fixture_dir().join("sd15_full_shapes.json"));
    let parsed: ClipTextConfig = serde_json::from_value(full["configs"]["text_encoder"].clone()).unwrap();
    assert_eq!(parsed, ClipTextConfig::sd15());

    let gelu: ClipTextConfig = serde_json::from_str(r#"{"hidden_act": "gelu", "pad_token_id": null}"#).unwrap();
    assert_eq!(gelu.hidden_act, ClipActivation::Gelu);
    assert_eq!(gelu.pad_token_id, None);
    assert_eq!(gelu.hidden_size, 512, "missing fields take transformers' defaults");
    assert!(serde_json::from_str::<ClipTextConfig>(r#"{"hidden_act": "swish"}"#).is_err());
    let bad = ClipTextConfig { num_attention_heads: 5, ..tiny_config() };
    let err = ClipTextModel::new(tiny_weights(DType::F32).view(""), &bad).unwrap_err().to_string();
    assert!(err.contains("not divisible"), "{err}");
}

#[test]
fn forward_matches_transformers() {
    let model = tiny_model(DType::F32);
    let io = io();
    let ids = get(&io, "input_ids");
    let ctx = ForwardCtx::default();
    let out = model.forward(ids, &ctx).unwrap();
    assert_eq!(out.hidden_states.len(), 4);
    for (i, h) in out.hidden_states.iter().enumerate() {
        assert_close(&format!("hidden_states.{i}"), h, get(&io, &format!("hidden_states.{i}")));
    }
    assert_close("last_hidden_state", &out.last_hidden_state, get(&io, "last_hidden_state"));
    assert_close("pooler_output", &out.pooler_output, get(&io, "pooler_output"));
    assert_eq!(rel_err(&model.embed(ids).unwrap(), &out.hidden_states[0]), 0.0);

    // u32 ids give the same result.
    let ids_u32 = ids.to_dtype(DType::U32).unwrap();
    let out32 = model.forward(&ids_u32, &ctx).unwrap();
    assert_eq!(rel_err(&out32.last_hidden_state, &out.last_hidden_state), 0.0);
}

#[test]
fn clip_skip_and_chunking_match_sd_scripts() {
    let model = tiny_model(DType::F32);
    let io = io();
    let ids = get(&io, "input_ids");
    let ctx = ForwardCtx::default();
    let last = get(&io, "last_hidden_state");
    assert_close("clip_skip None", &model.encode_hidden(ids, None, &ctx).unwrap(), last);
    assert_close("clip_skip 1", &model.encode_hidden(ids, Some(1), &ctx).unwrap(), last);
    assert_close("clip_skip 2", &model.encode_hidden(ids, Some(2), &ctx).unwrap(), get(&io, "clip_skip2"));

    // The tokenizer's chunking gives sd-scripts' chunks for the 150-token sequence.
    let full: Vec<u32> =
        get(&io, "chunked_input_ids").flatten_all().unwrap().to_dtype(DType::U32).unwrap().to_vec1().unwrap();
    let chunks = get(&io, "chunked_input_ids_chunks");
    let ours: Vec<u32> = chunk_for_clip(&full, false, 999).concat();
    assert_eq!(ours, chunks.flatten_all().unwrap().to_dtype(DType::U32).unwrap().to_vec1::<u32>().unwrap());

    assert_close("chunked", &model.encode_chunked(chunks, None, &ctx).unwrap(), get(&io, "chunked_hidden"));
    assert_close(
        "chunked clip_skip 2",
        &model.encode_chunked(chunks, Some(2), &ctx).unwrap(),
        get(&io, "chunked_hidden_clip_skip2"),
    );
    // One chunk: stitching is the identity.
    let one = model.encode_chunked(&ids.unsqueeze(1).unwrap(), Some(2), &ctx).unwrap();
    assert_close("one chunk", &one, get(&io, "clip_skip2"));
}

/// The LoRA modules of sd-scripts' fixture file for this model, attached by target path.
fn fixture_lora(model: &ClipTextModel, dtype: DType) -> LoraSet {
    let file = load(&fixture_dir().join("lora/lora.safetensors"));
    let mut set = LoraSet::new(0, &Device::Cpu).unwrap();
    for target in model.lora_targets() {
        let name = target.kohya_name("lora_te");
        let t = |suffix: &str| get(&file, &format!("{name}.{suffix}")).to_dtype(dtype).unwrap();
        let alpha = t("alpha").to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let module = LoraModule::from_weights(
            name.clone(),
            target.kind,
            t("lora_down.weight"),
            t("lora_up.weight"),
            Some(alpha),
            false,
        )
        .unwrap();
        set.insert(target.path.clone(), module);
    }
    let te_modules = file.keys().filter(|k| k.starts_with("lora_te_") && k.ends_with(".alpha")).count();
    assert_eq!(set.len(), te_modules, "the file has text-encoder modules the model does not target");
    set
}

#[test]
fn lora_forward_matches_sd_scripts() {
    let model = tiny_model(DType::F32);
    let io = load(&fixture_dir().join("lora/io.safetensors"));
    let ctx = ForwardCtx::with_lora(Arc::new(fixture_lora(&model, DType::F32)));
    let ehs = model.forward(get(&io, "input_ids"), &ctx).unwrap().last_hidden_state;
    assert_close("lora ehs", &ehs, get(&io, "ehs"));
    // Without the LoRA the output differs clearly (the check above tests something).
    let plain = model.forward(get(&io, "input_ids"), &ForwardCtx::default()).unwrap().last_hidden_state;
    assert!(rel_err(&plain, get(&io, "ehs")) > 1e-2);
}

#[test]
fn lora_targets_match_sd_scripts() {
    // Tiny model: names and dims from sd-scripts' create_network on the transformers model.
    let model = tiny_model(DType::F32);
    let names = json(&fixture_dir().join("lora/module_names.json"));
    let targets = model.lora_targets();
    assert_eq!(targets.len(), 18);
    let ours: BTreeMap<String, (usize, usize)> =
        targets.iter().map(|t| (t.kohya_name("lora_te"), (t.in_dim, t.out_dim))).collect();
    let theirs: BTreeMap<String, (usize, usize)> = names["modules"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("lora_te_"))
        .map(|(k, m)| (k.clone(), (m["in_dim"].as_u64().unwrap() as usize, m["out_dim"].as_u64().unwrap() as usize)))
        .collect();
    assert_eq!(ours, theirs);
    for t in &targets {
        assert_eq!(t.kind, LoraKind::Linear);
        assert_eq!(t.group, TargetGroup::Attention);
        let m = &names["modules"][t.kohya_name("lora_te")];
        assert_eq!(m["module_path"].as_str().unwrap(), t.path);
        assert!(["CLIPAttention", "CLIPMLP"].contains(&m["target_class"].as_str().unwrap()));
    }
}

#[test]
fn sd15_full_size_shapes_and_targets() {
    // Every text-encoder tensor of real SD1.5 as a zero-cost broadcast of its shape: the model
    // must read exactly these keys with exactly these shapes.
    let shapes = json(&fixture_dir().join("sd15_full_shapes.json"));
    let te = shapes["diffusers"]["text_encoder"].as_object().unwrap();
    assert_eq!(te.len(), 196);
    let zero = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = te
        .iter()
        .map(|(k, v)| {
            let shape: Vec<usize> = v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (k.clone(), zero.broadcast_as(shape).unwrap())
        })
        .collect();
    let weights = Weights::new(tensors, "sd15_full_shapes.json");
    let model = ClipTextModel::new(weights.view(""), &ClipTextConfig::sd15()).unwrap();
    weights.check_complete().unwrap();
    assert!(weights.unused().is_empty(), "unused: {:?}", weights.unused());
    let params: usize = te
        .values()
        .map(|v| v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product::<usize>())
        .sum();
    assert_eq!(params as u64, shapes["param_counts"]["text_encoder"].as_u64().unwrap());

    let full_names = json(&fixture_dir().join("lora/sd15_full_names.json"));
    let theirs: BTreeSet<String> =
        full_names["text_encoder"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    let targets = model.lora_targets();
    assert_eq!(targets.len(), 72);
    let ours: BTreeSet<String> = targets.iter().map(|t| t.kohya_name("lora_te")).collect();
    assert_eq!(ours, theirs);
    for t in &targets {
        let m = &full_names["modules_with_conv_dim"][t.kohya_name("lora_te")];
        assert_eq!(
            (m["in_dim"].as_u64().unwrap() as usize, m["out_dim"].as_u64().unwrap() as usize),
            (t.in_dim, t.out_dim)
        );
    }

    // The tiny checkpoint does not fit the SD1.5 configuration: one error listing the problems.
    let tiny = tiny_weights(DType::F32);
    ClipTextModel::new(tiny.view(""), &ClipTextConfig::sd15()).unwrap();
    let err = tiny.check_complete().unwrap_err().to_string();
    assert!(err.contains("token_embedding.weight") && err.contains("[49408, 768]"), "{err}");
}

#[test]
fn bad_input_is_an_error() {
    let model = tiny_model(DType::F32);
    let ctx = ForwardCtx::default();
    let dev = Device::Cpu;
    let ids = |v: Vec<i64>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();

    let mut row = vec![998i64; 77];
    row[5] = 1000;
    let e = err(model.encode_hidden(&ids(row.clone(), &[1, 77]), None, &ctx));
    assert!(e.contains("1000") && e.contains("position 5") && e.contains("vocabulary"), "{e}");
    row[5] = -3;
    assert!(err(model.encode_hidden(&ids(row, &[1, 77]), None, &ctx)).contains("-3"));
    let e = err(model.encode_hidden(&ids(vec![1; 78], &[1, 78]), None, &ctx));
    assert!(e.contains("78") && e.contains("77"), "{e}");
    assert!(err(model.encode_hidden(&ids(vec![1; 77], &[77]), None, &ctx)).contains("(batch, length)"));
    assert!(err(model.encode_hidden(&ids(vec![], &[1, 0]), None, &ctx)).contains("empty"));
    let floats = Tensor::zeros((1, 77), DType::F32, &dev).unwrap();
    assert!(err(model.encode_hidden(&floats, None, &ctx)).contains("integer dtype"));
    assert!(err(model.encode_hidden(&ids(vec![1; 77], &[1, 77]), Some(0), &ctx)).contains("clip_skip"));
    assert!(err(model.encode_hidden(&ids(vec![1; 77], &[1, 77]), Some(5), &ctx)).contains("between 1 and 4"));
    // clip_skip = layers + 1 is the embeddings through the final LayerNorm (sd-scripts allows it).
    model.encode_hidden(&ids(vec![1; 77], &[1, 77]), Some(4), &ctx).unwrap();
    assert!(err(model.encode_chunked(&ids(vec![1; 77], &[1, 77]), None, &ctx)).contains("(batch, chunks, length)"));
    assert!(model.forward(&ids(vec![1; 77], &[1, 77]), &ctx).is_ok());
}

#[test]
fn causal_attention_gradient_is_exact() {
    // f64 weights (fp16-exact values), a LoRA on every linear of the layer: the layer's input
    // gradient (attention with causal mask, LayerNorms, quick_gelu, LoRA branches) against
    // central differences.
    let weights = tiny_weights(DType::F64);
    let model = ClipTextModel::new(weights.view(""), &tiny_config()).unwrap();
    let mut set = LoraSet::new(0, &Device::Cpu).unwrap();
    for (i, t) in model.lora_targets().into_iter().enumerate().filter(|(_, t)| t.path.contains("layers.1.")) {
        let down = (pseudo_random(&[4, t.in_dim], 100 + i as u64).unwrap() * 0.3).unwrap();
        let up = (pseudo_random(&[t.out_dim, 4], 200 + i as u64).unwrap() * 0.3).unwrap();
        set.insert(
            t.path.clone(),
            LoraModule::from_weights(t.kohya_name("lora_te"), t.kind, down, up, Some(2.0), false).unwrap(),
        );
    }
    assert_eq!(set.len(), 6);
    let ctx = ForwardCtx::with_lora(Arc::new(set));
    let layer = model.layers()[1].clone();
    let x = (pseudo_random(&[2, 6, 32], 5).unwrap() * 2.0).unwrap();
    let report = check(|xs| layer.forward(&xs[0], &ctx), std::slice::from_ref(&x), 1e-6).unwrap();
    eprintln!("encoder layer gradcheck: {report:?}, relative {:.2e}", report.relative_error());
    assert!(report.max_magnitude > 1e-2);
    assert!(report.relative_error() < 1e-6, "{report:?}");

    // Causality: outputs at positions 0..3 do not depend on inputs at 3.. (gradient exactly 0),
    // and do depend on 0..3.
    let v = Var::from_tensor(&x).unwrap();
    let y = layer.forward(v.as_tensor(), &ctx).unwrap();
    let grads = y.narrow(1, 0, 3).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(&v).unwrap();
    let future = g.narrow(1, 3, 3).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    let past = g.narrow(1, 0, 3).unwrap().abs().unwrap().min_all().unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(future, 0.0, "a position sees the future");
    assert!(past > 0.0);
    // The same holds through the model's own mask for a full 77-token pass.
    let ids = get(&io(), "input_ids").narrow(0, 0, 1).unwrap().contiguous().unwrap();
    let out = model.forward(&ids, &ForwardCtx::default()).unwrap().last_hidden_state;
    let mut changed: Vec<i64> = ids.flatten_all().unwrap().to_vec1().unwrap();
    changed[40] = (changed[40] + 1) % 998;
    let changed = Tensor::from_vec(changed, (1, 77), &Device::Cpu).unwrap();
    let out2 = model.forward(&changed, &ForwardCtx::default()).unwrap().last_hidden_state;
    let before =
        (out.narrow(1, 0, 40).unwrap() - out2.narrow(1, 0, 40).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(before.to_scalar::<f64>().unwrap(), 0.0);
}

/// A trainable LoRA with non-zero factors (so both get gradients) on every target, with neuron
/// dropout so that checkpointing must replay the same masks.
fn trainable_lora(model: &ClipTextModel) -> Arc<LoraSet> {
    let mut set = LoraSet::new(42, &Device::Cpu).unwrap();
    for (i, t) in model.lora_targets().into_iter().enumerate() {
        let down = pseudo_random(&[4, t.in_dim], 300 + i as u64).unwrap().to_dtype(DType::F32).unwrap();
        let up = (pseudo_random(&[t.out_dim, 4], 400 + i as u64).unwrap() * 0.2).unwrap().to_dtype(DType::F32).unwrap();
        let module = LoraModule::from_weights(t.kohya_name("lora_te"), t.kind, down, up, Some(2.0), true)
            .unwrap()
            .with_dropout(LoraDropout { neuron: 0.25, ..Default::default() });
        set.insert(t.path.clone(), module);
    }
    Arc::new(set)
}

#[test]
fn gradient_checkpointing_gives_identical_gradients() {
    let model = tiny_model(DType::F32);
    let io = io();
    let chunks = get(&io, "chunked_input_ids_chunks");
    let ids = get(&io, "input_ids");
    let run = |ckpt: bool| {
        let lora = trainable_lora(&model);
        let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: ckpt };
        let a = model.encode_chunked(chunks, Some(2), &ctx).unwrap();
        let out = model.forward(ids, &ctx).unwrap();
        let ra = pseudo_random(a.dims(), 1).unwrap().to_dtype(DType::F32).unwrap();
        let rb = pseudo_random(out.pooler_output.dims(), 2).unwrap().to_dtype(DType::F32).unwrap();
        let loss =
            ((a * ra).unwrap().sum_all().unwrap() + (out.pooler_output * rb).unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let all: Vec<Option<Tensor>> = lora.trainable_vars().iter().map(|v| lora.grad(&grads, v).unwrap()).collect();
        lora.clear_side_grads();
        all
    };
    let plain = run(false);
    let ckpt = run(true);
    assert_eq!(plain.len(), 36);
    let mut max_err = 0f64;
    for (i, (a, b)) in plain.iter().zip(&ckpt).enumerate() {
        let (a, b) =
            (a.as_ref().unwrap_or_else(|| panic!("var {i}: no gradient")), b.as_ref().expect("checkpointed gradient"));
        assert!(a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "var {i}: zero gradient");
        max_err = max_err.max(rel_err(b, a));
    }
    eprintln!("checkpointing on vs off: max relative gradient difference {max_err:.2e}");
    assert!(max_err <= 1e-6, "{max_err}");
}

#[test]
fn encode_prompts_tokenizes_and_chunks() {
    // The real tokenizer's ids exceed the tiny vocabulary: check the error, then use an SD1.5-
    // shaped model with a 49408-row embedding over the tiny widths.
    let tokenizer = ClipTokenizer::new().unwrap();
    let ctx = ForwardCtx::default();
    let tiny = tiny_model(DType::F32);
    let err = encode_prompts(&tiny, &tokenizer, &["a photo"], None, None, &ctx).unwrap_err().to_string();
    assert!(err.contains("49406"), "{err}");

    let cfg = ClipTextConfig { vocab_size: 49408, eos_token_id: 49407, ..tiny_config() };
    let mut tensors = tiny_weights(DType::F32).into_tensors();
    let emb = pseudo_random(&[49408, 32], 9).unwrap().to_dtype(DType::F32).unwrap();
    tensors.insert("text_model.embeddings.token_embedding.weight".into(), emb);
    let weights = Weights::new(tensors, "test");
    let model = ClipTextModel::new(weights.view(""), &cfg).unwrap();
    weights.check_complete().unwrap();

    let long = "a very long prompt with many words ".repeat(30);
    let prompts = ["a photo of a cat", long.as_str()];
    let short = encode_prompts(&model, &tokenizer, &prompts, None, Some(2), &ctx).unwrap();
    assert_eq!(short.dims(), &[2, 77, 32]);
    let long_out = encode_prompts(&model, &tokenizer, &prompts, Some(150), Some(2), &ctx).unwrap();
    assert_eq!(long_out.dims(), &[2, 152, 32]);
    assert!(encode_prompts(&model, &tokenizer, &prompts, Some(100), None, &ctx).is_err());
    assert!(encode_prompts(&model, &tokenizer, &[], None, None, &ctx).is_err());

    // Same as tokenising by hand and encoding the chunks.
    let (ids, dropped) = tokenizer.encode_padded(&long, 152, ClipTokenizer::EOS);
    assert!(dropped > 0);
    let chunks: Vec<u32> = chunk_for_clip(&ids, false, ClipTokenizer::EOS).concat();
    let chunks = Tensor::from_vec(chunks, (1, 2, 77), &Device::Cpu).unwrap();
    let by_hand = model.encode_chunked(&chunks, Some(2), &ctx).unwrap();
    assert_eq!(rel_err(&long_out.narrow(0, 1, 1).unwrap(), &by_hand), 0.0);
}

#[test]
fn half_precision_runs_close_to_f32() {
    let io = io();
    let ids = get(&io, "input_ids");
    for dtype in [DType::F16, DType::BF16] {
        let model = tiny_model(dtype);
        let out = model.encode_hidden(ids, None, &ForwardCtx::default()).unwrap();
        assert_eq!(out.dtype(), dtype);
        let e = rel_err(&out, get(&io, "last_hidden_state"));
        eprintln!("{dtype:?}: relative error {e:.2e}");
        assert!(e < 5e-2, "{dtype:?}: {e}");
    }
}

/// Two rows of 8 ids (BOS, text, EOS, padding) and their padding masks (4 and 3 tokens).
fn padded_batch() -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[998u32, 5, 17, 999, 7, 7, 7, 7], [998, 40, 999, 3, 3, 3, 3, 3]], &dev).unwrap();
    let mask = Tensor::new(&[[1i64, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], &dev).unwrap();
    (ids, mask)
}

#[test]
fn padding_mask_gradients_reach_lora_exactly() {
    // f64 weights (fp16-exact values), trainable LoRAs on layer 0's q/k projections (they shape
    // the masked attention weights) and layer 1's v projection: the factors' gradients through
    // the causal + padding mask against central differences, at every position.
    let weights = tiny_weights(DType::F64);
    let model = ClipTextModel::new(weights.view(""), &tiny_config()).unwrap();
    let targets: Vec<_> = model
        .lora_targets()
        .into_iter()
        .filter(|t| {
            ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.1.self_attn.v_proj"]
                .iter()
                .any(|p| t.path.ends_with(p))
        })
        .collect();
    assert_eq!(targets.len(), 3);
    let mut factors = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        factors.push((pseudo_random(&[2, t.in_dim], 500 + i as u64).unwrap() * 0.3).unwrap());
        factors.push((pseudo_random(&[t.out_dim, 2], 600 + i as u64).unwrap() * 0.3).unwrap());
    }
    let (ids, mask) = padded_batch();
    let run = |xs: &[Tensor], mask: Option<&Tensor>| -> candle_core::Result<Tensor> {
        let mut set = LoraSet::new(0, &Device::Cpu)?;
        for (i, t) in targets.iter().enumerate() {
            let (down, up) = (xs[2 * i].clone(), xs[2 * i + 1].clone());
            set.insert(
                t.path.clone(),
                LoraModule::from_weights(t.kohya_name("lora_te"), t.kind, down, up, Some(1.0), true)?,
            );
        }
        let ctx = ForwardCtx::with_lora(Arc::new(set));
        Ok(model.forward_with_mask(&ids, mask, &ctx)?.last_hidden_state)
    };
    let report = check(|xs| run(xs, Some(&mask)), &factors, 1e-6).unwrap();
    eprintln!("masked CLIP LoRA gradcheck: {report:?}, relative {:.2e}", report.relative_error());
    assert!(report.max_magnitude > 1e-2, "{report:?}");
    assert!(report.relative_error() < 1e-6, "{report:?}");

    // The mask is in that graph: the LoRA gradients differ from the unmasked pass's.
    let grads = |mask: Option<&Tensor>| {
        let vars: Vec<Var> = factors.iter().map(|f| Var::from_tensor(f).unwrap()).collect();
        let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = run(&xs, mask).unwrap();
        let g = (out * pseudo_random(&[2, 8, 32], 9).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        Tensor::cat(&vars.iter().map(|v| g.get(v).unwrap().flatten_all().unwrap()).collect::<Vec<_>>(), 0).unwrap()
    };
    assert!(rel_err(&grads(Some(&mask)), &grads(None)) > 1e-3);
}

#[test]
fn padding_mask_hides_padded_keys_from_every_query() {
    let model = tiny_model(DType::F32);
    let ctx = ForwardCtx::default();
    let (ids, mask) = padded_batch();
    let masked = model.forward_with_mask(&ids, Some(&mask), &ctx).unwrap();
    let plain = model.forward(&ids, &ctx).unwrap();
    // Text positions see no padding either way (causality); padded positions do without the
    // mask; the pooled vector (at EOS) is the same.
    for (b, n) in [(0, 4), (1, 3)] {
        let (m, p) = (masked.last_hidden_state.i(b).unwrap(), plain.last_hidden_state.i(b).unwrap());
        assert_eq!(rel_err(&m.narrow(0, 0, n).unwrap(), &p.narrow(0, 0, n).unwrap()), 0.0);
        assert!(rel_err(&m.narrow(0, n, 8 - n).unwrap(), &p.narrow(0, n, 8 - n).unwrap()) > 1e-3);
    }
    assert_eq!(rel_err(&masked.pooler_output, &plain.pooler_output), 0.0);
    // A padded token's id reaches no other position through attention with the mask (only its
    // own, through the residual stream); without it, the positions after it see it.
    let mut changed: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    changed[0][5] = 123;
    let changed = Tensor::new(changed, &Device::Cpu).unwrap();
    let masked2 = model.forward_with_mask(&changed, Some(&mask), &ctx).unwrap();
    let plain2 = model.forward(&changed, &ctx).unwrap();
    let at = |o: &lorakit_models::clip::ClipTextOutput, p: usize| o.last_hidden_state.i((0, p)).unwrap();
    for p in [4, 6, 7] {
        assert_eq!(rel_err(&at(&masked2, p), &at(&masked, p)), 0.0, "position {p}");
    }
    assert!(rel_err(&at(&masked2, 5), &at(&masked, 5)) > 1e-3);
    assert!(rel_err(&at(&plain2, 6), &at(&plain, 6)) > 1e-3);
    // Every hidden state, not just the last, is masked (SD3 conditions on hidden_states[-2]).
    assert!(rel_err(&masked.hidden_states[2].i((0, 6)).unwrap(), &plain.hidden_states[2].i((0, 6)).unwrap()) > 1e-3);
    // A mask of all ones is the unmasked pass, bit for bit; so is each mask dtype.
    let ones = Tensor::ones((2, 8), DType::U8, &Device::Cpu).unwrap();
    let all = model.forward_with_mask(&ids, Some(&ones), &ctx).unwrap();
    assert_eq!(rel_err(&all.last_hidden_state, &plain.last_hidden_state), 0.0);
    let as_f32 = model.forward_with_mask(&ids, Some(&mask.to_dtype(DType::F32).unwrap()), &ctx).unwrap();
    assert_eq!(rel_err(&as_f32.last_hidden_state, &masked.last_hidden_state), 0.0);
    // Gradient checkpointing replays the same mask.
    let ckpt = ForwardCtx { gradient_checkpointing: true, ..ForwardCtx::default() };
    let replayed = model.forward_with_mask(&ids, Some(&mask), &ckpt).unwrap();
    assert_eq!(rel_err(&replayed.last_hidden_state, &masked.last_hidden_state), 0.0);
}

#[test]
fn bad_padding_masks_are_refused() {
    let model = tiny_model(DType::F32);
    let ctx = ForwardCtx::default();
    let (ids, _) = padded_batch();
    let err = |mask: Tensor| model.forward_with_mask(&ids, Some(&mask), &ctx).unwrap_err().to_string();
    let e = err(Tensor::ones((2, 7), DType::U32, &Device::Cpu).unwrap());
    assert!(e.contains("[2, 7]") && e.contains("(2, 8)"), "{e}");
    let e = err(Tensor::new(&[[1u32, 1, 2, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], &Device::Cpu).unwrap());
    assert!(e.contains("value 2") && e.contains("sequence 0, position 2"), "{e}");
    // A row whose BOS is masked would leave its first query no key: transformers 4.5x and 5.x
    // (eager vs SDPA) disagree there, so it is refused rather than guessed.
    let e = err(Tensor::new(&[[1u32, 1, 1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]], &Device::Cpu).unwrap());
    assert!(e.contains("row 1") && e.contains("first token"), "{e}");
}
