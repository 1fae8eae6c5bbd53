//! `prodigyplus.ProdigyPlusScheduleFree` (prodigy-plus-schedule-free 2.0.1), which sd-scripts users
//! select with `--optimizer_type prodigyplus.ProdigyPlusScheduleFree`.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor};
use serde_json::{json, Value};

use super::prodigy::{
    add_product, add_scaled, any_nonzero, dot_f32, exact, is_positive, py_max, py_min, read_exact, state_bool,
    state_f64, state_lrs, state_u64, strided, strided_len, sum_f32, ArgReader,
};
use super::schedule_free::{lerp, move_toward_z};
use super::*;

/// The library samples every 11th element for its distance statistics (`get_sliced_tensor`).
const SLICE_P: usize = 11;
/// Tensors with a dimension this large (and 2+ dims) get a factored second moment.
const MIN_DIM_SIZE_TO_FACTOR: usize = 32;
const NAME: &str = "ProdigyPlusScheduleFree";

/// `ProdigyPlusScheduleFree` hyperparameters; the defaults are the library's. The experimental
/// variants (SPEED, cautious, grams, ADOPT, OrthoGrad, FOCUS, Adam-atan2 via `eps=None`) and the
/// fused backward pass are not implemented and are refused unless given at their default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProdigyPlusConfig {
    pub betas: (f64, f64),
    /// `None` = √β2.
    pub beta3: Option<f64>,
    pub weight_decay: f64,
    /// Decay multiplied by the adaptive lr (default) or applied as is.
    pub weight_decay_by_lr: bool,
    pub d0: f64,
    pub d_coef: f64,
    /// Growth of d limited to 2^¼ per step.
    pub d_limiter: bool,
    /// Freeze d after this many steps (0 = never) and drop the distance statistics.
    pub prodigy_steps: f64,
    /// Refined schedule-free averaging strength (0 = the original rule).
    pub schedulefree_c: f64,
    pub eps: f64,
    /// One d per param group (default) or one for all groups (off by itself for one group).
    pub split_groups: bool,
    /// lr = harmonic mean of the groups' d × group lr.
    pub split_groups_mean: bool,
    /// Adafactor-style row/column second moment for tensors with a dimension ≥ 32.
    pub factored: bool,
    /// f32 factored statistics even for low-precision gradients; no effect with f32 gradients
    /// (lorakit's, always: gradients are taken as f32).
    pub factored_fp32: bool,
    /// RAdam-style rectified warmup.
    pub use_bias_correction: bool,
    /// Updates scaled down by their RMS (see [`ProdigyPlusScheduleFree`] for the exact factor).
    pub use_stableadamw: bool,
    /// Schedule-free averaging (default) or Prodigy with a first moment.
    pub use_schedulefree: bool,
    /// Stochastic rounding of bf16 parameters; no effect on f32 parameters.
    pub stochastic_rounding: bool,
}

impl Default for ProdigyPlusConfig {
    fn default() -> Self {
        ProdigyPlusConfig {
            betas: (0.9, 0.99),
            beta3: None,
            weight_decay: 0.0,
            weight_decay_by_lr: true,
            d0: 1e-6,
            d_coef: 1.0,
            d_limiter: true,
            prodigy_steps: 0.0,
            schedulefree_c: 0.0,
            eps: 1e-8,
            split_groups: true,
            split_groups_mean: false,
            factored: true,
            factored_fp32: true,
            use_bias_correction: false,
            use_stableadamw: true,
            use_schedulefree: true,
            stochastic_rounding: true,
        }
    }
}

