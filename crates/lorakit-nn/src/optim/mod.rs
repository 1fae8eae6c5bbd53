//! Optimizers over candle `Var`s, gradient-norm clipping and sd-scripts' `--optimizer_args`.
//!
//! Every optimizer implements [`Optimizer`]: parameters come in named [`ParamGroup`]s (sd-scripts'
//! `textencoder`, `unet`, `unet_block3`, … groups, spec §8.3), the training loop hands it the
//! gradients and each group's current learning rate (base lr × scheduler factor, see
//! [`crate::lr_scheduler`]), and its whole state can be taken out and put back for a resume that is
//! bitwise identical to an uninterrupted run.
//!
//! [`AdamW`] reproduces `torch.optim.AdamW` (what sd-scripts' default `--optimizer_type AdamW`
//! builds) operation by operation in f32, [`clip_grad_norm`] reproduces
//! `torch.nn.utils.clip_grad_norm_`, and [`OptimizerArgs`] parses `key=value` items with Python
//! literal values as sd-scripts does (spec §8.2). The fixtures in
//! `tests/fixtures/reference/optim/` (from `tools/reference/optim_fixture.py`) hold the reference
//! numbers.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Error, Result, Tensor, Var};

mod adafactor;
mod adamw;
mod adamw8bit;
mod ademamix;
mod args;
mod bnb;
mod lion;
mod prodigy;
mod prodigy_plus;
pub mod quant8;
mod schedule_free;
mod sgd;
mod slots;

pub use adafactor::*;
pub use adamw::*;
pub use adamw8bit::*;
pub use ademamix::*;
pub use args::*;
pub use bnb::*;
pub use lion::*;
pub use prodigy::*;
pub use prodigy_plus::*;
pub use schedule_free::*;
pub use sgd::*;
pub use slots::*;

/// Parameters that share a learning rate, like one entry of a torch optimizer's `param_groups`.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// sd-scripts' group description (`textencoder`, `unet`, …); names state entries and errors.
    pub name: String,
    /// The trainable tensors (f32 master weights of LoRA down/up matrices).
    pub vars: Vec<Var>,
    /// The group's base learning rate (the scheduler factor multiplies it).
    pub lr: f64,
}

/// An optimizer's complete state: named tensors (moments) plus JSON scalars (step counts,
/// hyperparameters). Tensors can be written to a safetensors file and the scalars to JSON as they are.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    pub tensors: BTreeMap<String, Tensor>,
    pub scalars: serde_json::Value,
}

/// What the training loop needs from any optimizer.
pub trait Optimizer: Send {
    /// One update. `grads[g][i]` is the gradient of `groups()[g].vars[i]` (`None`: no gradient this
    /// step, the parameter and its state are left alone, as torch skips params whose `.grad` is
    /// None). `lrs[g]` is the learning rate group `g` uses for this update.
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()>;

    fn groups(&self) -> &[ParamGroup];

    /// Everything needed to resume bitwise: named tensors + JSON scalars.
    fn state(&self) -> Result<OptimizerState>;

    /// Restores [`Optimizer::state`] output; errors name the entry whose name or shape does not
    /// match the current parameters, and leave the optimizer unchanged.
    fn load_state(&mut self, state: &OptimizerState) -> Result<()>;

    /// sd-scripts' `ss_optimizer` text: `module.Class`, plus `(k=v,…)` when optimizer_args were
    /// given (spec §3.1, §8.1), e.g. `torch.optim.adamw.AdamW(weight_decay=0.1,betas=(0.9, 0.99))`.
    fn description(&self) -> String;

    /// Each group's base lr times a scheduler factor: the `lrs` argument of [`Optimizer::step`]
    /// when every group follows the same schedule (sd-scripts' case).
    fn scheduled_lrs(&self, factor: f64) -> Vec<f64> {
        self.groups().iter().map(|g| g.lr * factor).collect()
    }

    /// The learning rate each group effectively used at the last step when the optimizer adapts
    /// it itself: Prodigy's `d·lr` (logged as `lr/d*lr/<group>` as sd-scripts does), Adafactor's
    /// relative-step lr, a schedule-free optimizer's warmed-up lr. `None` for plain optimizers.
    fn effective_lrs(&self) -> Option<Vec<f64>> {
        None
    }

    /// Whether the optimizer replaces the LR scheduler (schedule-free optimizers: sd-scripts
    /// installs a dummy scheduler and the configured one is ignored with a notice).
    fn is_schedule_free(&self) -> bool {
        false
    }

    /// Switches the parameters between the training point and the evaluation point (schedule-free
    /// optimizers keep the two apart; sd-scripts calls `optimizer.eval()` before saving or sampling
    /// and `optimizer.train()` after). No-op for other optimizers.
    fn set_train_mode(&mut self, _train: bool) -> Result<()> {
        Ok(())
    }
}

