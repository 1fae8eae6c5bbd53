//! timm's `SwinTransformerV2` as wd-swinv2-tagger-v3 uses it (`swinv2_base_window8_256` at 448²
//! with `window_size=14, act_layer="gelu_tanh"`), ported from timm
//! `models/swin_transformer_v2.py` (1.0.31): patch embedding + norm, stages of windowed cosine
//! attention (learned logit scale, continuous position bias from an MLP over log-spaced offsets,
//! shifted windows with their mask on odd blocks), post-norm residuals, 2×2 patch merging, final
//! norm, average pool, head. Weight paths are the checkpoint's keys: `patch_embed.{proj,norm}`,
//! `layers.{i}.downsample.{reduction,norm}`, `layers.{i}.blocks.{j}.{attn.{qkv,q_bias,v_bias,
//! logit_scale,cpb_mlp.0,cpb_mlp.2,proj},norm1,mlp.fc1,mlp.fc2,norm2}`, `norm`, `head.fc`.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, D};
use lorakit_nn::activation::softmax_last_dim;
use lorakit_nn::norm::LayerNorm;
use lorakit_nn::{FrozenConv2d, FrozenLinear};
use serde_json::Value;

use super::config::{self, Activation};
use super::{layer_norm, linear, weight, Wd14Error};

/// `nn.LayerNorm`'s default epsilon (SwinV2 uses plain `nn.LayerNorm`).
const LN_EPS: f64 = 1e-5;
/// Hidden width of the continuous position bias MLP (fixed in timm).
const CPB_HIDDEN: usize = 512;
/// The mask value timm puts between tokens of different regions in a shifted window.
const MASK_VALUE: f32 = -100.0;

