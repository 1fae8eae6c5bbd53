//! Tensor names of SD 1.x/2.x and SDXL checkpoints: the single-file (LDM/CompVis, SDXL's SGM)
//! layout → diffusers (spec §14.2–14.3), plus the small fix-ups diffusers folders need.
//!
//! The map is rule based rather than an enumerated list, so it covers every tensor (norms,
//! biases, time embedding, VAE, text encoder) of any SD-shaped configuration: the few
//! configuration facts the LDM numbering depends on (U-Net layers per block, VAE decoder
//! levels, OpenCLIP depth) are read from the key list itself by [`LdmKeyMap::new`].

use candle_core::Tensor;

/// Prefix of the U-Net in single-file checkpoints.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of the VAE in single-file checkpoints.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// Prefix of the SD 1.x text encoder (HF CLIP layout) in single-file checkpoints.
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// Prefix of the SD 2.x text encoder (OpenCLIP layout) in single-file checkpoints.
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// Prefix of SDXL's first text encoder (HF CLIP-L layout) in single-file (SGM) checkpoints.
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// Prefix of SDXL's second text encoder (OpenCLIP bigG layout) in single-file checkpoints.
pub const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";
/// Prefix of the SDXL refiner's only text encoder (OpenCLIP bigG as embedder 0).
pub const SDXL_REFINER_PREFIX: &str = "conditioner.embedders.0.model.";

/// The model component a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The denoising U-Net.
    Unet,
    /// The autoencoder.
    Vae,
    /// The (first) CLIP text encoder (HF `CLIPTextModel` names).
    TextEncoder,
    /// SDXL's second text encoder (HF `CLIPTextModelWithProjection` names).
    TextEncoder2,
}

impl Component {
    /// A name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Component::Unet => "U-Net",
            Component::Vae => "VAE",
            Component::TextEncoder => "text encoder",
            Component::TextEncoder2 => "text encoder 2",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A change of tensor layout that goes with a rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Values and shape unchanged.
    Keep,
    /// A 1×1 convolution weight `[out, in, 1, 1]` read as a linear weight `[out, in]`: the LDM
    /// VAE attention uses 1×1 convs where diffusers uses linears. Other shapes pass unchanged,
    /// so the transform is safe on weights that are already linear.
    ConvToLinear,
    /// A 2-D tensor transposed: OpenCLIP's `text_projection` parameter (width, proj), used as
    /// `x @ P`, becomes a linear weight (proj, width).
    Transpose,
    /// Chunk `index` of `count` equal parts along dim 0: OpenCLIP's fused q/k/v projection.
    Chunk {
        /// Which part (0 = q, 1 = k, 2 = v).
        index: usize,
        /// How many parts.
        count: usize,
    },
}

impl Transform {
    /// The shape after the transform; `None` when it cannot apply (dim 0 not divisible).
    pub fn shape(self, shape: &[usize]) -> Option<Vec<usize>> {
        match self {
            Transform::Keep => Some(shape.to_vec()),
            Transform::ConvToLinear => Some(match shape {
                [o, i, 1, 1] => vec![*o, *i],
                _ => shape.to_vec(),
            }),
            Transform::Transpose => match shape {
                [a, b] => Some(vec![*b, *a]),
                _ => None,
            },
            Transform::Chunk { count, .. } => {
                let (&first, rest) = shape.split_first()?;
                if count == 0 || first % count != 0 {
                    return None;
                }
                let mut out = vec![first / count];
                out.extend_from_slice(rest);
                Some(out)
            }
        }
    }

    /// Applies the transform (a reshape or a narrow, no copy of the data; a transpose is made
    /// contiguous).
    pub fn apply(self, tensor: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Transform::Keep => Ok(tensor.clone()),
            Transform::Transpose => match tensor.dims() {
                &[_, _] => tensor.t()?.contiguous(),
                dims => candle_core::bail!("cannot transpose a tensor of shape {dims:?} (expected 2-D)"),
            },
            Transform::ConvToLinear => match tensor.dims() {
                &[o, i, 1, 1] => tensor.reshape((o, i)),
                _ => Ok(tensor.clone()),
            },
            Transform::Chunk { index, count } => {
                let first = tensor.dim(0)?;
                if count == 0 || first % count != 0 || index >= count {
                    candle_core::bail!("cannot split dim 0 of size {first} into {count} equal parts");
                }
                let part = first / count;
                tensor.narrow(0, index * part, part)
            }
        }
    }
}

