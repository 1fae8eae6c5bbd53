//! The KL autoencoder that maps images to SD latents and back (diffusers
//! `autoencoders/autoencoder_kl.py`, `autoencoders/vae.py`).
//!
//! The VAE is never trained: `encode`/`decode` detach their input, so no autograd graph is
//! recorded and every intermediate is freed as soon as the next layer has consumed it. It runs
//! in the dtype of its weights (SD's VAE overflows in f16; diffusers' `force_upcast` advice is
//! the caller's to follow).

use candle_core::{Result, Tensor};
use lorakit_nn::activation::silu;
use lorakit_nn::{Conv2d, ForwardCtx, GroupNorm};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::resnet::{expect_channels, push_conv, push_norm, ParamShapes};
use crate::unet_2d_blocks::{BlockConfig, DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D};
use crate::weights::WeightsView;

/// diffusers' `AutoencoderKL` configuration, read from its `config.json` (unknown keys ignored,
/// missing ones take diffusers' defaults).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct AutoencoderKLConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Encoder block classes (only `DownEncoderBlock2D`).
    pub down_block_types: Vec<String>,
    /// Decoder block classes (only `UpDecoderBlock2D`).
    pub up_block_types: Vec<String>,
    /// Channels per resolution.
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder block (decoder blocks have one more).
    pub layers_per_block: usize,
    /// Activation (only `silu`).
    pub act_fn: String,
    /// Latent channels.
    pub latent_channels: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Image size the model was trained at (informational).
    pub sample_size: usize,
    /// Latents are multiplied by this before the UNet (SD1/2: 0.18215).
    pub scaling_factor: f64,
    /// Latent shift (SD3/Flux); unused by SD1/2.
    pub shift_factor: Option<f64>,
    /// Per-channel latent mean (SDXL-style normalisation); unused by SD1/2.
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent std; unused by SD1/2.
    pub latents_std: Option<Vec<f64>>,
    /// The model should run in f32 even when the UNet runs in half precision.
    pub force_upcast: bool,
    /// A 1×1 `quant_conv` after the encoder.
    pub use_quant_conv: bool,
    /// A 1×1 `post_quant_conv` before the decoder.
    pub use_post_quant_conv: bool,
    /// Self-attention in the mid blocks.
    pub mid_block_add_attention: bool,
}

impl Default for AutoencoderKLConfig {
    /// diffusers' constructor defaults.
    fn default() -> Self {
        AutoencoderKLConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl AutoencoderKLConfig {
    /// Stable Diffusion 1.x/2.x's VAE (`stable-diffusion-v1-5/vae/config.json`).
    pub fn sd15() -> Self {
        AutoencoderKLConfig {
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: 512,
            ..Default::default()
        }
    }

    /// SDXL's VAE (`stable-diffusion-xl-base-1.0/vae/config.json`, `madebyollin/sdxl-vae-fp16-fix`
    /// aside): SD's architecture at 1024 px with scaling factor 0.13025 (sd-scripts'
    /// `sdxl_model_util.VAE_SCALE_FACTOR`) and `force_upcast` — it overflows in fp16, hence
    /// sd-scripts' `--no_half_vae`.
    pub fn sdxl() -> Self {
        AutoencoderKLConfig { sample_size: 1024, scaling_factor: 0.13025, force_upcast: true, ..Self::sd15() }
    }

    /// Pixels per latent cell along each side: every encoder block but the last halves the
    /// size, so 2^(levels − 1) (8 for SD's four levels).
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Refuses configurations this implementation cannot build.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            candle_core::bail!(
                "VAE config: {} block_out_channels, {} down_block_types and {} up_block_types must agree",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            )
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            candle_core::bail!("VAE config: down block type {t} is not supported")
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            candle_core::bail!("VAE config: up block type {t} is not supported")
        }
        if self.act_fn != "silu" {
            candle_core::bail!("VAE config: act_fn {} is not supported", self.act_fn)
        }
        if self.norm_num_groups == 0 || self.block_out_channels.iter().any(|c| c % self.norm_num_groups != 0) {
            candle_core::bail!(
                "VAE config: channels {:?} are not divisible into {} groups",
                self.block_out_channels,
                self.norm_num_groups
            )
        }
        Ok(())
    }