/// What a SwinV2 config states (timm's registered model args overridden by `model_args`).
#[derive(Debug, Clone, PartialEq)]
pub struct SwinV2Config {
    /// Input side the model is built for (pixels); the window sizes and shifts follow from it.
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Width of stage 0; stage `i` is `embed_dim · 2^i` wide.
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Window side per stage (before clamping to the stage's grid).
    pub window_sizes: Vec<usize>,
    /// Window side each stage was pre-trained with (0 = its own window), which normalises the
    /// position bias coordinates.
    pub pretrained_window_sizes: Vec<usize>,
    /// Partition and shift even where the window is larger than the grid.
    pub always_partition: bool,
    /// Accept inputs of other sizes (timm `strict_img_size=False` / `dynamic_img_size=True`):
    /// windows keep their built size, maps are padded to whole windows.
    pub dynamic_img_size: bool,
    /// MLP hidden width / stage width.
    pub mlp_ratio: f64,
    /// `q_bias` / `v_bias` on the qkv projection.
    pub qkv_bias: bool,
    /// MLP activation.
    pub act: Activation,
    /// Output classes.
    pub num_classes: usize,
}

impl SwinV2Config {
    /// Reads a timm hub `config.json` whose architecture is `swinv2_{tiny,small,base,large}
    /// _window{W}[to{W'}]_{S}[to{S'}]`.
    pub fn from_timm(config: &Value) -> std::result::Result<Self, Wd14Error> {
        let name = config::architecture_name(config)?;
        let unsupported = || {
            Wd14Error::Config(format!(
                "architecture `{name}` is not a SwinV2 lorakit knows (swinv2_<tiny|small|base|large>_window<W>_<S>)"
            ))
        };
        let parts: Vec<&str> = name.split('_').collect();
        let ["swinv2", size, window, res] = parts[..] else { return Err(unsupported()) };
        let (embed_dim, depths, heads): (usize, [usize; 4], [usize; 4]) = match size {
            "tiny" => (96, [2, 2, 6, 2], [3, 6, 12, 24]),
            "small" => (96, [2, 2, 18, 2], [3, 6, 12, 24]),
            "base" => (128, [2, 2, 18, 2], [4, 8, 16, 32]),
            "large" => (192, [2, 2, 18, 2], [6, 12, 24, 48]),
            _ => return Err(unsupported()),
        };
        // `window12to16`: fine-tuned at window 16 from window 12; timm registers these (the only
        // `to` variants) with pretrained_window_sizes (12, 12, 12, 6).
        let window = window.strip_prefix("window").ok_or_else(unsupported)?;
        let (window, pretrained) = match window.split_once("to") {
            Some(("12", to)) => (to.parse::<usize>().map_err(|_| unsupported())?, vec![12, 12, 12, 6]),
            Some(_) => return Err(unsupported()),
            None => (window.parse::<usize>().map_err(|_| unsupported())?, vec![0; 4]),
        };
        let res: usize = res.rsplit("to").next().and_then(|r| r.parse().ok()).ok_or_else(unsupported)?;

        let depths = config::arg_usizes(config, "depths", &depths)?;
        let stages = depths.len();
        let num_heads = config::arg_usizes(config, "num_heads", &heads)?;
        let window_sizes = match config::model_arg(config, "window_size") {
            None => vec![window; stages],
            Some(v) => stage_windows(v, stages)?,
        };
        let pretrained_window_sizes = match config::model_arg(config, "pretrained_window_sizes") {
            None if pretrained.len() == stages => pretrained,
            None => vec![0; stages],
            Some(_) => config::arg_usizes(config, "pretrained_window_sizes", &[])?,
        };
        if num_heads.len() != stages || pretrained_window_sizes.len() != stages {
            return Err(Wd14Error::Config(format!(
                "SwinV2 has {stages} stages (depths) but {} num_heads and {} pretrained_window_sizes",
                num_heads.len(),
                pretrained_window_sizes.len()
            )));
        }
        match config::arg_str(config, "global_pool", "avg")? {
            "avg" => {}
            other => return Err(Wd14Error::Config(format!("SwinV2 global_pool `{other}` is not supported (avg)"))),
        }
        let dynamic_img_size =
            config::arg_bool(config, "dynamic_img_size", false)? || !config::arg_bool(config, "strict_img_size", true)?;
        Ok(SwinV2Config {
            img_size: config::img_size(config, res)?,
            patch_size: config::arg_usize(config, "patch_size", 4)?,
            embed_dim: config::arg_usize(config, "embed_dim", embed_dim)?,
            depths,
            num_heads,
            window_sizes,
            pretrained_window_sizes,
            always_partition: config::arg_bool(config, "always_partition", false)?,
            dynamic_img_size,
            mlp_ratio: config::arg_f64(config, "mlp_ratio", 4.0)?,
            qkv_bias: config::arg_bool(config, "qkv_bias", true)?,
            act: Activation::from_timm(config, Activation::Gelu)?,
            num_classes: config::num_classes(config)?,
        })
    }
}

/// timm's `resolve_stage_window_sizes` for square windows: one number for all stages, `[h, w]`
/// for all stages, or one entry (number or `[h, w]`) per stage.
fn stage_windows(v: &Value, stages: usize) -> std::result::Result<Vec<usize>, Wd14Error> {
    let bad = || {
        Wd14Error::Config(format!(
            "model_args.window_size = {v}: expected a square window (a number or [S, S]), or one per stage"
        ))
    };
    let square = |v: &Value| -> Option<usize> {
        if let Some(n) = v.as_u64() {
            return Some(n as usize);
        }
        match v.as_array()?.as_slice() {
            [h, w] if h.as_u64()? == w.as_u64()? => h.as_u64().map(|n| n as usize),
            _ => None,
        }
    };
    if let Some(n) = v.as_u64() {
        return Ok(vec![n as usize; stages]);
    }
    let list = v.as_array().ok_or_else(bad)?;
    // A list of two numbers is always one (h, w) window in timm, whatever the stage count.
    if list.len() == 2 && list.iter().all(Value::is_number) {
        return Ok(vec![square(v).ok_or_else(bad)?; stages]);
    }
    if list.len() != stages {
        return Err(bad());
    }
    list.iter().map(|w| square(w).filter(|&n| n > 0).ok_or_else(bad)).collect()
}

/// Windowed cosine attention of one block, its position bias precomputed.
struct WindowAttention {
    qkv: FrozenLinear,
    proj: FrozenLinear,
    /// `exp(min(logit_scale, ln 100))`, (heads, 1, 1).
    scale: Tensor,
    /// `16·sigmoid(cpb_mlp(coords))[relative_position_index]`, (heads, N, N).
    bias: Tensor,
    heads: usize,
}

struct Block {
    attn: WindowAttention,
    norm1: LayerNorm,
    fc1: FrozenLinear,
    fc2: FrozenLinear,
    norm2: LayerNorm,
    /// Window (h, w) and shift (h, w), fixed by the built resolution as in timm.
    window: (usize, usize),
    shift: (usize, usize),
}

struct PatchMerging {
    reduction: FrozenLinear,
    norm: LayerNorm,
}

struct Stage {
    downsample: Option<PatchMerging>,
    blocks: Vec<Block>,
}

/// The SwinV2 classifier: NCHW normalised BGR → logits.
pub struct SwinV2 {
    config: SwinV2Config,
    patch_embed: FrozenConv2d,
    patch_norm: LayerNorm,
    stages: Vec<Stage>,
    norm: LayerNorm,
    head: FrozenLinear,
}
/// timm `_calc_window_shift`: the window is clamped to the grid and the shift dropped where the
/// grid fits in one window (unless `always_partition`).
fn window_shift(res: usize, target: usize, shifted: bool, always_partition: bool) -> (usize, usize) {
    let shift = if shifted { target / 2 } else { 0 };
    if always_partition {
        return (target, shift);
    }
    let window = res.min(target);
    (window, if res <= window { 0 } else { shift })
}

/// The log-spaced relative coordinates `(2wh−1)·(2ww−1) × 2` the position bias MLP reads, in
/// f32 as timm computes them.
fn relative_coords_table(window: (usize, usize), pretrained: usize) -> Vec<f32> {
    let (wh, ww) = window;
    let (nh, nw) = if pretrained > 0 { (pretrained, pretrained) } else { (wh, ww) };
    let (nh, nw) = ((nh.max(2) - 1) as f32, (nw.max(2) - 1) as f32);
    let log_spaced = |v: f32| {
        let v = v * 8.0;
        v.signum() * (v.abs() + 1.0).log2() / 3.0
    };
    let mut out = Vec::with_capacity((2 * wh - 1) * (2 * ww - 1) * 2);
    for i in -(wh as i64 - 1)..wh as i64 {
        for j in -(ww as i64 - 1)..ww as i64 {
            out.push(log_spaced(i as f32 / nh));
            out.push(log_spaced(j as f32 / nw));
        }
    }
    out
}

/// `relative_position_index`: for tokens p, q of a window, the row of the coordinates table
/// holding the offset p − q.
fn relative_position_index(window: (usize, usize)) -> Vec<u32> {
    let (wh, ww) = window;
    let n = wh * ww;
    let mut out = Vec::with_capacity(n * n);
    for p in 0..n {
        for q in 0..n {
            let dh = (p / ww) as i64 - (q / ww) as i64 + wh as i64 - 1;
            let dw = (p % ww) as i64 - (q % ww) as i64 + ww as i64 - 1;
            out.push((dh * (2 * ww as i64 - 1) + dw) as u32);
        }
    }
    out
}

/// The shifted-window mask (windows, 1, N, N) for a padded map `hp × wp`: 0 between tokens of
/// the same region of timm's 3×3 split, −100 otherwise.
fn shift_mask(
    hp: usize,
    wp: usize,
    window: (usize, usize),
    shift: (usize, usize),
    device: &candle_core::Device,
) -> Result<Tensor> {
    let (wh, ww) = window;
    // timm slices (0, −w), (−w, −s), (−s, None); with s = 0 the last slice is the whole axis.
    let region = |pos: usize, len: usize, w: usize, s: usize| -> usize {
        if s == 0 {
            2
        } else if pos < len - w {
            0
        } else if pos < len - s {
            1
        } else {
            2
        }
    };
    let (nwh, nww) = (hp / wh, wp / ww);
    let n = wh * ww;
    let mut ids = Vec::with_capacity(nwh * nww * n);
    for bh in 0..nwh {
        for bw in 0..nww {
            for i in 0..wh {
                for j in 0..ww {
                    ids.push(region(bh * wh + i, hp, wh, shift.0) * 3 + region(bw * ww + j, wp, ww, shift.1));
                }
            }
        }
    }
    let mut mask = Vec::with_capacity(nwh * nww * n * n);
    for win in ids.chunks(n) {
        for &p in win {
            mask.extend(win.iter().map(|&q| if p == q { 0.0 } else { MASK_VALUE }));
        }
    }
    Tensor::from_vec(mask, (nwh * nww, 1, n, n), device)
}

impl WindowAttention {
    fn load(
        t: &HashMap<String, Tensor>,
        p: &str,
        dim: usize,
        heads: usize,
        window: (usize, usize),
        pretrained: usize,
        qkv_bias: bool,
    ) -> std::result::Result<Self, Wd14Error> {
        let qkv_w = weight(t, &format!("{p}.qkv.weight"), &[3 * dim, dim])?;
        // timm: `F.linear(x, qkv.weight, cat(q_bias, zeros (k_bias buffer), v_bias))`.
        let bias = if qkv_bias {
            let q = weight(t, &format!("{p}.q_bias"), &[dim])?;
            let v = weight(t, &format!("{p}.v_bias"), &[dim])?;
            Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
        } else {
            None
        };
        let qkv = FrozenLinear::new(qkv_w, bias)?;
        let proj = linear(t, &format!("{p}.proj"), dim, dim, true)?;
        let logit_scale = weight(t, &format!("{p}.logit_scale"), &[heads, 1, 1])?;
        let scale = logit_scale.clamp(f32::NEG_INFINITY, (1.0f32 / 0.01).ln())?.exp()?;

        let cpb1 = linear(t, &format!("{p}.cpb_mlp.0"), 2, CPB_HIDDEN, true)?;
        let cpb2 = linear(t, &format!("{p}.cpb_mlp.2"), CPB_HIDDEN, heads, false)?;
        let device = qkv.weight().device();
        let (wh, ww) = window;
        let rows = (2 * wh - 1) * (2 * ww - 1);
        let coords = Tensor::from_vec(relative_coords_table(window, pretrained), (rows, 2), device)?;
        let table = cpb2.forward(&cpb1.forward(&coords)?.relu()?)?; // (rows, heads)
        let n = wh * ww;
        let index = Tensor::from_vec(relative_position_index(window), n * n, device)?;
        let bias = table.index_select(&index, 0)?.reshape((n, n, heads))?.permute((2, 0, 1))?;
        // 16·sigmoid(b)
        let bias = ((bias.neg()?.exp()? + 1.0)?.recip()? * 16.0)?.contiguous()?;
        Ok(WindowAttention { qkv, proj, scale, bias, heads })
    }

