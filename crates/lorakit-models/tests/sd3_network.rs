//! SD3's LoRA module choice (`Sd3NetworkArgs`) and the MMDiT's training-side position options
//! against sd-scripts (fixture: `tools/reference/sd3_network_fixture.py` →
//! `tests/fixtures/reference/sd3_network/`): the modules `networks/lora_sd3.create_network`
//! makes (name, shape, conv kernel, rank, alpha, split) on tiny SD3 Medium / SD3.5 Medium
//! layouts under many argument sets and on the full-size SD3 Medium, SD3.5 Medium and SD3.5
//! Large; every full-size weight key and shape; the scaled position tables, their area list and
//! its growth; random crops; and the forward pass with each option, and with a LoRA on every
//! `emb_dims` layer (the x_embedder's a p×p stride-p LoCon; output and factor gradients), on
//! the sd3_tiny weights; and every joint-block module's LoRA factor gradients (`split_qkv` on
//! and off, gradient checkpointing off and on).
//!
//! Fidelity: tables ≤ 1e-5 absolute, predictions max |Δ| / max |reference| ≤ 1e-4 (f32).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::dit::mmdit::{
    resolution_area_to_latent_size, scaled_pos_embed_latent_sizes, scaled_sincos_pos_embed, MmditConfig, MmditInputs,
    MmditTransformer, PosCrop,
};
use lorakit_models::dit::sd3_network::{Sd3NetworkArgs, TYPE_DIMS};
use lorakit_models::Weights;
use lorakit_nn::lora::{LoraKind, LoraModule, LoraSet, LoraTarget};
use lorakit_nn::ForwardCtx;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Error = Box<dyn std::error::Error>;

fn fixture(part: &str, rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference")).join(part).join(rel)
}

fn json(rel: &str) -> Result<Value, Error> {
    Ok(serde_json::from_str(&std::fs::read_to_string(fixture("sd3_network", rel))?)?)
}

