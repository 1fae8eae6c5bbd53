//! SD3 / SD3.5 LoRAs in the published layouts (tests/fixtures/reference/sd3_lora, made by
//! tools/reference/sd3_lora_layouts_fixture.py): lorakit's reading, conversion and inspection
//! against diffusers' own SD3 checkpoint conversion of the same deltas (ΔW = scale·B·A equal to
//! ≤1e-6), round trips, the files diffusers loaded (sd3_lora_diffusers_load.py), and sd-scripts'
//! full-size module names (module_names.json, from sd-scripts' lora_sd3.py).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use lorakit_lora::convert::{convert_file, convert_lora, ConvertError, Target};
use lorakit_lora::inspect::inspect_file;
use lorakit_lora::keys::{self, guess_family, Family};
use lorakit_lora::safetensors_file::{write_lora, LoraFile, Precision, Tensor};
use lorakit_lora::sd3::{parse, Arch, Layout, Site};

const LAYOUTS: [&str; 5] = ["kohya", "kohya_split_qkv", "comfy", "diffusers", "onetrainer"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd3_lora")
}

/// A dense ΔW (out × in, row-major; convs flattened as in_channels × kh × kw) in f64.
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

/// diffusers' ΔW of each module for one layout (B already holds alpha/rank).
fn expected(layout: &str) -> BTreeMap<String, Delta> {
    let file = LoraFile::open(dir().join("expected.safetensors")).unwrap();
    let prefix = format!("{layout}:");
    let mut out = BTreeMap::new();
    for key in file.tensor_names().filter(|k| k.starts_with(&prefix) && k.ends_with(".lora_A.weight")) {
        let module = &key[prefix.len()..key.len() - ".lora_A.weight".len()];
        let a_shape = &file.info(key).unwrap().shape;
        let b_key = format!("{prefix}{module}.lora_B.weight");
        let (rank, rows) = (a_shape[0], file.info(&b_key).unwrap().shape[0]);
        let inn = a_shape[1..].iter().product();
        let (a, b) = (file.tensor_f32(key).unwrap(), file.tensor_f32(&b_key).unwrap());
        out.insert(module.to_string(), product(&b, &a, rows, rank, inn, 1.0));
    }
    assert!(!out.is_empty(), "no expected modules for {layout}");
    out
}

fn assert_close(a: &Delta, b: &Delta, what: &str) {
    assert_eq!((a.out, a.inn), (b.out, b.inn), "{what}: shapes");
    let worst = a.w.iter().zip(&b.w).map(|(x, y)| (x - y).abs()).fold(0f64, f64::max);
    assert!(worst <= 1e-6, "{what}: ΔW differs by {worst}");
}

/// diffusers' ΔW of the parts `parts` of `site`, stacked as SAI fuses them (missing parts zero),
/// a swapped modulation's halves in SAI order unless `diffusers_order`.
fn stacked(
    expected: &BTreeMap<String, Delta>,
    site: Site,
    parts: std::ops::Range<usize>,
    inn: usize,
    out: usize,
    diffusers_order: bool,
) -> Delta {
    let names = site.diffusers_names();
    let width = out / parts.len();
    let mut w = Vec::with_capacity(out * inn);
    for j in parts.clone() {
        match expected.get(&names[j]) {
            Some(d) => {
                assert_eq!((d.out, d.inn), (width, inn), "{}", names[j]);
                w.extend_from_slice(&d.w);
            }
            None => w.extend(std::iter::repeat_n(0.0, width * inn)),
        }
    }
    if site.swaps_halves(inn, out) && !diffusers_order {
        let half = w.len() / 2;
        w.rotate_left(half);
    }
    Delta { out, inn, w }
}

/// The ΔW diffusers gives the layer (parts) a module of any layout names.
fn expected_for(expected: &BTreeMap<String, Delta>, module: &str, d: &Delta) -> Delta {
    let n = parse(module).unwrap_or_else(|| panic!("{module} is not an SD3 module"));
    stacked(expected, n.site, n.parts, d.inn, d.out, n.layout.diffusers_halves())
}

