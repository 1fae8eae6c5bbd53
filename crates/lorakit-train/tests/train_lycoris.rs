//! LyCORIS LoHa/LoKr/LoCon training end to end on the bundled tiny SD1.5-shaped model: the run trains,
//! saves files in LyCORIS' layout and metadata, the files read back through the LyCORIS reader
//! (what `generate` and `inspect` use) with the trained network's outputs, a resumed LoHa run
//! repeats the uninterrupted one bit for bit, and what LyCORIS cannot do is refused by name.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::lora_inject::{create_network, load_lora_file, sets_from_files, ComponentTargets, NetworkKind};
use lorakit_models::lora_inject::{LycorisPreset, NetworkSpec};
use lorakit_nn::lycoris::{LokrOptions, LycorisAlgo};
use lorakit_nn::ForwardCtx;
use lorakit_train::data::TrainData;
use lorakit_train::model::{StableDiffusionModel, TrainableModel};
use lorakit_train::{TrainConfig, Trainer};

use crate::common;
use common::{assert_resume_is_exact, chessboard_dataset, repo, small_run_toml, tensors, train};

fn model() -> StableDiffusionModel {
    StableDiffusionModel::load(&repo("examples/quickstart/tiny-sd15"), DType::F32, &Device::Cpu, false).unwrap()
}

