//! timm's `ConvNeXt` as wd-convnext-tagger-v3 uses it (`convnext_base` with
//! `act_layer="gelu_tanh"`), ported from timm `models/convnext.py` (1.0.31): patch stem
//! (conv 4/4 + LayerNorm2d), four stages (LayerNorm2d + conv 2/2 downsample after the first),
//! blocks of depthwise 7×7 conv → LayerNorm → MLP → layer scale `gamma` + residual, then the
//! `NormMlpClassifierHead` (average pool → LayerNorm → fc). Weight paths are the checkpoint's
//! keys (`stem.0`, `stages.{i}.downsample.{0,1}`, `stages.{i}.blocks.{j}.{conv_dw, norm,
//! mlp.fc1, mlp.fc2, gamma}`, `head.norm`, `head.fc`).

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use lorakit_nn::norm::LayerNorm;
use lorakit_nn::{FrozenConv2d, FrozenLinear};
use serde_json::Value;

use super::config::{self, Activation};
use super::{layer_norm, linear, weight, Wd14Error};

/// timm's ConvNeXt norm epsilon.
const LN_EPS: f64 = 1e-6;

/// What a ConvNeXt config states.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvNextConfig {
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Channels per stage.
    pub dims: Vec<usize>,
    /// Stem patch side (4).
    pub patch_size: usize,
    /// Depthwise kernel side (7).
    pub kernel_size: usize,
    /// MLP hidden width / dim.
    pub mlp_ratio: f64,
    /// Layer scale present (`ls_init_value` not null).
    pub layer_scale: bool,
    /// MLP activation.
    pub act: Activation,
    /// Output classes.
    pub num_classes: usize,
}

impl ConvNextConfig {
    /// Reads a timm hub `config.json` whose architecture is `convnext_{tiny,small,base,large,
    /// xlarge}`.
    pub fn from_timm(config: &Value) -> std::result::Result<Self, Wd14Error> {
        let name = config::architecture_name(config)?;
        let (depths, dims): (&[usize], &[usize]) = match name {
            "convnext_tiny" => (&[3, 3, 9, 3], &[96, 192, 384, 768]),
            "convnext_small" => (&[3, 3, 27, 3], &[96, 192, 384, 768]),
            "convnext_base" => (&[3, 3, 27, 3], &[128, 256, 512, 1024]),
            "convnext_large" => (&[3, 3, 27, 3], &[192, 384, 768, 1536]),
            "convnext_xlarge" => (&[3, 3, 27, 3], &[256, 512, 1024, 2048]),
            _ => {
                return Err(Wd14Error::Config(format!(
                "architecture `{name}` is not a ConvNeXt lorakit knows (convnext_tiny, _small, _base, _large, _xlarge)"
            )))
            }
        };
        let depths = config::arg_usizes(config, "depths", depths)?;
        let dims = config::arg_usizes(config, "dims", dims)?;
        if depths.len() != dims.len() || depths.is_empty() {
            return Err(Wd14Error::Config(format!("ConvNeXt depths {depths:?} and dims {dims:?} differ in length")));
        }
        for (key, ok) in [("conv_mlp", false), ("head_norm_first", false), ("use_grn", false), ("conv_bias", true)] {
            if config::arg_bool(config, key, ok)? != ok {
                return Err(Wd14Error::Config(format!("ConvNeXt model_args.{key} = {} is not supported", !ok)));
            }
        }
        if let Some(v) = config::model_arg(config, "head_hidden_size") {
            return Err(Wd14Error::Config(format!("ConvNeXt model_args.head_hidden_size = {v} is not supported")));
        }
        let layer_scale = !matches!(config.pointer("/model_args/ls_init_value"), Some(Value::Null));
        Ok(ConvNextConfig {
            depths,
            dims,
            patch_size: config::arg_usize(config, "patch_size", 4)?,
            kernel_size: config::arg_usize(config, "kernel_size", 7)?,
            mlp_ratio: config::arg_f64(config, "mlp_ratio", 4.0)?,
            layer_scale,
            act: Activation::from_timm(config, Activation::Gelu)?,
            num_classes: config::num_classes(config)?,
        })
    }
}

/// LayerNorm over the channels of an NCHW tensor (timm `LayerNorm2d`).
struct LayerNorm2d(LayerNorm);

impl LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(&x.permute((0, 2, 3, 1))?.contiguous()?)?.permute((0, 3, 1, 2))?.contiguous()
    }
}
/// Depthwise k×k convolution, stride 1, "same" padding: the sum of k² shifted copies scaled by
/// each tap (one conv call per channel group is far slower in candle on the CPU).
struct DepthwiseConv {
    /// (C, k, k)
    taps: Vec<Tensor>,
    bias: Tensor,
    kernel: usize,
}

