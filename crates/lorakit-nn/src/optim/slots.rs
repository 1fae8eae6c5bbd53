//! Per-parameter optimizer state shared by every optimizer: a table of lazily created slots (one
//! per parameter, as torch creates `state[p]` at a parameter's first update), and the one way
//! they are written into and read back from an [`OptimizerState`].
//!
//! Layout: tensor `{group}.{index}.{name}` for every named tensor of every created slot, and a
//! `"groups"` JSON list `[{"name", "lr", "steps": [update count per parameter, 0 = no slot]}]`.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};
use serde_json::json;

use super::{check_step_inputs, msg, OptimizerState, ParamGroup};

/// One parameter's state: its update count and named tensors (moments, quantised codes, …).
#[derive(Debug, Clone)]
pub struct ParamSlot {
    /// Updates applied to this parameter (torch's per-parameter `state["step"]`), ≥ 1.
    pub step: u64,
    /// Named state tensors, kept in the dtype the optimizer stores them in.
    pub tensors: BTreeMap<String, Tensor>,
}

impl ParamSlot {
    /// The tensor `name`; an error naming it when absent (a state from another optimizer).
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| msg(format!("optimizer state: missing tensor `{name}`")))
    }
}

/// Slots for every parameter of every group; `None` until the parameter's first update.
#[derive(Debug, Clone)]
pub struct SlotTable {
    slots: Vec<Vec<Option<ParamSlot>>>,
}

impl SlotTable {
    /// An empty table shaped like `groups`.
    pub fn new(groups: &[ParamGroup]) -> Self {
        SlotTable { slots: groups.iter().map(|g| vec![None; g.vars.len()]).collect() }
    }

    pub fn get(&self, group: usize, index: usize) -> Option<&ParamSlot> {
        self.slots[group][index].as_ref()
    }

    pub fn set(&mut self, group: usize, index: usize, slot: ParamSlot) {
        self.slots[group][index] = Some(slot);
    }

