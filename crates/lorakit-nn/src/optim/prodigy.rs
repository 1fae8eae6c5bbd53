//! `prodigyopt.Prodigy` (prodigyopt 1.1.2), sd-scripts' `--optimizer_type Prodigy`, plus the f32
//! arithmetic helpers the adaptive optimizers share.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor};
use serde_json::{json, Value};

use super::*;

// ------------------------------------------------------------------------- torch's f32 arithmetic
//
// The reference libraries are torch code: f32 tensors, Python-float (f64) scalars. These helpers
// reproduce torch's roundings where they are deterministic (fused multiply-adds). Not reproduced:
// the order of torch's reductions (sums and dot products are accumulated in f64 here and rounded
// once) and torch-CPU's MKL `sqrt`, which is not correctly rounded (candle's, like CUDA's, is).

/// torch's `a.add_(b, alpha=α)` / `a.sub_(b, alpha=-α)` on f32: `a + f32(α)·b` rounded once, because
/// torch's CPU (AVX2/AVX512) and CUDA kernels fuse it into one multiply-add. Prodigy's distance
/// estimate subtracts nearly equal parameters, so single-ulp differences in the parameters show up
/// in `d`; the fused rounding is emulated through f64, where the f32 product is exact. Metal has no
/// f64: there the product is rounded first (at most 1 ulp apart).
pub(super) fn add_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    let alpha = alpha as f32 as f64;
    if a.device().is_metal() {
        return a + b.affine(alpha, 0.0)?;
    }
    (a.to_dtype(DType::F64)? + b.to_dtype(DType::F64)?.affine(alpha, 0.0)?)?.to_dtype(DType::F32)
}

/// `a + x·y` rounded once: torch's `a.addcmul_(t1, t2, value=v)` with `x = f32(v)·t1` already
/// rounded (that is how its fused kernel groups the operations).
pub(super) fn add_product(a: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if a.device().is_metal() {
        return a + (x * y)?;
    }
    (a.to_dtype(DType::F64)? + (x.to_dtype(DType::F64)? * y.to_dtype(DType::F64)?)?)?.to_dtype(DType::F32)
}

/// Sum of all elements as torch returns it for an f32 tensor (an f32), accumulated in f64 where the
/// device has it (torch's own summation order is not reproduced; this is the nearly exact sum,
/// within an ulp or two of torch's).
pub(super) fn sum_f32(t: &Tensor) -> Result<f32> {
    if t.device().is_metal() {
        return t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>();
    }
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as f32)
}

/// `torch.dot(a, b)` of two f32 vectors, like [`sum_f32`].
pub(super) fn dot_f32(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.device().is_metal() {
        return (a * b)?.sum_all()?.to_scalar::<f32>();
    }
    Ok((a.to_dtype(DType::F64)? * b.broadcast_as(a.shape())?.to_dtype(DType::F64)?)?.sum_all()?.to_scalar::<f64>()?
        as f32)
}

/// `p.flatten()[::step]`: every `step`-th element of the flattened tensor.
pub(super) fn strided(t: &Tensor, step: usize) -> Result<Tensor> {
    let flat = t.flatten_all()?;
    if step <= 1 {
        return Ok(flat);
    }
    let n = flat.elem_count() as u32;
    let idx = Tensor::arange_step(0u32, n, step as u32, t.device())?;
    flat.index_select(&idx, 0)
}

/// Length of `p.flatten()[::step]`.
pub(super) fn strided_len(n: usize, step: usize) -> usize {
    n.div_ceil(step.max(1))
}

/// `p.any()`: whether some element is non-zero (NaN counts).
pub(super) fn any_nonzero(t: &Tensor) -> Result<bool> {
    if t.elem_count() == 0 {
        return Ok(false);
    }
    // the u8 mask as f32: every backend reduces f32
    Ok(t.ne(0f32)?.to_dtype(DType::F32)?.max_all()?.to_scalar::<f32>()? > 0.0)
}

/// `x > 0` (false for NaN): the libraries' `if not 0.0 < x: raise`.
pub(super) fn is_positive(x: f64) -> bool {
    x > 0.0
}

/// Python's `max(a, b)`: `b` only when it is strictly larger (a NaN `b` never wins).
pub(super) fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// Python's `min(a, b)`.
pub(super) fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// An f64 in JSON as its shortest round-trip decimal text: exact through any JSON reader (a JSON
/// number may be read back an ulp off) and able to hold `inf`.
pub(super) fn exact(x: f64) -> Value {
    Value::String(format!("{x:?}"))
}

