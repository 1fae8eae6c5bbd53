//! Block-wise network arguments, LoRA+ param groups and max-norm regularisation against
//! sd-scripts' own functions (fixture from tools/reference/network_args_fixture.py).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use lorakit_lora::blocks::BlockLayout;
use lorakit_nn::lora::{apply_max_norm, LoraKind, LoraModule, LoraSet, LoraTarget, TargetGroup};
use lorakit_train::block_weights::{block_plan, BlockArgs};
use lorakit_train::param_groups::{plan_groups, ComponentNetwork, GroupRates};
use rand::{rngs::StdRng, SeedableRng};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/network/network_args.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn floats(v: &Value) -> Option<Vec<f64>> {
    v.as_array().map(|a| a.iter().map(|x| x.as_f64().expect("number")).collect())
}

fn ints(v: &Value) -> Option<Vec<usize>> {
    v.as_array().map(|a| a.iter().map(|x| x.as_u64().expect("integer") as usize).collect())
}

#[test]
fn block_weights_and_dims_match_sd_scripts() {
    let fx = fixture();
    for case in fx["blocks"].as_array().unwrap() {
        let layout = if case["layout"] == "sdxl" { BlockLayout::Sdxl } else { BlockLayout::Sd };
        let a = &case["args"];
        let s = |k: &str| a.get(k).and_then(|v| v.as_str());
        let args = BlockArgs {
            down_lr_weight: s("down_lr_weight"),
            mid_lr_weight: s("mid_lr_weight"),
            up_lr_weight: s("up_lr_weight"),
            block_lr_zero_threshold: s("block_lr_zero_threshold").map_or(0.0, |t| t.parse().unwrap()),
            block_dims: s("block_dims"),
            block_alphas: s("block_alphas"),
            conv_block_dims: s("conv_block_dims"),
            conv_block_alphas: s("conv_block_alphas"),
        };
        let plan = block_plan(
            layout,
            &args,
            case["network_dim"].as_u64().unwrap() as usize,
            case["network_alpha"].as_f64().unwrap(),
            case["conv_dim"].as_u64().map(|d| d as usize),
            case["conv_alpha"].as_f64().unwrap_or(1.0),
        )
        .unwrap_or_else(|e| panic!("{a}: {e}"));
        let want = floats(&case["lr_weights"]);
        match (&plan.lr_weights, &want) {
            (Some(got), Some(want)) => {
                assert_eq!(got.len(), want.len(), "{a}");
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() <= 1e-15, "{a}: lr weights {got:?} vs {want:?}");
                }
            }
            (None, None) => {}
            _ => panic!("{a}: lr weights {:?} vs {want:?}", plan.lr_weights),
        }
        match (&plan.ranks, case.get("dims")) {
            (Some(r), Some(dims)) => {
                assert_eq!(Some(r.dims.clone()), ints(dims), "{a}");
                assert_eq!(Some(r.alphas.clone()), floats(&case["alphas"]), "{a}");
                assert_eq!(r.conv_dims, ints(&case["conv_dims"]), "{a}");
                assert_eq!(r.conv_alphas, floats(&case["conv_alphas"]), "{a}");
            }
            (None, None) => {}
            (got, want) => panic!("{a}: ranks {got:?} vs {want:?}"),
        }
    }
}

#[test]
fn bad_block_arguments_are_errors_naming_the_key() {
    let plan = |args: BlockArgs| block_plan(BlockLayout::Sd, &args, 4, 1.0, None, 1.0);
    let e = plan(BlockArgs { down_lr_weight: Some("sinus"), ..Default::default() }).unwrap_err();
    assert!(e.contains("down_lr_weight") && e.contains("cosine, sine"), "{e}");
    let e = plan(BlockArgs { block_dims: Some("4,4,4"), ..Default::default() }).unwrap_err();
    assert!(e.contains("block_dims") && e.contains("25 values"), "{e}");
    let e = plan(BlockArgs { up_lr_weight: Some("1,x"), ..Default::default() }).unwrap_err();
    assert!(e.contains("up_lr_weight") && e.contains("`x`"), "{e}");
    let e = plan(BlockArgs { block_alphas: Some("1"), ..Default::default() }).unwrap_err();
    assert!(e.contains("block_alphas") && e.contains("block_dims"), "{e}");
}

fn target(path: &str, kind: LoraKind, in_dim: usize, out_dim: usize) -> LoraTarget {
    LoraTarget { path: path.into(), kohya_path: None, kind, in_dim, out_dim, group: TargetGroup::Attention }
}

fn set_of(names: &[&str], seed: u64) -> LoraSet {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut set = LoraSet::new(seed, &Device::Cpu).unwrap();
    for name in names {
        let t = target(name, LoraKind::Linear, 2, 2);
        set.insert(*name, LoraModule::new_trainable(*name, &t, 1, 1.0, DType::F32, &Device::Cpu, &mut rng).unwrap());
    }
    set
}

