//! kohya ↔ PEFT conversion: the SD1.5 and SDXL name maps on known pairs, the
//! sd-scripts SD1.5 fixture and a synthetic SDXL file round-tripped with
//! unchanged effective weights, and every refused input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use lorakit_lora::convert::{convert_file, ConvertError, NameMap, Target};
use lorakit_lora::keys::{self, Family, Scheme};
use lorakit_lora::safetensors_file::{write_lora, Dtype, LoraFile, Precision, Tensor};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd-scripts/lora/sd15-r8-fp32.safetensors")
}

/// `scale · up · down` per module name, flattened (convs as out × in·kh·kw).
fn effective(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let file = LoraFile::open(path).unwrap();
    let set = keys::modules(&file).unwrap();
    set.modules
        .iter()
        .map(|m| {
            let up = file.tensor_f32(&m.up_key).unwrap();
            let down = file.tensor_f32(&m.down_key).unwrap();
            let (r, cols) = (m.rank, down.len() / m.rank);
            let mut w = vec![0f32; m.out_features * cols];
            for o in 0..m.out_features {
                for k in 0..r {
                    let u = up[o * r + k] * m.scale();
                    for c in 0..cols {
                        w[o * cols + c] += u * down[k * cols + c];
                    }
                }
            }
            (m.name.clone(), w)
        })
        .collect()
}

/// (scale·up, down) per module name.
fn factors(path: &Path) -> BTreeMap<String, (Vec<f32>, Vec<f32>)> {
    let file = LoraFile::open(path).unwrap();
    let set = keys::modules(&file).unwrap();
    set.modules
        .iter()
        .map(|m| {
            let up = file.tensor_f32(&m.up_key).unwrap().iter().map(|x| x * m.scale()).collect();
            (m.name.clone(), (up, file.tensor_f32(&m.down_key).unwrap()))
        })
        .collect()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: sizes");
    let max = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * max.max(1e-6), "{what}: {x} vs {y}");
    }
}

fn tensor_names(path: &Path) -> BTreeSet<String> {
    LoraFile::open(path).unwrap().tensor_names().map(str::to_string).collect()
}

