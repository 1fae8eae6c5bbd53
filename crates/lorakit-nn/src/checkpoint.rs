//! Block-level gradient checkpointing.
//!
//! The block runs once without a graph; during backward it runs again on fresh copies of its
//! inputs, with tracking, and its own `backward()` yields the input gradients (returned to the
//! outer graph) and the LoRA weight gradients (added to the [`LoraSet`]'s side store, since
//! they cannot enter the outer `GradStore`). The dropout RNG is rewound so the recomputation
//! draws the same masks.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor, Var};

use crate::custom_backward::attach_many;
use crate::layers::ForwardCtx;
use crate::lock;

/// A block's forward as a shareable function of its inputs.
pub type BlockFn = Arc<dyn Fn(&[Tensor], &ForwardCtx) -> Result<Tensor> + Send + Sync>;

/// Runs `block(inputs)`, checkpointed when `ctx.gradient_checkpointing` is on and something
/// inside or upstream needs gradients; otherwise a plain call.
pub fn checkpoint(inputs: &[&Tensor], ctx: &ForwardCtx, block: BlockFn) -> Result<Tensor> {
    let trainable = ctx.lora.as_ref().is_some_and(|l| l.has_trainable());
    let any_tracked = inputs.iter().any(|t| t.track_op());
    if !ctx.gradient_checkpointing || !(trainable || any_tracked) {
        let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
        return block(&owned, ctx);
    }
    let detached: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
    let rng_before = ctx.lora.as_ref().map(|l| lock(l.rng()).clone());
    let y = block(&detached, ctx)?.detach();

    let mut all_inputs: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    // On the output's device: offloaded blocks (below) return host tensors, and the inputs are
    // packed into one tensor.
    let anchor = match &ctx.lora {
        Some(l) => l.anchor().as_tensor().to_dtype(y.dtype())?.to_device(y.device())?,
        None => Tensor::zeros((), y.dtype(), y.device())?,
    };
    all_inputs.push(anchor);
    let refs: Vec<&Tensor> = all_inputs.iter().collect();
    let ctx2 = ctx.clone();
    attach_many(
        &refs,
        &y,
        Arc::new(move |grad: &Tensor| {
            let vars: Vec<Var> = detached.iter().map(Var::from_tensor).collect::<Result<_>>()?;
            let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let rng_after = match (&ctx2.lora, &rng_before) {
                (Some(l), Some(before)) => {
                    let mut rng = lock(l.rng());
                    Some(std::mem::replace(&mut *rng, before.clone()))
                }
                _ => None,
            };
            let y2 = block(&tensors, &ctx2)?;
            if let (Some(l), Some(after)) = (&ctx2.lora, rng_after) {
                *lock(l.rng()) = after;
            }
            let grads = (y2 * grad)?.sum_all()?.backward()?;
            // candle computes some variable gradients (conv kernels, block inputs) with ops on the
            // tracked forward activations, so they still reference the recomputed graph: detach,
            // or every block's activations stay alive until the end of the step (SD1.5: a 5.3 GB
            // checkpointed step peaked at 9.6 GB).
            if let Some(lora) = &ctx2.lora {
                for var in lora.trainable_vars() {
                    if let Some(g) = grads.get(&var) {
                        lora.accumulate_side_grad(var.id(), &g.detach())?;
                    }
                }
            }
            let mut out: Vec<Tensor> = vars
                .iter()
                .map(|v| match grads.get(v) {
                    Some(g) => Ok(g.detach()),
                    None => v.as_tensor().zeros_like(),
                })
                .collect::<Result<_>>()?;
            out.push(Tensor::zeros((), grad.dtype(), grad.device())?);
            Ok(out)
        }),
    )
}

/// [`checkpoint`] with the block inputs it keeps for backward held in host memory (sd-scripts'
/// `cpu_offload_checkpointing`): the inputs (all on the host, or all on `compute`) are copied to
/// `compute` for the block, its output comes back to the host, so between blocks the graph holds
/// host copies only; backward copies the inputs to `compute` again to recompute. Without
/// checkpointing, or when `compute` is the CPU, this is [`checkpoint`]. The caller moves the last
/// block's output back to `compute` (a tracked `to_device`).
pub fn checkpoint_offloaded(inputs: &[&Tensor], ctx: &ForwardCtx, block: BlockFn, compute: &Device) -> Result<Tensor> {
    if compute.is_cpu() || !ctx.gradient_checkpointing {
        let on_compute: Vec<Tensor> = inputs.iter().map(|t| t.to_device(compute)).collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = on_compute.iter().collect();
        return checkpoint(&refs, ctx, block);
    }
    let on_host: Vec<Tensor> = inputs.iter().map(|t| t.to_device(&Device::Cpu)).collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = on_host.iter().collect();
    let compute = compute.clone();
    let offloaded: BlockFn = Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| {
        let on_compute: Vec<Tensor> = xs.iter().map(|t| t.to_device(&compute)).collect::<Result<_>>()?;
        block(&on_compute, ctx)?.to_device(&Device::Cpu)
    });
    checkpoint(&refs, ctx, offloaded)
}