/// Where one stored tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The component.
    pub component: Component,
    /// The diffusers key inside that component (no `unet.`/`vae.` prefix).
    pub name: String,
    /// How the stored tensor becomes the diffusers tensor.
    pub transform: Transform,
}

impl Target {
    fn new(component: Component, name: String) -> Self {
        Target { component, name, transform: Transform::Keep }
    }
}

/// What happens to one stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFate {
    /// Renamed to one diffusers tensor, or to several (OpenCLIP's fused q/k/v → three).
    Renamed(Vec<Target>),
    /// Not part of the model the trainer runs (EMA copies, schedule buffers, …); the reason is
    /// for the debug log.
    Ignored(&'static str),
    /// Inside a component's prefix but matching no known layout rule.
    Unmapped(Component),
}

/// Buffers of the LDM `DDPM` wrapper that some single files carry; the schedule is recomputed.
const SCHEDULE_BUFFERS: [&str; 14] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "lvlb_weights",
];

/// Top-level keys of SDXL single files that are flags, not weights: `v_pred` / `ztsnr`
/// (v-prediction and zero-terminal-SNR models such as NoobAI-XL v-pred, read by ComfyUI),
/// `edm_mean`/`edm_std` (Playground v2.5), `edm_vpred.sigma_max`/`sigma_min`.
pub const MODEL_FLAG_KEYS: [&str; 6] =
    ["v_pred", "ztsnr", "edm_mean", "edm_std", "edm_vpred.sigma_max", "edm_vpred.sigma_min"];

/// The LDM → diffusers map for one single-file checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdmKeyMap {
    layers_per_block: usize,
    vae_levels: usize,
    open_clip_layers: usize,
}

impl Default for LdmKeyMap {
    /// The SD 1.x/2.x configuration: 2 resnets per down block, 4 VAE levels, 24 OpenCLIP layers.
    fn default() -> Self {
        LdmKeyMap { layers_per_block: 2, vae_levels: 4, open_clip_layers: 24 }
    }
}

