//! The training configuration: one TOML file whose sections follow the guide (accelerate, model,
//! folders, metadata, dataset, network, training, optimizer, save, samples, logging). Keys are
//! named like sd-scripts' arguments so a kohya user recognises every one of them.
//!
//! Loading is layered: built-in defaults ← the file ← `--set section.key=value` overrides. Unknown
//! keys are errors that name the key and its section (a misspelt `learning_rate` must never be
//! silently ignored, as sd-scripts does).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// `[accelerate]`: precision and compute resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccelerateSection {
    /// `no`, `fp16` or `bf16`: the dtype of the frozen models and of the computation; LoRA
    /// weights and optimizer state stay f32 (unless `full_fp16` / `full_bf16`).
    pub mixed_precision: String,
    /// LoRA weights and gradients in fp16 too (needs `mixed_precision = "fp16"`; less memory,
    /// less precise updates).
    pub full_fp16: bool,
    /// LoRA weights and gradients in bf16 (needs `mixed_precision = "bf16"`).
    pub full_bf16: bool,
    /// Store the frozen U-Net and text encoder linear/conv weights in fp8 (e4m3), cast to the
    /// compute dtype layer by layer (needs `mixed_precision` fp16 or bf16).
    pub fp8_base: bool,
    /// Flux: fp8 for the transformer only, T5 stays in the compute dtype (`--fp8_base_unet`).
    pub fp8_base_unet: bool,
    /// Flux and SD3: keep this many transformer blocks in host memory and copy each to the card
    /// when it runs (`--blocks_to_swap`; Flux: N/2 double and (N − N/2)·2 single blocks, SD3:
    /// the last N joint blocks, at most depth − 2). Needs gradient checkpointing.
    pub blocks_to_swap: Option<usize>,
    /// Flux: keep the block inputs gradient checkpointing saves in host memory, copied back to
    /// the card for the recomputation (`--cpu_offload_checkpointing`). Needs gradient
    /// checkpointing, not with `blocks_to_swap`; no effect on a CPU run.
    pub cpu_offload_checkpointing: bool,
    /// Keep the VAE in f32 under fp16/bf16 (for VAEs that overflow in half precision).
    pub no_half_vae: bool,
    /// CPU threads (0 = all cores).
    pub cpu_threads: usize,
    /// `cpu`, `cuda` or `metal` (GPU backends need a build with that cargo feature).
    pub device: String,
}

impl Default for AccelerateSection {
    fn default() -> Self {
        AccelerateSection {
            mixed_precision: "no".into(),
            full_fp16: false,
            full_bf16: false,
            fp8_base: false,
            fp8_base_unet: false,
            blocks_to_swap: None,
            cpu_offload_checkpointing: false,
            no_half_vae: false,
            cpu_threads: 0,
            device: "cpu".into(),
        }
    }
}

/// `[model]`: the base checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Single-file `.safetensors` checkpoint or diffusers folder.
    pub pretrained_model_name_or_path: Option<PathBuf>,
    /// SD2.x (detected from the checkpoint anyway; kept for sd-scripts configs).
    pub v2: bool,
    /// Train with the v-prediction target (SD2 768-v models).
    pub v_parameterization: bool,
    /// Use the n-th last CLIP layer (1 = last; anime models use 2).
    pub clip_skip: Option<usize>,
    /// The family this config is written for (`sd1`, `sd2`, `sdxl`, `flux`, `sd3`); the
    /// checkpoint must be of it.
    /// Unset: whatever family the checkpoint is. `--from-kohya` sets it from the GUI's model
    /// checkboxes and `v2`, so a config for one family never trains another.
    pub model_family: Option<String>,
    /// Flux, SD3: the CLIP-L text encoder file (sd-scripts' `--clip_l`); unset: the diffusers
    /// folder's `text_encoder/` (SD3: or the one inside the single file).
    pub clip_l: Option<PathBuf>,
    /// SD3: the CLIP-G (OpenCLIP bigG) text encoder file (sd-scripts' `--clip_g`); unset: the
    /// one inside the single file, or the folder's `text_encoder_2/`.
    pub clip_g: Option<PathBuf>,
    /// Flux, SD3: the T5-XXL text encoder file (sd-scripts' `--t5xxl`); unset: the folder's
    /// `text_encoder_2/` (Flux) / `text_encoder_3/` or the single file's own (SD3).
    pub t5xxl: Option<PathBuf>,
    /// Flux: the autoencoder, BFL's `ae.safetensors` (sd-scripts' `--ae`); unset: the folder's
    /// `vae/`.
    pub ae: Option<PathBuf>,
    /// SD 1.x/2.x, SDXL, SD3: a VAE to use instead of the checkpoint's (sd-scripts' `--vae`,
    /// e.g. SDXL's fp16-fix VAE): an LDM or diffusers `.safetensors` file or a diffusers VAE
    /// folder, of the model's own VAE architecture. Unset: the checkpoint's VAE.
    pub vae: Option<PathBuf>,
    /// Flux, SD3: T5 tokens per caption (sd-scripts' `--t5xxl_max_token_length`; unset: 512 for
    /// Flux dev, 256 for schnell and SD3).
    pub t5xxl_max_token_length: Option<usize>,
    /// Flux: mask T5's padding tokens in T5 and the transformer; SD3: in T5 only
    /// (`--apply_t5_attn_mask`).
    pub apply_t5_attn_mask: bool,
    /// SD3: mask CLIP-L's and CLIP-G's padding tokens in their attention (`--apply_lg_attn_mask`).
    pub apply_lg_attn_mask: bool,
    /// SD3: probability that a caption's CLIP-L output is zeroed (`--clip_l_dropout_rate`).
    pub clip_l_dropout_rate: f64,
    /// SD3: probability that a caption's CLIP-G output is zeroed (`--clip_g_dropout_rate`).
    pub clip_g_dropout_rate: f64,
    /// SD3: probability that a caption's T5 output is zeroed (`--t5_dropout_rate`).
    pub t5_dropout_rate: f64,
    /// SD3: probability that a step crops the position table at a random place instead of the
    /// centre (`--pos_emb_random_crop_rate`; SD3.5 Medium's training recipe).
    pub pos_emb_random_crop_rate: f64,
    /// SD3.5 Medium: position tables scaled to each training resolution
    /// (`--enable_scaled_pos_embed`).
    pub enable_scaled_pos_embed: bool,
}

/// `[folders]`: where outputs go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FoldersSection {
    /// Where LoRA files, states and samples are written.
    pub output_dir: PathBuf,
    /// Base name of the LoRA files (`<name>-000001.safetensors`, `<name>.safetensors`).
    pub output_name: String,
    /// TensorBoard and plain logs (unset: `<output_dir>/logs`).
    pub logging_dir: Option<PathBuf>,
}

impl Default for FoldersSection {
    fn default() -> Self {
        FoldersSection { output_dir: PathBuf::from("output"), output_name: "last".into(), logging_dir: None }
    }
}

/// `[metadata]`: what the LoRA file says about itself (modelspec.*).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataSection {
    /// `modelspec.title` (default: the output name).
    pub metadata_title: Option<String>,
    /// `modelspec.author`.
    pub metadata_author: Option<String>,
    /// `modelspec.description`.
    pub metadata_description: Option<String>,
    /// `modelspec.license`.
    pub metadata_license: Option<String>,
    /// `modelspec.tags` (comma-separated).
    pub metadata_tags: Option<String>,
    /// `modelspec.trigger_phrase`: the words that call up the concept.
    pub metadata_trigger_phrase: Option<String>,
    /// `ss_training_comment`.
    pub training_comment: Option<String>,
}

/// `[dataset]`: what to train on. Either DreamBooth folders (`train_data_dir` with `N_name`
/// subfolders, optional `reg_data_dir`) or an sd-scripts dataset TOML (`dataset_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetSection {
    /// Parent of the `N_name` image folders.
    pub train_data_dir: Option<PathBuf>,
    /// Parent of regularisation `N_name` folders.
    pub reg_data_dir: Option<PathBuf>,
    /// sd-scripts dataset TOML (overrides the folders).
    pub dataset_config: Option<PathBuf>,
    /// `"512"` or `"768,512"` (W,H).
    pub resolution: String,
    /// Aspect-ratio buckets.
    pub enable_bucket: bool,
    /// Smallest bucket side.
    pub min_bucket_reso: u32,
    /// Largest bucket side.
    pub max_bucket_reso: u32,
    /// Bucket side granularity.
    pub bucket_reso_steps: u32,
    /// One bucket per image size, never upscale.
    pub bucket_no_upscale: bool,
    /// Caption file extension.
    pub caption_extension: String,
    /// Resize filter (`lanczos`, `area`, …; unset: area when shrinking, else lanczos).
    pub resize_interpolation: Option<String>,
    /// 50% horizontal flips.
    pub flip_aug: bool,
    /// Random instead of center crop (cannot be combined with latent caching).
    pub random_crop: bool,
    /// sd-scripts' colour augmentation: a third of the samples get a small hue shift or gamma
    /// (cannot be combined with latent caching).
    pub color_aug: bool,
    /// Mask the loss with each image's alpha channel (transparent parts are not learned).
    pub alpha_mask: bool,
    /// Text put before every caption (e.g. the trigger word).
    pub caption_prefix: Option<String>,
    /// Text put after every caption.
    pub caption_suffix: Option<String>,
    /// Loss weight of regularisation images.
    pub prior_loss_weight: f64,
    /// Shuffle the caption's tags each time (the first `keep_tokens` stay in place).
    pub shuffle_caption: bool,
    /// Tags at the start that are never shuffled or dropped.
    pub keep_tokens: u32,
    /// Marker splitting fixed / shuffled / fixed-suffix parts (overrides keep_tokens).
    pub keep_tokens_separator: String,
    /// Separator inside a tag group that moves as one (replaced by caption_separator).
    pub secondary_separator: Option<String>,
    /// Tag separator.
    pub caption_separator: String,
    /// `{a|b}` alternatives and a random caption line.
    pub enable_wildcard: bool,
    /// Tags used at step 0 of token warmup.
    pub token_warmup_min: u32,
    /// Step (or fraction of all steps, < 1) at which all tags are used (0 = off).
    pub token_warmup_step: f64,
    /// Probability of training a sample with an empty caption.
    pub caption_dropout_rate: f64,
    /// Empty captions in every epoch divisible by N (0 = off).
    pub caption_dropout_every_n_epochs: u32,
    /// Probability of dropping each (non-fixed) tag.
    pub caption_tag_dropout_rate: f64,
    /// Fraction of each (non-regularisation) subset's images held out of training to measure a
    /// validation loss on (sd-scripts' `--validation_split`, 0 ≤ split < 1): the subset's sorted
    /// file list is shuffled and cut as sd-scripts cuts it, so the same images are trained.
    pub validation_split: f64,
    /// Seed of the validation split's shuffle (`--validation_seed`; also seeds the validation
    /// loss' noise). Unset: the run seed, with sd-scripts' quirk that the validation images are
    /// then cut from a second shuffle — some images can be in both splits (a note says so).
    pub validation_seed: Option<u64>,
}

