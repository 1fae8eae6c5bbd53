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

/// A precomputed output: a tensor, or CPU data made by our kernels, which the op's forward
/// hands to candle without a copy.
enum Output {
    Tensor(Tensor),
    Cpu(CpuStorage, Shape),
}

impl Output {
    /// The CPU storage candle's forward must return: moved out for kernel output, else a copy.
    fn into_cpu(self, op: &str) -> Result<(CpuStorage, Shape)> {
        match self {
            Output::Cpu(storage, shape) => Ok((storage, shape)),
            Output::Tensor(y) => {
                let (storage, layout) = y.storage_and_layout();
                passthrough_check(layout)?;
                match &*storage {
                    Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
                    _ => candle_core::bail!("{op}: the output is not on the CPU like its input"),
                }
            }
        }
    }

    /// The tensor for a GPU forward (kernel output lives on the CPU only).
    #[cfg(any(feature = "cuda", feature = "metal"))]
    fn into_tensor(self, op: &str) -> Result<Tensor> {
        match self {
            Output::Tensor(y) => Ok(y),
            Output::Cpu(..) => candle_core::bail!("{op}: CPU output for an input on another device"),
        }
    }
}

/// The op holds the precomputed output only until candle runs its forward (which copies it into
/// the result): the graph then keeps `x` and the result, not a second copy of `y` — as a
/// `CustomOp2(x, y)` operand it would stay alive until backward, doubling every frozen layer's
/// activation memory.
struct Attach {
    y: std::sync::Mutex<Option<Output>>,
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
        take(&self.y)?.into_cpu("attach")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &candle_core::CudaStorage, _: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = take(&self.y)?.into_tensor(self.name())?;
        let (storage, layout) = y.storage_and_layout();
        passthrough_check(layout)?;
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("attach: the output is not on the GPU like its input"),
        }
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(&self, _: &candle_core::MetalStorage, _: &Layout) -> Result<(candle_core::MetalStorage, Shape)> {
        let y = take(&self.y)?.into_tensor(self.name())?;
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
    y: std::sync::Mutex<Option<Output>>,
    backward: Backward2Fn,
}

impl CustomOp2 for Attach2 {
    fn name(&self) -> &'static str {
        "lorakit-attach2"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        take(&self.y)?.into_cpu("attach2")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = take(&self.y)?.into_tensor(self.name())?;
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
        let y = take(&self.y)?.into_tensor(self.name())?;
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

fn take(slot: &std::sync::Mutex<Option<Output>>) -> Result<Output> {
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
    a.apply_op2_arc(b, Arc::new(Box::new(Attach2 { y: std::sync::Mutex::new(Some(Output::Tensor(y))), backward })))
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
    x.apply_op1_arc(Arc::new(Box::new(Attach { y: std::sync::Mutex::new(Some(Output::Tensor(y))), backward })))
}

/// [`attach`] for an output our CPU kernels computed into `data` (row-major, `shape`): handed
/// to candle without a copy. `x` must be on the CPU.
pub(crate) fn attach_cpu(x: &Tensor, data: Vec<f32>, shape: Shape, backward: BackwardFn) -> Result<Tensor> {
    if !x.track_op() {
        return Tensor::from_vec(data, shape, x.device());
    }
    if shape.elem_count() != data.len() {
        candle_core::bail!("attach: {} values for shape {shape:?}", data.len())
    }
    let y = Output::Cpu(CpuStorage::F32(data), shape);
    x.apply_op1_arc(Arc::new(Box::new(Attach { y: std::sync::Mutex::new(Some(y)), backward })))
}

/// [`attach2`] for CPU kernel output, as [`attach_cpu`].
pub(crate) fn attach2_cpu(
    a: &Tensor,
    b: &Tensor,
    data: Vec<f32>,
    shape: Shape,
    backward: Backward2Fn,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Tensor::from_vec(data, shape, a.device());
    }
    if shape.elem_count() != data.len() {
        candle_core::bail!("attach2: {} values for shape {shape:?}", data.len())
    }
    let y = Output::Cpu(CpuStorage::F32(data), shape);
    a.apply_op2_arc(b, Arc::new(Box::new(Attach2 { y: std::sync::Mutex::new(Some(y)), backward })))
}

