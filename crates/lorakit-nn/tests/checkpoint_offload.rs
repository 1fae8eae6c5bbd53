//! `checkpoint_offloaded` (sd-scripts' `cpu_offload_checkpointing`): a chain of checkpointed
//! blocks whose saved inputs live in host memory gives the same output and gradients (inputs and
//! LoRA weights) as plain checkpointing. On the CPU the offload is the identity; built with
//! `--features cuda` on a machine with a GPU, the same chain runs on CUDA and the blocks'
//! outputs between them must sit in host memory.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};
use lorakit_nn::checkpoint::{checkpoint, checkpoint_offloaded, BlockFn};
use lorakit_nn::lora::{LoraKind, LoraModule, LoraSet};
use lorakit_nn::{ForwardCtx, Linear};

/// What [`chain`] measures: the output, the input's gradient, every LoRA weight's gradient,
/// and whether every block output between blocks sat in host memory.
type ChainResult = (Vec<f32>, Vec<f32>, Vec<Vec<f32>>, bool);

/// Three LoRA-adapted linear blocks (8 → 8, tanh) on `device`, chained with `offload` or not;
/// returns the output (on `device`), the gradient of sum(out²) for the input, every LoRA
/// weight's, and whether every block output between blocks was in host memory.
fn chain(device: &Device, offload: bool) -> Result<ChainResult> {
    let cpu = Device::Cpu;
    let seeded = |shape: &[usize], seed: u64| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> =
            (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0).collect();
        Tensor::from_vec(values, shape, &cpu)?.to_device(device)
    };
    let mut set = LoraSet::new(1, device)?;
    let mut blocks = Vec::new();
    for i in 0..3u64 {
        let path = format!("block{i}");
        let lin = Arc::new(Linear::new(path.clone(), (seeded(&[8, 8], 10 + i)? * 0.3)?, Some(seeded(&[8], 20 + i)?))?);
        let module = LoraModule::from_weights(
            format!("lora_{path}"),
            LoraKind::Linear,
            seeded(&[2, 8], 30 + i)?,
            seeded(&[8, 2], 40 + i)?,
            Some(1.0),
            true,
        )?;
        set.insert(path, module);
        blocks.push(lin);
    }
    let set = Arc::new(set);
    let ctx = ForwardCtx { lora: Some(set.clone()), train: true, gradient_checkpointing: true };
    let x = Var::from_tensor(&seeded(&[2, 3, 8], 50)?)?;
    let mut h = x.as_tensor().clone();
    let mut between_on_host = true;
    for lin in &blocks {
        let lin = lin.clone();
        let f: BlockFn = Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| lin.forward(&xs[0], ctx)?.tanh());
        h = if offload { checkpoint_offloaded(&[&h], &ctx, f, device)? } else { checkpoint(&[&h], &ctx, f)? };
        between_on_host &= h.device().is_cpu();
    }
    let out = h.to_device(device)?;
    let grads = out.sqr()?.sum_all()?.backward()?;
    let flat = |t: &Tensor| -> Result<Vec<f32>> { t.to_dtype(DType::F32)?.to_device(&cpu)?.flatten_all()?.to_vec1() };
    let mut lora_grads = Vec::new();
    for var in set.trainable_vars() {
        let g = set.grad(&grads, &var)?.expect("every LoRA weight gets a gradient");
        lora_grads.push(flat(&g)?);
    }
    let x_grad = grads.get(x.as_tensor()).expect("the input gets a gradient");
    Ok((flat(&out)?, flat(x_grad)?, lora_grads, between_on_host))
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(a.len() == b.len() && worst <= 1e-5, "{what}: differs by {worst}");
}

fn assert_same_chain(device: &Device) {
    let (out_a, x_a, lora_a, _) = chain(device, false).unwrap();
    let (out_b, x_b, lora_b, on_host) = chain(device, true).unwrap();
    assert_close(&out_a, &out_b, "output");
    assert_close(&x_a, &x_b, "input gradient");
    assert_eq!(lora_a.len(), 6);
    for (i, (a, b)) in lora_a.iter().zip(&lora_b).enumerate() {
        assert_close(a, b, &format!("LoRA gradient {i}"));
    }
    assert!(on_host, "offloaded block outputs live in host memory");
}

#[test]
fn offloaded_checkpoints_train_the_same_numbers_on_the_cpu() {
    assert_same_chain(&Device::Cpu);
}

#[cfg(feature = "cuda")]
#[test]
fn offloaded_checkpoints_train_the_same_numbers_on_cuda() {
    match Device::new_cuda(0) {
        Ok(device) => assert_same_chain(&device),
        Err(e) => eprintln!("no CUDA device, skipped: {e}"),
    }
}