impl DepthwiseConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let p = self.kernel / 2;
        let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        let mut out = self.bias.reshape((1, c, 1, 1))?.broadcast_as(x.shape())?.contiguous()?;
        for (i, tap) in self.taps.iter().enumerate() {
            let (dy, dx) = (i / self.kernel, i % self.kernel);
            let window = padded.narrow(2, dy, h)?.narrow(3, dx, w)?;
            out = (out + window.broadcast_mul(tap)?)?;
        }
        Ok(out)
    }
}

struct Block {
    conv_dw: DepthwiseConv,
    norm: LayerNorm,
    fc1: FrozenLinear,
    fc2: FrozenLinear,
    gamma: Option<Tensor>,
}

struct Stage {
    downsample: Option<(LayerNorm2d, FrozenConv2d)>,
    blocks: Vec<Block>,
}

/// The ConvNeXt classifier: NCHW normalised BGR → logits.
pub struct ConvNext {
    config: ConvNextConfig,
    stem: (FrozenConv2d, LayerNorm2d),
    stages: Vec<Stage>,
    head_norm: LayerNorm,
    head: FrozenLinear,
}

impl ConvNext {
    /// Builds the model from the checkpoint's tensors, checking every shape.
    pub fn load(t: &HashMap<String, Tensor>, config: &ConvNextConfig) -> std::result::Result<Self, Wd14Error> {
        let c = config;
        let (p, k) = (c.patch_size, c.kernel_size);
        if k % 2 == 0 {
            return Err(Wd14Error::Config(format!("ConvNeXt kernel_size {k} must be odd")));
        }
        let stem = (
            FrozenConv2d::new(
                weight(t, "stem.0.weight", &[c.dims[0], 3, p, p])?,
                Some(weight(t, "stem.0.bias", &[c.dims[0]])?),
                p,
                0,
            )?,
            LayerNorm2d(layer_norm(t, "stem.1", c.dims[0], LN_EPS)?),
        );
        let mut stages = Vec::new();
        for (i, (&depth, &dim)) in c.depths.iter().zip(&c.dims).enumerate() {
            let s = format!("stages.{i}");
            let downsample = if i == 0 {
                None
            } else {
                let prev = c.dims[i - 1];
                Some((
                    LayerNorm2d(layer_norm(t, &format!("{s}.downsample.0"), prev, LN_EPS)?),
                    FrozenConv2d::new(
                        weight(t, &format!("{s}.downsample.1.weight"), &[dim, prev, 2, 2])?,
                        Some(weight(t, &format!("{s}.downsample.1.bias"), &[dim])?),
                        2,
                        0,
                    )?,
                ))
            };
            let hidden = (dim as f64 * c.mlp_ratio) as usize;
            let blocks = (0..depth)
                .map(|j| {
                    let b = format!("{s}.blocks.{j}");
                    let w = weight(t, &format!("{b}.conv_dw.weight"), &[dim, 1, k, k])?;
                    let taps = (0..k * k)
                        .map(|i| w.flatten_from(1)?.narrow(1, i, 1)?.reshape((1, dim, 1, 1)))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Block {
                        conv_dw: DepthwiseConv {
                            taps,
                            bias: weight(t, &format!("{b}.conv_dw.bias"), &[dim])?,
                            kernel: k,
                        },
                        norm: layer_norm(t, &format!("{b}.norm"), dim, LN_EPS)?,
                        fc1: linear(t, &format!("{b}.mlp.fc1"), dim, hidden, true)?,
                        fc2: linear(t, &format!("{b}.mlp.fc2"), hidden, dim, true)?,
                        gamma: if c.layer_scale { Some(weight(t, &format!("{b}.gamma"), &[dim])?) } else { None },
                    })
                })
                .collect::<std::result::Result<Vec<_>, Wd14Error>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let last = *c.dims.last().unwrap_or(&0);
        Ok(ConvNext {
            config: c.clone(),
            stem,
            stages,
            head_norm: layer_norm(t, "head.norm", last, LN_EPS)?,
            head: linear(t, "head.fc", last, c.num_classes, true)?,
        })
    }

    /// Logits (N, classes) of a batch (N, 3, S, S).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.1.forward(&self.stem.0.forward(x)?)?;
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                x = conv.forward(&norm.forward(&x)?)?;
            }
            for b in &stage.blocks {
                // NHWC for the norm and MLP, as timm does without conv_mlp.
                let y = b.conv_dw.forward(&x)?.permute((0, 2, 3, 1))?.contiguous()?;
                let y = b.norm.forward(&y)?;
                let y = b.fc2.forward(&self.config.act.forward(&b.fc1.forward(&y)?)?)?;
                let y = match &b.gamma {
                    Some(g) => y.broadcast_mul(g)?,
                    None => y,
                };
                x = (x + y.permute((0, 3, 1, 2))?)?.contiguous()?;
            }
        }
        let pooled = x.mean((2, 3))?;
        self.head.forward(&self.head_norm.forward(&pooled)?)
    }
}
