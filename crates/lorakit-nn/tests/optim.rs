//! AdamW, clip_grad_norm and optimizer_args parsing against PyTorch / sd-scripts numbers
//! (`tests/fixtures/reference/optim/`, written by `tools/reference/optim_fixture.py`), plus
//! resume and error behaviour.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use lorakit_nn::gradcheck::pseudo_random;
use lorakit_nn::optim::{
    clip_grad_norm, parse_optimizer_args, AdamW, AdamWConfig, ArgValue, Optimizer, OptimizerArgs, OptimizerState,
    ParamGroup,
};
use serde_json::Value;

use crate::common;
use common::{f32s, fresh_copy, shapes, strings, tensor};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/optim").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// |got − want| ≤ rel·|want| + abs, element-wise.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        assert!((g - w).abs() <= rel * w.abs() + abs, "{what}[{i}]: got {g}, want {w} (diff {:e})", (g - w).abs());
    }
}

// ------------------------------------------------------------------------------------------ AdamW

#[test]
fn adamw_matches_torch() {
    let fx = fixture("adamw.json");
    for run in fx["runs"].as_array().unwrap() {
        let name = run["name"].as_str().unwrap();
        let shapes = shapes(&run["shapes"]);
        let vars: Vec<Var> = run["init"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&shapes)
            .map(|(v, s)| Var::from_tensor(&tensor(v, s)).unwrap())
            .collect();
        // param index → (group, position in group)
        let mut place = vec![(0, 0); vars.len()];
        let mut groups = Vec::new();
        for (gi, g) in run["groups"].as_array().unwrap().iter().enumerate() {
            let idx: Vec<usize> =
                g["params"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
            for (pos, &i) in idx.iter().enumerate() {
                place[i] = (gi, pos);
            }
            groups.push(ParamGroup {
                name: g["name"].as_str().unwrap().into(),
                vars: idx.iter().map(|&i| vars[i].clone()).collect(),
                lr: g["lr"].as_f64().unwrap(),
            });
        }
        let args = OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap();
        let mut opt = AdamW::from_args(groups, &args).unwrap();
        assert_eq!(opt.description(), run["ss_optimizer"].as_str().unwrap(), "{name}: ss_optimizer");
        let r = &run["resolved"];
        let betas = r["betas"].as_array().unwrap();
        assert_eq!(
            *opt.config(),
            AdamWConfig {
                betas: (betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap()),
                eps: r["eps"].as_f64().unwrap(),
                weight_decay: r["weight_decay"].as_f64().unwrap(),
            },
            "{name}: resolved hyperparameters"
        );

        let steps = run["grads"].as_array().unwrap();
        for (step, step_grads) in steps.iter().enumerate() {
            let mut grads: Vec<Vec<Option<Tensor>>> = opt.groups().iter().map(|g| vec![None; g.vars.len()]).collect();
            for (i, g) in step_grads.as_array().unwrap().iter().enumerate() {
                if !g.is_null() {
                    let (gi, pos) = place[i];
                    grads[gi][pos] = Some(tensor(g, &shapes[i]));
                }
            }
            let lrs: Vec<f64> = run["lrs"][step].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            opt.step(&grads, &lrs).unwrap();
            for (i, var) in vars.iter().enumerate() {
                let want = f32s(&run["params_after"][step][i]);
                assert_close(&format!("{name} step {step} param {i}"), &flat(var.as_tensor()), &want, 1e-6, 1e-8);
            }
        }

        // The moments and per-parameter step counts torch ended with.
        let state = opt.state().unwrap();
        for (i, want) in run["final_state"].as_array().unwrap().iter().enumerate() {
            let (gi, pos) = place[i];
            let group = state.scalars["groups"][gi].clone();
            assert_eq!(group["steps"][pos].as_u64(), want["step"].as_u64(), "{name} param {i}: step count");
            let gname = group["name"].as_str().unwrap().to_string();
            for what in ["exp_avg", "exp_avg_sq"] {
                let got = flat(&state.tensors[&format!("{gname}.{pos}.{what}")]);
                let want = f32s(&want[what]);
                let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
                assert_close(&format!("{name} param {i} {what}"), &got, &want, 1e-5, 1e-6 * scale);
            }
        }
    }
}

/// Per-group gradient lists, as `Optimizer::step` takes them.
type Grads = Vec<Vec<Option<Tensor>>>;

fn problem() -> (Vec<Var>, Vec<Grads>) {
    let shapes: [&[usize]; 3] = [&[4, 3], &[2, 2, 3, 3], &[5]];
    let vars: Vec<Var> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Var::from_tensor(&pseudo_random(s, i as u64).unwrap().to_dtype(DType::F32).unwrap()).unwrap())
        .collect();
    let grads = (0..8u64)
        .map(|step| {
            let g = |i: usize| {
                // param 2 gets its first gradient at step 2 (its state is created late)
                (i != 2 || step >= 2).then(|| {
                    pseudo_random(shapes[i], 100 + 10 * step + i as u64).unwrap().to_dtype(DType::F32).unwrap()
                })
            };
            vec![vec![g(0)], vec![g(1), g(2)]]
        })
        .collect();
    (vars, grads)
}

