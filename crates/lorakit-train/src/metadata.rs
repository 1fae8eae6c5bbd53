//! The metadata written into every saved LoRA: sd-scripts' `ss_*` keys (spec §3.1) and Stability
//! AI's `modelspec.*` (§3.3), all strings, formatted as Python prints them so tools that parse
//! kohya files (A1111's additional-networks, CivitAI, `lorakit inspect`) read ours the same way.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use lorakit_models::lora_inject::ModuleDims;

use crate::config::TrainConfig;
use crate::data::TrainData;
use crate::model::FamilyInfo;
use crate::time::{local_iso_timestamp, unix_seconds};

/// Python's `str(bool)`.
fn py_bool(b: bool) -> String {
    if b { "True" } else { "False" }.into()
}

/// Python's `str(float)` for the values configs hold (repr-style shortest round trip, with a
/// trailing `.0` for whole numbers and `e-05`-style exponents).
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let abs = v.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Python switches to exponent notation below 1e-4: 1e-05, 2.5e-06.
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("exponent");
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{v}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn py_opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "None".into(), ToString::to_string)
}

fn py_opt_float(v: Option<f64>) -> String {
    v.map_or_else(|| "None".into(), py_float)
}

/// What does not change between saves of one run.
pub struct RunMetadata {
    base: BTreeMap<String, String>,
}

/// Progress values written at each save.
#[derive(Debug, Clone, Copy)]
pub struct SaveProgress {
    /// Optimizer steps done.
    pub steps: u64,
    /// `ss_epoch` as sd-scripts writes it for this kind of save.
    pub epoch: u64,
}

