//! SVD resize of LoRA modules with the semantics of sd-scripts `networks/resize_lora.py`
//! (spec §12.1): the same rank choice for every method, the same new alpha, the same verbose report
//! and metadata updates — but computed in factor space.
//!
//! sd-scripts multiplies `W = up·down` out to a dense `m×n` matrix and takes its full SVD, an
//! `O(m·n·min(m, n))` job per module. Here `W` is never formed: with `up = Qa·Ra` and
//! `downᵀ = Qb·Rb` (thin QR), `W = Qa·(Ra·Rbᵀ)·Qbᵀ`, so the SVD of the small `r×r` core gives W's
//! nonzero singular values and vectors exactly, in `O((m + n)·r²)`. The remaining
//! `min(m, n) − r` singular values of W are exactly 0; sd-scripts' rules that depend on
//! `len(S) = min(m, n)` see them as such. All maths is in f64 on the f32 inputs.
//!
//! This module is pure algorithm: tensors come in and go out as row-major f32 slices with their
//! shapes; reading and writing files is the format layer's job.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::householder::{
    apply_block_householder_sequence_on_the_left_in_place_scratch,
    apply_block_householder_sequence_on_the_left_in_place_with_conj,
};
use faer::linalg::matmul::matmul;
use faer::linalg::qr::no_pivoting::factor as qr_factor;
use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors};
use faer::{Accum, Conj, Mat, Par};
use rayon::prelude::*;

/// sd-scripts' `MIN_SV`: a module whose largest singular value is at most this is treated as a
/// zero matrix and resized to rank 1.
pub const MIN_SV: f64 = 1e-6;

/// Everything that can go wrong when configuring or running a resize.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResizeError {
    /// `--dynamic` names a method sd-scripts does not have.
    #[error("unknown --dynamic method `{0}`: expected sv_ratio, sv_fro or sv_cumulative")]
    UnknownMethod(String),
    /// A dynamic method was chosen without its parameter.
    #[error("--dynamic {method} needs --param ({expected})")]
    MissingParam {
        /// Method name as written on the command line.
        method: &'static str,
        /// The allowed range, in words.
        expected: &'static str,
    },
    /// `--param` was given without `--dynamic`; it would be silently ignored.
    #[error("--param {0} has no effect without --dynamic sv_ratio|sv_fro|sv_cumulative")]
    ParamWithoutMethod(f64),
    /// The dynamic parameter is outside the range its method allows.
    #[error("--param {value} is out of range for --dynamic {method}: {expected}")]
    ParamOutOfRange {
        /// Method name as written on the command line.
        method: &'static str,
        /// The rejected value.
        value: f64,
        /// The allowed range, in words.
        expected: &'static str,
    },
    /// `--rank` or `--conv-rank` is 0.
    #[error("{flag} must be at least 1")]
    ZeroRank {
        /// The offending flag.
        flag: &'static str,
    },
    /// Up/down shapes, data lengths or alpha do not describe a LoRA module.
    #[error("{0}")]
    Shape(String),
    /// The factors hold NaN or infinite values.
    #[error("weights contain NaN or infinite values")]
    NonFinite,
    /// The SVD of the core matrix did not converge.
    #[error("SVD did not converge")]
    SvdNoConvergence,
    /// An error in one named module.
    #[error("module {module}: {source}")]
    Module {
        /// The module name (key prefix before `.lora_down`).
        module: String,
        /// What went wrong.
        source: Box<ResizeError>,
    },
}

/// How the new rank of each module is chosen (sd-scripts `--dynamic_method`/`--dynamic_param`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResizeMethod {
    /// Every module gets the cap (`--rank`, or `--conv-rank` for conv modules).
    Fixed,
    /// Keep singular values above `S₀ / p` (plus one more); `p ≥ 2`.
    SvRatio(f64),
    /// Keep enough singular values for a fraction `p` of the Frobenius norm (plus one); `0 < p < 1`.
    SvFro(f64),
    /// Keep enough singular values for a fraction `p` of their sum (plus one); `0 < p < 1`.
    SvCumulative(f64),
}

const RATIO_RANGE: &str = "a finite number >= 2 (largest / smallest kept singular value)";
const FRACTION_RANGE: &str = "a number strictly between 0 and 1";

impl ResizeMethod {
    /// Builds and validates a method from the `--dynamic` and `--param` flags
    /// (`None, None` is the fixed method).
    pub fn from_flags(dynamic: Option<&str>, param: Option<f64>) -> Result<Self, ResizeError> {
        let method = match (dynamic, param) {
            (None, None) => return Ok(ResizeMethod::Fixed),
            (None, Some(p)) => return Err(ResizeError::ParamWithoutMethod(p)),
            (Some(name), param) => {
                let (ctor, method, expected): (fn(f64) -> Self, &'static str, &'static str) = match name {
                    "sv_ratio" => (ResizeMethod::SvRatio, "sv_ratio", RATIO_RANGE),
                    "sv_fro" => (ResizeMethod::SvFro, "sv_fro", FRACTION_RANGE),
                    "sv_cumulative" => (ResizeMethod::SvCumulative, "sv_cumulative", FRACTION_RANGE),
                    other => return Err(ResizeError::UnknownMethod(other.to_string())),
                };
                ctor(param.ok_or(ResizeError::MissingParam { method, expected })?)
            }
        };
        method.validate()
    }

    /// Checks the parameter range: `sv_ratio` needs a finite `p ≥ 2`; `sv_fro` and
    /// `sv_cumulative` need `0 < p < 1` (outside it sd-scripts silently keeps rank 2 or the cap).
    pub fn validate(self) -> Result<Self, ResizeError> {
        let ok = match self {
            ResizeMethod::Fixed => true,
            ResizeMethod::SvRatio(p) => p.is_finite() && p >= 2.0,
            ResizeMethod::SvFro(p) | ResizeMethod::SvCumulative(p) => p > 0.0 && p < 1.0,
        };
        match (ok, self.dynamic_name(), self.param()) {
            (false, Some(method), Some(value)) => Err(ResizeError::ParamOutOfRange {
                method,
                value,
                expected: if matches!(self, ResizeMethod::SvRatio(_)) { RATIO_RANGE } else { FRACTION_RANGE },
            }),
            _ => Ok(self),
        }
    }

