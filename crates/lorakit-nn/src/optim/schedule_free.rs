//! `schedulefree.AdamWScheduleFree` (schedulefree 1.4.1), sd-scripts' `--optimizer_type
//! AdamWScheduleFree`, plus the train/eval interpolation both schedule-free optimizers share.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor};
use serde_json::{json, Value};

use super::prodigy::{
    add_product, add_scaled, exact, py_max, read_exact, state_bool, state_f64, state_lrs, state_u64, ArgReader,
};
use super::*;

/// torch's `a.lerp_(end, w)` on f32: `a + w·(end − a)` when |w| < 0.5, else
/// `end + (w − 1)·(end − a)`, the difference rounded to f32 and the rest fused (as torch's kernel).
pub(super) fn lerp(a: &Tensor, end: &Tensor, w: f64) -> Result<Tensor> {
    let w = w as f32;
    let diff = (end - a)?;
    if w.abs() < 0.5 {
        add_scaled(a, &diff, w as f64)
    } else {
        add_scaled(end, &diff, (w - 1.0) as f64)
    }
}

/// Moves a parameter between the schedule-free points: `p.lerp_(z, w)` in f32, written back in the
/// parameter's dtype (`w = 1 − β1` from x to y for `train()`, `1 − 1/β1` from y to x for `eval()`).
pub(super) fn move_toward_z(group: &ParamGroup, i: usize, z: &Tensor, w: f64) -> Result<()> {
    let var = &group.vars[i];
    let p = var.as_detached_tensor().to_dtype(DType::F32)?;
    let moved = lerp(&p, &z.to_device(var.device())?.to_dtype(DType::F32)?, w)?;
    var.set(&moved.to_dtype(var.dtype())?)
}

/// The error `AdamWScheduleFree.step` raises outside train mode.
pub(super) const NOT_IN_TRAIN_MODE: &str =
    "Optimizer was not in train mode when step is called. Please insert .train() \
                                            and .eval() calls on the optimizer. See documentation for details.";

/// `schedulefree.AdamWScheduleFree` hyperparameters; the defaults are the library's (`foreach` only
/// picks kernels and is ignored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScheduleFreeConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear lr warmup over this many steps (the library's own warmup; sd-scripts' scheduler is
    /// replaced by a constant one).
    pub warmup_steps: f64,
    /// Polynomial weighting power of the average.
    pub r: f64,
    /// The averaging weights are `lr_max^weight_lr_power`.
    pub weight_lr_power: f64,
}

impl Default for AdamWScheduleFreeConfig {
    fn default() -> Self {
        AdamWScheduleFreeConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0.0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

impl AdamWScheduleFreeConfig {
    pub const ACCEPTED_ARGS: &'static [&'static str] =
        &["betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power", "foreach"];

    /// Reads optimizer_args (missing keys keep the library's defaults). The library checks nothing;
    /// β1 = 0 is refused here because its `eval()` divides by β1.
    pub fn from_args(args: &OptimizerArgs) -> std::result::Result<Self, String> {
        let name = "AdamWScheduleFree";
        args.check_keys(name, Self::ACCEPTED_ARGS)?;
        let r = ArgReader { optimizer: name };
        let mut cfg = AdamWScheduleFreeConfig::default();
        for (key, v) in args.entries() {
            match key.as_str() {
                "betas" => cfg.betas = r.betas(v)?,
                "eps" => cfg.eps = r.number(key, v)?,
                "weight_decay" => cfg.weight_decay = r.number(key, v)?,
                "warmup_steps" => cfg.warmup_steps = r.number(key, v)?,
                "r" => cfg.r = r.number(key, v)?,
                "weight_lr_power" => cfg.weight_lr_power = r.number(key, v)?,
                _ => {} // foreach: kernel choice only
            }
        }
        cfg.validate().map_err(|e| format!("optimizer_args: {e}"))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.betas.0 == 0.0 {
            return Err("AdamWScheduleFree `betas`: beta1 must not be 0 (eval() interpolates with 1 - 1/beta1)".into());
        }
        Ok(())
    }

    fn to_json(self) -> Value {
        json!({
            "betas": [exact(self.betas.0), exact(self.betas.1)],
            "eps": exact(self.eps),
            "weight_decay": exact(self.weight_decay),
            "warmup_steps": exact(self.warmup_steps),
            "r": exact(self.r),
            "weight_lr_power": exact(self.weight_lr_power),
        })
    }

    fn from_json(s: &Value) -> Result<Self> {
        let o = "AdamWScheduleFree";
        let betas = s
            .get("betas")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((read_exact(a.first())?, read_exact(a.get(1))?)))
            .ok_or_else(|| msg(format!("{o} state: `betas` must be two numbers")))?;
        let cfg = AdamWScheduleFreeConfig {
            betas,
            eps: state_f64(s, o, "eps")?,
            weight_decay: state_f64(s, o, "weight_decay")?,
            warmup_steps: state_f64(s, o, "warmup_steps")?,
            r: state_f64(s, o, "r")?,
            weight_lr_power: state_f64(s, o, "weight_lr_power")?,
        };
        cfg.validate().map_err(|e| msg(format!("{o} state: {e}")))?;
        Ok(cfg)
    }
}

