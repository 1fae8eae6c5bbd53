//! `resize` and `merge` on Flux.1 LoRAs of every layout (tests/fixtures/reference/flux_lora):
//! resizing keeps names and, at a rank no smaller than the layers', every ΔW; sd-scripts'
//! `split_qkv` layers are resized whole; merge reads every layout under kohya names, so one layer
//! merges across files of different layouts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use lorakit_lora::convert::{convert_file, Target};
use lorakit_lora::flux::parse;
use lorakit_lora::keys;
use lorakit_lora::merge::{merge_files, MergeSettings};
use lorakit_lora::resize::{ResizeMethod, ResizeSettings};
use lorakit_lora::resize_file::resize_file;
use lorakit_lora::safetensors_file::{LoraFile, Precision};

const LAYOUTS: [&str; 9] = [
    "kohya",
    "kohya_split_qkv",
    "comfy",
    "diffusers",
    "diffusers_variants",
    "xlabs",
    "bfl",
    "kohya_diffusers_names",
    "diffusers_adapter_metadata",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/flux_lora").join(name)
}

/// scale·up·down per module (f64, row-major out × in).
fn deltas(path: &Path) -> BTreeMap<String, Vec<f64>> {
    let file = LoraFile::open(path).unwrap();
    let set = keys::modules(&file).unwrap();
    set.modules
        .iter()
        .map(|m| {
            let up = file.tensor_f32(&m.up_key).unwrap();
            let down = file.tensor_f32(&m.down_key).unwrap();
            let (r, inn) = (m.rank, m.in_features);
            let mut w = vec![0f64; m.out_features * inn];
            for o in 0..m.out_features {
                for k in 0..r {
                    let u = f64::from(up[o * r + k]) * f64::from(m.scale());
                    for c in 0..inn {
                        w[o * inn + c] += u * f64::from(down[k * inn + c]);
                    }
                }
            }
            (m.name.clone(), w)
        })
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn ranks(path: &Path) -> BTreeMap<String, usize> {
    let file = LoraFile::open(path).unwrap();
    keys::modules(&file).unwrap().modules.into_iter().map(|m| (m.name, m.rank)).collect()
}

#[test]
fn resize_keeps_every_layout_and_delta_at_a_sufficient_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = ResizeSettings::new(ResizeMethod::Fixed, 16, None).unwrap();
    for layout in LAYOUTS {
        let src = fixture(&format!("{layout}.safetensors"));
        let out = tmp.path().join(format!("{layout}-r16.safetensors"));
        let outcome = resize_file(&src, &out, &settings, Precision::F32).unwrap();
        let (a, b) = (deltas(&src), deltas(&out));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{layout}: module names");
        for (name, w) in &a {
            assert!(max_diff(w, &b[name]) <= 1e-5, "{layout} {name}: {}", max_diff(w, &b[name]));
        }
        // Names and tensor suffixes are the input's (an alpha may be added where alpha ≠ rank now).
        let names = |p: &Path| -> BTreeSet<String> {
            LoraFile::open(p).unwrap().tensor_names().filter(|k| !k.ends_with(".alpha")).map(str::to_string).collect()
        };
        assert_eq!(names(&src), names(&out), "{layout}");
        assert_eq!(outcome.notes.is_empty(), layout != "kohya_split_qkv", "{layout}: {:?}", outcome.notes);
        // Alphas from diffusers' adapter metadata become `.alpha` tensors; the metadata goes.
        let written = LoraFile::open(&out).unwrap();
        if layout == "diffusers_adapter_metadata" {
            assert!(!written.metadata().contains_key("lora_adapter_metadata"));
            let alpha = written.scalar_f32("text_encoder.text_model.encoder.layers.0.mlp.fc1.alpha").unwrap();
            assert_eq!(alpha, Some(8.0 * 16.0), "rsLoRA scale 16/√4 = 8 at rank 16");
        }
    }
}

