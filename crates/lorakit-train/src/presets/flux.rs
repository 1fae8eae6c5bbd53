//! FLUX.1-dev presets for 12, 16 and 24 GB cards: the settings sd-scripts' Flux guide trains with
//! (fp8 base, gradient checkpointing, cached latents and text-encoder outputs, shifted σ sampling,
//! `raw` prediction, guidance 1), sized so the dry run's estimate fits the card; 12 GB keeps 16
//! blocks in host memory (`blocks_to_swap`).

use super::{folders_section, LOGGING_SECTION, PRESETS, SAVE_SECTION};

/// One Flux preset's differences.
struct Flux {
    card: &'static str,
    swap: &'static str,
    resolution: &'static str,
    max_bucket: u32,
    rank: u32,
    alpha: u32,
    size_note: &'static str,
}

/// The config text of a Flux preset, or `None` for another name.
pub(super) fn flux_preset(name: &str) -> Option<String> {
    let p = match name {
        "flux-12gb" => Flux {
            card: "12 GB",
            swap: "blocks_to_swap = 16        # 8 double + 16 single blocks stay in RAM and are copied to the card when they run: ~5 GB less on the card, slower steps",
            resolution: "512",
            max_bucket: 1024,
            rank: 16,
            alpha: 16,
            size_note: "512 px: what fits 12 GB with 16 blocks swapped",
        },
        "flux-16gb" => Flux {
            card: "16 GB",
            swap: "# blocks_to_swap = 8      # swap blocks to RAM if a larger resolution does not fit",
            resolution: "512",
            max_bucket: 1024,
            rank: 16,
            alpha: 16,
            size_note: "512 px: the size that fits 16 GB with the transformer in fp8 (768 is tight; 1024 needs 24 GB)",
        },
        "flux-24gb" => Flux {
            card: "24 GB",
            swap: "# blocks_to_swap = 8      # swap blocks to RAM if a larger resolution does not fit",
            resolution: "1024",
            max_bucket: 2048,
            rank: 32,
            alpha: 32,
            size_note: "Flux's own size; 512 trains ~3× faster and is usually enough for a character",
        },
        _ => return None,
    };
    let description = PRESETS.iter().find(|(n, _)| *n == name).map_or("", |(_, d)| *d);
    Some(format!(
        r#"# lorakit training config — preset "{name}": {description}.
# Run with:  lorakit train {name}.toml        (override any key: --set training.max_train_epochs=5)
# Check the memory it needs first:  lorakit train {name}.toml --dry-run   (the "graphics cards" line)

[accelerate]
mixed_precision = "bf16"    # Flux trains in bf16 ("fp16" overflows in its transformer)
fp8_base = true             # the 11.9 B-parameter transformer (and T5-XXL) stored in fp8: 12 GB instead of 24
# fp8_base_unet = true      # fp8 for the transformer only (T5-XXL in bf16: needs more memory while caching)
{swap}
device = "cuda"             # Flux needs a GPU ({card}); on a CPU it would take weeks

[model]
pretrained_model_name_or_path = "models/flux1-dev.safetensors"   # BFL's FLUX.1-dev (or a diffusers folder)
clip_l = "models/clip_l.safetensors"        # as in ComfyUI's models/clip (sd-scripts' --clip_l)
t5xxl = "models/t5xxl_fp16.safetensors"     # t5xxl_fp8_e4m3fn.safetensors works too
ae = "models/ae.safetensors"                # BFL's autoencoder (sd-scripts' --ae)
model_family = "flux"       # a checkpoint of another family is an error
# t5xxl_max_token_length = 512   # dev's default; shorter saves memory when captions are short
# apply_t5_attn_mask = true      # mask T5's padding (then also in ComfyUI/Forge at inference)
{FOLDERS}
[metadata]
# metadata_author = "you"
# metadata_description = "what this LoRA does"
metadata_license = "flux-1-dev-non-commercial-license"   # the base model's licence
metadata_trigger_phrase = "mychar"   # the word(s) you put in prompts to call the concept

[dataset]
train_data_dir = "dataset"  # folder of N_name subfolders (e.g. 10_mychar: 15–30 images × 10 repeats, natural-language captions)
resolution = "{resolution}"         # {size_note}
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = {max_bucket}
bucket_reso_steps = 64      # Flux needs multiples of 16 px; sd-scripts uses 64
flip_aug = false            # faces are not symmetric
caption_extension = ".txt"
shuffle_caption = false     # Flux captions are sentences: keep their order (and cached outputs need fixed captions)

[network]
network_dim = {rank}            # rank: Flux LoRAs of 16–32 are common (file ~{file_mb} MB)
network_alpha = {alpha}          # alpha = rank: scale 1, the learning rate below assumes it
network_train_unet_only = true   # train the transformer only: T5 and CLIP-L already know the words (sd-scripts' Flux guide)
# train_blocks = "single"   # fewer modules: single blocks only
# in_dims = "[4,0,0,0,4]"   # also adapt img_in / txt_in

[training]
train_batch_size = 1
max_train_epochs = 10
gradient_accumulation_steps = 1
seed = 42
cache_latents = true
cache_latents_to_disk = true
cache_text_encoder_outputs = true          # T5-XXL and CLIP-L run once, then leave the card
cache_text_encoder_outputs_to_disk = true  # and the next run skips them
gradient_checkpointing = true              # keeps only each block's input: needed for Flux on any card
max_grad_norm = 1.0

[flow]
timestep_sampling = "shift"    # sd-scripts' Flux guide: σ from a shifted sigmoid of a normal draw
discrete_flow_shift = 3.1582   # the guide's shift
model_prediction_type = "raw"  # the velocity as the model predicts it (the guide's choice)
guidance_scale = 1.0           # guidance embedding value while training (the guide's 1.0)

[optimizer]
optimizer_type = "AdamW8bit"   # 8-bit AdamW: a quarter of AdamW's state memory
learning_rate = 1e-4
lr_scheduler = "cosine"
lr_warmup_steps = 0.05

{SAVE}
[samples]
# sample_prompts = "prompts.txt"   # one prompt per line, e.g.:
#   photo of mychar smiling in a garden --w 1024 --h 1024 --s 20 --g 3.5 --d 1
sample_every_n_epochs = 1

{LOGGING}"#,
        card = p.card,
        swap = p.swap,
        resolution = p.resolution,
        size_note = p.size_note,
        max_bucket = p.max_bucket,
        rank = p.rank,
        alpha = p.alpha,
        file_mb = lora_file_mb(p.rank as usize),
        FOLDERS = folders_section(name),
        SAVE = SAVE_SECTION,
        LOGGING = LOGGING_SECTION,
    ))
}