impl Default for DatasetSection {
    fn default() -> Self {
        DatasetSection {
            train_data_dir: None,
            reg_data_dir: None,
            dataset_config: None,
            resolution: "512".into(),
            enable_bucket: true,
            min_bucket_reso: 256,
            max_bucket_reso: 1024,
            bucket_reso_steps: 64,
            bucket_no_upscale: false,
            caption_extension: ".txt".into(),
            resize_interpolation: None,
            flip_aug: false,
            random_crop: false,
            color_aug: false,
            alpha_mask: false,
            caption_prefix: None,
            caption_suffix: None,
            prior_loss_weight: 1.0,
            shuffle_caption: false,
            keep_tokens: 0,
            keep_tokens_separator: String::new(),
            secondary_separator: None,
            caption_separator: ",".into(),
            enable_wildcard: false,
            token_warmup_min: 1,
            token_warmup_step: 0.0,
            caption_dropout_rate: 0.0,
            caption_dropout_every_n_epochs: 0,
            caption_tag_dropout_rate: 0.0,
            validation_split: 0.0,
            validation_seed: None,
        }
    }
}

/// `[network]`: the LoRA's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    /// `networks.lora` (kohya LoRA; LoCon with `conv_dim`) or `lycoris.kohya` (LyCORIS: `algo`
    /// picks LoHa or LoKr).
    pub network_module: String,
    /// LyCORIS algorithm (`network_args` `algo=…`), only with `network_module = "lycoris.kohya"`:
    /// `loha` (Hadamard product of two low-rank products), `lokr` (Kronecker product) or
    /// `locon` / `lora` (LyCORIS' own LoRA/LoCon: kohya's file layout, LyCORIS' layers, rank
    /// dropout and max-norm).
    pub algo: Option<String>,
    /// LyCORIS preset (`network_args` `preset=…`): `full` (LyCORIS' default: attention, ResNet and
    /// resampler layers, k×k convs with `conv_dim`, which defaults to `network_dim`), `full-lin`
    /// (no k×k convs) or `attn-mlp` (transformer blocks only).
    pub preset: Option<String>,
    /// LoKr: the preferred size of the smaller Kronecker factor (LyCORIS' `factor`; −1: as
    /// balanced as each layer's dimensions allow).
    pub factor: i64,
    /// LoKr: also split the smaller Kronecker factor into a low-rank product (when the rank is
    /// below half its larger side).
    pub decompose_both: bool,
    /// LoKr: both Kronecker factors full matrices whatever the rank (LyCORIS' `full_matrix`; a
    /// rank of at least half a factor's side, e.g. the presets' network_dim = 100000, makes that
    /// factor full anyway).
    pub full_matrix: bool,
    /// Rank of linear and 1×1 modules.
    pub network_dim: usize,
    /// Alpha (scale = alpha / rank).
    pub network_alpha: f64,
    /// Rank of 3×3 conv modules (LoCon); unset: attention and linear layers only. Under
    /// `lycoris.kohya`, unset means `network_dim` and 0 means no k×k conv modules (as in LyCORIS).
    pub conv_dim: Option<usize>,
    /// Alpha of the conv modules.
    pub conv_alpha: Option<f64>,
    /// Neuron dropout on the LoRA bottleneck.
    pub network_dropout: Option<f64>,
    /// Per-rank dropout (sd-scripts' `network_args = ["rank_dropout=…"]`).
    pub rank_dropout: Option<f64>,
    /// Probability of skipping a whole module for a step (`module_dropout`).
    pub module_dropout: Option<f64>,
    /// Train only the UNet's LoRA.
    pub network_train_unet_only: bool,
    /// Train only the text encoder's LoRA.
    pub network_train_text_encoder_only: bool,
    /// Start from these LoRA weights.
    pub network_weights: Option<PathBuf>,
    /// Take the network's modules, ranks and alphas from `network_weights` (sd-scripts'
    /// `--dim_from_weights`): exactly the file's modules are trained, each at its own rank (a
    /// resized LoRA keeps its per-module ranks); `network_dim`, `network_alpha`, `conv_dim` and
    /// block ranks are not used. LoRA / LoCon files with kohya names (convert others with
    /// `lorakit convert --to kohya`); not with LyCORIS or `split_qkv`.
    pub dim_from_weights: bool,
    /// Strength of the LoRA while training (the multiplier sd-scripts' `create_network` takes;
    /// its trainer always passes 1.0). Saved files are unaffected.
    pub network_multiplier: f64,
    /// U-Net down-block LR weights: 12 comma-separated values (SDXL 9) or a preset `cosine`,
    /// `sine`, `linear`, `reverse_linear`, `zeros`, optionally `+base` (`network_args`
    /// `down_lr_weight`). A block whose weight is 0 gets no LoRA.
    pub down_lr_weight: Option<String>,
    /// Mid-block LR weight(s): 1 value (SDXL 3).
    pub mid_lr_weight: Option<String>,
    /// Up-block LR weights, like `down_lr_weight`.
    pub up_lr_weight: Option<String>,
    /// Block LR weights at or below this become 0.
    pub block_lr_zero_threshold: f64,
    /// Rank per U-Net block slot: 25 comma-separated values (SDXL 23), sd-scripts' `block_dims`.
    pub block_dims: Option<String>,
    /// Alpha per block slot (default `network_alpha`).
    pub block_alphas: Option<String>,
    /// Rank of 3×3 conv modules per block slot (default `conv_dim`).
    pub conv_block_dims: Option<String>,
    /// Alpha of 3×3 conv modules per block slot (default `conv_alpha`).
    pub conv_block_alphas: Option<String>,
    /// LoRA+: the `up` matrices learn this many times faster (both networks).
    pub loraplus_lr_ratio: Option<f64>,
    /// LoRA+ ratio for the U-Net (wins over `loraplus_lr_ratio`).
    pub loraplus_unet_lr_ratio: Option<f64>,
    /// LoRA+ ratio for the text encoder (wins over `loraplus_lr_ratio`).
    pub loraplus_text_encoder_lr_ratio: Option<f64>,
    /// Max-norm regularisation: scales down every module whose weight change has a Frobenius
    /// norm above this (sd-scripts' `scale_weight_norms`; 1.0 is common).
    pub scale_weight_norms: Option<f64>,
    /// Flux: which transformer blocks get modules — `all` (default), `single` or `double`
    /// (`lora_flux.py`'s `train_blocks`).
    pub train_blocks: Option<String>,
    /// Flux: rank of the double blocks' image attention (`img_attn_dim`; 0: none).
    pub img_attn_dim: Option<usize>,
    /// Flux: rank of the double blocks' text attention (`txt_attn_dim`).
    pub txt_attn_dim: Option<usize>,
    /// Flux: rank of the double blocks' image MLP (`img_mlp_dim`).
    pub img_mlp_dim: Option<usize>,
    /// Flux: rank of the double blocks' text MLP (`txt_mlp_dim`).
    pub txt_mlp_dim: Option<usize>,
    /// Flux: rank of the double blocks' image modulation (`img_mod_dim`).
    pub img_mod_dim: Option<usize>,
    /// Flux: rank of the double blocks' text modulation (`txt_mod_dim`).
    pub txt_mod_dim: Option<usize>,
    /// Flux: rank of the single blocks' `linear1` / `linear2` (`single_dim`).
    pub single_dim: Option<usize>,
    /// Flux: rank of the single blocks' modulation (`single_mod_dim`).
    pub single_mod_dim: Option<usize>,
    /// Flux: ranks of the input layers img_in, time_in, vector_in, guidance_in, txt_in, e.g.
    /// `"[4,0,0,0,4]"` (`in_dims`; unset: none of them).
    pub in_dims: Option<String>,
    /// Flux: the double blocks that get modules: `all`, `none` or indices and ranges such as
    /// `"0-3,7"` (`train_double_block_indices`).
    pub train_double_block_indices: Option<String>,
    /// Flux: the single blocks that get modules, as `train_double_block_indices`.
    pub train_single_block_indices: Option<String>,
    /// Flux, SD3: also train a LoRA on T5-XXL (`lora_te3_…`; `train_t5xxl`).
    pub train_t5xxl: bool,
    /// Flux, SD3: separate LoRA factors for q, k, v (and Flux's single blocks' MLP input)
    /// inside the fused `qkv` / `linear1` layers (`split_qkv`); saved fused, with alpha × parts
    /// so loaders apply the trained scale.
    pub split_qkv: bool,
    /// SD3: rank of the joint blocks' context-side attention (`context_attn_dim`; 0: none).
    pub context_attn_dim: Option<usize>,
    /// SD3: rank of the context-side MLP (`context_mlp_dim`).
    pub context_mlp_dim: Option<usize>,
    /// SD3: rank of the context-side modulation (`context_mod_dim`).
    pub context_mod_dim: Option<usize>,
    /// SD3: rank of the x-side (image) attention, both attentions on SD3.5 Medium (`x_attn_dim`).
    pub x_attn_dim: Option<usize>,
    /// SD3: rank of the x-side MLP (`x_mlp_dim`).
    pub x_mlp_dim: Option<usize>,
    /// SD3: rank of the x-side modulation (`x_mod_dim`).
    pub x_mod_dim: Option<usize>,
    /// SD3: ranks of context_embedder, t_embedder, x_embedder, y_embedder, the final layer's
    /// modulation and its linear, e.g. `"[4,0,0,0,4,4]"` (`emb_dims`; unset: none of them).
    pub emb_dims: Option<String>,
    /// SD3: the joint blocks that get modules: `all`, `none` or indices and ranges such as
    /// `"0-3,7"` (`train_block_indices`).
    pub train_block_indices: Option<String>,
}

/// The LyCORIS presets `network.preset` accepts.
pub const LYCORIS_PRESETS: &[&str] = &["full", "full-lin", "attn-mlp"];

impl NetworkSection {
    /// Whether this is a LyCORIS (`lycoris.kohya`) network.
    pub fn is_lycoris(&self) -> bool {
        self.network_module == "lycoris.kohya"
    }