#[test]
fn every_layout_reads_as_diffusers_reads_it() {
    for layout in LAYOUTS {
        let file = LoraFile::open(dir().join(format!("{layout}.safetensors"))).unwrap();
        let exp = expected(layout);
        for (name, d) in &deltas(&file) {
            assert_close(d, &expected_for(&exp, name, d), &format!("{layout} {name}"));
        }
        let guess = guess_family(&file);
        assert_eq!((guess.family, guess.from_keys), (Family::Sd3, Family::Sd3), "{layout}: {guess:?}");
    }
}

#[test]
fn every_layout_converts_to_diffusers_as_diffusers_does() {
    for layout in LAYOUTS.into_iter().filter(|l| *l != "diffusers") {
        let file = LoraFile::open(dir().join(format!("{layout}.safetensors"))).unwrap();
        let (bytes, outcome) = convert_lora(&file, Target::Peft, None).unwrap();
        assert_eq!(outcome.family, Family::Sd3, "{layout}");
        let converted = LoraFile::from_bytes(bytes, format!("{layout}-peft")).unwrap();
        assert!(converted.tensor_names().all(|k| k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")));
        // The patch-embedding conv keeps its 4-D shapes.
        if let Some(info) = converted.info("transformer.pos_embed.proj.lora_A.weight") {
            assert_eq!(info.shape.len(), 4, "{layout}");
            assert_eq!(converted.info("transformer.pos_embed.proj.lora_B.weight").unwrap().shape[2..], [1, 1]);
        }
        let got = deltas(&converted);
        let exp = expected(layout);
        assert_eq!(got.keys().collect::<Vec<_>>(), exp.keys().collect::<Vec<_>>(), "{layout}: module names");
        for (name, d) in &got {
            assert_close(d, &exp[name], &format!("{layout} → diffusers {name}"));
        }
        let t5 = outcome.notes.iter().any(|n| n.contains("text_encoder_3"));
        assert_eq!(t5, layout == "kohya", "{layout}: {:?}", outcome.notes);
    }
}

#[test]
fn every_layout_converts_to_kohya_with_diffusers_deltas() {
    for layout in LAYOUTS {
        let file = LoraFile::open(dir().join(format!("{layout}.safetensors"))).unwrap();
        let converted = match (layout, convert_lora(&file, Target::Kohya, None)) {
            ("kohya" | "kohya_split_qkv", Err(ConvertError::AlreadyTarget { .. })) => file,
            (_, Ok((bytes, _))) => LoraFile::from_bytes(bytes, format!("{layout}-kohya")).unwrap(),
            (_, Err(e)) => panic!("{layout}: {e}"),
        };
        let exp = expected(layout);
        let mut covered = BTreeSet::new();
        for (name, d) in &deltas(&converted) {
            let n = parse(name).unwrap();
            assert_eq!((n.layout, n.site.kohya_name()), (Layout::Kohya, name.clone()), "{layout}: {name}");
            assert_close(d, &expected_for(&exp, name, d), &format!("{layout} → kohya {name}"));
            covered.extend(n.site.diffusers_names());
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
    // kohya → diffusers → kohya: the q/k/v parts share a down, so each qkv comes back at its rank.
    let src = dir().join("kohya.safetensors");
    let (peft, back) = (tmp.path().join("peft.safetensors"), tmp.path().join("back.safetensors"));
    convert_file(&src, &peft, Target::Peft, None, None).unwrap();
    convert_file(&peft, &back, Target::Kohya, None, None).unwrap();
    let (a, b) = (LoraFile::open(&src).unwrap(), LoraFile::open(&back).unwrap());
    let (da, db) = (deltas(&a), deltas(&b));
    assert_eq!(da.keys().collect::<Vec<_>>(), db.keys().collect::<Vec<_>>());
    for (name, d) in &da {
        assert_close(&db[name], d, &format!("round trip {name}"));
    }
    let shapes = |f: &LoraFile| -> BTreeMap<String, (usize, Vec<usize>)> {
        let set = keys::modules(f).unwrap();
        set.modules.into_iter().map(|m| (m.name, (m.rank, f.info(&m.down_key).unwrap().shape.clone()))).collect()
    };
    assert_eq!(shapes(&a), shapes(&b), "ranks and down shapes after the round trip");

    // split_qkv: cut into its parts (per-part rank 2), fused back block-diagonally.
    let split = dir().join("kohya_split_qkv.safetensors");
    let (peft2, back2) = (tmp.path().join("p2.safetensors"), tmp.path().join("b2.safetensors"));
    let out = convert_file(&split, &peft2, Target::Peft, Some(Precision::F32), None).unwrap();
    assert!(out.notes.iter().any(|n| n.starts_with("7 fused qkv layers held sd-scripts split_qkv")), "{:?}", out.notes);
    let p2 = LoraFile::open(&peft2).unwrap();
    assert_eq!(p2.info("transformer.transformer_blocks.0.attn2.to_k.lora_A.weight").unwrap().shape, [2, 16]);
    convert_file(&peft2, &back2, Target::Kohya, None, None).unwrap();
    let (s, b2) = (deltas(&LoraFile::open(&split).unwrap()), deltas(&LoraFile::open(&back2).unwrap()));
    for (name, d) in &s {
        assert_close(&b2[name], d, &format!("split_qkv round trip {name}"));
    }

    // diffusers → kohya → diffusers.
    let src = dir().join("diffusers.safetensors");
    let (k3, p3) = (tmp.path().join("k3.safetensors"), tmp.path().join("p3.safetensors"));
    let out = convert_file(&src, &k3, Target::Kohya, None, None).unwrap();
    assert!(out.notes.iter().any(|n| n.starts_with("2 fused qkv layers lack")), "{:?}", out.notes);
    convert_file(&k3, &p3, Target::Peft, None, None).unwrap();
    let (d0, d3) = (deltas(&LoraFile::open(&src).unwrap()), deltas(&LoraFile::open(&p3).unwrap()));
    for (name, d) in &d0 {
        assert_close(&d3[name], d, &format!("diffusers round trip {name}"));
    }
    // The parts the file lacked come back as zero modules, nothing else is added.
    let extra: Vec<&String> = d3.keys().filter(|k| !d0.contains_key(*k)).collect();
    assert_eq!(
        extra,
        ["transformer.transformer_blocks.0.attn.add_v_proj", "transformer.transformer_blocks.1.attn.to_k"]
    );
    assert!(extra.iter().all(|k| d3[*k].w.iter().all(|v| *v == 0.0)));
}

#[test]
fn refusals_name_the_file_and_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.safetensors");
    let err = convert_file(&dir().join("diffusers.safetensors"), &out, Target::Peft, None, None).unwrap_err();
    assert!(matches!(err, ConvertError::AlreadyTarget { .. }), "{err}");
    let err = convert_file(&dir().join("kohya.safetensors"), &out, Target::Kohya, None, None).unwrap_err();
    assert!(err.to_string().contains("kohya.safetensors") && err.to_string().contains("already"), "{err}");
    let write = |name: &str, t: &BTreeMap<String, Tensor>| {
        let p = tmp.path().join(name);
        write_lora(&p, t, &Default::default(), Precision::F32).unwrap();
        p
    };
    // diffusers q/k parts of different widths are not one qkv.
    let mut t = BTreeMap::new();
    for (part, rows) in [("to_q", 6), ("to_k", 9)] {
        let name = format!("transformer.transformer_blocks.0.attn.{part}");
        t.insert(format!("{name}.lora_A.weight"), Tensor::new(vec![2, 6], vec![0.1; 12]));
        t.insert(format!("{name}.lora_B.weight"), Tensor::new(vec![rows, 2], vec![0.1; rows * 2]));
    }
    let odd = write("odd.safetensors", &t);
    let err = convert_file(&odd, &out, Target::Kohya, None, Some(Family::Sd3)).unwrap_err().to_string();
    assert!(err.contains("odd.safetensors") && err.contains("q/k/v widths [6, 9]"), "{err}");
    // A linear module where SD3 has its patch-embedding conv, and a conv where it has a linear.
    let mut t = BTreeMap::new();
    t.insert("lora_unet_x_embedder_proj.lora_down.weight".into(), Tensor::new(vec![2, 16], vec![0.1; 32]));
    t.insert("lora_unet_x_embedder_proj.lora_up.weight".into(), Tensor::new(vec![16, 2], vec![0.1; 32]));
    let err = convert_file(&write("lin.safetensors", &t), &out, Target::Peft, None, None).unwrap_err().to_string();
    assert!(err.contains("lin.safetensors") && err.contains("is a linear module but `x_embedder.proj`"), "{err}");
    let mut t = BTreeMap::new();
    let name = "lora_unet_joint_blocks_0_x_block_mlp_fc1";
    t.insert(format!("{name}.lora_down.weight"), Tensor::new(vec![2, 4, 2, 2], vec![0.1; 32]));
    t.insert(format!("{name}.lora_up.weight"), Tensor::new(vec![16, 2, 1, 1], vec![0.1; 32]));
    let err = convert_file(&write("conv.safetensors", &t), &out, Target::Peft, None, None).unwrap_err().to_string();
    assert!(err.contains("conv.safetensors") && err.contains("conv 2x2 module"), "{err}");
    // A name SD3 does not have, in an SD3 file.
    let mut t = BTreeMap::new();
    for name in ["lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_joint_blocks_0_x_block_attn_ln_q"] {
        t.insert(format!("{name}.lora_down.weight"), Tensor::new(vec![2, 4], vec![0.1; 8]));
        t.insert(format!("{name}.lora_up.weight"), Tensor::new(vec![12, 2], vec![0.1; 24]));
    }
    let err = convert_file(&write("ln.safetensors", &t), &out, Target::Peft, None, None).unwrap_err().to_string();
    assert!(err.contains("`lora_unet_joint_blocks_0_x_block_attn_ln_q` is not a LoRA-targetable SD3 module"), "{err}");
    assert!(!out.exists());
}

#[test]
fn inspect_labels_every_layout_and_matches_diffusers_norms() {
    for layout in LAYOUTS {
        let path = dir().join(format!("{layout}.safetensors"));
        let report = inspect_file(&path).unwrap();
        assert_eq!(report.base_model, "SD3 (3.5 Medium)", "{layout}: attn2 modules show SD3.5 Medium");
        let exp = expected(layout);
        let own = deltas(&LoraFile::open(&path).unwrap());
        for m in &report.modules {
            let n = parse(&m.name).unwrap();
            let want_block = match n.site {
                Site::Joint(i, _) => format!("J{i:02}"),
                Site::ClipL(..) => "TE1".into(),
                Site::ClipG(..) => "TE2".into(),
                Site::T5(..) => "TE3".into(),
                Site::Global(_) if n.site.path().starts_with("final_layer") => "FINAL".into(),
                Site::Global(_) => "BASE".into(),
            };
            assert_eq!(m.block, want_block, "{layout}: {}", m.name);
            assert_eq!(m.component, n.site.component().label(), "{layout}: {}", m.name);
            let e = expected_for(&exp, &m.name, &own[&m.name]);
            let norm = e.w.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((m.norm - norm).abs() <= 1e-5 * norm.max(1.0), "{layout} {}: {} vs {norm}", m.name, m.norm);
        }
    }
    let kohya = inspect_file(&dir().join("kohya.safetensors")).unwrap();
    assert_eq!(kohya.layout.as_deref(), Some("kohya/sd-scripts"));
    let order: Vec<&str> = kohya.blocks.iter().map(|b| b.block.as_str()).collect();
    assert_eq!(order, ["TE1", "TE2", "TE3", "BASE", "J00", "J01", "J02", "FINAL"]);
    assert_eq!(kohya.modules_per_kind["conv 2x2"], 1);
    assert_eq!(kohya.modules_per_component["TE2"], 12);
    assert_eq!(kohya.modules_per_component["TE3"], 14);
    let split = inspect_file(&dir().join("kohya_split_qkv.safetensors")).unwrap();
    assert!(
        split.notes.iter().any(|n| n.starts_with("7 fused qkv layers hold sd-scripts split_qkv")),
        "{:?}",
        split.notes
    );
    let comfy = inspect_file(&dir().join("comfy.safetensors")).unwrap();
    assert_eq!(comfy.layout.as_deref(), Some("SAI/ComfyUI"));
    let diffusers = inspect_file(&dir().join("diffusers.safetensors")).unwrap();
    assert_eq!(diffusers.layout.as_deref(), Some("diffusers/PEFT"));
    assert_eq!((diffusers.modules_per_component["TE1"], diffusers.modules_per_component["TE2"]), (12, 12));
    let onetrainer = inspect_file(&dir().join("onetrainer.safetensors")).unwrap();
    assert_eq!(onetrainer.layout.as_deref(), Some("kohya/sd-scripts + kohya-style diffusers names"));
}

/// SD3 names with shapes no SD3 layer has: convert, inspect, resize and merge answer with a result —
/// converted or refused — never a panic.
#[test]
fn odd_shapes_never_panic() {
    use lorakit_lora::merge::{merge_files, MergeSettings};
    use lorakit_lora::resize::{ResizeMethod, ResizeSettings};
    use lorakit_lora::resize_file::resize_file;
    let tmp = tempfile::tempdir().unwrap();
    let names = [
        "lora_unet_joint_blocks_0_x_block_attn_qkv",
        "lora_unet_joint_blocks_2_context_block_adaLN_modulation_1",
        "lora_unet_final_layer_adaLN_modulation_1",
        "lora_unet_x_embedder_proj",
        "transformer.norm_out.linear",
        "transformer.transformer_blocks.2.norm1_context.linear",
        "transformer.transformer_blocks.0.attn.add_k_proj",
        "transformer.transformer_blocks.0.attn2.to_q",
        "transformer.pos_embed.proj",
    ];
    let shapes = [(1, 1, 1), (3, 2, 1), (5, 2, 2), (4, 2, 3), (2, 7, 2), (12, 2, 4)];
    let mut case = 0;
    for (i, a) in names.iter().enumerate() {
        for b in names.iter().skip(i) {
            for &(out, inn, rank) in &shapes {
                let mut t = BTreeMap::new();
                for (n, (o, r)) in [(a, (out, rank)), (b, (out + 1, rank.max(2) - 1))] {
                    let (down, up) = if n.starts_with("lora_unet") {
                        (".lora_down.weight", ".lora_up.weight")
                    } else {
                        (".lora_A.weight", ".lora_B.weight")
                    };
                    let vals = |len: usize| (0..len).map(|v| (v % 5) as f32 * 0.1 - 0.2).collect::<Vec<_>>();
                    // The conv names get conv shapes half of the time.
                    let conv = n.contains("embed") && n.contains("proj") && case % 2 == 0;
                    let (ds, us) =
                        if conv { (vec![r, inn, 2, 2], vec![o, r, 1, 1]) } else { (vec![r, inn], vec![o, r]) };
                    t.insert(format!("{n}{down}"), Tensor::new(ds.clone(), vals(ds.iter().product())));
                    t.insert(format!("{n}{up}"), Tensor::new(us.clone(), vals(us.iter().product())));
                }
                case += 1;
                let path = tmp.path().join(format!("case{case}.safetensors"));
                write_lora(&path, &t, &Default::default(), Precision::F32).unwrap();
                let file = LoraFile::open(&path).unwrap();
                for to in [Target::Kohya, Target::Peft] {
                    if let Err(e) = convert_lora(&file, to, Some(Family::Sd3)) {
                        assert!(e.to_string().contains(&format!("case{case}.safetensors")), "{e}");
                    }
                }
                let _ = inspect_file(&path);
                let out_path = tmp.path().join("out.safetensors");
                let settings = ResizeSettings::new(ResizeMethod::Fixed, 2, None).unwrap();
                let _ = resize_file(&path, &out_path, &settings, Precision::F32);
                let merge = MergeSettings::new(2, None).unwrap();
                let _ = merge_files(&[(path.clone(), 1.0)], &out_path, &merge, Precision::F32);
            }
        }
    }
    assert!(case > 250);
}

/// The tiny fixture's layers (manifest.json's config) are exactly the kohya file's modules.
#[test]
fn tiny_fixture_arch_is_every_layer_of_the_kohya_file() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap();
    let config = &manifest["config"];
    let arch = Arch {
        depth: config["depth"].as_u64().unwrap() as u32,
        attn2_blocks: config["attn2_blocks"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect(),
    };
    let layers = |key: &str, i: usize| config[key][i].as_u64().unwrap() as u32;
    let ours: Vec<String> = Site::all(&arch, layers("clip_l", 2), layers("clip_g", 2), layers("t5", 3))
        .into_iter()
        .map(Site::kohya_name)
        .collect();
    let file = LoraFile::open(dir().join("kohya.safetensors")).unwrap();
    let theirs: BTreeSet<String> = keys::modules(&file).unwrap().modules.into_iter().map(|m| m.name).collect();
    assert_eq!(ours.iter().cloned().collect::<BTreeSet<_>>(), theirs);
    assert_eq!(ours.len(), theirs.len());
}

/// sd-scripts' module names for the full-size SD3 Medium, SD3.5 Medium and SD3.5 Large
/// (module_names.json, from lora_sd3.create_network): lorakit's layers of each architecture are
/// exactly these, in sd-scripts' order, with the widths and block labels of the layers they name.
#[test]
fn sd_scripts_full_size_names_are_sd3_modules_in_order() {
    let text = std::fs::read_to_string(dir().join("module_names.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = |v: &serde_json::Value| -> Vec<(String, usize, usize)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (m[0].as_str().unwrap().to_string(), m[1].as_u64().unwrap() as usize, m[2].as_u64().unwrap() as usize)
            })
            .collect()
    };
    let te = list(&doc["text_encoders"]);
    let count = |p: &str| te.iter().filter(|m| m.0.starts_with(p)).count();
    assert_eq!((count("lora_te1_"), count("lora_te2_"), count("lora_te3_")), (72, 192, 168));
    let archs = doc["architectures"].as_object().unwrap();
    assert_eq!(archs.len(), 3);
    for (name, a) in archs {
        let config = &a["config"];
        let arch = Arch {
            depth: config["depth"].as_u64().unwrap() as u32,
            attn2_blocks: config["attn2_blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect(),
        };
        let hidden = config["hidden"].as_u64().unwrap() as usize;
        let theirs: Vec<(String, usize, usize)> =
            te.iter().cloned().chain(list(&a["unet"])).chain(list(&a["emb_dims"])).collect();
        let ours: Vec<String> = Site::all(&arch, 12, 32, 24).into_iter().map(Site::kohya_name).collect();
        let names: Vec<&String> = theirs.iter().map(|m| &m.0).collect();
        assert_eq!(ours.iter().collect::<Vec<_>>(), names, "{name}: names and order");
        for (module, inn, out) in &theirs {
            let n = parse(module).unwrap_or_else(|| panic!("{name}: {module} not recognised"));
            assert_eq!((n.layout, n.parts.clone()), (Layout::Kohya, 0..n.site.part_count()), "{module}");
            if let Site::Joint(i, _) = n.site {
                assert_eq!(n.site.block().to_string(), format!("J{i:02}"), "{module}");
                if n.site.is_fused() {
                    assert_eq!((*inn, *out), (hidden, 3 * hidden), "{name}: {module}");
                }
                // Only the last block's context modulation (pre-only: shift, scale) swaps halves.
                let last_context = i + 1 == arch.depth && module.ends_with("context_block_adaLN_modulation_1");
                assert_eq!(n.site.swaps_halves(*inn, *out), last_context, "{name}: {module}");
            }
            assert_eq!(n.site.is_conv(), module == "lora_unet_x_embedder_proj", "{module}");
        }
        let want = match name.as_str() {
            "sd35_medium" => Some("3.5 Medium"),
            "sd35_large" => Some("3.5 Large"),
            _ => None,
        };
        assert_eq!(lorakit_lora::sd3::variant(theirs.iter().map(|m| (m.0.as_str(), m.1))), want, "{name}");
        let blocks: BTreeSet<String> = ours.iter().map(|n| parse(n).unwrap().site.block().to_string()).collect();
        assert_eq!(blocks.len(), arch.depth as usize + 5, "{name}: J00.., BASE, FINAL, TE1–TE3");
    }
    // split_qkv saves keep the fused names with 3 × rank.
    let shapes = doc["split_qkv_saved_shapes"].as_object().unwrap();
    for qkv in ["context_block_attn_qkv", "x_block_attn_qkv", "x_block_attn2_qkv"] {
        let key = format!("lora_unet_joint_blocks_0_{qkv}");
        assert!(parse(&key).unwrap().site.is_fused());
        assert_eq!(shapes[&format!("{key}.lora_down.weight")], serde_json::json!([12, 1536]));
        assert_eq!(shapes[&format!("{key}.lora_up.weight")], serde_json::json!([4608, 12]));
    }
}

/// tools/reference/sd3_lora_diffusers_load.py converted every fixture with `lorakit convert --to
/// diffusers` and loaded the results with diffusers' `StableDiffusion3Pipeline.load_lora_weights`
/// (no warning, every module a PEFT layer, ΔW equal to diffusers' view): lorakit still writes
/// exactly those files (sha256), and the record says they loaded cleanly.
#[test]
fn converted_files_are_the_ones_diffusers_loaded() {
    use sha2::{Digest, Sha256};
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("diffusers_load.json")).unwrap()).unwrap();
    assert!(record["diffusers"].as_str().unwrap().starts_with("0.42"), "{}", record["diffusers"]);
    let tmp = tempfile::tempdir().unwrap();
    let converted = record["converted"].as_object().unwrap();
    assert_eq!(converted.len(), LAYOUTS.len());
    for layout in LAYOUTS {
        let r = &converted[layout];
        assert_eq!(r["problems"], serde_json::json!([]), "{layout}");
        let src = dir().join(format!("{layout}.safetensors"));
        let path = if layout == "diffusers" {
            src
        } else {
            let out = tmp.path().join(format!("{layout}.safetensors"));
            convert_file(&src, &out, Target::Peft, None, None).unwrap();
            out
        };
        let digest = Sha256::digest(std::fs::read(&path).unwrap());
        let sha: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sha, r["sha256"].as_str().unwrap(), "{layout}: not the file diffusers loaded; rerun the script");
        // Every module but T5's became a PEFT layer.
        let file = LoraFile::open(&path).unwrap();
        let modules = keys::modules(&file).unwrap().modules;
        let t5 = modules.iter().filter(|m| m.name.starts_with("text_encoder_3.")).count();
        assert_eq!(r["lora_layers"].as_u64().unwrap() as usize, modules.len() - t5, "{layout}");
        assert_eq!(r["t5_modules_not_loaded"].as_u64().unwrap() as usize, t5, "{layout}");
    }
    // diffusers takes a kohya SD3 file as published without loading anything: converting is needed.
    assert_eq!(record["kohya_as_published"]["outcome"], "loaded 0 LoRA layers");
}