#[test]
fn param_groups_match_sd_scripts_prepare_optimizer_params() {
    let fx = fixture();
    let te_names =
        ["lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_te_text_model_encoder_layers_0_mlp_fc1"];
    let unet_names = [
        "lora_unet_down_blocks_0_attentions_0_proj_in",
        "lora_unet_down_blocks_0_attentions_1_proj_out",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_up_blocks_1_attentions_2_proj_in",
        "lora_unet_up_blocks_3_attentions_0_proj_out",
        "lora_unet_mid_block_attentions_0_proj_in",
        "lora_unet_down_blocks_0_attentions_0_proj_out",
    ];
    let te = set_of(&te_names, 1);
    let unet = set_of(&unet_names, 2);
    let mut var_names = HashMap::new();
    for set in [&te, &unet] {
        for m in set.modules() {
            var_names.insert(m.down().id(), format!("{}.lora_down", m.name()));
            var_names.insert(m.up().id(), format!("{}.lora_up", m.name()));
        }
    }
    for case in fx["groups"].as_array().unwrap() {
        let c = &case["case"];
        let ratio = c["ratio"].as_f64();
        let block_lr_weights = c["block_lr"].as_object().map(|b| {
            let s = |k: &str| b.get(k).and_then(|v| v.as_str());
            let args = BlockArgs {
                down_lr_weight: s("down_lr_weight"),
                mid_lr_weight: s("mid_lr_weight"),
                up_lr_weight: s("up_lr_weight"),
                ..Default::default()
            };
            (BlockLayout::Sd, block_plan(BlockLayout::Sd, &args, 4, 1.0, None, 1.0).unwrap().lr_weights.unwrap())
        });
        let rates = GroupRates {
            text_encoder_lrs: vec![c["te_lr"].as_f64().unwrap()],
            unet_lr: c["unet_lr"].as_f64().unwrap(),
            text_encoder_plus_ratio: c["te_ratio"].as_f64().or(ratio),
            unet_plus_ratio: c["unet_ratio"].as_f64().or(ratio),
            block_lr_weights,
        };
        let networks = [
            ComponentNetwork { component: 0, is_text_encoder: true, set: &te },
            ComponentNetwork { component: 1, is_text_encoder: false, set: &unet },
        ];
        let got = plan_groups(&networks, &rates);
        let want = case["groups"].as_array().unwrap();
        let got_names: Vec<&str> = got.iter().map(|g| g.group.name.as_str()).collect();
        let want_names: Vec<&str> = want.iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert_eq!(got_names, want_names, "{c}");
        for (g, w) in got.iter().zip(want) {
            let lr = w["lr"].as_f64().unwrap();
            assert!((g.group.lr - lr).abs() <= 1e-18, "{c}: group {} lr {} vs {lr}", g.group.name, g.group.lr);
            let params: Vec<&str> = g.group.vars.iter().map(|v| var_names[&v.id()].as_str()).collect();
            let want_params: Vec<&str> = w["params"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
            assert_eq!(params, want_params, "{c}: group {}", g.group.name);
            let te_group = g.group.name.starts_with("textencoder");
            assert!(g.components.iter().all(|&comp| comp == if te_group { 0 } else { 1 }));
        }
    }
}

fn tensor(values: &Value, shape: &Value) -> Tensor {
    let v: Vec<f32> = values.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let shape: Vec<usize> = ints(shape).unwrap();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn max_norm_matches_sd_scripts() {
    let fx = fixture();
    for case in fx["max_norm"].as_array().unwrap() {
        let mut te = LoraSet::new(0, &Device::Cpu).unwrap();
        let mut unet = LoraSet::new(0, &Device::Cpu).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        for m in case["modules"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap();
            let down = tensor(&m["down"], &m["down_shape"]);
            let up = tensor(&m["up"], &m["up_shape"]);
            let (rank, out_dim, in_dim) = (down.dims()[0], up.dims()[0], down.dims()[1]);
            let kind = match down.dims().len() {
                2 => LoraKind::Linear,
                _ => LoraKind::Conv { kernel: down.dims()[2], stride: 1, padding: down.dims()[2] / 2 },
            };
            let t = target(name, kind, in_dim, out_dim);
            let alpha = m["alpha"].as_f64().unwrap();
            let module = LoraModule::new_trainable(name, &t, rank, alpha, DType::F32, &Device::Cpu, &mut rng).unwrap();
            module.down().set(&down).unwrap();
            module.up().set(&up).unwrap();
            let set = if name.starts_with("lora_te") { &mut te } else { &mut unet };
            set.insert(name, module);
        }
        let stats = apply_max_norm(&[&unet, &te], case["max_norm"].as_f64().unwrap()).unwrap().unwrap();
        assert_eq!(stats.keys_scaled as u64, case["keys_scaled"].as_u64().unwrap());
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
        assert!(rel(stats.average_norm, case["average_norm"].as_f64().unwrap()) < 1e-6, "{stats:?}");
        assert!(rel(stats.max_norm, case["max_key_norm"].as_f64().unwrap()) < 1e-6, "{stats:?}");
        for after in case["after"].as_array().unwrap() {
            let name = after["name"].as_str().unwrap();
            let set = if name.starts_with("lora_te") { &te } else { &unet };
            let m = set.modules().iter().find(|m| m.name() == name).unwrap();
            for (var, key) in [(m.down(), "down"), (m.up(), "up")] {
                let got = var.as_detached_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (g, w) in got.iter().zip(after[key].as_array().unwrap()) {
                    let w = w.as_f64().unwrap() as f32;
                    assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}.{key}: {g} vs {w}");
                }
            }
        }
    }
}
