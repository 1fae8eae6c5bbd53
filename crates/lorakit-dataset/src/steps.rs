//! Step and epoch arithmetic, as sd-scripts computes it (spec §5.6): batches
//! per epoch, optimizer steps per epoch under gradient accumulation, and how
//! `max_train_epochs` / `max_train_steps` decide the length of the run.

use serde::Serialize;

/// sd-scripts' default `--max_train_steps` when neither steps nor epochs are given.
pub const SD_SCRIPTS_DEFAULT_MAX_TRAIN_STEPS: u64 = 1600;

/// The most samples (images × repeats, regularisation included) one epoch may hold.
///
/// Training lays out one epoch's order in memory (about 64 bytes a sample at batch size 1), so
/// this bounds that to well under a gigabyte; it is far beyond real datasets (100,000 images ×
/// 10 repeats is 1,000,000) and beyond what can be trained (10 million samples at one second
/// each is four months per epoch). Larger counts are typos such as `99999999_name` folders, and
/// are refused by name instead of exhausting memory.
pub const MAX_SAMPLES_PER_EPOCH: u64 = 10_000_000;

/// A run length that cannot be represented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// `max_train_epochs × steps per epoch` does not fit in 64 bits.
    #[error(
        "max_train_epochs = {epochs} with {steps_per_epoch} steps per epoch is more than {} optimizer steps: \
         set a realistic number of epochs",
        u64::MAX
    )]
    Overflow {
        /// The requested epochs.
        epochs: u64,
        /// Optimizer steps per epoch.
        steps_per_epoch: u64,
    },
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepRequest {
    /// `max_train_epochs` (wins over `max_train_steps`, as in sd-scripts).
    pub max_train_epochs: Option<u64>,
    /// `max_train_steps` (sd-scripts default 1600 when neither is set).
    pub max_train_steps: Option<u64>,
    /// `gradient_accumulation_steps` (at least 1).
    pub gradient_accumulation_steps: u64,
}

/// Which setting decided the run's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthSource {
    /// `max_train_epochs`.
    Epochs,
    /// `max_train_steps`.
    Steps,
    /// Neither was set: sd-scripts' default of 1600 steps.
    DefaultSteps,
}

/// The planned length of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepPlan {
    /// Batches the data loader yields per epoch.
    pub batches_per_epoch: u64,
    /// Gradient accumulation steps.
    pub gradient_accumulation_steps: u64,
    /// Optimizer steps per epoch: ceil(batches / accumulation).
    pub steps_per_epoch: u64,
    /// Total optimizer steps.
    pub max_train_steps: u64,
    /// Epochs the loop runs: ceil(total steps / steps per epoch).
    pub epochs: u64,
    /// Optimizer steps in the last epoch (the run stops mid-epoch when they differ).
    pub last_epoch_steps: u64,
    /// Which setting decided the length.
    pub source: LengthSource,
}

impl StepPlan {
    /// Computes the plan for `batches_per_epoch` batches (one process), refusing an epoch count
    /// whose step total does not fit in 64 bits.
    pub fn try_new(batches_per_epoch: u64, request: StepRequest) -> Result<StepPlan, StepError> {
        let ga = request.gradient_accumulation_steps.max(1);
        let steps_per_epoch = batches_per_epoch.div_ceil(ga);
        let (max_train_steps, source) = match (request.max_train_epochs, request.max_train_steps) {
            (Some(epochs), _) => (
                epochs.checked_mul(steps_per_epoch).ok_or(StepError::Overflow { epochs, steps_per_epoch })?,
                LengthSource::Epochs,
            ),
            (None, Some(s)) => (s, LengthSource::Steps),
            (None, None) => (SD_SCRIPTS_DEFAULT_MAX_TRAIN_STEPS, LengthSource::DefaultSteps),
        };
        let epochs = if steps_per_epoch == 0 { 0 } else { max_train_steps.div_ceil(steps_per_epoch) };
        let last_epoch_steps = if epochs == 0 { 0 } else { max_train_steps - (epochs - 1) * steps_per_epoch };
        Ok(StepPlan {
            batches_per_epoch,
            gradient_accumulation_steps: ga,
            steps_per_epoch,
            max_train_steps,
            epochs,
            last_epoch_steps,
            source,
        })
    }

    /// [`StepPlan::try_new`] for a request already checked by it (training checks it when the
    /// dataset is loaded: `lorakit_train::data::TrainData::load`). Should it overflow anyway,
    /// the plan has zero steps, which every caller refuses as "nothing to train" — never a
    /// clamped or wrapped length.
    pub fn new(batches_per_epoch: u64, request: StepRequest) -> StepPlan {
        Self::try_new(batches_per_epoch, request).unwrap_or_else(|StepError::Overflow { steps_per_epoch, .. }| {
            StepPlan {
                batches_per_epoch,
                gradient_accumulation_steps: request.gradient_accumulation_steps.max(1),
                steps_per_epoch,
                max_train_steps: 0,
                epochs: 0,
                last_epoch_steps: 0,
                source: LengthSource::Epochs,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_decide_steps() {
        let p = StepPlan::new(
            82,
            StepRequest { max_train_epochs: Some(10), max_train_steps: Some(5), gradient_accumulation_steps: 4 },
        );
        assert_eq!(p.steps_per_epoch, 21);
        assert_eq!(p.max_train_steps, 210);
        assert_eq!(p.epochs, 10);
        assert_eq!(p.last_epoch_steps, 21);
        assert_eq!(p.source, LengthSource::Epochs);
    }

    #[test]
    fn steps_give_partial_last_epoch() {
        let p = StepPlan::new(
            82,
            StepRequest { max_train_epochs: None, max_train_steps: Some(100), gradient_accumulation_steps: 1 },
        );
        assert_eq!((p.epochs, p.last_epoch_steps), (2, 18));
    }

    #[test]
    fn step_totals_that_overflow_are_errors() {
        let request =
            StepRequest { max_train_epochs: Some(u64::MAX / 2), gradient_accumulation_steps: 1, ..Default::default() };
        let err = StepPlan::try_new(3, request).unwrap_err();
        assert_eq!(err, StepError::Overflow { epochs: u64::MAX / 2, steps_per_epoch: 3 });
        assert!(err.to_string().contains("max_train_epochs"), "{err}");
        // Never a wrapped length: the unchecked constructor plans nothing instead.
        assert_eq!(StepPlan::new(3, request).max_train_steps, 0);
        assert_eq!(StepPlan::try_new(1, request).unwrap().max_train_steps, u64::MAX / 2);
    }

    #[test]
    fn default_is_1600_and_zero_means_nothing() {
        let p = StepPlan::new(10, StepRequest { gradient_accumulation_steps: 1, ..Default::default() });
        assert_eq!((p.max_train_steps, p.epochs, p.source), (1600, 160, LengthSource::DefaultSteps));
        let p = StepPlan::new(
            10,
            StepRequest { max_train_epochs: None, max_train_steps: Some(0), gradient_accumulation_steps: 1 },
        );
        assert_eq!((p.max_train_steps, p.epochs), (0, 0));
        let p = StepPlan::new(0, StepRequest { max_train_epochs: Some(3), ..Default::default() });
        assert_eq!((p.steps_per_epoch, p.max_train_steps, p.epochs), (0, 0, 0));
    }
}