    /// Checks `network_module`, `algo`, `preset` and the LoKr options, and refuses what a
    /// LyCORIS LoHa/LoKr network cannot do as LyCORIS does it.
    fn validate_module(&self, problems: &mut Vec<String>) {
        let lokr_options_set = self.factor != -1 || self.decompose_both || self.full_matrix;
        match self.network_module.as_str() {
            "networks.lora" => {
                for (key, set) in [
                    ("algo", self.algo.is_some()),
                    ("preset", self.preset.is_some()),
                    ("factor, decompose_both, full_matrix", lokr_options_set),
                ] {
                    if set {
                        problems.push(format!(
                            "network.{key}: LyCORIS options, but network.network_module = \"networks.lora\"; set network_module = \"lycoris.kohya\" (with an algo) or remove them"
                        ));
                    }
                }
                return;
            }
            "lycoris.kohya" => {}
            other => {
                problems.push(format!(
                    "network.network_module = {other:?}: use \"networks.lora\" (LoRA/LoCon) or \"lycoris.kohya\" (LyCORIS LoHa/LoKr/LoCon)"
                ));
                return;
            }
        }
        match self.algo.as_deref() {
            Some(a @ ("loha" | "locon" | "lora")) if lokr_options_set => problems.push(format!(
                "network.factor/decompose_both/full_matrix are LoKr options; LyCORIS ignores them for algo = {a:?}: remove them"
            )),
            Some("loha" | "lokr" | "locon" | "lora") => {}
            Some(other) => problems.push(format!(
                "network.algo = {other:?}: lorakit trains LyCORIS' \"loha\", \"lokr\" and \"locon\" (\"lora\") only"
            )),
            None => problems.push(
                "network.algo: network_module = \"lycoris.kohya\" needs an algorithm: \"loha\", \"lokr\" or \"locon\"".into(),
            ),
        }
        if let Some(p) = self.preset.as_deref().filter(|p| !LYCORIS_PRESETS.contains(p)) {
            problems.push(format!(
                "network.preset = {p:?}: lorakit supports LyCORIS' presets {} (or leave it unset for \"full\")",
                LYCORIS_PRESETS.join(", ")
            ));
        }
        let refuse = |problems: &mut Vec<String>, key: &str, why: &str| {
            problems.push(format!("network.{key} with network_module = \"lycoris.kohya\": {why}; remove it"))
        };
        if self.network_dropout.is_some_and(|p| p > 0.0) {
            refuse(
                problems,
                "network_dropout",
                "LyCORIS' modules ignore it outside bypass mode (LoHa/LoKr: \"haven't implemented normal dropout yet\")",
            );
        }
        // LyCORIS 3.2 applies LoRA+ ratios to `lora_up` weights only: LoCon has them, LoHa/LoKr none.
        let no_up = matches!(self.algo.as_deref(), Some("loha" | "lokr"));
        for (key, set) in [
            ("loraplus_lr_ratio", self.loraplus_lr_ratio.is_some()),
            ("loraplus_unet_lr_ratio", self.loraplus_unet_lr_ratio.is_some()),
            ("loraplus_text_encoder_lr_ratio", self.loraplus_text_encoder_lr_ratio.is_some()),
        ] {
            if set && no_up {
                refuse(
                    problems,
                    key,
                    "LyCORIS applies LoRA+ ratios to lora_up weights, which LoHa/LoKr do not have (the ratio would change nothing)",
                );
            }
        }
        for (key, set) in [
            ("block_dims", self.block_dims.is_some()),
            ("block_alphas", self.block_alphas.is_some()),
            ("conv_block_dims", self.conv_block_dims.is_some()),
            ("conv_block_alphas", self.conv_block_alphas.is_some()),
            ("down_lr_weight", self.down_lr_weight.is_some()),
            ("mid_lr_weight", self.mid_lr_weight.is_some()),
            ("up_lr_weight", self.up_lr_weight.is_some()),
        ] {
            if set {
                refuse(
                    problems,
                    key,
                    "block-wise dims and LR weights are networks.lora arguments, which LyCORIS' network ignores",
                );
            }
        }
        if self.scale_weight_norms.is_some() && self.rank_dropout.is_some_and(|p| p > 0.0) {
            refuse(
                problems,
                "scale_weight_norms together with rank_dropout",
                "LyCORIS computes the max-norm from a randomly rank-dropped weight change in training mode, which lorakit does not reproduce",
            );
        }
    }
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            network_module: "networks.lora".into(),
            algo: None,
            preset: None,
            factor: -1,
            decompose_both: false,
            full_matrix: false,
            network_dim: 4,
            network_alpha: 1.0,
            conv_dim: None,
            conv_alpha: None,
            network_dropout: None,
            rank_dropout: None,
            module_dropout: None,
            network_train_unet_only: false,
            network_train_text_encoder_only: false,
            network_weights: None,
            dim_from_weights: false,
            network_multiplier: 1.0,
            down_lr_weight: None,
            mid_lr_weight: None,
            up_lr_weight: None,
            block_lr_zero_threshold: 0.0,
            block_dims: None,
            block_alphas: None,
            conv_block_dims: None,
            conv_block_alphas: None,
            loraplus_lr_ratio: None,
            loraplus_unet_lr_ratio: None,
            loraplus_text_encoder_lr_ratio: None,
            scale_weight_norms: None,
            train_blocks: None,
            img_attn_dim: None,
            txt_attn_dim: None,
            img_mlp_dim: None,
            txt_mlp_dim: None,
            img_mod_dim: None,
            txt_mod_dim: None,
            single_dim: None,
            single_mod_dim: None,
            in_dims: None,
            train_double_block_indices: None,
            train_single_block_indices: None,
            train_t5xxl: false,
            split_qkv: false,
            context_attn_dim: None,
            context_mlp_dim: None,
            context_mod_dim: None,
            x_attn_dim: None,
            x_mlp_dim: None,
            x_mod_dim: None,
            emb_dims: None,
            train_block_indices: None,
        }
    }
}

impl NetworkSection {
    /// sd-scripts' `networks.lora_sd3` arguments from `context_*_dim` / `x_*_dim`, `emb_dims`,
    /// `train_block_indices` and `split_qkv`.
    pub fn sd3_args(&self) -> std::result::Result<lorakit_models::dit::sd3_network::Sd3NetworkArgs, String> {
        use lorakit_models::dit::sd3_network::Sd3NetworkArgs;
        Ok(Sd3NetworkArgs {
            type_dims: [
                self.context_attn_dim,
                self.context_mlp_dim,
                self.context_mod_dim,
                self.x_attn_dim,
                self.x_mlp_dim,
                self.x_mod_dim,
            ],
            emb_dims: self.emb_dims.as_deref().map(Sd3NetworkArgs::parse_emb_dims).transpose()?,
            train_block_indices: self
                .train_block_indices
                .as_deref()
                .map(Sd3NetworkArgs::parse_train_block_indices)
                .transpose()?,
            split_qkv: self.split_qkv,
        })
    }

    /// See [`TrainConfig::flux_network_args`].
    pub fn flux_args(&self) -> std::result::Result<lorakit_models::dit::flux_network::FluxNetworkArgs, String> {
        use lorakit_models::dit::flux_network::{FluxNetworkArgs, NUM_DOUBLE_BLOCKS, NUM_SINGLE_BLOCKS};
        let train_blocks = match &self.train_blocks {
            Some(v) => FluxNetworkArgs::parse_train_blocks(v)?,
            None => Default::default(),
        };
        let in_dims = self.in_dims.as_deref().map(FluxNetworkArgs::parse_in_dims).transpose()?;
        let blocks = |key: &str, value: &Option<String>, total| {
            value.as_deref().map(|v| FluxNetworkArgs::parse_block_selection(key, v, total)).transpose()
        };
        Ok(FluxNetworkArgs {
            train_blocks,
            type_dims: [
                self.img_attn_dim,
                self.txt_attn_dim,
                self.img_mlp_dim,
                self.txt_mlp_dim,
                self.img_mod_dim,
                self.txt_mod_dim,
                self.single_dim,
                self.single_mod_dim,
            ],
            in_dims,
            double_blocks: blocks("train_double_block_indices", &self.train_double_block_indices, NUM_DOUBLE_BLOCKS)?,
            single_blocks: blocks("train_single_block_indices", &self.train_single_block_indices, NUM_SINGLE_BLOCKS)?,
            split_qkv: self.split_qkv,
        })
    }
}

/// `[training]`: length, batching and the step itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSection {
    /// Images per batch.
    pub train_batch_size: u32,
    /// Epochs (wins over `max_train_steps`; 0 = decided by steps).
    pub max_train_epochs: u64,
    /// Optimizer steps (0 = from epochs; both 0 = sd-scripts' 1600).
    pub max_train_steps: u64,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: u64,
    /// Seed of everything random (noise, timesteps, order, dropout, flips).
    pub seed: u64,
    /// Recompute activations in backward instead of keeping them (less memory, slower).
    pub gradient_checkpointing: bool,
    /// Encode every image with the VAE once before training.
    pub cache_latents: bool,
    /// Keep those latents on disk next to the images (reused while image, size and VAE match).
    pub cache_latents_to_disk: bool,
    /// VAE batch size while caching.
    pub vae_batch_size: usize,
    /// Run the text encoders once over every caption before training and train from their
    /// outputs (sd-scripts' `--cache_text_encoder_outputs`; the encoders then leave memory unless
    /// samples need them). Needs fixed captions and untrained text encoders.
    pub cache_text_encoder_outputs: bool,
    /// Keep those outputs on disk next to the images (reused while caption and encoders match).
    pub cache_text_encoder_outputs_to_disk: bool,
    /// Longest caption in tokens: 75, 150 or 225.
    pub max_token_length: usize,
    /// Read A1111 attention weights in captions: `(word)` ×1.1, `[word]` ÷1.1, `(word:1.5)`,
    /// `\(` for a literal bracket; each token's text-encoder output is multiplied by its weight.
    /// Keep commas out of brackets when shuffling or dropping tags.
    pub weighted_captions: bool,
    /// Clip the gradient norm to this (0 = off).
    pub max_grad_norm: f64,
    /// Smallest timestep sampled.
    pub min_timestep: usize,
    /// One past the largest timestep sampled.
    pub max_timestep: usize,
    /// Measure the validation loss every N optimizer steps too (`--validate_every_n_steps`;
    /// needs `dataset.validation_split`). Unset: at epoch ends only.
    pub validate_every_n_steps: Option<u64>,
    /// Measure the validation loss at the end of every N-th epoch (`--validate_every_n_epochs`).
    /// Unset: every epoch, as sd-scripts does.
    pub validate_every_n_epochs: Option<u64>,
    /// At most this many validation batches per measurement (`--max_validation_steps`). Unset:
    /// all of them.
    pub max_validation_steps: Option<u64>,
}

impl Default for TrainingSection {
    fn default() -> Self {
        TrainingSection {
            train_batch_size: 1,
            max_train_epochs: 0,
            max_train_steps: 0,
            gradient_accumulation_steps: 1,
            seed: 42,
            gradient_checkpointing: false,
            cache_latents: true,
            cache_latents_to_disk: false,
            vae_batch_size: 1,
            cache_text_encoder_outputs: false,
            cache_text_encoder_outputs_to_disk: false,
            max_token_length: 75,
            weighted_captions: false,
            max_grad_norm: 1.0,
            min_timestep: 0,
            max_timestep: 1000,
            validate_every_n_steps: None,
            validate_every_n_epochs: None,
            max_validation_steps: None,
        }
    }
}

/// `[loss]`: the loss and the training noise (sd-scripts' names; spec §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossSection {
    /// `l2`, `l1`, `huber` or `smooth_l1`.
    pub loss_type: crate::loss::LossType,
    /// Huber threshold schedule: `snr`, `exponential` or `constant`.
    pub huber_schedule: crate::loss::HuberSchedule,
    /// Huber parameter.
    pub huber_c: f64,
    /// Huber multiplier (constant / exponential schedules).
    pub huber_scale: f64,
    /// Min-SNR-γ weighting (5 is the usual value).
    pub min_snr_gamma: Option<f64>,
    /// Scale a v-prediction loss like an ε-prediction loss (needs v_parameterization).
    pub scale_v_pred_loss_like_noise_pred: bool,
    /// Add a v-prediction-like loss term of this weight (ε-prediction models only).
    pub v_pred_like_loss: Option<f64>,
    /// Debiased estimation weighting (1/√SNR).
    pub debiased_estimation_loss: bool,
    /// Offset noise strength (≈0.05–0.1 helps very dark/bright images).
    pub noise_offset: Option<f64>,
    /// Offset strength ~ U(0, noise_offset) per batch.
    pub noise_offset_random_strength: bool,
    /// Add this × |mean latent| to the offset (needs noise_offset).
    pub adaptive_noise_scale: Option<f64>,
    /// Multi-resolution (pyramid) noise iterations (6–10 typical).
    pub multires_noise_iterations: Option<usize>,
    /// Pyramid noise discount.
    pub multires_noise_discount: f64,
    /// Input-perturbation noise γ (≈0.1).
    pub ip_noise_gamma: Option<f64>,
    /// γ ~ U(0, ip_noise_gamma) per batch.
    pub ip_noise_gamma_random_strength: bool,
    /// Rescale the noise schedule to zero terminal SNR (meant for v-prediction).
    pub zero_terminal_snr: bool,
    /// Mask the loss (sd-scripts' `--masked_loss`): with the alpha masks of subsets that use
    /// `alpha_mask` (masks from a `conditioning_data_dir` are not supported yet).
    pub masked_loss: bool,
}

