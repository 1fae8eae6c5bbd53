//! bitsandbytes' optimizers (AdamW8bit, Lion8bit, SGD8bit, AdEMAMix, AdEMAMix8bit): one engine
//! that reproduces the library's CUDA kernels element by element in float32.
//!
//! Which kernel a parameter gets is decided at its first update, as `init_state` does: 8-bit
//! block-wise state when the optimizer is 8-bit and the parameter has at least `min_8bit_size`
//! elements, float32 state otherwise. The kernels transcribed are csrc/kernels.cu's
//! `kOptimizer32bit2State`, `kOptimizer32bit1State`, `kOptimizerStatic8bit2StateBlockwise` and
//! `kOptimizerStatic8bit1StateBlockwise` (bitsandbytes 0.45–0.50: 256-element blocks), with every
//! hyperparameter rounded to float32 as the library's `ct.c_float` calls do. The GPU build uses
//! `--use_fast_math`, so a GPU run and this one differ by float32 rounding (and, rarely, a state
//! code by one); `tools/reference/optim_8bit_fixture.py` documents this and checks the
//! transcription against bitsandbytes' CPU backend.
//!
//! The update runs on the host (the code search and block maxima are per element/per block):
//! parameters and gradients are copied to the CPU and the parameter back to its device; the state
//! stays in host memory, 8-bit codes as `U8` tensors and block maxima as `F32`.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use serde_json::json;

use super::quant8::{block_count, quant_maps, quantize_state, BLOCK_SIZE, SIGNED_PAD_CODE};
use super::*;

/// The update rule (bitsandbytes' `optimizer_name`) with its own hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub enum BnbRule {
    /// `"adam"` (AdamW8bit): decoupled decay applied after the update.
    Adam { betas: (f64, f64), eps: f64 },
    /// `"ademamix"`: fast EMA (β1), slow EMA (β3, weighted by α) and second moment (β2). `beta3`
    /// is `None` when only two betas were given (bitsandbytes then passes β3 = 0). `t_alpha` /
    /// `t_beta3` warm α and β3 up over that many steps (`AdEMAMix.update_step`); 0 means off.
    AdEMAMix { betas: (f64, f64, Option<f64>), alpha: f64, t_alpha: u64, t_beta3: u64, eps: f64 },
    /// `"lion"` (Lion8bit): sign of the β1-interpolated momentum, momentum kept with β2.
    Lion { betas: (f64, f64) },
    /// `"momentum"` (SGD8bit): heavy-ball momentum; bitsandbytes ignores `dampening` and
    /// `nesterov` (kept for the description and the state).
    Momentum { momentum: f64, dampening: f64 },
}

impl BnbRule {
    fn two_state(&self) -> bool {
        matches!(self, BnbRule::Adam { .. } | BnbRule::AdEMAMix { .. })
    }

    /// Rows of `state1`: AdEMAMix keeps both EMAs in one `(2, *shape)` buffer.
    fn state1_rows(&self) -> usize {
        if matches!(self, BnbRule::AdEMAMix { .. }) {
            2
        } else {
            1
        }
    }
}

/// A bitsandbytes optimizer's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BnbConfig {
    pub rule: BnbRule,
    pub weight_decay: f64,
    /// 8: block-wise 8-bit state for large parameters; 32: float32 state everywhere.
    pub optim_bits: u32,
    /// Parameters with fewer elements keep float32 state (bitsandbytes' default 4096).
    pub min_8bit_size: u64,
}

/// bitsandbytes' `Optimizer2State`/`Optimizer1State` constructor checks (same wording).
fn validate_common(betas: &[f64], eps: f64, weight_decay: f64) -> std::result::Result<(), String> {
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(format!("Invalid epsilon value: {}", python_float_repr(eps)));
    }
    for (i, b) in betas.iter().enumerate() {
        if !(0.0..1.0).contains(b) {
            return Err(format!("Invalid beta parameter at index {i}: {}", python_float_repr(*b)));
        }
    }
    if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
        return Err(format!("Invalid weight_decay value: {}", python_float_repr(weight_decay)));
    }
    Ok(())
}