impl ProdigyPlusConfig {
    /// Every keyword argument of the library's constructor.
    pub const ACCEPTED_ARGS: &'static [&'static str] = &[
        "betas",
        "beta3",
        "weight_decay",
        "weight_decay_by_lr",
        "d0",
        "d_coef",
        "d_limiter",
        "prodigy_steps",
        "schedulefree_c",
        "eps",
        "split_groups",
        "split_groups_mean",
        "factored",
        "factored_fp32",
        "use_bias_correction",
        "use_stableadamw",
        "use_schedulefree",
        "use_speed",
        "stochastic_rounding",
        "fused_back_pass",
        "use_cautious",
        "use_grams",
        "use_adopt",
        "use_orthograd",
        "use_focus",
    ];

    /// Reads optimizer_args (missing keys keep the library's defaults) with the library's
    /// constructor checks and messages; options this implementation lacks are errors naming them.
    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        args.check_keys(NAME, Self::ACCEPTED_ARGS)?;
        let r = ArgReader { optimizer: NAME };
        let mut c = ProdigyPlusConfig::default();
        let bad = |what: &str, v: &ArgValue| Err(format!("optimizer_args: {what}: {v}"));
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => {
                    if let Some([_, ArgValue::None]) = v.as_seq() {
                        return Err(format!("optimizer_args: {NAME} `betas` with beta2=None is not supported"));
                    }
                    c.betas = r.betas(v)?;
                    // shown as written (`betas=(0.9,1)` → `1`)
                    let written = v.as_seq().unwrap_or_default();
                    for (i, b) in [c.betas.0, c.betas.1].into_iter().enumerate() {
                        if !(0.0..1.0).contains(&b) {
                            let shown = written.get(i).map_or_else(|| python_float_repr(b), |w| w.to_string());
                            return Err(format!("optimizer_args: Invalid beta parameter at index {i}: {shown}"));
                        }
                    }
                }
                "beta3" => {
                    c.beta3 = r.optional(key, v)?;
                    if c.beta3.is_some_and(|b| !(0.0..1.0).contains(&b)) {
                        return bad("Invalid beta3 parameter", v);
                    }
                }
                "weight_decay" => {
                    c.weight_decay = r.number(key, v)?;
                    if c.weight_decay < 0.0 {
                        return bad("Invalid weight decay", v);
                    }
                }
                "d0" => {
                    c.d0 = r.number(key, v)?;
                    if !is_positive(c.d0) {
                        return bad("Invalid d0 value", v);
                    }
                }
                "d_coef" => c.d_coef = r.number(key, v)?,
                "prodigy_steps" => {
                    c.prodigy_steps = r.number(key, v)?;
                    if c.prodigy_steps < 0.0 {
                        return bad("Invalid Prodigy steps", v);
                    }
                }
                "schedulefree_c" => {
                    c.schedulefree_c = r.number(key, v)?;
                    if c.schedulefree_c < 0.0 {
                        return bad("Invalid Schedule-Free averaging weight", v);
                    }
                }
                "eps" => {
                    if *v == ArgValue::None {
                        return Err(format!(
                            "optimizer_args: {NAME} `eps=None` (Adam-atan2) is not supported; give a positive eps"
                        ));
                    }
                    c.eps = r.number(key, v)?;
                    if !is_positive(c.eps) {
                        return bad("Invalid epsilon value", v);
                    }
                }
                "weight_decay_by_lr" => c.weight_decay_by_lr = r.flag(key, v)?,
                "d_limiter" => c.d_limiter = r.flag(key, v)?,
                "split_groups" => c.split_groups = r.flag(key, v)?,
                "split_groups_mean" => c.split_groups_mean = r.flag(key, v)?,
                "factored" => c.factored = r.flag(key, v)?,
                "factored_fp32" => c.factored_fp32 = r.flag(key, v)?,
                "use_bias_correction" => c.use_bias_correction = r.flag(key, v)?,
                "use_stableadamw" => c.use_stableadamw = r.flag(key, v)?,
                "use_schedulefree" => c.use_schedulefree = r.flag(key, v)?,
                "stochastic_rounding" => c.stochastic_rounding = r.flag(key, v)?,
                // Not implemented: accepted only at the library's default.
                _ => r.only(key, v, &ArgValue::Bool(false))?,
            }
        }
        c.validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(c)
    }

    /// The library's constructor checks (same wording), plus β1 ≠ 0 in schedule-free mode (its
    /// `eval()` divides by β1).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let f = python_float_repr;
        if !is_positive(self.d0) {
            return Err(format!("Invalid d0 value: {}", f(self.d0)));
        }
        if self.weight_decay < 0.0 {
            return Err(format!("Invalid weight decay: {}", f(self.weight_decay)));
        }
        if self.schedulefree_c < 0.0 {
            return Err(format!("Invalid Schedule-Free averaging weight: {}", f(self.schedulefree_c)));
        }
        if self.prodigy_steps < 0.0 {
            return Err(format!("Invalid Prodigy steps: {}", f(self.prodigy_steps)));
        }
        if !is_positive(self.eps) {
            return Err(format!("Invalid epsilon value: {}", f(self.eps)));
        }
        if !(0.0..1.0).contains(&self.betas.0) {
            return Err(format!("Invalid beta parameter at index 0: {}", f(self.betas.0)));
        }
        if !(0.0..1.0).contains(&self.betas.1) {
            return Err(format!("Invalid beta parameter at index 1: {}", f(self.betas.1)));
        }
        if let Some(b) = self.beta3.filter(|b| !(0.0..1.0).contains(b)) {
            return Err(format!("Invalid beta3 parameter: {}", f(b)));
        }
        if self.use_schedulefree && self.betas.0 == 0.0 {
            return Err(format!("{NAME} `betas`: beta1 must not be 0 with use_schedulefree (eval() divides by it)"));
        }
        Ok(())
    }

    fn beta3(&self) -> f64 {
        self.beta3.unwrap_or_else(|| self.betas.1.powf(0.5))
    }

    fn to_json(self) -> Value {
        json!({
            "betas": [exact(self.betas.0), exact(self.betas.1)],
            "beta3": self.beta3.map(exact),
            "weight_decay": exact(self.weight_decay),
            "weight_decay_by_lr": self.weight_decay_by_lr,
            "d0": exact(self.d0),
            "d_coef": exact(self.d_coef),
            "d_limiter": self.d_limiter,
            "prodigy_steps": exact(self.prodigy_steps),
            "schedulefree_c": exact(self.schedulefree_c),
            "eps": exact(self.eps),
            "split_groups": self.split_groups,
            "split_groups_mean": self.split_groups_mean,
            "factored": self.factored,
            "factored_fp32": self.factored_fp32,
            "use_bias_correction": self.use_bias_correction,
            "use_stableadamw": self.use_stableadamw,
            "use_schedulefree": self.use_schedulefree,
            "stochastic_rounding": self.stochastic_rounding,
        })
    }

    fn from_json(s: &Value) -> Result<Self> {
        let o = NAME;
        let betas = s
            .get("betas")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((read_exact(a.first())?, read_exact(a.get(1))?)))
            .ok_or_else(|| msg(format!("{o} state: `betas` must be two numbers")))?;
        let beta3 = match s.get("beta3") {
            None | Some(Value::Null) => None,
            v => Some(read_exact(v).ok_or_else(|| msg(format!("{o} state: bad `beta3`")))?),
        };
        let flag = |k: &str| state_bool(s, o, k);
        let num = |k: &str| state_f64(s, o, k);
        let c = ProdigyPlusConfig {
            betas,
            beta3,
            weight_decay: num("weight_decay")?,
            weight_decay_by_lr: flag("weight_decay_by_lr")?,
            d0: num("d0")?,
            d_coef: num("d_coef")?,
            d_limiter: flag("d_limiter")?,
            prodigy_steps: num("prodigy_steps")?,
            schedulefree_c: num("schedulefree_c")?,
            eps: num("eps")?,
            split_groups: flag("split_groups")?,
            split_groups_mean: flag("split_groups_mean")?,
            factored: flag("factored")?,
            factored_fp32: flag("factored_fp32")?,
            use_bias_correction: flag("use_bias_correction")?,
            use_stableadamw: flag("use_stableadamw")?,
            use_schedulefree: flag("use_schedulefree")?,
            stochastic_rounding: flag("stochastic_rounding")?,
        };
        c.validate().map_err(|e| msg(format!("{o} state: {e}")))?;
        Ok(c)
    }
}