/// The size in MB of a bf16 FLUX.1-dev LoRA of `rank` on sd-scripts' 304 default modules:
/// rank × Σ(in + out) values of 2 bytes.
fn lora_file_mb(rank: usize) -> usize {
    let features: usize =
        lorakit_models::dit::flux::FluxConfig::dev().lora_targets().iter().map(|t| t.in_dim + t.out_dim).sum();
    rank * features * 2 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::flux_model::{flux_activation_scale, flux_checkpointing_factor};
    use crate::plan::{card_fit, estimate_memory, MemoryInputs};
    use candle_core::DType;
    use lorakit_models::dit::flux::FluxConfig;
    use lorakit_models::dit::flux_network::FluxNetworkArgs;
    use lorakit_models::lora_inject::{planned_parameters, DitNetworkArgs, NetworkSpec};
    use lorakit_nn::optim::OptimizerKind;

    /// The dry run's estimate for a preset on the full-size FLUX.1-dev: the transformer and the
    /// autoencoder stay (the text encoders leave after caching, no sample prompts are set),
    /// 512 T5 tokens, batch 1 at the preset's resolution.
    fn estimate(c: &TrainConfig, fp8: bool) -> f64 {
        use crate::flux_model::device_parameters;
        let dev = FluxConfig::dev();
        let spec = NetworkSpec {
            rank: c.network.network_dim,
            alpha: c.network.network_alpha,
            dit: Some(DitNetworkArgs::Flux(FluxNetworkArgs::default())),
            ..Default::default()
        };
        let trainable = planned_parameters(&dev.lora_targets(), "lora_unet", &spec);
        let n = c.accelerate.blocks_to_swap.unwrap_or(0);
        let transformer = device_parameters(&dev, (n / 2, (n - n / 2) * 2));
        let side = c.dataset.resolution.parse::<u64>().unwrap() / 8;
        estimate_memory(&MemoryInputs {
            frozen_parameters: transformer + 83_653_863,
            activation_scale: flux_activation_scale(&dev, 512),
            model_dtype: DType::BF16,
            fp8_base: fp8,
            lora_dtype: DType::F32,
            trainable_parameters: trainable,
            optimizer: OptimizerKind::parse(&c.optimizer.optimizer_type).unwrap(),
            gradient_accumulation_steps: 1,
            max_batch_latent_pixels: side * side,
            gradient_checkpointing: c.training.gradient_checkpointing,
            checkpointing_factor: flux_checkpointing_factor(&dev, false),
        })
        .total()
    }

    #[test]
    fn flux_presets_parse_and_fit_their_cards() {
        for (name, card) in [("flux-12gb", "12 GB"), ("flux-16gb", "16 GB"), ("flux-24gb", "24 GB")] {
            let text = flux_preset(name).unwrap();
            let c = TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.model.model_family.as_deref(), Some("flux"), "{name}");
            assert!(c.model.clip_l.is_some() && c.model.t5xxl.is_some() && c.model.ae.is_some(), "{name}");
            assert!(c.accelerate.fp8_base && c.accelerate.mixed_precision == "bf16", "{name}");
            assert!(c.training.gradient_checkpointing && c.caches_text_encoder_outputs(), "{name}");
            assert!(c.network.network_train_unet_only && !c.dataset.shuffle_caption, "{name}");
            assert_eq!(c.dataset.bucket_reso_steps % 16, 0, "{name}: Flux needs multiples of 16 px");
            let bytes = estimate(&c, true);
            let fit = card_fit(bytes);
            eprintln!("{name}: {:.1} GB — {fit}", bytes / 1e9);
            assert!(fit.contains(&format!("{card} yes")), "{name}: {fit}");
            if c.accelerate.blocks_to_swap.is_none() {
                assert!(fit.contains("12 GB no"), "{name}: the fp8 transformer alone is 12 GB");
                // Without fp8 the bf16 transformer alone is 23.8 GB: not even the 24 GB card.
                assert!(card_fit(estimate(&c, false)).contains("24 GB no"), "{name}");
            }
        }
        assert!(lora_file_mb(16) > 100 && lora_file_mb(16) < 200, "a rank-16 Flux LoRA is ~150 MB");
    }
}
