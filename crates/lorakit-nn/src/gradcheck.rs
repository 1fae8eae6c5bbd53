//! Finite-difference gradient checks, for this crate's tests and for model crates' tests.
//!
//! The checked function is reduced to a scalar with fixed random weights, `L = Σ f(x)·R`; its
//! autograd gradient is compared with central differences in f64.

use candle_core::{DType, Device, Result, Tensor, Var};

/// The largest gradient error found, relative to the largest gradient magnitude.
#[derive(Debug, Clone, Copy)]
pub struct GradCheck {
    /// max |autograd − numeric| over all inputs and elements.
    pub max_abs_error: f64,
    /// max |numeric| over all inputs and elements.
    pub max_magnitude: f64,
}

impl GradCheck {
    /// `max_abs_error / max(max_magnitude, 1e-12)`.
    pub fn relative_error(&self) -> f64 {
        self.max_abs_error / self.max_magnitude.max(1e-12)
    }
}

/// Deterministic pseudo-random f64 values in [-1, 1) (an LCG: tests need reproducibility, not
/// statistical quality).
pub fn pseudo_random(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let values: Vec<f64> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// Checks the gradients of `f` with respect to every input (f64 tensors) by central differences
/// with step `eps`.
pub fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], eps: f64) -> Result<GradCheck> {
    for t in inputs {
        if t.dtype() != DType::F64 {
            candle_core::bail!("gradcheck needs f64 inputs, got {:?}", t.dtype())
        }
    }
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors)?;
    let weights = pseudo_random(out.dims(), 7)?;
    let loss = |out: &Tensor| -> Result<f64> { (out * &weights)?.sum_all()?.to_scalar::<f64>() };
    let grads = (&out * &weights)?.sum_all()?.backward()?;

    let mut report = GradCheck { max_abs_error: 0.0, max_magnitude: 0.0 };
    for (i, var) in vars.iter().enumerate() {
        let analytic: Vec<f64> = match grads.get(var) {
            Some(g) => g.flatten_all()?.to_vec1()?,
            None => vec![0.0; var.elem_count()],
        };
        let base: Vec<f64> = inputs[i].flatten_all()?.to_vec1()?;
        for (j, &a) in analytic.iter().enumerate() {
            let probe = |delta: f64| -> Result<f64> {
                let mut values = base.clone();
                values[j] += delta;
                let mut shifted = inputs.to_vec();
                shifted[i] = Tensor::from_vec(values, inputs[i].dims(), &Device::Cpu)?;
                loss(&f(&shifted)?)
            };
            let numeric = (probe(eps)? - probe(-eps)?) / (2.0 * eps);
            report.max_abs_error = report.max_abs_error.max((a - numeric).abs());
            report.max_magnitude = report.max_magnitude.max(numeric.abs());
        }
    }
    Ok(report)
}