/// The library's per-group scalars (in non-split mode every group holds the first group's d values).
#[derive(Debug, Clone, Copy, PartialEq)]
struct GroupScalars {
    d: f64,
    d_prev: f64,
    d_numerator: f64,
    d_denom: f64,
    prev_d_numerator: f64,
    max_d_numerator: f64,
    shared_d: Option<f64>,
    /// Starts at 1, as in the library.
    k: u64,
    weight_sum: f64,
    /// lr × the schedule-free interpolation step (logging only).
    effective_lr: f64,
}

impl GroupScalars {
    fn to_json(self) -> Value {
        json!({
            "d": exact(self.d),
            "d_prev": exact(self.d_prev),
            "d_numerator": exact(self.d_numerator),
            "d_denom": exact(self.d_denom),
            "prev_d_numerator": exact(self.prev_d_numerator),
            "max_d_numerator": exact(self.max_d_numerator),
            "shared_d": self.shared_d.map(exact),
            "k": self.k,
            "weight_sum": exact(self.weight_sum),
            "effective_lr": exact(self.effective_lr),
        })
    }

    fn from_json(g: &Value) -> Result<Self> {
        let num = |k: &str| state_f64(g, NAME, k);
        Ok(GroupScalars {
            d: num("d")?,
            d_prev: num("d_prev")?,
            d_numerator: num("d_numerator")?,
            d_denom: num("d_denom")?,
            prev_d_numerator: num("prev_d_numerator")?,
            max_d_numerator: num("max_d_numerator")?,
            shared_d: match g.get("shared_d") {
                None | Some(Value::Null) => None,
                v => Some(read_exact(v).ok_or_else(|| msg(format!("{NAME} state: bad `shared_d`")))?),
            },
            k: state_u64(g, NAME, "k")?,
            weight_sum: num("weight_sum")?,
            effective_lr: num("effective_lr")?,
        })
    }
}

/// The library's `factored_dims`: the two largest dims (ties: the later index counts as larger) as
/// `(dc, dr)`, when factoring is on, the tensor has 2+ dims and one of them is ≥ 32.
fn factored_dims(shape: &[usize], factored: bool) -> Option<(usize, usize)> {
    if !factored || shape.len() < 2 || shape.iter().all(|&d| d < MIN_DIM_SIZE_TO_FACTOR) {
        return None;
    }
    let mut sorted: Vec<(usize, usize)> = shape.iter().enumerate().map(|(i, &x)| (x, i)).collect();
    sorted.sort_unstable();
    Some((sorted[sorted.len() - 2].1, sorted[sorted.len() - 1].1))
}

/// Shapes of the row and column statistics (`dr` / `dc` set to 1).
fn factored_shapes(shape: &[usize], dc: usize, dr: usize) -> (Vec<usize>, Vec<usize>) {
    let mut row = shape.to_vec();
    row[dr] = 1;
    let mut col = shape.to_vec();
    col[dc] = 1;
    (row, col)
}