fn msg(text: impl Into<String>) -> Error {
    Error::Msg(text.into())
}

// ------------------------------------------------------------------------------------ gradient norm

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: the L2 norm of all gradients taken together
/// (`None` entries are skipped); when `max_norm / (total + 1e-6)` is below 1, every gradient is
/// multiplied by it. Returns the total norm before clipping. As in torch, the coefficient is
/// computed in f32, a non-finite total turns the gradients non-finite too (check the returned
/// norm to skip such a step), and `max_norm = 0` zeroes them (sd-scripts skips the call when
/// `--max_grad_norm` is 0).
pub fn clip_grad_norm(grads: &mut [Vec<Option<Tensor>>], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(msg(format!("clip_grad_norm: max_norm must be a number ≥ 0, got {max_norm}")));
    }
    // Sum of squares per device on the device itself: one host transfer per device, not per tensor.
    let mut partial: Vec<(Device, Tensor)> = Vec::new();
    for g in grads.iter().flatten().flatten() {
        let sq = g.detach().to_dtype(DType::F32)?.sqr()?.sum_all()?;
        match partial.iter_mut().find(|(d, _)| d.same_device(g.device())) {
            Some((_, acc)) => *acc = (&*acc + &sq)?,
            None => partial.push((g.device().clone(), sq)),
        }
    }
    let mut sum_sq = 0f64;
    for (_, acc) in &partial {
        sum_sq += acc.to_scalar::<f32>()? as f64;
    }
    let total = sum_sq.sqrt() as f32;
    // torch: `max_norm / (total + 1e-6)` is `reciprocal(total + 1e-6) * max_norm` on an f32 tensor.
    let coef = (1.0f32 / (total + 1e-6f32)) * max_norm as f32;
    // NaN included: torch's clamp lets it through.
    if coef < 1.0 || coef.is_nan() {
        for g in grads.iter_mut().flatten().flatten() {
            *g = g.affine(coef as f64, 0.0)?;
        }
    }
    Ok(total as f64)
}

