//! Adafactor against transformers / sd-scripts numbers (`tests/fixtures/reference/optim/adafactor.json`,
//! written by `tools/reference/optim_adafactor_fixture.py`), sd-scripts' setup rules, resume and errors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use lorakit_nn::gradcheck::pseudo_random;
use lorakit_nn::optim::{
    Adafactor, AdafactorConfig, AdafactorNotice, AdafactorSetup, AdamW, AdamWConfig, Optimizer, OptimizerArgs,
    OptimizerKind, OptimizerState, ParamGroup,
};
use serde_json::Value;

use crate::common;
use common::{args, f32s, fresh_copy, strings, tensor};

fn fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/optim/adafactor.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Within 1e-6 of the element or 1e-6 of the tensor's largest magnitude: elements that are small
/// through cancellation (a zero-initialised parameter after a few updates, a first moment) carry the
/// f32 rounding of the larger terms they came from (reduction order, fused multiply-adds in torch).
fn assert_tensor_close(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    assert_close(what, got, want, 1e-6, 1e-6 * scale);
}

/// |got − want| ≤ rel·|want| + abs, element-wise.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        assert!((g - w).abs() <= rel * w.abs() + abs, "{what}[{i}]: got {g}, want {w} (diff {:e})", (g - w).abs());
    }
}

/// Equal configs, floats to 1e-15 relative: serde_json (without its `float_roundtrip` feature) may
/// parse `1e-30` one f64 ulp off; the f32 value the update uses is the same.
fn assert_same_config(got: &AdafactorConfig, want: &AdafactorConfig, what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 * b.abs();
    let floats = |c: &AdafactorConfig| {
        [c.eps.0, c.eps.1, c.clip_threshold, c.decay_rate, c.beta1.unwrap_or(0.0), c.weight_decay]
    };
    let ok = floats(got).iter().zip(floats(want)).all(|(&a, b)| close(a, b))
        && got.beta1.is_some() == want.beta1.is_some()
        && (got.scale_parameter, got.relative_step, got.warmup_init)
            == (want.scale_parameter, want.relative_step, want.warmup_init);
    assert!(ok, "{what}: got {got:?}, want {want:?}");
}

/// sd-scripts' English log text for each notice (the fixture records what sd-scripts printed).
fn sd_scripts_text(n: &AdafactorNotice) -> &'static str {
    match n {
        AdafactorNotice::WarmupInitForcesRelativeStep => "set relative_step to True because warmup_init is True",
        AdafactorNotice::RelativeStep => "relative_step is true",
        AdafactorNotice::LearningRateIsInitialLr { .. } => "learning rate is used as initial_lr",
        AdafactorNotice::GroupLrsIgnored => "unet_lr and text_encoder_lr are ignored",
        AdafactorNotice::SchedulerReplaced { .. } => "use adafactor_scheduler",
        AdafactorNotice::MaxGradNormSet { .. } => {
            "because max_grad_norm is set, clip_grad_norm is enabled. consider set to 0"
        }
        AdafactorNotice::ConstantWithWarmupAdvised { .. } => "constant_with_warmup will be good",
        AdafactorNotice::ClipThresholdAdvised { .. } => "clip_threshold=1.0 will be good",
    }
}