/// The e2e tests' small run with these `[network]` lines added.
fn config(dir: &Path, data: &Path, network: &str) -> TrainConfig {
    let text = small_run_toml(dir, data, &repo("examples/quickstart/tiny-sd15")).replacen(
        "[network]\n",
        &format!("[network]\n{network}\n"),
        1,
    );
    TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// The UNet's prediction for fixed inputs with the given LoRA sets (UNet, text encoder).
fn prediction(model: &StableDiffusionModel, sets: &[Arc<lorakit_nn::LoraSet>]) -> Tensor {
    let ctxs: Vec<ForwardCtx> = sets.iter().map(|s| ForwardCtx::with_lora(s.clone())).collect();
    let cond = model.encode_text(&["chkbrd, a chessboard"], 75, None, &ctxs).unwrap();
    let latents = lorakit_nn::gradcheck::pseudo_random(&[1, 4, 8, 8], 3).unwrap().to_dtype(DType::F32).unwrap();
    let t = Tensor::new(&[500f32], &Device::Cpu).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    model.denoise(&latents, &t, None, &cond, &[], &ctxs, &mut rng).unwrap()
}

/// Trains `network`, then checks the final file: LyCORIS keys only, metadata, every module
/// trained, and the file applied through the LyCORIS reader (as `generate` applies it) predicts
/// what the trained modules predict when loaded back into a fresh network of the same spec.
fn train_and_check(network: &str, spec: NetworkSpec, factor_keys: &[&str], args: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model = model();
    let summary = train(config(dir.path(), &data, network), &model, None);
    assert!(summary.losses.iter().all(|l| l.is_finite()));
    let path = summary.final_lora.expect("a final file");
    let file = lorakit_lora::safetensors_file::LoraFile::open(&path).unwrap();
    let meta = file.metadata().clone();
    assert_eq!(meta["ss_network_module"], "lycoris.kohya");
    let network_args: serde_json::Value = serde_json::from_str(&meta["ss_network_args"]).unwrap();
    for (k, v) in args {
        assert_eq!(network_args[k], *v, "ss_network_args {k}");
    }
    for name in file.tensor_names() {
        let suffix = name.split_once('.').unwrap().1;
        assert!(suffix == "alpha" || factor_keys.contains(&suffix), "{name}: not a {factor_keys:?} key");
    }
    // Every module trained: ΔW ≠ 0 (LoHa/LoKr through the LyCORIS reader; LyCORIS' LoCon has
    // kohya's layout, and an untrained one has lora_up = 0).
    let trained: Vec<(String, bool)> = match lorakit_lora::keys::detect_scheme(file.tensor_names()) {
        lorakit_lora::keys::Scheme::Kohya => lorakit_lora::keys::modules(&file)
            .unwrap()
            .modules
            .iter()
            .map(|m| (m.name.clone(), file.tensor_f32(&m.up_key).unwrap().iter().any(|v| *v != 0.0)))
            .collect(),
        _ => lorakit_lora::lycoris::lycoris_modules(&file)
            .unwrap()
            .iter()
            .map(|m| (m.name.clone(), m.delta_weight(&file).unwrap().iter().any(|v| *v != 0.0)))
            .collect(),
    };
    let sd = model.pipeline();
    let (unet_targets, te_targets) = (sd.unet_targets(), &sd.text_encoder_targets()[0]);
    let unet = create_network(unet_targets, "lora_unet", &spec, DType::F32, &Device::Cpu, 0).unwrap();
    let te = create_network(te_targets, "lora_te", &spec, DType::F32, &Device::Cpu, 0).unwrap();
    assert_eq!(trained.len(), unet.len() + te.len(), "the file has a module for every planned target");
    for (name, changed) in &trained {
        assert!(changed, "{name}: untrained (ΔW = 0)");
    }
    // Ours, loaded back from the file (as network_weights would).
    let ours: Vec<Arc<lorakit_nn::LoraSet>> = vec![Arc::new(unet), Arc::new(te)];
    let file_tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let missing = lorakit_train::state::load_network_tensors(&ours, &file_tensors, false, &path).unwrap();
    assert!(missing.is_empty(), "{missing:?}");
    // The file on the fly as generate applies it (LoHa/LoKr: the LyCORIS reader's dense ΔW).
    let components = [
        ComponentTargets { prefix: "lora_unet", targets: unet_targets },
        ComponentTargets { prefix: "lora_te", targets: te_targets },
    ];
    let loaded = load_lora_file(&path, 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
    let applied = sets_from_files(vec![loaded], 2, &Device::Cpu).unwrap();
    let (a, b, base) = (prediction(&model, &ours), prediction(&model, &applied), prediction(&model, &[]));
    let diff = |x: &Tensor, y: &Tensor| (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff(&a, &base) > 1e-4, "the trained network changes the prediction");
    assert!(diff(&a, &b) < 1e-4, "file applied as generate does vs the trained modules: {}", diff(&a, &b));
}

/// The spec of the small run's network (network_dim 4, alpha 2, conv_dim 2) as `algo`.
fn small_run_spec(algo: LycorisAlgo) -> NetworkSpec {
    NetworkSpec {
        kind: NetworkKind::Lycoris { algo, preset: LycorisPreset::Full },
        rank: 4,
        alpha: 2.0,
        conv_rank: Some(2),
        conv_alpha: 2.0,
        ..Default::default()
    }
}

#[test]
fn a_loha_trains_saves_lycoris_keys_and_applies_as_generate_does() {
    train_and_check(
        "network_module = \"lycoris.kohya\"\nalgo = \"loha\"\n",
        small_run_spec(LycorisAlgo::LoHa),
        &["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"],
        &[("algo", "loha")],
    );
}

#[test]
fn a_lokr_trains_saves_lycoris_keys_and_applies_as_generate_does() {
    let opts = LokrOptions { factor: 4, decompose_both: true, full_matrix: false };
    train_and_check(
        "network_module = \"lycoris.kohya\"\nalgo = \"lokr\"\nfactor = 4\ndecompose_both = true\n",
        small_run_spec(LycorisAlgo::LoKr(opts)),
        &["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"],
        &[("algo", "lokr"), ("factor", "4"), ("decompose_both", "True")],
    );
}

#[test]
fn lycoris_locon_trains_with_kohya_keys_and_applies_as_generate_does() {
    train_and_check(
        "network_module = \"lycoris.kohya\"\nalgo = \"lora\"\npreset = \"full-lin\"\n",
        NetworkSpec {
            kind: NetworkKind::Lycoris { algo: LycorisAlgo::LoCon, preset: LycorisPreset::FullLin },
            ..small_run_spec(LycorisAlgo::LoCon)
        },
        &["lora_down.weight", "lora_up.weight"],
        &[("algo", "lora"), ("preset", "full-lin")],
    );
}

#[test]
fn a_resumed_loha_run_with_max_norm_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 3, 3);
    let model = model();
    // A max-norm low enough to scale LoHa's scalar, which the state must carry.
    let network = "network_module = \"lycoris.kohya\"\nalgo = \"loha\"\nscale_weight_norms = 0.01\n";
    let mut full_cfg = config(dir.path(), &data, network);
    full_cfg.save.save_state = true;
    full_cfg.training.gradient_accumulation_steps = 2;
    let runs = assert_resume_is_exact(&full_cfg, &model, dir.path(), 2);
    assert_eq!(runs.full.steps, 6);
    let saved = tensors(&runs.state.join("network.safetensors"));
    let scalars: Vec<f32> = saved.iter().filter(|(k, _)| k.ends_with(".scalar")).map(|(_, v)| v[0]).collect();
    assert!(!scalars.is_empty() && scalars.iter().any(|s| *s < 1.0), "max-norm scaled some LoHa scalars: {scalars:?}");
}

