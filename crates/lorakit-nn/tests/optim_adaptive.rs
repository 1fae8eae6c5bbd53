//! Prodigy, AdamWScheduleFree and ProdigyPlusScheduleFree against the Python libraries
//! (`tests/fixtures/reference/optim/{prodigy,adamw_schedule_free,prodigy_plus_schedule_free}.json`,
//! written by `tools/reference/optim_adaptive_fixture.py` through sd-scripts' `get_optimizer`), plus
//! resume, train/eval and error behaviour.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use lorakit_nn::optim::{Optimizer, OptimizerArgs, OptimizerKind, OptimizerState, ParamGroup};
use serde_json::Value;

use crate::common;
use common::{args, shapes, strings};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/optim").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

// ------------------------------------------------------------------- the fixture's input generator

fn splitmix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `det_values` of the fixture script: multiples of 1/1024 in [-2, 2].
fn det_values(seed: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|j| (((splitmix64((seed << 20).wrapping_add(j)) >> 40) % 4097) as f32 - 2048.0) / 1024.0)
        .collect()
}

/// `{"seeds": [..], "scale": s}` → s · Σ det(seed) (exact in f32), or `{"zeros": true}`.
fn det_tensor(spec: &Value, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut acc = vec![0f32; n];
    if spec.get("zeros").and_then(|v| v.as_bool()) != Some(true) {
        for seed in spec["seeds"].as_array().unwrap() {
            for (a, v) in acc.iter_mut().zip(det_values(seed.as_u64().unwrap(), n)) {
                *a += v;
            }
        }
        let scale = spec["scale"].as_f64().unwrap() as f32;
        acc.iter_mut().for_each(|a| *a *= scale);
    }
    Tensor::from_vec(acc, shape, &Device::Cpu).unwrap()
}

#[test]
fn generator_matches_the_fixture_script() {
    for file in ["prodigy.json", "adamw_schedule_free.json", "prodigy_plus_schedule_free.json"] {
        let c = &fixture(file)["generator_check"];
        let want: Vec<f32> = c["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(det_values(c["seed"].as_u64().unwrap(), c["n"].as_u64().unwrap() as usize), want, "{file}");
    }
}

// ------------------------------------------------------------------------------------ the harness

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
}

/// A fixture number: a JSON number or the exact decimal text the script writes for group scalars.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

struct Run {
    name: String,
    vars: Vec<Var>,
    shapes: Vec<Vec<usize>>,
    /// param index → (group, position in group)
    place: Vec<(usize, usize)>,
    groups: Vec<ParamGroup>,
    args: OptimizerArgs,
    kind: OptimizerKind,
}