impl BnbConfig {
    /// The library's checks, plus what would only fail at the first step there (AdEMAMix's
    /// schedulers need three betas and positive β1, β3 for their logarithms).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.optim_bits != 8 && self.optim_bits != 32 {
            return Err(format!("Amount of optimizer bits not supported: {}", self.optim_bits));
        }
        match &self.rule {
            BnbRule::Adam { betas, eps } => validate_common(&[betas.0, betas.1], *eps, self.weight_decay),
            BnbRule::Lion { betas } => validate_common(&[betas.0, betas.1], 0.0, self.weight_decay),
            BnbRule::Momentum { momentum, dampening } => {
                if *momentum == 0.0 {
                    return Err("SGD without momentum is not supported!".into());
                }
                validate_common(&[*momentum, *dampening], 0.0, self.weight_decay)
            }
            BnbRule::AdEMAMix { betas, alpha, t_alpha, t_beta3, eps } => {
                let mut all = vec![betas.0, betas.1];
                all.extend(betas.2);
                validate_common(&all, *eps, self.weight_decay)?;
                if !alpha.is_finite() {
                    return Err(format!("alpha must be a finite number, got {}", python_float_repr(*alpha)));
                }
                if (*t_alpha > 0 || *t_beta3 > 0) && betas.2.is_none() {
                    return Err("t_alpha/t_beta3 need three betas (beta1, beta2, beta3)".into());
                }
                if *t_beta3 > 0 && (betas.0 <= 0.0 || betas.2.is_some_and(|b| b <= 0.0)) {
                    return Err("t_beta3 needs beta1 > 0 and beta3 > 0 (its schedule takes their logarithms)".into());
                }
                Ok(())
            }
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut v = match &self.rule {
            BnbRule::Adam { betas, eps } => json!({"rule": "adam", "betas": [betas.0, betas.1], "eps": eps}),
            BnbRule::AdEMAMix { betas, alpha, t_alpha, t_beta3, eps } => {
                let mut b = vec![betas.0, betas.1];
                b.extend(betas.2);
                json!({"rule": "ademamix", "betas": b, "alpha": alpha, "t_alpha": t_alpha, "t_beta3": t_beta3, "eps": eps})
            }
            BnbRule::Lion { betas } => json!({"rule": "lion", "betas": [betas.0, betas.1]}),
            BnbRule::Momentum { momentum, dampening } => {
                json!({"rule": "momentum", "momentum": momentum, "dampening": dampening})
            }
        };
        v["weight_decay"] = json!(self.weight_decay);
        v["optim_bits"] = json!(self.optim_bits);
        v["min_8bit_size"] = json!(self.min_8bit_size);
        v
    }

    fn from_json(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).ok_or_else(|| format!("missing number `{k}`"));
        let int = |k: &str| v.get(k).and_then(|x| x.as_u64()).ok_or_else(|| format!("missing integer `{k}`"));
        let betas: Vec<f64> = v
            .get("betas")
            .and_then(|b| b.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        let pair = || match betas.as_slice() {
            [a, b] => Ok((*a, *b)),
            _ => Err("`betas` must be two numbers".to_string()),
        };
        let rule = match v.get("rule").and_then(|r| r.as_str()) {
            Some("adam") => BnbRule::Adam { betas: pair()?, eps: num("eps")? },
            Some("lion") => BnbRule::Lion { betas: pair()? },
            Some("momentum") => BnbRule::Momentum { momentum: num("momentum")?, dampening: num("dampening")? },
            Some("ademamix") => {
                let betas = match betas.as_slice() {
                    [a, b] => (*a, *b, None),
                    [a, b, c] => (*a, *b, Some(*c)),
                    _ => return Err("`betas` must be two or three numbers".into()),
                };
                BnbRule::AdEMAMix {
                    betas,
                    alpha: num("alpha")?,
                    t_alpha: int("t_alpha")?,
                    t_beta3: int("t_beta3")?,
                    eps: num("eps")?,
                }
            }
            other => return Err(format!("unknown update rule {other:?}")),
        };
        let optim_bits = u32::try_from(int("optim_bits")?).map_err(|_| "bad `optim_bits`".to_string())?;
        let cfg =
            BnbConfig { rule, weight_decay: num("weight_decay")?, optim_bits, min_8bit_size: int("min_8bit_size")? };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// What reaches the kernel for one parameter update, as float32 (`ct.c_float`).
#[derive(Debug, Clone, Copy)]
struct Hyper {
    beta1: f32,
    beta2: f32,
    beta3: f32,
    alpha: f32,
    eps: f32,
    lr: f32,
    wd: f32,
    step: u64,
}

impl Hyper {
    /// `Optimizer2State/1State.update_step` and `AdEMAMix.update_step` (alpha/beta3 schedulers in
    /// double precision, as in Python).
    fn new(config: &BnbConfig, lr: f64, step: u64) -> Self {
        let (beta1, beta2, beta3, alpha, eps) = match &config.rule {
            BnbRule::Adam { betas, eps } => (betas.0, betas.1, 0.0, 0.0, *eps),
            BnbRule::Lion { betas } => (betas.0, betas.1, 0.0, 0.0, 0.0),
            BnbRule::Momentum { momentum, dampening } => (*momentum, *dampening, 0.0, 0.0, 0.0),
            BnbRule::AdEMAMix { betas, alpha, t_alpha, t_beta3, eps } => {
                let s = step as f64;
                let alpha_t = if *t_alpha > 0 { (s * alpha / *t_alpha as f64).min(*alpha) } else { *alpha };
                let beta3 = betas.2.unwrap_or(0.0);
                let beta3_t = if *t_beta3 > 0 {
                    let (ln1, ln3) = (betas.0.ln(), beta3.ln());
                    let scale = s / *t_beta3 as f64;
                    ((ln1 * ln3) / (((1.0 - scale) * ln3) + (scale * ln1))).exp().min(beta3)
                } else {
                    beta3
                };
                (betas.0, betas.1, beta3_t, alpha_t, *eps)
            }
        };
        Hyper {
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            beta3: beta3 as f32,
            alpha: alpha as f32,
            eps: eps as f32,
            lr: lr as f32,
            wd: config.weight_decay as f32,
            step,
        }
    }

    /// `__powf(beta, step)` is a fast approximation on the GPU; the float32 rounding of libm's
    /// double `pow` is portable and what the reference fixture uses.
    fn powf(base: f32, step: u64) -> f32 {
        (base as f64).powf(step as f64) as f32
    }

    /// `correction1 = 1 - β1ᵗ`, `correction2 = √(1 - β2ᵗ)`.
    fn corrections(&self) -> (f32, f32) {
        (1.0 - Self::powf(self.beta1, self.step), (1.0 - Self::powf(self.beta2, self.step)).sqrt())
    }
}

/// kernels.cu `sgn`: −1, 0 or 1 (0 for NaN).
fn sgn(x: f32) -> f32 {
    ((0.0 < x) as i32 - (x < 0.0) as i32) as f32
}

// ----------------------------------------------------------------------------------- kernels

/// `kOptimizer32bit2State<ADAM|ADEMAMIX>` (update_scale 1, gnorm_scale 1, skip_zeros off). For
/// AdEMAMix `s1` holds the fast EMA then the slow one.
fn k32_2state(ademamix: bool, p: &mut [f32], g: &[f32], s1: &mut [f32], s2: &mut [f32], h: &Hyper) {
    let n = p.len();
    let (c1, c2) = h.corrections();
    let step_size = (-h.lr * c2) / c1;
    for j in 0..n {
        let gv = g[j];
        let mut pv = p[j];
        if ademamix {
            let m1 = (s1[j] * h.beta1) + ((1.0 - h.beta1) * gv);
            let m2 = (s1[n + j] * h.beta3) + ((1.0 - h.beta3) * gv);
            let nu = (s2[j] * h.beta2) + ((1.0 - h.beta2) * gv * gv);
            pv -= h.lr * (((m1 / c1) + (h.alpha * m2)) / ((nu.sqrt() / c2) + h.eps));
            s1[j] = m1;
            s1[n + j] = m2;
            s2[j] = nu;
        } else {
            let m = s1[j] * h.beta1 + ((1.0 - h.beta1) * gv);
            let v = s2[j] * h.beta2 + ((1.0 - h.beta2) * (gv * gv));
            pv += step_size * (m / (v.sqrt() + (h.eps * c2)));
            s1[j] = m;
            s2[j] = v;
        }
        if h.wd > 0.0 {
            pv *= 1.0 - (h.lr * h.wd);
        }
        p[j] = pv;
    }
}

/// `kOptimizer32bit1State<MOMENTUM|LION>`: momentum folds decay into the gradient; Lion decays
/// the parameter before its sign step (bitsandbytes ≥ 0.50's decoupled Lion decay).
fn k32_1state(lion: bool, p: &mut [f32], g: &[f32], s1: &mut [f32], h: &Hyper) {
    for j in 0..p.len() {
        let mut gv = g[j];
        let mut pv = p[j];
        if h.wd > 0.0 && !lion {
            gv += pv * h.wd;
        }
        if lion {
            if h.wd > 0.0 {
                pv *= 1.0 - h.lr * h.wd;
            }
            pv -= h.lr * sgn(s1[j] * h.beta1 + ((1.0 - h.beta1) * gv));
            s1[j] = s1[j] * h.beta2 + ((1.0 - h.beta2) * gv);
        } else {
            s1[j] = if h.step == 1 { gv } else { s1[j] * h.beta1 + gv };
            pv += -h.lr * s1[j];
        }
        p[j] = pv;
    }
}

/// One block-wise 8-bit state: codes and per-block maxima (AdEMAMix's first state holds two).
struct Q8<'a> {
    codes: &'a mut [u8],
    absmax: &'a mut [f32],
}

