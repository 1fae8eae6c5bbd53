//! The noise schedule and samplers against diffusers 0.32.1
//! (fixture: `tools/reference/samplers_fixture.py` → `tests/fixtures/reference/samplers/`).
//!
//! Each fixture run drives a diffusers scheduler with the fake model
//! `0.3·tanh(x) + 0.05·x·cos(t/300)`; the same runs are replayed here and must give identical
//! timesteps and final latents within 1e-4 relative (max |Δ| / max |ref|).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor};
use lorakit_models::samplers::{self, SamplerConfig, SamplerKind};
use lorakit_models::schedule::{NoiseSchedule, Prediction};

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/samplers/samplers.safetensors")
}

struct Fixture {
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

fn fixture() -> Fixture {
    let path = fixture_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("fixture header");
    let meta = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).expect("fixture tensors");
    Fixture { tensors, meta }
}

impl Fixture {
    fn get(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("fixture has no tensor {key}"))
    }
    fn vec_f32(&self, key: &str) -> Vec<f32> {
        self.get(key).to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
    fn vec_f64(&self, key: &str) -> Vec<f64> {
        self.get(key).to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((f64::from(x) - f64::from(y)).abs()));
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Largest per-element relative error, entries with |ref| below `floor` compared absolutely.
fn elementwise_rel(a: &[f32], b: &[f32], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs() / f64::from(y).abs().max(floor))
        .fold(0f64, f64::max)
}

/// The fixture's fake UNet: `0.3·tanh(x) + 0.05·x·cos(t/300)` (t/300 and cos in float32 as torch).
fn fake_model(x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
    let c = ((t as f32) / 300.0).cos();
    x.tanh()?.affine(0.3, 0.0)?.add(&x.affine(0.05, 0.0)?.affine(f64::from(c), 0.0)?)
}

fn kind_of(name: &str) -> SamplerKind {
    name.parse().unwrap()
}

#[test]
fn schedule_tables_match_diffusers() {
    let fx = fixture();
    let s = NoiseSchedule::sd_default();
    let check = |name: &str, ours: &[f32], key: &str, tol: f64| {
        let reference = fx.vec_f32(key);
        let err = elementwise_rel(ours, &reference, 1e-30);
        assert!(err <= tol, "{name}: max relative error {err:e} > {tol:e}");
    };
    check("betas", s.betas(), "schedule/betas", 1e-6);
    check("alphas_cumprod", s.alphas_cumprod(), "schedule/alphas_cumprod", 1e-6);
    check("all_snr", s.snr_table(), "schedule/all_snr", 1e-6);
    check("sigmas", &s.sigmas(), "schedule/sigmas", 1e-6);

    let z = s.clone().with_zero_terminal_snr();
    assert!(z.is_zero_terminal_snr());
    // Against diffusers' rescale with correctly rounded float32 sqrt: the same to 1e-6.
    check("ztsnr betas (exact sqrt)", z.betas(), "schedule_ztsnr/betas_cr", 1e-6);
    check("ztsnr alphas_cumprod (exact sqrt)", z.alphas_cumprod(), "schedule_ztsnr/alphas_cumprod_cr", 1e-6);
    // Against torch itself: torch's CPU sqrt is off by an ulp on some entries and the rescale
    // (√ᾱ_t − √ᾱ_T) amplifies that towards t = 999, so compare absolutely there.
    let acp = fx.vec_f32("schedule_ztsnr/alphas_cumprod");
    let abs = |a: &[f32], b: &[f32]| elementwise_rel(a, b, 1.0);
    let err = abs(z.alphas_cumprod(), &acp);
    assert!(err <= 1e-6, "ztsnr alphas_cumprod vs torch: {err:e} absolute");
    let err = abs(z.betas(), &fx.vec_f32("schedule_ztsnr/betas"));
    assert!(err <= 5e-6, "ztsnr betas vs torch: {err:e} absolute");
    assert_eq!(z.alphas_cumprod()[999], 0.0);
    assert_eq!(acp[999], 0.0);
    // sd-scripts keeps the SNR table of the unrescaled schedule.
    assert_eq!(z.snr_table(), s.snr_table());
    assert_eq!(z.snr(999), s.snr(999));
}