    /// `x` (B·windows, N, C), `mask` (windows, 1, N, N) → (B·windows, N, C).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (bw, n, c) = x.dims3()?;
        let h = self.heads;
        let qkv = self.qkv.forward(x)?.reshape((bw, n, 3, h, c / h))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
        // F.normalize: x / max(‖x‖, 1e-12).
        let unit = |t: Tensor| -> Result<Tensor> {
            let norm = t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
            t.broadcast_div(&norm)
        };
        let q = unit(qkv.get(0)?)?;
        let k = unit(qkv.get(1)?)?;
        let v = qkv.get(2)?;
        let mut attn = q.matmul(&k.t()?)?.broadcast_mul(&self.scale)?.broadcast_add(&self.bias)?;
        if let Some(mask) = mask {
            let windows = mask.dim(0)?;
            attn = attn.reshape((bw / windows, windows, h, n, n))?.broadcast_add(mask)?.reshape((bw, h, n, n))?;
        }
        let out = softmax_last_dim(&attn)?.matmul(&v)?.transpose(1, 2)?.reshape((bw, n, c))?;
        self.proj.forward(&out)
    }
}

impl Block {
    /// `x` (B, H, W, C) → (B, H, W, C).
    fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (wh, ww) = self.window;
        let (sh, sw) = self.shift;
        let shifted = x.roll(-(sh as i32), 1)?.roll(-(sw as i32), 2)?;
        let (ph, pw) = ((wh - h % wh) % wh, (ww - w % ww) % ww);
        let shifted = shifted.pad_with_zeros(1, 0, ph)?.pad_with_zeros(2, 0, pw)?;
        let (hp, wp) = (h + ph, w + pw);
        let windows = shifted.reshape(vec![b, hp / wh, wh, wp / ww, ww, c])?.permute((0, 1, 3, 2, 4, 5))?.reshape((
            b * (hp / wh) * (wp / ww),
            wh * ww,
            c,
        ))?;
        let mask = if sh > 0 || sw > 0 { Some(shift_mask(hp, wp, self.window, self.shift, x.device())?) } else { None };
        let attn = self.attn.forward(&windows, mask.as_ref())?;
        let attn = attn
            .reshape(vec![b, hp / wh, wp / ww, wh, ww, c])?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b, hp, wp, c))?
            .narrow(1, 0, h)?
            .narrow(2, 0, w)?
            .roll(sh as i32, 1)?
            .roll(sw as i32, 2)?;
        let x = (x + self.norm1.forward(&attn.contiguous()?)?)?;
        let y = self.fc2.forward(&act.forward(&self.fc1.forward(&x)?)?)?;
        x + self.norm2.forward(&y)?
    }
}

