//! The WD v3 SwinV2 and EVA02 backbones against timm 1.0.31: tiny models built by timm with the
//! WD architectures (`swinv2_base_window8_256`, `eva02_large_patch14_448`) and small
//! `model_args`, every parameter re-initialised, logits on fixed random batches of 2.
//! Fixtures: tests/fixtures/reference/wd14_swinv2_eva02/ (tools/reference/wd14_swinv2_eva02.py).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use lorakit_caption::wd14::eva02::{Eva02, Eva02Config, Pool};
use lorakit_caption::wd14::swinv2::{SwinV2, SwinV2Config};
use serde_json::{json, Value};

fn fixture(model: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference/wd14_swinv2_eva02")
        .join(model)
        .join(file)
}

fn tensors(model: &str, file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(model, file), &Device::Cpu).unwrap()
}

fn config(model: &str, file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(model, file)).unwrap()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    let diff = max_abs_diff(got, want);
    assert!(diff <= 1e-4, "{what}: max |Δ| = {diff} vs timm");
    // The two images of the batch differ, so a model that mixed or dropped batch rows would fail above;
    // make sure the reference itself is not degenerate.
    let rows = want.to_vec2::<f32>().unwrap();
    assert!(rows[0].iter().zip(&rows[1]).any(|(a, b)| (a - b).abs() > 1e-2), "{what}: degenerate reference");
}

#[test]
fn swinv2_matches_timm() {
    let cfg = SwinV2Config::from_timm(&config("swinv2", "config.json")).unwrap();
    assert_eq!((cfg.img_size, cfg.embed_dim, cfg.window_sizes.clone(), cfg.num_classes), (64, 16, vec![4; 4], 10));
    let model = SwinV2::load(&tensors("swinv2", "model.safetensors"), &cfg).unwrap();
    let r = tensors("swinv2", "reference.safetensors");
    assert_close(&model.forward(&r["x"]).unwrap(), &r["logits"], "swinv2 64×64");
    // Strict like timm: another size is refused with the size the model takes.
    let err = model.forward(&r["x_80"]).unwrap_err().to_string();
    assert!(err.contains("80×80") && err.contains("64×64"), "{err}");
}

#[test]
fn swinv2_dynamic_size_matches_timm() {
    let cfg = SwinV2Config::from_timm(&config("swinv2", "config_dynamic.json")).unwrap();
    assert!(cfg.dynamic_img_size);
    let model = SwinV2::load(&tensors("swinv2", "model.safetensors"), &cfg).unwrap();
    let r = tensors("swinv2", "reference.safetensors");
    assert_close(&model.forward(&r["x"]).unwrap(), &r["logits"], "swinv2 dynamic 64×64");
    assert_close(&model.forward(&r["x_80"]).unwrap(), &r["logits_80"], "swinv2 dynamic 80×80 (padded windows)");
}

#[test]
fn eva02_matches_timm() {
    let cfg = Eva02Config::from_timm(&config("eva02", "config.json")).unwrap();
    assert_eq!((cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.ref_feat_shape), (56, 14, 32, Some((2, 2))));
    assert!(!cfg.qkv_fused && cfg.scale_mlp && cfg.fc_norm && cfg.global_pool == Pool::Avg);
    let model = Eva02::load(&tensors("eva02", "model.safetensors"), &cfg).unwrap();
    let r = tensors("eva02", "reference.safetensors");
    assert_close(&model.forward(&r["x"]).unwrap(), &r["logits"], "eva02");
    let other = Tensor::zeros((1, 3, 70, 70), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&other).unwrap_err().to_string();
    assert!(err.contains("70×70") && err.contains("56×56"), "{err}");
}

