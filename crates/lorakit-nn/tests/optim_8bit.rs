//! Lion, SGDNesterov, AdEMAMix and bitsandbytes' 8-bit optimizers against the reference numbers of
//! `tools/reference/optim_8bit_fixture.py` (`tests/fixtures/reference/optim/`): lion_pytorch and
//! torch for Lion/SGD, a float32 transcription of bitsandbytes' CUDA kernels for the rest (with
//! bitsandbytes' own quantisation maps), plus resume, state layout and error behaviour.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use lorakit_nn::optim::quant8::{create_dynamic_map, quantize_code, sign_fixed_code};
use lorakit_nn::optim::{
    AdEMAMixConfig, AdamW8bitConfig, BnbOptimizer, Lion8bitConfig, LionConfig, Optimizer, OptimizerArgs, OptimizerKind,
    OptimizerState, ParamGroup, Sgd8bitConfig, SgdConfig,
};
use serde_json::Value;

use crate::common;
use common::{args, f32s, shapes, strings};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/optim").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn hex_bytes(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn hex_f32s(v: &Value) -> Vec<f32> {
    hex_bytes(v).chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
}

fn bytes(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
}

/// |got − want| ≤ rel·|want| + abs, element-wise; returns the largest |got − want|.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f64, abs: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        assert!((g - w).abs() <= rel * w.abs() + abs, "{what}[{i}]: got {g}, want {w} (diff {:e})", (g - w).abs());
        worst = worst.max((g - w).abs());
    }
    worst
}

/// The fixture's splitmix64 data (`det_values` in the script).
fn det_values(seed: u64, n: usize, scale: f64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|i| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let v = (z >> 40) as f32 * 2f32.powi(-23) - 1.0;
            v * 2f32.powi(((i / 97) % 5) as i32 - 2) * scale as f32
        })
        .collect()
}

fn det_seed(run_seed: u64, step: i64, index: usize) -> u64 {
    run_seed * 1_000_000 + ((step + 1) as u64) * 1000 + index as u64
}

type Grads = Vec<Vec<Option<Tensor>>>;

/// A fixture run set up in Rust: the optimizer built from `optimizer_type`/`optimizer_args` the way
/// the trainer does, its vars, and where each fixture parameter sits in the groups.
struct Harness {
    run: Value,
    opt: Box<dyn Optimizer>,
    vars: Vec<Var>,
    place: Vec<(usize, usize)>,
    shapes: Vec<Vec<usize>>,
}

impl Harness {
    fn new(run: &Value) -> Self {
        let shapes = shapes(&run["shapes"]);
        let init: Vec<Vec<f32>> = match run.get("init") {
            Some(init) => init.as_array().unwrap().iter().map(f32s).collect(),
            None => {
                let seed = run["data"]["seed"].as_u64().unwrap();
                shapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| det_values(det_seed(seed, -1, i), s.iter().product(), 1.0))
                    .collect()
            }
        };
        let vars: Vec<Var> = init
            .into_iter()
            .zip(&shapes)
            .map(|(v, s)| Var::from_tensor(&Tensor::from_vec(v, s.as_slice(), &Device::Cpu).unwrap()).unwrap())
            .collect();
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
        let kind = OptimizerKind::parse(run["optimizer_type"].as_str().unwrap()).unwrap();
        let opt = kind.build(groups, &OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap()).unwrap();
        Harness { run: run.clone(), opt, vars, place, shapes }
    }

    fn name(&self) -> String {
        format!("{} {}", self.run["optimizer_type"].as_str().unwrap(), self.run["name"].as_str().unwrap())
    }

    fn steps(&self) -> usize {
        self.run["lrs"].as_array().unwrap().len()
    }

    fn grads(&self, step: usize) -> Grads {
        let mut grads: Grads = self.opt.groups().iter().map(|g| vec![None; g.vars.len()]).collect();
        for (i, shape) in self.shapes.iter().enumerate() {
            let values = match self.run.get("grads") {
                Some(stored) => {
                    let g = &stored[step][i];
                    (!g.is_null()).then(|| f32s(g))
                }
                None => {
                    let none = self.run["none_grads"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p[0].as_u64() == Some(step as u64) && p[1].as_u64() == Some(i as u64));
                    let data = &self.run["data"];
                    let scale = data["grad_scales"][i].as_f64().unwrap();
                    (!none).then(|| {
                        det_values(
                            det_seed(data["seed"].as_u64().unwrap(), step as i64, i),
                            shape.iter().product(),
                            scale,
                        )
                    })
                }
            };
            let (gi, pos) = self.place[i];
            grads[gi][pos] = values.map(|v| Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap());
        }
        grads
    }

    fn step(&mut self, step: usize) {
        let lrs: Vec<f64> = self.run["lrs"][step].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let grads = self.grads(step);
        self.opt.step(&grads, &lrs).unwrap();
    }

    /// The optimizer's state tensor `name` for fixture parameter `i`.
    fn state_tensor(&self, i: usize, name: &str) -> Tensor {
        let (gi, pos) = self.place[i];
        let group = &self.opt.groups()[gi].name;
        self.opt.state().unwrap().tensors[&format!("{group}.{pos}.{name}")].clone()
    }

    fn update_count(&self, i: usize) -> u64 {
        let (gi, pos) = self.place[i];
        self.opt.state().unwrap().scalars["groups"][gi]["steps"][pos].as_u64().unwrap()
    }
}

