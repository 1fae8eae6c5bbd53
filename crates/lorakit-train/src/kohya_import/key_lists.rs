//! Which sd-scripts arguments exist and which of them cannot change the trained weights. The
//! lists follow sd-scripts' `train_network.py` argument parser (with `library/train_util.py`,
//! `config_util.py`, `custom_train_functions.py`, `deepspeed_utils.py`, `sdxl_train_util.py` and
//! the logging options) as of early 2026.

/// Every argument `train_network.py` / `sdxl_train_network.py` accept. A key in an sd-scripts
/// TOML that is not one of them (the GUI's `epoch`, `noise_offset_type`, …) is ignored by
/// sd-scripts itself.
#[rustfmt::skip]
pub const SD_SCRIPTS_ARGS: &[&str] = &[
    "adaptive_noise_scale", "alpha_mask", "async_upload", "base_weights", "base_weights_multiplier",
    "bucket_no_upscale", "bucket_reso_steps", "cache_info", "cache_latents", "cache_latents_to_disk",
    "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "caption_dropout_every_n_epochs",
    "caption_dropout_rate", "caption_extension", "caption_extention", "caption_prefix", "caption_separator",
    "caption_suffix", "caption_tag_dropout_rate", "clip_skip", "color_aug", "conditioning_data_dir",
    "config_file", "console_log_file", "console_log_level", "console_log_simple", "cpu_offload_checkpointing",
    "dataset_class", "dataset_config", "dataset_repeats", "ddp_gradient_as_bucket_view", "ddp_static_graph",
    "ddp_timeout", "debiased_estimation_loss", "debug_dataset", "deepspeed", "dim_from_weights",
    "disable_mmap_load_safetensors", "dynamo_backend", "enable_bucket", "enable_wildcard", "face_crop_aug_range",
    "flip_aug", "fp16_master_weights_and_gradients", "fp8_base", "fp8_base_unet", "full_bf16", "full_fp16",
    "fused_backward_pass", "gradient_accumulation_steps", "gradient_checkpointing", "highvram", "huber_c",
    "huber_scale", "huber_schedule", "huggingface_path_in_repo", "huggingface_repo_id", "huggingface_repo_type",
    "huggingface_repo_visibility", "huggingface_token", "in_json", "initial_epoch", "initial_step",
    "ip_noise_gamma", "ip_noise_gamma_random_strength", "keep_tokens", "keep_tokens_separator", "learning_rate",
    "log_config", "log_prefix", "log_tracker_config", "log_tracker_name", "log_with", "logging_dir",
    "loss_type", "lowram", "lr_decay_steps", "lr_scheduler", "lr_scheduler_args", "lr_scheduler_min_lr_ratio",
    "lr_scheduler_num_cycles", "lr_scheduler_power", "lr_scheduler_timescale", "lr_scheduler_type",
    "lr_warmup_steps", "masked_loss", "max_bucket_reso", "max_data_loader_n_workers", "max_grad_norm",
    "max_timestep", "max_token_length", "max_train_epochs", "max_train_steps", "max_validation_steps",
    "mem_eff_attn", "metadata_author", "metadata_description", "metadata_license", "metadata_tags",
    "metadata_title", "metadata_trigger_phrase", "metadata_usage_hint", "min_bucket_reso", "min_snr_gamma",
    "min_timestep", "mixed_precision", "multires_noise_discount", "multires_noise_iterations", "network_alpha",
    "network_args", "network_dim", "network_dropout", "network_module", "network_train_text_encoder_only",
    "network_train_unet_only", "network_weights", "no_half_vae", "no_metadata", "noise_offset",
    "noise_offset_random_strength", "offload_optimizer_device", "offload_optimizer_nvme_path",
    "offload_param_device", "offload_param_nvme_path", "optimizer_args", "optimizer_type", "output_config",
    "output_dir", "output_name", "persistent_data_loader_workers", "pretrained_model_name_or_path",
    "prior_loss_weight", "random_crop", "reg_data_dir", "resize_interpolation", "resolution", "resume",
    "resume_from_huggingface", "sample_at_first", "sample_every_n_epochs", "sample_every_n_steps",
    "sample_prompts", "sample_sampler", "save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs",
    "save_last_n_epochs_state", "save_last_n_steps", "save_last_n_steps_state", "save_model_as",
    "save_n_epoch_ratio", "save_precision", "save_state", "save_state_on_train_end", "save_state_to_huggingface",
    "scale_v_pred_loss_like_noise_pred", "scale_weight_norms", "sdpa", "secondary_separator", "seed",
    "shuffle_caption", "skip_cache_check", "skip_until_initial_step", "text_encoder_lr", "token_warmup_min",
    "token_warmup_step", "tokenizer_cache_dir", "torch_compile", "train_batch_size", "train_data_dir",
    "training_comment", "unet_lr", "use_8bit_adam", "use_lion_optimizer", "use_safetensors", "v2",
    "v_parameterization", "v_pred_like_loss", "vae", "vae_batch_size", "validate_every_n_epochs",
    "validate_every_n_steps", "validation_seed", "validation_split", "wandb_api_key", "wandb_run_name",
    "weighted_captions", "xformers", "zero3_init_flag", "zero3_save_16bit_model", "zero_stage",
    "zero_terminal_snr",
];