    fn block(&self, num_layers: usize, in_channels: usize, out_channels: usize, add_resample: bool) -> BlockConfig {
        BlockConfig {
            num_layers,
            in_channels,
            out_channels,
            prev_output_channel: 0,
            temb_channels: None,
            resnet_eps: 1e-6,
            resnet_groups: self.norm_num_groups,
            output_scale_factor: 1.0,
            add_resample,
            downsample_padding: 0,
            cross_attention: None,
        }
    }

    fn encoder_blocks(&self) -> Vec<BlockConfig> {
        let ch = &self.block_out_channels;
        let mut output = ch[0];
        (0..ch.len())
            .map(|i| {
                let input = output;
                output = ch[i];
                self.block(self.layers_per_block, input, output, i + 1 < ch.len())
            })
            .collect()
    }

    fn decoder_blocks(&self) -> Vec<BlockConfig> {
        let rev: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
        let mut output = rev[0];
        (0..rev.len())
            .map(|i| {
                let prev = output;
                output = rev[i];
                self.block(self.layers_per_block + 1, prev, output, i + 1 < rev.len())
            })
            .collect()
    }

    fn mid(&self) -> BlockConfig {
        let c = *self.block_out_channels.last().unwrap_or(&0);
        self.block(1, c, c, false)
    }

    /// Every diffusers key (and shape) a model of this configuration reads, in diffusers'
    /// `state_dict` order (SD1.5: 248 keys, 83,653,863 parameters). Empty for an invalid configuration.
    pub fn parameter_shapes(&self) -> ParamShapes {
        if self.validate().is_err() {
            return Vec::new();
        }
        let ch = &self.block_out_channels;
        let (first, last) = (ch[0], ch[ch.len() - 1]);
        let latent = self.latent_channels;
        let mut out = Vec::new();
        push_conv(&mut out, "encoder.conv_in", self.in_channels, first, 3);
        for (i, b) in self.encoder_blocks().iter().enumerate() {
            DownEncoderBlock2D::parameter_shapes(&format!("encoder.down_blocks.{i}"), b, &mut out);
        }
        UNetMidBlock2D::parameter_shapes("encoder.mid_block", &self.mid(), self.mid_block_add_attention, &mut out);
        push_norm(&mut out, "encoder.conv_norm_out", last);
        push_conv(&mut out, "encoder.conv_out", last, 2 * latent, 3);
        push_conv(&mut out, "decoder.conv_in", latent, last, 3);
        for (i, b) in self.decoder_blocks().iter().enumerate() {
            UpDecoderBlock2D::parameter_shapes(&format!("decoder.up_blocks.{i}"), b, &mut out);
        }
        UNetMidBlock2D::parameter_shapes("decoder.mid_block", &self.mid(), self.mid_block_add_attention, &mut out);
        push_norm(&mut out, "decoder.conv_norm_out", first);
        push_conv(&mut out, "decoder.conv_out", first, self.out_channels, 3);
        if self.use_quant_conv {
            push_conv(&mut out, "quant_conv", 2 * latent, 2 * latent, 1);
        }
        if self.use_post_quant_conv {
            push_conv(&mut out, "post_quant_conv", latent, latent, 1);
        }
        out
    }
}

/// Image → latent moments: conv_in, down blocks, mid block, norm, silu, conv_out (2 × latent
/// channels: mean and log-variance).
#[derive(Clone, Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    in_channels: usize,
}

