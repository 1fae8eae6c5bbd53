//! `merge_files` and its per-module maths, checked against dense computations on sd-scripts'
//! fixture LoRA (SD1.5, rank 8, alpha 4) and its sv_fro resize, and on small synthetic cases.

use faer::Mat;
use lorakit_lora::keys::{modules, LoraModule};
use lorakit_lora::merge::{
    clamp_factors, merge_files, merge_module, quantile_linear, svd_merge, Contribution, MergeError, MergeSettings,
    CLAMP_QUANTILE,
};
use lorakit_lora::safetensors_file::{sshs_hashes, write_lora, LoraFile, Precision, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd-scripts/lora").join(name)
}

const FIXTURE: &str = "sd15-r8-fp32.safetensors";
const RESIZED: &str = "sd15-r8-fp32.resized-sv_fro-0.9.safetensors";

/// Dense `coeff · up · down` (row-major f64 `out×in`) from row-major factors.
fn product(up: &[f32], down: &[f32], rows: usize, rank: usize, cols: usize, coeff: f64) -> Vec<f64> {
    let mut w = vec![0f64; rows * cols];
    for i in 0..rows {
        for k in 0..rank {
            let a = f64::from(up[i * rank + k]) * coeff;
            if a == 0.0 {
                continue;
            }
            for (dst, &b) in w[i * cols..(i + 1) * cols].iter_mut().zip(&down[k * cols..(k + 1) * cols]) {
                *dst += a * f64::from(b);
            }
        }
    }
    w
}

/// A module's effective weight `scale · up · down`.
fn effective(file: &LoraFile, m: &LoraModule) -> Vec<f64> {
    let up = file.tensor_f32(&m.up_key).unwrap();
    let down = file.tensor_f32(&m.down_key).unwrap();
    product(&up, &down, m.out_features, m.rank, m.in_features, f64::from(m.scale()))
}