impl RunMetadata {
    /// Builds the static keys for a run.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &TrainConfig,
        data: &TrainData,
        info: &FamilyInfo,
        session_id: u32,
        started_at: f64,
        max_train_steps: u64,
        epochs: u64,
        warmup_steps: u64,
        optimizer_description: &str,
        module_dims: Option<&ModuleDims>,
    ) -> RunMetadata {
        let c = config;
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("ss_session_id", session_id.to_string());
        put("ss_training_started_at", started_at.to_string());
        put("ss_output_name", c.folders.output_name.clone());
        put("ss_learning_rate", py_float(c.optimizer.learning_rate));
        // A list prints as Python prints sd-scripts' multi-encoder `text_encoder_lr` list.
        put(
            "ss_text_encoder_lr",
            match &c.optimizer.text_encoder_lr {
                None => "None".into(),
                Some(crate::config::TextEncoderLr::All(lr)) => py_float(*lr),
                Some(crate::config::TextEncoderLr::PerEncoder(list)) => {
                    format!("[{}]", list.iter().map(|v| py_float(*v)).collect::<Vec<_>>().join(", "))
                }
            },
        );
        put("ss_unet_lr", py_opt_float(c.optimizer.unet_lr));
        put("ss_num_train_images", data.num_train_images().to_string());
        // The validation split's images (each once: validation datasets have no repeats).
        put("ss_num_validation_images", data.num_validation_images().to_string());
        put("ss_num_reg_images", data.num_reg_images().to_string());
        put("ss_num_batches_per_epoch", data.batches_per_epoch().to_string());
        put("ss_num_epochs", epochs.to_string());
        put("ss_gradient_checkpointing", py_bool(c.training.gradient_checkpointing));
        put("ss_gradient_accumulation_steps", c.training.gradient_accumulation_steps.to_string());
        put("ss_max_train_steps", max_train_steps.to_string());
        put("ss_lr_warmup_steps", warmup_steps.to_string());
        put("ss_lr_scheduler", c.optimizer.lr_scheduler.clone());
        put("ss_network_module", c.network.network_module.clone());
        let (dim, alpha) = match module_dims {
            Some(dims) => network_shape(dims),
            None => (c.network.network_dim.to_string(), py_float(c.network.network_alpha)),
        };
        put("ss_network_dim", dim);
        put("ss_network_alpha", alpha);
        put("ss_network_dropout", py_opt_float(c.network.network_dropout));
        put("ss_mixed_precision", c.accelerate.mixed_precision.clone());
        put("ss_full_fp16", py_bool(c.accelerate.full_fp16));
        put("ss_v2", py_bool(info.v2));
        put("ss_base_model_version", info.base_model_version.clone());
        put("ss_clip_skip", py_opt(&c.model.clip_skip));
        put(
            "ss_max_token_length",
            if c.training.max_token_length == 75 { "None".into() } else { c.training.max_token_length.to_string() },
        );
        put("ss_cache_latents", py_bool(c.training.cache_latents));
        put("ss_seed", c.training.seed.to_string());
        put("ss_lowram", py_bool(false));
        put("ss_noise_offset", py_opt_float(c.loss.noise_offset));
        put("ss_multires_noise_iterations", py_opt(&c.loss.multires_noise_iterations));
        put("ss_multires_noise_discount", py_float(c.loss.multires_noise_discount));
        put("ss_adaptive_noise_scale", py_opt_float(c.loss.adaptive_noise_scale));
        put("ss_zero_terminal_snr", py_bool(c.loss.zero_terminal_snr));
        put("ss_training_comment", py_opt(&c.metadata.training_comment));
        put("ss_sd_scripts_commit_hash", format!("lorakit {}", env!("CARGO_PKG_VERSION")));
        put("ss_optimizer", optimizer_description.to_string());
        put("ss_max_grad_norm", py_float(c.training.max_grad_norm));
        put("ss_caption_dropout_rate", py_float(c.dataset.caption_dropout_rate));
        put("ss_caption_dropout_every_n_epochs", c.dataset.caption_dropout_every_n_epochs.to_string());
        put("ss_caption_tag_dropout_rate", py_float(c.dataset.caption_tag_dropout_rate));
        put("ss_face_crop_aug_range", "None".into());
        put("ss_prior_loss_weight", py_float(c.dataset.prior_loss_weight));
        put("ss_min_snr_gamma", py_opt_float(c.loss.min_snr_gamma));
        put("ss_scale_weight_norms", py_opt_float(c.network.scale_weight_norms));
        put("ss_ip_noise_gamma", py_opt_float(c.loss.ip_noise_gamma));
        put("ss_debiased_estimation", py_bool(c.loss.debiased_estimation_loss));
        put("ss_noise_offset_random_strength", py_bool(c.loss.noise_offset_random_strength));
        put("ss_ip_noise_gamma_random_strength", py_bool(c.loss.ip_noise_gamma_random_strength));
        put("ss_loss_type", c.loss.loss_type.name().into());
        put("ss_huber_schedule", c.loss.huber_schedule.name().into());
        put("ss_huber_scale", py_float(c.loss.huber_scale));
        put("ss_huber_c", py_float(c.loss.huber_c));
        put("ss_fp8_base", py_bool(c.accelerate.fp8_base));
        put("ss_fp8_base_unet", py_bool(false));
        put("ss_validation_seed", py_opt(&c.dataset.validation_seed));
        put("ss_validation_split", py_float(c.dataset.validation_split));
        put("ss_max_validation_steps", py_opt(&c.training.max_validation_steps));
        put("ss_validate_every_n_epochs", py_opt(&c.training.validate_every_n_epochs));
        put("ss_validate_every_n_steps", py_opt(&c.training.validate_every_n_steps));
        put("ss_resize_interpolation", py_opt(&c.dataset.resize_interpolation));
        // sd-scripts writes the network_args it was given, values as strings.
        let mut args = serde_json::Map::new();
        if let Some(conv) = c.network.conv_dim {
            args.insert("conv_dim".into(), json!(conv.to_string()));
            args.insert("conv_alpha".into(), json!(py_float(c.network.conv_alpha.unwrap_or(1.0))));
        }
        // LyCORIS' arguments as a kohya_ss/sd-scripts user passes them (`algo=loha`, `factor=8`,
        // `decompose_both=True`, …): defaults left out, as the GUI leaves them out.
        if c.network.is_lycoris() {
            let n = &c.network;
            for (key, value) in [
                ("algo", n.algo.clone()),
                ("preset", n.preset.clone()),
                ("factor", (n.factor != -1).then(|| n.factor.to_string())),
                ("decompose_both", n.decompose_both.then(|| "True".to_string())),
                ("full_matrix", n.full_matrix.then(|| "True".to_string())),
            ] {
                if let Some(value) = value {
                    args.insert(key.into(), json!(value));
                }
            }
        }
        if let Some(v) = c.network.rank_dropout {
            args.insert("rank_dropout".into(), json!(py_float(v)));
        }
        if let Some(v) = c.network.module_dropout {
            args.insert("module_dropout".into(), json!(py_float(v)));
        }
        let n = &c.network;
        for (key, v) in [
            ("down_lr_weight", &n.down_lr_weight),
            ("mid_lr_weight", &n.mid_lr_weight),
            ("up_lr_weight", &n.up_lr_weight),
            ("block_dims", &n.block_dims),
            ("block_alphas", &n.block_alphas),
            ("conv_block_dims", &n.conv_block_dims),
            ("conv_block_alphas", &n.conv_block_alphas),
        ] {
            if let Some(v) = v {
                args.insert(key.into(), json!(v));
            }
        }
        // Flux's lora_flux.py arguments, as given.
        for (key, v) in [
            ("train_blocks", n.train_blocks.clone()),
            ("img_attn_dim", n.img_attn_dim.map(|d| d.to_string())),
            ("txt_attn_dim", n.txt_attn_dim.map(|d| d.to_string())),
            ("img_mlp_dim", n.img_mlp_dim.map(|d| d.to_string())),
            ("txt_mlp_dim", n.txt_mlp_dim.map(|d| d.to_string())),
            ("img_mod_dim", n.img_mod_dim.map(|d| d.to_string())),
            ("txt_mod_dim", n.txt_mod_dim.map(|d| d.to_string())),
            ("single_dim", n.single_dim.map(|d| d.to_string())),
            ("single_mod_dim", n.single_mod_dim.map(|d| d.to_string())),
            ("in_dims", n.in_dims.clone()),
            ("train_double_block_indices", n.train_double_block_indices.clone()),
            ("train_single_block_indices", n.train_single_block_indices.clone()),
            ("split_qkv", n.split_qkv.then(|| "True".to_string())),
            ("train_t5xxl", n.train_t5xxl.then(|| "True".to_string())),
            // SD3's lora_sd3.py arguments, as given.
            ("context_attn_dim", n.context_attn_dim.map(|d| d.to_string())),
            ("context_mlp_dim", n.context_mlp_dim.map(|d| d.to_string())),
            ("context_mod_dim", n.context_mod_dim.map(|d| d.to_string())),
            ("x_attn_dim", n.x_attn_dim.map(|d| d.to_string())),
            ("x_mlp_dim", n.x_mlp_dim.map(|d| d.to_string())),
            ("x_mod_dim", n.x_mod_dim.map(|d| d.to_string())),
            ("emb_dims", n.emb_dims.clone()),
            ("train_block_indices", n.train_block_indices.clone()),
        ] {
            if let Some(v) = v {
                args.insert(key.into(), json!(v));
            }
        }
        if n.block_lr_zero_threshold != 0.0 {
            args.insert("block_lr_zero_threshold".into(), json!(py_float(n.block_lr_zero_threshold)));
        }
        for (key, v) in [
            ("loraplus_lr_ratio", n.loraplus_lr_ratio),
            ("loraplus_unet_lr_ratio", n.loraplus_unet_lr_ratio),
            ("loraplus_text_encoder_lr_ratio", n.loraplus_text_encoder_lr_ratio),
        ] {
            if let Some(v) = v {
                args.insert(key.into(), json!(py_float(v)));
            }
        }
        if !args.is_empty() {
            put("ss_network_args", serde_json::Value::Object(args).to_string());
        }
        if info.base_model_version == "flux1" {
            flux_keys(c, &mut put);
        } else if info.architecture.starts_with("stable-diffusion-3") {
            sd3_keys(c, &mut put);
        }
        dataset_keys(c, data, &mut put);
        if let Some(model) = &c.model.pretrained_model_name_or_path {
            model_keys(model, &mut put);
        }
        if let Some(vae) = &c.model.vae {
            vae_keys(vae, &mut put);
        }
        modelspec_keys(c, info, &mut put);
        RunMetadata { base: m }
    }

    /// The full metadata for one save.
    pub fn for_save(&self, progress: SaveProgress) -> BTreeMap<String, String> {
        let mut m = self.base.clone();
        m.insert("ss_training_finished_at".into(), unix_seconds().to_string());
        m.insert("ss_steps".into(), progress.steps.to_string());
        m.insert("ss_epoch".into(), progress.epoch.to_string());
        m
    }
}

