//! `transformers.optimization.Adafactor` as sd-scripts builds it (`--optimizer_type Adafactor`).
//!
//! Two parts: [`Adafactor`], the optimizer (transformers' update, operation by operation in f32), and
//! [`AdafactorSetup::resolve`], the rules sd-scripts' `get_optimizer` applies around it (spec §8.1):
//! `relative_step` defaults to True, `warmup_init` forces it, and in relative-step mode the learning
//! rates are ignored and the scheduler becomes `adafactor:<lr>`. The trainer applies the setup before
//! building the optimizer; the numbers are checked against
//! `tests/fixtures/reference/optim/adafactor.json` (from `tools/reference/optim_adafactor_fixture.py`).

use std::collections::BTreeMap;
use std::fmt;

use candle_core::{DType, Device, Result, Tensor, Var};
use serde_json::json;

use super::*;

/// transformers' Adafactor hyperparameters; the defaults are transformers'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdafactorConfig {
    /// (ε₁ added to g², ε₂ the floor of the parameter scale).
    pub eps: (f64, f64),
    /// The update is divided by `max(1, RMS(update) / clip_threshold)`.
    pub clip_threshold: f64,
    /// Second-moment decay `β₂ₜ = 1 − t^decay_rate`.
    pub decay_rate: f64,
    /// First moment (momentum) coefficient; `None`: no first moment is kept.
    pub beta1: Option<f64>,
    /// L2 weight decay, scaled by the step's lr.
    pub weight_decay: f64,
    /// Multiply the step size by the parameter's RMS (at least ε₂).
    pub scale_parameter: bool,
    /// Use `min(1e-2, 1/√t)` as the step size instead of the external learning rate.
    pub relative_step: bool,
    /// With relative_step: `min(1e-6·t, 1/√t)` instead.
    pub warmup_init: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        AdafactorConfig {
            eps: (1e-30, 1e-3),
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
            scale_parameter: true,
            relative_step: true,
            warmup_init: false,
        }
    }
}

impl AdafactorConfig {
    /// The optimizer_args keys transformers' Adafactor takes (besides `lr`, which sd-scripts passes).
    pub const ACCEPTED_ARGS: &'static [&'static str] = &[
        "eps",
        "clip_threshold",
        "decay_rate",
        "beta1",
        "weight_decay",
        "scale_parameter",
        "relative_step",
        "warmup_init",
    ];

    /// Reads optimizer_args as transformers' keyword arguments (missing keys keep transformers'
    /// defaults). sd-scripts' own rules are not applied here: see [`sd_scripts_adafactor_args`].
    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        args.check_keys("Adafactor", Self::ACCEPTED_ARGS)?;
        let mut cfg = AdafactorConfig::default();
        for (key, v) in args.entries() {
            match key.as_str() {
                "eps" => {
                    let pair = v.as_seq().filter(|s| s.len() == 2).and_then(|s| Some((s[0].as_f64()?, s[1].as_f64()?)));
                    cfg.eps = pair.ok_or_else(|| {
                        format!("optimizer_args: Adafactor `eps` must be two numbers like `eps=1e-30,1e-3`, got {v}")
                    })?;
                }
                "clip_threshold" => cfg.clip_threshold = number(key, v)?,
                "decay_rate" => cfg.decay_rate = number(key, v)?,
                "weight_decay" => cfg.weight_decay = number(key, v)?,
                "beta1" => {
                    cfg.beta1 = match v {
                        ArgValue::None => None,
                        _ => Some(number(key, v).map_err(|e| format!("{e} (or None)"))?),
                    }
                }
                "scale_parameter" => cfg.scale_parameter = flag(key, v)?,
                "relative_step" => cfg.relative_step = flag(key, v)?,
                "warmup_init" => cfg.warmup_init = flag(key, v)?,
                _ => {}
            }
        }
        cfg.validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    /// transformers' constructor check (same wording); it has no range checks on the numbers.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.warmup_init && !self.relative_step {
            return Err("`warmup_init=True` requires `relative_step=True`".into());
        }
        Ok(())
    }

    /// transformers' `_get_lr` on the host: the step size for a parameter at its `step`-th update whose
    /// RMS (before the update) is `rms`; `external_lr` is the group lr (used without relative_step).
    /// The parameter-scaled value is an f32 product as in torch (the RMS is an f32 tensor there); the
    /// ε₂ floor stays an f64 product of Python floats.
    pub fn step_size(&self, step: u64, rms: f32, external_lr: f64) -> f64 {
        let rel = self.relative_step_size(step, external_lr);
        if !self.scale_parameter {
            rel
        } else if rms > self.eps.1 as f32 {
            (rms * rel as f32) as f64
        } else {
            self.eps.1 * rel
        }
    }

    /// `rel_step_sz`: the external lr, or `min(1e-2 (1e-6·t with warmup_init), 1/√t)`.
    fn relative_step_size(&self, step: u64, external_lr: f64) -> f64 {
        if !self.relative_step {
            return external_lr;
        }
        let t = step as f64;
        let min_step = if self.warmup_init { 1e-6 * t } else { 1e-2 };
        let inv_sqrt = 1.0 / t.sqrt();
        // Python's min(a, b) keeps a unless b < a
        if inv_sqrt < min_step {
            inv_sqrt
        } else {
            min_step
        }
    }
}

