//! Every op's backward against f64 central differences, and the custom-backward ops against
//! candle's own composed versions.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor, Var};
use lorakit_nn::activation::{geglu, gelu, quick_gelu, silu, softmax_last_dim};
use lorakit_nn::attention::{attention, attention_composed, attention_heads};
use lorakit_nn::checkpoint::checkpoint;
use lorakit_nn::gradcheck::{check, pseudo_random};
use lorakit_nn::lora::{LoraDropout, LoraKind, LoraModule, LoraSet, LoraTarget, TargetGroup};
use lorakit_nn::{Conv2d, ForwardCtx, FrozenConv2d, FrozenLinear, GroupNorm, LayerNorm, Linear};
use rand::{rngs::StdRng, SeedableRng};

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn rnd(shape: &[usize], seed: u64) -> Tensor {
    pseudo_random(shape, seed).unwrap()
}

fn assert_grad_ok(name: &str, f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    let report = check(f, inputs, EPS).unwrap();
    assert!(report.max_magnitude > 1e-3, "{name}: gradient is (nearly) zero, the check proves nothing");
    assert!(report.relative_error() < TOL, "{name}: {report:?}");
}

#[test]
fn frozen_linear_input_gradient() {
    let lin = FrozenLinear::new(rnd(&[5, 4], 1), Some(rnd(&[5], 2))).unwrap();
    assert_grad_ok("linear 2-D", |x| lin.forward(&x[0]), &[rnd(&[3, 4], 3)]);
    assert_grad_ok("linear 3-D", |x| lin.forward(&x[0]), &[rnd(&[2, 3, 4], 4)]);
}

#[test]
fn frozen_linear_does_not_track_its_weight() {
    let w = Var::from_tensor(&rnd(&[5, 4], 1)).unwrap();
    let lin = FrozenLinear::new(w.as_tensor().clone(), None).unwrap();
    let x = Var::from_tensor(&rnd(&[3, 4], 3)).unwrap();
    let grads = lin.forward(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&w).is_none(), "frozen weight received a gradient");
    assert!(grads.get(&x).is_some());
}

#[test]
fn frozen_conv_input_gradient_all_geometries() {
    // (kernel, stride, padding, input size): SD's 3×3/1, 1×1 shortcuts, strided downsamplers on
    // even and odd sizes (odd: the last row is never reached by the strided forward).
    for (k, s, p, hw) in [(3, 1, 1, 5), (1, 1, 0, 4), (3, 2, 1, 6), (3, 2, 1, 7), (3, 2, 0, 7), (3, 1, 0, 5)] {
        let conv = FrozenConv2d::new(rnd(&[3, 2, k, k], 10), Some(rnd(&[3], 11)), s, p).unwrap();
        let x = rnd(&[2, 2, hw, hw], 12);
        assert_grad_ok(&format!("conv k{k} s{s} p{p} {hw}x{hw}"), |x| conv.forward(&x[0]), std::slice::from_ref(&x));
        // Same values as candle's own conv.
        let reference = x
            .conv2d(conv.weight(), p, s, 1, 1)
            .unwrap()
            .broadcast_add(&conv.bias().unwrap().reshape((1, 3, 1, 1)).unwrap())
            .unwrap();
        let diff = (conv.forward(&x).unwrap() - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12, "forward differs by {diff}");
    }
}

#[test]
fn trainable_conv_gradients_all_geometries() {
    // The LoCon `down` conv: gradients for both the input and the kernel, checked against f64
    // central differences, and the same values as candle's own conv.
    for (k, s, p, hw) in [(3, 1, 1, 5), (1, 1, 0, 4), (3, 2, 1, 6), (3, 2, 1, 7), (3, 2, 0, 7)] {
        let x = rnd(&[2, 3, hw, hw], 20);
        let w = rnd(&[2, 3, k, k], 21);
        let name = format!("trainable conv k{k} s{s} p{p} {hw}x{hw}");
        assert_grad_ok(&name, |t| lorakit_nn::frozen::conv2d_trainable(&t[0], &t[1], s, p), &[x.clone(), w.clone()]);
        let ours = lorakit_nn::frozen::conv2d_trainable(&x, &w, s, p).unwrap();
        let diff = (ours - x.conv2d(&w, p, s, 1, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12, "{name}: forward differs");
    }
}

/// Largest |a − b| relative to the largest |b|.
fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-30);
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale
}