fn fro(w: &[f64]) -> f64 {
    w.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn diff_fro(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

fn by_name(file: &LoraFile) -> BTreeMap<String, LoraModule> {
    modules(file).unwrap().modules.into_iter().map(|m| (m.name.clone(), m)).collect()
}

#[test]
fn quantile_matches_torch_linear_interpolation_by_hand() {
    // torch.quantile(tensor([1., 2., 3., 4., 5.]), 0.99) = 4 + 0.96·(5 − 4) = 4.96
    assert!((quantile_linear(&[5.0, 1.0, 4.0, 2.0, 3.0], 0.99).unwrap() - 4.96).abs() < 1e-6);
    // sorted [-10, 0, 3, 7]: position 0.99·3 = 2.97 → 3 + 0.97·(7 − 3) = 6.88
    assert!((quantile_linear(&[7.0, -10.0, 3.0, 0.0], 0.99).unwrap() - 6.88).abs() < 1e-5);
    assert_eq!(quantile_linear(&[2.5], 0.99), Some(2.5));
    assert_eq!(quantile_linear(&[0.0, 1.0], 0.5), Some(0.5));
    assert_eq!(quantile_linear(&[], 0.99), None);
}

#[test]
fn clamp_uses_the_quantile_of_up_and_down_together() {
    // 200 values: up 0..100, down -100..0 (as f32). Sorted position 0.99·199 = 197.01.
    let mut up: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let mut down: Vec<f32> = (0..100).map(|i| -(i as f32) - 1.0).collect();
    let mut all: Vec<f32> = up.iter().chain(&down).copied().collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let expected = all[197] + 0.01 * (all[198] - all[197]);
    let hi = clamp_factors(&mut up, &mut down, CLAMP_QUANTILE);
    assert!((hi - expected).abs() < 1e-4, "{hi} vs {expected}");
    assert!((hi - 97.01).abs() < 1e-4);
    assert!(up.iter().chain(&down).all(|x| x.abs() <= hi));
    assert_eq!(up[97], 97.0, "values inside the bound are untouched");
    assert_eq!((up[98], up[99]), (hi, hi));
    assert_eq!((down[97], down[98], down[99]), (-hi, -hi, -hi), "negatives beyond −hi are clipped too");
    assert_eq!(down[96], -97.0);
}

/// Deterministic pseudo-random values in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn truncation_keeps_the_top_singular_directions_of_the_dense_sum() {
    let (rows, cols) = (12, 9);
    let (ua, da) = (noise(1, rows * 4), noise(2, 4 * cols));
    let (ub, db) = (noise(3, rows * 3), noise(4, 3 * cols));
    let contributions = [
        Contribution { up: &ua, down: &da, rank: 4, coeff: 0.7 },
        Contribution { up: &ub, down: &db, rank: 3, coeff: -0.4 },
    ];
    let mut dense = product(&ua, &da, rows, 4, cols, 0.7);
    for (d, x) in dense.iter_mut().zip(product(&ub, &db, rows, 3, cols, f64::from(-0.4f32))) {
        *d += x;
    }
    let w = Mat::from_fn(rows, cols, |i, j| dense[i * cols + j]);
    let svd = w.svd().unwrap();
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    for rank in [1, 3, 5, 7] {
        // Best rank-r approximation Σ_{i<r} σ_i u_i v_iᵀ (unique: the σ are distinct).
        let best: Vec<f64> = (0..rows * cols)
            .map(|idx| (0..rank).map(|k| u[(idx / cols, k)] * s[k] * v[(idx % cols, k)]).sum())
            .collect();
        let (up, down) = svd_merge(&contributions, rows, cols, rank).unwrap();
        let got = product(&up, &down, rows, rank, cols, 1.0);
        assert!(diff_fro(&got, &best) < 1e-5 * fro(&dense), "rank {rank}: {}", diff_fro(&got, &best));
        // up's columns carry the singular values, down's rows are orthonormal.
        for k in 0..rank {
            let col: f64 = (0..rows).map(|i| f64::from(up[i * rank + k]).powi(2)).sum::<f64>().sqrt();
            assert!((col - s[k]).abs() < 1e-5 * s[0], "σ_{k}: {col} vs {}", s[k]);
            let row: f64 = down[k * cols..(k + 1) * cols].iter().map(|x| f64::from(*x).powi(2)).sum();
            assert!((row - 1.0).abs() < 1e-5);
        }
        // The clamped version is the same factors clamped at their 0.99 quantile.
        let merged = merge_module(&contributions, rows, cols, rank).unwrap();
        let (mut cu, mut cd) = (up.clone(), down.clone());
        let hi = clamp_factors(&mut cu, &mut cd, 0.99);
        assert_eq!((merged.up, merged.down, merged.clamp), (cu, cd, hi));
    }
    // Rank 7 holds the whole sum (rank 4 + 3).
    let (up, down) = svd_merge(&contributions, rows, cols, 7).unwrap();
    assert!(diff_fro(&product(&up, &down, rows, 7, cols, 1.0), &dense) < 1e-5 * fro(&dense));
    assert!(svd_merge(&contributions, rows, cols, 10).is_err(), "rank above min(rows, cols)");
}

#[test]
fn merging_the_fixture_with_itself_at_half_weights_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("self.safetensors");
    let inputs = [(fixture(FIXTURE), 0.5), (fixture(FIXTURE), 0.5)];
    let outcome = merge_files(&inputs, &out, &MergeSettings::new(8, None).unwrap(), Precision::F32).unwrap();
    assert_eq!(outcome.modules.len(), 264);
    assert!(outcome.modules.iter().all(|m| m.rank == 8 && m.sources == 2));

    let src = LoraFile::open(fixture(FIXTURE)).unwrap();
    let merged = LoraFile::open(&out).unwrap();
    let (src_mods, merged_mods) = (by_name(&src), by_name(&merged));
    assert_eq!(src_mods.keys().collect::<Vec<_>>(), merged_mods.keys().collect::<Vec<_>>());
    let mut worst_rel = 0f64;
    for (idx, (name, m)) in src_mods.iter().enumerate() {
        let n = &merged_mods[name];
        assert_eq!(
            (n.kind, n.in_features, n.out_features, n.rank, n.alpha),
            (m.kind, m.in_features, m.out_features, 8, 8.0)
        );
        assert_eq!(merged.info(&n.up_key).unwrap().shape.len(), src.info(&m.up_key).unwrap().shape.len());
        let up = src.tensor_f32(&m.up_key).unwrap();
        let down = src.tensor_f32(&m.down_key).unwrap();
        let c = Contribution { up: &up, down: &down, rank: 8, coeff: 0.5 * m.scale() };
        // Before sd-scripts' clamp the re-factoring is exact to fp32 rounding.
        let (ru, rd) = svd_merge(&[c, c], m.out_features, m.in_features, 8).unwrap();
        // The file holds exactly those factors clamped at their 0.99 quantile.
        let (mut cu, mut cd) = (ru.clone(), rd.clone());
        clamp_factors(&mut cu, &mut cd, CLAMP_QUANTILE);
        assert_eq!(merged.tensor_f32(&n.up_key).unwrap(), cu, "{name}");
        assert_eq!(merged.tensor_f32(&n.down_key).unwrap(), cd, "{name}");
        if idx % 4 != 0 {
            continue; // dense products are slow in debug builds; a quarter of the modules suffices
        }
        let want = effective(&src, m);
        let exact = product(&ru, &rd, m.out_features, 8, m.in_features, 1.0);
        assert!(diff_fro(&exact, &want) <= 1e-5 * fro(&want), "{name}: {}", diff_fro(&exact, &want) / fro(&want));
        // The clamp trims outliers only (sd-scripts' own behaviour; up to ~30 % on this fixture).
        let got = effective(&merged, n);
        worst_rel = worst_rel.max(diff_fro(&got, &want) / fro(&want));
    }
    assert!(worst_rel > 0.0 && worst_rel < 0.5, "clamping changed a module by {worst_rel}");
}

