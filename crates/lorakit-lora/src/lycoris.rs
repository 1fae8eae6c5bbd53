//! LyCORIS LoHa and LoKr modules (kohya module names, `hada_*` / `lokr_*` tensors) and the
//! size of the weight change each makes, as A1111, Forge and ComfyUI apply them:
//!
//! - LoHa: `ΔW = (w1_a · w1_b) ⊙ (w2_a · w2_b) · alpha / rank`, rank = rows of `hada_w1_b`;
//! - LoKr: `ΔW = (w1 ⊗ w2) · alpha / rank`, each factor stored whole (`lokr_w1`) or as a product
//!   (`lokr_w1_a · lokr_w1_b`), rank = rows of `lokr_w1_b` or else `lokr_w2_b`; with both
//!   factors whole the scale is 1.
//!
//! Norms are taken without building ΔW: a Hadamard product of two rank-r products is one
//! product of rank r₁·r₂ (row-wise Khatri–Rao factors), and ‖A ⊗ B‖ = ‖A‖·‖B‖.

use std::collections::BTreeMap;

use crate::inspect::product_norm;
use crate::keys::{component_of, Component, ModuleError};
use crate::safetensors_file::LoraFile;

/// Which LyCORIS algorithm a module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LycorisKind {
    /// Hadamard product of two low-rank products.
    LoHa,
    /// Kronecker product of two factors.
    LoKr,
}

impl std::fmt::Display for LycorisKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LycorisKind::LoHa => "LoHa",
            LycorisKind::LoKr => "LoKr",
        })
    }
}

/// One LoHa or LoKr module: its tensors by role (`w1_a`, `w1_b`, `w1`, `w2_a`, `w2_b`, `w2`,
/// `t1`, `t2`, `alpha`) and the numbers inspect shows.
#[derive(Debug, Clone)]
pub struct LycorisModule {
    /// Key without suffix, e.g. `lora_unet_mid_block_attentions_0_proj_in`.
    pub name: String,
    /// Network it adapts.
    pub component: Component,
    /// LoHa or LoKr.
    pub kind: LycorisKind,
    /// Output features of ΔW.
    pub out_features: usize,
    /// Input features of ΔW (convs: in_channels × kh × kw).
    pub in_features: usize,
    /// The rank the scale divides by; `None` for LoKr with both factors whole.
    pub rank: Option<usize>,
    /// The stored alpha (missing or 0: the rank).
    pub alpha: f32,
    /// Uses LyCORIS' Tucker form (`hada_t1`/`hada_t2`, `lokr_t2`).
    pub tucker: bool,
    tensors: BTreeMap<&'static str, String>,
}

impl LycorisModule {
    /// The factor applied to the product: `alpha / rank`, or 1 without a rank.
    pub fn scale(&self) -> f32 {
        self.rank.map_or(1.0, |r| self.alpha / r as f32)
    }

    /// ‖ΔW‖_F (NaN when a tensor holds NaN/Inf or the module uses the Tucker form).
    pub fn norm(&self, file: &LoraFile) -> f64 {
        if self.tucker {
            return f64::NAN;
        }
        let result = match self.kind {
            LycorisKind::LoHa => self.loha_norm(file),
            LycorisKind::LoKr => self.lokr_norm(file),
        };
        result.map_or(f64::NAN, |n| n * f64::from(self.scale()))
    }