#[test]
fn f32_cpu_conv_kernels_match_candle_conv_and_its_gradients() {
    // The f32 CPU path (our im2col/GEMM/col2im kernels; the f64 checks above take candle's
    // path) against candle's own conv2d and its autograd, on non-square inputs, strides and
    // paddings SD uses plus odd cases; batch 2 so per-image offsets are exercised. 17×15 has
    // enough 2×2 tiles for the Winograd path (with partial edge tiles).
    for (k, s, p, h, w) in [
        (3, 1, 1, 17, 15),
        (3, 1, 1, 5, 7),
        (1, 1, 0, 4, 3),
        (3, 2, 1, 6, 8),
        (3, 2, 1, 7, 5),
        (3, 2, 0, 7, 9),
        (3, 1, 0, 5, 6),
        (1, 2, 0, 5, 5),
    ] {
        let name = format!("f32 conv k{k} s{s} p{p} {h}x{w}");
        let f32t = |shape: &[usize], seed| rnd(shape, seed).to_dtype(DType::F32).unwrap();
        let x = Var::from_tensor(&f32t(&[2, 5, h, w], 40)).unwrap();
        let kernel = Var::from_tensor(&f32t(&[4, 5, k, k], 41)).unwrap();
        let bias = f32t(&[4], 42);
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let upstream = f32t(&[2, 4, oh, ow], 43);

        let reference = x.conv2d(&kernel, p, s, 1, 1).unwrap();
        let ref_grads = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let reference = reference.broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap()).unwrap();

        let frozen = FrozenConv2d::new(kernel.as_tensor().clone(), Some(bias.clone()), s, p).unwrap();
        let ours = frozen.forward(x.as_tensor()).unwrap();
        assert!(relative_diff(&ours, &reference) < 1e-5, "{name}: frozen forward");
        let grads = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(&x).unwrap();
        assert!(relative_diff(dx, ref_grads.get(&x).unwrap()) < 1e-5, "{name}: frozen input gradient");

        let trained = lorakit_nn::frozen::conv2d_trainable(x.as_tensor(), kernel.as_tensor(), s, p).unwrap();
        let grads = (&trained * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(relative_diff(grads.get(&x).unwrap(), ref_grads.get(&x).unwrap()) < 1e-5, "{name}: trainable dx");
        let dw = grads.get(&kernel).unwrap();
        assert!(relative_diff(dw, ref_grads.get(&kernel).unwrap()) < 1e-5, "{name}: trainable kernel gradient");
    }
    // Shapes that do not fit are errors, not panics: wrong channel count, input smaller than
    // the kernel.
    let conv = FrozenConv2d::new(rnd(&[4, 5, 3, 3], 44).to_dtype(DType::F32).unwrap(), None, 1, 0).unwrap();
    assert!(conv.forward(&Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap()).is_err());
    assert!(conv.forward(&Tensor::zeros((1, 5, 2, 8), DType::F32, &Device::Cpu).unwrap()).is_err());
}

#[test]
fn f32_cpu_linear_matches_candle_and_its_gradient() {
    let f32t = |shape: &[usize], seed| rnd(shape, seed).to_dtype(DType::F32).unwrap();
    let x = Var::from_tensor(&f32t(&[2, 7, 6], 50)).unwrap();
    let (w, b) = (f32t(&[5, 6], 51), f32t(&[5], 52));
    let upstream = f32t(&[2, 7, 5], 53);
    let reference = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
    let ref_dx = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    let ours = FrozenLinear::new(w.clone(), Some(b)).unwrap().forward(x.as_tensor()).unwrap();
    assert!(relative_diff(&ours, &reference) < 1e-6, "linear forward");
    let dx = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
    assert!(relative_diff(&dx, &ref_dx) < 1e-6, "linear input gradient");
    // Without a bias, and an input whose features do not fit: an error.
    let plain = FrozenLinear::new(w, None).unwrap();
    assert!(
        relative_diff(
            &plain.forward(x.as_tensor()).unwrap(),
            &x.as_tensor().broadcast_matmul(&f32t(&[5, 6], 51).t().unwrap()).unwrap()
        ) < 1e-6
    );
    assert!(plain.forward(&f32t(&[2, 7, 4], 54)).is_err());
}