/// `grad.norm(dim, keepdim=True).square_().mul_(1 / n)`: the f32 norm (sum of squares rounded to
/// f32, then its f32 square root), squared and scaled in f32.
fn mean_square_along(g: &Tensor, dim: usize) -> Result<Tensor> {
    let n = g.dim(dim)?;
    let ss = if g.device().is_metal() {
        g.sqr()?.sum_keepdim(dim)?
    } else {
        g.to_dtype(DType::F64)?.sqr()?.sum_keepdim(dim)?.to_dtype(DType::F32)?
    };
    ss.sqrt()?.sqr()?.affine(1.0 / n as f64, 0.0)
}

/// `t.mean(dim, keepdim=True)` in f32: the sum rounded to f32, divided by the count in f32.
fn mean_along(t: &Tensor, dim: usize) -> Result<Tensor> {
    let n = t.dim(dim)?;
    let sum = if t.device().is_metal() {
        t.sum_keepdim(dim)?
    } else {
        t.to_dtype(DType::F64)?.sum_keepdim(dim)?.to_dtype(DType::F32)?
    };
    sum.broadcast_div(&Tensor::new(n as f32, t.device())?)
}

/// Python's `statistics.harmonic_mean` of positive floats: `n / Σ 1/xᵢ` with the sum exact and the
/// quotient correctly rounded; done here in double-double arithmetic (the same result except in
/// ties too rare to matter).
fn harmonic_mean(xs: &[f64]) -> f64 {
    if xs.len() == 1 {
        return xs[0];
    }
    // Σ 1/xᵢ as hi + lo (Knuth's two-sum keeps the rounding error of each addition).
    let (mut hi, mut lo) = (0.0f64, 0.0f64);
    for &x in xs {
        let r = 1.0 / x;
        let s = hi + r;
        let bp = s - hi;
        lo += (hi - (s - bp)) + (r - bp);
        hi = s;
    }
    let n = xs.len() as f64;
    let q = n / (hi + lo);
    // One Newton correction of the quotient against the double-double divisor.
    let residual = (-q).mul_add(hi, n) - q * lo;
    q + residual / (hi + lo)
}

/// `ProdigyPlusScheduleFree` 2.0.1 at its defaults and the options listed in
/// [`ProdigyPlusConfig`]: Prodigy's step-size estimate (per group by default; `d` grows at most
/// 2^¼ per step with the limiter) driving schedule-free AdamW without a first moment.
///
/// Per parameter: `z` (schedule-free) or the first moment (`use_schedulefree=False`), the second
/// moment (factored into row/column statistics for tensors with a dimension ≥ 32, with the
/// library's axis choice), and bf16 `p0`/`s` over every 11th element for the distance estimate
/// (`p0` a 0-d zero for an all-zero parameter; both dropped once `prodigy_steps` is reached). With
/// StableAdamW on (default) the update is multiplied by `1/√max(1, rms(update))` — the library's
/// `rms_clip_` takes the square root, not the RMS itself. Parameters other than f32 are updated
/// through f32 (bf16 stochastic rounding is not reproduced). Like the library it starts in train
/// mode and refuses to step in eval mode.
#[derive(Debug)]
pub struct ProdigyPlusScheduleFree {
    groups: Vec<ParamGroup>,
    config: ProdigyPlusConfig,
    /// `split_groups` as in effect (off for a single group).
    split: bool,
    slots: SlotTable,
    args: OptimizerArgs,
    scalars: Vec<GroupScalars>,
    train_mode: bool,
    lrs: Vec<f64>,
}

impl ProdigyPlusScheduleFree {
    pub const CLASS_PATH: &'static str = "prodigyplus.prodigy_plus_schedulefree.ProdigyPlusScheduleFree";

    /// Group names must be unique and base lrs > 0 (the library's "Invalid learning rate").
    pub fn new(groups: Vec<ParamGroup>, config: ProdigyPlusConfig) -> Result<Self> {
        config.validate().map_err(msg)?;
        check_groups(&groups)?;
        check_positive_lrs(&groups)?;
        for g in &groups {
            if g.vars.is_empty() {
                return Err(msg(format!("{NAME}: param group `{}` has no parameters", g.name)));
            }
        }
        let split = config.split_groups && groups.len() > 1;
        let scalars = groups
            .iter()
            .map(|g| GroupScalars {
                d: config.d0,
                d_prev: config.d0,
                d_numerator: 0.0,
                d_denom: 0.0,
                prev_d_numerator: 0.0,
                max_d_numerator: 0.0,
                shared_d: None,
                k: 1,
                weight_sum: 0.0,
                effective_lr: g.lr,
            })
            .collect();
        let slots = SlotTable::new(&groups);
        let lrs = groups.iter().map(|g| g.lr).collect();
        Ok(ProdigyPlusScheduleFree {
            groups,
            config,
            split,
            slots,
            args: OptimizerArgs::default(),
            scalars,
            train_mode: true,
            lrs,
        })
    }