// ------------------------------------------------------------------------- exact torch references

fn torch_fixture(file: &str, state_key: &str) {
    let fx = fixture(file);
    for run in fx["runs"].as_array().unwrap() {
        let mut h = Harness::new(run);
        let name = h.name();
        assert_eq!(h.opt.description(), run["ss_optimizer"].as_str().unwrap(), "{name}: ss_optimizer");
        for step in 0..h.steps() {
            h.step(step);
            for (i, var) in h.vars.iter().enumerate() {
                let want = f32s(&run["params_after"][step][i]);
                assert_close(&format!("{name} step {step} param {i}"), &flat(var.as_tensor()), &want, 1e-6, 1e-8);
            }
        }
        for (i, want) in run["final_state"].as_array().unwrap().iter().enumerate() {
            assert_eq!(h.update_count(i), want["updates"].as_u64().unwrap(), "{name} param {i}: updates");
            let want = f32s(&want[state_key]);
            let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
            assert_close(
                &format!("{name} param {i} {state_key}"),
                &flat(&h.state_tensor(i, state_key)),
                &want,
                1e-5,
                1e-6 * scale,
            );
        }
    }
}

#[test]
fn lion_matches_lion_pytorch() {
    torch_fixture("lion.json", "exp_avg");
    for run in fixture("lion.json")["runs"].as_array().unwrap() {
        let cfg = LionConfig::from_args(&OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap()).unwrap();
        let r = &run["resolved"];
        assert_eq!((cfg.betas.0, cfg.betas.1), (r["betas"][0].as_f64().unwrap(), r["betas"][1].as_f64().unwrap()));
        assert_eq!(cfg.weight_decay, r["weight_decay"].as_f64().unwrap());
    }
}

#[test]
fn sgd_nesterov_matches_torch() {
    torch_fixture("sgd.json", "momentum_buffer");
    for run in fixture("sgd.json")["runs"].as_array().unwrap() {
        let cfg = SgdConfig::from_args(&OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap()).unwrap();
        let r = &run["resolved"];
        assert_eq!(r["nesterov"], Value::Bool(true));
        assert_eq!(
            (cfg.momentum, cfg.dampening, cfg.weight_decay),
            (r["momentum"].as_f64().unwrap(), r["dampening"].as_f64().unwrap(), r["weight_decay"].as_f64().unwrap())
        );
    }
}

// ---------------------------------------------------------------------------- bitsandbytes kernels

/// The mirror's state for parameter `i` as lorakit stores it: AdEMAMix's two EMAs (`state1`,
/// `state3` in the fixture) are one `state1` tensor, their maxima one `absmax1`.
fn check_bnb_state(h: &Harness, i: usize, want: &Value) -> usize {
    let name = h.name();
    assert_eq!(h.update_count(i), want["step"].as_u64().unwrap(), "{name} param {i}: step count");
    let n: usize = h.shapes[i].iter().product();
    let mut code_mismatches = 0;
    if want["eight_bit"].as_bool().unwrap() {
        let mut codes1 = hex_bytes(&want["state1_hex"]);
        let mut absmax1 = f32s(&want["absmax1"]);
        if let Some(c3) = want.get("state3_hex") {
            codes1.extend(hex_bytes(c3));
            absmax1.extend(f32s(&want["absmax3"]));
        }
        let mut pairs = vec![("state1", codes1, "absmax1", absmax1)];
        if let Some(c2) = want.get("state2_hex") {
            pairs.push(("state2", hex_bytes(c2), "absmax2", f32s(&want["absmax2"])));
        }
        for (sname, codes, aname, absmax) in pairs {
            let got = h.state_tensor(i, sname);
            assert_eq!(got.dtype(), DType::U8, "{name} param {i} {sname}: one byte per element");
            let got = bytes(&got);
            assert_eq!(got.len(), codes.len(), "{name} param {i} {sname}: size");
            code_mismatches += got.iter().zip(&codes).filter(|(a, b)| a != b).count();
            let got_max = h.state_tensor(i, aname);
            assert_eq!(got_max.dtype(), DType::F32);
            assert_close(&format!("{name} param {i} {aname}"), &flat(&got_max), &absmax, 1e-6, 0.0);
        }
        assert_eq!(n.div_ceil(256), f32s(&want["absmax1"]).len(), "{name}: one maximum per 256 elements");
    } else {
        let mut s1 = hex_f32s(&want["state1_hex"]);
        if let Some(s3) = want.get("state3_hex") {
            s1.extend(hex_f32s(s3));
        }
        let mut states = vec![("state1", s1)];
        if let Some(s2) = want.get("state2_hex") {
            states.push(("state2", hex_f32s(s2)));
        }
        for (sname, values) in states {
            let got = h.state_tensor(i, sname);
            assert_eq!(got.dtype(), DType::F32, "{name} param {i} {sname}");
            let scale = values.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
            assert_close(&format!("{name} param {i} {sname}"), &flat(&got), &values, 1e-6, 1e-7 * scale);
        }
    }
    code_mismatches
}