/// Shape checks shared by every optimizer's `step`.
pub fn check_step_inputs(groups: &[ParamGroup], grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
    if grads.len() != groups.len() || lrs.len() != groups.len() {
        return Err(msg(format!(
            "optimizer step: {} param groups but {} gradient lists and {} learning rates",
            groups.len(),
            grads.len(),
            lrs.len()
        )));
    }
    for ((group, g), lr) in groups.iter().zip(grads).zip(lrs) {
        if g.len() != group.vars.len() {
            return Err(msg(format!(
                "optimizer step: group `{}` has {} parameters but {} gradients",
                group.name,
                group.vars.len(),
                g.len()
            )));
        }
        if !lr.is_finite() {
            return Err(msg(format!("optimizer step: learning rate of group `{}` is {lr}", group.name)));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------- registry

/// The optimizers `optimizer_type` can name: sd-scripts' names (case-insensitive), plus the
/// dotted class paths sd-scripts users write for optimizers it loads by path (spec §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    AdamW,
    AdamW8bit,
    Lion,
    Lion8bit,
    SgdNesterov,
    SgdNesterov8bit,
    Prodigy,
    Adafactor,
    AdamWScheduleFree,
    AdEMAMix,
    AdEMAMix8bit,
    ProdigyPlusScheduleFree,
}

impl OptimizerKind {
    /// Every kind with the names that select it (first = the canonical `optimizer_type`).
    pub const NAMES: &'static [(OptimizerKind, &'static [&'static str])] = &[
        (OptimizerKind::AdamW, &["AdamW", "torch.optim.AdamW", "PagedAdamW", "PagedAdamW32bit"]),
        (OptimizerKind::AdamW8bit, &["AdamW8bit", "bitsandbytes.optim.AdamW8bit", "PagedAdamW8bit"]),
        (OptimizerKind::Lion, &["Lion", "lion_pytorch.Lion"]),
        (OptimizerKind::Lion8bit, &["Lion8bit", "bitsandbytes.optim.Lion8bit", "PagedLion8bit"]),
        (OptimizerKind::SgdNesterov, &["SGDNesterov", "torch.optim.SGD"]),
        (OptimizerKind::SgdNesterov8bit, &["SGDNesterov8bit", "bitsandbytes.optim.SGD8bit"]),
        (OptimizerKind::Prodigy, &["Prodigy", "prodigyopt.Prodigy"]),
        (OptimizerKind::Adafactor, &["Adafactor", "transformers.optimization.Adafactor"]),
        (OptimizerKind::AdamWScheduleFree, &["AdamWScheduleFree", "schedulefree.AdamWScheduleFree"]),
        (OptimizerKind::AdEMAMix, &["AdEMAMix", "bitsandbytes.optim.AdEMAMix", "bitsandbytes.optim.AdEMAMix32bit"]),
        (
            OptimizerKind::AdEMAMix8bit,
            &["AdEMAMix8bit", "bitsandbytes.optim.AdEMAMix8bit", "bitsandbytes.optim.PagedAdEMAMix8bit"],
        ),
        (
            OptimizerKind::ProdigyPlusScheduleFree,
            &[
                "ProdigyPlusScheduleFree",
                "prodigyplus.ProdigyPlusScheduleFree",
                "prodigyplus.prodigy_plus_schedulefree.ProdigyPlusScheduleFree",
            ],
        ),
    ];

    /// Case-insensitive lookup; unknown names list the available ones, and sd-scripts optimizers
    /// we do not implement say what to use instead.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        let wanted = name.trim().to_ascii_lowercase();
        for (kind, names) in Self::NAMES {
            if names.iter().any(|n| n.to_ascii_lowercase() == wanted) {
                return Ok(*kind);
            }
        }
        let hint = if wanted.starts_with("dadapt") {
            " (the D-Adaptation family is not available; Prodigy is its successor and adapts the learning rate the same way)"
        } else {
            ""
        };
        Err(format!(
            "optimizer_type `{name}` is not available{hint}; choose one of: {}",
            Self::NAMES.iter().map(|(_, n)| n[0]).collect::<Vec<_>>().join(", ")
        ))
    }

    /// sd-scripts' `ss_optimizer` for an optimizer selected as `name`: `description` (what the
    /// built optimizer reports), with the class path of the alias when `name` is one that runs the
    /// same update under another class (bitsandbytes' paged variants only move state memory).
    pub fn description_as_named(name: &str, description: &str) -> String {
        const ALIASES: &[(&str, &str)] = &[
            ("pagedadamw", "bitsandbytes.optim.adamw.PagedAdamW"),
            ("pagedadamw32bit", "bitsandbytes.optim.adamw.PagedAdamW32bit"),
            ("pagedadamw8bit", "bitsandbytes.optim.adamw.PagedAdamW8bit"),
            ("pagedlion8bit", "bitsandbytes.optim.lion.PagedLion8bit"),
            ("bitsandbytes.optim.pagedademamix8bit", "bitsandbytes.optim.ademamix.PagedAdEMAMix8bit"),
            ("bitsandbytes.optim.ademamix32bit", "bitsandbytes.optim.ademamix.AdEMAMix32bit"),
        ];
        let wanted = name.trim().to_ascii_lowercase();
        match ALIASES.iter().find(|(alias, _)| *alias == wanted) {
            Some((_, class)) => {
                let args = description.find('(').map_or("", |i| &description[i..]);
                format!("{class}{args}")
            }
            None => description.to_string(),
        }
    }

    /// The canonical `optimizer_type` name.
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(k, _)| *k == self).map(|(_, n)| n[0]).unwrap_or("?")
    }

    /// Whether the moments are stored block-wise quantised to 8 bits (bitsandbytes' optimizers).
    pub fn is_8bit(self) -> bool {
        matches!(
            self,
            OptimizerKind::AdamW8bit
                | OptimizerKind::Lion8bit
                | OptimizerKind::SgdNesterov8bit
                | OptimizerKind::AdEMAMix8bit
        )
    }

    /// Builds the optimizer over `groups` from sd-scripts' `--optimizer_args`; bad or unknown
    /// arguments are errors naming the key.
    pub fn build(self, groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Box<dyn Optimizer>> {
        match self {
            OptimizerKind::AdamW => Ok(Box::new(AdamW::from_args(groups, args)?)),
            OptimizerKind::Adafactor => Ok(Box::new(Adafactor::from_args(groups, args)?)),
            OptimizerKind::Prodigy => Ok(Box::new(Prodigy::from_args(groups, args)?)),
            OptimizerKind::AdamWScheduleFree => Ok(Box::new(AdamWScheduleFree::from_args(groups, args)?)),
            OptimizerKind::ProdigyPlusScheduleFree => Ok(Box::new(ProdigyPlusScheduleFree::from_args(groups, args)?)),
            OptimizerKind::AdamW8bit => Ok(Box::new(BnbOptimizer::adamw8bit(groups, args)?)),
            OptimizerKind::Lion => Ok(Box::new(Lion::from_args(groups, args)?)),
            OptimizerKind::Lion8bit => Ok(Box::new(BnbOptimizer::lion8bit(groups, args)?)),
            OptimizerKind::SgdNesterov => Ok(Box::new(SgdNesterov::from_args(groups, args)?)),
            OptimizerKind::SgdNesterov8bit => Ok(Box::new(BnbOptimizer::sgd8bit(groups, args)?)),
            OptimizerKind::AdEMAMix => Ok(Box::new(BnbOptimizer::ademamix(groups, args, false)?)),
            OptimizerKind::AdEMAMix8bit => Ok(Box::new(BnbOptimizer::ademamix(groups, args, true)?)),
        }
    }
}