#[test]
fn f32_cpu_activations_match_candle_and_its_gradients() {
    // f32 on the CPU takes the fused SiLU/GEGLU kernels (vectorised exp and erf); candle's own
    // ops are the reference, on values out to ±12 so both tails are exercised.
    let dev = Device::Cpu;
    let x = Var::from_tensor(&(Tensor::randn(0f32, 4.0, (2, 300, 70), &dev).unwrap())).unwrap();
    let upstream = Tensor::randn(0f32, 1.0, (2, 300, 70), &dev).unwrap();
    let grad_of =
        |y: &Tensor, w: &Tensor| (y * w).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();

    let ours = silu(x.as_tensor()).unwrap();
    let reference = x.as_tensor().silu().unwrap();
    assert!(relative_diff(&ours, &reference) < 1e-6, "silu forward");
    assert!(relative_diff(&grad_of(&ours, &upstream), &grad_of(&reference, &upstream)) < 1e-6, "silu gradient");

    let ours = geglu(x.as_tensor()).unwrap();
    let (h, g) = (x.as_tensor().narrow(2, 0, 35).unwrap(), x.as_tensor().narrow(2, 35, 35).unwrap());
    let reference = (h * g.gelu_erf().unwrap()).unwrap();
    let w = upstream.narrow(2, 0, 35).unwrap();
    assert!(relative_diff(&ours, &reference) < 1e-6, "geglu forward");
    assert!(relative_diff(&grad_of(&ours, &w), &grad_of(&reference, &w)) < 1e-6, "geglu gradient");
}