#[test]
fn scalar_accessors_agree_with_tables() {
    let s = NoiseSchedule::sd_default();
    for t in [0usize, 1, 500, 999] {
        let a = s.alphas_cumprod()[t];
        assert_eq!(s.alpha_cumprod(t), a);
        assert_eq!(s.sqrt_alpha_prod(t), a.sqrt());
        assert_eq!(s.sqrt_one_minus(t), (1.0 - a).sqrt());
        assert_eq!(s.snr(t), s.snr_table()[t]);
        let snr = f64::from(a) / (1.0 - f64::from(a));
        assert!((f64::from(s.snr(t)) / snr - 1.0).abs() < 1e-5);
    }
    // Past the end reads the last entry instead of panicking.
    assert_eq!(s.alpha_cumprod(5000), s.alphas_cumprod()[999]);
}

#[test]
fn add_noise_and_velocity_match_diffusers() {
    let fx = fixture();
    let x0 = fx.get("train/x0");
    let noise = fx.get("train/noise");
    let t = fx.get("train/timesteps");
    assert_eq!(t.dtype(), DType::I64);
    for (schedule, prefix) in
        [(NoiseSchedule::sd_default(), "train"), (NoiseSchedule::sd_default().with_zero_terminal_snr(), "train_ztsnr")]
    {
        let noisy = schedule.add_noise(x0, noise, t).unwrap();
        let err = rel_err(&flat(&noisy), &fx.vec_f32(&format!("{prefix}/noisy")));
        assert!(err <= 1e-6, "{prefix} add_noise: {err:e}");
        let v = schedule.velocity(x0, noise, t).unwrap();
        let err = rel_err(&flat(&v), &fx.vec_f32(&format!("{prefix}/velocity")));
        assert!(err <= 1e-6, "{prefix} velocity: {err:e}");
        // u32 timesteps give the same result; the target helper picks noise or velocity.
        let t32 = t.to_dtype(DType::U32).unwrap();
        assert_eq!(flat(&schedule.add_noise(x0, noise, &t32).unwrap()), flat(&noisy));
        let target = schedule.target(Prediction::VPrediction, x0, noise, &t32).unwrap();
        assert_eq!(flat(&target), flat(&v));
        let target = schedule.target(Prediction::Epsilon, x0, noise, &t32).unwrap();
        assert_eq!(flat(&target), flat(noise));
    }
}