/// The dataset keys: `ss_datasets` with a dataset TOML, the flat keys otherwise (§3.1).
fn dataset_keys(c: &TrainConfig, data: &TrainData, put: &mut impl FnMut(&str, String)) {
    let mut tag_frequency = serde_json::Map::new();
    let mut dataset_dirs = serde_json::Map::new();
    let mut reg_dirs = serde_json::Map::new();
    let mut datasets_json = Vec::new();
    for ds in &data.datasets {
        for (dir, tags) in &ds.tag_frequency {
            tag_frequency.entry(dir.clone()).or_insert_with(|| json!(tags));
        }
        let mut subsets = Vec::new();
        for subset in &ds.subsets {
            let name = subset.spec.image_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let entry = json!({"n_repeats": subset.spec.num_repeats, "img_count": subset.usable});
            if subset.spec.is_reg {
                reg_dirs.insert(name.clone(), entry);
            } else {
                let mut key = name.clone();
                let mut n = 2;
                while dataset_dirs.contains_key(&key) {
                    key = format!("{name} ({n})");
                    n += 1;
                }
                dataset_dirs.insert(key, entry);
            }
            let s = &subset.spec;
            subsets.push(json!({
                "img_count": subset.usable,
                "num_repeats": s.num_repeats,
                "color_aug": s.augment.color_aug,
                "flip_aug": s.augment.flip_aug,
                "random_crop": s.augment.random_crop,
                "shuffle_caption": s.caption.shuffle_caption,
                "keep_tokens": s.caption.keep_tokens,
                "keep_tokens_separator": s.caption.keep_tokens_separator,
                "secondary_separator": s.caption.secondary_separator,
                "enable_wildcard": s.caption.enable_wildcard,
                "caption_prefix": s.caption.caption_prefix,
                "caption_suffix": s.caption.caption_suffix,
                "resize_interpolation": s.resize_interpolation,
                "image_dir": name,
                "class_tokens": s.class_tokens,
                "is_reg": s.is_reg,
            }));
        }
        let b = &ds.spec.buckets;
        datasets_json.push(json!({
            "is_dreambooth": true,
            "batch_size_per_device": ds.spec.batch_size,
            "num_train_images": ds.num_train_images,
            "num_reg_images": ds.num_reg_images,
            "resolution": [b.resolution.0, b.resolution.1],
            "enable_bucket": b.enable_bucket,
            "min_bucket_reso": b.min_bucket_reso,
            "max_bucket_reso": b.max_bucket_reso,
            "tag_frequency": ds.tag_frequency,
            "bucket_info": bucket_info(ds),
            "resize_interpolation": c.dataset.resize_interpolation,
            "subsets": subsets,
        }));
    }
    put("ss_tag_frequency", serde_json::Value::Object(tag_frequency).to_string());
    if data.from_dataset_config {
        put("ss_datasets", serde_json::Value::Array(datasets_json).to_string());
        put("ss_dataset_dirs", serde_json::Value::Object(dataset_dirs).to_string());
        return;
    }
    let first = data.datasets.first();
    let b = first.map(|d| d.spec.buckets.clone()).unwrap_or_default();
    put("ss_batch_size_per_device", c.training.train_batch_size.to_string());
    put(
        "ss_total_batch_size",
        (u64::from(c.training.train_batch_size) * c.training.gradient_accumulation_steps).to_string(),
    );
    put("ss_resolution", format!("({}, {})", b.resolution.0, b.resolution.1));
    put("ss_color_aug", py_bool(false));
    put("ss_flip_aug", py_bool(c.dataset.flip_aug));
    put("ss_random_crop", py_bool(c.dataset.random_crop));
    put("ss_shuffle_caption", py_bool(c.dataset.shuffle_caption));
    put("ss_enable_bucket", py_bool(b.enable_bucket));
    put("ss_bucket_no_upscale", py_bool(b.bucket_no_upscale));
    put("ss_min_bucket_reso", b.min_bucket_reso.to_string());
    put("ss_max_bucket_reso", b.max_bucket_reso.to_string());
    put("ss_keep_tokens", c.dataset.keep_tokens.to_string());
    put("ss_dataset_dirs", serde_json::Value::Object(dataset_dirs).to_string());
    put("ss_reg_dataset_dirs", serde_json::Value::Object(reg_dirs).to_string());
    if let Some(ds) = first {
        put("ss_bucket_info", bucket_info(ds).to_string());
    }
}