impl Default for LossSection {
    /// sd-scripts' defaults, as the loss and noise modules define them.
    fn default() -> Self {
        let l = crate::loss::LossOptions::default();
        let n = crate::noise::NoiseOptions::default();
        LossSection {
            loss_type: l.loss_type,
            huber_schedule: l.huber_schedule,
            huber_c: l.huber_c,
            huber_scale: l.huber_scale,
            min_snr_gamma: l.min_snr_gamma,
            scale_v_pred_loss_like_noise_pred: l.scale_v_pred_loss_like_noise_pred,
            v_pred_like_loss: l.v_pred_like_loss,
            debiased_estimation_loss: l.debiased_estimation_loss,
            noise_offset: n.noise_offset,
            noise_offset_random_strength: n.noise_offset_random_strength,
            adaptive_noise_scale: n.adaptive_noise_scale,
            multires_noise_iterations: n.multires_noise_iterations,
            multires_noise_discount: n.multires_noise_discount,
            ip_noise_gamma: n.ip_noise_gamma,
            ip_noise_gamma_random_strength: n.ip_noise_gamma_random_strength,
            zero_terminal_snr: false,
            masked_loss: false,
        }
    }
}

impl LossSection {
    /// The loss options.
    pub fn loss_options(&self) -> crate::loss::LossOptions {
        crate::loss::LossOptions {
            loss_type: self.loss_type,
            huber_schedule: self.huber_schedule,
            huber_c: self.huber_c,
            huber_scale: self.huber_scale,
            min_snr_gamma: self.min_snr_gamma,
            scale_v_pred_loss_like_noise_pred: self.scale_v_pred_loss_like_noise_pred,
            v_pred_like_loss: self.v_pred_like_loss,
            debiased_estimation_loss: self.debiased_estimation_loss,
        }
    }

    /// The noise options.
    pub fn noise_options(&self) -> crate::noise::NoiseOptions {
        crate::noise::NoiseOptions {
            noise_offset: self.noise_offset,
            noise_offset_random_strength: self.noise_offset_random_strength,
            adaptive_noise_scale: self.adaptive_noise_scale,
            multires_noise_iterations: self.multires_noise_iterations,
            multires_noise_discount: self.multires_noise_discount,
            ip_noise_gamma: self.ip_noise_gamma,
            ip_noise_gamma_random_strength: self.ip_noise_gamma_random_strength,
        }
    }
}

/// `[flow]`: the rectified-flow objective of Flux.1 (and SD3): how σ is drawn, what the loss
/// compares and how it is weighted (sd-scripts' names and defaults; spec §7.5, §7.6). DDPM
/// models (SD 1.x/2.x/XL) refuse any of these set to a non-default value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowSection {
    /// How σ is drawn (Flux): `sigma` (an index into the FlowMatchEulerDiscrete table shifted by
    /// `discrete_flow_shift`, drawn from the `weighting_scheme` density), `uniform`, `sigmoid`,
    /// `shift` or `flux_shift` (resolution-dependent shift).
    pub timestep_sampling: crate::objective::TimestepSampling,
    /// Scale of the normal draw of the `sigmoid`, `shift` and `flux_shift` samplings.
    pub sigmoid_scale: f64,
    /// Shift of the σ table (`sigma` sampling) and of `shift` sampling (Flux).
    pub discrete_flow_shift: f64,
    /// What the loss compares with the target `ε − x₀` (Flux): `raw` (the prediction), `additive`
    /// (`pred + x_σ`) or `sigma_scaled` (`x_σ − σ·pred`, with the `weighting_scheme` weight).
    /// Unset: `raw` for Flux — sd-scripts' default is `sigma_scaled`, which compares an x₀
    /// estimate with the velocity target, while its Flux guide trains with `raw`; set
    /// `sigma_scaled` to reproduce an sd-scripts run that left it unset. SD3 always uses `sigma_scaled`.
    pub model_prediction_type: Option<crate::objective::ModelPredictionType>,
    /// `uniform` (= `none`), `logit_normal`, `mode` (the density of the `sigma` sampling and of
    /// SD3's draw), `sigma_sqrt` or `cosmap` (loss weights under `sigma_scaled`).
    pub weighting_scheme: crate::objective::WeightingScheme,
    /// Mean of the `logit_normal` draw.
    pub logit_mean: f64,
    /// Standard deviation of the `logit_normal` draw (> 0).
    pub logit_std: f64,
    /// Scale of the `mode` density, within [-1, 2/(π−2)] so the density stays on [0, 1].
    pub mode_scale: f64,
    /// The guidance value a guidance-distilled model (Flux.1 dev) is trained at. 1.0, as
    /// sd-scripts' Flux guide trains; sd-scripts' own default is 3.5 — set it to reproduce a
    /// run that left it unset.
    pub guidance_scale: f64,
    /// SD3: shift of the timestep draw (> 1 favours noisier timesteps).
    pub training_shift: f64,
}

impl Default for FlowSection {
    fn default() -> Self {
        FlowSection {
            timestep_sampling: crate::objective::TimestepSampling::Sigma,
            sigmoid_scale: 1.0,
            discrete_flow_shift: 3.0,
            model_prediction_type: None,
            weighting_scheme: crate::objective::WeightingScheme::Uniform,
            logit_mean: 0.0,
            logit_std: 1.0,
            mode_scale: 1.29,
            guidance_scale: 1.0,
            training_shift: 1.0,
        }
    }
}

impl FlowSection {
    /// The keys whose values differ from `other`'s, in declaration order.
    pub fn differing_keys(&self, other: &FlowSection) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |differs: bool, key: &'static str| {
            if differs {
                keys.push(key);
            }
        };
        check(self.timestep_sampling != other.timestep_sampling, "timestep_sampling");
        check(self.sigmoid_scale != other.sigmoid_scale, "sigmoid_scale");
        check(self.discrete_flow_shift != other.discrete_flow_shift, "discrete_flow_shift");
        check(self.model_prediction_type != other.model_prediction_type, "model_prediction_type");
        check(self.weighting_scheme != other.weighting_scheme, "weighting_scheme");
        check(self.logit_mean != other.logit_mean, "logit_mean");
        check(self.logit_std != other.logit_std, "logit_std");
        check(self.mode_scale != other.mode_scale, "mode_scale");
        check(self.guidance_scale != other.guidance_scale, "guidance_scale");
        check(self.training_shift != other.training_shift, "training_shift");
        keys
    }

    /// Value checks that need no model (finite values are checked for every key elsewhere).
    fn validate(&self, problems: &mut Vec<String>) {
        for (key, v) in [
            ("sigmoid_scale", self.sigmoid_scale),
            ("discrete_flow_shift", self.discrete_flow_shift),
            ("logit_std", self.logit_std),
            ("training_shift", self.training_shift),
        ] {
            if v.is_finite() && v <= 0.0 {
                problems.push(format!("flow.{key} = {v}: use a number > 0"));
            }
        }
        let max_mode = 2.0 / (std::f64::consts::PI - 2.0);
        if self.mode_scale.is_finite() && !(-1.0..=max_mode).contains(&self.mode_scale) {
            problems.push(format!(
                "flow.mode_scale = {}: use a value in [-1, {max_mode:.4}] (outside it the mode density leaves [0, 1] and would index past the timestep table)",
                self.mode_scale
            ));
        }
    }
}

/// `[optimizer]`: optimizer, learning rates and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSection {
    /// Optimizer name (AdamW).
    pub optimizer_type: String,
    /// sd-scripts' `key=value` arguments (`weight_decay=0.01`, `betas=0.9,0.999`).
    pub optimizer_args: Vec<String>,
    /// Learning rate of groups without their own.
    pub learning_rate: f64,
    /// UNet LoRA learning rate (unset: `learning_rate`).
    pub unet_lr: Option<f64>,
    /// Text-encoder LoRA learning rate (unset: `learning_rate`): one value for every text
    /// encoder, or a list with one per encoder (SDXL: `[te1, te2]`).
    pub text_encoder_lr: Option<TextEncoderLr>,
    /// Scheduler name (constant, constant_with_warmup, linear, cosine, …).
    pub lr_scheduler: String,
    /// Warmup: steps (≥ 1) or a fraction of the total steps (< 1).
    pub lr_warmup_steps: f64,
    /// Cycles of cosine_with_restarts.
    pub lr_scheduler_num_cycles: u64,
    /// Power of the polynomial scheduler.
    pub lr_scheduler_power: f64,
    /// Decay steps (or fraction, < 1) of warmup_stable_decay.
    pub lr_decay_steps: f64,
    /// inverse_sqrt timescale.
    pub lr_scheduler_timescale: Option<u64>,
    /// Floor of cosine_with_min_lr / warmup_stable_decay, as a fraction of the LR.
    pub lr_scheduler_min_lr_ratio: Option<f64>,
    /// Extra scheduler arguments, `key=value` as sd-scripts' `lr_scheduler_args`.
    pub lr_scheduler_args: Vec<String>,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        OptimizerSection {
            optimizer_type: "AdamW".into(),
            optimizer_args: Vec::new(),
            learning_rate: 1e-4,
            unet_lr: None,
            text_encoder_lr: None,
            lr_scheduler: "constant".into(),
            lr_warmup_steps: 0.0,
            lr_scheduler_num_cycles: 1,
            lr_scheduler_power: 1.0,
            lr_decay_steps: 0.0,
            lr_scheduler_timescale: None,
            lr_scheduler_min_lr_ratio: None,
            lr_scheduler_args: Vec::new(),
        }
    }
}

/// `[save]`: LoRA files and training states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaveSection {
    /// Save a LoRA every N epochs (0 = only at the end).
    pub save_every_n_epochs: u64,
    /// Save a LoRA every N optimizer steps (0 = off).
    pub save_every_n_steps: u64,
    /// Keep only the last N epoch saves (0 = keep all).
    pub save_last_n_epochs: u64,
    /// `float`, `fp16` or `bf16` (the file's tensor dtype).
    pub save_precision: String,
    /// Also write a resumable state with every save.
    pub save_state: bool,
    /// Write a state at the end of training.
    pub save_state_on_train_end: bool,
    /// Resume from this state folder.
    pub resume: Option<PathBuf>,
    /// Only `safetensors` is written (pickles are unsafe to load).
    pub save_model_as: String,
}

impl Default for SaveSection {
    fn default() -> Self {
        SaveSection {
            save_every_n_epochs: 1,
            save_every_n_steps: 0,
            save_last_n_epochs: 0,
            save_precision: "fp16".into(),
            save_state: false,
            save_state_on_train_end: false,
            resume: None,
            save_model_as: "safetensors".into(),
        }
    }
}

