//! `config::key_families` (which model families a config key applies to; the GUI hides the
//! others' fields with the reason) agrees with what the trainer refuses: every config key is set
//! to a value of its type on the tiny SD 1.5, SDXL and Flux models, and where the dry run refuses
//! it on one family but accepts it on another, the table must say it does not apply to the
//! refusing family. Each family-specific key must be testable so, and refused where the table
//! says it does not apply (except the few keys that are accepted there without effect, listed).

use std::path::{Path, PathBuf};

use lorakit_train::config::{key_examples, key_families, FAMILY_KEYS, MODEL_FAMILIES};
use lorakit_train::TrainConfig;

use crate::common;
use common::{chessboard_dataset, repo, small_run_toml};

/// The families checked, with their tiny models (SD 2.x needs a rebuilt text encoder: see
/// train_sd2.rs; it shares the SD 1.x code path).
const TESTED: [&str; 3] = ["sd1", "sdxl", "flux"];

fn flux_model() -> PathBuf {
    repo("tests/fixtures/reference/flux_tiny/pipeline")
}

/// The small run of `family`'s tiny model (Flux: 32 px, 8-pixel steps, no convs, short T5).
fn base(family: &str, dir: &Path, data: &Path) -> (String, Vec<String>) {
    let checkpointing = "training.gradient_checkpointing=true".to_string();
    match family {
        "sd1" => (small_run_toml(dir, data, &repo("examples/quickstart/tiny-sd15")), vec![checkpointing]),
        "sdxl" => (small_run_toml(dir, data, &repo("examples/quickstart/tiny-sdxl")), vec![checkpointing]),
        "flux" => (
            small_run_toml(dir, data, &flux_model())
                .replace("resolution = \"64\"", "resolution = \"32\"")
                .replace("min_bucket_reso = 64", "min_bucket_reso = 32")
                .replace("max_bucket_reso = 128", "max_bucket_reso = 64")
                .replace("bucket_reso_steps = 64", "bucket_reso_steps = 16")
                .replace("conv_dim = 2\n", ""),
            vec![checkpointing, "model.t5xxl_max_token_length=16".into()],
        ),
        other => unreachable!("{other}"),
    }
}

/// Values to try for `section.key`, first the one most likely valid for some family. Text keys
/// only where a value is meaningful (others: none, the key is not checked here).
fn candidates(section: &str, key: &str, example: &toml::Value, default: Option<&toml::Value>) -> Vec<String> {
    let flux = flux_model();
    let special: Option<&[&str]> = match (section, key) {
        ("network", "train_blocks") => Some(&["\"single\""]),
        ("network", "in_dims") => Some(&["\"[2,0,0,0,2]\""]),
        ("network", "train_double_block_indices" | "train_single_block_indices" | "train_block_indices") => {
            Some(&["\"0\""])
        }
        ("network", "emb_dims") => Some(&["\"[2,0,0,0,2,2]\""]),
        ("network", "down_lr_weight" | "up_lr_weight") => Some(&["\"sine\""]),
        ("network", "mid_lr_weight") => Some(&["\"0.5\""]),
        ("network", "block_lr_zero_threshold") => Some(&["0.1"]),
        ("flow", "timestep_sampling") => Some(&["\"sigmoid\""]),
        ("flow", "weighting_scheme") => Some(&["\"logit_normal\""]),
        ("flow", "model_prediction_type") => Some(&["\"sigma_scaled\""]),
        ("model", "clip_skip") => Some(&["1"]),
        ("training", "max_timestep") => Some(&["900"]),
        ("training", "min_timestep") => Some(&["10"]),
        _ => None,
    };
    if let Some(values) = special {
        return values.iter().map(|v| v.to_string()).collect();
    }
    let path = |rel: &str| vec![format!("{:?}", flux.join(rel).display().to_string())];
    match (section, key) {
        ("model", "clip_l" | "clip_g") => return path("text_encoder/model.safetensors"),
        ("model", "t5xxl") => return path("text_encoder_2/model.safetensors"),
        ("model", "ae") => return path("vae/diffusion_pytorch_model.safetensors"),
        // The tiny SD 1.5 model's VAE architecture (see `fits_another_model`).
        ("model", "vae") => {
            return vec![format!("{:?}", repo("tests/fixtures/reference/vae_swap/ldm_bare.safetensors"))]
        }
        _ => {}
    }
    match (example, default) {
        (toml::Value::Boolean(_), Some(toml::Value::Boolean(d))) => vec![(!d).to_string()],
        (toml::Value::Integer(_), Some(toml::Value::Integer(d))) => {
            let mut v = vec![(d + 1).to_string()];
            if *d > 0 {
                v.push((d - 1).to_string());
            }
            v
        }
        (toml::Value::Integer(_), None) => vec!["1".into(), "2".into()],
        (toml::Value::Float(_), Some(toml::Value::Float(d))) => {
            vec![format!("{:?}", if *d != 0.0 { d * 0.5 } else { 0.1 }), format!("{:?}", d + 1.0)]
        }
        (toml::Value::Float(_), None) => vec!["0.1".into(), "1.0".into()],
        _ => Vec::new(),
    }
}

/// Other settings a value of `section.key` needs whatever the family (the key's own checks).
fn context(section: &str, key: &str) -> &'static [&'static str] {
    match (section, key) {
        // The 640×480 images have no 64-pixel bucket at 64 px without upscaling.
        ("dataset", "bucket_no_upscale") => &["dataset.bucket_reso_steps=16"],
        // Cached outputs need the text encoders untrained.
        ("training", "cache_text_encoder_outputs" | "cache_text_encoder_outputs_to_disk") => {
            &["network.network_train_unet_only=true"]
        }
        ("accelerate", "fp8_base_unet") => &["accelerate.mixed_precision=\"fp16\""],
        ("loss", "adaptive_noise_scale") => &["loss.noise_offset=0.05"],
        ("loss", "scale_v_pred_loss_like_noise_pred") => &["model.v_parameterization=true"],
        _ => &[],
    }
}

