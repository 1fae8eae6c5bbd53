//! LyCORIS LoHa/LoKr files in `inspect` against LyCORIS' own modules (fixture:
//! tools/reference/lycoris_fixture.py → tests/fixtures/reference/lycoris/): module names, kinds,
//! shapes, scales and ‖ΔW‖_F computed in factor space.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lorakit_lora::inspect::inspect_file;
use lorakit_lora::keys::ModuleError;
use lorakit_lora::lycoris::lycoris_modules;
use lorakit_lora::safetensors_file::{write_lora, LoraFile, Precision, Tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/lycoris").join(name)
}

#[test]
fn inspect_reports_loha_and_lokr_norms_as_lycoris_computes_them() {
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("modules.json")).unwrap()).unwrap();
    let want = want.as_object().unwrap();
    let report = inspect_file(&fixture("lycoris.safetensors")).unwrap();
    // The file mixes both algorithms; each module is reported with its own.
    assert!(report.format.starts_with("LyCORIS"), "{}", report.format);
    assert!(report.unsupported.is_none());
    assert_eq!(report.modules.len(), want.len());
    for m in &report.modules {
        let w = &want[&m.name];
        let algo = w["algo"].as_str().unwrap();
        assert_eq!(m.kind, if algo == "LohaModule" { "LoHa" } else { "LoKr" }, "{}", m.name);
        let shape: Vec<usize> = serde_json::from_value(w["shape"].clone()).unwrap();
        assert_eq!(m.out_features, shape[0], "{}", m.name);
        assert_eq!(m.in_features, shape[1..].iter().product::<usize>(), "{}", m.name);
        assert!((f64::from(m.scale) - w["scale"].as_f64().unwrap()).abs() < 1e-6, "{}: scale {}", m.name, m.scale);
        let norm = w["norm"].as_f64().unwrap();
        assert!((m.norm - norm).abs() <= 1e-5 * norm, "{}: norm {} vs LyCORIS {norm}", m.name, m.norm);
    }
    assert_eq!(report.modules_per_component.get("TE"), Some(&1), "{:?}", report.modules_per_component);
    assert!(report.blocks.iter().any(|b| b.block == "M00"), "mid block labelled");
    // The LoKr module with both factors whole has no rank: shown as full, not rank 0.
    let text = lorakit_lora::inspect::render_text(std::slice::from_ref(&report));
    let ranks = text.lines().find(|l| l.trim_start().starts_with("ranks")).unwrap();
    assert!(report.ranks.contains_key(&0) && ranks.contains("full ×1"), "{ranks}");
    assert!(!ranks.contains(" 0 ×") && !ranks.contains(",0 ×"), "{ranks}");
}

#[test]
fn a_lycoris_module_missing_a_factor_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.safetensors");
    let mut t = BTreeMap::new();
    t.insert("lora_unet_a.hada_w1_a".to_string(), Tensor::new(vec![3, 2], vec![0.5; 6]));
    t.insert("lora_unet_a.hada_w1_b".to_string(), Tensor::new(vec![2, 4], vec![0.5; 8]));
    t.insert("lora_unet_a.hada_w2_a".to_string(), Tensor::new(vec![3, 2], vec![0.5; 6]));
    write_lora(&path, &t, &BTreeMap::new(), Precision::F32).unwrap();
    let file = LoraFile::open(&path).unwrap();
    let err = lycoris_modules(&file).unwrap_err();
    assert!(matches!(err, ModuleError::Incomplete { .. }));
    let msg = err.to_string();
    assert!(msg.contains("broken.safetensors") && msg.contains("lora_unet_a") && msg.contains("hada_w2"), "{msg}");
    let msg = inspect_file(&path).unwrap_err().to_string();
    assert!(msg.contains("lora_unet_a"), "{msg}");
}

/// LoHa/LoKr factors whose shapes do not chain are an error naming the module and the shapes
/// (inspect used to report a NaN norm).
#[test]
fn lycoris_factors_that_do_not_chain_are_an_error_naming_module_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let t = |shape: &[usize]| Tensor::new(shape.to_vec(), vec![0.5; shape.iter().product()]);
    type Shapes<'a> = &'a [(&'a str, &'a [usize])];
    let cases: [(Shapes, &str); 4] = [
        // hada_w1_a's 2 columns meet hada_w1_b's 3 rows.
        (
            &[("hada_w1_a", &[4, 2]), ("hada_w1_b", &[3, 5]), ("hada_w2_a", &[4, 2]), ("hada_w2_b", &[2, 5])],
            "hada_w1_a [4, 2] · hada_w1_b [3, 5]",
        ),
        // Both products chain but are 4x5 and 4x6: no element-wise product.
        (
            &[("hada_w1_a", &[4, 2]), ("hada_w1_b", &[2, 5]), ("hada_w2_a", &[4, 2]), ("hada_w2_b", &[2, 6])],
            "4x5 but hada_w2_a·hada_w2_b is 4x6",
        ),
        (
            &[("lokr_w1", &[2, 2]), ("lokr_w2_a", &[3, 4]), ("lokr_w2_b", &[2, 3])],
            "lokr_w2_a [3, 4] · lokr_w2_b [2, 3]",
        ),
        (
            &[("lokr_w1_a", &[2, 1]), ("lokr_w1_b", &[3, 2]), ("lokr_w2", &[3, 3])],
            "lokr_w1_a [2, 1] · lokr_w1_b [3, 2]",
        ),
    ];
    for (i, (tensors, shapes)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("unchained{i}.safetensors"));
        let map: BTreeMap<String, Tensor> =
            tensors.iter().map(|(role, shape)| (format!("lora_unet_m.{role}"), t(shape))).collect();
        write_lora(&path, &map, &BTreeMap::new(), Precision::F32).unwrap();
        let err = lycoris_modules(&LoraFile::open(&path).unwrap()).unwrap_err();
        assert!(matches!(err, ModuleError::BadShape { .. }), "{err}");
        let msg = inspect_file(&path).unwrap_err().to_string();
        assert!(msg.contains("lora_unet_m") && msg.contains(shapes), "{msg}");
    }
}

#[test]
fn dense_weight_changes_equal_lycoris_get_weight() {
    let file = LoraFile::open(fixture("lycoris.safetensors")).unwrap();
    let deltas = LoraFile::open(fixture("deltas.safetensors")).unwrap();
    let modules = lycoris_modules(&file).unwrap();
    assert_eq!(modules.len(), 7);
    for m in &modules {
        let ours = m.delta_weight(&file).unwrap();
        let want = deltas.tensor_f32(&m.name).unwrap();
        assert_eq!(ours.len(), want.len(), "{}", m.name);
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * scale, "{} element {i}: {a} vs {b}", m.name);
        }
    }
}