fn setup(run: &Value) -> Run {
    let name = run["name"].as_str().unwrap().to_string();
    let shapes = shapes(&run["shapes"]);
    let vars: Vec<Var> = run["init"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&shapes)
        .map(|(spec, s)| Var::from_tensor(&det_tensor(spec, s)).unwrap())
        .collect();
    let mut place = vec![(0, 0); vars.len()];
    let mut groups = Vec::new();
    for (gi, g) in run["groups"].as_array().unwrap().iter().enumerate() {
        let idx: Vec<usize> = g["params"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
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
    let kind = OptimizerKind::parse(run["optimizer_type"].as_str().unwrap()).unwrap();
    Run { name, vars, shapes, place, groups, args, kind }
}

fn step_grads(run: &Run, op: &Value) -> Vec<Vec<Option<Tensor>>> {
    let mut grads: Vec<Vec<Option<Tensor>>> = run.groups.iter().map(|g| vec![None; g.vars.len()]).collect();
    for (i, spec) in op["grads"].as_array().unwrap().iter().enumerate() {
        if !spec.is_null() {
            let (gi, pos) = run.place[i];
            grads[gi][pos] = Some(det_tensor(spec, &run.shapes[i]));
        }
    }
    grads
}

fn lrs(op: &Value) -> Vec<f64> {
    op["lrs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Applies one fixture op (step / eval / train).
fn apply(run: &Run, opt: &mut dyn Optimizer, op: &Value) -> candle_core::Result<()> {
    match op["op"].as_str().unwrap() {
        "step" => opt.step(&step_grads(run, op), &lrs(op)),
        "eval" => opt.set_train_mode(false),
        "train" => opt.set_train_mode(true),
        other => panic!("unknown op {other}"),
    }
}

/// Our value of a library group scalar: `lrs[g]` for `lr`, else `group_scalars[g][key]`, else the
/// top-level `key` (Prodigy's d is shared by all groups).
fn our_scalar(state: &OptimizerState, gi: usize, key: &str) -> Option<Value> {
    let s = &state.scalars;
    if key == "lr" {
        return s["lrs"].get(gi).cloned();
    }
    s.get("group_scalars").and_then(|g| g.get(gi)).and_then(|g| g.get(key)).or_else(|| s.get(key)).cloned()
}

struct Stats {
    worst_param: f64,
    worst_scalar: f64,
}

/// Runs every fixture run of `file`: construction (or its error), each op (or its error), the
/// parameters (relative `param_rel` to |value| + the distance the library moved the parameter so
/// far) and the group scalars (relative `scalar_rel` to the scalar's largest magnitude so far).
fn check_fixture(file: &str, param_rel: f64, scalar_rel: f64) -> Stats {
    let fx = fixture(file);
    let mut stats = Stats { worst_param: 0.0, worst_scalar: 0.0 };
    for rv in fx["runs"].as_array().unwrap() {
        let run = setup(rv);
        let name = &run.name;
        let built = run.kind.build(run.groups.clone(), &run.args);
        let first_error = rv["ops"].get(0).and_then(|op| op.get("error")).and_then(|e| e.as_str());
        let mut opt = match (built, rv.get("construct_error").and_then(|e| e.as_str())) {
            (Err(e), Some(want)) => {
                assert!(e.to_string().contains(want), "{name}: error {e:?} should contain {want:?}");
                continue;
            }
            (Ok(_), Some(want)) => panic!("{name}: built, the library refused: {want}"),
            (Err(e), None) => {
                // We refuse at construction what the library refuses at its first step.
                let want = first_error.unwrap_or_else(|| panic!("{name}: {e}"));
                assert!(e.to_string().contains(want), "{name}: error {e:?} should contain {want:?}");
                continue;
            }
            (Ok(opt), None) => opt,
        };
        let init: Vec<Vec<f32>> = run.vars.iter().map(|v| flat(v.as_tensor())).collect();
        let mut scales: BTreeMap<(usize, String), f64> = BTreeMap::new();
        assert_eq!(opt.description(), rv["ss_optimizer"].as_str().unwrap(), "{name}: ss_optimizer");
        assert_eq!(opt.is_schedule_free(), rv["is_schedule_free"].as_bool().unwrap(), "{name}: schedule-free");
        for (n, op) in rv["ops"].as_array().unwrap().iter().enumerate() {
            let what = format!("{name} op {n} ({})", op["op"].as_str().unwrap());
            let result = apply(&run, opt.as_mut(), op);
            if let Some(want) = op.get("error").and_then(|e| e.as_str()) {
                let e = result.expect_err(&format!("{what}: the library fails with {want:?}"));
                assert!(e.to_string().contains(want), "{what}: error {e:?} should contain {want:?}");
                break;
            }
            result.unwrap_or_else(|e| panic!("{what}: {e}"));
            if let Some(params) = op.get("params") {
                for (i, (var, want)) in run.vars.iter().zip(params.as_array().unwrap()).enumerate() {
                    let got = flat(var.as_tensor());
                    let want: Vec<f32> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                    // How far the library moved the parameter from its start: errors in the
                    // adaptive step size scale with it (elements that end up near 0 by cancellation
                    // cannot be held to a relative bound of their own).
                    let moved = want.iter().zip(&init[i]).fold(0f64, |m, (&x, &x0)| m.max((x - x0).abs() as f64));
                    for (j, (&g, &w)) in got.iter().zip(&want).enumerate() {
                        let (g, w) = (g as f64, w as f64);
                        let err = (g - w).abs();
                        stats.worst_param = stats.worst_param.max(err / (w.abs() + moved).max(f64::MIN_POSITIVE));
                        assert!(
                            err <= param_rel * (w.abs() + moved),
                            "{what}: param {i}[{j}] = {g}, library {w} (diff {err:e})"
                        );
                    }
                }
            }
            let state = opt.state().unwrap();
            for (gi, want) in op["scalars"].as_array().unwrap().iter().enumerate() {
                for (key, w) in want.as_object().unwrap() {
                    let got = our_scalar(&state, gi, key);
                    match (w, number(w)) {
                        (Value::Null, _) => assert!(
                            got.as_ref().is_none_or(|g| g.is_null()),
                            "{what}: group {gi} `{key}` = {got:?}, the library has None"
                        ),
                        (Value::Bool(b), _) => {
                            assert_eq!(got.and_then(|g| g.as_bool()), Some(*b), "{what}: group {gi} `{key}`")
                        }
                        (_, Some(w)) => {
                            let g = got
                                .as_ref()
                                .and_then(number)
                                .unwrap_or_else(|| panic!("{what}: group {gi} `{key}` missing ({got:?})"));
                            // Relative to the largest magnitude the scalar had so far: Prodigy's
                            // running numerator crosses zero, and near zero its value is the
                            // cancellation of terms as large as before.
                            let scale = scales.entry((gi, key.clone())).or_insert(0f64);
                            *scale = scale.max(w.abs());
                            let err = (g - w).abs();
                            if *scale != 0.0 {
                                stats.worst_scalar = stats.worst_scalar.max(err / *scale);
                            }
                            assert!(err <= scalar_rel * *scale, "{what}: group {gi} `{key}` = {g}, library {w}");
                        }
                        _ => panic!("{what}: bad fixture scalar {key}"),
                    }
                }
            }
        }
    }
    stats
}

/// What a resume goes through: tensors to plain data and back, scalars to JSON text and back.
fn via_disk(state: &OptimizerState) -> OptimizerState {
    let tensors: BTreeMap<String, Tensor> = state
        .tensors
        .iter()
        .map(|(k, t)| {
            // through f32 values (exact for bf16 tensors too), keeping the dtype
            let back = Tensor::from_vec(flat(t), t.dims(), &Device::Cpu).unwrap().to_dtype(t.dtype()).unwrap();
            (k.clone(), back)
        })
        .collect();
    let scalars = serde_json::from_str(&serde_json::to_string(&state.scalars).unwrap()).unwrap();
    OptimizerState { tensors, scalars }
}

fn fresh_vars(run: &Run) -> (Vec<Var>, Vec<ParamGroup>) {
    let vars: Vec<Var> = run.vars.iter().map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap()).collect();
    let mut groups = run.groups.clone();
    for (i, v) in vars.iter().enumerate() {
        let (gi, pos) = run.place[i];
        groups[gi].vars[pos] = v.clone();
    }
    (vars, groups)
}

/// Runs a fixture run's ops straight through and, separately, interrupted after `cut` ops (state
/// saved, a new optimizer built from the same args over copies of the parameters, state loaded):
/// the parameters and the states must agree bit for bit.
fn check_resume(file: &str, run_name: &str, cut: usize) {
    let fx = fixture(file);
    let rv = fx["runs"].as_array().unwrap().iter().find(|r| r["name"] == run_name).unwrap();
    let run = setup(rv);
    let ops = rv["ops"].as_array().unwrap();
    let ops: Vec<&Value> = ops.iter().take_while(|op| op.get("error").is_none()).collect();
    assert!(cut < ops.len());

    let (straight_vars, straight_groups) = fresh_vars(&run);
    let mut a = run.kind.build(straight_groups, &run.args).unwrap();
    for op in &ops {
        apply(&run, a.as_mut(), op).unwrap();
    }

    let (first_vars, first_groups) = fresh_vars(&run);
    let mut b = run.kind.build(first_groups, &run.args).unwrap();
    for op in &ops[..cut] {
        apply(&run, b.as_mut(), op).unwrap();
    }
    let saved = via_disk(&b.state().unwrap());
    drop(b);
    let resumed: Vec<Var> =
        first_vars.iter().map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap()).collect();
    let mut groups = run.groups.clone();
    for (i, v) in resumed.iter().enumerate() {
        let (gi, pos) = run.place[i];
        groups[gi].vars[pos] = v.clone();
    }
    let mut c = run.kind.build(groups, &run.args).unwrap();
    c.load_state(&saved).unwrap();
    for op in &ops[cut..] {
        apply(&run, c.as_mut(), op).unwrap();
    }
    for (i, (x, y)) in straight_vars.iter().zip(&resumed).enumerate() {
        let (x, y) = (flat(x.as_tensor()), flat(y.as_tensor()));
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{run_name}: param {i} differs after a resume at op {cut}"
        );
    }
    let (sa, sc) = (a.state().unwrap(), c.state().unwrap());
    assert_eq!(sa.scalars, sc.scalars, "{run_name}: scalars after resume");
    assert_eq!(sa.tensors.keys().collect::<Vec<_>>(), sc.tensors.keys().collect::<Vec<_>>());
    for (k, t) in &sa.tensors {
        let (x, y) = (flat(t), flat(&sc.tensors[k]));
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{run_name}: state tensor {k}");
    }
    assert_eq!(a.effective_lrs(), c.effective_lrs());
}

/// A state after `n` ops of a run, and a builder of fresh optimizers over the same groups.
fn state_after(file: &str, run_name: &str, n: usize) -> (Run, OptimizerState) {
    let fx = fixture(file);
    let rv = fx["runs"].as_array().unwrap().iter().find(|r| r["name"] == run_name).unwrap();
    let run = setup(rv);
    let (_, groups) = fresh_vars(&run);
    let mut opt = run.kind.build(groups, &run.args).unwrap();
    for op in rv["ops"].as_array().unwrap().iter().take(n) {
        apply(&run, opt.as_mut(), op).unwrap();
    }
    let state = opt.state().unwrap();
    (run, state)
}

fn load_error(run: &Run, groups: Vec<ParamGroup>, state: &OptimizerState) -> String {
    let mut o = run.kind.build(groups, &run.args).unwrap();
    o.load_state(state).unwrap_err().to_string()
}

/// Mismatched states are refused with errors that name what does not fit.
fn check_load_rejections(file: &str, run_name: &str, n: usize, tensor: &str, other_optimizer: &str) {
    let (run, state) = state_after(file, run_name, n);
    let groups = || fresh_vars(&run).1;

    // a parameter with another shape
    let mut other = groups();
    let (gi, pos) = run.place[1];
    other[gi].vars[pos] = Var::zeros((2, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let e = load_error(&run, other, &state);
    assert!(e.contains(&format!("{}.{pos}.", run.groups[gi].name)) && e.contains("[2, 2, 3, 3]"), "{e}");

    // a renamed group / a missing group
    let mut renamed = groups();
    renamed[1].name = "unet_block1".into();
    let e = load_error(&run, renamed, &state);
    assert!(e.contains("unet_block1"), "{e}");
    let e = load_error(&run, groups().into_iter().take(1).collect(), &state);
    assert!(e.contains("2 param groups"), "{e}");

    // a missing / an unexpected tensor
    let mut missing = state.clone();
    assert!(missing.tensors.remove(tensor).is_some(), "{tensor}");
    let e = load_error(&run, groups(), &missing);
    assert!(e.contains(tensor), "{e}");
    let mut extra = state.clone();
    extra.tensors.insert("unet.7.exp_avg_sq".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let e = load_error(&run, groups(), &extra);
    assert!(e.contains("unet.7.exp_avg_sq"), "{e}");

    // another optimizer's state
    let mut foreign = state.clone();
    foreign.scalars["optimizer"] = other_optimizer.into();
    let e = load_error(&run, groups(), &foreign);
    assert!(e.contains(other_optimizer), "{e}");

    // a failed load leaves the optimizer as it was
    let mut o = run.kind.build(groups(), &run.args).unwrap();
    o.load_state(&state).unwrap();
    let before = o.state().unwrap();
    assert!(o.load_state(&missing).is_err());
    assert_eq!(before.scalars, o.state().unwrap().scalars);
}

fn one_group(lr: f64) -> Vec<ParamGroup> {
    vec![ParamGroup { name: "unet".into(), vars: vec![Var::zeros(3, DType::F32, &Device::Cpu).unwrap()], lr }]
}

fn build_error(kind: OptimizerKind, groups: Vec<ParamGroup>, items: &[&str]) -> String {
    match kind.build(groups, &args(items)) {
        Ok(_) => panic!("{items:?} should be refused"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------- Prodigy

#[test]
fn prodigy_matches_prodigyopt() {
    let s = check_fixture("prodigy.json", 1e-6, 1e-6);
    eprintln!("Prodigy: worst relative error {:e} (params), {:e} (d scalars)", s.worst_param, s.worst_scalar);
}

#[test]
fn prodigy_resume_is_bitwise_identical() {
    // after the lr-0 warmup step (state exists, k = 0) and in the middle of the run
    check_resume("prodigy.json", "defaults_warmup", 1);
    check_resume("prodigy.json", "defaults_warmup", 4);
    check_resume("prodigy.json", "all_args_group_lr_zero", 3);
    check_resume("prodigy.json", "coupled_decay_beta1_zero", 2);
}

#[test]
fn prodigy_load_state_rejects_mismatches() {
    check_load_rejections("prodigy.json", "defaults_warmup", 3, "unet.0.exp_avg", "AdamW");
    let (run, state) = state_after("prodigy.json", "all_args_group_lr_zero", 2);
    // s / p0 are strided (slice_p=3): 36 elements → 12
    let mut bad = state.clone();
    bad.tensors.insert("unet.0.s".into(), Tensor::zeros(36, DType::F32, &Device::Cpu).unwrap());
    let e = load_error(&run, fresh_vars(&run).1, &bad);
    assert!(e.contains("unet.0.s"), "{e}");
}

#[test]
fn prodigy_arguments_and_messages() {
    let k = OptimizerKind::Prodigy;
    let e = build_error(k, one_group(1.0), &["fsdp_in_use=True"]);
    assert!(e.contains("fsdp_in_use"), "{e}");
    let e = build_error(k, one_group(1.0), &["decouple=1"]);
    assert!(e.contains("decouple") && e.contains("True or False"), "{e}");
    let e = build_error(k, one_group(1.0), &["slice_p=0"]);
    assert!(e.contains("slice_p"), "{e}");
    let e = build_error(k, one_group(1.0), &["slice_p=2.0"]);
    assert!(e.contains("slice_p") && e.contains("integer"), "{e}");
    let e = build_error(k, one_group(1.0), &["amsgrad=False"]);
    assert!(e.contains("`amsgrad`") && e.contains("d_coef"), "{e}");
    let e = build_error(k, one_group(0.0), &[]);
    assert!(e.contains("Invalid learning rate"), "{e}");
    assert!(k.build(one_group(1.0), &args(&["growth_rate=1e999", "beta3=None"])).is_ok());

    let opt = k.build(one_group(1.0), &args(&[])).unwrap();
    assert_eq!(opt.description(), "prodigyopt.prodigy.Prodigy");
    assert_eq!(opt.effective_lrs(), Some(vec![1e-6]), "d0 · lr before the first step");
    assert!(!opt.is_schedule_free());

    // sd-scripts' warnings
    let w = lorakit_nn::optim::prodigy_lr_warnings(&one_group(1e-4));
    assert_eq!(w.len(), 2);
    assert!(
        w[0].starts_with("learning rate is too low. If using D-Adaptation or Prodigy") && w[0].ends_with("lr=0.0001")
    );
    assert!(lorakit_nn::optim::prodigy_lr_warnings(&one_group(1.0)).is_empty());
    let mut two = one_group(1.0);
    two.push(ParamGroup { name: "textencoder".into(), vars: two[0].vars.clone(), lr: 0.5 });
    let w = lorakit_nn::optim::prodigy_lr_warnings(&two);
    assert!(w.len() == 1 && w[0].contains("only the first one will take effect"), "{w:?}");
}

#[test]
fn prodigy_step_lr_rule_and_input_checks() {
    let fx = fixture("prodigy.json");
    let rv = &fx["runs"][0];
    let run = setup(rv);
    let mut opt = run.kind.build(run.groups.clone(), &run.args).unwrap();
    let op = &rv["ops"][2];
    let before: Vec<Vec<f32>> = run.vars.iter().map(|v| flat(v.as_tensor())).collect();
    let e = opt.step(&step_grads(&run, op), &[0.5, 1.0]).unwrap_err().to_string();
    assert!(e.contains("only supported for values of 0"), "{e}");
    let mut bad = step_grads(&run, op);
    bad[1][1] = Some(Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap());
    assert!(opt.step(&bad, &[1.0, 1.0]).unwrap_err().to_string().contains("[4]"));
    assert!(opt.step(&step_grads(&run, op), &[1.0]).is_err());
    let after: Vec<Vec<f32>> = run.vars.iter().map(|v| flat(v.as_tensor())).collect();
    assert_eq!(before, after, "a rejected step changed parameters");
    assert!(opt.state().unwrap().tensors.is_empty());
}

// ------------------------------------------------------------------------------ AdamWScheduleFree

#[test]
fn adamw_schedule_free_matches_schedulefree() {
    let s = check_fixture("adamw_schedule_free.json", 1e-6, 1e-12);
    eprintln!("AdamWScheduleFree: worst relative error {:e} (params), {:e} (scalars)", s.worst_param, s.worst_scalar);
}

#[test]
fn adamw_schedule_free_resume_is_bitwise_identical() {
    // in train mode mid-run, right after eval() (state taken at the x point), after eval → train
    check_resume("adamw_schedule_free.json", "defaults_toggle", 2);
    check_resume("adamw_schedule_free.json", "defaults_toggle", 4);
    check_resume("adamw_schedule_free.json", "all_args", 5);
    check_resume("adamw_schedule_free.json", "all_args", 6);
}

#[test]
fn adamw_schedule_free_load_state_rejects_mismatches() {
    check_load_rejections("adamw_schedule_free.json", "defaults_toggle", 3, "unet.1.z", "Prodigy");
    let (run, mut state) = state_after("adamw_schedule_free.json", "defaults_toggle", 3);
    state.scalars["group_scalars"].as_array_mut().unwrap().pop();
    let e = load_error(&run, fresh_vars(&run).1, &state);
    assert!(e.contains("group_scalars"), "{e}");
}

#[test]
fn adamw_schedule_free_modes_and_arguments() {
    let fx = fixture("adamw_schedule_free.json");
    let run = setup(&fx["runs"][0]);
    let mut opt = run.kind.build(run.groups.clone(), &run.args).unwrap();
    assert!(opt.is_schedule_free());
    assert_eq!(opt.effective_lrs(), Some(vec![0.0, 0.0]), "the library's scheduled_lr before a step");
    // eval/train before any step: no state, nothing moves
    let before: Vec<Vec<f32>> = run.vars.iter().map(|v| flat(v.as_tensor())).collect();
    opt.set_train_mode(false).unwrap();
    let e = opt.step(&step_grads(&run, &fx["runs"][0]["ops"][0]), &[1e-3, 2e-3]).unwrap_err().to_string();
    assert!(e.contains("not in train mode"), "{e}");
    opt.set_train_mode(true).unwrap();
    assert_eq!(before, run.vars.iter().map(|v| flat(v.as_tensor())).collect::<Vec<_>>());
    opt.step(&step_grads(&run, &fx["runs"][0]["ops"][0]), &[1e-3, 2e-3]).unwrap();
    assert_eq!(opt.effective_lrs(), Some(vec![1e-3, 2e-3]));

    let k = OptimizerKind::AdamWScheduleFree;
    assert_eq!(OptimizerKind::parse("adamwschedulefree").unwrap(), k);
    let e = build_error(k, one_group(1e-3), &["betas=(0.0,0.999)"]);
    assert!(e.contains("beta1"), "{e}");
    let e = build_error(k, one_group(1e-3), &["momentum=0.9"]);
    assert!(e.contains("`momentum`") && e.contains("warmup_steps"), "{e}");
    let e = build_error(k, one_group(1e-3), &["warmup_steps='10'"]);
    assert!(e.contains("warmup_steps"), "{e}");
    assert!(k.build(one_group(1e-3), &args(&["foreach=None", "warmup_steps=100"])).is_ok());
}

// ------------------------------------------------------------------------ ProdigyPlusScheduleFree

#[test]
fn prodigy_plus_matches_prodigyplus() {
    let s = check_fixture("prodigy_plus_schedule_free.json", 1e-6, 1e-6);
    eprintln!(
        "ProdigyPlusScheduleFree: worst relative error {:e} (params), {:e} (scalars)",
        s.worst_param, s.worst_scalar
    );
}

#[test]
fn prodigy_plus_resume_is_bitwise_identical() {
    let f = "prodigy_plus_schedule_free.json";
    check_resume(f, "defaults_two_groups", 2);
    check_resume(f, "defaults_two_groups", 3); // taken in eval mode (x point)
    check_resume(f, "prodigy_steps_d_coef", 6); // after the freeze: no p0/s any more
    check_resume(f, "bias_correction_split_mean", 4); // shared (harmonic-mean) d
    check_resume(f, "no_schedulefree_shared_d", 3);
}

#[test]
fn prodigy_plus_load_state_rejects_mismatches() {
    let f = "prodigy_plus_schedule_free.json";
    check_load_rejections(f, "defaults_two_groups", 2, "textencoder.1.exp_avg_sq_col", "AdamWScheduleFree");
    let (run, state) = state_after(f, "defaults_two_groups", 2);
    // a factored statistic of the wrong shape ([4, 32]: rows [4, 1], columns [1, 32])
    let mut bad = state.clone();
    bad.tensors
        .insert("textencoder.1.exp_avg_sq_row".into(), Tensor::zeros((1, 32), DType::F32, &Device::Cpu).unwrap());
    let e = load_error(&run, fresh_vars(&run).1, &bad);
    assert!(e.contains("textencoder.1.exp_avg_sq_row"), "{e}");
    // p0 without s
    let mut bad = state.clone();
    bad.tensors.remove("unet.0.s");
    let e = load_error(&run, fresh_vars(&run).1, &bad);
    assert!(e.contains("unet.0.s"), "{e}");
    // the state of a schedule-free run into a Prodigy-mode optimizer: z is not expected there
    let mut prodigy_mode = state.clone();
    prodigy_mode.scalars["use_schedulefree"] = false.into();
    let e = load_error(&run, fresh_vars(&run).1, &prodigy_mode);
    assert!(e.contains("exp_avg"), "{e}");
    // p0 / s are bf16 like the library's (f32 gradients)
    assert_eq!(state.tensors["unet.0.p0"].dtype(), DType::BF16);
    assert_eq!(state.tensors["unet.2.p0"].dims(), &[] as &[usize], "all-zero parameter: 0-d p0");
    assert_eq!(state.tensors["unet.0.s"].dims(), &[4], "every 11th of 36 elements");
}

#[test]
fn prodigy_plus_modes_and_arguments() {
    let fx = fixture("prodigy_plus_schedule_free.json");
    let rv = &fx["runs"][0];
    let run = setup(rv);
    let mut opt = run.kind.build(run.groups.clone(), &run.args).unwrap();
    assert!(opt.is_schedule_free());
    assert_eq!(opt.effective_lrs(), Some(vec![1e-6, 1e-6]), "d0 · lr");
    opt.set_train_mode(false).unwrap();
    let e = opt.step(&step_grads(&run, &rv["ops"][0]), &[1.0, 1.0]).unwrap_err().to_string();
    assert!(e.contains("Not in train mode"), "{e}");
    opt.set_train_mode(true).unwrap();
    opt.step(&step_grads(&run, &rv["ops"][0]), &[1.0, 1.0]).unwrap();
    let d: Vec<f64> = (0..2).map(|g| number(&rv["ops"][0]["scalars"][g]["d"]).unwrap()).collect();
    assert_eq!(opt.effective_lrs(), Some(d));

    // Prodigy mode: train/eval move nothing
    let (vars, groups) = fresh_vars(&run);
    let mut p = run.kind.build(groups, &args(&["use_schedulefree=False", "betas=(0.0,0.99)"])).unwrap();
    p.step(&step_grads(&run, &rv["ops"][0]), &[1.0, 1.0]).unwrap();
    let before: Vec<Vec<f32>> = vars.iter().map(|v| flat(v.as_tensor())).collect();
    p.set_train_mode(false).unwrap();
    assert_eq!(before, vars.iter().map(|v| flat(v.as_tensor())).collect::<Vec<_>>());
    p.step(&step_grads(&run, &rv["ops"][1]), &[1.0, 1.0]).unwrap();

    let k = OptimizerKind::ProdigyPlusScheduleFree;
    for name in ["prodigyplus.ProdigyPlusScheduleFree", "ProdigyPlusScheduleFree"] {
        assert_eq!(OptimizerKind::parse(name).unwrap(), k);
    }
    for unsupported in [
        "use_speed=True",
        "use_cautious=True",
        "use_grams=True",
        "use_adopt=True",
        "use_orthograd=True",
        "use_focus=True",
        "fused_back_pass=True",
    ] {
        let key = unsupported.split('=').next().unwrap();
        let e = build_error(k, one_group(1.0), &[unsupported]);
        assert!(e.contains(&format!("`{key}=True`")) && e.contains("not supported"), "{e}");
    }
    let e = build_error(k, one_group(1.0), &["eps=None"]);
    assert!(e.contains("eps=None") && e.contains("Adam-atan2"), "{e}");
    let e = build_error(k, one_group(1.0), &["betas=(0.0,0.99)"]);
    assert!(e.contains("beta1"), "{e}");
    let e = build_error(k, one_group(1.0), &["betas=(0.9,1)"]);
    assert!(e.contains("Invalid beta parameter at index 1: 1"), "{e}");
    let e = build_error(k, one_group(1.0), &["slice_p=11"]);
    assert!(e.contains("`slice_p`") && e.contains("prodigy_steps"), "{e}");
    let e = build_error(k, one_group(1.0), &["prodigy_steps=-1"]);
    assert!(e.contains("Invalid Prodigy steps: -1"), "{e}");
    let e = build_error(k, one_group(0.0), &[]);
    assert!(e.contains("Invalid learning rate"), "{e}");
    let ok = [
        "use_speed=False",
        "use_orthograd=False",
        "stochastic_rounding=False",
        "factored_fp32=False",
        "prodigy_steps=100",
    ];
    assert!(k.build(one_group(1.0), &args(&ok)).is_ok());
    assert_eq!(
        k.build(one_group(1.0), &args(&[])).unwrap().description(),
        "prodigyplus.prodigy_plus_schedulefree.ProdigyPlusScheduleFree"
    );
}