/// Largest magnitude as the kernels' block reduction computes it (`fmaxf` from −FLT_MAX).
fn block_absmax(values: &[f32]) -> f32 {
    values.iter().fold(-f32::MAX, |m, v| m.max(v.abs()))
}

/// `kOptimizerStatic8bit2StateBlockwise<ADAM|ADEMAMIX, 256, 1>`: per 256-element block,
/// dequantise (`map[code] · absmax`), update the moments in float32 (elements with a non-finite
/// gradient get zero moments and keep their parameter), take the new block maxima over the whole
/// padded block, update the parameters, requantise. `q1` of AdEMAMix holds the fast EMA's codes
/// then the slow EMA's, with maxima `[fast blocks…, slow blocks…]` (bitsandbytes' `(2, blocks)`).
fn k8_2state(ademamix: bool, p: &mut [f32], g: &[f32], q1: Q8, q2: Q8, h: &Hyper) {
    let maps = quant_maps();
    let n = p.len();
    let blocks = block_count(n);
    let (c1, c2) = h.corrections();
    let step_size = (-h.lr * c2) / c1;
    let (mut s1, mut s2, mut s3) = ([0f32; BLOCK_SIZE], [0f32; BLOCK_SIZE], [0f32; BLOCK_SIZE]);
    for b in 0..blocks {
        let base = b * BLOCK_SIZE;
        let (a1, a2) = (q1.absmax[b], q2.absmax[b]);
        let a3 = if ademamix { q1.absmax[blocks + b] } else { 0.0 };
        for j in 0..BLOCK_SIZE {
            let i = base + j;
            let valid = i < n;
            let gv = if valid { g[i] } else { 0.0 };
            if !gv.is_finite() {
                (s1[j], s2[j], s3[j]) = (0.0, 0.0, 0.0);
                continue;
            }
            let cs1 = if valid { q1.codes[i] } else { SIGNED_PAD_CODE };
            let cs2 = if valid { q2.codes[i] } else { 0 };
            let v = maps.unsigned[cs2 as usize] * a2;
            s2[j] = (v * h.beta2) + ((1.0 - h.beta2) * gv * gv);
            let m = maps.signed[cs1 as usize] * a1;
            s1[j] = (m * h.beta1) + ((1.0 - h.beta1) * gv);
            if ademamix {
                let cs3 = if valid { q1.codes[n + i] } else { SIGNED_PAD_CODE };
                let m3 = maps.signed[cs3 as usize] * a3;
                s3[j] = (m3 * h.beta3) + ((1.0 - h.beta3) * gv);
            }
        }
        let m1 = block_absmax(&s1);
        let m2 = block_absmax(&s2);
        let m3 = if ademamix { block_absmax(&s3) } else { 0.0 };
        q1.absmax[b] = m1;
        q2.absmax[b] = m2;
        if ademamix {
            q1.absmax[blocks + b] = m3;
        }
        let valid = BLOCK_SIZE.min(n - base);
        for j in 0..valid {
            let i = base + j;
            if g[i].is_finite() {
                let mut pv = p[i];
                if ademamix {
                    pv -= h.lr * (((s1[j] / c1) + (h.alpha * s3[j])) / ((s2[j].sqrt() / c2) + h.eps));
                } else {
                    pv += step_size * (s1[j] / (s2[j].sqrt() + (c2 * h.eps)));
                }
                if h.wd > 0.0 {
                    pv *= 1.0 - (h.lr * h.wd);
                }
                p[i] = pv;
            }
            q1.codes[i] = quantize_state(&maps.signed, s1[j], m1, true);
            q2.codes[i] = quantize_state(&maps.unsigned, s2[j], m2, false);
            if ademamix {
                q1.codes[n + i] = quantize_state(&maps.signed, s3[j], m3, true);
            }
        }
    }
}

