//! The training noise of one batch, with sd-scripts' options (spec §7.1): offset noise (fixed or
//! random strength, optionally adaptive to the latents' channel means), multi-resolution
//! "pyramid" noise, and input-perturbation noise (the model sees `ε + γξ`, the target stays `ε`).
//!
//! The deterministic parts take their random draws as arguments, so tests can feed them the
//! draws sd-scripts made and compare numbers; [`sample_noise`] makes the draws from a seeded RNG.

use candle_core::{DType, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// Every noise option of sd-scripts' LoRA training (defaults: all off, discount 0.3 as sd-scripts).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseOptions {
    /// Offset noise strength.
    pub noise_offset: Option<f64>,
    /// Strength ~ U(0, noise_offset) per batch.
    pub noise_offset_random_strength: bool,
    /// Adds `scale·|mean_HW(latents)|` to the offset (needs `noise_offset`).
    pub adaptive_noise_scale: Option<f64>,
    /// Pyramid noise iterations.
    pub multires_noise_iterations: Option<usize>,
    /// Pyramid noise discount per level.
    pub multires_noise_discount: f64,
    /// Input perturbation γ.
    pub ip_noise_gamma: Option<f64>,
    /// γ ~ U(0, ip_noise_gamma) per batch.
    pub ip_noise_gamma_random_strength: bool,
}

impl Default for NoiseOptions {
    fn default() -> Self {
        NoiseOptions {
            noise_offset: None,
            noise_offset_random_strength: false,
            adaptive_noise_scale: None,
            multires_noise_iterations: None,
            multires_noise_discount: 0.3,
            ip_noise_gamma: None,
            ip_noise_gamma_random_strength: false,
        }
    }
}

/// `noise + off·n` with `off = offset` or, with `adaptive`, `max(0, offset + adaptive·|mean_HW(latents)|)`
/// per sample and channel; `n` is a standard normal draw of shape `(B, C, 1, 1)`.
pub fn apply_noise_offset(
    latents: &Tensor,
    noise: &Tensor,
    offset: f64,
    adaptive: Option<f64>,
    n: &Tensor,
) -> Result<Tensor> {
    let off = match adaptive {
        Some(a) => {
            let mean = latents.to_dtype(DType::F32)?.mean_keepdim(3)?.mean_keepdim(2)?.abs()?;
            (mean * a)?.affine(1.0, offset)?.clamp(0f32, f32::MAX)?
        }
        None => Tensor::full(offset as f32, n.dims(), n.device())?,
    };
    noise.broadcast_add(&off.broadcast_mul(n)?)
}

/// The sizes of the pyramid levels for scale factors `r[i]` (drawn from U(2, 4)): level `i` is
/// `(max(1, ⌊H/r_i^i⌋), max(1, ⌊W/r_i^i⌋))`, and the pyramid stops after the first level with a
/// side of 1.
pub fn pyramid_sizes(height: usize, width: usize, r: &[f64]) -> Vec<(usize, usize)> {
    let mut sizes = Vec::new();
    for (i, &ri) in r.iter().enumerate() {
        let scale = ri.powi(i as i32);
        let h = ((height as f64 / scale) as usize).max(1);
        let w = ((width as f64 / scale) as usize).max(1);
        sizes.push((h, w));
        if h == 1 || w == 1 {
            break;
        }
    }
    sizes
}

/// Pyramid noise: `noise + Σ_i upsample_bilinear(levels[i])·discount^i`, then divided by its
/// (unbiased) standard deviation over the whole batch.
pub fn pyramid_noise(noise: &Tensor, levels: &[Tensor], discount: f64) -> Result<Tensor> {
    let (_, _, h, w) = noise.dims4()?;
    let mut out = noise.to_dtype(DType::F32)?;
    for (i, level) in levels.iter().enumerate() {
        let up = upsample_bilinear(level, h, w)?;
        out = (out + (up * discount.powi(i as i32))?)?;
    }
    let n = out.elem_count() as f64;
    let mean = out.mean_all()?.to_scalar::<f32>()? as f64;
    let var = (out.affine(1.0, -mean)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64) / (n - 1.0).max(1.0);
    out.affine(1.0 / var.sqrt(), 0.0)
}