/// `[samples]`: images generated while training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplesSection {
    /// Prompt file (.txt with `--n --w --h --d --l --s`, .toml or .json); prompts take A1111
    /// emphasis (`(word:1.2)`) as sd-scripts' sample images do.
    pub sample_prompts: Option<PathBuf>,
    /// Sample every N epochs (0 = off; wins over steps).
    pub sample_every_n_epochs: u64,
    /// Sample every N optimizer steps (0 = off).
    pub sample_every_n_steps: u64,
    /// Also sample before the first step.
    pub sample_at_first: bool,
    /// Sampler: euler, euler_a, ddim, dpmsolver++ (k_ names accepted).
    pub sample_sampler: String,
}

impl Default for SamplesSection {
    fn default() -> Self {
        SamplesSection {
            sample_prompts: None,
            sample_every_n_epochs: 0,
            sample_every_n_steps: 0,
            sample_at_first: false,
            sample_sampler: "euler_a".into(),
        }
    }
}

/// `[logging]`: TensorBoard and the plain log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSection {
    /// `tensorboard` or `none` (the JSONL/CSV log is always written).
    pub log_with: String,
    /// Prefix of the timestamped run folder.
    pub log_prefix: Option<String>,
    /// Tracker sub-folder (sd-scripts: `network_train`).
    pub log_tracker_name: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection { log_with: "tensorboard".into(), log_prefix: None, log_tracker_name: "network_train".into() }
    }
}

/// A whole training configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub accelerate: AccelerateSection,
    pub model: ModelSection,
    pub folders: FoldersSection,
    pub metadata: MetadataSection,
    pub dataset: DatasetSection,
    pub network: NetworkSection,
    pub training: TrainingSection,
    pub loss: LossSection,
    pub flow: FlowSection,
    pub optimizer: OptimizerSection,
    pub save: SaveSection,
    pub samples: SamplesSection,
    pub logging: LoggingSection,
}

/// `optimizer.text_encoder_lr`: one rate for every text encoder or one per encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TextEncoderLr {
    /// The same rate for every text encoder.
    All(f64),
    /// One rate per text encoder, in order (TE1, TE2).
    PerEncoder(Vec<f64>),
}

/// The values of `model.model_family` lorakit trains.
pub const MODEL_FAMILIES: &[&str] = &["sd1", "sd2", "sdxl", "flux", "sd3"];

/// Every section with its keys, each with an example value of the key's type (from a config
/// with every option set: serialising the defaults would drop the unset `Option` fields).
pub fn key_examples() -> Vec<(String, Vec<(String, toml::Value)>)> {
    let value = toml::Value::try_from(TrainConfig::every_key_set()).expect("config serialises");
    let mut out = Vec::new();
    if let toml::Value::Table(sections) = value {
        for (name, section) in sections {
            if let toml::Value::Table(keys) = section {
                out.push((name, keys.into_iter().collect()));
            }
        }
    }
    out
}

/// Every section name with its keys (used to place bare `--set` keys and sd-scripts keys).
pub fn known_keys() -> Vec<(String, Vec<String>)> {
    key_examples().into_iter().map(|(section, keys)| (section, keys.into_iter().map(|(k, _)| k).collect())).collect()
}

/// Finds the section that holds `key` (bare sd-scripts name).
pub fn section_of(key: &str) -> Option<String> {
    known_keys().into_iter().find(|(_, keys)| keys.iter().any(|k| k == key)).map(|(s, _)| s)
}

/// The model families a config key applies to, and what to tell a user it is hidden from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFamilies {
    /// The families (values of [`MODEL_FAMILIES`], and `sd3` for SD3-only keys) whose training
    /// reads the key.
    pub families: &'static [&'static str],
    /// Why it applies to those only ("" for keys every family reads).
    pub reason: &'static str,
}

const EVERY_FAMILY: KeyFamilies = KeyFamilies { families: MODEL_FAMILIES, reason: "" };
const FLUX_ONLY: KeyFamilies = KeyFamilies { families: &["flux"], reason: "Flux only" };
const DDPM_ONLY: KeyFamilies = KeyFamilies {
    families: &["sd1", "sd2", "sdxl"],
    reason: "SD 1.x, SD 2.x and SDXL only (DDPM models; Flux and SD3 train with rectified flow)",
};
const FLOW_ONLY: KeyFamilies = KeyFamilies { families: &["flux", "sd3"], reason: "Flux and SD3 only" };
const DDPM_AND_SD3: KeyFamilies = KeyFamilies {
    families: &["sd1", "sd2", "sdxl", "sd3"],
    reason: "SD 1.x, SD 2.x, SDXL and SD3 (Flux draws σ with flow.timestep_sampling)",
};
const SD_CLIP_SKIP: KeyFamilies =
    KeyFamilies { families: &["sd1", "sd2"], reason: "SD 1.x and SD 2.x only (SDXL, Flux and SD3 have no clip skip)" };
const SD2_ONLY: KeyFamilies = KeyFamilies { families: &["sd2"], reason: "SD 2.x only" };
const SD3_ONLY: KeyFamilies = KeyFamilies { families: &["sd3"], reason: "SD3 only" };
const NOT_FLUX: KeyFamilies = KeyFamilies {
    families: &["sd1", "sd2", "sdxl", "sd3"],
    reason: "SD 1.x, SD 2.x, SDXL and SD3 (Flux's autoencoder is model.ae)",
};

/// The keys that apply to some families only, by section; every other key applies to all.
pub const FAMILY_KEYS: &[(&str, &[&str], KeyFamilies)] = &[
    ("model", &["clip_l", "t5xxl", "t5xxl_max_token_length", "apply_t5_attn_mask"], FLOW_ONLY),
    ("model", &["ae"], FLUX_ONLY),
    ("model", &["vae"], NOT_FLUX),
    (
        "model",
        &[
            "clip_g",
            "apply_lg_attn_mask",
            "clip_l_dropout_rate",
            "clip_g_dropout_rate",
            "t5_dropout_rate",
            "pos_emb_random_crop_rate",
            "enable_scaled_pos_embed",
        ],
        SD3_ONLY,
    ),
    ("accelerate", &["fp8_base_unet", "cpu_offload_checkpointing"], FLUX_ONLY),
    ("accelerate", &["blocks_to_swap"], FLOW_ONLY),
    (
        "network",
        &[
            "train_blocks",
            "img_attn_dim",
            "txt_attn_dim",
            "img_mlp_dim",
            "txt_mlp_dim",
            "img_mod_dim",
            "txt_mod_dim",
            "single_dim",
            "single_mod_dim",
            "in_dims",
            "train_double_block_indices",
            "train_single_block_indices",
        ],
        FLUX_ONLY,
    ),
    ("network", &["train_t5xxl", "split_qkv"], FLOW_ONLY),
    (
        "network",
        &[
            "context_attn_dim",
            "context_mlp_dim",
            "context_mod_dim",
            "x_attn_dim",
            "x_mlp_dim",
            "x_mod_dim",
            "emb_dims",
            "train_block_indices",
        ],
        SD3_ONLY,
    ),
    (
        "flow",
        &["timestep_sampling", "sigmoid_scale", "discrete_flow_shift", "model_prediction_type", "guidance_scale"],
        FLUX_ONLY,
    ),
    ("flow", &["weighting_scheme", "logit_mean", "logit_std", "mode_scale"], FLOW_ONLY),
    ("flow", &["training_shift"], SD3_ONLY),
    ("model", &["v2"], SD2_ONLY),
    ("model", &["clip_skip"], SD_CLIP_SKIP),
    ("model", &["v_parameterization"], DDPM_ONLY),
    ("accelerate", &["no_half_vae"], DDPM_ONLY),
    ("training", &["min_timestep", "max_timestep"], DDPM_AND_SD3),
    (
        "loss",
        &[
            "min_snr_gamma",
            "scale_v_pred_loss_like_noise_pred",
            "v_pred_like_loss",
            "debiased_estimation_loss",
            "zero_terminal_snr",
            "noise_offset",
            "noise_offset_random_strength",
            "adaptive_noise_scale",
            "multires_noise_iterations",
            "multires_noise_discount",
        ],
        DDPM_ONLY,
    ),
    (
        "network",
        &[
            "down_lr_weight",
            "mid_lr_weight",
            "up_lr_weight",
            "block_lr_zero_threshold",
            "block_dims",
            "block_alphas",
            "conv_block_dims",
            "conv_block_alphas",
        ],
        DDPM_ONLY,
    ),
];

/// The family of the base model at `path` as `lorakit train` detects it
/// (`lorakit_models::checkpoint::detect_family_at`): the `model.model_family` value (`sd1`, `sd2`,
/// `sdxl`, `flux`; `sd3` or `unknown` for what lorakit does not train) and the family's name as
/// people say it (`SD 1.x`).
pub fn detect_model_family(path: &Path) -> Result<(&'static str, String), String> {
    use lorakit_models::checkpoint::ModelFamily;
    let detected = lorakit_models::checkpoint::detect_family_at(path).map_err(|e| e.to_string())?;
    let value = match detected {
        ModelFamily::Sd1 => "sd1",
        ModelFamily::Sd2 => "sd2",
        ModelFamily::Sdxl => "sdxl",
        ModelFamily::Flux => "flux",
        ModelFamily::Sd3 => "sd3",
        ModelFamily::Unknown => "unknown",
    };
    Ok((value, detected.to_string()))
}

/// Which model families read `section.key` ([`FAMILY_KEYS`], else every family) — the one place
/// the GUI's form (fields hidden with the reason) takes it from. The trainer refuses a key set
/// for a family it does not apply to where sd-scripts would ignore it silently;
/// `tests/key_families.rs` checks on the tiny models that it refuses exactly those.
pub fn key_families(section: &str, key: &str) -> KeyFamilies {
    FAMILY_KEYS
        .iter()
        .find(|(s, keys, _)| *s == section && keys.contains(&key))
        .map_or(EVERY_FAMILY, |(_, _, families)| *families)
}

/// The families rectified-flow DiTs (Flux, SD3) belong to; keys read only by these are refused
/// by table on other families ([`TrainConfig::foreign_dit_keys`]).
const DIT_FAMILIES: &[&str] = &["flux", "sd3"];

impl TrainConfig {
    /// The keys read only by DiT families (Flux and/or SD3, per [`FAMILY_KEYS`]) that are set to
    /// a non-default value although `family` does not read them, each with the families it is
    /// for — what the loader refuses before training something the user did not ask for. (Keys
    /// of the DDPM families are refused by the objective and the network builder, with their
    /// own reasons.)
    pub fn foreign_dit_keys(&self, family: &str) -> Vec<(String, &'static str)> {
        let (Ok(set), Ok(default)) = (toml::Value::try_from(self), toml::Value::try_from(TrainConfig::default()))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (section, names, families) in FAMILY_KEYS {
            if families.families.contains(&family) || !families.families.iter().all(|f| DIT_FAMILIES.contains(f)) {
                continue;
            }
            for name in *names {
                let value = |v: &toml::Value| v.get(section).and_then(|s| s.get(name)).cloned();
                if value(&set) != value(&default) {
                    out.push((format!("{section}.{name}"), families.reason));
                }
            }
        }
        out
    }