#[test]
fn fixture_minus_its_resize_is_the_discarded_part() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("diff.safetensors");
    let inputs = [(fixture(FIXTURE), 1.0), (fixture(RESIZED), -1.0)];
    merge_files(&inputs, &out, &MergeSettings::new(16, None).unwrap(), Precision::F32).unwrap();
    let (a, b, d) = (
        LoraFile::open(fixture(FIXTURE)).unwrap(),
        LoraFile::open(fixture(RESIZED)).unwrap(),
        LoraFile::open(&out).unwrap(),
    );
    let (am, bm, dm) = (by_name(&a), by_name(&b), by_name(&d));
    let mut checked = 0;
    for (name, m) in am.iter().filter(|(_, m)| m.in_features * m.out_features <= 1 << 20).step_by(23) {
        let n = &bm[name];
        let want: Vec<f64> = effective(&a, m).iter().zip(effective(&b, n)).map(|(x, y)| x - y).collect();
        let full = fro(&effective(&a, m));
        let want_norm = fro(&want);
        // sv_fro 0.9 kept ≥ 90 % of the norm: the rest is small but not nothing when rank dropped.
        assert!(want_norm < 0.45 * full, "{name}: {want_norm} vs {full}");
        // Unclamped, the merge is exactly the dense difference.
        let (ua, da, ub, db) = (
            a.tensor_f32(&m.up_key).unwrap(),
            a.tensor_f32(&m.down_key).unwrap(),
            b.tensor_f32(&n.up_key).unwrap(),
            b.tensor_f32(&n.down_key).unwrap(),
        );
        let cs = [
            Contribution { up: &ua, down: &da, rank: m.rank, coeff: m.scale() },
            Contribution { up: &ub, down: &db, rank: n.rank, coeff: -n.scale() },
        ];
        let rank = 16.min(m.in_features).min(m.out_features);
        let (ru, rd) = svd_merge(&cs, m.out_features, m.in_features, rank).unwrap();
        let exact = product(&ru, &rd, m.out_features, rank, m.in_features, 1.0);
        assert!(diff_fro(&exact, &want) <= 1e-4 * full, "{name}");
        // The written (clamped) module has nearly the same norm.
        let got = fro(&effective(&d, &dm[name]));
        assert!((got - want_norm).abs() <= 0.1 * want_norm + 1e-4 * full, "{name}: {got} vs {want_norm}");
        checked += 1;
    }
    assert!(checked >= 5, "checked {checked} modules");
}