#[test]
fn f32_cpu_norms_match_the_f64_composed_norms_and_their_gradients() {
    // f32 on the CPU takes the fused norm kernels, f64 the composed ops (gradient-checked
    // above): same values and input gradients, for LayerNorm with and without bias and
    // GroupNorm over 4-D and 3-D inputs.
    let dev = Device::Cpu;
    let ln = |bias: bool, dtype: DType| {
        LayerNorm::new(
            rnd(&[6], 90).affine(0.3, 1.0).unwrap().to_dtype(dtype).unwrap(),
            bias.then(|| rnd(&[6], 91).to_dtype(dtype).unwrap()),
            1e-5,
        )
    };
    let gn = |dtype: DType| {
        GroupNorm::new(
            rnd(&[6], 92).affine(0.3, 1.0).unwrap().to_dtype(dtype).unwrap(),
            rnd(&[6], 93).to_dtype(dtype).unwrap(),
            3,
            1e-5,
        )
        .unwrap()
    };
    type Norm = Box<dyn Fn(DType, &Tensor) -> Tensor>;
    let cases: Vec<(&str, Vec<usize>, Norm)> = vec![
        ("layer_norm", vec![2, 5, 6], Box::new(move |dt, x| ln(true, dt).forward(x).unwrap())),
        ("layer_norm without bias", vec![3, 6], Box::new(move |dt, x| ln(false, dt).forward(x).unwrap())),
        ("group_norm 4-D", vec![2, 6, 3, 4], Box::new(move |dt, x| gn(dt).forward(x).unwrap())),
        ("group_norm 3-D", vec![2, 6, 5], Box::new(move |dt, x| gn(dt).forward(x).unwrap())),
    ];
    for (name, shape, norm) in cases {
        let x64 = Var::from_tensor(&rnd(&shape, 94).affine(3.0, 0.5).unwrap()).unwrap();
        let x32 = Var::from_tensor(&x64.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev).unwrap();
        let y32 = norm(DType::F32, x32.as_tensor());
        let y64 = norm(DType::F64, x64.as_tensor());
        let y64_as32 = y64.to_dtype(DType::F32).unwrap();
        assert!(relative_diff(&y32, &y64_as32) < 1e-6, "{name}: forward");
        let g32 = (&y32 * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g64 = (&y64 * &w.to_dtype(DType::F64).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g32.get(&x32).unwrap(), g64.get(&x64).unwrap().to_dtype(DType::F32).unwrap());
        assert!(relative_diff(a, &b) < 1e-5, "{name}: input gradient");
    }
}

#[test]
fn norms_and_activations() {
    let ln = LayerNorm::new(rnd(&[6], 20).affine(0.3, 1.0).unwrap(), Some(rnd(&[6], 21)), 1e-5);
    assert_grad_ok("layer_norm", |x| ln.forward(&x[0]), &[rnd(&[2, 3, 6], 22)]);
    let gn = GroupNorm::new(rnd(&[6], 23).affine(0.3, 1.0).unwrap(), rnd(&[6], 24), 3, 1e-5).unwrap();
    assert_grad_ok("group_norm", |x| gn.forward(&x[0]), &[rnd(&[2, 6, 3, 2], 25)]);
    assert_grad_ok("softmax", |x| softmax_last_dim(&x[0]), &[rnd(&[2, 3, 5], 26).affine(3.0, 0.0).unwrap()]);
    assert_grad_ok("gelu", |x| gelu(&x[0]), &[rnd(&[4, 5], 27).affine(3.0, 0.0).unwrap()]);
    assert_grad_ok("quick_gelu", |x| quick_gelu(&x[0]), &[rnd(&[4, 5], 28).affine(3.0, 0.0).unwrap()]);
    assert_grad_ok("silu", |x| silu(&x[0]), &[rnd(&[4, 5], 29).affine(3.0, 0.0).unwrap()]);
    assert_grad_ok("geglu", |x| geglu(&x[0]), &[rnd(&[3, 8], 30).affine(2.0, 0.0).unwrap()]);
}

#[test]
fn group_norm_matches_definition() {
    // Two groups of two channels: normalise each group over channels and positions.
    let x = Tensor::new(&[[[[1.0f64, 2.0]], [[3.0, 4.0]], [[10.0, 10.0]], [[10.0, 14.0]]]], &Device::Cpu).unwrap();
    let gn = GroupNorm::new(
        Tensor::ones(4, DType::F64, &Device::Cpu).unwrap(),
        Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap(),
        2,
        0.0,
    )
    .unwrap();
    let y: Vec<f64> = gn.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let s = 1.25f64.sqrt();
    let expected = [
        -1.5 / s,
        -0.5 / s,
        0.5 / s,
        1.5 / s,
        -1.0 / 3f64.sqrt(),
        -1.0 / 3f64.sqrt(),
        -1.0 / 3f64.sqrt(),
        3.0 / 3f64.sqrt(),
    ];
    for (a, b) in y.iter().zip(expected) {
        assert!((a - b).abs() < 1e-9, "{y:?} vs {expected:?}");
    }
}

#[test]
fn chunked_attention_gradients() {
    let (q, k, v) = (
        rnd(&[2, 5, 3], 40).affine(2.0, 0.0).unwrap(),
        rnd(&[2, 7, 3], 41).affine(2.0, 0.0).unwrap(),
        rnd(&[2, 7, 4], 42),
    );
    assert_grad_ok("attention", |t| attention(&t[0], &t[1], &t[2], 0.6), &[q, k, v]);
}

/// `attention` against the composed full-matrix version: output and the three gradients.
fn attention_matches_composed(dtype: DType, heads: usize, lq: usize, lk: usize, d: usize, dv: usize) {
    let dev = Device::Cpu;
    let randn = |shape: (usize, usize, usize)| Tensor::randn(0f32, 1.0, shape, &dev).unwrap().to_dtype(dtype).unwrap();
    let q = Var::from_tensor(&randn((heads, lq, d))).unwrap();
    let k = Var::from_tensor(&randn((heads, lk, d))).unwrap();
    let v = Var::from_tensor(&randn((heads, lk, dv))).unwrap();
    let w = randn((heads, lq, dv));
    let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>| {
        let out = f(q.as_tensor(), k.as_tensor(), v.as_tensor(), 0.35).unwrap();
        let g = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (out, [g.get(&q).unwrap().clone(), g.get(&k).unwrap().clone(), g.get(&v).unwrap().clone()])
    };
    let (o1, g1) = run(&attention);
    let (o2, g2) = run(&attention_composed);
    let rel = |a: &Tensor, b: &Tensor| -> f64 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap();
        d.to_scalar::<f64>().unwrap() / scale.to_scalar::<f64>().unwrap()
    };
    let name = format!("{dtype:?} {heads}×{lq}×{lk}, d {d}, dv {dv}");
    assert!(rel(&o1, &o2) < 1e-5, "{name}: output {}", rel(&o1, &o2));
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        assert!(rel(a, b) < 1e-4, "{name}: grad {i}: {}", rel(a, b));
    }
}

#[test]
fn fused_cpu_attention_matches_composed() {
    // f32 on the CPU takes the fused kernels: several 128-row query blocks with a partial last
    // one, self-attention as in SD (d = dv = 40), cross-attention over 77 tokens, dv ≠ d.
    attention_matches_composed(DType::F32, 2, 1400, 12000, 8, 4);
    attention_matches_composed(DType::F32, 3, 300, 300, 40, 40);
    attention_matches_composed(DType::F32, 2, 257, 77, 16, 24);
}