#[test]
fn what_lycoris_does_not_do_is_refused_by_name() {
    let refused = [
        ("network_module = \"lycoris.kohya\"\n", "network.algo"),
        ("network_module = \"lycoris.kohya\"\nalgo = \"ia3\"\n", "\"ia3\""),
        ("network_module = \"lycoris.kohya\"\nalgo = \"dylora\"\n", "\"dylora\""),
        ("network_module = \"lycoris.kohya\"\nalgo = \"locon\"\ndecompose_both = true\n", "LoKr options"),
        (
            "network_module = \"lycoris.kohya\"\nalgo = \"loha\"\npreset = \"unet-transformer-only\"\n",
            "unet-transformer-only",
        ),
        ("network_module = \"lycoris.kohya\"\nalgo = \"loha\"\nnetwork_dropout = 0.1\n", "network_dropout"),
        ("network_module = \"lycoris.kohya\"\nalgo = \"loha\"\nloraplus_lr_ratio = 16\n", "loraplus_lr_ratio"),
        ("network_module = \"lycoris.kohya\"\nalgo = \"lokr\"\nloraplus_unet_lr_ratio = 16\n", "lora_up"),
        ("network_module = \"lycoris.kohya\"\nalgo = \"lokr\"\nblock_dims = \"4\"\n", "block_dims"),
        ("network_module = \"lycoris.kohya\"\nalgo = \"loha\"\nfactor = 8\n", "LoKr options"),
        (
            "network_module = \"lycoris.kohya\"\nalgo = \"lokr\"\nrank_dropout = 0.1\nscale_weight_norms = 1\n",
            "rank_dropout",
        ),
        ("algo = \"loha\"\n", "networks.lora"),
        ("network_module = \"networks.lokr\"\n", "networks.lokr"),
    ];
    for (network, needle) in refused {
        let err = TrainConfig::from_toml_str(&format!("[network]\n{network}"), &[]).unwrap_err();
        assert!(err.contains(needle), "{network:?}: {err}");
    }
    for ok in [
        "network_module = \"lycoris.kohya\"\nalgo = \"lokr\"\nnetwork_dim = 100000\nfactor = 8\nfull_matrix = true\npreset = \"full\"\n",
        "network_module = \"lycoris.kohya\"\nalgo = \"loha\"\nrank_dropout = 0.1\nmodule_dropout = 0.1\npreset = \"attn-mlp\"\n",
        "network_module = \"lycoris.kohya\"\nalgo = \"locon\"\nloraplus_lr_ratio = 16\n",
    ] {
        TrainConfig::from_toml_str(&format!("[network]\n{ok}"), &[]).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
}

#[test]
fn param_groups_follow_lycoris_with_lora_plus_on_lycoris_locon_up_weights_only() {
    use lorakit_train::param_groups::{plan_groups, ComponentNetwork, GroupRates};
    let model = model();
    let targets = &model.pipeline().text_encoder_targets()[0];
    let rates = GroupRates {
        text_encoder_lrs: vec![1e-4],
        unet_lr: 1e-3,
        text_encoder_plus_ratio: Some(16.0),
        unet_plus_ratio: None,
        block_lr_weights: None,
    };
    for (algo, plus) in [(LycorisAlgo::LoCon, true), (LycorisAlgo::LoHa, false)] {
        let set = create_network(targets, "lora_te", &small_run_spec(algo), DType::F32, &Device::Cpu, 0).unwrap();
        let networks = [ComponentNetwork { component: 1, is_text_encoder: true, set: &set }];
        let groups = plan_groups(&networks, &rates);
        let names: Vec<&str> = groups.iter().map(|g| g.group.name.as_str()).collect();
        let count = |i: usize| groups[i].group.vars.len();
        let modules = set.lycoris_modules().len();
        if plus {
            assert_eq!(names, ["textencoder", "textencoder plus"]);
            assert_eq!((count(0), count(1)), (modules, modules), "down weights / up weights");
            assert_eq!(groups[1].group.lr, 16e-4);
        } else {
            assert_eq!(names, ["textencoder"]);
            assert_eq!(count(0), 4 * modules, "every LoHa factor in the component's group");
        }
    }
}

#[test]
fn lycoris_presets_adapt_the_modules_lycoris_creates_on_the_tiny_model() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/reference/lycoris_train/network.json")).unwrap(),
    )
    .unwrap();
    let model = StableDiffusionModel::load(
        &repo("tests/fixtures/reference/sd15_tiny/diffusers"),
        DType::F32,
        &Device::Cpu,
        false,
    )
    .unwrap();
    let sd = model.pipeline();
    for (preset, name) in
        [(LycorisPreset::Full, "full"), (LycorisPreset::FullLin, "full-lin"), (LycorisPreset::AttnMlp, "attn-mlp")]
    {
        for conv in [None, Some(2), Some(0)] {
            let key = format!("{name}/conv_dim={}", conv.map_or("None".to_string(), |c| c.to_string()));
            let want: std::collections::BTreeMap<String, usize> = expected[&key]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize))
                .collect();
            let spec = NetworkSpec {
                kind: NetworkKind::Lycoris { algo: LycorisAlgo::LoHa, preset },
                rank: 4,
                alpha: 1.0,
                conv_rank: conv,
                conv_alpha: 1.0,
                ..Default::default()
            };
            let mut ours = std::collections::BTreeMap::new();
            for (targets, prefix) in [(sd.unet_targets(), "lora_unet"), (&sd.text_encoder_targets()[0][..], "lora_te")]
            {
                let set = create_network(targets, prefix, &spec, DType::F32, &Device::Cpu, 0).unwrap();
                ours.extend(set.lycoris_modules().iter().map(|m| (m.name().to_string(), m.dim())));
            }
            assert_eq!(ours, want, "{key}");
        }
    }
}