    /// Built from sd-scripts' `--optimizer_args`; unknown keys and unimplemented options are
    /// errors naming the key.
    pub fn from_args(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let config = ProdigyPlusConfig::from_args(args).map_err(msg)?;
        let mut opt = ProdigyPlusScheduleFree::new(groups, config)?;
        opt.args = args.clone();
        Ok(opt)
    }

    pub fn config(&self) -> &ProdigyPlusConfig {
        &self.config
    }

    /// Each group's current d.
    pub fn d(&self) -> Vec<f64> {
        self.scalars.iter().map(|s| s.d).collect()
    }

    fn frozen(&self, k: u64) -> bool {
        self.config.prodigy_steps > 0.0 && k as f64 >= self.config.prodigy_steps
    }

    /// New state for a parameter at its first gradient (the library's `initialise_state`).
    fn new_slot(&self, p: &Tensor) -> Result<ParamSlot> {
        let c = &self.config;
        let mut t = BTreeMap::new();
        match factored_dims(p.dims(), c.factored) {
            Some((dc, dr)) => {
                let (row, col) = factored_shapes(p.dims(), dc, dr);
                t.insert("exp_avg_sq_row".to_string(), Tensor::zeros(row, DType::F32, p.device())?);
                t.insert("exp_avg_sq_col".to_string(), Tensor::zeros(col, DType::F32, p.device())?);
            }
            None => {
                t.insert("exp_avg_sq".to_string(), p.zeros_like()?);
            }
        }
        let sliced = strided(p, SLICE_P)?;
        let p0 = if any_nonzero(p)? {
            sliced.to_dtype(DType::BF16)?
        } else {
            Tensor::new(0f32, p.device())?.to_dtype(DType::BF16)?
        };
        t.insert("p0".to_string(), p0);
        t.insert("s".to_string(), sliced.zeros_like()?.to_dtype(DType::BF16)?);
        if c.use_schedulefree {
            t.insert("z".to_string(), p.copy()?);
        } else {
            t.insert("exp_avg".to_string(), p.zeros_like()?);
        }
        Ok(ParamSlot { step: 0, tensors: t })
    }

    /// `update_second_moment` + `get_denom`: the new second moment (in `slot`) and the
    /// denominator `√v` (factored: `√(row / mean(row) · col)` with the library's reduction axis).
    fn second_moment(&self, slot: &mut ParamSlot, g: &Tensor, beta2: f64, d: f64) -> Result<Tensor> {
        let alpha = (1.0 - beta2) * d.powf(2.0);
        match factored_dims(g.dims(), self.config.factored) {
            Some((dc, dr)) => {
                let row = slot.tensor("exp_avg_sq_row")?.affine(beta2, 0.0)?;
                let row = add_scaled(&row, &mean_square_along(g, dr)?, alpha)?;
                let col = slot.tensor("exp_avg_sq_col")?.affine(beta2, 0.0)?;
                let col = add_scaled(&col, &mean_square_along(g, dc)?, alpha)?;
                let reduce_dc = if dc > dr { dc - 1 } else { dc };
                let row_col_mean = mean_along(&row, reduce_dc)?.affine(1.0, 1e-30)?;
                let denom = row.broadcast_div(&row_col_mean)?.broadcast_mul(&col)?.sqrt()?;
                slot.tensors.insert("exp_avg_sq_row".into(), row);
                slot.tensors.insert("exp_avg_sq_col".into(), col);
                Ok(denom)
            }
            None => {
                let v = slot.tensor("exp_avg_sq")?.affine(beta2, 0.0)?;
                let v = add_product(&v, &g.affine(alpha, 0.0)?, g)?;
                let denom = v.sqrt()?;
                slot.tensors.insert("exp_avg_sq".into(), v);
                Ok(denom)
            }
        }
    }

    /// `rms_clip_`: `u · rsqrt(max(‖u‖ / √n, 1))`, in f32 as torch computes it.
    fn rms_clip(u: &Tensor) -> Result<Tensor> {
        let n = u.elem_count() as f64;
        let norm = (sum_f32(&u.to_dtype(DType::F64)?.sqr()?)? as f64).sqrt() as f32;
        let rms = norm / n.powf(0.5) as f32;
        let clamped = if rms < 1.0 { 1.0f32 } else { rms };
        let factor = 1.0f32 / clamped.sqrt();
        u.affine(factor as f64, 0.0)
    }

