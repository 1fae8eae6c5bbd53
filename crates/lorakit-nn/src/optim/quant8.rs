//! bitsandbytes' block-wise 8-bit quantisation of optimizer state: the dynamic quantisation maps
//! (`bitsandbytes.functional.create_dynamic_map`), 256-element blocks each scaled by its largest
//! magnitude, and the CUDA optimizer kernels' code search (`quantize_2D` in csrc/kernels.cu).
//!
//! A state value `s` of block `b` is stored as the code `c` whose map entry is nearest to
//! `s / absmax[b]`, and read back as `map[c] · absmax[b]`.

use std::sync::OnceLock;

/// Elements per block of the 8-bit optimizer kernels (csrc/ops.cu `BLOCKSIZE_1STATE`/`_2STATE`,
/// and the absmax size `Optimizer2State.init_state` allocates), since bitsandbytes 0.45.
pub const BLOCK_SIZE: usize = 256;

/// Code the kernels load for the padding past the end of the last block of a signed state
/// (`LoadChar(..., 128)`): its value, the smallest positive map entry times the block maximum,
/// takes part in the block's new maximum. Unsigned states are padded with code 0 (value 0).
pub const SIGNED_PAD_CODE: u8 = 128;

/// Number of blocks covering `n` elements.
pub fn block_count(n: usize) -> usize {
    n.div_ceil(BLOCK_SIZE)
}

/// `torch.linspace(0.1, 1, steps, dtype=float32)` as torch 2.x computes it on CPU: the first half
/// from the start, the second half back from the end, each as one fused multiply-add (the CPU
/// kernel's `start + step * i` is contracted to an FMA), which is what makes the map bit-exact.
fn linspace_01_1(steps: usize) -> Vec<f32> {
    let (start, end) = (0.1f32, 1.0f32);
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) })
        .collect()
}

/// `bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`: for
/// each exponent 10⁻⁶…10⁰ the midpoints of an even split of [0.1, 1] (2ⁱ of them signed, 2ⁱ⁺¹
/// unsigned), mirrored to negative values when signed, plus 0 and 1, sorted. 256 entries.
pub fn create_dynamic_map(signed: bool) -> [f32; 256] {
    // `10 ** (-(max_exponent_bits - 1) + i)`: Python's correctly rounded powers of ten.
    const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for (i, scale) in SCALES.iter().enumerate() {
        let items = if signed { (1usize << i) + 1 } else { (1usize << (i + 1)) + 1 };
        let bounds = linspace_01_1(items);
        let scale = *scale as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.resize(256, 0.0);
    data.sort_by(|a, b| a.total_cmp(b));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// The two maps bitsandbytes' optimizers use: signed for first moments (`qmap1`, "dynamic"),
/// unsigned for second moments (`qmap2`, "udynamic").
pub struct QuantMaps {
    pub signed: [f32; 256],
    pub unsigned: [f32; 256],
}

/// The maps, built once.
pub fn quant_maps() -> &'static QuantMaps {
    static MAPS: OnceLock<QuantMaps> = OnceLock::new();
    MAPS.get_or_init(|| QuantMaps { signed: create_dynamic_map(true), unsigned: create_dynamic_map(false) })
}

/// kernels.cu `quantize_2D<SIGNED>`: a 7-step binary search of the sorted map from entry 127, then
/// the nearer of the found entry and its searched neighbour by midpoint (ties keep the found
/// entry). `x` is the state value divided by its block maximum; NaN lands on code 0.
pub fn quantize_code(map: &[f32; 256], x: f32, signed: bool) -> u8 {
    let mut pivot = 127usize;
    let mut upper_pivot = 255usize;
    let mut lower_pivot = 0usize;
    let mut lower = if signed { -1.0f32 } else { 0.0 };
    let mut upper = 1.0f32;
    let mut val = map[pivot];
    let mut i = 64usize;
    while i > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
        i >>= 1;
    }
    let code = if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    code as u8
}

/// The signed states' correction after quantising: "make sure state1 term has still the same sign
/// after quantization" — when the code's sign bit differs from the value's, step one code towards
/// the value's sign (wrapping as the kernel's `unsigned char` does).
pub fn sign_fixed_code(map: &[f32; 256], code: u8, value: f32) -> u8 {
    if map[code as usize].is_sign_negative() != value.is_sign_negative() {
        if value > 0.0 {
            code.wrapping_add(1)
        } else {
            code.wrapping_sub(1)
        }
    } else {
        code
    }
}

/// A state value as stored by the kernel: `quantize_2D(value / absmax)`, sign-fixed when signed.
/// The division is IEEE (the CUDA kernel's `__fdividef` differs from it by float32 rounding).
pub fn quantize_state(map: &[f32; 256], value: f32, absmax: f32, signed: bool) -> u8 {
    let code = quantize_code(map, value / absmax, signed);
    if signed {
        sign_fixed_code(map, code, value)
    } else {
        code
    }
}
