//! The optimizer's parameter groups, formed as sd-scripts' `LoRANetwork.prepare_optimizer_params`
//! forms them (spec §8.3, §2.5, §2.6): text-encoder modules first, then the U-Net's — one group
//! per U-Net block slot when block LR weights are set — each split into a LoRA+ `plus` group of
//! `up` matrices when a LoRA+ ratio applies; groups whose learning rate is 0 are dropped (their
//! modules stay in the network and are saved unchanged). LyCORIS modules are grouped as LyCORIS
//! 3.2's `prepare_optimizer_params` groups them: every factor in its component's group, except
//! that a LoRA+ ratio moves `lora_up` weights (LyCORIS' LoCon) to the `plus` group.

use candle_core::Var;
use lorakit_lora::blocks::BlockLayout;
use lorakit_nn::lora::LoraSet;
use lorakit_nn::optim::ParamGroup;

/// One model component's trained LoRA modules.
pub struct ComponentNetwork<'a> {
    /// The component's index in the model (what gradients are looked up through).
    pub component: usize,
    pub is_text_encoder: bool,
    pub set: &'a LoraSet,
}

/// Learning rates and ratios the groups are formed with.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRates {
    /// One rate per text encoder, in model order (the last repeats for further encoders).
    pub text_encoder_lrs: Vec<f64>,
    pub unet_lr: f64,
    /// LoRA+ ratio of the text encoder's `up` matrices (`None`: no plus group).
    pub text_encoder_plus_ratio: Option<f64>,
    pub unet_plus_ratio: Option<f64>,
    /// Block LR weights per slot with the layout they are indexed by.
    pub block_lr_weights: Option<(BlockLayout, Vec<f64>)>,
}

/// A group plus, for each of its parameters, the component whose graph holds its gradient.
#[derive(Debug, Clone)]
pub struct PlannedGroup {
    pub group: ParamGroup,
    pub components: Vec<usize>,
}

/// Groups for `networks` (in model order) with sd-scripts' names: `textencoder`, `unet`,
/// `unet_block{slot}`, each optionally followed by a `… plus` group. Text encoders trained at
/// different rates (SDXL's `text_encoder_lr = [a, b]`) get one group each, `textencoder1`,
/// `textencoder2`, as sd-scripts' multi-encoder networks name them.
pub fn plan_groups(networks: &[ComponentNetwork], rates: &GroupRates) -> Vec<PlannedGroup> {
    let mut out = Vec::new();
    // Modules with their component, text encoders first: (component, module name, the
    // parameters of the main group, the LoRA+ `up` matrix).
    type Entry<'a> = (usize, &'a str, Vec<Var>, Option<Var>);
    let modules = |te: bool, only: Option<usize>| -> Vec<Entry> {
        let mut out = Vec::new();
        for n in networks.iter().filter(|n| n.is_text_encoder == te && only.is_none_or(|c| c == n.component)) {
            for m in n.set.modules().iter().filter(|m| m.is_trainable()) {
                out.push((n.component, m.name(), vec![m.down().clone()], Some(m.up().clone())));
            }
            for m in n.set.lycoris_modules().iter().filter(|m| m.is_trainable()) {
                let (up, main): (Vec<_>, Vec<_>) = m.factors().iter().partition(|(k, _)| k.starts_with("lora_up"));
                let main = main.into_iter().map(|(_, v)| v.clone()).collect();
                out.push((n.component, m.name(), main, up.first().map(|(_, v)| v.clone())));
            }
        }
        out
    };
    let mut assemble = |name: &str, entries: &[Entry], lr: f64, ratio: Option<f64>| {
        let mut lora = (Vec::<Var>::new(), Vec::new());
        let mut plus = (Vec::<Var>::new(), Vec::new());
        for (component, _, main, up) in entries {
            for v in main {
                lora.0.push(v.clone());
                lora.1.push(*component);
            }
            if let Some(up) = up {
                let up_target = if ratio.is_some() { &mut plus } else { &mut lora };
                up_target.0.push(up.clone());
                up_target.1.push(*component);
            }
        }
        for (suffix, (vars, components), group_lr) in [("", lora, lr), (" plus", plus, lr * ratio.unwrap_or(1.0))] {
            if vars.is_empty() || group_lr == 0.0 {
                continue;
            }
            out.push(PlannedGroup {
                group: ParamGroup { name: format!("{name}{suffix}"), vars, lr: group_lr },
                components,
            });
        }
    };
    let encoders: Vec<usize> = networks.iter().filter(|n| n.is_text_encoder).map(|n| n.component).collect();
    let lr_of = |k: usize| rates.text_encoder_lrs.get(k).or(rates.text_encoder_lrs.last()).copied().unwrap_or(0.0);
    if (0..encoders.len()).all(|k| lr_of(k) == lr_of(0)) {
        let te = modules(true, None);
        if !te.is_empty() {
            assemble("textencoder", &te, lr_of(0), rates.text_encoder_plus_ratio);
        }
    } else {
        for (k, &component) in encoders.iter().enumerate() {
            let te = modules(true, Some(component));
            if !te.is_empty() {
                assemble(&format!("textencoder{}", k + 1), &te, lr_of(k), rates.text_encoder_plus_ratio);
            }
        }
    }
    let unet = modules(false, None);
    if !unet.is_empty() {
        match &rates.block_lr_weights {
            None => assemble("unet", &unet, rates.unet_lr, rates.unet_plus_ratio),
            Some((layout, weights)) => {
                // Slots in order of first appearance, as sd-scripts' dict of blocks.
                let mut slots: Vec<(Option<usize>, Vec<Entry>)> = Vec::new();
                for e in &unet {
                    let slot = layout.slot(e.1);
                    match slots.iter_mut().find(|(s, _)| *s == slot) {
                        Some((_, list)) => list.push(e.clone()),
                        None => slots.push((slot, vec![e.clone()])),
                    }
                }
                for (slot, entries) in slots {
                    // sd-scripts indexes the weight list with −1 (its last entry) for a module
                    // outside the numbered blocks.
                    let (label, weight) = match slot {
                        Some(s) => (s.to_string(), weights[s]),
                        None => ("-1".to_string(), *weights.last().unwrap_or(&1.0)),
                    };
                    assemble(&format!("unet_block{label}"), &entries, rates.unet_lr * weight, rates.unet_plus_ratio);
                }
            }
        }
    }
    out
}
