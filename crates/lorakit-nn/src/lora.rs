//! LoRA adapters (kohya sd-scripts' `LoRAModule`) and the set of them a model consults.
//!
//! A module adds `multiplier · alpha/rank · up(down(x))` to the output of the layer it targets.
//! For linears `down`: in→r and `up`: r→out; for convs `down` keeps the target's kernel, stride
//! and padding and `up` is 1×1 — so a 3×3 conv LoRA (LoCon) is "3×3 down, 1×1 up", and the
//! tensors have exactly the shapes kohya files store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, TensorId, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::lock;
use crate::lycoris::LycorisModule;

/// The layer kind a LoRA module targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraKind {
    /// A linear layer (or a 1×1 conv stored as a linear).
    Linear,
    /// A 2-D convolution with a square kernel.
    Conv { kernel: usize, stride: usize, padding: usize },
}

/// Which part of sd-scripts' target search found a layer: it decides whether the layer gets a
/// LoRA with `network_dim` or only when `conv_dim` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetGroup {
    /// Inside a Transformer2DModel, CLIPAttention or CLIPMLP: always targeted.
    Attention,
    /// Inside a ResnetBlock2D, Downsample2D or Upsample2D: targeted when conv_dim is set
    /// (1×1 convs and linears there use network_dim, k×k convs conv_dim).
    ConvBlock,
    /// A layer LyCORIS' presets name directly (the U-Net's `conv_in`, `conv_out`,
    /// `time_embedding.linear_1/2` in preset `full`): never an sd-scripts LoRA target.
    Named,
}

/// A layer a LoRA module can attach to, as enumerated by a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraTarget {
    /// The layer's module path in diffusers naming (`down_blocks.0.attentions.0.proj_in`): the
    /// key a [`LoraSet`] holds its modules under and layers look them up by at forward time.
    pub path: String,
    /// The module path kohya's name is built from when it is not `path`: sd-scripts names SDXL's
    /// UNet modules by the original SGM layout (`input_blocks.4.1.transformer_blocks.0.attn1.to_q`,
    /// `output_blocks.2.2.conv`). `None`: kohya names the module by `path` (SD1/SD2, text encoders).
    pub kohya_path: Option<String>,
    /// Linear or conv, with the conv geometry.
    pub kind: LoraKind,
    /// Input features or channels.
    pub in_dim: usize,
    /// Output features or channels.
    pub out_dim: usize,
    /// Which sd-scripts search found it.
    pub group: TargetGroup,
}

impl LoraTarget {
    /// kohya's module name: `prefix` + `_` + [`LoraTarget::kohya_module_path`] with every `.`
    /// replaced by `_`.
    pub fn kohya_name(&self, prefix: &str) -> String {
        format!("{prefix}_{}", self.kohya_module_path().replace('.', "_"))
    }

    /// The module path kohya names the layer by: `kohya_path` when set, else `path`.
    pub fn kohya_module_path(&self) -> &str {
        self.kohya_path.as_deref().unwrap_or(&self.path)
    }

    /// Whether the target is a k×k conv with k > 1 (rank from conv_dim in sd-scripts).
    pub fn is_spatial_conv(&self) -> bool {
        matches!(self.kind, LoraKind::Conv { kernel, .. } if kernel > 1)
    }
}

/// sd-scripts' three dropout hooks (spec §2.1); all zero by default.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoraDropout {
    /// Inverted dropout on `down(x)` (`network_dropout`).
    pub neuron: f64,
    /// Per-sample, per-rank keep mask on `down(x)`, scale divided by 1 − p (`rank_dropout`).
    pub rank: f64,
    /// Probability of skipping the whole module for one call (`module_dropout`).
    pub module: f64,
}

/// Where a module sits inside a fused linear's output: sd-scripts' `split_dims` (Flux
/// `split_qkv`) trains one down/up pair per part of a fused layer (q, k, v and the single
/// blocks' MLP input), each adding to its own rows of the layer's output, and saves the parts
/// fused again (see [`LoraSet::fused_parts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraPart {
    /// The part's position (0-based) among its layer's parts; the state names its factors
    /// `<module>.lora_down.<index>.weight` as sd-scripts does.
    pub index: usize,
    /// How many parts the layer has.
    pub count: usize,
    /// The first output row of the part (its width is the module's `up` rows).
    pub offset: usize,
}

