//! Lion: `lion_pytorch.Lion` (sd-scripts' `Lion`, float32 state, stepped with candle ops on the
//! parameter's device) and the configuration of `bitsandbytes.optim.Lion8bit` (sd-scripts'
//! `Lion8bit`, run by [`BnbOptimizer`]).

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var};
use serde_json::json;

use super::bnb::{arg_betas, arg_count, arg_false_only, arg_flag, arg_number};
use super::*;

/// `lion_pytorch.Lion` hyperparameters; the defaults are the library's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LionConfig {
    pub betas: (f64, f64),
    pub weight_decay: f64,
}

impl Default for LionConfig {
    fn default() -> Self {
        LionConfig { betas: (0.9, 0.99), weight_decay: 0.0 }
    }
}

impl LionConfig {
    /// `use_triton` picks a kernel with the same math. `decoupled_weight_decay=True` divides the
    /// decay by the constructor's lr (`--learning_rate`), which optimizer_args do not carry, so
    /// only False is accepted.
    pub const ACCEPTED_ARGS: &'static [&'static str] =
        &["betas", "weight_decay", "use_triton", "decoupled_weight_decay"];

    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        args.check_keys("Lion", Self::ACCEPTED_ARGS)?;
        let mut cfg = LionConfig::default();
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => {
                    let b = arg_betas("Lion", v, &[2])?;
                    cfg.betas = (b[0], b[1]);
                }
                "weight_decay" => cfg.weight_decay = arg_number("Lion", key, v)?,
                "decoupled_weight_decay" => arg_false_only(
                    "Lion",
                    key,
                    v,
                    "it scales the decay by --learning_rate, which lorakit's optimizer does not receive; \
                     give weight_decay already divided by the learning rate instead",
                )?,
                _ => arg_flag("Lion", key, v)?,
            }
        }
        cfg.validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    /// lion_pytorch asserts `0 <= beta <= 1`; the decay must be a finite number.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (i, b) in [self.betas.0, self.betas.1].into_iter().enumerate() {
            if !(0.0..=1.0).contains(&b) {
                return Err(format!("Lion: beta {i} must be in [0, 1], got {}", python_float_repr(b)));
            }
        }
        if !self.weight_decay.is_finite() {
            return Err(format!("Lion: Invalid weight_decay value: {}", python_float_repr(self.weight_decay)));
        }
        Ok(())
    }
}

/// `lion_pytorch.Lion`: per parameter, `p ← p·(1 − lr·wd)`, `p ← p − lr·sign(β1·m + (1 − β1)·g)`,
/// `m ← β2·m + (1 − β2)·g`, in float32 on the parameter's device (other dtypes go through f32).
#[derive(Debug)]
pub struct Lion {
    groups: Vec<ParamGroup>,
    config: LionConfig,
    slots: SlotTable,
    args: OptimizerArgs,
}

impl Lion {
    /// `ss_optimizer`'s class path.
    pub const CLASS_PATH: &'static str = "lion_pytorch.lion_pytorch.Lion";
    const STATE_TENSORS: &'static [&'static str] = &["exp_avg"];

    pub fn new(groups: Vec<ParamGroup>, config: LionConfig) -> Result<Self> {
        config.validate().map_err(msg)?;
        check_groups(&groups)?;
        let slots = SlotTable::new(&groups);
        Ok(Lion { groups, config, slots, args: OptimizerArgs::default() })
    }

    /// sd-scripts' `Lion`: `lion_pytorch.Lion(params, lr, **optimizer_args)`.
    pub fn from_args(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let config = LionConfig::from_args(args).map_err(msg)?;
        let mut opt = Lion::new(groups, config)?;
        opt.args = args.clone();
        Ok(opt)
    }

    pub fn config(&self) -> &LionConfig {
        &self.config
    }

    fn update(cfg: &LionConfig, var: &Var, grad: &Tensor, lr: f64, slot: Option<&ParamSlot>) -> Result<ParamSlot> {
        let (b1, b2) = cfg.betas;
        let wd = cfg.weight_decay;
        let p = var.as_detached_tensor().to_dtype(DType::F32)?;
        let g = grad.detach().to_device(var.device())?.to_dtype(DType::F32)?;
        let (m, step) = match slot {
            Some(s) => (s.tensor("exp_avg")?.clone(), s.step + 1),
            None => (p.zeros_like()?, 1),
        };
        // p.data.mul_(1 − lr·wd): a multiplication by exactly 1 when there is no decay.
        let p = if wd != 0.0 { p.affine(1.0 - lr * wd, 0.0)? } else { p };
        // exp_avg.clone().mul_(β1).add(grad, alpha = 1 − β1).sgn_(), then p.add_(update, alpha = −lr)
        let update = (m.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?.sign()?;
        let p = (p + update.affine(-lr, 0.0)?)?;
        // exp_avg.mul_(β2).add_(grad, alpha = 1 − β2)
        let m = (m.affine(b2, 0.0)? + g.affine(1.0 - b2, 0.0)?)?;
        var.set(&p.to_dtype(var.dtype())?)?;
        Ok(ParamSlot { step, tensors: [("exp_avg".to_string(), m)].into_iter().collect() })
    }
}

