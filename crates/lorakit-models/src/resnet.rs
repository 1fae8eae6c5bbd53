//! The ResNet block and the resampling layers between resolutions, shared by the UNet and the
//! VAE (diffusers `resnet.py`, `downsampling.py`, `upsampling.py`).
//!
//! Every convolution and linear is a named `lorakit_nn` layer whose path is its diffusers module
//! path, so sd-scripts' conv LoRA targets (`…resnets.0.conv1`, `…downsamplers.0.conv`) fall out
//! of the tree. Also home of the small (key, shape) helpers the models' `parameter_shapes` use.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use lorakit_nn::activation::silu;
use lorakit_nn::lora::{LoraTarget, TargetGroup};
use lorakit_nn::{Conv2d, ForwardCtx, GroupNorm, Linear};

use crate::weights::WeightsView;

/// Parameter keys with their shapes, in diffusers' `state_dict` order (what a model's `parameter_shapes`
/// returns).
pub type ParamShapes = Vec<(String, Vec<usize>)>;

/// `prefix.name`, or `name` at the root.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The keys of a linear layer at `path`.
pub(crate) fn push_linear(out: &mut ParamShapes, path: &str, in_dim: usize, out_dim: usize, bias: bool) {
    out.push((join(path, "weight"), vec![out_dim, in_dim]));
    if bias {
        out.push((join(path, "bias"), vec![out_dim]));
    }
}

/// The keys of a k×k conv (with bias) at `path`.
pub(crate) fn push_conv(out: &mut ParamShapes, path: &str, in_c: usize, out_c: usize, k: usize) {
    out.push((join(path, "weight"), vec![out_c, in_c, k, k]));
    out.push((join(path, "bias"), vec![out_c]));
}

/// The keys of a GroupNorm / LayerNorm (weight and bias) at `path`.
pub(crate) fn push_norm(out: &mut ParamShapes, path: &str, channels: usize) {
    out.push((join(path, "weight"), vec![channels]));
    out.push((join(path, "bias"), vec![channels]));
}

/// Fails with a readable message when a block receives an activation of the wrong shape.
pub(crate) fn expect_channels(x: &Tensor, channels: usize, what: &str) -> Result<(usize, usize, usize, usize)> {
    match x.dims() {
        &[b, c, h, w] if c == channels => Ok((b, c, h, w)),
        dims => candle_core::bail!("{what} expects (B, {channels}, H, W) input, got {dims:?}"),
    }
}

/// Hyper-parameters of a [`ResnetBlock2D`] (diffusers' constructor arguments that SD uses).
#[derive(Clone, Debug, PartialEq)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels; a 1×1 `conv_shortcut` maps the residual when they differ.
    pub out_channels: usize,
    /// Width of the time embedding (`time_emb_proj`); `None` in the VAE.
    pub temb_channels: Option<usize>,
    /// GroupNorm groups (both norms).
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// The sum `shortcut + h` is divided by this (1 in SD).
    pub output_scale_factor: f64,
}

/// `x + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`, with a 1×1 shortcut when
/// the channel count changes (diffusers `ResnetBlock2D`, "default" time-embedding norm).
#[derive(Clone, Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    in_channels: usize,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Reads the block at `vb` (e.g. `down_blocks.0.resnets.0`).
    pub fn new(vb: WeightsView, cfg: &ResnetBlock2DConfig) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        Ok(ResnetBlock2D {
            norm1: vb.pp("norm1").group_norm(cfg.groups, cin, cfg.eps)?,
            conv1: vb.pp("conv1").conv2d(cin, cout, 3, 1, 1)?,
            time_emb_proj: match cfg.temb_channels {
                Some(t) => Some(vb.pp("time_emb_proj").linear(t, cout, true)?),
                None => None,
            },
            norm2: vb.pp("norm2").group_norm(cfg.groups, cout, cfg.eps)?,
            conv2: vb.pp("conv2").conv2d(cout, cout, 3, 1, 1)?,
            conv_shortcut: if cin != cout { Some(vb.pp("conv_shortcut").conv2d(cin, cout, 1, 1, 0)?) } else { None },
            in_channels: cin,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// The keys and shapes [`ResnetBlock2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &ResnetBlock2DConfig, out: &mut ParamShapes) {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        push_norm(out, &join(prefix, "norm1"), cin);
        push_conv(out, &join(prefix, "conv1"), cin, cout, 3);
        if let Some(t) = cfg.temb_channels {
            push_linear(out, &join(prefix, "time_emb_proj"), t, cout, true);
        }
        push_norm(out, &join(prefix, "norm2"), cout);
        push_conv(out, &join(prefix, "conv2"), cout, cout, 3);
        if cin != cout {
            push_conv(out, &join(prefix, "conv_shortcut"), cin, cout, 1);
        }
    }

    /// Applies the block to `x` (B, C_in, H, W); `temb` (B, temb_channels) is added per channel
    /// after `conv1` when the block has a `time_emb_proj`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        expect_channels(x, self.in_channels, "ResnetBlock2D")?;
        let h = silu(&self.norm1.forward(x)?)?;
        let mut h = self.conv1.forward(&h, ctx)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&silu(temb)?, ctx)?;
            h = h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = silu(&self.norm2.forward(&h)?)?;
        let h = self.conv2.forward(&h, ctx)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x, ctx)?,
            None => x.clone(),
        };
        let y = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(y)
        } else {
            y / self.output_scale_factor
        }
    }

    /// sd-scripts' conv-block targets in module order: conv1, time_emb_proj, conv2,
    /// conv_shortcut.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        out.push(self.conv1.lora_target(TargetGroup::ConvBlock));
        if let Some(p) = &self.time_emb_proj {
            out.push(p.lora_target(TargetGroup::ConvBlock));
        }
        out.push(self.conv2.lora_target(TargetGroup::ConvBlock));
        if let Some(c) = &self.conv_shortcut {
            out.push(c.lora_target(TargetGroup::ConvBlock));
        }
    }
}