/// One LoRA module: `down`/`up` weights (trainable `Var`s, or plain tensors of a loaded file),
/// alpha and multiplier.
pub struct LoraModule {
    name: String,
    kind: LoraKind,
    rank: usize,
    alpha: f64,
    down: Var,
    up: Var,
    trainable: bool,
    multiplier_bits: AtomicU64,
    dropout: LoraDropout,
    part: Option<LoraPart>,
}

impl LoraModule {
    /// A fresh trainable module initialised as sd-scripts: `down` Kaiming-uniform (a = √5, i.e.
    /// U(−1/√fan_in, 1/√fan_in)), `up` zero — the model's output is unchanged at step 0.
    pub fn new_trainable(
        name: impl Into<String>,
        target: &LoraTarget,
        rank: usize,
        alpha: f64,
        dtype: DType,
        device: &Device,
        rng: &mut StdRng,
    ) -> Result<Self> {
        if rank == 0 {
            candle_core::bail!("LoRA rank must be at least 1")
        }
        let (down_shape, up_shape) = factor_shapes(target, rank);
        let fan_in: usize = down_shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let n: usize = down_shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let down = Tensor::from_vec(values, down_shape.as_slice(), device)?.to_dtype(dtype)?;
        let up = Tensor::zeros(up_shape.as_slice(), dtype, device)?;
        Self::build(name.into(), target.kind, rank, alpha, down, up, true)
    }

    /// A module from stored weights (a kohya file): `down` (r, in[, k, k]), `up` (out, r[, 1, 1]).
    /// `alpha` of `None` or 0 means alpha = rank, as in sd-scripts.
    pub fn from_weights(
        name: impl Into<String>,
        kind: LoraKind,
        down: Tensor,
        up: Tensor,
        alpha: Option<f64>,
        trainable: bool,
    ) -> Result<Self> {
        let rank = down.dims()[0];
        if up.dims().len() < 2 || up.dims()[1] != rank {
            candle_core::bail!("lora_up {:?} does not match lora_down {:?}", up.dims(), down.dims())
        }
        let alpha = alpha.filter(|a| *a != 0.0).unwrap_or(rank as f64);
        // Linear targets may come with 4-D (…,1,1) factors (SD2-style files): keep them 2-D.
        let (down, up) = match kind {
            LoraKind::Linear if down.rank() == 4 => (down.flatten_from(1)?, up.flatten_from(1)?),
            _ => (down, up),
        };
        Self::build(name.into(), kind, rank, alpha, down, up, trainable)
    }

    fn build(
        name: String,
        kind: LoraKind,
        rank: usize,
        alpha: f64,
        down: Tensor,
        up: Tensor,
        trainable: bool,
    ) -> Result<Self> {
        Ok(LoraModule {
            name,
            kind,
            rank,
            alpha,
            down: Var::from_tensor(&down)?,
            up: Var::from_tensor(&up)?,
            trainable,
            multiplier_bits: AtomicU64::new(1f64.to_bits()),
            dropout: LoraDropout::default(),
            part: None,
        })
    }

    /// Makes this (linear) module one part of a fused layer's output, rows `part.offset ..
    /// part.offset + out` (sd-scripts' `split_dims`).
    pub fn as_part(mut self, part: LoraPart) -> Result<Self> {
        if self.kind != LoraKind::Linear || part.index >= part.count {
            candle_core::bail!("{}: only linear modules can be parts of a fused layer", self.name)
        }
        self.part = Some(part);
        Ok(self)
    }

    /// The module's place in a fused layer, when it is one part of it.
    pub fn part(&self) -> Option<LoraPart> {
        self.part
    }

    /// Sets the dropout hooks (used in training only).
    pub fn with_dropout(mut self, dropout: LoraDropout) -> Self {
        self.dropout = dropout;
        self
    }

    /// The dropout hooks.
    pub fn dropout(&self) -> LoraDropout {
        self.dropout
    }

