//! sd-scripts' learning-rate schedules (`--lr_scheduler`, spec §8.4).
//!
//! sd-scripts builds every schedule as a torch `LambdaLR` through `train_util.get_scheduler_fix`,
//! which calls transformers' (and for `piecewise_constant` diffusers') schedule functions with its
//! own wiring: `num_cycles / 2` for `cosine_with_min_lr` and `warmup_stable_decay`, `lr_end` and
//! `min_lr` only through `--lr_scheduler_args`, `--learning_rate` as polynomial's `lr_init`. An
//! [`LrScheduler`] reproduces the resulting multiplier `f(s)`: the learning rate of a group at
//! optimizer step `s` is its base lr × `f(s)`, with `s` counted from 0, so the first update uses
//! `f(0)` (0 whenever there is a warmup).
//!
//! A scheduler is a pure function of the step: it holds no state that changes during training, so
//! resuming only needs the step count (torch's `LambdaLR` state is likewise just its step and base
//! lrs). The numbers are checked against `tests/fixtures/reference/optim/lr_schedulers.json`.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::fmt;

use crate::optim::{python_float_repr, ArgValue};

/// The schedules sd-scripts can build by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `constant`: 1 (warmup not allowed).
    Constant,
    /// `constant_with_warmup`: linear warmup, then 1.
    ConstantWithWarmup,
    /// `linear`: warmup, then linear decay to 0 at the last step.
    Linear,
    /// `cosine`: warmup, then half a cosine to 0 (`num_cycles` only via lr_scheduler_args).
    Cosine,
    /// `cosine_with_restarts`: warmup, then `num_cycles` hard-restarted half cosines.
    CosineWithRestarts,
    /// `polynomial`: warmup, then `(lr_init − lr_end)·(1 − p)^power + lr_end`, as a factor.
    Polynomial,
    /// `inverse_sqrt`: warmup, then `1/√((s + τ − W)/τ)`.
    InverseSqrt,
    /// `cosine_with_min_lr`: warmup, then cosine to `min_lr_ratio` instead of 0.
    CosineWithMinLr,
    /// `warmup_stable_decay`: warmup, plateau at 1, decay over `decay_steps`, then the floor.
    WarmupStableDecay,
    /// `piecewise_constant` (diffusers): `step_rules` multipliers by step.
    PiecewiseConstant,
    /// `adafactor` / `adafactor:<lr>`: Adafactor computes its own lr; the factor here is 1.
    Adafactor,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 11] = [
        SchedulerKind::Constant,
        SchedulerKind::ConstantWithWarmup,
        SchedulerKind::Linear,
        SchedulerKind::Cosine,
        SchedulerKind::CosineWithRestarts,
        SchedulerKind::Polynomial,
        SchedulerKind::InverseSqrt,
        SchedulerKind::CosineWithMinLr,
        SchedulerKind::WarmupStableDecay,
        SchedulerKind::PiecewiseConstant,
        SchedulerKind::Adafactor,
    ];

    /// sd-scripts' name (the `ss_lr_scheduler` value, except that sd-scripts writes
    /// `adafactor:<lr>` for Adafactor).
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Constant => "constant",
            SchedulerKind::ConstantWithWarmup => "constant_with_warmup",
            SchedulerKind::Linear => "linear",
            SchedulerKind::Cosine => "cosine",
            SchedulerKind::CosineWithRestarts => "cosine_with_restarts",
            SchedulerKind::Polynomial => "polynomial",
            SchedulerKind::InverseSqrt => "inverse_sqrt",
            SchedulerKind::CosineWithMinLr => "cosine_with_min_lr",
            SchedulerKind::WarmupStableDecay => "warmup_stable_decay",
            SchedulerKind::PiecewiseConstant => "piecewise_constant",
            SchedulerKind::Adafactor => "adafactor",
        }
    }

    /// sd-scripts' `--lr_scheduler` names, case-sensitive as there. `adafactor:<lr>` (the form
    /// sd-scripts sets itself for a relative-step Adafactor) is accepted as `adafactor`.
    pub fn parse(name: &str) -> Result<Self, String> {
        if let Some(rest) = name.strip_prefix("adafactor") {
            let lr_ok = rest.is_empty() || rest.strip_prefix(':').is_some_and(|lr| lr.trim().parse::<f64>().is_ok());
            return if lr_ok {
                Ok(SchedulerKind::Adafactor)
            } else {
                Err(format!("lr_scheduler `{name}`: write `adafactor` or `adafactor:<initial lr>`"))
            };
        }
        if let Some(kind) = Self::ALL.iter().find(|k| k.name() == name) {
            return Ok(*kind);
        }
        let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
        if matches!(name, "reduce_lr_on_plateau" | "cosine_warmup_with_min_lr") {
            return Err(format!(
                "lr_scheduler `{name}` is in transformers' list but sd-scripts cannot build it (it passes arguments \
                 this scheduler does not take); use one of: {}",
                names.join(", ")
            ));
        }
        Err(format!("unknown lr_scheduler `{name}`; valid names: {}", names.join(", ")))
    }

    /// lr_scheduler_args keys this schedule takes (everything else sd-scripts passes itself).
    fn accepted_args(self) -> &'static [&'static str] {
        match self {
            SchedulerKind::Cosine => &["num_cycles"],
            SchedulerKind::Polynomial => &["lr_end"],
            SchedulerKind::CosineWithMinLr => &["min_lr"],
            SchedulerKind::WarmupStableDecay => &["warmup_type", "decay_type"],
            SchedulerKind::PiecewiseConstant => &["step_rules"],
            _ => &[],
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The values sd-scripts' `get_scheduler_fix` works from. Steps are already resolved (see
/// [`warmup_steps_from`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerParams {
    /// W: `--lr_warmup_steps` resolved to steps.
    pub warmup_steps: u64,
    /// T: `max_train_steps × num_processes` (the scheduler steps once per process per update).
    pub total_steps: u64,
    /// D: `--lr_decay_steps` resolved to steps (warmup_stable_decay only).
    pub decay_steps: u64,
    /// `--lr_scheduler_num_cycles` (default 1).
    pub num_cycles: u64,
    /// `--lr_scheduler_power` (default 1).
    pub power: f64,
    /// `--lr_scheduler_timescale` (inverse_sqrt; unset: W, or 10000 when W is 0).
    pub timescale: Option<u64>,
    /// `--lr_scheduler_min_lr_ratio` (cosine_with_min_lr, warmup_stable_decay).
    pub min_lr_ratio: Option<f64>,
    /// `--learning_rate`, the optimizer's default lr: polynomial divides by it (`lr_end / lr`), and
    /// cosine_with_min_lr's `min_lr` argument becomes `min_lr / lr`.
    pub base_lr: f64,
    /// `--lr_scheduler_args`, parsed like optimizer_args ([`crate::optim::parse_optimizer_args`]).
    pub args: BTreeMap<String, ArgValue>,
}

impl Default for SchedulerParams {
    /// sd-scripts' CLI defaults (`--learning_rate` 2e-6), with no steps.
    fn default() -> Self {
        SchedulerParams {
            warmup_steps: 0,
            total_steps: 0,
            decay_steps: 0,
            num_cycles: 1,
            power: 1.0,
            timescale: None,
            min_lr_ratio: None,
            base_lr: 2e-6,
            args: BTreeMap::new(),
        }
    }
}

/// `--lr_warmup_steps` / `--lr_decay_steps` as sd-scripts resolves them: a value below 1 is a
/// ratio of `total_steps` (`int(ratio × T)`, truncating, so 0.29 × 100 gives 28), anything else a
/// step count. sd-scripts' parser rejects fractional counts ≥ 1 (`1.5`) and turns `30%` into 0.3;
/// that parsing is the caller's. Negative or NaN values give 0.
pub fn warmup_steps_from(value: f64, total_steps: u64) -> u64 {
    if value < 1.0 {
        (value * total_steps as f64) as u64
    } else {
        value as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Linear,
    Cosine,
    OneMinusSqrt,
}

impl Shape {
    fn parse(key: &str, v: Option<&ArgValue>, default: Shape) -> Result<Shape, String> {
        let Some(v) = v else { return Ok(default) };
        match v.as_str() {
            Some("linear") => Ok(Shape::Linear),
            Some("cosine") => Ok(Shape::Cosine),
            Some("1-sqrt") => Ok(Shape::OneMinusSqrt),
            _ => Err(format!(
                "lr_scheduler_args: unknown {key} {}, expected 'linear', 'cosine' or '1-sqrt'",
                v.python_repr()
            )),
        }
    }
}

/// The resolved curve; integers are i64 because sd-scripts' arithmetic (e.g. T − W − D) may go
/// negative.
#[derive(Debug, Clone, PartialEq)]
enum Curve {
    Constant,
    ConstantWithWarmup { w: i64 },
    Linear { w: i64, t: i64 },
    Cosine { w: i64, t: i64, cycles: f64 },
    Restarts { w: i64, t: i64, cycles: f64 },
    Polynomial { w: i64, t: i64, lr_init: f64, lr_end: f64, power: f64 },
    InverseSqrt { w: i64, timescale: i64 },
    CosineMinLr { w: i64, t: i64, cycles: f64, min_rate: f64 },
    Wsd { w: i64, stable: i64, d: i64, warmup: Shape, decay: Shape, min_ratio: f64, cycles: f64 },
    Piecewise { rules: Vec<(i64, f64)>, last: f64 },
}

/// A learning-rate schedule: `factor(step)` multiplies every group's base lr.
#[derive(Debug, Clone, PartialEq)]
pub struct LrScheduler {
    kind: SchedulerKind,
    curve: Curve,
}

fn number_arg(args: &BTreeMap<String, ArgValue>, key: &str) -> Result<Option<f64>, String> {
    match args.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("lr_scheduler_args: `{key}` must be a number, got {}", v.python_repr())),
    }
}