fn bnb_fixture(file: &str) {
    let fx = fixture(file);
    for run in fx["runs"].as_array().unwrap() {
        let mut h = Harness::new(run);
        let name = h.name();
        assert_eq!(h.opt.description(), run["ss_optimizer"].as_str().unwrap(), "{name}: ss_optimizer");
        for step in 0..h.steps() {
            h.step(step);
            for (i, var) in h.vars.iter().enumerate() {
                let got = flat(var.as_tensor());
                let got: Vec<f32> = match run["samples"][i].as_array() {
                    Some(idx) => idx.iter().map(|j| got[j.as_u64().unwrap() as usize]).collect(),
                    None => got,
                };
                let want = hex_f32s(&run["params_after_hex"][step][i]);
                assert_close(&format!("{name} step {step} param {i}"), &got, &want, 1e-6, 1e-9);
            }
        }
        let mut mismatches = 0;
        for (i, var) in h.vars.iter().enumerate() {
            let want = hex_f32s(&run["final_params_hex"][i]);
            assert_close(&format!("{name} final param {i}"), &flat(var.as_tensor()), &want, 1e-6, 1e-9);
            let st = &run["final_state"][i];
            if !st.is_null() {
                mismatches += check_bnb_state(&h, i, st);
            }
        }
        // The kernels' float32 operations are reproduced one for one: every code agrees.
        assert_eq!(mismatches, 0, "{name}: 8-bit codes differing from the kernel transcription");
    }
}

#[test]
fn ademamix_matches_bitsandbytes_kernel() {
    bnb_fixture("ademamix.json");
    for run in fixture("ademamix.json")["runs"].as_array().unwrap() {
        let cfg =
            AdEMAMixConfig::from_args(&OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap(), false).unwrap();
        let r = &run["resolved"];
        let b = f32s(&r["betas"]);
        assert_eq!(cfg.betas.0 as f32, b[0]);
        assert_eq!(cfg.betas.2.map(|x| x as f32), b.get(2).copied());
        assert_eq!(cfg.alpha, r["alpha"].as_f64().unwrap());
        assert_eq!(cfg.t_alpha, r["t_alpha"].as_u64());
        assert_eq!(cfg.t_beta3, r["t_beta3"].as_u64());
        assert_eq!((cfg.eps, cfg.weight_decay), (r["eps"].as_f64().unwrap(), r["weight_decay"].as_f64().unwrap()));
        assert_eq!(
            (cfg.optim_bits as u64, cfg.min_8bit_size),
            (r["optim_bits"].as_u64().unwrap(), r["min_8bit_size"].as_u64().unwrap())
        );
    }
}

#[test]
fn adamw8bit_matches_bitsandbytes_kernel() {
    bnb_fixture("adamw8bit.json");
    for run in fixture("adamw8bit.json")["runs"].as_array().unwrap() {
        let cfg = AdamW8bitConfig::from_args(&OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap()).unwrap();
        let r = &run["resolved"];
        assert_eq!((cfg.betas.0, cfg.betas.1), (r["betas"][0].as_f64().unwrap(), r["betas"][1].as_f64().unwrap()));
        assert_eq!((cfg.eps, cfg.weight_decay), (r["eps"].as_f64().unwrap(), r["weight_decay"].as_f64().unwrap()));
        assert_eq!(cfg.min_8bit_size, r["min_8bit_size"].as_u64().unwrap());
    }
}

#[test]
fn lion8bit_matches_bitsandbytes_kernel() {
    bnb_fixture("lion8bit.json");
    for run in fixture("lion8bit.json")["runs"].as_array().unwrap() {
        let cfg = Lion8bitConfig::from_args(&OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap()).unwrap();
        let r = &run["resolved"];
        assert_eq!((cfg.betas.0, cfg.betas.1), (r["betas"][0].as_f64().unwrap(), r["betas"][1].as_f64().unwrap()));
        assert_eq!(cfg.weight_decay, r["weight_decay"].as_f64().unwrap());
        assert_eq!(cfg.min_8bit_size, r["min_8bit_size"].as_u64().unwrap());
    }
}

