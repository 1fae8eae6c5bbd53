//! Which Flux transformer modules a LoRA gets, and at which rank: sd-scripts'
//! `networks/lora_flux.py` arguments `train_blocks`, the per-type dims (`img_attn_dim`, …,
//! `single_mod_dim`), `train_double_block_indices` / `train_single_block_indices` and `in_dims`
//! (spec §13.1), decided on kohya module names exactly as `create_modules` does.

/// `train_blocks`: which block kinds get modules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FluxTrainBlocks {
    /// Double and single blocks (sd-scripts' default).
    #[default]
    All,
    /// Single-stream blocks only.
    Single,
    /// Double-stream blocks only.
    Double,
}

/// The per-type dims in sd-scripts' order, with the name fragments each one matches (all of a
/// tuple must occur in the module name; the first matching type wins).
pub const TYPE_DIMS: [(&str, &[&str]); 8] = [
    ("img_attn_dim", &["img_attn"]),
    ("txt_attn_dim", &["txt_attn"]),
    ("img_mlp_dim", &["img_mlp"]),
    ("txt_mlp_dim", &["txt_mlp"]),
    ("img_mod_dim", &["img_mod"]),
    ("txt_mod_dim", &["txt_mod"]),
    ("single_dim", &["single_blocks", "linear"]),
    ("single_mod_dim", &["modulation"]),
];

/// The input layers `in_dims` names, in its order, as the fragments sd-scripts filters by.
pub const IN_DIM_LAYERS: [&str; 5] = ["_img_in", "_time_in", "_vector_in", "_guidance_in", "_txt_in"];

/// sd-scripts' block counts for `train_*_block_indices` (FLUX.1's 19 and 38; it checks indices
/// against these whatever the model).
pub const NUM_DOUBLE_BLOCKS: usize = 19;
/// See [`NUM_DOUBLE_BLOCKS`].
pub const NUM_SINGLE_BLOCKS: usize = 38;

/// The Flux-specific network arguments (every one optional, as in sd-scripts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FluxNetworkArgs {
    /// `train_blocks`.
    pub train_blocks: FluxTrainBlocks,
    /// Ranks by module type ([`TYPE_DIMS`] order); `Some(0)` removes that type.
    pub type_dims: [Option<usize>; 8],
    /// Ranks of img_in, time_in, vector_in, guidance_in, txt_in (0: none); `None`: none of them.
    pub in_dims: Option<[usize; 5]>,
    /// `train_double_block_indices` as a mask over [`NUM_DOUBLE_BLOCKS`].
    pub double_blocks: Option<Vec<bool>>,
    /// `train_single_block_indices` as a mask over [`NUM_SINGLE_BLOCKS`].
    pub single_blocks: Option<Vec<bool>>,
    /// `split_qkv`: one down/up pair per part of the fused layers (see [`Self::split_widths`]).
    pub split_qkv: bool,
}

impl FluxNetworkArgs {
    /// Parses `train_blocks`.
    pub fn parse_train_blocks(value: &str) -> Result<FluxTrainBlocks, String> {
        match value {
            "all" => Ok(FluxTrainBlocks::All),
            "single" => Ok(FluxTrainBlocks::Single),
            "double" => Ok(FluxTrainBlocks::Double),
            other => Err(format!("train_blocks = {other:?}: use \"all\", \"single\" or \"double\"")),
        }
    }

    /// Parses `in_dims` (`[4,0,0,0,4]` or `4,0,0,0,4`).
    pub fn parse_in_dims(value: &str) -> Result<[usize; 5], String> {
        let inner = value.trim();
        let inner = inner.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(inner);
        let dims: Vec<usize> = inner
            .split(',')
            .map(|d| {
                d.trim().parse::<usize>().map_err(|_| format!("in_dims = {value:?}: `{}` is not a rank", d.trim()))
            })
            .collect::<Result<_, _>>()?;
        dims.try_into().map_err(|d: Vec<usize>| {
            format!(
                "in_dims = {value:?}: {} values; give 5 ranks (img_in, time_in, vector_in, guidance_in, txt_in)",
                d.len()
            )
        })
    }

    /// Parses a block selection (`all`, `none`, or indices and ranges such as `0-3,7`) over
    /// `total` blocks: [`super::block_selection::parse_block_selection`].
    pub fn parse_block_selection(key: &str, value: &str, total: usize) -> Result<Vec<bool>, String> {
        super::block_selection::parse_block_selection(key, value, total)
    }

    /// With `split_qkv`, the output widths of the parts of the fused layer `name` (kohya name)
    /// whose input width is `in_dim` and output `out_dim`, chosen by name as sd-scripts does:
    /// a double block's `qkv` splits into q, k, v (3 × hidden), a single block's `linear1` into
    /// q, k, v and the MLP input (3 × hidden + the rest). `None`: not split.
    pub fn split_widths(&self, name: &str, in_dim: usize, out_dim: usize) -> Option<Vec<usize>> {
        if !self.split_qkv || out_dim < 3 * in_dim {
            return None;
        }
        if name.contains("double") && name.contains("qkv") && out_dim == 3 * in_dim {
            Some(vec![in_dim; 3])
        } else if name.contains("single") && name.contains("linear1") && out_dim > 3 * in_dim {
            Some(vec![in_dim, in_dim, in_dim, out_dim - 3 * in_dim])
        } else {
            None
        }
    }

    /// Whether no argument differs from sd-scripts' defaults.
    pub fn is_default(&self) -> bool {
        *self == FluxNetworkArgs::default()
    }

    /// The rank of the transformer module `name` (kohya name, `lora_unet_…`) given the
    /// network's `rank`; `None`: no module. `input_layer` marks the layers `in_dims` adds.
    pub fn rank_for(&self, name: &str, input_layer: bool, rank: usize) -> Option<usize> {
        let in_double = name.contains("double");
        let in_single = name.contains("single");
        let mut dim = if input_layer {
            let dims = self.in_dims?;
            let i = IN_DIM_LAYERS.iter().position(|f| name.contains(f))?;
            dims[i]
        } else {
            let wanted = match self.train_blocks {
                FluxTrainBlocks::All => true,
                FluxTrainBlocks::Single => name.contains("single_blocks"),
                FluxTrainBlocks::Double => name.contains("double_blocks"),
            };
            if !wanted {
                return None;
            }
            rank
        };
        if let Some((_, d)) = TYPE_DIMS
            .iter()
            .zip(self.type_dims)
            .find(|((_, ids), d)| d.is_some() && ids.iter().all(|id| name.contains(id)))
        {
            dim = d.unwrap_or(dim);
        }
        if dim > 0 && (in_double || in_single) && (self.double_blocks.is_some() || self.single_blocks.is_some()) {
            // "lora_unet_double_blocks_12_…": the fifth `_` field, as sd-scripts reads it.
            let block: Option<usize> = name.split('_').nth(4).and_then(|s| s.parse().ok());
            let off = |mask: &Option<Vec<bool>>| match (mask, block) {
                (Some(mask), Some(i)) => !mask.get(i).copied().unwrap_or(false),
                _ => false,
            };
            if (in_double && off(&self.double_blocks)) || (!in_double && in_single && off(&self.single_blocks)) {
                dim = 0;
            }
        }
        (dim > 0).then_some(dim)
    }
}
