//! Commented starting configs (`lorakit config new --preset …`), carrying the guide's advice
//! next to the values it concerns.

/// The presets, by name.
pub const PRESETS: &[(&str, &str)] = &[
    ("sd15-character", "a character or person: strong identity, trigger word, moderate rank"),
    ("sd15-style", "an art style: many varied images, higher rank, no trigger needed"),
];

/// The config text of a preset.
pub fn preset(name: &str) -> Result<String, String> {
    let (rank, alpha, conv, epochs, lr, te_lr, repeats_hint, trigger, flip, shuffle_note) = match name {
        "sd15-character" => (
            16,
            8,
            "# conv_dim = 8          # LoCon: also train 3×3 convs (more detail, bigger file)",
            10,
            "1e-4",
            "5e-5",
            "e.g. 10_mychar: 15–30 images × 10 repeats",
            "\"mychar\"",
            "false   # faces are not symmetric: flips can mix up a side part or a mole",
            "",
        ),
        "sd15-style" => (
            32,
            16,
            "conv_dim = 16            # LoCon helps styles: textures live in the convs",
            8,
            "1e-4",
            "2.5e-5",
            "e.g. 5_mystyle: 50–200 varied images × 5 repeats",
            "\"mystyle\"",
            "true    # styles are usually symmetric: flips double the variety for free",
            "# A style LoRA usually needs no trigger word; keep one if you want to switch it on and off.\n",
        ),
        other => {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            return Err(format!("unknown preset {other:?}; choose one of {}", names.join(", ")));
        }
    };
    let conv_alpha = if conv.starts_with('#') { "# conv_alpha = 4" } else { "conv_alpha = 8" };
    Ok(format!(
        r#"# lorakit training config — preset "{name}".
# Run with:  lorakit train {name}.toml        (override any key: --set training.max_train_epochs=5)
# Show every key with its default:  lorakit train {name}.toml --print-config

[accelerate]
mixed_precision = "no"      # "bf16" on GPUs that support it halves memory; CPU training is fp32
cpu_threads = 0             # 0 = all cores
device = "cpu"              # "cuda" / "metal" with a GPU build

[model]
pretrained_model_name_or_path = "models/v1-5-pruned-emaonly.safetensors"   # your SD1.5 checkpoint
# clip_skip = 2             # anime models (NAI lineage) are trained with clip skip 2

[folders]
output_dir = "output"
output_name = "{name}"
# logging_dir = "output/logs"

[metadata]
# metadata_author = "you"
# metadata_description = "what this LoRA does"
# metadata_license = "CreativeML Open RAIL-M"
metadata_trigger_phrase = {trigger}   # the word(s) you put in prompts to call the concept
{shuffle_note}
[dataset]
train_data_dir = "dataset"  # folder of N_name subfolders ({repeats_hint})
# reg_data_dir = "reg"      # regularisation images (class images), same N_name layout
resolution = "512"
enable_bucket = true        # keep aspect ratios: images go to the nearest of kohya's buckets
flip_aug = {flip}
caption_extension = ".txt"
# caption_prefix = {trigger}   # prepend the trigger word to every caption instead of editing files

[network]
network_dim = {rank}            # rank: capacity of the LoRA (and file size)
network_alpha = {alpha}          # alpha 50–100% of the rank; the effective LR scales with alpha/rank
{conv}
{conv_alpha}
# network_train_unet_only = true   # skip the text encoder (safer with few images)

[training]
train_batch_size = 1        # raise LR with the batch size (LR × batch size rule of thumb)
max_train_epochs = {epochs}
gradient_accumulation_steps = 1
seed = 42
cache_latents = true        # encode images once: much faster epochs
gradient_checkpointing = false
max_token_length = 75       # 150 or 225 for long captions
max_grad_norm = 1.0

[loss]
# min_snr_gamma = 5         # steadier training, fewer wasted steps at extreme timesteps (the guide suggests 5)
# noise_offset = 0.05       # lets the model learn very dark or very bright images

[optimizer]
optimizer_type = "AdamW"
learning_rate = {lr}
unet_lr = {lr}
text_encoder_lr = {te_lr}     # text encoder LR 25–50% of the UNet LR: it overfits fast
lr_scheduler = "cosine"
lr_warmup_steps = 0.05      # warmup 5–10% of the steps (a value < 1 is a fraction of all steps)

[save]
save_every_n_epochs = 1     # one file per epoch: compare them with `lorakit generate --grid`
save_precision = "fp16"
save_state = false          # true: also write resumable states (save.resume = "output/<name>-000004-state")

[samples]
# sample_prompts = "prompts.txt"   # one prompt per line: "{trigger_plain}, smiling --n blurry --w 512 --h 512 --d 1 --s 20"
sample_every_n_epochs = 1
sample_sampler = "euler_a"

[logging]
log_with = "tensorboard"    # view with: tensorboard --logdir output/logs
"#,
        trigger_plain = trigger.trim_matches('"'),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;

    #[test]
    fn presets_parse_and_follow_the_guide() {
        for (name, _) in PRESETS {
            let text = preset(name).unwrap();
            let c = TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            let te = c.text_encoder_lr();
            let unet = c.unet_lr();
            assert!((0.25..=0.5).contains(&(te / unet)), "{name}: TE LR {te} vs UNet {unet}");
            let ratio = c.network.network_alpha / c.network.network_dim as f64;
            assert!((0.5..=1.0).contains(&ratio), "{name}: alpha/rank {ratio}");
            assert!((0.05..=0.1).contains(&c.optimizer.lr_warmup_steps), "{name}");
        }
        assert!(preset("sdxl-anything").unwrap_err().contains("sd15-character"));
    }
}