fn number(key: &str, v: &ArgValue) -> std::result::Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("optimizer_args: Adafactor `{key}` must be a number, got {}", v.python_repr()))
}

fn flag(key: &str, v: &ArgValue) -> std::result::Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("optimizer_args: Adafactor `{key}` must be True or False, got {}", v.python_repr()))
}

/// `args` with `key` set to `value` (kept in place when present, appended otherwise), as sd-scripts
/// edits its kwargs dict. `OptimizerArgs` only grows through parsing, so the entries are re-parsed
/// from their Python repr (exact for the literal types Adafactor accepts).
fn with_arg(args: &OptimizerArgs, key: &str, value: &ArgValue) -> std::result::Result<OptimizerArgs, String> {
    let mut items: Vec<String> = args.entries().iter().map(|(k, v)| format!("{k}={}", v.python_repr())).collect();
    let item = format!("{key}={}", value.python_repr());
    match args.entries().iter().position(|(k, _)| k == key) {
        Some(i) => items[i] = item,
        None => items.push(item),
    }
    OptimizerArgs::parse(&items)
}

/// The keyword arguments sd-scripts hands transformers for `--optimizer_args args`: `relative_step`
/// is added as True when absent, and set to True when False but `warmup_init` is True (in place, so
/// the `ss_optimizer` text keeps the user's order). The bool says whether warmup_init forced it.
/// Unknown keys and wrong value types are errors naming the key.
pub fn sd_scripts_adafactor_args(args: &OptimizerArgs) -> std::result::Result<(OptimizerArgs, bool), String> {
    let relative = args.get("relative_step").map(|v| flag("relative_step", v)).transpose()?;
    let warmup = args.get("warmup_init").map(|v| flag("warmup_init", v)).transpose()?.unwrap_or(false);
    let (out, forced) = match relative {
        None => (with_arg(args, "relative_step", &ArgValue::Bool(true))?, false),
        Some(false) if warmup => (with_arg(args, "relative_step", &ArgValue::Bool(true))?, true),
        Some(_) => (args.clone(), false),
    };
    AdafactorConfig::from_args(&out)?;
    Ok((out, forced))
}

/// A message sd-scripts' `get_optimizer` logs while setting Adafactor up (in its order).
#[derive(Debug, Clone, PartialEq)]
pub enum AdafactorNotice {
    /// `warmup_init=True` with `relative_step=False`: relative_step is set to True.
    WarmupInitForcesRelativeStep,
    /// Relative-step mode: the optimizer computes its own step size.
    RelativeStep,
    /// `--learning_rate` (≠ 0) is only the lr reported before the first step.
    LearningRateIsInitialLr { learning_rate: f64 },
    /// Per-group learning rates (unet_lr, text_encoder_lr, LoRA+ ratios, block lrs) are dropped.
    GroupLrsIgnored,
    /// The configured scheduler is replaced by `adafactor:<lr>`.
    SchedulerReplaced { configured: String, replacement: String },
    /// External lr with `max_grad_norm` ≠ 0: gradient clipping runs before Adafactor's own.
    MaxGradNormSet { max_grad_norm: f64 },
    /// External lr: sd-scripts recommends `constant_with_warmup`.
    ConstantWithWarmupAdvised { configured: String },
    /// External lr: sd-scripts recommends `clip_threshold=1.0`.
    ClipThresholdAdvised { clip_threshold: f64 },
}