    /// `update_prodigy`: folds this parameter into its group's running numerator/denominator
    /// (`data` is z in schedule-free mode, the parameter otherwise, before the update).
    fn update_prodigy(
        &self,
        slot: &mut ParamSlot,
        sc: &GroupScalars,
        grad: &Tensor,
        data: &Tensor,
        acc: &mut (f32, f32),
    ) -> Result<()> {
        if self.frozen(sc.k) {
            slot.tensors.remove("s");
            slot.tensors.remove("p0");
            return Ok(());
        }
        let d_update = sc.d.powf(2.0) / self.config.d0.powf(0.5);
        let sliced_grad = strided(grad, SLICE_P)?;
        let sliced_data = strided(data, SLICE_P)?;
        let x0_minus = slot.tensor("p0")?.to_dtype(DType::F32)?.broadcast_sub(&sliced_data)?;
        let x0_dot = dot_f32(&sliced_grad, &x0_minus)?;
        // s (bf16) ← bf16(bf16(s·β3) + d_update·g), the add computed in f32
        let s = slot.tensor("s")?.to_dtype(DType::F32)?.affine(self.config.beta3(), 0.0)?.to_dtype(DType::BF16)?;
        let s = add_scaled(&s.to_dtype(DType::F32)?, &sliced_grad, d_update)?.to_dtype(DType::BF16)?;
        // s.abs().sum() is a bf16 scalar
        let s_sum = Tensor::new(sum_f32(&s.to_dtype(DType::F32)?.abs()?)?, grad.device())?.to_dtype(DType::BF16)?;
        let s_sum = s_sum.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        slot.tensors.insert("s".into(), s);
        acc.1 += s_sum;
        // running_d_numerator.add_(x0_dot, alpha=d_update): one fused rounding
        acc.0 = ((acc.0 as f64) + (d_update as f32 as f64) * (x0_dot as f64)) as f32;
        Ok(())
    }

    /// `update_d_stats_and_reset` + `calculate_d` for one group's statistics.
    fn update_d(&self, sc: &mut GroupScalars, acc: (f32, f32)) {
        if self.frozen(sc.k) {
            return;
        }
        let c = &self.config;
        let (num_item, denom_item) = (acc.0 as f64, acc.1 as f64);
        let mut d_numerator = sc.d_numerator * c.beta3();
        if sc.d > c.d0 || num_item > 0.0 {
            d_numerator += num_item;
        }
        sc.prev_d_numerator = sc.d_numerator;
        sc.max_d_numerator = py_max(d_numerator, sc.max_d_numerator);
        sc.d_numerator = d_numerator;
        sc.d_denom = denom_item;

        let mut d = sc.d;
        if sc.d_denom > 0.0 {
            let mut d_hat = sc.d_numerator / sc.d_denom;
            if c.d_limiter {
                d_hat = py_min(d * 2f64.powf(0.25), d_hat);
            }
            d = py_max(d, d_hat * c.d_coef);
        }
        sc.d_prev = sc.d;
        sc.d = d;
    }
}

/// The library's `get_bias_correction`: (rectified dlr, adjusted β2, ρ_t).
fn bias_correction(dlr: f64, beta2: f64, k: u64) -> (f64, f64, f64) {
    let k = k as f64;
    let beta2_t = beta2.powf(k);
    let bias_correction2 = 1.0 - beta2_t;
    let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    let rho_t = rho_inf - 2.0 * k * beta2_t / bias_correction2;
    let rect = if rho_t > 4.0 {
        ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).powf(0.5)
    } else {
        0.0
    };
    (dlr * rect, 1.0 - (1.0 - beta2) / (1.0 - beta2_t), rho_t)
}