#[test]
fn multi_head_attention_matches_folded_heads() {
    // attention_heads reads heads in place from (B, L, H·d) on the CPU in f32 and folds them
    // into the batch elsewhere (f64 here); both against the composed attention on folded heads.
    let dev = Device::Cpu;
    for dtype in [DType::F32, DType::F64] {
        let (b, heads, lq, lk, d) = (2, 3, 200, 77, 8);
        let randn =
            |shape: (usize, usize, usize)| Tensor::randn(0f32, 1.0, shape, &dev).unwrap().to_dtype(dtype).unwrap();
        let q = Var::from_tensor(&randn((b, lq, heads * d))).unwrap();
        let k = Var::from_tensor(&randn((b, lk, heads * d))).unwrap();
        let v = Var::from_tensor(&randn((b, lk, heads * d))).unwrap();
        let w = randn((b, lq, heads * d));
        let fold =
            |t: &Tensor, len: usize| t.reshape((b, len, heads, d))?.transpose(1, 2)?.reshape((b * heads, len, d));
        let reference = attention_composed(
            &fold(q.as_tensor(), lq).unwrap(),
            &fold(k.as_tensor(), lk).unwrap(),
            &fold(v.as_tensor(), lk).unwrap(),
            0.3,
        )
        .unwrap()
        .reshape((b, heads, lq, d))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, lq, heads * d))
        .unwrap();
        let ours = attention_heads(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads, 0.3).unwrap();
        let rel =
            |a: &Tensor, r: &Tensor| relative_diff(&a.to_dtype(DType::F32).unwrap(), &r.to_dtype(DType::F32).unwrap());
        assert!(rel(&ours, &reference) < 1e-5, "{dtype:?} output");
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for t in [&q, &k, &v] {
            assert!(rel(g1.get(t).unwrap(), g2.get(t).unwrap()) < 1e-4, "{dtype:?} gradient");
        }
    }
    let x = Tensor::zeros((1, 4, 6), DType::F32, &dev).unwrap();
    assert!(attention_heads(&x, &x, &x, 4, 1.0).is_err(), "6 features do not split into 4 heads");
}

#[test]
fn chunked_attention_matches_composed_over_many_chunks() {
    // Other dtypes take the composed chunked path; 2 × 1400 × 12000 scores exceed one chunk.
    attention_matches_composed(DType::F64, 2, 1400, 12000, 8, 4);
}

fn linear_target(in_dim: usize, out_dim: usize) -> LoraTarget {
    LoraTarget {
        path: "blk.proj".into(),
        kohya_path: None,
        kind: LoraKind::Linear,
        in_dim,
        out_dim,
        group: TargetGroup::Attention,
    }
}