#[test]
fn metadata_records_sources_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged-out.safetensors");
    let inputs = [(fixture(FIXTURE), 0.7), (fixture(RESIZED), 0.5)];
    let outcome = merge_files(&inputs, &out, &MergeSettings::new(4, Some(2)).unwrap(), Precision::F16).unwrap();
    let file = LoraFile::open(&out).unwrap();
    let md = file.metadata();
    assert_eq!(md, &outcome.metadata);
    let title = |p: &Path| {
        LoraFile::open(p)
            .unwrap()
            .metadata()
            .get("modelspec.title")
            .cloned()
            .unwrap_or_else(|| p.file_stem().unwrap().to_string_lossy().into_owned())
    };
    let merged_from = format!("{}, {}", title(&fixture(FIXTURE)), title(&fixture(RESIZED)));
    assert_eq!(md["modelspec.merged_from"], merged_from);
    assert_eq!(md["modelspec.title"], "merged-out");
    assert_eq!(md["modelspec.architecture"], "stable-diffusion-v1/lora");
    assert_eq!(md["modelspec.sai_model_spec"], "1.0.1");
    assert_eq!(md["ss_network_module"], "networks.lora");
    assert_eq!(md["ss_network_dim"], "4");
    assert_eq!(md["ss_network_alpha"], "4");
    assert_eq!(md["ss_network_args"], r#"{"conv_dim": 2, "conv_alpha": 2}"#);
    let src = LoraFile::open(fixture(FIXTURE)).unwrap();
    for key in ["ss_v2", "ss_base_model_version"] {
        assert_eq!(md.get(key), src.metadata().get(key), "{key} comes from the first input");
    }
    assert!(!md.contains_key("ss_tag_frequency"), "only minimal ss_ keys are kept");
    let sources: serde_json::Value = serde_json::from_str(&md["lorakit.merge_sources"]).unwrap();
    assert_eq!(sources[0]["file"], FIXTURE);
    assert!((sources[1]["ratio"].as_f64().unwrap() - 0.5).abs() < 1e-9);

    // The stored hashes are those of the written tensors.
    let tensors: BTreeMap<String, Tensor> = file
        .tensor_names()
        .map(|n| (n.to_string(), Tensor::new(file.info(n).unwrap().shape.clone(), file.tensor_f32(n).unwrap())))
        .collect();
    assert!(file.tensor_names().all(|n| file.info(n).unwrap().dtype.to_string() == "F16"));
    let h = sshs_hashes(&tensors, md, Precision::F16).unwrap();
    assert_eq!(md["sshs_model_hash"], h.model_hash);
    assert_eq!(md["sshs_legacy_hash"], h.legacy_hash);
    assert_eq!(outcome.hashes.model_hash, h.model_hash);
}

/// Writes a small kohya LoRA with one linear module and the given metadata.
fn tiny_lora(path: &Path, module: &str, (out, inp): (usize, usize), metadata: &[(&str, &str)]) {
    let mut t = BTreeMap::new();
    t.insert(format!("{module}.lora_down.weight"), Tensor::new(vec![2, inp], noise(5, 2 * inp)));
    t.insert(format!("{module}.lora_up.weight"), Tensor::new(vec![out, 2], noise(6, out * 2)));
    t.insert(format!("{module}.alpha"), Tensor::scalar(1.0));
    let md = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    write_lora(path, &t, &md, Precision::F32).unwrap();
}