impl Optimizer for ProdigyPlusScheduleFree {
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        check_step_inputs(&self.groups, grads, lrs)?;
        check_grad_shapes(NAME, &self.groups, grads)?;
        let c = self.config;
        if c.use_schedulefree && !self.train_mode {
            return Err(msg(format!("{NAME}: Not in train mode! (call set_train_mode(true) before stepping)")));
        }
        let (beta1, beta2_base) = c.betas;
        let mut scalars = self.scalars.clone();
        // running (numerator, denominator) per statistics group: each group, or all in the first
        let mut acc = vec![(0f32, 0f32); self.groups.len()];
        let mut running_weight_sum: Vec<Option<f64>> = vec![None; self.groups.len()];
        let mut updates = Vec::new();
        for (gi, group) in self.groups.iter().enumerate() {
            let sc = scalars[gi];
            let stats = if self.split { gi } else { 0 };
            for (i, var) in group.vars.iter().enumerate() {
                let Some(grad) = &grads[gi][i] else { continue };
                let dev = var.device();
                let p = var.as_detached_tensor().to_dtype(DType::F32)?;
                let g = grad.detach().to_device(dev)?.to_dtype(DType::F32)?;
                let mut slot = match self.slots.get(gi, i) {
                    Some(s) => s.clone(),
                    None => self.new_slot(&p)?,
                };
                slot.step += 1;
                let shared = if self.split && c.split_groups_mean { sc.shared_d } else { None };
                let mut dlr = shared.unwrap_or(sc.d) * lrs[gi];
                let mut beta2 = beta2_base;
                let mut rho_t = f64::INFINITY;
                if c.use_bias_correction {
                    (dlr, beta2, rho_t) = bias_correction(dlr, beta2, sc.k);
                }
                let decay = c.weight_decay;
                if c.use_schedulefree {
                    let y = p;
                    let z = slot.tensor("z")?.clone();
                    let denom = self.second_moment(&mut slot, &g, beta2, sc.d)?;
                    let mut update = if c.use_bias_correction && rho_t <= 4.0 {
                        g.clone()
                    } else {
                        (g.affine(sc.d, 0.0)? / denom.affine(1.0, sc.d * c.eps)?)?
                    };
                    if c.use_stableadamw {
                        update = Self::rms_clip(&update)?;
                    }
                    self.update_prodigy(&mut slot, &sc, &g, &z, &mut acc[stats])?;

                    // update_params
                    let weight = dlr.powf(2.0);
                    let weight_sum = sc.weight_sum + weight;
                    running_weight_sum[gi] = Some(weight_sum);
                    let mut ckp1 = if weight_sum != 0.0 { weight / weight_sum } else { 0.0 };
                    if c.schedulefree_c > 0.0 {
                        ckp1 = py_min(1.0, ckp1 * (1.0 - beta1) * c.schedulefree_c);
                    }
                    let xy_step = 1.0 - beta1 * (1.0 - ckp1);
                    scalars[gi].effective_lr = lrs[gi] * xy_step;
                    let mut y_wd = None;
                    if decay != 0.0 {
                        if c.weight_decay_by_lr {
                            update = add_scaled(&update, &y, decay)?;
                        } else {
                            y_wd = Some(y.clone());
                        }
                    }
                    let y = lerp(&y, &z, ckp1)?;
                    let mut z = add_scaled(&z, &update, -dlr)?;
                    let mut y = add_scaled(&y, &update, -(dlr * xy_step))?;
                    if let Some(y_wd) = y_wd {
                        z = add_scaled(&z, &y_wd, -decay)?;
                        y = add_scaled(&y, &y_wd, -(decay * xy_step))?;
                    }
                    slot.tensors.insert("z".into(), z);
                    updates.push((gi, i, y, slot));
                } else {
                    let y = p;
                    let denom = self.second_moment(&mut slot, &g, beta2, sc.d)?;
                    let m = slot.tensor("exp_avg")?.affine(beta1, 0.0)?;
                    let m = add_scaled(&m, &g, (1.0 - beta1) * sc.d)?;
                    let mut update = (&m / denom.affine(1.0, sc.d * c.eps)?)?;
                    slot.tensors.insert("exp_avg".into(), m);
                    if c.use_stableadamw {
                        update = Self::rms_clip(&update)?;
                    }
                    self.update_prodigy(&mut slot, &sc, &g, &y, &mut acc[stats])?;
                    let mut y = y;
                    if decay != 0.0 {
                        let decay = if c.weight_decay_by_lr { decay * dlr } else { decay };
                        y = y.affine(1.0 - decay, 0.0)?;
                    }
                    let y = add_scaled(&y, &update, -dlr)?;
                    updates.push((gi, i, y, slot));
                }
            }
        }

        // on_end_step: the d estimate for the next step, then the other group values.
        if self.split {
            for (gi, sc) in scalars.iter_mut().enumerate() {
                self.update_d(sc, acc[gi]);
            }
            if c.split_groups_mean {
                let mean = harmonic_mean(&scalars.iter().map(|s| s.d).collect::<Vec<_>>());
                scalars.iter_mut().for_each(|s| s.shared_d = Some(mean));
            }
        } else {
            let mut first = scalars[0];
            self.update_d(&mut first, acc[0]);
            for sc in scalars.iter_mut() {
                sc.d = first.d;
                sc.d_prev = first.d_prev;
                sc.d_numerator = first.d_numerator;
                sc.d_denom = first.d_denom;
                sc.prev_d_numerator = first.prev_d_numerator;
                sc.max_d_numerator = first.max_d_numerator;
            }
        }
        for (gi, sc) in scalars.iter_mut().enumerate() {
            if !c.use_schedulefree {
                sc.effective_lr = lrs[gi];
            }
            if let Some(w) = running_weight_sum[gi] {
                sc.weight_sum = w;
            }
            sc.k += 1;
        }

        self.slots.commit(&self.groups, updates)?;
        self.scalars = scalars;
        self.lrs = lrs.to_vec();
        Ok(())
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.{z | exp_avg}`, `{group}.{i}.{exp_avg_sq | exp_avg_sq_row +
    /// exp_avg_sq_col}` (f32) and, until `prodigy_steps`, `{group}.{i}.{p0,s}` (bf16); scalars
    /// `{"optimizer": "ProdigyPlusScheduleFree", config…, "train_mode", "lrs", "group_scalars":
    /// [{"d", "d_prev", "d_numerator", "d_denom", "prev_d_numerator", "max_d_numerator",
    /// "shared_d", "k", "weight_sum", "effective_lr"}], "groups"}`, floats as exact decimal strings.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let groups = self.slots.save(&self.groups, &mut tensors);
        let mut scalars = self.config.to_json();
        let extra = json!({
            "optimizer": NAME,
            "train_mode": self.train_mode,
            "lrs": self.lrs.iter().map(|&x| exact(x)).collect::<Vec<_>>(),
            "group_scalars": self.scalars.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
            "groups": groups,
        });
        if let (Some(obj), Value::Object(extra)) = (scalars.as_object_mut(), extra) {
            obj.extend(extra);
        }
        Ok(OptimizerState { tensors, scalars })
    }