impl LdmKeyMap {
    /// Reads the configuration the LDM numbering depends on from the file's keys; what the
    /// keys do not show keeps the SD 1.x/2.x value.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        let mut first_downsampler: Option<usize> = None;
        let mut last_input_block: Option<usize> = None;
        let mut last_vae_level: Option<usize> = None;
        let mut last_resblock: Option<usize> = None;
        for key in keys {
            if let Some(rest) = key.strip_prefix(UNET_PREFIX).and_then(|r| r.strip_prefix("input_blocks.")) {
                if let Some((n, tail)) = split_index(rest) {
                    last_input_block = last_input_block.max(Some(n));
                    if n > 0 && tail.starts_with("0.op.") {
                        first_downsampler = Some(first_downsampler.map_or(n, |m| m.min(n)));
                    }
                }
            } else if let Some(rest) = key.strip_prefix("first_stage_model.decoder.up.") {
                if let Some((k, _)) = split_index(rest) {
                    last_vae_level = last_vae_level.max(Some(k));
                }
            } else if let Some(rest) = key.strip_prefix("cond_stage_model.model.transformer.resblocks.") {
                if let Some((n, _)) = split_index(rest) {
                    last_resblock = last_resblock.max(Some(n));
                }
            }
        }
        let defaults = LdmKeyMap::default();
        let layers_per_block = match (first_downsampler, last_input_block) {
            // Down block 0 holds input blocks 1..=L, its downsampler is input block L+1.
            (Some(n), _) => n - 1,
            // One level, no downsampler: input blocks 1..=L.
            (None, Some(n)) if n > 0 => n,
            _ => defaults.layers_per_block,
        }
        .max(1);
        LdmKeyMap {
            layers_per_block,
            vae_levels: last_vae_level.map_or(defaults.vae_levels, |k| k + 1),
            open_clip_layers: last_resblock.map_or(defaults.open_clip_layers, |n| n + 1),
        }
    }

    /// Resnets per U-Net down block (up blocks have one more).
    pub fn layers_per_block(&self) -> usize {
        self.layers_per_block
    }

    /// What happens to the stored tensor `key` of a single-file checkpoint.
    pub fn map(&self, key: &str) -> KeyFate {
        if key.ends_with("position_ids") {
            return KeyFate::Ignored("position-id buffer (recomputed)");
        }
        if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
            return match self.unet_name(rest) {
                Some(name) => KeyFate::Renamed(vec![Target::new(Component::Unet, name)]),
                None => KeyFate::Unmapped(Component::Unet),
            };
        }
        if let Some(rest) = key.strip_prefix(VAE_PREFIX) {
            if rest.starts_with("loss.") {
                return KeyFate::Ignored("VAE training loss (discriminator) weights");
            }
            return match self.vae_name(rest) {
                Some(target) => KeyFate::Renamed(vec![target]),
                None => KeyFate::Unmapped(Component::Vae),
            };
        }
        if let Some(rest) = key.strip_prefix(CLIP_PREFIX) {
            return match clip_name(rest) {
                Some(name) => KeyFate::Renamed(vec![Target::new(Component::TextEncoder, name)]),
                None => KeyFate::Unmapped(Component::TextEncoder),
            };
        }
        if let Some(rest) = key.strip_prefix(OPEN_CLIP_PREFIX) {
            return self.open_clip(rest, Component::TextEncoder, Some(self.open_clip_layers));
        }
        if let Some(rest) = key.strip_prefix(SDXL_CLIP_PREFIX) {
            return match clip_name(rest) {
                Some(name) => KeyFate::Renamed(vec![Target::new(Component::TextEncoder, name)]),
                None => KeyFate::Unmapped(Component::TextEncoder),
            };
        }
        if let Some(rest) = key.strip_prefix(SDXL_OPEN_CLIP_PREFIX) {
            return self.open_clip(rest, Component::TextEncoder2, None);
        }
        if MODEL_FLAG_KEYS.contains(&key) {
            return KeyFate::Ignored("model flag (prediction type / noise schedule), read separately");
        }
        if key.starts_with("model_ema.") {
            return KeyFate::Ignored("EMA copy of the U-Net (the live weights are used)");
        }
        if SCHEDULE_BUFFERS.contains(&key) {
            return KeyFate::Ignored("noise-schedule buffer (recomputed)");
        }
        KeyFate::Ignored("not part of an SD 1.x/2.x/SDXL model")
    }

    /// The diffusers U-Net name of an LDM U-Net key (without `model.diffusion_model.`).
    fn unet_name(&self, rest: &str) -> Option<String> {
        let l = self.layers_per_block;
        if let Some(r) = rest.strip_prefix("time_embed.") {
            let (idx, tail) = split_index(r)?;
            let linear = match idx {
                0 => "linear_1",
                2 => "linear_2",
                _ => return None,
            };
            return Some(format!("time_embedding.{linear}.{tail}"));
        }
        if let Some(r) = rest.strip_prefix("label_emb.0.") {
            // SDXL's size/crop ("vector") embedding MLP.
            let (idx, tail) = split_index(r)?;
            let linear = match idx {
                0 => "linear_1",
                2 => "linear_2",
                _ => return None,
            };
            return Some(format!("add_embedding.{linear}.{tail}"));
        }
        if let Some(r) = rest.strip_prefix("out.") {
            let (idx, tail) = split_index(r)?;
            let module = match idx {
                0 => "conv_norm_out",
                2 => "conv_out",
                _ => return None,
            };
            return Some(format!("{module}.{tail}"));
        }
        if let Some(r) = rest.strip_prefix("input_blocks.") {
            let (n, r) = split_index(r)?;
            let (m, tail) = split_index(r)?;
            if n == 0 {
                return (m == 0).then(|| format!("conv_in.{tail}"));
            }
            let (i, j) = ((n - 1) / (l + 1), (n - 1) % (l + 1));
            return match (j < l, m) {
                (true, 0) => Some(format!("down_blocks.{i}.resnets.{j}.{}", resnet_child(tail)?)),
                (true, 1) => Some(format!("down_blocks.{i}.attentions.{j}.{tail}")),
                (false, 0) => tail.strip_prefix("op.").map(|t| format!("down_blocks.{i}.downsamplers.0.conv.{t}")),
                _ => None,
            };
        }
        if let Some(r) = rest.strip_prefix("middle_block.") {
            let (m, tail) = split_index(r)?;
            return match m {
                0 => Some(format!("mid_block.resnets.0.{}", resnet_child(tail)?)),
                1 => Some(format!("mid_block.attentions.0.{tail}")),
                2 => Some(format!("mid_block.resnets.1.{}", resnet_child(tail)?)),
                _ => None,
            };
        }
        if let Some(r) = rest.strip_prefix("output_blocks.") {
            let (n, r) = split_index(r)?;
            let (m, tail) = split_index(r)?;
            let (i, j) = (n / (l + 1), n % (l + 1));
            // Slot 1 is the attention, or the upsampler in levels without attention; a
            // spatial transformer has no `conv` child, an upsampler nothing else.
            return match (m, tail.strip_prefix("conv.")) {
                (0, _) => Some(format!("up_blocks.{i}.resnets.{j}.{}", resnet_child(tail)?)),
                (1 | 2, Some(t)) => Some(format!("up_blocks.{i}.upsamplers.0.conv.{t}")),
                (1, None) => Some(format!("up_blocks.{i}.attentions.{j}.{tail}")),
                _ => None,
            };
        }
        None
    }

    /// The diffusers VAE target of an LDM VAE key (without `first_stage_model.`).
    fn vae_name(&self, rest: &str) -> Option<Target> {
        let plain = |name: String| Some(Target::new(Component::Vae, name));
        if rest.starts_with("quant_conv.") || rest.starts_with("post_quant_conv.") {
            return plain(rest.to_string());
        }
        let (side, r) = rest.split_once('.')?;
        if side != "encoder" && side != "decoder" {
            return None;
        }
        if r.starts_with("conv_in.") || r.starts_with("conv_out.") {
            return plain(format!("{side}.{r}"));
        }
        if let Some(t) = r.strip_prefix("norm_out.") {
            return plain(format!("{side}.conv_norm_out.{t}"));
        }
        if let Some(t) = r.strip_prefix("mid.block_1.") {
            return plain(format!("{side}.mid_block.resnets.0.{}", vae_resnet_child(t)?));
        }
        if let Some(t) = r.strip_prefix("mid.block_2.") {
            return plain(format!("{side}.mid_block.resnets.1.{}", vae_resnet_child(t)?));
        }
        if let Some(t) = r.strip_prefix("mid.attn_1.") {
            let (module, tail) = t.split_once('.')?;
            let (module, linear) = match module {
                "norm" => ("group_norm", false),
                "q" => ("to_q", true),
                "k" => ("to_k", true),
                "v" => ("to_v", true),
                "proj_out" => ("to_out.0", true),
                _ => return None,
            };
            let transform = if linear && tail == "weight" { Transform::ConvToLinear } else { Transform::Keep };
            let name = format!("{side}.mid_block.attentions.0.{module}.{tail}");
            return Some(Target { component: Component::Vae, name, transform });
        }
        let (level_kind, r) = r.split_once('.')?;
        let (level, r) = split_index(r)?;
        let (blocks, level) = match (side, level_kind) {
            ("encoder", "down") => ("down_blocks", level),
            // LDM numbers decoder levels from the lowest resolution up; diffusers the other way.
            ("decoder", "up") => ("up_blocks", self.vae_levels.checked_sub(level + 1)?),
            _ => return None,
        };
        if let Some(r) = r.strip_prefix("block.") {
            let (j, tail) = split_index(r)?;
            return plain(format!("{side}.{blocks}.{level}.resnets.{j}.{}", vae_resnet_child(tail)?));
        }
        let sampler = if blocks == "down_blocks" { "downsample" } else { "upsample" };
        let t = r.strip_prefix(sampler)?.strip_prefix(".conv.")?;
        plain(format!("{side}.{blocks}.{level}.{sampler}rs.0.conv.{t}"))
    }

    /// An OpenCLIP text encoder → HF CLIP (spec §14.2), `rest` without its prefix. SD 2.x
    /// (`drop_last = Some(depth)`, component `TextEncoder`): the last layer and the projection
    /// head are left out (SD 2 reads the penultimate layer). SDXL's encoder 2 (`None`,
    /// `TextEncoder2`): every layer is kept, and `text_projection` (width, proj) becomes the
    /// linear `text_projection.weight` (proj, width) — transposed, as diffusers and ComfyUI
    /// convert it (sd-scripts copies it untransposed; see `checkpoint`'s module docs).
    fn open_clip(&self, rest: &str, component: Component, drop_last: Option<usize>) -> KeyFate {
        let te = |name: String| KeyFate::Renamed(vec![Target::new(component, name)]);
        match rest {
            "token_embedding.weight" => return te("text_model.embeddings.token_embedding.weight".into()),
            "positional_embedding" => return te("text_model.embeddings.position_embedding.weight".into()),
            "text_projection" if drop_last.is_none() => {
                return KeyFate::Renamed(vec![Target {
                    component,
                    name: "text_projection.weight".into(),
                    transform: Transform::Transpose,
                }])
            }
            // Playground-v2-style files store the projection as a linear weight already.
            "text_projection.weight" if drop_last.is_none() => return te("text_projection.weight".into()),
            "text_projection" | "logit_scale" => {
                return KeyFate::Ignored("OpenCLIP projection head (SD reads the hidden states)")
            }
            "attn_mask" => return KeyFate::Ignored("OpenCLIP causal-mask buffer (recomputed)"),
            _ => {}
        }
        if let Some(t) = rest.strip_prefix("ln_final.") {
            return te(format!("text_model.final_layer_norm.{t}"));
        }
        let Some((n, tail)) = rest.strip_prefix("transformer.resblocks.").and_then(split_index) else {
            return KeyFate::Unmapped(component);
        };
        if drop_last == Some(n + 1) {
            return KeyFate::Ignored("last OpenCLIP layer (SD 2.x reads the penultimate layer)");
        }
        let layer = format!("text_model.encoder.layers.{n}");
        let fused = match tail {
            "attn.in_proj_weight" => Some("weight"),
            "attn.in_proj_bias" => Some("bias"),
            _ => None,
        };
        if let Some(param) = fused {
            let targets = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .map(|(index, proj)| Target {
                    component,
                    name: format!("{layer}.self_attn.{proj}.{param}"),
                    transform: Transform::Chunk { index, count: 3 },
                })
                .collect();
            return KeyFate::Renamed(targets);
        }
        let renamed = [
            ("ln_1.", "layer_norm1."),
            ("ln_2.", "layer_norm2."),
            ("mlp.c_fc.", "mlp.fc1."),
            ("mlp.c_proj.", "mlp.fc2."),
            ("attn.out_proj.", "self_attn.out_proj."),
        ]
        .iter()
        .find_map(|(from, to)| tail.strip_prefix(from).map(|t| format!("{layer}.{to}{t}")));
        match renamed {
            Some(name) => te(name),
            None => KeyFate::Unmapped(component),
        }
    }
}

