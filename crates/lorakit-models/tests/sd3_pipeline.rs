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

fn tiny_pipeline() -> Result<lorakit_models::sd3_pipeline::Sd3Pipeline, Box<dyn std::error::Error>> {
    use lorakit_models::checkpoint::sd3::Sd3Paths;
    use lorakit_models::sd3_pipeline::{Sd3Options, Sd3Pipeline};
    let paths = Sd3Paths { model: fixture("sd3_tiny/pipeline"), ..Default::default() };
    Ok(Sd3Pipeline::load(&paths, &Sd3Options::default(), &candle_core::Device::Cpu)?)
}

/// max |a − b| / max |b|.
fn rel_err(a: &candle_core::Tensor, b: &candle_core::Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1e-12))
}

/// The whole sampler — prompt encoding, CFG at 5 with the empty negative prompt, 3 Euler steps
/// of SD3's schedule — and the VAE decode equal diffusers' `StableDiffusion3Pipeline` from the
/// same starting latents (`tools/reference/make_sd3_tiny_pipeline.py`).
#[test]
fn sampling_matches_diffusers_stable_diffusion_3_pipeline() -> TestResult {
    let reference =
        candle_core::safetensors::load(fixture("sd3_tiny/generate.safetensors"), &candle_core::Device::Cpu)?;
    let pipe = tiny_pipeline()?;
    let mut steps = Vec::new();
    let latents =
        pipe.sample_latents(&reference["init"], "a photo of a cat", "", 3, 5.0, None, &mut |i, n| steps.push((i, n)))?;
    assert_eq!(steps, [(1, 3), (2, 3), (3, 3)]);
    let err = rel_err(&latents, &reference["cfg.final"])?;
    assert!(err <= 1e-4, "final latents differ from diffusers': {err}");
    let image = pipe.decode_to_rgb(&latents)?;
    let expected = (reference["cfg.image"].squeeze(0)?.permute((1, 2, 0))? * 255.0)?.round()?.flatten_all()?;
    let expected: Vec<f32> = expected.to_vec1()?;
    let worst = image.pixels.iter().zip(&expected).map(|(&a, &b)| (a as f32 - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1.0, "decoded pixels differ by up to {worst} levels");
    // A different negative prompt changes the result (CFG is applied).
    let other = pipe.sample_latents(&reference["init"], "a photo of a cat", "a dog", 3, 5.0, None, &mut |_, _| {})?;
    assert!(rel_err(&other, &reference["cfg.final"])? > 1e-3);
    Ok(())
}

#[test]
fn generate_refuses_odd_sizes_and_is_deterministic() -> TestResult {
    use lorakit_models::pipeline::GenerateRequest;
    let pipe = tiny_pipeline()?;
    let request =
        GenerateRequest { prompt: "a cat".into(), steps: 2, width: 32, height: 32, seed: 3, ..Default::default() };
    let a = pipe.generate(&request, None, &mut |_, _| {})?;
    let b = pipe.generate(&request, None, &mut |_, _| {})?;
    assert_eq!((a.width, a.height), (32, 32));
    assert_eq!(a.pixels, b.pixels, "same seed, same image");
    let bad = GenerateRequest { width: 34, ..request };
    let err = pipe.generate(&bad, None, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("34") && err.contains("multiple"), "{err}");
    Ok(())
}
