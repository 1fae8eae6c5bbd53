//! Flux.1 LoRAs in every published layout (tests/fixtures/reference/flux_lora, made by
//! tools/reference/flux_lora_layouts_fixture.py): lorakit's reading, conversion and inspection
//! against diffusers' own conversion of the same files (ΔW = scale·B·A equal to ≤1e-5), round
//! trips, and sd-scripts' full-size module names (module_names.json, from sd-scripts' lora_flux.py).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use lorakit_lora::convert::{convert_file, convert_lora, ConvertError, Target};
use lorakit_lora::flux::{parse, Layout, Site};
use lorakit_lora::inspect::inspect_file;
use lorakit_lora::keys::{self, guess_family, Family};
use lorakit_lora::safetensors_file::{write_lora, LoraFile, Precision, Tensor};

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

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/flux_lora")
}

/// A dense ΔW (out × in, row-major) in f64.
#[derive(Debug, Clone)]
struct Delta {
    out: usize,
    inn: usize,
    w: Vec<f64>,
}

fn product(up: &[f32], down: &[f32], out: usize, rank: usize, inn: usize, scale: f64) -> Delta {
    let mut w = vec![0f64; out * inn];
    for o in 0..out {
        for k in 0..rank {
            let u = f64::from(up[o * rank + k]) * scale;
            for c in 0..inn {
                w[o * inn + c] += u * f64::from(down[k * inn + c]);
            }
        }
    }
    Delta { out, inn, w }
}

/// scale·up·down of every module of a file, by module name.
fn deltas(file: &LoraFile) -> BTreeMap<String, Delta> {
    let set = keys::modules(file).unwrap();
    set.modules
        .iter()
        .map(|m| {
            let up = file.tensor_f32(&m.up_key).unwrap();
            let down = file.tensor_f32(&m.down_key).unwrap();
            (m.name.clone(), product(&up, &down, m.out_features, m.rank, m.in_features, f64::from(m.scale())))
        })
        .collect()
}

/// diffusers' ΔW of each module for one layout: B·A, times alpha/rank where diffusers has a
/// network alpha.
fn expected(layout: &str) -> BTreeMap<String, Delta> {
    let file = LoraFile::open(dir().join("expected.safetensors")).unwrap();
    let prefix = format!("{layout}:");
    let mut out = BTreeMap::new();
    for key in file.tensor_names().filter(|k| k.starts_with(&prefix) && k.ends_with(".lora_A.weight")) {
        let module = &key[prefix.len()..key.len() - ".lora_A.weight".len()];
        let a_info = file.info(key).unwrap();
        let b_key = format!("{prefix}{module}.lora_B.weight");
        let b_info = file.info(&b_key).unwrap();
        let (rank, inn, rows) = (a_info.shape[0], a_info.shape[1], b_info.shape[0]);
        let alpha_key = format!("{prefix}{module}.alpha");
        let alpha = if file.contains(&alpha_key) { file.scalar_f32(&alpha_key).unwrap() } else { None };
        let scale = alpha.map_or(1.0, |a| f64::from(a) / rank as f64);
        let a = file.tensor_f32(key).unwrap();
        let b = file.tensor_f32(&b_key).unwrap();
        out.insert(module.to_string(), product(&b, &a, rows, rank, inn, scale));
    }
    assert!(!out.is_empty(), "no expected modules for {layout}");
    out
}

fn assert_close(a: &Delta, b: &Delta, what: &str) {
    assert_eq!((a.out, a.inn), (b.out, b.inn), "{what}: shapes");
    let worst = a.w.iter().zip(&b.w).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
    assert!(worst <= 1e-5, "{what}: ΔW differs by {worst}");
}