#[test]
fn sgd8bit_matches_bitsandbytes_kernel() {
    bnb_fixture("sgd8bit.json");
    for run in fixture("sgd8bit.json")["runs"].as_array().unwrap() {
        let cfg = Sgd8bitConfig::from_args(&OptimizerArgs::parse(&strings(&run["optimizer_args"])).unwrap()).unwrap();
        let r = &run["resolved"];
        // bitsandbytes keeps (momentum, dampening) as its betas
        assert_eq!((cfg.momentum, cfg.dampening), (r["betas"][0].as_f64().unwrap(), r["betas"][1].as_f64().unwrap()));
        assert_eq!(cfg.weight_decay, r["weight_decay"].as_f64().unwrap());
    }
}

#[test]
fn ademamix8bit_matches_bitsandbytes_kernel() {
    bnb_fixture("ademamix8bit.json");
}

#[test]
fn quantisation_maps_and_codes_match_bitsandbytes() {
    let fx = fixture("quant8.json");
    assert_eq!(fx["blocksize"].as_u64(), Some(256));
    for (signed, key) in [(true, "signed_map"), (false, "unsigned_map")] {
        let want = f32s(&fx[key]);
        let got = create_dynamic_map(signed);
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{key} differs from bitsandbytes'");
    }
    for case in fx["cases"].as_array().unwrap() {
        let signed = case["signed"].as_bool().unwrap();
        let map = create_dynamic_map(signed);
        let inputs = hex_f32s(&case["inputs_hex"]);
        let codes = hex_bytes(&case["codes_hex"]);
        for (x, want) in inputs.iter().zip(&codes) {
            assert_eq!(quantize_code(&map, *x, signed), *want, "quantize_2D<{signed}>({x:e})");
        }
        if signed {
            let fixed = hex_bytes(&case["sign_fixed_hex"]);
            for ((x, c), want) in inputs.iter().zip(&codes).zip(&fixed) {
                assert_eq!(sign_fixed_code(&map, *c, *x), *want, "sign fix of {x:e}");
            }
        }
    }
}

// ------------------------------------------------------------- 8-bit state: size and f32 tracking

fn one_group(vars: Vec<Var>, lr: f64) -> Vec<ParamGroup> {
    vec![ParamGroup { name: "unet".into(), vars, lr }]
}

fn det_var(shape: &[usize], seed: u64) -> Var {
    let n = shape.iter().product();
    Var::from_tensor(&Tensor::from_vec(det_values(seed, n, 1.0), shape, &Device::Cpu).unwrap()).unwrap()
}

/// The 8-bit optimizers store 1 byte per state element plus one f32 per 256 elements, and follow
/// their float32 counterparts (same optimizer with `min_8bit_size` above every parameter) closely
/// but not identically.
#[test]
fn eight_bit_state_is_one_byte_per_element_and_tracks_f32() {
    // (optimizer, extra optimizer_args, 8-bit state tensors, lr, allowed relative deviation)
    type Case = (OptimizerKind, &'static [&'static str], &'static [&'static str], f64, f64);
    let cases: [Case; 4] = [
        (OptimizerKind::AdamW8bit, &[], &["state1", "state2"], 1e-3, 3e-2),
        (OptimizerKind::Lion8bit, &[], &["state1"], 1e-4, 0.1),
        (OptimizerKind::SgdNesterov8bit, &[], &["state1"], 1e-2, 2e-2),
        (OptimizerKind::AdEMAMix8bit, &["t_alpha=5"], &["state1", "state2"], 1e-3, 3e-2),
    ];
    for (kind, extra, states, lr, tol) in cases {
        let shape = [64usize, 80]; // 5120 elements: 20 blocks
        let (a, b) = (det_var(&shape, 7), det_var(&shape, 7));
        let small = [det_var(&[40, 50], 8), det_var(&[40, 50], 8)]; // 2000 < 4096: float32 state
        let mut eight = kind.build(one_group(vec![a.clone(), small[0].clone()], lr), &args(extra)).unwrap();
        let mut f32_args = extra.to_vec();
        f32_args.push("min_8bit_size=100000");
        let mut full = kind.build(one_group(vec![b.clone(), small[1].clone()], lr), &args(&f32_args)).unwrap();
        for step in 0..8u64 {
            let g = |i: usize, s: &[usize]| {
                Some(
                    Tensor::from_vec(det_values(900 + 10 * step + i as u64, s.iter().product(), 0.1), s, &Device::Cpu)
                        .unwrap(),
                )
            };
            let grads = vec![vec![g(0, &shape), g(1, &[40, 50])]];
            eight.step(&grads, &[lr]).unwrap();
            full.step(&grads, &[lr]).unwrap();
        }
        let st = eight.state().unwrap();
        for s in states {
            let rows = if kind == OptimizerKind::AdEMAMix8bit && *s == "state1" { 2 } else { 1 };
            let t = &st.tensors[&format!("unet.0.{s}")];
            assert_eq!(t.dtype(), DType::U8, "{kind:?} {s}");
            assert_eq!(t.elem_count(), rows * 5120, "{kind:?} {s}: 1 byte per element");
            let m = &st.tensors[&format!("unet.0.absmax{}", &s[5..])];
            assert_eq!((m.dtype(), m.elem_count()), (DType::F32, rows * 20), "{kind:?} {s}: one f32 per block");
            assert_eq!(st.tensors[&format!("unet.1.{s}")].dtype(), DType::F32, "{kind:?}: small parameter stays f32");
        }
        let f32_state = full.state().unwrap();
        assert_eq!(f32_state.tensors["unet.0.state1"].dtype(), DType::F32);

        // the small parameter takes the identical float32 path in both
        assert_eq!(flat(small[0].as_tensor()), flat(small[1].as_tensor()), "{kind:?}");
        let (x, y, x0) = (flat(a.as_tensor()), flat(b.as_tensor()), det_values(7, 5120, 1.0));
        assert_ne!(x, y, "{kind:?}: 8-bit state must change the result somewhat");
        // compare the updates (parameter changes) relative to their size
        let (mut diff, mut norm) = (0f64, 0f64);
        for ((p8, p32), p0) in x.iter().zip(&y).zip(&x0) {
            diff += ((p8 - p32) as f64).powi(2);
            norm += ((p32 - p0) as f64).powi(2);
        }
        let rel = (diff / norm).sqrt();
        assert!(rel < tol, "{kind:?}: 8-bit update deviates by {rel:.3e} (relative) from the float32 one");
    }
}