    /// The dense weight change, scale applied, as (out, in·k·k) row-major — what a loader adds
    /// to the layer's weight. `None` for the Tucker form or factors whose shapes do not chain.
    pub fn delta_weight(&self, file: &LoraFile) -> Option<Vec<f32>> {
        if self.tucker {
            return None;
        }
        let (out, inn) = (self.out_features, self.in_features);
        let mut delta = match self.kind {
            LycorisKind::LoHa => {
                let (w1, _) = self.product(file, "w1_a", "w1_b")?;
                let (w2, _) = self.product(file, "w2_a", "w2_b")?;
                if w1.len() != out * inn || w2.len() != out * inn {
                    return None;
                }
                w1.iter().zip(&w2).map(|(a, b)| a * b).collect::<Vec<f32>>()
            }
            LycorisKind::LoKr => {
                let (w1, (a, b)) = self.lokr_factor(file, "w1")?;
                let (w2, (c, d)) = self.lokr_factor(file, "w2")?;
                if a * c != out || b * d != inn {
                    return None;
                }
                // kron(w1, w2)[(i·c + p), (j·d + q)] = w1[i, j] · w2[p, q] (w2's kernel taps
                // stay inside q, as torch.kron of w1[..., None, None] with a 4-D w2 leaves them).
                let mut delta = vec![0f32; out * inn];
                for i in 0..a {
                    for p in 0..c {
                        let row = &mut delta[(i * c + p) * inn..(i * c + p + 1) * inn];
                        for j in 0..b {
                            let w = w1[i * b + j];
                            for (dst, &v) in row[j * d..(j + 1) * d].iter_mut().zip(&w2[p * d..(p + 1) * d]) {
                                *dst = w * v;
                            }
                        }
                    }
                }
                delta
            }
        };
        let scale = self.scale();
        if scale != 1.0 {
            delta.iter_mut().for_each(|v| *v *= scale);
        }
        Some(delta)
    }

    /// Two stored factors `a` (rows × rank) and `b` (rank × …, flattened past its first axis)
    /// with their (rows, rank, cols), when their shapes chain.
    fn factors(&self, file: &LoraFile, a: &str, b: &str) -> Option<Factors> {
        let (a, sa) = self.tensor(file, a)?;
        let (b, sb) = self.tensor(file, b)?;
        let (rows, rank) = (sa.first().copied()?, sa.get(1).copied()?);
        let cols: usize = sb.iter().skip(1).product();
        (sb.first() == Some(&rank) && a.len() == rows * rank && b.len() == rank * cols).then_some(Factors {
            a,
            b,
            rows,
            rank,
            cols,
        })
    }

    /// `a · b` of two stored factors, row-major, with its (rows, cols).
    fn product(&self, file: &LoraFile, a: &str, b: &str) -> Option<(Vec<f32>, (usize, usize))> {
        let Factors { a, b, rows, rank, cols } = self.factors(file, a, b)?;
        let mut out = vec![0f32; rows * cols];
        for (i, row) in out.chunks_exact_mut(cols).enumerate() {
            for r in 0..rank {
                let x = a[i * rank + r];
                for (dst, &v) in row.iter_mut().zip(&b[r * cols..(r + 1) * cols]) {
                    *dst += x * v;
                }
            }
        }
        Some((out, (rows, cols)))
    }

    /// A LoKr factor (`w1` or `w2`), whole or as the product of its two parts, with its
    /// (rows, columns) — columns flattened past the first axis.
    fn lokr_factor(&self, file: &LoraFile, factor: &str) -> Option<(Vec<f32>, (usize, usize))> {
        if let Some((w, shape)) = self.tensor(file, factor) {
            let rows = shape.first().copied()?;
            let cols = shape.iter().skip(1).product();
            return (w.len() == rows * cols).then_some((w, (rows, cols)));
        }
        self.product(file, &format!("{factor}_a"), &format!("{factor}_b"))
    }

    fn tensor(&self, file: &LoraFile, role: &str) -> Option<(Vec<f32>, Vec<usize>)> {
        let key = self.tensors.get(role)?;
        Some((file.tensor_f32(key).ok()?, file.info(key)?.shape.clone()))
    }