/// `{"buckets": {i: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": e}`.
fn bucket_info(ds: &lorakit_dataset::dataset::LoadedDataset) -> serde_json::Value {
    let mut buckets = serde_json::Map::new();
    for (i, (reso, count)) in ds.histogram.buckets.iter().filter(|(_, n)| *n > 0).enumerate() {
        buckets.insert(i.to_string(), json!({"resolution": [reso.0, reso.1], "count": count}));
    }
    json!({"buckets": buckets, "mean_img_ar_error": ds.mean_ar_error.unwrap_or(0.0)})
}

/// `ss_sd_model_name` and the two hashes of a single-file checkpoint (§3.2).
fn model_keys(model: &Path, put: &mut impl FnMut(&str, String)) {
    if let Some(name) = model.file_name() {
        put("ss_sd_model_name", name.to_string_lossy().into_owned());
    }
    if model.is_file() {
        if let Ok((old, new)) = model_hashes(model) {
            put("ss_sd_model_hash", old);
            put("ss_new_sd_model_hash", new);
        }
    }
}

/// With `dim_from_weights`, the rank and alpha the network really has (the file's modules):
/// the common value, or "Dynamic" when they differ per module (what sd-scripts'
/// `resize_lora.py` writes for such files), rather than an unused `network_dim`.
fn network_shape(dims: &ModuleDims) -> (String, String) {
    let mut ranks = dims.values().map(|&(rank, _)| rank);
    let mut alphas = dims.values().map(|&(_, alpha)| alpha);
    let first_rank = ranks.next();
    let first_alpha = alphas.next();
    let dim = match first_rank {
        Some(r) if ranks.all(|x| x == r) => r.to_string(),
        _ => "Dynamic".into(),
    };
    let alpha = match first_alpha {
        Some(a) if alphas.all(|x| x == a) => py_float(a),
        _ => "Dynamic".into(),
    };
    (dim, alpha)
}