#[test]
fn adafactor_matches_transformers_as_sd_scripts_builds_it() {
    let fx = fixture();
    for run in fx["runs"].as_array().unwrap() {
        let name = run["name"].as_str().unwrap();
        let user_args = OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap();

        // sd-scripts' rules: kwargs, scheduler, metadata side effects and log messages
        let setup = AdafactorSetup::resolve(
            &user_args,
            run["learning_rate"].as_f64().unwrap(),
            run["configured_scheduler"].as_str().unwrap(),
            run["max_grad_norm"].as_f64().unwrap(),
        )
        .unwrap();
        let sd = &run["sd_scripts"];
        assert_eq!(setup.lr_scheduler, sd["lr_scheduler"].as_str().unwrap(), "{name}: lr_scheduler");
        assert_eq!(setup.ss_learning_rate, sd["learning_rate"].as_f64(), "{name}: ss_learning_rate");
        assert_eq!(setup.clears_unet_lr, sd["unet_lr"].is_null(), "{name}: unet_lr cleared");
        let want_notices: Vec<(bool, String)> = sd["notices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["level"] == "WARNING", n["message"].as_str().unwrap().to_string()))
            // the generic "use <optimizer> | kwargs" line every optimizer branch prints
            .filter(|(_, m)| !m.starts_with("use Adafactor optimizer |"))
            .collect();
        let got_notices: Vec<(bool, String)> =
            setup.notices.iter().map(|n| (n.is_warning(), sd_scripts_text(n).to_string())).collect();
        assert_eq!(got_notices, want_notices, "{name}: notices");
        for n in &setup.notices {
            assert!(n.to_string().starts_with("Adafactor"), "{n}");
        }

        let r = &run["resolved"];
        let eps = f64s(&r["eps"]);
        let want_config = AdafactorConfig {
            eps: (eps[0], eps[1]),
            clip_threshold: r["clip_threshold"].as_f64().unwrap(),
            decay_rate: r["decay_rate"].as_f64().unwrap(),
            beta1: r["beta1"].as_f64(),
            weight_decay: r["weight_decay"].as_f64().unwrap(),
            scale_parameter: r["scale_parameter"].as_bool().unwrap(),
            relative_step: r["relative_step"].as_bool().unwrap(),
            warmup_init: r["warmup_init"].as_bool().unwrap(),
        };
        assert_same_config(&setup.config, &want_config, &format!("{name}: resolved hyperparameters"));

        let shapes: Vec<Vec<usize>> = run["shapes"].as_array().unwrap().iter().map(usizes).collect();
        let vars: Vec<Var> = run["init"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&shapes)
            .map(|(v, s)| Var::from_tensor(&tensor(v, s)).unwrap())
            .collect();
        let mut place = vec![(0, 0); vars.len()];
        let mut groups = Vec::new();
        for (gi, g) in run["groups"].as_array().unwrap().iter().enumerate() {
            let idx = usizes(&g["params"]);
            for (pos, &i) in idx.iter().enumerate() {
                place[i] = (gi, pos);
            }
            groups.push(ParamGroup {
                name: g["name"].as_str().unwrap().into(),
                vars: idx.iter().map(|&i| vars[i].clone()).collect(),
                lr: setup.group_lr.unwrap_or(g["lr"].as_f64().unwrap()),
            });
        }
        // built from the user's args: the optimizer applies sd-scripts' kwarg rules itself
        let mut opt = Adafactor::from_args(groups, &user_args).unwrap();
        assert_eq!(*opt.config(), setup.config, "{name}: config");
        assert_eq!(opt.description(), run["ss_optimizer"].as_str().unwrap(), "{name}: ss_optimizer");
        assert_eq!(opt.description(), format!("{}({})", Adafactor::CLASS_PATH, setup.args.describe()));

        let relative = want_config.relative_step;
        if relative {
            assert_eq!(opt.effective_lrs(), Some(f64s(&run["initial_reported_lrs"])), "{name}: lr before step 1");
        } else {
            assert_eq!(opt.effective_lrs(), None, "{name}: external lr");
        }

        for (step, step_grads) in run["grads"].as_array().unwrap().iter().enumerate() {
            let mut grads: Vec<Vec<Option<Tensor>>> = opt.groups().iter().map(|g| vec![None; g.vars.len()]).collect();
            for (i, g) in step_grads.as_array().unwrap().iter().enumerate() {
                if !g.is_null() {
                    let (gi, pos) = place[i];
                    grads[gi][pos] = Some(tensor(g, &shapes[i]));
                }
            }
            let lrs = f64s(&run["lrs"][step]);
            opt.step(&grads, &lrs).unwrap();
            for (i, var) in vars.iter().enumerate() {
                let want = f32s(&run["params_after"][step][i]);
                assert_tensor_close(&format!("{name} step {step} param {i}"), &flat(var.as_tensor()), &want);
            }
            if relative {
                // AdafactorSchedule drops groups whose first parameter had no gradient from its list,
                // so the later groups' values land on the wrong groups: only the groups before such
                // a group compare, unless it and all later ones lack a gradient (they keep their lr).
                let missing: Vec<bool> = grads.iter().map(|g| g[0].is_none()).collect();
                let aligned = match missing.iter().position(|&m| m) {
                    Some(k) if !missing[k..].iter().all(|&m| m) => k,
                    _ => missing.len(),
                };
                let got: Vec<f32> = opt.effective_lrs().unwrap().iter().map(|&x| x as f32).collect();
                let want = f32s(&run["reported_lrs"][step]);
                assert_close(&format!("{name} step {step} reported lr"), &got[..aligned], &want[..aligned], 1e-6, 0.0);
            }
        }

        let state = opt.state().unwrap();
        for (i, want) in run["final_state"].as_array().unwrap().iter().enumerate() {
            let (gi, pos) = place[i];
            let group = &state.scalars["groups"][gi];
            assert_eq!(group["steps"][pos].as_u64(), want["step"].as_u64(), "{name} param {i}: step count");
            let prefix = format!("{}.{pos}.", group["name"].as_str().unwrap());
            let rms = flat(&state.tensors[&format!("{prefix}RMS")]);
            assert_close(&format!("{name} param {i} RMS"), &rms, &[want["RMS"].as_f64().unwrap() as f32], 1e-6, 0.0);
            let mut names = vec!["RMS".to_string()];
            for what in ["exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"] {
                let Some(w) = want.get(what) else { continue };
                names.push(what.to_string());
                let t = &state.tensors[&format!("{prefix}{what}")];
                assert_eq!(t.dims(), usizes(&w["shape"]).as_slice(), "{name} param {i} {what} shape");
                assert_tensor_close(&format!("{name} param {i} {what}"), &flat(t), &f32s(&w["values"]));
            }
            let mut have: Vec<String> =
                state.tensors.keys().filter_map(|k| k.strip_prefix(&prefix)).map(str::to_string).collect();
            have.sort();
            names.sort();
            assert_eq!(have, names, "{name} param {i}: state tensors");
        }
    }
}

/// Per-group gradient lists, as `Optimizer::step` takes them.
type Grads = Vec<Vec<Option<Tensor>>>;

fn problem() -> (Vec<Var>, Vec<Grads>) {
    let shapes: [&[usize]; 4] = [&[4, 3], &[2, 2, 3, 3], &[5], &[6, 4]];
    let vars: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = pseudo_random(s, i as u64).unwrap().to_dtype(DType::F32).unwrap();
            // param 3 starts at zero like a LoRA up matrix
            Var::from_tensor(&if i == 3 { t.zeros_like().unwrap() } else { t }).unwrap()
        })
        .collect();
    let grads = (0..8u64)
        .map(|step| {
            let g = |i: usize| {
                // param 2 gets its first gradient at step 2 (its state is created late)
                (i != 2 || step >= 2).then(|| {
                    pseudo_random(shapes[i], 100 + 10 * step + i as u64).unwrap().to_dtype(DType::F32).unwrap()
                })
            };
            vec![vec![g(0), g(3)], vec![g(1), g(2)]]
        })
        .collect();
    (vars, grads)
}