fn tensors(part: &str, rel: &str) -> Result<HashMap<String, Tensor>, Error> {
    Ok(candle_core::safetensors::load(fixture(part, rel), &Device::Cpu)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64, Error> {
    assert_eq!(a.dims(), b.dims());
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.max_all()?.to_scalar::<f64>()?)
}

/// max |a − b| / max |b| ≤ 1e-4.
fn check(what: &str, ours: &Tensor, reference: &Tensor) -> TestResult {
    let scale = reference.to_dtype(DType::F64)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let err = max_abs_diff(ours, reference)? / scale.max(1e-30);
    eprintln!("{what}: relative error {err:.2e}");
    assert!(err <= 1e-4, "{what}: relative error {err:.3e}");
    Ok(())
}

fn load(variant: &str) -> Result<(Weights, MmditConfig), Error> {
    let path = fixture("sd3_tiny", &format!("{variant}.safetensors"));
    let weights = Weights::from_safetensors(&path, DType::F32, &Device::Cpu)?;
    let names: Vec<&str> = weights.names().collect();
    let cfg = MmditConfig::from_sai_shapes(names.iter().copied(), |k| weights.tensor(k).map(|t| t.dims().to_vec()))?;
    Ok((weights, cfg))
}

/// A module as sd-scripts' fixture lists it: name, in, out, kernel (0: linear), rank, alpha,
/// split widths.
type Row = (String, usize, usize, usize, usize, f64, Option<Vec<usize>>);

/// A crop's (top, left).
type Corner = (usize, usize);

/// One argument set of the fixture: the network's (dim, alpha), `conv_dim`/`conv_alpha` when
/// set, and the SD3 arguments, parsed as lorakit parses sd-scripts' `network_args`.
struct ArgSet {
    name: String,
    network: (usize, f64),
    conv: Option<(usize, f64)>,
    args: Sd3NetworkArgs,
}

fn arg_set(row: &Value) -> Result<ArgSet, Error> {
    let name = row[0].as_str().ok_or("set name")?.to_string();
    let network = (row[1].as_u64().ok_or("dim")? as usize, row[2].as_f64().ok_or("alpha")?);
    let kwargs = row[3].as_object().ok_or("kwargs")?;
    let mut args = Sd3NetworkArgs::default();
    let mut conv_dim = None;
    let mut conv_alpha = 1.0;
    for (key, value) in kwargs {
        let value = value.as_str().ok_or("kwarg value")?;
        if let Some(i) = TYPE_DIMS.iter().position(|(k, _)| k == key) {
            args.type_dims[i] = Some(Sd3NetworkArgs::parse_dim(key, value)?);
            continue;
        }
        match key.as_str() {
            "emb_dims" => args.emb_dims = Some(Sd3NetworkArgs::parse_emb_dims(value)?),
            "train_block_indices" => args.train_block_indices = Some(Sd3NetworkArgs::parse_train_block_indices(value)?),
            "split_qkv" => args.split_qkv = Sd3NetworkArgs::parse_split_qkv(value),
            "conv_dim" => conv_dim = Some(value.parse::<usize>()?),
            "conv_alpha" => conv_alpha = value.parse::<f64>()?,
            other => return Err(format!("fixture kwarg {other} not handled").into()),
        }
    }
    Ok(ArgSet { name, network, conv: conv_dim.map(|d| (d, conv_alpha)), args })
}

/// What our targets and `Sd3NetworkArgs` give, in the fixture's form: the joint-block targets,
/// then the `emb_dims` layers.
fn our_modules(blocks: &[LoraTarget], inputs: &[LoraTarget], set: &ArgSet) -> Vec<Row> {
    let blocks = blocks.iter().map(|t| (t, false));
    let inputs = inputs.iter().map(|t| (t, true));
    blocks
        .chain(inputs)
        .filter_map(|(t, input)| {
            let name = t.kohya_name("lora_unet");
            let kernel = match t.kind {
                LoraKind::Linear => 0,
                LoraKind::Conv { kernel, .. } => kernel,
            };
            let (rank, alpha) = set.args.module_for(&name, input, t.is_spatial_conv(), set.network, set.conv)?;
            if !t.is_spatial_conv() && set.conv.is_none() {
                // The linear-only entry point agrees wherever it applies.
                assert_eq!(set.args.rank_for(&name, input, set.network.0), Some(rank), "{name}");
            }
            let split = set.args.split_widths(&name, t.in_dim, t.out_dim);
            Some((name, t.in_dim, t.out_dim, kernel, rank, alpha, split))
        })
        .collect()
}

fn sd_scripts_modules(rows: &Value) -> Result<Vec<Row>, Error> {
    Ok(serde_json::from_value(rows.clone())?)
}

#[test]
fn module_choice_matches_sd_scripts_on_tiny_models() -> TestResult {
    let doc = json("modules.json")?;
    let sets: Vec<ArgSet> =
        doc["tiny_sets"].as_array().ok_or("tiny_sets")?.iter().map(arg_set).collect::<Result<_, _>>()?;
    assert!(sets.len() >= 15);
    for variant in ["sd3m", "sd35m"] {
        let (weights, cfg) = load(variant)?;
        let model = MmditTransformer::new(weights.view(""), &cfg)?;
        // The weight-free lists are the model's.
        let (blocks, inputs) = (model.lora_targets(), model.input_lora_targets().concat());
        assert_eq!(blocks, cfg.lora_targets(), "{variant}");
        assert_eq!(inputs, cfg.input_lora_targets(), "{variant}");
        for set in &sets {
            let reference = sd_scripts_modules(&doc["tiny"][variant][&set.name])?;
            let ours = our_modules(&blocks, &inputs, set);
            assert_eq!(ours, reference, "{variant} {}", set.name);
        }
    }
    // The sets exercise what they are named for.
    let sd35m = |set: &str| sd_scripts_modules(&doc["tiny"]["sd35m"][set]);
    let find = |rows: &[Row], name: &str| rows.iter().find(|r| r.0 == name).cloned();
    let attn2 = "lora_unet_joint_blocks_0_x_block_attn2_qkv";
    assert_eq!(find(&sd35m("x_attn_dim")?, attn2).map(|r| r.4), Some(3), "x_attn_dim reaches attn2");
    assert_eq!(find(&sd35m("split_qkv")?, attn2).and_then(|r| r.6), Some(vec![128; 3]), "attn2 splits");
    let x_emb = "lora_unet_x_embedder_proj";
    assert_eq!(find(&sd35m("emb_conv_dim_x0")?, x_emb).map(|r| (r.3, r.4)), Some((2, 6)), "conv_dim wins over 0");
    assert_eq!(find(&sd35m("emb_conv_dim0")?, x_emb), None, "conv_dim 0 removes it");
    assert!(find(&sd35m("conv_dim_only")?, x_emb).is_none(), "no emb_dims, no x_embedder");
    assert!(sd35m("blocks_past_depth")?.is_empty());
    Ok(())
}

#[test]
fn full_size_targets_and_weights_match_sd_scripts() -> TestResult {
    let doc = json("modules.json")?;
    let sets: Vec<ArgSet> =
        doc["full_sets"].as_array().ok_or("full_sets")?.iter().map(arg_set).collect::<Result<_, _>>()?;
    for (variant, cfg, model_type) in [
        ("sd3_medium", MmditConfig::sd3_medium(), "sd3m"),
        ("sd35_medium", MmditConfig::sd35_medium(), "sd35m"),
        ("sd35_large", MmditConfig::sd35_large(), "sd35l"),
    ] {
        assert_eq!(cfg.model_type(), model_type);
        let mut ours = cfg.parameter_shapes();
        let mut reference: Vec<(String, Vec<usize>)> = serde_json::from_value(doc["parameters"][variant].clone())?;
        ours.sort();
        reference.sort();
        assert_eq!(ours, reference, "{variant}: weight keys and shapes");
        // The config is what the shapes say.
        let shapes: HashMap<String, Vec<usize>> = ours.into_iter().collect();
        let read = MmditConfig::from_sai_shapes(shapes.keys().map(String::as_str), |k| shapes.get(k).cloned())?;
        assert_eq!(read, cfg, "{variant}");
        for set in &sets {
            let reference = sd_scripts_modules(&doc["full"][variant][&set.name])?;
            let ours = our_modules(&cfg.lora_targets(), &cfg.input_lora_targets(), set);
            assert_eq!(ours.len(), reference.len(), "{variant} {}", set.name);
            assert_eq!(ours, reference, "{variant} {}", set.name);
        }
    }
    Ok(())
}

#[test]
fn scaled_position_tables_and_their_choice_match_sd_scripts() -> TestResult {
    let doc = json("pos_embed.json")?;
    let tables = tensors("sd3_network", "pos_embed.safetensors")?;
    for spec in doc["scaled_tables"].as_array().ok_or("scaled_tables")? {
        let [dim, grid, size]: [usize; 3] = serde_json::from_value(spec.clone())?;
        let ours = scaled_sincos_pos_embed(dim, grid, size, &Device::Cpu)?;
        let err = max_abs_diff(&ours, &tables[&format!("scaled.{dim}.{grid}.{size}")])?;
        assert!(err <= 1e-5, "scaled table {dim}/{grid}/{size}: {err:.2e}");
    }
    for case in doc["area_to_size"].as_array().ok_or("area_to_size")? {
        let (sizes, expected): (Vec<usize>, Vec<(usize, usize)>) = serde_json::from_value(case.clone())?;
        assert_eq!(resolution_area_to_latent_size(&sizes, 2), expected, "{sizes:?}");
    }
    for case in doc["latent_sizes"].as_array().ok_or("latent_sizes")? {
        let (resolutions, expected): (Vec<(usize, usize)>, Vec<usize>) = serde_json::from_value(case.clone())?;
        assert_eq!(scaled_pos_embed_latent_sizes(&resolutions), expected, "{resolutions:?}");
    }
    // One model through sd-scripts' sequence of images: tables added for images too tall or
    // wide change what later images pick.
    let (weights, cfg) = load("sd3m")?;
    let model = MmditTransformer::new(weights.view(""), &cfg)?.with_scaled_pos_embed(&[4, 6, 10])?;
    for (i, call) in doc["scaled_calls"].as_array().ok_or("scaled_calls")?.iter().enumerate() {
        let (h, w, corner, sizes): (usize, usize, Option<Corner>, Vec<(usize, usize)>) =
            serde_json::from_value(call.clone())?;
        let crop = corner.map_or(PosCrop::Centre, |(top, left)| PosCrop::At { top, left });
        let ours = model.pos_embed(h / 2, w / 2, crop)?;
        let err = max_abs_diff(&ours, &tables[&format!("scaled_call.{i}")])?;
        assert!(err <= 1e-5, "call {i} ({h}×{w}): {err:.2e}");
        assert_eq!(model.scaled_pos_embed_sizes(), Some(sizes), "call {i}: the area list after it");
    }
    Ok(())
}

#[test]
fn random_crops_of_the_learned_table_match_sd_scripts() -> TestResult {
    let doc = json("pos_embed.json")?;
    let tables = tensors("sd3_network", "pos_embed.safetensors")?;
    let (weights, cfg) = load("sd3m")?;
    let model = MmditTransformer::new(weights.view(""), &cfg)?;
    for (i, call) in doc["learned_calls"].as_array().ok_or("learned_calls")?.iter().enumerate() {
        let (h, w, (top, left)): (usize, usize, (usize, usize)) = serde_json::from_value(call.clone())?;
        let ours = model.pos_embed(h / 2, w / 2, PosCrop::At { top, left })?;
        assert_eq!(max_abs_diff(&ours, &tables[&format!("learned_call.{i}")])?, 0.0, "call {i}");
    }
    // Random draws in [0, 1) map onto every corner: 0 → 0, just under 1 → the last.
    let corner = |u_top: f64, u_left: f64| model.pos_embed(3, 2, PosCrop::Random { u_top, u_left });
    let at = |top: usize, left: usize| model.pos_embed(3, 2, PosCrop::At { top, left });
    assert_eq!(max_abs_diff(&corner(0.0, 0.0)?, &at(0, 0)?)?, 0.0);
    assert_eq!(max_abs_diff(&corner(0.9999, 0.9999)?, &at(4, 5)?)?, 0.0);
    // 5 tops: [0.4, 0.6) is the third.
    assert_eq!(max_abs_diff(&corner(0.45, 0.0)?, &at(2, 0)?)?, 0.0);
    let err = model.pos_embed(3, 2, PosCrop::At { top: 5, left: 0 }).unwrap_err().to_string();
    assert!(err.contains("(5, 0)") && err.contains("7×7"), "{err}");
    Ok(())
}

#[test]
fn the_crop_draw_follows_the_rate_once_per_call() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut twin = rng.clone();
    // Rate 0 draws nothing, as sd-scripts.
    assert_eq!(PosCrop::draw(0.0, &mut rng), PosCrop::Centre);
    assert_eq!(rng.random::<u64>(), twin.random::<u64>());
    for _ in 0..100 {
        assert!(matches!(PosCrop::draw(1.0, &mut rng), PosCrop::Random { u_top, u_left }
            if (0.0..1.0).contains(&u_top) && (0.0..1.0).contains(&u_left)));
    }
    let random = (0..4000).filter(|_| PosCrop::draw(0.25, &mut rng) != PosCrop::Centre).count();
    assert!((850..1150).contains(&random), "{random} of 4000 at rate 0.25");
}

