//! Flux's block ops (`lorakit_nn::dit`, `activation::gelu_tanh`): the composed versions against
//! f64 central differences, and the fused f32 CPU kernels against the composed versions
//! (forward and every input's gradient).

use candle_core::{DType, Device, Result, Tensor, Var};
use lorakit_nn::activation::gelu_tanh;
use lorakit_nn::dit::{concat_gelu_tail, gated_residual, modulate, qk_norm_rope_attention, QkvStream};
use lorakit_nn::gradcheck::{check, pseudo_random};

const HEADS: usize = 2;
const D: usize = 8;
const W: usize = HEADS * D;
const EPS: f64 = 1e-6;

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    pseudo_random(shape, seed).unwrap()
}

fn assert_grad_ok(name: &str, tol: f64, f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    let report = check(f, inputs, 1e-6).unwrap();
    assert!(report.max_magnitude > 1e-3, "{name}: gradient is (nearly) zero, the check proves nothing");
    assert!(report.relative_error() < tol, "{name}: {report:?}");
}

/// Largest |a − b| relative to the largest |b|.
fn relative_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-30);
    (a - &b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() / scale
}

/// A rotary table for `len` positions (cos, sin), (len, D/2), in `dtype`.
fn rotary(len: usize, dtype: DType) -> (Tensor, Tensor) {
    let angles = rnd(&[len, D / 2], 40).affine(3.0, 0.0).unwrap();
    (angles.cos().unwrap().to_dtype(dtype).unwrap(), angles.sin().unwrap().to_dtype(dtype).unwrap())
}

/// The norm scales of stream `i`, (q, k), in `dtype`.
fn norm_scales(i: u64, dtype: DType) -> (Tensor, Tensor) {
    let s = |seed| rnd(&[D], seed).affine(0.5, 1.0).unwrap().to_dtype(dtype).unwrap();
    (s(50 + 2 * i), s(51 + 2 * i))
}

/// Joint attention over two streams (text 3 tokens, image 5, q/k/v only) or one fused stream
/// (8 tokens, 3·W + 5 columns).
fn attention_of(xs: &[Tensor], key_bias: Option<&Tensor>) -> Result<Tensor> {
    let dtype = xs[0].dtype();
    let total: usize = xs.iter().map(|x| x.dim(1).unwrap()).sum();
    let (cos, sin) = rotary(total, dtype);
    let scales: Vec<(Tensor, Tensor)> = (0..xs.len() as u64).map(|i| norm_scales(i, dtype)).collect();
    let streams: Vec<QkvStream> =
        xs.iter().zip(&scales).map(|(x, (q, k))| QkvStream { qkv: x, q_scale: q, k_scale: k }).collect();
    qk_norm_rope_attention(&streams, &cos, &sin, HEADS, EPS, key_bias)
}

#[test]
fn composed_ops_pass_the_gradient_check() {
    let (x, p) = (rnd(&[2, 3, 5], 1), |seed| rnd(&[2, 1, 5], seed));
    assert_grad_ok("modulate", 1e-6, |t| modulate(&t[0], &t[1], &t[2]), &[x.clone(), p(2), p(3)]);
    assert_grad_ok(
        "gated residual",
        1e-6,
        |t| gated_residual(&t[0], &t[1], &t[2]),
        &[x.clone(), rnd(&[2, 3, 5], 4), p(5)],
    );
    let a = rnd(&[2, 3, 4], 6);
    let wide = rnd(&[2, 3, 9], 7).affine(3.0, 0.0).unwrap();
    // candle's tanh-GELU backward uses six-digit constants: 1e-5 is its precision.
    assert_grad_ok("concat + tanh-GELU", 1e-5, |t| concat_gelu_tail(&t[0], &t[1], 4), &[a, wide.clone()]);
    assert_grad_ok("tanh-GELU", 1e-5, |t| gelu_tanh(&t[0]), &[wide]);
    let two = [rnd(&[2, 3, 3 * W], 8), rnd(&[2, 5, 3 * W], 9)];
    assert_grad_ok("joint attention, two streams", 1e-6, |t| attention_of(t, None), &two);
    assert_grad_ok("joint attention, fused stream", 1e-6, |t| attention_of(t, None), &[rnd(&[2, 8, 3 * W + 5], 10)]);
    let mut bias = vec![0f64; 16];
    bias[1] = -1e9;
    bias[8 + 2] = -1e9;
    let bias = Tensor::from_vec(bias, (2, 8), &Device::Cpu).unwrap();
    assert_grad_ok("joint attention, key bias", 1e-6, |t| attention_of(t, Some(&bias)), &two);
}