/// The library's per-group scalars.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GroupScalars {
    k: u64,
    weight_sum: f64,
    lr_max: f64,
    scheduled_lr: f64,
}

impl Default for GroupScalars {
    fn default() -> Self {
        GroupScalars { k: 0, weight_sum: 0.0, lr_max: -1.0, scheduled_lr: 0.0 }
    }
}

/// `schedulefree.AdamWScheduleFree` 1.4.1: AdamW without momentum buffer or lr schedule. Per
/// parameter it keeps `z` (the base sequence) and the second moment; the parameter itself is `y`
/// (the gradient point) in train mode and `x` (the average, what gets sampled and saved) in eval
/// mode. Each group has its own step count `k`, warmup, `lr_max` and averaging weight sum.
///
/// It starts in train mode: sd-scripts' `get_optimizer` calls `optimizer.train()` right after
/// building it (with no state yet, that only sets the mode). `step` in eval mode is an error, as
/// in the library.
#[derive(Debug)]
pub struct AdamWScheduleFree {
    groups: Vec<ParamGroup>,
    config: AdamWScheduleFreeConfig,
    slots: SlotTable,
    args: OptimizerArgs,
    scalars: Vec<GroupScalars>,
    train_mode: bool,
    lrs: Vec<f64>,
}

impl AdamWScheduleFree {
    pub const CLASS_PATH: &'static str = "schedulefree.adamw_schedulefree.AdamWScheduleFree";
    const STATE_TENSORS: &'static [&'static str] = &["exp_avg_sq", "z"];

    pub fn new(groups: Vec<ParamGroup>, config: AdamWScheduleFreeConfig) -> Result<Self> {
        config.validate().map_err(msg)?;
        check_groups(&groups)?;
        let slots = SlotTable::new(&groups);
        let lrs = groups.iter().map(|g| g.lr).collect();
        let scalars = vec![GroupScalars::default(); groups.len()];
        Ok(AdamWScheduleFree { groups, config, slots, args: OptimizerArgs::default(), scalars, train_mode: true, lrs })
    }

    /// Built from sd-scripts' `--optimizer_args`; unknown keys are errors naming the key.
    pub fn from_args(groups: Vec<ParamGroup>, args: &OptimizerArgs) -> Result<Self> {
        let config = AdamWScheduleFreeConfig::from_args(args).map_err(msg)?;
        let mut opt = AdamWScheduleFree::new(groups, config)?;
        opt.args = args.clone();
        Ok(opt)
    }

    pub fn config(&self) -> &AdamWScheduleFreeConfig {
        &self.config
    }

    pub fn is_train_mode(&self) -> bool {
        self.train_mode
    }
}