    /// Every created slot with its (group, index).
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize, &ParamSlot)> {
        self.slots
            .iter()
            .enumerate()
            .flat_map(|(g, s)| s.iter().enumerate().filter_map(move |(i, slot)| slot.as_ref().map(|s| (g, i, s))))
    }

    /// One step of an optimizer whose parameters update independently: checks the inputs (every
    /// shape before the first update, so a bad gradient never leaves a step half applied), then
    /// replaces the slot of each parameter that has a gradient with `update(var, grad, lr, old
    /// slot)`.
    pub fn step_each(
        &mut self,
        optimizer: &str,
        groups: &[ParamGroup],
        grads: &[Vec<Option<Tensor>>],
        lrs: &[f64],
        mut update: impl FnMut(&Var, &Tensor, f64, Option<&ParamSlot>) -> Result<ParamSlot>,
    ) -> Result<()> {
        check_step_inputs(groups, grads, lrs)?;
        check_grad_shapes(optimizer, groups, grads)?;
        for (gi, group) in groups.iter().enumerate() {
            for (i, var) in group.vars.iter().enumerate() {
                let Some(grad) = &grads[gi][i] else { continue };
                let new = update(var, grad, lrs[gi], self.get(gi, i))?;
                self.set(gi, i, new);
            }
        }
        Ok(())
    }

    /// Applies updates computed for a whole step before any was applied (optimizers with
    /// step-wide statistics): each `(group, index, new parameter value, new slot)` is stored,
    /// the value cast to the parameter's dtype.
    pub fn commit(&mut self, groups: &[ParamGroup], updates: Vec<(usize, usize, Tensor, ParamSlot)>) -> Result<()> {
        for (gi, i, value, slot) in updates {
            let var = &groups[gi].vars[i];
            var.set(&value.to_dtype(var.dtype())?)?;
            self.set(gi, i, slot);
        }
        Ok(())
    }

    /// Writes every slot's tensors as `{group}.{index}.{name}` into `tensors` and returns the
    /// `"groups"` JSON list.
    pub fn save(&self, groups: &[ParamGroup], tensors: &mut BTreeMap<String, Tensor>) -> serde_json::Value {
        let mut out = Vec::new();
        for (group, slots) in groups.iter().zip(&self.slots) {
            let mut steps = Vec::new();
            for (i, slot) in slots.iter().enumerate() {
                steps.push(slot.as_ref().map_or(0, |s| s.step));
                if let Some(s) = slot {
                    for (name, t) in &s.tensors {
                        tensors.insert(format!("{}.{i}.{name}", group.name), t.clone());
                    }
                }
            }
            out.push(json!({"name": group.name, "lr": group.lr, "steps": steps}));
        }
        serde_json::Value::Array(out)
    }

    /// Reads back what [`SlotTable::save`] wrote. `check(name, tensor, group, index)` validates each
    /// tensor (expected names, shapes, dtypes) and may convert it (e.g. move it to the parameter's
    /// device); it is called once per saved tensor and every slot must then pass
    /// `complete(slot, key_prefix, group, index)` (all required names present; `key_prefix` is
    /// `{group}.{index}.`, for messages). Errors name the optimizer, the
    /// group and the tensor; tensors that belong to no parameter of this run are errors too.
    pub fn load(
        groups: &[ParamGroup],
        state: &OptimizerState,
        optimizer: &str,
        mut check: impl FnMut(&str, &Tensor, usize, usize) -> Result<Tensor>,
        mut complete: impl FnMut(&ParamSlot, &str, usize, usize) -> Result<()>,
    ) -> Result<Self> {
        let bad = |what: String| msg(format!("{optimizer} state: {what}"));
        let saved =
            state.scalars.get("groups").and_then(|v| v.as_array()).ok_or_else(|| bad("missing `groups`".into()))?;
        if saved.len() != groups.len() {
            return Err(bad(format!(
                "it has {} param groups, this run has {} ({})",
                saved.len(),
                groups.len(),
                groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let mut used = 0usize;
        let mut table = SlotTable::new(groups);
        for (gi, (group, saved)) in groups.iter().zip(saved).enumerate() {
            let name = saved.get("name").and_then(|v| v.as_str()).unwrap_or("");
            if name != group.name {
                return Err(bad(format!("param group `{name}` where this run has `{}`", group.name)));
            }
            let steps = saved
                .get("steps")
                .and_then(|v| v.as_array())
                .ok_or_else(|| bad(format!("group `{name}`: missing `steps`")))?;
            if steps.len() != group.vars.len() {
                return Err(bad(format!(
                    "group `{name}` has {} parameters, this run has {}",
                    steps.len(),
                    group.vars.len()
                )));
            }
            for (i, step) in steps.iter().enumerate() {
                let step = step.as_u64().ok_or_else(|| bad(format!("group `{name}`: bad step count {step}")))?;
                if step == 0 {
                    continue;
                }
                let prefix = format!("{name}.{i}.");
                let mut tensors = BTreeMap::new();
                for (key, t) in state.tensors.range(prefix.clone()..) {
                    let Some(rest) = key.strip_prefix(&prefix) else { break };
                    if rest.contains('.') {
                        continue;
                    }
                    let t = check(rest, t, gi, i).map_err(|e| bad(format!("tensor `{key}`: {e}")))?;
                    tensors.insert(rest.to_string(), t);
                    used += 1;
                }
                let slot = ParamSlot { step, tensors };
                complete(&slot, &prefix, gi, i).map_err(|e| bad(format!("group `{name}` parameter {i}: {e}")))?;
                table.slots[gi][i] = Some(slot);
            }
        }
        if used != state.tensors.len() {
            let extra = state
                .tensors
                .keys()
                .find(|k| {
                    !table.iter().any(|(g, i, s)| {
                        k.strip_prefix(&format!("{}.{i}.", groups[g].name)).is_some_and(|n| s.tensors.contains_key(n))
                    })
                })
                .cloned()
                .unwrap_or_default();
            return Err(bad(format!("unexpected tensor `{extra}` (no parameter of this run matches it)")));
        }
        Ok(table)
    }
}

/// The `check` of [`SlotTable::load`] for optimizers whose state tensors are f32 and shaped like
/// their parameter: verifies the shape, moves to the parameter's device and converts to f32.
pub fn param_shaped_f32(groups: &[ParamGroup]) -> impl FnMut(&str, &Tensor, usize, usize) -> Result<Tensor> + '_ {
    move |_name, t, g, i| {
        let var = &groups[g].vars[i];
        if t.dims() != var.dims() {
            return Err(msg(format!("shape {:?}, the parameter has {:?}", t.dims(), var.dims())));
        }
        t.to_device(var.device())?.to_dtype(candle_core::DType::F32)
    }
}

/// The `complete` of [`SlotTable::load`]: every slot has exactly `names`.
pub fn requires_tensors(names: &'static [&'static str]) -> impl FnMut(&ParamSlot, &str, usize, usize) -> Result<()> {
    move |slot, prefix, _, _| {
        if let Some(n) = names.iter().find(|n| !slot.tensors.contains_key(**n)) {
            return Err(msg(format!("missing tensor `{prefix}{n}`")));
        }
        if let Some(extra) = slot.tensors.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(msg(format!("unexpected tensor `{prefix}{extra}`")));
        }
        Ok(())
    }
}