    /// The sd-scripts method name (`sv_ratio`, `sv_fro`, `sv_cumulative`), `None` when fixed.
    pub fn dynamic_name(self) -> Option<&'static str> {
        match self {
            ResizeMethod::Fixed => None,
            ResizeMethod::SvRatio(_) => Some("sv_ratio"),
            ResizeMethod::SvFro(_) => Some("sv_fro"),
            ResizeMethod::SvCumulative(_) => Some("sv_cumulative"),
        }
    }

    /// The dynamic parameter, `None` when fixed.
    pub fn param(self) -> Option<f64> {
        match self {
            ResizeMethod::Fixed => None,
            ResizeMethod::SvRatio(p) | ResizeMethod::SvFro(p) | ResizeMethod::SvCumulative(p) => Some(p),
        }
    }
}

/// A validated resize configuration: method plus the rank caps (`--new_rank`, `--new_conv_rank`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizeSettings {
    method: ResizeMethod,
    rank: usize,
    conv_rank: usize,
}

impl ResizeSettings {
    /// Validates the method and caps; `conv_rank` defaults to `rank` as in sd-scripts.
    pub fn new(method: ResizeMethod, rank: usize, conv_rank: Option<usize>) -> Result<Self, ResizeError> {
        let method = method.validate()?;
        if rank == 0 {
            return Err(ResizeError::ZeroRank { flag: "--rank" });
        }
        let conv_rank = conv_rank.unwrap_or(rank);
        if conv_rank == 0 {
            return Err(ResizeError::ZeroRank { flag: "--conv-rank" });
        }
        Ok(Self { method, rank, conv_rank })
    }

    /// The rank-choice method.
    pub fn method(&self) -> ResizeMethod {
        self.method
    }

    /// Cap (and fixed rank) for linear modules.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Cap (and fixed rank) for conv modules (every 4-D `lora_down`, as sd-scripts does).
    pub fn conv_rank(&self) -> usize {
        self.conv_rank
    }
}

/// Chooses the new rank exactly as sd-scripts' `rank_resize` does.
///
/// `s` holds W's singular values in nonincreasing order (the nonzero ones suffice); `full_len` is
/// `min(m, n)`, the length of the full SVD's `S` (entries past `s.len()` count as 0). The dynamic
/// methods compute a 1-based count `k`, clamp it to `[1, full_len − 1]` and return `k + 1` (one
/// more singular value than the threshold asks for, sd-scripts' off-by-one kept for parity).
/// Then `S₀ ≤ 1e-6` forces rank 1, else the rank is capped at `cap`. Finally the rank is kept
/// within `full_len` (sd-scripts crashes in that case instead).
///
/// Comparisons follow torch: `sv_ratio` counts `S_i > S₀/p` (strict); the cumulative methods use
/// `searchsorted` (first index whose cumulative fraction is `≥ p`, or `≥ p²` for `sv_fro`).
pub fn choose_rank(s: &[f64], full_len: usize, method: ResizeMethod, cap: usize) -> usize {
    let full_len = full_len.max(s.len()).max(1);
    let s0 = s.first().copied().unwrap_or(0.0);
    let clamp_index = |index: usize| index.min(full_len - 1).max(1);
    let rank = match method {
        ResizeMethod::Fixed => cap,
        ResizeMethod::SvRatio(p) => {
            let min_sv = s0 / p;
            clamp_index(s.iter().filter(|&&x| x > min_sv).count()) + 1
        }
        ResizeMethod::SvCumulative(p) => clamp_index(searchsorted_cumulative(s.iter().copied(), p, full_len) + 1) + 1,
        ResizeMethod::SvFro(p) => {
            clamp_index(searchsorted_cumulative(s.iter().map(|x| x * x), p * p, full_len) + 1) + 1
        }
    };
    let rank = if s0 <= MIN_SV { 1 } else { rank.min(cap) };
    rank.clamp(1, full_len)
}

/// `torch.searchsorted(cumsum(v) / sum(v), target)`: the first index whose cumulative fraction is
/// `≥ target`; `full_len` if none (the zero tail keeps the fraction at its last value).
fn searchsorted_cumulative(values: impl Iterator<Item = f64> + Clone, target: f64, full_len: usize) -> usize {
    let total: f64 = values.clone().sum();
    let mut acc = 0.0;
    for (i, v) in values.enumerate() {
        acc += v;
        if acc / total >= target {
            return i;
        }
    }
    full_len
}

/// Exact SVD of a low-rank product `W = up·down` computed from its factors.
///
/// Holds W's leading `k = min(m, n, r)` singular values (nonincreasing) with orthonormal left and
/// right singular vectors; all other singular values of W are exactly 0.
#[derive(Debug, Clone)]
pub struct LowRankSvd {
    s: Vec<f64>,
    u: Mat<f64>,
    v: Mat<f64>,
}