    /// Restores hyperparameters, group scalars, mode and per-parameter state; the parameters must
    /// be the ones the state was taken with (the x point if it was taken in eval mode).
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_state_owner(state, NAME)?;
        let s = &state.scalars;
        let config = ProdigyPlusConfig::from_json(s)?;
        let train_mode = state_bool(s, NAME, "train_mode")?;
        let groups = &self.groups;
        let slots = SlotTable::load(
            groups,
            state,
            NAME,
            |name, t, g, i| {
                let var = &groups[g].vars[i];
                let sliced = [strided_len(var.elem_count(), SLICE_P)];
                let factored =
                    factored_dims(var.dims(), config.factored).map(|(dc, dr)| factored_shapes(var.dims(), dc, dr));
                let (ok, dtype) = match name {
                    "z" | "exp_avg" | "exp_avg_sq" => (t.dims() == var.dims(), DType::F32),
                    "exp_avg_sq_row" => (factored.as_ref().is_some_and(|(r, _)| t.dims() == r.as_slice()), DType::F32),
                    "exp_avg_sq_col" => (factored.as_ref().is_some_and(|(_, c)| t.dims() == c.as_slice()), DType::F32),
                    "s" => (t.dims() == sliced, DType::BF16),
                    "p0" => (t.dims() == sliced || t.dims().is_empty(), DType::BF16),
                    _ => return Err(msg(format!("not a {NAME} state tensor (`{name}`)"))),
                };
                if !ok {
                    return Err(msg(format!("shape {:?} does not fit the parameter's {:?}", t.dims(), var.dims())));
                }
                t.to_device(var.device())?.to_dtype(dtype)
            },
            |slot, prefix, g, i| {
                let var = &groups[g].vars[i];
                let first = if config.use_schedulefree { "z" } else { "exp_avg" };
                let mut required = vec![first];
                if factored_dims(var.dims(), config.factored).is_some() {
                    required.extend(["exp_avg_sq_row", "exp_avg_sq_col"]);
                } else {
                    required.push("exp_avg_sq");
                }
                // p0 and s live until prodigy_steps, and go together
                if slot.tensors.contains_key("p0") || slot.tensors.contains_key("s") {
                    required.extend(["p0", "s"]);
                }
                if let Some(n) = required.iter().find(|n| !slot.tensors.contains_key(**n)) {
                    return Err(msg(format!("missing tensor `{prefix}{n}`")));
                }
                if let Some(extra) = slot.tensors.keys().find(|k| !required.contains(&k.as_str())) {
                    return Err(msg(format!("unexpected tensor `{prefix}{extra}`")));
                }
                Ok(())
            },
        )?;
        let lrs = state_lrs(s, NAME, self.groups.len())?;
        let saved = s
            .get("group_scalars")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == self.groups.len())
            .ok_or_else(|| msg(format!("{NAME} state: `group_scalars` must have one entry per param group")))?;
        let scalars = saved.iter().map(GroupScalars::from_json).collect::<Result<Vec<_>>>()?;
        self.split = config.split_groups && self.groups.len() > 1;
        self.config = config;
        self.slots = slots;
        self.scalars = scalars;
        self.train_mode = train_mode;
        self.lrs = lrs;
        Ok(())
    }

    fn description(&self) -> String {
        describe_optimizer(Self::CLASS_PATH, &self.args)
    }

    /// `d · lr` per group, as sd-scripts logs it (`lr/d*lr`, `lr/d*lr/group{i}`), with the lrs of
    /// the last step.
    fn effective_lrs(&self) -> Option<Vec<f64>> {
        Some(self.scalars.iter().zip(&self.lrs).map(|(s, lr)| s.d * lr).collect())
    }

    fn is_schedule_free(&self) -> bool {
        true
    }

    /// The library's `train()` / `eval()`: parameters with a `z` move to y (`lerp(z, 1 − β1)`) or
    /// to x (`lerp(z, 1 − 1/β1)`); nothing happens with `use_schedulefree=False`.
    fn set_train_mode(&mut self, train: bool) -> Result<()> {
        if !self.config.use_schedulefree || train == self.train_mode {
            return Ok(());
        }
        let beta1 = self.config.betas.0;
        let w = if train { 1.0 - beta1 } else { 1.0 - 1.0 / beta1 };
        for (gi, i, slot) in self.slots.iter() {
            move_toward_z(&self.groups[gi], i, slot.tensor("z")?, w)?;
        }
        self.train_mode = train;
        Ok(())
    }
}
