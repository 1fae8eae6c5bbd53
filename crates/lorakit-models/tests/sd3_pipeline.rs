//! SD3's sampler and pipeline against sd-scripts / diffusers (fixtures from
//! `tools/reference/sd3_sampler_fixture.py`).

use std::path::{Path, PathBuf};

use lorakit_models::samplers::flow::sd3_schedule;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference")).join(rel)
}

#[test]
fn sd3_schedules_match_sd_scripts_and_diffusers() -> TestResult {
    let text = std::fs::read_to_string(fixture("sd3_sampler/schedules.json"))?;
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    assert!(cases.len() >= 10);
    for case in cases {
        let steps = case["steps"].as_u64().ok_or("steps")? as usize;
        let shift = case["shift"].as_f64().ok_or("shift")?;
        let expected: Vec<f64> = serde_json::from_value(case["sigmas"].clone())?;
        let ours = sd3_schedule(steps, shift);
        assert_eq!(ours.len(), expected.len(), "{steps} steps");
        for (a, b) in ours.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-7, "{steps} steps, shift {shift}: {ours:?} vs {expected:?}");
        }
    }
    Ok(())
}
