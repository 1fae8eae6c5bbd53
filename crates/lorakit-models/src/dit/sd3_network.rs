//! Which MMDiT modules an SD3 / SD3.5 LoRA gets, and at which rank: sd-scripts'
//! `networks/lora_sd3.py` arguments `context_attn_dim` … `x_mod_dim`, `emb_dims`,
//! `train_block_indices` and `split_qkv` (spec §13.4), decided on kohya module names exactly as
//! its `create_network` / `LoRANetwork.__init__` / `create_modules` do.
//!
//! sd-scripts' quirks, kept so the same arguments give the same network:
//! - a type dim of 0, an `emb_dims` entry of 0 or a block left out of `train_block_indices`
//!   removes the module (no module, not a rank-0 one);
//! - the first type whose identifiers all occur in the name and whose dim is given wins, so
//!   `x_attn_dim` also sets the second attention (`attn2`) of SD3.5 Medium;
//! - `train_block_indices` is parsed over 999 blocks whatever the model's depth (indices past
//!   the last block select nothing and are no error); the block is the name's fifth `_` field;
//! - `emb_dims` adds the embedders and the final layer (never the joint blocks' rules): the
//!   timestep embedder is found by `_t_embedder` (plain `t_embedder` is inside
//!   `context_embedder`). The patch embedding `x_embedder.proj` is a p×p stride-p conv and is
//!   only ever reached there: with `conv_dim` given it takes `conv_dim`/`conv_alpha` (even when
//!   its `emb_dims` entry is 0, and `conv_dim = 0` removes it), otherwise its `emb_dims` entry
//!   and `network_alpha`;
//! - `split_qkv` splits every `joint_blocks…qkv` (both sides, and `attn2`) into three equal
//!   parts of the context block 0 qkv's width / 3 — the hidden width, the input width of every
//!   MMDiT qkv.

use super::block_selection::parse_block_selection;

/// The per-type dims in sd-scripts' order, with the name fragments each one matches (all of a
/// tuple must occur in the module name; the first matching type with a dim wins).
pub const TYPE_DIMS: [(&str, [&str; 2]); 6] = [
    ("context_attn_dim", ["context_block", "attn"]),
    ("context_mlp_dim", ["context_block", "mlp"]),
    ("context_mod_dim", ["context_block", "adaLN_modulation"]),
    ("x_attn_dim", ["x_block", "attn"]),
    ("x_mlp_dim", ["x_block", "mlp"]),
    ("x_mod_dim", ["x_block", "adaLN_modulation"]),
];

/// The layers `emb_dims` names, in its order, as the fragments sd-scripts filters kohya names by.
pub const EMB_LAYERS: [&str; 6] = [
    "context_embedder",
    "_t_embedder",
    "x_embedder",
    "y_embedder",
    "final_layer_adaLN_modulation",
    "final_layer_linear",
];

/// The block count sd-scripts parses `train_block_indices` over (a dummy, whatever the depth).
pub const BLOCK_INDEX_LIMIT: usize = 999;

/// The SD3-specific network arguments (every one optional, as in sd-scripts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sd3NetworkArgs {
    /// Ranks by module type ([`TYPE_DIMS`] order: context_attn, context_mlp, context_mod,
    /// x_attn, x_mlp, x_mod); `Some(0)` removes that type.
    pub type_dims: [Option<usize>; 6],
    /// `emb_dims`: ranks of context_embedder, t_embedder, x_embedder, y_embedder,
    /// final_layer.adaLN_modulation, final_layer.linear (0: none); `None`: none of them.
    pub emb_dims: Option<[usize; 6]>,
    /// `train_block_indices` as a mask over [`BLOCK_INDEX_LIMIT`] blocks.
    pub train_block_indices: Option<Vec<bool>>,
    /// `split_qkv`: one down/up pair per q, k, v of the fused qkv layers.
    pub split_qkv: bool,
}

impl Sd3NetworkArgs {
    /// Parses a type dim (`context_attn_dim = "8"`).
    pub fn parse_dim(key: &str, value: &str) -> Result<usize, String> {
        value.trim().parse::<usize>().map_err(|_| format!("{key} = {value:?}: give a rank (0 removes those modules)"))
    }

    /// Parses `emb_dims` (`[4,0,0,0,4,4]` or `4,0,0,0,4,4`).
    pub fn parse_emb_dims(value: &str) -> Result<[usize; 6], String> {
        let inner = value.trim();
        let inner = inner.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(inner);
        let dims: Vec<usize> = inner
            .split(',')
            .map(|d| {
                d.trim().parse::<usize>().map_err(|_| format!("emb_dims = {value:?}: `{}` is not a rank", d.trim()))
            })
            .collect::<Result<_, _>>()?;
        dims.try_into().map_err(|d: Vec<usize>| {
            format!(
                "emb_dims = {value:?}: {} values; give 6 ranks (context_embedder, t_embedder, x_embedder, \
                 y_embedder, final_layer adaLN_modulation, final_layer linear)",
                d.len()
            )
        })
    }