    /// kohya's module name (`lora_unet_…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The target kind.
    pub fn kind(&self) -> LoraKind {
        self.kind
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Alpha (scale = alpha / rank).
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The `lora_down` weight (trainable when the module is).
    pub fn down(&self) -> &Var {
        &self.down
    }

    /// The `lora_up` weight.
    pub fn up(&self) -> &Var {
        &self.up
    }

    /// Whether gradients are wanted for this module's weights.
    pub fn is_trainable(&self) -> bool {
        self.trainable
    }

    /// The strength this module is applied with (1 by default).
    pub fn multiplier(&self) -> f64 {
        f64::from_bits(self.multiplier_bits.load(Ordering::Relaxed))
    }

    /// Changes the strength (sd-scripts' `set_multiplier`).
    pub fn set_multiplier(&self, multiplier: f64) {
        self.multiplier_bits.store(multiplier.to_bits(), Ordering::Relaxed)
    }

    fn weights(&self) -> (Tensor, Tensor) {
        if self.trainable {
            (self.down.as_tensor().clone(), self.up.as_tensor().clone())
        } else {
            (self.down.as_detached_tensor(), self.up.as_detached_tensor())
        }
    }

    /// The module's contribution for input `x` (the target layer's input), or `None` when
    /// module dropout skipped it. `train` enables the dropout hooks.
    pub fn forward(&self, x: &Tensor, train: bool, rng: &Mutex<StdRng>) -> Result<Option<Tensor>> {
        self.forward_with(x, train, rng, true)
    }

    /// [`Self::forward`]; `module_dropout` false leaves the module-dropout draw to the caller
    /// (the parts of a fused layer are skipped together, as sd-scripts' one module).
    fn forward_with(
        &self,
        x: &Tensor,
        train: bool,
        rng: &Mutex<StdRng>,
        module_dropout: bool,
    ) -> Result<Option<Tensor>> {
        let (down, up, mut scale) = match self.branch_with(x, train, rng, module_dropout)? {
            Branch::Skipped => return Ok(None),
            Branch::Fusable { down, up, scale } => {
                return match self.kind {
                    LoraKind::Linear => crate::cpu::lora::linear_branch(x, &down, &up, scale),
                    LoraKind::Conv { stride, padding, .. } => {
                        crate::cpu::lora::conv_branch(x, &down, &up, stride, padding, scale)
                    }
                }
                .map(Some)
            }
            Branch::Composed { down, up, scale } => (down, up, scale),
        };
        let mut h = match self.kind {
            LoraKind::Linear => x.broadcast_matmul(&down.t()?)?,
            LoraKind::Conv { stride, padding, .. } => crate::frozen::conv2d_trainable(x, &down, stride, padding)?,
        };
        if train && self.dropout.neuron > 0.0 {
            let keep = 1.0 - self.dropout.neuron;
            let mask = bernoulli_mask(h.dims(), keep, h.dtype(), h.device(), rng)?;
            h = (h * mask)?.affine(1.0 / keep, 0.0)?;
        }
        if train && self.dropout.rank > 0.0 {
            let keep = 1.0 - self.dropout.rank;
            let batch = h.dims()[0];
            let mut mask_shape = vec![1usize; h.rank()];
            mask_shape[0] = batch;
            match self.kind {
                LoraKind::Linear => *mask_shape.last_mut().expect("rank ≥ 1") = self.rank,
                LoraKind::Conv { .. } => mask_shape[1] = self.rank,
            }
            let mask = bernoulli_mask(&mask_shape, keep, h.dtype(), h.device(), rng)?;
            h = h.broadcast_mul(&mask)?;
            scale /= keep;
        }
        let y = match self.kind {
            LoraKind::Linear => h.broadcast_matmul(&up.t()?)?,
            LoraKind::Conv { .. } => {
                // 1×1 up as one batched matmul: (out, r) · (B, r, H·W).
                let (b, r, hh, ww) = h.dims4()?;
                let out = up.dims()[0];
                up.reshape((out, r))?.broadcast_matmul(&h.reshape((b, r, hh * ww))?)?.reshape((b, out, hh, ww))?
            }
        };
        Ok(Some((y * scale)?))
    }

    /// How this call applies the module: skipped by module dropout (which this draws), as one
    /// fused CPU op (f32 on the CPU, no neuron or rank dropout), or composed from candle ops.
    pub(crate) fn branch(&self, x: &Tensor, train: bool, rng: &Mutex<StdRng>) -> Result<Branch> {
        self.branch_with(x, train, rng, true)
    }

    fn branch_with(&self, x: &Tensor, train: bool, rng: &Mutex<StdRng>, module_dropout: bool) -> Result<Branch> {
        let scale = self.multiplier() * self.scale();
        if module_dropout && self.skips(train, rng) {
            return Ok(Branch::Skipped);
        }
        let (down, up) = self.weights();
        let (down, up) = (down.to_dtype(x.dtype())?, up.to_dtype(x.dtype())?);
        let plain = !train || (self.dropout.neuron <= 0.0 && self.dropout.rank <= 0.0);
        if plain && crate::cpu::handles(x) && crate::cpu::handles(&down) {
            return Ok(Branch::Fusable { down, up, scale: scale as f32 });
        }
        Ok(Branch::Composed { down, up, scale })
    }

    /// Draws module dropout: whether this call skips the module.
    fn skips(&self, train: bool, rng: &Mutex<StdRng>) -> bool {
        train && self.dropout.module > 0.0 && lock(rng).random::<f64>() < self.dropout.module
    }

    /// The dense weight change `multiplier · scale · up·down`, shaped like the target's weight
    /// ((out, in) or (out, in, k, k)); used to merge a LoRA into base weights.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let (down, up) =
            (self.down.as_detached_tensor().to_dtype(DType::F32)?, self.up.as_detached_tensor().to_dtype(DType::F32)?);
        let out = up.dims()[0];
        let up2 = up.reshape((out, self.rank))?;
        let down2 = down.reshape((self.rank, ()))?;
        let delta = (up2.matmul(&down2)? * (self.multiplier() * self.scale()))?;
        match self.kind {
            LoraKind::Linear => Ok(delta),
            LoraKind::Conv { .. } => {
                let mut shape = vec![out];
                shape.extend_from_slice(&down.dims()[1..]);
                delta.reshape(shape.as_slice())
            }
        }
    }
}