/// `kOptimizerStatic8bit1StateBlockwise<MOMENTUM|LION, 256, 1>` (skip_zeros off): padding past the
/// end is gradient 0, parameter 0, code 128, and counts towards the last block's maximum.
fn k8_1state(lion: bool, p: &mut [f32], g: &[f32], q1: Q8, h: &Hyper) {
    let maps = quant_maps();
    let n = p.len();
    let (mut s1, mut pv, mut upd) = ([0f32; BLOCK_SIZE], [0f32; BLOCK_SIZE], [0f32; BLOCK_SIZE]);
    for b in 0..block_count(n) {
        let base = b * BLOCK_SIZE;
        let a1 = q1.absmax[b];
        for j in 0..BLOCK_SIZE {
            let i = base + j;
            let valid = i < n;
            let mut gv = if valid { g[i] } else { 0.0 };
            pv[j] = if valid { p[i] } else { 0.0 };
            let cs1 = if valid { q1.codes[i] } else { SIGNED_PAD_CODE };
            if h.wd > 0.0 {
                if lion {
                    pv[j] *= 1.0 - h.lr * h.wd;
                } else {
                    gv += pv[j] * h.wd;
                }
            }
            let s = maps.signed[cs1 as usize] * a1;
            if lion {
                upd[j] = h.lr * sgn((s * h.beta1) + ((1.0 - h.beta1) * gv));
                s1[j] = s * h.beta2 + ((1.0 - h.beta2) * gv);
            } else {
                s1[j] = if h.step == 1 { gv } else { (s * h.beta1) + gv };
            }
        }
        let m1 = block_absmax(&s1);
        q1.absmax[b] = m1;
        for j in 0..BLOCK_SIZE.min(n - base) {
            let i = base + j;
            p[i] = if lion { pv[j] - upd[j] } else { pv[j] - h.lr * s1[j] };
            q1.codes[i] = quantize_state(&maps.signed, s1[j], m1, true);
        }
    }
}