impl AdafactorNotice {
    /// Whether sd-scripts logs it as a warning (otherwise as info).
    pub fn is_warning(&self) -> bool {
        !matches!(
            self,
            AdafactorNotice::WarmupInitForcesRelativeStep
                | AdafactorNotice::RelativeStep
                | AdafactorNotice::SchedulerReplaced { .. }
        )
    }
}

impl fmt::Display for AdafactorNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdafactorNotice::WarmupInitForcesRelativeStep => {
                f.write_str("Adafactor: warmup_init=True needs relative_step, so relative_step is set to True")
            }
            AdafactorNotice::RelativeStep => f.write_str(
                "Adafactor: relative_step=True: the step size is Adafactor's own (min(1e-2, 1/sqrt(step)), times \
                 each parameter's RMS with scale_parameter); learning rates are not used",
            ),
            AdafactorNotice::LearningRateIsInitialLr { learning_rate } => write!(
                f,
                "Adafactor: learning_rate {} is only the lr reported before the first step",
                python_float_repr(*learning_rate)
            ),
            AdafactorNotice::GroupLrsIgnored => f.write_str(
                "Adafactor: unet_lr, text_encoder_lr and other per-group learning rates are ignored with \
                 relative_step",
            ),
            AdafactorNotice::SchedulerReplaced { configured, replacement } => write!(
                f,
                "Adafactor: lr_scheduler `{configured}` is replaced by `{replacement}`, which reports Adafactor's own \
                 step size"
            ),
            AdafactorNotice::MaxGradNormSet { max_grad_norm } => write!(
                f,
                "Adafactor: max_grad_norm = {} clips gradients before Adafactor's own update clipping; consider 0",
                python_float_repr(*max_grad_norm)
            ),
            AdafactorNotice::ConstantWithWarmupAdvised { configured } => write!(
                f,
                "Adafactor with an external learning rate: lr_scheduler `constant_with_warmup` is recommended \
                 (configured: `{configured}`)"
            ),
            AdafactorNotice::ClipThresholdAdvised { clip_threshold } => {
                write!(f, "Adafactor: clip_threshold = {} (1.0 is recommended)", python_float_repr(*clip_threshold))
            }
        }
    }
}

/// What sd-scripts' `get_optimizer` makes of `--optimizer_type Adafactor` (spec §8.1), for the
/// trainer to apply before building the optimizer and the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct AdafactorSetup {
    /// The resolved hyperparameters.
    pub config: AdafactorConfig,
    /// The keyword arguments sd-scripts passes transformers ([`sd_scripts_adafactor_args`]): build the
    /// optimizer from them; they are `ss_optimizer`'s `(k=v,…)` part.
    pub args: OptimizerArgs,
    /// Relative-step mode: every param group's base lr becomes this (`--learning_rate`, the
    /// `initial_lr` of transformers' AdafactorSchedule — what is reported before the first step);
    /// unet_lr, text_encoder_lr, LoRA+ ratios and block lrs have no effect. `None`: groups keep
    /// their lrs.
    pub group_lr: Option<f64>,
    /// The `--lr_scheduler` to build and to write as `ss_lr_scheduler`: `adafactor:<lr>` in
    /// relative-step mode, the configured one otherwise.
    pub lr_scheduler: String,
    /// `ss_learning_rate`: `None` in relative-step mode (sd-scripts clears `args.learning_rate`).
    pub ss_learning_rate: Option<f64>,
    /// sd-scripts clears `args.unet_lr` (so `ss_unet_lr` is None) in relative-step mode;
    /// `ss_text_encoder_lr` keeps its value (sd-scripts writes a local copy).
    pub clears_unet_lr: bool,
    /// Messages to print, in sd-scripts' order.
    pub notices: Vec<AdafactorNotice>,
}