impl Optimizer for Lion {
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        let cfg = &self.config;
        self.slots
            .step_each("Lion", &self.groups, grads, lrs, |var, grad, lr, slot| Self::update(cfg, var, grad, lr, slot))
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.exp_avg` (f32); scalars `{"optimizer": "Lion", "betas",
    /// "weight_decay", "groups"}`.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let groups = self.slots.save(&self.groups, &mut tensors);
        let c = &self.config;
        let scalars = json!({
            "optimizer": "Lion",
            "betas": [c.betas.0, c.betas.1],
            "weight_decay": c.weight_decay,
            "groups": groups,
        });
        Ok(OptimizerState { tensors, scalars })
    }

    /// The saved betas/weight_decay replace the current ones (as torch's `load_state_dict`).
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_state_owner(state, "Lion")?;
        let s = &state.scalars;
        let bad = |what: &str| msg(format!("Lion state: {what}"));
        let betas = s
            .get("betas")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
            .ok_or_else(|| bad("`betas` must be two numbers"))?;
        let weight_decay =
            s.get("weight_decay").and_then(|v| v.as_f64()).ok_or_else(|| bad("missing `weight_decay`"))?;
        let config = LionConfig { betas, weight_decay };
        config.validate().map_err(|e| bad(&e))?;
        let slots = SlotTable::load(
            &self.groups,
            state,
            "Lion",
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

// ------------------------------------------------------------------------------------- Lion8bit

/// `bitsandbytes.optim.Lion8bit` hyperparameters; the defaults are bitsandbytes'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lion8bitConfig {
    pub betas: (f64, f64),
    pub weight_decay: f64,
    pub min_8bit_size: u64,
}

impl Default for Lion8bitConfig {
    fn default() -> Self {
        Lion8bitConfig { betas: (0.9, 0.99), weight_decay: 0.0, min_8bit_size: 4096 }
    }
}

impl Lion8bitConfig {
    pub const CLASS_PATH: &'static str = "bitsandbytes.optim.lion.Lion8bit";
    pub const ACCEPTED_ARGS: &'static [&'static str] = &["betas", "weight_decay", "min_8bit_size", "is_paged"];

    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        const NAME: &str = "Lion8bit";
        args.check_keys(NAME, Self::ACCEPTED_ARGS)?;
        let mut cfg = Lion8bitConfig::default();
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => {
                    let b = arg_betas(NAME, v, &[2])?;
                    cfg.betas = (b[0], b[1]);
                }
                "weight_decay" => cfg.weight_decay = arg_number(NAME, key, v)?,
                "min_8bit_size" => cfg.min_8bit_size = arg_count(NAME, key, v, None)?,
                _ => arg_flag(NAME, key, v)?,
            }
        }
        cfg.bnb().validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    pub fn bnb(&self) -> BnbConfig {
        BnbConfig {
            rule: BnbRule::Lion { betas: self.betas },
            weight_decay: self.weight_decay,
            optim_bits: 8,
            min_8bit_size: self.min_8bit_size,
        }
    }
}

impl BnbOptimizer {
    /// sd-scripts' `Lion8bit`: `bitsandbytes.optim.Lion8bit(params, lr, **optimizer_args)`.
    pub fn lion8bit(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let cfg = Lion8bitConfig::from_args(args).map_err(msg)?;
        let description = describe_optimizer(Lion8bitConfig::CLASS_PATH, args);
        BnbOptimizer::new(groups, cfg.bnb(), "Lion8bit", description)
    }
}