impl LowRankSvd {
    /// Factor-space SVD of `up·down` with `up` row-major `rows×rank` and `down` row-major
    /// `rank×cols`: thin QR of `up` and `downᵀ`, SVD of the small core `Ra·Rbᵀ`.
    pub fn from_factors(up: &[f32], down: &[f32], rows: usize, rank: usize, cols: usize) -> Result<Self, ResizeError> {
        if rows == 0 || rank == 0 || cols == 0 {
            return Err(ResizeError::Shape(format!("empty factors ({rows}×{rank} · {rank}×{cols})")));
        }
        if up.len() != rows * rank || down.len() != rank * cols {
            return Err(ResizeError::Shape(format!(
                "factor data does not match {rows}×{rank} · {rank}×{cols} ({} and {} values)",
                up.len(),
                down.len()
            )));
        }
        if !up.iter().chain(down).all(|x| x.is_finite()) {
            return Err(ResizeError::NonFinite);
        }
        let qa = ThinQr::new(Mat::from_fn(rows, rank, |i, j| f64::from(up[i * rank + j])));
        let qb = ThinQr::new(Mat::from_fn(cols, rank, |i, j| f64::from(down[j * cols + i])));

        // core = Ra · Rbᵀ  (p×q, p = min(rows, rank), q = min(cols, rank))
        let (p, q) = (qa.r.nrows(), qb.r.nrows());
        let mut core = Mat::<f64>::zeros(p, q);
        matmul(core.as_mut(), Accum::Replace, qa.r.as_ref(), qb.r.as_ref().transpose(), 1.0, Par::Seq);

        let k = p.min(q);
        let mut s = Diag::<f64>::zeros(k);
        let mut uc = Mat::<f64>::zeros(p, k);
        let mut vc = Mat::<f64>::zeros(q, k);
        let mut mem = MemBuffer::new(svd_scratch::<f64>(
            p,
            q,
            ComputeSvdVectors::Thin,
            ComputeSvdVectors::Thin,
            Par::Seq,
            Default::default(),
        ));
        svd(
            core.as_ref(),
            s.as_mut(),
            Some(uc.as_mut()),
            Some(vc.as_mut()),
            Par::Seq,
            MemStack::new(&mut mem),
            Default::default(),
        )
        .map_err(|_| ResizeError::SvdNoConvergence)?;

        let s: Vec<f64> = (0..k).map(|i| s[i]).collect();
        if !s.iter().all(|x| x.is_finite()) {
            return Err(ResizeError::SvdNoConvergence);
        }
        Ok(Self { s, u: qa.apply_q(&uc), v: qb.apply_q(&vc) })
    }

    /// W's leading singular values, nonincreasing (at most `rank` of the factors).
    pub fn singular_values(&self) -> &[f64] {
        &self.s
    }

    /// `min(rows, cols)`: the length of `S` in a full SVD of W.
    pub fn full_len(&self) -> usize {
        self.u.nrows().min(self.v.nrows())
    }

    /// Rank-`rank` factors in sd-scripts' layout: `up = U[:, :rank]·diag(S[:rank])` (row-major
    /// `rows×rank`) and `down = Vᵀ[:rank]` (row-major `rank×cols`), as f32.
    ///
    /// Beyond the stored singular values the directions have singular value 0: their `up` columns
    /// are 0 and their `down` rows complete `V` to an orthonormal set. `None` if `rank` is 0 or
    /// above [`Self::full_len`].
    pub fn truncate(&self, rank: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        if rank == 0 || rank > self.full_len() {
            return None;
        }
        let (rows, cols) = (self.u.nrows(), self.v.nrows());
        let kept = rank.min(self.s.len());
        let mut up = vec![0f32; rows * rank];
        for i in 0..rows {
            for j in 0..kept {
                up[i * rank + j] = (self.u[(i, j)] * self.s[j]) as f32;
            }
        }
        // The kept stored vectors; padding (if any) is made orthogonal to them.
        let mut basis: Vec<Vec<f64>> = (0..kept).map(|j| (0..cols).map(|i| self.v[(i, j)]).collect()).collect();
        complete_orthonormal(&mut basis, cols, rank);
        let mut down = vec![0f32; rank * cols];
        for (j, row) in basis.iter().take(rank).enumerate() {
            for (dst, &x) in down[j * cols..(j + 1) * cols].iter_mut().zip(row) {
                *dst = x as f32;
            }
        }
        Some((up, down))
    }
}

/// Extends orthonormal vectors of length `n` to `target` vectors: each new one is the standard
/// basis vector least covered by the current span, orthogonalised twice (Gram–Schmidt) and normalised.
fn complete_orthonormal(basis: &mut Vec<Vec<f64>>, n: usize, target: usize) {
    while basis.len() < target {
        let mut residual = vec![1.0f64; n];
        for b in basis.iter() {
            for (r, x) in residual.iter_mut().zip(b) {
                *r -= x * x;
            }
        }
        let best = residual.iter().enumerate().fold(0, |best, (i, &r)| if r > residual[best] { i } else { best });
        let mut x = vec![0.0f64; n];
        x[best] = 1.0;
        for _ in 0..2 {
            for b in basis.iter() {
                let d: f64 = b.iter().zip(&x).map(|(a, c)| a * c).sum();
                for (xi, bi) in x.iter_mut().zip(b) {
                    *xi -= d * bi;
                }
            }
        }
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        x.iter_mut().for_each(|v| *v /= norm);
        basis.push(x);
    }
}

/// Thin Householder QR `A = Q·R` (`A` is `m×c`, `Q` is `m×min(m, c)`, `R` is `min(m, c)×c`).
struct ThinQr {
    basis: Mat<f64>,
    coeff: Mat<f64>,
    r: Mat<f64>,
}

impl ThinQr {
    fn new(mut a: Mat<f64>) -> Self {
        let (m, c) = a.shape();
        let size = m.min(c);
        let block = qr_factor::recommended_block_size::<f64>(m, c);
        let mut coeff = Mat::<f64>::zeros(block, size);
        let mut mem = MemBuffer::new(qr_factor::qr_in_place_scratch::<f64>(m, c, block, Par::Seq, Default::default()));
        qr_factor::qr_in_place(a.as_mut(), coeff.as_mut(), Par::Seq, MemStack::new(&mut mem), Default::default());
        // Same split as faer's `Qr`: unit lower trapezoid holds the reflectors, upper part is R.
        let r = Mat::from_fn(size, c, |i, j| if i <= j { a[(i, j)] } else { 0.0 });
        let basis = Mat::from_fn(m, size, |i, j| match i.cmp(&j) {
            std::cmp::Ordering::Greater => a[(i, j)],
            std::cmp::Ordering::Equal => 1.0,
            std::cmp::Ordering::Less => 0.0,
        });
        Self { basis, coeff, r }
    }

    /// `Q·X` for `X` with `min(m, c)` rows: pads X with zero rows to `m` and applies the reflectors.
    fn apply_q(&self, x: &Mat<f64>) -> Mat<f64> {
        let m = self.basis.nrows();
        let mut out = Mat::<f64>::zeros(m, x.ncols());
        out.as_mut().get_mut(..x.nrows(), ..).copy_from(x.as_ref());
        let mut mem = MemBuffer::new(apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
            m,
            self.coeff.nrows(),
            x.ncols(),
        ));
        apply_block_householder_sequence_on_the_left_in_place_with_conj(
            self.basis.as_ref(),
            self.coeff.as_ref(),
            Conj::No,
            out.as_mut(),
            Par::Seq,
            MemStack::new(&mut mem),
        );
        out
    }
}