/// The contribution of the parts of one fused layer (modules with a [`LoraPart`], same name) to
/// its `out`-wide output: each part's `up(down(x))` in its rows, zeros where no part is. Module
/// dropout is drawn once for them all (sd-scripts' split module is one module); `None` when it
/// skipped them.
pub(crate) fn parts_delta(
    parts: &[&LoraModule],
    x: &Tensor,
    out: usize,
    train: bool,
    rng: &Mutex<StdRng>,
) -> Result<Option<Tensor>> {
    let mut parts = parts.to_vec();
    parts.sort_by_key(|m| m.part.map_or(0, |p| p.offset));
    let Some(first) = parts.first() else { return Ok(None) };
    if first.skips(train, rng) {
        return Ok(None);
    }
    let mut pieces = Vec::with_capacity(2 * parts.len() + 1);
    let mut cursor = 0;
    let zeros = |like: &Tensor, width: usize| -> Result<Tensor> {
        let mut shape = like.dims().to_vec();
        *shape.last_mut().expect("a linear output has a feature axis") = width;
        Tensor::zeros(shape.as_slice(), like.dtype(), like.device())
    };
    for m in &parts {
        let offset = m.part.map_or(0, |p| p.offset);
        let delta = m.forward_with(x, train, rng, false)?.expect("module dropout is drawn above");
        let width = delta.dim(candle_core::D::Minus1)?;
        if offset < cursor || offset + width > out {
            candle_core::bail!("{}: its parts overlap or leave the layer's {out} outputs", m.name)
        }
        if offset > cursor {
            pieces.push(zeros(&delta, offset - cursor)?);
        }
        pieces.push(delta);
        cursor = offset + width;
    }
    if cursor < out {
        let tail = zeros(&pieces[0], out - cursor)?;
        pieces.push(tail);
    }
    Tensor::cat(&pieces, candle_core::D::Minus1).map(Some)
}

/// The parts of one fused layer joined into one kohya module, as sd-scripts' `split_qkv` saves
/// them: `down` the parts' downs stacked ((parts·r, in)), `up` block-diagonal ((out, parts·r)),
/// and alpha parts × the trained alpha. sd-scripts keeps alpha, so every loader — which reads
/// the rank from `down`'s rows, parts·r — applies 1/parts of the scale training used;
/// multiplying alpha by the parts makes ComfyUI, Forge, diffusers and sd-scripts' own inference
/// apply exactly the trained function. (sd-scripts re-splitting the file to train on takes its
/// scale from the config, not the file, so it reads these files right too.)
pub fn fuse_parts(parts: &[&LoraModule]) -> Result<(Tensor, Tensor, f64)> {
    let mut parts = parts.to_vec();
    parts.sort_by_key(|m| m.part.map_or(0, |p| p.index));
    let Some(first) = parts.first() else { candle_core::bail!("no parts to fuse") };
    let count = parts.len();
    let rank = first.rank;
    // Equal ranks, indices 0..count, and rows that follow each other from 0 (a fused file's up
    // has exactly the parts' rows).
    let mut cursor = 0;
    for (i, m) in parts.iter().enumerate() {
        let contiguous = m.part.map(|p| (p.index, p.count, p.offset)) == Some((i, count, cursor));
        if m.rank != rank || !contiguous {
            candle_core::bail!("{}: its parts do not form one fused layer (ranks, indices or rows differ)", first.name)
        }
        cursor += m.up.dim(0)?;
    }
    let downs: Vec<Tensor> = parts.iter().map(|m| m.down.as_detached_tensor()).collect();
    let down = Tensor::cat(&downs, 0)?;
    let mut rows = Vec::with_capacity(count);
    for (i, m) in parts.iter().enumerate() {
        let up = m.up.as_detached_tensor();
        let (width, dtype, device) = (up.dim(0)?, up.dtype(), up.device().clone());
        let mut cols = Vec::with_capacity(count);
        for j in 0..count {
            cols.push(if i == j { up.clone() } else { Tensor::zeros((width, rank), dtype, &device)? });
        }
        rows.push(Tensor::cat(&cols, 1)?);
    }
    let up = Tensor::cat(&rows, 0)?;
    Ok((down, up, first.alpha * count as f64))
}