// ----------------------------------------------------------------------------------------- resume

/// What a resume goes through: tensors to plain data and back (keeping U8 codes as bytes), scalars
/// to JSON text and back.
fn via_disk(state: &OptimizerState) -> OptimizerState {
    let tensors: BTreeMap<String, Tensor> = state
        .tensors
        .iter()
        .map(|(k, t)| {
            let t = match t.dtype() {
                DType::U8 => Tensor::from_vec(bytes(t), t.dims(), &Device::Cpu).unwrap(),
                _ => Tensor::from_vec(flat(t), t.dims(), &Device::Cpu).unwrap(),
            };
            (k.clone(), t)
        })
        .collect();
    let scalars = serde_json::from_str(&serde_json::to_string(&state.scalars).unwrap()).unwrap();
    OptimizerState { tensors, scalars }
}

fn resume_problem() -> (Vec<Var>, Vec<Grads>) {
    let shapes: [&[usize]; 3] = [&[20, 30], &[4, 3], &[300]];
    let vars: Vec<Var> = shapes.iter().enumerate().map(|(i, s)| det_var(s, 50 + i as u64)).collect();
    let grads = (0..7u64)
        .map(|step| {
            let g = |i: usize| {
                // param 2 gets its first gradient at step 2 (its state is created late)
                (i != 2 || step >= 2).then(|| {
                    let n = shapes[i].iter().product();
                    Tensor::from_vec(det_values(300 + 10 * step + i as u64, n, 0.5), shapes[i], &Device::Cpu).unwrap()
                })
            };
            vec![vec![g(0)], vec![g(1), g(2)]]
        })
        .collect();
    (vars, grads)
}

fn resume_groups(vars: &[Var]) -> Vec<ParamGroup> {
    vec![
        ParamGroup { name: "textencoder".into(), vars: vec![vars[0].clone()], lr: 5e-3 },
        ParamGroup { name: "unet".into(), vars: vec![vars[1].clone(), vars[2].clone()], lr: 1e-2 },
    ]
}

fn copy_vars(vars: &[Var]) -> Vec<Var> {
    vars.iter().map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap()).collect()
}

const RESUME_CASES: [(OptimizerKind, &[&str]); 8] = [
    (OptimizerKind::Lion, &["weight_decay=0.1"]),
    (OptimizerKind::SgdNesterov, &["weight_decay=0.01"]),
    (OptimizerKind::AdEMAMix, &["t_alpha=3", "t_beta3=4"]),
    (OptimizerKind::AdamW8bit, &["min_8bit_size=256"]),
    (OptimizerKind::Lion8bit, &["min_8bit_size=256", "weight_decay=0.1"]),
    (OptimizerKind::SgdNesterov8bit, &["min_8bit_size=256", "weight_decay=0.01"]),
    (OptimizerKind::AdEMAMix8bit, &["min_8bit_size=256", "t_beta3=4"]),
    (OptimizerKind::AdEMAMix8bit, &["min_8bit_size=256", "betas=0.9,0.99"]),
];

