//! LoRA on the tiny SD1.5 model against sd-scripts + PyTorch (tools/reference/make_sd15_tiny.py):
//! module names, gradients of every lora_down/lora_up after one loss through text encoder and
//! UNet, and outputs with a LoRA merged into the weights or applied on the fly.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::checkpoint::load_sd_checkpoint;
use lorakit_models::clip::{ClipTextConfig, ClipTextModel};
use lorakit_models::lora_inject::{
    create_network, load_lora_file, sets_from_files, ComponentTargets, NetworkSpec, TEXT_ENCODER_PREFIX, UNET_PREFIX,
};
use lorakit_models::unet_2d::{UNet2DConditionModel, UNet2DConditionModelConfig};
use lorakit_models::Weights;
use lorakit_nn::ForwardCtx;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/sd15_tiny")).join(rel)
}

fn load(rel: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).unwrap()
}

struct Tiny {
    unet: UNet2DConditionModel,
    te: ClipTextModel,
    unet_weights: Weights,
    te_weights: Weights,
    unet_cfg: UNet2DConditionModelConfig,
    te_cfg: ClipTextConfig,
}

fn tiny() -> Tiny {
    let ckpt = load_sd_checkpoint(&fixture("diffusers"), DType::F32, &Device::Cpu).unwrap();
    let unet_cfg: UNet2DConditionModelConfig = serde_json::from_value(ckpt.unet_config.clone().unwrap()).unwrap();
    let te_cfg: ClipTextConfig = serde_json::from_value(ckpt.text_encoder_config.clone().unwrap()).unwrap();
    let unet = UNet2DConditionModel::new(ckpt.unet.view(""), &unet_cfg).unwrap();
    ckpt.unet.check_complete().unwrap();
    let te = ClipTextModel::new(ckpt.text_encoder.view(""), &te_cfg).unwrap();
    ckpt.text_encoder.check_complete().unwrap();
    Tiny { unet, te, unet_weights: ckpt.unet, te_weights: ckpt.text_encoder, unet_cfg, te_cfg }
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12)
}

#[test]
fn created_network_has_sd_scripts_names_and_shapes() {
    let m = tiny();
    let spec = NetworkSpec { rank: 4, alpha: 2.0, conv_rank: Some(4), conv_alpha: 1.0, ..Default::default() };
    let unet = create_network(&m.unet.lora_targets(), UNET_PREFIX, &spec, DType::F32, &Device::Cpu, 0).unwrap();
    let te = create_network(&m.te.lora_targets(), TEXT_ENCODER_PREFIX, &spec, DType::F32, &Device::Cpu, 0).unwrap();
    let ours = lorakit_models::lora_inject::state_dict(&[&unet, &te]).unwrap();
    let reference = load("lora/lora.safetensors");
    let ours_keys: BTreeSet<&String> = ours.keys().collect();
    let ref_keys: BTreeSet<&String> = reference.keys().collect();
    assert_eq!(ours_keys, ref_keys);
    for (k, t) in &ours {
        assert_eq!(t.shape, reference[k].dims(), "{k}");
        if k.ends_with(".alpha") {
            let a = reference[k].to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(t.data, vec![a], "{k}");
        }
    }
    // Without conv_dim, only the attention group (sd-scripts: 192 of 278 at full size).
    let plain =
        create_network(&m.unet.lora_targets(), UNET_PREFIX, &NetworkSpec::default(), DType::F32, &Device::Cpu, 0)
            .unwrap();
    let attention = reference
        .keys()
        .filter(|k| k.ends_with(".alpha") && k.starts_with("lora_unet") && (k.contains("attentions")))
        .count();
    assert_eq!(plain.len(), attention);
}