/// Reads back [`exact`] (or a plain JSON number).
pub(super) fn read_exact(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Reads `key` of a state's scalars as an exact f64, with an error naming the optimizer and key.
pub(super) fn state_f64(s: &Value, optimizer: &str, key: &str) -> Result<f64> {
    read_exact(s.get(key)).ok_or_else(|| msg(format!("{optimizer} state: missing or bad number `{key}`")))
}

pub(super) fn state_u64(s: &Value, optimizer: &str, key: &str) -> Result<u64> {
    s.get(key).and_then(|v| v.as_u64()).ok_or_else(|| msg(format!("{optimizer} state: missing count `{key}`")))
}

pub(super) fn state_bool(s: &Value, optimizer: &str, key: &str) -> Result<bool> {
    s.get(key).and_then(|v| v.as_bool()).ok_or_else(|| msg(format!("{optimizer} state: missing flag `{key}`")))
}

/// The learning rates saved by an optimizer state (one per group).
pub(super) fn state_lrs(s: &Value, optimizer: &str, groups: usize) -> Result<Vec<f64>> {
    let bad = || msg(format!("{optimizer} state: `lrs` must hold one number per param group ({groups})"));
    let arr = s.get("lrs").and_then(|v| v.as_array()).ok_or_else(bad)?;
    if arr.len() != groups {
        return Err(bad());
    }
    arr.iter().map(|v| read_exact(Some(v)).ok_or_else(bad)).collect()
}

// ------------------------------------------------------------------------------- argument parsing

/// Typed readers for `--optimizer_args` values; errors name the optimizer and key and show the
/// value as Python would.
pub(super) struct ArgReader<'a> {
    pub optimizer: &'a str,
}

impl ArgReader<'_> {
    pub fn number(&self, key: &str, v: &ArgValue) -> std::result::Result<f64, String> {
        v.as_f64().ok_or_else(|| {
            format!("optimizer_args: {} `{key}` must be a number, got {}", self.optimizer, v.python_repr())
        })
    }

    pub fn flag(&self, key: &str, v: &ArgValue) -> std::result::Result<bool, String> {
        v.as_bool().ok_or_else(|| {
            format!("optimizer_args: {} `{key}` must be True or False, got {}", self.optimizer, v.python_repr())
        })
    }

    pub fn int(&self, key: &str, v: &ArgValue) -> std::result::Result<i64, String> {
        match v {
            ArgValue::Int(i) => Ok(*i),
            _ => Err(format!("optimizer_args: {} `{key}` must be an integer, got {}", self.optimizer, v.python_repr())),
        }
    }

    /// A number or None.
    pub fn optional(&self, key: &str, v: &ArgValue) -> std::result::Result<Option<f64>, String> {
        match v {
            ArgValue::None => Ok(None),
            _ => self.number(key, v).map(Some),
        }
    }

    pub fn betas(&self, v: &ArgValue) -> std::result::Result<(f64, f64), String> {
        v.as_seq().filter(|s| s.len() == 2).and_then(|s| Some((s[0].as_f64()?, s[1].as_f64()?))).ok_or_else(|| {
            format!("optimizer_args: {} `betas` must be two numbers like `betas=0.9,0.999`, got {v}", self.optimizer)
        })
    }

    /// A setting we only reproduce at one value (`wanted`, the library's default).
    pub fn only(&self, key: &str, v: &ArgValue, wanted: &ArgValue) -> std::result::Result<(), String> {
        let same = match (v, wanted) {
            (ArgValue::Bool(a), ArgValue::Bool(b)) => a == b,
            (ArgValue::None, ArgValue::None) => true,
            (a, b) => a.as_f64().is_some() && a.as_f64() == b.as_f64(),
        };
        if same {
            Ok(())
        } else {
            Err(format!("optimizer_args: {} `{key}={v}` is not supported (only the default, {wanted})", self.optimizer))
        }
    }
}

// ---------------------------------------------------------------------------------------- Prodigy

