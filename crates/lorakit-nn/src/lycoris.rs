//! LyCORIS' LoHa, LoKr and LoCon modules (lycoris-lora 3.1.0, `modules/loha.py`,
//! `modules/lokr.py`, `modules/locon.py`) as trainable adapters, in LyCORIS' default "rebuild" mode: each call forms the dense weight
//! change ΔW (out, in·k·k) from the factors with ordinary candle ops (so every factor gets its
//! gradient) and applies it as `x·ΔWᵀ` (linear) or a convolution with ΔW as kernel (conv, with
//! the target's stride and padding), added to the frozen layer's output.
//!
//! - LoHa: `ΔW = scale · (w1_a·w1_b) ⊙ (w2_a·w2_b)`, `w1_a`, `w2_a` (out, r), `w1_b`, `w2_b`
//!   (r, in·k·k); initialised `w1_b`, `w2_b` ~ N(0, 1), `w1_a` ~ N(0, 0.1), `w2_a` = 0.
//! - LoKr: `ΔW = scale · w1 ⊗ w2` with `out = a·b`, `in = c·d` from LyCORIS' `factorization`;
//!   `w1` (a, c) full or `w1_a·w1_b` (decompose_both), `w2` (b, d·k·k) full or `w2_a·w2_b`;
//!   full `w1`/`w1_a`/`w1_b`/`w2_a` Kaiming-uniform, `w2`/`w2_b` zero. With both factors full
//!   (e.g. LyCORIS' "full dimension" network_dim = 100000) alpha is the dim: scale 1.
//! - LoCon (`algo=locon` or `lora`): `ΔW = scale · lora_up·lora_down` with kohya's shapes
//!   (`lora_down` (r, in[, k, k]) Kaiming-uniform, `lora_up` (out, r[, 1, 1]) zero) — the same
//!   file layout as sd-scripts' LoCon, but LyCORIS' module set, rank dropout and max-norm.
//!
//! Dropouts as LyCORIS applies them there: module dropout skips the module for a call; rank
//! dropout zeroes whole output rows of ΔW (each kept with probability 1 − p, no rescaling —
//! LyCORIS' `rank_dropout_scale` is off by default); LyCORIS ignores neuron dropout for these
//! modules ("haven't implemented normal dropout yet"), and so does this one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{rngs::StdRng, Rng};
use rand_distr::{Distribution, Normal};

use crate::lock;
use crate::lora::{LoraDropout, LoraKind, LoraTarget};

/// Which LyCORIS algorithm a module uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LycorisAlgo {
    /// Hadamard product of two low-rank products (`algo=loha`).
    LoHa,
    /// Kronecker product (`algo=lokr`).
    LoKr(LokrOptions),
    /// LyCORIS' own LoRA/LoCon (`algo=locon` or `algo=lora`).
    LoCon,
}

impl LycorisAlgo {
    /// LyCORIS' `algo` name.
    pub fn name(&self) -> &'static str {
        match self {
            LycorisAlgo::LoHa => "loha",
            LycorisAlgo::LoKr(_) => "lokr",
            LycorisAlgo::LoCon => "locon",
        }
    }

    /// Whether max-norm scales LyCORIS' `scalar` buffer (LoHa, LoCon) rather than the factors.
    fn has_scalar(&self) -> bool {
        matches!(self, LycorisAlgo::LoHa | LycorisAlgo::LoCon)
    }
}

/// LoKr's shape options (LyCORIS' `factor`, `decompose_both`, `full_matrix`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LokrOptions {
    /// Preferred size of the smaller Kronecker factor; −1: as balanced as the dims allow.
    pub factor: i64,
    /// Also split `w1` into a low-rank product (when the rank is below half its larger side).
    pub decompose_both: bool,
    /// Both factors full matrices whatever the rank.
    pub full_matrix: bool,
}

impl Default for LokrOptions {
    fn default() -> Self {
        LokrOptions { factor: -1, decompose_both: false, full_matrix: false }
    }
}