// --------------------------------------------------------------------------------- optimizer

/// A bitsandbytes optimizer over candle `Var`s (see the module docs). Build it with
/// [`BnbOptimizer::new`] or the `from_args` constructors of [`AdamW8bitConfig`],
/// [`Lion8bitConfig`], [`Sgd8bitConfig`] and [`AdEMAMixConfig`].
#[derive(Debug)]
pub struct BnbOptimizer {
    groups: Vec<ParamGroup>,
    config: BnbConfig,
    slots: SlotTable,
    name: &'static str,
    description: String,
}

/// Shapes and dtypes of a parameter's state tensors: `state1` (`(2, *shape)` for AdEMAMix),
/// `state2` for two-state rules, and for 8-bit state the block maxima `absmax1` (`(2, blocks)` for
/// AdEMAMix) and `absmax2`. Codes are `U8`, everything else `F32`.
fn state_shapes(rule: &BnbRule, var: &Var, eight_bit: bool) -> Vec<(&'static str, Vec<usize>, DType)> {
    let mut s1 = var.dims().to_vec();
    let blocks = block_count(var.elem_count());
    let a1 = if rule.state1_rows() == 2 {
        s1.insert(0, 2);
        vec![2, blocks]
    } else {
        vec![blocks]
    };
    let dt = if eight_bit { DType::U8 } else { DType::F32 };
    let mut out = vec![("state1", s1, dt)];
    if rule.two_state() {
        out.push(("state2", var.dims().to_vec(), dt));
    }
    if eight_bit {
        out.push(("absmax1", a1, DType::F32));
        if rule.two_state() {
            out.push(("absmax2", vec![blocks], DType::F32));
        }
    }
    out
}