/// Gradients of three inputs (each `None` when not needed) from the op's output (first) and
/// the output's gradient.
pub(crate) type Backward3Fn = Arc<dyn Fn(&Tensor, &Tensor) -> Result<[Option<Tensor>; 3]> + Send + Sync>;

/// Records CPU kernel output `data` (`shape`) as a function of `a`, `b` and `c` whose gradients
/// `backward(y, grad_y)` returns in that order (the graph keeps `y`; no copy is needed for it):
/// [`attach_n_cpu`] with three inputs and an array of gradients.
pub(crate) fn attach3_cpu(inputs: [&Tensor; 3], data: Vec<f32>, shape: Shape, backward: Backward3Fn) -> Result<Tensor> {
    attach_n_cpu(&inputs, data, shape, Arc::new(move |y: &Tensor, grad: &Tensor| Ok(Vec::from(backward(y, grad)?))))
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

/// Gradients of one to three inputs (each `None` when not needed, in input order) from the
/// op's output (first) and the output's gradient.
pub(crate) type BackwardWithOutputFn = Arc<dyn Fn(&Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// CPU kernel output recorded as a function of one, two or three inputs; its backward is
/// handed the output too (the graph keeps it anyway, so nothing is saved twice).
struct AttachN {
    y: std::sync::Mutex<Option<Output>>,
    backward: BackwardWithOutputFn,
}

impl AttachN {
    fn grads<const N: usize>(&self, res: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; N]> {
        let grads = (self.backward)(res, grad)?;
        grads.try_into().map_err(|g: Vec<_>| {
            candle_core::Error::Msg(format!("attach: backward returned {} gradients for {N} inputs", g.len()))
        })
    }
}

impl CustomOp1 for AttachN {
    fn name(&self) -> &'static str {
        "lorakit-attach-n"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        take(&self.y)?.into_cpu("attach")
    }

    fn bwd(&self, _: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [a] = self.grads::<1>(res, grad)?;
        Ok(a)
    }
}

impl CustomOp2 for AttachN {
    fn name(&self) -> &'static str {
        "lorakit-attach-n"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        take(&self.y)?.into_cpu("attach")
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [a, b] = self.grads::<2>(res, grad)?;
        Ok((a, b))
    }
}

impl candle_core::CustomOp3 for AttachN {
    fn name(&self) -> &'static str {
        "lorakit-attach-n"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        take(&self.y)?.into_cpu("attach")
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [a, b, c] = self.grads::<3>(res, grad)?;
        Ok((a, b, c))
    }
}

/// Records CPU kernel output `data` (`shape`) as a function of `inputs` (one to three, on the
/// CPU) whose gradients `backward(y, grad_y)` returns in input order. No packing copy of the
/// inputs; `y` as a plain tensor when none of them is tracked.
pub(crate) fn attach_n_cpu(
    inputs: &[&Tensor],
    data: Vec<f32>,
    shape: Shape,
    backward: BackwardWithOutputFn,
) -> Result<Tensor> {
    let Some(first) = inputs.first() else { candle_core::bail!("attach: no inputs") };
    if !inputs.iter().any(|t| t.track_op()) {
        return Tensor::from_vec(data, shape, first.device());
    }
    if shape.elem_count() != data.len() {
        candle_core::bail!("attach: {} values for shape {shape:?}", data.len())
    }
    let op = AttachN { y: std::sync::Mutex::new(Some(Output::Cpu(CpuStorage::F32(data), shape))), backward };
    match *inputs {
        [a] => a.apply_op1_arc(Arc::new(Box::new(op))),
        [a, b] => a.apply_op2_arc(b, Arc::new(Box::new(op))),
        [a, b, c] => a.apply_op3_arc(b, c, Arc::new(Box::new(op))),
        _ => candle_core::bail!("attach: {} inputs (one to three are supported)", inputs.len()),
    }
}