/// Runs a ResNet block, through block-level gradient checkpointing when the context asks for it
/// (the block is recomputed during backward instead of keeping its activations).
pub fn resnet_forward(
    block: &Arc<ResnetBlock2D>,
    x: &Tensor,
    temb: Option<&Tensor>,
    ctx: &ForwardCtx,
) -> Result<Tensor> {
    if !ctx.gradient_checkpointing {
        return block.forward(x, temb, ctx);
    }
    let b = Arc::clone(block);
    match temb {
        Some(t) => lorakit_nn::checkpoint::checkpoint(
            &[x, t],
            ctx,
            Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| b.forward(&xs[0], Some(&xs[1]), ctx)),
        ),
        None => lorakit_nn::checkpoint::checkpoint(
            &[x],
            ctx,
            Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| b.forward(&xs[0], None, ctx)),
        ),
    }
}

/// Halves the resolution with a stride-2 3×3 conv (diffusers `Downsample2D`, `use_conv=True`).
///
/// With `padding == 0` (the VAE encoder) the input is first padded by one zero row and column at
/// the bottom/right, as diffusers does, so odd and even sizes round the same way as PyTorch.
#[derive(Clone, Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    channels: usize,
    padding: usize,
}

impl Downsample2D {
    /// Reads `conv` under `vb` (e.g. `down_blocks.0.downsamplers.0`).
    pub fn new(vb: WeightsView, channels: usize, out_channels: usize, padding: usize) -> Result<Self> {
        Ok(Downsample2D { conv: vb.pp("conv").conv2d(channels, out_channels, 3, 2, padding)?, channels, padding })
    }

    /// The keys and shapes [`Downsample2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, channels: usize, out_channels: usize, out: &mut ParamShapes) {
        push_conv(out, &join(prefix, "conv"), channels, out_channels, 3);
    }

    /// (B, C, H, W) → (B, C_out, ⌈H/2⌉, ⌈W/2⌉).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        expect_channels(x, self.channels, "Downsample2D")?;
        if self.padding == 0 {
            let padded = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&padded, ctx)
        } else {
            self.conv.forward(x, ctx)
        }
    }

    /// The conv as an sd-scripts conv-block target.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        out.push(self.conv.lora_target(TargetGroup::ConvBlock));
    }
}

/// Doubles the resolution (nearest neighbour) and applies a 3×3 conv (diffusers `Upsample2D`,
/// `use_conv=True`).
#[derive(Clone, Debug)]
pub struct Upsample2D {
    conv: Conv2d,
    channels: usize,
}

impl Upsample2D {
    /// Reads `conv` under `vb` (e.g. `up_blocks.0.upsamplers.0`).
    pub fn new(vb: WeightsView, channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Upsample2D { conv: vb.pp("conv").conv2d(channels, out_channels, 3, 1, 1)?, channels })
    }

    /// The keys and shapes [`Upsample2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, channels: usize, out_channels: usize, out: &mut ParamShapes) {
        push_conv(out, &join(prefix, "conv"), channels, out_channels, 3);
    }

    /// Upsamples to `output_size` (the UNet passes the skip connection's size when the latent is
    /// not a multiple of the total down factor) or to twice the size, then convolves.
    pub fn forward(&self, x: &Tensor, output_size: Option<(usize, usize)>, ctx: &ForwardCtx) -> Result<Tensor> {
        expect_channels(x, self.channels, "Upsample2D")?;
        let up = upsample_nearest(x, output_size)?;
        self.conv.forward(&up, ctx)
    }

    /// The conv as an sd-scripts conv-block target.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        out.push(self.conv.lora_target(TargetGroup::ConvBlock));
    }
}

/// Nearest-neighbour resize of (B, C, H, W) with PyTorch's index rule
/// (`src = min(⌊dst · in/out⌋, in − 1)`, computed in f32).
///
/// The 2× case is a broadcast + reshape and the general case an `index_select`: both have
/// accumulating backward passes (candle's `upsample_nearest2d` backward overwrites).
pub fn upsample_nearest(x: &Tensor, output_size: Option<(usize, usize)>) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = output_size.unwrap_or((2 * h, 2 * w));
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        candle_core::bail!("upsample: cannot resize {h}×{w} to {oh}×{ow}")
    }
    if (oh, ow) == (2 * h, 2 * w) {
        return x.reshape((b, c, h, 1, w, 1))?.broadcast_as((b, c, h, 2, w, 2))?.reshape((b, c, oh, ow));
    }
    let indices = |input: usize, output: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..output)
            .map(|o| {
                if output == input {
                    o
                } else if output == 2 * input {
                    o / 2
                } else {
                    let scale = input as f32 / output as f32;
                    (((o as f32) * scale).floor() as usize).min(input - 1)
                }
            })
            .map(|i| i as u32)
            .collect();
        Tensor::new(idx.as_slice(), x.device())
    };
    let y = if oh == h { x.clone() } else { x.index_select(&indices(h, oh)?, 2)? };
    if ow == w {
        Ok(y)
    } else {
        y.index_select(&indices(w, ow)?, 3)
    }
}