    /// Every optional field set, so serialisation lists every key.
    pub(crate) fn every_key_set() -> TrainConfig {
        let mut c = TrainConfig::default();
        c.model.pretrained_model_name_or_path = Some(PathBuf::new());
        c.model.clip_skip = Some(1);
        c.model.model_family = Some(String::new());
        c.folders.logging_dir = Some(PathBuf::new());
        c.metadata = MetadataSection {
            metadata_title: Some(String::new()),
            metadata_author: Some(String::new()),
            metadata_description: Some(String::new()),
            metadata_license: Some(String::new()),
            metadata_tags: Some(String::new()),
            metadata_trigger_phrase: Some(String::new()),
            training_comment: Some(String::new()),
        };
        c.dataset.train_data_dir = Some(PathBuf::new());
        c.dataset.reg_data_dir = Some(PathBuf::new());
        c.dataset.dataset_config = Some(PathBuf::new());
        c.dataset.resize_interpolation = Some(String::new());
        c.dataset.caption_prefix = Some(String::new());
        c.dataset.caption_suffix = Some(String::new());
        c.dataset.secondary_separator = Some(String::new());
        c.network.conv_dim = Some(1);
        c.network.conv_alpha = Some(1.0);
        c.network.network_dropout = Some(0.0);
        c.network.network_weights = Some(PathBuf::new());
        c.loss.min_snr_gamma = Some(0.0);
        c.loss.v_pred_like_loss = Some(0.0);
        c.loss.noise_offset = Some(0.0);
        c.loss.adaptive_noise_scale = Some(0.0);
        c.loss.multires_noise_iterations = Some(0);
        c.loss.ip_noise_gamma = Some(0.0);
        c.flow.model_prediction_type = Some(crate::objective::ModelPredictionType::Raw);
        c.optimizer.lr_scheduler_timescale = Some(0);
        c.optimizer.lr_scheduler_min_lr_ratio = Some(0.0);
        c.network.rank_dropout = Some(0.0);
        c.network.module_dropout = Some(0.0);
        c.network.down_lr_weight = Some(String::new());
        c.network.mid_lr_weight = Some(String::new());
        c.network.up_lr_weight = Some(String::new());
        c.network.block_dims = Some(String::new());
        c.network.block_alphas = Some(String::new());
        c.network.conv_block_dims = Some(String::new());
        c.network.conv_block_alphas = Some(String::new());
        c.network.loraplus_lr_ratio = Some(0.0);
        c.network.loraplus_unet_lr_ratio = Some(0.0);
        c.network.loraplus_text_encoder_lr_ratio = Some(0.0);
        c.network.scale_weight_norms = Some(0.0);
        c.network.algo = Some(String::new());
        c.network.preset = Some(String::new());
        c.optimizer.unet_lr = Some(0.0);
        c.optimizer.text_encoder_lr = Some(TextEncoderLr::All(0.0));
        c.save.resume = Some(PathBuf::new());
        c.samples.sample_prompts = Some(PathBuf::new());
        c.logging.log_prefix = Some(String::new());
        c.model.clip_l = Some(PathBuf::new());
        c.model.t5xxl = Some(PathBuf::new());
        c.model.ae = Some(PathBuf::new());
        c.model.vae = Some(PathBuf::new());
        c.dataset.validation_seed = Some(0);
        c.training.validate_every_n_steps = Some(0);
        c.training.validate_every_n_epochs = Some(0);
        c.training.max_validation_steps = Some(0);
        c.model.t5xxl_max_token_length = Some(0);
        c.accelerate.blocks_to_swap = Some(0);
        c.network.train_blocks = Some(String::new());
        c.network.img_attn_dim = Some(0);
        c.network.txt_attn_dim = Some(0);
        c.network.img_mlp_dim = Some(0);
        c.network.txt_mlp_dim = Some(0);
        c.network.img_mod_dim = Some(0);
        c.network.txt_mod_dim = Some(0);
        c.network.single_dim = Some(0);
        c.network.single_mod_dim = Some(0);
        c.network.in_dims = Some(String::new());
        c.network.train_double_block_indices = Some(String::new());
        c.network.train_single_block_indices = Some(String::new());
        c.model.clip_g = Some(PathBuf::new());
        c.network.context_attn_dim = Some(0);
        c.network.context_mlp_dim = Some(0);
        c.network.context_mod_dim = Some(0);
        c.network.x_attn_dim = Some(0);
        c.network.x_mlp_dim = Some(0);
        c.network.x_mod_dim = Some(0);
        c.network.emb_dims = Some(String::new());
        c.network.train_block_indices = Some(String::new());
        c
    }