fn groups_for(vars: &[Var]) -> Vec<ParamGroup> {
    vec![
        ParamGroup { name: "textencoder".into(), vars: vec![vars[0].clone()], lr: 5e-3 },
        ParamGroup { name: "unet".into(), vars: vec![vars[1].clone(), vars[2].clone()], lr: 1e-2 },
    ]
}

/// What a resume goes through: tensors to plain data and back, scalars to JSON text and back.
fn via_disk(state: &OptimizerState) -> OptimizerState {
    let tensors: BTreeMap<String, Tensor> = state
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), Tensor::from_vec(flat(t), t.dims(), &Device::Cpu).unwrap()))
        .collect();
    let scalars = serde_json::from_str(&serde_json::to_string(&state.scalars).unwrap()).unwrap();
    OptimizerState { tensors, scalars }
}

#[test]
fn resume_from_state_is_bitwise_identical() {
    let (vars, grads) = problem();
    let cfg = AdamWConfig { betas: (0.85, 0.995), eps: 1e-7, weight_decay: 0.05 };
    let lrs = |step: usize| vec![5e-3 * (step as f64 + 1.0) / 8.0, 1e-2 * (step as f64 + 1.0) / 8.0];

    let straight = fresh_copy(&vars);
    let mut a = AdamW::new(groups_for(&straight), cfg).unwrap();
    for (step, g) in grads.iter().enumerate() {
        a.step(g, &lrs(step)).unwrap();
    }

    // Interrupted after 3 steps (param 2 has had one update, so its state exists but is young).
    let first = fresh_copy(&vars);
    let mut b = AdamW::new(groups_for(&first), cfg).unwrap();
    for (step, g) in grads.iter().enumerate().take(3) {
        b.step(g, &lrs(step)).unwrap();
    }
    let saved = via_disk(&b.state().unwrap());
    let resumed_vars = fresh_copy(&first);
    drop(b);
    let mut c = AdamW::new(groups_for(&resumed_vars), AdamWConfig::default()).unwrap();
    c.load_state(&saved).unwrap();
    assert_eq!(*c.config(), cfg, "saved hyperparameters are restored");
    for (step, g) in grads.iter().enumerate().skip(3) {
        c.step(g, &lrs(step)).unwrap();
    }
    for (i, (x, y)) in straight.iter().zip(&resumed_vars).enumerate() {
        let (x, y) = (flat(x.as_tensor()), flat(y.as_tensor()));
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "param {i} differs after resume");
    }
    // the optimizer state agrees too
    let (sa, sc) = (a.state().unwrap(), c.state().unwrap());
    assert_eq!(sa.scalars, sc.scalars);
    assert_eq!(sa.tensors.keys().collect::<Vec<_>>(), sc.tensors.keys().collect::<Vec<_>>());
    for (k, t) in &sa.tensors {
        assert_eq!(flat(t), flat(&sc.tensors[k]), "{k}");
    }
}