#[test]
fn predictions_with_each_position_option_match_sd_scripts() -> TestResult {
    let doc = json("forward.json")?;
    let reference = tensors("sd3_network", "forward.safetensors")?;
    let io = tensors("sd3_tiny", "io.safetensors")?;
    let runs = doc["runs"].as_array().ok_or("runs")?;
    assert_eq!(runs.len(), 7);
    for run in runs {
        let (name, variant, corner, sizes): (String, String, Option<Corner>, Option<Vec<usize>>) =
            serde_json::from_value(run.clone())?;
        let (weights, cfg) = load(&variant)?;
        let mut model = MmditTransformer::new(weights.view(""), &cfg)?;
        if let Some(sizes) = &sizes {
            model = model.with_scaled_pos_embed(sizes)?;
        }
        let mut inputs = MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]);
        if let Some((top, left)) = corner {
            inputs.pos_crop = PosCrop::At { top, left };
        }
        let out = model.forward(&inputs, &ForwardCtx::default())?;
        check(&name, &out, &reference[&name])?;
        // Each option changes the prediction (so the comparison above can fail).
        let centred = |m: &MmditTransformer| -> Result<Tensor, Error> {
            Ok(m.forward(&MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]), &ForwardCtx::default())?)
        };
        if corner.is_some() {
            assert!(max_abs_diff(&centred(&model)?, &out)? > 1e-3, "{name}: the crop is the centre");
        }
        if sizes.is_some() {
            let learned = MmditTransformer::new(weights.view(""), &cfg)?;
            assert!(max_abs_diff(&centred(&learned)?, &out)? > 1e-3, "{name}: the scaled table is the learned one");
        }
    }
    Ok(())
}