    /// Loads a config file with `--set` overrides applied on top. Relative paths in the file
    /// are taken from the file's folder.
    pub fn load(path: &Path, overrides: &[String]) -> Result<TrainConfig, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::config(path, format!("cannot read the config file: {e}")))?;
        let table: toml::Table = text.parse().map_err(|e| TrainError::config(path, format!("not valid TOML: {e}")))?;
        let mut from_file: TrainConfig =
            toml::Value::Table(table).try_into().map_err(|e| TrainError::config(path, describe_toml_error(&e)))?;
        // Paths written in the file are relative to the file; paths given with --set are
        // relative to where the command runs, like any other command-line path.
        from_file.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        let mut table = match toml::Value::try_from(&from_file) {
            Ok(toml::Value::Table(t)) => t,
            _ => return Err(TrainError::config(path, "internal: the config does not serialise")),
        };
        apply_overrides(&mut table, overrides).map_err(|m| TrainError::config(path, m))?;
        let config: TrainConfig =
            toml::Value::Table(table).try_into().map_err(|e| TrainError::config(path, describe_toml_error(&e)))?;
        config.validate().map_err(|m| TrainError::config(path, m))?;
        Ok(config)
    }

    /// Parses config text (no file; relative paths stay relative to the current directory).
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<TrainConfig, String> {
        let mut table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
        apply_overrides(&mut table, overrides)?;
        let config: TrainConfig = toml::Value::Table(table).try_into().map_err(|e| describe_toml_error(&e))?;
        config.validate()?;
        Ok(config)
    }

    /// Makes relative paths relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = normalize(&base.join(&*p));
            }
        };
        let fix_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() && !p.as_os_str().is_empty() {
                    *p = normalize(&base.join(&*p));
                }
            }
        };
        fix(&mut self.folders.output_dir);
        for (_, p) in self.optional_paths_mut() {
            fix_opt(p);
        }
    }

    /// Every optional path key by its `section.key` name — the one list [`Self::resolve_paths`]
    /// and [`Self::paths`] read, so a new path key is resolved and checked everywhere.
    fn optional_paths_mut(&mut self) -> [(&'static str, &mut Option<PathBuf>); 13] {
        [
            ("model.pretrained_model_name_or_path", &mut self.model.pretrained_model_name_or_path),
            ("model.clip_l", &mut self.model.clip_l),
            ("model.clip_g", &mut self.model.clip_g),
            ("model.t5xxl", &mut self.model.t5xxl),
            ("model.ae", &mut self.model.ae),
            ("model.vae", &mut self.model.vae),
            ("folders.logging_dir", &mut self.folders.logging_dir),
            ("dataset.train_data_dir", &mut self.dataset.train_data_dir),
            ("dataset.reg_data_dir", &mut self.dataset.reg_data_dir),
            ("dataset.dataset_config", &mut self.dataset.dataset_config),
            ("network.network_weights", &mut self.network.network_weights),
            ("save.resume", &mut self.save.resume),
            ("samples.sample_prompts", &mut self.samples.sample_prompts),
        ]
    }

    /// Every path the config names (`folders.output_dir` and each set optional path), by
    /// `section.key` — e.g. for the GUI, which keeps jobs inside its roots.
    pub fn paths(&self) -> Vec<(&'static str, PathBuf)> {
        let mut copy = self.clone();
        let mut out = vec![("folders.output_dir", self.folders.output_dir.clone())];
        out.extend(copy.optional_paths_mut().into_iter().filter_map(|(k, p)| p.clone().map(|p| (k, p))));
        out
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = self.non_finite_values();
        if let Some(family) = &self.model.model_family {
            if !MODEL_FAMILIES.contains(&family.as_str()) {
                problems.push(format!(
                    "model.model_family = {family:?}: lorakit trains {} so far (or leave it unset)",
                    MODEL_FAMILIES.join(", ")
                ));
            }
        }
        if !["no", "fp16", "bf16"].contains(&self.accelerate.mixed_precision.as_str()) {
            problems.push(format!(
                "accelerate.mixed_precision = {:?}: use \"no\", \"fp16\" or \"bf16\"",
                self.accelerate.mixed_precision
            ));
        }
        // Before anything loads: a misspelt optimizer should not cost a model load.
        if let Err(e) = lorakit_nn::optim::OptimizerKind::parse(&self.optimizer.optimizer_type) {
            problems.push(format!("optimizer.optimizer_type: {e}"));
        }
        let a = &self.accelerate;
        if a.fp8_base_unet && a.mixed_precision == "no" {
            problems.push(
                "accelerate.fp8_base_unet needs accelerate.mixed_precision = \"fp16\" or \"bf16\" (fp8 weights are computed in half precision), as in sd-scripts"
                    .into(),
            );
        }
        if self.accelerate.cpu_offload_checkpointing && !self.training.gradient_checkpointing {
            problems.push(
                "accelerate.cpu_offload_checkpointing needs training.gradient_checkpointing = true: it moves the block inputs checkpointing keeps to host memory".into(),
            );
        }
        if self.accelerate.cpu_offload_checkpointing && self.accelerate.blocks_to_swap.is_some_and(|n| n > 0) {
            problems.push(
                "accelerate.cpu_offload_checkpointing with accelerate.blocks_to_swap: sd-scripts refuses the pair (\"blocks_to_swap is not supported with cpu_offload_checkpointing\"); keep one".into(),
            );
        }
        if self.accelerate.blocks_to_swap.is_some_and(|n| n > 0) && !self.training.gradient_checkpointing {
            problems.push(
                "accelerate.blocks_to_swap needs training.gradient_checkpointing = true: blocks are copied to the card for each block's forward and again for its recomputation in backward; without checkpointing backward keeps every block's weights on the card, which is what swapping avoids".into(),
            );
        }
        if !(0.0..1.0).contains(&self.dataset.validation_split) {
            problems.push(format!(
                "dataset.validation_split = {}: give the fraction of images to hold out, 0 ≤ split < 1",
                self.dataset.validation_split
            ));
        }
        for (key, value) in [
            ("training.validate_every_n_steps", self.training.validate_every_n_steps),
            ("training.validate_every_n_epochs", self.training.validate_every_n_epochs),
            ("training.max_validation_steps", self.training.max_validation_steps),
        ] {
            if value == Some(0) {
                problems.push(format!("{key} = 0: give at least 1, or leave it unset"));
            }
        }
        if self.model.t5xxl_max_token_length == Some(0) {
            problems
                .push("model.t5xxl_max_token_length = 0: give at least 1 (room for </s>), or leave it unset".into());
        }
        if self.network.split_qkv && self.network.is_lycoris() {
            problems.push(
                "network.split_qkv is an argument of sd-scripts' networks.lora_flux (LoRA); LyCORIS networks have no split factors — remove it or use network_module = \"networks.lora_flux\""
                    .into(),
            );
        }
        if let Err(e) = self.network.flux_args() {
            problems.push(format!("network.{e}"));
        }
        if let Err(e) = self.network.sd3_args() {
            problems.push(format!("network.{e}"));
        }
        if a.full_fp16 && a.mixed_precision != "fp16" {
            problems.push(format!(
                "accelerate.full_fp16 needs accelerate.mixed_precision = \"fp16\" (it is {:?}), as in sd-scripts",
                a.mixed_precision
            ));
        }
        if a.full_bf16 && a.mixed_precision != "bf16" {
            problems.push(format!(
                "accelerate.full_bf16 needs accelerate.mixed_precision = \"bf16\" (it is {:?}), as in sd-scripts",
                a.mixed_precision
            ));
        }
        if a.fp8_base && a.mixed_precision == "no" {
            problems.push(
                "accelerate.fp8_base needs accelerate.mixed_precision = \"fp16\" or \"bf16\" (fp8 weights are computed in half precision), as in sd-scripts"
                    .into(),
            );
        }
        if !["cpu", "cuda", "metal"].contains(&self.accelerate.device.as_str()) {
            problems
                .push(format!("accelerate.device = {:?}: use \"cpu\", \"cuda\" or \"metal\"", self.accelerate.device));
        }
        self.network.validate_module(&mut problems);
        self.flow.validate(&mut problems);
        for (name, v) in [
            ("network_dropout", self.network.network_dropout),
            ("rank_dropout", self.network.rank_dropout),
            ("module_dropout", self.network.module_dropout),
        ] {
            if let Some(v) = v.filter(|v| !(0.0..1.0).contains(v)) {
                problems.push(format!("network.{name} = {v}: use a probability in [0, 1)"));
            }
        }
        for (name, v) in [
            ("loraplus_lr_ratio", self.network.loraplus_lr_ratio),
            ("loraplus_unet_lr_ratio", self.network.loraplus_unet_lr_ratio),
            ("loraplus_text_encoder_lr_ratio", self.network.loraplus_text_encoder_lr_ratio),
            ("scale_weight_norms", self.network.scale_weight_norms),
        ] {
            if let Some(v) = v.filter(|v| !(*v > 0.0 && v.is_finite())) {
                problems.push(format!("network.{name} = {v}: use a number > 0 (or leave it unset)"));
            }
        }
        if !self.network.network_multiplier.is_finite() {
            problems.push("network.network_multiplier must be a finite number".into());
        }
        // Parse the block lists now so a typo is reported before the model loads: in the
        // layout of the configured family, or — family unset — in either (the checkpoint
        // decides, and the trainer checks again with its layout).
        use lorakit_lora::blocks::BlockLayout;
        let layouts: &[BlockLayout] = match self.model.model_family.as_deref() {
            Some("sdxl") => &[BlockLayout::Sdxl],
            Some(_) => &[BlockLayout::Sd],
            None => &[BlockLayout::Sd, BlockLayout::Sdxl],
        };
        let plans: Vec<Result<_, String>> = layouts
            .iter()
            .map(|layout| {
                crate::block_weights::block_plan(
                    *layout,
                    &self.block_args(),
                    self.network.network_dim,
                    self.network.network_alpha,
                    self.network.conv_dim,
                    self.network.conv_alpha.unwrap_or(1.0),
                )
            })
            .collect();
        if let Some(Err(e)) = plans.iter().all(Result::is_err).then(|| plans.into_iter().next()).flatten() {
            problems.push(e);
        }
        if self.model.v2 && self.model.model_family.as_deref() == Some("sdxl") {
            problems.push("model.v2 = true with model.model_family = \"sdxl\": SDXL is not SD 2.x; remove v2 (sd-scripts refuses this too)".into());
        }
        if self.network.network_dim == 0 {
            problems.push("network.network_dim must be at least 1".into());
        }
        if self.network.network_train_unet_only && self.network.network_train_text_encoder_only {
            problems.push(
                "network.network_train_unet_only and network_train_text_encoder_only are both set: nothing would be trained"
                    .into(),
            );
        }
        if self.training.train_batch_size == 0 {
            problems.push("training.train_batch_size must be at least 1".into());
        }
        if self.training.gradient_accumulation_steps == 0 {
            problems.push("training.gradient_accumulation_steps must be at least 1".into());
        }
        if ![75, 150, 225].contains(&self.training.max_token_length) {
            problems
                .push(format!("training.max_token_length = {}: use 75, 150 or 225", self.training.max_token_length));
        }
        if self.training.min_timestep >= self.training.max_timestep || self.training.max_timestep > 1000 {
            problems.push(format!(
                "training.min_timestep = {} / max_timestep = {}: need 0 ≤ min < max ≤ 1000",
                self.training.min_timestep, self.training.max_timestep
            ));
        }
        if !(self.optimizer.learning_rate.is_finite() && self.optimizer.learning_rate >= 0.0) {
            problems.push("optimizer.learning_rate must be a non-negative number".into());
        }
        if !["float", "fp32", "fp16", "bf16"].contains(&self.save.save_precision.as_str()) {
            problems.push(format!(
                "save.save_precision = {:?}: use \"float\", \"fp16\" or \"bf16\"",
                self.save.save_precision
            ));
        }
        if self.save.save_model_as != "safetensors" {
            problems.push(format!(
                "save.save_model_as = {:?}: only \"safetensors\" is written (ckpt/pt are pickles that can run code when loaded)",
                self.save.save_model_as
            ));
        }
        if !["tensorboard", "none"].contains(&self.logging.log_with.as_str()) {
            problems.push(format!("logging.log_with = {:?}: use \"tensorboard\" or \"none\"", self.logging.log_with));
        }
        if self.folders.output_name.is_empty()
            || self.folders.output_name.contains(['/', '\\'])
            || self.folders.output_name.starts_with('.')
        {
            problems.push(format!(
                "folders.output_name = {:?}: use a plain file name without slashes",
                self.folders.output_name
            ));
        }
        if self.dataset.random_crop && self.training.cache_latents {
            problems.push(
                "dataset.random_crop cannot be combined with training.cache_latents (a cached latent has one fixed crop): turn one off"
                    .into(),
            );
        }
        if self.dataset.color_aug && self.training.cache_latents {
            problems.push(
                "dataset.color_aug cannot be combined with training.cache_latents (a cached latent has one fixed colour): turn one off"
                    .into(),
            );
        }
        let l = &self.loss;
        if l.adaptive_noise_scale.is_some() && l.noise_offset.is_none() {
            problems.push("loss.adaptive_noise_scale needs loss.noise_offset".into());
        }
        if l.scale_v_pred_loss_like_noise_pred && !self.model.v_parameterization {
            problems.push("loss.scale_v_pred_loss_like_noise_pred needs model.v_parameterization".into());
        }
        if l.v_pred_like_loss.is_some() && self.model.v_parameterization {
            problems.push(
                "loss.v_pred_like_loss is for ε-prediction models; remove it with model.v_parameterization".into(),
            );
        }
        // The exponential and snr schedules need 0 < c < 1 (ln c, 1 − c); constant only c > 0.
        let huber_c_ok = match l.huber_schedule {
            crate::loss::HuberSchedule::Constant => l.huber_c > 0.0,
            _ => l.huber_c > 0.0 && l.huber_c < 1.0,
        };
        if matches!(l.loss_type, crate::loss::LossType::Huber | crate::loss::LossType::SmoothL1) && !huber_c_ok {
            problems.push(format!("loss.huber_c = {}: use a value in (0, 1)", l.huber_c));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Every float key holding NaN or ±infinity (TOML reads `nan` and `inf`): such a value would
    /// be accepted by the types and then surface as a NaN loss blamed on the data.
    fn non_finite_values(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Ok(toml::Value::Table(sections)) = toml::Value::try_from(self) {
            for (section, keys) in &sections {
                for (key, value) in keys.as_table().into_iter().flatten() {
                    let floats = match value {
                        toml::Value::Float(f) => vec![*f],
                        toml::Value::Array(items) => items.iter().filter_map(toml::Value::as_float).collect(),
                        _ => Vec::new(),
                    };
                    for f in floats.into_iter().filter(|f| !f.is_finite()) {
                        problems.push(format!("{section}.{key} = {f}: use a finite number"));
                    }
                }
            }
        }
        problems
    }

    /// The resolved config as TOML (every default shown; unset options listed as comments).
    pub fn to_toml_string(&self) -> String {
        let set = toml::Value::try_from(self).expect("config serialises");
        let mut out = String::new();
        for (section, keys) in known_keys() {
            out.push_str(&format!("[{section}]\n"));
            let table = set.get(&section).and_then(|v| v.as_table());
            for key in keys {
                match table.and_then(|t| t.get(&key)) {
                    Some(v) => out.push_str(&format!("{key} = {v}\n")),
                    None => out.push_str(&format!("# {key} = (unset)\n")),
                }
            }
            out.push('\n');
        }
        out
    }

    /// The learning rate of the UNet group.
    pub fn unet_lr(&self) -> f64 {
        self.optimizer.unet_lr.unwrap_or(self.optimizer.learning_rate)
    }

    /// Whether text-encoder outputs are cached (`_to_disk` implies it, as in sd-scripts).
    pub fn caches_text_encoder_outputs(&self) -> bool {
        self.training.cache_text_encoder_outputs || self.training.cache_text_encoder_outputs_to_disk
    }

    /// The learning rate of the text-encoder group.
    pub fn text_encoder_lr(&self) -> f64 {
        self.text_encoder_lrs()[0]
    }

    /// The text-encoder learning rate of each encoder in order (one entry when a single rate
    /// applies to all; `learning_rate` when unset or an empty list).
    pub fn text_encoder_lrs(&self) -> Vec<f64> {
        match &self.optimizer.text_encoder_lr {
            Some(TextEncoderLr::All(lr)) => vec![*lr],
            Some(TextEncoderLr::PerEncoder(list)) if !list.is_empty() => list.clone(),
            _ => vec![self.optimizer.learning_rate],
        }
    }

    /// The block-wise network arguments as [`crate::block_weights`] takes them.
    pub fn block_args(&self) -> crate::block_weights::BlockArgs<'_> {
        let n = &self.network;
        crate::block_weights::BlockArgs {
            down_lr_weight: n.down_lr_weight.as_deref(),
            mid_lr_weight: n.mid_lr_weight.as_deref(),
            up_lr_weight: n.up_lr_weight.as_deref(),
            block_lr_zero_threshold: n.block_lr_zero_threshold,
            block_dims: n.block_dims.as_deref(),
            block_alphas: n.block_alphas.as_deref(),
            conv_block_dims: n.conv_block_dims.as_deref(),
            conv_block_alphas: n.conv_block_alphas.as_deref(),
        }
    }

    /// The run's length as the step math takes it (`max_train_epochs` wins over
    /// `max_train_steps`; 0 means unset for both, as in sd-scripts).
    pub fn step_request(&self) -> lorakit_dataset::steps::StepRequest {
        let t = &self.training;
        lorakit_dataset::steps::StepRequest {
            max_train_epochs: (t.max_train_epochs > 0).then_some(t.max_train_epochs),
            max_train_steps: (t.max_train_steps > 0).then_some(t.max_train_steps),
            gradient_accumulation_steps: t.gradient_accumulation_steps,
        }
    }

    /// The Flux network arguments (`train_blocks`, type dims, block indices, `in_dims`) as
    /// `lora_flux.py` reads them; an error names the key.
    pub fn flux_network_args(&self) -> std::result::Result<lorakit_models::dit::flux_network::FluxNetworkArgs, String> {
        self.network.flux_args()
    }

    /// Whether the UNet LoRA is trained.
    pub fn trains_unet(&self) -> bool {
        !self.network.network_train_text_encoder_only
    }

    /// Whether the text-encoder LoRA is trained.
    pub fn trains_text_encoder(&self) -> bool {
        !self.network.network_train_unet_only
    }
}

/// Removes `.` and `name/..` pairs lexically (`examples/../output` → `output`), so paths print
/// the way the user thinks of them. Leading `..` stay.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

/// Applies `key=value` overrides. `key` is `section.key` or a bare key that names its section
/// unambiguously; `value` is a TOML value (`3`, `true`, `"text"`, `[1, 2]`) or else a string.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<(), String> {
    for item in overrides {
        let (key, raw) = item
            .split_once('=')
            .ok_or_else(|| format!("--set {item:?}: expected key=value, e.g. --set training.max_train_epochs=5"))?;
        let key = key.trim();
        let (section, name) = match key.split_once('.') {
            Some((s, n)) => (s.to_string(), n.to_string()),
            None => (
                section_of(key).ok_or_else(|| {
                    format!("--set {key}: no config section has this key (see `lorakit train --print-config`)")
                })?,
                key.to_string(),
            ),
        };
        let mut value = parse_value(raw.trim()).map_err(|e| format!("--set {key}={}: {e}", raw.trim()))?;
        // A text key given a number or a boolean (`--set dataset.resolution=1024`) means the text.
        let text_key = key_examples()
            .iter()
            .filter(|(s, _)| *s == section)
            .flat_map(|(_, keys)| keys.iter())
            .any(|(k, example)| *k == name && example.is_str());
        if text_key && matches!(value, toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)) {
            value = toml::Value::String(raw.trim().to_string());
        }
        let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let section_table = entry
            .as_table_mut()
            .ok_or_else(|| format!("--set {key}: `{section}` is not a section in the config file"))?;
        section_table.insert(name, value);
    }
    Ok(())
}

