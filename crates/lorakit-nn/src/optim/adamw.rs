//! `torch.optim.AdamW`, sd-scripts' default optimizer.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var};
use serde_json::json;

use super::*;

/// `torch.optim.AdamW` hyperparameters; the defaults are torch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    /// The optimizer_args keys AdamW takes. `amsgrad` and `maximize` are accepted only as False
    /// (their torch default); the other torch flags (`foreach`, `fused`, …) choose kernels, not math.
    pub const ACCEPTED_ARGS: &'static [&'static str] =
        &["betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable"];

    /// Reads betas/eps/weight_decay from optimizer_args (missing keys keep torch's defaults).
    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        args.check_keys("AdamW", Self::ACCEPTED_ARGS)?;
        let mut cfg = AdamWConfig::default();
        let number = |key: &str, v: &ArgValue| {
            v.as_f64().ok_or_else(|| format!("optimizer_args: AdamW `{key}` must be a number, got {}", v.python_repr()))
        };
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => {
                    let pair = v.as_seq().filter(|s| s.len() == 2).and_then(|s| Some((s[0].as_f64()?, s[1].as_f64()?)));
                    cfg.betas = pair.ok_or_else(|| {
                        format!("optimizer_args: AdamW `betas` must be two numbers like `betas=0.9,0.999`, got {v}")
                    })?;
                }
                "eps" => cfg.eps = number(key, v)?,
                "weight_decay" => cfg.weight_decay = number(key, v)?,
                "amsgrad" | "maximize" => match v {
                    ArgValue::Bool(false) => {}
                    _ => return Err(format!("optimizer_args: AdamW `{key}={v}` is not supported (only False)")),
                },
                _ => {} // kernel-selection flags: no effect on the result
            }
        }
        cfg.validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    /// torch's constructor checks (same wording).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) {
            return Err(format!("Invalid beta parameter at index 0: {}", python_float_repr(b1)));
        }
        if !(0.0..1.0).contains(&b2) {
            return Err(format!("Invalid beta parameter at index 1: {}", python_float_repr(b2)));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(format!("Invalid epsilon value: {}", python_float_repr(self.eps)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(format!("Invalid weight_decay value: {}", python_float_repr(self.weight_decay)));
        }
        Ok(())
    }
}

/// `torch.optim.AdamW` (amsgrad off): per parameter with gradient g at its `t`-th update,
/// `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β1)`, `v ← β2·v + (1 − β2)·g²`,
/// `p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)`, in torch's operation order, in f32 on
/// the parameter's device (parameters of other dtypes are updated through f32 and cast back).
/// Moments live on the same device.
#[derive(Debug)]
pub struct AdamW {
    groups: Vec<ParamGroup>,
    config: AdamWConfig,
    slots: SlotTable,
    args: OptimizerArgs,
}