/// One LoRA module to resize: row-major f32 tensors with their shapes, as stored in the file.
///
/// Linear: `down` is `(r, in)`, `up` is `(out, r)`. Conv: `down` is `(r, in, kh, kw)`, `up` is
/// `(out, r, 1, 1)`; `down` is flattened to `(r, in·kh·kw)` as sd-scripts does.
#[derive(Debug, Clone, Copy)]
pub struct ModuleWeights<'a> {
    /// Module name (key prefix before `.lora_down`), used in the report and errors.
    pub name: &'a str,
    /// `lora_up` data.
    pub up: &'a [f32],
    /// `lora_up` shape.
    pub up_shape: &'a [usize],
    /// `lora_down` data.
    pub down: &'a [f32],
    /// `lora_down` shape.
    pub down_shape: &'a [usize],
    /// The stored alpha; `None` means scale 1 (sd-scripts' rule for a missing alpha).
    pub alpha: Option<f32>,
}

/// Retention numbers sd-scripts prints for each module.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizeStats {
    /// `Σ S[:rank] / Σ S`.
    pub sum_retained: f64,
    /// `‖S[:rank]‖ / ‖S‖` (Frobenius norm retained).
    pub fro_retained: f64,
    /// `S₀ / S[rank−1]` (infinite when the last kept value is an exact 0).
    pub max_ratio: f64,
}

/// A resized module in sd-scripts' layout (same tensor ranks as the input).
#[derive(Debug, Clone, PartialEq)]
pub struct ResizedModule {
    /// Module name, copied from the input.
    pub name: String,
    /// Rank of the input factors.
    pub old_rank: usize,
    /// Chosen rank.
    pub rank: usize,
    /// New alpha = `(alpha / old_rank) · rank`, computed in f32 as torch does, so the effective
    /// scale alpha/rank is unchanged.
    pub alpha: f64,
    /// New `lora_up` = `U·diag(S)`, row-major.
    pub up: Vec<f32>,
    /// Shape of `up`: `(out, rank)` or `(out, rank, 1, 1)`.
    pub up_shape: Vec<usize>,
    /// New `lora_down` = `Vᵀ`, row-major.
    pub down: Vec<f32>,
    /// Shape of `down`: `(rank, in)` or `(rank, in, kh, kw)`.
    pub down_shape: Vec<usize>,
    /// Retention statistics for the report.
    pub stats: ResizeStats,
}

/// Resizes one module: factor-space SVD, sd-scripts rank choice (cap = conv rank for 4-D
/// `lora_down`, as sd-scripts does for every conv), new alpha and stats.
pub fn resize_module(module: &ModuleWeights<'_>, settings: &ResizeSettings) -> Result<ResizedModule, ResizeError> {
    resize_module_inner(module, settings)
        .map_err(|e| ResizeError::Module { module: module.name.to_string(), source: Box::new(e) })
}

fn resize_module_inner(module: &ModuleWeights<'_>, settings: &ResizeSettings) -> Result<ResizedModule, ResizeError> {
    let (old_rank, rows, cols, conv) = module_dims(module)?;
    if let Some(alpha) = module.alpha {
        if !alpha.is_finite() {
            return Err(ResizeError::Shape(format!("alpha is {alpha}")));
        }
    }
    let cap = if conv { settings.conv_rank } else { settings.rank };
    let svd = LowRankSvd::from_factors(module.up, module.down, rows, old_rank, cols)?;
    let s = svd.singular_values();
    let rank = choose_rank(s, svd.full_len(), settings.method, cap);
    let (up, down) =
        svd.truncate(rank).ok_or_else(|| ResizeError::Shape(format!("rank {rank} outside 1..={}", svd.full_len())))?;

    // torch: scale = alpha_f32 / old_rank (f32 tensor); new_alpha = float(scale * new_rank).
    let alpha = match module.alpha {
        Some(a) => f64::from((a / old_rank as f32) * rank as f32),
        None => rank as f64,
    };

    let s_at = |i: usize| s.get(i).copied().unwrap_or(0.0);
    let total: f64 = s.iter().map(|x| x.abs()).sum();
    let kept: f64 = s.iter().take(rank).map(|x| x.abs()).sum();
    let fro: f64 = s.iter().map(|x| x * x).sum::<f64>().sqrt();
    let kept_fro: f64 = s.iter().take(rank).map(|x| x * x).sum::<f64>().sqrt();
    let stats =
        ResizeStats { sum_retained: kept / total, fro_retained: kept_fro / fro, max_ratio: s_at(0) / s_at(rank - 1) };

    let mut up_shape = vec![rows, rank];
    let mut down_shape = vec![rank, module.down_shape[1]];
    if conv {
        up_shape.extend([1, 1]);
        down_shape.extend_from_slice(&module.down_shape[2..]);
    }
    Ok(ResizedModule { name: module.name.to_string(), old_rank, rank, alpha, up, up_shape, down, down_shape, stats })
}

/// Checks shapes and returns `(old_rank, rows, flattened cols, is_conv)`.
fn module_dims(m: &ModuleWeights<'_>) -> Result<(usize, usize, usize, bool), ResizeError> {
    let bad =
        |what: &str| Err(ResizeError::Shape(format!("{what}: lora_up {:?}, lora_down {:?}", m.up_shape, m.down_shape)));
    let conv = match (m.down_shape.len(), m.up_shape.len()) {
        (2, 2) => false,
        (4, 4) => true,
        _ => return bad("expected 2-D (linear) or 4-D (conv) lora_up and lora_down"),
    };
    let old_rank = m.down_shape[0];
    let rows = m.up_shape[0];
    if m.up_shape[1] != old_rank {
        return bad("up/down rank mismatch");
    }
    if conv && (m.up_shape[2] != 1 || m.up_shape[3] != 1) {
        return bad("conv lora_up must be (out, rank, 1, 1)");
    }
    let cols: usize = m.down_shape[1..].iter().product();
    if old_rank == 0 || rows == 0 || cols == 0 {
        return bad("empty dimension");
    }
    if m.up.len() != rows * old_rank || m.down.len() != old_rank * cols {
        return Err(ResizeError::Shape(format!(
            "data length does not match shape: lora_up {:?} has {} values, lora_down {:?} has {}",
            m.up_shape,
            m.up.len(),
            m.down_shape,
            m.down.len()
        )));
    }
    Ok((old_rank, rows, cols, conv))
}