#[test]
fn resume_from_state_is_bitwise_identical() {
    let (vars, grads) = resume_problem();
    let lrs = |step: usize| vec![5e-3 * (step as f64 + 1.0) / 7.0, 1e-2 * (step as f64 + 1.0) / 7.0];
    for (kind, extra) in RESUME_CASES {
        let straight = copy_vars(&vars);
        let mut a = kind.build(resume_groups(&straight), &args(extra)).unwrap();
        for (step, g) in grads.iter().enumerate() {
            a.step(g, &lrs(step)).unwrap();
        }
        let first = copy_vars(&vars);
        let mut b = kind.build(resume_groups(&first), &args(extra)).unwrap();
        for (step, g) in grads.iter().enumerate().take(3) {
            b.step(g, &lrs(step)).unwrap();
        }
        let saved = via_disk(&b.state().unwrap());
        let resumed = copy_vars(&first);
        drop(b);
        // built with default arguments: the saved configuration is what counts
        let mut c = kind.build(resume_groups(&resumed), &OptimizerArgs::default()).unwrap();
        c.load_state(&saved).unwrap();
        for (step, g) in grads.iter().enumerate().skip(3) {
            c.step(g, &lrs(step)).unwrap();
        }
        for (i, (x, y)) in straight.iter().zip(&resumed).enumerate() {
            let (x, y) = (flat(x.as_tensor()), flat(y.as_tensor()));
            assert!(
                x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{kind:?} {extra:?}: param {i} after resume"
            );
        }
        let (sa, sc) = (a.state().unwrap(), c.state().unwrap());
        assert_eq!(sa.scalars, sc.scalars, "{kind:?}");
        assert_eq!(sa.tensors.keys().collect::<Vec<_>>(), sc.tensors.keys().collect::<Vec<_>>(), "{kind:?}");
        for (k, t) in &sa.tensors {
            assert_eq!(t.dtype(), sc.tensors[k].dtype(), "{kind:?} {k}");
            if t.dtype() == DType::U8 {
                assert_eq!(bytes(t), bytes(&sc.tensors[k]), "{kind:?} {k}");
            } else {
                assert_eq!(flat(t), flat(&sc.tensors[k]), "{kind:?} {k}");
            }
        }
        if kind.is_8bit() {
            assert_eq!(sa.tensors["textencoder.0.state1"].dtype(), DType::U8, "{kind:?}: 600 ≥ 256 elements");
            assert_eq!(sa.tensors["unet.0.state1"].dtype(), DType::F32, "{kind:?}: 12 < 256 elements");
        }
    }
}