/// `prodigyopt.Prodigy` hyperparameters; the defaults are the library's (sd-scripts passes none of
/// its own, only `lr`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProdigyConfig {
    pub betas: (f64, f64),
    /// EMA coefficient of the distance estimate; `None` = √β2.
    pub beta3: Option<f64>,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW-style decay (True, the default) or L2 decay added to the gradient.
    pub decouple: bool,
    pub use_bias_correction: bool,
    pub safeguard_warmup: bool,
    pub d0: f64,
    pub d_coef: f64,
    pub growth_rate: f64,
    /// Statistics on every `slice_p`-th element only (1 = all).
    pub slice_p: usize,
}

impl Default for ProdigyConfig {
    fn default() -> Self {
        ProdigyConfig {
            betas: (0.9, 0.999),
            beta3: None,
            eps: 1e-8,
            weight_decay: 0.0,
            decouple: true,
            use_bias_correction: false,
            safeguard_warmup: false,
            d0: 1e-6,
            d_coef: 1.0,
            growth_rate: f64::INFINITY,
            slice_p: 1,
        }
    }
}

impl ProdigyConfig {
    /// The keyword arguments of `Prodigy.__init__` (all of them; `fsdp_in_use` only as False).
    pub const ACCEPTED_ARGS: &'static [&'static str] = &[
        "betas",
        "beta3",
        "eps",
        "weight_decay",
        "decouple",
        "use_bias_correction",
        "safeguard_warmup",
        "d0",
        "d_coef",
        "growth_rate",
        "fsdp_in_use",
        "slice_p",
    ];

    /// Reads optimizer_args (missing keys keep the library's defaults); the library's constructor
    /// checks apply, with its messages (values shown as the user wrote them: `eps=0` → `0`).
    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        args.check_keys("Prodigy", Self::ACCEPTED_ARGS)?;
        let r = ArgReader { optimizer: "Prodigy" };
        let mut cfg = ProdigyConfig::default();
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => cfg.betas = r.betas(v)?,
                "beta3" => cfg.beta3 = r.optional(key, v)?,
                "eps" => {
                    cfg.eps = r.number(key, v)?;
                    if !is_positive(cfg.eps) {
                        return Err(format!("optimizer_args: Invalid epsilon value: {v}"));
                    }
                }
                "weight_decay" => cfg.weight_decay = r.number(key, v)?,
                "decouple" => cfg.decouple = r.flag(key, v)?,
                "use_bias_correction" => cfg.use_bias_correction = r.flag(key, v)?,
                "safeguard_warmup" => cfg.safeguard_warmup = r.flag(key, v)?,
                "d0" => {
                    cfg.d0 = r.number(key, v)?;
                    if !is_positive(cfg.d0) {
                        return Err(format!("optimizer_args: Invalid d0 value: {v}"));
                    }
                }
                "d_coef" => cfg.d_coef = r.number(key, v)?,
                "growth_rate" => cfg.growth_rate = r.number(key, v)?,
                "fsdp_in_use" => r.only(key, v, &ArgValue::Bool(false))?,
                "slice_p" => {
                    let p = r.int(key, v)?;
                    if p < 1 {
                        return Err(format!("optimizer_args: Prodigy `slice_p` must be 1 or more, got {p}"));
                    }
                    cfg.slice_p = p as usize;
                }
                _ => {}
            }
        }
        cfg.validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    /// The library's constructor checks (same wording), plus `slice_p ≥ 1`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !is_positive(self.d0) {
            return Err(format!("Invalid d0 value: {}", python_float_repr(self.d0)));
        }
        if !is_positive(self.eps) {
            return Err(format!("Invalid epsilon value: {}", python_float_repr(self.eps)));
        }
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) {
            return Err(format!("Invalid beta parameter at index 0: {}", python_float_repr(b1)));
        }
        if !(0.0..1.0).contains(&b2) {
            return Err(format!("Invalid beta parameter at index 1: {}", python_float_repr(b2)));
        }
        if self.slice_p < 1 {
            return Err("Prodigy slice_p must be 1 or more".into());
        }
        Ok(())
    }

    fn to_json(self) -> Value {
        json!({
            "betas": [exact(self.betas.0), exact(self.betas.1)],
            "beta3": self.beta3.map(exact),
            "eps": exact(self.eps),
            "weight_decay": exact(self.weight_decay),
            "decouple": self.decouple,
            "use_bias_correction": self.use_bias_correction,
            "safeguard_warmup": self.safeguard_warmup,
            "d0": exact(self.d0),
            "d_coef": exact(self.d_coef),
            "growth_rate": exact(self.growth_rate),
            "slice_p": self.slice_p,
        })
    }

    fn from_json(s: &Value) -> Result<Self> {
        let o = "Prodigy";
        let betas = s
            .get("betas")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((read_exact(a.first())?, read_exact(a.get(1))?)))
            .ok_or_else(|| msg("Prodigy state: `betas` must be two numbers"))?;
        let beta3 = match s.get("beta3") {
            None | Some(Value::Null) => None,
            v => Some(read_exact(v).ok_or_else(|| msg("Prodigy state: bad `beta3`"))?),
        };
        let cfg = ProdigyConfig {
            betas,
            beta3,
            eps: state_f64(s, o, "eps")?,
            weight_decay: state_f64(s, o, "weight_decay")?,
            decouple: state_bool(s, o, "decouple")?,
            use_bias_correction: state_bool(s, o, "use_bias_correction")?,
            safeguard_warmup: state_bool(s, o, "safeguard_warmup")?,
            d0: state_f64(s, o, "d0")?,
            d_coef: state_f64(s, o, "d_coef")?,
            growth_rate: state_f64(s, o, "growth_rate")?,
            slice_p: state_u64(s, o, "slice_p")? as usize,
        };
        cfg.validate().map_err(|e| msg(format!("Prodigy state: {e}")))?;
        Ok(cfg)
    }
}