fn load_err<E: std::fmt::Display>(r: Result<impl Sized, E>) -> String {
    match r {
        Ok(_) => panic!("loaded a broken checkpoint"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let cfg = SwinV2Config::from_timm(&config("swinv2", "config.json")).unwrap();
    let mut t = tensors("swinv2", "model.safetensors");
    t.remove("layers.2.blocks.1.attn.cpb_mlp.2.weight");
    let err = load_err(SwinV2::load(&t, &cfg));
    assert!(err.contains("layers.2.blocks.1.attn.cpb_mlp.2.weight"), "{err}");
    let mut t = tensors("swinv2", "model.safetensors");
    t.insert(
        "layers.1.downsample.reduction.weight".into(),
        Tensor::zeros((32, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = load_err(SwinV2::load(&t, &cfg));
    assert!(
        err.contains("layers.1.downsample.reduction.weight") && err.contains("[32, 32]") && err.contains("[32, 64]"),
        "{err}"
    );

    let cfg = Eva02Config::from_timm(&config("eva02", "config.json")).unwrap();
    let mut t = tensors("eva02", "model.safetensors");
    t.remove("blocks.1.mlp.fc1_g.weight");
    let err = load_err(Eva02::load(&t, &cfg));
    assert!(err.contains("blocks.1.mlp.fc1_g.weight"), "{err}");
    let mut t = tensors("eva02", "model.safetensors");
    t.insert("pos_embed".into(), Tensor::zeros((1, 16, 32), candle_core::DType::F32, &Device::Cpu).unwrap());
    let err = load_err(Eva02::load(&t, &cfg));
    assert!(err.contains("pos_embed") && err.contains("[1, 16, 32]") && err.contains("[1, 17, 32]"), "{err}");
}

/// The configs of the real HF files (SmilingWolf/wd-swinv2-tagger-v3, wd-eva02-large-tagger-v3):
/// the architecture's timm defaults with the file's `model_args` on top.
#[test]
fn wd_v3_configs_resolve_to_timm_defaults() {
    let pretrained =
        json!({"input_size": [3, 448, 448], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": 10861});
    let swin = SwinV2Config::from_timm(&json!({
        "architecture": "swinv2_base_window8_256", "num_classes": 10861, "global_pool": "avg",
        "model_args": {"img_size": 448, "window_size": 14, "act_layer": "gelu_tanh"}, "pretrained_cfg": pretrained,
    }))
    .unwrap();
    assert_eq!(
        (swin.img_size, swin.patch_size, swin.embed_dim, swin.num_classes, swin.mlp_ratio),
        (448, 4, 128, 10861, 4.0)
    );
    assert_eq!((swin.depths, swin.num_heads, swin.window_sizes), (vec![2, 2, 18, 2], vec![4, 8, 16, 32], vec![14; 4]));
    assert_eq!(swin.pretrained_window_sizes, vec![0; 4]);
    assert_eq!(swin.act, lorakit_caption::wd14::config::Activation::GeluTanh);
    assert!(!swin.dynamic_img_size && !swin.always_partition && swin.qkv_bias);

    let eva = Eva02Config::from_timm(&json!({
        "architecture": "eva02_large_patch14_448", "num_classes": 10861, "global_pool": "avg",
        "model_args": {"img_size": 448, "ref_feat_shape": [32, 32]}, "pretrained_cfg": pretrained,
    }))
    .unwrap();
    assert_eq!((eva.img_size, eva.patch_size, eva.embed_dim, eva.depth, eva.num_heads), (448, 14, 1024, 24, 16));
    assert_eq!(((1024.0 * eva.mlp_ratio) as usize, eva.ref_feat_shape, eva.num_classes), (2730, Some((32, 32)), 10861));
    assert!(
        !eva.qkv_fused && eva.qkv_bias && eva.swiglu_mlp && eva.scale_mlp && eva.class_token && eva.use_rot_pos_emb
    );
    assert!(eva.fc_norm && eva.global_pool == Pool::Avg && !eva.scale_attn_inner);

    let err = Eva02Config::from_timm(
        &json!({"architecture": "eva02_large_patch14_448", "num_classes": 3, "model_args": {"num_reg_tokens": 4}}),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("num_reg_tokens"), "{err}");
    let err = SwinV2Config::from_timm(&json!({"architecture": "swinv2_huge_window8_256", "num_classes": 3}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("swinv2_huge_window8_256"), "{err}");
}

/// The whole tagger on a WD model folder (config.json, model.safetensors, selected_tags.csv):
/// byte images in, sigmoid probabilities out, against timm through the WD interface.
#[test]
fn tagger_runs_swinv2_and_eva02_folders() {
    use lorakit_caption::wd14::preprocess::Prepared;
    use lorakit_caption::wd14::Tagger;
    for (model, architecture, size) in
        [("swinv2", "swinv2_base_window8_256", 64), ("eva02", "eva02_large_patch14_448", 56)]
    {
        let dir = tempfile::tempdir().unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture(model, file), dir.path().join(file)).unwrap();
        }
        let mut csv = String::from("tag_id,name,category,count\n");
        for (i, name) in ["general", "sensitive", "questionable", "explicit"].iter().enumerate() {
            csv += &format!("{i},{name},9,100\n");
        }
        for i in 4..10 {
            csv += &format!("{i},tag_{i},0,10\n");
        }
        std::fs::write(dir.path().join("selected_tags.csv"), csv).unwrap();
        let tagger = Tagger::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!((tagger.architecture(), tagger.size()), (architecture, size));

        let r = tensors(model, "reference.safetensors");
        let images: Vec<Prepared> = (0..2)
            .map(|i| Prepared {
                size,
                bgr: r["bgr_u8"].get(i).unwrap().flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            })
            .collect();
        let probs = tagger.probabilities(&images).unwrap();
        let want = r["probs"].to_vec2::<f32>().unwrap();
        for (got, want) in probs.iter().zip(&want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-4, "{model}: probability {g} vs timm {w}");
            }
        }
    }
}
