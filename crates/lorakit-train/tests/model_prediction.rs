//! A model that declares v-prediction (a diffusers folder's scheduler config) is trained on that
//! target only; a declared "epsilon" (diffusers' default value) yields to the config.

use std::path::PathBuf;

use candle_core::{DType, Device};
use lorakit_models::schedule::Prediction;
use lorakit_train::model::{StableDiffusionModel, TrainableModel};

fn sd2_v_folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd2_tiny/diffusers")
}

#[test]
fn a_declared_v_prediction_model_needs_v_parameterization() {
    let err = StableDiffusionModel::load(&sd2_v_folder(), DType::F32, &Device::Cpu, false)
        .err()
        .expect("an epsilon target on a v-prediction model must be refused")
        .to_string();
    assert!(err.contains("a v-prediction model"), "{err}");
    assert!(err.contains("scheduler_config.json"), "{err}");
    assert!(err.contains("set model.v_parameterization = true"), "{err}");

    let model = StableDiffusionModel::load(&sd2_v_folder(), DType::F32, &Device::Cpu, true).unwrap();
    assert_eq!(model.pipeline().prediction, Prediction::VPrediction);
    let info = model.info();
    assert!(info.v2);
    assert_eq!(info.base_model_version, "sd_v2_v");
}

#[test]
fn a_declared_epsilon_model_follows_the_config() {
    // The quickstart model's scheduler config says "epsilon": either target is allowed (with a
    // warning for v).
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/tiny-sd15");
    for v in [false, true] {
        let model = StableDiffusionModel::load(&folder, DType::F32, &Device::Cpu, v).unwrap();
        let want = if v { Prediction::VPrediction } else { Prediction::Epsilon };
        assert_eq!(model.pipeline().prediction, want);
    }
}