impl Encoder {
    /// Reads the encoder at `vb` (`encoder`).
    pub fn new(vb: WeightsView, cfg: &AutoencoderKLConfig) -> Result<Self> {
        cfg.validate()?;
        let ch = &cfg.block_out_channels;
        let (first, last) = (ch[0], ch[ch.len() - 1]);
        let down_blocks = cfg
            .encoder_blocks()
            .iter()
            .enumerate()
            .map(|(i, b)| DownEncoderBlock2D::new(vb.pp("down_blocks").pp(i), b))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            conv_in: vb.pp("conv_in").conv2d(cfg.in_channels, first, 3, 1, 1)?,
            down_blocks,
            mid_block: UNetMidBlock2D::new(vb.pp("mid_block"), &cfg.mid(), cfg.mid_block_add_attention)?,
            conv_norm_out: vb.pp("conv_norm_out").group_norm(cfg.norm_num_groups, last, 1e-6)?,
            conv_out: vb.pp("conv_out").conv2d(last, 2 * cfg.latent_channels, 3, 1, 1)?,
            in_channels: cfg.in_channels,
        })
    }

    /// (B, in_channels, H, W) → (B, 2·latent, H/f, W/f).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        expect_channels(x, self.in_channels, "VAE encoder")?;
        let mut h = self.conv_in.forward(x, ctx)?;
        for b in &self.down_blocks {
            h = b.forward(&h, ctx)?;
        }
        let h = self.mid_block.forward(&h, ctx)?;
        let h = silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h, ctx)
    }
}

/// Latent → image: conv_in, mid block, up blocks, norm, silu, conv_out.
#[derive(Clone, Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    latent_channels: usize,
}

impl Decoder {
    /// Reads the decoder at `vb` (`decoder`).
    pub fn new(vb: WeightsView, cfg: &AutoencoderKLConfig) -> Result<Self> {
        cfg.validate()?;
        let ch = &cfg.block_out_channels;
        let (first, last) = (ch[0], ch[ch.len() - 1]);
        let up_blocks = cfg
            .decoder_blocks()
            .iter()
            .enumerate()
            .map(|(i, b)| UpDecoderBlock2D::new(vb.pp("up_blocks").pp(i), b))
            .collect::<Result<Vec<_>>>()?;
        Ok(Decoder {
            conv_in: vb.pp("conv_in").conv2d(cfg.latent_channels, last, 3, 1, 1)?,
            mid_block: UNetMidBlock2D::new(vb.pp("mid_block"), &cfg.mid(), cfg.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: vb.pp("conv_norm_out").group_norm(cfg.norm_num_groups, first, 1e-6)?,
            conv_out: vb.pp("conv_out").conv2d(first, cfg.out_channels, 3, 1, 1)?,
            latent_channels: cfg.latent_channels,
        })
    }

    /// (B, latent, h, w) → (B, out_channels, h·f, w·f).
    pub fn forward(&self, z: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        expect_channels(z, self.latent_channels, "VAE decoder")?;
        let mut h = self.conv_in.forward(z, ctx)?;
        h = self.mid_block.forward(&h, ctx)?;
        for b in &self.up_blocks {
            h = b.forward(&h, ctx)?;
        }
        let h = silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h, ctx)
    }
}

/// The encoder's posterior N(mean, exp(logvar)) over latents (diffusers
/// `DiagonalGaussianDistribution`); log-variance clamped to [-30, 20] as there.
#[derive(Clone, Debug)]
pub struct DiagonalGaussianDistribution {
    mean: Tensor,
    logvar: Tensor,
    std: Tensor,
}

impl DiagonalGaussianDistribution {
    /// Splits moments (B, 2C, h, w) into mean and log-variance along channels.
    pub fn new(moments: &Tensor) -> Result<Self> {
        let c2 = moments.dim(1)?;
        if moments.rank() != 4 || c2 % 2 != 0 {
            candle_core::bail!("VAE moments must be (B, 2C, h, w), got {:?}", moments.dims())
        }
        let mean = moments.narrow(1, 0, c2 / 2)?.contiguous()?;
        let logvar = moments.narrow(1, c2 / 2, c2 / 2)?.clamp(-30f32, 20f32)?.contiguous()?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(DiagonalGaussianDistribution { mean, logvar, std })
    }

    /// The posterior mean (also its mode).
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// The clamped log-variance.
    pub fn logvar(&self) -> &Tensor {
        &self.logvar
    }

    /// `exp(logvar / 2)`.
    pub fn std(&self) -> &Tensor {
        &self.std
    }

