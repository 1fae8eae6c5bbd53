//! Named frozen layers that LoRA modules attach to.
//!
//! A layer knows its module path (`down_blocks.0.attentions.0.proj_in`); at forward time it asks
//! the [`ForwardCtx`]'s [`LoraSet`] for modules attached to that path. The model's weights stay
//! immutable and shareable, any number of LoRA sets can be tried against one loaded model, and
//! kohya's key names are the paths with `.` → `_`.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::frozen::{FrozenConv2d, FrozenLinear};
use crate::lora::{Branch, LoraDropout, LoraKind, LoraSet, LoraTarget, TargetGroup};

/// What a forward pass needs besides its inputs.
#[derive(Clone, Default)]
pub struct ForwardCtx {
    /// LoRA modules to apply, by layer path (none: the plain model).
    pub lora: Option<Arc<LoraSet>>,
    /// Training mode: enables LoRA dropout hooks.
    pub train: bool,
    /// Recompute blocks during backward instead of keeping their activations.
    pub gradient_checkpointing: bool,
}

impl ForwardCtx {
    /// A context that applies `lora` (inference, no checkpointing).
    pub fn with_lora(lora: Arc<LoraSet>) -> Self {
        ForwardCtx { lora: Some(lora), ..Default::default() }
    }

    /// The factors and scale of the one LoRA module at `path` when it can run fused with its
    /// frozen layer: f32 CPU input, no dropout hook in use (so choosing draws no random number)
    /// and a kind the layer accepts (`fits`). `None`: apply modules with [`Self::add_lora`].
    fn fusable_lora(
        &self,
        path: &str,
        x: &Tensor,
        fits: impl Fn(LoraKind) -> bool,
    ) -> Result<Option<(Tensor, Tensor, f32)>> {
        let Some(set) = &self.lora else { return Ok(None) };
        if set.lycoris_for_path(path).next().is_some() {
            return Ok(None);
        }
        let mut modules = set.for_path(path);
        let (Some(module), None) = (modules.next(), modules.next()) else { return Ok(None) };
        if module.part().is_some() {
            return Ok(None);
        }
        let no_dropout = !self.train || module.dropout() == LoraDropout::default();
        if !(no_dropout && fits(module.kind()) && crate::cpu::handles(x)) {
            return Ok(None);
        }
        match module.branch(x, self.train, set.rng())? {
            Branch::Fusable { down, up, scale } => Ok(Some((down, up, scale))),
            Branch::Skipped | Branch::Composed { .. } => Ok(None),
        }
    }

    fn add_lora(&self, path: &str, x: &Tensor, mut y: Tensor) -> Result<Tensor> {
        if let Some(set) = &self.lora {
            // Parts of a fused layer (split_qkv) add together, grouped by their module name.
            let mut parts: Vec<(&str, Vec<&crate::lora::LoraModule>)> = Vec::new();
            for m in set.for_path(path) {
                if m.part().is_some() {
                    match parts.iter_mut().find(|(name, _)| *name == m.name()) {
                        Some((_, group)) => group.push(m),
                        None => parts.push((m.name(), vec![m])),
                    }
                } else if let Some(delta) = m.forward(x, self.train, set.rng())? {
                    y = (y + delta)?;
                }
            }
            let out = y.dim(candle_core::D::Minus1)?;
            for (_, group) in parts {
                if let Some(delta) = crate::lora::parts_delta(&group, x, out, self.train, set.rng())? {
                    y = (y + delta)?;
                }
            }
            for delta in set.lycoris_for_path(path).map(|m| m.forward(x, self.train, set.rng())) {
                if let Some(delta) = delta? {
                    y = (y + delta)?;
                }
            }
        }
        Ok(y)
    }
}

/// A frozen linear layer with a module path.
#[derive(Clone, Debug)]
pub struct Linear {
    path: String,
    inner: FrozenLinear,
}

impl Linear {
    /// Wraps a weight (out, in) and optional bias for the layer at `path`.
    pub fn new(path: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear { path: path.into(), inner: FrozenLinear::new(weight, bias)? })
    }

    /// The module path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The frozen layer.
    pub fn frozen(&self) -> &FrozenLinear {
        &self.inner
    }

    /// The same layer with its weights copied to `device` (block swapping streams frozen weights
    /// to the compute device this way; LoRA modules attach by path, so they follow).
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        let bias = self.inner.bias().map(|b| b.to_device(device)).transpose()?;
        Linear::new(self.path.clone(), self.inner.weight().to_device(device)?, bias)
    }

    /// This layer as a LoRA target found by the given sd-scripts search.
    pub fn lora_target(&self, group: TargetGroup) -> LoraTarget {
        LoraTarget {
            path: self.path.clone(),
            kohya_path: None,
            kind: LoraKind::Linear,
            in_dim: self.inner.in_features(),
            out_dim: self.inner.out_features(),
            group,
        }
    }

    /// Applies the layer and any LoRA modules attached to its path. One linear module on f32
    /// CPU data runs fused with the frozen layer (one op: no separate branch output, add, or
    /// per-node gradient accumulation).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        if let Some((down, up, scale)) = ctx.fusable_lora(&self.path, x, |k| matches!(k, LoraKind::Linear))? {
            return crate::cpu::lora::linear_with_branch(x, &self.inner, &down, &up, scale);
        }
        let y = self.inner.forward(x)?;
        ctx.add_lora(&self.path, x, y)
    }
}

/// A frozen 2-D convolution with a module path.
#[derive(Clone, Debug)]
pub struct Conv2d {
    path: String,
    inner: FrozenConv2d,
}

impl Conv2d {
    /// Wraps a kernel (out, in, k, k), optional bias, stride and padding for the layer at `path`.
    pub fn new(
        path: impl Into<String>,
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Conv2d { path: path.into(), inner: FrozenConv2d::new(weight, bias, stride, padding)? })
    }

    /// The module path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The frozen layer.
    pub fn frozen(&self) -> &FrozenConv2d {
        &self.inner
    }

    /// This layer as a LoRA target found by the given sd-scripts search.
    pub fn lora_target(&self, group: TargetGroup) -> LoraTarget {
        let w = self.inner.weight().dims();
        LoraTarget {
            path: self.path.clone(),
            kohya_path: None,
            kind: LoraKind::Conv {
                kernel: self.inner.kernel_size(),
                stride: self.inner.stride(),
                padding: self.inner.padding(),
            },
            in_dim: w[1],
            out_dim: w[0],
            group,
        }
    }

    /// Applies the convolution and any LoRA modules attached to its path; one LoCon module with
    /// the conv's stride and padding on f32 CPU data runs fused with it, as for [`Linear`].
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let same_geometry = |k| {
            matches!(k, LoraKind::Conv { stride, padding, .. }
                if stride == self.inner.stride() && padding == self.inner.padding())
        };
        if let Some((down, up, scale)) = ctx.fusable_lora(&self.path, x, same_geometry)? {
            return crate::cpu::lora::conv_with_branch(x, &self.inner, &down, &up, scale);
        }
        let y = self.inner.forward(x)?;
        ctx.add_lora(&self.path, x, y)
    }
}
