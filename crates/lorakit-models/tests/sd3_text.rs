//! SD3's text conditioning against sd-scripts' `strategy_sd3.py` and diffusers 0.42's
//! `StableDiffusion3Pipeline.encode_prompt` (fixtures: `tests/fixtures/reference/sd3_text/`, made
//! by `tools/reference/sd3_text_fixture.py`): tiny random CLIP-L (16 wide), CLIP-G (24) and T5
//! (48) on the real vocabularies, fed by lorakit's own tokenizers. f32, max |Δ| / max |ref| ≤ 1e-4;
//! dropped rows exactly zero. The CLIP padding masks (`apply_lg_attn_mask`) also against
//! transformers 4.54 (`tests/fixtures/reference/clip_attn_mask/`, `clip_attn_mask_fixture.py`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use lorakit_models::checkpoint::LinearStorage;
use lorakit_models::clip::ClipTextModelWithProjection;
use lorakit_models::sd3_text::{
    clip_g_config, clip_l_config, clip_l_from_weights, load_clip_g, load_clip_l, load_t5, t5_from_weights,
    Sd3DropoutRates, Sd3Drops, Sd3TextEncoders, Sd3TextOptions, Sd3TextOutput, Sd3Tokens, CLIP_G_LORA_PREFIX,
    NO_T5_LENGTH,
};
use lorakit_models::t5::{T5Config, T5EncoderModel};
use lorakit_models::Weights;
use lorakit_nn::lora::{LoraModule, LoraSet};
use lorakit_nn::ForwardCtx;

const TOL: f64 = 1e-4;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd3_text")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("io.safetensors"), &Device::Cpu).unwrap()
}

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

fn get<'a>(io: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    io.get(key).unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// max |a − b| / max |b|, after checking shapes.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-12);
    diff / scale
}

fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    let e = rel_err(a, b);
    assert!(e <= TOL, "{what}: relative error {e:e}");
}