impl PatchMerging {
    /// `x` (B, H, W, C) → (B, ⌈H/2⌉, ⌈W/2⌉, C'): timm 1.x's order of the 2×2 neighbours
    /// (`reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5)`), reduction, then norm.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let x = x.pad_with_zeros(1, 0, h % 2)?.pad_with_zeros(2, 0, w % 2)?;
        let (h, w) = (h.div_ceil(2), w.div_ceil(2));
        let x = x.reshape(vec![b, h, 2, w, 2, c])?.permute((0, 1, 3, 4, 2, 5))?.reshape((b, h, w, 4 * c))?;
        self.norm.forward(&self.reduction.forward(&x)?)
    }
}

impl SwinV2 {
    /// Builds the model from the checkpoint's tensors, checking every shape.
    pub fn load(t: &HashMap<String, Tensor>, config: &SwinV2Config) -> std::result::Result<Self, Wd14Error> {
        let c = config;
        if c.patch_size == 0 || c.img_size % c.patch_size != 0 {
            return Err(Wd14Error::Config(format!(
                "SwinV2 img_size {} is not a multiple of patch_size {}",
                c.img_size, c.patch_size
            )));
        }
        if c.depths.is_empty() || c.window_sizes.contains(&0) {
            return Err(Wd14Error::Config("SwinV2 needs at least one stage and non-zero window sizes".into()));
        }
        let dims: Vec<usize> = (0..c.depths.len()).map(|i| c.embed_dim << i).collect();
        for (i, (&d, &h)) in dims.iter().zip(&c.num_heads).enumerate() {
            if h == 0 || d % h != 0 {
                return Err(Wd14Error::Config(format!("SwinV2 stage {i}: width {d} is not divisible by {h} heads")));
            }
        }
        let d0 = dims[0];
        let patch_embed = FrozenConv2d::new(
            weight(t, "patch_embed.proj.weight", &[d0, 3, c.patch_size, c.patch_size])?,
            Some(weight(t, "patch_embed.proj.bias", &[d0])?),
            c.patch_size,
            0,
        )?;
        let patch_norm = layer_norm(t, "patch_embed.norm", d0, LN_EPS)?;
        let mut res = c.img_size / c.patch_size;
        let mut stages = Vec::with_capacity(c.depths.len());
        for (i, &depth) in c.depths.iter().enumerate() {
            let d = dims[i];
            let downsample = if i > 0 {
                res = res.div_ceil(2);
                let p = format!("layers.{i}.downsample");
                Some(PatchMerging {
                    reduction: linear(t, &format!("{p}.reduction"), 4 * dims[i - 1], d, false)?,
                    norm: layer_norm(t, &format!("{p}.norm"), d, LN_EPS)?,
                })
            } else {
                None
            };
            let hidden = (d as f64 * c.mlp_ratio) as usize;
            let blocks = (0..depth)
                .map(|j| {
                    let p = format!("layers.{i}.blocks.{j}");
                    let (ws, shift) = window_shift(res, c.window_sizes[i], j % 2 == 1, c.always_partition);
                    let window = (ws, ws);
                    Ok(Block {
                        attn: WindowAttention::load(
                            t,
                            &format!("{p}.attn"),
                            d,
                            c.num_heads[i],
                            window,
                            c.pretrained_window_sizes[i],
                            c.qkv_bias,
                        )?,
                        norm1: layer_norm(t, &format!("{p}.norm1"), d, LN_EPS)?,
                        fc1: linear(t, &format!("{p}.mlp.fc1"), d, hidden, true)?,
                        fc2: linear(t, &format!("{p}.mlp.fc2"), hidden, d, true)?,
                        norm2: layer_norm(t, &format!("{p}.norm2"), d, LN_EPS)?,
                        window,
                        shift: (shift, shift),
                    })
                })
                .collect::<std::result::Result<Vec<_>, Wd14Error>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let last = *dims.last().expect("at least one stage");
        let norm = layer_norm(t, "norm", last, LN_EPS)?;
        let head = linear(t, "head.fc", last, c.num_classes, true)?;
        Ok(SwinV2 { config: c.clone(), patch_embed, patch_norm, stages, norm, head })
    }

    /// Logits (N, classes) of a batch (N, 3, H, W): H = W = `img_size`, or any multiple of the
    /// patch size with `dynamic_img_size`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (_, _, h, w) = x.dims4()?;
        if c.dynamic_img_size {
            if h % c.patch_size != 0 || w % c.patch_size != 0 || h == 0 || w == 0 {
                candle_core::bail!("SwinV2 input {h}×{w} is not a multiple of the patch size {}", c.patch_size)
            }
        } else if h != c.img_size || w != c.img_size {
            candle_core::bail!("SwinV2 input is {h}×{w}, the model takes {}×{}", c.img_size, c.img_size)
        }
        let x = x.to_dtype(DType::F32)?;
        let mut x = self.patch_norm.forward(&self.patch_embed.forward(&x)?.permute((0, 2, 3, 1))?.contiguous()?)?;
        for stage in &self.stages {
            if let Some(down) = &stage.downsample {
                x = down.forward(&x)?;
            }
            for block in &stage.blocks {
                x = block.forward(&x, c.act)?;
            }
        }
        let x = self.norm.forward(&x)?;
        self.head.forward(&x.mean((1, 2))?)
    }
}
