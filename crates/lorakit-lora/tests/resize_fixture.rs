//! Resize parity with sd-scripts: `sd15-r8-fp32.safetensors` (made by sd-scripts' own network
//! code) resized with `--new_rank 8 --dynamic_method sv_fro --dynamic_param 0.9`, compared module
//! by module with sd-scripts' output file and its `--verbose` report.
//!
//! The files are read with the `safetensors` crate directly; this glue is test-only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use lorakit_lora::resize::{
    average_fro_line, metadata_updates, resize_modules, verbose_line, LowRankSvd, ModuleWeights, ResizeMethod,
    ResizeSettings,
};
use safetensors::{Dtype, SafeTensors};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd-scripts/lora").join(name)
}

/// One LoRA module read from a file: f32 data and shapes.
struct Module {
    name: String,
    up: Vec<f32>,
    up_shape: Vec<usize>,
    down: Vec<f32>,
    down_shape: Vec<usize>,
    alpha: Option<f32>,
}

impl Module {
    fn weights(&self) -> ModuleWeights<'_> {
        ModuleWeights {
            name: &self.name,
            up: &self.up,
            up_shape: &self.up_shape,
            down: &self.down,
            down_shape: &self.down_shape,
            alpha: self.alpha,
        }
    }
}

fn f32_tensor(st: &SafeTensors<'_>, key: &str) -> (Vec<f32>, Vec<usize>) {
    let view = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(view.dtype(), Dtype::F32, "{key}");
    let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (data, view.shape().to_vec())
}

/// Reads every `X.lora_down.weight` / `X.lora_up.weight` / `X.alpha` triple, sorted by name (the
/// order sd-scripts walks a loaded safetensors file), plus the metadata.
fn read_lora(bytes: &[u8]) -> (Vec<Module>, HashMap<String, String>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut names: Vec<String> =
        st.names().iter().filter_map(|k| k.strip_suffix(".lora_down.weight")).map(str::to_string).collect();
    names.sort();
    let modules = names
        .into_iter()
        .map(|name| {
            let (down, down_shape) = f32_tensor(&st, &format!("{name}.lora_down.weight"));
            let (up, up_shape) = f32_tensor(&st, &format!("{name}.lora_up.weight"));
            let alpha =
                st.tensor(&format!("{name}.alpha")).ok().map(|_| f32_tensor(&st, &format!("{name}.alpha")).0[0]);
            Module { name, up, up_shape, down, down_shape, alpha }
        })
        .collect();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    (modules, meta.metadata().clone().unwrap_or_default())
}