/// Settings that cannot change the trained weights: attention kernels, data-loader workers,
/// memory placement, compilers, distributed launch, hub uploads, console logging, and the
/// kohya_ss GUI's launcher and display fields.
#[rustfmt::skip]
pub const COSMETIC: &[&str] = &[
    // sd-scripts: speed and memory
    "xformers", "sdpa", "mem_eff_attn", "max_data_loader_n_workers", "persistent_data_loader_workers",
    "lowram", "highvram", "lowvram", "torch_compile", "dynamo_backend", "disable_mmap_load_safetensors",
    "cpu_offload_checkpointing", "blocks_to_swap", "text_encoder_batch_size", "skip_cache_check", "cache_info",
    "tokenizer_cache_dir", "use_safetensors", "vae_batch_size",
    // sd-scripts: distributed training
    "ddp_timeout", "ddp_gradient_as_bucket_view", "ddp_static_graph", "deepspeed", "zero_stage",
    "offload_optimizer_device", "offload_optimizer_nvme_path", "offload_param_device", "offload_param_nvme_path",
    "zero3_init_flag", "zero3_save_16bit_model",
    // sd-scripts: hub, trackers and console
    "huggingface_path_in_repo", "huggingface_repo_id", "huggingface_repo_type", "huggingface_repo_visibility",
    "huggingface_token", "async_upload", "save_state_to_huggingface", "resume_from_huggingface", "log_config",
    "log_tracker_config", "wandb_api_key", "wandb_run_name", "console_log_file", "console_log_level",
    "console_log_simple", "config_file", "output_config", "debug_dataset",
    // kohya_ss GUI: accelerate launcher and display
    "num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids", "main_process_port",
    "extra_accelerate_launch_args", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic", "model_list",
    "save_as_bool", "use_wandb", "mem_eff_save", "show_timesteps", "show_timesteps_resolution",
];

/// Whether `key` is an argument of sd-scripts' LoRA training scripts.
pub fn is_sd_scripts_arg(key: &str) -> bool {
    SD_SCRIPTS_ARGS.contains(&key)
}

/// Whether `key` cannot change the trained weights.
pub fn is_cosmetic(key: &str) -> bool {
    COSMETIC.contains(&key)
}

/// Whether a value means "not set" in sd-scripts' and the GUI's sense: `false`, `0`, `""`, `[]`.
pub fn is_unset(value: &toml::Value) -> bool {
    match value {
        toml::Value::Boolean(b) => !b,
        toml::Value::Integer(i) => *i == 0,
        toml::Value::Float(f) => *f == 0.0,
        toml::Value::String(s) => s.trim().is_empty(),
        toml::Value::Array(a) => a.is_empty(),
        _ => false,
    }
}