#[test]
fn known_pairs_map_both_ways() {
    let sd1 = NameMap::new(Family::Sd1).unwrap();
    let sdxl = NameMap::new(Family::Sdxl).unwrap();
    let cases = [
        (
            &sd1,
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        ),
        (
            &sd1,
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        ),
        (&sd1, "lora_unet_mid_block_attentions_0_proj_in", "unet.mid_block.attentions.0.proj_in"),
        (
            &sd1,
            "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj",
            "unet.up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj",
        ),
        (&sd1, "lora_unet_down_blocks_0_resnets_0_conv1", "unet.down_blocks.0.resnets.0.conv1"),
        (&sd1, "lora_unet_down_blocks_0_downsamplers_0_conv", "unet.down_blocks.0.downsamplers.0.conv"),
        (&sd1, "lora_unet_up_blocks_0_upsamplers_0_conv", "unet.up_blocks.0.upsamplers.0.conv"),
        (
            &sdxl,
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        ),
        (
            &sdxl,
            "lora_unet_middle_block_1_transformer_blocks_3_attn2_to_out_0",
            "unet.mid_block.attentions.0.transformer_blocks.3.attn2.to_out.0",
        ),
        (
            &sdxl,
            "lora_unet_output_blocks_0_1_transformer_blocks_9_ff_net_2",
            "unet.up_blocks.0.attentions.0.transformer_blocks.9.ff.net.2",
        ),
        (&sdxl, "lora_unet_output_blocks_2_2_conv", "unet.up_blocks.0.upsamplers.0.conv"),
        (&sdxl, "lora_unet_output_blocks_5_2_conv", "unet.up_blocks.1.upsamplers.0.conv"),
        (&sdxl, "lora_unet_input_blocks_3_0_op", "unet.down_blocks.0.downsamplers.0.conv"),
        (&sdxl, "lora_unet_input_blocks_1_0_in_layers_2", "unet.down_blocks.0.resnets.0.conv1"),
        (&sdxl, "lora_unet_input_blocks_4_0_skip_connection", "unet.down_blocks.1.resnets.0.conv_shortcut"),
        (&sdxl, "lora_unet_output_blocks_8_0_emb_layers_1", "unet.up_blocks.2.resnets.2.time_emb_proj"),
        (&sdxl, "lora_unet_middle_block_2_out_layers_3", "unet.mid_block.resnets.1.conv2"),
        (&sdxl, "lora_unet_label_emb_0_0", "unet.add_embedding.linear_1"),
        (&sdxl, "lora_unet_time_embed_2", "unet.time_embedding.linear_2"),
        (&sdxl, "lora_te1_text_model_encoder_layers_11_mlp_fc2", "text_encoder.text_model.encoder.layers.11.mlp.fc2"),
        (
            &sdxl,
            "lora_te2_text_model_encoder_layers_31_self_attn_out_proj",
            "text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj",
        ),
    ];
    for (map, kohya, peft) in cases {
        assert_eq!(map.to_peft(kohya), Some(peft), "{kohya}");
        assert_eq!(map.to_kohya(peft), Some(kohya), "{peft}");
    }
    // PEFT's wrapper prefix and bare U-Net paths are accepted.
    assert_eq!(sdxl.to_kohya("base_model.model.unet.conv_in"), Some("lora_unet_input_blocks_0_0"));
    assert_eq!(sd1.to_kohya("mid_block.attentions.0.proj_out"), Some("lora_unet_mid_block_attentions_0_proj_out"));
    // SDXL kohya files written in the diffusers layout are read, and normalised to SGM names.
    assert_eq!(
        sdxl.to_peft("lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k"),
        Some("unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k")
    );
    // Layouts that do not exist are not invented.
    assert_eq!(sdxl.to_peft("lora_unet_input_blocks_1_1_proj_in"), None, "SDXL down block 0 has no attention");
    assert_eq!(sdxl.to_peft("lora_unet_output_blocks_6_1_proj_in"), None, "SDXL up block 2 has no attention");
    assert_eq!(sd1.to_peft("lora_unet_up_blocks_0_attentions_0_proj_in"), None, "SD1 up block 0 has no attention");
    assert_eq!(sdxl.to_peft("lora_unet_input_blocks_4_1_transformer_blocks_2_attn1_to_q"), None, "depth 2");
    assert_eq!(sd1.to_peft("lora_te_text_model_encoder_layers_12_mlp_fc1"), None, "CLIP-L has 12 layers");
    assert_eq!(sdxl.to_peft("lora_te2_text_model_encoder_layers_32_mlp_fc1"), None, "bigG has 32 layers");
}

#[test]
fn sd_scripts_fixture_round_trips_through_peft() {
    let dir = tempfile::tempdir().unwrap();
    let (peft, back) = (dir.path().join("peft.safetensors"), dir.path().join("kohya.safetensors"));

    let out = convert_file(&fixture(), &peft, Target::Peft, None, None).unwrap();
    assert_eq!((out.family, out.from, out.to), (Family::Sd1, Scheme::Kohya, Target::Peft));
    assert_eq!(out.renamed.len(), 264);
    assert_eq!(out.folded, 264, "alpha 4 / rank 8 folded everywhere");
    assert_eq!(out.precision, Precision::F32, "keeps the input's precision");
    let peft_file = LoraFile::open(&peft).unwrap();
    let set = keys::modules(&peft_file).unwrap();
    assert_eq!(set.scheme, Scheme::Peft);
    assert_eq!(set.modules.len(), 264);
    assert!(set.modules.iter().all(|m| m.alpha_key.is_none() && m.scale() == 1.0));
    assert!(peft_file.contains("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"));
    assert!(peft_file.contains("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"));
    assert!(peft_file.tensor_names().all(|n| n.starts_with("unet.") || n.starts_with("text_encoder.")));
    assert_eq!(keys::guess_family(&peft_file).from_keys, Family::Sd1);

    // Metadata is kept; a note is added and the hashes are recomputed.
    let original = LoraFile::open(fixture()).unwrap();
    for (k, v) in original.metadata() {
        if !k.starts_with("sshs_") {
            assert_eq!(peft_file.metadata().get(k), Some(v), "metadata {k}");
        }
    }
    assert!(peft_file.metadata()["lorakit_convert"].contains("alpha/rank folded into lora_B"));
    assert_ne!(peft_file.metadata()["sshs_model_hash"], original.metadata()["sshs_model_hash"]);

    let out = convert_file(&peft, &back, Target::Kohya, None, None).unwrap();
    assert_eq!((out.family, out.from, out.folded), (Family::Sd1, Scheme::Peft, 0));
    assert_eq!(tensor_names(&back), tensor_names(&fixture()), "same key set as sd-scripts wrote");

    // scale·up·down is unchanged: down is copied bit for bit and scale·up agrees
    // (factor-wise, which implies the product and is fast enough for 264 modules).
    let before = factors(&fixture());
    let via_peft = factors(&peft);
    let after = factors(&back);
    assert_eq!(before.len(), 264);
    let map = NameMap::new(Family::Sd1).unwrap();
    for (name, (up, down)) in &before {
        for (other, label) in [(&after[name], "kohya"), (&via_peft[map.to_peft(name).unwrap()], "PEFT")] {
            assert_eq!(down, &other.1, "{name} ({label}): down");
            assert_close(up, &other.0, &format!("{name} ({label}): scale·up"));
        }
    }
    let back_file = LoraFile::open(&back).unwrap();
    assert!(keys::modules(&back_file).unwrap().modules.iter().all(|m| m.alpha == m.rank as f32));
}