/// Resizes every module in parallel (rayon); the output keeps the input order. Fails with the
/// first failing module in input order.
pub fn resize_modules(
    modules: &[ModuleWeights<'_>],
    settings: &ResizeSettings,
) -> Result<Vec<ResizedModule>, ResizeError> {
    modules.par_iter().map(|m| resize_module(m, settings)).collect()
}

/// One line of sd-scripts' `--verbose` report, formatted exactly as it prints it, e.g.
/// `name(padded to 75) | sum(S) retained: 94.3%, fro retained: 99.8%, max(S) ratio: 4.2`
/// followed by `, dynamic | dim: 2, alpha: 1.0` for dynamic methods (no trailing newline).
pub fn verbose_line(module: &ResizedModule, method: ResizeMethod) -> String {
    let mut line = format!(
        "{:75} | sum(S) retained: {}, fro retained: {}, max(S) ratio: {}",
        module.name,
        py_percent(module.stats.sum_retained, 1),
        py_percent(module.stats.fro_retained, 1),
        py_fixed(module.stats.max_ratio, 1),
    );
    if method.dynamic_name().is_some() {
        line.push_str(&format!(", dynamic | dim: {}, alpha: {}", module.rank, py_float_repr(module.alpha)));
    }
    line
}

/// sd-scripts' closing report line: `Average Frobenius norm retention: 98.40% | std: 0.015`
/// (mean and population std of the Frobenius retention over modules, NaNs skipped).
pub fn average_fro_line(modules: &[ResizedModule]) -> String {
    let fro: Vec<f64> = modules.iter().map(|m| m.stats.fro_retained).filter(|x| !x.is_nan()).collect();
    let n = fro.len() as f64;
    let mean = fro.iter().sum::<f64>() / n;
    let std = (fro.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
    format!("Average Frobenius norm retention: {} | std: {}", py_percent(mean, 2), py_fixed(std, 3))
}

/// The metadata entries sd-scripts rewrites after a resize, as `(key, value)` pairs to insert
/// (other metadata is kept as is; the sshs hashes are recomputed by the writer).
///
/// * `ss_training_comment`: `dimension is resized from {max_old_rank} to {rank}[ (conv: {conv_rank})]; {old}`
///   or `Dynamic resize with {method}: {param} from {max_old_rank}; {old}`;
/// * `ss_network_dim`: the rank, or `Dynamic`;
/// * `ss_network_alpha`: the alpha of the **last** module in file order (`modules.last()`), or
///   `Dynamic`. Values are printed as Python would (`4.0`, `None` when there are no modules).
pub fn metadata_updates(
    settings: &ResizeSettings,
    modules: &[ResizedModule],
    old_comment: Option<&str>,
) -> Vec<(String, String)> {
    let max_old_rank = modules.iter().map(|m| m.old_rank).max().map_or("None".to_string(), |r| r.to_string());
    let comment = old_comment.unwrap_or("");
    let (comment, dim, alpha) = match (settings.method.dynamic_name(), settings.method.param()) {
        (Some(name), Some(param)) => (
            format!("Dynamic resize with {name}: {} from {max_old_rank}; {comment}", py_float_repr(param)),
            "Dynamic".to_string(),
            "Dynamic".to_string(),
        ),
        _ => {
            let conv = if settings.rank == settings.conv_rank {
                String::new()
            } else {
                format!(" (conv: {})", settings.conv_rank)
            };
            (
                format!("dimension is resized from {max_old_rank} to {}{conv}; {comment}", settings.rank),
                settings.rank.to_string(),
                modules.last().map_or("None".to_string(), |m| py_float_repr(m.alpha)),
            )
        }
    };
    vec![
        ("ss_training_comment".to_string(), comment),
        ("ss_network_dim".to_string(), dim),
        ("ss_network_alpha".to_string(), alpha),
    ]
}

/// Python's `format(x, '.{p}f')` (Rust's fixed formatting already rounds half-to-even on the exact
/// binary value like Python; only the non-finite spellings differ).
fn py_fixed(x: f64, precision: usize) -> String {
    if x.is_nan() {
        "nan".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.to_string()
    } else {
        format!("{x:.precision$}")
    }
}

/// Python's `format(x, '.{p}%')`: `x·100` (a float multiply, as CPython does) in fixed notation plus `%`.
fn py_percent(x: f64, precision: usize) -> String {
    format!("{}%", py_fixed(x * 100.0, precision))
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// `[-4, 16)` (with a trailing `.0` for integers), otherwise `1.5e-05` / `1e+16` style.
fn py_float_repr(x: f64) -> String {
    if !x.is_finite() {
        return py_fixed(x, 0);
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() { first.to_string() } else { format!("{first}.{rest}") };
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift values in [-1, 1).
    fn random(seed: u64, len: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn product(up: &[f32], down: &[f32], m: usize, r: usize, n: usize) -> Vec<f64> {
        let mut w = vec![0.0f64; m * n];
        for i in 0..m {
            for k in 0..r {
                let a = f64::from(up[i * r + k]);
                for j in 0..n {
                    w[i * n + j] += a * f64::from(down[k * n + j]);
                }
            }
        }
        w
    }

    fn rel_err(a: &[f64], b: &[f64]) -> f64 {
        let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
        let norm: f64 = b.iter().map(|y| y * y).sum();
        (diff / norm).sqrt()
    }

    /// `up = P·diag(s)`, `down = Q` with P, Q made of distinct standard basis vectors, so W's
    /// singular values are exactly `s`.
    fn known(s: &[f32], m: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let r = s.len();
        let mut up = vec![0f32; m * r];
        let mut down = vec![0f32; r * n];
        for (k, &sv) in s.iter().enumerate() {
            up[((3 * k + 1) % m) * r + k] = sv;
            down[k * n + (5 * k + 2) % n] = 1.0;
        }
        (up, down)
    }

    fn settings(method: ResizeMethod, rank: usize) -> ResizeSettings {
        ResizeSettings::new(method, rank, None).unwrap()
    }

    #[test]
    fn fixed_rank_is_the_cap_within_full_len() {
        assert_eq!(choose_rank(&[3.0, 2.0, 1.0], 10, ResizeMethod::Fixed, 4), 4);
        assert_eq!(choose_rank(&[3.0, 2.0, 1.0], 10, ResizeMethod::Fixed, 2), 2);
        // No cap at the old rank (resizing up pads with zero directions) but never above min(m, n).
        assert_eq!(choose_rank(&[3.0, 2.0, 1.0], 3, ResizeMethod::Fixed, 8), 3);
    }

    #[test]
    fn sv_ratio_counts_strictly_greater_and_adds_one() {
        let s = [8.0, 4.0, 2.0, 1.0];
        // threshold 4: only 8 > 4 → k = 1 → rank 2 (the tie at 4 is not counted).
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvRatio(2.0), 8), 2);
        // threshold 2: 8, 4 → rank 3.
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvRatio(4.0), 8), 3);
        // all four count → rank 5: one direction beyond the nonzero ones, as sd-scripts does.
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvRatio(1000.0), 8), 5);
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvRatio(1000.0), 3), 3);
        // k is clamped to full_len − 1 before the +1.
        assert_eq!(choose_rank(&s, 4, ResizeMethod::SvRatio(1000.0), 8), 4);
    }

    #[test]
    fn sv_cumulative_uses_searchsorted_left() {
        let s = [5.0, 3.0, 2.0]; // cumulative fractions 0.5, 0.8, 1.0
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvCumulative(0.5), 8), 2);
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvCumulative(0.51), 8), 3);
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvCumulative(0.8), 8), 3);
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvCumulative(0.81), 8), 4);
        assert_eq!(choose_rank(&s, 3, ResizeMethod::SvCumulative(0.81), 8), 3);
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvCumulative(0.81), 2), 2);
        // The minimum dynamic rank is 2 (k clamped to at least 1).
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvCumulative(0.1), 8), 2);
    }

    #[test]
    fn sv_fro_compares_squared_fractions_with_p_squared() {
        let s = [4.0, 2.0, 2.0, 1.0]; // squared fractions 0.64, 0.8, 0.96, 1.0
                                      // 0.8 * 0.8 = 0.6400000000000001 > 0.64 in f64, so index 1 → k 2 → rank 3.
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvFro(0.8), 8), 3);
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvFro(0.9), 8), 4);
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvFro(0.5), 8), 2);
        assert_eq!(choose_rank(&s, 10, ResizeMethod::SvFro(0.99), 8), 5);
    }

    #[test]
    fn zero_matrix_and_tiny_modules_get_rank_one() {
        for method in [ResizeMethod::Fixed, ResizeMethod::SvFro(0.9), ResizeMethod::SvRatio(4.0)] {
            assert_eq!(choose_rank(&[1e-7, 1e-8], 10, method, 8), 1);
            assert_eq!(choose_rank(&[MIN_SV], 10, method, 8), 1);
            assert_eq!(choose_rank(&[], 10, method, 8), 1);
            // min(m, n) = 1: the +1 rule would ask for 2, more than exists.
            assert_eq!(choose_rank(&[2.0], 1, method, 8), 1);
        }
        assert_eq!(choose_rank(&[2e-6], 10, ResizeMethod::SvFro(0.9), 8), 2);
    }

    #[test]
    fn param_validation_names_the_flag() {
        assert_eq!(ResizeMethod::from_flags(None, None), Ok(ResizeMethod::Fixed));
        assert_eq!(ResizeMethod::from_flags(Some("sv_ratio"), Some(2.0)), Ok(ResizeMethod::SvRatio(2.0)));
        assert_eq!(ResizeMethod::from_flags(Some("sv_fro"), Some(0.9)), Ok(ResizeMethod::SvFro(0.9)));
        assert_eq!(ResizeMethod::from_flags(Some("sv_cumulative"), Some(0.5)), Ok(ResizeMethod::SvCumulative(0.5)));
        for (method, bad) in [
            ("sv_ratio", 1.5),
            ("sv_ratio", f64::INFINITY),
            ("sv_ratio", f64::NAN),
            ("sv_fro", 0.0),
            ("sv_fro", 1.0),
            ("sv_cumulative", -0.1),
            ("sv_cumulative", f64::NAN),
        ] {
            let err = ResizeMethod::from_flags(Some(method), Some(bad)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("--param") && text.contains(method), "{text}");
        }
        let err = ResizeMethod::from_flags(Some("sv_fro"), None).unwrap_err().to_string();
        assert!(err.contains("--dynamic sv_fro needs --param"), "{err}");
        let err = ResizeMethod::from_flags(Some("svd"), Some(0.5)).unwrap_err().to_string();
        assert!(err.contains("unknown --dynamic method `svd`"), "{err}");
        let err = ResizeMethod::from_flags(None, Some(0.5)).unwrap_err().to_string();
        assert!(err.contains("--param 0.5 has no effect"), "{err}");
        assert!(ResizeMethod::SvFro(1.2).validate().is_err());
        assert_eq!(ResizeSettings::new(ResizeMethod::Fixed, 0, None), Err(ResizeError::ZeroRank { flag: "--rank" }));
        assert_eq!(
            ResizeSettings::new(ResizeMethod::Fixed, 4, Some(0)),
            Err(ResizeError::ZeroRank { flag: "--conv-rank" })
        );
        assert_eq!(ResizeSettings::new(ResizeMethod::Fixed, 4, None).unwrap().conv_rank(), 4);
    }

    #[test]
    fn factor_svd_recovers_known_singular_values() {
        let (up, down) = known(&[1.0, 5.0, 3.0], 7, 11);
        let svd = LowRankSvd::from_factors(&up, &down, 7, 3, 11).unwrap();
        let s = svd.singular_values();
        for (got, want) in s.iter().zip([5.0, 3.0, 1.0]) {
            assert!((got - want).abs() < 1e-12, "{s:?}");
        }
        assert_eq!(svd.full_len(), 7);
    }

    #[test]
    fn factor_svd_matches_dense_svd() {
        // (rows, rank, cols): tall, wide, rank above min(m, n), square.
        for (seed, (m, r, n)) in
            [(40, 6, 25), (12, 4, 60), (5, 8, 20), (16, 16, 16), (30, 1, 9)].into_iter().enumerate()
        {
            let up = random(seed as u64 + 1, m * r);
            let down = random(seed as u64 + 100, r * n);
            let w = product(&up, &down, m, r, n);
            let dense = Mat::from_fn(m, n, |i, j| w[i * n + j]).thin_svd().unwrap();
            let svd = LowRankSvd::from_factors(&up, &down, m, r, n).unwrap();
            let s = svd.singular_values();
            assert_eq!(s.len(), r.min(m).min(n));
            for (i, &sv) in s.iter().enumerate() {
                assert!((sv - dense.S()[i]).abs() <= 1e-12 * dense.S()[0], "{m}x{n} r{r}: S[{i}] {sv}");
            }
            // Full rank reproduces W; truncation matches the dense truncated SVD.
            let full = s.len();
            let (u1, d1) = svd.truncate(full).unwrap();
            assert!(rel_err(&product(&u1, &d1, m, full, n), &w) < 1e-6);
            let t = (full / 2).max(1);
            let (ut, dt) = svd.truncate(t).unwrap();
            let mut dense_t = vec![0.0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    dense_t[i * n + j] = (0..t).map(|k| dense.U()[(i, k)] * dense.S()[k] * dense.V()[(j, k)]).sum();
                }
            }
            assert!(rel_err(&product(&ut, &dt, m, t, n), &dense_t) < 1e-6, "{m}x{n} r{r} t{t}");
        }
    }

    #[test]
    fn rank_deficient_factors_and_padding_keep_down_orthonormal() {
        // A zero column in up: W has rank 2 although the factors have rank 3.
        let (m, r, n) = (9, 3, 7);
        let mut up = random(7, m * r);
        for i in 0..m {
            up[i * r + 1] = 0.0;
        }
        let down = random(8, r * n);
        let svd = LowRankSvd::from_factors(&up, &down, m, r, n).unwrap();
        assert!(svd.singular_values()[2].abs() < 1e-12);
        let (u, d) = svd.truncate(6).unwrap();
        assert!(rel_err(&product(&u, &d, m, 6, n), &product(&up, &down, m, r, n)) < 1e-6);
        for a in 0..6 {
            for b in 0..6 {
                let dot: f64 = (0..n).map(|j| f64::from(d[a * n + j]) * f64::from(d[b * n + j])).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-6, "rows {a},{b}: {dot}");
            }
        }
        // Directions past the stored singular values carry no weight.
        assert!((0..m).all(|i| (3..6).all(|k| u[i * 6 + k] == 0.0)));
        assert!(svd.truncate(0).is_none());
        assert!(svd.truncate(8).is_none());
    }

    #[test]
    fn conv_modules_are_flattened_and_reshaped_back() {
        let (out, r, cin, k) = (6, 4, 3, 3);
        let up = random(11, out * r);
        let down = random(12, r * cin * k * k);
        let module = ModuleWeights {
            name: "lora_unet_conv",
            up: &up,
            up_shape: &[out, r, 1, 1],
            down: &down,
            down_shape: &[r, cin, k, k],
            alpha: Some(2.0),
        };
        // Conv modules use the conv cap; keeping the full rank reproduces the kernel exactly.
        let s = ResizeSettings::new(ResizeMethod::Fixed, 2, Some(4)).unwrap();
        let resized = resize_module(&module, &s).unwrap();
        assert_eq!(resized.rank, 4);
        assert_eq!(resized.up_shape, vec![out, 4, 1, 1]);
        assert_eq!(resized.down_shape, vec![4, cin, k, k]);
        let n = cin * k * k;
        let original = product(&up, &down, out, r, n);
        assert!(rel_err(&product(&resized.up, &resized.down, out, 4, n), &original) < 1e-6);
        assert_eq!(resized.alpha, 2.0);

        // Same data seen as a linear module gives the same factors.
        let linear = ModuleWeights { up_shape: &[out, r], down_shape: &[r, n], ..module };
        let as_linear = resize_module(&linear, &ResizeSettings::new(ResizeMethod::Fixed, 4, None).unwrap()).unwrap();
        assert_eq!(as_linear.up, resized.up);
        assert_eq!(as_linear.down, resized.down);

        // Truncated: conv cap 2, alpha scaled as torch does it: (2 / 4) · 2 = 1.
        let s = ResizeSettings::new(ResizeMethod::Fixed, 8, Some(2)).unwrap();
        let resized = resize_module(&module, &s).unwrap();
        assert_eq!((resized.rank, resized.alpha), (2, 1.0));
        assert_eq!(resized.down_shape, vec![2, cin, k, k]);
    }

    #[test]
    fn dynamic_resize_of_known_spectrum() {
        // squared fractions of [4, 2, 2, 1]: 0.64, 0.8, 0.96, 1.0 → sv_fro 0.9 keeps 3 + 1 = 4.
        let (up, down) = known(&[4.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0], 20, 30);
        let module = ModuleWeights {
            name: "m",
            up: &up,
            up_shape: &[20, 8],
            down: &down,
            down_shape: &[8, 30],
            alpha: Some(4.0),
        };
        let resized = resize_module(&module, &settings(ResizeMethod::SvFro(0.9), 8)).unwrap();
        assert_eq!(resized.rank, 4);
        assert_eq!(resized.alpha, 2.0);
        assert!((resized.stats.sum_retained - 1.0).abs() < 1e-12);
        assert!((resized.stats.max_ratio - 4.0).abs() < 1e-12);
        let resized = resize_module(&module, &settings(ResizeMethod::SvRatio(3.0), 8)).unwrap();
        assert_eq!(resized.rank, 4); // 4, 2, 2 > 4/3 → k 3 → 4
        let resized = resize_module(&module, &settings(ResizeMethod::SvCumulative(0.5), 8)).unwrap();
        assert_eq!(resized.rank, 3); // fractions 4/9 < 0.5 ≤ 6/9 → index 1 → k 2 → rank 3
    }

    #[test]
    fn padding_beyond_the_nonzero_spectrum_reports_infinite_ratio() {
        let (up, down) = known(&[3.0, 1.0], 10, 12);
        let module = ModuleWeights {
            name: "lora_te_text_model_encoder_layers_0_mlp_fc1",
            up: &up,
            up_shape: &[10, 2],
            down: &down,
            down_shape: &[2, 12],
            alpha: None,
        };
        let resized = resize_module(&module, &settings(ResizeMethod::Fixed, 4)).unwrap();
        assert_eq!((resized.rank, resized.alpha), (4, 4.0));
        assert!(resized.stats.max_ratio.is_infinite());
        assert_eq!(
            verbose_line(&resized, ResizeMethod::Fixed),
            "lora_te_text_model_encoder_layers_0_mlp_fc1                                 | \
             sum(S) retained: 100.0%, fro retained: 100.0%, max(S) ratio: inf"
        );
    }

    #[test]
    fn verbose_and_average_lines_match_sd_scripts_format() {
        let module = |name: &str, fro: f64| ResizedModule {
            name: name.to_string(),
            old_rank: 8,
            rank: 3,
            alpha: 1.5,
            up: vec![],
            up_shape: vec![],
            down: vec![],
            down_shape: vec![],
            stats: ResizeStats { sum_retained: 0.8693, fro_retained: fro, max_ratio: 3.75 },
        };
        let a = module("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2", 0.9914);
        assert_eq!(
            verbose_line(&a, ResizeMethod::SvFro(0.9)),
            "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2            | \
             sum(S) retained: 86.9%, fro retained: 99.1%, max(S) ratio: 3.8, dynamic | dim: 3, alpha: 1.5"
        );
        let b = module("x", 0.9714);
        let c = module("y", f64::NAN);
        // mean 0.9814, population std 0.01
        assert_eq!(average_fro_line(&[a, b, c]), "Average Frobenius norm retention: 98.14% | std: 0.010");
    }

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (4.0, "4.0"),
            (1.5, "1.5"),
            (0.9, "0.9"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::from(1.0f32 / 3.0), "0.3333333432674408"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (2.5e-7, "2.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456.0, "123456.0"),
            (-2.0, "-2.0"),
            (0.0, "0.0"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(py_float_repr(x), want);
        }
        assert_eq!(py_percent(0.99825, 1), "99.8%");
        assert_eq!(py_percent(f64::NAN, 1), "nan%");
    }

    #[test]
    fn metadata_updates_follow_sd_scripts() {
        let resized = |alpha: f64, old_rank: usize| ResizedModule {
            name: String::new(),
            old_rank,
            rank: 4,
            alpha,
            up: vec![],
            up_shape: vec![],
            down: vec![],
            down_shape: vec![],
            stats: ResizeStats { sum_retained: 1.0, fro_retained: 1.0, max_ratio: 1.0 },
        };
        let modules = [resized(2.0, 16), resized(4.0, 8)];
        let fixed = ResizeSettings::new(ResizeMethod::Fixed, 4, None).unwrap();
        assert_eq!(
            metadata_updates(&fixed, &modules, Some("trained on cats")),
            vec![
                ("ss_training_comment".into(), "dimension is resized from 16 to 4; trained on cats".into()),
                ("ss_network_dim".into(), "4".into()),
                ("ss_network_alpha".into(), "4.0".into()),
            ]
        );
        let conv = ResizeSettings::new(ResizeMethod::Fixed, 4, Some(2)).unwrap();
        assert_eq!(metadata_updates(&conv, &modules, None)[0].1, "dimension is resized from 16 to 4 (conv: 2); ");
        assert_eq!(metadata_updates(&conv, &[], None)[2].1, "None");
        let dynamic = ResizeSettings::new(ResizeMethod::SvFro(0.9), 8, None).unwrap();
        assert_eq!(
            metadata_updates(&dynamic, &modules, None),
            vec![
                ("ss_training_comment".into(), "Dynamic resize with sv_fro: 0.9 from 16; ".into()),
                ("ss_network_dim".into(), "Dynamic".into()),
                ("ss_network_alpha".into(), "Dynamic".into()),
            ]
        );
    }

    #[test]
    fn bad_modules_are_errors_naming_the_module() {
        let up = random(1, 12);
        let down = random(2, 12);
        let base = ModuleWeights {
            name: "lora_unet_bad",
            up: &up,
            up_shape: &[4, 3],
            down: &down,
            down_shape: &[3, 4],
            alpha: Some(1.0),
        };
        let s = settings(ResizeMethod::Fixed, 2);
        assert!(resize_module(&base, &s).is_ok());
        let nan = [f32::NAN; 12];
        let cases = [
            ModuleWeights { up_shape: &[4, 2], ..base },
            ModuleWeights { up_shape: &[3, 4], down_shape: &[4, 3], up: &up[..11], ..base },
            ModuleWeights { down_shape: &[3, 4, 1, 1], ..base },
            ModuleWeights { up_shape: &[2, 3, 2, 1], down_shape: &[3, 4, 1, 1], ..base },
            ModuleWeights { down: &nan, ..base },
            ModuleWeights { alpha: Some(f32::NAN), ..base },
            ModuleWeights { up_shape: &[0, 3], up: &[], ..base },
        ];
        for case in cases {
            let err = resize_module(&case, &s).unwrap_err().to_string();
            assert!(err.starts_with("module lora_unet_bad: "), "{err}");
        }
        let ok = resize_module(&base, &s).unwrap();
        let list = resize_modules(&[base, ModuleWeights { name: "second", ..base }], &s).unwrap();
        assert_eq!(list[0], ok);
        assert_eq!(list[1].name, "second");
        let err = resize_modules(&[base, ModuleWeights { down: &nan, name: "broken", ..base }], &s).unwrap_err();
        assert!(err.to_string().starts_with("module broken: weights contain NaN"), "{err}");
    }
}