/// How one call applies a module (see [`LoraModule::branch`]); factors in the input's dtype.
pub(crate) enum Branch {
    /// Module dropout skipped it.
    Skipped,
    /// f32 on the CPU without neuron/rank dropout: one fused op.
    Fusable { down: Tensor, up: Tensor, scale: f32 },
    /// Anything else: candle ops, dropout masks applied.
    Composed { down: Tensor, up: Tensor, scale: f64 },
}

/// The `down` and `up` shapes for a target and rank.
fn factor_shapes(target: &LoraTarget, rank: usize) -> (Vec<usize>, Vec<usize>) {
    match target.kind {
        LoraKind::Linear => (vec![rank, target.in_dim], vec![target.out_dim, rank]),
        LoraKind::Conv { kernel, .. } => (vec![rank, target.in_dim, kernel, kernel], vec![target.out_dim, rank, 1, 1]),
    }
}

fn bernoulli_mask(shape: &[usize], keep: f64, dtype: DType, device: &Device, rng: &Mutex<StdRng>) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = lock(rng);
    let values: Vec<f32> = (0..n).map(|_| if rng.random::<f64>() < keep { 1.0 } else { 0.0 }).collect();
    Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
}

/// The LoRA modules of one model (e.g. the UNet), looked up by the target layer's path.
///
/// Also holds what training needs around them: the dropout RNG (snapshotted by gradient
/// checkpointing so a recomputed block draws the same masks) and the gradients that
/// checkpointed blocks produce during backward (they never reach the outer `GradStore`).
pub struct LoraSet {
    modules: Vec<Arc<LoraModule>>,
    by_path: HashMap<String, Vec<usize>>,
    /// LyCORIS LoHa/LoKr modules (trained ones; loaded LyCORIS files become LoRA modules).
    lycoris: Vec<Arc<LycorisModule>>,
    lycoris_by_path: HashMap<String, Vec<usize>>,
    rng: Mutex<StdRng>,
    side_grads: Mutex<HashMap<TensorId, Tensor>>,
    /// A scalar that checkpointed blocks take as an extra input so their backward runs even
    /// when none of their real inputs needs a gradient (the LoRA weights inside still do).
    anchor: Var,
}

