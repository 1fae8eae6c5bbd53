//! SGD with Nesterov momentum: `torch.optim.SGD(nesterov=True)` (sd-scripts' `SGDNesterov`,
//! stepped with candle ops on the parameter's device) and the configuration of
//! `bitsandbytes.optim.SGD8bit` (sd-scripts' `SGDNesterov8bit`, run by [`BnbOptimizer`]).
//!
//! sd-scripts sets `momentum=0.9` when the optimizer_args have none (and then lists it in
//! `ss_optimizer`), and passes `nesterov=True` itself, so `nesterov` cannot be given. bitsandbytes'
//! SGD8bit ignores `nesterov` and `dampening`: "SGDNesterov8bit" is plain heavy-ball momentum.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var};
use serde_json::json;

use super::bnb::{arg_count, arg_false_only, arg_flag, arg_number};
use super::*;

/// sd-scripts' momentum when the optimizer_args name none.
pub const SD_SCRIPTS_DEFAULT_MOMENTUM: f64 = 0.9;

const NESTEROV_GIVEN: &str =
    "optimizer_args: `nesterov` cannot be given: sd-scripts passes nesterov=True itself (Python \
                              fails with \"got multiple values for keyword argument 'nesterov'\")";

/// `describe_optimizer` plus the `momentum=0.9` sd-scripts adds to the kwargs it logs.
fn describe_with_momentum(class_path: &str, args: &OptimizerArgs) -> String {
    match (args.get("momentum"), args.is_empty()) {
        (Some(_), _) => describe_optimizer(class_path, args),
        (None, true) => format!("{class_path}(momentum=0.9)"),
        (None, false) => format!("{class_path}({},momentum=0.9)", args.describe()),
    }
}

/// `torch.optim.SGD` hyperparameters as sd-scripts' `SGDNesterov` builds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { momentum: SD_SCRIPTS_DEFAULT_MOMENTUM, dampening: 0.0, weight_decay: 0.0 }
    }
}

impl SgdConfig {
    /// `maximize` only as False; `foreach`, `fused`, `differentiable` choose kernels, not math.
    pub const ACCEPTED_ARGS: &'static [&'static str] =
        &["momentum", "dampening", "weight_decay", "maximize", "foreach", "fused", "differentiable"];

    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        if args.get("nesterov").is_some() {
            return Err(NESTEROV_GIVEN.into());
        }
        args.check_keys("SGDNesterov", Self::ACCEPTED_ARGS)?;
        let mut cfg = SgdConfig::default();
        for (key, v) in args.entries() {
            match key.as_str() {
                "momentum" => cfg.momentum = arg_number("SGDNesterov", key, v)?,
                "dampening" => cfg.dampening = arg_number("SGDNesterov", key, v)?,
                "weight_decay" => cfg.weight_decay = arg_number("SGDNesterov", key, v)?,
                "maximize" => arg_false_only("SGDNesterov", key, v, "only False")?,
                _ => {} // foreach / fused / differentiable: kernel selection
            }
        }
        cfg.validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    /// torch's constructor checks (same wording), with nesterov=True.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.momentum >= 0.0 && self.momentum.is_finite()) {
            return Err(format!("Invalid momentum value: {}", python_float_repr(self.momentum)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(format!("Invalid weight_decay value: {}", python_float_repr(self.weight_decay)));
        }
        if self.momentum <= 0.0 || self.dampening != 0.0 {
            return Err("Nesterov momentum requires a momentum and zero dampening".into());
        }
        Ok(())
    }
}

/// `torch.optim.SGD(nesterov=True)`: per parameter, `d = g + wd·p`, `b ← d` at the first update
/// else `b ← μ·b + d`, `p ← p − lr·(d + μ·b)`, in float32 on the parameter's device.
#[derive(Debug)]
pub struct SgdNesterov {
    groups: Vec<ParamGroup>,
    config: SgdConfig,
    slots: SlotTable,
    args: OptimizerArgs,
}