    fn loha_norm(&self, file: &LoraFile) -> Option<f64> {
        let (a1, sa1) = self.tensor(file, "w1_a")?;
        let (b1, sb1) = self.tensor(file, "w1_b")?;
        let (a2, sa2) = self.tensor(file, "w2_a")?;
        let (b2, sb2) = self.tensor(file, "w2_b")?;
        let (out, inn) = (self.out_features, self.in_features);
        let (r1, r2) = (sa1.get(1).copied()?, sa2.get(1).copied()?);
        if sa1[0] != out
            || sa2[0] != out
            || sb1[0] != r1
            || sb2[0] != r2
            || a1.len() != out * r1
            || a2.len() != out * r2
        {
            return None;
        }
        if b1.len() != r1 * inn || b2.len() != r2 * inn {
            return None;
        }
        // (A1B1 ⊙ A2B2)_ij = Σ_rs (A1_ir A2_is)(B1_rj B2_sj).
        let rank = r1 * r2;
        let mut up = vec![0f32; out * rank];
        for i in 0..out {
            for r in 0..r1 {
                for s in 0..r2 {
                    up[i * rank + r * r2 + s] = a1[i * r1 + r] * a2[i * r2 + s];
                }
            }
        }
        let mut down = vec![0f32; rank * inn];
        for r in 0..r1 {
            for s in 0..r2 {
                let row = &mut down[(r * r2 + s) * inn..(r * r2 + s + 1) * inn];
                for (j, v) in row.iter_mut().enumerate() {
                    *v = b1[r * inn + j] * b2[s * inn + j];
                }
            }
        }
        Some(product_norm(&up, &down, out, rank, inn))
    }

    fn lokr_norm(&self, file: &LoraFile) -> Option<f64> {
        Some(self.lokr_factor_norm(file, "w1")? * self.lokr_factor_norm(file, "w2")?)
    }

    /// ‖w1‖ or ‖w2‖, whole or from its two factors.
    fn lokr_factor_norm(&self, file: &LoraFile, factor: &str) -> Option<f64> {
        if let Some((w, _)) = self.tensor(file, factor) {
            return Some(w.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt());
        }
        let Factors { a, b, rows, rank, cols } = self.factors(file, &format!("{factor}_a"), &format!("{factor}_b"))?;
        Some(product_norm(&a, &b, rows, rank, cols))
    }
}

/// Two chained factors read from a file: `a` (rows × rank) and `b` (rank × cols), row-major.
struct Factors {
    a: Vec<f32>,
    b: Vec<f32>,
    rows: usize,
    rank: usize,
    cols: usize,
}

/// Tensor roles by key suffix.
const ROLES: [(&str, &str); 14] = [
    ("hada_w1_a", "w1_a"),
    ("hada_w1_b", "w1_b"),
    ("hada_w2_a", "w2_a"),
    ("hada_w2_b", "w2_b"),
    ("hada_t1", "t1"),
    ("hada_t2", "t2"),
    ("lokr_w1", "w1"),
    ("lokr_w1_a", "w1_a"),
    ("lokr_w1_b", "w1_b"),
    ("lokr_w2", "w2"),
    ("lokr_w2_a", "w2_a"),
    ("lokr_w2_b", "w2_b"),
    ("lokr_t2", "t2"),
    ("alpha", "alpha"),
];