/// sd-scripts' warnings when Prodigy is built (train_util.get_optimizer): a first-group lr ≤ 0.1
/// ("Prodigy wants lr around 1.0"; the lr scales Prodigy's own estimate) and several different
/// group lrs. The trainer prints them; empty when there is nothing to say.
pub fn prodigy_lr_warnings(groups: &[ParamGroup]) -> Vec<String> {
    let Some(first) = groups.first() else { return Vec::new() };
    let actual = python_float_repr(first.lr);
    let mut out = Vec::new();
    if first.lr <= 0.1 {
        out.push(format!(
            "learning rate is too low. If using D-Adaptation or Prodigy, set learning rate around 1.0 / \
             学習率が低すぎるようです。D-AdaptationまたはProdigyの使用時は1.0前後の値を指定してください: lr={actual}"
        ));
        out.push("recommend option: lr=1.0 / 推奨は1.0です".to_string());
    }
    let mut lrs: Vec<u64> = groups.iter().map(|g| g.lr.to_bits()).collect();
    lrs.sort_unstable();
    lrs.dedup();
    if lrs.len() > 1 {
        out.push(format!(
            "when multiple learning rates are specified with dadaptation (e.g. for Text Encoder and U-Net), only the \
             first one will take effect / D-AdaptationまたはProdigyで複数の学習率を指定した場合（Text EncoderとU-Netなど）、\
             最初の学習率のみが有効になります: lr={actual}"
        ));
    }
    out
}

/// `prodigyopt.Prodigy` 1.1.2: Adam whose step size `d·lr` is estimated on the fly. One `d` (with
/// `d_max`, the running numerator and the step count `k`) is shared by all param groups; every
/// group's lr must be the largest lr or 0 (the library's rule since 1.1), and the step uses the
/// largest. Per parameter: the first moment (β1 > 0), the second moment, the distance accumulator
/// `s` and the initial point `p0` (both over every `slice_p`-th element; `p0` is a scalar 0 for a
/// parameter that starts all-zero, like a LoRA `up`). A step where every gradient-carrying group
/// has lr 0 only creates missing state (the library returns before updating anything).
#[derive(Debug)]
pub struct Prodigy {
    groups: Vec<ParamGroup>,
    config: ProdigyConfig,
    slots: SlotTable,
    args: OptimizerArgs,
    d: f64,
    d_max: f64,
    d_numerator: f64,
    /// The last raw estimate (None before the first update, as in the library; only for logs).
    d_hat: Option<f64>,
    k: u64,
    /// The lrs of the last step (what `effective_lrs` multiplies by d).
    lrs: Vec<f64>,
}

impl Prodigy {
    /// `ss_optimizer`'s class path (`Prodigy.__module__` + name).
    pub const CLASS_PATH: &'static str = "prodigyopt.prodigy.Prodigy";

