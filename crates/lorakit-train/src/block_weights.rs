//! sd-scripts' block-wise network arguments (spec §2.5): learning-rate weights per U-Net block
//! (`down_lr_weight`, `mid_lr_weight`, `up_lr_weight`, `block_lr_zero_threshold`) and ranks/alphas
//! per block (`block_dims`, `block_alphas`, `conv_block_dims`, `conv_block_alphas`), parsed from
//! the strings sd-scripts takes in `--network_args`, with its defaults, padding and truncation.

use lorakit_lora::blocks::BlockLayout;
use lorakit_models::lora_inject::BlockRanks;

/// The block-wise arguments as written in the config (sd-scripts' `network_args` strings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockArgs<'a> {
    pub down_lr_weight: Option<&'a str>,
    pub mid_lr_weight: Option<&'a str>,
    pub up_lr_weight: Option<&'a str>,
    pub block_lr_zero_threshold: f64,
    pub block_dims: Option<&'a str>,
    pub block_alphas: Option<&'a str>,
    pub conv_block_dims: Option<&'a str>,
    pub conv_block_alphas: Option<&'a str>,
}

/// What the block arguments resolve to for one U-Net layout.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockPlan {
    /// LR weight per slot (`None`: no block LR weights, one `unet` param group).
    pub lr_weights: Option<Vec<f64>>,
    /// Rank/alpha per slot (`None`: `network_dim`/`conv_dim` everywhere).
    pub ranks: Option<BlockRanks>,
    /// sd-scripts' warnings for lists it pads, truncates or defaults.
    pub notes: Vec<String>,
}

fn parse_float(key: &str, item: &str) -> Result<f64, String> {
    item.trim().parse::<f64>().map_err(|_| format!("network.{key}: `{item}` is not a number"))
}

/// A comma list of floats where empty items are 0.0 (sd-scripts' rule for the lr weights).
fn lr_list(key: &str, text: &str) -> Result<Vec<f64>, String> {
    text.split(',').map(|s| if s.is_empty() { Ok(0.0) } else { parse_float(key, s) }).collect()
}

/// A named preset (`cosine`, `sine`, `linear`, `reverse_linear`, `zeros`, optionally `+base`)
/// of length `n`, sd-scripts' `get_list`.
fn preset(key: &str, text: &str, n: usize) -> Result<Vec<f64>, String> {
    let mut tokens = text.split('+');
    let name = tokens.next().unwrap_or("");
    let base = match tokens.next() {
        Some(b) => parse_float(key, b)?,
        None => 0.0,
    };
    let ramp = |i: usize| i as f64 / (n - 1) as f64;
    let sine = |i: usize| (std::f64::consts::PI * ramp(i) / 2.0).sin() + base;
    let list: Vec<f64> = match name {
        "cosine" => (0..n).rev().map(sine).collect(),
        "sine" => (0..n).map(sine).collect(),
        "linear" => (0..n).map(|i| ramp(i) + base).collect(),
        "reverse_linear" => (0..n).rev().map(|i| ramp(i) + base).collect(),
        "zeros" => vec![base; n],
        _ => {
            return Err(format!(
                "network.{key} = {text:?}: write a comma list of weights (e.g. \"1,1,0.5\") or a preset: cosine, sine, \
                 linear, reverse_linear, zeros (optionally with +base, e.g. \"sine+0.5\")"
            ))
        }
    };
    Ok(list)
}