#[test]
fn a_lora_on_every_emb_dims_layer_matches_sd_scripts() -> TestResult {
    let doc = json("forward.json")?;
    let reference = tensors("sd3_network", "forward.safetensors")?;
    let file = tensors("sd3_network", "lora_sd3m.safetensors")?;
    let io = tensors("sd3_tiny", "io.safetensors")?;
    let (weights, cfg) = load("sd3m")?;
    let model = MmditTransformer::new(weights.view(""), &cfg)?;
    let targets: Vec<LoraTarget> =
        model.lora_targets().into_iter().chain(model.input_lora_targets().concat()).collect();
    let expected: Vec<String> = serde_json::from_value(doc["lora_modules"].clone())?;
    let inputs = MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]);
    // Inference (frozen modules, fused where the CPU allows) and training (trainable factors,
    // composed ops, gradients of the emb_dims modules for sum(out · probe)).
    for train in [false, true] {
        let mut set = LoraSet::new(0, &Device::Cpu)?;
        let mut names = Vec::new();
        let mut vars = Vec::new();
        for t in &targets {
            let name = t.kohya_name("lora_unet");
            let get = |part: &str| {
                file.get(&format!("{name}.{part}"))
                    .ok_or_else(|| format!("{name}.{part} missing"))?
                    .to_dtype(DType::F32)
                    .map_err(|e| e.to_string())
            };
            let alpha = get("alpha")?.to_scalar::<f32>()? as f64;
            let (down, up) = (get("lora_down.weight")?, get("lora_up.weight")?);
            let module = LoraModule::from_weights(name.clone(), t.kind, down, up, Some(alpha), train)?;
            if train && !name.contains("joint_blocks") {
                vars.push((format!("{name}.lora_down"), module.down().clone()));
                vars.push((format!("{name}.lora_up"), module.up().clone()));
            }
            set.insert(t.path.clone(), module);
            names.push(name);
        }
        assert_eq!(names, expected, "sd-scripts' modules, in its order");
        assert!(names.contains(&"lora_unet_x_embedder_proj".to_string()));
        let lora = Arc::new(set);
        let ctx = ForwardCtx { lora: Some(lora.clone()), train, gradient_checkpointing: false };
        let out = model.forward(&inputs, &ctx)?;
        check(&format!("LoRA on blocks and emb layers (train {train})"), &out, &reference["lora.sd3m"])?;
        if train {
            assert_eq!(vars.len(), 16, "8 emb_dims layers, down and up");
            let grads = (&out * &reference["lora.probe"])?.sum_all()?.backward()?;
            for (name, var) in &vars {
                let ours = lora.grad(&grads, var)?.ok_or_else(|| format!("no gradient for {name}"))?;
                check(&format!("grad {name}"), &ours, &reference[&format!("grad.{name}")])?;
            }
        }
    }
    Ok(())
}