impl LoraSet {
    /// An empty set for a model on `device`; `seed` drives the dropout masks.
    pub fn new(seed: u64, device: &Device) -> Result<Self> {
        Ok(LoraSet {
            modules: Vec::new(),
            by_path: HashMap::new(),
            lycoris: Vec::new(),
            lycoris_by_path: HashMap::new(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            side_grads: Mutex::default(),
            anchor: Var::zeros((), DType::F32, device)?,
        })
    }

    /// Attaches `module` to the layer at `path` (several modules may share a layer, e.g. two
    /// LoRA files applied at once).
    pub fn insert(&mut self, path: impl Into<String>, module: LoraModule) {
        let index = self.modules.len();
        self.modules.push(Arc::new(module));
        self.by_path.entry(path.into()).or_default().push(index);
    }

    /// Attaches a LyCORIS LoHa/LoKr module to the layer at `path`.
    pub fn insert_lycoris(&mut self, path: impl Into<String>, module: LycorisModule) {
        let index = self.lycoris.len();
        self.lycoris.push(Arc::new(module));
        self.lycoris_by_path.entry(path.into()).or_default().push(index);
    }

    /// Every LoRA/LoCon module, in insertion order (LoHa/LoKr ones: [`Self::lycoris_modules`]).
    pub fn modules(&self) -> &[Arc<LoraModule>] {
        &self.modules
    }

    /// Every LoHa/LoKr module, in insertion order.
    pub fn lycoris_modules(&self) -> &[Arc<LycorisModule>] {
        &self.lycoris
    }

    /// The LoHa/LoKr modules attached to the layer at `path`.
    pub fn lycoris_for_path(&self, path: &str) -> impl Iterator<Item = &LycorisModule> {
        self.lycoris_by_path.get(path).into_iter().flatten().map(|&i| self.lycoris[i].as_ref())
    }

    /// Every trained tensor by the name a state stores it under: `<module>.lora_down.weight` /
    /// `.lora_up.weight` for LoRA modules (`<module>.lora_down.<i>.weight` for the parts of a
    /// fused layer, as sd-scripts' `split_dims`), `<module>.hada_w1_a`, `.lokr_w1`, … for LoHa/LoKr
    /// ones plus LoHa's/LoCon's max-norm `<module>.scalar` (optional: a LyCORIS file has none, and
    /// LyCORIS then starts it at 1). Trainable modules only.
    pub fn named_vars(&self) -> Vec<NamedVar> {
        let mut out = Vec::new();
        for m in self.modules.iter().filter(|m| m.trainable) {
            let part = m.part.map(|p| format!(".{}", p.index)).unwrap_or_default();
            for (factor, var) in [("lora_down", &m.down), ("lora_up", &m.up)] {
                let name = format!("{}.{factor}{part}.weight", m.name);
                out.push(NamedVar { name, var: var.clone(), optional: false });
            }
        }
        for m in self.lycoris.iter().filter(|m| m.is_trainable()) {
            for (suffix, var) in m.factors() {
                out.push(NamedVar { name: format!("{}.{suffix}", m.name()), var: var.clone(), optional: false });
            }
            if matches!(m.algo(), crate::lycoris::LycorisAlgo::LoHa | crate::lycoris::LycorisAlgo::LoCon) {
                out.push(NamedVar { name: format!("{}.scalar", m.name()), var: m.scalar().clone(), optional: true });
            }
        }
        out
    }

    /// Target paths with their modules, in insertion order of first module.
    pub fn paths(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.by_path.iter().map(|(p, v)| (p.as_str(), v.as_slice()))
    }

    /// Number of modules (LoRA and LoHa/LoKr).
    pub fn len(&self) -> usize {
        self.modules.len() + self.lycoris.len()
    }

    /// Whether the set has no modules.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The modules attached to the layer at `path`.
    pub fn for_path(&self, path: &str) -> impl Iterator<Item = &LoraModule> {
        self.by_path.get(path).into_iter().flatten().map(|&i| self.modules[i].as_ref())
    }

    /// Whether any module is attached to `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.by_path.contains_key(path) || self.lycoris_by_path.contains_key(path)
    }

    /// The trainable `Var`s (down and up of every trainable LoRA module, the factors of every
    /// trainable LoHa/LoKr module).
    pub fn trainable_vars(&self) -> Vec<Var> {
        let lora = self.modules.iter().filter(|m| m.trainable).flat_map(|m| [m.down.clone(), m.up.clone()]);
        let lycoris =
            self.lycoris.iter().filter(|m| m.is_trainable()).flat_map(|m| m.factors().iter().map(|(_, v)| v.clone()));
        lora.chain(lycoris).collect()
    }

    /// Whether any module is trainable.
    pub fn has_trainable(&self) -> bool {
        self.modules.iter().any(|m| m.trainable) || self.lycoris.iter().any(|m| m.is_trainable())
    }

    /// Sets every module's multiplier.
    pub fn set_multiplier(&self, multiplier: f64) {
        for m in &self.modules {
            m.set_multiplier(multiplier);
        }
        for m in &self.lycoris {
            m.set_multiplier(multiplier);
        }
    }

    /// The dropout RNG.
    pub fn rng(&self) -> &Mutex<StdRng> {
        &self.rng
    }

    /// Restarts the dropout RNG from `seed`. Training reseeds it from (run seed, step) before
    /// every forward pass, so the masks of a step never depend on how the run got there (an
    /// interrupted and resumed run draws the same masks as an uninterrupted one).
    pub fn reseed(&self, seed: u64) {
        *lock(&self.rng) = StdRng::seed_from_u64(seed);
    }

    pub(crate) fn anchor(&self) -> &Var {
        &self.anchor
    }