#[test]
fn lora_gradients_match_pytorch() {
    let m = tiny();
    let lora_path = fixture("lora/lora.safetensors");
    let components = [
        ComponentTargets { prefix: UNET_PREFIX, targets: &m.unet.lora_targets() },
        ComponentTargets { prefix: TEXT_ENCODER_PREFIX, targets: &m.te.lora_targets() },
    ];
    let loaded = load_lora_file(&lora_path, 1.0, true, &components, DType::F32, &Device::Cpu).unwrap();
    let sets = sets_from_files(vec![loaded], 2, &Device::Cpu).unwrap();
    let io = load("lora/io.safetensors");
    let unet_ctx = ForwardCtx { lora: Some(sets[0].clone()), train: true, gradient_checkpointing: false };
    let te_ctx = ForwardCtx { lora: Some(sets[1].clone()), train: true, gradient_checkpointing: false };
    let ehs = m.te.forward(&io["input_ids"], &te_ctx).unwrap().last_hidden_state;
    assert!(rel_err(&ehs, &io["ehs"]) < 1e-4, "ehs {}", rel_err(&ehs, &io["ehs"]));
    let pred = m.unet.forward(&io["noisy"], &io["timestep"], &ehs, &unet_ctx).unwrap();
    assert!(rel_err(&pred, &io["pred"]) < 1e-4, "pred {}", rel_err(&pred, &io["pred"]));
    let loss = (pred - &io["target"]).unwrap().sqr().unwrap().mean_all().unwrap();
    let ref_loss = io["loss"].to_scalar::<f32>().unwrap();
    assert!((loss.to_scalar::<f32>().unwrap() - ref_loss).abs() < 1e-4 * ref_loss.abs());
    let grads = loss.backward().unwrap();
    let reference = load("lora/grads.safetensors");
    let mut checked = 0;
    for set in &sets {
        for module in set.modules() {
            for (suffix, var) in [("lora_down.weight", module.down()), ("lora_up.weight", module.up())] {
                let key = format!("{}.{suffix}", module.name());
                let ours = set.grad(&grads, var).unwrap().unwrap_or_else(|| panic!("{key}: no gradient"));
                let theirs = reference[&key].reshape(ours.dims()).unwrap();
                let e = rel_err(&ours, &theirs);
                assert!(e < 1e-4, "{key}: relative error {e}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, reference.len());
}

/// UNet and text-encoder outputs of the tiny model on the fixture inputs with the LoRA file at
/// `path` applied on the fly at `multiplier`.
fn on_the_fly_outputs(m: &Tiny, path: &std::path::Path, multiplier: f64) -> (Tensor, Tensor) {
    let (unet_targets, te_targets) = (m.unet.lora_targets(), m.te.lora_targets());
    let components = [
        ComponentTargets { prefix: UNET_PREFIX, targets: &unet_targets },
        ComponentTargets { prefix: TEXT_ENCODER_PREFIX, targets: &te_targets },
    ];
    let loaded = load_lora_file(path, multiplier, false, &components, DType::F32, &Device::Cpu).unwrap();
    let sets = sets_from_files(vec![loaded], 2, &Device::Cpu).unwrap();
    let io = load("io_unet.safetensors");
    let te_io = load("io_text_encoder.safetensors");
    let out = m
        .unet
        .forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"], &ForwardCtx::with_lora(sets[0].clone()))
        .unwrap();
    let te_out =
        m.te.forward(&te_io["input_ids"], &ForwardCtx::with_lora(Arc::clone(&sets[1]))).unwrap().last_hidden_state;
    (out, te_out)
}

#[test]
fn merged_and_on_the_fly_lora_match_sd_scripts_merge() {
    let mut m = tiny();
    let lora_path = fixture("lora/lora.safetensors");
    let io = load("io_unet.safetensors");
    let te_io = load("io_text_encoder.safetensors");
    let expected = load("lora/unet_out_merged_0p7.safetensors");
    let unet_targets = m.unet.lora_targets();
    let te_targets = m.te.lora_targets();
    let components = [
        ComponentTargets { prefix: UNET_PREFIX, targets: &unet_targets },
        ComponentTargets { prefix: TEXT_ENCODER_PREFIX, targets: &te_targets },
    ];

    // On the fly.
    let (out, te_out) = on_the_fly_outputs(&m, &lora_path, 0.7);
    assert!(rel_err(&out, &expected["out"]) < 1e-4, "on the fly: {}", rel_err(&out, &expected["out"]));
    assert!(rel_err(&te_out, &expected["te_out_merged_0p7"]) < 1e-4);

    // Merged into the weights, model rebuilt.
    let loaded = load_lora_file(&lora_path, 0.7, false, &components, DType::F32, &Device::Cpu).unwrap();
    loaded.merge_into(&mut [&mut m.unet_weights, &mut m.te_weights]).unwrap();
    let unet = UNet2DConditionModel::new(m.unet_weights.view(""), &m.unet_cfg).unwrap();
    let te = ClipTextModel::new(m.te_weights.view(""), &m.te_cfg).unwrap();
    let out =
        unet.forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"], &ForwardCtx::default()).unwrap();
    assert!(rel_err(&out, &expected["out"]) < 1e-4, "merged: {}", rel_err(&out, &expected["out"]));
    let te_out = te.forward(&te_io["input_ids"], &ForwardCtx::default()).unwrap().last_hidden_state;
    assert!(rel_err(&te_out, &expected["te_out_merged_0p7"]) < 1e-4);
}

#[test]
fn peft_lora_applies_like_its_kohya_original() {
    // The sd-scripts LoRA (with conv modules) rewritten as a PEFT/diffusers file (alpha/rank
    // folded into lora_B), then applied by load_lora_file, which converts it back in memory.
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    let peft = dir.path().join("peft.safetensors");
    let outcome = lorakit_lora::convert::convert_file(
        &fixture("lora/lora.safetensors"),
        &peft,
        lorakit_lora::convert::Target::Peft,
        None,
        Some(lorakit_lora::keys::Family::Sd1), // the tiny file's shapes do not show it
    )
    .unwrap();
    assert!(outcome.folded > 0, "the fixture's alpha differs from its rank, so scales were folded");
    let expected = load("lora/unet_out_merged_0p7.safetensors");
    let (out, te_out) = on_the_fly_outputs(&m, &peft, 0.7);
    assert!(rel_err(&out, &expected["out"]) < 1e-4, "PEFT on the fly: {}", rel_err(&out, &expected["out"]));
    assert!(rel_err(&te_out, &expected["te_out_merged_0p7"]) < 1e-4);
}

#[test]
fn lycoris_file_applies_its_weight_change() {
    // A LoHa module on a linear, a LoKr module with a decomposed 3×3 factor on a conv and a
    // whole-factor LoKr module on the text encoder, applied on the fly at 0.7, against the same
    // ΔW (lorakit_lora::lycoris, checked against LyCORIS itself) merged into the weights.
    use lorakit_lora::safetensors_file::{write_lora, LoraFile, Precision, Tensor as FileTensor};
    let mut m = tiny();
    let (unet_targets, te_targets) = (m.unet.lora_targets(), m.te.lora_targets());
    let find = |targets: &[lorakit_nn::lora::LoraTarget], prefix: &str, name: &str| {
        targets.iter().find(|t| t.kohya_name(prefix) == name).cloned().unwrap_or_else(|| panic!("no target {name}"))
    };
    let linear =
        find(&unet_targets, UNET_PREFIX, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q");
    let conv = find(&unet_targets, UNET_PREFIX, "lora_unet_down_blocks_0_resnets_0_conv1");
    let te_q = find(&te_targets, TEXT_ENCODER_PREFIX, "lora_te_text_model_encoder_layers_0_self_attn_q_proj");
    assert_eq!((conv.in_dim, conv.out_dim, te_q.in_dim, te_q.out_dim), (32, 32, 32, 32));
    let mut seed = 0u64;
    let mut values = |shape: Vec<usize>| {
        seed += 1;
        let n: usize = shape.iter().product();
        let t = lorakit_nn::gradcheck::pseudo_random(&[n], seed).unwrap().to_dtype(DType::F32).unwrap();
        FileTensor::new(shape, t.to_vec1::<f32>().unwrap().iter().map(|v| v * 0.3).collect())
    };
    let mut t = std::collections::BTreeMap::new();
    let loha = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    for (k, shape) in [("hada_w1_a", vec![linear.out_dim, 2]), ("hada_w1_b", vec![2, linear.in_dim])] {
        t.insert(format!("{loha}.{k}"), values(shape.clone()));
        t.insert(format!("{loha}.{}", k.replace("w1", "w2")), values(shape));
    }
    t.insert(format!("{loha}.alpha"), FileTensor::scalar(1.0));
    let lokr = "lora_unet_down_blocks_0_resnets_0_conv1";
    t.insert(format!("{lokr}.lokr_w1"), values(vec![4, 4]));
    t.insert(format!("{lokr}.lokr_w2_a"), values(vec![8, 2]));
    t.insert(format!("{lokr}.lokr_w2_b"), values(vec![2, 8, 3, 3]));
    t.insert(format!("{lokr}.alpha"), FileTensor::scalar(1.0));
    let te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
    t.insert(format!("{te}.lokr_w1"), values(vec![4, 4]));
    t.insert(format!("{te}.lokr_w2"), values(vec![8, 8]));
    t.insert(format!("{te}.alpha"), FileTensor::scalar(8.0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lycoris.safetensors");
    write_lora(&path, &t, &Default::default(), Precision::F32).unwrap();

    let (on_the_fly, te_on_the_fly) = on_the_fly_outputs(&m, &path, 0.7);
    let io = load("io_unet.safetensors");
    let te_io = load("io_text_encoder.safetensors");

    let file = LoraFile::open(&path).unwrap();
    for module in lorakit_lora::lycoris::lycoris_modules(&file).unwrap() {
        let (weights, target) = match module.name.as_str() {
            n if n == loha => (&mut m.unet_weights, &linear),
            n if n == lokr => (&mut m.unet_weights, &conv),
            _ => (&mut m.te_weights, &te_q),
        };
        let key = format!("{}.weight", target.path);
        let base = weights.tensor(&key).unwrap().clone();
        let delta = Tensor::from_vec(module.delta_weight(&file).unwrap(), base.dims(), &Device::Cpu).unwrap();
        weights.insert(key, (base + (delta * 0.7).unwrap()).unwrap());
    }
    let unet = UNet2DConditionModel::new(m.unet_weights.view(""), &m.unet_cfg).unwrap();
    let te_model = ClipTextModel::new(m.te_weights.view(""), &m.te_cfg).unwrap();
    let merged =
        unet.forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"], &ForwardCtx::default()).unwrap();
    let te_merged = te_model.forward(&te_io["input_ids"], &ForwardCtx::default()).unwrap().last_hidden_state;
    assert!(rel_err(&on_the_fly, &merged) < 1e-4, "UNet: {}", rel_err(&on_the_fly, &merged));
    assert!(rel_err(&te_on_the_fly, &te_merged) < 1e-4, "TE: {}", rel_err(&te_on_the_fly, &te_merged));
    let base =
        m.unet.forward(&io["sample"], &io["timestep"], &io["encoder_hidden_states"], &ForwardCtx::default()).unwrap();
    assert!(rel_err(&on_the_fly, &base) > 1e-3, "the modules change the output");
}

#[test]
fn lora_for_another_model_is_refused_with_the_keys() {
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdxl.safetensors");
    let mut tensors = std::collections::BTreeMap::new();
    let name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q";
    tensors.insert(
        format!("{name}.lora_down.weight"),
        lorakit_lora::safetensors_file::Tensor::new(vec![4, 640], vec![0.0; 2560]),
    );
    tensors.insert(
        format!("{name}.lora_up.weight"),
        lorakit_lora::safetensors_file::Tensor::new(vec![640, 4], vec![0.0; 2560]),
    );
    lorakit_lora::safetensors_file::write_lora(
        &path,
        &tensors,
        &Default::default(),
        lorakit_lora::safetensors_file::Precision::F32,
    )
    .unwrap();
    let targets = m.unet.lora_targets();
    let components = [ComponentTargets { prefix: UNET_PREFIX, targets: &targets }];
    let err = load_lora_file(&path, 1.0, false, &components, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("sdxl.safetensors") && err.contains(name) && err.contains("another base model"), "{err}");
}