#[test]
fn lora_init_matches_sd_scripts() {
    let mut rng = StdRng::seed_from_u64(0);
    let m = LoraModule::new_trainable(
        "lora_unet_blk_proj",
        &linear_target(64, 10),
        4,
        2.0,
        DType::F32,
        &Device::Cpu,
        &mut rng,
    )
    .unwrap();
    let down: Vec<f32> = m.down().as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let bound = 1.0 / 8.0;
    assert!(down.iter().all(|v| v.abs() <= bound) && down.iter().any(|v| v.abs() > bound * 0.9));
    assert_eq!(m.up().as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert_eq!(m.down().as_tensor().dims(), [4, 64]);
    assert_eq!(m.up().as_tensor().dims(), [10, 4]);
    assert_eq!(m.scale(), 0.5);
}

#[test]
fn lora_linear_and_conv_gradients() {
    let rng = Mutex::new(StdRng::seed_from_u64(0));
    for kind in [
        LoraKind::Linear,
        LoraKind::Conv { kernel: 3, stride: 1, padding: 1 },
        LoraKind::Conv { kernel: 3, stride: 2, padding: 1 },
    ] {
        let (down_shape, up_shape, x_shape): (Vec<usize>, Vec<usize>, Vec<usize>) = match kind {
            LoraKind::Linear => (vec![2, 4], vec![3, 2], vec![2, 5, 4]),
            LoraKind::Conv { .. } => (vec![2, 4, 3, 3], vec![3, 2, 1, 1], vec![2, 4, 5, 5]),
        };
        let f = |t: &[Tensor]| -> Result<Tensor> {
            let m = LoraModule::from_weights("m", kind, t[1].clone(), t[2].clone(), Some(1.5), true)?;
            m.set_multiplier(0.7);
            Ok(m.forward(&t[0], false, &rng)?.expect("no module dropout"))
        };
        assert_grad_ok(&format!("lora {kind:?}"), f, &[rnd(&x_shape, 50), rnd(&down_shape, 51), rnd(&up_shape, 52)]);
    }
}

#[test]
fn f32_cpu_lora_linear_branch_matches_composed_and_its_gradients() {
    // f32 on the CPU takes the fused branch; the reference is the composed candle graph.
    let rng = Mutex::new(StdRng::seed_from_u64(0));
    let f32t = |shape: &[usize], seed| rnd(shape, seed).to_dtype(DType::F32).unwrap();
    let x = Var::from_tensor(&f32t(&[2, 9, 6], 70)).unwrap();
    let upstream = f32t(&[2, 9, 5], 71);
    let m =
        LoraModule::from_weights("m", LoraKind::Linear, f32t(&[3, 6], 72), f32t(&[5, 3], 73), Some(1.5), true).unwrap();
    m.set_multiplier(0.7);
    let scale = 0.7 * 1.5 / 3.0;
    let ours = m.forward(x.as_tensor(), true, &rng).unwrap().unwrap();
    let (down, up) = (m.down().as_tensor(), m.up().as_tensor());
    let reference =
        (x.as_tensor().broadcast_matmul(&down.t().unwrap()).unwrap().broadcast_matmul(&up.t().unwrap()).unwrap()
            * scale)
            .unwrap();
    assert!(relative_diff(&ours, &reference) < 1e-6, "forward");
    let g_ours = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, t) in [("x", x.as_tensor()), ("down", down), ("up", up)] {
        let (a, b) = (g_ours.get(t).unwrap(), g_ref.get(t).unwrap());
        assert!(relative_diff(a, b) < 1e-6, "{name} gradient");
    }
    // A frozen (not trained) module gives no gradients to its factors.
    let frozen =
        LoraModule::from_weights("m", LoraKind::Linear, f32t(&[3, 6], 72), f32t(&[5, 3], 73), None, false).unwrap();
    let g = frozen.forward(x.as_tensor(), false, &rng).unwrap().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(frozen.down()).is_none() && g.get(frozen.up()).is_none() && g.get(&x).is_some());
}

#[test]
fn f32_cpu_locon_branch_matches_composed_and_its_gradients() {
    // The fused LoCon branch (down conv + 1×1 up) against candle's own conv and matmul graph,
    // for the 3×3 convs and the strided downsamplers; batch 2.
    let rng = Mutex::new(StdRng::seed_from_u64(0));
    let f32t = |shape: &[usize], seed| rnd(shape, seed).to_dtype(DType::F32).unwrap();
    for (stride, padding, hw) in [(1, 1, 6), (2, 1, 7)] {
        let x = Var::from_tensor(&f32t(&[2, 4, hw, hw], 80)).unwrap();
        let kind = LoraKind::Conv { kernel: 3, stride, padding };
        let m = LoraModule::from_weights("m", kind, f32t(&[3, 4, 3, 3], 81), f32t(&[5, 3, 1, 1], 82), Some(1.5), true)
            .unwrap();
        let ours = m.forward(x.as_tensor(), true, &rng).unwrap().unwrap();
        let (down, up) = (m.down().as_tensor(), m.up().as_tensor());
        let h = x.as_tensor().conv2d(down, padding, stride, 1, 1).unwrap();
        let reference = (h.conv2d(up, 0, 1, 1, 1).unwrap() * 0.5).unwrap();
        let name = format!("LoCon stride {stride}");
        assert!(relative_diff(&ours, &reference) < 1e-5, "{name}: forward");
        let upstream = f32t(ours.dims(), 83);
        let g_ours = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, t) in [("x", x.as_tensor()), ("down", down), ("up", up)] {
            assert!(relative_diff(g_ours.get(t).unwrap(), g_ref.get(t).unwrap()) < 1e-5, "{name}: {what} gradient");
        }
    }
}