#[test]
fn precision_can_be_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("peft-bf16.safetensors");
    let out = convert_file(&fixture(), &out_path, Target::Peft, Some(Precision::BF16), None).unwrap();
    assert_eq!(out.precision, Precision::BF16);
    let file = LoraFile::open(&out_path).unwrap();
    assert!(file.header().tensors.values().all(|t| t.dtype == Dtype::BF16));
}

/// Deterministic pseudo-random values.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

/// Adds a module with `down_shape` (rank first) and `out` channels; 4-D down gets a 1×1 up.
fn add(t: &mut BTreeMap<String, Tensor>, name: &str, down_shape: &[usize], out: usize, alpha: Option<f32>) {
    let rank = down_shape[0];
    let up_shape = if down_shape.len() == 4 { vec![out, rank, 1, 1] } else { vec![out, rank] };
    let n: usize = down_shape.iter().product();
    let seed = name.len() as u32 * 31 + n as u32;
    t.insert(format!("{name}.lora_down.weight"), Tensor::new(down_shape.to_vec(), values(n, seed)));
    t.insert(format!("{name}.lora_up.weight"), Tensor::new(up_shape, values(out * rank, seed + 7)));
    if let Some(a) = alpha {
        t.insert(format!("{name}.alpha"), Tensor::scalar(a));
    }
}

fn write(dir: &Path, name: &str, t: &BTreeMap<String, Tensor>, meta: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    let meta: BTreeMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    write_lora(&path, t, &meta, Precision::F32).unwrap();
    path
}