/// What happens to a tensor of a diffusers folder's component file: position-id buffers are
/// dropped, and VAE attention written by diffusers < 0.14 (`query`/`key`/`value`/`proj_attn`)
/// or as 1×1 convs is brought to today's linear `to_q`/`to_k`/`to_v`/`to_out.0`.
pub fn diffusers_fate(component: Component, key: &str) -> KeyFate {
    if key.ends_with("position_ids") {
        return KeyFate::Ignored("position-id buffer (recomputed)");
    }
    let mut target = Target::new(component, key.to_string());
    if component == Component::Vae {
        if let Some((head, tail)) = key.split_once(".mid_block.attentions.0.") {
            let (module, param) = tail.split_once('.').unwrap_or((tail, ""));
            let module = match module {
                "query" => "to_q",
                "key" => "to_k",
                "value" => "to_v",
                "proj_attn" => "to_out.0",
                other => other,
            };
            target.name = format!("{head}.mid_block.attentions.0.{module}.{param}");
            if param == "weight" && matches!(module, "to_q" | "to_k" | "to_v" | "to_out.0") {
                target.transform = Transform::ConvToLinear;
            }
        }
    }
    KeyFate::Renamed(vec![target])
}

/// `"12.rest"` → `(12, "rest")`.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// LDM `ResBlock` children → diffusers `ResnetBlock2D` children.
fn resnet_child(tail: &str) -> Option<String> {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    MAP.iter().find_map(|(from, to)| tail.strip_prefix(from).map(|t| format!("{to}{t}")))
}