/// sd-scripts' `parse_block_lr_kwargs` + `get_block_lr_weight`: `None` when no weight is given.
pub fn block_lr_weights(layout: BlockLayout, args: &BlockArgs) -> Result<(Option<Vec<f64>>, Vec<String>), String> {
    let (down, mid, up) = (args.down_lr_weight, args.mid_lr_weight, args.up_lr_weight);
    if down.is_none() && mid.is_none() && up.is_none() {
        return Ok((None, Vec::new()));
    }
    let n = layout.down_up_len();
    let n_mid = layout.mid_len();
    let down_up = |key: &str, text: Option<&str>| -> Result<Option<Vec<f64>>, String> {
        match text {
            None => Ok(None),
            Some(t) if t.contains(',') => lr_list(key, t).map(Some),
            Some(t) => preset(key, t, n).map(Some),
        }
    };
    let mut down = down_up("down_lr_weight", down)?;
    let mut up = down_up("up_lr_weight", up)?;
    let mut mid = mid.map(|t| lr_list("mid_lr_weight", t)).transpose()?;
    let mut notes = Vec::new();
    for (key, list, len) in
        [("down_lr_weight", &mut down, n), ("up_lr_weight", &mut up, n), ("mid_lr_weight", &mut mid, n_mid)]
    {
        if let Some(l) = list.as_mut() {
            if l.len() > len {
                notes.push(format!("network.{key} has {} values; only the first {len} are used", l.len()));
                l.truncate(len);
            } else if l.len() < len {
                notes.push(format!("network.{key} has {} values; the missing ones up to {len} are 1.0", l.len()));
                l.resize(len, 1.0);
            }
        }
    }
    let threshold = args.block_lr_zero_threshold;
    let finish = |l: Option<Vec<f64>>, len: usize| match l {
        Some(l) => l.into_iter().map(|w| if w > threshold { w } else { 0.0 }).collect(),
        None => vec![1.0; len],
    };
    let mut weights = Vec::with_capacity(layout.slots());
    if layout == BlockLayout::Sdxl {
        weights.push(1.0);
    }
    weights.extend(finish(down, n));
    weights.extend(finish(mid, n_mid));
    weights.extend(finish(up, n));
    if layout == BlockLayout::Sdxl {
        weights.push(1.0);
    }
    Ok((Some(weights), notes))
}

fn exact_list<T: std::str::FromStr>(key: &str, text: &str, len: usize) -> Result<Vec<T>, String> {
    let values = text
        .split(',')
        .map(|s| s.trim().parse::<T>().map_err(|_| format!("network.{key}: `{s}` is not a valid number")))
        .collect::<Result<Vec<T>, String>>()?;
    if values.len() != len {
        return Err(format!("network.{key} must have {len} values (one per block slot), it has {}", values.len()));
    }
    Ok(values)
}

/// The whole block plan: lr weights, then per-slot ranks (sd-scripts' `get_block_dims_and_alphas`
/// and `remove_block_dims_and_alphas`: slots whose lr weight is 0 get rank 0, i.e. no module).
/// Per-block ranks are active when `block_dims` or any lr weight is given.
pub fn block_plan(
    layout: BlockLayout,
    args: &BlockArgs,
    network_dim: usize,
    network_alpha: f64,
    conv_dim: Option<usize>,
    conv_alpha: f64,
) -> Result<BlockPlan, String> {
    let (lr_weights, mut notes) = block_lr_weights(layout, args)?;
    if args.block_dims.is_none() && lr_weights.is_none() {
        for (key, v) in [
            ("block_alphas", args.block_alphas),
            ("conv_block_dims", args.conv_block_dims),
            ("conv_block_alphas", args.conv_block_alphas),
        ] {
            if v.is_some() {
                return Err(format!(
                    "network.{key} is used only together with network.block_dims or block LR weights (as in sd-scripts); set block_dims"
                ));
            }
        }
        return Ok(BlockPlan { lr_weights: None, ranks: None, notes });
    }
    let n = layout.slots();
    let mut dims = match args.block_dims {
        Some(t) => exact_list::<usize>("block_dims", t, n)?,
        None => {
            notes.push(format!("network.block_dims is not set: every block has rank {network_dim}"));
            vec![network_dim; n]
        }
    };
    let alphas = match args.block_alphas {
        Some(t) => exact_list::<f64>("block_alphas", t, n)?,
        None => {
            notes.push(format!("network.block_alphas is not set: every block has alpha {network_alpha}"));
            vec![network_alpha; n]
        }
    };
    let (mut conv_dims, conv_alphas) = match args.conv_block_dims {
        Some(t) => {
            let dims = exact_list::<usize>("conv_block_dims", t, n)?;
            let alphas = match args.conv_block_alphas {
                Some(a) => exact_list::<f64>("conv_block_alphas", a, n)?,
                None => vec![conv_alpha; n],
            };
            (Some(dims), Some(alphas))
        }
        None => match conv_dim {
            Some(d) => (Some(vec![d; n]), Some(vec![conv_alpha; n])),
            None => (None, None),
        },
    };
    if let Some(w) = &lr_weights {
        for (slot, weight) in w.iter().enumerate() {
            if *weight == 0.0 {
                dims[slot] = 0;
                if let Some(c) = conv_dims.as_mut() {
                    c[slot] = 0;
                }
            }
        }
    }
    let ranks = BlockRanks { layout, dims, alphas, conv_dims, conv_alphas };
    Ok(BlockPlan { lr_weights, ranks: Some(ranks), notes })
}