/// For a key sd-scripts passes itself: the flag that sets it.
fn flag_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "num_warmup_steps" => "--lr_warmup_steps",
        "num_training_steps" => "--max_train_steps",
        "num_cycles" => "--lr_scheduler_num_cycles",
        "power" => "--lr_scheduler_power",
        "timescale" => "--lr_scheduler_timescale",
        "min_lr_rate" | "min_lr_ratio" => "--lr_scheduler_min_lr_ratio",
        "num_stable_steps" | "num_decay_steps" => "--lr_decay_steps",
        _ => return None,
    })
}

fn warmup(s: i64, w: i64) -> f64 {
    s as f64 / w.max(1) as f64
}

impl LrScheduler {
    /// Checks the combination as sd-scripts (and the transformers functions it calls) would:
    /// `constant`/`adafactor` with warmup steps, a missing or doubled min lr, `lr_end ≥ lr_init`,
    /// unknown or clashing lr_scheduler_args are errors.
    pub fn new(kind: SchedulerKind, params: SchedulerParams) -> Result<Self, String> {
        let p = &params;
        for key in p.args.keys() {
            if kind.accepted_args().contains(&key.as_str()) {
                continue;
            }
            let accepted = kind.accepted_args();
            let accepted = if accepted.is_empty() { "none".to_string() } else { accepted.join(", ") };
            return Err(match flag_for(key) {
                Some(flag) => format!(
                    "lr_scheduler_args: `{key}` cannot be given to {kind}: sd-scripts sets it from {flag} \
                     (accepted here: {accepted})"
                ),
                None => format!("lr_scheduler_args: {kind} does not accept `{key}` (accepted: {accepted})"),
            });
        }
        let to_i64 = |v: u64| i64::try_from(v).map_err(|_| format!("{kind}: step count {v} is too large"));
        let w = to_i64(p.warmup_steps)?;
        let t = to_i64(p.total_steps)?;
        let d = to_i64(p.decay_steps)?;
        let cycles = p.num_cycles as f64;
        let no_warmup = || {
            if w != 0 {
                Err(format!("{kind} does not take warmup steps (got {w}); set --lr_warmup_steps to 0"))
            } else {
                Ok(())
            }
        };
        let curve = match kind {
            SchedulerKind::Constant => {
                no_warmup()?;
                Curve::Constant
            }
            SchedulerKind::Adafactor => {
                no_warmup()?;
                Curve::Constant
            }
            SchedulerKind::ConstantWithWarmup => Curve::ConstantWithWarmup { w },
            SchedulerKind::Linear => Curve::Linear { w, t },
            SchedulerKind::Cosine => Curve::Cosine { w, t, cycles: number_arg(&p.args, "num_cycles")?.unwrap_or(0.5) },
            SchedulerKind::CosineWithRestarts => Curve::Restarts { w, t, cycles },
            SchedulerKind::Polynomial => {
                let lr_end = number_arg(&p.args, "lr_end")?.unwrap_or(1e-7);
                let lr_init = p.base_lr;
                if !matches!(lr_init.partial_cmp(&lr_end), Some(std::cmp::Ordering::Greater)) {
                    return Err(format!(
                        "polynomial: lr_end ({}) must be smaller than the initial lr ({}, --learning_rate)",
                        python_float_repr(lr_end),
                        python_float_repr(lr_init)
                    ));
                }
                Curve::Polynomial { w, t, lr_init, lr_end, power: p.power }
            }
            SchedulerKind::InverseSqrt => {
                let timescale = match p.timescale {
                    Some(0) => return Err("inverse_sqrt: --lr_scheduler_timescale must be at least 1".into()),
                    Some(ts) => to_i64(ts)?,
                    None if w != 0 => w,
                    None => 10_000,
                };
                Curve::InverseSqrt { w, timescale }
            }
            SchedulerKind::CosineWithMinLr => {
                let min_lr = number_arg(&p.args, "min_lr")?;
                let min_rate = match (min_lr, p.min_lr_ratio) {
                    (Some(_), Some(_)) => {
                        return Err("cosine_with_min_lr: give either --lr_scheduler_min_lr_ratio or min_lr in \
                                    lr_scheduler_args, not both"
                            .into())
                    }
                    (Some(min_lr), None) => min_lr / p.base_lr,
                    (None, Some(ratio)) => ratio,
                    (None, None) => {
                        return Err("cosine_with_min_lr needs --lr_scheduler_min_lr_ratio (or min_lr=<lr> in \
                                    lr_scheduler_args)"
                            .into())
                    }
                };
                Curve::CosineMinLr { w, t, cycles: cycles / 2.0, min_rate }
            }
            SchedulerKind::WarmupStableDecay => Curve::Wsd {
                w,
                stable: t - w - d,
                d,
                warmup: Shape::parse("warmup_type", p.args.get("warmup_type"), Shape::Linear)?,
                decay: Shape::parse("decay_type", p.args.get("decay_type"), Shape::Cosine)?,
                min_ratio: p.min_lr_ratio.unwrap_or(0.0),
                cycles: cycles / 2.0,
            },
            SchedulerKind::PiecewiseConstant => {
                let rules = match p.args.get("step_rules") {
                    Some(ArgValue::Str(s)) => s.clone(),
                    Some(other) => {
                        return Err(format!(
                            "piecewise_constant: step_rules must be a quoted string like \
                             step_rules='1:10,0.1:20,0.01', got {}",
                            other.python_repr()
                        ))
                    }
                    None => {
                        return Err("piecewise_constant needs step_rules in lr_scheduler_args, e.g. \
                                    step_rules='1:10,0.1:20,0.01'"
                            .into())
                    }
                };
                parse_step_rules(&rules)?
            }
        };
        Ok(LrScheduler { kind, curve })
    }