/// diffusers' ΔW of the parts `parts` of `site`, stacked as BFL fuses them (parts diffusers does
/// not have are zero), the final modulation's halves in BFL order unless `diffusers_order`.
fn stacked(
    expected: &BTreeMap<String, Delta>,
    site: Site,
    parts: std::ops::Range<usize>,
    inn: usize,
    out: usize,
    diffusers_order: bool,
) -> Delta {
    let names = site.diffusers_names();
    let widths = if parts == (0..site.part_count()) {
        site.part_widths(inn, out).unwrap()
    } else {
        vec![out / parts.len(); parts.len()]
    };
    let mut w = Vec::with_capacity(out * inn);
    for (j, width) in widths.iter().enumerate() {
        match expected.get(&names[parts.start + j]) {
            Some(d) => {
                assert_eq!((d.out, d.inn), (*width, inn), "{}", names[parts.start + j]);
                w.extend_from_slice(&d.w);
            }
            None => w.extend(std::iter::repeat_n(0.0, width * inn)),
        }
    }
    if site.swaps_halves() && !diffusers_order {
        let half = w.len() / 2;
        w.rotate_left(half);
    }
    Delta { out, inn, w }
}

/// The ΔW diffusers gives the layer (parts) a module of any layout names; `None` for T5
/// modules, which diffusers does not load.
fn expected_for(expected: &BTreeMap<String, Delta>, module: &str, d: &Delta) -> Option<Delta> {
    let n = parse(module).unwrap_or_else(|| panic!("{module} is not a Flux module"));
    if matches!(n.site, Site::T5(..)) {
        return None;
    }
    let diffusers_order = matches!(n.layout, Layout::Diffusers | Layout::KohyaDiffusers);
    Some(stacked(expected, n.site, n.parts, d.inn, d.out, diffusers_order))
}

#[test]
fn every_layout_reads_as_diffusers_reads_it() {
    for layout in LAYOUTS {
        let file = LoraFile::open(dir().join(format!("{layout}.safetensors"))).unwrap();
        let exp = expected(layout);
        let own = deltas(&file);
        let mut compared = 0;
        for (name, d) in &own {
            if let Some(e) = expected_for(&exp, name, d) {
                assert_close(d, &e, &format!("{layout} {name}"));
                compared += 1;
            }
        }
        assert!(compared > 0, "{layout}");
        let guess = guess_family(&file);
        assert_eq!(guess.family, Family::Flux, "{layout}: {guess:?}");
    }
}

