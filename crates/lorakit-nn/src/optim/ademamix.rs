//! AdEMAMix (`bitsandbytes.optim.AdEMAMix`, 32-bit state, and `bitsandbytes.optim.AdEMAMix8bit`,
//! sd-scripts users select them by class path): configuration from optimizer_args; the update is
//! [`BnbOptimizer`]'s (`p ← p − lr·(m1/(1 − β1ᵗ) + α·m2) / (√ν/√(1 − β2ᵗ) + ε)`, then
//! `p ← p·(1 − lr·wd)`, with α and β3 warmed up over `t_alpha` / `t_beta3` steps when given).

use candle_core::Result;

use super::bnb::{arg_betas, arg_count, arg_flag, arg_number};
use super::*;

/// AdEMAMix hyperparameters; the defaults are bitsandbytes'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdEMAMixConfig {
    /// (β1, β2, β3); with only two betas bitsandbytes runs β3 = 0 (the slow EMA is the gradient).
    pub betas: (f64, f64, Option<f64>),
    pub alpha: f64,
    /// Warm-up lengths of α and β3; `None` (or 0) is off.
    pub t_alpha: Option<u64>,
    pub t_beta3: Option<u64>,
    pub eps: f64,
    pub weight_decay: f64,
    /// 32 (`AdEMAMix`'s default) or 8 (`AdEMAMix8bit`).
    pub optim_bits: u32,
    pub min_8bit_size: u64,
}

impl Default for AdEMAMixConfig {
    fn default() -> Self {
        AdEMAMixConfig {
            betas: (0.9, 0.999, Some(0.9999)),
            alpha: 5.0,
            t_alpha: None,
            t_beta3: None,
            eps: 1e-8,
            weight_decay: 1e-2,
            optim_bits: 32,
            min_8bit_size: 4096,
        }
    }
}

impl AdEMAMixConfig {
    pub const CLASS_PATH: &'static str = "bitsandbytes.optim.ademamix.AdEMAMix";
    pub const CLASS_PATH_8BIT: &'static str = "bitsandbytes.optim.ademamix.AdEMAMix8bit";
    /// `AdEMAMix`'s keyword arguments; `AdEMAMix8bit` takes the same but `optim_bits`.
    pub const ACCEPTED_ARGS: &'static [&'static str] =
        &["betas", "alpha", "t_alpha", "t_beta3", "eps", "weight_decay", "optim_bits", "min_8bit_size", "is_paged"];

    /// `eight_bit`: the `AdEMAMix8bit` class (8-bit state, no `optim_bits` argument).
    pub fn from_args(args: &OptimizerArgs, eight_bit: bool) -> std::result::Result<Self, String> {
        let name = if eight_bit { "AdEMAMix8bit" } else { "AdEMAMix" };
        let accepted: Vec<&str> =
            Self::ACCEPTED_ARGS.iter().copied().filter(|k| !(eight_bit && *k == "optim_bits")).collect();
        args.check_keys(name, &accepted)?;
        let mut cfg = AdEMAMixConfig { optim_bits: if eight_bit { 8 } else { 32 }, ..Default::default() };
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => {
                    let b = arg_betas(name, v, &[2, 3])?;
                    cfg.betas = (b[0], b[1], b.get(2).copied());
                }
                "alpha" => cfg.alpha = arg_number(name, key, v)?,
                "t_alpha" => cfg.t_alpha = Some(arg_count(name, key, v, Some(0))?).filter(|t| *t > 0),
                "t_beta3" => cfg.t_beta3 = Some(arg_count(name, key, v, Some(0))?).filter(|t| *t > 0),
                "eps" => cfg.eps = arg_number(name, key, v)?,
                "weight_decay" => cfg.weight_decay = arg_number(name, key, v)?,
                "optim_bits" => {
                    cfg.optim_bits = match v {
                        ArgValue::Int(8) => 8,
                        ArgValue::Int(32) => 32,
                        _ => return Err(format!("optimizer_args: AdEMAMix `optim_bits` must be 8 or 32, got {v}")),
                    }
                }
                "min_8bit_size" => cfg.min_8bit_size = arg_count(name, key, v, None)?,
                _ => arg_flag(name, key, v)?,
            }
        }
        cfg.bnb().validate().map_err(|e| format!("optimizer_args: {name}: {e}"))?;
        Ok(cfg)
    }

    pub fn bnb(&self) -> BnbConfig {
        BnbConfig {
            rule: BnbRule::AdEMAMix {
                betas: self.betas,
                alpha: self.alpha,
                t_alpha: self.t_alpha.unwrap_or(0),
                t_beta3: self.t_beta3.unwrap_or(0),
                eps: self.eps,
            },
            weight_decay: self.weight_decay,
            optim_bits: self.optim_bits,
            min_8bit_size: self.min_8bit_size,
        }
    }
}

impl BnbOptimizer {
    /// `bitsandbytes.optim.AdEMAMix(params, lr, **optimizer_args)` (`eight_bit`: `AdEMAMix8bit`).
    pub fn ademamix(groups: Vec<ParamGroup>, args: &OptimizerArgs, eight_bit: bool) -> Result<Self> {
        let cfg = AdEMAMixConfig::from_args(args, eight_bit).map_err(msg)?;
        let (path, name) = if eight_bit {
            (AdEMAMixConfig::CLASS_PATH_8BIT, "AdEMAMix8bit")
        } else {
            (AdEMAMixConfig::CLASS_PATH, "AdEMAMix")
        };
        BnbOptimizer::new(groups, cfg.bnb(), name, describe_optimizer(path, args))
    }
}