fn cpu_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.detach().to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

fn cpu_u8(t: &Tensor) -> Result<Vec<u8>> {
    t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u8>()
}

impl BnbOptimizer {
    /// `name` identifies the optimizer in its saved state (the `optimizer_type` name),
    /// `description` is its `ss_optimizer` text.
    pub fn new(groups: Vec<ParamGroup>, config: BnbConfig, name: &'static str, description: String) -> Result<Self> {
        config.validate().map_err(|e| msg(format!("{name}: {e}")))?;
        check_groups(&groups)?;
        let slots = SlotTable::new(&groups);
        Ok(BnbOptimizer { groups, config, slots, name, description })
    }

    pub fn config(&self) -> &BnbConfig {
        &self.config
    }

    fn update(cfg: &BnbConfig, var: &Var, grad: &Tensor, lr: f64, slot: Option<&ParamSlot>) -> Result<ParamSlot> {
        let rule = &cfg.rule;
        let n = var.elem_count();
        let eight_bit = match slot {
            Some(s) => s.tensor("state1")?.dtype() == DType::U8,
            None => cfg.optim_bits == 8 && n as u64 >= cfg.min_8bit_size,
        };
        let shapes = state_shapes(rule, var, eight_bit);
        let step = slot.map_or(0, |s| s.step) + 1;
        let h = Hyper::new(cfg, lr, step);
        let mut p = cpu_f32(var.as_tensor())?;
        let g = cpu_f32(grad)?;
        let (ademamix, lion) = (matches!(rule, BnbRule::AdEMAMix { .. }), matches!(rule, BnbRule::Lion { .. }));
        // A fresh state is all zeros, as bitsandbytes' `torch.zeros` buffers (8-bit: code 0, maximum 0).
        let mut f32s = BTreeMap::new();
        let mut u8s = BTreeMap::new();
        for (name, shape, dtype) in &shapes {
            let len = shape.iter().product::<usize>();
            match (slot, dtype) {
                (Some(s), DType::U8) => {
                    u8s.insert(*name, cpu_u8(s.tensor(name)?)?);
                }
                (None, DType::U8) => {
                    u8s.insert(*name, vec![0u8; len]);
                }
                (Some(s), _) => {
                    f32s.insert(*name, cpu_f32(s.tensor(name)?)?);
                }
                (None, _) => {
                    f32s.insert(*name, vec![0f32; len]);
                }
            }
        }
        let mut take_f = |k: &str| f32s.remove(k).unwrap_or_default();
        let mut take_u = |k: &str| u8s.remove(k).unwrap_or_default();
        let mut out: Vec<(&'static str, Vec<f32>)> = Vec::new();
        let mut out_u8: Vec<(&'static str, Vec<u8>)> = Vec::new();
        match (eight_bit, rule.two_state()) {
            (true, true) => {
                let (mut c1, mut a1, mut c2, mut a2) =
                    (take_u("state1"), take_f("absmax1"), take_u("state2"), take_f("absmax2"));
                let (q1, q2) = (Q8 { codes: &mut c1, absmax: &mut a1 }, Q8 { codes: &mut c2, absmax: &mut a2 });
                k8_2state(ademamix, &mut p, &g, q1, q2, &h);
                out_u8.extend([("state1", c1), ("state2", c2)]);
                out.extend([("absmax1", a1), ("absmax2", a2)]);
            }
            (true, false) => {
                let (mut c1, mut a1) = (take_u("state1"), take_f("absmax1"));
                k8_1state(lion, &mut p, &g, Q8 { codes: &mut c1, absmax: &mut a1 }, &h);
                out_u8.push(("state1", c1));
                out.push(("absmax1", a1));
            }
            (false, true) => {
                let (mut s1, mut s2) = (take_f("state1"), take_f("state2"));
                k32_2state(ademamix, &mut p, &g, &mut s1, &mut s2, &h);
                out.extend([("state1", s1), ("state2", s2)]);
            }
            (false, false) => {
                let mut s1 = take_f("state1");
                k32_1state(lion, &mut p, &g, &mut s1, &h);
                out.push(("state1", s1));
            }
        }
        let shape_of = |name: &str| shapes.iter().find(|s| s.0 == name).map(|s| s.1.clone()).unwrap_or_default();
        let mut tensors = BTreeMap::new();
        for (name, v) in out {
            tensors.insert(name.to_string(), Tensor::from_vec(v, shape_of(name), &Device::Cpu)?);
        }
        for (name, v) in out_u8 {
            tensors.insert(name.to_string(), Tensor::from_vec(v, shape_of(name), &Device::Cpu)?);
        }
        let p = Tensor::from_vec(p, var.dims(), &Device::Cpu)?.to_device(var.device())?.to_dtype(var.dtype())?;
        var.set(&p)?;
        Ok(ParamSlot { step, tensors })
    }
}

impl Optimizer for BnbOptimizer {
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        let cfg = &self.config;
        self.slots.step_each(self.name, &self.groups, grads, lrs, |var, grad, lr, slot| {
            Self::update(cfg, var, grad, lr, slot)
        })
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.state1` (and `state2`) as bitsandbytes names them: `F32` shaped like
    /// the parameter for float32 state, `U8` codes plus `F32` block maxima `absmax1`/`absmax2` for
    /// 8-bit state (AdEMAMix: `state1` is `(2, *shape)`, `absmax1` `(2, blocks)`). Scalars: the
    /// optimizer name, its configuration and the per-parameter update counts.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let groups = self.slots.save(&self.groups, &mut tensors);
        let scalars = json!({"optimizer": self.name, "config": self.config.to_json(), "groups": groups});
        Ok(OptimizerState { tensors, scalars })
    }

    /// The saved configuration replaces the current one (as torch's `load_state_dict` restores
    /// the hyperparameters); each parameter keeps the kind of state (8-bit or float32) it was saved
    /// with, as bitsandbytes decides it once per parameter.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_state_owner(state, self.name)?;
        let name = self.name;
        let config = state
            .scalars
            .get("config")
            .ok_or_else(|| "missing `config`".to_string())
            .and_then(BnbConfig::from_json)
            .map_err(|e| msg(format!("{name} state: {e}")))?;
        let rule = &config.rule;
        let groups = &self.groups;
        let check = |tname: &str, t: &Tensor, g: usize, i: usize| -> Result<Tensor> {
            let var = &groups[g].vars[i];
            let eight = t.dtype() == DType::U8 || tname.starts_with("absmax");
            let expected = state_shapes(rule, var, eight);
            let Some((_, shape, dtype)) = expected.iter().find(|s| s.0 == tname) else {
                return Err(msg(format!("not a {name} state tensor")));
            };
            if t.dims() != shape.as_slice() {
                return Err(msg(format!("shape {:?}, expected {shape:?} for this parameter", t.dims())));
            }
            if t.dtype() != *dtype {
                return Err(msg(format!("dtype {:?}, expected {dtype:?}", t.dtype())));
            }
            t.to_device(&Device::Cpu)
        };
        let complete = |slot: &ParamSlot, prefix: &str, g: usize, i: usize| -> Result<()> {
            let var = &groups[g].vars[i];
            let eight = slot.tensors.get("state1").is_some_and(|t| t.dtype() == DType::U8);
            let expected = state_shapes(rule, var, eight);
            if let Some((n, ..)) = expected.iter().find(|s| !slot.tensors.contains_key(s.0)) {
                return Err(msg(format!("missing tensor `{prefix}{n}`")));
            }
            if let Some(extra) = slot.tensors.keys().find(|k| !expected.iter().any(|s| s.0 == k.as_str())) {
                return Err(msg(format!("unexpected tensor `{prefix}{extra}`")));
            }
            Ok(())
        };
        let slots = SlotTable::load(&self.groups, state, name, check, complete)?;
        self.config = config;
        self.slots = slots;
        Ok(())
    }

    fn description(&self) -> String {
        self.description.clone()
    }
}

// ------------------------------------------------------------------------- optimizer_args helpers

/// A number (int or float) for `key`.
pub(super) fn arg_number(optimizer: &str, key: &str, v: &ArgValue) -> std::result::Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("optimizer_args: {optimizer} `{key}` must be a number, got {}", v.python_repr()))
}

/// `betas` as a tuple/list of one of the allowed lengths.
pub(super) fn arg_betas(optimizer: &str, v: &ArgValue, lens: &[usize]) -> std::result::Result<Vec<f64>, String> {
    let values: Option<Vec<f64>> = v.as_seq().map(|s| s.iter().map(ArgValue::as_f64).collect()).unwrap_or(None);
    match values {
        Some(b) if lens.contains(&b.len()) => Ok(b),
        _ => {
            let n = lens.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" or ");
            Err(format!("optimizer_args: {optimizer} `betas` must be {n} numbers like `betas=0.9,0.999`, got {v}"))
        }
    }
}

/// A non-negative integer for `key` (`None` → `none`).
pub(super) fn arg_count(
    optimizer: &str,
    key: &str,
    v: &ArgValue,
    none: Option<u64>,
) -> std::result::Result<u64, String> {
    match (v, none) {
        (ArgValue::None, Some(d)) => Ok(d),
        (ArgValue::Int(i), _) if *i >= 0 => Ok(*i as u64),
        _ => {
            Err(format!("optimizer_args: {optimizer} `{key}` must be a non-negative integer, got {}", v.python_repr()))
        }
    }
}

/// A flag that changes nothing in the math (paging, kernel choice): any bool.
pub(super) fn arg_flag(optimizer: &str, key: &str, v: &ArgValue) -> std::result::Result<(), String> {
    match v {
        ArgValue::Bool(_) => Ok(()),
        _ => Err(format!("optimizer_args: {optimizer} `{key}` must be True or False, got {}", v.python_repr())),
    }
}

/// A flag only its default (False) of which is supported.
pub(super) fn arg_false_only(optimizer: &str, key: &str, v: &ArgValue, why: &str) -> std::result::Result<(), String> {
    match v {
        ArgValue::Bool(false) => Ok(()),
        _ => Err(format!("optimizer_args: {optimizer} `{key}={v}` is not supported ({why})")),
    }
}