fn as_i64(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

fn models() -> (ClipTextModelWithProjection, ClipTextModelWithProjection, T5EncoderModel) {
    let cpu = Device::Cpu;
    (
        load_clip_l(&dir().join("clip_l"), DType::F32, &cpu).unwrap(),
        load_clip_g(&dir().join("clip_g"), DType::F32, &cpu).unwrap(),
        load_t5(&dir().join("t5"), DType::F32, LinearStorage::Compute, &cpu).unwrap(),
    )
}

fn encoders(opts: Sd3TextOptions) -> Sd3TextEncoders {
    let (l, g, t5) = models();
    Sd3TextEncoders::new(Some(l), Some(g), Some(t5), opts).unwrap()
}

fn opts(t5_mask: bool) -> Sd3TextOptions {
    let c = cases();
    Sd3TextOptions {
        t5_max_length: c["t5_max_length"].as_u64().unwrap() as usize,
        apply_lg_attn_mask: false,
        apply_t5_attn_mask: t5_mask,
    }
}

fn no_lora() -> [ForwardCtx; 3] {
    [ForwardCtx::default(), ForwardCtx::default(), ForwardCtx::default()]
}

fn refs(c: &[ForwardCtx; 3]) -> [&ForwardCtx; 3] {
    [&c[0], &c[1], &c[2]]
}

fn tokens_from(io: &HashMap<String, Tensor>, p: &str, mask_suffix: &str) -> Sd3Tokens {
    let t = |k: &str| get(io, &format!("{p}{k}")).to_dtype(DType::U32).unwrap();
    Sd3Tokens {
        l_ids: t("l_ids"),
        g_ids: t("g_ids"),
        t5_ids: t("t5_ids"),
        l_attn_mask: t(&format!("l_mask{mask_suffix}")),
        g_attn_mask: t(&format!("g_mask{mask_suffix}")),
        t5_attn_mask: t(&format!("t5_mask{mask_suffix}")),
    }
}

fn bools(v: &serde_json::Value) -> Vec<bool> {
    v.as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect()
}

fn drops_of(v: &serde_json::Value) -> Sd3Drops {
    Sd3Drops { clip_l: bools(&v["clip_l"]), clip_g: bools(&v["clip_g"]), t5: bools(&v["t5"]) }
}

fn rates() -> Sd3DropoutRates {
    let r = &cases()["dropout_rates"];
    Sd3DropoutRates {
        clip_l: r["clip_l"].as_f64().unwrap(),
        clip_g: r["clip_g"].as_f64().unwrap(),
        t5: r["t5"].as_f64().unwrap(),
    }
}

/// A uniform source replaying Python's recorded `random.random()` values.
fn replay(values: &serde_json::Value) -> impl FnMut() -> f64 {
    let v: Vec<f64> = values.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let mut i = 0;
    move || {
        i += 1;
        v[i - 1]
    }
}

#[test]
fn tokenize_matches_sd_scripts() {
    let io = io();
    let te = encoders(opts(false));
    let prompts = strings(&cases()["prompts"]);
    let t = te.tokenize(&prompts).unwrap();
    let want = tokens_from(&io, "", "");
    for (name, a, b) in [
        ("l_ids", &t.l_ids, &want.l_ids),
        ("g_ids", &t.g_ids, &want.g_ids),
        ("t5_ids", &t.t5_ids, &want.t5_ids),
        ("l_mask", &t.l_attn_mask, &want.l_attn_mask),
        ("g_mask", &t.g_attn_mask, &want.g_attn_mask),
        ("t5_mask", &t.t5_attn_mask, &want.t5_attn_mask),
    ] {
        assert_eq!(as_i64(a), as_i64(b), "{name}");
    }
    // CLIP-G pads with `!` (0) where CLIP-L pads with EOS; the long prompt fills all 77.
    let (l, g) = (as_i64(&t.l_ids), as_i64(&t.g_ids));
    assert_eq!((l[0][2], g[0][2]), (49407, 0));
    assert_eq!(as_i64(&t.l_attn_mask)[2].iter().sum::<i64>(), 77);
}

#[test]
fn tokenize_keeps_bang_as_text_for_clip_g_as_sd_scripts() {
    // sd-scripts' CLIP-G tokenizer only pads with id 0; it does not split the text at `!`, so
    // its ids equal CLIP-L's up to EOS (the states that follow are checked against sd-scripts
    // in `diffusers_encode_prompt_agrees_where_it_should`).
    let te = encoders(opts(false));
    let t = te.tokenize(&["wow! a cat!!"]).unwrap();
    let (l, g) = (&as_i64(&t.l_ids)[0], &as_i64(&t.g_ids)[0]);
    let n = as_i64(&t.g_attn_mask)[0].iter().sum::<i64>() as usize;
    assert_eq!(l[..n], g[..n]);
    assert!(g[1..n - 1].iter().all(|&x| x != 0), "{g:?}");
    assert!(g[n..].iter().all(|&x| x == 0) && l[n..].iter().all(|&x| x == 49407));
}

fn check_encoding(lg_mask: bool, t5_mask: bool) {
    let io = io();
    let te = encoders(Sd3TextOptions { apply_lg_attn_mask: lg_mask, ..opts(t5_mask) });
    let prompts = strings(&cases()["prompts"]);
    let ctx = no_lora();
    let out = te.encode(&prompts, refs(&ctx), None).unwrap();
    let key = format!("lg{}t5{}", u8::from(lg_mask), u8::from(t5_mask));
    assert_close(out.lg_out.as_ref().unwrap(), get(&io, &format!("{key}.lg_out")), "lg_out");
    assert_close(out.t5_out.as_ref().unwrap(), get(&io, &format!("{key}.t5_out")), "t5_out");
    assert_close(out.lg_pooled.as_ref().unwrap(), get(&io, &format!("{key}.lg_pooled")), "lg_pooled");
    assert_eq!(as_i64(out.l_attn_mask.as_ref().unwrap()), as_i64(get(&io, "l_mask")));
    assert_eq!(as_i64(out.g_attn_mask.as_ref().unwrap()), as_i64(get(&io, "g_mask")));
    assert_eq!(as_i64(out.t5_attn_mask.as_ref().unwrap()), as_i64(get(&io, "t5_mask")));
    let (context, pooled) = out.context_and_pooled().unwrap();
    // The fixture keeps the context of the unmasked-CLIP runs only (the same function of the
    // parts for every combination).
    if !lg_mask {
        assert_close(&context, get(&io, &format!("{key}.context")), "context");
    }
    assert_close(&pooled, get(&io, &format!("{key}.lg_pooled")), "pooled");
    // The padding is exact zeros between CLIP's 40 features and T5's 48.
    assert_eq!(max_abs(&context.i((.., ..77, 40..)).unwrap()), 0.0);
}

#[test]
fn encode_matches_sd_scripts_without_masks() {
    check_encoding(false, false);
}

#[test]
fn encode_matches_sd_scripts_with_t5_mask() {
    check_encoding(false, true);
}

#[test]
fn encode_matches_sd_scripts_with_lg_mask() {
    check_encoding(true, false);
}

#[test]
fn encode_matches_sd_scripts_with_both_masks() {
    check_encoding(true, true);
}

#[test]
fn the_t5_mask_changes_t5_only() {
    // Guards the two tests above: the fixture's masked and unmasked T5 states differ.
    let io = io();
    assert!(rel_err(get(&io, "lg0t50.t5_out"), get(&io, "lg0t51.t5_out")) > 1e-2);
    assert_eq!(rel_err(get(&io, "lg0t50.lg_out"), get(&io, "lg0t51.lg_out")), 0.0);
}

#[test]
fn lg_mask_matches_transformers_4_54_as_sd_scripts_pins_it() {
    // The fixture above was made with transformers 5.25; sd-scripts 48d368f pins 4.54.1, which
    // builds the padding mask differently (tools/reference/clip_attn_mask_fixture.py: both
    // releases and both attention paths agree on tokenizer masks; its 4.54 outputs here).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/clip_attn_mask");
    let t4 = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let te = encoders(Sd3TextOptions { apply_lg_attn_mask: true, ..opts(false) });
    let ctx = no_lora();
    let out = te.encode(&strings(&cases()["prompts"]), refs(&ctx), None).unwrap();
    assert_close(out.lg_out.as_ref().unwrap(), get(&t4, "t4_54.lg_out"), "lg_out (4.54)");
    assert_close(out.lg_pooled.as_ref().unwrap(), get(&t4, "t4_54.lg_pooled"), "lg_pooled (4.54)");
}

#[test]
fn the_lg_mask_changes_the_clip_padding_positions_only() {
    // Guards the lg-mask tests: in sd-scripts' outputs the masked CLIP states differ from the
    // unmasked ones at padded positions only (the text positions see no padding either way,
    // causality), the pooled vectors (taken at EOS, before any padding) and T5 not at all.
    let io = io();
    let (masked, plain) = (get(&io, "lg1t50.lg_out"), get(&io, "lg0t50.lg_out"));
    assert!(rel_err(masked, plain) > 1e-2);
    assert_eq!(rel_err(get(&io, "lg1t50.t5_out"), get(&io, "lg0t50.t5_out")), 0.0);
    assert!(rel_err(get(&io, "lg1t50.lg_pooled"), get(&io, "lg0t50.lg_pooled")) <= 1e-6);
    let mask = as_i64(get(&io, "l_mask"));
    for (b, row) in mask.iter().enumerate() {
        let n = row.iter().sum::<i64>() as usize;
        assert_eq!(row[..n].iter().sum::<i64>() as usize, n, "mask of prompt {b} is not a prefix");
        let (m, p) = (masked.i(b).unwrap(), plain.i(b).unwrap());
        assert!(rel_err(&m.narrow(0, 0, n).unwrap(), &p.narrow(0, 0, n).unwrap()) <= 1e-6, "prompt {b}");
        if n < 77 {
            assert!(rel_err(&m.narrow(0, n, 77 - n).unwrap(), &p.narrow(0, n, 77 - n).unwrap()) > 1e-2, "prompt {b}");
        }
    }
    // The same through lorakit: encode_tokens' explicit flag (sd-scripts' training step passes
    // False whatever the options say) against the options.
    let te = encoders(opts(false));
    let tokens = tokens_from(&io, "", "");
    let ctx = no_lora();
    let out = te.encode_tokens(&tokens, refs(&ctx), true, false, None).unwrap();
    assert_close(out.lg_out.as_ref().unwrap(), masked, "lg_out (explicit flag)");
    let out = te.encode_tokens(&tokens, refs(&ctx), false, false, None).unwrap();
    assert_close(out.lg_out.as_ref().unwrap(), plain, "lg_out (flag off)");
}

#[test]
fn lg_mask_with_dropped_rows_masks_the_kept_rows_by_their_own_masks() {
    // Dropped rows are not encoded; the kept rows go through with their own mask rows, so they
    // equal the full masked pass there (rows are independent), and dropped rows are zeros.
    let io = io();
    let te = encoders(opts(false));
    let tokens = tokens_from(&io, "", "");
    let ctx = no_lora();
    let drops = Sd3Drops { clip_l: vec![true, false, false], clip_g: vec![false, true, false], t5: vec![false; 3] };
    let out = te.encode_tokens(&tokens, refs(&ctx), true, false, Some(&drops)).unwrap();
    let (got, want) = (out.lg_out.as_ref().unwrap(), get(&io, "lg1t50.lg_out"));
    for b in 0..3 {
        let (l, g) = (got.i((b, .., ..16)).unwrap(), got.i((b, .., 16..)).unwrap());
        if drops.clip_l[b] {
            assert_eq!(max_abs(&l), 0.0);
        } else {
            assert_close(&l, &want.i((b, .., ..16)).unwrap(), &format!("CLIP-L row {b}"));
        }
        if drops.clip_g[b] {
            assert_eq!(max_abs(&g), 0.0);
        } else {
            assert_close(&g, &want.i((b, .., 16..)).unwrap(), &format!("CLIP-G row {b}"));
        }
    }
    // A caller's mask that hides a row's BOS is refused, naming the row.
    let mut bad = tokens.clone();
    let mut m = as_i64(&tokens.g_attn_mask);
    m[1][0] = 0;
    bad.g_attn_mask = Tensor::new(m, &Device::Cpu).unwrap().to_dtype(DType::U32).unwrap();
    let err = te.encode_tokens(&bad, refs(&ctx), true, false, None).unwrap_err().to_string();
    assert!(err.contains("row 1") && err.contains("first token"), "{err}");
}

#[test]
fn diffusers_encode_prompt_agrees_where_it_should() {
    let io = io();
    let c = cases();
    let te = encoders(opts(false));
    let ctx = no_lora();
    let out = te.encode(&strings(&c["prompts"]), refs(&ctx), None).unwrap();
    let (context, pooled) = out.context_and_pooled().unwrap();
    assert_close(&context, get(&io, "diffusers.prompt_embeds"), "diffusers prompt_embeds");
    assert_close(&pooled, get(&io, "diffusers.pooled"), "diffusers pooled");

    // With `!` in the text: CLIP-L and T5 as diffusers; CLIP-G as sd-scripts (diffusers'
    // tokenizer_2 splits at `!`).
    let out = te.encode(&strings(&c["bang_prompts"]), refs(&ctx), None).unwrap();
    let (context, pooled) = out.context_and_pooled().unwrap();
    let d = get(&io, "diffusers_bang.prompt_embeds");
    let dp = get(&io, "diffusers_bang.pooled");
    assert_close(&context.i((.., .., ..16)).unwrap(), &d.i((.., .., ..16)).unwrap(), "CLIP-L + T5 part");
    assert_close(&context.i((.., 77.., ..)).unwrap(), &d.i((.., 77.., ..)).unwrap(), "T5 part");
    assert_close(&pooled.i((.., ..16)).unwrap(), &dp.i((.., ..16)).unwrap(), "CLIP-L pooled");
    assert_close(out.lg_out.as_ref().unwrap(), get(&io, "bang.lg_out"), "sd-scripts CLIP part");
    assert_close(&pooled, get(&io, "bang.lg_pooled"), "sd-scripts pooled");
    assert!(rel_err(&pooled.i((.., 16..)).unwrap(), &dp.i((.., 16..)).unwrap()) > 1e-2);
}

#[test]
fn without_t5_the_context_ends_in_77_zero_rows_as_sd_scripts() {
    let io = io();
    let (l, g, _) = models();
    let te = Sd3TextEncoders::new(Some(l), Some(g), None, opts(false)).unwrap();
    assert!(te.t5_lora_targets().is_empty());
    let ctx = no_lora();
    let out = te.encode(&strings(&cases()["prompts"]), refs(&ctx), None).unwrap();
    assert!(out.t5_out.is_none() && out.t5_attn_mask.is_none());
    let err = out.context_and_pooled().unwrap_err().to_string();
    assert!(err.contains("context_and_pooled_for"), "{err}");
    let (context, _) = out.context_and_pooled_for(48).unwrap();
    assert_eq!(context.dim(1).unwrap(), 77 + NO_T5_LENGTH);
    assert_close(&context, get(&io, "no_t5.context"), "no-T5 context");
    // diffusers fills max_sequence_length rows instead (here 40): the CLIP part agrees.
    let d = get(&io, "diffusers_no_t5.prompt_embeds");
    assert_eq!(d.dim(1).unwrap(), 77 + 40);
    assert_close(&context.i((.., ..77, ..)).unwrap(), &d.i((.., ..77, ..)).unwrap(), "diffusers CLIP part");
}

#[test]
fn dropout_draws_and_zeroed_rows_match_sd_scripts() {
    let io = io();
    let c = cases();
    let drops = rates().draw(5, true, true, &mut replay(&c["drop_draws"]));
    assert_eq!(drops, drops_of(&c["drop_rows"]));
    // No draw for a zero rate: with CLIP-L's rate 0, CLIP-G's rows use CLIP-L's draws.
    let only_g = Sd3DropoutRates { clip_l: 0.0, ..rates() }.draw(2, true, false, &mut replay(&c["drop_draws"]));
    let d: Vec<f64> = c["drop_draws"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(only_g.clip_g, vec![d[0] < rates().clip_g, d[1] < rates().clip_g]);
    assert_eq!((only_g.clip_l, only_g.t5), (vec![false; 2], vec![false; 2]));

    let te = encoders(opts(false));
    let tokens = tokens_from(&io, "drop.", "_in");
    let ctx = no_lora();
    let out = te.encode_tokens(&tokens, refs(&ctx), false, false, Some(&drops)).unwrap();
    let lg = out.lg_out.as_ref().unwrap();
    let want = get(&io, "drop.lg_out");
    assert_close(lg, want, "lg_out with dropout");
    assert_close(out.t5_out.as_ref().unwrap(), get(&io, "drop.t5_out"), "t5_out with dropout");
    assert_close(out.lg_pooled.as_ref().unwrap(), get(&io, "drop.lg_pooled"), "lg_pooled with dropout");
    for (name, m) in [("l", &out.l_attn_mask), ("g", &out.g_attn_mask), ("t5", &out.t5_attn_mask)] {
        assert_eq!(as_i64(m.as_ref().unwrap()), as_i64(get(&io, &format!("drop.{name}_mask"))), "{name} mask");
    }
    for i in 0..5 {
        let zero = |t: &Tensor| max_abs(t) == 0.0;
        assert_eq!(zero(&lg.i((i, .., ..16)).unwrap()), drops.clip_l[i], "row {i} CLIP-L");
        assert_eq!(zero(&lg.i((i, .., 16..)).unwrap()), drops.clip_g[i], "row {i} CLIP-G");
        assert_eq!(zero(&out.t5_out.as_ref().unwrap().i(i).unwrap()), drops.t5[i], "row {i} T5");
    }
    // Every row dropped: the encoder does not run and the outputs are zeros.
    let all = Sd3Drops { clip_l: vec![true; 5], clip_g: vec![false; 5], t5: vec![true; 5] };
    let out = te.encode_tokens(&tokens, refs(&ctx), false, false, Some(&all)).unwrap();
    assert_eq!(max_abs(&out.lg_out.as_ref().unwrap().i((.., .., ..16)).unwrap()), 0.0);
    assert_eq!(max_abs(out.t5_out.as_ref().unwrap()), 0.0);
    assert_eq!(out.t5_out.as_ref().unwrap().dims(), &[5, 40, 48]);
}

#[test]
fn cached_output_dropout_matches_sd_scripts() {
    let io = io();
    let c = cases();
    let te = encoders(opts(false));
    let tokens = tokens_from(&io, "drop.", "_in");
    let ctx = no_lora();
    let cached: Sd3TextOutput = te.encode_tokens(&tokens, refs(&ctx), false, false, None).unwrap();
    let drops = rates().draw(5, cached.lg_out.is_some(), cached.t5_out.is_some(), &mut replay(&c["drop_cached_draws"]));
    assert_eq!(drops, drops_of(&c["drop_cached_rows"]));
    let out = cached.drop_cached(&drops).unwrap();
    for name in ["lg_out", "t5_out", "lg_pooled"] {
        let got = match name {
            "lg_out" => out.lg_out.as_ref(),
            "t5_out" => out.t5_out.as_ref(),
            _ => out.lg_pooled.as_ref(),
        };
        assert_close(got.unwrap(), get(&io, &format!("drop_cached.{name}")), name);
    }
    for (name, m) in [("l", &out.l_attn_mask), ("g", &out.g_attn_mask), ("t5", &out.t5_attn_mask)] {
        assert_eq!(as_i64(m.as_ref().unwrap()), as_i64(get(&io, &format!("drop_cached.{name}_mask"))), "{name} mask");
    }
    let lg = out.lg_out.as_ref().unwrap();
    for i in 0..5 {
        assert_eq!(max_abs(&lg.i((i, .., ..16)).unwrap()) == 0.0, drops.clip_l[i]);
        assert_eq!(max_abs(&out.lg_pooled.as_ref().unwrap().i((i, ..16)).unwrap()) == 0.0, drops.clip_l[i]);
    }
    let err = cached.drop_cached(&Sd3Drops::none(4)).unwrap_err().to_string();
    assert!(err.contains("batch has 5"), "{err}");
    // Outputs from a cache without CLIP-L's width cannot be split.
    let unknown = Sd3TextOutput { l_width: 0, ..cached.clone() };
    let err = unknown.drop_cached(&drops).unwrap_err().to_string();
    assert!(err.contains("l_width"), "{err}");
}

#[test]
fn each_encoder_takes_its_own_lora_context() {
    let te = encoders(opts(false));
    let (l, g, t5) = (te.clip_l_lora_targets(), te.clip_g_lora_targets(), te.t5_lora_targets());
    assert_eq!((l.len(), g.len(), t5.len()), (3 * 6, 3 * 6, 2 * 7));
    assert_eq!(g[0].kohya_name(CLIP_G_LORA_PREFIX), "lora_te2_text_model_encoder_layers_0_self_attn_k_proj");
    assert_eq!(
        t5[0].kohya_name(lorakit_models::sd3_text::T5_LORA_PREFIX),
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q"
    );

    // A LoRA on CLIP-G only changes CLIP-G's features and pooled vector.
    let mut set = LoraSet::new(0, &Device::Cpu).unwrap();
    for (k, t) in g.iter().enumerate() {
        let down = Tensor::randn(0f32, 0.5, (4, t.in_dim), &Device::Cpu).unwrap();
        let up = Tensor::randn(0f32, 0.5, (t.out_dim, 4), &Device::Cpu).unwrap();
        let name = format!("{}_{k}", t.kohya_name(CLIP_G_LORA_PREFIX));
        set.insert(t.path.clone(), LoraModule::from_weights(name, t.kind, down, up, Some(4.0), false).unwrap());
    }
    let plain = no_lora();
    let with_g = [ForwardCtx::default(), ForwardCtx::with_lora(Arc::new(set)), ForwardCtx::default()];
    let prompts = ["a photo of a cat"];
    let a = te.encode(&prompts, refs(&plain), None).unwrap();
    let b = te.encode(&prompts, refs(&with_g), None).unwrap();
    let (la, lb) = (a.lg_out.unwrap(), b.lg_out.unwrap());
    assert_eq!(rel_err(&lb.i((.., .., ..16)).unwrap(), &la.i((.., .., ..16)).unwrap()), 0.0);
    assert!(rel_err(&lb.i((.., .., 16..)).unwrap(), &la.i((.., .., 16..)).unwrap()) > 1e-3);
    assert_eq!(rel_err(b.t5_out.as_ref().unwrap(), a.t5_out.as_ref().unwrap()), 0.0);
}

#[test]
fn clip_l_without_projection_gets_sd_scripts_identity() {
    let path = dir().join("clip_l/model.safetensors");
    let mut w = Weights::from_safetensors(&path, DType::F32, &Device::Cpu).unwrap();
    let cfg = lorakit_models::clip::ClipTextConfig::from_json_file(&dir().join("clip_l/config.json")).unwrap();
    w.remove("text_projection.weight").unwrap();
    let m = clip_l_from_weights(&mut w, &cfg).unwrap();
    let ids = Tensor::new(&[[49406u32, 320, 2368, 49407, 49407]], &Device::Cpu).unwrap();
    let out = m.forward(&ids, &ForwardCtx::default()).unwrap();
    assert_eq!(rel_err(&out.text_embeds, &out.text.pooler_output), 0.0);
    // The default configs are sd-scripts' full-size ones.
    assert_eq!((clip_l_config().hidden_size, clip_g_config().hidden_size), (768, 1280));
    assert_eq!((clip_l_config().projection_dim, clip_g_config().projection_dim), (Some(768), Some(1280)));
}

/// A T5 of `d_model` with zero weights (only its shape matters to the checks).
fn zero_t5(d_model: usize) -> T5EncoderModel {
    let cfg = T5Config { d_model, d_kv: 8, d_ff: 16, num_layers: 1, num_heads: 2, ..T5Config::t5_v1_1_xxl() };
    let tensors = cfg
        .parameter_shapes()
        .into_iter()
        .map(|(k, s)| (k, Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap()))
        .collect();
    t5_from_weights(&Weights::new(tensors, "zero T5"), &cfg).unwrap()
}

#[test]
fn encoders_that_do_not_fit_are_refused() {
    let o = opts(false);
    // CLIP-L (16) + CLIP-G (24) = 40 features do not fit a 32-wide T5.
    let (l, g, _) = models();
    let err = Sd3TextEncoders::new(Some(l), Some(g), Some(zero_t5(32)), o).unwrap_err().to_string();
    assert!(err.contains("do not fit") && err.contains("32"), "{err}");
    // A 40-wide T5 fits exactly (no padding).
    let (l, g, _) = models();
    assert!(Sd3TextEncoders::new(Some(l), Some(g), Some(zero_t5(40)), o).is_ok());
    // One CLIP without the other.
    let (l, _, t5) = models();
    let err = Sd3TextEncoders::new(Some(l), None, Some(t5), o).unwrap_err().to_string();
    assert!(err.contains("CLIP-L and CLIP-G"), "{err}");
    assert!(Sd3TextEncoders::new(None, None, None, o).is_err());
    let (l, g, t5) = models();
    let bad = Sd3TextOptions { t5_max_length: 0, ..o };
    assert!(Sd3TextEncoders::new(Some(l), Some(g), Some(t5), bad).is_err());
    // T5 only (CLIP outputs cached): fine; the context then needs cached CLIP outputs.
    let te = Sd3TextEncoders::new(None, None, Some(models().2), o).unwrap();
    let ctx = no_lora();
    let out = te.encode(&["a cat"], refs(&ctx), None).unwrap();
    assert!(out.lg_out.is_none());
    let err = out.context_and_pooled().unwrap_err().to_string();
    assert!(err.contains("no CLIP part"), "{err}");
}

#[test]
fn outputs_that_do_not_fit_are_refused() {
    let te = encoders(opts(false));
    let ctx = no_lora();
    let out = te.encode(&["a cat", "a dog"], refs(&ctx), None).unwrap();
    let err = out.context_and_pooled_for(64).unwrap_err().to_string();
    assert!(err.contains("does not fit"), "{err}");
    let narrow = Sd3TextOutput { t5_out: None, ..out.clone() };
    let err = narrow.context_and_pooled_for(32).unwrap_err().to_string();
    assert!(err.contains("wider than the context"), "{err}");
    let err = te.encode(&["a"], refs(&ctx), Some(&Sd3Drops::none(3))).unwrap_err().to_string();
    assert!(err.contains("batch has 1"), "{err}");
    let mut tokens = te.tokenize(&["a", "b"]).unwrap();
    tokens.g_ids = tokens.g_ids.narrow(0, 0, 1).unwrap();
    let err = te.encode_tokens(&tokens, refs(&ctx), false, false, None).unwrap_err().to_string();
    assert!(err.contains("CLIP-G ids"), "{err}");
    let bad = Sd3DropoutRates { t5: 1.5, ..Default::default() };
    assert!(bad.validate().is_err());
    assert!(rates().validate().is_ok());
}
