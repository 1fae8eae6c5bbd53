//! `bitsandbytes.optim.AdamW8bit` (sd-scripts' `AdamW8bit`): AdamW with both moments stored
//! block-wise in 8 bits (see [`BnbOptimizer`]).

use candle_core::Result;

use super::bnb::{arg_betas, arg_count, arg_false_only, arg_flag, arg_number};
use super::*;

/// `AdamW8bit` hyperparameters; the defaults are bitsandbytes'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW8bitConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub min_8bit_size: u64,
}

impl Default for AdamW8bitConfig {
    fn default() -> Self {
        AdamW8bitConfig { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 1e-2, min_8bit_size: 4096 }
    }
}

impl AdamW8bitConfig {
    /// `ss_optimizer`'s class path.
    pub const CLASS_PATH: &'static str = "bitsandbytes.optim.adamw.AdamW8bit";
    /// The constructor's keyword arguments (`args` takes an object, not a literal).
    pub const ACCEPTED_ARGS: &'static [&'static str] =
        &["betas", "eps", "weight_decay", "amsgrad", "optim_bits", "min_8bit_size", "is_paged"];

    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        const NAME: &str = "AdamW8bit";
        args.check_keys(NAME, Self::ACCEPTED_ARGS)?;
        let mut cfg = AdamW8bitConfig::default();
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => {
                    let b = arg_betas(NAME, v, &[2])?;
                    cfg.betas = (b[0], b[1]);
                }
                "eps" => cfg.eps = arg_number(NAME, key, v)?,
                "weight_decay" => cfg.weight_decay = arg_number(NAME, key, v)?,
                "min_8bit_size" => cfg.min_8bit_size = arg_count(NAME, key, v, None)?,
                "amsgrad" => arg_false_only(NAME, key, v, "AdamW8bit does not support amsgrad=True")?,
                "optim_bits" => {
                    if v.as_f64() != Some(32.0) || matches!(v, ArgValue::Bool(_)) {
                        return Err(
                            "optimizer_args: AdamW8bit only supports optim_bits=32 (default value for compatibility)"
                                .into(),
                        );
                    }
                }
                _ => arg_flag(NAME, key, v)?, // is_paged: GPU memory paging only
            }
        }
        cfg.bnb().validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    pub fn bnb(&self) -> BnbConfig {
        BnbConfig {
            rule: BnbRule::Adam { betas: self.betas, eps: self.eps },
            weight_decay: self.weight_decay,
            optim_bits: 8,
            min_8bit_size: self.min_8bit_size,
        }
    }
}

impl BnbOptimizer {
    /// sd-scripts' `AdamW8bit`: `bitsandbytes.optim.AdamW8bit(params, lr, **optimizer_args)`.
    pub fn adamw8bit(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let cfg = AdamW8bitConfig::from_args(args).map_err(msg)?;
        let description = describe_optimizer(AdamW8bitConfig::CLASS_PATH, args);
        BnbOptimizer::new(groups, cfg.bnb(), "AdamW8bit", description)
    }
}
