//! Trainable LyCORIS LoHa/LoKr/LoCon modules against LyCORIS 3.1.0's own modules
//! (tools/reference/lycoris_train_fixture.py → tests/fixtures/reference/lycoris_train/): factor
//! names and shapes of a fresh module, the layer's output with the module applied, the gradient
//! of every factor and of the input, the saved tensors (keys, values, alpha) and max-norm.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::lora_inject::state_dict;
use lorakit_nn::gradcheck::{check, pseudo_random};
use lorakit_nn::layers::{Conv2d, ForwardCtx, Linear};
use lorakit_nn::lora::{apply_max_norm, LoraKind, LoraSet, LoraTarget, TargetGroup};
use lorakit_nn::lycoris::{factorization, LokrOptions, LycorisAlgo, LycorisModule};
use rand::{rngs::StdRng, SeedableRng};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/lycoris_train")
}

struct Fixture {
    cases: serde_json::Map<String, Value>,
    tensors: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let dir = fixture_dir();
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("cases.safetensors"), &Device::Cpu).unwrap();
    Fixture { cases: cases.as_object().unwrap().clone(), tensors }
}

impl Fixture {
    fn t(&self, key: &str) -> Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("fixture tensor {key} missing")).clone()
    }
}

/// The case's target, algorithm, dim and alpha.
fn case_setup(case: &Value) -> (LoraTarget, LycorisAlgo, usize, f64) {
    let layer: Vec<Value> = case["layer"].as_array().unwrap().clone();
    let n = |i: usize| layer[i].as_u64().unwrap() as usize;
    let (kind, in_dim, out_dim) = if layer[0] == "linear" {
        (LoraKind::Linear, n(1), n(2))
    } else {
        (LoraKind::Conv { kernel: n(3), stride: n(4), padding: n(5) }, n(1), n(2))
    };
    let target =
        LoraTarget { path: "layer".into(), kohya_path: None, kind, in_dim, out_dim, group: TargetGroup::Attention };
    let args = &case["args"];
    let algo = match case["algo"].as_str().unwrap() {
        "loha" => LycorisAlgo::LoHa,
        "kron" => LycorisAlgo::LoKr(LokrOptions {
            factor: args["factor"].as_i64().unwrap_or(-1),
            decompose_both: args["decompose_both"].as_bool().unwrap_or(false),
            full_matrix: args["full_matrix"].as_bool().unwrap_or(false),
        }),
        "locon" => LycorisAlgo::LoCon,
        other => panic!("unknown algo {other}"),
    };
    (target, algo, args["lora_dim"].as_u64().unwrap() as usize, args["alpha"].as_f64().unwrap())
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn fresh_modules_have_lycoris_factor_names_shapes_and_alpha() {
    let f = fixture();
    for (name, case) in &f.cases {
        let (target, algo, dim, alpha) = case_setup(case);
        let mut rng = StdRng::seed_from_u64(0);
        let m =
            LycorisModule::new_trainable(name, &target, algo, dim, alpha, DType::F32, &Device::Cpu, &mut rng).unwrap();
        let fresh = &case["fresh"];
        for (key, var) in m.factors() {
            let want: Vec<usize> =
                fresh["shapes"][key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(var.dims(), want.as_slice(), "{name}.{key}");
        }
        assert_eq!(m.factors().len() + 1, fresh["keys"].as_array().unwrap().len(), "{name}: factor count");
        assert_eq!(m.alpha(), fresh["alpha"].as_f64().unwrap(), "{name}: alpha");
        assert!((m.scale() - fresh["scale"].as_f64().unwrap()).abs() < 1e-12, "{name}: scale");
    }
}

#[test]
fn factorization_matches_lycoris_table() {
    // Values of LyCORIS 3.1.0's `factorization` (its docstring's table says 12 × 30 for 360 with
    // factor 16; the function returns 15 × 24).
    for (dim, factor, want) in [
        (127, -1, (1, 127)),
        (128, -1, (8, 16)),
        (128, 4, (4, 32)),
        (250, -1, (10, 25)),
        (250, 8, (5, 50)),
        (360, 8, (8, 45)),
        (360, 16, (15, 24)),
        (512, 2, (2, 256)),
        (1024, 16, (16, 64)),
        (1024, -1, (32, 32)),
        (320, -1, (16, 20)),
        (320, 8, (8, 40)),
        (1280, 4, (4, 320)),
        (768, -1, (24, 32)),
        (77, 3, (1, 77)),
        (4, -1, (2, 2)),
    ] {
        assert_eq!(factorization(dim, factor), want, "factorization({dim}, {factor})");
    }
}

#[test]
fn initialisation_follows_lycoris() {
    let mut rng = StdRng::seed_from_u64(3);
    let target = LoraTarget {
        path: "l".into(),
        kohya_path: None,
        kind: LoraKind::Linear,
        in_dim: 256,
        out_dim: 128,
        group: TargetGroup::Attention,
    };
    let stats = |t: &Tensor| -> (f64, f64, f64) {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var.sqrt(), v.iter().fold(0f64, |m, x| m.max(x.abs() as f64)))
    };
    let loha =
        LycorisModule::new_trainable("h", &target, LycorisAlgo::LoHa, 8, 4.0, DType::F32, &Device::Cpu, &mut rng)
            .unwrap();
    for (key, var) in loha.factors() {
        let (mean, std, max) = stats(var.as_tensor());
        match *key {
            "hada_w1_a" => assert!((std - 0.1).abs() < 0.01 && mean.abs() < 0.01, "{key}: std {std}"),
            "hada_w1_b" | "hada_w2_b" => assert!((std - 1.0).abs() < 0.05 && mean.abs() < 0.05, "{key}: std {std}"),
            "hada_w2_a" => assert_eq!(max, 0.0, "{key} starts at zero"),
            other => panic!("unexpected {other}"),
        }
    }
    let opts = LokrOptions { factor: 8, decompose_both: true, full_matrix: false };
    let target = LoraTarget {
        path: "l".into(),
        kohya_path: None,
        kind: LoraKind::Linear,
        in_dim: 512,
        out_dim: 1024,
        group: TargetGroup::Attention,
    };
    let lokr =
        LycorisModule::new_trainable("k", &target, LycorisAlgo::LoKr(opts), 2, 1.0, DType::F32, &Device::Cpu, &mut rng)
            .unwrap();
    for (key, var) in lokr.factors() {
        let (_, std, max) = stats(var.as_tensor());
        let fan_in = var.dims()[1] as f64;
        match *key {
            // Kaiming uniform (a = √5): U(±1/√fan_in), std = bound/√3.
            "lokr_w1_a" | "lokr_w1_b" | "lokr_w2_a" => {
                assert!(max <= 1.0 / fan_in.sqrt() + 1e-7, "{key}: max {max}");
                if var.elem_count() >= 16 {
                    assert!((std * 3f64.sqrt() * fan_in.sqrt() - 1.0).abs() < 0.3, "{key}: std {std}");
                }
            }
            "lokr_w2_b" => assert_eq!(max, 0.0, "{key} starts at zero"),
            other => panic!("unexpected {other}"),
        }
    }
    // The model is unchanged at step 0.
    for m in [&loha, &lokr] {
        assert_eq!(stats(&m.weight_change().unwrap()).2, 0.0, "{}: ΔW at init", m.name());
    }
}

/// A frozen layer with the case's weights and the module attached, applied with dropout hooks
/// enabled (train mode, as the fixture ran).
fn apply_case(f: &Fixture, name: &str, set: &Arc<LoraSet>, target: &LoraTarget, x: &Tensor) -> Tensor {
    let (w, b) = (f.t(&format!("{name}.weight")), Some(f.t(&format!("{name}.bias"))));
    let ctx = ForwardCtx { lora: Some(set.clone()), train: true, gradient_checkpointing: false };
    match target.kind {
        LoraKind::Linear => Linear::new("layer", w, b).unwrap().forward(x, &ctx).unwrap(),
        LoraKind::Conv { stride, padding, .. } => {
            Conv2d::new("layer", w, b, stride, padding).unwrap().forward(x, &ctx).unwrap()
        }
    }
}

fn case_set(f: &Fixture, name: &str, case: &Value) -> (Arc<LoraSet>, LoraTarget) {
    let (target, algo, dim, alpha) = case_setup(case);
    let factors: Vec<(&'static str, Tensor)> = LycorisModule::factor_names(algo, &target, dim)
        .into_iter()
        .map(|(key, _)| (key, f.t(&format!("{name}.p.{key}"))))
        .collect();
    let module = LycorisModule::from_factors(name, &target, algo, dim, alpha, factors, true).unwrap();
    module.set_multiplier(case["multiplier"].as_f64().unwrap());
    let mut set = LoraSet::new(0, &Device::Cpu).unwrap();
    set.insert_lycoris("layer", module);
    (Arc::new(set), target)
}

#[test]
fn forward_and_gradients_match_lycoris() {
    let f = fixture();
    for (name, case) in &f.cases {
        let (set, target) = case_set(&f, name, case);
        let x = candle_core::Var::from_tensor(&f.t(&format!("{name}.x"))).unwrap();
        let y = apply_case(&f, name, &set, &target, x.as_tensor());
        let err = max_rel(&y, &f.t(&format!("{name}.y")));
        assert!(err < 1e-5, "{name}: output differs from LyCORIS by {err}");
        let grads = (y * f.t(&format!("{name}.g"))).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(&x).expect("input gradient");
        let err = max_rel(gx, &f.t(&format!("{name}.grad.x")));
        assert!(err < 1e-5, "{name}: input gradient differs by {err}");
        let module = &set.lycoris_modules()[0];
        for (key, var) in module.factors() {
            let g = set.grad(&grads, var).unwrap().unwrap_or_else(|| panic!("{name}.{key}: no gradient"));
            let err = max_rel(&g, &f.t(&format!("{name}.grad.{key}")));
            assert!(err < 1e-5, "{name}.{key}: gradient differs from LyCORIS by {err}");
        }
    }
}

fn assert_saved_equals(f: &Fixture, name: &str, case: &Value, set: &LoraSet, prefix: &str) {
    let saved = state_dict(&[set]).unwrap();
    let keys: Vec<String> =
        case["saved_keys"].as_array().unwrap().iter().map(|k| format!("{name}.{}", k.as_str().unwrap())).collect();
    let mut ours: Vec<String> = saved.keys().cloned().collect();
    ours.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(ours, want, "{name}: saved keys");
    for key in &keys {
        let suffix = &key[name.len() + 1..];
        let t = &saved[key];
        let ours = Tensor::from_vec(t.data.clone(), t.shape.as_slice(), &Device::Cpu).unwrap();
        let err = max_rel(&ours, &f.t(&format!("{name}.{prefix}.{suffix}")));
        assert!(err < 1e-5, "{name}: saved {suffix} ({prefix}) differs by {err}");
    }
}

#[test]
fn saved_tensors_and_max_norm_match_lycoris() {
    let f = fixture();
    for (name, case) in &f.cases {
        let (set, _) = case_set(&f, name, case);
        assert_eq!(case["alpha_dtype"], "torch.float32", "{name}: LyCORIS saves alpha as f32");
        assert_saved_equals(&f, name, case, &set, "sd");
        let stats = apply_max_norm(&[&set], case["max_norm"].as_f64().unwrap()).unwrap().unwrap();
        let scaled = case["max_norm_scaled"].as_bool().unwrap();
        assert_eq!(stats.keys_scaled, usize::from(scaled), "{name}: keys scaled");
        if scaled {
            let want = case["max_norm_norm"].as_f64().unwrap();
            assert!((stats.max_norm - want).abs() < 1e-5 * want, "{name}: norm {} vs {want}", stats.max_norm);
        }
        assert_saved_equals(&f, name, case, &set, "maxnorm");
    }
}

#[test]
fn loha_lokr_and_locon_gradients_pass_f64_gradcheck() {
    let rnd = |shape: &[usize], seed| pseudo_random(shape, seed).unwrap();
    let rng = std::sync::Mutex::new(StdRng::seed_from_u64(0));
    let cases: [(LoraKind, LycorisAlgo, usize); 5] = [
        (LoraKind::Conv { kernel: 3, stride: 2, padding: 1 }, LycorisAlgo::LoCon, 2),
        (LoraKind::Linear, LycorisAlgo::LoHa, 2),
        (LoraKind::Conv { kernel: 3, stride: 2, padding: 1 }, LycorisAlgo::LoHa, 2),
        (LoraKind::Linear, LycorisAlgo::LoKr(LokrOptions { factor: 2, decompose_both: true, full_matrix: false }), 1),
        (LoraKind::Conv { kernel: 3, stride: 1, padding: 1 }, LycorisAlgo::LoKr(LokrOptions::default()), 1),
    ];
    for (i, (kind, algo, dim)) in cases.into_iter().enumerate() {
        let target = LoraTarget {
            path: "l".into(),
            kohya_path: None,
            kind,
            in_dim: 8,
            out_dim: 6,
            group: TargetGroup::Attention,
        };
        let shapes = LycorisModule::factor_names(algo, &target, dim);
        let x_shape: Vec<usize> = match kind {
            LoraKind::Linear => vec![2, 3, 8],
            LoraKind::Conv { .. } => vec![2, 8, 5, 5],
        };
        let mut inputs = vec![rnd(&x_shape, 10 + i as u64)];
        inputs.extend(shapes.iter().enumerate().map(|(j, (_, s))| rnd(s, 20 + 7 * i as u64 + j as u64)));
        let f = |t: &[Tensor]| -> candle_core::Result<Tensor> {
            let factors = shapes.iter().zip(&t[1..]).map(|((k, _), t)| (*k, t.clone())).collect();
            let m = LycorisModule::from_factors("m", &target, algo, dim, 1.5, factors, true)?;
            m.set_multiplier(0.7);
            Ok(m.forward(&t[0], false, &rng)?.expect("no module dropout"))
        };
        let report = check(f, &inputs, 1e-5).unwrap();
        assert!(report.max_magnitude > 1e-3, "{kind:?} {algo:?}: zero gradient");
        assert!(report.relative_error() < 1e-6, "{kind:?} {algo:?}: {report:?}");
    }
}

#[test]
fn rank_dropout_zeroes_whole_output_rows_without_rescaling_and_module_dropout_skips() {
    use lorakit_nn::lora::LoraDropout;
    let target = LoraTarget {
        path: "l".into(),
        kohya_path: None,
        kind: LoraKind::Linear,
        in_dim: 6,
        out_dim: 40,
        group: TargetGroup::Attention,
    };
    let shapes = LycorisModule::factor_names(LycorisAlgo::LoHa, &target, 2);
    let factors: Vec<(&'static str, Tensor)> = shapes
        .iter()
        .enumerate()
        .map(|(j, (k, s))| (*k, pseudo_random(s, 40 + j as u64).unwrap().to_dtype(DType::F32).unwrap()))
        .collect();
    let x = pseudo_random(&[3, 6], 50).unwrap().to_dtype(DType::F32).unwrap();
    let rng = std::sync::Mutex::new(StdRng::seed_from_u64(1));
    let plain = LycorisModule::from_factors("m", &target, LycorisAlgo::LoHa, 2, 1.0, factors.clone(), true).unwrap();
    let full: Vec<Vec<f32>> = plain.forward(&x, true, &rng).unwrap().unwrap().to_vec2().unwrap();
    let dropped = LycorisModule::from_factors("m", &target, LycorisAlgo::LoHa, 2, 1.0, factors.clone(), true)
        .unwrap()
        .with_dropout(LoraDropout { rank: 0.5, ..Default::default() });
    let y: Vec<Vec<f32>> = dropped.forward(&x, true, &rng).unwrap().unwrap().to_vec2().unwrap();
    let mut kept = 0;
    for o in 0..40 {
        let column_kept = (0..3).all(|b| y[b][o] == full[b][o]);
        let column_zero = (0..3).all(|b| y[b][o] == 0.0);
        assert!(column_kept ^ column_zero, "output {o}: a row of ΔW is either kept unscaled or dropped");
        kept += usize::from(column_kept);
    }
    assert!((8..=32).contains(&kept), "{kept} of 40 rows kept at p = 0.5");
    // Without training the hooks are off.
    let y: Vec<Vec<f32>> = dropped.forward(&x, false, &rng).unwrap().unwrap().to_vec2().unwrap();
    assert_eq!(y, full);
    let skipping = LycorisModule::from_factors("m", &target, LycorisAlgo::LoHa, 2, 1.0, factors, true)
        .unwrap()
        .with_dropout(LoraDropout { module: 0.5, ..Default::default() });
    let skipped = (0..200).filter(|_| skipping.forward(&x, true, &rng).unwrap().is_none()).count();
    assert!((60..=140).contains(&skipped), "module dropout skipped {skipped} of 200 calls at p = 0.5");
}

fn targets() -> Vec<LoraTarget> {
    let t = |path: &str, kind, in_dim, out_dim, group| LoraTarget {
        path: path.into(),
        kohya_path: None,
        kind,
        in_dim,
        out_dim,
        group,
    };
    let conv3 = LoraKind::Conv { kernel: 3, stride: 1, padding: 1 };
    let conv1 = LoraKind::Conv { kernel: 1, stride: 1, padding: 0 };
    vec![
        t("down_blocks.0.attentions.0.proj_in", conv1, 32, 32, TargetGroup::Attention),
        t(
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            LoraKind::Linear,
            32,
            32,
            TargetGroup::Attention,
        ),
        t("down_blocks.0.resnets.0.conv1", conv3, 32, 32, TargetGroup::ConvBlock),
        t("down_blocks.0.resnets.0.time_emb_proj", LoraKind::Linear, 128, 32, TargetGroup::ConvBlock),
        t("down_blocks.0.resnets.0.conv_shortcut", conv1, 32, 64, TargetGroup::ConvBlock),
        t("down_blocks.0.downsamplers.0.conv", conv3, 32, 32, TargetGroup::ConvBlock),
        t("conv_in", conv3, 4, 32, TargetGroup::Named),
        t("time_embedding.linear_1", LoraKind::Linear, 32, 128, TargetGroup::Named),
    ]
}

fn names(set: &LoraSet) -> Vec<String> {
    let mut v: Vec<String> = set.lycoris_modules().iter().map(|m| format!("{}:{}", m.name(), m.dim())).collect();
    v.extend(set.modules().iter().map(|m| format!("{}:{}", m.name(), m.rank())));
    v.sort();
    v
}

#[test]
fn lycoris_presets_pick_lycoris_modules_and_conv_dim_defaults_to_network_dim() {
    use lorakit_models::lora_inject::{create_network, LycorisPreset, NetworkKind, NetworkSpec};
    let spec = |preset, conv_rank| NetworkSpec {
        kind: NetworkKind::Lycoris { algo: LycorisAlgo::LoHa, preset },
        rank: 4,
        alpha: 1.0,
        conv_rank,
        conv_alpha: 1.0,
        ..Default::default()
    };
    let build =
        |s: &NetworkSpec| names(&create_network(&targets(), "lora_unet", s, DType::F32, &Device::Cpu, 0).unwrap());
    let p = "lora_unet_down_blocks_0_";
    let named = |mut v: Vec<String>, extra: &[&str]| {
        v.extend(extra.iter().map(|n| n.to_string()));
        v.sort();
        v
    };
    // full: every target; k×k convs with network_dim when conv_dim is unset (LyCORIS' default).
    assert_eq!(
        build(&spec(LycorisPreset::Full, None)),
        named(
            [
                "attentions_0_proj_in:4",
                "attentions_0_transformer_blocks_0_attn1_to_q:4",
                "downsamplers_0_conv:4",
                "resnets_0_conv1:4",
                "resnets_0_conv_shortcut:4",
                "resnets_0_time_emb_proj:4"
            ]
            .map(|n| format!("{p}{n}"))
            .to_vec(),
            &["lora_unet_conv_in:4", "lora_unet_time_embedding_linear_1:4"]
        )
    );
    let with_conv = build(&spec(LycorisPreset::Full, Some(2)));
    assert!(
        with_conv.contains(&format!("{p}resnets_0_conv1:2"))
            && with_conv.contains(&format!("{p}resnets_0_conv_shortcut:4"))
    );
    assert!(with_conv.contains(&"lora_unet_conv_in:2".to_string()), "{with_conv:?}");
    // full-lin: no k×k conv; attn-mlp: the transformer only.
    assert_eq!(
        build(&spec(LycorisPreset::FullLin, Some(2))),
        named(
            [
                "attentions_0_proj_in:4",
                "attentions_0_transformer_blocks_0_attn1_to_q:4",
                "resnets_0_conv_shortcut:4",
                "resnets_0_time_emb_proj:4"
            ]
            .map(|n| format!("{p}{n}"))
            .to_vec(),
            &["lora_unet_time_embedding_linear_1:4"]
        )
    );
    // networks.lora never adapts the named layers.
    let lora = NetworkSpec { rank: 4, conv_rank: Some(2), ..Default::default() };
    assert!(build(&lora).iter().all(|n| !n.contains("conv_in") && !n.contains("time_embedding")));
    assert_eq!(
        build(&spec(LycorisPreset::AttnMlp, Some(2))),
        ["attentions_0_proj_in:4", "attentions_0_transformer_blocks_0_attn1_to_q:4"].map(|n| format!("{p}{n}"))
    );
}

#[test]
fn ranks_above_a_layers_dimensions_are_refused_before_allocating_but_lokr_full_dimension_is_not() {
    use lorakit_models::lora_inject::{create_network, LycorisPreset, NetworkKind, NetworkSpec};
    let lora = NetworkSpec { rank: 33, ..Default::default() };
    let err = create_network(&targets(), "lora_unet", &lora, DType::F32, &Device::Cpu, 0).err().unwrap().to_string();
    assert!(
        err.contains("lora_unet_down_blocks_0_attentions_0_proj_in") && err.contains("network.network_dim"),
        "{err}"
    );
    let locon = NetworkSpec { rank: 4, conv_rank: Some(100_000), ..Default::default() };
    let err = create_network(&targets(), "lora_unet", &locon, DType::F32, &Device::Cpu, 0).err().unwrap().to_string();
    assert!(err.contains("resnets_0_conv1") && err.contains("network.conv_dim") && err.contains("32 → 32"), "{err}");
    let loha = NetworkSpec {
        kind: NetworkKind::Lycoris { algo: LycorisAlgo::LoHa, preset: LycorisPreset::Full },
        rank: 100_000,
        ..Default::default()
    };
    let err = create_network(&targets(), "lora_unet", &loha, DType::F32, &Device::Cpu, 0).err().unwrap().to_string();
    assert!(err.contains("LoHa") && err.contains("network.network_dim"), "{err}");
    // LyCORIS' "full dimension" LoKr: both factors full, alpha = dim, scale 1.
    let lokr = NetworkSpec {
        kind: NetworkKind::Lycoris { algo: LycorisAlgo::LoKr(LokrOptions::default()), preset: LycorisPreset::Full },
        rank: 100_000,
        alpha: 1.0,
        ..Default::default()
    };
    let set = create_network(&targets(), "lora_unet", &lokr, DType::F32, &Device::Cpu, 0).unwrap();
    for m in set.lycoris_modules() {
        let keys: Vec<&str> = m.factors().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["lokr_w1", "lokr_w2"], "{}", m.name());
        assert_eq!((m.alpha(), m.scale()), (100_000.0, 1.0), "{}", m.name());
    }
}
