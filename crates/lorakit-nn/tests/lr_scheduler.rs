//! Every sd-scripts scheduler against the factors its own `get_scheduler_fix` produces
//! (`tests/fixtures/reference/optim/lr_schedulers.json`, from `tools/reference/optim_fixture.py`),
//! and the combinations sd-scripts rejects.

use std::path::PathBuf;

use lorakit_nn::lr_scheduler::{warmup_steps_from, LrScheduler, SchedulerKind, SchedulerParams};
use lorakit_nn::optim::parse_optimizer_args;
use serde_json::Value;

fn fixture() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/optim/lr_schedulers.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Builds the scheduler from the values sd-scripts' argparse produced for the case.
fn build(case: &Value) -> Result<LrScheduler, String> {
    let p = &case["params"];
    let total = case["total_steps"].as_u64().unwrap();
    let kind = SchedulerKind::parse(p["lr_scheduler"].as_str().unwrap())?;
    let args: Vec<String> =
        p["lr_scheduler_args"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let params = SchedulerParams {
        warmup_steps: warmup_steps_from(p["lr_warmup_steps"].as_f64().unwrap(), total),
        total_steps: total,
        decay_steps: warmup_steps_from(p["lr_decay_steps"].as_f64().unwrap(), total),
        num_cycles: p["lr_scheduler_num_cycles"].as_u64().unwrap(),
        power: p["lr_scheduler_power"].as_f64().unwrap(),
        timescale: p["lr_scheduler_timescale"].as_u64(),
        min_lr_ratio: p["lr_scheduler_min_lr_ratio"].as_f64(),
        base_lr: case["learning_rate"].as_f64().unwrap(),
        args: parse_optimizer_args(&args)?,
    };
    LrScheduler::new(kind, params)
}

#[test]
fn every_scheduler_matches_sd_scripts() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if !case["ok"].as_bool().unwrap() {
            continue;
        }
        let sched = build(case).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (step, want) in case["factors"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = sched.factor(step as u64);
            assert!((got - want).abs() <= 1e-9, "{name} step {step}: got {got}, sd-scripts {want}");
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} schedules checked");
    // every kind except adafactor (needs transformers' Adafactor) has a reference run
    for kind in SchedulerKind::ALL {
        let covered = fx["cases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["ok"].as_bool().unwrap() && c["params"]["lr_scheduler"].as_str() == Some(kind.name()));
        assert!(covered || kind == SchedulerKind::Adafactor, "{kind} has no reference case");
    }
}

#[test]
fn rejects_what_sd_scripts_rejects() {
    for case in fixture()["cases"].as_array().unwrap() {
        if case["ok"].as_bool().unwrap() {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        match build(case) {
            Ok(_) => panic!("{name}: accepted, sd-scripts fails with {}", case["error"]),
            Err(e) => assert!(!e.is_empty(), "{name}"),
        }
    }
}

#[test]
fn names_parse_as_sd_scripts_spells_them() {
    for kind in SchedulerKind::ALL {
        assert_eq!(SchedulerKind::parse(kind.name()), Ok(kind));
        assert_eq!(kind.to_string(), kind.name());
    }
    assert_eq!(SchedulerKind::parse("adafactor:0.001"), Ok(SchedulerKind::Adafactor));
    assert!(SchedulerKind::parse("adafactor:x").is_err());
    let e = SchedulerKind::parse("Cosine").unwrap_err();
    assert!(e.contains("`Cosine`") && e.contains("cosine_with_restarts") && e.contains("warmup_stable_decay"), "{e}");
    let e = SchedulerKind::parse("reduce_lr_on_plateau").unwrap_err();
    assert!(e.contains("sd-scripts cannot build it"), "{e}");
}

#[test]
fn warmup_ratio_resolution() {
    assert_eq!(warmup_steps_from(0.1, 50), 5);
    assert_eq!(warmup_steps_from(0.29, 100), 28); // int(28.999999999999996)
    assert_eq!(warmup_steps_from(0.3, 50), 15);
    assert_eq!(warmup_steps_from(0.0, 50), 0);
    assert_eq!(warmup_steps_from(1.0, 50), 1);
    assert_eq!(warmup_steps_from(120.0, 50), 120);
    assert_eq!(warmup_steps_from(-0.5, 50), 0);
}

#[test]
fn adafactor_and_edge_cases() {
    let params = |w: u64, t: u64| SchedulerParams { warmup_steps: w, total_steps: t, ..Default::default() };
    let ada = LrScheduler::new(SchedulerKind::Adafactor, params(0, 10)).unwrap();
    assert!((0..20).all(|s| ada.factor(s) == 1.0));
    assert!(LrScheduler::new(SchedulerKind::Adafactor, params(3, 10)).unwrap_err().contains("warmup"));
    assert!(LrScheduler::new(SchedulerKind::Constant, params(3, 10)).unwrap_err().contains("--lr_warmup_steps"));

    // polynomial with warmup = total: transformers divides by zero at the last step; we give the floor
    let poly = LrScheduler::new(SchedulerKind::Polynomial, SchedulerParams { base_lr: 1.0, ..params(10, 10) }).unwrap();
    assert_eq!(poly.factor(5), 0.5);
    assert_eq!(poly.factor(10), 1e-7);

    let ts0 = SchedulerParams { timescale: Some(0), ..params(0, 10) };
    assert!(LrScheduler::new(SchedulerKind::InverseSqrt, ts0).is_err());

    // a clashing key names the flag to use instead; an unknown one lists the accepted keys
    let with_args = |kind, items: &[&str]| {
        let args = parse_optimizer_args(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        LrScheduler::new(kind, SchedulerParams { args, ..params(0, 10) })
    };
    let e = with_args(SchedulerKind::Polynomial, &["power=2"]).unwrap_err();
    assert!(e.contains("--lr_scheduler_power") && e.contains("lr_end"), "{e}");
    let e = with_args(SchedulerKind::WarmupStableDecay, &["foo=1"]).unwrap_err();
    assert!(e.contains("`foo`") && e.contains("decay_type"), "{e}");
    assert!(with_args(SchedulerKind::PiecewiseConstant, &[]).unwrap_err().contains("step_rules"));
    assert!(with_args(SchedulerKind::PiecewiseConstant, &["step_rules='1:x,0.1'"]).is_err());
    assert!(with_args(SchedulerKind::Cosine, &["num_cycles='2'"]).is_err());

    // stateless: the factor depends on the step only, in any call order
    let cos = LrScheduler::new(SchedulerKind::Cosine, params(5, 50)).unwrap();
    let forward: Vec<f64> = (0..60).map(|s| cos.factor(s)).collect();
    let backward: Vec<f64> = (0..60).rev().map(|s| cos.factor(s)).collect();
    assert!(forward.iter().eq(backward.iter().rev()));
    assert_eq!(cos.factor(0), 0.0, "the first update of a warmup uses lr 0");
}