impl Optimizer for AdamWScheduleFree {
    fn step(&mut self, grads: &[Vec<Option<Tensor>>], lrs: &[f64]) -> Result<()> {
        check_step_inputs(&self.groups, grads, lrs)?;
        check_grad_shapes("AdamWScheduleFree", &self.groups, grads)?;
        if !self.train_mode {
            return Err(msg(format!("AdamWScheduleFree: {NOT_IN_TRAIN_MODE}")));
        }
        let cfg = self.config;
        let (beta1, beta2) = cfg.betas;
        // Computed for every group first, applied after: an error leaves nothing half updated.
        let mut updates = Vec::new();
        let mut new_scalars = self.scalars.clone();
        for (gi, group) in self.groups.iter().enumerate() {
            let sc = &mut new_scalars[gi];
            let k = sc.k;
            let sched = if (k as f64) < cfg.warmup_steps { (k + 1) as f64 / cfg.warmup_steps } else { 1.0 };
            let bias_correction2 = 1.0 - beta2.powf((k + 1) as f64);
            let lr = lrs[gi] * sched;
            sc.scheduled_lr = lr;
            sc.lr_max = py_max(lr, sc.lr_max);
            let weight = ((k + 1) as f64).powf(cfg.r) * sc.lr_max.powf(cfg.weight_lr_power);
            sc.weight_sum += weight;
            let ckp1 = if sc.weight_sum == 0.0 { 0.0 } else { weight / sc.weight_sum };
            sc.k = k + 1;

            for (i, var) in group.vars.iter().enumerate() {
                let Some(grad) = &grads[gi][i] else { continue };
                let dev = var.device();
                let y = var.as_detached_tensor().to_dtype(DType::F32)?;
                let g = grad.detach().to_device(dev)?.to_dtype(DType::F32)?;
                let (z, v, step) = match self.slots.get(gi, i) {
                    Some(s) => (s.tensor("z")?.clone(), s.tensor("exp_avg_sq")?.clone(), s.step + 1),
                    None => (y.copy()?, y.zeros_like()?, 1),
                };
                // exp_avg_sq.mul_(β2).addcmul_(g, g, value=1−β2)
                let v = add_product(&v.affine(beta2, 0.0)?, &g.affine(1.0 - beta2, 0.0)?, &g)?;
                // exp_avg_sq.div(bias_correction2).sqrt_().add_(eps): a true division by the f32 scalar
                let bc2 = Tensor::new(bias_correction2 as f32, dev)?;
                let denom = v.broadcast_div(&bc2)?.sqrt()?.affine(1.0, cfg.eps)?;
                let mut gn = (g / denom)?;
                if cfg.weight_decay != 0.0 {
                    gn = add_scaled(&gn, &y, cfg.weight_decay)?;
                }
                let y = lerp(&y, &z, ckp1)?;
                let y = add_scaled(&y, &gn, lr * (beta1 * (1.0 - ckp1) - 1.0))?;
                let z = add_scaled(&z, &gn, -lr)?;
                let tensors = [("exp_avg_sq".to_string(), v), ("z".to_string(), z)].into_iter().collect();
                updates.push((gi, i, y, ParamSlot { step, tensors }));
            }
        }
        self.slots.commit(&self.groups, updates)?;
        self.scalars = new_scalars;
        self.lrs = lrs.to_vec();
        Ok(())
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Tensors `{group}.{i}.z` / `{group}.{i}.exp_avg_sq` (f32); scalars `{"optimizer":
    /// "AdamWScheduleFree", config…, "train_mode", "lrs", "group_scalars": [{"k", "weight_sum",
    /// "lr_max", "scheduled_lr"}], "groups": [{"name", "lr", "steps"}]}`, floats as exact decimal
    /// strings. The parameters belong with it: in eval mode they are the x point.
    fn state(&self) -> Result<OptimizerState> {
        let mut tensors = BTreeMap::new();
        let groups = self.slots.save(&self.groups, &mut tensors);
        let mut scalars = self.config.to_json();
        let group_scalars: Vec<Value> = self
            .scalars
            .iter()
            .map(|s| {
                json!({"k": s.k, "weight_sum": exact(s.weight_sum), "lr_max": exact(s.lr_max),
                       "scheduled_lr": exact(s.scheduled_lr)})
            })
            .collect();
        let extra = json!({
            "optimizer": "AdamWScheduleFree",
            "train_mode": self.train_mode,
            "lrs": self.lrs.iter().map(|&x| exact(x)).collect::<Vec<_>>(),
            "group_scalars": group_scalars,
            "groups": groups,
        });
        if let (Some(obj), Value::Object(extra)) = (scalars.as_object_mut(), extra) {
            obj.extend(extra);
        }
        Ok(OptimizerState { tensors, scalars })
    }

    /// Restores hyperparameters, group scalars, the train/eval mode and the per-parameter state;
    /// the parameters must be the ones the state was taken with (the x point if it was taken in
    /// eval mode).
    fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        let o = "AdamWScheduleFree";
        check_state_owner(state, o)?;
        let s = &state.scalars;
        let config = AdamWScheduleFreeConfig::from_json(s)?;
        let train_mode = state_bool(s, o, "train_mode")?;
        let slots = SlotTable::load(
            &self.groups,
            state,
            o,
            param_shaped_f32(&self.groups),
            requires_tensors(Self::STATE_TENSORS),
        )?;
        let lrs = state_lrs(s, o, self.groups.len())?;
        let saved = s
            .get("group_scalars")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == self.groups.len())
            .ok_or_else(|| msg(format!("{o} state: `group_scalars` must have one entry per param group")))?;
        let scalars = saved
            .iter()
            .map(|g| {
                Ok(GroupScalars {
                    k: state_u64(g, o, "k")?,
                    weight_sum: state_f64(g, o, "weight_sum")?,
                    lr_max: state_f64(g, o, "lr_max")?,
                    scheduled_lr: state_f64(g, o, "scheduled_lr")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
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

    /// Each group's lr after the library's own warmup at the last step (`scheduled_lr`; 0 before
    /// the first step, as in the library).
    fn effective_lrs(&self) -> Option<Vec<f64>> {
        Some(self.scalars.iter().map(|s| s.scheduled_lr).collect())
    }

    fn is_schedule_free(&self) -> bool {
        true
    }

    /// The library's `train()` (x → y: `p.lerp_(z, 1 − β1)`) or `eval()` (y → x:
    /// `p.lerp_(z, 1 − 1/β1)`) for parameters that have a `z`; a no-op when already in that mode.
    fn set_train_mode(&mut self, train: bool) -> Result<()> {
        if train == self.train_mode {
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