    /// Adds gradients computed inside a checkpointed block.
    pub(crate) fn accumulate_side_grad(&self, id: TensorId, grad: &Tensor) -> Result<()> {
        let mut side = lock(&self.side_grads);
        match side.get_mut(&id) {
            Some(existing) => *existing = (&*existing + grad)?,
            None => {
                side.insert(id, grad.clone());
            }
        }
        Ok(())
    }

    /// The full gradient of `var` after `backward()`: what the outer graph recorded plus what
    /// checkpointed blocks accumulated. Call [`LoraSet::clear_side_grads`] before the next step.
    /// Detached: candle's gradient tensors keep a graph back to the forward activations.
    pub fn grad(&self, grads: &GradStore, var: &Var) -> Result<Option<Tensor>> {
        let outer = grads.get(var).map(|g| g.detach());
        let side = lock(&self.side_grads).get(&var.id()).cloned();
        Ok(match (outer, side) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.or(b),
        })
    }

    /// Forgets the gradients checkpointed blocks accumulated.
    pub fn clear_side_grads(&self) {
        lock(&self.side_grads).clear();
    }
}

/// A trained tensor with the name a state stores it under ([`LoraSet::named_vars`]).
#[derive(Clone)]
pub struct NamedVar {
    /// `<module>.<suffix>`.
    pub name: String,
    /// The tensor.
    pub var: Var,
    /// Whether a file may lack it (the value then stays as initialised).
    pub optional: bool,
}

/// What [`apply_max_norm`] did: sd-scripts' `(keys_scaled, mean norm, max norm)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxNormStats {
    /// Modules whose weights were scaled down.
    pub keys_scaled: usize,
    /// Mean of the modules' weight-change norms after scaling.
    pub average_norm: f64,
    /// Largest of them.
    pub max_norm: f64,
}