/// LyCORIS' `factorization(dimension, factor)`: `(m, n)` with `m·n = dimension`, `m ≤ n`; `m` is
/// `factor` when it divides the dimension, otherwise the largest divisor not above `factor` that
/// keeps `m + n` decreasing (`factor` ≤ 0: no bound).
pub fn factorization(dimension: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dimension % factor as usize == 0 {
        let m = factor as usize;
        let n = dimension / m;
        return if m > n { (n, m) } else { (m, n) };
    }
    let factor = if factor < 0 { dimension } else { factor as usize };
    let (mut m, mut n) = (1usize, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while dimension % new_m != 0 {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > factor {
            break;
        }
        m = new_m;
        n = new_n;
    }
    if m > n {
        (n, m)
    } else {
        (m, n)
    }
}

/// How a factor is initialised.
#[derive(Clone, Copy)]
enum Init {
    Normal(f64),
    KaimingUniform,
    Zero,
}

/// The factors of a module: file-key suffix, shape, initialisation.
///
/// Shapes as LyCORIS' modules create them: 2-D, except that a conv target (1×1 too) keeps the
/// kernel dims on a LoKr's full `w2` (b, d, k, k) and on LoCon's `nn.Conv2d` weights.
fn factor_plan(
    algo: LycorisAlgo,
    kind: LoraKind,
    out: usize,
    in_dim: usize,
    rank: usize,
) -> Vec<(&'static str, Vec<usize>, Init)> {
    let kernel = match kind {
        LoraKind::Linear => None,
        LoraKind::Conv { kernel, .. } => Some(kernel),
    };
    let kk = kernel.map_or(1, |k| k * k);
    let flat_in = in_dim * kk;
    // `shape` with the kernel dims `k` appended for conv targets.
    let with_kernel = |shape: Vec<usize>, k: usize| match kernel {
        Some(_) => [shape, vec![k, k]].concat(),
        None => shape,
    };
    match algo {
        LycorisAlgo::LoHa => vec![
            ("hada_w1_a", vec![out, rank], Init::Normal(0.1)),
            ("hada_w1_b", vec![rank, flat_in], Init::Normal(1.0)),
            ("hada_w2_a", vec![out, rank], Init::Zero),
            ("hada_w2_b", vec![rank, flat_in], Init::Normal(1.0)),
        ],
        LycorisAlgo::LoCon => vec![
            ("lora_down.weight", with_kernel(vec![rank, in_dim], kernel.unwrap_or(1)), Init::KaimingUniform),
            ("lora_up.weight", with_kernel(vec![out, rank], 1), Init::Zero),
        ],
        LycorisAlgo::LoKr(o) => {
            let (a, b) = factorization(out, o.factor);
            let (c, d) = factorization(in_dim, o.factor);
            let mut plan = Vec::new();
            if o.decompose_both && 2 * rank < a.max(c) && !o.full_matrix {
                plan.push(("lokr_w1_a", vec![a, rank], Init::KaimingUniform));
                plan.push(("lokr_w1_b", vec![rank, c], Init::KaimingUniform));
            } else {
                plan.push(("lokr_w1", vec![a, c], Init::KaimingUniform));
            }
            if 2 * rank < b.max(d) && !o.full_matrix {
                plan.push(("lokr_w2_a", vec![b, rank], Init::KaimingUniform));
                plan.push(("lokr_w2_b", vec![rank, d * kk], Init::Zero));
            } else {
                plan.push(("lokr_w2", with_kernel(vec![b, d], kernel.unwrap_or(1)), Init::Zero));
            }
            plan
        }
    }
}

fn init_values(shape: &[usize], init: Init, rng: &mut StdRng) -> Result<Vec<f32>> {
    let n: usize = shape.iter().product();
    Ok(match init {
        Init::Zero => vec![0.0; n],
        Init::Normal(std) => {
            let normal = Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            (0..n).map(|_| normal.sample(rng) as f32).collect()
        }
        // torch's kaiming_uniform_(a=√5): U(−1/√fan_in, 1/√fan_in), fan_in = size(1)·kernel.
        Init::KaimingUniform => {
            let bound = 1.0 / (shape[1..].iter().product::<usize>() as f64).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
        }
    })
}

/// One LoHa or LoKr module: its factors as trainable `Var`s (or constants), alpha, multiplier,
/// dropout hooks and LoHa's max-norm scalar.
pub struct LycorisModule {
    name: String,
    kind: LoraKind,
    algo: LycorisAlgo,
    dim: usize,
    alpha: f64,
    out_dim: usize,
    in_dim: usize,
    factors: Vec<(&'static str, Var)>,
    /// LyCORIS' `scalar` buffer: 1, multiplied down by max-norm (LoHa and LoCon; saved files
    /// hold `hada_w1_a · scalar` / `lora_up.weight · scalar`, as LyCORIS' `custom_state_dict`).
    scalar: Var,
    trainable: bool,
    multiplier_bits: AtomicU64,
    dropout: LoraDropout,
}

impl LycorisModule {
    /// A fresh trainable module for `target` with LyCORIS' shapes and initialisation. `alpha`
    /// of 0 means alpha = dim; LoKr with both factors full uses alpha = dim (scale 1).
    #[allow(clippy::too_many_arguments)]
    pub fn new_trainable(
        name: impl Into<String>,
        target: &LoraTarget,
        algo: LycorisAlgo,
        dim: usize,
        alpha: f64,
        dtype: DType,
        device: &Device,
        rng: &mut StdRng,
    ) -> Result<Self> {
        let name = name.into();
        if dim == 0 {
            candle_core::bail!("{name}: LyCORIS dim must be at least 1")
        }
        let mut factors = Vec::new();
        for (key, shape, init) in factor_plan(algo, target.kind, target.out_dim, target.in_dim, dim) {
            let values = init_values(&shape, init, rng)?;
            factors.push((key, Tensor::from_vec(values, shape.as_slice(), device)?.to_dtype(dtype)?));
        }
        Self::from_factors(name, target, algo, dim, alpha, factors, true)
    }

    /// A module from given factors (by key suffix, in [`LycorisModule::factor_names`]' order
    /// and shapes for the same algorithm, target and dim — anything else is an error naming the
    /// module). Alpha as LyCORIS' constructor takes it: 0 means dim, and a LoKr whose factors
    /// are both full uses dim (scale 1). Tensors that are already `Var`s stay those `Var`s.
    pub fn from_factors(
        name: impl Into<String>,
        target: &LoraTarget,
        algo: LycorisAlgo,
        dim: usize,
        alpha: f64,
        factors: Vec<(&'static str, Tensor)>,
        trainable: bool,
    ) -> Result<Self> {
        let name = name.into();
        let expected = Self::factor_names(algo, target, dim);
        let given: Vec<(&str, Vec<usize>)> = factors.iter().map(|(k, t)| (*k, t.dims().to_vec())).collect();
        if given != expected {
            candle_core::bail!("{name}: {} factors {given:?} do not match the expected {expected:?}", algo.name())
        }
        let Some((_, first)) = factors.first() else { candle_core::bail!("{name}: no factors") };
        let (dtype, device) = (first.dtype(), first.device().clone());
        let both_full = given.iter().any(|(k, _)| *k == "lokr_w1") && given.iter().any(|(k, _)| *k == "lokr_w2");
        let alpha = if alpha == 0.0 || both_full { dim as f64 } else { alpha };
        let factors = factors.into_iter().map(|(k, t)| Ok((k, Var::from_tensor(&t)?))).collect::<Result<Vec<_>>>()?;
        Ok(LycorisModule {
            name,
            kind: target.kind,
            algo,
            dim,
            alpha,
            out_dim: target.out_dim,
            in_dim: target.in_dim,
            factors,
            scalar: Var::from_tensor(&Tensor::ones((), dtype, &device)?)?,
            trainable,
            multiplier_bits: AtomicU64::new(1f64.to_bits()),
            dropout: LoraDropout::default(),
        })
    }

    /// The factor key suffixes a fresh module of these options has for `target`, with shapes
    /// (what a state or file must hold).
    pub fn factor_names(algo: LycorisAlgo, target: &LoraTarget, dim: usize) -> Vec<(&'static str, Vec<usize>)> {
        factor_plan(algo, target.kind, target.out_dim, target.in_dim, dim).into_iter().map(|(k, s, _)| (k, s)).collect()
    }

    /// Sets the dropout hooks (neuron dropout is ignored, as in LyCORIS).
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

    /// LoHa or LoKr, with LoKr's options.
    pub fn algo(&self) -> LycorisAlgo {
        self.algo
    }

    /// The rank (`network_dim`/`conv_dim` the module was made with).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Alpha as LyCORIS stores it (scale = alpha / dim).
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// `alpha / dim`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.dim as f64
    }

    /// The factors by key suffix, in LyCORIS' order.
    pub fn factors(&self) -> &[(&'static str, Var)] {
        &self.factors
    }

    /// LoHa's and LoCon's max-norm scalar (1 until max-norm scales the module down).
    pub fn scalar(&self) -> &Var {
        &self.scalar
    }

    /// Whether gradients are wanted for the factors.
    pub fn is_trainable(&self) -> bool {
        self.trainable
    }

    /// The strength this module is applied with (1 by default).
    pub fn multiplier(&self) -> f64 {
        f64::from_bits(self.multiplier_bits.load(Ordering::Relaxed))
    }

    /// Changes the strength.
    pub fn set_multiplier(&self, multiplier: f64) {
        self.multiplier_bits.store(multiplier.to_bits(), Ordering::Relaxed)
    }

    fn factor(&self, key: &str) -> Option<Tensor> {
        self.factors.iter().find(|(k, _)| *k == key).map(|(_, v)| {
            if self.trainable {
                v.as_tensor().clone()
            } else {
                v.as_detached_tensor()
            }
        })
    }

    /// `w` or `w_a·w_b` for the LoKr factor `w` (`lokr_w1`, `lokr_w2`).
    fn lokr_factor(&self, key: &str) -> Result<Tensor> {
        match self.factor(key) {
            Some(w) => Ok(w),
            None => {
                let (a, b) = (self.factor(&format!("{key}_a")), self.factor(&format!("{key}_b")));
                match (a, b) {
                    (Some(a), Some(b)) => a.matmul(&b),
                    _ => candle_core::bail!("{}: {key} or {key}_a/{key}_b missing", self.name),
                }
            }
        }
    }

    /// LyCORIS' `get_weight(shape) · scalar`: the weight change (out, in·k·k) with alpha/dim
    /// applied once, without multiplier or dropout; built from the factors with gradients when
    /// the module is trainable.
    pub fn weight_change(&self) -> Result<Tensor> {
        let delta = match self.algo {
            LycorisAlgo::LoHa => {
                let get = |k: &str| {
                    self.factor(k).ok_or_else(|| candle_core::Error::Msg(format!("{}: {k} missing", self.name)))
                };
                let w1 = get("hada_w1_a")?.matmul(&get("hada_w1_b")?)?;
                let w2 = get("hada_w2_a")?.matmul(&get("hada_w2_b")?)?;
                (w1 * w2)?
            }
            LycorisAlgo::LoKr(_) => {
                let w1 = self.lokr_factor("lokr_w1")?;
                let w2 = self.lokr_factor("lokr_w2")?.flatten_from(1)?;
                kron(&w1, &w2)?
            }
            LycorisAlgo::LoCon => {
                let get = |k: &str| {
                    self.factor(k).ok_or_else(|| candle_core::Error::Msg(format!("{}: {k} missing", self.name)))
                };
                get("lora_up.weight")?.flatten_from(1)?.matmul(&get("lora_down.weight")?.flatten_from(1)?)?
            }
        };
        let delta = (delta * self.scale())?;
        if self.algo.has_scalar() {
            // The scalar is a buffer in LyCORIS (no gradient).
            delta.broadcast_mul(&self.scalar.as_detached_tensor())
        } else {
            Ok(delta)
        }
    }

    /// The module's contribution for input `x` (the target layer's input), or `None` when
    /// module dropout skipped it; `train` enables the dropout hooks.
    pub fn forward(&self, x: &Tensor, train: bool, rng: &Mutex<StdRng>) -> Result<Option<Tensor>> {
        if train && self.dropout.module > 0.0 && lock(rng).random::<f64>() < self.dropout.module {
            return Ok(None);
        }
        let mut delta = self.weight_change()?;
        if train && self.dropout.rank > 0.0 {
            // LyCORIS: drop = rand(out) > p, one flag per output row of ΔW.
            let keep = 1.0 - self.dropout.rank;
            let mut rng = lock(rng);
            let mask: Vec<f32> =
                (0..self.out_dim).map(|_| if rng.random::<f64>() < keep { 1.0 } else { 0.0 }).collect();
            let mask = Tensor::from_vec(mask, (self.out_dim, 1), delta.device())?.to_dtype(delta.dtype())?;
            delta = delta.broadcast_mul(&mask)?;
        }
        let delta = (delta * self.multiplier())?.to_dtype(x.dtype())?;
        let y = match self.kind {
            LoraKind::Linear => x.broadcast_matmul(&delta.t()?)?,
            LoraKind::Conv { kernel, stride, padding } => {
                let w = delta.reshape((self.out_dim, self.in_dim, kernel, kernel))?;
                crate::frozen::conv2d_trainable(x, &w, stride, padding)?
            }
        };
        Ok(Some(y))
    }

    /// The dense weight change `multiplier · ΔW`, shaped like the target's weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let delta = (self.weight_change()?.detach().to_dtype(DType::F32)? * self.multiplier())?;
        match self.kind {
            LoraKind::Linear => Ok(delta),
            LoraKind::Conv { kernel, .. } => delta.reshape((self.out_dim, self.in_dim, kernel, kernel)),
        }
    }

    /// The tensors LyCORIS saves for this module, by key suffix: the factors (`hada_w1_a` and
    /// `lokr_w1`/`lokr_w1_a` times the scalar, as `custom_state_dict`), f32, detached.
    pub fn saved_factors(&self) -> Result<Vec<(&'static str, Tensor)>> {
        let scalar = self.scalar.as_detached_tensor().to_dtype(DType::F32)?;
        let mut out = Vec::new();
        for (key, var) in &self.factors {
            let t = var.as_detached_tensor().to_dtype(DType::F32)?;
            let t = if matches!(*key, "hada_w1_a" | "lokr_w1" | "lokr_w1_a" | "lora_up.weight") {
                t.broadcast_mul(&scalar)?
            } else {
                t
            };
            out.push((*key, t));
        }
        Ok(out)
    }

    /// LyCORIS' `apply_max_norm`: `‖ΔW‖_F` (ΔW with alpha/dim and the scalar), clamped as torch
    /// does; when it exceeds `max_norm` LoHa multiplies its scalar by the ratio, LoKr each of
    /// its n factors by `ratio^(1/n)`, LoCon its scalar. Returns (scaled, norm after scaling).
    pub fn apply_max_norm(&self, max_norm: f64) -> Result<(bool, f64)> {
        let delta = self.weight_change()?.detach().to_dtype(DType::F32)?;
        let orig = delta.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt();
        let m = max_norm as f32;
        let norm = orig.max(m / 2.0);
        let desired = norm.min(m);
        let ratio = desired / norm;
        let scaled = norm != desired;
        if scaled {
            if self.algo.has_scalar() {
                let s = self.scalar.as_detached_tensor();
                self.scalar.set(&s.affine(f64::from(ratio), 0.0)?)?;
            } else {
                let per = f64::from(ratio.powf(1.0 / self.factors.len() as f32));
                for (_, var) in &self.factors {
                    var.set(&var.as_detached_tensor().affine(per, 0.0)?)?;
                }
            }
        }
        Ok((scaled, f64::from(orig * ratio)))
    }
}

/// `A ⊗ B` for 2-D tensors (a, c) and (b, e): (a·b, c·e), with gradients.
pub fn kron(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, ca) = a.dims2()?;
    let (rb, cb) = b.dims2()?;
    a.reshape((ra, 1, ca, 1))?.broadcast_mul(&b.reshape((1, rb, 1, cb))?)?.reshape((ra * rb, ca * cb))
}