#[test]
fn add_noise_rejects_bad_timesteps() {
    let s = NoiseSchedule::sd_default();
    let x = Tensor::zeros((2, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let ok = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    let too_big = Tensor::new(&[1u32, 1000], &Device::Cpu).unwrap();
    let negative = Tensor::new(&[-1i64, 3], &Device::Cpu).unwrap();
    let float = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let wrong_len = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
    assert!(s.add_noise(&x, &x, &ok).is_ok());
    for (t, needle) in [(&too_big, "outside"), (&negative, "outside"), (&float, "integer"), (&wrong_len, "shape [2]")] {
        let err = s.add_noise(&x, &x, t).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    let other = Tensor::zeros((2, 4, 2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(s.velocity(&x, &other, &ok).is_err());
}

/// Replays one fixture run; returns (timesteps, latents, noise calls).
fn replay(fx: &Fixture, cfg: &SamplerConfig, schedule: &NoiseSchedule) -> (Vec<f64>, Vec<f32>, usize) {
    let init = fx.get("init_noise");
    let bank = fx.get("noise_bank");
    let mut used = 0usize;
    let mut seen_t = Vec::new();
    let mut steps_reported = Vec::new();
    let out = samplers::sample(
        cfg,
        schedule,
        init,
        &mut |x, t| {
            seen_t.push(t);
            fake_model(x, t)
        },
        &mut |shape| {
            let z = bank.i(used)?;
            used += 1;
            assert_eq!(z.shape(), shape);
            Ok(z)
        },
        &mut |i, n| steps_reported.push((i, n)),
    )
    .unwrap();
    assert_eq!(out.dtype(), DType::F32);
    assert_eq!(out.dims(), init.dims());
    let expected: Vec<(usize, usize)> = (1..=cfg.steps).map(|i| (i, cfg.steps)).collect();
    assert_eq!(steps_reported, expected);
    assert_eq!(seen_t, samplers::timesteps(cfg, schedule).unwrap());
    (seen_t, flat(&out), used)
}

#[test]
fn samplers_match_diffusers() {
    let fx = fixture();
    let runs: Vec<serde_json::Value> = serde_json::from_str(&fx.meta["runs"]).unwrap();
    let mut keys: Vec<&String> = fx.tensors.keys().filter(|k| k.ends_with("/latents")).collect();
    keys.sort();
    assert_eq!(keys.len(), runs.len());
    assert!(keys.len() >= 60, "expected the full fixture, got {} runs", keys.len());
    let mut kinds = HashSet::new();
    let mut worst = 0f64;
    for run in &runs {
        let key = run["key"].as_str().unwrap();
        let parts: Vec<&str> = key.split('/').collect();
        let (kind, pred, steps) = (kind_of(parts[0]), parts[1], parts[2].parse::<usize>().unwrap());
        let (prediction, schedule) = match pred {
            "eps" => (Prediction::Epsilon, NoiseSchedule::sd_default()),
            "v" => (Prediction::VPrediction, NoiseSchedule::sd_default()),
            "v_ztsnr" => (Prediction::VPrediction, NoiseSchedule::sd_default().with_zero_terminal_snr()),
            other => panic!("unknown prediction {other}"),
        };
        kinds.insert(kind);
        let cfg = SamplerConfig::new(kind, steps, prediction).unwrap();
        let init_sigma = samplers::init_noise_sigma(&cfg, &schedule).unwrap();
        let want_sigma = run["init_noise_sigma"].as_f64().unwrap();
        assert!((init_sigma / want_sigma - 1.0).abs() < 1e-6, "{key}: init_noise_sigma {init_sigma} vs {want_sigma}");

        let (ts, latents, used) = replay(&fx, &cfg, &schedule);
        let want_ts = fx.vec_f64(&format!("{key}/timesteps"));
        assert_eq!(ts, want_ts, "{key}: timesteps");
        let want = fx.vec_f32(&format!("{key}/latents"));
        let err = rel_err(&latents, &want);
        worst = worst.max(err);
        assert!(err <= 1e-4, "{key}: final latents differ by {err:e} (relative)");
        // Euler a draws noise on every step but the last (σ_up = 0 there); the others never.
        let want_used = if kind.is_ancestral() { steps - 1 } else { 0 };
        assert_eq!(used, want_used, "{key}: noise calls");
    }
    assert_eq!(kinds.len(), SamplerKind::ALL.len());
    eprintln!("worst relative error over {} runs: {worst:e}", runs.len());
}

#[test]
fn known_timesteps() {
    let s = NoiseSchedule::sd_default();
    let ts =
        |kind, steps| samplers::timesteps(&SamplerConfig::new(kind, steps, Prediction::Epsilon).unwrap(), &s).unwrap();
    // diffusers DDIM, leading spacing + steps_offset 1.
    let ddim = ts(SamplerKind::Ddim, 20);
    assert_eq!(ddim.first(), Some(&951.0));
    assert_eq!(ddim.last(), Some(&1.0));
    assert_eq!(ts(SamplerKind::DpmPp2m, 2), vec![999.0, 500.0]);
    assert_eq!(ts(SamplerKind::Euler, 2), vec![999.0, 0.0]);
    // One Euler step is diffusers' linspace(0, 999, 1) = [0].
    assert_eq!(ts(SamplerKind::Euler, 1), vec![0.0]);
    // DDIM at 1000 steps: diffusers would index ᾱ_1000; the timestep is clamped to 999.
    let ddim = ts(SamplerKind::Ddim, 1000);
    assert_eq!(ddim.len(), 1000);
    assert_eq!(&ddim[..2], &[999.0, 999.0]);
    assert_eq!(ddim.last(), Some(&1.0));
}

#[test]
fn thousand_steps_stay_finite() {
    // DPM++ 2M at 1000 steps has repeated timesteps (diffusers returns NaN there); DDIM at 1000
    // steps would index past the table in diffusers.
    let fx = fixture();
    let s = NoiseSchedule::sd_default();
    for kind in [SamplerKind::DpmPp2m, SamplerKind::Ddim] {
        let cfg = SamplerConfig::new(kind, 1000, Prediction::Epsilon).unwrap();
        let out = samplers::sample(
            &cfg,
            &s,
            fx.get("init_noise"),
            &mut fake_model,
            &mut |_| panic!("not ancestral"),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(flat(&out).iter().all(|v| v.is_finite()), "{kind} at 1000 steps");
    }
}

#[test]
fn sampler_names() {
    for (name, kind) in [
        ("euler", SamplerKind::Euler),
        ("k_euler", SamplerKind::Euler),
        ("euler_a", SamplerKind::EulerAncestral),
        ("K_EULER_A", SamplerKind::EulerAncestral),
        ("ddim", SamplerKind::Ddim),
        ("dpmpp_2m", SamplerKind::DpmPp2m),
        ("dpmsolver++", SamplerKind::DpmPp2m),
        (" dpmpp_2m_karras ", SamplerKind::DpmPp2mKarras),
    ] {
        assert_eq!(name.parse::<SamplerKind>().unwrap(), kind, "{name}");
    }
    for kind in SamplerKind::ALL {
        assert_eq!(kind.to_string().parse::<SamplerKind>().unwrap(), kind);
    }
    let err = "plms".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(err.contains("unknown sampler 'plms'") && err.contains("dpmpp_2m_karras"), "{err}");
    let err = "k_lms".parse::<SamplerKind>().unwrap_err().to_string();
    assert!(err.contains("not implemented") && err.contains("euler_a"), "{err}");
}

#[test]
fn bad_requests_are_errors() {
    for steps in [0usize, 1001] {
        let err = SamplerConfig::new(SamplerKind::Euler, steps, Prediction::Epsilon).unwrap_err().to_string();
        assert!(err.contains("between 1 and 1000"), "{err}");
    }
    let s = NoiseSchedule::sd_default();
    let init = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let mut calls = 0;
    let cfg = SamplerConfig { kind: SamplerKind::Ddim, steps: 0, prediction: Prediction::Epsilon };
    let err = samplers::sample(
        &cfg,
        &s,
        &init,
        &mut |x, _| {
            calls += 1;
            Ok(x.clone())
        },
        &mut |_| unreachable!(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("steps must be between 1 and 1000"), "{err}");
    assert_eq!(calls, 0);
    assert!(samplers::timesteps(&cfg, &s).is_err());

    // A schedule with fewer training timesteps than requested steps.
    let short = NoiseSchedule::scaled_linear(10, 0.00085, 0.012).unwrap();
    let cfg = SamplerConfig::new(SamplerKind::Euler, 20, Prediction::Epsilon).unwrap();
    assert!(samplers::timesteps(&cfg, &short).unwrap_err().to_string().contains("exceed"));

    // A model returning the wrong shape.
    let cfg = SamplerConfig::new(SamplerKind::DpmPp2m, 3, Prediction::Epsilon).unwrap();
    let err = samplers::sample(
        &cfg,
        &s,
        &init,
        &mut |_, _| Tensor::zeros((1, 4, 2, 3), DType::F32, &Device::Cpu),
        &mut |_| unreachable!(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
}

#[test]
fn model_output_dtype_is_accepted() {
    // A half-precision model output is used in float32; the result is float32.
    let fx = fixture();
    let s = NoiseSchedule::sd_default();
    let cfg = SamplerConfig::new(SamplerKind::Euler, 5, Prediction::Epsilon).unwrap();
    let out = samplers::sample(
        &cfg,
        &s,
        fx.get("init_noise"),
        &mut |x, t| fake_model(x, t)?.to_dtype(DType::BF16),
        &mut |_| unreachable!(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(out.dtype(), DType::F32);
    let want = fx.vec_f32("euler/eps/5/latents");
    assert!(rel_err(&flat(&out), &want) < 2e-2);
}