/// Every joint-block module's LoRA factor gradients (attn qkv / proj, mlp, modulation, SD3.5
/// Medium's attn2, the last block's pre-only context side; `split_qkv` on and off) equal
/// sd-scripts' `lora_sd3` ones (fixture `block_grads.*`), for a network made the way training
/// makes it ([`create_network`] with the run's `network_args`) and the fixture's factors, with
/// gradient checkpointing off and on.
#[test]
fn block_lora_gradients_match_sd_scripts() -> TestResult {
    use lorakit_models::lora_inject::{create_network, DitNetworkArgs, NetworkSpec};

    let doc = json("block_grads.json")?;
    let reference = tensors("sd3_network", "block_grads.safetensors")?;
    let io = tensors("sd3_tiny", "io.safetensors")?;
    let runs = doc["runs"].as_array().ok_or("runs")?;
    assert_eq!(runs.len(), 3);
    let mut seen = (false, false);
    for run in runs {
        let name = run[0].as_str().ok_or("run name")?;
        let variant = run[1].as_str().ok_or("variant")?;
        let set = arg_set(&serde_json::json!([name, run[2], run[3], run[4]]))?;
        let modules: Vec<String> = serde_json::from_value(run[5].clone())?;
        seen.0 |= modules.iter().any(|m| m.contains("attn2"));
        seen.1 |= set.args.split_qkv;
        let (weights, cfg) = load(variant)?;
        let model = MmditTransformer::new(weights.view(""), &cfg)?;
        let targets: Vec<LoraTarget> =
            model.lora_targets().into_iter().chain(model.input_lora_targets().concat()).collect();
        let spec = NetworkSpec {
            rank: set.network.0,
            alpha: set.network.1,
            dit: Some(DitNetworkArgs::Sd3(set.args.clone())),
            ..Default::default()
        };
        let inputs = MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]);
        for gradient_checkpointing in [false, true] {
            let what = format!("{name} (checkpointing {gradient_checkpointing})");
            let lora = create_network(&targets, "lora_unet", &spec, DType::F32, &Device::Cpu, 0)?;
            let mut ours: Vec<String> = Vec::new();
            for m in lora.modules() {
                if ours.last().map(String::as_str) != Some(m.name()) {
                    ours.push(m.name().to_string());
                }
            }
            assert_eq!(ours, modules, "{what}: sd-scripts' modules, in its order");
            // The fixture's factors in place of the random start (every factor of the network
            // has one, and no other is left).
            let vars = lora.named_vars();
            let factors = reference.keys().filter(|k| k.starts_with(&format!("{name}:lora_unet_"))).count();
            assert_eq!(vars.len() + modules.len(), factors, "{what}: factors and alphas");
            for v in &vars {
                v.var.set(&reference[&format!("{name}:{}", v.name)].to_dtype(DType::F32)?)?;
            }
            for m in lora.modules() {
                let alpha = reference[&format!("{name}:{}.alpha", m.name())].to_scalar::<f32>()?;
                assert_eq!(m.alpha(), alpha as f64, "{what}: {}", m.name());
            }
            let lora = Arc::new(lora);
            let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing };
            let out = model.forward(&inputs, &ctx)?;
            check(&format!("{what}: output"), &out, &reference[&format!("{name}:out")])?;
            let grads = (&out * &reference[&format!("{name}:probe")])?.sum_all()?.backward()?;
            for v in &vars {
                let expected = &reference[&format!("{name}:grad:{}", v.name)];
                let got = lora.grad(&grads, &v.var)?;
                if expected.abs()?.max_all()?.to_scalar::<f32>()? == 0.0 {
                    // The pre-only context side's queries: their output is never used.
                    assert!(v.name.contains("_context_block_attn_qkv.lora_"), "{what}: {} has no gradient", v.name);
                    if let Some(g) = got {
                        assert_eq!(g.abs()?.max_all()?.to_scalar::<f32>()?, 0.0, "{what}: {}", v.name);
                    }
                    continue;
                }
                let got = got.ok_or_else(|| format!("{what}: no gradient for {}", v.name))?;
                check(&format!("{what}: grad {}", v.name), &got, expected)?;
            }
        }
    }
    assert_eq!(seen, (true, true), "the runs cover attn2 and split_qkv");
    Ok(())
}

#[test]
fn bad_scaled_sizes_are_refused() -> TestResult {
    let (weights, cfg) = load("sd3m")?;
    for sizes in [&[][..], &[1, 64][..]] {
        let err = MmditTransformer::new(weights.view(""), &cfg)?.with_scaled_pos_embed(sizes).unwrap_err();
        assert!(err.to_string().contains("latent sizes"), "{err}");
    }
    Ok(())
}