#[test]
fn load_state_rejects_mismatches_by_name() {
    let (vars, grads) = resume_problem();
    let build =
        |kind: OptimizerKind, vars: &[Var], extra: &[&str]| kind.build(resume_groups(vars), &args(extra)).unwrap();
    let err = |kind: OptimizerKind, vars: &[Var], state: &OptimizerState| {
        build(kind, vars, &["min_8bit_size=256"]).load_state(state).unwrap_err().to_string()
    };
    let mut opt = build(OptimizerKind::AdamW8bit, &vars, &["min_8bit_size=256"]);
    opt.step(&grads[2], &[1e-3, 1e-3]).unwrap();
    let state = opt.state().unwrap();

    // another optimizer's state
    let e = err(OptimizerKind::Lion8bit, &vars, &state);
    assert!(e.contains("AdamW8bit") && e.contains("Lion8bit"), "{e}");
    let e = err(OptimizerKind::AdEMAMix8bit, &vars, &state);
    assert!(e.contains("AdamW8bit"), "{e}");

    // the parameter has another shape in this run
    let mut other = copy_vars(&vars);
    other[0] = det_var(&[20, 31], 1);
    let e = err(OptimizerKind::AdamW8bit, &other, &state);
    assert!(e.contains("textencoder.0.") && e.contains("[20, 30]") && e.contains("[20, 31]"), "{e}");

    // codes stored as floats, a missing block-maximum tensor, an extra tensor
    let mut wrong = state.clone();
    wrong.tensors.insert("textencoder.0.state1".into(), Tensor::zeros((20, 30), DType::F32, &Device::Cpu).unwrap());
    let e = err(OptimizerKind::AdamW8bit, &vars, &wrong);
    assert!(e.contains("textencoder.0.state1") || e.contains("absmax"), "{e}");
    let mut missing = state.clone();
    missing.tensors.remove("textencoder.0.absmax2");
    let e = err(OptimizerKind::AdamW8bit, &vars, &missing);
    assert!(e.contains("textencoder.0.absmax2"), "{e}");
    let mut short = state.clone();
    short.tensors.insert("textencoder.0.absmax1".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
    let e = err(OptimizerKind::AdamW8bit, &vars, &short);
    assert!(e.contains("textencoder.0.absmax1") && e.contains("[3]"), "{e}");
    let mut extra = state.clone();
    extra.tensors.insert("unet.0.exp_avg".into(), Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap());
    let e = err(OptimizerKind::AdamW8bit, &vars, &extra);
    assert!(e.contains("unet.0.exp_avg"), "{e}");
    let mut bad_cfg = state.clone();
    bad_cfg.scalars["config"]["betas"] = serde_json::json!([0.9, 1.5]);
    let e = err(OptimizerKind::AdamW8bit, &vars, &bad_cfg);
    assert!(e.contains("Invalid beta parameter at index 1"), "{e}");

    // a failed load leaves the optimizer as it was
    let before = opt.state().unwrap();
    assert!(opt.load_state(&missing).is_err());
    assert_eq!(before.scalars, opt.state().unwrap().scalars);

    // the torch-style optimizers check their own tensors
    let mut lion = build(OptimizerKind::Lion, &vars, &[]);
    lion.step(&grads[2], &[1e-3, 1e-3]).unwrap();
    let lion_state = lion.state().unwrap();
    let e = build(OptimizerKind::SgdNesterov, &vars, &[]).load_state(&lion_state).unwrap_err().to_string();
    assert!(e.contains("Lion") && e.contains("SGDNesterov"), "{e}");
    let e = build(OptimizerKind::Lion, &other, &[]).load_state(&lion_state).unwrap_err().to_string();
    assert!(e.contains("textencoder.0.exp_avg"), "{e}");
    let e = build(OptimizerKind::AdamW8bit, &vars, &[]).load_state(&lion_state).unwrap_err().to_string();
    assert!(e.contains("Lion"), "{e}");
}

// ------------------------------------------------------------------------ construction and errors

#[test]
fn optimizer_args_are_validated_like_the_libraries() {
    let v = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let build_err =
        |kind: OptimizerKind, items: &[&str]| match kind.build(one_group(vec![v.clone()], 1e-4), &args(items)) {
            Ok(_) => panic!("{kind:?} {items:?} was accepted"),
            Err(e) => e.to_string(),
        };
    let cases: &[(OptimizerKind, &[&str], &[&str])] = &[
        (OptimizerKind::Lion, &["betas=0.9,1.1"], &["beta 1", "[0, 1]"]),
        (OptimizerKind::Lion, &["decoupled_weight_decay=True"], &["decoupled_weight_decay", "--learning_rate"]),
        (OptimizerKind::Lion, &["eps=1e-8"], &["`eps`", "betas"]),
        (OptimizerKind::Lion, &["lr=1e-3"], &["--learning_rate"]),
        (OptimizerKind::SgdNesterov, &["nesterov=True"], &["nesterov", "multiple values"]),
        (OptimizerKind::SgdNesterov, &["momentum=0"], &["Nesterov momentum requires a momentum and zero dampening"]),
        (OptimizerKind::SgdNesterov, &["dampening=0.1"], &["zero dampening"]),
        (OptimizerKind::SgdNesterov, &["momentum=-0.5"], &["Invalid momentum value: -0.5"]),
        (OptimizerKind::SgdNesterov, &["weight_decay=-1.0"], &["Invalid weight_decay value"]),
        (OptimizerKind::SgdNesterov8bit, &["momentum=0"], &["SGD without momentum is not supported!"]),
        (OptimizerKind::SgdNesterov8bit, &["momentum=1.0"], &["Invalid beta parameter at index 0: 1.0"]),
        (OptimizerKind::SgdNesterov8bit, &["nesterov=False"], &["nesterov"]),
        (OptimizerKind::AdamW8bit, &["amsgrad=True"], &["AdamW8bit does not support amsgrad=True"]),
        (OptimizerKind::AdamW8bit, &["optim_bits=8"], &["only supports optim_bits=32"]),
        (OptimizerKind::AdamW8bit, &["betas=0.9,0.999,0.9999"], &["`betas`", "2 numbers"]),
        (OptimizerKind::AdamW8bit, &["eps=-1e-8"], &["Invalid epsilon value: -1e-08"]),
        (OptimizerKind::AdamW8bit, &["min_8bit_size=1.5"], &["min_8bit_size", "integer"]),
        (OptimizerKind::AdamW8bit, &["percentile_clipping=5"], &["percentile_clipping", "min_8bit_size"]),
        (OptimizerKind::Lion8bit, &["betas=0.9,1.0"], &["Invalid beta parameter at index 1: 1.0"]),
        (OptimizerKind::Lion8bit, &["weight_decay=-0.1"], &["Invalid weight_decay value: -0.1"]),
        (OptimizerKind::AdEMAMix, &["betas=0.9,0.999", "t_alpha=10"], &["three betas"]),
        (OptimizerKind::AdEMAMix, &["betas=0.0,0.999,0.9999", "t_beta3=10"], &["t_beta3", "beta1 > 0"]),
        (OptimizerKind::AdEMAMix, &["optim_bits=16"], &["optim_bits", "8 or 32"]),
        (OptimizerKind::AdEMAMix, &["t_alpha=2.5"], &["t_alpha", "integer"]),
        (OptimizerKind::AdEMAMix, &["betas=0.9,0.999,1.0"], &["Invalid beta parameter at index 2: 1.0"]),
        (OptimizerKind::AdEMAMix8bit, &["optim_bits=8"], &["AdEMAMix8bit does not accept `optim_bits`"]),
    ];
    for (kind, items, needles) in cases {
        let e = build_err(*kind, items);
        for n in *needles {
            assert!(e.contains(n), "{kind:?} {items:?}: `{e}` should mention `{n}`");
        }
    }
    // accepted flags and None schedulers
    for (kind, items) in [
        (OptimizerKind::Lion, &["use_triton=False", "decoupled_weight_decay=False"][..]),
        (OptimizerKind::SgdNesterov, &["foreach=None", "maximize=False", "dampening=0"]),
        (OptimizerKind::AdamW8bit, &["is_paged=True", "optim_bits=32", "amsgrad=False"]),
        (OptimizerKind::AdEMAMix, &["t_alpha=None", "t_beta3=0", "optim_bits=8"]),
        (OptimizerKind::AdEMAMix8bit, &["betas=(0.9, 0.999)", "alpha=0"]),
    ] {
        assert!(kind.build(one_group(vec![v.clone()], 1e-4), &args(items)).is_ok(), "{kind:?} {items:?}");
    }
    // descriptions without arguments (the fixtures cover them with arguments)
    let desc = |kind: OptimizerKind| kind.build(one_group(vec![v.clone()], 1e-4), &args(&[])).unwrap().description();
    assert_eq!(desc(OptimizerKind::Lion), "lion_pytorch.lion_pytorch.Lion");
    assert_eq!(desc(OptimizerKind::SgdNesterov), "torch.optim.sgd.SGD(momentum=0.9)");
    assert_eq!(desc(OptimizerKind::SgdNesterov8bit), "bitsandbytes.optim.sgd.SGD8bit(momentum=0.9)");
    assert_eq!(desc(OptimizerKind::AdamW8bit), "bitsandbytes.optim.adamw.AdamW8bit");
    assert_eq!(desc(OptimizerKind::Lion8bit), "bitsandbytes.optim.lion.Lion8bit");
    assert_eq!(desc(OptimizerKind::AdEMAMix), "bitsandbytes.optim.ademamix.AdEMAMix");
    assert_eq!(desc(OptimizerKind::AdEMAMix8bit), "bitsandbytes.optim.ademamix.AdEMAMix8bit");
    // two groups with one name are refused
    let dup = vec![one_group(vec![v.clone()], 1e-4).remove(0), one_group(vec![v.clone()], 1e-4).remove(0)];
    assert!(BnbOptimizer::adamw8bit(dup, &args(&[])).unwrap_err().to_string().contains("`unet`"));
}

#[test]
fn bnb_step_checks_inputs_and_updates_other_dtypes_through_f32() {
    let v = det_var(&[600], 3);
    let mut opt = BnbOptimizer::adamw8bit(one_group(vec![v.clone()], 1e-3), &args(&["min_8bit_size=256"])).unwrap();
    let before = flat(v.as_tensor());
    let bad = vec![vec![Some(Tensor::zeros(599, DType::F32, &Device::Cpu).unwrap())]];
    let e = opt.step(&bad, &[1e-3]).unwrap_err().to_string();
    assert!(e.contains("[599]") && e.contains("[600]"), "{e}");
    assert!(opt.step(&[vec![None]], &[f64::NAN]).is_err());
    assert_eq!(before, flat(v.as_tensor()));
    assert!(opt.state().unwrap().tensors.is_empty());

    // an f64 parameter goes through f32 and keeps its dtype
    let v64 = Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
    let v32 = det_var(&[600], 3);
    let g = Tensor::from_vec(det_values(4, 600, 0.3), 600, &Device::Cpu).unwrap();
    let mut a = BnbOptimizer::lion8bit(one_group(vec![v64.clone()], 1e-3), &args(&["min_8bit_size=256"])).unwrap();
    let mut b = BnbOptimizer::lion8bit(one_group(vec![v32.clone()], 1e-3), &args(&["min_8bit_size=256"])).unwrap();
    a.step(&[vec![Some(g.to_dtype(DType::F64).unwrap())]], &[1e-3]).unwrap();
    b.step(&[vec![Some(g)]], &[1e-3]).unwrap();
    assert_eq!(v64.dtype(), DType::F64);
    assert_eq!(flat(v64.as_tensor()), flat(v32.as_tensor()));
}
