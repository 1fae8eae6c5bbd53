//! Commented starting configs (`lorakit config new --preset …`), carrying the guide's advice
//! next to the values it concerns.

/// The presets, by name.
pub const PRESETS: &[(&str, &str)] = &[
    ("sd15-character", "a character or person: strong identity, trigger word, moderate rank"),
    ("sd15-style", "an art style: many varied images, higher rank, no trigger needed"),
    ("sdxl-character", "SDXL: a character or person at 1024 px, trigger word, moderate rank"),
    ("sdxl-style", "SDXL: an art style at 1024 px, U-Net only with cached text-encoder outputs"),
    ("pony", "Pony Diffusion V6 XL (SDXL): a character, booru tags, score tags in the prompts"),
    ("illustrious", "Illustrious-XL / NoobAI-XL (SDXL): a character, booru tags, quality tags in the prompts"),
    ("flux-12gb", "FLUX.1-dev on a 12 GB card: a character at 512 px, fp8 base, 16 blocks swapped to RAM"),
    ("flux-16gb", "FLUX.1-dev on a 16 GB card: a character at 512 px, fp8 base, transformer only"),
    ("flux-24gb", "FLUX.1-dev on a 24 GB card: a character at 1024 px, fp8 base, transformer only"),
    ("sd35-medium", "SD3.5 Medium on a 12 GB card: a character at 1024 px, transformer only"),
    ("sd35-large", "SD3.5 Large on a 16 GB card: a character at 1024 px, fp8 base, transformer only"),
];

mod flux;
mod sd3;

/// The model family a preset is written for (`model.model_family` where the preset sets it; the
/// SD 1.5 presets leave it unset and are for `sd1`) — the GUI shows that family's fields until a
/// base model is picked.
pub fn preset_family(name: &str) -> Option<&'static str> {
    match name {
        "sd15-character" | "sd15-style" => Some("sd1"),
        "sdxl-character" | "sdxl-style" | "pony" | "illustrious" => Some("sdxl"),
        "flux-12gb" | "flux-16gb" | "flux-24gb" => Some("flux"),
        "sd35-medium" | "sd35-large" => Some("sd3"),
        _ => None,
    }
}

/// The config text of a preset.
pub fn preset(name: &str) -> Result<String, String> {
    if let Some(text) = sdxl_preset(name).or_else(|| flux::flux_preset(name)).or_else(|| sd3::sd3_preset(name)) {
        return Ok(text);
    }
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

{FOLDERS}
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

{SAVE}
[samples]
# sample_prompts = "prompts.txt"   # one prompt per line: "{trigger_plain}, smiling --n blurry --w 512 --h 512 --d 1 --s 20"
sample_every_n_epochs = 1
sample_sampler = "euler_a"

{LOGGING}"#,
        trigger_plain = trigger.trim_matches('"'),
        FOLDERS = folders_section(name),
        SAVE = SAVE_SECTION,
        LOGGING = LOGGING_SECTION,
    ))
}

/// The `[save]` section every preset writes.
const SAVE_SECTION: &str = r#"[save]
save_every_n_epochs = 1     # one file per epoch: compare them with `lorakit generate --grid`
save_precision = "fp16"
save_state = false          # true: also write resumable states (save.resume = "output/<name>-000004-state")
"#;

/// The `[logging]` section every preset writes.
const LOGGING_SECTION: &str = r#"[logging]
log_with = "tensorboard"    # view with: tensorboard --logdir output/logs
"#;

/// The `[folders]` section of preset `name` (its files are named after it).
fn folders_section(name: &str) -> String {
    format!("[folders]\noutput_dir = \"output\"\noutput_name = \"{name}\"\n# logging_dir = \"output/logs\"\n")
}