    /// Group names must be unique; base lrs must be > 0 (the library's "Invalid learning rate") and
    /// equal (prodigyopt ≥ 1.1 refuses different non-zero group lrs at the first step; this says so
    /// before training starts).
    pub fn new(groups: Vec<ParamGroup>, config: ProdigyConfig) -> Result<Self> {
        config.validate().map_err(msg)?;
        check_groups(&groups)?;
        check_positive_lrs(&groups)?;
        if let Some(g) = groups.iter().find(|g| g.lr != groups[0].lr) {
            return Err(msg(format!(
                "Setting different lr values in different parameter groups is only supported for values of 0 \
                 (prodigyopt 1.1): group `{}` has lr {}, group `{}` has {}; give every group the same lr (Prodigy \
                 adapts it; d_coef scales it)",
                groups[0].name,
                python_float_repr(groups[0].lr),
                g.name,
                python_float_repr(g.lr)
            )));
        }
        let slots = SlotTable::new(&groups);
        let lrs = groups.iter().map(|g| g.lr).collect();
        Ok(Prodigy {
            groups,
            config,
            slots,
            args: OptimizerArgs::default(),
            d: config.d0,
            d_max: config.d0,
            d_numerator: 0.0,
            d_hat: None,
            k: 0,
            lrs,
        })
    }

    /// Built from sd-scripts' `--optimizer_args`; unknown keys are errors naming the key.
    pub fn from_args(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let config = ProdigyConfig::from_args(args).map_err(msg)?;
        let mut opt = Prodigy::new(groups, config)?;
        opt.args = args.clone();
        Ok(opt)
    }

    pub fn config(&self) -> &ProdigyConfig {
        &self.config
    }

    /// The current step-size estimate `d`.
    pub fn d(&self) -> f64 {
        self.d
    }

    fn beta3(&self) -> f64 {
        self.config.beta3.unwrap_or_else(|| self.config.betas.1.sqrt())
    }
}

/// One parameter's working copy during a step.
struct Work {
    p: Tensor,
    g: Tensor,
    slot: ParamSlot,
}

impl Optimizer for Prodigy {
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        check_step_inputs(&self.groups, grads, lrs)?;
        check_grad_shapes("Prodigy", &self.groups, grads)?;
        let cfg = self.config;
        // Python's max over the groups, then its per-group rule (checked up front here; the library
        // raises midway through the step).
        let lr = lrs.iter().copied().fold(lrs[0], py_max);
        if let Some(gi) = (0..lrs.len()).find(|&gi| lrs[gi] != lr && lrs[gi] != 0.0) {
            return Err(msg(format!(
                "Prodigy: Setting different lr values in different parameter groups is only supported for values of \
                 0 (group `{}` has lr {}, the largest is {})",
                self.groups[gi].name,
                python_float_repr(lrs[gi]),
                python_float_repr(lr)
            )));
        }
        let (beta1, beta2) = cfg.betas;
        let beta3 = self.beta3();
        let (d, d0, k) = (self.d, cfg.d0, self.k);
        let bias_correction = if cfg.use_bias_correction {
            (1.0 - beta2.powf((k + 1) as f64)).powf(0.5) / (1.0 - beta1.powf((k + 1) as f64))
        } else {
            1.0
        };
        let dlr = d * lr * bias_correction;
        let mut d_numerator = self.d_numerator * beta3;
        let mut delta_numerator = 0.0f64;
        let mut d_denom = 0.0f64;