/// `(‖A·B − C·D‖_F, ‖C·D‖_F)` for low-rank products, through Gram matrices of the stacked
/// factors (`‖G·Hᵀ‖² = Σ (GᵀG)∘(HᵀH)`), so the dense m×n products are never formed.
fn product_distance(a: &Module, b: &Module) -> (f64, f64) {
    let (m, n) = (a.up_shape[0], a.down.len() / a.down_shape[0]);
    let (ra, rb) = (a.down_shape[0], b.down_shape[0]);
    let k = ra + rb;
    // G = [A | −C] (m×k), H = [Bᵀ | Dᵀ] (n×k)
    let g = |i: usize, j: usize| {
        if j < ra {
            f64::from(a.up[i * ra + j])
        } else {
            -f64::from(b.up[i * rb + j - ra])
        }
    };
    let h = |i: usize, j: usize| {
        if j < ra {
            f64::from(a.down[j * n + i])
        } else {
            f64::from(b.down[(j - ra) * n + i])
        }
    };
    let gram = |rows: usize, f: &dyn Fn(usize, usize) -> f64| {
        let mut out = vec![0.0f64; k * k];
        for i in 0..rows {
            let row: Vec<f64> = (0..k).map(|j| f(i, j)).collect();
            for p in 0..k {
                for q in 0..k {
                    out[p * k + q] += row[p] * row[q];
                }
            }
        }
        out
    };
    let (gg, hh) = (gram(m, &g), gram(n, &h));
    let diff: f64 = gg.iter().zip(&hh).map(|(x, y)| x * y).sum();
    let theirs: f64 =
        (ra..k).flat_map(|p| (ra..k).map(move |q| (p, q))).map(|(p, q)| gg[p * k + q] * hh[p * k + q]).sum();
    (diff.max(0.0).sqrt(), theirs.sqrt())
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn sv_fro_resize_matches_sd_scripts_for_every_module() {
    let input_bytes = read("sd15-r8-fp32.safetensors");
    let expected_bytes = read("sd15-r8-fp32.resized-sv_fro-0.9.safetensors");
    let report = String::from_utf8(read("sd15-r8-fp32.resized-sv_fro-0.9.report.txt")).unwrap();
    let (input, input_meta) = read_lora(&input_bytes);
    let (expected, expected_meta) = read_lora(&expected_bytes);
    assert_eq!(input.len(), 264);
    assert_eq!(expected.len(), 264);

    let method = ResizeMethod::from_flags(Some("sv_fro"), Some(0.9)).unwrap();
    let settings = ResizeSettings::new(method, 8, None).unwrap();
    let weights: Vec<ModuleWeights<'_>> = input.iter().map(Module::weights).collect();
    let resized = resize_modules(&weights, &settings).unwrap();

    // Report lines keyed by module name.
    let report_lines: HashMap<&str, &str> = report
        .lines()
        .filter(|l| l.contains(" | sum(S) retained: "))
        .map(|l| (l.split_whitespace().next().unwrap(), l))
        .collect();
    assert_eq!(report_lines.len(), 264);

    let mut worst = 0.0f64;
    let mut ranks = std::collections::BTreeMap::new();
    let mut closest = f64::INFINITY; // how near any cumulative fraction comes to p² = 0.81
    for ((ours, theirs), original) in resized.iter().zip(&expected).zip(&input) {
        assert_eq!(ours.name, theirs.name);
        assert_eq!(ours.rank, theirs.down_shape[0], "{}: rank", ours.name);
        assert_eq!(ours.up_shape, theirs.up_shape, "{}", ours.name);
        assert_eq!(ours.down_shape, theirs.down_shape, "{}", ours.name);
        assert_eq!(Some(ours.alpha as f32), theirs.alpha, "{}: alpha", ours.name);
        *ranks.entry(ours.rank).or_insert(0) += 1;

        let ours_module = Module {
            name: ours.name.clone(),
            up: ours.up.clone(),
            up_shape: ours.up_shape.clone(),
            down: ours.down.clone(),
            down_shape: ours.down_shape.clone(),
            alpha: None,
        };
        let (diff, norm) = product_distance(&ours_module, theirs);
        let rel = diff / norm;
        assert!(rel <= 1e-5, "{}: relative Frobenius error {rel:e}", ours.name);
        worst = worst.max(rel);

        let line = verbose_line(ours, method);
        assert_eq!(Some(&line.as_str()), report_lines.get(ours.name.as_str()), "{}", ours.name);

        let m = original.up_shape[0];
        let n = original.down.len() / original.down_shape[0];
        let svd = LowRankSvd::from_factors(&original.up, &original.down, m, original.down_shape[0], n).unwrap();
        let sq: Vec<f64> = svd.singular_values().iter().map(|s| s * s).collect();
        let total: f64 = sq.iter().sum();
        let mut acc = 0.0;
        for v in &sq {
            acc += v;
            closest = closest.min((acc / total - 0.81).abs());
        }
    }
    eprintln!("ranks chosen: {ranks:?}; worst relative Frobenius error of up·down: {worst:e}");
    eprintln!("closest cumulative Frobenius fraction to the 0.81 threshold: {closest:e}");

    let average = report.lines().find(|l| l.starts_with("Average Frobenius")).unwrap();
    assert_eq!(average_fro_line(&resized), average);

    for (key, value) in metadata_updates(&settings, &resized, input_meta.get("ss_training_comment").map(String::as_str))
    {
        assert_eq!(Some(&value), expected_meta.get(&key), "{key}");
    }
}

/// Timing of the whole fixture resize (run with `--release -- --ignored --nocapture`).
#[test]
#[ignore]
fn time_fixture_resize() {
    let (input, _) = read_lora(&read("sd15-r8-fp32.safetensors"));
    let weights: Vec<ModuleWeights<'_>> = input.iter().map(Module::weights).collect();
    let settings = ResizeSettings::new(ResizeMethod::SvFro(0.9), 8, None).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let resized = resize_modules(&weights, &settings).unwrap();
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(resized.len(), 264);
    }
    eprintln!("resized {} modules in {:.1} ms (best of 5)", weights.len(), best * 1e3);
}