/// What differs between the SDXL presets.
struct Sdxl {
    /// The base model file and what to say about it.
    checkpoint: &'static str,
    /// Lines under `[model]` after `model_family` (clip skip, v-prediction).
    model_notes: &'static str,
    rank: u32,
    alpha: u32,
    /// `[network]` lines after the alpha (LoCon, U-Net only).
    network_extra: &'static str,
    epochs: u32,
    /// U-Net and text-encoder learning rates (`None`: the text encoder is not trained).
    lr: &'static str,
    te_lr: Option<&'static str>,
    repeats_hint: &'static str,
    trigger: &'static str,
    flip: &'static str,
    /// `[dataset]` caption lines (shuffling, keep_tokens).
    captions: &'static str,
    /// `[training]` line about text-encoder output caching.
    te_cache: &'static str,
    max_token_length: &'static str,
    /// `[loss]` lines after noise_offset.
    loss_extra: &'static str,
    /// An example sample prompt line and what to say about prompts for this model.
    prompt: &'static str,
    prompt_note: &'static str,
}

/// The SDXL presets (SDXL base, Pony, Illustrious/NoobAI): 1024 px buckets, bf16, gradient
/// checkpointing, an f32 VAE; `None` for other names.
fn sdxl_preset(name: &str) -> Option<String> {
    let p = match name {
        "sdxl-character" => Sdxl {
            checkpoint: "\"models/sd_xl_base_1.0.safetensors\"   # SDXL 1.0 base, or the SDXL fine-tune you will use the LoRA with",
            model_notes: "",
            rank: 16,
            alpha: 8,
            network_extra: "# conv_dim = 8          # LoCon: also train 3×3 convs (more detail, bigger file)\n# conv_alpha = 4",
            epochs: 10,
            lr: "1e-4",
            te_lr: Some("5e-5"),
            repeats_hint: "e.g. 10_mychar: 15–30 images × 10 repeats",
            trigger: "\"mychar\"",
            flip: "false   # faces are not symmetric: flips can mix up a side part or a mole",
            captions: "",
            te_cache: "",
            max_token_length: "75       # 150 or 225 for long captions",
            loss_extra: "",
            prompt: "photo of mychar, smiling, upper body --n blurry, lowres --w 1024 --h 1024 --l 7 --s 28 --d 1",
            prompt_note: "",
        },
        "sdxl-style" => Sdxl {
            checkpoint: "\"models/sd_xl_base_1.0.safetensors\"   # SDXL 1.0 base, or the SDXL fine-tune you will use the LoRA with",
            model_notes: "",
            rank: 32,
            alpha: 16,
            network_extra: "conv_dim = 8             # LoCon helps styles: textures live in the convs\nconv_alpha = 4\n\
                network_train_unet_only = true   # a style lives in the U-Net; SDXL's two text encoders already know the words",
            epochs: 8,
            lr: "1e-4",
            te_lr: None,
            repeats_hint: "e.g. 5_mystyle: 50–200 varied images × 5 repeats",
            trigger: "\"mystyle\"",
            flip: "true    # styles are usually symmetric: flips double the variety for free",
            captions: "# A style LoRA usually needs no trigger word; keep one if you want to switch it on and off.\n\
                shuffle_caption = false     # cached text-encoder outputs need fixed captions (no shuffle, no dropout)\n",
            te_cache: "cache_text_encoder_outputs = true   # encode every caption once (needs network_train_unet_only and fixed captions): less memory, faster steps\n\
                # cache_text_encoder_outputs_to_disk = true   # keep them next to the images for the next run\n",
            max_token_length: "75       # 150 or 225 for long captions",
            loss_extra: "",
            prompt: "mystyle, a lighthouse on a cliff at sunset --n blurry, lowres --w 1024 --h 1024 --l 7 --s 28 --d 1",
            prompt_note: "",
        },
        "pony" => Sdxl {
            checkpoint: "\"models/ponyDiffusionV6XL.safetensors\"   # Pony Diffusion V6 XL (or a Pony-based merge)",
            model_notes: "# No clip_skip key: Pony's \"clip skip 2\" is what SDXL always does (it conditions on the\n\
                # penultimate layer of both text encoders), so lorakit has no clip_skip for SDXL.\n",
            rank: 16,
            alpha: 8,
            network_extra: "# conv_dim = 8          # LoCon: also train 3×3 convs (more detail, bigger file)\n# conv_alpha = 4",
            epochs: 10,
            lr: "1e-4",
            te_lr: Some("5e-5"),
            repeats_hint: "e.g. 10_mychar: 20–40 images × 10 repeats, booru-tag captions",
            trigger: "\"mychar\"",
            flip: "false   # characters are not symmetric: flips can swap an eye colour or a hair part",
            captions: "shuffle_caption = true      # booru tags have no order: shuffling stops the LoRA tying one tag to a position\n\
                keep_tokens = 1             # ...except the first tag: put the trigger word first in every caption\n\
                # Captions usually leave Pony's score tags out: they rate the whole image, and a LoRA\n\
                # that learns them changes what score_9 means.\n",
            te_cache: "",
            max_token_length: "225      # booru tag lists often run past 75 tokens",
            loss_extra: "",
            prompt: "score_9, score_8_up, score_7_up, source_anime, mychar, 1girl, smiling --n score_6, score_5, score_4, blurry --w 1024 --h 1024 --l 7 --s 28 --d 1",
            prompt_note: "#   Pony needs its score tags at the start of every prompt (score_9, score_8_up, score_7_up, …);\n\
                #   without them samples look far worse than the LoRA is.\n",
        },
        "illustrious" => Sdxl {
            checkpoint: "\"models/Illustrious-XL-v0.1.safetensors\"   # Illustrious-XL, or NoobAI-XL (its descendant)",
            model_notes: "# No clip_skip key: SDXL always conditions on the penultimate layer of both text encoders\n\
                # (\"clip skip 2\"), so lorakit has no clip_skip for SDXL.\n\
                # NoobAI-XL v-pred checkpoints predict v, not noise: uncomment this and\n\
                # loss.zero_terminal_snr below (NoobAI's v-pred models were trained with both).\n\
                # v_parameterization = true\n",
            rank: 16,
            alpha: 8,
            network_extra: "# conv_dim = 8          # LoCon: also train 3×3 convs (more detail, bigger file)\n# conv_alpha = 4",
            epochs: 10,
            lr: "1e-4",
            te_lr: Some("5e-5"),
            repeats_hint: "e.g. 10_mychar: 20–40 images × 10 repeats, Danbooru-tag captions",
            trigger: "\"mychar\"",
            flip: "false   # characters are not symmetric: flips can swap an eye colour or a hair part",
            captions: "shuffle_caption = true      # Danbooru tags have no order: shuffling stops the LoRA tying one tag to a position\n\
                keep_tokens = 1             # ...except the first tag: put the trigger word first in every caption\n",
            te_cache: "",
            max_token_length: "225      # Danbooru tag lists often run past 75 tokens",
            loss_extra: "# zero_terminal_snr = true   # with model.v_parameterization for NoobAI-XL v-pred checkpoints\n",
            prompt: "masterpiece, best quality, very aesthetic, absurdres, mychar, 1girl, smiling --n worst quality, low quality, lowres, bad anatomy, bad hands --w 1024 --h 1024 --l 6 --s 28 --d 1",
            prompt_note: "#   Illustrious/NoobAI answer to quality tags: start prompts with \"masterpiece, best quality, …\"\n\
                #   and put \"worst quality, low quality, …\" in the negative (--n).\n",
        },
        _ => return None,
    };
    let te_lr = match p.te_lr {
        Some(te) => format!(
            "text_encoder_lr = {te}     # text encoder LR 25–50% of the UNet LR: it overfits fast (both SDXL encoders)"
        ),
        None => "# text_encoder_lr = 5e-5   # only used when the text encoders train (network_train_unet_only = false)"
            .into(),
    };
    let description = PRESETS.iter().find(|(n, _)| *n == name).map_or("", |(_, d)| *d);
    Some(format!(
        r#"# lorakit training config — preset "{name}": {description}.
# Run with:  lorakit train {name}.toml        (override any key: --set training.max_train_epochs=5)
# Show every key with its default:  lorakit train {name}.toml --print-config

[accelerate]
mixed_precision = "bf16"    # SDXL at 1024 px needs half precision ("fp16" on GPUs without bf16)
no_half_vae = true          # keep the VAE in f32: SDXL's VAE can overflow to NaN (black images) in half precision
# fp8_base = true           # frozen weights in fp8: fits SDXL LoRA training in about 8 GB
cpu_threads = 0             # 0 = all cores
device = "cuda"             # SDXL needs a GPU build ("metal" on Apple silicon); on a CPU it would take days

[model]
pretrained_model_name_or_path = {checkpoint}
model_family = "sdxl"       # a checkpoint of another family (an SD 1.5 file by mistake) is an error
{model_notes}
{FOLDERS}
[metadata]
# metadata_author = "you"
# metadata_description = "what this LoRA does"
# metadata_license = "the base model's licence"
metadata_trigger_phrase = {trigger}   # the word(s) you put in prompts to call the concept

[dataset]
train_data_dir = "dataset"  # folder of N_name subfolders ({repeats_hint})
# reg_data_dir = "reg"      # regularisation images (class images), same N_name layout
resolution = "1024"         # SDXL's own size: buckets of about one megapixel
enable_bucket = true        # keep aspect ratios: images go to the nearest bucket
min_bucket_reso = 256
max_bucket_reso = 2048
bucket_reso_steps = 64      # SDXL needs a multiple of 32 (sd-scripts refuses others)
flip_aug = {flip}
caption_extension = ".txt"
{captions}# caption_prefix = {trigger}   # prepend the trigger word to every caption instead of editing files

[network]
network_dim = {rank}            # rank: capacity of the LoRA (and file size; SDXL files are ~3× SD 1.5's)
network_alpha = {alpha}          # alpha 50–100% of the rank; the effective LR scales with alpha/rank
{network_extra}

[training]
train_batch_size = 1        # raise LR with the batch size (LR × batch size rule of thumb)
max_train_epochs = {epochs}
gradient_accumulation_steps = 1
seed = 42
cache_latents = true        # encode images once: much faster epochs
cache_latents_to_disk = true   # SDXL's VAE is slow at 1024 px: keep the latents for the next run
{te_cache}gradient_checkpointing = true   # about half the memory for ~20% more time: needed for SDXL on most GPUs
max_token_length = {max_token_length}
max_grad_norm = 1.0

[loss]
# min_snr_gamma = 5         # steadier training, fewer wasted steps at extreme timesteps (the guide suggests 5)
# noise_offset = 0.0357     # the offset SDXL base was trained with: darker darks, brighter brights
{loss_extra}
[optimizer]
optimizer_type = "AdamW"    # "AdamW8bit" saves memory; "Prodigy" with learning_rate = 1 finds the LR itself
learning_rate = {lr}
unet_lr = {lr}
{te_lr}
lr_scheduler = "cosine"
lr_warmup_steps = 0.05      # warmup 5–10% of the steps (a value < 1 is a fraction of all steps)

{SAVE}
[samples]
# sample_prompts = "prompts.txt"   # one prompt per line, e.g.:
#   {prompt}
{prompt_note}sample_every_n_epochs = 1
sample_sampler = "euler_a"

{LOGGING}"#,
        checkpoint = p.checkpoint,
        model_notes = p.model_notes,
        trigger = p.trigger,
        repeats_hint = p.repeats_hint,
        flip = p.flip,
        captions = p.captions,
        rank = p.rank,
        alpha = p.alpha,
        network_extra = p.network_extra,
        epochs = p.epochs,
        te_cache = p.te_cache,
        max_token_length = p.max_token_length,
        loss_extra = p.loss_extra,
        lr = p.lr,
        prompt = p.prompt,
        prompt_note = p.prompt_note,
        FOLDERS = folders_section(name),
        SAVE = SAVE_SECTION,
        LOGGING = LOGGING_SECTION,
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
            if c.trains_text_encoder() {
                let te = c.text_encoder_lr();
                let unet = c.unet_lr();
                assert!((0.25..=0.5).contains(&(te / unet)), "{name}: TE LR {te} vs UNet {unet}");
            }
            let ratio = c.network.network_alpha / c.network.network_dim as f64;
            assert!((0.5..=1.0).contains(&ratio), "{name}: alpha/rank {ratio}");
            assert!((0.05..=0.1).contains(&c.optimizer.lr_warmup_steps), "{name}");
        }
        let err = preset("sdxl-anything").unwrap_err();
        for (name, _) in PRESETS {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn every_preset_has_a_family_that_its_config_agrees_with() {
        for (name, _) in PRESETS {
            let family = preset_family(name).unwrap_or_else(|| panic!("{name}: no family"));
            let c = TrainConfig::from_toml_str(&preset(name).unwrap(), &[]).unwrap();
            assert_eq!(c.model.model_family.as_deref().unwrap_or("sd1"), family, "{name}");
            // No key of another family set to a non-default value.
            let set = toml::Value::try_from(&c).unwrap();
            let defaults = toml::Value::try_from(TrainConfig::default()).unwrap();
            for (section, keys) in set.as_table().unwrap() {
                for (key, value) in keys.as_table().unwrap() {
                    let applies = crate::config::key_families(section, key).families.contains(&family);
                    assert!(applies || defaults[section].get(key) == Some(value), "{name}: {section}.{key}");
                }
            }
        }
        assert_eq!(preset_family("no-such-preset"), None);
    }

    #[test]
    fn sdxl_presets_have_what_the_guide_promises() {
        for name in ["sdxl-character", "sdxl-style", "pony", "illustrious"] {
            let text = preset(name).unwrap();
            let c = TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.model.model_family.as_deref(), Some("sdxl"), "{name}");
            assert_eq!(c.model.clip_skip, None, "{name}: SDXL has no clip_skip");
            let d = &c.dataset;
            assert_eq!(d.resolution, "1024", "{name}");
            assert!(d.enable_bucket && d.min_bucket_reso == 256 && d.max_bucket_reso == 2048, "{name}");
            assert_eq!(d.bucket_reso_steps % 32, 0, "{name}: SDXL needs a multiple of 32");
            assert_eq!(d.bucket_reso_steps, 64, "{name}");
            assert!(c.training.gradient_checkpointing && c.training.cache_latents, "{name}");
            assert_eq!(c.accelerate.mixed_precision, "bf16", "{name}");
            assert!(c.accelerate.no_half_vae, "{name}");
            assert!(!c.model.v_parameterization && !c.loss.zero_terminal_snr, "{name}: ε-prediction by default");
            assert_eq!(c.folders.output_name, name);
            // Every comment explains a value: no bare `clip_skip` key, even commented out.
            assert!(
                !text.lines().any(|l| l.trim_start().trim_start_matches('#').trim_start().starts_with("clip_skip")),
                "{name}"
            );
            // Cached text-encoder outputs only where the text encoders are frozen and captions fixed.
            if c.caches_text_encoder_outputs() {
                assert!(c.network.network_train_unet_only && !c.dataset.shuffle_caption, "{name}");
            }
        }
        let style = TrainConfig::from_toml_str(&preset("sdxl-style").unwrap(), &[]).unwrap();
        assert!(style.network.network_train_unet_only && style.training.cache_text_encoder_outputs);
        assert!(style.dataset.flip_aug && style.network.conv_dim.is_some());
        let character = TrainConfig::from_toml_str(&preset("sdxl-character").unwrap(), &[]).unwrap();
        assert!(character.trains_text_encoder() && !character.caches_text_encoder_outputs());
        assert_eq!(character.optimizer.text_encoder_lr, Some(crate::config::TextEncoderLr::All(5e-5)));

        let pony = preset("pony").unwrap();
        assert!(pony.contains("score_9, score_8_up, score_7_up"), "Pony's score tags in the sample prompt");
        assert!(pony.contains("clip skip 2") && pony.contains("penultimate layer"), "why there is no clip_skip");
        let c = TrainConfig::from_toml_str(&pony, &[]).unwrap();
        assert!(c.dataset.shuffle_caption && c.dataset.keep_tokens == 1 && c.training.max_token_length == 225);

        let illustrious = preset("illustrious").unwrap();
        assert!(illustrious.contains("masterpiece, best quality"), "quality tags in the sample prompt");
        assert!(
            illustrious.contains("# v_parameterization = true") && illustrious.contains("# zero_terminal_snr = true")
        );
        // Uncommenting the two NoobAI v-pred lines gives a valid v-prediction config.
        let vpred = illustrious
            .replace("# v_parameterization = true", "v_parameterization = true")
            .replace("# zero_terminal_snr = true", "zero_terminal_snr = true");
        let c = TrainConfig::from_toml_str(&vpred, &[]).unwrap();
        assert!(c.model.v_parameterization && c.loss.zero_terminal_snr);
    }
}