#[test]
fn synthetic_sdxl_kohya_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = BTreeMap::new();
    add(&mut t, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", &[4, 16], 16, Some(2.0));
    add(&mut t, "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k", &[4, 2048], 8, Some(1.0));
    add(&mut t, "lora_unet_output_blocks_2_2_conv", &[2, 6, 3, 3], 6, Some(1.0));
    add(&mut t, "lora_unet_input_blocks_3_0_op", &[2, 5, 3, 3], 5, Some(2.0));
    add(&mut t, "lora_unet_input_blocks_1_0_in_layers_2", &[2, 5, 3, 3], 5, None);
    add(&mut t, "lora_unet_input_blocks_4_0_skip_connection", &[3, 5, 1, 1], 7, Some(3.0));
    add(&mut t, "lora_te1_text_model_encoder_layers_11_mlp_fc2", &[4, 12], 6, Some(4.0));
    add(&mut t, "lora_te2_text_model_encoder_layers_31_self_attn_out_proj", &[4, 10], 10, Some(8.0));
    let input = write(dir.path(), "sdxl.safetensors", &t, &[("ss_training_comment", "hi"), ("modelspec.title", "x")]);

    let peft = dir.path().join("sdxl-peft.safetensors");
    let out = convert_file(&input, &peft, Target::Peft, None, None).unwrap();
    assert_eq!(out.family, Family::Sdxl);
    assert_eq!(out.folded, 4, "four modules have alpha ≠ rank");
    let expect = [
        "text_encoder.text_model.encoder.layers.11.mlp.fc2",
        "text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj",
        "unet.down_blocks.0.downsamplers.0.conv",
        "unet.down_blocks.0.resnets.0.conv1",
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
        "unet.down_blocks.1.resnets.0.conv_shortcut",
        "unet.up_blocks.0.upsamplers.0.conv",
    ];
    let want: BTreeSet<String> =
        expect.iter().flat_map(|m| [format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight")]).collect();
    assert_eq!(tensor_names(&peft), want);
    let peft_file = LoraFile::open(&peft).unwrap();
    assert_eq!(peft_file.metadata()["ss_training_comment"], "hi");
    assert_eq!(peft_file.metadata()["modelspec.title"], "x");
    assert_eq!(
        peft_file.info("unet.up_blocks.0.upsamplers.0.conv.lora_A.weight").unwrap().shape,
        vec![2, 6, 3, 3],
        "conv shapes are kept"
    );

    let back = dir.path().join("sdxl-kohya.safetensors");
    let out = convert_file(&peft, &back, Target::Kohya, None, None).unwrap();
    assert_eq!(out.family, Family::Sdxl, "SDXL from the PEFT keys (text_encoder_2)");
    let mut names = tensor_names(&input);
    names.insert("lora_unet_input_blocks_1_0_in_layers_2.alpha".into()); // alpha = rank is written explicitly
    assert_eq!(tensor_names(&back), names);
    let (before, after) = (effective(&input), effective(&back));
    for (name, w) in &before {
        assert_close(w, &after[name], name);
    }
}

#[test]
fn peft_alpha_keys_become_kohya_alphas() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = BTreeMap::new();
    let m = "text_encoder.text_model.encoder.layers.3.self_attn.q_proj";
    t.insert(format!("{m}.lora_A.weight"), Tensor::new(vec![4, 768], values(4 * 768, 1)));
    t.insert(format!("{m}.lora_B.weight"), Tensor::new(vec![8, 4], values(32, 2)));
    t.insert(format!("{m}.alpha"), Tensor::scalar(2.0));
    let input = write(dir.path(), "peft.safetensors", &t, &[]);
    let back = dir.path().join("kohya.safetensors");
    let out = convert_file(&input, &back, Target::Kohya, None, None).unwrap();
    assert_eq!(out.family, Family::Sd1);
    assert_eq!(out.renamed, vec![(m.to_string(), "lora_te_text_model_encoder_layers_3_self_attn_q_proj".to_string())]);
    let file = LoraFile::open(&back).unwrap();
    assert_eq!(file.scalar_f32("lora_te_text_model_encoder_layers_3_self_attn_q_proj.alpha").unwrap(), Some(2.0));
    let (a, b) = (effective(&input), effective(&back));
    assert_close(&a[m], &b["lora_te_text_model_encoder_layers_3_self_attn_q_proj"], m);
}

#[test]
fn refused_inputs_name_the_problem_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let msg = |e: ConvertError| e.to_string();

    // SD2: 1024-wide cross-attention context.
    let mut t = BTreeMap::new();
    add(&mut t, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", &[2, 1024], 4, None);
    let sd2 = write(dir.path(), "sd2.safetensors", &t, &[]);
    let e = msg(convert_file(&sd2, &out, Target::Peft, None, None).unwrap_err());
    assert!(
        e.contains("SD2.x")
            && e.contains("convert supports SD1.5, SDXL, SD3 and Flux")
            && e.contains("sd2.safetensors"),
        "{e}"
    );

    // Flux, with a fused qkv whose 4 outputs are no q/k/v split.
    let mut t = BTreeMap::new();
    add(&mut t, "lora_unet_double_blocks_0_img_attn_qkv", &[2, 8], 4, None);
    let flux = write(dir.path(), "flux.safetensors", &t, &[]);
    let e = msg(convert_file(&flux, &out, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("`lora_unet_double_blocks_0_img_attn_qkv`") && e.contains("do not split"), "{e}");

    // Metadata naming SD2 with keys that say nothing.
    let mut t = BTreeMap::new();
    add(&mut t, "lora_unet_something", &[2, 8], 4, None);
    let sd2 = write(dir.path(), "sd2-meta.safetensors", &t, &[("ss_base_model_version", "sd_v2")]);
    let e = msg(convert_file(&sd2, &out, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("SD2.x") && e.contains("metadata"), "{e}");
    // Metadata naming SD3: the names are read as SD3's, and the unknown one is refused by name.
    let sd3 = write(dir.path(), "sd3.safetensors", &t, &[("ss_base_model_version", "sd3")]);
    let e = msg(convert_file(&sd3, &out, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("`lora_unet_something`") && e.contains("SD3"), "{e}");

    // Unknown family; --family then decides, and the unknown name is refused by name.
    let unknown = write(dir.path(), "unknown.safetensors", &t, &[]);
    let e = msg(convert_file(&unknown, &out, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("cannot tell which base model") && e.contains("--family"), "{e}");
    let e = msg(convert_file(&unknown, &out, Target::Peft, None, Some(Family::Sdxl)).unwrap_err());
    assert!(e.contains("`lora_unet_something`") && e.contains("SDXL"), "{e}");
    let e = msg(convert_file(&unknown, &out, Target::Peft, None, Some(Family::Sd2)).unwrap_err());
    assert!(e.contains("convert supports SD1.5, SDXL, SD3 and Flux"), "{e}");
    let e = msg(convert_file(&unknown, &out, Target::Peft, None, Some(Family::Flux)).unwrap_err());
    assert!(e.contains("`lora_unet_something`") && e.contains("Flux"), "{e}");

    // An SD1 file with one module that SD1 does not have.
    let mut t = BTreeMap::new();
    add(&mut t, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", &[2, 768], 768, None);
    add(&mut t, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_5_attn1_to_q", &[2, 8], 8, None);
    let bad = write(dir.path(), "bad.safetensors", &t, &[]);
    let e = msg(convert_file(&bad, &out, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("`lora_unet_down_blocks_0_attentions_0_transformer_blocks_5_attn1_to_q`"), "{e}");
    assert!(e.contains("SD1.x") && e.contains("bad.safetensors") && e.contains("nothing was written"), "{e}");

    // A stray tensor is not dropped silently.
    let mut t = BTreeMap::new();
    add(&mut t, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", &[2, 768], 768, None);
    t.insert("lora_unet_conv_in.diff_b".into(), Tensor::new(vec![4], vec![0.0; 4]));
    let stray = write(dir.path(), "stray.safetensors", &t, &[]);
    let e = msg(convert_file(&stray, &out, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("`lora_unet_conv_in.diff_b`"), "{e}");

    // The same layer twice (SGM and diffusers spellings in one SDXL file).
    let mut t = BTreeMap::new();
    add(&mut t, "lora_te2_text_model_encoder_layers_0_mlp_fc1", &[2, 8], 8, None);
    add(&mut t, "lora_unet_input_blocks_1_0_in_layers_2", &[2, 4, 3, 3], 4, None);
    add(&mut t, "lora_unet_down_blocks_0_resnets_0_conv1", &[2, 4, 3, 3], 4, None);
    let dup = write(dir.path(), "dup.safetensors", &t, &[]);
    let e = msg(convert_file(&dup, &out, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("both adapt `unet.down_blocks.0.resnets.0.conv1`"), "{e}");

    // Already in the requested naming; missing file; output = input.
    let e = msg(convert_file(&fixture(), &out, Target::Kohya, None, None).unwrap_err());
    assert!(e.contains("already a kohya"), "{e}");
    let e = msg(convert_file(&dir.path().join("nope.safetensors"), &out, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("nope.safetensors"), "{e}");
    let e = msg(convert_file(&bad, &bad, Target::Peft, None, None).unwrap_err());
    assert!(e.contains("same file"), "{e}");

    assert!(!out.exists(), "no refused conversion wrote anything");
    for e in [sd2, flux, sd3, unknown, bad, stray, dup].iter().map(|p| LoraFile::open(p).unwrap()) {
        assert_eq!(keys::modules(&e).unwrap().scheme, Scheme::Kohya, "inputs untouched");
    }
}