impl SgdNesterov {
    pub const CLASS_PATH: &'static str = "torch.optim.sgd.SGD";
    const STATE_TENSORS: &'static [&'static str] = &["momentum_buffer"];

    pub fn new(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Self> {
        config.validate().map_err(msg)?;
        check_groups(&groups)?;
        let slots = SlotTable::new(&groups);
        Ok(SgdNesterov { groups, config, slots, args: OptimizerArgs::default() })
    }

    /// sd-scripts' `SGDNesterov`: `torch.optim.SGD(params, lr, nesterov=True, **optimizer_args)`.
    pub fn from_args(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let config = SgdConfig::from_args(args).map_err(msg)?;
        let mut opt = SgdNesterov::new(groups, config)?;
        opt.args = args.clone();
        Ok(opt)
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    fn update(cfg: &SgdConfig, var: &Var, grad: &Tensor, lr: f64, slot: Option<&ParamSlot>) -> Result<ParamSlot> {
        let SgdConfig { momentum, dampening, weight_decay } = *cfg;
        let p = var.as_detached_tensor().to_dtype(DType::F32)?;
        let g = grad.detach().to_device(var.device())?.to_dtype(DType::F32)?;
        // grad.add(param, alpha = weight_decay)
        let d = if weight_decay != 0.0 { (&g + p.affine(weight_decay, 0.0)?)? } else { g };
        let (buf, step) = match slot {
            // buf.mul_(momentum).add_(grad, alpha = 1 − dampening)
            Some(s) => {
                ((s.tensor("momentum_buffer")?.affine(momentum, 0.0)? + d.affine(1.0 - dampening, 0.0)?)?, s.step + 1)
            }
            None => (d.copy()?, 1), // torch.clone(grad)
        };
        // nesterov: grad.add(buf, alpha = momentum); param.add_(grad, alpha = −lr)
        let d = (&d + buf.affine(momentum, 0.0)?)?;
        let p = (p + d.affine(-lr, 0.0)?)?;
        var.set(&p.to_dtype(var.dtype())?)?;
        Ok(ParamSlot { step, tensors: [("momentum_buffer".to_string(), buf)].into_iter().collect() })
    }
}

impl Optimizer for SgdNesterov {
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        let cfg = &self.config;
        self.slots.step_each("SGDNesterov", &self.groups, grads, lrs, |var, grad, lr, slot| {
            Self::update(cfg, var, grad, lr, slot)
        })
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.momentum_buffer` (f32); scalars `{"optimizer": "SGDNesterov",
    /// "momentum", "dampening", "weight_decay", "groups"}`.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let groups = self.slots.save(&self.groups, &mut tensors);
        let c = &self.config;
        let scalars = json!({
            "optimizer": "SGDNesterov",
            "momentum": c.momentum,
            "dampening": c.dampening,
            "weight_decay": c.weight_decay,
            "groups": groups,
        });
        Ok(OptimizerState { tensors, scalars })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        check_state_owner(state, "SGDNesterov")?;
        let s = &state.scalars;
        let num = |key: &str| {
            s.get(key).and_then(|v| v.as_f64()).ok_or_else(|| msg(format!("SGDNesterov state: missing number `{key}`")))
        };
        let config =
            SgdConfig { momentum: num("momentum")?, dampening: num("dampening")?, weight_decay: num("weight_decay")? };
        config.validate().map_err(|e| msg(format!("SGDNesterov state: {e}")))?;
        let slots = SlotTable::load(
            &self.groups,
            state,
            "SGDNesterov",
            param_shaped_f32(&self.groups),
            requires_tensors(Self::STATE_TENSORS),
        )?;
        self.config = config;
        self.slots = slots;
        Ok(())
    }

    fn description(&self) -> String {
        describe_with_momentum(Self::CLASS_PATH, &self.args)
    }
}

// -------------------------------------------------------------------------------------- SGD8bit

/// `bitsandbytes.optim.SGD8bit` hyperparameters as sd-scripts' `SGDNesterov8bit` builds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd8bitConfig {
    pub momentum: f64,
    /// Validated like a beta (in [0, 1)) and kept, but bitsandbytes' momentum kernel ignores it.
    pub dampening: f64,
    pub weight_decay: f64,
    pub min_8bit_size: u64,
}

impl Default for Sgd8bitConfig {
    fn default() -> Self {
        Sgd8bitConfig { momentum: SD_SCRIPTS_DEFAULT_MOMENTUM, dampening: 0.0, weight_decay: 0.0, min_8bit_size: 4096 }
    }
}

impl Sgd8bitConfig {
    pub const CLASS_PATH: &'static str = "bitsandbytes.optim.sgd.SGD8bit";
    pub const ACCEPTED_ARGS: &'static [&'static str] = &["momentum", "dampening", "weight_decay", "min_8bit_size"];

    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        const NAME: &str = "SGDNesterov8bit";
        if args.get("nesterov").is_some() {
            return Err(NESTEROV_GIVEN.into());
        }
        args.check_keys(NAME, Self::ACCEPTED_ARGS)?;
        let mut cfg = Sgd8bitConfig::default();
        for (key, v) in args.entries() {
            match key.as_str() {
                "momentum" => cfg.momentum = arg_number(NAME, key, v)?,
                "dampening" => cfg.dampening = arg_number(NAME, key, v)?,
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
            rule: BnbRule::Momentum { momentum: self.momentum, dampening: self.dampening },
            weight_decay: self.weight_decay,
            optim_bits: 8,
            min_8bit_size: self.min_8bit_size,
        }
    }
}

impl BnbOptimizer {
    /// sd-scripts' `SGDNesterov8bit`: `bitsandbytes.optim.SGD8bit(params, lr, **optimizer_args)`
    /// with momentum 0.9 unless given.
    pub fn sgd8bit(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let cfg = Sgd8bitConfig::from_args(args).map_err(msg)?;
        let description = describe_with_momentum(Sgd8bitConfig::CLASS_PATH, args);
        BnbOptimizer::new(groups, cfg.bnb(), "SGDNesterov8bit", description)
    }
}
