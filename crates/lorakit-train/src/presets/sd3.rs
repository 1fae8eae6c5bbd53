//! SD3.5 Medium and SD3.5 Large presets: the settings of sd-scripts' SD3 guide (bf16, gradient
//! checkpointing, cached latents and text-encoder outputs, transformer only, AdamW8bit at 1e-4),
//! at 1024 px, sized so the dry run's estimate fits the card; Large keeps its transformer in
//! fp8 (`fp8_base`), and Medium uses the guide's position-table crop for multi-resolution
//! training.

use super::{folders_section, LOGGING_SECTION, PRESETS, SAVE_SECTION};

/// One SD3 preset's differences.
struct Sd3 {
    card: &'static str,
    model_file: &'static str,
    fp8: &'static str,
    pos_embed: &'static str,
    rank: u32,
    config: fn() -> lorakit_models::dit::mmdit::MmditConfig,
}

/// The config text of an SD3 preset, or `None` for another name.
pub(super) fn sd3_preset(name: &str) -> Option<String> {
    use lorakit_models::dit::mmdit::MmditConfig;
    let p = match name {
        "sd35-medium" => Sd3 {
            card: "12 GB",
            model_file: "sd3.5_medium.safetensors",
            fp8: "# fp8_base = true          # the 2.5 B-parameter transformer fits in bf16; fp8 saves ~2.5 GB more",
            pos_embed: "pos_emb_random_crop_rate = 0.2   # SD3.5 Medium's recipe for several resolutions (sd-scripts' guide)\n# enable_scaled_pos_embed = true   # position tables scaled per training resolution (KohakuBlueleaf's)",
            rank: 16,
            config: MmditConfig::sd35_medium,
        },
        "sd35-large" => Sd3 {
            card: "16 GB",
            model_file: "sd3.5_large.safetensors",
            fp8: "fp8_base = true             # the 8.1 B-parameter transformer in fp8: 8 GB instead of 16",
            pos_embed: "",
            rank: 16,
            config: MmditConfig::sd35_large,
        },
        _ => return None,
    };
    let description = PRESETS.iter().find(|(n, _)| *n == name).map_or("", |(_, d)| *d);
    Some(format!(
        r#"# lorakit training config — preset "{name}": {description}.
# Run with:  lorakit train {name}.toml        (override any key: --set training.max_train_epochs=5)
# Check the memory it needs first:  lorakit train {name}.toml --dry-run   (the "graphics cards" line)

[accelerate]
mixed_precision = "bf16"    # SD3 trains in bf16
{fp8}
device = "cuda"             # SD3.5 needs a GPU ({card}); on a CPU it would take weeks

[model]
pretrained_model_name_or_path = "models/{model_file}"   # Stability AI's single file (or a diffusers folder)
clip_l = "models/clip_l.safetensors"        # as in ComfyUI's models/clip (sd-scripts' --clip_l)
clip_g = "models/clip_g.safetensors"        # sd-scripts' --clip_g
t5xxl = "models/t5xxl_fp16.safetensors"     # sd-scripts' --t5xxl (t5xxl_fp8_e4m3fn.safetensors works too)
model_family = "sd3"        # a checkpoint of another family is an error
# t5xxl_max_token_length = 256   # SD3's default; shorter saves memory when captions are short
{pos_embed}
{FOLDERS}
[metadata]
# metadata_author = "you"
# metadata_description = "what this LoRA does"
metadata_license = "stabilityai-ai-community"   # the base model's licence
metadata_trigger_phrase = "mychar"   # the word(s) you put in prompts to call the concept

[dataset]
train_data_dir = "dataset"  # folder of N_name subfolders (e.g. 10_mychar: 15–30 images × 10 repeats, natural-language captions)
resolution = "1024"         # SD3.5's training size
enable_bucket = true
min_bucket_reso = 512
max_bucket_reso = 2048
bucket_reso_steps = 64      # SD3 needs multiples of 16 px; sd-scripts checks 32
flip_aug = false            # faces are not symmetric
caption_extension = ".txt"
shuffle_caption = false     # SD3 captions are sentences: keep their order (and cached outputs need fixed captions)

[network]
network_dim = {rank}            # rank: SD3.5 LoRAs of 16–32 are common (file ~{file_mb} MB)
network_alpha = {rank}          # alpha = rank: scale 1, the learning rate below assumes it
network_train_unet_only = true   # train the transformer only (sd-scripts' SD3 guide)
# context_attn_dim = 0      # fewer modules: leave the text side's attention out
# train_block_indices = "0-11"   # or only some joint blocks

[training]
train_batch_size = 1
max_train_epochs = 10
gradient_accumulation_steps = 1
seed = 42
cache_latents = true
cache_latents_to_disk = true
cache_text_encoder_outputs = true          # CLIP-L, CLIP-G and T5-XXL run once, then leave the card
cache_text_encoder_outputs_to_disk = true  # and the next run skips them
gradient_checkpointing = true              # keeps only each joint block's input
max_grad_norm = 1.0

[flow]
weighting_scheme = "uniform"   # sd-scripts' default; "logit_normal" is SD3's own pre-training draw
# training_shift = 1.0         # > 1 favours noisier timesteps

[optimizer]
optimizer_type = "AdamW8bit"   # 8-bit AdamW: a quarter of AdamW's state memory
learning_rate = 1e-4
lr_scheduler = "cosine"
lr_warmup_steps = 0.05

{SAVE}
[samples]
# sample_prompts = "prompts.txt"   # one prompt per line, e.g.:
#   photo of mychar smiling in a garden --w 1024 --h 1024 --s 30 --l 5 --d 1
sample_every_n_epochs = 1

{LOGGING}"#,
        card = p.card,
        fp8 = p.fp8,
        model_file = p.model_file,
        pos_embed = p.pos_embed,
        rank = p.rank,
        file_mb = lora_file_mb(&(p.config)(), p.rank as usize),
        FOLDERS = folders_section(name),
        SAVE = SAVE_SECTION,
        LOGGING = LOGGING_SECTION,
    ))
}