/// Keys alone tell SD3 from Flux: SD3-only layers, attn2, and the width of diffusers' shared
/// joint-block names (Flux's is 3072).
#[test]
fn family_from_keys_tells_sd3_from_flux() {
    let tmp = tempfile::tempdir().unwrap();
    let family = |modules: &[(&str, usize)]| {
        let mut t = BTreeMap::new();
        for (name, width) in modules {
            t.insert(format!("{name}.lora_A.weight"), Tensor::new(vec![1, *width], vec![0.1; *width]));
            t.insert(format!("{name}.lora_B.weight"), Tensor::new(vec![*width, 1], vec![0.1; *width]));
        }
        let path = tmp.path().join("f.safetensors");
        write_lora(&path, &t, &Default::default(), Precision::F32).unwrap();
        guess_family(&LoraFile::open(&path).unwrap()).from_keys
    };
    assert_eq!(family(&[("transformer.transformer_blocks.0.attn.to_q", 1536)]), Family::Sd3);
    assert_eq!(family(&[("transformer.transformer_blocks.0.attn.to_q", 2432)]), Family::Sd3);
    assert_eq!(family(&[("transformer.transformer_blocks.0.attn.to_q", 3072)]), Family::Flux);
    assert_eq!(family(&[("transformer.transformer_blocks.0.attn2.to_q", 3072)]), Family::Sd3);
    assert_eq!(family(&[("transformer.pos_embed.proj", 16)]), Family::Sd3);
    assert_eq!(family(&[("lora_unet_t_embedder_mlp_0", 16)]), Family::Sd3);
    assert_eq!(family(&[("transformer.proj_out", 16)]), Family::Unknown);
    // SDXL's diffusers names have attn2 under `unet.` only.
    assert_ne!(family(&[("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q", 640)]), Family::Sd3);
}