/// `ss_vae_name` and, for a file, `ss_vae_hash` / `ss_new_vae_hash`, as `train_network.py`
/// writes them for `--vae`.
fn vae_keys(vae: &Path, put: &mut impl FnMut(&str, String)) {
    put("ss_vae_name", vae.file_name().map_or_else(|| vae.display().to_string(), |n| n.to_string_lossy().into_owned()));
    if vae.is_file() {
        if let Ok((old, new)) = model_hashes(vae) {
            put("ss_vae_hash", old);
            put("ss_new_vae_hash", new);
        }
    }
}

/// A1111's old hash (SHA-256 of 64 KiB at 1 MiB, 8 hex chars) and the full-file SHA-256.
pub fn model_hashes(path: &Path) -> std::io::Result<(String, String)> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; 0x10000];
    file.seek(SeekFrom::Start(0x100000))?;
    let mut filled = 0;
    loop {
        let n = file.read(&mut chunk[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
        if filled == chunk.len() {
            break;
        }
    }
    let old: String = Sha256::digest(&chunk[..filled]).iter().take(4).map(|b| format!("{b:02x}")).collect();
    file.seek(SeekFrom::Start(0))?;
    let mut full = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        full.update(&buf[..n]);
    }
    let new: String = full.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((old, new))
}