#[test]
fn split_qkv_layers_are_resized_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("kohya_split_qkv.safetensors");
    // Parts of rank 2: qkv is rank 6, linear1 rank 8; the other layers rank 2.
    let before = ranks(&src);
    assert_eq!(before["lora_unet_double_blocks_0_img_attn_qkv"], 6);
    assert_eq!(before["lora_unet_single_blocks_0_linear1"], 8);
    let out = tmp.path().join("r4.safetensors");
    let settings = ResizeSettings::new(ResizeMethod::Fixed, 4, None).unwrap();
    let outcome = resize_file(&src, &out, &settings, Precision::F32).unwrap();
    assert!(outcome.notes[0].starts_with("7 fused layers"), "{:?}", outcome.notes);
    let after = ranks(&out);
    assert!(after.values().all(|r| *r == 4), "{after:?}");
    let (a, b) = (deltas(&src), deltas(&out));
    // Layers of rank ≤ 4 are kept exactly; the fused ones lose their smallest directions only.
    for (name, w) in &a {
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if before[name] <= 4 {
            assert!(max_diff(w, &b[name]) <= 1e-5, "{name}");
        } else {
            let residual: Vec<f64> = w.iter().zip(&b[name]).map(|(x, y)| x - y).collect();
            assert!(norm(&residual) < norm(w) && norm(&b[name]) < norm(w), "{name}");
            assert!(parse(name).unwrap().site.is_fused(), "{name}");
        }
    }
    let retained: Vec<&String> = outcome.verbose_lines.iter().filter(|l| l.contains("linear1")).collect();
    assert_eq!(retained.len(), 3, "{:?}", outcome.verbose_lines);
}

#[test]
fn merge_reads_every_layout_under_kohya_names() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = MergeSettings::new(8, None).unwrap();
    // kohya + diffusers + ComfyUI + XLabs: every layer is one kohya module, merged from each file
    // that has it.
    let inputs: Vec<(PathBuf, f32)> =
        ["kohya", "diffusers", "comfy", "xlabs"].iter().map(|l| (fixture(&format!("{l}.safetensors")), 0.5)).collect();
    let out = tmp.path().join("merged.safetensors");
    let outcome = merge_files(&inputs, &out, &settings, Precision::F32).unwrap();
    assert_eq!(outcome.family, keys::Family::Flux);
    for m in &outcome.modules {
        let n = parse(&m.name).unwrap();
        assert_eq!(n.site.kohya_name(), m.name, "kohya names only");
    }
    let sources: BTreeMap<&str, usize> = outcome.modules.iter().map(|m| (m.name.as_str(), m.sources)).collect();
    assert_eq!(sources["lora_unet_double_blocks_0_img_attn_qkv"], 4, "{sources:?}");
    assert_eq!(sources["lora_unet_double_blocks_1_img_attn_proj"], 4);
    assert_eq!(sources["lora_unet_single_blocks_0_linear1"], 4);
    assert_eq!(sources["lora_unet_single_blocks_0_modulation_lin"], 3, "XLabs has no modulation");
    assert_eq!(sources["lora_te1_text_model_encoder_layers_0_mlp_fc1"], 2, "kohya and diffusers CLIP-L");
    assert_eq!(sources["lora_te3_encoder_block_0_layer_0_SelfAttention_q"], 1);

    // A diffusers input merges exactly as its `convert --to kohya` copy does.
    let converted = tmp.path().join("diffusers-kohya.safetensors");
    convert_file(&fixture("diffusers.safetensors"), &converted, Target::Kohya, None, None).unwrap();
    let (a, b) = (tmp.path().join("a.safetensors"), tmp.path().join("b.safetensors"));
    merge_files(&[(fixture("diffusers.safetensors"), 0.7)], &a, &settings, Precision::F32).unwrap();
    merge_files(&[(converted, 0.7)], &b, &settings, Precision::F32).unwrap();
    let (fa, fb) = (LoraFile::open(&a).unwrap(), LoraFile::open(&b).unwrap());
    let names: Vec<&str> = fa.tensor_names().collect();
    assert_eq!(names, fb.tensor_names().collect::<Vec<_>>());
    for name in names {
        assert_eq!(fa.tensor_f32(name).unwrap(), fb.tensor_f32(name).unwrap(), "{name}");
    }
}