/// LDM VAE `ResnetBlock` children → diffusers names (only the shortcut differs).
fn vae_resnet_child(tail: &str) -> Option<String> {
    if let Some(t) = tail.strip_prefix("nin_shortcut.") {
        return Some(format!("conv_shortcut.{t}"));
    }
    let (module, _) = tail.split_once('.')?;
    matches!(module, "norm1" | "conv1" | "norm2" | "conv2").then(|| tail.to_string())
}

/// The SD 1.x text encoder (HF CLIP under `cond_stage_model.transformer.`); files saved without
/// the `text_model.` level get it back (sd-scripts does the same fix-up).
fn clip_name(rest: &str) -> Option<String> {
    if rest.starts_with("text_model.") {
        return Some(rest.to_string());
    }
    ["embeddings.", "encoder.", "final_layer_norm."]
        .iter()
        .any(|p| rest.starts_with(p))
        .then(|| format!("text_model.{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(map: &LdmKeyMap, key: &str) -> (Component, String, Transform) {
        match map.map(key) {
            KeyFate::Renamed(t) if t.len() == 1 => (t[0].component, t[0].name.clone(), t[0].transform),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn unet_rules_follow_the_spec_table() {
        let map = LdmKeyMap::default();
        let cases = [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            ("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"),
            ("input_blocks.2.1.proj_in.weight", "down_blocks.0.attentions.1.proj_in.weight"),
            ("input_blocks.3.0.op.bias", "down_blocks.0.downsamplers.0.conv.bias"),
            ("input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("input_blocks.11.0.emb_layers.1.weight", "down_blocks.3.resnets.1.time_emb_proj.weight"),
            ("middle_block.2.out_layers.3.bias", "mid_block.resnets.1.conv2.bias"),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.2.conv.weight", "up_blocks.1.upsamplers.0.conv.weight"),
            ("output_blocks.5.1.norm.weight", "up_blocks.1.attentions.2.norm.weight"),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
            ("out.0.bias", "conv_norm_out.bias"),
            ("out.2.weight", "conv_out.weight"),
        ];
        for (ldm, diffusers) in cases {
            let (c, name, _) = one(&map, &format!("{UNET_PREFIX}{ldm}"));
            assert_eq!((c, name.as_str()), (Component::Unet, diffusers), "{ldm}");
        }
        assert_eq!(map.map("model.diffusion_model.input_blocks.1.2.x"), KeyFate::Unmapped(Component::Unet));
    }

    #[test]
    fn vae_decoder_levels_are_reversed_and_attention_becomes_linear() {
        let map = LdmKeyMap::default();
        let (_, name, _) = one(&map, "first_stage_model.decoder.up.3.block.2.nin_shortcut.weight");
        assert_eq!(name, "decoder.up_blocks.0.resnets.2.conv_shortcut.weight");
        let (_, name, _) = one(&map, "first_stage_model.decoder.up.1.upsample.conv.bias");
        assert_eq!(name, "decoder.up_blocks.2.upsamplers.0.conv.bias");
        let (_, name, _) = one(&map, "first_stage_model.encoder.down.2.downsample.conv.weight");
        assert_eq!(name, "encoder.down_blocks.2.downsamplers.0.conv.weight");
        let (_, name, t) = one(&map, "first_stage_model.encoder.mid.attn_1.proj_out.weight");
        assert_eq!((name.as_str(), t), ("encoder.mid_block.attentions.0.to_out.0.weight", Transform::ConvToLinear));
        assert_eq!(Transform::ConvToLinear.shape(&[512, 512, 1, 1]), Some(vec![512, 512]));
    }

    #[test]
    fn open_clip_in_proj_splits_in_three_and_the_last_layer_is_dropped() {
        let map = LdmKeyMap::default();
        let KeyFate::Renamed(t) = map.map("cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight") else {
            panic!("not renamed");
        };
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "text_model.encoder.layers.3.self_attn.q_proj.weight",
                "text_model.encoder.layers.3.self_attn.k_proj.weight",
                "text_model.encoder.layers.3.self_attn.v_proj.weight"
            ]
        );
        assert!(matches!(map.map("cond_stage_model.model.transformer.resblocks.23.ln_1.weight"), KeyFate::Ignored(_)));
    }
}