/// The dry run's refusal of `section.key = value` on `family`'s tiny model (`None`: accepted).
fn refusal(family: &str, section: &str, key: &str, value: &str, dir: &Path, data: &Path) -> Option<String> {
    let (text, mut sets) = base(family, dir, data);
    sets.extend(context(section, key).iter().map(|s| s.to_string()));
    sets.push(format!("{section}.{key}={value}"));
    match TrainConfig::from_toml_str(&text, &sets) {
        Ok(config) => lorakit_train::dry_run(config, &mut |_| {}).err().map(|e| e.to_string()),
        Err(e) => Some(e),
    }
}

/// A refusal of the value, not the key: a VAE file fits one tiny model's VAE architecture only
/// (the tiny SDXL model's has a level fewer), so refusing it there shows the key is read.
fn fits_another_model(section: &str, key: &str, refusal: &str) -> bool {
    (section, key) == ("model", "vae") && refusal.contains("not a VAE of")
}

/// Families (of [`TESTED`]) whose dry run accepts `section.key = value`.
fn accepted(section: &str, key: &str, value: &str, dir: &Path, data: &Path) -> Vec<&'static str> {
    TESTED
        .into_iter()
        .filter(|family| match refusal(family, section, key, value, dir, data) {
            None => true,
            Some(e) => fits_another_model(section, key, &e),
        })
        .collect()
}

#[test]
fn every_family_key_names_a_config_key_and_known_families() {
    let keys = key_examples();
    for (section, names, families) in FAMILY_KEYS {
        assert!(!families.reason.is_empty(), "{section}: a family-specific key needs the reason");
        for family in families.families {
            assert!(MODEL_FAMILIES.contains(family) || *family == "sd3", "{section}: {family}");
        }
        for name in *names {
            let known = keys.iter().any(|(s, k)| s == section && k.iter().any(|(k, _)| k == name));
            assert!(known, "{section}.{name} is not a config key");
        }
    }
    // Every key has an applicability: the table's or every family.
    for (section, names) in &keys {
        for (name, _) in names {
            assert!(!key_families(section, name).families.is_empty(), "{section}.{name}");
        }
    }
    assert_eq!(key_families("accelerate", "blocks_to_swap").families, ["flux", "sd3"]);
    assert_eq!(key_families("optimizer", "learning_rate").families, MODEL_FAMILIES);
}

/// Keys the table limits to some families that the trainer accepts elsewhere, without effect.
const ACCEPTED_WITHOUT_EFFECT: &[(&str, &str, &str)] = &[
    // "Detected from the checkpoint anyway; kept for sd-scripts configs."
    ("model", "v2", "sd1"),
    ("model", "v2", "sdxl"),
    // Only thresholds the U-Net block LR weights, which Flux refuses.
    ("network", "block_lr_zero_threshold", "flux"),
];

#[test]
fn the_trainer_refuses_a_key_exactly_for_the_families_it_does_not_apply_to() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    assert_eq!(accepted("training", "seed", "7", dir.path(), &data), TESTED, "every base run is accepted");
    let defaults = toml::Value::try_from(TrainConfig::default()).unwrap();
    let mut problems = Vec::new();
    let mut untested = Vec::new();
    let mut first_value = std::collections::HashMap::new();
    for (section, keys) in key_examples() {
        for (key, example) in keys {
            let default = defaults.get(&section).and_then(|s| s.get(&key));
            let applies = key_families(&section, &key).families;
            let mut tried = None;
            let values = candidates(&section, &key, &example, default);
            if let Some(v) = values.first() {
                first_value.insert(format!("{section}.{key}"), v.clone());
            }
            for value in values {
                let ok = accepted(&section, &key, &value, dir.path(), &data);
                if !ok.is_empty() {
                    tried = Some((value, ok));
                    break;
                }
            }
            let Some((value, ok)) = tried else {
                untested.push(format!("{section}.{key}"));
                continue;
            };
            for family in TESTED {
                let refused = !ok.contains(&family);
                let listed = applies.contains(&family);
                let without_effect = ACCEPTED_WITHOUT_EFFECT.contains(&(section.as_str(), key.as_str(), family));
                if refused && listed {
                    problems.push(format!("{section}.{key} = {value}: refused for {family}, which the table lists"));
                }
                if !refused && !listed && !without_effect {
                    problems
                        .push(format!("{section}.{key} = {value}: accepted for {family}, which the table leaves out"));
                }
            }
        }
    }
    // Keys no tiny model accepts (SD3's; Flux's separate part files, loaded at full size) are
    // refused, naming the key, by the families the table leaves out.
    for (section, names, families) in FAMILY_KEYS {
        for name in *names {
            let full = format!("{section}.{name}");
            if !untested.contains(&full) {
                continue;
            }
            // Per-block lists have 25 values for SD's U-Net and 23 for SDXL's: no one value fits both.
            if ["block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"].contains(name) {
                continue;
            }
            let value = first_value.get(&full).unwrap_or_else(|| panic!("{full}: no value to try"));
            for family in TESTED.into_iter().filter(|f| !families.families.contains(f)) {
                match refusal(family, section, name, value, dir.path(), &data) {
                    Some(e) if e.contains(&full) => {}
                    other => problems.push(format!("{full} = {value} on {family}: {other:?}, not a refusal naming it")),
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
