//! The rectified-flow objective inside the training loop, before a Flux model exists: the tiny
//! SD1.5-shaped model wrapped to declare sd-scripts' Flux objective (its UNet takes σ·1000 as a
//! timestep like any float), trained end to end through `Trainer::micro_step`. The objective's
//! numbers themselves are checked against sd-scripts in tests/objective.rs.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use lorakit_models::pipeline::{GenerateRequest, RgbImage};
use lorakit_nn::{ForwardCtx, LoraSet};
use lorakit_train::data::{rng_for, stream, TrainData};
use lorakit_train::model::{Component, Conditioning, FamilyInfo, SizeCondition, StableDiffusionModel, TrainableModel};
use lorakit_train::objective::{FlowFamily, NoiseLevels, Objective, ObjectiveKind};
use lorakit_train::{Result, TrainConfig, Trainer};
use rand::rngs::StdRng;

use crate::common;
use common::{assert_resume_is_exact, chessboard_dataset, repo, small_run_toml, train};

/// What the denoiser was given in one call.
#[derive(Debug, Clone)]
struct Call {
    dims: Vec<usize>,
    timesteps: Vec<f32>,
    guidance: Option<Vec<f32>>,
}

/// The tiny SD model, trained with the Flux objective; records every denoiser call.
struct FlowSd {
    inner: StableDiffusionModel,
    calls: Mutex<Vec<Call>>,
}

impl TrainableModel for FlowSd {
    fn info(&self) -> FamilyInfo {
        self.inner.info()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn objective(&self) -> ObjectiveKind {
        ObjectiveKind::Flow(FlowFamily::Flux)
    }
    fn components(&self) -> Vec<Component> {
        self.inner.components()
    }
    fn encode_images(&self, pixels: &Tensor, rng: &mut StdRng) -> Result<Tensor> {
        self.inner.encode_images(pixels, rng)
    }
    fn encode_text(
        &self,
        captions: &[&str],
        max_token_length: usize,
        clip_skip: Option<usize>,
        ctxs: &[ForwardCtx],
    ) -> Result<Conditioning> {
        self.inner.encode_text(captions, max_token_length, clip_skip, ctxs)
    }
    fn denoise(
        &self,
        noisy: &Tensor,
        timesteps: &Tensor,
        guidance: Option<&Tensor>,
        cond: &Conditioning,
        sizes: &[SizeCondition],
        ctxs: &[ForwardCtx],
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Tensor> {
        self.calls.lock().unwrap().push(Call {
            dims: noisy.dims().to_vec(),
            timesteps: timesteps.to_vec1()?,
            guidance: guidance.map(|g| g.to_vec1()).transpose()?,
        });
        self.inner.denoise(noisy, timesteps, guidance, cond, sizes, ctxs, rng)
    }
    fn sample(&self, request: &GenerateRequest, sets: &[Arc<LoraSet>]) -> Result<RgbImage> {
        self.inner.sample(request, sets)
    }
    fn vae_fingerprint(&self) -> String {
        self.inner.vae_fingerprint()
    }
    fn latent_factor(&self) -> u32 {
        self.inner.latent_factor()
    }
    fn parameter_counts(&self) -> (usize, usize) {
        self.inner.parameter_counts()
    }
    fn text_encoder_parameter_count(&self) -> usize {
        self.inner.text_encoder_parameter_count()
    }
    fn activation_scale(&self) -> f64 {
        self.inner.activation_scale()
    }
}

fn flow_model() -> FlowSd {
    let inner =
        StableDiffusionModel::load(&repo("examples/quickstart/tiny-sd15"), DType::F32, &Device::Cpu, false).unwrap();
    FlowSd { inner, calls: Mutex::new(Vec::new()) }
}

fn config(dir: &std::path::Path, extra: &str) -> TrainConfig {
    let data = chessboard_dataset(dir, 2, 4);
    let text = format!("{}\n{extra}", small_run_toml(dir, &data, &repo("examples/quickstart/tiny-sd15")));
    TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{e}"))
}

const FLOW: &str = "[flow]\ntimestep_sampling = \"shift\"\ndiscrete_flow_shift = 3.1582\nguidance_scale = 2.5\n\
                    [loss]\nloss_type = \"huber\"\nhuber_schedule = \"exponential\"\nip_noise_gamma = 0.05\n";

#[test]
fn the_loop_noises_with_the_flow_objective_and_hands_its_timesteps_and_guidance_to_the_denoiser() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), FLOW);
    let model = flow_model();
    let summary = train(cfg.clone(), &model, None);
    assert_eq!(summary.steps, 8);
    assert!(summary.losses.iter().all(|l| l.is_finite()), "{:?}", summary.losses);

    let calls = model.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 8, "one denoiser call per micro-batch");
    // The first micro-step's levels are the objective's draw from that step's noise stream:
    // the loop calls the seam, with nothing of its own in between.
    let (objective, _) = Objective::new(model.objective(), &cfg).unwrap();
    let latents = Tensor::zeros(calls[0].dims.as_slice(), DType::F32, &Device::Cpu).unwrap();
    let noised = objective.noise(&latents, &mut rng_for(&[cfg.training.seed, stream::NOISE, 0, 0])).unwrap();
    let NoiseLevels::Flow(levels) = &noised.levels else { panic!("flow levels") };
    assert_eq!(calls[0].timesteps, levels.iter().map(|l| l.timestep).collect::<Vec<_>>());
    for call in &calls {
        // σ·1000 from the shifted sigmoid: continuous, inside (0, 1000).
        assert!(call.timesteps.iter().all(|t| *t > 0.0 && *t < 1000.0), "{:?}", call.timesteps);
        assert!(call.timesteps.iter().any(|t| t.fract() != 0.0), "{:?}", call.timesteps);
        assert_eq!(call.guidance.as_deref(), Some([2.5f32, 2.5].as_slice()), "guidance_scale per sample");
    }
}

#[test]
fn a_flow_run_resumes_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("save_state = true\n{FLOW}"));
    let model = flow_model();
    assert_resume_is_exact(&cfg, &model, dir.path(), 3);
}

#[test]
fn trainer_refuses_options_of_the_other_objective() {
    let dir = tempfile::tempdir().unwrap();
    let error = |model: &dyn TrainableModel, extra: &str| {
        let cfg = config(dir.path(), extra);
        let data = TrainData::load(&cfg).unwrap();
        match Trainer::new(cfg, model, data) {
            Ok(_) => panic!("accepted {extra}"),
            Err(e) => e.to_string(),
        }
    };
    let flow = flow_model();
    let e = error(&flow, "[loss]\nmin_snr_gamma = 5.0\nnoise_offset = 0.05\n");
    assert!(e.contains("loss.min_snr_gamma") && e.contains("loss.noise_offset"), "{e}");
    let e = error(&flow.inner, "[flow]\ntimestep_sampling = \"shift\"\n");
    assert!(e.contains("flow.timestep_sampling") && e.contains("DDPM"), "{e}");
}
