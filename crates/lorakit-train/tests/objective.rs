//! The training objective seam: rectified flow against sd-scripts' own functions on the same
//! inputs and random draws (tools/reference/flow_objective_fixture.py →
//! tests/fixtures/reference/flow_objective), its σ tables against diffusers', its own draws
//! against the distributions of sd-scripts' samplers, the option checks of each objective, and
//! the DDPM objective against the loop's computation before the seam existed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lorakit_models::schedule::{NoiseSchedule, Prediction};
use lorakit_train::loss::{batch_loss, huber_thresholds_at};
use lorakit_train::noise::sample_noise;
use lorakit_train::objective::{
    FlowFamily, FlowLevel, FlowMatchSchedule, FlowObjective, ModelPredictionType, NoiseLevels, Objective, ObjectiveKind,
};
use lorakit_train::TrainConfig;
use rand::{Rng, SeedableRng};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/flow_objective").join(rel)
}

fn load() -> (HashMap<String, Tensor>, serde_json::Value) {
    let t = candle_core::safetensors::load(fixture("tensors.safetensors"), &Device::Cpu).unwrap();
    let j = serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
    (t, j)
}

fn vec1(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest |a − b| relative to the reference's magnitude (at least 1).
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0)
}

/// A config with sd-scripts' option values of a fixture case, as TOML under [flow] / [loss] /
/// [training].
fn config_for(family: &str, o: &serde_json::Value) -> TrainConfig {
    let s = |k: &str| o[k].as_str().unwrap().to_string();
    let f = |k: &str| o[k].as_f64().unwrap();
    let mut text = String::from("[flow]\n");
    text += &format!("weighting_scheme = {:?}\n", s("weighting_scheme"));
    text += &format!(
        "logit_mean = {:?}\nlogit_std = {:?}\nmode_scale = {:?}\n",
        f("logit_mean"),
        f("logit_std"),
        f("mode_scale")
    );
    if family == "flux" {
        text += &format!("timestep_sampling = {:?}\n", s("timestep_sampling"));
        text += &format!(
            "sigmoid_scale = {:?}\ndiscrete_flow_shift = {:?}\n",
            f("sigmoid_scale"),
            f("discrete_flow_shift")
        );
        text += &format!("model_prediction_type = {:?}\n", s("model_prediction_type"));
    } else {
        text += &format!("training_shift = {:?}\n", f("training_shift"));
    }
    text += "[loss]\n";
    text += &format!("loss_type = {:?}\nhuber_schedule = {:?}\n", s("loss_type"), s("huber_schedule"));
    text += &format!("huber_c = {:?}\nhuber_scale = {:?}\n", f("huber_c"), f("huber_scale"));
    if let Some(g) = o.get("ip_noise_gamma").and_then(|v| v.as_f64()) {
        text += &format!("ip_noise_gamma = {g:?}\n");
        text +=
            &format!("ip_noise_gamma_random_strength = {}\n", o["ip_noise_gamma_random_strength"].as_bool().unwrap());
    }
    text += "[training]\n";
    if let Some(v) = o.get("min_timestep").and_then(|v| v.as_u64()) {
        text += &format!("min_timestep = {v}\n");
    }
    if let Some(v) = o.get("max_timestep").and_then(|v| v.as_u64()) {
        text += &format!("max_timestep = {v}\n");
    }
    TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn family_of(name: &str) -> FlowFamily {
    if name == "flux" {
        FlowFamily::Flux
    } else {
        FlowFamily::Sd3
    }
}

fn flow_objective(family: &str, options: &serde_json::Value) -> (Objective, FlowObjective) {
    let (objective, _) = Objective::new(ObjectiveKind::Flow(family_of(family)), &config_for(family, options)).unwrap();
    let Objective::Flow(flow) = objective.clone() else { panic!("a flow objective") };
    (objective, flow)
}

fn assert_levels(name: &str, got: &[FlowLevel], sigmas: &[f32], timesteps: &[f32]) {
    assert_eq!(got.len(), sigmas.len(), "{name}");
    for (i, l) in got.iter().enumerate() {
        assert!((l.sigma - sigmas[i]).abs() <= 1e-6, "{name}[{i}]: σ {} vs sd-scripts {}", l.sigma, sigmas[i]);
        assert!(
            (l.timestep - timesteps[i]).abs() <= 1e-6 * timesteps[i].abs().max(1.0),
            "{name}[{i}]: timestep {} vs sd-scripts {}",
            l.timestep,
            timesteps[i]
        );
    }
}

#[test]
fn flow_objective_matches_sd_scripts_on_the_same_draws() {
    let (t, j) = load();
    let shape: Vec<usize> = j["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let (h, w) = (shape[2], shape[3]);
    let weights: Vec<f64> = vec1(&t["loss_weights"]).iter().map(|&v| f64::from(v)).collect();
    let cases = j["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 15);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let family = case["family"].as_str().unwrap();
        let o = &case["options"];
        let (objective, flow) = flow_objective(family, o);
        let key = |k: &str| t.get(&format!("{name}.{k}")).unwrap_or_else(|| panic!("{name}.{k}"));
        assert_eq!(flow.draws_normal(), case["level_draw"] == "normal", "{name}: the kind of draw sd-scripts makes");

        let levels = flow.levels(&vec1(key("level_draws")), h, w);
        assert_levels(name, &levels, &vec1(key("sigmas")), &vec1(key("timesteps")));

        let ip = t.get(&format!("{name}.xi")).map(|xi| {
            let gamma = o["ip_noise_gamma"].as_f64().unwrap() as f32;
            // sd-scripts: torch.rand(1) * ip_noise_gamma with the random strength.
            let gamma = match case["ip_strength_draw"].as_f64() {
                Some(u) => u as f32 * gamma,
                None => gamma,
            };
            (xi, gamma)
        });
        let noised = flow.noised(&t["latents"], &t["noise"], levels, ip).unwrap();
        assert!(max_diff(&noised.noisy, key("noisy")) <= 1e-6, "{name}: noisy input");
        assert!(max_diff(&noised.target, key("target")) <= 1e-6, "{name}: target");
        assert_eq!(vec1(&noised.timesteps), vec1(key("timesteps")), "{name}: the denoiser's timesteps");
        match family {
            "flux" => assert_eq!(vec1(noised.guidance.as_ref().unwrap()), vec![1.0; shape[0]], "{name}: guidance"),
            _ => assert!(noised.guidance.is_none(), "{name}: SD3 has no guidance"),
        }

        let (pred, weighting) = flow.precondition(&t["model_pred"], &noised).unwrap();
        assert!(max_diff(&pred, key("pred")) <= 1e-6, "{name}: preconditioned prediction");
        match (weighting, case["weighting"].as_array()) {
            (Some(got), Some(want)) => {
                for (g, w) in got.iter().zip(want) {
                    let w = w.as_f64().unwrap();
                    assert!((g - w).abs() <= 1e-6 * w.abs(), "{name}: weighting {g} vs sd-scripts {w}");
                }
            }
            (None, None) => {}
            (got, want) => panic!("{name}: weighting {got:?} vs sd-scripts {want:?}"),
        }
        if let Some(want) = case["huber_c"].as_array() {
            let got = huber_thresholds_at(&flow.loss, &vec1(&noised.timesteps), 1000.0).unwrap().unwrap();
            for (g, w) in got.iter().zip(want) {
                let w = w.as_f64().unwrap();
                assert!((g - w).abs() <= 1e-6 * w.abs(), "{name}: Huber c {g} vs sd-scripts {w}");
            }
        }

        let loss = objective.loss(&t["model_pred"], &noised, &weights, None).unwrap().to_scalar::<f32>().unwrap();
        let want = case["loss"].as_f64().unwrap() as f32;
        assert!((loss - want).abs() <= 2e-6 * want.abs(), "{name}: loss {loss} vs sd-scripts {want}");
    }
}

#[test]
fn flux_shift_uses_the_packed_sequence_length() {
    let (t, j) = load();
    let shape: Vec<usize> =
        j["flux_shift_large"]["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let options = serde_json::json!({
        "timestep_sampling": "flux_shift", "sigmoid_scale": 1.0, "discrete_flow_shift": 3.0,
        "model_prediction_type": "raw", "weighting_scheme": "uniform", "logit_mean": 0.0, "logit_std": 1.0,
        "mode_scale": 1.29, "loss_type": "l2", "huber_schedule": "exponential", "huber_c": 0.1, "huber_scale": 1.0
    });
    let (_, flow) = flow_objective("flux", &options);
    let draws = vec1(&t["flux_shift_large.level_draws"]);
    let levels = flow.levels(&draws, shape[2], shape[3]);
    let sigmas = vec1(&t["flux_shift_large.sigmas"]);
    assert_levels("flux_shift_large", &levels, &sigmas, &vec1(&t["flux_shift_large.timesteps"]));
    // The same draws on the small latents shift less (μ grows with the sequence length).
    let small = flow.levels(&draws, 8, 12);
    assert!(small.iter().zip(&levels).all(|(s, l)| s.sigma < l.sigma));
}

#[test]
fn sigma_tables_equal_diffusers_flow_match_euler_discrete() {
    let (t, j) = load();
    for shift in j["tables"].as_array().unwrap() {
        let shift = shift.as_f64().unwrap();
        let table = FlowMatchSchedule::new(1000, shift);
        let key = format!("table_{}", if shift.fract() == 0.0 { format!("{shift:.1}") } else { shift.to_string() });
        assert_eq!(table.sigmas(), vec1(&t[&format!("{key}.sigmas")]).as_slice(), "σ table, shift {shift}");
        assert_eq!(table.timesteps(), vec1(&t[&format!("{key}.timesteps")]).as_slice(), "timesteps, shift {shift}");
    }
}

#[test]
fn own_draws_follow_sd_scripts_distributions() {
    let (_, j) = load();
    for d in j["distributions"].as_array().unwrap() {
        let name = d["name"].as_str().unwrap();
        let (_, flow) = flow_objective(d["family"].as_str().unwrap(), &d["options"]);
        let n = d["n"].as_u64().unwrap() as usize;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut s: Vec<f64> = flow.draw_levels(n, 8, 12, &mut rng).iter().map(|l| f64::from(l.sigma)).collect();
        let mean = s.iter().sum::<f64>() / n as f64;
        let std = (s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        s.sort_by(f64::total_cmp);
        let (want_mean, want_std) = (d["mean"].as_f64().unwrap(), d["std"].as_f64().unwrap());
        assert!((mean - want_mean).abs() < 3e-3, "{name}: mean σ {mean} vs sd-scripts {want_mean}");
        assert!((std - want_std).abs() < 3e-3, "{name}: std σ {std} vs sd-scripts {want_std}");
        for (q, want) in [0.1, 0.5, 0.9].iter().zip(d["quantiles"].as_array().unwrap()) {
            let got = s[(q * (n - 1) as f64).round() as usize];
            let want = want.as_f64().unwrap();
            assert!((got - want).abs() < 6e-3, "{name}: σ quantile {q} {got} vs sd-scripts {want}");
        }
    }
}

fn config(text: &str) -> TrainConfig {
    TrainConfig::from_toml_str(text, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn ddpm() -> ObjectiveKind {
    ObjectiveKind::Ddpm { schedule: NoiseSchedule::sd_default(), prediction: Prediction::Epsilon }
}

fn refusal(kind: ObjectiveKind, text: &str) -> String {
    match Objective::new(kind, &config(text)) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn each_objective_refuses_the_options_of_the_other() {
    let flux = || ObjectiveKind::Flow(FlowFamily::Flux);
    let sd3 = || ObjectiveKind::Flow(FlowFamily::Sd3);
    // Flow options on a DDPM model, each named.
    let e = refusal(ddpm(), "[flow]\ntimestep_sampling = \"shift\"\nguidance_scale = 3.5\n");
    assert!(e.contains("flow.timestep_sampling") && e.contains("flow.guidance_scale") && e.contains("DDPM"), "{e}");
    // DDPM options on Flux.
    for (text, key) in [
        ("[loss]\nmin_snr_gamma = 5.0\n", "loss.min_snr_gamma"),
        ("[loss]\ndebiased_estimation_loss = true\n", "loss.debiased_estimation_loss"),
        ("[loss]\nzero_terminal_snr = true\n", "loss.zero_terminal_snr"),
        ("[loss]\nnoise_offset = 0.05\n", "loss.noise_offset"),
        ("[loss]\nmultires_noise_iterations = 6\n", "loss.multires_noise_iterations"),
        ("[model]\nv_parameterization = true\n", "model.v_parameterization"),
        ("[training]\nmin_timestep = 100\n", "training.min_timestep"),
        ("[training]\nmax_timestep = 900\n", "max_timestep"),
        ("[loss]\nloss_type = \"huber\"\n", "loss.huber_schedule = \"snr\""),
        ("[flow]\ntraining_shift = 3.0\n", "flow.training_shift"),
    ] {
        let e = refusal(flux(), text);
        assert!(e.contains(key), "{key}: {e}");
    }
    // Flux options on SD3.
    for (text, key) in [
        ("[flow]\nguidance_scale = 3.5\n", "flow.guidance_scale"),
        ("[flow]\ntimestep_sampling = \"shift\"\n", "flow.timestep_sampling"),
        ("[flow]\nmodel_prediction_type = \"raw\"\n", "flow.model_prediction_type"),
        ("[loss]\nip_noise_gamma = 0.1\n", "loss.ip_noise_gamma"),
    ] {
        let e = refusal(sd3(), text);
        assert!(e.contains(key), "{key}: {e}");
    }
    // SD3 takes min/max_timestep; Flux takes ip_noise_gamma and exponential Huber.
    assert!(Objective::new(sd3(), &config("[training]\nmin_timestep = 100\n")).is_ok());
    let (o, notes) = Objective::new(
        flux(),
        &config("[loss]\nip_noise_gamma = 0.1\nloss_type = \"huber\"\nhuber_schedule = \"exponential\"\n"),
    )
    .unwrap();
    assert!(notes.iter().all(|n| !n.starts_with("warning")), "{notes:?}");
    let Objective::Flow(f) = o else { panic!() };
    assert_eq!(f.ip_noise_gamma, Some((0.1, false)));
}

#[test]
fn flux_defaults_and_warnings() {
    let flux = ObjectiveKind::Flow(FlowFamily::Flux);
    let (o, notes) = Objective::new(flux.clone(), &config("")).unwrap();
    let Objective::Flow(f) = o else { panic!() };
    assert_eq!(f.model_prediction_type, ModelPredictionType::Raw, "lorakit's default");
    assert_eq!(f.guidance_scale, Some(1.0));
    assert!(
        notes.len() == 1 && notes[0].contains("sd-scripts' own defaults are \"sigma_scaled\" and 3.5"),
        "{notes:?}"
    );
    let (_, notes) =
        Objective::new(flux.clone(), &config("[flow]\nmodel_prediction_type = \"sigma_scaled\"\n")).unwrap();
    assert!(notes.len() == 1 && notes[0].starts_with("warning:") && notes[0].contains("ε − x₀"), "{notes:?}");
    let (_, notes) = Objective::new(flux.clone(), &config("[flow]\nmodel_prediction_type = \"raw\"\n")).unwrap();
    assert!(notes.is_empty(), "an explicit choice needs no note: {notes:?}");
    let (_, notes) = Objective::new(
        flux,
        &config("[flow]\ntimestep_sampling = \"shift\"\nweighting_scheme = \"logit_normal\"\nlogit_std = 2.0\n"),
    )
    .unwrap();
    assert!(
        notes.iter().any(|n| n.contains("flow.weighting_scheme") && n.contains("flow.logit_mean / flow.logit_std")),
        "{notes:?}"
    );
}

#[test]
fn flow_keys_are_validated_naming_the_key() {
    let err = |text: &str| TrainConfig::from_toml_str(text, &[]).unwrap_err();
    assert!(err("[flow]\nmode_scale = 3.0\n").contains("flow.mode_scale = 3"));
    assert!(err("[flow]\nlogit_std = nan\n").contains("flow.logit_std = NaN"));
    assert!(err("[flow]\ndiscrete_flow_shift = 0.0\n").contains("flow.discrete_flow_shift = 0"));
    assert!(err("[flow]\ntimestep_sampling = \"logit\"\n").contains("timestep_sampling"));
    // sd-scripts accepts "none" for the uniform scheme.
    assert_eq!(config("[flow]\nweighting_scheme = \"none\"\n").flow, config("").flow);
    // A bare sd-scripts name lands in [flow].
    assert_eq!(lorakit_train::config::section_of("discrete_flow_shift").as_deref(), Some("flow"));
}

/// The DDPM objective draws and computes exactly what the training loop did before the seam:
/// timesteps, then `sample_noise`, from the same RNG; `add_noise`, `target`, `batch_loss`.
#[test]
fn ddpm_objective_is_the_loops_former_computation() {
    let cfg = config("[loss]\nnoise_offset = 0.05\nip_noise_gamma = 0.1\nmin_snr_gamma = 5.0\n[training]\nmin_timestep = 10\nmax_timestep = 900\n");
    let schedule = NoiseSchedule::sd_default();
    let kind = ObjectiveKind::Ddpm { schedule: schedule.clone(), prediction: Prediction::VPrediction };
    let (objective, _) = Objective::new(kind, &cfg).unwrap();
    let dev = Device::Cpu;
    let latents =
        lorakit_nn::gradcheck::pseudo_random(&[3, 4, 8, 8], 1).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    let pred =
        lorakit_nn::gradcheck::pseudo_random(&[3, 4, 8, 8], 2).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    let weights = [1.0, 0.5, 1.0];

    let noised = objective.noise(&latents, &mut rand::rngs::StdRng::seed_from_u64(9)).unwrap();
    let loss = objective.loss(&pred, &noised, &weights, None).unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let timesteps: Vec<u32> = (0..3).map(|_| rng.random_range(10u32..900)).collect();
    let (noise, input_noise) = sample_noise(&latents, &cfg.loss.noise_options(), &mut rng).unwrap();
    let t_int = Tensor::from_vec(timesteps.clone(), 3, &dev).unwrap();
    let noisy = schedule.add_noise(&latents, &input_noise, &t_int).unwrap();
    let target = schedule.target(Prediction::VPrediction, &latents, &noise, &t_int).unwrap();
    let want = batch_loss(
        &pred,
        &target,
        &timesteps,
        &weights,
        &cfg.loss.loss_options(),
        &schedule,
        Prediction::VPrediction,
        None,
    )
    .unwrap();

    assert_eq!(noised.levels, NoiseLevels::Ddpm(timesteps.clone()));
    assert_eq!(vec1(&noised.timesteps), timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>());
    assert!(noised.guidance.is_none());
    assert_eq!(vec1(&noised.noisy), vec1(&noisy));
    assert_eq!(vec1(&noised.target), vec1(&target));
    assert_eq!(loss.to_scalar::<f32>().unwrap().to_bits(), want.to_scalar::<f32>().unwrap().to_bits());
}
