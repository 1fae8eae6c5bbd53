//! Loss and noise options against sd-scripts' own functions on the same inputs and random draws
//! (tools/reference/loss_noise_fixture.py → tests/fixtures/reference/loss_noise).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_models::schedule::{NoiseSchedule, Prediction};
use lorakit_train::loss::{batch_loss, huber_thresholds, HuberSchedule, LossOptions, LossType};
use lorakit_train::noise::{apply_noise_offset, pyramid_noise, pyramid_sizes};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/loss_noise").join(rel)
}

fn load() -> (HashMap<String, Tensor>, serde_json::Value) {
    let t = candle_core::safetensors::load(fixture("tensors.safetensors"), &Device::Cpu).unwrap();
    let j = serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
    (t, j)
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12)
}

#[test]
fn every_loss_option_matches_sd_scripts() {
    let (t, j) = load();
    let schedule = NoiseSchedule::sd_default();
    let timesteps: Vec<u32> = t["timesteps"].to_vec1::<i64>().unwrap().iter().map(|&v| v as u32).collect();
    let weights: Vec<f64> = t["sample_weights"].to_vec1::<f32>().unwrap().iter().map(|&v| f64::from(v)).collect();
    for case in j["loss"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let opts = LossOptions {
            loss_type: serde_json::from_value::<LossType>(case["loss_type"].clone()).unwrap(),
            huber_schedule: serde_json::from_value::<HuberSchedule>(case["huber_schedule"].clone()).unwrap(),
            huber_c: case["huber_c"].as_f64().unwrap(),
            huber_scale: case["huber_scale"].as_f64().unwrap(),
            min_snr_gamma: case["min_snr_gamma"].as_f64(),
            scale_v_pred_loss_like_noise_pred: case["scale_v_pred_loss_like_noise_pred"].as_bool().unwrap(),
            v_pred_like_loss: case["v_pred_like_loss"].as_f64(),
            debiased_estimation_loss: case["debiased_estimation_loss"].as_bool().unwrap(),
        };
        let prediction =
            if case["v_prediction"].as_bool().unwrap() { Prediction::VPrediction } else { Prediction::Epsilon };
        if let Some(want) = case["huber_c_values"].as_array() {
            let got = huber_thresholds(&opts, &timesteps, &schedule).unwrap();
            for (g, w) in got.iter().zip(want) {
                let w = w.as_f64().unwrap();
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{name}: c {g} vs {w}");
            }
        }
        let loss = batch_loss(&t["pred"], &t["target"], &timesteps, &weights, &opts, &schedule, prediction, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = case["loss"].as_f64().unwrap() as f32;
        assert!((loss - want).abs() <= 1e-5 * want.abs(), "{name}: loss {loss} vs sd-scripts {want}");
    }
}

#[test]
fn noise_offset_and_pyramid_noise_match_sd_scripts() {
    let (t, j) = load();
    for case in j["noise"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let out = &t[&format!("{name}_out")];
        let ours = match case["kind"].as_str().unwrap() {
            "offset" => apply_noise_offset(
                &t["latents"],
                &t["noise"],
                case["offset"].as_f64().unwrap(),
                case["adaptive"].as_f64(),
                &t[&format!("{name}_draw")],
            )
            .unwrap(),
            _ => {
                let r: Vec<f64> = case["r"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                let (_, _, h, w) = t["noise"].dims4().unwrap();
                let sizes = pyramid_sizes(h, w, &r);
                let levels: Vec<Tensor> =
                    (0..case["levels"].as_u64().unwrap()).map(|i| t[&format!("{name}_level{i}")].clone()).collect();
                assert_eq!(sizes.len(), levels.len(), "{name}: level count");
                for (s, l) in sizes.iter().zip(&levels) {
                    let (_, _, lh, lw) = l.dims4().unwrap();
                    assert_eq!(*s, (lh, lw), "{name}: level size");
                }
                pyramid_noise(&t["noise"], &levels, case["discount"].as_f64().unwrap()).unwrap()
            }
        };
        let err = max_rel(&ours.to_dtype(DType::F32).unwrap(), out);
        assert!(err <= 1e-5, "{name}: relative error {err}");
    }
}
