//! SD3's block swap (sd-scripts' `--blocks_to_swap`, `MMDiT.enable_block_swap`) and the MMDiT's
//! per-joint-block gradient checkpointing it relies on: the last N joint blocks stay in host
//! memory and are copied to the compute device for each call — on the CPU an identity copy, so
//! the prediction and the LoRA gradients (through the backward recomputation) must not move by a
//! bit; sd-scripts' limit of depth − 2 blocks and its message.
//!
//! The 2-block fixtures (tests/fixtures/reference/sd3_tiny/, from make_sd3_tiny.py) allow no
//! swap under that limit, so the model here is SD3.5 Medium's tiny one deepened to 4 blocks by
//! repeating its first block (with the second attention) three times before its last
//! (pre-only) one. Its numbers are compared with the same model unswapped, not with PyTorch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lorakit_models::dit::mmdit::{MmditConfig, MmditInputs, MmditTransformer};
use lorakit_models::Weights;
use lorakit_nn::lora::{LoraModule, LoraSet};
use lorakit_nn::ForwardCtx;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;
/// A LoRA set and its down factors by module name.
type Lora = (Arc<LoraSet>, Vec<(String, Var)>);

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/sd3_tiny")).join(rel)
}

fn io() -> AnyResult<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu)?)
}

/// An MMDiT from SAI-layout `weights`, with its config read from the shapes.
fn build(weights: &Weights) -> AnyResult<MmditTransformer> {
    let names: Vec<&str> = weights.names().collect();
    let cfg = MmditConfig::from_sai_shapes(names.iter().copied(), |k| weights.tensor(k).map(|t| t.dims().to_vec()))?;
    let model = MmditTransformer::new(weights.view(""), &cfg)?;
    weights.check_complete()?;
    Ok(model)
}

/// `variant`'s tiny MMDiT as it is (2 blocks).
fn tiny(variant: &str) -> AnyResult<MmditTransformer> {
    build(&Weights::from_safetensors(&fixture(&format!("{variant}.safetensors")), DType::F32, &Device::Cpu)?)
}

/// SD3.5 Medium's tiny MMDiT with 4 joint blocks: blocks 0, 1, 2 are its block 0, block 3 its
/// (pre-only) block 1.
fn deep_sd35m() -> AnyResult<MmditTransformer> {
    let source = candle_core::safetensors::load(fixture("sd35m.safetensors"), &Device::Cpu)?;
    let mut tensors = HashMap::new();
    for (name, t) in source {
        // f16 storage, computed in f32 (as `Weights::from_safetensors` loads the fixtures).
        let t = t.to_dtype(DType::F32)?;
        match name.strip_prefix("joint_blocks.") {
            Some(rest) if rest.starts_with("0.") => {
                for i in 0..3 {
                    tensors.insert(format!("joint_blocks.{i}.{}", &rest[2..]), t.clone());
                }
            }
            Some(rest) if rest.starts_with("1.") => {
                tensors.insert(format!("joint_blocks.3.{}", &rest[2..]), t);
            }
            Some(_) => return Err(format!("{name}: the fixture was expected to have 2 blocks").into()),
            None => {
                tensors.insert(name, t);
            }
        }
    }
    build(&Weights::new(tensors, "sd35m deepened to 4 blocks"))
}

/// Deterministic small values (a fixed LCG): the factors need not be trained ones, only equal
/// between the models compared.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// A rank-2 LoRA on every joint-block linear of `model` and the embedders.
fn lora_for(model: &MmditTransformer) -> AnyResult<Lora> {
    let mut set = LoraSet::new(0, &Device::Cpu)?;
    let mut vars = Vec::new();
    let targets = [model.lora_targets(), model.input_lora_targets().concat()].concat();
    for (i, t) in targets.iter().enumerate() {
        let rank = 2;
        let down_shape: Vec<usize> = match t.kind {
            lorakit_nn::lora::LoraKind::Conv { kernel, .. } => vec![rank, t.in_dim, kernel, kernel],
            _ => vec![rank, t.in_dim],
        };
        let up_shape: Vec<usize> = match t.kind {
            lorakit_nn::lora::LoraKind::Conv { .. } => vec![t.out_dim, rank, 1, 1],
            _ => vec![t.out_dim, rank],
        };
        let down = Tensor::from_vec(values(down_shape.iter().product(), 2 * i as u64), down_shape, &Device::Cpu)?;
        let up = Tensor::from_vec(values(up_shape.iter().product(), 2 * i as u64 + 1), up_shape, &Device::Cpu)?;
        let name = t.kohya_name("lora_unet");
        let module = LoraModule::from_weights(name.clone(), t.kind, down, up, Some(1.0), true)?;
        vars.push((name, module.down().clone()));
        set.insert(t.path.clone(), module);
    }
    Ok((Arc::new(set), vars))
}