impl AdafactorSetup {
    /// sd-scripts' Adafactor branch: `args` are the `--optimizer_args`, `learning_rate`
    /// `--learning_rate`, `lr_scheduler` the configured `--lr_scheduler` name and `max_grad_norm`
    /// `--max_grad_norm`. The `adafactor` scheduler without relative_step is an error (sd-scripts
    /// fails on it, or with `adafactor:<lr>` lets the schedule overwrite the external lr with
    /// Adafactor's scaled one after each step).
    pub fn resolve(
        args: &OptimizerArgs,
        learning_rate: f64,
        lr_scheduler: &str,
        max_grad_norm: f64,
    ) -> std::result::Result<Self, String> {
        let (args, forced) = sd_scripts_adafactor_args(args)?;
        let config = AdafactorConfig::from_args(&args)?;
        let mut notices = Vec::new();
        if forced {
            notices.push(AdafactorNotice::WarmupInitForcesRelativeStep);
        }
        if config.relative_step {
            notices.push(AdafactorNotice::RelativeStep);
            if learning_rate != 0.0 {
                notices.push(AdafactorNotice::LearningRateIsInitialLr { learning_rate });
            }
            // sd-scripts' LoRA param groups always carry an lr (groups at lr 0 are dropped earlier)
            notices.push(AdafactorNotice::GroupLrsIgnored);
            let replacement = format!("adafactor:{}", python_float_repr(learning_rate));
            if lr_scheduler != "adafactor" {
                notices.push(AdafactorNotice::SchedulerReplaced {
                    configured: lr_scheduler.into(),
                    replacement: replacement.clone(),
                });
            }
            return Ok(AdafactorSetup {
                config,
                args,
                group_lr: Some(learning_rate),
                lr_scheduler: replacement,
                ss_learning_rate: None,
                clears_unet_lr: true,
                notices,
            });
        }
        if lr_scheduler.starts_with("adafactor") {
            return Err(format!(
                "lr_scheduler `{lr_scheduler}` reports Adafactor's own step size and needs relative_step=True; with \
                 relative_step=False choose another scheduler (constant_with_warmup is recommended)"
            ));
        }
        if max_grad_norm != 0.0 {
            notices.push(AdafactorNotice::MaxGradNormSet { max_grad_norm });
        }
        if lr_scheduler != "constant_with_warmup" {
            notices.push(AdafactorNotice::ConstantWithWarmupAdvised { configured: lr_scheduler.into() });
        }
        if config.clip_threshold != 1.0 {
            notices.push(AdafactorNotice::ClipThresholdAdvised { clip_threshold: config.clip_threshold });
        }
        Ok(AdafactorSetup {
            config,
            args,
            group_lr: None,
            lr_scheduler: lr_scheduler.into(),
            ss_learning_rate: Some(learning_rate),
            clears_unet_lr: false,
            notices,
        })
    }
}

/// A scalar factor as torch applies it: a Python float (rounded to f32 by the kernel) or an f32
/// 0-d tensor (the parameter-scaled lr, kept on the device to avoid a host round trip per parameter).
enum Factor {
    Host(f64),
    Device(Tensor),
}

impl Factor {
    fn mul(&self, t: &Tensor) -> Result<Tensor> {
        match self {
            Factor::Host(x) => t.affine(*x, 0.0),
            Factor::Device(x) => t.broadcast_mul(x),
        }
    }
}

fn scalar(x: f64, dev: &Device) -> Result<Tensor> {
    Tensor::new(x as f32, dev)
}

/// `tensor.norm(2) / numel ** 0.5` (a true f32 division, as torch).
fn rms(t: &Tensor) -> Result<Tensor> {
    let n = scalar((t.elem_count() as f64).sqrt(), t.device())?;
    t.sqr()?.sum_all()?.sqrt()?.broadcast_div(&n)
}

/// `t.mean(dim)` as torch computes it on the CPU: the sum divided by the count, keeping the dim.
fn mean_keepdim(t: &Tensor, dim: usize) -> Result<Tensor> {
    let n = scalar(t.dim(dim)? as f64, t.device())?;
    t.sum_keepdim(dim)?.broadcast_div(&n)
}

/// `1 / sqrt(x)` with two roundings, as torch's `rsqrt`.
fn rsqrt(t: &Tensor) -> Result<Tensor> {
    t.sqrt()?.recip()
}

/// `m.mul_(beta).add_(x, alpha=1 − beta)`.
fn ema(m: &Tensor, x: &Tensor, beta: f64) -> Result<Tensor> {
    m.affine(beta, 0.0)? + x.affine(1.0 - beta, 0.0)?
}