/// Runs `f` on f64 inputs (the composed ops) and on their f32 copies (the CPU kernels) and
/// compares the outputs and every input's gradient under a random upstream gradient.
fn fused_matches_composed(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let run = |dtype: DType| {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap();
        let w = rnd(y.dims(), 99).to_dtype(dtype).unwrap();
        let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Tensor> = vars.iter().map(|v| grads.get(v).expect("every input gets a gradient").clone()).collect();
        (y, g)
    };
    let (y32, g32) = run(DType::F32);
    let (y64, g64) = run(DType::F64);
    assert!(relative_diff(&y32, &y64) < 1e-5, "{name}: forward {}", relative_diff(&y32, &y64));
    for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
        assert!(relative_diff(a, b) < 1e-5, "{name}: gradient of input {i}: {}", relative_diff(a, b));
    }
}

#[test]
fn fused_cpu_kernels_match_the_composed_ops() {
    // Sizes that are not multiples of any lane or task width; batch 2 for per-item rows.
    let x = rnd(&[2, 37, 70], 20).affine(3.0, 0.0).unwrap();
    let p = |seed| rnd(&[2, 1, 70], seed);
    fused_matches_composed("modulate", &[x.clone(), p(21), p(22)], |t| modulate(&t[0], &t[1], &t[2]));
    fused_matches_composed("gated residual", &[x.clone(), rnd(&[2, 37, 70], 23), p(24)], |t| {
        gated_residual(&t[0], &t[1], &t[2])
    });
    fused_matches_composed("concat + tanh-GELU", &[rnd(&[2, 37, 9], 25), x.clone()], |t| {
        concat_gelu_tail(&t[0], &t[1], 30)
    });
    fused_matches_composed("tanh-GELU", std::slice::from_ref(&x), |t| gelu_tanh(&t[0]));
    let two = [rnd(&[2, 7, 3 * W], 26).affine(2.0, 0.0).unwrap(), rnd(&[2, 12, 3 * W], 27)];
    fused_matches_composed("joint attention, two streams", &two, |t| attention_of(t, None));
    fused_matches_composed("joint attention, fused stream", &[rnd(&[2, 19, 3 * W + 11], 28)], |t| {
        attention_of(t, None)
    });
}

#[test]
fn fused_tanh_gelu_matches_candle_in_f32() {
    // The kernel against candle's own f32 `gelu` and its backward, out to both tails.
    let x = Var::from_tensor(&Tensor::randn(0f32, 4.0, (3, 200, 70), &Device::Cpu).unwrap()).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3, 200, 70), &Device::Cpu).unwrap();
    let grad_of = |y: &Tensor| (y * &w).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    let (ours, reference) = (gelu_tanh(x.as_tensor()).unwrap(), x.as_tensor().gelu().unwrap());
    assert!(relative_diff(&ours, &reference) < 1e-6, "forward");
    assert!(relative_diff(&grad_of(&ours), &grad_of(&reference)) < 1e-5, "gradient");
}

#[test]
fn untracked_inputs_and_a_zero_key_bias() {
    // Without tracked inputs the fused ops return plain values; a key bias of zeros gives the
    // unmasked attention (the composed path with a bias, the fused one without).
    let two =
        [rnd(&[2, 3, 3 * W], 30).to_dtype(DType::F32).unwrap(), rnd(&[2, 5, 3 * W], 31).to_dtype(DType::F32).unwrap()];
    let plain = attention_of(&two, None).unwrap();
    let zero = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
    let biased = attention_of(&two, Some(&zero)).unwrap();
    assert!(relative_diff(&plain, &biased) < 1e-5);
    assert!(attention_of(&[two[0].narrow(2, 0, 3 * W - 1).unwrap()], None).is_err(), "too narrow a projection");
}