    pub fn kind(&self) -> SchedulerKind {
        self.kind
    }

    /// The multiplier on each group's base lr for optimizer step `step` (0-based: the first
    /// update uses `factor(0)`). Steps past the end follow the formulas (usually the floor).
    pub fn factor(&self, step: u64) -> f64 {
        let s = i64::try_from(step).unwrap_or(i64::MAX);
        match self.curve {
            Curve::Constant => 1.0,
            Curve::ConstantWithWarmup { w } => {
                if s < w {
                    warmup(s, w)
                } else {
                    1.0
                }
            }
            Curve::Linear { w, t } => {
                if s < w {
                    return warmup(s, w);
                }
                ((t - s) as f64 / (t - w).max(1) as f64).max(0.0)
            }
            Curve::Cosine { w, t, cycles } => {
                if s < w {
                    return warmup(s, w);
                }
                let progress = (s - w) as f64 / (t - w).max(1) as f64;
                (0.5 * (1.0 + (PI * cycles * 2.0 * progress).cos())).max(0.0)
            }
            Curve::Restarts { w, t, cycles } => {
                if s < w {
                    return warmup(s, w);
                }
                let progress = (s - w) as f64 / (t - w).max(1) as f64;
                if progress >= 1.0 {
                    return 0.0;
                }
                (0.5 * (1.0 + (PI * ((cycles * progress) % 1.0)).cos())).max(0.0)
            }
            Curve::Polynomial { w, t, lr_init, lr_end, power } => {
                if s < w {
                    return warmup(s, w);
                }
                let decay_steps = t - w;
                // W = T would divide by zero at s = T in transformers (a crash at the end of
                // training); the floor is the value that formula tends to.
                if s > t || decay_steps == 0 {
                    return lr_end / lr_init;
                }
                let pct_remaining = 1.0 - (s - w) as f64 / decay_steps as f64;
                ((lr_init - lr_end) * pct_remaining.powf(power) + lr_end) / lr_init
            }
            Curve::InverseSqrt { w, timescale } => {
                if s < w {
                    return warmup(s, w);
                }
                let shift = timescale - w;
                1.0 / ((s + shift) as f64 / timescale as f64).sqrt()
            }
            Curve::CosineMinLr { w, t, cycles, min_rate } => {
                if s < w {
                    return warmup(s, w);
                }
                let progress = (s - w) as f64 / (t - w).max(1) as f64;
                let f = 0.5 * (1.0 + (PI * cycles * 2.0 * progress).cos());
                (f * (1.0 - min_rate) + min_rate).max(0.0)
            }
            Curve::Wsd { w, stable, d, warmup: wshape, decay, min_ratio, cycles } => {
                if s < w {
                    let progress = warmup(s, w);
                    let f = match wshape {
                        Shape::Linear => progress,
                        Shape::Cosine => 0.5 * (1.0 - (PI * progress).cos()),
                        Shape::OneMinusSqrt => 1.0 - (1.0 - progress).sqrt(),
                    };
                    return (f * (1.0 - min_ratio) + min_ratio).max(0.0);
                }
                if s < w + stable {
                    return 1.0;
                }
                if s < w + stable + d {
                    let progress = (s - w - stable) as f64 / d.max(1) as f64;
                    let f = match decay {
                        Shape::Linear => 1.0 - progress,
                        Shape::Cosine => 0.5 * (1.0 + (PI * cycles * 2.0 * progress).cos()),
                        Shape::OneMinusSqrt => 1.0 - progress.sqrt(),
                    };
                    return (f * (1.0 - min_ratio) + min_ratio).max(0.0);
                }
                min_ratio
            }
            Curve::Piecewise { ref rules, last } => {
                rules.iter().find(|(until, _)| s < *until).map_or(last, |(_, value)| *value)
            }
        }
    }
}

/// diffusers' `step_rules`: `value:until_step,…,final_value` — multiplier `value` while the step is
/// below `until_step` (absolute steps, checked in ascending order), `final_value` after the last.
fn parse_step_rules(rules: &str) -> Result<Curve, String> {
    let bad = |what: String| format!("piecewise_constant step_rules `{rules}`: {what}");
    let parts: Vec<&str> = rules.split(',').collect();
    let (last, head) = parts.split_last().ok_or_else(|| bad("empty".into()))?;
    let mut map = BTreeMap::new();
    for rule in head {
        let Some((value, until)) = rule.split_once(':').filter(|(_, u)| !u.contains(':')) else {
            return Err(bad(format!("`{rule}` is not `multiplier:until_step`")));
        };
        let until: i64 = until.trim().parse().map_err(|_| bad(format!("`{until}` is not an integer step")))?;
        let value: f64 = value.trim().parse().map_err(|_| bad(format!("`{value}` is not a number")))?;
        map.insert(until, value);
    }
    let last: f64 = last.trim().parse().map_err(|_| bad(format!("the final multiplier `{last}` is not a number")))?;
    Ok(Curve::Piecewise { rules: map.into_iter().collect(), last })
}