/// Bilinear resize of `(B, C, h, w)` to `(B, C, H, W)` with PyTorch's `align_corners=False`
/// (half-pixel centres, source coordinates clamped at 0).
pub fn upsample_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (b, c, in_h, in_w) = x.dims4()?;
    let device = x.device().clone();
    let data: Vec<f32> = x.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let axis = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|o| {
                let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src as usize).min(inp - 1);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let ys = axis(out_h, in_h);
    let xs = axis(out_w, in_w);
    let mut out = vec![0f32; b * c * out_h * out_w];
    for plane in 0..b * c {
        let src = &data[plane * in_h * in_w..(plane + 1) * in_h * in_w];
        let dst = &mut out[plane * out_h * out_w..(plane + 1) * out_h * out_w];
        for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                let top = src[y0 * in_w + x0] * (1.0 - lx) + src[y0 * in_w + x1] * lx;
                let bottom = src[y1 * in_w + x0] * (1.0 - lx) + src[y1 * in_w + x1] * lx;
                dst[oy * out_w + ox] = top * (1.0 - ly) + bottom * ly;
            }
        }
    }
    Tensor::from_vec(out, (b, c, out_h, out_w), &device)
}

/// A standard normal tensor drawn from `rng` (f32, drawn on the host so every device sees the
/// same numbers).
pub(crate) fn normal(shape: &[usize], rng: &mut StdRng, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)
}

/// The noise of one batch: `(target noise ε, noise added to the input)` — the same tensor unless
/// input perturbation is on. Draws come from `rng` in a fixed order.
pub fn sample_noise(latents: &Tensor, opts: &NoiseOptions, rng: &mut StdRng) -> Result<(Tensor, Tensor)> {
    let device = latents.device().clone();
    let dims = latents.dims4()?;
    let (b, c, h, w) = dims;
    let mut noise = normal(&[b, c, h, w], rng, &device)?;
    if let Some(offset) = opts.noise_offset.filter(|o| *o != 0.0) {
        let strength = if opts.noise_offset_random_strength { rng.random::<f64>() * offset } else { offset };
        let n = normal(&[b, c, 1, 1], rng, &device)?;
        noise = apply_noise_offset(latents, &noise, strength, opts.adaptive_noise_scale, &n)?;
    }
    if let Some(iterations) = opts.multires_noise_iterations.filter(|i| *i > 0) {
        let r: Vec<f64> = (0..iterations).map(|_| rng.random::<f64>() * 2.0 + 2.0).collect();
        let levels = pyramid_sizes(h, w, &r)
            .into_iter()
            .map(|(lh, lw)| normal(&[b, c, lh, lw], rng, &device))
            .collect::<Result<Vec<_>>>()?;
        noise = pyramid_noise(&noise, &levels, opts.multires_noise_discount)?;
    }
    let input = match opts.ip_noise_gamma.filter(|g| *g != 0.0) {
        Some(gamma) => {
            let strength = if opts.ip_noise_gamma_random_strength { rng.random::<f64>() * gamma } else { gamma };
            let xi = normal(&[b, c, h, w], rng, &device)?;
            (&noise + (xi * strength)?)?
        }
        None => noise.clone(),
    };
    Ok((noise, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_stops_at_a_side_of_one() {
        assert_eq!(pyramid_sizes(8, 8, &[3.0, 3.0, 3.0, 3.0]), vec![(8, 8), (2, 2), (1, 1)]);
        assert_eq!(pyramid_sizes(64, 32, &[2.0, 2.0]), vec![(64, 32), (32, 16)]);
    }

    #[test]
    fn bilinear_keeps_constants_and_interpolates_between_centres() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[0f32, 1.0]]]], &dev).unwrap();
        let y = upsample_bilinear(&x, 1, 4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