fn groups_for(vars: &[Var]) -> Vec<ParamGroup> {
    vec![
        ParamGroup { name: "textencoder".into(), vars: vec![vars[0].clone(), vars[3].clone()], lr: 5e-3 },
        ParamGroup { name: "unet".into(), vars: vec![vars[1].clone(), vars[2].clone()], lr: 1e-2 },
    ]
}

/// What a resume goes through: tensors through a safetensors file (the 0-d `RMS` entries included),
/// scalars to JSON text and back.
fn via_disk(state: &OptimizerState) -> OptimizerState {
    let path = std::env::temp_dir().join(format!("lorakit-adafactor-state-{}.safetensors", std::process::id()));
    let tensors: std::collections::HashMap<String, Tensor> =
        state.tensors.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let tensors: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap().into_iter().collect();
    std::fs::remove_file(&path).unwrap();
    let scalars = serde_json::from_str(&serde_json::to_string(&state.scalars).unwrap()).unwrap();
    OptimizerState { tensors, scalars }
}

fn resume_case(cfg: AdafactorConfig) {
    let (vars, grads) = problem();
    let lrs = |step: usize| vec![5e-3 * (step as f64 + 1.0) / 8.0, 1e-2 * (step as f64 + 1.0) / 8.0];

    let straight = fresh_copy(&vars);
    let mut a = Adafactor::new(groups_for(&straight), cfg).unwrap();
    for (step, g) in grads.iter().enumerate() {
        a.step(g, &lrs(step)).unwrap();
    }

    // Interrupted after 3 steps (param 2 has had one update, so its state exists but is young).
    let first = fresh_copy(&vars);
    let mut b = Adafactor::new(groups_for(&first), cfg).unwrap();
    for (step, g) in grads.iter().enumerate().take(3) {
        b.step(g, &lrs(step)).unwrap();
    }
    let saved = via_disk(&b.state().unwrap());
    let resumed_vars = fresh_copy(&first);
    drop(b);
    let mut c = Adafactor::new(groups_for(&resumed_vars), AdafactorConfig::default()).unwrap();
    c.load_state(&saved).unwrap();
    assert_same_config(c.config(), &cfg, "saved hyperparameters are restored");
    for (step, g) in grads.iter().enumerate().skip(3) {
        c.step(g, &lrs(step)).unwrap();
    }
    for (i, (x, y)) in straight.iter().zip(&resumed_vars).enumerate() {
        let (x, y) = (flat(x.as_tensor()), flat(y.as_tensor()));
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{cfg:?}: param {i} differs after resume");
    }
    let (mut sa, mut sc) = (a.state().unwrap(), c.state().unwrap());
    // eps went through JSON text once more in `c` (see assert_same_config)
    sa.scalars["eps"] = Value::Null;
    sc.scalars["eps"] = Value::Null;
    assert_eq!(sa.scalars, sc.scalars);
    assert_eq!(sa.tensors.keys().collect::<Vec<_>>(), sc.tensors.keys().collect::<Vec<_>>());
    for (k, t) in &sa.tensors {
        assert_eq!(flat(t), flat(&sc.tensors[k]), "{k}");
    }
    assert_eq!(a.effective_lrs(), c.effective_lrs());
}