#[test]
fn f32_cpu_linear_fused_with_its_lora_module_matches_composed() {
    // A Linear layer with one LoRA module on f32 CPU data runs as one op; the reference is the
    // frozen layer plus the module's composed candle graph.
    let f32t = |shape: &[usize], seed| rnd(shape, seed).to_dtype(DType::F32).unwrap();
    let mut set = LoraSet::new(3, &Device::Cpu).unwrap();
    let (w, b) = (f32t(&[5, 6], 100), f32t(&[5], 101));
    let lin = Linear::new("a.lin", w.clone(), Some(b.clone())).unwrap();
    let module =
        LoraModule::from_weights("m", LoraKind::Linear, f32t(&[2, 6], 102), f32t(&[5, 2], 103), Some(1.5), true);
    set.insert("a.lin", module.unwrap());
    let set = Arc::new(set);
    let ctx = ForwardCtx { lora: Some(set.clone()), train: true, gradient_checkpointing: false };
    let x = Var::from_tensor(&f32t(&[2, 7, 6], 104)).unwrap();
    let upstream = f32t(&[2, 7, 5], 105);
    let ours = lin.forward(x.as_tensor(), &ctx).unwrap();
    let m = &set.modules()[0];
    let (down, up) = (m.down().as_tensor(), m.up().as_tensor());
    let branch =
        x.as_tensor().broadcast_matmul(&down.t().unwrap()).unwrap().broadcast_matmul(&up.t().unwrap()).unwrap();
    let frozen = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
    let reference = (frozen + (branch * 0.75).unwrap()).unwrap();
    assert!(relative_diff(&ours, &reference) < 1e-6, "forward");
    let g_ours = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, t) in [("x", x.as_tensor()), ("down", down), ("up", up)] {
        assert!(relative_diff(g_ours.get(t).unwrap(), g_ref.get(t).unwrap()) < 1e-6, "{name} gradient");
    }
}

#[test]
fn f32_cpu_conv_fused_with_its_locon_module_matches_composed() {
    // A Conv2d with one LoCon module on f32 CPU data runs as one op, for a 3×3, a strided and
    // a pointwise conv; the reference is candle's own convs and graph.
    let f32t = |shape: &[usize], seed| rnd(shape, seed).to_dtype(DType::F32).unwrap();
    // 33×33 is large enough for the Winograd path (with partial edge tiles).
    for (kernel, stride, padding, hw) in [(3, 1, 1, 6), (3, 2, 1, 7), (1, 1, 0, 5), (3, 1, 1, 33)] {
        let mut set = LoraSet::new(3, &Device::Cpu).unwrap();
        let (w, b) = (f32t(&[5, 4, kernel, kernel], 110), f32t(&[5], 111));
        let conv = Conv2d::new("a.conv", w.clone(), Some(b.clone()), stride, padding).unwrap();
        let kind = LoraKind::Conv { kernel, stride, padding };
        let module = LoraModule::from_weights(
            "m",
            kind,
            f32t(&[2, 4, kernel, kernel], 112),
            f32t(&[5, 2, 1, 1], 113),
            Some(1.5),
            true,
        );
        set.insert("a.conv", module.unwrap());
        let set = Arc::new(set);
        let ctx = ForwardCtx { lora: Some(set.clone()), train: true, gradient_checkpointing: false };
        let x = Var::from_tensor(&f32t(&[2, 4, hw, hw], 114)).unwrap();
        let ours = conv.forward(x.as_tensor(), &ctx).unwrap();
        let m = &set.modules()[0];
        let (down, up) = (m.down().as_tensor(), m.up().as_tensor());
        let branch = x.as_tensor().conv2d(down, padding, stride, 1, 1).unwrap().conv2d(up, 0, 1, 1, 1).unwrap();
        let frozen = x
            .as_tensor()
            .conv2d(&w, padding, stride, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        let reference = (frozen + (branch * 0.75).unwrap()).unwrap();
        assert!(relative_diff(&ours, &reference) < 1e-5, "{kernel}×{kernel} stride {stride}: forward");
        let upstream = f32t(ours.dims(), 115);
        let g_ours = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&reference * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("x", x.as_tensor()), ("down", down), ("up", up)] {
            assert!(
                relative_diff(g_ours.get(t).unwrap(), g_ref.get(t).unwrap()) < 1e-5,
                "{kernel}×{kernel} stride {stride}: {name} gradient"
            );
        }
    }
}

