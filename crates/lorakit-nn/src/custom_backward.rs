//! The custom-backward primitive: a value computed off the graph plus a closure for its
//! input gradient.
//!
//! Built from candle's public `CustomOp1`: the op's forward returns the precomputed output
//! unchanged and its `bwd` calls the closure. The output therefore costs no graph of its own
//! (no stored intermediates, no gradients for frozen weights) while gradients still reach `x`.

use std::sync::Arc;

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Storage, Tensor};

/// Computes the gradient of the op's input from the gradient of its output.
pub type BackwardFn = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// Computes the gradients of two inputs from the gradient of the output (`None`: not needed).
pub type Backward2Fn = Arc<dyn Fn(&Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> + Send + Sync>;

/// Computes the gradients of several inputs from the gradient of the output, in input order.
pub type BackwardManyFn = Arc<dyn Fn(&Tensor) -> Result<Vec<Tensor>> + Send + Sync>;

/// The op holds the precomputed output only until candle runs its forward (which copies it into
/// the result): the graph then keeps `x` and the result, not a second copy of `y` — as a
/// `CustomOp2(x, y)` operand it would stay alive until backward, doubling every frozen layer's
/// activation memory.
struct Attach {
    y: std::sync::Mutex<Option<Tensor>>,
    backward: BackwardFn,
}

fn passthrough_check(layout: &Layout) -> Result<()> {
    if !layout.is_contiguous() || layout.start_offset() != 0 {
        candle_core::bail!("attach: the precomputed output must be contiguous from offset 0")
    }
    Ok(())
}

impl CustomOp1 for Attach {
    fn name(&self) -> &'static str {
        "lorakit-attach"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = take(&self.y)?;
        let (storage, layout) = y.storage_and_layout();
        passthrough_check(layout)?;
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attach: the output is not on the CPU like its input"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &candle_core::CudaStorage, _: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = take(&self.y)?;
        let (storage, layout) = y.storage_and_layout();
        passthrough_check(layout)?;
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attach: the output is not on the GPU like its input"),
        }
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(&self, _: &candle_core::MetalStorage, _: &Layout) -> Result<(candle_core::MetalStorage, Shape)> {
        let y = take(&self.y)?;
        let (storage, layout) = y.storage_and_layout();
        passthrough_check(layout)?;
        match &*storage {
            Storage::Metal(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attach: the output is not on the Metal device like its input"),
        }
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.backward)(grad)?))
    }
}

/// [`Attach`] for two inputs (an activation and a trainable weight): no packing copy of either.
struct Attach2 {
    y: std::sync::Mutex<Option<Tensor>>,
    backward: Backward2Fn,
}

impl CustomOp2 for Attach2 {
    fn name(&self) -> &'static str {
        "lorakit-attach2"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = take(&self.y)?;
        let (storage, layout) = y.storage_and_layout();
        passthrough_check(layout)?;
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attach2: the output is not on the CPU like its inputs"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = take(&self.y)?;
        let (storage, layout) = y.storage_and_layout();
        passthrough_check(layout)?;
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attach2: the output is not on the GPU like its inputs"),
        }
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        _: &candle_core::MetalStorage,
        _: &Layout,
        _: &candle_core::MetalStorage,
        _: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let y = take(&self.y)?;
        let (storage, layout) = y.storage_and_layout();
        passthrough_check(layout)?;
        match &*storage {
            Storage::Metal(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attach2: the output is not on the Metal device like its inputs"),
        }
    }

    fn bwd(&self, _a: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        (self.backward)(grad)
    }
}

fn take(slot: &std::sync::Mutex<Option<Tensor>>) -> Result<Tensor> {
    slot.lock()
        .map_err(|_| candle_core::Error::Msg("attach: poisoned lock".into()))?
        .take()
        .ok_or_else(|| candle_core::Error::Msg("attach: forward ran twice".into()))
}

/// Returns `y` (computed by the caller from `a.detach()` and `b.detach()`), recorded in the graph
/// as a function of `a` and `b` whose gradients are `backward(grad_y)`. `y` as is when neither
/// input is tracked.
pub fn attach2(a: &Tensor, b: &Tensor, y: &Tensor, backward: Backward2Fn) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Ok(y.clone());
    }
    let y = y.detach().contiguous()?;
    let y = if y.layout().start_offset() != 0 { y.copy()? } else { y };
    if !y.device().same_device(a.device()) {
        candle_core::bail!("attach2: output on {:?} for inputs on {:?}", y.device(), a.device())
    }
    a.apply_op2_arc(b, Arc::new(Box::new(Attach2 { y: std::sync::Mutex::new(Some(y)), backward })))
}

/// Returns `y` (computed by the caller on `x.detach()`), recorded in the graph as a function of
/// `x` whose input gradient is `backward(grad_y)`.
///
/// When `x` is not tracked (inference, or an input nothing upstream needs gradients for) `y` is
/// returned as is and `backward` is dropped.
pub fn attach(x: &Tensor, y: &Tensor, backward: BackwardFn) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y.clone());
    }
    let y = y.detach().contiguous()?;
    let y = if y.layout().start_offset() != 0 { y.copy()? } else { y };
    if !y.device().same_device(x.device()) {
        // candle runs the op on x's device; the output's storage must live there too.
        candle_core::bail!("attach: output on {:?} for an input on {:?}", y.device(), x.device())
    }
    x.apply_op1_arc(Arc::new(Box::new(Attach { y: std::sync::Mutex::new(Some(y)), backward })))
}

/// [`attach`] for an output that depends on several inputs: `backward(grad_y)` returns one
/// gradient per input, each of that input's shape.
///
/// The inputs are flattened and concatenated (a differentiable copy), so candle routes each
/// slice of the packed gradient back to its input.
pub fn attach_many(inputs: &[&Tensor], y: &Tensor, backward: BackwardManyFn) -> Result<Tensor> {
    if !inputs.iter().any(|t| t.track_op()) {
        return Ok(y.clone());
    }
    let flat: Vec<Tensor> = inputs.iter().map(|t| t.flatten_all()).collect::<Result<_>>()?;
    let packed = Tensor::cat(&flat, 0)?;
    let shapes: Vec<Shape> = inputs.iter().map(|t| t.shape().clone()).collect();
    let pack_grads: BackwardFn = Arc::new(move |grad: &Tensor| {
        let grads = backward(grad)?;
        if grads.len() != shapes.len() {
            candle_core::bail!("attach_many: backward returned {} gradients for {} inputs", grads.len(), shapes.len())
        }
        let flat: Vec<Tensor> = grads
            .iter()
            .zip(&shapes)
            .map(|(g, s)| {
                if g.shape() != s {
                    candle_core::bail!("attach_many: gradient shape {:?} for an input of shape {:?}", g.shape(), s)
                }
                g.flatten_all()
            })
            .collect::<Result<_>>()?;
        Tensor::cat(&flat, 0)
    });
    attach(&packed, y, pack_grads)
}
