//! When a run saves and samples: the one set of rules the training loop follows and the dry
//! run's plan (and the GUI's run-plan panel) lists, so what is announced is what happens.
//!
//! Steps and epochs count from 1 (step `s` is the `s`-th optimizer step done; epoch `e` the
//! `e`-th finished).

use crate::config::TrainConfig;

/// A LoRA (and, with `save_state`, a state) is saved after step `step` of `total` —
/// every `save_every_n_steps`, not at the last step (the final save covers it).
pub fn saves_after_step(config: &TrainConfig, step: u64, total: u64) -> bool {
    let n = config.save.save_every_n_steps;
    n > 0 && step % n == 0 && step < total
}

/// A LoRA is saved after epoch `epoch` of `epochs` — every `save_every_n_epochs`, not after the
/// last (the final save covers it).
pub fn saves_after_epoch(config: &TrainConfig, epoch: u64, epochs: u64) -> bool {
    let every = config.save.save_every_n_epochs;
    every > 0 && epoch % every == 0 && epoch < epochs
}

/// The sample prompts are rendered after step `step`: every `sample_every_n_steps`, unless
/// epochs are the unit (`sample_every_n_epochs` wins, as in sd-scripts).
pub fn samples_after_step(config: &TrainConfig, step: u64) -> bool {
    let s = &config.samples;
    s.sample_every_n_epochs == 0 && s.sample_every_n_steps > 0 && step % s.sample_every_n_steps == 0
}

/// The sample prompts are rendered after epoch `epoch`: every `sample_every_n_epochs`.
pub fn samples_after_epoch(config: &TrainConfig, epoch: u64) -> bool {
    let every = config.samples.sample_every_n_epochs;
    every > 0 && epoch % every == 0
}

/// Every save of a run of `steps` steps over `epochs` epochs, in the words of a plan:
/// `step 100`, `epoch 2`, `end`.
pub fn save_points(config: &TrainConfig, steps: u64, epochs: u64) -> Vec<String> {
    let mut out: Vec<String> =
        (1..steps).filter(|s| saves_after_step(config, *s, steps)).map(|s| format!("step {s}")).collect();
    out.extend((1..=epochs).filter(|e| saves_after_epoch(config, *e, epochs)).map(|e| format!("epoch {e}")));
    out.push("end".into());
    out
}

/// Every time a run renders its sample prompts (none without `samples.sample_prompts`):
/// `start`, `step 100`, `epoch 2`.
pub fn sample_points(config: &TrainConfig, steps: u64, epochs: u64) -> Vec<String> {
    if config.samples.sample_prompts.is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if config.samples.sample_at_first {
        out.push("start".into());
    }
    out.extend((1..=steps).filter(|s| samples_after_step(config, *s)).map(|s| format!("step {s}")));
    out.extend((1..=epochs).filter(|e| samples_after_epoch(config, *e)).map(|e| format!("epoch {e}")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_follow_the_rules() {
        let mut c = TrainConfig::default();
        c.save.save_every_n_steps = 5;
        c.save.save_every_n_epochs = 1;
        assert_eq!(save_points(&c, 12, 3), ["step 5", "step 10", "epoch 1", "epoch 2", "end"]);
        // A step save never falls on the last step.
        assert_eq!(save_points(&c, 10, 1), ["step 5", "end"]);
        assert!(sample_points(&c, 12, 3).is_empty(), "no prompts, no samples");
        c.samples.sample_prompts = Some("p.txt".into());
        c.samples.sample_every_n_steps = 4;
        assert_eq!(sample_points(&c, 12, 3), ["step 4", "step 8", "step 12"]);
        c.samples.sample_every_n_epochs = 2;
        c.samples.sample_at_first = true;
        assert_eq!(sample_points(&c, 12, 3), ["start", "epoch 2"], "epochs win over steps");
    }
}