/// `transformers.optimization.Adafactor`: per parameter with gradient g at its `t`-th update,
/// `ρ = RMS(p)`, `lr = max(ε₂, ρ)·s` (`s` = relative or external step size, ρ only with
/// scale_parameter), `β₂ₜ = 1 − t^decay_rate`; parameters with ≥ 2 dims keep row and column means of
/// `g² + ε₁` over their last two dims (a 4-D conv weight `[o, i, kh, kw]` is factored per `[o, i]`
/// over `kh × kw`), others the full second moment `v`; `u = g/√v̂` clipped to RMS ≤ clip_threshold,
/// times lr, through the first moment when beta1 is set; then `p ← p − wd·lr·p − u`. In f32 on the
/// parameter's device, in transformers' operation order (parameters of other dtypes go through f32).
#[derive(Debug)]
pub struct Adafactor {
    groups: Vec<ParamGroup>,
    config: AdafactorConfig,
    slots: SlotTable,
    args: OptimizerArgs,
}

impl Adafactor {
    /// `ss_optimizer`'s class path (`transformers.optimization.Adafactor.__module__` + name).
    pub const CLASS_PATH: &'static str = "transformers.optimization.Adafactor";

    /// Group names must be unique (they name the state entries) and base lrs finite and ≥ 0.
    pub fn new(groups: Vec<ParamGroup>, config: AdafactorConfig) -> Result<Self> {
        config.validate().map_err(msg)?;
        check_groups(&groups)?;
        let slots = SlotTable::new(&groups);
        Ok(Adafactor { groups, config, slots, args: OptimizerArgs::default() })
    }

    /// Built from sd-scripts' `--optimizer_args` with sd-scripts' rules for the kwargs
    /// ([`sd_scripts_adafactor_args`]: relative_step defaults to True, warmup_init forces it); the
    /// resulting kwargs make up [`Optimizer::description`]. The lr/scheduler side of those rules is
    /// [`AdafactorSetup::resolve`]'s.
    pub fn from_args(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let (args, _) = sd_scripts_adafactor_args(args).map_err(msg)?;
        let config = AdafactorConfig::from_args(&args).map_err(msg)?;
        let mut opt = Adafactor::new(groups, config)?;
        opt.args = args;
        Ok(opt)
    }

    pub fn config(&self) -> &AdafactorConfig {
        &self.config
    }