        // First pass: state creation, moments, distance statistics (with the old d).
        let mut work: Vec<Vec<Option<Work>>> = Vec::with_capacity(self.groups.len());
        for (gi, group) in self.groups.iter().enumerate() {
            let mut row = Vec::with_capacity(group.vars.len());
            for (i, var) in group.vars.iter().enumerate() {
                let Some(grad) = &grads[gi][i] else {
                    row.push(None);
                    continue;
                };
                let dev = var.device();
                let p = var.as_detached_tensor().to_dtype(DType::F32)?;
                let mut g = grad.detach().to_device(dev)?.to_dtype(DType::F32)?;
                if cfg.weight_decay != 0.0 && !cfg.decouple {
                    g = add_scaled(&g, &p, cfg.weight_decay)?;
                }
                let mut slot = match self.slots.get(gi, i) {
                    Some(s) => ParamSlot { step: s.step + 1, tensors: s.tensors.clone() },
                    None => new_slot(&p, cfg, dev)?,
                };
                if lrs[gi] > 0.0 {
                    let sliced_grad = strided(&g, cfg.slice_p)?;
                    let p0 = slot.tensor("p0")?;
                    let x0_minus = p0.broadcast_sub(&strided(&p, cfg.slice_p)?)?;
                    delta_numerator += (d / d0) * dlr * dot_f32(&sliced_grad, &x0_minus)? as f64;
                    if beta1 > 0.0 {
                        let m = slot.tensor("exp_avg")?.affine(beta1, 0.0)?;
                        let m = add_scaled(&m, &g, d * (1.0 - beta1))?;
                        slot.tensors.insert("exp_avg".into(), m);
                    }
                    let v = slot.tensor("exp_avg_sq")?.affine(beta2, 0.0)?;
                    let v = add_product(&v, &g.affine(d * d * (1.0 - beta2), 0.0)?, &g)?;
                    slot.tensors.insert("exp_avg_sq".into(), v);
                    let alpha = if cfg.safeguard_warmup { (d / d0) * d } else { (d / d0) * dlr };
                    let s = add_scaled(&slot.tensor("s")?.affine(beta3, 0.0)?, &sliced_grad, alpha)?;
                    d_denom += sum_f32(&s.abs()?)? as f64;
                    slot.tensors.insert("s".into(), s);
                }
                row.push(Some(Work { p, g, slot }));
            }
            work.push(row);
        }

        if d_denom == 0.0 {
            // The library returns here: new state is kept, nothing else changes.
            for (gi, row) in work.into_iter().enumerate() {
                for (i, w) in row.into_iter().enumerate() {
                    if let Some(w) = w {
                        self.slots.set(gi, i, w.slot);
                    }
                }
            }
            self.lrs = lrs.to_vec();
            return Ok(());
        }

        let mut d_new = d;
        let mut d_max = self.d_max;
        let mut d_hat = None;
        let global_numerator = d_numerator + delta_numerator;
        if lr > 0.0 {
            let hat = cfg.d_coef * global_numerator / d_denom;
            if d_new == d0 {
                d_new = py_max(d_new, hat);
            }
            d_max = py_max(d_max, hat);
            d_hat = Some(hat);
            d_new = py_min(d_max, d_new * cfg.growth_rate);
        }
        d_numerator = global_numerator;

        // Second pass: the parameter update, with the new d and the step's dlr.
        let mut updates = Vec::new();
        for (gi, row) in work.into_iter().enumerate() {
            for (i, w) in row.into_iter().enumerate() {
                let Some(Work { p, g, slot }) = w else { continue };
                let denom = slot.tensor("exp_avg_sq")?.sqrt()?.affine(1.0, d_new * cfg.eps)?;
                let mut p = p;
                if cfg.weight_decay != 0.0 && cfg.decouple {
                    p = add_scaled(&p, &p, -cfg.weight_decay * dlr)?;
                }
                let p = if beta1 > 0.0 {
                    (&p + (slot.tensor("exp_avg")?.affine(-dlr, 0.0)? / &denom)?)?
                } else {
                    (&p + (g.affine(-dlr * d_new, 0.0)? / &denom)?)?
                };
                updates.push((gi, i, p, slot));
            }
        }
        for (gi, i, p, slot) in updates {
            let var = &self.groups[gi].vars[i];
            var.set(&p.to_dtype(var.dtype())?)?;
            self.slots.set(gi, i, slot);
        }
        self.d = d_new;
        self.d_max = d_max;
        self.d_hat = d_hat.or(Some(d));
        self.d_numerator = d_numerator;
        self.k += 1;
        self.lrs = lrs.to_vec();
        Ok(())
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.{s,p0,exp_avg_sq}` and `exp_avg` when β1 > 0 (f32; `s`/`p0` over every
    /// `slice_p`-th element, `p0` a 0-d zero for a parameter that started all-zero). Scalars:
    /// `{"optimizer": "Prodigy", config…, "d", "d_max", "d_numerator", "d_hat", "k", "lrs",
    /// "groups": [{"name", "lr", "steps": [steps with a gradient per parameter]}]}`, the floats as
    /// exact decimal strings.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let groups = self.slots.save(&self.groups, &mut tensors);
        let mut scalars = self.config.to_json();
        let extra = json!({
            "optimizer": "Prodigy",
            "d": exact(self.d),
            "d_max": exact(self.d_max),
            "d_numerator": exact(self.d_numerator),
            "d_hat": self.d_hat.map(exact),
            "k": self.k,
            "lrs": self.lrs.iter().map(|&x| exact(x)).collect::<Vec<_>>(),
            "groups": groups,
        });
        if let (Some(obj), Value::Object(extra)) = (scalars.as_object_mut(), extra) {
            obj.extend(extra);
        }
        Ok(OptimizerState { tensors, scalars })
    }