/// `modelspec.*` (§3.3).
fn modelspec_keys(c: &TrainConfig, info: &FamilyInfo, put: &mut impl FnMut(&str, String)) {
    put("modelspec.sai_model_spec", "1.0.1".into());
    put("modelspec.architecture", format!("{}/lora", info.architecture));
    put("modelspec.implementation", info.implementation.clone());
    put("modelspec.title", c.metadata.metadata_title.clone().unwrap_or_else(|| c.folders.output_name.clone()));
    let res = lorakit_dataset::config::ResolutionValue::parse(&c.dataset.resolution)
        .map(|r| r.reso())
        .unwrap_or(info.default_resolution);
    put("modelspec.resolution", format!("{}x{}", res.0, res.1));
    put("modelspec.date", local_iso_timestamp());
    put("modelspec.prediction_type", if c.model.v_parameterization { "v" } else { "epsilon" }.into());
    if c.training.min_timestep != 0 || c.training.max_timestep != 1000 {
        put("modelspec.timestep_range", format!("{},{}", c.training.min_timestep, c.training.max_timestep));
    }
    if let Some(skip) = c.model.clip_skip {
        put("modelspec.encoder_layer", skip.to_string());
    }
    put("modelspec.implementation_version", format!("lorakit/{}", env!("CARGO_PKG_VERSION")));
    let m = &c.metadata;
    for (key, value) in [
        ("modelspec.author", &m.metadata_author),
        ("modelspec.description", &m.metadata_description),
        ("modelspec.license", &m.metadata_license),
        ("modelspec.tags", &m.metadata_tags),
        ("modelspec.trigger_phrase", &m.metadata_trigger_phrase),
    ] {
        if let Some(v) = value {
            put(key, v.clone());
        }
    }
}

/// sd-scripts' `flux_train_network.py` `update_metadata` keys: the flow objective as trained
/// (lorakit's `raw` default written as the type it is) and the T5 mask.
fn flux_keys(c: &TrainConfig, put: &mut impl FnMut(&str, String)) {
    let name = |v: serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let f = &c.flow;
    put("ss_model_type", "flux".into());
    // A Flux LoRA is sd-scripts' networks.lora_flux whatever the config's generic name.
    if c.network.network_module == "networks.lora" {
        put("ss_network_module", "networks.lora_flux".into());
    }
    put("ss_apply_t5_attn_mask", py_bool(c.model.apply_t5_attn_mask));
    put("ss_weighting_scheme", name(json!(f.weighting_scheme)));
    put("ss_logit_mean", py_float(f.logit_mean));
    put("ss_logit_std", py_float(f.logit_std));
    put("ss_mode_scale", py_float(f.mode_scale));
    put("ss_guidance_scale", py_float(f.guidance_scale));
    put("ss_timestep_sampling", name(json!(f.timestep_sampling)));
    put("ss_sigmoid_scale", py_float(f.sigmoid_scale));
    put("ss_model_prediction_type", f.model_prediction_type.map_or_else(|| "raw".to_string(), |p| name(json!(p))));
    put("ss_discrete_flow_shift", py_float(f.discrete_flow_shift));
}

/// sd-scripts' `sd3_train_network.py` `update_metadata` keys: the masks and the timestep draw.
fn sd3_keys(c: &TrainConfig, put: &mut impl FnMut(&str, String)) {
    let name = |v: serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let f = &c.flow;
    // An SD3 LoRA is sd-scripts' networks.lora_sd3 whatever the config's generic name.
    if c.network.network_module == "networks.lora" {
        put("ss_network_module", "networks.lora_sd3".into());
    }
    put("ss_apply_lg_attn_mask", py_bool(c.model.apply_lg_attn_mask));
    put("ss_apply_t5_attn_mask", py_bool(c.model.apply_t5_attn_mask));
    put("ss_weighting_scheme", name(json!(f.weighting_scheme)));
    put("ss_logit_mean", py_float(f.logit_mean));
    put("ss_logit_std", py_float(f.logit_std));
    put("ss_mode_scale", py_float(f.mode_scale));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(2.5e-6), "2.5e-06");
        assert_eq!(py_float(0.3), "0.3");
        assert_eq!(py_float(16.0), "16.0");
        assert_eq!(py_float(0.0), "0.0");
    }
}