    /// State tensor names of a parameter with `rank` dims under `config`.
    fn tensor_names(config: &AdafactorConfig, rank: usize) -> Vec<&'static str> {
        let mut names = vec!["RMS"];
        if rank >= 2 {
            names.extend(["exp_avg_sq_row", "exp_avg_sq_col"]);
        } else {
            names.push("exp_avg_sq");
        }
        if config.beta1.is_some() {
            names.push("exp_avg");
        }
        names
    }

    /// The shape of state tensor `name` for a parameter of shape `dims`.
    fn tensor_shape(name: &str, dims: &[usize]) -> Option<Vec<usize>> {
        let r = dims.len();
        match name {
            "RMS" => Some(vec![]),
            "exp_avg" | "exp_avg_sq" => Some(dims.to_vec()),
            "exp_avg_sq_row" if r >= 2 => Some(dims[..r - 1].to_vec()),
            "exp_avg_sq_col" if r >= 2 => Some([&dims[..r - 2], &dims[r - 1..]].concat()),
            _ => None,
        }
    }

    fn update(
        cfg: &AdafactorConfig,
        var: &Var,
        grad: &Tensor,
        external_lr: f64,
        slot: Option<&ParamSlot>,
    ) -> Result<ParamSlot> {
        let dev = var.device();
        let p = var.as_detached_tensor().to_dtype(DType::F32)?;
        let g = grad.detach().to_device(dev)?.to_dtype(DType::F32)?;
        let dims = p.dims().to_vec();
        let rank = dims.len();
        let factored = rank >= 2;
        let step = slot.map_or(1, |s| s.step + 1);
        let old = |name: &str, shape: Vec<usize>| -> Result<Tensor> {
            match slot {
                Some(s) => Ok(s.tensor(name)?.clone()),
                None => Tensor::zeros(shape, DType::F32, dev),
            }
        };

        // _get_lr: the RMS of the parameter before this update scales the step size.
        let p_rms = rms(&p)?;
        let rel = cfg.relative_step_size(step, external_lr);
        let (lr, decay) = if cfg.scale_parameter {
            // max(ε₂, RMS) · rel: an f32 tensor product when the RMS wins, Python floats otherwise
            let above = p_rms.gt(cfg.eps.1)?;
            let scaled = p_rms.affine(rel, 0.0)?;
            let floor = cfg.eps.1 * rel;
            let lr = above.where_cond(&scaled, &scalar(floor, dev)?)?;
            let decay =
                above.where_cond(&scaled.affine(-cfg.weight_decay, 0.0)?, &scalar(-cfg.weight_decay * floor, dev)?)?;
            (Factor::Device(lr), Factor::Device(decay))
        } else {
            (Factor::Host(rel), Factor::Host(-cfg.weight_decay * rel))
        };

        let beta2t = 1.0 - (step as f64).powf(cfg.decay_rate);
        let sq = g.sqr()?.affine(1.0, cfg.eps.0)?;
        let mut tensors = BTreeMap::new();
        let update = if factored {
            let row_shape = dims[..rank - 1].to_vec();
            let col_shape = [&dims[..rank - 2], &dims[rank - 1..]].concat();
            let row =
                ema(&old("exp_avg_sq_row", row_shape)?, &mean_keepdim(&sq, rank - 1)?.squeeze(rank - 1)?, beta2t)?;
            let col =
                ema(&old("exp_avg_sq_col", col_shape)?, &mean_keepdim(&sq, rank - 2)?.squeeze(rank - 2)?, beta2t)?;
            // _approx_sq_grad: rsqrt(row / mean(row)) ⊗ rsqrt(col)
            let r = rsqrt(&row.broadcast_div(&mean_keepdim(&row, rank - 2)?)?)?.unsqueeze(rank - 1)?;
            let c = rsqrt(&col.unsqueeze(rank - 2)?)?;
            let u = (r.broadcast_mul(&c)? * &g)?;
            tensors.insert("exp_avg_sq_row".to_string(), row);
            tensors.insert("exp_avg_sq_col".to_string(), col);
            u
        } else {
            let v = ema(&old("exp_avg_sq", dims.clone())?, &sq, beta2t)?;
            let u = (rsqrt(&v)? * &g)?;
            tensors.insert("exp_avg_sq".to_string(), v);
            u
        };
        // update /= max(1, RMS(update) / clip_threshold)
        let clip = rms(&update)?.broadcast_div(&scalar(cfg.clip_threshold, dev)?)?.maximum(1.0)?;
        let update = lr.mul(&update.broadcast_div(&clip)?)?;
        let update = match cfg.beta1 {
            Some(b1) => {
                let m = ema(&old("exp_avg", dims.clone())?, &update, b1)?;
                tensors.insert("exp_avg".to_string(), m.clone());
                m
            }
            None => update,
        };
        // p.add_(p, alpha = −wd·lr); p.add_(−update)
        let p = if cfg.weight_decay != 0.0 { (&p + decay.mul(&p)?)? } else { p };
        let p = (p - update)?;
        var.set(&p.to_dtype(var.dtype())?)?;
        tensors.insert("RMS".to_string(), p_rms);
        Ok(ParamSlot { step, tensors })
    }
}

impl Optimizer for Adafactor {
    /// `lrs` are the external learning rates; with relative_step they are not used.
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        let cfg = &self.config;
        self.slots.step_each("Adafactor", &self.groups, grads, lrs, |var, grad, lr, slot| {
            Self::update(cfg, var, grad, lr, slot)
        })
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.RMS` (0-d), `.exp_avg_sq_row` / `.exp_avg_sq_col` (≥ 2-D parameters) or
    /// `.exp_avg_sq`, and `.exp_avg` with beta1 (f32, for parameters updated at least once); scalars
    /// `{"optimizer": "Adafactor", "eps", "clip_threshold", "decay_rate", "beta1", "weight_decay",
    /// "scale_parameter", "relative_step", "warmup_init", "groups": [{"name", "lr", "steps"}]}`.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let groups = self.slots.save(&self.groups, &mut tensors);
        let c = &self.config;
        let scalars = json!({
            "optimizer": "Adafactor",
            "eps": [c.eps.0, c.eps.1],
            "clip_threshold": c.clip_threshold,
            "decay_rate": c.decay_rate,
            "beta1": c.beta1,
            "weight_decay": c.weight_decay,
            "scale_parameter": c.scale_parameter,
            "relative_step": c.relative_step,
            "warmup_init": c.warmup_init,
            "groups": groups,
        });
        Ok(OptimizerState { tensors, scalars })
    }