/// The size in MB of a bf16 LoRA of `rank` on sd-scripts' default SD3 modules of `cfg`:
/// rank × Σ(in + out) values of 2 bytes.
fn lora_file_mb(cfg: &lorakit_models::dit::mmdit::MmditConfig, rank: usize) -> usize {
    let features: usize = cfg.lora_targets().iter().map(|t| t.in_dim + t.out_dim).sum();
    rank * features * 2 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::plan::{card_fit, estimate_memory, MemoryInputs};
    use crate::sd3_model::{sd3_activation_scale, sd3_checkpointing_factor};
    use candle_core::DType;
    use lorakit_models::dit::mmdit::MmditConfig;
    use lorakit_models::dit::sd3_network::Sd3NetworkArgs;
    use lorakit_models::lora_inject::{planned_parameters, DitNetworkArgs, NetworkSpec};
    use lorakit_nn::optim::OptimizerKind;

    /// The dry run's estimate for a preset on the full-size model: the transformer and the VAE
    /// stay (the text encoders leave after caching, no sample prompts are set), 256 T5 tokens,
    /// batch 1 at the preset's resolution.
    fn estimate(c: &TrainConfig, cfg: &MmditConfig) -> f64 {
        let spec = NetworkSpec {
            rank: c.network.network_dim,
            alpha: c.network.network_alpha,
            dit: Some(DitNetworkArgs::Sd3(Sd3NetworkArgs::default())),
            ..Default::default()
        };
        let trainable = planned_parameters(&cfg.lora_targets(), "lora_unet", &spec);
        let transformer: usize = cfg.parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let side = c.dataset.resolution.parse::<u64>().unwrap() / 8;
        estimate_memory(&MemoryInputs {
            // SD3's VAE: 83.7 M parameters, as Flux's autoencoder.
            frozen_parameters: transformer + 83_653_863,
            activation_scale: sd3_activation_scale(cfg, 256),
            model_dtype: DType::BF16,
            fp8_base: c.accelerate.fp8_base,
            lora_dtype: DType::F32,
            trainable_parameters: trainable,
            optimizer: OptimizerKind::parse(&c.optimizer.optimizer_type).unwrap(),
            gradient_accumulation_steps: 1,
            max_batch_latent_pixels: side * side,
            gradient_checkpointing: c.training.gradient_checkpointing,
            checkpointing_factor: sd3_checkpointing_factor(cfg),
        })
        .total()
    }

    #[test]
    fn sd3_presets_parse_and_fit_their_cards() {
        for (name, card, cfg) in
            [("sd35-medium", "12 GB", MmditConfig::sd35_medium()), ("sd35-large", "16 GB", MmditConfig::sd35_large())]
        {
            let text = sd3_preset(name).unwrap();
            let c = TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.model.model_family.as_deref(), Some("sd3"), "{name}");
            assert!(c.model.clip_l.is_some() && c.model.clip_g.is_some() && c.model.t5xxl.is_some(), "{name}");
            assert!(c.training.gradient_checkpointing && c.caches_text_encoder_outputs(), "{name}");
            assert!(c.network.network_train_unet_only && !c.dataset.shuffle_caption, "{name}");
            assert_eq!(c.dataset.bucket_reso_steps % 16, 0, "{name}: SD3 needs multiples of 16 px");
            let bytes = estimate(&c, &cfg);
            let fit = card_fit(bytes);
            eprintln!("{name}: {:.1} GB — {fit}", bytes / 1e9);
            assert!(fit.contains(&format!("{card} yes")), "{name}: {fit}");
        }
        let mb = lora_file_mb(&MmditConfig::sd35_large(), 16);
        assert!(mb > 50 && mb < 400, "a rank-16 SD3.5 Large LoRA: {mb} MB");
    }
}