#[test]
fn every_layout_converts_to_diffusers_as_diffusers_does() {
    // The diffusers-named files are already diffusers (refused as such below).
    for layout in LAYOUTS.into_iter().filter(|l| !matches!(*l, "diffusers" | "diffusers_adapter_metadata")) {
        let file = LoraFile::open(dir().join(format!("{layout}.safetensors"))).unwrap();
        let (bytes, outcome) = convert_lora(&file, Target::Peft, None).unwrap();
        assert_eq!(outcome.family, Family::Flux, "{layout}");
        let converted = LoraFile::from_bytes(bytes, format!("{layout}-peft")).unwrap();
        assert!(converted.tensor_names().all(|k| k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")));
        let got = deltas(&converted);
        let exp = expected(layout);
        let t5: BTreeSet<&String> = got.keys().filter(|k| k.starts_with("text_encoder_2.")).collect();
        let got_names: BTreeSet<&String> = got.keys().filter(|k| !t5.contains(k)).collect();
        // Parts a file lacks are zero in diffusers' view too (XLabs single blocks: no proj_mlp).
        let exp_names: BTreeSet<&String> = exp.keys().collect();
        assert_eq!(got_names, exp_names, "{layout}: module names");
        for name in got_names {
            assert_close(&got[name], &exp[name], &format!("{layout} → diffusers {name}"));
        }
        // T5: diffusers drops them; lorakit keeps scale·up·down of the file's own modules.
        let own = deltas(&file);
        for name in t5 {
            let kohya = parse(name).unwrap().site.kohya_name();
            assert_close(&got[name], &own[&kohya], &format!("{layout} T5 {name}"));
        }
    }
}

#[test]
fn every_layout_converts_to_kohya_with_diffusers_deltas() {
    for layout in LAYOUTS {
        let file = LoraFile::open(dir().join(format!("{layout}.safetensors"))).unwrap();
        let result = convert_lora(&file, Target::Kohya, Some(Family::Flux));
        let converted = match (layout, result) {
            ("kohya" | "kohya_split_qkv", Err(ConvertError::AlreadyTarget { .. })) => file,
            (_, Ok((bytes, _))) => LoraFile::from_bytes(bytes, format!("{layout}-kohya")).unwrap(),
            (_, Err(e)) => panic!("{layout}: {e}"),
        };
        let exp = expected(layout);
        let got = deltas(&converted);
        let mut covered = BTreeSet::new();
        for (name, d) in &got {
            let n = parse(name).unwrap();
            assert_eq!((n.layout, n.site.kohya_name()), (Layout::Kohya, name.clone()), "{layout}: {name}");
            if let Some(e) = expected_for(&exp, name, d) {
                assert_close(d, &e, &format!("{layout} → kohya {name}"));
                covered.extend(n.site.diffusers_names());
            }
            let has_alpha = converted.contains(&format!("{name}.alpha"));
            assert!(has_alpha || layout == "kohya", "{layout}: {name} has no alpha");
        }
        let lost: Vec<&String> = exp.keys().filter(|k| !covered.contains(*k)).collect();
        assert!(lost.is_empty(), "{layout}: diffusers modules with no kohya module: {lost:?}");
    }
}

#[test]
fn round_trips_keep_every_delta_and_rank() {
    let tmp = tempfile::tempdir().unwrap();
    // kohya → diffusers → kohya: the qkv / linear1 parts share a down, so the layers come back
    // at their rank with their alpha.
    let src = dir().join("kohya.safetensors");
    let peft = tmp.path().join("peft.safetensors");
    let back = tmp.path().join("back.safetensors");
    let out = convert_file(&src, &peft, Target::Peft, None, None).unwrap();
    assert!(out.notes.iter().any(|n| n.contains("T5")), "{:?}", out.notes);
    convert_file(&peft, &back, Target::Kohya, None, None).unwrap();
    let (a, b) = (LoraFile::open(&src).unwrap(), LoraFile::open(&back).unwrap());
    let (da, db) = (deltas(&a), deltas(&b));
    assert_eq!(da.keys().collect::<Vec<_>>(), db.keys().collect::<Vec<_>>());
    for (name, d) in &da {
        assert_close(&db[name], d, &format!("round trip {name}"));
    }
    let ranks = |f: &LoraFile| -> BTreeMap<String, usize> {
        keys::modules(f).unwrap().modules.into_iter().map(|m| (m.name, m.rank)).collect()
    };
    assert_eq!(ranks(&a), ranks(&b), "ranks after the round trip");

    // split_qkv files: cut into their parts (per-part rank), fused back block-diagonally.
    let split = dir().join("kohya_split_qkv.safetensors");
    let (peft2, back2) = (tmp.path().join("p2.safetensors"), tmp.path().join("b2.safetensors"));
    let out = convert_file(&split, &peft2, Target::Peft, Some(Precision::F32), None).unwrap();
    assert!(out.notes.iter().any(|n| n.contains("split_qkv")), "{:?}", out.notes);
    let p2 = LoraFile::open(&peft2).unwrap();
    assert_eq!(p2.info("transformer.transformer_blocks.0.attn.to_q.lora_A.weight").unwrap().shape, [2, 48]);
    convert_file(&peft2, &back2, Target::Kohya, None, None).unwrap();
    let (s, b2) = (deltas(&LoraFile::open(&split).unwrap()), deltas(&LoraFile::open(&back2).unwrap()));
    for (name, d) in &s {
        assert_close(&b2[name], d, &format!("split_qkv round trip {name}"));
    }

    // diffusers → kohya → diffusers.
    let src = dir().join("diffusers.safetensors");
    let (k3, p3) = (tmp.path().join("k3.safetensors"), tmp.path().join("p3.safetensors"));
    let out = convert_file(&src, &k3, Target::Kohya, None, None).unwrap();
    assert!(out.notes.iter().any(|n| n.contains("zero rows")), "{:?}", out.notes);
    convert_file(&k3, &p3, Target::Peft, None, None).unwrap();
    let (d0, d3) = (deltas(&LoraFile::open(&src).unwrap()), deltas(&LoraFile::open(&p3).unwrap()));
    for (name, d) in &d0 {
        assert_close(&d3[name], d, &format!("diffusers round trip {name}"));
    }
    // The parts the file lacked come back as zero modules, nothing else is added.
    let extra: Vec<&String> = d3.keys().filter(|k| !d0.contains_key(*k)).collect();
    assert_eq!(
        extra,
        ["transformer.single_transformer_blocks.2.proj_mlp", "transformer.transformer_blocks.1.attn.to_k"]
    );
    assert!(extra.iter().all(|k| d3[*k].w.iter().all(|v| *v == 0.0)));
}

#[test]
fn adapter_metadata_alphas_become_kohya_alphas() {
    let file = LoraFile::open(dir().join("diffusers_adapter_metadata.safetensors")).unwrap();
    let (bytes, _) = convert_lora(&file, Target::Kohya, None).unwrap();
    let kohya = LoraFile::from_bytes(bytes, "adapter-kohya").unwrap();
    assert!(!kohya.metadata().contains_key("lora_adapter_metadata"));
    let alpha = |name: &str| kohya.scalar_f32(&format!("{name}.alpha")).unwrap().unwrap();
    // lora_alpha 8 at rank 4; the alpha_pattern's 2; rsLoRA 16/√4 = 8 → alpha 32 at rank 4.
    assert_eq!(alpha("lora_unet_txt_in"), 8.0);
    assert_eq!(alpha("lora_unet_single_blocks_0_linear2"), 2.0);
    assert_eq!(alpha("lora_te1_text_model_encoder_layers_0_mlp_fc1"), 32.0);
    // The fused qkv of block 1 came from three parts with their own downs: rank 12, alpha 2 × 12.
    assert_eq!(alpha("lora_unet_double_blocks_1_img_attn_qkv"), 24.0);
}

#[test]
fn refusals_name_the_file_and_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.safetensors");
    for already in ["diffusers", "diffusers_adapter_metadata"] {
        let err = convert_file(&dir().join(format!("{already}.safetensors")), &out, Target::Peft, None, None);
        assert!(matches!(err, Err(ConvertError::AlreadyTarget { .. })), "{already}: {err:?}");
    }
    let err = convert_file(&dir().join("kohya.safetensors"), &out, Target::Kohya, None, None).unwrap_err();
    assert!(err.to_string().contains("kohya.safetensors") && err.to_string().contains("already"), "{err}");
    // diffusers q/k parts of different widths are not one Flux qkv.
    let mut t = std::collections::BTreeMap::new();
    for (part, rows) in [("to_q", 6), ("to_k", 9)] {
        let name = format!("transformer.transformer_blocks.0.attn.{part}");
        t.insert(format!("{name}.lora_A.weight"), Tensor::new(vec![2, 6], vec![0.1; 12]));
        t.insert(format!("{name}.lora_B.weight"), Tensor::new(vec![rows, 2], vec![0.1; rows * 2]));
    }
    let odd = tmp.path().join("odd.safetensors");
    write_lora(&odd, &t, &Default::default(), Precision::F32).unwrap();
    let err = convert_file(&odd, &out, Target::Kohya, None, Some(Family::Flux)).unwrap_err().to_string();
    assert!(err.contains("odd.safetensors") && err.contains("q/k/v widths [6, 9]"), "{err}");
    assert!(!out.exists());
}

#[test]
fn inspect_labels_every_layout_and_matches_diffusers_norms() {
    for layout in LAYOUTS {
        let path = dir().join(format!("{layout}.safetensors"));
        let report = inspect_file(&path).unwrap();
        assert!(report.base_model.starts_with("Flux"), "{layout}: {}", report.base_model);
        assert!(report.layout.is_some(), "{layout}");
        let exp = expected(layout);
        let file = LoraFile::open(&path).unwrap();
        let own = deltas(&file);
        for m in &report.modules {
            assert_ne!(m.block, "OTHER", "{layout}: {}", m.name);
            let n = parse(&m.name).unwrap();
            let want_block = match n.site {
                Site::Double(i, _) => format!("D{i:02}"),
                Site::Single(i, _) => format!("S{i:02}"),
                Site::Clip(..) => "TE1".into(),
                Site::T5(..) => "TE3".into(),
                Site::Global(_) if n.site.path().starts_with("final_layer") => "FINAL".into(),
                Site::Global(_) => "BASE".into(),
            };
            assert_eq!(m.block, want_block, "{layout}: {}", m.name);
            if let Some(e) = expected_for(&exp, &m.name, &own[&m.name]) {
                let norm = e.w.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!((m.norm - norm).abs() <= 1e-5 * norm.max(1.0), "{layout} {}: {} vs {norm}", m.name, m.norm);
            }
        }
        let labels: BTreeSet<&str> = report.blocks.iter().map(|b| b.block.as_str()).collect();
        let want: &[&str] = match layout {
            "diffusers_variants" => &["BASE", "D00", "S01"],
            "diffusers_adapter_metadata" => &["BASE", "D01", "S00", "TE1"],
            _ => &["D00", "D01", "S00", "S02"],
        };
        assert!(want.iter().all(|b| labels.contains(b)), "{layout}: {labels:?}");
    }
    let kohya = inspect_file(&dir().join("kohya.safetensors")).unwrap();
    assert_eq!(kohya.base_model, "Flux", "sd-scripts' ss_base_model_version flux1 names no variant");
    let order: Vec<&str> = kohya.blocks.iter().map(|b| b.block.as_str()).collect();
    assert_eq!(order, ["TE1", "TE3", "BASE", "D00", "D01", "S00", "S01", "S02", "FINAL"]);
    assert_eq!(kohya.modules_per_component["TE3"], 14);
    let xlabs = inspect_file(&dir().join("xlabs.safetensors")).unwrap();
    assert_eq!(xlabs.base_model, "Flux (dev)", "modelspec flux-1-dev/lora");
    assert_eq!(xlabs.layout.as_deref(), Some("XLabs"));
    let split = inspect_file(&dir().join("kohya_split_qkv.safetensors")).unwrap();
    assert!(split.notes.iter().any(|n| n.starts_with("7 fused")), "{:?}", split.notes);
    let diffusers = inspect_file(&dir().join("diffusers.safetensors")).unwrap();
    assert_eq!(diffusers.layout.as_deref(), Some("diffusers/PEFT"));
    assert_eq!(diffusers.modules_per_component["TE1"], 12);
}

/// sd-scripts' module names for the full-size model (module_names.json).
fn sd_scripts_names() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("module_names.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn sd_scripts_full_size_names_are_flux_modules_with_their_blocks() {
    let doc = sd_scripts_names();
    let variants = doc["variants"].as_object().unwrap();
    for (variant, modules) in variants {
        for m in modules.as_array().unwrap() {
            let name = m[0].as_str().unwrap();
            let (inn, out) = (m[1].as_u64().unwrap() as usize, m[2].as_u64().unwrap() as usize);
            let n = parse(name).unwrap_or_else(|| panic!("{variant}: {name} not recognised"));
            assert_eq!((n.layout, n.site.kohya_name()), (Layout::Kohya, name.to_string()), "{variant}");
            assert_eq!(n.parts, 0..n.site.part_count(), "{variant}: {name}");
            if n.site.is_fused() {
                let widths = n.site.part_widths(inn, out).unwrap();
                let want = if widths.len() == 4 { vec![3072, 3072, 3072, 12288] } else { vec![3072; 3] };
                assert_eq!(widths, want, "{name}");
            }
            let block = n.site.block().to_string();
            let index = |prefix: &str| {
                name.strip_prefix(prefix).and_then(|r| r.split('_').next()).map(|i| i.parse::<u32>().unwrap())
            };
            let want = if let Some(i) = index("lora_unet_double_blocks_") {
                format!("D{i:02}")
            } else if let Some(i) = index("lora_unet_single_blocks_") {
                format!("S{i:02}")
            } else if name.starts_with("lora_te1_") {
                "TE1".into()
            } else if name.starts_with("lora_te3_") {
                "TE3".into()
            } else {
                "BASE".into()
            };
            assert_eq!(block, want, "{variant}: {name}");
        }
    }
    let count = |v: &str, f: &dyn Fn(&str) -> bool| {
        variants[v].as_array().unwrap().iter().filter(|m| f(m[0].as_str().unwrap())).count()
    };
    assert_eq!(count("unet_only", &|_| true), 304);
    assert_eq!(count("default", &|n| n.starts_with("lora_te1_")), 72);
    assert_eq!(count("train_t5xxl", &|n| n.starts_with("lora_te3_")), 168);
    let blocks: BTreeSet<String> = variants["unet_only"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| parse(m[0].as_str().unwrap()).unwrap().site.block().to_string())
        .collect();
    assert_eq!(blocks.len(), 19 + 38);
    assert_eq!(count("in_dims", &|n| parse(n).unwrap().site.block().to_string() == "BASE"), 8);
    assert_eq!(count("in_dims_schnell", &|n| n.contains("guidance_in")), 0);

    // The layers lorakit knows for the full-size model are exactly sd-scripts' names, plus the
    // final layer other trainers adapt (sd-scripts never targets it).
    let ours: BTreeSet<String> = Site::all(19, 38, 12, 24).into_iter().map(Site::kohya_name).collect();
    let theirs: BTreeSet<String> = variants
        .values()
        .flat_map(|v| v.as_array().unwrap().iter().map(|m| m[0].as_str().unwrap().to_string()))
        .collect();
    let only_ours: Vec<&String> = ours.difference(&theirs).collect();
    assert_eq!(only_ours, ["lora_unet_final_layer_adaLN_modulation_1", "lora_unet_final_layer_linear"]);
    assert!(theirs.is_subset(&ours));
}

/// Flux names with shapes no Flux layer has (odd widths, one-row layers, parts of a fused layer
/// that do not add up): convert, inspect, resize and merge answer with a result — converted or
/// refused — never a panic.
#[test]
fn odd_shapes_never_panic() {
    use lorakit_lora::merge::{merge_files, MergeSettings};
    use lorakit_lora::resize::{ResizeMethod, ResizeSettings};
    use lorakit_lora::resize_file::resize_file;
    let tmp = tempfile::tempdir().unwrap();
    let names = [
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_single_blocks_0_linear1",
        "lora_unet_final_layer_adaLN_modulation_1",
        "transformer.norm_out.linear",
        "transformer.single_transformer_blocks.0.proj_mlp",
        "transformer.single_transformer_blocks.0.attn.to_q",
        "transformer.transformer_blocks.0.attn.add_k_proj",
        "single_blocks.0.processor.qkv_lora",
        "double_blocks.0.processor.qkv_lora2",
    ];
    let shapes = [(1, 1, 1), (3, 2, 1), (5, 2, 2), (7, 3, 3), (2, 7, 2), (12, 2, 4), (13, 3, 2)];
    let mut case = 0;
    for (i, a) in names.iter().enumerate() {
        for b in names.iter().skip(i) {
            for &(out, inn, rank) in &shapes {
                let mut t = std::collections::BTreeMap::new();
                for (n, (o, r)) in [(a, (out, rank)), (b, (out + 1, rank.max(2) - 1))] {
                    let (down, up) = if n.starts_with("lora_unet") {
                        (".lora_down.weight", ".lora_up.weight")
                    } else if n.contains("processor") {
                        (".down.weight", ".up.weight")
                    } else {
                        (".lora_A.weight", ".lora_B.weight")
                    };
                    let vals = |len: usize| (0..len).map(|v| (v % 5) as f32 * 0.1 - 0.2).collect::<Vec<_>>();
                    t.insert(format!("{n}{down}"), Tensor::new(vec![r, inn], vals(r * inn)));
                    t.insert(format!("{n}{up}"), Tensor::new(vec![o, r], vals(o * r)));
                }
                case += 1;
                let path = tmp.path().join(format!("case{case}.safetensors"));
                write_lora(&path, &t, &Default::default(), Precision::F32).unwrap();
                let file = LoraFile::open(&path).unwrap();
                for to in [Target::Kohya, Target::Peft] {
                    if let Err(e) = convert_lora(&file, to, Some(Family::Flux)) {
                        assert!(e.to_string().contains(&format!("case{case}.safetensors")), "{e}");
                    }
                }
                let _ = inspect_file(&path);
                let out_path = tmp.path().join("out.safetensors");
                let _ = resize_file(
                    &path,
                    &out_path,
                    &ResizeSettings::new(ResizeMethod::Fixed, 2, None).unwrap(),
                    Precision::F32,
                );
                let _ = merge_files(
                    &[(path.clone(), 1.0)],
                    &out_path,
                    &MergeSettings::new(2, None).unwrap(),
                    Precision::F32,
                );
            }
        }
    }
    assert!(case > 300);
}