    /// `mean + std · noise` for a standard-normal `noise` of the latent's shape (lets callers
    /// control the noise, e.g. to reproduce a PyTorch draw).
    pub fn sample_with_noise(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            candle_core::bail!("posterior noise {:?} does not match latents {:?}", noise.dims(), self.mean.dims())
        }
        self.mean.add(&(&self.std * noise.to_dtype(self.mean.dtype())?)?)
    }

    /// A sample drawn with `rng` (standard normal noise generated on the host in f32).
    pub fn sample(&self, rng: &mut impl Rng) -> Result<Tensor> {
        let n = self.mean.elem_count();
        let values: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
        let noise = Tensor::from_vec(values, self.mean.dims(), self.mean.device())?.to_dtype(self.mean.dtype())?;
        self.sample_with_noise(&noise)
    }
}

/// SD's VAE (diffusers `AutoencoderKL`).
#[derive(Clone, Debug)]
pub struct AutoencoderKL {
    config: AutoencoderKLConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    /// Builds the VAE from weights under diffusers keys (`encoder.conv_in.weight`, …). Missing
    /// or mis-shaped tensors are recorded in the store: call `Weights::check_complete` after.
    pub fn new(vb: WeightsView, cfg: &AutoencoderKLConfig) -> Result<Self> {
        cfg.validate()?;
        let latent = cfg.latent_channels;
        Ok(AutoencoderKL {
            config: cfg.clone(),
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg)?,
            quant_conv: if cfg.use_quant_conv {
                Some(vb.pp("quant_conv").conv2d(2 * latent, 2 * latent, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(vb.pp("post_quant_conv").conv2d(latent, latent, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    /// The configuration (with `scaling_factor`, 0.18215 for SD1/2).
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.encoder.conv_in.frozen().weight().device()
    }

    /// The dtype the weights were loaded in (the model computes in it; see `force_upcast`).
    pub fn dtype(&self) -> candle_core::DType {
        self.encoder.conv_in.frozen().weight().dtype()
    }

    /// Encodes images in [-1, 1] (B, 3, H, W), H and W multiples of 8, to the latent posterior
    /// (unscaled: multiply a sample by `scaling_factor` before the UNet).
    pub fn encode(&self, image: &Tensor) -> Result<DiagonalGaussianDistribution> {
        let ctx = ForwardCtx::default();
        let h = self.encoder.forward(&image.detach(), &ctx)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h, &ctx)?,
            None => h,
        };
        DiagonalGaussianDistribution::new(&moments)
    }

    /// Images in [-1, 1] (B, 3, H, W) → the denoiser's latent space: a posterior sample drawn
    /// with `rng` (or the posterior's mean without one), then [`Self::to_model_space`].
    pub fn encode_to_model_space(&self, pixels: &Tensor, rng: Option<&mut impl Rng>) -> Result<Tensor> {
        let posterior = self.encode(&pixels.to_dtype(self.dtype())?)?;
        let z = match rng {
            Some(rng) => posterior.sample(rng)?,
            None => posterior.mean().clone(),
        };
        self.to_model_space(&z)
    }

    /// Unscaled latents (a posterior sample) → the denoiser's latent space:
    /// `(z − shift_factor) · scaling_factor` (SD 1.x/2.x/XL have no shift, Flux and SD3 do).
    pub fn to_model_space(&self, z: &Tensor) -> Result<Tensor> {
        let shifted = match self.config.shift_factor {
            Some(shift) => (z - shift)?,
            None => z.clone(),
        };
        shifted * self.config.scaling_factor
    }

    /// The inverse of [`Self::to_model_space`]: what [`Self::decode`] takes.
    pub fn from_model_space(&self, latents: &Tensor) -> Result<Tensor> {
        let unscaled = (latents / self.config.scaling_factor)?;
        match self.config.shift_factor {
            Some(shift) => unscaled + shift,
            None => Ok(unscaled),
        }
    }

    /// Decodes unscaled latents ([`Self::from_model_space`] of the denoiser's) to images in
    /// about [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let ctx = ForwardCtx::default();
        let z = latents.detach();
        let z = match &self.post_quant_conv {
            Some(q) => q.forward(&z, &ctx)?,
            None => z,
        };
        self.decoder.forward(&z, &ctx)
    }
}