    /// Like torch's `load_state_dict`, the saved hyperparameters replace the current ones (resuming
    /// continues the run that was saved); group base lrs stay as constructed.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_state_owner(state, "Adafactor")?;
        let s = &state.scalars;
        let bad = |what: &str| msg(format!("Adafactor state: {what}"));
        let num =
            |key: &str| s.get(key).and_then(|v| v.as_f64()).ok_or_else(|| bad(&format!("missing number `{key}`")));
        let boolean =
            |key: &str| s.get(key).and_then(|v| v.as_bool()).ok_or_else(|| bad(&format!("missing flag `{key}`")));
        let eps = s
            .get("eps")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
            .ok_or_else(|| bad("`eps` must be two numbers"))?;
        let beta1 = match s.get("beta1") {
            Some(serde_json::Value::Null) => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| bad("`beta1` must be a number or null"))?),
            None => return Err(bad("missing `beta1`")),
        };
        let config = AdafactorConfig {
            eps,
            clip_threshold: num("clip_threshold")?,
            decay_rate: num("decay_rate")?,
            beta1,
            weight_decay: num("weight_decay")?,
            scale_parameter: boolean("scale_parameter")?,
            relative_step: boolean("relative_step")?,
            warmup_init: boolean("warmup_init")?,
        };
        config.validate().map_err(|e| bad(&e))?;
        let groups = &self.groups;
        let check = |name: &str, t: &Tensor, g: usize, i: usize| -> Result<Tensor> {
            let var = &groups[g].vars[i];
            let want = Self::tensor_shape(name, var.dims())
                .ok_or_else(|| msg(format!("not a state tensor of a {}-D parameter", var.rank())))?;
            if t.dims() != want.as_slice() {
                return Err(msg(format!(
                    "shape {:?}, expected {want:?} for a parameter of shape {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            t.to_device(var.device())?.to_dtype(DType::F32)
        };
        let complete = |slot: &ParamSlot, prefix: &str, g: usize, i: usize| -> Result<()> {
            let names = Self::tensor_names(&config, groups[g].vars[i].rank());
            if let Some(n) = names.iter().find(|n| !slot.tensors.contains_key(**n)) {
                return Err(msg(format!("missing tensor `{prefix}{n}`")));
            }
            if let Some(extra) = slot.tensors.keys().find(|k| !names.contains(&k.as_str())) {
                return Err(msg(format!("unexpected tensor `{prefix}{extra}`")));
            }
            Ok(())
        };
        let slots = SlotTable::load(groups, state, "Adafactor", check, complete)?;
        self.config = config;
        self.slots = slots;
        Ok(())
    }

    fn description(&self) -> String {
        describe_optimizer(Self::CLASS_PATH, &self.args)
    }

    /// With relative_step: what transformers' `AdafactorSchedule.get_lr()` reports after a step (and
    /// sd-scripts logs as `lr/<group>`): each group's step size at its first parameter's last update,
    /// or the group's base lr (the schedule's initial lr) before that parameter's first update.
    /// `None` with an external lr (the scheduled lr is what sd-scripts logs then). A group whose
    /// first parameter had no gradient at the last step keeps its previous value, as the schedule
    /// leaves that group's lr alone (transformers drops such groups from its list, which shifts the
    /// values of later groups onto the wrong groups; that misalignment is not reproduced).
    fn effective_lrs(&self) -> Option<Vec<f64>> {
        if !self.config.relative_step {
            return None;
        }
        let lrs = self
            .groups
            .iter()
            .enumerate()
            .map(|(gi, group)| match self.slots.get(gi, 0) {
                // a failed device read shows as NaN in the log rather than as a wrong number
                Some(slot) => match slot.tensor("RMS").and_then(|t| t.to_scalar::<f32>()) {
                    Ok(rms) => self.config.step_size(slot.step, rms, group.lr),
                    Err(_) => f64::NAN,
                },
                None => group.lr,
            })
            .collect();
        Some(lrs)
    }
}