impl AdamW {
    /// `ss_optimizer`'s class path.
    pub const CLASS_PATH: &'static str = "torch.optim.adamw.AdamW";
    const STATE_TENSORS: &'static [&'static str] = &["exp_avg", "exp_avg_sq"];

    /// Group names must be unique (they name the state entries) and base lrs finite and ≥ 0.
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        config.validate().map_err(msg)?;
        check_groups(&groups)?;
        let slots = SlotTable::new(&groups);
        Ok(AdamW { groups, config, slots, args: OptimizerArgs::default() })
    }

    /// Built from sd-scripts' `--optimizer_args` (betas, eps, weight_decay); unknown keys are
    /// errors naming the key. The arguments also make up [`Optimizer::description`].
    pub fn from_args(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let config = AdamWConfig::from_args(args).map_err(msg)?;
        let mut opt = AdamW::new(groups, config)?;
        opt.args = args.clone();
        Ok(opt)
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    fn update(cfg: &AdamWConfig, var: &Var, grad: &Tensor, lr: f64, slot: Option<&ParamSlot>) -> Result<ParamSlot> {
        let dev = var.device();
        let p = var.as_detached_tensor().to_dtype(DType::F32)?;
        let g = grad.detach().to_device(dev)?.to_dtype(DType::F32)?;
        let (m, v, step) = match slot {
            Some(s) => (s.tensor("exp_avg")?.clone(), s.tensor("exp_avg_sq")?.clone(), s.step + 1),
            None => (p.zeros_like()?, p.zeros_like()?, 1),
        };
        let (b1, b2) = cfg.betas;
        // Decoupled weight decay; torch multiplies by the f32 value of (1 − lr·wd).
        let p = if cfg.weight_decay != 0.0 { p.affine(1.0 - lr * cfg.weight_decay, 0.0)? } else { p };
        // exp_avg.lerp_(grad, 1 − β1): torch's lerp switches formula at weight 0.5.
        let w = (1.0 - b1) as f32;
        let m = if w.abs() < 0.5 {
            (&m + (&g - &m)?.affine(w as f64, 0.0)?)?
        } else {
            (&g - (&g - &m)?.affine((1.0f32 - w) as f64, 0.0)?)?
        };
        // exp_avg_sq.mul_(β2).addcmul_(grad, grad, value = 1 − β2)
        let v = (v.affine(b2, 0.0)? + (g.affine(1.0 - b2, 0.0)? * &g)?)?;
        let t = step as f64;
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        let step_size = lr / bias_correction1;
        let bc2_sqrt = Tensor::new(bias_correction2.powf(0.5) as f32, dev)?;
        // denom = (√v / √bc2) + ε (a true f32 division, as torch), then p.addcdiv_(m, denom, −step_size)
        let denom = v.sqrt()?.broadcast_div(&bc2_sqrt)?.affine(1.0, cfg.eps)?;
        let p = (p + (m.affine(-step_size, 0.0)? / &denom)?)?;
        var.set(&p.to_dtype(var.dtype())?)?;
        let tensors = [("exp_avg".to_string(), m), ("exp_avg_sq".to_string(), v)].into_iter().collect();
        Ok(ParamSlot { step, tensors })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        let cfg = &self.config;
        self.slots
            .step_each("AdamW", &self.groups, grads, lrs, |var, grad, lr, slot| Self::update(cfg, var, grad, lr, slot))
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.exp_avg` / `{group}.{i}.exp_avg_sq` (f32, for parameters updated at
    /// least once); scalars `{"optimizer": "AdamW", "betas", "eps", "weight_decay",
    /// "groups": [{"name", "lr", "steps": [per-parameter update counts]}]}`.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let groups = self.slots.save(&self.groups, &mut tensors);
        let c = &self.config;
        let scalars = json!({
            "optimizer": "AdamW",
            "betas": [c.betas.0, c.betas.1],
            "eps": c.eps,
            "weight_decay": c.weight_decay,
            "groups": groups,
        });
        Ok(OptimizerState { tensors, scalars })
    }

    /// Like torch's `load_state_dict`, the saved betas/eps/weight_decay replace the current ones
    /// (resuming continues the run that was saved); group base lrs stay as constructed.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_state_owner(state, "AdamW")?;
        let s = &state.scalars;
        let bad = |what: &str| msg(format!("AdamW state: {what}"));
        let num =
            |key: &str| s.get(key).and_then(|v| v.as_f64()).ok_or_else(|| bad(&format!("missing number `{key}`")));
        let betas = s
            .get("betas")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
            .ok_or_else(|| bad("`betas` must be two numbers"))?;
        let config = AdamWConfig { betas, eps: num("eps")?, weight_decay: num("weight_decay")? };
        config.validate().map_err(|e| bad(&e))?;
        let slots = SlotTable::load(
            &self.groups,
            state,
            "AdamW",
            param_shaped_f32(&self.groups),
            requires_tensors(Self::STATE_TENSORS),
        )?;
        self.config = config;
        self.slots = slots;
        Ok(())
    }

    fn description(&self) -> String {
        describe_optimizer(Self::CLASS_PATH, &self.args)
    }
}