/// The LoHa/LoKr modules of a file, in name order. Keys of other forms are ignored; a module
/// missing a factor is an error naming it.
pub fn lycoris_modules(file: &LoraFile) -> Result<Vec<LycorisModule>, ModuleError> {
    let has_second_te = file.tensor_names().any(|n| n.starts_with("lora_te2_"));
    let mut groups: BTreeMap<&str, (Option<LycorisKind>, BTreeMap<&'static str, String>)> = BTreeMap::new();
    for name in file.tensor_names() {
        let Some((module, suffix)) = name.split_once('.') else { continue };
        let Some(&(_, role)) = ROLES.iter().find(|(s, _)| *s == suffix) else { continue };
        let entry = groups.entry(module).or_default();
        if suffix.starts_with("hada_") {
            entry.0 = Some(LycorisKind::LoHa);
        } else if suffix.starts_with("lokr_") {
            entry.0 = Some(LycorisKind::LoKr);
        }
        entry.1.insert(role, name.to_string());
    }
    let shape = |key: &String| file.info(key).map(|i| i.shape.clone()).unwrap_or_default();
    let incomplete = |module: &str, what: &str| ModuleError::Incomplete {
        path: file.path().to_path_buf(),
        module: module.to_string(),
        missing: what.into(),
    };
    let mut out = Vec::new();
    for (module, (kind, tensors)) in groups {
        let Some(kind) = kind else { continue }; // an alpha alone: not a LyCORIS module
        let tucker = tensors.contains_key("t1") || tensors.contains_key("t2");
        let dims = |role: &str| tensors.get(role).map(shape);
        let bad_shape = |reason: String| ModuleError::BadShape {
            path: file.path().to_path_buf(),
            module: module.to_string(),
            reason: format!("{kind} {reason}; the file is damaged or not a LyCORIS file — re-save it"),
        };
        // `prefix_a · prefix_b` as (rows, cols) when the stored shapes chain (checked for
        // every non-Tucker module here, so norms and weight changes never meet a mismatch).
        let chained = |prefix: &str, a: &[usize], b: &[usize]| -> Result<(usize, usize), ModuleError> {
            match (a, b.first()) {
                (&[rows, rank], Some(&b_rank)) if rank == b_rank || tucker => Ok((rows, b.iter().skip(1).product())),
                _ => Err(bad_shape(format!(
                    "factors do not chain: {prefix}_a {a:?} · {prefix}_b {b:?} (the columns of _a must equal the \
                     rows of _b)"
                ))),
            }
        };
        let (out_features, in_features, rank) = match kind {
            LycorisKind::LoHa => {
                let (Some(a), Some(b)) = (dims("w1_a"), dims("w1_b")) else {
                    return Err(incomplete(module, "hada_w1_a/hada_w1_b"));
                };
                let (Some(a2), Some(b2)) = (dims("w2_a"), dims("w2_b")) else {
                    return Err(incomplete(module, "hada_w2_a/hada_w2_b"));
                };
                let first = chained("hada_w1", &a, &b)?;
                let second = chained("hada_w2", &a2, &b2)?;
                if first != second && !tucker {
                    return Err(bad_shape(format!(
                        "products differ in shape: hada_w1_a·hada_w1_b is {}x{} but hada_w2_a·hada_w2_b is {}x{} \
                         (they are multiplied element by element)",
                        first.0, first.1, second.0, second.1
                    )));
                }
                let rank = b.first().copied().unwrap_or(0);
                (first.0, first.1, Some(rank))
            }
            LycorisKind::LoKr => {
                let factor = |f: &str| -> Option<Result<(usize, usize), ModuleError>> {
                    if let Some(w) = dims(f) {
                        return Some(Ok((w.first().copied()?, w.iter().skip(1).product())));
                    }
                    let (a, b) = (dims(&format!("{f}_a"))?, dims(&format!("{f}_b"))?);
                    Some(chained(&format!("lokr_{f}"), &a, &b))
                };
                let (Some(w1), Some(w2)) = (factor("w1"), factor("w2")) else {
                    return Err(incomplete(module, "lokr_w1 (or _a/_b) and lokr_w2 (or _a/_b)"));
                };
                let ((o1, i1), (o2, i2)) = (w1?, w2?);
                let rank = dims("w1_b").or_else(|| dims("w2_b")).and_then(|b| b.first().copied());
                (o1 * o2, i1 * i2, rank)
            }
        };
        let stored_alpha = tensors.get("alpha").map(|k| file.alpha_f32(k)).transpose()?;
        let alpha = match (stored_alpha, rank) {
            (Some(a), _) if a != 0.0 => a,
            (_, Some(r)) => r as f32,
            _ => 1.0,
        };
        out.push(LycorisModule {
            name: module.to_string(),
            component: component_of(module, has_second_te),
            kind,
            out_features,
            in_features,
            rank,
            alpha,
            tucker,
            tensors,
        });
    }
    Ok(out)
}