    /// Parses `train_block_indices` (`all`, `none`, `0-3,7`) as sd-scripts does, over
    /// [`BLOCK_INDEX_LIMIT`] blocks.
    pub fn parse_train_block_indices(value: &str) -> Result<Vec<bool>, String> {
        parse_block_selection("train_block_indices", value, BLOCK_INDEX_LIMIT)
    }

    /// Parses `split_qkv`: sd-scripts turns it on only for the exact string `True`.
    pub fn parse_split_qkv(value: &str) -> bool {
        value == "True"
    }

    /// Whether no argument differs from sd-scripts' defaults.
    pub fn is_default(&self) -> bool {
        *self == Sd3NetworkArgs::default()
    }

    /// With `split_qkv`, the output widths of the parts of the layer `name` (kohya name) whose
    /// input width is `in_dim`: every joint-block qkv splits into three parts of the hidden
    /// width (its input width). `None`: not split.
    pub fn split_widths(&self, name: &str, in_dim: usize, out_dim: usize) -> Option<Vec<usize>> {
        (self.split_qkv && name.contains("joint_blocks") && name.contains("qkv") && out_dim == 3 * in_dim)
            .then(|| vec![in_dim; 3])
    }

    /// The rank of the linear MMDiT module `name` (kohya name, `lora_unet_…`) given the
    /// network's `rank`; `None`: no module. `input_layer` marks the layers `emb_dims` adds.
    /// (The x_embedder conv: [`Self::module_for`].)
    pub fn rank_for(&self, name: &str, input_layer: bool, rank: usize) -> Option<usize> {
        self.module_for(name, input_layer, false, (rank, 0.0), None).map(|(r, _)| r)
    }

    /// The (rank, alpha) of the MMDiT module `name` (kohya name) given the network's
    /// `(network_dim, network_alpha)` and `conv` = `(conv_dim, conv_alpha)` when `conv_dim` is
    /// set; `None`: no module. `input_layer` marks the layers `emb_dims` adds, `spatial_conv` a
    /// k×k conv target (the patch embedding), which only `emb_dims` reaches and which takes
    /// `conv` when given.
    pub fn module_for(
        &self,
        name: &str,
        input_layer: bool,
        spatial_conv: bool,
        network: (usize, f64),
        conv: Option<(usize, f64)>,
    ) -> Option<(usize, f64)> {
        let (mut dim, alpha) = if input_layer {
            let dims = self.emb_dims?;
            let i = EMB_LAYERS.iter().position(|f| name.contains(f))?;
            if spatial_conv {
                // create_modules: a k×k conv takes conv_dim whenever it is set, before the
                // emb_dims filter's own rank.
                conv.unwrap_or((dims[i], network.1))
            } else {
                (dims[i], network.1)
            }
        } else if spatial_conv {
            // No joint-block layer is a conv; sd-scripts' block search would not reach one.
            return None;
        } else {
            network
        };
        if !spatial_conv {
            if let Some((_, d)) = TYPE_DIMS
                .iter()
                .zip(self.type_dims)
                .find(|((_, ids), d)| d.is_some() && ids.iter().all(|id| name.contains(id)))
            {
                dim = d.unwrap_or(dim);
            }
            if dim > 0 && name.contains("joint_blocks") {
                if let Some(mask) = &self.train_block_indices {
                    // "lora_unet_joint_blocks_12_x_block_…": the fifth `_` field.
                    let block: Option<usize> = name.split('_').nth(4).and_then(|s| s.parse().ok());
                    if !block.and_then(|i| mask.get(i).copied()).unwrap_or(false) {
                        dim = 0;
                    }
                }
            }
        }
        (dim > 0).then_some((dim, alpha))
    }
}

#[cfg(test)]
mod tests {
    use super::Sd3NetworkArgs;

    #[test]
    fn parsers_accept_sd_scripts_forms_and_name_the_key_on_errors() {
        assert_eq!(Sd3NetworkArgs::parse_emb_dims("[4,0,0,0,4,4]"), Ok([4, 0, 0, 0, 4, 4]));
        assert_eq!(Sd3NetworkArgs::parse_emb_dims(" 1, 2,3,4,5,6 "), Ok([1, 2, 3, 4, 5, 6]));
        for bad in ["[4,4]", "[4,4,4,4,4,x]", "4;4;4;4;4;4"] {
            let err = Sd3NetworkArgs::parse_emb_dims(bad).unwrap_err();
            assert!(err.starts_with("emb_dims = "), "{err}");
        }
        assert_eq!(Sd3NetworkArgs::parse_dim("x_attn_dim", " 8"), Ok(8));
        assert!(Sd3NetworkArgs::parse_dim("x_attn_dim", "-1").unwrap_err().contains("x_attn_dim"));
        let mask = Sd3NetworkArgs::parse_train_block_indices("1,900-998").unwrap();
        assert_eq!(mask.len(), 999);
        assert!(mask[1] && mask[998] && !mask[0]);
        assert!(Sd3NetworkArgs::parse_train_block_indices("999").unwrap_err().contains("train_block_indices"));
        assert!(Sd3NetworkArgs::parse_split_qkv("True") && !Sd3NetworkArgs::parse_split_qkv("true"));
        assert!(Sd3NetworkArgs::default().is_default());
    }
}