/// Reads the `"optimizer"` entry of a state and errors unless it is `expected`.
pub fn check_state_owner(state: &OptimizerState, expected: &str) -> Result<()> {
    match state.scalars.get("optimizer").and_then(|v| v.as_str()) {
        Some(name) if name == expected => Ok(()),
        Some(other) => Err(msg(format!(
            "{expected} state: it was saved by the {other} optimizer; resume with optimizer_type = {other:?} or start \
             a new run"
        ))),
        None => Err(msg(format!("{expected} state: missing `optimizer` entry; not an optimizer state"))),
    }
}

/// Group names must be unique (they name state entries) and base lrs finite and ≥ 0.
pub fn check_groups(groups: &[ParamGroup]) -> Result<()> {
    for (i, g) in groups.iter().enumerate() {
        if !(g.lr >= 0.0 && g.lr.is_finite()) {
            return Err(msg(format!("param group `{}`: Invalid learning rate: {}", g.name, g.lr)));
        }
        if groups[..i].iter().any(|o| o.name == g.name) {
            return Err(msg(format!("two param groups are named `{}`; group names must be unique", g.name)));
        }
    }
    Ok(())
}

/// Base lrs must be > 0 (D-adaptation and schedule-free libraries refuse 0 with this message).
pub fn check_positive_lrs(groups: &[ParamGroup]) -> Result<()> {
    match groups.iter().find(|g| !super::prodigy::is_positive(g.lr)) {
        Some(g) => {
            Err(msg(format!("param group `{}`: Invalid learning rate: {}", g.name, super::python_float_repr(g.lr))))
        }
        None => Ok(()),
    }
}

/// Every gradient's shape equals its parameter's (checked for all before any update, so a bad
/// gradient never leaves a step half applied).
pub fn check_grad_shapes(optimizer: &str, groups: &[ParamGroup], grads: &[Vec<Option<Tensor>>]) -> Result<()> {
    for (group, group_grads) in groups.iter().zip(grads) {
        for (i, (var, grad)) in group.vars.iter().zip(group_grads).enumerate() {
            if let Some(grad) = grad {
                if grad.dims() != var.dims() {
                    return Err(msg(format!(
                        "{optimizer}: gradient {i} of group `{}` has shape {:?}, the parameter has {:?}",
                        group.name,
                        grad.dims(),
                        var.dims()
                    )));
                }
            }
        }
    }
    Ok(())
}