/// A TOML value from override text: numbers, booleans, arrays and quoted strings as TOML reads
/// them, anything else as a plain string — except a whole number too large for any key, which
/// would otherwise become a string and fail with a confusing type error.
fn parse_value(raw: &str) -> Result<toml::Value, String> {
    let digits = raw.strip_prefix(['-', '+']).unwrap_or(raw).replace('_', "");
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && raw.replace('_', "").parse::<i64>().is_err()
    {
        return Err(format!("{raw} is too large (the largest whole number a key takes is {})", i64::MAX));
    }
    let doc = format!("v = {raw}");
    Ok(match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    })
}

/// Makes serde's messages about the config read well ("unknown field `x`, expected one of …"
/// already names the key; add the hint where to look).
fn describe_toml_error(e: &toml::de::Error) -> String {
    let msg = e.to_string();
    if msg.contains("unknown field") {
        format!("{msg}\n(see `lorakit train --print-config` for every key and its section)")
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_key_is_resolved_against_the_config_folder() {
        // Each string key set to a relative value alone: the ones resolve_paths rewrites must be
        // exactly the ones `paths()` lists (what the GUI keeps inside its roots), Flux's separate
        // parts included — they were once left relative to the working folder, so a Flux config
        // found its clip_l/t5xxl/ae only when run from its own folder.
        let mut resolved = Vec::new();
        for (section, keys) in key_examples() {
            for (name, example) in keys {
                if !example.is_str() {
                    continue;
                }
                let text = format!("[{section}]\n{name} = \"rel/{name}\"\n");
                let Ok(mut one) = toml::from_str::<TrainConfig>(&text) else { continue };
                one.resolve_paths(Path::new("/base"));
                let value = toml::Value::try_from(&one).unwrap();
                if value[section.as_str()][name.as_str()].as_str() == Some(&format!("/base/rel/{name}")) {
                    resolved.push(format!("{section}.{name}"));
                }
            }
        }
        let mut listed: Vec<String> =
            TrainConfig::every_key_set().paths().into_iter().map(|(k, _)| k.to_string()).collect();
        resolved.sort();
        listed.sort();
        assert_eq!(resolved, listed);
        assert!(listed.contains(&"model.clip_l".to_string()) && listed.contains(&"model.ae".to_string()));
    }

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let c = TrainConfig::default();
        c.validate().unwrap_or_else(|e| panic!("{e}"));
        let text = c.to_toml_string();
        let back = TrainConfig::from_toml_str(&text, &[]).unwrap();
        assert_eq!(back, c);
        assert!(text.contains("# pretrained_model_name_or_path = (unset)"), "{text}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = TrainConfig::from_toml_str("[optimizer]\nlearning_rat = 1e-4\n", &[]).unwrap_err();
        assert!(err.contains("learning_rat"), "{err}");
        let err = TrainConfig::from_toml_str("[optimiser]\nlearning_rate = 1e-4\n", &[]).unwrap_err();
        assert!(err.contains("optimiser"), "{err}");
    }

    #[test]
    fn overrides_take_section_keys_and_bare_keys() {
        let c = TrainConfig::from_toml_str(
            "[training]\nmax_train_epochs = 2\n",
            &["training.max_train_epochs=5".into(), "learning_rate=3e-4".into(), "output_name=my lora".into()],
        )
        .unwrap();
        assert_eq!(c.training.max_train_epochs, 5);
        assert_eq!(c.optimizer.learning_rate, 3e-4);
        assert_eq!(c.folders.output_name, "my lora");
        let err = TrainConfig::from_toml_str("", &["no_such_key=1".into()]).unwrap_err();
        assert!(err.contains("no_such_key"), "{err}");
        let err = TrainConfig::from_toml_str("", &["max_train_epochs".into()]).unwrap_err();
        assert!(err.contains("key=value"), "{err}");
        let err = TrainConfig::from_toml_str("", &["max_train_epochs=18446744073709551615".into()]).unwrap_err();
        assert!(err.contains("max_train_epochs") && err.contains("too large"), "{err}");
        let err = TrainConfig::from_toml_str("", &["max_train_epochs=-1".into()]).unwrap_err();
        assert!(err.contains("max_train_epochs"), "{err}");
    }

    #[test]
    fn validation_lists_every_problem() {
        let err = TrainConfig::from_toml_str(
            "[accelerate]\nmixed_precision = \"fp8\"\n[training]\nmax_token_length = 100\n[save]\nsave_model_as = \"ckpt\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            err.contains("mixed_precision") && err.contains("max_token_length") && err.contains("pickles"),
            "{err}"
        );
    }

    #[test]
    fn set_gives_text_keys_numbers_as_text() {
        let c =
            TrainConfig::from_toml_str("", &["dataset.resolution=1024".into(), "resolution=768,1024".into()]).unwrap();
        assert_eq!(c.dataset.resolution, "768,1024");
        let c = TrainConfig::from_toml_str("", &["dataset.resolution=1024".into()]).unwrap();
        assert_eq!(c.dataset.resolution, "1024");
        let c = TrainConfig::from_toml_str("", &["training.max_train_epochs=3".into()]).unwrap();
        assert_eq!(c.training.max_train_epochs, 3);
    }

    #[test]
    fn non_finite_numbers_are_refused_in_every_float_key() {
        let err = TrainConfig::from_toml_str(
            "[optimizer]\nlearning_rate = nan\n[loss]\nnoise_offset = inf\nhuber_c = -inf\n[network]\nnetwork_alpha = nan\n",
            &[],
        )
        .unwrap_err();
        for key in ["optimizer.learning_rate", "loss.noise_offset", "loss.huber_c", "network.network_alpha"] {
            assert!(err.contains(&format!("{key} = ")), "{key}: {err}");
        }
        let err = TrainConfig::from_toml_str("", &["network_multiplier=inf".into()]).unwrap_err();
        assert!(err.contains("network.network_multiplier = inf"), "{err}");
        let err = TrainConfig::from_toml_str("[model]\nmodel_family = \"sd35\"\n", &[]).unwrap_err();
        assert!(err.contains("model_family") && err.contains("sd1, sd2, sdxl, flux, sd3"), "{err}");
        TrainConfig::from_toml_str("[model]\nmodel_family = \"sd3\"\n", &[]).unwrap();
        TrainConfig::from_toml_str("[model]\nmodel_family = \"flux\"\n", &[]).unwrap();
        TrainConfig::from_toml_str("[model]\nmodel_family = \"sdxl\"\n", &[]).unwrap();
        let err = TrainConfig::from_toml_str("[model]\nmodel_family = \"sdxl\"\nv2 = true\n", &[]).unwrap_err();
        assert!(err.contains("v2") && err.contains("SDXL"), "{err}");
    }

    #[test]
    fn print_config_lists_the_flux_keys() {
        // `--print-config` and the docs test list `known_keys()`: a key missing there would be
        // dropped from a printed (e.g. imported) config.
        let keys = known_keys();
        for (section, key) in [
            ("model", "clip_l"),
            ("model", "t5xxl"),
            ("model", "ae"),
            ("model", "t5xxl_max_token_length"),
            ("accelerate", "blocks_to_swap"),
            ("accelerate", "cpu_offload_checkpointing"),
            ("network", "train_blocks"),
            ("network", "single_mod_dim"),
            ("network", "in_dims"),
            ("network", "train_single_block_indices"),
            ("flow", "model_prediction_type"),
        ] {
            let listed = keys.iter().any(|(s, k)| s == section && k.iter().any(|k| k == key));
            assert!(listed, "{section}.{key} missing from known_keys()");
        }
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_folder() {
        let mut c = TrainConfig::from_toml_str(
            "[folders]\noutput_dir = \"../out\"\n[dataset]\ntrain_data_dir = \"./img\"\n",
            &[],
        )
        .unwrap();
        c.resolve_paths(Path::new("examples"));
        assert_eq!(c.folders.output_dir, PathBuf::from("out"));
        assert_eq!(c.dataset.train_data_dir, Some(PathBuf::from("examples/img")));
        assert_eq!(normalize(Path::new("../a/./b/../c")), PathBuf::from("../a/c"));
    }

    #[test]
    fn set_paths_are_relative_to_the_working_directory_file_paths_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub").join("run.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "[dataset]\ntrain_data_dir = \"img\"\n").unwrap();
        let c = TrainConfig::load(&file, &["save.resume=out/x-state".into()]).unwrap();
        assert_eq!(c.dataset.train_data_dir, Some(dir.path().join("sub/img")));
        assert_eq!(c.save.resume, Some(PathBuf::from("out/x-state")));
    }

    #[test]
    fn every_section_key_is_known() {
        let keys = known_keys();
        let names: Vec<&str> = keys.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "accelerate",
                "dataset",
                "flow",
                "folders",
                "logging",
                "loss",
                "metadata",
                "model",
                "network",
                "optimizer",
                "samples",
                "save",
                "training"
            ]
        );
        assert_eq!(section_of("network_dim").as_deref(), Some("network"));
        assert_eq!(section_of("pretrained_model_name_or_path").as_deref(), Some("model"));
    }
}