    /// The saved hyperparameters and d-estimate replace the current ones (resuming continues the
    /// saved run); group base lrs stay as constructed.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let o = "Prodigy";
        check_state_owner(state, o)?;
        let s = &state.scalars;
        let config = ProdigyConfig::from_json(s)?;
        let (d, d_max) = (state_f64(s, o, "d")?, state_f64(s, o, "d_max")?);
        let d_numerator = state_f64(s, o, "d_numerator")?;
        let d_hat = match s.get("d_hat") {
            None | Some(Value::Null) => None,
            v => Some(read_exact(v).ok_or_else(|| msg("Prodigy state: bad `d_hat`"))?),
        };
        let k = state_u64(s, o, "k")?;
        let groups = &self.groups;
        let slice = config.slice_p;
        let with_m = config.betas.0 > 0.0;
        let slots = SlotTable::load(
            groups,
            state,
            o,
            |name, t, g, i| {
                let var = &groups[g].vars[i];
                let sliced = [strided_len(var.elem_count(), slice)];
                let ok = match name {
                    "exp_avg" | "exp_avg_sq" => t.dims() == var.dims(),
                    "s" => t.dims() == sliced,
                    "p0" => t.dims() == sliced || t.dims().is_empty(),
                    _ => return Err(msg(format!("not a Prodigy state tensor (`{name}`)"))),
                };
                if !ok {
                    return Err(msg(format!("shape {:?} does not fit the parameter's {:?}", t.dims(), var.dims())));
                }
                t.to_device(var.device())?.to_dtype(DType::F32)
            },
            |slot, prefix, _, _| {
                let required: &[&str] =
                    if with_m { &["exp_avg", "exp_avg_sq", "p0", "s"] } else { &["exp_avg_sq", "p0", "s"] };
                if let Some(n) = required.iter().find(|n| !slot.tensors.contains_key(**n)) {
                    return Err(msg(format!("missing tensor `{prefix}{n}`")));
                }
                if let Some(extra) = slot.tensors.keys().find(|k| !required.contains(&k.as_str())) {
                    return Err(msg(format!("unexpected tensor `{prefix}{extra}`")));
                }
                Ok(())
            },
        )?;
        let lrs = state_lrs(s, o, self.groups.len())?;
        self.config = config;
        self.slots = slots;
        self.d = d;
        self.d_max = d_max;
        self.d_numerator = d_numerator;
        self.d_hat = d_hat;
        self.k = k;
        self.lrs = lrs;
        Ok(())
    }

    fn description(&self) -> String {
        describe_optimizer(Self::CLASS_PATH, &self.args)
    }

    /// `d · lr` per group (sd-scripts logs it as `lr/d*lr/<group>`), with the lrs of the last step.
    fn effective_lrs(&self) -> Option<Vec<f64>> {
        Some(self.lrs.iter().map(|lr| self.d * lr).collect())
    }
}

/// A parameter's state at its first gradient: zero moments and accumulator, `p0` = its current
/// (strided) values, or a 0-d zero when it is all zeros.
fn new_slot(p: &Tensor, cfg: ProdigyConfig, dev: &Device) -> Result<ParamSlot> {
    let sliced = strided(p, cfg.slice_p)?;
    let mut tensors = BTreeMap::new();
    tensors.insert("s".to_string(), sliced.zeros_like()?);
    let p0 = if any_nonzero(p)? { sliced.copy()? } else { Tensor::new(0f32, dev)? };
    tensors.insert("p0".to_string(), p0);
    if cfg.betas.0 > 0.0 {
        tensors.insert("exp_avg".to_string(), p.zeros_like()?);
    }
    tensors.insert("exp_avg_sq".to_string(), p.zeros_like()?);
    Ok(ParamSlot { step: 1, tensors })
}