/// sd-scripts' max-norm regularisation (`--scale_weight_norms`, spec §2.7) over the trainable
/// modules of `sets`: for each, `ΔW = up·down·(alpha/rank)` (multiplier left out, as sd-scripts);
/// when `‖ΔW‖_F > max_norm`, `up` and `down` are both multiplied by `√(max_norm/‖ΔW‖)` so the
/// product's norm becomes `max_norm`. Computed in f32 like torch. `None` when no module is
/// trainable. LoHa/LoKr modules follow LyCORIS' `apply_max_norm` (see
/// [`LycorisModule::apply_max_norm`]) and, as LyCORIS' network reports it, mean and max are 0
/// when no module was scaled.
pub fn apply_max_norm(sets: &[&LoraSet], max_norm: f64) -> Result<Option<MaxNormStats>> {
    let mut keys_scaled = 0usize;
    let mut norms = Vec::new();
    let lycoris: Vec<&Arc<LycorisModule>> =
        sets.iter().flat_map(|s| s.lycoris.iter()).filter(|m| m.is_trainable()).collect();
    for module in &lycoris {
        let (scaled, norm) = module.apply_max_norm(max_norm)?;
        keys_scaled += usize::from(scaled);
        norms.push(norm);
    }
    if !lycoris.is_empty() && keys_scaled == 0 {
        return Ok(Some(MaxNormStats { keys_scaled: 0, average_norm: 0.0, max_norm: 0.0 }));
    }
    for module in sets.iter().flat_map(|s| s.modules.iter()).filter(|m| m.trainable) {
        let down = module.down.as_detached_tensor().to_dtype(DType::F32)?;
        let up = module.up.as_detached_tensor().to_dtype(DType::F32)?;
        let r = module.rank;
        let delta = up.reshape((up.dims()[0], r))?.matmul(&down.reshape((r, ()))?)?;
        let scale = (module.alpha / r as f64) as f32;
        let norm = ((delta * scale as f64)?.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt();
        // torch: norm.clamp(min = m/2), desired = clamp(norm, max = m), ratio = desired / norm.
        let m = max_norm as f32;
        let clamped = norm.max(m / 2.0);
        let ratio = clamped.min(m) / clamped;
        if ratio != 1.0 {
            keys_scaled += 1;
            let sqrt_ratio = f64::from(ratio.sqrt());
            module.up.set(&module.up.as_detached_tensor().affine(sqrt_ratio, 0.0)?)?;
            module.down.set(&module.down.as_detached_tensor().affine(sqrt_ratio, 0.0)?)?;
        }
        norms.push(f64::from(norm * ratio));
    }
    if norms.is_empty() {
        return Ok(None);
    }
    Ok(Some(MaxNormStats {
        keys_scaled,
        average_norm: norms.iter().sum::<f64>() / norms.len() as f64,
        max_norm: norms.iter().cloned().fold(f64::MIN, f64::max),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{checkpoint, BlockFn};
    use crate::layers::{Conv2d, ForwardCtx};

    /// The parts of a fused layer (split_qkv) fill their own rows of the output and are
    /// skipped together by module dropout, as sd-scripts' one split module.
    #[test]
    fn parts_fill_their_rows_and_drop_out_together() {
        let dev = Device::Cpu;
        let mut set = LoraSet::new(3, &dev).unwrap();
        // A 3 → 7 linear with parts of widths 2 and 3 at rows 0 and 4 (rows 2 and 3 untouched).
        for (index, (offset, width)) in [(0usize, 2usize), (4, 3)].into_iter().enumerate() {
            let down = Tensor::randn(0f32, 1.0, (2, 3), &dev).unwrap();
            let up = Tensor::randn(0f32, 1.0, (width, 2), &dev).unwrap();
            let module = LoraModule::from_weights("lora_x", LoraKind::Linear, down, up, Some(2.0), true)
                .unwrap()
                .with_dropout(LoraDropout { module: 0.5, ..Default::default() })
                .as_part(LoraPart { index, count: 2, offset })
                .unwrap();
            set.insert("x", module);
        }
        let lin = crate::layers::Linear::new("x", Tensor::zeros((7, 3), DType::F32, &dev).unwrap(), None).unwrap();
        let set = Arc::new(set);
        let ctx = ForwardCtx { lora: Some(set.clone()), train: true, gradient_checkpointing: false };
        let x = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let (mut skipped, mut applied) = (0, 0);
        for _ in 0..40 {
            let y = lin.forward(&x, &ctx).unwrap();
            let col_sums: Vec<f32> = y.abs().unwrap().sum(0).unwrap().to_vec1().unwrap();
            assert_eq!([col_sums[2], col_sums[3]], [0.0; 2], "{col_sums:?}");
            let live = [0, 1, 4, 5].iter().filter(|&&c| col_sums[c] > 0.0).count();
            assert!(live == 0 || live == 4, "parts dropped separately: {col_sums:?}");
            if live == 0 {
                skipped += 1
            } else {
                applied += 1
            }
        }
        assert!(skipped > 5 && applied > 5, "{skipped} skipped, {applied} applied");
        let fused = fuse_parts(&set.for_path("x").collect::<Vec<_>>()).unwrap_err();
        assert!(fused.to_string().contains("do not form one fused layer"), "{fused}");
    }

    /// A checkpointed block's LoRA gradients must not keep its recomputed graph alive (candle's
    /// variable gradients are built from the forward activations): the side store holds
    /// detached tensors only. Before this was ensured, SD1.5's checkpointed step peaked at 9.6 GB
    /// instead of 5.3 GB.
    #[test]
    fn checkpointed_side_gradients_are_detached() {
        let dev = Device::Cpu;
        let mut set = LoraSet::new(1, &dev).unwrap();
        let w = Tensor::randn(0f32, 0.5, (4, 4, 3, 3), &dev).unwrap();
        let conv = Arc::new(Conv2d::new("c", w, None, 1, 1).unwrap());
        // A LoCon module: candle computes a conv kernel's gradient straight from the (tracked)
        // activations, so without detaching it would reference the recomputed graph.
        let down = Tensor::randn(0f32, 0.5, (2, 4, 3, 3), &dev).unwrap();
        let up = Tensor::randn(0f32, 0.5, (4, 2, 1, 1), &dev).unwrap();
        let kind = LoraKind::Conv { kernel: 3, stride: 1, padding: 1 };
        set.insert("c", LoraModule::from_weights("lora_c", kind, down, up, Some(1.0), true).unwrap());
        let set = Arc::new(set);
        let ctx = ForwardCtx { lora: Some(set.clone()), train: true, gradient_checkpointing: true };
        let block: BlockFn = Arc::new(move |x: &[Tensor], ctx: &ForwardCtx| conv.forward(&x[0], ctx)?.tanh());
        let x = Tensor::randn(0f32, 1.0, (1, 4, 5, 5), &dev).unwrap();
        let y = checkpoint(&[&x], &ctx, block).unwrap();
        let _grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let side = lock(&set.side_grads);
        assert_eq!(side.len(), 2, "down and up got gradients through the checkpoint");
        assert!(side.values().all(|g| !g.track_op()), "a side gradient still references its graph");
    }
}