#[test]
fn modules_present_in_only_some_inputs_get_only_their_terms() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) =
        (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"), dir.path().join("o.safetensors"));
    tiny_lora(&a, "lora_unet_x_proj", (6, 5), &[]);
    tiny_lora(&b, "lora_unet_y_proj", (4, 3), &[]);
    let outcome =
        merge_files(&[(a.clone(), 2.0), (b, 1.0)], &out, &MergeSettings::new(8, None).unwrap(), Precision::F32)
            .unwrap();
    let ranks: Vec<(String, usize, usize)> =
        outcome.modules.iter().map(|m| (m.name.clone(), m.rank, m.sources)).collect();
    assert_eq!(ranks, [("lora_unet_x_proj".into(), 5, 1), ("lora_unet_y_proj".into(), 3, 1)], "rank capped by in/out");
    let merged = LoraFile::open(&out).unwrap();
    assert_eq!(merged.info("lora_unet_x_proj.lora_up.weight").unwrap().shape, [6, 5]);
    assert_eq!(merged.info("lora_unet_x_proj.lora_down.weight").unwrap().shape, [5, 5]);
    assert_eq!(merged.scalar_f32("lora_unet_x_proj.alpha").unwrap(), Some(5.0));
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let s = MergeSettings::new(4, None).unwrap();
    let fx = fixture(FIXTURE);

    let e = merge_files(&[], &out, &s, Precision::F32).unwrap_err();
    assert!(matches!(e, MergeError::NoInputs));
    assert!(matches!(MergeSettings::new(0, None), Err(MergeError::ZeroRank { flag: "--rank" })));
    assert!(matches!(MergeSettings::new(4, Some(0)), Err(MergeError::ZeroRank { flag: "--conv-rank" })));

    let missing = dir.path().join("nope.safetensors");
    let e = merge_files(&[(fx.clone(), 1.0), (missing, 1.0)], &out, &s, Precision::F32).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors"), "{e}");

    let ckpt = dir.path().join("ckpt.safetensors");
    let mut t = BTreeMap::new();
    t.insert("model.diffusion_model.input_blocks.0.0.weight".to_string(), Tensor::new(vec![4, 4], vec![0.5; 16]));
    write_lora(&ckpt, &t, &BTreeMap::new(), Precision::F32).unwrap();
    let e = merge_files(&[(ckpt, 1.0)], &out, &s, Precision::F32).unwrap_err();
    assert!(matches!(e, MergeError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("ckpt.safetensors") && e.to_string().contains("full"), "{e}");

    let xl = dir.path().join("xl.safetensors");
    tiny_lora(&xl, "lora_unet_x_proj", (6, 5), &[("ss_base_model_version", "sdxl_base_v1-0")]);
    let e = merge_files(&[(fx.clone(), 1.0), (xl, 1.0)], &out, &s, Precision::F32).unwrap_err().to_string();
    assert!(e.contains(FIXTURE) && e.contains("xl.safetensors") && e.contains("SDXL") && e.contains("SD1"), "{e}");

    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    tiny_lora(&a, "lora_unet_x_proj", (6, 5), &[]);
    tiny_lora(&b, "lora_unet_x_proj", (6, 7), &[]);
    let e = merge_files(&[(a.clone(), 1.0), (b, 1.0)], &out, &s, Precision::F32).unwrap_err().to_string();
    assert!(e.contains("lora_unet_x_proj") && e.contains("5→6") && e.contains("7→6"), "{e}");

    let e = merge_files(&[(a.clone(), 1.0)], &a, &s, Precision::F32).unwrap_err();
    assert!(matches!(e, MergeError::OutputIsInput(_)), "{e}");
    let e = merge_files(&[(a.clone(), f32::NAN)], &out, &s, Precision::F32).unwrap_err();
    assert!(matches!(e, MergeError::BadRatio { .. }), "{e}");
    assert!(!out.exists(), "nothing written on failure");
}