#[test]
fn lora_delta_weight_equals_forward_difference() {
    // For a linear target: (W + ΔW)x = Wx + lora(x).
    let rng = Mutex::new(StdRng::seed_from_u64(0));
    let m =
        LoraModule::from_weights("m", LoraKind::Linear, rnd(&[2, 4], 60), rnd(&[3, 2], 61), Some(1.0), false).unwrap();
    m.set_multiplier(0.8);
    let x = rnd(&[5, 4], 62);
    let via_delta = x.matmul(&m.delta_weight().unwrap().to_dtype(DType::F64).unwrap().t().unwrap()).unwrap();
    let via_forward = m.forward(&x, false, &rng).unwrap().unwrap();
    let diff = (via_delta - via_forward).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn lora_dropouts_behave() {
    let rng = Mutex::new(StdRng::seed_from_u64(1));
    let mk = |d: LoraDropout| {
        LoraModule::from_weights(
            "m",
            LoraKind::Linear,
            Tensor::ones((4, 8), DType::F32, &Device::Cpu).unwrap(),
            Tensor::ones((8, 4), DType::F32, &Device::Cpu).unwrap(),
            Some(4.0),
            true,
        )
        .unwrap()
        .with_dropout(d)
    };
    let x = Tensor::ones((2, 3, 8), DType::F32, &Device::Cpu).unwrap();
    // Module dropout 1.0 skips always; in eval mode never.
    let m = mk(LoraDropout { module: 1.0, ..Default::default() });
    assert!(m.forward(&x, true, &rng).unwrap().is_none());
    assert!(m.forward(&x, false, &rng).unwrap().is_some());
    // Rank dropout keeps the expectation: mean over many draws ≈ the undropped output (32).
    let m = mk(LoraDropout { rank: 0.5, ..Default::default() });
    let mut total = 0.0;
    for _ in 0..200 {
        total += m.forward(&x, true, &rng).unwrap().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    }
    let mean = total / 200.0;
    assert!((mean - 32.0).abs() < 2.0, "mean {mean}");
}

fn tiny_block_ctx(checkpointing: bool) -> (ForwardCtx, Arc<LoraSet>, Linear, Conv2d) {
    let mut set = LoraSet::new(3, &Device::Cpu).unwrap();
    let lin = Linear::new("a.lin", rnd(&[6, 6], 70), Some(rnd(&[6], 71))).unwrap();
    let conv = Conv2d::new("a.conv", rnd(&[6, 6, 3, 3], 72), Some(rnd(&[6], 73)), 1, 1).unwrap();
    set.insert(
        "a.lin",
        LoraModule::from_weights(
            "lora_unet_a_lin",
            LoraKind::Linear,
            rnd(&[2, 6], 74),
            rnd(&[6, 2], 75),
            Some(1.0),
            true,
        )
        .unwrap(),
    );
    let ck = LoraKind::Conv { kernel: 3, stride: 1, padding: 1 };
    set.insert(
        "a.conv",
        LoraModule::from_weights(
            "lora_unet_a_conv",
            ck,
            rnd(&[2, 6, 3, 3], 76),
            rnd(&[6, 2, 1, 1], 77),
            Some(1.0),
            true,
        )
        .unwrap(),
    );
    let set = Arc::new(set);
    let ctx = ForwardCtx { lora: Some(set.clone()), train: true, gradient_checkpointing: checkpointing };
    (ctx, set, lin, conv)
}

#[test]
fn gradient_checkpointing_gives_identical_gradients() {
    let mut results = Vec::new();
    for checkpointing in [false, true] {
        let (ctx, set, lin, conv) = tiny_block_ctx(checkpointing);
        let (lin, conv) = (Arc::new(lin), Arc::new(conv));
        let block: lorakit_nn::checkpoint::BlockFn = Arc::new(move |x: &[Tensor], ctx: &ForwardCtx| {
            let h = silu(&conv.forward(&x[0], ctx)?)?;
            let h = lin.forward(&h.permute((0, 2, 3, 1))?, ctx)?.permute((0, 3, 1, 2))?;
            h + &x[0]
        });
        // Two chained blocks; the input itself needs no gradient (as for the UNet's latents).
        let x = rnd(&[1, 6, 4, 4], 80);
        let h = checkpoint(&[&x], &ctx, block.clone()).unwrap();
        let y = checkpoint(&[&h], &ctx, block).unwrap();
        let grads = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let g: Vec<Vec<f64>> = set
            .trainable_vars()
            .iter()
            .map(|v| {
                set.grad(&grads, v)
                    .unwrap()
                    .expect("lora weight got no gradient")
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        results.push((y.flatten_all().unwrap().to_vec1::<f64>().unwrap(), g));
    }
    assert_eq!(results[0].0, results[1].0);
    for (a, b) in results[0].1.iter().zip(&results[1].1) {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(d < 1e-9, "checkpointed gradient differs by {d}");
    }
}