/// The prediction for the fixture's inputs and the gradients of Σ prediction² for every LoRA
/// down factor, with or without gradient checkpointing; also how many of those gradients the
/// outer graph holds (the rest come from checkpointed recomputations).
fn run(model: &MmditTransformer, checkpointing: bool) -> AnyResult<(Vec<f32>, Vec<Vec<f32>>, usize)> {
    let io = io()?;
    let (lora, vars) = lora_for(model)?;
    let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
    let out = model.forward(&MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]), &ctx)?;
    let grads = out.sqr()?.sum_all()?.backward()?;
    let outer = vars.iter().filter(|(_, v)| grads.get(v.as_tensor()).is_some()).count();
    let grads = vars
        .iter()
        .map(|(name, v)| -> AnyResult<Vec<f32>> {
            Ok(lora.grad(&grads, v)?.ok_or(format!("{name}: no gradient"))?.flatten_all()?.to_vec1::<f32>()?)
        })
        .collect::<AnyResult<_>>()?;
    Ok((out.flatten_all()?.to_vec1::<f32>()?, grads, outer))
}

#[test]
fn swapped_blocks_stream_without_changing_a_number() -> TestResult {
    let plain = deep_sd35m()?;
    assert_eq!((plain.config().depth, plain.config().x_self_attn_layers.clone()), (4, vec![0, 1, 2]));
    assert_eq!(plain.host_blocks(), 0);
    // Blocks 2 (with the second attention) and 3 (pre-only) stay "in host memory": here the CPU
    // streams to itself, the copies happen, the numbers must not move.
    let swapped = deep_sd35m()?.with_block_swap(2, &Device::Cpu)?;
    assert_eq!(swapped.host_blocks(), 2);
    assert!(swapped.device().is_cpu());

    let (out, grads, outer) = run(&plain, false)?;
    assert_eq!(outer, grads.len(), "without checkpointing the outer graph holds every gradient");
    let (out_ckpt, grads_ckpt, outer_ckpt) = run(&plain, true)?;
    // Checkpointed: the joint blocks' LoRA gradients come from the recomputation (the side
    // store), only those of the 8 layers outside the blocks (`emb_dims`' targets) from the outer
    // graph.
    assert_eq!(plain.input_lora_targets().concat().len(), 8);
    assert_eq!(outer_ckpt, 8, "the joint blocks are checkpointed");
    assert_eq!(out, out_ckpt);
    // The joint blocks' LoRA gradients are bit for bit the plain ones; the embedders' sum the
    // conditioning's gradients from every block, in another order (float rounding only).
    let in_blocks = plain.lora_targets().len();
    assert_eq!(grads[..in_blocks], grads_ckpt[..in_blocks], "checkpointing changes no block gradient");
    for (a, b) in grads[in_blocks..].iter().zip(&grads_ckpt[in_blocks..]) {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let scale = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-6 * scale, "embedder gradient off by {diff:e} of {scale:e}");
    }
    // Swapped and checkpointed: bit for bit the checkpointed run.
    let (out_swap, grads_swap, _) = run(&swapped, true)?;
    assert_eq!(out, out_swap, "streaming blocks changes no prediction");
    assert_eq!(grads_ckpt, grads_swap, "nor a gradient through the recomputed streamed blocks");
    assert!(grads_swap.iter().flatten().any(|g| *g != 0.0));
    // Inference (no LoRA, no checkpointing) through the streamed blocks.
    let io = io()?;
    let inputs = MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]);
    let ctx = ForwardCtx::default();
    let (a, b) = (plain.forward(&inputs, &ctx)?, swapped.forward(&inputs, &ctx)?);
    assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

#[test]
fn scaled_position_tables_move_with_the_model() -> TestResult {
    let plain = deep_sd35m()?.with_scaled_pos_embed(&[6, 12])?;
    let swapped = deep_sd35m()?.with_scaled_pos_embed(&[6, 12])?.with_block_swap(1, &Device::Cpu)?;
    assert_eq!(swapped.scaled_pos_embed_sizes(), plain.scaled_pos_embed_sizes());
    let io = io()?;
    let inputs = MmditInputs::new(&io["x"], &io["t"], &io["y"], &io["context"]);
    let ctx = ForwardCtx::default();
    let (a, b) = (plain.forward(&inputs, &ctx)?, swapped.forward(&inputs, &ctx)?);
    assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

#[test]
fn at_most_depth_minus_two_blocks_swap_as_in_sd_scripts() -> TestResult {
    let err = deep_sd35m()?.with_block_swap(3, &Device::Cpu).expect_err("4 blocks: 2 at most").to_string();
    assert!(err.contains("blocks_to_swap = 3"), "{err}");
    assert!(err.contains("Cannot swap more than 2 blocks. Requested: 3 blocks."), "sd-scripts' message: {err}");
    // The 2-block fixtures swap nothing; 0 is no swap.
    for variant in ["sd3m", "sd35l", "sd35m"] {
        let err = tiny(variant)?.with_block_swap(1, &Device::Cpu).expect_err("2 blocks").to_string();
        assert!(err.contains("Cannot swap more than 0 blocks. Requested: 1 blocks."), "{variant}: {err}");
        assert_eq!(tiny(variant)?.with_block_swap(0, &Device::Cpu)?.host_blocks(), 0);
    }
    Ok(())
}