#[test]
fn resume_from_state_is_bitwise_identical() {
    // relative steps with parameter scale, first moment and weight decay
    resume_case(AdafactorConfig { beta1: Some(0.9), weight_decay: 0.01, ..AdafactorConfig::default() });
    // external lr, warmup_init-free, no first moment
    resume_case(AdafactorConfig {
        relative_step: false,
        scale_parameter: false,
        clip_threshold: 0.5,
        ..AdafactorConfig::default()
    });
    // warmup_init
    resume_case(AdafactorConfig { warmup_init: true, ..AdafactorConfig::default() });
}

#[test]
fn load_state_rejects_mismatches_by_name() {
    let (vars, grads) = problem();
    let cfg = AdafactorConfig { beta1: Some(0.9), ..AdafactorConfig::default() };
    let mut opt = Adafactor::new(groups_for(&vars), cfg).unwrap();
    opt.step(&grads[2], &[1e-3, 1e-3]).unwrap();
    let state = opt.state().unwrap();
    let err = |groups: Vec<ParamGroup>, state: &OptimizerState| {
        let mut o = Adafactor::new(groups, AdafactorConfig::default()).unwrap();
        o.load_state(state).unwrap_err().to_string()
    };

    // a 4-D parameter with another last dim: its column statistics no longer fit
    let mut other = fresh_copy(&vars);
    other[1] = Var::zeros((2, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let e = err(groups_for(&other), &state);
    assert!(e.contains("unet.0.exp_avg") && e.contains("[2, 2, 3, 4]"), "{e}");
    // a 1-D parameter that became 2-D: a full second moment is not a factored one
    let mut other = fresh_copy(&vars);
    other[2] = Var::zeros((5, 1), DType::F32, &Device::Cpu).unwrap();
    let e = err(groups_for(&other), &state);
    assert!(e.contains("unet.1."), "{e}");

    // a tensor missing / an unexpected one
    let mut missing = state.clone();
    missing.tensors.remove("textencoder.0.exp_avg_sq_col");
    let e = err(groups_for(&vars), &missing);
    assert!(e.contains("textencoder.0.exp_avg_sq_col"), "{e}");
    let mut no_momentum = state.clone();
    no_momentum.scalars["beta1"] = Value::Null;
    let e = err(groups_for(&vars), &no_momentum);
    assert!(e.contains("exp_avg") && e.contains("unexpected"), "{e}");
    let mut extra = state.clone();
    extra.tensors.insert("unet.7.RMS".into(), Tensor::new(1f32, &Device::Cpu).unwrap());
    let e = err(groups_for(&vars), &extra);
    assert!(e.contains("unet.7.RMS"), "{e}");

    // another optimizer's state, both ways
    let mut adamw = AdamW::new(groups_for(&vars), AdamWConfig::default()).unwrap();
    adamw.step(&grads[2], &[1e-3, 1e-3]).unwrap();
    let e = err(groups_for(&vars), &adamw.state().unwrap());
    assert!(e.contains("AdamW"), "{e}");
    let e = adamw.load_state(&state).unwrap_err().to_string();
    assert!(e.contains("Adafactor"), "{e}");

    // bad hyperparameters in the state
    let mut bad = state.clone();
    bad.scalars["relative_step"] = false.into();
    bad.scalars["warmup_init"] = true.into();
    let e = err(groups_for(&vars), &bad);
    assert!(e.contains("warmup_init"), "{e}");

    // a failed load leaves the optimizer as it was
    let before = opt.state().unwrap();
    assert!(opt.load_state(&missing).is_err());
    let after = opt.state().unwrap();
    assert_eq!(before.scalars, after.scalars);
    assert_eq!(before.tensors.len(), after.tensors.len());
}

#[test]
fn step_checks_its_inputs_before_touching_anything() {
    let (vars, grads) = problem();
    let mut opt = Adafactor::new(groups_for(&vars), AdafactorConfig::default()).unwrap();
    let before: Vec<Vec<f32>> = vars.iter().map(|v| flat(v.as_tensor())).collect();
    assert!(opt.step(&grads[3], &[1e-3]).unwrap_err().to_string().contains("2 param groups"));
    let mut bad = grads[3].clone();
    bad[1][1] = Some(Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap());
    let e = opt.step(&bad, &[1e-3, 1e-3]).unwrap_err().to_string();
    assert!(e.contains("Adafactor") && e.contains("unet") && e.contains("[4]"), "{e}");
    let after: Vec<Vec<f32>> = vars.iter().map(|v| flat(v.as_tensor())).collect();
    assert_eq!(before, after, "a rejected step changed parameters");
    assert_eq!(opt.state().unwrap().tensors.len(), 0);
}

#[test]
fn non_f32_vars_are_updated_through_f32() {
    let v = Var::from_tensor(&pseudo_random(&[3, 2], 7).unwrap()).unwrap(); // f64
    let v32 = Var::from_tensor(&v.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
    let g = pseudo_random(&[3, 2], 8).unwrap();
    let cfg = AdafactorConfig { beta1: Some(0.9), weight_decay: 0.1, ..AdafactorConfig::default() };
    let group = |v: &Var| vec![ParamGroup { name: "unet".into(), vars: vec![v.clone()], lr: 0.1 }];
    let mut a = Adafactor::new(group(&v), cfg).unwrap();
    let mut b = Adafactor::new(group(&v32), cfg).unwrap();
    a.step(&[vec![Some(g.clone())]], &[0.1]).unwrap();
    b.step(&[vec![Some(g.to_dtype(DType::F32).unwrap())]], &[0.1]).unwrap();
    assert_eq!(v.dtype(), DType::F64);
    assert_eq!(flat(&v.as_tensor().to_dtype(DType::F32).unwrap()), flat(v32.as_tensor()));
    assert_eq!(a.state().unwrap().tensors["unet.0.exp_avg_sq_row"].dtype(), DType::F32);
}

#[test]
fn relative_step_ignores_the_learning_rates() {
    let (vars, grads) = problem();
    let (x, y) = (fresh_copy(&vars), fresh_copy(&vars));
    let mut a = Adafactor::new(groups_for(&x), AdafactorConfig::default()).unwrap();
    let mut b = Adafactor::new(groups_for(&y), AdafactorConfig::default()).unwrap();
    a.step(&grads[2], &[1e-3, 1e-3]).unwrap();
    b.step(&grads[2], &[0.0, 7.0]).unwrap();
    for (p, q) in x.iter().zip(&y) {
        assert_eq!(flat(p.as_tensor()), flat(q.as_tensor()));
    }
}

#[test]
fn construction_errors_and_registry() {
    let v = Var::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
    let group = || vec![ParamGroup { name: "unet".into(), vars: vec![v.clone()], lr: 1e-4 }];
    let build_err = |items: &[&str]| Adafactor::from_args(group(), &args(items)).unwrap_err().to_string();

    let e = build_err(&["betas=0.9,0.99"]);
    assert!(e.contains("`betas`") && e.contains("clip_threshold"), "{e}");
    assert!(build_err(&["lr=1e-3"]).contains("--learning_rate"));
    let e = build_err(&["relative_step=1"]);
    assert!(e.contains("relative_step") && e.contains("True or False"), "{e}");
    let e = build_err(&["eps=1e-30"]);
    assert!(e.contains("`eps`"), "{e}");
    let e = build_err(&["beta1='0.9'"]);
    assert!(e.contains("beta1") && e.contains("'0.9'"), "{e}");
    let e = build_err(&["warmup_init=2"]);
    assert!(e.contains("warmup_init"), "{e}");
    // transformers' own check, for direct construction (sd-scripts repairs this combination)
    let cfg = AdafactorConfig { relative_step: false, warmup_init: true, ..AdafactorConfig::default() };
    let e = Adafactor::new(group(), cfg).unwrap_err().to_string();
    assert!(e.contains("`warmup_init=True` requires `relative_step=True`"), "{e}");
    assert!(
        Adafactor::from_args(group(), &args(&["relative_step=False", "warmup_init=True"]))
            .unwrap()
            .config()
            .relative_step
    );
    // beta1=None is transformers' default written out
    let none = Adafactor::from_args(group(), &args(&["beta1=None"])).unwrap();
    assert_eq!(none.config().beta1, None);
    assert_eq!(none.description(), "transformers.optimization.Adafactor(beta1=None,relative_step=True)");

    // the scheduler sd-scripts cannot combine with an external lr
    for sched in ["adafactor", "adafactor:0.001"] {
        let e = AdafactorSetup::resolve(&args(&["relative_step=False"]), 1e-3, sched, 1.0).unwrap_err();
        assert!(e.contains(sched) && e.contains("relative_step"), "{e}");
    }
    let e = AdafactorSetup::resolve(&args(&["decay_rate=True"]), 1e-3, "constant", 1.0).unwrap_err();
    assert!(e.contains("decay_rate"), "{e}");

    // registry
    let kind = OptimizerKind::parse("adafactor").unwrap();
    assert_eq!(kind, OptimizerKind::Adafactor);
    let opt = kind.build(group(), &OptimizerArgs::default()).unwrap();
    assert_eq!(opt.description(), "transformers.optimization.Adafactor(relative_step=True)");
    assert_eq!(opt.effective_lrs(), Some(vec![1e-4]));
    let opt = kind.build(group(), &args(&["relative_step=False", "scale_parameter=False"])).unwrap();
    assert_eq!(opt.effective_lrs(), None);
    let e = kind.build(group(), &args(&["foo=1"])).err().unwrap().to_string();
    assert!(e.contains("`foo`"), "{e}");
}