#[test]
fn a_checkpointed_lokr_run_with_dropouts_equals_the_plain_one_and_fp16_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 4);
    let model = model();
    let lokr = "network_module = \"lycoris.kohya\"\nalgo = \"lokr\"\nfactor = 4\n";
    let mut plain = config(dir.path(), &data, &format!("{lokr}rank_dropout = 0.2\nmodule_dropout = 0.1\n"));
    plain.training.max_train_epochs = 2;
    let a = train(plain.clone(), &model, None);
    let mut ckpt = plain.clone();
    ckpt.training.gradient_checkpointing = true;
    ckpt.folders.output_dir = dir.path().join("ckpt");
    let b = train(ckpt, &model, None);
    assert_eq!(a.losses.len(), b.losses.len());
    for (x, y) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "checkpointed run differs: {:?} vs {:?}", a.losses, b.losses);
    }
    let mut no_dropout = config(dir.path(), &data, lokr);
    no_dropout.training.max_train_epochs = 2;
    no_dropout.folders.output_dir = dir.path().join("plain");
    let c = train(no_dropout, &model, None);
    assert_eq!(a.losses[0], c.losses[0], "the first loss is before any update");
    assert_ne!(a.losses, c.losses, "rank/module dropout change the run");
    // Mixed precision: the factors stay f32, ΔW is applied in f16.
    let mut fp16 = config(dir.path(), &data, "network_module = \"lycoris.kohya\"\nalgo = \"loha\"\n");
    fp16.accelerate.mixed_precision = "fp16".into();
    fp16.folders.output_dir = dir.path().join("fp16");
    let d = train(fp16, &model, None);
    assert!(d.losses.iter().all(|l| l.is_finite()) && d.final_lora.is_some(), "{:?}", d.losses);
}

#[test]
fn a_rank_above_a_layer_is_refused_by_name_before_the_memory_estimate_but_full_dimension_lokr_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 1);
    let model = model();
    for (network, key) in
        [("network_dim = 100000\n", "network.network_dim"), ("conv_dim = 100000\n", "network.conv_dim")]
    {
        let text = small_run_toml(dir.path(), &data, &repo("examples/quickstart/tiny-sd15"))
            .replace("network_dim = 4\n", "")
            .replace("conv_dim = 2\n", "")
            .replacen("[network]\n", &format!("[network]\n{network}"), 1);
        let cfg = TrainConfig::from_toml_str(&text, &[]).unwrap();
        let train_data = TrainData::load(&cfg).unwrap();
        let err = match Trainer::new(cfg, &model, train_data) {
            Ok(_) => panic!("{network}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("lora_unet_") && err.contains("is above the dimensions") && err.contains(key), "{err}");
    }
    // LyCORIS' full-dimension LoKr (the kohya_ss LoKr presets' network_dim = conv_dim = 100000).
    let cfg = config(dir.path(), &data, "network_module = \"lycoris.kohya\"\nalgo = \"lokr\"\nfactor = 8\n");
    let mut cfg = cfg;
    cfg.network.network_dim = 100_000;
    cfg.network.conv_dim = Some(100_000);
    cfg.training.max_train_epochs = 1;
    let run = train(cfg, &model, None);
    let file = lorakit_lora::safetensors_file::LoraFile::open(run.final_lora.unwrap()).unwrap();
    assert!(file.tensor_names().all(|n| n.ends_with(".lokr_w1") || n.ends_with(".lokr_w2") || n.ends_with(".alpha")));
    assert_eq!(file.tensor_f32("lora_unet_down_blocks_0_resnets_0_conv1.alpha").unwrap(), [100_000.0]);
}