#[test]
fn load_state_rejects_mismatches_by_name() {
    let (vars, grads) = problem();
    let mut opt = AdamW::new(groups_for(&vars), AdamWConfig::default()).unwrap();
    opt.step(&grads[2], &[1e-3, 1e-3]).unwrap();
    let state = opt.state().unwrap();
    let err = |groups: Vec<ParamGroup>, state: &OptimizerState| {
        let mut o = AdamW::new(groups, AdamWConfig::default()).unwrap();
        o.load_state(state).unwrap_err().to_string()
    };

    // unet param 0 has another shape in this run
    let mut other = fresh_copy(&vars);
    other[1] = Var::zeros((2, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let e = err(groups_for(&other), &state);
    assert!(e.contains("unet.0.exp_avg") && e.contains("[2, 2, 3, 3]"), "{e}");

    // renamed group
    let mut renamed = groups_for(&vars);
    renamed[1].name = "unet_block1".into();
    let e = err(renamed, &state);
    assert!(e.contains("unet") && e.contains("unet_block1"), "{e}");

    // one group missing
    let e = err(groups_for(&vars).into_iter().take(1).collect(), &state);
    assert!(e.contains("2 param groups"), "{e}");

    // a tensor missing / an unexpected one
    let mut missing = state.clone();
    missing.tensors.remove("textencoder.0.exp_avg_sq");
    let e = err(groups_for(&vars), &missing);
    assert!(e.contains("textencoder.0.exp_avg_sq"), "{e}");
    let mut extra = state.clone();
    extra.tensors.insert("unet.7.exp_avg".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let e = err(groups_for(&vars), &extra);
    assert!(e.contains("unet.7.exp_avg"), "{e}");

    // not an AdamW state
    let mut lion = state.clone();
    lion.scalars["optimizer"] = "Lion".into();
    let e = err(groups_for(&vars), &lion);
    assert!(e.contains("Lion"), "{e}");

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
    let mut opt = AdamW::new(groups_for(&vars), AdamWConfig::default()).unwrap();
    let before: Vec<Vec<f32>> = vars.iter().map(|v| flat(v.as_tensor())).collect();

    assert!(opt.step(&grads[3], &[1e-3]).unwrap_err().to_string().contains("2 param groups"));
    assert!(opt.step(&grads[3][..1], &[1e-3, 1e-3]).is_err());
    let mut bad = grads[3].clone();
    bad[1][1] = Some(Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap());
    let e = opt.step(&bad, &[1e-3, 1e-3]).unwrap_err().to_string();
    assert!(e.contains("unet") && e.contains("[4]") && e.contains("[5]"), "{e}");
    assert!(opt.step(&grads[3], &[f64::NAN, 1e-3]).is_err());

    let after: Vec<Vec<f32>> = vars.iter().map(|v| flat(v.as_tensor())).collect();
    assert_eq!(before, after, "a rejected step changed parameters");
    assert_eq!(opt.state().unwrap().tensors.len(), 0);
}

#[test]
fn adamw_updates_non_f32_vars_through_f32() {
    let v = Var::from_tensor(&pseudo_random(&[3, 2], 7).unwrap()).unwrap(); // f64
    let v32 = Var::from_tensor(&v.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
    let g = pseudo_random(&[3, 2], 8).unwrap();
    let mut a =
        AdamW::new(vec![ParamGroup { name: "unet".into(), vars: vec![v.clone()], lr: 0.1 }], AdamWConfig::default())
            .unwrap();
    let mut b =
        AdamW::new(vec![ParamGroup { name: "unet".into(), vars: vec![v32.clone()], lr: 0.1 }], AdamWConfig::default())
            .unwrap();
    a.step(&[vec![Some(g.clone())]], &[0.1]).unwrap();
    b.step(&[vec![Some(g.to_dtype(DType::F32).unwrap())]], &[0.1]).unwrap();
    assert_eq!(v.dtype(), DType::F64);
    assert_eq!(flat(&v.as_tensor().to_dtype(DType::F32).unwrap()), flat(v32.as_tensor()));
    assert_eq!(a.state().unwrap().tensors["unet.0.exp_avg"].dtype(), DType::F32);
}

#[test]
fn adamw_construction_errors() {
    let v = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let group = |name: &str, lr: f64| ParamGroup { name: name.into(), vars: vec![v.clone()], lr };
    let args = |items: &[&str]| OptimizerArgs::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();

    let e = AdamW::from_args(vec![group("unet", 1e-4)], &args(&["weight_decay=0.1", "decouple=True"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`decouple`") && e.contains("betas") && e.contains("weight_decay"), "{e}");
    let e = AdamW::from_args(vec![group("unet", 1e-4)], &args(&["lr=1e-3"])).unwrap_err().to_string();
    assert!(e.contains("--learning_rate"), "{e}");
    let e = AdamW::from_args(vec![group("unet", 1e-4)], &args(&["betas=0.9"])).unwrap_err().to_string();
    assert!(e.contains("betas"), "{e}");
    let e = AdamW::from_args(vec![group("unet", 1e-4)], &args(&["betas=0.9,1.0"])).unwrap_err().to_string();
    assert!(e.contains("Invalid beta parameter at index 1"), "{e}");
    let e = AdamW::from_args(vec![group("unet", 1e-4)], &args(&["weight_decay='0.1'"])).unwrap_err().to_string();
    assert!(e.contains("weight_decay") && e.contains("'0.1'"), "{e}");
    let e = AdamW::from_args(vec![group("unet", 1e-4)], &args(&["amsgrad=True"])).unwrap_err().to_string();
    assert!(e.contains("amsgrad"), "{e}");
    assert!(AdamW::from_args(vec![group("unet", 1e-4)], &args(&["amsgrad=False", "foreach=None"])).is_ok());
    let e = AdamW::new(vec![group("unet", 1e-4), group("unet", 1e-4)], AdamWConfig::default()).unwrap_err().to_string();
    assert!(e.contains("`unet`"), "{e}");
    assert!(AdamW::new(vec![group("unet", -1.0)], AdamWConfig::default()).is_err());

    let plain = AdamW::new(vec![group("unet", 1e-4)], AdamWConfig::default()).unwrap();
    assert_eq!(plain.description(), "torch.optim.adamw.AdamW");
    assert_eq!(plain.scheduled_lrs(0.5), vec![5e-5]);
}

// --------------------------------------------------------------------------------- clip_grad_norm

#[test]
fn clip_grad_norm_matches_torch() {
    let fx = fixture("clip_grad_norm.json");
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let shapes = shapes(&case["shapes"]);
        // split into two "groups" to exercise the nested layout
        let g: Vec<Option<Tensor>> = case["grads"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&shapes)
            .map(|(v, s)| (!v.is_null()).then(|| tensor(v, s)))
            .collect();
        let mut grads = vec![g[..1].to_vec(), g[1..].to_vec()];
        let total = clip_grad_norm(&mut grads, case["max_norm"].as_f64().unwrap()).unwrap();
        let want = case["total_norm"].as_f64().unwrap();
        assert!((total - want).abs() <= 1e-6 * want, "{name}: total norm {total}, torch {want}");
        let got: Vec<Option<Tensor>> = grads.concat();
        for (i, (g, w)) in got.iter().zip(case["grads_after"].as_array().unwrap()).enumerate() {
            match g {
                None => assert!(w.is_null(), "{name}: grad {i} disappeared"),
                Some(g) => assert_close(&format!("{name} grad {i}"), &flat(g), &f32s(w), 1e-6, 1e-9),
            }
        }
    }
}

#[test]
fn clip_grad_norm_edge_cases() {
    let mut none: Vec<Vec<Option<Tensor>>> = vec![vec![None], vec![]];
    assert_eq!(clip_grad_norm(&mut none, 1.0).unwrap(), 0.0);
    let mut g = vec![vec![Some(Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap())]];
    assert!(clip_grad_norm(&mut g, -1.0).is_err());
    assert!(clip_grad_norm(&mut g, f64::NAN).is_err());
    assert_eq!(clip_grad_norm(&mut g, 10.0).unwrap(), 5.0);
    assert_eq!(flat(g[0][0].as_ref().unwrap()), vec![3.0, 4.0], "below max_norm: untouched");
}

// --------------------------------------------------------------------------------- optimizer_args

fn decode(v: &Value) -> ArgValue {
    let items = || v["v"].as_array().unwrap().iter().map(decode).collect();
    match v["t"].as_str().unwrap() {
        "none" => ArgValue::None,
        "bool" => ArgValue::Bool(v["v"].as_bool().unwrap()),
        "int" => ArgValue::Int(v["v"].as_i64().unwrap()),
        "float" => ArgValue::Float(match &v["v"] {
            Value::String(s) => s.parse().unwrap(), // "inf", "-inf", "nan"
            x => x.as_f64().unwrap(),
        }),
        "str" => ArgValue::Str(v["v"].as_str().unwrap().into()),
        "tuple" => ArgValue::Tuple(items()),
        "list" => ArgValue::List(items()),
        t => panic!("unknown tag {t}"),
    }
}

/// Equality that tells -0.0 from 0.0 (Python's str does).
fn same(a: &ArgValue, b: &ArgValue) -> bool {
    match (a, b) {
        (ArgValue::Float(x), ArgValue::Float(y)) => x.to_bits() == y.to_bits(),
        (ArgValue::Tuple(x), ArgValue::Tuple(y)) | (ArgValue::List(x), ArgValue::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        _ => a == b,
    }
}

#[test]
fn optimizer_args_parse_like_sd_scripts() {
    let fx = fixture("optimizer_args.json");
    for case in fx["cases"].as_array().unwrap() {
        let arg = case["arg"].as_str().unwrap();
        let parsed = OptimizerArgs::parse(&[arg.to_string()]);
        if case["ok"].as_bool().unwrap() {
            let parsed = parsed.unwrap_or_else(|e| panic!("`{arg}`: {e}"));
            let (key, value) = &parsed.entries()[0];
            assert_eq!(key, case["key"].as_str().unwrap(), "`{arg}`: key");
            let want = decode(&case["value"]);
            assert!(same(value, &want), "`{arg}`: got {value:?}, sd-scripts {want:?}");
            assert_eq!(parsed.describe(), case["text"].as_str().unwrap(), "`{arg}`: ss_optimizer text");
        } else {
            assert!(parsed.is_err(), "`{arg}` parsed as {parsed:?}, sd-scripts fails: {}", case["error"]);
        }
    }
}

#[test]
fn optimizer_args_order_errors_and_map() {
    let items: Vec<String> = ["weight_decay=0.1", "betas=0.9,0.99", "weight_decay=0.2"].map(String::from).to_vec();
    let parsed = OptimizerArgs::parse(&items).unwrap();
    // a repeated key keeps its first position and its last value (a Python dict)
    assert_eq!(parsed.describe(), "weight_decay=0.2,betas=(0.9, 0.99)");
    let map = parse_optimizer_args(&items).unwrap();
    assert_eq!(map.len(), 2);
    assert_eq!(map["betas"], ArgValue::Tuple(vec![ArgValue::Float(0.9), ArgValue::Float(0.99)]));

    let e = parse_optimizer_args(&["mode=foo".into()]).unwrap_err();
    assert!(e.contains("mode=foo") && e.contains("'foo'"), "{e}");
    let e = parse_optimizer_args(&["a=b=c".into()]).unwrap_err();
    assert!(e.contains("exactly one `=`"), "{e}");
    let e = parse_optimizer_args(&["novalue".into()]).unwrap_err();
    assert!(e.contains("novalue"), "{e}");
    assert!(parse_optimizer_args(&["x={'a': 1}".into()]).unwrap_err().contains("dict"));
    assert!(parse_optimizer_args(&["x=99999999999999999999".into()]).unwrap_err().contains("too large"));

    // repr details inside containers
    let value_of = |arg: &str| OptimizerArgs::parse(&[arg.to_string()]).unwrap().entries()[0].1.clone();
    assert_eq!(value_of("x=('it''s', \"q\\\"\", 1e-5, -0.0, None)").to_string(), "('its', 'q\"', 1e-05, -0.0, None)");
    assert_eq!(value_of("x=[\"it's\"]").to_string(), "[\"it's\"]");
}

#[test]
fn paged_aliases_keep_their_class_in_ss_optimizer() {
    use lorakit_nn::optim::OptimizerKind;
    assert_eq!(OptimizerKind::parse("PagedAdamW8bit").unwrap(), OptimizerKind::AdamW8bit);
    assert_eq!(
        OptimizerKind::description_as_named("PagedAdamW8bit", "bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1)"),
        "bitsandbytes.optim.adamw.PagedAdamW8bit(weight_decay=0.1)"
    );
    assert_eq!(
        OptimizerKind::description_as_named("pagedlion8bit", "bitsandbytes.optim.lion.Lion8bit"),
        "bitsandbytes.optim.lion.PagedLion8bit"
    );
    assert_eq!(OptimizerKind::description_as_named("AdamW", "torch.optim.adamw.AdamW"), "torch.optim.adamw.AdamW");
}
